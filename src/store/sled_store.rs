//! The embedded default store on sled 0.34.
//!
//! Trees (all keys are UTF-8 strings, `\0` separates parts):
//! - `ops`:      `op_<ULID>` → the operation record (JSON). ULIDs sort by creation time, which
//!   gives the list endpoint a stable cursor.
//! - `keys`:     `upstream\0operation` → `op_<ULID>`: makes registration idempotent.
//! - `active`:   `op_<ULID>` → next poll (u64 BE ms) + upstream name + `\0` + status (`pending` or
//!   `running`): the schedule, rebuilt at start without reading every record. Entries written
//!   before the status was added have none; their record is read once at start.
//! - `outbox`:   `op_<ULID>` → next attempt (u64 BE ms): terminal callbacks still to send;
//!   `op_<ULID>\0<event>` → next attempt: event callbacks (`requires_action_<n>`) still to send.
//! - `inbox`:    `upstream\0webhook-id` → received (u64 BE ms): webhook de-duplication.
//! - `early`:    `upstream\0operation` → received (u64 BE ms), then the JSON of an
//!   [`EventOutcome`] if the webhook decided one: webhooks for operations not yet registered.
//!
//! Every change to an operation is **one single-key write of its record** (atomic in sled). The
//! `active` and `outbox` indexes are derived from the record and kept a *superset* of what it
//! needs: an entry the new record needs is written before the record, an entry it no longer needs
//! is removed after it. sled recovers a prefix of its log after a crash, so a crash can leave an
//! extra index entry (harmless: the poller and the deliverer read the record and skip it) but
//! never a terminal record without its outbox entry.
//!
//! - `failed`:   `op_<ULID>` → empty: operations whose terminal callback failed (a superset like
//!   the other indexes), so the failed deliveries can be counted without reading every record.
//!   Built once from the records when missing (`meta` `failed_index` marks it built).
//! - `meta`:     `generation` → flush generation (u64 BE) + operations then (u64 BE): written by
//!   each flush that covers new writes, before the flush, and recorded in the mark file beside
//!   the data after it ([`super::integrity`]): how a store that lost acknowledged data is noticed.
//! - `priors`:   `priors` → the learned job-length priors (`schedule::Priors`, JSON), replaced
//!   at most every [`crate::state::PRIORS_SAVE_EVERY`] and read at start.
//!
//! Why not multi-tree transactions: in sled 0.34 every transaction (and every batch) seals the
//! current IO buffer and writes it with `sync_file_range` before it returns (`pin_log`), so each
//! one costs a synchronous disk write on the calling (async) thread and group commit cannot
//! share it. Single-key writes land in the shared IO buffer and are made durable by the one
//! group-commit flush. Writers of one operation (and of one `(upstream, operation)` pair) are
//! serialised by striped locks held only across in-memory sled calls, which gives the
//! read-modify-write the isolation the transactions gave.

use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use super::integrity::{self, Mark, MarkWriter};
use super::sled_codec::*;
use super::{
    ListFilter, OutboxEntry, Registered, SUFFIX_SCAN_MAX, StoreError, Updated, WebhookRecord,
};
use crate::clock::Timestamp;
use crate::ids::{DeliveryKey, OperationId};
use crate::operation::{DeliveryState, EventOutcome, Operation, Status, WEBHOOK_READS};

/// The one key of the `priors` tree.
const PRIORS_KEY: &[u8] = b"priors";

