//! Upstream presets: how to build the status request for an operation and how to read the
//! status response into an [`Observation`]; which webhook events each upstream sends. Everything
//! here is pure (no I/O): the poller does the HTTP, this module only knows the shapes of the
//! upstreams' JSON. One file per family: [`google`] (Google operations, Gemini batches and
//! interactions), [`openai`], [`replicate`], [`anthropic`], [`azure`]; the generic mapping lives
//! here.

mod anthropic;
mod azure;
mod google;
mod openai;
mod replicate;

use percent_encoding::{AsciiSet, CONTROLS, utf8_percent_encode};
use reqwest::Url;
use serde_json::{Value, json};

use crate::clock::Timestamp;
use crate::config::{PollConfig, UpstreamConfig};

/// The kinds of upstream hookshim knows how to read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Preset {
    /// Any JSON status endpoint, described by pointers and value lists in the config.
    Generic,
    /// A Google long-running Operation (`done`, `error` XOR `response`), e.g. Veo video jobs.
    GoogleOperation,
    /// A Gemini Batch API job (`batches/{id}`).
    GeminiBatch,
    /// A Gemini background interaction (Deep Research and other `background: true` runs).
    GeminiInteraction,
    /// An OpenAI Batch API job.
    OpenaiBatch,
    /// An OpenAI background response (`background: true`).
    OpenaiResponse,
    /// A Replicate prediction.
    Replicate,
    /// An Anthropic Message Batch.
    AnthropicBatch,
    /// An Azure asynchronous operation: the registered operation is its status URL.
    AzureAsync,
}

/// What a preset knows about the webhooks its upstream sends.
#[derive(Clone, Copy, Debug)]
pub struct WebhookDefaults {
    /// Where the operation id sits in a webhook body.
    pub operation_field: &'static str,
    /// Event-type prefixes this upstream kind owns (`"batch."`): an event of another family
    /// (an OpenAI `response.completed` sent to the batch upstream) is acknowledged and ignored.
    /// Empty: every event is considered.
    pub families: &'static [&'static str],
    /// The event types the upstream documents for this kind of job.
    pub events: &'static [&'static str],
    /// Of those, the ones that announce a pause rather than an end (never mapped to an outcome).
    pub pauses: &'static [&'static str],
}

/// What a preset fills in when the config leaves it out.
pub struct PresetDefaults {
    pub base_url: Option<&'static str>,
    pub status_path: Option<&'static str>,
    /// Default request headers; values may reference environment variables (`${VAR}`).
    pub headers: &'static [(&'static str, &'static str)],
    pub poll: PollConfig,
    /// `None`: the upstream sends no webhooks for this kind of job.
    pub webhook: Option<WebhookDefaults>,
    /// Whether the upstream can report a pause (`requires_action`).
    pub can_pause: bool,
    /// How the status response is read (for `hookshim check`).
    pub reads: &'static str,
}

const GEMINI_KEY: &[(&str, &str)] = &[("x-goog-api-key", "${GEMINI_API_KEY}")];
const OPENAI_KEY: &[(&str, &str)] = &[("Authorization", "Bearer ${OPENAI_API_KEY}")];

/// Standard Webhooks envelopes carry the job's id at `data.id`.
const fn thin(
    families: &'static [&'static str],
    events: &'static [&'static str],
    pauses: &'static [&'static str],
) -> Option<WebhookDefaults> {
    Some(WebhookDefaults {
        operation_field: "/data/id",
        families,
        events,
        pauses,
    })
}

impl Preset {
    pub const ALL: [Preset; 9] = [
        Preset::Generic,
        Preset::GoogleOperation,
        Preset::GeminiBatch,
        Preset::GeminiInteraction,
        Preset::OpenaiBatch,
        Preset::OpenaiResponse,
        Preset::Replicate,
        Preset::AnthropicBatch,
        Preset::AzureAsync,
    ];

