//! Runway tasks (image, video and audio generations): `GET /v1/tasks/{id}`. Shapes from
//! runwayml/sdk-python `src/runwayml/types/task_retrieve_response.py` (a union discriminated by
//! `status`: `PENDING`, `THROTTLED`, `RUNNING` with `progress`, `SUCCEEDED` with `output`,
//! `FAILED` with `failure` and `failureCode`, `CANCELLED` "a cancelled or deleted task") and
//! `src/runwayml/_client.py` (`Authorization: Bearer {RUNWAYML_API_SECRET}`, `X-Runway-Version`,
//! default `2024-11-06`, base URL `https://api.dev.runwayml.com`).

use std::time::Duration;

use serde_json::Value;

use super::{Observation, ObservedState, ended, non_null, read_progress, status_text};

use super::openai::one_below;
use super::presets::{CreateRule, PresetSpec, ProxyPatterns, segments};
use crate::schedule::config::PollConfig;

/// `runway-task`: a Runway task. Runway sends no webhooks for tasks (the SDK has none; it polls
/// `GET /v1/tasks/{id}` in `lib/polling.py`).
pub static TASK: PresetSpec = PresetSpec {
    name: "runway-task",
    base_url: Some("https://api.dev.runwayml.com/v1/"),
    status_path: Some("tasks/{operation}"),
    headers: &[
        ("Authorization", "Bearer ${RUNWAYML_API_SECRET}"),
        ("X-Runway-Version", "2024-11-06"),
    ],
    // "Consumers of this API should not expect updates more frequent than once every five
    // seconds for a given task" (`resources/tasks.py`, `retrieve`).
    poll: PollConfig {
        initial: Duration::from_secs(5),
        finalizing: Duration::from_secs(5),
        ..PollConfig::media()
    },
    reads: "status (PENDING / THROTTLED / RUNNING / SUCCEEDED / FAILED / CANCELLED), progress, output, failure / failureCode",
    read: Some(read_task),
    proxy: Some(ProxyPatterns {
        create: create_task,
        status_read: |path, _| one_below("tasks/", path),
        auth_headers: &["authorization"],
    }),
    ..PresetSpec::BASE
};

/// The SDK's task-creating calls, each answering `{"id": …}` (`create_waitable_resource` in
/// `resources/*.py`).
const CREATES: &[&str] = &[
    "image_to_video",
    "text_to_video",
    "video_to_video",
    "text_to_image",
    "video_upscale",
    "image_upscale",
    "character_performance",
    "sound_effect",
    "speech_to_speech",
    "text_to_speech",
    "voice_dubbing",
    "voice_isolation",
    "avatar_videos",
];

fn create_task(method: &str, path: &str) -> Option<CreateRule> {
    let ok = match segments(path).as_slice() {
        [one] => CREATES.contains(one),
        ["generate", "audio" | "image" | "video"] => true,
        ["recipes", name] => !name.is_empty(),
        _ => false,
    };
    (method == "POST" && ok).then(|| CreateRule {
        // The answer is only `{"id"}`, not the task.
        returns_job: false,
        ..CreateRule::field("/id")
    })
}

