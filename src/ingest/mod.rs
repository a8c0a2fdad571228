//! Inbound upstream webhooks: verify the signature per the upstream's scheme ([`verify`]), find which
//! operation it is about, record it durably (de-duplicated by webhook id), and only then answer.
//!
//! After verification: an event of another kind of job (an OpenAI `response.*` event at the
//! batch upstream) is acknowledged and ignored. An event type mapped in `webhook.events` ends the
//! operation by itself, in the same write, with the event's `data` as its result (or error).
//! Any other webhook is thin: it makes the operation due for an immediate status read, and
//! that read decides.

pub mod jwks;
pub mod verify;

use axum::http::{HeaderMap, StatusCode};
use serde_json::{Value, json};

use crate::api::ApiError;
use crate::operation::EventOutcome;
use crate::service::Shim;
use crate::store::WebhookRecord;

/// Handle one inbound webhook body. The caller has already enforced `max_body`.
pub async fn receive(
    shim: &Shim,
    upstream: &str,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<(StatusCode, Value), ApiError> {
    let up = shim.config.upstreams.get(upstream).ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "unknown_upstream",
            format!("no upstream named {upstream:?} in the config"),
        )
    })?;
    let wh = up.webhook.as_ref().ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "webhooks_not_enabled",
            format!("upstream {upstream:?} has no [upstreams.{upstream}.webhook] section"),
        )
    })?;
    let now = shim.clock.now();
    let webhook_id = verify::verify(wh, &shim.jwks, headers, body, now)
        .await
        .map_err(|e| e.reject(&shim.metrics, upstream))?;
    let malformed = |msg: String| {
        shim.metrics.webhook(upstream, "malformed");
        ApiError::new(StatusCode::BAD_REQUEST, "malformed_body", msg)
    };
    let parsed: Value = serde_json::from_slice(body)
        .map_err(|e| malformed(format!("webhook body is not valid JSON: {e}")))?;
    let event_type = parsed.get("type").and_then(Value::as_str);
    if let Some(t) = event_type.filter(|t| up.preset.foreign_event(t)) {
        shim.metrics.webhook(upstream, "ignored");
        tracing::debug!(
            upstream,
            event = t,
            "webhook event of another kind of job; ignored"
        );
        return Ok((
            StatusCode::OK,
            json!({"result": "ignored", "webhook_id": webhook_id,
                   "reason": format!("upstream {upstream:?} (preset {}) does not track {t:?} events", up.preset.name())}),
        ));
    }
    let operation = match parsed.pointer(&wh.operation_field) {
        Some(Value::String(s)) if !s.is_empty() => s.clone(),
        Some(Value::Number(n)) => n.to_string(),
        _ => {
            return Err(malformed(format!(
                "webhook body has no operation id at {} (webhook.operation_field)",
                wh.operation_field
            )));
        }
    };
    let operation = up.preset.canonical_operation(&operation);
    let outcome = event_type.and_then(|t| {
        wh.events.get(t).map(|status| EventOutcome {
            status: *status,
            event: t.to_string(),
            data: parsed.get("data").filter(|d| !d.is_null()).cloned(),
        })
    });

    let record = shim
        .store
        .record_webhook(upstream, &webhook_id, &operation, outcome.as_ref(), now)
        .map_err(ApiError::store)?;
    shim.commit.flushed().await.map_err(ApiError::store)?;
    let (status, body) = match &record {
        WebhookRecord::Duplicate => {
            shim.metrics.webhook(upstream, "duplicate");
            (
                StatusCode::OK,
                json!({"result": "duplicate", "webhook_id": webhook_id}),
            )
        }
        WebhookRecord::Kept => {
            shim.metrics.webhook(upstream, "kept");
            tracing::info!(upstream, operation = %operation, "webhook for an operation not registered yet; kept for 24h");
            (
                StatusCode::ACCEPTED,
                json!({"result": "kept", "webhook_id": webhook_id}),
            )
        }
        WebhookRecord::Finished(op) => {
            shim.metrics.webhook(upstream, "accepted");
            shim.on_terminal(op).await;
            (
                StatusCode::OK,
                json!({"result": "accepted", "webhook_id": webhook_id, "id": op.id, "status": op.status}),
            )
        }
        WebhookRecord::Applied { id, terminal } => {
            shim.metrics.webhook(upstream, "accepted");
            if !terminal {
                shim.polls.schedule(id, now);
            }
            (
                StatusCode::OK,
                json!({"result": "accepted", "webhook_id": webhook_id, "id": id}),
            )
        }
    };
    Ok((status, body))
}
