//! When things happen: the due-queue shared by polling and delivery, the polling policy (pure
//! math over config, hints and a random sample), and each upstream's request budget.

mod limit;
mod policy;
mod queue;

pub use limit::UpstreamLimiter;
pub use policy::{HINT_MAX, backoff, callback_retry_delay, next_poll_at, parse_hint};
pub use queue::DueQueue;
