//! The PostgreSQL store: several replicas share one database.
//!
//! Tables (in `store.schema`, created by [`migrations`]): `operations` (the record as JSON plus
//! the columns its indexes need: status, next poll, failed delivery), `outbox` (callbacks still
//! to send, removed with their operation), `inbox` (webhook ids seen), `early` (webhooks for
//! operations not registered yet), `priors`, `meta`.
//!
//! Every method is one transaction, **committed before it returns**: nothing hookshim
//! acknowledges is uncommitted, so [`Store::flush`] has nothing to do. An operation's
//! read-modify-write reads its row `FOR UPDATE` (writers of one operation queue on the row lock,
//! in any replica), and writes the record, its derived columns and its outbox rows in the same
//! transaction: a terminal record is never committed without its outbox entry. Registration and
//! inbound webhooks for one `(upstream, operation)` first take a transaction-scoped advisory
//! lock on that pair, so a webhook arriving at one replica while another registers the same
//! operation is either applied to the new record or kept and consumed by it — never lost; the
//! `UNIQUE (upstream, operation)` constraint keeps one record per pair whatever happens.
//!
//! Work is **claimed, not owned** (see [`claim`]): due polls and callbacks carry a lease (owner,
//! expiry, fencing token); the poller and the deliverer read and write them through the
//! `claimed` methods, which refuse work whose lease this process no longer holds. A write that
//! makes work due soon (a registration, a terminal transition's callback, a webhook) claims it for
//! the writing process in the same transaction, so it runs at once without a round of claiming.
//!
//! The driver is `tokio-postgres` with a `deadpool-postgres` pool (see docs/store.md for why):
//! statements are prepared once per connection and cached. Each call waits at most
//! [`CALL_TIMEOUT`] (for a connection and for the answer); past that, or when the database
//! cannot be reached, it fails with [`StoreError::Unavailable`], which the API answers as
//! `503 store_unavailable`. A broken connection is dropped by the pool and a new one made on
//! the next call, so service resumes by itself when the database is back.

mod budget;
mod claim;
mod listen;
mod migrations;
mod rows;

use listen::hostname;
pub use migrations::{MIGRATIONS, latest as latest_schema_version};
use rows::*;

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime, Transaction};
use futures_util::{StreamExt, pin_mut};
use tokio::sync::broadcast;
use tokio_postgres::NoTls;
use tokio_postgres::types::Json;
use tokio_util::sync::CancellationToken;

use super::config::PgConfig;
use super::retention::Cutoffs;
use super::{
    Change, Claimed, EachScheduled, ListFilter, OutboxEntry, Purged, Registered, SUFFIX_SCAN_MAX,
    Shared, Store, StoreError, StoreMetrics, Updated, UpstreamSignal, Wake, WebhookRecord,
};
use crate::clock::{Clock, Timestamp};
use crate::ids::{DeliveryKey, OperationId};
use crate::operation::{EventOutcome, Operation, Status, WEBHOOK_READS};

/// The longest one store call may take (waiting for a connection included).
pub const CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// The longest a new connection may take to open.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Work due within this long is claimed ahead (and a claim is kept after a poll whose next one
/// is due within it), so that it starts on time.
pub const CLAIM_AHEAD: Duration = Duration::from_secs(2);

pub struct PgStore {
    pool: Pool,
    schema: String,
    /// This process, as it appears in `lease_owner`.
    me: String,
    clock: Arc<dyn Clock>,
    /// How long a claim lasts without renewal (`store.lease`).
    lease: Duration,
    metrics: StoreMetrics,
    /// The claims this process holds and their fencing tokens.
    held: Mutex<Held>,
    /// Nudges from other processes (LISTEN), and the NOTIFY channel they come on.
    wakes: broadcast::Sender<Wake>,
    channel: String,
    /// Stops the listener when the store is dropped.
    stop: CancellationToken,
}

/// Claims held: poll claims by operation id, callback claims by `(operation id, event)` (`""`
/// for the terminal callback), each with its fencing token.
#[derive(Default)]
struct Held {
    polls: HashMap<String, i64>,
    callbacks: HashMap<(String, String), i64>,
    /// When the leases were last renewed.
    renewed: Option<Instant>,
}

