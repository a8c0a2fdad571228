//! Bad input of every kind is answered as specified (status, error code, the one error shape)
//! and never takes the process down or changes an operation: inbound webhooks, the API, the
//! API token, and config files given to the real binary.

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use crate::common::*;
use serde_json::{Value, json};

/// Another valid Standard Webhooks secret: what a forger might sign with.
const OTHER_SECRET: &str = "whsec_dGhpcyBpcyBub3QgdGhlIHB1c2h5IHNlY3JldA==";

/// Assert `body` is exactly `{"error": {"code": code, "message": <non-empty>}}`.
#[track_caller]
fn assert_error(got: (u16, Value), status: u16, code: &str) {
    let (s, body) = got;
    assert_eq!(s, status, "status for {code}: {body}");
    let obj = body
        .as_object()
        .unwrap_or_else(|| panic!("error body must be a JSON object: {body}"));
    assert_eq!(obj.len(), 1, "only the `error` key at top level: {body}");
    let err = body["error"]
        .as_object()
        .unwrap_or_else(|| panic!("`error` must be an object: {body}"));
    assert_eq!(err.len(), 2, "`error` has exactly code and message: {body}");
    assert_eq!(body["error"]["code"], code, "{body}");
    let message = body["error"]["message"].as_str().unwrap_or("");
    assert!(!message.trim().is_empty(), "non-empty message: {body}");
}

/// The process still answers: /healthz, and a fresh registration is created.
async fn assert_still_serving(shim: &TestShim, up: &FakeUpstream, n: &mut u32) {
    *n += 1;
    let (code, body) = shim.get("/healthz").await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["status"], "ok");
    let op = format!("alive{n}");
    up.set(&format!("jobs/{op}"), json!({"state": "running"}));
    let (code, body) = shim
        .register(json!({"upstream": "jobs", "operation": op}))
        .await;
    assert_eq!(code, 201, "a normal registration still works: {body}");
}

/// A Standard Webhooks-signed POST to /webhooks/{upstream} with an explicit timestamp and raw
/// body, signed by the `standardwebhooks` crate.
async fn send_signed(
    shim: &TestShim,
    upstream: &str,
    secret: &str,
    msg_id: &str,
    ts: i64,
    raw: Vec<u8>,
) -> (u16, Value) {
    let sig = standardwebhooks::Webhook::new(secret)
        .unwrap()
        .sign(msg_id, ts, &raw)
        .unwrap();
    post_raw(
        shim,
        &format!("/webhooks/{upstream}"),
        &[
            ("content-type", "application/json".into()),
            ("webhook-id", msg_id.into()),
            ("webhook-timestamp", ts.to_string()),
            ("webhook-signature", sig),
        ],
        raw,
    )
    .await
}

fn now() -> i64 {
    time_now_secs() as i64
}

// ---------------------------------------------------------------------------------------------
// Inbound webhooks.

