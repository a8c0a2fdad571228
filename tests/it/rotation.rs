//! Outbound secret rotation (issue 14): the real binary signs each callback once per secret in
//! use (`callbacks.previous_secrets` next to the current one) and, with
//! `callbacks.signing_key_env`, once with Ed25519 (`v1a`); a SIGHUP re-reads the key files.
//!
//! The receiver is a fake that keeps the raw body and headers; the verdicts come from the real
//! `standardwebhooks` Python library (`Webhook(secret).verify`, pinned in
//! `tests/sdk/requirements.txt`; `v1` entries only: its `webhooks.py` skips other versions) and,
//! for `v1a`, from `cryptography`'s Ed25519 (`Ed25519PublicKey.verify`), with the public key
//! `hookshim check` prints. The signed content is Standard Webhooks' `{id}.{timestamp}.{body}`
//! (https://github.com/standard-webhooks/standard-webhooks/blob/main/spec/standard-webhooks.md,
//! "Signature scheme"). Without `HOOKSHIM_SDK_PYTHON` the Python verdicts are skipped (said on
//! stderr), except under `CI=true`, where that is a failure; the Rust checks still run.

use std::io::Write;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::http::HeaderMap;
use axum::routing::post;
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use serde_json::{Value, json};

use crate::common::*;

/// One callback as the receiver saw it.
#[derive(Clone, Debug)]
struct Seen {
    body: String,
    headers: Value,
}

/// A receiver that answers 204 and keeps every callback's raw body and webhook headers.
async fn raw_receiver() -> (String, Arc<Mutex<Vec<Seen>>>) {
    let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
    let keep = seen.clone();
    let router = Router::new().route(
        "/callback",
        post(move |headers: HeaderMap, body: Bytes| {
            let keep = keep.clone();
            async move {
                let h = |n: &str| {
                    headers
                        .get(n)
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("")
                        .to_string()
                };
                keep.lock().unwrap().push(Seen {
                    body: String::from_utf8_lossy(&body).into_owned(),
                    headers: json!({
                        "webhook-id": h("webhook-id"),
                        "webhook-timestamp": h("webhook-timestamp"),
                        "webhook-signature": h("webhook-signature"),
                    }),
                });
                axum::http::StatusCode::NO_CONTENT
            }
        }),
    );
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(l, router).await });
    (format!("http://{addr}"), seen)
}

fn whsec(bytes: &[u8]) -> String {
    format!("whsec_{}", B64.encode(bytes))
}

const CONFIG: &str = r#"
[server]
listen = "127.0.0.1:{PORT}"

[store]
path = "{DATA}"

[callbacks]
default_url = "{RECV}/callback"
retry_schedule = ["100ms"]
signing_key_env = "ROTATION_SIGNING_KEY"
secret_file = "{DIR}/old.whsec"

[upstreams.jobs]
base_url = "{UP}/"
status_path = "jobs/{operation}"
status_field = "/state"
succeeded = ["done"]
failed = ["error"]
poll = { initial = "50ms", max = "200ms" }
"#;

/// The Python verdicts on one callback: `{"old": bool, "new": bool, "third": bool,
/// "ed25519": bool, "ed25519_tampered": bool}`.
fn python_verdicts(python: &std::ffi::OsStr, seen: &Seen, secrets: &Value, public: &str) -> Value {
    const SCRIPT: &str = r#"
import base64, json, sys
from standardwebhooks.webhooks import Webhook
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.exceptions import InvalidSignature
case = json.load(sys.stdin)
body, headers = case["body"], case["headers"]
out = {}
for name, secret in case["secrets"].items():
    try:
        Webhook(secret).verify(body, headers)
        out[name] = True
    except Exception:
        out[name] = False
assert case["public_key"].startswith("whpk_")
key = Ed25519PublicKey.from_public_bytes(base64.b64decode(case["public_key"][5:]))
signed = "%s.%s.%s" % (headers["webhook-id"], headers["webhook-timestamp"], body)
def ed(msg):
    for entry in headers["webhook-signature"].split(" "):
        version, sig = entry.split(",", 1)
        if version != "v1a":
            continue
        try:
            key.verify(base64.b64decode(sig), msg.encode())
            return True
        except InvalidSignature:
            pass
    return False
out["ed25519"] = ed(signed)
out["ed25519_tampered"] = ed(signed + " ")
print(json.dumps(out))
"#;
    let mut child = Command::new(python)
        .arg("-c")
        .arg(SCRIPT)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("could not run {python:?}: {e}"));
    let case = json!({"body": seen.body, "headers": seen.headers, "secrets": secrets, "public_key": public});
    child
        .stdin
        .take()
        .unwrap()
        .write_all(case.to_string().as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "the verifying script failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn python() -> Option<std::ffi::OsString> {
    match std::env::var_os("HOOKSHIM_SDK_PYTHON") {
        Some(p) => Some(p),
        None if std::env::var("CI").is_ok_and(|v| v == "true") => panic!(
            "HOOKSHIM_SDK_PYTHON is not set but CI=true: the standardwebhooks check must run in \
             CI; run `bash .ci/run`"
        ),
        None => {
            let _ = writeln!(
                std::io::stderr(),
                "rotation: the standardwebhooks (Python) verdicts are skipped: set HOOKSHIM_SDK_PYTHON (bash .ci/run does)"
            );
            None
        }
    }
}

