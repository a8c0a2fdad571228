//! A due-queue: ids ordered by the time they are due, one entry per id.
//!
//! A `BTreeSet<(Timestamp, id)>` gives the earliest entry in O(log n) no matter how many
//! operations are tracked; the `HashMap` from id to its time lets a reschedule replace the old
//! entry. A std `Mutex` (not a tokio one) because no lock is held across an `.await`; waiting is
//! done on a `Notify`, not by polling.

use std::collections::{BTreeSet, HashMap};
use std::sync::Mutex;
use std::time::Duration;

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::clock::{Clock, Timestamp};

#[derive(Default)]
struct Inner {
    by_time: BTreeSet<(Timestamp, String)>,
    by_id: HashMap<String, Timestamp>,
}

#[derive(Default)]
pub struct DueQueue {
    inner: Mutex<Inner>,
    changed: Notify,
}

/// The longest the worker sleeps without re-reading the clock (keeps it honest if the wall clock
/// jumps).
const MAX_SLEEP: Duration = Duration::from_secs(1);

impl DueQueue {
    pub fn new() -> DueQueue {
        DueQueue::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding this lock cannot leave the two maps inconsistent in a way that
        // matters more than stopping; recover the guard rather than poisoning every caller.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Put `id` on the queue at `at`, replacing any earlier entry for it.
    pub fn schedule(&self, id: &str, at: Timestamp) {
        let mut g = self.lock();
        if let Some(old) = g.by_id.insert(id.to_string(), at) {
            g.by_time.remove(&(old, id.to_string()));
        }
        g.by_time.insert((at, id.to_string()));
        let is_first = g.by_time.first().is_some_and(|(t, i)| *t == at && i == id);
        drop(g);
        if is_first {
            self.changed.notify_one();
        }
    }

    /// Move `id` earlier to `at` if it is not already due sooner (or add it).
    pub fn schedule_no_later_than(&self, id: &str, at: Timestamp) {
        let current = self.lock().by_id.get(id).copied();
        if current.is_none_or(|c| c > at) {
            self.schedule(id, at);
        }
    }

    pub fn remove(&self, id: &str) {
        let mut g = self.lock();
        if let Some(old) = g.by_id.remove(id) {
            g.by_time.remove(&(old, id.to_string()));
        }
    }

    pub fn len(&self) -> usize {
        self.lock().by_id.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn due_at(&self, id: &str) -> Option<Timestamp> {
        self.lock().by_id.get(id).copied()
    }

    /// Take up to `max` entries that are due at `now`.
    pub fn pop_due(&self, now: Timestamp, max: usize) -> Vec<String> {
        let mut g = self.lock();
        let mut out = Vec::new();
        while out.len() < max {
            let Some((at, _)) = g.by_time.first() else {
                break;
            };
            if *at > now {
                break;
            }
            if let Some((_, id)) = g.by_time.pop_first() {
                g.by_id.remove(&id);
                out.push(id);
            }
        }
        out
    }

    /// Wait until at least one entry is due, then take up to `max` of them. Returns an empty
    /// vector when `shutdown` fires.
    pub async fn next_batch(
        &self,
        clock: &dyn Clock,
        max: usize,
        shutdown: &CancellationToken,
    ) -> Vec<String> {
        loop {
            let now = clock.now();
            let batch = self.pop_due(now, max);
            if !batch.is_empty() {
                return batch;
            }
            let wait = match self.lock().by_time.first() {
                Some((at, _)) => now.until(*at).min(MAX_SLEEP),
                None => MAX_SLEEP,
            };
            tokio::select! {
                _ = self.changed.notified() => {}
                _ = tokio::time::sleep(wait) => {}
                _ = shutdown.cancelled() => return Vec::new(),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pops_in_time_order_and_reschedule_replaces() {
        let q = DueQueue::new();
        q.schedule("a", Timestamp(30));
        q.schedule("b", Timestamp(10));
        q.schedule("c", Timestamp(20));
        q.schedule("a", Timestamp(5));
        assert_eq!(q.len(), 3);
        assert_eq!(q.pop_due(Timestamp(20), 10), vec!["a", "b", "c"]);
        assert!(q.is_empty());
    }

    #[test]
    fn nothing_pops_before_it_is_due() {
        let q = DueQueue::new();
        q.schedule("a", Timestamp(100));
        assert!(q.pop_due(Timestamp(99), 10).is_empty());
        q.schedule_no_later_than("a", Timestamp(200));
        assert_eq!(q.due_at("a"), Some(Timestamp(100)));
        q.schedule_no_later_than("a", Timestamp(50));
        assert_eq!(q.pop_due(Timestamp(50), 10), vec!["a"]);
    }

    #[test]
    fn pop_respects_max() {
        let q = DueQueue::new();
        for i in 0..10 {
            q.schedule(&format!("op{i}"), Timestamp(i));
        }
        assert_eq!(q.pop_due(Timestamp(100), 4).len(), 4);
        assert_eq!(q.len(), 6);
    }
}