    pub const NAMES: &'static [&'static str] = &[
        "generic",
        "google-operation",
        "gemini-batch",
        "gemini-interaction",
        "openai-batch",
        "openai-response",
        "replicate",
        "anthropic-batch",
        "azure-async",
    ];

    pub fn from_name(name: &str) -> Option<Preset> {
        Preset::ALL.into_iter().find(|p| p.name() == name)
    }

    pub fn name(self) -> &'static str {
        match self {
            Preset::Generic => "generic",
            Preset::GoogleOperation => "google-operation",
            Preset::GeminiBatch => "gemini-batch",
            Preset::GeminiInteraction => "gemini-interaction",
            Preset::OpenaiBatch => "openai-batch",
            Preset::OpenaiResponse => "openai-response",
            Preset::Replicate => "replicate",
            Preset::AnthropicBatch => "anthropic-batch",
            Preset::AzureAsync => "azure-async",
        }
    }

    pub fn defaults(self) -> PresetDefaults {
        const GEMINI: &str = "https://generativelanguage.googleapis.com/v1beta/";
        match self {
            Preset::Generic => PresetDefaults {
                base_url: None,
                status_path: None,
                headers: &[],
                poll: PollConfig::general(),
                webhook: thin(&[], &[], &[]),
                can_pause: false,
                reads: "status_field and the value lists",
            },
            // Veo and similar media jobs take seconds to minutes. No default header: the preset
            // reads any Google API's Operation, and they authenticate differently.
            Preset::GoogleOperation => PresetDefaults {
                base_url: Some(GEMINI),
                status_path: Some("{operation}"),
                headers: &[],
                poll: PollConfig::media(),
                webhook: thin(&["video."], &["video.generated"], &[]),
                can_pause: false,
                reads: "done / error / response (a Veo response without videos is failed)",
            },
            Preset::GeminiBatch => PresetDefaults {
                base_url: Some(GEMINI),
                // Operations are stored as `batches/{id}` (see `canonical_operation`).
                status_path: Some("{operation}"),
                headers: GEMINI_KEY,
                poll: PollConfig::batch(),
                webhook: thin(
                    &["batch."],
                    &[
                        "batch.succeeded",
                        "batch.failed",
                        "batch.cancelled",
                        "batch.expired",
                    ],
                    &[],
                ),
                can_pause: false,
                reads: "state or metadata.state (BATCH_STATE_* / JOB_STATE_*), batchStats, output",
            },
            // Deep Research runs for minutes and may wait on the user for hours.
            Preset::GeminiInteraction => PresetDefaults {
                base_url: Some(GEMINI),
                status_path: Some("interactions/{operation}"),
                headers: GEMINI_KEY,
                poll: PollConfig::media(),
                webhook: thin(
                    &["interaction."],
                    &[
                        "interaction.completed",
                        "interaction.failed",
                        "interaction.cancelled",
                        "interaction.requires_action",
                    ],
                    &["interaction.requires_action"],
                ),
                can_pause: true,
                reads: "status (requires_action is a pause), outputs, error",
            },
            Preset::OpenaiBatch => PresetDefaults {
                base_url: Some("https://api.openai.com/v1/"),
                status_path: Some("batches/{operation}"),
                headers: OPENAI_KEY,
                poll: PollConfig::batch(),
                webhook: thin(
                    &["batch."],
                    &[
                        "batch.completed",
                        "batch.failed",
                        "batch.expired",
                        "batch.cancelled",
                    ],
                    &[],
                ),
                can_pause: false,
                reads: "status, request_counts, output_file_id / error_file_id, errors, expires_at",
            },
            Preset::OpenaiResponse => PresetDefaults {
                base_url: Some("https://api.openai.com/v1/"),
                status_path: Some("responses/{operation}"),
                headers: OPENAI_KEY,
                poll: PollConfig::media(),
                webhook: thin(
                    &["response."],
                    &[
                        "response.completed",
                        "response.failed",
                        "response.cancelled",
                        "response.incomplete",
                    ],
                    &[],
                ),
                can_pause: false,
                reads: "status, output, error, incomplete_details",
            },
            // The webhook body is the whole prediction, so its id is at the top.
            Preset::Replicate => PresetDefaults {
                base_url: Some("https://api.replicate.com/v1/"),
                status_path: Some("predictions/{operation}"),
                headers: &[("Authorization", "Bearer ${REPLICATE_API_TOKEN}")],
                poll: PollConfig::media(),
                webhook: Some(WebhookDefaults {
                    operation_field: "/id",
                    families: &[],
                    events: &[],
                    pauses: &[],
                }),
                can_pause: false,
                reads: "status, output, error",
            },
            Preset::AnthropicBatch => PresetDefaults {
                base_url: Some("https://api.anthropic.com/v1/"),
                status_path: Some("messages/batches/{operation}"),
                headers: &[
                    ("x-api-key", "${ANTHROPIC_API_KEY}"),
                    ("anthropic-version", "2023-06-01"),
                ],
                poll: PollConfig::batch(),
                webhook: None,
                can_pause: false,
                reads: "processing_status; the outcome of an ended batch from request_counts; results_url, expires_at",
            },
            Preset::AzureAsync => PresetDefaults {
                base_url: Some("https://management.azure.com/"),
                status_path: None,
                headers: &[],
                poll: PollConfig::general(),
                webhook: None,
                can_pause: false,
                reads: "status (Succeeded / Failed / Canceled, any case), percentComplete, error; result is the whole body",
            },
        }
    }

    /// The form an operation id is stored and matched in, so that what the app registers and
    /// what a webhook names meet: Gemini batches are `batches/{id}` whether given with or
    /// without the collection, Gemini interactions are the bare id.
    pub fn canonical_operation(self, op: &str) -> String {
        match self {
            Preset::GeminiBatch if !op.starts_with("batches/") => format!("batches/{op}"),
            Preset::GeminiInteraction => op.strip_prefix("interactions/").unwrap_or(op).into(),
            _ => op.to_string(),
        }
    }

    /// Whether a webhook event of type `event_type` belongs to another kind of job (it is then
    /// acknowledged and ignored).
    pub fn foreign_event(self, event_type: &str) -> bool {
        match self.defaults().webhook {
            Some(w) if !w.families.is_empty() => {
                !w.families.iter().any(|f| event_type.starts_with(f))
            }
            _ => false,
        }
    }
}

