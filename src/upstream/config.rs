//! An upstream's configuration, `[upstreams.<name>]`: its preset, where its status endpoint is,
//! the request headers, how the status body is read, and its `rate`, `poll` (see
//! [`crate::schedule::config`]) and `webhook` (see [`super::webhook`]) sections. The preset
//! fills in whatever the section leaves out.

use std::collections::BTreeMap;
use std::time::Duration;

use reqwest::Url;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use serde::Deserialize;

use super::webhook::{RawWebhook, WebhookConfig, resolve_webhook};
use super::{Mapping, MappingInput, Preset, PresetSpec};
use crate::credentials::{AuthConfig, AuthSource, RawAuth, resolve_auth};
use crate::schedule::config::{
    PollConfig, RateConfig, RawPoll, RawRate, resolve_poll, resolve_rate,
};
use crate::values::{Dur, EnvLookup, check_pointer, expand_env};

/// One `[upstreams.<name>]` section as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawUpstream {
    #[serde(default = "d_preset")]
    preset: String,
    base_url: Option<String>,
    status_path: Option<String>,
    status_method: Option<String>,
    status_body: Option<serde_json::Value>,
    #[serde(default)]
    headers: BTreeMap<String, String>,
    status_field: Option<String>,
    pending: Option<Vec<String>>,
    succeeded: Option<Vec<String>>,
    failed: Option<Vec<String>>,
    cancelled: Option<Vec<String>>,
    expired: Option<Vec<String>>,
    running: Option<Vec<String>>,
    result_field: Option<String>,
    error_field: Option<String>,
    progress_field: Option<String>,
    #[serde(default = "d_not_found")]
    not_found_after: u32,
    #[serde(default = "d_req_timeout")]
    timeout: Dur,
    rate: Option<RawRate>,
    #[serde(default)]
    poll: RawPoll,
    webhook: Option<RawWebhook>,
    #[serde(default)]
    callback_events: Vec<String>,
    auth: Option<RawAuth>,
    proxy: Option<RawProxy>,
}

/// `[upstreams.<name>] proxy = { ... }` as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawProxy {
    #[serde(default)]
    enabled: bool,
    callback_url: Option<String>,
    max_wait: Option<Dur>,
    create: Option<RawProxyCreate>,
}

/// `proxy.create = { method, path, id_field }` (generic upstreams).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawProxyCreate {
    #[serde(default = "d_post")]
    method: String,
    path: String,
    id_field: String,
}
fn d_post() -> String {
    "POST".into()
}

/// The proxy's settings for one upstream (`proxy = { ... }`, off by default).
#[derive(Clone, Debug)]
pub struct ProxyConfig {
    /// Only upstreams with `enabled = true` answer under `/proxy/<name>/`.
    pub enabled: bool,
    /// The callback URL of operations the proxy registers when the request names none (checked
    /// against `callbacks.allowed_hosts` by the config loader); else `callbacks.default_url`.
    pub callback_url: Option<String>,
    /// How long a proxied request may wait for the upstream's budget before `429`.
    pub max_wait: Duration,
    /// A generic upstream's create request.
    pub create: Option<GenericCreate>,
}

impl Default for ProxyConfig {
    fn default() -> Self {
        ProxyConfig {
            enabled: false,
            callback_url: None,
            max_wait: DEFAULT_PROXY_MAX_WAIT,
            create: None,
        }
    }
}

/// The default `proxy.max_wait`.
pub const DEFAULT_PROXY_MAX_WAIT: Duration = Duration::from_secs(5);

/// A generic upstream's create request: `method path` (version segment removed, no leading
/// `/`), the job's id at the JSON pointer `id_field` of the response.
#[derive(Clone, Debug)]
pub struct GenericCreate {
    pub method: String,
    pub path: String,
    pub id_field: String,
}
fn d_preset() -> String {
    "generic".into()
}
fn d_not_found() -> u32 {
    3
}
fn d_req_timeout() -> Dur {
    Dur(Duration::from_secs(30))
}

