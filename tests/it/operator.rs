//! Issue 14, the operator's API: `PATCH /v1/operations/{id}` (callback URL, metadata, deadline),
//! `delivery=` list filters, the per-attempt history, bulk redelivery by filter and time range
//! (`POST /v1/redeliver`). In process, over loopback, with a real sled store.

use std::time::Duration;

use serde_json::{Value, json};

use crate::common::*;

async fn patch(shim: &TestShim, id: &str, body: &Value) -> (u16, Value) {
    let r = shim
        .http
        .patch(format!("{}/v1/operations/{id}", shim.url))
        .json(body)
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
}

async fn register(shim: &TestShim, up: &FakeUpstream, name: &str, state: &str) -> String {
    up.set(&format!("jobs/{name}"), json!({"state": state}));
    let (code, op) = shim
        .register(json!({"upstream": "jobs", "operation": name}))
        .await;
    assert_eq!(code, 201, "{op}");
    id_of(&op)
}

async fn wait_delivery(shim: &TestShim, id: &str, state: &str) -> Value {
    eventually(
        Duration::from_secs(10),
        &format!("{id} delivery to be {state}"),
        || async {
            let op = shim.op(id).await;
            (op["delivery"]["state"] == state).then_some(op)
        },
    )
    .await
}

fn ids(list: &Value) -> Vec<String> {
    let mut v: Vec<String> = list["operations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["id"].as_str().unwrap().to_string())
        .collect();
    v.sort();
    v
}

fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v
}

#[tokio::test]
async fn patch_changes_callback_url_metadata_and_deadline() {
    let up = FakeUpstream::start().await;
    let recv = Receiver::start().await;
    let other = Receiver::start().await;
    let shim = TestShim::start(CONFIG, &up, &recv).await;
    let id = register(&shim, &up, "p1", "running").await;

    let (code, op) = patch(
        &shim,
        &id,
        &json!({"callback_url": format!("{}/moved", other.url), "metadata": {"order": 7}, "deadline": "2h"}),
    )
    .await;
    assert_eq!(code, 200, "{op}");
    assert_eq!(op["callback_url"], format!("{}/moved", other.url));
    assert_eq!(op["metadata"], json!({"order": 7}));
    let deadline = humantime::parse_rfc3339(op["deadline_at"].as_str().unwrap()).unwrap();
    let ahead = deadline
        .duration_since(std::time::SystemTime::now())
        .unwrap();
    assert!(
        ahead > Duration::from_secs(7000) && ahead <= Duration::from_secs(7200),
        "deadline 2h from now: {op}"
    );
    // An RFC 3339 deadline is kept as written.
    let at = std::time::SystemTime::now() + Duration::from_secs(30 * 86_400);
    let at = humantime::format_rfc3339_seconds(at).to_string();
    let kept = at.replace('Z', ".000Z");
    let (code, op) = patch(&shim, &id, &json!({"deadline": at})).await;
    assert_eq!(code, 200, "{op}");
    assert_eq!(op["deadline_at"], kept);
    assert_eq!(op["metadata"], json!({"order": 7}), "absent fields stay");

    // Refused changes leave the record as it was.
    for (body, status, code) in [
        (json!({"nope": 1}), 400, "invalid_json"),
        (
            json!({"callback_url": "http://evil.example/"}),
            422,
            "callback_not_allowed",
        ),
        (json!({"deadline": "soon"}), 422, "invalid_deadline"),
        (
            json!({"deadline": "2001-01-01T00:00:00Z"}),
            422,
            "invalid_deadline",
        ),
        (
            json!({"metadata": {"x": "y".repeat(17 * 1024)}}),
            422,
            "metadata_too_large",
        ),
        (
            json!({"metadata": {"a": 1}, "deadline": "0s"}),
            422,
            "invalid_deadline",
        ),
    ] {
        let (got, err) = patch(&shim, &id, &body).await;
        assert_eq!(got, status, "{body} → {err}");
        assert_eq!(err["error"]["code"], code, "{err}");
    }
    let (code, err) = patch(&shim, "op_nosuchthing", &json!({"metadata": {}})).await;
    assert_eq!(
        (code, err["error"]["code"].as_str()),
        (404, Some("operation_not_found"))
    );
    let op = shim.op(&id).await;
    assert_eq!(op["metadata"], json!({"order": 7}), "{op}");
    assert_eq!(op["deadline_at"], kept);

    // The callback goes to the new URL, with the new metadata.
    up.set("jobs/p1", json!({"state": "done"}));
    let call = exactly_one_callback(&other, &id, QUIET).await;
    assert!(call.verified);
    assert_eq!(call.body["data"]["metadata"], json!({"order": 7}));
    assert!(recv.calls_for(&id).is_empty(), "nothing to the old URL");

    // Finished: the body is fixed, so metadata and deadline are refused; the URL may change.
    for body in [
        json!({"metadata": {"late": true}}),
        json!({"deadline": "1h"}),
        json!({"callback_url": null}),
    ] {
        let (code, err) = patch(&shim, &id, &body).await;
        assert_eq!(code, 409, "{body} → {err}");
        assert_eq!(err["error"]["code"], "already_terminal", "{err}");
    }
    let (code, op) = patch(
        &shim,
        &id,
        &json!({"callback_url": format!("{}/callback", recv.url)}),
    )
    .await;
    assert_eq!(code, 200, "{op}");
    let (code, _) = shim
        .post(&format!("/v1/operations/{id}/redeliver"), &json!({}))
        .await;
    assert_eq!(code, 202);
    let again = exactly_one_callback(&recv, &id, QUIET).await;
    assert_eq!(again.raw, call.raw, "the same body at the new URL");
}

