//! Wiring: [`start`] opens the store, builds the shared state ([`crate::state::Shim`]), rebuilds
//! the schedule and outbox from the store, starts the loops (polls, deliveries, purge, group
//! commit) and the HTTP server; [`Running::stop`] shuts down in order (stop accepting → finish
//! in-flight work → flush → return). Nothing here decides anything about an operation: the
//! stages do, through the state module below them.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::clock::{Clock, SystemClock, Timestamp};
use crate::config::{Backend, Config};
use crate::metrics::Metrics;
use crate::schedule::{DueQueue, GroupSlots, QueueId, UpstreamLimiter};
use crate::state::{EARLY_WEBHOOK_WINDOW, INBOX_RETENTION, Shim};
use crate::store::{GroupCommit, PgStore, SledStore, Store};
use crate::values::Secret;

/// How often old webhook ids and kept webhooks are purged.
const PURGE_EVERY: Duration = Duration::from_secs(3600);
/// Overdue polls found at start are spread over at most this long.
const RESTART_SPREAD_MAX: Duration = Duration::from_secs(30);

mod replicas;
mod retention;

pub use replicas::{CLAIM_BATCH, CLAIM_EVERY, HEARTBEAT_EVERY};
use replicas::{budget_loop, claim_loop, share_budgets};
pub use retention::{PURGE_BATCH, purge_pass};

/// Options the binary and tests pass besides the config.
pub struct StartOptions {
    pub clock: Arc<dyn Clock>,
    /// Use this listener instead of binding `server.listen` (tests bind port 0).
    pub listener: Option<std::net::TcpListener>,
    /// Use this listener instead of binding `server.webhook_listen`, when that is configured.
    pub webhook_listener: Option<std::net::TcpListener>,
}

impl Default for StartOptions {
    fn default() -> Self {
        StartOptions {
            clock: Arc::new(SystemClock),
            listener: None,
            webhook_listener: None,
        }
    }
}

/// A started service.
pub struct Running {
    pub addr: SocketAddr,
    /// The public listener's address, when `server.webhook_listen` is configured.
    pub webhook_addr: Option<SocketAddr>,
    pub shim: Arc<Shim>,
    server: tokio::task::JoinHandle<std::io::Result<()>>,
    webhook_server: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
    workers: TaskTracker,
    flusher: tokio::task::JoinHandle<()>,
    flusher_stop: CancellationToken,
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("{0}")]
    Store(#[from] crate::store::StoreError),
    #[error("{0}")]
    Secret(String),
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: String,
        source: std::io::Error,
    },
    #[error("cannot build the HTTP client: {0}")]
    Http(String),
}

