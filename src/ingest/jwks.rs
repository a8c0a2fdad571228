//! Gemini's dynamic webhooks: the `webhook-signature` header is an RS256 JWT, verified with a
//! key from a JWKS fetched over HTTP and chosen by the token's `kid`.
//!
//! The key sets are cached per URL ([`JwksCache`]). A set is used for `jwks_ttl` (less if its
//! `Cache-Control: max-age` says so) and refetched early when a token names a `kid` it does not
//! have (key rotation). Fetches are single-flight (one at a time per URL; the others wait for it
//! and use its result), and no two fetches of a URL start less than `jwks_min_interval` apart,
//! whatever triggered them: a flood of forged `kid`s, or a JWKS URL that is down, costs the URL
//! at most one request per interval. Time is the injected clock's.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::jwk::{AlgorithmParameters, Jwk, KeyAlgorithm, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;

use crate::body::{BodyError, read_capped};
use crate::clock::Timestamp;
use crate::signing::VerifyError;
use crate::upstream::webhook::JwtConfig;

/// How far past `exp` (or before `nbf`) a token is still accepted: clock skew.
pub const JWT_LEEWAY_SECS: u64 = 30;
/// The longest a JWKS request may take.
const FETCH_TIMEOUT: Duration = Duration::from_secs(10);
/// The largest JWKS body read.
const MAX_JWKS_BYTES: usize = 256 * 1024;

/// The JWKS key sets, by URL. Lives in [`crate::state::Shim`].
pub struct JwksCache {
    http: reqwest::Client,
    sets: Mutex<HashMap<String, Arc<KeySet>>>,
}

/// One URL's keys and fetch state.
#[derive(Default)]
struct KeySet {
    state: Mutex<SetState>,
    /// Held while fetching, so that one fetch serves every request waiting for it. A tokio
    /// mutex because it is held across the HTTP request; `state` is a std mutex because it is
    /// never held across an await.
    fetching: tokio::sync::Mutex<()>,
}

#[derive(Default)]
struct SetState {
    keys: HashMap<String, DecodingKey>,
    /// The keys are used until then; after it they are refetched before use.
    expires_at: Timestamp,
    last_attempt: Option<Timestamp>,
    /// Why the last fetch failed (`None` after a success).
    last_error: Option<String>,
}

/// What the token's claims must hold besides `aud` (which `jsonwebtoken` checks).
#[derive(Deserialize)]
struct Claims {
    exp: u64,
    nbf: Option<u64>,
    jti: Option<String>,
}

