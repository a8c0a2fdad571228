//! An upstream's `[upstreams.<name>.webhook]` section: the verification scheme, its keys from the
//! environment (with rotation), Gemini's JWKS settings, where the operation id sits and which
//! event types decide an outcome. `ingest` verifies inbound webhooks with the resolved
//! [`WebhookConfig`].

use std::collections::BTreeMap;
use std::time::Duration;

use base64::Engine;
use reqwest::Url;
use serde::Deserialize;

use super::{Preset, WebhookDefaults};
use crate::clock::Timestamp;
use crate::operation::Status;
use crate::values::{Dur, EnvLookup, Secret, check_pointer};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawWebhook {
    scheme: String,
    secret_env: Option<String>,
    #[serde(default)]
    previous_secrets: Vec<RawPreviousSecret>,
    jwks_url: Option<String>,
    /// A string or a list of strings (checked in `resolve_webhook`).
    audience: Option<serde_json::Value>,
    jwks_ttl: Option<Dur>,
    jwks_min_interval: Option<Dur>,
    operation_field: Option<String>,
    safety_poll: Option<Dur>,
    #[serde(default)]
    events: BTreeMap<String, String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPreviousSecret {
    env: String,
    until: Timestamp,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WebhookScheme {
    StandardWebhooks,
    Github,
    Stripe,
    GeminiJwt,
    None,
}

impl WebhookScheme {
    pub const NAMES: [&'static str; 5] = [
        "standard-webhooks",
        "github",
        "stripe",
        "gemini-jwt",
        "none",
    ];

    pub fn name(self) -> &'static str {
        match self {
            WebhookScheme::StandardWebhooks => "standard-webhooks",
            WebhookScheme::Github => "github",
            WebhookScheme::Stripe => "stripe",
            WebhookScheme::GeminiJwt => "gemini-jwt",
            WebhookScheme::None => "none",
        }
    }

    fn from_name(name: &str) -> Option<WebhookScheme> {
        Some(match name {
            "standard-webhooks" => WebhookScheme::StandardWebhooks,
            "github" => WebhookScheme::Github,
            "stripe" => WebhookScheme::Stripe,
            "gemini-jwt" => WebhookScheme::GeminiJwt,
            "none" => WebhookScheme::None,
            _ => return None,
        })
    }

    /// Whether this scheme verifies with secrets from the environment (`secret_env`,
    /// `previous_secrets`); `gemini-jwt` takes its keys from a JWKS, `none` has none.
    fn uses_secrets(self) -> bool {
        matches!(
            self,
            WebhookScheme::StandardWebhooks | WebhookScheme::Github | WebhookScheme::Stripe
        )
    }
}

/// The default JWKS of Gemini's dynamic (per-request) webhooks.
pub const GEMINI_JWKS_URL: &str = "https://generativelanguage.googleapis.com/.well-known/jwks.json";

#[derive(Clone, Debug)]
pub struct WebhookConfig {
    pub scheme: WebhookScheme,
    pub secret_env: Option<String>,
    /// The keys that verify this upstream's webhooks: the current one (`secret_env`) first,
    /// then the `previous_secrets`, each accepted until its `until`. Empty for `gemini-jwt`
    /// and `none`.
    pub keys: Vec<WebhookKey>,
    /// `gemini-jwt` only.
    pub jwt: Option<JwtConfig>,
    pub operation_field: String,
    pub safety_poll: Duration,
    /// Event types that decide an outcome by themselves (`events` in the config).
    pub events: BTreeMap<String, Status>,
}

/// One configured webhook key and where it came from.
#[derive(Clone, Debug)]
pub struct WebhookKey {
    /// The config key it was read from: `secret_env` or `previous_secrets[i]`.
    pub source: String,
    /// The environment variable that held it.
    pub env: String,
    pub material: KeyMaterial,
    /// Accepted while now < `until` (`None`: the current secret, no end).
    pub until: Option<Timestamp>,
}

impl WebhookKey {
    pub fn active_at(&self, now: Timestamp) -> bool {
        self.until.is_none_or(|u| now < u)
    }
}

#[derive(Clone, Debug)]
pub enum KeyMaterial {
    /// An HMAC secret: Standard Webhooks `v1`, GitHub, Stripe.
    Hmac(Secret),
    /// A Standard Webhooks `v1a` public key (`whpk_<base64>`).
    Ed25519(ed25519_dalek::VerifyingKey),
}

impl KeyMaterial {
    /// The kind of key, for `hookshim check`.
    pub fn kind(&self) -> &'static str {
        match self {
            KeyMaterial::Hmac(_) => "hmac",
            KeyMaterial::Ed25519(_) => "ed25519 (v1a)",
        }
    }
}

