//! An operation's life, end to end over loopback: registration, polling or webhooks, exactly one
//! signed callback.

use std::time::Duration;

use crate::common::*;
use serde_json::json;

on_each_store! {
    #[tokio::test]
    async fn polling_only_operation_gets_exactly_one_verified_callback(store) {
        let up = FakeUpstream::start().await;
        let recv = Receiver::start().await;
        let shim = TestShim::start_on(&store, CONFIG, &up, &recv).await;
        up.set("jobs/a1", json!({"state": "running", "progress": 0.4}));

        let (code, op) = shim
            .register(json!({"upstream": "jobs", "operation": "a1", "metadata": {"ticket": 7}}))
            .await;
        assert_eq!(code, 201, "{op}");
        let id = op["id"].as_str().unwrap().to_string();
        assert!(id.starts_with("op_"));
        assert_eq!(op["status"], "pending");

        eventually(Duration::from_secs(5), "a running poll", || async {
            let o = shim.op(&id).await;
            (o["status"] == "running" && o["progress"] == 0.4).then_some(())
        })
        .await;
        up.set(
            "jobs/a1",
            json!({"state": "done", "output": {"url": "https://x/y.mp4"}}),
        );
        let done = wait_status(&shim, &id, "succeeded").await;
        assert_eq!(done["detected_via"], "poll");
        let calls = wait_calls(&recv, &id, 1).await;
        // Give a duplicate every chance to show up.
        tokio::time::sleep(Duration::from_millis(400)).await;
        let calls_after = recv.calls_for(&id);
        assert_eq!(
            calls_after.len(),
            1,
            "exactly one callback: {calls_after:?}"
        );
        let c = &calls[0];
        assert!(
            c.verified,
            "standardwebhooks crate must verify the callback"
        );
        assert_eq!(c.webhook_id, format!("{id}_terminal"));
        assert_eq!(c.body["type"], "operation.succeeded");
        assert_eq!(c.body["data"]["result"]["url"], "https://x/y.mp4");
        assert_eq!(c.body["data"]["metadata"]["ticket"], 7);
        assert_eq!(c.body["data"]["upstream_status"], "done");
        assert_eq!(c.body["timestamp"], done["completed_at"]);
        let delivered = shim.op(&id).await;
        assert_eq!(delivered["delivery"]["state"], "delivered");
        assert_eq!(delivered["delivery"]["attempts"], 1);
    }
}

on_each_store! {
    #[tokio::test]
    async fn registering_twice_returns_the_same_record(store) {
        let up = FakeUpstream::start().await;
        let recv = Receiver::start().await;
        let shim = TestShim::start_on(&store, CONFIG, &up, &recv).await;
        up.set("jobs/same", json!({"state": "running"}));
        let (c1, a) = shim
            .register(json!({"upstream": "jobs", "operation": "same"}))
            .await;
        let (c2, b) = shim
            .register(json!({"upstream": "jobs", "operation": "same"}))
            .await;
        assert_eq!((c1, c2), (201, 200));
        assert_eq!(a["id"], b["id"]);
        // The same operation id on another upstream is a different operation.
        let (c3, c) = shim
            .register(json!({"upstream": "pushy", "operation": "same"}))
            .await;
        assert_eq!(c3, 201);
        assert_ne!(a["id"], c["id"]);
    }
}

on_each_store! {
    #[tokio::test]
    async fn each_terminal_upstream_state_maps_to_its_status(store) {
        let up = FakeUpstream::start().await;
        let recv = Receiver::start().await;
        let shim = TestShim::start_on(&store, CONFIG, &up, &recv).await;
        for (state, status) in [
            ("error", "failed"),
            ("cancelled", "cancelled"),
            ("expired", "expired"),
        ] {
            up.set(
                &format!("jobs/{state}"),
                json!({"state": state, "error": {"message": "why"}}),
            );
            let (_, op) = shim
                .register(json!({"upstream": "jobs", "operation": state}))
                .await;
            let id = op["id"].as_str().unwrap().to_string();
            let done = wait_status(&shim, &id, status).await;
            let call = exactly_one_callback(&recv, &id, QUIET).await;
            assert_eq!(call.body["type"], format!("operation.{status}"));
            assert_eq!(done["error"]["message"], "why");
        }
    }
}

