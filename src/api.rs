//! The HTTP API (axum): routes, request parsing, auth, and the one mapping from errors to
//! HTTP. Every error body is `{"error": {"code": "snake_case", "message": "..."}}`.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection};
use axum::extract::{DefaultBodyLimit, Path, Query, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::Value;
use subtle::ConstantTimeEq;

use crate::ids::{DeliveryKey, OperationId};
use crate::ingest::{IngestError, Ingested};
use crate::operation::Operation;
use crate::operation::Status;
use crate::proxy::ProxyError;
use crate::state::{ManageError, RegisterError, Registration, Shim};
use crate::store::{ListFilter, Registered, StoreError};
mod manage;
mod openapi;
mod ui;
mod views;

use manage::parse_delivery;
pub use openapi::ApiDoc;
use views::{
    ErrorBody, ErrorDetail, Health, OperationList, PriorView, Readiness, UpstreamView, Upstreams,
    WebhookAnswer, WebhookResult,
};

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
    /// Every store error is `503 store_unavailable`: the disk said no (sled), the database is
    /// unreachable or did not answer in time ([`StoreError::Unavailable`]), or a record is
    /// damaged. Nothing was acknowledged; the client may retry.
    pub fn store(e: StoreError) -> ApiError {
        match &e {
            StoreError::Unavailable(_) => {
                tracing::warn!(error = %e, "database unavailable while serving a request")
            }
            _ => tracing::error!(error = %e, "store error while serving a request"),
        }
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "store_unavailable",
            e.to_string(),
        )
    }
    fn not_found(id: &OperationId) -> ApiError {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "operation_not_found",
            format!("no operation with id {id:?}"),
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: ErrorDetail {
                code: self.code.to_string(),
                message: self.message,
            },
        };
        (self.status, Json(body)).into_response()
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

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> ApiError {
        ApiError::store(e)
    }
}

impl From<RegisterError> for ApiError {
    fn from(e: RegisterError) -> ApiError {
        ApiError::from_register(&e)
    }
}

impl ApiError {
    fn from_register(e: &RegisterError) -> ApiError {
        let unprocessable = StatusCode::UNPROCESSABLE_ENTITY;
        let (status, code) = match &e {
            RegisterError::UnknownUpstream(_) => (StatusCode::NOT_FOUND, "unknown_upstream"),
            RegisterError::InvalidOperation(_) => (unprocessable, "invalid_operation"),
            RegisterError::CallbackNotAllowed(_) => (unprocessable, "callback_not_allowed"),
            RegisterError::MetadataTooLarge(_) => (unprocessable, "metadata_too_large"),
            RegisterError::InvalidDeadline(_) => (unprocessable, "invalid_deadline"),
            RegisterError::Conflict(_) => (StatusCode::CONFLICT, "conflict"),
            RegisterError::Store(e) => return ApiError::store(e.clone()),
        };
        ApiError::new(status, code, e.to_string())
    }
}

impl From<ManageError> for ApiError {
    fn from(e: ManageError) -> ApiError {
        let (status, code) = match &e {
            ManageError::NotFound(_) => (StatusCode::NOT_FOUND, "operation_not_found"),
            ManageError::Finished(_) => (StatusCode::CONFLICT, "already_terminal"),
            ManageError::NotTerminal(_) => (StatusCode::CONFLICT, "not_terminal"),
            ManageError::Invalid(e) => return ApiError::from_register(e),
            ManageError::Store(e) => return ApiError::store(e.clone()),
        };
        ApiError::new(status, code, e.to_string())
    }
}

impl From<IngestError> for ApiError {
    fn from(e: IngestError) -> ApiError {
        let (status, code) = match &e {
            IngestError::UnknownUpstream(_) => (StatusCode::NOT_FOUND, "unknown_upstream"),
            IngestError::WebhooksNotEnabled(_) => (StatusCode::NOT_FOUND, "webhooks_not_enabled"),
            IngestError::Rejected(v) if v.is_ours() => {
                (StatusCode::SERVICE_UNAVAILABLE, v.code_and_label().0)
            }
            IngestError::Rejected(v) => (StatusCode::UNAUTHORIZED, v.code_and_label().0),
            IngestError::Malformed(_) => (StatusCode::BAD_REQUEST, "malformed_body"),
            IngestError::Store(e) => return ApiError::store(e.clone()),
        };
        ApiError::new(status, code, e.to_string())
    }
}

