//! Byte budget enforced where the bytes are allocated: a redb storage backend
//! that refuses to grow a file past the data directory's budget, past its own
//! cap, or past what the file system really has free.
//!
//! Every database the writer opens goes through [`QuotaBackend`], which
//! shares one [`Quota`]. The quota knows the length of every file the store
//! owns (set when a file is opened or found, changed by each growth or
//! shrink, removed when a file is deleted), so "in use" is always the sum of
//! real file lengths, however often files are reopened. A growth is backed by
//! `fallocate`, so a full disk is met when redb asks for room (and refused
//! cleanly, like the budget) rather than later in the middle of a write. The
//! writer then evicts the oldest segments, reopens and retries. So disk use
//! never exceeds the budget, even though redb grows files in steps it chooses.

use redb::backends::FileBackend;
use redb::{BackendError, StorageBackend};
use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

/// Bytes kept free on the data file system for directory entries, inodes and
/// redb's own metadata writes.
pub const FS_RESERVE: u64 = 256 * 1024;

/// Why a growth was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The store's byte budget would be exceeded.
    Budget,
    /// The file's own cap (roll-ups) would be exceeded.
    FileCap,
    /// The data file system has no room.
    Disk,
}

#[derive(Debug, Default)]
struct Files {
    /// Current length of every file the store owns.
    len: HashMap<PathBuf, u64>,
    /// Sum of `len`.
    used: u64,
    /// Per-file caps (roll-ups), below the budget.
    caps: HashMap<PathBuf, u64>,

    /// The most recent refusal per file, for the writer's reaction.
    refused: HashMap<PathBuf, Refusal>,
}

/// The shared budget: bytes allowed and the length of every store file.
#[derive(Debug)]
pub struct Quota {
    budget: u64,
    /// Where free space is measured (the data directory); None in unit tests.
    fs_dir: Option<PathBuf>,
    files: Mutex<Files>,
    /// Growths refused for the budget or a file cap.
    pub refusals: AtomicU64,
    /// Growths refused because the file system was full.
    pub disk_full: AtomicU64,
}

