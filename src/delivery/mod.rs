//! Callbacks to the app, in Standard Webhooks format. Stages: prepare (load the outbox entry,
//! build and sign the body) → call (POST, no redirects, timeout) → handle the answer (record the
//! attempt; retry on the schedule, honour Retry-After, stop on 410 or after the last attempt).
//! The `webhook-id` comes from the operation, so every attempt and redelivery carries the same.
//!
//! Two kinds of callback share this path: the terminal one and event callbacks sent before the
//! end, one per pause. A [`DeliveryKey`] names each (`<operation id>` /
//! `<operation id>/requires_action_<n>`) and derives its `webhook-id`. Each has its own delivery
//! record and schedule, so a failing event callback never delays the terminal one; when the
//! operation ends, event callbacks not yet delivered are superseded, never sent after it.
//!
//! The rules of an attempt (what an answer means, when to retry) are pure and live in
//! [`attempt`]; this file is the I/O. Where a callback may connect is vetted at each attempt:
//! the URL by [`crate::address::check_callback_url`] (host, port, IP literals), and the
//! addresses a name resolves to by the callback client's resolver ([`vet`]). A refused
//! address ends the delivery `failed` at once (not retried: the app or the config must change;
//! `POST /v1/operations/{id}/redeliver` tries again).

pub mod attempt;
pub mod vet;

pub use attempt::{AttemptResult, classify, record_attempt, record_attempt_on};

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use reqwest::header::CONTENT_TYPE;
use tracing::Instrument;
use tracing::field::Empty;

use crate::config::CallbackConfig;
use crate::errors::error_chain;
use crate::ids::{DeliveryKey, WebhookId};
use crate::operation::{DeliveryState, Operation};
use crate::schedule::{GROUP_FULL_RETRY, parse_hint};
use crate::signing::CallbackKeys;
use crate::state::{SHUTDOWN_GRACE, Shim};
use crate::store::StoreError;
use crate::telemetry;
use crate::values::Secret;
use attempt::delivery_of;

/// The callback signing key file inside the data directory.
pub const SECRET_FILE: &str = "callback_secret";

/// Use the configured callback secret, or the one kept in the data directory, or make one.
/// Returns the key and, when it came from (or went to) a file, that file's path.
pub fn load_or_create_secret(
    configured: Option<&Secret>,
    data_dir: &Path,
) -> Result<(Secret, Option<PathBuf>), String> {
    if let Some(s) = configured {
        return Ok((s.clone(), None));
    }
    let path = data_dir.join(SECRET_FILE);
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            let s = Secret::from_whsec(text.trim())
                .map_err(|e| format!("{}: the stored callback secret {e}", path.display()))?;
            Ok((s, Some(path)))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let bytes: [u8; 32] = rand::random();
            let secret = Secret(bytes.to_vec());
            write_private(&path, secret.to_whsec().as_bytes()).map_err(|e| {
                format!(
                    "{}: cannot write the generated callback secret: {e}",
                    path.display()
                )
            })?;
            Ok((secret, Some(path)))
        }
        Err(e) => Err(format!(
            "{}: cannot read the callback secret: {e}",
            path.display()
        )),
    }
}

/// The keys callbacks are signed with, from `[callbacks]` (the current secret as
/// [`load_or_create_secret`] finds it, the previous ones, the Ed25519 key). Also returns the
/// file the current secret came from when it is the generated one.
pub fn callback_keys(
    config: &CallbackConfig,
    data_dir: &Path,
) -> Result<(CallbackKeys, Option<PathBuf>), String> {
    let (current, path) = load_or_create_secret(config.secret.as_ref(), data_dir)?;
    let mut secrets = vec![(current, None)];
    secrets.extend(
        config
            .previous_secrets
            .iter()
            .map(|p| (p.secret.clone(), p.until)),
    );
    let keys = CallbackKeys {
        secrets,
        ed25519: config.signing_key.as_ref().map(|k| k.key.clone()),
    };
    Ok((keys, path))
}

fn write_private(path: &Path, data: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts.open(path)?;
    // The mode given to open is cut by the umask; set it explicitly.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        f.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    }
    f.write_all(data)?;
    f.write_all(b"\n")?;
    f.sync_all()
}

