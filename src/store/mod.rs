//! Durable state. [`Store`] is the small interface the rest of hookshim uses; [`SledStore`] is
//! the embedded default. Every change to an operation is one atomic write of its record, with
//! the indexes derived from it kept a superset of what it needs (a crash can leave an extra
//! index entry, never a missing one; see docs/store.md); nothing is durable until
//! [`GroupCommit::flushed`] returns (invariant 1).

mod commit;
pub mod config;
pub mod integrity;
mod postgres;
pub mod retention;
mod sled_codec;
mod sled_store;

pub use commit::GroupCommit;
pub use postgres::{MIGRATIONS, PgStore, latest_schema_version};
pub use sled_store::SledStore;

use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};

use crate::clock::Timestamp;
use crate::ids::{DeliveryKey, OperationId};
use crate::operation::{DeliveryState, EventOutcome, Operation, Status};

#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// The disk said no (full, read-only, I/O error). The message says which.
    #[error("store write failed: {0}")]
    Io(String),
    /// A record could not be decoded: a bug or a damaged data directory.
    #[error("store record {key} is damaged: {message}")]
    Corrupt { key: String, message: String },
    #[error("cannot open the store at {path}: {message}")]
    Open { path: String, message: String },
    /// The store lost acknowledged data (see [`integrity`]); the message says what to do.
    #[error("{0}")]
    Damaged(String),
    /// The database cannot be reached or did not answer in time (PostgreSQL). Requests answer
    /// `503 store_unavailable` until it is back; nothing was acknowledged.
    #[error("the database is unavailable: {0}")]
    Unavailable(String),
    /// The database's schema is newer than this hookshim knows (a newer replica migrated it).
    #[error("{0}")]
    TooNew(String),
    /// This process's claim on the work expired or was taken over by another replica: the
    /// write was refused (the other replica does the work).
    #[error("lease lost: {0}")]
    LeaseLost(String),
}

/// The shared store's figures for `/metrics` (registered by `crate::metrics`; sled leaves them
/// at zero).
#[derive(Clone, Debug)]
pub struct StoreMetrics {
    /// Claims on polls and callbacks this process holds now.
    pub leases_held: Gauge,
    /// Polls and callbacks claimed.
    pub claims: Counter,
    /// Of those, claims taken over from another process whose lease had expired.
    pub takeovers: Counter,
    /// Writes refused because this process's claim had expired or been taken over.
    pub leases_lost: Counter,
    /// Database calls that failed (unreachable, timed out, refused).
    pub errors: Counter,
    /// How long database calls took (a connection from the pool included).
    pub call_seconds: Histogram,
}

impl Default for StoreMetrics {
    fn default() -> Self {
        StoreMetrics {
            leases_held: Gauge::default(),
            claims: Counter::default(),
            takeovers: Counter::default(),
            leases_lost: Counter::default(),
            errors: Counter::default(),
            // 0.1 ms .. ~3.3 s, doubling.
            call_seconds: Histogram::new(exponential_buckets(0.0001, 2.0, 16)),
        }
    }
}

/// Due work [`Store::claim`] took for this process: polls and callbacks to run at their times.
#[derive(Debug, Default)]
pub struct Claimed {
    pub polls: Vec<(OperationId, Timestamp)>,
    pub deliveries: Vec<OutboxEntry>,
}

/// What this process knows of an upstream's rate limiting, for the others ([`Store::heartbeat`]).
#[derive(Debug, Clone, PartialEq)]
pub struct UpstreamSignal {
    pub upstream: String,
    /// The last time a rate-limit answer lowered its rate.
    pub throttled_at: Option<Timestamp>,
    /// No request before this (a rate-limit answer's hint).
    pub paused_until: Timestamp,
}

/// What [`Store::heartbeat`] learned: how many processes share the budgets, and every
/// upstream's latest rate-limit signal from any of them.
#[derive(Debug, Clone, PartialEq)]
pub struct Shared {
    pub replicas: usize,
    pub signals: Vec<UpstreamSignal>,
}

/// A nudge from another process on the same store ([`Store::wakes`]).
#[derive(Debug, Clone, PartialEq)]
pub enum Wake {
    /// Work may have become due: claim now.
    Claim,
    /// Read this operation's status now (a webhook for it arrived elsewhere), if this process
    /// holds its claim.
    Poll(OperationId),
}

