//! The transparent proxy, `ANY /proxy/{upstream}/{path}`: a stage beside ingest, the poller
//! and delivery (it uses [`crate::state`] and below, never the API; the API maps its
//! [`ProxyError`]). A legacy app changes only its SDK's base URL.
//!
//! Every request goes to the origin of the upstream's `base_url` + `/{path}?{query}`, with
//! its method, body and headers (minus hop-by-hop headers, `Host` and `Hookshim-*`), and the
//! answer comes back as it is, streamed both ways, after a slot of the upstream's budget
//! (the same limiter as polling; none within `proxy.max_wait` → `429`). On top of that
//! ([`recognise`]):
//! - a create the preset recognises registers the operation ([`crate::state::register`])
//!   before its 2xx answer goes back, with `Hookshim-Operation-Id` (or `Hookshim-Error` when
//!   registration failed: the app always gets the upstream's answer);
//! - a status read of a tracked operation is answered from the kept upstream body
//!   (`Hookshim-Cache: hit; age=<s>`) when it presents the creator's credential or hookshim's
//!   own ([`credential`]); otherwise it is forwarded and its answer kept.

pub mod credential;
pub mod recognise;

use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::Request;
use axum::http::header::{CONTENT_LENGTH, CONTENT_TYPE, HOST};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
use axum::response::Response;
use futures_util::StreamExt;
use serde_json::Value;

use self::recognise::{Create, IdFrom, Kind, match_path, recognise};
use crate::errors::error_chain;
use crate::operation::{Operation, UpstreamBody};
use crate::state::{Registration, SHUTDOWN_GRACE, Shim};
use crate::store::Registered;
use crate::upstream::UpstreamConfig;

/// The most of a recognised create's (or a forwarded status read's) answer read to find the
/// job; a larger answer passes through unread.
pub const MAX_READ_BODY: usize = 1 << 20;

/// Request headers for hookshim, never sent upstream.
pub const CALLBACK_URL_HEADER: &str = "hookshim-callback-url";
pub const METADATA_HEADER: &str = "hookshim-metadata";

/// Why the proxy answered by itself. Each says what to do.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("no upstream named {0:?} in the config")]
    UnknownUpstream(String),
    #[error(
        "upstream {0:?} does not have the proxy on; add `proxy = {{ enabled = true }}` to [upstreams.{0}]"
    )]
    NotEnabled(String),
    #[error(
        "upstream {upstream:?} has no request slot free within proxy.max_wait ({wait:?}): its budget (rate.per_second) is used up; retry after {retry_after}s"
    )]
    BudgetExhausted {
        upstream: String,
        wait: Duration,
        retry_after: u64,
    },
    #[error("cannot build the upstream URL from the request path: {0}")]
    BadPath(String),
    #[error("the upstream could not be reached: {0}")]
    Unreachable(String),
}

impl ProxyError {
    /// Seconds the app should wait before retrying (`Retry-After`), when there is such a wait.
    pub fn retry_after(&self) -> Option<u64> {
        match self {
            ProxyError::BudgetExhausted { retry_after, .. } => Some(*retry_after),
            _ => None,
        }
    }
}

/// The proxy's HTTP client: no system proxy, redirects returned as they are, no overall
/// timeout (a pass-through body streams for as long as it takes).
pub fn client() -> Result<reqwest::Client, reqwest::Error> {
    reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(Duration::from_secs(10))
        .build()
}

const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// `headers` without hop-by-hop headers (and those `Connection` names).
fn end_to_end(headers: &HeaderMap) -> HeaderMap {
    let named: Vec<String> = headers
        .get_all("connection")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|s| s.trim().to_ascii_lowercase())
        .collect();
    let mut out = HeaderMap::with_capacity(headers.len());
    for (k, v) in headers {
        let n = k.as_str();
        if HOP_BY_HOP.contains(&n) || named.iter().any(|x| x == n) {
            continue;
        }
        out.append(k.clone(), v.clone());
    }
    out
}

/// The headers that go upstream: end-to-end, without `Host` and `Hookshim-*`.
fn upstream_headers(headers: &HeaderMap) -> HeaderMap {
    let mut out = end_to_end(headers);
    out.remove(HOST);
    let ours: Vec<HeaderName> = out
        .keys()
        .filter(|k| k.as_str().starts_with("hookshim-"))
        .cloned()
        .collect();
    for k in ours {
        out.remove(k);
    }
    out
}

