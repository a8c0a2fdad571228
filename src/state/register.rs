//! Registration, as a domain function: check the request against the config, build the new
//! record ([`Operation::new`]), store it (idempotent per `(upstream, operation)`; a webhook kept
//! for it is applied in the same write), schedule its first poll, flush, and hand a kept
//! webhook's outcome on. The API parses and maps; the proxy (later) registers the same way.

use std::time::Duration;

use serde_json::Value;

use super::{EARLY_WEBHOOK_WINDOW, Shim};
use crate::clock::Timestamp;
use crate::ids::OperationId;
use crate::metrics::UpstreamLabel;
use crate::operation::{NewOperation, Operation, UpstreamBody};
use crate::schedule::first_poll_with;
use crate::store::{Registered, StoreError};
use crate::telemetry;
use crate::upstream::prepare_operation;

/// Largest `metadata` kept with an operation, in bytes of JSON.
pub const MAX_METADATA: usize = 16 * 1024;

/// The furthest deadline a registration may ask for.
pub const MAX_DEADLINE: Duration = Duration::from_secs(366 * 86_400);

/// What the app asks to track.
#[derive(Debug, Clone, Default)]
pub struct Registration {
    pub upstream: String,
    /// The upstream's id of the operation (or, for `azure-async`, its status URL).
    pub operation: String,
    pub callback_url: Option<String>,
    pub metadata: Option<Value>,
    /// A duration such as `"2h"` or an RFC 3339 time such as `"2026-12-01T18:00:00Z"`; the
    /// upstream's `poll.deadline` when absent.
    pub deadline: Option<String>,
    /// The proxy's create response when it is the job resource: the first kept status body.
    pub upstream_body: Option<UpstreamBody>,
    /// The proxy's keyed hash of the credential the job was created with.
    pub proxy_credential: Option<String>,
}

