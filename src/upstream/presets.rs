//! What a preset is: [`PresetSpec`], everything hookshim knows about one kind of upstream job
//! (name, defaults, how a status body is read, webhook events, id normalisation, the requests
//! the proxy recognises), and [`Preset`], a handle on one. Each provider family's file defines
//! its presets completely as
//! `PresetSpec` statics; the table that lists them is [`super::PRESETS`]. Adding a preset is one
//! static in its family's file plus one line in that table (a new family's file also needs its
//! `mod` line next to it).

use std::fmt;

use reqwest::Url;
use reqwest::header::HeaderMap;
use serde_json::Value;

use super::{Observation, ObservedState, PRESETS};
use crate::schedule::config::PollConfig;

/// Reads a status body into an [`Observation`]; an `Err` means the body did not have the
/// expected shape (transient, never terminal).
pub type ReadStatus = fn(&Value) -> Result<Observation, String>;

/// Parses a registered operation that is itself the status URL.
pub type OperationUrl = fn(&str) -> Result<Url, String>;

/// Checks the form of a registered operation.
pub type CheckOperation = fn(&str) -> Result<(), String>;

/// Derives the status path (relative to `base_url`) from a registered operation.
pub type OperationPath = fn(&str) -> Result<String, String>;

/// Everything hookshim knows about one kind of upstream job.
pub struct PresetSpec {
    /// The value of `preset` in the config.
    pub name: &'static str,
    /// The defaults the config may leave out.
    pub base_url: Option<&'static str>,
    pub status_path: Option<&'static str>,
    /// Default request headers; values may reference environment variables (`${VAR}`).
    pub headers: &'static [(&'static str, &'static str)],
    /// The polling schedule of this kind of job.
    pub poll: PollConfig,
    /// `None`: the upstream sends no webhooks for this kind of job.
    pub webhook: Option<WebhookDefaults>,
    /// Whether the upstream can report a pause (`requires_action`).
    pub can_pause: bool,
    /// How the status response is read (for `hookshim check` and messages).
    pub reads: &'static str,
    /// Reads a status body. `None`: the config describes the body with pointers and value lists
    /// (`status_field`, `succeeded`, ...), as for `generic`.
    pub read: Option<ReadStatus>,
    /// The form an operation id is stored and matched in (see [`Preset::canonical_operation`]).
    pub canonical_operation: fn(&str) -> String,
    /// `Some`: the registered operation is the full status URL (no `status_path`); this
    /// parses and checks it.
    pub operation_url: Option<OperationUrl>,
    /// The upstream's create and status-read requests, for proxying them (`None`: only
    /// pass-through, or, for `generic`, what `proxy.create` and `status_path` say).
    pub proxy: Option<ProxyPatterns>,
    /// `Some`: the status path is derived from the operation by this function (instead of
    /// `status_path`; e.g. Vertex's `{model}:fetchPredictOperation`). Joined to `base_url`.
    pub status_path_for: Option<OperationPath>,
    /// The status read's method; `"GET"` for most.
    pub status_method: &'static str,
    /// The status read's JSON body template (with `status_method = "POST"`): its string
    /// values get `{operation}` replaced by the operation name.
    pub status_body: Option<&'static str>,
    /// Other forms a webhook's operation id may name a registered operation in (each is put
    /// through `canonical_operation`; see [`Preset::webhook_ids`]).
    pub webhook_id_forms: fn(&str) -> Vec<String>,
    /// Whether a webhook id that matches no form is matched to a registered operation by its
    /// last path segment (a registered `models/veo-3/operations/x` and an event naming `x`).
    pub webhook_id_suffix: bool,
    /// `Some(pointer)`: when a status read says succeeded and the body has a URL string at
    /// `pointer`, the final resource is read from there once and becomes `result` (azure-core's
    /// `resourceLocation`; see [`super::final_resource_url`]).
    pub final_resource: Option<&'static str>,
    /// `Some`: a status read that says succeeded is provisional; the result is read once more
    /// and that read decides the outcome (the fal queue's `COMPLETED` says nothing about
    /// success). Unlike [`PresetSpec::final_resource`], a read that gets no usable answer is not
    /// an outcome: the poll counts as transient and the status is read again.
    pub result_read: Option<ResultRead>,
    /// `Some`: checks the form of an operation an app registers (a clear `422` at registration
    /// rather than an upstream's `400` on every read; e.g. a Bedrock job ARN).
    pub operation_check: Option<CheckOperation>,
    /// Whether the operation goes into `status_path` as one path segment, everything but
    /// letters, digits and `-._~` percent-encoded, as botocore renders a non-greedy URI label
    /// (`{jobIdentifier}`: an ARN's `:` and `/` become `%3A` and `%2F`). Otherwise `/` is kept,
    /// so that names like `batches/x` stay paths.
    pub operation_segment: bool,
    /// `Some`: an AWS API's SigV4 signing name (`metadata.signingName` of its botocore model).
    /// With `auth.aws_sigv4`, the config must sign as it, for the region `base_url` names.
    pub aws_signing_name: Option<&'static str>,
}

