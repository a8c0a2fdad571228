//! `shim.toml`: the top-level schema (`server`, `store`, `callbacks`, `workers`), loading (with
//! keys set from the environment, [`env`]), the error format; the callback keys are in
//! [`secrets`], the redacted view `hookshim check` prints in `show`. Each part owns its own
//! configuration and this module assembles them: `[upstreams.<name>]` is resolved by
//! [`crate::upstream::config`] (with `poll` and `rate` from [`crate::schedule::config`] and
//! `webhook` from [`crate::upstream::webhook`]); the small value types are in [`crate::values`].
//! Everything the rest of the program reads from configuration is the resolved [`Config`]:
//! environment variables expanded, URLs parsed, JSON pointers checked.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use std::ops::RangeInclusive;

use ipnet::IpNet;
use reqwest::Url;
use serde::Deserialize;

use crate::address::{Rules, check_callback_url, parse_port_range};

use crate::clock::Timestamp;
pub use crate::store::config::{Backend, PgConfig, StoreConfig};
use crate::store::config::{RawStore, resolve_store};
pub use crate::store::retention::RetentionConfig;
use crate::store::retention::{RawRetention, resolve_retention};
use crate::upstream::UpstreamConfig;
use crate::upstream::config::{RawUpstream, resolve_upstream};
use crate::values::{Dur, EnvLookup, Secret, Size, process_env};

pub mod env;
pub mod secrets;
mod show;
pub use secrets::{CallbackSigningKey, KeySource, PreviousSecret};
use secrets::{RawKeys, RawPreviousSecret, resolve_keys};

/// An error in the configuration: which file, which key, what is wrong.
#[derive(Debug, thiserror::Error)]
#[error("{file}: {message}")]
pub struct ConfigError {
    pub file: String,
    pub message: String,
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
    #[serde(default)]
    log: RawLog,
    #[serde(default)]
    retention: RawRetention,
    #[serde(default)]
    trace: crate::telemetry::RawTrace,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawLog {
    format: Option<String>,
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
    /// The public face: a second listener serving only `/webhooks/*` and `/healthz`.
    #[serde(default)]
    webhook_listen: Option<String>,
    /// Accept an API listener on a non-loopback address without an API token.
    #[serde(default)]
    allow_unauthenticated: bool,
    #[serde(default = "d_max_connections_per_ip")]
    max_connections_per_ip: usize,
}
fn d_max_connections_per_ip() -> usize {
    64
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
            webhook_listen: None,
            allow_unauthenticated: false,
            max_connections_per_ip: d_max_connections_per_ip(),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCallbacks {
    default_url: Option<String>,
    #[serde(default = "d_secret_env")]
    secret_env: String,
    /// The current secret from a file instead (re-read on SIGHUP).
    secret_file: Option<PathBuf>,
    /// Secrets callbacks are still signed with during a rotation.
    #[serde(default)]
    previous_secrets: Vec<RawPreviousSecret>,
    /// An Ed25519 key (`whsk_…`): callbacks also carry a `v1a` signature.
    signing_key_env: Option<String>,
    signing_key_file: Option<PathBuf>,
    #[serde(default = "d_allowed")]
    allowed_hosts: Vec<String>,
    #[serde(default)]
    allowed_networks: Vec<String>,
    allowed_ports: Option<Vec<RawPort>>,
    #[serde(default = "d_cb_timeout")]
    timeout: Dur,
    #[serde(default = "d_retry")]
    retry_schedule: Vec<Dur>,
    #[serde(default)]
    include_upstream_body: bool,
}

/// An entry of `callbacks.allowed_ports`: `443` or `"8000-8999"`.
#[derive(Deserialize)]
#[serde(untagged)]
enum RawPort {
    One(u16),
    Range(String),
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
            secret_file: None,
            previous_secrets: Vec::new(),
            signing_key_env: None,
            signing_key_file: None,
            allowed_hosts: d_allowed(),
            allowed_networks: Vec::new(),
            allowed_ports: None,
            timeout: d_cb_timeout(),
            retry_schedule: d_retry(),
            include_upstream_body: false,
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
    pub log: LogConfig,
    /// `[retention]`: how long finished operations are kept.
    pub retention: RetentionConfig,
    /// `[trace]`: `None` while traces are off (the default).
    pub trace: Option<crate::telemetry::TraceConfig>,
    /// Where the keys that were set came from: the environment ([`env`]) or the file (dotted
    /// key → `"file"` or the variable's name). Keys not listed have their default.
    pub origins: BTreeMap<String, String>,
}

/// `[log]`: how stderr lines look. The level filter is `HOOKSHIM_LOG` (not in the file).
#[derive(Clone, Debug, Default)]
pub struct LogConfig {
    pub format: LogFormat,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LogFormat {
    /// One human-readable line per event.
    #[default]
    Text,
    /// One JSON object per line (fields flattened: `op`, `upstream`, `status`, ...).
    Json,
}

impl LogFormat {
    pub fn as_str(self) -> &'static str {
        match self {
            LogFormat::Text => "text",
            LogFormat::Json => "json",
        }
    }
}

/// The environment variable that overrides `log.format`.
pub const LOG_FORMAT_ENV: &str = "HOOKSHIM_LOG_FORMAT";

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
    /// The public listener (webhooks and `/healthz` only), when one is configured.
    pub webhook_listen: Option<SocketAddr>,
    /// The operator accepted an API listener on a non-loopback address without a token.
    pub allow_unauthenticated: bool,
    /// Connections one client address may hold open at once on the public listener.
    pub max_connections_per_ip: usize,
}

#[derive(Clone, Debug)]
pub struct CallbackConfig {
    pub default_url: Option<Url>,
    pub secret_env: String,
    /// The signing key when the environment or `secret_file` provides one; otherwise the
    /// store's generated key is used (see [`crate::delivery::load_or_create_secret`]).
    pub secret: Option<Secret>,
    /// Where `secret` came from (`None` with it).
    pub secret_source: Option<KeySource>,
    pub secret_file: Option<PathBuf>,
    /// Older secrets callbacks are signed with too, during a rotation.
    pub previous_secrets: Vec<PreviousSecret>,
    /// The Ed25519 key for `v1a` signatures, when configured.
    pub signing_key: Option<CallbackSigningKey>,
    /// Lower-case, without brackets: exact hosts, `*.suffix` patterns, or `*`
    /// (see [`crate::address`]).
    pub allowed_hosts: Vec<String>,
    /// Networks whose non-public addresses a host admitted by a pattern may resolve to.
    pub allowed_networks: Vec<IpNet>,
    /// `None`: not set (hosts named exactly use any port, pattern hosts 80, 443, 8000-8999).
    pub allowed_ports: Option<Vec<RangeInclusive<u16>>>,
    pub timeout: Duration,
    pub retry_schedule: Vec<Duration>,
    /// Whether callbacks carry the kept upstream status body (`data.upstream_body`).
    pub include_upstream_body: bool,
}

impl CallbackConfig {
    /// What is valid but probably a mistake: a previous secret past its `until` (no longer
    /// signed with; remove it).
    pub fn warnings(&self, now: Timestamp) -> Vec<String> {
        self.previous_secrets
            .iter()
            .enumerate()
            .filter(|(_, p)| p.until.is_some_and(|u| now >= u))
            .map(|(i, p)| {
                format!(
                    "`callbacks.previous_secrets[{i}]`: until {} has passed; callbacks are no longer signed with the secret in {} (remove the entry)",
                    p.until.map(|u| u.rfc3339()).unwrap_or_default(),
                    p.source
                )
            })
            .collect()
    }