impl Drop for PgStore {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// A driver or pool error: the database is unreachable, or said no.
pub(crate) fn unavailable(e: impl std::error::Error) -> StoreError {
    StoreError::Unavailable(chain(&e))
}

/// An error with its causes: the driver's own text is only "db error", the server's message is
/// in the source chain (a cause the text already ends with is not repeated).
fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let text = c.to_string();
        if !s.ends_with(&text) {
            s.push_str(": ");
            s.push_str(&text);
        }
        cur = c.source();
    }
    s
}

impl PgStore {
    /// Connect, create or migrate the schema, and check the database answers. Fails with
    /// [`StoreError::TooNew`] against a schema newer than this binary knows.
    pub async fn open(
        cfg: &PgConfig,
        clock: Arc<dyn Clock>,
        metrics: StoreMetrics,
    ) -> Result<PgStore, StoreError> {
        let mut pg: tokio_postgres::Config = cfg.url.parse().map_err(|e| StoreError::Open {
            path: format!("the database named by {}", cfg.url_env),
            message: format!("{e}"),
        })?;
        if pg.get_application_name().is_none() {
            pg.application_name("hookshim");
        }
        pg.connect_timeout(CONNECT_TIMEOUT)
            // Every statement names its tables unqualified: they are in `schema`.
            .options(format!("-c search_path={}", cfg.schema));
        let listen_config = pg.clone();
        let manager = Manager::from_config(
            pg,
            NoTls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(cfg.pool_size)
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(CALL_TIMEOUT))
            .create_timeout(Some(CONNECT_TIMEOUT))
            .recycle_timeout(Some(CONNECT_TIMEOUT))
            .build()
            .map_err(|e| StoreError::Open {
                path: format!("the database named by {}", cfg.url_env),
                message: chain(&e),
            })?;
        let (wakes, _) = broadcast::channel(1024);
        let store = PgStore {
            pool,
            schema: cfg.schema.clone(),
            me: format!(
                "{}-{}-{:08x}",
                hostname(),
                std::process::id(),
                rand::random::<u32>()
            ),
            clock,
            lease: cfg.lease,
            metrics,
            held: Mutex::default(),
            wakes,
            channel: format!("hookshim_{}", cfg.schema),
            stop: CancellationToken::new(),
        };
        let mut client = store.pool.get().await.map_err(|e| StoreError::Open {
            path: format!("the database named by {}", cfg.url_env),
            message: chain(&e),
        })?;
        let version = migrations::migrate(&mut client, &cfg.schema).await?;
        listen::spawn(
            listen_config,
            store.channel.clone(),
            store.wakes.clone(),
            store.stop.clone(),
        );
        tracing::info!(schema = %cfg.schema, version, pool_size = cfg.pool_size, replica = %store.me, "PostgreSQL store ready");
        Ok(store)
    }

    fn held(&self) -> MutexGuard<'_, Held> {
        // Plain maps: a panic elsewhere cannot leave them inconsistent.
        self.held.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The times a write needs: now, the end of the claim-ahead window, the lease.
    fn write_ctx(&self) -> WriteCtx<'_> {
        let now = ms(self.clock.now());
        WriteCtx {
            me: &self.me,
            now,
            soon: now + CLAIM_AHEAD.as_millis() as i64,
            lease: self.lease.as_millis() as i64,
            keep_poll_claim: false,
        }
    }

    /// Record the callback claims a write took.
    fn hold_callbacks(&self, id: &str, taken: Vec<(String, i64)>) {
        if taken.is_empty() {
            return;
        }
        let mut held = self.held();
        for (event, token) in taken {
            held.callbacks.insert((id.to_string(), event), token);
        }
        self.metrics
            .leases_held
            .set((held.polls.len() + held.callbacks.len()) as i64);
    }

    /// The schema this store's tables are in.
    pub fn schema(&self) -> &str {
        &self.schema
    }

    /// Run `f` with a pooled connection, bounded by [`CALL_TIMEOUT`].
    async fn with<T, F, Fut>(&self, f: F) -> Result<T, StoreError>
    where
        F: FnOnce(deadpool_postgres::Object) -> Fut,
        Fut: Future<Output = Result<T, StoreError>>,
    {
        let started = Instant::now();
        let call = async {
            let client = self.pool.get().await.map_err(unavailable)?;
            f(client).await
        };
        let result = match tokio::time::timeout(CALL_TIMEOUT, call).await {
            Ok(r) => r,
            Err(_) => Err(StoreError::Unavailable(format!(
                "no answer within {}s",
                CALL_TIMEOUT.as_secs()
            ))),
        };
        self.metrics
            .call_seconds
            .observe(started.elapsed().as_secs_f64());
        if let Err(StoreError::Unavailable(_)) = &result {
            self.metrics.errors.inc();
        }
        result
    }
}

