//! The callback signing keys of `[callbacks]`: the current `v1` secret (`secret_env` or
//! `secret_file`), the `previous_secrets` still signed with during a rotation, and the optional
//! Ed25519 key for `v1a` entries (`signing_key_env` or `signing_key_file`). Files are read when
//! the config is loaded, so a SIGHUP (which loads it again) picks up a rotated file. Values are
//! never shown: [`KeySource`] says where each came from.

use std::path::{Path, PathBuf};

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use ed25519_dalek::SigningKey;
use serde::Deserialize;

use crate::clock::Timestamp;
use crate::values::{EnvLookup, Secret};

/// A secret file larger than this is refused (a `whsec_`/`whsk_` string is under 100 bytes).
const MAX_SECRET_FILE: u64 = 64 << 10;

/// An entry of `callbacks.previous_secrets` as written.
#[derive(Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub(super) struct RawPreviousSecret {
    env: Option<String>,
    file: Option<PathBuf>,
    until: Option<Timestamp>,
}

/// The secret parts of `[callbacks]` as written.
pub(super) struct RawKeys<'a> {
    pub secret_env: &'a str,
    pub secret_file: Option<&'a Path>,
    pub previous_secrets: &'a [RawPreviousSecret],
    pub signing_key_env: Option<&'a str>,
    pub signing_key_file: Option<&'a Path>,
}

/// Where a key was read from, for `check` and the log (never its value).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KeySource {
    Env(String),
    File(PathBuf),
}

impl std::fmt::Display for KeySource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            KeySource::Env(n) => write!(f, "environment variable {n}"),
            KeySource::File(p) => write!(f, "file {}", p.display()),
        }
    }
}

/// A previous `v1` secret: callbacks carry a signature with it too, until `until`.
#[derive(Clone, Debug)]
pub struct PreviousSecret {
    pub source: KeySource,
    pub secret: Secret,
    pub until: Option<Timestamp>,
}

/// The Ed25519 key callbacks are also signed with (`v1a`).
#[derive(Clone, Debug)]
pub struct CallbackSigningKey {
    pub source: KeySource,
    pub key: SigningKey,
}

impl CallbackSigningKey {
    /// The public key receivers verify `v1a` entries with: `whpk_<base64>`.
    pub fn public_whpk(&self) -> String {
        format!("whpk_{}", B64.encode(self.key.verifying_key().as_bytes()))
    }
}

/// The resolved keys.
pub(super) struct Keys {
    /// The current secret and where it came from; `None`: generated in the data directory.
    pub secret: Option<(Secret, KeySource)>,
    pub previous: Vec<PreviousSecret>,
    pub signing_key: Option<CallbackSigningKey>,
}

/// Read a file holding one secret (trimmed); errors name `key`.
fn read_file(key: &str, path: &Path) -> Result<String, String> {
    let meta = std::fs::metadata(path)
        .map_err(|e| format!("`{key}`: cannot read {}: {e}", path.display()))?;
    if meta.len() > MAX_SECRET_FILE {
        return Err(format!(
            "`{key}`: {} is {} bytes; a secret file holds one key (at most {MAX_SECRET_FILE} bytes)",
            path.display(),
            meta.len()
        ));
    }
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("`{key}`: cannot read {}: {e}", path.display()))?;
    let text = text.trim();
    if text.is_empty() {
        return Err(format!("`{key}`: {} is empty", path.display()));
    }
    Ok(text.to_string())
}

/// The value of one source (`env` or `file`, exactly one), with where it came from.
fn read_source(
    key: &str,
    env_key: &str,
    var: Option<&str>,
    file: Option<&Path>,
    env: EnvLookup<'_>,
) -> Result<(String, KeySource), String> {
    match (var, file) {
        (Some(v), None) => env(v)
            .map(|s| (s, KeySource::Env(v.to_string())))
            .ok_or_else(|| format!("`{key}.{env_key}`: environment variable {v} is not set")),
        (None, Some(p)) => {
            read_file(&format!("{key}.file"), p).map(|s| (s, KeySource::File(p.into())))
        }
        _ => Err(format!(
            "`{key}`: write exactly one of `{env_key}` (an environment variable) or `file`"
        )),
    }
}

/// Parse an Ed25519 signing key `whsk_<base64>`: the 32-byte seed (as the Standard Webhooks
/// libraries write it), or the 64-byte seed followed by its public key.
pub fn parse_whsk(text: &str) -> Result<SigningKey, String> {
    if text.starts_with("whpk_") {
        return Err("is an Ed25519 public key (whpk_...); hookshim signs with the private key (whsk_...), receivers verify with the public one".into());
    }
    let b64 = text
        .strip_prefix("whsk_")
        .ok_or("must start with \"whsk_\" followed by the base64 of a 32-byte Ed25519 seed")?;
    let bytes = B64
        .decode(b64)
        .map_err(|e| format!("the part after \"whsk_\" is not valid base64 ({e})"))?;
    match bytes.len() {
        32 => Ok(SigningKey::from_bytes(&bytes.try_into().unwrap_or([0; 32]))),
        64 => {
            let pair: [u8; 64] = bytes.try_into().unwrap_or([0; 64]);
            SigningKey::from_keypair_bytes(&pair).map_err(|_| {
                "is 64 bytes but its second half is not the public key of its first (seed, then public key)".to_string()
            })
        }
        n => Err(format!(
            "is {n} bytes after \"whsk_\"; an Ed25519 signing key is a 32-byte seed (e.g. `head -c 32 /dev/urandom | base64`)"
        )),
    }
}

