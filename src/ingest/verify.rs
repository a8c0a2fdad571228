//! Verifying an inbound webhook, whatever the upstream's scheme, in one call: [`verify`] checks
//! the signature with the keys active now and returns the webhook id used for de-duplication;
//! [`VerifyError::code_and_label`] names a failure for the answer and the metric.

use axum::http::HeaderMap;
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::clock::Timestamp;
use crate::ingest::jwks::JwksCache;
use crate::signing::{StandardKey, verify_github, verify_standard_keys, verify_stripe};
use crate::upstream::webhook::{KeyMaterial, WebhookConfig, WebhookScheme};

pub use crate::signing::VerifyError;

/// Verify `body` and `headers` per `wh.scheme` at `now`, with the keys active then (a previous
/// secret stops counting at its `until`). Returns the webhook id:
/// - `standard-webhooks`: the `webhook-id` header (signed);
/// - `github`: a hash of the signed body and its signature (`github_<hex>`), never the unsigned
///   `X-GitHub-Delivery` header: GitHub signatures carry no timestamp, so a captured delivery
///   replayed with a fresh delivery header is still a duplicate (for the inbox retention);
/// - `stripe`: the body's `id` (`evt_...`), else a hash of the body;
/// - `gemini-jwt`: the `webhook-id` header, else the token's `jti`, else a hash of the body;
/// - `none`: the `webhook-id` header, else a hash of the body.
pub async fn verify(
    wh: &WebhookConfig,
    jwks: &JwksCache,
    headers: &HeaderMap,
    body: &[u8],
    now: Timestamp,
) -> Result<String, VerifyError> {
    match wh.scheme {
        WebhookScheme::GeminiJwt => {
            let cfg = wh.jwt.as_ref().ok_or_else(|| {
                VerifyError::KeysUnavailable("no JWKS configured for gemini-jwt".into())
            })?;
            let token = headers
                .get("webhook-signature")
                .ok_or(VerifyError::MissingHeader("webhook-signature"))?
                .to_str()
                .map_err(|_| VerifyError::MalformedHeader("webhook-signature"))?;
            let jti = jwks.verify(cfg, token, now).await?;
            Ok(match header_value(headers, "webhook-id").or(jti) {
                Some(id) => id,
                None => body_hash(body),
            })
        }
        _ if body.len() > OFFLOAD_BODY => {
            // Hashing a big body takes milliseconds per key: not on an async worker.
            let (wh, headers, body) = (wh.clone(), headers.clone(), body.to_vec());
            tokio::task::spawn_blocking(move || verify_hmac(&wh, &headers, &body, now))
                .await
                .unwrap_or_else(|e| {
                    Err(VerifyError::KeysUnavailable(format!(
                        "the verification task failed: {e}"
                    )))
                })
        }
        _ => verify_hmac(wh, headers, body, now),
    }
}

/// Bodies larger than this (bytes) are verified on a blocking thread.
const OFFLOAD_BODY: usize = 64 * 1024;

/// [`verify`] for the schemes that need no I/O (all but `gemini-jwt`).
fn verify_hmac(
    wh: &WebhookConfig,
    headers: &HeaderMap,
    body: &[u8],
    now: Timestamp,
) -> Result<String, VerifyError> {
    let active = || wh.keys.iter().filter(|k| k.active_at(now));
    let hmac_keys = || -> Vec<&[u8]> {
        active()
            .filter_map(|k| match &k.material {
                KeyMaterial::Hmac(s) => Some(s.0.as_slice()),
                KeyMaterial::Ed25519(_) => None,
            })
            .collect()
    };
    let now_secs = now.unix_seconds();
    match wh.scheme {
        WebhookScheme::StandardWebhooks => {
            let keys: Vec<StandardKey<'_>> = active()
                .map(|k| match &k.material {
                    KeyMaterial::Hmac(s) => StandardKey::V1(&s.0),
                    KeyMaterial::Ed25519(p) => StandardKey::V1a(p),
                })
                .collect();
            verify_standard_keys(&keys, headers, body, now_secs)
        }
        WebhookScheme::Github => {
            verify_github(&hmac_keys(), headers, body)?;
            Ok(github_id(headers, body))
        }
        WebhookScheme::Stripe => {
            verify_stripe(&hmac_keys(), headers, body, now_secs)?;
            #[derive(serde::Deserialize)]
            struct Event {
                id: Option<Value>,
            }
            Ok(match serde_json::from_slice::<Event>(body) {
                Ok(Event {
                    id: Some(Value::String(id)),
                }) if !id.is_empty() => id,
                _ => body_hash(body),
            })
        }
        WebhookScheme::GeminiJwt => Err(VerifyError::KeysUnavailable(
            "gemini-jwt is verified with its JWKS".into(),
        )),
        WebhookScheme::None => Ok(header_or_hash(headers, "webhook-id", body)),
    }
}

impl VerifyError {
    /// The error code in the JSON answer and the `result` label of
    /// `hookshim_webhooks_received_total`. (The HTTP status is the API's to choose:
    /// [`VerifyError::is_ours`] tells a failure on our side from a rejected sender.)
    pub fn code_and_label(&self) -> (&'static str, &'static str) {
        match self {
            VerifyError::MissingHeader(_) => ("missing_signature", "bad_signature"),
            VerifyError::MalformedHeader(_) | VerifyError::MalformedToken(_) => {
                ("malformed_signature", "bad_signature")
            }
            VerifyError::StaleTimestamp => ("stale_timestamp", "stale_timestamp"),
            VerifyError::BadSignature => ("bad_signature", "bad_signature"),
            VerifyError::TooManySignatures { .. } => ("too_many_signatures", "bad_signature"),
            VerifyError::HeaderTooLong { .. } => ("malformed_signature", "bad_signature"),
            VerifyError::UnsupportedAlgorithm(_) => ("unsupported_algorithm", "bad_signature"),
            VerifyError::UnknownKey(_) => ("unknown_key", "bad_signature"),
            VerifyError::TokenExpired => ("token_expired", "stale_timestamp"),
            VerifyError::TokenNotYetValid => ("token_not_yet_valid", "stale_timestamp"),
            VerifyError::WrongAudience(_) => ("wrong_audience", "bad_signature"),
            VerifyError::KeysUnavailable(_) => ("jwks_unavailable", "jwks_unavailable"),
        }
    }

    /// Our side cannot check the signature right now (the key set is unavailable): the sender
    /// should retry, nothing about its request is wrong.
    pub fn is_ours(&self) -> bool {
        matches!(self, VerifyError::KeysUnavailable(_))
    }
}

fn header_value(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .filter(|s| !s.is_empty())
        .map(str::to_string)
}

fn body_hash(body: &[u8]) -> String {
    format!("sha256_{}", hex::encode(Sha256::digest(body)))
}

/// The de-duplication id of a verified GitHub delivery: SHA-256 over the signature header and
/// the body, both signed by the sender (unlike `X-GitHub-Delivery`, which anyone can change).
fn github_id(headers: &HeaderMap, body: &[u8]) -> String {
    let sig = headers
        .get("x-hub-signature-256")
        .map(|v| v.as_bytes())
        .unwrap_or_default();
    let mut h = Sha256::new();
    h.update(sig);
    h.update(b"\n");
    h.update(body);
    format!("github_{}", hex::encode(h.finalize()))
}

fn header_or_hash(headers: &HeaderMap, name: &str, body: &[u8]) -> String {
    header_value(headers, name).unwrap_or_else(|| body_hash(body))
}
