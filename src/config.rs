//! `shim.toml`: the schema, its defaults, and validation with messages that name the file, the
//! key and what is wrong. Everything the rest of the program reads from configuration is the
//! resolved [`Config`]: environment variables expanded, URLs parsed, JSON pointers checked.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::Engine;
use reqwest::Url;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use serde::{Deserialize, Deserializer};

use crate::clock::Timestamp;
use crate::operation::Status;
use crate::upstream::{Mapping, Preset};

/// An error in the configuration: which file, which key, what is wrong.
#[derive(Debug, thiserror::Error)]
#[error("{file}: {message}")]
pub struct ConfigError {
    pub file: String,
    pub message: String,
}

/// How environment variables are read while resolving the config (tests pass a map).
pub type EnvLookup<'a> = &'a dyn Fn(&str) -> Option<String>;

/// The process environment.
pub fn process_env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

/// A duration written as humantime text: `"1s"`, `"250ms"`, `"2h 30m"`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Dur(pub Duration);

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        humantime::parse_duration(&s).map(Dur).map_err(|e| {
            serde::de::Error::custom(format!(
                "invalid duration {s:?} ({e}); write e.g. \"500ms\", \"5s\", \"2h\""
            ))
        })
    }
}

/// A size written as text: `"1MiB"`, `"64 MiB"`, `"512KB"`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Size(pub u64);

impl<'de> Deserialize<'de> for Size {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse::<bytesize::ByteSize>()
            .map(|b| Size(b.as_u64()))
            .map_err(|e| {
                serde::de::Error::custom(format!("invalid size {s:?} ({e}); write e.g. \"1MiB\""))
            })
    }
}

