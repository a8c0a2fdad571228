//! The HTTP API (axum): routes, request parsing, auth, and the one mapping from errors to
//! HTTP. Every error body is `{"error": {"code": "snake_case", "message": "..."}}`.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Path, Query, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{Value, json};
use subtle::ConstantTimeEq;

use crate::config::check_callback_url;
use crate::operation::{Delivery, DeliveryState, Operation, Status};
use crate::service::{EARLY_WEBHOOK_WINDOW, Shim};
use crate::store::{ListFilter, Registered, StoreError};
use crate::upstream::prepare_operation;

/// The most metadata an operation may carry (serialised JSON).
pub const MAX_METADATA: usize = 16 * 1024;
const DEFAULT_LIMIT: usize = 100;
const MAX_LIMIT: usize = 1000;

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code,
            message: message.into(),
        }
    }
    pub fn store(e: StoreError) -> ApiError {
        tracing::error!(error = %e, "store error while serving a request");
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "store_unavailable",
            e.to_string(),
        )
    }
    fn not_found(id: &str) -> ApiError {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "operation_not_found",
            format!("no operation with id {id:?}"),
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (
            self.status,
            Json(json!({"error": {"code": self.code, "message": self.message}})),
        )
            .into_response()
    }
}

impl From<BytesRejection> for ApiError {
    fn from(r: BytesRejection) -> ApiError {
        if r.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "body_too_large",
                "request body is larger than server.max_body",
            )
        } else {
            ApiError::new(r.status(), "bad_body", r.body_text())
        }
    }
}

type ApiResult = Result<Response, ApiError>;

pub fn router(shim: Arc<Shim>) -> Router {
    let v1 = Router::new()
        .route("/v1/operations", post(register).get(list))
        .route("/v1/operations/{id}", get(get_one).delete(delete_one))
        .route("/v1/operations/{id}/redeliver", post(redeliver))
        .route_layer(middleware::from_fn_with_state(shim.clone(), require_token));
    Router::new()
        .merge(v1)
        .route("/webhooks/{upstream}", post(webhook))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .fallback(|| async { ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such route") })
        .layer(DefaultBodyLimit::max(shim.config.server.max_body))
        .with_state(shim)
}

async fn require_token(State(shim): State<Arc<Shim>>, req: Request, next: Next) -> Response {
    if let Some(token) = &shim.config.server.api_token {
        let given = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::as_bytes);
        let ok = given.is_some_and(|g| bool::from(g.ct_eq(&token.0)));
        if !ok {
            let msg = format!(
                "missing or wrong bearer token (set by {})",
                shim.config.server.api_token_env
            );
            return ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", msg).into_response();
        }
    }
    next.run(req).await
}

fn parse_json<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_json",
            format!("request body: {e}"),
        )
    })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RegisterRequest {
    upstream: String,
    operation: String,
    callback_url: Option<String>,
    metadata: Option<Value>,
    deadline: Option<String>,
}

