//! OpenTelemetry traces over OTLP/HTTP (issue 14), against the real binary and a loopback fake
//! collector.
//!
//! The collector is shaped from the OTLP/HTTP specification
//! (<https://opentelemetry.io/docs/specs/otlp/#otlphttp>: `POST /v1/traces`, body a protobuf
//! `ExportTraceServiceRequest`, `Content-Type: application/x-protobuf`, answer `200` with an
//! `ExportTraceServiceResponse`) and decodes with the protocol's own generated types,
//! `opentelemetry-proto`'s `collector::trace::v1` (from
//! `opentelemetry/proto/collector/trace/v1/trace_service.proto`).

use std::collections::BTreeMap;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::routing::post;
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use prost::Message;
use serde_json::{Value, json};

use crate::common::*;

/// One span as the collector received it, with its resource's `service.name`.
#[derive(Clone, Debug)]
struct Got {
    service: String,
    name: String,
    trace_id: String,
    span_id: String,
    parent: String,
    attrs: BTreeMap<String, String>,
}

#[derive(Default)]
struct Seen {
    requests: usize,
    undecodable: usize,
    headers: Vec<HeaderMap>,
    spans: Vec<Got>,
}

struct Collector {
    url: String,
    seen: Arc<Mutex<Seen>>,
}

fn text(v: &Option<AnyValue>) -> String {
    match v.as_ref().and_then(|v| v.value.as_ref()) {
        Some(any_value::Value::StringValue(s)) => s.clone(),
        Some(any_value::Value::IntValue(i)) => i.to_string(),
        Some(any_value::Value::BoolValue(b)) => b.to_string(),
        Some(any_value::Value::DoubleValue(d)) => d.to_string(),
        other => format!("{other:?}"),
    }
}

fn attrs(kvs: &[KeyValue]) -> BTreeMap<String, String> {
    kvs.iter()
        .map(|kv| (kv.key.clone(), text(&kv.value)))
        .collect()
}

async fn collect(
    State(seen): State<Arc<Mutex<Seen>>>,
    headers: HeaderMap,
    body: Bytes,
) -> impl IntoResponse {
    let mut seen = seen.lock().unwrap();
    seen.requests += 1;
    seen.headers.push(headers);
    let Ok(req) = ExportTraceServiceRequest::decode(body) else {
        seen.undecodable += 1;
        return (StatusCode::BAD_REQUEST, Vec::new());
    };
    for rs in req.resource_spans {
        let resource = attrs(&rs.resource.map(|r| r.attributes).unwrap_or_default());
        let service = resource.get("service.name").cloned().unwrap_or_default();
        for ss in rs.scope_spans {
            for s in ss.spans {
                seen.spans.push(Got {
                    service: service.clone(),
                    name: s.name.clone(),
                    trace_id: hex::encode(&s.trace_id),
                    span_id: hex::encode(&s.span_id),
                    parent: hex::encode(&s.parent_span_id),
                    attrs: attrs(&s.attributes),
                });
            }
        }
    }
    (
        StatusCode::OK,
        ExportTraceServiceResponse::default().encode_to_vec(),
    )
}

