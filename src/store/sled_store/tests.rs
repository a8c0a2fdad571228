use super::*;
use crate::operation::{DetectedVia, Status, sample};
use crate::store::WebhookRecord;

#[test]
fn active_values_carry_the_status_and_old_ones_still_read() {
    let mut v = ts_bytes(Timestamp(5)).to_vec();
    v.extend_from_slice(b"jobs");
    assert_eq!(active_parts(&v), ("jobs".to_string(), None));
    v.extend_from_slice(b"\0running");
    assert_eq!(
        active_parts(&v),
        ("jobs".to_string(), Some(Status::Running))
    );
    assert_eq!(ts_from(&v), Timestamp(5));
}

fn store() -> (tempfile::TempDir, SledStore) {
    let dir = tempfile::tempdir().unwrap();
    let s = SledStore::open(dir.path(), 8 << 20).unwrap();
    (dir, s)
}

#[cfg(unix)]
#[test]
fn a_new_data_directory_is_private_whatever_the_umask() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let s = SledStore::open(&data, 8 << 20).unwrap();
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&data), 0o700);
    assert_eq!(mode(&data.join("db")), 0o600);
    assert_eq!(mode(&data.join("conf")), 0o600);
    drop(s);
    // An existing directory left open to others is tightened at the next open.
    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(data.join("db"), std::fs::Permissions::from_mode(0o644)).unwrap();
    let _s = SledStore::open(&data, 8 << 20).unwrap();
    assert_eq!(mode(&data), 0o700);
    assert_eq!(mode(&data.join("db")), 0o600);
}

#[test]
fn a_store_behind_its_mark_is_refused_until_the_loss_is_accepted() {
    let dir = tempfile::tempdir().unwrap();
    let s = SledStore::open(dir.path(), 8 << 20).unwrap();
    // Nothing written: a flush moves no generation.
    s.flush().unwrap();
    drop(s);
    assert_eq!(integrity::read_mark(dir.path()).unwrap(), None);
    let s = SledStore::open(dir.path(), 8 << 20).unwrap();
    s.register(sample(Timestamp(1_000)), Duration::ZERO)
        .unwrap();
    s.flush().unwrap();
    // Written off the flush path, soon; and before the store is closed.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while integrity::read_mark(dir.path()).unwrap().is_none() {
        assert!(std::time::Instant::now() < deadline, "no mark after 5s");
        std::thread::sleep(Duration::from_millis(5));
    }
    s.flush().unwrap();
    drop(s);
    let mark = integrity::read_mark(dir.path()).unwrap().unwrap();
    assert_eq!((mark.generation, mark.operations), (1, 1));
    // Reopening a sound store is fine.
    drop(SledStore::open(dir.path(), 8 << 20).unwrap());
    // A mark ahead of the store: acknowledged writes are missing.
    let ahead = integrity::Mark {
        generation: 5,
        operations: 3,
    };
    integrity::write_mark(dir.path(), &ahead).unwrap();
    match SledStore::open(dir.path(), 8 << 20) {
        Err(StoreError::Damaged(m)) => {
            assert!(m.contains("holds 1 operations"), "{m}");
            assert!(m.contains("3 operations were acknowledged"), "{m}");
        }
        Err(e) => panic!("expected Damaged, got {e}"),
        Ok(_) => panic!("a store behind its mark must be refused"),
    }
    let s = SledStore::open_unchecked(dir.path(), 8 << 20).unwrap();
    assert!(!s.verify().unwrap().sound());
    assert!(s.accept_damage().unwrap().starts_with("accepted: "));
    drop(s);
    // The generation moves on past the mark's, never back.
    let mark = integrity::read_mark(dir.path()).unwrap().unwrap();
    assert_eq!(mark.generation, 6);
    let s = SledStore::open(dir.path(), 8 << 20).unwrap();
    assert!(s.verify().unwrap().sound());
}

