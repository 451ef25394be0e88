//! Storage stage: the rolling flow history, roll-ups and state, in redb.
//!
//! A single writer thread ([`writer`]) owns every writable database handle and
//! commits batches; readers ([`reader`]) open files read-only in redb's
//! `SingleWriter` mode, so `query` works while `run` is writing and never
//! blocks ingest. Layout and naming: [`segments`]; tables: [`schema`];
//! the byte budget: [`quota`].

pub mod block;
pub mod quota;
pub mod reader;
pub mod rollup;
pub mod schema;
pub mod segments;
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
pub(crate) fn open_writable(path: &Path, quota: &Arc<quota::Quota>) -> Result<Database, StoreError> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .map_err(|e| StoreError::io(path, e))?;
    let backend = quota::QuotaBackend::new(file, quota.clone()).map_err(|e| StoreError::db(path, e))?;
    let mut b = Database::builder();
    b.set_concurrency_mode(ConcurrencyMode::SingleWriter);
    b.create_with_backend(backend).map_err(|e| StoreError::db(path, e))
}

/// Open a database read-only; works while the writer has it open.
///
/// A file left unclean by a crash needs a repair that a read-only handle
/// cannot do; when no writer holds it, it is repaired here (one writable
/// open) and then read. With a writer holding it, the writer repaired it.
pub fn open_readonly(path: &Path) -> Result<ReadOnlyDatabase, StoreError> {
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

/// Counters of the storage stage (shared with status output).
#[derive(Debug, Default)]
pub struct StoreCounters {
    pub flows_committed: AtomicU64,
    pub blocks_written: AtomicU64,
    pub block_bytes: AtomicU64,
    pub commits: AtomicU64,
    pub commit_failures: AtomicU64,
    pub reopens: AtomicU64,
    pub segments_evicted: AtomicU64,
    pub bytes_evicted: AtomicU64,
    /// Flows that could not be stored even after eviction and retries.
    pub flows_dropped: AtomicU64,
    /// Flows refused because they are older than the age cap.
    pub flows_too_old: AtomicU64,
    pub rollup_overflow: AtomicU64,
    pub state_failures: AtomicU64,
    /// Oldest alerts deleted to keep the alert table within its cap.
    pub alerts_evicted: AtomicU64,
    /// Spool entries deleted unsent because a destination's spool was full (this process).
    pub spool_dropped: AtomicU64,
}

impl StoreCounters {
    pub fn get(c: &AtomicU64) -> u64 {
        c.load(Ordering::Relaxed)
    }
}

/// Budget in bytes for a data directory: `spec` resolved against the size of
/// the file system that holds it.
pub fn resolve_budget(spec: crate::config::SizeSpec, dir: &Path) -> Result<u64, StoreError> {
    let fs_size = match rustix::fs::statvfs(dir) {
        Ok(s) => s.f_blocks.saturating_mul(s.f_frsize),
        Err(e) => return Err(StoreError::io(dir, e.into())),
    };
    Ok(spec.resolve(fs_size))
}