impl PresetSpec {
    /// The fields most presets share; a spec writes `..PresetSpec::BASE` for the rest.
    pub const BASE: PresetSpec = PresetSpec {
        name: "",
        base_url: None,
        status_path: None,
        headers: &[],
        poll: PollConfig::general(),
        webhook: None,
        can_pause: false,
        reads: "",
        read: None,
        canonical_operation: same_operation,
        operation_url: None,
        proxy: None,
        status_path_for: None,
        status_method: "GET",
        status_body: None,
        webhook_id_forms: no_other_forms,
        webhook_id_suffix: false,
        final_resource: None,
        result_read: None,
        operation_check: None,
        operation_segment: false,
        aws_signing_name: None,
    };
}

/// The operation id as registered.
pub fn same_operation(op: &str) -> String {
    op.to_string()
}

/// A webhook id names its operation in one form only.
pub fn no_other_forms(_: &str) -> Vec<String> {
    Vec::new()
}

/// The forms of a webhook's operation id to look up, best first, and the last path segment to
/// match by when none is registered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WebhookIds {
    pub candidates: Vec<String>,
    pub suffix: Option<String>,
}

/// How the proxy recognises this kind of job's requests (see `crate::proxy`). Paths are given
/// without a leading `/` and with any API-version segment (`v1`, `v1beta`, ...) removed, so
/// `/v1/batches/x` and `/v1beta/batches/x` are the same request.
#[derive(Clone, Copy, Debug)]
pub struct ProxyPatterns {
    /// Whether `method path` may create a job of this kind, and how to read it.
    pub create: fn(method: &str, path: &str) -> Option<CreateRule>,
    /// The operation a `GET` of `path` reads the status of, if it is a status read. `url` is
    /// the full upstream URL the request goes to (for presets whose operation is that URL).
    pub status_read: fn(path: &str, url: &str) -> Option<String>,
    /// The request headers that carry the app's credential, first present wins.
    pub auth_headers: &'static [&'static str],
}

/// A request that creates a job when its response is 2xx.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct CreateRule {
    /// Only when the request's JSON body has `"background": true`.
    pub needs_background: bool,
    /// Where the job's id is in the response.
    pub id: CreateId,
    /// Whether the create response body is the job resource (it seeds the kept status body).
    pub returns_job: bool,
}

/// Where a create response names the job.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum CreateId {
    /// A JSON pointer into the response body.
    Field(&'static str),
    /// The first of these response headers present (its value is the operation).
    Header(&'static [&'static str]),
}

impl CreateRule {
    /// The job's id is at `pointer` of the create response, which is the job itself.
    pub const fn field(pointer: &'static str) -> CreateRule {
        CreateRule {
            needs_background: false,
            id: CreateId::Field(pointer),
            returns_job: true,
        }
    }
    /// As [`CreateRule::field`], only for requests with `"background": true`.
    pub const fn background(pointer: &'static str) -> CreateRule {
        CreateRule {
            needs_background: true,
            ..CreateRule::field(pointer)
        }
    }
}

/// `path`'s segments, for the matchers in the family files.
pub fn segments(path: &str) -> Vec<&str> {
    path.split('/').collect()
}

/// Where a provisional success's result is and how its answer decides the outcome (see
/// [`PresetSpec::result_read`]).
#[derive(Clone, Copy, Debug)]
pub struct ResultRead {
    /// The result's location, absolute or relative to the status URL, from the status URL and
    /// the status body. Like status URLs it must lie under the upstream's `base_url`.
    pub location: fn(status_url: &Url, body: &Value) -> Option<String>,
    /// What the result read's answer (HTTP status, headers, body) means.
    pub read: fn(status: u16, headers: &HeaderMap, body: &[u8]) -> ResultOutcome,
}

/// What a result read says.
#[derive(Clone, Debug, PartialEq)]
pub enum ResultOutcome {
    /// The job succeeded with this result.
    Succeeded(Value),
    /// The job ended unsuccessfully (failed, cancelled or expired) with this error.
    Ended(ObservedState, Value),
    /// No usable answer (throttled, a gateway's error, a body that is not the result): read
    /// the status again later. The string says why, for `last_poll_error`.
    Retry(String),
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
    /// `Some(why)`: `webhook.events` cannot be mapped for this preset, and why.
    pub no_event_map: Option<&'static str>,
}

