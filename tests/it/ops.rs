//! Operating hookshim (issue 14): `/metrics` read by the official Prometheus parsers in both
//! formats, series present from start, delivery gauges kept across a restart.
//!
//! The parsers are Python's `prometheus_client` (pinned in `tests/sdk/requirements.txt`), run
//! from the venv `HOOKSHIM_SDK_PYTHON` names (`bash .ci/run` sets it). Without it the parser
//! check says it is skipped, except under `CI=true`, where that is a failure.

use std::io::Write;
use std::process::Command;
use std::time::Duration;

use crate::common::*;
use serde_json::{Value, json};

/// The Python interpreter with `prometheus_client`, or `None` (skipped, said on stderr).
fn python(test: &str) -> Option<std::ffi::OsString> {
    match std::env::var_os("HOOKSHIM_SDK_PYTHON") {
        Some(p) => Some(p),
        None if std::env::var("CI").is_ok_and(|v| v == "true") => panic!(
            "HOOKSHIM_SDK_PYTHON is not set but CI=true: the Prometheus parser check must run in \
             CI; run `bash .ci/run`, which creates the venv from tests/sdk/requirements.txt and \
             exports HOOKSHIM_SDK_PYTHON=<venv>/bin/python"
        ),
        None => {
            let _ = writeln!(
                std::io::stderr(),
                "ops::{test} skipped the Prometheus parser check: set HOOKSHIM_SDK_PYTHON (bash .ci/run does)"
            );
            None
        }
    }
}

/// Parse `text` with `prometheus_client`'s parser for `format` (`text` = 0.0.4, `openmetrics`);
/// answers `{family: {"type": t, "samples": [[name, labels, value], ...]}}`.
fn parse_with_python(python: &std::ffi::OsStr, format: &str, text: &str) -> Value {
    const SCRIPT: &str = r#"
import json, sys
fmt = sys.argv[1]
if fmt == "openmetrics":
    from prometheus_client.openmetrics.parser import text_string_to_metric_families
else:
    from prometheus_client.parser import text_string_to_metric_families
out = {}
for f in text_string_to_metric_families(sys.stdin.read()):
    if f.name in out:
        raise SystemExit("family %s twice" % f.name)
    out[f.name] = {"type": f.type, "samples": [[s.name, s.labels, s.value] for s in f.samples]}
print(json.dumps(out))
"#;
    let mut child = Command::new(python)
        .arg("-c")
        .arg(SCRIPT)
        .arg(format)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("could not run {python:?}: {e}"));
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "the {format} parser refused /metrics: {}\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

async fn scrape(shim: &TestShim, accept: Option<&str>) -> (String, String) {
    let mut req = shim.http.get(format!("{}/metrics", shim.url));
    if let Some(a) = accept {
        req = req.header("accept", a);
    }
    let resp = req.send().await.unwrap();
    let ct = resp.headers()["content-type"].to_str().unwrap().to_string();
    (ct, resp.text().await.unwrap())
}

/// The value of the sample `name` with exactly `labels` in parsed families.
fn sample(families: &Value, family: &str, name: &str, labels: Value) -> Option<f64> {
    families[family]["samples"]
        .as_array()?
        .iter()
        .find(|s| s[0] == name && s[1] == labels)
        .and_then(|s| s[2].as_f64())
}

