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

use axum::http::HeaderMap;
use serde_json::Value;

use crate::ids::OperationId;
use crate::operation::{EventOutcome, Status};
use crate::state::Shim;
use crate::store::{StoreError, WebhookRecord};
use crate::telemetry;

pub use verify::VerifyError;

/// Why an inbound webhook was not taken. Nothing was recorded.
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    #[error("no upstream named {0:?} in the config")]
    UnknownUpstream(String),
    #[error("upstream {0:?} has no [upstreams.{0}.webhook] section")]
    WebhooksNotEnabled(String),
    #[error("webhook rejected: {0}")]
    Rejected(VerifyError),
    #[error("{0}")]
    Malformed(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What was done with a webhook that was taken.
#[derive(Debug)]
pub enum Ingested {
    /// An event of another kind of job: acknowledged, nothing recorded.
    Ignored { webhook_id: String, reason: String },
    /// This webhook id was seen before.
    Duplicate { webhook_id: String },
    /// For an operation not registered yet: kept, applied at registration.
    Kept { webhook_id: String },
    /// Applied to a tracked operation; `status` when its event ended the operation.
    Accepted {
        webhook_id: String,
        id: OperationId,
        status: Option<Status>,
    },
}

/// Handle one inbound webhook body. The caller has already enforced `max_body`. Traced as the
/// span `webhook` of the operation it names, once that is known (an unattributed webhook is
/// not traced).
pub async fn receive(
    shim: &Shim,
    upstream: &str,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<Ingested, IngestError> {
    use tracing::Instrument;
    use tracing::field::Empty;
    let span = tracing::info_span!(target: telemetry::TARGET, "webhook", op = Empty, upstream,
        webhook_id = Empty, event = Empty, result = Empty, status = Empty);
    let got = receive_in(shim, upstream, headers, body, &span)
        .instrument(span.clone())
        .await;
    match &got {
        Ok(Ingested::Accepted {
            webhook_id,
            id,
            status,
        }) => {
            telemetry::attach(&span, id);
            span.record("webhook_id", webhook_id.as_str());
            span.record(
                "result",
                if status.is_some() {
                    "finished"
                } else {
                    "accepted"
                },
            );
            if let Some(s) = status {
                span.record("status", s.as_str());
            }
        }
        Ok(_) => {}
        Err(_) => {
            span.record("result", "error");
        }
    }
    got
}

async fn receive_in(
    shim: &Shim,
    upstream: &str,
    headers: &HeaderMap,
    body: &[u8],
    span: &tracing::Span,
) -> Result<Ingested, IngestError> {
    let up = shim
        .config
        .upstreams
        .get(upstream)
        .ok_or_else(|| IngestError::UnknownUpstream(upstream.to_string()))?;
    let wh = up
        .webhook
        .as_ref()
        .ok_or_else(|| IngestError::WebhooksNotEnabled(upstream.to_string()))?;
    let now = shim.clock.now();
    let webhook_id = verify::verify(wh, &shim.jwks, headers, body, now)
        .await
        .map_err(|e| {
            shim.metrics.webhook(upstream, e.code_and_label().1);
            IngestError::Rejected(e)
        })?;
    let malformed = |msg: String| {
        shim.metrics.webhook(upstream, "malformed");
        IngestError::Malformed(msg)
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
        return Ok(Ingested::Ignored {
            webhook_id,
            reason: format!(
                "upstream {upstream:?} (preset {}) does not track {t:?} events",
                up.preset.name()
            ),
        });
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
    // The id may name the operation in another form than the app registered it in (Gemini:
    // with or without `batches/`, `operations/`, a model prefix): take the registered form,
    // else the canonical one (where an early event is kept).
    let ids = up.preset.webhook_ids(&operation);
    let operation = match shim
        .store
        .find_operation(upstream, &ids.candidates, ids.suffix.as_deref())
        .await?
    {
        Some(registered) => registered,
        None => ids.candidates[0].clone(),
    };
    if let Some(t) = event_type {
        span.record("event", t);
    }
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
        .await?;
    shim.commit.flushed().await?;
    Ok(match record {
        WebhookRecord::Duplicate => {
            shim.metrics.webhook(upstream, "duplicate");
            Ingested::Duplicate { webhook_id }
        }
        WebhookRecord::Kept => {
            shim.metrics.webhook(upstream, "kept");
            tracing::info!(upstream, operation = %operation, "webhook for an operation not registered yet; kept for 24h");
            Ingested::Kept { webhook_id }
        }
        WebhookRecord::Finished(op) => {
            shim.metrics.webhook(upstream, "accepted");
            shim.on_terminal(&op).await;
            Ingested::Accepted {
                webhook_id,
                id: op.id.clone(),
                status: Some(op.status),
            }
        }
        WebhookRecord::Applied { id, terminal } => {
            shim.metrics.webhook(upstream, "accepted");
            if !terminal {
                shim.polls.schedule(&id, now);
            }
            Ingested::Accepted {
                webhook_id,
                id,
                status: None,
            }
        }
    })
}
