//! Inbound webhook schemes other than Standard Webhooks: GitHub's `X-Hub-Signature-256` and the
//! unsigned `none` scheme.

mod common;

use common::*;
use serde_json::json;

const GH_SECRET: &str = "It's a Secret to Everybody";

fn config() -> String {
    format!(
        "{CONFIG}
[upstreams.gh]
base_url = \"{{UP}}/\"
status_path = \"gh/{{operation}}\"
status_field = \"/state\"
succeeded = [\"done\"]
failed = [\"error\"]
poll = {{ initial = \"50ms\", max = \"200ms\" }}
[upstreams.gh.webhook]
scheme = \"github\"
secret_env = \"GH_SECRET\"
operation_field = \"/job/id\"

[upstreams.open]
base_url = \"{{UP}}/\"
status_path = \"open/{{operation}}\"
status_field = \"/state\"
error_field = \"/error\"
succeeded = [\"done\"]
failed = [\"error\"]
poll = {{ initial = \"50ms\", max = \"200ms\" }}
[upstreams.open.webhook]
scheme = \"none\"
operation_field = \"/id\"
"
    )
}

async fn post_raw(
    shim: &TestShim,
    path: &str,
    headers: &[(&str, String)],
    body: &[u8],
) -> (u16, serde_json::Value) {
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

#[tokio::test]
async fn github_signed_webhook_is_verified_and_deduplicated_by_delivery_id() {
    let up = FakeUpstream::start().await;
    let recv = Receiver::start().await;
    let shim = TestShim::start_with_env(
        &config(),
        &up,
        &recv,
        vec![("GH_SECRET".into(), GH_SECRET.into())],
    )
    .await;
    up.set("gh/g1", json!({"state": "done"}));
    let (_, op) = shim
        .register(json!({"upstream": "gh", "operation": "g1"}))
        .await;
    let id = op["id"].as_str().unwrap().to_string();
    let body = serde_json::to_vec(&json!({"action": "completed", "job": {"id": "g1"}})).unwrap();
    let sig = hookshim::signing::github_signature(GH_SECRET.as_bytes(), &body);

    let forged = hookshim::signing::github_signature(b"wrong", &body);
    let (code, err) = post_raw(
        &shim,
        "/webhooks/gh",
        &[("x-hub-signature-256", forged)],
        &body,
    )
    .await;
    assert_eq!(code, 401, "{err}");
    assert_eq!(err["error"]["code"], "bad_signature");

    let headers = [
        ("x-hub-signature-256", sig.clone()),
        ("x-github-delivery", "d-1".to_string()),
    ];
    let (code, first) = post_raw(&shim, "/webhooks/gh", &headers, &body).await;
    assert_eq!(code, 200, "{first}");
    assert_eq!(first["result"], "accepted");
    let (_, second) = post_raw(&shim, "/webhooks/gh", &headers, &body).await;
    assert_eq!(second["result"], "duplicate");
    let done = wait_status(&shim, &id, "succeeded").await;
    assert_eq!(done["detected_via"], "webhook");
    assert_eq!(wait_calls(&recv, &id, 1).await.len(), 1);
}

#[tokio::test]
async fn unsigned_scheme_deduplicates_identical_bodies() {
    let up = FakeUpstream::start().await;
    let recv = Receiver::start().await;
    let shim = TestShim::start_with_env(
        &config(),
        &up,
        &recv,
        vec![("GH_SECRET".into(), GH_SECRET.into())],
    )
    .await;
    up.set("open/n1", json!({"state": "error", "error": "bad input"}));
    let (_, op) = shim
        .register(json!({"upstream": "open", "operation": "n1"}))
        .await;
    let id = op["id"].as_str().unwrap().to_string();
    let body = br#"{"id": "n1", "event": "finished"}"#;
    let (c1, b1) = post_raw(&shim, "/webhooks/open", &[], body).await;
    let (c2, b2) = post_raw(&shim, "/webhooks/open", &[], body).await;
    assert_eq!((c1, c2), (200, 200));
    assert_eq!(
        (b1["result"].as_str(), b2["result"].as_str()),
        (Some("accepted"), Some("duplicate"))
    );
    let done = wait_status(&shim, &id, "failed").await;
    assert_eq!(done["error"], "bad input");
    assert_eq!(
        wait_calls(&recv, &id, 1).await[0].body["type"],
        "operation.failed"
    );
}