#[tokio::test]
async fn rejected_webhooks_get_their_error_and_change_nothing() {
    let up = FakeUpstream::start().await;
    let recv = Receiver::start().await;
    let config = format!("[server]\nmax_body = \"4KiB\"\n{CONFIG}");
    let shim = TestShim::start(&config, &up, &recv).await;
    let mut n = 0;
    up.set("pushy/victim", json!({"state": "done", "output": "forged"}));
    let (code, op) = shim
        .register(json!({"upstream": "pushy", "operation": "victim"}))
        .await;
    assert_eq!(code, 201, "{op}");
    let id = op["id"].as_str().unwrap().to_string();
    let about_victim = json!({"type": "job.done", "data": {"id": "victim"}});
    let raw = serde_json::to_vec(&about_victim).unwrap();

    // Signed with another secret.
    let got = shim
        .send_webhook("pushy", OTHER_SECRET, "msg_forged", &about_victim)
        .await;
    assert_error(got, 401, "bad_signature");
    assert_still_serving(&shim, &up, &mut n).await;

    // Signed with the right secret, but ten minutes ago.
    let got = send_signed(
        &shim,
        "pushy",
        PUSHY_SECRET,
        "msg_stale",
        now() - 600,
        raw.clone(),
    )
    .await;
    assert_error(got, 401, "stale_timestamp");
    assert_still_serving(&shim, &up, &mut n).await;

    // ... or ten minutes ahead.
    let got = send_signed(
        &shim,
        "pushy",
        PUSHY_SECRET,
        "msg_future",
        now() + 600,
        raw.clone(),
    )
    .await;
    assert_error(got, 401, "stale_timestamp");

    // No signature headers at all.
    let got = post_raw(
        &shim,
        "/webhooks/pushy",
        &[("content-type", "application/json".into())],
        raw.clone(),
    )
    .await;
    assert_error(got, 401, "missing_signature");
    assert_still_serving(&shim, &up, &mut n).await;

    // Correctly signed, but not JSON.
    let got = send_signed(
        &shim,
        "pushy",
        PUSHY_SECRET,
        "msg_notjson",
        now(),
        b"{\"data\": {\"id\": \"victim\"".to_vec(),
    )
    .await;
    assert_error(got, 400, "malformed_body");
    assert_still_serving(&shim, &up, &mut n).await;

    // Correctly signed JSON, but no operation id at /data/id.
    let got = send_signed(
        &shim,
        "pushy",
        PUSHY_SECRET,
        "msg_noid",
        now(),
        serde_json::to_vec(&json!({"type": "job.done", "data": {"job": "victim"}})).unwrap(),
    )
    .await;
    assert_error(got, 400, "malformed_body");
    assert_still_serving(&shim, &up, &mut n).await;

    // Correctly signed, larger than server.max_body (4 KiB).
    let big = json!({"data": {"id": "victim"}, "pad": "x".repeat(5000)});
    let got = shim
        .send_webhook("pushy", PUSHY_SECRET, "msg_big", &big)
        .await;
    assert_error(got, 413, "body_too_large");
    assert_still_serving(&shim, &up, &mut n).await;

    // An upstream that does not exist, and one without a webhook section.
    let got = shim
        .send_webhook("nosuch", PUSHY_SECRET, "msg_nosuch", &about_victim)
        .await;
    assert_error(got, 404, "unknown_upstream");
    assert_still_serving(&shim, &up, &mut n).await;
    let got = shim
        .send_webhook("jobs", PUSHY_SECRET, "msg_jobs", &about_victim)
        .await;
    assert_error(got, 404, "webhooks_not_enabled");
    assert_still_serving(&shim, &up, &mut n).await;

    // None of that touched the operation: still pending, and nothing read its status (the
    // safety poll is an hour away, so only an accepted webhook could have caused a read).
    tokio::time::sleep(Duration::from_millis(300)).await;
    let after = shim.op(&id).await;
    assert_eq!(after["status"], "pending", "{after}");
    assert!(after["webhook_at"].is_null(), "{after}");
    assert!(
        up.requests_for("pushy/victim").is_empty(),
        "a rejected webhook must not trigger a status read"
    );
    assert!(recv.calls_for(&id).is_empty());

    let metrics = shim.metrics().await;
    for (result, count) in [
        ("bad_signature", 2), // forged + missing headers
        ("stale_timestamp", 2),
        ("malformed", 2),
        ("too_large", 1),
    ] {
        let line = format!(
            "hookshim_webhooks_received_total{{upstream=\"pushy\",result=\"{result}\"}} {count}"
        );
        assert!(metrics.contains(&line), "missing `{line}` in:\n{metrics}");
    }
    // The series exist from start at zero (issue 14): none may have counted anything.
    assert!(
        metrics
            .lines()
            .filter(|l| l.contains("result=\"accepted\""))
            .all(|l| l.ends_with(" 0")),
        "nothing was accepted:\n{metrics}"
    );

    // And the right webhook still works afterwards.
    let (code, body) = shim
        .send_webhook("pushy", PUSHY_SECRET, "msg_real", &about_victim)
        .await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["result"], "accepted");
    let done = wait_status(&shim, &id, "succeeded").await;
    assert_eq!(done["detected_via"], "webhook");
    exactly_one_callback(&recv, &id, QUIET).await;
}

