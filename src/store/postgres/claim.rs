//! Claims: due work is leased to one process at a time.
//!
//! A poll claim is on an `operations` row, a callback claim on an `outbox` row: `lease_owner`
//! (the process), `lease_until` (ms; the claim lapses then unless renewed) and `lease_token`
//! (raised by every claim: the fencing token). [`PgStore::claim_due`] takes rows due within
//! [`CLAIM_AHEAD`] whose lease is free or lapsed, `FOR UPDATE SKIP LOCKED` so that processes
//! claiming at once take different rows, and renews the leases this process holds every third
//! of the lease. The poller and the deliverer read a row only while they hold its claim with the
//! token they were given, and their writes check the same in the row-locking transaction: a
//! process whose claim lapsed (it stalled, or lost the database for longer than the lease) or
//! was taken over gets [`StoreError::LeaseLost`] and drops the work; the new holder does it.
//!
//! A process killed with `kill -9` simply stops renewing: its claims lapse after at most
//! `store.lease` and the others take them over (counted as takeovers). A callback it was sending
//! may then be sent again by the new holder, with the same `webhook-id`.

use super::*;

/// A claim lapses this long after its work is due unless renewed; renewal runs every third.
fn renew_every(lease: Duration) -> Duration {
    lease / 3
}

impl PgStore {
    /// Claim due polls and callbacks ([`Store::claim`]).
    pub(super) async fn claim_due(&self, limit: usize) -> Result<Claimed, StoreError> {
        let renew = self
            .held()
            .renewed
            .is_none_or(|at| at.elapsed() >= renew_every(self.lease));
        if renew {
            self.renew().await?;
        }
        let ctx = self.write_ctx();
        let limit = limit.clamp(1, 10_000) as i64;
        let (polls, callbacks) = self
            .with(|c| async move {
                let polls = c
                    .prepare_cached(
                        "WITH due AS (SELECT id, lease_owner FROM operations \
                           WHERE poll_at <= $1 AND (lease_until IS NULL OR lease_until < $2) \
                           ORDER BY poll_at LIMIT $3 FOR UPDATE SKIP LOCKED) \
                         UPDATE operations o SET lease_owner = $4, \
                           lease_until = greatest(o.poll_at, $2::bigint) + $5::bigint, \
                           lease_token = o.lease_token + 1 \
                         FROM due WHERE o.id = due.id \
                         RETURNING o.id, o.poll_at, o.lease_token, due.lease_owner",
                    )
                    .await
                    .map_err(unavailable)?;
                let polls = c
                    .query(&polls, &[&ctx.soon, &ctx.now, &limit, &ctx.me, &ctx.lease])
                    .await
                    .map_err(unavailable)?;
                let callbacks = c
                    .prepare_cached(
                        "WITH due AS (SELECT op_id, event, lease_owner FROM outbox \
                           WHERE due_at <= $1 AND (lease_until IS NULL OR lease_until < $2) \
                           ORDER BY due_at LIMIT $3 FOR UPDATE SKIP LOCKED) \
                         UPDATE outbox b SET lease_owner = $4, \
                           lease_until = greatest(b.due_at, $2::bigint) + $5::bigint, \
                           lease_token = b.lease_token + 1 \
                         FROM due WHERE b.op_id = due.op_id AND b.event = due.event \
                         RETURNING b.op_id, b.event, b.due_at, b.lease_token, due.lease_owner",
                    )
                    .await
                    .map_err(unavailable)?;
                let callbacks = c
                    .query(
                        &callbacks,
                        &[&ctx.soon, &ctx.now, &limit, &ctx.me, &ctx.lease],
                    )
                    .await
                    .map_err(unavailable)?;
                Ok((polls, callbacks))
            })
            .await?;
        let mut out = Claimed::default();
        let mut held = self.held();
        let mut takeovers = 0;
        for r in &polls {
            let id: String = r.get(0);
            let previous: Option<String> = r.get(3);
            takeovers += u64::from(previous.is_some_and(|p| p != self.me));
            held.polls.insert(id.clone(), r.get(2));
            out.polls
                .push((OperationId::from_text(id), ts(r.get::<_, i64>(1))));
        }
        for r in &callbacks {
            let id: String = r.get(0);
            let event: String = r.get(1);
            let previous: Option<String> = r.get(4);
            takeovers += u64::from(previous.is_some_and(|p| p != self.me));
            held.callbacks.insert((id.clone(), event.clone()), r.get(3));
            let id = OperationId::from_text(id);
            out.deliveries.push(OutboxEntry {
                key: if event.is_empty() {
                    DeliveryKey::terminal(id)
                } else {
                    DeliveryKey::event(id, event)
                },
                at: ts(r.get(2)),
            });
        }
        self.metrics
            .claims
            .inc_by((polls.len() + callbacks.len()) as u64);
        self.metrics.takeovers.inc_by(takeovers);
        self.metrics
            .leases_held
            .set((held.polls.len() + held.callbacks.len()) as i64);
        if takeovers > 0 {
            tracing::info!(
                takeovers,
                "took over work whose claim had lapsed (a replica stopped or stalled)"
            );
        }
        Ok(out)
    }