/// `gemini-jwt`: where the keys come from and what the token must say.
#[derive(Clone, Debug)]
pub struct JwtConfig {
    pub jwks_url: Url,
    /// The token's `aud` must be one of these.
    pub audience: Vec<String>,
    /// How long a fetched JWKS is used (shorter if its `Cache-Control: max-age` says so).
    pub jwks_ttl: Duration,
    /// The least time between two JWKS fetches: a flood of unknown `kid`s or a failing JWKS
    /// URL causes at most one fetch per this interval.
    pub jwks_min_interval: Duration,
}

impl WebhookConfig {
    /// Warnings about this webhook config at `now` (for `hookshim check` and start-up): previous
    /// secrets whose `until` has passed. They are ignored, not an error, so that a restart after
    /// the grace period does not fail; the entry should be removed.
    pub fn warnings(&self, upstream: &str, now: Timestamp) -> Vec<String> {
        self.keys
            .iter()
            .filter(|k| !k.active_at(now))
            .map(|k| {
                format!(
                    "`upstreams.{upstream}.webhook.{}`: until {} has passed; the secret in {} is no longer accepted (remove the entry)",
                    k.source,
                    k.until.map(|u| u.rfc3339()).unwrap_or_default(),
                    k.env
                )
            })
            .collect()
    }
}

/// Check `webhook.events`: each event type decides an outcome by itself. Event types of a
/// preset's own family must be ones it documents, and a pause cannot be an outcome.
fn resolve_events(
    key: &str,
    preset: Preset,
    wd: &WebhookDefaults,
    events: BTreeMap<String, String>,
) -> Result<BTreeMap<String, Status>, String> {
    const OUTCOMES: [Status; 4] = [
        Status::Succeeded,
        Status::Failed,
        Status::Cancelled,
        Status::Expired,
    ];
    let mut out = BTreeMap::new();
    for (event, outcome) in events {
        let k = format!("{key}.{event:?}");
        if event.is_empty() {
            return Err(format!("`{key}`: an event type must not be empty"));
        }
        if let Some(why) = wd.no_event_map {
            return Err(format!("`{key}`: {why}"));
        }
        if !wd.families.is_empty() && !wd.events.contains(&event.as_str()) {
            return Err(format!(
                "`{k}`: preset {:?} does not send {event:?}; its events are: {}",
                preset.name(),
                wd.events.join(", ")
            ));
        }
        if wd.pauses.contains(&event.as_str()) {
            return Err(format!(
                "`{k}`: {event} announces a pause, not an end, so it cannot decide an outcome \
                 (use `callback_events = [\"requires_action\"]` to hear about pauses)"
            ));
        }
        let status = Status::parse(&outcome)
            .filter(|s| OUTCOMES.contains(s))
            .ok_or_else(|| {
                format!(
                    "`{k}`: unknown outcome {outcome:?}; expected one of: succeeded, failed, cancelled, expired"
                )
            })?;
        out.insert(event, status);
    }
    Ok(out)
}

