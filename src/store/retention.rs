//! `[retention]`: how long finished operations are kept, and what a purge pass removes.
//!
//! An operation is **settled** when it has ended and nothing is left to send: its terminal
//! callback was delivered (or it has no callback URL), or every attempt failed. A settled
//! operation is purged — its record and every index or outbox row — once it has been settled
//! longer than `finished` (delivered or no callback) or `failed` (failed deliveries; off by
//! default: a failed delivery can be redelivered until someone deletes it). Operations still
//! running, or with a callback still to send, are never purged.
//!
//! The store owns this table (`config.rs` only assembles the parts); the background pass that
//! applies it is `service::retention`.

use std::time::Duration;

use serde::Deserialize;

use crate::clock::Timestamp;
use crate::operation::{DeliveryState, Operation};

/// `[retention]` as written: durations (`"30d"`, `"12h"`, `"2s"`) or `"off"`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRetention {
    #[serde(default = "d_finished")]
    finished: String,
    #[serde(default = "d_failed")]
    failed: String,
    #[serde(default = "d_every")]
    every: String,
}
fn d_finished() -> String {
    "30d".into()
}
fn d_failed() -> String {
    "off".into()
}
fn d_every() -> String {
    "1m".into()
}
impl Default for RawRetention {
    fn default() -> Self {
        RawRetention {
            finished: d_finished(),
            failed: d_failed(),
            every: d_every(),
        }
    }
}

/// `[retention]`, resolved.
#[derive(Clone, Debug, PartialEq)]
pub struct RetentionConfig {
    /// Operations delivered (or without a callback URL) longer ago than this are purged;
    /// `None`: kept until deleted.
    pub finished: Option<Duration>,
    /// Operations whose terminal callback failed for good longer ago than this are purged;
    /// `None` (the default): kept until deleted, so they can be redelivered.
    pub failed: Option<Duration>,
    /// How often a purge pass runs.
    pub every: Duration,
}

impl Default for RetentionConfig {
    fn default() -> Self {
        resolve_retention(RawRetention::default()).unwrap_or(RetentionConfig {
            finished: None,
            failed: None,
            every: Duration::from_secs(60),
        })
    }
}

/// The shortest `retention.every`.
pub const MIN_EVERY: Duration = Duration::from_millis(10);

fn duration_or_off(key: &str, text: &str) -> Result<Option<Duration>, String> {
    let t = text.trim();
    if t.eq_ignore_ascii_case("off") {
        return Ok(None);
    }
    let d = humantime::parse_duration(t).map_err(|e| {
        format!("`{key}`: {text:?} is not a duration ({e}); write e.g. \"30d\", \"12h\" or \"off\"")
    })?;
    if d.is_zero() {
        return Err(format!(
            "`{key}`: 0s would purge operations as soon as they end; write a duration such as \"30d\", or \"off\""
        ));
    }
    Ok(Some(d))
}

/// Check `[retention]`.
pub fn resolve_retention(raw: RawRetention) -> Result<RetentionConfig, String> {
    let finished = duration_or_off("retention.finished", &raw.finished)?;
    let failed = duration_or_off("retention.failed", &raw.failed)?;
    let every = humantime::parse_duration(raw.every.trim()).map_err(|e| {
        format!(
            "`retention.every`: {:?} is not a duration ({e}); write e.g. \"1m\"",
            raw.every
        )
    })?;
    if every < MIN_EVERY || every > Duration::from_secs(86_400) {
        return Err("`retention.every`: must be between 10ms and 24h (e.g. \"1m\")".into());
    }
    Ok(RetentionConfig {
        finished,
        failed,
        every,
    })
}

impl RetentionConfig {
    /// What `hookshim check` prints.
    pub fn shown(&self) -> serde_json::Value {
        let d = |d: Option<Duration>| d.map_or_else(|| "off".to_string(), whole);
        serde_json::json!({
            "finished": d(self.finished),
            "failed": d(self.failed),
            "every": whole(self.every),
        })
    }

    /// The cutoffs a pass at `now` applies; `None` when nothing is ever purged.
    pub fn cutoffs(&self, now: Timestamp) -> Option<Cutoffs> {
        if self.finished.is_none() && self.failed.is_none() {
            return None;
        }
        let before = |d: Duration| Timestamp(now.0.saturating_sub(d.as_millis() as u64));
        Some(Cutoffs {
            finished: self.finished.map(before),
            failed: self.failed.map(before),
        })
    }
}

/// A duration in its largest whole unit (`"30d"`, `"36h"`, `"90s"`, `"250ms"`), as it is
/// usually written (humantime would show 90 days as months of 30.44 days).
fn whole(d: Duration) -> String {
    let ms = d.as_millis();
    for (unit, size) in [
        ("d", 86_400_000),
        ("h", 3_600_000),
        ("m", 60_000),
        ("s", 1000),
    ] {
        if ms >= size && ms % size == 0 {
            return format!("{}{unit}", ms / size);
        }
    }
    format!("{ms}ms")
}

/// What one purge pass removes: operations settled before these times (`None`: none of that
/// kind).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Cutoffs {
    /// Delivered, or without a callback URL, before this.
    pub finished: Option<Timestamp>,
    /// Delivery failed for good before this.
    pub failed: Option<Timestamp>,
}

