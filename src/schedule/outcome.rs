//! The poll-outcome rules, pure: what one status answer means ([`classify`]), how it changes
//! the record and when the next poll is due ([`apply_outcome`]), where a new operation's first
//! poll lands ([`first_poll_at`]) and how the deadline ends one ([`time_out`]). `now` and the
//! jitter sample are passed in, so a whole day of polling runs in milliseconds in the tests and
//! the policy benchmark replays exactly what the service does. The poller feeds these from HTTP.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::Value;

use super::{PollConfig, Prior, backoff, first_wait, next_poll_at, plan};
use crate::clock::Timestamp;
use crate::operation::Observation;
use crate::operation::{
    DetectedVia, Operation, PollResult, Status, UpstreamBody, WEBHOOK_READS, shim_error,
};

/// What of an upstream's configuration the poll-outcome rules read.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PollRules {
    pub poll: PollConfig,
    /// 404s in a row that end an operation as `failed` (`upstream_not_found`).
    pub not_found_after: u32,
    /// With webhooks on: the reconciliation poll's interval (`webhook.safety_poll`).
    pub safety_poll: Option<Duration>,
}

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
    /// The raw body of a readable status, kept with the record (`upstream_body`), and the
    /// most it keeps (`store.max_upstream_body`).
    pub body: Option<(UpstreamBody, usize)>,
}

impl Reading {
    pub fn new(outcome: PollOutcome) -> Reading {
        Reading {
            outcome,
            hint: None,
            etag: None,
            body: None,
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

/// Classify an upstream answer. `read` maps a JSON status body (the upstream's preset).
pub fn classify(
    status: StatusCode,
    body: &[u8],
    read: impl FnOnce(&Value) -> Result<Observation, String>,
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
    match serde_json::from_slice::<Value>(body) {
        Err(e) => (
            PollOutcome::Transient(format!("status response is not JSON: {e}")),
            "invalid_body",
        ),
        Ok(v) => match read(&v) {
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
    up: &PollRules,
    reading: &Reading,
    now: Timestamp,
    sample: f64,
) -> bool {
    apply_outcome_with(o, up, None, reading, now, sample)
}

/// [`apply_outcome`] with the operation's learned job-length prior (see
/// [`crate::schedule::policy::plan`]): the service passes its upstream's prior, the tests and
/// the benchmark theirs. Hints, the upstream's expiry and the deadline still win over the plan.
pub fn apply_outcome_with(
    o: &mut Operation,
    up: &PollRules,
    prior: Option<&Prior>,
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
            o.log_poll(now, PollResult::Status, Some(&obs.raw_status), None)
        }
        PollOutcome::Unchanged => o.log_poll(now, PollResult::NotModified, None, None),
        PollOutcome::NotFound => o.log_poll(now, PollResult::NotFound, None, None),
        PollOutcome::Transient(e) => o.log_poll(now, PollResult::Error, None, Some(e)),
    }
    match outcome {
        PollOutcome::Observed(obs) => {
            o.etag = reading.etag.clone();
            if let Some((body, max)) = &reading.body {
                o.keep_body(body, *max, now);
            }
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
    let mut wait = match up.safety_poll {
        // Webhooks on and none pending: only the reconciliation poll.
        Some(safety_poll) if o.webhook_reads == 0 => safety_poll,
        // Right after a webhook the status endpoint may lag it: re-read on the fast schedule.
        Some(_) => backoff(
            &up.poll,
            WEBHOOK_READS.saturating_sub(o.webhook_reads),
            sample,
        ),
        None => {
            plan(
                &up.poll,
                &o.pace,
                o.polls.saturating_sub(1),
                now,
                o.created_at,
                prior,
                sample,
            )
            .0
        }
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
    up: &PollRules,
    now: Timestamp,
    deadline: Timestamp,
    sample: f64,
) -> Timestamp {
    first_poll_with(up, None, now, deadline, sample)
}

/// [`first_poll_at`] with the upstream's learned prior: a warm one puts the first poll where
/// this kind of job starts finishing.
pub fn first_poll_with(
    up: &PollRules,
    prior: Option<&Prior>,
    now: Timestamp,
    deadline: Timestamp,
    sample: f64,
) -> Timestamp {
    if !up.poll.enabled {
        // Nothing to read: the next look is the deadline.
        return deadline.max(now);
    }
    let interval = match up.safety_poll {
        Some(safety_poll) => safety_poll,
        None => first_wait(&up.poll, prior, sample),
    };
    next_poll_at(now, interval, None, deadline)
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::{Clock, ManualClock};
    use crate::operation::ObservedState;
    use crate::operation::sample;
    use serde_json::json;

    /// A generic upstream: `poll = { initial = "1s", multiplier = 2.0, max = "30s",
    /// jitter = 0.0, deadline = "24h" }`, `not_found_after = 3`, and with webhooks on a
    /// `safety_poll` of 10 minutes.
    fn upstream(webhook: bool) -> PollRules {
        PollRules {
            poll: PollConfig {
                initial: Duration::from_secs(1),
                multiplier: 2.0,
                max: Duration::from_secs(30),
                jitter: 0.0,
                deadline: Duration::from_secs(24 * 3600),
                ..PollConfig::general()
            },
            not_found_after: 3,
            safety_poll: webhook.then_some(Duration::from_secs(600)),
        }
    }

    /// What a `status_field = "/state"`, `succeeded = ["done"]`, `failed = ["error"]` mapping
    /// does with a body, enough for the HTTP-level rules (the mappings are tested in `upstream`).
    fn read_state(v: &Value) -> Result<Observation, String> {
        let state = match v.get("state").and_then(Value::as_str) {
            Some("done") => ObservedState::Succeeded,
            Some("error") => ObservedState::Failed,
            Some(_) => ObservedState::Running,
            None => return Err("status response has no /state".into()),
        };
        Ok(Observation {
            state,
            raw_status: v["state"].clone(),
            progress: None,
            result: None,
            error: None,
            expires_at: None,
        })
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
    fn simulate_day(up: &PollRules, outcome: &PollOutcome) -> (Operation, u32) {
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
        for (code, body) in [
            (500u16, "{}"),
            (429, ""),
            (401, "{}"),
            (200, "not json"),
            (200, "{\"x\":1}"),
        ] {
            let (o, _) = classify(
                StatusCode::from_u16(code).unwrap(),
                body.as_bytes(),
                read_state,
            );
            assert!(
                matches!(o, PollOutcome::Transient(_)),
                "{code} {body} → {o:?}"
            );
        }
        assert!(matches!(
            classify(StatusCode::NOT_FOUND, b"", read_state).0,
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
        let (o, label) = classify(StatusCode::NOT_MODIFIED, b"", read_state);
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
    fn run_job(up: &PollRules, duration: Duration, with_progress: bool) -> (u32, Duration) {
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
        // A generic upstream with `poll = { initial = "10s", max = "60s", jitter = 0.0,
        // eta_max = "30m" }` and a progress field.
        let up = PollRules {
            poll: PollConfig {
                initial: Duration::from_secs(10),
                max: Duration::from_secs(60),
                jitter: 0.0,
                eta_max: Duration::from_secs(30 * 60),
                ..PollConfig::general()
            },
            not_found_after: 3,
            safety_poll: None,
        };
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
        let mut off = up;
        off.poll.eta = false;
        assert_eq!(run_job(&off, hour, true).0, blind_polls);
    }
}
