//! Preset behaviour shared by every family: redirects, thin webhooks matched by id, the event
//! map, foreign events, and `requires_action` callbacks.

use super::google::{VIDEO_URI, gemini_batch, interaction, veo};
use super::openai::{openai_batch, openai_response};
use super::replicate::prediction;
use super::*;

#[tokio::test]
async fn redirects_to_another_origin_are_not_followed() {
    let r = rig().await;
    let other = FakeUpstream::start().await;
    other.set("steal", json!({"status": "completed"}));
    r.up.script(
        "openai/v1/batches/batch_moved",
        vec![Scripted::new(302, "").header("location", format!("{}/steal", other.url))],
    );
    r.up.set(
        "openai/v1/batches/batch_moved",
        openai_batch("in_progress", json!({})),
    );
    let id = id_of(&r.register("oai-batch", "batch_moved").await);
    let op = eventually(Duration::from_secs(5), "the 302 to be recorded", || async {
        let op = r.shim.op(&id).await;
        op["last_poll_error"]
            .as_str()
            .is_some_and(|e| e.contains("302"))
            .then_some(op)
    })
    .await;
    assert_eq!(op["status"], "pending", "a redirect is never an outcome");
    r.wait_read(&id, "running").await;
    assert!(
        other.all_requests().is_empty(),
        "the other origin was called"
    );
}

// ---------------------------------------------------------------------------------------------
// Webhooks: thin events matched by id, the event map, foreign events.

fn event(kind: &str, data: Value) -> Value {
    json!({"type": kind, "version": "v1", "timestamp": rfc3339(SystemTime::now()), "data": data})
}

fn openai_event(kind: &str, id: &str) -> Value {
    json!({"object": "event", "id": format!("evt_{id}"), "type": kind,
           "created_at": unix(SystemTime::now()), "data": {"id": id}})
}

#[tokio::test]
async fn thin_webhooks_find_each_end_through_a_status_read() {
    let r = rig().await;
    // Gemini: video, batches (matched by bare id), interactions.
    let name = "models/veo-3.1-generate-preview/operations/hook1";
    let data = r
        .drive_by_webhook(
            "veo-hooks",
            name,
            &format!("gemini/v1beta/{name}"),
            veo(None),
            event(
                "video.generated",
                json!({"id": name, "video_uri": VIDEO_URI}),
            ),
            veo(Some(json!({"response": {"generateVideoResponse": {
                "generatedSamples": [{"video": {"uri": VIDEO_URI}}]}}}))),
            "succeeded",
        )
        .await;
    assert_eq!(
        data["result"]["generateVideoResponse"]["generatedSamples"][0]["video"]["uri"],
        VIDEO_URI
    );
    for (n, kind, state, status) in [
        (
            "hb1",
            "batch.succeeded",
            "BATCH_STATE_SUCCEEDED",
            "succeeded",
        ),
        ("hb2", "batch.failed", "BATCH_STATE_FAILED", "failed"),
        (
            "hb3",
            "batch.cancelled",
            "BATCH_STATE_CANCELLED",
            "cancelled",
        ),
        ("hb4", "batch.expired", "BATCH_STATE_EXPIRED", "expired"),
    ] {
        r.drive_by_webhook(
            "gbatch-hooks",
            &format!("batches/{n}"),
            &format!("gemini/v1beta/batches/{n}"),
            gemini_batch("BATCH_STATE_RUNNING", false, json!({})),
            event(
                kind,
                json!({"id": n, "output_file_uri": "gs://b/out.jsonl"}),
            ),
            gemini_batch(
                state,
                false,
                json!({"output": {"responsesFile": "files/o"}}),
            ),
            status,
        )
        .await;
    }
    for (n, kind, status) in [
        ("hi1", "interaction.completed", "completed"),
        ("hi2", "interaction.failed", "failed"),
        ("hi3", "interaction.cancelled", "cancelled"),
    ] {
        let want = if status == "completed" {
            "succeeded"
        } else {
            status
        };
        r.drive_by_webhook(
            "gint-hooks",
            n,
            &format!("gemini/v1beta/interactions/{n}"),
            interaction("in_progress", json!({})),
            event(kind, json!({"id": n})),
            interaction(status, json!({"outputs": []})),
            want,
        )
        .await;
    }
    // OpenAI: thin `{"object": "event", ..., "data": {"id": ...}}`.
    for (n, kind, status, want) in [
        ("batch_h1", "batch.completed", "completed", "succeeded"),
        ("batch_h2", "batch.failed", "failed", "failed"),
        ("batch_h3", "batch.expired", "expired", "expired"),
        ("batch_h4", "batch.cancelled", "cancelled", "cancelled"),
    ] {
        r.drive_by_webhook(
            "oai-batch-hooks",
            n,
            &format!("openai/v1/batches/{n}"),
            openai_batch("in_progress", json!({})),
            openai_event(kind, n),
            openai_batch(status, json!({"output_file_id": "file-out"})),
            want,
        )
        .await;
    }
    for (n, kind, status, want) in [
        ("resp_h1", "response.completed", "completed", "succeeded"),
        ("resp_h2", "response.failed", "failed", "failed"),
        ("resp_h3", "response.cancelled", "cancelled", "cancelled"),
        ("resp_h4", "response.incomplete", "incomplete", "failed"),
    ] {
        r.drive_by_webhook(
            "oai-resp-hooks",
            n,
            &format!("openai/v1/responses/{n}"),
            openai_response("in_progress", json!({})),
            openai_event(kind, n),
            openai_response(status, json!({})),
            want,
        )
        .await;
    }
    // Replicate: the body is the whole prediction; its id is at the top.
    for (n, status, want) in [
        ("ph1", "succeeded", "succeeded"),
        ("ph2", "failed", "failed"),
        ("ph3", "canceled", "cancelled"),
    ] {
        r.drive_by_webhook(
            "replicate-hooks",
            n,
            &format!("replicate/v1/predictions/{n}"),
            prediction(n, "processing", json!({})),
            prediction(n, "processing", json!({})),
            prediction(n, status, json!({"output": ["x"], "error": if status == "failed" { json!("boom") } else { Value::Null }})),
            want,
        )
        .await;
    }
}

