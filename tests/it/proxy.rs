//! The transparent proxy end to end (issue 9): real HTTP on loopback, the real store. A fake
//! provider answers every method under any path with bodies shaped from the providers' SDK
//! types (each cited where it is written), and counts what it received, so "the upstream was
//! not called" is a count that does not move.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::common::*;

// ---------------------------------------------------------------------------------------------
// The fake provider.

#[derive(Clone, Debug)]
struct Answer {
    status: u16,
    headers: Vec<(&'static str, String)>,
    body: Value,
}

#[derive(Default)]
struct ProviderState {
    /// `METHOD path` (path as received, without the leading `/`) → the answer.
    routes: HashMap<String, Answer>,
    /// Every request: `METHOD path`, when, and its credential headers.
    seen: Vec<(String, Instant, HashMap<String, String>)>,
}

#[derive(Clone)]
struct Provider {
    url: String,
    state: Arc<Mutex<ProviderState>>,
}

/// The bytes of the large streamed body the provider serves at `GET big`.
fn big_chunk(i: usize) -> Vec<u8> {
    (0..65_536)
        .map(|j| ((i * 31 + j * 7) % 251) as u8)
        .collect()
}
const BIG_CHUNKS: usize = 320; // 20 MiB

async fn provider_any(State(st): State<Arc<Mutex<ProviderState>>>, req: Request) -> Response {
    let path = req.uri().path().trim_start_matches('/').to_string();
    let key = format!("{} {}", req.method(), path);
    let creds: HashMap<String, String> = ["authorization", "x-api-key", "x-goog-api-key", "host"]
        .iter()
        .filter_map(|h| {
            req.headers()
                .get(*h)
                .and_then(|v| v.to_str().ok())
                .map(|v| (h.to_string(), v.to_string()))
        })
        .chain(
            req.headers()
                .keys()
                .filter(|k| k.as_str().starts_with("hookshim-"))
                .map(|k| (k.as_str().to_string(), "present".to_string())),
        )
        .collect();
    st.lock()
        .unwrap()
        .seen
        .push((key.clone(), Instant::now(), creds));
    if path.ends_with("upload") || req.headers().contains_key("x-hash-body") {
        // Hash the streamed body as it arrives.
        let mut hasher = Sha256::new();
        let mut len = 0usize;
        let mut stream = req.into_body().into_data_stream();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.unwrap();
            len += chunk.len();
            hasher.update(&chunk);
        }
        return axum::Json(json!({"sha256": hex::encode(hasher.finalize()), "len": len}))
            .into_response();
    }
    if path.ends_with("hang") {
        // One chunk, then nothing, forever.
        let stream = futures_util::stream::once(async {
            Ok::<Bytes, std::io::Error>(Bytes::from_static(b"first"))
        })
        .chain(futures_util::stream::pending());
        return Response::new(Body::from_stream(stream));
    }
    if path.ends_with("big") {
        let stream = futures_util::stream::iter(
            (0..BIG_CHUNKS).map(|i| Ok::<Bytes, std::io::Error>(Bytes::from(big_chunk(i)))),
        );
        let mut r = Response::new(Body::from_stream(stream));
        r.headers_mut().insert(
            "content-type",
            HeaderValue::from_static("application/octet-stream"),
        );
        r.headers_mut()
            .insert("x-provider", HeaderValue::from_static("kept"));
        return r;
    }
    let answer = st.lock().unwrap().routes.get(&key).cloned();
    match answer {
        Some(a) => {
            let mut r =
                (StatusCode::from_u16(a.status).unwrap(), axum::Json(a.body)).into_response();
            for (k, v) in a.headers {
                r.headers_mut().insert(
                    HeaderName::from_static(k),
                    HeaderValue::from_str(&v).unwrap(),
                );
            }
            r
        }
        None => (
            StatusCode::NOT_FOUND,
            axum::Json(json!({"error": {"message": format!("no route {key}")}})),
        )
            .into_response(),
    }
}

impl Provider {
    async fn start() -> Provider {
        let state = Arc::new(Mutex::new(ProviderState::default()));
        let router = Router::new()
            .route("/{*path}", axum::routing::any(provider_any))
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let _ = axum::serve(listener, router).await;
        });
        Provider {
            url: format!("http://{addr}"),
            state,
        }
    }
    fn route(&self, method: &str, path: &str, status: u16, body: Value) {
        self.route_with(method, path, status, Vec::new(), body);
    }
    fn route_with(
        &self,
        method: &str,
        path: &str,
        status: u16,
        headers: Vec<(&'static str, String)>,
        body: Value,
    ) {
        self.state.lock().unwrap().routes.insert(
            format!("{method} {path}"),
            Answer {
                status,
                headers,
                body,
            },
        );
    }
    /// How many `METHOD path` requests arrived.
    fn count(&self, method: &str, path: &str) -> usize {
        let key = format!("{method} {path}");
        self.state
            .lock()
            .unwrap()
            .seen
            .iter()
            .filter(|(k, _, _)| *k == key)
            .count()
    }
    fn seen(&self) -> Vec<(String, Instant, HashMap<String, String>)> {
        self.state.lock().unwrap().seen.clone()
    }
}

// ---------------------------------------------------------------------------------------------
// hookshim with one proxied upstream per preset.

/// Polls far apart, so that only the proxy talks to the provider during a test.
const SLOW: &str =
    r#"{ initial = "30m", multiplier = 1.5, max = "1h", eta_max = "1h", deadline = "24h" }"#;

