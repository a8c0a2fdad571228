//! The azure-async preset: the full status URL as the operation, and Azure's Retry-After.

use super::*;

// ---------------------------------------------------------------------------------------------
// azure-async

fn azure_op(r: &Rig, name: &str) -> (String, String) {
    let path = format!(
        "azure/subscriptions/s1/providers/Microsoft.Compute/locations/westus/operations/{name}"
    );
    (format!("{}/{path}?api-version=2024-07-01", r.up.url), path)
}

#[tokio::test]
async fn azure_async_each_end_with_the_full_status_url() {
    let r = rig().await;
    let (url, path) = azure_op(&r, "op-ok");
    let data = r
        .drive(
            "azure",
            &url,
            &path,
            json!({"name": "op-ok", "status": "InProgress", "percentComplete": 40}),
            "running",
            json!({"name": "op-ok", "status": "Succeeded", "properties": {"output": {"disk": "d1"}}}),
            "succeeded",
        )
        .await;
    assert_eq!(data["operation"], url);
    assert_eq!(data["result"]["properties"]["output"]["disk"], "d1");
    assert_eq!(r.up.header_values(&path, "api-key")[0], "test-azure-key");

    let (url, path) = azure_op(&r, "op-bad");
    let data = r
        .drive(
            "azure",
            &url,
            &path,
            json!({"status": "NotStarted"}),
            "pending",
            json!({"status": "Failed", "error": {"code": "QuotaExceeded", "message": "no quota"}}),
            "failed",
        )
        .await;
    assert_eq!(data["error"]["code"], "QuotaExceeded");
    let (url, path) = azure_op(&r, "op-stop");
    let data = r
        .drive(
            "azure",
            &url,
            &path,
            json!({"status": "Running"}),
            "running",
            json!({"status": "Canceled"}),
            "cancelled",
        )
        .await;
    assert_eq!(data["error"]["code"], "canceled");
}

#[tokio::test]
async fn status_urls_outside_the_base_url_are_refused_at_registration() {
    let r = rig().await;
    let other = FakeUpstream::start().await;
    let cases = [
        // Another port on the same host is another origin.
        (
            "azure",
            format!("{}/azure/subscriptions/s1/operations/x", other.url),
        ),
        ("azure", format!("{}/elsewhere/operations/x", r.up.url)),
        (
            "azure",
            r.up.url.replace("http://", "http://user:pw@") + "/azure/operations/x",
        ),
        // A name that is an absolute URL would replace the base URL when joined.
        ("veo", format!("{}/gemini/v1beta/operations/x", other.url)),
    ];
    for (upstream, operation) in &cases {
        let (code, body) = r
            .shim
            .register(json!({"upstream": upstream, "operation": operation}))
            .await;
        assert_eq!(code, 422, "{operation}: {body}");
        assert_eq!(body["error"]["code"], "invalid_operation");
        let msg = body["error"]["message"].as_str().unwrap();
        assert!(
            msg.contains("is not under the upstream's base_url"),
            "{msg}"
        );
    }
    let (code, body) = r
        .shim
        .register(json!({"upstream": "azure", "operation": "op-123"}))
        .await;
    assert_eq!(code, 422);
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("must be the full status URL from the Azure-AsyncOperation"),
        "{body}"
    );
    assert!(other.all_requests().is_empty());
    assert!(r.up.all_requests().is_empty());
}

#[tokio::test]
async fn azure_retry_after_delays_the_next_read() {
    let r = rig().await;
    let (url, path) = azure_op(&r, "op-slow");
    r.up.script(
        &path,
        vec![Scripted::new(202, r#"{"status": "Running"}"#).header("retry-after", "1")],
    );
    r.up.set(&path, json!({"status": "Succeeded"}));
    let id = id_of(&r.register("azure", &url).await);
    r.terminal_callback(&id, "succeeded", "poll").await;
    let reqs = r.up.requests_for(&path);
    let gap = reqs[1].duration_since(reqs[0]);
    assert!(
        gap >= Duration::from_millis(900),
        "Retry-After: 1 on a 202, but read again after {gap:?}"
    );
}