#[async_trait::async_trait]
impl Store for PgStore {
    async fn register(
        &self,
        op: Operation,
        early_window: Duration,
    ) -> Result<Registered, StoreError> {
        let ctx = self.write_ctx();
        self.with(|mut c| async move {
            let tx = c.transaction().await.map_err(unavailable)?;
            lock_pair(&tx, &op.upstream, &op.operation).await?;
            let find = tx
                .prepare_cached(
                    "SELECT id, record FROM operations WHERE upstream = $1 AND operation = $2",
                )
                .await
                .map_err(unavailable)?;
            if let Some(row) = tx
                .query_opt(&find, &[&op.upstream, &op.operation])
                .await
                .map_err(unavailable)?
            {
                let id: String = row.get(0);
                let existing = record(&row, 1, &id)?;
                tx.commit().await.map_err(unavailable)?;
                return Ok(Registered::Existing(existing));
            }
            let take_early = tx
                .prepare_cached(
                    "DELETE FROM early WHERE upstream = $1 AND operation = $2 \
                     RETURNING received_at, outcome",
                )
                .await
                .map_err(unavailable)?;
            let early = tx
                .query_opt(&take_early, &[&op.upstream, &op.operation])
                .await
                .map_err(unavailable)?;
            let mut op = op;
            let mut early_webhook = None;
            if let Some(row) = early {
                let at = ts(row.get(0));
                if at.plus(early_window) >= op.created_at {
                    early_webhook = Some(at);
                    op.webhook_at = Some(at);
                    let outcome: Option<Json<EventOutcome>> = row.try_get(1).unwrap_or(None);
                    match outcome {
                        Some(Json(outcome)) => {
                            op.finish_from_event(&outcome, op.created_at);
                        }
                        None => {
                            op.webhook_reads = WEBHOOK_READS;
                            op.next_poll_at = Some(op.created_at);
                        }
                    }
                }
            }
            let insert = tx
                .prepare_cached(
                    "INSERT INTO operations (id, upstream, operation, status, poll_at, \
                     delivery_state, record, lease_owner, lease_until, lease_token) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $5::bigint + $9::bigint, 1)",
                )
                .await
                .map_err(unavailable)?;
            // The first poll is due soon: this process claims it (it schedules it itself).
            let at = poll_at(&op);
            let claim = at.is_some_and(|at| at <= ctx.soon);
            tx.execute(
                &insert,
                &[
                    &op.id.as_str(),
                    &op.upstream,
                    &op.operation,
                    &op.status.as_str(),
                    &at,
                    &delivery_state(op.delivery.state),
                    &Json(&op),
                    &claim.then_some(ctx.me),
                    &claim.then_some(ctx.lease),
                ],
            )
            .await
            .map_err(unavailable)?;
            mark_settled(&tx, None, &op).await?;
            let rows = outbox_rows(&op);
            let taken = if rows.is_empty() {
                Vec::new()
            } else {
                sync_outbox(&tx, op.id.as_str(), &rows, &ctx).await?
            };
            tx.commit().await.map_err(unavailable)?;
            if claim {
                self.held().polls.insert(op.id.as_str().to_string(), 1);
            }
            self.hold_callbacks(op.id.as_str(), taken);
            Ok(Registered::Created { op, early_webhook })
        })
        .await
    }

