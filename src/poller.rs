//! Polling: one status read of one operation, from the rate limiter to the stored outcome.
//! Stages: load → wait for the upstream's budget → GET → classify the answer → apply it to the
//! record in one atomic write → flush if it became terminal → schedule what comes next.

use std::cell::Cell;
use std::time::Duration;

use reqwest::StatusCode;
use reqwest::header::{HeaderMap, RETRY_AFTER};

use crate::clock::Timestamp;
use crate::config::UpstreamConfig;
use crate::operation::{DetectedVia, Operation, Status, WEBHOOK_READS, shim_error};
use crate::schedule::{backoff, next_poll_at, parse_hint};
use crate::service::Shim;
use crate::upstream::{Observation, status_url};

/// What one status request told us.
#[derive(Debug, Clone)]
pub enum PollOutcome {
    /// A readable status.
    Observed(Observation),
    /// The upstream says the operation does not exist.
    NotFound,
    /// Anything that must not end the operation: network error, timeout, 429, 5xx, other 4xx,
    /// a body we cannot read. The string says which, for `last_poll_error`.
    Transient(String),
}

/// Classify an upstream answer. Pure, so the rules are testable without a server.
pub fn classify(
    up: &UpstreamConfig,
    status: StatusCode,
    body: &[u8],
) -> (PollOutcome, &'static str) {
    if status == StatusCode::NOT_FOUND {
        return (PollOutcome::NotFound, "not_found");
    }
    if status == StatusCode::TOO_MANY_REQUESTS {
        return (
            PollOutcome::Transient("upstream answered 429 Too Many Requests".into()),
            "rate_limited",
        );
    }
    if status.is_server_error() {
        return (
            PollOutcome::Transient(format!("upstream answered {status}")),
            "server_error",
        );
    }
    if !status.is_success() {
        return (
            PollOutcome::Transient(format!("upstream answered {status}")),
            "client_error",
        );
    }
    match serde_json::from_slice::<serde_json::Value>(body) {
        Err(e) => (
            PollOutcome::Transient(format!("status response is not JSON: {e}")),
            "invalid_body",
        ),
        Ok(v) => match up.mapping.read(&v) {
            Ok(obs) => (PollOutcome::Observed(obs), "ok"),
            Err(e) => (PollOutcome::Transient(e), "invalid_body"),
        },
    }
}

/// Apply an outcome to a record. Returns whether to write. `sample` is the jitter draw in [-1, 1].
pub fn apply_outcome(
    o: &mut Operation,
    up: &UpstreamConfig,
    outcome: &PollOutcome,
    hint: Option<Duration>,
    now: Timestamp,
    sample: f64,
) -> bool {
    if o.status.is_terminal() {
        if matches!(outcome, PollOutcome::Observed(obs) if obs.state.is_terminal()) {
            o.late_observations += 1;
            return true;
        }
        return false;
    }
    o.polls += 1;
    o.updated_at = now;
    match outcome {
        PollOutcome::Observed(obs) => {
            if o.apply_observation(obs, now) {
                return true;
            }
        }
        PollOutcome::NotFound => {
            o.not_found_streak += 1;
            o.last_poll_error = Some(format!(
                "upstream answered 404 ({} in a row)",
                o.not_found_streak
            ));
            if o.not_found_streak >= up.not_found_after {
                o.error = Some(shim_error(
                    "upstream_not_found",
                    &format!(
                        "the upstream answered 404 Not Found {} times in a row",
                        o.not_found_streak
                    ),
                ));
                o.finish(Status::Failed, DetectedVia::Poll, now);
                return true;
            }
        }
        PollOutcome::Transient(msg) => {
            o.error_streak += 1;
            o.last_poll_error = Some(msg.clone());
        }
    }
    if now >= o.deadline_at {
        o.error = Some(shim_error(
            "deadline_exceeded",
            "the operation did not finish before its deadline",
        ));
        o.finish(Status::TimedOut, DetectedVia::Deadline, now);
        return true;
    }
    let interval = match &up.webhook {
        // Webhooks on and none pending: only the reconciliation poll.
        Some(w) if o.webhook_reads == 0 => w.safety_poll,
        // Right after a webhook the status endpoint may lag it: re-read on the fast schedule.
        Some(_) => backoff(
            &up.poll,
            WEBHOOK_READS.saturating_sub(o.webhook_reads),
            sample,
        ),
        None => backoff(&up.poll, o.polls.saturating_sub(1), sample),
    };
    o.next_poll_at = Some(next_poll_at(now, interval, hint, o.deadline_at));
    true
}