/// `hookshim -c <config> check` with `env`; its stdout's JSON.
fn check(config: &std::path::Path, env: &[(&str, &str)]) -> Value {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_hookshim"));
    cmd.arg("--config")
        .arg(config)
        .arg("check")
        .env_remove("HOOKSHIM_CALLBACK_SECRET")
        .env_remove("HOOKSHIM_CONFIG");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "check failed: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let end = stdout.rfind("\nconfig OK").unwrap();
    serde_json::from_str(&stdout[..end]).unwrap()
}

/// Entries of a `webhook-signature` value by version.
fn versions(seen: &Seen) -> Vec<String> {
    seen.headers["webhook-signature"]
        .as_str()
        .unwrap()
        .split(' ')
        .map(|e| e.split(',').next().unwrap().to_string())
        .collect()
}

#[tokio::test]
async fn callbacks_carry_a_signature_per_active_secret_and_v1a_and_sighup_rotates_them() {
    let up = FakeUpstream::start().await;
    let (recv, seen) = raw_receiver().await;
    let setup = ProcSetup::new(&CONFIG.replace("{UP}", &up.url).replace("{RECV}", &recv));
    let dir = setup.dir.path().to_path_buf();
    let old = whsec(b"the old callback secret, 32 byte");
    let new = whsec(b"the new callback secret, 32 byte");
    let third = whsec(b"a secret nobody configured, 32 b");
    // RFC 8032, 7.1, test 2's seed, as Standard Webhooks writes a signing key.
    let seed =
        hex::decode("4ccd089b28ff96da9db6c346ec114e0f5b8a319f35aba624da8cf6ed4fb8a6fb").unwrap();
    let signing_key = format!("whsk_{}", B64.encode(&seed));
    std::fs::write(dir.join("old.whsec"), format!("{old}\n")).unwrap();
    std::fs::write(dir.join("new.whsec"), &new).unwrap();
    let env = [("ROTATION_SIGNING_KEY", signing_key.as_str())];

    // `check` names where each key comes from, shows the public key, and no secret.
    let shown = check(&setup.config, &env);
    let text = shown.to_string();
    for secret in [&old, &new, &signing_key] {
        assert!(!text.contains(&secret[6..]), "a secret is shown: {text}");
    }
    let cb = &shown["callbacks"];
    assert_eq!(
        cb["secret"],
        format!("<redacted, from file {}/old.whsec>", dir.display())
    );
    assert_eq!(
        cb["signing_key"]["from"],
        "environment variable ROTATION_SIGNING_KEY"
    );
    let public = cb["signing_key"]["public_key"]
        .as_str()
        .unwrap()
        .to_string();
    // RFC 8032, 7.1, test 2's public key.
    assert_eq!(
        public,
        format!(
            "whpk_{}",
            B64.encode(
                hex::decode("3d4017c3e843895a92b70aa74d1b7ebc9c982ccf2ec4968cc0cd55f12af4660c")
                    .unwrap()
            )
        )
    );

    let err = dir.join("serve.stderr");
    let mut child = Command::new(env!("CARGO_BIN_EXE_hookshim"))
        .arg("--config")
        .arg(&setup.config)
        .arg("serve")
        .env_remove("HOOKSHIM_CALLBACK_SECRET")
        .env_remove("HOOKSHIM_API_TOKEN")
        .env_remove("HOOKSHIM_CONFIG")
        .env_remove("HOOKSHIM_LOG_FORMAT")
        .env("HOOKSHIM_LOG", "info")
        .env("ROTATION_SIGNING_KEY", &signing_key)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&err).unwrap())
        .spawn()
        .unwrap();
    let guard = KillOnDrop(&mut child);
    let http = reqwest::Client::new();
    let log = || std::fs::read_to_string(&err).unwrap_or_default();
    eventually(Duration::from_secs(30), "hookshim to listen", || async {
        http.get(format!("{}/healthz", setup.url))
            .send()
            .await
            .ok()
            .filter(|r| r.status() == 200)
            .map(|_| ())
    })
    .await;
    let callback_for = |name: &'static str| {
        let (http, url, seen) = (http.clone(), setup.url.clone(), seen.clone());
        let up = &up;
        async move {
            up.set(&format!("jobs/{name}"), json!({"state": "done"}));
            let r = http
                .post(format!("{url}/v1/operations"))
                .json(&json!({"upstream": "jobs", "operation": name}))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 201);
            let id = r.json::<Value>().await.unwrap()["id"]
                .as_str()
                .unwrap()
                .to_string();
            eventually(Duration::from_secs(20), "the callback", || async {
                seen.lock()
                    .unwrap()
                    .iter()
                    .find(|s| s.body.contains(&id))
                    .cloned()
            })
            .await
        }
    };
    let secrets = json!({"old": old, "new": new, "third": third});

    // Before the rotation: one v1 entry (the old secret) and one v1a entry.
    let before = callback_for("before").await;
    assert_eq!(versions(&before), ["v1", "v1a"], "{before:?}");

    // Rotate: the new secret is current, the old one previous; SIGHUP re-reads the files.
    let written = std::fs::read_to_string(&setup.config).unwrap();
    let rotated = written.replace(
        &format!("secret_file = \"{}/old.whsec\"", dir.display()),
        &format!(
            "secret_file = \"{d}/new.whsec\"\nprevious_secrets = [{{ file = \"{d}/old.whsec\" }}]",
            d = dir.display()
        ),
    );
    assert_ne!(rotated, written);
    std::fs::write(&setup.config, &rotated).unwrap();
    signal(guard.0, "HUP");
    eventually(Duration::from_secs(10), "the reload", || async {
        log().contains("SIGHUP: config reloaded").then_some(())
    })
    .await;
    let reloaded = log()
        .lines()
        .find(|l| l.contains("SIGHUP: config reloaded"))
        .unwrap()
        .to_string();
    assert!(reloaded.contains("callback signing keys"), "{}", log());
    assert!(reloaded.contains("callbacks.previous_secrets"), "{}", log());
    assert!(!log().contains("need a restart"), "{}", log());
    let during = callback_for("during").await;
    assert_eq!(versions(&during), ["v1", "v1", "v1a"], "{during:?}");

    // The overlap ends: only the new secret.
    std::fs::write(
        &setup.config,
        rotated.replace(
            &format!(
                "previous_secrets = [{{ file = \"{}/old.whsec\" }}]",
                dir.display()
            ),
            "",
        ),
    )
    .unwrap();
    signal(guard.0, "HUP");
    eventually(Duration::from_secs(10), "the second reload", || async {
        (log().matches("SIGHUP: config reloaded").count() == 2).then_some(())
    })
    .await;
    let after = callback_for("after").await;
    assert_eq!(versions(&after), ["v1", "v1a"], "{after:?}");

    // No secret in the log; the public key is there for receivers.
    let text = log();
    for secret in [&old, &new, &signing_key] {
        assert!(
            !text.contains(&secret[6..]),
            "a secret is in the log:\n{text}"
        );
    }
    assert!(text.contains(&public), "{text}");

    if let Some(python) = python() {
        let verdicts = |s: &Seen| python_verdicts(&python, s, &secrets, &public);
        let v = verdicts(&before);
        assert_eq!(
            v,
            json!({"old": true, "new": false, "third": false, "ed25519": true, "ed25519_tampered": false}),
            "before the rotation"
        );
        let v = verdicts(&during);
        assert_eq!(
            v,
            json!({"old": true, "new": true, "third": false, "ed25519": true, "ed25519_tampered": false}),
            "during the overlap: old and new receivers both verify"
        );
        let v = verdicts(&after);
        assert_eq!(
            v,
            json!({"old": false, "new": true, "third": false, "ed25519": true, "ed25519_tampered": false}),
            "after the overlap"
        );
    }
    signal(guard.0, "TERM");
    assert_eq!(guard.0.wait().unwrap().code(), Some(0));
}