impl Collector {
    async fn start() -> Collector {
        let seen = Arc::new(Mutex::new(Seen::default()));
        let app = Router::new()
            .route("/v1/traces", post(collect))
            .with_state(seen.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Collector { url, seen }
    }

    fn spans(&self) -> Vec<Got> {
        self.seen.lock().unwrap().spans.clone()
    }

    fn requests(&self) -> usize {
        self.seen.lock().unwrap().requests
    }
}

const CONFIG: &str = proc_config!(
    "",
    "",
    r#"
[upstreams.pushy]
base_url = "{UP}/"
status_path = "pushy/{operation}"
status_field = "/state"
succeeded = ["done"]
failed = ["error"]
poll = { initial = "50ms", max = "200ms" }

[upstreams.pushy.webhook]
scheme = "standard-webhooks"
secret_env = "PUSHY_SECRET"
operation_field = "/data/id"
safety_poll = "1h"
"#
);

/// The standard OpenTelemetry variables, removed from the child so the test's own
/// environment cannot change what it does (`""` removes a variable).
const NO_OTEL_ENV: [(&str, &str); 5] = [
    ("OTEL_EXPORTER_OTLP_ENDPOINT", ""),
    ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", ""),
    ("OTEL_EXPORTER_OTLP_HEADERS", ""),
    ("OTEL_EXPORTER_OTLP_TRACES_HEADERS", ""),
    ("OTEL_SERVICE_NAME", ""),
];

fn setup(trace: &str, up: &FakeUpstream, recv: &Receiver) -> ProcSetup {
    ProcSetup::new(
        &format!("{CONFIG}{trace}")
            .replace("{UP}", &up.url)
            .replace("{RECV}", &recv.url),
    )
}

async fn register(http: &reqwest::Client, url: &str, body: Value) -> String {
    let r = http
        .post(format!("{url}/v1/operations"))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    id_of(&r.json().await.unwrap())
}

/// SIGTERM, and the clean exit that follows.
async fn stop(proc: &mut Proc) {
    let term = Command::new("kill")
        .arg("-TERM")
        .arg(proc.pid().to_string())
        .status()
        .expect("run kill -TERM");
    assert!(term.success());
    let status = proc
        .wait_exit(Duration::from_secs(30))
        .await
        .expect("hookshim exits after SIGTERM");
    assert_eq!(status.code(), Some(0), "clean exit: {status}");
}

/// Register one operation that ends by poll and one that ends by webhook; both callbacks.
async fn two_operations(
    http: &reqwest::Client,
    url: &str,
    up: &FakeUpstream,
    recv: &Receiver,
) -> (String, String) {
    up.set("jobs/a", json!({"state": "done"}));
    let polled = register(http, url, json!({"upstream": "jobs", "operation": "a"})).await;
    up.set("pushy/b", json!({"state": "running"}));
    let pushed = register(http, url, json!({"upstream": "pushy", "operation": "b"})).await;
    up.set("pushy/b", json!({"state": "done"}));
    let (code, body) = send_signed_webhook(
        http,
        url,
        "pushy",
        PUSHY_SECRET,
        "msg_b",
        &json!({"type": "job.done", "data": {"id": "b"}}),
    )
    .await;
    assert_eq!(code, 200, "{body}");
    wait_calls(recv, &polled, 1).await;
    let call = wait_calls(recv, &pushed, 1).await;
    assert_eq!(call[0].body["data"]["detected_via"], "webhook");
    (polled, pushed)
}

#[tokio::test]
async fn each_operation_is_one_trace_from_registration_to_callback() {
    let (up, recv, collector) = (
        FakeUpstream::start().await,
        Receiver::start().await,
        Collector::start().await,
    );
    // A long interval and a large batch: nothing is sent before shutdown, which must send all.
    let mut setup = setup(
        &format!(
            r#"
[trace]
enabled = true
endpoint = "{}/v1/traces"
service_name = "hookshim-it"
interval = "10m"
headers = {{ authorization = "Bearer ${{OTLP_TEST_TOKEN}}" }}
"#,
            collector.url
        ),
        &up,
        &recv,
    );
    let mut env = NO_OTEL_ENV.to_vec();
    env.extend([("PUSHY_SECRET", PUSHY_SECRET), ("OTLP_TEST_TOKEN", "t0k3n")]);
    let mut proc = setup.spawn_with_env(&env);
    let http = reqwest::Client::new();
    proc.wait_healthy(&http, &setup.url).await;
    let (polled, pushed) = two_operations(&http, &setup.url, &up, &recv).await;
    assert_eq!(
        collector.requests(),
        0,
        "spans wait for a batch or shutdown"
    );
    stop(&mut proc).await;

    let seen = collector.seen.lock().unwrap();
    assert!(seen.requests >= 1);
    assert_eq!(
        seen.undecodable, 0,
        "every request is an ExportTraceServiceRequest"
    );
    for h in &seen.headers {
        assert_eq!(h["content-type"], "application/x-protobuf");
        assert_eq!(h["authorization"], "Bearer t0k3n");
    }
    let requests = seen.requests;
    drop(seen);
    let spans = collector.spans();
    eprintln!(
        "traces: {requests} export request(s) at shutdown carried {} spans for 2 operations",
        spans.len()
    );
    assert!(
        spans.iter().all(|s| s.service == "hookshim-it"),
        "{spans:?}"
    );
    for (id, stages) in [
        (&polled, &["register", "poll", "deliver"][..]),
        (&pushed, &["register", "webhook", "poll", "deliver"][..]),
    ] {
        let ulid = ulid::Ulid::from_string(&id[3..]).unwrap();
        let trace_id = format!("{:032x}", u128::from(ulid));
        let mine: Vec<&Got> = spans
            .iter()
            .filter(|s| s.attrs.get("op") == Some(id))
            .collect();
        // Every span naming the operation is in the trace whose id is the operation's ULID.
        assert!(
            mine.iter().all(|s| s.trace_id == trace_id),
            "{id}: {mine:#?}"
        );
        let root: Vec<&&Got> = mine.iter().filter(|s| s.name == "operation").collect();
        assert_eq!(root.len(), 1, "{id}: one root span: {mine:#?}");
        let root = root[0];
        assert_eq!(root.parent, "", "the root has no parent");
        assert_eq!(root.attrs["status"], "succeeded");
        for stage in stages {
            let s = mine
                .iter()
                .find(|s| s.name == *stage)
                .unwrap_or_else(|| panic!("{id}: no {stage} span in {mine:#?}"));
            assert_eq!(
                s.parent, root.span_id,
                "{id}: {stage} is a child of the root"
            );
            assert!(s.attrs.contains_key("upstream"), "{s:?}");
        }
        let deliver = mine.iter().find(|s| s.name == "deliver").unwrap();
        assert_eq!(deliver.attrs["result"], "delivered");
        assert_eq!(deliver.attrs["http.response.status_code"], "200");
        assert_eq!(
            mine.iter().find(|s| s.name == "register").unwrap().attrs["outcome"],
            "created"
        );
    }
    let webhook = spans.iter().find(|s| s.name == "webhook").unwrap();
    assert_eq!(webhook.attrs["result"], "accepted");
    assert_eq!(webhook.attrs["webhook_id"], "msg_b");
    assert_eq!(webhook.attrs["event"], "job.done");
    assert_eq!(
        spans
            .iter()
            .find(|s| s.attrs.get("op") == Some(&polled) && s.name == "operation")
            .unwrap()
            .attrs["detected_via"],
        "poll"
    );
}

#[tokio::test]
async fn with_traces_off_nothing_reaches_a_collector() {
    let (up, recv, collector) = (
        FakeUpstream::start().await,
        Receiver::start().await,
        Collector::start().await,
    );
    let mut setup = setup("", &up, &recv);
    // The standard variables alone do not turn traces on.
    let endpoint = format!("{}/v1/traces", collector.url);
    let mut proc = setup.spawn_with_env(&[
        ("PUSHY_SECRET", PUSHY_SECRET),
        ("OTEL_EXPORTER_OTLP_ENDPOINT", &collector.url),
        ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", &endpoint),
    ]);
    let http = reqwest::Client::new();
    proc.wait_healthy(&http, &setup.url).await;
    two_operations(&http, &setup.url, &up, &recv).await;
    stop(&mut proc).await;
    assert_eq!(collector.requests(), 0);
}

/// `hookshim_trace_spans_total{result}` from `/metrics`.
async fn trace_spans(http: &reqwest::Client, url: &str, result: &str) -> f64 {
    let text = http
        .get(format!("{url}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let prefix = format!("hookshim_trace_spans_total{{result=\"{result}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {prefix} in /metrics:\n{text}"))
}

#[tokio::test]
async fn a_collector_that_hangs_stalls_no_operation() {
    let (up, recv) = (FakeUpstream::start().await, Receiver::start().await);
    // Accepts connections and never answers.
    let hang = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hang_url = format!("http://{}", hang.local_addr().unwrap());
    let held = Arc::new(Mutex::new(Vec::new()));
    let keep = held.clone();
    tokio::spawn(async move {
        while let Ok((conn, _)) = hang.accept().await {
            keep.lock().unwrap().push(conn);
        }
    });
    let mut setup = setup(
        &format!(
            r#"
[trace]
enabled = true
endpoint = "{hang_url}/v1/traces"
interval = "20ms"
timeout = "2s"
batch_size = 1
queue_size = 2
"#
        ),
        &up,
        &recv,
    );
    let mut env = NO_OTEL_ENV.to_vec();
    env.push(("PUSHY_SECRET", PUSHY_SECRET));
    let mut proc = setup.spawn_with_env(&env);
    let http = reqwest::Client::new();
    proc.wait_healthy(&http, &setup.url).await;
    // Both operations end and both callbacks arrive while every export hangs.
    let (polled, pushed) = two_operations(&http, &setup.url, &up, &recv).await;
    for id in [&polled, &pushed] {
        let r: Value = http
            .get(format!("{}/v1/operations/{id}", setup.url))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(r["delivery"]["state"], "delivered", "{r}");
    }
    // The queue (2) overflowed while the first export hung: dropped spans are counted, and
    // the export that timed out is counted as failed.
    eventually(
        Duration::from_secs(30),
        "dropped and failed spans counted",
        || async {
            let dropped = trace_spans(&http, &setup.url, "dropped").await;
            let failed = trace_spans(&http, &setup.url, "failed").await;
            (dropped >= 1.0 && failed >= 1.0).then_some(())
        },
    )
    .await;
    assert_eq!(trace_spans(&http, &setup.url, "exported").await, 0.0);
    assert!(!held.lock().unwrap().is_empty(), "the exporter did connect");
    // Shutdown is bounded by the export timeout, not held by the collector.
    stop(&mut proc).await;
}

/// `check` shows where each value came from and never a header's value; a bad endpoint is a
/// config error (exit 2) naming the key.
#[test]
fn check_shows_the_trace_section() {
    let setup = ProcSetup::new(
        &format!("{CONFIG}\n[trace]\nenabled = true\nheaders = {{ authorization = \"Bearer ${{OTLP_TEST_TOKEN}}\" }}\n")
            .replace("{UP}", "http://127.0.0.1:9")
            .replace("{RECV}", "http://127.0.0.1:9"),
    );
    let check = |config: &std::path::Path, env: &[(&str, &str)]| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_hookshim"));
        cmd.arg("--config").arg(config).arg("check");
        for (k, _) in NO_OTEL_ENV {
            cmd.env_remove(k);
        }
        cmd.env("PUSHY_SECRET", PUSHY_SECRET);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let out = cmd.output().unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).to_string(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    };
    let (code, out, err) = check(
        &setup.config,
        &[
            ("OTLP_TEST_TOKEN", "s3cret"),
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4318"),
            ("OTEL_SERVICE_NAME", "from-env"),
        ],
    );
    assert_eq!(code, Some(0), "{out}{err}");
    let shown: Value = serde_json::from_str(out.rsplit_once("\nconfig OK").unwrap().0).unwrap();
    let t = &shown["trace"];
    assert_eq!(t["enabled"], true);
    assert_eq!(t["endpoint"], "http://127.0.0.1:4318/v1/traces");
    assert_eq!(t["endpoint_from"], "OTEL_EXPORTER_OTLP_ENDPOINT");
    assert_eq!(t["service_name"], "from-env");
    assert_eq!(
        t["headers"]["authorization"],
        "<redacted, from Bearer ${OTLP_TEST_TOKEN}>"
    );
    assert!(!out.contains("s3cret"));

    // A key set by HOOKSHIM_TRACE__… is a key set: it wins over the OTEL_* variables.
    let (code, out, err) = check(
        &setup.config,
        &[
            ("OTLP_TEST_TOKEN", "s3cret"),
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4318"),
            (
                "HOOKSHIM_TRACE__ENDPOINT",
                "http://127.0.0.1:9999/v1/traces",
            ),
        ],
    );
    assert_eq!(code, Some(0), "{out}{err}");
    let shown: Value = serde_json::from_str(out.rsplit_once("\nconfig OK").unwrap().0).unwrap();
    assert_eq!(
        shown["trace"]["endpoint"],
        "http://127.0.0.1:9999/v1/traces"
    );
    assert_eq!(shown["trace"]["endpoint_from"], "trace.endpoint");
    assert_eq!(
        shown["origins"]["trace.endpoint"],
        "HOOKSHIM_TRACE__ENDPOINT"
    );

    // Off by default.
    let off = ProcSetup::new(
        &CONFIG
            .replace("{UP}", "http://127.0.0.1:9")
            .replace("{RECV}", "http://127.0.0.1:9"),
    );
    let (code, out, _) = check(&off.config, &[]);
    assert_eq!(code, Some(0));
    assert!(
        out.contains("\"trace\": {\n    \"enabled\": false\n  }"),
        "{out}"
    );

    // The token's variable unset, and a gRPC-style endpoint: exit 2, naming each.
    let (code, _, err) = check(&setup.config, &[]);
    assert_eq!(code, Some(2));
    assert!(
        err.contains(
            "`trace.headers.authorization`: environment variable OTLP_TEST_TOKEN is not set"
        ),
        "{err}"
    );
    let bad = ProcSetup::new(
        &format!("{CONFIG}\n[trace]\nenabled = true\nendpoint = \"127.0.0.1:4317\"\n")
            .replace("{UP}", "http://127.0.0.1:9")
            .replace("{RECV}", "http://127.0.0.1:9"),
    );
    let (code, _, err) = check(&bad.config, &[]);
    assert_eq!(code, Some(2));
    assert!(err.contains("`trace.endpoint`"), "{err}");
}
