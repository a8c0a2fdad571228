//! Credentials that refresh (`auth`): a fake upstream that accepts only the current token and
//! answers 401 to any other; tokens from a command, a file, a loopback metadata server; AWS
//! SigV4 verified by the fake with AWS's own `aws-sigv4` crate.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use axum::Router;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::IntoResponse;
use axum::routing::{any, get};
use serde_json::json;

use crate::common::*;

/// How the fake upstream decides which token is current.
#[derive(Clone, Copy, PartialEq)]
enum Rotation {
    /// Fixed list of tokens; after every `every` accepted reads the fake rotates to the next
    /// one and writes it into the token file (the credential's source).
    File { every: usize },
    /// Tokens issued by the fake metadata server, valid until their expiry.
    Metadata,
}

#[derive(Default)]
struct TokenUpstreamState {
    /// The token accepted now (File rotation).
    current: String,
    generation: usize,
    /// Tokens issued by the metadata server and when they expire.
    issued: Vec<(String, Instant)>,
    accepted: usize,
    /// After this many accepted reads the job is done.
    done_after: usize,
    /// Every read: (status answered, authorization header).
    seen: Vec<(u16, String)>,
}

struct TokenUpstream {
    url: String,
    state: Arc<Mutex<TokenUpstreamState>>,
}

fn token_for(generation: usize) -> String {
    // Different lengths, so a file's size changes with every rotation.
    format!("tok-{}", "x".repeat(generation + 1))
}

async fn start_token_upstream(
    rotation: Rotation,
    token_file: PathBuf,
    done_after: usize,
) -> TokenUpstream {
    let state = Arc::new(Mutex::new(TokenUpstreamState {
        current: token_for(0),
        done_after,
        ..Default::default()
    }));
    std::fs::write(&token_file, format!("{}\n", token_for(0))).unwrap();
    let st = state.clone();
    let handler = move |headers: HeaderMap| {
        let st = st.clone();
        let token_file = token_file.clone();
        async move {
            let mut s = st.lock().unwrap();
            let auth = headers
                .get("authorization")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_string();
            let now = Instant::now();
            let valid = match rotation {
                Rotation::File { .. } => auth == format!("Bearer {}", s.current),
                Rotation::Metadata => s
                    .issued
                    .iter()
                    .any(|(t, until)| auth == format!("Bearer {t}") && now < *until),
            };
            if !valid {
                s.seen.push((401, auth));
                return (
                    StatusCode::UNAUTHORIZED,
                    axum::Json(json!({"error": "invalid token"})),
                )
                    .into_response();
            }
            s.seen.push((200, auth));
            s.accepted += 1;
            let state = if s.accepted >= s.done_after {
                "done"
            } else {
                "running"
            };
            if let Rotation::File { every } = rotation {
                if s.accepted % every == 0 && state == "running" {
                    s.generation += 1;
                    s.current = token_for(s.generation);
                    std::fs::write(&token_file, format!("{}\n", s.current)).unwrap();
                }
            }
            axum::Json(json!({"state": state, "output": {"n": s.accepted}})).into_response()
        }
    };
    let router = Router::new().route("/jobs/{id}", get(handler));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let _ = axum::serve(listener, router).await;
    });
    TokenUpstream {
        url: format!("http://{addr}"),
        state,
    }
}

/// A config with one upstream `secure` at `{UP}` whose `auth` is `auth`.
fn config(auth: &str) -> String {
    let section = r#"
[upstreams.secure]
base_url = "{UP}/"
status_path = "jobs/{operation}"
status_field = "/state"
succeeded = ["done"]
failed = ["error"]
result_field = "/output"
rate = { per_second = 200, burst = 20 }
poll = { initial = "50ms", multiplier = 1.5, max = "200ms", jitter = 0.1, deadline = "1h" }
auth = AUTH
"#;
    format!(
        "{}{}",
        store_and_callbacks!(),
        section.replace("AUTH", auth)
    )
}

/// A FakeUpstream only to fill `{UP}`: the config's `{UP}` is replaced by `url`.
async fn start_shim(
    config_text: &str,
    url: &str,
    recv: &Receiver,
    env: Vec<(String, String)>,
) -> TestShim {
    let placeholder = FakeUpstream {
        url: url.to_string(),
        state: Default::default(),
    };
    TestShim::start_with_env(config_text, &placeholder, recv, env).await
}

