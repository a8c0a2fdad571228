//! The polling policy as pure functions: exponential backoff with jitter, server hints that push
//! the next request later (never earlier), and the deadline as a hard last poll.

use std::time::{Duration, SystemTime};

use reqwest::header::HeaderMap;

use crate::clock::Timestamp;
use crate::config::PollConfig;

/// Hints longer than this are treated as this long: an upstream that says "come back in a year"
/// is still looked at again.
pub const HINT_MAX: Duration = Duration::from_secs(6 * 3600);

/// The base backoff after `n` polls: `initial × multiplier^n`, capped at `max`, scaled by
/// `1 + jitter × sample` where `sample` is uniform in [-1, 1].
pub fn backoff(p: &PollConfig, n: u32, sample: f64) -> Duration {
    let base = p.initial.as_secs_f64() * p.multiplier.powi(n.min(64) as i32);
    let capped = base.min(p.max.as_secs_f64());
    let jittered = capped * (1.0 + p.jitter * sample.clamp(-1.0, 1.0));
    Duration::from_secs_f64(jittered.max(0.001))
}

/// The longest wait any hint on a response asks for: `Retry-After` (seconds or HTTP date) and
/// `retry-after-ms`. `None` when there is no usable hint.
pub fn parse_hint(headers: &HeaderMap, now: SystemTime) -> Option<Duration> {
    let mut best: Option<Duration> = None;
    let mut take = |d: Duration| best = Some(best.map_or(d, |b| b.max(d)));
    if let Some(v) = headers.get("retry-after-ms").and_then(|v| v.to_str().ok()) {
        if let Ok(ms) = v.trim().parse::<f64>() {
            if ms.is_finite() && ms >= 0.0 {
                take(Duration::from_secs_f64(ms / 1000.0));
            }
        }
    }
    if let Some(v) = headers
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
    {
        let v = v.trim();
        if let Ok(secs) = v.parse::<u64>() {
            take(Duration::from_secs(secs));
        } else if let Ok(at) = httpdate::parse_http_date(v) {
            take(at.duration_since(now).unwrap_or(Duration::ZERO));
        }
    }
    best.map(|d| d.min(HINT_MAX))
}

/// When to poll next: the later of the backoff and the hint, but never after the deadline (the
/// deadline itself is the last poll).
pub fn next_poll_at(
    now: Timestamp,
    interval: Duration,
    hint: Option<Duration>,
    deadline: Timestamp,
) -> Timestamp {
    let wait = hint.map_or(interval, |h| interval.max(h));
    now.plus(wait).min(deadline.max(now))
}

/// The wait before callback attempt `attempt + 1` (1-based `attempt` just failed): the schedule
/// entry with ±20 % jitter, or the receiver's Retry-After when it asks for longer.
pub fn callback_retry_delay(
    schedule: &[Duration],
    attempt: u32,
    hint: Option<Duration>,
    sample: f64,
) -> Option<Duration> {
    let base = *schedule.get(attempt.checked_sub(1)? as usize)?;
    let jittered =
        Duration::from_secs_f64(base.as_secs_f64() * (1.0 + 0.2 * sample.clamp(-1.0, 1.0)));
    Some(hint.map_or(jittered, |h| h.max(jittered)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::HeaderValue;

    fn cfg() -> PollConfig {
        PollConfig {
            initial: Duration::from_secs(1),
            multiplier: 2.0,
            max: Duration::from_secs(30),
            jitter: 0.1,
            deadline: Duration::from_secs(3600),
            ..PollConfig::general()
        }
    }

    #[test]
    fn backoff_grows_and_caps() {
        let c = cfg();
        assert_eq!(backoff(&c, 0, 0.0), Duration::from_secs(1));
        assert_eq!(backoff(&c, 3, 0.0), Duration::from_secs(8));
        assert_eq!(backoff(&c, 40, 0.0), Duration::from_secs(30));
        assert_eq!(backoff(&c, 40, 1.0), Duration::from_secs(33));
        assert_eq!(backoff(&c, 40, -1.0), Duration::from_secs(27));
    }

    #[test]
    fn hints_take_the_longest_and_are_clamped() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let mut h = HeaderMap::new();
        assert_eq!(parse_hint(&h, now), None);
        h.insert("retry-after", HeaderValue::from_static("7"));
        h.insert("retry-after-ms", HeaderValue::from_static("2500"));
        assert_eq!(parse_hint(&h, now), Some(Duration::from_secs(7)));
        let date = httpdate::fmt_http_date(now + Duration::from_secs(120));
        h.insert("retry-after", HeaderValue::from_str(&date).unwrap());
        assert_eq!(parse_hint(&h, now), Some(Duration::from_secs(120)));
        h.insert("retry-after", HeaderValue::from_static("99999999"));
        assert_eq!(parse_hint(&h, now), Some(HINT_MAX));
    }

    #[test]
    fn hint_pushes_later_never_earlier_and_deadline_caps() {
        let now = Timestamp(10_000);
        let deadline = Timestamp(100_000);
        assert_eq!(
            next_poll_at(
                now,
                Duration::from_secs(5),
                Some(Duration::from_secs(1)),
                deadline
            ),
            Timestamp(15_000)
        );
        assert_eq!(
            next_poll_at(
                now,
                Duration::from_secs(5),
                Some(Duration::from_secs(20)),
                deadline
            ),
            Timestamp(30_000)
        );
        assert_eq!(
            next_poll_at(now, Duration::from_secs(500), None, deadline),
            deadline
        );
    }

    #[test]
    fn callback_retries_follow_the_schedule_then_stop() {
        let s = [Duration::from_secs(5), Duration::from_secs(300)];
        assert_eq!(
            callback_retry_delay(&s, 1, None, 0.0),
            Some(Duration::from_secs(5))
        );
        assert_eq!(
            callback_retry_delay(&s, 2, None, 1.0),
            Some(Duration::from_secs(360))
        );
        assert_eq!(
            callback_retry_delay(&s, 2, Some(Duration::from_secs(900)), 0.0),
            Some(Duration::from_secs(900))
        );
        assert_eq!(callback_retry_delay(&s, 3, None, 0.0), None);
    }
}