fn header_str<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// Answer one proxied request. `upstream` is the name in the URL; the rest of the path and the
/// query are read from the request's own (undecoded) URI.
pub async fn handle(shim: &Shim, upstream: &str, req: Request) -> Result<Response, ProxyError> {
    let up = shim
        .config
        .upstreams
        .get(upstream)
        .ok_or_else(|| ProxyError::UnknownUpstream(upstream.to_string()))?;
    if !up.proxy.enabled {
        return Err(ProxyError::NotEnabled(upstream.to_string()));
    }
    let raw = req.uri().path();
    let prefix = format!("/proxy/{upstream}/");
    let path = raw.strip_prefix(prefix.as_str()).unwrap_or("").to_string();
    let query = req.uri().query().map(str::to_string);
    let origin = up.base_url.origin().ascii_serialization();
    let target = match &query {
        Some(q) => format!("{origin}/{path}?{q}"),
        None => format!("{origin}/{path}"),
    };
    let url = reqwest::Url::parse(&target).map_err(|e| ProxyError::BadPath(e.to_string()))?;
    let method = req.method().clone();
    let matched = match_path(up.base_url.path(), &path);
    let kind = recognise(up, method.as_str(), matched, url.as_str());
    let streaming = query.as_deref().is_some_and(|q| q.contains("stream=true"));
    match kind {
        Kind::StatusRead(op) if !streaming => status_read(shim, up, &op, url, req).await,
        Kind::Create(c) => create(shim, up, c, url, req).await,
        _ => {
            let resp = forward(shim, up, url, req, None).await?;
            shim.metrics.proxy(&up.name, "pass_through");
            Ok(streamed(shim, resp))
        }
    }
}

/// Wait for a slot of the upstream's budget, at most `proxy.max_wait`.
async fn budget(shim: &Shim, up: &UpstreamConfig) -> Result<(), ProxyError> {
    let Some(limiter) = shim.limiters.get(&up.name) else {
        return Ok(());
    };
    let started = Instant::now();
    let wait = up.proxy.max_wait;
    match tokio::time::timeout(wait, limiter.acquire(shim.clock.as_ref())).await {
        Ok(()) => {
            if started.elapsed() >= Duration::from_millis(5) {
                shim.metrics.proxy(&up.name, "budget_wait");
            }
            Ok(())
        }
        Err(_) => {
            shim.metrics.proxy(&up.name, "budget_refused");
            let now = shim.clock.now();
            let paused = limiter.paused_until();
            let retry_after = if paused > now {
                now.until(paused).as_secs_f64().ceil() as u64
            } else {
                (1.0 / limiter.current_rate(now).max(0.001)).ceil() as u64
            };
            Err(ProxyError::BudgetExhausted {
                upstream: up.name.clone(),
                wait,
                retry_after: retry_after.max(1),
            })
        }
    }
}

/// Send the request upstream (after the budget): `body` when it was read already, else the
/// request's own body, streamed.
async fn forward(
    shim: &Shim,
    up: &UpstreamConfig,
    url: reqwest::Url,
    req: Request,
    body: Option<Bytes>,
) -> Result<reqwest::Response, ProxyError> {
    let (parts, stream) = req.into_parts();
    let mut headers = upstream_headers(&parts.headers);
    let body = match body {
        Some(b) => {
            headers.remove(CONTENT_LENGTH);
            reqwest::Body::from(b)
        }
        None => reqwest::Body::wrap_stream(stream.into_data_stream()),
    };
    send(shim, up, parts.method, url, headers, body).await
}

async fn send(
    shim: &Shim,
    up: &UpstreamConfig,
    method: Method,
    url: reqwest::Url,
    headers: HeaderMap,
    body: reqwest::Body,
) -> Result<reqwest::Response, ProxyError> {
    budget(shim, up).await?;
    let request = shim
        .proxy_http
        .request(method, url)
        .headers(headers)
        .body(body)
        .send();
    let resp = shim
        .unless_stopping(SHUTDOWN_GRACE, request)
        .await
        .ok_or_else(|| ProxyError::Unreachable("hookshim is shutting down".into()))?
        .map_err(|e| ProxyError::Unreachable(error_chain(&e)))?;
    let status = resp.status();
    if status == StatusCode::TOO_MANY_REQUESTS || status == StatusCode::SERVICE_UNAVAILABLE {
        // The upstream's own "slow down" holds for polling too (one budget per upstream).
        if let Some(l) = shim.limiters.get(&up.name) {
            let now = shim.clock.now();
            let hint = crate::schedule::parse_hint(resp.headers(), now, up.poll.hint_max);
            l.pause_until(now.plus(hint.unwrap_or(Duration::from_secs(1))));
            l.throttled(now);
        }
    }
    Ok(resp)
}