/// Environment variables for one case.
type Env<'a> = &'a [(&'a str, &'a str)];

#[test]
fn bad_callback_keys_name_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().display().to_string();
    std::fs::write(dir.path().join("empty"), "\n").unwrap();
    std::fs::write(dir.path().join("plain"), "not a whsec").unwrap();
    let cases: &[(&str, Env, &str)] = &[
        (
            "secret_file = \"{D}/missing\"",
            &[],
            "`callbacks.secret_file`: cannot read {D}/missing",
        ),
        (
            "secret_file = \"{D}/empty\"",
            &[],
            "`callbacks.secret_file`: {D}/empty is empty",
        ),
        (
            "secret_file = \"{D}/plain\"",
            &[],
            "`callbacks.secret_file`: the content of {D}/plain must start with \"whsec_\"",
        ),
        (
            "secret_file = \"{D}/plain\"",
            &[("HOOKSHIM_CALLBACK_SECRET", CALLBACK_SECRET)],
            "`callbacks.secret_file`: HOOKSHIM_CALLBACK_SECRET is set too",
        ),
        (
            "previous_secrets = [{ env = \"ROT_OLD\", file = \"{D}/plain\" }]",
            &[],
            "`callbacks.previous_secrets[0]`: write exactly one of `env`",
        ),
        (
            "previous_secrets = [{ env = \"ROT_OLD\" }]",
            &[],
            "`callbacks.previous_secrets[0].env`: environment variable ROT_OLD is not set",
        ),
        (
            "previous_secrets = [{ env = \"ROT_OLD\", until = \"soon\" }]",
            &[("ROT_OLD", CALLBACK_SECRET)],
            "invalid RFC 3339 time \"soon\"",
        ),
        (
            "signing_key_env = \"ROT_KEY\"",
            &[("ROT_KEY", "whpk_AAAA")],
            "`callbacks.signing_key_env`: the value of environment variable ROT_KEY is an Ed25519 public key",
        ),
        (
            "signing_key_env = \"ROT_KEY\"",
            &[("ROT_KEY", "whsk_AAAA")],
            "is 3 bytes after \"whsk_\"",
        ),
    ];
    for (line, env, expected) in cases {
        let config = dir.path().join("shim.toml");
        std::fs::write(
            &config,
            format!("[callbacks]\n{}\n", line.replace("{D}", &d)),
        )
        .unwrap();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_hookshim"));
        cmd.arg("--config")
            .arg(&config)
            .arg("check")
            .env_remove("HOOKSHIM_CALLBACK_SECRET")
            .env_remove("HOOKSHIM_CONFIG");
        for (k, v) in *env {
            cmd.env(k, v);
        }
        let out = cmd.output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{line}: {stderr}");
        let expected = expected.replace("{D}", &d);
        assert!(
            stderr.contains(&expected),
            "{line}: expected {expected:?} in\n{stderr}"
        );
    }
}

