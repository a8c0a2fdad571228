//! The operation record and the rules for changing it. Pure: no I/O, no clock reads — callers
//! pass `now`. The store applies these functions inside one atomic write.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::clock::Timestamp;
use crate::ids::{DeliveryKey, OperationId, WebhookId};

/// hookshim's status of an operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Pending,
    Running,
    Succeeded,
    Failed,
    Cancelled,
    Expired,
    TimedOut,
}

impl Status {
    pub const ALL: [Status; 7] = [
        Status::Pending,
        Status::Running,
        Status::Succeeded,
        Status::Failed,
        Status::Cancelled,
        Status::Expired,
        Status::TimedOut,
    ];

    pub fn is_terminal(self) -> bool {
        !matches!(self, Status::Pending | Status::Running)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Status::Pending => "pending",
            Status::Running => "running",
            Status::Succeeded => "succeeded",
            Status::Failed => "failed",
            Status::Cancelled => "cancelled",
            Status::Expired => "expired",
            Status::TimedOut => "timed_out",
        }
    }

    pub fn parse(s: &str) -> Option<Status> {
        Status::ALL.into_iter().find(|st| st.as_str() == s)
    }

    pub fn from_observed(s: ObservedState) -> Status {
        match s {
            ObservedState::Pending => Status::Pending,
            ObservedState::Running | ObservedState::RequiresAction => Status::Running,
            ObservedState::Succeeded => Status::Succeeded,
            ObservedState::Failed => Status::Failed,
            ObservedState::Cancelled => Status::Cancelled,
            ObservedState::Expired => Status::Expired,
        }
    }
}

/// How the terminal state was learned.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum DetectedVia {
    Poll,
    Webhook,
    Deadline,
}