impl From<ProxyError> for ApiError {
    fn from(e: ProxyError) -> ApiError {
        let (status, code) = match &e {
            ProxyError::UnknownUpstream(_) => (StatusCode::NOT_FOUND, "unknown_upstream"),
            ProxyError::NotEnabled(_) => (StatusCode::NOT_FOUND, "proxy_not_enabled"),
            ProxyError::BudgetExhausted { .. } => {
                (StatusCode::TOO_MANY_REQUESTS, "budget_exhausted")
            }
            ProxyError::BadPath(_) => (StatusCode::BAD_REQUEST, "invalid_path"),
            ProxyError::Unreachable(_) => (StatusCode::BAD_GATEWAY, "upstream_unreachable"),
        };
        ApiError::new(status, code, e.to_string())
    }
}

type ApiResult = Result<Response, ApiError>;

/// The private face (`server.listen`): the API, webhooks, health, readiness and metrics.
pub fn router(shim: Arc<Shim>) -> Router {
    let v1 = Router::new()
        .route("/v1/operations", post(register).get(list))
        .route(
            "/v1/operations/{id}",
            get(get_one).delete(delete_one).patch(manage::patch),
        )
        .route("/v1/operations/{id}/redeliver", post(redeliver))
        .route("/v1/redeliver", post(manage::redeliver_bulk))
        .route("/v1/upstreams", get(upstreams))
        .route_layer(middleware::from_fn_with_state(shim.clone(), require_token));
    let routes = Router::new()
        .merge(v1)
        .route("/webhooks/{upstream}", post(webhook))
        // No token (the app presents its own upstream credential) and no body limit (bodies
        // stream through; the proxy bounds what it reads itself).
        .route(
            "/proxy/{upstream}/{*path}",
            any(proxy).layer(DefaultBodyLimit::disable()),
        )
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/openapi.json", get(openapi::document))
        .route("/ui", get(ui::page))
        .route("/ui/app.js", get(ui::script));
    with_error_contract(routes, shim)
}

/// The public face (`server.webhook_listen`): what an upstream on the internet needs —
/// `/webhooks/{upstream}` and `/healthz` — and nothing else (no API, no metrics, no readiness
/// details).
pub fn webhook_router(shim: Arc<Shim>) -> Router {
    let routes = Router::new()
        .route("/webhooks/{upstream}", post(webhook))
        .route("/healthz", get(healthz));
    with_error_contract(routes, shim)
}