#[derive(Clone, Debug)]
pub struct UpstreamConfig {
    pub name: String,
    pub preset: Preset,
    pub base_url: Url,
    pub status_path: String,
    /// The status read's method (`GET`, or `POST` with [`Self::status_body`]).
    pub status_method: reqwest::Method,
    /// The status read's JSON body template (see [`super::status_body`]).
    pub status_body: Option<serde_json::Value>,
    /// Resolved headers (values may hold secrets; never print them).
    pub headers: HeaderMap,
    /// The header templates as written, for `hookshim check`.
    pub header_templates: BTreeMap<String, String>,
    pub mapping: Mapping,
    pub not_found_after: u32,
    pub timeout: Duration,
    pub rate: RateConfig,
    pub poll: PollConfig,
    /// `poll.prior_key`: a JSON pointer into an operation's metadata whose value picks the
    /// learned job-length prior it uses (`None`: one prior for the whole upstream).
    pub prior_key: Option<String>,
    pub webhook: Option<WebhookConfig>,
    /// Callbacks sent besides the terminal one (see [`CALLBACK_EVENTS`]).
    pub callback_events: Vec<String>,
    /// The transparent proxy (`/proxy/<name>/...`).
    pub proxy: ProxyConfig,
    /// A credential that refreshes (`auth`): its header replaces any static one of that name.
    pub auth: Option<AuthConfig>,
}

/// The non-terminal callback events an upstream may ask for in `callback_events`.
pub const CALLBACK_EVENTS: &[&str] = &["requires_action"];

impl UpstreamConfig {
    /// What the poll-outcome rules read of this upstream.
    pub fn rules(&self) -> crate::schedule::PollRules {
        crate::schedule::PollRules {
            poll: self.poll,
            not_found_after: self.not_found_after,
            safety_poll: self.webhook.as_ref().map(|w| w.safety_poll),
        }
    }
}

/// Resolve upstream `name`'s section: the preset's defaults under what the section writes, every
/// key checked. Errors name the key (`upstreams.<name>.<key>`) and say what to write.
pub fn resolve_upstream(
    name: &str,
    mut u: RawUpstream,
    env: EnvLookup<'_>,
) -> Result<UpstreamConfig, String> {
    let key = |k: &str| format!("upstreams.{name}.{k}");
    let preset = Preset::from_name(&u.preset).ok_or_else(|| {
        format!(
            "`{}`: unknown preset {:?}; expected one of: {}",
            key("preset"),
            u.preset,
            Preset::NAMES.join(", ")
        )
    })?;
    let defaults = preset.defaults();
    // Without polling, nothing reads the status endpoint: base_url, status_path and the status
    // mapping may be left out (placeholders keep the rest of the code uniform).
    let polling = u.poll.enabled();
    let base_url = resolve_base_url(&key, &u, defaults, polling)?;
    let (status_method, status_body) = resolve_status_read(&key, &u, defaults)?;
    let status_path = resolve_status_path(&key, &u, defaults, polling, status_body.as_ref())?;
    let auth = u
        .auth
        .take()
        .map(|a| resolve_auth(name, a, env))
        .transpose()?;
    if let (Some(signing_name), Some(AuthSource::AwsSigV4(s))) =
        (defaults.aws_signing_name, auth.as_ref().map(|a| &a.source))
    {
        check_sigv4_scope(signing_name, &base_url, &s.service, &s.region)
            .map_err(|e| format!("`{}`: {e}", key("auth.aws_sigv4")))?;
    }
    let (header_templates, headers) =
        resolve_headers(&key, defaults, &u.headers, auth.as_ref(), env)?;
    let mapping = resolve_mapping(name, preset, polling, &u)?;
    let prefix = format!("upstreams.{name}");
    let rate = resolve_rate(&prefix, u.rate)?;
    let poll = resolve_poll(&prefix, &u.poll, defaults.poll)?;
    let prior_key = u.poll.prior_key(&prefix)?;

    let webhook = match u.webhook {
        None => None,
        Some(w) => {
            let Some(wd) = defaults.webhook else {
                return Err(format!(
                    "`{}`: preset {:?} has no webhooks for this kind of job; it is polled",
                    key("webhook"),
                    u.preset
                ));
            };
            Some(resolve_webhook(name, preset, &wd, w, env)?)
        }
    };
    if !polling && webhook.as_ref().is_none_or(|w| w.events.is_empty()) {
        return Err(format!(
            "`{}`: with polling off only a webhook event mapped in `webhook.events` (or the \
             deadline) can end an operation; add a [upstreams.{name}.webhook] section with `events`",
            key("poll.enabled")
        ));
    }
    check_callback_events(&key, defaults, &u.preset, &u.callback_events)?;
    let proxy = resolve_proxy(&key, defaults, u.proxy)?;

    Ok(UpstreamConfig {
        name: name.to_string(),
        preset,
        base_url,
        status_path,
        status_method,
        status_body,
        headers,
        header_templates,
        mapping,
        not_found_after: u.not_found_after.max(1),
        timeout: u.timeout.0,
        rate,
        poll,
        prior_key,
        webhook,
        callback_events: u.callback_events,
        proxy,
        auth,
    })
}

