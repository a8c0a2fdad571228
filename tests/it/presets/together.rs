//! The together-batch preset. Bodies are shaped as togethercomputer/together-py types them
//! (`src/together/types/batch_retrieve_response.py`: `status`, `progress` 0.0 to 100,
//! `job_deadline`, `output_file_id`, `error_file_id`, `error`) and as the API reference's
//! example shows them (<https://docs.together.ai/reference/batch-create>).

use super::*;

fn job(id: &str, status: &str, progress: f64) -> Value {
    json!({"id": id, "user_id": "user_789xyz012", "input_file_id": "file-input123abc456def",
           "file_size_bytes": 1048576, "status": status,
           "job_deadline": rfc3339(in_hours(24)), "created_at": rfc3339(SystemTime::now()),
           "endpoint": "/v1/chat/completions", "progress": progress,
           "model_id": "meta-llama/Meta-Llama-3.1-8B-Instruct-Turbo",
           "output_file_id": null, "error_file_id": null, "error": null, "completed_at": null})
}

/// Register `id` while it is `VALIDATING`, then `IN_PROGRESS` at 40 %, then `terminal`.
async fn drive(r: &Rig, id: &str, terminal: Value, status: &str) -> Value {
    let path = format!("together/v1/batches/{id}");
    r.up.set(&path, job(id, "VALIDATING", 0.0));
    let op = id_of(&r.register("together", id).await);
    r.wait_read(&op, "pending").await;
    r.up.set(&path, job(id, "IN_PROGRESS", 40.0));
    let running = r.wait_read(&op, "running").await;
    assert_eq!(running["progress"], 0.4, "{running}");
    r.up.set(&path, terminal);
    let data = r.terminal_callback(&op, status, "poll").await;
    assert!(
        r.up.header_values(&path, "authorization")
            .iter()
            .all(|v| v == "Bearer test-together-key")
    );
    data
}

#[tokio::test]
async fn together_batch_succeeds_with_its_files() {
    let r = rig().await;
    let mut done = job("tb-ok", "COMPLETED", 100.0);
    done["output_file_id"] = json!("file-output789xyz012ghi");
    done["error_file_id"] = json!("file-errors456def789jkl");
    let data = drive(&r, "tb-ok", done, "succeeded").await;
    assert_eq!(data["upstream_status"], "COMPLETED");
    assert_eq!(data["result"]["output_file_id"], "file-output789xyz012ghi");
    assert_eq!(data["result"]["error_file_id"], "file-errors456def789jkl");
}

#[tokio::test]
async fn together_batch_failed_carries_its_error() {
    let r = rig().await;
    let mut failed = job("tb-bad", "FAILED", 0.0);
    failed["error"] = json!("Invalid JSONL on line 3");
    let data = drive(&r, "tb-bad", failed, "failed").await;
    assert_eq!(
        data["error"],
        json!({"code": "failed", "message": "Invalid JSONL on line 3"})
    );
}

#[tokio::test]
async fn together_batch_expired_keeps_the_partial_output() {
    let r = rig().await;
    let mut late = job("tb-late", "EXPIRED", 80.0);
    late["output_file_id"] = json!("file-partial");
    let data = drive(&r, "tb-late", late, "expired").await;
    assert_eq!(data["error"]["code"], "expired");
    assert_eq!(data["result"]["output_file_id"], "file-partial");
}

#[tokio::test]
async fn together_batch_cancelled_after_canceling() {
    let r = rig().await;
    let path = "together/v1/batches/tb-stop";
    r.up.set(path, job("tb-stop", "CANCELING", 30.0));
    let op = id_of(&r.register("together", "tb-stop").await);
    r.wait_read(&op, "running").await;
    r.up.set(path, job("tb-stop", "CANCELLED", 30.0));
    let data = r.terminal_callback(&op, "cancelled", "poll").await;
    assert_eq!(data["error"]["code"], "cancelled");
}