fn toml_str(p: &std::path::Path) -> String {
    format!("{:?}", p.display().to_string())
}

#[tokio::test]
async fn a_rotated_command_token_costs_one_401_per_rotation_and_the_operation_completes() {
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    let up = start_token_upstream(Rotation::File { every: 2 }, token.clone(), 6).await;
    // The command reads the file the fake rotates; `refresh` is long, so only a 401 refreshes.
    let auth = format!(
        r#"{{ command = ["sh", "-c", "cat {}"], refresh = "1h" }}"#,
        token.display()
    );
    let recv = Receiver::start().await;
    let shim = start_shim(&config(&auth), &up.url, &recv, vec![]).await;
    let (code, op) = shim
        .register(json!({"upstream": "secure", "operation": "j1"}))
        .await;
    assert_eq!(code, 201, "{op}");
    let id = id_of(&op);
    let done = wait_status(&shim, &id, "succeeded").await;
    assert_eq!(done["result"]["n"], 6);
    wait_calls(&recv, &id, 1).await;
    {
        let s = up.state.lock().unwrap();
        let rejected = s.seen.iter().filter(|(c, _)| *c == 401).count();
        assert_eq!(s.generation, 2, "two rotations");
        assert_eq!(rejected, 2, "exactly one 401 per rotation: {:?}", s.seen);
        // Every 401 was followed at once by a read with the new token.
        for (i, (c, _)) in s.seen.iter().enumerate() {
            if *c == 401 {
                assert_eq!(s.seen[i + 1].0, 200, "{:?}", s.seen);
            }
        }
    }
    let m = shim.metrics().await;
    assert!(
        m.contains(
            r#"hookshim_upstream_requests_total{upstream="secure",outcome="credential_rejected"} 2"#
        ),
        "{m}"
    );
    assert!(
        m.contains(r#"hookshim_credential_refreshes_total{upstream="secure",result="ok"} 3"#),
        "{m}"
    );
}

#[tokio::test]
async fn a_failing_command_shows_in_readyz_and_the_operation_keeps_running() {
    let up = FakeUpstream::start().await;
    up.set("jobs/j1", json!({"state": "done"}));
    let auth =
        r#"{ command = ["sh", "-c", "echo 'not logged in: run gcloud auth login' >&2; exit 1"] }"#;
    let recv = Receiver::start().await;
    let shim = start_shim(&config(auth), &up.url, &recv, vec![]).await;
    let (code, op) = shim
        .register(json!({"upstream": "secure", "operation": "j1"}))
        .await;
    assert_eq!(code, 201, "{op}");
    let id = id_of(&op);
    let ready = eventually(
        Duration::from_secs(10),
        "credential error in /readyz",
        || async {
            let (code, body) = shim.get("/readyz").await;
            body["credentials"]["secure"]
                .is_string()
                .then_some((code, body))
        },
    )
    .await;
    assert_eq!(
        ready.1["credentials"]["secure"],
        "command sh exited 1: not logged in: run gcloud auth login"
    );
    // Documented choice: the service stays ready (other upstreams, registrations, callbacks work).
    assert_eq!(ready.0, 200, "{}", ready.1);
    // Several polls' worth of time: still running, never failed, and no request went out
    // without a credential.
    tokio::time::sleep(Duration::from_millis(600)).await;
    let op = shim.op(&id).await;
    // Not terminal (never seen by the upstream, so still `pending`), and the reason is recorded.
    assert_eq!(op["status"], "pending", "{op}");
    assert!(
        op["last_poll_error"]
            .as_str()
            .unwrap_or("")
            .contains("command sh exited 1"),
        "{op}"
    );
    assert!(op["polls"].as_u64().unwrap_or(0) >= 1, "{op}");
    assert!(up.requests_for("jobs/j1").is_empty());
    let m = shim.metrics().await;
    assert!(
        m.contains(r#"hookshim_credential_refreshes_total{upstream="secure",result="error"}"#),
        "{m}"
    );
    assert!(recv.calls_for(&id).is_empty());
}

#[tokio::test]
async fn a_token_file_is_read_again_when_it_changes_without_a_401() {
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    let up = start_token_upstream(Rotation::File { every: 2 }, token.clone(), 6).await;
    let auth = format!("{{ file = {} }}", toml_str(&token));
    let recv = Receiver::start().await;
    let shim = start_shim(&config(&auth), &up.url, &recv, vec![]).await;
    let (_, op) = shim
        .register(json!({"upstream": "secure", "operation": "j1"}))
        .await;
    let id = id_of(&op);
    wait_status(&shim, &id, "succeeded").await;
    let s = up.state.lock().unwrap();
    assert_eq!(s.generation, 2);
    assert!(s.seen.iter().all(|(c, _)| *c == 200), "{:?}", s.seen);
    let tokens: std::collections::BTreeSet<_> = s.seen.iter().map(|(_, a)| a.clone()).collect();
    assert_eq!(tokens.len(), 3, "each rotated token was used: {tokens:?}");
}

#[tokio::test]
async fn the_metadata_token_is_refreshed_before_it_expires() {
    let dir = tempfile::tempdir().unwrap();
    // Done after ~3.5 s of polls every ≤200 ms, tokens valid 2 s: at least two tokens.
    let up = start_token_upstream(Rotation::Metadata, dir.path().join("unused"), 25).await;
    let issuer = up.state.clone();
    let requests = Arc::new(Mutex::new(0usize));
    let counted = requests.clone();
    let metadata = Router::new().route(
        "/computeMetadata/v1/instance/service-accounts/default/token",
        get(move |headers: HeaderMap| {
            let issuer = issuer.clone();
            let counted = counted.clone();
            async move {
                *counted.lock().unwrap() += 1;
                if headers.get("metadata-flavor").and_then(|v| v.to_str().ok()) != Some("Google") {
                    return (StatusCode::FORBIDDEN, "missing Metadata-Flavor").into_response();
                }
                let mut s = issuer.lock().unwrap();
                let t = format!("meta-{}", s.issued.len());
                s.issued
                    .push((t.clone(), Instant::now() + Duration::from_secs(2)));
                axum::Json(json!({"access_token": t, "expires_in": 2, "token_type": "Bearer"}))
                    .into_response()
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let maddr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let _ = axum::serve(listener, metadata).await;
    });
    let auth = format!(
        r#"{{ gcp_metadata = true, metadata_url = "http://{maddr}/computeMetadata/v1/instance/service-accounts/default/token" }}"#
    );
    let recv = Receiver::start().await;
    let shim = start_shim(&config(&auth), &up.url, &recv, vec![]).await;
    let (_, op) = shim
        .register(json!({"upstream": "secure", "operation": "j1"}))
        .await;
    let id = id_of(&op);
    eventually(Duration::from_secs(20), "operation to succeed", || async {
        (shim.op(&id).await["status"] == "succeeded").then_some(())
    })
    .await;
    let s = up.state.lock().unwrap();
    assert!(s.issued.len() >= 2, "refreshed: {} tokens", s.issued.len());
    assert!(
        s.seen.iter().all(|(c, _)| *c == 200),
        "no read carried an expired token: {:?}",
        s.seen
    );
    assert_eq!(*requests.lock().unwrap(), s.issued.len());
}

// ---------------------------------------------------------------------------------------------
// AWS SigV4: a fake "AWS" that checks every signature with the aws-sigv4 crate itself.

#[derive(Default)]
struct AwsState {
    /// (path as received, verdict) per request.
    seen: Vec<(String, Result<(), String>)>,
    session_tokens: Vec<String>,
}

pub(crate) const AKID: &str = "AKIDHOOKSHIMTEST";
pub(crate) const SECRET: &str = "hookshim/test/secret/key/EXAMPLEKEY";

/// Recompute the signature of the received request with `aws-sigv4` (the same headers it says
/// it signed, the same time) and compare the whole Authorization header.
pub(crate) fn verify_sigv4(
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    token: Option<&str>,
) -> Result<(), String> {
    use aws_sigv4::http_request::{SignableBody, SignableRequest, SigningSettings, sign};
    let got = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .ok_or("no Authorization")?;
    let signed: Vec<String> = got
        .split("SignedHeaders=")
        .nth(1)
        .and_then(|r| r.split(',').next())
        .ok_or("no SignedHeaders")?
        .split(';')
        .map(str::to_string)
        .collect();
    let amz_date = headers
        .get("x-amz-date")
        .and_then(|v| v.to_str().ok())
        .ok_or("no X-Amz-Date")?;
    let d = amz_date.as_bytes();
    let rfc = format!(
        "{}-{}-{}T{}:{}:{}Z",
        &amz_date[0..4],
        &amz_date[4..6],
        &amz_date[6..8],
        &amz_date[9..11],
        &amz_date[11..13],
        &amz_date[13..15]
    );
    assert_eq!(d.len(), 16);
    let time: SystemTime = humantime::parse_rfc3339(&rfc).map_err(|e| e.to_string())?;
    let skew = SystemTime::now()
        .duration_since(time)
        .unwrap_or_else(|e| e.duration());
    if skew > Duration::from_secs(300) {
        return Err("X-Amz-Date too far off".into());
    }
    let host = headers
        .get("host")
        .and_then(|v| v.to_str().ok())
        .ok_or("no Host")?;
    let creds = aws_credential_types::Credentials::new(
        AKID,
        SECRET,
        token.map(str::to_string),
        None,
        "test",
    );
    let identity = creds.into();
    let params = aws_sigv4::sign::v4::SigningParams::builder()
        .identity(&identity)
        .region("us-east-1")
        .name("bedrock")
        .time(time)
        .settings(SigningSettings::default())
        .build()
        .map_err(|e| e.to_string())?
        .into();
    let hs: Vec<(&str, &str)> = headers
        .iter()
        .filter(|(k, _)| {
            signed.iter().any(|s| s == k.as_str())
                && k.as_str() != "x-amz-date"
                && k.as_str() != "x-amz-security-token"
        })
        .map(|(k, v)| (k.as_str(), v.to_str().unwrap_or("")))
        .collect();
    let url = format!(
        "http://{host}{}",
        uri.path_and_query().map(|p| p.as_str()).unwrap_or("/")
    );
    let req = SignableRequest::new(
        method.as_str(),
        url,
        hs.into_iter(),
        SignableBody::Bytes(&[]),
    )
    .map_err(|e| e.to_string())?;
    let (instructions, _) = sign(req, &params).map_err(|e| e.to_string())?.into_parts();
    let want = instructions
        .headers()
        .find(|(k, _)| *k == "authorization")
        .map(|(_, v)| v.to_string())
        .ok_or("no authorization computed")?;
    if want == got {
        Ok(())
    } else {
        Err(format!("signature mismatch: got {got}, want {want}"))
    }
}

#[tokio::test]
async fn a_bedrock_batch_style_status_read_is_signed_with_sigv4_end_to_end() {
    let dir = tempfile::tempdir().unwrap();
    // Credentials from a profile's credential_process (session token and Expiration), as
    // `aws configure export-credentials --format process` prints them.
    let expiration =
        humantime::format_rfc3339_seconds(SystemTime::now() + Duration::from_secs(3600));
    let out = json!({"Version": 1, "AccessKeyId": AKID, "SecretAccessKey": SECRET,
        "SessionToken": "session-token-1", "Expiration": expiration.to_string()});
    std::fs::write(dir.path().join("creds.json"), out.to_string()).unwrap();
    std::fs::write(
        dir.path().join("config"),
        format!(
            "[profile bedrock-test]\nregion = us-east-1\ncredential_process = cat {}\n",
            dir.path().join("creds.json").display()
        ),
    )
    .unwrap();
    let state = Arc::new(Mutex::new(AwsState::default()));
    let st = state.clone();
    let reads = Arc::new(Mutex::new(0usize));
    let router = Router::new().route(
        "/{*path}",
        any(move |method: Method, uri: Uri, headers: HeaderMap| {
            let st = st.clone();
            let reads = reads.clone();
            async move {
                let token = headers
                    .get("x-amz-security-token")
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_string);
                let verdict = verify_sigv4(&method, &uri, &headers, token.as_deref());
                let mut s = st.lock().unwrap();
                s.session_tokens.push(token.unwrap_or_default());
                s.seen.push((uri.path().to_string(), verdict.clone()));
                if let Err(e) = verdict {
                    return (StatusCode::FORBIDDEN, axum::Json(json!({"message": e}))).into_response();
                }
                let mut n = reads.lock().unwrap();
                *n += 1;
                // GetModelInvocationJob's answer (status Submitted … Completed).
                let status = if *n >= 3 { "Completed" } else { "InProgress" };
                axum::Json(json!({"jobArn": "arn", "status": status, "outputDataConfig": {"s3OutputDataConfig": {"s3Uri": "s3://b/out/"}}}))
                    .into_response()
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let _ = axum::serve(listener, router).await;
    });
    let cfg = format!(
        "{}{}",
        store_and_callbacks!(),
        r#"
[upstreams.bedrock]
base_url = "{UP}/"
status_path = "model-invocation-job/{operation}"
status_field = "/status"
pending = ["Submitted", "Validating", "Scheduled", "InProgress", "Stopping"]
succeeded = ["Completed", "PartiallyCompleted"]
failed = ["Failed"]
cancelled = ["Stopped"]
expired = ["Expired"]
result_field = "/outputDataConfig"
rate = { per_second = 200, burst = 20 }
poll = { initial = "50ms", multiplier = 1.5, max = "200ms", jitter = 0.1, deadline = "1h" }
auth = { aws_sigv4 = { service = "bedrock", region = "us-east-1" } }
"#
    );
    let recv = Receiver::start().await;
    let env = vec![
        (
            "AWS_CONFIG_FILE".to_string(),
            dir.path().join("config").display().to_string(),
        ),
        (
            "AWS_SHARED_CREDENTIALS_FILE".to_string(),
            dir.path().join("none").display().to_string(),
        ),
        ("AWS_PROFILE".to_string(), "bedrock-test".to_string()),
    ];
    let shim = start_shim(&cfg, &format!("http://{addr}"), &recv, env).await;
    let arn = "arn:aws:bedrock:us-east-1:123456789012:model-invocation-job/abc123xyz";
    let (code, op) = shim
        .register(json!({"upstream": "bedrock", "operation": arn}))
        .await;
    assert_eq!(code, 201, "{op}");
    let id = id_of(&op);
    let done = wait_status(&shim, &id, "succeeded").await;
    assert_eq!(done["result"]["s3OutputDataConfig"]["s3Uri"], "s3://b/out/");
    let s = state.lock().unwrap();
    assert_eq!(s.seen.len(), 3, "{:?}", s.seen);
    for (path, verdict) in &s.seen {
        assert!(path.starts_with("/model-invocation-job/arn"), "{path}");
        assert!(verdict.is_ok(), "{verdict:?}");
    }
    assert!(s.session_tokens.iter().all(|t| t == "session-token-1"));
}

#[test]
fn check_shows_the_credential_source_never_a_secret() {
    let cfg = concat!(
        store_and_callbacks!(),
        r#"
[upstreams.vertex]
base_url = "http://127.0.0.1:9/"
status_path = "v1/{operation}"
status_field = "/done"
succeeded = ["true"]
failed = ["false"]
auth = { command = ["gcloud", "auth", "print-access-token"], refresh = "45m" }

[upstreams.aws]
base_url = "http://127.0.0.1:9/"
status_path = "job/{operation}"
status_field = "/status"
succeeded = ["Completed"]
failed = ["Failed"]
auth = { aws_sigv4 = { service = "bedrock", region = "us-east-1" } }
"#
    )
    .replace("{DATA}", "/tmp/unused")
    .replace("{RECV}", "http://127.0.0.1:9");
    let env = env_lookup(vec![
        ("AWS_ACCESS_KEY_ID".into(), "AKIDSECRETVALUE".into()),
        ("AWS_SECRET_ACCESS_KEY".into(), "very-secret-key".into()),
    ]);
    let c = hookshim::config::Config::parse(&cfg, "t.toml", &env).unwrap();
    let text = serde_json::to_string(&c.redacted()).unwrap();
    assert!(
        text.contains(r#""command":["gcloud","auth","print-access-token"]"#),
        "{text}"
    );
    assert!(text.contains(r#""service":"bedrock""#), "{text}");
    assert!(
        !text.contains("very-secret-key") && !text.contains("AKIDSECRETVALUE"),
        "{text}"
    );
    assert!(!format!("{c:?}").contains("very-secret-key"));
    // The same header written twice is refused, naming the key.
    let twice = cfg.replace(
        "auth = { command",
        "headers = { Authorization = \"Bearer x\" }\nauth = { command",
    );
    let e = hookshim::config::Config::parse(&twice, "t.toml", &env)
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.contains("upstreams.vertex.headers.Authorization")
            && e.contains("`auth` sets this header"),
        "{e}"
    );
}