/// Every answer of either face keeps the JSON error contract and the body limit.
fn with_error_contract(routes: Router<Arc<Shim>>, shim: Arc<Shim>) -> Router {
    routes
        .fallback(|| async { ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such route") })
        .method_not_allowed_fallback(|req: Request| async move {
            ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                format!("{} is not allowed on {}", req.method(), req.uri().path()),
            )
        })
        .layer(DefaultBodyLimit::max(shim.config.server.max_body))
        .layer(middleware::map_response(json_errors))
        .layer(middleware::from_fn(access_log))
        .with_state(shim)
}

/// Longest path an access-log line shows (the rest is cut).
const LOGGED_PATH_MAX: usize = 200;

/// One info line per request of either face, with its final status: method, path (never the
/// query string nor any header: tokens and signatures travel there), status, duration.
async fn access_log(req: Request, next: Next) -> Response {
    let started = std::time::Instant::now();
    let method = req.method().clone();
    let path: String = req.uri().path().chars().take(LOGGED_PATH_MAX).collect();
    let response = next.run(req).await;
    tracing::info!(
        target: "hookshim::access",
        method = %method,
        path = %path,
        status = response.status().as_u16(),
        duration_ms = started.elapsed().as_millis() as u64,
        "request"
    );
    response
}

/// A path segment that is not valid UTF-8 (or otherwise unparsable) → `400 invalid_path`.
fn path_param(p: Result<Path<String>, PathRejection>) -> Result<String, ApiError> {
    p.map(|Path(v)| v)
        .map_err(|r| ApiError::new(StatusCode::BAD_REQUEST, "invalid_path", r.body_text()))
}

/// Largest non-JSON error body [`json_errors`] reads to use as the message.
const PLAIN_ERROR_MAX: usize = 4096;

/// The last word on the JSON contract: an error answer that is not JSON (an empty body, or a
/// `text/plain` rejection from axum or tower) becomes `{"error": {"code", "message"}}`, with
/// the plain text (if any) as the message. Answers hyper writes itself before a request reaches
/// the router (431 headers too large, 414 URI too long, 400 unparsable request) cannot be seen
/// here.
async fn json_errors(resp: Response) -> Response {
    let status = resp.status();
    let is_json = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return resp;
    }
    let (parts, body) = resp.into_parts();
    let text = axum::body::to_bytes(body, PLAIN_ERROR_MAX)
        .await
        .map(|b| String::from_utf8_lossy(&b).trim().to_string())
        .unwrap_or_default();
    let reason = status.canonical_reason().unwrap_or("error");
    let message = if text.is_empty() {
        reason.to_string()
    } else {
        text
    };
    let code = match status {
        StatusCode::BAD_REQUEST => "bad_request",
        StatusCode::NOT_FOUND => "not_found",
        StatusCode::METHOD_NOT_ALLOWED => "method_not_allowed",
        StatusCode::REQUEST_TIMEOUT => "request_timeout",
        StatusCode::PAYLOAD_TOO_LARGE => "body_too_large",
        StatusCode::URI_TOO_LONG => "uri_too_long",
        StatusCode::UNSUPPORTED_MEDIA_TYPE => "unsupported_media_type",
        StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE => "headers_too_large",
        s if s.is_server_error() => "internal_error",
        _ => "bad_request",
    };
    let mut out = ApiError::new(status, code, message).into_response();
    // Keep headers such as `Allow` on a 405.
    for (name, value) in parts.headers.iter() {
        if name != header::CONTENT_TYPE && name != header::CONTENT_LENGTH {
            out.headers_mut().append(name.clone(), value.clone());
        }
    }
    out
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

/// `POST /v1/operations`.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct RegisterRequest {
    /// A configured upstream's name.
    upstream: String,
    /// The upstream's id of the job (for `azure-async`, its status URL).
    operation: String,
    /// Where the callback goes; `callbacks.default_url` when absent.
    callback_url: Option<String>,
    /// Any JSON (at most 16 KiB), sent back in the callback.
    metadata: Option<Value>,
    /// A duration from now (`"2h"`) or an RFC 3339 time; the upstream's `poll.deadline` when
    /// absent.
    deadline: Option<String>,
}

/// Track an operation started at an upstream.
#[utoipa::path(post, path = "/v1/operations", tag = "operations", security(("bearer" = [])),
    request_body = RegisterRequest,
    responses(
        (status = 201, description = "registered", body = Operation, links(
            ("GetOperation" = (operation_id = "get_one", parameters(("id" = "$response.body#/id")))),
            ("PatchOperation" = (operation_id = "patch", parameters(("id" = "$response.body#/id")))),
            ("RedeliverOperation" = (operation_id = "redeliver", parameters(("id" = "$response.body#/id")))),
            ("DeleteOperation" = (operation_id = "delete_one", parameters(("id" = "$response.body#/id")))),
        )),
        (status = 200, description = "already registered: the existing record", body = Operation),
        (status = 400, description = "`invalid_json`", body = ErrorBody),
        (status = 401, description = "`unauthorized`", body = ErrorBody),
        (status = 404, description = "`unknown_upstream`", body = ErrorBody),
        (status = 409, description = "`conflict`: registered with another `callback_url`", body = ErrorBody),
        (status = 413, description = "`body_too_large`", body = ErrorBody),
        (status = 422, description = "`callback_not_allowed`, `invalid_operation`, `metadata_too_large`, `invalid_deadline`", body = ErrorBody),
        (status = 503, description = "`store_unavailable`", body = ErrorBody),
    ))]
