//! `hookshim demo`: the whole loop in one process on loopback, so a new user sees it work in
//! under a minute. It starts
//! - a simulated upstream with two job types: `render` jobs that can only be polled, and `push`
//!   jobs whose upstream also sends a signed Standard Webhooks webhook when they finish;
//! - hookshim itself, on a temporary data directory;
//! - a receiver that verifies every callback's signature and prints it as it arrives.
//!
//! Given a config (`hookshim -c shim.toml demo`), hookshim takes from it what shapes callbacks
//! and the service — the callback signing keys (the receiver verifies with them, `v1a` too),
//! retry schedule, timeout and `include_upstream_body`, `[workers]`, the server's limits and the
//! log format — and keeps its own upstreams, store, listener and receiver.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use serde_json::{Value, json};
use tokio::sync::mpsc;

use crate::clock::{Clock, SystemClock};
use crate::config::Config;
use crate::service::{StartOptions, start};
use crate::signing::{StandardKey, sign_v1, verify_standard_keys};
use crate::values::Secret;

struct SimJob {
    started: Instant,
    duration: Duration,
    fails: bool,
}

type Jobs = Arc<Mutex<HashMap<String, SimJob>>>;

async fn job_status(
    State(jobs): State<Jobs>,
    Path((_kind, id)): Path<(String, String)>,
) -> impl IntoResponse {
    let jobs = jobs.lock().unwrap_or_else(|p| p.into_inner());
    let Some(job) = jobs.get(&id) else {
        return (
            StatusCode::NOT_FOUND,
            axum::Json(json!({"error": "no such job"})),
        );
    };
    let elapsed = job.started.elapsed();
    let body = if elapsed < job.duration {
        json!({"id": id, "state": "running", "progress": elapsed.as_secs_f64() / job.duration.as_secs_f64()})
    } else if job.fails {
        json!({"id": id, "state": "error", "error": {"code": "out_of_memory", "message": "the job ran out of memory"}})
    } else {
        json!({"id": id, "state": "done", "progress": 1.0, "output": {"url": format!("https://cdn.example/{id}.mp4")}})
    };
    (StatusCode::OK, axum::Json(body))
}

async fn serve(router: Router) -> Result<String, String> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| format!("cannot bind loopback: {e}"))?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    tokio::spawn(async move {
        let _ = axum::serve(listener, router).await;
    });
    Ok(format!("http://{addr}"))
}

fn demo_config(upstream: &str, receiver: &str, data: &std::path::Path) -> String {
    format!(
        r#"
[store]
path = "{data}"
cache = "16MiB"

[callbacks]
default_url = "{receiver}/callback"
retry_schedule = ["1s", "2s", "5s"]

[upstreams.render]
base_url = "{upstream}/"
status_path = "render/{{operation}}"
status_field = "/state"
succeeded = ["done"]
failed = ["error"]
result_field = "/output"
error_field = "/error"
progress_field = "/progress"
poll = {{ initial = "500ms", multiplier = 1.5, max = "2s", deadline = "5m" }}

[upstreams.push]
base_url = "{upstream}/"
status_path = "push/{{operation}}"
status_field = "/state"
succeeded = ["done"]
failed = ["error"]
result_field = "/output"
error_field = "/error"
poll = {{ initial = "500ms", multiplier = 1.5, max = "2s", deadline = "5m" }}

[upstreams.push.webhook]
scheme = "standard-webhooks"
secret_env = "DEMO_UPSTREAM_WEBHOOK_SECRET"
operation_field = "/data/id"
safety_poll = "1m"
"#,
        data = data.display()
    )
}

/// Apply what `base` says about callbacks and the service to the demo's `config`; returns what
/// was taken, for the user.
fn take_from(config: &mut Config, base: &Config) -> String {
    let (cb, from) = (&mut config.callbacks, &base.callbacks);
    if from.secret.is_some() {
        cb.secret = from.secret.clone();
        cb.secret_source = from.secret_source.clone();
    }
    cb.previous_secrets = from.previous_secrets.clone();
    cb.signing_key = from.signing_key.clone();
    cb.retry_schedule = from.retry_schedule.clone();
    cb.timeout = from.timeout;
    cb.include_upstream_body = from.include_upstream_body;
    config.workers = base.workers.clone();
    config.log = base.log.clone();
    let (s, b) = (&mut config.server, &base.server);
    s.max_body = b.max_body;
    s.max_upstream_body = b.max_upstream_body;
    s.max_connections = b.max_connections;
    s.header_read_timeout = b.header_read_timeout;
    let secret = match &from.secret_source {
        Some(source) => format!("the callback secret from the {source}"),
        None => {
            "the demo's own callback secret (the config's would be generated in its data directory)"
                .to_string()
        }
    };
    format!(
        "{}: {secret}{}{}, retry_schedule, timeout, include_upstream_body, [workers], server limits and log format",
        base.source,
        match from.previous_secrets.len() {
            0 => String::new(),
            n => format!(", {n} previous secret(s)"),
        },
        if from.signing_key.is_some() {
            ", the Ed25519 signing key (v1a)"
        } else {
            ""
        },
    )
}

