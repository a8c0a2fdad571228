//! Callbacks to a receiver that misbehaves: errors, timeouts, 410, redirects, Retry-After, and
//! redelivery. Every attempt of one operation carries the same `webhook-id`.

use std::time::Duration;

use crate::common::*;
use serde_json::{Value, json};

/// Register `jobs/{name}` with the upstream already answering `done`; return the hookshim id.
async fn register_done(shim: &TestShim, up: &FakeUpstream, name: &str) -> String {
    up.set(
        &format!("jobs/{name}"),
        json!({"state": "done", "output": {"name": name}}),
    );
    let (code, op) = shim
        .register(json!({"upstream": "jobs", "operation": name}))
        .await;
    assert_eq!(code, 201, "{op}");
    op["id"].as_str().unwrap().to_string()
}

/// Wait until the operation's delivery state is `state` (and return the record).
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

/// Every call has the operation's terminal webhook-id and a valid signature.
fn assert_same_verified_id(calls: &[Call], id: &str) {
    for (i, c) in calls.iter().enumerate() {
        assert_eq!(
            c.webhook_id,
            format!("{id}_terminal"),
            "attempt {} has another webhook-id",
            i + 1
        );
        assert!(c.verified, "attempt {} does not verify: {c:?}", i + 1);
    }
}

