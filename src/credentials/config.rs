//! `[upstreams.<name>.auth]`: where an upstream's credential comes from — a command, a file,
//! the GCE metadata server, or AWS SigV4 signing — and how it is sent. Resolved here, checked
//! key by key; nothing in this config is a secret (it names where secrets are), so `hookshim
//! check` shows it whole.

use std::path::PathBuf;
use std::time::Duration;

use reqwest::Url;
use reqwest::header::HeaderName;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::values::{Dur, EnvLookup};

/// The environment variables AWS credentials are read from (read once, with the config).
pub const AWS_ENV: &[&str] = &[
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_PROFILE",
    "AWS_SHARED_CREDENTIALS_FILE",
    "AWS_CONFIG_FILE",
    "HOME",
];

/// The [`AWS_ENV`] variables that were set. `Debug` shows only their names.
#[derive(Clone, Default)]
pub struct AwsEnv(pub std::collections::BTreeMap<String, String>);

impl std::fmt::Debug for AwsEnv {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.0.keys()).finish()
    }
}

impl AwsEnv {
    pub fn get(&self, name: &str) -> Option<String> {
        self.0.get(name).cloned()
    }
}

/// The GCE metadata server's token endpoint (default service account).
pub const GCP_METADATA_URL: &str =
    "http://metadata.google.internal/computeMetadata/v1/instance/service-accounts/default/token";
/// How often a command's token is fetched again unless `refresh` says otherwise.
pub const DEFAULT_COMMAND_REFRESH: Duration = Duration::from_secs(45 * 60);
/// How often AWS credentials without an expiry (environment, credentials file) are read again.
pub const DEFAULT_AWS_REFRESH: Duration = Duration::from_secs(5 * 60);
/// How long a command, a metadata request or a `credential_process` may take.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// `auth = { ... }` as written.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawAuth {
    command: Option<Vec<String>>,
    file: Option<String>,
    #[serde(default)]
    gcp_metadata: bool,
    metadata_url: Option<String>,
    aws_sigv4: Option<RawSigV4>,
    refresh: Option<Dur>,
    timeout: Option<Dur>,
    header: Option<String>,
    prefix: Option<String>,
}

/// `auth.aws_sigv4 = { service, region, profile }` as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSigV4 {
    service: String,
    region: String,
    profile: Option<String>,
}

/// Where a credential comes from.
#[derive(Clone, Debug)]
pub enum AuthSource {
    /// Run `argv` (no shell); its trimmed stdout is the token, fetched again every `refresh`.
    Command {
        argv: Vec<String>,
        refresh: Duration,
    },
    /// Read the file; read again whenever its modification time or size changes.
    File { path: PathBuf },
    /// The metadata server's token endpoint; fetched again before `expires_in` runs out.
    GcpMetadata { url: Url },
    /// Sign every status request with AWS SigV4.
    AwsSigV4(SigV4Config),
}

/// AWS SigV4 signing of an upstream's status requests.
#[derive(Clone, Debug)]
pub struct SigV4Config {
    pub service: String,
    pub region: String,
    /// The profile in the shared config files; `AWS_PROFILE`, then `default`, when unset.
    pub profile: Option<String>,
    /// How often credentials without an expiry are read again.
    pub refresh: Duration,
    /// The AWS environment variables as the config was loaded (the files they name are read
    /// again at every refresh).
    pub env: AwsEnv,
}

/// An upstream's resolved `auth`.
#[derive(Clone, Debug)]
pub struct AuthConfig {
    pub source: AuthSource,
    /// The header a token is sent in (`authorization` unless `header` says otherwise).
    pub header: HeaderName,
    /// What goes before the token (`"Bearer "` unless `prefix` says otherwise).
    pub prefix: String,
    /// Limit for one command run, metadata request or `credential_process`.
    pub timeout: Duration,
}

impl AuthConfig {
    /// The header this credential sets, which the static `headers` must leave alone.
    pub fn sets_header(&self) -> &HeaderName {
        &self.header
    }

