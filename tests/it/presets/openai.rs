//! The OpenAI presets: openai-batch, openai-response.

use super::*;

// ---------------------------------------------------------------------------------------------
// openai-batch, openai-response

pub(super) fn openai_batch(status: &str, extra: Value) -> Value {
    let mut v = json!({"id": "batch_x", "object": "batch", "endpoint": "/v1/chat/completions",
        "errors": null, "input_file_id": "file-in", "completion_window": "24h", "status": status,
        "output_file_id": null, "error_file_id": null, "created_at": unix(SystemTime::now()),
        "expires_at": unix(in_hours(24)), "request_counts": {"total": 4, "completed": 1, "failed": 1},
        "metadata": null});
    v.as_object_mut()
        .unwrap()
        .extend(extra.as_object().unwrap().clone());
    v
}

#[tokio::test]
async fn openai_batch_each_end_with_progress_and_file_ids() {
    let r = rig().await;
    r.up.set(
        "openai/v1/batches/batch_ok",
        openai_batch("in_progress", json!({})),
    );
    let id = id_of(&r.register("oai-batch", "batch_ok").await);
    let seen = r.wait_read(&id, "running").await;
    assert_eq!(seen["progress"], 0.5);
    r.up.set(
        "openai/v1/batches/batch_ok",
        openai_batch(
            "completed",
            json!({"output_file_id": "file-out", "error_file_id": "file-err",
                   "request_counts": {"total": 4, "completed": 3, "failed": 1}}),
        ),
    );
    let data = r.terminal_callback(&id, "succeeded", "poll").await;
    assert_eq!(data["result"]["output_file_id"], "file-out");
    assert_eq!(data["result"]["error_file_id"], "file-err");
    assert_eq!(data["result"]["request_counts"]["completed"], 3);
    assert_eq!(
        r.up.header_values("openai/v1/batches/batch_ok", "authorization")[0],
        "Bearer test-openai-key"
    );

    let errors = json!({"errors": {"object": "list", "data": [
        {"code": "invalid_request", "message": "Line 2: model not found", "param": "body.model", "line": 2}]}});
    let data = r
        .drive(
            "oai-batch",
            "batch_bad",
            "openai/v1/batches/batch_bad",
            openai_batch("validating", json!({})),
            "pending",
            openai_batch("failed", errors),
            "failed",
        )
        .await;
    assert_eq!(data["error"]["message"], "Line 2: model not found");
    assert_eq!(data["error"]["errors"][0]["line"], 2);

    let data = r
        .drive(
            "oai-batch",
            "batch_late",
            "openai/v1/batches/batch_late",
            openai_batch("in_progress", json!({})),
            "running",
            openai_batch("expired", json!({"output_file_id": "file-partial"})),
            "expired",
        )
        .await;
    assert_eq!(data["error"]["code"], "expired");
    assert_eq!(data["result"]["output_file_id"], "file-partial");

    let data = r
        .drive(
            "oai-batch",
            "batch_stop",
            "openai/v1/batches/batch_stop",
            openai_batch("cancelling", json!({})),
            "running",
            openai_batch("cancelled", json!({})),
            "cancelled",
        )
        .await;
    assert_eq!(data["error"]["code"], "cancelled");
}

pub(super) fn openai_response(status: &str, extra: Value) -> Value {
    let mut v = json!({"id": "resp_x", "object": "response", "created_at": unix(SystemTime::now()),
        "status": status, "background": true, "error": null, "incomplete_details": null,
        "model": "o3-deep-research", "output": []});
    v.as_object_mut()
        .unwrap()
        .extend(extra.as_object().unwrap().clone());
    v
}

#[tokio::test]
async fn openai_response_each_end() {
    let r = rig().await;
    let text = json!({"output": [{"type": "message", "role": "assistant",
        "content": [{"type": "output_text", "text": "Done."}]}]});
    let data = r
        .drive(
            "oai-resp",
            "resp_ok",
            "openai/v1/responses/resp_ok",
            openai_response("queued", json!({})),
            "pending",
            openai_response("completed", text.clone()),
            "succeeded",
        )
        .await;
    assert_eq!(data["result"][0]["content"][0]["text"], "Done.");

    let data = r
        .drive(
            "oai-resp",
            "resp_bad",
            "openai/v1/responses/resp_bad",
            openai_response("in_progress", json!({})),
            "running",
            openai_response(
                "failed",
                json!({"error": {"code": "server_error", "message": "The model failed."}}),
            ),
            "failed",
        )
        .await;
    assert_eq!(data["error"]["code"], "server_error");

    let mut short = text.clone();
    short["incomplete_details"] = json!({"reason": "max_output_tokens"});
    let data = r
        .drive(
            "oai-resp",
            "resp_short",
            "openai/v1/responses/resp_short",
            openai_response("in_progress", json!({})),
            "running",
            openai_response("incomplete", short),
            "failed",
        )
        .await;
    assert_eq!(data["error"]["code"], "incomplete");
    assert_eq!(
        data["error"]["incomplete_details"]["reason"],
        "max_output_tokens"
    );
    assert_eq!(data["result"][0]["content"][0]["text"], "Done.");

    let data = r
        .drive(
            "oai-resp",
            "resp_stop",
            "openai/v1/responses/resp_stop",
            openai_response("in_progress", json!({})),
            "running",
            openai_response("cancelled", json!({})),
            "cancelled",
        )
        .await;
    assert_eq!(data["error"]["code"], "cancelled");
}