    async fn get(&self, id: &OperationId) -> Result<Option<Operation>, StoreError> {
        self.with(|c| async move {
            let st = c
                .prepare_cached("SELECT record FROM operations WHERE id = $1")
                .await
                .map_err(unavailable)?;
            match c
                .query_opt(&st, &[&id.as_str()])
                .await
                .map_err(unavailable)?
            {
                None => Ok(None),
                Some(row) => record(&row, 0, id.as_str()).map(Some),
            }
        })
        .await
    }

    async fn find(&self, upstream: &str, operation: &str) -> Result<Option<Operation>, StoreError> {
        self.with(|c| async move {
            let st = c
                .prepare_cached(
                    "SELECT id, record FROM operations WHERE upstream = $1 AND operation = $2",
                )
                .await
                .map_err(unavailable)?;
            match c
                .query_opt(&st, &[&upstream, &operation])
                .await
                .map_err(unavailable)?
            {
                None => Ok(None),
                Some(row) => {
                    let id: String = row.get(0);
                    record(&row, 1, &id).map(Some)
                }
            }
        })
        .await
    }

    async fn list(
        &self,
        f: &ListFilter,
    ) -> Result<(Vec<Operation>, Option<OperationId>), StoreError> {
        let limit = f.limit.max(1);
        self.with(|c| async move {
            let st = c
                .prepare_cached(
                    "SELECT id, record FROM operations \
                     WHERE ($1::text IS NULL OR id > $1) \
                       AND ($2::text IS NULL OR status = $2) \
                       AND ($3::text IS NULL OR upstream = $3) \
                       AND ($4::text IS NULL OR delivery_state = $4) \
                     ORDER BY id LIMIT $5",
                )
                .await
                .map_err(unavailable)?;
            let cursor = f.cursor.as_ref().map(|c| c.as_str());
            let status = f.status.map(|s| s.as_str());
            let rows = c
                .query(
                    &st,
                    &[
                        &cursor,
                        &status,
                        &f.upstream,
                        &f.delivery.map(delivery_state),
                        &(limit as i64),
                    ],
                )
                .await
                .map_err(unavailable)?;
            let mut out = Vec::with_capacity(rows.len());
            for row in &rows {
                let id: String = row.get(0);
                out.push(record(row, 1, &id)?);
            }
            let next = (out.len() == limit)
                .then(|| out.last().map(|o| o.id.clone()))
                .flatten();
            Ok((out, next))
        })
        .await
    }

    async fn update(
        &self,
        id: &OperationId,
        f: &Change<'_>,
    ) -> Result<Option<Updated>, StoreError> {
        let ctx = self.write_ctx();
        self.with(|mut c| async move {
            let tx = c.transaction().await.map_err(unavailable)?;
            let Some(old) = lock_op(&tx, id.as_str()).await? else {
                return Ok(None);
            };
            let mut op = old.clone();
            let write = f(&mut op);
            if write {
                let (taken, _) = write_op(&tx, &old, &op, &ctx).await?;
                tx.commit().await.map_err(unavailable)?;
                self.hold_callbacks(id.as_str(), taken);
            }
            Ok(Some(Updated::from_change(&old, op, write)))
        })
        .await
    }

    async fn delete(&self, id: &OperationId) -> Result<Option<Operation>, StoreError> {
        self.with(|c| async move {
            // The outbox rows go with it (ON DELETE CASCADE).
            let st = c
                .prepare_cached("DELETE FROM operations WHERE id = $1 RETURNING record")
                .await
                .map_err(unavailable)?;
            match c
                .query_opt(&st, &[&id.as_str()])
                .await
                .map_err(unavailable)?
            {
                None => Ok(None),
                Some(row) => record(&row, 0, id.as_str()).map(Some),
            }
        })
        .await
    }

