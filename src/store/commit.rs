//! Group commit: one flusher task, many waiters. A writer bumps the requested epoch and waits
//! until a flush that *started after its write* has finished; one `fsync` serves every writer
//! that arrived while the previous one ran. sled's `flush_async` can hang when called
//! concurrently, so only this task ever flushes (on a blocking thread).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;

use super::{Store, StoreError};

#[derive(Clone, Debug)]
struct Done {
    epoch: u64,
    result: Result<(), StoreError>,
}

/// Handle shared by every writer.
pub struct GroupCommit {
    store: Arc<dyn Store>,
    requested: AtomicU64,
    kick: Notify,
    done: watch::Sender<Done>,
    /// Flushes performed (for metrics and benchmarks).
    pub flushes: AtomicU64,
}

impl GroupCommit {
    /// The error of the last flush, if it failed (for `/readyz`).
    pub fn last_error(&self) -> Option<StoreError> {
        self.done.borrow().result.clone().err()
    }
}

/// How often the flusher flushes on its own, so that writes nobody waits for (poll bookkeeping,
/// delivery results) reach the disk too.
const IDLE_FLUSH: Duration = Duration::from_secs(1);

/// A flush slower than this is logged: every acknowledgement waiting on it is delayed as long.
const SLOW_FLUSH: Duration = Duration::from_millis(50);

impl GroupCommit {
    pub fn new(store: Arc<dyn Store>) -> Arc<GroupCommit> {
        let (done, _) = watch::channel(Done {
            epoch: 0,
            result: Ok(()),
        });
        Arc::new(GroupCommit {
            store,
            requested: AtomicU64::new(0),
            kick: Notify::new(),
            done,
            flushes: AtomicU64::new(0),
        })
    }

    /// Wait until every write this task made before calling is on disk.
    pub async fn flushed(&self) -> Result<(), StoreError> {
        let mut rx = self.done.subscribe();
        let target = self.requested.fetch_add(1, Ordering::SeqCst) + 1;
        self.kick.notify_one();
        loop {
            {
                let d = rx.borrow_and_update();
                if d.epoch >= target {
                    return d.result.clone();
                }
            }
            if rx.changed().await.is_err() {
                return Err(StoreError::Io("the store is shutting down".into()));
            }
        }
    }

    /// The flusher loop; returns after a last flush once `shutdown` fires.
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        let mut completed = 0u64;
        loop {
            let stopping = tokio::select! {
                _ = self.kick.notified() => false,
                _ = tokio::time::sleep(IDLE_FLUSH) => false,
                _ = shutdown.cancelled() => true,
            };
            let target = self.requested.load(Ordering::SeqCst);
            let store = self.store.clone();
            let started = std::time::Instant::now();
            let result = match tokio::task::spawn_blocking(move || store.flush()).await {
                Ok(r) => r,
                Err(e) => Err(StoreError::Io(format!("flush task failed: {e}"))),
            };
            self.flushes.fetch_add(1, Ordering::Relaxed);
            let took = started.elapsed();
            if took >= SLOW_FLUSH {
                // Every acknowledgement waiting on it waited this long too.
                tracing::warn!(took_ms = took.as_millis() as u64, "slow store flush");
            }
            if let Err(e) = &result {
                tracing::error!(error = %e, "store flush failed; writers waiting on it get an error");
            }
            if target > completed || result.is_err() {
                completed = completed.max(target);
                self.done.send_replace(Done {
                    epoch: target,
                    result,
                });
            }
            if stopping {
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::Timestamp;
    use crate::operation::sample;
    use crate::store::SledStore;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn many_writers_share_few_flushes_and_all_are_answered() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> = Arc::new(SledStore::open(dir.path(), 8 << 20).unwrap());
        let commit = GroupCommit::new(store.clone());
        let stop = CancellationToken::new();
        let flusher = tokio::spawn(commit.clone().run(stop.clone()));
        let mut tasks = Vec::new();
        for i in 0..200 {
            let (store, commit) = (store.clone(), commit.clone());
            tasks.push(tokio::spawn(async move {
                let mut op = sample(Timestamp(1_000));
                op.id = crate::ids::OperationId::from_text(format!("op_{i:026}"));
                op.operation = format!("w{i}");
                store.register(op, Duration::ZERO).await.unwrap();
                commit.flushed().await
            }));
        }
        for t in tasks {
            t.await.unwrap().unwrap();
        }
        let flushes = commit.flushes.load(Ordering::Relaxed);
        assert!(flushes >= 1);
        assert!(
            flushes < 200,
            "group commit must share flushes between writers, got {flushes} for 200 writers"
        );
        stop.cancel();
        flusher.await.unwrap();
        // Everything acknowledged is readable after reopening.
        drop(commit);
        drop(store);
        let reopened = SledStore::open(dir.path(), 8 << 20).unwrap();
        assert_eq!(reopened.scheduled().unwrap().len(), 200);
    }
}