/// A SigV4 signature for another service or region than the endpoint's is refused by AWS with
/// `403` on every read (the job would end `timed_out`): the service must be the API's signing
/// name, and the region the one an `{endpoint}.{region}.amazonaws.com` base URL names.
fn check_sigv4_scope(
    signing_name: &str,
    base_url: &Url,
    service: &str,
    region: &str,
) -> Result<(), String> {
    if service != signing_name {
        return Err(format!(
            "this API signs as service {signing_name:?}, not {service:?}"
        ));
    }
    let host = base_url.host_str().unwrap_or_default();
    if let Some([_, host_region]) = host
        .strip_suffix(".amazonaws.com")
        .map(|h| h.split('.').collect::<Vec<_>>())
        .as_deref()
    {
        if *host_region != region {
            return Err(format!(
                "region {region:?} is not the region of base_url {base_url} ({host_region:?})"
            ));
        }
    }
    Ok(())
}

/// `proxy`: off unless `enabled`; `create` only for a preset without its own patterns.
fn resolve_proxy(
    key: &dyn Fn(&str) -> String,
    defaults: &PresetSpec,
    raw: Option<RawProxy>,
) -> Result<ProxyConfig, String> {
    let Some(raw) = raw else {
        return Ok(ProxyConfig::default());
    };
    let max_wait = raw.max_wait.map_or(DEFAULT_PROXY_MAX_WAIT, |d| d.0);
    if max_wait > Duration::from_secs(300) {
        return Err(format!(
            "`{}`: at most \"300s\"; an app waiting longer should retry after a 429",
            key("proxy.max_wait")
        ));
    }
    let create = match raw.create {
        None => None,
        Some(_) if defaults.proxy.is_some() => {
            return Err(format!(
                "`{}`: preset {:?} knows its own create requests; remove it",
                key("proxy.create"),
                defaults.name
            ));
        }
        Some(c) => {
            let method = c.method.to_ascii_uppercase();
            if method.is_empty() || !method.chars().all(|ch| ch.is_ascii_alphabetic()) {
                return Err(format!(
                    "`{}`: {:?} is not an HTTP method; write e.g. \"POST\"",
                    key("proxy.create.method"),
                    c.method
                ));
            }
            let path = c.path.trim_matches('/').to_string();
            if path.is_empty() {
                return Err(format!(
                    "`{}`: write the create path below the API version, e.g. \"jobs\"",
                    key("proxy.create.path")
                ));
            }
            let id_field = check_pointer(&key("proxy.create.id_field"), &c.id_field)?;
            Some(GenericCreate {
                method,
                path,
                id_field,
            })
        }
    };
    Ok(ProxyConfig {
        enabled: raw.enabled,
        callback_url: raw.callback_url,
        max_wait,
        create,
    })
}

