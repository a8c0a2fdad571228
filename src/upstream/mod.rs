//! Upstreams: how to build the status request for an operation and how to read the status
//! response into an [`Observation`]; which webhook events each upstream sends; and each
//! upstream's configuration. Reading is pure (no I/O): the poller does the HTTP, this module
//! only knows the shapes of the upstreams' JSON.
//!
//! - [`PRESETS`]: the table of presets; [`presets`]: [`PresetSpec`] and the [`Preset`] handle.
//! - One file per provider family defines its presets completely: `generic`, `google` (Google
//!   operations, Vertex batch prediction jobs, Gemini batches and interactions), `openai`,
//!   `replicate`, `runway`, `anthropic`, `azure`, `aws` (Bedrock batch jobs and async
//!   invocations), `fal`, `mistral`, `together`, `fireworks`.
//! - [`config`]: `[upstreams.<name>]` resolved into an [`UpstreamConfig`].
//! - [`webhook`]: `[upstreams.<name>.webhook]` resolved into a [`WebhookConfig`].
//! - Here: the status [`Mapping`] (the generic reader and the presets' overrides), the helpers
//!   the readers share, and status URLs.

mod anthropic;
mod aws;
mod azure;
pub mod config;
mod fal;
mod fireworks;
mod generic;
mod google;
mod mistral;
mod openai;
pub mod presets;
mod replicate;
mod runway;
mod together;
pub mod webhook;

use percent_encoding::{AsciiSet, CONTROLS, utf8_percent_encode};
use reqwest::Url;
use serde_json::{Value, json};

use crate::clock::Timestamp;

pub use self::config::{CALLBACK_EVENTS, UpstreamConfig};
pub use self::presets::{
    CreateId, CreateRule, Preset, PresetSpec, ProxyPatterns, ResultOutcome, ResultRead,
    WebhookDefaults,
};
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
    Preset::new(&google::VERTEX_BATCH),
    Preset::new(&google::BATCH),
    Preset::new(&google::INTERACTION),
    Preset::new(&openai::BATCH),
    Preset::new(&openai::RESPONSE),
    Preset::new(&replicate::PREDICTION),
    Preset::new(&runway::TASK),
    Preset::new(&anthropic::BATCH),
    Preset::new(&azure::ASYNC),
    Preset::new(&fal::QUEUE),
    Preset::new(&mistral::BATCH),
    Preset::new(&together::BATCH),
    Preset::new(&fireworks::BATCH),
    Preset::new(&aws::BATCH),
    Preset::new(&aws::ASYNC_INVOKE),
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

/// Characters escaped when an operation id is put into a URL path as one segment
/// ([`PresetSpec::operation_segment`]): all but letters, digits and `-._~`, as botocore's
/// `percent_encode` (`SAFE_CHARS = '-._~'`) renders a non-greedy URI label.
const SEGMENT_ESCAPE: &AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

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
    if let Some(check) = up.preset.defaults().operation_check {
        check(&canonical)?;
    }
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
        let escape = if up.preset.defaults().operation_segment {
            SEGMENT_ESCAPE
        } else {
            PATH_ESCAPE
        };
        let encoded = utf8_percent_encode(operation, escape).to_string();
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

/// Where to read the result of an operation whose preset decides success by a result read
/// ([`PresetSpec::result_read`]): `Ok(None)` when the preset has none or the status body names
/// none. Like status URLs it must lie under the upstream's `base_url`.
pub fn result_url(
    up: &UpstreamConfig,
    status_url: &Url,
    body: &Value,
) -> Result<Option<Url>, String> {
    let Some(rr) = up.preset.defaults().result_read else {
        return Ok(None);
    };
    let Some(location) = (rr.location)(status_url, body) else {
        return Ok(None);
    };
    let url = status_url
        .join(&location)
        .map_err(|e| format!("the result location {location:?} is not a URL ({e})"))?;
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
mod tests;

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