async fn register(State(shim): State<Arc<Shim>>, body: Result<Bytes, BytesRejection>) -> ApiResult {
    let req: RegisterRequest = parse_json(&body?)?;
    let registered = crate::state::register(
        &shim,
        Registration {
            upstream: req.upstream,
            operation: req.operation,
            callback_url: req.callback_url,
            metadata: req.metadata,
            deadline: req.deadline,
            ..Registration::default()
        },
    )
    .await?;
    Ok(match registered {
        Registered::Created { op, .. } => (StatusCode::CREATED, Json(op)).into_response(),
        Registered::Existing(op) => (StatusCode::OK, Json(op)).into_response(),
    })
}

/// One operation's record.
#[utoipa::path(get, path = "/v1/operations/{id}", tag = "operations", security(("bearer" = [])),
    params(("id" = String, Path, description = "`op_<ULID>`")),
    responses(
        (status = 200, description = "the record", body = Operation),
        (status = 400, description = "`invalid_path`", body = ErrorBody),
        (status = 401, description = "`unauthorized`", body = ErrorBody),
        (status = 404, description = "`operation_not_found`", body = ErrorBody),
        (status = 503, description = "`store_unavailable`", body = ErrorBody),
    ))]
async fn get_one(
    State(shim): State<Arc<Shim>>,
    id: Result<Path<String>, PathRejection>,
) -> ApiResult {
    let id = OperationId::from_text(path_param(id)?);
    let op = shim
        .store
        .get(&id)
        .await
        .map_err(ApiError::store)?
        .ok_or_else(|| ApiError::not_found(&id))?;
    Ok(Json(op).into_response())
}

#[derive(Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct ListQuery {
    /// Only operations in this status.
    #[param(value_type = Option<Status>)]
    status: Option<String>,
    /// Only operations of this upstream.
    upstream: Option<String>,
    /// Only operations whose terminal callback is in this state.
    #[param(value_type = Option<views::DeliveryFilter>)]
    delivery: Option<String>,
    /// Page size, 1..=1000 (default 100).
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<usize>,
    /// `next_cursor` of the previous page.
    cursor: Option<String>,
    /// With `upstream`: the operation registered under the upstream's own id.
    operation: Option<String>,
}

/// List operations (without their `upstream_body`), or look one up by the upstream's own id.
#[utoipa::path(get, path = "/v1/operations", tag = "operations", security(("bearer" = [])),
    params(ListQuery),
    responses(
        (status = 200, description = "a page, oldest first", body = OperationList),
        (status = 400, description = "`invalid_query`", body = ErrorBody),
        (status = 401, description = "`unauthorized`", body = ErrorBody),
        (status = 503, description = "`store_unavailable`", body = ErrorBody),
    ))]
async fn list(
    State(shim): State<Arc<Shim>>,
    q: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult {
    let Query(q) =
        q.map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "invalid_query", e.body_text()))?;
    let status = match q.status.as_deref() {
        None => None,
        Some(s) => Some(Status::parse(s).ok_or_else(|| {
            let all: Vec<&str> = Status::ALL.iter().map(|s| s.as_str()).collect();
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_query",
                format!("status {s:?} is not one of {}", all.join(", ")),
            )
        })?),
    };
    let delivery = parse_delivery(q.delivery.as_deref())?;
    let limit = match q.limit {
        None => DEFAULT_LIMIT,
        Some(n @ 1..=MAX_LIMIT) => n,
        Some(n) => {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_query",
                format!("limit {n} is out of range: write a number in 1..={MAX_LIMIT}"),
            ));
        }
    };
    if let Some(operation) = q.operation.as_deref().filter(|o| !o.is_empty()) {
        // At most one record per upstream, so they keep their `upstream_body`. Without
        // `upstream=`, every configured upstream is asked (one index read each).
        let upstreams: Vec<&str> = match q.upstream.as_deref().filter(|u| !u.is_empty()) {
            Some(u) => vec![u],
            None => shim.config.upstreams.keys().map(String::as_str).collect(),
        };
        let mut found = Vec::new();
        for upstream in upstreams {
            if let Some(op) = crate::state::lookup(&shim, upstream, operation)
                .await
                .map_err(ApiError::store)?
            {
                found.push(op);
            }
        }
        found.retain(|op| status.is_none_or(|s| s == op.status));
        found.retain(|op| delivery.is_none_or(|d| d == op.delivery.state));
        found.sort_by(|a, b| a.id.cmp(&b.id));
        let page = OperationList {
            operations: found,
            next_cursor: None,
        };
        return Ok(Json(page).into_response());
    }
    let filter = ListFilter {
        status,
        upstream: q.upstream.filter(|u| !u.is_empty()),
        delivery,
        limit,
        cursor: q
            .cursor
            .filter(|c| !c.is_empty())
            .map(OperationId::from_text),
    };
    let (mut ops, next) = shim.store.list(&filter).await.map_err(ApiError::store)?;
    // A page of up to 1000 records would carry up to 1000 kept bodies: the list leaves them
    // out (`GET /v1/operations/{id}` and the lookup by upstream id have them).
    for op in &mut ops {
        op.upstream_body = None;
    }
    let page = OperationList {
        operations: ops,
        next_cursor: next,
    };
    Ok(Json(page).into_response())
}