pub struct SledStore {
    db: sled::Db,
    ops: sled::Tree,
    keys: sled::Tree,
    active: sled::Tree,
    outbox: sled::Tree,
    inbox: sled::Tree,
    early: sled::Tree,
    meta: sled::Tree,
    failed: sled::Tree,
    /// Entries in `failed` (kept as entries are added and removed).
    failed_count: AtomicI64,
    /// Non-terminal operations by upstream and status: counted from `active` by
    /// [`Store::for_each_scheduled`] at start, then kept by every write and delete.
    active_counts: Mutex<ActiveCounts>,
    /// The learned job-length priors, one value under [`PRIORS_KEY`].
    priors: sled::Tree,
    /// The data directory (the mark file lives there).
    dir: PathBuf,
    /// The last flush generation written; the lock also serialises flushes.
    generation: Mutex<u64>,
    /// Records each durable generation in the mark file, off the flush path.
    marks: MarkWriter,
    /// Whether anything was written since the last flush began.
    dirty: AtomicBool,
    /// Operations in `ops` (kept as records are added and removed; recorded with each
    /// generation, for the damage message).
    operations: AtomicI64,
    /// Serialise writers of one operation id (read-modify-write of its record and indexes).
    id_locks: Stripes,
    /// Serialise registration and webhooks for one `(upstream, operation)` pair. Always taken
    /// before an id lock, never after.
    pair_locks: Stripes,
}

impl SledStore {
    /// Open the store at `path`, refusing ([`StoreError::Damaged`]) one that lost data
    /// acknowledged before the last shutdown (see [`integrity`]).
    pub fn open(path: &Path, cache_bytes: u64) -> Result<SledStore, StoreError> {
        let store = SledStore::open_unchecked(path, cache_bytes)?;
        store.check()?;
        Ok(store)
    }

