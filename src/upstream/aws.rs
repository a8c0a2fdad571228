//! Amazon Bedrock: batch inference jobs (`GetModelInvocationJob`) and asynchronous invocations
//! (`GetAsyncInvoke`, e.g. Nova Reel video). Shapes, enums and paths from botocore
//! `botocore/data/bedrock/2023-04-20/service-2.json` and
//! `botocore/data/bedrock-runtime/2023-09-30/service-2.json`.
//!
//! Both APIs name a job by an ARN, which goes into the path as one segment with `:` and `/`
//! percent-encoded ([`PresetSpec::operation_segment`]), as botocore renders the non-greedy
//! labels `{jobIdentifier}` and `{invocationArn}` (`serialize.py` `_render_uri_template`,
//! `percent_encode` with `SAFE_CHARS = '-._~'`). Both sign as service `bedrock` (the
//! `signingName` of both models): `auth = { aws_sigv4 = { service = "bedrock", region } }`, or a
//! Bedrock API key as `Authorization: Bearer …` (`smithy.api#httpBearerAuth`; botocore reads it
//! from `AWS_BEARER_TOKEN_BEDROCK`, `utils.py` `get_token_from_environment`). No default base
//! URL (it names the region) and no default header. Bedrock sends no webhooks for either.

use std::time::Duration;

use percent_encoding::percent_decode_str;
use serde_json::{Value, json};

use super::{
    Observation, ObservedState, count, ended, fraction, non_null, rfc3339, status_text, with,
};

use super::presets::{CreateId, CreateRule, PresetSpec, ProxyPatterns, segments};
use crate::schedule::config::PollConfig;

/// A batch job runs for up to `timeoutDurationInHours` (24–168, botocore
/// `ModelInvocationJobTimeoutDurationInHours`) after it was scheduled: the default deadline
/// covers the longest, plus a day of queueing.
const BATCH_DEADLINE: Duration = Duration::from_secs(8 * 24 * 3600);

/// Proxying: a Bedrock API key (`Authorization: Bearer`) passes through as it is; a SigV4
/// signature covers the `Host` the app signed for (hookshim's), so AWS refuses it upstream.
const AWS_AUTH: &[&str] = &["authorization"];

/// `bedrock-batch`: a Bedrock batch inference job, `GET /model-invocation-job/{jobIdentifier}`
/// on `bedrock.{region}.amazonaws.com`; the operation is the job ARN `CreateModelInvocationJob`
/// answers (or its 12-character job id).
pub static BATCH: PresetSpec = PresetSpec {
    name: "bedrock-batch",
    status_path: Some("model-invocation-job/{operation}"),
    poll: PollConfig {
        deadline: BATCH_DEADLINE,
        ..PollConfig::batch()
    },
    reads: "status (Submitted … Completed / PartiallyCompleted / Failed / Stopped / Expired), processedRecordCount / totalRecordCount, outputDataConfig, message, jobExpirationTime",
    read: Some(read_invocation_job),
    proxy: Some(ProxyPatterns {
        create: |method, path| {
            (method == "POST" && path == "model-invocation-job").then_some(CreateRule {
                needs_background: false,
                id: CreateId::Field("/jobArn"),
                returns_job: false,
            })
        },
        status_read: |path, _| one_segment_below("model-invocation-job", path),
        auth_headers: AWS_AUTH,
    }),
    operation_check: Some(check_job_identifier),
    operation_segment: true,
    aws_signing_name: Some("bedrock"),
    ..PresetSpec::BASE
};

