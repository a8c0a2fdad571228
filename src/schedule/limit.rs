//! Each upstream's request budget (invariant 5). Every request to an upstream first waits for
//! its `governor` limiter (the configured ceiling, with its burst), then for the adaptive rate:
//! a rate-limit answer (429/503) pauses the whole upstream until its hint expires and halves the
//! rate, which recovers by a tenth of the ceiling every `rate.increase_every` without another
//! one ([`Aimd`]). While the rate is below the ceiling, requests are spaced `1/rate` apart with no
//! burst. The limiter also spreads the first polls of operations registered together.
//!
//! Several processes sharing one store share each budget ([`UpstreamLimiter::set_share`]): each
//! sends at most its share of the adaptive rate, paced without burst, and a rate-limit answer
//! seen by any of them lowers the rate and pauses the upstream in all
//! ([`UpstreamLimiter::throttled_elsewhere`]).

use std::num::NonZeroU32;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};

use crate::clock::{Clock, Timestamp};
use crate::schedule::config::RateConfig;
use crate::schedule::policy::Aimd;

/// First polls are spread over at most this much time past the one asked for; beyond it they
/// share the window's end and the limiter paces them.
pub const SPREAD_MAX: Duration = Duration::from_secs(60);

pub struct UpstreamLimiter {
    limiter: DefaultDirectRateLimiter,
    /// Unix ms before which no request may go out (from a 429/503 hint).
    paused_until: AtomicU64,
    /// A std `Mutex`: held for a few arithmetic operations, never across an `.await`.
    pacer: Mutex<Pacer>,
}

struct Pacer {
    aimd: Aimd,
    /// Unix ms (fractional) of the next request slot while the rate is lowered.
    next_slot: f64,
    /// The next free first-poll slot for newly registered operations.
    next_first_poll: Timestamp,
    /// This process's share of the budget (1 alone; 1/n of n live processes on a shared store).
    share: f64,
}

impl UpstreamLimiter {
    pub fn new(rate: RateConfig, now: Timestamp) -> UpstreamLimiter {
        let per_second = NonZeroU32::new(rate.per_second).unwrap_or(NonZeroU32::MIN);
        let burst = NonZeroU32::new(rate.burst).unwrap_or(NonZeroU32::MIN);
        UpstreamLimiter {
            limiter: RateLimiter::direct(Quota::per_second(per_second).allow_burst(burst)),
            paused_until: AtomicU64::new(0),
            pacer: Mutex::new(Pacer {
                aimd: Aimd::new(
                    f64::from(rate.per_second),
                    rate.min_per_second,
                    rate.increase_every,
                    now,
                ),
                next_slot: 0.0,
                next_first_poll: Timestamp(0),
                share: 1.0,
            }),
        }
    }

    fn pacer(&self) -> std::sync::MutexGuard<'_, Pacer> {
        self.pacer.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Pause every request to this upstream until `until`.
    pub fn pause_until(&self, until: Timestamp) {
        self.paused_until.fetch_max(until.0, Ordering::SeqCst);
    }

    pub fn paused_until(&self) -> Timestamp {
        Timestamp(self.paused_until.load(Ordering::SeqCst))
    }

    /// The upstream answered 429 or 503: lower its rate (at most once per congestion event).
    pub fn throttled(&self, now: Timestamp) -> bool {
        self.pacer().aimd.throttled(now)
    }

    /// The request rate this process may send now (per second): its share of the adaptive rate.
    pub fn current_rate(&self, now: Timestamp) -> f64 {
        let mut p = self.pacer();
        p.aimd.rate(now) * p.share
    }

    /// Take `share` (0..=1) of the budget: the others sharing the store take the rest.
    pub fn set_share(&self, share: f64) {
        self.pacer().share = share.clamp(0.001, 1.0);
    }

    /// When a rate-limit answer here last lowered the rate (for the other processes).
    pub fn last_throttled(&self) -> Option<Timestamp> {
        self.pacer().aimd.last_decrease()
    }

    /// Another process sharing the budget got a rate-limit answer at `at`: lower the rate here
    /// too (once per congestion event, as for an answer here).
    pub fn throttled_elsewhere(&self, at: Timestamp) -> bool {
        self.pacer().aimd.throttled(at)
    }

    /// When a newly registered operation should first be polled, given that its schedule says
    /// `at`: no earlier than `at`, and at least `1/rate` after the previous registration's first
    /// poll, so a burst of registrations does not become a burst of polls.
    pub fn spread_first_poll(&self, at: Timestamp, now: Timestamp) -> Timestamp {
        let mut p = self.pacer();
        let rate = p.aimd.rate(now) * p.share;
        let gap = (1000.0 / rate.max(0.001)).ceil() as u64;
        let slot = at.max(p.next_first_poll).min(at.plus(SPREAD_MAX));
        p.next_first_poll = Timestamp(slot.0 + gap);
        slot
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
            // While the rate is lowered, take the next slot `1/rate` after the previous one.
            let wait = {
                let now = clock.now();
                let mut p = self.pacer();
                // A share below 1 always paces: n processes with no burst each add up to the
                // rate, never n bursts.
                let rate = p.aimd.rate(now) * p.share;
                if rate < p.aimd.ceiling() {
                    let slot = p.next_slot.max(now.0 as f64);
                    p.next_slot = slot + 1000.0 / rate.max(0.001);
                    Duration::from_secs_f64((slot - now.0 as f64).max(0.0) / 1000.0)
                } else {
                    Duration::ZERO
                }
            };
            if !wait.is_zero() {
                tokio::time::sleep(wait).await;
            }
            // A pause may have started while we waited.
            if self.paused_until() <= clock.now() {
                return;
            }
        }
    }
}