    /// Open without comparing the store with its mark (for `store verify` and for accepting a
    /// loss).
    pub fn open_unchecked(path: &Path, cache_bytes: u64) -> Result<SledStore, StoreError> {
        // sled 0.34 panics on some damaged files ("tried to serialize Uninitialized") instead
        // of returning an error: that is a damaged store too, not a crash.
        std::panic::catch_unwind(|| SledStore::open_inner(path, cache_bytes)).unwrap_or_else(
            |panic| {
                let why = panic
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "a panic".into());
                Err(StoreError::Damaged(format!(
                    "the store at {} is damaged: sled failed reading its files ({why}). Restore \
                     the data directory from a backup; to start empty instead, move the data \
                     directory aside (every operation it held is forgotten)",
                    path.display()
                )))
            },
        )
    }

    fn open_inner(path: &Path, cache_bytes: u64) -> Result<SledStore, StoreError> {
        let open_err = |e: &dyn std::fmt::Display| StoreError::Open {
            path: path.display().to_string(),
            message: e.to_string(),
        };
        let created = !path.exists();
        std::fs::create_dir_all(path).map_err(|e| open_err(&e))?;
        private_dir(path, created).map_err(|e| open_err(&e))?;
        let config = sled::Config::new()
            .path(path)
            .cache_capacity(cache_bytes)
            // Only the group-commit task flushes (see DESIGN.md: sled's concurrent flushes).
            .flush_every_ms(None);
        let locked = |e: &sled::Error| {
            matches!(e, sled::Error::Io(io)
                if io.kind() == std::io::ErrorKind::WouldBlock || io.to_string().contains("lock"))
        };
        // sled's background IO threads let go of the directory's file lock a moment after the
        // last handle in this process is dropped (a reopen in the same process, a restart right
        // after a stop): wait up to a second for it before saying another process holds it.
        let mut opened = config.open();
        for _ in 0..20 {
            match &opened {
                Err(e) if locked(e) => {
                    std::thread::sleep(std::time::Duration::from_millis(50));
                    opened = config.open();
                }
                _ => break,
            }
        }
        let db = opened.map_err(|e| match e {
            ref e if locked(e) => open_err(&format!(
                "{e}; is another hookshim process using this data directory?"
            )),
            e @ sled::Error::Corruption { .. } => corrupt(path, &e),
            other => open_err(&other),
        })?;
        private_files(path);
        let tree = |name: &str| {
            db.open_tree(name).map_err(|e| match e {
                sled::Error::Corruption { .. } => corrupt(path, &e),
                other => open_err(&other),
            })
        };
        let store = SledStore {
            ops: tree("ops")?,
            keys: tree("keys")?,
            active: tree("active")?,
            outbox: tree("outbox")?,
            inbox: tree("inbox")?,
            early: tree("early")?,
            meta: tree("meta")?,
            failed: tree("failed")?,
            failed_count: AtomicI64::new(0),
            active_counts: Mutex::new(ActiveCounts::new()),
            priors: tree("priors")?,
            dir: path.to_path_buf(),
            marks: MarkWriter::start(path),
            generation: Mutex::new(0),
            dirty: AtomicBool::new(false),
            operations: AtomicI64::new(0),
            db,
            id_locks: Stripes::new(),
            pair_locks: Stripes::new(),
        };
        let (generation, operations) = match store.stored_generation()? {
            Some(g) => g,
            // A new store, or one written before generations: count once.
            None => (0, store.ops.len() as u64),
        };
        // Never reuse a generation the mark has seen (after an accepted loss, sled's is older).
        let marked = integrity::read_mark(path)
            .ok()
            .flatten()
            .map_or(0, |m| m.generation);
        *store.generation_lock() = generation.max(marked);
        store
            .operations
            .store(operations.min(i64::MAX as u64) as i64, Ordering::SeqCst);
        store
            .failed_count
            .store(store.failed.len() as i64, Ordering::SeqCst);
        Ok(store)
    }

    fn generation_lock(&self) -> MutexGuard<'_, u64> {
        // The guarded value is a plain counter: a panic elsewhere cannot leave it inconsistent.
        self.generation.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The flush generation and operation count sled holds, if any.
    fn stored_generation(&self) -> Result<Option<(u64, u64)>, StoreError> {
        let value = self.meta.get(GENERATION).map_err(|e| match e {
            sled::Error::Corruption { .. } => corrupt(&self.dir, &e),
            other => io(other),
        })?;
        Ok(value.map(|v| {
            let generation = ts_from(&v).0;
            let operations = ts_from(v.get(8..).unwrap_or_default()).0;
            (generation, operations)
        }))
    }

    /// Compare what sled holds with the mark written after the last flush.
    fn check(&self) -> Result<(), StoreError> {
        let found = self.stored_generation()?.map_or(0, |(g, _)| g);
        match integrity::read_mark(&self.dir) {
            Ok(None) => Ok(()),
            Ok(Some(mark)) if mark.generation > found => Err(StoreError::Damaged(
                integrity::lost_data_message(&self.dir, &mark, found, self.ops.len() as u64),
            )),
            Ok(Some(_)) => Ok(()),
            Err(e) => Err(StoreError::Damaged(format!(
                "{e}: hookshim cannot tell whether the store at {} lost data. Run `hookshim store \
                 verify`, restore the data directory from a backup, or start with `hookshim serve \
                 --accept-damaged-store` to write a new mark",
                self.dir.display()
            ))),
        }
    }

    /// Accept whatever the store holds now: record it in a new mark (for
    /// `serve --accept-damaged-store`). Returns what was accepted, for the log.
    pub fn accept_damage(&self) -> Result<String, StoreError> {
        let what = match self.check() {
            Ok(()) => "the store is sound; nothing to accept".to_string(),
            Err(e) => format!("accepted: {e}"),
        };
        self.operations.store(
            self.ops.len().min(i64::MAX as usize) as i64,
            Ordering::SeqCst,
        );
        self.dirty.store(true, Ordering::SeqCst);
        self.flush()?;
        Ok(what)
    }

    /// Check everything `hookshim store verify` checks: the mark against sled's generation,
    /// that every record decodes, and that every index entry a record needs exists.
    pub fn verify(&self) -> Result<integrity::Report, StoreError> {
        let mut r = integrity::Report::default();
        let found = self.stored_generation()?;
        r.lines.push(format!(
            "data directory: {} ({} bytes on disk)",
            self.dir.display(),
            self.size_on_disk()?
        ));
        match found {
            Some((g, n)) => r.lines.push(format!(
                "flush generation in the store: {g} ({n} operations at that flush)"
            )),
            None => r.lines.push("flush generation in the store: none".into()),
        }
        let found = found.map_or(0, |(g, _)| g);
        match integrity::read_mark(&self.dir) {
            Ok(None) => r.lines.push(format!(
                "mark {}: none (a new store, or one from before marks)",
                integrity::mark_path(&self.dir).display()
            )),
            Ok(Some(m)) => {
                r.lines.push(format!(
                    "mark {}: generation {} ({} operations)",
                    integrity::mark_path(&self.dir).display(),
                    m.generation,
                    m.operations
                ));
                if m.generation > found {
                    r.problems.push(integrity::lost_data_message(
                        &self.dir,
                        &m,
                        found,
                        self.ops.len() as u64,
                    ));
                }
            }
            Err(e) => r.problems.push(e.to_string()),
        }
        let (mut records, mut running, mut unreadable) = (0u64, 0u64, 0u64);
        for item in self.ops.iter() {
            let (k, v) = item.map_err(io)?;
            records += 1;
            let op = match decode(&k, &v) {
                Ok(op) => op,
                Err(e) => {
                    unreadable += 1;
                    r.problems.push(e.to_string());
                    continue;
                }
            };
            if !op.status.is_terminal() {
                running += 1;
                if !self.active.contains_key(&k).map_err(io)? {
                    r.problems.push(format!(
                        "operation {} is {:?} but not scheduled (no `active` entry)",
                        op.id, op.status
                    ));
                }
            }
            if op.in_outbox() && !self.outbox.contains_key(&k).map_err(io)? {
                r.problems.push(format!(
                    "operation {} has a callback to send but no `outbox` entry",
                    op.id
                ));
            }
        }
        r.lines.push(format!(
            "operations: {records} ({running} not finished, {unreadable} unreadable)"
        ));
        let mut dangling = 0u64;
        for item in self.keys.iter() {
            let (_, id) = item.map_err(io)?;
            if !self.ops.contains_key(&id).map_err(io)? {
                dangling += 1;
            }
        }
        r.lines.push(format!(
            "registration keys: {} ({dangling} without a record: left by a crash before the \
             registration was acknowledged; harmless)",
            self.keys.len()
        ));
        r.lines.push(format!(
            "schedule entries: {}, outbox entries: {}, webhook ids: {}, early webhooks: {}",
            self.active.len(),
            self.outbox.len(),
            self.inbox.len(),
            self.early.len()
        ));
        Ok(r)
    }

    fn touch(&self) {
        self.dirty.store(true, Ordering::SeqCst);
    }

    /// Write `new` over `old` (the record as read under the id lock; `None` for a new record),
    /// keeping the indexes a superset: entries `new` needs first, then the record, then removal
    /// of the entries only `old` needed. The caller holds the id lock.
    fn write(&self, old: Option<&Operation>, new: &Operation) -> Result<(), StoreError> {
        self.touch();
        if old.is_none_or(|o| o.status != new.status || o.upstream != new.upstream) {
            self.count_active(old, -1);
            self.count_active(Some(new), 1);
        }
        let id = new.id.as_bytes();
        if !new.status.is_terminal() {
            self.active.insert(id, active_value(new)).map_err(io)?;
        }
        if new.in_outbox() {
            let at = new.delivery.next_attempt_at.unwrap_or(new.updated_at);
            self.outbox.insert(id, ts_bytes(at).to_vec()).map_err(io)?;
        }
        let pending =
            |e: &crate::operation::EventCallback| e.delivery.state == DeliveryState::Pending;
        for e in new.events.iter().filter(|e| pending(e)) {
            let at = e.delivery.next_attempt_at.unwrap_or(new.updated_at);
            self.outbox
                .insert(pair_key(&new.id, &e.name), ts_bytes(at).to_vec())
                .map_err(io)?;
        }
        let failed = |o: &Operation| o.delivery.state == DeliveryState::Failed;
        if failed(new) && self.failed.insert(id, &[]).map_err(io)?.is_none() {
            self.failed_count.fetch_add(1, Ordering::SeqCst);
        }
        self.ops.insert(id, encode(new)).map_err(io)?;
        if !failed(new) && old.is_some_and(failed) && self.failed.remove(id).map_err(io)?.is_some()
        {
            self.failed_count.fetch_sub(1, Ordering::SeqCst);
        }
        if new.status.is_terminal() && old.is_none_or(|o| !o.status.is_terminal()) {
            self.active.remove(id).map_err(io)?;
        }
        if !new.in_outbox() && old.is_some_and(Operation::in_outbox) {
            self.outbox.remove(id).map_err(io)?;
        }
        for e in old
            .iter()
            .flat_map(|o| o.events.iter())
            .filter(|e| pending(e))
        {
            if !new.events.iter().any(|n| n.name == e.name && pending(n)) {
                self.outbox.remove(pair_key(&new.id, &e.name)).map_err(io)?;
            }
        }
        Ok(())
    }

    fn count_active(&self, op: Option<&Operation>, by: i64) {
        if let Some((op, slot)) = op.and_then(|o| Some((o, active_slot(o.status)?))) {
            let mut counts = self.active_counts.lock().unwrap_or_else(|p| p.into_inner());
            match counts.get_mut(&op.upstream) {
                Some(c) => c[slot] += by,
                None => {
                    let mut c = [0; 2];
                    c[slot] = by;
                    counts.insert(op.upstream.clone(), c);
                }
            }
        }
    }

    /// Read-modify-write under the id lock (the caller must not hold it).
    fn update_locked(
        &self,
        id: &OperationId,
        f: &mut dyn FnMut(&mut Operation) -> bool,
    ) -> Result<Option<(Operation, Operation, bool)>, StoreError> {
        let _g = self.id_locks.lock(id.as_bytes());
        let Some(old) = self.get(id)? else {
            return Ok(None);
        };
        let mut op = old.clone();
        if !f(&mut op) {
            return Ok(Some((old, op, false)));
        }
        self.write(Some(&old), &op)?;
        Ok(Some((old, op, true)))
    }
}

