//! Polling: one status read of one operation, from the rate limiter to the stored outcome.
//! Stages: load → wait for the upstream's budget → GET → classify the answer → apply it to the
//! record in one atomic write → hand a terminal operation to the domain reaction (flush, then
//! deliver) → schedule what comes next. The rules that decide (what an answer means, when the
//! next poll is due) are pure and live in [`crate::schedule::outcome`]; this file is the I/O.
//! An upstream with `auth` gets its credential from [`crate::credentials`] on each request; a
//! 401/403 to it refreshes it once and reads again at once ([`send`]).

use std::time::Duration;

use reqwest::StatusCode;
use reqwest::header::{CONTENT_TYPE, ETAG, HeaderMap, IF_NONE_MATCH, RETRY_AFTER};
use tracing::Instrument;
use tracing::field::Empty;

use crate::body::{BodyError, read_capped};
use crate::clock::Timestamp;
use crate::errors::error_chain;
use crate::ids::OperationId;
use crate::operation::{Observation, ObservedState, Operation, Status, UpstreamBody};
use crate::schedule::{
    GROUP_FULL_RETRY, PollOutcome, Reading, apply_outcome_with, classify, parse_hint, time_out,
};
use crate::state::{SHUTDOWN_GRACE, Shim};
use crate::store::StoreError;
use crate::telemetry;
use crate::upstream::{Mapping, ResultOutcome, UpstreamConfig};
use crate::upstream::{final_resource_url, result_url, status_body, status_url};

fn jitter_sample() -> f64 {
    rand::random_range(-1.0..=1.0)
}

/// Read one operation's status and record what it said.
pub async fn poll_once(shim: &Shim, id: OperationId) {
    let id = &id;
    let op = match shim.store.claimed(id).await {
        Ok(Some(op)) if !op.status.is_terminal() => op,
        Ok(_) => return,
        Err(e) => {
            tracing::error!(op = %id, error = %e, "cannot read operation; retrying in 30s");
            shim.polls
                .schedule(id, shim.clock.now().plus(Duration::from_secs(30)));
            return;
        }
    };
    let Some(up) = shim.config.upstreams.get(&op.upstream) else {
        tracing::warn!(op = %id, upstream = %op.upstream, "operation's upstream is not in the config; checking again in 1h");
        shim.polls
            .schedule(id, shim.clock.now().plus(Duration::from_secs(3600)));
        return;
    };
    if !up.poll.enabled {
        // No status endpoint: no request. Before the deadline (e.g. made due by an unmapped
        // webhook) wait for it; at the deadline the operation times out.
        let now = shim.clock.now();
        if now < op.deadline_at {
            shim.polls.schedule(id, op.deadline_at);
            return;
        }
        record(shim, id, now, &|o| {
            !o.status.is_terminal() && time_out(o, now)
        })
        .await;
        return;
    }
    // At most `workers.polls_in_flight_per_upstream` of the in-flight polls per upstream (the
    // budget wait below included): if this upstream has them all (slow or hanging), try again
    // a little later and give the global slot to another upstream's poll.
    let Some(_slot) = shim.poll_slots.try_take(&op.upstream) else {
        shim.polls
            .schedule(id, shim.clock.now().plus(GROUP_FULL_RETRY));
        return;
    };
    // Waiting for the budget is abandoned at once on shutdown, a request in flight gets a grace
    // period; either way the operation stays scheduled in the store and resumes at restart.
    if let Some(limiter) = shim.limiters.get(&op.upstream) {
        if shim
            .unless_stopping(Duration::ZERO, limiter.acquire(shim.clock.as_ref()))
            .await
            .is_none()
        {
            return;
        }
    }
    // Traced from here (the request), not while waiting for a slot or the budget.
    let span = tracing::info_span!(target: telemetry::TARGET, "poll", op = Empty,
        upstream = %op.upstream, outcome = Empty, error = Empty, status = Empty);
    telemetry::attach(&span, id);
    read_and_record(shim, up, &op, &span)
        .instrument(span.clone())
        .await;
}

