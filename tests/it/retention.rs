//! `[retention]`: settled operations are purged in the background once older than the
//! retention, on both stores, on a manual clock (days pass in one call); what is still running,
//! has a failed delivery (within `retention.failed`) or ended recently is kept; purging while
//! registrations and callbacks run loses none of them; `/metrics` shows the store's size and the
//! purge counter.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use hookshim::clock::{ManualClock, Timestamp};
use serde_json::{Value, json};

use crate::common::*;

const DAY: Duration = Duration::from_secs(86_400);

/// [`CONFIG`] with retention: delivered 30 days, failed deliveries 60 days, a pass every 20 ms.
fn config() -> String {
    format!("{CONFIG}\n[retention]\nfinished = \"30d\"\nfailed = \"60d\"\nevery = \"20ms\"\n")
}

fn manual_clock() -> ManualClock {
    ManualClock::new(Timestamp(time_now_secs() * 1000))
}

/// The value of a sample line `series value` in the classic text format.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

/// Every operation id the list endpoint returns (all pages).
async fn listed(shim: &TestShim) -> BTreeSet<String> {
    let mut ids = BTreeSet::new();
    let mut cursor = String::new();
    loop {
        let (code, page) = shim
            .get(&format!("/v1/operations?limit=1000&cursor={cursor}"))
            .await;
        assert_eq!(code, 200, "{page}");
        for op in page["operations"].as_array().unwrap() {
            ids.insert(id_of(op));
        }
        match page["next_cursor"].as_str() {
            Some(c) => cursor = c.to_string(),
            None => return ids,
        }
    }
}

async fn wait_delivery(shim: &TestShim, id: &str, state: &str) -> Value {
    eventually(
        Duration::from_secs(10),
        &format!("{id}'s delivery to be {state}"),
        || async {
            let op = shim.op(id).await;
            (op["delivery"]["state"] == state).then_some(op)
        },
    )
    .await
}

async fn wait_gone(shim: &TestShim, id: &str) {
    eventually(
        Duration::from_secs(10),
        &format!("{id} to be purged"),
        || async { (shim.get(&format!("/v1/operations/{id}")).await.0 == 404).then_some(()) },
    )
    .await
}

async fn register(shim: &TestShim, body: Value) -> String {
    let (code, op) = shim.register(body).await;
    assert_eq!(code, 201, "{op}");
    id_of(&op)
}

/// `old` (delivered), `bad` (its delivery failed for good) and `long` (running, deadline in
/// 120 days), each settled as it is.
async fn three_operations(
    shim: &TestShim,
    up: &FakeUpstream,
    recv: &Receiver,
    clock: &ManualClock,
) -> (String, String, String) {
    // A failed job's callback is answered 410: its delivery fails for good at once (no
    // retries to wait for on a clock that only moves when told).
    recv.set_for_type("operation.failed", Some(Behaviour::Status(410)));
    up.set("jobs/old", json!({"state": "done"}));
    up.set("jobs/bad", json!({"state": "error"}));
    up.set("jobs/long", json!({"state": "running"}));
    let old = register(shim, json!({"upstream": "jobs", "operation": "old"})).await;
    let bad = register(shim, json!({"upstream": "jobs", "operation": "bad"})).await;
    let long = register(
        shim,
        json!({"upstream": "jobs", "operation": "long", "deadline": "120d"}),
    )
    .await;
    clock.advance(Duration::from_secs(1));
    wait_delivery(shim, &old, "delivered").await;
    wait_delivery(shim, &bad, "failed").await;
    eventually(Duration::from_secs(10), "long to be polled", || async {
        let op = shim.op(&long).await;
        (op["polls"].as_u64() >= Some(1) && op["status"] == "running").then_some(())
    })
    .await;
    (old, bad, long)
}