    async fn find_operation(
        &self,
        upstream: &str,
        candidates: &[String],
        suffix: Option<&str>,
    ) -> Result<Option<String>, StoreError> {
        self.with(|c| async move {
            let st = c
                .prepare_cached(
                    "SELECT operation FROM operations WHERE upstream = $1 AND operation = ANY($2)",
                )
                .await
                .map_err(unavailable)?;
            let found: Vec<String> = c
                .query(&st, &[&upstream, &candidates])
                .await
                .map_err(unavailable)?
                .iter()
                .map(|r| r.get(0))
                .collect();
            if let Some(c) = candidates.iter().find(|c| found.contains(c)) {
                return Ok(Some(c.clone()));
            }
            let Some(suffix) = suffix.filter(|s| !s.is_empty()) else {
                return Ok(None);
            };
            // Like sled's scan: the first of at most SUFFIX_SCAN_MAX of this upstream's
            // operations, in order, ending in `/{suffix}`.
            let st = c
                .prepare_cached(
                    "SELECT operation FROM (SELECT operation FROM operations WHERE upstream = $1 \
                     ORDER BY operation LIMIT $3) AS o \
                     WHERE right(operation, char_length($2)) = $2 ORDER BY operation LIMIT 1",
                )
                .await
                .map_err(unavailable)?;
            let tail = format!("/{suffix}");
            let row = c
                .query_opt(&st, &[&upstream, &tail, &(SUFFIX_SCAN_MAX as i64)])
                .await
                .map_err(unavailable)?;
            Ok(row.map(|r| r.get(0)))
        })
        .await
    }

    async fn record_webhook(
        &self,
        upstream: &str,
        webhook_id: &str,
        operation: &str,
        outcome: Option<&EventOutcome>,
        now: Timestamp,
    ) -> Result<WebhookRecord, StoreError> {
        let ctx = self.write_ctx();
        self.with(|mut c| async move {
            let tx = c.transaction().await.map_err(unavailable)?;
            lock_pair(&tx, upstream, operation).await?;
            let seen = tx
                .prepare_cached(
                    "INSERT INTO inbox (upstream, webhook_id, received_at) VALUES ($1, $2, $3) \
                     ON CONFLICT DO NOTHING",
                )
                .await
                .map_err(unavailable)?;
            if tx
                .execute(&seen, &[&upstream, &webhook_id, &ms(now)])
                .await
                .map_err(unavailable)?
                == 0
            {
                return Ok(WebhookRecord::Duplicate);
            }
            let find = tx
                .prepare_cached(
                    "SELECT id, record FROM operations WHERE upstream = $1 AND operation = $2 \
                     FOR UPDATE",
                )
                .await
                .map_err(unavailable)?;
            let found = tx
                .query_opt(&find, &[&upstream, &operation])
                .await
                .map_err(unavailable)?;
            let result = match found {
                None => {
                    // The first outcome kept wins; a thin webhook never replaces one.
                    let keep = tx
                        .prepare_cached(
                            "INSERT INTO early (upstream, operation, received_at, outcome) \
                             VALUES ($1, $2, $3, $4) \
                             ON CONFLICT (upstream, operation) DO UPDATE \
                             SET received_at = EXCLUDED.received_at, outcome = EXCLUDED.outcome \
                             WHERE early.outcome IS NULL",
                        )
                        .await
                        .map_err(unavailable)?;
                    tx.execute(
                        &keep,
                        &[&upstream, &operation, &ms(now), &outcome.map(Json)],
                    )
                    .await
                    .map_err(unavailable)?;
                    WebhookRecord::Kept
                }
                Some(row) => {
                    let id: String = row.get(0);
                    let old = record(&row, 1, &id)?;
                    let mut op = old.clone();
                    op.webhook_at = Some(now);
                    let terminal = old.status.is_terminal();
                    match (terminal, outcome) {
                        (false, Some(outcome)) => {
                            op.finish_from_event(outcome, now);
                        }
                        (true, _) => op.late_observations += 1,
                        (false, None) => {
                            op.webhook_reads = WEBHOOK_READS;
                            op.next_poll_at = Some(now);
                            op.updated_at = now;
                        }
                    }
                    let (taken, _) = write_op(&tx, &old, &op, &ctx).await?;
                    self.hold_callbacks(&id, taken);
                    if !terminal && outcome.is_some() {
                        WebhookRecord::Finished(Box::new(op))
                    } else {
                        if !terminal {
                            // A status read now: by this process if the poll claim is free,
                            // else by its holder, told through NOTIFY.
                            self.claim_for_webhook(&tx, &id, &ctx).await?;
                        }
                        WebhookRecord::Applied {
                            id: op.id,
                            terminal,
                        }
                    }
                }
            };
            tx.commit().await.map_err(unavailable)?;
            Ok(result)
        })
        .await
    }