    /// What `hookshim check` shows: where the credential comes from, never a token.
    pub fn describe(&self) -> Value {
        let ms = |d: Duration| humantime::format_duration(d).to_string();
        let source = match &self.source {
            AuthSource::Command { argv, refresh } => {
                json!({"command": argv, "refresh": ms(*refresh)})
            }
            AuthSource::File { path } => json!({"file": path.display().to_string()}),
            AuthSource::GcpMetadata { url } => {
                json!({"gcp_metadata": true, "metadata_url": url.as_str()})
            }
            AuthSource::AwsSigV4(s) => {
                return json!({"aws_sigv4": {
                    "service": s.service, "region": s.region,
                    "profile": s.profile.clone().unwrap_or_else(|| "<AWS_PROFILE, else default>".into()),
                    "refresh": ms(s.refresh),
                }, "timeout": ms(self.timeout)});
            }
        };
        let mut v = source;
        v["header"] = json!(self.header.as_str());
        v["prefix"] = json!(self.prefix);
        v["timeout"] = json!(ms(self.timeout));
        v["token"] = json!("<redacted, fetched at run time>");
        v
    }
}

/// Resolve `auth` of upstream `name`. Exactly one source; `header`/`prefix` only for tokens.
/// Errors name the key (`upstreams.<name>.auth.<key>`) and say what to write.
pub fn resolve_auth(name: &str, raw: RawAuth, env: EnvLookup<'_>) -> Result<AuthConfig, String> {
    let key = |k: &str| format!("upstreams.{name}.auth.{k}");
    let sources = [
        raw.command.is_some(),
        raw.file.is_some(),
        raw.gcp_metadata,
        raw.aws_sigv4.is_some(),
    ]
    .iter()
    .filter(|s| **s)
    .count();
    if sources != 1 {
        return Err(format!(
            "`upstreams.{name}.auth`: write exactly one of `command = [\"prog\", \"arg\"]`, \
             `file = \"/path\"`, `gcp_metadata = true` or `aws_sigv4 = {{ service = \"…\", region = \"…\" }}` \
             (found {sources})"
        ));
    }
    let timeout = raw.timeout.map(|d| d.0).unwrap_or(DEFAULT_TIMEOUT);
    if timeout.is_zero() {
        return Err(format!(
            "`{}`: must be more than 0, e.g. \"30s\"",
            key("timeout")
        ));
    }
    if raw.metadata_url.is_some() && !raw.gcp_metadata {
        return Err(format!(
            "`{}`: only applies with `gcp_metadata = true`",
            key("metadata_url")
        ));
    }
    let refresh = raw.refresh.map(|d| d.0);
    if refresh.is_some_and(|d| d < Duration::from_secs(1)) {
        return Err(format!("`{}`: must be at least \"1s\"", key("refresh")));
    }
    let source = if let Some(argv) = raw.command {
        if argv.first().is_none_or(|p| p.is_empty()) {
            return Err(format!(
                "`{}`: write the program and its arguments, e.g. [\"gcloud\", \"auth\", \"print-access-token\"]",
                key("command")
            ));
        }
        AuthSource::Command {
            argv,
            refresh: refresh.unwrap_or(DEFAULT_COMMAND_REFRESH),
        }
    } else if let Some(path) = raw.file {
        if refresh.is_some() {
            return Err(format!(
                "`{}`: a file is read again whenever it changes; remove `refresh`",
                key("refresh")
            ));
        }
        if path.is_empty() {
            return Err(format!(
                "`{}`: write the path of the token file",
                key("file")
            ));
        }
        AuthSource::File {
            path: PathBuf::from(path),
        }
    } else if raw.gcp_metadata {
        if refresh.is_some() {
            return Err(format!(
                "`{}`: the metadata token is fetched again before its `expires_in`; remove `refresh`",
                key("refresh")
            ));
        }
        let text = raw.metadata_url.as_deref().unwrap_or(GCP_METADATA_URL);
        let url = Url::parse(text)
            .ok()
            .filter(|u| u.scheme() == "http" || u.scheme() == "https")
            .ok_or_else(|| format!("`{}`: {text:?} is not an http(s) URL", key("metadata_url")))?;
        AuthSource::GcpMetadata { url }
    } else if let Some(s) = raw.aws_sigv4 {
        if raw.header.is_some() || raw.prefix.is_some() {
            return Err(format!(
                "`upstreams.{name}.auth`: `header` and `prefix` do not apply to `aws_sigv4` (it sets Authorization, X-Amz-Date and X-Amz-Security-Token)"
            ));
        }
        let ok = |v: &str| {
            !v.is_empty()
                && v.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        };
        if !ok(&s.service) {
            return Err(format!(
                "`{}`: write the signing name of the service, e.g. \"bedrock\"",
                key("aws_sigv4.service")
            ));
        }
        if !ok(&s.region) {
            return Err(format!(
                "`{}`: write the region, e.g. \"us-east-1\"",
                key("aws_sigv4.region")
            ));
        }
        AuthSource::AwsSigV4(SigV4Config {
            service: s.service,
            region: s.region,
            profile: s.profile.filter(|p| !p.is_empty()),
            refresh: refresh.unwrap_or(DEFAULT_AWS_REFRESH),
            env: AwsEnv(
                AWS_ENV
                    .iter()
                    .filter_map(|k| env(k).map(|v| (k.to_string(), v)))
                    .collect(),
            ),
        })
    } else {
        unreachable_source(name)?
    };
    let header_text = raw.header.as_deref().unwrap_or("authorization");
    let header = HeaderName::from_bytes(header_text.as_bytes()).map_err(|_| {
        format!(
            "`{}`: {header_text:?} is not a valid header name",
            key("header")
        )
    })?;
    let prefix = raw.prefix.unwrap_or_else(|| "Bearer ".to_string());
    if prefix.chars().any(|c| c.is_control()) {
        return Err(format!(
            "`{}`: must not contain control characters",
            key("prefix")
        ));
    }
    Ok(AuthConfig {
        source,
        header,
        prefix,
        timeout,
    })
}

