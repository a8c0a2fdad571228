//! The operation record and the rules for changing it. Pure: no I/O, no clock reads — callers
//! pass `now`. The store applies these functions inside one atomic write.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::clock::Timestamp;
use crate::ids::{DeliveryKey, OperationId, WebhookId};

/// hookshim's status of an operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
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
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
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

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
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

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Delivery {
    pub state: DeliveryState,
    pub attempts: u32,
    pub last_attempt_at: Option<Timestamp>,
    pub last_status: Option<u16>,
    pub last_error: Option<String>,
    pub next_attempt_at: Option<Timestamp>,
    pub delivered_at: Option<Timestamp>,
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
        }
    }
}

/// One tracked upstream operation. This is both the stored record and the API's view.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
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
}

/// Where a kept upstream body came from.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
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
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
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
        }
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
mod tests {
    use super::*;

    #[test]
    fn the_kept_body_is_json_when_it_fits_else_cut_and_flagged() {
        let now = Timestamp(5_000);
        let mut op = sample(now);
        let json_body = UpstreamBody::new(
            200,
            Some("application/json".into()),
            br#"{"status":"running"}"#.to_vec(),
        );
        op.keep_body(&json_body, 1024, now);
        assert_eq!(
            op.upstream_body,
            Some(serde_json::json!({"status": "running"}))
        );
        assert!(!op.upstream_body_truncated);
        let (_, meta) = op.servable_body().unwrap();
        assert_eq!((meta.status, meta.at), (200, now));

        // Cut at a character boundary, never served.
        let long = UpstreamBody::new(200, None, "{\"x\":\"ééééé\"}".as_bytes().to_vec());
        op.keep_body(&long, 9, now);
        assert!(op.upstream_body_truncated);
        assert_eq!(op.upstream_body, Some(Value::String("{\"x\":\"é".into())));
        assert!(op.servable_body().is_none());

        // Not JSON: kept as text, not served.
        op.keep_body(&UpstreamBody::new(200, None, b"<html>".to_vec()), 1024, now);
        assert!(!op.upstream_body_truncated);
        assert!(op.servable_body().is_none());

        // After the end only a body read then is served.
        let mut ended = sample(now);
        ended.keep_body(&json_body, 1024, now);
        ended.finish(Status::Succeeded, DetectedVia::Webhook, Timestamp(6_000));
        assert!(ended.servable_body().is_none(), "the body predates the end");
        assert!(!ended.may_keep_body_sent_at(Timestamp(5_500)));
        assert!(ended.may_keep_body_sent_at(Timestamp(6_000)));
        ended.keep_body(&json_body, 1024, Timestamp(6_100));
        assert!(ended.servable_body().is_some());

        let cb = op.callback_body_with(true);
        assert_eq!(cb["data"]["upstream_body"], "<html>");
        assert!(
            op.callback_body_with(false)["data"]
                .get("upstream_body")
                .is_none()
        );
    }
    use serde_json::json;

    fn obs(state: ObservedState) -> Observation {
        Observation {
            state,
            raw_status: json!("x"),
            progress: None,
            result: Some(json!(1)),
            error: None,
            expires_at: None,
        }
    }

    #[test]
    fn first_terminal_observation_wins_and_later_ones_are_counted() {
        let t = Timestamp(1_000);
        let mut op = sample(t);
        assert!(op.apply_observation(&obs(ObservedState::Succeeded), Timestamp(2_000)));
        assert_eq!(op.status, Status::Succeeded);
        assert_eq!(op.delivery.state, DeliveryState::Pending);
        assert!(!op.apply_observation(&obs(ObservedState::Failed), Timestamp(3_000)));
        assert!(!op.finish(Status::TimedOut, DetectedVia::Deadline, Timestamp(4_000)));
        assert_eq!(op.status, Status::Succeeded);
        assert_eq!(op.completed_at, Some(Timestamp(2_000)));
        assert_eq!(op.late_observations, 2);
    }

    #[test]
    fn webhook_reads_mark_detection_via_webhook() {
        let mut op = sample(Timestamp(0));
        op.webhook_reads = WEBHOOK_READS;
        assert!(!op.apply_observation(&obs(ObservedState::Running), Timestamp(1)));
        assert_eq!(op.webhook_reads, WEBHOOK_READS - 1);
        assert!(op.apply_observation(&obs(ObservedState::Succeeded), Timestamp(2)));
        assert_eq!(op.detected_via, Some(DetectedVia::Webhook));
    }

