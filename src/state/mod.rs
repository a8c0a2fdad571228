//! The state every part shares, and what happens when an operation changes. Below the stages
//! (api, ingest, poller, delivery) and above the store: the stages take a [`Shim`] and never
//! import the module that starts them ([`crate::service`] only wires and runs loops).
//!
//! - [`Shim`]: the handles — config, store and its group commit, the two due-queues, the
//!   upstreams' limiters, the HTTP clients, metrics, the clock, the callback key, shutdown,
//!   the upstreams' refreshing credentials.
//! - Domain reactions: [`Shim::after_update`] / [`Shim::on_terminal`] are the one place where a
//!   stored change is handed on — a terminal operation is counted, flushed (invariant 1: the
//!   outbox entry is durable before the callback goes out) and put on the delivery queue; event
//!   callbacks a write created are scheduled. Every stage that writes calls them with what
//!   [`crate::store::Store::update`] returned: the hand-off is in the signatures, not in a
//!   listener installed in the store.
//! - [`register`]: registration as a domain function (validate, build the record, store it,
//!   schedule it, flush), used by the API and the proxy; [`lookup`] finds an operation by the
//!   upstream's own id.
//! - [`amend`], [`redeliver`], [`redeliver_matching`]: what an operator changes (`manage.rs`).

mod learned;
mod manage;
mod register;

pub use learned::{Learned, PRIORS_SAVE_EVERY, Recorded};

pub use manage::{
    Amendment, BulkOutcome, BulkRedeliver, MAX_BULK_REDELIVER, MAX_BULK_SCAN, ManageError, amend,
    bulk_delivery_state, redeliver, redeliver_matching,
};
pub use register::{MAX_METADATA, RegisterError, Registration, register};

use std::collections::HashMap;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::clock::Clock;
use crate::config::Config;
use crate::ids::{DeliveryKey, OperationId};
use crate::metrics::{CompletedLabels, Metrics};
use crate::operation::Operation;
use crate::schedule::{DueQueue, GroupSlots, UpstreamLimiter};
use crate::signing::CallbackKeys;
use crate::store::{GroupCommit, Store, StoreError, Updated};

/// How long a webhook for an unregistered operation is kept.
pub const EARLY_WEBHOOK_WINDOW: Duration = Duration::from_secs(24 * 3600);
/// How long webhook ids are remembered for de-duplication (upstreams retry for up to 72 h).
pub const INBOX_RETENTION: Duration = Duration::from_secs(7 * 24 * 3600);
/// How long in-flight requests may take to finish once shutdown starts; after that they are
/// abandoned (their work stays in the store and resumes at the next start).
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// The operation registered under upstream `upstream`'s own id `operation`, in any spelling
/// its preset normalises (`batches/123` and `123` for a Gemini batch). `None` for an upstream
/// not in the config.
pub async fn lookup(
    shim: &Shim,
    upstream: &str,
    operation: &str,
) -> Result<Option<Operation>, StoreError> {
    let Some(up) = shim.config.upstreams.get(upstream) else {
        return Ok(None);
    };
    shim.store
        .find(upstream, &up.preset.canonical_operation(operation))
        .await
}

/// Everything the API and the workers share.
pub struct Shim {
    pub config: Config,
    pub store: Arc<dyn Store>,
    pub commit: Arc<GroupCommit>,
    /// Operations by next poll time.
    pub polls: DueQueue<OperationId>,
    /// Outbox entries by next attempt time.
    pub deliveries: DueQueue<DeliveryKey>,
    pub limiters: HashMap<String, UpstreamLimiter>,
    /// Status requests in flight per upstream (`workers.polls_in_flight_per_upstream`).
    pub poll_slots: Arc<GroupSlots>,
    /// Callback attempts in flight per destination host and port
    /// (`workers.deliveries_in_flight_per_host`).
    pub delivery_slots: Arc<GroupSlots>,
    /// For status requests: rustls, follows a few redirects (status endpoints may move) but only
    /// on the same origin: the upstream's credentials (`x-api-key`, `api-key`, ... which
    /// reqwest does not strip) must not follow a redirect to another host.
    pub upstream_http: reqwest::Client,
    /// For callbacks: never follows redirects, times out per config.
    pub callback_http: reqwest::Client,
    /// For the transparent proxy: no system proxy, no redirects followed (a 3xx goes back to
    /// the app as it is), no overall timeout (bodies stream for as long as they take).
    pub proxy_http: reqwest::Client,
    pub metrics: Metrics,
    /// Key sets for JWT-signed webhooks (`gemini-jwt`), cached per URL.
    pub jwks: crate::ingest::jwks::JwksCache,
    pub clock: Arc<dyn Clock>,
    /// The keys callbacks are signed with (`[callbacks]` secrets), replaced by a SIGHUP reload.
    /// Read them through [`Shim::callback_keys`].
    pub callback_keys: std::sync::RwLock<Arc<CallbackKeys>>,
    pub shutdown: CancellationToken,
    pub workers_running: AtomicBool,
    /// Status reads in flight: `DELETE` cancels the read of the operation it removes.
    pub reads: InFlightReads,
    /// `callbacks.allowed_hosts` as it is now: the config's at start, replaced by a SIGHUP
    /// reload. Read it through [`Shim::callback_rules`].
    pub allowed_hosts: std::sync::RwLock<Arc<Vec<String>>>,
    /// Upstream credentials that refresh (`auth`), by upstream.
    pub credentials: crate::credentials::Credentials,
    /// The learned job-length priors (`schedule::prior`), fed by [`Shim::on_terminal`].
    pub learned: Learned,
}

/// Status reads in flight, by operation (at most one per operation: the queue holds an id once).
#[derive(Default)]
pub struct InFlightReads(Mutex<HashMap<OperationId, CancellationToken>>);

