//! `[trace]`: OpenTelemetry traces over OTLP/HTTP (protobuf), off unless `enabled = true`.
//!
//! Where a value comes from, first match wins: the key in the file, then the standard
//! OpenTelemetry environment variable, then the default. So `[trace] enabled = true` alone
//! follows `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` (used as it is) or `OTEL_EXPORTER_OTLP_ENDPOINT`
//! (with `/v1/traces` appended) and `OTEL_SERVICE_NAME`, as the OpenTelemetry SDKs do
//! (<https://opentelemetry.io/docs/specs/otel/protocol/exporter/>), and a key written in the
//! file is never overridden by them.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;

use crate::values::{Dur, EnvLookup, expand_env};

/// The collector's default OTLP/HTTP traces endpoint (the specification's default).
pub const DEFAULT_ENDPOINT: &str = "http://localhost:4318/v1/traces";
pub const DEFAULT_SERVICE_NAME: &str = "hookshim";

/// `[trace]` as written.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawTrace {
    #[serde(default)]
    enabled: bool,
    endpoint: Option<String>,
    service_name: Option<String>,
    sample_ratio: Option<f64>,
    /// Extra request headers (e.g. `authorization = "Bearer ${OTLP_TOKEN}"`), `${VAR}` expanded.
    #[serde(default)]
    headers: BTreeMap<String, String>,
    timeout: Option<Dur>,
    interval: Option<Dur>,
    batch_size: Option<usize>,
    queue_size: Option<usize>,
}

/// `[trace]` resolved; `None` in [`crate::config::Config`] when traces are off.
#[derive(Clone, Debug)]
pub struct TraceConfig {
    /// The full OTLP/HTTP URL spans are POSTed to (`…/v1/traces`).
    pub endpoint: String,
    /// Where `endpoint` came from: `trace.endpoint`, an environment variable, or `default`.
    pub endpoint_from: &'static str,
    pub service_name: String,
    pub service_name_from: &'static str,
    /// Fraction of operations traced (0–1), decided per operation from its trace id.
    pub sample_ratio: f64,
    /// Header name → value, expanded (may hold a credential: never printed).
    pub headers: Vec<(String, String)>,
    /// The templates as written, for `check`.
    header_templates: BTreeMap<String, String>,
    /// One export request, retries included.
    pub timeout: Duration,
    /// How long finished spans wait for a fuller batch before they are sent.
    pub interval: Duration,
    /// Most spans in one export request.
    pub batch_size: usize,
    /// Most finished spans waiting to be sent; more are dropped and counted.
    pub queue_size: usize,
}

const MAX_QUEUE: usize = 1 << 20;

