//! Upstream presets: how to build the status request for an operation and how to read the
//! status response into an [`Observation`]. Everything here is pure (no I/O): the poller does the
//! HTTP, this module only knows the shapes of the upstreams' JSON.

use percent_encoding::{AsciiSet, CONTROLS, utf8_percent_encode};
use reqwest::Url;
use serde_json::Value;

use crate::clock::Timestamp;
use crate::config::{PollConfig, UpstreamConfig};

/// The kinds of upstream hookshim knows how to read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Preset {
    /// Any JSON status endpoint, described by pointers and value lists in the config.
    Generic,
    /// A Google long-running Operation (`done`, `error` XOR `response`), e.g. Veo video jobs.
    GoogleOperation,
}

/// What a preset fills in when the config leaves it out.
pub struct PresetDefaults {
    pub base_url: Option<&'static str>,
    pub status_path: Option<&'static str>,
    pub poll: PollConfig,
}

impl Preset {
    pub const NAMES: &'static [&'static str] = &["generic", "google-operation"];

    pub fn from_name(name: &str) -> Option<Preset> {
        match name {
            "generic" => Some(Preset::Generic),
            "google-operation" => Some(Preset::GoogleOperation),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Preset::Generic => "generic",
            Preset::GoogleOperation => "google-operation",
        }
    }

    pub fn defaults(self) -> PresetDefaults {
        match self {
            Preset::Generic => PresetDefaults {
                base_url: None,
                status_path: None,
                poll: PollConfig::general(),
            },
            // Veo and similar media jobs take seconds to minutes.
            Preset::GoogleOperation => PresetDefaults {
                base_url: Some("https://generativelanguage.googleapis.com/v1beta/"),
                status_path: Some("{operation}"),
                poll: PollConfig::media(),
            },
        }
    }
}

/// The state an upstream reported, already mapped to hookshim's vocabulary.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ObservedState {
    Pending,
    Running,
    Succeeded,
    Failed,
    Cancelled,
    Expired,
}

impl ObservedState {
    pub fn is_terminal(self) -> bool {
        !matches!(self, ObservedState::Pending | ObservedState::Running)
    }
}

/// One reading of an upstream status response.
#[derive(Clone, Debug, PartialEq)]
pub struct Observation {
    pub state: ObservedState,
    /// The upstream's own status value, unmapped.
    pub raw_status: Value,
    /// Progress in 0..=1 when the upstream reports it.
    pub progress: Option<f64>,
    pub result: Option<Value>,
    pub error: Option<Value>,
    /// When the upstream will expire the job by itself, if it says (OpenAI, Anthropic batches):
    /// the policy makes sure to look at the operation then.
    pub expires_at: Option<Timestamp>,
}

/// The config fields that describe a generic mapping (pointers already checked).
#[derive(Default)]
pub struct MappingInput {
    pub status_field: Option<String>,
    pub pending: Option<Vec<String>>,
    pub succeeded: Option<Vec<String>>,
    pub failed: Option<Vec<String>>,
    pub cancelled: Option<Vec<String>>,
    pub expired: Option<Vec<String>>,
    pub result_field: Option<String>,
    pub error_field: Option<String>,
    pub progress_field: Option<String>,
}

/// How to read a status response.
#[derive(Clone, Debug)]
pub enum Mapping {
    Generic {
        status_field: String,
        pending: Vec<String>,
        succeeded: Vec<String>,
        failed: Vec<String>,
        cancelled: Vec<String>,
        expired: Vec<String>,
        result_field: Option<String>,
        error_field: Option<String>,
        progress_field: Option<String>,
    },
    GoogleOperation {
        result_field: String,
        error_field: String,
        progress_field: Option<String>,
    },
}

impl Mapping {
    pub fn build(preset: Preset, m: MappingInput) -> Result<Mapping, String> {
        match preset {
            Preset::Generic => {
                let status_field = m
                    .status_field
                    .ok_or("`status_field` is required for preset \"generic\"")?;
                let succeeded = m.succeeded.unwrap_or_default();
                let failed = m.failed.unwrap_or_default();
                if succeeded.is_empty() {
                    return Err(
                        "`succeeded` needs at least one status value for preset \"generic\"".into(),
                    );
                }
                if failed.is_empty() {
                    return Err(
                        "`failed` needs at least one status value for preset \"generic\"".into(),
                    );
                }
                Ok(Mapping::Generic {
                    status_field,
                    pending: m.pending.unwrap_or_default(),
                    succeeded,
                    failed,
                    cancelled: m.cancelled.unwrap_or_default(),
                    expired: m.expired.unwrap_or_default(),
                    result_field: m.result_field,
                    error_field: m.error_field,
                    progress_field: m.progress_field,
                })
            }
            Preset::GoogleOperation => {
                for (k, v) in [
                    ("status_field", m.status_field.is_some()),
                    ("pending", m.pending.is_some()),
                    ("succeeded", m.succeeded.is_some()),
                    ("failed", m.failed.is_some()),
                    ("cancelled", m.cancelled.is_some()),
                    ("expired", m.expired.is_some()),
                ] {
                    if v {
                        return Err(format!(
                            "`{k}` does not apply to preset \"google-operation\" (it reads `done`, `error` and `response`)"
                        ));
                    }
                }
                Ok(Mapping::GoogleOperation {
                    result_field: m.result_field.unwrap_or_else(|| "/response".into()),
                    error_field: m.error_field.unwrap_or_else(|| "/error".into()),
                    progress_field: m.progress_field,
                })
            }
        }
    }

