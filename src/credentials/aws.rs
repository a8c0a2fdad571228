//! AWS: the credentials (environment, shared credentials/config files with profiles and
//! `credential_process`) and SigV4 signing of a status request with AWS's own `aws-sigv4`
//! crate. The files are read with the small INI reader below rather than `aws-config`, which
//! would bring the whole SDK runtime (about 400 crates) for three keys and one command.
//!
//! The order, as the AWS SDKs look: `AWS_ACCESS_KEY_ID` + `AWS_SECRET_ACCESS_KEY` (+
//! `AWS_SESSION_TOKEN`) unless `auth.aws_sigv4.profile` names a profile; then the profile
//! (`profile`, else `AWS_PROFILE`, else `default`) in `~/.aws/credentials`
//! (`AWS_SHARED_CREDENTIALS_FILE`) over `~/.aws/config` (`AWS_CONFIG_FILE`, sections
//! `[profile name]`): static keys first, else its `credential_process` (run with `sh -c`, as
//! the SDKs do; its JSON `Expiration` says when to fetch again).

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use aws_credential_types::Credentials as AwsCredentials;
use aws_sigv4::http_request::{SignableBody, SignableRequest, SigningSettings, sign};
use aws_sigv4::sign::v4;
use reqwest::header::{HeaderName, HeaderValue};

use super::CredentialError;
use super::config::SigV4Config;

/// How environment variables are read (tests pass a map; shareable across tasks).
pub type Env<'a> = &'a (dyn Fn(&str) -> Option<String> + Sync);

/// A set of AWS credentials and, when their source says so, when they expire.
#[derive(Clone, Debug)]
pub struct AwsKeys {
    pub creds: AwsCredentials,
    pub expires: Option<SystemTime>,
    /// Where they came from (for the log: never the keys).
    pub source: String,
}

impl AwsKeys {
    pub fn new(akid: &str, secret: &str, token: Option<String>, source: &str) -> AwsKeys {
        AwsKeys {
            creds: AwsCredentials::new(akid, secret, token, None, "hookshim"),
            expires: None,
            source: source.to_string(),
        }
    }
}

/// Sign `req` (method, URL, headers, body bytes) for `service` in `region` at `time`: adds
/// `authorization`, `x-amz-date` and, with a session token, `x-amz-security-token`.
pub fn sign_request(
    req: &mut reqwest::Request,
    keys: &AwsKeys,
    service: &str,
    region: &str,
    time: SystemTime,
) -> Result<(), CredentialError> {
    let fail = |e: &dyn std::fmt::Display| CredentialError::Signing(e.to_string());
    let identity = keys.creds.clone().into();
    let params = v4::SigningParams::builder()
        .identity(&identity)
        .region(region)
        .name(service)
        .time(time)
        .settings(SigningSettings::default())
        .build()
        .map_err(|e| fail(&e))?
        .into();
    let body = match req.body() {
        None => SignableBody::Bytes(&[]),
        Some(b) => match b.as_bytes() {
            Some(bytes) => SignableBody::Bytes(bytes),
            None => SignableBody::UnsignedPayload,
        },
    };
    let mut headers = Vec::new();
    for (name, value) in req.headers() {
        let v = value
            .to_str()
            .map_err(|_| fail(&format!("header {name} is not visible ASCII")))?;
        headers.push((name.as_str(), v));
    }
    let signable = SignableRequest::new(
        req.method().as_str(),
        req.url().as_str(),
        headers.into_iter(),
        body,
    )
    .map_err(|e| fail(&e))?;
    let (instructions, _signature) = sign(signable, &params).map_err(|e| fail(&e))?.into_parts();
    let (new_headers, _params) = instructions.into_parts();
    for h in new_headers {
        let name = HeaderName::from_bytes(h.name().as_bytes()).map_err(|e| fail(&e))?;
        let mut value = HeaderValue::from_str(h.value()).map_err(|e| fail(&e))?;
        value.set_sensitive(h.sensitive() || name == reqwest::header::AUTHORIZATION);
        req.headers_mut().insert(name, value);
    }
    Ok(())
}

