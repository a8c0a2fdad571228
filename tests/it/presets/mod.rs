//! The upstream presets end to end: for each real API a fake on loopback answers with bodies
//! shaped like the real one (`shared/reference/upstreams.md`); every job goes running → each of
//! its terminal states, by polling and, where the upstream has webhooks, by a webhook; the
//! callback (verified with the `standardwebhooks` crate) carries the right status, result and
//! error. Also: thin-event matching and the event map, `requires_action` callbacks, Azure's
//! status URLs and redirects, and the docs' example configs through the real `check`.

use std::time::{Duration, SystemTime};

use crate::common::*;
use hookshim::clock::Timestamp;
use serde_json::{Value, json};

const FAST: &str = r#"{ initial = "50ms", multiplier = 1.5, max = "200ms", jitter = 0.1, deadline = "1h", finalizing = "50ms", eta_max = "200ms" }"#;

/// One upstream per preset, then the same kinds with webhooks on (their safety poll is an hour,
/// so only a webhook finds the end). `{UP}`, `{RECV}`, `{DATA}` are filled in by the harness.
const CONFIG: &str = r#"
[store]
path = "{DATA}"
cache = "8MiB"

[callbacks]
default_url = "{RECV}/callback"
timeout = "1s"
retry_schedule = ["100ms", "200ms", "300ms"]

[upstreams.veo]
preset = "google-operation"
base_url = "{UP}/gemini/v1beta/"
poll = FAST

[upstreams.gbatch]
preset = "gemini-batch"
base_url = "{UP}/gemini/v1beta/"
poll = FAST

[upstreams.gint]
preset = "gemini-interaction"
base_url = "{UP}/gemini/v1beta/"
poll = FAST

[upstreams.gint-notify]
preset = "gemini-interaction"
base_url = "{UP}/gemini/v1beta/"
callback_events = ["requires_action"]
poll = FAST

[upstreams.oai-batch]
preset = "openai-batch"
base_url = "{UP}/openai/v1/"
poll = FAST

[upstreams.oai-resp]
preset = "openai-response"
base_url = "{UP}/openai/v1/"
poll = FAST

[upstreams.replicate]
preset = "replicate"
base_url = "{UP}/replicate/v1/"
poll = FAST

[upstreams.anthropic]
preset = "anthropic-batch"
base_url = "{UP}/anthropic/v1/"
poll = FAST

[upstreams.azure]
preset = "azure-async"
base_url = "{UP}/azure/"
headers = { api-key = "${AZURE_KEY}" }
poll = FAST

[upstreams.veo-hooks]
preset = "google-operation"
base_url = "{UP}/gemini/v1beta/"
poll = FAST
webhook = { scheme = "standard-webhooks", secret_env = "HOOK_SECRET", safety_poll = "1h" }

[upstreams.gbatch-hooks]
preset = "gemini-batch"
base_url = "{UP}/gemini/v1beta/"
poll = FAST
webhook = { scheme = "standard-webhooks", secret_env = "HOOK_SECRET", safety_poll = "1h" }

[upstreams.gint-hooks]
preset = "gemini-interaction"
base_url = "{UP}/gemini/v1beta/"
poll = FAST
webhook = { scheme = "standard-webhooks", secret_env = "HOOK_SECRET", safety_poll = "1h" }

[upstreams.oai-batch-hooks]
preset = "openai-batch"
base_url = "{UP}/openai/v1/"
poll = FAST
webhook = { scheme = "standard-webhooks", secret_env = "HOOK_SECRET", safety_poll = "1h" }

[upstreams.oai-resp-hooks]
preset = "openai-response"
base_url = "{UP}/openai/v1/"
poll = FAST
webhook = { scheme = "standard-webhooks", secret_env = "HOOK_SECRET", safety_poll = "1h" }

[upstreams.replicate-hooks]
preset = "replicate"
base_url = "{UP}/replicate/v1/"
poll = FAST
webhook = { scheme = "standard-webhooks", secret_env = "HOOK_SECRET", safety_poll = "1h" }

[upstreams.gbatch-events]
preset = "gemini-batch"
base_url = "{UP}/gemini/v1beta/"
poll = FAST
webhook = { scheme = "standard-webhooks", secret_env = "HOOK_SECRET", safety_poll = "1h", events = { "batch.succeeded" = "succeeded", "batch.failed" = "failed" } }
"#;

struct Rig {
    up: FakeUpstream,
    recv: Receiver,
    shim: TestShim,
}

