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

use std::hash::{Hash, Hasher};
use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use super::integrity::{self, Mark, MarkWriter};
use super::{
    ListFilter, OutboxEntry, Registered, SUFFIX_SCAN_MAX, Store, StoreError, Updated, WebhookRecord,
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

/// A fixed set of mutexes, one chosen by the key's hash: serialises writers of the same key
/// without a map of locks. Held only across in-memory sled calls, never across an `.await`.
struct Stripes(Vec<Mutex<()>>);

const STRIPES: usize = 256;

impl Stripes {
    fn new() -> Stripes {
        Stripes((0..STRIPES).map(|_| Mutex::new(())).collect())
    }

    fn lock(&self, key: &[u8]) -> MutexGuard<'_, ()> {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        key.hash(&mut h);
        let m = &self.0[(h.finish() as usize) % STRIPES];
        // The guarded data is `()`: a panic elsewhere cannot leave it inconsistent.
        m.lock().unwrap_or_else(|p| p.into_inner())
    }
}

fn io(e: sled::Error) -> StoreError {
    match e {
        sled::Error::Io(io) => {
            // sled wraps the OS error in a custom one; keep the kind, say it plainly.
            let full =
                io.kind() == std::io::ErrorKind::StorageFull || io.raw_os_error() == Some(28);
            StoreError::Io(if full {
                "no space left on device: the disk holding the data directory is full; free space, then restart \
                 hookshim (the store refuses writes after an I/O error; everything acknowledged is on disk)"
                    .to_string()
            } else {
                io.to_string()
            })
        }
        other => StoreError::Io(other.to_string()),
    }
}

fn pair_key(a: impl AsRef<str>, b: impl AsRef<str>) -> Vec<u8> {
    let (a, b) = (a.as_ref(), b.as_ref());
    let mut k = Vec::with_capacity(a.len() + b.len() + 1);
    k.extend_from_slice(a.as_bytes());
    k.push(0);
    k.extend_from_slice(b.as_bytes());
    k
}

fn ts_bytes(t: Timestamp) -> [u8; 8] {
    t.0.to_be_bytes()
}

fn ts_from(bytes: &[u8]) -> Timestamp {
    let mut b = [0u8; 8];
    let n = bytes.len().min(8);
    b[..n].copy_from_slice(&bytes[..n]);
    Timestamp(u64::from_be_bytes(b))
}

fn decode(key: &[u8], bytes: &[u8]) -> Result<Operation, StoreError> {
    serde_json::from_slice(bytes).map_err(|e| StoreError::Corrupt {
        key: String::from_utf8_lossy(key).into_owned(),
        message: e.to_string(),
    })
}

fn encode(op: &Operation) -> Vec<u8> {
    // Serialising a struct of plain data to JSON cannot fail.
    serde_json::to_vec(op).unwrap_or_default()
}

fn active_value(op: &Operation) -> Vec<u8> {
    let mut v = ts_bytes(op.next_poll_at.unwrap_or(op.deadline_at)).to_vec();
    v.extend_from_slice(op.upstream.as_bytes());
    v.push(0);
    v.extend_from_slice(op.status.as_str().as_bytes());
    v
}

/// The upstream and (if recorded) the status of an `active` value.
fn active_parts(v: &[u8]) -> (String, Option<Status>) {
    let rest = v.get(8..).unwrap_or_default();
    match rest.iter().position(|b| *b == 0) {
        Some(i) => (
            String::from_utf8_lossy(&rest[..i]).into_owned(),
            std::str::from_utf8(&rest[i + 1..])
                .ok()
                .and_then(Status::parse),
        ),
        None => (String::from_utf8_lossy(rest).into_owned(), None),
    }
}

/// Non-terminal operations per upstream: `[pending, running]`.
type ActiveCounts = std::collections::HashMap<String, [i64; 2]>;

fn active_slot(status: Status) -> Option<usize> {
    match status {
        Status::Pending => Some(0),
        Status::Running => Some(1),
        _ => None,
    }
}

/// The outcome kept with an early webhook, if any. A value that cannot be read is treated as
/// a thin webhook (the status read decides), never as an outcome.
fn early_outcome(value: &[u8]) -> Option<EventOutcome> {
    let json = value.get(8..).filter(|j| !j.is_empty())?;
    match serde_json::from_slice(json) {
        Ok(o) => Some(o),
        Err(e) => {
            tracing::warn!(error = %e, "unreadable outcome kept with an early webhook; a status read will decide");
            None
        }
    }
}

