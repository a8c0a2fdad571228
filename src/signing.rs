//! Webhook signatures, both directions: Standard Webhooks `v1` (what hookshim signs callbacks
//! with and what most upstreams send) and `v1a` (Ed25519), GitHub's `X-Hub-Signature-256` and
//! Stripe's `Stripe-Signature`. HMAC comparisons are constant-time. Each HMAC is computed once per key and compared
//! with every entry, and the entries considered are capped ([`MAX_SIGNATURE_ENTRIES`],
//! [`MAX_V1A_ENTRIES`], [`MAX_SIGNATURE_HEADER`]): the work a request costs does not grow with
//! the number of signatures it lists.
//! Gemini's JWT-signed webhooks live in [`crate::ingest::jwks`]: they need a key set fetched
//! over HTTP.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use ed25519_dalek::{Signature, SigningKey, VerifyingKey};
use hmac::{Hmac, KeyInit, Mac};
use reqwest::header::HeaderMap;
use sha2::Sha256;

use crate::clock::Timestamp;
use crate::values::Secret;

type HmacSha256 = Hmac<Sha256>;

/// How far a webhook's timestamp may be from now (Standard Webhooks: ±5 minutes).
pub const TIMESTAMP_TOLERANCE_SECS: u64 = 300;

/// At most this many signature entries are considered in one `webhook-signature` or
/// `Stripe-Signature` header; a header with more is refused. A sender lists one signature per
/// active secret (two or three during a rotation), so 16 is generous; without a cap every entry
/// would cost work over the whole body.
pub const MAX_SIGNATURE_ENTRIES: usize = 16;

/// At most this many Ed25519 (`v1a`) entries are verified per key: unlike HMAC, each Ed25519
/// verification hashes the whole body again, so they cannot share one computation.
pub const MAX_V1A_ENTRIES: usize = 4;

/// A signature header longer than this (bytes) is refused before it is parsed.
pub const MAX_SIGNATURE_HEADER: usize = 4096;

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
    #[error(
        "header {header} lists {found} signatures; at most {max} are considered: send one per active secret"
    )]
    TooManySignatures {
        header: &'static str,
        found: usize,
        max: usize,
    },
    #[error("header {header} is {len} bytes; at most {max} are accepted")]
    HeaderTooLong {
        header: &'static str,
        len: usize,
        max: usize,
    },
    #[error("{0}")]
    MalformedToken(String),
    #[error("JWT algorithm {0:?} is not accepted (only RS256)")]
    UnsupportedAlgorithm(String),
    #[error("no key with kid {0:?} in the JWKS")]
    UnknownKey(String),
    #[error("the JWT has expired (exp is in the past)")]
    TokenExpired,
    #[error("the JWT is not valid yet (nbf is in the future)")]
    TokenNotYetValid,
    #[error("the JWT's audience is not the configured one ({0})")]
    WrongAudience(String),
    #[error("the JWKS is not available: {0}")]
    KeysUnavailable(String),
}

#[cfg(test)]
thread_local! {
    /// HMAC computations started on this thread (tests count the work a request costs).
    static MACS: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// How many HMACs this thread has started (tests only).
#[cfg(test)]
pub(crate) fn macs_computed() -> usize {
    MACS.with(|c| c.get())
}

fn mac(key: &[u8]) -> HmacSha256 {
    #[cfg(test)]
    MACS.with(|c| c.set(c.get() + 1));
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

/// The Standard Webhooks `v1a` signature (base64 Ed25519, without the `v1a,` prefix) of
/// `{id}.{ts}.{body}`.
pub fn sign_v1a(key: &SigningKey, id: &str, timestamp: u64, body: &[u8]) -> String {
    use ed25519_dalek::Signer;
    let ts = timestamp.to_string();
    let mut msg = Vec::with_capacity(id.len() + ts.len() + body.len() + 2);
    msg.extend_from_slice(id.as_bytes());
    msg.push(b'.');
    msg.extend_from_slice(ts.as_bytes());
    msg.push(b'.');
    msg.extend_from_slice(body);
    B64.encode(key.sign(&msg).to_bytes())
}

/// The keys callbacks are signed with: every `v1` secret in use (the current one first, then
/// the previous ones of a rotation, each until its `until`) and an optional Ed25519 key for a
/// `v1a` entry. A receiver that knows any one of them verifies the callback: Standard Webhooks
/// lists one signature per key, space-separated, and a verifier accepts any entry that matches.
#[derive(Clone, PartialEq, Eq)]
pub struct CallbackKeys {
    /// `(secret, until)`: signed with while the attempt's time is before `until` (`None`: always).
    pub secrets: Vec<(Secret, Option<Timestamp>)>,
    pub ed25519: Option<SigningKey>,
}

impl std::fmt::Debug for CallbackKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "CallbackKeys {{ v1: {}, v1a: {} }}",
            self.secrets.len(),
            self.ed25519.is_some()
        )
    }
}

