//! Benchmark 2, end to end: the real hookshim binary, a fake upstream (status endpoint + a
//! sender of Standard-Webhooks-signed webhooks) and a receiver that verifies every callback's
//! signature, all on 127.0.0.1.
//!
//! One operation's path: the upstream marks job `j<i>` done and POSTs a signed webhook to
//! `/webhooks/jobs` → hookshim verifies it, records it and flushes (group commit) before its
//! `200` → the operation is due at once → hookshim GETs `/jobs/j<i>` (answer: done) → terminal
//! transition + outbox entry, flushed → signed callback → the receiver verifies it (HMAC) and
//! answers 204. Every operation is registered before any timed phase.
//!
//! Phases: warm-up; **saturation** (closed loop: `--concurrency` webhooks in flight, as many
//! operations as hookshim completes); **latency** (open loop at `--rate` operations/s for
//! `--seconds`; latency is measured from each webhook's *scheduled* send time, so a harness
//! that falls behind counts against hookshim, never for it).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use clap::Args;
use hookshim::clock::{Clock, SystemClock};
use hookshim::signing::{sign_v1, verify_standard};
use hookshim::values::Secret;
use serde_json::{Value, json};
use tokio::sync::Semaphore;

use crate::harness::{
    self, BenchResult, CALLBACK_SECRET, Hookshim, UPSTREAM_SECRET, UPSTREAM_SECRET_ENV, ms, note,
    quantile, row,
};

#[derive(Args, Debug)]
pub struct E2eArgs {
    /// Operations pushed through at saturation.
    #[arg(long, default_value_t = 30_000)]
    pub ops: usize,
    /// Webhooks in flight at once during the saturation phase.
    #[arg(long, default_value_t = 256)]
    pub concurrency: usize,
    /// Open-loop rate of the latency phase (operations per second).
    #[arg(long, default_value_t = 1_000)]
    pub rate: u32,
    /// Length of the latency phase.
    #[arg(long, default_value_t = 15)]
    pub seconds: u64,
    /// Operations sent before the timed phases (connection pools, caches).
    #[arg(long, default_value_t = 2_000)]
    pub warmup: usize,
    /// hookshim's `workers.polls_in_flight` (its default: 64).
    #[arg(long, default_value_t = 64)]
    pub polls_in_flight: usize,
    /// hookshim's `workers.deliveries_in_flight` (its default: 64).
    #[arg(long, default_value_t = 64)]
    pub deliveries_in_flight: usize,
    /// Where to write the JSON (default: target/bench/e2e.json).
    #[arg(long)]
    pub json: Option<std::path::PathBuf>,
    /// The hookshim binary (default: build and use target/release/hookshim).
    #[arg(long)]
    pub hookshim: Option<std::path::PathBuf>,
    /// Keep the scratch directory (config, data, logs) for inspection.
    #[arg(long)]
    pub keep: bool,
    /// Map the webhook's event type to the outcome (`webhook.events`), so the webhook decides
    /// by itself: webhook → durable terminal transition → callback, no status read.
    #[arg(long)]
    pub decide_by_event: bool,
}

/// Shared by the fake upstream, the sender and the receiver. Operation `i` is upstream job `j<i>`.
struct World {
    t0: Instant,
    /// The upstream's truth: job `i` is done.
    done: Vec<AtomicBool>,
    /// When the webhook for `i` was (to be) sent, ns since `t0`.
    sent_at: Vec<AtomicU64>,
    /// When the callback for `i` was received, ns since `t0` (0: not yet).
    received_at: Vec<AtomicU64>,
    received: AtomicUsize,
    duplicates: AtomicUsize,
    bad_signatures: AtomicUsize,
    unexpected: AtomicUsize,
    status_reads: AtomicU64,
    callback_key: Vec<u8>,
}

impl World {
    fn now_ns(&self) -> u64 {
        self.t0.elapsed().as_nanos() as u64
    }
}

fn job_index(name: &str) -> Option<usize> {
    name.strip_prefix('j')?.parse().ok()
}

async fn status(State(w): State<Arc<World>>, Path(job): Path<String>) -> impl IntoResponse {
    w.status_reads.fetch_add(1, Ordering::Relaxed);
    match job_index(&job).and_then(|i| w.done.get(i)) {
        None => (
            StatusCode::NOT_FOUND,
            axum::Json(json!({"error": "no such job"})),
        ),
        Some(d) if d.load(Ordering::Acquire) => (
            StatusCode::OK,
            axum::Json(
                json!({"id": job, "state": "done", "output": {"url": "https://cdn.example/x.mp4"}}),
            ),
        ),
        Some(_) => (
            StatusCode::OK,
            axum::Json(json!({"id": job, "state": "running"})),
        ),
    }
}