    /// The destination rules, for [`crate::address::check_callback_url`] and the resolver.
    pub fn rules(&self) -> Rules<'_> {
        Rules {
            hosts: &self.allowed_hosts,
            networks: &self.allowed_networks,
            ports: self.allowed_ports.as_deref(),
        }
    }
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
impl Config {
    /// Read and resolve a config file with the process environment, keys set by `HOOKSHIM_…__…`
    /// variables included ([`env`]).
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            file: path.display().to_string(),
            message: format!("cannot read the config file: {e}"),
        })?;
        let vars = env::config_vars(std::env::vars());
        Config::parse_with_vars(&text, &path.display().to_string(), &process_env, &vars)
    }

    /// Parse and resolve config text. `source` names the file in messages; `env` reads variables.
    pub fn parse(text: &str, source: &str, env: EnvLookup<'_>) -> Result<Config, ConfigError> {
        Config::parse_with_vars(text, source, env, &[])
    }

    /// [`Config::parse`] with keys set from the environment: `vars` as [`env::config_vars`]
    /// picks them (name, value), applied over the file.
    pub fn parse_with_vars(
        text: &str,
        source: &str,
        env: EnvLookup<'_>,
        vars: &[(String, String)],
    ) -> Result<Config, ConfigError> {
        let err = |message: String| ConfigError {
            file: source.to_string(),
            message,
        };
        if vars.is_empty() {
            let (raw, origins) = Config::raw(text).map_err(err)?;
            return Config::resolve_all(raw, origins, source, env, &|| {
                Config::raw(text).map(|r| r.0)
            });
        }
        let merged = || -> Result<(RawConfig, BTreeMap<String, String>), String> {
            // Not TOML at all: the file's own message (line and column).
            let mut table: toml::Table = match toml::from_str(text) {
                Ok(t) => t,
                Err(_) => return Config::raw(text),
            };
            let mut origins = BTreeMap::new();
            let mut keys = Vec::new();
            env::keys_set("", &table, &mut keys);
            origins.extend(keys.into_iter().map(|k| (k, "file".to_string())));
            let applied = env::apply(&mut table, vars)?;
            let raw = serde_path_to_error::deserialize::<_, RawConfig>(toml::Value::Table(table))
                .map_err(|pe| {
                let path = pe.path().to_string();
                let by = applied
                    .iter()
                    .filter(|o| {
                        path == o.key
                            || path.starts_with(&format!("{}.", o.key))
                            || path.starts_with(&format!("{}[", o.key))
                    })
                    .map(|o| o.var.as_str())
                    .next_back();
                let msg = pe.into_inner().to_string();
                match by {
                    Some(var) => format!("`{path}` (set by {var}): {msg}"),
                    None => format!("`{path}`: {msg}"),
                }
            })?;
            origins.extend(applied.into_iter().map(|o| (o.key, o.var)));
            Ok((raw, origins))
        };
        let (raw, origins) = merged().map_err(err)?;
        Config::resolve_all(raw, origins, source, env, &|| merged().map(|r| r.0))
    }

    /// The file as written, and the keys it sets.
    fn raw(text: &str) -> Result<(RawConfig, BTreeMap<String, String>), String> {
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
            match path {
                Some(p) => format!("`{p}`: {msg}"),
                None => msg,
            }
        })?;
        let mut keys = Vec::new();
        if let Ok(table) = toml::from_str::<toml::Table>(text) {
            env::keys_set("", &table, &mut keys);
        }
        let origins = keys.into_iter().map(|k| (k, "file".to_string())).collect();
        Ok((raw, origins))
    }

    /// Resolve `raw`; when environment variables are missing, resolve again (`again` gives
    /// the same raw config) to report every one at once.
    fn resolve_all(
        raw: RawConfig,
        origins: BTreeMap<String, String>,
        source: &str,
        env: EnvLookup<'_>,
        again: &dyn Fn() -> Result<RawConfig, String>,
    ) -> Result<Config, ConfigError> {
        let err = |message: String| ConfigError {
            file: source.to_string(),
            message,
        };
        let first = match resolve(raw, source, env) {
            Ok(mut c) => {
                c.origins = origins;
                return Ok(c);
            }
            Err(e) => e,
        };
        let Some(var) = missing_variable(&first) else {
            return Err(err(first));
        };
        // Report every missing variable at once: resolve again with a stand-in for each one
        // found, until another is missing or the config resolves (or fails otherwise).
        let mut missing = vec![(var.to_string(), first.clone())];
        while missing.len() < 100 {
            let names: Vec<&str> = missing.iter().map(|(n, _)| n.as_str()).collect();
            let lookup =
                |k: &str| env(k).or_else(|| names.contains(&k).then(|| "unset".to_string()));
            let Ok(raw) = again() else {
                break;
            };
            match resolve(raw, source, &lookup) {
                Err(e) => match missing_variable(&e) {
                    Some(v) if !names.contains(&v) => {
                        let v = v.to_string();
                        missing.push((v, e));
                    }
                    _ => break,
                },
                Ok(_) => break,
            }
        }
        if missing.len() == 1 {
            return Err(err(first));
        }
        let lines: Vec<String> = missing.into_iter().map(|(_, m)| format!("  {m}")).collect();
        Err(err(format!(
            "{} environment variables are not set; set each (or change the key that names it):\n{}",
            lines.len(),
            lines.join("\n")
        )))
    }
}