/// A task: `PENDING` and `THROTTLED` (waiting for capacity) are pending; `RUNNING` (and
/// statuses added later) running, with `progress` (0–1); `SUCCEEDED` succeeded with `result` =
/// `output` (URLs that expire within 24–48 h); `FAILED` failed with `error = {"code":
/// failureCode, "message": failure}`; `CANCELLED` cancelled.
pub fn read_task(body: &Value) -> Result<Observation, String> {
    let raw = status_text(body, "/status")?;
    let state = match raw {
        "PENDING" | "THROTTLED" => ObservedState::Pending,
        "SUCCEEDED" => ObservedState::Succeeded,
        "FAILED" => ObservedState::Failed,
        "CANCELLED" => ObservedState::Cancelled,
        _ => ObservedState::Running,
    };
    let mut obs = Observation::new(state, Value::from(raw));
    obs.progress = read_progress(body, "/progress");
    match state {
        ObservedState::Succeeded => {
            obs.progress = Some(1.0);
            obs.result = non_null(body, "/output");
        }
        ObservedState::Failed => {
            let code = body
                .get("failureCode")
                .and_then(Value::as_str)
                .unwrap_or("failed");
            let message = body
                .get("failure")
                .and_then(Value::as_str)
                .unwrap_or("the task failed");
            obs.error = Some(ended(code, message));
        }
        ObservedState::Cancelled => {
            obs.error = Some(ended("cancelled", "the task was cancelled or deleted"));
        }
        _ => {}
    }
    Ok(obs)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// The six members of `TaskRetrieveResponse` as the API writes them (camelCase aliases).
    fn task(status: &str, extra: Value) -> Value {
        let mut v = json!({"id": "17f20503-6c24-4c16-946b-35dbbce2af2f",
                           "createdAt": "2026-11-30T10:00:00.000Z", "status": status});
        v.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        v
    }

    #[test]
    fn every_task_status() {
        for (s, want) in [
            ("PENDING", ObservedState::Pending),
            ("THROTTLED", ObservedState::Pending),
            ("RUNNING", ObservedState::Running),
            ("SOMETHING_NEW", ObservedState::Running),
            ("SUCCEEDED", ObservedState::Succeeded),
            ("FAILED", ObservedState::Failed),
            ("CANCELLED", ObservedState::Cancelled),
        ] {
            let o = read_task(&task(s, json!({}))).unwrap();
            assert_eq!(o.state, want, "{s}");
            assert_eq!(o.raw_status, s);
            assert_eq!(
                o.error.is_some(),
                o.state.is_terminal() && want != ObservedState::Succeeded,
                "{s}"
            );
        }
    }

    #[test]
    fn progress_output_and_failure() {
        let running = read_task(&task("RUNNING", json!({"progress": 0.42}))).unwrap();
        assert_eq!(running.progress, Some(0.42));
        assert_eq!(running.result, None);
        assert_eq!(
            read_task(&task("RUNNING", json!({}))).unwrap().progress,
            None
        );
        let out = json!(["https://dnznrvs05pmza.cloudfront.net/out.mp4?_jwt=x"]);
        let done = read_task(&task("SUCCEEDED", json!({"output": out}))).unwrap();
        assert_eq!(done.result, Some(out));
        assert_eq!(done.progress, Some(1.0));
        assert_eq!(done.error, None);
        let failed = read_task(&task(
            "FAILED",
            json!({"failure": "Input image was flagged by moderation.",
                   "failureCode": "SAFETY.INPUT.IMAGE"}),
        ))
        .unwrap();
        assert_eq!(
            failed.error,
            Some(json!({"code": "SAFETY.INPUT.IMAGE",
                        "message": "Input image was flagged by moderation."}))
        );
        assert_eq!(failed.result, None);
        // failureCode is optional.
        let bare = read_task(&task("FAILED", json!({"failure": "Internal error"}))).unwrap();
        assert_eq!(bare.error.unwrap()["code"], "failed");
        let cancelled = read_task(&task("CANCELLED", json!({}))).unwrap();
        assert_eq!(cancelled.error.unwrap()["code"], "cancelled");
        assert!(read_task(&json!({"id": "x"})).is_err());
        assert!(read_task(&json!({"status": 1})).is_err());
    }

    #[test]
    fn task_creates_and_reads_are_recognised() {
        let p = TASK.proxy.as_ref().unwrap();
        for path in [
            "image_to_video",
            "text_to_image",
            "generate/video",
            "recipes/product_ad",
            "avatar_videos",
        ] {
            let rule = (p.create)("POST", path).unwrap();
            assert!(!rule.returns_job, "{path}");
        }
        for (m, path) in [
            ("GET", "image_to_video"),
            ("POST", "tasks"),
            ("POST", "uploads"),
            ("POST", "voices"),
            ("POST", "generate/text"),
            ("POST", "recipes"),
        ] {
            assert!((p.create)(m, path).is_none(), "{m} {path}");
        }
        assert_eq!((p.status_read)("tasks/abc", "").as_deref(), Some("abc"));
        assert!((p.status_read)("tasks", "").is_none());
    }
}
