//! The public face and the private face (issue 12): `server.webhook_listen` serves upstream
//! webhooks and `/healthz` only, with a per-address connection cap; the API stays on
//! `server.listen`, and an API on a non-loopback address without a token is refused at start.

use std::time::Duration;

use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::common::*;

fn config_with_public_listener(per_ip: usize) -> String {
    format!(
        "[server]\nwebhook_listen = \"127.0.0.1:0\"\nmax_connections_per_ip = {per_ip}\n{CONFIG}"
    )
}

#[tokio::test]
async fn the_public_listener_serves_webhooks_and_health_only() {
    let up = FakeUpstream::start().await;
    let recv = Receiver::start().await;
    let shim = TestShim::start(&config_with_public_listener(64), &up, &recv).await;
    let public = shim.webhook_url.clone().expect("a public listener");
    let http = reqwest::Client::new();

    up.set("pushy/p1", json!({"state": "done", "output": {"n": 1}}));
    let (_, op) = shim
        .register(json!({"upstream": "pushy", "operation": "p1"}))
        .await;
    let id = id_of(&op);

    // A signed webhook through the public face is taken and ends the operation.
    let body = serde_json::to_vec(&json!({"type": "job.done", "data": {"id": "p1"}})).unwrap();
    let ts = time_now_secs();
    let sig = standardwebhooks::Webhook::new(PUSHY_SECRET)
        .unwrap()
        .sign("msg_p1", ts as i64, &body)
        .unwrap();
    let r = http
        .post(format!("{public}/webhooks/pushy"))
        .header("content-type", "application/json")
        .header("webhook-id", "msg_p1")
        .header("webhook-timestamp", ts.to_string())
        .header("webhook-signature", sig)
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let done = wait_status(&shim, &id, "succeeded").await;
    assert_eq!(done["detected_via"], "webhook");

    let health = http.get(format!("{public}/healthz")).send().await.unwrap();
    assert_eq!(health.status(), 200);

    // Nothing else: no API, no metrics, no readiness details — each a JSON 404.
    for (method, path) in [
        ("GET", format!("/v1/operations/{id}")),
        ("GET", "/v1/operations".to_string()),
        ("POST", "/v1/operations".to_string()),
        ("POST", format!("/v1/operations/{id}/redeliver")),
        ("GET", "/metrics".to_string()),
        ("GET", "/readyz".to_string()),
    ] {
        let r = http
            .request(method.parse().unwrap(), format!("{public}{path}"))
            .json(&json!({"upstream": "jobs", "operation": "x"}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 404, "{method} {path} on the public listener");
        let v: serde_json::Value = r.json().await.unwrap();
        assert_eq!(v["error"]["code"], "not_found", "{method} {path}: {v}");
    }
    // The private face still has all of it.
    assert_eq!(shim.get(&format!("/v1/operations/{id}")).await.0, 200);
    assert!(shim.metrics().await.contains("hookshim_"));
}

/// Open a connection and see whether the server keeps it: a refused one is closed at once.
async fn kept_open(addr: &str) -> (tokio::net::TcpStream, bool) {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut buf = [0u8; 1];
    let closed = matches!(
        tokio::time::timeout(Duration::from_millis(300), s.read(&mut buf)).await,
        Ok(Ok(0)) | Ok(Err(_))
    );
    (s, !closed)
}

#[tokio::test]
async fn one_address_cannot_hold_more_than_its_share_of_the_public_listener() {
    let up = FakeUpstream::start().await;
    let recv = Receiver::start().await;
    let shim = TestShim::start(&config_with_public_listener(4), &up, &recv).await;
    let public = shim.webhook_url.clone().unwrap();
    let addr = public.trim_start_matches("http://").to_string();

    let mut held = Vec::new();
    for i in 0..4 {
        let (s, open) = kept_open(&addr).await;
        assert!(open, "connection {i} of 4 is within the share");
        held.push(s);
    }
    let (_, open) = kept_open(&addr).await;
    assert!(
        !open,
        "a fifth connection from the same address is closed at once"
    );
    // The private listener is not capped per address.
    let (_, open) = kept_open(shim.url.trim_start_matches("http://")).await;
    assert!(open);

    // A slot freed is a slot that can be used again.
    drop(held.pop());
    tokio::time::sleep(Duration::from_millis(100)).await;
    let (mut s, open) = kept_open(&addr).await;
    assert!(open, "after one closed, a new one is kept");
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut answer = String::new();
    s.read_to_string(&mut answer).await.unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
}

#[test]
fn an_open_api_on_a_non_loopback_address_is_refused_unless_accepted() {
    let text = |server: &str| format!("[server]\n{server}\n");
    let parse = |t: &str, token: bool| {
        hookshim::config::Config::parse(t, "shim.toml", &|name| {
            (token && name == "HOOKSHIM_API_TOKEN").then(|| "s3cret".to_string())
        })
    };
    let err = parse(&text("listen = \"0.0.0.0:8680\""), false)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("`server.listen`")
            && err.contains("HOOKSHIM_API_TOKEN")
            && err.contains("allow_unauthenticated"),
        "{err}"
    );
    // A token, a loopback address, or an explicit acceptance each make it start.
    assert!(parse(&text("listen = \"0.0.0.0:8680\""), true).is_ok());
    assert!(parse(&text("listen = \"127.0.0.1:8680\""), false).is_ok());
    assert!(
        parse(
            &text("listen = \"0.0.0.0:8680\"\nallow_unauthenticated = true"),
            false
        )
        .is_ok()
    );
    // The public listener needs a port of its own.
    let err = parse(
        &text("listen = \"127.0.0.1:8680\"\nwebhook_listen = \"127.0.0.1:8680\""),
        false,
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("`server.webhook_listen`"), "{err}");
}