#[tokio::test]
async fn patch_null_removes_metadata_and_callback_url() {
    let up = FakeUpstream::start().await;
    let recv = Receiver::start().await;
    let shim = TestShim::start(CONFIG, &up, &recv).await;
    up.set("jobs/quiet", json!({"state": "running"}));
    let (_, op) = shim
        .register(json!({"upstream": "jobs", "operation": "quiet", "metadata": {"a": 1}}))
        .await;
    let id = id_of(&op);
    let (code, op) = patch(&shim, &id, &json!({"metadata": null, "callback_url": null})).await;
    assert_eq!(code, 200, "{op}");
    assert!(
        op["metadata"].is_null() && op["callback_url"].is_null(),
        "{op}"
    );
    up.set("jobs/quiet", json!({"state": "done"}));
    wait_status(&shim, &id, "succeeded").await;
    tokio::time::sleep(QUIET).await;
    assert!(
        recv.calls_for(&id).is_empty(),
        "tracked for local polling only"
    );
    assert_eq!(shim.op(&id).await["delivery"]["state"], "none");
}

/// An upstream polled once an hour: only the deadline ends its operation soon.
const HOURLY: &str = concat!(
    store_and_callbacks!(),
    r#"
[upstreams.slow]
base_url = "{UP}/"
status_path = "jobs/{operation}"
status_field = "/state"
succeeded = ["done"]
failed = ["error"]
rate = { per_second = 200, burst = 20 }
poll = { initial = "1h", max = "1h", jitter = 0.0, deadline = "24h" }
"#
);

#[tokio::test]
async fn a_deadline_moved_earlier_ends_the_operation_then() {
    let up = FakeUpstream::start().await;
    let recv = Receiver::start().await;
    let shim = TestShim::start(HOURLY, &up, &recv).await;
    up.set("jobs/long", json!({"state": "running"}));
    let (_, op) = shim
        .register(json!({"upstream": "slow", "operation": "long"}))
        .await;
    let id = id_of(&op);
    let (code, op) = patch(&shim, &id, &json!({"deadline": "300ms"})).await;
    assert_eq!(code, 200, "{op}");
    assert_eq!(
        op["next_poll_at"], op["deadline_at"],
        "the deadline is the next look: {op}"
    );
    let done = wait_status(&shim, &id, "timed_out").await;
    assert_eq!(done["detected_via"], "deadline", "{done}");
    exactly_one_callback(&recv, &id, QUIET).await;
}

#[tokio::test]
async fn list_filters_by_delivery_state() {
    let up = FakeUpstream::start().await;
    let recv = Receiver::start().await;
    let shim = TestShim::start(CONFIG, &up, &recv).await;
    // Failed callbacks fail for good; expired ones wait an hour for a retry (pending).
    recv.set_for_type("operation.failed", Some(Behaviour::Status(500)));
    recv.set_for_type(
        "operation.expired",
        Some(Behaviour::StatusWith(
            429,
            vec![("retry-after", "3600".into())],
        )),
    );
    let delivered = register(&shim, &up, "ok", "done").await;
    let failed = register(&shim, &up, "bad", "error").await;
    let pending = register(&shim, &up, "old", "expired").await;
    let none = register(&shim, &up, "busy", "running").await;
    wait_delivery(&shim, &delivered, "delivered").await;
    wait_delivery(&shim, &failed, "failed").await;
    eventually(Duration::from_secs(10), "a first attempt", || async {
        (shim.op(&pending).await["delivery"]["attempts"] == 1).then_some(())
    })
    .await;
    for (state, want) in [
        ("delivered", &delivered),
        ("failed", &failed),
        ("pending", &pending),
        ("none", &none),
    ] {
        let (code, list) = shim.get(&format!("/v1/operations?delivery={state}")).await;
        assert_eq!(code, 200, "{list}");
        assert_eq!(ids(&list), vec![want.clone()], "delivery={state}");
    }
    let (code, list) = shim
        .get("/v1/operations?delivery=failed&status=succeeded")
        .await;
    assert_eq!((code, ids(&list)), (200, vec![]));
    let (code, err) = shim.get("/v1/operations?delivery=lost").await;
    assert_eq!(code, 400, "{err}");
    assert_eq!(err["error"]["code"], "invalid_query");
    // The pending one's history says why it waits.
    let op = shim.op(&pending).await;
    let h = &op["delivery"]["history"][0];
    assert_eq!(h["status"], 429, "{op}");
    assert!(h["error"].as_str().unwrap().contains("429"), "{op}");
}