/// The status request of a poll and its recording, in the poll's span.
async fn read_and_record(shim: &Shim, up: &UpstreamConfig, op: &Operation, span: &tracing::Span) {
    let id = &op.id;
    // A DELETE of the operation meanwhile drops the request (and its connection) at once.
    let in_flight = shim.reads.start(id);
    let read = async {
        let read = async {
            match status_url(up, &op.operation) {
                Err(e) => Reading::new(PollOutcome::Transient(e)),
                Ok(url) => {
                    let body = status_body(up, &op.operation);
                    request(shim, up, url, body, op.etag.as_deref()).await
                }
            }
        };
        tokio::select! {
            r = read => Some(r),
            _ = in_flight.cancelled.cancelled() => None,
        }
    };
    let Some(Some(reading)) = shim.unless_stopping(SHUTDOWN_GRACE, read).await else {
        span.record("outcome", "abandoned");
        return;
    };
    drop(in_flight);
    match &reading.outcome {
        PollOutcome::Observed(_) => span.record("outcome", "observed"),
        PollOutcome::Unchanged => span.record("outcome", "not_modified"),
        PollOutcome::NotFound => span.record("outcome", "not_found"),
        PollOutcome::Transient(e) => {
            span.record("error", e.as_str());
            span.record("outcome", "transient")
        }
    };
    let (now, sample) = (shim.clock.now(), jitter_sample());
    let rules = up.rules();
    let prior = shim
        .learned
        .prior(&op.upstream, up.prior_key.as_deref(), op.metadata.as_ref());
    let status = record(shim, id, now, &|o| {
        apply_outcome_with(o, &rules, prior.as_ref(), &reading, now, sample)
    })
    .await;
    if let Some(status) = status {
        span.record("status", status.as_str());
    }
}

/// Apply a change to the stored record in one atomic write, then hand on what it produced:
/// a terminal operation to [`Shim::after_update`] (flush, then deliver), new event callbacks
/// to delivery, otherwise the next poll to the queue. Returns the status after the write.
async fn record(
    shim: &Shim,
    id: &OperationId,
    now: Timestamp,
    change: &crate::store::Change<'_>,
) -> Option<Status> {
    match shim.store.update_claimed(id, change).await {
        Ok(Some(updated)) => {
            shim.after_update(&updated).await;
            let after = &updated.op;
            if let Some(at) = after.next_poll_at.filter(|_| !after.status.is_terminal()) {
                shim.polls.schedule(id, at);
            }
            Some(after.status)
        }
        Ok(None) => None, // deleted meanwhile
        Err(e @ StoreError::LeaseLost(_)) => {
            // Another replica took this poll over; it records its own reading.
            tracing::info!(op = %id, error = %e, "poll result dropped");
            None
        }
        Err(e) => {
            tracing::error!(op = %id, error = %e, "cannot record poll result; retrying in 30s");
            shim.polls.schedule(id, now.plus(Duration::from_secs(30)));
            None
        }
    }
}

