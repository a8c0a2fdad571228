//! The trace pipeline: the SDK's tracer provider (resource, sampler, ids), a span processor
//! that only queues, a tokio task that sends batches over OTLP/HTTP (protobuf, through
//! `opentelemetry-otlp` on reqwest), and the `tracing` layer that turns stage spans into
//! OpenTelemetry spans.
//!
//! Off the hot path: ending a span is a `try_send` into a bounded queue (`queue_size`); a full
//! queue drops the span and counts it (`hookshim_trace_spans_total{result="dropped"}`). The
//! sender task exports when `batch_size` spans are waiting or every `interval`, each export
//! bounded by `timeout`; a failed one loses its spans (counted as `failed`), logs once until
//! the collector answers again, and never holds up an operation. [`Pipeline::shutdown`] sends
//! what is queued, within `timeout`.

use std::collections::HashMap;
use std::sync::OnceLock;
use std::time::Duration;

use opentelemetry::trace::{
    Link, SpanId, SpanKind, TraceContextExt, TraceId, TraceState, TracerProvider as _,
};
use opentelemetry::{Context, KeyValue};
use opentelemetry_otlp::{Protocol, WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{
    IdGenerator, RandomIdGenerator, Sampler, SamplingDecision, SamplingResult, SdkTracer,
    SdkTracerProvider, ShouldSample, Span, SpanData, SpanExporter as _, SpanProcessor,
};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing_subscriber::Layer;
use tracing_subscriber::registry::LookupSpan;

use super::{FORCED_IDS, TARGET, TraceConfig};
use crate::metrics::trace_spans;

/// The tracer of the installed pipeline, for spans built directly (the root `operation`).
static TRACER: OnceLock<SdkTracer> = OnceLock::new();

pub(super) fn tracer() -> Option<&'static SdkTracer> {
    TRACER.get()
}

/// Random ids, except for a span built while [`FORCED_IDS`] is set (the root span of an
/// operation, whose ids come from the operation id).
#[derive(Debug, Default)]
pub struct OperationIds(RandomIdGenerator);

impl IdGenerator for OperationIds {
    fn new_trace_id(&self) -> TraceId {
        match FORCED_IDS.with(|f| f.get()) {
            Some((t, _)) => t,
            None => self.0.new_trace_id(),
        }
    }
    fn new_span_id(&self) -> SpanId {
        match FORCED_IDS.with(|f| f.get()) {
            Some((_, s)) => s,
            None => self.0.new_span_id(),
        }
    }
}

/// Only operations are traced: a span that is neither a child of an operation's root (every
/// stage span once [`super::attach`]ed) nor that root is dropped — a refused registration, a
/// duplicate or foreign webhook. The rest is sampled by trace id, so per operation.
#[derive(Clone, Debug)]
struct OperationsOnly(Sampler);

impl ShouldSample for OperationsOnly {
    fn should_sample(
        &self,
        parent: Option<&Context>,
        trace_id: TraceId,
        name: &str,
        kind: &SpanKind,
        attributes: &[KeyValue],
        links: &[Link],
    ) -> SamplingResult {
        let in_operation = parent.is_some_and(|cx| cx.span().span_context().is_valid());
        if !in_operation && name != "operation" {
            return SamplingResult {
                decision: SamplingDecision::Drop,
                attributes: Vec::new(),
                trace_state: TraceState::default(),
            };
        }
        self.0
            .should_sample(parent, trace_id, name, kind, attributes, links)
    }
}

/// A span processor that only hands finished spans to the sender task.
#[derive(Debug)]
struct Enqueue {
    queue: mpsc::Sender<SpanData>,
}

impl SpanProcessor for Enqueue {
    fn on_start(&self, _span: &mut Span, _cx: &Context) {}

    fn on_end(&self, span: SpanData) {
        if !span.span_context.is_sampled() {
            return;
        }
        if self.queue.try_send(span).is_err() {
            trace_spans("dropped", 1);
        }
    }

    fn force_flush(&self) -> OTelSdkResult {
        Ok(())
    }

    fn shutdown_with_timeout(&self, _timeout: Duration) -> OTelSdkResult {
        Ok(())
    }
}

/// The running pipeline: keep it for the life of the process, then [`Pipeline::shutdown`].
pub struct Pipeline {
    provider: SdkTracerProvider,
    stop: CancellationToken,
    sender: tokio::task::JoinHandle<()>,
}

