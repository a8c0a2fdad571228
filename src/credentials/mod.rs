//! Credentials that refresh: per upstream, the header (or the AWS SigV4 signature) a status
//! request carries, fetched from a command, a file, the GCE metadata server, or the AWS
//! environment and shared files — and fetched again before it runs out, when its file
//! changes, and once when the upstream rejects it (401/403).
//!
//! A layer below the stages, beside `upstream/`: the poller asks [`Credential::authorize`] to
//! put the credential on a built request, and after a 401/403 asks again with the generation
//! it used, which refreshes only if nobody refreshed meanwhile (many polls rejected at once
//! run the command once). Fetches are one at a time per upstream (a mutex), bounded in time and
//! bytes ([`token`]). A failed fetch is remembered for [`RETRY_FAILED`] (so a broken `gcloud`
//! is not run for every poll), logged, counted in `hookshim_credential_refreshes_total{result
//! = "error"}` and shown in `/readyz` ([`Credentials::errors`]); it never ends an operation:
//! the poll that needed it is transient. An older token still in hand keeps being used while a
//! refresh fails. Tokens are never logged and never printed by `hookshim check`.
//!
//! Expiry is real time (`std::time::Instant`), not the injected clock: a token expires at the
//! upstream whatever the tests' clock says.

pub mod aws;
pub mod config;
pub mod token;

pub use config::{AuthConfig, AuthSource, RawAuth, resolve_auth};

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use reqwest::header::HeaderValue;

use crate::metrics::ResultLabels;

/// After a failed fetch, how long the error is answered without trying again.
pub const RETRY_FAILED: Duration = Duration::from_secs(5);
/// A credential with an expiry is fetched again this long before it (at most half its life).
pub const EXPIRY_MARGIN: Duration = Duration::from_secs(5 * 60);
/// The metadata server's token without `expires_in` is fetched again after this long.
const METADATA_DEFAULT_LIFE: Duration = Duration::from_secs(5 * 60);

/// Why a credential could not be obtained. The messages name the source (program, file,
/// URL, profile), never the token.
#[derive(Clone, Debug, thiserror::Error)]
pub enum CredentialError {
    #[error("command {program} {reason}")]
    Command { program: String, reason: String },
    #[error("file {path}: {reason}")]
    File { path: String, reason: String },
    #[error("metadata server {url}: {reason}")]
    Metadata { url: String, reason: String },
    #[error("AWS credentials: {0}")]
    Aws(String),
    #[error("AWS SigV4 signing failed: {0}")]
    Signing(String),
}

/// What a fetch produced.
#[derive(Clone)]
enum Material {
    /// The header value (prefix + token), marked sensitive.
    Header(HeaderValue),
    Aws(aws::AwsKeys),
}

#[derive(Default)]
struct Cache {
    material: Option<Material>,
    /// Bumped by every successful fetch.
    generation: u64,
    /// When to fetch again (`None`: only on change or rejection).
    refresh_at: Option<Instant>,
    /// The token file's stamp when it was read.
    stamp: Option<token::FileStamp>,
    failed: Option<(Instant, CredentialError)>,
}

/// One upstream's credential.
pub struct Credential {
    upstream: String,
    config: AuthConfig,
    cache: tokio::sync::Mutex<Cache>,
    error: Mutex<Option<String>>,
    refreshes: Family<ResultLabels, Counter>,
    http: reqwest::Client,
}

/// The generation of the credential a request carried (pass it back after a 401/403).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Generation(u64);

impl Credential {
    /// Put the credential on `req`: the token header, or the SigV4 signature (the request must
    /// be complete: method, URL, headers and body are signed). `rejected`: the generation
    /// the upstream just answered 401/403 to; it is replaced before this request goes out.
    pub async fn authorize(
        &self,
        req: &mut reqwest::Request,
        rejected: Option<Generation>,
    ) -> Result<Generation, CredentialError> {
        let (material, generation) = self.current(rejected).await?;
        match material {
            Material::Header(v) => {
                req.headers_mut().insert(self.config.header.clone(), v);
            }
            Material::Aws(keys) => {
                let AuthSource::AwsSigV4(s) = &self.config.source else {
                    return Err(CredentialError::Signing("not an AWS upstream".into()));
                };
                aws::sign_request(req, &keys, &s.service, &s.region, SystemTime::now())?;
            }
        }
        Ok(generation)
    }

