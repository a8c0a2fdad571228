//! The sled store's byte formats and small helpers: keys, record and index encodings, the
//! striped locks, and the data directory's permissions. Split out of `sled_store.rs`, which
//! keeps the store itself.

use std::hash::{Hash, Hasher};
use std::path::Path;
use std::sync::{Mutex, MutexGuard};

use super::StoreError;
use crate::clock::Timestamp;
use crate::operation::{EventOutcome, Operation, Status};

/// A fixed set of mutexes, one chosen by the key's hash: serialises writers of the same key
/// without a map of locks. Held only across in-memory sled calls, never across an `.await`.
pub(super) struct Stripes(Vec<Mutex<()>>);

pub(super) const STRIPES: usize = 256;

impl Stripes {
    pub(super) fn new() -> Stripes {
        Stripes((0..STRIPES).map(|_| Mutex::new(())).collect())
    }

    pub(super) fn lock(&self, key: &[u8]) -> MutexGuard<'_, ()> {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        key.hash(&mut h);
        let m = &self.0[(h.finish() as usize) % STRIPES];
        // The guarded data is `()`: a panic elsewhere cannot leave it inconsistent.
        m.lock().unwrap_or_else(|p| p.into_inner())
    }
}

pub(super) fn io(e: sled::Error) -> StoreError {
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

pub(super) fn pair_key(a: impl AsRef<str>, b: impl AsRef<str>) -> Vec<u8> {
    let (a, b) = (a.as_ref(), b.as_ref());
    let mut k = Vec::with_capacity(a.len() + b.len() + 1);
    k.extend_from_slice(a.as_bytes());
    k.push(0);
    k.extend_from_slice(b.as_bytes());
    k
}

pub(super) fn ts_bytes(t: Timestamp) -> [u8; 8] {
    t.0.to_be_bytes()
}

pub(super) fn ts_from(bytes: &[u8]) -> Timestamp {
    let mut b = [0u8; 8];
    let n = bytes.len().min(8);
    b[..n].copy_from_slice(&bytes[..n]);
    Timestamp(u64::from_be_bytes(b))
}

pub(super) fn decode(key: &[u8], bytes: &[u8]) -> Result<Operation, StoreError> {
    serde_json::from_slice(bytes).map_err(|e| StoreError::Corrupt {
        key: String::from_utf8_lossy(key).into_owned(),
        message: e.to_string(),
    })
}

pub(super) fn encode(op: &Operation) -> Vec<u8> {
    // Serialising a struct of plain data to JSON cannot fail.
    serde_json::to_vec(op).unwrap_or_default()
}

pub(super) fn active_value(op: &Operation) -> Vec<u8> {
    let mut v = ts_bytes(op.next_poll_at.unwrap_or(op.deadline_at)).to_vec();
    v.extend_from_slice(op.upstream.as_bytes());
    v.push(0);
    v.extend_from_slice(op.status.as_str().as_bytes());
    v
}

/// The upstream and (if recorded) the status of an `active` value.
pub(super) fn active_parts(v: &[u8]) -> (String, Option<Status>) {
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
pub(super) type ActiveCounts = std::collections::HashMap<String, [i64; 2]>;

pub(super) fn active_slot(status: Status) -> Option<usize> {
    match status {
        Status::Pending => Some(0),
        Status::Running => Some(1),
        _ => None,
    }
}

/// The outcome kept with an early webhook, if any. A value that cannot be read is treated as
/// a thin webhook (the status read decides), never as an outcome.
pub(super) fn early_outcome(value: &[u8]) -> Option<EventOutcome> {
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
pub(super) fn corrupt(dir: &Path, e: &sled::Error) -> StoreError {
    StoreError::Damaged(format!(
        "the store at {} is damaged: sled cannot read its files ({e}). Restore the data \
         directory from a backup; `hookshim store verify` shows what can be read; to start empty \
         instead, move the data directory aside (every operation it held is forgotten)",
        dir.display()
    ))
}

/// The key in `meta` that says the `failed` index was built.
pub(super) const FAILED_INDEX: &[u8] = b"failed_index";

/// The key of the flush generation in the `meta` tree.
pub(super) const GENERATION: &[u8] = b"generation";

pub(super) fn generation_value(generation: u64, operations: u64) -> [u8; 16] {
    let mut v = [0u8; 16];
    v[..8].copy_from_slice(&generation.to_be_bytes());
    v[8..].copy_from_slice(&operations.to_be_bytes());
    v
}

/// The data directory holds the callback secret and every record: mode 0700, set explicitly
/// so the umask does not matter. A directory made here must get it (else the open fails); an
/// existing one is tightened if we may, with a warning if not (another owner, a read-only mount).
pub(super) fn private_dir(path: &Path, created: bool) -> std::io::Result<()> {
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
pub(super) fn private_files(dir: &Path) {
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
