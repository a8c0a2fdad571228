//! Fireworks batch inference jobs
//! (`GET /v1/accounts/{account_id}/batchInferenceJobs/{batch_inference_job_id}`).
//!
//! Checked against fw-ai-external/python-sdk (the Stainless `fireworks` SDK)
//! `src/fireworks/types/batch_inference_job.py` (`name`, `state` as the `JOB_STATE_*` literals,
//! `status: Status` with `code` and `message`, `jobProgress` with `percent` "within the range
//! from 0 to 100", `outputDatasetId`), `types/shared/status.py`, and
//! `resources/batch_inference_jobs.py` (`POST /v1/accounts/{account_id}/batchInferenceJobs`
//! answering the job, `GET …/batchInferenceJobs/{batch_inference_job_id}`).

use serde_json::{Value, json};

use super::presets::{CreateRule, PresetSpec, ProxyPatterns, segments};
use super::{Observation, ObservedState, count, ended, non_null, status_text, with};
use crate::schedule::config::PollConfig;

/// `fireworks-batch`: a Fireworks batch inference job. The registered operation is the job's
/// resource `name`, `accounts/{account}/batchInferenceJobs/{id}`, which is also its path.
/// Fireworks sends no webhooks for it.
pub static BATCH: PresetSpec = PresetSpec {
    name: "fireworks-batch",
    base_url: Some("https://api.fireworks.ai/v1/"),
    headers: &[("Authorization", "Bearer ${FIREWORKS_API_KEY}")],
    poll: PollConfig::batch(),
    reads: "state (JOB_STATE_*), jobProgress.percent, outputDatasetId, status.code / status.message",
    read: Some(read_job),
    status_path_for: Some(job_path),
    proxy: Some(ProxyPatterns {
        create: |method, path| {
            let ok = matches!(segments(path).as_slice(),
                ["accounts", a, "batchInferenceJobs"] if !a.is_empty());
            (method == "POST" && ok).then(|| CreateRule::field("/name"))
        },
        status_read: |path, _| job_path(path).ok(),
        auth_headers: &["authorization"],
    }),
    ..PresetSpec::BASE
};

/// The status path of a job is its name, which must be `accounts/{account}/batchInferenceJobs/{id}`.
pub fn job_path(operation: &str) -> Result<String, String> {
    match segments(operation).as_slice() {
        ["accounts", a, "batchInferenceJobs", id]
            if !a.is_empty() && !id.is_empty() && !id.contains(':') =>
        {
            Ok(operation.to_string())
        }
        _ => Err(
            "`operation` must be the job's name, accounts/{account}/batchInferenceJobs/{id}".into(),
        ),
    }
}

/// A batch inference job's `state`:
/// - pending: `CREATING`, `VALIDATING`, `PENDING`, `CREATING_INPUT_DATASET`, `IDLE`;
/// - succeeded: `COMPLETED`;
/// - failed: `FAILED`, and `EARLY_STOPPED` (stopped before every row was processed; the
///   output dataset keeps what was done);
/// - cancelled: `CANCELLED`, and `DELETING` / `DELETING_CLEANING_UP` (the job is going away and
///   will not finish);
/// - expired: `EXPIRED` (the 24-hour limit; finished rows are in the output dataset);
/// - running: `RUNNING`, `WRITING_RESULTS`, `RE_QUEUEING`, `CANCELLING`, `PAUSED`,
///   `UNSPECIFIED` and states added later.
///
/// `jobProgress.percent` is always a percentage. `result`, at every end, is
/// `{"outputDatasetId", "jobProgress"}`; `error` is the job's `status` (`code`, `message`).
pub fn read_job(body: &Value) -> Result<Observation, String> {
    let raw = status_text(body, "/state")?;
    let short = raw.strip_prefix("JOB_STATE_").unwrap_or(raw);
    let state = match short {
        "CREATING" | "VALIDATING" | "PENDING" | "CREATING_INPUT_DATASET" | "IDLE" => {
            ObservedState::Pending
        }
        "COMPLETED" => ObservedState::Succeeded,
        "FAILED" | "EARLY_STOPPED" => ObservedState::Failed,
        "CANCELLED" | "DELETING" | "DELETING_CLEANING_UP" => ObservedState::Cancelled,
        "EXPIRED" => ObservedState::Expired,
        _ => ObservedState::Running,
    };
    let mut obs = Observation::new(state, Value::from(raw));
    obs.progress = count(body.pointer("/jobProgress/percent")).map(|p| (p / 100.0).min(1.0));
    if !state.is_terminal() {
        return Ok(obs);
    }
    obs.result = Some(json!({
        "outputDatasetId": non_null(body, "/outputDatasetId"),
        "jobProgress": non_null(body, "/jobProgress"),
    }));
    if state == ObservedState::Succeeded {
        obs.progress = Some(1.0);
        return Ok(obs);
    }
    let code = short.to_ascii_lowercase();
    let message = body
        .pointer("/status/message")
        .and_then(Value::as_str)
        .filter(|m| !m.is_empty())
        .map(str::to_string)
        .unwrap_or_else(|| {
            match short {
                "EXPIRED" => "the job did not finish within its time limit",
                "EARLY_STOPPED" => "the job stopped before every request was processed",
                "CANCELLED" => "the job was cancelled",
                "FAILED" => "the job failed",
                _ => "the job is being deleted",
            }
            .to_string()
        });
    let status_code = body
        .pointer("/status/code")
        .filter(|c| c.as_str() != Some("OK"))
        .cloned();
    obs.error = Some(with(ended(&code, message), "status_code", status_code));
    Ok(obs)
}

