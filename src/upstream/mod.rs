//! Upstreams: how to build the status request for an operation and how to read the status
//! response into an [`Observation`]; which webhook events each upstream sends; and each
//! upstream's configuration. Reading is pure (no I/O): the poller does the HTTP, this module
//! only knows the shapes of the upstreams' JSON.
//!
//! - [`PRESETS`]: the table of presets; [`presets`]: [`PresetSpec`] and the [`Preset`] handle.
//! - One file per provider family defines its presets completely: `generic`, `google` (Google
//!   operations, Gemini batches and interactions), `openai`, `replicate`, `anthropic`, `azure`.
//! - [`config`]: `[upstreams.<name>]` resolved into an [`UpstreamConfig`].
//! - [`webhook`]: `[upstreams.<name>.webhook]` resolved into a [`WebhookConfig`].
//! - Here: the status [`Mapping`] (the generic reader and the presets' overrides), the helpers
//!   the readers share, and status URLs.

mod anthropic;
mod azure;
pub mod config;
mod generic;
mod google;
mod openai;
pub mod presets;
mod replicate;
pub mod webhook;

use percent_encoding::{AsciiSet, CONTROLS, utf8_percent_encode};
use reqwest::Url;
use serde_json::{Value, json};

use crate::clock::Timestamp;

pub use self::config::{CALLBACK_EVENTS, UpstreamConfig};
pub use self::presets::{CreateId, CreateRule, Preset, PresetSpec, ProxyPatterns, WebhookDefaults};
pub use self::webhook::{
    GEMINI_JWKS_URL, JwtConfig, KeyMaterial, WebhookConfig, WebhookKey, WebhookScheme,
};
pub use crate::operation::{Observation, ObservedState};

/// Every preset hookshim knows, in the order messages list them: the one table. Adding a preset
/// is its `PresetSpec` in its family's file plus one line here.
pub const PRESETS: &[Preset] = &[
    Preset::new(&generic::GENERIC),
    Preset::new(&google::OPERATION),
    Preset::new(&google::VERTEX_OPERATION),
    Preset::new(&google::BATCH),
    Preset::new(&google::INTERACTION),
    Preset::new(&openai::BATCH),
    Preset::new(&openai::RESPONSE),
    Preset::new(&replicate::PREDICTION),
    Preset::new(&anthropic::BATCH),
    Preset::new(&azure::ASYNC),
];

/// The config fields that describe a generic mapping (pointers already checked).
#[derive(Default)]
pub struct MappingInput {
    pub status_field: Option<String>,
    pub pending: Option<Vec<String>>,
    pub succeeded: Option<Vec<String>>,
    pub failed: Option<Vec<String>>,
    pub cancelled: Option<Vec<String>>,
    pub expired: Option<Vec<String>>,
    /// Only on a preset: status values the preset ends on that are to be read as running.
    pub running: Option<Vec<String>>,
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
    /// A preset's reader, with the fields the config may override.
    Preset {
        preset: Preset,
        /// Replaces the preset's `result` (at the end, and with a pause).
        result_field: Option<String>,
        /// Replaces the preset's `error` when the upstream's value there is not null.
        error_field: Option<String>,
        /// Read first; the preset's own progress when it is absent.
        progress_field: Option<String>,
        /// Status values the config maps itself (`succeeded = [...]`, `failed = [...]`, ...):
        /// they extend the preset's mapping and win over it for the values they name (compared
        /// without case).
        statuses: Vec<(String, ObservedState)>,
    },
}

