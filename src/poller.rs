//! Polling: one status read of one operation, from the rate limiter to the stored outcome.
//! Stages: load → wait for the upstream's budget → GET → classify the answer → apply it to the
//! record in one atomic write → flush if it became terminal → schedule what comes next.

use std::cell::Cell;
use std::time::Duration;

use reqwest::StatusCode;
use reqwest::header::{ETAG, HeaderMap, IF_NONE_MATCH, RETRY_AFTER};

use crate::clock::Timestamp;
use crate::config::UpstreamConfig;
use crate::operation::{DetectedVia, Operation, Status, WEBHOOK_READS, shim_error};
use crate::schedule::{backoff, interval, next_poll_at, parse_hint};
use crate::service::Shim;
use crate::upstream::{Observation, status_url};

/// What one status request told us.
#[derive(Debug, Clone)]
pub enum PollOutcome {
    /// A readable status.
    Observed(Observation),
    /// `304 Not Modified` to a conditional request: nothing changed since the last reading.
    Unchanged,
    /// The upstream says the operation does not exist.
    NotFound,
    /// Anything that must not end the operation: network error, timeout, 429, 5xx, other 4xx,
    /// a body we cannot read. The string says which, for `last_poll_error`.
    Transient(String),
}

/// Everything one status request returned that the policy uses.
#[derive(Debug, Clone)]
pub struct Reading {
    pub outcome: PollOutcome,
    /// The longest wait the response's hints ask for (already clamped to `poll.hint_max`).
    pub hint: Option<Duration>,
    /// The response's `ETag`, for the next request's `If-None-Match`.
    pub etag: Option<String>,
}

impl Reading {
    pub fn new(outcome: PollOutcome) -> Reading {
        Reading {
            outcome,
            hint: None,
            etag: None,
        }
    }

    pub fn with_hint(mut self, hint: Option<Duration>) -> Reading {
        self.hint = hint;
        self
    }
}

/// After the deadline, a status read that fails (network, 5xx, 429) is retried for this long
/// before the operation is declared timed out: it never times out without a last look.
pub const DEADLINE_GRACE: Duration = Duration::from_secs(60);
/// A poll is made this long after the upstream's own `expires_at`, when it gave one.
pub const EXPIRY_GRACE: Duration = Duration::from_secs(2);