#[cfg(test)]
mod tests {
    use super::*;

    const NAME: &str = "accounts/my-account/batchInferenceJobs/bij-1";

    fn job(state: &str, percent: u32) -> Value {
        json!({"name": NAME, "displayName": "nightly", "state": state,
               "model": "accounts/fireworks/models/llama-v3p1-8b-instruct",
               "inputDatasetId": "accounts/my-account/datasets/in",
               "outputDatasetId": "accounts/my-account/datasets/out",
               "createTime": "2026-11-28T10:00:00Z",
               "jobProgress": {"percent": percent, "totalInputRequests": 200,
                               "successfullyProcessedRequests": percent * 2,
                               "failedRequests": 0}})
    }

    #[test]
    fn every_state() {
        let read = |s: &str| read_job(&job(s, 0)).unwrap().state;
        for s in [
            "JOB_STATE_CREATING",
            "JOB_STATE_VALIDATING",
            "JOB_STATE_PENDING",
            "JOB_STATE_CREATING_INPUT_DATASET",
            "JOB_STATE_IDLE",
        ] {
            assert_eq!(read(s), ObservedState::Pending, "{s}");
        }
        for s in [
            "JOB_STATE_UNSPECIFIED",
            "JOB_STATE_RUNNING",
            "JOB_STATE_WRITING_RESULTS",
            "JOB_STATE_RE_QUEUEING",
            "JOB_STATE_CANCELLING",
            "JOB_STATE_PAUSED",
            "JOB_STATE_SOMETHING_NEW",
        ] {
            assert_eq!(read(s), ObservedState::Running, "{s}");
        }
        assert_eq!(read("JOB_STATE_COMPLETED"), ObservedState::Succeeded);
        assert_eq!(read("JOB_STATE_FAILED"), ObservedState::Failed);
        assert_eq!(read("JOB_STATE_EARLY_STOPPED"), ObservedState::Failed);
        assert_eq!(read("JOB_STATE_CANCELLED"), ObservedState::Cancelled);
        assert_eq!(read("JOB_STATE_DELETING"), ObservedState::Cancelled);
        assert_eq!(
            read("JOB_STATE_DELETING_CLEANING_UP"),
            ObservedState::Cancelled
        );
        assert_eq!(read("JOB_STATE_EXPIRED"), ObservedState::Expired);
        assert!(read_job(&json!({"name": NAME})).is_err());
    }

    #[test]
    fn progress_is_job_progress_percent() {
        let o = read_job(&job("JOB_STATE_RUNNING", 40)).unwrap();
        assert_eq!(o.progress, Some(0.4));
        assert_eq!((o.result, o.error), (None, None));
        let o = read_job(&job("JOB_STATE_RUNNING", 1)).unwrap();
        assert_eq!(o.progress, Some(0.01), "1 is 1 %, not done");
        let mut b = job("JOB_STATE_PENDING", 0);
        b.as_object_mut().unwrap().remove("jobProgress");
        assert_eq!(read_job(&b).unwrap().progress, None);
    }

    #[test]
    fn result_and_error_at_each_end() {
        let o = read_job(&job("JOB_STATE_COMPLETED", 100)).unwrap();
        assert_eq!(o.progress, Some(1.0));
        let r = o.result.unwrap();
        assert_eq!(r["outputDatasetId"], "accounts/my-account/datasets/out");
        assert_eq!(r["jobProgress"]["successfullyProcessedRequests"], 200);
        assert_eq!(o.error, None);
        let mut b = job("JOB_STATE_FAILED", 10);
        b["status"] =
            json!({"code": "INVALID_ARGUMENT", "message": "dataset row 3 is not valid JSON"});
        let o = read_job(&b).unwrap();
        assert_eq!(
            o.error,
            Some(
                json!({"code": "failed", "message": "dataset row 3 is not valid JSON",
                        "status_code": "INVALID_ARGUMENT"})
            )
        );
        let o = read_job(&job("JOB_STATE_EXPIRED", 70)).unwrap();
        assert_eq!(o.error.unwrap()["code"], "expired");
        assert_eq!(o.result.unwrap()["jobProgress"]["percent"], 70);
        let mut b = job("JOB_STATE_CANCELLED", 5);
        b["status"] = json!({"code": "OK", "message": ""});
        let e = read_job(&b).unwrap().error.unwrap();
        assert_eq!(
            e,
            json!({"code": "cancelled", "message": "the job was cancelled"})
        );
    }

    #[test]
    fn the_operation_is_the_job_name() {
        assert_eq!(job_path(NAME).unwrap(), NAME);
        for bad in [
            "bij-1",
            "accounts/my-account/batchInferenceJobs",
            "accounts//batchInferenceJobs/x",
            "accounts/a/datasets/x",
            "accounts/a/batchInferenceJobs/x/extra",
            "accounts/a/batchInferenceJobs/x:cancel",
        ] {
            assert!(job_path(bad).is_err(), "{bad}");
        }
        let p = BATCH.proxy.unwrap();
        assert!((p.create)("POST", "accounts/a/batchInferenceJobs").is_some());
        assert!((p.create)("GET", "accounts/a/batchInferenceJobs").is_none());
        assert_eq!((p.status_read)(NAME, "").as_deref(), Some(NAME));
        assert_eq!((p.status_read)("accounts/a/batchInferenceJobs", ""), None);
    }
}
