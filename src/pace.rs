//! An operation's pace: the progress history the polling policy estimates completion from. It
//! is part of the stored record (so an estimate survives a restart) and pure math over the
//! readings and the times they were taken; [`crate::schedule::policy`] decides with it.

use serde::{Deserialize, Serialize};

use crate::clock::Timestamp;

/// What the policy remembers about an operation's progress between polls (kept in the record,
/// so an estimate survives a restart).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Pace {
    /// The last progress value that differed from the one before (0..=1).
    pub progress: Option<f64>,
    /// When `progress` was first seen.
    pub at: Option<Timestamp>,
    /// Smoothed rate of progress, per second.
    pub rate: Option<f64>,
    /// Polls in a row that showed no progress.
    pub stalled: u32,
    /// When progress was first seen: an estimate is never trusted further ahead than the time
    /// it has been watched (so an early, noisy estimate cannot skip the end of a job).
    #[serde(default)]
    pub since: Option<Timestamp>,
}

/// Weight of the newest rate sample in the smoothed rate (exponential moving average).
const RATE_SMOOTHING: f64 = 0.5;
impl Pace {
    /// Record one reading. `None` (the upstream reports no progress) leaves the pace alone.
    pub fn observe(&mut self, progress: Option<f64>, now: Timestamp) {
        let Some(p) = progress
            .filter(|p| p.is_finite())
            .map(|p| p.clamp(0.0, 1.0))
        else {
            return;
        };
        match (self.progress, self.at) {
            (Some(prev), Some(at)) if p > prev + 1e-9 => {
                let secs = (now.0.saturating_sub(at.0)) as f64 / 1000.0;
                if secs > 0.0 {
                    let sample = (p - prev) / secs;
                    self.rate = Some(match self.rate {
                        None => sample,
                        Some(r) => RATE_SMOOTHING * sample + (1.0 - RATE_SMOOTHING) * r,
                    });
                }
                self.progress = Some(p);
                self.at = Some(now);
                self.stalled = 0;
            }
            (Some(_), Some(_)) => self.stalled += 1,
            _ => {
                self.progress = Some(p);
                self.at = Some(now);
                self.stalled = 0;
                self.since = Some(now);
            }
        }
    }

    /// Seconds progress has been watched for.
    pub fn watched_secs(&self, now: Timestamp) -> f64 {
        self.since
            .map_or(0.0, |s| now.0.saturating_sub(s.0) as f64 / 1000.0)
    }

    /// Seconds until progress is expected to reach 1, from `now` (negative when overdue).
    /// `None` without a usable rate.
    pub fn eta_secs(&self, now: Timestamp) -> Option<f64> {
        let (p, at, rate) = (self.progress?, self.at?, self.rate?);
        if rate <= 0.0 {
            return None;
        }
        let since = now.0.saturating_sub(at.0) as f64 / 1000.0;
        Some((1.0 - p) / rate - since)
    }
}