/// Open the store, rebuild the schedule, start workers and the HTTP server.
pub async fn start(config: Config, opts: StartOptions) -> Result<Running, StartError> {
    // Take SIGHUP over before anything listens: tokio keeps the handler for the life of the
    // process, so a SIGHUP between here and [`Running::run_until_signal`] no longer kills it.
    #[cfg(unix)]
    drop(tokio::signal::unix::signal(
        tokio::signal::unix::SignalKind::hangup(),
    ));
    let metrics = Metrics::new();
    let store: Arc<dyn Store> = match &config.store.backend {
        Backend::Sled => {
            let store_path = config.store.path.clone();
            let cache = config.store.cache_bytes;
            Arc::new(
                tokio::task::spawn_blocking(move || SledStore::open(&store_path, cache))
                    .await
                    .map_err(|e| StartError::Secret(e.to_string()))??,
            )
        }
        Backend::Postgres(pg) => {
            Arc::new(PgStore::open(pg, opts.clock.clone(), metrics.store.clone()).await?)
        }
    };
    let callbacks = with_shared_secret(&config, store.as_ref()).await?;
    let (callback_keys, secret_path) =
        crate::delivery::callback_keys(&callbacks, &config.store.path)
            .map_err(StartError::Secret)?;
    log_callback_keys(&config, secret_path.as_deref());

    // No proxy from the environment (HTTP_PROXY, ALL_PROXY, ...): the upstream's credentials
    // and the callbacks go straight to their hosts, never to a proxy (the JWKS fetch shares
    // this client).
    let upstream_http = reqwest::Client::builder()
        .no_proxy()
        .redirect(same_origin_redirects(3))
        .user_agent(concat!("hookshim/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| StartError::Http(e.to_string()))?;
    // Callbacks connect only to addresses the resolver vetted; no proxy (it would resolve the
    // name itself, out of the vetting's reach).
    let callback_http = reqwest::Client::builder()
        .dns_resolver(crate::delivery::vet::VettingResolver::new(
            &config.callbacks.allowed_hosts,
            &config.callbacks.allowed_networks,
            Arc::new(crate::delivery::vet::SystemLookup),
        ))
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(config.callbacks.timeout)
        .user_agent(concat!("hookshim/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| StartError::Http(e.to_string()))?;
    let proxy_http = crate::proxy::client().map_err(|e| StartError::Http(e.to_string()))?;

    let limiters = config
        .upstreams
        .iter()
        .map(|(n, u)| (n.clone(), UpstreamLimiter::new(u.rate, opts.clock.now())))
        .collect();
    let commit = GroupCommit::new(store.clone());
    let credentials = crate::credentials::Credentials::new(
        config
            .upstreams
            .iter()
            .filter_map(|(n, u)| u.auth.as_ref().map(|a| (n.as_str(), a))),
        metrics.credential_refreshes.clone(),
        upstream_http.clone(),
    );
    let learned = crate::state::Learned::load(store.as_ref()).await;
    let shim = Arc::new(Shim {
        store,
        commit: commit.clone(),
        polls: DueQueue::new(),
        deliveries: DueQueue::new(),
        limiters,
        poll_slots: GroupSlots::new(config.workers.polls_in_flight_per_upstream),
        delivery_slots: GroupSlots::new(config.workers.deliveries_in_flight_per_host),
        jwks: crate::ingest::jwks::JwksCache::new(upstream_http.clone()),
        upstream_http,
        callback_http,
        proxy_http,
        metrics,
        clock: opts.clock,
        callback_keys: std::sync::RwLock::new(Arc::new(callback_keys)),
        shutdown: CancellationToken::new(),
        workers_running: AtomicBool::new(false),
        reads: Default::default(),
        allowed_hosts: std::sync::RwLock::new(Arc::new(config.callbacks.allowed_hosts.clone())),
        credentials,
        learned,
        config,
    });

    shim.metrics
        .init_series(shim.config.upstreams.keys().map(String::as_str));
    rebuild(&shim).await?;

    let flusher_stop = CancellationToken::new();
    let flusher = tokio::spawn(commit.run(flusher_stop.clone()));
    let workers = TaskTracker::new();
    workers.spawn(dispatch(
        shim.clone(),
        workers.clone(),
        |s| &s.polls,
        shim.config.workers.polls_in_flight,
        |s, id| async move { crate::poller::poll_once(&s, id).await },
    ));
    workers.spawn(dispatch(
        shim.clone(),
        workers.clone(),
        |s| &s.deliveries,
        shim.config.workers.deliveries_in_flight,
        |s, key| async move { crate::delivery::deliver_once(&s, key).await },
    ));
    workers.spawn(purge_loop(shim.clone()));
    workers.spawn(retention::retention_loop(shim.clone()));
    if shim.store.shares_work() {
        // The first beat before any request goes out: the share is right from the start.
        share_budgets(&shim).await;
        workers.spawn(claim_loop(shim.clone()));
        workers.spawn(budget_loop(shim.clone()));
    }
    // Fetch every upstream credential once now, so a broken one shows in /readyz and the log
    // before a poll needs it (a poll meanwhile waits for the same fetch, not a second one).
    let warm = shim.clone();
    workers.spawn(async move {
        let _ = warm
            .unless_stopping(Duration::ZERO, warm.credentials.warm())
            .await;
    });
    shim.workers_running.store(true, Ordering::SeqCst);

    let server_cfg = &shim.config.server;
    let (listener, addr) = listen(opts.listener, server_cfg.listen).await?;
    let server = tokio::spawn(serve(
        listener,
        crate::api::router(shim.clone()),
        ServeLimits {
            max_connections: server_cfg.max_connections,
            header_read_timeout: server_cfg.header_read_timeout,
            per_ip: None,
        },
        shim.shutdown.clone(),
    ));
    let (webhook_addr, webhook_server) = match server_cfg.webhook_listen {
        None => (None, None),
        Some(at) => {
            let (listener, addr) = listen(opts.webhook_listener, at).await?;
            let server = tokio::spawn(serve(
                listener,
                crate::api::webhook_router(shim.clone()),
                ServeLimits {
                    max_connections: server_cfg.max_connections,
                    header_read_timeout: server_cfg.header_read_timeout,
                    per_ip: Some(server_cfg.max_connections_per_ip),
                },
                shim.shutdown.clone(),
            ));
            tracing::info!(%addr, "public listener: webhooks and /healthz only");
            (Some(addr), Some(server))
        }
    };
    tracing::info!(%addr, upstreams = shim.config.upstreams.len(), "hookshim listening");
    Ok(Running {
        addr,
        webhook_addr,
        shim,
        server,
        webhook_server,
        workers,
        flusher,
        flusher_stop,
    })
}

/// `[callbacks]` with the current secret every replica on a shared store uses, when none is
/// configured (PostgreSQL: generated by the first replica and kept in the database). Unchanged
/// otherwise (sled generates one in its data directory).
async fn with_shared_secret(
    config: &Config,
    store: &dyn Store,
) -> Result<crate::config::CallbackConfig, StartError> {
    let mut callbacks = config.callbacks.clone();
    if callbacks.secret.is_some() || config.store.backend == Backend::Sled {
        return Ok(callbacks);
    }
    let candidate = Secret(rand::random::<[u8; 32]>().to_vec()).to_whsec();
    if let Some(shared) = store.shared_secret(&candidate).await? {
        let secret = Secret::from_whsec(&shared)
            .map_err(|e| StartError::Secret(format!("the callback secret in the database {e}")))?;
        tracing::info!(
            "callback signing secret kept in the database, shared by every replica (set {} to use your own)",
            callbacks.secret_env
        );
        callbacks.secret = Some(secret);
    }
    Ok(callbacks)
}

/// Use the given listener (tests bind port 0) or bind `at`.
async fn listen(
    given: Option<std::net::TcpListener>,
    at: SocketAddr,
) -> Result<(TcpListener, SocketAddr), StartError> {
    let err = |addr: String| move |source| StartError::Listen { addr, source };
    let listener = match given {
        Some(l) => {
            l.set_nonblocking(true)
                .map_err(err("given listener".into()))?;
            TcpListener::from_std(l).map_err(err("given listener".into()))?
        }
        None => TcpListener::bind(at).await.map_err(err(at.to_string()))?,
    };
    let addr = listener.local_addr().map_err(err("listener".into()))?;
    Ok((listener, addr))
}

/// What clients may hold of one listener.
struct ServeLimits {
    max_connections: usize,
    header_read_timeout: Duration,
    /// Connections one client address may hold open at once (the public listener).
    per_ip: Option<usize>,
}

/// Open connections per client address, for [`ServeLimits::per_ip`].
struct PerIp {
    limit: usize,
    open: std::sync::Mutex<HashMap<std::net::IpAddr, usize>>,
}

/// One open connection counted against its address; uncounted when dropped.
struct IpSlot {
    table: Arc<PerIp>,
    ip: std::net::IpAddr,
}

impl PerIp {
    fn take(self: &Arc<PerIp>, ip: std::net::IpAddr) -> Option<IpSlot> {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        let n = open.entry(ip).or_insert(0);
        if *n >= self.limit {
            return None;
        }
        *n += 1;
        Some(IpSlot {
            table: self.clone(),
            ip,
        })
    }
}

impl Drop for IpSlot {
    fn drop(&mut self) {
        let mut open = self.table.open.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = open.get_mut(&self.ip) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                open.remove(&self.ip);
            }
        }
    }
}

/// How long accepting pauses after `accept` fails (e.g. at the file-descriptor limit).
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);

/// Serve `app` on `listener` (HTTP/1.1, hyper) until `stop`: at most `max_connections` at once
/// (further connections wait in the listen backlog, costing no descriptor here), and a
/// connection that has not sent a whole request head within `header_read_timeout` — a new one
/// (slowloris) or an idle keep-alive one — is closed. On `stop`: no more accepts, connections
/// finish their request in progress and close; returns when all have.
async fn serve(
    listener: TcpListener,
    app: axum::Router,
    limits: ServeLimits,
    stop: CancellationToken,
) -> std::io::Result<()> {
    use hyper_util::rt::{TokioIo, TokioTimer};
    use hyper_util::service::TowerToHyperService;

    // HTTP/1.1 only (as before), with hyper's own connection builder: hyper-util's `auto`
    // builder first reads the connection preface to pick a protocol, with no timeout, so an
    // idle connection would never reach the header-read timeout.
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .keep_alive(true);
    let builder = Arc::new(builder);
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let per_ip = limits.per_ip.map(|limit| {
        Arc::new(PerIp {
            limit,
            open: Default::default(),
        })
    });
    let connections = TaskTracker::new();
    loop {
        let permit = tokio::select! {
            p = slots.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
            _ = stop.cancelled() => break,
        };
        let (sock, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(accepted) => accepted,
                Err(e) => {
                    tracing::warn!(error = %e, "accepting a connection failed; pausing accepts briefly");
                    tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                    continue;
                }
            },
            _ = stop.cancelled() => break,
        };
        // Answers go out as they are written: a streamed body (the proxy's pass-through) is
        // several writes, and with Nagle's algorithm each small one after the first would wait
        // for the client's delayed ACK (~40 ms).
        if let Err(e) = sock.set_nodelay(true) {
            tracing::debug!(error = %e, "cannot set TCP_NODELAY on a connection");
        }
        let ip_slot = match &per_ip {
            None => None,
            Some(table) => match table.take(peer.ip()) {
                Some(slot) => Some(slot),
                None => {
                    // Over this address's share: closed at once, the slot stays free for others.
                    tracing::debug!(peer = %peer.ip(), "connection refused: too many open from this address");
                    drop(sock);
                    continue;
                }
            },
        };
        let (builder, app, stop) = (builder.clone(), app.clone(), stop.clone());
        connections.spawn(async move {
            let _permit = permit;
            let _ip_slot = ip_slot;
            let service = TowerToHyperService::new(app);
            let conn = builder.serve_connection(TokioIo::new(sock), service);
            tokio::pin!(conn);
            let ended = tokio::select! {
                r = conn.as_mut() => r,
                _ = stop.cancelled() => {
                    conn.as_mut().graceful_shutdown();
                    conn.await
                }
            };
            if let Err(e) = ended {
                tracing::debug!(error = %e, "connection ended with an error");
            }
        });
    }
    drop(listener);
    connections.close();
    connections.wait().await;
    Ok(())
}

