//! Soak: the real hookshim binary under mixed, partly hostile load for `--minutes`, reporting
//! each minute what a leak or a stall would show: RSS, open file descriptors, threads, the
//! schedule and outbox sizes, and the latency of registrations and of callbacks.
//!
//! The load, all on 127.0.0.1, bounded in rate and time:
//! - **jobs** (`upstreams.jobs`): registered at `--rate` per second; each finishes 1–20 s after
//!   registration; half are announced by a signed webhook (thin: the status read decides), half
//!   are found by polling.
//! - **a slow upstream** (`upstreams.slow`): every status read hangs past hookshim's 2 s timeout,
//!   and one in four answers with an endless chunked body instead; a few operations a second.
//! - **a flaky receiver**: one callback in five answered 500, one in twenty after 1.5 s.
//! - **bad input** every second: forged and stale signatures, malformed and oversized bodies,
//!   webhooks to made-up upstream names, registrations with bad deadlines and unknown upstreams.
//!
//! Every callback is verified (HMAC); a second callback for a job, a bad signature or a job
//! whose callback never comes are counted and reported.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use clap::Args;
use hookshim::clock::{Clock, SystemClock};
use hookshim::signing::{sign_v1, verify_standard};
use hookshim::values::Secret;
use serde_json::{Value, json};

use crate::harness::{
    self, BenchResult, CALLBACK_SECRET, Hookshim, UPSTREAM_SECRET, UPSTREAM_SECRET_ENV, mib, ms,
    note, quantile, row,
};

#[derive(Args, Debug)]
pub struct SoakArgs {
    /// How long to run.
    #[arg(long, default_value_t = 30)]
    pub minutes: u64,
    /// Jobs registered per second.
    #[arg(long, default_value_t = 40)]
    pub rate: u32,
    /// Operations per second registered at the slow (hanging, endless-body) upstream.
    #[arg(long, default_value_t = 2)]
    pub slow_rate: u32,
    /// Delete each operation a second after its callback (as a retention policy would), so the
    /// store stays the same size and memory can only grow by a leak.
    #[arg(long)]
    pub delete_finished: bool,
    /// Where to write the JSON (default: target/bench/soak.json).
    #[arg(long)]
    pub json: Option<std::path::PathBuf>,
    /// The hookshim binary (default: build and use target/release/hookshim).
    #[arg(long)]
    pub hookshim: Option<std::path::PathBuf>,
    /// Keep the scratch directory (config, data, logs) for inspection.
    #[arg(long)]
    pub keep: bool,
}

struct World {
    t0: Instant,
    /// Job name → when it finishes (ms since t0) and when it was registered.
    jobs: Mutex<HashMap<String, (u64, u64)>>,
    /// Job name → when its callback first arrived.
    delivered: Mutex<HashMap<String, u64>>,
    duplicates: AtomicUsize,
    bad_signatures: AtomicUsize,
    callbacks_seen: AtomicU64,
    status_reads: AtomicU64,
    callback_key: Vec<u8>,
    /// Callback latencies (job done → callback received) of the current minute.
    callback_latency: Mutex<Vec<Duration>>,
    /// Registration round trips of the current minute.
    register_latency: Mutex<Vec<Duration>>,
    /// With `--delete-finished`: hookshim's base URL, to delete each operation a second after
    /// its callback (what a retention policy would do), so the store does not grow.
    delete_finished: std::sync::OnceLock<(reqwest::Client, String)>,
}

impl World {
    fn now_ms(&self) -> u64 {
        self.t0.elapsed().as_millis() as u64
    }
}

async fn status(State(w): State<Arc<World>>, Path(job): Path<String>) -> Response {
    w.status_reads.fetch_add(1, Ordering::Relaxed);
    let done_at = w.jobs.lock().ok().and_then(|j| j.get(&job).map(|x| x.0));
    match done_at {
        None => (StatusCode::NOT_FOUND, axum::Json(json!({"error": "no such job"}))).into_response(),
        Some(at) if w.now_ms() >= at => axum::Json(
            json!({"id": job, "state": "done", "output": {"url": format!("https://cdn.example/{job}.mp4")}}),
        )
        .into_response(),
        Some(_) => axum::Json(json!({"id": job, "state": "running"})).into_response(),
    }
}