impl DetectedVia {
    pub fn as_str(self) -> &'static str {
        match self {
            DetectedVia::Poll => "poll",
            DetectedVia::Webhook => "webhook",
            DetectedVia::Deadline => "deadline",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum DeliveryState {
    /// No callback: not terminal yet, or no callback URL (the app polls hookshim).
    None,
    /// In the outbox: being sent or waiting for a retry.
    Pending,
    Delivered,
    /// Every attempt failed, or the receiver answered 410; redeliver to try again.
    Failed,
    /// An event callback (not the terminal one) left unsent because the operation ended first:
    /// the terminal callback supersedes it.
    Superseded,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Delivery {
    pub state: DeliveryState,
    /// Attempts so far, manual redeliveries included.
    pub attempts: u32,
    pub last_attempt_at: Option<Timestamp>,
    pub last_status: Option<u16>,
    pub last_error: Option<String>,
    pub next_attempt_at: Option<Timestamp>,
    pub delivered_at: Option<Timestamp>,
    /// Manual redeliveries (`POST …/redeliver`, `POST /v1/redeliver`) so far.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub redeliveries: u32,
    /// `attempts` when the latest redelivery started: the retry schedule counts from there.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub attempts_before_redelivery: u32,
    /// The latest attempts, oldest first, at most [`MAX_ATTEMPT_HISTORY`].
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub history: Vec<AttemptLog>,
}

impl Default for Delivery {
    fn default() -> Self {
        Delivery {
            state: DeliveryState::None,
            attempts: 0,
            last_attempt_at: None,
            last_status: None,
            last_error: None,
            next_attempt_at: None,
            delivered_at: None,
            redeliveries: 0,
            attempts_before_redelivery: 0,
            history: Vec::new(),
        }
    }
}

/// `text` cut to at most `max` bytes at a character boundary, with `…` when cut.
fn cut(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_string();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}

/// Attempts one delivery record remembers (the oldest are dropped first).
pub const MAX_ATTEMPT_HISTORY: usize = 20;
/// Longest `error` an [`AttemptLog`] keeps, in bytes (cut at a character boundary).
pub const MAX_ATTEMPT_ERROR: usize = 300;

/// One callback attempt: when, what the receiver answered (or why nothing was), how long it took.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct AttemptLog {
    pub at: Timestamp,
    /// The receiver's HTTP status; absent when no answer came (timeout, network, refused).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// From sending the request to its answer (0 when nothing was sent).
    pub duration_ms: u64,
}

impl Delivery {
    /// Remember one attempt, keeping the latest [`MAX_ATTEMPT_HISTORY`].
    pub fn log_attempt(&mut self, mut entry: AttemptLog) {
        entry.error = entry.error.map(|e| cut(&e, MAX_ATTEMPT_ERROR));
        if self.history.len() >= MAX_ATTEMPT_HISTORY {
            let drop = self.history.len() + 1 - MAX_ATTEMPT_HISTORY;
            self.history.drain(..drop);
        }
        self.history.push(entry);
    }

    /// Start a manual redelivery: pending now, the retry schedule afresh, the count and the
    /// history kept.
    pub fn redeliver(&mut self, now: Timestamp) {
        self.state = DeliveryState::Pending;
        self.next_attempt_at = Some(now);
        self.delivered_at = None;
        self.redeliveries += 1;
        self.attempts_before_redelivery = self.attempts;
    }

    /// Attempts since the latest redelivery (or since the first attempt): what the retry
    /// schedule counts.
    pub fn attempts_this_round(&self) -> u32 {
        self.attempts
            .saturating_sub(self.attempts_before_redelivery)
    }
}

/// One tracked upstream operation. This is both the stored record and the API's view.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Operation {
    /// `op_<ULID>`: sorts by creation time.
    pub id: OperationId,
    pub upstream: String,
    /// The upstream's id of the operation, as the app registered it.
    pub operation: String,
    pub status: Status,
    pub upstream_status: Option<Value>,
    pub progress: Option<f64>,
    pub result: Option<Value>,
    pub error: Option<Value>,
    pub metadata: Option<Value>,
    pub callback_url: Option<String>,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
    pub completed_at: Option<Timestamp>,
    pub detected_via: Option<DetectedVia>,
    /// Status requests made to the upstream for this operation.
    pub polls: u32,
    pub next_poll_at: Option<Timestamp>,
    pub deadline_at: Timestamp,
    pub delivery: Delivery,
    /// 404s in a row from the upstream.
    pub not_found_streak: u32,
    /// Failed status reads in a row (network, 5xx, 429, unparseable); drives backoff.
    pub error_streak: u32,
    pub last_poll_error: Option<String>,
    /// When the upstream last pushed a webhook for this operation.
    pub webhook_at: Option<Timestamp>,
    /// Status reads still owed to the last webhook: while > 0 the operation polls on its base
    /// schedule (the status endpoint may lag the webhook) and a terminal result counts as
    /// detected via webhook.
    pub webhook_reads: u32,
    /// Terminal observations after the first one: counted, never re-emitted (invariant 2).
    pub late_observations: u32,
    /// Progress history the polling policy estimates completion from.
    #[serde(default)]
    pub pace: crate::pace::Pace,
    /// The `ETag` of the last status response, sent back as `If-None-Match`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub etag: Option<String>,
    /// When the upstream said it will expire the job by itself: a poll is due then.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstream_expires_at: Option<Timestamp>,
    /// Callbacks besides the terminal one this operation sends (`requires_action`), copied from
    /// its upstream's `callback_events` when it was registered.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub callback_events: Vec<String>,
    /// Whether the upstream last reported a pause (`requires_action`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub paused: bool,
    /// Pauses seen so far; numbers the pause events.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub pauses: u32,
    /// Event callbacks (one per pause), each with its own `webhook-id` and delivery record.
    /// They go through the same outbox as the terminal callback, independently of it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub events: Vec<EventCallback>,
    /// The latest upstream status body hookshim holds (from a poll, a proxied create or a
    /// proxied status read), JSON when it parsed and fit; cut to `store.max_upstream_body`
    /// (then a string, and `upstream_body_truncated`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstream_body: Option<Value>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub upstream_body_truncated: bool,
    /// The HTTP status, content type and time of the response `upstream_body` came from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstream_body_meta: Option<BodyMeta>,
    /// A keyed hash (HMAC) of the credential the app created the operation with through the
    /// proxy: a status read presenting the same credential is answered from `upstream_body`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proxy_credential: Option<String>,
    /// The status reads, as runs of reads with the same result (a batch read 300 times as
    /// `in_progress` is one entry), oldest first, at most [`MAX_POLL_RUNS`].
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub poll_log: Vec<PollRun>,
}

/// Runs of status reads one record remembers (the oldest are dropped first).
pub const MAX_POLL_RUNS: usize = 10;

/// What a status read found.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum PollResult {
    /// A readable status (its value in `upstream_status`).
    Status,
    /// `304 Not Modified`.
    NotModified,
    /// The upstream said the operation does not exist.
    NotFound,
    /// No usable answer (network, timeout, 429, 5xx, unreadable body): `error` says which.
    Error,
}

