//! Learned job-length priors, pure: how long an upstream's jobs (or one kind of them, picked by
//! `poll.prior_key`) have taken, as a compact decayed histogram, and the schedule it suggests.
//!
//! - Memory: [`BUCKETS`] log-spaced buckets from [`LOW_SECS`] to [`HIGH_SECS`] (each ~1.49×
//!   wider than the one before), one `f64` each: 256 bytes per prior, whatever the traffic.
//!   At most [`MAX_KEYS`] priors are kept (the least used is dropped).
//! - Decay by completion count: each completion multiplies the weights before it by
//!   `1 - 1/WINDOW` ([`WINDOW`] = 50). After a shift in the distribution, the old jobs' share is
//!   `(1 - 1/50)^k` after `k` new completions: below one half after 35, so the learned median
//!   moves to the new distribution within **35 completions** (pinned by a test).
//! - Cold start: fewer than [`MIN_COMPLETIONS`] (20) completions, [`Prior::warm`] is false
//!   and the policy is today's.
//!
//! What the policy reads ([`crate::schedule::policy::plan`]): the first poll at the
//! [`FIRST_QUANTILE`] (where this kind of job starts finishing), then each blind poll where
//! [`HAZARD_MASS`] of the jobs still running at the last poll are expected to have finished —
//! close together where completions are likely, far apart where they are not.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Buckets of the histogram.
pub const BUCKETS: usize = 32;
/// Lower edge of the first bucket, seconds (shorter jobs count in it).
pub const LOW_SECS: f64 = 0.5;
/// Upper edge of the last bucket, seconds (two days; longer jobs count in it).
pub const HIGH_SECS: f64 = 172_800.0;
/// The decay window in completions (see the module doc for the bound it gives).
pub const WINDOW: f64 = 50.0;
/// Completions below which a prior is not used (cold start: today's policy).
pub const MIN_COMPLETIONS: u64 = 20;
/// The quantile of the learned durations where a new operation's first poll goes.
pub const FIRST_QUANTILE: f64 = 0.005;
/// The share of the still-running jobs expected to finish between two blind polls.
pub const HAZARD_MASS: f64 = 0.5;
/// Past this survival (the learned p99.5), the prior knows too little: the blind backoff runs.
pub const TAIL: f64 = 0.005;
/// The most priors kept (upstream × key values).
pub const MAX_KEYS: usize = 1024;

fn ratio() -> f64 {
    (HIGH_SECS / LOW_SECS).powf(1.0 / BUCKETS as f64)
}

/// Lower edge of bucket `i` (`i = BUCKETS` gives the upper edge of the last one).
fn edge(i: usize) -> f64 {
    LOW_SECS * ratio().powi(i as i32)
}

/// The bucket a duration falls in, and where in it (0..1, on a log scale).
fn locate(secs: f64) -> (usize, f64) {
    let x = (secs.max(LOW_SECS) / LOW_SECS).ln() / ratio().ln();
    if x >= BUCKETS as f64 {
        return (BUCKETS - 1, 1.0);
    }
    let i = x.floor() as usize;
    (i, x - i as f64)
}

/// One job-length distribution.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Prior {
    weights: [f64; BUCKETS],
    /// Completions ever recorded.
    pub count: u64,
}

impl Default for Prior {
    fn default() -> Self {
        Prior {
            weights: [0.0; BUCKETS],
            count: 0,
        }
    }
}

impl Prior {
    /// Record one completed job of `secs`.
    pub fn record(&mut self, secs: f64) {
        if !secs.is_finite() || secs < 0.0 {
            return;
        }
        for w in &mut self.weights {
            *w *= 1.0 - 1.0 / WINDOW;
        }
        let (i, _) = locate(secs);
        self.weights[i] += 1.0;
        self.count += 1;
    }

    /// Decayed completions held.
    pub fn weight(&self) -> f64 {
        self.weights.iter().sum()
    }

    /// Enough completions to plan with.
    pub fn warm(&self) -> bool {
        self.count >= MIN_COMPLETIONS
    }