#[tokio::test]
async fn malformed_signature_headers_are_rejected() {
    let up = FakeUpstream::start().await;
    let recv = Receiver::start().await;
    let shim = TestShim::start(CONFIG, &up, &recv).await;
    let mut n = 0;
    let raw = serde_json::to_vec(&json!({"data": {"id": "m"}})).unwrap();
    let good = standardwebhooks::Webhook::new(PUSHY_SECRET)
        .unwrap()
        .sign("msg_m", now(), &raw)
        .unwrap();
    // A timestamp that is not a number.
    let got = post_raw(
        &shim,
        "/webhooks/pushy",
        &[
            ("webhook-id", "msg_m".into()),
            ("webhook-timestamp", "yesterday".into()),
            ("webhook-signature", good.clone()),
        ],
        raw.clone(),
    )
    .await;
    assert_error(got, 401, "malformed_signature");
    assert_still_serving(&shim, &up, &mut n).await;
    // A signature that is not base64 / not v1.
    let got = post_raw(
        &shim,
        "/webhooks/pushy",
        &[
            ("webhook-id", "msg_m".into()),
            ("webhook-timestamp", now().to_string()),
            ("webhook-signature", "v1,!!!not-base64!!! v2,abc".into()),
        ],
        raw.clone(),
    )
    .await;
    assert_error(got, 401, "bad_signature");
    // The signature of another body.
    let got = post_raw(
        &shim,
        "/webhooks/pushy",
        &[
            ("webhook-id", "msg_m".into()),
            ("webhook-timestamp", now().to_string()),
            ("webhook-signature", good),
        ],
        serde_json::to_vec(&json!({"data": {"id": "other"}})).unwrap(),
    )
    .await;
    assert_error(got, 401, "bad_signature");
    assert_still_serving(&shim, &up, &mut n).await;
}

// ---------------------------------------------------------------------------------------------
// The API.

