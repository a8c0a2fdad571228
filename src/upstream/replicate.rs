//! Replicate predictions.

use serde_json::Value;

use super::{Observation, ObservedState, ended, non_null, status_text};

use super::openai::one_below;
use super::presets::{CreateRule, PresetSpec, ProxyPatterns, WebhookDefaults, segments};
use crate::schedule::config::PollConfig;

/// `replicate`: a Replicate prediction. The webhook body is the whole prediction, so its id is
/// at the top, and its status is read like a poll.
pub static PREDICTION: PresetSpec = PresetSpec {
    name: "replicate",
    base_url: Some("https://api.replicate.com/v1/"),
    status_path: Some("predictions/{operation}"),
    headers: &[("Authorization", "Bearer ${REPLICATE_API_TOKEN}")],
    poll: PollConfig::media(),
    webhook: Some(WebhookDefaults {
        operation_field: "/id",
        families: &[],
        events: &[],
        pauses: &[],
        no_event_map: Some(
            "Replicate webhooks carry the whole prediction, not an event type; the status in it \
             is read like a poll, so there is nothing to map",
        ),
    }),
    reads: "status, output, error",
    read: Some(read_prediction),
    proxy: Some(ProxyPatterns {
        create: create_prediction,
        status_read: |path, _| one_below("predictions/", path),
        auth_headers: &["authorization"],
    }),
    ..PresetSpec::BASE
};

/// `POST predictions`, `models/{owner}/{model}/predictions`, `deployments/{owner}/{name}/predictions`.
fn create_prediction(method: &str, path: &str) -> Option<CreateRule> {
    let s = segments(path);
    let ok = match s.as_slice() {
        ["predictions"] => true,
        ["models" | "deployments", o, m, "predictions"] => !o.is_empty() && !m.is_empty(),
        _ => false,
    };
    (method == "POST" && ok).then(|| CreateRule::field("/id"))
}

/// A prediction (`GET /v1/predictions/{id}`; webhooks carry the same object): `canceled` and
/// `aborted` are cancelled; `result` is `output`; `error` is the prediction's error (a string
/// on the wire, reported as `{"code": "failed", "message": ...}`).
pub fn read_prediction(body: &Value) -> Result<Observation, String> {
    let raw = status_text(body, "/status")?;
    let state = match raw {
        "starting" => ObservedState::Pending,
        "succeeded" => ObservedState::Succeeded,
        "failed" => ObservedState::Failed,
        "canceled" | "aborted" => ObservedState::Cancelled,
        // processing and statuses added later.
        _ => ObservedState::Running,
    };
    let mut obs = Observation::new(state, Value::from(raw));
    match state {
        ObservedState::Succeeded => {
            obs.result = non_null(body, "/output");
            obs.progress = Some(1.0);
        }
        ObservedState::Failed | ObservedState::Cancelled => {
            obs.error = Some(match non_null(body, "/error") {
                Some(Value::String(message)) => ended(raw, message),
                Some(other) => other,
                None if raw == "failed" => ended(raw, "the prediction failed"),
                None => ended(raw, format!("the prediction was {raw}")),
            });
        }
        _ => {}
    }
    Ok(obs)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn prediction_statuses() {
        let read = |s: &str, error: Value| {
            read_prediction(
                &json!({"id": "p1", "status": s, "output": ["https://x/o.png"], "error": error}),
            )
            .unwrap()
        };
        assert_eq!(read("starting", Value::Null).state, ObservedState::Pending);
        assert_eq!(
            read("processing", Value::Null).state,
            ObservedState::Running
        );
        assert_eq!(read("processing", Value::Null).result, None);
        let ok = read("succeeded", Value::Null);
        assert_eq!(ok.state, ObservedState::Succeeded);
        assert_eq!(ok.result, Some(json!(["https://x/o.png"])));
        let failed = read("failed", json!("CUDA out of memory"));
        assert_eq!(failed.state, ObservedState::Failed);
        assert_eq!(
            failed.error,
            Some(json!({"code": "failed", "message": "CUDA out of memory"}))
        );
        assert_eq!(failed.result, None);
        for s in ["canceled", "aborted"] {
            let o = read(s, Value::Null);
            assert_eq!(o.state, ObservedState::Cancelled, "{s}");
            assert_eq!(o.error.unwrap()["code"], s);
        }
        assert!(read_prediction(&json!({"id": "p1"})).is_err());
    }
}