const CONFIG: &str = concat!(
    store_and_callbacks!(),
    r#"
[upstreams.ob]
preset = "openai-batch"
base_url = "{PROV}/v1/"
headers = { Authorization = "Bearer hookshim-own" }
rate = { per_second = 200, burst = 50 }
poll = SLOW
proxy = { enabled = true }

[upstreams.or]
preset = "openai-response"
base_url = "{PROV}/v1/"
headers = { Authorization = "Bearer hookshim-own" }
rate = { per_second = 200, burst = 50 }
poll = SLOW
proxy = { enabled = true }

[upstreams.gb]
preset = "gemini-batch"
base_url = "{PROV}/v1beta/"
headers = { x-goog-api-key = "hookshim-own" }
rate = { per_second = 200, burst = 50 }
poll = SLOW
proxy = { enabled = true }

[upstreams.go]
preset = "google-operation"
base_url = "{PROV}/v1beta/"
rate = { per_second = 200, burst = 50 }
poll = SLOW
proxy = { enabled = true }

[upstreams.gi]
preset = "gemini-interaction"
base_url = "{PROV}/v1beta/"
headers = { x-goog-api-key = "hookshim-own" }
rate = { per_second = 200, burst = 50 }
poll = SLOW
proxy = { enabled = true }

[upstreams.rp]
preset = "replicate"
base_url = "{PROV}/v1/"
headers = { Authorization = "Bearer hookshim-own" }
rate = { per_second = 200, burst = 50 }
poll = SLOW
proxy = { enabled = true }

[upstreams.ab]
preset = "anthropic-batch"
base_url = "{PROV}/v1/"
headers = { x-api-key = "hookshim-own" }
rate = { per_second = 200, burst = 50 }
poll = SLOW
proxy = { enabled = true }

[upstreams.az]
preset = "azure-async"
base_url = "{PROV}/"
headers = { Authorization = "Bearer hookshim-own" }
rate = { per_second = 200, burst = 50 }
poll = SLOW
proxy = { enabled = true }

[upstreams.fal]
preset = "fal-queue"
base_url = "{PROV}/"
headers = { Authorization = "Bearer hookshim-own" }
rate = { per_second = 200, burst = 50 }
poll = SLOW
proxy = { enabled = true }

[upstreams.vb]
preset = "vertex-batch"
base_url = "{PROV}/v1/"
headers = { Authorization = "Bearer hookshim-own" }
rate = { per_second = 200, burst = 50 }
poll = SLOW
proxy = { enabled = true }

[upstreams.br]
preset = "bedrock-batch"
base_url = "{PROV}/"
headers = { Authorization = "Bearer hookshim-own" }
rate = { per_second = 200, burst = 50 }
poll = SLOW
proxy = { enabled = true }

[upstreams.mi]
preset = "mistral-batch"
base_url = "{PROV}/v1/"
headers = { Authorization = "Bearer hookshim-own" }
rate = { per_second = 200, burst = 50 }
poll = SLOW
proxy = { enabled = true }

[upstreams.tg]
preset = "together-batch"
base_url = "{PROV}/together/v1/"
headers = { Authorization = "Bearer hookshim-own" }
rate = { per_second = 200, burst = 50 }
poll = SLOW
proxy = { enabled = true }

[upstreams.fw]
preset = "fireworks-batch"
base_url = "{PROV}/v1/"
headers = { Authorization = "Bearer hookshim-own" }
rate = { per_second = 200, burst = 50 }
poll = SLOW
proxy = { enabled = true }

[upstreams.rw]
preset = "runway-task"
base_url = "{PROV}/v1/"
headers = { Authorization = "Bearer hookshim-own" }
rate = { per_second = 200, burst = 50 }
poll = SLOW
proxy = { enabled = true }

[upstreams.jobs]
base_url = "{PROV}/api/v2/"
headers = { Authorization = "Bearer hookshim-own" }
status_path = "jobs/{operation}"
status_field = "/state"
succeeded = ["done"]
failed = ["error"]
rate = { per_second = 200, burst = 50 }
poll = SLOW
proxy = { enabled = true, create = { method = "POST", path = "jobs", id_field = "/job/id" } }

[upstreams.tight]
preset = "openai-batch"
base_url = "{PROV}/v1/"
headers = { Authorization = "Bearer hookshim-own" }
rate = { per_second = 5, burst = 5 }
poll = SLOW
proxy = { enabled = true, max_wait = "1s" }

[upstreams.closed]
preset = "openai-batch"
base_url = "{PROV}/v1/"
headers = { Authorization = "Bearer hookshim-own" }
poll = SLOW
"#
);

async fn rig() -> (Provider, Receiver, TestShim) {
    rig_with(CONFIG).await
}

/// [`rig`] on the given store.
async fn rig_on(store: &Backend) -> (Provider, Receiver, TestShim) {
    rig_with_on(store, CONFIG).await
}

async fn rig_with(config: &str) -> (Provider, Receiver, TestShim) {
    rig_with_on(&Backend::Sled, config).await
}

async fn rig_with_on(store: &Backend, config: &str) -> (Provider, Receiver, TestShim) {
    let provider = Provider::start().await;
    let recv = Receiver::start().await;
    let unused = FakeUpstream::start().await;
    let config = config
        .replace("{PROV}", &provider.url)
        .replace("= SLOW", &format!("= {SLOW}"));
    let shim = TestShim::start_on(store, &config, &unused, &recv).await;
    (provider, recv, shim)
}

/// A proxied request: status, headers, body bytes.
async fn call(
    shim: &TestShim,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<Value>,
) -> (u16, reqwest::header::HeaderMap, Vec<u8>) {
    let mut req = shim.http.request(
        reqwest::Method::from_bytes(method.as_bytes()).unwrap(),
        format!("{}{path}", shim.url),
    );
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    if let Some(b) = body {
        req = req.json(&b);
    }
    let r = req.send().await.unwrap();
    let status = r.status().as_u16();
    let headers = r.headers().clone();
    (status, headers, r.bytes().await.unwrap().to_vec())
}

fn json_of(bytes: &[u8]) -> Value {
    serde_json::from_slice(bytes).unwrap_or_else(|e| {
        panic!(
            "not JSON ({e}): {}",
            String::from_utf8_lossy(&bytes[..bytes.len().min(200)])
        )
    })
}

fn header<'h>(h: &'h reqwest::header::HeaderMap, name: &str) -> Option<&'h str> {
    h.get(name).and_then(|v| v.to_str().ok())
}

/// The operations `GET /v1/operations?upstream=&operation=` finds.
async fn lookup(shim: &TestShim, upstream: &str, operation: &str) -> Vec<Value> {
    let q = format!(
        "/v1/operations?upstream={upstream}&operation={}",
        percent_encoding::utf8_percent_encode(operation, percent_encoding::NON_ALPHANUMERIC)
    );
    let (status, body) = shim.get(&q).await;
    assert_eq!(status, 200, "{body}");
    assert!(body["next_cursor"].is_null());
    body["operations"].as_array().unwrap().clone()
}

// ---------------------------------------------------------------------------------------------
// One case per preset.