/// `bedrock-async-invoke`: a Bedrock asynchronous invocation (`StartAsyncInvoke`, e.g. Nova
/// Reel video), `GET /async-invoke/{invocationArn}` on `bedrock-runtime.{region}.amazonaws.com`;
/// the operation is the invocation ARN.
pub static ASYNC_INVOKE: PresetSpec = PresetSpec {
    name: "bedrock-async-invoke",
    status_path: Some("async-invoke/{operation}"),
    poll: PollConfig::media(),
    reads: "status (InProgress / Completed / Failed), outputDataConfig, failureMessage",
    read: Some(read_async_invoke),
    proxy: Some(ProxyPatterns {
        create: |method, path| {
            (method == "POST" && path == "async-invoke").then_some(CreateRule {
                needs_background: false,
                id: CreateId::Field("/invocationArn"),
                returns_job: false,
            })
        },
        status_read: |path, _| one_segment_below("async-invoke", path),
        auth_headers: AWS_AUTH,
    }),
    operation_check: Some(check_invocation_arn),
    operation_segment: true,
    aws_signing_name: Some("bedrock"),
    ..PresetSpec::BASE
};

/// The operation of `GET {collection}/{one encoded segment}`, percent-decoded (the ARN as the
/// app registered it).
fn one_segment_below(collection: &str, path: &str) -> Option<String> {
    match segments(path).as_slice() {
        [c, id] if *c == collection && !id.is_empty() => {
            Some(percent_decode_str(id).decode_utf8_lossy().into_owned())
        }
        _ => None,
    }
}

/// The resource part of a Bedrock ARN, `arn:aws[-partition]:bedrock:{region}:{account}:{res}`
/// (the botocore patterns: region `[a-z0-9-]{1,20}`, account 12 digits).
fn bedrock_arn_resource(arn: &str) -> Option<&str> {
    let mut parts = arn.splitn(6, ':');
    let (arn_, partition, service, region, account, resource) = (
        parts.next()?,
        parts.next()?,
        parts.next()?,
        parts.next()?,
        parts.next()?,
        parts.next()?,
    );
    let partition_ok = partition == "aws"
        || partition
            .strip_prefix("aws-")
            .is_some_and(|p| !p.is_empty());
    let region_ok = (1..=20).contains(&region.len())
        && region
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    let account_ok = account.len() == 12 && account.bytes().all(|b| b.is_ascii_digit());
    (arn_ == "arn" && partition_ok && service == "bedrock" && region_ok && account_ok)
        .then_some(resource)
}

/// A Bedrock job id: 12 lower-case letters or digits (botocore `[a-z0-9]{12}`).
fn job_id(id: &str) -> bool {
    id.len() == 12
        && id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
}

/// `ModelInvocationJobIdentifier`: the job ARN
/// `arn:aws:bedrock:{region}:{account}:model-invocation-job/{id}` or the bare id.
fn check_job_identifier(op: &str) -> Result<(), String> {
    let id = bedrock_arn_resource(op)
        .and_then(|r| r.strip_prefix("model-invocation-job/"))
        .unwrap_or(op);
    if job_id(id) {
        Ok(())
    } else {
        Err(
            "`operation` must be the job ARN CreateModelInvocationJob answers, \
             arn:aws:bedrock:{region}:{account}:model-invocation-job/{id} (or the 12-character \
             job id)"
                .into(),
        )
    }
}

/// `InvocationArn`: `arn:aws:bedrock:{region}:{account}:async-invoke/{id}`.
fn check_invocation_arn(op: &str) -> Result<(), String> {
    let ok = bedrock_arn_resource(op)
        .and_then(|r| r.strip_prefix("async-invoke/"))
        .is_some_and(job_id);
    if ok {
        Ok(())
    } else {
        Err(
            "`operation` must be the invocation ARN StartAsyncInvoke answers, \
             arn:aws:bedrock:{region}:{account}:async-invoke/{id}"
                .into(),
        )
    }
}