/// The upstream's answer, streamed back with its status and end-to-end headers.
fn streamed(shim: &Shim, resp: reqwest::Response) -> Response {
    let status = resp.status();
    let headers = end_to_end(resp.headers());
    let mut out = Response::new(Body::from_stream(body_stream(shim, resp)));
    *out.status_mut() = status;
    *out.headers_mut() = headers;
    out
}

/// The upstream's answer body as a stream that ends once shutdown has started and
/// [`SHUTDOWN_GRACE`] has passed, so a long download cannot hold the server's graceful stop.
fn body_stream(
    shim: &Shim,
    resp: reqwest::Response,
) -> impl futures_util::Stream<Item = Result<Bytes, reqwest::Error>> + Send + 'static {
    let stop = shim.shutdown.clone();
    let stopped = Box::pin(async move {
        stop.cancelled().await;
        tokio::time::sleep(SHUTDOWN_GRACE).await;
    });
    resp.bytes_stream().take_until(stopped)
}

/// The upstream's answer with a body already read (`first`) and possibly more to come.
fn rebuilt(status: StatusCode, headers: HeaderMap, body: Body) -> Response {
    let mut out = Response::new(body);
    *out.status_mut() = status;
    *out.headers_mut() = headers;
    out
}

/// Read at most `max` bytes of an answer: `Ok` with all of it, or `Err` with what was read
/// and the rest of the stream (to pass through as it is).
async fn read_bounded(shim: &Shim, resp: reqwest::Response, max: usize) -> Result<Bytes, Body> {
    let mut stream = body_stream(shim, resp);
    let mut buf: Vec<u8> = Vec::new();
    while let Some(chunk) = stream.next().await {
        match chunk {
            Ok(c) => {
                buf.extend_from_slice(&c);
                if buf.len() > max {
                    let head = futures_util::stream::once(async move {
                        Ok::<Bytes, reqwest::Error>(Bytes::from(buf))
                    });
                    return Err(Body::from_stream(head.chain(stream)));
                }
            }
            Err(e) => {
                // Hand the failure on to the app as a broken body, as a plain proxy would.
                let head = futures_util::stream::iter(vec![Ok(Bytes::from(buf)), Err(e)]);
                return Err(Body::from_stream(head));
            }
        }
    }
    Ok(Bytes::from(buf))
}

/// Read at most `max` bytes of a request body: `Ok` with all of it, or `Err` with a body that
/// gives back what was read and then the rest.
async fn read_request(body: Body, max: usize) -> Result<Bytes, Body> {
    let mut stream = body.into_data_stream();
    let mut buf: Vec<u8> = Vec::new();
    while let Some(chunk) = stream.next().await {
        match chunk {
            Ok(c) => {
                buf.extend_from_slice(&c);
                if buf.len() > max {
                    let head = futures_util::stream::once(async move {
                        Ok::<Bytes, axum::Error>(Bytes::from(buf))
                    });
                    return Err(Body::from_stream(head.chain(stream)));
                }
            }
            Err(e) => {
                let head = futures_util::stream::iter(vec![Ok(Bytes::from(buf)), Err(e)]);
                return Err(Body::from_stream(head));
            }
        }
    }
    Ok(Bytes::from(buf))
}

/// Whether a content type is JSON (`application/json`, `application/problem+json`, ...); an
/// answer without one is taken as JSON.
fn is_json(content_type: Option<&str>) -> bool {
    content_type.is_none_or(|c| c.to_ascii_lowercase().contains("json"))
}

fn content_type(headers: &HeaderMap) -> Option<String> {
    header_str(headers, CONTENT_TYPE.as_str()).map(str::to_string)
}

