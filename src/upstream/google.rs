//! Google: long-running Operations (Veo video and any Google API), Vertex AI batch prediction
//! jobs, Gemini Batch API jobs and Gemini background interactions.

use std::time::Duration;

use serde_json::Value;

use super::{
    Observation, ObservedState, count, ended, fraction, non_null, rfc3339, status_text, with,
};

use super::presets::{CreateRule, PresetSpec, ProxyPatterns, WebhookDefaults, segments};
use crate::schedule::config::PollConfig;

const GEMINI: &str = "https://generativelanguage.googleapis.com/v1beta/";
/// The Batch API under `v1`, where google-genai 3.x calls it: its `_api_client.py` has
/// `GOOGLE_AI_API_DEFAULT_VERSION = 'v1'` (3.6.1, the version `tests/sdk` pins and runs).
const GEMINI_V1: &str = "https://generativelanguage.googleapis.com/v1/";
const GEMINI_KEY: &[(&str, &str)] = &[("x-goog-api-key", "${GEMINI_API_KEY}")];

/// `google-operation`: a Google long-running Operation (`done`, `error` XOR `response`), e.g.
/// Veo video jobs, which take seconds to minutes. No default header: the preset reads any
/// Google API's Operation, and they authenticate differently.
pub static OPERATION: PresetSpec = PresetSpec {
    name: "google-operation",
    base_url: Some(GEMINI),
    status_path: Some("{operation}"),
    poll: PollConfig::media(),
    webhook: WebhookDefaults::thin(&["video."], &["video.generated"], &[]),
    reads: "done / error / response (a Veo response without videos is failed)",
    read: Some(read_operation),
    proxy: Some(ProxyPatterns {
        create: |method, path| model_call(method, path, "predictLongRunning"),
        status_read: |path, _| {
            let s = segments(path);
            let ok = match s.as_slice() {
                ["operations", id] => !id.is_empty(),
                [.., "operations", id] => !id.is_empty() && s.len() % 2 == 0,
                _ => false,
            };
            ok.then(|| path.to_string())
        },
        auth_headers: GOOGLE_AUTH,
    }),
    webhook_id_forms: operation_forms,
    webhook_id_suffix: true,
    ..PresetSpec::BASE
};

/// Google APIs take a key in `x-goog-api-key` or an OAuth token in `Authorization`.
const GOOGLE_AUTH: &[&str] = &["x-goog-api-key", "authorization"];

/// `POST models/{model}:{verb}`: the answer is an Operation named by `name`.
fn model_call(method: &str, path: &str, verb: &str) -> Option<CreateRule> {
    let s = segments(path);
    let ok = match s.as_slice() {
        ["models", m] => m
            .strip_suffix(verb)
            .and_then(|m| m.strip_suffix(':'))
            .is_some_and(|m| !m.is_empty()),
        _ => false,
    };
    (method == "POST" && ok).then(|| CreateRule::field("/name"))
}