/// Classify an upstream answer. Pure, so the rules are testable without a server.
pub fn classify(
    up: &UpstreamConfig,
    status: StatusCode,
    body: &[u8],
) -> (PollOutcome, &'static str) {
    if status == StatusCode::NOT_MODIFIED {
        return (PollOutcome::Unchanged, "not_modified");
    }
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

/// Apply one reading to a record and plan the next poll. Returns whether to write. `sample`
/// is the jitter draw in [-1, 1]. This is the whole polling policy as the service runs it (the
/// policy benchmark replays it too): progress-aware interval, hints, the upstream's expiry, the
/// deadline with its last look.
pub fn apply_outcome(
    o: &mut Operation,
    up: &UpstreamConfig,
    reading: &Reading,
    now: Timestamp,
    sample: f64,
) -> bool {
    let outcome = &reading.outcome;
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
            o.etag = reading.etag.clone();
            if obs.expires_at.is_some() {
                o.upstream_expires_at = obs.expires_at;
            }
            if o.apply_observation(obs, now) {
                return true;
            }
            o.pace.observe(obs.progress, now);
        }
        PollOutcome::Unchanged => {
            o.not_found_streak = 0;
            o.error_streak = 0;
            o.last_poll_error = None;
            o.webhook_reads = o.webhook_reads.saturating_sub(1);
            let same = o.pace.progress;
            o.pace.observe(same, now);
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
    let transient = matches!(outcome, PollOutcome::Transient(_));
    if now >= o.deadline_at {
        // The deadline's last look: a reading (even "still running" or 404) ends it now; a
        // failed read is retried within the grace period first.
        let grace_end = o.deadline_at.plus(DEADLINE_GRACE);
        if !transient || now >= grace_end {
            return time_out(o, now);
        }
        let retry = backoff(&up.poll, o.error_streak.saturating_sub(1), sample);
        let at = now.plus(reading.hint.map_or(retry, |h| h.max(retry)));
        o.next_poll_at = Some(at.min(grace_end));
        return true;
    }
    let mut wait = match &up.webhook {
        // Webhooks on and none pending: only the reconciliation poll.
        Some(w) if o.webhook_reads == 0 => w.safety_poll,
        // Right after a webhook the status endpoint may lag it: re-read on the fast schedule.
        Some(_) => backoff(
            &up.poll,
            WEBHOOK_READS.saturating_sub(o.webhook_reads),
            sample,
        ),
        None => interval(&up.poll, &o.pace, o.polls.saturating_sub(1), now, sample).0,
    };
    if transient {
        // Failing reads slow down on their own backoff, whatever the estimate says.
        wait = wait.max(backoff(&up.poll, o.error_streak.saturating_sub(1), sample));
    }
    // The upstream's own expiry is worth a look right after it (a hint may still push later).
    if let Some(exp) = o.upstream_expires_at.map(|e| e.plus(EXPIRY_GRACE)) {
        if exp > now {
            wait = wait.min(now.until(exp));
        }
    }
    o.next_poll_at = Some(next_poll_at(now, wait, reading.hint, o.deadline_at));
    true
}

/// The first poll of a newly registered operation, before spreading (see
/// [`crate::schedule::UpstreamLimiter::spread_first_poll`]).
pub fn first_poll_at(
    up: &UpstreamConfig,
    now: Timestamp,
    deadline: Timestamp,
    sample: f64,
) -> Timestamp {
    if !up.poll.enabled {
        // Nothing to read: the next look is the deadline.
        return deadline.max(now);
    }
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
            Err(e) => Reading::new(PollOutcome::Transient(e)),
            Ok(url) => request(shim, up, url, op.etag.as_deref()).await,
        }
    };
    let Some(reading) = shim
        .unless_stopping(crate::service::SHUTDOWN_GRACE, read)
        .await
    else {
        return;
    };
    let (now, sample) = (shim.clock.now(), jitter_sample());
    record(shim, id, now, &|o| {
        apply_outcome(o, up, &reading, now, sample)
    })
    .await;
}

/// End an operation at its deadline (`timed_out`, `deadline_exceeded`). Returns true.
pub fn time_out(o: &mut Operation, now: Timestamp) -> bool {
    o.error = Some(shim_error(
        "deadline_exceeded",
        "the operation did not finish before its deadline",
    ));
    o.finish(Status::TimedOut, DetectedVia::Deadline, now);
    true
}