/// A recognised create: forward it; on a 2xx answer register the job before answering.
async fn create(
    shim: &Shim,
    up: &UpstreamConfig,
    rule: Create<'_>,
    url: reqwest::Url,
    req: Request,
) -> Result<Response, ProxyError> {
    let headers = req.headers().clone();
    let mut read_body = None;
    let mut req = req;
    if rule.needs_background {
        let (parts, body) = req.into_parts();
        let bytes = match read_request(body, shim.config.server.max_body).await {
            Ok(b) => b,
            Err(whole) => {
                // Larger than server.max_body: not a background create hookshim reads; it
                // passes through as it is.
                let req = Request::from_parts(parts, whole);
                let resp = forward(shim, up, url, req, None).await?;
                shim.metrics.proxy(&up.name, "pass_through");
                return Ok(streamed(shim, resp));
            }
        };
        let background = serde_json::from_slice::<Value>(&bytes)
            .ok()
            .and_then(|v| v.get("background").and_then(Value::as_bool))
            .unwrap_or(false);
        req = Request::from_parts(parts, Body::empty());
        if !background {
            let resp = forward(shim, up, url, req, Some(bytes)).await?;
            shim.metrics.proxy(&up.name, "pass_through");
            return Ok(streamed(shim, resp));
        }
        read_body = Some(bytes);
    }
    if matches!(rule.id, IdFrom::Field(_)) {
        // The answer is read here: ask for it unencoded.
        req.headers_mut().remove("accept-encoding");
    }
    let resp = forward(shim, up, url, req, read_body).await?;
    let status = resp.status();
    if !status.is_success() {
        shim.metrics.proxy(&up.name, "pass_through");
        return Ok(streamed(shim, resp));
    }
    let mut out_headers = end_to_end(resp.headers());
    let (operation, body, kept) = match rule.id {
        IdFrom::Header(names) => {
            // In the form a later GET of it takes (`url.as_str()`), so the two meet.
            let op = names
                .iter()
                .find_map(|n| header_str(resp.headers(), n))
                .map(|v| reqwest::Url::parse(v).map_or(v.to_string(), |u| u.to_string()));
            if op.is_none() {
                // Not an asynchronous operation after all.
                shim.metrics.proxy(&up.name, "pass_through");
                return Ok(streamed(shim, resp));
            }
            (op, Body::from_stream(body_stream(shim, resp)), None)
        }
        IdFrom::Field(pointer) => {
            let ct = content_type(resp.headers());
            if !is_json(ct.as_deref()) {
                // E.g. a background response created with `stream: true` (server-sent
                // events): it streams to the app at once, unread.
                let body = Body::from_stream(body_stream(shim, resp));
                return Ok(unregistered(
                    shim,
                    up,
                    status,
                    out_headers,
                    body,
                    "create_response_not_json",
                    "the create answer is not JSON (a stream?); register the job with POST /v1/operations",
                ));
            }
            match read_bounded(shim, resp, MAX_READ_BODY).await {
                Err(rest) => {
                    return Ok(unregistered(
                        shim,
                        up,
                        status,
                        out_headers,
                        rest,
                        "create_response_too_large",
                        "the create answer is larger than 1 MiB; register the job with POST /v1/operations",
                    ));
                }
                Ok(bytes) => {
                    let id = serde_json::from_slice::<Value>(&bytes)
                        .ok()
                        .and_then(|v| v.pointer(pointer).cloned())
                        .and_then(|v| match v {
                            Value::String(s) if !s.is_empty() => Some(s),
                            Value::Number(n) => Some(n.to_string()),
                            _ => None,
                        });
                    let kept = rule
                        .returns_job
                        .then(|| UpstreamBody::new(status.as_u16(), ct, bytes.to_vec()));
                    (id, Body::from(bytes), kept)
                }
            }
        }
    };
    let Some(operation) = operation else {
        let msg = "the create answer has no job id where the preset expects it";
        return Ok(unregistered(
            shim,
            up,
            status,
            out_headers,
            body,
            "operation_id_missing",
            msg,
        ));
    };
    let metadata = match header_str(&headers, METADATA_HEADER) {
        None => None,
        Some(m) => match serde_json::from_str::<Value>(m) {
            Ok(v) => Some(v),
            Err(e) => {
                let msg = format!("Hookshim-Metadata is not JSON ({e})");
                return Ok(unregistered(
                    shim,
                    up,
                    status,
                    out_headers,
                    body,
                    "invalid_metadata",
                    &msg,
                ));
            }
        },
    };
    let callback_url = header_str(&headers, CALLBACK_URL_HEADER)
        .map(str::to_string)
        .or_else(|| up.proxy.callback_url.clone());
    let credential = credential::presented(up, &headers)
        .map(|(_, v)| credential::keyed_hash(shim.callback_keys().current(), &up.name, v));
    let registration = Registration {
        upstream: up.name.clone(),
        operation,
        callback_url,
        metadata,
        deadline: None,
        upstream_body: kept,
        proxy_credential: credential,
    };
    match crate::state::register(shim, registration).await {
        Ok(Registered::Created { op, .. } | Registered::Existing(op)) => {
            if let Ok(v) = HeaderValue::from_str(op.id.as_str()) {
                out_headers.insert("hookshim-operation-id", v);
            }
            shim.metrics.proxy(&up.name, "create_registered");
            Ok(rebuilt(status, out_headers, body))
        }
        Err(e) => {
            let msg = e.to_string();
            Ok(unregistered(
                shim,
                up,
                status,
                out_headers,
                body,
                e.code(),
                &msg,
            ))
        }
    }
}

