//! Test harness: a fake upstream and a verifying receiver (the boundary of our system, so fakes
//! are fine there), and the real hookshim library started over loopback on a real sled store in
//! a temp dir. The real binary as a child process is in [`process`].

mod pg;
mod process;

pub use pg::*;
pub use process::*;

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use hookshim::clock::{Clock, SystemClock};
use hookshim::config::Config;
use hookshim::service::{Running, StartOptions, start};
use serde_json::{Value, json};

pub const CALLBACK_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
pub const PUSHY_SECRET: &str = "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD";

async fn serve(router: Router) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let _ = axum::serve(listener, router).await;
    });
    addr
}

// ---------------------------------------------------------------------------------------------
// Fake upstream: GET /{*path} answers the JSON set for that path, after any scripted answers.

#[derive(Clone, Debug)]
pub struct Scripted {
    pub status: u16,
    pub headers: Vec<(&'static str, String)>,
    pub body: String,
}

impl Scripted {
    pub fn new(status: u16, body: &str) -> Scripted {
        Scripted {
            status,
            headers: Vec::new(),
            body: body.to_string(),
        }
    }
    pub fn header(mut self, name: &'static str, value: impl Into<String>) -> Scripted {
        self.headers.push((name, value.into()));
        self
    }
}

#[derive(Default)]
pub struct UpstreamState {
    pub bodies: HashMap<String, Value>,
    pub scripts: HashMap<String, VecDeque<Scripted>>,
    /// Every status request: when, and which path.
    pub requests: Vec<(Instant, String)>,
    /// The headers of every status request, by path (same order as `requests`).
    pub request_headers: Vec<(String, HeaderMap)>,
    /// The method and JSON body of every POST, by path.
    pub posts: Vec<(String, Value)>,
    /// Every request as it arrived, by (decoded) path: the raw, still percent-encoded URI.
    pub raw_uris: Vec<(String, axum::http::Uri)>,
}

#[derive(Clone)]
pub struct FakeUpstream {
    pub url: String,
    pub state: Arc<Mutex<UpstreamState>>,
}

async fn upstream_get(
    State(st): State<Arc<Mutex<UpstreamState>>>,
    Path(path): Path<String>,
    uri: axum::http::Uri,
    request_headers: HeaderMap,
) -> Response {
    let mut s = st.lock().unwrap();
    s.raw_uris.push((path.clone(), uri));
    s.requests.push((Instant::now(), path.clone()));
    s.request_headers.push((path.clone(), request_headers));
    if let Some(sc) = s.scripts.get_mut(&path).and_then(|q| q.pop_front()) {
        let mut headers = HeaderMap::new();
        for (k, v) in sc.headers {
            headers.insert(
                HeaderName::from_static(k),
                HeaderValue::from_str(&v).unwrap(),
            );
        }
        return (StatusCode::from_u16(sc.status).unwrap(), headers, sc.body).into_response();
    }
    match s.bodies.get(&path) {
        Some(v) => (StatusCode::OK, axum::Json(v.clone())).into_response(),
        None => (
            StatusCode::NOT_FOUND,
            axum::Json(json!({"error": "not found"})),
        )
            .into_response(),
    }
}

/// POST /{*path}: recorded with its JSON body, then answered like a GET of that path (Vertex
/// reads status with a POST).
async fn upstream_post(
    State(st): State<Arc<Mutex<UpstreamState>>>,
    Path(path): Path<String>,
    uri: axum::http::Uri,
    request_headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let json: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    st.lock().unwrap().posts.push((path.clone(), json));
    upstream_get(State(st), Path(path), uri, request_headers).await
}

impl FakeUpstream {
    pub async fn start() -> FakeUpstream {
        let state = Arc::new(Mutex::new(UpstreamState::default()));
        let router = Router::new()
            .route("/{*path}", get(upstream_get).post(upstream_post))
            .with_state(state.clone());
        let addr = serve(router).await;
        FakeUpstream {
            url: format!("http://{addr}"),
            state,
        }
    }
    /// Set what GET /{path} answers.
    pub fn set(&self, path: &str, body: Value) {
        self.state
            .lock()
            .unwrap()
            .bodies
            .insert(path.to_string(), body);
    }
    /// Answers given before the body set with [`set`], one per request.
    pub fn script(&self, path: &str, answers: Vec<Scripted>) {
        self.state
            .lock()
            .unwrap()
            .scripts
            .entry(path.to_string())
            .or_default()
            .extend(answers);
    }
    pub fn requests_for(&self, path: &str) -> Vec<Instant> {
        self.state
            .lock()
            .unwrap()
            .requests
            .iter()
            .filter(|(_, p)| p == path)
            .map(|(t, _)| *t)
            .collect()
    }
    /// Every request for (decoded) `path` as it arrived: its raw URI and headers.
    pub fn raw_requests_for(&self, path: &str) -> Vec<(axum::http::Uri, HeaderMap)> {
        let s = self.state.lock().unwrap();
        let uris = s.raw_uris.iter().filter(|(p, _)| p == path);
        let headers = s.request_headers.iter().filter(|(p, _)| p == path);
        uris.zip(headers)
            .map(|((_, u), (_, h))| (u.clone(), h.clone()))
            .collect()
    }