/// The slow upstream: hangs past the timeout, or streams a body that never ends.
async fn slow(Path(job): Path<String>) -> Response {
    if job.ends_with('0') || job.ends_with('4') {
        let chunk = Bytes::from(vec![b' '; 64 * 1024]);
        let stream = futures_stream(chunk);
        return Response::builder()
            .header("content-type", "application/json")
            .body(Body::from_stream(stream))
            .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response());
    }
    tokio::time::sleep(Duration::from_secs(30)).await;
    axum::Json(json!({"id": job, "state": "running"})).into_response()
}

/// An endless stream of `chunk`, one every millisecond (ends when the reader goes away).
fn futures_stream(
    chunk: Bytes,
) -> impl futures_util::Stream<Item = Result<Bytes, std::io::Error>> + Send {
    futures_util::stream::unfold(chunk, |chunk| async move {
        tokio::time::sleep(Duration::from_millis(1)).await;
        Some((Ok(chunk.clone()), chunk))
    })
}

async fn callback(State(w): State<Arc<World>>, headers: HeaderMap, body: Bytes) -> StatusCode {
    let n = w.callbacks_seen.fetch_add(1, Ordering::Relaxed);
    if verify_standard(
        &[&w.callback_key],
        &headers,
        &body,
        SystemClock.now().unix_seconds(),
    )
    .is_err()
    {
        w.bad_signatures.fetch_add(1, Ordering::Relaxed);
        return StatusCode::UNAUTHORIZED;
    }
    // Flaky: one in five fails, one in twenty is slow (before the answer counts).
    if n % 5 == 3 {
        return StatusCode::INTERNAL_SERVER_ERROR;
    }
    if n % 20 == 7 {
        tokio::time::sleep(Duration::from_millis(1500)).await;
    }
    let v: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let Some(job) = v["data"]["operation"].as_str().map(str::to_string) else {
        return StatusCode::NO_CONTENT;
    };
    let now = w.now_ms();
    let done_at = w.jobs.lock().ok().and_then(|j| j.get(&job).map(|x| x.0));
    let first = match w.delivered.lock() {
        Ok(mut d) => d.insert(job, now).is_none(),
        Err(_) => true,
    };
    if first {
        if let (Some((http, base)), Some(id)) = (w.delete_finished.get(), v["data"]["id"].as_str())
        {
            let (http, url) = (http.clone(), format!("{base}/v1/operations/{id}"));
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_secs(1)).await;
                let _ = http.delete(url).send().await;
            });
        }
    }
    if !first {
        w.duplicates.fetch_add(1, Ordering::Relaxed);
    } else if let (Some(at), Ok(mut l)) = (done_at, w.callback_latency.lock()) {
        l.push(Duration::from_millis(now.saturating_sub(at)));
    }
    StatusCode::NO_CONTENT
}

fn config(data: &std::path::Path, port: u16, upstream: &str, receiver: &str) -> String {
    format!(
        r#"# Generated by hookshim-bench soak.
[server]
listen = "127.0.0.1:{port}"
max_body = "64KiB"

[store]
path = "{data}"

[callbacks]
default_url = "{receiver}/callback"
retry_schedule = ["1s", "2s", "2s", "5s", "5s", "10s", "10s", "10s"]

[upstreams.jobs]
base_url = "{upstream}/"
status_path = "jobs/{{operation}}"
status_field = "/state"
succeeded = ["done"]
failed = ["error"]
result_field = "/output"
rate = {{ per_second = 500, burst = 100 }}
poll = {{ initial = "1s", multiplier = 1.5, max = "5s", deadline = "10m" }}

[upstreams.jobs.webhook]
scheme = "standard-webhooks"
secret_env = "{secret_env}"
operation_field = "/data/id"
safety_poll = "5s"

[upstreams.slow]
base_url = "{upstream}/"
status_path = "slow/{{operation}}"
status_field = "/state"
succeeded = ["done"]
failed = ["error"]
timeout = "2s"
poll = {{ initial = "1s", multiplier = 2.0, max = "10s", deadline = "2m" }}
"#,
        data = data.join("data").display(),
        secret_env = UPSTREAM_SECRET_ENV,
    )
}

fn sign(key: &[u8], id: &str, body: &str, ts: u64) -> String {
    format!("v1,{}", sign_v1(key, id, ts, body.as_bytes()))
}

