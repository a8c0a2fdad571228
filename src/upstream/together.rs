//! Together AI batch jobs (`GET /v1/batches/{id}`).
//!
//! Checked against togethercomputer/together-py (the Stainless SDK)
//! `src/together/types/batch_retrieve_response.py` (`status`: `VALIDATING`, `IN_PROGRESS`,
//! `COMPLETED`, `FAILED`, `EXPIRED`, `CANCELLED`; `progress` "Completion progress (0.0 to
//! 100)"; `job_deadline`, `output_file_id`, `error_file_id`, `error` a string) and
//! `batch_create_response.py` (the create answer wraps the job: `{"job": {...}, "warning"}`),
//! and togethercomputer/together-python `src/together/types/batch.py` (the older SDK, whose
//! `BatchJobStatus` also has `CANCELING`) and `resources/batch.py` (`GET batches/{id}`,
//! `POST batches` answering `job`).

use serde_json::{Value, json};

use super::openai::one_below;
use super::presets::{CreateId, CreateRule, PresetSpec, ProxyPatterns};
use super::{Observation, ObservedState, count, ended, non_null, rfc3339, status_text};
use crate::schedule::config::PollConfig;

/// `together-batch`: a Together AI batch job. Together sends no webhooks for it.
pub static BATCH: PresetSpec = PresetSpec {
    name: "together-batch",
    base_url: Some("https://api.together.xyz/v1/"),
    status_path: Some("batches/{operation}"),
    headers: &[("Authorization", "Bearer ${TOGETHER_API_KEY}")],
    poll: PollConfig::batch(),
    reads: "status (VALIDATING … COMPLETED / FAILED / EXPIRED / CANCELLED), progress (percent), output_file_id / error_file_id, error, job_deadline",
    read: Some(read_batch),
    proxy: Some(ProxyPatterns {
        // The answer is `{"job": {...}, "warning": ...}`, not the job itself.
        create: |method, path| {
            (method == "POST" && path == "batches").then_some(CreateRule {
                needs_background: false,
                id: CreateId::Field("/job/id"),
                returns_job: false,
            })
        },
        status_read: |path, _| one_below("batches/", path),
        auth_headers: &["authorization"],
    }),
    ..PresetSpec::BASE
};

/// A batch job. `VALIDATING` is pending, `IN_PROGRESS` and `CANCELING` run; `progress` is always
/// a percentage (1 means 1 %); `job_deadline` is when Together expires the job. `result`, at
/// every end, names the output and error files (an expired or cancelled job keeps what it
/// finished); `error` is the job's `error` string as `{"code": <status lowercased>, "message"}`.
pub fn read_batch(body: &Value) -> Result<Observation, String> {
    let raw = status_text(body, "/status")?;
    let state = match raw {
        "VALIDATING" => ObservedState::Pending,
        "COMPLETED" => ObservedState::Succeeded,
        "FAILED" => ObservedState::Failed,
        "EXPIRED" => ObservedState::Expired,
        "CANCELLED" => ObservedState::Cancelled,
        // IN_PROGRESS, CANCELING and statuses added later.
        _ => ObservedState::Running,
    };
    let mut obs = Observation::new(state, Value::from(raw));
    obs.progress = count(body.get("progress")).map(|p| (p / 100.0).min(1.0));
    obs.expires_at = rfc3339(body.get("job_deadline"));
    if !state.is_terminal() {
        return Ok(obs);
    }
    if state == ObservedState::Succeeded {
        obs.progress = Some(1.0);
    }
    obs.result = Some(json!({
        "output_file_id": non_null(body, "/output_file_id"),
        "error_file_id": non_null(body, "/error_file_id"),
    }));
    if state == ObservedState::Succeeded {
        return Ok(obs);
    }
    let code = raw.to_ascii_lowercase();
    obs.error = Some(match non_null(body, "/error") {
        Some(Value::String(message)) if !message.is_empty() => ended(&code, message),
        Some(other @ Value::Object(_)) => other,
        _ => ended(
            &code,
            match state {
                ObservedState::Expired => "the batch did not finish before its job_deadline",
                ObservedState::Cancelled => "the batch was cancelled",
                _ => "the batch failed",
            },
        ),
    });
    Ok(obs)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(status: &str, progress: f64) -> Value {
        json!({"id": "01234567-8901-2345-6789-012345678901", "user_id": "user_789xyz012",
               "input_file_id": "file-input123", "file_size_bytes": 1048576,
               "status": status, "job_deadline": "2026-11-29T15:30:00Z",
               "created_at": "2026-11-28T15:30:00Z", "endpoint": "/v1/chat/completions",
               "progress": progress, "model_id": "meta-llama/Meta-Llama-3.1-8B-Instruct-Turbo",
               "output_file_id": null, "error_file_id": null, "error": null,
               "completed_at": null})
    }

    #[test]
    fn every_status() {
        let read = |s: &str| read_batch(&job(s, 0.0)).unwrap().state;
        assert_eq!(read("VALIDATING"), ObservedState::Pending);
        assert_eq!(read("IN_PROGRESS"), ObservedState::Running);
        assert_eq!(read("CANCELING"), ObservedState::Running);
        assert_eq!(read("SOMETHING_NEW"), ObservedState::Running);
        assert_eq!(read("COMPLETED"), ObservedState::Succeeded);
        assert_eq!(read("FAILED"), ObservedState::Failed);
        assert_eq!(read("EXPIRED"), ObservedState::Expired);
        assert_eq!(read("CANCELLED"), ObservedState::Cancelled);
        assert!(read_batch(&json!({"progress": 3})).is_err());
    }

    #[test]
    fn progress_is_a_percentage_and_the_deadline_is_the_expiry() {
        let o = read_batch(&job("IN_PROGRESS", 75.0)).unwrap();
        assert_eq!(o.progress, Some(0.75));
        assert_eq!((o.result, o.error), (None, None));
        assert_eq!(
            o.expires_at.map(|t| t.rfc3339()),
            Some("2026-11-29T15:30:00.000Z".to_string())
        );
        let o = read_batch(&job("IN_PROGRESS", 1.0)).unwrap();
        assert_eq!(o.progress, Some(0.01), "1 is 1 %, not done");
    }

    #[test]
    fn result_and_error_at_each_end() {
        let mut b = job("COMPLETED", 100.0);
        b["output_file_id"] = json!("file-output789");
        b["error_file_id"] = json!("file-errors456");
        let o = read_batch(&b).unwrap();
        assert_eq!(o.progress, Some(1.0));
        assert_eq!(
            o.result,
            Some(json!({"output_file_id": "file-output789", "error_file_id": "file-errors456"}))
        );
        assert_eq!(o.error, None);
        let mut b = job("FAILED", 0.0);
        b["error"] = json!("input file is not valid JSONL");
        let o = read_batch(&b).unwrap();
        assert_eq!(
            o.error,
            Some(json!({"code": "failed", "message": "input file is not valid JSONL"}))
        );
        let mut b = job("EXPIRED", 60.0);
        b["output_file_id"] = json!("file-partial");
        let o = read_batch(&b).unwrap();
        assert_eq!(o.error.unwrap()["code"], "expired");
        assert_eq!(o.result.unwrap()["output_file_id"], "file-partial");
        let o = read_batch(&job("CANCELLED", 10.0)).unwrap();
        assert_eq!(o.error.unwrap()["code"], "cancelled");
    }
}