impl Mapping {
    pub fn build(preset: Preset, m: MappingInput) -> Result<Mapping, String> {
        if preset.defaults().read.is_none() {
            let name = preset.name();
            let status_field = m
                .status_field
                .ok_or_else(|| format!("`status_field` is required for preset {name:?}"))?;
            if m.running.is_some() {
                return Err(format!(
                    "`running` does not apply to preset {name:?}: every value not listed in \
                     the other lists is running"
                ));
            }
            let succeeded = m.succeeded.unwrap_or_default();
            let failed = m.failed.unwrap_or_default();
            if succeeded.is_empty() {
                return Err(format!(
                    "`succeeded` needs at least one status value for preset {name:?}"
                ));
            }
            if failed.is_empty() {
                return Err(format!(
                    "`failed` needs at least one status value for preset {name:?}"
                ));
            }
            return Ok(Mapping::Generic {
                status_field,
                pending: m.pending.unwrap_or_default(),
                succeeded,
                failed,
                cancelled: m.cancelled.unwrap_or_default(),
                expired: m.expired.unwrap_or_default(),
                result_field: m.result_field,
                error_field: m.error_field,
                progress_field: m.progress_field,
            });
        }
        if m.status_field.is_some() {
            return Err(format!(
                "`status_field` does not apply to preset {:?} (it reads {}); its status lists \
                 (`succeeded`, `failed`, ...) may be extended",
                preset.name(),
                preset.defaults().reads
            ));
        }
        let mut statuses: Vec<(String, ObservedState)> = Vec::new();
        for (key, list, state) in [
            ("pending", m.pending, ObservedState::Pending),
            ("running", m.running, ObservedState::Running),
            ("succeeded", m.succeeded, ObservedState::Succeeded),
            ("failed", m.failed, ObservedState::Failed),
            ("cancelled", m.cancelled, ObservedState::Cancelled),
            ("expired", m.expired, ObservedState::Expired),
        ] {
            for value in list.unwrap_or_default() {
                if value.is_empty() {
                    return Err(format!("`{key}`: a status value must not be empty"));
                }
                if let Some((_, other)) = statuses
                    .iter()
                    .find(|(v, _)| v.eq_ignore_ascii_case(&value))
                {
                    return Err(format!(
                        "`{key}`: status value {value:?} is already listed in `{}`; list it once",
                        state_key(*other)
                    ));
                }
                statuses.push((value, state));
            }
        }
        Ok(Mapping::Preset {
            preset,
            result_field: m.result_field,
            error_field: m.error_field,
            progress_field: m.progress_field,
            statuses,
        })
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
            } => json!({
                "status_field": status_field, "pending": pending, "succeeded": succeeded, "failed": failed,
                "cancelled": cancelled, "expired": expired, "result_field": result_field,
                "error_field": error_field, "progress_field": progress_field,
            }),
            Mapping::Preset {
                preset,
                result_field,
                error_field,
                progress_field,
                statuses,
            } => {
                let mut d = json!({
                    "reads": preset.defaults().reads, "result_field": result_field,
                    "error_field": error_field, "progress_field": progress_field,
                });
                for (value, state) in statuses {
                    if let Some(list) = d
                        .as_object_mut()
                        .map(|o| o.entry(state_key(*state)).or_insert_with(|| json!([])))
                        .and_then(Value::as_array_mut)
                    {
                        list.push(Value::from(value.as_str()));
                    }
                }
                d
            }
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
            Mapping::Preset {
                preset,
                result_field,
                error_field,
                progress_field,
                statuses,
            } => {
                // `build` makes a preset mapping only for presets with a reader.
                let read = preset
                    .defaults()
                    .read
                    .ok_or_else(|| format!("preset {:?} has no status reader", preset.name()))?;
                let mut obs = read(body)?;
                remap(&mut obs, statuses, body);
                if let Some(p) = progress_field {
                    obs.progress = read_progress(body, p).or(obs.progress);
                }
                let carries_result =
                    obs.state.is_terminal() || obs.state == ObservedState::RequiresAction;
                if let Some(p) = result_field.as_deref().filter(|_| carries_result) {
                    obs.result = non_null(body, p);
                }
                let failed = obs.state.is_terminal() && obs.state != ObservedState::Succeeded;
                if let Some(e) = error_field
                    .as_deref()
                    .filter(|_| failed)
                    .and_then(|p| non_null(body, p))
                {
                    obs.error = Some(e);
                }
                Ok(obs)
            }
        }
    }
}

