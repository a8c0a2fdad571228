//! Retention on sled: a pass walks `ops` in id order, only over ids created before the
//! cutoffs — ULIDs sort by creation time and an operation settles after it was created, so
//! nothing later can be due — in batches of a bounded number of records. Running operations
//! (an `active` entry) and failed deliveries (a `failed` entry) that are kept are skipped
//! without decoding their record; the rest are read, and each one the cutoffs purge is checked
//! again under its id lock and removed like a delete (record first, then its indexes: a crash
//! can leave an index entry without a record, which is harmless). The caller makes each batch
//! durable through the group commit, like any other write.
//!
//! What a pass costs: the records created before the cutoff that are still kept (running for
//! longer than the retention, or failed deliveries kept with `retention.failed` off) are walked
//! again by every pass — their keys are looked up, not decoded.

use std::ops::Bound;
use std::time::Duration;

use super::SledStore;
use crate::ids::OperationId;
use crate::store::retention::Cutoffs;
use crate::store::sled_codec::*;
use crate::store::{Purged, StoreError};

/// Ids are made from the wall clock and `created_at` from the service's clock: the walk goes
/// this far past the cutoff so that a small difference between the two never hides an
/// operation (it only makes the walk a little longer).
const ID_CLOCK_SLACK: Duration = Duration::from_secs(60);

impl SledStore {
    pub fn purge_settled(
        &self,
        cutoffs: &Cutoffs,
        after: Option<&OperationId>,
        limit: usize,
    ) -> Result<Purged, StoreError> {
        let bound = cutoffs.latest().plus(ID_CLOCK_SLACK);
        let end = format!("op_{}", ulid::Ulid::from_parts(bound.0, 0));
        let start = match after {
            Some(id) => Bound::Excluded(id.as_bytes().to_vec()),
            None => Bound::Unbounded,
        };
        let mut out = Purged::default();
        let mut seen = 0;
        for item in self
            .ops
            .range((start, Bound::Excluded(end.as_bytes().to_vec())))
        {
            let (k, v) = item.map_err(io)?;
            seen += 1;
            if seen >= limit.max(1) {
                out.more = true;
                out.next = Some(OperationId::from_text(String::from_utf8_lossy(&k)));
            }
            let kept = self.active.contains_key(&k).map_err(io)?
                || (cutoffs.failed.is_none() && self.failed.contains_key(&k).map_err(io)?);
            if !kept && cutoffs.purges(&decode(&k, &v)?) {
                let id = OperationId::from_text(String::from_utf8_lossy(&k));
                let _g = self.id_locks.lock(id.as_bytes());
                // Read again under the lock: a redelivery may have just made it pending.
                if let Some(op) = self.get(&id)?.filter(|op| cutoffs.purges(op)) {
                    self.remove_locked(&id, &op)?;
                    out.removed += 1;
                }
            }
            if out.next.is_some() {
                break;
            }
        }
        Ok(out)
    }
}
