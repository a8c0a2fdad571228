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

/// Every value of the bounded labels, so each series exists (at zero) from start.
pub const TERMINAL_STATUSES: [&str; 5] =
    ["succeeded", "failed", "cancelled", "expired", "timed_out"];
pub const DETECTED_VIA: [&str; 3] = ["poll", "webhook", "deadline"];
pub const UPSTREAM_OUTCOMES: [&str; 10] = [
    "ok",
    "not_modified",
    "not_found",
    "rate_limited",
    "server_error",
    "client_error",
    "invalid_body",
    "body_too_large",
    "timeout",
    "network_error",
];
pub const WEBHOOK_RESULTS: [&str; 10] = [
    "accepted",
    "kept",
    "duplicate",
    "ignored",
    "bad_signature",
    "stale_timestamp",
    "jwks_unavailable",
    "malformed",
    "too_large",
    "unknown_upstream",
];
pub const CALLBACK_RESULTS: [&str; 8] = [
    "delivered",
    "gone",
    "refused",
    "redirect",
    "http_error",
    "rate_limited",
    "timeout",
    "network_error",
];
pub const DELIVERY_STATES: [&str; 2] = ["pending", "failed"];
/// What became of a finished span of the trace pipeline (`[trace]`): sent to the collector,
/// dropped because the queue was full, or lost in an export that failed.
pub const TRACE_SPAN_RESULTS: [&str; 3] = ["exported", "dropped", "failed"];

/// Spans of the trace pipeline by result. Process-wide, as the pipeline is (one per process,
/// installed by `serve`), so it lives outside [`Metrics`] and every registry shows it.
pub static TRACE_SPANS: std::sync::LazyLock<Family<ResultLabel, Counter>> =
    std::sync::LazyLock::new(Family::default);

