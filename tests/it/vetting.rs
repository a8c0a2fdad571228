//! Issue 12 (hardening), part 3: each test here failed before its fix.
//! - The data directory is private (0700, its files 0600) after a fresh start.
//! - An Azure status URL registered in two spellings (`127.1` and `127.0.0.1`) is one operation.

use crate::common::*;
use serde_json::json;

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