#[tokio::test]
async fn mapped_events_decide_the_outcome_without_a_status_read() {
    let r = rig().await;
    let path = |n: &str| format!("gemini/v1beta/batches/{n}");
    let id = id_of(&r.register("gbatch-events", "ev-ok").await);
    let (code, ack) = r
        .shim
        .send_webhook(
            "gbatch-events",
            PUSHY_SECRET,
            "msg_ev1",
            &event(
                "batch.succeeded",
                json!({"id": "ev-ok", "output_file_uri": "gs://b/out.jsonl"}),
            ),
        )
        .await;
    assert_eq!(code, 200, "{ack}");
    assert_eq!(ack["status"], "succeeded", "{ack}");
    let data = r.terminal_callback(&id, "succeeded", "webhook").await;
    assert_eq!(data["upstream_status"], "batch.succeeded");
    assert_eq!(data["result"]["output_file_uri"], "gs://b/out.jsonl");
    assert!(
        r.up.requests_for(&path("ev-ok")).is_empty(),
        "no status read"
    );

    let id = id_of(&r.register("gbatch-events", "batches/ev-bad").await);
    r.shim
        .send_webhook(
            "gbatch-events",
            PUSHY_SECRET,
            "msg_ev2",
            &event(
                "batch.failed",
                json!({"id": "batches/ev-bad", "error_code": "INVALID_INPUT", "error_message": "bad line 7"}),
            ),
        )
        .await;
    let data = r.terminal_callback(&id, "failed", "webhook").await;
    assert_eq!(data["error"]["error_message"], "bad line 7");
    assert_eq!(data["result"], Value::Null);
    assert!(r.up.requests_for(&path("ev-bad")).is_empty());

    // An event the map does not name stays thin: the status read decides.
    r.up.set(
        &path("ev-late"),
        gemini_batch("BATCH_STATE_EXPIRED", false, json!({})),
    );
    let id = id_of(&r.register("gbatch-events", "ev-late").await);
    r.shim
        .send_webhook(
            "gbatch-events",
            PUSHY_SECRET,
            "msg_ev3",
            &event("batch.expired", json!({"id": "ev-late"})),
        )
        .await;
    let data = r.terminal_callback(&id, "expired", "webhook").await;
    assert_eq!(data["upstream_status"], "BATCH_STATE_EXPIRED");
    assert_eq!(r.up.requests_for(&path("ev-late")).len(), 1);

    // Before registration: kept with its outcome, applied the moment the app registers.
    let (code, ack) = r
        .shim
        .send_webhook(
            "gbatch-events",
            PUSHY_SECRET,
            "msg_ev4",
            &event(
                "batch.succeeded",
                json!({"id": "ev-early", "output_file_uri": "gs://b/early.jsonl"}),
            ),
        )
        .await;
    assert_eq!((code, ack["result"].as_str()), (202, Some("kept")), "{ack}");
    let op = r.register("gbatch-events", "ev-early").await;
    assert_eq!(op["status"], "succeeded", "{op}");
    let data = r
        .terminal_callback(&id_of(&op), "succeeded", "webhook")
        .await;
    assert_eq!(data["result"]["output_file_uri"], "gs://b/early.jsonl");
    assert!(r.up.requests_for(&path("ev-early")).is_empty());
}