/// Count `n` spans of the trace pipeline as `result` (one of [`TRACE_SPAN_RESULTS`]).
pub fn trace_spans(result: &str, n: u64) {
    TRACE_SPANS
        .get_or_create(&ResultLabel {
            result: result.into(),
        })
        .inc_by(n);
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabel {
    pub result: String,
}
pub const ACTIVE_STATUSES: [&str; 2] = ["pending", "running"];

/// The content type of the classic Prometheus text format (what `/metrics` answers unless the
/// scraper asks for OpenMetrics).
pub const TEXT_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";
pub const OPENMETRICS_CONTENT_TYPE: &str =
    "application/openmetrics-text; version=1.0.0; charset=utf-8";

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

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StatusLabels {
    pub upstream: String,
    pub status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StateLabel {
    pub state: String,
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
    /// Registration → successful delivery of the terminal callback.
    pub end_to_end: Histogram,
    /// Callbacks by delivery state: `pending` (in the outbox), `failed` (redeliver to retry).
    pub deliveries: Family<StateLabel, Gauge>,
    /// Operations not finished, by upstream and status (`pending`, `running`).
    pub by_status: Family<StatusLabels, Gauge>,
    pub proxy_requests: Family<OutcomeLabels, Counter>,
    pub proxy_saved: Family<UpstreamLabel, Counter>,
    /// Credential fetches (`auth`) by upstream and result (`ok`, `error`).
    pub credential_refreshes: Family<ResultLabels, Counter>,
    pub job_duration_quantile: Family<QuantileLabels, Gauge<f64, AtomicU64>>,
    pub requests_saved: Family<UpstreamLabel, Counter>,
    /// The shared store's claims, leases, errors and call latency (PostgreSQL).
    pub store: crate::store::StoreMetrics,
    /// The store's size (sled: on disk; PostgreSQL: its schema's tables), sampled when scraped.
    pub store_bytes: Gauge,
    /// When `store_bytes` was last sampled.
    store_bytes_at: std::sync::Mutex<Option<std::time::Instant>>,
    /// Operations removed by retention (`[retention]`).
    pub purged: Counter,
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
        // 10 ms .. ~11.6 h, doubling: retries run for hours.
        let delivery_latency = Histogram::new(exponential_buckets(0.01, 2.0, 23));
        let end_to_end = Histogram::new(exponential_buckets(0.01, 2.0, 23));
        let deliveries = Family::<StateLabel, Gauge>::default();
        let by_status = Family::<StatusLabels, Gauge>::default();
        let proxy_requests = Family::<OutcomeLabels, Counter>::default();
        let proxy_saved = Family::<UpstreamLabel, Counter>::default();
        let credential_refreshes = Family::<ResultLabels, Counter>::default();
        let job_duration_quantile = Family::<QuantileLabels, Gauge<f64, AtomicU64>>::default();
        let requests_saved = Family::<UpstreamLabel, Counter>::default();
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
            "hookshim_operation_end_to_end_seconds",
            "Time from registration to the successful delivery of the terminal callback",
            end_to_end.clone(),
        );
        registry.register(
            "hookshim_callbacks",
            "Callbacks by delivery state: pending (in the outbox, being sent or waiting for a retry), failed (every attempt failed; redeliver to retry)",
            deliveries.clone(),
        );
        registry.register(
            "hookshim_operations_by_status",
            "Operations not finished, by status (pending, running); finished ones are counted by hookshim_operations_completed",
            by_status.clone(),
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
        let store = crate::store::StoreMetrics::default();
        registry.register(
            "hookshim_db_leases_held",
            "Claims on due polls and callbacks this process holds (PostgreSQL store)",
            store.leases_held.clone(),
        );
        registry.register(
            "hookshim_db_claims",
            "Due polls and callbacks claimed by this process (PostgreSQL store)",
            store.claims.clone(),
        );
        registry.register(
            "hookshim_db_lease_takeovers",
            "Claims taken over from a process whose lease had expired (PostgreSQL store)",
            store.takeovers.clone(),
        );
        registry.register(
            "hookshim_db_leases_lost",
            "Writes refused because this process's claim had expired or been taken over (PostgreSQL store)",
            store.leases_lost.clone(),
        );
        registry.register(
            "hookshim_db_errors",
            "Database calls that failed: unreachable, timed out or refused (PostgreSQL store)",
            store.errors.clone(),
        );
        registry.register(
            "hookshim_db_call_seconds",
            "Duration of database calls, waiting for a pooled connection included (PostgreSQL store)",
            store.call_seconds.clone(),
        );
        let store_bytes = Gauge::default();
        registry.register(
            "hookshim_store_bytes",
            "Size of the store in bytes (sled: its data directory on disk, read at each scrape; PostgreSQL: pg_total_relation_size of the schema's tables, read at most every minute)",
            store_bytes.clone(),
        );
        let purged = Counter::default();
        registry.register(
            "hookshim_operations_purged",
            "Finished operations removed by retention ([retention] finished and failed)",
            purged.clone(),
        );
        for r in TRACE_SPAN_RESULTS {
            trace_spans(r, 0);
        }
        registry.register(
            "hookshim_trace_spans",
            "Finished spans of the OTLP trace pipeline ([trace]) by result: exported, dropped (queue full), failed (export error or timeout)",
            TRACE_SPANS.clone(),
        );
        Metrics {
            store_bytes,
            store_bytes_at: std::sync::Mutex::new(None),
            purged,
            store,
            by_status,
            end_to_end,
            deliveries,
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

    /// Whether the store's size is due for a new sample (`every` after the last); if so, the
    /// caller samples it now ([`Metrics::store_bytes`]).
    pub fn store_size_due(&self, every: std::time::Duration) -> bool {
        let mut at = self
            .store_bytes_at
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let now = std::time::Instant::now();
        if at.is_some_and(|t| now.duration_since(t) < every) {
            return false;
        }
        *at = Some(now);
        true
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

    /// Create every series with a bounded label set at zero, so dashboards and alerts see them
    /// from start: per configured upstream, and for names that are not upstreams.
    pub fn init_series<'a>(&self, upstreams: impl IntoIterator<Item = &'a str>) {
        for upstream in upstreams {
            let label = UpstreamLabel {
                upstream: upstream.into(),
            };
            let _ = self.registered.get_or_create(&label);
            let _ = self.active.get_or_create(&label);
            for status in ACTIVE_STATUSES {
                self.operations_by_status(upstream, status, 0);
            }
            for status in TERMINAL_STATUSES {
                for via in DETECTED_VIA {
                    let _ = self.completed.get_or_create(&CompletedLabels {
                        upstream: upstream.into(),
                        status: status.into(),
                        detected_via: via.into(),
                    });
                }
            }
            for outcome in UPSTREAM_OUTCOMES {
                let _ = self.upstream_requests.get_or_create(&OutcomeLabels {
                    upstream: upstream.into(),
                    outcome: outcome.into(),
                });
            }
            for result in WEBHOOK_RESULTS {
                let _ = self.webhooks.get_or_create(&ResultLabels {
                    upstream: upstream.into(),
                    result: result.into(),
                });
            }
        }
        for result in ["too_large", "unknown_upstream"] {
            let _ = self.webhooks.get_or_create(&ResultLabels {
                upstream: UNKNOWN_UPSTREAM.into(),
                result: result.into(),
            });
        }
        for result in CALLBACK_RESULTS {
            let _ = self.callback_attempts.get_or_create(&CallbackLabel {
                result: result.into(),
            });
        }
        for state in DELIVERY_STATES {
            let _ = self.deliveries.get_or_create(&StateLabel {
                state: state.into(),
            });
        }
    }

    pub fn operations_by_status(&self, upstream: &str, status: &str, n: i64) {
        self.by_status
            .get_or_create(&StatusLabels {
                upstream: upstream.into(),
                status: status.into(),
            })
            .set(n);
    }

    pub fn deliveries(&self, state: &str) -> Gauge {
        self.deliveries
            .get_or_create(&StateLabel {
                state: state.into(),
            })
            .clone()
    }

    /// The classic Prometheus text format (0.0.4), which Prometheus' own text parser and
    /// `prometheus_client.parser` read: see [`openmetrics_to_text`].
    pub fn render_text(&self) -> String {
        openmetrics_to_text(&self.render())
    }

    /// OpenMetrics 1.0 text.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

/// Convert the OpenMetrics text `prometheus_client` (the crate) writes to the classic
/// Prometheus text format 0.0.4. The differences for what this crate emits: a counter's
/// `# HELP`/`# TYPE` name the sample (`x_total`, the classic parser types a family by its
/// sample names), no `_created` samples, no `# UNIT`, no `# EOF`, `unknown` is `untyped`.
pub fn openmetrics_to_text(om: &str) -> String {
    let counters: std::collections::HashSet<&str> = om
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(om.len());
    for line in om.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, help) = rest.split_once(' ').unwrap_or((rest, ""));
            let suffix = if counters.contains(name) {
                "_total"
            } else {
                ""
            };
            // OpenMetrics escapes `"` in HELP; the classic format does not.
            let help = help.replace("\\\"", "\"");
            out.push_str(&format!("# HELP {name}{suffix} {help}\n"));
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap_or((rest, "untyped"));
            let (suffix, kind) = match kind {
                "counter" => ("_total", "counter"),
                "unknown" => ("", "untyped"),
                k => ("", k),
            };
            out.push_str(&format!("# TYPE {name}{suffix} {kind}\n"));
            continue;
        }
        let sample = line.split(['{', ' ']).next().unwrap_or("");
        if sample
            .strip_suffix("_created")
            .is_some_and(|base| counters.contains(base))
        {
            continue;
        }
        out.push_str(line);
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classic_text_names_counters_by_their_samples() {
        let m = Metrics::new();
        m.init_series(["a"]);
        m.callback("delivered");
        let om = m.render();
        assert!(
            om.contains("# TYPE hookshim_callback_attempts counter"),
            "{om}"
        );
        assert!(om.ends_with("# EOF\n"), "{om}");
        let text = m.render_text();
        assert!(
            text.contains("# TYPE hookshim_callback_attempts_total counter\n"),
            "{text}"
        );
        assert!(
            text.contains("# HELP hookshim_callback_attempts_total "),
            "{text}"
        );
        assert!(
            text.contains("hookshim_callback_attempts_total{result=\"delivered\"} 1\n"),
            "{text}"
        );
        assert!(
            text.contains(
                "hookshim_upstream_requests_total{upstream=\"a\",outcome=\"timeout\"} 0\n"
            ),
            "{text}"
        );
        assert!(
            text.contains("# TYPE hookshim_operations_active gauge\n"),
            "{text}"
        );
        assert!(!text.contains("# EOF"), "{text}");
        assert!(!text.contains("_created"), "{text}");
    }

    #[test]
    fn latency_buckets_cover_hours() {
        let m = Metrics::new();
        m.delivery_latency.observe(3.0 * 3600.0);
        let text = m.render_text();
        assert!(
            text.contains("hookshim_callback_delivery_latency_seconds_bucket{le=\"41943.04\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("hookshim_operation_end_to_end_seconds_bucket{le=\"0.01\"} 0"),
            "{text}"
        );
    }
}