/// The store operations, synchronous: sled answers from memory (durability comes with
/// [`SledStore::flush`]). [`Store`] is implemented by calling these.
impl SledStore {
    pub fn register(
        &self,
        op: Operation,
        early_window: Duration,
    ) -> Result<Registered, StoreError> {
        let key = pair_key(&op.upstream, &op.operation);
        let _pair = self.pair_locks.lock(&key);
        if let Some(existing) = self.keys.get(&key).map_err(io)? {
            let id = OperationId::from_text(String::from_utf8_lossy(&existing));
            if let Some(found) = self.get(&id)? {
                return Ok(Registered::Existing(found));
            }
            // The key outlived its record (a crash between the two writes before the
            // registration was acknowledged): register afresh under the new id.
        }
        let mut op = op;
        let mut early_webhook = None;
        let early = self.early.get(&key).map_err(io)?;
        if let Some(at_bytes) = &early {
            let at = ts_from(at_bytes);
            if at.plus(early_window) >= op.created_at {
                early_webhook = Some(at);
                op.webhook_at = Some(at);
                match early_outcome(at_bytes) {
                    Some(outcome) => {
                        op.finish_from_event(&outcome, op.created_at);
                    }
                    None => {
                        op.webhook_reads = WEBHOOK_READS;
                        op.next_poll_at = Some(op.created_at);
                    }
                }
            }
        }
        let _id = self.id_locks.lock(op.id.as_bytes());
        // Key first: a key without its record is repaired above; a record without its key would
        // be a second registration of the same operation.
        self.keys
            .insert(key.as_slice(), op.id.as_bytes())
            .map_err(io)?;
        self.write(None, &op)?;
        self.operations.fetch_add(1, Ordering::SeqCst);
        if early.is_some() {
            // After the record that carries its effect.
            self.early.remove(&key).map_err(io)?;
        }
        Ok(Registered::Created { op, early_webhook })
    }

