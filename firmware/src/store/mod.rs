//! Storage stage: the rolling flow history, roll-ups and state, in redb.
//!
//! A single writer thread ([`writer`]) owns every writable database handle and
//! commits batches; readers ([`reader`]) open files read-only in redb's
//! `SingleWriter` mode, so `query` works while `run` is writing and never
//! blocks ingest. Layout and naming: [`segments`]; tables: [`schema`];
//! the byte budget: [`quota`].

pub mod block;
pub mod catalog;
pub mod quota;
pub mod reader;
pub mod retention;
pub mod rollup;
pub mod rollup_space;
pub mod rows;
pub mod schema;
pub mod segments;
pub mod settings;
pub mod writer;

use redb::{ConcurrencyMode, Database, ReadOnlyDatabase};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use thiserror::Error;

pub use segments::{DataDir, SegmentId};

#[derive(Debug, Error)]
pub enum StoreError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {source}")]
    Db {
        path: PathBuf,
        #[source]
        source: redb::Error,
    },
    #[error("{path}: schema version {found} is not supported (this build reads version {expected})")]
    Schema { path: PathBuf, found: u64, expected: u64 },
    #[error(
        "data directory {} is in use by another flowwarden ({holder}): stop it, or use another --data-dir \
         (query, exporters, alerts and the other read commands work beside it)",
        dir.display()
    )]
    InUse { dir: PathBuf, holder: String },
    #[error("{path}: damaged block {key:?}: {source}")]
    Block {
        path: PathBuf,
        key: (u64, u64),
        #[source]
        source: block::BlockError,
    },
}

impl StoreError {
    pub(crate) fn db(path: &Path, e: impl Into<redb::Error>) -> StoreError {
        StoreError::Db {
            path: path.to_path_buf(),
            source: e.into(),
        }
    }
    pub(crate) fn io(path: &Path, source: std::io::Error) -> StoreError {
        StoreError::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}

/// Open (or create) a database for writing, charging growth to `quota`.
///
/// A file that redb began to create but never finished (its magic number is
/// written last, so it reads as zeros: a create cut short by a full disk) holds
/// nothing and is created afresh.
pub(crate) fn open_writable(path: &Path, quota: &Arc<quota::Quota>) -> Result<Database, StoreError> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .map_err(|e| StoreError::io(path, e))?;
    if never_initialized(&file) {
        tracing::info!(
            "{}: an unfinished database create (no data in it); creating it afresh",
            path.display()
        );
        file.set_len(0).map_err(|e| StoreError::io(path, e))?;
    }
    let backend = quota::QuotaBackend::new(file, path, quota.clone()).map_err(|e| StoreError::db(path, e))?;
    let mut b = Database::builder();
    b.set_concurrency_mode(ConcurrencyMode::SingleWriter);
    b.create_with_backend(backend).map_err(|e| StoreError::db(path, e))
}

/// Commit `rows` into the state file of a data directory that no appliance is
/// running on (commands such as `user set` while `run` is not running; while it
/// runs they go through the control channel). Creates the directory and the
/// state file if needed.
pub fn commit_state_rows(dir: &DataDir, rows: &mut dyn rows::StateRows) -> Result<(), StoreError> {
    let path = dir.state();
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(|e| StoreError::io(parent, e))?;
    }
    // Whoever else writes (an `ingest`, a `run` without a control socket) is named.
    let _lock = WriterLock::take(dir)?;
    guard(&path, || {
        let mut b = Database::builder();
        b.set_concurrency_mode(ConcurrencyMode::SingleWriter);
        let db = b.create(&path).map_err(|e| StoreError::db(&path, e))?;
        // The writer's own check: a state file of another schema is refused, a new one stamped.
        writer::check_schema(&db, &path, schema::STATE_META)?;
        let txn = db.begin_write().map_err(|e| StoreError::db(&path, e))?;
        rows.stage(&txn).map_err(|e| StoreError::db(&path, e))?;
        txn.commit().map_err(|e| StoreError::db(&path, e))?;
        rows.committed();
        Ok(())
    })
}

/// Whether `path` holds no database yet: missing, empty, or an unfinished create.
pub(crate) fn holds_no_database(path: &Path) -> bool {
    match std::fs::File::open(path) {
        Ok(f) => f.metadata().map(|m| m.len() == 0).unwrap_or(true) || never_initialized(&f),
        Err(_) => true,
    }
}