/// Follow at most `max` redirects, each to the origin (scheme, host, port) it came from; a
/// redirect elsewhere is not followed (the 3xx is a transient answer, never terminal).
fn same_origin_redirects(max: usize) -> reqwest::redirect::Policy {
    reqwest::redirect::Policy::custom(move |attempt| {
        let origin = |u: &reqwest::Url| {
            (
                u.scheme().to_string(),
                u.host_str().map(str::to_string),
                u.port_or_known_default(),
            )
        };
        let same = attempt
            .previous()
            .first()
            .is_some_and(|first| origin(first) == origin(attempt.url()));
        if attempt.previous().len() > max {
            attempt.error(format!("more than {max} redirects"))
        } else if !same {
            attempt.stop()
        } else {
            attempt.follow()
        }
    })
}

/// Rebuild the in-memory schedule and outbox from the store (invariant 6). Overdue polls are
/// spread over a short window instead of all firing at once.
async fn rebuild(shim: &Shim) -> Result<(), StartError> {
    let now = shim.clock.now();
    // Streamed into the queue (no list of a million owned ids); gauges counted per upstream and
    // set once.
    // A store whose work is shared hands out due work by claims (`claim_loop`), not all of it
    // to each process at start.
    let own_all = !shim.store.shares_work();
    let mut per_upstream: HashMap<String, i64> = HashMap::new();
    let active = shim
        .store
        .for_each_scheduled(&mut |id, upstream, at| {
            if own_all {
                shim.polls.schedule(&id, at);
            }
            match per_upstream.get_mut(upstream) {
                Some(n) => *n += 1,
                None => {
                    per_upstream.insert(upstream.to_string(), 1);
                }
            }
        })
        .await?;
    for (upstream, n) in &per_upstream {
        shim.metrics.active(upstream).inc_by(*n);
    }
    // Overdue polls: spread over a window that grows with their number, up to 30 s.
    let overdue = shim.polls.spread_due(now, Duration::ZERO);
    let spread = RESTART_SPREAD_MAX.min(Duration::from_millis(overdue as u64 * 2));
    shim.polls.spread_due(now, spread);
    let outbox = if own_all {
        shim.store.outbox().await?
    } else {
        Vec::new()
    };
    // Builds the failed-deliveries index of a store written before it (once).
    let failed = shim.store.failed_deliveries().await?;
    shim.metrics.deliveries("failed").set(failed as i64);
    for entry in &outbox {
        shim.deliveries.schedule(&entry.key, entry.at.max(now));
    }
    tracing::info!(
        active,
        overdue,
        outbox = outbox.len(),
        "schedule rebuilt from the store"
    );
    Ok(())
}

