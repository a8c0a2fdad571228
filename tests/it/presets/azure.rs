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

// ---------------------------------------------------------------------------------------------
// Ends azure-core knows and the final resource (issue 11).

/// Document Translation ends a refused job in `ValidationFailed` (Translator REST reference,
/// "Get translation status": `status` is one of NotStarted, Running, Succeeded, Failed,
/// Cancelled, Cancelling, ValidationFailed). Before issue 11 it was read as running until the
/// deadline.
#[tokio::test]
async fn document_translation_validation_failed_is_failed() {
    let r = rig().await;
    let (url, path) = azure_op(&r, "tr-refused");
    let data = r
        .drive(
            "azure",
            &url,
            &path,
            json!({"id": "tr-refused", "status": "Running",
                   "summary": {"total": 1, "failed": 0, "success": 0, "inProgress": 1,
                               "notYetStarted": 0, "cancelled": 0, "totalCharacterCharged": 0}}),
            "running",
            json!({"id": "tr-refused", "status": "ValidationFailed",
                   "error": {"code": "InvalidRequest", "message": "No translatable documents",
                             "target": "Operation",
                             "innerError": {"code": "NoTranslatableDocuments",
                                            "message": "No documents found in the source container"}}}),
            "failed",
        )
        .await;
    assert_eq!(data["upstream_status"], "ValidationFailed");
    assert_eq!(
        data["error"]["innerError"]["code"],
        "NoTranslatableDocuments"
    );
}

/// azure-core's `OperationResourcePolling.get_final_get_url` (azure/core/polling/base_polling.py)
/// reads the final resource from the status body's `resourceLocation` once the operation
/// succeeded; hookshim does the same and makes it the `result`.
#[tokio::test]
async fn azure_async_reads_the_final_resource_at_resource_location() {
    let r = rig().await;
    let (url, path) = azure_op(&r, "op-final");
    let resource_path = "azure/subscriptions/s1/providers/Microsoft.Compute/disks/d1";
    r.up.set(
        resource_path,
        json!({"id": "/subscriptions/s1/disks/d1", "name": "d1", "properties": {"diskSizeGB": 64}}),
    );
    let data = r
        .drive(
            "azure",
            &url,
            &path,
            json!({"status": "Running"}),
            "running",
            json!({"status": "Succeeded",
                   "resourceLocation": format!("{}/{resource_path}?api-version=2024-07-01", r.up.url)}),
            "succeeded",
        )
        .await;
    assert_eq!(data["result"]["properties"]["diskSizeGB"], 64, "{data}");
    assert_eq!(r.up.requests_for(resource_path).len(), 1);
    assert_eq!(
        r.up.header_values(resource_path, "api-key")[0],
        "test-azure-key"
    );

    // A location without scheme and host is resolved against the status URL.
    let (url, path) = azure_op(&r, "op-rel");
    let data = r
        .drive(
            "azure",
            &url,
            &path,
            json!({"status": "Running"}),
            "running",
            json!({"status": "Succeeded", "resourceLocation": format!("/{resource_path}")}),
            "succeeded",
        )
        .await;
    assert_eq!(data["result"]["name"], "d1", "{data}");
}

/// If the final resource cannot be read (error answer, or a location outside `base_url`, where
/// the credentials are never sent), the operation still succeeds with the status body as
/// `result`.
#[tokio::test]
async fn azure_async_final_resource_failures_keep_the_status_body() {
    let r = rig().await;
    let other = FakeUpstream::start().await;
    other.set("elsewhere/d1", json!({"stolen": true}));
    for (name, location) in [
        ("op-gone", format!("{}/azure/missing/d1", r.up.url)),
        ("op-away", format!("{}/elsewhere/d1", other.url)),
    ] {
        let (url, path) = azure_op(&r, name);
        let terminal = json!({"status": "Succeeded", "resourceLocation": location});
        let data = r
            .drive(
                "azure",
                &url,
                &path,
                json!({"status": "Running"}),
                "running",
                terminal.clone(),
                "succeeded",
            )
            .await;
        assert_eq!(data["result"], terminal, "{name}: {data}");
    }
    assert!(
        other.all_requests().is_empty(),
        "no request outside base_url"
    );
    let metrics = r.shim.metrics().await;
    assert!(metrics.contains("final_resource_error"), "{metrics}");
}

/// A preset's status lists extended in config (issue 11): `failed = ["Rejected"]` ends a job
/// the preset would read as running; `running = ["Canceled"]` waits past an end it knows.
#[tokio::test]
async fn azure_async_status_lists_extended_in_config() {
    let r = rig().await;
    let (url, path) = azure_op(&r, "op-rejected");
    let data = r
        .drive(
            "azure-ext",
            &url,
            &path,
            json!({"status": "Canceled"}),
            "running",
            json!({"status": "Rejected"}),
            "failed",
        )
        .await;
    assert_eq!(data["upstream_status"], "Rejected");
    assert_eq!(data["error"]["code"], "rejected");
}
