//! Hostile peers and environments (issue 12): an endless or slow-dripping upstream body, random
//! webhook names, one upstream or receiver that hangs, a proxy in the environment, malformed
//! requests, idle and slowloris connections. Everything runs over loopback.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use crate::common::*;
use serde_json::{Value, json};

const CONFIG: &str = r#"
[server]
max_body = "1KiB"

[store]
path = "{DATA}"
cache = "8MiB"

[callbacks]
default_url = "{RECV}/callback"
timeout = "2s"
retry_schedule = ["100ms", "200ms"]

[upstreams.jobs]
base_url = "{UP}/"
status_path = "jobs/{operation}"
status_field = "/state"
succeeded = ["done"]
failed = ["error"]
timeout = "2s"
rate = { per_second = 1000, burst = 100 }
poll = { initial = "20ms", multiplier = 1.5, max = "100ms", jitter = 0.1, deadline = "1h" }
"#;

/// A loopback listener that counts the connections made to it (and answers none of them).
async fn connection_counter() -> (String, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let hits = Arc::new(AtomicUsize::new(0));
    let counted = hits.clone();
    tokio::spawn(async move {
        while let Ok((sock, _)) = listener.accept().await {
            counted.fetch_add(1, Ordering::SeqCst);
            drop(sock);
        }
    });
    (format!("http://{addr}"), hits)
}

// ---------------------------------------------------------------------------------------------
// D10: a proxy in the environment is not used.

const PROC_CONFIG: &str = r#"
[server]
listen = "127.0.0.1:{PORT}"

[store]
path = "{DATA}"
cache = "8MiB"

[callbacks]
default_url = "{RECV}/callback"
timeout = "2s"
retry_schedule = ["100ms", "200ms"]

[upstreams.jobs]
base_url = "{UP}/"
status_path = "jobs/{operation}"
headers = { Authorization = "Bearer upstream-secret" }
status_field = "/state"
succeeded = ["done"]
failed = ["error"]
timeout = "2s"
rate = { per_second = 1000, burst = 100 }
poll = { initial = "20ms", multiplier = 1.5, max = "100ms", jitter = 0.1, deadline = "1h" }
"#;

