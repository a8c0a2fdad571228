//! What an operator changes on a tracked operation, as domain functions the API (and through it
//! `hookshim ops` and `/ui`) calls: [`amend`] (`PATCH`: callback URL, metadata, deadline),
//! [`redeliver`] (one terminal callback again) and [`redeliver_matching`] (many, by filter and
//! time range, bounded). Each validates first, changes the record in one atomic write, flushes,
//! and only then hands work on (a poll moved earlier, a callback scheduled).

use serde_json::Value;

use super::Shim;
use super::register::{MAX_METADATA, RegisterError, parse_deadline};
use crate::clock::Timestamp;
use crate::ids::{DeliveryKey, OperationId};
use crate::operation::{DeliveryState, Operation};
use crate::store::{ListFilter, StoreError};

/// A change to an operation (JSON merge patch, RFC 7396, on three fields): `None` leaves a
/// field as it is, `Some(None)` removes it (`callback_url`, `metadata`).
#[derive(Debug, Clone, Default)]
pub struct Amendment {
    pub callback_url: Option<Option<String>>,
    pub metadata: Option<Option<Value>>,
    /// A duration from now (`"2h"`) or an RFC 3339 time, as at registration.
    pub deadline: Option<String>,
}

/// Why a change or a redelivery was refused.
#[derive(Debug, thiserror::Error)]
pub enum ManageError {
    #[error("no operation with id {0:?}")]
    NotFound(OperationId),
    /// The operation has ended: only its callback URL can still change (its callback body, with
    /// the metadata, is fixed at the end).
    #[error("{0}")]
    Finished(String),
    /// Nothing to redeliver: not terminal, or no callback URL.
    #[error("{0}")]
    NotTerminal(String),
    #[error(transparent)]
    Invalid(#[from] RegisterError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Apply `change` to operation `id`: durable before it returns; a deadline moved before the next
/// planned poll moves that poll to it (the deadline is always a last look).
pub async fn amend(
    shim: &Shim,
    id: &OperationId,
    change: Amendment,
) -> Result<Operation, ManageError> {
    let callback_url = match &change.callback_url {
        Some(Some(u)) => Some(Some(
            shim.check_callback_url(u)
                .map_err(RegisterError::CallbackNotAllowed)?
                .to_string(),
        )),
        other => other.clone(),
    };
    if let Some(Some(m)) = &change.metadata {
        let size = serde_json::to_vec(m).map(|v| v.len()).unwrap_or(usize::MAX);
        if size > MAX_METADATA {
            return Err(RegisterError::MetadataTooLarge(size).into());
        }
    }
    let now = shim.clock.now();
    let deadline_at = match &change.deadline {
        Some(d) => Some(now.plus(parse_deadline(d, now)?)),
        None => None,
    };
    let refused = std::sync::Mutex::new(None);
    let updated = shim
        .store
        .update(id, &|o| {
            let why = refusal(o, &change);
            let refuse = why.is_some();
            *refused.lock().unwrap_or_else(|p| p.into_inner()) = why;
            if refuse {
                return false;
            }
            if let Some(u) = &callback_url {
                o.callback_url = u.clone();
            }
            if let Some(m) = &change.metadata {
                o.metadata = m.clone();
            }
            if let Some(at) = deadline_at {
                o.deadline_at = at;
                if o.next_poll_at.is_none_or(|n| n > at) {
                    o.next_poll_at = Some(at);
                }
            }
            o.updated_at = now;
            true
        })
        .await?
        .ok_or_else(|| ManageError::NotFound(id.clone()))?;
    if let Some(why) = refused.into_inner().unwrap_or_else(|p| p.into_inner()) {
        return Err(ManageError::Finished(why));
    }
    shim.commit.flushed().await?;
    if let (Some(at), false) = (deadline_at, updated.op.status.is_terminal()) {
        shim.polls.schedule_no_later_than(id, at);
    }
    Ok(updated.op)
}

/// Why `change` cannot apply to `o` (a finished operation), if it cannot.
fn refusal(o: &Operation, change: &Amendment) -> Option<String> {
    if !o.status.is_terminal() {
        return None;
    }
    let field = if change.metadata.is_some() {
        "metadata"
    } else if change.deadline.is_some() {
        "deadline"
    } else if matches!(change.callback_url, Some(None)) {
        "callback_url (it can be changed, not removed)"
    } else {
        return None;
    };
    Some(format!(
        "operation {} is {}: its {field} can no longer change (the callback body is fixed at \
         the end); a finished operation's callback_url can be changed, then redelivered",
        o.id,
        o.status.as_str()
    ))
}

/// Send the terminal callback of `id` again (same `webhook-id`, same body): pending now, the
/// retry schedule afresh, attempts and history kept. Durable before it returns.
pub async fn redeliver(shim: &Shim, id: &OperationId) -> Result<Operation, ManageError> {
    let now = shim.clock.now();
    let op = mark_for_redelivery(shim, id, now).await?;
    shim.commit.flushed().await?;
    shim.deliveries
        .schedule(&DeliveryKey::terminal(id.clone()), now);
    Ok(op)
}

async fn mark_for_redelivery(
    shim: &Shim,
    id: &OperationId,
    now: Timestamp,
) -> Result<Operation, ManageError> {
    let updated = shim
        .store
        .update(id, &|o| {
            if !o.status.is_terminal() || o.callback_url.is_none() {
                return false;
            }
            o.delivery.redeliver(now);
            o.updated_at = now;
            true
        })
        .await?
        .ok_or_else(|| ManageError::NotFound(id.clone()))?;
    let op = updated.op;
    if !updated.written {
        return Err(ManageError::NotTerminal(if !op.status.is_terminal() {
            format!(
                "operation is {}; only terminal operations have a callback to redeliver",
                op.status.as_str()
            )
        } else {
            "operation has no callback_url".to_string()
        }));
    }
    Ok(op)
}

/// Most operations one bulk redelivery may resend.
pub const MAX_BULK_REDELIVER: usize = 1000;
/// Most operations matching the list filter (delivery state, upstream, status) one bulk
/// redelivery considers; past that it returns a cursor to continue from.
pub const MAX_BULK_SCAN: usize = 100_000;

/// Which operations a bulk redelivery resends.
#[derive(Debug, Clone)]
pub struct BulkRedeliver {
    /// `upstream`, `status`, `delivery` (`failed` or `delivered`), `cursor`; `limit` is the
    /// most to resend (1..=[`MAX_BULK_REDELIVER`]).
    pub filter: ListFilter,
    /// Only operations that ended at or after this time…
    pub completed_after: Option<Timestamp>,
    /// …and before this one.
    pub completed_before: Option<Timestamp>,
}

/// What a bulk redelivery did.
#[derive(Debug, Default)]
pub struct BulkOutcome {
    pub redelivered: Vec<OperationId>,
    /// Where to continue (the last record looked at) when a bound was reached; `None`: done.
    pub next_cursor: Option<OperationId>,
}

/// Redeliver every terminal callback `req` selects, oldest first, at most `filter.limit`,
/// considering at most [`MAX_BULK_SCAN`] operations that pass the list filter. One flush covers
/// them all, before any is scheduled.
pub async fn redeliver_matching(
    shim: &Shim,
    req: &BulkRedeliver,
) -> Result<BulkOutcome, ManageError> {
    let now = shim.clock.now();
    let want = req.filter.limit.clamp(1, MAX_BULK_REDELIVER);
    let mut page = ListFilter {
        limit: 1000,
        ..req.filter.clone()
    };
    let mut out = BulkOutcome::default();
    let mut scanned = 0;
    'pages: loop {
        let (ops, next) = shim.store.list(&page).await?;
        for op in &ops {
            scanned += 1;
            let in_range = op.completed_at.is_some_and(|c| {
                req.completed_after.is_none_or(|a| c >= a)
                    && req.completed_before.is_none_or(|b| c < b)
            });
            if in_range && op.callback_url.is_some() {
                match mark_for_redelivery(shim, &op.id, now).await {
                    Ok(_) => out.redelivered.push(op.id.clone()),
                    // Deleted meanwhile, or changed so it no longer qualifies: skip it.
                    Err(ManageError::NotFound(_) | ManageError::NotTerminal(_)) => {}
                    Err(e) => return Err(e),
                }
            }
            if out.redelivered.len() >= want || scanned >= MAX_BULK_SCAN {
                let last_here = ops.last().is_some_and(|l| l.id == op.id);
                out.next_cursor = (!last_here || next.is_some()).then(|| op.id.clone());
                break 'pages;
            }
        }
        match next {
            Some(c) => page.cursor = Some(c),
            None => break,
        }
    }
    shim.commit.flushed().await?;
    for id in &out.redelivered {
        shim.deliveries
            .schedule(&DeliveryKey::terminal(id.clone()), now);
    }
    Ok(out)
}

/// The delivery states a bulk redelivery may select: finished ones (a pending callback is
/// already on its way).
pub fn bulk_delivery_state(s: DeliveryState) -> bool {
    matches!(s, DeliveryState::Failed | DeliveryState::Delivered)
}