    #[test]
    fn no_callback_url_means_no_outbox_entry() {
        let mut op = sample(Timestamp(0));
        op.callback_url = None;
        op.finish(Status::Failed, DetectedVia::Poll, Timestamp(1));
        assert!(!op.in_outbox());
        assert_eq!(op.delivery.state, DeliveryState::None);
    }

    fn pause() -> Observation {
        Observation {
            state: ObservedState::RequiresAction,
            raw_status: json!("requires_action"),
            progress: None,
            result: Some(json!([{"type": "function_call", "name": "lookup"}])),
            error: None,
            expires_at: None,
        }
    }

    #[test]
    fn each_pause_queues_one_event_callback_with_its_own_id() {
        let mut op = sample(Timestamp(0));
        op.callback_events = vec![REQUIRES_ACTION.into()];
        assert!(!op.apply_observation(&pause(), Timestamp(1)));
        assert!(!op.apply_observation(&pause(), Timestamp(2)));
        assert_eq!(op.status, Status::Running);
        assert_eq!(op.events.len(), 1, "one event per pause, not per poll");
        op.apply_observation(&obs(ObservedState::Running), Timestamp(3));
        assert!(!op.paused);
        op.apply_observation(&pause(), Timestamp(4));
        assert_eq!(op.pauses, 2);
        let names: Vec<_> = op.events.iter().map(|e| e.name.as_str()).collect();
        assert_eq!(names, ["requires_action_1", "requires_action_2"]);
        let e = &op.events[1];
        assert_eq!(e.delivery.state, DeliveryState::Pending);
        assert_eq!(e.delivery.next_attempt_at, Some(Timestamp(4)));
        assert_eq!(e.body["type"], "operation.requires_action");
        assert_eq!(e.body["data"]["status"], "running");
        assert_eq!(e.body["data"]["upstream_status"], "requires_action");
        assert_eq!(e.body["data"]["pause"], 2);
        assert_eq!(e.body["data"]["result"][0]["name"], "lookup");
        assert_eq!(
            op.event_webhook_id(&e.name).to_string(),
            format!("{}_requires_action_2", op.id)
        );
        assert!(!op.in_outbox(), "the terminal callback is not touched");
    }

    /// `n` pauses, each followed by a running reading.
    fn pause_times(op: &mut Operation, from: u64, n: u64) {
        for t in from..from + n {
            op.apply_observation(&pause(), Timestamp(2 * t));
            op.apply_observation(&obs(ObservedState::Running), Timestamp(2 * t + 1));
        }
    }

    #[test]
    fn event_callbacks_are_bounded_dropping_the_oldest_settled_first() {
        let mut op = sample(Timestamp(0));
        op.callback_events = vec![REQUIRES_ACTION.into()];
        pause_times(&mut op, 1, MAX_EVENT_CALLBACKS as u64);
        assert_eq!(op.events.len(), MAX_EVENT_CALLBACKS);
        // All pending: the next pause is counted but gets no callback.
        pause_times(&mut op, 100, 1);
        assert_eq!(op.pauses, MAX_EVENT_CALLBACKS as u32 + 1);
        assert_eq!(op.events.len(), MAX_EVENT_CALLBACKS);
        assert_eq!(op.events[0].name, "requires_action_1");
        assert!(op.events.iter().all(|e| e.name != "requires_action_33"));
        // Two settle (the 3rd and the 5th): the next two pauses take their places, oldest first.
        op.events[4].delivery.state = DeliveryState::Failed;
        op.events[2].delivery.state = DeliveryState::Delivered;
        pause_times(&mut op, 200, 1);
        assert_eq!(op.events.len(), MAX_EVENT_CALLBACKS);
        assert!(op.events.iter().all(|e| e.name != "requires_action_3"));
        assert!(op.events.iter().any(|e| e.name == "requires_action_5"));
        assert_eq!(op.events.last().unwrap().name, "requires_action_34");
        pause_times(&mut op, 300, 2);
        assert!(op.events.iter().all(|e| e.name != "requires_action_5"));
        assert_eq!(op.events.last().unwrap().name, "requires_action_35");
        assert_eq!(op.pauses, 36);
        assert!(
            op.events
                .iter()
                .all(|e| e.delivery.state == DeliveryState::Pending)
        );
        assert_eq!(op.events.len(), MAX_EVENT_CALLBACKS);
    }

