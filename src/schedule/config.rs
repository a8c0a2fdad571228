//! Polling and rate configuration: an upstream's `poll` and `rate` keys, their defaults per kind
//! of job ([`PollConfig::media`], [`PollConfig::batch`], [`PollConfig::general`]) and their
//! validation. `upstream::config` reads these sections with the functions here.

use std::time::Duration;

use serde::Deserialize;

use crate::values::{Dur, DurOrOff};

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RateConfig {
    /// The ceiling: never more requests than this (with `burst` allowed at once).
    pub per_second: u32,
    pub burst: u32,
    /// The adaptive rate never drops below this after 429/503 answers.
    pub min_per_second: f64,
    /// The adaptive rate regains a tenth of `per_second` per this much time without a 429/503.
    pub increase_every: Duration,
}

impl RateConfig {
    pub fn new(per_second: u32, burst: u32) -> RateConfig {
        RateConfig {
            per_second,
            burst,
            min_per_second: (f64::from(per_second) / 10.0).max(0.1),
            increase_every: Duration::from_secs(10),
        }
    }
}

/// One upstream's polling schedule. The policy that uses it is `schedule::policy`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PollConfig {
    /// False for an upstream with no status endpoint: no status request is ever sent; only a
    /// webhook event mapped in `webhook.events` or the deadline ends an operation.
    pub enabled: bool,
    /// The blind schedule: `initial × multiplier^n` up to `max`, ±`jitter`.
    pub initial: Duration,
    pub multiplier: f64,
    pub max: Duration,
    /// Fraction (0–0.5). Small on purpose: it spreads load, it does not help detection.
    pub jitter: f64,
    /// Default deadline for operations registered without one.
    pub deadline: Duration,
    /// Cadence while progress reads complete but the status is not terminal yet (finalizing).
    pub finalizing: Duration,
    /// Poll close to the completion time estimated from the rate of progress.
    pub eta: bool,
    /// The longest single wait an estimate may justify (the blind schedule stops at `max`).
    pub eta_max: Duration,
    /// Polls without progress after which the estimate is dropped for the blind schedule.
    pub stall_polls: u32,
    /// Server hints longer than this are clamped to it.
    pub hint_max: Duration,
    /// The detection delay to aim for at p99 (`poll.target_delay`). `None` (the `general`
    /// and batch kinds' default, or `"off"`) is the schedule above as it is; the media kind
    /// ships 15 s (its `max`), so its cold blind schedule is unchanged and only progress and
    /// learned job lengths spend fewer requests (docs/benchmarks.md §1, §1b). Set, the policy
    /// spends as few requests as it can within it: with progress it polls at the estimated end
    /// minus the target, then at the end; blind, no gap is longer than the target once the job
    /// could plausibly be done (see `schedule::policy::plan`).
    pub target_delay: Option<Duration>,
}

impl PollConfig {
    /// Seconds-to-minutes jobs (video, image, a background response): react within seconds.
    pub const fn media() -> PollConfig {
        PollConfig {
            enabled: true,
            initial: Duration::from_secs(2),
            multiplier: 1.5,
            max: Duration::from_secs(15),
            jitter: 0.05,
            deadline: Duration::from_secs(6 * 3600),
            finalizing: Duration::from_secs(2),
            eta: true,
            eta_max: Duration::from_secs(60),
            stall_polls: 3,
            hint_max: Duration::from_secs(3600),
            target_delay: Some(Duration::from_secs(15)),
        }
    }

    /// Minutes-to-hours jobs (batch APIs): progress counts drive the schedule.
    pub const fn batch() -> PollConfig {
        PollConfig {
            enabled: true,
            initial: Duration::from_secs(10),
            multiplier: 1.5,
            max: Duration::from_secs(15),
            jitter: 0.05,
            deadline: Duration::from_secs(48 * 3600),
            finalizing: Duration::from_secs(10),
            eta: true,
            eta_max: Duration::from_secs(30 * 60),
            stall_polls: 3,
            hint_max: Duration::from_secs(6 * 3600),
            target_delay: None,
        }
    }

    /// Anything else: a generic JSON status endpoint with unknown job lengths.
    pub const fn general() -> PollConfig {
        PollConfig {
            enabled: true,
            initial: Duration::from_secs(1),
            multiplier: 1.5,
            max: Duration::from_secs(30),
            jitter: 0.05,
            deadline: Duration::from_secs(24 * 3600),
            finalizing: Duration::from_secs(2),
            eta: true,
            eta_max: Duration::from_secs(10 * 60),
            stall_polls: 3,
            hint_max: Duration::from_secs(6 * 3600),
            target_delay: None,
        }
    }
}

/// An upstream's `rate` table as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRate {
    per_second: u32,
    burst: Option<u32>,
    min_per_second: Option<f64>,
    increase_every: Option<Dur>,
}

