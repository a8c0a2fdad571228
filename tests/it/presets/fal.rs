//! The fal-queue preset: the status URL as the operation, `COMPLETED` decided by the result read.
//!
//! Bodies are shaped as fal-ai/fal `projects/fal_client/src/fal_client/client.py` reads them
//! (`_BaseRequestHandle._parse_status`: `status`, `queue_position`, `logs`, `metrics`, `error`,
//! `error_type`; the submit answer's `request_id`, `response_url`, `status_url`, `cancel_url`;
//! `_raise_for_status`: a non-2xx result answer's `detail` and `error_type` /
//! `X-Fal-Error-Type`) and as fal's docs show them (queue: `response_url` in the status body;
//! request errors: <https://fal.ai/docs/documentation/model-apis/request-errors>).

use super::*;

/// The status URL of request `id` of app `fal-ai/flux` on the fake, and the fake's paths of its
/// status and its result.
fn fal_request(r: &Rig, id: &str) -> (String, String, String) {
    let result = format!("fal/fal-ai/flux/requests/{id}");
    let status = format!("{result}/status");
    (format!("{}/{status}", r.up.url), status, result)
}

fn in_progress(r: &Rig, id: &str) -> Value {
    json!({"status": "IN_PROGRESS", "request_id": id, "logs": null,
           "response_url": format!("{}/fal/fal-ai/flux/requests/{id}", r.up.url)})
}

fn completed(r: &Rig, id: &str) -> Value {
    json!({"status": "COMPLETED", "request_id": id, "logs": null,
           "metrics": {"inference_time": 1.73},
           "response_url": format!("{}/fal/fal-ai/flux/requests/{id}", r.up.url)})
}

#[tokio::test]
async fn fal_queue_succeeds_with_the_result_read() {
    let r = rig().await;
    let (url, status, result) = fal_request(&r, "req-ok");
    r.up.set(
        &result,
        json!({"images": [{"url": "https://v3.fal.media/files/a.png", "width": 1024,
                           "height": 768, "content_type": "image/jpeg"}],
               "seed": 42, "has_nsfw_concepts": [false], "prompt": "a cat"}),
    );
    let data = r
        .drive(
            "fal",
            &url,
            &status,
            json!({"status": "IN_QUEUE", "queue_position": 2, "request_id": "req-ok",
                   "response_url": format!("{}/{result}", r.up.url)}),
            "pending",
            completed(&r, "req-ok"),
            "succeeded",
        )
        .await;
    assert_eq!(data["operation"], url);
    assert_eq!(data["upstream_status"], "COMPLETED");
    assert_eq!(data["result"]["seed"], 42, "{data}");
    assert_eq!(data["result"]["images"][0]["width"], 1024);
    assert_eq!(r.up.requests_for(&result).len(), 1);
    for path in [&status, &result] {
        assert!(
            r.up.header_values(path, "authorization")
                .iter()
                .all(|v| v == "Key test-fal-key")
        );
    }
}

/// `COMPLETED` alone is not success: the result read answers the model's validation error
/// (422, `detail` a list), so the request failed.
#[tokio::test]
async fn fal_queue_completed_with_an_error_result_is_failed() {
    let r = rig().await;
    let (url, status, result) = fal_request(&r, "req-422");
    r.up.script(
        &result,
        vec![
            Scripted::new(
                422,
                r#"{"detail": [{"loc": ["body", "image_size"], "msg": "value is not a valid enumeration member", "type": "type_error.enum"}]}"#,
            )
            .header("x-fal-request-id", "req-422"),
        ],
    );
    let data = r
        .drive(
            "fal",
            &url,
            &status,
            in_progress(&r, "req-422"),
            "running",
            completed(&r, "req-422"),
            "failed",
        )
        .await;
    assert_eq!(data["error"]["code"], "http_422", "{data}");
    assert_eq!(data["error"]["status"], 422);
    assert_eq!(data["error"]["detail"][0]["type"], "type_error.enum");
    assert!(data["result"].is_null());

    // A request error: flat `detail`, `error_type` also in the header.
    let (url, status, result) = fal_request(&r, "req-timeout");
    r.up.script(
        &result,
        vec![
            Scripted::new(
                504,
                r#"{"detail": "Request timed out", "error_type": "request_timeout"}"#,
            )
            .header("x-fal-request-id", "req-timeout")
            .header("x-fal-error-type", "request_timeout"),
        ],
    );
    let data = r
        .drive(
            "fal",
            &url,
            &status,
            in_progress(&r, "req-timeout"),
            "running",
            completed(&r, "req-timeout"),
            "failed",
        )
        .await;
    assert_eq!(
        data["error"],
        json!({"code": "request_timeout", "status": 504, "message": "Request timed out"})
    );
}