/// Apply a change to the stored record in one atomic write, then hand a terminal operation to
/// delivery or put the next poll on the queue.
async fn record(
    shim: &Shim,
    id: &str,
    now: Timestamp,
    change: &(dyn Fn(&mut Operation) -> bool + Sync),
) {
    let became_terminal = Cell::new(false);
    let result = shim.store.update(id, &|o| {
        let was_terminal = o.status.is_terminal();
        let write = change(o);
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
    etag: Option<&str>,
) -> Reading {
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
    let hint = parse_hint(&headers, std::time::SystemTime::now(), up.poll.hint_max);
    let etag = headers
        .get(ETAG)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let body = match resp.bytes().await {
        Ok(b) => b,
        Err(e) => {
            shim.metrics.upstream_request(&up.name, "network_error");
            return Reading::new(PollOutcome::Transient(format!(
                "reading the status response failed: {}",
                error_chain(&e)
            )))
            .with_hint(hint);
        }
    };
    let (outcome, label) = classify(up, status, &body);
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
            apply_outcome(
                &mut op,
                up,
                &Reading::new(outcome.clone()),
                clock.now(),
                0.0,
            );
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
        apply_outcome(&mut op, &up, &Reading::new(PollOutcome::NotFound), now, 0.0);
        apply_outcome(&mut op, &up, &Reading::new(PollOutcome::NotFound), now, 0.0);
        apply_outcome(&mut op, &up, &Reading::new(running()), now, 0.0);
        assert_eq!(op.not_found_streak, 0);
        for _ in 0..3 {
            apply_outcome(&mut op, &up, &Reading::new(PollOutcome::NotFound), now, 0.0);
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
            &Reading::new(running()).with_hint(Some(Duration::from_secs(90))),
            now,
            0.0,
        );
        assert_eq!(op.next_poll_at, Some(now.plus(Duration::from_secs(90))));
        apply_outcome(&mut op, &up, &Reading::new(running()), now, 0.0);
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

    fn at_progress(state: ObservedState, progress: f64) -> PollOutcome {
        PollOutcome::Observed(Observation {
            state,
            raw_status: json!("x"),
            progress: Some(progress),
            result: None,
            error: None,
            expires_at: None,
        })
    }

    #[test]
    fn the_deadline_poll_is_a_last_look_and_a_failed_look_is_retried() {
        let up = upstream(false);
        let start = Timestamp(1_000_000);
        let mut op = sample(start);
        op.deadline_at = start.plus(Duration::from_secs(100));
        op.polls = 20; // the blind schedule is at its 30 s maximum
        // A poll planned beyond the deadline is moved to it.
        apply_outcome(
            &mut op,
            &up,
            &Reading::new(running()),
            start.plus(Duration::from_secs(95)),
            0.0,
        );
        assert_eq!(op.next_poll_at, Some(op.deadline_at));
        // The look at the deadline fails: not timed out yet, retried soon, within the grace.
        let at = op.deadline_at;
        let failed = Reading::new(PollOutcome::Transient("upstream answered 503".into()));
        apply_outcome(&mut op, &up, &failed, at, 0.0);
        assert_eq!(op.status, Status::Running);
        let retry = op.next_poll_at.unwrap();
        assert!(retry > at && retry <= at.plus(DEADLINE_GRACE), "{retry:?}");
        // A hint on the failed look pushes the retry, but never past the grace period.
        let hinted = failed.clone().with_hint(Some(Duration::from_secs(3600)));
        apply_outcome(&mut op, &up, &hinted, retry, 0.0);
        assert_eq!(op.next_poll_at, Some(at.plus(DEADLINE_GRACE)));
        // The retry reads "still running": now it times out.
        apply_outcome(
            &mut op,
            &up,
            &Reading::new(running()),
            at.plus(Duration::from_secs(2)),
            0.0,
        );
        assert_eq!(op.status, Status::TimedOut);
        // Without any successful look, the grace period's end times it out.
        let mut op = sample(start);
        op.deadline_at = start;
        apply_outcome(&mut op, &up, &failed, start.plus(DEADLINE_GRACE), 0.0);
        assert_eq!(op.status, Status::TimedOut);
        // A terminal answer at the deadline wins over timing out.
        let mut op = sample(start);
        op.deadline_at = start;
        apply_outcome(
            &mut op,
            &up,
            &Reading::new(at_progress(ObservedState::Succeeded, 1.0)),
            start,
            0.0,
        );
        assert_eq!(op.status, Status::Succeeded);
    }

    #[test]
    fn the_upstreams_expiry_gets_a_poll_but_hints_still_win() {
        let up = upstream(false);
        let now = Timestamp(1_000_000);
        let mut op = sample(now);
        op.polls = 20; // the blind schedule is at its 30 s maximum
        op.deadline_at = now.plus(Duration::from_secs(3600));
        let expires = now.plus(Duration::from_secs(10));
        let obs = PollOutcome::Observed(Observation {
            state: ObservedState::Running,
            raw_status: json!("in_progress"),
            progress: None,
            result: None,
            error: None,
            expires_at: Some(expires),
        });
        apply_outcome(&mut op, &up, &Reading::new(obs.clone()), now, 0.0);
        assert_eq!(op.upstream_expires_at, Some(expires));
        assert_eq!(op.next_poll_at, Some(expires.plus(EXPIRY_GRACE)));
        let hinted = Reading::new(obs).with_hint(Some(Duration::from_secs(20)));
        apply_outcome(&mut op, &up, &hinted, now, 0.0);
        assert_eq!(op.next_poll_at, Some(now.plus(Duration::from_secs(20))));
        // Once past the expiry, the normal schedule resumes.
        let later = expires.plus(Duration::from_secs(5));
        apply_outcome(&mut op, &up, &Reading::new(running()), later, 0.0);
        assert_eq!(op.next_poll_at, Some(later.plus(Duration::from_secs(30))));
    }

    #[test]
    fn etags_are_kept_and_a_304_is_no_change() {
        let up = upstream(false);
        let now = Timestamp(1_000_000);
        let mut op = sample(now);
        let mut first = Reading::new(at_progress(ObservedState::Running, 0.5));
        first.etag = Some("\"v1\"".into());
        apply_outcome(&mut op, &up, &first, now, 0.0);
        assert_eq!(op.etag.as_deref(), Some("\"v1\""));
        op.error_streak = 2;
        let (o, label) = classify(&up, StatusCode::NOT_MODIFIED, b"");
        assert_eq!(label, "not_modified");
        apply_outcome(
            &mut op,
            &up,
            &Reading::new(o),
            now.plus(Duration::from_secs(1)),
            0.0,
        );
        assert_eq!(
            op.etag.as_deref(),
            Some("\"v1\""),
            "kept for the next request"
        );
        assert_eq!(op.status, Status::Running);
        assert_eq!(op.error_streak, 0);
        assert_eq!(op.pace.stalled, 1, "a 304 shows no progress");
        assert_eq!(op.polls, 2);
        // A 200 without an ETag forgets it.
        apply_outcome(
            &mut op,
            &up,
            &Reading::new(running()),
            now.plus(Duration::from_secs(2)),
            0.0,
        );
        assert_eq!(op.etag, None);
    }

    /// A job with steady progress that ends at `duration`: how many polls and how late.
    fn run_job(up: &UpstreamConfig, duration: Duration, with_progress: bool) -> (u32, Duration) {
        let start = Timestamp(1_000_000);
        let end = start.plus(duration);
        let mut op = sample(start);
        op.deadline_at = start.plus(Duration::from_secs(48 * 3600));
        let mut at = first_poll_at(up, start, op.deadline_at, 0.0);
        loop {
            let done = at >= end;
            let p = (at.0 - start.0) as f64 / duration.as_millis() as f64;
            let outcome = match (done, with_progress) {
                (true, _) => at_progress(ObservedState::Succeeded, 1.0),
                (false, true) => at_progress(ObservedState::Running, p.min(1.0)),
                (false, false) => running(),
            };
            apply_outcome(&mut op, up, &Reading::new(outcome), at, 0.0);
            if done {
                return (op.polls, end.until(at));
            }
            at = op.next_poll_at.unwrap();
        }
    }

    #[test]
    fn progress_cuts_polls_of_a_long_job_without_losing_detection() {
        let mut text = String::from(
            r#"
[upstreams.jobs]
preset = "generic"
base_url = "http://127.0.0.1:1/"
status_path = "jobs/{operation}"
status_field = "/state"
succeeded = ["done"]
failed = ["error"]
progress_field = "/progress"
poll = { initial = "10s", max = "60s", jitter = 0.0, eta_max = "30m" }
"#,
        );
        let up = Config::parse(&text, "t.toml", &|_| None).unwrap().upstreams["jobs"].clone();
        let hour = Duration::from_secs(3600);
        let (blind_polls, blind_delay) = run_job(&up, hour, false);
        let (eta_polls, eta_delay) = run_job(&up, hour, true);
        // Blind: ~60 polls at the 60 s cap. With progress: the estimate skips most of them.
        assert!(blind_polls >= 55, "blind {blind_polls}");
        assert!(
            eta_polls * 3 < blind_polls,
            "eta {eta_polls} vs blind {blind_polls}"
        );
        assert!(
            eta_delay <= Duration::from_secs(10),
            "eta delay {eta_delay:?}"
        );
        assert!(blind_delay <= Duration::from_secs(60));
        // Switched off, progress changes nothing.
        text = text.replace("eta_max = \"30m\"", "eta_max = \"30m\", eta = false");
        let off = Config::parse(&text, "t.toml", &|_| None).unwrap().upstreams["jobs"].clone();
        assert_eq!(run_job(&off, hour, true).0, blind_polls);
    }
}
