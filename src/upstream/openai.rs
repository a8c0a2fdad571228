//! OpenAI: Batch API jobs and background responses.

use serde_json::{Value, json};

use super::{
    Observation, ObservedState, count, ended, fraction, non_null, status_text, unix_seconds, with,
};

use super::presets::{CreateRule, PresetSpec, ProxyPatterns, WebhookDefaults};
use crate::schedule::config::PollConfig;

const OPENAI: &str = "https://api.openai.com/v1/";
const OPENAI_KEY: &[(&str, &str)] = &[("Authorization", "Bearer ${OPENAI_API_KEY}")];

/// `openai-batch`: an OpenAI Batch API job.
pub static BATCH: PresetSpec = PresetSpec {
    name: "openai-batch",
    base_url: Some(OPENAI),
    status_path: Some("batches/{operation}"),
    headers: OPENAI_KEY,
    poll: PollConfig::batch(),
    webhook: WebhookDefaults::thin(
        &["batch."],
        &[
            "batch.completed",
            "batch.failed",
            "batch.expired",
            "batch.cancelled",
        ],
        &[],
    ),
    reads: "status, request_counts, output_file_id / error_file_id, errors, expires_at",
    read: Some(read_batch),
    proxy: Some(ProxyPatterns {
        create: |method, path| {
            (method == "POST" && path == "batches").then(|| CreateRule::field("/id"))
        },
        status_read: |path, _| one_below("batches/", path),
        auth_headers: &["authorization"],
    }),
    ..PresetSpec::BASE
};

/// `openai-response`: an OpenAI background response (`background: true`).
pub static RESPONSE: PresetSpec = PresetSpec {
    name: "openai-response",
    base_url: Some(OPENAI),
    status_path: Some("responses/{operation}"),
    headers: OPENAI_KEY,
    poll: PollConfig::media(),
    webhook: WebhookDefaults::thin(
        &["response."],
        &[
            "response.completed",
            "response.failed",
            "response.cancelled",
            "response.incomplete",
        ],
        &[],
    ),
    reads: "status, output, error, incomplete_details",
    read: Some(read_response),
    proxy: Some(ProxyPatterns {
        create: |method, path| {
            (method == "POST" && path == "responses").then(|| CreateRule::background("/id"))
        },
        status_read: |path, _| one_below("responses/", path),
        auth_headers: &["authorization"],
    }),
    ..PresetSpec::BASE
};

/// The id in `{collection}{id}` when it is one segment (`batches/b1`, not `batches/b1/cancel`).
pub(super) fn one_below(collection: &str, path: &str) -> Option<String> {
    path.strip_prefix(collection)
        .filter(|id| !id.is_empty() && !id.contains('/'))
        .map(str::to_string)
}

/// An OpenAI batch (`GET /v1/batches/{id}`). `result` names the output and error files (an
/// expired or cancelled batch keeps the results of the requests it finished); `error` carries
/// the batch's `errors` list when it failed.
pub fn read_batch(body: &Value) -> Result<Observation, String> {
    let raw = status_text(body, "/status")?;
    let state = match raw {
        "validating" => ObservedState::Pending,
        "completed" => ObservedState::Succeeded,
        "failed" => ObservedState::Failed,
        "expired" => ObservedState::Expired,
        "cancelled" => ObservedState::Cancelled,
        // in_progress, finalizing, cancelling and statuses added later.
        _ => ObservedState::Running,
    };
    let mut obs = Observation::new(state, Value::from(raw));
    let counts = body.get("request_counts");
    let n = |k: &str| count(counts.and_then(|c| c.get(k)));
    obs.progress = fraction(
        n("completed").unwrap_or(0.0) + n("failed").unwrap_or(0.0),
        n("total"),
    );
    obs.expires_at = unix_seconds(body.get("expires_at"));
    if !state.is_terminal() {
        return Ok(obs);
    }
    let output = non_null(body, "/output_file_id");
    let error_file = non_null(body, "/error_file_id");
    if output.is_some() || error_file.is_some() || state == ObservedState::Succeeded {
        obs.result = Some(json!({
            "output_file_id": output,
            "error_file_id": error_file,
            "request_counts": counts,
        }));
    }
    let (code, message) = match state {
        ObservedState::Failed => ("failed", "the batch failed"),
        ObservedState::Expired => (
            "expired",
            "the batch did not finish within its completion window",
        ),
        ObservedState::Cancelled => ("cancelled", "the batch was cancelled"),
        _ => return Ok(obs),
    };
    let errors = non_null(body, "/errors/data").or_else(|| non_null(body, "/errors"));
    let first = errors
        .as_ref()
        .and_then(|e| e.get(0))
        .and_then(|e| e.get("message"))
        .and_then(Value::as_str)
        .map(str::to_string);
    let error = ended(code, first.unwrap_or_else(|| message.to_string()));
    obs.error = Some(with(
        with(error, "errors", errors),
        "error_file_id",
        error_file,
    ));
    Ok(obs)
}

