//! Noticing a store that lost acknowledged data (sled 0.34 treats a damaged log as its end and
//! opens silently with whatever prefix it could read).
//!
//! Every group-commit flush that covers new writes first writes a **generation** (a counter that
//! only grows) into sled's `meta` tree, flushes, and only then records that generation in a
//! small **mark file** beside the data (`hookshim.mark`, written to a temporary file, fsynced,
//! renamed). Every write acknowledged by that flush happened before the generation was written,
//! and sled recovers a prefix of its log, so:
//! - after any crash (`kill -9`, power loss) the generation sled reads back is at least the one
//!   in the mark: no false alarm;
//! - if sled lost part of its log (truncated or damaged file), the generation it reads back is
//!   older than the mark's: acknowledged writes are gone, and hookshim refuses to start.
//!
//! The mark costs one small file write per flush at most (not per write), made on its own
//! thread at most every [`MARK_INTERVAL`] so that no acknowledgement waits for it, and nothing
//! on reads; it may lag the store by about that interval (never lead it), so a loss confined to
//! the last fraction of a second before a crash can go unnoticed. It also
//! carries the number of operations at that flush (informational, for the message) and a
//! checksum of its own text. `hookshim store verify` checks the mark and every record;
//! `serve --accept-damaged-store` accepts a loss and moves the mark on.

use std::fmt::Write as _;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

/// The mark file's name in the data directory.
pub const MARK_FILE: &str = "hookshim.mark";
const HEADER: &str = "hookshim store mark v1";

/// What the mark file says: the last flushed generation and how many operations the store
/// held then.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Mark {
    pub generation: u64,
    pub operations: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum MarkError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path} is not a hookshim store mark or is damaged ({why})")]
    Unreadable { path: String, why: String },
}

pub fn mark_path(dir: &Path) -> PathBuf {
    dir.join(MARK_FILE)
}

fn checksum(text: &str) -> String {
    hex::encode(&Sha256::digest(text.as_bytes())[..16])
}

impl Mark {
    fn body(&self) -> String {
        let mut s = String::new();
        let _ = write!(
            s,
            "{HEADER}\ngeneration={}\noperations={}\n",
            self.generation, self.operations
        );
        s
    }

    /// The file's text: the fields, then a checksum over them.
    pub fn render(&self) -> String {
        let body = self.body();
        format!("{body}checksum={}\n", checksum(&body))
    }

    pub fn parse(text: &str) -> Result<Mark, String> {
        let (body, sum) = text
            .rsplit_once("checksum=")
            .ok_or("no checksum line".to_string())?;
        if checksum(body) != sum.trim() {
            return Err("checksum mismatch".into());
        }
        let mut lines = body.lines();
        if lines.next() != Some(HEADER) {
            return Err(format!("first line is not {HEADER:?}"));
        }
        let mut field = |name: &str| -> Result<u64, String> {
            let line = lines.next().unwrap_or_default();
            line.strip_prefix(name)
                .and_then(|v| v.strip_prefix('='))
                .and_then(|v| v.parse().ok())
                .ok_or(format!("no {name}= line"))
        };
        Ok(Mark {
            generation: field("generation")?,
            operations: field("operations")?,
        })
    }
}

/// The mark in `dir`, or `None` when there is none (a new store, or one from before marks).
pub fn read_mark(dir: &Path) -> Result<Option<Mark>, MarkError> {
    let path = mark_path(dir);
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(MarkError::Read {
                path: path.display().to_string(),
                source,
            });
        }
    };
    Mark::parse(&text)
        .map(Some)
        .map_err(|why| MarkError::Unreadable {
            path: path.display().to_string(),
            why,
        })
}

/// Replace the mark atomically: write a temporary file, fsync it, rename it over the mark. A
/// crash leaves the old mark or the new one, never a torn one. (The directory is not fsynced:
/// a rename lost in a crash leaves the older mark, which only weakens the check.)
pub fn write_mark(dir: &Path, mark: &Mark) -> std::io::Result<()> {
    let tmp = dir.join(format!("{MARK_FILE}.tmp"));
    {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(mark.render().as_bytes())?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, mark_path(dir))
}

/// How often at most the mark is rewritten. Each write costs an fsync (several ms on a
/// virtual disk); the flusher hands marks over and never waits for one.
pub const MARK_INTERVAL: std::time::Duration = std::time::Duration::from_millis(100);

/// Writes marks on its own thread, off the acknowledgement path: the flusher hands over the
/// generation it just made durable ([`MarkWriter::offer`]); the thread writes the latest one,
/// at most every [`MARK_INTERVAL`]. The mark may lag the store (by about that interval), never
/// lead it. Dropping the writer writes the last offered mark before returning.
pub struct MarkWriter {
    shared: std::sync::Arc<Shared>,
    thread: Option<std::thread::JoinHandle<()>>,
}

