//! One budget across replicas: every live process (a heartbeat within [`LIVE_WITHIN`], in the
//! database's clock so that the processes' clocks do not matter) takes an equal share of each
//! upstream's rate, and the latest rate-limit answer any of them saw (its time and the pause it
//! asked for) is published in `upstream_state` and applied by all. See docs/store.md for the
//! worst case.

use std::time::Duration;

use super::*;
use crate::store::{Shared, UpstreamSignal};

/// A process that has not beaten for this long no longer counts (and its share is handed out).
pub const LIVE_WITHIN: Duration = Duration::from_secs(6);
/// Heartbeat rows this old are removed.
const FORGET_AFTER: Duration = Duration::from_secs(3600);

/// The database's clock, in ms since the epoch.
const DB_NOW: &str = "(extract(epoch from clock_timestamp()) * 1000)::bigint";

impl PgStore {
    /// [`Store::heartbeat`].
    pub(super) async fn beat(&self, signals: &[UpstreamSignal]) -> Result<Shared, StoreError> {
        let me = self.me.clone();
        let upstreams: Vec<&str> = signals.iter().map(|s| s.upstream.as_str()).collect();
        let throttled: Vec<Option<i64>> = signals.iter().map(|s| s.throttled_at.map(ms)).collect();
        let paused: Vec<i64> = signals.iter().map(|s| ms(s.paused_until)).collect();
        let live = LIVE_WITHIN.as_millis() as i64;
        let forget = FORGET_AFTER.as_millis() as i64;
        let (replicas, rows) = self
            .with(|c| async move {
                let st = c
                    .prepare_cached(&format!(
                        "INSERT INTO replicas (id, seen_at) VALUES ($1, {DB_NOW}) \
                         ON CONFLICT (id) DO UPDATE SET seen_at = EXCLUDED.seen_at"
                    ))
                    .await
                    .map_err(unavailable)?;
                c.execute(&st, &[&me]).await.map_err(unavailable)?;
                let st = c
                    .prepare_cached(&format!(
                        "SELECT count(*) FILTER (WHERE seen_at >= {DB_NOW} - $1), \
                         count(*) FILTER (WHERE seen_at < {DB_NOW} - $2) FROM replicas"
                    ))
                    .await
                    .map_err(unavailable)?;
                let row = c
                    .query_one(&st, &[&live, &forget])
                    .await
                    .map_err(unavailable)?;
                let (replicas, stale): (i64, i64) = (row.get(0), row.get(1));
                if stale > 0 {
                    c.execute(
                        &format!("DELETE FROM replicas WHERE seen_at < {DB_NOW} - $1"),
                        &[&forget],
                    )
                    .await
                    .map_err(unavailable)?;
                }
                let st = c
                    .prepare_cached(
                        "INSERT INTO upstream_state (upstream, throttled_at, paused_until) \
                         SELECT u, t, p FROM unnest($1::text[], $2::bigint[], $3::bigint[]) \
                           AS x (u, t, p) \
                         ON CONFLICT (upstream) DO UPDATE SET \
                           throttled_at = greatest(upstream_state.throttled_at, \
                             EXCLUDED.throttled_at), \
                           paused_until = greatest(upstream_state.paused_until, \
                             EXCLUDED.paused_until) \
                         RETURNING upstream, throttled_at, paused_until",
                    )
                    .await
                    .map_err(unavailable)?;
                let rows = c
                    .query(&st, &[&upstreams, &throttled, &paused])
                    .await
                    .map_err(unavailable)?;
                Ok((replicas, rows))
            })
            .await?;
        Ok(Shared {
            replicas: replicas.max(1) as usize,
            signals: rows
                .iter()
                .map(|r| UpstreamSignal {
                    upstream: r.get(0),
                    throttled_at: r.get::<_, Option<i64>>(1).map(ts),
                    paused_until: ts(r.get(2)),
                })
                .collect(),
        })
    }

    /// Stop counting this process (graceful stop): the others' shares grow at their next beat.
    pub(super) async fn leave(&self) -> Result<(), StoreError> {
        let me = self.me.clone();
        self.with(|c| async move {
            c.execute("DELETE FROM replicas WHERE id = $1", &[&me])
                .await
                .map_err(unavailable)?;
            Ok(())
        })
        .await
    }
}