#[tokio::test]
async fn bulk_redeliver_by_filter_and_time_range() {
    let up = FakeUpstream::start().await;
    let recv = Receiver::start().await;
    let shim = TestShim::start(CONFIG, &up, &recv).await;
    recv.set_default(Behaviour::Status(500));
    let early: Vec<String> = register_failed(&shim, &up, &["e1", "e2", "e3"]).await;
    let (_, op) = shim.get(&format!("/v1/operations/{}", early[2])).await;
    let cut = op["completed_at"].as_str().unwrap().to_string();
    tokio::time::sleep(Duration::from_millis(20)).await;
    let late: Vec<String> = register_failed(&shim, &up, &["l1", "l2", "l3"]).await;
    recv.set_default(Behaviour::Status(200));

    // Bad requests change nothing.
    for (body, what) in [
        (json!({"delivery": "pending"}), "delivery"),
        (json!({"status": "running"}), "status"),
        (json!({"limit": 0}), "limit"),
        (json!({"limit": 1001}), "limit"),
        (json!({"completed_after": "yesterday"}), "completed_after"),
    ] {
        let (code, err) = shim.post("/v1/redeliver", &body).await;
        assert_eq!(code, 400, "{body} → {err}");
        assert_eq!(err["error"]["code"], "invalid_query");
        assert!(
            err["error"]["message"].as_str().unwrap().contains(what),
            "{err}"
        );
    }
    let (code, err) = shim.post("/v1/redeliver", &json!({"what": 1})).await;
    assert_eq!(
        (code, err["error"]["code"].as_str()),
        (400, Some("invalid_json"))
    );

    // Those that ended after the cut, two at a time.
    let (code, first) = shim
        .post(
            "/v1/redeliver",
            &json!({"completed_after": cut, "limit": 2, "upstream": "jobs"}),
        )
        .await;
    assert_eq!(code, 202, "{first}");
    assert_eq!(first["redelivered"], 2, "{first}");
    let cursor = first["next_cursor"]
        .as_str()
        .expect("more to do")
        .to_string();
    let (code, second) = shim
        .post(
            "/v1/redeliver",
            &json!({"completed_after": cut, "limit": 2, "cursor": cursor}),
        )
        .await;
    assert_eq!(code, 202, "{second}");
    let mut done: Vec<String> = serde_json::from_value(first["ids"].clone()).unwrap();
    done.extend(serde_json::from_value::<Vec<String>>(second["ids"].clone()).unwrap());
    // e3 ended exactly at the cut (included), l1, l2 and l3 after it.
    let mut want = vec![
        early[2].clone(),
        late[0].clone(),
        late[1].clone(),
        late[2].clone(),
    ];
    want.sort();
    assert_eq!(sorted(done), want);
    assert!(second["next_cursor"].is_null(), "{second}");
    for id in &want {
        let op = wait_delivery(&shim, id, "delivered").await;
        assert_eq!(op["delivery"]["redeliveries"], 1, "{op}");
    }
    for id in &early[..2] {
        assert_eq!(shim.op(id).await["delivery"]["state"], "failed");
    }
    // Before the cut: the other two. Delivered ones are left alone unless asked for.
    let (code, rest) = shim
        .post("/v1/redeliver", &json!({"completed_before": cut}))
        .await;
    assert_eq!(code, 202, "{rest}");
    let got: Vec<String> = serde_json::from_value(rest["ids"].clone()).unwrap();
    assert_eq!(sorted(got), sorted(early[..2].to_vec()));
    for id in &early[..2] {
        wait_delivery(&shim, id, "delivered").await;
    }
    let (_, again) = shim.post("/v1/redeliver", &json!({})).await;
    assert_eq!(again["redelivered"], 0, "nothing failed any more: {again}");
    // A replay of delivered callbacks, when asked for: the oldest one.
    let (_, replay) = shim
        .post(
            "/v1/redeliver",
            &json!({"delivery": "delivered", "status": "succeeded", "limit": 1}),
        )
        .await;
    assert_eq!(replay["ids"], json!([early[0]]), "{replay}");
    let calls = wait_calls(&recv, &early[0], 6).await;
    assert_eq!(calls[5].raw, calls[0].raw);
    assert_eq!(calls[5].webhook_id, format!("{}_terminal", early[0]));
}

/// Register operations that end at once while the receiver refuses (500): their callbacks
/// fail for good.
async fn register_failed(shim: &TestShim, up: &FakeUpstream, names: &[&str]) -> Vec<String> {
    let mut out = Vec::new();
    for n in names {
        let id = register(shim, up, n, "done").await;
        wait_delivery(shim, &id, "failed").await;
        out.push(id);
    }
    out
}