/// `base_url`: written, or the preset's; an http(s) URL whose path ends in `/`.
fn resolve_base_url(
    key: &dyn Fn(&str) -> String,
    u: &RawUpstream,
    defaults: &PresetSpec,
    polling: bool,
) -> Result<Url, String> {
    let base = u
        .base_url
        .clone()
        .or(defaults.base_url.map(str::to_string))
        .or((!polling).then(|| "http://127.0.0.1/".to_string()))
        .ok_or_else(|| format!("`{}`: required for preset {:?}", key("base_url"), u.preset))?;
    let mut base_url = Url::parse(&base)
        .map_err(|e| format!("`{}`: {base:?} is not a valid URL ({e})", key("base_url")))?;
    if base_url.scheme() != "http" && base_url.scheme() != "https" {
        return Err(format!(
            "`{}`: {base:?} must use http or https",
            key("base_url")
        ));
    }
    if !base_url.path().ends_with('/') {
        // So that joining "jobs/{operation}" appends instead of replacing the last segment.
        let p = format!("{}/", base_url.path());
        base_url.set_path(&p);
    }
    Ok(base_url)
}

/// `status_method` and `status_body`: written, or the preset's. `GET` or `POST`; a body only
/// with `POST`, and it is a table (a JSON object).
fn resolve_status_read(
    key: &dyn Fn(&str) -> String,
    u: &RawUpstream,
    defaults: &PresetSpec,
) -> Result<(reqwest::Method, Option<serde_json::Value>), String> {
    let method = match u
        .status_method
        .as_deref()
        .unwrap_or(defaults.status_method)
        .to_ascii_uppercase()
        .as_str()
    {
        "GET" => reqwest::Method::GET,
        "POST" => reqwest::Method::POST,
        other => {
            return Err(format!(
                "`{}`: {other:?} is not supported; write \"GET\" or \"POST\"",
                key("status_method")
            ));
        }
    };
    let body = match (&u.status_body, defaults.status_body) {
        (Some(b), _) => Some(b.clone()),
        (None, Some(t)) => Some(serde_json::from_str(t).map_err(|e| {
            format!(
                "`{}`: the preset's template does not parse ({e})",
                key("status_body")
            )
        })?),
        (None, None) => None,
    };
    if let Some(b) = &body {
        if !b.is_object() {
            return Err(format!(
                "`{}`: must be a table, e.g. status_body = {{ operationName = \"{{operation}}\" }}",
                key("status_body")
            ));
        }
        if method != reqwest::Method::POST {
            return Err(format!(
                "`{}`: a status body needs status_method = \"POST\"",
                key("status_body")
            ));
        }
    }
    Ok((method, body))
}

/// Whether a body template names the operation in one of its string values.
fn names_operation(v: &serde_json::Value) -> bool {
    match v {
        serde_json::Value::String(s) => s.contains("{operation}"),
        serde_json::Value::Array(a) => a.iter().any(names_operation),
        serde_json::Value::Object(o) => o.values().any(names_operation),
        _ => false,
    }
}

/// `status_path`: written, or the preset's; it must contain `{operation}` (or the status body
/// template must). A preset whose registered operation is the status URL itself takes none; a
/// preset that derives the path from the operation needs none.
fn resolve_status_path(
    key: &dyn Fn(&str) -> String,
    u: &RawUpstream,
    defaults: &PresetSpec,
    polling: bool,
    status_body: Option<&serde_json::Value>,
) -> Result<String, String> {
    if defaults.status_path_for.is_some() && u.status_path.is_none() {
        return Ok(super::PATH_FROM_OPERATION.to_string());
    }
    let operation_is_url = defaults.operation_url.is_some();
    if operation_is_url && u.status_path.is_some() {
        return Err(format!(
            "`{}`: does not apply to preset {:?} (the registered operation is the full status URL)",
            key("status_path"),
            defaults.name
        ));
    }
    let status_path = u
        .status_path
        .clone()
        .or(defaults.status_path.map(str::to_string))
        .or((operation_is_url || !polling).then(|| "{operation}".to_string()))
        .ok_or_else(|| {
            format!(
                "`{}`: required for preset {:?}",
                key("status_path"),
                u.preset
            )
        })?;
    if !status_path.contains("{operation}") && !status_body.is_some_and(names_operation) {
        return Err(format!(
            "`{}`: {status_path:?} must contain \"{{operation}}\" (or a string in \
             status_body must)",
            key("status_path")
        ));
    }
    Ok(status_path)
}

