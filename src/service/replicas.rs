//! The loops of a process sharing its store with other replicas (PostgreSQL): claiming due
//! work, and the heartbeat that shares the upstreams' budgets. Not started on sled.

use std::sync::Arc;
use std::time::Duration;

use crate::state::Shim;

/// How often an idle process asks the shared store for due work (besides NOTIFY wake-ups).
pub const CLAIM_EVERY: Duration = Duration::from_secs(1);
/// The most polls (and, separately, callbacks) one claim takes.
pub const CLAIM_BATCH: usize = 256;

/// With a shared store (PostgreSQL): claim due polls and callbacks for this process every
/// [`CLAIM_EVERY`], at once when another process says work is due (NOTIFY), and again at once
/// while claims come back full; put what was claimed on the local queues.
pub(super) async fn claim_loop(shim: Arc<Shim>) {
    let mut wakes = shim.store.wakes();
    let mut again = true;
    // A deadline, not a sleep per turn: wake-ups for single operations do not delay claiming.
    let mut next = tokio::time::Instant::now();
    loop {
        if !again {
            let wake = async {
                use tokio::sync::broadcast::error::RecvError;
                match wakes.as_mut() {
                    Some(w) => match w.recv().await {
                        Ok(wake) => Some(wake),
                        // Missed some: claim.
                        Err(RecvError::Lagged(_)) => None,
                        Err(RecvError::Closed) => std::future::pending().await,
                    },
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = tokio::time::sleep_until(next) => {}
                w = wake => {
                    if let Some(crate::store::Wake::Poll(id)) = w {
                        // Another process got a webhook for an operation this one may hold:
                        // read it now (skipped unless this process holds its claim).
                        shim.polls.schedule_no_later_than(&id, shim.clock.now());
                        continue;
                    }
                }
                _ = shim.shutdown.cancelled() => return,
            }
        }
        next = tokio::time::Instant::now() + CLAIM_EVERY;
        match shim.store.claim(CLAIM_BATCH).await {
            Ok(claimed) => {
                again =
                    claimed.polls.len() >= CLAIM_BATCH || claimed.deliveries.len() >= CLAIM_BATCH;
                for (id, at) in claimed.polls {
                    shim.polls.schedule_no_later_than(&id, at);
                }
                for entry in claimed.deliveries {
                    shim.deliveries.schedule_no_later_than(&entry.key, entry.at);
                }
            }
            Err(e) => {
                again = false;
                tracing::warn!(error = %e, "claiming due work failed; trying again");
            }
        }
    }
}

/// How often a process on a shared store beats (and re-reads the budget shares and the
/// upstreams' rate-limit signals).
pub const HEARTBEAT_EVERY: Duration = Duration::from_secs(2);
/// A rate-limit signal from another process older than this is not applied (its decrease would
/// have mostly recovered; a process that starts does not halve its rate for an old 429).
const SIGNAL_FRESH: Duration = Duration::from_secs(10);

/// Beat every [`HEARTBEAT_EVERY`] until shutdown ([`share_budgets`]).
pub(super) async fn budget_loop(shim: Arc<Shim>) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(HEARTBEAT_EVERY) => {}
            _ = shim.shutdown.cancelled() => return,
        }
        share_budgets(&shim).await;
    }
}

/// One heartbeat: publish this process's rate-limit signals, take `1/n` of every budget for
/// `n` live processes, and apply the others' fresh signals (AIMD decrease, pause). While the
/// database is away the last share stays.
pub(super) async fn share_budgets(shim: &Shim) {
    let signals: Vec<crate::store::UpstreamSignal> = shim
        .limiters
        .iter()
        .map(|(upstream, l)| crate::store::UpstreamSignal {
            upstream: upstream.clone(),
            throttled_at: l.last_throttled(),
            paused_until: l.paused_until(),
        })
        .collect();
    let shared = match shim.store.heartbeat(&signals).await {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "heartbeat failed; keeping the last budget share");
            return;
        }
    };
    let share = 1.0 / shared.replicas.max(1) as f64;
    let now = shim.clock.now();
    for l in shim.limiters.values() {
        l.set_share(share);
    }
    for s in shared.signals {
        let Some(l) = shim.limiters.get(&s.upstream) else {
            continue;
        };
        if let Some(at) = s.throttled_at.filter(|at| at.plus(SIGNAL_FRESH) >= now) {
            if l.throttled_elsewhere(at) {
                tracing::info!(upstream = %s.upstream, "rate lowered after a rate-limit answer at another replica");
            }
        }
        l.pause_until(s.paused_until);
    }
}