    pub fn get(&self, id: &OperationId) -> Result<Option<Operation>, StoreError> {
        match self.ops.get(id.as_bytes()).map_err(io)? {
            None => Ok(None),
            Some(b) => decode(id.as_bytes(), &b).map(Some),
        }
    }

    pub fn find(&self, upstream: &str, operation: &str) -> Result<Option<Operation>, StoreError> {
        let Some(id) = self.keys.get(pair_key(upstream, operation)).map_err(io)? else {
            return Ok(None);
        };
        let id = OperationId::from_text(String::from_utf8_lossy(&id));
        // The index is a superset: the record decides.
        Ok(self
            .get(&id)?
            .filter(|op| op.upstream == upstream && op.operation == operation))
    }

    pub fn list(
        &self,
        f: &ListFilter,
    ) -> Result<(Vec<Operation>, Option<OperationId>), StoreError> {
        let start = match &f.cursor {
            Some(c) => Bound::Excluded(c.as_bytes().to_vec()),
            None => Bound::Unbounded,
        };
        let mut out = Vec::new();
        let limit = f.limit.max(1);
        for item in self.ops.range((start, Bound::Unbounded)) {
            let (k, v) = item.map_err(io)?;
            let op = decode(&k, &v)?;
            if !f.matches(&op) {
                continue;
            }
            out.push(op);
            if out.len() == limit {
                let next = out.last().map(|o| o.id.clone());
                return Ok((out, next));
            }
        }
        Ok((out, None))
    }