async fn register(State(shim): State<Arc<Shim>>, body: Result<Bytes, BytesRejection>) -> ApiResult {
    let req: RegisterRequest = parse_json(&body?)?;
    let up = shim.config.upstreams.get(&req.upstream).ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "unknown_upstream",
            format!("no upstream named {:?} in the config", req.upstream),
        )
    })?;
    let operation = prepare_operation(up, &req.operation)
        .map_err(|e| ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_operation", e))?;
    let callback_url = match &req.callback_url {
        Some(u) => Some(
            check_callback_url(u, &shim.config.callbacks.allowed_hosts)
                .map_err(|e| {
                    ApiError::new(
                        StatusCode::UNPROCESSABLE_ENTITY,
                        "callback_not_allowed",
                        format!("callback_url: {e}"),
                    )
                })?
                .to_string(),
        ),
        None => shim
            .config
            .callbacks
            .default_url
            .as_ref()
            .map(|u| u.to_string()),
    };
    if let Some(m) = &req.metadata {
        let size = serde_json::to_vec(m).map(|v| v.len()).unwrap_or(usize::MAX);
        if size > MAX_METADATA {
            return Err(ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "metadata_too_large",
                format!("metadata is {size} bytes; at most {MAX_METADATA} are kept"),
            ));
        }
    }
    let deadline = match &req.deadline {
        None => up.poll.deadline,
        Some(d) => {
            let parsed = humantime::parse_duration(d).map_err(|e| {
                ApiError::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "invalid_deadline",
                    format!("deadline {d:?}: {e}; write e.g. \"2h\""),
                )
            })?;
            if parsed.is_zero() {
                return Err(ApiError::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "invalid_deadline",
                    "deadline must be more than 0s",
                ));
            }
            // At most 366 days: no upstream job runs longer, and a time past year 9999
            // cannot even be written.
            const MAX_DEADLINE: std::time::Duration = std::time::Duration::from_secs(366 * 86_400);
            if parsed > MAX_DEADLINE {
                return Err(ApiError::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "invalid_deadline",
                    format!(
                        "deadline {d:?} is too far away; at most 366 days (\"366d\") is accepted"
                    ),
                ));
            }
            parsed
        }
    };

    let now = shim.clock.now();
    let deadline_at = now.plus(deadline);
    let sample = rand::random_range(-1.0..=1.0);
    let op = Operation {
        id: format!("op_{}", ulid::Ulid::generate()),
        upstream: req.upstream.clone(),
        operation,
        status: Status::Pending,
        upstream_status: None,
        progress: None,
        result: None,
        error: None,
        metadata: req.metadata,
        callback_url,
        created_at: now,
        updated_at: now,
        completed_at: None,
        detected_via: None,
        polls: 0,
        next_poll_at: Some({
            let at = crate::poller::first_poll_at(up, now, deadline_at, sample);
            match shim.limiters.get(&req.upstream) {
                Some(l) => l.spread_first_poll(at, now).min(deadline_at),
                None => at,
            }
        }),
        deadline_at,
        delivery: Delivery::default(),
        not_found_streak: 0,
        error_streak: 0,
        last_poll_error: None,
        webhook_at: None,
        webhook_reads: 0,
        late_observations: 0,
        pace: Default::default(),
        etag: None,
        upstream_expires_at: None,
        callback_events: up.callback_events.clone(),
        paused: false,
        pauses: 0,
        events: Vec::new(),
    };
    let registered = shim
        .store
        .register(op, EARLY_WEBHOOK_WINDOW)
        .map_err(ApiError::store)?;
    if let Registered::Created { op, .. } = &registered {
        // Schedule even if the flush below fails: the record is in the store either way.
        shim.metrics
            .registered
            .get_or_create(&crate::metrics::UpstreamLabel {
                upstream: op.upstream.clone(),
            })
            .inc();
        shim.metrics.active(&op.upstream).inc();
        if !op.status.is_terminal() {
            shim.polls.schedule(&op.id, op.next_poll_at.unwrap_or(now));
        }
    }
    shim.commit.flushed().await.map_err(ApiError::store)?;
    Ok(match registered {
        Registered::Created { op, early_webhook } => {
            if early_webhook.is_some() {
                tracing::info!(op = %op.id, "applied a webhook that arrived before registration");
            }
            if op.status.is_terminal() {
                // The kept webhook's event decided the outcome: the callback goes out now.
                shim.on_terminal(&op).await;
            }
            (StatusCode::CREATED, Json(op)).into_response()
        }
        Registered::Existing(op) => (StatusCode::OK, Json(op)).into_response(),
    })
}