/// The state an upstream reported, already mapped to hookshim's vocabulary.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ObservedState {
    Pending,
    Running,
    /// Paused until the user acts (a Gemini interaction's `requires_action`): not terminal; the
    /// operation stays `running` and may announce the pause with an extra callback.
    RequiresAction,
    Succeeded,
    Failed,
    Cancelled,
    Expired,
}

impl ObservedState {
    pub fn is_terminal(self) -> bool {
        !matches!(
            self,
            ObservedState::Pending | ObservedState::Running | ObservedState::RequiresAction
        )
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

impl Observation {
    fn new(state: ObservedState, raw_status: Value) -> Observation {
        Observation {
            state,
            raw_status,
            progress: None,
            result: None,
            error: None,
            expires_at: None,
        }
    }
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
    /// A preset's reader, with the fields the config may override.
    Preset {
        preset: Preset,
        /// Replaces the preset's `result` (at the end, and with a pause).
        result_field: Option<String>,
        /// Replaces the preset's `error` when the upstream's value there is not null.
        error_field: Option<String>,
        /// Read first; the preset's own progress when it is absent.
        progress_field: Option<String>,
    },
}

impl Mapping {
    pub fn build(preset: Preset, m: MappingInput) -> Result<Mapping, String> {
        if preset == Preset::Generic {
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
                    "`{k}` does not apply to preset {:?} (it reads {})",
                    preset.name(),
                    preset.defaults().reads
                ));
            }
        }
        Ok(Mapping::Preset {
            preset,
            result_field: m.result_field,
            error_field: m.error_field,
            progress_field: m.progress_field,
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
            } => json!({
                "reads": preset.defaults().reads, "result_field": result_field,
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
            Mapping::Preset {
                preset,
                result_field,
                error_field,
                progress_field,
            } => {
                let mut obs = match preset {
                    Preset::Generic => unreachable!("the generic preset has its own mapping"),
                    Preset::GoogleOperation => google::read_operation(body)?,
                    Preset::GeminiBatch => google::read_batch(body)?,
                    Preset::GeminiInteraction => google::read_interaction(body)?,
                    Preset::OpenaiBatch => openai::read_batch(body)?,
                    Preset::OpenaiResponse => openai::read_response(body)?,
                    Preset::Replicate => replicate::read_prediction(body)?,
                    Preset::AnthropicBatch => anthropic::read_batch(body)?,
                    Preset::AzureAsync => azure::read_status(body)?,
                };
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
    let url = if up.preset == Preset::AzureAsync {
        azure::operation_url(operation)?
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
    fn operation_ids_cannot_escape_the_base_url() {
        assert!(validate_operation_id("models/veo/operations/abc").is_ok());
        assert!(validate_operation_id("/etc/passwd").is_err());
        assert!(validate_operation_id("a/../../admin").is_err());
        assert!(validate_operation_id("").is_err());
    }

    #[test]
    fn every_preset_has_a_name_that_round_trips() {
        assert_eq!(Preset::ALL.len(), Preset::NAMES.len());
        for p in Preset::ALL {
            assert_eq!(Preset::from_name(p.name()), Some(p));
            assert!(Preset::NAMES.contains(&p.name()));
        }
    }

    #[test]
    fn preset_mappings_reject_generic_keys_and_name_what_they_read() {
        let e = Mapping::build(
            Preset::OpenaiBatch,
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

    #[test]
    fn overrides_replace_the_presets_result_error_and_progress() {
        let m = Mapping::build(
            Preset::Replicate,
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
        let b = Preset::GeminiBatch;
        assert_eq!(b.canonical_operation("abc"), "batches/abc");
        assert_eq!(b.canonical_operation("batches/abc"), "batches/abc");
        let i = Preset::GeminiInteraction;
        assert_eq!(i.canonical_operation("interactions/v1_x"), "v1_x");
        assert_eq!(i.canonical_operation("v1_x"), "v1_x");
        assert_eq!(
            Preset::OpenaiBatch.canonical_operation("batch_1"),
            "batch_1"
        );
    }

    #[test]
    fn foreign_event_families_are_told_apart() {
        assert!(Preset::OpenaiBatch.foreign_event("response.completed"));
        assert!(!Preset::OpenaiBatch.foreign_event("batch.completed"));
        assert!(!Preset::OpenaiBatch.foreign_event("batch.something_new"));
        assert!(!Preset::Generic.foreign_event("anything.at.all"));
        assert!(!Preset::Replicate.foreign_event("whatever"));
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