    pub fn update(
        &self,
        id: &OperationId,
        f: &dyn Fn(&mut Operation) -> bool,
    ) -> Result<Option<Updated>, StoreError> {
        let Some((old, op, write)) = self.update_locked(id, &mut |o| f(o))? else {
            return Ok(None);
        };
        Ok(Some(Updated::from_change(&old, op, write)))
    }

    pub fn delete(&self, id: &OperationId) -> Result<Option<Operation>, StoreError> {
        let _g = self.id_locks.lock(id.as_bytes());
        let Some(op) = self.get(id)? else {
            return Ok(None);
        };
        self.remove_locked(id, &op)?;
        Ok(Some(op))
    }

    /// Remove `op`'s record and its indexes; the caller holds its id lock.
    fn remove_locked(&self, id: &OperationId, op: &Operation) -> Result<(), StoreError> {
        // Record first: whatever a crash leaves behind is an index entry without a record.
        self.touch();
        self.ops.remove(id.as_bytes()).map_err(io)?;
        self.operations.fetch_sub(1, Ordering::SeqCst);
        // Only if the key still names this record (a registration may have replaced it).
        let _ = self
            .keys
            .compare_and_swap(
                pair_key(&op.upstream, &op.operation),
                Some(id.as_bytes()),
                None as Option<&[u8]>,
            )
            .map_err(io)?;
        self.active.remove(id.as_bytes()).map_err(io)?;
        self.count_active(Some(op), -1);
        self.outbox.remove(id.as_bytes()).map_err(io)?;
        if self.failed.remove(id.as_bytes()).map_err(io)?.is_some() {
            self.failed_count.fetch_sub(1, Ordering::SeqCst);
        }
        for e in &op.events {
            self.outbox.remove(pair_key(id, &e.name)).map_err(io)?;
        }
        Ok(())
    }

    pub fn find_operation(
        &self,
        upstream: &str,
        candidates: &[String],
        suffix: Option<&str>,
    ) -> Result<Option<String>, StoreError> {
        for c in candidates {
            if self.keys.get(pair_key(upstream, c)).map_err(io)?.is_some() {
                return Ok(Some(c.clone()));
            }
        }
        let Some(suffix) = suffix.filter(|s| !s.is_empty()) else {
            return Ok(None);
        };
        let prefix = pair_key(upstream, "");
        let tail = format!("/{suffix}");
        for entry in self.keys.scan_prefix(&prefix).keys().take(SUFFIX_SCAN_MAX) {
            let key = entry.map_err(io)?;
            let op = String::from_utf8_lossy(&key[prefix.len()..]);
            if op.ends_with(&tail) {
                return Ok(Some(op.into_owned()));
            }
        }
        Ok(None)
    }

