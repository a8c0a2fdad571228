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
    /// Parse an RFC 3339 time: `Z` or a numeric offset (`+01:00`), `T`/`t`/space between date
    /// and time, optional fraction. A time whose local date is before 1970 is 1970-01-01T00:00Z
    /// (no operation is older).
    pub fn parse_rfc3339(text: &str) -> Result<Timestamp, String> {
        let s = text.trim();
        let split = s.len().checked_sub(6).filter(|&i| s.is_char_boundary(i));
        let (base, offset_ms) = match split.map(|i| (&s[..i], &s[i..])) {
            Some((base, tail))
                if (tail.starts_with('+') || tail.starts_with('-'))
                    && tail.as_bytes().get(3) == Some(&b':') =>
            {
                let (h, m) = (tail[1..3].parse::<u64>(), tail[4..6].parse::<u64>());
                let (Ok(h), Ok(m)) = (h, m) else {
                    return Err(format!("the offset {tail:?} is not +HH:MM or -HH:MM"));
                };
                if h > 23 || m > 59 {
                    return Err(format!("the offset {tail:?} is out of range"));
                }
                let ms = (h * 60 + m) * 60_000;
                (
                    base.to_string(),
                    if tail.starts_with('+') {
                        ms as i64
                    } else {
                        -(ms as i64)
                    },
                )
            }
            _ => (s.trim_end_matches(['Z', 'z']).to_string(), 0),
        };
        let base = base.replacen('t', "T", 1);
        let local = match humantime::parse_rfc3339_weak(&base) {
            Ok(t) => Timestamp::from_system(t).0 as i64,
            Err(e) => {
                // humantime counts from 1970 and refuses earlier years.
                let year: Option<u32> = base.get(..4).and_then(|y| y.parse().ok());
                let later = base.get(4..).map(|rest| format!("1970{rest}"));
                let valid = later.is_some_and(|l| humantime::parse_rfc3339_weak(&l).is_ok());
                if year.is_some_and(|y| y < 1970) && valid {
                    -(offset_ms.abs()) - 1
                } else {
                    return Err(e.to_string());
                }
            }
        };
        Ok(Timestamp((local - offset_ms).max(0) as u64))
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

/// In the OpenAPI document: an RFC 3339 time.
impl utoipa::PartialSchema for Timestamp {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        use utoipa::openapi::{KnownFormat, ObjectBuilder, SchemaFormat, schema::Type};
        ObjectBuilder::new()
            .schema_type(Type::String)
            .format(Some(SchemaFormat::KnownFormat(KnownFormat::DateTime)))
            .description(Some("RFC 3339 UTC time with milliseconds"))
            .into()
    }
}

impl utoipa::ToSchema for Timestamp {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_with_offsets_fractions_and_old_years() {
        let z = Timestamp::parse_rfc3339("2000-01-04T18:47:30Z").unwrap();
        assert_eq!(z.rfc3339(), "2000-01-04T18:47:30.000Z");
        let plus = Timestamp::parse_rfc3339("2000-01-04T18:47:30+16:44").unwrap();
        assert_eq!(plus.rfc3339(), "2000-01-04T02:03:30.000Z");
        let minus = Timestamp::parse_rfc3339("2000-01-04t18:47:30.25-05:00").unwrap();
        assert_eq!(minus.rfc3339(), "2000-01-04T23:47:30.250Z");
        assert_eq!(
            Timestamp::parse_rfc3339("0251-01-11T14:16:11Z"),
            Ok(Timestamp(0))
        );
        // Any local time before 1970 is taken as 1970 (a bound no operation precedes).
        assert_eq!(
            Timestamp::parse_rfc3339("1969-12-31T23:00:00-02:00"),
            Ok(Timestamp(0))
        );
        for bad in [
            "",
            "soon",
            "2000-01-04",
            "2000-01-04T18:47:30+24:00",
            "0251-13-11T14:16:11Z",
            "2000-01-04T18:47:30+ab:00",
        ] {
            assert!(Timestamp::parse_rfc3339(bad).is_err(), "{bad}");
        }
    }

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
