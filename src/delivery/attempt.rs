//! The rules of one callback attempt, pure: what a receiver's answer means ([`classify`]) and
//! how it changes the callback's delivery record — delivered, retried on the schedule (a
//! receiver's `Retry-After` honoured), or failed for good after 410 or the last attempt
//! ([`record_attempt_on`]). The sender in [`super`] does the HTTP and feeds these.

use std::time::Duration;

use reqwest::StatusCode;

use crate::clock::Timestamp;
use crate::operation::{AttemptLog, Delivery, DeliveryState, Operation};
use crate::schedule::callback_retry_delay;

/// The answer to one attempt.
#[derive(Debug, Clone, PartialEq)]
pub enum AttemptResult {
    Delivered(u16),
    /// 410 Gone: the receiver does not want it; stop.
    Gone,
    /// Not sent: the callback URL or the address its host resolved to is refused by the
    /// `callbacks` rules (host, port, address; see [`crate::address`]). Not retried.
    Refused(String),
    /// Anything else: retry. `label` is the metrics label.
    Retry {
        status: Option<u16>,
        error: String,
        hint: Option<Duration>,
        label: &'static str,
    },
}

/// Classify a receiver's HTTP status.
pub fn classify(status: StatusCode, hint: Option<Duration>) -> AttemptResult {
    if status.is_success() {
        AttemptResult::Delivered(status.as_u16())
    } else if status == StatusCode::GONE {
        AttemptResult::Gone
    } else if status.is_redirection() {
        AttemptResult::Retry {
            status: Some(status.as_u16()),
            error: format!("receiver answered {status}; redirects are not followed"),
            hint: None,
            label: "redirect",
        }
    } else {
        let label = if status == StatusCode::TOO_MANY_REQUESTS {
            "rate_limited"
        } else {
            "http_error"
        };
        AttemptResult::Retry {
            status: Some(status.as_u16()),
            error: format!("receiver answered {status}"),
            hint,
            label,
        }
    }
}

/// Record an attempt at the terminal callback on the record. Returns whether to write.
pub fn record_attempt(
    o: &mut Operation,
    result: &AttemptResult,
    schedule: &[Duration],
    now: Timestamp,
    sample: f64,
) -> bool {
    record_attempt_on(
        &mut o.delivery,
        result,
        schedule,
        now,
        sample,
        Duration::ZERO,
    )
}

/// Record an attempt on one callback's delivery record (`took`: from sending to the answer),
/// in its counters and its bounded history. Returns whether to write.
pub fn record_attempt_on(
    d: &mut Delivery,
    result: &AttemptResult,
    schedule: &[Duration],
    now: Timestamp,
    sample: f64,
    took: Duration,
) -> bool {
    if d.state != DeliveryState::Pending {
        return false;
    }
    d.attempts += 1;
    d.last_attempt_at = Some(now);
    record_outcome(d, result, schedule, now, sample);
    d.log_attempt(AttemptLog {
        at: now,
        status: d.last_status,
        error: match d.state {
            DeliveryState::Delivered => None,
            _ => d.last_error.clone(),
        },
        duration_ms: took.as_millis().min(u64::MAX as u128) as u64,
    });
    true
}

fn record_outcome(
    d: &mut Delivery,
    result: &AttemptResult,
    schedule: &[Duration],
    now: Timestamp,
    sample: f64,
) {
    match result {
        AttemptResult::Delivered(code) => {
            d.state = DeliveryState::Delivered;
            d.last_status = Some(*code);
            d.last_error = None;
            d.next_attempt_at = None;
            d.delivered_at = Some(now);
        }
        AttemptResult::Gone => {
            d.state = DeliveryState::Failed;
            d.last_status = Some(410);
            d.last_error = Some("receiver answered 410 Gone; not retrying".into());
            d.next_attempt_at = None;
        }
        AttemptResult::Refused(why) => {
            d.state = DeliveryState::Failed;
            d.last_status = None;
            d.last_error = Some(why.clone());
            d.next_attempt_at = None;
        }
        AttemptResult::Retry {
            status,
            error,
            hint,
            ..
        } => {
            d.last_status = *status;
            match callback_retry_delay(schedule, d.attempts_this_round(), *hint, sample) {
                Some(wait) => {
                    d.last_error = Some(error.clone());
                    d.next_attempt_at = Some(now.plus(wait));
                }
                None => {
                    d.state = DeliveryState::Failed;
                    d.last_error = Some(format!(
                        "{error}; gave up after {} attempts",
                        d.attempts_this_round()
                    ));
                    d.next_attempt_at = None;
                }
            }
        }
    }
}