/// Send one attempt of the callback `key` names, if that callback is in the outbox.
pub async fn deliver_once(shim: &Shim, key: DeliveryKey) {
    // Prepare.
    let key = &key;
    let (id, event) = (&key.operation, key.event.as_deref());
    let retry_later = |e: &dyn std::fmt::Display, what: &str| {
        tracing::error!(op = %id, callback = %key, error = %e, "{what}; retrying in 30s");
        shim.deliveries
            .schedule(key, shim.clock.now().plus(Duration::from_secs(30)));
    };
    let mut op = match shim.store.claimed_delivery(key).await {
        Ok(Some(op)) => op,
        Ok(None) => return,
        Err(e) => return retry_later(&e, "cannot read outbox entry"),
    };
    let pending = delivery_of(&mut op, event).is_some_and(|d| d.state == DeliveryState::Pending);
    if !pending {
        return;
    }
    let Some(url) = op.callback_url.clone() else {
        return;
    };
    // At most `workers.deliveries_in_flight_per_host` attempts in flight to one destination:
    // if a dead or slow receiver has them all, try again a little later and give the global
    // slot to a callback for someone else.
    let Some(_slot) = shim.delivery_slots.try_take(&destination(&url)) else {
        shim.deliveries
            .schedule(key, shim.clock.now().plus(GROUP_FULL_RETRY));
        return;
    };
    let span = tracing::info_span!(target: telemetry::TARGET, "deliver", op = Empty,
        upstream = %op.upstream, callback = %key, attempt = Empty, result = Empty,
        http.response.status_code = Empty, error = Empty, otel.status_code = Empty);
    telemetry::attach(&span, id);
    attempt_once(shim, key, op, url, &span)
        .instrument(span.clone())
        .await;
}

/// Sign, send and record one attempt, in the attempt's span.
async fn attempt_once(
    shim: &Shim,
    key: &DeliveryKey,
    op: Operation,
    url: String,
    span: &tracing::Span,
) {
    let (id, event) = (&key.operation, key.event.as_deref());
    let retry_later = |e: &dyn std::fmt::Display, what: &str| {
        tracing::error!(op = %id, callback = %key, error = %e, "{what}; retrying in 30s");
        shim.deliveries
            .schedule(key, shim.clock.now().plus(Duration::from_secs(30)));
    };
    let webhook_id = key.webhook_id();
    let body = match event {
        None => op.callback_body_with(shim.config.callbacks.include_upstream_body),
        Some(name) => {
            // An event callback is written by a poll that does not wait for the disk: make it
            // durable before anyone hears of it (the terminal one was flushed by `on_terminal`).
            if let Err(e) = shim.commit.flushed().await {
                return retry_later(&e, "flush before an event callback failed");
            }
            op.events
                .iter()
                .find(|e| e.name == name)
                .map(|e| e.body.clone())
                .unwrap_or_default()
        }
    };
    let body = serde_json::to_vec(&body).unwrap_or_default();
    let now = shim.clock.now();
    let ts = now.unix_seconds();
    let signature = shim
        .callback_keys()
        .signature_header(webhook_id.as_str(), now, &body);

    // A host removed from the allow-list since registration (or a port or address the rules
    // refuse now) is not called.
    let started = std::time::Instant::now();
    let result = match shim.check_callback_url(&url) {
        Err(e) => AttemptResult::Refused(format!("not sent: callback_url {e}")),
        Ok(_) => match call(shim, &url, &webhook_id, signature, ts, body).await {
            Some(r) => r,
            None => return,
        },
    };
    let took = started.elapsed();

    // Handle.
    let now = shim.clock.now();
    let sample = rand::random_range(-1.0..=1.0);
    let schedule = &shim.config.callbacks.retry_schedule;
    let wrote = AtomicBool::new(false);
    let updated = shim
        .store
        .update_delivery(key, &|o| {
            let w = delivery_of(o, event)
                .is_some_and(|d| record_attempt_on(d, &result, schedule, now, sample, took));
            wrote.store(w, Ordering::SeqCst);
            w
        })
        .await;
    let label = match &result {
        AttemptResult::Delivered(_) => "delivered",
        AttemptResult::Gone => "gone",
        AttemptResult::Refused(_) => "refused",
        AttemptResult::Retry { label, .. } => label,
    };
    shim.metrics.callback(label);
    span.record("result", label);
    match &result {
        AttemptResult::Delivered(status) => {
            span.record("http.response.status_code", status);
        }
        AttemptResult::Retry { status, error, .. } => {
            if let Some(s) = status {
                span.record("http.response.status_code", s);
            }
            span.record("error", error.as_str());
            span.record("otel.status_code", "ERROR");
        }
        AttemptResult::Refused(error) => {
            span.record("error", error.as_str());
            span.record("otel.status_code", "ERROR");
        }
        AttemptResult::Gone => {
            span.record("http.response.status_code", 410);
            span.record("otel.status_code", "ERROR");
        }
    }
    let after = match updated {
        Ok(Some(mut u)) if wrote.load(Ordering::SeqCst) => delivery_of(&mut u.op, event).cloned(),
        Ok(_) => None,
        Err(e @ StoreError::LeaseLost(_)) => {
            // Another replica took this callback over (and sends it, with the same id).
            tracing::info!(op = %id, callback = %key, error = %e, "callback attempt result dropped");
            return;
        }
        Err(e) => return retry_later(&e, "cannot record callback attempt"),
    };
    let Some(d) = after else { return };
    span.record("attempt", d.attempts);
    match d.state {
        DeliveryState::Delivered => {
            if let (None, Some(done)) = (event, op.completed_at) {
                shim.metrics
                    .delivery_latency
                    .observe(done.until(now).as_secs_f64());
                shim.metrics
                    .end_to_end
                    .observe(op.created_at.until(now).as_secs_f64());
            }
            tracing::debug!(
                op = %id,
                callback = %key,
                attempts = d.attempts,
                "callback delivered"
            );
        }
        DeliveryState::Pending => {
            let at = d.next_attempt_at.unwrap_or(now);
            tracing::info!(op = %id, callback = %key, attempt = d.attempts, error = d.last_error.as_deref().unwrap_or(""), next_in_ms = now.until(at).as_millis() as u64, "callback attempt failed; will retry");
            shim.deliveries.schedule(key, at);
        }
        _ if event.is_some() => {
            tracing::warn!(op = %id, callback = %key, error = d.last_error.as_deref().unwrap_or(""), "event callback delivery failed for good")
        }
        _ => {
            tracing::warn!(op = %id, error = d.last_error.as_deref().unwrap_or(""), "callback delivery failed for good; POST /v1/operations/{id}/redeliver to try again")
        }
    }
}