    /// The `q` quantile of the learned durations, seconds (log-interpolated in its bucket).
    pub fn quantile(&self, q: f64) -> Option<f64> {
        let total = self.weight();
        if total <= 0.0 {
            return None;
        }
        let want = q.clamp(0.0, 1.0) * total;
        let mut seen = 0.0;
        for (i, w) in self.weights.iter().enumerate() {
            if *w > 0.0 && seen + w >= want {
                let f = ((want - seen) / w).clamp(0.0, 1.0);
                return Some(edge(i) * ratio().powf(f));
            }
            seen += w;
        }
        Some(edge(BUCKETS))
    }

    /// The share of jobs still running after `secs` (log-interpolated in its bucket).
    pub fn survival(&self, secs: f64) -> f64 {
        let total = self.weight();
        if total <= 0.0 {
            return 1.0;
        }
        let (i, f) = locate(secs);
        let done: f64 = self.weights[..i].iter().sum::<f64>() + self.weights[i] * f;
        (1.0 - done / total).clamp(0.0, 1.0)
    }

    /// Where to look next after a poll at `elapsed` seconds that found the job running: the time
    /// by which [`HAZARD_MASS`] of the jobs still running then are expected to have finished.
    /// `None` past the learned tail ([`TAIL`]) or while cold.
    pub fn next_look(&self, elapsed: f64) -> Option<f64> {
        if !self.warm() {
            return None;
        }
        let s = self.survival(elapsed);
        if s <= TAIL {
            return None;
        }
        let at = self.quantile(1.0 - s * (1.0 - HAZARD_MASS))?;
        Some(at.max(elapsed))
    }

    /// Where a new operation's first look goes, seconds after its creation (`None` while cold).
    pub fn first_look(&self) -> Option<f64> {
        self.warm().then(|| self.quantile(FIRST_QUANTILE)).flatten()
    }
}

/// Every prior, by upstream and the value of its `poll.prior_key` (`""` without one). Bounded
/// by [`MAX_KEYS`]; serialised whole for the store.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Priors {
    map: BTreeMap<String, BTreeMap<String, Prior>>,
}

impl Priors {
    pub fn get(&self, upstream: &str, key: &str) -> Option<&Prior> {
        self.map.get(upstream)?.get(key)
    }

    /// Record a completion of `secs` for `(upstream, key)`; returns the prior it updated.
    pub fn record(&mut self, upstream: &str, key: &str, secs: f64) -> &Prior {
        let len: usize = self.map.values().map(BTreeMap::len).sum();
        let exists = self.get(upstream, key).is_some();
        if !exists && len >= MAX_KEYS {
            // Drop the least used prior to make room.
            let least = self
                .map
                .iter()
                .flat_map(|(u, m)| {
                    m.iter()
                        .map(move |(k, p)| (p.weight(), u.clone(), k.clone()))
                })
                .min_by(|a, b| a.0.total_cmp(&b.0));
            if let Some((_, u, k)) = least {
                if let Some(m) = self.map.get_mut(&u) {
                    m.remove(&k);
                    if m.is_empty() {
                        self.map.remove(&u);
                    }
                }
            }
        }
        let p = self
            .map
            .entry(upstream.to_string())
            .or_default()
            .entry(key.to_string())
            .or_default();
        p.record(secs);
        p
    }

    /// Every prior of `upstream`, by key.
    pub fn of(&self, upstream: &str) -> impl Iterator<Item = (&String, &Prior)> {
        self.map.get(upstream).into_iter().flat_map(|m| m.iter())
    }