/// One read in flight; unregistered when dropped.
pub struct InFlightRead<'a> {
    reads: &'a InFlightReads,
    id: OperationId,
    /// Cancelled when the operation is deleted meanwhile.
    pub cancelled: CancellationToken,
}

impl InFlightReads {
    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<OperationId, CancellationToken>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Register a read of `id` starting now.
    pub fn start(&self, id: &OperationId) -> InFlightRead<'_> {
        let token = CancellationToken::new();
        self.map().insert(id.clone(), token.clone());
        InFlightRead {
            reads: self,
            id: id.clone(),
            cancelled: token,
        }
    }

    /// Stop the read of `id` in flight, if any (its connection is dropped, nothing recorded).
    pub fn cancel(&self, id: &OperationId) {
        if let Some(t) = self.map().remove(id) {
            t.cancel();
        }
    }
}

impl Drop for InFlightRead<'_> {
    fn drop(&mut self) {
        self.reads.map().remove(&self.id);
    }
}

impl Shim {
    /// The hosts callbacks may go to now (`callbacks.allowed_hosts`, reloadable by SIGHUP).
    pub fn allowed_hosts(&self) -> Arc<Vec<String>> {
        self.allowed_hosts
            .read()
            .map(|h| h.clone())
            .unwrap_or_else(|p| p.into_inner().clone())
    }

    /// The callback signing keys in force (the config's at start, replaced by a SIGHUP reload).
    pub fn callback_keys(&self) -> Arc<CallbackKeys> {
        self.callback_keys
            .read()
            .map(|k| k.clone())
            .unwrap_or_else(|p| p.into_inner().clone())
    }

    /// Check a callback URL against the current rules (hosts as reloaded, the rest as started).
    pub fn check_callback_url(&self, url: &str) -> Result<reqwest::Url, String> {
        let hosts = self.allowed_hosts();
        let rules = crate::address::Rules {
            hosts: &hosts,
            ..self.config.callbacks.rules()
        };
        crate::address::check_callback_url(url, rules)
    }

    /// Run `f` unless shutdown starts and `grace` passes first (`None` then).
    pub async fn unless_stopping<F: std::future::Future>(
        &self,
        grace: Duration,
        f: F,
    ) -> Option<F::Output> {
        tokio::select! {
            out = f => Some(out),
            _ = async {
                self.shutdown.cancelled().await;
                tokio::time::sleep(grace).await;
            } => None,
        }
    }

    /// Hand on what a stored change produced: event callbacks it put in the outbox go on the
    /// delivery queue (their sender flushes before the first attempt), and a terminal
    /// transition goes to [`Shim::on_terminal`].
    pub async fn after_update(&self, updated: &Updated) {
        for entry in &updated.new_callbacks {
            self.deliveries.schedule(&entry.key, entry.at);
        }
        if updated.became_terminal {
            self.on_terminal(&updated.op).await;
        }
    }

    /// Feed a finished operation's length to its upstream's prior (only successes say how
    /// long a job takes), publish the quantiles, and save the priors when a save is due.
    async fn learn(&self, op: &Operation) {
        if op.status != crate::operation::Status::Succeeded {
            return;
        }
        let (Some(end), Some(up)) = (op.completed_at, self.config.upstreams.get(&op.upstream))
        else {
            return;
        };
        let secs = end.0.saturating_sub(op.created_at.0) as f64 / 1000.0;
        let pointer = up.prior_key.as_deref();
        let r = self.learned.record(
            &op.upstream,
            pointer,
            op.metadata.as_ref(),
            &up.poll,
            secs,
            op.polls,
            self.clock.now(),
        );
        if crate::schedule::prior::key_of(pointer, op.metadata.as_ref()).is_empty() {
            self.metrics.job_durations(&op.upstream, &r.prior);
        }
        if op.polls > 0 {
            self.metrics
                .requests_saved
                .get_or_create(&crate::metrics::UpstreamLabel {
                    upstream: op.upstream.clone(),
                })
                .inc_by(r.saved);
        }
        if let Some(bytes) = r.save {
            if let Err(e) = self.store.save_priors(&bytes).await {
                tracing::warn!(error = %e, "cannot save the learned job-length priors");
            }
        }
    }

    /// After a write made `op` terminal: count it, flush (the outbox entry must be durable
    /// before the callback goes out), then hand it to delivery.
    pub async fn on_terminal(&self, op: &Operation) {
        let via = op.detected_via.map(|d| d.as_str()).unwrap_or("poll");
        let labels = CompletedLabels {
            upstream: op.upstream.clone(),
            status: op.status.as_str().into(),
            detected_via: via.into(),
        };
        self.metrics.completed.get_or_create(&labels).inc();
        self.metrics.active(&op.upstream).dec();
        self.polls.remove(&op.id);
        self.learn(op).await;
        tracing::info!(op = %op.id, upstream = %op.upstream, status = op.status.as_str(), detected_via = via, "operation finished");
        // The root span of the operation's trace: sent once, as this transition happens once.
        crate::telemetry::operation_ended(op);
        match self.commit.flushed().await {
            Ok(()) => {
                if op.in_outbox() {
                    self.deliveries.schedule(
                        &DeliveryKey::terminal(op.id.clone()),
                        op.delivery
                            .next_attempt_at
                            .unwrap_or_else(|| self.clock.now()),
                    );
                }
            }
            Err(e) => {
                // The record may not be on disk, so the callback must not go out (a callback for a
                // transition that a crash could undo). sled refuses every write after an I/O
                // error, so nothing here can fix it: the outbox entry is sent after a restart if
                // it reached the disk, and the operation is polled again if it did not.
                tracing::error!(op = %op.id, error = %e, "flush failed after terminal transition; callback held back until restart");
            }
        }
    }
}
