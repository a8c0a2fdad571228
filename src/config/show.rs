//! What `hookshim check` prints: the resolved config with every key's effective value, secrets
//! redacted (shown as where they come from), and where each key that was set came from.

use std::time::Duration;

use super::Config;

impl Config {
    /// A human-readable rendering of the resolved config with every secret redacted.
    pub fn redacted(&self) -> serde_json::Value {
        use serde_json::json;
        let ms = |d: Duration| humantime::format_duration(d).to_string();
        let ups: serde_json::Map<String, serde_json::Value> = self
            .upstreams
            .values()
            .map(|u| {
                let headers: serde_json::Map<String, serde_json::Value> = u
                    .header_templates
                    .iter()
                    .map(|(k, v)| (k.clone(), json!(shown_header(k, v))))
                    .collect();
                (
                    u.name.clone(),
                    json!({
                        "preset": u.preset.name(),
                        "base_url": u.base_url.as_str(),
                        "status_path": u.status_path,
                        "status_method": u.status_method.as_str(),
                        "status_body": u.status_body,
                        "headers": headers,
                        "mapping": u.mapping.describe(),
                        "not_found_after": u.not_found_after,
                        "timeout": ms(u.timeout),
                        "rate": {"per_second": u.rate.per_second, "burst": u.rate.burst,
                            "min_per_second": u.rate.min_per_second, "increase_every": ms(u.rate.increase_every)},
                        "poll": {
                            "enabled": u.poll.enabled,
                            "initial": ms(u.poll.initial), "multiplier": u.poll.multiplier,
                            "max": ms(u.poll.max), "jitter": u.poll.jitter, "deadline": ms(u.poll.deadline),
                            "finalizing": ms(u.poll.finalizing), "eta": u.poll.eta, "eta_max": ms(u.poll.eta_max),
                            "stall_polls": u.poll.stall_polls, "hint_max": ms(u.poll.hint_max),
                        },
                        "webhook": u.webhook.as_ref().map(|w| json!({
                            "scheme": w.scheme.name(),
                            "secret_env": w.secret_env,
                            "keys": w.keys.iter().map(|k| json!({
                                "from": k.source, "env": k.env, "kind": k.material.kind(),
                                "value": "<redacted>", "until": k.until.map(|t| t.rfc3339()),
                            })).collect::<Vec<_>>(),
                            "jwt": w.jwt.as_ref().map(|j| json!({
                                "jwks_url": j.jwks_url.as_str(), "audience": j.audience,
                                "jwks_ttl": ms(j.jwks_ttl), "jwks_min_interval": ms(j.jwks_min_interval),
                            })),
                            "operation_field": w.operation_field,
                            "safety_poll": ms(w.safety_poll),
                            "events": w.events.iter().map(|(k, v)| (k.clone(), json!(v.as_str()))).collect::<serde_json::Map<_, _>>(),
                        })),
                        "callback_events": u.callback_events,
                        "proxy": {
                            "enabled": u.proxy.enabled, "callback_url": u.proxy.callback_url,
                            "max_wait": ms(u.proxy.max_wait),
                            "create": u.proxy.create.as_ref().map(|c| json!({"method": c.method, "path": c.path, "id_field": c.id_field})),
                        },
                        "auth": u.auth.as_ref().map(|a| a.describe()),
                    }),
                )
            })
            .collect();
        json!({
            "source": self.source,
            "server": {
                "listen": self.server.listen.to_string(),
                "api_token_env": self.server.api_token_env,
                "api_token": if self.server.api_token.is_some() { "<redacted, set>" } else { "<unset: API is open>" },
                "max_body": self.server.max_body,
                "max_upstream_body": self.server.max_upstream_body,
                "max_connections": self.server.max_connections,
                "header_read_timeout": ms(self.server.header_read_timeout),
                "webhook_listen": self.server.webhook_listen.map(|a| a.to_string()),
                "allow_unauthenticated": self.server.allow_unauthenticated,
                "max_connections_per_ip": self.server.max_connections_per_ip,
            },
            "store": self.store.redacted(),
            "retention": self.retention.shown(),
            "callbacks": {
                "default_url": self.callbacks.default_url.as_ref().map(|u| u.as_str()),
                "secret_env": self.callbacks.secret_env,
                "secret_file": self.callbacks.secret_file.as_ref().map(|p| p.display().to_string()),
                "secret": match &self.callbacks.secret_source { Some(from) => format!("<redacted, from {from}>"), None => "<generated in the data directory on first start>".to_string() },
                "previous_secrets": self.callbacks.previous_secrets.iter().map(|p| json!({
                    "from": p.source.to_string(), "value": "<redacted>", "until": p.until.map(|t| t.rfc3339()),
                })).collect::<Vec<_>>(),
                "signing_key": self.callbacks.signing_key.as_ref().map(|k| json!({
                    "from": k.source.to_string(), "value": "<redacted>", "public_key": k.public_whpk(),
                })),
                "allowed_hosts": self.callbacks.allowed_hosts,
                "allowed_networks": self.callbacks.allowed_networks.iter().map(|n| n.to_string()).collect::<Vec<_>>(),
                "allowed_ports": self.callbacks.allowed_ports.as_ref().map(|ps| ps.iter().map(|r| if r.start() == r.end() { r.start().to_string() } else { format!("{}-{}", r.start(), r.end()) }).collect::<Vec<_>>()),
                "timeout": ms(self.callbacks.timeout),
                "retry_schedule": self.callbacks.retry_schedule.iter().map(|d| ms(*d)).collect::<Vec<_>>(),
                "include_upstream_body": self.callbacks.include_upstream_body,
            },
            "workers": {"polls_in_flight": self.workers.polls_in_flight, "deliveries_in_flight": self.workers.deliveries_in_flight,
                "polls_in_flight_per_upstream": self.workers.polls_in_flight_per_upstream, "deliveries_in_flight_per_host": self.workers.deliveries_in_flight_per_host},
            "upstreams": ups,
            "log": {"format": self.log.format.as_str()},
            "trace": crate::telemetry::config::describe(self.trace.as_ref()),
            "origins": self.origins,
        })
    }
}

/// Headers whose values are credentials whatever they are written as (any case).
const AUTH_HEADERS: [&str; 6] = [
    "authorization",
    "x-api-key",
    "x-goog-api-key",
    "api-key",
    "cookie",
    "proxy-authorization",
];

/// How `check` shows a header: a value expanded from `${VAR}` (it may hold a secret) as its
/// template, a credential header as `<redacted>`, anything else as written.
fn shown_header(name: &str, template: &str) -> String {
    if template.contains("${") {
        format!("<redacted, from {template}>")
    } else if AUTH_HEADERS.iter().any(|h| h.eq_ignore_ascii_case(name)) {
        "<redacted>".to_string()
    } else {
        template.to_string()
    }
}
