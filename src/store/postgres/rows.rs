//! How an operation becomes rows: the derived columns, the outbox rows, and the writes that
//! keep them together in one transaction.

use deadpool_postgres::Transaction;
use tokio_postgres::types::Json;

use super::unavailable;
use crate::clock::Timestamp;
use crate::operation::{DeliveryState, Operation};
use crate::store::StoreError;

pub(super) fn ms(t: Timestamp) -> i64 {
    t.0.min(i64::MAX as u64) as i64
}

pub(super) fn ts(v: i64) -> Timestamp {
    Timestamp(v.max(0) as u64)
}

/// The advisory-lock key text of an `(upstream, operation)` pair (upstream names cannot hold
/// `:`, so the pair is unambiguous).
pub(super) fn pair(upstream: &str, operation: &str) -> String {
    format!("{upstream}:{operation}")
}

/// The outbox rows a record needs: `(event, due)`, `""` for the terminal callback.
pub(super) fn outbox_rows(op: &Operation) -> Vec<(String, i64)> {
    let mut rows = Vec::new();
    if op.in_outbox() {
        let at = op.delivery.next_attempt_at.unwrap_or(op.updated_at);
        rows.push((String::new(), ms(at)));
    }
    for e in &op.events {
        if e.delivery.state == DeliveryState::Pending {
            let at = e.delivery.next_attempt_at.unwrap_or(op.updated_at);
            rows.push((e.name.clone(), ms(at)));
        }
    }
    rows
}

/// The `poll_at` column: the next poll while not terminal (as sled's `active` index).
pub(super) fn poll_at(op: &Operation) -> Option<i64> {
    (!op.status.is_terminal()).then(|| ms(op.next_poll_at.unwrap_or(op.deadline_at)))
}

/// The `delivery_state` column: the state as the API writes it (`failed`, `pending`, …).
pub(super) fn delivery_state(state: DeliveryState) -> String {
    serde_json::to_value(state)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default()
}

/// Decode the `record` column of `row` (column `idx`).
pub(super) fn record(
    row: &tokio_postgres::Row,
    idx: usize,
    id: &str,
) -> Result<Operation, StoreError> {
    row.try_get::<_, Json<Operation>>(idx)
        .map(|j| j.0)
        .map_err(|e| StoreError::Corrupt {
            key: id.to_string(),
            message: e.to_string(),
        })
}

/// `SELECT … FOR UPDATE` one operation in `tx`.
pub(super) async fn lock_op(
    tx: &Transaction<'_>,
    id: &str,
) -> Result<Option<Operation>, StoreError> {
    let st = tx
        .prepare_cached("SELECT record FROM operations WHERE id = $1 FOR UPDATE")
        .await
        .map_err(unavailable)?;
    match tx.query_opt(&st, &[&id]).await.map_err(unavailable)? {
        None => Ok(None),
        Some(row) => record(&row, 0, id).map(Some),
    }
}

/// What a write needs to know about time and claims.
pub(super) struct WriteCtx<'a> {
    pub me: &'a str,
    pub now: i64,
    /// `now` + [`CLAIM_AHEAD`].
    pub soon: i64,
    pub lease: i64,
    /// The writer holds the operation's poll claim: keep it when the next poll is soon,
    /// release it otherwise (and when the operation ends).
    pub keep_poll_claim: bool,
}