/// Resolve the signing keys of `[callbacks]`.
pub(super) fn resolve_keys(raw: RawKeys<'_>, env: EnvLookup<'_>) -> Result<Keys, String> {
    let from_env = env(raw.secret_env);
    let secret = match (from_env, raw.secret_file) {
        (Some(_), Some(_)) => {
            return Err(format!(
                "`callbacks.secret_file`: {} is set too (`callbacks.secret_env`); keep one source for the current secret (unset the variable, or remove `secret_file`; to sign with both during a rotation, name the old one in `previous_secrets`)",
                raw.secret_env
            ));
        }
        (Some(v), None) => Some((
            Secret::from_whsec(&v).map_err(|e| {
                format!(
                    "`callbacks.secret_env`: the value of {} {e}",
                    raw.secret_env
                )
            })?,
            KeySource::Env(raw.secret_env.to_string()),
        )),
        (None, Some(p)) => {
            let text = read_file("callbacks.secret_file", p)?;
            Some((
                Secret::from_whsec(&text).map_err(|e| {
                    format!(
                        "`callbacks.secret_file`: the content of {} {e}",
                        p.display()
                    )
                })?,
                KeySource::File(p.into()),
            ))
        }
        (None, None) => None,
    };
    if raw.previous_secrets.len() > 8 {
        return Err(format!(
            "`callbacks.previous_secrets`: {} entries; at most 8 (every callback carries a signature per secret)",
            raw.previous_secrets.len()
        ));
    }
    let mut previous = Vec::new();
    for (i, p) in raw.previous_secrets.iter().enumerate() {
        let key = format!("callbacks.previous_secrets[{i}]");
        let (text, source) = read_source(&key, "env", p.env.as_deref(), p.file.as_deref(), env)?;
        let secret =
            Secret::from_whsec(&text).map_err(|e| format!("`{key}`: the value of {source} {e}"))?;
        previous.push(PreviousSecret {
            source,
            secret,
            until: p.until,
        });
    }
    let signing_key = match (raw.signing_key_env, raw.signing_key_file) {
        (None, None) => None,
        (Some(_), Some(_)) => {
            return Err("`callbacks.signing_key_env`: write one of `signing_key_env` or `signing_key_file`, not both".into());
        }
        (var, file) => {
            let key = if var.is_some() {
                "callbacks.signing_key_env"
            } else {
                "callbacks.signing_key_file"
            };
            let (text, source) = match (var, file) {
                (Some(v), _) => env(v)
                    .map(|s| (s, KeySource::Env(v.to_string())))
                    .ok_or_else(|| format!("`{key}`: environment variable {v} is not set"))?,
                (_, Some(p)) => (read_file(key, p)?, KeySource::File(p.into())),
                _ => unreachable!("one of the two is set"),
            };
            let parsed =
                parse_whsk(&text).map_err(|e| format!("`{key}`: the value of {source} {e}"))?;
            Some(CallbackSigningKey {
                source,
                key: parsed,
            })
        }
    };
    Ok(Keys {
        secret,
        previous,
        signing_key,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn whsk_keys_are_seeds_or_keypairs() {
        // RFC 8032, 7.1, test 1.
        let seed = hex::decode("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60")
            .unwrap();
        let public =
            hex::decode("d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a")
                .unwrap();
        let k = parse_whsk(&format!("whsk_{}", B64.encode(&seed))).unwrap();
        assert_eq!(k.verifying_key().as_bytes().as_slice(), public.as_slice());
        let pair = [seed.clone(), public.clone()].concat();
        assert_eq!(
            parse_whsk(&format!("whsk_{}", B64.encode(&pair))).unwrap(),
            k
        );
        let wrong = [seed.clone(), seed.clone()].concat();
        assert!(
            parse_whsk(&format!("whsk_{}", B64.encode(&wrong)))
                .unwrap_err()
                .contains("not the public key")
        );
        assert!(parse_whsk("whpk_AAAA").unwrap_err().contains("public key"));
        assert!(parse_whsk("whsk_AAAA").unwrap_err().contains("is 3 bytes"));
        assert!(
            parse_whsk(&B64.encode(&seed))
                .unwrap_err()
                .contains("must start with")
        );
        let shown = CallbackSigningKey {
            source: KeySource::Env("X".into()),
            key: k,
        };
        assert_eq!(shown.public_whpk(), format!("whpk_{}", B64.encode(&public)));
    }
}