/// An upstream's `poll` table as written.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawPoll {
    enabled: Option<bool>,
    initial: Option<Dur>,
    multiplier: Option<f64>,
    max: Option<Dur>,
    jitter: Option<f64>,
    deadline: Option<Dur>,
    finalizing: Option<Dur>,
    eta: Option<bool>,
    eta_max: Option<Dur>,
    stall_polls: Option<u32>,
    hint_max: Option<Dur>,
    target_delay: Option<DurOrOff>,
    prior_key: Option<String>,
}

impl RawPoll {
    /// `poll.enabled`, true unless written false.
    pub fn enabled(&self) -> bool {
        self.enabled.unwrap_or(true)
    }

    /// `poll.prior_key`: a JSON pointer into an operation's `metadata` (`"/model"`) whose value
    /// splits the upstream's learned job-length prior (one per value, see `schedule::prior`).
    pub fn prior_key(&self, prefix: &str) -> Result<Option<String>, String> {
        match &self.prior_key {
            None => Ok(None),
            Some(k) if k.starts_with('/') && k.len() > 1 => Ok(Some(k.clone())),
            Some(k) => Err(format!(
                "`{prefix}.poll.prior_key`: must be a JSON pointer into the metadata such as \"/model\", got {k:?}"
            )),
        }
    }
}

/// Resolve the `rate` table; `prefix` is the dotted key of the section that holds it
/// (`upstreams.<name>`).
pub fn resolve_rate(prefix: &str, raw: Option<RawRate>) -> Result<RateConfig, String> {
    let key = |k: &str| format!("{prefix}.{k}");
    let Some(r) = raw else {
        return Ok(RateConfig::new(10, 10));
    };
    if r.per_second == 0 {
        return Err(format!("`{}`: must be at least 1", key("rate.per_second")));
    }
    let burst = r.burst.unwrap_or(r.per_second);
    if burst == 0 {
        return Err(format!("`{}`: must be at least 1", key("rate.burst")));
    }
    let mut rate = RateConfig::new(r.per_second, burst);
    if let Some(min) = r.min_per_second {
        if !(min > 0.0 && min <= f64::from(r.per_second)) {
            return Err(format!(
                "`{}`: must be more than 0 and at most rate.per_second ({}), got {min}",
                key("rate.min_per_second"),
                r.per_second
            ));
        }
        rate.min_per_second = min;
    }
    if let Some(every) = r.increase_every {
        if every.0.is_zero() {
            return Err(format!(
                "`{}`: must be more than 0s",
                key("rate.increase_every")
            ));
        }
        rate.increase_every = every.0;
    }
    Ok(rate)
}

