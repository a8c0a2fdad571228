//! The mistral-batch preset. Bodies are shaped as mistralai/client-python (2.5.0) types them:
//! `src/mistralai/client/models/batchjob.py` (`BatchJob`), `batchjobstatus.py` (the statuses)
//! and `batcherror.py` (`errors[]`: `message`, `count`).

use super::*;

fn job(id: &str, status: &str, counts: [u32; 4]) -> Value {
    let [total, completed, succeeded, failed] = counts;
    json!({"id": id, "object": "batch", "input_files": ["5f7a1c2e-file"],
           "endpoint": "/v1/chat/completions", "model": "mistral-small-latest",
           "metadata": {"job": "nightly"}, "errors": [], "status": status,
           "created_at": 1764500000, "started_at": 1764500060,
           "total_requests": total, "completed_requests": completed,
           "succeeded_requests": succeeded, "failed_requests": failed,
           "output_file": null, "error_file": null})
}

/// Register `id` while it is `QUEUED`, then `RUNNING` half done, then `terminal`.
async fn drive(r: &Rig, id: &str, terminal: Value, status: &str) -> Value {
    let path = format!("mistral/v1/batch/jobs/{id}");
    r.up.set(&path, job(id, "QUEUED", [0, 0, 0, 0]));
    let op = id_of(&r.register("mistral", id).await);
    r.wait_read(&op, "pending").await;
    r.up.set(&path, job(id, "RUNNING", [10, 5, 5, 0]));
    let running = r.wait_read(&op, "running").await;
    assert_eq!(running["progress"], 0.5, "{running}");
    r.up.set(&path, terminal);
    let data = r.terminal_callback(&op, status, "poll").await;
    assert!(
        r.up.header_values(&path, "authorization")
            .iter()
            .all(|v| v == "Bearer test-mistral-key")
    );
    data
}

#[tokio::test]
async fn mistral_batch_succeeds_with_its_files() {
    let r = rig().await;
    let mut done = job("mb-ok", "SUCCESS", [10, 10, 9, 1]);
    done["output_file"] = json!("c3b1-output");
    done["error_file"] = json!("c3b1-errors");
    let data = drive(&r, "mb-ok", done, "succeeded").await;
    assert_eq!(data["upstream_status"], "SUCCESS");
    assert_eq!(data["result"]["output_file"], "c3b1-output");
    assert_eq!(data["result"]["error_file"], "c3b1-errors");
    assert_eq!(data["result"]["failed_requests"], 1);
    assert!(data["error"].is_null());
}

#[tokio::test]
async fn mistral_batch_failed_carries_its_errors() {
    let r = rig().await;
    let mut failed = job("mb-bad", "FAILED", [10, 5, 5, 0]);
    failed["errors"] = json!([{"message": "Model not available for batch inference", "count": 1}]);
    let data = drive(&r, "mb-bad", failed, "failed").await;
    assert_eq!(data["error"]["code"], "failed");
    assert_eq!(
        data["error"]["message"],
        "Model not available for batch inference"
    );
    assert_eq!(data["error"]["errors"][0]["count"], 1);
}

#[tokio::test]
async fn mistral_batch_timeout_exceeded_is_expired() {
    let r = rig().await;
    let mut late = job("mb-late", "TIMEOUT_EXCEEDED", [10, 7, 7, 0]);
    late["output_file"] = json!("partial-output");
    let data = drive(&r, "mb-late", late, "expired").await;
    assert_eq!(data["error"]["code"], "timeout_exceeded");
    assert_eq!(data["result"]["output_file"], "partial-output");
}

#[tokio::test]
async fn mistral_batch_cancelled_after_cancellation_requested() {
    let r = rig().await;
    let path = "mistral/v1/batch/jobs/mb-stop";
    r.up.set(
        path,
        job("mb-stop", "CANCELLATION_REQUESTED", [10, 6, 6, 0]),
    );
    let op = id_of(&r.register("mistral", "mb-stop").await);
    r.wait_read(&op, "running").await;
    r.up.set(path, job("mb-stop", "CANCELLED", [10, 6, 6, 0]));
    let data = r.terminal_callback(&op, "cancelled", "poll").await;
    assert_eq!(data["error"]["code"], "cancelled");
    assert_eq!(data["result"]["succeeded_requests"], 6);
}
