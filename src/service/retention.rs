//! Data lifecycle in the background: the retention pass (`[retention]`, see
//! [`crate::store::retention`]). (The store's size for `/metrics` is sampled when scraped,
//! see [`crate::store::Store::size_sample_every`].)
//!
//! A pass runs every `retention.every`: it removes settled operations in batches of
//! [`PURGE_BATCH`], each batch one durable step (sled: the group-commit flush that covers it,
//! like any acknowledged write; PostgreSQL: one committed transaction). A batch runs on a
//! blocking thread, so the polls, callbacks and requests on the runtime's workers never wait
//! for it (a writer of an operation being removed waits on its lock for that one removal). On
//! PostgreSQL every replica runs passes; the batches skip rows another transaction holds, so
//! replicas purging at once neither wait for nor repeat each other.

use std::sync::Arc;

use crate::state::Shim;
use crate::store::StoreError;

/// Operations looked at (sled) or removed (PostgreSQL) per batch.
pub const PURGE_BATCH: usize = 256;

/// Run retention passes until shutdown (returns at once when retention is off).
pub(super) async fn retention_loop(shim: Arc<Shim>) {
    let cfg = shim.config.retention.clone();
    if cfg.finished.is_none() && cfg.failed.is_none() {
        return;
    }
    loop {
        tokio::select! {
            _ = tokio::time::sleep(cfg.every) => {}
            _ = shim.shutdown.cancelled() => return,
        }
        let removed = purge_pass(&shim).await;
        if removed > 0 {
            tracing::info!(removed, "retention: purged finished operations");
        }
    }
}

/// One pass at the clock's time now; returns how many operations it removed.
pub async fn purge_pass(shim: &Shim) -> u64 {
    let Some(cutoffs) = shim.config.retention.cutoffs(shim.clock.now()) else {
        return 0;
    };
    let mut after = None;
    let mut total = 0;
    while !shim.shutdown.is_cancelled() {
        // On a blocking thread: sled's batch is synchronous work (a debug build took ~30 ms
        // for 256 removals) that must not hold a runtime worker the polls and requests need.
        let (store, from) = (shim.store.clone(), after.take());
        let handle = tokio::runtime::Handle::current();
        let batch = tokio::task::spawn_blocking(move || {
            handle.block_on(store.purge_settled(&cutoffs, from.as_ref(), PURGE_BATCH))
        })
        .await
        .unwrap_or_else(|e| Err(StoreError::Io(format!("the purge task failed: {e}"))));
        let batch = match batch {
            Ok(b) => b,
            Err(e) => {
                tracing::warn!(error = %e, "retention: purging finished operations failed; trying again at the next pass");
                break;
            }
        };
        if batch.removed > 0 {
            // Durable before it is counted (sled: the group commit's flush).
            if let Err(e) = shim.commit.flushed().await {
                tracing::warn!(error = %e, "retention: flushing a purge failed");
                break;
            }
            shim.metrics.purged.inc_by(batch.removed);
            total += batch.removed;
        }
        if !batch.more {
            break;
        }
        after = batch.next;
        tokio::task::yield_now().await;
    }
    total
}