/// `vertex-operation`: a Veo video job on Vertex AI. Vertex does not serve `GET {operation}`
/// for these; the SDK reads them with `POST {model}:fetchPredictOperation` and body
/// `{"operationName": "<full name>"}` (python-genai `operations.py`,
/// `_fetch_predict_videos_operation`). The registered operation is the full name
/// `projects/{p}/locations/{l}/publishers/google/models/{m}/operations/{id}`; the model path
/// is its part before `/operations/`. No default base URL (it names the location:
/// `https://{location}-aiplatform.googleapis.com/v1/`) and no default header (OAuth tokens).
pub static VERTEX_OPERATION: PresetSpec = PresetSpec {
    name: "vertex-operation",
    poll: PollConfig::media(),
    reads: "done / error / response; videos in response.videos[], a response whose videos were all filtered (response.raiMediaFilteredCount) is failed",
    read: Some(read_operation),
    status_path_for: Some(fetch_predict_path),
    status_method: "POST",
    status_body: Some(r#"{"operationName": "{operation}"}"#),
    proxy: Some(ProxyPatterns {
        // `POST projects/{p}/locations/{l}/publishers/google/models/{m}:predictLongRunning`
        // answers an Operation named by `name`.
        create: |method, path| {
            let s = segments(path);
            let ok = matches!(
                s.as_slice(),
                ["projects", _, "locations", _, "publishers", _, "models", m]
                    if m.strip_suffix(":predictLongRunning").is_some_and(|m| !m.is_empty())
            );
            (method == "POST" && ok).then(|| CreateRule::field("/name"))
        },
        // The SDK reads status with a POST (`:fetchPredictOperation`), which the proxy does
        // not answer from the kept body: it is forwarded, within the budget.
        status_read: |_, _| None,
        auth_headers: GOOGLE_AUTH,
    }),
    ..PresetSpec::BASE
};

/// `{model}:fetchPredictOperation` from `{model}/operations/{id}`.
pub fn fetch_predict_path(operation: &str) -> Result<String, String> {
    match operation.rsplit_once("/operations/") {
        Some((model, id)) if !model.is_empty() && !id.is_empty() && !id.contains('/') => {
            Ok(format!("{model}:fetchPredictOperation"))
        }
        _ => Err(
            "`operation` must be the full Vertex operation name, \
             projects/{project}/locations/{location}/publishers/google/models/{model}/operations/{id}"
                .into(),
        ),
    }
}

/// `vertex-batch`: a Vertex AI batch prediction job (`BatchPredictionJob`, what google-genai's
/// `client.batches` creates in Vertex mode), read with `GET {name}` (python-aiplatform
/// `aiplatform_v1/services/job_service/transports/rest_base.py`:
/// `/v1/{name=projects/*/locations/*/batchPredictionJobs/*}`). The registered operation is the
/// full name. No default base URL (it names the location) and no default header: Vertex takes
/// an OAuth access token, set with `auth`. Vertex sends no webhooks for these jobs.
pub static VERTEX_BATCH: PresetSpec = PresetSpec {
    name: "vertex-batch",
    poll: PollConfig::batch(),
    reads: "state (JOB_STATE_*; PARTIALLY_SUCCEEDED is succeeded), completionStats, outputInfo, partialFailures, error",
    read: Some(read_vertex_batch),
    status_path_for: Some(batch_prediction_job_path),
    proxy: Some(ProxyPatterns {
        // `POST projects/{p}/locations/{l}/batchPredictionJobs` answers the job, named by `name`.
        create: |method, path| {
            let ok = matches!(
                segments(path).as_slice(),
                ["projects", p, "locations", l, "batchPredictionJobs"] if !p.is_empty() && !l.is_empty()
            );
            (method == "POST" && ok).then(|| CreateRule::field("/name"))
        },
        status_read: |path, _| batch_prediction_job_path(path).ok(),
        auth_headers: GOOGLE_AUTH,
    }),
    ..PresetSpec::BASE
};

/// The status path of a batch prediction job: its full name,
/// `projects/{project}/locations/{location}/batchPredictionJobs/{id}`, checked.
pub fn batch_prediction_job_path(operation: &str) -> Result<String, String> {
    match segments(operation).as_slice() {
        ["projects", p, "locations", l, "batchPredictionJobs", id]
            if !p.is_empty() && !l.is_empty() && !id.is_empty() && !id.contains(':') =>
        {
            Ok(operation.to_string())
        }
        _ => Err(
            "`operation` must be the full Vertex batch prediction job name, \
             projects/{project}/locations/{location}/batchPredictionJobs/{id}"
                .into(),
        ),
    }
}

/// `gemini-batch`: a Gemini Batch API job (`batches/{id}`).
pub static BATCH: PresetSpec = PresetSpec {
    name: "gemini-batch",
    base_url: Some(GEMINI_V1),
    // Operations are stored as `batches/{id}` (see `canonical_batch`).
    status_path: Some("{operation}"),
    headers: GEMINI_KEY,
    poll: PollConfig::batch(),
    webhook: WebhookDefaults::thin(
        &["batch."],
        // python-genai `_gaos/types/webhooks/webhook.py`, `WebhookSubscribedEvent` (no
        // `batch.cancelled`: a cancelled batch sends no event; the safety poll finds it).
        &["batch.succeeded", "batch.failed", "batch.expired"],
        &[],
    ),
    reads: "state or metadata.state (BATCH_STATE_* / JOB_STATE_*), batchStats, output",
    read: Some(read_batch),
    canonical_operation: canonical_batch,
    proxy: Some(ProxyPatterns {
        create: |method, path| model_call(method, path, "batchGenerateContent"),
        status_read: |path, _| {
            path.strip_prefix("batches/")
                .filter(|id| !id.is_empty() && !id.contains('/') && !id.contains(':'))
                .map(|_| path.to_string())
        },
        auth_headers: GOOGLE_AUTH,
    }),
    webhook_id_forms: batch_forms,
    ..PresetSpec::BASE
};

/// `gemini-interaction`: a Gemini background interaction (Deep Research and other
/// `background: true` runs). Deep Research runs for minutes and may wait on the user for hours.
pub static INTERACTION: PresetSpec = PresetSpec {
    name: "gemini-interaction",
    base_url: Some(GEMINI),
    status_path: Some("interactions/{operation}"),
    headers: GEMINI_KEY,
    poll: PollConfig::media(),
    webhook: WebhookDefaults::thin(
        &["interaction."],
        // python-genai `_gaos/types/webhooks/webhook.py`, `WebhookSubscribedEvent` (no
        // `interaction.cancelled`).
        &[
            "interaction.completed",
            "interaction.failed",
            "interaction.requires_action",
        ],
        &["interaction.requires_action"],
    ),
    can_pause: true,
    reads: "status (requires_action is a pause), outputs, error",
    read: Some(read_interaction),
    canonical_operation: canonical_interaction,
    proxy: Some(ProxyPatterns {
        create: |method, path| {
            (method == "POST" && path == "interactions").then(|| CreateRule::background("/id"))
        },
        status_read: |path, _| {
            path.strip_prefix("interactions/")
                .filter(|id| !id.is_empty() && !id.contains('/') && !id.contains(':'))
                .map(str::to_string)
        },
        auth_headers: GOOGLE_AUTH,
    }),
    webhook_id_forms: last_segment,
    ..PresetSpec::BASE
};

/// Gemini batches are stored as `batches/{id}`, whether given with or without the collection.
fn canonical_batch(op: &str) -> String {
    if op.starts_with("batches/") {
        op.to_string()
    } else {
        format!("batches/{op}")
    }
}

/// The last path segment of an id (`x` of `models/veo-3/operations/x`).
fn last(op: &str) -> &str {
    op.rsplit('/').next().unwrap_or(op)
}

/// The webhook id's last segment (`interactions/v1_x` → `v1_x`, `batches/123` → `123`).
fn last_segment(op: &str) -> Vec<String> {
    vec![last(op).to_string()]
}

/// The format of `data.id` in Gemini's batch events is not documented; the example
/// `batch_123456` may name `batches/123456` or `batches/batch_123456`: try the last segment
/// with and without the `batch_` prefix.
fn batch_forms(op: &str) -> Vec<String> {
    let id = last(op);
    let mut forms = vec![id.to_string()];
    match id.strip_prefix("batch_") {
        Some(bare) => forms.push(bare.to_string()),
        None => forms.push(format!("batch_{id}")),
    }
    forms
}

/// A Veo event may name the operation fully (`models/veo-3/operations/x`) or as
/// `operations/x`: try the `operations/...` tail (a registered `operations/x`); a registration
/// of the full name is found by the last segment ([`PresetSpec::webhook_id_suffix`]).
fn operation_forms(op: &str) -> Vec<String> {
    match op.find("operations/") {
        Some(i) if i > 0 => vec![op[i..].to_string()],
        _ => Vec::new(),
    }
}

/// Gemini interactions are stored as the bare id.
fn canonical_interaction(op: &str) -> String {
    op.strip_prefix("interactions/").unwrap_or(op).into()
}

/// A Gemini batch not processed within this long ends as expired (the API reference and the
/// `batch.expired` event say 48 h; the guide says 24 h — the policy looks again then anyway).
const BATCH_LIFETIME: Duration = Duration::from_secs(48 * 3600);

/// A Google long-running Operation: `done` absent or false → running; `done: true` with
/// `error` → failed (`code` 1, CANCELLED → cancelled), with `response` → succeeded. A Veo
/// response whose videos were all removed by the safety filters is failed: there is no video
/// to hand over.
pub fn read_operation(body: &Value) -> Result<Observation, String> {
    let done = match body.get("done") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(other) => return Err(format!("`done` is not a boolean: {other}")),
    };
    let meta_state = body.pointer("/metadata/state").cloned();
    if !done {
        let mut obs = Observation::new(
            ObservedState::Running,
            meta_state.unwrap_or_else(|| Value::from("running")),
        );
        obs.progress =
            count(body.pointer("/metadata/progressPercent")).map(|p| (p / 100.0).min(1.0));
        return Ok(obs);
    }
    let mut obs = Observation::new(
        ObservedState::Succeeded,
        meta_state.unwrap_or_else(|| Value::from("done")),
    );
    obs.progress = Some(1.0);
    match non_null(body, "/error") {
        Some(e) => {
            obs.state = if e.get("code").and_then(Value::as_i64) == Some(1) {
                ObservedState::Cancelled
            } else {
                ObservedState::Failed
            };
            obs.error = Some(e);
        }
        None => {
            let response = non_null(body, "/response");
            if let Some(filtered) = response.as_ref().and_then(veo_filtered) {
                obs.state = ObservedState::Failed;
                obs.error = Some(filtered);
            }
            obs.result = response;
        }
    }
    Ok(obs)
}