/// The invariants a crash after a flush must find intact: every record decodes, a running
/// record is scheduled, a terminal record with a callback to send has its outbox entry.
fn assert_consistent(s: &SledStore, step: &str) {
    for item in s.ops.iter() {
        let (k, v) = item.unwrap();
        let op = decode(&k, &v).unwrap_or_else(|e| panic!("{step}: {e}"));
        if !op.status.is_terminal() {
            assert!(
                s.active.contains_key(&k).unwrap(),
                "{step}: {} is {:?} but has no `active` entry",
                op.id,
                op.status
            );
        }
        if op.in_outbox() {
            assert!(
                s.outbox.contains_key(&k).unwrap(),
                "{step}: {} has a callback to send but no `outbox` entry",
                op.id
            );
        }
    }
    for item in s.keys.iter() {
        let (_, id) = item.unwrap();
        assert!(
            s.ops.contains_key(&id).unwrap(),
            "{step}: a registration key names a missing record"
        );
    }
    let report = s.verify().unwrap();
    assert!(report.sound(), "{step}: {:?}", report.problems);
}

/// Flush, close, and open the store again from the same directory (what a restart sees).
fn reopen(dir: &Path, s: SledStore, step: &str) -> SledStore {
    s.flush().unwrap();
    drop(s);
    let s = SledStore::open(dir, 8 << 20).unwrap_or_else(|e| panic!("{step}: reopen: {e}"));
    assert_consistent(&s, step);
    s
}

#[test]
fn every_write_step_survives_a_reopen_with_its_indexes() {
    let dir = tempfile::tempdir().unwrap();
    let s = SledStore::open(dir.path(), 8 << 20).unwrap();
    let op = sample(Timestamp(1_000));
    let id = op.id.clone();

    // 1. register: scheduled, nothing to send.
    s.register(op.clone(), Duration::ZERO).unwrap();
    let s = reopen(dir.path(), s, "after register");
    let rec = s.get(&id).unwrap().expect("the registration survives");
    assert_eq!(rec.status, Status::Pending);
    assert_eq!(s.scheduled().unwrap().len(), 1);
    assert!(s.outbox().unwrap().is_empty());
    match s.register(op.clone(), Duration::ZERO).unwrap() {
        Registered::Existing(e) => assert_eq!(e.id, id),
        other => panic!("the key survives the reopen too: {other:?}"),
    }

    // 2. a thin webhook: due for a read now, its id remembered.
    let applied = s
        .record_webhook("jobs", "msg_1", "abc", None, Timestamp(2_000))
        .unwrap();
    assert_eq!(
        applied,
        WebhookRecord::Applied {
            id: id.clone(),
            terminal: false
        }
    );
    let s = reopen(dir.path(), s, "after a webhook");
    let rec = s.get(&id).unwrap().unwrap();
    assert_eq!(rec.webhook_at, Some(Timestamp(2_000)));
    assert_eq!(rec.webhook_reads, WEBHOOK_READS);
    assert_eq!(
        s.scheduled().unwrap()[0].at,
        Timestamp(2_000),
        "the schedule index follows the record"
    );
    assert_eq!(
        s.record_webhook("jobs", "msg_1", "abc", None, Timestamp(2_100))
            .unwrap(),
        WebhookRecord::Duplicate,
        "the webhook id survives the reopen"
    );

    // 3. the terminal update: out of the schedule, into the outbox, in one write.
    s.update(&id, &|o| {
        o.result = Some(serde_json::json!({"url": "u"}));
        o.finish(Status::Succeeded, DetectedVia::Webhook, Timestamp(3_000))
    })
    .unwrap()
    .unwrap();
    let s = reopen(dir.path(), s, "after the terminal update");
    let rec = s.get(&id).unwrap().unwrap();
    assert_eq!(rec.status, Status::Succeeded);
    assert_eq!(rec.result, Some(serde_json::json!({"url": "u"})));
    assert_eq!(rec.delivery.state, DeliveryState::Pending);
    assert!(
        s.scheduled().unwrap().is_empty(),
        "a terminal record is not polled"
    );
    assert_eq!(
        s.outbox().unwrap(),
        vec![OutboxEntry {
            key: DeliveryKey::terminal(id.clone()),
            at: Timestamp(3_000)
        }]
    );

    // 4. the delivery recorded: the outbox entry goes, the record says delivered.
    // (What `delivery::record_attempt` writes for a 2xx; the store may not import it.)
    s.update(&id, &|o| {
        o.delivery.state = DeliveryState::Delivered;
        o.delivery.attempts = 1;
        o.delivery.last_status = Some(200);
        o.delivery.next_attempt_at = None;
        o.delivery.delivered_at = Some(Timestamp(4_000));
        true
    })
    .unwrap()
    .unwrap();
    let s = reopen(dir.path(), s, "after the delivery");
    let rec = s.get(&id).unwrap().unwrap();
    assert_eq!(rec.delivery.state, DeliveryState::Delivered);
    assert_eq!(rec.delivery.delivered_at, Some(Timestamp(4_000)));
    assert!(s.outbox().unwrap().is_empty(), "nothing left to send");
    assert!(s.scheduled().unwrap().is_empty());

    // A late observation after all that changes nothing durable.
    let again = s
        .update(&id, &|o| {
            o.finish(Status::Failed, DetectedVia::Poll, Timestamp(5_000))
        })
        .unwrap()
        .unwrap();
    assert!(!again.written);
    let s = reopen(dir.path(), s, "after a late observation");
    assert_eq!(s.get(&id).unwrap().unwrap().status, Status::Succeeded);
}