/// The variable a "`key`: environment variable NAME is not set" error names.
fn missing_variable(message: &str) -> Option<&str> {
    let (_, rest) = message.split_once("environment variable ")?;
    rest.strip_suffix(" is not set")
        .filter(|n| !n.is_empty() && !n.contains(' '))
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
    if raw.server.max_connections_per_ip == 0 {
        return Err("`server.max_connections_per_ip`: must be at least 1 (e.g. 64)".into());
    }
    let webhook_listen = match &raw.server.webhook_listen {
        None => None,
        Some(text) => {
            let addr: SocketAddr = text.parse().map_err(|e| {
                format!(
                    "`server.webhook_listen`: {text:?} is not an address like \"0.0.0.0:8681\" ({e})"
                )
            })?;
            if addr == listen {
                return Err(format!(
                    "`server.webhook_listen`: {addr} is also `server.listen`; the public listener \
                     needs its own port"
                ));
            }
            Some(addr)
        }
    };
    if api_token.is_none() && !listen.ip().is_loopback() && !raw.server.allow_unauthenticated {
        let var = &raw.server.api_token_env;
        return Err(format!(
            "`server.listen`: {listen} is not a loopback address and {var} is not set, so anyone \
             who can reach it could register operations, read their results and redeliver \
             callbacks. Set {var}, listen on 127.0.0.1 (and put webhooks on \
             `server.webhook_listen`), or set `server.allow_unauthenticated = true`"
        ));
    }

    let store = resolve_store(raw.store, env)?;
    let retention = resolve_retention(raw.retention)?;

    let cb = raw.callbacks;
    let allowed_hosts: Vec<String> = cb
        .allowed_hosts
        .iter()
        .map(|h| h.trim_matches(['[', ']']).to_ascii_lowercase())
        .collect();
    for h in &allowed_hosts {
        let pattern_ok = h == "*" || h.strip_prefix("*.").is_some_and(|s| !s.contains('*'));
        if h.is_empty() || h.contains('/') || (h.contains('*') && !pattern_ok) {
            return Err(format!(
                "`callbacks.allowed_hosts`: {h:?} is not a host (\"hooks.example.com\"), a \
                 pattern (\"*.example.com\") or \"*\""
            ));
        }
    }
    let allowed_networks = cb
        .allowed_networks
        .iter()
        .map(|n| {
            n.trim().parse::<IpNet>().map_err(|_| {
                format!(
                    "`callbacks.allowed_networks`: {n:?} is not a network in CIDR form \
                     (\"10.1.0.0/16\", \"fd00::/8\")"
                )
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let allowed_ports = match cb.allowed_ports {
        None => None,
        Some(list) => Some(
            list.into_iter()
                .map(|p| match p {
                    RawPort::One(0) => Err("0 is not a port".to_string()),
                    RawPort::One(n) => Ok(n..=n),
                    RawPort::Range(t) => parse_port_range(&t),
                })
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| format!("`callbacks.allowed_ports`: {e}"))?,
        ),
    };
    let rules = Rules {
        hosts: &allowed_hosts,
        networks: &allowed_networks,
        ports: allowed_ports.as_deref(),
    };
    let default_url = match cb.default_url {
        None => None,
        Some(u) => Some(
            check_callback_url(&u, rules).map_err(|e| format!("`callbacks.default_url`: {e}"))?,
        ),
    };
    let keys = resolve_keys(
        RawKeys {
            secret_env: &cb.secret_env,
            secret_file: cb.secret_file.as_deref(),
            previous_secrets: &cb.previous_secrets,
            signing_key_env: cb.signing_key_env.as_deref(),
            signing_key_file: cb.signing_key_file.as_deref(),
        },
        env,
    )?;
    let (secret, secret_source) = match keys.secret {
        Some((s, from)) => (Some(s), Some(from)),
        None => (None, None),
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
        let mut resolved = resolve_upstream(&name, u, env)?;
        if let Some(cb) = &resolved.proxy.callback_url {
            let checked = check_callback_url(cb, rules)
                .map_err(|e| format!("`upstreams.{name}.proxy.callback_url`: {e}"))?;
            resolved.proxy.callback_url = Some(checked.to_string());
        }
        upstreams.insert(name, resolved);
    }

    let (format, from) = match env(LOG_FORMAT_ENV) {
        Some(v) => (Some(v), LOG_FORMAT_ENV.to_string()),
        None => (raw.log.format.clone(), "`log.format`".to_string()),
    };
    let log = LogConfig {
        format: match format.as_deref().map(str::trim) {
            None | Some("text") => LogFormat::Text,
            Some("json") => LogFormat::Json,
            Some(other) => {
                return Err(format!(
                    "{from}: {other:?} is not a log format; write \"text\" or \"json\""
                ));
            }
        },
    };
    let trace = crate::telemetry::config::resolve(raw.trace, env)?;
    Ok(Config {
        log,
        trace,
        source: source.to_string(),
        server: ServerConfig {
            listen,
            api_token_env: raw.server.api_token_env,
            api_token,
            max_body: raw.server.max_body.0 as usize,
            max_upstream_body: raw.server.max_upstream_body.0 as usize,
            max_connections: raw.server.max_connections,
            header_read_timeout: raw.server.header_read_timeout.0,
            webhook_listen,
            allow_unauthenticated: raw.server.allow_unauthenticated,
            max_connections_per_ip: raw.server.max_connections_per_ip,
        },
        store,
        retention,
        callbacks: CallbackConfig {
            default_url,
            secret_env: cb.secret_env,
            secret,
            secret_source,
            secret_file: cb.secret_file,
            previous_secrets: keys.previous,
            signing_key: keys.signing_key,
            allowed_hosts,
            allowed_networks,
            allowed_ports,
            timeout: cb.timeout.0,
            retry_schedule: cb.retry_schedule.into_iter().map(|d| d.0).collect(),
            include_upstream_body: cb.include_upstream_body,
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
        origins: BTreeMap::new(),
    })
}

#[cfg(test)]
mod tests;