struct Shared {
    dir: PathBuf,
    state: std::sync::Mutex<Pending>,
    wake: std::sync::Condvar,
}

#[derive(Default)]
struct Pending {
    mark: Option<Mark>,
    stop: bool,
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, Pending> {
        // Plain data: a panic elsewhere cannot leave it inconsistent.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn run(&self) {
        loop {
            let mark = {
                let mut p = self.lock();
                loop {
                    if let Some(m) = p.mark.take() {
                        break Some(m);
                    }
                    if p.stop {
                        break None;
                    }
                    p = self.wake.wait(p).unwrap_or_else(|e| e.into_inner());
                }
            };
            let Some(mark) = mark else { return };
            if let Err(e) = write_mark(&self.dir, &mark) {
                // The data is durable; an older mark only makes the check at start weaker.
                tracing::warn!(error = %e, path = %mark_path(&self.dir).display(), "cannot write the store mark");
            }
            let p = self.lock();
            if !p.stop {
                let _ = self.wake.wait_timeout(p, MARK_INTERVAL);
            }
        }
    }
}

impl MarkWriter {
    pub fn start(dir: &Path) -> MarkWriter {
        let shared = std::sync::Arc::new(Shared {
            dir: dir.to_path_buf(),
            state: std::sync::Mutex::new(Pending::default()),
            wake: std::sync::Condvar::new(),
        });
        let worker = shared.clone();
        let thread = std::thread::Builder::new()
            .name("hookshim-mark".into())
            .spawn(move || worker.run());
        let thread = match thread {
            Ok(t) => Some(t),
            Err(e) => {
                tracing::warn!(error = %e, "cannot start the store mark writer; marks are written when the store closes");
                None
            }
        };
        MarkWriter { shared, thread }
    }

    /// A generation is durable: record it (soon).
    pub fn offer(&self, mark: Mark) {
        self.shared.lock().mark = Some(mark);
        self.shared.wake.notify_all();
    }
}

impl Drop for MarkWriter {
    fn drop(&mut self) {
        self.shared.lock().stop = true;
        self.shared.wake.notify_all();
        match self.thread.take() {
            // The thread writes what is pending before it stops.
            Some(t) => {
                let _ = t.join();
            }
            None => {
                if let Some(m) = self.shared.lock().mark.take() {
                    let _ = write_mark(&self.shared.dir, &m);
                }
            }
        }
    }
}

/// What to tell the operator when a store lost acknowledged data. `held` is how many operations
/// the store holds now.
pub fn lost_data_message(dir: &Path, mark: &Mark, found_generation: u64, held: u64) -> String {
    format!(
        "the store at {dir} lost data: it holds {held} operations (flush generation \
         {found_generation}), but {acked} operations were acknowledged (flush generation {gen}) \
         before the last shutdown, according to {mark_file}. The data files were truncated or \
         damaged. Restore the data directory from a backup, or run `hookshim store verify` to \
         see what is there, or start with `hookshim serve --accept-damaged-store` to accept the \
         loss (acknowledged registrations and outcomes may be gone; finished operations may be \
         polled again and their callbacks sent again).",
        dir = dir.display(),
        acked = mark.operations,
        gen = mark.generation,
        mark_file = mark_path(dir).display(),
    )
}

/// The outcome of `hookshim store verify`.
#[derive(Debug, Default)]
pub struct Report {
    /// What was checked and found, one line each.
    pub lines: Vec<String>,
    /// Problems that mean acknowledged data is missing or unreadable.
    pub problems: Vec<String>,
}

impl Report {
    pub fn sound(&self) -> bool {
        self.problems.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marks_round_trip_and_damage_is_noticed() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(read_mark(dir.path()).unwrap(), None);
        let m = Mark {
            generation: 42,
            operations: 7,
        };
        write_mark(dir.path(), &m).unwrap();
        assert_eq!(read_mark(dir.path()).unwrap(), Some(m));
        let text = std::fs::read_to_string(mark_path(dir.path())).unwrap();
        let tampered = text.replace("generation=42", "generation=41");
        std::fs::write(mark_path(dir.path()), tampered).unwrap();
        let e = read_mark(dir.path()).unwrap_err();
        assert!(e.to_string().contains("checksum mismatch"), "{e}");
        std::fs::write(mark_path(dir.path()), "").unwrap();
        assert!(read_mark(dir.path()).is_err());
    }

    #[test]
    fn the_message_says_what_was_found_and_what_to_do() {
        let m = Mark {
            generation: 9,
            operations: 30,
        };
        let msg = lost_data_message(Path::new("./data"), &m, 0, 0);
        for part in [
            "the store at ./data lost data",
            "holds 0 operations",
            "30 operations were acknowledged",
            "hookshim store verify",
            "--accept-damaged-store",
            "backup",
        ] {
            assert!(msg.contains(part), "{part}: {msg}");
        }
    }
}