#[tokio::test]
async fn bad_registrations_get_their_error_and_store_nothing() {
    let up = FakeUpstream::start().await;
    let recv = Receiver::start().await;
    let shim = TestShim::start(CONFIG, &up, &recv).await;
    let mut n = 0;

    let got = post_raw(
        &shim,
        "/v1/operations",
        &[("content-type", "application/json".into())],
        b"{\"upstream\": \"jobs\", \"operation\": ".to_vec(),
    )
    .await;
    assert_error(got, 400, "invalid_json");
    assert_still_serving(&shim, &up, &mut n).await;

    let (code, body) = shim
        .register(json!({"upstream": "jobs", "operation": "u1", "colour": "red"}))
        .await;
    assert_error((code, body.clone()), 400, "invalid_json");
    let msg = body["error"]["message"].as_str().unwrap();
    assert!(msg.contains("colour"), "names the unknown field: {msg}");
    assert_still_serving(&shim, &up, &mut n).await;

    // Not an object at all, and a missing required field.
    let got = shim.register(json!(["jobs", "x"])).await;
    assert_error(got, 400, "invalid_json");
    let got = shim.register(json!({"upstream": "jobs"})).await;
    assert_error(got, 400, "invalid_json");

    let got = shim
        .register(json!({"upstream": "nosuch", "operation": "u2"}))
        .await;
    assert_error(got, 404, "unknown_upstream");
    assert_still_serving(&shim, &up, &mut n).await;

    let got = shim
        .register(
            json!({"upstream": "jobs", "operation": "u3", "callback_url": "http://example.com/cb"}),
        )
        .await;
    assert_error(got, 422, "callback_not_allowed");
    let got = shim
        .register(
            json!({"upstream": "jobs", "operation": "u3", "callback_url": "ftp://127.0.0.1/cb"}),
        )
        .await;
    assert_error(got, 422, "callback_not_allowed");
    let got = shim
        .register(json!({"upstream": "jobs", "operation": "u3", "callback_url": "not a url"}))
        .await;
    assert_error(got, 422, "callback_not_allowed");
    assert_still_serving(&shim, &up, &mut n).await;

    // Metadata: 16 KiB serialised is the most kept. A JSON string of k 'x's is k + 2 bytes.
    let got = shim
        .register(
            json!({"upstream": "jobs", "operation": "u4", "metadata": "x".repeat(16 * 1024 - 1)}),
        )
        .await;
    assert_error(got, 422, "metadata_too_large");
    let got = shim
        .register(json!({"upstream": "jobs", "operation": "u4", "metadata": {"blob": "y".repeat(20_000)}}))
        .await;
    assert_error(got, 422, "metadata_too_large");
    assert_still_serving(&shim, &up, &mut n).await;

    let got = shim
        .register(json!({"upstream": "jobs", "operation": "u5", "deadline": "soon"}))
        .await;
    assert_error(got, 422, "invalid_deadline");
    let got = shim
        .register(json!({"upstream": "jobs", "operation": "u5", "deadline": "0s"}))
        .await;
    assert_error(got, 422, "invalid_deadline");
    assert_still_serving(&shim, &up, &mut n).await;

    for bad in ["../x", "/etc/passwd", "a/./b", "", "tab\there"] {
        let got = shim
            .register(json!({"upstream": "jobs", "operation": bad}))
            .await;
        assert_error(got, 422, "invalid_operation");
    }
    assert_still_serving(&shim, &up, &mut n).await;

    // None of the rejected registrations stored anything: only the `alive` probes exist.
    let (code, list) = shim.get("/v1/operations?limit=1000").await;
    assert_eq!(code, 200, "{list}");
    let mut ops: Vec<String> = list["operations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["operation"].as_str().unwrap().to_string())
        .collect();
    ops.sort();
    let mut want: Vec<String> = (1..=n).map(|i| format!("alive{i}")).collect();
    want.sort();
    assert_eq!(ops, want);

    // The boundary: exactly 16 KiB of metadata is accepted.
    let (code, body) = shim
        .register(
            json!({"upstream": "jobs", "operation": "u6", "metadata": "x".repeat(16 * 1024 - 2)}),
        )
        .await;
    assert_eq!(code, 201, "{body}");
}

#[tokio::test]
async fn unknown_ids_and_routes_are_json_404s() {
    let up = FakeUpstream::start().await;
    let recv = Receiver::start().await;
    let shim = TestShim::start(CONFIG, &up, &recv).await;
    let mut n = 0;
    let got = shim
        .get("/v1/operations/op_01NOSUCHOPERATION0000000000")
        .await;
    assert_error(got, 404, "operation_not_found");
    let r = shim
        .http
        .delete(format!("{}/v1/operations/op_nosuch", shim.url))
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    assert_error(
        (status, r.json().await.unwrap_or(Value::Null)),
        404,
        "operation_not_found",
    );
    let got = shim
        .post("/v1/operations/op_nosuch/redeliver", &json!({}))
        .await;
    assert_error(got, 404, "operation_not_found");
    assert_still_serving(&shim, &up, &mut n).await;

    let got = shim.get("/v2/nothing/here").await;
    assert_error(got, 404, "not_found");
    let got = shim.post("/v1/operationz", &json!({})).await;
    assert_error(got, 404, "not_found");
    let got = shim.get("/").await;
    assert_error(got, 404, "not_found");
    assert_still_serving(&shim, &up, &mut n).await;

    let got = shim.get("/v1/operations?limit=lots").await;
    assert_error(got, 400, "invalid_query");
    let got = shim.get("/v1/operations?delivery=lost").await;
    assert_error(got, 400, "invalid_query");
    assert_still_serving(&shim, &up, &mut n).await;
}

// ---------------------------------------------------------------------------------------------
// The API token.

#[tokio::test]
async fn api_token_guards_the_api_but_not_health_or_webhooks() {
    let up = FakeUpstream::start().await;
    let recv = Receiver::start().await;
    let shim = TestShim::start_with_env(
        CONFIG,
        &up,
        &recv,
        vec![("HOOKSHIM_API_TOKEN".into(), "s3cret".into())],
    )
    .await;
    up.set("pushy/t1", json!({"state": "done"}));
    let url = format!("{}/v1/operations", shim.url);
    let body = json!({"upstream": "pushy", "operation": "t1"});
    let send = |auth: Option<&'static str>| {
        let mut req = shim.http.post(&url).json(&body);
        if let Some(a) = auth {
            req = req.header("authorization", a);
        }
        async move {
            let r = req.send().await.unwrap();
            let status = r.status().as_u16();
            (status, r.json::<Value>().await.unwrap_or(Value::Null))
        }
    };

    assert_error(send(None).await, 401, "unauthorized");
    assert_error(send(Some("Bearer wrong")).await, 401, "unauthorized");
    assert_error(send(Some("Bearer s3cre")).await, 401, "unauthorized");
    assert_error(send(Some("Bearer s3cretX")).await, 401, "unauthorized");
    assert_error(send(Some("s3cret")).await, 401, "unauthorized");
    assert_error(send(Some("Basic s3cret")).await, 401, "unauthorized");
    // Reads are guarded too.
    assert_error(shim.get("/v1/operations").await, 401, "unauthorized");
    assert_error(shim.get("/v1/operations/op_x").await, 401, "unauthorized");
    // Nothing was registered by the refused requests.
    let (code, op) = send(Some("Bearer s3cret")).await;
    assert_eq!(
        code, 201,
        "the first accepted registration creates it: {op}"
    );
    let id = op["id"].as_str().unwrap().to_string();
    let r = shim
        .http
        .get(format!("{}/v1/operations/{id}", shim.url))
        .bearer_auth("s3cret")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);

    // Health and webhooks need no token.
    let (code, _) = shim.get("/healthz").await;
    assert_eq!(code, 200);
    let (code, body) = shim
        .send_webhook(
            "pushy",
            PUSHY_SECRET,
            "msg_t1",
            &json!({"data": {"id": "t1"}}),
        )
        .await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["result"], "accepted");
    wait_calls(&recv, &id, 1).await;
}