/// Take due ids off `queue` one at a time and run `work` on each, at most `slots` at once.
/// Ends when shutdown starts; work in flight is tracked by `tracker`.
async fn dispatch<K, W, F>(
    shim: Arc<Shim>,
    tracker: TaskTracker,
    queue: fn(&Shim) -> &DueQueue<K>,
    slots: usize,
    work: W,
) where
    K: QueueId + Send + 'static,
    W: Fn(Arc<Shim>, K) -> F,
    F: Future<Output = ()> + Send + 'static,
{
    let slots = Arc::new(Semaphore::new(slots));
    loop {
        let Ok(permit) = slots.clone().acquire_owned().await else {
            return;
        };
        let batch = queue(&shim)
            .next_batch(shim.clock.as_ref(), 1, &shim.shutdown)
            .await;
        let Some(id) = batch.into_iter().next() else {
            return;
        };
        let job = work(shim.clone(), id);
        tracker.spawn(async move {
            job.await;
            drop(permit);
        });
    }
}

async fn purge_loop(shim: Arc<Shim>) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(PURGE_EVERY) => {}
            _ = shim.shutdown.cancelled() => return,
        }
        let now = shim.clock.now();
        let before = |d: Duration| Timestamp(now.0.saturating_sub(d.as_millis() as u64));
        match shim
            .store
            .purge_webhooks(before(INBOX_RETENTION), before(EARLY_WEBHOOK_WINDOW))
            .await
        {
            Ok(n) if n > 0 => tracing::info!(removed = n, "purged old webhook records"),
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "purging old webhook records failed"),
        }
    }
}

