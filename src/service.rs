//! Wiring: [`start`] opens the store, builds the shared state ([`crate::state::Shim`]), rebuilds
//! the schedule and outbox from the store, starts the loops (polls, deliveries, purge, group
//! commit) and the HTTP server; [`Running::stop`] shuts down in order (stop accepting → finish
//! in-flight work → flush → return). Nothing here decides anything about an operation: the
//! stages do, through the state module below them.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::clock::{Clock, SystemClock, Timestamp};
use crate::config::Config;
use crate::metrics::Metrics;
use crate::schedule::{DueQueue, QueueId, UpstreamLimiter};
use crate::state::{EARLY_WEBHOOK_WINDOW, INBOX_RETENTION, Shim};
use crate::store::{GroupCommit, SledStore, Store};

/// How often old webhook ids and kept webhooks are purged.
const PURGE_EVERY: Duration = Duration::from_secs(3600);
/// Overdue polls found at start are spread over at most this long.
const RESTART_SPREAD_MAX: Duration = Duration::from_secs(30);

/// Options the binary and tests pass besides the config.
pub struct StartOptions {
    pub clock: Arc<dyn Clock>,
    /// Use this listener instead of binding `server.listen` (tests bind port 0).
    pub listener: Option<std::net::TcpListener>,
}

impl Default for StartOptions {
    fn default() -> Self {
        StartOptions {
            clock: Arc::new(SystemClock),
            listener: None,
        }
    }
}

/// A started service.
pub struct Running {
    pub addr: SocketAddr,
    pub shim: Arc<Shim>,
    server: tokio::task::JoinHandle<std::io::Result<()>>,
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
    let store_path = config.store.path.clone();
    let cache = config.store.cache_bytes;
    let store: Arc<dyn Store> = Arc::new(
        tokio::task::spawn_blocking(move || SledStore::open(&store_path, cache))
            .await
            .map_err(|e| StartError::Secret(e.to_string()))??,
    );
    let (callback_key, secret_path) = crate::delivery::load_or_create_secret(
        config.callbacks.secret.as_ref(),
        &config.store.path,
    )
    .map_err(StartError::Secret)?;
    match &secret_path {
        Some(p) => {
            tracing::info!(path = %p.display(), "callback signing secret kept in the data directory (set {} to use your own)", config.callbacks.secret_env)
        }
        None => {
            tracing::info!(env = %config.callbacks.secret_env, "callback signing secret from the environment")
        }
    }

    let upstream_http = reqwest::Client::builder()
        .redirect(same_origin_redirects(3))
        .user_agent(concat!("hookshim/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| StartError::Http(e.to_string()))?;
    let callback_http = reqwest::Client::builder()
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
    let shim = Arc::new(Shim {
        store,
        commit: commit.clone(),
        polls: DueQueue::new(),
        deliveries: DueQueue::new(),
        limiters,
        jwks: crate::ingest::jwks::JwksCache::new(upstream_http.clone()),
        upstream_http,
        callback_http,
        proxy_http,
        metrics: Metrics::new(),
        clock: opts.clock,
        callback_key,
        shutdown: CancellationToken::new(),
        workers_running: AtomicBool::new(false),
        config,
    });

    rebuild(&shim)?;

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
    shim.workers_running.store(true, Ordering::SeqCst);

    let listener = match opts.listener {
        Some(l) => {
            l.set_nonblocking(true).map_err(|e| StartError::Listen {
                addr: "given listener".into(),
                source: e,
            })?;
            TcpListener::from_std(l).map_err(|e| StartError::Listen {
                addr: "given listener".into(),
                source: e,
            })?
        }
        None => TcpListener::bind(shim.config.server.listen)
            .await
            .map_err(|e| StartError::Listen {
                addr: shim.config.server.listen.to_string(),
                source: e,
            })?,
    };
    let addr = listener.local_addr().map_err(|e| StartError::Listen {
        addr: "listener".into(),
        source: e,
    })?;
    let app = crate::api::router(shim.clone());
    let stop = shim.shutdown.clone();
    let server = tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async move { stop.cancelled().await })
            .await
    });
    tracing::info!(%addr, upstreams = shim.config.upstreams.len(), "hookshim listening");
    Ok(Running {
        addr,
        shim,
        server,
        workers,
        flusher,
        flusher_stop,
    })
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
fn rebuild(shim: &Shim) -> Result<(), StartError> {
    let now = shim.clock.now();
    // Streamed into the queue (no list of a million owned ids); gauges counted per upstream and
    // set once.
    let mut per_upstream: HashMap<String, i64> = HashMap::new();
    let active = shim.store.for_each_scheduled(&mut |id, upstream, at| {
        shim.polls.schedule(&id, at);
        match per_upstream.get_mut(upstream) {
            Some(n) => *n += 1,
            None => {
                per_upstream.insert(upstream.to_string(), 1);
            }
        }
    })?;
    for (upstream, n) in &per_upstream {
        shim.metrics.active(upstream).inc_by(*n);
    }
    // Overdue polls: spread over a window that grows with their number, up to 30 s.
    let overdue = shim.polls.spread_due(now, Duration::ZERO);
    let spread = RESTART_SPREAD_MAX.min(Duration::from_millis(overdue as u64 * 2));
    shim.polls.spread_due(now, spread);
    let outbox = shim.store.outbox()?;
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
        match self.server.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::error!(error = %e, "HTTP server ended with an error"),
            Err(e) => tracing::error!(error = %e, "HTTP server task failed"),
        }
        self.workers.close();
        self.workers.wait().await;
        if let Err(e) = self.shim.commit.flushed().await {
            tracing::error!(error = %e, "final flush failed");
        }
        self.flusher_stop.cancel();
        let _ = self.flusher.await;
        tracing::info!("hookshim stopped");
    }

    /// Run until SIGTERM or Ctrl-C, then stop gracefully.
    pub async fn run_until_signal(self) {
        wait_for_signal().await;
        tracing::info!("shutdown signal received; finishing in-flight work");
        self.stop().await;
    }
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
