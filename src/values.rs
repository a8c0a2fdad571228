//! The small value types configuration is written in: durations, sizes, secrets, `${VAR}`
//! expansion from the environment and JSON pointers. Each part of the program resolves its own
//! configuration with these; this module depends on nothing else in the crate.

use std::fmt;
use std::time::Duration;

use base64::Engine;
use serde::{Deserialize, Deserializer};

/// How environment variables are read while resolving the config (tests pass a map).
pub type EnvLookup<'a> = &'a dyn Fn(&str) -> Option<String>;

/// The process environment.
pub fn process_env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

/// A duration written as humantime text: `"1s"`, `"250ms"`, `"2h 30m"`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Dur(pub Duration);

/// A duration, or `"off"` (`None`): for a setting a preset may turn on that the config can
/// turn off again (`poll.target_delay`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DurOrOff(pub Option<Duration>);

impl<'de> Deserialize<'de> for DurOrOff {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        if s.eq_ignore_ascii_case("off") {
            return Ok(DurOrOff(None));
        }
        humantime::parse_duration(&s)
            .map(|d| DurOrOff(Some(d)))
            .map_err(|e| {
                serde::de::Error::custom(format!(
                    "invalid duration {s:?} ({e}); write e.g. \"15s\", \"2m\", or \"off\""
                ))
            })
    }
}

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_binary_units() {
        let s: Size = toml::from_str::<toml::Value>("x = \"64MiB\"").unwrap()["x"]
            .clone()
            .try_into()
            .unwrap();
        assert_eq!(s.0, 64 << 20);
    }
}