/// Whether a non-empty file starts with zeros where redb's magic number goes.
fn never_initialized(file: &std::fs::File) -> bool {
    use std::os::unix::fs::FileExt;
    let mut head = [0u8; 9];
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    len > 0 && file.read_exact_at(&mut head, 0).is_ok() && head.iter().all(|&b| b == 0)
}

/// Run redb work on `path`, turning a panic inside redb (it panics on some
/// damaged pages instead of returning an error) into a damage error, so a
/// damaged file is moved aside instead of taking the process down.
pub fn guard<T>(path: &Path, f: impl FnOnce() -> Result<T, StoreError>) -> Result<T, StoreError> {
    quiet_guarded_panics();
    let outer = IN_GUARD.with(|g| g.replace(true));
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
    IN_GUARD.with(|g| g.set(outer));
    match r {
        Ok(r) => r,
        Err(p) => {
            let msg = p
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| p.downcast_ref::<String>().cloned())
                .unwrap_or_default();
            Err(StoreError::Db {
                path: path.to_path_buf(),
                source: redb::Error::Corrupted(format!("the database failed on damaged data ({msg})")),
            })
        }
    }
}

thread_local! {
    static IN_GUARD: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// A panic inside [`guard`] becomes a damage error with its own message: the
/// default hook's "thread panicked" text and backtrace would only alarm.
fn quiet_guarded_panics() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if IN_GUARD.with(|g| g.get()) {
                tracing::debug!("redb panicked on damaged data: {info}");
            } else {
                previous(info);
            }
        }));
    });
}

/// Whether an error means the file's content is damaged (as opposed to the
/// disk being full, a permission, or a newer schema).
pub fn is_damage(e: &StoreError) -> bool {
    matches!(
        e,
        StoreError::Db {
            source: redb::Error::Corrupted(_),
            ..
        } | StoreError::Block { .. }
    )
}

/// Damaged files kept for inspection (the oldest beyond this are deleted).
const KEEP_DAMAGED: usize = 4;

/// Move a damaged file into `DATA/damaged/` (it still counts against the
/// budget, and is the first thing evicted) and say so.
pub fn quarantine(dir: &DataDir, path: &Path, reason: &str) -> Result<catalog::Quarantined, StoreError> {
    let damaged = dir.damaged();
    std::fs::create_dir_all(&damaged).map_err(|e| StoreError::io(&damaged, e))?;
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let stamp = crate::timefmt::rfc3339_ms(crate::timefmt::now_ms()).replace([':', '-'], "");
    let to = damaged.join(format!("{name}.{stamp}"));
    std::fs::rename(path, &to).map_err(|e| StoreError::io(path, e))?;
    tracing::error!(
        "{}: damaged ({reason}); moved to {} and starting afresh",
        path.display(),
        to.display()
    );
    let mut kept = dir.list_damaged().unwrap_or_default();
    while kept.len() > KEEP_DAMAGED {
        let (old, _) = kept.remove(0);
        let _ = std::fs::remove_file(old);
    }
    Ok(catalog::Quarantined {
        from: path.to_path_buf(),
        to,
        reason: reason.to_string(),
    })
}

/// Open a database read-only; works while the writer has it open.
///
/// A file left unclean by a crash needs a repair that a read-only handle
/// cannot do; when no writer holds it, it is repaired here (one writable
/// open) and then read. With a writer holding it, the writer repaired it.
pub fn open_readonly(path: &Path) -> Result<ReadOnlyDatabase, StoreError> {
    guard(path, || open_readonly_unguarded(path))
}

fn open_readonly_unguarded(path: &Path) -> Result<ReadOnlyDatabase, StoreError> {
    let open = || {
        let mut b = Database::builder();
        b.set_concurrency_mode(ConcurrencyMode::SingleWriter);
        b.open_read_only(path)
    };
    match open() {
        Err(redb::DatabaseError::RepairAborted) => {
            let mut b = Database::builder();
            b.set_concurrency_mode(ConcurrencyMode::SingleWriter);
            match b.open(path) {
                Ok(db) => {
                    drop(db);
                    tracing::info!("{}: repaired after an unclean shutdown", path.display());
                    open().map_err(|e| StoreError::db(path, e))
                }
                Err(e) => Err(StoreError::db(path, e)),
            }
        }
        r => r.map_err(|e| StoreError::db(path, e)),
    }
}

