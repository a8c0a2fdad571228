//! The runway-task preset. Bodies shaped from runwayml/sdk-python
//! `src/runwayml/types/task_retrieve_response.py` (`TaskRetrieveResponse`: `Pending`,
//! `Throttled`, `Running` with `progress`, `Succeeded` with `output`, `Failed` with `failure` /
//! `failureCode`, `Cancelled`; JSON aliases `createdAt`, `failureCode`); the headers from
//! `src/runwayml/_client.py` (`Authorization: Bearer`, `X-Runway-Version: 2024-11-06`).

use super::*;

fn task(id: &str, status: &str, extra: Value) -> Value {
    let mut v = json!({"id": id, "createdAt": rfc3339(SystemTime::now()), "status": status});
    v.as_object_mut()
        .unwrap()
        .extend(extra.as_object().unwrap().clone());
    v
}

#[tokio::test]
async fn runway_task_from_pending_to_each_end() {
    let r = rig().await;
    let path = |id: &str| format!("runway/v1/tasks/{id}");
    let id = "17f20503-6c24-4c16-946b-35dbbce2af2f";
    let video = "https://dnznrvs05pmza.cloudfront.net/17f20503/out.mp4?_jwt=eyJ";

    // Throttled (waiting for capacity), then running with progress, then succeeded.
    r.up.set(&path(id), task(id, "THROTTLED", json!({})));
    let op = id_of(&r.register("runway", id).await);
    r.wait_read(&op, "pending").await;
    r.up.set(&path(id), task(id, "RUNNING", json!({"progress": 0.5})));
    let seen = eventually(Duration::from_secs(10), "running at 50 %", || async {
        let o = r.shim.op(&op).await;
        (o["status"] == "running").then_some(o)
    })
    .await;
    assert_eq!(seen["progress"], 0.5, "{seen}");
    r.up.set(&path(id), task(id, "SUCCEEDED", json!({"output": [video]})));
    let data = r.terminal_callback(&op, "succeeded", "poll").await;
    assert_eq!(data["upstream_status"], "SUCCEEDED");
    assert_eq!(data["result"], json!([video]));
    assert_eq!(data["error"], Value::Null);
    assert_eq!(
        r.up.header_values(&path(id), "authorization")[0],
        "Bearer test-runway-secret"
    );
    assert_eq!(
        r.up.header_values(&path(id), "x-runway-version")[0],
        "2024-11-06"
    );

    let id = "2a9c1b7e-0000-4000-8000-000000000002";
    let data = r
        .drive(
            "runway",
            id,
            &path(id),
            task(id, "PENDING", json!({})),
            "pending",
            task(
                id,
                "FAILED",
                json!({"failure": "The input image was flagged by content moderation.",
                       "failureCode": "SAFETY.INPUT.IMAGE"}),
            ),
            "failed",
        )
        .await;
    assert_eq!(
        data["error"],
        json!({"code": "SAFETY.INPUT.IMAGE",
               "message": "The input image was flagged by content moderation."})
    );
    assert_eq!(data["result"], Value::Null);

    let id = "2a9c1b7e-0000-4000-8000-000000000003";
    let data = r
        .drive(
            "runway",
            id,
            &path(id),
            task(id, "RUNNING", json!({"progress": 0.1})),
            "running",
            task(id, "CANCELLED", json!({})),
            "cancelled",
        )
        .await;
    assert_eq!(data["upstream_status"], "CANCELLED");
    assert_eq!(data["error"]["code"], "cancelled");
}