async fn callback(State(w): State<Arc<World>>, headers: HeaderMap, body: Bytes) -> StatusCode {
    let now = w.now_ns().max(1);
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
    let v: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let slot = v["data"]["operation"]
        .as_str()
        .and_then(job_index)
        .and_then(|i| w.received_at.get(i));
    match slot {
        Some(slot) if v["type"] == "operation.succeeded" => {
            if slot
                .compare_exchange(0, now, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
            {
                w.received.fetch_add(1, Ordering::AcqRel);
            } else {
                w.duplicates.fetch_add(1, Ordering::Relaxed);
            }
        }
        _ => {
            w.unexpected.fetch_add(1, Ordering::Relaxed);
        }
    }
    StatusCode::NO_CONTENT
}

/// The upstream finishes job `i`: the status endpoint says done, then the signed webhook goes out.
async fn send_webhook(
    w: &World,
    http: &reqwest::Client,
    url: &str,
    key: &[u8],
    i: usize,
) -> BenchResult<()> {
    w.done[i].store(true, Ordering::Release);
    let body = format!(r#"{{"type":"job.completed","data":{{"id":"j{i}"}}}}"#);
    let id = format!("msg_{i}");
    let ts = SystemClock.now().unix_seconds();
    let sig = format!("v1,{}", sign_v1(key, &id, ts, body.as_bytes()));
    let r = http
        .post(url)
        .header("content-type", "application/json")
        .header("webhook-id", id)
        .header("webhook-timestamp", ts.to_string())
        .header("webhook-signature", sig)
        .body(body)
        .send()
        .await
        .map_err(|e| format!("webhook for j{i}: {e}"))?;
    if r.status() != 200 {
        let s = r.status();
        let text = r.text().await.unwrap_or_default();
        return Err(format!("webhook for j{i}: hookshim answered {s}: {text}"));
    }
    Ok(())
}

fn config(
    data: &std::path::Path,
    port: u16,
    upstream: &str,
    receiver: &str,
    a: &E2eArgs,
) -> String {
    format!(
        r#"# Generated by hookshim-bench e2e.
[server]
listen = "127.0.0.1:{port}"

[store]
path = "{data}"

[callbacks]
default_url = "{receiver}/callback"

[workers]
polls_in_flight = {polls}
deliveries_in_flight = {deliveries}

[upstreams.jobs]
base_url = "{upstream}/"
status_path = "jobs/{{operation}}"
status_field = "/state"
succeeded = ["done"]
failed = ["error"]
result_field = "/output"
# The benchmark measures hookshim, not an upstream's budget.
rate = {{ per_second = 1000000, burst = 100000 }}
poll = {{ initial = "1s", multiplier = 1.5, max = "30s", deadline = "24h" }}

[upstreams.jobs.webhook]
scheme = "standard-webhooks"
secret_env = "{secret_env}"
operation_field = "/data/id"
safety_poll = "1h"
{events}
"#,
        events = if a.decide_by_event {
            r#"events = { "job.completed" = "succeeded" }"#
        } else {
            ""
        },
        data = data.join("data").display(),
        polls = a.polls_in_flight,
        deliveries = a.deliveries_in_flight,
        secret_env = UPSTREAM_SECRET_ENV,
    )
}

/// Register operations `range` (jobs `j<i>`), `concurrency` requests at a time.
async fn register(
    http: &reqwest::Client,
    base: &str,
    range: std::ops::Range<usize>,
    concurrency: usize,
) -> BenchResult<()> {
    let slots = Arc::new(Semaphore::new(concurrency));
    let mut tasks = tokio::task::JoinSet::new();
    for i in range {
        let permit = slots
            .clone()
            .acquire_owned()
            .await
            .map_err(|e| e.to_string())?;
        let (http, url) = (http.clone(), format!("{base}/v1/operations"));
        tasks.spawn(async move {
            let r = http
                .post(url)
                .json(&json!({"upstream": "jobs", "operation": format!("j{i}")}))
                .send()
                .await
                .map_err(|e| format!("register j{i}: {e}"))?;
            drop(permit);
            if r.status() != 201 {
                return Err(format!("register j{i}: hookshim answered {}", r.status()));
            }
            Ok(())
        });
        while let Some(done) = tasks.try_join_next() {
            done.map_err(|e| e.to_string())??;
        }
    }
    while let Some(done) = tasks.join_next().await {
        done.map_err(|e| e.to_string())??;
    }
    Ok(())
}

/// Wait until every callback in `range` has arrived (or `limit` passes).
async fn wait_received(w: &World, target: usize, limit: Duration) -> BenchResult<()> {
    let start = Instant::now();
    while w.received.load(Ordering::Acquire) < target {
        if start.elapsed() > limit {
            return Err(format!(
                "only {} of {target} callbacks arrived within {limit:?}",
                w.received.load(Ordering::Acquire)
            ));
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    Ok(())
}

pub async fn run(a: E2eArgs) -> BenchResult<()> {
    if a.ops == 0 || a.concurrency == 0 || a.rate == 0 || a.seconds == 0 {
        return Err("--ops, --concurrency, --rate and --seconds must be at least 1".into());
    }
    let bin = harness::hookshim_binary(a.hookshim.as_deref())?;
    let scratch = harness::Scratch::new("e2e", a.keep)?;
    let latency_ops = a.rate as usize * a.seconds as usize;
    let total = a.warmup + a.ops + latency_ops;
    let callback_key = Secret::from_whsec(CALLBACK_SECRET)?.0;
    let upstream_key = Secret::from_whsec(UPSTREAM_SECRET)?.0;
    let world = Arc::new(World {
        t0: Instant::now(),
        done: (0..total).map(|_| AtomicBool::new(false)).collect(),
        sent_at: (0..total).map(|_| AtomicU64::new(0)).collect(),
        received_at: (0..total).map(|_| AtomicU64::new(0)).collect(),
        received: AtomicUsize::new(0),
        duplicates: AtomicUsize::new(0),
        bad_signatures: AtomicUsize::new(0),
        unexpected: AtomicUsize::new(0),
        status_reads: AtomicU64::new(0),
        callback_key,
    });
    let upstream = harness::serve(
        Router::new()
            .route("/jobs/{job}", get(status))
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
    let http = harness::http_client(a.concurrency.max(256))?;
    let cfg = config(
        &scratch.path,
        port,
        &format!("http://{upstream}"),
        &format!("http://{receiver}"),
        &a,
    );
    note(format!("starting {}", bin.display()));
    let mut shim = Hookshim::start(&bin, &scratch.path, &cfg, base.clone(), &http).await?;

    note(format!("registering {total} operations"));
    let t = Instant::now();
    register(&http, &base, 0..total, 128).await?;
    let reg_secs = t.elapsed().as_secs_f64();
    note(format!(
        "registered in {reg_secs:.1}s ({:.0}/s)",
        total as f64 / reg_secs
    ));

    let hook_url = format!("{base}/webhooks/jobs");
    // Closed loop over `range` with `concurrency` webhooks in flight.
    let closed_loop = |range: std::ops::Range<usize>, concurrency: usize| {
        let (w, http, url, key) = (
            world.clone(),
            http.clone(),
            hook_url.clone(),
            upstream_key.clone(),
        );
        async move {
            let next = Arc::new(AtomicUsize::new(range.start));
            let mut tasks = tokio::task::JoinSet::new();
            for _ in 0..concurrency {
                let (w, http, url, key, next, end) = (
                    w.clone(),
                    http.clone(),
                    url.clone(),
                    key.clone(),
                    next.clone(),
                    range.end,
                );
                tasks.spawn(async move {
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        if i >= end {
                            return Ok::<(), String>(());
                        }
                        w.sent_at[i].store(w.now_ns(), Ordering::Relaxed);
                        send_webhook(&w, &http, &url, &key, i).await?;
                    }
                });
            }
            while let Some(r) = tasks.join_next().await {
                r.map_err(|e| e.to_string())??;
            }
            Ok::<(), String>(())
        }
    };

    note(format!("warm-up: {} operations", a.warmup));
    closed_loop(0..a.warmup, 64).await?;
    wait_received(&world, a.warmup, Duration::from_secs(120)).await?;
    tokio::time::sleep(Duration::from_secs(1)).await;

    // Saturation.
    note(format!(
        "saturation: {} operations, {} webhooks in flight",
        a.ops, a.concurrency
    ));
    let sat = a.warmup..a.warmup + a.ops;
    let cpu0 = shim.cpu()?;
    let self0 = harness::cpu_of(std::process::id())?;
    let reads0 = world.status_reads.load(Ordering::Relaxed);
    let t_start = world.now_ns();
    closed_loop(sat.clone(), a.concurrency).await?;
    let t_acked = world.now_ns();
    wait_received(&world, sat.end, Duration::from_secs(600)).await?;
    let t_end = sat
        .clone()
        .map(|i| world.received_at[i].load(Ordering::Acquire))
        .max()
        .unwrap_or(t_start);
    let cpu1 = shim.cpu()?;
    let self1 = harness::cpu_of(std::process::id())?;
    let reads = world.status_reads.load(Ordering::Relaxed) - reads0;
    let sat_secs = (t_end - t_start) as f64 / 1e9;
    let sat_rate = a.ops as f64 / sat_secs;
    let ack_rate = a.ops as f64 / ((t_acked - t_start) as f64 / 1e9);
    let shim_cpu_per_op = (cpu1 - cpu0).as_secs_f64() / a.ops as f64;
    let harness_cpu = (self1 - self0).as_secs_f64();
    let mut sat_lat: Vec<Duration> = sat
        .clone()
        .map(|i| {
            Duration::from_nanos(
                world.received_at[i].load(Ordering::Acquire)
                    - world.sent_at[i].load(Ordering::Relaxed),
            )
        })
        .collect();
    sat_lat.sort();
    note(format!("saturation: {sat_rate:.0} operations/s"));
    tokio::time::sleep(Duration::from_secs(2)).await;

    // Latency at a fixed open-loop rate.
    note(format!(
        "latency: {} operations/s for {}s (open loop)",
        a.rate, a.seconds
    ));
    let lat = sat.end..total;
    let interval = Duration::from_secs_f64(1.0 / a.rate as f64);
    let start = tokio::time::Instant::now() + Duration::from_millis(10);
    let start_ns = world.now_ns() + 10_000_000;
    let mut max_lag = Duration::ZERO;
    let mut sends = tokio::task::JoinSet::new();
    for (k, i) in lat.clone().enumerate() {
        let due = start + interval * k as u32;
        tokio::time::sleep_until(due).await;
        max_lag = max_lag.max(tokio::time::Instant::now().saturating_duration_since(due));
        world.sent_at[i].store(
            start_ns + (interval * k as u32).as_nanos() as u64,
            Ordering::Relaxed,
        );
        let (w, http, url, key) = (
            world.clone(),
            http.clone(),
            hook_url.clone(),
            upstream_key.clone(),
        );
        sends.spawn(async move { send_webhook(&w, &http, &url, &key, i).await });
        while let Some(r) = sends.try_join_next() {
            r.map_err(|e| e.to_string())??;
        }
    }
    while let Some(r) = sends.join_next().await {
        r.map_err(|e| e.to_string())??;
    }
    wait_received(&world, total, Duration::from_secs(120)).await?;
    let mut lats: Vec<Duration> = lat
        .clone()
        .map(|i| {
            Duration::from_nanos(
                world.received_at[i]
                    .load(Ordering::Acquire)
                    .saturating_sub(world.sent_at[i].load(Ordering::Relaxed)),
            )
        })
        .collect();
    // Per second of the phase: the worst latency (stalls show up as a few bad seconds).
    let mut worst_by_second = vec![Duration::ZERO; a.seconds as usize + 1];
    for (k, i) in lat.clone().enumerate() {
        let sec = (k / a.rate as usize).min(a.seconds as usize);
        let l = Duration::from_nanos(
            world.received_at[i]
                .load(Ordering::Acquire)
                .saturating_sub(world.sent_at[i].load(Ordering::Relaxed)),
        );
        worst_by_second[sec] = worst_by_second[sec].max(l);
    }
    worst_by_second.truncate(a.seconds as usize);
    let bad_seconds = worst_by_second
        .iter()
        .filter(|d| **d > Duration::from_millis(20))
        .count();
    lats.sort();
    let (p50, p99, max) = (
        quantile(&lats, 0.5),
        quantile(&lats, 0.99),
        *lats.last().unwrap_or(&Duration::ZERO),
    );

    // hookshim's own count, as a cross-check.
    let metrics = http
        .get(format!("{base}/metrics"))
        .send()
        .await
        .map_err(|e| e.to_string())?
        .text()
        .await
        .map_err(|e| e.to_string())?;
    let delivered = metric(
        &metrics,
        "hookshim_callback_attempts_total{result=\"delivered\"}",
    );
    let (rss, peak) = shim.memory()?;
    shim.terminate(Duration::from_secs(30)).await?;

    let bad = world.bad_signatures.load(Ordering::Relaxed);
    let dups = world.duplicates.load(Ordering::Relaxed);
    let unexpected = world.unexpected.load(Ordering::Relaxed);
    let verified = world.received.load(Ordering::Relaxed);
    let verdict = |ok: bool| if ok { "met" } else { "MISSED" };
    let rows = vec![
        row(
            "saturation: operations completed/s",
            format!("{sat_rate:.0}"),
            format!("≥ 5000 ({})", verdict(sat_rate >= 5000.0)),
        ),
        row(
            "saturation: webhooks acknowledged/s",
            format!("{ack_rate:.0}"),
            "",
        ),
        row(
            "saturation: webhook→callback p50 / p99 (ms)",
            format!(
                "{} / {}",
                ms(quantile(&sat_lat, 0.5)),
                ms(quantile(&sat_lat, 0.99))
            ),
            "(queueing, not a target)",
        ),
        row(
            "saturation: hookshim CPU per operation (ms)",
            format!("{:.3}", shim_cpu_per_op * 1e3),
            "",
        ),
        row(
            "saturation: harness CPU share",
            format!(
                "{:.0} %",
                100.0 * harness_cpu / (harness_cpu + (cpu1 - cpu0).as_secs_f64())
            ),
            "(same 2 cores)",
        ),
        row(
            format!("latency @ {}/s: p50 (ms)", a.rate),
            format!("{}", ms(p50)),
            "",
        ),
        row(
            format!("latency @ {}/s: p99 (ms)", a.rate),
            format!("{}", ms(p99)),
            format!("≤ 20 ({})", verdict(p99 <= Duration::from_millis(20))),
        ),
        row(
            format!("latency @ {}/s: max (ms)", a.rate),
            format!("{}", ms(max)),
            "",
        ),
        row(
            "latency: seconds with any operation > 20 ms",
            format!("{bad_seconds} of {}", a.seconds),
            "(stalls vs spread)",
        ),
        row(
            "latency: sender max lag (ms)",
            format!("{}", ms(max_lag)),
            "(harness)",
        ),
        row(
            "callbacks verified / bad signature / duplicate",
            format!("{verified} / {bad} / {dups}"),
            format!("{total} / 0 / 0"),
        ),
        row(
            "status reads (saturation)",
            format!("{reads}"),
            // One read per operation, or none when the event decides.
            format!("{}", if a.decide_by_event { 0 } else { a.ops }),
        ),
        row(
            "registration (operations/s)",
            format!("{:.0}", total as f64 / reg_secs),
            "",
        ),
        row(
            "hookshim RSS / peak (MiB)",
            format!("{} / {}", harness::mib(rss), harness::mib(peak)),
            "",
        ),
    ];
    let json = json!({
        "scenario": "e2e",
        "machine": harness::machine(),
        "args": {"ops": a.ops, "concurrency": a.concurrency, "rate": a.rate, "seconds": a.seconds,
                 "warmup": a.warmup, "polls_in_flight": a.polls_in_flight,
                 "deliveries_in_flight": a.deliveries_in_flight,
                 "decide_by_event": a.decide_by_event},
        "saturation": {"ops": a.ops, "seconds": sat_secs, "ops_per_second": sat_rate,
                       "webhooks_acked_per_second": ack_rate,
                       "latency_ms": {"p50": ms(quantile(&sat_lat, 0.5)), "p99": ms(quantile(&sat_lat, 0.99)),
                                      "max": ms(*sat_lat.last().unwrap_or(&Duration::ZERO))},
                       "hookshim_cpu_seconds": (cpu1 - cpu0).as_secs_f64(),
                       "harness_cpu_seconds": harness_cpu, "status_reads": reads},
        "latency": {"rate": a.rate, "ops": latency_ops,
                    "ms": {"p50": ms(p50), "p90": ms(quantile(&lats, 0.9)), "p99": ms(p99),
                           "p999": ms(quantile(&lats, 0.999)), "max": ms(max)},
                    "sender_max_lag_ms": ms(max_lag),
                    "worst_ms_by_second": worst_by_second.iter().map(|d| ms(*d)).collect::<Vec<_>>()},
        "callbacks": {"verified": verified, "bad_signature": bad, "duplicate": dups,
                      "unexpected": unexpected, "hookshim_delivered_metric": delivered},
        "registration_per_second": total as f64 / reg_secs,
        "hookshim_rss_bytes": rss, "hookshim_peak_rss_bytes": peak,
        "targets": {"ops_per_second": 5000, "p99_ms_at_1000": 20},
    });
    let path = a
        .json
        .clone()
        .unwrap_or_else(|| harness::default_json_path("e2e"));
    harness::report(
        "hookshim-bench e2e (real binary, loopback, durability on)",
        &rows,
        json,
        &path,
    )?;
    if bad > 0 || unexpected > 0 || verified != total {
        return Err(format!(
            "{bad} callbacks failed verification, {unexpected} were unexpected, {verified} of {total} verified"
        ));
    }
    Ok(())
}

/// A counter's value from Prometheus text (0 if absent).
pub fn metric(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}
