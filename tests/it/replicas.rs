//! Several real `hookshim serve` processes on one PostgreSQL schema: any replica serves any
//! request, work is claimed (not owned), a replica killed with `kill -9` loses nothing (its
//! claims lapse after `store.lease` and the others take its work over), and every operation's
//! callback keeps one `webhook-id` across replicas. The fake upstream and the verifying receiver
//! run in the test process.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::common::*;

const REPLICA_CONFIG: &str = r#"
[server]
listen = "127.0.0.1:{PORT}"

[store]
backend = "postgres"
schema = "{SCHEMA}"
pool_size = 4
lease = "2s"

[callbacks]
default_url = "{RECV}/callback"
timeout = "5s"
retry_schedule = ["100ms", "200ms", "300ms", "500ms", "1s"]

[workers]
# Few callbacks at once, so that a replica still has some to send when it is killed.
deliveries_in_flight = 2

[upstreams.jobs]
base_url = "{UP}/"
status_path = "jobs/{operation}"
status_field = "/state"
succeeded = ["done"]
failed = ["error"]
result_field = "/output"
rate = { per_second = 1000, burst = 100 }
poll = { initial = "100ms", multiplier = 1.5, max = "300ms", jitter = 0.1, deadline = "1h" }

# A tight budget for all replicas together: 6 requests a second, bursts of 3.
[upstreams.tight]
base_url = "{UP}/"
status_path = "tight/{operation}"
status_field = "/state"
succeeded = ["done"]
failed = ["error"]
rate = { per_second = 6, burst = 3 }
poll = { initial = "10ms", max = "20ms", deadline = "1h" }

[upstreams.pushy]
base_url = "{UP}/"
status_path = "pushy/{operation}"
status_field = "/state"
succeeded = ["done"]
failed = ["error"]
result_field = "/output"
poll = { initial = "100ms", multiplier = 1.5, max = "300ms", jitter = 0.1, deadline = "1h" }

[upstreams.pushy.webhook]
scheme = "standard-webhooks"
secret_env = "PUSHY_SECRET"
operation_field = "/data/id"
safety_poll = "1h"
"#;

/// Three replicas on `db`'s schema, healthy. Their setups hold the logs (printed if the test
/// fails).
struct Replicas {
    setups: Vec<ProcSetup>,
    procs: Vec<Proc>,
}

impl Replicas {
    async fn start(db: &PgSchema, up: &FakeUpstream, recv: &Receiver) -> Replicas {
        let config = REPLICA_CONFIG
            .replace("{SCHEMA}", &db.schema)
            .replace("{UP}", &up.url)
            .replace("{RECV}", &recv.url);
        let url = db.hookshim_url();
        let env = [
            ("HOOKSHIM_DATABASE_URL", url.as_str()),
            ("PUSHY_SECRET", PUSHY_SECRET),
        ];
        let mut setups: Vec<ProcSetup> = (0..3).map(|_| ProcSetup::new(&config)).collect();
        let mut procs = Vec::new();
        // One at a time: the first migrates the schema (the others would wait on its lock).
        for s in &mut setups {
            let mut p = s.spawn_with_env(&env);
            p.wait_healthy(&reqwest::Client::new(), &s.url).await;
            procs.push(p);
        }
        Replicas { setups, procs }
    }

