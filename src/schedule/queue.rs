//! A due-queue: ids ordered by the time they are due, one entry per id.
//!
//! A `BTreeSet<(Timestamp, id)>` gives the earliest entry in O(log n) no matter how many
//! operations are tracked; the `HashMap` from id to its time lets a reschedule replace the old
//! entry. A std `Mutex` (not a tokio one) because no lock is held across an `.await`; waiting is
//! done on a `Notify`, not by polling.
//!
//! Both maps hold every id, so ids are kept as a [`Key`]: an `op_<ULID>` id (every operation id
//! hookshim makes) as its 16 bytes, inline, instead of a heap string in each map. At a million
//! tracked operations that is ~80 MB less memory (measured with `hookshim-bench scale`).

use std::borrow::Cow;
use std::collections::{BTreeSet, HashMap};
use std::marker::PhantomData;
use std::sync::Mutex;
use std::time::Duration;

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use ulid::Ulid;

use crate::clock::{Clock, Timestamp};
use crate::ids::{DeliveryKey, OperationId};

/// What a [`DueQueue`] can hold: anything with a text form it can be rebuilt from.
pub trait QueueId: Sized {
    fn queue_text(&self) -> Cow<'_, str>;
    fn from_queue_text(text: String) -> Self;
}

impl QueueId for String {
    fn queue_text(&self) -> Cow<'_, str> {
        Cow::Borrowed(self)
    }
    fn from_queue_text(text: String) -> Self {
        text
    }
}

impl QueueId for OperationId {
    fn queue_text(&self) -> Cow<'_, str> {
        Cow::Borrowed(self.as_str())
    }
    fn from_queue_text(text: String) -> Self {
        OperationId::from_text(text)
    }
}

impl QueueId for DeliveryKey {
    fn queue_text(&self) -> Cow<'_, str> {
        match &self.event {
            None => Cow::Borrowed(self.operation.as_str()),
            Some(_) => Cow::Owned(self.to_string()),
        }
    }
    fn from_queue_text(text: String) -> Self {
        DeliveryKey::parse(&text)
    }
}

/// An id as the queue keeps it. 24 bytes, no allocation for operation ids.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
enum Key {
    /// `op_<ULID>` in canonical form: the ULID's bytes (they sort like the text).
    Op([u8; 16]),
    /// Anything else, as given.
    Other(Box<str>),
}

impl Key {
    fn new(id: &str) -> Key {
        if let Some(Ok(u)) = id.strip_prefix("op_").map(Ulid::from_string) {
            let mut buf = [0u8; ulid::ULID_LEN];
            // Only when the text comes back identical (ULIDs also parse in lower case).
            if u.array_to_str(&mut buf) == &id[3..] {
                return Key::Op(u.to_bytes());
            }
        }
        Key::Other(id.into())
    }

    fn to_id(&self) -> String {
        match self {
            Key::Op(b) => format!("op_{}", Ulid::from_bytes(*b)),
            Key::Other(s) => s.to_string(),
        }
    }
}

#[derive(Default)]
struct Inner {
    by_time: BTreeSet<(Timestamp, Key)>,
    by_id: HashMap<Key, Timestamp>,
}

/// Ids of kind `K` (operation ids for polls, delivery keys for callbacks) by due time.
pub struct DueQueue<K = String> {
    inner: Mutex<Inner>,
    changed: Notify,
    kind: PhantomData<fn() -> K>,
}

impl<K: QueueId> Default for DueQueue<K> {
    fn default() -> Self {
        DueQueue {
            inner: Mutex::default(),
            changed: Notify::new(),
            kind: PhantomData,
        }
    }
}

/// The longest the worker sleeps without re-reading the clock (keeps it honest if the wall clock
/// jumps).
const MAX_SLEEP: Duration = Duration::from_secs(1);

