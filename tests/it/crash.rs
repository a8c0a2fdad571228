//! The real binary, killed: `kill -9` while callbacks are in flight loses no callback and never
//! changes a callback's webhook-id (at-least-once, same id); SIGTERM exits 0 and keeps every
//! operation. The fake upstream and the verifying receiver run in the test process; hookshim
//! runs as a child process on its own data directory.

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;
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
rate = { per_second = 1000, burst = 100 }
poll = { initial = "20ms", multiplier = 1.5, max = "50ms", jitter = 0.1, deadline = "1h" }
"#;

/// A child hookshim on this file's config, against `up` and `recv`.
fn setup(up: &FakeUpstream, recv: &Receiver) -> ProcSetup {
    ProcSetup::new(
        &SHIM_CONFIG
            .replace("{UP}", &up.url)
            .replace("{RECV}", &recv.url),
    )
}

/// Register `ops` on the `jobs` upstream concurrently; returns operation → hookshim id.
async fn register_all(
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
    let up = FakeUpstream::start().await;
    let recv = Receiver::start().await;
    // Slow answers, 4 deliveries in flight: callbacks are mid-request when the kill comes.
    recv.set_default(Behaviour::Slow(Duration::from_millis(50)));
    let mut setup = setup(&up, &recv);
    let http = reqwest::Client::new();
    let mut proc1 = setup.spawn();
    proc1.wait_healthy(&http, &setup.url).await;

    let ops: Vec<String> = (0..N).map(|i| format!("c{i}")).collect();
    for op in &ops {
        up.set(&format!("jobs/{op}"), json!({"state": "running"}));
    }
    let ids = register_all(&http, &setup.url, &ops).await;
    let by_id: BTreeMap<&str, &str> = ids.iter().map(|(o, i)| (i.as_str(), o.as_str())).collect();
    for op in &ops {
        up.set(
            &format!("jobs/{op}"),
            json!({"state": "done", "output": {"op": op}}),
        );
    }

    // Some, but not all, callbacks have arrived: kill -9.
    eventually(
        Duration::from_secs(30),
        "20 operations to have a callback",
        || async { (calls_by_op(&recv).len() >= 20).then_some(()) },
    )
    .await;
    let killed = proc1.kill9();
    let at_kill = calls_by_op(&recv);
    let calls_at_kill: usize = at_kill.values().map(Vec::len).sum();
    assert!(
        at_kill.len() < N,
        "the kill came too late to test anything: all {N} callbacks had arrived"
    );
    assert!(!killed.success(), "SIGKILL is not a clean exit: {killed}");

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
        assert_eq!(rec["status"], "succeeded", "{rec}");
        assert_eq!(rec["operation"], op.as_str(), "{rec}");
    }
    // Give any further duplicate a chance to arrive, then judge everything received.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let all = calls_by_op(&recv);
    let mut duplicates = 0;
    for (op, id) in &ids {
        let calls = all.get(id).unwrap();
        for c in calls {
            assert!(
                c.verified,
                "{op}: callback failed standardwebhooks verification: {c:?}"
            );
            assert_eq!(c.body["type"], "operation.succeeded", "{op}: {:?}", c.body);
            assert_eq!(c.body["data"]["result"]["op"], op.as_str(), "{op}");
        }
        let webhook_ids: BTreeSet<&str> = calls.iter().map(|c| c.webhook_id.as_str()).collect();
        assert_eq!(
            webhook_ids.len(),
            1,
            "{op}: every attempt must carry the same webhook-id, got {webhook_ids:?}"
        );
        assert!(!webhook_ids.iter().next().unwrap().is_empty());
        duplicates += calls.len() - 1;
    }
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
         after restart {total} calls in all, {duplicates} duplicates (same webhook-id); every operation had \
         a verified callback {recovered_in:?} after the restart",
        at_kill.len()
    );
    drop(proc2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_exits_cleanly_and_keeps_every_operation() {
    const N: usize = 20;
    let up = FakeUpstream::start().await;
    let recv = Receiver::start().await;
    recv.set_default(Behaviour::Slow(Duration::from_millis(50)));
    let mut setup = setup(&up, &recv);
    let http = reqwest::Client::new();
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