/// Consecutive status reads with the same result.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct PollRun {
    pub first_at: Timestamp,
    pub last_at: Timestamp,
    /// Reads in this run.
    pub polls: u32,
    pub result: PollResult,
    /// The upstream's raw status value (`status` results).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstream_status: Option<Value>,
    /// Why the read was not usable (`error` results), at most [`MAX_ATTEMPT_ERROR`] bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Where a kept upstream body came from.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct BodyMeta {
    pub status: u16,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_type: Option<String>,
    pub at: Timestamp,
}

/// An upstream status response body as read, before it is kept (see [`Operation::keep_body`]).
#[derive(Clone, Debug, PartialEq)]
pub struct UpstreamBody {
    pub status: u16,
    pub content_type: Option<String>,
    pub bytes: Vec<u8>,
}

impl UpstreamBody {
    pub fn new(status: u16, content_type: Option<String>, bytes: Vec<u8>) -> UpstreamBody {
        UpstreamBody {
            status,
            content_type,
            bytes,
        }
    }
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// A callback sent before the end (`operation.requires_action`). Its body is fixed when the
/// event happens, so every attempt sends the same bytes.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct EventCallback {
    /// `requires_action_<n>`: unique within the operation; with the operation id it makes the
    /// `webhook-id` and the outbox key.
    pub name: String,
    pub body: Value,
    pub delivery: Delivery,
}

/// An outcome decided by a webhook event itself (`webhook.events`), without a status read.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EventOutcome {
    pub status: Status,
    /// The event type, recorded as the operation's `upstream_status`.
    pub event: String,
    /// The event's `data`: the `result` of a success, the `error` of anything else.
    pub data: Option<Value>,
}

/// The callback event announcing a pause.
pub const REQUIRES_ACTION: &str = "requires_action";

/// Most event callbacks one record keeps. Past it a new pause makes room by dropping the oldest
/// one no longer pending (delivered, failed or superseded: it has no outbox entry); if all are
/// still pending, the pause is counted in `pauses` but gets no callback.
pub const MAX_EVENT_CALLBACKS: usize = 32;

/// Status reads granted to one webhook before the operation falls back to its safety poll.
pub const WEBHOOK_READS: u32 = 5;

/// Why an operation ended without a terminal upstream status.
pub fn shim_error(code: &str, message: &str) -> Value {
    serde_json::json!({"code": code, "message": message})
}

/// What a new operation starts from; everything else starts empty.
pub struct NewOperation {
    pub id: OperationId,
    pub upstream: String,
    pub operation: String,
    pub metadata: Option<Value>,
    pub callback_url: Option<String>,
    pub now: Timestamp,
    pub first_poll_at: Timestamp,
    pub deadline_at: Timestamp,
    pub callback_events: Vec<String>,
}

impl Operation {
    /// A freshly registered operation: `pending`, first poll planned, no history.
    pub fn new(n: NewOperation) -> Operation {
        Operation {
            id: n.id,
            upstream: n.upstream,
            operation: n.operation,
            status: Status::Pending,
            upstream_status: None,
            progress: None,
            result: None,
            error: None,
            metadata: n.metadata,
            callback_url: n.callback_url,
            created_at: n.now,
            updated_at: n.now,
            completed_at: None,
            detected_via: None,
            polls: 0,
            next_poll_at: Some(n.first_poll_at),
            deadline_at: n.deadline_at,
            delivery: Delivery::default(),
            not_found_streak: 0,
            error_streak: 0,
            last_poll_error: None,
            webhook_at: None,
            webhook_reads: 0,
            late_observations: 0,
            pace: Default::default(),
            etag: None,
            upstream_expires_at: None,
            callback_events: n.callback_events,
            paused: false,
            pauses: 0,
            events: Vec::new(),
            upstream_body: None,
            upstream_body_truncated: false,
            upstream_body_meta: None,
            proxy_credential: None,
            poll_log: Vec::new(),
        }
    }