async fn post_webhook(
    http: &reqwest::Client,
    url: &str,
    id: &str,
    ts: u64,
    sig: &str,
    body: impl Into<reqwest::Body>,
) -> u16 {
    http.post(url)
        .header("content-type", "application/json")
        .header("webhook-id", id)
        .header("webhook-timestamp", ts.to_string())
        .header("webhook-signature", sig)
        .body(body)
        .send()
        .await
        .map(|r| r.status().as_u16())
        .unwrap_or(0)
}

/// One second of bad input; returns the names of the requests answered with a 5xx or not at
/// all (an oversized body may be cut off before it is sent whole: that one only has to answer
/// 413 or close).
async fn hostile_second(
    http: &reqwest::Client,
    base: &str,
    key: &[u8],
    n: u64,
) -> Vec<&'static str> {
    let hook = format!("{base}/webhooks/jobs");
    let ts = SystemClock.now().unix_seconds();
    let body = format!(r#"{{"type":"job.completed","data":{{"id":"nope{n}"}}}}"#);
    let stale = ts.saturating_sub(3600);
    let many = vec!["v1,AAAA"; 200].join(" ");
    let name = format!("{base}/webhooks/made-up-{n}");
    let mut failed = Vec::new();
    let check = |failed: &mut Vec<&'static str>, what: &'static str, code: u16| {
        if code == 0 || code >= 500 {
            failed.push(what);
        }
    };
    check(
        &mut failed,
        "forged signature",
        post_webhook(http, &hook, "f", ts, "v1,AAAA", body.clone()).await,
    );
    let sig = sign(key, "s", &body, stale);
    check(
        &mut failed,
        "stale timestamp",
        post_webhook(http, &hook, "s", stale, &sig, body.clone()).await,
    );
    let sig = sign(key, "m", "{not json", ts);
    check(
        &mut failed,
        "malformed body",
        post_webhook(http, &hook, "m", ts, &sig, "{not json").await,
    );
    let big = post_webhook(http, &hook, "b", ts, "v1,AAAA", vec![b'x'; 200 * 1024]).await;
    if big >= 500 {
        failed.push("oversized body");
    }
    check(
        &mut failed,
        "200 signatures",
        post_webhook(http, &hook, "g", ts, &many, body.clone()).await,
    );
    check(
        &mut failed,
        "unknown upstream name",
        post_webhook(http, &name, "x", ts, "v1,AAAA", body).await,
    );
    for (what, bad) in [
        (
            "deadline past year 9999",
            json!({"upstream": "jobs", "operation": format!("d{n}"), "deadline": "100000000years"}),
        ),
        (
            "unknown upstream",
            json!({"upstream": "nope", "operation": "x"}),
        ),
        (
            "dot segments",
            json!({"upstream": "jobs", "operation": "../../admin"}),
        ),
    ] {
        let code = http
            .post(format!("{base}/v1/operations"))
            .json(&bad)
            .send()
            .await
            .map(|r| r.status().as_u16())
            .unwrap_or(0);
        check(&mut failed, what, code);
    }
    failed
}

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count())
}

fn threads(pid: u32) -> u64 {
    procfs::process::Process::new(pid as i32)
        .and_then(|p| p.stat())
        .map_or(0, |s| s.num_threads as u64)
}