impl Running {
    /// Graceful stop: stop accepting, let in-flight polls and callbacks finish, flush.
    pub async fn stop(self) {
        self.shim.shutdown.cancel();
        self.shim.workers_running.store(false, Ordering::SeqCst);
        for server in std::iter::once(self.server).chain(self.webhook_server) {
            match server.await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::error!(error = %e, "HTTP server ended with an error"),
                Err(e) => tracing::error!(error = %e, "HTTP server task failed"),
            }
        }
        self.workers.close();
        self.workers.wait().await;
        // Whatever this process still holds goes to the others at once.
        if let Err(e) = self.shim.store.release_claims().await {
            tracing::warn!(error = %e, "cannot release this process's claims; they lapse by themselves");
        }
        // What was learned since the last periodic save goes with the final flush.
        if let Some(bytes) = self.shim.learned.unsaved() {
            if let Err(e) = self.shim.store.save_priors(&bytes).await {
                tracing::warn!(error = %e, "cannot save the learned job-length priors");
            }
        }
        if let Err(e) = self.shim.commit.flushed().await {
            tracing::error!(error = %e, "final flush failed");
        }
        self.flusher_stop.cancel();
        let _ = self.flusher.await;
        tracing::info!("hookshim stopped");
    }

    /// Run until SIGTERM or Ctrl-C, then stop gracefully. SIGHUP reloads nothing.
    pub async fn run_until_signal(self) {
        wait_for_signal(&mut || {
            tracing::warn!("SIGHUP: reload is not supported here; restart to apply config changes")
        })
        .await;
        tracing::info!("shutdown signal received; finishing in-flight work");
        self.stop().await;
    }

    /// [`Running::run_until_signal`], and each SIGHUP re-reads `config` and applies what can
    /// change without a restart (see [`reload`]).
    pub async fn run_until_signal_reloading(self, config: PathBuf) {
        let shim = self.shim.clone();
        wait_for_signal(&mut || reload(&shim, &config)).await;
        tracing::info!("shutdown signal received; finishing in-flight work");
        self.stop().await;
    }
}