/// Counted above: exactly one source is set. Kept as an error, not a panic.
fn unreachable_source(name: &str) -> Result<AuthSource, String> {
    Err(format!("`upstreams.{name}.auth`: no credential source"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<AuthConfig, String> {
        let raw: RawAuth = toml::from_str(text).map_err(|e| e.to_string())?;
        resolve_auth("vertex", raw, &|_| None)
    }

    #[test]
    fn command_defaults_to_bearer_authorization_every_45_minutes() {
        let a = parse(r#"command = ["gcloud", "auth", "print-access-token"]"#).unwrap();
        assert_eq!(a.header.as_str(), "authorization");
        assert_eq!(a.prefix, "Bearer ");
        assert!(
            matches!(a.source, AuthSource::Command { refresh, .. } if refresh == DEFAULT_COMMAND_REFRESH)
        );
        let a = parse(
            r#"command = ["sh", "-c", "cat t"]
refresh = "10m"
header = "api-key"
prefix = """#,
        )
        .unwrap();
        assert_eq!(a.header.as_str(), "api-key");
        assert_eq!(a.prefix, "");
    }

    #[test]
    fn exactly_one_source_and_keys_that_apply() {
        for (text, needle) in [
            ("", "exactly one of"),
            (
                r#"command = ["a"]
file = "/t""#,
                "exactly one of",
            ),
            ("command = []", "auth.command"),
            (
                r#"file = "/t"
refresh = "1m""#,
                "auth.refresh",
            ),
            (r#"metadata_url = "http://127.0.0.1/""#, "exactly one of"),
            (
                r#"command = ["a"]
metadata_url = "http://127.0.0.1/""#,
                "auth.metadata_url",
            ),
            (
                r#"gcp_metadata = true
metadata_url = "ftp://x/""#,
                "auth.metadata_url",
            ),
            (
                r#"aws_sigv4 = { service = "bedrock", region = "us east" }"#,
                "aws_sigv4.region",
            ),
            (
                r#"aws_sigv4 = { service = "bedrock", region = "us-east-1" }
header = "x""#,
                "do not apply",
            ),
            (
                r#"command = ["a"]
header = "bad header""#,
                "auth.header",
            ),
        ] {
            let e = parse(text).err().unwrap_or_default();
            assert!(e.contains(needle), "{text:?} → {e}");
        }
    }

    #[test]
    fn describe_names_the_source_not_a_token() {
        let a = parse(r#"gcp_metadata = true"#).unwrap();
        let d = a.describe().to_string();
        assert!(d.contains("metadata.google.internal"), "{d}");
        let a =
            parse(r#"aws_sigv4 = { service = "bedrock", region = "us-east-1", profile = "p" }"#)
                .unwrap();
        assert!(a.describe().to_string().contains("\"profile\":\"p\""));
    }
}
