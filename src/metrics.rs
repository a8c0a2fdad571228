//! Prometheus metrics (`GET /metrics`). Names and labels are listed in the README.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use std::sync::atomic::AtomicU64;

/// The `upstream` label of anything about a name that is not a configured upstream (e.g. a
/// webhook POSTed to `/webhooks/<random>`): one series for all of them, so unauthenticated
/// requests cannot add series.
pub const UNKNOWN_UPSTREAM: &str = "_unknown";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct UpstreamLabel {
    pub upstream: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CompletedLabels {
    pub upstream: String,
    pub status: String,
    pub detected_via: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    pub upstream: String,
    pub outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    pub upstream: String,
    pub result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CallbackLabel {
    pub result: String,
}

pub struct Metrics {
    registry: Registry,
    pub registered: Family<UpstreamLabel, Counter>,
    pub active: Family<UpstreamLabel, Gauge>,
    pub completed: Family<CompletedLabels, Counter>,
    pub upstream_requests: Family<OutcomeLabels, Counter>,
    pub webhooks: Family<ResultLabels, Counter>,
    pub callback_attempts: Family<CallbackLabel, Counter>,
    pub delivery_latency: Histogram,
    pub upstream_rate: Family<UpstreamLabel, Gauge<f64, AtomicU64>>,
    pub proxy_requests: Family<OutcomeLabels, Counter>,
    pub proxy_saved: Family<UpstreamLabel, Counter>,
    /// Credential fetches (`auth`) by upstream and result (`ok`, `error`).
    pub credential_refreshes: Family<ResultLabels, Counter>,
    pub job_duration_quantile: Family<QuantileLabels, Gauge<f64, AtomicU64>>,
    pub requests_saved: Family<UpstreamLabel, Counter>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct QuantileLabels {
    pub upstream: String,
    /// `0.1`, `0.5`, `0.9`.
    pub quantile: String,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::default();
        let registered = Family::<UpstreamLabel, Counter>::default();
        let active = Family::<UpstreamLabel, Gauge>::default();
        let completed = Family::<CompletedLabels, Counter>::default();
        let upstream_requests = Family::<OutcomeLabels, Counter>::default();
        let webhooks = Family::<ResultLabels, Counter>::default();
        let callback_attempts = Family::<CallbackLabel, Counter>::default();
        let upstream_rate = Family::<UpstreamLabel, Gauge<f64, AtomicU64>>::default();
        let proxy_requests = Family::<OutcomeLabels, Counter>::default();
        let proxy_saved = Family::<UpstreamLabel, Counter>::default();
        let credential_refreshes = Family::<ResultLabels, Counter>::default();
        let job_duration_quantile = Family::<QuantileLabels, Gauge<f64, AtomicU64>>::default();
        let requests_saved = Family::<UpstreamLabel, Counter>::default();
        // 1 ms .. ~33 s, doubling.
        let delivery_latency = Histogram::new(exponential_buckets(0.001, 2.0, 16));
        registry.register(
            "hookshim_operations_registered",
            "Operations registered by the app",
            registered.clone(),
        );
        registry.register(
            "hookshim_operations_active",
            "Operations being tracked (not terminal)",
            active.clone(),
        );
        registry.register(
            "hookshim_operations_completed",
            "Operations that reached a terminal status, by status and how it was detected",
            completed.clone(),
        );
        registry.register(
            "hookshim_upstream_requests",
            "Status requests to upstreams by outcome (ok, not_modified, not_found, rate_limited, server_error, client_error, invalid_body, body_too_large, timeout, network_error; with auth: credential_rejected for a 401/403 answered by one refresh and a retry, credential_error when no credential could be obtained)",
            upstream_requests.clone(),
        );
        registry.register(
            "hookshim_webhooks_received",
            "Inbound upstream webhooks by result (accepted, kept, duplicate, bad_signature, stale_timestamp, jwks_unavailable, malformed, too_large, unknown_upstream); upstream _unknown for names not in the config",
            webhooks.clone(),
        );
        registry.register(
            "hookshim_callback_attempts",
            "Callback attempts by result (delivered, gone, redirect, http_error, rate_limited, timeout, network_error)",
            callback_attempts.clone(),
        );
        registry.register(
            "hookshim_callback_delivery_latency_seconds",
            "Time from the terminal transition to the callback's successful delivery",
            delivery_latency.clone(),
        );
        registry.register(
            "hookshim_upstream_rate_limit",
            "Status requests per second currently allowed to each upstream (lowered after 429/503, recovers to rate.per_second)",
            upstream_rate.clone(),
        );
        registry.register(
            "hookshim_proxy_requests",
            "Requests through /proxy/{upstream}/ by outcome (create_registered, create_unregistered, cache_hit, forwarded, pass_through, budget_refused; budget_wait also counts a request that waited for the budget)",
            proxy_requests.clone(),
        );
        registry.register(
            "hookshim_proxy_upstream_requests_saved",
            "Status reads through the proxy answered from hookshim instead of the upstream",
            proxy_saved.clone(),
        );
        registry.register(
            "hookshim_credential_refreshes",
            "Fetches of upstream credentials (auth: command, file, gcp_metadata, aws_sigv4) by result (ok, error)",
            credential_refreshes.clone(),
        );
        registry.register(
            "hookshim_upstream_job_duration_quantile_seconds",
            "Learned job length per upstream (the prior of operations without a poll.prior_key value), at quantiles 0.1, 0.5, 0.9",
            job_duration_quantile.clone(),
        );
        registry.register(
            "hookshim_upstream_poll_requests_saved",
            "Status requests not made compared to the plain blind schedule, per upstream (target_delay and learned priors)",
            requests_saved.clone(),
        );
        Metrics {
            credential_refreshes,
            upstream_rate,
            proxy_requests,
            proxy_saved,
            job_duration_quantile,
            requests_saved,
            registry,
            registered,
            active,
            completed,
            upstream_requests,
            webhooks,
            callback_attempts,
            delivery_latency,
        }
    }

    pub fn upstream_request(&self, upstream: &str, outcome: &str) {
        self.upstream_requests
            .get_or_create(&OutcomeLabels {
                upstream: upstream.into(),
                outcome: outcome.into(),
            })
            .inc();
    }

    /// A request through the proxy ended with `outcome`; `upstream` is a configured name.
    pub fn proxy(&self, upstream: &str, outcome: &str) {
        self.proxy_requests
            .get_or_create(&OutcomeLabels {
                upstream: upstream.into(),
                outcome: outcome.into(),
            })
            .inc();
        if outcome == "cache_hit" {
            self.proxy_saved
                .get_or_create(&UpstreamLabel {
                    upstream: upstream.into(),
                })
                .inc();
        }
    }

    pub fn upstream_rate(&self, upstream: &str, rate: f64) {
        self.upstream_rate
            .get_or_create(&UpstreamLabel {
                upstream: upstream.into(),
            })
            .set(rate);
    }

    /// Publish an upstream's learned job-length quantiles.
    pub fn job_durations(&self, upstream: &str, prior: &crate::schedule::Prior) {
        for q in [0.1, 0.5, 0.9] {
            if let Some(secs) = prior.quantile(q) {
                self.job_duration_quantile
                    .get_or_create(&QuantileLabels {
                        upstream: upstream.into(),
                        quantile: format!("{q}"),
                    })
                    .set(secs);
            }
        }
    }

    pub fn webhook(&self, upstream: &str, result: &str) {
        self.webhooks
            .get_or_create(&ResultLabels {
                upstream: upstream.into(),
                result: result.into(),
            })
            .inc();
    }

    pub fn callback(&self, result: &str) {
        self.callback_attempts
            .get_or_create(&CallbackLabel {
                result: result.into(),
            })
            .inc();
    }

    pub fn active(&self, upstream: &str) -> Gauge {
        self.active
            .get_or_create(&UpstreamLabel {
                upstream: upstream.into(),
            })
            .clone()
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}