/// The config key of the status list for `state`.
fn state_key(state: ObservedState) -> &'static str {
    match state {
        ObservedState::Pending => "pending",
        ObservedState::Running | ObservedState::RequiresAction => "running",
        ObservedState::Succeeded => "succeeded",
        ObservedState::Failed => "failed",
        ObservedState::Cancelled => "cancelled",
        ObservedState::Expired => "expired",
    }
}

/// Apply the config's own status lists on top of a preset's reading: when the upstream's raw
/// status (a string) is listed, the listed state wins. A new end gets the whole body as
/// `result` (succeeded) or an error naming the status (otherwise) when the preset gave none; a
/// state made non-terminal drops them.
fn remap(obs: &mut Observation, statuses: &[(String, ObservedState)], body: &Value) {
    let Some(raw) = obs.raw_status.as_str() else {
        return;
    };
    let Some(&(_, state)) = statuses.iter().find(|(v, _)| v.eq_ignore_ascii_case(raw)) else {
        return;
    };
    if state == obs.state {
        return;
    }
    let raw = raw.to_string();
    obs.state = state;
    match state {
        ObservedState::Succeeded => {
            obs.error = None;
            obs.progress = Some(1.0);
            if obs.result.is_none() {
                obs.result = Some(body.clone());
            }
        }
        ObservedState::Failed | ObservedState::Cancelled | ObservedState::Expired => {
            obs.result = None;
            if obs.error.is_none() {
                obs.error = Some(non_null(body, "/error").unwrap_or_else(|| {
                    ended(
                        &raw.to_ascii_lowercase(),
                        format!(
                            "the upstream reported status {raw}, listed in `{}` in the config",
                            state_key(state)
                        ),
                    )
                }));
            }
        }
        _ => {
            obs.result = None;
            obs.error = None;
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Helpers shared by the readers.

fn non_null(body: &Value, pointer: &str) -> Option<Value> {
    body.pointer(pointer).filter(|v| !v.is_null()).cloned()
}

/// A status value that must be a string, with a message naming where it was looked for.
fn status_text<'a>(body: &'a Value, pointer: &str) -> Result<&'a str, String> {
    match body.pointer(pointer) {
        None | Some(Value::Null) => Err(format!(
            "status field {pointer} is missing from the status response"
        )),
        Some(Value::String(s)) => Ok(s),
        Some(other) => Err(format!("status field {pointer} is not a string: {other}")),
    }
}

/// A count that may arrive as a JSON number or, for int64s in Google's JSON, as a string.
fn count(v: Option<&Value>) -> Option<f64> {
    let n = match v? {
        Value::Number(n) => n.as_f64()?,
        Value::String(s) => s.trim().parse::<f64>().ok()?,
        _ => return None,
    };
    (n.is_finite() && n >= 0.0).then_some(n)
}

/// `done / total`, clamped to 0..=1; `None` without a positive total.
fn fraction(done: f64, total: Option<f64>) -> Option<f64> {
    let total = total.filter(|t| *t > 0.0)?;
    Some((done / total).clamp(0.0, 1.0))
}

/// Progress as a fraction; numbers sent as strings are accepted, values above 1 are read as
/// percentages.
fn read_progress(body: &Value, pointer: &str) -> Option<f64> {
    let n = count(body.pointer(pointer))?;
    Some(if n > 1.0 { (n / 100.0).min(1.0) } else { n })
}

/// An RFC 3339 time (UTC, as the upstreams send them); ignored outside 2000..=9999
/// ([`Timestamp::sane`]).
fn rfc3339(v: Option<&Value>) -> Option<Timestamp> {
    let s = v?.as_str()?;
    humantime::parse_rfc3339_weak(s)
        .ok()
        .map(Timestamp::from_system)
        .and_then(Timestamp::sane)
}

/// Unix seconds, as a number or a string; ignored outside 2000..=9999 ([`Timestamp::sane`]).
fn unix_seconds(v: Option<&Value>) -> Option<Timestamp> {
    let secs = count(v)?;
    let ms = secs * 1000.0;
    // `as` saturates; the range check keeps only times an upstream can mean.
    (ms.is_finite() && ms > 0.0)
        .then_some(Timestamp(ms as u64))
        .and_then(Timestamp::sane)
}

/// The error hookshim reports when the upstream ended a job unsuccessfully without saying why.
fn ended(code: &str, message: impl Into<String>) -> Value {
    json!({"code": code, "message": message.into()})
}

/// Add `key: value` to an error object when `value` is present.
fn with(mut error: Value, key: &str, value: Option<Value>) -> Value {
    if let (Some(obj), Some(v)) = (error.as_object_mut(), value) {
        obj.insert(key.to_string(), v);
    }
    error
}

// ---------------------------------------------------------------------------------------------
// Status URLs.

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

/// Whether a path segment means "this" or "parent" directory to some server: `.` or `..` once
/// percent-decoded (up to three times: `%252e` too), and with any `;` matrix parameters removed
/// (Tomcat and Spring read `..;` as `..`); a decoded `/` or `\\` splits it further.
fn dot_segment(seg: &str) -> bool {
    let mut s = seg.to_string();
    for _ in 0..3 {
        let decoded = percent_encoding::percent_decode_str(&s)
            .decode_utf8_lossy()
            .into_owned();
        if decoded == s {
            break;
        }
        s = decoded;
    }
    s.split(['/', '\\']).any(|part| {
        // Some servers also cut a name at a NUL byte.
        let name = part.split([';', '\0']).next().unwrap_or_default().trim();
        name == "." || name == ".."
    })
}

/// Check an operation id an app registers: it is placed in a URL path, so it must not escape
/// the upstream's base URL.
pub fn validate_operation_id(op: &str) -> Result<(), String> {
    if op.is_empty() {
        return Err("`operation` must not be empty".into());
    }
    if op.len() > 1024 {
        return Err("`operation` must be at most 1024 bytes".into());
    }
    if op.starts_with('/') || op.split('/').any(dot_segment) {
        return Err(
            "`operation` must not start with \"/\" or contain \".\" or \"..\" path segments \
             (also percent-encoded, or with \";\" parameters such as \"..;\")"
                .into(),
        );
    }
    if op.contains('\\') {
        return Err("`operation` must not contain backslashes".into());
    }
    if op.chars().any(|c| c.is_control()) {
        return Err("`operation` must not contain control characters".into());
    }
    Ok(())
}

/// Check an operation an app registers for upstream `up` and return the form it is stored in
/// (see [`Preset::canonical_operation`]). The status URL it leads to must lie under the
/// upstream's `base_url`: hookshim sends the upstream's credentials nowhere else.
pub fn prepare_operation(up: &UpstreamConfig, op: &str) -> Result<String, String> {
    validate_operation_id(op)?;
    let canonical = up.preset.canonical_operation(op);
    status_url(up, &canonical)?;
    Ok(canonical)
}

/// The URL to read an operation's status from.
pub fn status_url(up: &UpstreamConfig, operation: &str) -> Result<Url, String> {
    let url = if let Some(operation_url) = up.preset.defaults().operation_url {
        operation_url(operation)?
    } else if let Some(path_for) = up
        .preset
        .defaults()
        .status_path_for
        .filter(|_| up.status_path == PATH_FROM_OPERATION)
    {
        let path = path_for(operation)?;
        let encoded = utf8_percent_encode(&path, PATH_ESCAPE).to_string();
        up.base_url
            .join(&encoded)
            .map_err(|e| format!("cannot build the status URL from {path:?}: {e}"))?
    } else {
        let encoded = utf8_percent_encode(operation, PATH_ESCAPE).to_string();
        let path = up.status_path.replace("{operation}", &encoded);
        up.base_url
            .join(&path)
            .map_err(|e| format!("cannot build the status URL from {path:?}: {e}"))?
    };
    ensure_under(&up.base_url, &url)?;
    Ok(url)
}

/// Where to read the final resource of an operation that succeeded, if its preset reads one
/// ([`PresetSpec::final_resource`]) and the status body names it: `Ok(None)` when there is none
/// to read (or `result_field` narrows the status body instead). The location may be absolute or
/// relative to the status URL; like status URLs it must lie under the upstream's `base_url`.
pub fn final_resource_url(
    up: &UpstreamConfig,
    status_url: &Url,
    body: &Value,
) -> Result<Option<Url>, String> {
    let Some(pointer) = up.preset.defaults().final_resource else {
        return Ok(None);
    };
    if matches!(
        &up.mapping,
        Mapping::Preset {
            result_field: Some(_),
            ..
        }
    ) {
        return Ok(None);
    }
    let Some(location) = body.pointer(pointer).and_then(Value::as_str) else {
        return Ok(None);
    };
    let url = status_url
        .join(location)
        .map_err(|e| format!("the final resource location {location:?} is not a URL ({e})"))?;
    ensure_under(&up.base_url, &url)?;
    Ok(Some(url))
}

/// The `status_path` of an upstream whose preset derives the path from the operation
/// ([`PresetSpec::status_path_for`]).
pub const PATH_FROM_OPERATION: &str = "<from the operation>";

/// The JSON body of a status read, from the upstream's template: every string value (at any
/// depth; keys are left alone) has `{operation}` replaced by the operation name, so the name is
/// JSON-escaped by the serialiser, never spliced into JSON text.
pub fn status_body(up: &UpstreamConfig, operation: &str) -> Option<Value> {
    fn fill(v: &Value, op: &str) -> Value {
        match v {
            Value::String(s) => Value::String(s.replace("{operation}", op)),
            Value::Array(a) => Value::Array(a.iter().map(|x| fill(x, op)).collect()),
            Value::Object(o) => {
                Value::Object(o.iter().map(|(k, x)| (k.clone(), fill(x, op))).collect())
            }
            other => other.clone(),
        }
    }
    up.status_body.as_ref().map(|t| fill(t, operation))
}

/// `url` must have `base`'s scheme, host and port, no user info, and a path under `base`'s.
fn ensure_under(base: &Url, url: &Url) -> Result<(), String> {
    let same_origin = url.scheme() == base.scheme()
        && url.host() == base.host()
        && url.port_or_known_default() == base.port_or_known_default();
    let problem = if !same_origin {
        Some("it is on another scheme, host or port")
    } else if !url.username().is_empty() || url.password().is_some() {
        Some("it carries user info")
    } else if !url.path().starts_with(base.path()) {
        Some("its path is outside the base URL's path")
    } else if url.path().split('/').any(dot_segment) {
        Some("its path has a \".\" or \"..\" segment in a form some servers resolve")
    } else {
        None
    };
    match problem {
        None => Ok(()),
        Some(why) => Err(format!(
            "the status URL {url} is not under the upstream's base_url {base} ({why}); hookshim \
             sends this upstream's credentials only there"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn preset(name: &str) -> Preset {
        Preset::from_name(name).unwrap()
    }

    fn generic() -> Mapping {
        Mapping::build(
            preset("generic"),
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
    fn operation_ids_cannot_escape_the_base_url() {
        assert!(validate_operation_id("models/veo/operations/abc").is_ok());
        assert!(validate_operation_id("/etc/passwd").is_err());
        assert!(validate_operation_id("a/../../admin").is_err());
        assert!(validate_operation_id("").is_err());
    }

    #[test]
    fn every_preset_has_a_name_that_round_trips() {
        assert_eq!(Preset::ALL.len(), Preset::NAMES.len());
        for &p in Preset::ALL {
            assert_eq!(Preset::from_name(p.name()), Some(p));
            assert!(Preset::NAMES.contains(&p.name()));
        }
    }

    #[test]
    fn preset_mappings_reject_generic_keys_and_name_what_they_read() {
        let e = Mapping::build(
            preset("openai-batch"),
            MappingInput {
                status_field: Some("/status".into()),
                ..Default::default()
            },
        )
        .unwrap_err();
        assert!(
            e.contains("`status_field` does not apply to preset \"openai-batch\""),
            "{e}"
        );
        assert!(e.contains("request_counts"), "{e}");
    }

    fn lists(m: MappingInput) -> Result<Mapping, String> {
        Mapping::build(preset("azure-async"), m)
    }

    #[test]
    fn preset_status_lists_extend_and_win_over_the_preset() {
        let m = lists(MappingInput {
            failed: Some(vec!["Rejected".into()]),
            cancelled: Some(vec!["aborted".into()]),
            running: Some(vec!["canceled".into()]),
            succeeded: Some(vec!["Done".into()]),
            ..Default::default()
        })
        .unwrap();
        let read = |b: Value| m.read(&b).unwrap();
        // Extended: values the preset reads as running end the job; compared without case.
        let o = read(json!({"status": "REJECTED"}));
        assert_eq!(o.state, ObservedState::Failed);
        assert_eq!(o.error.unwrap()["code"], "rejected");
        let o = read(json!({"status": "Rejected", "error": {"code": "E1", "message": "m"}}));
        assert_eq!(
            o.error.unwrap()["code"],
            "E1",
            "the upstream's own error is kept"
        );
        assert_eq!(
            read(json!({"status": "Aborted"})).state,
            ObservedState::Cancelled
        );
        let o = read(json!({"status": "Done", "properties": {"x": 1}}));
        assert_eq!(o.state, ObservedState::Succeeded);
        assert_eq!(o.result.unwrap()["properties"]["x"], 1);
        assert_eq!(o.progress, Some(1.0));
        // Overridden: a value the preset ends on is read as running.
        let o = read(json!({"status": "Canceled"}));
        assert_eq!(o.state, ObservedState::Running);
        assert_eq!(o.error, None);
        // The rest is the preset's.
        assert_eq!(
            read(json!({"status": "Succeeded"})).state,
            ObservedState::Succeeded
        );
        assert_eq!(
            read(json!({"status": "Failed"})).state,
            ObservedState::Failed
        );
        let d = m.describe();
        assert_eq!(d["failed"], json!(["Rejected"]));
        assert_eq!(d["running"], json!(["canceled"]));
    }

    #[test]
    fn preset_status_lists_name_a_value_once() {
        let e = lists(MappingInput {
            failed: Some(vec!["X".into()]),
            succeeded: Some(vec!["x".into()]),
            ..Default::default()
        })
        .unwrap_err();
        assert!(
            e.contains("`failed`: status value \"X\" is already listed in `succeeded`"),
            "{e}"
        );
        let e = Mapping::build(
            preset("generic"),
            MappingInput {
                status_field: Some("/s".into()),
                succeeded: Some(vec!["ok".into()]),
                failed: Some(vec!["bad".into()]),
                running: Some(vec!["busy".into()]),
                ..Default::default()
            },
        )
        .unwrap_err();
        assert!(
            e.contains("`running` does not apply to preset \"generic\""),
            "{e}"
        );
    }

    #[test]
    fn overrides_replace_the_presets_result_error_and_progress() {
        let m = Mapping::build(
            preset("replicate"),
            MappingInput {
                result_field: Some("/output/0".into()),
                error_field: Some("/logs".into()),
                progress_field: Some("/metrics/pct".into()),
                ..Default::default()
            },
        )
        .unwrap();
        let ok = m
            .read(&json!({"status": "succeeded", "output": ["a", "b"], "metrics": {"pct": 40}}))
            .unwrap();
        assert_eq!(ok.result, Some(json!("a")));
        assert_eq!(ok.progress, Some(0.4));
        let failed = m
            .read(&json!({"status": "failed", "error": "oom", "logs": "killed"}))
            .unwrap();
        assert_eq!(failed.error, Some(json!("killed")));
        assert_eq!(failed.result, None);
    }

    #[test]
    fn counts_accept_numbers_and_int64_strings_only() {
        assert_eq!(count(Some(&json!("12"))), Some(12.0));
        assert_eq!(count(Some(&json!(12))), Some(12.0));
        assert_eq!(count(Some(&json!("twelve"))), None);
        assert_eq!(count(Some(&json!(-1))), None);
        assert_eq!(count(None), None);
        assert_eq!(fraction(3.0, Some(4.0)), Some(0.75));
        assert_eq!(fraction(3.0, Some(0.0)), None);
        assert_eq!(fraction(5.0, Some(4.0)), Some(1.0));
    }

    #[test]
    fn times_parse_rfc3339_and_unix_seconds() {
        assert_eq!(
            rfc3339(Some(&json!("2024-08-21T18:37:24.100435Z"))),
            Some(Timestamp(1_724_265_444_100))
        );
        assert_eq!(
            rfc3339(Some(&json!("2024-08-21T18:37:24Z"))),
            Some(Timestamp(1_724_265_444_000))
        );
        assert_eq!(rfc3339(Some(&json!("soon"))), None);
        assert_eq!(
            unix_seconds(Some(&json!(1_724_265_444))),
            Some(Timestamp(1_724_265_444_000))
        );
    }

    #[test]
    fn upstream_times_out_of_range_are_ignored() {
        for v in [
            json!(99_999_999_999_999u64),
            json!(1e300),
            json!("99999999999999"),
            json!(12),
            json!(-5),
        ] {
            assert_eq!(unix_seconds(Some(&v)), None, "{v}");
        }
        assert_eq!(rfc3339(Some(&json!("1970-01-01T00:00:01Z"))), None);
        assert_eq!(
            rfc3339(Some(&json!("9999-12-31T23:59:59Z"))),
            Some(Timestamp(253_402_300_799_000))
        );
    }

    #[test]
    fn canonical_operations_meet_webhook_ids() {
        let b = preset("gemini-batch");
        assert_eq!(b.canonical_operation("abc"), "batches/abc");
        assert_eq!(b.canonical_operation("batches/abc"), "batches/abc");
        let i = preset("gemini-interaction");
        assert_eq!(i.canonical_operation("interactions/v1_x"), "v1_x");
        assert_eq!(i.canonical_operation("v1_x"), "v1_x");
        assert_eq!(
            preset("openai-batch").canonical_operation("batch_1"),
            "batch_1"
        );
    }

    #[test]
    fn webhook_ids_list_every_registered_form() {
        let ids = preset("gemini-batch").webhook_ids("batch_123456");
        assert_eq!(
            ids.candidates,
            vec!["batches/batch_123456", "batches/123456"]
        );
        assert_eq!(ids.suffix, None);
        let ids = preset("gemini-batch").webhook_ids("operations/9");
        assert_eq!(
            ids.candidates,
            vec!["batches/operations/9", "batches/9", "batches/batch_9"]
        );
        let ids = preset("gemini-interaction").webhook_ids("interactions/v1_x");
        assert_eq!(ids.candidates, vec!["v1_x"]);
        let ids = preset("google-operation").webhook_ids("models/veo-3/operations/x");
        assert_eq!(
            ids.candidates,
            vec!["models/veo-3/operations/x", "operations/x"]
        );
        assert_eq!(ids.suffix.as_deref(), Some("x"));
        let ids = preset("openai-batch").webhook_ids("batch_1");
        assert_eq!(ids.candidates, vec!["batch_1"]);
        assert_eq!(ids.suffix, None);
    }

    #[test]
    fn foreign_event_families_are_told_apart() {
        assert!(preset("openai-batch").foreign_event("response.completed"));
        assert!(!preset("openai-batch").foreign_event("batch.completed"));
        assert!(!preset("openai-batch").foreign_event("batch.something_new"));
        assert!(!preset("generic").foreign_event("anything.at.all"));
        assert!(!preset("replicate").foreign_event("whatever"));
    }

    #[test]
    fn status_urls_stay_under_the_base_url() {
        let base = Url::parse("https://api.example.com/v1/").unwrap();
        let ok = Url::parse("https://api.example.com/v1/batches/x").unwrap();
        assert!(ensure_under(&base, &ok).is_ok());
        for bad in [
            "https://evil.example.com/v1/batches/x",
            "http://api.example.com/v1/batches/x",
            "https://api.example.com:8443/v1/batches/x",
            "https://user:pw@api.example.com/v1/batches/x",
            "https://api.example.com/v2/batches/x",
            "https://api.example.com/v1/batches/..;/admin",
            "https://api.example.com/v1/%2e%2e;/admin",
            "https://api.example.com/v1/x/.;/admin",
        ] {
            let e = ensure_under(&base, &Url::parse(bad).unwrap()).unwrap_err();
            assert!(
                e.contains("is not under the upstream's base_url"),
                "{bad}: {e}"
            );
        }
    }

    #[test]
    fn operation_ids_with_disguised_dot_segments_are_refused() {
        for bad in [
            "..",
            "a/../b",
            "..;",
            "..;/admin",
            "x/..;jsessionid=1/admin",
            ".;/admin",
            ".;x",
            "%2e%2e",
            "%2E%2E/admin",
            "%2e%2e;/admin",
            "%2E.",
            ".%2e;x",
            "%252e%252e",
            "%2e%2e%2fadmin",
            "..\\admin",
            "a\\b",
            "x/%2e/y",
            "..%00/admin",
            "%2e%2e%3b/admin",
        ] {
            let e = validate_operation_id(bad).unwrap_err();
            assert!(e.starts_with("`operation` must not"), "{bad}: {e}");
        }
        for good in [
            "job-1",
            "a.b",
            "...",
            "a..b",
            "v1;x",
            "batches/abc",
            "%41bc",
            ".hidden",
        ] {
            assert!(validate_operation_id(good).is_ok(), "{good}");
        }
    }
}

/// Property tests of the URL guards: whatever the operation id, `status_url` (and so
/// `prepare_operation`) gives an error or a URL under the upstream's base URL.
#[cfg(test)]
mod properties {
    use super::*;
    use crate::fuzzing::{is_under, upstreams};
    use proptest::prelude::*;

    /// Operation ids built from the pieces that escape a path, besides any text.
    fn operation() -> impl Strategy<Value = String> {
        let piece = proptest::sample::select(vec![
            "..",
            ".",
            "%2e",
            "%2E%2e",
            "%252e%252e",
            "..;",
            ".%00",
            "%2f",
            "%5c",
            "\\",
            "a",
            "ops",
            "http:",
            "https://127.0.0.1:7000/api/v1/",
            "//evil.example",
            "@evil",
            "?",
            "#",
            "%",
            ":7001",
            "api",
            "v1",
            " ",
            "%20..",
        ]);
        prop_oneof![
            any::<String>(),
            "[a-z0-9./%;\\\\:?#@ eEfF]{0,24}",
            proptest::collection::vec(piece, 1..8).prop_map(|p| p.concat()),
            proptest::collection::vec(
                proptest::sample::select(vec!["..", ".", "%2e%2e", "a", "..;", "%2e", "b"]),
                1..6
            )
            .prop_map(|p| p.join("/")),
        ]
    }

    proptest! {
        #[test]
        fn status_urls_stay_under_the_base_url(op in operation()) {
            for up in upstreams() {
                if let Ok(url) = status_url(up, &op) {
                    prop_assert!(
                        is_under(&up.base_url, &url),
                        "{}: {url} from {op:?} is not under {}", up.preset.name(), up.base_url
                    );
                }
                if let Ok(canonical) = prepare_operation(up, &op) {
                    let url = status_url(up, &canonical);
                    prop_assert!(url.is_ok_and(|u| is_under(&up.base_url, &u)));
                }
            }
        }
    }
}