on_each_store! {
    #[tokio::test]
    async fn settled_operations_are_purged_after_the_retention_and_the_rest_is_kept(store) {
        let up = FakeUpstream::start().await;
        let recv = Receiver::start().await;
        let clock = manual_clock();
        let shim = TestShim::start_on_with_clock(
            &store, &config(), &up, &recv, vec![], Arc::new(clock.clone()),
        )
        .await;
        let (old, bad, long) = three_operations(&shim, &up, &recv, &clock).await;
        up.set("jobs/recent", json!({"state": "done"}));
        // Nothing is old enough yet.
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(listed(&shim).await.len(), 3);

        // 31 days on: `old` was delivered longer ago than `finished`; `bad` failed, and
        // failed deliveries are kept 60 days; `long` still runs; `recent` ends now.
        clock.advance(31 * DAY);
        let recent = register(&shim, json!({"upstream": "jobs", "operation": "recent"})).await;
        clock.advance(Duration::from_secs(1));
        wait_delivery(&shim, &recent, "delivered").await;
        wait_gone(&shim, &old).await;
        let (code, body) = shim.get(&format!("/v1/operations/{old}")).await;
        assert_eq!((code, body["error"]["code"].as_str()), (404, Some("operation_not_found")), "{body}");
        // The upstream's id no longer finds it either (its index entry went with it).
        let (_, found) = shim.get("/v1/operations?upstream=jobs&operation=old").await;
        assert_eq!(found["operations"], json!([]), "{found}");
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(shim.op(&bad).await["delivery"]["state"], "failed");
        assert_eq!(shim.op(&long).await["status"], "running");
        assert_eq!(shim.op(&recent).await["status"], "succeeded");
        let ids = listed(&shim).await;
        assert_eq!(ids, BTreeSet::from([bad.clone(), long.clone(), recent.clone()]));
        let text = shim.metrics().await;
        assert_eq!(sample(&text, "hookshim_operations_purged_total"), Some(1.0), "{text}");
        // The failed-deliveries gauge still counts `bad`.
        assert_eq!(sample(&text, r#"hookshim_callbacks{state="failed"}"#), Some(1.0), "{text}");
        let bytes = sample(&text, "hookshim_store_bytes").expect("hookshim_store_bytes");
        assert!(bytes > 0.0, "the store has a size: {text}");

        // 62 days on: `recent` is 31 days old, `bad` failed 62 days ago; `long` still runs.
        clock.advance(31 * DAY);
        wait_gone(&shim, &recent).await;
        wait_gone(&shim, &bad).await;
        assert_eq!(shim.op(&long).await["status"], "running");
        assert_eq!(listed(&shim).await, BTreeSet::from([long.clone()]));
        let text = shim.metrics().await;
        assert_eq!(sample(&text, "hookshim_operations_purged_total"), Some(3.0), "{text}");
        assert_eq!(sample(&text, r#"hookshim_callbacks{state="failed"}"#), Some(0.0), "{text}");
        // Each callback was sent once: a purge sends nothing.
        for id in [&old, &recent] {
            assert_eq!(recv.calls_for(id).len(), 1, "{id}");
        }
    }
}

on_each_store! {
    #[tokio::test]
    async fn purging_while_registrations_and_callbacks_run_loses_nothing(store) {
        let up = FakeUpstream::start().await;
        let recv = Receiver::start().await;
        let clock = manual_clock();
        let shim = TestShim::start_on_with_clock(
            &store, &config(), &up, &recv, vec![], Arc::new(clock.clone()),
        )
        .await;
        // More than two purge batches (256) of old, delivered operations.
        let old: Vec<String> = (0..600).map(|i| format!("old-{i}")).collect();
        for op in &old {
            up.set(&format!("jobs/{op}"), json!({"state": "done"}));
        }
        // The clock moves on in small steps so that polls and callbacks come due.
        let ticking = clock.clone();
        let ticker = tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(10)).await;
                ticking.advance(Duration::from_millis(100));
            }
        });
        let old_ids = register_all(&shim.http, &shim.url, &old).await;
        // Every delivery recorded (not only sent: a month's jump while a result is being
        // written would lapse its claim on PostgreSQL, and the callback would go again).
        eventually(Duration::from_secs(60), "600 delivered", || async {
            let (code, page) = shim.get("/v1/operations?limit=1000").await;
            assert_eq!(code, 200, "{page}");
            let ops = page["operations"].as_array().unwrap();
            (ops.len() == old.len() && ops.iter().all(|o| o["delivery"]["state"] == "delivered"))
                .then_some(())
        })
        .await;

        // A month on the purge starts; meanwhile new operations register, finish and call
        // back.
        clock.advance(31 * DAY);
        let new: Vec<String> = (0..200).map(|i| format!("new-{i}")).collect();
        for op in &new {
            up.set(&format!("jobs/{op}"), json!({"state": "done"}));
        }
        let new_ids = register_all(&shim.http, &shim.url, &new).await;
        for id in new_ids.values() {
            wait_calls(&recv, id, 1).await;
        }
        eventually(Duration::from_secs(30), "the old operations to be purged", || async {
            let text = shim.metrics().await;
            (sample(&text, "hookshim_operations_purged_total") == Some(old.len() as f64))
                .then_some(())
        })
        .await;
        ticker.abort();
        tokio::time::sleep(QUIET).await;
        // Every new operation is there, delivered once; every old one is gone.
        for id in new_ids.values() {
            let op = shim.op(id).await;
            assert_eq!(op["delivery"]["state"], "delivered", "{op}");
            assert_eq!(recv.calls_for(id).len(), 1, "{id}");
        }
        let ids = listed(&shim).await;
        assert_eq!(ids, new_ids.values().cloned().collect::<BTreeSet<_>>());
        for id in old_ids.values().take(20) {
            assert_eq!(shim.get(&format!("/v1/operations/{id}")).await.0, 404, "{id}");
        }
    }
}

