//! The real binary, killed: `kill -9` while callbacks are in flight loses no callback and never
//! changes a callback's webhook-id or body (at-least-once, same id, same content, a bounded
//! number of repeats); `kill -9` right after a `201` or a webhook's `2xx` loses nothing
//! acknowledged; SIGTERM exits 0 and keeps every operation. The fake upstream and the verifying
//! receiver run in the test process; hookshim runs as a child process on its own data directory.
//!
//! The upstreams here cannot cover for a lost write: a job's outcome is shown only until its
//! callback has been sent (then the job is gone: 404), and a webhook-decided job is never
//! readable at all. A terminal transition that a crash undid after its callback went out would
//! be polled again, read as 404 and end `failed/upstream_not_found` — a second, different body
//! under the same webhook-id, which these tests refuse.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::common::*;
use serde_json::{Value, json};

const SHIM_CONFIG: &str = r#"
[server]
listen = "127.0.0.1:{PORT}"

[store]
path = "{DATA}"
cache = "8MiB"

[callbacks]
default_url = "{RECV}/callback"
timeout = "5s"
retry_schedule = ["100ms", "200ms", "300ms", "500ms", "1s", "1s", "1s"]

[workers]
polls_in_flight = 16
deliveries_in_flight = 4

[upstreams.jobs]
base_url = "{UP}/"
status_path = "jobs/{operation}"
status_field = "/state"
succeeded = ["done"]
failed = ["error"]
result_field = "/output"
not_found_after = 2
rate = { per_second = 1000, burst = 100 }
# Polls ~300 ms apart: few enough bookkeeping writes that sled's IO buffer is not written out
# on its own between a terminal transition and the kill, so only the flush before the
# callback makes the transition survive a kill -9 (faster polling hid a missing flush).
poll = { initial = "300ms", multiplier = 1.5, max = "300ms", jitter = 0.1, deadline = "1h" }
"#;

/// `workers.deliveries_in_flight` in [`SHIM_CONFIG`].
const DELIVERIES_IN_FLIGHT: usize = 4;

/// How long a delivery's result may wait for a flush nobody asked for: the group-commit
/// flusher's idle period (1 s, `store/commit.rs`), plus slack for a slow flush on a busy CI box.
const UNFLUSHED_RESULT_WINDOW: Duration = Duration::from_millis(1_500);

/// A `jobs` upstream that forgets: `GET /jobs/{op}` answers the body set for `op` until the
/// receiver has heard a callback about `op`, then `404` forever. Every status request is
/// recorded.
#[derive(Clone)]
struct ForgetfulUpstream {
    url: String,
    bodies: Arc<Mutex<HashMap<String, Value>>>,
    after_callback: Arc<Mutex<Vec<String>>>,
}