struct Case {
    upstream: &'static str,
    /// The create: method, proxied path (below `/proxy/{upstream}/`), request body.
    create: (&'static str, &'static str, Value),
    /// What the provider answers to the create.
    created: Value,
    /// Extra headers of the create answer.
    created_headers: Vec<(&'static str, String)>,
    /// The upstream's own id of the job (what the lookup is given).
    operation: String,
    /// The status read as the provider serves it (path without `/`), and its body.
    status_path: String,
    status_body: Value,
    /// The same read under another API version (proxied path).
    variant: Option<String>,
    /// The credential header.
    auth: (&'static str, &'static str),
    other_auth: &'static str,
    /// Whether the create answer is the job (seeds the cache).
    seeds: bool,
}

fn cases(prov: &str) -> Vec<Case> {
    // Shapes from openai/openai-python src/openai/types/batch.py (`Batch`).
    let batch = json!({"id": "batch_abc", "object": "batch", "endpoint": "/v1/chat/completions",
        "errors": null, "input_file_id": "file-in", "completion_window": "24h",
        "status": "validating", "output_file_id": null, "error_file_id": null,
        "created_at": 1_764_000_000, "in_progress_at": null, "expires_at": 1_764_086_400,
        "request_counts": {"total": 0, "completed": 0, "failed": 0}, "metadata": null});
    // openai/openai-python src/openai/types/responses/response.py (`Response`, background).
    let response = json!({"id": "resp_abc", "object": "response", "created_at": 1_764_000_000,
        "status": "queued", "background": true, "model": "o3-deep-research", "output": [],
        "error": null, "incomplete_details": null});
    // googleapis/python-genai google/genai/types.py (`Operation` around a `BatchJob`; the
    // REST create answers an Operation named batches/…).
    let gbatch = json!({"name": "batches/123abc", "metadata": {
        "@type": "type.googleapis.com/google.ai.generativelanguage.v1main.GenerateContentBatch",
        "model": "models/gemini-2.5-flash", "name": "batches/123abc",
        "state": "BATCH_STATE_PENDING", "createTime": "2026-11-30T10:00:00Z"}});
    // googleapis/python-genai google/genai/types.py (`GenerateVideosOperation`).
    let veo = json!({"name": "models/veo-3.0-generate-001/operations/op789"});
    let veo_status = json!({"name": "models/veo-3.0-generate-001/operations/op789", "done": false});
    // googleapis/python-genai (interactions, `background=True`): id + status.
    let interaction = json!({"id": "int_42", "status": "in_progress", "outputs": []});
    // replicate/replicate-python replicate/prediction.py (`Prediction`).
    let prediction = json!({"id": "p_ufawqhfynnddngldkgtslldrkq", "model": "black-forest-labs/flux-schnell",
        "version": "v1", "status": "starting", "input": {"prompt": "a cat"}, "output": null,
        "error": null, "logs": "", "created_at": "2026-11-30T10:00:00Z",
        "urls": {"get": format!("{prov}/v1/predictions/p_ufawqhfynnddngldkgtslldrkq"), "cancel": ""}});
    // anthropics/anthropic-sdk-python src/anthropic/types/messages/message_batch.py.
    let mbatch = json!({"id": "msgbatch_013Zva2CMHLNnXjNJJKqJ2EF", "type": "message_batch",
        "processing_status": "in_progress", "request_counts": {"processing": 2, "succeeded": 0,
        "errored": 0, "canceled": 0, "expired": 0}, "ended_at": null,
        "created_at": "2026-11-30T10:00:00Z", "expires_at": "2026-12-01T10:00:00Z",
        "cancel_initiated_at": null, "archived_at": null, "results_url": null});
    // Azure/azure-sdk-for-python sdk/core/azure-core/azure/core/polling/base_polling.py: the
    // create answers 201/202 with Azure-AsyncOperation; the status resource has `status`.
    let az_url = format!("{prov}/operations/azop1?api-version=2024-01-01");
    let mistral_job = json!({"id": "mb-1", "object": "batch", "input_files": ["f1"],
        "endpoint": "/v1/chat/completions", "model": "mistral-small-latest", "errors": [],
        "status": "QUEUED", "created_at": 1_764_000_000, "total_requests": 0,
        "completed_requests": 0, "succeeded_requests": 0, "failed_requests": 0});
    let together_job = json!({"id": "tb-1", "user_id": "u1", "input_file_id": "file-in",
        "file_size_bytes": 1024, "status": "VALIDATING", "job_deadline": "2026-12-01T10:00:00Z",
        "created_at": "2026-11-30T10:00:00Z", "endpoint": "/v1/chat/completions",
        "progress": 0, "model_id": "meta-llama/Meta-Llama-3.1-8B-Instruct-Turbo"});
    let fireworks_job = json!({"name": "accounts/acme/batchInferenceJobs/fj-1",
        "state": "JOB_STATE_CREATING", "model": "accounts/fireworks/models/llama-v3p1-8b-instruct",
        "inputDatasetId": "accounts/acme/datasets/in", "createTime": "2026-11-30T10:00:00Z",
        "jobProgress": {"percent": 0}});
    // googleapis/python-aiplatform google/cloud/aiplatform_v1/types/batch_prediction_job.py
    // (`BatchPredictionJob`); the create (`POST /v1/{parent}/batchPredictionJobs`,
    // services/job_service/transports/rest_base.py) answers the job.
    let vjob_name = "projects/p1/locations/us-central1/batchPredictionJobs/4567";
    let vjob = json!({"name": vjob_name, "displayName": "nightly",
        "model": "publishers/google/models/gemini-2.5-flash", "state": "JOB_STATE_PENDING",
        "createTime": "2026-11-30T10:00:00Z"});
    // boto/botocore botocore/data/bedrock/2023-04-20/service-2.json: CreateModelInvocationJob
    // answers only `jobArn`; GetModelInvocationJob is read at the ARN as one encoded segment
    // (serialize.py `_render_uri_template`). Authorised with a Bedrock API key (bearer).
    let job_arn = "arn:aws:bedrock:us-east-1:123456789012:model-invocation-job/abc123xyz789";
    let bjob = json!({"jobArn": job_arn, "jobName": "nightly", "modelId": "anthropic.claude-3-haiku-20240307-v1:0",
        "roleArn": "arn:aws:iam::123456789012:role/batch", "status": "Submitted",
        "submitTime": "2026-11-30T10:00:00Z",
        "inputDataConfig": {"s3InputDataConfig": {"s3Uri": "s3://b/in/"}},
        "outputDataConfig": {"s3OutputDataConfig": {"s3Uri": "s3://b/out/"}}});
    // runwayml/sdk-python src/runwayml/types/image_to_video_create_response.py (`{"id"}` only)
    // and task_retrieve_response.py (`Running`).
    let rw_id = "17f20503-6c24-4c16-946b-35dbbce2af2f";
    let rw_task = json!({"id": rw_id, "createdAt": "2026-11-30T10:00:00.000Z",
        "status": "RUNNING", "progress": 0.2});
    vec![
        Case {
            upstream: "rw",
            create: (
                "POST",
                "v1/image_to_video",
                json!({"model": "gen4_turbo", "promptImage": "https://example.com/a.png", "ratio": "1280:720"}),
            ),
            created: json!({"id": rw_id}),
            created_headers: vec![],
            operation: rw_id.into(),
            status_path: format!("v1/tasks/{rw_id}"),
            status_body: rw_task,
            variant: None,
            auth: ("authorization", "Bearer key_app"),
            other_auth: "Bearer key_other",
            seeds: false,
        },
        Case {
            upstream: "vb",
            create: (
                "POST",
                "v1/projects/p1/locations/us-central1/batchPredictionJobs",
                json!({"displayName": "nightly", "model": "publishers/google/models/gemini-2.5-flash"}),
            ),
            created: vjob.clone(),
            created_headers: vec![],
            operation: vjob_name.into(),
            status_path: format!("v1/{vjob_name}"),
            status_body: vjob,
            variant: Some(format!("v1beta1/{vjob_name}")),
            auth: ("authorization", "Bearer ya29.app"),
            other_auth: "Bearer ya29.other",
            seeds: true,
        },
        Case {
            upstream: "br",
            create: (
                "POST",
                "model-invocation-job",
                json!({"jobName": "nightly", "modelId": "anthropic.claude-3-haiku-20240307-v1:0"}),
            ),
            created: json!({"jobArn": job_arn}),
            created_headers: vec![],
            operation: job_arn.into(),
            status_path: "model-invocation-job/arn%3Aaws%3Abedrock%3Aus-east-1%3A123456789012%3Amodel-invocation-job%2Fabc123xyz789".into(),
            status_body: bjob,
            variant: None,
            auth: ("authorization", "Bearer bedrock-api-key-app"),
            other_auth: "Bearer bedrock-api-key-other",
            seeds: false,
        },
        Case {
            upstream: "ob",
            create: (
                "POST",
                "v1/batches",
                json!({"input_file_id": "file-in", "endpoint": "/v1/chat/completions", "completion_window": "24h"}),
            ),
            created: batch.clone(),
            created_headers: vec![],
            operation: "batch_abc".into(),
            status_path: "v1/batches/batch_abc".into(),
            status_body: batch,
            variant: Some("v2/batches/batch_abc".into()),
            auth: ("authorization", "Bearer sk-app"),
            other_auth: "Bearer sk-other",
            seeds: true,
        },
        Case {
            upstream: "or",
            create: (
                "POST",
                "v1/responses",
                json!({"model": "o3-deep-research", "input": "hi", "background": true}),
            ),
            created: response.clone(),
            created_headers: vec![],
            operation: "resp_abc".into(),
            status_path: "v1/responses/resp_abc".into(),
            status_body: response,
            variant: None,
            auth: ("authorization", "Bearer sk-app"),
            other_auth: "Bearer sk-other",
            seeds: true,
        },
        Case {
            upstream: "gb",
            create: (
                "POST",
                "v1beta/models/gemini-2.5-flash:batchGenerateContent",
                json!({"batch": {"display_name": "b", "input_config": {"requests": {"requests": []}}}}),
            ),
            created: gbatch.clone(),
            created_headers: vec![],
            operation: "123abc".into(),
            status_path: "v1beta/batches/123abc".into(),
            status_body: gbatch,
            variant: Some("v1/batches/123abc".into()),
            auth: ("x-goog-api-key", "AIza-app"),
            other_auth: "AIza-other",
            seeds: true,
        },
        Case {
            upstream: "go",
            create: (
                "POST",
                "v1beta/models/veo-3.0-generate-001:predictLongRunning",
                json!({"instances": [{"prompt": "a cat"}]}),
            ),
            created: veo,
            created_headers: vec![],
            operation: "models/veo-3.0-generate-001/operations/op789".into(),
            status_path: "v1beta/models/veo-3.0-generate-001/operations/op789".into(),
            status_body: veo_status,
            variant: Some("v1/models/veo-3.0-generate-001/operations/op789".into()),
            auth: ("x-goog-api-key", "AIza-app"),
            other_auth: "AIza-other",
            seeds: true,
        },
        Case {
            upstream: "gi",
            create: (
                "POST",
                "v1beta/interactions",
                json!({"agent": "deep-research-pro-preview", "input": "q", "background": true}),
            ),
            created: interaction.clone(),
            created_headers: vec![],
            operation: "int_42".into(),
            status_path: "v1beta/interactions/int_42".into(),
            status_body: interaction,
            variant: Some("v1alpha/interactions/int_42".into()),
            auth: ("x-goog-api-key", "AIza-app"),
            other_auth: "AIza-other",
            seeds: true,
        },
        Case {
            upstream: "rp",
            create: (
                "POST",
                "v1/models/black-forest-labs/flux-schnell/predictions",
                json!({"input": {"prompt": "a cat"}}),
            ),
            created: prediction.clone(),
            created_headers: vec![],
            operation: "p_ufawqhfynnddngldkgtslldrkq".into(),
            status_path: "v1/predictions/p_ufawqhfynnddngldkgtslldrkq".into(),
            status_body: prediction,
            variant: None,
            auth: ("authorization", "Bearer r8_app"),
            other_auth: "Bearer r8_other",
            seeds: true,
        },
        Case {
            upstream: "ab",
            create: (
                "POST",
                "v1/messages/batches",
                json!({"requests": [{"custom_id": "a", "params": {"model": "claude", "max_tokens": 10, "messages": []}}]}),
            ),
            created: mbatch.clone(),
            created_headers: vec![],
            operation: "msgbatch_013Zva2CMHLNnXjNJJKqJ2EF".into(),
            status_path: "v1/messages/batches/msgbatch_013Zva2CMHLNnXjNJJKqJ2EF".into(),
            status_body: mbatch,
            variant: None,
            auth: ("x-api-key", "sk-ant-app"),
            other_auth: "sk-ant-other",
            seeds: true,
        },
        Case {
            upstream: "az",
            create: (
                "PUT",
                "subscriptions/s1/resourceGroups/g1?api-version=2024-01-01",
                json!({"location": "westeurope"}),
            ),
            created: json!({"id": "/subscriptions/s1/resourceGroups/g1", "properties": {"provisioningState": "Accepted"}}),
            // The header as a server may write it (upper-case scheme and host); the SDK's GET
            // of it is normalised.
            created_headers: vec![(
                "azure-asyncoperation",
                az_url.replace("http://127.0.0.1", "HTTP://127.0.0.1"),
            )],
            operation: az_url,
            status_path: "operations/azop1".into(),
            status_body: json!({"id": "azop1", "status": "InProgress", "percentComplete": 10}),
            variant: None,
            auth: ("authorization", "Bearer eyJ-app"),
            other_auth: "Bearer eyJ-other",
            seeds: false,
        },
        // fal-ai/fal projects/fal_client/src/fal_client/client.py (`AsyncClient.submit` reads
        // `request_id`, `response_url`, `status_url`, `cancel_url`; `_parse_status`).
        Case {
            upstream: "fal",
            create: ("POST", "fal-ai/flux/dev", json!({"prompt": "a lighthouse"})),
            created: json!({"request_id": "req-7", "status": "IN_QUEUE", "queue_position": 0,
                "response_url": format!("{prov}/fal-ai/flux/requests/req-7"),
                "status_url": format!("{prov}/fal-ai/flux/requests/req-7/status"),
                "cancel_url": format!("{prov}/fal-ai/flux/requests/req-7/cancel")}),
            created_headers: vec![],
            operation: format!("{prov}/fal-ai/flux/requests/req-7/status"),
            status_path: "fal-ai/flux/requests/req-7/status".into(),
            status_body: json!({"status": "IN_PROGRESS", "request_id": "req-7", "logs": null,
                "response_url": format!("{prov}/fal-ai/flux/requests/req-7")}),
            variant: None,
            auth: ("authorization", "Key fal-app"),
            other_auth: "Key fal-other",
            seeds: false,
        },
        // mistralai/client-python src/mistralai/client/models/batchjob.py (`BatchJob`).
        Case {
            upstream: "mi",
            create: (
                "POST",
                "v1/batch/jobs",
                json!({"input_files": ["f1"], "endpoint": "/v1/chat/completions", "model": "mistral-small-latest"}),
            ),
            created: mistral_job.clone(),
            created_headers: vec![],
            operation: "mb-1".into(),
            status_path: "v1/batch/jobs/mb-1".into(),
            status_body: mistral_job,
            variant: None,
            auth: ("authorization", "Bearer mistral-app"),
            other_auth: "Bearer mistral-other",
            seeds: true,
        },
        // togethercomputer/together-py src/together/types/batch_create_response.py: the
        // create answers `{"job", "warning"}`, not the job. (Under its own base path: the
        // provider counts requests by path, and openai-batch POSTs `v1/batches` too.)
        Case {
            upstream: "tg",
            create: (
                "POST",
                "together/v1/batches",
                json!({"input_file_id": "file-in", "endpoint": "/v1/chat/completions"}),
            ),
            created: json!({"job": together_job.clone(), "warning": null}),
            created_headers: vec![],
            operation: "tb-1".into(),
            status_path: "together/v1/batches/tb-1".into(),
            status_body: together_job,
            variant: None,
            auth: ("authorization", "Bearer together-app"),
            other_auth: "Bearer together-other",
            seeds: false,
        },
        // fw-ai-external/python-sdk src/fireworks/types/batch_inference_job.py.
        Case {
            upstream: "fw",
            create: (
                "POST",
                "v1/accounts/acme/batchInferenceJobs",
                json!({"model": "accounts/fireworks/models/llama-v3p1-8b-instruct",
                       "inputDatasetId": "accounts/acme/datasets/in"}),
            ),
            created: fireworks_job.clone(),
            created_headers: vec![],
            operation: "accounts/acme/batchInferenceJobs/fj-1".into(),
            status_path: "v1/accounts/acme/batchInferenceJobs/fj-1".into(),
            status_body: fireworks_job,
            variant: None,
            auth: ("authorization", "Bearer fw-app"),
            other_auth: "Bearer fw-other",
            seeds: true,
        },
        Case {
            upstream: "jobs",
            create: ("POST", "api/v2/jobs", json!({"input": 1})),
            created: json!({"job": {"id": "j-77"}, "state": "queued"}),
            created_headers: vec![],
            operation: "j-77".into(),
            status_path: "api/v2/jobs/j-77".into(),
            status_body: json!({"job": {"id": "j-77"}, "state": "queued"}),
            variant: None,
            auth: ("authorization", "Bearer app"),
            other_auth: "Bearer other",
            seeds: true,
        },
    ]
}

/// The provider path of a case's create (method, path without query).
fn provider_path(proxied: &str) -> &str {
    proxied.split('?').next().unwrap_or(proxied)
}

on_each_store! {
    #[tokio::test]
    async fn every_preset_registers_its_creates_and_answers_status_reads_from_the_kept_body(store) {
        let (prov, _recv, shim) = rig_on(&store).await;
        for c in cases(&prov.url) {
            let name = c.upstream;
            let (method, path, body) = &c.create;
            prov.route_with(
                method,
                provider_path(path),
                200,
                c.created_headers.clone(),
                c.created.clone(),
            );
            let status_query = if name == "az" {
                "?api-version=2024-01-01"
            } else {
                ""
            };
            prov.route("GET", &c.status_path, 200, c.status_body.clone());

            // The create goes through, answered as the provider answered, and is registered.
            let (status, h, bytes) = call(
                &shim,
                method,
                &format!("/proxy/{name}/{path}"),
                &[c.auth, ("hookshim-metadata", r#"{"order": 7}"#)],
                Some(body.clone()),
            )
            .await;
            assert_eq!(status, 200, "{name}: {}", String::from_utf8_lossy(&bytes));
            assert_eq!(
                json_of(&bytes),
                c.created,
                "{name}: the create answer is unchanged"
            );
            assert_eq!(header(&h, "hookshim-error"), None, "{name}");
            let op_id = header(&h, "hookshim-operation-id")
                .unwrap_or_else(|| panic!("{name}: no Hookshim-Operation-Id"))
                .to_string();
            assert_eq!(prov.count(method, provider_path(path)), 1, "{name}");
            let found = lookup(&shim, name, &c.operation).await;
            assert_eq!(found.len(), 1, "{name}: lookup by upstream id");
            assert_eq!(found[0]["id"], op_id.as_str(), "{name}");
            assert_eq!(found[0]["metadata"]["order"], 7, "{name}");
            // No hookshim header and the credential went upstream unchanged.
            let seen = prov.seen();
            let create_seen = &seen
                .iter()
                .rev()
                .find(|(k, _, _)| k.starts_with(method))
                .unwrap()
                .2;
            assert_eq!(
                create_seen.get(c.auth.0).map(String::as_str),
                Some(c.auth.1),
                "{name}"
            );
            let authority = prov.url.trim_start_matches("http://");
            assert_eq!(
                create_seen.get("host").map(String::as_str),
                Some(authority),
                "{name}: Host is the upstream's, not hookshim's"
            );
            assert!(
                !create_seen.contains_key("hookshim-metadata"),
                "{name}: Hookshim-* stays home"
            );

            // The status read with the creator's credential.
            let read_path = format!("/proxy/{name}/{}{status_query}", c.status_path);
            let (status, h, bytes) = call(&shim, "GET", &read_path, &[c.auth], None).await;
            assert_eq!(status, 200, "{name}");
            if c.seeds {
                assert_eq!(
                    prov.count("GET", &c.status_path),
                    0,
                    "{name}: served from the kept body"
                );
                assert!(
                    header(&h, "hookshim-cache").is_some_and(|v| v.starts_with("hit; age=")),
                    "{name}"
                );
                assert_eq!(
                    json_of(&bytes),
                    c.created,
                    "{name}: the create answer seeded the cache"
                );
            } else {
                // Nothing kept yet: forwarded once, then served.
                assert_eq!(prov.count("GET", &c.status_path), 1, "{name}");
                assert_eq!(json_of(&bytes), c.status_body, "{name}");
                let (_, h, bytes) = call(&shim, "GET", &read_path, &[c.auth], None).await;
                assert_eq!(
                    prov.count("GET", &c.status_path),
                    1,
                    "{name}: then from the kept body"
                );
                assert!(header(&h, "hookshim-cache").is_some(), "{name}");
                assert_eq!(json_of(&bytes), c.status_body, "{name}");
            }
            assert_eq!(
                header(&h, "content-type"),
                Some("application/json"),
                "{name}"
            );
            let before = prov.count("GET", &c.status_path);

            // The same job under another API version is the same read.
            if let Some(v) = &c.variant {
                let (status, h, _) =
                    call(&shim, "GET", &format!("/proxy/{name}/{v}"), &[c.auth], None).await;
                assert_eq!(status, 200, "{name} {v}");
                assert!(
                    header(&h, "hookshim-cache").is_some(),
                    "{name} {v}: a version variant hits too"
                );
            }
            // hookshim's own credential may read it too (except google-operation, which has none).
            if name != "go" {
                let own = match c.auth.0 {
                    "authorization" => "Bearer hookshim-own",
                    _ => "hookshim-own",
                };
                let (_, h, _) = call(&shim, "GET", &read_path, &[(c.auth.0, own)], None).await;
                assert!(
                    header(&h, "hookshim-cache").is_some(),
                    "{name}: own credential"
                );
            }
            assert_eq!(prov.count("GET", &c.status_path), before, "{name}");

            // Another credential is forwarded, and its answer becomes the kept body.
            let (status, h, bytes) =
                call(&shim, "GET", &read_path, &[(c.auth.0, c.other_auth)], None).await;
            assert_eq!(status, 200, "{name}");
            assert_eq!(
                header(&h, "hookshim-cache"),
                None,
                "{name}: another credential is not served"
            );
            assert_eq!(prov.count("GET", &c.status_path), before + 1, "{name}");
            assert_eq!(json_of(&bytes), c.status_body, "{name}");
            // No credential at all: forwarded too.
            let (_, h, _) = call(&shim, "GET", &read_path, &[], None).await;
            assert_eq!(header(&h, "hookshim-cache"), None, "{name}");
            assert_eq!(prov.count("GET", &c.status_path), before + 2, "{name}");
            let (_, _, bytes) = call(&shim, "GET", &read_path, &[c.auth], None).await;
            assert_eq!(
                json_of(&bytes),
                c.status_body,
                "{name}: the forwarded answer is kept"
            );
            assert_eq!(prov.count("GET", &c.status_path), before + 2, "{name}");

            // The same create again is the same operation (idempotent).
            let (_, h, _) = call(
                &shim,
                method,
                &format!("/proxy/{name}/{path}"),
                &[c.auth],
                Some(body.clone()),
            )
            .await;
            assert_eq!(
                header(&h, "hookshim-operation-id"),
                Some(op_id.as_str()),
                "{name}"
            );
        }
        let m = shim.metrics().await;
        for want in [
            r#"hookshim_proxy_requests_total{upstream="ob",outcome="create_registered"} 2"#,
            r#"hookshim_proxy_requests_total{upstream="ob",outcome="cache_hit"} 4"#,
            r#"hookshim_proxy_requests_total{upstream="ob",outcome="forwarded"} 2"#,
            r#"hookshim_proxy_upstream_requests_saved_total{upstream="ob"} 4"#,
            r#"hookshim_proxy_requests_total{upstream="az",outcome="forwarded"} 3"#,
        ] {
            assert!(m.contains(want), "metrics lack {want}:\n{m}");
        }
    }
}

#[tokio::test]
async fn creates_that_are_not_background_or_fail_upstream_pass_through_unregistered() {
    let (prov, _recv, shim) = rig().await;
    // A foreground response is not a job.
    prov.route(
        "POST",
        "v1/responses",
        200,
        json!({"id": "resp_fg", "status": "completed"}),
    );
    let (status, h, _) = call(
        &shim,
        "POST",
        "/proxy/or/v1/responses",
        &[("authorization", "Bearer a")],
        Some(json!({"model": "m", "input": "x"})),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(header(&h, "hookshim-operation-id"), None);
    assert!(lookup(&shim, "or", "resp_fg").await.is_empty());
    // A streamed background response is handed on at once, unread.
    prov.route_with(
        "POST",
        "v1/responses",
        200,
        vec![("content-type", "text/event-stream".into())],
        json!({"type": "response.created"}),
    );
    let (status, h, bytes) = call(
        &shim,
        "POST",
        "/proxy/or/v1/responses",
        &[("authorization", "Bearer a")],
        Some(json!({"model": "m", "input": "x", "background": true, "stream": true})),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(header(&h, "content-type"), Some("text/event-stream"));
    assert_eq!(
        header(&h, "hookshim-error"),
        Some("create_response_not_json")
    );
    assert_eq!(json_of(&bytes)["type"], "response.created");
    // An upstream error is handed back as it is, nothing registered.
    prov.route(
        "POST",
        "v1/batches",
        400,
        json!({"error": {"message": "bad input_file_id"}}),
    );
    let (status, h, bytes) = call(
        &shim,
        "POST",
        "/proxy/ob/v1/batches",
        &[("authorization", "Bearer a")],
        Some(json!({})),
    )
    .await;
    assert_eq!(status, 400);
    assert_eq!(json_of(&bytes)["error"]["message"], "bad input_file_id");
    assert_eq!(header(&h, "hookshim-operation-id"), None);
    assert_eq!(header(&h, "hookshim-error"), None);
}

#[tokio::test]
async fn a_registration_failure_still_returns_the_upstream_answer_with_hookshim_error() {
    let (prov, _recv, shim) = rig().await;
    let batch = json!({"id": "batch_bad_cb", "object": "batch", "status": "validating"});
    prov.route("POST", "v1/batches", 200, batch.clone());
    let (status, h, bytes) = call(
        &shim,
        "POST",
        "/proxy/ob/v1/batches",
        &[
            ("authorization", "Bearer a"),
            ("hookshim-callback-url", "http://evil.example.com/cb"),
        ],
        Some(json!({"input_file_id": "f"})),
    )
    .await;
    assert_eq!(
        status, 200,
        "the job exists upstream: the app must get its answer"
    );
    assert_eq!(json_of(&bytes), batch);
    assert_eq!(header(&h, "hookshim-error"), Some("callback_not_allowed"));
    assert_eq!(header(&h, "hookshim-operation-id"), None);
    assert!(lookup(&shim, "ob", "batch_bad_cb").await.is_empty());
    // Bad metadata too.
    prov.route(
        "POST",
        "v1/batches",
        200,
        json!({"id": "batch_bad_meta", "status": "validating"}),
    );
    let (status, h, _) = call(
        &shim,
        "POST",
        "/proxy/ob/v1/batches",
        &[("hookshim-metadata", "{not json")],
        Some(json!({})),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(header(&h, "hookshim-error"), Some("invalid_metadata"));
    // An answer without the id where the preset expects it.
    prov.route("POST", "v1/batches", 200, json!({"object": "batch"}));
    let (_, h, _) = call(&shim, "POST", "/proxy/ob/v1/batches", &[], Some(json!({}))).await;
    assert_eq!(header(&h, "hookshim-error"), Some("operation_id_missing"));
    let m = shim.metrics().await;
    assert!(
        m.contains(
            r#"hookshim_proxy_requests_total{upstream="ob",outcome="create_unregistered"} 3"#
        ),
        "{m}"
    );
}

#[tokio::test]
async fn the_callback_url_header_is_used_and_a_good_one_gets_the_callback() {
    let (prov, recv, shim) = rig().await;
    prov.route(
        "POST",
        "v1/batches",
        200,
        json!({"id": "batch_cb", "status": "validating"}),
    );
    let cb = format!("{}/from-header", recv.url);
    let (_, h, _) = call(
        &shim,
        "POST",
        "/proxy/ob/v1/batches",
        &[("hookshim-callback-url", cb.as_str())],
        Some(json!({})),
    )
    .await;
    let id = header(&h, "hookshim-operation-id").unwrap().to_string();
    let op = shim.op(&id).await;
    assert_eq!(op["callback_url"], cb.as_str());
}

#[tokio::test]
async fn unknown_and_closed_upstreams_are_refused() {
    let (prov, _recv, shim) = rig().await;
    let (status, _, bytes) = call(&shim, "GET", "/proxy/nope/v1/batches", &[], None).await;
    assert_eq!(status, 404);
    assert_eq!(json_of(&bytes)["error"]["code"], "unknown_upstream");
    let (status, _, bytes) = call(&shim, "GET", "/proxy/closed/v1/batches", &[], None).await;
    assert_eq!(status, 404);
    assert_eq!(json_of(&bytes)["error"]["code"], "proxy_not_enabled");
    assert!(prov.seen().is_empty());
}

#[tokio::test]
async fn pass_through_is_untouched_including_large_streamed_bodies() {
    let (prov, _recv, shim) = rig().await;
    // A list, with a query string and a redirect-looking answer header.
    prov.route_with(
        "GET",
        "v1/batches",
        200,
        vec![("x-request-id", "req_1".into())],
        json!({"object": "list", "data": []}),
    );
    let (status, h, bytes) = call(
        &shim,
        "GET",
        "/proxy/ob/v1/batches?limit=2&after=x",
        &[("authorization", "Bearer a")],
        None,
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(header(&h, "x-request-id"), Some("req_1"));
    assert_eq!(json_of(&bytes)["object"], "list");
    // A 3xx comes back as it is, not followed.
    prov.route_with(
        "GET",
        "v1/files/f1/content",
        302,
        vec![("location", "http://127.0.0.1:9/elsewhere".into())],
        json!({}),
    );
    let no_redirects = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let r = no_redirects
        .get(format!("{}/proxy/ob/v1/files/f1/content", shim.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 302);
    assert_eq!(
        header(r.headers(), "location"),
        Some("http://127.0.0.1:9/elsewhere")
    );
    assert_eq!(prov.count("GET", "v1/files/f1/content"), 1);

    // 20 MiB up, streamed (larger than server.max_body), hashed at the provider.
    let mut hasher = Sha256::new();
    for i in 0..BIG_CHUNKS {
        hasher.update(big_chunk(i));
    }
    let want = hex::encode(hasher.finalize());
    let up_stream = futures_util::stream::iter(
        (0..BIG_CHUNKS).map(|i| Ok::<Vec<u8>, std::io::Error>(big_chunk(i))),
    );
    let r = shim
        .http
        .post(format!("{}/proxy/ob/v1/upload", shim.url))
        .header("content-type", "application/octet-stream")
        .body(reqwest::Body::wrap_stream(up_stream))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let got: Value = r.json().await.unwrap();
    assert_eq!(got["len"], BIG_CHUNKS * 65_536);
    assert_eq!(got["sha256"], want.as_str());

    // A create candidate whose body is larger than server.max_body (1 MiB) is not read: it
    // passes through whole.
    let big_json =
        serde_json::to_vec(&json!({"model": "m", "input": "y".repeat(3 << 20)})).unwrap();
    let r = shim
        .http
        .post(format!("{}/proxy/or/v1/responses", shim.url))
        .header("x-hash-body", "1")
        .header("content-type", "application/json")
        .body(big_json.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let got: Value = r.json().await.unwrap();
    assert_eq!(got["len"], big_json.len());
    assert_eq!(
        got["sha256"],
        hex::encode(Sha256::digest(&big_json)).as_str()
    );

    // 20 MiB down, streamed.
    let r = shim
        .http
        .get(format!("{}/proxy/ob/v1/big", shim.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(header(r.headers(), "x-provider"), Some("kept"));
    let mut hasher = Sha256::new();
    let mut len = 0;
    let mut s = r.bytes_stream();
    while let Some(c) = s.next().await {
        let c = c.unwrap();
        len += c.len();
        hasher.update(&c);
    }
    assert_eq!(len, BIG_CHUNKS * 65_536);
    assert_eq!(hex::encode(hasher.finalize()), want);
    let m = shim.metrics().await;
    assert!(
        m.contains(r#"hookshim_proxy_requests_total{upstream="ob",outcome="pass_through"} 4"#),
        "{m}"
    );
}

#[tokio::test]
async fn the_budget_holds_under_a_burst_of_proxied_requests() {
    let (prov, _recv, shim) = rig().await;
    prov.route(
        "GET",
        "v1/batches",
        200,
        json!({"object": "list", "data": []}),
    );
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..40 {
        let http = shim.http.clone();
        let url = format!("{}/proxy/tight/v1/batches", shim.url);
        tasks.push(tokio::spawn(async move {
            let r = http.get(url).send().await.unwrap();
            let retry = r
                .headers()
                .get("retry-after")
                .and_then(|v| v.to_str().ok())
                .map(str::to_string);
            let status = r.status().as_u16();
            let body: Value = r.json().await.unwrap_or(Value::Null);
            (status, retry, body)
        }));
    }
    let mut ok = 0;
    let mut refused = 0;
    for t in tasks {
        let (status, retry, body) = t.await.unwrap();
        match status {
            200 => ok += 1,
            429 => {
                refused += 1;
                assert!(
                    retry.is_some_and(|r| r.parse::<u64>().unwrap() >= 1),
                    "Retry-After"
                );
                assert_eq!(body["error"]["code"], "budget_exhausted");
            }
            other => panic!("unexpected {other}"),
        }
    }
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(
        refused > 0,
        "40 requests at 5/s with max_wait 1s: some are refused"
    );
    assert_eq!(ok, prov.count("GET", "v1/batches"));
    // Per rolling second at the provider: never more than burst + rate.
    let times: Vec<Instant> = prov
        .seen()
        .iter()
        .filter(|(k, _, _)| k == "GET v1/batches")
        .map(|(_, t, _)| *t)
        .collect();
    for (i, t) in times.iter().enumerate() {
        let in_window = times[i..]
            .iter()
            .filter(|u| u.duration_since(*t) < Duration::from_secs(1))
            .count();
        assert!(
            in_window <= 10,
            "{in_window} requests within one second (rate 5, burst 5)"
        );
    }
    let m = shim.metrics().await;
    assert!(
        m.contains(r#"hookshim_proxy_requests_total{upstream="tight",outcome="budget_refused"}"#),
        "{m}"
    );
    assert!(
        m.contains(r#"hookshim_proxy_requests_total{upstream="tight",outcome="budget_wait"}"#),
        "{m}"
    );
}

#[tokio::test]
async fn a_restart_keeps_serving_cached_reads() {
    let (prov, _recv, mut shim) = rig().await;
    let batch = json!({"id": "batch_r", "object": "batch", "status": "in_progress"});
    prov.route("POST", "v1/batches", 200, batch.clone());
    let (_, h, _) = call(
        &shim,
        "POST",
        "/proxy/ob/v1/batches",
        &[("authorization", "Bearer sk-app")],
        Some(json!({})),
    )
    .await;
    assert!(header(&h, "hookshim-operation-id").is_some());
    shim.restart().await;
    let (status, h, bytes) = call(
        &shim,
        "GET",
        "/proxy/ob/v1/batches/batch_r",
        &[("authorization", "Bearer sk-app")],
        None,
    )
    .await;
    assert_eq!(status, 200);
    assert!(
        header(&h, "hookshim-cache").is_some(),
        "the keyed credential hash survives a restart"
    );
    assert_eq!(json_of(&bytes), batch);
    assert_eq!(prov.count("GET", "v1/batches/batch_r"), 0);
}

/// The kept body from polling: stored on each read, in the record and the lookup but not in
/// the list, served after the end, and in the callback when asked for.
#[tokio::test]
async fn the_poller_keeps_the_upstream_body_and_the_callback_can_carry_it() {
    let config = CONFIG
        .replace(
            "[upstreams.jobs]\nbase_url",
            "[upstreams.jobs]\npoll = { initial = \"50ms\", multiplier = 1.5, max = \"100ms\", jitter = 0.1, deadline = \"1h\" }\nbase_url",
        )
        .replace("poll = SLOW\nproxy = { enabled = true, create", "proxy = { enabled = true, create")
        .replace("retry_schedule = [\"100ms\", \"200ms\", \"300ms\"]", "retry_schedule = [\"100ms\", \"200ms\", \"300ms\"]\ninclude_upstream_body = true")
        .replace("cache = \"8MiB\"", "cache = \"8MiB\"\nmax_upstream_body = \"2KiB\"")
        .replace("= SLOW", &format!("= {SLOW}"));
    let (prov, recv, shim) = rig_with(&config).await;
    prov.route(
        "GET",
        "api/v2/jobs/k1",
        200,
        json!({"state": "running", "step": 1}),
    );
    let (status, op) = shim
        .register(json!({"upstream": "jobs", "operation": "k1"}))
        .await;
    assert_eq!(status, 201, "{op}");
    let id = id_of(&op);
    eventually(Duration::from_secs(5), "a kept body", || async {
        let op = shim.op(&id).await;
        (op["upstream_body"]["step"] == 1).then_some(())
    })
    .await;
    let found = lookup(&shim, "jobs", "k1").await;
    assert_eq!(
        found[0]["upstream_body"]["step"], 1,
        "the lookup carries the body"
    );
    let (_, list) = shim.get("/v1/operations?upstream=jobs").await;
    assert!(
        list["operations"][0].get("upstream_body").is_none(),
        "the list leaves it out"
    );
    let done = json!({"state": "done", "step": 2, "output": "x"});
    prov.route("GET", "api/v2/jobs/k1", 200, done.clone());
    wait_status(&shim, &id, "succeeded").await;
    let calls = wait_calls(&recv, &id, 1).await;
    assert_eq!(calls[0].body["data"]["upstream_body"], done);
    assert_eq!(calls[0].body["data"]["upstream_body_truncated"], false);
    // After the end, the terminal body is what a proxied status read gets (hookshim's own
    // credential: the operation was registered through the API, it has no creator's).
    let polled = prov.count("GET", "api/v2/jobs/k1");
    let (status, h, bytes) = call(
        &shim,
        "GET",
        "/proxy/jobs/api/v2/jobs/k1",
        &[("authorization", "Bearer hookshim-own")],
        None,
    )
    .await;
    assert_eq!(status, 200);
    assert!(header(&h, "hookshim-cache").is_some());
    assert_eq!(json_of(&bytes), done);
    assert_eq!(prov.count("GET", "api/v2/jobs/k1"), polled);
    // A body over store.max_upstream_body is kept cut and flagged.
    prov.route(
        "GET",
        "api/v2/jobs/k2",
        200,
        json!({"state": "running", "pad": "x".repeat(4096)}),
    );
    let (_, op) = shim
        .register(json!({"upstream": "jobs", "operation": "k2"}))
        .await;
    let id2 = id_of(&op);
    let op = eventually(Duration::from_secs(5), "a truncated body", || async {
        let op = shim.op(&id2).await;
        (op["upstream_body_truncated"] == true).then_some(op)
    })
    .await;
    assert_eq!(op["upstream_body"].as_str().unwrap().len(), 2048);
}

/// Many app replicas polling through the proxy cost the upstream what hookshim's own schedule
/// costs: every status request the provider sees is one of hookshim's polls.
#[tokio::test]
async fn replicas_polling_at_10_hz_cost_the_upstream_only_hookshims_polls() {
    let config = CONFIG
        .replace(
            "[upstreams.jobs]\nbase_url",
            "[upstreams.jobs]\npoll = { initial = \"200ms\", multiplier = 1.5, max = \"400ms\", jitter = 0.1, deadline = \"1h\" }\nbase_url",
        )
        .replace("poll = SLOW\nproxy = { enabled = true, create", "proxy = { enabled = true, create");
    let (prov, _recv, shim) = rig_with(&config).await;
    prov.route(
        "POST",
        "api/v2/jobs",
        200,
        json!({"job": {"id": "r1"}, "state": "queued"}),
    );
    prov.route(
        "GET",
        "api/v2/jobs/r1",
        200,
        json!({"job": {"id": "r1"}, "state": "running"}),
    );
    let (_, h, _) = call(
        &shim,
        "POST",
        "/proxy/jobs/api/v2/jobs",
        &[("authorization", "Bearer app")],
        Some(json!({})),
    )
    .await;
    let id = header(&h, "hookshim-operation-id").unwrap().to_string();
    let mut tasks = Vec::new();
    for _ in 0..5 {
        let http = shim.http.clone();
        let url = format!("{}/proxy/jobs/api/v2/jobs/r1", shim.url);
        tasks.push(tokio::spawn(async move {
            let mut hits = 0;
            for _ in 0..15 {
                let r = http
                    .get(&url)
                    .header("authorization", "Bearer app")
                    .send()
                    .await
                    .unwrap();
                if r.headers().contains_key("hookshim-cache") {
                    hits += 1;
                }
                assert_eq!(r.status().as_u16(), 200);
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            hits
        }));
    }
    let mut hits = 0;
    for t in tasks {
        hits += t.await.unwrap();
    }
    assert_eq!(hits, 75, "every replica read is answered by hookshim");
    let op = shim.op(&id).await;
    let polls = op["polls"].as_u64().unwrap() as usize;
    assert!(polls >= 2, "hookshim polled on its own schedule ({polls})");
    let seen = prov.count("GET", "api/v2/jobs/r1");
    assert!(
        seen <= polls + 1 && seen + 1 >= polls,
        "the provider saw {seen} status reads, hookshim made {polls} polls"
    );
    assert_eq!(
        op["upstream_body"]["state"], "running",
        "the polls refresh the kept body"
    );
}

/// A proxied download that never ends does not hold hookshim's graceful stop.
#[tokio::test]
async fn a_hanging_download_does_not_hold_the_stop() {
    let (_prov, _recv, mut shim) = rig().await;
    let r = shim
        .http
        .get(format!("{}/proxy/ob/v1/hang", shim.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let mut s = r.bytes_stream();
    assert_eq!(&s.next().await.unwrap().unwrap()[..], b"first");
    let started = Instant::now();
    tokio::time::timeout(Duration::from_secs(20), shim.stop())
        .await
        .expect("stop finishes within the shutdown grace");
    assert!(started.elapsed() < Duration::from_secs(15));
}
