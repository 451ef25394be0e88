//! Byte budget enforced where the bytes are allocated: a redb storage backend
//! that refuses to grow a file past the data directory's budget.
//!
//! Every database the writer opens goes through [`QuotaBackend`], which
//! shares one [`Quota`]. A growth that would exceed the budget fails with
//! `StorageFull`, exactly like a full disk; the writer then evicts the oldest
//! segments, reopens and retries. So disk use never exceeds the budget, even
//! though redb grows files in steps it chooses itself.

use redb::backends::FileBackend;
use redb::{BackendError, StorageBackend};
use std::fs::File;
use std::io;
use std::ops::Bound;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

/// The shared budget: bytes allowed and bytes in use by open writers' files
/// plus closed files on disk.
#[derive(Debug)]
pub struct Quota {
    budget: AtomicU64,
    used: AtomicU64,
    /// Growths refused.
    pub refusals: AtomicU64,
}

impl Quota {
    pub fn new(budget: u64) -> Arc<Quota> {
        Arc::new(Quota {
            budget: AtomicU64::new(budget),
            used: AtomicU64::new(0),
            refusals: AtomicU64::new(0),
        })
    }

    pub fn budget(&self) -> u64 {
        self.budget.load(Ordering::Relaxed)
    }

    pub fn used(&self) -> u64 {
        self.used.load(Ordering::Relaxed)
    }

    /// Account for bytes already on disk (files found at start).
    pub fn charge(&self, bytes: u64) {
        self.used.fetch_add(bytes, Ordering::Relaxed);
    }

    /// Give back bytes (a file deleted or shrunk).
    pub fn release(&self, bytes: u64) {
        let _ = self
            .used
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |u| Some(u.saturating_sub(bytes)));
    }

    /// Reserve `bytes` if the budget allows.
    pub fn try_reserve(&self, bytes: u64) -> bool {
        let budget = self.budget();
        let ok = self
            .used
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |u| {
                let n = u.checked_add(bytes)?;
                (n <= budget).then_some(n)
            })
            .is_ok();
        if !ok {
            self.refusals.fetch_add(1, Ordering::Relaxed);
        }
        ok
    }
}

/// A file backend whose growth is charged to a [`Quota`].
#[derive(Debug)]
pub struct QuotaBackend {
    inner: FileBackend,
    quota: Arc<Quota>,
    len: AtomicU64,
}

impl QuotaBackend {
    /// Wrap an open file; its current length is charged to the quota.
    pub fn new(file: File, quota: Arc<Quota>) -> Result<QuotaBackend, redb::DatabaseError> {
        let len = file.metadata().map(|m| m.len()).map_err(redb::DatabaseError::from)?;
        let inner = FileBackend::new(file)?;
        quota.charge(len);
        Ok(QuotaBackend {
            inner,
            quota,
            len: AtomicU64::new(len),
        })
    }
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
            let grow = len - old;
            if !self.quota.try_reserve(grow) {
                return Err(io::Error::new(
                    io::ErrorKind::StorageFull,
                    format!(
                        "flow store budget of {} bytes reached ({} in use, {} more requested)",
                        self.quota.budget(),
                        self.quota.used(),
                        grow
                    ),
                ));
            }
            if let Err(e) = self.inner.set_len(len) {
                self.quota.release(grow);
                return Err(e);
            }
        } else {
            self.inner.set_len(len)?;
            self.quota.release(old - len);
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
    fn reserve_respects_budget() {
        let q = Quota::new(100);
        assert!(q.try_reserve(60));
        assert!(!q.try_reserve(41));
        assert!(q.try_reserve(40));
        q.release(50);
        assert_eq!(q.used(), 50);
        assert_eq!(q.refusals.load(Ordering::Relaxed), 1);
    }
}