// ---------------------------------------------------------------------------------------------
// Config files given to the real binary.

const GOOD_FILE: &str = r#"
[server]
listen = "127.0.0.1:0"
[store]
path = "{DATA}"
[callbacks]
default_url = "http://127.0.0.1:9/callback"
[upstreams.jobs]
base_url = "http://127.0.0.1:9/"
status_path = "jobs/{operation}"
headers = { Authorization = "Bearer ${HOOKSHIM_TEST_TOKEN}" }
status_field = "/state"
succeeded = ["done"]
failed = ["error"]
poll = { initial = "1s", max = "30s" }
[upstreams.jobs.webhook]
scheme = "standard-webhooks"
secret_env = "HOOKSHIM_TEST_WEBHOOK_SECRET"
"#;

const TEST_TOKEN: &str = "tok-VISIBLE-IF-LEAKED-4417";
const ENV_NAMES: [&str; 5] = [
    "HOOKSHIM_TEST_TOKEN",
    "HOOKSHIM_TEST_WEBHOOK_SECRET",
    "HOOKSHIM_CALLBACK_SECRET",
    "HOOKSHIM_API_TOKEN",
    "HOOKSHIM_TEST_SURELY_UNSET",
];

/// Run the binary with `--config <file> <cmd>` and a controlled environment.
fn run(file: &Path, cmd: &str) -> Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_hookshim"));
    for name in ENV_NAMES {
        c.env_remove(name);
    }
    c.env_remove("HOOKSHIM_CONFIG")
        .env("HOOKSHIM_TEST_TOKEN", TEST_TOKEN)
        .env("HOOKSHIM_TEST_WEBHOOK_SECRET", PUSHY_SECRET)
        .env("HOOKSHIM_CALLBACK_SECRET", CALLBACK_SECRET)
        .env("HOOKSHIM_API_TOKEN", "api-token-VISIBLE-IF-LEAKED")
        .arg("--config")
        .arg(file)
        .arg(cmd)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = c.spawn().expect("start the hookshim binary");
    // `serve` with a good config would run forever; nothing here should get that far.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while child.try_wait().unwrap().is_none() {
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!(
                "hookshim {cmd} did not exit within 20s; stderr:\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}

fn write_config(dir: &Path, name: &str, text: &str) -> std::path::PathBuf {
    let path = dir.join(name);
    let text = text.replace("{DATA}", &dir.join("data").display().to_string());
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn check_accepts_a_good_config_and_prints_no_secret() {
    let dir = tempfile::tempdir().unwrap();
    let file = write_config(dir.path(), "good.toml", GOOD_FILE);
    let out = run(&file, "check");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(0),
        "stdout:\n{stdout}\nstderr:\n{stderr}"
    );
    assert!(
        stdout.contains(&format!("config OK: {}", file.display())),
        "{stdout}"
    );
    // The resolved view is there...
    assert!(stdout.contains("\"jobs\""), "{stdout}");
    assert!(stdout.contains("HOOKSHIM_TEST_TOKEN"), "{stdout}");
    // ...but no secret value, whole or in part.
    let pushy_b64 = PUSHY_SECRET.trim_start_matches("whsec_");
    let cb_b64 = CALLBACK_SECRET.trim_start_matches("whsec_");
    for secret in [
        TEST_TOKEN,
        "VISIBLE-IF-LEAKED",
        pushy_b64,
        &pushy_b64[..12],
        cb_b64,
        &cb_b64[..12],
    ] {
        assert!(
            !stdout.contains(secret),
            "stdout leaks {secret:?}:\n{stdout}"
        );
        assert!(
            !stderr.contains(secret),
            "stderr leaks {secret:?}:\n{stderr}"
        );
    }
    // `check` does not create the data directory or a secret file.
    assert!(!dir.path().join("data").exists());
}

/// The 1-based line of the first line of `text` containing `needle`.
fn line_of(text: &str, needle: &str) -> usize {
    text.lines().position(|l| l.contains(needle)).unwrap() + 1
}

#[test]
fn check_rejects_bad_configs_naming_file_key_and_problem() {
    let dir = tempfile::tempdir().unwrap();
    // (file name, the change, what stderr must say)
    let unknown_key = GOOD_FILE.replace("[store]\n", "[store]\npaht = \"x\"\n");
    let bad_duration = GOOD_FILE.replace("initial = \"1s\"", "initial = \"1 fortnight\"");
    // TOML-level errors name the key by its line (and quote it); resolve-level ones by path.
    let unknown_key_line = format!("line {}", line_of(&unknown_key, "paht"));
    let bad_duration_line = format!("line {}", line_of(&bad_duration, "fortnight"));
    let cases: Vec<(&str, String, Vec<&str>)> = vec![
        (
            "unknown_key.toml",
            unknown_key.clone(),
            vec![&unknown_key_line, "paht = \"x\"", "unknown field `paht`"],
        ),
        (
            "bad_duration.toml",
            bad_duration.clone(),
            vec![
                &bad_duration_line,
                "initial = \"1 fortnight\"",
                "invalid duration \"1 fortnight\"",
            ],
        ),
        (
            "bad_pointer.toml",
            GOOD_FILE.replace("status_field = \"/state\"", "status_field = \"state\""),
            vec!["`upstreams.jobs.status_field`", "not a JSON pointer"],
        ),
        (
            "bad_preset.toml",
            GOOD_FILE.replace(
                "[upstreams.jobs]\n",
                "[upstreams.jobs]\npreset = \"magic\"\n",
            ),
            vec![
                "`upstreams.jobs.preset`",
                "unknown preset \"magic\"",
                "generic",
            ],
        ),
        (
            "missing_env.toml",
            GOOD_FILE.replace("${HOOKSHIM_TEST_TOKEN}", "${HOOKSHIM_TEST_SURELY_UNSET}"),
            vec![
                "`upstreams.jobs.headers.Authorization`",
                "environment variable HOOKSHIM_TEST_SURELY_UNSET is not set",
            ],
        ),
        (
            "jwt_no_audience.toml",
            GOOD_FILE.replace(
                "scheme = \"standard-webhooks\"\nsecret_env = \"HOOKSHIM_TEST_WEBHOOK_SECRET\"\n",
                "scheme = \"gemini-jwt\"\n",
            ),
            vec![
                "`upstreams.jobs.webhook.audience`",
                "required for scheme \"gemini-jwt\"",
            ],
        ),
        (
            "previous_unset.toml",
            format!(
                "{GOOD_FILE}previous_secrets = [{{ env = \"HOOKSHIM_TEST_SURELY_UNSET\", until = \"2099-01-01T00:00:00Z\" }}]\n"
            ),
            vec![
                "`upstreams.jobs.webhook.previous_secrets[0].env`",
                "environment variable HOOKSHIM_TEST_SURELY_UNSET is not set",
            ],
        ),
    ];
    for (name, text, wants) in cases {
        assert_ne!(text, GOOD_FILE, "{name}: the replacement must apply");
        let file = write_config(dir.path(), name, &text);
        let out = run(&file, "check");
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(
            out.status.code(),
            Some(2),
            "{name}: exit code\nstdout:\n{stdout}\nstderr:\n{stderr}"
        );
        assert!(
            stderr.contains(&file.display().to_string()),
            "{name}: stderr names the file:\n{stderr}"
        );
        for want in wants {
            assert!(
                stderr.contains(want),
                "{name}: stderr says {want:?}:\n{stderr}"
            );
        }
        assert!(
            !stdout.contains("config OK"),
            "{name}: no OK on stdout:\n{stdout}"
        );
        assert!(!stderr.contains(TEST_TOKEN), "{name}: {stderr}");
    }
    // A file that is not there at all.
    let missing = dir.path().join("absent.toml");
    let out = run(&missing, "check");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains(&missing.display().to_string()), "{stderr}");
    assert!(stderr.contains("cannot read the config file"), "{stderr}");
}

