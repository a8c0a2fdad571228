//! The polling policy as pure functions: exponential backoff with jitter, server hints that push
//! the next request later (never earlier), and the deadline as a hard last poll.

use std::time::Duration;

use reqwest::header::HeaderMap;

use crate::clock::Timestamp;
pub use crate::pace::Pace;
use crate::schedule::config::PollConfig;
use crate::schedule::prior::Prior;

/// The longest hint honoured when a config gives none (`poll.hint_max` overrides it): an
/// upstream that says "come back in a year" is still looked at again.
pub const HINT_MAX: Duration = Duration::from_secs(6 * 3600);

/// The base backoff after `n` polls: `initial × multiplier^n`, capped at `max`, scaled by
/// `1 + jitter × sample` where `sample` is uniform in [-1, 1].
pub fn backoff(p: &PollConfig, n: u32, sample: f64) -> Duration {
    let base = p.initial.as_secs_f64() * p.multiplier.powi(n.min(64) as i32);
    let capped = base.min(p.max.as_secs_f64());
    jittered(capped, p.jitter, sample)
}

fn jittered(secs: f64, jitter: f64, sample: f64) -> Duration {
    Duration::from_secs_f64((secs * (1.0 + jitter * sample.clamp(-1.0, 1.0))).max(0.001))
}

/// The wait a response asks for before the next request, from every hint hookshim knows:
///
/// - retry hints: `Retry-After` (seconds or HTTP date), `retry-after-ms`, `x-ms-retry-after-ms`;
/// - poll hints: `openai-poll-after-ms`, `X-Poll-Interval` (seconds, GitHub);
/// - the IETF `RateLimit` field when it says the quota is used up (`r=0`, wait `t` seconds; the
///   older `remaining=0, reset=N` form and `RateLimit-Remaining: 0` + `RateLimit-Reset: N` too).
///   `Retry-After` wins over `RateLimit`: when any retry hint is present, `RateLimit` is ignored.
///
/// The longest of them wins (the next request is never earlier than any hint), clamped to
/// `max`. `None` when there is no usable hint.
pub fn parse_hint(headers: &HeaderMap, now: Timestamp, max: Duration) -> Option<Duration> {
    let now = now.to_system();
    let text = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
    };
    let millis = |name: &str| {
        text(name)
            .and_then(|v| v.parse::<f64>().ok())
            .filter(|ms| ms.is_finite() && *ms >= 0.0)
            .map(|ms| Duration::from_secs_f64((ms / 1000.0).min(1e9)))
    };
    // Seconds, fractional too (`0.5`: openai-python's `_parse_retry_after_header` reads it
    // with `float()`), or an HTTP date.
    let retry_after = text("retry-after").and_then(|v| match v.parse::<f64>() {
        Ok(secs) if secs.is_finite() && secs >= 0.0 => Some(Duration::from_secs_f64(secs.min(1e9))),
        Ok(_) => None,
        Err(_) => httpdate::parse_http_date(v)
            .ok()
            .map(|at| at.duration_since(now).unwrap_or(Duration::ZERO)),
    });
    let retry = [
        retry_after,
        millis("retry-after-ms"),
        millis("x-ms-retry-after-ms"),
    ]
    .into_iter()
    .flatten()
    .max();
    let poll = [
        millis("openai-poll-after-ms"),
        text("x-poll-interval")
            .and_then(|v| v.parse::<u64>().ok())
            .map(Duration::from_secs),
    ]
    .into_iter()
    .flatten()
    .max();
    let ratelimit = if retry.is_some() {
        None
    } else {
        ratelimit_wait(headers)
    };
    [retry, poll, ratelimit]
        .into_iter()
        .flatten()
        .max()
        .map(|d| d.min(max))
}