/// fal-client's `Completed` carries `error` / `error_type` when the status says so: failed
/// without reading the result.
#[tokio::test]
async fn fal_queue_error_in_the_status_is_failed_without_a_result_read() {
    let r = rig().await;
    let (url, status, result) = fal_request(&r, "req-crash");
    let mut terminal = completed(&r, "req-crash");
    terminal["error"] = json!("Runner disconnected unexpectedly");
    terminal["error_type"] = json!("runner_disconnected");
    let data = r
        .drive(
            "fal",
            &url,
            &status,
            in_progress(&r, "req-crash"),
            "running",
            terminal,
            "failed",
        )
        .await;
    assert_eq!(data["error"]["code"], "runner_disconnected");
    assert_eq!(data["error"]["message"], "Runner disconnected unexpectedly");
    assert!(r.up.requests_for(&result).is_empty());
}

/// A cancelled request (`PUT …/cancel`) ends `COMPLETED`; its result read answers the
/// `client_cancelled` request error (499).
#[tokio::test]
async fn fal_queue_cancelled_request_is_cancelled() {
    let r = rig().await;
    let (url, status, result) = fal_request(&r, "req-cancel");
    r.up.script(
        &result,
        vec![
            Scripted::new(
                499,
                r#"{"detail": "Request cancelled by the client", "error_type": "client_cancelled"}"#,
            )
            .header("x-fal-request-id", "req-cancel"),
        ],
    );
    let data = r
        .drive(
            "fal",
            &url,
            &status,
            json!({"status": "IN_QUEUE", "queue_position": 0, "request_id": "req-cancel"}),
            "pending",
            completed(&r, "req-cancel"),
            "cancelled",
        )
        .await;
    assert_eq!(data["error"]["code"], "client_cancelled");
}

/// A result read that gets no answer to go by (a gateway's 503 without fal's request id, a
/// 429) decides nothing: the status is read again and the next result read decides.
#[tokio::test]
async fn fal_queue_result_read_without_an_answer_is_read_again() {
    let r = rig().await;
    let (url, status, result) = fal_request(&r, "req-flaky");
    r.up.script(
        &result,
        vec![
            Scripted::new(503, "<html><center>nginx</center></html>"),
            Scripted::new(429, r#"{"detail": "Too many requests"}"#),
        ],
    );
    r.up.set(
        &result,
        json!({"video": {"url": "https://v3.fal.media/files/v.mp4"}}),
    );
    // Registered with the response URL: the same request, kept as its status URL.
    let operation = url.strip_suffix("/status").unwrap();
    let data = r
        .drive(
            "fal",
            operation,
            &status,
            in_progress(&r, "req-flaky"),
            "running",
            completed(&r, "req-flaky"),
            "succeeded",
        )
        .await;
    assert_eq!(data["operation"], url);
    assert_eq!(
        data["result"]["video"]["url"],
        "https://v3.fal.media/files/v.mp4"
    );
    assert_eq!(r.up.requests_for(&result).len(), 3);
    let metrics = r.shim.metrics().await;
    assert!(metrics.contains("result_read_error"), "{metrics}");
}

/// The operation must be the request's status (or response) URL under the base URL.
#[tokio::test]
async fn fal_queue_operations_that_are_not_status_urls_are_refused() {
    let r = rig().await;
    let other = FakeUpstream::start().await;
    for (operation, says) in [
        ("req-1".to_string(), "status_url"),
        (format!("{}/fal/fal-ai/flux", r.up.url), "status_url"),
        (
            format!("{}/fal/fal-ai/flux/requests/r1/status", other.url),
            "is not under the upstream's base_url",
        ),
    ] {
        let (code, body) = r
            .shim
            .register(json!({"upstream": "fal", "operation": operation}))
            .await;
        assert_eq!(code, 422, "{operation}: {body}");
        let msg = body["error"]["message"].as_str().unwrap();
        assert!(msg.contains(says), "{operation}: {msg}");
    }
    assert!(other.all_requests().is_empty());
}