    /// The last fetch's error, if it failed.
    pub fn error(&self) -> Option<String> {
        self.error.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    async fn current(
        &self,
        rejected: Option<Generation>,
    ) -> Result<(Material, Generation), CredentialError> {
        let mut c = self.cache.lock().await;
        let now = Instant::now();
        let rejected = rejected.is_some_and(|g| g.0 == c.generation) && c.material.is_some();
        let mut stale = c.material.is_none() || rejected || c.refresh_at.is_some_and(|t| now >= t);
        if let (AuthSource::File { path }, false) = (&self.config.source, stale) {
            stale = token::file_stamp(path).await.ok() != c.stamp;
        }
        if !stale {
            if let Some(m) = &c.material {
                return Ok((m.clone(), Generation(c.generation)));
            }
        }
        if let Some((at, e)) = &c.failed {
            if now < *at + RETRY_FAILED {
                return match (&c.material, rejected) {
                    (Some(m), false) => Ok((m.clone(), Generation(c.generation))),
                    _ => Err(e.clone()),
                };
            }
        }
        let why = if rejected {
            "rejected by the upstream"
        } else if c.material.is_none() {
            "first use"
        } else {
            "due"
        };
        match self.fetch(&mut c, now).await {
            Ok(m) => {
                c.material = Some(m.clone());
                c.generation += 1;
                c.failed = None;
                *self.error.lock().unwrap_or_else(|p| p.into_inner()) = None;
                self.count("ok");
                tracing::info!(upstream = %self.upstream, reason = why, "credential fetched");
                Ok((m, Generation(c.generation)))
            }
            Err(e) => {
                self.count("error");
                tracing::warn!(upstream = %self.upstream, reason = why, error = %e, "cannot obtain the upstream's credential; its polls back off until it can");
                *self.error.lock().unwrap_or_else(|p| p.into_inner()) = Some(e.to_string());
                c.failed = Some((now, e.clone()));
                match (&c.material, rejected) {
                    (Some(m), false) => Ok((m.clone(), Generation(c.generation))),
                    _ => Err(e),
                }
            }
        }
    }

    fn count(&self, result: &str) {
        self.refreshes
            .get_or_create(&ResultLabels {
                upstream: self.upstream.clone(),
                result: result.into(),
            })
            .inc();
    }

    async fn fetch(&self, c: &mut Cache, now: Instant) -> Result<Material, CredentialError> {
        let timeout = self.config.timeout;
        match &self.config.source {
            AuthSource::Command { argv, refresh } => {
                let t = token::run_command(argv, timeout).await?;
                c.refresh_at = Some(now + *refresh);
                self.header(&t).map_err(|reason| CredentialError::Command {
                    program: argv[0].clone(),
                    reason,
                })
            }
            AuthSource::File { path } => {
                let stamp = token::file_stamp(path).await?;
                let t = token::read_file(path).await?;
                c.stamp = Some(stamp);
                c.refresh_at = None;
                self.header(&t).map_err(|reason| CredentialError::File {
                    path: path.display().to_string(),
                    reason,
                })
            }
            AuthSource::GcpMetadata { url } => {
                let f = token::gcp_metadata(&self.http, url, timeout).await?;
                let life = f.expires_in.unwrap_or(METADATA_DEFAULT_LIFE);
                c.refresh_at = Some(now + life - margin(life));
                self.header(&f.token)
                    .map_err(|reason| CredentialError::Metadata {
                        url: url.to_string(),
                        reason,
                    })
            }
            AuthSource::AwsSigV4(s) => {
                let keys = aws::load(s, timeout, &|k| s.env.get(k)).await?;
                let life = keys
                    .expires
                    .map(|t| t.duration_since(SystemTime::now()).unwrap_or_default());
                c.refresh_at = Some(match life {
                    Some(life) => now + life - margin(life),
                    None => now + s.refresh,
                });
                Ok(Material::Aws(keys))
            }
        }
    }

    fn header(&self, token: &str) -> Result<Material, String> {
        let mut v = HeaderValue::from_str(&format!("{}{token}", self.config.prefix))
            .map_err(|_| "the token is not a valid header value".to_string())?;
        v.set_sensitive(true);
        Ok(Material::Header(v))
    }
}

/// How long before the end of a credential's `life` it is fetched again.
fn margin(life: Duration) -> Duration {
    EXPIRY_MARGIN.min(life / 2)
}

/// Every upstream's credential, by upstream name.
#[derive(Default)]
pub struct Credentials {
    by_upstream: HashMap<String, Arc<Credential>>,
}

impl Credentials {
    /// One [`Credential`] per upstream with `auth`; `refreshes` counts fetches by result;
    /// `http` (no proxy from the environment) asks the metadata server.
    pub fn new<'a>(
        auths: impl Iterator<Item = (&'a str, &'a AuthConfig)>,
        refreshes: Family<ResultLabels, Counter>,
        http: reqwest::Client,
    ) -> Credentials {
        let by_upstream = auths
            .map(|(name, config)| {
                (
                    name.to_string(),
                    Arc::new(Credential {
                        upstream: name.to_string(),
                        config: config.clone(),
                        cache: Default::default(),
                        error: Mutex::new(None),
                        refreshes: refreshes.clone(),
                        http: http.clone(),
                    }),
                )
            })
            .collect();
        Credentials { by_upstream }
    }

