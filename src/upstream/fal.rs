//! The fal queue (`queue.fal.run`): a request's status at `…/requests/{id}/status`, its result
//! at `…/requests/{id}`.
//!
//! Checked against fal-ai/fal `projects/fal_client/src/fal_client/client.py` (fal-client, the
//! Python SDK): `_BaseRequestHandle._parse_status` knows `IN_QUEUE` (`queue_position`),
//! `IN_PROGRESS` and `COMPLETED` (`logs`, `metrics`, and `error` / `error_type` when the request
//! failed), any other status is an error to it; `SyncRequestHandle.get` waits for `COMPLETED`
//! and then GETs `response_url`, raising `FalClientHTTPError` (`detail`, `error_type` or the
//! `X-Fal-Error-Type` header) when that answer is not 2xx. So `COMPLETED` alone does not say
//! success: the result read decides. Its retry rules (`_should_retry_response`: 408, 409, 429,
//! and a 502/503/504 from the ingress rather than fal's server) are what is read as "no answer
//! yet" here. Request error types (`client_cancelled`, `request_timeout`, ...):
//! <https://fal.ai/docs/documentation/model-apis/request-errors>.

use reqwest::Url;
use reqwest::header::HeaderMap;
use serde_json::{Value, json};

use super::presets::{CreateRule, PresetSpec, ProxyPatterns, ResultOutcome, ResultRead};
use super::{Observation, ObservedState, non_null, status_text};
use crate::schedule::config::PollConfig;
use crate::upstream::CreateId;

/// `fal-queue`: a request on the fal queue. The registered operation is the request's
/// `status_url` (or `response_url`) from the submit answer, kept as the status URL.
pub static QUEUE: PresetSpec = PresetSpec {
    name: "fal-queue",
    base_url: Some("https://queue.fal.run/"),
    headers: &[("Authorization", "Key ${FAL_KEY}")],
    poll: PollConfig::media(),
    reads: "status (IN_QUEUE / IN_PROGRESS / COMPLETED); a COMPLETED request's outcome from the result read at response_url (or the status's error)",
    read: Some(read_status),
    operation_url: Some(operation_url),
    canonical_operation: canonical_status_url,
    proxy: Some(ProxyPatterns {
        // `POST {owner}/{app}[/{path}]` submits; the answer names the request's URLs.
        create: |method, path| {
            let s: Vec<&str> = path.split('/').collect();
            let ok = s.len() >= 2 && s.iter().all(|x| !x.is_empty()) && !s.contains(&"requests");
            (method == "POST" && ok).then_some(CreateRule {
                needs_background: false,
                id: CreateId::Field("/status_url"),
                returns_job: false,
            })
        },
        status_read: |_, url| is_status_url(url).then(|| canonical_status_url(url)),
        auth_headers: &["authorization"],
    }),
    result_read: Some(ResultRead {
        location: result_location,
        read: read_result,
    }),
    ..PresetSpec::BASE
};

/// `…/requests/{id}/status` with at least the app before `requests`.
fn is_status_url(url: &str) -> bool {
    let Ok(u) = Url::parse(url) else {
        return false;
    };
    let s: Vec<&str> = u.path().trim_start_matches('/').split('/').collect();
    matches!(s.as_slice(), [app @ .., "requests", id, "status"]
        if !app.is_empty() && app.iter().all(|x| !x.is_empty()) && !id.is_empty())
}

/// The registration key of a fal request is its status URL without a query (`?logs=1`): the
/// `response_url` and the `status_url` of one request, in any spelling `url` normalises, are one
/// operation. What does not parse is kept as given and refused by [`operation_url`].
fn canonical_status_url(op: &str) -> String {
    let Ok(mut url) = Url::parse(op) else {
        return op.to_string();
    };
    url.set_query(None);
    url.set_fragment(None);
    let path = url.path().trim_end_matches('/').to_string();
    let s: Vec<&str> = path.split('/').collect();
    if s.len() >= 2 && s[s.len() - 2] == "requests" {
        url.set_path(&format!("{path}/status"));
    }
    url.to_string()
}

/// Parse a registered operation as the request's status URL.
pub fn operation_url(operation: &str) -> Result<Url, String> {
    let url = Url::parse(operation)
        .ok()
        .filter(|_| is_status_url(operation));
    url.ok_or_else(|| {
        "`operation` must be the request's status_url (or response_url) from the fal queue's \
         submit answer: https://queue.fal.run/{owner}/{app}/requests/{request_id}/status"
            .to_string()
    })
}