async fn request(
    shim: &Shim,
    up: &UpstreamConfig,
    url: reqwest::Url,
    body: Option<serde_json::Value>,
    etag: Option<&str>,
) -> Reading {
    // The whole exchange, body included, ends within the upstream's timeout (reqwest's
    // per-request timeout covers the body as well; this deadline does not rely on it).
    let deadline = tokio::time::Instant::now() + up.timeout;
    let status_url = url.clone();
    let mut req = shim
        .upstream_http
        .request(up.status_method.clone(), url)
        .headers(up.headers.clone())
        .timeout(up.timeout);
    match body {
        // A status read with a body (Vertex's fetchPredictOperation) is not conditional.
        Some(b) => req = req.json(&b),
        None => {
            if let Some(tag) = etag {
                req = req.header(IF_NONE_MATCH, tag);
            }
        }
    }
    let resp = match send(shim, up, req).await {
        Ok(r) => r,
        Err(SendError::Credential(e)) => {
            // Never terminal: the poll backs off like any transient failure (invariant 4).
            shim.metrics.upstream_request(&up.name, "credential_error");
            return Reading::new(PollOutcome::Transient(format!(
                "no credential for the status request: {e}"
            )));
        }
        Err(SendError::Http(e)) => {
            let (kind, msg) = if e.is_timeout() {
                (
                    "timeout",
                    format!("status request timed out after {:?}", up.timeout),
                )
            } else {
                (
                    "network_error",
                    format!("status request failed: {}", error_chain(&e)),
                )
            };
            shim.metrics.upstream_request(&up.name, kind);
            return Reading::new(PollOutcome::Transient(msg));
        }
    };
    let status = resp.status();
    let headers: HeaderMap = resp.headers().clone();
    let hint = parse_hint(&headers, shim.clock.now(), up.poll.hint_max);
    let etag = headers
        .get(ETAG)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let limit = shim.config.server.max_upstream_body;
    let read = tokio::time::timeout_at(deadline, read_capped(resp, limit))
        .await
        .unwrap_or(Err(BodyError::TimedOut));
    let body = match read {
        Ok(b) => b,
        Err(e) => {
            let (kind, msg) = match e {
                BodyError::TooLarge { limit } => (
                    "body_too_large",
                    format!("status response larger than {limit} bytes (server.max_upstream_body)"),
                ),
                BodyError::TimedOut => (
                    "timeout",
                    format!(
                        "status request timed out after {:?} (reading the body)",
                        up.timeout
                    ),
                ),
                BodyError::Read(e) => (
                    "network_error",
                    format!("reading the status response failed: {e}"),
                ),
            };
            shim.metrics.upstream_request(&up.name, kind);
            return Reading::new(PollOutcome::Transient(msg)).with_hint(hint);
        }
    };
    let (mut outcome, label) = classify(status, &body, |v| up.mapping.read(v));
    shim.metrics.upstream_request(&up.name, label);
    if let PollOutcome::Observed(obs) = outcome {
        outcome = if obs.state == ObservedState::Succeeded {
            decide_by_result(shim, up, &status_url, &body, obs).await
        } else {
            PollOutcome::Observed(obs)
        };
    }
    let kept = matches!(outcome, PollOutcome::Observed(_)).then(|| {
        let content_type = headers
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let raw = UpstreamBody::new(status.as_u16(), content_type, body.to_vec());
        (raw, shim.config.store.max_upstream_body)
    });
    if let PollOutcome::Observed(obs) = &mut outcome {
        if obs.state == ObservedState::Succeeded && up.preset.defaults().final_resource.is_some() {
            final_resource(shim, up, &status_url, &body, obs).await;
        }
    }
    if status == StatusCode::TOO_MANY_REQUESTS || status == StatusCode::SERVICE_UNAVAILABLE {
        // The whole upstream is told to wait, not only this operation (invariant 5), and its
        // rate is lowered until it has been quiet for a while.
        let wait = hint.unwrap_or(if headers.contains_key(RETRY_AFTER) {
            Duration::ZERO
        } else {
            Duration::from_secs(1)
        });
        let now = shim.clock.now();
        if let Some(l) = shim.limiters.get(&up.name) {
            l.pause_until(now.plus(wait));
            if l.throttled(now) {
                let rate = l.current_rate(now);
                tracing::warn!(upstream = %up.name, http_status = %status, wait_ms = wait.as_millis() as u64, rate, "upstream asked us to slow down; pausing it and lowering its rate");
            }
        }
    }
    if let Some(l) = shim.limiters.get(&up.name) {
        shim.metrics
            .upstream_rate(&up.name, l.current_rate(shim.clock.now()));
    }
    Reading {
        outcome,
        hint,
        etag,
        body: kept,
    }
}

/// Why a status request got no response.
enum SendError {
    Http(reqwest::Error),
    Credential(crate::credentials::CredentialError),
}