on_each_store! {
    #[tokio::test]
    async fn webhook_capable_operation_is_detected_via_webhook(store) {
        let up = FakeUpstream::start().await;
        let recv = Receiver::start().await;
        let shim = TestShim::start_on(&store, CONFIG, &up, &recv).await;
        up.set("pushy/w1", json!({"state": "running"}));
        let (_, op) = shim
            .register(json!({"upstream": "pushy", "operation": "w1"}))
            .await;
        let id = op["id"].as_str().unwrap().to_string();
        // With webhooks on, the safety poll is an hour away: nothing polls now.
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(
            up.requests_for("pushy/w1").is_empty(),
            "no polling while webhooks are on"
        );

        up.set("pushy/w1", json!({"state": "done", "output": {"n": 1}}));
        let (code, body) = shim
            .send_webhook(
                "pushy",
                PUSHY_SECRET,
                "msg_w1",
                &json!({"type": "job.done", "data": {"id": "w1"}}),
            )
            .await;
        assert_eq!(code, 200, "{body}");
        assert_eq!(body["result"], "accepted");
        let done = wait_status(&shim, &id, "succeeded").await;
        assert_eq!(done["detected_via"], "webhook");
        let call = exactly_one_callback(&recv, &id, QUIET).await;
        assert!(call.verified);
        assert_eq!(call.body["data"]["detected_via"], "webhook");
        assert_eq!(
            up.requests_for("pushy/w1").len(),
            1,
            "one status read, triggered by the webhook"
        );
    }
}

on_each_store! {
    #[tokio::test]
    async fn webhook_that_outruns_the_status_endpoint_is_followed_by_fast_rereads(store) {
        let up = FakeUpstream::start().await;
        let recv = Receiver::start().await;
        let shim = TestShim::start_on(&store, CONFIG, &up, &recv).await;
        up.set("pushy/lag", json!({"state": "running"}));
        let (_, op) = shim
            .register(json!({"upstream": "pushy", "operation": "lag"}))
            .await;
        let id = op["id"].as_str().unwrap().to_string();
        shim.send_webhook(
            "pushy",
            PUSHY_SECRET,
            "msg_lag",
            &json!({"data": {"id": "lag"}}),
        )
        .await;
        eventually(Duration::from_secs(5), "the first status read", || async {
            (!up.requests_for("pushy/lag").is_empty()).then_some(())
        })
        .await;
        up.set("pushy/lag", json!({"state": "done"}));
        let done = wait_status(&shim, &id, "succeeded").await;
        assert_eq!(done["detected_via"], "webhook");
        exactly_one_callback(&recv, &id, QUIET).await;
    }
}

on_each_store! {
    #[tokio::test]
    async fn duplicate_webhook_is_acknowledged_and_ignored(store) {
        let up = FakeUpstream::start().await;
        let recv = Receiver::start().await;
        let shim = TestShim::start_on(&store, CONFIG, &up, &recv).await;
        up.set("pushy/d1", json!({"state": "done"}));
        let (_, op) = shim
            .register(json!({"upstream": "pushy", "operation": "d1"}))
            .await;
        let id = op["id"].as_str().unwrap().to_string();
        let body = json!({"data": {"id": "d1"}});
        let (c1, b1) = shim
            .send_webhook("pushy", PUSHY_SECRET, "msg_dup", &body)
            .await;
        let (c2, b2) = shim
            .send_webhook("pushy", PUSHY_SECRET, "msg_dup", &body)
            .await;
        assert_eq!((c1, c2), (200, 200));
        assert_eq!(b1["result"], "accepted");
        assert_eq!(b2["result"], "duplicate");
        wait_calls(&recv, &id, 1).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(recv.calls_for(&id).len(), 1);
        assert_eq!(
            up.requests_for("pushy/d1").len(),
            1,
            "the duplicate triggered no second read"
        );
        assert!(
            shim.metrics().await.contains(
                "hookshim_webhooks_received_total{upstream=\"pushy\",result=\"duplicate\"} 1"
            )
        );
    }
}

on_each_store! {
    #[tokio::test]
    async fn webhook_before_registration_is_applied_on_registration(store) {
        let up = FakeUpstream::start().await;
        let recv = Receiver::start().await;
        let shim = TestShim::start_on(&store, CONFIG, &up, &recv).await;
        up.set("pushy/early", json!({"state": "done", "output": 42}));
        let (code, body) = shim
            .send_webhook(
                "pushy",
                PUSHY_SECRET,
                "msg_early",
                &json!({"data": {"id": "early"}}),
            )
            .await;
        assert_eq!(code, 202, "{body}");
        assert_eq!(body["result"], "kept");
        let (_, op) = shim
            .register(json!({"upstream": "pushy", "operation": "early"}))
            .await;
        let id = op["id"].as_str().unwrap().to_string();
        let done = wait_status(&shim, &id, "succeeded").await;
        assert_eq!(done["detected_via"], "webhook");
        assert_eq!(done["result"], 42);
        exactly_one_callback(&recv, &id, QUIET).await;
    }
}

