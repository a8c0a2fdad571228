//! When things happen: the due-queue shared by polling and delivery, the polling policy (pure
//! math over config, hints and a random sample), and each upstream's request budget.

mod limit;
pub mod policy;
mod queue;

pub use limit::UpstreamLimiter;
pub use policy::{
    Aimd, HINT_MAX, Pace, Rule, backoff, callback_retry_delay, interval, next_poll_at, parse_hint,
};
pub use queue::DueQueue;