#[tokio::test]
async fn events_of_another_kind_of_job_are_acknowledged_and_ignored() {
    let r = rig().await;
    r.up.set(
        "openai/v1/batches/batch_f",
        openai_batch("completed", json!({})),
    );
    let id = id_of(&r.register("oai-batch-hooks", "batch_f").await);
    // The OpenAI project webhook also sends response events; one naming this id changes nothing.
    let (code, ack) = r
        .shim
        .send_webhook(
            "oai-batch-hooks",
            PUSHY_SECRET,
            "msg_f1",
            &openai_event("response.completed", "batch_f"),
        )
        .await;
    assert_eq!(code, 200, "{ack}");
    assert_eq!(ack["result"], "ignored");
    let op = r.shim.op(&id).await;
    assert_eq!(op["status"], "pending");
    assert_eq!(op["webhook_at"], Value::Null);
    assert!(r.up.requests_for("openai/v1/batches/batch_f").is_empty());
    assert!(r.shim.metrics().await.contains(
        "hookshim_webhooks_received_total{upstream=\"oai-batch-hooks\",result=\"ignored\"} 1"
    ));
    // Its own event works as usual.
    r.shim
        .send_webhook(
            "oai-batch-hooks",
            PUSHY_SECRET,
            "msg_f2",
            &openai_event("batch.completed", "batch_f"),
        )
        .await;
    r.terminal_callback(&id, "succeeded", "webhook").await;
}

// ---------------------------------------------------------------------------------------------
// requires_action: one extra callback per pause, through the outbox, never in the terminal's way.

const PAUSE: &str = "operation.requires_action";

fn function_call() -> Value {
    json!({"outputs": [{"type": "function_call", "id": "fc_1", "name": "lookup_order",
                        "arguments": {"order": "A-17"}}]})
}

async fn wait_pauses(r: &Rig, id: &str, n: u64) -> Value {
    eventually(
        Duration::from_secs(10),
        &format!("{id} to have paused {n}x"),
        || async {
            let op = r.shim.op(id).await;
            (op["pauses"].as_u64() == Some(n)).then_some(op)
        },
    )
    .await
}

async fn wait_polls(r: &Rig, id: &str, more_than: u64) {
    eventually(Duration::from_secs(10), "more polls", || async {
        let op = r.shim.op(id).await;
        (op["polls"].as_u64() > Some(more_than)).then_some(())
    })
    .await
}

#[tokio::test]
async fn each_pause_is_announced_once_then_the_end() {
    let r = rig().await;
    let path = "gemini/v1beta/interactions/v1_pause";
    r.up.set(path, interaction("in_progress", json!({})));
    let id = id_of(&r.register("gint-notify", "v1_pause").await);
    r.wait_read(&id, "running").await;

    r.up.set(path, interaction("requires_action", function_call()));
    let calls = wait_calls(&r.recv, &id, 1).await;
    let first = &calls[0];
    assert!(first.verified);
    assert_eq!(first.webhook_id, format!("{id}_requires_action_1"));
    assert_eq!(first.body["type"], PAUSE);
    assert_eq!(first.body["data"]["status"], "running");
    assert_eq!(first.body["data"]["upstream_status"], "requires_action");
    assert_eq!(first.body["data"]["pause"], 1);
    assert_eq!(first.body["data"]["result"][0]["name"], "lookup_order");
    // More polls during the same pause announce nothing more.
    let polls = r.shim.op(&id).await["polls"].as_u64().unwrap();
    wait_polls(&r, &id, polls + 3).await;
    assert_eq!(r.recv.calls_for(&id).len(), 1);

    // Resumed, then paused again: a second announcement with its own id.
    r.up.set(path, interaction("in_progress", json!({})));
    eventually(Duration::from_secs(10), "the resume to be read", || async {
        let op = r.shim.op(&id).await;
        (op["upstream_status"] == "in_progress").then_some(())
    })
    .await;
    r.up.set(path, interaction("requires_action", function_call()));
    let calls = wait_calls(&r.recv, &id, 2).await;
    assert_eq!(calls[1].webhook_id, format!("{id}_requires_action_2"));
    assert_eq!(calls[1].body["data"]["pause"], 2);
    assert!(calls[1].verified);

    r.up.set(
        path,
        interaction(
            "completed",
            json!({"outputs": [{"type": "text", "text": "ok"}]}),
        ),
    );
    let calls = wait_calls(&r.recv, &id, 3).await;
    let ids: Vec<&str> = calls.iter().map(|c| c.webhook_id.as_str()).collect();
    assert_eq!(
        ids,
        [
            format!("{id}_requires_action_1"),
            format!("{id}_requires_action_2"),
            format!("{id}_terminal")
        ]
    );
    assert_eq!(calls[2].body["type"], "operation.succeeded");
    let op = r.shim.op(&id).await;
    assert_eq!(op["pauses"], 2);
    assert_eq!(op["events"][0]["delivery"]["state"], "delivered");
    assert_eq!(op["events"][1]["delivery"]["state"], "delivered");
}