/// A queue status (`GET …/requests/{id}/status`). `COMPLETED` is read as succeeded only
/// provisionally: the result read decides ([`read_result`]); a status that carries `error`
/// (fal-client's `Completed.error`) is failed at once.
pub fn read_status(body: &Value) -> Result<Observation, String> {
    let raw = status_text(body, "/status")?;
    let state = match raw {
        "IN_QUEUE" => ObservedState::Pending,
        "COMPLETED" => ObservedState::Succeeded,
        // IN_PROGRESS and statuses added later.
        _ => ObservedState::Running,
    };
    let mut obs = Observation::new(state, Value::from(raw));
    if state != ObservedState::Succeeded {
        return Ok(obs);
    }
    if let Some(error) = non_null(body, "/error") {
        obs.state = ObservedState::Failed;
        let code = body
            .get("error_type")
            .and_then(Value::as_str)
            .unwrap_or("failed");
        obs.error = Some(match error {
            Value::String(message) => json!({"code": code, "message": message}),
            other => json!({"code": code, "message": "the request failed", "detail": other}),
        });
        if code == "client_cancelled" {
            obs.state = ObservedState::Cancelled;
        }
        return Ok(obs);
    }
    obs.progress = Some(1.0);
    Ok(obs)
}

/// The result is at the status body's `response_url`, else the status URL without `/status`.
fn result_location(status_url: &Url, body: &Value) -> Option<String> {
    if let Some(url) = body.get("response_url").and_then(Value::as_str) {
        return Some(url.to_string());
    }
    let path = status_url.path().strip_suffix("/status")?;
    let mut url = status_url.clone();
    url.set_path(path);
    url.set_query(None);
    Some(url.to_string())
}