    /// Extend the claims this process tracks and still holds; forget the ones it no longer
    /// does. A claim it holds in the database but no longer tracks (its work left the queue) is
    /// not renewed: it lapses and is claimed again, by this process or another.
    async fn renew(&self) -> Result<(), StoreError> {
        let ctx = self.write_ctx();
        let (polls_before, callbacks_before) = {
            let held = self.held();
            (held.polls.clone(), held.callbacks.clone())
        };
        let poll_ids: Vec<&str> = polls_before.keys().map(String::as_str).collect();
        let (cb_ids, cb_events): (Vec<&str>, Vec<&str>) = callbacks_before
            .keys()
            .map(|(i, e)| (i.as_str(), e.as_str()))
            .unzip();
        let (polls, callbacks) = self
            .with(|c| async move {
                let polls = c
                    .query(
                        "UPDATE operations SET lease_until = greatest(poll_at, $2::bigint) + $3::bigint \
                         WHERE lease_owner = $1 AND lease_until >= $2 AND poll_at IS NOT NULL \
                           AND id = ANY($4::text[]) \
                         RETURNING id, lease_token",
                        &[&ctx.me, &ctx.now, &ctx.lease, &poll_ids],
                    )
                    .await
                    .map_err(unavailable)?;
                let callbacks = c
                    .query(
                        "UPDATE outbox SET lease_until = greatest(due_at, $2::bigint) + $3::bigint \
                         WHERE lease_owner = $1 AND lease_until >= $2 \
                           AND (op_id, event) IN \
                             (SELECT * FROM unnest($4::text[], $5::text[])) \
                         RETURNING op_id, event, lease_token",
                        &[&ctx.me, &ctx.now, &ctx.lease, &cb_ids, &cb_events],
                    )
                    .await
                    .map_err(unavailable)?;
                Ok((polls, callbacks))
            })
            .await?;
        let polls: HashMap<String, i64> = polls.iter().map(|r| (r.get(0), r.get(1))).collect();
        let callbacks: HashMap<(String, String), i64> = callbacks
            .iter()
            .map(|r| ((r.get(0), r.get(1)), r.get(2)))
            .collect();
        let mut held = self.held();
        // Claims taken while the renewal ran (a registration, a webhook) are kept.
        for (k, token) in &polls_before {
            if !polls.contains_key(k) && held.polls.get(k) == Some(token) {
                held.polls.remove(k);
            }
        }
        for (k, token) in &callbacks_before {
            if !callbacks.contains_key(k) && held.callbacks.get(k) == Some(token) {
                held.callbacks.remove(k);
            }
        }
        held.polls.extend(polls);
        held.callbacks.extend(callbacks);
        held.renewed = Some(Instant::now());
        self.metrics
            .leases_held
            .set((held.polls.len() + held.callbacks.len()) as i64);
        Ok(())
    }

    /// Give up every claim ([`Store::release_claims`]).
    pub(super) async fn release_all(&self) -> Result<(), StoreError> {
        let me = self.me.clone();
        self.with(|c| async move {
            for sql in [
                "UPDATE operations SET lease_owner = NULL, lease_until = NULL \
                 WHERE lease_owner = $1",
                "UPDATE outbox SET lease_owner = NULL, lease_until = NULL WHERE lease_owner = $1",
            ] {
                c.execute(sql, &[&me]).await.map_err(unavailable)?;
            }
            Ok(())
        })
        .await?;
        let mut held = self.held();
        held.polls.clear();
        held.callbacks.clear();
        self.metrics.leases_held.set(0);
        Ok(())
    }

