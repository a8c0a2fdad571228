//! The anthropic-batch preset.

use super::*;

// ---------------------------------------------------------------------------------------------
// anthropic-batch

fn anthropic_batch(id: &str, status: &str, counts: [u32; 5]) -> Value {
    let [processing, succeeded, errored, canceled, expired] = counts;
    let ended = status == "ended";
    json!({"id": id, "type": "message_batch", "processing_status": status,
        "request_counts": {"processing": processing, "succeeded": succeeded, "errored": errored,
                           "canceled": canceled, "expired": expired},
        "ended_at": if ended { json!(rfc3339(SystemTime::now())) } else { Value::Null },
        "created_at": rfc3339(SystemTime::now()), "expires_at": rfc3339(in_hours(24)),
        "archived_at": null, "cancel_initiated_at": null,
        "results_url": if ended { json!(format!("https://api.anthropic.com/v1/messages/batches/{id}/results")) } else { Value::Null }})
}

#[tokio::test]
async fn anthropic_batch_outcome_from_request_counts() {
    let r = rig().await;
    let path = |id: &str| format!("anthropic/v1/messages/batches/{id}");
    r.up.set(
        &path("msgbatch_ok"),
        anthropic_batch("msgbatch_ok", "in_progress", [4, 0, 0, 0, 0]),
    );
    let id = id_of(&r.register("anthropic", "msgbatch_ok").await);
    let seen = r.wait_read(&id, "running").await;
    // Counts only move when the whole batch ends (anthropic-sdk-python
    // `types/messages/message_batch_request_counts.py`): no count-based progress while running.
    assert!(seen["progress"].is_null(), "{seen}");
    r.up.set(
        &path("msgbatch_ok"),
        anthropic_batch("msgbatch_ok", "ended", [0, 3, 1, 0, 0]),
    );
    let data = r.terminal_callback(&id, "succeeded", "poll").await;
    assert!(
        data["result"]["results_url"]
            .as_str()
            .unwrap()
            .ends_with("/msgbatch_ok/results")
    );
    assert_eq!(data["result"]["request_counts"]["errored"], 1);
    assert_eq!(data["error"], Value::Null);
    assert_eq!(
        r.up.header_values(&path("msgbatch_ok"), "x-api-key")[0],
        "test-anthropic-key"
    );
    assert_eq!(
        r.up.header_values(&path("msgbatch_ok"), "anthropic-version")[0],
        "2023-06-01"
    );

    for (op, first, counts, status, code) in [
        (
            "msgbatch_err",
            "in_progress",
            [0, 0, 4, 0, 0],
            "failed",
            "errored",
        ),
        (
            "msgbatch_stop",
            "canceling",
            [0, 0, 0, 3, 1],
            "cancelled",
            "canceled",
        ),
        (
            "msgbatch_late",
            "in_progress",
            [0, 0, 0, 0, 4],
            "expired",
            "expired",
        ),
    ] {
        let data = r
            .drive(
                "anthropic",
                op,
                &path(op),
                anthropic_batch(op, first, [4, 0, 0, 0, 0]),
                "running",
                anthropic_batch(op, "ended", counts),
                status,
            )
            .await;
        assert_eq!(data["error"]["code"], code, "{data}");
        assert_eq!(data["result"]["request_counts"]["succeeded"], 0);
    }
}