    /// Remember one status read: it extends the latest run when its result is the same, else
    /// starts a new one (keeping the latest [`MAX_POLL_RUNS`]).
    pub fn log_poll(
        &mut self,
        at: Timestamp,
        result: PollResult,
        upstream_status: Option<&Value>,
        error: Option<&str>,
    ) {
        let error = error.map(|e| cut(e, MAX_ATTEMPT_ERROR));
        if let Some(last) = self.poll_log.last_mut() {
            if last.result == result
                && last.upstream_status.as_ref() == upstream_status
                && last.error == error
            {
                last.polls = last.polls.saturating_add(1);
                last.last_at = at;
                return;
            }
        }
        if self.poll_log.len() >= MAX_POLL_RUNS {
            let drop = self.poll_log.len() + 1 - MAX_POLL_RUNS;
            self.poll_log.drain(..drop);
        }
        self.poll_log.push(PollRun {
            first_at: at,
            last_at: at,
            polls: 1,
            result,
            upstream_status: upstream_status.cloned(),
            error,
        });
    }

    /// Keep `body` as the latest upstream status body: as JSON when it is JSON of at most `max`
    /// bytes, else the first `max` bytes as text, flagged truncated.
    pub fn keep_body(&mut self, body: &UpstreamBody, max: usize, now: Timestamp) {
        let parsed = (body.bytes.len() <= max)
            .then(|| serde_json::from_slice::<Value>(&body.bytes).ok())
            .flatten();
        match parsed {
            Some(v) => {
                self.upstream_body = Some(v);
                self.upstream_body_truncated = false;
            }
            None => {
                let mut end = body.bytes.len().min(max);
                let text = loop {
                    match std::str::from_utf8(&body.bytes[..end]) {
                        Ok(t) => break t.to_string(),
                        Err(e) if e.error_len().is_none() => end = e.valid_up_to(),
                        Err(_) => break String::from_utf8_lossy(&body.bytes[..end]).into_owned(),
                    }
                };
                self.upstream_body_truncated = body.bytes.len() > max;
                self.upstream_body = Some(Value::String(text));
            }
        }
        self.upstream_body_meta = Some(BodyMeta {
            status: body.status,
            content_type: body.content_type.clone(),
            at: now,
        });
    }

    /// The kept body as it can be served in place of a status read: whole JSON only, and
    /// once the operation has ended, only a body read at or after the end (an operation ended
    /// by a webhook event or the deadline still holds an older, non-terminal body).
    pub fn servable_body(&self) -> Option<(&Value, &BodyMeta)> {
        match (&self.upstream_body, &self.upstream_body_meta) {
            (Some(v), Some(m)) if !self.upstream_body_truncated && !v.is_string() => {
                let stale = self.completed_at.is_some_and(|end| m.at < end);
                (!stale).then_some((v, m))
            }
            _ => None,
        }
    }

    /// Whether a status body read by a request sent at `sent` may replace the kept one: not
    /// when the operation ended after it was sent (the body may predate the end).
    pub fn may_keep_body_sent_at(&self, sent: Timestamp) -> bool {
        self.completed_at.is_none_or(|end| sent >= end)
    }

    /// The `webhook-id` of this operation's terminal callback: derived from the operation only,
    /// so it is the same on every retry, restart and redelivery. No `.` (it is part of the
    /// signed content's separator syntax).
    pub fn callback_webhook_id(&self) -> WebhookId {
        DeliveryKey::terminal(self.id.clone()).webhook_id()
    }

    /// The `webhook-id` of event callback `name` (`op_…_requires_action_2`).
    pub fn event_webhook_id(&self, name: &str) -> WebhookId {
        DeliveryKey::event(self.id.clone(), name).webhook_id()
    }

