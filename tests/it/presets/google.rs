//! The Google presets: google-operation (Veo), gemini-batch, gemini-interaction.

use super::*;

// ---------------------------------------------------------------------------------------------
// google-operation (Veo)

pub(super) fn veo(done: Option<Value>) -> Value {
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

pub(super) const VIDEO_URI: &str =
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

pub(super) fn gemini_batch(state: &str, envelope: bool, extra: Value) -> Value {
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

pub(super) fn interaction(status: &str, extra: Value) -> Value {
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
// Webhook ids in every form (issue 11, item 4). The format of `data.id` in Gemini's webhook
// events is not documented (python-genai `_gaos/types/webhooks/` types only the subscription;
// the docs' example payload says `"id": "batch_123456"`): an event names the job with or without
// its collection, with or without a model prefix, and is matched to the registration both ways.

fn gemini_event(kind: &str, id: &str) -> Value {
    json!({"type": kind, "version": "v1", "timestamp": rfc3339(SystemTime::now()),
           "data": {"id": id}})
}

on_each_store! {
    #[tokio::test]
    async fn gemini_webhook_ids_match_registrations_in_every_form(store) {
        let r = rig_on(&store).await;
        // gemini-batch: (registered, event id, fake status path).
        for (registered, event_id, path) in [
            // The docs' example form against the API's name, both ways.
            (
                "batches/123456",
                "batch_123456",
                "gemini/v1beta/batches/123456",
            ),
            (
                "batch_223456",
                "223456",
                "gemini/v1beta/batches/batch_223456",
            ),
            // Short registration, long event; long registration, short event.
            ("323456", "batches/323456", "gemini/v1beta/batches/323456"),
            ("batches/423456", "423456", "gemini/v1beta/batches/423456"),
            // An Operation-style name.
            (
                "batches/523456",
                "operations/523456",
                "gemini/v1beta/batches/523456",
            ),
        ] {
            r.drive_by_webhook(
                "gbatch-hooks",
                registered,
                path,
                gemini_batch("BATCH_STATE_RUNNING", false, json!({})),
                gemini_event("batch.succeeded", event_id),
                gemini_batch(
                    "BATCH_STATE_SUCCEEDED",
                    false,
                    json!({"output": {"responsesFile": "files/o"}}),
                ),
                "succeeded",
            )
            .await;
        }
        // gemini-interaction: with and without `interactions/`, both ways.
        for (registered, event_id) in [("interactions/v1_a", "v1_a"), ("v1_b", "interactions/v1_b")] {
            let bare = registered.trim_start_matches("interactions/");
            r.drive_by_webhook(
                "gint-hooks",
                registered,
                &format!("gemini/v1beta/interactions/{bare}"),
                interaction("in_progress", json!({})),
                gemini_event("interaction.completed", event_id),
                interaction("completed", json!({"outputs": []})),
                "succeeded",
            )
            .await;
        }
        // google-operation (Veo): the full name registered, the event naming `x` or `operations/x`;
        // `operations/x` registered, the event naming the full name.
        for (registered, event_id) in [
            ("models/veo-3/operations/vid1", "vid1"),
            ("models/veo-3/operations/vid2", "operations/vid2"),
            ("operations/vid3", "models/veo-3/operations/vid3"),
        ] {
            r.drive_by_webhook(
                "veo-hooks",
                registered,
                &format!("gemini/v1beta/{registered}"),
                veo(None),
                gemini_event("video.generated", event_id),
                veo(Some(json!({"response": {"generateVideoResponse": {
                    "generatedSamples": [{"video": {"uri": VIDEO_URI}}]}}}))),
                "succeeded",
            )
            .await;
        }
    }
}

// ---------------------------------------------------------------------------------------------
// vertex-operation (Veo on Vertex AI, issue 11 item 1). Shapes from python-genai:
// `operations.py` `_fetch_predict_videos_operation` (POST `{model}:fetchPredictOperation`, body
// `{"operationName": ...}`) and `models.py` `_GenerateVideosResponse_from_vertex` (`videos[]`,
// top-level `raiMediaFilteredCount` / `raiMediaFilteredReasons`).

fn vertex_name(model: &str, id: &str) -> (String, String) {
    let model_path = format!("projects/p1/locations/us-central1/publishers/google/models/{model}");
    (
        format!("{model_path}/operations/{id}"),
        format!("vertex/v1/{model_path}:fetchPredictOperation"),
    )
}

fn vertex_op(name: &str, done: Option<Value>) -> Value {
    let mut op = json!({"name": name});
    if let Some(d) = done {
        op["done"] = json!(true);
        op.as_object_mut()
            .unwrap()
            .extend(d.as_object().unwrap().clone());
    }
    op
}

#[tokio::test]
async fn vertex_operation_reads_status_with_a_post_and_each_end() {
    let r = rig().await;
    let (name, path) = vertex_name("veo-3.0-generate-001", "1234567890");
    let data = r
        .drive(
            "vertex",
            &name,
            &path,
            vertex_op(&name, None),
            "running",
            vertex_op(
                &name,
                Some(json!({"response": {
                "@type": "type.googleapis.com/cloud.ai.large_models.vision.GenerateVideoResponse",
                "videos": [{"gcsUri": "gs://bucket/out/sample_0.mp4", "mimeType": "video/mp4"}]}})),
            ),
            "succeeded",
        )
        .await;
    assert_eq!(
        data["result"]["videos"][0]["gcsUri"],
        "gs://bucket/out/sample_0.mp4"
    );
    let posts = r.up.posts_for(&path);
    assert!(!posts.is_empty(), "status is read with a POST");
    for body in &posts {
        assert_eq!(body, &json!({"operationName": name}));
    }
    assert!(
        r.up.requests_for(&format!("vertex/v1/{name}")).is_empty(),
        "no GET of the name"
    );
    assert_eq!(
        r.up.header_values(&path, "authorization")[0],
        "Bearer test-vertex-token"
    );

    // Every video filtered: failed, with the reasons.
    let (name, path) = vertex_name("veo-3.0-fast-generate-001", "filtered");
    let data = r
        .drive(
            "vertex",
            &name,
            &path,
            vertex_op(&name, None),
            "running",
            vertex_op(&name, Some(json!({"response": {
                "@type": "type.googleapis.com/cloud.ai.large_models.vision.GenerateVideoResponse",
                "raiMediaFilteredCount": 1,
                "raiMediaFilteredReasons": ["Unable to show generated videos due to violations of Responsible AI practices."]}}))),
            "failed",
        )
        .await;
    assert_eq!(data["error"]["code"], "rai_media_filtered");
    assert_eq!(data["error"]["reasons"].as_array().unwrap().len(), 1);

    // An operation error.
    let (name, path) = vertex_name("veo-2.0-generate-001", "broken");
    let data = r
        .drive(
            "vertex",
            &name,
            &path,
            vertex_op(&name, None),
            "running",
            vertex_op(
                &name,
                Some(json!({"error": {"code": 3, "message": "invalid prompt"}})),
            ),
            "failed",
        )
        .await;
    assert_eq!(data["error"]["message"], "invalid prompt");

    // Not a full operation name: refused at registration.
    let (code, body) = r
        .shim
        .register(json!({"upstream": "vertex", "operation": "1234567890"}))
        .await;
    assert_eq!(code, 422, "{body}");
}

// ---------------------------------------------------------------------------------------------
// vertex-batch (Vertex AI batch prediction jobs). Shapes: python-aiplatform
// `google/cloud/aiplatform_v1/types/batch_prediction_job.py` (`BatchPredictionJob`: `name`,
// `state`, `error`, `outputInfo`, `completionStats`, `partialFailures`; JSON in camelCase, int64
// counts as strings), `types/job_state.py` (`JobState`, incl. `JOB_STATE_PARTIALLY_SUCCEEDED`),
// and `services/job_service/transports/rest_base.py` (`GET /v1/{name=projects/*/locations/*/
// batchPredictionJobs/*}`).

fn vertex_job_name(id: &str) -> (String, String) {
    let name = format!("projects/p1/locations/us-central1/batchPredictionJobs/{id}");
    let path = format!("vertex/v1/{name}");
    (name, path)
}

fn vertex_job(name: &str, state: &str, extra: Value) -> Value {
    let mut job = json!({
        "name": name,
        "displayName": "nightly-eval",
        "model": "projects/p1/locations/us-central1/publishers/google/models/gemini-2.5-flash",
        "inputConfig": {"instancesFormat": "jsonl", "gcsSource": {"uris": ["gs://b/in.jsonl"]}},
        "outputConfig": {"predictionsFormat": "jsonl", "gcsDestination": {"outputUriPrefix": "gs://b/out"}},
        "state": state,
        "createTime": rfc3339(SystemTime::now()),
        "updateTime": rfc3339(SystemTime::now()),
        "completionStats": {"successfulCount": "25", "failedCount": "5", "incompleteCount": "70"},
    });
    job.as_object_mut()
        .unwrap()
        .extend(extra.as_object().unwrap().clone());
    job
}

#[tokio::test]
async fn vertex_batch_from_queued_to_each_end() {
    let r = rig().await;
    let (name, path) = vertex_job_name("1111");
    let out = json!({"outputInfo": {"gcsOutputDirectory": "gs://b/out/prediction-model-2026-11-30"},
                     "completionStats": {"successfulCount": "100", "failedCount": "0", "incompleteCount": "0"}});
    let data = r
        .drive(
            "vertex-batch",
            &name,
            &path,
            vertex_job(&name, "JOB_STATE_QUEUED", json!({})),
            "pending",
            vertex_job(&name, "JOB_STATE_SUCCEEDED", out),
            "succeeded",
        )
        .await;
    assert_eq!(data["upstream_status"], "JOB_STATE_SUCCEEDED");
    assert_eq!(
        data["result"]["outputInfo"]["gcsOutputDirectory"],
        "gs://b/out/prediction-model-2026-11-30"
    );
    assert_eq!(data["error"], Value::Null);
    // The token comes from `auth.command`, sent as a bearer token.
    assert_eq!(
        r.up.header_values(&path, "authorization")[0],
        "Bearer test-vertex-batch-token"
    );

    // Running with completion stats: progress 30 of 100.
    let (name, path) = vertex_job_name("2222");
    r.up.set(&path, vertex_job(&name, "JOB_STATE_RUNNING", json!({})));
    let id = id_of(&r.register("vertex-batch", &name).await);
    let seen = r.wait_read(&id, "running").await;
    assert_eq!(seen["progress"], 0.3, "{seen}");
    let partial = json!({"outputInfo": {"gcsOutputDirectory": "gs://b/out/p"},
        "completionStats": {"successfulCount": "90", "failedCount": "10", "incompleteCount": "0"},
        "partialFailures": [{"code": 3, "message": "line 17: invalid request"}]});
    r.up.set(
        &path,
        vertex_job(&name, "JOB_STATE_PARTIALLY_SUCCEEDED", partial),
    );
    let data = r.terminal_callback(&id, "succeeded", "poll").await;
    assert_eq!(data["upstream_status"], "JOB_STATE_PARTIALLY_SUCCEEDED");
    assert_eq!(data["result"]["completionStats"]["failedCount"], "10");
    assert_eq!(
        data["result"]["partialFailures"][0]["message"],
        "line 17: invalid request"
    );

    for (id, end, extra, status, code) in [
        (
            "3333",
            "JOB_STATE_FAILED",
            json!({"error": {"code": 3, "message": "Failed to read the input file"}}),
            "failed",
            json!(3),
        ),
        (
            "4444",
            "JOB_STATE_CANCELLED",
            json!({"error": {"code": 1, "message": "CANCELED"}}),
            "cancelled",
            json!(1),
        ),
        (
            "5555",
            "JOB_STATE_EXPIRED",
            json!({}),
            "expired",
            json!("expired"),
        ),
    ] {
        let (name, path) = vertex_job_name(id);
        let data = r
            .drive(
                "vertex-batch",
                &name,
                &path,
                vertex_job(&name, "JOB_STATE_RUNNING", json!({})),
                "running",
                vertex_job(&name, end, extra),
                status,
            )
            .await;
        assert_eq!(data["upstream_status"], end);
        assert_eq!(data["error"]["code"], code, "{data}");
        assert_eq!(data["result"], Value::Null);
    }

    // Not the full job name: refused at registration, naming the form.
    let (code, body) = r
        .shim
        .register(json!({"upstream": "vertex-batch", "operation": "1234"}))
        .await;
    assert_eq!(code, 422, "{body}");
    assert!(
        body.to_string().contains("batchPredictionJobs/{id}"),
        "{body}"
    );
}