    #[test]
    fn pauses_are_counted_but_not_announced_unless_asked_for() {
        let mut op = sample(Timestamp(0));
        op.apply_observation(&pause(), Timestamp(1));
        assert_eq!(op.pauses, 1);
        assert!(op.events.is_empty());
        let mut local = sample(Timestamp(0));
        local.callback_events = vec![REQUIRES_ACTION.into()];
        local.callback_url = None;
        local.apply_observation(&pause(), Timestamp(1));
        assert!(local.events.is_empty(), "nowhere to send it");
    }

    #[test]
    fn the_end_supersedes_undelivered_event_callbacks() {
        let mut op = sample(Timestamp(0));
        op.callback_events = vec![REQUIRES_ACTION.into()];
        op.apply_observation(&pause(), Timestamp(1));
        op.apply_observation(&obs(ObservedState::Running), Timestamp(2));
        op.apply_observation(&pause(), Timestamp(3));
        op.events[0].delivery.state = DeliveryState::Delivered;
        assert!(op.apply_observation(&obs(ObservedState::Succeeded), Timestamp(4)));
        assert_eq!(op.events[0].delivery.state, DeliveryState::Delivered);
        assert_eq!(op.events[1].delivery.state, DeliveryState::Superseded);
        assert_eq!(op.events[1].delivery.next_attempt_at, None);
        assert!(op.in_outbox());
        assert!(!op.paused);
    }

    #[test]
    fn an_event_outcome_ends_the_operation_via_webhook() {
        let mut op = sample(Timestamp(0));
        let ok = EventOutcome {
            status: Status::Succeeded,
            event: "video.generated".into(),
            data: Some(json!({"id": "abc", "video_uri": "gs://v.mp4"})),
        };
        assert!(op.finish_from_event(&ok, Timestamp(5)));
        assert_eq!(op.status, Status::Succeeded);
        assert_eq!(op.detected_via, Some(DetectedVia::Webhook));
        assert_eq!(op.upstream_status, Some(json!("video.generated")));
        assert_eq!(op.result.as_ref().unwrap()["video_uri"], "gs://v.mp4");
        assert!(!op.finish_from_event(&ok, Timestamp(6)));
        assert_eq!(op.late_observations, 1);

        let mut op = sample(Timestamp(0));
        let failed = EventOutcome {
            status: Status::Failed,
            event: "batch.failed".into(),
            data: None,
        };
        op.finish_from_event(&failed, Timestamp(5));
        assert_eq!(op.error.as_ref().unwrap()["code"], "batch.failed");
        assert_eq!(op.result, None);
    }

    #[test]
    fn records_without_the_new_fields_still_load() {
        let mut v = serde_json::to_value(sample(Timestamp(0))).unwrap();
        for k in ["callback_events", "paused", "pauses", "events"] {
            assert!(v.get(k).is_none(), "{k} is left out when empty");
            v.as_object_mut().unwrap().remove(k);
        }
        let back: Operation = serde_json::from_value(v).unwrap();
        assert_eq!(back, sample(Timestamp(0)));
    }

    #[test]
    fn webhook_id_is_stable_and_has_no_dot() {
        let op = sample(Timestamp(0));
        assert_eq!(op.callback_webhook_id(), op.clone().callback_webhook_id());
        assert!(!op.callback_webhook_id().as_str().contains('.'));
    }
}

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
mod properties {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    const OBSERVED: [ObservedState; 7] = [
        ObservedState::Pending,
        ObservedState::Running,
        ObservedState::RequiresAction,
        ObservedState::Succeeded,
        ObservedState::Failed,
        ObservedState::Cancelled,
        ObservedState::Expired,
    ];
    const TERMINAL: [Status; 5] = [
        Status::Succeeded,
        Status::Failed,
        Status::Cancelled,
        Status::Expired,
        Status::TimedOut,
    ];
    const VIA: [DetectedVia; 3] = [
        DetectedVia::Poll,
        DetectedVia::Webhook,
        DetectedVia::Deadline,
    ];