    pub fn len(&self) -> usize {
        self.map.values().map(BTreeMap::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    pub fn from_bytes(bytes: &[u8]) -> Result<Priors, serde_json::Error> {
        serde_json::from_slice(bytes)
    }
}

/// The prior key of an operation: the string (or JSON text) at `pointer` in its metadata, `""`
/// without a pointer or a value.
pub fn key_of(pointer: Option<&str>, metadata: Option<&serde_json::Value>) -> String {
    let (Some(ptr), Some(m)) = (pointer, metadata) else {
        return String::new();
    };
    match m.pointer(ptr) {
        None => String::new(),
        Some(serde_json::Value::String(s)) => s.chars().take(64).collect(),
        Some(v) => v.to_string().chars().take(64).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn uniform_log(p: &mut Prior, lo: f64, hi: f64, n: usize) {
        // A fixed permutation (77 is prime to the sizes used): no order effect from the decay.
        for i in 0..n {
            let u = ((i * 77) % n) as f64 / n as f64 + 0.5 / n as f64;
            p.record(lo * (hi / lo).powf(u));
        }
    }

    #[test]
    fn quantiles_follow_what_was_recorded_within_a_bucket() {
        let mut p = Prior::default();
        uniform_log(&mut p, 5.0, 60.0, 200);
        let q = |x| p.quantile(x).unwrap();
        // Log-uniform 5–60 s: p10 6.4, p50 17.3, p90 46.9, each within a bucket (×1.49).
        assert!(q(0.1) > 6.4 / 1.5 && q(0.1) < 6.4 * 1.5, "{}", q(0.1));
        assert!(q(0.5) > 17.3 / 1.5 && q(0.5) < 17.3 * 1.5, "{}", q(0.5));
        assert!(q(0.9) > 46.9 / 1.5 && q(0.9) < 46.9 * 1.5, "{}", q(0.9));
        assert!(p.survival(3.0) > 0.99 && p.survival(100.0) < 0.01);
    }

    #[test]
    fn cold_priors_plan_nothing() {
        let mut p = Prior::default();
        uniform_log(&mut p, 5.0, 60.0, 19);
        assert!(!p.warm());
        assert_eq!(p.first_look(), None);
        assert_eq!(p.next_look(10.0), None);
        p.record(10.0);
        assert!(p.warm());
        assert!(p.first_look().is_some());
    }

    #[test]
    fn the_first_look_is_where_jobs_start_finishing_and_next_looks_follow_the_hazard() {
        let mut p = Prior::default();
        for _ in 0..100 {
            uniform_log(&mut p, 100.0, 200.0, 10);
        }
        let first = p.first_look().unwrap();
        assert!((60.0..=101.0).contains(&first), "{first}");
        // Inside the mass, each look halves the jobs still running: short steps.
        let next = p.next_look(120.0).unwrap();
        assert!(next > 120.0 && next < 200.0, "{next}");
        // Past the tail, the prior has nothing to say.
        assert_eq!(p.next_look(400.0), None);
    }

    #[test]
    fn a_shift_is_noticed_within_35_completions() {
        let mut p = Prior::default();
        for _ in 0..40 {
            uniform_log(&mut p, 10.0, 20.0, 10); // 400 jobs of 10–20 s
        }
        assert!(p.quantile(0.5).unwrap() < 25.0);
        for i in 0..35 {
            p.record(100.0 + i as f64); // the provider got slower
        }
        assert!(
            p.quantile(0.5).unwrap() > 80.0,
            "median {}",
            p.quantile(0.5).unwrap()
        );
    }

    #[test]
    fn memory_is_bounded() {
        let mut ps = Priors::default();
        for i in 0..(MAX_KEYS + 50) {
            ps.record("u", &format!("k{i}"), 10.0);
        }
        assert_eq!(ps.len(), MAX_KEYS);
        let back = Priors::from_bytes(&ps.to_bytes()).unwrap();
        assert_eq!(back, ps);
    }

    #[test]
    fn the_key_comes_from_the_metadata_pointer() {
        let m = serde_json::json!({"model": "veo-3", "n": 2});
        assert_eq!(key_of(Some("/model"), Some(&m)), "veo-3");
        assert_eq!(key_of(Some("/n"), Some(&m)), "2");
        assert_eq!(key_of(Some("/x"), Some(&m)), "");
        assert_eq!(key_of(None, Some(&m)), "");
    }
}