/// Stop tracking an operation (no callback); answers with the record as it was.
#[utoipa::path(delete, path = "/v1/operations/{id}", tag = "operations", security(("bearer" = [])),
    params(("id" = String, Path, description = "`op_<ULID>`")),
    responses(
        (status = 200, description = "the deleted record", body = Operation),
        (status = 400, description = "`invalid_path`", body = ErrorBody),
        (status = 401, description = "`unauthorized`", body = ErrorBody),
        (status = 404, description = "`operation_not_found`", body = ErrorBody),
        (status = 503, description = "`store_unavailable`", body = ErrorBody),
    ))]
async fn delete_one(
    State(shim): State<Arc<Shim>>,
    id: Result<Path<String>, PathRejection>,
) -> ApiResult {
    let id = OperationId::from_text(path_param(id)?);
    let op = shim
        .store
        .delete(&id)
        .await
        .map_err(ApiError::store)?
        .ok_or_else(|| ApiError::not_found(&id))?;
    shim.commit.flushed().await.map_err(ApiError::store)?;
    shim.polls.remove(&id);
    shim.reads.cancel(&id);
    shim.deliveries.remove(&DeliveryKey::terminal(id));
    if !op.status.is_terminal() {
        shim.metrics.active(&op.upstream).dec();
    }
    Ok(Json(op).into_response())
}

/// Send the terminal callback again (same `webhook-id`, same body).
#[utoipa::path(post, path = "/v1/operations/{id}/redeliver", tag = "operations", security(("bearer" = [])),
    params(("id" = String, Path, description = "`op_<ULID>`")),
    responses(
        (status = 202, description = "back in the outbox", body = Operation),
        (status = 400, description = "`invalid_path`", body = ErrorBody),
        (status = 401, description = "`unauthorized`", body = ErrorBody),
        (status = 404, description = "`operation_not_found`", body = ErrorBody),
        (status = 409, description = "`not_terminal`: not ended, or no callback URL", body = ErrorBody),
        (status = 503, description = "`store_unavailable`", body = ErrorBody),
    ))]
async fn redeliver(
    State(shim): State<Arc<Shim>>,
    id: Result<Path<String>, PathRejection>,
) -> ApiResult {
    let id = OperationId::from_text(path_param(id)?);
    let op = crate::state::redeliver(&shim, &id).await?;
    Ok((StatusCode::ACCEPTED, Json(op)).into_response())
}