impl Cutoffs {
    /// The latest settled time any purged operation can have (a bound for index scans).
    pub fn latest(&self) -> Timestamp {
        self.finished
            .into_iter()
            .chain(self.failed)
            .max()
            .unwrap_or(Timestamp(0))
    }

    /// Whether `op` is purged by these cutoffs.
    pub fn purges(&self, op: &Operation) -> bool {
        match settled(op) {
            None => false,
            Some((at, false)) => self.finished.is_some_and(|c| at < c),
            Some((at, true)) => self.failed.is_some_and(|c| at < c),
        }
    }
}

/// When `op` settled, and whether a delivery of it failed: `None` while it runs or has a
/// callback still to send (or an event callback that never settled). The time is the latest of
/// its end and its deliveries' last attempts, so a redelivery restarts the clock.
pub fn settled(op: &Operation) -> Option<(Timestamp, bool)> {
    if !op.status.is_terminal() {
        return None;
    }
    let mut at = op.completed_at.unwrap_or(op.updated_at);
    let mut failed = false;
    let deliveries = std::iter::once(&op.delivery).chain(op.events.iter().map(|e| &e.delivery));
    for (i, d) in deliveries.enumerate() {
        match d.state {
            DeliveryState::Pending => return None,
            DeliveryState::Failed => failed = true,
            // A terminal operation's own callback is never superseded; an event's is.
            DeliveryState::Superseded if i == 0 => return None,
            DeliveryState::None | DeliveryState::Delivered | DeliveryState::Superseded => {}
        }
        for t in [d.delivered_at, d.last_attempt_at].into_iter().flatten() {
            at = at.max(t);
        }
    }
    Some((at, failed))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::operation::{DetectedVia, Status, sample};

    fn raw(finished: &str, failed: &str, every: &str) -> RawRetention {
        RawRetention {
            finished: finished.into(),
            failed: failed.into(),
            every: every.into(),
        }
    }

    #[test]
    fn defaults_keep_finished_30_days_and_failed_deliveries_until_deleted() {
        let c = RetentionConfig::default();
        assert_eq!(c.finished, Some(Duration::from_secs(30 * 86_400)));
        assert_eq!(c.failed, None);
        assert_eq!(c.every, Duration::from_secs(60));
        assert_eq!(
            c.shown(),
            serde_json::json!({"finished": "30d", "failed": "off", "every": "1m"})
        );
        assert_eq!(whole(Duration::from_millis(1500)), "1500ms");
        assert_eq!(whole(Duration::from_secs(36 * 3600)), "36h");
    }

    #[test]
    fn off_and_bad_values() {
        let c = resolve_retention(raw("off", "OFF", "2s")).unwrap();
        assert_eq!((c.finished, c.failed), (None, None));
        assert!(c.cutoffs(Timestamp(1_000_000)).is_none());
        let e = resolve_retention(raw("a month", "off", "1m")).unwrap_err();
        assert!(
            e.contains("`retention.finished`") && e.contains("\"30d\""),
            "{e}"
        );
        let e = resolve_retention(raw("0s", "off", "1m")).unwrap_err();
        assert!(e.contains("`retention.finished`: 0s"), "{e}");
        let e = resolve_retention(raw("30d", "-1d", "1m")).unwrap_err();
        assert!(e.contains("`retention.failed`"), "{e}");
        let e = resolve_retention(raw("30d", "off", "1ms")).unwrap_err();
        assert!(e.contains("`retention.every`"), "{e}");
        // Sub-minute values are accepted (tests use them).
        let c = resolve_retention(raw("2s", "3s", "100ms")).unwrap();
        assert_eq!(c.finished, Some(Duration::from_secs(2)));
    }

    #[test]
    fn only_settled_operations_are_purged() {
        let t0 = Timestamp(1_700_000_000_000);
        let cut = Cutoffs {
            finished: Some(t0.plus(Duration::from_secs(10))),
            failed: None,
        };
        let mut op = sample(t0);
        op.callback_url = None;
        assert!(!cut.purges(&op), "running");
        op.finish(Status::Succeeded, DetectedVia::Poll, t0);
        assert!(cut.purges(&op), "no callback URL, ended before the cutoff");
        op.callback_url = Some("http://127.0.0.1:1/cb".into());
        op.delivery.state = DeliveryState::Pending;
        assert!(!cut.purges(&op), "callback still to send");
        op.delivery.state = DeliveryState::Delivered;
        op.delivery.delivered_at = Some(t0.plus(Duration::from_secs(5)));
        assert!(cut.purges(&op));
        op.delivery.delivered_at = Some(t0.plus(Duration::from_secs(10)));
        assert!(!cut.purges(&op), "delivered at the cutoff: recent");
        op.delivery.state = DeliveryState::Failed;
        op.delivery.delivered_at = None;
        op.delivery.last_attempt_at = Some(t0);
        assert!(
            !cut.purges(&op),
            "failed deliveries are kept when failed is off"
        );
        let cut = Cutoffs {
            finished: None,
            failed: Some(t0.plus(Duration::from_secs(1))),
        };
        assert!(cut.purges(&op));
        assert_eq!(cut.latest(), t0.plus(Duration::from_secs(1)));
    }
}