    pub fn record_webhook(
        &self,
        upstream: &str,
        webhook_id: &str,
        operation: &str,
        outcome: Option<&EventOutcome>,
        now: Timestamp,
    ) -> Result<WebhookRecord, StoreError> {
        let inbox_key = pair_key(upstream, webhook_id);
        let mut early_value = ts_bytes(now).to_vec();
        if let Some(o) = outcome {
            // Serialising plain data cannot fail.
            early_value.extend(serde_json::to_vec(o).unwrap_or_default());
        }
        let op_key = pair_key(upstream, operation);
        // One webhook id is always about one operation, so the pair lock also serialises
        // duplicates of the same webhook.
        let _pair = self.pair_locks.lock(&op_key);
        if self.inbox.get(&inbox_key).map_err(io)?.is_some() {
            return Ok(WebhookRecord::Duplicate);
        }
        self.touch();
        let id = self
            .keys
            .get(&op_key)
            .map_err(io)?
            .map(|b| OperationId::from_text(String::from_utf8_lossy(&b)));
        let applied = match &id {
            None => None,
            Some(id) => self.update_locked(id, &mut |op| {
                op.webhook_at = Some(now);
                match (op.status.is_terminal(), outcome) {
                    (false, Some(outcome)) => {
                        op.finish_from_event(outcome, now);
                    }
                    (true, _) => op.late_observations += 1,
                    (false, None) => {
                        op.webhook_reads = WEBHOOK_READS;
                        op.next_poll_at = Some(now);
                        op.updated_at = now;
                    }
                }
                true
            })?,
        };
        let record = match applied {
            None => {
                // The first outcome kept wins; a thin webhook never replaces one.
                let kept = self.early.get(&op_key).map_err(io)?;
                if kept.is_none_or(|v| early_outcome(&v).is_none()) {
                    self.early
                        .insert(op_key.as_slice(), early_value.as_slice())
                        .map_err(io)?;
                }
                WebhookRecord::Kept
            }
            Some((old, op, _)) => {
                let terminal = old.status.is_terminal();
                if !terminal && outcome.is_some() {
                    WebhookRecord::Finished(Box::new(op))
                } else {
                    WebhookRecord::Applied {
                        id: op.id,
                        terminal,
                    }
                }
            }
        };
        // The webhook id last: a crash before it lets the upstream's retry apply it again
        // (harmless), never marks as seen a webhook whose effect was lost.
        self.inbox
            .insert(inbox_key.as_slice(), &ts_bytes(now))
            .map_err(io)?;
        Ok(record)
    }

    pub fn for_each_scheduled(
        &self,
        f: &mut dyn FnMut(OperationId, &str, Timestamp),
    ) -> Result<usize, StoreError> {
        let mut n = 0;
        let mut counts = ActiveCounts::new();
        for item in self.active.iter() {
            let (k, v) = item.map_err(io)?;
            let id = OperationId::from_text(String::from_utf8_lossy(&k));
            let (upstream, status) = active_parts(&v);
            // An entry written before the status was recorded: read it from the record.
            let status = match status {
                Some(s) => Some(s),
                None => self.get(&id)?.map(|o| o.status),
            };
            if let Some(slot) = status.and_then(active_slot) {
                counts.entry(upstream.clone()).or_insert([0; 2])[slot] += 1;
            }
            f(id, &upstream, ts_from(&v));
            n += 1;
        }
        *self.active_counts.lock().unwrap_or_else(|p| p.into_inner()) = counts;
        Ok(n)
    }

    pub fn outbox(&self) -> Result<Vec<OutboxEntry>, StoreError> {
        let mut out = Vec::new();
        for item in self.outbox.iter() {
            let (k, v) = item.map_err(io)?;
            let text = String::from_utf8_lossy(&k);
            let key = match text.split_once('\0') {
                Some((op, event)) => DeliveryKey::event(OperationId::from_text(op), event),
                None => DeliveryKey::terminal(OperationId::from_text(text.into_owned())),
            };
            out.push(OutboxEntry {
                key,
                at: ts_from(&v),
            });
        }
        Ok(out)
    }