on_each_store! {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn webhooks_and_polls_racing_still_send_one_callback(store) {
        const OPS: usize = 30;
        const PER_OP: usize = 3;
        let up = FakeUpstream::start().await;
        let recv = Receiver::start().await;
        // Webhooks on, but polling as fast as the jobs upstream: both paths race for every op.
        let config = CONFIG.replace("safety_poll = \"1h\"", "safety_poll = \"20ms\"");
        let shim = TestShim::start_on(&store, &config, &up, &recv).await;
        let mut ids = Vec::new();
        for i in 0..OPS {
            up.set(&format!("pushy/r{i}"), json!({"state": "running"}));
            let (_, op) = shim
                .register(json!({"upstream": "pushy", "operation": format!("r{i}")}))
                .await;
            ids.push(op["id"].as_str().unwrap().to_string());
        }
        for i in 0..OPS {
            up.set(&format!("pushy/r{i}"), json!({"state": "done"}));
        }
        // Every webhook of every operation on its own task, each one twice (an upstream's retry
        // racing its first delivery), all released at once by a barrier, so they hit the server
        // together (and together with the safety polls).
        let barrier = std::sync::Arc::new(tokio::sync::Barrier::new(OPS * PER_OP * 2));
        let mut tasks = tokio::task::JoinSet::new();
        for i in 0..OPS {
            for k in 0..PER_OP {
                for _copy in 0..2 {
                    let (http, url, barrier) = (shim.http.clone(), shim.url.clone(), barrier.clone());
                    tasks.spawn(async move {
                        barrier.wait().await;
                        let sent = std::time::Instant::now();
                        let msg = format!("msg_r{i}_{k}");
                        let (code, body) = send_signed_webhook(
                            &http,
                            &url,
                            "pushy",
                            PUSHY_SECRET,
                            &msg,
                            &json!({"data": {"id": format!("r{i}")}}),
                        )
                        .await;
                        assert_eq!(code, 200, "{msg}: {body}");
                        (sent, msg, body["result"].as_str().unwrap_or("").to_string())
                    });
                }
            }
        }
        let mut sent = Vec::new();
        let mut results: std::collections::BTreeMap<String, Vec<String>> = Default::default();
        while let Some(t) = tasks.join_next().await {
            let (at, msg, result) = t.unwrap();
            sent.push(at);
            results.entry(msg).or_default().push(result);
        }
        // Of two copies of one webhook arriving together, one is applied, the other a duplicate.
        for (msg, mut r) in results {
            r.sort();
            assert_eq!(r, ["accepted", "duplicate"], "{msg}");
        }
        let spread = sent
            .iter()
            .max()
            .unwrap()
            .duration_since(*sent.iter().min().unwrap());
        assert!(
            spread < Duration::from_millis(500),
            "the webhooks were not released together: {spread:?} between the first and the last \
             (sent one after another, 180 would take far longer)"
        );
        for id in &ids {
            wait_calls(&recv, id, 1).await;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        for id in &ids {
            let calls = recv.calls_for(id);
            assert_eq!(calls.len(), 1, "{id} got {} callbacks", calls.len());
        }
    }
}

on_each_store! {
    #[tokio::test]
    async fn delete_stops_tracking_without_a_callback(store) {
        let up = FakeUpstream::start().await;
        let recv = Receiver::start().await;
        let shim = TestShim::start_on(&store, CONFIG, &up, &recv).await;
        up.set("jobs/del", json!({"state": "running"}));
        let (_, op) = shim
            .register(json!({"upstream": "jobs", "operation": "del"}))
            .await;
        let id = op["id"].as_str().unwrap().to_string();
        let r = shim
            .http
            .delete(format!("{}/v1/operations/{id}", shim.url))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let polls_at_delete = up.requests_for("jobs/del").len();
        up.set("jobs/del", json!({"state": "done"}));
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert!(recv.calls_for(&id).is_empty());
        assert!(
            up.requests_for("jobs/del").len() <= polls_at_delete + 1,
            "polling stopped"
        );
        assert_eq!(shim.get(&format!("/v1/operations/{id}")).await.0, 404);
    }
}

on_each_store! {
    #[tokio::test]
    async fn list_filters_and_pages(store) {
        let up = FakeUpstream::start().await;
        let recv = Receiver::start().await;
        let shim = TestShim::start_on(&store, CONFIG, &up, &recv).await;
        let mut ids = Vec::new();
        for i in 0..5 {
            up.set(
                &format!("jobs/l{i}"),
                json!({"state": if i < 2 { "done" } else { "running" }}),
            );
            let (_, op) = shim
                .register(json!({"upstream": "jobs", "operation": format!("l{i}")}))
                .await;
            ids.push(op["id"].as_str().unwrap().to_string());
        }
        wait_status(&shim, &ids[0], "succeeded").await;
        wait_status(&shim, &ids[1], "succeeded").await;
        let (_, page1) = shim.get("/v1/operations?limit=3").await;
        assert_eq!(page1["operations"].as_array().unwrap().len(), 3);
        let cursor = page1["next_cursor"].as_str().unwrap();
        let (_, page2) = shim
            .get(&format!("/v1/operations?limit=3&cursor={cursor}"))
            .await;
        assert_eq!(page2["operations"].as_array().unwrap().len(), 2);
        assert!(page2["next_cursor"].is_null());
        let (_, done) = shim
            .get("/v1/operations?status=succeeded&upstream=jobs")
            .await;
        let got: Vec<&str> = done["operations"]
            .as_array()
            .unwrap()
            .iter()
            .map(|o| o["id"].as_str().unwrap())
            .collect();
        assert_eq!(got, vec![ids[0].as_str(), ids[1].as_str()]);
        let (code, err) = shim.get("/v1/operations?status=bogus").await;
        assert_eq!(code, 400);
        assert_eq!(err["error"]["code"], "invalid_query");
    }
}

on_each_store! {
    #[tokio::test]
    async fn graceful_restart_resumes_polling_from_the_store(store) {
        let up = FakeUpstream::start().await;
        let recv = Receiver::start().await;
        let mut shim = TestShim::start_on(&store, CONFIG, &up, &recv).await;
        up.set("jobs/rs", json!({"state": "running"}));
        let (_, op) = shim
            .register(json!({"upstream": "jobs", "operation": "rs"}))
            .await;
        let id = op["id"].as_str().unwrap().to_string();
        shim.restart().await;
        up.set("jobs/rs", json!({"state": "done"}));
        wait_status(&shim, &id, "succeeded").await;
        exactly_one_callback(&recv, &id, QUIET).await;
    }
}

on_each_store! {
    #[tokio::test]
    async fn operation_without_callback_url_is_polled_locally(store) {
        let up = FakeUpstream::start().await;
        let recv = Receiver::start().await;
        let config = CONFIG.replace("default_url = \"{RECV}/callback\"\n", "");
        let shim = TestShim::start_on(&store, &config, &up, &recv).await;
        up.set("jobs/local", json!({"state": "done", "output": "ok"}));
        let (_, op) = shim
            .register(json!({"upstream": "jobs", "operation": "local"}))
            .await;
        let id = op["id"].as_str().unwrap().to_string();
        let done = wait_status(&shim, &id, "succeeded").await;
        assert_eq!(done["delivery"]["state"], "none");
        assert_eq!(done["result"], "ok");
        assert!(recv.calls().is_empty());
        let (code, _) = shim
            .post(&format!("/v1/operations/{id}/redeliver"), &json!({}))
            .await;
        assert_eq!(code, 409);
    }
}

on_each_store! {
    #[tokio::test]
    async fn callback_to_a_host_no_longer_allowed_is_not_sent(store) {
        let up = FakeUpstream::start().await;
        let recv = Receiver::start().await;
        let config = CONFIG.replace("default_url = \"{RECV}/callback\"\n", "");
        let mut shim = TestShim::start_on(&store, &config, &up, &recv).await;
        up.set("jobs/moved", json!({"state": "running"}));
        let (code, op) = shim
            .register(json!({"upstream": "jobs", "operation": "moved", "callback_url": format!("{}/cb", recv.url)}))
            .await;
        assert_eq!(code, 201, "{op}");
        let id = op["id"].as_str().unwrap().to_string();
        // The operator narrows the allow-list and restarts; then the job finishes.
        shim.config_text = shim.config_text.replace(
            "[callbacks]\n",
            "[callbacks]\nallowed_hosts = [\"localhost\"]\n",
        );
        shim.restart().await;
        up.set("jobs/moved", json!({"state": "done"}));
        wait_status(&shim, &id, "succeeded").await;
        let op = eventually(Duration::from_secs(5), "delivery to fail", || async {
            let o = shim.op(&id).await;
            (o["delivery"]["state"] == "failed").then_some(o)
        })
        .await;
        assert!(
            op["delivery"]["last_error"]
                .as_str()
                .unwrap()
                .contains("not in callbacks.allowed_hosts"),
            "{op}"
        );
        assert!(
            recv.calls().is_empty(),
            "nothing was sent to the no-longer-allowed host"
        );
    }
}
