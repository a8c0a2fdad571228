//! Mistral batch jobs (`GET /v1/batch/jobs/{id}`).
//!
//! Checked against mistralai/client-python (2.5.0): `src/mistralai/client/models/batchjob.py`
//! (`BatchJob`: `status`, `total_requests`, `completed_requests`, `succeeded_requests`,
//! `failed_requests`, `errors: List[BatchError]` with `message` and `count`, `output_file`,
//! `error_file`, `outputs` for inline batches), `batchjobstatus.py` (`QUEUED`, `RUNNING`,
//! `SUCCESS`, `FAILED`, `TIMEOUT_EXCEEDED`, `CANCELLATION_REQUESTED`, `CANCELLED`) and
//! `batch_jobs.py` (`GET /v1/batch/jobs/{job_id}`, `POST /v1/batch/jobs` answering a `BatchJob`).

use serde_json::{Value, json};

use super::openai::one_below;
use super::presets::{CreateRule, PresetSpec, ProxyPatterns};
use super::{Observation, ObservedState, count, ended, fraction, non_null, status_text, with};
use crate::schedule::config::PollConfig;

/// `mistral-batch`: a Mistral batch inference job. Mistral sends no webhooks for it.
pub static BATCH: PresetSpec = PresetSpec {
    name: "mistral-batch",
    base_url: Some("https://api.mistral.ai/v1/"),
    status_path: Some("batch/jobs/{operation}"),
    headers: &[("Authorization", "Bearer ${MISTRAL_API_KEY}")],
    poll: PollConfig::batch(),
    reads: "status (QUEUED … SUCCESS / FAILED / TIMEOUT_EXCEEDED / CANCELLED), completed_requests / total_requests, output_file / error_file / outputs, errors",
    read: Some(read_batch),
    proxy: Some(ProxyPatterns {
        create: |method, path| {
            (method == "POST" && path == "batch/jobs").then(|| CreateRule::field("/id"))
        },
        status_read: |path, _| one_below("batch/jobs/", path),
        auth_headers: &["authorization"],
    }),
    ..PresetSpec::BASE
};