/// The wait an IETF `RateLimit` field asks for: the longest `t` among its quota items with
/// `r=0` (draft 08 and later: `"default";r=0;t=30`), or `reset` when `remaining=0` (drafts 03–07:
/// `limit=10, remaining=0, reset=30`), or the separate `RateLimit-Remaining: 0` +
/// `RateLimit-Reset: 30` fields (drafts 00–02). `None` while quota remains.
fn ratelimit_wait(headers: &HeaderMap) -> Option<Duration> {
    use sfv::{BareItem, Dictionary, List, ListEntry, Parser};
    let int = |b: &BareItem| b.as_integer().map(i64::from).filter(|n| *n >= 0);
    let param = |params: &sfv::Parameters, key: &str| {
        params
            .iter()
            .find(|(k, _)| k.as_str() == key)
            .and_then(|(_, v)| int(v))
    };
    let mut wait: Option<u64> = None;
    let mut take = |secs: i64| wait = Some(wait.unwrap_or(0).max(secs as u64));
    for value in headers.get_all("ratelimit") {
        let Ok(v) = value.to_str() else { continue };
        if let Ok(list) = Parser::new(v).parse::<List>() {
            for entry in &list {
                if let ListEntry::Item(item) = entry {
                    if param(&item.params, "r") == Some(0) {
                        if let Some(t) = param(&item.params, "t") {
                            take(t);
                        }
                    }
                }
            }
        }
        if let Ok(dict) = Parser::new(v).parse::<Dictionary>() {
            let get = |key: &str| match dict.iter().find(|(k, _)| k.as_str() == key) {
                Some((_, ListEntry::Item(i))) => int(&i.bare_item),
                _ => None,
            };
            if get("remaining") == Some(0) {
                if let Some(reset) = get("reset") {
                    take(reset);
                }
            }
        }
    }
    let field = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
    };
    if field("ratelimit-remaining") == Some(0) {
        if let Some(reset) = field("ratelimit-reset") {
            take(reset as i64);
        }
    }
    wait.map(Duration::from_secs)
}

/// While an estimate is trusted, the next poll goes this fraction of the way to it: the polls
/// close in on the estimate geometrically, so an estimate that is too late costs one interval,
/// not the whole wait.
const ETA_FRACTION: f64 = 0.5;
/// With a target, a far jump covers at most this share of the estimated remaining time (an
/// estimate from progress that speeds up is late by a share of what remains).
pub const ETA_FAR: f64 = 0.75;
/// With a target, a far jump on an estimate is at most this many times the job's age.
pub const ETA_TRUST: f64 = 4.0;
/// Progress at or above this counts as complete (finalizing).
const COMPLETE: f64 = 0.999_999;

/// Which rule chose an interval (for tests, logs and the policy benchmark).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rule {
    /// The blind schedule: backoff from `initial` to `max`.
    Base,
    /// Closing in on the completion time estimated from progress.
    Eta,
    /// Progress is complete but the status is not terminal yet.
    Finalizing,
    /// `poll.target_delay` with progress: at the estimated end minus the target, then the end.
    Target,
    /// A learned prior's blind schedule: where half the jobs still running will have finished.
    Prior,
}

/// The wait before the next poll of a running operation, before hints and caps: progress-aware
/// when the upstream reports progress, the blind schedule otherwise. `n` is the number of polls
/// so far minus one.
pub fn interval(
    p: &PollConfig,
    pace: &Pace,
    n: u32,
    now: Timestamp,
    sample: f64,
) -> (Duration, Rule) {
    let base = backoff(p, n, sample);
    if !p.eta {
        return (base, Rule::Base);
    }
    let Some(progress) = pace.progress else {
        return (base, Rule::Base);
    };
    if progress >= COMPLETE {
        // Short at first, backing off (to `max`) if finalizing takes long.
        let wait = (p.finalizing.as_secs_f64() * p.multiplier.powi(pace.stalled.min(64) as i32))
            .min(p.max.as_secs_f64().max(p.finalizing.as_secs_f64()));
        return (jittered(wait, p.jitter, sample), Rule::Finalizing);
    }
    if pace.stalled >= p.stall_polls {
        return (base, Rule::Base);
    }
    match pace.eta_secs(now) {
        None => (base, Rule::Base),
        Some(eta) => {
            let wait = (eta * ETA_FRACTION)
                .min(pace.watched_secs(now))
                .clamp(p.initial.as_secs_f64(), p.eta_max.as_secs_f64());
            (jittered(wait, p.jitter, sample), Rule::Eta)
        }
    }
}

