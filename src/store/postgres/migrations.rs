//! The schema, as versioned migrations compiled into the binary. At start every replica takes a
//! session advisory lock (one migrator at a time), creates the schema if missing, applies the
//! migrations it has not seen in order (each in its own transaction, recorded in
//! `schema_migrations`), and refuses to start when the database holds a version newer than the
//! last one here: a newer replica migrated it, and this one would not know its tables.
//!
//! A migration is never edited once released: add the next one.

use tokio_postgres::Client;

use crate::store::StoreError;

/// `(version, SQL)`, in order, versions 1, 2, 3, …
pub const MIGRATIONS: &[(i32, &str)] = &[
    (
        1,
        r#"
-- One row per operation. `record` is the whole record as hookshim writes it (JSON, kept as
-- text: `json`, not `jsonb`, so it reads back byte for byte); the other columns are derived
-- from it in the same write, for the indexes.
CREATE TABLE operations (
    id text PRIMARY KEY,
    upstream text NOT NULL,
    operation text NOT NULL,
    status text NOT NULL,
    -- Next poll (ms since the epoch) while not terminal; NULL once terminal.
    poll_at bigint,
    -- The terminal callback's delivery state (`none`, `pending`, `delivered`, `failed`, …).
    delivery_state text NOT NULL,
    record json NOT NULL,
    -- The claim on its next poll: which process, until when (ms), and the fencing token
    -- (raised by every claim; a write by a process holding an older token is refused).
    lease_owner text,
    lease_until bigint,
    lease_token bigint NOT NULL DEFAULT 0,
    UNIQUE (upstream, operation)
);
CREATE INDEX operations_poll_at ON operations (poll_at) WHERE poll_at IS NOT NULL;
CREATE INDEX operations_failed ON operations (id) WHERE delivery_state = 'failed';
-- Callbacks still to send: `event` '' is the terminal callback, else the event's name.
CREATE TABLE outbox (
    op_id text NOT NULL REFERENCES operations (id) ON DELETE CASCADE,
    event text NOT NULL,
    due_at bigint NOT NULL,
    lease_owner text,
    lease_until bigint,
    lease_token bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (op_id, event)
);
CREATE INDEX outbox_due_at ON outbox (due_at);
-- Webhook ids seen (de-duplication, kept 7 days).
CREATE TABLE inbox (
    upstream text NOT NULL,
    webhook_id text NOT NULL,
    received_at bigint NOT NULL,
    PRIMARY KEY (upstream, webhook_id)
);
CREATE INDEX inbox_received_at ON inbox (received_at);
-- Webhooks for operations not registered yet (kept 24 h); `outcome` when the event decided one.
CREATE TABLE early (
    upstream text NOT NULL,
    operation text NOT NULL,
    received_at bigint NOT NULL,
    outcome json,
    PRIMARY KEY (upstream, operation)
);
CREATE INDEX early_received_at ON early (received_at);
-- The learned job-length priors (one row, key 'priors').
CREATE TABLE priors (
    key text PRIMARY KEY,
    value bytea NOT NULL
);
-- Live processes (heartbeats, database time in ms): each takes an equal share of every
-- upstream's budget.
CREATE TABLE replicas (
    id text PRIMARY KEY,
    seen_at bigint NOT NULL
);
-- Each upstream's latest rate-limit answer seen by any process: the AIMD decrease and the
-- pause it asked for apply to all.
CREATE TABLE upstream_state (
    upstream text PRIMARY KEY,
    throttled_at bigint,
    paused_until bigint NOT NULL DEFAULT 0
);
-- Shared settings, e.g. the generated callback signing secret every replica uses.
CREATE TABLE meta (
    key text PRIMARY KEY,
    value text NOT NULL
);
"#,
    ),
    (
        2,
        r#"
-- Retention: when the operation settled (ended with nothing left to send: its callback
-- delivered, none to send, or every attempt failed; `settled_failed` then), NULL while not.
-- Kept by every write of the record (`store::retention::settled` decides), read through the
-- partial index by the purge.
ALTER TABLE operations ADD COLUMN settled_at bigint,
    ADD COLUMN settled_failed boolean NOT NULL DEFAULT false;
CREATE INDEX operations_settled ON operations (settled_at) WHERE settled_at IS NOT NULL;
-- Rows written before this version: the same rule, from the record. Times are RFC 3339 text.
WITH d AS (
    SELECT o.id,
        bool_or(x.d->>'state' = 'pending') AS pending,
        bool_or(x.d->>'state' = 'failed') AS failed,
        max(greatest(
            (extract(epoch FROM (x.d->>'delivered_at')::timestamptz) * 1000)::bigint,
            (extract(epoch FROM (x.d->>'last_attempt_at')::timestamptz) * 1000)::bigint)) AS last
    FROM operations o,
        LATERAL (SELECT o.record->'delivery' AS d
                 UNION ALL
                 SELECT e->'delivery' FROM json_array_elements(
                     coalesce(o.record->'events', '[]'::json)) AS e) AS x
    WHERE o.status NOT IN ('pending', 'running')
    GROUP BY o.id
)
UPDATE operations o SET
    settled_at = greatest(
        (extract(epoch FROM (coalesce(o.record->>'completed_at', o.record->>'updated_at'))::timestamptz) * 1000)::bigint,
        d.last),
    settled_failed = d.failed
FROM d
WHERE d.id = o.id AND NOT d.pending AND o.record->'delivery'->>'state' <> 'superseded';
"#,
    ),
];

