//! The poller against an upstream that misbehaves: rate-limit hints, a tight request budget,
//! errors that must never end an operation, deadlines, 404 streaks, and the google-operation
//! preset.

use std::time::{Duration, Instant};

use crate::common::*;
use serde_json::json;

/// Wait until `path` has been requested at least `n` times; return the request instants.
async fn wait_requests(up: &FakeUpstream, path: &str, n: usize) -> Vec<Instant> {
    eventually(
        Duration::from_secs(5),
        &format!("{n} request(s) for {path}"),
        || async {
            let r = up.requests_for(path);
            (r.len() >= n).then_some(r)
        },
    )
    .await
}

/// The status endpoint answers 429 with `header: value`: the operation's next read, and the
/// first read of another operation on the same upstream, wait at least `min_gap`.
async fn rate_limit_hint_pauses_the_upstream(header: &'static str, value: &str, min_gap: Duration) {
    let up = FakeUpstream::start().await;
    let recv = Receiver::start().await;
    let shim = TestShim::start(CONFIG, &up, &recv).await;
    up.set("jobs/hinted", json!({"state": "running"}));
    up.script(
        "jobs/hinted",
        vec![Scripted::new(429, r#"{"error": "slow down"}"#).header(header, value)],
    );
    let (_, op) = shim
        .register(json!({"upstream": "jobs", "operation": "hinted"}))
        .await;
    let a = id_of(&op);
    let t0 = wait_requests(&up, "jobs/hinted", 1).await[0];
    // Once the 429 is recorded, hookshim has read the hint and paused the upstream.
    eventually(Duration::from_secs(5), "the 429 to be recorded", || async {
        let o = shim.op(&a).await;
        o["last_poll_error"]
            .as_str()
            .is_some_and(|e| e.contains("429"))
            .then_some(())
    })
    .await;
    // A second operation whose first poll (~50 ms after registration) falls inside the pause.
    up.set("jobs/bystander", json!({"state": "running"}));
    shim.register(json!({"upstream": "jobs", "operation": "bystander"}))
        .await;
    let registered = t0.elapsed();
    assert!(
        registered + Duration::from_millis(100) < min_gap,
        "the bystander was registered too late ({registered:?}) to test the pause"
    );

    let a_next = wait_requests(&up, "jobs/hinted", 2).await[1];
    let b_first = wait_requests(&up, "jobs/bystander", 1).await[0];
    let a_gap = a_next.duration_since(t0);
    let b_gap = b_first.duration_since(t0);
    assert!(
        a_gap >= min_gap,
        "{header}: {value} but the operation was read again after {a_gap:?}"
    );
    assert!(
        b_gap >= min_gap,
        "{header}: {value} but another operation on the upstream was read after {b_gap:?}"
    );
    assert!(shim.metrics().await.contains(
        "hookshim_upstream_requests_total{upstream=\"jobs\",outcome=\"rate_limited\"} 1"
    ));
    // And the operation carries on.
    up.set("jobs/hinted", json!({"state": "done"}));
    wait_status(&shim, &a, "succeeded").await;
}

#[tokio::test]
async fn retry_after_pauses_the_whole_upstream() {
    rate_limit_hint_pauses_the_upstream("retry-after", "1", Duration::from_millis(900)).await;
}

#[tokio::test]
async fn retry_after_ms_pauses_the_whole_upstream() {
    rate_limit_hint_pauses_the_upstream("retry-after-ms", "700", Duration::from_millis(600)).await;
}

#[tokio::test]
async fn hint_on_a_normal_answer_delays_that_operation() {
    let up = FakeUpstream::start().await;
    let recv = Receiver::start().await;
    let shim = TestShim::start(CONFIG, &up, &recv).await;
    // A readable "running" answer that also asks for 700 ms; the base schedule is ~50-75 ms.
    up.script(
        "jobs/patient",
        vec![Scripted::new(200, r#"{"state": "running"}"#).header("retry-after-ms", "700")],
    );
    up.set("jobs/patient", json!({"state": "running"}));
    let (_, op) = shim
        .register(json!({"upstream": "jobs", "operation": "patient"}))
        .await;
    let id = id_of(&op);
    let reqs = wait_requests(&up, "jobs/patient", 2).await;
    let gap = reqs[1].duration_since(reqs[0]);
    assert!(
        gap >= Duration::from_millis(600),
        "retry-after-ms: 700 on a 200, but read again after {gap:?}"
    );
    assert_eq!(shim.op(&id).await["status"], "running");
}

const TIGHT: &str = r#"
[upstreams.tight]
base_url = "{UP}/"
status_path = "tight/{operation}"
status_field = "/state"
succeeded = ["done"]
failed = ["error"]
rate = { per_second = 5, burst = 5 }
poll = { initial = "10ms", max = "20ms" }
"#;

#[tokio::test]
async fn request_budget_is_never_exceeded() {
    let up = FakeUpstream::start().await;
    let recv = Receiver::start().await;
    let shim = TestShim::start(&format!("{CONFIG}{TIGHT}"), &up, &recv).await;
    let started = Instant::now();
    for i in 0..20 {
        up.set(&format!("tight/b{i}"), json!({"state": "running"}));
        let (code, op) = shim
            .register(json!({"upstream": "tight", "operation": format!("b{i}")}))
            .await;
        assert_eq!(code, 201, "{op}");
    }
    // Unlimited, 20 operations polled every ~20 ms would make ~1000 requests a second.
    tokio::time::sleep(Duration::from_millis(2200).saturating_sub(started.elapsed())).await;
    let mut reqs = up.all_requests();
    reqs.sort();
    // GCRA (burst 5, one cell per 200 ms): n requests span at least (n - 5) × 200 ms, so a
    // closed window of 1 s holds at most 5 + 5 = 10 (an 11th would need 1.2 s).
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
        worst <= 10,
        "{worst} requests within 1 s (budget: burst 5 + 5/s); {} in all",
        reqs.len()
    );
    // The budget was used, not merely unreached.
    assert!(
        reqs.len() >= 12,
        "only {} requests in ~2 s: the budget was never exercised",
        reqs.len()
    );
    // The same bound over every span, not only 1 s windows: requests i..=j need
    // (j - i + 1 - 5) × 200 ms between the first and the last. Allow 150 ms for the delay
    // between a request leaving hookshim and the fake upstream recording it.
    for i in 0..reqs.len() {
        for j in i + 1..reqs.len() {
            let span = reqs[j].duration_since(reqs[i]) + Duration::from_millis(150);
            let allowed = 5 + (span.as_millis() / 200) as usize;
            let count = j - i + 1;
            assert!(
                count <= allowed,
                "{count} requests within {:?}; at most {allowed} allowed",
                reqs[j].duration_since(reqs[i])
            );
        }
    }
}

#[tokio::test]
async fn errors_and_unreadable_answers_never_end_an_operation() {
    let up = FakeUpstream::start().await;
    let recv = Receiver::start().await;
    let shim = TestShim::start(CONFIG, &up, &recv).await;
    let failures = vec![
        Scripted::new(500, "oops"),
        Scripted::new(502, r#"{"state": "error"}"#),
        Scripted::new(200, "<html>not json</html>"),
        Scripted::new(200, "{\"state\": \"done\""),
        // JSON, but without the configured status field (`/state`).
        Scripted::new(200, r#"{"status": "done", "output": 1}"#),
        Scripted::new(200, r#"["done"]"#),
        Scripted::new(401, r#"{"state": "error"}"#),
        Scripted::new(401, r#"{"error": "unauthorized"}"#),
    ];
    let n = failures.len();
    up.script("jobs/flaky", failures);
    up.set("jobs/flaky", json!({"state": "running"}));
    let (_, op) = shim
        .register(json!({"upstream": "jobs", "operation": "flaky"}))
        .await;
    let id = id_of(&op);

    let failing = eventually(Duration::from_secs(5), "a recorded poll error", || async {
        let o = shim.op(&id).await;
        o["last_poll_error"].is_string().then_some(o)
    })
    .await;
    assert_eq!(failing["status"], "pending", "{failing}");
    assert!(failing["error_streak"].as_u64().unwrap() >= 1, "{failing}");
    // Every scripted failure is read, then the real answer.
    wait_requests(&up, "jobs/flaky", n + 1).await;
    let running = wait_status(&shim, &id, "running").await;
    assert!(running["last_poll_error"].is_null(), "{running}");
    assert_eq!(running["error_streak"], 0);
    assert!(running["polls"].as_u64().unwrap() > n as u64, "{running}");
    let metrics = shim.metrics().await;
    for (outcome, count) in [
        ("server_error", 2),
        ("invalid_body", 4),
        ("client_error", 2),
    ] {
        let line = format!(
            "hookshim_upstream_requests_total{{upstream=\"jobs\",outcome=\"{outcome}\"}} {count}"
        );
        assert!(metrics.contains(&line), "missing {line:?} in\n{metrics}");
    }

    up.set("jobs/flaky", json!({"state": "done", "output": "fine"}));
    let done = wait_status(&shim, &id, "succeeded").await;
    assert_eq!(done["result"], "fine");
    assert!(done["error"].is_null());
    wait_calls(&recv, &id, 1).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let calls = recv.calls_for(&id);
    assert_eq!(calls.len(), 1, "exactly one callback");
    assert_eq!(calls[0].body["type"], "operation.succeeded");
}

#[tokio::test]
async fn deadline_times_the_operation_out() {
    let up = FakeUpstream::start().await;
    let recv = Receiver::start().await;
    let shim = TestShim::start(CONFIG, &up, &recv).await;
    up.set("jobs/forever", json!({"state": "running"}));
    let before = Instant::now();
    let (code, op) = shim
        .register(json!({"upstream": "jobs", "operation": "forever", "deadline": "300ms"}))
        .await;
    assert_eq!(code, 201, "{op}");
    let id = id_of(&op);

    let done = wait_status(&shim, &id, "timed_out").await;
    assert!(
        before.elapsed() >= Duration::from_millis(250),
        "timed out before its deadline"
    );
    assert_eq!(done["detected_via"], "deadline");
    assert_eq!(done["error"]["code"], "deadline_exceeded");
    assert_eq!(done["upstream_status"], "running");
    let calls = wait_calls(&recv, &id, 1).await;
    assert!(calls[0].verified);
    assert_eq!(calls[0].body["type"], "operation.timed_out");
    assert_eq!(calls[0].body["data"]["error"]["code"], "deadline_exceeded");
    assert_eq!(calls[0].body["data"]["detected_via"], "deadline");
    // Polling stopped.
    let polls = up.requests_for("jobs/forever").len();
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(up.requests_for("jobs/forever").len(), polls);
    assert_eq!(recv.calls_for(&id).len(), 1);
}

#[tokio::test]
async fn repeated_not_found_fails_the_operation() {
    let up = FakeUpstream::start().await;
    let recv = Receiver::start().await;
    let shim = TestShim::start(CONFIG, &up, &recv).await;
    // Nothing set for jobs/ghost: the fake upstream answers 404.
    let (_, op) = shim
        .register(json!({"upstream": "jobs", "operation": "ghost"}))
        .await;
    let id = id_of(&op);

    let done = wait_status(&shim, &id, "failed").await;
    assert_eq!(done["error"]["code"], "upstream_not_found", "{done}");
    assert_eq!(done["polls"], 3, "not_found_after = 3: {done}");
    assert_eq!(done["detected_via"], "poll");
    let calls = [exactly_one_callback(&recv, &id, QUIET).await];
    assert_eq!(calls[0].body["type"], "operation.failed");
    assert_eq!(calls[0].body["data"]["error"]["code"], "upstream_not_found");
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(
        up.requests_for("jobs/ghost").len(),
        3,
        "no poll after failing"
    );
}

#[tokio::test]
async fn a_real_answer_resets_the_not_found_streak() {
    let up = FakeUpstream::start().await;
    let recv = Receiver::start().await;
    let shim = TestShim::start(CONFIG, &up, &recv).await;
    let not_found = || Scripted::new(404, r#"{"error": "not found"}"#);
    // Four 404s in all, but never three in a row.
    up.script(
        "jobs/shy",
        vec![
            not_found(),
            not_found(),
            Scripted::new(200, r#"{"state": "running"}"#),
            not_found(),
            not_found(),
        ],
    );
    up.set("jobs/shy", json!({"state": "done", "output": "here"}));
    let (_, op) = shim
        .register(json!({"upstream": "jobs", "operation": "shy"}))
        .await;
    let id = id_of(&op);

    let done = wait_status(&shim, &id, "succeeded").await;
    assert_eq!(done["polls"], 6, "{done}");
    assert_eq!(done["result"], "here");
    assert_eq!(done["not_found_streak"], 0);
    let calls = [exactly_one_callback(&recv, &id, QUIET).await];
    assert_eq!(calls[0].body["type"], "operation.succeeded");
}

const VEO: &str = r#"
[upstreams.veo]
preset = "google-operation"
base_url = "{UP}/v1beta/"
poll = { initial = "50ms", max = "200ms" }
"#;

#[tokio::test]
async fn google_operation_preset_reads_veo_jobs() {
    let up = FakeUpstream::start().await;
    let recv = Receiver::start().await;
    let shim = TestShim::start(&format!("{CONFIG}{VEO}"), &up, &recv).await;
    let name = "models/veo-3.1-generate-preview/operations/abc";
    let path = format!("v1beta/{name}");
    up.set(&path, json!({"name": name, "done": false}));
    let (code, op) = shim
        .register(json!({"upstream": "veo", "operation": name}))
        .await;
    assert_eq!(code, 201, "{op}");
    let id = id_of(&op);
    wait_status(&shim, &id, "running").await;

    up.set(
        &path,
        json!({"name": name, "done": true, "response": {"generateVideoResponse": {
            "generatedSamples": [{"video": {"uri": "https://x/v.mp4"}}]}}}),
    );
    let done = wait_status(&shim, &id, "succeeded").await;
    assert_eq!(done["operation"], name);
    let calls = [exactly_one_callback(&recv, &id, QUIET).await];
    assert!(calls[0].verified);
    assert_eq!(calls[0].body["type"], "operation.succeeded");
    assert_eq!(
        calls[0].body["data"]["result"]
            .pointer("/generateVideoResponse/generatedSamples/0/video/uri"),
        Some(&json!("https://x/v.mp4")),
        "{}",
        calls[0].body
    );
    // Only the operation's own path was read.
    let all = up.all_requests().len();
    assert_eq!(up.requests_for(&path).len(), all);
}

#[tokio::test]
async fn google_operation_error_code_1_is_cancelled_others_failed() {
    let up = FakeUpstream::start().await;
    let recv = Receiver::start().await;
    let shim = TestShim::start(&format!("{CONFIG}{VEO}"), &up, &recv).await;
    for (op_name, code, status) in [("cxl", 1, "cancelled"), ("boom", 13, "failed")] {
        let name = format!("models/veo-3.1-generate-preview/operations/{op_name}");
        up.set(
            &format!("v1beta/{name}"),
            json!({"name": name, "done": true, "error": {"code": code, "message": "why"}}),
        );
        let (_, op) = shim
            .register(json!({"upstream": "veo", "operation": name}))
            .await;
        let id = id_of(&op);
        let done = wait_status(&shim, &id, status).await;
        assert_eq!(done["error"]["code"], code);
        assert!(done["result"].is_null());
        let calls = [exactly_one_callback(&recv, &id, QUIET).await];
        assert_eq!(calls[0].body["type"], format!("operation.{status}"));
        assert_eq!(calls[0].body["data"]["error"]["message"], "why");
    }
}

/// An upstream with entity tags: each status has an `ETag`; a request whose `If-None-Match`
/// matches gets `304 Not Modified` with no body. It records every `If-None-Match` it saw.
#[derive(Default)]
struct Tagged {
    state: String,
    version: u32,
    seen: Vec<Option<String>>,
    not_modified: u32,
}

async fn tagged_upstream() -> (String, std::sync::Arc<std::sync::Mutex<Tagged>>) {
    use axum::http::{HeaderMap, StatusCode, header};
    use axum::response::IntoResponse;
    let st = std::sync::Arc::new(std::sync::Mutex::new(Tagged {
        state: "running".into(),
        version: 1,
        ..Tagged::default()
    }));
    let shared = st.clone();
    let app = axum::Router::new().route(
        "/tagged/{id}",
        axum::routing::get(move |headers: HeaderMap| {
            let st = shared.clone();
            async move {
                let mut s = st.lock().unwrap();
                let inm = headers
                    .get(header::IF_NONE_MATCH)
                    .map(|v| v.to_str().unwrap().to_string());
                s.seen.push(inm.clone());
                let tag = format!("\"v{}\"", s.version);
                if inm.as_deref() == Some(tag.as_str()) {
                    s.not_modified += 1;
                    return (StatusCode::NOT_MODIFIED, [(header::ETAG, tag)]).into_response();
                }
                let body = json!({"state": s.state}).to_string();
                (StatusCode::OK, [(header::ETAG, tag)], body).into_response()
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, st)
}

#[tokio::test]
async fn conditional_requests_use_the_etag_and_304_means_no_change() {
    let (url, tagged) = tagged_upstream().await;
    let up = FakeUpstream::start().await;
    let recv = Receiver::start().await;
    let config = format!(
        r#"{CONFIG}
[upstreams.tagged]
base_url = "{url}/"
status_path = "tagged/{{operation}}"
status_field = "/state"
succeeded = ["done"]
failed = ["error"]
rate = {{ per_second = 200, burst = 20 }}
poll = {{ initial = "20ms", max = "40ms" }}
"#
    );
    let shim = TestShim::start(&config, &up, &recv).await;
    let (_, op) = shim
        .register(json!({"upstream": "tagged", "operation": "t1"}))
        .await;
    let id = id_of(&op);
    eventually(Duration::from_secs(5), "three 304 answers", || async {
        (tagged.lock().unwrap().not_modified >= 3).then_some(())
    })
    .await;
    let o = shim.op(&id).await;
    assert_eq!(o["status"], "running", "a 304 keeps the last status: {o}");
    assert!(o["last_poll_error"].is_null(), "a 304 is not an error: {o}");
    // The status changes: a new tag, a 200, and the change is seen.
    {
        let mut t = tagged.lock().unwrap();
        t.state = "done".into();
        t.version = 2;
    }
    wait_status(&shim, &id, "succeeded").await;
    let seen = tagged.lock().unwrap().seen.clone();
    assert_eq!(seen[0], None, "the first request has no tag to send");
    assert!(
        seen[1..].iter().all(|s| s.as_deref() == Some("\"v1\"")),
        "every later request sends the last ETag: {seen:?}"
    );
    assert!(shim.metrics().await.contains(
        "hookshim_upstream_requests_total{upstream=\"tagged\",outcome=\"not_modified\"}"
    ),);
}

#[tokio::test]
async fn a_429_halves_the_upstreams_rate_and_quiet_restores_it() {
    let up = FakeUpstream::start().await;
    let recv = Receiver::start().await;
    let config = format!(
        "{CONFIG}{}",
        TIGHT.replace("tight", "aimd").replace(
            "rate = { per_second = 5, burst = 5 }",
            "rate = { per_second = 40, burst = 4, min_per_second = 4, increase_every = \"300ms\" }"
        )
    );
    let shim = TestShim::start(&config, &up, &recv).await;
    let gauge = |m: &str| -> Option<f64> {
        m.lines()
            .find(|l| l.starts_with("hookshim_upstream_rate_limit{upstream=\"aimd\"}"))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
    };
    up.script(
        "aimd/x",
        vec![Scripted::new(429, "{}").header("retry-after", "0")],
    );
    up.set("aimd/x", json!({"state": "running"}));
    shim.register(json!({"upstream": "aimd", "operation": "x"}))
        .await;
    // Right after the 429 the allowed rate is half the ceiling (one congestion event) ...
    let lowered = eventually(Duration::from_secs(5), "the rate to drop", || async {
        gauge(&shim.metrics().await).filter(|r| *r < 40.0)
    })
    .await;
    assert!(
        (20.0..40.0).contains(&lowered),
        "40/s halved (and maybe partly recovered): {lowered}"
    );
    // ... and with no more 429s it climbs back to the ceiling and no further.
    let restored = eventually(Duration::from_secs(10), "the rate to recover", || async {
        gauge(&shim.metrics().await).filter(|r| *r >= 40.0)
    })
    .await;
    assert_eq!(restored, 40.0);
}

#[tokio::test]
async fn operations_registered_together_are_polled_spread_out() {
    let up = FakeUpstream::start().await;
    let recv = Receiver::start().await;
    let shim = TestShim::start(&format!("{CONFIG}{TIGHT}"), &up, &recv).await;
    let mut firsts = Vec::new();
    for i in 0..10 {
        up.set(&format!("tight/h{i}"), json!({"state": "running"}));
        let (_, op) = shim
            .register(json!({"upstream": "tight", "operation": format!("h{i}")}))
            .await;
        let at: hookshim::clock::Timestamp =
            serde_json::from_value(op["next_poll_at"].clone()).unwrap();
        firsts.push(at.0);
    }
    // 5 requests/s: first polls at least 200 ms apart, though all were registered at once.
    for w in firsts.windows(2) {
        assert!(w[1] >= w[0] + 200, "first polls too close: {firsts:?}");
    }
}

const WEBHOOK_ONLY: &str = r#"
[upstreams.hooks]
poll = { enabled = false }
[upstreams.hooks.webhook]
scheme = "standard-webhooks"
secret_env = "PUSHY_SECRET"
events = { "job.done" = "succeeded", "job.failed" = "failed" }
"#;

#[tokio::test]
async fn an_upstream_without_a_status_endpoint_is_never_polled() {
    let up = FakeUpstream::start().await;
    let recv = Receiver::start().await;
    let shim = TestShim::start(&format!("{CONFIG}{WEBHOOK_ONLY}"), &up, &recv).await;
    let (code, a) = shim
        .register(json!({"upstream": "hooks", "operation": "w1"}))
        .await;
    assert_eq!(code, 201, "{a}");
    let a = id_of(&a);
    let (_, b) = shim
        .register(json!({"upstream": "hooks", "operation": "w2", "deadline": "300ms"}))
        .await;
    let b = id_of(&b);
    // An event the map does not know: acknowledged, but nothing to read, so nothing changes.
    let (code, _) = shim
        .send_webhook(
            "hooks",
            PUSHY_SECRET,
            "msg_1",
            &json!({"type": "job.progress", "data": {"id": "w1"}}),
        )
        .await;
    assert_eq!(code, 200);
    // A mapped event ends it, with the event's data as the result.
    let (code, _) = shim
        .send_webhook(
            "hooks",
            PUSHY_SECRET,
            "msg_2",
            &json!({"type": "job.done", "data": {"id": "w1", "url": "u"}}),
        )
        .await;
    assert_eq!(code, 200);
    let done = wait_status(&shim, &a, "succeeded").await;
    assert_eq!(done["detected_via"], "webhook", "{done}");
    // The other one reaches its deadline without a status read and times out.
    let late = wait_status(&shim, &b, "timed_out").await;
    assert_eq!(late["error"]["code"], "deadline_exceeded", "{late}");
    assert_eq!(late["polls"], 0, "{late}");
    exactly_one_callback(&recv, &a, QUIET).await;
    exactly_one_callback(&recv, &b, QUIET).await;
    assert!(
        up.all_requests().is_empty(),
        "no status request may be sent with polling off"
    );
}

/// An upstream `u503` with a generous rate that recovers slowly (so a drop stays visible).
const UNAVAILABLE: &str = r#"
[upstreams.u503]
base_url = "{UP}/"
status_path = "u503/{operation}"
status_field = "/state"
succeeded = ["done"]
failed = ["error"]
result_field = "/output"
rate = { per_second = 40, burst = 4, min_per_second = 4, increase_every = "30s" }
poll = { initial = "10ms", max = "20ms" }
"#;

/// The `hookshim_upstream_rate_limit` gauge of `upstream`.
fn rate_gauge(metrics: &str, upstream: &str) -> Option<f64> {
    let prefix = format!("hookshim_upstream_rate_limit{{upstream=\"{upstream}\"}}");
    metrics
        .lines()
        .find(|l| l.starts_with(&prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// The status endpoint answers `503` (with `Retry-After: retry_after` if given): the whole
/// upstream pauses for at least `min_gap`, its rate drops, and the operation is not ended.
async fn unavailable_pauses_the_upstream(retry_after: Option<&str>, min_gap: Duration) {
    let up = FakeUpstream::start().await;
    let recv = Receiver::start().await;
    let shim = TestShim::start(&format!("{CONFIG}{UNAVAILABLE}"), &up, &recv).await;
    let mut answer = Scripted::new(503, r#"{"error": "overloaded"}"#);
    if let Some(v) = retry_after {
        answer = answer.header("retry-after", v);
    }
    up.script("u503/busy", vec![answer]);
    up.set("u503/busy", json!({"state": "running"}));
    let (_, op) = shim
        .register(json!({"upstream": "u503", "operation": "busy"}))
        .await;
    let a = id_of(&op);
    let t0 = wait_requests(&up, "u503/busy", 1).await[0];
    let failing = eventually(Duration::from_secs(5), "the 503 to be recorded", || async {
        let o = shim.op(&a).await;
        o["last_poll_error"]
            .as_str()
            .is_some_and(|e| e.contains("503"))
            .then_some(o)
    })
    .await;
    assert_eq!(
        failing["status"], "pending",
        "a 503 ends nothing: {failing}"
    );
    assert!(failing["completed_at"].is_null(), "{failing}");
    let metrics = shim.metrics().await;
    let rate = rate_gauge(&metrics, "u503").expect("a rate gauge for u503");
    assert!(
        rate < 40.0,
        "a 503 lowers the upstream's rate (40/s configured), the gauge says {rate}"
    );
    assert!(
        metrics.contains(
            "hookshim_upstream_requests_total{upstream=\"u503\",outcome=\"server_error\"} 1"
        ),
        "{metrics}"
    );
    // Another operation on the same upstream, due at once, waits out the pause too.
    up.set("u503/bystander", json!({"state": "running"}));
    shim.register(json!({"upstream": "u503", "operation": "bystander"}))
        .await;
    assert!(
        t0.elapsed() + Duration::from_millis(100) < min_gap,
        "the bystander was registered too late ({:?}) to test the pause",
        t0.elapsed()
    );
    let a_next = wait_requests(&up, "u503/busy", 2).await[1];
    let b_first = wait_requests(&up, "u503/bystander", 1).await[0];
    let what = retry_after.map_or("503 without Retry-After".to_string(), |v| {
        format!("503 with Retry-After: {v}")
    });
    assert!(
        a_next.duration_since(t0) >= min_gap,
        "{what}, but the operation was read again after {:?}",
        a_next.duration_since(t0)
    );
    assert!(
        b_first.duration_since(t0) >= min_gap,
        "{what}, but another operation on the upstream was read after {:?}",
        b_first.duration_since(t0)
    );
    // Then it carries on to its true end, with one callback.
    up.set("u503/busy", json!({"state": "done", "output": "late"}));
    let done = wait_status(&shim, &a, "succeeded").await;
    assert_eq!(done["result"], "late");
    let call = exactly_one_callback(&recv, &a, QUIET).await;
    assert_eq!(call.body["type"], "operation.succeeded");
}

#[tokio::test]
async fn a_503_with_retry_after_pauses_the_whole_upstream_and_ends_nothing() {
    unavailable_pauses_the_upstream(Some("2"), Duration::from_millis(1_900)).await;
}

#[tokio::test]
async fn a_503_without_retry_after_pauses_the_whole_upstream_for_a_second() {
    unavailable_pauses_the_upstream(None, Duration::from_millis(900)).await;
}

const PACED: &str = r#"
[upstreams.paced]
base_url = "{UP}/"
status_path = "paced/{operation}"
status_field = "/state"
succeeded = ["done"]
failed = ["error"]
rate = { per_second = 5, burst = 1 }
poll = { initial = "10ms", max = "20ms" }
"#;

#[tokio::test]
async fn the_limiter_paces_requests_at_the_upstream() {
    const OPS: usize = 30;
    let up = FakeUpstream::start().await;
    let recv = Receiver::start().await;
    let shim = TestShim::start(&format!("{CONFIG}{PACED}"), &up, &recv).await;
    let started = Instant::now();
    for i in 0..OPS {
        up.set(&format!("paced/p{i}"), json!({"state": "running"}));
        let (code, op) = shim
            .register(json!({"upstream": "paced", "operation": format!("p{i}")}))
            .await;
        assert_eq!(code, 201, "{op}");
    }
    // Each operation asks to be read every 10-20 ms: 30 of them are due all the time (over
    // 1,500 requests a second unpaced); only the limiter stands between them and the upstream.
    tokio::time::sleep(Duration::from_millis(3_200).saturating_sub(started.elapsed())).await;
    let mut reqs = up.all_requests();
    reqs.sort();
    // GCRA, 5/s, burst 1: one request per 200 ms. A closed 1 s window holds at most
    // 5 + 1 = 6 (its first request, then one per 200 ms).
    let window = Duration::from_secs(1);
    let worst = (0..reqs.len())
        .map(|i| {
            reqs[i..]
                .iter()
                .take_while(|u| u.duration_since(reqs[i]) <= window)
                .count()
        })
        .max()
        .unwrap_or(0);
    assert!(
        worst <= 6,
        "{worst} requests at the upstream within 1 s (rate 5/s, burst 1); {} in all",
        reqs.len()
    );
    // The budget was used: about 5 a second for ~3 s.
    assert!(
        reqs.len() >= 12,
        "only {} requests in ~3 s: the limiter was never exercised",
        reqs.len()
    );
    // No two requests closer than the limiter allows (less the delay between a request
    // leaving hookshim and the fake recording it): GCRA with burst 1 spaces them 200 ms.
    for w in reqs.windows(2) {
        let gap = w[1].duration_since(w[0]);
        assert!(
            gap >= Duration::from_millis(100),
            "two requests {gap:?} apart at 5/s, burst 1"
        );
    }
}

#[tokio::test]
async fn completions_are_learned_shown_and_kept_across_a_restart() {
    let up = FakeUpstream::start().await;
    let recv = Receiver::start().await;
    let mut shim = TestShim::start(CONFIG, &up, &recv).await;
    for i in 0..3 {
        let name = format!("learn{i}");
        up.set(
            &format!("jobs/{name}"),
            json!({"state": "done", "output": 1}),
        );
        let (_, op) = shim
            .register(json!({"upstream": "jobs", "operation": name}))
            .await;
        wait_status(&shim, &id_of(&op), "succeeded").await;
    }
    let learned =
        |v: &serde_json::Value| v["upstreams"]["jobs"]["priors"][0]["completions"].clone();
    let (status, body) = shim.get("/v1/upstreams").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(learned(&body), json!(3), "{body}");
    assert_eq!(body["upstreams"]["jobs"]["rate_per_second"], 200);
    assert!(body["upstreams"]["jobs"]["current_rate_per_second"].is_number());
    assert!(body["upstreams"]["jobs"]["priors"][0]["p50_s"].is_number());
    let metrics = shim.metrics().await;
    assert!(
        metrics.lines().any(
            |l| l.starts_with("hookshim_upstream_job_duration_quantile_seconds{")
                && l.contains("upstream=\"jobs\"")
                && l.contains("quantile=\"0.5\"")
        ),
        "{metrics}"
    );
    // Saved in the store and read back at start.
    shim.restart().await;
    let (_, body) = shim.get("/v1/upstreams").await;
    assert_eq!(learned(&body), json!(3), "{body}");
}