    /// Move to a terminal status. Returns false (and counts the observation) if the operation
    /// is already terminal: the first terminal observation wins.
    pub fn finish(&mut self, status: Status, via: DetectedVia, now: Timestamp) -> bool {
        debug_assert!(status.is_terminal());
        if self.status.is_terminal() {
            self.late_observations += 1;
            return false;
        }
        self.status = status;
        self.detected_via = Some(via);
        self.completed_at = Some(now);
        self.updated_at = now;
        self.next_poll_at = None;
        self.paused = false;
        self.delivery = Delivery::default();
        if self.callback_url.is_some() {
            self.delivery.state = DeliveryState::Pending;
            self.delivery.next_attempt_at = Some(now);
        }
        for e in &mut self.events {
            if e.delivery.state == DeliveryState::Pending {
                e.delivery.state = DeliveryState::Superseded;
                e.delivery.next_attempt_at = None;
            }
        }
        true
    }

    /// End the operation as a webhook event says (`webhook.events`). Returns false (and counts
    /// the observation) if it had already ended.
    pub fn finish_from_event(&mut self, outcome: &EventOutcome, now: Timestamp) -> bool {
        if self.status.is_terminal() {
            self.late_observations += 1;
            return false;
        }
        self.upstream_status = Some(Value::from(outcome.event.clone()));
        if outcome.status == Status::Succeeded {
            self.result = outcome.data.clone();
            self.progress = Some(1.0);
        } else {
            self.error = Some(outcome.data.clone().unwrap_or_else(|| {
                shim_error(
                    &outcome.event,
                    &format!("the upstream sent {}", outcome.event),
                )
            }));
        }
        self.finish(outcome.status, DetectedVia::Webhook, now)
    }

    /// Apply one status reading. Returns true if it made the operation terminal.
    pub fn apply_observation(&mut self, obs: &Observation, now: Timestamp) -> bool {
        if self.status.is_terminal() {
            if obs.state.is_terminal() {
                self.late_observations += 1;
            }
            return false;
        }
        self.upstream_status = Some(obs.raw_status.clone());
        if obs.progress.is_some() {
            self.progress = obs.progress;
        }
        self.not_found_streak = 0;
        self.error_streak = 0;
        self.last_poll_error = None;
        self.updated_at = now;
        let pausing = obs.state == ObservedState::RequiresAction;
        if pausing && !self.paused {
            self.pauses += 1;
            self.announce_pause(obs, now);
        }
        self.paused = pausing;
        if obs.state.is_terminal() {
            self.result = obs.result.clone();
            self.error = obs.error.clone();
            let via = if self.webhook_reads > 0 {
                DetectedVia::Webhook
            } else {
                DetectedVia::Poll
            };
            self.finish(Status::from_observed(obs.state), via, now)
        } else {
            self.status = Status::from_observed(obs.state);
            self.webhook_reads = self.webhook_reads.saturating_sub(1);
            false
        }
    }

    /// Queue the `operation.requires_action` callback for the pause just counted, if this
    /// operation asked for it and has somewhere to send it.
    fn announce_pause(&mut self, obs: &Observation, now: Timestamp) {
        if self.callback_url.is_none() || !self.callback_events.iter().any(|e| e == REQUIRES_ACTION)
        {
            return;
        }
        let mut data = self.callback_data();
        data["status"] = serde_json::json!(Status::Running);
        data["upstream_status"] = obs.raw_status.clone();
        data["result"] = obs.result.clone().unwrap_or(Value::Null);
        data["error"] = Value::Null;
        data["pause"] = serde_json::json!(self.pauses);
        data["paused_at"] = serde_json::json!(now);
        if self.events.len() >= MAX_EVENT_CALLBACKS {
            match self
                .events
                .iter()
                .position(|e| e.delivery.state != DeliveryState::Pending)
            {
                Some(oldest) => {
                    self.events.remove(oldest);
                }
                None => {
                    tracing::warn!(
                        op = %self.id,
                        pause = self.pauses,
                        "{MAX_EVENT_CALLBACKS} requires_action callbacks are still pending; this \
                         pause is counted but gets no callback (is the receiver up?)"
                    );
                    return;
                }
            }
        }
        self.events.push(EventCallback {
            name: format!("{REQUIRES_ACTION}_{}", self.pauses),
            body: serde_json::json!({
                "type": format!("operation.{REQUIRES_ACTION}"),
                "timestamp": now,
                "data": data,
            }),
            delivery: Delivery {
                state: DeliveryState::Pending,
                next_attempt_at: Some(now),
                ..Delivery::default()
            },
        });
    }