impl<K: QueueId> DueQueue<K> {
    pub fn new() -> DueQueue<K> {
        DueQueue::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding this lock cannot leave the two maps inconsistent in a way that
        // matters more than stopping; recover the guard rather than poisoning every caller.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Put `id` on the queue at `at`, replacing any earlier entry for it.
    pub fn schedule(&self, id: &K, at: Timestamp) {
        let key = Key::new(&id.queue_text());
        let mut g = self.lock();
        if let Some(old) = g.by_id.insert(key.clone(), at) {
            g.by_time.remove(&(old, key.clone()));
        }
        let is_first = g
            .by_time
            .first()
            .is_none_or(|first| (at, &key) < (first.0, &first.1));
        g.by_time.insert((at, key));
        drop(g);
        if is_first {
            self.changed.notify_one();
        }
    }

    /// Move `id` earlier to `at` if it is not already due sooner (or add it).
    pub fn schedule_no_later_than(&self, id: &K, at: Timestamp) {
        let current = self.lock().by_id.get(&Key::new(&id.queue_text())).copied();
        if current.is_none_or(|c| c > at) {
            self.schedule(id, at);
        }
    }

    pub fn remove(&self, id: &K) {
        let key = Key::new(&id.queue_text());
        let mut g = self.lock();
        if let Some(old) = g.by_id.remove(&key) {
            g.by_time.remove(&(old, key));
        }
    }

    pub fn len(&self) -> usize {
        self.lock().by_id.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn due_at(&self, id: &K) -> Option<Timestamp> {
        self.lock().by_id.get(&Key::new(&id.queue_text())).copied()
    }

    /// Move every entry due at `now` to a random time in `now..now + spread` (after a restart,
    /// so overdue work does not stampede). Returns how many are due; with a zero `spread` it
    /// only counts them.
    pub fn spread_due(&self, now: Timestamp, spread: Duration) -> usize {
        // Everything at or before `now` (`Op([0; 16])` is the least key at a given time).
        let upto = ..(now.plus(Duration::from_millis(1)), Key::Op([0; 16]));
        let mut g = self.lock();
        if spread.is_zero() {
            return g.by_time.range(upto).count();
        }
        let due: Vec<(Timestamp, Key)> = g.by_time.range(upto).cloned().collect();
        for (old, key) in &due {
            g.by_time.remove(&(*old, key.clone()));
            let at = now.plus(spread.mul_f64(rand::random::<f64>()));
            g.by_id.insert(key.clone(), at);
            g.by_time.insert((at, key.clone()));
        }
        drop(g);
        self.changed.notify_one();
        due.len()
    }

    /// Take up to `max` entries that are due at `now`.
    pub fn pop_due(&self, now: Timestamp, max: usize) -> Vec<K> {
        let mut g = self.lock();
        let mut out = Vec::new();
        while out.len() < max {
            let Some((at, _)) = g.by_time.first() else {
                break;
            };
            if *at > now {
                break;
            }
            if let Some((_, key)) = g.by_time.pop_first() {
                g.by_id.remove(&key);
                out.push(K::from_queue_text(key.to_id()));
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
    ) -> Vec<K> {
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
        let q = DueQueue::<String>::new();
        q.schedule(&"a".to_string(), Timestamp(30));
        q.schedule(&"b".to_string(), Timestamp(10));
        q.schedule(&"c".to_string(), Timestamp(20));
        q.schedule(&"a".to_string(), Timestamp(5));
        assert_eq!(q.len(), 3);
        assert_eq!(q.pop_due(Timestamp(20), 10), vec!["a", "b", "c"]);
        assert!(q.is_empty());
    }

    #[test]
    fn nothing_pops_before_it_is_due() {
        let q = DueQueue::<String>::new();
        q.schedule(&"a".to_string(), Timestamp(100));
        assert!(q.pop_due(Timestamp(99), 10).is_empty());
        q.schedule_no_later_than(&"a".to_string(), Timestamp(200));
        assert_eq!(q.due_at(&"a".to_string()), Some(Timestamp(100)));
        q.schedule_no_later_than(&"a".to_string(), Timestamp(50));
        assert_eq!(q.pop_due(Timestamp(50), 10), vec!["a"]);
    }

    #[test]
    fn operation_ids_are_kept_compact_and_come_back_unchanged() {
        let q = DueQueue::<String>::new();
        let op = format!("op_{}", Ulid::from_parts(1_700_000_000_000, 42));
        let lower = op.to_lowercase();
        q.schedule(&op, Timestamp(2));
        q.schedule(&lower, Timestamp(1));
        q.schedule(&"op_not-a-ulid".to_string(), Timestamp(3));
        assert!(matches!(Key::new(&op), Key::Op(_)));
        assert!(matches!(Key::new(&lower), Key::Other(_)));
        assert_eq!(q.len(), 3);
        assert_eq!(q.due_at(&op), Some(Timestamp(2)));
        assert_eq!(
            q.pop_due(Timestamp(10), 10),
            vec![lower, op, "op_not-a-ulid".to_string()]
        );
    }

    #[test]
    fn overdue_entries_are_spread_and_later_ones_kept() {
        let q = DueQueue::<String>::new();
        for i in 0..100 {
            q.schedule(&format!("late{i}"), Timestamp(i));
        }
        q.schedule(&"future".to_string(), Timestamp(10_000));
        assert_eq!(q.spread_due(Timestamp(1_000), Duration::from_secs(2)), 100);
        assert_eq!(q.len(), 101);
        assert_eq!(q.due_at(&"future".to_string()), Some(Timestamp(10_000)));
        let times: Vec<u64> = (0..100)
            .map(|i| q.due_at(&format!("late{i}")).unwrap().0)
            .collect();
        assert!(
            times.iter().all(|t| (1_000..3_000).contains(t)),
            "{times:?}"
        );
        assert!(
            times.iter().any(|t| *t != times[0]),
            "spread, not all at one time"
        );
    }

    #[test]
    fn pop_respects_max() {
        let q = DueQueue::<String>::new();
        for i in 0..10 {
            q.schedule(&format!("op{i}"), Timestamp(i));
        }
        assert_eq!(q.pop_due(Timestamp(100), 4).len(), 4);
        assert_eq!(q.len(), 6);
    }
}