    /// For `hookshim check`.
    pub fn describe(&self) -> Value {
        match self {
            Mapping::Generic {
                status_field,
                pending,
                succeeded,
                failed,
                cancelled,
                expired,
                result_field,
                error_field,
                progress_field,
            } => serde_json::json!({
                "status_field": status_field, "pending": pending, "succeeded": succeeded, "failed": failed,
                "cancelled": cancelled, "expired": expired, "result_field": result_field,
                "error_field": error_field, "progress_field": progress_field,
            }),
            Mapping::GoogleOperation {
                result_field,
                error_field,
                progress_field,
            } => serde_json::json!({
                "reads": "done / error / response", "result_field": result_field,
                "error_field": error_field, "progress_field": progress_field,
            }),
        }
    }

    /// Read a status response body. An `Err` means the body did not have the expected shape:
    /// the caller treats it as transient (invariant 4), never as terminal.
    pub fn read(&self, body: &Value) -> Result<Observation, String> {
        if !body.is_object() {
            return Err("status response is not a JSON object".into());
        }
        match self {
            Mapping::Generic {
                status_field,
                pending,
                succeeded,
                failed,
                cancelled,
                expired,
                result_field,
                error_field,
                progress_field,
            } => {
                let raw = body
                    .pointer(status_field)
                    .filter(|v| !v.is_null())
                    .ok_or_else(|| {
                        format!("status field {status_field} is missing from the status response")
                    })?;
                let text = match raw {
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                };
                let is = |list: &Vec<String>| list.iter().any(|s| s == &text);
                let state = if is(succeeded) {
                    ObservedState::Succeeded
                } else if is(failed) {
                    ObservedState::Failed
                } else if is(cancelled) {
                    ObservedState::Cancelled
                } else if is(expired) {
                    ObservedState::Expired
                } else if is(pending) {
                    ObservedState::Pending
                } else {
                    ObservedState::Running
                };
                Ok(Observation {
                    state,
                    raw_status: raw.clone(),
                    progress: progress_field
                        .as_deref()
                        .and_then(|p| read_progress(body, p)),
                    result: result_field.as_deref().and_then(|p| non_null(body, p)),
                    error: error_field.as_deref().and_then(|p| non_null(body, p)),
                    expires_at: None,
                })
            }
            Mapping::GoogleOperation {
                result_field,
                error_field,
                progress_field,
            } => {
                let done = match body.get("done") {
                    None | Some(Value::Null) => false,
                    Some(Value::Bool(b)) => *b,
                    Some(other) => return Err(format!("`done` is not a boolean: {other}")),
                };
                let progress = progress_field
                    .as_deref()
                    .and_then(|p| read_progress(body, p));
                let meta_state = body.pointer("/metadata/state").cloned();
                if !done {
                    return Ok(Observation {
                        state: ObservedState::Running,
                        raw_status: meta_state.unwrap_or_else(|| Value::from("running")),
                        progress,
                        result: None,
                        error: None,
                        expires_at: None,
                    });
                }
                let error = non_null(body, error_field);
                let (state, result) = match &error {
                    Some(e) if e.get("code").and_then(Value::as_i64) == Some(1) => {
                        (ObservedState::Cancelled, None)
                    }
                    Some(_) => (ObservedState::Failed, None),
                    None => (ObservedState::Succeeded, non_null(body, result_field)),
                };
                Ok(Observation {
                    state,
                    raw_status: meta_state.unwrap_or_else(|| Value::from("done")),
                    progress: progress.or(Some(1.0)),
                    result,
                    error,
                    expires_at: None,
                })
            }
        }
    }
}

fn non_null(body: &Value, pointer: &str) -> Option<Value> {
    body.pointer(pointer).filter(|v| !v.is_null()).cloned()
}

/// Progress as a fraction; numbers sent as strings are accepted, values above 1 are read as
/// percentages.
fn read_progress(body: &Value, pointer: &str) -> Option<f64> {
    let v = body.pointer(pointer)?;
    let n = match v {
        Value::Number(n) => n.as_f64()?,
        Value::String(s) => s.trim().parse::<f64>().ok()?,
        _ => return None,
    };
    if !n.is_finite() || n < 0.0 {
        return None;
    }
    Some(if n > 1.0 { (n / 100.0).min(1.0) } else { n })
}