/// An upstream's webhook: verified, recorded, acknowledged.
#[utoipa::path(post, path = "/webhooks/{upstream}", tag = "upstreams",
    params(("upstream" = String, Path, description = "a configured upstream's name")),
    request_body(content = Value, description = "the upstream's event, signed as its `webhook.scheme` says", content_type = "application/json"),
    responses(
        (status = 200, description = "`accepted`, `duplicate` or `ignored`", body = WebhookAnswer),
        (status = 202, description = "`kept`: not registered yet", body = WebhookAnswer),
        (status = 400, description = "`malformed_body`, `invalid_path`", body = ErrorBody),
        (status = 401, description = "a signature or token failure (`bad_signature`, `missing_signature`, `stale_timestamp`, …)", body = ErrorBody),
        (status = 404, description = "`unknown_upstream`, `webhooks_not_enabled`", body = ErrorBody),
        (status = 413, description = "`body_too_large`", body = ErrorBody),
        (status = 503, description = "`jwks_unavailable`, `store_unavailable`", body = ErrorBody),
    ))]
async fn webhook(
    State(shim): State<Arc<Shim>>,
    upstream: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult {
    let upstream = path_param(upstream)?;
    // Only configured upstream names become label values: anyone can POST to any name, and a
    // series per name would grow `/metrics` without bound.
    let label = if shim.config.upstreams.contains_key(&upstream) {
        upstream.as_str()
    } else {
        crate::metrics::UNKNOWN_UPSTREAM
    };
    let body = match body {
        Ok(b) => b,
        Err(r) => {
            shim.metrics.webhook(label, "too_large");
            return Err(r.into());
        }
    };
    let received = crate::ingest::receive(&shim, &upstream, &headers, &body).await;
    if let Err(IngestError::UnknownUpstream(_)) = &received {
        shim.metrics.webhook(label, "unknown_upstream");
    }
    let answer = |result, webhook_id| WebhookAnswer {
        result,
        webhook_id,
        id: None,
        status: None,
        reason: None,
    };
    let (status, value) = match received? {
        Ingested::Ignored { webhook_id, reason } => (
            StatusCode::OK,
            WebhookAnswer {
                reason: Some(reason.to_string()),
                ..answer(WebhookResult::Ignored, webhook_id.to_string())
            },
        ),
        Ingested::Duplicate { webhook_id } => (
            StatusCode::OK,
            answer(WebhookResult::Duplicate, webhook_id.to_string()),
        ),
        Ingested::Kept { webhook_id } => (
            StatusCode::ACCEPTED,
            answer(WebhookResult::Kept, webhook_id.to_string()),
        ),
        Ingested::Accepted {
            webhook_id,
            id,
            status,
        } => (
            StatusCode::OK,
            WebhookAnswer {
                id: Some(id),
                status,
                ..answer(WebhookResult::Accepted, webhook_id.to_string())
            },
        ),
    };
    Ok((status, Json(value)).into_response())
}

async fn proxy(
    State(shim): State<Arc<Shim>>,
    Path((upstream, _path)): Path<(String, String)>,
    req: Request,
) -> Response {
    match crate::proxy::handle(&shim, &upstream, req).await {
        Ok(r) => r,
        Err(e) => {
            let retry = e.retry_after();
            let mut resp = ApiError::from(e).into_response();
            if let Some(s) = retry {
                resp.headers_mut()
                    .insert(header::RETRY_AFTER, axum::http::HeaderValue::from(s));
            }
            resp
        }
    }
}

/// `GET /v1/upstreams`: per upstream its configured rate, the rate AIMD allows now, the
/// polling target and what hookshim has learned about its jobs' lengths.
#[utoipa::path(get, path = "/v1/upstreams", tag = "upstreams", security(("bearer" = [])),
    responses(
        (status = 200, description = "every configured upstream", body = Upstreams),
        (status = 401, description = "`unauthorized`", body = ErrorBody),
    ))]
async fn upstreams(State(shim): State<Arc<Shim>>) -> Response {
    let now = shim.clock.now();
    let mut out = std::collections::BTreeMap::new();
    for (name, up) in &shim.config.upstreams {
        let (priors, saved) = shim.learned.of(name);
        let priors = priors
            .iter()
            .map(|(key, p)| PriorView {
                key: key.clone(),
                completions: p.count,
                warm: p.warm(),
                p10_s: p.quantile(0.1),
                p50_s: p.quantile(0.5),
                p90_s: p.quantile(0.9),
            })
            .collect();
        out.insert(
            name.clone(),
            UpstreamView {
                rate_per_second: up.rate.per_second,
                burst: up.rate.burst,
                current_rate_per_second: shim.limiters.get(name).map(|l| l.current_rate(now)),
                target_delay_s: up.poll.target_delay.map(|d| d.as_secs_f64()),
                prior_key: up.prior_key.clone(),
                priors,
                requests_saved: saved,
            },
        );
    }
    Json(Upstreams { upstreams: out }).into_response()
}