impl ForgetfulUpstream {
    async fn start(recv: &Receiver) -> ForgetfulUpstream {
        use axum::http::StatusCode;
        use axum::response::IntoResponse;
        let bodies: Arc<Mutex<HashMap<String, Value>>> = Arc::default();
        let after_callback: Arc<Mutex<Vec<String>>> = Arc::default();
        let (b, a, r) = (bodies.clone(), after_callback.clone(), recv.clone());
        let app = axum::Router::new().route(
            "/jobs/{op}",
            axum::routing::get(
                move |axum::extract::Path(op): axum::extract::Path<String>| {
                    let (b, a, r) = (b.clone(), a.clone(), r.clone());
                    async move {
                        let told = r
                            .state
                            .lock()
                            .unwrap()
                            .calls
                            .iter()
                            .any(|c| c.body["data"]["operation"] == op.as_str());
                        if told {
                            a.lock().unwrap().push(op);
                            return (StatusCode::NOT_FOUND, axum::Json(json!({"error": "gone"})))
                                .into_response();
                        }
                        match b.lock().unwrap().get(&op) {
                            Some(v) => (StatusCode::OK, axum::Json(v.clone())).into_response(),
                            None => (
                                StatusCode::NOT_FOUND,
                                axum::Json(json!({"error": "no such job"})),
                            )
                                .into_response(),
                        }
                    }
                },
            ),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        ForgetfulUpstream {
            url,
            bodies,
            after_callback,
        }
    }

    fn set(&self, op: &str, body: Value) {
        self.bodies.lock().unwrap().insert(op.to_string(), body);
    }

    /// Operations read again after their callback had been sent.
    fn read_after_callback(&self) -> Vec<String> {
        self.after_callback.lock().unwrap().clone()
    }
}

/// A child hookshim on this file's config, against `up` and `recv`.
fn setup(up: &FakeUpstream, recv: &Receiver) -> ProcSetup {
    setup_at(&up.url, recv)
}

/// A child hookshim on this file's config, against the upstream at `up` and `recv`.
fn setup_at(up: &str, recv: &Receiver) -> ProcSetup {
    ProcSetup::new(&SHIM_CONFIG.replace("{UP}", up).replace("{RECV}", &recv.url))
}

/// An HTTP client that gives up after 30 s: a request hookshim never answers fails the test
/// instead of hanging it (seen once when the shared disk filled up and a flush hung).
fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

async fn get_op(http: &reqwest::Client, url: &str, id: &str) -> (u16, Value) {
    let r = http
        .get(format!("{url}/v1/operations/{id}"))
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

/// Calls grouped by hookshim operation id (`data.id`).
fn calls_by_op(recv: &Receiver) -> BTreeMap<String, Vec<Call>> {
    let mut m: BTreeMap<String, Vec<Call>> = BTreeMap::new();
    for c in recv.calls() {
        let id = c.body["data"]["id"].as_str().unwrap_or("").to_string();
        m.entry(id).or_default().push(c);
    }
    m
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_mid_delivery_loses_no_callback_and_keeps_webhook_ids() {
    const N: usize = 200;
    let recv = Receiver::start().await;
    // The outcome can be read only until its callback went out: a transition lost after that
    // would be re-polled into `failed/upstream_not_found`, not re-derived.
    let up = ForgetfulUpstream::start(&recv).await;
    // Slow answers, 4 deliveries in flight: callbacks are mid-request when the kill comes.
    recv.set_default(Behaviour::Slow(Duration::from_millis(50)));
    let mut setup = setup_at(&up.url, &recv);
    let http = client();
    let mut proc1 = setup.spawn();
    proc1.wait_healthy(&http, &setup.url).await;

    let ops: Vec<String> = (0..N).map(|i| format!("c{i}")).collect();
    for op in &ops {
        up.set(op, json!({"state": "running"}));
    }
    let ids = register_all(&http, &setup.url, &ops).await;
    let by_id: BTreeMap<&str, &str> = ids.iter().map(|(o, i)| (i.as_str(), o.as_str())).collect();
    for op in &ops {
        up.set(op, json!({"state": "done", "output": {"op": op}}));
    }

    // Some, but not all, callbacks have arrived: kill -9 (well within the flusher's idle second
    // after the last registration, so a transition nobody flushed would still be unflushed).
    eventually(
        Duration::from_secs(30),
        "10 operations to have a callback",
        || async { (calls_by_op(&recv).len() >= 10).then_some(()) },
    )
    .await;
    let killed = proc1.kill9();
    let kill_at = Instant::now();
    let at_kill = calls_by_op(&recv);
    let calls_at_kill: usize = at_kill.values().map(Vec::len).sum();
    assert!(
        at_kill.len() < N,
        "the kill came too late to test anything: all {N} callbacks had arrived"
    );
    assert!(!killed.success(), "SIGKILL is not a clean exit: {killed}");
    // The repeats this kill may cause: the deliveries in flight (their answer may not have
    // been read), plus the delivered ones whose result no flush had covered yet (a delivery's
    // result is written without waiting for the disk; the idle flush covers it within 1 s).
    let recently_answered = at_kill
        .values()
        .filter(|cs| {
            cs.iter()
                .any(|c| kill_at.duration_since(c.at) <= UNFLUSHED_RESULT_WINDOW)
        })
        .count();
    let duplicate_bound = DELIVERIES_IN_FLIGHT + recently_answered;

    // Restart on the same data dir and config.
    let restarted = Instant::now();
    let mut proc2 = setup.spawn();
    proc2.wait_healthy(&http, &setup.url).await;
    eventually(
        Duration::from_secs(60),
        "every operation to have a verified callback after the restart",
        || async {
            let m = calls_by_op(&recv);
            ids.values()
                .all(|id| m.get(id).is_some_and(|cs| cs.iter().any(|c| c.verified)))
                .then_some(())
        },
    )
    .await;
    let recovered_in = restarted.elapsed();

    // Every record says delivered (the restart re-sent what the kill interrupted).
    for (op, id) in &ids {
        let rec = eventually(
            Duration::from_secs(10),
            &format!("{op} ({id}) to be delivered"),
            || async {
                let (code, rec) = get_op(&http, &setup.url, id).await;
                (code == 200 && rec["delivery"]["state"] == "delivered").then_some(rec)
            },
        )
        .await;
        assert_eq!(
            rec["status"], "succeeded",
            "{op}: not the outcome its callback announced (a terminal transition was lost and \
             re-polled from a forgetful upstream): {rec}"
        );
        assert_eq!(rec["operation"], op.as_str(), "{rec}");
    }
    // Give any further duplicate a chance to arrive: longer than the first two retry steps
    // (100 ms, 200 ms) and the forgetful upstream's two 404 reads (`not_found_after = 2`, polls
    // ~300 ms apart) that a lost transition would take to end in a second callback.
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    let all = calls_by_op(&recv);
    let mut duplicates = 0;
    for (op, id) in &ids {
        let calls = all.get(id).unwrap();
        for c in calls {
            assert!(
                c.verified,
                "{op}: callback failed standardwebhooks verification: {c:?}"
            );
            // The true outcome, never one re-derived from a forgetful upstream.
            assert_eq!(c.body["type"], "operation.succeeded", "{op}: {:?}", c.body);
            assert_eq!(c.body["data"]["status"], "succeeded", "{op}: {:?}", c.body);
            assert_eq!(c.body["data"]["upstream_status"], "done", "{op}");
            assert_eq!(c.body["data"]["result"]["op"], op.as_str(), "{op}");
            assert!(c.body["data"]["error"].is_null(), "{op}: {:?}", c.body);
        }
        let webhook_ids: BTreeSet<&str> = calls.iter().map(|c| c.webhook_id.as_str()).collect();
        assert_eq!(
            webhook_ids.len(),
            1,
            "{op}: every attempt must carry the same webhook-id, got {webhook_ids:?}"
        );
        assert_eq!(
            webhook_ids.iter().next().copied(),
            Some(format!("{id}_terminal").as_str())
        );
        // Every delivery of one webhook-id carries the same event, byte for byte.
        for c in &calls[1..] {
            assert_eq!(
                String::from_utf8_lossy(&c.raw),
                String::from_utf8_lossy(&calls[0].raw),
                "{op}: a repeat of {} differs from the first delivery",
                calls[0].webhook_id
            );
        }
        // One kill can interrupt a delivery once: at most one repeat per operation.
        assert!(
            calls.len() <= 2,
            "{op}: {} deliveries across one kill",
            calls.len()
        );
        duplicates += calls.len() - 1;
    }
    assert!(
        duplicates <= duplicate_bound,
        "{duplicates} repeated deliveries after one kill; at most {duplicate_bound} may repeat \
         ({DELIVERIES_IN_FLIGHT} in flight + {recently_answered} answered within \
         {UNFLUSHED_RESULT_WINDOW:?} before the kill)"
    );
    assert!(
        up.read_after_callback().is_empty(),
        "operations polled again after their callback went out (a terminal transition was \
         lost): {:?}",
        up.read_after_callback()
    );
    // No callback about anything we did not register.
    for id in all.keys() {
        assert!(
            by_id.contains_key(id.as_str()),
            "callback for unknown {id:?}"
        );
    }
    let total: usize = all.values().map(Vec::len).sum();
    println!(
        "crash figures: at kill {} of {N} operations had a callback ({calls_at_kill} calls); \
         after restart {total} calls in all, {duplicates} duplicates (same webhook-id, same body; \
         bound {duplicate_bound}); every operation had a verified callback {recovered_in:?} after \
         the restart",
        at_kill.len()
    );

    // A second kill, once every callback is delivered and the newest answer is older than a
    // flush: nothing is in flight and every result was recorded, so the bound is zero — a
    // restart must send nothing again.
    let newest = recv.calls().iter().map(|c| c.at).max().unwrap();
    tokio::time::sleep(UNFLUSHED_RESULT_WINDOW.saturating_sub(newest.elapsed())).await;
    let before_kill = recv.calls().len();
    let killed = proc2.kill9();
    assert!(!killed.success(), "{killed}");
    let mut proc3 = setup.spawn();
    proc3.wait_healthy(&http, &setup.url).await;
    // Outbox entries resume at once at start; wait past two retry steps as well.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let again: Vec<String> = recv.calls()[before_kill..]
        .iter()
        .map(|c| c.webhook_id.clone())
        .collect();
    assert!(
        again.is_empty(),
        "{} callbacks sent again after a kill with nothing in flight and every delivery older \
         than a flush (bound 0): {again:?}",
        again.len()
    );
    drop(proc3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_exits_cleanly_and_keeps_every_operation() {
    const N: usize = 20;
    let up = FakeUpstream::start().await;
    let recv = Receiver::start().await;
    recv.set_default(Behaviour::Slow(Duration::from_millis(50)));
    let mut setup = setup(&up, &recv);
    let http = client();
    let mut proc1 = setup.spawn();
    proc1.wait_healthy(&http, &setup.url).await;

    // Half finish before the signal (their callbacks may be in flight), half are still running.
    let ops: Vec<String> = (0..N).map(|i| format!("t{i}")).collect();
    for (i, op) in ops.iter().enumerate() {
        let state = if i % 2 == 0 { "done" } else { "running" };
        up.set(&format!("jobs/{op}"), json!({"state": state}));
    }
    let ids = register_all(&http, &setup.url, &ops).await;
    eventually(Duration::from_secs(10), "a first callback", || async {
        (!recv.calls().is_empty()).then_some(())
    })
    .await;

    let term = Command::new("kill")
        .arg("-TERM")
        .arg(proc1.pid().to_string())
        .status()
        .expect("run kill -TERM");
    assert!(term.success());
    let status = proc1
        .wait_exit(Duration::from_secs(10))
        .await
        .expect("hookshim exits within 10s of SIGTERM");
    assert_eq!(status.code(), Some(0), "clean exit on SIGTERM: {status}");
    let log: String = setup.logs[..2]
        .iter()
        .map(|p| std::fs::read_to_string(p).unwrap_or_default())
        .collect();
    assert!(
        log.contains("hookshim stopped"),
        "the shutdown ran to the end:\n{log}"
    );

    // Restart: everything is still there, and everything completes.
    let mut proc2 = setup.spawn();
    proc2.wait_healthy(&http, &setup.url).await;
    for (op, id) in &ids {
        let (code, rec) = get_op(&http, &setup.url, id).await;
        assert_eq!(code, 200, "{op} survived the restart: {rec}");
        assert_eq!(rec["operation"], op.as_str());
    }
    for op in &ops {
        up.set(&format!("jobs/{op}"), json!({"state": "done"}));
    }
    for (op, id) in &ids {
        eventually(
            Duration::from_secs(20),
            &format!("{op} ({id}) to succeed and be delivered"),
            || async {
                let (_, rec) = get_op(&http, &setup.url, id).await;
                (rec["status"] == "succeeded" && rec["delivery"]["state"] == "delivered")
                    .then_some(())
            },
        )
        .await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let all = calls_by_op(&recv);
    for (op, id) in &ids {
        let calls = all.get(id).map(Vec::as_slice).unwrap_or(&[]);
        assert!(!calls.is_empty(), "{op}: no callback");
        assert!(calls.iter().all(|c| c.verified), "{op}: {calls:?}");
        // A graceful stop finishes in-flight callbacks and records them: nothing is re-sent.
        assert_eq!(
            calls.len(),
            1,
            "{op}: exactly one callback across a graceful restart: {calls:?}"
        );
    }
    drop(proc2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_the_instant_the_last_201_arrives_loses_no_registration() {
    const N: usize = 60;
    let up = FakeUpstream::start().await;
    let recv = Receiver::start().await;
    let mut setup = setup(&up, &recv);
    let http = client();
    let mut proc1 = setup.spawn();
    proc1.wait_healthy(&http, &setup.url).await;
    // Running jobs: their polls write without waiting for the disk, so nothing but the
    // acknowledgement itself (and the idle flush, 1 s later) makes a registration durable.
    let ops: Vec<String> = (0..N).map(|i| format!("r{i}")).collect();
    for op in &ops {
        up.set(&format!("jobs/{op}"), json!({"state": "running"}));
    }
    let mut set = tokio::task::JoinSet::new();
    for op in &ops {
        let (http, url, op) = (http.clone(), setup.url.clone(), op.clone());
        set.spawn(async move {
            let r = http
                .post(format!("{url}/v1/operations"))
                .json(&json!({"upstream": "jobs", "operation": op}))
                .send()
                .await
                .unwrap();
            let status = r.status().as_u16();
            let body: Value = r.json().await.unwrap_or(Value::Null);
            (op, status, body)
        });
    }
    let mut acknowledged = BTreeMap::new();
    while let Some(r) = set.join_next().await {
        let (op, status, body) = r.unwrap();
        assert_eq!(status, 201, "register {op}: {body}");
        acknowledged.insert(op, body["id"].as_str().unwrap().to_string());
    }
    // The last 201 is in: kill at once.
    let killed = proc1.kill9();
    assert!(!killed.success(), "{killed}");
    assert_eq!(acknowledged.len(), N);

    let mut proc2 = setup.spawn();
    proc2.wait_healthy(&http, &setup.url).await;
    let mut missing = Vec::new();
    for (op, id) in &acknowledged {
        let (code, rec) = get_op(&http, &setup.url, id).await;
        if code != 200 {
            missing.push(op.clone());
            continue;
        }
        assert_eq!(rec["operation"], op.as_str(), "{rec}");
        assert_eq!(rec["upstream"], "jobs", "{rec}");
        assert!(
            matches!(rec["status"].as_str(), Some("pending" | "running")),
            "{rec}"
        );
    }
    assert!(
        missing.is_empty(),
        "{} of {N} acknowledged registrations were lost by kill -9: {missing:?}",
        missing.len()
    );
    // Registering again is idempotent: the same records, not new ones.
    for (op, id) in acknowledged.iter().take(5) {
        let r = http
            .post(format!("{}/v1/operations", setup.url))
            .json(&json!({"upstream": "jobs", "operation": op}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 200, "{op} is known after the restart");
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["id"], id.as_str());
    }
    drop(proc2);
}

/// `hooks`: a generic upstream whose events decide by themselves (no status read needed); its
/// status endpoint exists but knows no job (404), so only the webhook's write can end a job
/// `succeeded` with the event's data. Signed with the callback secret, which the child has.
const EVENTS_CONFIG: &str = r#"
[upstreams.hooks]
base_url = "{UP}/"
status_path = "hooks/{operation}"
status_field = "/state"
succeeded = ["done"]
failed = ["error"]
not_found_after = 2
poll = { initial = "20ms", max = "50ms", deadline = "1h" }

[upstreams.hooks.webhook]
scheme = "standard-webhooks"
secret_env = "HOOKSHIM_CALLBACK_SECRET"
operation_field = "/data/id"
safety_poll = "100ms"
events = { "job.done" = "succeeded" }
"#;

/// POST a Standard Webhooks-signed webhook to the child's `hooks` upstream.
async fn send_signed(
    http: &reqwest::Client,
    url: &str,
    msg_id: &str,
    body: &Value,
) -> (u16, Value) {
    send_signed_webhook(http, url, "hooks", CALLBACK_SECRET, msg_id, body).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_right_after_a_webhooks_2xx_keeps_its_effect() {
    const N: usize = 20;
    let up = FakeUpstream::start().await;
    let recv = Receiver::start().await;
    // No callback URL: nothing but the webhook's acknowledgement flushes its write (a callback
    // would flush it too, and hide a missing flush before the 2xx).
    let config = format!("{SHIM_CONFIG}{EVENTS_CONFIG}")
        .replace("{UP}", &up.url)
        .replace("{RECV}", &recv.url)
        .replace("default_url = \"", "# default_url = \"");
    let mut setup = ProcSetup::new(&config);
    let http = client();
    let mut proc1 = setup.spawn();
    proc1.wait_healthy(&http, &setup.url).await;
    let mut ids = BTreeMap::new();
    for i in 0..N {
        let op = format!("h{i}");
        up.set(&format!("hooks/{op}"), json!({"state": "running"}));
        let r = http
            .post(format!("{}/v1/operations", setup.url))
            .json(&json!({"upstream": "hooks", "operation": op}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 201);
        let body: Value = r.json().await.unwrap();
        ids.insert(op, body["id"].as_str().unwrap().to_string());
    }
    // Every webhook at once: the registered jobs first (each ends by its event: 200) ...
    let body_for =
        |op: &str| json!({"type": "job.done", "data": {"id": op, "url": format!("u/{op}")}});
    let mut set = tokio::task::JoinSet::new();
    for op in ids.keys() {
        let (http, url, op, body) = (http.clone(), setup.url.clone(), op.clone(), body_for(op));
        set.spawn(async move {
            let (code, answer) = send_signed(&http, &url, &format!("msg_{op}"), &body).await;
            (op, code, answer)
        });
    }
    while let Some(r) = set.join_next().await {
        let (op, code, answer) = r.unwrap();
        assert_eq!(code, 200, "{op}: {answer}");
        assert_eq!(answer["result"], "accepted", "{op}: {answer}");
        assert_eq!(answer["status"], "succeeded", "{op}: {answer}");
    }
    // ... then jobs the app has not registered yet: each webhook is kept (202), and only that
    // kept record, flushed by nothing but the acknowledgement, can decide them at registration.
    let early: Vec<String> = (0..N).map(|i| format!("e{i}")).collect();
    for op in &early {
        let (http, url, op, body) = (http.clone(), setup.url.clone(), op.clone(), body_for(op));
        set.spawn(async move {
            let (code, answer) = send_signed(&http, &url, &format!("msg_{op}"), &body).await;
            (op, code, answer)
        });
    }
    while let Some(r) = set.join_next().await {
        let (op, code, answer) = r.unwrap();
        assert_eq!(code, 202, "{op}: {answer}");
        assert_eq!(answer["result"], "kept", "{op}: {answer}");
    }
    // The instant the last 2xx is in: kill -9.
    let killed = proc1.kill9();
    assert!(!killed.success(), "{killed}");

    // The upstream has forgotten every job: a lost webhook would end `failed` (404s), or stay
    // running; only the webhook's durable write says `succeeded` with the event's data.
    up.state.lock().unwrap().bodies.clear();
    let mut proc2 = setup.spawn();
    proc2.wait_healthy(&http, &setup.url).await;
    // Long enough for a job that lost its webhook to be read twice (safety poll 100 ms).
    tokio::time::sleep(Duration::from_millis(500)).await;
    for (op, id) in &ids {
        let (code, rec) = get_op(&http, &setup.url, id).await;
        assert_eq!(code, 200, "{op}: {rec}");
        assert_eq!(
            rec["status"], "succeeded",
            "{op}: the acknowledged webhook's effect was lost: {rec}"
        );
        assert_eq!(rec["detected_via"], "webhook", "{rec}");
        assert_eq!(rec["upstream_status"], "job.done", "{rec}");
        assert_eq!(rec["result"]["url"], format!("u/{op}"), "{rec}");
    }
    // A kept webhook survived too: registering the job now ends it as the event said.
    for op in &early {
        let r = http
            .post(format!("{}/v1/operations", setup.url))
            .json(&json!({"upstream": "hooks", "operation": op}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 201);
        let rec: Value = r.json().await.unwrap();
        assert_eq!(
            rec["status"], "succeeded",
            "{op}: the kept (202) webhook was lost by kill -9: {rec}"
        );
        assert_eq!(rec["result"]["url"], format!("u/{op}"), "{rec}");
    }
    // And the webhook id was recorded with it: a retry of the same webhook is a duplicate.
    let (op, _) = ids.iter().next().unwrap();
    let body = json!({"type": "job.done", "data": {"id": op, "url": "other"}});
    let (code, answer) = send_signed(&http, &setup.url, &format!("msg_{op}"), &body).await;
    assert_eq!(
        (code, answer["result"].as_str()),
        (200, Some("duplicate")),
        "{answer}"
    );
    drop(proc2);
}