pub async fn run(a: SoakArgs) -> BenchResult<()> {
    if a.minutes == 0 || a.rate == 0 {
        return Err("--minutes and --rate must be at least 1".into());
    }
    let bin = harness::hookshim_binary(a.hookshim.as_deref())?;
    let scratch = harness::Scratch::new("soak", a.keep)?;
    let upstream_key = Secret::from_whsec(UPSTREAM_SECRET)?.0;
    let world = Arc::new(World {
        t0: Instant::now(),
        jobs: Mutex::new(HashMap::new()),
        delivered: Mutex::new(HashMap::new()),
        duplicates: AtomicUsize::new(0),
        bad_signatures: AtomicUsize::new(0),
        callbacks_seen: AtomicU64::new(0),
        status_reads: AtomicU64::new(0),
        callback_key: Secret::from_whsec(CALLBACK_SECRET)?.0,
        callback_latency: Mutex::new(Vec::new()),
        register_latency: Mutex::new(Vec::new()),
        delete_finished: std::sync::OnceLock::new(),
    });
    let upstream = harness::serve(
        Router::new()
            .route("/jobs/{job}", get(status))
            .route("/slow/{job}", get(slow))
            .with_state(world.clone()),
    )
    .await?;
    let receiver = harness::serve(
        Router::new()
            .route("/callback", post(callback))
            .with_state(world.clone()),
    )
    .await?;
    let port = harness::free_port()?;
    let base = format!("http://127.0.0.1:{port}");
    let http = harness::http_client(256)?;
    if a.delete_finished {
        let _ = world.delete_finished.set((http.clone(), base.clone()));
    }
    let cfg = config(
        &scratch.path,
        port,
        &format!("http://{upstream}"),
        &format!("http://{receiver}"),
    );
    note(format!("starting {}", bin.display()));
    let shim = Hookshim::start(&bin, &scratch.path, &cfg, base.clone(), &http).await?;
    let pid = shim.pid();
    let end = Instant::now() + Duration::from_secs(a.minutes * 60);

    // The job generator: `rate` registrations a second, each job done 1–20 s later; every
    // other one announced by a signed webhook when it finishes.
    let generator = {
        let (w, http, base, key) = (
            world.clone(),
            http.clone(),
            base.clone(),
            upstream_key.clone(),
        );
        let (rate, slow_rate) = (a.rate, a.slow_rate);
        tokio::spawn(async move {
            let mut n: u64 = 0;
            let mut tick = tokio::time::interval(Duration::from_millis(1000 / rate.max(1) as u64));
            while Instant::now() < end {
                tick.tick().await;
                n += 1;
                let job = format!("j{n}");
                let done_at = w.now_ms() + 1_000 + (n * 7919 % 19_000);
                if let Ok(mut j) = w.jobs.lock() {
                    j.insert(job.clone(), (done_at, w.now_ms()));
                }
                let (w2, http2, base2, key2) = (w.clone(), http.clone(), base.clone(), key.clone());
                tokio::spawn(async move {
                    let t = Instant::now();
                    let r = http2
                        .post(format!("{base2}/v1/operations"))
                        .json(&json!({"upstream": "jobs", "operation": job}))
                        .send()
                        .await;
                    if r.is_ok_and(|r| r.status() == 201) {
                        if let Ok(mut l) = w2.register_latency.lock() {
                            l.push(t.elapsed());
                        }
                    }
                    if n % 2 == 0 {
                        let wait = done_at.saturating_sub(w2.now_ms());
                        tokio::time::sleep(Duration::from_millis(wait)).await;
                        let body = format!(r#"{{"type":"job.completed","data":{{"id":"{job}"}}}}"#);
                        let id = format!("msg_{job}");
                        let ts = SystemClock.now().unix_seconds();
                        post_webhook(
                            &http2,
                            &format!("{base2}/webhooks/jobs"),
                            &id,
                            ts,
                            &sign(&key2, &id, &body, ts),
                            body,
                        )
                        .await;
                    }
                });
                if slow_rate > 0 && n % (rate / slow_rate.min(rate)).max(1) as u64 == 0 {
                    let (http3, base3) = (http.clone(), base.clone());
                    tokio::spawn(async move {
                        let _ = http3
                            .post(format!("{base3}/v1/operations"))
                            .json(&json!({"upstream": "slow", "operation": format!("s{n}")}))
                            .send()
                            .await;
                    });
                }
            }
            n
        })
    };
    let hostile = {
        // A connection per request: hookshim answers an oversized body early and closes the
        // connection, and a pooled client would send the next request down that closed one.
        let http = reqwest::Client::builder()
            .no_proxy()
            .pool_max_idle_per_host(0)
            .timeout(Duration::from_secs(30))
            .build()
            .map_err(|e| e.to_string())?;
        let (base, key) = (base.clone(), upstream_key.clone());
        tokio::spawn(async move {
            let (mut n, mut failures) = (0u64, std::collections::BTreeMap::new());
            while Instant::now() < end {
                n += 1;
                for what in hostile_second(&http, &base, &key, n).await {
                    *failures.entry(what).or_insert(0usize) += 1;
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            (n, failures)
        })
    };

    println!(
        "| minute | RSS MiB | fds | threads | polls scheduled | outbox | register p50 / p99 ms | callback p50 / p99 s | callbacks | duplicates |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|");
    let mut minutes = Vec::new();
    let mut minute = 0;
    while Instant::now() < end {
        tokio::time::sleep(Duration::from_secs(60).min(end - Instant::now())).await;
        minute += 1;
        let (rss, _) = shim.memory()?;
        let ready: Value = match http.get(format!("{base}/readyz")).send().await {
            Ok(r) => r.json().await.unwrap_or(Value::Null),
            Err(e) => json!({"error": e.to_string()}),
        };
        let mut reg =
            std::mem::take(&mut *world.register_latency.lock().map_err(|e| e.to_string())?);
        let mut cb =
            std::mem::take(&mut *world.callback_latency.lock().map_err(|e| e.to_string())?);
        reg.sort();
        cb.sort();
        let m = json!({
            "minute": minute, "rss_mib": mib(rss), "fds": open_fds(pid), "threads": threads(pid),
            "polls_scheduled": ready["polls_scheduled"], "outbox": ready["outbox"],
            "register_p50_ms": ms(quantile(&reg, 0.5)), "register_p99_ms": ms(quantile(&reg, 0.99)),
            "callback_p50_s": quantile(&cb, 0.5).as_secs_f64(), "callback_p99_s": quantile(&cb, 0.99).as_secs_f64(),
            "callbacks": cb.len(), "duplicates": world.duplicates.load(Ordering::Relaxed),
        });
        println!(
            "| {minute} | {:.0} | {} | {} | {} | {} | {:.1} / {:.1} | {:.1} / {:.1} | {} | {} |",
            mib(rss),
            m["fds"],
            m["threads"],
            m["polls_scheduled"],
            m["outbox"],
            ms(quantile(&reg, 0.5)),
            ms(quantile(&reg, 0.99)),
            quantile(&cb, 0.5).as_secs_f64(),
            quantile(&cb, 0.99).as_secs_f64(),
            cb.len(),
            m["duplicates"],
        );
        minutes.push(m);
    }
    let registered = generator.await.map_err(|e| e.to_string())?;
    let (hostile_seconds, hostile_failures) = hostile.await.map_err(|e| e.to_string())?;
    // Let the last jobs finish and their callbacks arrive (retries included).
    tokio::time::sleep(Duration::from_secs(40)).await;
    // Jobs only (`j…`): the slow upstream's operations end `timed_out` and get callbacks too.
    let delivered = world
        .delivered
        .lock()
        .map_err(|e| e.to_string())?
        .keys()
        .filter(|k| k.starts_with('j'))
        .count();
    let rss_first = minutes
        .first()
        .and_then(|m| m["rss_mib"].as_f64())
        .unwrap_or(0.0);
    let rss_last = minutes
        .last()
        .and_then(|m| m["rss_mib"].as_f64())
        .unwrap_or(0.0);
    let rss_max = minutes
        .iter()
        .filter_map(|m| m["rss_mib"].as_f64())
        .fold(0.0, f64::max);
    let rows = vec![
        row("jobs registered", registered.to_string(), ""),
        row(
            "callbacks delivered (first per job)",
            delivered.to_string(),
            "all jobs",
        ),
        row(
            "duplicate callbacks (same job)",
            world.duplicates.load(Ordering::Relaxed).to_string(),
            "only same-id retries of a 500/slow answer",
        ),
        row(
            "bad signatures on callbacks",
            world.bad_signatures.load(Ordering::Relaxed).to_string(),
            "0",
        ),
        row(
            "hostile requests answered 5xx or not at all",
            format!(
                "{} in {hostile_seconds} s {hostile_failures:?}",
                hostile_failures.values().sum::<usize>()
            ),
            "0",
        ),
        row(
            "RSS first / last / max minute (MiB)",
            format!("{rss_first:.0} / {rss_last:.0} / {rss_max:.0}"),
            "flat",
        ),
    ];
    let json = json!({
        "scenario": "soak", "machine": harness::machine(), "args": format!("{a:?}"),
        "minutes": minutes, "registered": registered, "delivered": delivered,
        "duplicates": world.duplicates.load(Ordering::Relaxed),
        "bad_signatures": world.bad_signatures.load(Ordering::Relaxed),
        "hostile_seconds": hostile_seconds, "hostile_failures": hostile_failures,
        "status_reads": world.status_reads.load(Ordering::Relaxed),
    });
    let path = a
        .json
        .clone()
        .unwrap_or_else(|| harness::default_json_path("soak"));
    harness::report(
        &format!(
            "Soak: {} minutes, {} jobs/s, hostile input every second",
            a.minutes, a.rate
        ),
        &rows,
        json,
        &path,
    )?;
    if (delivered as u64) < registered {
        return Err(format!(
            "{} of {registered} jobs got no callback (see {})",
            registered - delivered as u64,
            shim.log_path().display()
        ));
    }
    Ok(())
}