#[test]
fn check_warns_about_a_previous_secret_past_its_until_but_accepts_the_config() {
    let dir = tempfile::tempdir().unwrap();
    let previous = |until: &str| {
        format!(
            "{GOOD_FILE}previous_secrets = [{{ env = \"HOOKSHIM_TEST_TOKEN\", until = \"{until}\" }}]\n"
        )
    };
    let file = write_config(dir.path(), "past.toml", &previous("2020-01-01T00:00:00Z"));
    let out = run(&file, "check");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(stdout.contains("config OK"), "{stdout}");
    assert!(
        stderr.contains("warning: `upstreams.jobs.webhook.previous_secrets[0]`: until 2020-01-01T00:00:00.000Z has passed; the secret in HOOKSHIM_TEST_TOKEN is no longer accepted"),
        "{stderr}"
    );
    assert!(
        stdout.contains("\"until\": \"2020-01-01T00:00:00.000Z\""),
        "{stdout}"
    );
    assert!(!stdout.contains(TEST_TOKEN) && !stderr.contains(TEST_TOKEN));
    // A grace period still running: no warning.
    let file = write_config(dir.path(), "future.toml", &previous("2099-01-01T00:00:00Z"));
    let out = run(&file, "check");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(!stderr.contains("warning"), "{stderr}");
}

#[test]
fn serve_with_a_bad_config_exits_with_the_message() {
    let dir = tempfile::tempdir().unwrap();
    let file = write_config(
        dir.path(),
        "bad.toml",
        &GOOD_FILE.replace("status_field = \"/state\"", "status_field = \"state\""),
    );
    let out = run(&file, "serve");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "serve must fail: {stderr}");
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains(&file.display().to_string()), "{stderr}");
    assert!(
        stderr.contains("`upstreams.jobs.status_field`") && stderr.contains("not a JSON pointer"),
        "{stderr}"
    );
    // It did not get as far as opening the store.
    assert!(!dir.path().join("data").exists());
}