    /// Whether a row's lease is this process's current claim: its owner, not lapsed, and the
    /// token this process was given (or, if it tracks none, any: only this process writes its
    /// own name).
    fn holds(
        &self,
        owner: Option<&str>,
        until: Option<i64>,
        token: i64,
        given: Option<i64>,
    ) -> bool {
        owner == Some(self.me.as_str())
            && until.is_some_and(|u| u >= ms(self.clock.now()))
            && given.is_none_or(|g| g == token)
    }

    /// A webhook made `id` due now (in `tx`, whose row lock is held): claim its poll if the
    /// claim is free or lapsed (or already ours), else tell its holder.
    pub(super) async fn claim_for_webhook(
        &self,
        tx: &Transaction<'_>,
        id: &str,
        ctx: &WriteCtx<'_>,
    ) -> Result<(), StoreError> {
        let st = tx
            .prepare_cached(
                "UPDATE operations SET \
                   lease_token = CASE WHEN lease_owner = $2 AND lease_until >= $3 \
                     THEN lease_token ELSE lease_token + 1 END, \
                   lease_owner = $2, lease_until = $3::bigint + $4::bigint \
                 WHERE id = $1 AND (lease_until IS NULL OR lease_until < $3 OR lease_owner = $2) \
                 RETURNING lease_token",
            )
            .await
            .map_err(unavailable)?;
        match tx
            .query_opt(&st, &[&id, &ctx.me, &ctx.now, &ctx.lease])
            .await
            .map_err(unavailable)?
        {
            Some(row) => {
                self.held().polls.insert(id.to_string(), row.get(0));
            }
            None => {
                let st = tx
                    .prepare_cached("SELECT pg_notify($1, $2)")
                    .await
                    .map_err(unavailable)?;
                tx.execute(&st, &[&self.channel, &format!("poll {id}")])
                    .await
                    .map_err(unavailable)?;
            }
        }
        Ok(())
    }

    /// [`Store::claimed`].
    pub(super) async fn claimed_op(
        &self,
        id: &OperationId,
    ) -> Result<Option<Operation>, StoreError> {
        let row = self
            .with(|c| async move {
                let st = c
                    .prepare_cached(
                        "SELECT record, lease_owner, lease_until, lease_token FROM operations \
                         WHERE id = $1",
                    )
                    .await
                    .map_err(unavailable)?;
                c.query_opt(&st, &[&id.as_str()]).await.map_err(unavailable)
            })
            .await?;
        let Some(row) = row else { return Ok(None) };
        let mut held = self.held();
        let given = held.polls.get(id.as_str()).copied();
        if !self.holds(row.get(1), row.get(2), row.get(3), given) {
            held.polls.remove(id.as_str());
            return Ok(None);
        }
        held.polls.insert(id.as_str().to_string(), row.get(3));
        drop(held);
        record(&row, 0, id.as_str()).map(Some)
    }

    /// [`Store::update_claimed`].
    pub(super) async fn update_claimed_op(
        &self,
        id: &OperationId,
        f: &Change<'_>,
    ) -> Result<Option<Updated>, StoreError> {
        let mut ctx = self.write_ctx();
        ctx.keep_poll_claim = true;
        let given = self.held().polls.get(id.as_str()).copied();
        let (updated, taken, still) = self
            .with(|mut c| async move {
                let tx = c.transaction().await.map_err(unavailable)?;
                let st = tx
                    .prepare_cached(
                        "SELECT record, lease_owner, lease_until, lease_token FROM operations \
                         WHERE id = $1 FOR UPDATE",
                    )
                    .await
                    .map_err(unavailable)?;
                let Some(row) = tx
                    .query_opt(&st, &[&id.as_str()])
                    .await
                    .map_err(unavailable)?
                else {
                    return Ok((None, Vec::new(), false));
                };
                if !self.holds(row.get(1), row.get(2), row.get(3), given) {
                    return Err(StoreError::LeaseLost(format!(
                        "the poll of {id} is no longer claimed by this process"
                    )));
                }
                let old = record(&row, 0, id.as_str())?;
                let mut op = old.clone();
                let write = f(&mut op);
                let (taken, still) = if write {
                    let r = write_op(&tx, &old, &op, &ctx).await?;
                    tx.commit().await.map_err(unavailable)?;
                    r
                } else {
                    (Vec::new(), true)
                };
                Ok((Some(Updated::from_change(&old, op, write)), taken, still))
            })
            .await
            .inspect_err(|e| {
                if matches!(e, StoreError::LeaseLost(_)) {
                    self.metrics.leases_lost.inc();
                }
            })?;
        if !still {
            self.held().polls.remove(id.as_str());
        }
        self.hold_callbacks(id.as_str(), taken);
        Ok(updated)
    }