/// A Veo response with no generated video and a filter count: the error to report. The Gemini
/// API nests it (`generateVideoResponse.generatedSamples`), Vertex does not (`videos`,
/// `raiMediaFilteredCount` at the top of `response`; python-genai `models.py`,
/// `_GenerateVideosResponse_from_mldev` / `_from_vertex`).
fn veo_filtered(response: &Value) -> Option<Value> {
    let (veo, list) = match response.get("generateVideoResponse") {
        Some(v) => (v, "generatedSamples"),
        None => (response, "videos"),
    };
    let samples = veo.get(list).and_then(Value::as_array).map_or(0, Vec::len);
    let filtered = count(veo.get("raiMediaFilteredCount")).unwrap_or(0.0);
    (samples == 0 && filtered > 0.0).then(|| {
        with(
            ended(
                "rai_media_filtered",
                "every generated video was removed by the safety filters",
            ),
            "reasons",
            veo.get("raiMediaFilteredReasons").cloned(),
        )
    })
}

/// A Gemini batch, either wrapped in an Operation (`metadata` holds the batch) or bare.
pub fn read_batch(body: &Value) -> Result<Observation, String> {
    let envelope = body.pointer("/metadata/state").is_some();
    let batch = if envelope { &body["metadata"] } else { body };
    let raw = status_text(batch, "/state")
        .map_err(|e| format!("{e} (looked at metadata.state and state)"))?;
    let name = raw
        .strip_prefix("BATCH_STATE_")
        .or_else(|| raw.strip_prefix("JOB_STATE_"))
        .unwrap_or(raw);
    let mut state = match name {
        "PENDING" | "QUEUED" => ObservedState::Pending,
        "SUCCEEDED" | "PARTIALLY_SUCCEEDED" => ObservedState::Succeeded,
        "FAILED" => ObservedState::Failed,
        "CANCELLED" => ObservedState::Cancelled,
        "EXPIRED" => ObservedState::Expired,
        // RUNNING, CANCELLING, UPDATING, PAUSED, UNSPECIFIED and states added later.
        _ => ObservedState::Running,
    };
    // An Operation that is done with an error has failed, whatever its metadata last said.
    let op_error = non_null(body, "/error").filter(|_| envelope);
    if body.get("done") == Some(&Value::Bool(true)) && op_error.is_some() && !state.is_terminal() {
        state = ObservedState::Failed;
    }
    let mut obs = Observation::new(state, Value::from(raw));
    let stats = batch.get("batchStats");
    let stat = |k: &str| count(stats.and_then(|s| s.get(k)));
    let total = stat("requestCount");
    let finished = match (stat("successfulRequestCount"), stat("failedRequestCount")) {
        (None, None) => stat("pendingRequestCount").and_then(|p| Some(total? - p)),
        (s, f) => Some(s.unwrap_or(0.0) + f.unwrap_or(0.0)),
    };
    obs.progress = finished.and_then(|d| fraction(d, total));
    obs.expires_at = rfc3339(batch.get("createTime")).map(|t| t.plus(BATCH_LIFETIME));
    match state {
        ObservedState::Succeeded => {
            obs.result = non_null(batch, "/output").or_else(|| non_null(body, "/response"));
        }
        ObservedState::Failed | ObservedState::Cancelled | ObservedState::Expired => {
            let own = op_error.or_else(|| non_null(batch, "/error"));
            obs.error = Some(own.unwrap_or_else(|| {
                ended(
                    &name.to_ascii_lowercase(),
                    format!("the batch ended in state {raw}"),
                )
            }));
        }
        _ => {}
    }
    Ok(obs)
}