/// Why a registration was refused. Each says what to change.
#[derive(Debug, thiserror::Error)]
pub enum RegisterError {
    #[error("no upstream named {0:?} in the config")]
    UnknownUpstream(String),
    #[error("{0}")]
    InvalidOperation(String),
    #[error("callback_url: {0}")]
    CallbackNotAllowed(String),
    #[error("metadata is {0} bytes; at most {MAX_METADATA} are kept")]
    MetadataTooLarge(usize),
    #[error("{0}")]
    InvalidDeadline(String),
    /// The same `(upstream, operation)` was registered with another `callback_url`.
    #[error("{0}")]
    Conflict(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl RegisterError {
    /// The error's code, as the API answers it and the proxy's `Hookshim-Error` names it.
    pub fn code(&self) -> &'static str {
        match self {
            RegisterError::UnknownUpstream(_) => "unknown_upstream",
            RegisterError::InvalidOperation(_) => "invalid_operation",
            RegisterError::CallbackNotAllowed(_) => "callback_not_allowed",
            RegisterError::MetadataTooLarge(_) => "metadata_too_large",
            RegisterError::InvalidDeadline(_) => "invalid_deadline",
            RegisterError::Conflict(_) => "conflict",
            RegisterError::Store(_) => "store_unavailable",
        }
    }
}

/// Register an operation: durable before it returns (invariant 1). `Created` for a new record,
/// `Existing` when the same `(upstream, operation)` was registered before. Traced as the span
/// `register` of the operation (a refused registration: a trace of its own).
pub async fn register(shim: &Shim, req: Registration) -> Result<Registered, RegisterError> {
    use tracing::Instrument;
    use tracing::field::Empty;
    let span = tracing::info_span!(target: telemetry::TARGET, "register", op = Empty,
        upstream = %req.upstream, operation = %req.operation, outcome = Empty,
        otel.status_code = Empty);
    let result = register_in(shim, req, &span).instrument(span.clone()).await;
    match &result {
        Ok(Registered::Created { .. }) => {
            span.record("outcome", "created");
        }
        Ok(Registered::Existing(existing)) => {
            telemetry::attach(&span, &existing.id);
            span.record("outcome", "existing");
        }
        Err(e) => {
            span.record("outcome", e.code());
            span.record("otel.status_code", "ERROR");
        }
    }
    result
}

async fn register_in(
    shim: &Shim,
    req: Registration,
    span: &tracing::Span,
) -> Result<Registered, RegisterError> {
    let up = shim
        .config
        .upstreams
        .get(&req.upstream)
        .ok_or_else(|| RegisterError::UnknownUpstream(req.upstream.clone()))?;
    let operation =
        prepare_operation(up, &req.operation).map_err(RegisterError::InvalidOperation)?;
    let callback_url = match &req.callback_url {
        Some(u) => Some(
            shim.check_callback_url(u)
                .map_err(RegisterError::CallbackNotAllowed)?
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
            return Err(RegisterError::MetadataTooLarge(size));
        }
    }
    let now = shim.clock.now();
    let deadline = match &req.deadline {
        None => up.poll.deadline,
        Some(d) => parse_deadline(d, now)?,
    };

    let deadline_at = now.plus(deadline);
    let sample = rand::random_range(-1.0..=1.0);
    let prior = shim.learned.prior(
        &req.upstream,
        up.prior_key.as_deref(),
        req.metadata.as_ref(),
    );
    let first = first_poll_with(&up.rules(), prior.as_ref(), now, deadline_at, sample);
    let first = match shim.limiters.get(&req.upstream) {
        Some(l) => l.spread_first_poll(first, now).min(deadline_at),
        None => first,
    };
    let mut op = Operation::new(NewOperation {
        id: OperationId::generate(),
        upstream: req.upstream,
        operation,
        metadata: req.metadata,
        callback_url,
        now,
        first_poll_at: first,
        deadline_at,
        callback_events: up.callback_events.clone(),
    });
    telemetry::attach(span, &op.id);
    // Kept in the same write as the record: a cached read survives a crash right after.
    if let Some(body) = &req.upstream_body {
        op.keep_body(body, shim.config.store.max_upstream_body, now);
    }
    op.proxy_credential = req.proxy_credential;
    let explicit_url = req.callback_url.is_some().then(|| op.callback_url.clone());
    let registered = shim.store.register(op, EARLY_WEBHOOK_WINDOW).await?;
    if let (Registered::Existing(existing), Some(url)) = (&registered, explicit_url) {
        if existing.callback_url != url {
            telemetry::attach(span, &existing.id);
            return Err(RegisterError::Conflict(format!(
                "{} {:?} is already registered (id {}) with callback_url {}; register it with \
                 the same callback_url, or DELETE /v1/operations/{} first",
                existing.upstream,
                existing.operation,
                existing.id,
                existing.callback_url.as_deref().unwrap_or("none"),
                existing.id
            )));
        }
    }
    if let Registered::Created { op, .. } = &registered {
        // Schedule even if the flush below fails: the record is in the store either way.
        shim.metrics
            .registered
            .get_or_create(&UpstreamLabel {
                upstream: op.upstream.clone(),
            })
            .inc();
        shim.metrics.active(&op.upstream).inc();
        if !op.status.is_terminal() {
            shim.polls.schedule(&op.id, op.next_poll_at.unwrap_or(now));
        }
    }
    shim.commit.flushed().await?;
    if let Registered::Created { op, early_webhook } = &registered {
        if early_webhook.is_some() {
            tracing::info!(op = %op.id, "applied a webhook that arrived before registration");
        }
        if op.status.is_terminal() {
            // The kept webhook's event decided the outcome: the callback goes out now.
            shim.on_terminal(op).await;
        }
    }
    Ok(registered)
}

/// A duration (`"2h"`) from now, or an RFC 3339 time (`"2026-12-01T18:00:00Z"`).
pub(super) fn parse_deadline(d: &str, now: Timestamp) -> Result<Duration, RegisterError> {
    let parsed = match humantime::parse_duration(d) {
        Ok(p) => p,
        Err(e) => match Timestamp::parse_rfc3339(d) {
            Ok(at) => {
                if at <= now {
                    return Err(RegisterError::InvalidDeadline(format!(
                        "deadline {d:?} is in the past (now is {}); write a later time or a \
                         duration such as \"2h\"",
                        now.rfc3339()
                    )));
                }
                now.until(at)
            }
            Err(_) => {
                return Err(RegisterError::InvalidDeadline(format!(
                    "deadline {d:?}: {e}; write a duration such as \"2h\" or an RFC 3339 time \
                     such as \"2026-12-01T18:00:00Z\""
                )));
            }
        },
    };
    if parsed.is_zero() {
        return Err(RegisterError::InvalidDeadline(
            "deadline must be more than 0s".into(),
        ));
    }
    // At most 366 days: no upstream job runs longer, and a time past year 9999 cannot even be
    // written.
    if parsed > MAX_DEADLINE {
        return Err(RegisterError::InvalidDeadline(format!(
            "deadline {d:?} is too far away; at most 366 days (\"366d\") is accepted"
        )));
    }
    Ok(parsed)
}
