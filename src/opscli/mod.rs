//! `hookshim ops`: the operator's command line against a running instance, over its HTTP API
//! only (`--url`, the token from `HOOKSHIM_TOKEN` or `HOOKSHIM_API_TOKEN`). `list`, `show`,
//! `redeliver` (one, several, or in bulk by filter and time range), `delete`, `stats`; human
//! tables by default ([`render`]), the API's JSON with `--json`. Every answer read is capped
//! ([`MAX_ANSWER`]) and every request bounded by a timeout.

mod render;

use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Subcommand};
use serde_json::{Value, json};

/// Largest answer read from hookshim (a page of 1000 records fits many times over).
pub const MAX_ANSWER: usize = 64 * 1024 * 1024;
/// Per-request timeout.
pub const TIMEOUT: Duration = Duration::from_secs(30);

/// Where and how to talk to hookshim.
#[derive(Args, Debug)]
pub struct OpsArgs {
    /// The instance's API listener (`server.listen`).
    #[arg(long, env = "HOOKSHIM_URL", default_value = "http://127.0.0.1:8680")]
    pub url: String,
    /// Print the API's JSON instead of tables.
    #[arg(long, global = true)]
    pub json: bool,
    #[command(subcommand)]
    pub command: OpsCommand,
}

#[derive(Subcommand, Debug)]
pub enum OpsCommand {
    /// List operations, oldest first.
    List {
        /// pending, running, succeeded, failed, cancelled, expired, timed_out
        #[arg(long)]
        status: Option<String>,
        #[arg(long)]
        upstream: Option<String>,
        /// The terminal callback's state: none, pending, failed, delivered
        #[arg(long)]
        delivery: Option<String>,
        /// Page size, 1..=1000.
        #[arg(long, default_value_t = 100)]
        limit: usize,
        /// Continue after this id (printed at the end of a full page).
        #[arg(long)]
        cursor: Option<String>,
    },
    /// One operation: its record and timeline (registration, polls, webhook, end, attempts).
    Show { id: String },
    /// Send terminal callbacks again: the ids given, or (with no id) every one matching the
    /// filters, at most --limit per call.
    Redeliver {
        ids: Vec<String>,
        /// failed (the default for bulk) or delivered (a replay).
        #[arg(long)]
        delivery: Option<String>,
        #[arg(long)]
        upstream: Option<String>,
        /// A terminal status.
        #[arg(long)]
        status: Option<String>,
        /// RFC 3339: operations that ended at or after it.
        #[arg(long)]
        since: Option<String>,
        /// RFC 3339: operations that ended before it.
        #[arg(long)]
        until: Option<String>,
        #[arg(long)]
        limit: Option<usize>,
        #[arg(long)]
        cursor: Option<String>,
    },
    /// Stop tracking operations (no callback).
    Delete {
        #[arg(required = true)]
        ids: Vec<String>,
    },
    /// Operations by status, callbacks by state, and each upstream's budget and current rate.
    Stats,
}

/// The token: `HOOKSHIM_TOKEN`, else `HOOKSHIM_API_TOKEN` (the default `server.api_token_env`).
fn token() -> Option<String> {
    ["HOOKSHIM_TOKEN", "HOOKSHIM_API_TOKEN"]
        .iter()
        .find_map(|k| std::env::var(k).ok().filter(|v| !v.is_empty()))
}

/// A failed call: what to print and the exit code (1: hookshim said no; 2: could not ask).
#[derive(Debug)]
pub struct Failure {
    pub message: String,
    pub code: u8,
}

struct Client {
    http: reqwest::Client,
    base: String,
    token: Option<String>,
}

impl Client {
    fn new(url: &str) -> Result<Client, Failure> {
        let http = reqwest::Client::builder()
            .timeout(TIMEOUT)
            .no_proxy()
            .build()
            .map_err(|e| usage(format!("cannot build the HTTP client: {e}")))?;
        let base = url.trim_end_matches('/').to_string();
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            return Err(usage(format!(
                "--url {url:?}: write the API listener as http://host:port"
            )));
        }
        Ok(Client {
            http,
            base,
            token: token(),
        })
    }

    /// Call the API; the answer's JSON, or a [`Failure`] naming the error code and message.
    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        query: &[(&str, String)],
        body: Option<Value>,
    ) -> Result<(u16, Value), Failure> {
        let mut url = reqwest::Url::parse(&format!("{}{path}", self.base))
            .map_err(|e| usage(format!("--url {}: {e}", self.base)))?;
        if !query.is_empty() {
            url.query_pairs_mut().extend_pairs(query);
        }
        let mut req = self.http.request(method, url);
        if let Some(t) = &self.token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.map_err(|e| Failure {
            message: format!(
                "cannot reach hookshim at {}: {}",
                self.base,
                crate::errors::error_chain(&e)
            ),
            code: 2,
        })?;
        let status = resp.status().as_u16();
        let bytes = crate::body::read_capped(resp, MAX_ANSWER)
            .await
            .map_err(|e| Failure {
                message: format!("reading hookshim's answer: {e}"),
                code: 2,
            })?;
        let value: Value = serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()));
        if status >= 400 {
            let code = value["error"]["code"].as_str().unwrap_or("error");
            let message = value["error"]["message"].as_str().unwrap_or("");
            let hint = if status == 401 {
                " (set HOOKSHIM_TOKEN to the instance's API token)"
            } else {
                ""
            };
            return Err(Failure {
                message: format!("{status} {code}: {message}{hint}"),
                code: 1,
            });
        }
        Ok((status, value))
    }

    async fn text(&self, path: &str) -> Result<String, Failure> {
        let resp = self
            .http
            .get(format!("{}{path}", self.base))
            .send()
            .await
            .map_err(|e| Failure {
                message: format!("cannot reach hookshim at {}: {e}", self.base),
                code: 2,
            })?;
        let bytes = crate::body::read_capped(resp, MAX_ANSWER)
            .await
            .map_err(|e| Failure {
                message: format!("reading hookshim's answer: {e}"),
                code: 2,
            })?;
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    }
}