    /// The value of header `name` on every request for `path`.
    pub fn header_values(&self, path: &str, name: &str) -> Vec<String> {
        self.state
            .lock()
            .unwrap()
            .request_headers
            .iter()
            .filter(|(p, _)| p == path)
            .map(|(_, h)| {
                h.get(name)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("")
                    .to_string()
            })
            .collect()
    }
    /// The JSON body of every POST to `path`.
    pub fn posts_for(&self, path: &str) -> Vec<Value> {
        self.state
            .lock()
            .unwrap()
            .posts
            .iter()
            .filter(|(p, _)| p == path)
            .map(|(_, b)| b.clone())
            .collect()
    }
    pub fn all_requests(&self) -> Vec<Instant> {
        self.state
            .lock()
            .unwrap()
            .requests
            .iter()
            .map(|(t, _)| *t)
            .collect()
    }
}

// ---------------------------------------------------------------------------------------------
// Receiver: records every callback and verifies it with the `standardwebhooks` crate.

#[derive(Clone, Debug)]
pub enum Behaviour {
    Status(u16),
    StatusWith(u16, Vec<(&'static str, String)>),
    /// Sleep this long, then answer 200 (for timeouts).
    Slow(Duration),
}

#[derive(Clone, Debug)]
pub struct Call {
    pub at: Instant,
    pub webhook_id: String,
    pub body: Value,
    pub raw: Vec<u8>,
    /// Whether `standardwebhooks::Webhook::verify` accepted it.
    pub verified: bool,
    pub answered: u16,
}

pub struct ReceiverState {
    pub calls: Vec<Call>,
    pub script: VecDeque<Behaviour>,
    pub default: Behaviour,
    /// Behaviour for callbacks of a given `type` (e.g. `operation.requires_action`), ahead of
    /// the script and the default.
    pub by_type: HashMap<String, Behaviour>,
    pub verifier: standardwebhooks::Webhook,
}

#[derive(Clone)]
pub struct Receiver {
    pub url: String,
    pub state: Arc<Mutex<ReceiverState>>,
}

async fn receive(
    State(st): State<Arc<Mutex<ReceiverState>>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let behaviour = {
        let mut s = st.lock().unwrap();
        let verified = s.verifier.verify(&body, &headers).is_ok();
        let parsed: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
        let typed = parsed["type"]
            .as_str()
            .and_then(|t| s.by_type.get(t).cloned());
        let b = match typed {
            Some(b) => b,
            None => s.script.pop_front().unwrap_or_else(|| s.default.clone()),
        };
        let answered = match &b {
            Behaviour::Status(c) | Behaviour::StatusWith(c, _) => *c,
            Behaviour::Slow(_) => 200,
        };
        let h = |n: &str| {
            headers
                .get(n)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_string()
        };
        s.calls.push(Call {
            at: Instant::now(),
            webhook_id: h("webhook-id"),
            body: serde_json::from_slice(&body).unwrap_or(Value::Null),
            raw: body.to_vec(),
            verified,
            answered,
        });
        b
    };
    match behaviour {
        Behaviour::Status(c) => StatusCode::from_u16(c).unwrap().into_response(),
        Behaviour::StatusWith(c, hs) => {
            let mut headers = HeaderMap::new();
            for (k, v) in hs {
                headers.insert(
                    HeaderName::from_static(k),
                    HeaderValue::from_str(&v).unwrap(),
                );
            }
            (StatusCode::from_u16(c).unwrap(), headers).into_response()
        }
        Behaviour::Slow(d) => {
            tokio::time::sleep(d).await;
            StatusCode::OK.into_response()
        }
    }
}

impl Receiver {
    pub async fn start() -> Receiver {
        let state = Arc::new(Mutex::new(ReceiverState {
            calls: Vec::new(),
            script: VecDeque::new(),
            default: Behaviour::Status(200),
            by_type: HashMap::new(),
            verifier: standardwebhooks::Webhook::new(CALLBACK_SECRET).unwrap(),
        }));
        let router = Router::new()
            .route("/{*path}", post(receive))
            .route("/elsewhere", post(|| async { StatusCode::OK }))
            .with_state(state.clone());
        let addr = serve(router).await;
        Receiver {
            url: format!("http://{addr}"),
            state,
        }
    }
    pub fn script(&self, answers: Vec<Behaviour>) {
        self.state.lock().unwrap().script.extend(answers);
    }
    /// Answer callbacks of type `t` with `b` (`None`: back to the script and the default).
    pub fn set_for_type(&self, t: &str, b: Option<Behaviour>) {
        let mut s = self.state.lock().unwrap();
        match b {
            Some(b) => s.by_type.insert(t.to_string(), b),
            None => s.by_type.remove(t),
        };
    }
    pub fn set_default(&self, b: Behaviour) {
        self.state.lock().unwrap().default = b;
    }
    pub fn calls(&self) -> Vec<Call> {
        self.state.lock().unwrap().calls.clone()
    }
    /// Calls whose body is about hookshim operation `id`.
    pub fn calls_for(&self, id: &str) -> Vec<Call> {
        self.calls()
            .into_iter()
            .filter(|c| c.body["data"]["id"] == id)
            .collect()
    }
}

// ---------------------------------------------------------------------------------------------
// hookshim itself.

/// The `[store]` and `[callbacks]` tables every in-process test config starts with (a literal,
/// for `concat!`): the store in `{DATA}`, callbacks to `{RECV}/callback` with short retries.
macro_rules! store_and_callbacks {
    () => {
        r#"
[store]
path = "{DATA}"
cache = "8MiB"

[callbacks]
default_url = "{RECV}/callback"
timeout = "1s"
retry_schedule = ["100ms", "200ms", "300ms"]
"#
    };
}
pub(crate) use store_and_callbacks;

/// The config most `hookshim serve` process tests ([`ProcSetup`]) start with (a literal, for
/// `concat!`): the API on `{PORT}` plus the `$server` lines, the store in `{DATA}`, callbacks to
/// `{RECV}/callback` with one 100 ms retry, and the polling-only upstream `jobs` at `{UP}/jobs/…`
/// (`state` = `done` / `error`) plus the `$jobs` lines; then `$rest`.
macro_rules! proc_config {
    ($server:literal, $jobs:literal, $rest:literal) => {
        concat!(
            "\n[server]\nlisten = \"127.0.0.1:{PORT}\"\n",
            $server,
            r#"
[store]
path = "{DATA}"

[callbacks]
default_url = "{RECV}/callback"
retry_schedule = ["100ms"]

[upstreams.jobs]
base_url = "{UP}/"
status_path = "jobs/{operation}"
status_field = "/state"
succeeded = ["done"]
failed = ["error"]
poll = { initial = "50ms", max = "200ms" }
"#,
            $jobs,
            $rest
        )
    };
}
pub(crate) use proc_config;

/// The standard test config: `jobs` polls only, `pushy` has Standard Webhooks on. Timings are
/// short so tests run in milliseconds. `{UP}`, `{RECV}` and `{DATA}` are filled in.
pub const CONFIG: &str = concat!(
    store_and_callbacks!(),
    r#"
[upstreams.jobs]
base_url = "{UP}/"
status_path = "jobs/{operation}"
status_field = "/state"
succeeded = ["done"]
failed = ["error"]
cancelled = ["cancelled"]
expired = ["expired"]
result_field = "/output"
error_field = "/error"
progress_field = "/progress"
not_found_after = 3
rate = { per_second = 200, burst = 20 }
poll = { initial = "50ms", multiplier = 1.5, max = "200ms", jitter = 0.1, deadline = "1h" }

[upstreams.pushy]
base_url = "{UP}/"
status_path = "pushy/{operation}"
status_field = "/state"
succeeded = ["done"]
failed = ["error"]
result_field = "/output"
rate = { per_second = 200, burst = 20 }
poll = { initial = "50ms", multiplier = 1.5, max = "200ms", jitter = 0.1, deadline = "1h" }

[upstreams.pushy.webhook]
scheme = "standard-webhooks"
secret_env = "PUSHY_SECRET"
operation_field = "/data/id"
safety_poll = "1h"
"#
);

pub fn env_lookup(extra: Vec<(String, String)>) -> impl Fn(&str) -> Option<String> {
    move |name: &str| {
        if let Some((_, v)) = extra.iter().find(|(k, _)| k == name) {
            return Some(v.clone());
        }
        match name {
            "HOOKSHIM_CALLBACK_SECRET" => Some(CALLBACK_SECRET.into()),
            "PUSHY_SECRET" => Some(PUSHY_SECRET.into()),
            _ => None,
        }
    }
}

pub struct TestShim {
    pub url: String,
    /// The public listener (`server.webhook_listen`), when the config has one.
    pub webhook_url: Option<String>,
    pub http: reqwest::Client,
    /// Holds the data directory (removed when the shim is dropped).
    _dir: tempfile::TempDir,
    pub config_text: String,
    pub env: Vec<(String, String)>,
    pub running: Option<Running>,
    /// The service's clock (the wall clock unless started with [`TestShim::start_with_clock`]).
    pub clock: Arc<dyn Clock>,
    /// The store it runs on (a PostgreSQL schema is dropped after the shim stops).
    pub _backend: Backend,
}

impl TestShim {
    /// Start hookshim with `config` (placeholders filled) on a fresh temp data dir.
    pub async fn start(config: &str, up: &FakeUpstream, recv: &Receiver) -> TestShim {
        TestShim::start_with_env(config, up, recv, Vec::new()).await
    }

    pub async fn start_with_env(
        config: &str,
        up: &FakeUpstream,
        recv: &Receiver,
        env: Vec<(String, String)>,
    ) -> TestShim {
        TestShim::start_with_clock(config, up, recv, env, Arc::new(SystemClock)).await
    }

    /// Start on the given store (see [`on_each_store!`]).
    pub async fn start_on(
        store: &Backend,
        config: &str,
        up: &FakeUpstream,
        recv: &Receiver,
    ) -> TestShim {
        TestShim::start_on_with_env(store, config, up, recv, Vec::new()).await
    }

    pub async fn start_on_with_env(
        store: &Backend,
        config: &str,
        up: &FakeUpstream,
        recv: &Receiver,
        env: Vec<(String, String)>,
    ) -> TestShim {
        TestShim::start_on_with_clock(store, config, up, recv, env, Arc::new(SystemClock)).await
    }

    /// Start with the given clock, e.g. a [`hookshim::clock::ManualClock`] that tests move.
    pub async fn start_with_clock(
        config: &str,
        up: &FakeUpstream,
        recv: &Receiver,
        env: Vec<(String, String)>,
        clock: Arc<dyn Clock>,
    ) -> TestShim {
        TestShim::start_on_with_clock(&Backend::Sled, config, up, recv, env, clock).await
    }

    pub async fn start_on_with_clock(
        store: &Backend,
        config: &str,
        up: &FakeUpstream,
        recv: &Receiver,
        env: Vec<(String, String)>,
        clock: Arc<dyn Clock>,
    ) -> TestShim {
        let (config, store_env) = store.apply(config);
        let env = env.into_iter().chain(store_env).collect();
        let dir = tempfile::tempdir().unwrap();
        let text = config
            .replace("{UP}", &up.url)
            .replace("{RECV}", &recv.url)
            .replace("{DATA}", &dir.path().join("data").display().to_string());
        let mut s = TestShim {
            url: String::new(),
            webhook_url: None,
            http: reqwest::Client::new(),
            _dir: dir,
            config_text: text,
            env,
            running: None,
            clock,
            _backend: store.clone(),
        };
        s.boot().await;
        s
    }

    async fn boot(&mut self) {
        let lookup = env_lookup(self.env.clone());
        let config =
            Config::parse(&self.config_text, "test.toml", &lookup).expect("test config is valid");
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let webhook_listener = config
            .server
            .webhook_listen
            .map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap());
        let running = start(
            config,
            StartOptions {
                listener: Some(listener),
                webhook_listener,
                clock: self.clock.clone(),
            },
        )
        .await
        .unwrap();
        self.url = format!("http://{}", running.addr);
        self.webhook_url = running.webhook_addr.map(|a| format!("http://{a}"));
        self.running = Some(running);
    }

    /// Graceful stop and start again on the same data directory.
    pub async fn restart(&mut self) {
        if let Some(r) = self.running.take() {
            r.stop().await;
        }
        self.boot().await;
    }

    pub async fn stop(&mut self) {
        if let Some(r) = self.running.take() {
            r.stop().await;
        }
    }

    pub async fn register(&self, body: Value) -> (u16, Value) {
        self.post("/v1/operations", &body).await
    }

    pub async fn post(&self, path: &str, body: &Value) -> (u16, Value) {
        let r = self
            .http
            .post(format!("{}{path}", self.url))
            .json(body)
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    pub async fn get(&self, path: &str) -> (u16, Value) {
        let r = self
            .http
            .get(format!("{}{path}", self.url))
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    pub async fn op(&self, id: &str) -> Value {
        self.get(&format!("/v1/operations/{id}")).await.1
    }

    /// Send a Standard Webhooks-signed webhook, signed by the `standardwebhooks` crate.
    pub async fn send_webhook(
        &self,
        upstream: &str,
        secret: &str,
        msg_id: &str,
        body: &Value,
    ) -> (u16, Value) {
        send_signed_webhook(&self.http, &self.url, upstream, secret, msg_id, body).await
    }

    pub async fn metrics(&self) -> String {
        self.http
            .get(format!("{}/metrics", self.url))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }
}

/// POST a Standard Webhooks-signed webhook (signed by the `standardwebhooks` crate) to the
/// hookshim at `url`; usable from spawned tasks (owns nothing of a [`TestShim`]).
pub async fn send_signed_webhook(
    http: &reqwest::Client,
    url: &str,
    upstream: &str,
    secret: &str,
    msg_id: &str,
    body: &Value,
) -> (u16, Value) {
    let raw = serde_json::to_vec(body).unwrap();
    let ts = time_now_secs();
    let sig = standardwebhooks::Webhook::new(secret)
        .unwrap()
        .sign(msg_id, ts as i64, &raw)
        .unwrap();
    let r = http
        .post(format!("{url}/webhooks/{upstream}"))
        .header("content-type", "application/json")
        .header("webhook-id", msg_id)
        .header("webhook-timestamp", ts.to_string())
        .header("webhook-signature", sig)
        .body(raw)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

/// How long "exactly one callback" checks keep listening after the first one arrived, in
/// tests on [`CONFIG`]: twice its slowest poll (`max = "200ms"`), which also covers the first
/// two retry steps (100 ms + 200 ms of `retry_schedule`) of a callback sent a second time.
pub const QUIET: Duration = Duration::from_millis(400);

/// Wait for the first callback about `id`, keep listening for `quiet`, and assert it stayed
/// the only one. Returns it.
pub async fn exactly_one_callback(recv: &Receiver, id: &str, quiet: Duration) -> Call {
    let first = wait_calls(recv, id, 1).await;
    tokio::time::sleep(quiet).await;
    let all = recv.calls_for(id);
    assert_eq!(
        all.len(),
        1,
        "exactly one callback for {id}, but {} arrived within {quiet:?} of the first: {all:?}",
        all.len()
    );
    first[0].clone()
}

/// The hookshim id in a registration answer.
pub fn id_of(op: &Value) -> String {
    op["id"]
        .as_str()
        .unwrap_or_else(|| panic!("no id in {op}"))
        .to_string()
}

/// POST raw bytes with the given headers (no signing done here).
pub async fn post_raw(
    shim: &TestShim,
    path: &str,
    headers: &[(&str, String)],
    body: impl AsRef<[u8]>,
) -> (u16, Value) {
    let mut req = shim
        .http
        .post(format!("{}{path}", shim.url))
        .body(body.as_ref().to_vec());
    for (k, v) in headers {
        req = req.header(*k, v);
    }
    let r = req.send().await.unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

pub fn time_now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// Poll `f` every 20 ms until it returns `Some`, or panic after `limit` with `what`.
pub async fn eventually<T, F, Fut>(limit: Duration, what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(v) = f().await {
            return v;
        }
        if start.elapsed() > limit {
            panic!("timed out after {limit:?} waiting for: {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Wait until operation `id` has `status` (and return its record).
pub async fn wait_status(shim: &TestShim, id: &str, status: &str) -> Value {
    eventually(
        Duration::from_secs(10),
        &format!("{id} to be {status}"),
        || async {
            let op = shim.op(id).await;
            (op["status"] == status).then_some(op)
        },
    )
    .await
}

/// Wait until the receiver has at least `n` calls for `id`.
pub async fn wait_calls(recv: &Receiver, id: &str, n: usize) -> Vec<Call> {
    eventually(
        Duration::from_secs(10),
        &format!("{n} callback(s) for {id}"),
        || async {
            let c = recv.calls_for(id);
            (c.len() >= n).then_some(c)
        },
    )
    .await
}

/// Register `ops` on the `jobs` upstream, 16 at a time; every one must be acknowledged
/// (`201`). Returns operation → hookshim id.
pub async fn register_all(
    http: &reqwest::Client,
    url: &str,
    ops: &[String],
) -> BTreeMap<String, String> {
    let mut set = tokio::task::JoinSet::new();
    let sem = std::sync::Arc::new(tokio::sync::Semaphore::new(16));
    for op in ops {
        let (http, url, op, sem) = (http.clone(), url.to_string(), op.clone(), sem.clone());
        set.spawn(async move {
            let _permit = sem.acquire().await.unwrap();
            let r = http
                .post(format!("{url}/v1/operations"))
                .json(&json!({"upstream": "jobs", "operation": op}))
                .send()
                .await
                .unwrap();
            let status = r.status().as_u16();
            let body: Value = r.json().await.unwrap();
            assert_eq!(status, 201, "register {op}: {body}");
            (op, body["id"].as_str().unwrap().to_string())
        });
    }
    let mut ids = BTreeMap::new();
    while let Some(r) = set.join_next().await {
        let (op, id) = r.unwrap();
        ids.insert(op, id);
    }
    assert_eq!(ids.len(), ops.len());
    ids
}