/// Write `new` over `old` in `tx`: the record, its derived columns, and (when they change) its
/// outbox rows. Returns the callback claims taken (new outbox rows are claimed by the writer,
/// which schedules them itself) and whether the writer still holds the poll claim.
pub(super) async fn write_op(
    tx: &Transaction<'_>,
    old: &Operation,
    new: &Operation,
    ctx: &WriteCtx<'_>,
) -> Result<(Vec<(String, i64)>, bool), StoreError> {
    let st = tx
        .prepare_cached(
            "UPDATE operations SET status = $2, poll_at = $3, delivery_state = $4, record = $5, \
               lease_owner = CASE WHEN NOT $6 THEN lease_owner \
                 WHEN $3::bigint <= $7 THEN lease_owner ELSE NULL END, \
               lease_until = CASE WHEN NOT $6 THEN lease_until \
                 WHEN $3::bigint <= $7 THEN $3::bigint + $8 ELSE NULL END \
             WHERE id = $1 RETURNING lease_owner = $9",
        )
        .await
        .map_err(unavailable)?;
    let row = tx
        .query_one(
            &st,
            &[
                &new.id.as_str(),
                &new.status.as_str(),
                &poll_at(new),
                &delivery_state(new.delivery.state),
                &Json(new),
                &ctx.keep_poll_claim,
                &ctx.soon,
                &ctx.lease,
                &ctx.me,
            ],
        )
        .await
        .map_err(unavailable)?;
    let still_claimed = row.get::<_, Option<bool>>(0).unwrap_or(false);
    mark_settled(tx, Some(old), new).await?;
    let rows = outbox_rows(new);
    let taken = if rows != outbox_rows(old) {
        sync_outbox(tx, new.id.as_str(), &rows, ctx).await?
    } else {
        Vec::new()
    };
    Ok((taken, still_claimed))
}

/// Make `id`'s outbox rows exactly `rows`: rows no longer needed go, rows kept keep their claim
/// (with the new due time), new rows are claimed by the writer. Returns the claims taken.
pub(super) async fn sync_outbox(
    tx: &Transaction<'_>,
    id: &str,
    rows: &[(String, i64)],
    ctx: &WriteCtx<'_>,
) -> Result<Vec<(String, i64)>, StoreError> {
    let (events, dues): (Vec<&str>, Vec<i64>) = rows.iter().map(|(e, d)| (e.as_str(), *d)).unzip();
    let del = tx
        .prepare_cached("DELETE FROM outbox WHERE op_id = $1 AND NOT (event = ANY($2::text[]))")
        .await
        .map_err(unavailable)?;
    tx.execute(&del, &[&id, &events])
        .await
        .map_err(unavailable)?;
    if rows.is_empty() {
        return Ok(Vec::new());
    }
    let ins = tx
        .prepare_cached(
            "INSERT INTO outbox (op_id, event, due_at, lease_owner, lease_until, lease_token) \
             SELECT $1, e, d, $4, greatest(d, $5::bigint) + $6::bigint, 1 \
             FROM unnest($2::text[], $3::bigint[]) AS t (e, d) \
             ON CONFLICT (op_id, event) DO UPDATE SET due_at = EXCLUDED.due_at \
             RETURNING event, lease_token, (xmax = 0) AS inserted",
        )
        .await
        .map_err(unavailable)?;
    let returned = tx
        .query(&ins, &[&id, &events, &dues, &ctx.me, &ctx.now, &ctx.lease])
        .await
        .map_err(unavailable)?;
    Ok(returned
        .iter()
        .filter(|r| r.get::<_, bool>(2))
        .map(|r| (r.get::<_, String>(0), r.get::<_, i64>(1)))
        .collect())
}

/// Take the transaction-scoped advisory lock of an `(upstream, operation)` pair.
pub(super) async fn lock_pair(
    tx: &Transaction<'_>,
    upstream: &str,
    operation: &str,
) -> Result<(), StoreError> {
    let st = tx
        .prepare_cached("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))")
        .await
        .map_err(unavailable)?;
    tx.execute(&st, &[&pair(upstream, operation)])
        .await
        .map_err(unavailable)?;
    Ok(())
}

/// Keep the retention columns (`settled_at`, `settled_failed`) with the record, in `tx`: a
/// statement only when whether or when the operation settled changes (about once per
/// operation: when its callback is delivered).
pub(super) async fn mark_settled(
    tx: &Transaction<'_>,
    old: Option<&Operation>,
    new: &Operation,
) -> Result<(), StoreError> {
    let settled = crate::store::retention::settled(new);
    if old.map(crate::store::retention::settled) == Some(settled)
        || (old.is_none() && settled.is_none())
    {
        return Ok(());
    }
    let st = tx
        .prepare_cached("UPDATE operations SET settled_at = $2, settled_failed = $3 WHERE id = $1")
        .await
        .map_err(unavailable)?;
    let (at, failed) = match settled {
        Some((at, failed)) => (Some(ms(at)), failed),
        None => (None, false),
    };
    tx.execute(&st, &[&new.id.as_str(), &at, &failed])
        .await
        .map_err(unavailable)?;
    Ok(())
}