    /// The credential of `upstream`, if it has `auth`.
    pub fn get(&self, upstream: &str) -> Option<&Credential> {
        self.by_upstream.get(upstream).map(|c| c.as_ref())
    }

    /// Upstreams whose last fetch failed, with the error (for `/readyz`).
    pub fn errors(&self) -> BTreeMap<String, String> {
        self.by_upstream
            .iter()
            .filter_map(|(n, c)| c.error().map(|e| (n.clone(), e)))
            .collect()
    }

    /// Fetch every credential once (at start), so that a broken one shows in `/readyz` and the
    /// log before the first poll needs it.
    pub async fn warm(&self) {
        for c in self.by_upstream.values() {
            let _ = c.current(None).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn credential(source: AuthSource) -> Credential {
        Credential {
            upstream: "u".into(),
            config: AuthConfig {
                source,
                header: reqwest::header::AUTHORIZATION,
                prefix: "Bearer ".into(),
                timeout: Duration::from_secs(5),
            },
            cache: Default::default(),
            error: Mutex::new(None),
            refreshes: Default::default(),
            http: reqwest::Client::new(),
        }
    }

    async fn header(c: &Credential, rejected: Option<Generation>) -> (String, Generation) {
        let mut req =
            reqwest::Request::new(reqwest::Method::GET, "http://127.0.0.1/x".parse().unwrap());
        let g = c.authorize(&mut req, rejected).await.unwrap();
        (req.headers()["authorization"].to_str().unwrap().into(), g)
    }

    #[tokio::test]
    async fn a_rejection_refreshes_once_per_generation() {
        let dir = tempfile::tempdir().unwrap();
        let counter = dir.path().join("n");
        let script = format!(
            "n=$(cat {p} 2>/dev/null || echo 0); n=$((n+1)); echo $n > {p}; echo tok-$n",
            p = counter.display()
        );
        let c = credential(AuthSource::Command {
            argv: vec!["sh".into(), "-c".into(), script],
            refresh: Duration::from_secs(3600),
        });
        let (h1, g1) = header(&c, None).await;
        assert_eq!(h1, "Bearer tok-1");
        assert_eq!(header(&c, None).await.0, "Bearer tok-1", "cached");
        let (h2, g2) = header(&c, Some(g1)).await;
        assert_eq!(h2, "Bearer tok-2");
        // A second request rejected with the old generation does not run the command again.
        assert_eq!(header(&c, Some(g1)).await.0, "Bearer tok-2");
        assert_ne!(g1, g2);
        assert!(c.error().is_none());
    }

    #[tokio::test]
    async fn a_failed_fetch_is_an_error_and_is_remembered() {
        let c = credential(AuthSource::Command {
            argv: vec!["sh".into(), "-c".into(), "echo denied >&2; exit 3".into()],
            refresh: Duration::from_secs(3600),
        });
        let mut req =
            reqwest::Request::new(reqwest::Method::GET, "http://127.0.0.1/x".parse().unwrap());
        let e = c.authorize(&mut req, None).await.err().unwrap().to_string();
        assert_eq!(e, "command sh exited 3: denied");
        assert_eq!(c.error().as_deref(), Some("command sh exited 3: denied"));
        assert!(!req.headers().contains_key("authorization"));
    }

    #[tokio::test]
    async fn a_file_is_read_again_when_it_changes() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("token");
        std::fs::write(&p, "one\n").unwrap();
        let c = credential(AuthSource::File { path: p.clone() });
        assert_eq!(header(&c, None).await.0, "Bearer one");
        std::fs::write(&p, "second\n").unwrap(); // another size
        assert_eq!(header(&c, None).await.0, "Bearer second");
    }

    #[test]
    fn refresh_margin_is_at_most_half_the_life() {
        assert_eq!(margin(Duration::from_secs(3600)), EXPIRY_MARGIN);
        assert_eq!(margin(Duration::from_secs(4)), Duration::from_secs(2));
    }
}