/// The answer to `GET …/requests/{id}` once the status is `COMPLETED`:
/// - 2xx with a JSON body: succeeded, the body is the `result`;
/// - 408, 409, 429 (fal-client retries these), 401/403 (a credential problem never ends a job),
///   404, and a 502/503/504 that did not come from fal's server (no `x-fal-request-id`, as
///   fal-client's `_is_ingress_error` tells them apart): no answer yet, read again;
/// - any other 4xx/5xx: the request failed, `error` is `{"code": error_type (body or
///   `X-Fal-Error-Type`) or "http_<status>", "message": detail, "status": <status>}`, a
///   list-valued `detail` (a model's validation errors) kept as `detail`; `client_cancelled`
///   is cancelled.
pub fn read_result(status: u16, headers: &HeaderMap, body: &[u8]) -> ResultOutcome {
    let parsed: Option<Value> = serde_json::from_slice(body).ok();
    if (200..300).contains(&status) {
        return match parsed {
            Some(v) => ResultOutcome::Succeeded(v),
            None => ResultOutcome::Retry("the result is not JSON".into()),
        };
    }
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let from_fal = header("x-fal-request-id").is_some() || header("x-fal-error-type").is_some();
    let retry = match status {
        401 | 403 => Some("the credential was refused"),
        404 => Some("no result there (yet)"),
        408 | 409 | 429 => Some("fal asks to try again"),
        502..=504 if !from_fal => Some("a gateway error, not fal's answer"),
        s if !(400..600).contains(&s) => Some("not an answer fal documents"),
        _ => None,
    };
    if let Some(why) = retry {
        return ResultOutcome::Retry(why.into());
    }
    let detail = parsed.as_ref().and_then(|v| non_null(v, "/detail"));
    let error_type = parsed
        .as_ref()
        .and_then(|v| v.get("error_type"))
        .and_then(Value::as_str)
        .or_else(|| header("x-fal-error-type"))
        .map(str::to_string);
    let code = error_type.unwrap_or_else(|| format!("http_{status}"));
    let mut error = json!({"code": code, "status": status});
    match detail {
        Some(Value::String(message)) => error["message"] = Value::from(message),
        Some(other) => {
            error["message"] = Value::from(format!("the request failed with HTTP {status}"));
            error["detail"] = other;
        }
        None => error["message"] = Value::from(format!("the request failed with HTTP {status}")),
    }
    let state = if code == "client_cancelled" {
        ObservedState::Cancelled
    } else {
        ObservedState::Failed
    };
    ResultOutcome::Ended(state, error)
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::HeaderValue;

    const STATUS: &str =
        "https://queue.fal.run/fal-ai/flux/requests/764cabcf-b745-4b3e-ae38-1200304cf45b/status";

    #[test]
    fn statuses_and_a_completed_error() {
        let read = |b: Value| read_status(&b).unwrap();
        let o = read(json!({"status": "IN_QUEUE", "queue_position": 3, "response_url": "x"}));
        assert_eq!(o.state, ObservedState::Pending);
        let o = read(json!({"status": "IN_PROGRESS", "logs": [{"message": "step 1"}]}));
        assert_eq!(o.state, ObservedState::Running);
        assert_eq!(o.progress, None);
        // Provisional: the result read decides.
        let o =
            read(json!({"status": "COMPLETED", "logs": null, "metrics": {"inference_time": 1.2}}));
        assert_eq!(o.state, ObservedState::Succeeded);
        assert_eq!((o.result, o.error), (None, None));
        let o = read(json!({"status": "COMPLETED", "error": "Request timed out",
                            "error_type": "request_timeout"}));
        assert_eq!(o.state, ObservedState::Failed);
        assert_eq!(
            o.error,
            Some(json!({"code": "request_timeout", "message": "Request timed out"}))
        );
        let o = read(json!({"status": "COMPLETED", "error": "cancelled",
                            "error_type": "client_cancelled"}));
        assert_eq!(o.state, ObservedState::Cancelled);
        let o = read(json!({"status": "COMPLETED", "error": "boom"}));
        assert_eq!(o.error.unwrap()["code"], "failed");
        assert_eq!(
            read(json!({"status": "SOMETHING_NEW"})).state,
            ObservedState::Running
        );
        assert!(read_status(&json!({"queue_position": 1})).is_err());
    }

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn the_result_read_decides() {
        let none = HeaderMap::new();
        assert_eq!(
            read_result(
                200,
                &none,
                br#"{"images": [{"url": "https://v3.fal.media/a.png"}]}"#
            ),
            ResultOutcome::Succeeded(json!({"images": [{"url": "https://v3.fal.media/a.png"}]}))
        );
        assert!(matches!(
            read_result(200, &none, b"<html>"),
            ResultOutcome::Retry(_)
        ));
        // A model's validation error: `detail` is a list.
        let body = br#"{"detail": [{"loc": ["body", "prompt"], "msg": "field required", "type": "value_error.missing"}]}"#;
        let ResultOutcome::Ended(state, e) = read_result(422, &none, body) else {
            panic!("422 ends the request");
        };
        assert_eq!(state, ObservedState::Failed);
        assert_eq!(e["code"], "http_422");
        assert_eq!(e["status"], 422);
        assert_eq!(e["detail"][0]["msg"], "field required");
        // A request error: flat `detail` and `error_type` (or only the header).
        let body = br#"{"detail": "Request timed out", "error_type": "request_timeout"}"#;
        let h = headers(&[("x-fal-request-id", "r1")]);
        let ResultOutcome::Ended(state, e) = read_result(504, &h, body) else {
            panic!("fal's own 504 ends the request");
        };
        assert_eq!(state, ObservedState::Failed);
        assert_eq!(
            e,
            json!({"code": "request_timeout", "status": 504, "message": "Request timed out"})
        );
        let h = headers(&[("x-fal-error-type", "runner_server_error")]);
        let ResultOutcome::Ended(_, e) = read_result(500, &h, b"Internal Server Error") else {
            panic!("500 ends the request");
        };
        assert_eq!(e["code"], "runner_server_error");
        let body = br#"{"detail": "Request cancelled", "error_type": "client_cancelled"}"#;
        let ResultOutcome::Ended(state, _) = read_result(499, &none, body) else {
            panic!("a cancelled request ends");
        };
        assert_eq!(state, ObservedState::Cancelled);
        for status in [401, 403, 404, 408, 409, 429, 502, 503, 504] {
            assert!(
                matches!(
                    read_result(status, &none, b"<html>nginx</html>"),
                    ResultOutcome::Retry(_)
                ),
                "{status}"
            );
        }
    }

    #[test]
    fn the_operation_is_the_status_url() {
        let response_url = STATUS.strip_suffix("/status").unwrap();
        assert_eq!(canonical_status_url(STATUS), STATUS);
        assert_eq!(canonical_status_url(response_url), STATUS);
        assert_eq!(canonical_status_url(&format!("{STATUS}?logs=1")), STATUS);
        assert_eq!(canonical_status_url(&format!("{response_url}/")), STATUS);
        assert!(operation_url(STATUS).is_ok());
        // Apps with a namespace have three segments before `requests`.
        assert!(operation_url("https://queue.fal.run/workflows/o/a/requests/r/status").is_ok());
        for bad in [
            "764cabcf",
            "https://queue.fal.run/requests/r/status",
            "https://queue.fal.run/fal-ai/flux/requests/r",
            "https://queue.fal.run/fal-ai/flux/requests//status",
        ] {
            let e = operation_url(bad).unwrap_err();
            assert!(e.contains("status_url"), "{bad}: {e}");
        }
    }

    #[test]
    fn the_result_location() {
        let url = Url::parse(STATUS).unwrap();
        let body = json!({"status": "COMPLETED", "response_url": "https://queue.fal.run/fal-ai/flux/requests/x"});
        assert_eq!(
            result_location(&url, &body).as_deref(),
            Some("https://queue.fal.run/fal-ai/flux/requests/x")
        );
        assert_eq!(
            result_location(&url, &json!({"status": "COMPLETED"})).as_deref(),
            STATUS.strip_suffix("/status")
        );
    }

    #[test]
    fn the_proxy_recognises_submits_and_status_reads() {
        let p = QUEUE.proxy.unwrap();
        assert!((p.create)("POST", "fal-ai/flux/dev").is_some());
        assert!((p.create)("POST", "fal-ai/flux").is_some());
        assert!((p.create)("POST", "fal-ai").is_none());
        assert!((p.create)("GET", "fal-ai/flux/dev").is_none());
        assert!((p.create)("PUT", "fal-ai/flux/requests/r/cancel").is_none());
        assert!((p.create)("POST", "fal-ai/flux/requests/r").is_none());
        assert_eq!(
            (p.status_read)("", &format!("{STATUS}?logs=0")).as_deref(),
            Some(STATUS)
        );
        assert_eq!(
            (p.status_read)("", STATUS.strip_suffix("/status").unwrap()),
            None
        );
    }
}