/// The host and port a callback goes to (the group its in-flight slots are counted in).
fn destination(url: &str) -> String {
    match reqwest::Url::parse(url) {
        Ok(u) => format!(
            "{}:{}",
            u.host_str().unwrap_or(""),
            u.port_or_known_default().unwrap_or(0)
        ),
        Err(_) => url.to_string(),
    }
}

/// POST one signed attempt and classify the answer; `None` if abandoned for shutdown.
async fn call(
    shim: &Shim,
    url: &str,
    webhook_id: &WebhookId,
    signature: String,
    ts: u64,
    body: Vec<u8>,
) -> Option<AttemptResult> {
    let send = shim
        .callback_http
        .post(url)
        .header(CONTENT_TYPE, "application/json")
        .header("webhook-id", webhook_id.as_str())
        .header("webhook-timestamp", ts.to_string())
        .header("webhook-signature", signature)
        .body(body)
        .send();
    // On shutdown an attempt in flight gets a grace period; if abandoned, the outbox entry is
    // untouched and the same callback (same webhook-id) is sent after restart.
    let sent = shim.unless_stopping(SHUTDOWN_GRACE, send).await?;
    Some(match sent {
        Ok(resp) => classify(
            resp.status(),
            parse_hint(resp.headers(), shim.clock.now(), crate::schedule::HINT_MAX),
        ),
        Err(e) if e.is_timeout() => AttemptResult::Retry {
            status: None,
            error: format!(
                "receiver did not answer within {:?}",
                shim.config.callbacks.timeout
            ),
            hint: None,
            label: "timeout",
        },
        Err(e) if vet::refusal(&e).is_some() => {
            let why = vet::refusal(&e).map(|r| r.0.clone()).unwrap_or_default();
            AttemptResult::Refused(format!("not sent: {why}"))
        }
        Err(e) => AttemptResult::Retry {
            status: None,
            error: format!("callback request failed: {}", error_chain(&e)),
            hint: None,
            label: "network_error",
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_secret_is_kept_private_and_reused() {
        let dir = tempfile::tempdir().unwrap();
        let (a, path) = load_or_create_secret(None, dir.path()).unwrap();
        let (b, _) = load_or_create_secret(None, dir.path()).unwrap();
        assert_eq!(a, b);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(path.unwrap())
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }
}