impl CallbackKeys {
    /// Only `secret` (no rotation, no `v1a`).
    pub fn single(secret: Secret) -> CallbackKeys {
        CallbackKeys {
            secrets: vec![(secret, None)],
            ed25519: None,
        }
    }

    /// The current `v1` secret (what keyed hashes derive from).
    pub fn current(&self) -> &[u8] {
        self.secrets
            .first()
            .map(|(s, _)| s.0.as_slice())
            .unwrap_or(&[])
    }

    /// The `v1` secrets in use at `now`, the current one first.
    pub fn active(&self, now: Timestamp) -> impl Iterator<Item = &[u8]> {
        self.secrets
            .iter()
            .filter(move |(_, until)| until.is_none_or(|u| now < u))
            .map(|(s, _)| s.0.as_slice())
    }

    /// The `webhook-signature` value for one attempt sent at `now`: `v1,<sig>` per secret in
    /// use, then `v1a,<sig>` when an Ed25519 key is configured.
    pub fn signature_header(&self, id: &str, now: Timestamp, body: &[u8]) -> String {
        let ts = now.unix_seconds();
        let mut entries: Vec<String> = self
            .active(now)
            .map(|k| format!("v1,{}", sign_v1(k, id, ts, body)))
            .collect();
        if let Some(k) = &self.ed25519 {
            entries.push(format!("v1a,{}", sign_v1a(k, id, ts, body)));
        }
        entries.join(" ")
    }
}

fn header<'a>(h: &'a HeaderMap, name: &'static str) -> Result<&'a str, VerifyError> {
    let value = h.get(name).ok_or(VerifyError::MissingHeader(name))?;
    if value.len() > MAX_SIGNATURE_HEADER {
        return Err(VerifyError::HeaderTooLong {
            header: name,
            len: value.len(),
            max: MAX_SIGNATURE_HEADER,
        });
    }
    value
        .to_str()
        .map_err(|_| VerifyError::MalformedHeader(name))
}

/// Refuse a signature list with more than [`MAX_SIGNATURE_ENTRIES`] entries.
fn check_entries(header: &'static str, found: usize) -> Result<(), VerifyError> {
    if found > MAX_SIGNATURE_ENTRIES {
        return Err(VerifyError::TooManySignatures {
            header,
            found,
            max: MAX_SIGNATURE_ENTRIES,
        });
    }
    Ok(())
}