async fn get_one(State(shim): State<Arc<Shim>>, Path(id): Path<String>) -> ApiResult {
    let op = shim
        .store
        .get(&id)
        .map_err(ApiError::store)?
        .ok_or_else(|| ApiError::not_found(&id))?;
    Ok(Json(op).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    status: Option<String>,
    upstream: Option<String>,
    delivery: Option<String>,
    limit: Option<usize>,
    cursor: Option<String>,
}

async fn list(
    State(shim): State<Arc<Shim>>,
    q: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult {
    let Query(q) =
        q.map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "invalid_query", e.body_text()))?;
    let status = match q.status.as_deref() {
        None | Some("") => None,
        Some(s) => Some(Status::parse(s).ok_or_else(|| {
            let all: Vec<&str> = Status::ALL.iter().map(|s| s.as_str()).collect();
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_query",
                format!("status {s:?} is not one of {}", all.join(", ")),
            )
        })?),
    };
    let delivery_failed = match q.delivery.as_deref() {
        None | Some("") => false,
        Some("failed") => true,
        Some(other) => {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_query",
                format!("delivery {other:?}: only \"failed\" is supported"),
            ));
        }
    };
    let filter = ListFilter {
        status,
        upstream: q.upstream.filter(|u| !u.is_empty()),
        delivery_failed,
        limit: q.limit.unwrap_or(DEFAULT_LIMIT).clamp(1, MAX_LIMIT),
        cursor: q.cursor.filter(|c| !c.is_empty()),
    };
    let (ops, next) = shim.store.list(&filter).map_err(ApiError::store)?;
    Ok(Json(json!({"operations": ops, "next_cursor": next})).into_response())
}

async fn delete_one(State(shim): State<Arc<Shim>>, Path(id): Path<String>) -> ApiResult {
    let op = shim
        .store
        .delete(&id)
        .map_err(ApiError::store)?
        .ok_or_else(|| ApiError::not_found(&id))?;
    shim.commit.flushed().await.map_err(ApiError::store)?;
    shim.polls.remove(&id);
    shim.deliveries.remove(&id);
    if !op.status.is_terminal() {
        shim.metrics.active(&op.upstream).dec();
    }
    Ok(Json(op).into_response())
}

async fn redeliver(State(shim): State<Arc<Shim>>, Path(id): Path<String>) -> ApiResult {
    let now = shim.clock.now();
    let (op, wrote) = shim
        .store
        .update(&id, &|o| {
            if !o.status.is_terminal() || o.callback_url.is_none() {
                return false;
            }
            o.delivery = Delivery {
                state: DeliveryState::Pending,
                next_attempt_at: Some(now),
                ..Delivery::default()
            };
            o.updated_at = now;
            true
        })
        .map_err(ApiError::store)?
        .ok_or_else(|| ApiError::not_found(&id))?;
    if !wrote {
        let why = if !op.status.is_terminal() {
            format!(
                "operation is {}; only terminal operations have a callback to redeliver",
                op.status.as_str()
            )
        } else {
            "operation has no callback_url".to_string()
        };
        return Err(ApiError::new(StatusCode::CONFLICT, "not_terminal", why));
    }
    shim.commit.flushed().await.map_err(ApiError::store)?;
    shim.deliveries.schedule(&id, now);
    Ok((StatusCode::ACCEPTED, Json(op)).into_response())
}

async fn webhook(
    State(shim): State<Arc<Shim>>,
    Path(upstream): Path<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult {
    let body = match body {
        Ok(b) => b,
        Err(r) => {
            shim.metrics.webhook(&upstream, "too_large");
            return Err(r.into());
        }
    };
    let (status, value) = crate::ingest::receive(&shim, &upstream, &headers, &body).await?;
    Ok((status, Json(value)).into_response())
}

async fn healthz() -> Response {
    Json(json!({"status": "ok"})).into_response()
}

async fn readyz(State(shim): State<Arc<Shim>>) -> Response {
    let workers = shim.workers_running.load(Ordering::SeqCst) && !shim.shutdown.is_cancelled();
    let store_error = match shim.store.get("op_readiness_probe") {
        Err(e) => Some(e.to_string()),
        Ok(_) => shim.commit.last_error().map(|e| e.to_string()),
    };
    let ready = workers && store_error.is_none();
    let body = json!({"ready": ready, "store": store_error.is_none(), "store_error": store_error, "workers": workers,
        "polls_scheduled": shim.polls.len(), "outbox": shim.deliveries.len()});
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(body)).into_response()
}

async fn metrics(State(shim): State<Arc<Shim>>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        shim.metrics.render(),
    )
        .into_response()
}