/// The JOSE header fields read before the key is chosen.
#[derive(Deserialize)]
struct JoseHeader {
    alg: Option<String>,
    kid: Option<String>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding these locks cannot leave the data half-changed in a harmful way.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl JwksCache {
    /// `http` is the client for outbound requests (the upstream client: rustls, few redirects).
    pub fn new(http: reqwest::Client) -> JwksCache {
        JwksCache {
            http,
            sets: Mutex::new(HashMap::new()),
        }
    }

    /// Verify a JWT from the `webhook-signature` header. Returns the token's `jti`, if any.
    pub async fn verify(
        &self,
        cfg: &JwtConfig,
        token: &str,
        now: Timestamp,
    ) -> Result<Option<String>, VerifyError> {
        let token = token.trim();
        let parts: Vec<&str> = token.split('.').collect();
        if parts.len() != 3 {
            return Err(VerifyError::MalformedToken(
                "webhook-signature is not a JWT (expected three dot-separated parts)".into(),
            ));
        }
        let header: JoseHeader = B64URL
            .decode(parts[0])
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .ok_or_else(|| {
                VerifyError::MalformedToken("the JWT header is not base64url-encoded JSON".into())
            })?;
        let alg = header.alg.unwrap_or_default();
        if alg != "RS256" {
            return Err(VerifyError::UnsupportedAlgorithm(alg));
        }
        let kid = header
            .kid
            .filter(|k| !k.is_empty())
            .ok_or_else(|| VerifyError::MalformedToken("the JWT header has no kid".into()))?;
        let key = self.key(cfg, &kid, now).await?;

        let mut validation = Validation::new(Algorithm::RS256);
        // exp and nbf are checked below against the injected clock, not the system's.
        validation.validate_exp = false;
        validation.validate_nbf = false;
        validation.set_required_spec_claims(&["exp", "aud"]);
        validation.set_audience(&cfg.audience);
        let data = jsonwebtoken::decode::<Claims>(token, &key, &validation).map_err(|e| {
            let audience = || cfg.audience.join(", ");
            match e.kind() {
                ErrorKind::InvalidSignature => VerifyError::BadSignature,
                ErrorKind::InvalidAlgorithm => VerifyError::UnsupportedAlgorithm(alg.clone()),
                ErrorKind::InvalidAudience => VerifyError::WrongAudience(audience()),
                ErrorKind::MissingRequiredClaim(c) if c == "aud" => VerifyError::WrongAudience(
                    format!("the token has no aud; expected {}", audience()),
                ),
                ErrorKind::MissingRequiredClaim(c) => {
                    VerifyError::MalformedToken(format!("the JWT has no {c} claim"))
                }
                _ => VerifyError::MalformedToken(format!("the JWT cannot be read: {e}")),
            }
        })?;
        let now_secs = now.unix_seconds();
        if data.claims.exp.saturating_add(JWT_LEEWAY_SECS) < now_secs {
            return Err(VerifyError::TokenExpired);
        }
        if data
            .claims
            .nbf
            .is_some_and(|nbf| nbf > now_secs.saturating_add(JWT_LEEWAY_SECS))
        {
            return Err(VerifyError::TokenNotYetValid);
        }
        Ok(data.claims.jti.filter(|j| !j.is_empty()))
    }

    /// The key named `kid` at `cfg.jwks_url`, fetching the set if it is stale or lacks `kid`
    /// (at most once per `jwks_min_interval`).
    async fn key(
        &self,
        cfg: &JwtConfig,
        kid: &str,
        now: Timestamp,
    ) -> Result<DecodingKey, VerifyError> {
        let set = lock(&self.sets)
            .entry(cfg.jwks_url.to_string())
            .or_default()
            .clone();
        let cached = |s: &SetState| (now < s.expires_at).then(|| s.keys.get(kid).cloned());
        if let Some(Some(key)) = cached(&lock(&set.state)) {
            return Ok(key);
        }
        let _fetching = set.fetching.lock().await;
        {
            let mut s = lock(&set.state);
            let fresh = match cached(&s) {
                Some(Some(key)) => return Ok(key),
                Some(None) => true,
                None => false,
            };
            if let Some(last) = s.last_attempt {
                let next = last.plus(cfg.jwks_min_interval);
                if now < next {
                    let wait = now.until(next);
                    return Err(match (&s.last_error, fresh) {
                        (Some(e), _) => VerifyError::KeysUnavailable(format!(
                            "{e}; next attempt in {}",
                            humantime::format_duration(round_secs(wait))
                        )),
                        (None, true) => VerifyError::UnknownKey(kid.to_string()),
                        // Expired but fetched less than jwks_min_interval ago: only possible
                        // if the clock moved back. Treat it like an outage.
                        (None, false) => VerifyError::KeysUnavailable(
                            "the cached key set expired and was fetched moments ago".into(),
                        ),
                    });
                }
            }
            s.last_attempt = Some(now);
        }
        let fetched = self.fetch(cfg).await;
        let mut s = lock(&set.state);
        match fetched {
            Ok((keys, max_age)) => {
                let ttl = max_age
                    .map_or(cfg.jwks_ttl, |m| m.min(cfg.jwks_ttl))
                    .max(cfg.jwks_min_interval);
                tracing::info!(url = %cfg.jwks_url, keys = keys.len(), ttl = %humantime::format_duration(ttl), "fetched the JWKS");
                s.keys = keys;
                s.expires_at = now.plus(ttl);
                s.last_error = None;
                s.keys
                    .get(kid)
                    .cloned()
                    .ok_or_else(|| VerifyError::UnknownKey(kid.to_string()))
            }
            Err(e) => {
                tracing::warn!(url = %cfg.jwks_url, error = %e, "JWKS fetch failed; webhooks that need it get 503");
                s.last_error = Some(e.clone());
                Err(VerifyError::KeysUnavailable(e))
            }
        }
    }

    /// GET the JWKS: its usable keys by `kid`, and its `Cache-Control: max-age` if any.
    async fn fetch(
        &self,
        cfg: &JwtConfig,
    ) -> Result<(HashMap<String, DecodingKey>, Option<Duration>), String> {
        let url = &cfg.jwks_url;
        let resp = self
            .http
            .get(url.clone())
            .timeout(FETCH_TIMEOUT)
            .send()
            .await
            .map_err(|e| format!("GET {url} failed: {e}"))?;
        if !resp.status().is_success() {
            return Err(format!("GET {url} answered {}", resp.status()));
        }
        let max_age = resp
            .headers()
            .get(reqwest::header::CACHE_CONTROL)
            .and_then(|v| v.to_str().ok())
            .and_then(max_age);
        // Read in chunks and given up past the cap (never buffered whole first), within the
        // fetch timeout.
        let read = tokio::time::timeout(FETCH_TIMEOUT, read_capped(resp, MAX_JWKS_BYTES))
            .await
            .unwrap_or(Err(BodyError::TimedOut));
        let body = read.map_err(|e| match e {
            BodyError::TooLarge { limit } => {
                format!("the JWKS from {url} is larger than {limit} bytes")
            }
            BodyError::TimedOut => {
                format!("reading the JWKS from {url} timed out after {FETCH_TIMEOUT:?}")
            }
            BodyError::Read(e) => format!("reading the JWKS from {url} failed: {e}"),
        })?;
        let keys = parse_jwks(&body).map_err(|e| format!("the JWKS from {url} {e}"))?;
        Ok((keys, max_age))
    }
}

/// The RS256 signing keys of a JWKS document, by `kid`. Keys of other types or uses, and keys
/// this crate cannot read, are skipped (a set may hold keys for other purposes); a set with no
/// usable key is an error.
fn parse_jwks(body: &[u8]) -> Result<HashMap<String, DecodingKey>, String> {
    #[derive(Deserialize)]
    struct Set {
        keys: Vec<serde_json::Value>,
    }
    let set: Set = serde_json::from_slice(body)
        .map_err(|e| format!("is not a JSON key set ({{\"keys\": [...]}}): {e}"))?;
    let mut keys = HashMap::new();
    for value in set.keys {
        let Ok(jwk) = serde_json::from_value::<Jwk>(value) else {
            continue;
        };
        let usable = matches!(jwk.algorithm, AlgorithmParameters::RSA(_))
            && jwk
                .common
                .key_algorithm
                .is_none_or(|a| a == KeyAlgorithm::RS256)
            && jwk
                .common
                .public_key_use
                .as_ref()
                .is_none_or(|u| *u == PublicKeyUse::Signature);
        let (true, Some(kid)) = (usable, jwk.common.key_id.clone()) else {
            continue;
        };
        if let Ok(key) = DecodingKey::from_jwk(&jwk) {
            keys.insert(kid, key);
        }
    }
    if keys.is_empty() {
        return Err("has no RSA signing key with a kid".into());
    }
    Ok(keys)
}

/// `max-age` from a `Cache-Control` value (`no-store`/`no-cache` count as 0).
fn max_age(value: &str) -> Option<Duration> {
    value.split(',').map(str::trim).find_map(|d| {
        let d = d.to_ascii_lowercase();
        if d == "no-store" || d == "no-cache" {
            return Some(Duration::ZERO);
        }
        d.strip_prefix("max-age=")
            .and_then(|n| n.trim_matches('"').parse::<u64>().ok())
            .map(Duration::from_secs)
    })
}

fn round_secs(d: Duration) -> Duration {
    Duration::from_secs(d.as_secs() + u64::from(d.subsec_nanos() > 0))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An endless JWKS body is given up at the cap while streaming, not buffered until the
    /// fetch timeout.
    #[tokio::test]
    async fn an_endless_jwks_is_cut_at_the_cap() {
        let addr = crate::body::testing::endless_chunked().await;
        let http = reqwest::Client::builder().no_proxy().build().unwrap();
        let cache = JwksCache::new(http);
        let cfg = JwtConfig {
            jwks_url: format!("http://{addr}/jwks").parse().unwrap(),
            audience: vec!["a".into()],
            jwks_ttl: Duration::from_secs(60),
            jwks_min_interval: Duration::from_secs(1),
        };
        let got = tokio::time::timeout(Duration::from_secs(5), cache.fetch(&cfg))
            .await
            .expect("the fetch ends at the cap, well before its timeout");
        let err = got.err().unwrap_or_default();
        assert!(err.contains("larger than 262144 bytes"), "{err}");
    }

    #[test]
    fn cache_control_max_age() {
        assert_eq!(
            max_age("public, max-age=19809, must-revalidate"),
            Some(Duration::from_secs(19809))
        );
        assert_eq!(max_age("no-store"), Some(Duration::ZERO));
        assert_eq!(max_age("public"), None);
        assert_eq!(max_age("max-age=soon"), None);
    }

    #[test]
    fn jwks_keeps_only_rs256_signing_keys_with_a_kid() {
        // n and e of a tiny (insecure, test-only) RSA key are enough to build a DecodingKey.
        let rsa = |kid: &str, extra: &str| {
            format!(
                r#"{{"kty":"RSA","kid":"{kid}","n":"sXchDaQebHnPiGvyDOAT4saGEUetSyo9MKLOoWFsueri23bOdgWp4Dy1WlUzewbgBHod5pcM9H95GQRV3JDXboIRROSBigeC5yjU1hGzHHyXss8UDprecbAYxknTcQkhslANGRUZmdTOQ5qTRsLAt6BTYuyvVRdhS8exSZEy_c4gs_7svlJJQ4H9_NxsiIoLwAEk7-Q3UXERGYw_75IDrGA84-lA_-Ct4eTlXHBIY2EaV7t7LjJaynVJCpkv4LKjTTAumiGUIuQhrNhZLuF_RJLqHpM2kgWFLU7-VTdL1VbC2tejvcI2BlMkEpk1BzBZI0KQB0GaDWFLN-aEAw3vRw","e":"AQAB"{extra}}}"#
            )
        };
        let doc = format!(
            r#"{{"keys":[{},{},{},{},{{"kty":"oct","kid":"h","k":"c2VjcmV0"}},{{"kty":"weird"}}]}}"#,
            rsa("good", r#","alg":"RS256","use":"sig""#),
            rsa("plain", ""),
            rsa("enc", r#","use":"enc""#),
            rsa("ps", r#","alg":"PS256""#),
        );
        let keys = parse_jwks(doc.as_bytes()).unwrap();
        let mut kids: Vec<&str> = keys.keys().map(String::as_str).collect();
        kids.sort();
        assert_eq!(kids, ["good", "plain"]);
        assert_eq!(
            parse_jwks(br#"{"keys":[{"kty":"oct","kid":"h","k":"c2VjcmV0"}]}"#).unwrap_err(),
            "has no RSA signing key with a kid"
        );
        assert!(
            parse_jwks(b"<html>")
                .unwrap_err()
                .contains("is not a JSON key set")
        );
    }
}
