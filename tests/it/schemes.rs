//! Inbound webhook schemes beyond Standard Webhooks `v1`: GitHub's `X-Hub-Signature-256`, the
//! unsigned `none` scheme, Gemini's JWT-signed webhooks (against a JWKS served here), Standard
//! Webhooks `v1a` (Ed25519), Stripe's `Stripe-Signature`, and previous secrets accepted until
//! their `until` (on a manual clock).

use std::sync::Arc;
use std::time::Duration;

use crate::common::*;
use aws_lc_rs::signature::KeyPair as _;
use base64::Engine;
use base64::engine::general_purpose::{STANDARD as B64, URL_SAFE_NO_PAD as B64URL};
use hmac::{Hmac, KeyInit, Mac};
use hookshim::clock::{Clock, ManualClock, Timestamp};
use serde_json::{Value, json};

const GH_SECRET: &str = "It's a Secret to Everybody";

fn config() -> String {
    format!(
        "{CONFIG}
[upstreams.gh]
base_url = \"{{UP}}/\"
status_path = \"gh/{{operation}}\"
status_field = \"/state\"
succeeded = [\"done\"]
failed = [\"error\"]
poll = {{ initial = \"50ms\", max = \"200ms\" }}
[upstreams.gh.webhook]
scheme = \"github\"
secret_env = \"GH_SECRET\"
operation_field = \"/job/id\"

[upstreams.open]
base_url = \"{{UP}}/\"
status_path = \"open/{{operation}}\"
status_field = \"/state\"
error_field = \"/error\"
succeeded = [\"done\"]
failed = [\"error\"]
poll = {{ initial = \"50ms\", max = \"200ms\" }}
[upstreams.open.webhook]
scheme = \"none\"
operation_field = \"/id\"
"
    )
}

/// A fake upstream, a receiver, and hookshim with this file's upstreams (GH_SECRET set).
async fn schemes_shim() -> (FakeUpstream, Receiver, TestShim) {
    let up = FakeUpstream::start().await;
    let recv = Receiver::start().await;
    let shim = TestShim::start_with_env(
        &config(),
        &up,
        &recv,
        vec![("GH_SECRET".into(), GH_SECRET.into())],
    )
    .await;
    (up, recv, shim)
}

#[tokio::test]
async fn github_signed_webhook_is_verified_and_deduplicated_by_delivery_id() {
    let (up, recv, shim) = schemes_shim().await;
    up.set("gh/g1", json!({"state": "done"}));
    let (_, op) = shim
        .register(json!({"upstream": "gh", "operation": "g1"}))
        .await;
    let id = op["id"].as_str().unwrap().to_string();
    let body = serde_json::to_vec(&json!({"action": "completed", "job": {"id": "g1"}})).unwrap();
    let sig = hookshim::signing::github_signature(GH_SECRET.as_bytes(), &body);

    let forged = hookshim::signing::github_signature(b"wrong", &body);
    let (code, err) = post_raw(
        &shim,
        "/webhooks/gh",
        &[("x-hub-signature-256", forged)],
        &body,
    )
    .await;
    assert_eq!(code, 401, "{err}");
    assert_eq!(err["error"]["code"], "bad_signature");

    let headers = [
        ("x-hub-signature-256", sig.clone()),
        ("x-github-delivery", "d-1".to_string()),
    ];
    let (code, first) = post_raw(&shim, "/webhooks/gh", &headers, &body).await;
    assert_eq!(code, 200, "{first}");
    assert_eq!(first["result"], "accepted");
    let (_, second) = post_raw(&shim, "/webhooks/gh", &headers, &body).await;
    assert_eq!(second["result"], "duplicate");
    let done = wait_status(&shim, &id, "succeeded").await;
    assert_eq!(done["detected_via"], "webhook");
    exactly_one_callback(&recv, &id, QUIET).await;
}

#[tokio::test]
async fn unsigned_scheme_deduplicates_identical_bodies() {
    let (up, recv, shim) = schemes_shim().await;
    up.set("open/n1", json!({"state": "error", "error": "bad input"}));
    let (_, op) = shim
        .register(json!({"upstream": "open", "operation": "n1"}))
        .await;
    let id = op["id"].as_str().unwrap().to_string();
    let body = br#"{"id": "n1", "event": "finished"}"#;
    let (c1, b1) = post_raw(&shim, "/webhooks/open", &[], body).await;
    let (c2, b2) = post_raw(&shim, "/webhooks/open", &[], body).await;
    assert_eq!((c1, c2), (200, 200));
    assert_eq!(
        (b1["result"].as_str(), b2["result"].as_str()),
        (Some("accepted"), Some("duplicate"))
    );
    let done = wait_status(&shim, &id, "failed").await;
    assert_eq!(done["error"], "bad input");
    assert_eq!(
        wait_calls(&recv, &id, 1).await[0].body["type"],
        "operation.failed"
    );
}

// ---------------------------------------------------------------------------------------------
// Helpers for the schemes below.

/// A generic upstream named `name` whose status lives at `{UP}/{name}/{operation}`, with the
/// given webhook section (the lines after its header).
fn upstream(name: &str, webhook: &str) -> String {
    format!(
        "
[upstreams.{name}]
base_url = \"{{UP}}/\"
status_path = \"{name}/{{operation}}\"
status_field = \"/state\"
succeeded = [\"done\"]
failed = [\"error\"]
poll = {{ initial = \"50ms\", max = \"200ms\" }}
[upstreams.{name}.webhook]
safety_poll = \"1h\"
{webhook}
"
    )
}

/// A manual clock that starts at the wall clock's now.
fn manual_clock() -> ManualClock {
    ManualClock::new(Timestamp(time_now_secs() * 1000))
}

fn secs(clock: &ManualClock) -> u64 {
    clock.now().unix_seconds()
}

/// Assert a rejection: this status and error code, and a message.
#[track_caller]
fn assert_rejected(got: (u16, Value), status: u16, code: &str) {
    let (s, body) = got;
    assert_eq!(s, status, "status for {code}: {body}");
    assert_eq!(body["error"]["code"], code, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "{body}"
    );
}

/// Register `operation` at `upstream` (its status already `done` upstream); returns the id.
async fn register_done(
    shim: &TestShim,
    up: &FakeUpstream,
    upstream: &str,
    operation: &str,
) -> String {
    up.set(&format!("{upstream}/{operation}"), json!({"state": "done"}));
    let (code, op) = shim
        .register(json!({"upstream": upstream, "operation": operation}))
        .await;
    assert_eq!(code, 201, "{op}");
    op["id"].as_str().unwrap().to_string()
}

fn hmac_sha256(key: &[u8], parts: &[&[u8]]) -> Vec<u8> {
    let mut m = <Hmac<sha2::Sha256> as KeyInit>::new_from_slice(key).unwrap();
    for p in parts {
        m.update(p);
    }
    m.finalize().into_bytes().to_vec()
}

// ---------------------------------------------------------------------------------------------
// gemini-jwt: tokens signed here with RSA keys generated by aws-lc-rs (not by the verifier's
// library), checked against a JWKS served by the fake upstream at /jwks.json.

const AUDIENCE: &str = "https://app.test/webhooks/gem";
const JWKS_PATH: &str = "jwks.json";

struct RsaKey {
    pair: aws_lc_rs::rsa::KeyPair,
    kid: String,
}

impl RsaKey {
    fn new(kid: &str) -> RsaKey {
        RsaKey {
            pair: aws_lc_rs::rsa::KeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048).unwrap(),
            kid: kid.to_string(),
        }
    }

    fn jwk(&self) -> Value {
        let c = aws_lc_rs::rsa::PublicKeyComponents::<Vec<u8>>::from(self.pair.public_key());
        json!({"kty": "RSA", "kid": self.kid, "alg": "RS256", "use": "sig",
               "n": B64URL.encode(&c.n), "e": B64URL.encode(&c.e)})
    }

    /// A compact JWS over `header` and `claims`, RS256 with this key.
    fn sign(&self, header: &Value, claims: &Value) -> String {
        let input = signing_input(header, claims);
        let mut sig = vec![0; self.pair.public_modulus_len()];
        self.pair
            .sign(
                &aws_lc_rs::signature::RSA_PKCS1_SHA256,
                &aws_lc_rs::rand::SystemRandom::new(),
                input.as_bytes(),
                &mut sig,
            )
            .unwrap();
        format!("{input}.{}", B64URL.encode(sig))
    }

    /// An RS256 token with this key, carrying `kid`.
    fn token_as(&self, kid: &str, claims: &Value) -> String {
        self.sign(&json!({"alg": "RS256", "typ": "JWT", "kid": kid}), claims)
    }

    fn token(&self, claims: &Value) -> String {
        self.token_as(&self.kid, claims)
    }
}

fn signing_input(header: &Value, claims: &Value) -> String {
    format!(
        "{}.{}",
        B64URL.encode(serde_json::to_vec(header).unwrap()),
        B64URL.encode(serde_json::to_vec(claims).unwrap())
    )
}

/// Claims valid at `now` (unix seconds) for the configured audience.
fn claims(now: u64) -> Value {
    json!({"iss": "https://generativelanguage.googleapis.com", "aud": AUDIENCE,
           "iat": now, "exp": now + 300})
}

fn gem_config(min_interval: &str) -> String {
    format!(
        "{CONFIG}{}",
        upstream(
            "gem",
            &format!(
                "scheme = \"gemini-jwt\"
jwks_url = \"{{UP}}/{JWKS_PATH}\"
audience = \"{AUDIENCE}\"
jwks_ttl = \"1h\"
jwks_min_interval = \"{min_interval}\""
            )
        )
    )
}

/// A fake upstream (serving the JWKS), a receiver, and hookshim with the `gem` upstream
/// (gemini-jwt, 10 s between JWKS fetches) on a manual clock.
async fn gemini_shim() -> (FakeUpstream, Receiver, ManualClock, TestShim) {
    let up = FakeUpstream::start().await;
    let recv = Receiver::start().await;
    let clock = manual_clock();
    let shim = TestShim::start_with_clock(
        &gem_config("10s"),
        &up,
        &recv,
        vec![],
        Arc::new(clock.clone()),
    )
    .await;
    (up, recv, clock, shim)
}

/// A Gemini-style thin webhook about batch `op`.
fn gem_body(op: &str) -> Vec<u8> {
    serde_json::to_vec(&json!({"type": "batch.succeeded", "version": "v1",
        "timestamp": "2026-11-27T10:00:03Z", "data": {"id": op, "output_file_uri": "gs://b/o"}}))
    .unwrap()
}

async fn send_jwt(
    shim: &TestShim,
    token: &str,
    webhook_id: Option<&str>,
    body: &[u8],
) -> (u16, Value) {
    let mut headers = vec![("webhook-signature", token.to_string())];
    if let Some(id) = webhook_id {
        headers.push(("webhook-id", id.to_string()));
    }
    post_raw(shim, "/webhooks/gem", &headers, body).await
}

#[tokio::test]
async fn gemini_jwt_is_verified_against_the_jwks_and_deduplicated() {
    let (up, recv, clock, shim) = gemini_shim().await;
    let k1 = RsaKey::new("k1");
    up.set(JWKS_PATH, json!({"keys": [k1.jwk()]}));
    let now = secs(&clock);

    // The webhook-id header names the webhook.
    let id1 = register_done(&shim, &up, "gem", "b1").await;
    let token = k1.token(&claims(now));
    let (code, first) = send_jwt(&shim, &token, Some("wh-1"), &gem_body("b1")).await;
    assert_eq!(code, 200, "{first}");
    assert_eq!(first["result"], "accepted");
    assert_eq!(first["webhook_id"], "wh-1");
    let (_, again) = send_jwt(&shim, &token, Some("wh-1"), &gem_body("b1")).await;
    assert_eq!(again["result"], "duplicate");

    // Without the header: the token's jti, else a hash of the body.
    let id2 = register_done(&shim, &up, "gem", "b2").await;
    let mut with_jti = claims(now);
    with_jti["jti"] = json!("jti-2");
    let (code, second) = send_jwt(&shim, &k1.token(&with_jti), None, &gem_body("b2")).await;
    assert_eq!(
        (code, &second["webhook_id"]),
        (200, &json!("jti-2")),
        "{second}"
    );
    let (_, again) = send_jwt(&shim, &k1.token(&with_jti), None, &gem_body("b2")).await;
    assert_eq!(again["result"], "duplicate");
    let id3 = register_done(&shim, &up, "gem", "b3").await;
    let (code, third) = send_jwt(&shim, &k1.token(&claims(now)), None, &gem_body("b3")).await;
    assert_eq!(code, 200, "{third}");
    assert!(
        third["webhook_id"].as_str().unwrap().starts_with("sha256_"),
        "{third}"
    );

    // A token just past exp is still within the leeway.
    let id4 = register_done(&shim, &up, "gem", "b4").await;
    let mut late = claims(now);
    late["exp"] = json!(now - 10);
    let (code, body) = send_jwt(&shim, &k1.token(&late), Some("wh-4"), &gem_body("b4")).await;
    assert_eq!(code, 200, "{body}");

    for id in [&id1, &id2, &id3, &id4] {
        let done = wait_status(&shim, id, "succeeded").await;
        assert_eq!(done["detected_via"], "webhook");
        exactly_one_callback(&recv, id, QUIET).await;
    }
    // Six verifications, one JWKS fetch.
    assert_eq!(up.requests_for(JWKS_PATH).len(), 1);
}

#[tokio::test]
async fn gemini_jwt_rejections_are_precise_and_change_nothing() {
    let (up, _recv, clock, shim) = gemini_shim().await;
    let k1 = RsaKey::new("k1");
    let forger = RsaKey::new("k1");
    up.set(JWKS_PATH, json!({"keys": [k1.jwk()]}));
    let id = register_done(&shim, &up, "gem", "victim").await;
    let body = gem_body("victim");
    let now = secs(&clock);
    let good = claims(now);

    // Signed with another key under the right kid.
    let got = send_jwt(&shim, &forger.token(&good), Some("f1"), &body).await;
    assert_rejected(got, 401, "bad_signature");
    // A kid the JWKS does not have; a flood of them refetches nothing (the set was fetched
    // less than jwks_min_interval ago).
    for i in 0..20 {
        let got = send_jwt(
            &shim,
            &forger.token_as(&format!("forged-{i}"), &good),
            None,
            &body,
        )
        .await;
        assert_rejected(got, 401, "unknown_key");
    }
    assert_eq!(
        up.requests_for(JWKS_PATH).len(),
        1,
        "one fetch for all of that"
    );
    // Expired (beyond the leeway), not yet valid, wrong and missing audience.
    let mut c = good.clone();
    c["exp"] = json!(now - 120);
    assert_rejected(
        send_jwt(&shim, &k1.token(&c), None, &body).await,
        401,
        "token_expired",
    );
    let mut c = good.clone();
    c["nbf"] = json!(now + 600);
    assert_rejected(
        send_jwt(&shim, &k1.token(&c), None, &body).await,
        401,
        "token_not_yet_valid",
    );
    let mut c = good.clone();
    c["aud"] = json!("https://someone.else/hook");
    assert_rejected(
        send_jwt(&shim, &k1.token(&c), None, &body).await,
        401,
        "wrong_audience",
    );
    let mut c = good.clone();
    c.as_object_mut().unwrap().remove("aud");
    assert_rejected(
        send_jwt(&shim, &k1.token(&c), None, &body).await,
        401,
        "wrong_audience",
    );
    let mut c = good.clone();
    c.as_object_mut().unwrap().remove("exp");
    assert_rejected(
        send_jwt(&shim, &k1.token(&c), None, &body).await,
        401,
        "malformed_signature",
    );
    // alg none: no signature at all.
    let none = format!(
        "{}.",
        signing_input(&json!({"alg": "none", "kid": "k1"}), &good)
    );
    assert_rejected(
        send_jwt(&shim, &none, None, &body).await,
        401,
        "unsupported_algorithm",
    );
    // HS256 keyed with the public key (the classic algorithm confusion).
    let input = signing_input(&json!({"alg": "HS256", "kid": "k1"}), &good);
    let public_der = k1.pair.public_key().as_ref().to_vec();
    for secret in [public_der, serde_json::to_vec(&k1.jwk()).unwrap()] {
        let mac = hmac_sha256(&secret, &[input.as_bytes()]);
        let hs = format!("{input}.{}", B64URL.encode(mac));
        assert_rejected(
            send_jwt(&shim, &hs, None, &body).await,
            401,
            "unsupported_algorithm",
        );
    }
    // No kid; not a JWT; no header at all.
    let no_kid = k1.sign(&json!({"alg": "RS256"}), &good);
    assert_rejected(
        send_jwt(&shim, &no_kid, None, &body).await,
        401,
        "malformed_signature",
    );
    assert_rejected(
        send_jwt(&shim, "v1,abc", None, &body).await,
        401,
        "malformed_signature",
    );
    assert_rejected(
        post_raw(&shim, "/webhooks/gem", &[], &body).await,
        401,
        "missing_signature",
    );

    // Nothing was recorded or read.
    let after = shim.op(&id).await;
    assert_eq!(after["status"], "pending", "{after}");
    assert!(after["webhook_at"].is_null(), "{after}");
    assert!(up.requests_for("gem/victim").is_empty());
    let metrics = shim.metrics().await;
    for (result, count) in [("bad_signature", 30), ("stale_timestamp", 2)] {
        let line = format!(
            "hookshim_webhooks_received_total{{upstream=\"gem\",result=\"{result}\"}} {count}"
        );
        assert!(metrics.contains(&line), "missing `{line}` in:\n{metrics}");
    }

    // The genuine token still works (and reuses the cached set).
    let (code, ok) = send_jwt(&shim, &k1.token(&good), Some("real"), &body).await;
    assert_eq!((code, &ok["result"]), (200, &json!("accepted")), "{ok}");
    wait_status(&shim, &id, "succeeded").await;
    assert_eq!(up.requests_for(JWKS_PATH).len(), 1);
}

#[tokio::test]
async fn gemini_jwt_key_rotation_refetches_the_jwks() {
    let (up, _recv, clock, shim) = gemini_shim().await;
    let (k1, k2) = (RsaKey::new("k1"), RsaKey::new("k2"));
    up.set(JWKS_PATH, json!({"keys": [k1.jwk()]}));
    register_done(&shim, &up, "gem", "r1").await;
    let fetches = || up.requests_for(JWKS_PATH).len();
    let body = gem_body("r1");
    let mut n = 0;
    let mut send = async |key: &RsaKey, clock: &ManualClock| {
        n += 1;
        send_jwt(
            &shim,
            &key.token(&claims(secs(clock))),
            Some(&format!("r{n}")),
            &body,
        )
        .await
    };

    assert_eq!(send(&k1, &clock).await.0, 200);
    assert_eq!(fetches(), 1);
    // The upstream rotates: k2 appears. Right after a fetch, an unknown kid does not refetch...
    up.set(JWKS_PATH, json!({"keys": [k1.jwk(), k2.jwk()]}));
    assert_rejected(send(&k2, &clock).await, 401, "unknown_key");
    assert_eq!(fetches(), 1);
    // ...once jwks_min_interval has passed, it does, and k2 is accepted; k1 still is.
    clock.advance(Duration::from_secs(10));
    assert_eq!(send(&k2, &clock).await.0, 200);
    assert_eq!(fetches(), 2);
    assert_eq!(send(&k1, &clock).await.0, 200);
    assert_eq!(fetches(), 2);

    // After jwks_ttl the set is fetched again before use; this answer says max-age=60, which
    // is shorter than jwks_ttl and so wins.
    let doc = json!({"keys": [k2.jwk()]}).to_string();
    up.script(
        JWKS_PATH,
        vec![
            Scripted::new(200, &doc)
                .header("content-type", "application/json")
                .header("cache-control", "public, max-age=60"),
        ],
    );
    clock.advance(Duration::from_secs(3600));
    assert_eq!(send(&k2, &clock).await.0, 200);
    assert_eq!(fetches(), 3);
    // k1 left the set: after max-age, the refetch (the plain body, with k1 and k2) has it again.
    assert_rejected(send(&k1, &clock).await, 401, "unknown_key");
    clock.advance(Duration::from_secs(61));
    assert_eq!(send(&k1, &clock).await.0, 200);
    assert_eq!(fetches(), 4);
}

#[tokio::test]
async fn gemini_jwt_with_the_jwks_down_is_503_and_records_nothing() {
    let (up, recv, clock, shim) = gemini_shim().await;
    let k1 = RsaKey::new("k1");
    let id = register_done(&shim, &up, "gem", "d1").await;
    let body = gem_body("d1");
    up.script(JWKS_PATH, vec![Scripted::new(503, "maintenance")]);

    let token = k1.token(&claims(secs(&clock)));
    let (code, err) = send_jwt(&shim, &token, Some("wh-d1"), &body).await;
    assert_rejected((code, err.clone()), 503, "jwks_unavailable");
    assert!(
        err["error"]["message"].as_str().unwrap().contains("503"),
        "says what the JWKS URL answered: {err}"
    );
    // The sender retries at once: no second fetch within jwks_min_interval, still 503.
    let got = send_jwt(&shim, &token, Some("wh-d1"), &body).await;
    assert_rejected(got, 503, "jwks_unavailable");
    assert_eq!(up.requests_for(JWKS_PATH).len(), 1);

    let after = shim.op(&id).await;
    assert_eq!(after["status"], "pending", "{after}");
    assert!(after["webhook_at"].is_null(), "{after}");
    assert!(up.requests_for("gem/d1").is_empty());
    let metrics = shim.metrics().await;
    let line = "hookshim_webhooks_received_total{upstream=\"gem\",result=\"jwks_unavailable\"} 2";
    assert!(metrics.contains(line), "missing `{line}` in:\n{metrics}");

    // The JWKS is back; the sender's retry (same webhook-id) is accepted, not a duplicate:
    // nothing about it was recorded while it was refused.
    up.set(JWKS_PATH, json!({"keys": [k1.jwk()]}));
    clock.advance(Duration::from_secs(10));
    let (code, ok) = send_jwt(&shim, &token, Some("wh-d1"), &body).await;
    assert_eq!(code, 200, "{ok}");
    assert_eq!(ok["result"], "accepted");
    wait_status(&shim, &id, "succeeded").await;
    exactly_one_callback(&recv, &id, QUIET).await;
}

// ---------------------------------------------------------------------------------------------
// Standard Webhooks v1a (Ed25519), next to v1.

fn v1a_entry(key: &ed25519_dalek::SigningKey, id: &str, ts: u64, body: &[u8]) -> String {
    use ed25519_dalek::Signer;
    let msg = [id.as_bytes(), b".", ts.to_string().as_bytes(), b".", body].concat();
    format!("v1a,{}", B64.encode(key.sign(&msg).to_bytes()))
}

fn whpk(key: &ed25519_dalek::SigningKey) -> String {
    format!("whpk_{}", B64.encode(key.verifying_key().as_bytes()))
}

async fn send_standard(
    shim: &TestShim,
    upstream: &str,
    id: &str,
    ts: u64,
    signature: String,
    body: &[u8],
) -> (u16, Value) {
    post_raw(
        shim,
        &format!("/webhooks/{upstream}"),
        &[
            ("webhook-id", id.to_string()),
            ("webhook-timestamp", ts.to_string()),
            ("webhook-signature", signature),
        ],
        body,
    )
    .await
}

#[tokio::test]
async fn standard_webhooks_v1a_verifies_with_the_whpk_key() {
    let up = FakeUpstream::start().await;
    let recv = Receiver::start().await;
    let signer = ed25519_dalek::SigningKey::from_bytes(&rand::random());
    let stranger = ed25519_dalek::SigningKey::from_bytes(&rand::random());
    // v1a key current, the v1 secret still accepted (until 2099): both kinds configured.
    let config = format!(
        "{CONFIG}{}",
        upstream(
            "ed",
            "scheme = \"standard-webhooks\"
secret_env = \"ED_PUBLIC\"
previous_secrets = [{ env = \"ED_OLD_HMAC\", until = \"2099-01-01T00:00:00Z\" }]"
        )
    );
    let env = vec![
        ("ED_PUBLIC".to_string(), whpk(&signer)),
        ("ED_OLD_HMAC".to_string(), PUSHY_SECRET.to_string()),
    ];
    let shim = TestShim::start_with_env(&config, &up, &recv, env).await;
    let hmac = standardwebhooks::Webhook::new(PUSHY_SECRET).unwrap();
    let ts = time_now_secs();
    let body_of = |op: &str| serde_json::to_vec(&json!({"data": {"id": op}})).unwrap();

    // v1a alone.
    let a = register_done(&shim, &up, "ed", "a").await;
    let got = send_standard(
        &shim,
        "ed",
        "m-a",
        ts,
        v1a_entry(&signer, "m-a", ts, &body_of("a")),
        &body_of("a"),
    )
    .await;
    assert_eq!(
        (got.0, &got.1["result"]),
        (200, &json!("accepted")),
        "{}",
        got.1
    );
    // A broken v1 entry before a good v1a entry: the v1a one is enough.
    let b = register_done(&shim, &up, "ed", "b").await;
    let sig = format!("v1,AAAA {}", v1a_entry(&signer, "m-b", ts, &body_of("b")));
    let got = send_standard(&shim, "ed", "m-b", ts, sig, &body_of("b")).await;
    assert_eq!(got.0, 200, "{}", got.1);
    // A good v1 entry next to a broken v1a entry: the v1 one is enough.
    let c = register_done(&shim, &up, "ed", "c").await;
    let v1 = hmac.sign("m-c", ts as i64, &body_of("c")).unwrap();
    let got = send_standard(
        &shim,
        "ed",
        "m-c",
        ts,
        format!("v1a,AAAA {v1}"),
        &body_of("c"),
    )
    .await;
    assert_eq!(got.0, 200, "{}", got.1);

    // Signed by another Ed25519 key; the right signature for another body; the Ed25519
    // signature filed as v1.
    let victim = register_done(&shim, &up, "ed", "victim").await;
    let body = body_of("victim");
    let got = send_standard(
        &shim,
        "ed",
        "m-v",
        ts,
        v1a_entry(&stranger, "m-v", ts, &body),
        &body,
    )
    .await;
    assert_rejected(got, 401, "bad_signature");
    let got = send_standard(
        &shim,
        "ed",
        "m-v",
        ts,
        v1a_entry(&signer, "m-v", ts, b"{}"),
        &body,
    )
    .await;
    assert_rejected(got, 401, "bad_signature");
    let as_v1 = v1a_entry(&signer, "m-v", ts, &body).replacen("v1a,", "v1,", 1);
    assert_rejected(
        send_standard(&shim, "ed", "m-v", ts, as_v1, &body).await,
        401,
        "bad_signature",
    );
    // Right key, ten minutes ago.
    let old = ts - 600;
    let got = send_standard(
        &shim,
        "ed",
        "m-v",
        old,
        v1a_entry(&signer, "m-v", old, &body),
        &body,
    )
    .await;
    assert_rejected(got, 401, "stale_timestamp");

    for id in [&a, &b, &c] {
        wait_status(&shim, id, "succeeded").await;
        exactly_one_callback(&recv, id, QUIET).await;
    }
    assert_eq!(shim.op(&victim).await["status"], "pending");
    assert!(up.requests_for("ed/victim").is_empty());
}

// ---------------------------------------------------------------------------------------------
// Stripe.

const STRIPE_SECRET: &str = "whsec_dGVzdF9zdHJpcGVfc2VjcmV0X25vdF9kZWNvZGVk";

fn stripe_config() -> String {
    format!(
        "{CONFIG}{}",
        upstream(
            "stripe",
            "scheme = \"stripe\"\nsecret_env = \"STRIPE_SECRET\"\noperation_field = \"/data/object/id\""
        )
    )
}

/// `v1=` for `{t}.{body}` keyed with `key` (the whsec string's bytes, as Stripe does).
fn stripe_v1(key: &[u8], t: u64, body: &[u8]) -> String {
    format!(
        "v1={}",
        hex::encode(hmac_sha256(key, &[t.to_string().as_bytes(), b".", body]))
    )
}

async fn send_stripe(shim: &TestShim, header: String, body: &[u8]) -> (u16, Value) {
    post_raw(
        shim,
        "/webhooks/stripe",
        &[("stripe-signature", header)],
        body,
    )
    .await
}

#[tokio::test]
async fn stripe_signature_is_verified_with_the_secret_as_is() {
    let up = FakeUpstream::start().await;
    let recv = Receiver::start().await;
    let env = vec![("STRIPE_SECRET".to_string(), STRIPE_SECRET.to_string())];
    let shim = TestShim::start_with_env(&stripe_config(), &up, &recv, env).await;
    let key = STRIPE_SECRET.as_bytes();
    let id = register_done(&shim, &up, "stripe", "cs_1").await;
    let body = serde_json::to_vec(&json!({"id": "evt_1", "object": "event",
        "type": "checkout.session.completed", "data": {"object": {"id": "cs_1"}}}))
    .unwrap();
    let t = time_now_secs();

    // Several v1 entries (rotation on Stripe's side) and a v0 entry: one good v1 is enough.
    let header = format!(
        "t={t},v0=deadbeef,v1={},{}",
        "ab".repeat(32),
        stripe_v1(key, t, &body)
    );
    let (code, first) = send_stripe(&shim, header, &body).await;
    assert_eq!(code, 200, "{first}");
    assert_eq!(first["result"], "accepted");
    assert_eq!(
        first["webhook_id"], "evt_1",
        "the event id names the webhook"
    );
    // Stripe retries the same event with a new timestamp and signature: a duplicate.
    let t2 = t + 5;
    let (_, again) = send_stripe(
        &shim,
        format!("t={t2},{}", stripe_v1(key, t2, &body)),
        &body,
    )
    .await;
    assert_eq!(again["result"], "duplicate");
    wait_status(&shim, &id, "succeeded").await;
    exactly_one_callback(&recv, &id, QUIET).await;

    // A body without an id is named by its hash.
    let other = register_done(&shim, &up, "stripe", "cs_2").await;
    let no_id = serde_json::to_vec(&json!({"data": {"object": {"id": "cs_2"}}})).unwrap();
    let (code, b) = send_stripe(
        &shim,
        format!("t={t},{}", stripe_v1(key, t, &no_id)),
        &no_id,
    )
    .await;
    assert_eq!(code, 200, "{b}");
    assert!(
        b["webhook_id"].as_str().unwrap().starts_with("sha256_"),
        "{b}"
    );
    wait_status(&shim, &other, "succeeded").await;

    // Keyed with the base64-decoded secret (the Standard Webhooks way): wrong for Stripe.
    let victim = register_done(&shim, &up, "stripe", "cs_v").await;
    let vbody =
        serde_json::to_vec(&json!({"id": "evt_v", "data": {"object": {"id": "cs_v"}}})).unwrap();
    let decoded = B64
        .decode(STRIPE_SECRET.trim_start_matches("whsec_"))
        .unwrap();
    let got = send_stripe(
        &shim,
        format!("t={t},{}", stripe_v1(&decoded, t, &vbody)),
        &vbody,
    )
    .await;
    assert_rejected(got, 401, "bad_signature");
    // Only a v0 signature; a stale timestamp; a malformed header; none at all.
    let v0 = stripe_v1(key, t, &vbody).replacen("v1=", "v0=", 1);
    assert_rejected(
        send_stripe(&shim, format!("t={t},{v0}"), &vbody).await,
        401,
        "bad_signature",
    );
    let old = t - 400;
    let got = send_stripe(
        &shim,
        format!("t={old},{}", stripe_v1(key, old, &vbody)),
        &vbody,
    )
    .await;
    assert_rejected(got, 401, "stale_timestamp");
    let got = send_stripe(
        &shim,
        format!("t=yesterday,{}", stripe_v1(key, t, &vbody)),
        &vbody,
    )
    .await;
    assert_rejected(got, 401, "malformed_signature");
    assert_rejected(
        post_raw(&shim, "/webhooks/stripe", &[], &vbody).await,
        401,
        "missing_signature",
    );
    assert_eq!(shim.op(&victim).await["status"], "pending");
    assert!(up.requests_for("stripe/cs_v").is_empty());
}

// ---------------------------------------------------------------------------------------------
// Secret rotation: a previous secret is accepted until its `until`, then not; for every scheme
// that has secrets. On a manual clock.

#[tokio::test]
async fn previous_secrets_are_accepted_until_their_until_then_refused() {
    let up = FakeUpstream::start().await;
    let recv = Receiver::start().await;
    let clock = manual_clock();
    let until = clock.now().plus(Duration::from_secs(3600)).rfc3339();
    let previous = format!("previous_secrets = [{{ env = \"OLD\", until = \"{until}\" }}]");
    let config = format!(
        "{CONFIG}{}{}{}",
        upstream(
            "sw",
            &format!("scheme = \"standard-webhooks\"\nsecret_env = \"NEW_SW\"\n{previous}")
        ),
        upstream(
            "gh",
            &format!(
                "scheme = \"github\"\nsecret_env = \"NEW_RAW\"\n{previous}\noperation_field = \"/id\""
            )
        ),
        upstream(
            "st",
            &format!(
                "scheme = \"stripe\"\nsecret_env = \"NEW_RAW\"\n{previous}\noperation_field = \"/id\""
            )
        ),
    );
    // OLD serves as a whsec_ secret for standard-webhooks and as plain bytes for the others.
    const NEW_SW: &str = "whsec_bmV3IHN0YW5kYXJkIHdlYmhvb2tzIHNlY3JldA==";
    const NEW_RAW: &str = "whsec_new_raw_secret";
    let env = vec![
        ("NEW_SW".to_string(), NEW_SW.to_string()),
        ("NEW_RAW".to_string(), NEW_RAW.to_string()),
        ("OLD".to_string(), PUSHY_SECRET.to_string()),
    ];
    let shim = TestShim::start_with_clock(&config, &up, &recv, env, Arc::new(clock.clone())).await;

    // One signed webhook per scheme, signed with `secret` at the clock's now.
    let mut n = 0;
    let mut send = async |scheme: &str, secret: &str, clock: &ManualClock| -> (u16, Value) {
        n += 1;
        let op = format!("{scheme}{n}");
        register_done(&shim, &up, scheme, &op).await;
        let ts = secs(clock);
        match scheme {
            "sw" => {
                let body = serde_json::to_vec(&json!({"data": {"id": op}})).unwrap();
                let sig = standardwebhooks::Webhook::new(secret)
                    .unwrap()
                    .sign(&op, ts as i64, &body)
                    .unwrap();
                send_standard(&shim, "sw", &op, ts, sig, &body).await
            }
            "gh" => {
                let body = serde_json::to_vec(&json!({"id": op})).unwrap();
                let sig = hookshim::signing::github_signature(secret.as_bytes(), &body);
                post_raw(
                    &shim,
                    "/webhooks/gh",
                    &[("x-hub-signature-256", sig)],
                    &body,
                )
                .await
            }
            _ => {
                let body = serde_json::to_vec(&json!({"id": op})).unwrap();
                let header = format!("t={ts},{}", stripe_v1(secret.as_bytes(), ts, &body));
                send_stripe_to(&shim, "st", header, &body).await
            }
        }
    };

    for scheme in ["sw", "gh", "st"] {
        let new = if scheme == "sw" { NEW_SW } else { NEW_RAW };
        let (code, body) = send(scheme, new, &clock).await;
        assert_eq!(code, 200, "{scheme}, current secret: {body}");
        let (code, body) = send(scheme, PUSHY_SECRET, &clock).await;
        assert_eq!(
            code, 200,
            "{scheme}, previous secret before its until: {body}"
        );
    }
    // One second before `until`, still; at `until`, no more.
    clock.advance(Duration::from_secs(3599));
    for scheme in ["sw", "gh", "st"] {
        let (code, body) = send(scheme, PUSHY_SECRET, &clock).await;
        assert_eq!(
            code, 200,
            "{scheme}, previous secret 1s before until: {body}"
        );
    }
    clock.advance(Duration::from_secs(1));
    for scheme in ["sw", "gh", "st"] {
        let got = send(scheme, PUSHY_SECRET, &clock).await;
        assert_rejected(got, 401, "bad_signature");
        let new = if scheme == "sw" { NEW_SW } else { NEW_RAW };
        let (code, body) = send(scheme, new, &clock).await;
        assert_eq!(code, 200, "{scheme}, current secret after until: {body}");
    }
}

async fn send_stripe_to(
    shim: &TestShim,
    upstream: &str,
    header: String,
    body: &[u8],
) -> (u16, Value) {
    post_raw(
        shim,
        &format!("/webhooks/{upstream}"),
        &[("stripe-signature", header)],
        body,
    )
    .await
}
