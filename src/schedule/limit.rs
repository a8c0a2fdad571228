//! Each upstream's request budget (invariant 5). Every request to an upstream first waits for
//! its `governor` limiter; a rate-limit answer (429/503 with a hint) pauses the whole upstream
//! until the hint expires, so no other operation's poll goes out before it.

use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};

use crate::clock::{Clock, Timestamp};
use crate::config::RateConfig;

pub struct UpstreamLimiter {
    limiter: DefaultDirectRateLimiter,
    /// Unix ms before which no request may go out (from a 429/503 hint).
    paused_until: AtomicU64,
}

impl UpstreamLimiter {
    pub fn new(rate: RateConfig) -> UpstreamLimiter {
        let per_second = NonZeroU32::new(rate.per_second).unwrap_or(NonZeroU32::MIN);
        let burst = NonZeroU32::new(rate.burst).unwrap_or(NonZeroU32::MIN);
        UpstreamLimiter {
            limiter: RateLimiter::direct(Quota::per_second(per_second).allow_burst(burst)),
            paused_until: AtomicU64::new(0),
        }
    }

    /// Pause every request to this upstream until `until`.
    pub fn pause_until(&self, until: Timestamp) {
        self.paused_until.fetch_max(until.0, Ordering::SeqCst);
    }

    pub fn paused_until(&self) -> Timestamp {
        Timestamp(self.paused_until.load(Ordering::SeqCst))
    }

    /// Wait until a request may be sent.
    pub async fn acquire(&self, clock: &dyn Clock) {
        loop {
            let now = clock.now();
            let paused = self.paused_until();
            if paused > now {
                tokio::time::sleep(now.until(paused).min(Duration::from_secs(1))).await;
                continue;
            }
            self.limiter.until_ready().await;
            // A pause may have started while we waited for the limiter.
            if self.paused_until() <= clock.now() {
                return;
            }
        }
    }
}
