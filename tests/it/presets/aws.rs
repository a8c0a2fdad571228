//! The Bedrock presets (`bedrock-batch`, `bedrock-async-invoke`): SigV4-signed status reads of
//! an ARN, put in the path as one percent-encoded segment as botocore does, from submission to
//! each terminal state. Bodies shaped from botocore: `botocore/data/bedrock/2023-04-20/
//! service-2.json` (`GetModelInvocationJob`: `GET /model-invocation-job/{jobIdentifier}`,
//! `GetModelInvocationJobResponse`, `ModelInvocationJobStatus`) and `botocore/data/
//! bedrock-runtime/2023-09-30/service-2.json` (`GetAsyncInvoke`: `GET
//! /async-invoke/{invocationArn}`, `GetAsyncInvokeResponse`, `AsyncInvokeStatus`); timestamps
//! `iso8601`. The label encoding is botocore `serialize.py` `_render_uri_template` (a
//! non-greedy label through `percent_encode`, safe `-._~`).

use super::*;
use crate::credentials::verify_sigv4;
use axum::http::Method;

const ACCOUNT: &str = "123456789012";

/// The job ARN, the path the fake keeps it under (decoded) and the raw path botocore sends.
fn job_arn(id: &str) -> (String, String, String) {
    let arn = format!("arn:aws:bedrock:us-east-1:{ACCOUNT}:model-invocation-job/{id}");
    let decoded = format!("bedrock/model-invocation-job/{arn}");
    let raw = format!(
        "/bedrock/model-invocation-job/arn%3Aaws%3Abedrock%3Aus-east-1%3A{ACCOUNT}%3Amodel-invocation-job%2F{id}"
    );
    (arn, decoded, raw)
}

fn invoke_arn(id: &str) -> (String, String, String) {
    let arn = format!("arn:aws:bedrock:us-east-1:{ACCOUNT}:async-invoke/{id}");
    let decoded = format!("bedrock-runtime/async-invoke/{arn}");
    let raw = format!(
        "/bedrock-runtime/async-invoke/arn%3Aaws%3Abedrock%3Aus-east-1%3A{ACCOUNT}%3Aasync-invoke%2F{id}"
    );
    (arn, decoded, raw)
}

/// A `GetModelInvocationJobResponse`.
fn job(arn: &str, status: &str, extra: Value) -> Value {
    let mut v = json!({
        "jobArn": arn, "jobName": "nightly-summaries",
        "modelId": "anthropic.claude-3-haiku-20240307-v1:0",
        "roleArn": format!("arn:aws:iam::{ACCOUNT}:role/BedrockBatch"),
        "status": status,
        "submitTime": rfc3339(SystemTime::now()), "lastModifiedTime": rfc3339(SystemTime::now()),
        "inputDataConfig": {"s3InputDataConfig": {"s3Uri": "s3://my-bucket/batch/in/"}},
        "outputDataConfig": {"s3OutputDataConfig": {"s3Uri": "s3://my-bucket/batch/out/"}},
        "timeoutDurationInHours": 72, "jobExpirationTime": rfc3339(in_hours(72)),
    });
    v.as_object_mut()
        .unwrap()
        .extend(extra.as_object().unwrap().clone());
    v
}

/// Every read of `decoded` arrived at `raw` (botocore's encoding) with a valid SigV4 signature.
fn assert_signed_at(r: &Rig, decoded: &str, raw: &str) {
    let reads = r.up.raw_requests_for(decoded);
    assert!(!reads.is_empty(), "no read of {decoded}");
    for (uri, headers) in reads {
        assert_eq!(uri.path(), raw);
        verify_sigv4(&Method::GET, &uri, &headers, None).unwrap();
    }
}

