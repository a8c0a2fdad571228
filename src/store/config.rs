//! `[store]`: which backend keeps the state, and its settings. The store owns this table
//! (`config.rs` only assembles the parts): sled's directory and cache, or PostgreSQL's
//! connection (from the environment: a URL carries a password), pool, schema and lease.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use crate::values::{Dur, Size};

/// `[store]` as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawStore {
    #[serde(default)]
    backend: Option<String>,
    #[serde(default = "d_path")]
    path: PathBuf,
    #[serde(default = "d_cache")]
    cache: Size,
    #[serde(default = "d_kept_upstream_body")]
    max_upstream_body: Size,
    #[serde(default = "d_url_env")]
    url_env: String,
    #[serde(default = "d_pool_size")]
    pool_size: usize,
    #[serde(default = "d_schema")]
    schema: String,
    #[serde(default = "d_lease")]
    lease: Dur,
}
fn d_kept_upstream_body() -> Size {
    Size(256 << 10)
}
fn d_path() -> PathBuf {
    "data".into()
}
fn d_cache() -> Size {
    Size(64 << 20)
}
fn d_url_env() -> String {
    "HOOKSHIM_DATABASE_URL".into()
}
fn d_pool_size() -> usize {
    8
}
fn d_schema() -> String {
    "hookshim".into()
}
fn d_lease() -> Dur {
    Dur(Duration::from_secs(30))
}
impl Default for RawStore {
    fn default() -> Self {
        RawStore {
            backend: None,
            path: d_path(),
            cache: d_cache(),
            max_upstream_body: d_kept_upstream_body(),
            url_env: d_url_env(),
            pool_size: d_pool_size(),
            schema: d_schema(),
            lease: d_lease(),
        }
    }
}

/// The most connections `store.pool_size` may ask for.
pub const MAX_POOL_SIZE: usize = 256;

#[derive(Clone, Debug)]
pub struct StoreConfig {
    pub backend: Backend,
    /// sled's data directory.
    pub path: PathBuf,
    pub cache_bytes: u64,
    /// The largest upstream status body kept with a record (`upstream_body`); a larger one is
    /// kept cut to this size and flagged `upstream_body_truncated`.
    pub max_upstream_body: usize,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Backend {
    /// The embedded default: one process, one data directory.
    Sled,
    /// PostgreSQL: several replicas share one database.
    Postgres(PgConfig),
}

#[derive(Clone, PartialEq)]
pub struct PgConfig {
    /// The connection URL (may carry a password: never printed).
    pub url: String,
    /// The environment variable it came from (for messages).
    pub url_env: String,
    pub pool_size: usize,
    /// The schema every table lives in (created at start).
    pub schema: String,
    /// How long a claim on due work lasts before another replica may take it over.
    pub lease: Duration,
}

impl std::fmt::Debug for PgConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgConfig")
            .field("url", &format_args!("<redacted, from {}>", self.url_env))
            .field("pool_size", &self.pool_size)
            .field("schema", &self.schema)
            .field("lease", &self.lease)
            .finish()
    }
}

impl StoreConfig {
    /// What `hookshim check` prints (no URL: it may carry a password).
    pub fn redacted(&self) -> serde_json::Value {
        let backend = match &self.backend {
            Backend::Sled => serde_json::json!({"backend": "sled"}),
            Backend::Postgres(pg) => serde_json::json!({
                "backend": "postgres",
                "url": format!("<redacted, from {}>", pg.url_env),
                "pool_size": pg.pool_size,
                "schema": pg.schema,
                "lease": format!("{}ms", pg.lease.as_millis()),
            }),
        };
        let mut v = serde_json::json!({
            "path": self.path.display().to_string(),
            "cache_bytes": self.cache_bytes,
            "max_upstream_body": self.max_upstream_body,
        });
        if let (Some(v), Some(b)) = (v.as_object_mut(), backend.as_object()) {
            v.extend(b.clone());
        }
        v
    }
}

/// A schema name hookshim accepts: a plain lower-case SQL identifier, so it never needs quoting.
pub fn valid_schema(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c == '_')
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        && name.len() <= 63
}

/// Check `[store]` and read the database URL from the environment (`env`).
pub fn resolve_store(
    raw: RawStore,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<StoreConfig, String> {
    if raw.cache.0 < (1 << 20) {
        return Err("`store.cache`: must be at least 1MiB".into());
    }
    if raw.max_upstream_body.0 > (16 << 20) {
        return Err("`store.max_upstream_body`: at most 16MiB (every record carries it); write e.g. \"256KiB\"".into());
    }
    let backend = match raw.backend.as_deref().map(str::trim) {
        None | Some("sled") => Backend::Sled,
        Some("postgres") => {
            let url = env(&raw.url_env)
                .filter(|u| !u.trim().is_empty())
                .ok_or_else(|| {
                    format!(
                        "`store.url_env`: {} is not set; set it to the database's URL, e.g. \
                     postgres://hookshim@127.0.0.1:5432/hookshim (store.backend is \"postgres\")",
                        raw.url_env
                    )
                })?;
            // The parser's message names the part it could not read, never the password.
            url.parse::<tokio_postgres::Config>().map_err(|e| {
                format!(
                    "`store.url_env`: the value of {} is not a PostgreSQL URL ({e}); write e.g. \
                     postgres://user:password@host:5432/database",
                    raw.url_env
                )
            })?;
            if !(1..=MAX_POOL_SIZE).contains(&raw.pool_size) {
                return Err(format!(
                    "`store.pool_size`: {} is out of range; write a number in 1..={MAX_POOL_SIZE}",
                    raw.pool_size
                ));
            }
            if !valid_schema(&raw.schema) {
                return Err(format!(
                    "`store.schema`: {:?} is not a plain schema name; use lower-case letters, \
                     digits and '_' (not first a digit), at most 63 characters",
                    raw.schema
                ));
            }
            if raw.lease.0 < Duration::from_secs(1) || raw.lease.0 > Duration::from_secs(3600) {
                return Err("`store.lease`: must be between 1s and 1h (e.g. \"30s\")".to_string());
            }
            Backend::Postgres(PgConfig {
                url,
                url_env: raw.url_env,
                pool_size: raw.pool_size,
                schema: raw.schema,
                lease: raw.lease.0,
            })
        }
        Some(other) => {
            return Err(format!(
                "`store.backend`: {other:?} is not a store; write \"sled\" (the default: one \
                 process, a local directory) or \"postgres\" (several replicas, one database)"
            ));
        }
    };
    Ok(StoreConfig {
        backend,
        path: raw.path,
        cache_bytes: raw.cache.0,
        max_upstream_body: raw.max_upstream_body.0 as usize,
    })
}