#[test]
fn register_is_idempotent_per_upstream_and_operation() {
    let (_d, s) = store();
    let op = sample(Timestamp(1_000));
    assert!(matches!(
        s.register(op.clone(), Duration::from_secs(1)).unwrap(),
        Registered::Created { .. }
    ));
    let mut again = op.clone();
    again.id = OperationId::from_text("op_01J00000000000000000000001");
    match s.register(again, Duration::from_secs(1)).unwrap() {
        Registered::Existing(e) => assert_eq!(e.id, op.id),
        other => panic!("expected existing, got {other:?}"),
    }
    assert_eq!(s.scheduled().unwrap().len(), 1);
}

#[test]
fn terminal_update_moves_the_record_from_schedule_to_outbox_in_one_write() {
    let (_d, s) = store();
    let op = sample(Timestamp(1_000));
    s.register(op.clone(), Duration::ZERO).unwrap();
    let updated = s
        .update(&op.id, &|o| {
            o.finish(Status::Succeeded, DetectedVia::Poll, Timestamp(2_000))
        })
        .unwrap()
        .unwrap();
    assert!(updated.written && updated.became_terminal);
    assert_eq!(updated.op.status, Status::Succeeded);
    assert!(s.scheduled().unwrap().is_empty());
    assert_eq!(s.outbox().unwrap().len(), 1);
    // A second terminal observation writes nothing.
    let again = s
        .update(&op.id, &|o| {
            o.finish(Status::Failed, DetectedVia::Poll, Timestamp(3_000))
        })
        .unwrap()
        .unwrap();
    assert!(!again.written && !again.became_terminal);
}

#[test]
fn find_reads_the_upstream_operation_index() {
    let (_d, s) = store();
    let now = Timestamp(1_000);
    let mut op = crate::operation::sample(now);
    op.operation = "batches/b1".into();
    s.register(op.clone(), Duration::from_secs(60)).unwrap();
    let found = s.find(&op.upstream, "batches/b1").unwrap().unwrap();
    assert_eq!(found.id, op.id);
    assert!(s.find(&op.upstream, "b1").unwrap().is_none());
    assert!(s.find("other", "batches/b1").unwrap().is_none());
    s.delete(&op.id).unwrap();
    assert!(s.find(&op.upstream, "batches/b1").unwrap().is_none());
}