/// A Vertex AI `BatchPredictionJob` (python-aiplatform `aiplatform_v1/types/
/// batch_prediction_job.py`, `job_state.py`): `JOB_STATE_QUEUED` / `PENDING` are pending;
/// `SUCCEEDED` and `PARTIALLY_SUCCEEDED` ("some results may be missing due to errors") are
/// succeeded, with `outputInfo`, `completionStats` and `partialFailures` in `result`; `FAILED`,
/// `CANCELLED`, `EXPIRED` end with the job's `error` (a `google.rpc.Status`, "only populated
/// when the job's state is JOB_STATE_FAILED or JOB_STATE_CANCELLED"); `RUNNING`, `CANCELLING`,
/// `UPDATING`, `PAUSED` (resumable), `UNSPECIFIED` and states added later are running.
/// Progress is `completionStats`: (successful + failed) / (those + incomplete), where
/// `incompleteCount` is -1 when unknown (then no progress).
pub fn read_vertex_batch(body: &Value) -> Result<Observation, String> {
    let raw = status_text(body, "/state")?;
    let name = raw.strip_prefix("JOB_STATE_").unwrap_or(raw);
    let state = match name {
        "QUEUED" | "PENDING" => ObservedState::Pending,
        "SUCCEEDED" | "PARTIALLY_SUCCEEDED" => ObservedState::Succeeded,
        "FAILED" => ObservedState::Failed,
        "CANCELLED" => ObservedState::Cancelled,
        "EXPIRED" => ObservedState::Expired,
        _ => ObservedState::Running,
    };
    let mut obs = Observation::new(state, Value::from(raw));
    let stats = body.get("completionStats");
    let stat = |k: &str| count(stats.and_then(|s| s.get(k)));
    let finished = match (stat("successfulCount"), stat("failedCount")) {
        (None, None) => None,
        (s, f) => Some(s.unwrap_or(0.0) + f.unwrap_or(0.0)),
    };
    obs.progress = finished.and_then(|d| fraction(d, stat("incompleteCount").map(|i| i + d)));
    match state {
        ObservedState::Succeeded => {
            obs.progress = Some(1.0);
            obs.result = Some(serde_json::json!({
                "outputInfo": non_null(body, "/outputInfo"),
                "completionStats": non_null(body, "/completionStats"),
                "partialFailures": non_null(body, "/partialFailures"),
            }));
        }
        ObservedState::Failed | ObservedState::Cancelled | ObservedState::Expired => {
            obs.error = Some(non_null(body, "/error").unwrap_or_else(|| {
                ended(
                    &name.to_ascii_lowercase(),
                    format!("the batch prediction job ended in state {raw}"),
                )
            }));
        }
        _ => {}
    }
    Ok(obs)
}