impl Quota {
    /// A quota of `budget` bytes for files under `fs_dir` (whose file system's
    /// free space also limits growth).
    pub fn new(budget: u64, fs_dir: Option<PathBuf>) -> Arc<Quota> {
        Arc::new(Quota {
            budget,
            fs_dir,
            files: Mutex::new(Files::default()),
            refusals: AtomicU64::new(0),
            disk_full: AtomicU64::new(0),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Files> {
        // A panic while holding the lock cannot leave the map half-updated in a
        // way that matters more than losing the accounting: keep going.
        self.files.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn budget(&self) -> u64 {
        self.budget
    }

    /// Bytes in use: the sum of the lengths of every file the store owns.
    pub fn used(&self) -> u64 {
        self.lock().used
    }

    /// The known length of one file.
    pub fn file_len(&self, path: &Path) -> Option<u64> {
        self.lock().len.get(path).copied()
    }

    /// Record a file's current length (found at start, or opened).
    pub fn set_file(&self, path: &Path, len: u64) {
        let mut f = self.lock();
        let old = f.len.insert(path.to_path_buf(), len).unwrap_or(0);
        f.used = f.used - old + len;
    }

    /// Forget a file (deleted or moved out of the store).
    pub fn forget(&self, path: &Path) -> u64 {
        let mut f = self.lock();
        let old = f.len.remove(path).unwrap_or(0);
        f.used -= old;
        f.refused.remove(path);
        old
    }

    /// Cap one file's length below the budget.
    pub fn set_cap(&self, path: &Path, cap: u64) {
        self.lock().caps.insert(path.to_path_buf(), cap);
    }

    /// The last refusal of a growth of `path` (cleared by this call).
    pub fn take_refusal(&self, path: &Path) -> Option<Refusal> {
        self.lock().refused.remove(path)
    }

    /// Bytes the file system holding the data directory has free for us.
    pub fn fs_available(&self) -> Option<u64> {
        let dir = self.fs_dir.as_ref()?;
        let s = rustix::fs::statvfs(dir).ok()?;
        Some(s.f_bavail.saturating_mul(s.f_frsize))
    }

    /// Reserve room for `path` to grow from `old` to `new` bytes.
    fn try_grow(&self, path: &Path, old: u64, new: u64) -> Result<(), (Refusal, String)> {
        let grow = new - old;
        let mut f = self.lock();
        let refusal = if f.caps.get(path).is_some_and(|&cap| new > cap) {
            let cap = f.caps.get(path).copied().unwrap_or(0);
            Some((
                Refusal::FileCap,
                format!("{} may use at most {cap} bytes ({new} requested)", path.display()),
            ))
        } else if f.used - f.len.get(path).copied().unwrap_or(0) + new > self.budget {
            Some((
                Refusal::Budget,
                format!(
                    "flow store budget of {} bytes reached ({} in use, {grow} more requested)",
                    self.budget, f.used
                ),
            ))
        } else if let Some(avail) = self.fs_available()
            && grow.saturating_add(FS_RESERVE) > avail
        {
            Some((
                Refusal::Disk,
                format!("the data file system is full ({avail} bytes free, {grow} more requested)"),
            ))
        } else {
            None
        };
        match refusal {
            Some((r, msg)) => {
                f.refused.insert(path.to_path_buf(), r);
                match r {
                    Refusal::Disk => self.disk_full.fetch_add(1, Ordering::Relaxed),
                    _ => self.refusals.fetch_add(1, Ordering::Relaxed),
                };
                Err((r, msg))
            }
            None => {
                f.len.insert(path.to_path_buf(), new);
                f.used += grow;
                Ok(())
            }
        }
    }

    /// Note that the file system refused what the quota allowed.
    fn disk_refused(&self, path: &Path, old: u64) {
        self.set_file(path, old);
        self.lock().refused.insert(path.to_path_buf(), Refusal::Disk);
        self.disk_full.fetch_add(1, Ordering::Relaxed);
    }
}

/// A file backend whose growth is charged to a [`Quota`] and allocated on disk.
#[derive(Debug)]
pub struct QuotaBackend {
    inner: FileBackend,
    /// A second handle on the same file, for `fallocate`.
    file: File,
    path: PathBuf,
    quota: Arc<Quota>,
    len: AtomicU64,
}

impl QuotaBackend {
    /// Wrap an open file; its current length is recorded in the quota.
    pub fn new(file: File, path: &Path, quota: Arc<Quota>) -> Result<QuotaBackend, redb::DatabaseError> {
        let len = file.metadata().map(|m| m.len()).map_err(redb::DatabaseError::from)?;
        let dup = file.try_clone().map_err(redb::DatabaseError::from)?;
        let inner = FileBackend::new(file)?;
        quota.set_file(path, len);
        Ok(QuotaBackend {
            inner,
            file: dup,
            path: path.to_path_buf(),
            quota,
            len: AtomicU64::new(len),
        })
    }
}

fn is_disk_full(e: &rustix::io::Errno) -> bool {
    *e == rustix::io::Errno::NOSPC || *e == rustix::io::Errno::DQUOT
}

impl StorageBackend for QuotaBackend {
    fn len(&self) -> Result<u64, io::Error> {
        self.inner.len()
    }

    fn read(&self, offset: u64, out: &mut [u8]) -> Result<(), io::Error> {
        self.inner.read(offset, out)
    }

    fn set_len(&self, len: u64) -> Result<(), io::Error> {
        let old = self.len.load(Ordering::Relaxed);
        if len > old {
            if let Err((_, msg)) = self.quota.try_grow(&self.path, old, len) {
                return Err(io::Error::new(io::ErrorKind::StorageFull, msg));
            }
            // Allocate the blocks now: a full disk is refused here, not in a later write.
            match rustix::fs::fallocate(&self.file, rustix::fs::FallocateFlags::empty(), old, len - old) {
                Ok(()) => {}
                Err(e) if is_disk_full(&e) => {
                    // Give back whatever part was allocated.
                    let _ = self.inner.set_len(old);
                    self.quota.disk_refused(&self.path, old);
                    return Err(io::Error::new(
                        io::ErrorKind::StorageFull,
                        format!("the data file system is full ({} more bytes requested)", len - old),
                    ));
                }
                // File systems without fallocate: a plain (possibly sparse) extension.
                Err(_) => {}
            }
            if let Err(e) = self.inner.set_len(len) {
                let _ = self.inner.set_len(old);
                self.quota.set_file(&self.path, old);
                return Err(e);
            }
        } else {
            self.inner.set_len(len)?;
            self.quota.set_file(&self.path, len);
        }
        self.len.store(len, Ordering::Relaxed);
        Ok(())
    }

    fn sync_data(&self) -> Result<(), io::Error> {
        self.inner.sync_data()
    }

    fn write(&self, offset: u64, data: &[u8]) -> Result<(), io::Error> {
        self.inner.write(offset, data)
    }

    fn close(&self) -> Result<(), io::Error> {
        self.inner.close()
    }

    fn try_lock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<bool, BackendError> {
        self.inner.try_lock_range(start, end)
    }

    fn try_lock_shared_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<bool, BackendError> {
        self.inner.try_lock_shared_range(start, end)
    }

    fn lock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<(), BackendError> {
        self.inner.lock_range(start, end)
    }

    fn lock_shared_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<(), BackendError> {
        self.inner.lock_shared_range(start, end)
    }

    fn unlock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<(), BackendError> {
        self.inner.unlock_range(start, end)
    }

    fn query_lock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<bool, BackendError> {
        self.inner.query_lock_range(start, end)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reopening_a_file_does_not_charge_it_twice() {
        let q = Quota::new(1000, None);
        let a = Path::new("a");
        q.set_file(a, 300);
        q.set_file(a, 300);
        q.set_file(Path::new("b"), 200);
        assert_eq!(q.used(), 500);
        assert_eq!(q.forget(a), 300);
        assert_eq!(q.used(), 200);
    }

    #[test]
    fn growth_respects_budget_and_caps() {
        let q = Quota::new(1000, None);
        let (a, b) = (Path::new("a"), Path::new("b"));
        q.set_file(a, 100);
        assert!(q.try_grow(a, 100, 600).is_ok());
        assert_eq!(q.used(), 600);
        assert_eq!(q.try_grow(b, 0, 401).map_err(|e| e.0), Err(Refusal::Budget));
        assert_eq!(q.take_refusal(b), Some(Refusal::Budget));
        assert_eq!(q.take_refusal(b), None);
        assert!(q.try_grow(b, 0, 400).is_ok());
        assert_eq!(q.used(), 1000);
        q.set_cap(a, 500);
        q.set_file(a, 200);
        assert_eq!(q.try_grow(a, 200, 501).map_err(|e| e.0), Err(Refusal::FileCap));
        assert_eq!(q.refusals.load(Ordering::Relaxed), 2);
    }

    #[test]
    fn a_backend_charges_real_lengths_and_allocates() {
        let d = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let p = d.path().join("f");
        let q = Quota::new(1 << 20, Some(d.path().to_path_buf()));
        let open = || {
            std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .open(&p)
                .unwrap_or_else(|e| panic!("{e}"))
        };
        let b = QuotaBackend::new(open(), &p, q.clone()).unwrap_or_else(|e| panic!("{e}"));
        b.set_len(64 * 1024).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(q.used(), 64 * 1024);
        drop(b);
        // Reopened many times: still charged once.
        for _ in 0..5 {
            let b = QuotaBackend::new(open(), &p, q.clone()).unwrap_or_else(|e| panic!("{e}"));
            drop(b);
        }
        assert_eq!(q.used(), 64 * 1024);
        let b = QuotaBackend::new(open(), &p, q.clone()).unwrap_or_else(|e| panic!("{e}"));
        let err = b.set_len(2 << 20).err().map(|e| e.kind());
        assert_eq!(err, Some(io::ErrorKind::StorageFull));
        assert_eq!(std::fs::metadata(&p).map(|m| m.len()).unwrap_or(0), 64 * 1024);
        b.set_len(4096).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(q.used(), 4096);
    }
}