    fn url(&self, i: usize) -> &str {
        &self.setups[i].url
    }
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

async fn get(http: &reqwest::Client, url: &str) -> (u16, Value) {
    let r = http.get(url).send().await.unwrap();
    let code = r.status().as_u16();
    (code, r.json().await.unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registered_at_one_replica_webhook_at_another_gives_one_verified_callback() {
    let Some(Backend::Postgres(db)) = Backend::postgres().await else {
        return;
    };
    let up = FakeUpstream::start().await;
    let recv = Receiver::start().await;
    let r = Replicas::start(&db, &up, &recv).await;
    let http = client();
    up.set("pushy/x1", json!({"state": "running"}));
    let resp = http
        .post(format!("{}/v1/operations", r.url(0)))
        .json(&json!({"upstream": "pushy", "operation": "x1"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    let id = id_of(&resp.json::<Value>().await.unwrap());
    // Every replica serves it.
    for i in 0..3 {
        let (code, op) = get(&http, &format!("{}/v1/operations/{id}", r.url(i))).await;
        assert_eq!(
            (code, op["status"].as_str()),
            (200, Some("pending")),
            "{op}"
        );
    }
    up.set("pushy/x1", json!({"state": "done", "output": {"n": 1}}));
    let event = json!({"type": "job.done", "data": {"id": "x1"}});
    let (code, body) =
        send_signed_webhook(&http, r.url(1), "pushy", PUSHY_SECRET, "msg_x1", &event).await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["result"], "accepted", "{body}");
    // The same webhook again at the third replica: a duplicate.
    let (code, body) =
        send_signed_webhook(&http, r.url(2), "pushy", PUSHY_SECRET, "msg_x1", &event).await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["result"], "duplicate", "{body}");
    let call = exactly_one_callback(&recv, &id, Duration::from_millis(1500)).await;
    assert!(
        call.verified,
        "the callback verifies with the shared secret"
    );
    assert_eq!(call.webhook_id, format!("{id}_terminal"));
    assert_eq!(call.body["data"]["detected_via"], "webhook");
    assert_eq!(call.body["data"]["result"]["n"], 1);
    let (_, op) = get(&http, &format!("{}/v1/operations/{id}", r.url(2))).await;
    assert_eq!(op["detected_via"], "webhook", "{op}");
    drop(r.procs);
}

/// Callbacks by hookshim operation id.
fn calls_by_op(recv: &Receiver) -> BTreeMap<String, Vec<Call>> {
    let mut m: BTreeMap<String, Vec<Call>> = BTreeMap::new();
    for c in recv.calls() {
        let id = c.body["data"]["id"].as_str().unwrap_or("").to_string();
        m.entry(id).or_default().push(c);
    }
    m
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_of_one_replica_mid_delivery_loses_no_callback_and_keeps_one_id() {
    const PER_REPLICA: usize = 40;
    let Some(Backend::Postgres(db)) = Backend::postgres().await else {
        return;
    };
    let up = FakeUpstream::start().await;
    let recv = Receiver::start().await;
    // Slow answers: callbacks are mid-request when the kill comes.
    recv.set_default(Behaviour::Slow(Duration::from_millis(300)));
    let mut r = Replicas::start(&db, &up, &recv).await;
    let http = client();
    let mut ids = BTreeMap::new();
    for i in 0..3 {
        let ops: Vec<String> = (0..PER_REPLICA).map(|n| format!("k{i}_{n}")).collect();
        for op in &ops {
            up.set(&format!("jobs/{op}"), json!({"state": "running"}));
        }
        ids.extend(register_all(&http, r.url(i), &ops).await);
    }
    for op in ids.keys() {
        up.set(
            &format!("jobs/{op}"),
            json!({"state": "done", "output": {"op": op}}),
        );
    }
    eventually(
        Duration::from_secs(30),
        "some callbacks to arrive",
        || async { (calls_by_op(&recv).len() >= 10).then_some(()) },
    )
    .await;
    let killed = r.procs[0].kill9();
    assert!(!killed.success());
    let at_kill = calls_by_op(&recv).len();
    assert!(
        at_kill < ids.len(),
        "the kill came while callbacks were still to send ({at_kill} of {})",
        ids.len()
    );
    // The two left take the dead one's work over once its claims lapse (store.lease = 2s).
    eventually(
        Duration::from_secs(60),
        "a delivered callback for every operation",
        || async {
            let by_op = calls_by_op(&recv);
            ids.values()
                .all(|id| {
                    by_op
                        .get(id)
                        .is_some_and(|cs| cs.iter().any(|c| c.answered == 200))
                })
                .then_some(())
        },
    )
    .await;
    for (op, id) in &ids {
        let calls = &calls_by_op(&recv)[id];
        let webhook_ids: BTreeSet<&str> = calls.iter().map(|c| c.webhook_id.as_str()).collect();
        assert_eq!(
            webhook_ids,
            BTreeSet::from([format!("{id}_terminal").as_str()]),
            "{op}: one webhook-id across replicas"
        );
        assert!(
            calls.iter().all(|c| c.verified),
            "{op}: every callback verifies"
        );
        assert!(
            calls
                .iter()
                .all(|c| c.body["data"]["result"]["op"] == op.as_str())
        );
    }
    // The survivors say they took work over.
    let mut takeovers = 0.0;
    for i in 1..3 {
        let text = http
            .get(format!("{}/metrics", r.url(i)))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        takeovers += text
            .lines()
            .find_map(|l| l.strip_prefix("hookshim_db_lease_takeovers_total "))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .unwrap_or(0.0);
    }
    assert!(takeovers >= 1.0, "takeovers counted: {takeovers}");
}

/// The value of an unlabelled-or-labelled series in a `/metrics` text.
fn series(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name))
        .and_then(|v| v.trim().parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_spread_over_three_replicas_stays_within_one_budget() {
    const PER_SECOND: usize = 6;
    const BURST: usize = 3;
    let Some(Backend::Postgres(db)) = Backend::postgres().await else {
        return;
    };
    let up = FakeUpstream::start().await;
    let recv = Receiver::start().await;
    let r = Replicas::start(&db, &up, &recv).await;
    let http = client();
    // Each replica has seen the other two (a heartbeat every 2 s) and takes a third.
    for i in 0..3 {
        eventually(Duration::from_secs(20), "a third of the budget", || async {
            let text = http
                .get(format!("{}/metrics", r.url(i)))
                .send()
                .await
                .ok()?
                .text()
                .await
                .ok()?;
            let rate = series(&text, "hookshim_upstream_rate_limit{upstream=\"tight\"}")?;
            ((rate - PER_SECOND as f64 / 3.0).abs() < 0.01).then_some(())
        })
        .await;
    }
    let started = Instant::now();
    for i in 0..3 {
        let ops: Vec<String> = (0..15).map(|n| format!("b{i}_{n}")).collect();
        for op in &ops {
            up.set(&format!("tight/{op}"), json!({"state": "running"}));
        }
        let mut set = tokio::task::JoinSet::new();
        for op in ops {
            let (http, url) = (http.clone(), r.url(i).to_string());
            set.spawn(async move {
                let resp = http
                    .post(format!("{url}/v1/operations"))
                    .json(&json!({"upstream": "tight", "operation": op}))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(resp.status(), 201);
            });
        }
        while let Some(res) = set.join_next().await {
            res.unwrap();
        }
    }
    // Unlimited, 45 operations polled every ~20 ms would make ~2000 requests a second.
    tokio::time::sleep(Duration::from_millis(3200).saturating_sub(started.elapsed())).await;
    let mut reqs = up.all_requests();
    reqs.retain(|t| *t >= started);
    reqs.sort();
    // Each replica paces its third (2/s) without burst: a closed 1 s window holds at most 3 of
    // its requests, 9 of the three (= the budget's 6/s plus its burst of 3). Each replica on its
    // own budget would allow 3 × 9.
    let window = Duration::from_secs(1);
    let mut worst = 0;
    for (i, t) in reqs.iter().enumerate() {
        let n = reqs[i..]
            .iter()
            .take_while(|u| u.duration_since(*t) <= window)
            .count();
        worst = worst.max(n);
    }
    assert!(
        worst <= PER_SECOND + BURST,
        "{worst} requests within 1 s from three replicas (one budget: {PER_SECOND}/s, burst \
         {BURST}); {} in all",
        reqs.len()
    );
    assert!(
        reqs.len() >= 12,
        "only {} requests in ~3 s: the budget was never exercised",
        reqs.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_429_at_one_replica_lowers_the_rate_at_all() {
    let Some(Backend::Postgres(db)) = Backend::postgres().await else {
        return;
    };
    let up = FakeUpstream::start().await;
    let recv = Receiver::start().await;
    let r = Replicas::start(&db, &up, &recv).await;
    let http = client();
    let rate_at = |i: usize| {
        let (http, url) = (http.clone(), r.url(i).to_string());
        async move {
            let text = http
                .get(format!("{url}/metrics"))
                .send()
                .await
                .ok()?
                .text()
                .await
                .ok()?;
            series(&text, "hookshim_upstream_rate_limit{upstream=\"tight\"}")
        }
    };
    for i in 0..3 {
        eventually(Duration::from_secs(20), "a third of the budget", || async {
            rate_at(i)
                .await
                .filter(|r| (r - 2.0).abs() < 0.01)
                .map(|_| ())
        })
        .await;
    }
    // The first read of this operation is answered 429: the replica that registered it (and
    // claimed its first poll) halves its rate, and tells the others.
    up.script(
        "tight/t429",
        vec![Scripted::new(429, r#"{"error": "slow down"}"#).header("retry-after", "1")],
    );
    up.set("tight/t429", json!({"state": "running"}));
    let resp = http
        .post(format!("{}/v1/operations", r.url(0)))
        .json(&json!({"upstream": "tight", "operation": "t429"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    eventually(Duration::from_secs(5), "the 429 to be answered", || async {
        (!up.requests_for("tight/t429").is_empty()).then_some(())
    })
    .await;
    // Every replica's share halves (2/s → 1/s) within a heartbeat or two.
    for i in 0..3 {
        eventually(
            Duration::from_secs(10),
            &format!("replica {i} to lower its rate"),
            || async { rate_at(i).await.filter(|r| *r < 1.5).map(|_| ()) },
        )
        .await;
    }
}