// ---------------------------------------------------------------------------------------------
// The file as written.

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    server: RawServer,
    #[serde(default)]
    store: RawStore,
    #[serde(default)]
    callbacks: RawCallbacks,
    #[serde(default)]
    workers: RawWorkers,
    #[serde(default)]
    upstreams: BTreeMap<String, RawUpstream>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawServer {
    #[serde(default = "d_listen")]
    listen: String,
    #[serde(default = "d_token_env")]
    api_token_env: String,
    #[serde(default = "d_max_body")]
    max_body: Size,
    #[serde(default = "d_max_upstream_body")]
    max_upstream_body: Size,
    #[serde(default = "d_max_connections")]
    max_connections: usize,
    #[serde(default = "d_header_read_timeout")]
    header_read_timeout: Dur,
}
fn d_max_connections() -> usize {
    1024
}
fn d_header_read_timeout() -> Dur {
    Dur(Duration::from_secs(30))
}
fn d_max_upstream_body() -> Size {
    Size(4 << 20)
}
fn d_listen() -> String {
    "127.0.0.1:8680".into()
}
fn d_token_env() -> String {
    "HOOKSHIM_API_TOKEN".into()
}
fn d_max_body() -> Size {
    Size(1 << 20)
}
impl Default for RawServer {
    fn default() -> Self {
        RawServer {
            listen: d_listen(),
            api_token_env: d_token_env(),
            max_body: d_max_body(),
            max_upstream_body: d_max_upstream_body(),
            max_connections: d_max_connections(),
            header_read_timeout: d_header_read_timeout(),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStore {
    #[serde(default = "d_path")]
    path: PathBuf,
    #[serde(default = "d_cache")]
    cache: Size,
}
fn d_path() -> PathBuf {
    "data".into()
}
fn d_cache() -> Size {
    Size(64 << 20)
}
impl Default for RawStore {
    fn default() -> Self {
        RawStore {
            path: d_path(),
            cache: d_cache(),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCallbacks {
    default_url: Option<String>,
    #[serde(default = "d_secret_env")]
    secret_env: String,
    #[serde(default = "d_allowed")]
    allowed_hosts: Vec<String>,
    #[serde(default = "d_cb_timeout")]
    timeout: Dur,
    #[serde(default = "d_retry")]
    retry_schedule: Vec<Dur>,
}
fn d_secret_env() -> String {
    "HOOKSHIM_CALLBACK_SECRET".into()
}
fn d_allowed() -> Vec<String> {
    vec!["127.0.0.1".into(), "localhost".into(), "::1".into()]
}
fn d_cb_timeout() -> Dur {
    Dur(Duration::from_secs(15))
}
fn d_retry() -> Vec<Dur> {
    ["5s", "5m", "30m", "2h", "5h", "10h", "10h"]
        .iter()
        .map(|s| Dur(humantime::parse_duration(s).unwrap_or_default()))
        .collect()
}
impl Default for RawCallbacks {
    fn default() -> Self {
        RawCallbacks {
            default_url: None,
            secret_env: d_secret_env(),
            allowed_hosts: d_allowed(),
            timeout: d_cb_timeout(),
            retry_schedule: d_retry(),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWorkers {
    #[serde(default = "d_polls")]
    polls_in_flight: usize,
    #[serde(default = "d_deliveries")]
    deliveries_in_flight: usize,
    /// Default: three quarters of `polls_in_flight` (at least 1).
    polls_in_flight_per_upstream: Option<usize>,
    /// Default: three quarters of `deliveries_in_flight` (at least 1).
    deliveries_in_flight_per_host: Option<usize>,
}
/// The default share of the in-flight slots one upstream (or callback host) may hold.
fn share(total: usize) -> usize {
    (total * 3 / 4).max(1)
}
fn d_polls() -> usize {
    64
}
fn d_deliveries() -> usize {
    64
}
impl Default for RawWorkers {
    fn default() -> Self {
        RawWorkers {
            polls_in_flight: d_polls(),
            deliveries_in_flight: d_deliveries(),
            polls_in_flight_per_upstream: None,
            deliveries_in_flight_per_host: None,
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawUpstream {
    #[serde(default = "d_preset")]
    preset: String,
    base_url: Option<String>,
    status_path: Option<String>,
    #[serde(default)]
    headers: BTreeMap<String, String>,
    status_field: Option<String>,
    pending: Option<Vec<String>>,
    succeeded: Option<Vec<String>>,
    failed: Option<Vec<String>>,
    cancelled: Option<Vec<String>>,
    expired: Option<Vec<String>>,
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

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRate {
    per_second: u32,
    burst: Option<u32>,
    min_per_second: Option<f64>,
    increase_every: Option<Dur>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawPoll {
    enabled: Option<bool>,
    initial: Option<Dur>,
    multiplier: Option<f64>,
    max: Option<Dur>,
    jitter: Option<f64>,
    deadline: Option<Dur>,
    finalizing: Option<Dur>,
    eta: Option<bool>,
    eta_max: Option<Dur>,
    stall_polls: Option<u32>,
    hint_max: Option<Dur>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWebhook {
    scheme: String,
    secret_env: Option<String>,
    #[serde(default)]
    previous_secrets: Vec<RawPreviousSecret>,
    jwks_url: Option<String>,
    /// A string or a list of strings (checked in `resolve_webhook`).
    audience: Option<serde_json::Value>,
    jwks_ttl: Option<Dur>,
    jwks_min_interval: Option<Dur>,
    operation_field: Option<String>,
    safety_poll: Option<Dur>,
    #[serde(default)]
    events: BTreeMap<String, String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPreviousSecret {
    env: String,
    until: Timestamp,
}

// ---------------------------------------------------------------------------------------------
// The resolved configuration.

/// The whole configuration, resolved and validated.
#[derive(Clone, Debug)]
pub struct Config {
    /// Where it was read from (for messages).
    pub source: String,
    pub server: ServerConfig,
    pub store: StoreConfig,
    pub callbacks: CallbackConfig,
    pub workers: WorkerConfig,
    pub upstreams: BTreeMap<String, UpstreamConfig>,
}

#[derive(Clone, Debug)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    pub api_token_env: String,
    /// `Some` when the environment variable named by `api_token_env` is set.
    pub api_token: Option<Secret>,
    pub max_body: usize,
    /// Largest response body read from an upstream (status responses, JWKS).
    pub max_upstream_body: usize,
    /// Client connections served at once; more wait in the listen backlog.
    pub max_connections: usize,
    /// A connection that has not sent a whole request head within this long (a new one, or an
    /// idle keep-alive one) is closed.
    pub header_read_timeout: Duration,
}

#[derive(Clone, Debug)]
pub struct StoreConfig {
    pub path: PathBuf,
    pub cache_bytes: u64,
}

#[derive(Clone, Debug)]
pub struct CallbackConfig {
    pub default_url: Option<Url>,
    pub secret_env: String,
    /// The signing key when the environment provides one; otherwise the store's generated key
    /// is used (see [`crate::delivery::load_or_create_secret`]).
    pub secret: Option<Secret>,
    pub allowed_hosts: Vec<String>,
    pub timeout: Duration,
    pub retry_schedule: Vec<Duration>,
}

#[derive(Clone, Debug)]
pub struct WorkerConfig {
    pub polls_in_flight: usize,
    pub deliveries_in_flight: usize,
    /// Of `polls_in_flight`, at most this many for one upstream.
    pub polls_in_flight_per_upstream: usize,
    /// Of `deliveries_in_flight`, at most this many to one callback host and port.
    pub deliveries_in_flight_per_host: usize,
}

/// Bytes that must never be printed. `Debug` shows only their length.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(pub Vec<u8>);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "<redacted {} bytes>", self.0.len())
    }
}

impl Secret {
    /// Parse a Standard Webhooks secret: `whsec_<base64>`.
    pub fn from_whsec(s: &str) -> Result<Secret, String> {
        let b64 = s
            .strip_prefix("whsec_")
            .ok_or("must start with \"whsec_\" followed by base64")?;
        base64::engine::general_purpose::STANDARD
            .decode(b64)
            .map(Secret)
            .map_err(|e| format!("the part after \"whsec_\" is not valid base64 ({e})"))
    }
    pub fn to_whsec(&self) -> String {
        format!(
            "whsec_{}",
            base64::engine::general_purpose::STANDARD.encode(&self.0)
        )
    }
}

#[derive(Clone, Debug)]
pub struct UpstreamConfig {
    pub name: String,
    pub preset: Preset,
    pub base_url: Url,
    pub status_path: String,
    /// Resolved headers (values may hold secrets; never print them).
    pub headers: HeaderMap,
    /// The header templates as written, for `hookshim check`.
    pub header_templates: BTreeMap<String, String>,
    pub mapping: Mapping,
    pub not_found_after: u32,
    pub timeout: Duration,
    pub rate: RateConfig,
    pub poll: PollConfig,
    pub webhook: Option<WebhookConfig>,
    /// Callbacks sent besides the terminal one (see [`CALLBACK_EVENTS`]).
    pub callback_events: Vec<String>,
}

/// The non-terminal callback events an upstream may ask for in `callback_events`.
pub const CALLBACK_EVENTS: &[&str] = &["requires_action"];

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RateConfig {
    /// The ceiling: never more requests than this (with `burst` allowed at once).
    pub per_second: u32,
    pub burst: u32,
    /// The adaptive rate never drops below this after 429/503 answers.
    pub min_per_second: f64,
    /// The adaptive rate regains a tenth of `per_second` per this much time without a 429/503.
    pub increase_every: Duration,
}

impl RateConfig {
    pub fn new(per_second: u32, burst: u32) -> RateConfig {
        RateConfig {
            per_second,
            burst,
            min_per_second: (f64::from(per_second) / 10.0).max(0.1),
            increase_every: Duration::from_secs(10),
        }
    }
}

/// One upstream's polling schedule. The policy that uses it is `schedule::policy`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PollConfig {
    /// False for an upstream with no status endpoint: no status request is ever sent; only a
    /// webhook event mapped in `webhook.events` or the deadline ends an operation.
    pub enabled: bool,
    /// The blind schedule: `initial × multiplier^n` up to `max`, ±`jitter`.
    pub initial: Duration,
    pub multiplier: f64,
    pub max: Duration,
    /// Fraction (0–0.5). Small on purpose: it spreads load, it does not help detection.
    pub jitter: f64,
    /// Default deadline for operations registered without one.
    pub deadline: Duration,
    /// Cadence while progress reads complete but the status is not terminal yet (finalizing).
    pub finalizing: Duration,
    /// Poll close to the completion time estimated from the rate of progress.
    pub eta: bool,
    /// The longest single wait an estimate may justify (the blind schedule stops at `max`).
    pub eta_max: Duration,
    /// Polls without progress after which the estimate is dropped for the blind schedule.
    pub stall_polls: u32,
    /// Server hints longer than this are clamped to it.
    pub hint_max: Duration,
}

impl PollConfig {
    /// Seconds-to-minutes jobs (video, image, a background response): react within seconds.
    pub const fn media() -> PollConfig {
        PollConfig {
            enabled: true,
            initial: Duration::from_secs(2),
            multiplier: 1.5,
            max: Duration::from_secs(15),
            jitter: 0.05,
            deadline: Duration::from_secs(6 * 3600),
            finalizing: Duration::from_secs(2),
            eta: true,
            eta_max: Duration::from_secs(60),
            stall_polls: 3,
            hint_max: Duration::from_secs(3600),
        }
    }

    /// Minutes-to-hours jobs (batch APIs): progress counts drive the schedule.
    pub const fn batch() -> PollConfig {
        PollConfig {
            enabled: true,
            initial: Duration::from_secs(10),
            multiplier: 1.5,
            max: Duration::from_secs(15),
            jitter: 0.05,
            deadline: Duration::from_secs(48 * 3600),
            finalizing: Duration::from_secs(10),
            eta: true,
            eta_max: Duration::from_secs(30 * 60),
            stall_polls: 3,
            hint_max: Duration::from_secs(6 * 3600),
        }
    }

    /// Anything else: a generic JSON status endpoint with unknown job lengths.
    pub const fn general() -> PollConfig {
        PollConfig {
            enabled: true,
            initial: Duration::from_secs(1),
            multiplier: 1.5,
            max: Duration::from_secs(30),
            jitter: 0.05,
            deadline: Duration::from_secs(24 * 3600),
            finalizing: Duration::from_secs(2),
            eta: true,
            eta_max: Duration::from_secs(10 * 60),
            stall_polls: 3,
            hint_max: Duration::from_secs(6 * 3600),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WebhookScheme {
    StandardWebhooks,
    Github,
    Stripe,
    GeminiJwt,
    None,
}

impl WebhookScheme {
    pub const NAMES: [&'static str; 5] = [
        "standard-webhooks",
        "github",
        "stripe",
        "gemini-jwt",
        "none",
    ];

    pub fn name(self) -> &'static str {
        match self {
            WebhookScheme::StandardWebhooks => "standard-webhooks",
            WebhookScheme::Github => "github",
            WebhookScheme::Stripe => "stripe",
            WebhookScheme::GeminiJwt => "gemini-jwt",
            WebhookScheme::None => "none",
        }
    }

    fn from_name(name: &str) -> Option<WebhookScheme> {
        Some(match name {
            "standard-webhooks" => WebhookScheme::StandardWebhooks,
            "github" => WebhookScheme::Github,
            "stripe" => WebhookScheme::Stripe,
            "gemini-jwt" => WebhookScheme::GeminiJwt,
            "none" => WebhookScheme::None,
            _ => return None,
        })
    }

    /// Whether this scheme verifies with secrets from the environment (`secret_env`,
    /// `previous_secrets`); `gemini-jwt` takes its keys from a JWKS, `none` has none.
    fn uses_secrets(self) -> bool {
        matches!(
            self,
            WebhookScheme::StandardWebhooks | WebhookScheme::Github | WebhookScheme::Stripe
        )
    }
}

/// The default JWKS of Gemini's dynamic (per-request) webhooks.
pub const GEMINI_JWKS_URL: &str = "https://generativelanguage.googleapis.com/.well-known/jwks.json";

#[derive(Clone, Debug)]
pub struct WebhookConfig {
    pub scheme: WebhookScheme,
    pub secret_env: Option<String>,
    /// The keys that verify this upstream's webhooks: the current one (`secret_env`) first,
    /// then the `previous_secrets`, each accepted until its `until`. Empty for `gemini-jwt`
    /// and `none`.
    pub keys: Vec<WebhookKey>,
    /// `gemini-jwt` only.
    pub jwt: Option<JwtConfig>,
    pub operation_field: String,
    pub safety_poll: Duration,
    /// Event types that decide an outcome by themselves (`events` in the config).
    pub events: BTreeMap<String, Status>,
}

/// One configured webhook key and where it came from.
#[derive(Clone, Debug)]
pub struct WebhookKey {
    /// The config key it was read from: `secret_env` or `previous_secrets[i]`.
    pub source: String,
    /// The environment variable that held it.
    pub env: String,
    pub material: KeyMaterial,
    /// Accepted while now < `until` (`None`: the current secret, no end).
    pub until: Option<Timestamp>,
}

impl WebhookKey {
    pub fn active_at(&self, now: Timestamp) -> bool {
        self.until.is_none_or(|u| now < u)
    }
}

#[derive(Clone, Debug)]
pub enum KeyMaterial {
    /// An HMAC secret: Standard Webhooks `v1`, GitHub, Stripe.
    Hmac(Secret),
    /// A Standard Webhooks `v1a` public key (`whpk_<base64>`).
    Ed25519(ed25519_dalek::VerifyingKey),
}

impl KeyMaterial {
    fn kind(&self) -> &'static str {
        match self {
            KeyMaterial::Hmac(_) => "hmac",
            KeyMaterial::Ed25519(_) => "ed25519 (v1a)",
        }
    }
}

/// `gemini-jwt`: where the keys come from and what the token must say.
#[derive(Clone, Debug)]
pub struct JwtConfig {
    pub jwks_url: Url,
    /// The token's `aud` must be one of these.
    pub audience: Vec<String>,
    /// How long a fetched JWKS is used (shorter if its `Cache-Control: max-age` says so).
    pub jwks_ttl: Duration,
    /// The least time between two JWKS fetches: a flood of unknown `kid`s or a failing JWKS
    /// URL causes at most one fetch per this interval.
    pub jwks_min_interval: Duration,
}

impl WebhookConfig {
    /// Warnings about this webhook config at `now` (for `hookshim check` and start-up): previous
    /// secrets whose `until` has passed. They are ignored, not an error, so that a restart after
    /// the grace period does not fail; the entry should be removed.
    pub fn warnings(&self, upstream: &str, now: Timestamp) -> Vec<String> {
        self.keys
            .iter()
            .filter(|k| !k.active_at(now))
            .map(|k| {
                format!(
                    "`upstreams.{upstream}.webhook.{}`: until {} has passed; the secret in {} is no longer accepted (remove the entry)",
                    k.source,
                    k.until.map(|u| u.rfc3339()).unwrap_or_default(),
                    k.env
                )
            })
            .collect()
    }
}

impl Config {
    /// Read and resolve a config file with the process environment.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            file: path.display().to_string(),
            message: format!("cannot read the config file: {e}"),
        })?;
        Config::parse(&text, &path.display().to_string(), &process_env)
    }

    /// Parse and resolve config text. `source` names the file in messages; `env` reads variables.
    pub fn parse(text: &str, source: &str, env: EnvLookup<'_>) -> Result<Config, ConfigError> {
        let err = |message: String| ConfigError {
            file: source.to_string(),
            message,
        };
        let raw: RawConfig = toml::from_str(text).map_err(|e| {
            // toml's message has the line, the column and the offending text; the dotted key
            // (`upstreams.jobs.poll.initial`) comes from re-reading the parsed table with
            // serde_path_to_error (toml's own spanned deserializer does not report paths).
            let path = toml::from_str::<toml::Table>(text)
                .ok()
                .and_then(|t| {
                    serde_path_to_error::deserialize::<_, RawConfig>(toml::Value::Table(t)).err()
                })
                .map(|pe| pe.path().to_string())
                .filter(|p| p != ".");
            let msg = e.to_string().trim_end().to_string();
            err(match path {
                Some(p) => format!("`{p}`: {msg}"),
                None => msg,
            })
        })?;
        resolve(raw, source, env).map_err(err)
    }

    /// A human-readable rendering of the resolved config with every secret redacted.
    pub fn redacted(&self) -> serde_json::Value {
        use serde_json::json;
        let ms = |d: Duration| humantime::format_duration(d).to_string();
        let ups: serde_json::Map<String, serde_json::Value> = self
            .upstreams
            .values()
            .map(|u| {
                let headers: serde_json::Map<String, serde_json::Value> = u
                    .header_templates
                    .iter()
                    .map(|(k, v)| {
                        let shown = if v.contains("${") { format!("<redacted, from {v}>") } else { "<redacted>".to_string() };
                        (k.clone(), json!(shown))
                    })
                    .collect();
                (
                    u.name.clone(),
                    json!({
                        "preset": u.preset.name(),
                        "base_url": u.base_url.as_str(),
                        "status_path": u.status_path,
                        "headers": headers,
                        "mapping": u.mapping.describe(),
                        "not_found_after": u.not_found_after,
                        "timeout": ms(u.timeout),
                        "rate": {"per_second": u.rate.per_second, "burst": u.rate.burst},
                        "poll": {
                            "initial": ms(u.poll.initial), "multiplier": u.poll.multiplier,
                            "max": ms(u.poll.max), "jitter": u.poll.jitter, "deadline": ms(u.poll.deadline)
                        },
                        "webhook": u.webhook.as_ref().map(|w| json!({
                            "scheme": w.scheme.name(),
                            "secret_env": w.secret_env,
                            "keys": w.keys.iter().map(|k| json!({
                                "from": k.source, "env": k.env, "kind": k.material.kind(),
                                "value": "<redacted>", "until": k.until.map(|t| t.rfc3339()),
                            })).collect::<Vec<_>>(),
                            "jwt": w.jwt.as_ref().map(|j| json!({
                                "jwks_url": j.jwks_url.as_str(), "audience": j.audience,
                                "jwks_ttl": ms(j.jwks_ttl), "jwks_min_interval": ms(j.jwks_min_interval),
                            })),
                            "operation_field": w.operation_field,
                            "safety_poll": ms(w.safety_poll),
                            "events": w.events.iter().map(|(k, v)| (k.clone(), json!(v.as_str()))).collect::<serde_json::Map<_, _>>(),
                        })),
                        "callback_events": u.callback_events,
                    }),
                )
            })
            .collect();
        json!({
            "source": self.source,
            "server": {
                "listen": self.server.listen.to_string(),
                "api_token_env": self.server.api_token_env,
                "api_token": if self.server.api_token.is_some() { "<redacted, set>" } else { "<unset: API is open>" },
                "max_body": self.server.max_body,
                "max_upstream_body": self.server.max_upstream_body,
                "max_connections": self.server.max_connections,
                "header_read_timeout": ms(self.server.header_read_timeout),
            },
            "store": {"path": self.store.path.display().to_string(), "cache_bytes": self.store.cache_bytes},
            "callbacks": {
                "default_url": self.callbacks.default_url.as_ref().map(|u| u.as_str()),
                "secret_env": self.callbacks.secret_env,
                "secret": if self.callbacks.secret.is_some() { "<redacted, from environment>" } else { "<generated in the data directory on first start>" },
                "allowed_hosts": self.callbacks.allowed_hosts,
                "timeout": ms(self.callbacks.timeout),
                "retry_schedule": self.callbacks.retry_schedule.iter().map(|d| ms(*d)).collect::<Vec<_>>(),
            },
            "workers": {"polls_in_flight": self.workers.polls_in_flight, "deliveries_in_flight": self.workers.deliveries_in_flight,
                "polls_in_flight_per_upstream": self.workers.polls_in_flight_per_upstream, "deliveries_in_flight_per_host": self.workers.deliveries_in_flight_per_host},
            "upstreams": ups,
        })
    }
}

/// Check a JSON pointer (RFC 6901): empty, or starting with `/`.
pub fn check_pointer(key: &str, p: &str) -> Result<String, String> {
    if p.is_empty() || p.starts_with('/') {
        Ok(p.to_string())
    } else {
        Err(format!(
            "`{key}`: {p:?} is not a JSON pointer; it must start with \"/\" (e.g. \"/state\")"
        ))
    }
}

/// Expand `${VAR}` references from the environment; a missing variable is an error.
pub fn expand_env(key: &str, template: &str, env: EnvLookup<'_>) -> Result<String, String> {
    let mut out = String::new();
    let mut rest = template;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after
            .find('}')
            .ok_or_else(|| format!("`{key}`: unterminated \"${{\" in {template:?}"))?;
        let name = &after[..end];
        if name.is_empty() {
            return Err(format!("`{key}`: empty variable name \"${{}}\""));
        }
        let value =
            env(name).ok_or_else(|| format!("`{key}`: environment variable {name} is not set"))?;
        out.push_str(&value);
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

fn resolve(raw: RawConfig, source: &str, env: EnvLookup<'_>) -> Result<Config, String> {
    let listen: SocketAddr = raw.server.listen.parse().map_err(|e| {
        format!(
            "`server.listen`: {:?} is not an address like \"127.0.0.1:8680\" ({e})",
            raw.server.listen
        )
    })?;
    let api_token = env(&raw.server.api_token_env).map(|t| Secret(t.into_bytes()));
    if raw.server.max_body.0 < 1024 {
        return Err("`server.max_body`: must be at least 1KiB".into());
    }
    if raw.server.max_connections == 0 {
        return Err("`server.max_connections`: must be at least 1 (e.g. 1024)".into());
    }
    if raw.server.header_read_timeout.0.is_zero() {
        return Err("`server.header_read_timeout`: must be more than 0s (e.g. \"30s\")".into());
    }
    if raw.server.max_upstream_body.0 < 1024 {
        return Err("`server.max_upstream_body`: must be at least 1KiB (e.g. \"4MiB\")".into());
    }

    if raw.store.cache.0 < (1 << 20) {
        return Err("`store.cache`: must be at least 1MiB".into());
    }

    let cb = raw.callbacks;
    let allowed_hosts: Vec<String> = cb
        .allowed_hosts
        .iter()
        .map(|h| h.trim_matches(['[', ']']).to_ascii_lowercase())
        .collect();
    let default_url = match cb.default_url {
        None => None,
        Some(u) => Some(
            check_callback_url(&u, &allowed_hosts)
                .map_err(|e| format!("`callbacks.default_url`: {e}"))?,
        ),
    };
    let secret =
        match env(&cb.secret_env) {
            None => None,
            Some(s) => Some(Secret::from_whsec(&s).map_err(|e| {
                format!("`callbacks.secret_env`: the value of {} {e}", cb.secret_env)
            })?),
        };
    if cb.timeout.0.is_zero() {
        return Err("`callbacks.timeout`: must be more than 0s".into());
    }
    if cb.retry_schedule.is_empty() {
        return Err("`callbacks.retry_schedule`: needs at least one wait (e.g. [\"5s\"])".into());
    }
    if raw.workers.polls_in_flight == 0 || raw.workers.deliveries_in_flight == 0 {
        return Err(
            "`workers`: polls_in_flight and deliveries_in_flight must be at least 1".into(),
        );
    }
    if raw.workers.polls_in_flight_per_upstream == Some(0)
        || raw.workers.deliveries_in_flight_per_host == Some(0)
    {
        return Err(
            "`workers`: polls_in_flight_per_upstream and deliveries_in_flight_per_host must be at least 1 (or left out for three quarters of the total)".into(),
        );
    }

    let mut upstreams = BTreeMap::new();
    for (name, u) in raw.upstreams {
        if name.is_empty()
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            return Err(format!(
                "`upstreams.{name}`: upstream names may use only letters, digits, '-' and '_'"
            ));
        }
        let resolved = resolve_upstream(&name, u, env)?;
        upstreams.insert(name, resolved);
    }

    Ok(Config {
        source: source.to_string(),
        server: ServerConfig {
            listen,
            api_token_env: raw.server.api_token_env,
            api_token,
            max_body: raw.server.max_body.0 as usize,
            max_upstream_body: raw.server.max_upstream_body.0 as usize,
            max_connections: raw.server.max_connections,
            header_read_timeout: raw.server.header_read_timeout.0,
        },
        store: StoreConfig {
            path: raw.store.path,
            cache_bytes: raw.store.cache.0,
        },
        callbacks: CallbackConfig {
            default_url,
            secret_env: cb.secret_env,
            secret,
            allowed_hosts,
            timeout: cb.timeout.0,
            retry_schedule: cb.retry_schedule.into_iter().map(|d| d.0).collect(),
        },
        workers: WorkerConfig {
            polls_in_flight: raw.workers.polls_in_flight,
            deliveries_in_flight: raw.workers.deliveries_in_flight,
            polls_in_flight_per_upstream: raw
                .workers
                .polls_in_flight_per_upstream
                .unwrap_or(share(raw.workers.polls_in_flight)),
            deliveries_in_flight_per_host: raw
                .workers
                .deliveries_in_flight_per_host
                .unwrap_or(share(raw.workers.deliveries_in_flight)),
        },
        upstreams,
    })
}

/// Parse a callback URL and check its scheme and host against `allowed_hosts`.
pub fn check_callback_url(url: &str, allowed_hosts: &[String]) -> Result<Url, String> {
    let parsed = Url::parse(url).map_err(|e| format!("{url:?} is not a valid URL ({e})"))?;
    if parsed.scheme() != "http" && parsed.scheme() != "https" {
        return Err(format!("{url:?} must use http or https"));
    }
    let host = parsed
        .host_str()
        .unwrap_or("")
        .trim_matches(['[', ']'])
        .to_ascii_lowercase();
    if !allowed_hosts.iter().any(|h| h == &host) {
        return Err(format!(
            "host {host:?} is not in callbacks.allowed_hosts ({})",
            allowed_hosts.join(", ")
        ));
    }
    Ok(parsed)
}

fn resolve_upstream(
    name: &str,
    u: RawUpstream,
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
    let polling = u.poll.enabled.unwrap_or(true);
    let base = u
        .base_url
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
    if preset == Preset::AzureAsync && u.status_path.is_some() {
        return Err(format!(
            "`{}`: does not apply to preset \"azure-async\" (the registered operation is the full status URL)",
            key("status_path")
        ));
    }
    let status_path = u
        .status_path
        .or(defaults.status_path.map(str::to_string))
        .or((preset == Preset::AzureAsync || !polling).then(|| "{operation}".to_string()))
        .ok_or_else(|| {
            format!(
                "`{}`: required for preset {:?}",
                key("status_path"),
                u.preset
            )
        })?;
    if !status_path.contains("{operation}") {
        return Err(format!(
            "`{}`: {status_path:?} must contain \"{{operation}}\"",
            key("status_path")
        ));
    }

    // The preset's headers first; a header the config names (in any case) replaces the
    // preset's, and an empty value removes it.
    let mut templates: BTreeMap<String, String> = defaults
        .headers
        .iter()
        .filter(|(name, _)| !u.headers.keys().any(|k| k.eq_ignore_ascii_case(name)))
        .map(|(name, value)| (name.to_string(), value.to_string()))
        .collect();
    templates.extend(
        u.headers
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

    let ptr = |field: &str, v: Option<String>| -> Result<Option<String>, String> {
        v.map(|p| check_pointer(&key(field), &p)).transpose()
    };
    let unread = !polling && preset == Preset::Generic && u.status_field.is_none();
    let placeholder = |v: Option<Vec<String>>, s: &str| match v {
        None if unread => Some(vec![s.to_string()]),
        v => v,
    };
    let mapping = Mapping::build(
        preset,
        crate::upstream::MappingInput {
            status_field: ptr("status_field", u.status_field)?
                .or(unread.then(|| "/status".to_string())),
            pending: u.pending,
            succeeded: placeholder(u.succeeded, "succeeded"),
            failed: placeholder(u.failed, "failed"),
            cancelled: u.cancelled,
            expired: u.expired,
            result_field: ptr("result_field", u.result_field)?,
            error_field: ptr("error_field", u.error_field)?,
            progress_field: ptr("progress_field", u.progress_field)?,
        },
    )
    .map_err(|e| format!("`upstreams.{name}`: {e}"))?;

    let rate = match u.rate {
        None => RateConfig::new(10, 10),
        Some(r) => {
            if r.per_second == 0 {
                return Err(format!("`{}`: must be at least 1", key("rate.per_second")));
            }
            let burst = r.burst.unwrap_or(r.per_second);
            if burst == 0 {
                return Err(format!("`{}`: must be at least 1", key("rate.burst")));
            }
            let mut rate = RateConfig::new(r.per_second, burst);
            if let Some(min) = r.min_per_second {
                if !(min > 0.0 && min <= f64::from(r.per_second)) {
                    return Err(format!(
                        "`{}`: must be more than 0 and at most rate.per_second ({}), got {min}",
                        key("rate.min_per_second"),
                        r.per_second
                    ));
                }
                rate.min_per_second = min;
            }
            if let Some(every) = r.increase_every {
                if every.0.is_zero() {
                    return Err(format!(
                        "`{}`: must be more than 0s",
                        key("rate.increase_every")
                    ));
                }
                rate.increase_every = every.0;
            }
            rate
        }
    };

    let dp = defaults.poll;
    let poll = PollConfig {
        enabled: polling,
        initial: u.poll.initial.map(|d| d.0).unwrap_or(dp.initial),
        multiplier: u.poll.multiplier.unwrap_or(dp.multiplier),
        max: u.poll.max.map(|d| d.0).unwrap_or(dp.max),
        jitter: u.poll.jitter.unwrap_or(dp.jitter),
        deadline: u.poll.deadline.map(|d| d.0).unwrap_or(dp.deadline),
        finalizing: u.poll.finalizing.map(|d| d.0).unwrap_or(dp.finalizing),
        eta: u.poll.eta.unwrap_or(dp.eta),
        // Unset, it is never shorter than the blind schedule's own ceiling.
        eta_max: u.poll.eta_max.map(|d| d.0).unwrap_or(
            dp.eta_max.max(
                u.poll
                    .max
                    .map(|d| d.0)
                    .unwrap_or(dp.max)
                    .max(u.poll.initial.map(|d| d.0).unwrap_or(dp.initial)),
            ),
        ),
        stall_polls: u.poll.stall_polls.unwrap_or(dp.stall_polls),
        hint_max: u.poll.hint_max.map(|d| d.0).unwrap_or(dp.hint_max),
    };
    if poll.initial.is_zero() {
        return Err(format!("`{}`: must be more than 0s", key("poll.initial")));
    }
    if !(1.0..=10.0).contains(&poll.multiplier) {
        return Err(format!(
            "`{}`: must be between 1.0 and 10.0 (got {})",
            key("poll.multiplier"),
            poll.multiplier
        ));
    }
    if poll.max < poll.initial {
        return Err(format!(
            "`{}`: must not be less than poll.initial",
            key("poll.max")
        ));
    }
    if !(0.0..=0.5).contains(&poll.jitter) {
        return Err(format!(
            "`{}`: must be between 0.0 and 0.5 (got {})",
            key("poll.jitter"),
            poll.jitter
        ));
    }
    if poll.deadline.is_zero() {
        return Err(format!("`{}`: must be more than 0s", key("poll.deadline")));
    }
    if poll.finalizing.is_zero() {
        return Err(format!(
            "`{}`: must be more than 0s",
            key("poll.finalizing")
        ));
    }
    if poll.eta_max < poll.initial {
        return Err(format!(
            "`{}`: must not be less than poll.initial",
            key("poll.eta_max")
        ));
    }
    if poll.stall_polls == 0 {
        return Err(format!("`{}`: must be at least 1", key("poll.stall_polls")));
    }
    if poll.hint_max < Duration::from_secs(1) {
        return Err(format!("`{}`: must be at least 1s", key("poll.hint_max")));
    }

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

    for ev in &u.callback_events {
        if !CALLBACK_EVENTS.contains(&ev.as_str()) {
            return Err(format!(
                "`{}`: unknown callback event {ev:?}; expected one of: {}",
                key("callback_events"),
                CALLBACK_EVENTS.join(", ")
            ));
        }
        if !defaults.can_pause {
            return Err(format!(
                "`{}`: preset {:?} never reports {ev}; only \"gemini-interaction\" does",
                key("callback_events"),
                u.preset
            ));
        }
    }

    Ok(UpstreamConfig {
        name: name.to_string(),
        preset,
        base_url,
        status_path,
        headers,
        header_templates: templates,
        mapping,
        not_found_after: u.not_found_after.max(1),
        timeout: u.timeout.0,
        rate,
        poll,
        webhook,
        callback_events: u.callback_events,
    })
}

/// Check `webhook.events`: each event type decides an outcome by itself. Event types of a
/// preset's own family must be ones it documents, and a pause cannot be an outcome.
fn resolve_events(
    key: &str,
    preset: Preset,
    wd: &crate::upstream::WebhookDefaults,
    events: BTreeMap<String, String>,
) -> Result<BTreeMap<String, Status>, String> {
    const OUTCOMES: [Status; 4] = [
        Status::Succeeded,
        Status::Failed,
        Status::Cancelled,
        Status::Expired,
    ];
    let mut out = BTreeMap::new();
    for (event, outcome) in events {
        let k = format!("{key}.{event:?}");
        if event.is_empty() {
            return Err(format!("`{key}`: an event type must not be empty"));
        }
        if preset == Preset::Replicate {
            return Err(format!(
                "`{key}`: Replicate webhooks carry the whole prediction, not an event type; the \
                 status in it is read like a poll, so there is nothing to map"
            ));
        }
        if !wd.families.is_empty() && !wd.events.contains(&event.as_str()) {
            return Err(format!(
                "`{k}`: preset {:?} does not send {event:?}; its events are: {}",
                preset.name(),
                wd.events.join(", ")
            ));
        }
        if wd.pauses.contains(&event.as_str()) {
            return Err(format!(
                "`{k}`: {event} announces a pause, not an end, so it cannot decide an outcome \
                 (use `callback_events = [\"requires_action\"]` to hear about pauses)"
            ));
        }
        let status = Status::parse(&outcome)
            .filter(|s| OUTCOMES.contains(s))
            .ok_or_else(|| {
                format!(
                    "`{k}`: unknown outcome {outcome:?}; expected one of: succeeded, failed, cancelled, expired"
                )
            })?;
        out.insert(event, status);
    }
    Ok(out)
}

/// The `[upstreams.<name>.webhook]` section.
fn resolve_webhook(
    name: &str,
    preset: Preset,
    wd: &crate::upstream::WebhookDefaults,
    w: RawWebhook,
    env: EnvLookup<'_>,
) -> Result<WebhookConfig, String> {
    let key = |k: &str| format!("upstreams.{name}.webhook.{k}");
    let scheme = WebhookScheme::from_name(&w.scheme).ok_or_else(|| {
        format!(
            "`{}`: unknown scheme {:?}; expected one of: {}",
            key("scheme"),
            w.scheme,
            WebhookScheme::NAMES.map(|n| format!("{n:?}")).join(", ")
        )
    })?;
    let only_for = |k: &str, present: bool, schemes: &str| -> Result<(), String> {
        if present {
            Err(format!(
                "`{}`: not used by scheme {:?} (only by {schemes})",
                key(k),
                w.scheme
            ))
        } else {
            Ok(())
        }
    };

    let mut keys = Vec::new();
    if scheme.uses_secrets() {
        let var = w.secret_env.as_ref().ok_or_else(|| {
            format!(
                "`{}`: required for scheme {:?}",
                key("secret_env"),
                w.scheme
            )
        })?;
        keys.push(webhook_key(
            scheme,
            &key("secret_env"),
            "secret_env",
            var,
            None,
            env,
        )?);
        for (i, p) in w.previous_secrets.iter().enumerate() {
            let source = format!("previous_secrets[{i}]");
            let value_key = key(&format!("{source}.env"));
            keys.push(webhook_key(
                scheme,
                &value_key,
                &source,
                &p.env,
                Some(p.until),
                env,
            )?);
        }
    } else if scheme == WebhookScheme::GeminiJwt {
        let why = "its keys come from jwks_url";
        if w.secret_env.is_some() {
            return Err(format!(
                "`{}`: not used by scheme \"gemini-jwt\" ({why})",
                key("secret_env")
            ));
        }
        if !w.previous_secrets.is_empty() {
            return Err(format!(
                "`{}`: not used by scheme \"gemini-jwt\" ({why}; a rotated key is found by its kid)",
                key("previous_secrets")
            ));
        }
    } else {
        only_for(
            "previous_secrets",
            !w.previous_secrets.is_empty(),
            "the signed schemes",
        )?;
    }

    let jwt = if scheme == WebhookScheme::GeminiJwt {
        let url_text = w
            .jwks_url
            .clone()
            .unwrap_or_else(|| GEMINI_JWKS_URL.to_string());
        let jwks_url = Url::parse(&url_text).map_err(|e| {
            format!(
                "`{}`: {url_text:?} is not a valid URL ({e})",
                key("jwks_url")
            )
        })?;
        if jwks_url.scheme() != "http" && jwks_url.scheme() != "https" {
            return Err(format!(
                "`{}`: {url_text:?} must use http or https",
                key("jwks_url")
            ));
        }
        let audience = match &w.audience {
            None => {
                return Err(format!(
                    "`{}`: required for scheme \"gemini-jwt\" (the `aud` the tokens must carry)",
                    key("audience")
                ));
            }
            Some(serde_json::Value::String(a)) => vec![a.clone()],
            Some(serde_json::Value::Array(items)) => items
                .iter()
                .map(|i| i.as_str().map(str::to_string))
                .collect::<Option<Vec<_>>>()
                .ok_or_else(|| {
                    format!(
                        "`{}`: must be a string or a list of strings",
                        key("audience")
                    )
                })?,
            Some(_) => {
                return Err(format!(
                    "`{}`: must be a string or a list of strings",
                    key("audience")
                ));
            }
        };
        if audience.is_empty() || audience.iter().any(|a| a.trim().is_empty()) {
            return Err(format!("`{}`: must not be empty", key("audience")));
        }
        let jwks_ttl = w.jwks_ttl.map(|d| d.0).unwrap_or(Duration::from_secs(3600));
        let jwks_min_interval = w
            .jwks_min_interval
            .map(|d| d.0)
            .unwrap_or(Duration::from_secs(10));
        if jwks_min_interval.is_zero() {
            return Err(format!(
                "`{}`: must be more than 0s",
                key("jwks_min_interval")
            ));
        }
        if jwks_ttl < jwks_min_interval {
            return Err(format!(
                "`{}`: must not be less than jwks_min_interval",
                key("jwks_ttl")
            ));
        }
        Some(JwtConfig {
            jwks_url,
            audience,
            jwks_ttl,
            jwks_min_interval,
        })
    } else {
        let jwt_only = "\"gemini-jwt\"";
        only_for("jwks_url", w.jwks_url.is_some(), jwt_only)?;
        only_for("audience", w.audience.is_some(), jwt_only)?;
        only_for("jwks_ttl", w.jwks_ttl.is_some(), jwt_only)?;
        only_for("jwks_min_interval", w.jwks_min_interval.is_some(), jwt_only)?;
        None
    };

    let operation_field = check_pointer(
        &key("operation_field"),
        w.operation_field.as_deref().unwrap_or(wd.operation_field),
    )?;
    if scheme == WebhookScheme::GeminiJwt && !w.events.is_empty() {
        // Nothing says Gemini's token covers the body: a replayed token with another body
        // must not be able to end an operation.
        return Err(format!(
            "`{}`: not allowed with scheme \"gemini-jwt\": its token is not known to cover the \
             body, so an event cannot decide an outcome; the webhook triggers a status read instead",
            key("events")
        ));
    }
    let events = resolve_events(&key("events"), preset, wd, w.events)?;
    let safety_poll = w
        .safety_poll
        .map(|d| d.0)
        .unwrap_or(Duration::from_secs(600));
    if safety_poll.is_zero() {
        return Err(format!("`{}`: must be more than 0s", key("safety_poll")));
    }
    Ok(WebhookConfig {
        scheme,
        secret_env: w.secret_env,
        keys,
        jwt,
        operation_field,
        safety_poll,
        events,
    })
}

/// Read one webhook key from environment variable `var` and parse it for `scheme`.
fn webhook_key(
    scheme: WebhookScheme,
    key: &str,
    source: &str,
    var: &str,
    until: Option<Timestamp>,
    env: EnvLookup<'_>,
) -> Result<WebhookKey, String> {
    let v = env(var).ok_or_else(|| format!("`{key}`: environment variable {var} is not set"))?;
    let bad = |e: String| format!("`{key}`: the value of {var} {e}");
    let material = match scheme {
        WebhookScheme::StandardWebhooks => {
            if v.starts_with("whsec_") {
                KeyMaterial::Hmac(Secret::from_whsec(&v).map_err(bad)?)
            } else if let Some(b64) = v.strip_prefix("whpk_") {
                let bytes = base64::engine::general_purpose::STANDARD
                    .decode(b64)
                    .map_err(|e| bad(format!("is not a valid whpk_ key: the part after \"whpk_\" is not valid base64 ({e})")))?;
                let bytes: [u8; 32] = bytes.try_into().map_err(|b: Vec<u8>| {
                    bad(format!("is not a valid whpk_ key: an Ed25519 public key is 32 bytes, this one is {}", b.len()))
                })?;
                KeyMaterial::Ed25519(ed25519_dalek::VerifyingKey::from_bytes(&bytes).map_err(
                    |_| bad("is not a valid whpk_ key: not an Ed25519 public key".into()),
                )?)
            } else if v.starts_with("whsk_") {
                return Err(bad(
                    "is an Ed25519 signing (private) key (whsk_...); configure the upstream's public key (whpk_...)".into(),
                ));
            } else {
                // OpenAI's quirk: a secret without the prefix is used as raw bytes.
                KeyMaterial::Hmac(Secret(v.into_bytes()))
            }
        }
        // GitHub's secret is raw text; Stripe's `whsec_...` is used as it is, not decoded.
        _ => KeyMaterial::Hmac(Secret(v.into_bytes())),
    };
    Ok(WebhookKey {
        source: source.to_string(),
        env: var.to_string(),
        material,
        until,
    })
}

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

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
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

    const GOOD: &str = r#"
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

    #[test]
    fn good_config_resolves_env_and_durations() {
        let c = Config::parse(GOOD, "shim.toml", &env).unwrap();
        let u = &c.upstreams["jobs"];
        assert_eq!(u.headers["authorization"], "Bearer t0k");
        assert_eq!(u.poll.max, Duration::from_secs(30));
        assert_eq!(
            c.callbacks.retry_schedule,
            vec![Duration::from_secs(5), Duration::from_secs(300)]
        );
        assert_eq!(c.server.max_body, 1 << 20);
        let keys = &u.webhook.as_ref().unwrap().keys;
        assert_eq!(keys.len(), 1);
        assert!(matches!(&keys[0].material, KeyMaterial::Hmac(s) if s.0.len() == 24));
    }

    fn err_of(text: &str) -> String {
        Config::parse(text, "shim.toml", &env)
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn unknown_key_names_file_and_key() {
        let e = err_of("[server]\nlisten = \"127.0.0.1:1\"\nlisen = 3\n");
        assert!(e.starts_with("shim.toml: "), "{e}");
        assert!(e.contains("unknown field `lisen`"), "{e}");
        assert!(e.contains("`server.lisen`"), "{e}");
        assert!(e.contains("line 3"), "{e}");
    }

    #[test]
    fn bad_duration_is_explained() {
        let e = err_of(&GOOD.replace("max = \"30s\"", "max = \"30 parsecs\""));
        assert!(e.contains("invalid duration \"30 parsecs\""), "{e}");
        assert!(e.contains("`upstreams.jobs.poll.max`"), "{e}");
    }

    #[test]
    fn policy_knobs_are_validated_with_the_key() {
        let poll = "poll = { initial = \"1s\", multiplier = 1.5, max = \"30s\", jitter = 0.1, deadline = \"24h\" }";
        let cases = [
            (
                poll.replace("deadline", "eta_max = \"500ms\", deadline"),
                "`upstreams.jobs.poll.eta_max`: must not be less than poll.initial",
            ),
            (
                poll.replace("deadline", "stall_polls = 0, deadline"),
                "`upstreams.jobs.poll.stall_polls`: must be at least 1",
            ),
            (
                poll.replace("deadline", "finalizing = \"0s\", deadline"),
                "`upstreams.jobs.poll.finalizing`: must be more than 0s",
            ),
            (
                poll.replace("deadline", "hint_max = \"10ms\", deadline"),
                "`upstreams.jobs.poll.hint_max`: must be at least 1s",
            ),
        ];
        for (line, want) in cases {
            let e = err_of(&GOOD.replace(poll, &line));
            assert!(e.contains(want), "{line}: {e}");
        }
        let rate = "rate = { per_second = 10, burst = 10 }";
        let e = err_of(&GOOD.replace(rate, "rate = { per_second = 10, min_per_second = 20 }"));
        assert!(
            e.contains("`upstreams.jobs.rate.min_per_second`: must be more than 0 and at most rate.per_second (10), got 20"),
            "{e}"
        );
        let e = err_of(&GOOD.replace(rate, "rate = { per_second = 10, increase_every = \"0s\" }"));
        assert!(
            e.contains("`upstreams.jobs.rate.increase_every`: must be more than 0s"),
            "{e}"
        );
        // Polling off needs an event map: nothing else could end an operation.
        let e = err_of(&GOOD.replace(poll, "poll = { enabled = false }"));
        assert!(
            e.contains("`upstreams.jobs.poll.enabled`: with polling off only a webhook event mapped in `webhook.events`"),
            "{e}"
        );
        let off = GOOD.replace(poll, "poll = { enabled = false }").replace(
            "safety_poll = \"10m\"",
            "safety_poll = \"10m\"\nevents = { \"job.done\" = \"succeeded\" }",
        );
        let c = Config::parse(&off, "shim.toml", &env).unwrap();
        assert!(!c.upstreams["jobs"].poll.enabled);
        // Defaults: unset knobs come from the preset's kind of job; AIMD floor is a tenth.
        let c = Config::parse(GOOD, "shim.toml", &env).unwrap();
        let u = &c.upstreams["jobs"];
        assert!(u.poll.eta);
        assert_eq!(u.poll.stall_polls, 3);
        assert_eq!(u.rate.min_per_second, 1.0);
        assert_eq!(u.rate.increase_every, Duration::from_secs(10));
    }

    #[test]
    fn bad_pointer_names_the_key() {
        let e = err_of(&GOOD.replace("status_field = \"/state\"", "status_field = \"state\""));
        assert!(e.contains("`upstreams.jobs.status_field`"), "{e}");
        assert!(e.contains("not a JSON pointer"), "{e}");
    }

    #[test]
    fn unknown_preset_lists_the_known_ones() {
        let e = err_of(&GOOD.replace("preset = \"generic\"", "preset = \"magic\""));
        assert!(e.contains("unknown preset \"magic\""), "{e}");
        assert!(e.contains("google-operation"), "{e}");
    }

    #[test]
    fn missing_env_var_is_an_error() {
        let e = err_of(&GOOD.replace("${JOBS_TOKEN}", "${NOT_THERE}"));
        assert!(
            e.contains(
                "`upstreams.jobs.headers.Authorization`: environment variable NOT_THERE is not set"
            ),
            "{e}"
        );
        let e = err_of(&GOOD.replace(
            "secret_env = \"JOBS_WEBHOOK_SECRET\"",
            "secret_env = \"NOPE\"",
        ));
        assert!(e.contains("environment variable NOPE is not set"), "{e}");
    }

    #[test]
    fn callback_host_must_be_allowed() {
        let e = err_of(&GOOD.replace("http://127.0.0.1:9000/callback", "http://example.com/cb"));
        assert!(
            e.contains(
                "`callbacks.default_url`: host \"example.com\" is not in callbacks.allowed_hosts"
            ),
            "{e}"
        );
    }

    #[test]
    fn redacted_view_has_no_secrets() {
        let c = Config::parse(GOOD, "shim.toml", &env).unwrap();
        let text = serde_json::to_string(&c.redacted()).unwrap();
        assert!(!text.contains("t0k"), "{text}");
        assert!(!text.contains("C2FVsBQ"), "{text}");
        assert!(
            text.contains("<redacted, from Bearer ${JOBS_TOKEN}>"),
            "{text}"
        );
    }

    fn preset_env(name: &str) -> Option<String> {
        match name {
            "OPENAI_API_KEY" => Some("sk-test".into()),
            "ANTHROPIC_API_KEY" => Some("ak-test".into()),
            "GEMINI_API_KEY" => Some("gk-test".into()),
            "HOOK_SECRET" => Some("whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD".into()),
            _ => None,
        }
    }

    fn upstream(text: &str) -> Result<UpstreamConfig, String> {
        Config::parse(text, "shim.toml", &preset_env)
            .map(|c| c.upstreams.into_values().next().unwrap())
            .map_err(|e| e.to_string())
    }

    #[test]
    fn presets_fill_base_url_path_headers_and_schedule() {
        let u = upstream("[upstreams.ant]\npreset = \"anthropic-batch\"\n").unwrap();
        assert_eq!(u.base_url.as_str(), "https://api.anthropic.com/v1/");
        assert_eq!(u.status_path, "messages/batches/{operation}");
        assert_eq!(u.headers["x-api-key"], "ak-test");
        assert_eq!(u.headers["anthropic-version"], "2023-06-01");
        assert_eq!(u.poll, PollConfig::batch());
        let u = upstream("[upstreams.oai]\npreset = \"openai-response\"\n").unwrap();
        assert_eq!(u.headers["authorization"], "Bearer sk-test");
        assert_eq!(u.poll, PollConfig::media());
    }

    #[test]
    fn a_preset_header_needs_its_env_var_unless_replaced_or_removed() {
        let e = upstream("[upstreams.r]\npreset = \"replicate\"\n").unwrap_err();
        assert!(
            e.contains("`upstreams.r.headers.Authorization`: environment variable REPLICATE_API_TOKEN is not set"),
            "{e}"
        );
        // Same header in another case replaces the preset's; an empty value removes it.
        let u = upstream(
            "[upstreams.r]\npreset = \"replicate\"\nheaders = { authorization = \"Token ${OPENAI_API_KEY}\" }\n",
        )
        .unwrap();
        assert_eq!(u.headers["authorization"], "Token sk-test");
        assert_eq!(u.headers.len(), 1);
        let u = upstream(
            "[upstreams.g]\npreset = \"gemini-batch\"\nheaders = { x-goog-api-key = \"\", Authorization = \"Bearer ${OPENAI_API_KEY}\" }\n",
        )
        .unwrap();
        assert!(u.headers.get("x-goog-api-key").is_none());
        assert_eq!(u.headers.len(), 1);
    }

    #[test]
    fn preset_specific_mistakes_are_named() {
        let e = upstream("[upstreams.a]\npreset = \"anthropic-batch\"\n[upstreams.a.webhook]\nscheme = \"none\"\n").unwrap_err();
        assert!(
            e.contains("`upstreams.a.webhook`: preset \"anthropic-batch\" has no webhooks"),
            "{e}"
        );
        let e =
            upstream("[upstreams.z]\npreset = \"azure-async\"\nstatus_path = \"x/{operation}\"\n")
                .unwrap_err();
        assert!(
            e.contains("`upstreams.z.status_path`: does not apply to preset \"azure-async\""),
            "{e}"
        );
        let e = upstream(
            "[upstreams.o]\npreset = \"openai-batch\"\ncallback_events = [\"requires_action\"]\n",
        )
        .unwrap_err();
        assert!(e.contains("`upstreams.o.callback_events`: preset \"openai-batch\" never reports requires_action"), "{e}");
        let e = upstream(
            "[upstreams.i]\npreset = \"gemini-interaction\"\ncallback_events = [\"paused\"]\n",
        )
        .unwrap_err();
        assert!(
            e.contains("unknown callback event \"paused\"; expected one of: requires_action"),
            "{e}"
        );
        let u = upstream("[upstreams.i]\npreset = \"gemini-interaction\"\ncallback_events = [\"requires_action\"]\n").unwrap();
        assert_eq!(u.callback_events, vec!["requires_action".to_string()]);
    }

    fn with_events(preset: &str, events: &str) -> Result<UpstreamConfig, String> {
        upstream(&format!(
            "[upstreams.u]\npreset = \"{preset}\"\nheaders = {{ Authorization = \"\" }}\n[upstreams.u.webhook]\nscheme = \"standard-webhooks\"\nsecret_env = \"HOOK_SECRET\"\nevents = {{ {events} }}\n"
        ))
    }

    #[test]
    fn webhook_event_maps_are_checked() {
        let u = with_events(
            "openai-batch",
            "\"batch.completed\" = \"succeeded\", \"batch.expired\" = \"expired\"",
        )
        .unwrap();
        let w = u.webhook.unwrap();
        assert_eq!(w.events["batch.completed"], Status::Succeeded);
        assert_eq!(w.operation_field, "/data/id");
        let e = with_events("openai-batch", "\"batch.succeeded\" = \"succeeded\"").unwrap_err();
        assert!(e.contains("preset \"openai-batch\" does not send \"batch.succeeded\"; its events are: batch.completed"), "{e}");
        let e = with_events(
            "gemini-interaction",
            "\"interaction.requires_action\" = \"succeeded\"",
        )
        .unwrap_err();
        assert!(e.contains("announces a pause, not an end"), "{e}");
        let e = with_events("gemini-batch", "\"batch.failed\" = \"running\"").unwrap_err();
        assert!(e.contains("unknown outcome \"running\"; expected one of: succeeded, failed, cancelled, expired"), "{e}");
        let e = with_events("replicate", "\"succeeded\" = \"succeeded\"").unwrap_err();
        assert!(
            e.contains("Replicate webhooks carry the whole prediction"),
            "{e}"
        );
        assert_eq!(
            upstream("[upstreams.u]\npreset = \"replicate\"\nheaders = { Authorization = \"\" }\n[upstreams.u.webhook]\nscheme = \"none\"\n")
                .unwrap()
                .webhook
                .unwrap()
                .operation_field,
            "/id"
        );
        // Generic upstreams map any event type.
        let g = GOOD.replace(
            "safety_poll = \"10m\"",
            "safety_poll = \"10m\"\nevents = { \"job.done\" = \"succeeded\" }",
        );
        let c = Config::parse(&g, "shim.toml", &env).unwrap();
        assert_eq!(
            c.upstreams["jobs"].webhook.as_ref().unwrap().events["job.done"],
            Status::Succeeded
        );
    }

    /// GOOD with its webhook section replaced by `section` (the lines after the header).
    fn with_webhook(section: &str) -> String {
        let start = GOOD.find("[upstreams.jobs.webhook]").unwrap();
        format!("{}[upstreams.jobs.webhook]\n{section}\n", &GOOD[..start])
    }

    fn webhook_of(section: &str) -> WebhookConfig {
        Config::parse(&with_webhook(section), "shim.toml", &env)
            .unwrap()
            .upstreams["jobs"]
            .webhook
            .clone()
            .unwrap()
    }

    #[test]
    fn previous_secrets_are_read_with_their_until() {
        let w = webhook_of(
            r#"scheme = "standard-webhooks"
secret_env = "ED_PUBLIC"
previous_secrets = [{ env = "OLD_SECRET", until = "2026-12-31T00:00:00Z" }]"#,
        );
        assert_eq!(w.keys.len(), 2);
        assert!(matches!(w.keys[0].material, KeyMaterial::Ed25519(_)));
        assert_eq!(w.keys[0].until, None);
        assert!(matches!(&w.keys[1].material, KeyMaterial::Hmac(s) if s.0 == b"old secret bytes"));
        let until = w.keys[1].until.unwrap();
        assert_eq!(until.rfc3339(), "2026-12-31T00:00:00.000Z");
        assert!(w.keys[1].active_at(Timestamp(until.0 - 1)));
        assert!(!w.keys[1].active_at(until));
        assert!(w.warnings("jobs", Timestamp(until.0 - 1)).is_empty());
        let warnings = w.warnings("jobs", until);
        assert_eq!(warnings.len(), 1);
        assert!(
            warnings[0].starts_with("`upstreams.jobs.webhook.previous_secrets[0]`: until 2026-12-31T00:00:00.000Z has passed; the secret in OLD_SECRET is no longer accepted"),
            "{warnings:?}"
        );
        // Stripe's secret is kept as the string it is.
        let w = webhook_of("scheme = \"stripe\"\nsecret_env = \"STRIPE_SECRET\"");
        assert!(
            matches!(&w.keys[0].material, KeyMaterial::Hmac(s) if s.0 == b"whsec_stripe_as_is")
        );
    }

    #[test]
    fn gemini_jwt_defaults_and_audiences() {
        let w = webhook_of("scheme = \"gemini-jwt\"\naudience = \"https://app.example/hook\"");
        let j = w.jwt.unwrap();
        assert_eq!(j.jwks_url.as_str(), GEMINI_JWKS_URL);
        assert_eq!(j.audience, ["https://app.example/hook"]);
        assert_eq!(j.jwks_ttl, Duration::from_secs(3600));
        assert_eq!(j.jwks_min_interval, Duration::from_secs(10));
        assert!(w.keys.is_empty());
        // A token that may not cover the body cannot let an event decide an outcome.
        let e = err_of(&with_webhook(
            "scheme = \"gemini-jwt\"\naudience = \"a\"\nevents = { \"job.done\" = \"succeeded\" }",
        ));
        assert!(
            e.contains("`upstreams.jobs.webhook.events`: not allowed with scheme \"gemini-jwt\""),
            "{e}"
        );
        let w = webhook_of(
            "scheme = \"gemini-jwt\"\naudience = [\"a\", \"b\"]\njwks_url = \"http://127.0.0.1:1/jwks\"\njwks_ttl = \"5m\"\njwks_min_interval = \"1s\"",
        );
        let j = w.jwt.unwrap();
        assert_eq!(j.audience, ["a", "b"]);
        assert_eq!(j.jwks_url.as_str(), "http://127.0.0.1:1/jwks");
        assert_eq!(j.jwks_ttl, Duration::from_secs(300));
    }

    #[test]
    fn bad_webhook_sections_name_the_key() {
        let cases: &[(&str, &str)] = &[
            (
                "scheme = \"magic\"",
                "`upstreams.jobs.webhook.scheme`: unknown scheme \"magic\"; expected one of: \"standard-webhooks\", \"github\", \"stripe\", \"gemini-jwt\", \"none\"",
            ),
            (
                "scheme = \"gemini-jwt\"",
                "`upstreams.jobs.webhook.audience`: required for scheme \"gemini-jwt\"",
            ),
            (
                "scheme = \"gemini-jwt\"\naudience = 3",
                "`upstreams.jobs.webhook.audience`: must be a string or a list of strings",
            ),
            (
                "scheme = \"gemini-jwt\"\naudience = []",
                "`upstreams.jobs.webhook.audience`: must not be empty",
            ),
            (
                "scheme = \"gemini-jwt\"\naudience = \"a\"\nsecret_env = \"JOBS_WEBHOOK_SECRET\"",
                "`upstreams.jobs.webhook.secret_env`: not used by scheme \"gemini-jwt\" (its keys come from jwks_url)",
            ),
            (
                "scheme = \"gemini-jwt\"\naudience = \"a\"\nprevious_secrets = [{ env = \"OLD_SECRET\", until = \"2026-12-31T00:00:00Z\" }]",
                "`upstreams.jobs.webhook.previous_secrets`: not used by scheme \"gemini-jwt\"",
            ),
            (
                "scheme = \"gemini-jwt\"\naudience = \"a\"\njwks_url = \"ftp://127.0.0.1/k\"",
                "`upstreams.jobs.webhook.jwks_url`: \"ftp://127.0.0.1/k\" must use http or https",
            ),
            (
                "scheme = \"gemini-jwt\"\naudience = \"a\"\njwks_min_interval = \"0s\"",
                "`upstreams.jobs.webhook.jwks_min_interval`: must be more than 0s",
            ),
            (
                "scheme = \"gemini-jwt\"\naudience = \"a\"\njwks_ttl = \"1s\"",
                "`upstreams.jobs.webhook.jwks_ttl`: must not be less than jwks_min_interval",
            ),
            (
                "scheme = \"github\"\nsecret_env = \"JOBS_WEBHOOK_SECRET\"\naudience = \"a\"",
                "`upstreams.jobs.webhook.audience`: not used by scheme \"github\" (only by \"gemini-jwt\")",
            ),
            (
                "scheme = \"stripe\"",
                "`upstreams.jobs.webhook.secret_env`: required for scheme \"stripe\"",
            ),
            (
                "scheme = \"none\"\nprevious_secrets = [{ env = \"OLD_SECRET\", until = \"2026-12-31T00:00:00Z\" }]",
                "`upstreams.jobs.webhook.previous_secrets`: not used by scheme \"none\"",
            ),
            (
                "scheme = \"standard-webhooks\"\nsecret_env = \"ED_PRIVATE\"",
                "`upstreams.jobs.webhook.secret_env`: the value of ED_PRIVATE is an Ed25519 signing (private) key (whsk_...); configure the upstream's public key (whpk_...)",
            ),
            (
                "scheme = \"standard-webhooks\"\nsecret_env = \"SHORT_PUBLIC\"",
                "`upstreams.jobs.webhook.secret_env`: the value of SHORT_PUBLIC is not a valid whpk_ key: an Ed25519 public key is 32 bytes, this one is 3",
            ),
            (
                "scheme = \"github\"\nsecret_env = \"JOBS_WEBHOOK_SECRET\"\nprevious_secrets = [{ env = \"GONE\", until = \"2026-12-31T00:00:00Z\" }]",
                "`upstreams.jobs.webhook.previous_secrets[0].env`: environment variable GONE is not set",
            ),
            (
                "scheme = \"github\"\nsecret_env = \"JOBS_WEBHOOK_SECRET\"\nprevious_secrets = [{ env = \"OLD_SECRET\", until = \"end of year\" }]",
                "invalid RFC 3339 time \"end of year\"",
            ),
            (
                "scheme = \"github\"\nsecret_env = \"JOBS_WEBHOOK_SECRET\"\nprevious_secrets = [{ env = \"OLD_SECRET\" }]",
                "missing field `until`",
            ),
        ];
        for (section, want) in cases {
            let e = err_of(&with_webhook(section));
            assert!(e.contains(want), "for\n{section}\nwant {want:?}\ngot  {e}");
        }
        // TOML-level errors name the dotted key too.
        let e = err_of(&with_webhook(
            "scheme = \"github\"\nsecret_env = \"JOBS_WEBHOOK_SECRET\"\nprevious_secrets = [{ env = \"OLD_SECRET\", until = \"end of year\" }]",
        ));
        assert!(
            e.contains("`upstreams.jobs.webhook.previous_secrets[0].until`"),
            "{e}"
        );
    }

    #[test]
    fn sizes_parse_binary_units() {
        let s: Size = toml::from_str::<toml::Value>("x = \"64MiB\"").unwrap()["x"]
            .clone()
            .try_into()
            .unwrap();
        assert_eq!(s.0, 64 << 20);
    }
}