/// The one-writer lock of a data directory: `DATA/writer.lock`, held (flock)
/// by the process that writes, naming it for whoever else tries.
#[derive(Debug)]
pub struct WriterLock {
    _file: std::fs::File,
}

impl WriterLock {
    pub fn take(dir: &DataDir) -> Result<WriterLock, StoreError> {
        use rustix::fs::{FlockOperation, flock};
        use std::io::{Read, Seek, Write};
        let path = dir.root().join("writer.lock");
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| StoreError::io(&path, e))?;
        if flock(&file, FlockOperation::NonBlockingLockExclusive).is_err() {
            let mut holder = String::new();
            let _ = file.read_to_string(&mut holder);
            let holder = holder.lines().collect::<Vec<_>>().join(", ");
            return Err(StoreError::InUse {
                dir: dir.root().to_path_buf(),
                holder: if holder.is_empty() { "pid unknown".into() } else { holder },
            });
        }
        let args: Vec<String> = std::env::args().collect();
        let text = format!(
            "pid {}\ncommand {}\nsince {}\n",
            std::process::id(),
            args.join(" "),
            crate::timefmt::rfc3339_ms(crate::timefmt::now_ms())
        );
        let _ = file.set_len(0);
        let _ = file.rewind();
        file.write_all(text.as_bytes()).map_err(|e| StoreError::io(&path, e))?;
        Ok(WriterLock { _file: file })
    }
}

/// Counters of the storage stage (shared with status output).
#[derive(Debug, Default)]
pub struct StoreCounters {
    pub flows_committed: AtomicU64,
    pub blocks_written: AtomicU64,
    pub block_bytes: AtomicU64,
    pub commits: AtomicU64,
    /// Commits that failed for another reason than room (I/O errors, damage).
    pub commit_failures: AtomicU64,
    /// Commits refused for room and retried after eviction (normal near the budget).
    pub commit_retries: AtomicU64,
    pub reopens: AtomicU64,
    pub segments_evicted: AtomicU64,
    pub bytes_evicted: AtomicU64,
    /// Flows removed to stay within the budget (the oldest; by the rules, not a loss),
    /// including flows older than everything kept, not stored on arrival.
    pub flows_evicted: AtomicU64,
    /// Flows removed by the age cap.
    pub flows_evicted_age: AtomicU64,
    /// Flows the store holds now.
    pub flows_kept: AtomicU64,
    /// Flows the store held when the writer opened.
    pub flows_at_open: AtomicU64,
    /// Flows that could not be stored even after eviction and retries (a loss).
    pub flows_dropped: AtomicU64,
    /// Roll-up rows deleted early to keep the roll-up file within its share.
    pub rollup_rows_trimmed: AtomicU64,
    /// Roll-up commits given up (their deltas lost).
    pub rollup_failures: AtomicU64,
    /// Damaged files moved aside (state and roll-ups recreated, segments lost).
    pub files_damaged: AtomicU64,
    /// Bytes the store's files occupy, its budget and its segment count (gauges, set at each commit).
    pub bytes_used: AtomicU64,
    pub budget: AtomicU64,
    /// The budget, or less when the file system cannot hold that much.
    pub capacity: AtomicU64,
    pub segments: AtomicU64,
    /// Flows refused because they are older than the age cap.
    pub flows_too_old: AtomicU64,
    pub rollup_overflow: AtomicU64,
    pub state_failures: AtomicU64,
    /// State rows dropped because state commits kept failing.
    pub state_rows_dropped: AtomicU64,
}

impl StoreCounters {
    pub fn get(c: &AtomicU64) -> u64 {
        c.load(Ordering::Relaxed)
    }
}

/// Budget in bytes for a data directory: `spec` resolved against the size of
/// the file system that holds it.
pub fn resolve_budget(spec: crate::units::SizeSpec, dir: &Path) -> Result<u64, StoreError> {
    let fs_size = match rustix::fs::statvfs(dir) {
        Ok(s) => s.f_blocks.saturating_mul(s.f_frsize),
        Err(e) => return Err(StoreError::io(dir, e.into())),
    };
    Ok(spec.resolve(fs_size))
}