/// `GetModelInvocationJob` (`ModelInvocationJobStatus`): `Submitted`, `Validating`, `Scheduled`
/// are pending; `InProgress`, `Stopping` and statuses added later running; `Completed` and
/// `PartiallyCompleted` ("not all of your records could be processed in time"; the output is in
/// S3) succeeded; `Failed` failed; `Stopped` ("stopped by a user") cancelled; `Expired` ("timed
/// out because it was scheduled but didn't begin before the set timeout") expired. `result` is
/// the job ARN, `outputDataConfig` and the record counts; `error` the job's `message`.
pub fn read_invocation_job(body: &Value) -> Result<Observation, String> {
    let raw = status_text(body, "/status")?;
    let state = match raw {
        "Submitted" | "Validating" | "Scheduled" => ObservedState::Pending,
        "Completed" | "PartiallyCompleted" => ObservedState::Succeeded,
        "Failed" => ObservedState::Failed,
        "Stopped" => ObservedState::Cancelled,
        "Expired" => ObservedState::Expired,
        _ => ObservedState::Running,
    };
    let mut obs = Observation::new(state, Value::from(raw));
    let n = |k: &str| count(body.get(k));
    obs.progress = n("processedRecordCount").and_then(|d| fraction(d, n("totalRecordCount")));
    obs.expires_at = rfc3339(body.get("jobExpirationTime"));
    let output = non_null(body, "/outputDataConfig");
    match state {
        ObservedState::Succeeded => {
            obs.progress = Some(1.0);
            obs.result = Some(json!({
                "jobArn": non_null(body, "/jobArn"),
                "outputDataConfig": output,
                "totalRecordCount": non_null(body, "/totalRecordCount"),
                "processedRecordCount": non_null(body, "/processedRecordCount"),
                "successRecordCount": non_null(body, "/successRecordCount"),
                "errorRecordCount": non_null(body, "/errorRecordCount"),
            }));
        }
        ObservedState::Failed | ObservedState::Cancelled | ObservedState::Expired => {
            let why = match state {
                ObservedState::Failed => "the batch inference job failed",
                ObservedState::Cancelled => "the batch inference job was stopped",
                _ => "the batch inference job expired before it began",
            };
            let message = body.get("message").and_then(Value::as_str).unwrap_or(why);
            // What a stopped or failed job wrote so far is in its output location.
            obs.error = Some(with(
                ended(&raw.to_ascii_lowercase(), message),
                "outputDataConfig",
                output,
            ));
        }
        _ => {}
    }
    Ok(obs)
}