/// A batch job. `SUCCESS` is succeeded even when some requests failed (their errors are in
/// `error_file`, the counts in `result`); `TIMEOUT_EXCEEDED` (the job ran past its
/// `timeout_hours`) is expired; `CANCELLATION_REQUESTED` runs until `CANCELLED`. `result`, at
/// every end, names the files, the inline `outputs` and the counts (an expired or cancelled job
/// keeps what it finished); `error` carries the job's `errors` list.
pub fn read_batch(body: &Value) -> Result<Observation, String> {
    let raw = status_text(body, "/status")?;
    let state = match raw {
        "QUEUED" => ObservedState::Pending,
        "SUCCESS" => ObservedState::Succeeded,
        "FAILED" => ObservedState::Failed,
        "TIMEOUT_EXCEEDED" => ObservedState::Expired,
        "CANCELLED" => ObservedState::Cancelled,
        // RUNNING, CANCELLATION_REQUESTED and statuses added later.
        _ => ObservedState::Running,
    };
    let mut obs = Observation::new(state, Value::from(raw));
    let n = |k: &str| count(body.get(k));
    let done = n("completed_requests")
        .or_else(|| Some(n("succeeded_requests")? + n("failed_requests").unwrap_or(0.0)));
    obs.progress = done.and_then(|d| fraction(d, n("total_requests")));
    if !state.is_terminal() {
        return Ok(obs);
    }
    if state == ObservedState::Succeeded {
        obs.progress = Some(1.0);
    }
    obs.result = Some(json!({
        "output_file": non_null(body, "/output_file"),
        "error_file": non_null(body, "/error_file"),
        "outputs": non_null(body, "/outputs"),
        "total_requests": non_null(body, "/total_requests"),
        "succeeded_requests": non_null(body, "/succeeded_requests"),
        "failed_requests": non_null(body, "/failed_requests"),
    }));
    let (code, message) = match state {
        ObservedState::Failed => ("failed", "the batch job failed"),
        ObservedState::Expired => (
            "timeout_exceeded",
            "the batch job did not finish within its timeout_hours",
        ),
        ObservedState::Cancelled => ("cancelled", "the batch job was cancelled"),
        _ => return Ok(obs),
    };
    let errors = non_null(body, "/errors").filter(|e| e.as_array().is_some_and(|a| !a.is_empty()));
    let first = errors
        .as_ref()
        .and_then(|e| e.get(0))
        .and_then(|e| e.get("message"))
        .and_then(Value::as_str)
        .filter(|_| state == ObservedState::Failed)
        .map(str::to_string);
    let error = ended(code, first.unwrap_or_else(|| message.to_string()));
    obs.error = Some(with(error, "errors", errors));
    Ok(obs)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(status: &str, counts: [u32; 4]) -> Value {
        let [total, completed, succeeded, failed] = counts;
        json!({"id": "b6e5b3a2-1c7d-4a2e-9f64-5c1a2b3c4d5e", "object": "batch",
               "input_files": ["f1"], "endpoint": "/v1/chat/completions",
               "model": "mistral-small-latest", "errors": [], "status": status,
               "created_at": 1764500000, "total_requests": total,
               "completed_requests": completed, "succeeded_requests": succeeded,
               "failed_requests": failed, "output_file": null, "error_file": null})
    }

    #[test]
    fn every_status() {
        let read = |s: &str| read_batch(&job(s, [10, 4, 3, 1])).unwrap();
        assert_eq!(read("QUEUED").state, ObservedState::Pending);
        for s in ["RUNNING", "CANCELLATION_REQUESTED", "SOMETHING_NEW"] {
            let o = read(s);
            assert_eq!(o.state, ObservedState::Running, "{s}");
            assert_eq!(o.progress, Some(0.4));
            assert_eq!((o.result, o.error), (None, None));
        }
        assert_eq!(read("SUCCESS").state, ObservedState::Succeeded);
        assert_eq!(read("FAILED").state, ObservedState::Failed);
        assert_eq!(read("TIMEOUT_EXCEEDED").state, ObservedState::Expired);
        assert_eq!(read("CANCELLED").state, ObservedState::Cancelled);
        assert!(read_batch(&json!({"id": "b1"})).is_err());
    }

    #[test]
    fn progress_from_the_counts() {
        let o = read_batch(&job("RUNNING", [0, 0, 0, 0])).unwrap();
        assert_eq!(o.progress, None, "no total yet");
        let mut b = job("RUNNING", [8, 0, 3, 3]);
        b.as_object_mut().unwrap().remove("completed_requests");
        assert_eq!(read_batch(&b).unwrap().progress, Some(0.75));
    }

    #[test]
    fn result_and_error_at_each_end() {
        let mut b = job("SUCCESS", [10, 10, 9, 1]);
        b["output_file"] = json!("file-out");
        b["error_file"] = json!("file-err");
        let o = read_batch(&b).unwrap();
        assert_eq!(o.progress, Some(1.0));
        let r = o.result.unwrap();
        assert_eq!(r["output_file"], "file-out");
        assert_eq!(r["error_file"], "file-err");
        assert_eq!(r["failed_requests"], 1);
        assert_eq!(o.error, None);

        let mut b = job("FAILED", [10, 0, 0, 0]);
        b["errors"] = json!([{"message": "Invalid input file format", "count": 1}]);
        let o = read_batch(&b).unwrap();
        let e = o.error.unwrap();
        assert_eq!(e["code"], "failed");
        assert_eq!(e["message"], "Invalid input file format");
        assert_eq!(e["errors"][0]["count"], 1);

        let o = read_batch(&job("TIMEOUT_EXCEEDED", [10, 6, 6, 0])).unwrap();
        assert_eq!(o.error.unwrap()["code"], "timeout_exceeded");
        assert_eq!(o.result.unwrap()["succeeded_requests"], 6);
        let mut b = job("CANCELLED", [10, 2, 2, 0]);
        b["outputs"] = json!([{"custom_id": "0", "response": {}}]);
        let o = read_batch(&b).unwrap();
        let e = o.error.unwrap();
        assert_eq!(e["code"], "cancelled");
        assert!(
            e.get("errors").is_none(),
            "an empty errors list is left out"
        );
        assert_eq!(o.result.unwrap()["outputs"][0]["custom_id"], "0");
    }
}