/// Resolve the `poll` table over `dp`, the schedule of the upstream's kind of job; `prefix` is
/// the dotted key of the section that holds it (`upstreams.<name>`).
pub fn resolve_poll(prefix: &str, p: &RawPoll, dp: PollConfig) -> Result<PollConfig, String> {
    let key = |k: &str| format!("{prefix}.{k}");
    let poll = PollConfig {
        enabled: p.enabled(),
        initial: p.initial.map(|d| d.0).unwrap_or(dp.initial),
        multiplier: p.multiplier.unwrap_or(dp.multiplier),
        max: p.max.map(|d| d.0).unwrap_or(dp.max),
        jitter: p.jitter.unwrap_or(dp.jitter),
        deadline: p.deadline.map(|d| d.0).unwrap_or(dp.deadline),
        finalizing: p.finalizing.map(|d| d.0).unwrap_or(dp.finalizing),
        eta: p.eta.unwrap_or(dp.eta),
        // Unset, it is never shorter than the blind schedule's own ceiling.
        eta_max: p.eta_max.map(|d| d.0).unwrap_or(
            dp.eta_max.max(
                p.max
                    .map(|d| d.0)
                    .unwrap_or(dp.max)
                    .max(p.initial.map(|d| d.0).unwrap_or(dp.initial)),
            ),
        ),
        stall_polls: p.stall_polls.unwrap_or(dp.stall_polls),
        hint_max: p.hint_max.map(|d| d.0).unwrap_or(dp.hint_max),
        target_delay: match p.target_delay {
            Some(DurOrOff(t)) => t,
            None => dp.target_delay,
        },
    };
    if poll.initial.is_zero() {
        return Err(format!("`{}`: must be more than 0s", key("poll.initial")));
    }
    if !(1.0..=10.0).contains(&poll.multiplier) {
        return Err(format!(
            "`{}`: must be between 1.0 and 10.0 (got {})",
            key("poll.multiplier"),
            poll.multiplier
        ));
    }
    if poll.max < poll.initial {
        return Err(format!(
            "`{}`: must not be less than poll.initial",
            key("poll.max")
        ));
    }
    if !(0.0..=0.5).contains(&poll.jitter) {
        return Err(format!(
            "`{}`: must be between 0.0 and 0.5 (got {})",
            key("poll.jitter"),
            poll.jitter
        ));
    }
    if poll.deadline.is_zero() {
        return Err(format!("`{}`: must be more than 0s", key("poll.deadline")));
    }
    if poll.finalizing.is_zero() {
        return Err(format!(
            "`{}`: must be more than 0s",
            key("poll.finalizing")
        ));
    }
    if poll.eta_max < poll.initial {
        return Err(format!(
            "`{}`: must not be less than poll.initial",
            key("poll.eta_max")
        ));
    }
    if poll.stall_polls == 0 {
        return Err(format!("`{}`: must be at least 1", key("poll.stall_polls")));
    }
    if poll.hint_max < Duration::from_secs(1) {
        return Err(format!("`{}`: must be at least 1s", key("poll.hint_max")));
    }
    if poll
        .target_delay
        .is_some_and(|t| t < Duration::from_secs(1))
    {
        return Err(format!(
            "`{}`: must be at least 1s (or \"off\" for the plain schedule)",
            key("poll.target_delay")
        ));
    }
    Ok(poll)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn poll(text: &str) -> Result<PollConfig, String> {
        let raw: RawPoll = toml::from_str(text).unwrap();
        resolve_poll("upstreams.u", &raw, PollConfig::batch())
    }

    fn rate(text: &str) -> Result<RateConfig, String> {
        let raw: RawRate = toml::from_str(text).unwrap();
        resolve_rate("upstreams.u", Some(raw))
    }

    #[test]
    fn unset_poll_knobs_come_from_the_kind_of_job() {
        assert_eq!(poll("").unwrap(), PollConfig::batch());
        let p = poll("initial = \"1s\"\nmax = \"1h\"").unwrap();
        assert_eq!(p.initial, Duration::from_secs(1));
        assert_eq!(p.multiplier, PollConfig::batch().multiplier);
        // eta_max unset is never shorter than the blind schedule's ceiling.
        assert_eq!(p.eta_max, Duration::from_secs(3600));
        assert!(!poll("enabled = false").unwrap().enabled);
    }

    #[test]
    fn poll_and_rate_errors_name_the_key() {
        let e = poll("multiplier = 11.0").unwrap_err();
        assert_eq!(
            e,
            "`upstreams.u.poll.multiplier`: must be between 1.0 and 10.0 (got 11)"
        );
        let e = poll("initial = \"20s\"\nmax = \"10s\"").unwrap_err();
        assert_eq!(
            e,
            "`upstreams.u.poll.max`: must not be less than poll.initial"
        );
        assert_eq!(
            rate("per_second = 0").unwrap_err(),
            "`upstreams.u.rate.per_second`: must be at least 1"
        );
        assert_eq!(
            rate("per_second = 5\nburst = 0").unwrap_err(),
            "`upstreams.u.rate.burst`: must be at least 1"
        );
        assert_eq!(
            resolve_rate("upstreams.u", None).unwrap(),
            RateConfig::new(10, 10)
        );
        let r = rate("per_second = 20").unwrap();
        assert_eq!((r.burst, r.min_per_second), (20, 2.0));
    }

    #[test]
    fn target_delay_and_prior_key_are_read_and_checked() {
        // The media kind ships a 15 s target (its `max`); the config may change it or turn it
        // off. The batch and general kinds ship none.
        let media = |text: &str| {
            let raw: RawPoll = toml::from_str(text).unwrap();
            resolve_poll("upstreams.u", &raw, PollConfig::media())
        };
        assert_eq!(
            media("").unwrap().target_delay,
            Some(Duration::from_secs(15))
        );
        assert_eq!(media("target_delay = \"off\"").unwrap().target_delay, None);
        assert_eq!(poll("").unwrap().target_delay, None);
        assert_eq!(
            poll("target_delay = \"15s\"").unwrap().target_delay,
            Some(Duration::from_secs(15))
        );
        assert_eq!(poll("target_delay = \"off\"").unwrap().target_delay, None);
        assert_eq!(
            poll("target_delay = \"100ms\"").unwrap_err(),
            "`upstreams.u.poll.target_delay`: must be at least 1s (or \"off\" for the plain schedule)"
        );
        assert!(toml::from_str::<RawPoll>("target_delay = \"soon\"").is_err());
        let raw: RawPoll = toml::from_str("prior_key = \"/model\"").unwrap();
        assert_eq!(
            raw.prior_key("upstreams.u").unwrap().as_deref(),
            Some("/model")
        );
        let raw: RawPoll = toml::from_str("prior_key = \"model\"").unwrap();
        assert!(
            raw.prior_key("upstreams.u")
                .unwrap_err()
                .starts_with("`upstreams.u.poll.prior_key`: must be a JSON pointer")
        );
    }
}