#[tokio::test]
async fn pauses_are_not_announced_unless_the_upstream_asks() {
    let r = rig().await;
    let path = "gemini/v1beta/interactions/v1_quiet";
    r.up.set(path, interaction("requires_action", function_call()));
    let id = id_of(&r.register("gint", "v1_quiet").await);
    let op = wait_pauses(&r, &id, 1).await;
    assert_eq!(op["status"], "running");
    wait_polls(&r, &id, op["polls"].as_u64().unwrap() + 2).await;
    r.up.set(path, interaction("completed", json!({})));
    r.terminal_callback(&id, "succeeded", "poll").await;
    assert_eq!(r.recv.calls_for(&id).len(), 1, "only the terminal callback");
}

#[tokio::test]
async fn a_failing_pause_callback_never_delays_the_end_and_is_superseded() {
    let r = rig().await;
    // Pause callbacks hang past the 1 s callback timeout; everything else is answered at once.
    r.recv
        .set_for_type(PAUSE, Some(Behaviour::Slow(Duration::from_secs(3))));
    let path = "gemini/v1beta/interactions/v1_stuck";
    r.up.set(path, interaction("requires_action", function_call()));
    let id = id_of(&r.register("gint-notify", "v1_stuck").await);
    wait_calls(&r.recv, &id, 1).await;
    r.up.set(path, interaction("completed", json!({})));
    let data = r.terminal_callback_among(&id).await;
    assert_eq!(data["status"], "succeeded");
    let op = eventually(
        Duration::from_secs(10),
        "the pause callback to be superseded",
        || async {
            let op = r.shim.op(&id).await;
            (op["events"][0]["delivery"]["state"] == "superseded").then_some(op)
        },
    )
    .await;
    assert_eq!(op["delivery"]["state"], "delivered");
    // Superseded means no more attempts: at most the one in flight when the end came.
    let pauses_sent = |r: &Rig| {
        r.recv
            .calls_for(&id)
            .iter()
            .filter(|c| c.body["type"] == PAUSE)
            .count()
    };
    let before = pauses_sent(&r);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(
        pauses_sent(&r) <= before + 1,
        "the pause callback kept being retried"
    );
}

impl Rig {
    /// The terminal callback of `id` among other callbacks for it.
    async fn terminal_callback_among(&self, id: &str) -> Value {
        let want = format!("{id}_terminal");
        let c = eventually(Duration::from_secs(10), "the terminal callback", || async {
            self.recv
                .calls_for(id)
                .into_iter()
                .find(|c| c.webhook_id == want)
        })
        .await;
        assert!(c.verified);
        c.body["data"].clone()
    }
}

#[tokio::test]
async fn a_pause_callback_survives_a_restart() {
    let mut r = rig().await;
    r.recv.set_for_type(PAUSE, Some(Behaviour::Status(503)));
    let path = "gemini/v1beta/interactions/v1_restart";
    r.up.set(path, interaction("requires_action", function_call()));
    let id = id_of(&r.register("gint-notify", "v1_restart").await);
    wait_calls(&r.recv, &id, 1).await;
    r.shim.stop().await;
    r.recv.set_for_type(PAUSE, None);
    r.shim.restart().await;
    let delivered = eventually(
        Duration::from_secs(10),
        "the pause callback after restart",
        || async {
            r.recv
                .calls_for(&id)
                .into_iter()
                .find(|c| c.answered == 200)
        },
    )
    .await;
    let calls = r.recv.calls_for(&id);
    assert!(
        calls
            .iter()
            .all(|c| c.webhook_id == format!("{id}_requires_action_1")),
        "one pause, one id"
    );
    assert!(delivered.verified);
    let op = r.shim.op(&id).await;
    assert_eq!(op["events"][0]["delivery"]["state"], "delivered");
    assert_eq!(
        op["events"].as_array().unwrap().len(),
        1,
        "still the same pause after restart"
    );
}

// ---------------------------------------------------------------------------------------------
// Status reads that are not a GET (issue 11, item 1).

#[tokio::test]
async fn generic_status_reads_can_post_a_body_template() {
    let r = rig().await;
    // A quote in the id must arrive JSON-escaped inside the string, not break the body.
    let op = "job\"1";
    let data = r
        .drive(
            "generic-post",
            op,
            "jobs/status",
            json!({"state": "working"}),
            "running",
            json!({"state": "done"}),
            "succeeded",
        )
        .await;
    assert_eq!(data["operation"], op);
    let posts = r.up.posts_for("jobs/status");
    assert!(!posts.is_empty());
    assert_eq!(
        posts[0],
        json!({"query": {"id": op, "tags": [op, 7]}, "verbose": true})
    );
}