/// `GetAsyncInvoke` (`AsyncInvokeStatus`: `InProgress`, `Completed`, `Failed`; anything added
/// later is running). `result` is the invocation ARN and `outputDataConfig` (the S3 location);
/// `error` the invocation's `failureMessage`.
pub fn read_async_invoke(body: &Value) -> Result<Observation, String> {
    let raw = status_text(body, "/status")?;
    let state = match raw {
        "Completed" => ObservedState::Succeeded,
        "Failed" => ObservedState::Failed,
        _ => ObservedState::Running,
    };
    let mut obs = Observation::new(state, Value::from(raw));
    match state {
        ObservedState::Succeeded => {
            obs.progress = Some(1.0);
            obs.result = Some(json!({
                "invocationArn": non_null(body, "/invocationArn"),
                "outputDataConfig": non_null(body, "/outputDataConfig"),
            }));
        }
        ObservedState::Failed => {
            let message = body
                .get("failureMessage")
                .and_then(Value::as_str)
                .unwrap_or("the asynchronous invocation failed");
            obs.error = Some(ended("failed", message));
        }
        _ => {}
    }
    Ok(obs)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::Timestamp;

    const JOB_ARN: &str =
        "arn:aws:bedrock:us-east-1:123456789012:model-invocation-job/abc123xyz789";
    const INVOKE_ARN: &str = "arn:aws:bedrock:us-east-1:123456789012:async-invoke/q1w2e3r4t5y6";

    /// A `GetModelInvocationJobResponse` (botocore `data/bedrock/2023-04-20/service-2.json`;
    /// timestamps are `iso8601`).
    fn job(status: &str, extra: Value) -> Value {
        let mut v = json!({
            "jobArn": JOB_ARN, "jobName": "nightly", "modelId": "anthropic.claude-3-haiku-20240307-v1:0",
            "roleArn": "arn:aws:iam::123456789012:role/batch", "status": status,
            "submitTime": "2026-11-30T10:00:00.000Z", "lastModifiedTime": "2026-11-30T10:05:00.000Z",
            "inputDataConfig": {"s3InputDataConfig": {"s3Uri": "s3://b/in/"}},
            "outputDataConfig": {"s3OutputDataConfig": {"s3Uri": "s3://b/out/"}},
            "timeoutDurationInHours": 72, "jobExpirationTime": "2026-12-03T10:00:00.000Z",
            "totalRecordCount": 200, "processedRecordCount": 50,
            "successRecordCount": 48, "errorRecordCount": 2,
        });
        v.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        v
    }

    #[test]
    fn every_invocation_job_status() {
        for (s, want) in [
            ("Submitted", ObservedState::Pending),
            ("Validating", ObservedState::Pending),
            ("Scheduled", ObservedState::Pending),
            ("InProgress", ObservedState::Running),
            ("Stopping", ObservedState::Running),
            ("SomethingNew", ObservedState::Running),
            ("Completed", ObservedState::Succeeded),
            ("PartiallyCompleted", ObservedState::Succeeded),
            ("Failed", ObservedState::Failed),
            ("Stopped", ObservedState::Cancelled),
            ("Expired", ObservedState::Expired),
        ] {
            let o = read_invocation_job(&job(s, json!({}))).unwrap();
            assert_eq!(o.state, want, "{s}");
            assert_eq!(o.raw_status, s);
            assert_eq!(o.result.is_some(), want == ObservedState::Succeeded, "{s}");
            assert_eq!(
                o.error.is_some(),
                o.state.is_terminal() && want != ObservedState::Succeeded,
                "{s}"
            );
            let expires = humantime::parse_rfc3339("2026-12-03T10:00:00Z").unwrap();
            assert_eq!(o.expires_at, Some(Timestamp::from_system(expires)), "{s}");
        }
    }

    #[test]
    fn invocation_job_progress_result_and_error() {
        let running = read_invocation_job(&job("InProgress", json!({}))).unwrap();
        assert_eq!(running.progress, Some(0.25));
        let no_total =
            read_invocation_job(&job("InProgress", json!({"totalRecordCount": null}))).unwrap();
        assert_eq!(no_total.progress, None);
        let done = read_invocation_job(&job(
            "PartiallyCompleted",
            json!({"processedRecordCount": 180}),
        ))
        .unwrap();
        assert_eq!(done.progress, Some(1.0));
        let r = done.result.unwrap();
        assert_eq!(r["jobArn"], JOB_ARN);
        assert_eq!(
            r["outputDataConfig"]["s3OutputDataConfig"]["s3Uri"],
            "s3://b/out/"
        );
        assert_eq!(r["processedRecordCount"], 180);
        assert_eq!(r["errorRecordCount"], 2);
        let failed = read_invocation_job(&job(
            "Failed",
            json!({"message": "The role lacks s3:GetObject"}),
        ))
        .unwrap();
        let e = failed.error.unwrap();
        assert_eq!(e["code"], "failed");
        assert_eq!(e["message"], "The role lacks s3:GetObject");
        assert_eq!(
            e["outputDataConfig"]["s3OutputDataConfig"]["s3Uri"],
            "s3://b/out/"
        );
        for (s, code, words) in [
            ("Failed", "failed", "failed"),
            ("Stopped", "stopped", "stopped"),
            ("Expired", "expired", "expired"),
        ] {
            let e = read_invocation_job(&job(s, json!({})))
                .unwrap()
                .error
                .unwrap();
            assert_eq!(e["code"], code);
            assert!(e["message"].as_str().unwrap().contains(words), "{e}");
        }
        assert!(read_invocation_job(&json!({"jobArn": JOB_ARN})).is_err());
        assert!(read_invocation_job(&json!({"status": 3})).is_err());
    }

    #[test]
    fn every_async_invoke_status() {
        // A `GetAsyncInvokeResponse` (botocore `data/bedrock-runtime/2023-09-30/service-2.json`).
        let inv = |status: &str, extra: Value| {
            let mut v = json!({"invocationArn": INVOKE_ARN,
                "modelArn": "arn:aws:bedrock:us-east-1::foundation-model/amazon.nova-reel-v1:1",
                "status": status, "submitTime": "2026-11-30T10:00:00Z",
                "outputDataConfig": {"s3OutputDataConfig": {"s3Uri": "s3://b/reel/q1w2e3r4t5y6"}}});
            v.as_object_mut()
                .unwrap()
                .extend(extra.as_object().unwrap().clone());
            read_async_invoke(&v).unwrap()
        };
        let o = inv("InProgress", json!({}));
        assert_eq!(o.state, ObservedState::Running);
        assert_eq!((o.result, o.error), (None, None));
        assert_eq!(inv("Queued", json!({})).state, ObservedState::Running);
        let done = inv("Completed", json!({"endTime": "2026-11-30T10:04:00Z"}));
        assert_eq!(done.state, ObservedState::Succeeded);
        assert_eq!(done.progress, Some(1.0));
        let r = done.result.unwrap();
        assert_eq!(r["invocationArn"], INVOKE_ARN);
        assert_eq!(
            r["outputDataConfig"]["s3OutputDataConfig"]["s3Uri"],
            "s3://b/reel/q1w2e3r4t5y6"
        );
        assert_eq!(done.error, None);
        let failed = inv("Failed", json!({"failureMessage": "Content moderation"}));
        assert_eq!(failed.state, ObservedState::Failed);
        assert_eq!(
            failed.error,
            Some(json!({"code": "failed", "message": "Content moderation"}))
        );
        assert_eq!(failed.result, None);
        let bare = inv("Failed", json!({"failureMessage": null}));
        assert_eq!(
            bare.error.unwrap()["message"],
            "the asynchronous invocation failed"
        );
        assert!(read_async_invoke(&json!({"invocationArn": INVOKE_ARN})).is_err());
    }

    #[test]
    fn arns_and_ids_are_checked() {
        for ok in [
            JOB_ARN,
            "abc123xyz789",
            "arn:aws-us-gov:bedrock:us-gov-west-1:123456789012:model-invocation-job/abc123xyz789",
            "arn:aws-cn:bedrock:cn-north-1:123456789012:model-invocation-job/000000000000",
        ] {
            assert_eq!(check_job_identifier(ok), Ok(()), "{ok}");
        }
        for bad in [
            "abc",
            "ABC123XYZ789",
            "abc123xyz7890",
            "model-invocation-job/abc123xyz789",
            "arn:aws:bedrock:us-east-1:123456789012:async-invoke/abc123xyz789",
            "arn:aws:s3:us-east-1:123456789012:model-invocation-job/abc123xyz789",
            "arn:aws:bedrock:us-east-1:1234:model-invocation-job/abc123xyz789",
            "arn:azure:bedrock:us-east-1:123456789012:model-invocation-job/abc123xyz789",
            "arn:aws:bedrock:US-EAST-1:123456789012:model-invocation-job/abc123xyz789",
        ] {
            let e = check_job_identifier(bad).unwrap_err();
            assert!(e.contains("model-invocation-job/{id}"), "{bad}: {e}");
        }
        assert_eq!(check_invocation_arn(INVOKE_ARN), Ok(()));
        for bad in [
            "q1w2e3r4t5y6",
            JOB_ARN,
            "arn:aws:bedrock:us-east-1:123456789012:async-invoke/",
        ] {
            let e = check_invocation_arn(bad).unwrap_err();
            assert!(e.contains("async-invoke/{id}"), "{bad}: {e}");
        }
    }

    #[test]
    fn the_arn_is_one_path_segment_as_botocore_writes_it() {
        use crate::upstream::config::testing::{env, parse};
        use crate::upstream::{prepare_operation, status_url};
        let ups = parse(
            "[upstreams.b]\npreset = \"bedrock-batch\"\nbase_url = \"https://bedrock.us-east-1.amazonaws.com/\"\n\
             [upstreams.r]\npreset = \"bedrock-async-invoke\"\nbase_url = \"https://bedrock-runtime.us-east-1.amazonaws.com/\"\n",
            &env,
        )
        .unwrap();
        let (b, r) = (&ups["b"], &ups["r"]);
        // botocore: percent_encode(jobIdentifier) with SAFE_CHARS '-._~'.
        assert_eq!(
            status_url(b, JOB_ARN).unwrap().as_str(),
            "https://bedrock.us-east-1.amazonaws.com/model-invocation-job/arn%3Aaws%3Abedrock%3Aus-east-1%3A123456789012%3Amodel-invocation-job%2Fabc123xyz789"
        );
        assert_eq!(
            status_url(b, "abc123xyz789").unwrap().as_str(),
            "https://bedrock.us-east-1.amazonaws.com/model-invocation-job/abc123xyz789"
        );
        assert_eq!(
            status_url(r, INVOKE_ARN).unwrap().as_str(),
            "https://bedrock-runtime.us-east-1.amazonaws.com/async-invoke/arn%3Aaws%3Abedrock%3Aus-east-1%3A123456789012%3Aasync-invoke%2Fq1w2e3r4t5y6"
        );
        assert_eq!(prepare_operation(b, JOB_ARN).as_deref(), Ok(JOB_ARN));
        assert_eq!(prepare_operation(r, INVOKE_ARN).as_deref(), Ok(INVOKE_ARN));
        assert!(
            prepare_operation(b, "my job")
                .unwrap_err()
                .contains("model-invocation-job/{id}")
        );
        assert!(
            prepare_operation(r, JOB_ARN)
                .unwrap_err()
                .contains("async-invoke/{id}")
        );
        // No default base URL: the region is the user's.
        let e = parse("[upstreams.b]\npreset = \"bedrock-batch\"\n", &env).unwrap_err();
        assert!(e.contains("`upstreams.b.base_url`: required"), "{e}");
    }

    #[test]
    fn proxy_patterns_read_the_encoded_arn() {
        let p = BATCH.proxy.as_ref().unwrap();
        let c = (p.create)("POST", "model-invocation-job").unwrap();
        assert_eq!((c.id, c.returns_job), (CreateId::Field("/jobArn"), false));
        assert!((p.create)("GET", "model-invocation-job").is_none());
        assert!((p.create)("POST", "model-invocation-job/abc123xyz789/stop").is_none());
        let encoded =
            "arn%3Aaws%3Abedrock%3Aus-east-1%3A123456789012%3Amodel-invocation-job%2Fabc123xyz789";
        assert_eq!(
            (p.status_read)(&format!("model-invocation-job/{encoded}"), "").as_deref(),
            Some(JOB_ARN)
        );
        assert!((p.status_read)("model-invocation-jobs", "").is_none());
        assert!((p.status_read)("model-invocation-job/abc123xyz789/stop", "").is_none());
        let p = ASYNC_INVOKE.proxy.as_ref().unwrap();
        let c = (p.create)("POST", "async-invoke").unwrap();
        assert_eq!(c.id, CreateId::Field("/invocationArn"));
        let encoded =
            "arn%3Aaws%3Abedrock%3Aus-east-1%3A123456789012%3Aasync-invoke%2Fq1w2e3r4t5y6";
        assert_eq!(
            (p.status_read)(&format!("async-invoke/{encoded}"), "").as_deref(),
            Some(INVOKE_ARN)
        );
        assert!((p.status_read)("async-invoke", "").is_none());
    }
}