/// PostgreSQL: migration 2's backfill of `settled_at`/`settled_failed` from the records agrees
/// with what the writes themselves keep (`store::retention::settled`).
#[tokio::test]
async fn the_migration_backfills_the_retention_columns_as_the_writes_keep_them() {
    let Some(store) = Backend::postgres().await else {
        return;
    };
    let Backend::Postgres(db) = &store else {
        unreachable!()
    };
    let up = FakeUpstream::start().await;
    let recv = Receiver::start().await;
    let clock = manual_clock();
    let mut shim = TestShim::start_on_with_clock(
        &store,
        &config()
            .replace("\"30d\"", "\"off\"")
            .replace("\"60d\"", "\"off\""),
        &up,
        &recv,
        vec![],
        Arc::new(clock.clone()),
    )
    .await;
    let (old, bad, long) = three_operations(&shim, &up, &recv, &clock).await;
    shim.stop().await;
    let columns = || async {
        db.query("SELECT id, settled_at, settled_failed FROM operations ORDER BY id")
            .await
            .iter()
            .map(|r| {
                (
                    r.get::<_, String>(0),
                    r.get::<_, Option<i64>>(1),
                    r.get::<_, bool>(2),
                )
            })
            .collect::<Vec<_>>()
    };
    let written = columns().await;
    let by_id = |id: &str| written.iter().find(|r| r.0 == id).cloned().unwrap();
    assert!(by_id(&old).1.is_some() && !by_id(&old).2, "{written:?}");
    assert!(by_id(&bad).1.is_some() && by_id(&bad).2, "{written:?}");
    assert_eq!(by_id(&long).1, None, "{written:?}");
    let delivered = shim_op_time(&recv, &old);
    assert!(by_id(&old).1 >= Some(delivered), "{written:?}");

    db.query("UPDATE operations SET settled_at = NULL, settled_failed = false")
        .await;
    let (_, sql) = hookshim::store::MIGRATIONS[1];
    let backfill = &sql[sql.find("WITH d AS").unwrap()..];
    db.query(backfill).await;
    assert_eq!(columns().await, written);
}

/// The callback's `timestamp` (the operation's end, ms) for `id`.
fn shim_op_time(recv: &Receiver, id: &str) -> i64 {
    let call = &recv.calls_for(id)[0];
    let t = call.body["timestamp"].as_str().unwrap();
    let secs = humantime::parse_rfc3339(t)
        .unwrap()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    secs.as_millis() as i64
}

/// `hookshim --config <file> check` with `env` as the only HOOKSHIM_* variables.
fn check(file: &str, env: &[(&str, &str)]) -> (Option<i32>, String, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("shim.toml");
    std::fs::write(&path, file).unwrap();
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_hookshim"));
    cmd.arg("--config").arg(&path).arg("check");
    for (k, _) in std::env::vars() {
        if k.starts_with("HOOKSHIM_") {
            cmd.env_remove(k);
        }
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

#[test]
fn check_shows_retention_and_refuses_bad_values() {
    let (code, out, err) = check(
        "[retention]\nfinished = \"7d\"\n",
        &[("HOOKSHIM_RETENTION__FAILED", "90d")],
    );
    assert_eq!(code, Some(0), "{out}{err}");
    let end = out.rfind("\nconfig OK").expect(&out);
    let shown: Value = serde_json::from_str(&out[..end]).unwrap();
    assert_eq!(
        shown["retention"],
        json!({"finished": "7d", "failed": "90d", "every": "1m"}),
        "{out}"
    );
    // The defaults: 30 days, failed deliveries kept.
    let (code, out, err) = check("", &[]);
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(
        out.contains(r#""finished": "30d""#) && out.contains(r#""failed": "off""#),
        "{out}"
    );

    let (code, _, err) = check("[retention]\nfinished = \"a month\"\n", &[]);
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("`retention.finished`") && err.contains("\"30d\""),
        "{err}"
    );
    let (code, _, err) = check("[retention]\nfailed = \"0s\"\n", &[]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("`retention.failed`: 0s"), "{err}");
}