/// The keys a SIGHUP applies (each with the keys below it); every other change needs a
/// restart (and is logged as such).
pub const RELOADABLE: &[&str] = &[
    "callbacks.allowed_hosts",
    "callbacks.secret_env",
    "callbacks.secret_file",
    "callbacks.secret",
    "callbacks.previous_secrets",
    "callbacks.signing_key",
];

/// Say where the callback signing keys come from, never their values; the Ed25519 public key
/// (what receivers verify `v1a` entries with) is shown.
fn log_callback_keys(config: &Config, generated: Option<&Path>) {
    let cb = &config.callbacks;
    match (&cb.secret_source, generated) {
        (Some(from), _) => {
            tracing::info!(from = %from, "callback signing secret from the {from}")
        }
        (None, Some(p)) => {
            tracing::info!(path = %p.display(), "callback signing secret kept in the data directory (set {} to use your own)", cb.secret_env)
        }
        (None, None) => {}
    }
    if !cb.previous_secrets.is_empty() {
        let from: Vec<String> = cb
            .previous_secrets
            .iter()
            .map(|p| p.source.to_string())
            .collect();
        tracing::info!(
            previous = cb.previous_secrets.len(),
            from = from.join(", "),
            "callbacks also carry a v1 signature with each previous secret (rotation)"
        );
    }
    if let Some(k) = &cb.signing_key {
        tracing::info!(
            public_key = %k.public_whpk(),
            from = %k.source,
            "callbacks also carry a v1a (Ed25519) signature; receivers verify it with public_key"
        );
    }
}