/// The newest schema version this binary knows.
pub fn latest() -> i32 {
    MIGRATIONS.last().map_or(0, |(v, _)| *v)
}

fn db(e: tokio_postgres::Error) -> StoreError {
    super::unavailable(e)
}

/// Create `schema` if needed and bring it to [`latest`]; refuse a newer one
/// ([`StoreError::TooNew`]). `client` has `schema` first on its search path.
pub async fn migrate(client: &mut Client, schema: &str) -> Result<i32, StoreError> {
    // One migrator per schema at a time, across replicas (released below, or when the
    // connection closes).
    let key = format!("hookshim migrate {schema}");
    client
        .execute("SELECT pg_advisory_lock(hashtextextended($1, 0))", &[&key])
        .await
        .map_err(db)?;
    let result = migrate_locked(client, schema).await;
    let unlocked = client
        .execute(
            "SELECT pg_advisory_unlock(hashtextextended($1, 0))",
            &[&key],
        )
        .await
        .map_err(db);
    let version = result?;
    unlocked?;
    Ok(version)
}

async fn migrate_locked(client: &mut Client, schema: &str) -> Result<i32, StoreError> {
    // `schema` is a checked plain identifier (`config::valid_schema`): no quoting needed.
    client
        .batch_execute(&format!(
            "CREATE SCHEMA IF NOT EXISTS {schema};
             CREATE TABLE IF NOT EXISTS {schema}.schema_migrations (
                 version integer PRIMARY KEY,
                 applied_at timestamptz NOT NULL DEFAULT now()
             );"
        ))
        .await
        .map_err(db)?;
    let row = client
        .query_one(
            &format!("SELECT coalesce(max(version), 0) FROM {schema}.schema_migrations"),
            &[],
        )
        .await
        .map_err(db)?;
    let found: i32 = row.get(0);
    if found > latest() {
        return Err(StoreError::TooNew(format!(
            "the database schema {schema:?} is at version {found}, but this hookshim ({}) knows \
             versions up to {}: a newer hookshim migrated it. Run the newer version on every \
             replica (an older one cannot read its tables safely)",
            env!("CARGO_PKG_VERSION"),
            latest()
        )));
    }
    for (version, sql) in MIGRATIONS.iter().filter(|(v, _)| *v > found) {
        let tx = client.transaction().await.map_err(db)?;
        tx.batch_execute(&format!("SET LOCAL search_path TO {schema}; {sql}"))
            .await
            .map_err(db)?;
        tx.execute(
            &format!("INSERT INTO {schema}.schema_migrations (version) VALUES ($1)"),
            &[version],
        )
        .await
        .map_err(db)?;
        tx.commit().await.map_err(db)?;
        tracing::info!(schema, version, "database schema migrated");
    }
    Ok(latest().max(found))
}