    async fn for_each_scheduled(&self, f: &mut EachScheduled<'_>) -> Result<usize, StoreError> {
        // Streamed: a million rows are never held at once. Not bounded by CALL_TIMEOUT (it
        // runs once, at start).
        let c = self.pool.get().await.map_err(unavailable)?;
        let st = c
            .prepare_cached(
                "SELECT id, upstream, poll_at FROM operations WHERE poll_at IS NOT NULL",
            )
            .await
            .map_err(unavailable)?;
        let rows = c
            .query_raw(&st, std::iter::empty::<&str>())
            .await
            .map_err(unavailable)?;
        pin_mut!(rows);
        let mut n = 0;
        while let Some(row) = rows.next().await {
            let row = row.map_err(unavailable)?;
            let id: String = row.get(0);
            let upstream: String = row.get(1);
            f(OperationId::from_text(id), &upstream, ts(row.get(2)));
            n += 1;
        }
        Ok(n)
    }

    async fn outbox(&self) -> Result<Vec<OutboxEntry>, StoreError> {
        let c = self.pool.get().await.map_err(unavailable)?;
        let st = c
            .prepare_cached("SELECT op_id, event, due_at FROM outbox")
            .await
            .map_err(unavailable)?;
        let rows = c.query(&st, &[]).await.map_err(unavailable)?;
        Ok(rows
            .iter()
            .map(|r| {
                let id = OperationId::from_text(r.get::<_, String>(0));
                let event: String = r.get(1);
                OutboxEntry {
                    key: if event.is_empty() {
                        DeliveryKey::terminal(id)
                    } else {
                        DeliveryKey::event(id, event)
                    },
                    at: ts(r.get(2)),
                }
            })
            .collect())
    }

    async fn purge_webhooks(
        &self,
        inbox_before: Timestamp,
        early_before: Timestamp,
    ) -> Result<usize, StoreError> {
        self.with(|c| async move {
            let a = c
                .execute(
                    "DELETE FROM inbox WHERE received_at < $1",
                    &[&ms(inbox_before)],
                )
                .await
                .map_err(unavailable)?;
            let b = c
                .execute(
                    "DELETE FROM early WHERE received_at < $1",
                    &[&ms(early_before)],
                )
                .await
                .map_err(unavailable)?;
            Ok((a + b) as usize)
        })
        .await
    }

    async fn purge_settled(
        &self,
        cutoffs: &Cutoffs,
        _after: Option<&OperationId>,
        limit: usize,
    ) -> Result<Purged, StoreError> {
        let never = i64::MIN;
        let finished = cutoffs.finished.map_or(never, ms);
        let failed = cutoffs.failed.map_or(never, ms);
        let limit = limit.max(1) as i64;
        self.with(|c| async move {
            // One statement, one transaction. Rows another transaction holds (a redelivery,
            // another replica's purge) are skipped, not waited for; a row whose write committed
            // first is judged by its new columns. Outbox rows go with it (ON DELETE CASCADE).
            let st = c
                .prepare_cached(
                    "DELETE FROM operations WHERE id IN (\
                       SELECT id FROM operations \
                       WHERE settled_at < greatest($1::bigint, $2::bigint) \
                         AND ((NOT settled_failed AND settled_at < $1) \
                           OR (settled_failed AND settled_at < $2)) \
                       ORDER BY settled_at LIMIT $3 FOR UPDATE SKIP LOCKED)",
                )
                .await
                .map_err(unavailable)?;
            let removed = c
                .execute(&st, &[&finished, &failed, &limit])
                .await
                .map_err(unavailable)?;
            Ok(Purged {
                removed,
                more: removed >= limit as u64,
                next: None,
            })
        })
        .await
    }

    /// Every write was committed before it returned.
    fn flush(&self) -> Result<(), StoreError> {
        Ok(())
    }