/// The request headers: the preset's first; a header the config names (in any case) replaces
/// the preset's, and an empty value removes it. Returns the templates as written (for `hookshim
/// check`) and the headers with `${VAR}`s expanded, marked sensitive. With `auth`, the header
/// it sets (Authorization for SigV4) is the credential's: the preset's is dropped, and writing
/// it in `headers` as well is an error.
fn resolve_headers(
    key: &dyn Fn(&str) -> String,
    defaults: &PresetSpec,
    written: &BTreeMap<String, String>,
    auth: Option<&AuthConfig>,
    env: EnvLookup<'_>,
) -> Result<(BTreeMap<String, String>, HeaderMap), String> {
    let auth_header = auth.map(|a| match a.source {
        AuthSource::AwsSigV4(_) => "authorization",
        _ => a.sets_header().as_str(),
    });
    if let Some(h) = auth_header {
        if let Some(k) = written.keys().find(|k| k.eq_ignore_ascii_case(h)) {
            return Err(format!(
                "`{}`: `auth` sets this header; remove it from `headers` (or remove `auth`)",
                key(&format!("headers.{k}"))
            ));
        }
    }
    let mut templates: BTreeMap<String, String> = defaults
        .headers
        .iter()
        .filter(|(name, _)| !written.keys().any(|k| k.eq_ignore_ascii_case(name)))
        .filter(|(name, _)| auth_header.is_none_or(|h| !h.eq_ignore_ascii_case(name)))
        .map(|(name, value)| (name.to_string(), value.to_string()))
        .collect();
    templates.extend(
        written
            .iter()
            .filter(|(_, v)| !v.is_empty())
            .map(|(k, v)| (k.clone(), v.clone())),
    );
    let mut headers = HeaderMap::new();
    for (hk, hv) in &templates {
        let k = key(&format!("headers.{hk}"));
        let value = expand_env(&k, hv, env)?;
        let name = HeaderName::from_bytes(hk.as_bytes())
            .map_err(|_| format!("`{k}`: {hk:?} is not a valid header name"))?;
        let mut value = HeaderValue::from_str(&value)
            .map_err(|_| format!("`{k}`: the value is not a valid header value"))?;
        value.set_sensitive(true);
        headers.insert(name, value);
    }
    Ok((templates, headers))
}

/// How the status body is read: the preset's reader with the overrides, or, for a preset
/// without a reader, the pointers and value lists of the section.
fn resolve_mapping(
    name: &str,
    preset: Preset,
    polling: bool,
    u: &RawUpstream,
) -> Result<Mapping, String> {
    let ptr = |field: &str, v: &Option<String>| -> Result<Option<String>, String> {
        v.as_ref()
            .map(|p| check_pointer(&format!("upstreams.{name}.{field}"), p))
            .transpose()
    };
    // A described mapping that is never read (polling off) gets placeholders.
    let unread = !polling && preset.defaults().read.is_none() && u.status_field.is_none();
    let placeholder = |v: &Option<Vec<String>>, s: &str| match v {
        None if unread => Some(vec![s.to_string()]),
        v => v.clone(),
    };
    Mapping::build(
        preset,
        MappingInput {
            status_field: ptr("status_field", &u.status_field)?
                .or(unread.then(|| "/status".to_string())),
            pending: u.pending.clone(),
            succeeded: placeholder(&u.succeeded, "succeeded"),
            failed: placeholder(&u.failed, "failed"),
            cancelled: u.cancelled.clone(),
            expired: u.expired.clone(),
            running: u.running.clone(),
            result_field: ptr("result_field", &u.result_field)?,
            error_field: ptr("error_field", &u.error_field)?,
            progress_field: ptr("progress_field", &u.progress_field)?,
        },
    )
    .map_err(|e| format!("`upstreams.{name}`: {e}"))
}