impl WebhookDefaults {
    /// Standard Webhooks envelopes carry the job's id at `data.id`.
    pub const fn thin(
        families: &'static [&'static str],
        events: &'static [&'static str],
        pauses: &'static [&'static str],
    ) -> Option<WebhookDefaults> {
        Some(WebhookDefaults {
            operation_field: "/data/id",
            families,
            events,
            pauses,
            no_event_map: None,
        })
    }
}

/// A preset: a handle on its [`PresetSpec`] in [`PRESETS`].
#[derive(Clone, Copy)]
pub struct Preset(&'static PresetSpec);

impl PartialEq for Preset {
    fn eq(&self, other: &Preset) -> bool {
        self.0.name == other.0.name
    }
}
impl Eq for Preset {}

impl fmt::Debug for Preset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Preset({:?})", self.0.name)
    }
}

const fn names<const N: usize>(table: &[Preset]) -> [&'static str; N] {
    let mut out = [""; N];
    let mut i = 0;
    while i < N {
        out[i] = table[i].0.name;
        i += 1;
    }
    out
}

impl Preset {
    /// A handle on `spec`; only the table makes them.
    pub(super) const fn new(spec: &'static PresetSpec) -> Preset {
        Preset(spec)
    }

    /// Every preset, in table order ([`PRESETS`]).
    pub const ALL: &'static [Preset] = PRESETS;

    /// The names of every preset, in table order.
    pub const NAMES: &'static [&'static str] = &names::<{ PRESETS.len() }>(PRESETS);

    /// Every preset, in table order.
    pub fn all() -> impl Iterator<Item = Preset> {
        PRESETS.iter().copied()
    }

    pub fn from_name(name: &str) -> Option<Preset> {
        Preset::all().find(|p| p.name() == name)
    }

    pub fn name(self) -> &'static str {
        self.0.name
    }

    /// Everything the preset defines.
    pub fn defaults(self) -> &'static PresetSpec {
        self.0
    }

    /// The form an operation id is stored and matched in, so that what the app registers and
    /// what a webhook names meet (Gemini batches are `batches/{id}` whether given with or
    /// without the collection, Gemini interactions are the bare id).
    pub fn canonical_operation(self, op: &str) -> String {
        (self.0.canonical_operation)(op)
    }

    /// The registered forms a webhook's operation id may stand for: its canonical form first
    /// (where an event for an operation not registered yet is kept), then the preset's other
    /// forms, canonicalised, without repeats.
    pub fn webhook_ids(self, raw: &str) -> WebhookIds {
        let mut candidates = vec![self.canonical_operation(raw)];
        for form in (self.0.webhook_id_forms)(raw) {
            let c = self.canonical_operation(&form);
            if !form.is_empty() && !candidates.contains(&c) {
                candidates.push(c);
            }
        }
        let suffix = self
            .0
            .webhook_id_suffix
            .then(|| raw.rsplit('/').next().unwrap_or(raw).to_string())
            .filter(|s| !s.is_empty());
        WebhookIds { candidates, suffix }
    }

    /// Whether a webhook event of type `event_type` belongs to another kind of job (it is then
    /// acknowledged and ignored).
    pub fn foreign_event(self, event_type: &str) -> bool {
        match self.0.webhook {
            Some(w) if !w.families.is_empty() => {
                !w.families.iter().any(|f| event_type.starts_with(f))
            }
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_has_unique_names_and_consistent_specs() {
        assert_eq!(Preset::NAMES.len(), PRESETS.len());
        for (i, p) in PRESETS.iter().enumerate() {
            let spec = p.defaults();
            assert!(!spec.name.is_empty());
            assert_eq!(Preset::NAMES[i], spec.name);
            assert!(
                PRESETS[..i].iter().all(|q| q.name() != p.name()),
                "two presets named {:?}",
                p.name()
            );
            assert!(!spec.reads.is_empty(), "{} says what it reads", p.name());
            // A preset whose operation is the status URL has no status path to fill in.
            assert!(spec.operation_url.is_none() || spec.status_path.is_none());
            assert_eq!(
                spec.proxy.is_none(),
                spec.name == "generic",
                "every preset but generic has proxy patterns"
            );
            assert!(spec.status_path_for.is_none() || spec.status_path.is_none());
            // One second read after success at most.
            assert!(spec.final_resource.is_none() || spec.result_read.is_none());
            assert!(["GET", "POST"].contains(&spec.status_method));
            if let Some(body) = spec.status_body {
                let v: serde_json::Value = serde_json::from_str(body).unwrap();
                assert!(v.is_object(), "{} status_body is a JSON object", p.name());
            }
        }
        assert_eq!(format!("{:?}", PRESETS[0]), "Preset(\"generic\")");
    }
}
