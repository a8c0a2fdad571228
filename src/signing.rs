//! Webhook signatures, both directions: Standard Webhooks `v1` (what hookshim signs callbacks
//! with and what most upstreams send) and GitHub's `X-Hub-Signature-256`. Comparisons are
//! constant-time (`Mac::verify_slice`).

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use hmac::{Hmac, KeyInit, Mac};
use reqwest::header::HeaderMap;
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// How far a webhook's timestamp may be from now (Standard Webhooks: ±5 minutes).
pub const TIMESTAMP_TOLERANCE_SECS: u64 = 300;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    #[error("missing header {0}")]
    MissingHeader(&'static str),
    #[error("header {0} is malformed")]
    MalformedHeader(&'static str),
    #[error("webhook-timestamp is more than 5 minutes away from now")]
    StaleTimestamp,
    #[error("no signature matched")]
    BadSignature,
}

fn mac(key: &[u8]) -> HmacSha256 {
    // HMAC accepts keys of any length; new_from_slice cannot fail for it.
    <HmacSha256 as KeyInit>::new_from_slice(key)
        .unwrap_or_else(|_| unreachable!("HMAC takes any key length"))
}

/// The Standard Webhooks `v1` signature (base64, without the `v1,` prefix) of `{id}.{ts}.{body}`.
pub fn sign_v1(key: &[u8], id: &str, timestamp: u64, body: &[u8]) -> String {
    let mut m = mac(key);
    m.update(id.as_bytes());
    m.update(b".");
    m.update(timestamp.to_string().as_bytes());
    m.update(b".");
    m.update(body);
    B64.encode(m.finalize().into_bytes())
}

fn header<'a>(h: &'a HeaderMap, name: &'static str) -> Result<&'a str, VerifyError> {
    h.get(name)
        .ok_or(VerifyError::MissingHeader(name))?
        .to_str()
        .map_err(|_| VerifyError::MalformedHeader(name))
}

/// Verify a Standard Webhooks request against any of `keys`. Returns the `webhook-id`.
/// Also accepts the `svix-*` header spelling.
pub fn verify_standard(
    keys: &[&[u8]],
    headers: &HeaderMap,
    body: &[u8],
    now_secs: u64,
) -> Result<String, VerifyError> {
    let pick = |a: &'static str, b: &'static str| {
        header(headers, a).or_else(|e| header(headers, b).map_err(|_| e))
    };
    let id = pick("webhook-id", "svix-id")?;
    let ts_text = pick("webhook-timestamp", "svix-timestamp")?;
    let sigs = pick("webhook-signature", "svix-signature")?;
    let ts: u64 = ts_text
        .trim()
        .parse()
        .map_err(|_| VerifyError::MalformedHeader("webhook-timestamp"))?;
    if ts.abs_diff(now_secs) > TIMESTAMP_TOLERANCE_SECS {
        return Err(VerifyError::StaleTimestamp);
    }
    for key in keys {
        for entry in sigs.split(' ').filter(|s| !s.is_empty()) {
            let Some(sig) = entry.strip_prefix("v1,") else {
                continue;
            };
            let Ok(sig) = B64.decode(sig) else { continue };
            let mut m = mac(key);
            m.update(id.as_bytes());
            m.update(b".");
            m.update(ts_text.trim().as_bytes());
            m.update(b".");
            m.update(body);
            if m.verify_slice(&sig).is_ok() {
                return Ok(id.to_string());
            }
        }
    }
    Err(VerifyError::BadSignature)
}

/// Verify GitHub's `X-Hub-Signature-256: sha256=<hex>` against any of `keys`.
pub fn verify_github(keys: &[&[u8]], headers: &HeaderMap, body: &[u8]) -> Result<(), VerifyError> {
    let sig = header(headers, "x-hub-signature-256")?;
    let hex_sig = sig
        .strip_prefix("sha256=")
        .ok_or(VerifyError::MalformedHeader("x-hub-signature-256"))?;
    let sig =
        hex::decode(hex_sig).map_err(|_| VerifyError::MalformedHeader("x-hub-signature-256"))?;
    for key in keys {
        let mut m = mac(key);
        m.update(body);
        if m.verify_slice(&sig).is_ok() {
            return Ok(());
        }
    }
    Err(VerifyError::BadSignature)
}

/// HMAC-SHA256 of `body` as lowercase hex (for GitHub-style signing in tests and the demo).
pub fn github_signature(key: &[u8], body: &[u8]) -> String {
    let mut m = mac(key);
    m.update(body);
    format!("sha256={}", hex::encode(m.finalize().into_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Secret;
    use reqwest::header::HeaderValue;

    const SECRET: &str = "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD";
    const ID: &str = "msg_27UH4WbU6Z5A5EzD8u03UvzRbpk";
    const TS: u64 = 1649367553;
    const BODY: &[u8] = br#"{"email":"test@example.com","username":"test_user"}"#;

    #[test]
    fn signs_the_standard_webhooks_test_vector() {
        let key = Secret::from_whsec(SECRET).unwrap();
        assert_eq!(
            sign_v1(&key.0, ID, TS, BODY),
            "tZ1I4/hDygAJgO5TYxiSd6Sd0kDW6hPenDe+bTa3Kkw="
        );
    }

    fn headers(sig: &str, ts: u64) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert("webhook-id", HeaderValue::from_static(ID));
        h.insert(
            "webhook-timestamp",
            HeaderValue::from_str(&ts.to_string()).unwrap(),
        );
        h.insert("webhook-signature", HeaderValue::from_str(sig).unwrap());
        h
    }

    #[test]
    fn verifies_any_entry_of_a_signature_list() {
        let key = Secret::from_whsec(SECRET).unwrap();
        let h = headers(
            "v1,bm9wZQ== v1a,xyz v1,tZ1I4/hDygAJgO5TYxiSd6Sd0kDW6hPenDe+bTa3Kkw=",
            TS,
        );
        assert_eq!(verify_standard(&[&key.0], &h, BODY, TS + 10).unwrap(), ID);
    }

    #[test]
    fn rejects_forged_stale_and_missing() {
        let key = Secret::from_whsec(SECRET).unwrap();
        let good = "v1,tZ1I4/hDygAJgO5TYxiSd6Sd0kDW6hPenDe+bTa3Kkw=";
        assert_eq!(
            verify_standard(&[&key.0], &headers(good, TS), b"{}", TS),
            Err(VerifyError::BadSignature)
        );
        assert_eq!(
            verify_standard(&[&key.0], &headers(good, TS), BODY, TS + 301),
            Err(VerifyError::StaleTimestamp)
        );
        assert_eq!(
            verify_standard(&[b"other"], &headers(good, TS), BODY, TS),
            Err(VerifyError::BadSignature)
        );
        assert_eq!(
            verify_standard(&[&key.0], &HeaderMap::new(), BODY, TS),
            Err(VerifyError::MissingHeader("webhook-id"))
        );
    }

    #[test]
    fn github_test_vector() {
        let key = b"It's a Secret to Everybody";
        let sig = github_signature(key, b"Hello, World!");
        assert_eq!(
            sig,
            "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17"
        );
        let mut h = HeaderMap::new();
        h.insert("x-hub-signature-256", HeaderValue::from_str(&sig).unwrap());
        assert!(verify_github(&[key], &h, b"Hello, World!").is_ok());
        assert_eq!(
            verify_github(&[key], &h, b"Hello, World?"),
            Err(VerifyError::BadSignature)
        );
    }
}
