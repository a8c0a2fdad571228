//! The app's credential, as far as the proxy needs it: which request header carries it, a
//! keyed hash of it (kept with an operation created through the proxy, never the value), and
//! whether a status read presents the creator's credential or hookshim's own.

use axum::http::HeaderMap;
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;
use subtle::ConstantTimeEq;

use crate::upstream::UpstreamConfig;

type HmacSha256 = Hmac<Sha256>;

/// Header names that carry a credential for a preset without its own list (`generic`).
const GENERIC_AUTH: &[&str] = &["authorization", "x-api-key", "api-key"];

fn mac(key: &[u8]) -> HmacSha256 {
    // HMAC accepts keys of any length; new_from_slice cannot fail for it.
    <HmacSha256 as KeyInit>::new_from_slice(key)
        .unwrap_or_else(|_| unreachable!("HMAC takes any key length"))
}

/// The header names that may carry `up`'s credential, in the order they are looked at.
pub fn auth_headers(up: &UpstreamConfig) -> Vec<String> {
    match up.preset.defaults().proxy {
        Some(p) => p.auth_headers.iter().map(|h| h.to_string()).collect(),
        None => {
            let mut names: Vec<String> = GENERIC_AUTH.iter().map(|h| h.to_string()).collect();
            for name in up.headers.keys() {
                if !names.iter().any(|n| n == name.as_str()) {
                    names.push(name.as_str().to_string());
                }
            }
            names
        }
    }
}

/// The first credential header present: its name and value.
pub fn presented<'h>(up: &UpstreamConfig, headers: &'h HeaderMap) -> Option<(String, &'h [u8])> {
    auth_headers(up)
        .into_iter()
        .find_map(|n| headers.get(n.as_str()).map(|v| (n, v.as_bytes())))
}

/// A keyed hash (hex HMAC-SHA256) of `value` for upstream `upstream`, under a key derived from
/// the callback signing key: stable across restarts, useless without the key.
pub fn keyed_hash(callback_key: &[u8], upstream: &str, value: &[u8]) -> String {
    let mut derive = mac(callback_key);
    derive.update(b"hookshim proxy credential v1");
    let key = derive.finalize().into_bytes();
    let mut m = mac(&key);
    m.update(upstream.as_bytes());
    m.update(&[0]);
    m.update(value);
    hex::encode(m.finalize().into_bytes())
}

/// Whether a request with `headers` may read a cached status of an operation created with
/// the credential hashed as `creator`: the same credential, or hookshim's own for `up`.
/// `callback_keys`: the current callback secret and the previous ones (a hash made before a
/// rotation matches under its key).
pub fn may_read(
    up: &UpstreamConfig,
    callback_keys: &[&[u8]],
    creator: Option<&str>,
    headers: &HeaderMap,
) -> bool {
    let Some((name, value)) = presented(up, headers) else {
        return false;
    };
    if let Some(own) = up.headers.get(name.as_str()) {
        if bool::from(own.as_bytes().ct_eq(value)) {
            return true;
        }
    }
    creator.is_some_and(|c| {
        callback_keys.iter().any(|k| {
            let h = keyed_hash(k, &up.name, value);
            bool::from(h.as_bytes().ct_eq(c.as_bytes()))
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_hash_is_keyed_and_stable() {
        let a = keyed_hash(b"k1", "openai", b"Bearer sk-1");
        assert_eq!(a, keyed_hash(b"k1", "openai", b"Bearer sk-1"));
        assert_ne!(a, keyed_hash(b"k2", "openai", b"Bearer sk-1"));
        assert_ne!(a, keyed_hash(b"k1", "other", b"Bearer sk-1"));
        assert_ne!(a, keyed_hash(b"k1", "openai", b"Bearer sk-2"));
        assert!(!a.contains("sk-1"));
        assert_eq!(a.len(), 64);
    }

    #[test]
    fn a_hash_made_before_a_rotation_matches_while_its_key_is_configured() {
        let config = crate::config::Config::parse(
            "[upstreams.jobs]\nbase_url = \"http://127.0.0.1:9/\"\nstatus_path = \"j/{operation}\"\nstatus_field = \"/s\"\nsucceeded = [\"ok\"]\nfailed = [\"no\"]\n",
            "t.toml",
            &|_| None,
        )
        .unwrap();
        let up = &config.upstreams["jobs"];
        let mut headers = HeaderMap::new();
        headers.insert("authorization", "Bearer app-key".parse().unwrap());
        let made_with_old = keyed_hash(b"old", "jobs", b"Bearer app-key");
        let creator = Some(made_with_old.as_str());
        assert!(may_read(up, &[b"new", b"old"], creator, &headers));
        assert!(
            !may_read(up, &[b"new"], creator, &headers),
            "the old key removed"
        );
        headers.insert("authorization", "Bearer other".parse().unwrap());
        assert!(!may_read(up, &[b"new", b"old"], creator, &headers));
    }
}