/// A Gemini interaction (`GET interactions/{id}`): `requires_action` is a pause; `incomplete`
/// (completed with partial results, e.g. the token limit) and `budget_exceeded` are failures
/// that keep what was produced in `result`.
pub fn read_interaction(body: &Value) -> Result<Observation, String> {
    let raw = status_text(body, "/status")?;
    let (state, why) = match raw {
        "queued" => (ObservedState::Pending, None),
        "requires_action" => (ObservedState::RequiresAction, None),
        "completed" => (ObservedState::Succeeded, None),
        "failed" => (ObservedState::Failed, Some("the interaction failed")),
        "cancelled" => (
            ObservedState::Cancelled,
            Some("the interaction was cancelled"),
        ),
        "incomplete" => (
            ObservedState::Failed,
            Some("the interaction ended with incomplete results (e.g. the output token limit)"),
        ),
        "budget_exceeded" => (
            ObservedState::Failed,
            Some("the interaction was halted because its token budget was exceeded"),
        ),
        // in_progress and statuses added later.
        _ => (ObservedState::Running, None),
    };
    let mut obs = Observation::new(state, Value::from(raw));
    if state.is_terminal() || state == ObservedState::RequiresAction {
        obs.result = non_null(body, "/outputs").or_else(|| non_null(body, "/steps"));
    }
    if let Some(why) = why {
        obs.error = Some(interaction_error(body).unwrap_or_else(|| ended(raw, why)));
    }
    if state == ObservedState::Succeeded {
        obs.progress = Some(1.0);
    }
    Ok(obs)
}

