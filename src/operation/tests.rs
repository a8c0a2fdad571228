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

#[test]
fn the_poll_log_keeps_runs_of_equal_reads_and_the_latest_ten() {
    let mut op = sample(Timestamp(0));
    let running = json!("running");
    for t in 1..=300 {
        op.log_poll(Timestamp(t), PollResult::Status, Some(&running), None);
    }
    op.log_poll(
        Timestamp(301),
        PollResult::Error,
        None,
        Some("receiver answered 503"),
    );
    op.log_poll(
        Timestamp(302),
        PollResult::Error,
        None,
        Some("receiver answered 503"),
    );
    op.log_poll(
        Timestamp(303),
        PollResult::Status,
        Some(&json!("done")),
        None,
    );
    let runs: Vec<(u64, u64, u32, PollResult)> = op
        .poll_log
        .iter()
        .map(|r| (r.first_at.0, r.last_at.0, r.polls, r.result))
        .collect();
    assert_eq!(
        runs,
        [
            (1, 300, 300, PollResult::Status),
            (301, 302, 2, PollResult::Error),
            (303, 303, 1, PollResult::Status)
        ]
    );
    // Alternating results make a run each; the oldest go first.
    for t in 0..20u64 {
        let e = format!("error {t} {}", "x".repeat(400));
        op.log_poll(Timestamp(1000 + t), PollResult::Error, None, Some(&e));
    }
    assert_eq!(op.poll_log.len(), MAX_POLL_RUNS);
    assert_eq!(op.poll_log[0].first_at, Timestamp(1010));
    assert!(op.poll_log[0].error.as_ref().unwrap().len() <= MAX_ATTEMPT_ERROR + '…'.len_utf8());
    // Kept in the stored record, left out while empty.
    let back: Operation = serde_json::from_value(serde_json::to_value(&op).unwrap()).unwrap();
    assert_eq!(back.poll_log, op.poll_log);
    assert!(
        serde_json::to_value(sample(Timestamp(0)))
            .unwrap()
            .get("poll_log")
            .is_none()
    );
}