#[tokio::test]
async fn bedrock_batch_from_submitted_to_each_end() {
    let r = rig().await;
    let (arn, path, raw) = job_arn("abc123xyz789");
    let counts = json!({"totalRecordCount": 200, "processedRecordCount": 200,
                        "successRecordCount": 200, "errorRecordCount": 0});
    let data = r
        .drive(
            "bedrock-batch",
            &arn,
            &path,
            job(&arn, "Submitted", json!({})),
            "pending",
            job(&arn, "Completed", counts),
            "succeeded",
        )
        .await;
    assert_eq!(data["upstream_status"], "Completed");
    assert_eq!(data["result"]["jobArn"], arn.as_str());
    assert_eq!(
        data["result"]["outputDataConfig"]["s3OutputDataConfig"]["s3Uri"],
        "s3://my-bucket/batch/out/"
    );
    assert_eq!(data["result"]["successRecordCount"], 200);
    assert_eq!(data["error"], Value::Null);
    assert_signed_at(&r, &path, &raw);

    // In progress with record counts: progress 50 of 200; then partially completed.
    let (arn, path, raw) = job_arn("part00000001");
    let running = json!({"totalRecordCount": 200, "processedRecordCount": 50,
                         "successRecordCount": 50, "errorRecordCount": 0});
    r.up.set(&path, job(&arn, "InProgress", running));
    let id = id_of(&r.register("bedrock-batch", &arn).await);
    let seen = r.wait_read(&id, "running").await;
    assert_eq!(seen["progress"], 0.25, "{seen}");
    let partial = json!({"totalRecordCount": 200, "processedRecordCount": 150,
                         "successRecordCount": 140, "errorRecordCount": 10});
    r.up.set(&path, job(&arn, "PartiallyCompleted", partial));
    let data = r.terminal_callback(&id, "succeeded", "poll").await;
    assert_eq!(data["upstream_status"], "PartiallyCompleted");
    assert_eq!(data["result"]["errorRecordCount"], 10);
    assert_signed_at(&r, &path, &raw);

    for (id, first, end, extra, status, code) in [
        (
            "fail00000001",
            "Validating",
            "Failed",
            json!({"message": "The provided role does not have access to s3://my-bucket/batch/in/"}),
            "failed",
            "failed",
        ),
        (
            "stop00000001",
            "Stopping",
            "Stopped",
            json!({}),
            "cancelled",
            "stopped",
        ),
        (
            "late00000001",
            "Scheduled",
            "Expired",
            json!({}),
            "expired",
            "expired",
        ),
    ] {
        let (arn, path, raw) = job_arn(id);
        let first_state = if first == "Stopping" {
            "running"
        } else {
            "pending"
        };
        let data = r
            .drive(
                "bedrock-batch",
                &arn,
                &path,
                job(&arn, first, json!({})),
                first_state,
                job(&arn, end, extra.clone()),
                status,
            )
            .await;
        assert_eq!(data["upstream_status"], end);
        assert_eq!(data["error"]["code"], code, "{data}");
        assert_eq!(data["result"], Value::Null);
        if let Some(m) = extra.get("message") {
            assert_eq!(&data["error"]["message"], m);
        }
        assert_signed_at(&r, &path, &raw);
    }

    // Not a job ARN or id: refused at registration, saying what is expected.
    let (code, body) = r
        .shim
        .register(json!({"upstream": "bedrock-batch", "operation": "nightly-summaries"}))
        .await;
    assert_eq!(code, 422, "{body}");
    assert!(
        body.to_string().contains("model-invocation-job/{id}"),
        "{body}"
    );
}

/// A `GetAsyncInvokeResponse`.
fn invocation(arn: &str, status: &str, extra: Value) -> Value {
    let mut v = json!({
        "invocationArn": arn,
        "modelArn": "arn:aws:bedrock:us-east-1::foundation-model/amazon.nova-reel-v1:1",
        "clientRequestToken": "a1b2c3", "status": status,
        "submitTime": rfc3339(SystemTime::now()), "lastModifiedTime": rfc3339(SystemTime::now()),
        "outputDataConfig": {"s3OutputDataConfig": {"s3Uri": "s3://my-bucket/reel/"}},
    });
    v.as_object_mut()
        .unwrap()
        .extend(extra.as_object().unwrap().clone());
    v
}

#[tokio::test]
async fn bedrock_async_invoke_from_in_progress_to_each_end() {
    let r = rig().await;
    let (arn, path, raw) = invoke_arn("q1w2e3r4t5y6");
    let data = r
        .drive(
            "bedrock-invoke",
            &arn,
            &path,
            invocation(&arn, "InProgress", json!({})),
            "running",
            invocation(
                &arn,
                "Completed",
                json!({"endTime": rfc3339(SystemTime::now())}),
            ),
            "succeeded",
        )
        .await;
    assert_eq!(data["upstream_status"], "Completed");
    assert_eq!(data["result"]["invocationArn"], arn.as_str());
    assert_eq!(
        data["result"]["outputDataConfig"]["s3OutputDataConfig"]["s3Uri"],
        "s3://my-bucket/reel/"
    );
    assert_eq!(data["error"], Value::Null);
    assert_signed_at(&r, &path, &raw);

    let (arn, path, raw) = invoke_arn("f0f0f0f0f0f0");
    let data = r
        .drive(
            "bedrock-invoke",
            &arn,
            &path,
            invocation(&arn, "InProgress", json!({})),
            "running",
            invocation(
                &arn,
                "Failed",
                json!({"failureMessage": "The prompt was blocked by content filters."}),
            ),
            "failed",
        )
        .await;
    assert_eq!(
        data["error"],
        json!({"code": "failed", "message": "The prompt was blocked by content filters."})
    );
    assert_eq!(data["result"], Value::Null);
    assert_signed_at(&r, &path, &raw);

    let (code, body) = r
        .shim
        .register(json!({"upstream": "bedrock-invoke", "operation": "q1w2e3r4t5y6"}))
        .await;
    assert_eq!(code, 422, "{body}");
    assert!(body.to_string().contains("async-invoke/{id}"), "{body}");
}