/// The interaction's own error: since 2026-08 a list `errors` of `{code, message}`
/// (python-genai `_gaos/types/interactions/interaction.py`, `errors: List[Error]`, and
/// `error.py`); before, one object `error`. The first of `errors` is the error, the whole list is
/// kept under `errors`.
fn interaction_error(body: &Value) -> Option<Value> {
    if let Some(list) =
        non_null(body, "/errors").filter(|v| v.as_array().is_some_and(|a| !a.is_empty()))
    {
        let first = list.get(0).cloned().unwrap_or(Value::Null);
        let mut e = if first.is_object() {
            first
        } else {
            ended("failed", first.to_string())
        };
        if let Some(obj) = e.as_object_mut() {
            obj.insert("errors".into(), list);
        }
        return Some(e);
    }
    non_null(body, "/error")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::Timestamp;
    use serde_json::json;

    #[test]
    fn operation_reads_done_error_response() {
        assert_eq!(
            read_operation(&json!({"name": "x"})).unwrap().state,
            ObservedState::Running
        );
        assert_eq!(
            read_operation(&json!({"name": "x", "done": false}))
                .unwrap()
                .state,
            ObservedState::Running
        );
        let ok = read_operation(&json!({"done": true, "response": {"generateVideoResponse": {"generatedSamples": [{"video": {"uri": "u"}}]}}}))
            .unwrap();
        assert_eq!(ok.state, ObservedState::Succeeded);
        assert_eq!(
            ok.result
                .unwrap()
                .pointer("/generateVideoResponse/generatedSamples/0/video/uri"),
            Some(&json!("u"))
        );
        let failed =
            read_operation(&json!({"done": true, "error": {"code": 13, "message": "boom"}}))
                .unwrap();
        assert_eq!(failed.state, ObservedState::Failed);
        assert_eq!(failed.error.unwrap()["message"], "boom");
        let cancelled =
            read_operation(&json!({"done": true, "error": {"code": 1, "message": "cancelled"}}))
                .unwrap();
        assert_eq!(cancelled.state, ObservedState::Cancelled);
        assert!(read_operation(&json!({"done": "yes"})).is_err());
    }

    #[test]
    fn veo_response_without_videos_is_failed_with_the_filter_reasons() {
        let o = read_operation(
            &json!({"done": true, "response": {"generateVideoResponse": {
            "raiMediaFilteredCount": 1, "raiMediaFilteredReasons": ["celebrity"]}}}),
        )
        .unwrap();
        assert_eq!(o.state, ObservedState::Failed);
        let e = o.error.unwrap();
        assert_eq!(e["code"], "rai_media_filtered");
        assert_eq!(e["reasons"], json!(["celebrity"]));
    }

    #[test]
    fn vertex_response_reads_videos_and_top_level_filtering() {
        // python-genai models.py `_GenerateVideosResponse_from_vertex`: `videos`,
        // `raiMediaFilteredCount`, `raiMediaFilteredReasons` at the top of `response`.
        let ok = read_operation(&json!({"done": true, "response": {
            "@type": "type.googleapis.com/cloud.ai.large_models.vision.GenerateVideoResponse",
            "videos": [{"gcsUri": "gs://b/v.mp4", "mimeType": "video/mp4"}]}}))
        .unwrap();
        assert_eq!(ok.state, ObservedState::Succeeded);
        let o = read_operation(&json!({"done": true, "response": {
            "raiMediaFilteredCount": 1, "raiMediaFilteredReasons": ["child"]}}))
        .unwrap();
        assert_eq!(o.state, ObservedState::Failed);
        let e = o.error.unwrap();
        assert_eq!(e["code"], "rai_media_filtered");
        assert_eq!(e["reasons"], json!(["child"]));
        assert_eq!(
            fetch_predict_path("projects/p/locations/us-central1/publishers/google/models/veo-3.0-generate-001/operations/abc").unwrap(),
            "projects/p/locations/us-central1/publishers/google/models/veo-3.0-generate-001:fetchPredictOperation"
        );
        assert!(fetch_predict_path("abc").is_err());
        assert!(fetch_predict_path("models/m/operations/").is_err());
    }

    fn batch(state: &str) -> Value {
        json!({"name": "batches/b1", "state": state, "createTime": "2026-11-27T10:00:00Z",
               "batchStats": {"requestCount": "4", "successfulRequestCount": "2",
                              "failedRequestCount": "1", "pendingRequestCount": "1"},
               "output": {"responsesFile": "files/out-1"}})
    }

    #[test]
    fn batch_accepts_both_state_spellings() {
        for (suffix, want) in [
            ("PENDING", ObservedState::Pending),
            ("RUNNING", ObservedState::Running),
            ("SUCCEEDED", ObservedState::Succeeded),
            ("FAILED", ObservedState::Failed),
            ("CANCELLED", ObservedState::Cancelled),
            ("EXPIRED", ObservedState::Expired),
        ] {
            for prefix in ["BATCH_STATE_", "JOB_STATE_"] {
                let raw = format!("{prefix}{suffix}");
                let o = read_batch(&batch(&raw)).unwrap();
                assert_eq!(o.state, want, "{raw}");
                assert_eq!(o.raw_status, json!(raw));
            }
        }
        assert_eq!(
            read_batch(&batch("BATCH_STATE_SOMETHING_NEW"))
                .unwrap()
                .state,
            ObservedState::Running
        );
    }

    #[test]
    fn batch_progress_comes_from_string_int64_stats() {
        let o = read_batch(&batch("BATCH_STATE_RUNNING")).unwrap();
        assert_eq!(o.progress, Some(0.75));
        assert_eq!(o.result, None, "no result before the end");
        // Only the pending count given.
        let o = read_batch(&json!({"state": "BATCH_STATE_RUNNING",
            "batchStats": {"requestCount": "10", "pendingRequestCount": "4"}}))
        .unwrap();
        assert_eq!(o.progress, Some(0.6));
        // No stats, no progress.
        let o = read_batch(&json!({"state": "BATCH_STATE_RUNNING"})).unwrap();
        assert_eq!(o.progress, None);
    }

    #[test]
    fn batch_in_an_operation_envelope_reads_the_metadata() {
        let mut meta = batch("BATCH_STATE_SUCCEEDED");
        meta["@type"] =
            json!("type.googleapis.com/google.ai.generativelanguage.v1main.GenerateContentBatch");
        let o = read_batch(&json!({"name": "batches/b1", "metadata": meta, "done": true})).unwrap();
        assert_eq!(o.state, ObservedState::Succeeded);
        assert_eq!(o.result, Some(json!({"responsesFile": "files/out-1"})));
        assert_eq!(o.progress, Some(0.75));
        // The Operation's own response stands in when the metadata has no output.
        let o = read_batch(
            &json!({"metadata": {"state": "JOB_STATE_SUCCEEDED"}, "done": true,
            "response": {"inlinedResponses": {"inlinedResponses": []}}}),
        )
        .unwrap();
        assert_eq!(
            o.result,
            Some(json!({"inlinedResponses": {"inlinedResponses": []}}))
        );
        // Done with an error is failed even if the metadata lags.
        let o = read_batch(
            &json!({"metadata": {"state": "BATCH_STATE_RUNNING"}, "done": true,
            "error": {"code": 13, "message": "internal"}}),
        )
        .unwrap();
        assert_eq!(o.state, ObservedState::Failed);
        assert_eq!(o.error.unwrap()["message"], "internal");
    }

    #[test]
    fn batch_expiry_and_errors() {
        let o = read_batch(&batch("BATCH_STATE_RUNNING")).unwrap();
        let created = humantime::parse_rfc3339("2026-11-27T10:00:00Z").unwrap();
        assert_eq!(
            o.expires_at,
            Some(Timestamp::from_system(created).plus(BATCH_LIFETIME))
        );
        let o = read_batch(&batch("BATCH_STATE_EXPIRED")).unwrap();
        assert_eq!(o.error.as_ref().unwrap()["code"], "expired");
        assert_eq!(o.result, None);
        let o = read_batch(&batch("JOB_STATE_FAILED")).unwrap();
        assert_eq!(o.error.as_ref().unwrap()["code"], "failed");
        assert!(
            o.error.unwrap()["message"]
                .as_str()
                .unwrap()
                .contains("JOB_STATE_FAILED")
        );
        assert!(read_batch(&json!({"name": "batches/b1"})).is_err());
        assert!(read_batch(&json!({"state": 3})).is_err());
    }

    #[test]
    fn interaction_statuses() {
        let read = |s: &str| {
            read_interaction(
                &json!({"id": "i1", "status": s, "outputs": [{"type": "text", "text": "hi"}]}),
            )
            .unwrap()
        };
        assert_eq!(read("in_progress").state, ObservedState::Running);
        assert_eq!(read("queued").state, ObservedState::Pending);
        let paused = read("requires_action");
        assert_eq!(paused.state, ObservedState::RequiresAction);
        assert!(!paused.state.is_terminal());
        assert_eq!(paused.result.unwrap()[0]["text"], "hi");
        let done = read("completed");
        assert_eq!(done.state, ObservedState::Succeeded);
        assert_eq!(done.result.unwrap()[0]["text"], "hi");
        assert_eq!(done.error, None);
        for (s, want) in [
            ("failed", ObservedState::Failed),
            ("cancelled", ObservedState::Cancelled),
            ("incomplete", ObservedState::Failed),
            ("budget_exceeded", ObservedState::Failed),
        ] {
            let o = read(s);
            assert_eq!(o.state, want, "{s}");
            assert_eq!(o.error.unwrap()["code"], s);
            assert!(o.result.is_some(), "{s} keeps what was produced");
        }
        let own =
            read_interaction(&json!({"status": "failed", "error": {"code": 500, "message": "x"}}))
                .unwrap();
        assert_eq!(own.error.unwrap()["code"], 500);
        // Since 2026-08 errors come as a list `errors` of `{code, message}` (python-genai
        // `_gaos/types/interactions/interaction.py`).
        let listed = read_interaction(&json!({"status": "failed", "errors": [
            {"code": "RESOURCE_EXHAUSTED", "message": "quota"},
            {"code": "INTERNAL", "message": "later"}]}))
        .unwrap();
        let e = listed.error.unwrap();
        assert_eq!(e["code"], "RESOURCE_EXHAUSTED");
        assert_eq!(e["message"], "quota");
        assert_eq!(e["errors"].as_array().unwrap().len(), 2);
        // An empty list says nothing: the generic end.
        let empty = read_interaction(&json!({"status": "failed", "errors": []})).unwrap();
        assert_eq!(empty.error.unwrap()["code"], "failed");
        assert!(read_interaction(&json!({"id": "i1"})).is_err());
    }
}

