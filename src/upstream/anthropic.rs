//! Anthropic Message Batches.
//!
//! `processing_status: ended` is the only end, and it says nothing about success: the outcome
//! comes from `request_counts`. One succeeded request makes the batch `succeeded` (the counts in
//! `result` show what else happened); with none, the batch is `failed` if any request errored,
//! else `cancelled` if any was canceled, else `expired`.

use serde_json::{Value, json};

use super::{Observation, ObservedState, count, ended, fraction, non_null, rfc3339, status_text};

use super::openai::one_below;
use super::presets::{CreateRule, PresetSpec, ProxyPatterns};
use crate::schedule::config::PollConfig;

/// `anthropic-batch`: an Anthropic Message Batch. Anthropic sends no webhooks for it.
pub static BATCH: PresetSpec = PresetSpec {
    name: "anthropic-batch",
    base_url: Some("https://api.anthropic.com/v1/"),
    status_path: Some("messages/batches/{operation}"),
    headers: &[
        ("x-api-key", "${ANTHROPIC_API_KEY}"),
        ("anthropic-version", "2023-06-01"),
    ],
    poll: PollConfig::batch(),
    reads: "processing_status; the outcome of an ended batch from request_counts; results_url, expires_at",
    read: Some(read_batch),
    proxy: Some(ProxyPatterns {
        create: |method, path| {
            (method == "POST" && path == "messages/batches").then(|| CreateRule::field("/id"))
        },
        status_read: |path, _| one_below("messages/batches/", path),
        auth_headers: &["x-api-key", "authorization"],
    }),
    ..PresetSpec::BASE
};

pub fn read_batch(body: &Value) -> Result<Observation, String> {
    let raw = status_text(body, "/processing_status")?;
    let counts = body.get("request_counts");
    let n = |k: &str| count(counts.and_then(|c| c.get(k))).unwrap_or(0.0);
    let (succeeded, errored, canceled, expired) =
        (n("succeeded"), n("errored"), n("canceled"), n("expired"));
    let finished = succeeded + errored + canceled + expired;
    let state = match raw {
        "ended" if succeeded > 0.0 || finished == 0.0 => ObservedState::Succeeded,
        "ended" if errored > 0.0 => ObservedState::Failed,
        "ended" if canceled > 0.0 => ObservedState::Cancelled,
        "ended" => ObservedState::Expired,
        // in_progress, canceling and statuses added later.
        _ => ObservedState::Running,
    };
    let mut obs = Observation::new(state, Value::from(raw));
    // No count-based progress while the batch runs: "Requests start as `processing` and move
    // to one of the other statuses only once processing of the entire batch ends"
    // (anthropic-sdk-python `types/messages/message_batch_request_counts.py`), so the counts
    // would read 0 until the end and the progress-based schedule would never engage; the
    // batch is polled on the blind schedule instead. At the end the counts are final.
    obs.progress = state
        .is_terminal()
        .then(|| fraction(finished, Some(finished + n("processing"))))
        .flatten();
    obs.expires_at = rfc3339(body.get("expires_at"));
    if !state.is_terminal() {
        return Ok(obs);
    }
    obs.result = Some(json!({
        "results_url": non_null(body, "/results_url"),
        "request_counts": counts,
    }));
    let (code, message) = match state {
        ObservedState::Failed => ("errored", "no request in the batch succeeded; some errored"),
        ObservedState::Cancelled => (
            "canceled",
            "the batch was canceled before any request succeeded",
        ),
        ObservedState::Expired => ("expired", "every request in the batch expired"),
        _ => return Ok(obs),
    };
    obs.error = Some(ended(code, message));
    Ok(obs)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(status: &str, counts: [u32; 5]) -> Value {
        let [processing, succeeded, errored, canceled, expired] = counts;
        json!({"id": "msgbatch_1", "type": "message_batch", "processing_status": status,
               "request_counts": {"processing": processing, "succeeded": succeeded,
                   "errored": errored, "canceled": canceled, "expired": expired},
               "expires_at": "2026-11-28T10:00:00Z",
               "results_url": if status == "ended" { json!("https://api.anthropic.com/v1/messages/batches/msgbatch_1/results") } else { Value::Null }})
    }

    #[test]
    fn in_progress_and_canceling_are_running_without_count_progress() {
        // The counts only move when the whole batch ends (message_batch_request_counts.py):
        // a running batch reports no progress, whatever the counts say.
        let o = read_batch(&batch("in_progress", [4, 0, 0, 0, 0])).unwrap();
        assert_eq!(o.state, ObservedState::Running);
        assert_eq!(o.progress, None);
        let o = read_batch(&batch("in_progress", [3, 1, 0, 0, 0])).unwrap();
        assert_eq!(o.state, ObservedState::Running);
        assert_eq!(o.progress, None);
        assert_eq!(o.result, None);
        assert!(o.expires_at.is_some());
        assert_eq!(
            read_batch(&batch("canceling", [1, 1, 0, 0, 0]))
                .unwrap()
                .state,
            ObservedState::Running
        );
    }

    #[test]
    fn ended_outcome_comes_from_the_counts() {
        for (counts, want, code) in [
            ([0, 3, 1, 0, 0], ObservedState::Succeeded, None),
            ([0, 1, 0, 2, 1], ObservedState::Succeeded, None),
            ([0, 0, 4, 0, 0], ObservedState::Failed, Some("errored")),
            ([0, 0, 1, 2, 1], ObservedState::Failed, Some("errored")),
            ([0, 0, 0, 2, 1], ObservedState::Cancelled, Some("canceled")),
            ([0, 0, 0, 0, 5], ObservedState::Expired, Some("expired")),
        ] {
            let o = read_batch(&batch("ended", counts)).unwrap();
            assert_eq!(o.state, want, "{counts:?}");
            assert_eq!(o.progress, Some(1.0));
            let r = o.result.unwrap();
            assert!(r["results_url"].as_str().unwrap().ends_with("/results"));
            assert_eq!(r["request_counts"]["succeeded"], counts[1]);
            assert_eq!(o.error.map(|e| e["code"].clone()), code.map(Value::from));
        }
        assert!(read_batch(&json!({"id": "msgbatch_1"})).is_err());
    }
}