/// The full plan for the next poll of a running operation: [`interval`] (today's policy) unless
/// `poll.target_delay` is set or the operation's learned prior is warm. `created` is the
/// operation's creation time; `prior` its upstream's (and key's) learned job lengths. Rules:
///
/// 1. **Progress, with a target `T`** — the remaining time `eta` comes from the smoothed rate or,
///    before there is one, from the progress made since creation. Far from the end
///    (`eta > T`) the next poll goes to `max(eta - T, eta / 2)`: the end minus what the target
///    allows (halving only when the end is within `2T`), but never further than [`ETA_FAR`]
///    of the estimate (progress that speeds up makes it late) nor [`ETA_TRUST`] × the job's
///    age (a small step of progress is no estimate); once the end is near enough that a job
///    ending at [`ETA_FAR`] of the estimate would still be seen within `T`
///    (`1.05·eta − ETA_FAR·eta ≤ T`, about `3T`), it goes straight to just past the estimated
///    end. No floor at `initial`.
/// 2. **Finalizing or stalled, with a target** — today's rule, never a gap longer than `T`.
/// 3. **Blind, warm prior** — each poll where [`prior::HAZARD_MASS`] of the jobs still running
///    are expected to have finished (short gaps where completions are likely), at least
///    `initial`, at most `T` (or `max` without a target). Past the learned tail: rule 4.
/// 4. **Blind, otherwise** — the backoff, never longer than `T` (the job could be done).
///
/// Progress without a target keeps today's rules (the prior then only places the first poll);
/// the caller applies hints, the
/// budget and the deadline after this, as before.
pub fn plan(
    p: &PollConfig,
    pace: &Pace,
    n: u32,
    now: Timestamp,
    created: Timestamp,
    prior: Option<&Prior>,
    sample: f64,
) -> (Duration, Rule) {
    let warm = prior.filter(|pr| pr.warm());
    let Some(target) = p.target_delay.map(|t| t.as_secs_f64()) else {
        if warm.is_none() {
            return interval(p, pace, n, now, sample);
        }
        if p.eta && pace.progress.is_some() {
            // Progress without a target: today's estimate rules, the prior only plans blind.
            return interval(p, pace, n, now, sample);
        }
        return blind(p, n, now, created, warm, None, sample);
    };
    let cap = |(d, rule): (Duration, Rule)| (d.min(Duration::from_secs_f64(target)), rule);
    if p.eta {
        if let Some(progress) = pace.progress {
            if progress >= COMPLETE || pace.stalled >= p.stall_polls {
                let (wait, rule) = interval(p, pace, n, now, sample);
                if rule != Rule::Base {
                    return cap((wait, rule));
                }
            } else {
                let elapsed = secs_since(created, now);
                // From the smoothed rate, else (one reading so far) from the progress made
                // since creation, which steps of progress make an overestimate.
                let (eta, from_rate) = match pace.eta_secs(now) {
                    Some(eta) => (Some(eta), true),
                    None => (
                        (progress > 0.0 && elapsed > 0.0)
                            .then(|| elapsed * (1.0 - progress) / progress),
                        false,
                    ),
                };
                if let Some(eta) = eta {
                    let end = eta.max(0.0) * 1.05 + 0.05;
                    let wait = if end - ETA_FAR * eta <= target && (from_rate || eta <= target) {
                        // Just past the estimated end (not jittered: it would land before it),
                        // when even a job that ends at ETA_FAR of a rate's estimate is seen
                        // within the target — the assumption the far jump below makes too. An
                        // estimate from one reading may be late: then only within the target.
                        end.min(if from_rate { f64::MAX } else { target })
                    } else {
                        // An estimate from a little progress can be far too late (progress
                        // moves in steps): never jump more than ETA_TRUST × the job's age.
                        // Progress is rarely linear: never more than ETA_FAR of the estimate.
                        let far = (eta - target)
                            .max(eta / 2.0)
                            .min(ETA_FAR * eta)
                            .min(ETA_TRUST * elapsed.max(p.initial.as_secs_f64()));
                        (far * (1.0 + p.jitter * sample.clamp(-1.0, 1.0))).min(eta - 0.05)
                    };
                    let wait = wait.clamp(0.05, p.eta_max.as_secs_f64().max(0.05));
                    return (Duration::from_secs_f64(wait), Rule::Target);
                }
            }
        }
    }
    cap(blind(p, n, now, created, warm, Some(target), sample))
}

fn secs_since(from: Timestamp, now: Timestamp) -> f64 {
    now.0.saturating_sub(from.0) as f64 / 1000.0
}