/// `callback_events`: known events, and only for a preset whose upstream can report them.
fn check_callback_events(
    key: &dyn Fn(&str) -> String,
    defaults: &PresetSpec,
    preset_name: &str,
    events: &[String],
) -> Result<(), String> {
    for ev in events {
        if !CALLBACK_EVENTS.contains(&ev.as_str()) {
            return Err(format!(
                "`{}`: unknown callback event {ev:?}; expected one of: {}",
                key("callback_events"),
                CALLBACK_EVENTS.join(", ")
            ));
        }
        if !defaults.can_pause {
            let pausing: Vec<String> = Preset::all()
                .filter(|p| p.defaults().can_pause)
                .map(|p| format!("{:?}", p.name()))
                .collect();
            return Err(format!(
                "`{}`: preset {:?} never reports {ev}; only {} does",
                key("callback_events"),
                preset_name,
                pausing.join(", ")
            ));
        }
    }
    Ok(())
}

/// Fixtures shared by the tests of the upstream configuration and the whole file.
#[cfg(test)]
pub(crate) mod testing {
    use super::*;

    pub fn env(name: &str) -> Option<String> {
        match name {
            "JOBS_TOKEN" => Some("t0k".into()),
            "JOBS_WEBHOOK_SECRET" => Some("whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD".into()),
            "OLD_SECRET" => Some("whsec_b2xkIHNlY3JldCBieXRlcw==".into()),
            // RFC 8032 test 1's public key, and its private half in whsk_ form.
            "ED_PUBLIC" => Some("whpk_11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHURo=".into()),
            "ED_PRIVATE" => Some("whsk_nWGxne/9WmC6hEr0kuwsxERJxWl7MmkZcDusAxyuf2A=".into()),
            "SHORT_PUBLIC" => Some("whpk_AAEC".into()),
            "STRIPE_SECRET" => Some("whsec_stripe_as_is".into()),
            _ => None,
        }
    }

    pub const GOOD: &str = r#"
[server]
listen = "127.0.0.1:8680"
max_body = "1MiB"
[store]
path = "data"
cache = "64MiB"
[callbacks]
default_url = "http://127.0.0.1:9000/callback"
retry_schedule = ["5s", "5m"]
[upstreams.jobs]
preset = "generic"
base_url = "http://127.0.0.1:7000/"
status_path = "jobs/{operation}"
headers = { Authorization = "Bearer ${JOBS_TOKEN}" }
status_field = "/state"
succeeded = ["done"]
failed = ["error"]
rate = { per_second = 10, burst = 10 }
poll = { initial = "1s", multiplier = 1.5, max = "30s", jitter = 0.1, deadline = "24h" }
[upstreams.jobs.webhook]
scheme = "standard-webhooks"
secret_env = "JOBS_WEBHOOK_SECRET"
operation_field = "/data/id"
safety_poll = "10m"
"#;

    /// Resolve the `[upstreams]` of a config text (the other sections are not read here).
    /// Errors name the dotted key like the file's loader does.
    pub fn parse(
        text: &str,
        env: EnvLookup<'_>,
    ) -> Result<BTreeMap<String, UpstreamConfig>, String> {
        #[derive(Deserialize)]
        struct Doc {
            #[serde(default)]
            upstreams: BTreeMap<String, RawUpstream>,
        }
        let table: toml::Table = toml::from_str(text).map_err(|e| e.to_string())?;
        let doc: Doc = serde_path_to_error::deserialize(toml::Value::Table(table))
            .map_err(|e| format!("`{}`: {}", e.path(), e.inner()))?;
        doc.upstreams
            .into_iter()
            .map(|(name, u)| resolve_upstream(&name, u, env).map(|c| (name, c)))
            .collect()
    }

    pub fn err_of(text: &str) -> String {
        parse(text, &env).unwrap_err()
    }
}

#[cfg(test)]
mod tests;