/// A background response (`GET /v1/responses/{id}`): `incomplete` (cut short, e.g. by the
/// output token limit) is a failure that keeps the partial `output` in `result`.
pub fn read_response(body: &Value) -> Result<Observation, String> {
    let raw = status_text(body, "/status")?;
    let state = match raw {
        "queued" => ObservedState::Pending,
        "completed" => ObservedState::Succeeded,
        "failed" | "incomplete" => ObservedState::Failed,
        "cancelled" => ObservedState::Cancelled,
        // in_progress and statuses added later.
        _ => ObservedState::Running,
    };
    let mut obs = Observation::new(state, Value::from(raw));
    if !state.is_terminal() {
        return Ok(obs);
    }
    obs.result = non_null(body, "/output");
    obs.error = match raw {
        "failed" => {
            Some(non_null(body, "/error").unwrap_or_else(|| ended("failed", "the response failed")))
        }
        "incomplete" => {
            let details = non_null(body, "/incomplete_details");
            let reason = details
                .as_ref()
                .and_then(|d| d.get("reason"))
                .and_then(Value::as_str)
                .unwrap_or("unknown");
            Some(with(
                ended(
                    "incomplete",
                    format!("the response is incomplete (reason: {reason})"),
                ),
                "incomplete_details",
                details,
            ))
        }
        "cancelled" => Some(ended("cancelled", "the response was cancelled")),
        _ => None,
    };
    if state == ObservedState::Succeeded {
        obs.progress = Some(1.0);
    }
    Ok(obs)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::Timestamp;

    fn batch(status: &str) -> Value {
        json!({"id": "batch_1", "object": "batch", "status": status,
               "request_counts": {"total": 10, "completed": 6, "failed": 1},
               "expires_at": 1_800_000_000, "output_file_id": null, "error_file_id": null,
               "errors": null})
    }

    #[test]
    fn batch_statuses_map_and_counts_give_progress() {
        for (s, want) in [
            ("validating", ObservedState::Pending),
            ("in_progress", ObservedState::Running),
            ("finalizing", ObservedState::Running),
            ("cancelling", ObservedState::Running),
            ("completed", ObservedState::Succeeded),
            ("failed", ObservedState::Failed),
            ("expired", ObservedState::Expired),
            ("cancelled", ObservedState::Cancelled),
        ] {
            let o = read_batch(&batch(s)).unwrap();
            assert_eq!(o.state, want, "{s}");
            assert_eq!(o.progress, Some(0.7));
            assert_eq!(o.expires_at, Some(Timestamp(1_800_000_000_000)));
        }
    }

    #[test]
    fn batch_result_names_the_files_and_error_carries_errors() {
        let mut b = batch("completed");
        b["output_file_id"] = json!("file-out");
        b["error_file_id"] = json!("file-err");
        let o = read_batch(&b).unwrap();
        let r = o.result.unwrap();
        assert_eq!(r["output_file_id"], "file-out");
        assert_eq!(r["error_file_id"], "file-err");
        assert_eq!(r["request_counts"]["total"], 10);
        assert_eq!(o.error, None);

        let mut f = batch("failed");
        f["errors"] = json!({"object": "list", "data": [
            {"code": "invalid_json_line", "message": "line 3 is not JSON", "line": 3}]});
        let o = read_batch(&f).unwrap();
        let e = o.error.unwrap();
        assert_eq!(e["code"], "failed");
        assert_eq!(e["message"], "line 3 is not JSON");
        assert_eq!(e["errors"][0]["line"], 3);
        assert_eq!(o.result, None);

        let mut x = batch("expired");
        x["output_file_id"] = json!("file-partial");
        let o = read_batch(&x).unwrap();
        assert_eq!(o.error.unwrap()["code"], "expired");
        assert_eq!(o.result.unwrap()["output_file_id"], "file-partial");
    }

    #[test]
    fn response_statuses() {
        let read = |s: &str| {
            read_response(&json!({"id": "resp_1", "status": s,
                "output": [{"type": "message", "content": [{"type": "output_text", "text": "hi"}]}],
                "incomplete_details": if s == "incomplete" { json!({"reason": "max_output_tokens"}) } else { Value::Null },
                "error": null}))
            .unwrap()
        };
        assert_eq!(read("queued").state, ObservedState::Pending);
        assert_eq!(read("in_progress").state, ObservedState::Running);
        assert_eq!(read("in_progress").result, None);
        let ok = read("completed");
        assert_eq!(ok.state, ObservedState::Succeeded);
        assert_eq!(ok.result.unwrap()[0]["content"][0]["text"], "hi");
        let inc = read("incomplete");
        assert_eq!(inc.state, ObservedState::Failed);
        let e = inc.error.unwrap();
        assert_eq!(e["code"], "incomplete");
        assert_eq!(e["incomplete_details"]["reason"], "max_output_tokens");
        assert!(inc.result.is_some());
        assert_eq!(read("cancelled").state, ObservedState::Cancelled);
        let failed = read_response(&json!({"status": "failed",
            "error": {"code": "server_error", "message": "boom"}}))
        .unwrap();
        assert_eq!(failed.error.unwrap()["code"], "server_error");
        assert!(read_response(&json!({"id": "resp_1"})).is_err());
    }
}