#[cfg(test)]
mod vertex_proxy_tests {
    use super::*;

    /// A `BatchPredictionJob` as Vertex's REST API writes it (camelCase JSON of python-aiplatform
    /// `aiplatform_v1/types/batch_prediction_job.py`; int64 counts as strings).
    fn vertex_job(state: &str) -> Value {
        serde_json::json!({
            "name": "projects/p/locations/us-central1/batchPredictionJobs/123",
            "displayName": "nightly",
            "model": "publishers/google/models/gemini-2.5-flash",
            "state": state,
            "createTime": "2026-11-30T10:00:00.000Z",
            "completionStats": {"successfulCount": "30", "failedCount": "10", "incompleteCount": "60"},
            "outputInfo": {"gcsOutputDirectory": "gs://b/out/prediction-123"},
        })
    }

    #[test]
    fn vertex_batch_states() {
        let read = |s: &str| read_vertex_batch(&vertex_job(s)).unwrap();
        for (s, want) in [
            ("JOB_STATE_QUEUED", ObservedState::Pending),
            ("JOB_STATE_PENDING", ObservedState::Pending),
            ("JOB_STATE_RUNNING", ObservedState::Running),
            ("JOB_STATE_CANCELLING", ObservedState::Running),
            ("JOB_STATE_UPDATING", ObservedState::Running),
            ("JOB_STATE_PAUSED", ObservedState::Running),
            ("JOB_STATE_UNSPECIFIED", ObservedState::Running),
            ("JOB_STATE_SUCCEEDED", ObservedState::Succeeded),
            ("JOB_STATE_PARTIALLY_SUCCEEDED", ObservedState::Succeeded),
            ("JOB_STATE_FAILED", ObservedState::Failed),
            ("JOB_STATE_CANCELLED", ObservedState::Cancelled),
            ("JOB_STATE_EXPIRED", ObservedState::Expired),
        ] {
            let o = read(s);
            assert_eq!(o.state, want, "{s}");
            assert_eq!(o.raw_status, s);
            assert_eq!(o.result.is_some(), want == ObservedState::Succeeded, "{s}");
            assert_eq!(
                o.error.is_some(),
                o.state.is_terminal() && want != ObservedState::Succeeded,
                "{s}"
            );
        }
        // 40 of 100 finished.
        assert_eq!(read("JOB_STATE_RUNNING").progress, Some(0.4));
        let done = read("JOB_STATE_PARTIALLY_SUCCEEDED");
        assert_eq!(done.progress, Some(1.0));
        let r = done.result.unwrap();
        assert_eq!(
            r["outputInfo"]["gcsOutputDirectory"],
            "gs://b/out/prediction-123"
        );
        assert_eq!(r["completionStats"]["failedCount"], "10");
        assert_eq!(r["partialFailures"], Value::Null);
    }

