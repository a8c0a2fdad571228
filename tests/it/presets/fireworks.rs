//! The fireworks-batch preset. Bodies are shaped as fw-ai-external/python-sdk types them:
//! `src/fireworks/types/batch_inference_job.py` (`BatchInferenceJob`: camelCase aliases,
//! `state` `JOB_STATE_*`, `jobProgress.percent` 0 to 100, `status: {code, message}`,
//! `outputDatasetId`).

use super::*;

fn name(id: &str) -> String {
    format!("accounts/acme/batchInferenceJobs/{id}")
}

fn job(id: &str, state: &str, percent: u32) -> Value {
    json!({"name": name(id), "displayName": "nightly eval", "state": state,
           "model": "accounts/fireworks/models/llama-v3p1-8b-instruct",
           "inputDatasetId": "accounts/acme/datasets/eval-in",
           "outputDatasetId": "accounts/acme/datasets/eval-out",
           "createdBy": "ops@acme.example", "createTime": rfc3339(SystemTime::now()),
           "updateTime": rfc3339(SystemTime::now()),
           "inferenceParameters": {"maxTokens": 1024, "temperature": 0.7},
           "jobProgress": {"percent": percent, "totalInputRequests": 500,
                           "totalProcessedRequests": percent * 5,
                           "successfullyProcessedRequests": percent * 5, "failedRequests": 0,
                           "inputTokens": 120000, "outputTokens": 80000}})
}

/// Register `id` by its name while it is `JOB_STATE_VALIDATING`, then `JOB_STATE_RUNNING` at
/// 30 %, then `terminal`.
async fn drive(r: &Rig, id: &str, terminal: Value, status: &str) -> Value {
    let path = format!("fireworks/v1/{}", name(id));
    r.up.set(&path, job(id, "JOB_STATE_VALIDATING", 0));
    let op = id_of(&r.register("fireworks", &name(id)).await);
    r.wait_read(&op, "pending").await;
    r.up.set(&path, job(id, "JOB_STATE_RUNNING", 30));
    let running = r.wait_read(&op, "running").await;
    assert_eq!(running["progress"], 0.3, "{running}");
    r.up.set(&path, terminal);
    let data = r.terminal_callback(&op, status, "poll").await;
    assert!(
        r.up.header_values(&path, "authorization")
            .iter()
            .all(|v| v == "Bearer test-fireworks-key")
    );
    data
}

#[tokio::test]
async fn fireworks_batch_succeeds_with_its_output_dataset() {
    let r = rig().await;
    let data = drive(
        &r,
        "fj-ok",
        job("fj-ok", "JOB_STATE_COMPLETED", 100),
        "succeeded",
    )
    .await;
    assert_eq!(data["operation"], name("fj-ok"));
    assert_eq!(data["upstream_status"], "JOB_STATE_COMPLETED");
    assert_eq!(
        data["result"]["outputDatasetId"],
        "accounts/acme/datasets/eval-out"
    );
    assert_eq!(data["result"]["jobProgress"]["percent"], 100);
}

#[tokio::test]
async fn fireworks_batch_failed_carries_its_status() {
    let r = rig().await;
    let mut failed = job("fj-bad", "JOB_STATE_FAILED", 10);
    failed["status"] = json!({"code": "INVALID_ARGUMENT", "message": "row 17 has no messages"});
    let data = drive(&r, "fj-bad", failed, "failed").await;
    assert_eq!(
        data["error"],
        json!({"code": "failed", "message": "row 17 has no messages",
               "status_code": "INVALID_ARGUMENT"})
    );
}

#[tokio::test]
async fn fireworks_batch_expired_keeps_the_output_dataset() {
    let r = rig().await;
    let data = drive(
        &r,
        "fj-late",
        job("fj-late", "JOB_STATE_EXPIRED", 85),
        "expired",
    )
    .await;
    assert_eq!(data["error"]["code"], "expired");
    assert_eq!(data["result"]["jobProgress"]["percent"], 85);
}

#[tokio::test]
async fn fireworks_batch_cancelled() {
    let r = rig().await;
    let path = format!("fireworks/v1/{}", name("fj-stop"));
    r.up.set(&path, job("fj-stop", "JOB_STATE_CANCELLING", 20));
    let op = id_of(&r.register("fireworks", &name("fj-stop")).await);
    r.wait_read(&op, "running").await;
    r.up.set(&path, job("fj-stop", "JOB_STATE_CANCELLED", 20));
    let data = r.terminal_callback(&op, "cancelled", "poll").await;
    assert_eq!(data["error"]["code"], "cancelled");
}

#[tokio::test]
async fn fireworks_batch_operations_that_are_not_job_names_are_refused() {
    let r = rig().await;
    for operation in [
        "fj-1",
        "accounts/acme/datasets/eval-in",
        "accounts/acme/batchInferenceJobs",
    ] {
        let (code, body) = r
            .shim
            .register(json!({"upstream": "fireworks", "operation": operation}))
            .await;
        assert_eq!(code, 422, "{operation}: {body}");
        let msg = body["error"]["message"].as_str().unwrap();
        assert!(
            msg.contains("accounts/{account}/batchInferenceJobs/{id}"),
            "{msg}"
        );
    }
    assert!(r.up.all_requests().is_empty());
}
