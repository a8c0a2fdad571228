//! Issue 12 (hardening), part 3: each test here failed before its fix.
//! - The data directory is private (0700, its files 0600) after a fresh start.
//! - An Azure status URL registered in two spellings (`127.1` and `127.0.0.1`) is one operation.
//! - Callback addresses are vetted at delivery: `localhost` named in `allowed_hosts` is called;
//!   admitted only by `*`, it resolves to loopback and is refused (the delivery fails, nothing
//!   is sent) unless `allowed_networks` contains 127.0.0.0/8.
//! - A `callback_url` with user info, over 2048 bytes, of another scheme, or an IP literal in a
//!   private range is refused at registration (422) and not stored.

use std::time::Duration;

use crate::common::*;
use serde_json::{Value, json};

/// One polling upstream; callbacks only where registrations say, under the `[callbacks]` rules
/// `rules` gives.
fn vet_config(rules: &str) -> String {
    format!(
        r#"
[store]
path = "{{DATA}}"
cache = "8MiB"

[callbacks]
timeout = "1s"
retry_schedule = ["100ms", "200ms", "300ms"]
{rules}

[upstreams.jobs]
base_url = "{{UP}}/"
status_path = "jobs/{{operation}}"
status_field = "/state"
succeeded = ["done"]
failed = ["error"]
rate = {{ per_second = 200, burst = 20 }}
poll = {{ initial = "50ms", multiplier = 1.5, max = "200ms", jitter = 0.1, deadline = "1h" }}
"#
    )
}

/// Register a job that is already done with a callback to `localhost` on the receiver's port,
/// and wait until its delivery settles (delivered or failed).
async fn deliver_to_localhost(rules: &str) -> (Receiver, Value) {
    let up = FakeUpstream::start().await;
    let recv = Receiver::start().await;
    let shim = TestShim::start(&vet_config(rules), &up, &recv).await;
    up.set("jobs/j1", json!({"state": "done"}));
    let url = recv.url.replace("127.0.0.1", "localhost") + "/cb";
    let (code, op) = shim
        .register(json!({"upstream": "jobs", "operation": "j1", "callback_url": url}))
        .await;
    assert_eq!(code, 201, "{op}");
    let id = id_of(&op);
    let op = eventually(
        Duration::from_secs(10),
        "the delivery to settle",
        || async {
            let o = shim.op(&id).await;
            let state = o["delivery"]["state"].clone();
            (state == "delivered" || state == "failed").then_some(o)
        },
    )
    .await;
    (recv, op)
}

#[tokio::test]
async fn a_localhost_callback_named_in_allowed_hosts_is_delivered() {
    let (recv, op) = deliver_to_localhost("allowed_hosts = [\"localhost\"]").await;
    assert_eq!(op["delivery"]["state"], "delivered", "{op}");
    assert_eq!(recv.calls_for(op["id"].as_str().unwrap()).len(), 1);
}

#[tokio::test]
async fn a_name_admitted_only_by_a_pattern_that_resolves_to_loopback_is_refused_at_delivery() {
    let (recv, op) =
        deliver_to_localhost("allowed_hosts = [\"*\"]\nallowed_ports = [\"1024-65535\"]").await;
    assert_eq!(op["delivery"]["state"], "failed", "{op}");
    assert_eq!(op["delivery"]["attempts"], 1, "refused, not retried: {op}");
    let error = op["delivery"]["last_error"].as_str().unwrap();
    assert!(
        error.starts_with("not sent: callback host localhost resolved to "),
        "{error}"
    );
    assert!(
        error.contains(", a loopback address; add it (e.g. "),
        "{error}"
    );
    assert!(error.contains("to callbacks.allowed_networks"), "{error}");
    assert!(recv.calls().is_empty(), "nothing reached the receiver");
}

#[tokio::test]
async fn allowed_networks_admit_a_loopback_name() {
    let (recv, op) = deliver_to_localhost(
        "allowed_hosts = [\"*\"]\nallowed_ports = [\"1024-65535\"]\nallowed_networks = [\"127.0.0.0/8\"]",
    )
    .await;
    assert_eq!(op["delivery"]["state"], "delivered", "{op}");
    assert_eq!(recv.calls_for(op["id"].as_str().unwrap()).len(), 1);
}