    /// Whether the operation is in the outbox.
    pub fn in_outbox(&self) -> bool {
        self.delivery.state == DeliveryState::Pending
    }

    /// The callback body (Standard Webhooks' recommended shape).
    pub fn callback_body(&self) -> Value {
        let completed = self.completed_at.unwrap_or(self.updated_at);
        serde_json::json!({
            "type": format!("operation.{}", self.status.as_str()),
            "timestamp": completed,
            "data": self.callback_data(),
        })
    }

    /// The callback body, with the kept upstream body in `data.upstream_body` (and
    /// `data.upstream_body_truncated`) when `include_upstream_body`.
    pub fn callback_body_with(&self, include_upstream_body: bool) -> Value {
        let mut body = self.callback_body();
        if include_upstream_body {
            body["data"]["upstream_body"] = self.upstream_body.clone().unwrap_or(Value::Null);
            body["data"]["upstream_body_truncated"] = Value::Bool(self.upstream_body_truncated);
        }
        body
    }

    /// The `data` of a callback: the operation as the app sees it.
    fn callback_data(&self) -> Value {
        serde_json::json!({
                "id": self.id,
                "upstream": self.upstream,
                "operation": self.operation,
                "status": self.status,
                "upstream_status": self.upstream_status,
                "result": self.result,
                "error": self.error,
                "metadata": self.metadata,
                "created_at": self.created_at,
                "completed_at": self.completed_at,
                "detected_via": self.detected_via,
                "polls": self.polls,
        })
    }
}

#[cfg(test)]
pub(crate) fn sample(now: Timestamp) -> Operation {
    Operation::new(NewOperation {
        id: OperationId::from_text("op_01J00000000000000000000000"),
        upstream: "jobs".into(),
        operation: "abc".into(),
        metadata: None,
        callback_url: Some("http://127.0.0.1:9/cb".into()),
        now,
        first_poll_at: now,
        deadline_at: now.plus(std::time::Duration::from_secs(3600)),
        callback_events: Vec::new(),
    })
}

#[cfg(test)]
mod tests;

// ---------------------------------------------------------------------------------------------
// What an upstream reported (read by `upstream`'s presets, applied by the rules above).

/// The state an upstream reported, already mapped to hookshim's vocabulary.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ObservedState {
    Pending,
    Running,
    /// Paused until the user acts (a Gemini interaction's `requires_action`): not terminal; the
    /// operation stays `running` and may announce the pause with an extra callback.
    RequiresAction,
    Succeeded,
    Failed,
    Cancelled,
    Expired,
}

impl ObservedState {
    pub fn is_terminal(self) -> bool {
        !matches!(
            self,
            ObservedState::Pending | ObservedState::Running | ObservedState::RequiresAction
        )
    }
}

/// One reading of an upstream status response.
#[derive(Clone, Debug, PartialEq)]
pub struct Observation {
    pub state: ObservedState,
    /// The upstream's own status value, unmapped.
    pub raw_status: Value,
    /// Progress in 0..=1 when the upstream reports it.
    pub progress: Option<f64>,
    pub result: Option<Value>,
    pub error: Option<Value>,
    /// When the upstream will expire the job by itself, if it says (OpenAI, Anthropic batches):
    /// the policy makes sure to look at the operation then.
    pub expires_at: Option<Timestamp>,
}

impl Observation {
    pub(crate) fn new(state: ObservedState, raw_status: Value) -> Observation {
        Observation {
            state,
            raw_status,
            progress: None,
            result: None,
            error: None,
            expires_at: None,
        }
    }
}

/// Property tests of the transition rules: any sequence of observations, webhook events and
/// direct finishes, with any states, progress and times.
#[cfg(test)]
mod properties;