/// The first poll of a newly registered operation.
pub fn first_poll_at(
    up: &UpstreamConfig,
    now: Timestamp,
    deadline: Timestamp,
    sample: f64,
) -> Timestamp {
    let interval = match &up.webhook {
        Some(w) => w.safety_poll,
        None => backoff(&up.poll, 0, sample),
    };
    next_poll_at(now, interval, None, deadline)
}

fn jitter_sample() -> f64 {
    rand::random_range(-1.0..=1.0)
}

/// Read one operation's status and record what it said.
pub async fn poll_once(shim: &Shim, id: &str) {
    let op = match shim.store.get(id) {
        Ok(Some(op)) if !op.status.is_terminal() => op,
        Ok(_) => return,
        Err(e) => {
            tracing::error!(op = id, error = %e, "cannot read operation; retrying in 30s");
            shim.polls
                .schedule(id, shim.clock.now().plus(Duration::from_secs(30)));
            return;
        }
    };
    let Some(up) = shim.config.upstreams.get(&op.upstream) else {
        tracing::warn!(op = id, upstream = %op.upstream, "operation's upstream is not in the config; checking again in 1h");
        shim.polls
            .schedule(id, shim.clock.now().plus(Duration::from_secs(3600)));
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
    let read = async {
        match status_url(up, &op.operation) {
            Err(e) => (PollOutcome::Transient(e), None),
            Ok(url) => request(shim, up, url).await,
        }
    };
    let Some((outcome, hint)) = shim
        .unless_stopping(crate::service::SHUTDOWN_GRACE, read)
        .await
    else {
        return;
    };
    let now = shim.clock.now();
    let sample = jitter_sample();
    let became_terminal = Cell::new(false);
    let result = shim.store.update(id, &|o| {
        let was_terminal = o.status.is_terminal();
        let write = apply_outcome(o, up, &outcome, hint, now, sample);
        became_terminal.set(!was_terminal && o.status.is_terminal());
        write
    });
    match result {
        Ok(Some((after, _))) => {
            if became_terminal.get() {
                shim.on_terminal(&after).await;
            } else if let Some(at) = after.next_poll_at.filter(|_| !after.status.is_terminal()) {
                shim.polls.schedule(id, at);
            }
        }
        Ok(None) => {} // deleted meanwhile
        Err(e) => {
            tracing::error!(op = id, error = %e, "cannot record poll result; retrying in 30s");
            shim.polls.schedule(id, now.plus(Duration::from_secs(30)));
        }
    }
}

async fn request(
    shim: &Shim,
    up: &UpstreamConfig,
    url: reqwest::Url,
) -> (PollOutcome, Option<Duration>) {
    let sent = shim
        .upstream_http
        .get(url)
        .headers(up.headers.clone())
        .timeout(up.timeout)
        .send()
        .await;
    let resp = match sent {
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
            return (PollOutcome::Transient(msg), None);
        }
    };
    let status = resp.status();
    let headers: HeaderMap = resp.headers().clone();
    let hint = parse_hint(&headers, std::time::SystemTime::now());
    let body = match resp.bytes().await {
        Ok(b) => b,
        Err(e) => {
            shim.metrics.upstream_request(&up.name, "network_error");
            return (
                PollOutcome::Transient(format!(
                    "reading the status response failed: {}",
                    error_chain(&e)
                )),
                hint,
            );
        }
    };
    let (outcome, label) = classify(up, status, &body);
    shim.metrics.upstream_request(&up.name, label);
    if status == StatusCode::TOO_MANY_REQUESTS || status == StatusCode::SERVICE_UNAVAILABLE {
        // The whole upstream is told to wait, not only this operation (invariant 5).
        let wait = hint.unwrap_or(if headers.contains_key(RETRY_AFTER) {
            Duration::ZERO
        } else {
            Duration::from_secs(1)
        });
        if let Some(l) = shim.limiters.get(&up.name) {
            l.pause_until(shim.clock.now().plus(wait));
        }
        tracing::warn!(upstream = %up.name, %status, wait_ms = wait.as_millis() as u64, "upstream asked us to slow down; pausing it");
    }
    (outcome, hint)
}

