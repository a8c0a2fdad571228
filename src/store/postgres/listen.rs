//! LISTEN: one connection of its own (not from the pool) on the schema's channel
//! (`hookshim_<schema>`). A `poll <id>` notification (a webhook for an operation whose poll
//! another process holds) becomes [`Wake::Poll`]. After every (re)connection it sends
//! [`Wake::Claim`], since notifications sent while it was away are lost; it reconnects every
//! [`RECONNECT_EVERY`] while the database is away.

use std::time::Duration;

use futures_util::StreamExt;
use tokio::sync::broadcast;
use tokio_postgres::{AsyncMessage, NoTls};
use tokio_util::sync::CancellationToken;

use crate::ids::OperationId;
use crate::store::Wake;

/// How long to wait before connecting again after the connection failed or ended.
pub const RECONNECT_EVERY: Duration = Duration::from_secs(1);

/// This machine's name for `lease_owner` (with the process id and a random part beside it).
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "hookshim".to_string())
}

/// Listen on `channel` until `stop`, sending what arrives to `wakes`.
pub fn spawn(
    config: tokio_postgres::Config,
    channel: String,
    wakes: broadcast::Sender<Wake>,
    stop: CancellationToken,
) {
    tokio::spawn(async move {
        loop {
            tokio::select! {
                () = listen_once(&config, &channel, &wakes) => {}
                () = stop.cancelled() => return,
            }
            tokio::select! {
                () = tokio::time::sleep(RECONNECT_EVERY) => {}
                () = stop.cancelled() => return,
            }
        }
    });
}

/// One connection: LISTEN, then forward notifications until it ends.
async fn listen_once(
    config: &tokio_postgres::Config,
    channel: &str,
    wakes: &broadcast::Sender<Wake>,
) {
    let (client, mut conn) = match config.connect(NoTls).await {
        Ok(c) => c,
        Err(e) => {
            tracing::debug!(error = %e, "LISTEN connection failed; retrying");
            return;
        }
    };
    let mut messages = futures_util::stream::poll_fn(move |cx| conn.poll_message(cx));
    // The channel is `hookshim_<schema>`, a checked plain identifier.
    let sql = format!("LISTEN {channel}");
    let listen = client.batch_execute(&sql);
    tokio::pin!(listen);
    let mut listening = false;
    loop {
        tokio::select! {
            r = &mut listen, if !listening => {
                if let Err(e) = r {
                    tracing::debug!(error = %e, "LISTEN failed; retrying");
                    return;
                }
                listening = true;
                // Anything sent while this connection was away is lost: claim now.
                let _ = wakes.send(Wake::Claim);
            }
            m = messages.next() => match m {
                Some(Ok(AsyncMessage::Notification(n))) => {
                    let wake = match n.payload().strip_prefix("poll ") {
                        Some(id) => Wake::Poll(OperationId::from_text(id)),
                        None => Wake::Claim,
                    };
                    let _ = wakes.send(wake);
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => {
                    tracing::debug!(error = %e, "LISTEN connection ended; reconnecting");
                    return;
                }
                None => return,
            }
        }
    }
}