/// Build the pipeline on the current tokio runtime. Errors name the key or variable at fault.
pub fn install(cfg: &TraceConfig) -> Result<Pipeline, String> {
    let http = reqwest::Client::builder()
        .no_proxy()
        .timeout(cfg.timeout)
        .build()
        .map_err(|e| format!("trace: cannot build the HTTP client: {e}"))?;
    let headers: HashMap<String, String> = cfg.headers.iter().cloned().collect();
    // OTEL_EXPORTER_OTLP_HEADERS / OTEL_EXPORTER_OTLP_TRACES_HEADERS, if set, are added by
    // the exporter itself; endpoint, protocol and timeout given here win over the environment.
    let mut exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_http_client(http)
        .with_protocol(Protocol::HttpBinary)
        .with_endpoint(cfg.endpoint.clone())
        .with_timeout(cfg.timeout)
        .with_headers(headers)
        .build()
        .map_err(|e| format!("trace: cannot build the OTLP exporter: {e}"))?;
    let resource = Resource::builder()
        .with_service_name(cfg.service_name.clone())
        .with_attribute(KeyValue::new("service.version", env!("CARGO_PKG_VERSION")))
        .build();
    exporter.set_resource(&resource);
    let (queue, spans) = mpsc::channel(cfg.queue_size);
    let provider = SdkTracerProvider::builder()
        .with_resource(resource)
        .with_sampler(OperationsOnly(Sampler::TraceIdRatioBased(cfg.sample_ratio)))
        .with_id_generator(OperationIds::default())
        .with_span_processor(Enqueue { queue })
        .build();
    let _ = TRACER.set(provider.tracer("hookshim"));
    let stop = CancellationToken::new();
    let sender = tokio::spawn(send_batches(
        exporter,
        spans,
        Batching {
            endpoint: cfg.endpoint.clone(),
            batch_size: cfg.batch_size,
            interval: cfg.interval,
            timeout: cfg.timeout,
        },
        stop.clone(),
    ));
    Ok(Pipeline {
        provider,
        stop,
        sender,
    })
}

impl Pipeline {
    /// The `tracing` layer that records stage spans (target [`TARGET`]) and the events inside
    /// them as OpenTelemetry spans and span events.
    pub fn layer<S>(&self) -> impl Layer<S> + use<S>
    where
        S: tracing::Subscriber + for<'a> LookupSpan<'a>,
    {
        let filter = tracing_subscriber::filter::filter_fn(|m| {
            if m.is_span() {
                m.target() == TARGET
            } else {
                m.target().starts_with("hookshim") && *m.level() <= tracing::Level::INFO
            }
        });
        tracing_opentelemetry::layer()
            .with_tracer(self.provider.tracer("hookshim"))
            // Spans are built when they close, so a webhook span can join its operation's
            // trace once the body names it; nothing here reads the active OpenTelemetry context.
            .with_context_activation(false)
            .with_threads(false)
            .with_tracked_inactivity(false)
            .with_filter(filter)
    }

    /// Send what is queued (within the export timeout) and stop the sender task.
    pub async fn shutdown(self) {
        self.stop.cancel();
        let _ = self.sender.await;
        let _ = self.provider.shutdown();
    }
}

struct Batching {
    endpoint: String,
    batch_size: usize,
    interval: Duration,
    timeout: Duration,
}

/// The sender task: a batch goes out when full or every `interval`; on stop, what is queued.
async fn send_batches(
    exporter: opentelemetry_otlp::SpanExporter,
    mut spans: mpsc::Receiver<SpanData>,
    b: Batching,
    stop: CancellationToken,
) {
    let mut batch: Vec<SpanData> = Vec::with_capacity(b.batch_size);
    let mut tick = tokio::time::interval(b.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut failing = false;
    loop {
        tokio::select! {
            got = spans.recv() => match got {
                Some(span) => {
                    batch.push(span);
                    if batch.len() >= b.batch_size {
                        export(&exporter, &mut batch, &b, &mut failing).await;
                    }
                }
                None => break,
            },
            _ = tick.tick() => {
                if !batch.is_empty() {
                    export(&exporter, &mut batch, &b, &mut failing).await;
                }
            }
            _ = stop.cancelled() => break,
        }
    }
    // Shutdown: what is queued now, in batches, all within one export timeout.
    let drain = async {
        while let Ok(span) = spans.try_recv() {
            batch.push(span);
            if batch.len() >= b.batch_size {
                export(&exporter, &mut batch, &b, &mut failing).await;
            }
        }
        if !batch.is_empty() {
            export(&exporter, &mut batch, &b, &mut failing).await;
        }
    };
    if tokio::time::timeout(b.timeout, drain).await.is_err() {
        tracing::warn!(endpoint = %b.endpoint, "trace export at shutdown did not finish in time; spans still queued are lost");
    }
}

async fn export(
    exporter: &opentelemetry_otlp::SpanExporter,
    batch: &mut Vec<SpanData>,
    b: &Batching,
    failing: &mut bool,
) {
    let spans = std::mem::take(batch);
    let n = spans.len() as u64;
    let result = match tokio::time::timeout(b.timeout, exporter.export(spans)).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("no answer within {:?}", b.timeout)),
    };
    match result {
        Ok(()) => {
            trace_spans("exported", n);
            if std::mem::take(failing) {
                tracing::info!(endpoint = %b.endpoint, "trace export works again");
            }
        }
        Err(e) => {
            trace_spans("failed", n);
            if !std::mem::replace(failing, true) {
                tracing::warn!(endpoint = %b.endpoint, error = %e, spans = n, "trace export failed; spans are lost until the collector answers (hookshim_trace_spans_total{{result=\"failed\"}})");
            } else {
                tracing::debug!(endpoint = %b.endpoint, error = %e, spans = n, "trace export failed");
            }
        }
    }
}