    #[derive(Clone, Debug)]
    enum Step {
        Observe(ObservedState, Option<f64>, u64),
        Event(Status, bool, u64),
        Finish(Status, DetectedVia, u64),
    }

    impl Step {
        fn terminal(&self) -> bool {
            match self {
                Step::Observe(s, ..) => s.is_terminal(),
                Step::Event(..) | Step::Finish(..) => true,
            }
        }
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            4 => (
                proptest::sample::select(OBSERVED.to_vec()),
                proptest::option::of(0.0..=1.0f64),
                any::<u64>(),
            )
                .prop_map(|(s, p, t)| Step::Observe(s, p, t)),
            1 => (proptest::sample::select(TERMINAL.to_vec()), any::<bool>(), any::<u64>())
                .prop_map(|(s, d, t)| Step::Event(s, d, t)),
            1 => (
                proptest::sample::select(TERMINAL.to_vec()),
                proptest::sample::select(VIA.to_vec()),
                any::<u64>(),
            )
                .prop_map(|(s, v, t)| Step::Finish(s, v, t)),
        ]
    }

    fn apply(op: &mut Operation, step: &Step) -> bool {
        match step {
            Step::Observe(state, progress, t) => {
                let obs = Observation {
                    state: *state,
                    raw_status: json!(format!("{state:?}")),
                    progress: *progress,
                    result: Some(json!({"t": t})),
                    error: None,
                    expires_at: None,
                };
                op.apply_observation(&obs, Timestamp(*t))
            }
            Step::Event(status, with_data, t) => {
                let outcome = EventOutcome {
                    status: *status,
                    event: format!("job.{}", status.as_str()),
                    data: with_data.then(|| json!({"t": t})),
                };
                op.finish_from_event(&outcome, Timestamp(*t))
            }
            Step::Finish(status, via, t) => op.finish(*status, *via, Timestamp(*t)),
        }
    }

    /// What an operation's end consists of: status, `completed_at`, how it was detected,
    /// result, error and the callback's delivery record.
    type End = (
        Status,
        Option<Timestamp>,
        Option<DetectedVia>,
        Option<Value>,
        Option<Value>,
        Delivery,
    );

    fn end(op: &Operation) -> End {
        (
            op.status,
            op.completed_at,
            op.detected_via,
            op.result.clone(),
            op.error.clone(),
            op.delivery.clone(),
        )
    }

    proptest! {
        #[test]
        fn the_first_terminal_state_wins(
            start in any::<u64>(),
            steps in proptest::collection::vec(step(), 0..24),
            callback in any::<bool>(),
        ) {
            let mut op = sample(Timestamp(start));
            if !callback {
                op.callback_url = None;
            }
            let webhook_id = op.callback_webhook_id();
            prop_assert_eq!(&webhook_id, &DeliveryKey::terminal(op.id.clone()).webhook_id());
            let mut first: Option<End> = None;
            let mut late = 0u32;
            for s in &steps {
                let ended = apply(&mut op, s);
                match &first {
                    None => {
                        prop_assert_eq!(ended, s.terminal(), "step {:?}", s);
                        prop_assert_eq!(op.late_observations, 0);
                        if ended {
                            prop_assert!(op.status.is_terminal());
                            let t = match s {
                                Step::Observe(.., t) | Step::Event(.., t) | Step::Finish(.., t) => *t,
                            };
                            prop_assert_eq!(op.completed_at, Some(Timestamp(t)));
                            prop_assert_eq!(op.next_poll_at, None);
                            prop_assert_eq!(op.in_outbox(), callback);
                            first = Some(end(&op));
                        } else {
                            prop_assert!(!op.status.is_terminal());
                            prop_assert_eq!(op.completed_at, None);
                        }
                    }
                    Some(f) => {
                        prop_assert!(!ended, "a later step {:?} ended the operation again", s);
                        if s.terminal() {
                            late += 1;
                        }
                        prop_assert_eq!(op.late_observations, late);
                        prop_assert_eq!(&end(&op), f, "the terminal state changed at {:?}", s);
                    }
                }
                prop_assert_eq!(&op.callback_webhook_id(), &webhook_id);
            }
        }
    }
}