    async fn active_by_status(&self) -> Result<Vec<(String, Status, u64)>, StoreError> {
        self.with(|c| async move {
            let st = c
                .prepare_cached(
                    "SELECT upstream, status, count(*) FROM operations \
                     WHERE poll_at IS NOT NULL GROUP BY upstream, status",
                )
                .await
                .map_err(unavailable)?;
            let rows = c.query(&st, &[]).await.map_err(unavailable)?;
            Ok(rows
                .iter()
                .filter_map(|r| {
                    let status = Status::parse(r.get::<_, &str>(1))?;
                    let n: i64 = r.get(2);
                    Some((r.get::<_, String>(0), status, n.max(0) as u64))
                })
                .collect())
        })
        .await
    }

    async fn failed_deliveries(&self) -> Result<u64, StoreError> {
        self.with(|c| async move {
            let st = c
                .prepare_cached("SELECT count(*) FROM operations WHERE delivery_state = 'failed'")
                .await
                .map_err(unavailable)?;
            let n: i64 = c.query_one(&st, &[]).await.map_err(unavailable)?.get(0);
            Ok(n.max(0) as u64)
        })
        .await
    }

    async fn size_on_disk(&self) -> Result<u64, StoreError> {
        self.with(|c| async move {
            let row = c
                .query_one(
                    "SELECT coalesce(sum(pg_total_relation_size(c.oid)), 0)::bigint \
                     FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
                     WHERE n.nspname = $1 AND c.relkind = 'r'",
                    &[&self.schema],
                )
                .await
                .map_err(unavailable)?;
            Ok(row.get::<_, i64>(0).max(0) as u64)
        })
        .await
    }

    fn size_sample_every(&self) -> Duration {
        Duration::from_secs(60)
    }

    async fn load_priors(&self) -> Result<Option<Vec<u8>>, StoreError> {
        self.with(|c| async move {
            let row = c
                .query_opt("SELECT value FROM priors WHERE key = 'priors'", &[])
                .await
                .map_err(unavailable)?;
            Ok(row.map(|r| r.get(0)))
        })
        .await
    }

    async fn save_priors(&self, bytes: &[u8]) -> Result<(), StoreError> {
        self.with(|c| async move {
            c.execute(
                "INSERT INTO priors (key, value) VALUES ('priors', $1) \
                 ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value",
                &[&bytes],
            )
            .await
            .map_err(unavailable)?;
            Ok(())
        })
        .await
    }

    fn shares_work(&self) -> bool {
        true
    }

    async fn claim(&self, limit: usize) -> Result<Claimed, StoreError> {
        self.claim_due(limit).await
    }

    fn wakes(&self) -> Option<broadcast::Receiver<Wake>> {
        Some(self.wakes.subscribe())
    }

    async fn release_claims(&self) -> Result<(), StoreError> {
        self.release_all().await?;
        self.leave().await
    }

    async fn heartbeat(&self, signals: &[UpstreamSignal]) -> Result<Shared, StoreError> {
        self.beat(signals).await
    }

    async fn claimed(&self, id: &OperationId) -> Result<Option<Operation>, StoreError> {
        self.claimed_op(id).await
    }

    async fn update_claimed(
        &self,
        id: &OperationId,
        f: &Change<'_>,
    ) -> Result<Option<Updated>, StoreError> {
        self.update_claimed_op(id, f).await
    }

    async fn claimed_delivery(&self, key: &DeliveryKey) -> Result<Option<Operation>, StoreError> {
        self.claimed_callback(key).await
    }

    async fn update_delivery(
        &self,
        key: &DeliveryKey,
        f: &Change<'_>,
    ) -> Result<Option<Updated>, StoreError> {
        self.update_callback(key, f).await
    }

    async fn shared_secret(&self, candidate: &str) -> Result<Option<String>, StoreError> {
        self.with(|c| async move {
            c.execute(
                "INSERT INTO meta (key, value) VALUES ('callback_secret', $1) \
                 ON CONFLICT DO NOTHING",
                &[&candidate],
            )
            .await
            .map_err(unavailable)?;
            let row = c
                .query_one("SELECT value FROM meta WHERE key = 'callback_secret'", &[])
                .await
                .map_err(unavailable)?;
            Ok(Some(row.get(0)))
        })
        .await
    }
}
