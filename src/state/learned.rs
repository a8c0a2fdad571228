//! What hookshim has learned about its upstreams' job lengths: the shared [`Priors`] behind a
//! lock, fed by [`crate::state::Shim::on_terminal`], read by registration and the poller, saved
//! to the store at most every [`PRIORS_SAVE_EVERY`] and loaded at start. The math is in
//! [`crate::schedule::prior`]; this is only where it lives at run time.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

use crate::clock::Timestamp;
use crate::schedule::policy::blind_polls;
use crate::schedule::prior::key_of;
use crate::schedule::{PollConfig, Prior, Priors};
use crate::store::Store;

/// The priors are written to the store at most this often (each completion updates them in
/// memory; a crash forgets at most this much learning).
pub const PRIORS_SAVE_EVERY: Duration = Duration::from_secs(30);

/// The learned priors and per-upstream savings, shared by every stage.
#[derive(Default)]
pub struct Learned {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    priors: Priors,
    saved_at: Option<Timestamp>,
    /// Completions recorded since the last save.
    unsaved: bool,
    /// Requests not made compared to today's blind schedule, per upstream (since start).
    requests_saved: BTreeMap<String, u64>,
}

/// One completion as [`Learned::record`] saw it.
pub struct Recorded {
    /// The prior after the completion.
    pub prior: Prior,
    /// Requests saved by this operation against the blind schedule (0 when it cost more).
    pub saved: u64,
    /// The priors to write to the store now, when a save is due.
    pub save: Option<Vec<u8>>,
}

impl Learned {
    /// Start from what the store kept (nothing, or unreadable: start cold, with a warning).
    pub async fn load(store: &dyn Store) -> Learned {
        let priors = match store.load_priors().await {
            Ok(Some(bytes)) => Priors::from_bytes(&bytes).unwrap_or_else(|e| {
                tracing::warn!(error = %e, "the stored job-length priors are unreadable; starting without them");
                Priors::default()
            }),
            Ok(None) => Priors::default(),
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the stored job-length priors; starting without them");
                Priors::default()
            }
        };
        Learned {
            inner: Mutex::new(Inner {
                priors,
                ..Inner::default()
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The prior an operation of `upstream` with `metadata` plans with (`pointer`:
    /// the upstream's `poll.prior_key`).
    pub fn prior(
        &self,
        upstream: &str,
        pointer: Option<&str>,
        metadata: Option<&serde_json::Value>,
    ) -> Option<Prior> {
        let key = key_of(pointer, metadata);
        self.lock().priors.get(upstream, &key).cloned()
    }

    /// Record a completion of `secs` that took `polls` requests; says what to save and what
    /// it saved.
    #[allow(clippy::too_many_arguments)]
    pub fn record(
        &self,
        upstream: &str,
        pointer: Option<&str>,
        metadata: Option<&serde_json::Value>,
        poll: &PollConfig,
        secs: f64,
        polls: u32,
        now: Timestamp,
    ) -> Recorded {
        let key = key_of(pointer, metadata);
        let mut inner = self.lock();
        let prior = inner.priors.record(upstream, &key, secs).clone();
        let saved = u64::from(blind_polls(poll, secs).saturating_sub(polls));
        *inner
            .requests_saved
            .entry(upstream.to_string())
            .or_default() += saved;
        let due = inner
            .saved_at
            .is_none_or(|at| now.0 >= at.0 + PRIORS_SAVE_EVERY.as_millis() as u64);
        inner.unsaved = true;
        let save = due.then(|| {
            inner.saved_at = Some(now);
            inner.unsaved = false;
            inner.priors.to_bytes()
        });
        Recorded { prior, saved, save }
    }

    /// Every prior of `upstream`, by key, and the requests it saved since start.
    pub fn of(&self, upstream: &str) -> (Vec<(String, Prior)>, u64) {
        let inner = self.lock();
        let priors = inner
            .priors
            .of(upstream)
            .map(|(k, p)| (k.clone(), p.clone()))
            .collect();
        let saved = inner.requests_saved.get(upstream).copied().unwrap_or(0);
        (priors, saved)
    }

    /// The bytes to save at shutdown, if anything was learned since the last save.
    pub fn unsaved(&self) -> Option<Vec<u8>> {
        let mut inner = self.lock();
        std::mem::take(&mut inner.unsaved).then(|| inner.priors.to_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn saves_at_most_every_30_seconds_and_counts_savings() {
        let l = Learned::default();
        let poll = PollConfig::general();
        let t = |s: u64| Timestamp(1_000_000 + s * 1000);
        // The first completion saves; the next within 30 s do not; the one after does.
        assert!(
            l.record("u", None, None, &poll, 10.0, 2, t(0))
                .save
                .is_some()
        );
        assert!(
            l.record("u", None, None, &poll, 10.0, 2, t(10))
                .save
                .is_none()
        );
        assert!(
            l.record("u", None, None, &poll, 10.0, 2, t(29))
                .save
                .is_none()
        );
        let r = l.record("u", None, None, &poll, 10.0, 2, t(30));
        assert!(r.save.is_some());
        assert_eq!(r.prior.count, 4);
        // A 10 s job on the general blind schedule is seen by the 6th poll (at 1, 2, 3.5,
        // 5.75, 9.1, 14.2 s); 2 were made.
        assert_eq!(r.saved, 4);
        let (priors, saved) = l.of("u");
        assert_eq!((priors.len(), saved), (1, 16));
        // Nothing new since the last save: nothing to save at shutdown.
        assert!(l.unsaved().is_none());
        l.record("u", None, None, &poll, 10.0, 2, t(31));
        assert!(l.unsaved().is_some());
        // A prior key splits the priors.
        let m = serde_json::json!({"model": "a"});
        l.record("u", Some("/model"), Some(&m), &poll, 10.0, 2, t(32));
        assert_eq!(l.of("u").0.len(), 2);
        assert!(l.prior("u", Some("/model"), Some(&m)).is_some());
    }
}
