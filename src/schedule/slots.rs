//! Work slots per group (per upstream for polls, per callback destination for deliveries), on
//! top of the global in-flight limit: one slow or hanging upstream, or one dead receiver, holds
//! at most its group's share and cannot starve the others. Taking a slot never waits: a worker
//! that finds its group full puts the item back a little later and frees its global slot, so
//! a full group never blocks the dispatcher or the items behind it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

/// When a group is full, the item is tried again after this long.
pub const GROUP_FULL_RETRY: Duration = Duration::from_millis(200);

/// At most `per_group` slots in use per group name. Only groups with a slot in use are kept.
pub struct GroupSlots {
    per_group: usize,
    in_use: Mutex<HashMap<String, usize>>,
}

/// A slot of one group; given back when dropped.
pub struct GroupSlot {
    slots: Arc<GroupSlots>,
    group: String,
}

impl GroupSlots {
    pub fn new(per_group: usize) -> Arc<GroupSlots> {
        Arc::new(GroupSlots {
            per_group: per_group.max(1),
            in_use: Mutex::new(HashMap::new()),
        })
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<String, usize>> {
        self.in_use.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A slot of `group`, or `None` if all of its slots are in use.
    pub fn try_take(self: &Arc<Self>, group: &str) -> Option<GroupSlot> {
        let mut in_use = self.lock();
        let n = in_use.entry(group.to_string()).or_insert(0);
        if *n >= self.per_group {
            return None;
        }
        *n += 1;
        Some(GroupSlot {
            slots: self.clone(),
            group: group.to_string(),
        })
    }

    /// Slots of `group` in use now.
    pub fn in_use(&self, group: &str) -> usize {
        self.lock().get(group).copied().unwrap_or(0)
    }
}

impl Drop for GroupSlot {
    fn drop(&mut self) {
        let mut in_use = self.slots.lock();
        if let Some(n) = in_use.get_mut(&self.group) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                in_use.remove(&self.group);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_group_leaves_the_others_free() {
        let slots = GroupSlots::new(2);
        let a1 = slots.try_take("a");
        let a2 = slots.try_take("a");
        assert!(a1.is_some() && a2.is_some());
        assert!(slots.try_take("a").is_none(), "a third slot of a");
        let b = slots.try_take("b");
        assert!(b.is_some(), "b is not held up by a");
        drop(a1);
        assert_eq!(slots.in_use("a"), 1);
        assert!(slots.try_take("a").is_some());
        drop((a2, b));
        assert_eq!(slots.in_use("a"), 0);
        assert!(slots.lock().is_empty(), "idle groups are forgotten");
    }
}