/// Rules 3 and 4 of [`plan`].
fn blind(
    p: &PollConfig,
    n: u32,
    now: Timestamp,
    created: Timestamp,
    warm: Option<&Prior>,
    target: Option<f64>,
    sample: f64,
) -> (Duration, Rule) {
    let cap = target.unwrap_or(p.max.as_secs_f64());
    let elapsed = secs_since(created, now);
    if let Some(at) = warm.and_then(|pr| pr.next_look(elapsed)) {
        let gap = (at - elapsed).max(p.initial.as_secs_f64());
        let gap = (gap * (1.0 + p.jitter * sample.clamp(-1.0, 1.0))).min(cap);
        return (Duration::from_secs_f64(gap.max(0.001)), Rule::Prior);
    }
    let base = backoff(p, n, sample);
    match target {
        Some(t) => (base.min(Duration::from_secs_f64(t)), Rule::Base),
        None => (base, Rule::Base),
    }
}

/// The requests today's blind schedule (no jitter, no target, no prior) makes to see a job
/// of `secs` end: what [`crate::state`] counts the learned schedule's savings against.
pub fn blind_polls(p: &PollConfig, secs: f64) -> u32 {
    let mut t = backoff(p, 0, 0.0).as_secs_f64();
    let mut polls = 1u32;
    while t < secs && polls < 100_000 {
        t += backoff(p, polls - 1, 0.0).as_secs_f64();
        polls += 1;
    }
    polls
}

/// A new operation's first poll, seconds after registration: where its kind of job starts
/// finishing when the prior is warm ([`Prior::first_look`], not before 0.1 s), else
/// `backoff(0)` as today.
pub fn first_wait(p: &PollConfig, prior: Option<&Prior>, sample: f64) -> Duration {
    match prior.and_then(Prior::first_look) {
        Some(secs) => Duration::from_secs_f64(secs.max(0.1)),
        None => backoff(p, 0, sample),
    }
}

/// Additive-increase / multiplicative-decrease of one upstream's request rate. A 429 or 503
/// halves the rate (at most once per [`AIMD_COOLDOWN`], so one burst of rejections counts once),
/// never below `floor`; every `every` without one adds a tenth of the ceiling back, never above
/// the configured rate. Pure: the limiter keeps it behind a lock and passes `now`.
#[derive(Clone, Debug)]
pub struct Aimd {
    ceiling: f64,
    floor: f64,
    every: Duration,
    current: f64,
    /// Start of the current quiet period (the last decrease or increase).
    since: Timestamp,
    last_decrease: Option<Timestamp>,
}

/// Rejections closer together than this are one congestion event.
pub const AIMD_COOLDOWN: Duration = Duration::from_secs(1);
/// The multiplicative decrease.
pub const AIMD_DECREASE: f64 = 0.5;

impl Aimd {
    pub fn new(ceiling: f64, floor: f64, every: Duration, now: Timestamp) -> Aimd {
        Aimd {
            ceiling,
            floor: floor.min(ceiling),
            every,
            current: ceiling,
            since: now,
            last_decrease: None,
        }
    }

    /// The rate allowed at `now` (requests per second), after any recovery due by then.
    pub fn rate(&mut self, now: Timestamp) -> f64 {
        if self.current < self.ceiling && !self.every.is_zero() {
            let every = self.every.as_millis().max(1) as u64;
            let steps = now.0.saturating_sub(self.since.0) / every;
            if steps > 0 {
                let step = self.ceiling / 10.0;
                self.current = (self.current + step * steps as f64).min(self.ceiling);
                self.since = Timestamp(self.since.0 + steps * every);
            }
        }
        self.current
    }

    /// A rate-limit answer arrived. Returns true if it lowered the rate.
    pub fn throttled(&mut self, now: Timestamp) -> bool {
        if self
            .last_decrease
            .is_some_and(|t| now.0 < t.0 + AIMD_COOLDOWN.as_millis() as u64)
        {
            return false;
        }
        self.rate(now);
        self.current = (self.current * AIMD_DECREASE).max(self.floor);
        self.since = now;
        self.last_decrease = Some(now);
        true
    }

    pub fn ceiling(&self) -> f64 {
        self.ceiling
    }

    /// When a rate-limit answer last lowered the rate.
    pub fn last_decrease(&self) -> Option<Timestamp> {
        self.last_decrease
    }
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
mod tests;
