//! Time as hookshim sees it: unix milliseconds, read through a [`Clock`] so that tests can move
//! time instead of sleeping, and rendered as RFC 3339 UTC on the wire.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A point in time, unix milliseconds (UTC). Serialised as RFC 3339 with millisecond precision.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Timestamp(pub u64);

impl Timestamp {
    /// The last millisecond RFC 3339 can write: 9999-12-31T23:59:59.999Z. Later times are
    /// written as this one (a year has four digits).
    pub const MAX_RFC3339: Timestamp = Timestamp(253_402_300_799_999);
    /// 2000-01-01T00:00:00Z: no upstream job is older; an earlier time is a unit mix-up.
    pub const SANE_MIN: Timestamp = Timestamp(946_684_800_000);

    /// `self` if it lies between 2000-01-01 and 9999-12-31 (what a time read from an upstream
    /// body may be), else `None`: such a time is ignored rather than scheduled or written.
    pub fn sane(self) -> Option<Timestamp> {
        (Self::SANE_MIN..=Self::MAX_RFC3339)
            .contains(&self)
            .then_some(self)
    }
    pub fn from_system(t: SystemTime) -> Self {
        Timestamp(
            t.duration_since(UNIX_EPOCH)
                .map(|d| d.as_millis() as u64)
                .unwrap_or(0),
        )
    }
    pub fn to_system(self) -> SystemTime {
        UNIX_EPOCH + Duration::from_millis(self.0)
    }
    pub fn plus(self, d: Duration) -> Self {
        let ms = u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        Timestamp(self.0.saturating_add(ms))
    }
    /// How long from `self` until `later` (zero if `later` is not after `self`).
    pub fn until(self, later: Timestamp) -> Duration {
        Duration::from_millis(later.0.saturating_sub(self.0))
    }
    pub fn unix_seconds(self) -> u64 {
        self.0 / 1000
    }
    /// RFC 3339 UTC with milliseconds. Never panics: a time past 9999-12-31 (which humantime
    /// cannot write) is written as [`Timestamp::MAX_RFC3339`].
    pub fn rfc3339(self) -> String {
        humantime::format_rfc3339_millis(self.min(Self::MAX_RFC3339).to_system()).to_string()
    }
}

impl Serialize for Timestamp {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.rfc3339())
    }
}

impl<'de> Deserialize<'de> for Timestamp {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        humantime::parse_rfc3339(&s)
            .map(Timestamp::from_system)
            .map_err(|e| serde::de::Error::custom(format!("invalid RFC 3339 time {s:?}: {e}")))
    }
}

/// The source of "now" for the scheduler, backoff and deadlines (invariant 7: time is injected).
pub trait Clock: Send + Sync + 'static {
    fn now(&self) -> Timestamp;
}

/// The wall clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Timestamp {
        Timestamp::from_system(SystemTime::now())
    }
}

/// A clock that only moves when told to; for tests of time-driven rules.
#[derive(Debug, Default, Clone)]
pub struct ManualClock(Arc<AtomicU64>);

impl ManualClock {
    pub fn new(start: Timestamp) -> Self {
        ManualClock(Arc::new(AtomicU64::new(start.0)))
    }
    pub fn advance(&self, d: Duration) {
        self.0.fetch_add(d.as_millis() as u64, Ordering::SeqCst);
    }
    pub fn set(&self, t: Timestamp) {
        self.0.store(t.0, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Timestamp {
        Timestamp(self.0.load(Ordering::SeqCst))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamp_round_trips_through_rfc3339() {
        let t = Timestamp(1_649_367_553_123);
        let s = serde_json::to_string(&t).unwrap();
        assert_eq!(s, "\"2022-04-07T21:39:13.123Z\"");
        let back: Timestamp = serde_json::from_str(&s).unwrap();
        assert_eq!(back, t);
    }

    #[test]
    fn far_future_times_are_written_as_the_last_rfc3339_millisecond() {
        for t in [Timestamp(u64::MAX), Timestamp(99_999_999_999_999_000)] {
            assert_eq!(t.rfc3339(), "9999-12-31T23:59:59.999Z");
            assert_eq!(
                serde_json::to_string(&t).unwrap(),
                "\"9999-12-31T23:59:59.999Z\""
            );
        }
        assert_eq!(Timestamp::MAX_RFC3339.rfc3339(), "9999-12-31T23:59:59.999Z");
        // Saturating arithmetic, even with a duration whose milliseconds overflow u64.
        assert_eq!(
            Timestamp(5).plus(Duration::from_secs(u64::MAX)),
            Timestamp(u64::MAX)
        );
    }

    #[test]
    fn sane_times_lie_between_2000_and_9999() {
        assert_eq!(
            Timestamp(1_724_265_444_000).sane(),
            Some(Timestamp(1_724_265_444_000))
        );
        assert_eq!(Timestamp(0).sane(), None);
        assert_eq!(Timestamp(1_000).sane(), None);
        assert_eq!(Timestamp(99_999_999_999_999_000).sane(), None);
        assert_eq!(Timestamp::MAX_RFC3339.sane(), Some(Timestamp::MAX_RFC3339));
    }

    #[test]
    fn manual_clock_moves_only_when_told() {
        let c = ManualClock::new(Timestamp(1000));
        assert_eq!(c.now(), Timestamp(1000));
        c.advance(Duration::from_secs(86_400));
        assert_eq!(c.now(), Timestamp(1000 + 86_400_000));
    }
}
