//! Issue 12 (hardening): each test here failed before its fix.
//! - D2: a signature header with 1,000 entries on a large body is refused without work per entry.
//! - D4: a deadline past year 9999 is a JSON 422 and leaves nothing behind; an upstream
//!   `expires_at` in year 3 million is ignored instead of panicking the poll.
//! - D8: a GitHub delivery replayed with a fresh `X-GitHub-Delivery` is a duplicate.
//! - D9: `..;` path segments cannot reach the upstream.

use std::time::Duration;

use crate::common::*;
use serde_json::{Value, json};

const GH_SECRET: &str = "gh-hardening-secret";

/// The standard config plus a GitHub-signed upstream that polls only hourly (so every status
/// read in a test is one a webhook triggered) and an OpenAI batch upstream.
fn config() -> String {
    format!(
        "{CONFIG}
[upstreams.gh]
base_url = \"{{UP}}/\"
status_path = \"gh/{{operation}}\"
status_field = \"/state\"
succeeded = [\"done\"]
failed = [\"error\"]
poll = {{ initial = \"1h\", multiplier = 1.5, max = \"2h\", jitter = 0.0, deadline = \"24h\" }}
[upstreams.gh.webhook]
scheme = \"github\"
secret_env = \"GH_SECRET\"
operation_field = \"/job/id\"
safety_poll = \"2h\"

[upstreams.oai-batch]
preset = \"openai-batch\"
base_url = \"{{UP}}/openai/v1/\"
poll = {{ initial = \"50ms\", multiplier = 1.5, max = \"200ms\", jitter = 0.1, deadline = \"1h\", finalizing = \"50ms\", eta_max = \"200ms\" }}
"
    )
}

async fn shim() -> (FakeUpstream, Receiver, TestShim) {
    let up = FakeUpstream::start().await;
    let recv = Receiver::start().await;
    let shim = TestShim::start_with_env(
        &config(),
        &up,
        &recv,
        vec![
            ("GH_SECRET".into(), GH_SECRET.into()),
            ("OPENAI_API_KEY".into(), "sk-test".into()),
        ],
    )
    .await;
    (up, recv, shim)
}

async fn post_raw(
    shim: &TestShim,
    path: &str,
    headers: &[(&str, String)],
    body: &[u8],
) -> (u16, Value) {
    let mut req = shim
        .http
        .post(format!("{}{path}", shim.url))
        .body(body.to_vec());
    for (k, v) in headers {
        req = req.header(*k, v);
    }
    let r = req.send().await.unwrap();
    let code = r.status().as_u16();
    (code, r.json().await.unwrap_or_default())
}

fn metric_line(metrics: &str, prefix: &str) -> Option<String> {
    metrics
        .lines()
        .find(|l| l.starts_with(prefix))
        .map(str::to_string)
}

// D2 --------------------------------------------------------------------------------------------

#[tokio::test]
async fn a_thousand_signatures_on_a_large_body_are_refused() {
    let (_up, _recv, shim) = shim().await;
    let (code, _) = shim
        .register(json!({"upstream": "pushy", "operation": "big"}))
        .await;
    assert_eq!(code, 201);
    let body =
        serde_json::to_vec(&json!({"data": {"id": "big"}, "pad": "x".repeat(200_000)})).unwrap();
    let junk = "v1,dGhpcyBpcyBub3QgYSBzaWduYXR1cmUgb2YgYW55dGhpbmc=";
    let sigs = vec![junk; 1000].join(" ");
    let headers = [
        ("webhook-id", "wh-many".to_string()),
        ("webhook-timestamp", time_now_secs().to_string()),
        ("webhook-signature", sigs),
    ];
    let (code, err) = post_raw(&shim, "/webhooks/pushy", &headers, &body).await;
    assert_eq!(code, 401, "{err}");
    assert_eq!(err["error"]["code"], "malformed_signature", "{err}");
    assert!(
        err["error"]["message"]
            .as_str()
            .unwrap()
            .contains("at most 4096"),
        "{err}"
    );
    // 17 short entries: refused, the limit named.
    let sigs = vec!["v1,bm9wZQ=="; 17].join(" ");
    let headers = [
        ("webhook-id", "wh-many".to_string()),
        ("webhook-timestamp", time_now_secs().to_string()),
        ("webhook-signature", sigs),
    ];
    let (code, err) = post_raw(&shim, "/webhooks/pushy", &headers, &body).await;
    assert_eq!(code, 401, "{err}");
    assert_eq!(err["error"]["code"], "too_many_signatures", "{err}");
    assert!(
        err["error"]["message"]
            .as_str()
            .unwrap()
            .contains("at most 16"),
        "{err}"
    );
    // A genuine webhook with a large body still verifies (on a blocking thread).
    let (code, ok) = shim
        .send_webhook(
            "pushy",
            PUSHY_SECRET,
            "wh-big",
            &json!({"data": {"id": "big"}, "pad": "x".repeat(200_000)}),
        )
        .await;
    assert_eq!(code, 200, "{ok}");
    assert_eq!(ok["result"], "accepted");
}

// D4 --------------------------------------------------------------------------------------------

#[tokio::test]
async fn a_deadline_past_year_9999_is_refused_and_leaves_nothing_behind() {
    let (_up, _recv, shim) = shim().await;
    let gauge = "hookshim_operations_active{upstream=\"jobs\"}";
    let before = metric_line(&shim.metrics().await, gauge);
    for deadline in ["100000000years", "367days", "400d"] {
        let (code, err) = shim
            .register(json!({"upstream": "jobs", "operation": "far", "deadline": deadline}))
            .await;
        assert_eq!(code, 422, "{deadline}: {err}");
        assert_eq!(err["error"]["code"], "invalid_deadline", "{err}");
        assert!(
            err["error"]["message"]
                .as_str()
                .unwrap()
                .contains("at most 366 days"),
            "{err}"
        );
    }
    let (code, list) = shim.get("/v1/operations").await;
    assert_eq!(code, 200);
    assert_eq!(list["operations"], json!([]), "{list}");
    assert_eq!(metric_line(&shim.metrics().await, gauge), before);
    // The longest deadline accepted is 366 days; the same operation registers normally.
    let (code, op) = shim
        .register(json!({"upstream": "jobs", "operation": "far", "deadline": "366d"}))
        .await;
    assert_eq!(code, 201, "{op}");
}

#[tokio::test]
async fn an_upstream_expiry_in_a_far_year_is_ignored_not_fatal() {
    let (up, recv, shim) = shim().await;
    let path = "openai/v1/batches/batch_far";
    let batch = |status: &str| {
        json!({"id": "batch_far", "object": "batch", "status": status,
               "expires_at": 99_999_999_999_999u64, "created_at": 99_999_999_999_999u64,
               "output_file_id": "file-out", "error_file_id": null, "errors": null,
               "request_counts": {"total": 2, "completed": 1, "failed": 0}})
    };
    up.set(path, batch("in_progress"));
    let (code, op) = shim
        .register(json!({"upstream": "oai-batch", "operation": "batch_far"}))
        .await;
    assert_eq!(code, 201, "{op}");
    let id = op["id"].as_str().unwrap().to_string();
    eventually(Duration::from_secs(5), "two polls", || async {
        (up.requests_for(path).len() >= 2).then_some(())
    })
    .await;
    up.set(path, batch("completed"));
    let done = wait_status(&shim, &id, "succeeded").await;
    assert_eq!(done["detected_via"], "poll");
    exactly_one_callback(&recv, &id, QUIET).await;
}

// D8 --------------------------------------------------------------------------------------------

#[tokio::test]
async fn a_github_delivery_replayed_with_a_fresh_delivery_id_is_a_duplicate() {
    let (up, _recv, shim) = shim().await;
    up.set("gh/g1", json!({"state": "running"}));
    let (code, op) = shim
        .register(json!({"upstream": "gh", "operation": "g1"}))
        .await;
    assert_eq!(code, 201, "{op}");
    let body = serde_json::to_vec(&json!({"action": "in_progress", "job": {"id": "g1"}})).unwrap();
    let sig = hookshim::signing::github_signature(GH_SECRET.as_bytes(), &body);
    let send = |delivery: &'static str| {
        let headers = [
            ("x-hub-signature-256", sig.clone()),
            ("x-github-delivery", delivery.to_string()),
        ];
        let (shim, body) = (&shim, &body);
        async move { post_raw(shim, "/webhooks/gh", &headers, body).await }
    };
    let (code, first) = send("d-1").await;
    assert_eq!(code, 200, "{first}");
    assert_eq!(first["result"], "accepted");
    eventually(
        Duration::from_secs(5),
        "the webhook's status read",
        || async { (up.requests_for("gh/g1").len() == 1).then_some(()) },
    )
    .await;
    // The captured delivery, replayed with a new delivery id (unsigned, so anyone can).
    let (code, replay) = send("d-2").await;
    assert_eq!(code, 200, "{replay}");
    assert_eq!(replay["result"], "duplicate", "{replay}");
    assert_eq!(replay["webhook_id"], first["webhook_id"]);
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(
        up.requests_for("gh/g1").len(),
        1,
        "a replay must not trigger a status read"
    );
}

// D9 --------------------------------------------------------------------------------------------

#[tokio::test]
async fn matrix_dot_segments_cannot_leave_the_status_path() {
    let (up, _recv, shim) = shim().await;
    for operation in [
        "..;/admin",
        "x/..;/..;/admin",
        "%2e%2e;/admin",
        ".;/x",
        "..\\admin",
    ] {
        let (code, err) = shim
            .register(json!({"upstream": "jobs", "operation": operation}))
            .await;
        assert_eq!(code, 422, "{operation}: {err}");
        assert_eq!(err["error"]["code"], "invalid_operation", "{err}");
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(up.all_requests().is_empty());
}