/// Resolve the `[upstreams.<name>.webhook]` section of upstream `name` with preset `preset`,
/// whose webhook defaults are `wd`.
pub fn resolve_webhook(
    name: &str,
    preset: Preset,
    wd: &WebhookDefaults,
    w: RawWebhook,
    env: EnvLookup<'_>,
) -> Result<WebhookConfig, String> {
    let key = |k: &str| format!("upstreams.{name}.webhook.{k}");
    let scheme = WebhookScheme::from_name(&w.scheme).ok_or_else(|| {
        format!(
            "`{}`: unknown scheme {:?}; expected one of: {}",
            key("scheme"),
            w.scheme,
            WebhookScheme::NAMES.map(|n| format!("{n:?}")).join(", ")
        )
    })?;
    let only_for = |k: &str, present: bool, schemes: &str| -> Result<(), String> {
        if present {
            Err(format!(
                "`{}`: not used by scheme {:?} (only by {schemes})",
                key(k),
                w.scheme
            ))
        } else {
            Ok(())
        }
    };

    let mut keys = Vec::new();
    if scheme.uses_secrets() {
        let var = w.secret_env.as_ref().ok_or_else(|| {
            format!(
                "`{}`: required for scheme {:?}",
                key("secret_env"),
                w.scheme
            )
        })?;
        keys.push(webhook_key(
            scheme,
            &key("secret_env"),
            "secret_env",
            var,
            None,
            env,
        )?);
        for (i, p) in w.previous_secrets.iter().enumerate() {
            let source = format!("previous_secrets[{i}]");
            let value_key = key(&format!("{source}.env"));
            keys.push(webhook_key(
                scheme,
                &value_key,
                &source,
                &p.env,
                Some(p.until),
                env,
            )?);
        }
    } else if scheme == WebhookScheme::GeminiJwt {
        let why = "its keys come from jwks_url";
        if w.secret_env.is_some() {
            return Err(format!(
                "`{}`: not used by scheme \"gemini-jwt\" ({why})",
                key("secret_env")
            ));
        }
        if !w.previous_secrets.is_empty() {
            return Err(format!(
                "`{}`: not used by scheme \"gemini-jwt\" ({why}; a rotated key is found by its kid)",
                key("previous_secrets")
            ));
        }
    } else {
        only_for(
            "previous_secrets",
            !w.previous_secrets.is_empty(),
            "the signed schemes",
        )?;
    }

    let jwt = if scheme == WebhookScheme::GeminiJwt {
        let url_text = w
            .jwks_url
            .clone()
            .unwrap_or_else(|| GEMINI_JWKS_URL.to_string());
        let jwks_url = Url::parse(&url_text).map_err(|e| {
            format!(
                "`{}`: {url_text:?} is not a valid URL ({e})",
                key("jwks_url")
            )
        })?;
        if jwks_url.scheme() != "http" && jwks_url.scheme() != "https" {
            return Err(format!(
                "`{}`: {url_text:?} must use http or https",
                key("jwks_url")
            ));
        }
        let audience = match &w.audience {
            None => {
                return Err(format!(
                    "`{}`: required for scheme \"gemini-jwt\" (the `aud` the tokens must carry)",
                    key("audience")
                ));
            }
            Some(serde_json::Value::String(a)) => vec![a.clone()],
            Some(serde_json::Value::Array(items)) => items
                .iter()
                .map(|i| i.as_str().map(str::to_string))
                .collect::<Option<Vec<_>>>()
                .ok_or_else(|| {
                    format!(
                        "`{}`: must be a string or a list of strings",
                        key("audience")
                    )
                })?,
            Some(_) => {
                return Err(format!(
                    "`{}`: must be a string or a list of strings",
                    key("audience")
                ));
            }
        };
        if audience.is_empty() || audience.iter().any(|a| a.trim().is_empty()) {
            return Err(format!("`{}`: must not be empty", key("audience")));
        }
        let jwks_ttl = w.jwks_ttl.map(|d| d.0).unwrap_or(Duration::from_secs(3600));
        let jwks_min_interval = w
            .jwks_min_interval
            .map(|d| d.0)
            .unwrap_or(Duration::from_secs(10));
        if jwks_min_interval.is_zero() {
            return Err(format!(
                "`{}`: must be more than 0s",
                key("jwks_min_interval")
            ));
        }
        if jwks_ttl < jwks_min_interval {
            return Err(format!(
                "`{}`: must not be less than jwks_min_interval",
                key("jwks_ttl")
            ));
        }
        Some(JwtConfig {
            jwks_url,
            audience,
            jwks_ttl,
            jwks_min_interval,
        })
    } else {
        let jwt_only = "\"gemini-jwt\"";
        only_for("jwks_url", w.jwks_url.is_some(), jwt_only)?;
        only_for("audience", w.audience.is_some(), jwt_only)?;
        only_for("jwks_ttl", w.jwks_ttl.is_some(), jwt_only)?;
        only_for("jwks_min_interval", w.jwks_min_interval.is_some(), jwt_only)?;
        None
    };

    let operation_field = check_pointer(
        &key("operation_field"),
        w.operation_field.as_deref().unwrap_or(wd.operation_field),
    )?;
    if scheme == WebhookScheme::GeminiJwt && !w.events.is_empty() {
        // Nothing says Gemini's token covers the body: a replayed token with another body
        // must not be able to end an operation.
        return Err(format!(
            "`{}`: not allowed with scheme \"gemini-jwt\": its token is not known to cover the \
             body, so an event cannot decide an outcome; the webhook triggers a status read instead",
            key("events")
        ));
    }
    let events = resolve_events(&key("events"), preset, wd, w.events)?;
    let safety_poll = w
        .safety_poll
        .map(|d| d.0)
        .unwrap_or(Duration::from_secs(600));
    if safety_poll.is_zero() {
        return Err(format!("`{}`: must be more than 0s", key("safety_poll")));
    }
    Ok(WebhookConfig {
        scheme,
        secret_env: w.secret_env,
        keys,
        jwt,
        operation_field,
        safety_poll,
        events,
    })
}