#[utoipa::path(get, path = "/healthz", tag = "service",
    responses((status = 200, description = "the process is up", body = Health)))]
async fn healthz() -> Response {
    Json(Health {
        status: "ok".into(),
    })
    .into_response()
}

#[utoipa::path(get, path = "/readyz", tag = "service",
    responses(
        (status = 200, description = "ready", body = Readiness),
        (status = 503, description = "not ready (store or workers)", body = Readiness),
    ))]
async fn readyz(State(shim): State<Arc<Shim>>) -> Response {
    let workers = shim.workers_running.load(Ordering::SeqCst) && !shim.shutdown.is_cancelled();
    let store_error = match shim
        .store
        .get(&OperationId::from_text("op_readiness_probe"))
        .await
    {
        Err(e) => Some(e.to_string()),
        Ok(_) => shim.commit.last_error().map(|e| e.to_string()),
    };
    let ready = workers && store_error.is_none();
    // An upstream whose credential cannot be obtained is reported by name, with the error, but
    // does not make the service unready: registrations, webhooks, callbacks and every other
    // upstream still work, and its operations wait (transient) until the credential is back.
    let credentials = shim.credentials.errors();
    let body = Readiness {
        ready,
        store: store_error.is_none(),
        store_error,
        workers,
        polls_scheduled: shim.polls.len(),
        outbox: shim.deliveries.len(),
        credentials,
    };
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(body)).into_response()
}

/// Content negotiation: OpenMetrics when the scraper asks for it (Prometheus does, in its
/// `Accept`), the classic text format 0.0.4 otherwise.
#[utoipa::path(get, path = "/metrics", tag = "service",
    responses((status = 200, description = "Prometheus text 0.0.4, or OpenMetrics 1.0 when `Accept` asks for it",
        content((String = "text/plain"), (String = "application/openmetrics-text")))))]
async fn metrics(State(shim): State<Arc<Shim>>, headers: HeaderMap) -> Response {
    shim.metrics
        .deliveries("pending")
        .set(shim.deliveries.len() as i64);
    if let Ok(counts) = shim.store.active_by_status().await {
        // A store may leave out what it has none of: every configured upstream's series is
        // set, to 0 when absent.
        for upstream in shim.config.upstreams.keys() {
            for status in [Status::Pending, Status::Running] {
                if !counts.iter().any(|(u, s, _)| u == upstream && *s == status) {
                    shim.metrics
                        .operations_by_status(upstream, status.as_str(), 0);
                }
            }
        }
        for (upstream, status, n) in counts {
            shim.metrics
                .operations_by_status(&upstream, status.as_str(), n as i64);
        }
    }
    if shim.store.shares_work() {
        // This process's share of each budget changes with the replicas alive: show it now.
        let now = shim.clock.now();
        for (upstream, l) in &shim.limiters {
            shim.metrics.upstream_rate(upstream, l.current_rate(now));
        }
    }
    if let Ok(failed) = shim.store.failed_deliveries().await {
        shim.metrics.deliveries("failed").set(failed as i64);
    }
    if shim.metrics.store_size_due(shim.store.size_sample_every()) {
        if let Ok(bytes) = shim.store.size_on_disk().await {
            shim.metrics
                .store_bytes
                .set(bytes.min(i64::MAX as u64) as i64);
        }
    }
    let openmetrics = headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.contains("application/openmetrics-text"));
    let (content_type, body) = if openmetrics {
        (
            crate::metrics::OPENMETRICS_CONTENT_TYPE,
            shim.metrics.render(),
        )
    } else {
        (
            crate::metrics::TEXT_CONTENT_TYPE,
            shim.metrics.render_text(),
        )
    };
    ([(header::CONTENT_TYPE, content_type)], body).into_response()
}
