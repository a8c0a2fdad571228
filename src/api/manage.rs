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
use serde_json::Value;

use super::views::{BulkRedelivered, ErrorBody};
use super::{ApiError, ApiResult, parse_json, path_param};
use crate::clock::Timestamp;
use crate::ids::OperationId;
use crate::operation::{DeliveryState, Operation, Status};
use crate::state::{Amendment, BulkRedeliver, MAX_BULK_REDELIVER, Shim};
use crate::store::ListFilter;

/// A present field, even `null`, is `Some(…)`: merge-patch semantics (`null` removes).
fn present<'de, D: Deserializer<'de>, T: Deserialize<'de>>(d: D) -> Result<Option<T>, D::Error> {
    T::deserialize(d).map(Some)
}

/// `PATCH /v1/operations/{id}` (JSON merge patch on three fields: an absent field stays,
/// `null` removes it).
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct PatchRequest {
    /// The new callback URL (checked as at registration); `null` removes it.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<String>)]
    callback_url: Option<Option<String>>,
    /// The new metadata (at most 16 KiB); `null` removes it.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<Value>)]
    metadata: Option<Option<Value>>,
    /// A duration from now (`"2h"`) or an RFC 3339 time.
    deadline: Option<String>,
}

/// Change an operation's callback URL, metadata or deadline.
#[utoipa::path(patch, path = "/v1/operations/{id}", tag = "operations", security(("bearer" = [])),
    params(("id" = String, Path, description = "`op_<ULID>`")),
    request_body = PatchRequest,
    responses(
        (status = 200, description = "the changed record", body = Operation),
        (status = 400, description = "`invalid_json`, `invalid_path`", body = ErrorBody),
        (status = 401, description = "`unauthorized`", body = ErrorBody),
        (status = 404, description = "`operation_not_found`", body = ErrorBody),
        (status = 409, description = "`already_terminal`: only `callback_url` may change after the end", body = ErrorBody),
        (status = 413, description = "`body_too_large`", body = ErrorBody),
        (status = 422, description = "`callback_not_allowed`, `metadata_too_large`, `invalid_deadline`", body = ErrorBody),
        (status = 503, description = "`store_unavailable`", body = ErrorBody),
    ))]
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
        None => None,
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
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct BulkRequest {
    /// Only this upstream's operations.
    upstream: Option<String>,
    /// Only operations that ended in this (terminal) status.
    #[schema(value_type = Option<super::views::TerminalStatus>)]
    status: Option<String>,
    /// `failed` (the default) or `delivered` (a replay).
    #[schema(value_type = Option<super::views::BulkDelivery>)]
    delivery: Option<String>,
    /// RFC 3339: operations that ended at or after it.
    #[schema(format = DateTime)]
    completed_after: Option<String>,
    /// RFC 3339: operations that ended before it.
    #[schema(format = DateTime)]
    completed_before: Option<String>,
    /// At most this many (1..=1000, default 100).
    #[schema(minimum = 1, maximum = 1000)]
    #[serde(default, deserialize_with = "whole_number")]
    limit: Option<usize>,
    /// Continue after this id (`next_cursor` of the previous call).
    cursor: Option<String>,
}

/// A JSON number with no fraction (`194` or `194.0`, as JSON Schema's `integer` allows).
fn whole_number<'de, D: Deserializer<'de>>(d: D) -> Result<Option<usize>, D::Error> {
    let Some(n) = Option::<serde_json::Number>::deserialize(d)? else {
        return Ok(None);
    };
    let whole = n.as_u64().or_else(|| {
        n.as_f64()
            .filter(|f| f.fract() == 0.0 && (0.0..1e15).contains(f))
            .map(|f| f as u64)
    });
    whole
        .and_then(|v| usize::try_from(v).ok())
        .map(Some)
        .ok_or_else(|| serde::de::Error::custom(format!("{n} is not a whole number ≥ 0")))
}

/// An RFC 3339 time (one before 1970 is 1970: before every operation).
fn time(field: &str, v: Option<&str>) -> Result<Option<Timestamp>, ApiError> {
    v.map(|t| {
        Timestamp::parse_rfc3339(t).map_err(|e| {
            invalid(format!(
                "{field} {t:?}: {e}; write an RFC 3339 time such as \"2026-12-01T18:00:00Z\""
            ))
        })
    })
    .transpose()
}

/// Redeliver many terminal callbacks by filter and time range, oldest first, bounded.
#[utoipa::path(post, path = "/v1/redeliver", tag = "operations", security(("bearer" = [])),
    request_body = BulkRequest,
    responses(
        (status = 202, description = "these callbacks are back in the outbox", body = BulkRedelivered),
        (status = 400, description = "`invalid_json`, `invalid_query`", body = ErrorBody),
        (status = 401, description = "`unauthorized`", body = ErrorBody),
        (status = 413, description = "`body_too_large`", body = ErrorBody),
        (status = 503, description = "`store_unavailable`", body = ErrorBody),
    ))]
pub(super) async fn redeliver_bulk(
    State(shim): State<Arc<Shim>>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult {
    let req: BulkRequest = parse_json(&body?)?;
    let status = match req.status.as_deref() {
        None => None,
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
    let body = BulkRedelivered {
        redelivered: outcome.redelivered.len(),
        ids: outcome.redelivered,
        next_cursor: outcome.next_cursor,
    };
    Ok((StatusCode::ACCEPTED, Json(body)).into_response())
}
