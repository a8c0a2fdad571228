//! The operator's calls: `PATCH /v1/operations/{id}` and `POST /v1/redeliver` (bulk), parsed
//! here and carried out by [`crate::state::amend`] and [`crate::state::redeliver_matching`].

use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection};
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use serde::{Deserialize, Deserializer};
use serde_json::{Value, json};

use super::{ApiError, ApiResult, parse_json, path_param};
use crate::clock::Timestamp;
use crate::ids::OperationId;
use crate::operation::{DeliveryState, Status};
use crate::state::{Amendment, BulkRedeliver, MAX_BULK_REDELIVER, Shim};
use crate::store::ListFilter;

/// A present field, even `null`, is `Some(…)`: merge-patch semantics (`null` removes).
fn present<'de, D: Deserializer<'de>, T: Deserialize<'de>>(d: D) -> Result<Option<T>, D::Error> {
    T::deserialize(d).map(Some)
}

/// `PATCH /v1/operations/{id}` (JSON merge patch on three fields).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct PatchRequest {
    #[serde(default, deserialize_with = "present")]
    callback_url: Option<Option<String>>,
    #[serde(default, deserialize_with = "present")]
    metadata: Option<Option<Value>>,
    deadline: Option<String>,
}

pub(super) async fn patch(
    State(shim): State<Arc<Shim>>,
    id: Result<Path<String>, PathRejection>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult {
    let id = OperationId::from_text(path_param(id)?);
    let req: PatchRequest = parse_json(&body?)?;
    let op = crate::state::amend(
        &shim,
        &id,
        Amendment {
            callback_url: req.callback_url,
            metadata: req.metadata,
            deadline: req.deadline,
        },
    )
    .await?;
    Ok(Json(op).into_response())
}

/// `delivery=` of a list or a bulk redelivery: `none`, `pending`, `failed`, `delivered`.
pub(super) fn parse_delivery(v: Option<&str>) -> Result<Option<DeliveryState>, ApiError> {
    Ok(match v {
        None | Some("") => None,
        Some("none") => Some(DeliveryState::None),
        Some("pending") => Some(DeliveryState::Pending),
        Some("failed") => Some(DeliveryState::Failed),
        Some("delivered") => Some(DeliveryState::Delivered),
        Some(other) => {
            return Err(invalid(format!(
                "delivery {other:?} is not one of none, pending, failed, delivered"
            )));
        }
    })
}

fn invalid(message: String) -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, "invalid_query", message)
}

/// `POST /v1/redeliver`: which terminal callbacks to send again.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct BulkRequest {
    upstream: Option<String>,
    status: Option<String>,
    /// `failed` (the default) or `delivered`.
    delivery: Option<String>,
    /// RFC 3339: operations that ended at or after it.
    completed_after: Option<String>,
    /// RFC 3339: operations that ended before it.
    completed_before: Option<String>,
    /// At most this many (1..=1000, default 100).
    limit: Option<usize>,
    /// Continue after this id (`next_cursor` of the previous call).
    cursor: Option<String>,
}

fn time(field: &str, v: Option<&str>) -> Result<Option<Timestamp>, ApiError> {
    v.map(|t| {
        humantime::parse_rfc3339_weak(t)
            .map(Timestamp::from_system)
            .map_err(|e| {
                invalid(format!(
                    "{field} {t:?}: {e}; write an RFC 3339 time such as \"2026-12-01T18:00:00Z\""
                ))
            })
    })
    .transpose()
}

pub(super) async fn redeliver_bulk(
    State(shim): State<Arc<Shim>>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult {
    let body = body?;
    let req: BulkRequest = if body.is_empty() {
        parse_json(b"{}")?
    } else {
        parse_json(&body)?
    };
    let status = match req.status.as_deref() {
        None | Some("") => None,
        Some(s) => match Status::parse(s) {
            Some(st) if st.is_terminal() => Some(st),
            _ => {
                return Err(invalid(format!(
                    "status {s:?}: write a terminal status (succeeded, failed, cancelled, \
                     expired, timed_out)"
                )));
            }
        },
    };
    let delivery = parse_delivery(req.delivery.as_deref())?.unwrap_or(DeliveryState::Failed);
    if !crate::state::bulk_delivery_state(delivery) {
        return Err(invalid(
            "delivery: write \"failed\" (the default) or \"delivered\"; a pending callback is \
             already on its way"
                .into(),
        ));
    }
    let limit = match req.limit {
        None => 100,
        Some(n @ 1..=MAX_BULK_REDELIVER) => n,
        Some(n) => {
            return Err(invalid(format!(
                "limit {n} is out of range: write a number in 1..={MAX_BULK_REDELIVER}"
            )));
        }
    };
    let after = time("completed_after", req.completed_after.as_deref())?;
    let before = time("completed_before", req.completed_before.as_deref())?;
    let outcome = crate::state::redeliver_matching(
        &shim,
        &BulkRedeliver {
            filter: ListFilter {
                status,
                upstream: req.upstream.filter(|u| !u.is_empty()),
                delivery: Some(delivery),
                limit,
                cursor: req
                    .cursor
                    .filter(|c| !c.is_empty())
                    .map(OperationId::from_text),
            },
            completed_after: after,
            completed_before: before,
        },
    )
    .await?;
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({
            "redelivered": outcome.redelivered.len(),
            "ids": outcome.redelivered,
            "next_cursor": outcome.next_cursor,
        })),
    )
        .into_response())
}