fn failed_delivery_ids(list: &Value) -> Vec<String> {
    list["operations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["id"].as_str().unwrap().to_string())
        .collect()
}

on_each_store! {
    #[tokio::test]
    async fn server_errors_are_retried_with_the_same_webhook_id(store) {
        let up = FakeUpstream::start().await;
        let recv = Receiver::start().await;
        let shim = TestShim::start_on(&store, CONFIG, &up, &recv).await;
        recv.script(vec![Behaviour::Status(500), Behaviour::Status(500)]);
        let id = register_done(&shim, &up, "e500").await;

        let calls = wait_calls(&recv, &id, 3).await;
        let op = wait_delivery(&shim, &id, "delivered").await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        let calls_after = recv.calls_for(&id);
        assert_eq!(calls_after.len(), 3, "no attempt after success");
        assert_same_verified_id(&calls, &id);
        let answered: Vec<u16> = calls.iter().map(|c| c.answered).collect();
        assert_eq!(answered, vec![500, 500, 200]);
        // The body is the same on every attempt (only the timestamp header may change).
        assert!(calls.iter().all(|c| c.raw == calls[0].raw));
        assert_eq!(op["delivery"]["attempts"], 3);
        assert_eq!(op["delivery"]["last_status"], 200);
        assert!(op["delivery"]["last_error"].is_null());
    }
}

on_each_store! {
    #[tokio::test]
    async fn receiver_timeout_is_retried_with_the_same_webhook_id(store) {
        let up = FakeUpstream::start().await;
        let recv = Receiver::start().await;
        let config = CONFIG.replace("timeout = \"1s\"", "timeout = \"300ms\"");
        assert_ne!(config, CONFIG);
        let shim = TestShim::start_on(&store, &config, &up, &recv).await;
        recv.script(vec![Behaviour::Slow(Duration::from_millis(1500))]);
        let id = register_done(&shim, &up, "slow").await;

        let calls = wait_calls(&recv, &id, 2).await;
        let op = wait_delivery(&shim, &id, "delivered").await;
        assert_same_verified_id(&calls, &id);
        assert_eq!(
            op["delivery"]["attempts"], 2,
            "the slow answer counted as a failed attempt: {op}"
        );
        assert!(
            shim.metrics()
                .await
                .contains("hookshim_callback_attempts_total{result=\"timeout\"} 1")
        );
    }
}

on_each_store! {
    #[tokio::test]
    async fn gone_stops_after_one_attempt(store) {
        let up = FakeUpstream::start().await;
        let recv = Receiver::start().await;
        let shim = TestShim::start_on(&store, CONFIG, &up, &recv).await;
        recv.set_default(Behaviour::Status(410));
        let id = register_done(&shim, &up, "gone").await;

        let op = wait_delivery(&shim, &id, "failed").await;
        assert_eq!(op["delivery"]["attempts"], 1);
        assert_eq!(op["delivery"]["last_status"], 410);
        assert!(op["delivery"]["next_attempt_at"].is_null());
        // Longer than the whole retry schedule (100 + 200 + 300 ms, +20 % jitter).
        tokio::time::sleep(Duration::from_millis(900)).await;
        assert_eq!(recv.calls_for(&id).len(), 1, "no retry after 410");
        assert_eq!(shim.op(&id).await["delivery"]["attempts"], 1);
    }
}

on_each_store! {
    #[tokio::test]
    async fn redirects_are_not_followed(store) {
        let up = FakeUpstream::start().await;
        let recv = Receiver::start().await;
        let shim = TestShim::start_on(&store, CONFIG, &up, &recv).await;
        let elsewhere = format!("{}/elsewhere", recv.url);
        // 302 (a follower would turn it into a GET) and 307 (a follower would re-POST to
        // /elsewhere, which answers 200 and would count as delivered).
        for (code, name) in [(302, "r302"), (307, "r307")] {
            recv.set_default(Behaviour::StatusWith(
                code,
                vec![("location", elsewhere.clone())],
            ));
            let id = register_done(&shim, &up, name).await;
            let op = wait_delivery(&shim, &id, "failed").await;
            assert_eq!(op["delivery"]["attempts"], 4, "{op}");
            assert_eq!(
                op["delivery"]["last_status"], code,
                "the redirect itself was the answer: {op}"
            );
            let calls = recv.calls_for(&id);
            assert_eq!(calls.len(), 4, "every attempt hit the callback path");
            assert_same_verified_id(&calls, &id);
            assert!(calls.iter().all(|c| c.answered == code));
        }
        // Only callback-path calls were recorded, and each was an attempt above.
        assert_eq!(recv.calls().len(), 8);
        assert!(
            shim.metrics()
                .await
                .contains("hookshim_callback_attempts_total{result=\"redirect\"} 8")
        );
    }
}

on_each_store! {
    #[tokio::test]
    async fn failed_delivery_is_listed_and_can_be_redelivered(store) {
        let up = FakeUpstream::start().await;
        let recv = Receiver::start().await;
        let shim = TestShim::start_on(&store, CONFIG, &up, &recv).await;
        recv.set_default(Behaviour::Status(500));
        let id = register_done(&shim, &up, "redo").await;

        let op = wait_delivery(&shim, &id, "failed").await;
        assert_eq!(op["delivery"]["attempts"], 4, "{op}");
        assert_eq!(op["delivery"]["last_status"], 500);
        assert!(
            op["delivery"]["last_error"]
                .as_str()
                .unwrap()
                .contains("gave up after 4 attempts"),
            "{op}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(recv.calls_for(&id).len(), 4, "no attempt after giving up");
        let (code, list) = shim.get("/v1/operations?delivery=failed").await;
        assert_eq!(code, 200, "{list}");
        assert_eq!(failed_delivery_ids(&list), vec![id.clone()]);

        recv.set_default(Behaviour::Status(200));
        let (code, body) = shim
            .post(&format!("/v1/operations/{id}/redeliver"), &json!({}))
            .await;
        assert_eq!(code, 202, "{body}");
        assert_eq!(body["id"], id.as_str());
        let calls = wait_calls(&recv, &id, 5).await;
        let op = wait_delivery(&shim, &id, "delivered").await;
        assert_same_verified_id(&calls, &id);
        assert_eq!(calls[4].answered, 200);
        assert_eq!(calls[4].raw, calls[0].raw, "the same callback body");
        // The count and the history go on across the redelivery; the retry schedule restarts.
        assert_eq!(op["delivery"]["attempts"], 5, "{op}");
        assert_eq!(op["delivery"]["redeliveries"], 1, "{op}");
        assert_eq!(op["delivery"]["attempts_before_redelivery"], 4, "{op}");
        let history = op["delivery"]["history"].as_array().unwrap();
        let statuses: Vec<&Value> = history.iter().map(|a| &a["status"]).collect();
        assert_eq!(
            statuses,
            [500, 500, 500, 500, 200]
                .map(|s| json!(s))
                .iter()
                .collect::<Vec<_>>(),
            "{op}"
        );
        assert!(
            history[..4]
                .iter()
                .all(|a| a["error"].as_str().unwrap().contains("500")),
            "{op}"
        );
        assert!(history[4].get("error").is_none(), "{op}");
        assert!(
            history
                .iter()
                .all(|a| a["duration_ms"].is_u64() && a["at"].is_string()),
            "{op}"
        );
        let (_, list) = shim.get("/v1/operations?delivery=failed").await;
        assert!(failed_delivery_ids(&list).is_empty(), "{list}");
    }
}

on_each_store! {
    #[tokio::test]
    async fn redeliver_resends_delivered_and_rejects_others(store) {
        let up = FakeUpstream::start().await;
        let recv = Receiver::start().await;
        let shim = TestShim::start_on(&store, CONFIG, &up, &recv).await;
        let id = register_done(&shim, &up, "again").await;
        wait_delivery(&shim, &id, "delivered").await;
        assert_eq!(recv.calls_for(&id).len(), 1);

        let (code, body) = shim
            .post(&format!("/v1/operations/{id}/redeliver"), &json!({}))
            .await;
        assert_eq!(code, 202, "{body}");
        let calls = wait_calls(&recv, &id, 2).await;
        assert_same_verified_id(&calls, &id);
        assert_eq!(calls[1].body["type"], "operation.succeeded");
        assert_eq!(calls[1].raw, calls[0].raw);
        let op = wait_delivery(&shim, &id, "delivered").await;
        assert_eq!(op["delivery"]["attempts"], 2, "{op}");
        assert_eq!(
            op["delivery"]["history"].as_array().unwrap().len(),
            2,
            "{op}"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(recv.calls_for(&id).len(), 2, "one redelivery, one call");

        // Not terminal yet: nothing to redeliver.
        up.set("jobs/busy", json!({"state": "running"}));
        let (_, op) = shim
            .register(json!({"upstream": "jobs", "operation": "busy"}))
            .await;
        let busy = op["id"].as_str().unwrap().to_string();
        let (code, body) = shim
            .post(&format!("/v1/operations/{busy}/redeliver"), &json!({}))
            .await;
        assert_eq!(code, 409, "{body}");
        assert_eq!(body["error"]["code"], "not_terminal");
        assert!(recv.calls_for(&busy).is_empty());

        let (code, body) = shim
            .post("/v1/operations/op_nosuchthing/redeliver", &json!({}))
            .await;
        assert_eq!(code, 404, "{body}");
        assert_eq!(body["error"]["code"], "operation_not_found");
    }
}

on_each_store! {
    #[tokio::test]
    async fn receiver_retry_after_is_honoured(store) {
        let up = FakeUpstream::start().await;
        let recv = Receiver::start().await;
        let shim = TestShim::start_on(&store, CONFIG, &up, &recv).await;
        recv.script(vec![Behaviour::StatusWith(
            503,
            vec![("retry-after", "1".to_string())],
        )]);
        let id = register_done(&shim, &up, "later").await;

        let calls = wait_calls(&recv, &id, 2).await;
        let op = wait_delivery(&shim, &id, "delivered").await;
        assert_same_verified_id(&calls, &id);
        let gap = calls[1].at.duration_since(calls[0].at);
        // The schedule alone would retry after ~100 ms; the receiver asked for 1 s.
        assert!(
            gap >= Duration::from_millis(900),
            "retried {gap:?} after a Retry-After: 1"
        );
        assert_eq!(op["delivery"]["attempts"], 2);
    }
}