/// Re-read the config file: apply `callbacks.allowed_hosts` and the callback signing keys
/// (files named by `secret_file`, `previous_secrets` and `signing_key_file` are read again,
/// and keys are compared by value), log every other key that changed (they need a restart). A
/// config that does not load, or whose keys cannot be read, changes nothing.
pub fn reload(shim: &Shim, path: &Path) {
    let new = match Config::load(path) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "SIGHUP: config not reloaded; nothing changed");
            return;
        }
    };
    // On a shared store with no secret configured, the current secret is the database's: keep it.
    let mut callbacks = new.callbacks.clone();
    if callbacks.secret.is_none() && shim.config.store.backend != Backend::Sled {
        callbacks.secret = shim.callback_keys().secrets.first().map(|(s, _)| s.clone());
    }
    let keys = match crate::delivery::callback_keys(&callbacks, &shim.config.store.path) {
        Ok((k, _)) => k,
        Err(e) => {
            tracing::error!(error = %e, "SIGHUP: config not reloaded; nothing changed");
            return;
        }
    };
    let (mut old_keys, mut new_keys) = (BTreeMap::new(), BTreeMap::new());
    flatten("", &shim.config.redacted(), &mut old_keys);
    // The hosts in force may already differ from the file at start (an earlier reload).
    old_keys.insert(
        "callbacks.allowed_hosts".to_string(),
        serde_json::json!(*shim.allowed_hosts()).to_string(),
    );
    flatten("", &new.redacted(), &mut new_keys);
    // Where keys came from is no setting.
    old_keys.retain(|k, _| !k.starts_with("origins."));
    new_keys.retain(|k, _| !k.starts_with("origins."));
    let changed: Vec<String> = old_keys
        .keys()
        .chain(new_keys.keys())
        .filter(|k| old_keys.get(*k) != new_keys.get(*k))
        .map(|k| {
            // `callbacks.allowed_hosts[1]` and such: name the key.
            k.split('[').next().unwrap_or(k).to_string()
        })
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    let (mut applied, not): (Vec<String>, Vec<String>) = changed.into_iter().partition(|k| {
        RELOADABLE
            .iter()
            .any(|r| k == r || k.strip_prefix(r).is_some_and(|rest| rest.starts_with('.')))
    });
    if applied.iter().any(|k| k == "callbacks.allowed_hosts") {
        let hosts = Arc::new(new.callbacks.allowed_hosts.clone());
        match shim.allowed_hosts.write() {
            Ok(mut h) => *h = hosts,
            Err(p) => *p.into_inner() = hosts,
        }
    }
    if *shim.callback_keys() == keys {
        // Compared with the config at start: a source changed back, or changed by an earlier
        // reload, is no change now.
        applied.retain(|k| k == "callbacks.allowed_hosts");
    } else {
        let keys = Arc::new(keys);
        match shim.callback_keys.write() {
            Ok(mut k) => *k = keys,
            Err(p) => *p.into_inner() = keys,
        }
        applied.push("callback signing keys".to_string());
        log_callback_keys(&new, None);
    }
    if !not.is_empty() {
        tracing::warn!(
            not_applied = not.join(", "),
            "SIGHUP: these keys changed but need a restart to apply"
        );
    }
    tracing::info!(
        applied = applied.join(", "),
        reloadable = RELOADABLE.join(", "),
        "SIGHUP: config reloaded"
    );
}

/// `value` as `dotted.path` → JSON text of each leaf.
fn flatten(prefix: &str, value: &serde_json::Value, out: &mut BTreeMap<String, String>) {
    match value {
        serde_json::Value::Object(m) if !m.is_empty() => {
            for (k, v) in m {
                let key = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                flatten(&key, v, out);
            }
        }
        other => {
            out.insert(prefix.to_string(), other.to_string());
        }
    }
}

/// Wait for SIGTERM or Ctrl-C. SIGHUP does not stop the process (its default action would):
/// `on_hup` runs for each.
async fn wait_for_signal(on_hup: &mut (dyn FnMut() + Send)) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut hup = match signal(SignalKind::hangup()) {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::warn!(error = %e, "cannot handle SIGHUP");
                None
            }
        };
        let hangup = async |hup: &mut Option<tokio::signal::unix::Signal>| match hup {
            Some(h) => h.recv().await,
            None => std::future::pending().await,
        };
        match signal(SignalKind::terminate()) {
            Ok(mut term) => loop {
                tokio::select! {
                    _ = term.recv() => return,
                    _ = tokio::signal::ctrl_c() => return,
                    r = hangup(&mut hup) => sighup(r, &mut hup, on_hup),
                }
            },
            Err(_) => loop {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => return,
                    r = hangup(&mut hup) => sighup(r, &mut hup, on_hup),
                }
            },
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

#[cfg(unix)]
fn sighup(
    received: Option<()>,
    hup: &mut Option<tokio::signal::unix::Signal>,
    on_hup: &mut (dyn FnMut() + Send),
) {
    match received {
        Some(()) => on_hup(),
        // No more SIGHUPs can be received: stop listening for them.
        None => *hup = None,
    }
}