/// A key that verifies one kind of Standard Webhooks signature entry.
#[derive(Clone, Copy, Debug)]
pub enum StandardKey<'a> {
    /// `v1,<base64>`: HMAC-SHA256 with this secret.
    V1(&'a [u8]),
    /// `v1a,<base64>`: Ed25519 with this public key.
    V1a(&'a VerifyingKey),
}

/// Verify a Standard Webhooks request with `v1` (HMAC) keys only. Returns the `webhook-id`.
pub fn verify_standard(
    keys: &[&[u8]],
    headers: &HeaderMap,
    body: &[u8],
    now_secs: u64,
) -> Result<String, VerifyError> {
    let keys: Vec<StandardKey<'_>> = keys.iter().map(|k| StandardKey::V1(k)).collect();
    verify_standard_keys(&keys, headers, body, now_secs)
}

/// Verify a Standard Webhooks request: it passes if any entry of the space-separated
/// `webhook-signature` list verifies with any key of that entry's kind (`v1` entries with
/// [`StandardKey::V1`] keys, `v1a` entries with [`StandardKey::V1a`] keys); other entries are
/// ignored. Returns the `webhook-id`. Also accepts the `svix-*` header spelling.
pub fn verify_standard_keys(
    keys: &[StandardKey<'_>],
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
    let ts_text = ts_text.trim();
    let entries: Vec<(&str, Vec<u8>)> = sigs
        .split(' ')
        .filter(|s| !s.is_empty())
        .map(|entry| entry.split_once(',').unwrap_or((entry, "")))
        .filter_map(|(version, sig)| B64.decode(sig).ok().map(|sig| (version, sig)))
        .collect();
    check_entries("webhook-signature", entries.len())?;
    for key in keys {
        match key {
            StandardKey::V1(secret) => {
                if !entries.iter().any(|(v, _)| *v == "v1") {
                    continue;
                }
                // One HMAC per key, compared (in constant time) with every `v1` entry.
                let mut m = mac(secret);
                m.update(id.as_bytes());
                m.update(b".");
                m.update(ts_text.as_bytes());
                m.update(b".");
                m.update(body);
                let expected = m.finalize().into_bytes();
                let matched = entries
                    .iter()
                    .filter(|(v, _)| *v == "v1")
                    .fold(false, |found, (_, sig)| found | ct_eq(&expected, sig));
                if matched {
                    return Ok(id.to_string());
                }
            }
            StandardKey::V1a(public) => {
                let mut signed: Option<Vec<u8>> = None;
                for (_, sig) in entries
                    .iter()
                    .filter(|(v, _)| *v == "v1a")
                    .take(MAX_V1A_ENTRIES)
                {
                    let Ok(sig) = Signature::from_slice(sig) else {
                        continue;
                    };
                    let signed = signed.get_or_insert_with(|| {
                        let mut m = Vec::with_capacity(id.len() + ts_text.len() + body.len() + 2);
                        m.extend_from_slice(id.as_bytes());
                        m.push(b'.');
                        m.extend_from_slice(ts_text.as_bytes());
                        m.push(b'.');
                        m.extend_from_slice(body);
                        m
                    });
                    if public.verify_strict(signed, &sig).is_ok() {
                        return Ok(id.to_string());
                    }
                }
            }
        }
    }
    Err(VerifyError::BadSignature)
}

/// Constant-time equality of a computed tag and a received signature (a length mismatch
/// returns early: the length of a tag is no secret).
fn ct_eq(expected: &[u8], got: &[u8]) -> bool {
    if expected.len() != got.len() {
        return false;
    }
    expected
        .iter()
        .zip(got)
        .fold(0u8, |acc, (a, b)| acc | (a ^ b))
        == 0
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

/// Verify Stripe's `Stripe-Signature: t=<unix>,v1=<hex>[,v1=<hex>...]`: HMAC-SHA256 over
/// `{t}.{body}` keyed with the secret string as it is (`whsec_...` is *not* base64-decoded).
/// Passes if any `v1` entry matches any of `keys`; other schemes (`v0`) are ignored; `t` must
/// be within ±5 minutes of now.
pub fn verify_stripe(
    keys: &[&[u8]],
    headers: &HeaderMap,
    body: &[u8],
    now_secs: u64,
) -> Result<(), VerifyError> {
    const NAME: &str = "stripe-signature";
    let value = header(headers, NAME)?;
    let mut t = None;
    let mut sigs = Vec::new();
    for item in value.split(',') {
        let (k, v) = item
            .trim()
            .split_once('=')
            .ok_or(VerifyError::MalformedHeader(NAME))?;
        match k {
            "t" if t.is_none() => t = Some(v),
            "v1" => {
                if let Ok(sig) = hex::decode(v) {
                    sigs.push(sig);
                }
            }
            _ => {}
        }
    }
    check_entries(NAME, sigs.len())?;
    let t_text = t.ok_or(VerifyError::MalformedHeader(NAME))?;
    let ts: u64 = t_text
        .parse()
        .map_err(|_| VerifyError::MalformedHeader(NAME))?;
    if ts.abs_diff(now_secs) > TIMESTAMP_TOLERANCE_SECS {
        return Err(VerifyError::StaleTimestamp);
    }
    for key in keys {
        // One HMAC per key, compared (in constant time) with every `v1` entry.
        let mut m = mac(key);
        m.update(t_text.as_bytes());
        m.update(b".");
        m.update(body);
        let expected = m.finalize().into_bytes();
        if sigs
            .iter()
            .fold(false, |found, sig| found | ct_eq(&expected, sig))
        {
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

    /// The Standard Webhooks Go library's `TestAsymmetricWebhookSign` vector
    /// (standard-webhooks/standard-webhooks, libraries/go/webhook_asymmetric_test.go): the
    /// `whsk_` key is the base64 of the 32-byte Ed25519 seed.
    #[test]
    fn signs_the_standard_webhooks_v1a_test_vector() {
        let seed = B64
            .decode("VEVTVFNJR05JTkdLRVlET05PVFVTRVRISVNGT1JBTlk=")
            .unwrap();
        let key = SigningKey::from_bytes(&seed.try_into().unwrap());
        assert_eq!(
            sign_v1a(
                &key,
                "msg_p5jXN8AQM9LWM0D4loKWxJek",
                1614265330,
                br#"{"test": 2432232314}"#
            ),
            "tQ9V2XOqn7jL/DQenEFpqIugdBVtiMmER5mhSkXBNwM0mkATuDe6KYYUuxqtaiHeYGb7KaaBRdM5WqyeFiL8Ag=="
        );
    }

    #[test]
    fn callbacks_carry_one_entry_per_key_in_use() {
        let current = Secret::from_whsec(SECRET).unwrap();
        let old = Secret(b"the previous secret".to_vec());
        let ended = Secret(b"a secret whose overlap ended".to_vec());
        let now = Timestamp(TS * 1000);
        let keys = CallbackKeys {
            secrets: vec![
                (current.clone(), None),
                (old.clone(), Some(Timestamp(now.0 + 1))),
                (ended.clone(), Some(now)),
            ],
            ed25519: Some(rfc8032_key()),
        };
        let header = keys.signature_header(ID, now, BODY);
        let entries: Vec<&str> = header.split(' ').collect();
        assert_eq!(entries.len(), 3, "{header}");
        assert_eq!(
            entries[0],
            "v1,tZ1I4/hDygAJgO5TYxiSd6Sd0kDW6hPenDe+bTa3Kkw="
        );
        assert_eq!(entries[1], format!("v1,{}", sign_v1(&old.0, ID, TS, BODY)));
        assert_eq!(entries[2], v1a(&rfc8032_key(), ID, TS, BODY));
        // Each key verifies the header on its own; the ended one does not.
        let public = rfc8032_key().verifying_key();
        let h = headers(&header, TS);
        for key in [
            StandardKey::V1(&current.0),
            StandardKey::V1(&old.0),
            StandardKey::V1a(&public),
        ] {
            assert_eq!(verify_standard_keys(&[key], &h, BODY, TS).unwrap(), ID);
        }
        assert_eq!(
            verify_standard(&[&ended.0], &h, BODY, TS),
            Err(VerifyError::BadSignature)
        );
        assert_eq!(keys.current(), current.0.as_slice());
        assert_eq!(
            format!("{keys:?}"),
            "CallbackKeys { v1: 3, v1a: true }",
            "Debug shows no key"
        );
    }

    /// RFC 8032, section 7.1, test 1.
    fn rfc8032_key() -> ed25519_dalek::SigningKey {
        let seed = hex::decode("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60")
            .unwrap();
        ed25519_dalek::SigningKey::from_bytes(&seed.try_into().unwrap())
    }

    fn v1a(key: &ed25519_dalek::SigningKey, id: &str, ts: u64, body: &[u8]) -> String {
        use ed25519_dalek::Signer;
        let msg = [id.as_bytes(), b".", ts.to_string().as_bytes(), b".", body].concat();
        format!("v1a,{}", B64.encode(key.sign(&msg).to_bytes()))
    }

    #[test]
    fn v1a_entries_verify_with_ed25519_keys_only() {
        let signer = rfc8032_key();
        let public = signer.verifying_key();
        assert_eq!(
            hex::encode(public.as_bytes()),
            "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a"
        );
        let hmac = Secret::from_whsec(SECRET).unwrap();
        let good = v1a(&signer, ID, TS, BODY);
        // The Ed25519 entry verifies with the public key, after a v1 entry that does not.
        let h = headers(&format!("v1,bm9wZQ== {good}"), TS);
        let keys = [StandardKey::V1(&hmac.0), StandardKey::V1a(&public)];
        assert_eq!(verify_standard_keys(&keys, &h, BODY, TS).unwrap(), ID);
        // Another body, or only an HMAC key configured: no match.
        assert_eq!(
            verify_standard_keys(&keys, &h, b"{}", TS),
            Err(VerifyError::BadSignature)
        );
        assert_eq!(
            verify_standard_keys(&[StandardKey::V1(&hmac.0)], &h, BODY, TS),
            Err(VerifyError::BadSignature)
        );
        // A v1a entry is not checked as HMAC, nor a v1 entry as Ed25519.
        let v1_good = "v1,tZ1I4/hDygAJgO5TYxiSd6Sd0kDW6hPenDe+bTa3Kkw=";
        let swapped = headers(&format!("v1a,{}", &v1_good[3..]), TS);
        assert_eq!(
            verify_standard_keys(&keys, &swapped, BODY, TS),
            Err(VerifyError::BadSignature)
        );
        let h = headers(v1_good, TS);
        assert_eq!(
            verify_standard_keys(&[StandardKey::V1a(&public)], &h, BODY, TS),
            Err(VerifyError::BadSignature)
        );
    }

    fn stripe_headers(value: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert("stripe-signature", HeaderValue::from_str(value).unwrap());
        h
    }

    #[test]
    fn stripe_uses_the_whsec_string_as_the_key() {
        let secret = "whsec_test_secret";
        let body = br#"{"id":"evt_1","object":"event"}"#;
        let t = 1_700_000_000u64;
        // Computed independently: printf '1700000000.{"id":"evt_1","object":"event"}' |
        //   openssl dgst -sha256 -hmac whsec_test_secret
        let sig = "0c8670ed117751cc551a20e35839447075c42800ea3cf3e8a2fbda99cd1e6edd";
        let keys: [&[u8]; 1] = [secret.as_bytes()];
        let h = stripe_headers(&format!("t={t},v1=00ff,v0=abc,v1={sig}"));
        assert_eq!(verify_stripe(&keys, &h, body, t + 299), Ok(()));
        assert_eq!(
            verify_stripe(&keys, &h, body, t + 301),
            Err(VerifyError::StaleTimestamp)
        );
        assert_eq!(
            verify_stripe(&keys, &h, b"{}", t),
            Err(VerifyError::BadSignature)
        );
        // Only v0 (or no v1 at all) never verifies.
        let h = stripe_headers(&format!("t={t},v0={sig}"));
        assert_eq!(
            verify_stripe(&keys, &h, body, t),
            Err(VerifyError::BadSignature)
        );
        for bad in ["v1=abc", "t=soon,v1=abc", "garbage"] {
            assert_eq!(
                verify_stripe(&keys, &stripe_headers(bad), body, t),
                Err(VerifyError::MalformedHeader("stripe-signature")),
                "{bad}"
            );
        }
        assert_eq!(
            verify_stripe(&keys, &HeaderMap::new(), body, t),
            Err(VerifyError::MissingHeader("stripe-signature"))
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

    /// A header listing many `v1` entries costs one HMAC per key, not one per entry; more than
    /// MAX_SIGNATURE_ENTRIES entries are refused (with the limit in the message).
    #[test]
    fn signature_work_does_not_grow_with_the_entries() {
        let key = Secret::from_whsec(SECRET).unwrap();
        let other: &[u8] = b"another secret";
        let good = "v1,tZ1I4/hDygAJgO5TYxiSd6Sd0kDW6hPenDe+bTa3Kkw=";
        let junk = "v1,bm9wZQ==";
        let mut list = vec![junk; MAX_SIGNATURE_ENTRIES - 1];
        list.push(good);
        let h = headers(&list.join(" "), TS);
        let before = macs_computed();
        assert_eq!(verify_standard(&[other, &key.0], &h, BODY, TS).unwrap(), ID);
        assert_eq!(macs_computed() - before, 2, "one HMAC per key");
        // 1,000 entries: refused before any HMAC is computed, saying why.
        let many = vec![junk; 1000].join(" ");
        let mut h = headers("v1,x", TS);
        h.insert("webhook-signature", HeaderValue::from_str(&many).unwrap());
        let before = macs_computed();
        let err = verify_standard(&[&key.0], &h, BODY, TS).unwrap_err();
        assert!(
            matches!(
                err,
                VerifyError::HeaderTooLong { .. } | VerifyError::TooManySignatures { .. }
            ),
            "{err:?}"
        );
        assert_eq!(macs_computed(), before);
        let seventeen = vec![junk; MAX_SIGNATURE_ENTRIES + 1].join(" ");
        let err = verify_standard(&[&key.0], &headers(&seventeen, TS), BODY, TS).unwrap_err();
        assert_eq!(
            err,
            VerifyError::TooManySignatures {
                header: "webhook-signature",
                found: 17,
                max: 16
            }
        );
        assert!(err.to_string().contains("at most 16"), "{err}");
        assert_eq!(macs_computed(), before);
    }

    #[test]
    fn stripe_work_does_not_grow_with_the_entries() {
        let secret = "whsec_test_secret";
        let body = br#"{"id":"evt_1","object":"event"}"#;
        let t = 1_700_000_000u64;
        let sig = "0c8670ed117751cc551a20e35839447075c42800ea3cf3e8a2fbda99cd1e6edd";
        let keys: [&[u8]; 2] = [b"old secret", secret.as_bytes()];
        let mut value = format!("t={t}");
        for _ in 0..MAX_SIGNATURE_ENTRIES - 1 {
            value.push_str(",v1=00ff");
        }
        value.push_str(&format!(",v1={sig}"));
        let before = macs_computed();
        assert_eq!(
            verify_stripe(&keys, &stripe_headers(&value), body, t),
            Ok(())
        );
        assert_eq!(macs_computed() - before, 2, "one HMAC per key");
        value.push_str(",v1=00ff");
        let before = macs_computed();
        assert!(matches!(
            verify_stripe(&keys, &stripe_headers(&value), body, t),
            Err(VerifyError::TooManySignatures { max: 16, .. })
        ));
        assert_eq!(macs_computed(), before);
    }

    #[test]
    fn v1a_verifications_are_capped() {
        let signer = rfc8032_key();
        let public = signer.verifying_key();
        let good = v1a(&signer, ID, TS, BODY);
        let junk = format!("v1a,{}", B64.encode([7u8; 64]));
        // The good entry past the cap is not looked at.
        let mut list = vec![junk.as_str(); MAX_V1A_ENTRIES];
        list.push(&good);
        let keys = [StandardKey::V1a(&public)];
        assert_eq!(
            verify_standard_keys(&keys, &headers(&list.join(" "), TS), BODY, TS),
            Err(VerifyError::BadSignature)
        );
        list.remove(0);
        assert_eq!(
            verify_standard_keys(&keys, &headers(&list.join(" "), TS), BODY, TS).unwrap(),
            ID
        );
    }
}
