//! The replicate preset.

use super::*;

// ---------------------------------------------------------------------------------------------
// replicate

pub(super) fn prediction(id: &str, status: &str, extra: Value) -> Value {
    let mut v = json!({"id": id, "model": "black-forest-labs/flux-schnell", "version": "v1",
        "input": {"prompt": "a cat"}, "logs": "", "output": null, "data_removed": false,
        "error": null, "status": status, "created_at": rfc3339(SystemTime::now()),
        "urls": {"get": format!("https://api.replicate.com/v1/predictions/{id}"),
                 "cancel": format!("https://api.replicate.com/v1/predictions/{id}/cancel")}});
    v.as_object_mut()
        .unwrap()
        .extend(extra.as_object().unwrap().clone());
    v
}

#[tokio::test]
async fn replicate_each_end() {
    let r = rig().await;
    let image = "https://replicate.delivery/xezq/out-0.webp";
    let data = r
        .drive(
            "replicate",
            "p_ok",
            "replicate/v1/predictions/p_ok",
            prediction("p_ok", "starting", json!({})),
            "pending",
            prediction("p_ok", "succeeded", json!({"output": [image]})),
            "succeeded",
        )
        .await;
    assert_eq!(data["result"][0], image);
    assert_eq!(
        r.up.header_values("replicate/v1/predictions/p_ok", "authorization")[0],
        "Bearer test-replicate-token"
    );
    let data = r
        .drive(
            "replicate",
            "p_bad",
            "replicate/v1/predictions/p_bad",
            prediction("p_bad", "processing", json!({})),
            "running",
            prediction("p_bad", "failed", json!({"error": "CUDA out of memory"})),
            "failed",
        )
        .await;
    assert_eq!(data["error"]["message"], "CUDA out of memory");
    for (op, status) in [("p_stop", "canceled"), ("p_abort", "aborted")] {
        let data = r
            .drive(
                "replicate",
                op,
                &format!("replicate/v1/predictions/{op}"),
                prediction(op, "processing", json!({})),
                "running",
                prediction(op, status, json!({})),
                "cancelled",
            )
            .await;
        assert_eq!(data["upstream_status"], status);
        assert_eq!(data["error"]["code"], status);
    }
}