/// sled found its files unreadable: say so, and what to do.
fn corrupt(dir: &Path, e: &sled::Error) -> StoreError {
    StoreError::Damaged(format!(
        "the store at {} is damaged: sled cannot read its files ({e}). Restore the data \
         directory from a backup; `hookshim store verify` shows what can be read; to start empty \
         instead, move the data directory aside (every operation it held is forgotten)",
        dir.display()
    ))
}

/// The key in `meta` that says the `failed` index was built.
const FAILED_INDEX: &[u8] = b"failed_index";

/// The key of the flush generation in the `meta` tree.
const GENERATION: &[u8] = b"generation";

fn generation_value(generation: u64, operations: u64) -> [u8; 16] {
    let mut v = [0u8; 16];
    v[..8].copy_from_slice(&generation.to_be_bytes());
    v[8..].copy_from_slice(&operations.to_be_bytes());
    v
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
        let db = sled::Config::new()
            .path(path)
            .cache_capacity(cache_bytes)
            // Only the group-commit task flushes (see DESIGN.md: sled's concurrent flushes).
            .flush_every_ms(None)
            .open()
            .map_err(|e| match e {
                sled::Error::Io(ref io)
                    if io.kind() == std::io::ErrorKind::WouldBlock
                        || io.to_string().contains("lock") =>
                {
                    open_err(&format!(
                        "{e}; is another hookshim process using this data directory?"
                    ))
                }
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

impl Store for SledStore {
    fn register(&self, op: Operation, early_window: Duration) -> Result<Registered, StoreError> {
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

    fn get(&self, id: &OperationId) -> Result<Option<Operation>, StoreError> {
        match self.ops.get(id.as_bytes()).map_err(io)? {
            None => Ok(None),
            Some(b) => decode(id.as_bytes(), &b).map(Some),
        }
    }

    fn find(&self, upstream: &str, operation: &str) -> Result<Option<Operation>, StoreError> {
        let Some(id) = self.keys.get(pair_key(upstream, operation)).map_err(io)? else {
            return Ok(None);
        };
        let id = OperationId::from_text(String::from_utf8_lossy(&id));
        // The index is a superset: the record decides.
        Ok(self
            .get(&id)?
            .filter(|op| op.upstream == upstream && op.operation == operation))
    }

    fn list(&self, f: &ListFilter) -> Result<(Vec<Operation>, Option<OperationId>), StoreError> {
        let start = match &f.cursor {
            Some(c) => Bound::Excluded(c.as_bytes().to_vec()),
            None => Bound::Unbounded,
        };
        let mut out = Vec::new();
        let limit = f.limit.max(1);
        for item in self.ops.range((start, Bound::Unbounded)) {
            let (k, v) = item.map_err(io)?;
            let op = decode(&k, &v)?;
            if f.status.is_some_and(|s| s != op.status)
                || f.upstream.as_ref().is_some_and(|u| u != &op.upstream)
                || (f.delivery_failed
                    && op.delivery.state != crate::operation::DeliveryState::Failed)
            {
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

    fn update(
        &self,
        id: &OperationId,
        f: &dyn Fn(&mut Operation) -> bool,
    ) -> Result<Option<Updated>, StoreError> {
        let Some((old, op, write)) = self.update_locked(id, &mut |o| f(o))? else {
            return Ok(None);
        };
        Ok(Some(Updated::from_change(&old, op, write)))
    }

    fn delete(&self, id: &OperationId) -> Result<Option<Operation>, StoreError> {
        let _g = self.id_locks.lock(id.as_bytes());
        let Some(op) = self.get(id)? else {
            return Ok(None);
        };
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
        self.count_active(Some(&op), -1);
        self.outbox.remove(id.as_bytes()).map_err(io)?;
        if self.failed.remove(id.as_bytes()).map_err(io)?.is_some() {
            self.failed_count.fetch_sub(1, Ordering::SeqCst);
        }
        for e in &op.events {
            self.outbox.remove(pair_key(id, &e.name)).map_err(io)?;
        }
        Ok(Some(op))
    }

    fn find_operation(
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

    fn record_webhook(
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

    fn for_each_scheduled(
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

    fn outbox(&self) -> Result<Vec<OutboxEntry>, StoreError> {
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

    fn purge_webhooks(
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

    /// Flush; when anything was written since the last flush, write the next generation first
    /// and hand it to the mark writer after (see [`integrity`]).
    fn flush(&self) -> Result<(), StoreError> {
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

    fn active_by_status(&self) -> Vec<(String, Status, u64)> {
        let counts = self.active_counts.lock().unwrap_or_else(|p| p.into_inner());
        counts
            .iter()
            .flat_map(|(u, c)| {
                [(Status::Pending, c[0]), (Status::Running, c[1])]
                    .map(|(s, n)| (u.clone(), s, n.max(0) as u64))
            })
            .collect()
    }

    fn failed_deliveries(&self) -> Result<u64, StoreError> {
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

    fn load_priors(&self) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.priors.get(PRIORS_KEY).map_err(io)?.map(|v| v.to_vec()))
    }

    fn save_priors(&self, bytes: &[u8]) -> Result<(), StoreError> {
        self.touch();
        self.priors.insert(PRIORS_KEY, bytes).map_err(io)?;
        Ok(())
    }

    fn size_on_disk(&self) -> Result<u64, StoreError> {
        self.db.size_on_disk().map_err(io)
    }
}

/// The data directory holds the callback secret and every record: mode 0700, set explicitly
/// so the umask does not matter. A directory made here must get it (else the open fails); an
/// existing one is tightened if we may, with a warning if not (another owner, a read-only mount).
fn private_dir(path: &Path, created: bool) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        match std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o700)) {
            Ok(()) => {}
            Err(e) if created => return Err(e),
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "cannot make the data directory private (mode 0700); make it owned by the user hookshim runs as")
            }
        }
    }
    let _ = (path, created);
    Ok(())
}

/// sled creates its files with the umask's mode: make every file it has made so far (`conf`,
/// `db`, `blobs/`, snapshots) 0600 (directories 0700). Files it makes later sit inside the
/// private directory.
fn private_files(dir: &Path) {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for entry in entries.flatten() {
            let Ok(kind) = entry.file_type() else {
                continue;
            };
            let mode = if kind.is_dir() {
                0o700
            } else if kind.is_file() {
                0o600
            } else {
                continue;
            };
            if let Err(e) =
                std::fs::set_permissions(entry.path(), std::fs::Permissions::from_mode(mode))
            {
                tracing::warn!(path = %entry.path().display(), error = %e, "cannot make a store file private");
            }
            if kind.is_dir() {
                private_files(&entry.path());
            }
        }
    }
    let _ = dir;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::operation::{DetectedVia, Status, sample};
    use crate::store::WebhookRecord;

    #[test]
    fn active_values_carry_the_status_and_old_ones_still_read() {
        let mut v = ts_bytes(Timestamp(5)).to_vec();
        v.extend_from_slice(b"jobs");
        assert_eq!(active_parts(&v), ("jobs".to_string(), None));
        v.extend_from_slice(b"\0running");
        assert_eq!(
            active_parts(&v),
            ("jobs".to_string(), Some(Status::Running))
        );
        assert_eq!(ts_from(&v), Timestamp(5));
    }

    fn store() -> (tempfile::TempDir, SledStore) {
        let dir = tempfile::tempdir().unwrap();
        let s = SledStore::open(dir.path(), 8 << 20).unwrap();
        (dir, s)
    }

    #[cfg(unix)]
    #[test]
    fn a_new_data_directory_is_private_whatever_the_umask() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let s = SledStore::open(&data, 8 << 20).unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&data), 0o700);
        assert_eq!(mode(&data.join("db")), 0o600);
        assert_eq!(mode(&data.join("conf")), 0o600);
        drop(s);
        // An existing directory left open to others is tightened at the next open.
        std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::set_permissions(data.join("db"), std::fs::Permissions::from_mode(0o644)).unwrap();
        let _s = SledStore::open(&data, 8 << 20).unwrap();
        assert_eq!(mode(&data), 0o700);
        assert_eq!(mode(&data.join("db")), 0o600);
    }

    #[test]
    fn a_store_behind_its_mark_is_refused_until_the_loss_is_accepted() {
        let dir = tempfile::tempdir().unwrap();
        let s = SledStore::open(dir.path(), 8 << 20).unwrap();
        // Nothing written: a flush moves no generation.
        s.flush().unwrap();
        drop(s);
        assert_eq!(integrity::read_mark(dir.path()).unwrap(), None);
        let s = SledStore::open(dir.path(), 8 << 20).unwrap();
        s.register(sample(Timestamp(1_000)), Duration::ZERO)
            .unwrap();
        s.flush().unwrap();
        // Written off the flush path, soon; and before the store is closed.
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while integrity::read_mark(dir.path()).unwrap().is_none() {
            assert!(std::time::Instant::now() < deadline, "no mark after 5s");
            std::thread::sleep(Duration::from_millis(5));
        }
        s.flush().unwrap();
        drop(s);
        let mark = integrity::read_mark(dir.path()).unwrap().unwrap();
        assert_eq!((mark.generation, mark.operations), (1, 1));
        // Reopening a sound store is fine.
        drop(SledStore::open(dir.path(), 8 << 20).unwrap());
        // A mark ahead of the store: acknowledged writes are missing.
        let ahead = integrity::Mark {
            generation: 5,
            operations: 3,
        };
        integrity::write_mark(dir.path(), &ahead).unwrap();
        match SledStore::open(dir.path(), 8 << 20) {
            Err(StoreError::Damaged(m)) => {
                assert!(m.contains("holds 1 operations"), "{m}");
                assert!(m.contains("3 operations were acknowledged"), "{m}");
            }
            Err(e) => panic!("expected Damaged, got {e}"),
            Ok(_) => panic!("a store behind its mark must be refused"),
        }
        let s = SledStore::open_unchecked(dir.path(), 8 << 20).unwrap();
        assert!(!s.verify().unwrap().sound());
        assert!(s.accept_damage().unwrap().starts_with("accepted: "));
        drop(s);
        // The generation moves on past the mark's, never back.
        let mark = integrity::read_mark(dir.path()).unwrap().unwrap();
        assert_eq!(mark.generation, 6);
        let s = SledStore::open(dir.path(), 8 << 20).unwrap();
        assert!(s.verify().unwrap().sound());
    }

    /// The invariants a crash after a flush must find intact: every record decodes, a running
    /// record is scheduled, a terminal record with a callback to send has its outbox entry.
    fn assert_consistent(s: &SledStore, step: &str) {
        for item in s.ops.iter() {
            let (k, v) = item.unwrap();
            let op = decode(&k, &v).unwrap_or_else(|e| panic!("{step}: {e}"));
            if !op.status.is_terminal() {
                assert!(
                    s.active.contains_key(&k).unwrap(),
                    "{step}: {} is {:?} but has no `active` entry",
                    op.id,
                    op.status
                );
            }
            if op.in_outbox() {
                assert!(
                    s.outbox.contains_key(&k).unwrap(),
                    "{step}: {} has a callback to send but no `outbox` entry",
                    op.id
                );
            }
        }
        for item in s.keys.iter() {
            let (_, id) = item.unwrap();
            assert!(
                s.ops.contains_key(&id).unwrap(),
                "{step}: a registration key names a missing record"
            );
        }
        let report = s.verify().unwrap();
        assert!(report.sound(), "{step}: {:?}", report.problems);
    }

    /// Flush, close, and open the store again from the same directory (what a restart sees).
    fn reopen(dir: &Path, s: SledStore, step: &str) -> SledStore {
        s.flush().unwrap();
        drop(s);
        let s = SledStore::open(dir, 8 << 20).unwrap_or_else(|e| panic!("{step}: reopen: {e}"));
        assert_consistent(&s, step);
        s
    }

    #[test]
    fn every_write_step_survives_a_reopen_with_its_indexes() {
        let dir = tempfile::tempdir().unwrap();
        let s = SledStore::open(dir.path(), 8 << 20).unwrap();
        let op = sample(Timestamp(1_000));
        let id = op.id.clone();

        // 1. register: scheduled, nothing to send.
        s.register(op.clone(), Duration::ZERO).unwrap();
        let s = reopen(dir.path(), s, "after register");
        let rec = s.get(&id).unwrap().expect("the registration survives");
        assert_eq!(rec.status, Status::Pending);
        assert_eq!(s.scheduled().unwrap().len(), 1);
        assert!(s.outbox().unwrap().is_empty());
        match s.register(op.clone(), Duration::ZERO).unwrap() {
            Registered::Existing(e) => assert_eq!(e.id, id),
            other => panic!("the key survives the reopen too: {other:?}"),
        }

        // 2. a thin webhook: due for a read now, its id remembered.
        let applied = s
            .record_webhook("jobs", "msg_1", "abc", None, Timestamp(2_000))
            .unwrap();
        assert_eq!(
            applied,
            WebhookRecord::Applied {
                id: id.clone(),
                terminal: false
            }
        );
        let s = reopen(dir.path(), s, "after a webhook");
        let rec = s.get(&id).unwrap().unwrap();
        assert_eq!(rec.webhook_at, Some(Timestamp(2_000)));
        assert_eq!(rec.webhook_reads, WEBHOOK_READS);
        assert_eq!(
            s.scheduled().unwrap()[0].at,
            Timestamp(2_000),
            "the schedule index follows the record"
        );
        assert_eq!(
            s.record_webhook("jobs", "msg_1", "abc", None, Timestamp(2_100))
                .unwrap(),
            WebhookRecord::Duplicate,
            "the webhook id survives the reopen"
        );

        // 3. the terminal update: out of the schedule, into the outbox, in one write.
        s.update(&id, &|o| {
            o.result = Some(serde_json::json!({"url": "u"}));
            o.finish(Status::Succeeded, DetectedVia::Webhook, Timestamp(3_000))
        })
        .unwrap()
        .unwrap();
        let s = reopen(dir.path(), s, "after the terminal update");
        let rec = s.get(&id).unwrap().unwrap();
        assert_eq!(rec.status, Status::Succeeded);
        assert_eq!(rec.result, Some(serde_json::json!({"url": "u"})));
        assert_eq!(rec.delivery.state, DeliveryState::Pending);
        assert!(
            s.scheduled().unwrap().is_empty(),
            "a terminal record is not polled"
        );
        assert_eq!(
            s.outbox().unwrap(),
            vec![OutboxEntry {
                key: DeliveryKey::terminal(id.clone()),
                at: Timestamp(3_000)
            }]
        );

        // 4. the delivery recorded: the outbox entry goes, the record says delivered.
        // (What `delivery::record_attempt` writes for a 2xx; the store may not import it.)
        s.update(&id, &|o| {
            o.delivery.state = DeliveryState::Delivered;
            o.delivery.attempts = 1;
            o.delivery.last_status = Some(200);
            o.delivery.next_attempt_at = None;
            o.delivery.delivered_at = Some(Timestamp(4_000));
            true
        })
        .unwrap()
        .unwrap();
        let s = reopen(dir.path(), s, "after the delivery");
        let rec = s.get(&id).unwrap().unwrap();
        assert_eq!(rec.delivery.state, DeliveryState::Delivered);
        assert_eq!(rec.delivery.delivered_at, Some(Timestamp(4_000)));
        assert!(s.outbox().unwrap().is_empty(), "nothing left to send");
        assert!(s.scheduled().unwrap().is_empty());

        // A late observation after all that changes nothing durable.
        let again = s
            .update(&id, &|o| {
                o.finish(Status::Failed, DetectedVia::Poll, Timestamp(5_000))
            })
            .unwrap()
            .unwrap();
        assert!(!again.written);
        let s = reopen(dir.path(), s, "after a late observation");
        assert_eq!(s.get(&id).unwrap().unwrap().status, Status::Succeeded);
    }

    #[test]
    fn register_is_idempotent_per_upstream_and_operation() {
        let (_d, s) = store();
        let op = sample(Timestamp(1_000));
        assert!(matches!(
            s.register(op.clone(), Duration::from_secs(1)).unwrap(),
            Registered::Created { .. }
        ));
        let mut again = op.clone();
        again.id = OperationId::from_text("op_01J00000000000000000000001");
        match s.register(again, Duration::from_secs(1)).unwrap() {
            Registered::Existing(e) => assert_eq!(e.id, op.id),
            other => panic!("expected existing, got {other:?}"),
        }
        assert_eq!(s.scheduled().unwrap().len(), 1);
    }

    #[test]
    fn terminal_update_moves_the_record_from_schedule_to_outbox_in_one_write() {
        let (_d, s) = store();
        let op = sample(Timestamp(1_000));
        s.register(op.clone(), Duration::ZERO).unwrap();
        let updated = s
            .update(&op.id, &|o| {
                o.finish(Status::Succeeded, DetectedVia::Poll, Timestamp(2_000))
            })
            .unwrap()
            .unwrap();
        assert!(updated.written && updated.became_terminal);
        assert_eq!(updated.op.status, Status::Succeeded);
        assert!(s.scheduled().unwrap().is_empty());
        assert_eq!(s.outbox().unwrap().len(), 1);
        // A second terminal observation writes nothing.
        let again = s
            .update(&op.id, &|o| {
                o.finish(Status::Failed, DetectedVia::Poll, Timestamp(3_000))
            })
            .unwrap()
            .unwrap();
        assert!(!again.written && !again.became_terminal);
    }

    #[test]
    fn find_reads_the_upstream_operation_index() {
        let (_d, s) = store();
        let now = Timestamp(1_000);
        let mut op = crate::operation::sample(now);
        op.operation = "batches/b1".into();
        s.register(op.clone(), Duration::from_secs(60)).unwrap();
        let found = s.find(&op.upstream, "batches/b1").unwrap().unwrap();
        assert_eq!(found.id, op.id);
        assert!(s.find(&op.upstream, "b1").unwrap().is_none());
        assert!(s.find("other", "batches/b1").unwrap().is_none());
        s.delete(&op.id).unwrap();
        assert!(s.find(&op.upstream, "batches/b1").unwrap().is_none());
    }

    #[test]
    fn concurrent_updates_of_one_operation_lose_nothing() {
        let (_d, s) = store();
        let op = sample(Timestamp(1_000));
        s.register(op.clone(), Duration::ZERO).unwrap();
        let s = std::sync::Arc::new(s);
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let (s, id) = (s.clone(), op.id.clone());
                std::thread::spawn(move || {
                    for _ in 0..200 {
                        s.update(&id, &|o| {
                            o.polls += 1;
                            true
                        })
                        .unwrap();
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(s.get(&op.id).unwrap().unwrap().polls, 1_600);
    }

    #[test]
    fn delete_keeps_a_key_that_names_another_record() {
        let (_d, s) = store();
        let op = sample(Timestamp(1_000));
        s.register(op.clone(), Duration::ZERO).unwrap();
        // Simulate a re-registration that took over the key.
        s.keys
            .insert(
                pair_key(&op.upstream, &op.operation),
                b"op_other".as_slice(),
            )
            .unwrap();
        s.delete(&op.id).unwrap().unwrap();
        assert_eq!(
            s.keys
                .get(pair_key(&op.upstream, &op.operation))
                .unwrap()
                .as_deref(),
            Some(b"op_other".as_slice())
        );
        assert!(s.scheduled().unwrap().is_empty());
    }

    #[test]
    fn webhook_before_registration_is_kept_then_applied() {
        let (_d, s) = store();
        assert_eq!(
            s.record_webhook("jobs", "msg_1", "abc", None, Timestamp(500))
                .unwrap(),
            WebhookRecord::Kept
        );
        assert_eq!(
            s.record_webhook("jobs", "msg_1", "abc", None, Timestamp(600))
                .unwrap(),
            WebhookRecord::Duplicate
        );
        match s
            .register(sample(Timestamp(1_000)), Duration::from_secs(60))
            .unwrap()
        {
            Registered::Created { op, early_webhook } => {
                assert_eq!(early_webhook, Some(Timestamp(500)));
                assert_eq!(op.webhook_reads, WEBHOOK_READS);
                assert_eq!(op.next_poll_at, Some(Timestamp(1_000)));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn stale_early_webhooks_are_not_applied() {
        let (_d, s) = store();
        s.record_webhook("jobs", "msg_1", "abc", None, Timestamp(0))
            .unwrap();
        match s
            .register(sample(Timestamp(100_000)), Duration::from_secs(10))
            .unwrap()
        {
            Registered::Created { early_webhook, .. } => assert_eq!(early_webhook, None),
            other => panic!("{other:?}"),
        }
    }

    fn pausing_op() -> Operation {
        let mut op = sample(Timestamp(1_000));
        op.callback_events = vec![crate::operation::REQUIRES_ACTION.into()];
        op
    }

    fn pause() -> crate::upstream::Observation {
        crate::upstream::Observation {
            state: crate::upstream::ObservedState::RequiresAction,
            raw_status: serde_json::json!("requires_action"),
            progress: None,
            result: None,
            error: None,
            expires_at: None,
        }
    }

    #[test]
    fn event_callbacks_have_their_own_outbox_entries_and_each_update_reports_new_ones_once() {
        let (_d, s) = store();
        let op = pausing_op();
        s.register(op.clone(), Duration::ZERO).unwrap();
        let mut heard = Vec::new();
        let first = s
            .update(&op.id, &|o| {
                o.apply_observation(&pause(), Timestamp(2_000));
                true
            })
            .unwrap()
            .unwrap();
        heard.extend(first.new_callbacks);
        // Another poll during the same pause: no new event, nothing reported.
        let second = s
            .update(&op.id, &|o| {
                o.apply_observation(&pause(), Timestamp(3_000));
                true
            })
            .unwrap()
            .unwrap();
        heard.extend(second.new_callbacks);
        let key = DeliveryKey::event(op.id.clone(), "requires_action_1");
        assert_eq!(
            heard,
            vec![OutboxEntry {
                key: key.clone(),
                at: Timestamp(2_000)
            }]
        );
        let outbox: Vec<DeliveryKey> = s.outbox().unwrap().into_iter().map(|d| d.key).collect();
        assert_eq!(outbox, vec![key.clone()]);

        // The end puts the terminal callback in and takes the superseded event out, in one write.
        s.update(&op.id, &|o| {
            o.finish(Status::Succeeded, DetectedVia::Poll, Timestamp(4_000))
        })
        .unwrap();
        let outbox: Vec<DeliveryKey> = s.outbox().unwrap().into_iter().map(|d| d.key).collect();
        assert_eq!(outbox, vec![DeliveryKey::terminal(op.id.clone())]);
        s.delete(&op.id).unwrap();
        assert!(s.outbox().unwrap().is_empty());
    }

    #[test]
    fn dropping_settled_event_callbacks_at_the_bound_keeps_the_outbox_exact() {
        use crate::operation::MAX_EVENT_CALLBACKS;
        use crate::upstream::{Observation, ObservedState};
        let (_d, s) = store();
        let op = pausing_op();
        s.register(op.clone(), Duration::ZERO).unwrap();
        let running = Observation::new(ObservedState::Running, serde_json::json!("running"));
        let pause_once = |t: u64| {
            s.update(&op.id, &|o| {
                o.apply_observation(&pause(), Timestamp(t));
                o.apply_observation(&running, Timestamp(t + 1));
                true
            })
            .unwrap()
            .unwrap()
        };
        for i in 0..MAX_EVENT_CALLBACKS as u64 {
            pause_once(2_000 + 10 * i);
        }
        assert_eq!(s.outbox().unwrap().len(), MAX_EVENT_CALLBACKS);
        // All pending: one more pause adds nothing to the record or the outbox.
        let full = pause_once(10_000);
        assert!(full.new_callbacks.is_empty());
        assert_eq!(s.outbox().unwrap().len(), MAX_EVENT_CALLBACKS);
        // The first one is delivered: its outbox entry goes, and the next pause takes its place.
        s.update(&op.id, &|o| {
            o.events[0].delivery.state = DeliveryState::Delivered;
            o.events[0].delivery.next_attempt_at = None;
            true
        })
        .unwrap();
        let first = DeliveryKey::event(op.id.clone(), "requires_action_1");
        let outbox = |s: &SledStore| -> Vec<DeliveryKey> {
            s.outbox().unwrap().into_iter().map(|d| d.key).collect()
        };
        assert!(!outbox(&s).contains(&first));
        let next = pause_once(20_000);
        assert_eq!(next.new_callbacks.len(), 1);
        let now = outbox(&s);
        assert_eq!(now.len(), MAX_EVENT_CALLBACKS);
        assert!(now.contains(&DeliveryKey::event(op.id.clone(), "requires_action_34")));
        let rec = s.get(&op.id).unwrap().unwrap();
        assert_eq!(rec.events.len(), MAX_EVENT_CALLBACKS);
        assert!(rec.events.iter().all(|e| e.name != "requires_action_1"));
        // Every pending event has its entry and every entry its pending event.
        for e in &rec.events {
            assert!(now.contains(&DeliveryKey::event(op.id.clone(), &e.name)));
        }
        // The end supersedes them all and takes every entry out but the terminal one.
        s.update(&op.id, &|o| {
            o.finish(Status::Succeeded, DetectedVia::Poll, Timestamp(30_000))
        })
        .unwrap();
        assert_eq!(outbox(&s), vec![DeliveryKey::terminal(op.id.clone())]);
    }

    #[test]
    fn delete_removes_pending_event_callbacks() {
        let (_d, s) = store();
        let op = pausing_op();
        s.register(op.clone(), Duration::ZERO).unwrap();
        s.update(&op.id, &|o| {
            o.apply_observation(&pause(), Timestamp(2_000));
            true
        })
        .unwrap();
        assert_eq!(s.outbox().unwrap().len(), 1);
        s.delete(&op.id).unwrap();
        assert!(s.outbox().unwrap().is_empty());
    }

    fn outcome(status: Status, event: &str) -> EventOutcome {
        EventOutcome {
            status,
            event: event.into(),
            data: Some(serde_json::json!({"id": "abc"})),
        }
    }

    #[test]
    fn an_event_outcome_ends_a_registered_operation_in_the_same_write() {
        let (_d, s) = store();
        let op = sample(Timestamp(1_000));
        s.register(op.clone(), Duration::ZERO).unwrap();
        let ok = outcome(Status::Succeeded, "batch.succeeded");
        match s
            .record_webhook("jobs", "msg_1", "abc", Some(&ok), Timestamp(2_000))
            .unwrap()
        {
            WebhookRecord::Finished(done) => {
                assert_eq!(done.status, Status::Succeeded);
                assert_eq!(done.detected_via, Some(DetectedVia::Webhook));
            }
            other => panic!("{other:?}"),
        }
        assert!(s.scheduled().unwrap().is_empty());
        assert_eq!(s.outbox().unwrap().len(), 1);
        // A later contradicting event is only counted.
        let failed = outcome(Status::Failed, "batch.failed");
        assert!(matches!(
            s.record_webhook("jobs", "msg_2", "abc", Some(&failed), Timestamp(3_000))
                .unwrap(),
            WebhookRecord::Applied { terminal: true, .. }
        ));
        let after = s.get(&op.id).unwrap().unwrap();
        assert_eq!(after.status, Status::Succeeded);
        assert_eq!(after.late_observations, 1);
    }

    #[test]
    fn an_early_outcome_is_kept_and_applied_at_registration() {
        let (_d, s) = store();
        let failed = outcome(Status::Failed, "batch.failed");
        s.record_webhook("jobs", "msg_1", "abc", Some(&failed), Timestamp(500))
            .unwrap();
        // A thin webhook after it does not erase the outcome; a second outcome does not win.
        s.record_webhook("jobs", "msg_2", "abc", None, Timestamp(600))
            .unwrap();
        let ok = outcome(Status::Succeeded, "batch.succeeded");
        s.record_webhook("jobs", "msg_3", "abc", Some(&ok), Timestamp(700))
            .unwrap();
        match s
            .register(sample(Timestamp(1_000)), Duration::from_secs(60))
            .unwrap()
        {
            Registered::Created { op, early_webhook } => {
                assert_eq!(early_webhook, Some(Timestamp(500)));
                assert_eq!(op.status, Status::Failed);
                assert_eq!(op.upstream_status, Some(serde_json::json!("batch.failed")));
                assert_eq!(op.detected_via, Some(DetectedVia::Webhook));
                assert_eq!(op.completed_at, Some(Timestamp(1_000)));
                assert!(op.in_outbox());
            }
            other => panic!("{other:?}"),
        }
        assert!(s.scheduled().unwrap().is_empty());
        assert_eq!(s.outbox().unwrap().len(), 1);
    }

    #[test]
    fn purge_forgets_old_webhook_ids_only() {
        let (_d, s) = store();
        s.record_webhook("jobs", "old", "x", None, Timestamp(1))
            .unwrap();
        s.record_webhook("jobs", "new", "y", None, Timestamp(10_000))
            .unwrap();
        assert_eq!(
            s.purge_webhooks(Timestamp(5_000), Timestamp(5_000))
                .unwrap(),
            2
        );
        assert_eq!(
            s.record_webhook("jobs", "new", "y", None, Timestamp(10_001))
                .unwrap(),
            WebhookRecord::Duplicate
        );
        assert_eq!(
            s.record_webhook("jobs", "old", "x", None, Timestamp(10_001))
                .unwrap(),
            WebhookRecord::Kept
        );
    }
}
