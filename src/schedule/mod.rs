//! When things happen: the due-queue shared by polling and delivery, the polling policy (pure
//! math over config, hints and a random sample), the poll-outcome rules built on it, each
//! upstream's request budget, and the `poll` and `rate` configuration they run on ([`config`]).

pub mod config;
mod limit;
pub mod outcome;
pub mod policy;
pub mod prior;
mod queue;
pub mod slots;

pub use config::{PollConfig, RateConfig};
pub use limit::UpstreamLimiter;
pub use outcome::{
    DEADLINE_GRACE, EXPIRY_GRACE, PollOutcome, PollRules, Reading, apply_outcome,
    apply_outcome_with, classify, first_poll_at, first_poll_with, time_out,
};
pub use policy::{
    Aimd, HINT_MAX, Pace, Rule, backoff, blind_polls, callback_retry_delay, first_wait, interval,
    next_poll_at, parse_hint, plan,
};
pub use prior::{Prior, Priors};
pub use queue::{DueQueue, QueueId};
pub use slots::{GROUP_FULL_RETRY, GroupSlot, GroupSlots};