/// Resolve `[trace]`: `Ok(None)` when it is off.
pub fn resolve(raw: RawTrace, env: EnvLookup<'_>) -> Result<Option<TraceConfig>, String> {
    if !raw.enabled {
        return Ok(None);
    }
    let (endpoint, endpoint_from) = match raw.endpoint {
        Some(e) => (e, "trace.endpoint"),
        None => match env("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") {
            Some(e) => (e, "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"),
            None => match env("OTEL_EXPORTER_OTLP_ENDPOINT") {
                Some(base) => (
                    format!("{}/v1/traces", base.trim_end_matches('/')),
                    "OTEL_EXPORTER_OTLP_ENDPOINT",
                ),
                None => (DEFAULT_ENDPOINT.to_string(), "default"),
            },
        },
    };
    let key = if endpoint_from == "trace.endpoint" {
        "`trace.endpoint`".to_string()
    } else {
        format!("`trace.endpoint` (from {endpoint_from})")
    };
    let url = reqwest::Url::parse(&endpoint).map_err(|e| {
        format!(
            "{key}: {endpoint:?} is not a URL ({e}); write the collector's OTLP/HTTP traces URL, \
             e.g. \"http://127.0.0.1:4318/v1/traces\""
        )
    })?;
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
        return Err(format!(
            "{key}: {endpoint:?} must be an http or https URL with a host (OTLP/HTTP; gRPC \
             endpoints are not supported), e.g. \"http://127.0.0.1:4318/v1/traces\""
        ));
    }
    let (service_name, service_name_from) = match raw.service_name {
        Some(n) => (n, "trace.service_name"),
        None => match env("OTEL_SERVICE_NAME") {
            Some(n) => (n, "OTEL_SERVICE_NAME"),
            None => (DEFAULT_SERVICE_NAME.to_string(), "default"),
        },
    };
    if service_name.trim().is_empty() {
        return Err("`trace.service_name`: must not be empty (e.g. \"hookshim\")".into());
    }
    let sample_ratio = raw.sample_ratio.unwrap_or(1.0);
    if !(0.0..=1.0).contains(&sample_ratio) {
        return Err(format!(
            "`trace.sample_ratio`: {sample_ratio} is outside 0–1; write e.g. 1.0 (every \
             operation) or 0.1 (one in ten)"
        ));
    }
    let mut headers = Vec::new();
    for (name, template) in &raw.headers {
        let key = format!("trace.headers.{name}");
        reqwest::header::HeaderName::from_bytes(name.as_bytes())
            .map_err(|_| format!("`{key}`: {name:?} is not a valid header name"))?;
        let value = expand_env(&key, template, env)?;
        reqwest::header::HeaderValue::from_str(&value)
            .map_err(|_| format!("`{key}`: the value is not a valid header value"))?;
        headers.push((name.clone(), value));
    }
    let timeout = raw.timeout.map_or(Duration::from_secs(10), |d| d.0);
    if timeout.is_zero() || timeout > Duration::from_secs(300) {
        return Err("`trace.timeout`: must be more than 0s and at most 5m (e.g. \"10s\")".into());
    }
    let interval = raw.interval.map_or(Duration::from_secs(5), |d| d.0);
    if interval < Duration::from_millis(10) || interval > Duration::from_secs(600) {
        return Err("`trace.interval`: must be between 10ms and 10m (e.g. \"5s\")".into());
    }
    let queue_size = raw.queue_size.unwrap_or(2048);
    if queue_size == 0 || queue_size > MAX_QUEUE {
        return Err(format!(
            "`trace.queue_size`: must be between 1 and {MAX_QUEUE} (e.g. 2048)"
        ));
    }
    let batch_size = raw.batch_size.unwrap_or(512);
    if batch_size == 0 || batch_size > queue_size {
        return Err(format!(
            "`trace.batch_size`: must be between 1 and `trace.queue_size` ({queue_size}), e.g. 512"
        ));
    }
    Ok(Some(TraceConfig {
        endpoint: url.to_string(),
        endpoint_from,
        service_name,
        service_name_from,
        sample_ratio,
        headers,
        header_templates: raw.headers,
        timeout,
        interval,
        batch_size,
        queue_size,
    }))
}

/// How `check` shows `[trace]`: every header value redacted (they carry credentials), a
/// `${VAR}` template named.
pub fn describe(trace: Option<&TraceConfig>) -> serde_json::Value {
    use serde_json::json;
    let ms = |d: Duration| humantime::format_duration(d).to_string();
    match trace {
        None => json!({"enabled": false}),
        Some(t) => json!({
            "enabled": true,
            "endpoint": t.endpoint,
            "endpoint_from": t.endpoint_from,
            "service_name": t.service_name,
            "service_name_from": t.service_name_from,
            "sample_ratio": t.sample_ratio,
            "headers": t.header_templates.iter().map(|(k, v)| (k.clone(), json!(if v.contains("${") { format!("<redacted, from {v}>") } else { "<redacted>".to_string() }))).collect::<serde_json::Map<_, _>>(),
            "timeout": ms(t.timeout),
            "interval": ms(t.interval),
            "batch_size": t.batch_size,
            "queue_size": t.queue_size,
        }),
    }
}