    #[test]
    fn vertex_batch_errors_and_progress_edges() {
        let mut job = vertex_job("JOB_STATE_FAILED");
        job["error"] = serde_json::json!({"code": 3, "message": "bad input file"});
        let o = read_vertex_batch(&job).unwrap();
        assert_eq!(o.error.unwrap()["message"], "bad input file");
        for (s, code) in [
            ("JOB_STATE_CANCELLED", "cancelled"),
            ("JOB_STATE_EXPIRED", "expired"),
        ] {
            let o = read_vertex_batch(&vertex_job(s)).unwrap();
            let e = o.error.unwrap();
            assert_eq!(e["code"], code);
            assert!(e["message"].as_str().unwrap().contains(s));
        }
        // incompleteCount is -1 when unknown: no progress rather than a wrong one.
        let mut job = vertex_job("JOB_STATE_RUNNING");
        job["completionStats"]["incompleteCount"] = Value::from("-1");
        assert_eq!(read_vertex_batch(&job).unwrap().progress, None);
        job.as_object_mut().unwrap().remove("completionStats");
        assert_eq!(read_vertex_batch(&job).unwrap().progress, None);
        assert!(read_vertex_batch(&serde_json::json!({"name": "x"})).is_err());
        assert!(read_vertex_batch(&serde_json::json!({"state": 3})).is_err());
    }

    #[test]
    fn vertex_batch_names_are_checked_and_proxied() {
        let name = "projects/p/locations/us-central1/batchPredictionJobs/123";
        assert_eq!(batch_prediction_job_path(name).unwrap(), name);
        for bad in [
            "123",
            "batchPredictionJobs/123",
            "projects/p/locations/us-central1/batchPredictionJobs/123:cancel",
            "projects/p/locations/us-central1/batchPredictionJobs/",
            "projects/p/locations/us-central1/customJobs/123",
        ] {
            let e = batch_prediction_job_path(bad).unwrap_err();
            assert!(
                e.contains("projects/{project}/locations/{location}/batchPredictionJobs/{id}"),
                "{bad}: {e}"
            );
        }
        let proxy = VERTEX_BATCH.proxy.as_ref().unwrap();
        let parent = "projects/p/locations/us-central1/batchPredictionJobs";
        assert_eq!(
            (proxy.create)("POST", parent),
            Some(CreateRule::field("/name"))
        );
        assert!((proxy.create)("GET", parent).is_none());
        assert!((proxy.create)("POST", name).is_none());
        assert_eq!((proxy.status_read)(name, "").as_deref(), Some(name));
        assert!((proxy.status_read)(&format!("{name}:cancel"), "").is_none());
    }

    #[test]
    fn vertex_creates_are_recognised_and_status_posts_are_forwarded() {
        let proxy = VERTEX_OPERATION.proxy.as_ref().unwrap();
        let create = "projects/p/locations/us-central1/publishers/google/models/veo-3.0-generate-001:predictLongRunning";
        assert!((proxy.create)("POST", create).is_some());
        assert!((proxy.create)("GET", create).is_none());
        assert!((proxy.create)("POST", "models/veo-3:predictLongRunning").is_none());
        let fetch =
            "projects/p/locations/us-central1/publishers/google/models/veo-3:fetchPredictOperation";
        assert!((proxy.create)("POST", fetch).is_none());
        assert!((proxy.status_read)(fetch, "").is_none());
    }
}
