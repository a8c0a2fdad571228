//! Polling: one status read of one operation, from the rate limiter to the stored outcome.
//! Stages: load → wait for the upstream's budget → GET → classify the answer → apply it to the
//! record in one atomic write → hand a terminal operation to the domain reaction (flush, then
//! deliver) → schedule what comes next. The rules that decide (what an answer means, when the
//! next poll is due) are pure and live in [`crate::schedule::outcome`]; this file is the I/O.

use std::time::Duration;

use reqwest::StatusCode;
use reqwest::header::{ETAG, HeaderMap, IF_NONE_MATCH, RETRY_AFTER};

use crate::body::{BodyError, read_capped};
use crate::clock::Timestamp;
use crate::errors::error_chain;
use crate::ids::OperationId;
use crate::operation::Operation;
use crate::schedule::{
    GROUP_FULL_RETRY, PollOutcome, Reading, apply_outcome_with, classify, parse_hint, time_out,
};
use crate::state::{SHUTDOWN_GRACE, Shim};
use crate::upstream::UpstreamConfig;
use crate::upstream::status_url;

fn jitter_sample() -> f64 {
    rand::random_range(-1.0..=1.0)
}

/// Read one operation's status and record what it said.
pub async fn poll_once(shim: &Shim, id: OperationId) {
    let id = &id;
    let op = match shim.store.get(id) {
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
    // A DELETE of the operation meanwhile drops the request (and its connection) at once.
    let in_flight = shim.reads.start(id);
    let read = async {
        let read = async {
            match status_url(up, &op.operation) {
                Err(e) => Reading::new(PollOutcome::Transient(e)),
                Ok(url) => request(shim, up, url, op.etag.as_deref()).await,
            }
        };
        tokio::select! {
            r = read => Some(r),
            _ = in_flight.cancelled.cancelled() => None,
        }
    };
    let Some(Some(reading)) = shim.unless_stopping(SHUTDOWN_GRACE, read).await else {
        return;
    };
    drop(in_flight);
    let (now, sample) = (shim.clock.now(), jitter_sample());
    let rules = up.rules();
    let prior = shim
        .learned
        .prior(&op.upstream, up.prior_key.as_deref(), op.metadata.as_ref());
    record(shim, id, now, &|o| {
        apply_outcome_with(o, &rules, prior.as_ref(), &reading, now, sample)
    })
    .await;
}

/// Apply a change to the stored record in one atomic write, then hand on what it produced:
/// a terminal operation to [`Shim::after_update`] (flush, then deliver), new event callbacks
/// to delivery, otherwise the next poll to the queue.
async fn record(
    shim: &Shim,
    id: &OperationId,
    now: Timestamp,
    change: &(dyn Fn(&mut Operation) -> bool + Sync),
) {
    match shim.store.update(id, change) {
        Ok(Some(updated)) => {
            shim.after_update(&updated).await;
            let after = &updated.op;
            if let Some(at) = after.next_poll_at.filter(|_| !after.status.is_terminal()) {
                shim.polls.schedule(id, at);
            }
        }
        Ok(None) => {} // deleted meanwhile
        Err(e) => {
            tracing::error!(op = %id, error = %e, "cannot record poll result; retrying in 30s");
            shim.polls.schedule(id, now.plus(Duration::from_secs(30)));
        }
    }
}

async fn request(
    shim: &Shim,
    up: &UpstreamConfig,
    url: reqwest::Url,
    etag: Option<&str>,
) -> Reading {
    // The whole exchange, body included, ends within the upstream's timeout (reqwest's
    // per-request timeout covers the body as well; this deadline does not rely on it).
    let deadline = tokio::time::Instant::now() + up.timeout;
    let mut req = shim
        .upstream_http
        .get(url)
        .headers(up.headers.clone())
        .timeout(up.timeout);
    if let Some(tag) = etag {
        req = req.header(IF_NONE_MATCH, tag);
    }
    let resp = match req.send().await {
        Ok(r) => r,
        Err(e) => {
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
    let (outcome, label) = classify(status, &body, |v| up.mapping.read(v));
    shim.metrics.upstream_request(&up.name, label);
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
                tracing::warn!(upstream = %up.name, %status, wait_ms = wait.as_millis() as u64, rate, "upstream asked us to slow down; pausing it and lowering its rate");
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
    }
}