/// Read one webhook key from environment variable `var` and parse it for `scheme`.
fn webhook_key(
    scheme: WebhookScheme,
    key: &str,
    source: &str,
    var: &str,
    until: Option<Timestamp>,
    env: EnvLookup<'_>,
) -> Result<WebhookKey, String> {
    let v = env(var).ok_or_else(|| format!("`{key}`: environment variable {var} is not set"))?;
    let bad = |e: String| format!("`{key}`: the value of {var} {e}");
    let material = match scheme {
        WebhookScheme::StandardWebhooks => {
            if v.starts_with("whsec_") {
                KeyMaterial::Hmac(Secret::from_whsec(&v).map_err(bad)?)
            } else if let Some(b64) = v.strip_prefix("whpk_") {
                let bytes = base64::engine::general_purpose::STANDARD
                    .decode(b64)
                    .map_err(|e| bad(format!("is not a valid whpk_ key: the part after \"whpk_\" is not valid base64 ({e})")))?;
                let bytes: [u8; 32] = bytes.try_into().map_err(|b: Vec<u8>| {
                    bad(format!("is not a valid whpk_ key: an Ed25519 public key is 32 bytes, this one is {}", b.len()))
                })?;
                KeyMaterial::Ed25519(ed25519_dalek::VerifyingKey::from_bytes(&bytes).map_err(
                    |_| bad("is not a valid whpk_ key: not an Ed25519 public key".into()),
                )?)
            } else if v.starts_with("whsk_") {
                return Err(bad(
                    "is an Ed25519 signing (private) key (whsk_...); configure the upstream's public key (whpk_...)".into(),
                ));
            } else {
                // OpenAI's quirk: a secret without the prefix is used as raw bytes.
                KeyMaterial::Hmac(Secret(v.into_bytes()))
            }
        }
        // GitHub's secret is raw text; Stripe's `whsec_...` is used as it is, not decoded.
        _ => KeyMaterial::Hmac(Secret(v.into_bytes())),
    };
    Ok(WebhookKey {
        source: source.to_string(),
        env: var.to_string(),
        material,
        until,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::upstream::config::testing::{GOOD, env, err_of, parse};

    /// GOOD with its webhook section replaced by `section` (the lines after the header).
    fn with_webhook(section: &str) -> String {
        let start = GOOD.find("[upstreams.jobs.webhook]").unwrap();
        format!("{}[upstreams.jobs.webhook]\n{section}\n", &GOOD[..start])
    }

    fn webhook_of(section: &str) -> WebhookConfig {
        parse(&with_webhook(section), &env).unwrap()["jobs"]
            .webhook
            .clone()
            .unwrap()
    }

    #[test]
    fn previous_secrets_are_read_with_their_until() {
        let w = webhook_of(
            r#"scheme = "standard-webhooks"
secret_env = "ED_PUBLIC"
previous_secrets = [{ env = "OLD_SECRET", until = "2026-12-31T00:00:00Z" }]"#,
        );
        assert_eq!(w.keys.len(), 2);
        assert!(matches!(w.keys[0].material, KeyMaterial::Ed25519(_)));
        assert_eq!(w.keys[0].until, None);
        assert!(matches!(&w.keys[1].material, KeyMaterial::Hmac(s) if s.0 == b"old secret bytes"));
        let until = w.keys[1].until.unwrap();
        assert_eq!(until.rfc3339(), "2026-12-31T00:00:00.000Z");
        assert!(w.keys[1].active_at(Timestamp(until.0 - 1)));
        assert!(!w.keys[1].active_at(until));
        assert!(w.warnings("jobs", Timestamp(until.0 - 1)).is_empty());
        let warnings = w.warnings("jobs", until);
        assert_eq!(warnings.len(), 1);
        assert!(
            warnings[0].starts_with("`upstreams.jobs.webhook.previous_secrets[0]`: until 2026-12-31T00:00:00.000Z has passed; the secret in OLD_SECRET is no longer accepted"),
            "{warnings:?}"
        );
        // Stripe's secret is kept as the string it is.
        let w = webhook_of("scheme = \"stripe\"\nsecret_env = \"STRIPE_SECRET\"");
        assert!(
            matches!(&w.keys[0].material, KeyMaterial::Hmac(s) if s.0 == b"whsec_stripe_as_is")
        );
    }

    #[test]
    fn gemini_jwt_defaults_and_audiences() {
        let w = webhook_of("scheme = \"gemini-jwt\"\naudience = \"https://app.example/hook\"");
        let j = w.jwt.unwrap();
        assert_eq!(j.jwks_url.as_str(), GEMINI_JWKS_URL);
        assert_eq!(j.audience, ["https://app.example/hook"]);
        assert_eq!(j.jwks_ttl, Duration::from_secs(3600));
        assert_eq!(j.jwks_min_interval, Duration::from_secs(10));
        assert!(w.keys.is_empty());
        // A token that may not cover the body cannot let an event decide an outcome.
        let e = err_of(&with_webhook(
            "scheme = \"gemini-jwt\"\naudience = \"a\"\nevents = { \"job.done\" = \"succeeded\" }",
        ));
        assert!(
            e.contains("`upstreams.jobs.webhook.events`: not allowed with scheme \"gemini-jwt\""),
            "{e}"
        );
        let w = webhook_of(
            "scheme = \"gemini-jwt\"\naudience = [\"a\", \"b\"]\njwks_url = \"http://127.0.0.1:1/jwks\"\njwks_ttl = \"5m\"\njwks_min_interval = \"1s\"",
        );
        let j = w.jwt.unwrap();
        assert_eq!(j.audience, ["a", "b"]);
        assert_eq!(j.jwks_url.as_str(), "http://127.0.0.1:1/jwks");
        assert_eq!(j.jwks_ttl, Duration::from_secs(300));
    }

    #[test]
    fn bad_webhook_sections_name_the_key() {
        let cases: &[(&str, &str)] = &[
            (
                "scheme = \"magic\"",
                "`upstreams.jobs.webhook.scheme`: unknown scheme \"magic\"; expected one of: \"standard-webhooks\", \"github\", \"stripe\", \"gemini-jwt\", \"none\"",
            ),
            (
                "scheme = \"gemini-jwt\"",
                "`upstreams.jobs.webhook.audience`: required for scheme \"gemini-jwt\"",
            ),
            (
                "scheme = \"gemini-jwt\"\naudience = 3",
                "`upstreams.jobs.webhook.audience`: must be a string or a list of strings",
            ),
            (
                "scheme = \"gemini-jwt\"\naudience = []",
                "`upstreams.jobs.webhook.audience`: must not be empty",
            ),
            (
                "scheme = \"gemini-jwt\"\naudience = \"a\"\nsecret_env = \"JOBS_WEBHOOK_SECRET\"",
                "`upstreams.jobs.webhook.secret_env`: not used by scheme \"gemini-jwt\" (its keys come from jwks_url)",
            ),
            (
                "scheme = \"gemini-jwt\"\naudience = \"a\"\nprevious_secrets = [{ env = \"OLD_SECRET\", until = \"2026-12-31T00:00:00Z\" }]",
                "`upstreams.jobs.webhook.previous_secrets`: not used by scheme \"gemini-jwt\"",
            ),
            (
                "scheme = \"gemini-jwt\"\naudience = \"a\"\njwks_url = \"ftp://127.0.0.1/k\"",
                "`upstreams.jobs.webhook.jwks_url`: \"ftp://127.0.0.1/k\" must use http or https",
            ),
            (
                "scheme = \"gemini-jwt\"\naudience = \"a\"\njwks_min_interval = \"0s\"",
                "`upstreams.jobs.webhook.jwks_min_interval`: must be more than 0s",
            ),
            (
                "scheme = \"gemini-jwt\"\naudience = \"a\"\njwks_ttl = \"1s\"",
                "`upstreams.jobs.webhook.jwks_ttl`: must not be less than jwks_min_interval",
            ),
            (
                "scheme = \"github\"\nsecret_env = \"JOBS_WEBHOOK_SECRET\"\naudience = \"a\"",
                "`upstreams.jobs.webhook.audience`: not used by scheme \"github\" (only by \"gemini-jwt\")",
            ),
            (
                "scheme = \"stripe\"",
                "`upstreams.jobs.webhook.secret_env`: required for scheme \"stripe\"",
            ),
            (
                "scheme = \"none\"\nprevious_secrets = [{ env = \"OLD_SECRET\", until = \"2026-12-31T00:00:00Z\" }]",
                "`upstreams.jobs.webhook.previous_secrets`: not used by scheme \"none\"",
            ),
            (
                "scheme = \"standard-webhooks\"\nsecret_env = \"ED_PRIVATE\"",
                "`upstreams.jobs.webhook.secret_env`: the value of ED_PRIVATE is an Ed25519 signing (private) key (whsk_...); configure the upstream's public key (whpk_...)",
            ),
            (
                "scheme = \"standard-webhooks\"\nsecret_env = \"SHORT_PUBLIC\"",
                "`upstreams.jobs.webhook.secret_env`: the value of SHORT_PUBLIC is not a valid whpk_ key: an Ed25519 public key is 32 bytes, this one is 3",
            ),
            (
                "scheme = \"github\"\nsecret_env = \"JOBS_WEBHOOK_SECRET\"\nprevious_secrets = [{ env = \"GONE\", until = \"2026-12-31T00:00:00Z\" }]",
                "`upstreams.jobs.webhook.previous_secrets[0].env`: environment variable GONE is not set",
            ),
            (
                "scheme = \"github\"\nsecret_env = \"JOBS_WEBHOOK_SECRET\"\nprevious_secrets = [{ env = \"OLD_SECRET\", until = \"end of year\" }]",
                "invalid RFC 3339 time \"end of year\"",
            ),
            (
                "scheme = \"github\"\nsecret_env = \"JOBS_WEBHOOK_SECRET\"\nprevious_secrets = [{ env = \"OLD_SECRET\" }]",
                "missing field `until`",
            ),
        ];
        for (section, want) in cases {
            let e = err_of(&with_webhook(section));
            assert!(e.contains(want), "for\n{section}\nwant {want:?}\ngot  {e}");
        }
        // TOML-level errors name the dotted key too.
        let e = err_of(&with_webhook(
            "scheme = \"github\"\nsecret_env = \"JOBS_WEBHOOK_SECRET\"\nprevious_secrets = [{ env = \"OLD_SECRET\", until = \"end of year\" }]",
        ));
        assert!(
            e.contains("`upstreams.jobs.webhook.previous_secrets[0].until`"),
            "{e}"
        );
    }
}