/// An error and its causes on one line (reqwest's Display hides the cause).
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::{Clock, ManualClock};
    use crate::config::Config;
    use crate::operation::sample;
    use crate::upstream::ObservedState;
    use serde_json::json;

    fn upstream(webhook: bool) -> UpstreamConfig {
        let mut text = String::from(
            r#"
[upstreams.jobs]
base_url = "http://127.0.0.1:1/"
status_path = "jobs/{operation}"
status_field = "/state"
succeeded = ["done"]
failed = ["error"]
not_found_after = 3
poll = { initial = "1s", multiplier = 2.0, max = "30s", jitter = 0.0, deadline = "24h" }
"#,
        );
        if webhook {
            text.push_str("[upstreams.jobs.webhook]\nscheme = \"none\"\nsafety_poll = \"10m\"\n");
        }
        Config::parse(&text, "t.toml", &|_| None).unwrap().upstreams["jobs"].clone()
    }

    fn running() -> PollOutcome {
        PollOutcome::Observed(Observation {
            state: ObservedState::Running,
            raw_status: json!("running"),
            progress: None,
            result: None,
            error: None,
            expires_at: None,
        })
    }

    /// Drive one operation through a whole day of polls on a manual clock.
    fn simulate_day(up: &UpstreamConfig, outcome: &PollOutcome) -> (Operation, u32) {
        let clock = ManualClock::new(Timestamp(1_000_000));
        let mut op = sample(clock.now());
        op.deadline_at = clock.now().plus(Duration::from_secs(24 * 3600));
        op.next_poll_at = Some(first_poll_at(up, clock.now(), op.deadline_at, 0.0));
        let mut polls = 0;
        while let Some(at) = op.next_poll_at.filter(|_| !op.status.is_terminal()) {
            clock.set(at);
            apply_outcome(&mut op, up, outcome, None, clock.now(), 0.0);
            polls += 1;
            assert!(polls < 100_000, "runaway schedule");
        }
        (op, polls)
    }

    #[test]
    fn a_day_of_running_ends_timed_out_exactly_at_the_deadline() {
        let up = upstream(false);
        let (op, polls) = simulate_day(&up, &running());
        assert_eq!(op.status, Status::TimedOut);
        assert_eq!(op.detected_via, Some(DetectedVia::Deadline));
        assert_eq!(op.completed_at, Some(op.deadline_at));
        // 1+2+4+8+16 s, then every 30 s for the rest of the day, plus the deadline poll.
        let expected = 5 + (86_400 - 31) / 30 + 1;
        assert!(
            (polls as i64 - expected as i64).abs() <= 1,
            "polls {polls}, expected about {expected}"
        );
    }

    #[test]
    fn transient_errors_never_end_an_operation_before_its_deadline() {
        let up = upstream(false);
        let (op, _) = simulate_day(&up, &PollOutcome::Transient("upstream answered 503".into()));
        assert_eq!(op.status, Status::TimedOut);
        assert_eq!(op.last_poll_error.as_deref(), Some("upstream answered 503"));
    }

    #[test]
    fn with_webhooks_on_only_the_safety_poll_runs() {
        let up = upstream(true);
        let (op, polls) = simulate_day(&up, &running());
        assert_eq!(op.status, Status::TimedOut);
        assert_eq!(
            polls,
            24 * 6,
            "one poll every 10 minutes, the last one at the deadline"
        );
    }

    #[test]
    fn not_found_streak_ends_the_operation_and_a_success_resets_it() {
        let up = upstream(false);
        let now = Timestamp(10_000);
        let mut op = sample(now);
        apply_outcome(&mut op, &up, &PollOutcome::NotFound, None, now, 0.0);
        apply_outcome(&mut op, &up, &PollOutcome::NotFound, None, now, 0.0);
        apply_outcome(&mut op, &up, &running(), None, now, 0.0);
        assert_eq!(op.not_found_streak, 0);
        for _ in 0..3 {
            apply_outcome(&mut op, &up, &PollOutcome::NotFound, None, now, 0.0);
        }
        assert_eq!(op.status, Status::Failed);
        assert_eq!(op.error.as_ref().unwrap()["code"], "upstream_not_found");
    }

    #[test]
    fn a_hint_pushes_the_next_poll_later() {
        let up = upstream(false);
        let now = Timestamp(10_000);
        let mut op = sample(now);
        apply_outcome(
            &mut op,
            &up,
            &running(),
            Some(Duration::from_secs(90)),
            now,
            0.0,
        );
        assert_eq!(op.next_poll_at, Some(now.plus(Duration::from_secs(90))));
        apply_outcome(&mut op, &up, &running(), None, now, 0.0);
        assert_eq!(op.next_poll_at, Some(now.plus(Duration::from_secs(2))));
    }

    #[test]
    fn classify_never_makes_errors_terminal() {
        let up = upstream(false);
        for (code, body) in [
            (500u16, "{}"),
            (429, ""),
            (401, "{}"),
            (200, "not json"),
            (200, "{\"x\":1}"),
        ] {
            let (o, _) = classify(&up, StatusCode::from_u16(code).unwrap(), body.as_bytes());
            assert!(
                matches!(o, PollOutcome::Transient(_)),
                "{code} {body} → {o:?}"
            );
        }
        assert!(matches!(
            classify(&up, StatusCode::NOT_FOUND, b"").0,
            PollOutcome::NotFound
        ));
    }
}