/// Send a status request with the upstream's credential, if it has `auth`. A 401/403 to it
/// refreshes the credential ONCE and sends the request again at once: that second answer is the
/// reading (invariant 4: a 401 before a credential refresh is not an error). Without `auth`
/// the request goes as built.
async fn send(
    shim: &Shim,
    up: &UpstreamConfig,
    req: reqwest::RequestBuilder,
) -> Result<reqwest::Response, SendError> {
    let Some(credential) = shim.credentials.get(&up.name) else {
        return req.send().await.map_err(SendError::Http);
    };
    let (client, req) = req.build_split();
    let mut req = req.map_err(SendError::Http)?;
    let again = req.try_clone();
    let used = credential
        .authorize(&mut req, None)
        .await
        .map_err(SendError::Credential)?;
    let resp = client.execute(req).await.map_err(SendError::Http)?;
    let status = resp.status();
    let Some(mut again) =
        again.filter(|_| status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN)
    else {
        return Ok(resp);
    };
    drop(resp);
    shim.metrics
        .upstream_request(&up.name, "credential_rejected");
    tracing::info!(upstream = %up.name, %status, "upstream rejected the credential; refreshing it and reading again");
    credential
        .authorize(&mut again, Some(used))
        .await
        .map_err(SendError::Credential)?;
    client.execute(again).await.map_err(SendError::Http)
}

/// A success the preset only takes as provisional ([`crate::upstream::ResultRead`], the fal
/// queue's `COMPLETED`): the result is read and its answer decides the outcome. A read that gets
/// no usable answer (network, timeout, too large, throttled, a location outside `base_url`)
/// decides nothing: the poll is transient, the operation stays running and its status is read
/// again (invariant 4). Counted as `result_read` / `result_read_error`.
async fn decide_by_result(
    shim: &Shim,
    up: &UpstreamConfig,
    status_url: &reqwest::Url,
    status_body: &[u8],
    mut obs: Observation,
) -> PollOutcome {
    let Some(rr) = up.preset.defaults().result_read else {
        return PollOutcome::Observed(obs);
    };
    let transient = |msg: String| {
        shim.metrics.upstream_request(&up.name, "result_read_error");
        PollOutcome::Transient(msg)
    };
    // The status body parsed a moment ago (it was observed).
    let parsed = serde_json::from_slice::<serde_json::Value>(status_body).unwrap_or_default();
    let url = match result_url(up, status_url, &parsed) {
        Ok(Some(url)) => url,
        Ok(None) => {
            return transient("the status says done but names no result to read".into());
        }
        Err(e) => return transient(format!("not reading the result: {e}")),
    };
    // A request like any other to this upstream: it waits for the upstream's budget.
    if let Some(limiter) = shim.limiters.get(&up.name) {
        limiter.acquire(shim.clock.as_ref()).await;
    }
    let deadline = tokio::time::Instant::now() + up.timeout;
    let read = async {
        let req = shim
            .upstream_http
            .get(url)
            .headers(up.headers.clone())
            .timeout(up.timeout);
        let resp = send(shim, up, req).await.map_err(|e| match e {
            SendError::Http(e) => format!("request failed: {}", error_chain(&e)),
            SendError::Credential(e) => format!("no credential: {e}"),
        })?;
        let status = resp.status();
        let headers = resp.headers().clone();
        let bytes = read_capped(resp, shim.config.server.max_upstream_body)
            .await
            .map_err(|e| match e {
                BodyError::TooLarge { limit } => {
                    format!("larger than {limit} bytes (server.max_upstream_body)")
                }
                BodyError::TimedOut => "timed out".to_string(),
                BodyError::Read(e) => format!("reading failed: {e}"),
            })?;
        Ok::<_, String>((status, headers, bytes))
    };
    let read = tokio::time::timeout_at(deadline, read)
        .await
        .unwrap_or_else(|_| Err(format!("timed out after {:?}", up.timeout)));
    let (status, headers, bytes) = match read {
        Ok(answer) => answer,
        Err(e) => return transient(format!("reading the result failed: {e}")),
    };
    if status == StatusCode::TOO_MANY_REQUESTS || status == StatusCode::SERVICE_UNAVAILABLE {
        // As for a status read: the whole upstream waits (invariant 5).
        let now = shim.clock.now();
        let wait = parse_hint(&headers, now, up.poll.hint_max).unwrap_or(Duration::from_secs(1));
        if let Some(l) = shim.limiters.get(&up.name) {
            l.pause_until(now.plus(wait));
        }
    }
    match (rr.read)(status.as_u16(), &headers, &bytes) {
        ResultOutcome::Succeeded(result) => {
            shim.metrics.upstream_request(&up.name, "result_read");
            obs.result = match &up.mapping {
                Mapping::Preset {
                    result_field: Some(p),
                    ..
                } => result.pointer(p).filter(|v| !v.is_null()).cloned(),
                _ => Some(result),
            };
            obs.error = None;
            obs.progress = Some(1.0);
            PollOutcome::Observed(obs)
        }
        ResultOutcome::Ended(state, error) => {
            shim.metrics.upstream_request(&up.name, "result_read");
            obs.state = state;
            obs.result = None;
            obs.error = Some(error);
            PollOutcome::Observed(obs)
        }
        ResultOutcome::Retry(why) => transient(format!(
            "the result read ({status}) does not say how the job ended: {why}"
        )),
    }
}

