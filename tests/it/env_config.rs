//! Config by environment (issue 14): every key of `shim.toml` set by a
//! `HOOKSHIM_<SECTION>__<KEY>…` variable (`src/config/env.rs`), through the real binary:
//! `check` shows the effective values and where each set key came from, errors name the
//! variable, every missing variable is reported at once, and `serve` listens where the
//! environment says.

use std::process::Command;
use std::time::Duration;

use serde_json::Value;

use crate::common::*;

const FILE: &str = r#"
[server]
listen = "127.0.0.1:1"

[store]
path = "{DATA}"

[upstreams.jobs]
base_url = "http://127.0.0.1:9/"
status_path = "jobs/{operation}"
status_field = "/state"
succeeded = ["done"]
failed = ["error"]
rate = { per_second = 10, burst = 10 }
headers = { X-Tenant = "alpha" }

[upstreams.openai-batch]
preset = "openai-batch"
headers = { Authorization = "" }
"#;

/// `hookshim -c <FILE> check` with only `env` from HOOKSHIM_* (and OPENAI/ANTHROPIC keys).
fn check(env: &[(&str, &str)]) -> (Option<i32>, String, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("shim.toml");
    std::fs::write(
        &path,
        FILE.replace("{DATA}", &dir.path().join("data").display().to_string()),
    )
    .unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_hookshim"));
    cmd.arg("--config").arg(&path).arg("check");
    for (k, _) in std::env::vars() {
        if k.starts_with("HOOKSHIM_") || k.ends_with("_API_KEY") || k.ends_with("_API_TOKEN") {
            cmd.env_remove(k);
        }
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

fn resolved(out: &str) -> Value {
    let end = out.rfind("\nconfig OK").unwrap();
    serde_json::from_str(&out[..end]).unwrap()
}

#[test]
fn variables_set_any_key_and_check_says_where_each_came_from() {
    let (code, out, err) = check(&[
        ("HOOKSHIM_SERVER__LISTEN", "127.0.0.1:9999"),
        ("HOOKSHIM_SERVER__MAX_CONNECTIONS", "7"),
        ("HOOKSHIM_STORE__CACHE", "2MiB"),
        (
            "HOOKSHIM_CALLBACKS__ALLOWED_HOSTS",
            r#"["127.0.0.1", "hooks.internal"]"#,
        ),
        ("HOOKSHIM_CALLBACKS__TIMEOUT", "3s"),
        ("HOOKSHIM_UPSTREAMS__JOBS__RATE__PER_SECOND", "3"),
        ("HOOKSHIM_UPSTREAMS__JOBS__POLL__STALL_POLLS", "9"),
        ("HOOKSHIM_UPSTREAMS__JOBS__HEADERS__X_TENANT", "beta"),
        ("HOOKSHIM_UPSTREAMS__OPENAI_BATCH__PROXY__ENABLED", "true"),
        ("HOOKSHIM_UPSTREAMS__REPLICATE__PRESET", "replicate"),
        (
            "HOOKSHIM_UPSTREAMS__REPLICATE__HEADERS__AUTHORIZATION",
            "Bearer r8_LiTeRaL",
        ),
        ("HOOKSHIM_LOG__FORMAT", "json"),
    ]);
    assert_eq!(code, Some(0), "{out}\n{err}");
    assert!(!out.contains("LiTeRaL"), "a credential shown:\n{out}");
    let r = resolved(&out);
    assert_eq!(r["server"]["listen"], "127.0.0.1:9999");
    assert_eq!(r["server"]["max_connections"], 7);
    assert_eq!(r["store"]["cache_bytes"], 2 << 20);
    assert_eq!(
        r["callbacks"]["allowed_hosts"],
        serde_json::json!(["127.0.0.1", "hooks.internal"])
    );
    assert_eq!(r["callbacks"]["timeout"], "3s");
    let jobs = &r["upstreams"]["jobs"];
    assert_eq!(jobs["rate"]["per_second"], 3);
    assert_eq!(jobs["rate"]["burst"], 10, "the file's other keys stay");
    assert_eq!(jobs["poll"]["stall_polls"], 9);
    assert_eq!(jobs["headers"]["X-Tenant"], "beta");
    assert_eq!(r["upstreams"]["openai-batch"]["proxy"]["enabled"], true);
    assert_eq!(r["upstreams"]["replicate"]["preset"], "replicate");
    assert_eq!(r["log"]["format"], "json");
    let origins = &r["origins"];
    for (key, from) in [
        ("server.listen", "HOOKSHIM_SERVER__LISTEN"),
        (
            "upstreams.jobs.rate.per_second",
            "HOOKSHIM_UPSTREAMS__JOBS__RATE__PER_SECOND",
        ),
        (
            "upstreams.jobs.headers.X-Tenant",
            "HOOKSHIM_UPSTREAMS__JOBS__HEADERS__X_TENANT",
        ),
        (
            "upstreams.openai-batch.proxy.enabled",
            "HOOKSHIM_UPSTREAMS__OPENAI_BATCH__PROXY__ENABLED",
        ),
        (
            "upstreams.replicate.preset",
            "HOOKSHIM_UPSTREAMS__REPLICATE__PRESET",
        ),
        ("upstreams.jobs.base_url", "file"),
        ("upstreams.jobs.rate.burst", "file"),
        ("store.path", "file"),
    ] {
        assert_eq!(origins[key], from, "{key}: {origins}");
    }
    assert!(
        origins["server.header_read_timeout"].is_null(),
        "a default is not listed: {origins}"
    );
}

#[test]
fn bad_variables_are_named_and_missing_ones_reported_at_once() {
    for (env, expected) in [
        (
            ("HOOKSHIM_SERVER__LISTN", "127.0.0.1:1"),
            "`server.listn` (set by HOOKSHIM_SERVER__LISTN): unknown field `listn`",
        ),
        (
            ("HOOKSHIM_SERVER__MAX_CONNECTIONS", "lots"),
            "`server.max_connections` (set by HOOKSHIM_SERVER__MAX_CONNECTIONS): invalid type: string \"lots\"",
        ),
        (
            ("HOOKSHIM_SERVER__LISTEN__PORT", "1"),
            "HOOKSHIM_SERVER__LISTEN__PORT: `server.listen` is a string, not a table",
        ),
        (
            ("HOOKSHIM_UPSTREAMS__JOBS__POLL__INITIAL", "soon"),
            "(set by HOOKSHIM_UPSTREAMS__JOBS__POLL__INITIAL): invalid duration \"soon\"",
        ),
        (
            ("HOOKSHIM_SERVER__LISTEN", "0.0.0.0:8680"),
            "`server.listen`: 0.0.0.0:8680 is not a loopback address and HOOKSHIM_API_TOKEN is not set",
        ),
    ] {
        let (code, out, err) = check(&[env, ("OPENAI_API_KEY", "k")]);
        assert_eq!(code, Some(2), "{env:?}: {out}\n{err}");
        assert!(
            err.contains(expected),
            "{env:?}: expected {expected:?} in\n{err}"
        );
    }
    // Variables add upstreams whose keys are missing: every missing variable at once.
    let (code, out, err) = check(&[
        ("HOOKSHIM_UPSTREAMS__CLAUDE__PRESET", "anthropic-batch"),
        ("HOOKSHIM_UPSTREAMS__REPLICATE__PRESET", "replicate"),
        (
            "HOOKSHIM_UPSTREAMS__JOBS__HEADERS__X_SIGNED",
            "${ENV_CONFIG_TEST_KEY}",
        ),
    ]);
    assert_eq!(code, Some(2), "{out}\n{err}");
    assert!(err.contains("3 environment variables are not set"), "{err}");
    for var in [
        "ANTHROPIC_API_KEY",
        "ENV_CONFIG_TEST_KEY",
        "REPLICATE_API_TOKEN",
    ] {
        assert!(
            err.contains(&format!("environment variable {var} is not set")),
            "{err}"
        );
    }
}

#[tokio::test]
async fn serve_listens_where_the_environment_says() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("shim.toml");
    std::fs::write(
        &path,
        format!(
            "[server]\nlisten = \"127.0.0.1:1\"\n[store]\npath = \"{}\"\n",
            dir.path().join("data").display()
        ),
    )
    .unwrap();
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_hookshim"));
    for (k, _) in std::env::vars() {
        if k.starts_with("HOOKSHIM_") {
            cmd.env_remove(k);
        }
    }
    let mut child = cmd
        .arg("--config")
        .arg(&path)
        .arg("serve")
        .env("HOOKSHIM_SERVER__LISTEN", format!("127.0.0.1:{port}"))
        .env("HOOKSHIM_CALLBACK_SECRET", CALLBACK_SECRET)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let http = reqwest::Client::new();
    let url = format!("http://127.0.0.1:{port}/healthz");
    let mut up = false;
    for _ in 0..1500 {
        if let Some(s) = child.try_wait().unwrap() {
            panic!("hookshim exited: {s}");
        }
        if http.get(&url).send().await.is_ok_and(|r| r.status() == 200) {
            up = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let _ = child.kill();
    let _ = child.wait();
    assert!(
        up,
        "hookshim did not listen on the port from the environment within 30s"
    );
}