    /// [`Store::claimed_delivery`].
    pub(super) async fn claimed_callback(
        &self,
        key: &DeliveryKey,
    ) -> Result<Option<Operation>, StoreError> {
        let event = key.event.clone().unwrap_or_default();
        let id = key.operation.as_str();
        let ev = event.as_str();
        let row = self
            .with(|c| async move {
                let st = c
                    .prepare_cached(
                        "SELECT o.record, b.lease_owner, b.lease_until, b.lease_token \
                         FROM outbox b JOIN operations o ON o.id = b.op_id \
                         WHERE b.op_id = $1 AND b.event = $2",
                    )
                    .await
                    .map_err(unavailable)?;
                c.query_opt(&st, &[&id, &ev]).await.map_err(unavailable)
            })
            .await?;
        let Some(row) = row else { return Ok(None) };
        let mut held = self.held();
        let key = (id.to_string(), event);
        let given = held.callbacks.get(&key).copied();
        if !self.holds(row.get(1), row.get(2), row.get(3), given) {
            held.callbacks.remove(&key);
            return Ok(None);
        }
        held.callbacks.insert(key, row.get(3));
        drop(held);
        record(&row, 0, id).map(Some)
    }

    /// [`Store::update_delivery`].
    pub(super) async fn update_callback(
        &self,
        key: &DeliveryKey,
        f: &Change<'_>,
    ) -> Result<Option<Updated>, StoreError> {
        let ctx = self.write_ctx();
        let event = key.event.clone().unwrap_or_default();
        let id = key.operation.as_str();
        let held_key = (id.to_string(), event.clone());
        let given = self.held().callbacks.get(&held_key).copied();
        let ev = event.as_str();
        let ctx = &ctx;
        let (updated, taken, still) = self
            .with(|mut c| async move {
                let tx = c.transaction().await.map_err(unavailable)?;
                let st = tx
                    .prepare_cached(
                        "SELECT lease_owner, lease_until, lease_token FROM outbox \
                         WHERE op_id = $1 AND event = $2 FOR UPDATE",
                    )
                    .await
                    .map_err(unavailable)?;
                let lease = tx.query_opt(&st, &[&id, &ev]).await.map_err(unavailable)?;
                if !lease
                    .as_ref()
                    .is_some_and(|r| self.holds(r.get(0), r.get(1), r.get(2), given))
                {
                    return Err(StoreError::LeaseLost(format!(
                        "the callback {key} is no longer claimed by this process"
                    )));
                }
                let Some(old) = lock_op(&tx, id).await? else {
                    return Ok((None, Vec::new(), false));
                };
                let mut op = old.clone();
                if !f(&mut op) {
                    return Ok((
                        Some(Updated::from_change(&old, op, false)),
                        Vec::new(),
                        true,
                    ));
                }
                let (taken, _) = write_op(&tx, &old, &op, ctx).await?;
                // Keep the claim on a retry due soon; release it otherwise.
                let st = tx
                    .prepare_cached(
                        "UPDATE outbox SET \
                           lease_owner = CASE WHEN due_at <= $3 THEN lease_owner END, \
                           lease_until = CASE WHEN due_at <= $3 THEN due_at + $4::bigint END \
                         WHERE op_id = $1 AND event = $2 RETURNING lease_owner IS NOT NULL",
                    )
                    .await
                    .map_err(unavailable)?;
                let still = tx
                    .query_opt(&st, &[&id, &ev, &ctx.soon, &ctx.lease])
                    .await
                    .map_err(unavailable)?
                    .is_some_and(|r| r.get::<_, bool>(0));
                tx.commit().await.map_err(unavailable)?;
                Ok((Some(Updated::from_change(&old, op, true)), taken, still))
            })
            .await
            .inspect_err(|e| {
                if matches!(e, StoreError::LeaseLost(_)) {
                    self.metrics.leases_lost.inc();
                }
            })?;
        if !still {
            self.held().callbacks.remove(&held_key);
        }
        self.hold_callbacks(id, taken);
        Ok(updated)
    }
}