fn env() -> Vec<(String, String)> {
    [
        ("GEMINI_API_KEY", "test-gemini-key"),
        ("OPENAI_API_KEY", "test-openai-key"),
        ("REPLICATE_API_TOKEN", "test-replicate-token"),
        ("ANTHROPIC_API_KEY", "test-anthropic-key"),
        ("AZURE_KEY", "test-azure-key"),
        ("HOOK_SECRET", PUSHY_SECRET),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

async fn rig() -> Rig {
    let up = FakeUpstream::start().await;
    let recv = Receiver::start().await;
    let config = CONFIG.replace("FAST", FAST);
    let shim = TestShim::start_with_env(&config, &up, &recv, env()).await;
    Rig { up, recv, shim }
}

fn id_of(op: &Value) -> String {
    op["id"]
        .as_str()
        .unwrap_or_else(|| panic!("no id in {op}"))
        .to_string()
}

fn in_hours(h: u64) -> SystemTime {
    SystemTime::now() + Duration::from_secs(h * 3600)
}

fn rfc3339(t: SystemTime) -> String {
    Timestamp::from_system(t).rfc3339()
}

fn unix(t: SystemTime) -> u64 {
    Timestamp::from_system(t).unix_seconds()
}

impl Rig {
    async fn register(&self, upstream: &str, operation: &str) -> Value {
        let (code, op) = self
            .shim
            .register(json!({"upstream": upstream, "operation": operation}))
            .await;
        assert_eq!(code, 201, "{op}");
        op
    }

    /// Wait until hookshim has read operation `id` at least once and calls it `status`.
    async fn wait_read(&self, id: &str, status: &str) -> Value {
        eventually(
            Duration::from_secs(10),
            &format!("{id} to be read as {status}"),
            || async {
                let op = self.shim.op(id).await;
                (op["status"] == status && op["polls"].as_u64() >= Some(1)).then_some(op)
            },
        )
        .await
    }

    /// The one terminal callback of `id`, checked: signed, stable id, right type and status.
    async fn terminal_callback(&self, id: &str, status: &str, via: &str) -> Value {
        let calls = wait_calls(&self.recv, id, 1).await;
        let c = &calls[0];
        assert!(
            c.verified,
            "callback signature did not verify: {:?}",
            c.body
        );
        assert_eq!(c.webhook_id, format!("{id}_terminal"));
        assert_eq!(c.body["type"], format!("operation.{status}"), "{}", c.body);
        let data = c.body["data"].clone();
        assert_eq!(data["status"], status, "{data}");
        assert_eq!(data["detected_via"], via, "{data}");
        data
    }

    /// Register `operation` while the fake answers `running` at `path`, wait until hookshim has
    /// read it as `first` (running or pending), then let the job end with `terminal`: the
    /// terminal callback's `data`.
    #[allow(clippy::too_many_arguments)]
    async fn drive(
        &self,
        upstream: &str,
        operation: &str,
        path: &str,
        running: Value,
        first: &str,
        terminal: Value,
        status: &str,
    ) -> Value {
        self.up.set(path, running);
        let id = id_of(&self.register(upstream, operation).await);
        self.wait_read(&id, first).await;
        self.up.set(path, terminal);
        let data = self.terminal_callback(&id, status, "poll").await;
        // Exactly one callback, even though polls may still be in flight.
        assert_eq!(self.recv.calls_for(&id).len(), 1);
        data
    }

    /// Like `drive`, for an upstream with webhooks on: the job is running when a thin webhook
    /// arrives (status endpoints may lag their webhooks, so the read says running), then the
    /// endpoint catches up and the re-reads a webhook grants find the end.
    #[allow(clippy::too_many_arguments)]
    async fn drive_by_webhook(
        &self,
        upstream: &str,
        operation: &str,
        path: &str,
        running: Value,
        webhook: Value,
        terminal: Value,
        status: &str,
    ) -> Value {
        self.up.set(path, running);
        let id = id_of(&self.register(upstream, operation).await);
        let msg = format!("msg_{}", id.to_lowercase());
        let (code, ack) = self
            .shim
            .send_webhook(upstream, PUSHY_SECRET, &msg, &webhook)
            .await;
        assert_eq!(code, 200, "{ack}");
        assert_eq!(ack["result"], "accepted", "{ack}");
        assert_eq!(ack["id"], id, "{ack}");
        self.wait_read(&id, "running").await;
        self.up.set(path, terminal);
        self.terminal_callback(&id, status, "webhook").await
    }
}

// ---------------------------------------------------------------------------------------------
// google-operation (Veo)

fn veo(done: Option<Value>) -> Value {
    let mut op = json!({"name": "models/veo-3.1-generate-preview/operations/x",
        "metadata": {"@type": "type.googleapis.com/google.ai.generativelanguage.v1beta.PredictLongRunningMetadata"}});
    if let Some(d) = done {
        op["done"] = json!(true);
        op.as_object_mut()
            .unwrap()
            .extend(d.as_object().unwrap().clone());
    }
    op
}

const VIDEO_URI: &str =
    "https://generativelanguage.googleapis.com/v1beta/files/3yudfuwjdznj:download?alt=media";

#[tokio::test]
async fn google_operation_veo_each_end_and_the_video_uri_in_result() {
    let r = rig().await;
    let name = |s: &str| format!("models/veo-3.1-generate-preview/operations/{s}");
    let path = |s: &str| format!("gemini/v1beta/{}", name(s));
    let video = json!({"response": {"@type": "type.googleapis.com/google.ai.generativelanguage.v1beta.PredictLongRunningResponse",
        "generateVideoResponse": {"generatedSamples": [{"video": {"uri": VIDEO_URI}}]}}});
    let data = r
        .drive(
            "veo",
            &name("ok"),
            &path("ok"),
            veo(None),
            "running",
            veo(Some(video)),
            "succeeded",
        )
        .await;
    assert_eq!(
        data["result"]["generateVideoResponse"]["generatedSamples"][0]["video"]["uri"],
        VIDEO_URI
    );
    assert_eq!(data["error"], Value::Null);

    let data = r
        .drive(
            "veo",
            &name("bad"),
            &path("bad"),
            veo(None),
            "running",
            veo(Some(
                json!({"error": {"code": 3, "message": "invalid prompt", "details": []}}),
            )),
            "failed",
        )
        .await;
    assert_eq!(data["error"]["message"], "invalid prompt");
    assert_eq!(data["result"], Value::Null);

    let data = r
        .drive(
            "veo",
            &name("stop"),
            &path("stop"),
            veo(None),
            "running",
            veo(Some(json!({"error": {"code": 1, "message": "CANCELLED"}}))),
            "cancelled",
        )
        .await;
    assert_eq!(data["error"]["code"], 1);

    let filtered = json!({"response": {"generateVideoResponse": {
        "raiMediaFilteredCount": 1, "raiMediaFilteredReasons": ["The prompt could not be submitted."]}}});
    let data = r
        .drive(
            "veo",
            &name("rai"),
            &path("rai"),
            veo(None),
            "running",
            veo(Some(filtered)),
            "failed",
        )
        .await;
    assert_eq!(data["error"]["code"], "rai_media_filtered");
    assert_eq!(
        data["error"]["reasons"][0],
        "The prompt could not be submitted."
    );
}

// ---------------------------------------------------------------------------------------------
// gemini-batch

fn gemini_batch(state: &str, envelope: bool, extra: Value) -> Value {
    let mut batch = json!({"name": "batches/x", "displayName": "nightly",
        "model": "models/gemini-2.5-flash", "state": state,
        "createTime": rfc3339(SystemTime::now()), "updateTime": rfc3339(SystemTime::now()),
        "batchStats": {"requestCount": "4", "successfulRequestCount": "1",
                       "failedRequestCount": "1", "pendingRequestCount": "2"}});
    batch
        .as_object_mut()
        .unwrap()
        .extend(extra.as_object().unwrap().clone());
    if !envelope {
        return batch;
    }
    batch["@type"] =
        json!("type.googleapis.com/google.ai.generativelanguage.v1main.GenerateContentBatch");
    let done = !state.ends_with("RUNNING") && !state.ends_with("PENDING");
    json!({"name": "batches/x", "metadata": batch, "done": done})
}

#[tokio::test]
async fn gemini_batch_each_end_with_both_state_spellings_and_string_stats() {
    let r = rig().await;
    // Registered by bare id: stored, read and matched as `batches/{id}`.
    r.up.set(
        "gemini/v1beta/batches/b-ok",
        gemini_batch("BATCH_STATE_RUNNING", true, json!({})),
    );
    let op = r.register("gbatch", "b-ok").await;
    assert_eq!(op["operation"], "batches/b-ok");
    let id = id_of(&op);
    let seen = r.wait_read(&id, "running").await;
    assert_eq!(
        seen["progress"], 0.5,
        "progress from string int64 batchStats"
    );
    assert_eq!(seen["upstream_status"], "BATCH_STATE_RUNNING");
    r.up.set(
        "gemini/v1beta/batches/b-ok",
        gemini_batch(
            "BATCH_STATE_SUCCEEDED",
            false,
            json!({"output": {"responsesFile": "files/batch-b-ok-out"},
                   "batchStats": {"requestCount": "4", "successfulRequestCount": "4"}}),
        ),
    );
    let data = r.terminal_callback(&id, "succeeded", "poll").await;
    assert_eq!(data["result"]["responsesFile"], "files/batch-b-ok-out");
    assert_eq!(
        r.up.header_values("gemini/v1beta/batches/b-ok", "x-goog-api-key")[0],
        "test-gemini-key"
    );

    for (op, state, envelope, status, code) in [
        ("b-fail", "JOB_STATE_FAILED", true, "failed", "failed"),
        (
            "b-stop",
            "BATCH_STATE_CANCELLED",
            false,
            "cancelled",
            "cancelled",
        ),
        ("b-late", "JOB_STATE_EXPIRED", false, "expired", "expired"),
    ] {
        let path = format!("gemini/v1beta/batches/{op}");
        let data = r
            .drive(
                "gbatch",
                &format!("batches/{op}"),
                &path,
                gemini_batch("JOB_STATE_PENDING", envelope, json!({})),
                "pending",
                gemini_batch(state, envelope, json!({})),
                status,
            )
            .await;
        assert_eq!(data["upstream_status"], state);
        assert_eq!(data["error"]["code"], code, "{data}");
        assert_eq!(data["result"], Value::Null);
    }
}

// ---------------------------------------------------------------------------------------------
// gemini-interaction

fn interaction(status: &str, extra: Value) -> Value {
    let mut v = json!({"id": "v1_x", "agent": "deep-research-pro-preview-12-2025",
        "status": status, "created": rfc3339(SystemTime::now()), "role": "agent"});
    v.as_object_mut()
        .unwrap()
        .extend(extra.as_object().unwrap().clone());
    v
}

#[tokio::test]
async fn gemini_interaction_each_end() {
    let r = rig().await;
    let report = json!({"outputs": [{"type": "text", "text": "The report."}]});
    let data = r
        .drive(
            "gint",
            "interactions/v1_ok",
            "gemini/v1beta/interactions/v1_ok",
            interaction("in_progress", json!({})),
            "running",
            interaction("completed", report.clone()),
            "succeeded",
        )
        .await;
    assert_eq!(data["operation"], "v1_ok");
    assert_eq!(data["result"][0]["text"], "The report.");

    for (op, status, want, code) in [
        ("v1_fail", "failed", "failed", "failed"),
        ("v1_stop", "cancelled", "cancelled", "cancelled"),
        ("v1_short", "incomplete", "failed", "incomplete"),
        ("v1_poor", "budget_exceeded", "failed", "budget_exceeded"),
    ] {
        let data = r
            .drive(
                "gint",
                op,
                &format!("gemini/v1beta/interactions/{op}"),
                interaction("in_progress", json!({})),
                "running",
                interaction(status, report.clone()),
                want,
            )
            .await;
        assert_eq!(data["error"]["code"], code, "{data}");
        assert_eq!(data["upstream_status"], status);
        assert_eq!(
            data["result"][0]["text"], "The report.",
            "partial output kept"
        );
    }
    let data = r
        .drive(
            "gint",
            "v1_own",
            "gemini/v1beta/interactions/v1_own",
            interaction("in_progress", json!({})),
            "running",
            interaction(
                "failed",
                json!({"error": {"code": "internal", "message": "agent crashed"}}),
            ),
            "failed",
        )
        .await;
    assert_eq!(data["error"]["message"], "agent crashed");
}

// ---------------------------------------------------------------------------------------------
// openai-batch, openai-response

fn openai_batch(status: &str, extra: Value) -> Value {
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

fn openai_response(status: &str, extra: Value) -> Value {
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

// ---------------------------------------------------------------------------------------------
// replicate

fn prediction(id: &str, status: &str, extra: Value) -> Value {
    let mut v = json!({"id": id, "model": "black-forest-labs/flux-schnell", "version": "v1",
        "input": {"prompt": "a cat"}, "logs": "", "output": null, "data_removed": false,
        "error": null, "status": status, "created_at": rfc3339(SystemTime::now()),
        "urls": {"get": format!("https://api.replicate.com/v1/predictions/{id}"),
                 "cancel": format!("https://api.replicate.com/v1/predictions/{id}/cancel")}});
    v.as_object_mut()
        .unwrap()
        .extend(extra.as_object().unwrap().clone());
    v
}

#[tokio::test]
async fn replicate_each_end() {
    let r = rig().await;
    let image = "https://replicate.delivery/xezq/out-0.webp";
    let data = r
        .drive(
            "replicate",
            "p_ok",
            "replicate/v1/predictions/p_ok",
            prediction("p_ok", "starting", json!({})),
            "pending",
            prediction("p_ok", "succeeded", json!({"output": [image]})),
            "succeeded",
        )
        .await;
    assert_eq!(data["result"][0], image);
    assert_eq!(
        r.up.header_values("replicate/v1/predictions/p_ok", "authorization")[0],
        "Bearer test-replicate-token"
    );
    let data = r
        .drive(
            "replicate",
            "p_bad",
            "replicate/v1/predictions/p_bad",
            prediction("p_bad", "processing", json!({})),
            "running",
            prediction("p_bad", "failed", json!({"error": "CUDA out of memory"})),
            "failed",
        )
        .await;
    assert_eq!(data["error"]["message"], "CUDA out of memory");
    for (op, status) in [("p_stop", "canceled"), ("p_abort", "aborted")] {
        let data = r
            .drive(
                "replicate",
                op,
                &format!("replicate/v1/predictions/{op}"),
                prediction(op, "processing", json!({})),
                "running",
                prediction(op, status, json!({})),
                "cancelled",
            )
            .await;
        assert_eq!(data["upstream_status"], status);
        assert_eq!(data["error"]["code"], status);
    }
}

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
        anthropic_batch("msgbatch_ok", "in_progress", [3, 1, 0, 0, 0]),
    );
    let id = id_of(&r.register("anthropic", "msgbatch_ok").await);
    let seen = r.wait_read(&id, "running").await;
    assert_eq!(seen["progress"], 0.25);
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
// Docs that cannot rot.

fn toml_blocks(markdown: &str) -> Vec<String> {
    let mut blocks = Vec::new();
    let mut current: Option<String> = None;
    for line in markdown.lines() {
        match (&mut current, line.trim_start()) {
            (None, l) if l.starts_with("```toml") => current = Some(String::new()),
            (Some(b), l) if l.starts_with("```") => {
                blocks.push(std::mem::take(b));
                current = None;
            }
            (Some(b), _) => {
                b.push_str(line);
                b.push('\n');
            }
            _ => {}
        }
    }
    blocks
}

/// Every `${VAR}` and `secret_env = "VAR"` in a block, and the variables the presets' default
/// headers read, each given a valid value.
fn env_for(block: &str) -> Vec<(String, String)> {
    let mut vars = Vec::new();
    let preset_headers: Vec<String> = hookshim::upstream::Preset::ALL
        .iter()
        .flat_map(|p| p.defaults().headers.iter().map(|(_, v)| v.to_string()))
        .collect();
    let all = format!("{block}\n{}", preset_headers.join("\n"));
    let mut rest = all.as_str();
    while let Some(i) = rest.find("${") {
        let after = &rest[i + 2..];
        let end = after.find('}').expect("unterminated ${");
        vars.push(after[..end].to_string());
        rest = &after[end..];
    }
    for line in block.lines() {
        for part in line.split("secret_env = \"").skip(1) {
            vars.push(part.split('"').next().unwrap().to_string());
        }
    }
    vars.into_iter()
        .map(|v| (v, PUSHY_SECRET.to_string()))
        .collect()
}

#[test]
fn every_toml_block_in_docs_providers_md_passes_check() {
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/providers.md"))
        .expect("docs/providers.md");
    let blocks = toml_blocks(&doc);
    assert!(
        blocks.len() >= 9,
        "expected a recipe per preset, found {} blocks",
        blocks.len()
    );
    let dir = tempfile::tempdir().unwrap();
    for (i, block) in blocks.iter().enumerate() {
        let file = dir.path().join(format!("block{i}.toml"));
        std::fs::write(&file, block).unwrap();
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_hookshim"))
            .arg("--config")
            .arg(&file)
            .arg("check")
            .env_clear()
            .envs(env_for(block))
            .output()
            .expect("run hookshim check");
        assert!(
            out.status.success(),
            "docs/providers.md block {i} fails `hookshim check`:\n{block}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(String::from_utf8_lossy(&out.stdout).contains("config OK"));
    }
    for preset in hookshim::upstream::Preset::NAMES {
        let line = format!("preset = \"{preset}\"");
        assert!(
            blocks.iter().any(|b| b.contains(&line)),
            "docs/providers.md has no recipe with {line}"
        );
    }
}

#[test]
fn the_readme_config_reference_names_every_preset() {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let row = readme
        .lines()
        .find(|l| l.starts_with("| `upstreams.<name>.preset`"))
        .expect("the preset row of the config reference");
    for preset in hookshim::upstream::Preset::NAMES {
        assert!(
            row.contains(&format!("`\"{preset}\"`")),
            "README preset row lacks {preset}: {row}"
        );
    }
}