#[tokio::test]
async fn proxy_in_the_environment_is_not_used() {
    let up = FakeUpstream::start().await;
    let recv = Receiver::start().await;
    let (proxy, proxy_hits) = connection_counter().await;
    let mut setup = ProcSetup::new(
        &PROC_CONFIG
            .replace("{UP}", &up.url)
            .replace("{RECV}", &recv.url),
    );
    let p = proxy.as_str();
    let mut proc = setup.spawn_with_env(&[
        ("NO_PROXY", ""),
        ("no_proxy", ""),
        ("HTTP_PROXY", p),
        ("http_proxy", p),
        ("HTTPS_PROXY", p),
        ("ALL_PROXY", p),
        ("all_proxy", p),
    ]);
    // The test's own client must not use a proxy either.
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    proc.wait_healthy(&http, &setup.url).await;

    up.set("jobs/p1", json!({"state": "done"}));
    let r = http
        .post(format!("{}/v1/operations", setup.url))
        .json(&json!({"upstream": "jobs", "operation": "p1"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 201);
    let id = id_of(&r.json::<Value>().await.unwrap());

    // Either the callback arrives (straight from the upstream's answer) or the proxy is used.
    eventually(
        Duration::from_secs(10),
        "the callback, or a connection to the proxy",
        || async {
            (!recv.calls_for(&id).is_empty() || proxy_hits.load(Ordering::SeqCst) > 0).then_some(())
        },
    )
    .await;
    assert_eq!(
        proxy_hits.load(Ordering::SeqCst),
        0,
        "hookshim connected to the proxy named in the environment"
    );
    assert!(!up.requests_for("jobs/p1").is_empty());
    assert_eq!(
        up.header_values("jobs/p1", "authorization")[0],
        "Bearer upstream-secret"
    );
}

// ---------------------------------------------------------------------------------------------
// D5: webhooks to names that are not configured upstreams add no metric series.

#[tokio::test]
async fn webhooks_to_random_names_add_no_metric_series() {
    let up = FakeUpstream::start().await;
    let recv = Receiver::start().await;
    let shim = TestShim::start(CONFIG, &up, &recv).await;
    let big = vec![b'x'; 2048];
    let send = |name: String, oversized: bool| {
        let body = if oversized {
            big.clone()
        } else {
            b"{}".to_vec()
        };
        let shim = &shim;
        async move { post_raw(shim, &format!("/webhooks/{name}"), &[], body).await }
    };
    // One of each kind first, so the fixed series exist before measuring.
    assert_eq!(send("first-unknown".into(), false).await.0, 404);
    assert_eq!(send("first-big".into(), true).await.0, 413);
    let before = shim.metrics().await;
    let mut names = Vec::new();
    for i in 0..200 {
        let name = format!("rnd{}x{i}", rand_suffix(i));
        let (status, body) = send(name.clone(), i % 2 == 0).await;
        assert!(status == 404 || status == 413, "{name}: {status} {body}");
        names.push(name);
    }
    let after = shim.metrics().await;
    for name in names
        .iter()
        .chain([&"first-unknown".to_string(), &"first-big".to_string()])
    {
        assert!(
            !after.contains(name.as_str()),
            "/metrics has a series for {name}"
        );
    }
    assert!(
        after.len() <= before.len() + 16,
        "/metrics grew from {} to {} bytes",
        before.len(),
        after.len()
    );
    assert!(
        after.contains(r#"upstream="_unknown",result="too_large""#),
        "{after}"
    );
    assert!(
        after.contains(r#"upstream="_unknown",result="unknown_upstream""#),
        "{after}"
    );
}

fn rand_suffix(i: usize) -> u64 {
    // Distinct, unpredictable-looking names without a random-number dependency.
    (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 40
}

// ---------------------------------------------------------------------------------------------
// D11: every error the router answers is JSON.

/// Send `method path` and check the answer is `status` with a JSON error body of `code`;
/// returns the message.
async fn json_error(shim: &TestShim, method: &str, path: &str, status: u16, code: &str) -> String {
    let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
    let r = shim
        .http
        .request(method.clone(), format!("{}{path}", shim.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), status, "{method} {path}");
    let ct = r
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    assert!(
        ct.starts_with("application/json"),
        "{method} {path}: content-type {ct:?}"
    );
    let body: Value = r.json().await.unwrap_or(Value::Null);
    assert_eq!(body["error"]["code"], code, "{method} {path}: {body}");
    let msg = body["error"]["message"].as_str().unwrap_or("").to_string();
    assert!(!msg.is_empty(), "{method} {path}: empty message in {body}");
    msg
}

#[tokio::test]
async fn invalid_utf8_path_is_a_json_error() {
    let up = FakeUpstream::start().await;
    let recv = Receiver::start().await;
    let shim = TestShim::start(CONFIG, &up, &recv).await;
    json_error(&shim, "GET", "/v1/operations/%FF%FE", 400, "invalid_path").await;
    json_error(
        &shim,
        "DELETE",
        "/v1/operations/%C3%28",
        400,
        "invalid_path",
    )
    .await;
    json_error(
        &shim,
        "POST",
        "/v1/operations/%FF/redeliver",
        400,
        "invalid_path",
    )
    .await;
    json_error(&shim, "POST", "/webhooks/%FF", 400, "invalid_path").await;
}

#[tokio::test]
async fn method_not_allowed_is_a_json_error() {
    let up = FakeUpstream::start().await;
    let recv = Receiver::start().await;
    let shim = TestShim::start(CONFIG, &up, &recv).await;
    let msg = json_error(&shim, "PUT", "/v1/operations", 405, "method_not_allowed").await;
    assert!(msg.contains("PUT"), "{msg}");
    json_error(&shim, "DELETE", "/healthz", 405, "method_not_allowed").await;
    json_error(&shim, "GET", "/webhooks/jobs", 405, "method_not_allowed").await;
    // The Allow header survives the rewrite.
    let r = shim
        .http
        .put(format!("{}/v1/operations", shim.url))
        .send()
        .await
        .unwrap();
    let allow = r
        .headers()
        .get("allow")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    assert!(
        allow.contains("GET") && allow.contains("POST"),
        "allow: {allow:?}"
    );
}

#[tokio::test]
async fn list_limit_out_of_range_is_invalid_query() {
    let up = FakeUpstream::start().await;
    let recv = Receiver::start().await;
    let shim = TestShim::start(CONFIG, &up, &recv).await;
    for limit in ["0", "1001"] {
        let msg = json_error(
            &shim,
            "GET",
            &format!("/v1/operations?limit={limit}"),
            400,
            "invalid_query",
        )
        .await;
        assert!(msg.contains("1..=1000"), "{msg}");
    }
    let (code, _) = shim.get("/v1/operations?limit=1").await;
    assert_eq!(code, 200);
}

// ---------------------------------------------------------------------------------------------
// D1: upstream bodies are capped in size and time.

/// A loopback upstream that answers every request with `200`, a chunked JSON content type, and
/// then `body`: writes `chunk` after waiting `gap`, forever (until the client hangs up).
async fn misbehaving_upstream(chunk: &'static str, gap: Duration) -> FakeUpstream {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut sock, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = sock.read(&mut buf).await;
                let head = "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n";
                if sock.write_all(head.as_bytes()).await.is_err() {
                    return;
                }
                let framed = format!("{:x}\r\n{chunk}\r\n", chunk.len());
                loop {
                    if !gap.is_zero() {
                        tokio::time::sleep(gap).await;
                    }
                    if sock.write_all(framed.as_bytes()).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    FakeUpstream {
        url: format!("http://{addr}"),
        state: Default::default(),
    }
}

const BODY_CONFIG: &str = r#"
[server]
max_upstream_body = "64KiB"

[store]
path = "{DATA}"
cache = "8MiB"

[callbacks]
default_url = "{RECV}/callback"

[upstreams.jobs]
base_url = "{UP}/"
status_path = "jobs/{operation}"
status_field = "/state"
succeeded = ["done"]
failed = ["error"]
timeout = "1s"
rate = { per_second = 1000, burst = 100 }
poll = { initial = "50ms", multiplier = 1.5, max = "200ms", jitter = 0.1, deadline = "1h" }
"#;

/// Not ended by a poll error: still pending or running, with a next poll.
fn assert_still_tracked(op: &Value) {
    assert!(
        op["status"] == "pending" || op["status"] == "running",
        "the operation ended: {op}"
    );
    assert!(op["next_poll_at"].is_string(), "no next poll: {op}");
}

/// Register one operation against `up` and wait for a poll error containing `want`.
async fn poll_error_of(up: &FakeUpstream, want: &str) -> (TestShim, Value) {
    let recv = Receiver::start().await;
    let shim = TestShim::start(BODY_CONFIG, up, &recv).await;
    let (code, op) = shim
        .register(json!({"upstream": "jobs", "operation": "big"}))
        .await;
    assert_eq!(code, 201, "{op}");
    let id = id_of(&op);
    let op = eventually(
        Duration::from_secs(15),
        &format!("a poll error containing {want:?}"),
        || async {
            let o = shim.op(&id).await;
            o["last_poll_error"]
                .as_str()
                .is_some_and(|e| e.contains(want))
                .then_some(o)
        },
    )
    .await;
    (shim, op)
}

#[tokio::test]
async fn an_endless_status_body_is_a_transient_error() {
    let up = misbehaving_upstream(
        "{\"state\": \"running\", \"pad\": \"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx\"}",
        Duration::ZERO,
    )
    .await;
    let (shim, op) = poll_error_of(&up, "status response larger than 65536 bytes").await;
    assert_still_tracked(&op);
    let metrics = shim.metrics().await;
    assert!(
        metrics.contains(r#"upstream="jobs",outcome="body_too_large""#),
        "{metrics}"
    );
}

#[tokio::test]
async fn a_slow_drip_status_body_is_cut_by_the_timeout() {
    let up = misbehaving_upstream(" ", Duration::from_millis(100)).await;
    let started = std::time::Instant::now();
    let (_shim, op) = poll_error_of(&up, "timed out").await;
    assert_still_tracked(&op);
    // The first read was cut at the 1 s timeout, not after the body ended (it never does).
    assert!(started.elapsed() < Duration::from_secs(10));
}

// ---------------------------------------------------------------------------------------------
// D7: a hanging upstream or receiver holds only its share of the in-flight slots.

/// A loopback server that accepts every connection, reads the request, and never answers.
/// Returns its URL and the number of requests it is sitting on.
async fn hanging_server() -> (String, Arc<AtomicUsize>) {
    use tokio::io::AsyncReadExt;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let held = Arc::new(AtomicUsize::new(0));
    let counted = held.clone();
    tokio::spawn(async move {
        while let Ok((mut sock, _)) = listener.accept().await {
            let counted = counted.clone();
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                if matches!(sock.read(&mut buf).await, Ok(n) if n > 0) {
                    counted.fetch_add(1, Ordering::SeqCst);
                }
                // Hold the connection open without answering until the client gives up.
                while matches!(sock.read(&mut buf).await, Ok(n) if n > 0) {}
                counted.fetch_sub(1, Ordering::SeqCst);
            });
        }
    });
    (format!("http://{addr}"), held)
}

const FAIRNESS_CONFIG: &str = r#"
[store]
path = "{DATA}"
cache = "8MiB"

[callbacks]
default_url = "{RECV}/callback"
timeout = "60s"
retry_schedule = ["1s"]

[workers]
polls_in_flight = 16
deliveries_in_flight = 16

[upstreams.slow]
base_url = "{SLOW}/"
status_path = "jobs/{operation}"
status_field = "/state"
succeeded = ["done"]
failed = ["error"]
timeout = "60s"
rate = { per_second = 1000, burst = 1000 }
poll = { initial = "10ms", multiplier = 1.5, max = "100ms", jitter = 0.1, deadline = "1h" }

[upstreams.jobs]
base_url = "{UP}/"
status_path = "jobs/{operation}"
status_field = "/state"
succeeded = ["done"]
failed = ["error"]
timeout = "60s"
rate = { per_second = 1000, burst = 1000 }
poll = { initial = "10ms", multiplier = 1.5, max = "100ms", jitter = 0.1, deadline = "1h" }
"#;

#[tokio::test]
async fn a_hanging_upstream_does_not_starve_the_others() {
    let (slow, held) = hanging_server().await;
    let up = FakeUpstream::start().await;
    let recv = Receiver::start().await;
    let shim = TestShim::start(&FAIRNESS_CONFIG.replace("{SLOW}", &slow), &up, &recv).await;
    for i in 0..100 {
        let (code, op) = shim
            .register(json!({"upstream": "slow", "operation": format!("s{i}")}))
            .await;
        assert_eq!(code, 201, "{op}");
    }
    // The hanging upstream holds as many requests as it may (¾ of 16 = 12).
    eventually(
        Duration::from_secs(10),
        "the slow upstream to hold its share of the slots",
        || async { (held.load(Ordering::SeqCst) >= 12).then_some(()) },
    )
    .await;
    up.set("jobs/quick", json!({"state": "done"}));
    let (_, op) = shim
        .register(json!({"upstream": "jobs", "operation": "quick"}))
        .await;
    let id = id_of(&op);
    let start = std::time::Instant::now();
    wait_calls(&recv, &id, 1).await;
    assert!(start.elapsed() < Duration::from_secs(10));
    // The slow upstream's requests are all still in flight, and held to its share.
    let now_held = held.load(Ordering::SeqCst);
    assert!(
        (12..=12).contains(&now_held),
        "slow upstream holds {now_held}"
    );
    let (_, list) = shim.get("/v1/operations?upstream=slow&limit=1000").await;
    let ops = list["operations"].as_array().unwrap();
    assert_eq!(ops.len(), 100);
    assert!(ops.iter().all(|o| o["status"] == "pending"), "{list}");
}

#[tokio::test]
async fn a_dead_receiver_does_not_delay_other_callbacks() {
    let (dead, held) = hanging_server().await;
    let up = FakeUpstream::start().await;
    let recv = Receiver::start().await;
    let shim = TestShim::start(&FAIRNESS_CONFIG.replace("{SLOW}", &up.url), &up, &recv).await;
    for i in 0..40 {
        up.set(&format!("jobs/d{i}"), json!({"state": "done"}));
        let (code, op) = shim
            .register(json!({"upstream": "jobs", "operation": format!("d{i}"),
                "callback_url": format!("{dead}/callback")}))
            .await;
        assert_eq!(code, 201, "{op}");
    }
    eventually(
        Duration::from_secs(10),
        "the dead receiver to hold its share of the slots",
        || async { (held.load(Ordering::SeqCst) >= 12).then_some(()) },
    )
    .await;
    up.set("jobs/alive", json!({"state": "done"}));
    let (_, op) = shim
        .register(json!({"upstream": "jobs", "operation": "alive"}))
        .await;
    let id = id_of(&op);
    let start = std::time::Instant::now();
    wait_calls(&recv, &id, 1).await;
    assert!(start.elapsed() < Duration::from_secs(10));
    let now_held = held.load(Ordering::SeqCst);
    assert_eq!(now_held, 12, "the dead receiver holds {now_held} attempts");
}

// ---------------------------------------------------------------------------------------------
// D3: idle and slowloris connections are closed after the header-read timeout; a connection cap.

const CONN_CONFIG: &str = r#"
[server]
header_read_timeout = "1s"
max_connections = 200

[store]
path = "{DATA}"
cache = "8MiB"

[callbacks]
default_url = "{RECV}/callback"

[upstreams.jobs]
base_url = "{UP}/"
status_path = "jobs/{operation}"
status_field = "/state"
succeeded = ["done"]
failed = ["error"]
"#;

/// Whether the server closes `sock` within `limit` (EOF or a reset; any answer before is read).
async fn closed_within(sock: &mut tokio::net::TcpStream, limit: Duration) -> bool {
    use tokio::io::AsyncReadExt;
    let mut buf = [0u8; 1024];
    let start = std::time::Instant::now();
    loop {
        let left = limit.saturating_sub(start.elapsed());
        match tokio::time::timeout(left, sock.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => continue,
        }
    }
}

/// GET /healthz over a new raw connection; the status line.
async fn raw_healthz(addr: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut sock = tokio::net::TcpStream::connect(addr).await.unwrap();
    sock.write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), sock.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out)
        .lines()
        .next()
        .unwrap_or("")
        .to_string()
}

#[tokio::test]
async fn idle_and_slowloris_connections_are_closed_and_healthz_answers() {
    use tokio::io::AsyncWriteExt;
    let up = FakeUpstream::start().await;
    let recv = Receiver::start().await;
    let shim = TestShim::start(CONN_CONFIG, &up, &recv).await;
    let addr = shim.url.trim_start_matches("http://").to_string();
    let mut idle = Vec::new();
    for _ in 0..100 {
        idle.push(tokio::net::TcpStream::connect(&addr).await.unwrap());
    }
    let mut slow = Vec::new();
    for _ in 0..20 {
        let mut s = tokio::net::TcpStream::connect(&addr).await.unwrap();
        s.write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\nx-slow: ")
            .await
            .unwrap();
        slow.push(s);
    }
    // Meanwhile the service answers.
    assert_eq!(raw_healthz(&addr).await, "HTTP/1.1 200 OK");
    let (code, _) = shim.get("/healthz").await;
    assert_eq!(code, 200);
    // A slowloris that keeps dripping header bytes is cut all the same.
    for s in slow.iter_mut().take(5) {
        s.write_all(b"a").await.unwrap();
    }
    for (i, s) in idle.iter_mut().chain(slow.iter_mut()).enumerate() {
        assert!(
            closed_within(s, Duration::from_secs(10)).await,
            "connection {i} is still open after the header-read timeout"
        );
    }
    assert_eq!(raw_healthz(&addr).await, "HTTP/1.1 200 OK");
}

#[tokio::test]
async fn connections_over_the_cap_wait_for_a_free_slot() {
    let up = FakeUpstream::start().await;
    let recv = Receiver::start().await;
    let config = CONN_CONFIG.replace("max_connections = 200", "max_connections = 4");
    let shim = TestShim::start(&config, &up, &recv).await;
    let addr = shim.url.trim_start_matches("http://").to_string();
    let mut idle = Vec::new();
    for _ in 0..4 {
        idle.push(tokio::net::TcpStream::connect(&addr).await.unwrap());
    }
    // A fifth connection is answered only once the idle ones were closed for sitting idle.
    assert_eq!(raw_healthz(&addr).await, "HTTP/1.1 200 OK");
    for (i, s) in idle.iter_mut().enumerate() {
        assert!(
            closed_within(s, Duration::from_millis(1)).await,
            "idle connection {i} was still open when the fifth was served"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// D1 (cont.): DELETE stops the operation's status read in flight.

#[tokio::test]
async fn delete_stops_a_status_read_in_flight() {
    let (slow, held) = hanging_server().await;
    let up = FakeUpstream::start().await;
    let recv = Receiver::start().await;
    let shim = TestShim::start(&FAIRNESS_CONFIG.replace("{SLOW}", &slow), &up, &recv).await;
    let (_, op) = shim
        .register(json!({"upstream": "slow", "operation": "stuck"}))
        .await;
    let id = id_of(&op);
    eventually(
        Duration::from_secs(10),
        "the status read to hang",
        || async { (held.load(Ordering::SeqCst) == 1).then_some(()) },
    )
    .await;
    let r = shim
        .http
        .delete(format!("{}/v1/operations/{id}", shim.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    // The upstream timeout is 60 s: the request is dropped by the DELETE, not by the timeout.
    eventually(
        Duration::from_secs(5),
        "the hanging status request to be dropped",
        || async { (held.load(Ordering::SeqCst) == 0).then_some(()) },
    )
    .await;
}