#[tokio::test]
async fn callback_urls_out_of_bounds_are_refused_and_not_stored() {
    let up = FakeUpstream::start().await;
    let recv = Receiver::start().await;
    let shim = TestShim::start(
        &vet_config("allowed_hosts = [\"127.0.0.1\", \"*\"]"),
        &up,
        &recv,
    )
    .await;
    let port = recv.url.rsplit(':').next().unwrap().to_string();
    let long = format!("{}/{}", recv.url, "a".repeat(2048));
    let cases = [
        (
            format!("http://alice:hunter2@127.0.0.1:{port}/cb"),
            "must not carry a user name or password",
        ),
        (
            format!("http://alice@127.0.0.1:{port}/cb"),
            "must not carry a user name or password",
        ),
        (long, "at most 2048 are accepted"),
        (
            format!("ftp://127.0.0.1:{port}/cb"),
            "must use http or https",
        ),
        (
            "http://10.0.0.5:8080/cb".to_string(),
            "callback host 10.0.0.5 is a private address",
        ),
        (
            "http://169.254.169.254/latest/meta-data/".to_string(),
            "a cloud metadata address",
        ),
    ];
    for (i, (url, want)) in cases.iter().enumerate() {
        let (code, body) = shim
            .register(
                json!({"upstream": "jobs", "operation": format!("b{i}"), "callback_url": url}),
            )
            .await;
        assert_eq!(code, 422, "{url}: {body}");
        assert_eq!(body["error"]["code"], "callback_not_allowed", "{body}");
        let message = body["error"]["message"].as_str().unwrap();
        assert!(message.contains(want), "{url}: {message}");
        assert!(!message.contains("hunter2"), "{message}");
    }
    let (_, list) = shim.get("/v1/operations").await;
    assert_eq!(list["operations"], json!([]), "nothing stored");
    // Within the bounds: accepted.
    let just = format!("{}/{}", recv.url, "a".repeat(2047 - recv.url.len()));
    assert_eq!(just.len(), 2048);
    let (code, body) = shim
        .register(json!({"upstream": "jobs", "operation": "ok", "callback_url": just}))
        .await;
    assert_eq!(code, 201, "{body}");
}

/// The standard config plus an azure-async upstream on the fake.
fn config() -> String {
    format!(
        "{CONFIG}
[upstreams.azure]
preset = \"azure-async\"
base_url = \"{{UP}}/azure/\"
poll = {{ initial = \"50ms\", multiplier = 1.5, max = \"200ms\", jitter = 0.1, deadline = \"1h\" }}
"
    )
}

#[cfg(unix)]
#[tokio::test]
async fn a_fresh_start_leaves_the_data_directory_private() {
    use std::os::unix::fs::PermissionsExt;
    let up = FakeUpstream::start().await;
    let recv = Receiver::start().await;
    let shim = TestShim::start(CONFIG, &up, &recv).await;
    let data = shim
        .running
        .as_ref()
        .unwrap()
        .shim
        .config
        .store
        .path
        .clone();
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&data), 0o700, "data directory");
    assert_eq!(mode(&data.join("db")), 0o600, "sled's db file");
    assert_eq!(mode(&data.join("conf")), 0o600, "sled's conf file");
}

#[tokio::test]
async fn an_azure_status_url_in_two_spellings_is_one_operation() {
    let up = FakeUpstream::start().await;
    let recv = Receiver::start().await;
    let shim = TestShim::start(&config(), &up, &recv).await;
    let path = "azure/subscriptions/s1/operations/op-1?api-version=2024-07-01";
    up.set(
        "/azure/subscriptions/s1/operations/op-1",
        json!({"status": "Running"}),
    );
    let plain = format!("{}/{path}", up.url);
    let (code, first) = shim
        .register(json!({"upstream": "azure", "operation": plain}))
        .await;
    assert_eq!(code, 201, "{first}");
    // The same URL with the IPv4 shorthand and an upper-case scheme.
    let short = plain.replace("http://127.0.0.1:", "HTTP://127.1:");
    assert_ne!(short, plain);
    let (code, second) = shim
        .register(json!({"upstream": "azure", "operation": short}))
        .await;
    assert_eq!(code, 200, "{second}");
    assert_eq!(id_of(&second), id_of(&first));
    assert_eq!(second["operation"], plain);
}