    pub fn purge_webhooks(
        &self,
        inbox_before: Timestamp,
        early_before: Timestamp,
    ) -> Result<usize, StoreError> {
        let mut removed = 0;
        self.touch();
        for (tree, before) in [(&self.inbox, inbox_before), (&self.early, early_before)] {
            for item in tree.iter() {
                let (k, v) = item.map_err(io)?;
                if ts_from(&v) < before {
                    // compare_and_swap so that a fresher write to the same key is kept.
                    if tree
                        .compare_and_swap(&k, Some(&v), None as Option<&[u8]>)
                        .map_err(io)?
                        .is_ok()
                    {
                        removed += 1;
                    }
                }
            }
        }
        Ok(removed)
    }

    /// Every non-terminal operation and when it is next due for a poll.
    pub fn scheduled(&self) -> Result<Vec<super::Due>, StoreError> {
        let mut out = Vec::new();
        self.for_each_scheduled(&mut |id, upstream, at| {
            out.push(super::Due {
                id,
                upstream: upstream.to_string(),
                at,
            })
        })?;
        Ok(out)
    }

    /// Flush; when anything was written since the last flush, write the next generation first
    /// and hand it to the mark writer after (see [`integrity`]).
    pub fn flush(&self) -> Result<(), StoreError> {
        let mut generation = self.generation_lock();
        if !self.dirty.swap(false, Ordering::SeqCst) {
            return self.db.flush().map(|_| ()).map_err(io);
        }
        let next = *generation + 1;
        let operations = self.operations.load(Ordering::SeqCst).max(0) as u64;
        let flushed = self
            .meta
            .insert(GENERATION, &generation_value(next, operations))
            .and_then(|_| self.db.flush())
            .map_err(io);
        if let Err(e) = flushed {
            self.dirty.store(true, Ordering::SeqCst);
            return Err(e);
        }
        *generation = next;
        self.marks.offer(Mark {
            generation: next,
            operations,
        });
        Ok(())
    }

    pub fn active_by_status(&self) -> Vec<(String, Status, u64)> {
        let counts = self.active_counts.lock().unwrap_or_else(|p| p.into_inner());
        counts
            .iter()
            .flat_map(|(u, c)| {
                [(Status::Pending, c[0]), (Status::Running, c[1])]
                    .map(|(s, n)| (u.clone(), s, n.max(0) as u64))
            })
            .collect()
    }

    pub fn failed_deliveries(&self) -> Result<u64, StoreError> {
        if !self.meta.contains_key(FAILED_INDEX).map_err(io)? {
            // A store written before the index: build it once from the records.
            self.touch();
            self.failed.clear().map_err(io)?;
            for item in self.ops.iter() {
                let (k, v) = item.map_err(io)?;
                if decode(&k, &v)?.delivery.state == DeliveryState::Failed {
                    self.failed.insert(k, &[]).map_err(io)?;
                }
            }
            self.meta.insert(FAILED_INDEX, &[]).map_err(io)?;
            self.failed_count
                .store(self.failed.len() as i64, Ordering::SeqCst);
        }
        Ok(self.failed_count.load(Ordering::SeqCst).max(0) as u64)
    }

    pub fn load_priors(&self) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.priors.get(PRIORS_KEY).map_err(io)?.map(|v| v.to_vec()))
    }

    pub fn save_priors(&self, bytes: &[u8]) -> Result<(), StoreError> {
        self.touch();
        self.priors.insert(PRIORS_KEY, bytes).map_err(io)?;
        Ok(())
    }

    pub fn size_on_disk(&self) -> Result<u64, StoreError> {
        self.db.size_on_disk().map_err(io)
    }
}

mod purge;
mod store_impl;
#[cfg(test)]
mod tests;