/// The upstream's answer to a create that could not be registered, with `Hookshim-Error`.
fn unregistered(
    shim: &Shim,
    up: &UpstreamConfig,
    status: StatusCode,
    mut headers: HeaderMap,
    body: Body,
    code: &'static str,
    message: &str,
) -> Response {
    tracing::warn!(upstream = %up.name, code, message, "a create through the proxy was not registered; the app got the upstream's answer");
    shim.metrics.proxy(&up.name, "create_unregistered");
    headers.insert("hookshim-error", HeaderValue::from_static(code));
    rebuilt(status, headers, body)
}

/// A status read: from the kept body when allowed, else forwarded (and its answer kept).
async fn status_read(
    shim: &Shim,
    up: &UpstreamConfig,
    op: &str,
    url: reqwest::Url,
    mut req: Request,
) -> Result<Response, ProxyError> {
    let tracked = match crate::state::lookup(shim, &up.name, op).await {
        Ok(t) => t,
        Err(e) => {
            // Without the store the read still works: forwarded.
            tracing::warn!(upstream = %up.name, error = %e, "store unreadable; forwarding a status read");
            None
        }
    };
    let Some(tracked) = tracked else {
        let resp = forward(shim, up, url, req, None).await?;
        shim.metrics.proxy(&up.name, "pass_through");
        return Ok(streamed(shim, resp));
    };
    if let Some(hit) = cached(shim, up, &tracked, req.headers()) {
        shim.metrics.proxy(&up.name, "cache_hit");
        return Ok(hit);
    }
    req.headers_mut().remove("accept-encoding");
    let sent = shim.clock.now();
    let resp = forward(shim, up, url, req, None).await?;
    shim.metrics.proxy(&up.name, "forwarded");
    let status = resp.status();
    let headers = end_to_end(resp.headers());
    if !status.is_success() {
        return Ok(streamed(shim, resp));
    }
    let ct = content_type(resp.headers());
    if !is_json(ct.as_deref()) {
        return Ok(streamed(shim, resp));
    }
    match read_bounded(shim, resp, MAX_READ_BODY).await {
        Err(rest) => Ok(rebuilt(status, headers, rest)),
        Ok(bytes) => {
            if serde_json::from_slice::<Value>(&bytes).is_ok() {
                let kept = UpstreamBody::new(status.as_u16(), ct, bytes.to_vec());
                let max = shim.config.store.max_upstream_body;
                let now = shim.clock.now();
                if let Err(e) = shim
                    .store
                    .update(&tracked.id, &|o| {
                        // A read sent before the end must not replace the terminal body.
                        if !o.may_keep_body_sent_at(sent) {
                            return false;
                        }
                        o.keep_body(&kept, max, now);
                        true
                    })
                    .await
                {
                    tracing::warn!(op = %tracked.id, error = %e, "could not keep a proxied status body");
                }
            }
            Ok(rebuilt(status, headers, Body::from(bytes)))
        }
    }
}

/// The kept body as the answer to a status read, when there is one and the request may see it.
fn cached(
    shim: &Shim,
    up: &UpstreamConfig,
    op: &Operation,
    headers: &HeaderMap,
) -> Option<Response> {
    let (body, meta) = op.servable_body()?;
    // Hashes made before a rotation still match while the old secret is configured.
    let keys = shim.callback_keys();
    let keys: Vec<&[u8]> = keys.secrets.iter().map(|(s, _)| s.0.as_slice()).collect();
    if !credential::may_read(up, &keys, op.proxy_credential.as_deref(), headers) {
        return None;
    }
    let bytes = serde_json::to_vec(body).ok()?;
    let age = shim.clock.now().0.saturating_sub(meta.at.0) / 1000;
    let status = StatusCode::from_u16(meta.status).unwrap_or(StatusCode::OK);
    let mut out = rebuilt(status, HeaderMap::new(), Body::from(bytes));
    let h = out.headers_mut();
    let ct = meta.content_type.as_deref().unwrap_or("application/json");
    h.insert(
        CONTENT_TYPE,
        HeaderValue::from_str(ct).unwrap_or(HeaderValue::from_static("application/json")),
    );
    if let Ok(v) = HeaderValue::from_str(&format!("hit; age={age}")) {
        h.insert("hookshim-cache", v);
    }
    if let Ok(v) = HeaderValue::from_str(op.id.as_str()) {
        h.insert("hookshim-operation-id", v);
    }
    Some(out)
}
