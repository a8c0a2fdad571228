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