/// Characters escaped when an operation id is put into a URL path; `/` is kept so that names
/// like `models/veo/operations/abc` stay paths.
const PATH_ESCAPE: &AsciiSet = &CONTROLS
    .add(b' ')
    .add(b'"')
    .add(b'#')
    .add(b'%')
    .add(b'<')
    .add(b'>')
    .add(b'?')
    .add(b'`')
    .add(b'{')
    .add(b'}')
    .add(b'\\')
    .add(b'^')
    .add(b'|');

/// Check an operation id an app registers: it is placed in a URL path, so it must not escape
/// the upstream's base URL.
pub fn validate_operation_id(op: &str) -> Result<(), String> {
    if op.is_empty() {
        return Err("`operation` must not be empty".into());
    }
    if op.len() > 1024 {
        return Err("`operation` must be at most 1024 bytes".into());
    }
    if op.starts_with('/') || op.split('/').any(|seg| seg == ".." || seg == ".") {
        return Err(
            "`operation` must not start with \"/\" or contain \".\" or \"..\" path segments".into(),
        );
    }
    if op.chars().any(|c| c.is_control()) {
        return Err("`operation` must not contain control characters".into());
    }
    Ok(())
}

/// The URL to read an operation's status from.
pub fn status_url(up: &UpstreamConfig, operation: &str) -> Result<Url, String> {
    let encoded = utf8_percent_encode(operation, PATH_ESCAPE).to_string();
    let path = up.status_path.replace("{operation}", &encoded);
    up.base_url
        .join(&path)
        .map_err(|e| format!("cannot build the status URL from {path:?}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn generic() -> Mapping {
        Mapping::build(
            Preset::Generic,
            MappingInput {
                status_field: Some("/state".into()),
                succeeded: Some(vec!["done".into()]),
                failed: Some(vec!["error".into()]),
                cancelled: Some(vec!["cancelled".into()]),
                expired: Some(vec!["expired".into()]),
                result_field: Some("/output".into()),
                error_field: Some("/error".into()),
                progress_field: Some("/progress".into()),
                ..Default::default()
            },
        )
        .unwrap()
    }

    #[test]
    fn generic_maps_each_terminal_list() {
        let m = generic();
        let read = |s: &str| {
            m.read(&json!({"state": s, "output": {"x": 1}}))
                .unwrap()
                .state
        };
        assert_eq!(read("done"), ObservedState::Succeeded);
        assert_eq!(read("error"), ObservedState::Failed);
        assert_eq!(read("cancelled"), ObservedState::Cancelled);
        assert_eq!(read("expired"), ObservedState::Expired);
        assert_eq!(read("whatever"), ObservedState::Running);
        let o = m
            .read(&json!({"state": "done", "output": {"x": 1}, "progress": "0.5"}))
            .unwrap();
        assert_eq!(o.result, Some(json!({"x": 1})));
        assert_eq!(o.progress, Some(0.5));
    }

    #[test]
    fn generic_missing_status_is_an_error_not_a_state() {
        assert!(generic().read(&json!({"nope": 1})).is_err());
        assert!(generic().read(&json!([1, 2])).is_err());
    }

    #[test]
    fn google_operation_reads_done_error_response() {
        let m = Mapping::build(Preset::GoogleOperation, MappingInput::default()).unwrap();
        assert_eq!(
            m.read(&json!({"name": "x"})).unwrap().state,
            ObservedState::Running
        );
        assert_eq!(
            m.read(&json!({"name": "x", "done": false})).unwrap().state,
            ObservedState::Running
        );
        let ok = m
            .read(&json!({"done": true, "response": {"generateVideoResponse": {"generatedSamples": [{"video": {"uri": "u"}}]}}}))
            .unwrap();
        assert_eq!(ok.state, ObservedState::Succeeded);
        assert_eq!(
            ok.result
                .unwrap()
                .pointer("/generateVideoResponse/generatedSamples/0/video/uri"),
            Some(&json!("u"))
        );
        let failed = m
            .read(&json!({"done": true, "error": {"code": 13, "message": "boom"}}))
            .unwrap();
        assert_eq!(failed.state, ObservedState::Failed);
        assert_eq!(failed.error.unwrap()["message"], "boom");
        let cancelled = m
            .read(&json!({"done": true, "error": {"code": 1, "message": "cancelled"}}))
            .unwrap();
        assert_eq!(cancelled.state, ObservedState::Cancelled);
    }

    #[test]
    fn operation_ids_cannot_escape_the_base_url() {
        assert!(validate_operation_id("models/veo/operations/abc").is_ok());
        assert!(validate_operation_id("/etc/passwd").is_err());
        assert!(validate_operation_id("a/../../admin").is_err());
        assert!(validate_operation_id("").is_err());
    }
}