/// Find credentials for `cfg` (see the module docs for the order).
pub async fn load(
    cfg: &SigV4Config,
    timeout: Duration,
    env: Env<'_>,
) -> Result<AwsKeys, CredentialError> {
    if cfg.profile.is_none() {
        if let (Some(akid), Some(secret)) = (env("AWS_ACCESS_KEY_ID"), env("AWS_SECRET_ACCESS_KEY"))
        {
            return Ok(AwsKeys::new(
                &akid,
                &secret,
                env("AWS_SESSION_TOKEN"),
                "environment",
            ));
        }
    }
    let profile = cfg
        .profile
        .clone()
        .or_else(|| env("AWS_PROFILE"))
        .unwrap_or_else(|| "default".into());
    let home = env("HOME").map(PathBuf::from);
    let path = |var: &str, rel: &str| {
        env(var)
            .map(PathBuf::from)
            .or_else(|| home.as_ref().map(|h| h.join(rel)))
    };
    let creds_file = path("AWS_SHARED_CREDENTIALS_FILE", ".aws/credentials");
    let config_file = path("AWS_CONFIG_FILE", ".aws/config");
    let mut keys: HashMap<String, String> = HashMap::new();
    let mut looked = Vec::new();
    // The config file first, so that the credentials file's keys win.
    for (file, section) in [
        (&config_file, config_section(&profile)),
        (&creds_file, profile.clone()),
    ] {
        let Some(file) = file else { continue };
        looked.push(file.display().to_string());
        match tokio::fs::read_to_string(file).await {
            Ok(text) => {
                if let Some(s) = parse_ini(&text).remove(&section) {
                    keys.extend(s);
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(CredentialError::Aws(format!(
                    "cannot read {}: {e}",
                    file.display()
                )));
            }
        }
    }
    let get = |k: &str| keys.get(k).filter(|v| !v.is_empty()).cloned();
    if let (Some(akid), Some(secret)) = (get("aws_access_key_id"), get("aws_secret_access_key")) {
        return Ok(AwsKeys::new(
            &akid,
            &secret,
            get("aws_session_token"),
            &format!("profile {profile}"),
        ));
    }
    if let Some(cmd) = get("credential_process") {
        return credential_process(&cmd, &profile, timeout).await;
    }
    Err(CredentialError::Aws(format!(
        "no credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or give profile \
         {profile:?} aws_access_key_id/aws_secret_access_key or credential_process in {}",
        looked.join(" or ")
    )))
}

/// The config file's section name for a profile.
fn config_section(profile: &str) -> String {
    if profile == "default" {
        "default".into()
    } else {
        format!("profile {profile}")
    }
}

/// Run a `credential_process` and read its JSON (`Version` 1).
async fn credential_process(
    cmd: &str,
    profile: &str,
    timeout: Duration,
) -> Result<AwsKeys, CredentialError> {
    let argv = ["sh".to_string(), "-c".to_string(), cmd.to_string()];
    let out = super::token::run_command(&argv, timeout)
        .await
        .map_err(|e| match e {
            CredentialError::Command { reason, .. } => {
                CredentialError::Aws(format!("credential_process of profile {profile} {reason}"))
            }
            e => e,
        })?;
    #[derive(serde::Deserialize)]
    #[serde(rename_all = "PascalCase")]
    struct Output {
        version: u32,
        access_key_id: String,
        secret_access_key: String,
        session_token: Option<String>,
        expiration: Option<String>,
    }
    let fail = |reason: String| {
        CredentialError::Aws(format!("credential_process of profile {profile}: {reason}"))
    };
    let o: Output = serde_json::from_str(&out).map_err(|e| {
        fail(format!(
            "output is not {{\"Version\": 1, \"AccessKeyId\", \"SecretAccessKey\", …}} ({e})"
        ))
    })?;
    if o.version != 1 {
        return Err(fail(format!("Version {} is not 1", o.version)));
    }
    let expires = match o.expiration.as_deref() {
        None => None,
        Some(text) => Some(parse_expiration(text).ok_or_else(|| {
            fail(format!(
                "Expiration {text:?} is not an RFC 3339 time like \"2026-11-30T12:00:00Z\""
            ))
        })?),
    };
    let mut keys = AwsKeys::new(
        &o.access_key_id,
        &o.secret_access_key,
        o.session_token,
        &format!("credential_process of profile {profile}"),
    );
    keys.expires = expires;
    Ok(keys)
}

fn parse_expiration(text: &str) -> Option<SystemTime> {
    let t = text.trim();
    let t = t
        .strip_suffix("+00:00")
        .map(|s| format!("{s}Z"))
        .unwrap_or_else(|| t.to_string());
    humantime::parse_rfc3339_weak(&t).ok()
}

/// A small INI reader for the AWS shared files: `[section]`, `key = value`, `#`/`;` comment
/// lines; indented lines (sub-properties such as `s3 =` blocks) are skipped.
pub fn parse_ini(text: &str) -> HashMap<String, HashMap<String, String>> {
    let mut out: HashMap<String, HashMap<String, String>> = HashMap::new();
    let mut section: Option<String> = None;
    for line in text.lines() {
        if line.starts_with([' ', '\t']) {
            continue;
        }
        let l = line.trim();
        if l.is_empty() || l.starts_with('#') || l.starts_with(';') {
            continue;
        }
        if let Some(name) = l.strip_prefix('[').and_then(|r| r.strip_suffix(']')) {
            let name = name.split_whitespace().collect::<Vec<_>>().join(" ");
            section = Some(name);
            continue;
        }
        if let (Some(s), Some((k, v))) = (&section, l.split_once('=')) {
            out.entry(s.clone())
                .or_default()
                .insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(profile: Option<&str>) -> SigV4Config {
        SigV4Config {
            service: "bedrock".into(),
            region: "us-east-1".into(),
            profile: profile.map(str::to_string),
            refresh: Duration::from_secs(300),
            env: Default::default(),
        }
    }

    #[test]
    fn ini_sections_keys_comments_and_subproperties() {
        let ini = parse_ini(
            "# c\n[default]\naws_access_key_id = AK\n; c\n[profile  dev]\nregion=eu\ns3 =\n  max = 1\nCredential_Process = x --y\n",
        );
        assert_eq!(ini["default"]["aws_access_key_id"], "AK");
        assert_eq!(ini["profile dev"]["credential_process"], "x --y");
        assert!(!ini["profile dev"].contains_key("max"));
    }

    #[tokio::test]
    async fn environment_then_profile_files_then_credential_process() {
        let dir = tempfile::tempdir().unwrap();
        let home = dir.path().to_path_buf();
        std::fs::create_dir_all(home.join(".aws")).unwrap();
        std::fs::write(
            home.join(".aws/credentials"),
            "[default]\naws_access_key_id = FILEKEY\naws_secret_access_key = s\n",
        )
        .unwrap();
        std::fs::write(
            home.join(".aws/config"),
            "[profile proc]\ncredential_process = printf '{\"Version\":1,\"AccessKeyId\":\"PROCKEY\",\"SecretAccessKey\":\"s\",\"SessionToken\":\"t\",\"Expiration\":\"2030-01-01T00:00:00Z\"}'\n",
        )
        .unwrap();
        let h = home.display().to_string();
        let with = |vars: Vec<(&'static str, String)>| {
            move |k: &str| vars.iter().find(|(n, _)| *n == k).map(|(_, v)| v.clone())
        };
        let env = with(vec![
            ("HOME", h.clone()),
            ("AWS_ACCESS_KEY_ID", "ENVKEY".into()),
            ("AWS_SECRET_ACCESS_KEY", "s".into()),
        ]);
        let k = load(&cfg(None), Duration::from_secs(5), &env)
            .await
            .unwrap();
        assert_eq!(k.creds.access_key_id(), "ENVKEY");
        // A profile named in the config skips the environment.
        let k = load(&cfg(Some("default")), Duration::from_secs(5), &env)
            .await
            .unwrap();
        assert_eq!(k.creds.access_key_id(), "FILEKEY");
        let env = with(vec![("HOME", h.clone()), ("AWS_PROFILE", "proc".into())]);
        let k = load(&cfg(None), Duration::from_secs(5), &env)
            .await
            .unwrap();
        assert_eq!(k.creds.access_key_id(), "PROCKEY");
        assert_eq!(k.creds.session_token(), Some("t"));
        assert_eq!(
            k.expires,
            Some(humantime::parse_rfc3339("2030-01-01T00:00:00Z").unwrap())
        );
        let env = with(vec![("HOME", h), ("AWS_PROFILE", "nobody".into())]);
        let e = load(&cfg(None), Duration::from_secs(5), &env)
            .await
            .err()
            .unwrap()
            .to_string();
        assert!(
            e.contains("\"nobody\"") && e.contains("AWS_ACCESS_KEY_ID"),
            "{e}"
        );
    }

    /// AWS's SigV4 test suite (awslabs/aws-c-auth `tests/aws-signing-test-suite/v4`, as shipped
    /// in the `aws-sigv4` crate; see tests/data/sigv4/README.md): sign the vector's request
    /// with its credentials and time; the Authorization header must match exactly.
    #[test]
    fn signs_the_published_sigv4_test_vectors() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/sigv4");
        let mut seen = 0;
        for entry in std::fs::read_dir(&root).unwrap() {
            let dir = entry.unwrap().path();
            if !dir.is_dir() {
                continue;
            }
            seen += 1;
            let ctx: serde_json::Value =
                serde_json::from_str(&std::fs::read_to_string(dir.join("context.json")).unwrap())
                    .unwrap();
            let c = &ctx["credentials"];
            let keys = AwsKeys::new(
                c["access_key_id"].as_str().unwrap(),
                c["secret_access_key"].as_str().unwrap(),
                c["token"].as_str().map(str::to_string),
                "vector",
            );
            let time = humantime::parse_rfc3339(ctx["timestamp"].as_str().unwrap()).unwrap();
            let raw = std::fs::read_to_string(dir.join("request.txt")).unwrap();
            let (head, body) = raw.split_once("\n\n").unwrap_or((&raw, ""));
            let mut lines = head.lines();
            let start = lines.next().unwrap();
            let mut parts = start.split(' ');
            let (method, target) = (parts.next().unwrap(), parts.next().unwrap());
            let mut host = String::new();
            let mut headers = Vec::new();
            for l in lines {
                let (k, v) = l.split_once(':').unwrap();
                if k.eq_ignore_ascii_case("host") {
                    host = v.to_string();
                } else if !k.eq_ignore_ascii_case("x-amz-date") {
                    headers.push((k.to_string(), v.to_string()));
                }
            }
            let url = reqwest::Url::parse(&format!("https://{host}{target}")).unwrap();
            let mut req = reqwest::Request::new(method.parse().unwrap(), url);
            for (k, v) in headers {
                req.headers_mut().append(
                    HeaderName::from_bytes(k.as_bytes()).unwrap(),
                    HeaderValue::from_str(&v).unwrap(),
                );
            }
            if !body.is_empty() {
                *req.body_mut() = Some(body.to_string().into());
            }
            sign_request(
                &mut req,
                &keys,
                ctx["service"].as_str().unwrap(),
                ctx["region"].as_str().unwrap(),
                time,
            )
            .unwrap();
            let signed = std::fs::read_to_string(dir.join("header-signed-request.txt")).unwrap();
            let want = signed
                .lines()
                .find_map(|l| l.strip_prefix("Authorization:"))
                .unwrap();
            assert_eq!(
                req.headers()["authorization"].to_str().unwrap(),
                want,
                "{}",
                dir.display()
            );
        }
        assert!(seen >= 3, "vectors missing under {}", root.display());
    }
}
