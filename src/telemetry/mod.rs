//! OpenTelemetry traces of operations (`[trace]`, off by default), exported over OTLP/HTTP.
//!
//! An operation lives for hours across many tasks (registration, each poll, a webhook, each
//! callback attempt), so it is not one span held open. Each stage is its own `tracing` span —
//! `register`, `poll`, `webhook`, `deliver` — with `op` (the operation id), `upstream` and what
//! came of it, bridged to OpenTelemetry by `tracing-opentelemetry`. What makes them one trace:
//! - **The trace id is the operation id.** `op_<ULID>`: the ULID's 128 bits are the trace id
//!   (`op_01JB…` → `0192…`), so every stage of an operation, in any task, after any restart,
//!   lands in the same trace without anything kept on the record, and an operator can go from
//!   an operation id to its trace. Sampling (`sample_ratio`) is decided from the trace id, so
//!   an operation is traced whole or not at all.
//! - **One root per operation.** Every stage span is a child of the span `operation`, whose
//!   span id is derived from the operation id too ([`root_span_id`]). That span is sent once,
//!   at the terminal transition (which happens exactly once, invariant 2): it starts at
//!   registration and ends when the end was seen, with the final status. Until then a trace
//!   backend shows the stages under a root not received yet.
//!
//! The pipeline ([`export`]) runs on the tokio runtime, off the hot path: a span that ends is
//! put in a bounded queue (a full queue drops it and counts it), a task sends batches, and
//! shutdown sends what is queued. With `[trace]` off nothing is installed: the stage spans are
//! plain `tracing` spans that no layer records, and no request is made.

pub mod config;
pub mod export;

use std::cell::Cell;

use opentelemetry::trace::{
    SpanContext, SpanId, SpanKind, TraceContextExt, TraceFlags, TraceId, TraceState,
};
use opentelemetry::{Context, KeyValue};
use sha2::{Digest, Sha256};
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::ids::OperationId;
use crate::operation::Operation;

pub use config::{RawTrace, TraceConfig};

/// The `tracing` target of the stage spans: only spans of this target are sent as traces, and
/// the log output leaves them out (its lines carry `op` themselves).
pub const TARGET: &str = "hookshim::trace";

/// The trace id of an operation: the ULID of `op_<ULID>`; for an id of another form (none is
/// made, but the type admits any text), the first 16 bytes of its SHA-256.
pub fn trace_id(id: &OperationId) -> TraceId {
    let ulid = id
        .as_str()
        .strip_prefix("op_")
        .and_then(|u| ulid::Ulid::from_string(u).ok())
        .map(u128::from)
        .filter(|v| *v != 0);
    match ulid {
        Some(v) => TraceId::from(v),
        None => {
            let d = Sha256::digest(id.as_bytes());
            let mut b = [0u8; 16];
            b.copy_from_slice(&d[..16]);
            b[0] |= 1; // never the invalid all-zero id
            TraceId::from_bytes(b)
        }
    }
}

/// The span id of an operation's root span `operation`: 8 bytes of the SHA-256 of the id.
pub fn root_span_id(id: &OperationId) -> SpanId {
    let d = Sha256::digest([b"hookshim operation span ", id.as_bytes()].concat());
    let mut b = [0u8; 8];
    b.copy_from_slice(&d[..8]);
    b[0] |= 1;
    SpanId::from_bytes(b)
}

/// The context every stage span of `id` is a child of: its root span, remote (sent apart).
pub fn operation_context(id: &OperationId) -> Context {
    Context::new().with_remote_span_context(SpanContext::new(
        trace_id(id),
        root_span_id(id),
        TraceFlags::SAMPLED,
        true,
        TraceState::default(),
    ))
}

/// Make `span` (a stage span of [`TARGET`] with an `op` field) part of operation `id`'s
/// trace. Call it before the span closes; it may be called once the id is known (a webhook
/// learns it from the body). Without the trace layer installed it only records `op`.
pub fn attach(span: &tracing::Span, id: &OperationId) {
    span.record("op", id.as_str());
    if span.is_disabled() {
        return;
    }
    // An error means no trace layer (traces off) or a parent set already: nothing to do.
    let _ = span.set_parent(operation_context(id));
}

thread_local! {
    /// The ids the next span built on this thread gets (see [`export::OperationIds`]).
    static FORCED_IDS: Cell<Option<(TraceId, SpanId)>> = const { Cell::new(None) };
}

/// Send the root span `operation` of an operation that has just ended: from `created_at` to
/// `completed_at`, with its final status. Called once, at the terminal transition.
pub fn operation_ended(op: &Operation) {
    use opentelemetry::trace::{Span as _, SpanBuilder, Status, Tracer as _};
    let Some(tracer) = export::tracer() else {
        return;
    };
    let end = op.completed_at.unwrap_or(op.updated_at);
    let mut attributes = vec![
        KeyValue::new("op", op.id.to_string()),
        KeyValue::new("upstream", op.upstream.clone()),
        KeyValue::new("operation", op.operation.clone()),
        KeyValue::new("status", op.status.as_str()),
        KeyValue::new("polls", i64::from(op.polls)),
    ];
    if let Some(via) = op.detected_via {
        attributes.push(KeyValue::new("detected_via", via.as_str()));
    }
    let builder = SpanBuilder::from_name("operation")
        .with_kind(SpanKind::Internal)
        .with_start_time(op.created_at.to_system())
        .with_attributes(attributes);
    // The tracer takes a root span's ids from the id generator, in this call, on this thread.
    FORCED_IDS.with(|f| f.set(Some((trace_id(&op.id), root_span_id(&op.id)))));
    let mut span = tracer.build_with_context(builder, &Context::new());
    FORCED_IDS.with(|f| f.set(None));
    if op.status != crate::operation::Status::Succeeded {
        span.set_status(Status::error(format!("operation {}", op.status.as_str())));
    }
    span.end_with_timestamp(end.to_system());
}

#[cfg(test)]
mod tests;