/// A sample line's value in the text, for the checks that need no parser.
fn line_value(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

#[tokio::test]
async fn metrics_negotiate_the_format_and_parse_with_the_official_parsers() {
    let up = FakeUpstream::start().await;
    let recv = Receiver::start().await;
    let mut shim = TestShim::start(CONFIG, &up, &recv).await;

    // From start: classic text by default, every bounded series at zero.
    let (ct, text) = scrape(&shim, None).await;
    assert_eq!(ct, "text/plain; version=0.0.4; charset=utf-8");
    assert!(!text.contains("# EOF"), "{text}");
    assert!(
        text.contains("# TYPE hookshim_operations_completed_total counter\n"),
        "{text}"
    );
    for series in [
        r#"hookshim_operations_registered_total{upstream="jobs"}"#,
        r#"hookshim_operations_active{upstream="jobs"}"#,
        r#"hookshim_operations_completed_total{upstream="jobs",status="succeeded",detected_via="poll"}"#,
        r#"hookshim_upstream_requests_total{upstream="jobs",outcome="rate_limited"}"#,
        r#"hookshim_webhooks_received_total{upstream="jobs",result="accepted"}"#,
        r#"hookshim_callback_attempts_total{result="gone"}"#,
        r#"hookshim_callbacks{state="pending"}"#,
        r#"hookshim_callbacks{state="failed"}"#,
        r#"hookshim_operation_end_to_end_seconds_count"#,
    ] {
        assert_eq!(line_value(&text, series), Some(0.0), "{series}:\n{text}");
    }
    // The latency histograms reach hours.
    assert!(
        text.contains(r#"hookshim_callback_delivery_latency_seconds_bucket{le="41943.04"} 0"#),
        "{text}"
    );

    // One callback delivered, one failed for good (410).
    up.set("jobs/ok", json!({"state": "done"}));
    up.set("jobs/gone", json!({"state": "done"}));
    let (code, ok) = shim
        .register(json!({"upstream": "jobs", "operation": "ok"}))
        .await;
    assert_eq!(code, 201, "{ok}");
    wait_calls(&recv, &id_of(&ok), 1).await;
    recv.set_default(Behaviour::Status(410));
    let (code, gone) = shim
        .register(json!({"upstream": "jobs", "operation": "gone"}))
        .await;
    assert_eq!(code, 201, "{gone}");
    let gone_id = id_of(&gone);
    eventually(Duration::from_secs(10), "delivery failed", || async {
        (shim.op(&gone_id).await["delivery"]["state"] == "failed").then_some(())
    })
    .await;

    let (_, text) = scrape(&shim, None).await;
    assert_eq!(
        line_value(&text, r#"hookshim_callbacks{state="failed"}"#),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        line_value(&text, "hookshim_operation_end_to_end_seconds_count"),
        Some(1.0),
        "{text}"
    );
    let (ct, om) = scrape(
        &shim,
        // What Prometheus sends.
        Some("application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1"),
    )
    .await;
    assert_eq!(
        ct,
        "application/openmetrics-text; version=1.0.0; charset=utf-8"
    );
    assert!(om.ends_with("# EOF\n"), "{om}");

    if let Some(python) = python("metrics_negotiate_the_format_and_parse_with_the_official_parsers")
    {
        for (format, body) in [("text", &text), ("openmetrics", &om)] {
            let families = parse_with_python(&python, format, body);
            for (family, kind) in [
                ("hookshim_operations_registered", "counter"),
                ("hookshim_operations_completed", "counter"),
                ("hookshim_callback_attempts", "counter"),
                ("hookshim_webhooks_received", "counter"),
                ("hookshim_upstream_requests", "counter"),
                ("hookshim_operations_active", "gauge"),
                ("hookshim_callbacks", "gauge"),
                ("hookshim_upstream_rate_limit", "gauge"),
                ("hookshim_callback_delivery_latency_seconds", "histogram"),
                ("hookshim_operation_end_to_end_seconds", "histogram"),
            ] {
                assert_eq!(
                    families[family]["type"], kind,
                    "{format}: {family} is not a {kind}: {}",
                    families[family]
                );
            }
            assert!(
                families
                    .as_object()
                    .unwrap()
                    .values()
                    .all(|f| f["type"] != "unknown"),
                "{format}: an untyped family: {families}"
            );
            assert_eq!(
                sample(
                    &families,
                    "hookshim_callback_attempts",
                    "hookshim_callback_attempts_total",
                    json!({"result": "gone"})
                ),
                Some(1.0),
                "{format}: {families}"
            );
            assert_eq!(
                sample(
                    &families,
                    "hookshim_callbacks",
                    "hookshim_callbacks",
                    json!({"state": "failed"})
                ),
                Some(1.0),
                "{format}"
            );
        }
    }

    // Rebuilt from the store at start.
    shim.restart().await;
    let (_, text) = scrape(&shim, None).await;
    assert_eq!(
        line_value(&text, r#"hookshim_callbacks{state="failed"}"#),
        Some(1.0),
        "{text}"
    );
    // A redelivery takes it out of the failed count.
    recv.set_default(Behaviour::Status(200));
    let (code, body) = shim
        .post(&format!("/v1/operations/{gone_id}/redeliver"), &json!({}))
        .await;
    assert!(code < 300, "{code} {body}");
    eventually(Duration::from_secs(10), "redelivered", || async {
        (shim.op(&gone_id).await["delivery"]["state"] == "delivered").then_some(())
    })
    .await;
    let (_, text) = scrape(&shim, None).await;
    assert_eq!(
        line_value(&text, r#"hookshim_callbacks{state="failed"}"#),
        Some(0.0),
        "{text}"
    );
}

const PROC_CONFIG: &str = proc_config!("", "", "");

/// The real binary with `env`, stderr to a file in the temp dir.
fn spawn(setup: &ProcSetup, env: &[(&str, &str)]) -> (std::process::Child, std::path::PathBuf) {
    let err = setup.dir.path().join("serve.stderr");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_hookshim"));
    cmd.arg("--config")
        .arg(&setup.config)
        .arg("serve")
        .env_remove("HOOKSHIM_API_TOKEN")
        .env_remove("HOOKSHIM_CONFIG")
        .env_remove("HOOKSHIM_LOG")
        .env_remove("HOOKSHIM_LOG_FORMAT")
        .env("HOOKSHIM_CALLBACK_SECRET", CALLBACK_SECRET)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&err).unwrap());
    for (k, v) in env {
        cmd.env(k, v);
    }
    (cmd.spawn().expect("start the hookshim binary"), err)
}

async fn wait_up(http: &reqwest::Client, url: &str) {
    eventually(Duration::from_secs(20), "hookshim to listen", || async {
        http.get(format!("{url}/healthz"))
            .send()
            .await
            .ok()
            .filter(|r| r.status() == 200)
            .map(|_| ())
    })
    .await;
}

fn signal(child: &std::process::Child, sig: &str) {
    let status = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(child.id().to_string())
        .status()
        .expect("run kill");
    assert!(status.success(), "kill -{sig} failed");
}

/// Every line of `path` as JSON (panics naming the first line that is not).
fn json_lines(path: &std::path::Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).unwrap();
    text.lines()
        .map(|l| {
            serde_json::from_str(l).unwrap_or_else(|e| panic!("not a JSON line ({e}): {l}\n{text}"))
        })
        .collect()
}

fn access_lines(lines: &[Value]) -> Vec<&Value> {
    lines
        .iter()
        .filter(|l| l["target"] == "hookshim::access")
        .collect()
}

#[tokio::test]
async fn json_logs_one_access_line_per_request_and_no_sled() {
    let up = FakeUpstream::start().await;
    let recv = Receiver::start().await;
    let setup = ProcSetup::new(
        &PROC_CONFIG
            .replace("{UP}", &up.url)
            .replace("{RECV}", &recv.url),
    );
    // `debug` would show sled's internals if they were not off.
    let (mut child, err) = spawn(
        &setup,
        &[("HOOKSHIM_LOG_FORMAT", "json"), ("HOOKSHIM_LOG", "debug")],
    );
    let http = reqwest::Client::new();
    wait_up(&http, &setup.url).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let before = access_lines(&json_lines(&err)).len();

    up.set("jobs/a", json!({"state": "done"}));
    let r = http
        .post(format!("{}/v1/operations", setup.url))
        .json(&json!({"upstream": "jobs", "operation": "a"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let op: Value = r.json().await.unwrap();
    let id = id_of(&op);
    wait_calls(&recv, &id, 1).await;
    let requests = [
        ("GET", format!("/v1/operations/{id}"), 200),
        ("GET", "/metrics".to_string(), 200),
        ("POST", "/webhooks/nope".to_string(), 404),
        ("GET", "/no/such/route".to_string(), 404),
    ];
    for (method, path, _) in &requests {
        let url = format!("{}{path}?token=SeCrEt-in-query", setup.url);
        let req = match *method {
            "GET" => http.get(url),
            _ => http.post(url).body("{}"),
        };
        req.header("authorization", "Bearer SeCrEt-in-header")
            .send()
            .await
            .unwrap();
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    signal(&child, "TERM");
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(0), "{status}");

    let text = std::fs::read_to_string(&err).unwrap();
    let lines = json_lines(&err);
    assert!(
        !text.contains("SeCrEt"),
        "a secret from the query or a header was logged:\n{text}"
    );
    assert!(
        lines
            .iter()
            .all(|l| !l["target"].as_str().unwrap_or("").starts_with("sled")),
        "sled's events are on:\n{text}"
    );
    let access = access_lines(&lines);
    assert_eq!(access.len(), before + 1 + requests.len(), "{text}");
    let register = access[before];
    assert_eq!(register["method"], "POST", "{register}");
    assert_eq!(register["path"], "/v1/operations", "{register}");
    assert_eq!(register["status"], 201, "{register}");
    assert!(register["duration_ms"].is_u64(), "{register}");
    for ((method, path, status), line) in requests.iter().zip(&access[before + 1..]) {
        assert_eq!(line["method"], *method, "{line}");
        assert_eq!(line["path"], path.as_str(), "{line}");
        assert_eq!(line["status"], *status, "{line}");
        assert_eq!(line["level"], "INFO", "{line}");
    }
    // Domain fields are plain values.
    let finished = lines
        .iter()
        .find(|l| l["message"] == "operation finished")
        .unwrap_or_else(|| panic!("no `operation finished` line:\n{text}"));
    assert_eq!(finished["op"], id.as_str(), "{finished}");
    assert_eq!(finished["upstream"], "jobs", "{finished}");
    assert_eq!(finished["status"], "succeeded", "{finished}");
    assert_eq!(finished["detected_via"], "poll", "{finished}");
}

#[test]
fn log_format_is_checked_and_shown() {
    let setup = ProcSetup::new(
        &PROC_CONFIG
            .replace("{UP}", "http://127.0.0.1:9")
            .replace("{RECV}", "http://127.0.0.1:9"),
    );
    let check = |env: &[(&str, &str)]| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_hookshim"));
        cmd.arg("--config")
            .arg(&setup.config)
            .arg("check")
            .env_remove("HOOKSHIM_LOG_FORMAT")
            .env_remove("HOOKSHIM_CONFIG");
        for (k, v) in env {
            cmd.env(k, v);
        }
        let out = cmd.output().unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).to_string(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    };
    let (code, out, _) = check(&[]);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains(r#""format": "text""#), "{out}");
    let (code, out, _) = check(&[("HOOKSHIM_LOG_FORMAT", "json")]);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains(r#""format": "json""#), "{out}");
    let (code, _, err) = check(&[("HOOKSHIM_LOG_FORMAT", "yaml")]);
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("HOOKSHIM_LOG_FORMAT") && err.contains(r#"write "text" or "json""#),
        "{err}"
    );
}

#[tokio::test]
async fn sighup_reloads_allowed_hosts_and_keeps_serving() {
    let up = FakeUpstream::start().await;
    let recv = Receiver::start().await;
    let base = PROC_CONFIG
        .replace("{UP}", &up.url)
        .replace("{RECV}", &recv.url)
        .replace(
            "[callbacks]",
            "[callbacks]\nallowed_hosts = [\"127.0.0.1\"]",
        );
    let setup = ProcSetup::new(&base);
    let written = std::fs::read_to_string(&setup.config).unwrap();
    let (mut child, err) = spawn(&setup, &[]);
    let http = reqwest::Client::new();
    wait_up(&http, &setup.url).await;
    let log = || std::fs::read_to_string(&err).unwrap_or_default();
    let alive = |child: &mut std::process::Child| {
        assert!(
            child.try_wait().unwrap().is_none(),
            "SIGHUP stopped hookshim:\n{}",
            log()
        );
    };
    let port = recv.url.rsplit(':').next().unwrap().to_string();
    let register = |name: &'static str| {
        let (http, url, cb) = (
            http.clone(),
            setup.url.clone(),
            format!("http://localhost:{port}/callback"),
        );
        async move {
            let r = http
                .post(format!("{url}/v1/operations"))
                .json(&json!({"upstream": "jobs", "operation": name, "callback_url": cb}))
                .send()
                .await
                .unwrap();
            let code = r.status().as_u16();
            (code, r.json::<Value>().await.unwrap())
        }
    };
    up.set("jobs/before", json!({"state": "running"}));
    up.set("jobs/after", json!({"state": "running"}));
    let (code, e) = register("before").await;
    assert_eq!(code, 422, "localhost is not allowed yet: {e}");

    // A config that does not load changes nothing.
    std::fs::write(&setup.config, format!("{written}\n[nonsense]\n")).unwrap();
    signal(&child, "HUP");
    eventually(Duration::from_secs(5), "the reload error", || async {
        log().contains("SIGHUP: config not reloaded").then_some(())
    })
    .await;
    alive(&mut child);

    // allowed_hosts applies; workers.polls_in_flight is reported as needing a restart.
    let changed = written
        .replace(
            "allowed_hosts = [\"127.0.0.1\"]",
            "allowed_hosts = [\"127.0.0.1\", \"localhost\"]",
        )
        .replace(
            "[callbacks]",
            "[workers]\npolls_in_flight = 5\n\n[callbacks]",
        );
    assert_ne!(changed, written);
    std::fs::write(&setup.config, changed).unwrap();
    signal(&child, "HUP");
    eventually(Duration::from_secs(5), "the reload", || async {
        log().contains("SIGHUP: config reloaded").then_some(())
    })
    .await;
    alive(&mut child);
    let text = log();
    let reloaded = text
        .lines()
        .find(|l| l.contains("SIGHUP: config reloaded"))
        .unwrap();
    assert!(
        reloaded.contains(r#"applied="callbacks.allowed_hosts""#),
        "{text}"
    );
    let restart = text
        .lines()
        .find(|l| l.contains("need a restart"))
        .unwrap_or_else(|| panic!("no restart line:\n{text}"));
    assert!(restart.contains("workers.polls_in_flight"), "{text}");
    assert!(!restart.contains("allowed_hosts"), "{text}");
    let (code, op) = register("after").await;
    assert_eq!(code, 201, "{op}");
    assert_eq!(
        op["callback_url"],
        format!("http://localhost:{port}/callback")
    );

    signal(&child, "TERM");
    let status = child.wait().unwrap();
    assert_eq!(
        status.code(),
        Some(0),
        "SIGTERM still stops it cleanly: {status}"
    );
}

/// `hookshim -c <config> check` with `env` (and nothing else from this process's HOOKSHIM_*).
fn check(config: &str, env: &[(&str, &str)]) -> (Option<i32>, String, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("shim.toml");
    std::fs::write(
        &path,
        config.replace("{DATA}", &dir.path().join("data").display().to_string()),
    )
    .unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_hookshim"));
    cmd.arg("--config")
        .arg(&path)
        .arg("check")
        .env_remove("HOOKSHIM_LOG_FORMAT")
        .env_remove("HOOKSHIM_CONFIG")
        .env_remove("HOOKSHIM_API_TOKEN")
        .env_remove("HOOKSHIM_CALLBACK_SECRET");
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

const CHECK_CONFIG: &str = r#"
[store]
path = "{DATA}"

[upstreams.jobs]
base_url = "http://127.0.0.1:9/"
status_path = "jobs/{operation}"
status_field = "/state"
succeeded = ["done"]
failed = ["error"]
headers = { Authorization = "Bearer LiTeRaL-token", x-api-key = "LiTeRaL-key", Cookie = "session=LiTeRaL-cookie", x-tenant = "acme", x-signed = "${OPS_TEST_TENANT_KEY}" }
poll = { stall_polls = 7, hint_max = "2h" }

[upstreams.claude]
preset = "anthropic-batch"
"#;

#[test]
fn check_shows_every_key_and_redacts_only_secrets() {
    let (code, out, err) = check(
        CHECK_CONFIG,
        &[
            ("OPS_TEST_TENANT_KEY", "EnV-secret-value"),
            ("ANTHROPIC_API_KEY", "EnV-anthropic-key"),
        ],
    );
    assert_eq!(code, Some(0), "{out}\n{err}");
    for secret in ["LiTeRaL", "EnV-"] {
        assert!(!out.contains(secret), "{secret} shown:\n{out}");
    }
    let json_end = out.rfind("\nconfig OK").unwrap();
    let resolved: Value = serde_json::from_str(&out[..json_end]).unwrap();
    let jobs = &resolved["upstreams"]["jobs"];
    let headers = &jobs["headers"];
    assert_eq!(headers["Authorization"], "<redacted>", "{headers}");
    assert_eq!(headers["x-api-key"], "<redacted>", "{headers}");
    assert_eq!(headers["Cookie"], "<redacted>", "{headers}");
    assert_eq!(headers["x-tenant"], "acme", "{headers}");
    assert_eq!(
        headers["x-signed"], "<redacted, from ${OPS_TEST_TENANT_KEY}>",
        "{headers}"
    );
    let claude = &resolved["upstreams"]["claude"]["headers"];
    assert_eq!(claude["anthropic-version"], "2023-06-01", "{claude}");
    assert_eq!(
        claude["x-api-key"], "<redacted, from ${ANTHROPIC_API_KEY}>",
        "{claude}"
    );
    // Every poll and rate key, with its effective value.
    let poll = jobs["poll"].as_object().unwrap();
    for key in [
        "enabled",
        "initial",
        "multiplier",
        "max",
        "jitter",
        "deadline",
        "finalizing",
        "eta",
        "eta_max",
        "stall_polls",
        "hint_max",
    ] {
        assert!(
            poll.contains_key(key),
            "poll.{key} missing: {}",
            jobs["poll"]
        );
    }
    assert_eq!(jobs["poll"]["stall_polls"], 7);
    assert_eq!(jobs["poll"]["hint_max"], "2h");
    assert_eq!(jobs["poll"]["enabled"], true);
    for key in ["per_second", "burst", "min_per_second", "increase_every"] {
        assert!(
            !jobs["rate"][key].is_null(),
            "rate.{key} missing: {}",
            jobs["rate"]
        );
    }
    assert_eq!(resolved["log"]["format"], "text");
}

#[test]
fn check_reports_every_missing_variable_at_once() {
    let (code, out, err) = check(CHECK_CONFIG, &[]);
    assert_eq!(code, Some(2), "{out}\n{err}");
    assert!(err.contains("2 environment variables are not set"), "{err}");
    for line in [
        "`upstreams.claude.headers.x-api-key`: environment variable ANTHROPIC_API_KEY is not set",
        "`upstreams.jobs.headers.x-signed`: environment variable OPS_TEST_TENANT_KEY is not set",
    ] {
        assert!(err.contains(line), "missing `{line}` in:\n{err}");
    }
    // One missing: the message as before.
    let (code, _, err) = check(CHECK_CONFIG, &[("ANTHROPIC_API_KEY", "k")]);
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains(
            "`upstreams.jobs.headers.x-signed`: environment variable OPS_TEST_TENANT_KEY is not set"
        ) && !err.contains("environment variables are not set"),
        "{err}"
    );
}

#[tokio::test]
async fn deadline_takes_a_duration_or_an_rfc3339_time() {
    let up = FakeUpstream::start().await;
    let recv = Receiver::start().await;
    let shim = TestShim::start(CONFIG, &up, &recv).await;
    up.set("jobs/d1", json!({"state": "running"}));
    up.set("jobs/d2", json!({"state": "running"}));
    let secs = |v: &Value| {
        humantime::parse_rfc3339(v.as_str().unwrap())
            .unwrap()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
    };
    let now = time_now_secs();
    let (code, a) = shim
        .register(json!({"upstream": "jobs", "operation": "d1", "deadline": "2h"}))
        .await;
    assert_eq!(code, 201, "{a}");
    assert!(
        (secs(&a["deadline_at"]) as i64 - (now + 7200) as i64).abs() <= 5,
        "{a}"
    );
    let at = humantime::format_rfc3339_seconds(
        std::time::UNIX_EPOCH + Duration::from_secs(now + 3 * 3600),
    )
    .to_string();
    let (code, b) = shim
        .register(json!({"upstream": "jobs", "operation": "d2", "deadline": at}))
        .await;
    assert_eq!(code, 201, "{b}");
    assert!(
        (secs(&b["deadline_at"]) as i64 - (now + 3 * 3600) as i64).abs() <= 1,
        "{b}"
    );
    for bad in ["2001-01-01T00:00:00Z", "tomorrow", "3000-01-01T00:00:00Z"] {
        let (code, e) = shim
            .register(json!({"upstream": "jobs", "operation": "d3", "deadline": bad}))
            .await;
        assert_eq!(code, 422, "{bad}: {e}");
        assert_eq!(e["error"]["code"], "invalid_deadline", "{e}");
    }
}

on_each_store! {
    #[tokio::test]
    async fn a_re_registration_with_another_callback_url_is_a_conflict(store) {
        let up = FakeUpstream::start().await;
        let recv = Receiver::start().await;
        let shim = TestShim::start_on(&store, CONFIG, &up, &recv).await;
        up.set("jobs/c", json!({"state": "running"}));
        let first = format!("{}/one", recv.url);
        let (code, op) = shim
            .register(json!({"upstream": "jobs", "operation": "c", "callback_url": first}))
            .await;
        assert_eq!(code, 201, "{op}");
        // The same again, and without a callback_url: the existing record.
        let (code, again) = shim
            .register(json!({"upstream": "jobs", "operation": "c", "callback_url": first}))
            .await;
        assert_eq!((code, &again["id"]), (200, &op["id"]), "{again}");
        let (code, again) = shim
            .register(json!({"upstream": "jobs", "operation": "c"}))
            .await;
        assert_eq!((code, &again["id"]), (200, &op["id"]), "{again}");
        let (code, e) = shim
            .register(json!({"upstream": "jobs", "operation": "c", "callback_url": format!("{}/two", recv.url)}))
            .await;
        assert_eq!(code, 409, "{e}");
        assert_eq!(e["error"]["code"], "conflict", "{e}");
        assert!(
            e["error"]["message"].as_str().unwrap().contains("/one"),
            "{e}"
        );
        assert_eq!(shim.op(&id_of(&op)).await["callback_url"], first.as_str());
    }
}

on_each_store! {
    #[tokio::test]
    async fn operations_by_status_follow_transitions_and_restarts(store) {
        let up = FakeUpstream::start().await;
        let recv = Receiver::start().await;
        let config = CONFIG.replace(
            "expired = [\"expired\"]",
            "expired = [\"expired\"]\npending = [\"queued\"]",
        );
        assert_ne!(config, CONFIG);
        let mut shim = TestShim::start_on(&store, &config, &up, &recv).await;
        let gauge = |text: &str, upstream: &str, status: &str| {
            line_value(
                text,
                &format!(r#"hookshim_operations_by_status{{upstream="{upstream}",status="{status}"}}"#),
            )
        };
        let text = shim.metrics().await;
        for (u, s) in [
            ("jobs", "pending"),
            ("jobs", "running"),
            ("pushy", "running"),
        ] {
            assert_eq!(gauge(&text, u, s), Some(0.0), "{u} {s}:\n{text}");
        }
        up.set("jobs/q1", json!({"state": "queued"}));
        up.set("jobs/q2", json!({"state": "queued"}));
        up.set("jobs/r1", json!({"state": "running"}));
        let mut ids = Vec::new();
        for name in ["q1", "q2", "r1"] {
            let (code, op) = shim
                .register(json!({"upstream": "jobs", "operation": name}))
                .await;
            assert_eq!(code, 201, "{op}");
            ids.push(id_of(&op));
        }
        wait_status(&shim, &ids[2], "running").await;
        let counts = |text: &str| {
            (
                gauge(text, "jobs", "pending"),
                gauge(text, "jobs", "running"),
            )
        };
        assert_eq!(counts(&shim.metrics().await), (Some(2.0), Some(1.0)));

        shim.restart().await;
        assert_eq!(counts(&shim.metrics().await), (Some(2.0), Some(1.0)));

        up.set("jobs/r1", json!({"state": "done"}));
        up.set("jobs/q1", json!({"state": "running"}));
        wait_status(&shim, &ids[2], "succeeded").await;
        wait_status(&shim, &ids[0], "running").await;
        let (code, _) = {
            let r = shim
                .http
                .delete(format!("{}/v1/operations/{}", shim.url, ids[1]))
                .send()
                .await
                .unwrap();
            (r.status().as_u16(), ())
        };
        assert!(code < 300, "{code}");
        assert_eq!(counts(&shim.metrics().await), (Some(0.0), Some(1.0)));
    }
}
