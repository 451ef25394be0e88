//! Retention: which files go when the store needs room, and when they go.
//!
//! The store keeps the newest history that fits. After each commit, use above
//! the high watermark is brought down to the low watermark by deleting whole
//! segments, oldest first (damaged files set aside go before any segment).
//! When a growth is refused mid-commit (budget or full disk), the writer makes
//! room the same way, but never by deleting data newer than what it is writing:
//! if what it writes is older than everything kept, it is the oldest data and
//! is not stored (counted as evicted, not lost). An optional age cap deletes
//! segments whose flows all ended before it. Every eviction counts the flows
//! it removes, so the summaries can say exactly what the store keeps.

use super::SegmentId;
use super::writer::StoreWriter;
use std::sync::atomic::Ordering;

/// Why segments are deleted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Why {
    Budget,
    Age,
}

impl StoreWriter {
    /// After a commit: bring use back under the low watermark once past the high
    /// one, and apply the age cap.
    pub(super) fn retention(&mut self) {
        if self.quota.used() > self.high_watermark() {
            tracing::debug!(
                "{} bytes in use, past the high watermark {}: down to {}",
                self.quota.used(),
                self.high_watermark(),
                self.low_watermark()
            );
            self.evict_to(self.low_watermark(), None);
        }
        if let Some(age) = self.cfg.max_age_ms {
            let cutoff = self.latest_event.saturating_sub(age);
            let span = self.cfg.segment_span_ms;
            // Flows in a segment start before its span ends; give them a span of slack to end.
            let old: Vec<SegmentId> = self
                .catalog
                .ids()
                .take_while(|id| id.span_start.saturating_add(2 * span) < cutoff)
                .collect();
            for id in old {
                self.delete_segment(id, Why::Age);
            }
        }
    }

    /// Delete the oldest files until use is at or below `target`, never the
    /// newest segment (nor `protect`, nor anything newer than it). Returns
    /// whether anything was deleted.
    pub(super) fn evict_to(&mut self, target: u64, protect: Option<SegmentId>) -> bool {
        let mut any = false;
        while self.quota.used() > target {
            if !self.evict_one(protect) {
                break;
            }
            any = true;
        }
        any
    }

    /// Make room for a growth of `need` bytes: within the capacity (down to
    /// the low watermark; the capacity already shrinks with a disk that others
    /// fill) and, should the file system still refuse, until it has the room.
    /// Returns whether anything was deleted.
    pub(super) fn make_room(&mut self, need: u64, protect: Option<SegmentId>) -> bool {
        let target = self.low_watermark().min(self.capacity().saturating_sub(need));
        tracing::debug!("making room for {need} bytes: {} in use, down to {target}", self.quota.used());
        let mut any = self.evict_to(target, protect);
        let want_free = need + super::quota::FS_RESERVE;
        while self.quota.fs_available().is_some_and(|a| a < want_free) {
            if !self.evict_one(protect) {
                break;
            }
            any = true;
        }
        any
    }

    /// Delete the oldest damaged file, else the oldest evictable segment.
    fn evict_one(&mut self, protect: Option<SegmentId>) -> bool {
        if let Ok(damaged) = self.dir.list_damaged()
            && let Some((path, _)) = damaged.into_iter().next()
        {
            return match std::fs::remove_file(&path) {
                Ok(()) => {
                    let bytes = self.quota.forget(&path);
                    tracing::info!("deleted damaged file {} ({bytes} bytes) to make room", path.display());
                    true
                }
                Err(e) => {
                    tracing::error!("cannot delete {}: {e}", path.display());
                    false
                }
            };
        }
        let newest = self.catalog.newest_span();
        let keep = |id: SegmentId| {
            // The newest span is what is being written now; `protect` and
            // anything newer than it are more recent than the data that needs room.
            Some(id.span_start) == newest || protect.is_some_and(|p| id >= p)
        };
        match self.catalog.oldest(keep) {
            Some(id) => self.delete_segment(id, Why::Budget),
            None => false,
        }
    }

    /// Delete one segment file and count what went with it.
    pub(super) fn delete_segment(&mut self, id: SegmentId, why: Why) -> bool {
        self.open.retain(|_, s| s.id != id);
        let path = self.dir.segment(id);
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                tracing::error!("cannot delete segment {id}: {e}");
                return false;
            }
        }
        let bytes = self.quota.forget(&path);
        let flows = self.catalog.remove(id).map(|i| i.flows).unwrap_or(0);
        let c = &self.counters;
        c.segments_evicted.fetch_add(1, Ordering::Relaxed);
        c.bytes_evicted.fetch_add(bytes, Ordering::Relaxed);
        match why {
            Why::Budget => c.flows_evicted.fetch_add(flows, Ordering::Relaxed),
            Why::Age => c.flows_evicted_age.fetch_add(flows, Ordering::Relaxed),
        };
        c.flows_kept.store(self.catalog.flows(), Ordering::Relaxed);
        tracing::debug!("evicted segment {id} ({bytes} bytes, {flows} flows, {why:?})");
        true
    }
}