/// Run the demo with `n` jobs; returns when every callback has arrived (or after a minute).
/// With `base`, hookshim takes that config's callback and service settings ([`take_from`]).
pub async fn run(n: usize, base: Option<Config>) -> Result<(), String> {
    let n = n.clamp(1, 100);
    let t0 = Instant::now();
    let callback_secret = Secret(rand::random::<[u8; 24]>().to_vec());
    let upstream_secret = Secret(rand::random::<[u8; 24]>().to_vec());

    // The simulated upstream.
    let jobs: Jobs = Arc::new(Mutex::new(HashMap::new()));
    let upstream_url = serve(
        Router::new()
            .route("/{kind}/{id}", get(job_status))
            .with_state(jobs.clone()),
    )
    .await?;

    // The receiver: verify with the current secret (and the Ed25519 public key, when the given
    // config signs v1a too), then print.
    let (tx, mut rx) = mpsc::unbounded_channel::<(bool, Value, String)>();
    let key = base
        .as_ref()
        .and_then(|b| b.callbacks.secret.clone())
        .unwrap_or_else(|| callback_secret.clone())
        .0;
    let public = base
        .as_ref()
        .and_then(|b| b.callbacks.signing_key.as_ref())
        .map(|k| k.key.verifying_key());
    let verified_label = if public.is_some() {
        "verified (v1 and v1a)"
    } else {
        "verified"
    };
    let receiver_url = serve(Router::new().route(
        "/callback",
        post(move |headers: HeaderMap, body: Bytes| {
            let tx = tx.clone();
            let key = key.clone();
            async move {
                let now = SystemClock.now().unix_seconds();
                let v1 = verify_standard_keys(&[StandardKey::V1(&key)], &headers, &body, now);
                let v1a = public
                    .as_ref()
                    .map(|p| verify_standard_keys(&[StandardKey::V1a(p)], &headers, &body, now));
                let verified = v1.and(v1a.unwrap_or(Ok(String::new())));
                let value: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
                let id = headers
                    .get("webhook-id")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("")
                    .to_string();
                let _ = tx.send((verified.is_ok(), value, id));
                if verified.is_ok() {
                    StatusCode::NO_CONTENT
                } else {
                    StatusCode::UNAUTHORIZED
                }
            }
        }),
    ))
    .await?;

    // hookshim.
    let data = std::env::temp_dir().join(format!("hookshim-demo-{}", ulid::Ulid::generate()));
    let text = demo_config(&upstream_url, &receiver_url, &data);
    let env_secret = upstream_secret.to_whsec();
    let cb_secret = callback_secret.to_whsec();
    let lookup = move |name: &str| match name {
        "DEMO_UPSTREAM_WEBHOOK_SECRET" => Some(env_secret.clone()),
        "HOOKSHIM_CALLBACK_SECRET" => Some(cb_secret.clone()),
        _ => None,
    };
    let mut config = Config::parse(&text, "demo.toml", &lookup).map_err(|e| e.to_string())?;
    let taken = base.as_ref().map(|b| take_from(&mut config, b));
    let listener = std::net::TcpListener::bind("127.0.0.1:0")
        .map_err(|e| format!("cannot bind loopback: {e}"))?;
    let running = start(
        config,
        StartOptions {
            listener: Some(listener),
            ..StartOptions::default()
        },
    )
    .await
    .map_err(|e| e.to_string())?;
    let shim_url = format!("http://{}", running.addr);

    println!("hookshim demo");
    println!(
        "  simulated upstream  {upstream_url}   (render/* jobs: polling only; push/* jobs: also send signed webhooks)"
    );
    println!("  hookshim            {shim_url}");
    println!(
        "  receiver            {receiver_url}/callback   (verifies every Standard Webhooks signature)"
    );
    if let Some(taken) = &taken {
        println!("  settings from       {taken}");
        println!("                      (upstreams, store, listener and receiver: the demo's own)");
    }
    println!();

    // Start jobs upstream and register each with hookshim right after, as an app would.
    let http = reqwest::Client::new();
    let mut names = HashMap::new();
    for i in 0..n {
        let kind = if i % 2 == 0 { "render" } else { "push" };
        let id = format!("{kind}-{}", i + 1);
        let duration = Duration::from_millis(2_000 + (i as u64 * 1_300) % 7_000);
        let fails = i % 5 == 4;
        jobs.lock().unwrap_or_else(|p| p.into_inner()).insert(
            id.clone(),
            SimJob {
                started: Instant::now(),
                duration,
                fails,
            },
        );
        let r = http
            .post(format!("{shim_url}/v1/operations"))
            .json(&json!({"upstream": kind, "operation": id, "metadata": {"requested_by": "demo"}}))
            .send()
            .await
            .map_err(|e| format!("registering {id}: {e}"))?;
        let status = r.status();
        let op: Value = r.json().await.map_err(|e| e.to_string())?;
        if status != StatusCode::CREATED {
            return Err(format!("registering {id}: {status} {op}"));
        }
        println!(
            "[{:>5.1}s] registered {:<10} as {}  (finishes in {:.1}s{}{})",
            t0.elapsed().as_secs_f64(),
            id,
            op["id"].as_str().unwrap_or("?"),
            duration.as_secs_f64(),
            if fails { ", will fail" } else { "" },
            if kind == "push" {
                ", upstream will push a webhook"
            } else {
                ""
            }
        );
        names.insert(op["id"].as_str().unwrap_or("").to_string(), id.clone());
        if kind == "push" {
            // The upstream's webhook, signed with its secret, sent when the job ends.
            let key = upstream_secret.0.clone();
            let url = format!("{shim_url}/webhooks/push");
            let http = http.clone();
            tokio::spawn(async move {
                tokio::time::sleep(duration).await;
                let body = serde_json::to_vec(&json!({"type": "job.finished", "data": {"id": id}}))
                    .unwrap_or_default();
                let msg = format!("msg_{}", ulid::Ulid::generate());
                let ts = SystemClock.now().unix_seconds();
                let sig = format!("v1,{}", sign_v1(&key, &msg, ts, &body));
                let _ = http
                    .post(url)
                    .header("content-type", "application/json")
                    .header("webhook-id", msg)
                    .header("webhook-timestamp", ts.to_string())
                    .header("webhook-signature", sig)
                    .body(body)
                    .send()
                    .await;
            });
        }
    }
    println!();

    let deadline = Instant::now() + Duration::from_secs(60);
    let mut received = 0;
    let mut all_verified = true;
    let mut seen = std::collections::HashSet::new();
    while received < n {
        let Ok(Some((verified, body, webhook_id))) =
            tokio::time::timeout_at(deadline.into(), rx.recv()).await
        else {
            break;
        };
        all_verified &= verified;
        let d = &body["data"];
        let op_id = d["id"].as_str().unwrap_or("?");
        if !seen.insert(op_id.to_string()) {
            println!(
                "[{:>5.1}s] duplicate callback for {op_id} (same webhook-id {webhook_id}; receivers de-duplicate on it)",
                t0.elapsed().as_secs_f64()
            );
            continue;
        }
        received += 1;
        let detail = match d["status"].as_str() {
            Some("succeeded") => format!("result {}", d["result"]["url"].as_str().unwrap_or("-")),
            _ => format!("error {}", d["error"]["message"].as_str().unwrap_or("-")),
        };
        println!(
            "[{:>5.1}s] callback  {:<10} {:<9} via {:<7} after {} poll(s)  signature {}  webhook-id {}  {}",
            t0.elapsed().as_secs_f64(),
            names.get(op_id).map(String::as_str).unwrap_or(op_id),
            d["status"].as_str().unwrap_or("?"),
            d["detected_via"].as_str().unwrap_or("?"),
            d["polls"],
            if verified { verified_label } else { "INVALID" },
            webhook_id,
            detail
        );
    }
    running.stop().await;
    let _ = std::fs::remove_dir_all(&data);
    println!();
    if received == n && all_verified {
        println!(
            "all {n} jobs delivered exactly one verified callback in {:.1}s",
            t0.elapsed().as_secs_f64()
        );
        Ok(())
    } else {
        Err(format!(
            "only {received} of {n} callbacks arrived (all verified: {all_verified})"
        ))
    }
}