struct KillOnDrop<'a>(&'a mut std::process::Child);

impl Drop for KillOnDrop<'_> {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

fn signal(child: &std::process::Child, sig: &str) {
    let status = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(child.id().to_string())
        .status()
        .expect("run kill");
    assert!(status.success(), "kill -{sig} failed");
}

#[test]
fn check_warns_of_a_previous_secret_past_its_until() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("shim.toml");
    std::fs::write(
        &config,
        "[callbacks]\nprevious_secrets = [{ env = \"ROT_OLD\", until = \"2001-01-01T00:00:00Z\" }, { env = \"ROT_OLDER\" }]\n",
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_hookshim"))
        .arg("--config")
        .arg(&config)
        .arg("check")
        .env_remove("HOOKSHIM_CALLBACK_SECRET")
        .env_remove("HOOKSHIM_CONFIG")
        .env("ROT_OLD", CALLBACK_SECRET)
        .env("ROT_OLDER", PUSHY_SECRET)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{stderr}");
    assert!(
        stderr.contains("warning: `callbacks.previous_secrets[0]`: until 2001-01-01T00:00:00.000Z has passed; callbacks are no longer signed with the secret in environment variable ROT_OLD (remove the entry)"),
        "{stderr}"
    );
    assert!(!stderr.contains("previous_secrets[1]"), "{stderr}");
    for secret in [CALLBACK_SECRET, PUSHY_SECRET] {
        assert!(!stdout.contains(&secret[6..]), "{stdout}");
    }
    assert!(
        stdout.contains("\"from\": \"environment variable ROT_OLDER\""),
        "{stdout}"
    );
}