/// The delivery record of the callback `event` names (the terminal one for `None`).
pub fn delivery_of<'a>(o: &'a mut Operation, event: Option<&str>) -> Option<&'a mut Delivery> {
    match event {
        None => Some(&mut o.delivery),
        Some(name) => o
            .events
            .iter_mut()
            .find(|e| e.name == name)
            .map(|e| &mut e.delivery),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::operation::{DetectedVia, Status, sample};

    fn pending_op() -> Operation {
        let mut op = sample(Timestamp(0));
        op.finish(Status::Succeeded, DetectedVia::Poll, Timestamp(10));
        op
    }

    #[test]
    fn success_gone_and_redirect_are_told_apart() {
        assert_eq!(
            classify(StatusCode::NO_CONTENT, None),
            AttemptResult::Delivered(204)
        );
        assert_eq!(classify(StatusCode::GONE, None), AttemptResult::Gone);
        assert!(matches!(
            classify(StatusCode::FOUND, None),
            AttemptResult::Retry {
                label: "redirect",
                ..
            }
        ));
        assert!(matches!(
            classify(StatusCode::INTERNAL_SERVER_ERROR, None),
            AttemptResult::Retry {
                label: "http_error",
                ..
            }
        ));
    }

    #[test]
    fn retries_follow_schedule_then_fail() {
        let sched = [Duration::from_secs(5), Duration::from_secs(60)];
        let mut op = pending_op();
        let err = AttemptResult::Retry {
            status: Some(500),
            error: "x".into(),
            hint: None,
            label: "http_error",
        };
        assert!(record_attempt(&mut op, &err, &sched, Timestamp(1000), 0.0));
        assert_eq!(op.delivery.next_attempt_at, Some(Timestamp(6000)));
        record_attempt(&mut op, &err, &sched, Timestamp(6000), 0.0);
        assert_eq!(op.delivery.state, DeliveryState::Pending);
        record_attempt(&mut op, &err, &sched, Timestamp(66000), 0.0);
        assert_eq!(op.delivery.state, DeliveryState::Failed);
        assert_eq!(op.delivery.attempts, 3);
        assert!(!op.in_outbox());
    }

    #[test]
    fn history_keeps_the_latest_attempts_and_redelivery_restarts_the_schedule() {
        let sched = [Duration::from_secs(5)];
        let err = AttemptResult::Retry {
            status: None,
            error: "é".repeat(400),
            hint: None,
            label: "network_error",
        };
        let mut d = pending_op().delivery;
        for round in 0..15u64 {
            let t = Timestamp(round * 100_000);
            assert!(record_attempt_on(
                &mut d,
                &err,
                &sched,
                t,
                0.0,
                Duration::from_millis(7)
            ));
            assert_eq!(d.state, DeliveryState::Pending, "round {round}");
            assert!(record_attempt_on(
                &mut d,
                &err,
                &sched,
                t.plus(Duration::from_secs(5)),
                0.0,
                Duration::ZERO
            ));
            assert_eq!(d.state, DeliveryState::Failed, "two attempts per round");
            d.redeliver(t.plus(Duration::from_secs(6)));
        }
        assert_eq!(d.attempts, 30);
        assert_eq!(d.redeliveries, 15);
        assert_eq!(d.history.len(), crate::operation::MAX_ATTEMPT_HISTORY);
        assert_eq!(
            d.history[0].at,
            Timestamp(5 * 100_000),
            "the oldest ten were dropped"
        );
        assert_eq!(d.history[0].duration_ms, 7);
        let e = d.history[0].error.as_deref().unwrap();
        assert!(
            e.len() <= crate::operation::MAX_ATTEMPT_ERROR + '…'.len_utf8(),
            "{}",
            e.len()
        );
        assert!(e.ends_with('…'));
    }

    #[test]
    fn gone_stops_at_once() {
        let mut op = pending_op();
        record_attempt(
            &mut op,
            &AttemptResult::Gone,
            &[Duration::from_secs(5)],
            Timestamp(1),
            0.0,
        );
        assert_eq!(op.delivery.state, DeliveryState::Failed);
        assert_eq!(op.delivery.attempts, 1);
    }
}