fn usage(message: String) -> Failure {
    Failure { message, code: 2 }
}

fn opt(query: &mut Vec<(&'static str, String)>, name: &'static str, v: &Option<String>) {
    if let Some(v) = v {
        query.push((name, v.clone()));
    }
}

/// Run one `hookshim ops` command; prints its output and returns the exit code.
pub async fn run(args: OpsArgs) -> ExitCode {
    match execute(&args).await {
        Ok(out) => {
            print!("{out}");
            ExitCode::SUCCESS
        }
        Err(f) => {
            eprintln!("error: {}", f.message);
            ExitCode::from(f.code)
        }
    }
}

/// Run one command and return what it prints.
pub async fn execute(args: &OpsArgs) -> Result<String, Failure> {
    let client = Client::new(&args.url)?;
    let pretty = |v: &Value| serde_json::to_string_pretty(v).unwrap_or_default() + "\n";
    match &args.command {
        OpsCommand::List {
            status,
            upstream,
            delivery,
            limit,
            cursor,
        } => {
            let mut q = vec![("limit", limit.to_string())];
            opt(&mut q, "status", status);
            opt(&mut q, "upstream", upstream);
            opt(&mut q, "delivery", delivery);
            opt(&mut q, "cursor", cursor);
            let (_, page) = client
                .call(reqwest::Method::GET, "/v1/operations", &q, None)
                .await?;
            Ok(if args.json {
                pretty(&page)
            } else {
                render::list(&page)
            })
        }
        OpsCommand::Show { id } => {
            let (_, op) = client
                .call(reqwest::Method::GET, &op_path(id)?, &[], None)
                .await?;
            Ok(if args.json {
                pretty(&op)
            } else {
                render::show(&op)
            })
        }
        OpsCommand::Delete { ids } => {
            let mut out = String::new();
            let mut records = Vec::new();
            for id in ids {
                let (_, op) = client
                    .call(reqwest::Method::DELETE, &op_path(id)?, &[], None)
                    .await?;
                out.push_str(&format!(
                    "deleted {} ({} {}, was {})\n",
                    op["id"].as_str().unwrap_or(id),
                    op["upstream"].as_str().unwrap_or(""),
                    op["operation"].as_str().unwrap_or(""),
                    op["status"].as_str().unwrap_or("")
                ));
                records.push(op);
            }
            Ok(if args.json {
                pretty(&Value::Array(records))
            } else {
                out
            })
        }
        OpsCommand::Redeliver {
            ids,
            delivery,
            upstream,
            status,
            since,
            until,
            limit,
            cursor,
        } => {
            if !ids.is_empty() {
                let filters = [delivery, upstream, status, since, until, cursor];
                if filters.iter().any(|f| f.is_some()) || limit.is_some() {
                    return Err(usage(
                        "redeliver: give ids, or filters for a bulk redelivery, not both".into(),
                    ));
                }
                let mut out = String::new();
                let mut records = Vec::new();
                for id in ids {
                    let path = format!("{}/redeliver", op_path(id)?);
                    let (_, op) = client
                        .call(reqwest::Method::POST, &path, &[], Some(json!({})))
                        .await?;
                    out.push_str(&format!(
                        "redelivering {} to {} (attempts so far: {})\n",
                        op["id"].as_str().unwrap_or(id),
                        op["callback_url"].as_str().unwrap_or("?"),
                        op["delivery"]["attempts"]
                    ));
                    records.push(op);
                }
                return Ok(if args.json {
                    pretty(&Value::Array(records))
                } else {
                    out
                });
            }
            let mut body = serde_json::Map::new();
            for (k, v) in [
                ("delivery", delivery),
                ("upstream", upstream),
                ("status", status),
                ("completed_after", since),
                ("completed_before", until),
                ("cursor", cursor),
            ] {
                if let Some(v) = v {
                    body.insert(k.into(), json!(v));
                }
            }
            if let Some(n) = limit {
                body.insert("limit".into(), json!(n));
            }
            let (_, done) = client
                .call(
                    reqwest::Method::POST,
                    "/v1/redeliver",
                    &[],
                    Some(Value::Object(body)),
                )
                .await?;
            Ok(if args.json {
                pretty(&done)
            } else {
                render::bulk(&done)
            })
        }
        OpsCommand::Stats => {
            let (_, ups) = client
                .call(reqwest::Method::GET, "/v1/upstreams", &[], None)
                .await?;
            let metrics = client.text("/metrics").await?;
            let stats = render::stats_value(&ups, &metrics);
            Ok(if args.json {
                pretty(&stats)
            } else {
                render::stats(&stats)
            })
        }
    }
}

/// `/v1/operations/<id>`, the id percent-encoded as one path segment.
fn op_path(id: &str) -> Result<String, Failure> {
    if id.is_empty() {
        return Err(usage("an operation id is empty".into()));
    }
    let enc = percent_encoding::utf8_percent_encode(id, percent_encoding::NON_ALPHANUMERIC);
    Ok(format!("/v1/operations/{enc}"))
}