#[test]
fn concurrent_updates_of_one_operation_lose_nothing() {
    let (_d, s) = store();
    let op = sample(Timestamp(1_000));
    s.register(op.clone(), Duration::ZERO).unwrap();
    let s = std::sync::Arc::new(s);
    let threads: Vec<_> = (0..8)
        .map(|_| {
            let (s, id) = (s.clone(), op.id.clone());
            std::thread::spawn(move || {
                for _ in 0..200 {
                    s.update(&id, &|o| {
                        o.polls += 1;
                        true
                    })
                    .unwrap();
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    assert_eq!(s.get(&op.id).unwrap().unwrap().polls, 1_600);
}

#[test]
fn delete_keeps_a_key_that_names_another_record() {
    let (_d, s) = store();
    let op = sample(Timestamp(1_000));
    s.register(op.clone(), Duration::ZERO).unwrap();
    // Simulate a re-registration that took over the key.
    s.keys
        .insert(
            pair_key(&op.upstream, &op.operation),
            b"op_other".as_slice(),
        )
        .unwrap();
    s.delete(&op.id).unwrap().unwrap();
    assert_eq!(
        s.keys
            .get(pair_key(&op.upstream, &op.operation))
            .unwrap()
            .as_deref(),
        Some(b"op_other".as_slice())
    );
    assert!(s.scheduled().unwrap().is_empty());
}

#[test]
fn webhook_before_registration_is_kept_then_applied() {
    let (_d, s) = store();
    assert_eq!(
        s.record_webhook("jobs", "msg_1", "abc", None, Timestamp(500))
            .unwrap(),
        WebhookRecord::Kept
    );
    assert_eq!(
        s.record_webhook("jobs", "msg_1", "abc", None, Timestamp(600))
            .unwrap(),
        WebhookRecord::Duplicate
    );
    match s
        .register(sample(Timestamp(1_000)), Duration::from_secs(60))
        .unwrap()
    {
        Registered::Created { op, early_webhook } => {
            assert_eq!(early_webhook, Some(Timestamp(500)));
            assert_eq!(op.webhook_reads, WEBHOOK_READS);
            assert_eq!(op.next_poll_at, Some(Timestamp(1_000)));
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn stale_early_webhooks_are_not_applied() {
    let (_d, s) = store();
    s.record_webhook("jobs", "msg_1", "abc", None, Timestamp(0))
        .unwrap();
    match s
        .register(sample(Timestamp(100_000)), Duration::from_secs(10))
        .unwrap()
    {
        Registered::Created { early_webhook, .. } => assert_eq!(early_webhook, None),
        other => panic!("{other:?}"),
    }
}

fn pausing_op() -> Operation {
    let mut op = sample(Timestamp(1_000));
    op.callback_events = vec![crate::operation::REQUIRES_ACTION.into()];
    op
}

fn pause() -> crate::upstream::Observation {
    crate::upstream::Observation {
        state: crate::upstream::ObservedState::RequiresAction,
        raw_status: serde_json::json!("requires_action"),
        progress: None,
        result: None,
        error: None,
        expires_at: None,
    }
}

#[test]
fn event_callbacks_have_their_own_outbox_entries_and_each_update_reports_new_ones_once() {
    let (_d, s) = store();
    let op = pausing_op();
    s.register(op.clone(), Duration::ZERO).unwrap();
    let mut heard = Vec::new();
    let first = s
        .update(&op.id, &|o| {
            o.apply_observation(&pause(), Timestamp(2_000));
            true
        })
        .unwrap()
        .unwrap();
    heard.extend(first.new_callbacks);
    // Another poll during the same pause: no new event, nothing reported.
    let second = s
        .update(&op.id, &|o| {
            o.apply_observation(&pause(), Timestamp(3_000));
            true
        })
        .unwrap()
        .unwrap();
    heard.extend(second.new_callbacks);
    let key = DeliveryKey::event(op.id.clone(), "requires_action_1");
    assert_eq!(
        heard,
        vec![OutboxEntry {
            key: key.clone(),
            at: Timestamp(2_000)
        }]
    );
    let outbox: Vec<DeliveryKey> = s.outbox().unwrap().into_iter().map(|d| d.key).collect();
    assert_eq!(outbox, vec![key.clone()]);

    // The end puts the terminal callback in and takes the superseded event out, in one write.
    s.update(&op.id, &|o| {
        o.finish(Status::Succeeded, DetectedVia::Poll, Timestamp(4_000))
    })
    .unwrap();
    let outbox: Vec<DeliveryKey> = s.outbox().unwrap().into_iter().map(|d| d.key).collect();
    assert_eq!(outbox, vec![DeliveryKey::terminal(op.id.clone())]);
    s.delete(&op.id).unwrap();
    assert!(s.outbox().unwrap().is_empty());
}

#[test]
fn dropping_settled_event_callbacks_at_the_bound_keeps_the_outbox_exact() {
    use crate::operation::MAX_EVENT_CALLBACKS;
    use crate::upstream::{Observation, ObservedState};
    let (_d, s) = store();
    let op = pausing_op();
    s.register(op.clone(), Duration::ZERO).unwrap();
    let running = Observation::new(ObservedState::Running, serde_json::json!("running"));
    let pause_once = |t: u64| {
        s.update(&op.id, &|o| {
            o.apply_observation(&pause(), Timestamp(t));
            o.apply_observation(&running, Timestamp(t + 1));
            true
        })
        .unwrap()
        .unwrap()
    };
    for i in 0..MAX_EVENT_CALLBACKS as u64 {
        pause_once(2_000 + 10 * i);
    }
    assert_eq!(s.outbox().unwrap().len(), MAX_EVENT_CALLBACKS);
    // All pending: one more pause adds nothing to the record or the outbox.
    let full = pause_once(10_000);
    assert!(full.new_callbacks.is_empty());
    assert_eq!(s.outbox().unwrap().len(), MAX_EVENT_CALLBACKS);
    // The first one is delivered: its outbox entry goes, and the next pause takes its place.
    s.update(&op.id, &|o| {
        o.events[0].delivery.state = DeliveryState::Delivered;
        o.events[0].delivery.next_attempt_at = None;
        true
    })
    .unwrap();
    let first = DeliveryKey::event(op.id.clone(), "requires_action_1");
    let outbox = |s: &SledStore| -> Vec<DeliveryKey> {
        s.outbox().unwrap().into_iter().map(|d| d.key).collect()
    };
    assert!(!outbox(&s).contains(&first));
    let next = pause_once(20_000);
    assert_eq!(next.new_callbacks.len(), 1);
    let now = outbox(&s);
    assert_eq!(now.len(), MAX_EVENT_CALLBACKS);
    assert!(now.contains(&DeliveryKey::event(op.id.clone(), "requires_action_34")));
    let rec = s.get(&op.id).unwrap().unwrap();
    assert_eq!(rec.events.len(), MAX_EVENT_CALLBACKS);
    assert!(rec.events.iter().all(|e| e.name != "requires_action_1"));
    // Every pending event has its entry and every entry its pending event.
    for e in &rec.events {
        assert!(now.contains(&DeliveryKey::event(op.id.clone(), &e.name)));
    }
    // The end supersedes them all and takes every entry out but the terminal one.
    s.update(&op.id, &|o| {
        o.finish(Status::Succeeded, DetectedVia::Poll, Timestamp(30_000))
    })
    .unwrap();
    assert_eq!(outbox(&s), vec![DeliveryKey::terminal(op.id.clone())]);
}

#[test]
fn delete_removes_pending_event_callbacks() {
    let (_d, s) = store();
    let op = pausing_op();
    s.register(op.clone(), Duration::ZERO).unwrap();
    s.update(&op.id, &|o| {
        o.apply_observation(&pause(), Timestamp(2_000));
        true
    })
    .unwrap();
    assert_eq!(s.outbox().unwrap().len(), 1);
    s.delete(&op.id).unwrap();
    assert!(s.outbox().unwrap().is_empty());
}

fn outcome(status: Status, event: &str) -> EventOutcome {
    EventOutcome {
        status,
        event: event.into(),
        data: Some(serde_json::json!({"id": "abc"})),
    }
}

#[test]
fn an_event_outcome_ends_a_registered_operation_in_the_same_write() {
    let (_d, s) = store();
    let op = sample(Timestamp(1_000));
    s.register(op.clone(), Duration::ZERO).unwrap();
    let ok = outcome(Status::Succeeded, "batch.succeeded");
    match s
        .record_webhook("jobs", "msg_1", "abc", Some(&ok), Timestamp(2_000))
        .unwrap()
    {
        WebhookRecord::Finished(done) => {
            assert_eq!(done.status, Status::Succeeded);
            assert_eq!(done.detected_via, Some(DetectedVia::Webhook));
        }
        other => panic!("{other:?}"),
    }
    assert!(s.scheduled().unwrap().is_empty());
    assert_eq!(s.outbox().unwrap().len(), 1);
    // A later contradicting event is only counted.
    let failed = outcome(Status::Failed, "batch.failed");
    assert!(matches!(
        s.record_webhook("jobs", "msg_2", "abc", Some(&failed), Timestamp(3_000))
            .unwrap(),
        WebhookRecord::Applied { terminal: true, .. }
    ));
    let after = s.get(&op.id).unwrap().unwrap();
    assert_eq!(after.status, Status::Succeeded);
    assert_eq!(after.late_observations, 1);
}

#[test]
fn an_early_outcome_is_kept_and_applied_at_registration() {
    let (_d, s) = store();
    let failed = outcome(Status::Failed, "batch.failed");
    s.record_webhook("jobs", "msg_1", "abc", Some(&failed), Timestamp(500))
        .unwrap();
    // A thin webhook after it does not erase the outcome; a second outcome does not win.
    s.record_webhook("jobs", "msg_2", "abc", None, Timestamp(600))
        .unwrap();
    let ok = outcome(Status::Succeeded, "batch.succeeded");
    s.record_webhook("jobs", "msg_3", "abc", Some(&ok), Timestamp(700))
        .unwrap();
    match s
        .register(sample(Timestamp(1_000)), Duration::from_secs(60))
        .unwrap()
    {
        Registered::Created { op, early_webhook } => {
            assert_eq!(early_webhook, Some(Timestamp(500)));
            assert_eq!(op.status, Status::Failed);
            assert_eq!(op.upstream_status, Some(serde_json::json!("batch.failed")));
            assert_eq!(op.detected_via, Some(DetectedVia::Webhook));
            assert_eq!(op.completed_at, Some(Timestamp(1_000)));
            assert!(op.in_outbox());
        }
        other => panic!("{other:?}"),
    }
    assert!(s.scheduled().unwrap().is_empty());
    assert_eq!(s.outbox().unwrap().len(), 1);
}

#[test]
fn purge_forgets_old_webhook_ids_only() {
    let (_d, s) = store();
    s.record_webhook("jobs", "old", "x", None, Timestamp(1))
        .unwrap();
    s.record_webhook("jobs", "new", "y", None, Timestamp(10_000))
        .unwrap();
    assert_eq!(
        s.purge_webhooks(Timestamp(5_000), Timestamp(5_000))
            .unwrap(),
        2
    );
    assert_eq!(
        s.record_webhook("jobs", "new", "y", None, Timestamp(10_001))
            .unwrap(),
        WebhookRecord::Duplicate
    );
    assert_eq!(
        s.record_webhook("jobs", "old", "x", None, Timestamp(10_001))
            .unwrap(),
        WebhookRecord::Kept
    );
}