/// After success, read the final resource the status body names (Azure's `resourceLocation`,
/// as azure-core's poller does) once and make it the `result`. If that read fails (network,
/// non-2xx, not JSON, too large, outside `base_url`), the operation still succeeds with the
/// status body as `result`: the job did succeed, and a second read cannot be retried once the
/// outcome is recorded. The failure is logged and counted (`final_resource_error`).
async fn final_resource(
    shim: &Shim,
    up: &UpstreamConfig,
    status_url: &reqwest::Url,
    status_body: &[u8],
    obs: &mut Observation,
) {
    let Ok(parsed) = serde_json::from_slice::<serde_json::Value>(status_body) else {
        return;
    };
    let url = match final_resource_url(up, status_url, &parsed) {
        Ok(Some(url)) => url,
        Ok(None) => return,
        Err(e) => {
            shim.metrics
                .upstream_request(&up.name, "final_resource_error");
            tracing::warn!(upstream = %up.name, error = %e, "not reading the final resource; the result is the status body");
            return;
        }
    };
    let deadline = tokio::time::Instant::now() + up.timeout;
    let read = async {
        // With the upstream's credential, as the status read (a 401 refreshes it once).
        let req = shim
            .upstream_http
            .get(url)
            .headers(up.headers.clone())
            .timeout(up.timeout);
        let resp = send(shim, up, req).await.map_err(|e| match e {
            SendError::Http(e) => format!("request failed: {}", error_chain(&e)),
            SendError::Credential(e) => format!("no credential: {e}"),
        })?;
        let status = resp.status();
        if !status.is_success() {
            return Err(format!("upstream answered {status}"));
        }
        let bytes = read_capped(resp, shim.config.server.max_upstream_body)
            .await
            .map_err(|e| match e {
                BodyError::TooLarge { limit } => {
                    format!("larger than {limit} bytes (server.max_upstream_body)")
                }
                BodyError::TimedOut => "timed out".to_string(),
                BodyError::Read(e) => format!("reading failed: {e}"),
            })?;
        serde_json::from_slice::<serde_json::Value>(&bytes).map_err(|e| format!("not JSON: {e}"))
    };
    let read = tokio::time::timeout_at(deadline, read)
        .await
        .unwrap_or_else(|_| Err(format!("timed out after {:?}", up.timeout)));
    match read {
        Ok(resource) => {
            shim.metrics.upstream_request(&up.name, "final_resource");
            obs.result = Some(resource);
        }
        Err(e) => {
            shim.metrics
                .upstream_request(&up.name, "final_resource_error");
            tracing::warn!(upstream = %up.name, error = %e, "reading the final resource failed; the result is the status body");
        }
    }
}