/// The result of registering an operation.
#[derive(Debug)]
pub enum Registered {
    /// A new record. `early_webhook` is set when a webhook for it had already arrived.
    Created {
        op: Operation,
        early_webhook: Option<Timestamp>,
    },
    /// The same `(upstream, operation)` was registered before: that record.
    Existing(Operation),
}

/// What recording an inbound webhook did.
#[derive(Debug, PartialEq)]
pub enum WebhookRecord {
    /// This `webhook-id` was seen before: nothing changed.
    Duplicate,
    /// The operation is tracked; it is now due for an immediate status read (unless terminal).
    Applied { id: OperationId, terminal: bool },
    /// The webhook's event decided the outcome: the operation ended with this write.
    Finished(Box<Operation>),
    /// Not registered yet: kept, and applied when the app registers it.
    Kept,
}

/// What one [`Store::purge_settled`] batch did.
#[derive(Debug, Default, PartialEq)]
pub struct Purged {
    /// Operations removed.
    pub removed: u64,
    /// Whether this pass has more to look at (call again, with `next`).
    pub more: bool,
    /// Where sled's next batch starts (PostgreSQL: `None`).
    pub next: Option<OperationId>,
}

/// Filters for listing operations.
#[derive(Debug, Default, Clone)]
pub struct ListFilter {
    pub status: Option<Status>,
    pub upstream: Option<String>,
    /// Only operations whose terminal callback is in this state (`failed`: the "failed
    /// deliveries" view).
    pub delivery: Option<DeliveryState>,
    pub limit: usize,
    /// List ids strictly after this one.
    pub cursor: Option<OperationId>,
}

impl ListFilter {
    /// Whether `op` passes the status, upstream and delivery filters (not the cursor/limit).
    pub fn matches(&self, op: &Operation) -> bool {
        self.status.is_none_or(|s| s == op.status)
            && self.upstream.as_ref().is_none_or(|u| u == &op.upstream)
            && self.delivery.is_none_or(|d| d == op.delivery.state)
    }
}

/// A scheduled poll found in the store at start: the operation, its upstream, when it is due.
#[derive(Debug, Clone, PartialEq)]
pub struct Due {
    pub id: OperationId,
    pub upstream: String,
    pub at: Timestamp,
}

/// A callback in the outbox and when its next attempt is due.
#[derive(Debug, Clone, PartialEq)]
pub struct OutboxEntry {
    pub key: DeliveryKey,
    pub at: Timestamp,
}

/// What [`Store::update`] did. The hand-off to the stages that follow is explicit: the caller
/// reacts to `became_terminal` (flush, then deliver) and schedules `new_callbacks`.
#[derive(Debug, Clone)]
pub struct Updated {
    /// The record after the change (as stored when `written`).
    pub op: Operation,
    /// Whether the change was written.
    pub written: bool,
    /// This write moved the operation to a terminal status.
    pub became_terminal: bool,
    /// Event callbacks (not the terminal one) this write put in the outbox. They are not yet
    /// durable: whoever sends them flushes first.
    pub new_callbacks: Vec<OutboxEntry>,
}

impl Updated {
    /// Compare the record before and after a write: what became due.
    pub fn from_change(old: &Operation, op: Operation, written: bool) -> Updated {
        let new_callbacks = if written {
            // By name, not by position: at the bound the oldest settled events are dropped
            // (`operation::MAX_EVENT_CALLBACKS`), so the list is not append-only.
            op.events
                .iter()
                .filter(|e| e.delivery.state == crate::operation::DeliveryState::Pending)
                .filter(|e| !old.events.iter().any(|o| o.name == e.name))
                .map(|e| OutboxEntry {
                    key: DeliveryKey::event(op.id.clone(), e.name.clone()),
                    at: e.delivery.next_attempt_at.unwrap_or(op.updated_at),
                })
                .collect()
        } else {
            Vec::new()
        };
        Updated {
            became_terminal: written && !old.status.is_terminal() && op.status.is_terminal(),
            written,
            new_callbacks,
            op,
        }
    }
}

/// The change [`Store::update`] applies (a named type, so that it stays higher-ranked in the
/// trait's `async` methods).
pub type Change<'a> = dyn Fn(&mut Operation) -> bool + Send + Sync + 'a;
/// What [`Store::for_each_scheduled`] calls for each scheduled operation.
pub type EachScheduled<'a> = dyn FnMut(OperationId, &str, Timestamp) + Send + 'a;

/// At most this many registered operations of one upstream are looked at to match a webhook id
/// by its last path segment ([`Store::find_operation`]).
pub const SUFFIX_SCAN_MAX: usize = 100_000;

/// The store interface. Methods are `async` so that a backend that waits on the network
/// (PostgreSQL) does not block a runtime worker; sled's answer without waiting (its writes reach
/// the disk with [`Store::flush`], which [`GroupCommit`] calls for many writers at once). A
/// backend whose every write is committed before it returns makes `flush` a no-op.
#[async_trait::async_trait]
pub trait Store: Send + Sync + 'static {
    /// Insert a new operation, or return the existing one for the same `(upstream, operation)`.
    /// A webhook kept for it within `early_window` is consumed and reported.
    async fn register(
        &self,
        op: Operation,
        early_window: Duration,
    ) -> Result<Registered, StoreError>;
    async fn get(&self, id: &OperationId) -> Result<Option<Operation>, StoreError>;
    /// The operation registered under the upstream's own id (`operation` in its canonical
    /// form), through the `(upstream, operation)` index; a stale index entry finds nothing.
    async fn find(&self, upstream: &str, operation: &str) -> Result<Option<Operation>, StoreError>;
    async fn list(
        &self,
        filter: &ListFilter,
    ) -> Result<(Vec<Operation>, Option<OperationId>), StoreError>;
    /// Read-modify-write one operation atomically. `f` returns whether to write; it may run more
    /// than once (on conflict), so it must only change the record it is given. The outbox and the
    /// schedule index follow the record (a terminal record is never durable without its outbox
    /// entry). `None`: no such operation.
    async fn update(&self, id: &OperationId, f: &Change<'_>)
    -> Result<Option<Updated>, StoreError>;
    /// Stop tracking: remove the record and its indexes.
    async fn delete(&self, id: &OperationId) -> Result<Option<Operation>, StoreError>;
    /// Which form of a webhook's operation id `upstream` has registered: the first of
    /// `candidates` that is registered, else (with `suffix`) the first registered operation of
    /// `upstream` whose name ends in `/{suffix}` (a scan of that upstream's keys, at most
    /// [`SUFFIX_SCAN_MAX`]). `None`: none is registered (yet).
    async fn find_operation(
        &self,
        upstream: &str,
        candidates: &[String],
        suffix: Option<&str>,
    ) -> Result<Option<String>, StoreError>;
    /// Record an inbound webhook durably-to-be (call [`Store::flush`] before answering). With
    /// an `outcome` (an event mapped in `webhook.events`) the operation ends in the same write;
    /// for an operation not registered yet the outcome is kept and applied at registration.
    async fn record_webhook(
        &self,
        upstream: &str,
        webhook_id: &str,
        operation: &str,
        outcome: Option<&EventOutcome>,
        now: Timestamp,
    ) -> Result<WebhookRecord, StoreError>;
    /// Call `f(id, upstream, next poll)` for every non-terminal operation, without collecting
    /// them (a million owned `Due`s would cost a few hundred MB at start). Returns how many.
    async fn for_each_scheduled(&self, f: &mut EachScheduled<'_>) -> Result<usize, StoreError>;
    /// Every non-terminal operation and when it is next due for a poll.
    async fn scheduled(&self) -> Result<Vec<Due>, StoreError> {
        let mut out = Vec::new();
        self.for_each_scheduled(&mut |id, upstream, at| {
            out.push(Due {
                id,
                upstream: upstream.to_string(),
                at,
            })
        })
        .await?;
        Ok(out)
    }
    /// Every callback still to send (terminal and event callbacks), and when.
    async fn outbox(&self) -> Result<Vec<OutboxEntry>, StoreError>;
    /// Forget webhook ids and kept webhooks received before `older_than`. Returns how many.
    async fn purge_webhooks(
        &self,
        inbox_before: Timestamp,
        early_before: Timestamp,
    ) -> Result<usize, StoreError>;
    /// One batch of a retention pass ([`retention`]): remove up to `limit` operations the
    /// `cutoffs` purge — record, indexes and outbox rows — and return how many, and where the
    /// next batch starts. sled walks `ops` in id order from after `after`, only over ids created
    /// before the cutoffs (ULIDs sort by creation time, and an operation settles after it is
    /// created), looking at `limit` records at most; PostgreSQL deletes through its
    /// `settled_at` index in one transaction and ignores `after`. `more` is false when the
    /// pass is done. Removals are durable with the next [`Store::flush`].
    async fn purge_settled(
        &self,
        cutoffs: &retention::Cutoffs,
        after: Option<&OperationId>,
        limit: usize,
    ) -> Result<Purged, StoreError>;
    /// Make every write so far durable. Blocking; call it through [`GroupCommit`]. A no-op for
    /// a backend that commits every write before returning it.
    fn flush(&self) -> Result<(), StoreError>;
    /// Non-terminal operations by upstream and status (`pending`, `running`).
    async fn active_by_status(&self) -> Result<Vec<(String, Status, u64)>, StoreError>;
    /// How many operations' terminal callbacks failed for good (cheap: an index, not a scan of
    /// every record; the first call on a store written before the index builds it).
    async fn failed_deliveries(&self) -> Result<u64, StoreError>;
    /// Bytes on disk.
    async fn size_on_disk(&self) -> Result<u64, StoreError>;
    /// How often `/metrics` reads [`Store::size_on_disk`] at most (between two reads it shows
    /// the last one): sled's is a look at its files, read at every scrape; PostgreSQL's sums
    /// the relation sizes of the schema's tables, read at most every minute.
    fn size_sample_every(&self) -> Duration {
        Duration::ZERO
    }
    /// The learned job-length priors as last saved (`schedule::Priors::to_bytes`), if any.
    async fn load_priors(&self) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(None)
    }
    /// Replace the saved priors (durable with the next flush; losing the last few seconds of
    /// learning in a crash is harmless).
    async fn save_priors(&self, _bytes: &[u8]) -> Result<(), StoreError> {
        Ok(())
    }
    /// Whether several processes share this store's work (PostgreSQL): due polls and callbacks
    /// are then [`Store::claim`]ed, and the stages read and write them through the `claimed`
    /// methods below, which refuse work whose claim this process no longer holds. `false`
    /// (sled): one process owns everything and those methods are the plain ones.
    fn shares_work(&self) -> bool {
        false
    }
    /// Claim up to `limit` polls and `limit` callbacks due soon, for this process, with a lease
    /// (and renew the leases it holds when due). Nothing for a store that does not share work.
    async fn claim(&self, _limit: usize) -> Result<Claimed, StoreError> {
        Ok(Claimed::default())
    }
    /// Nudges from the other processes (a webhook for an operation this one holds), if any.
    fn wakes(&self) -> Option<tokio::sync::broadcast::Receiver<Wake>> {
        None
    }
    /// Say this process is alive, publish its upstreams' rate-limit signals and read everyone's
    /// (PostgreSQL: a heartbeat row per process). A store used by one process: just this one.
    async fn heartbeat(&self, _signals: &[UpstreamSignal]) -> Result<Shared, StoreError> {
        Ok(Shared {
            replicas: 1,
            signals: Vec::new(),
        })
    }
    /// Give up every claim this process holds and stop counting it among the live processes
    /// (graceful stop: the others take its work and its budget share over at once).
    async fn release_claims(&self) -> Result<(), StoreError> {
        Ok(())
    }
    /// The operation, if this process holds its poll claim (sled: always).
    async fn claimed(&self, id: &OperationId) -> Result<Option<Operation>, StoreError> {
        self.get(id).await
    }
    /// [`Store::update`] as the holder of the poll claim: [`StoreError::LeaseLost`] when this
    /// process no longer holds it. The claim is kept while the next poll is soon, else released.
    async fn update_claimed(
        &self,
        id: &OperationId,
        f: &Change<'_>,
    ) -> Result<Option<Updated>, StoreError> {
        self.update(id, f).await
    }
    /// The operation of callback `key`, if this process holds that callback's claim.
    async fn claimed_delivery(&self, key: &DeliveryKey) -> Result<Option<Operation>, StoreError> {
        self.get(&key.operation).await
    }
    /// [`Store::update`] as the holder of callback `key`'s claim ([`StoreError::LeaseLost`]
    /// otherwise).
    async fn update_delivery(
        &self,
        key: &DeliveryKey,
        f: &Change<'_>,
    ) -> Result<Option<Updated>, StoreError> {
        self.update(&key.operation, f).await
    }
    /// The callback signing secret every process on this store shares (`whsec_…` text): the
    /// one stored, else `candidate`, stored now. `None`: this backend keeps no secret (sled's
    /// is a file in its data directory, see [`crate::delivery::load_or_create_secret`]).
    async fn shared_secret(&self, _candidate: &str) -> Result<Option<String>, StoreError> {
        Ok(None)
    }
}
