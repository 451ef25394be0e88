//! The writer's picture of what the store holds: every flow segment with its
//! flow count, oldest first, and the damaged files set aside.
//!
//! Built once when the writer opens (each segment's metadata is read, which
//! also repairs one left unclean by a crash) and kept current by the writer,
//! so eviction knows how many flows it removes and the summaries can say how
//! many flows the store keeps without scanning it. Lengths are the quota's.

use super::schema::SEGMENT_META;
use super::{DataDir, SegmentId, StoreError, open_readonly};
use redb::{ReadableDatabase, TableError};
use std::collections::BTreeMap;
use std::path::PathBuf;

/// What the catalog knows of one segment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SegmentInfo {
    /// Flows committed to it.
    pub flows: u64,
}

/// Segments by id (time order), and damaged files kept aside.
#[derive(Debug, Default)]
pub struct Catalog {
    segments: BTreeMap<SegmentId, SegmentInfo>,
}

/// A file that could not be read, moved aside.
#[derive(Debug, Clone)]
pub struct Quarantined {
    pub from: PathBuf,
    pub to: PathBuf,
    pub reason: String,
}

/// Read a segment's flow count from its metadata.
pub fn segment_flows(path: &std::path::Path) -> Result<u64, StoreError> {
    super::guard(path, || segment_flows_unguarded(path))
}

fn segment_flows_unguarded(path: &std::path::Path) -> Result<u64, StoreError> {
    let db = open_readonly(path)?;
    let txn = db.begin_read().map_err(|e| StoreError::db(path, e))?;
    match txn.open_table(SEGMENT_META) {
        Ok(t) => Ok(t.get("flows").map_err(|e| StoreError::db(path, e))?.map(|v| v.value()).unwrap_or(0)),
        Err(TableError::TableDoesNotExist(_)) => Ok(0),
        Err(e) => Err(StoreError::db(path, e)),
    }
}

impl Catalog {
    /// Read every segment under `dir`. Segments that cannot be read are moved
    /// to the damaged folder (returned), so readers and eviction skip them.
    pub fn load(dir: &DataDir) -> Result<(Catalog, Vec<Quarantined>), StoreError> {
        let mut c = Catalog::default();
        let mut bad = Vec::new();
        for (id, len) in dir.list_segments().map_err(|e| StoreError::io(&dir.flows(), e))? {
            let path = dir.segment(id);
            if len == 0 {
                // A create that was refused before it wrote anything.
                let _ = std::fs::remove_file(&path);
                continue;
            }
            match segment_flows(&path) {
                Ok(flows) => {
                    c.segments.insert(id, SegmentInfo { flows });
                }
                Err(e) if super::is_damage(&e) => bad.push(super::quarantine(dir, &path, &e.to_string())?),
                Err(e) => return Err(e),
            }
        }
        Ok((c, bad))
    }

    /// Flows in every segment.
    pub fn flows(&self) -> u64 {
        self.segments.values().map(|s| s.flows).sum()
    }

    pub fn len(&self) -> usize {
        self.segments.len()
    }

    pub fn is_empty(&self) -> bool {
        self.segments.is_empty()
    }

    /// A new (empty) segment, or one already known.
    pub fn insert(&mut self, id: SegmentId) {
        self.segments.entry(id).or_default();
    }

    pub fn add_flows(&mut self, id: SegmentId, n: u64) {
        self.segments.entry(id).or_default().flows += n;
    }

    pub fn flows_in(&self, id: SegmentId) -> u64 {
        self.segments.get(&id).map(|s| s.flows).unwrap_or(0)
    }

    pub fn contains(&self, id: SegmentId) -> bool {
        self.segments.contains_key(&id)
    }

    pub fn remove(&mut self, id: SegmentId) -> Option<SegmentInfo> {
        self.segments.remove(&id)
    }

    /// The newest segment of the span starting at `span`.
    pub fn last_of_span(&self, span: u64) -> Option<SegmentId> {
        let lo = SegmentId { span_start: span, seq: 0 };
        let hi = SegmentId {
            span_start: span,
            seq: u32::MAX,
        };
        self.segments.range(lo..=hi).next_back().map(|(id, _)| *id)
    }

    /// The oldest segment not excluded by `keep`.
    pub fn oldest(&self, keep: impl Fn(SegmentId) -> bool) -> Option<SegmentId> {
        self.segments.keys().copied().find(|id| !keep(*id))
    }

    /// Start of the newest span held.
    pub fn newest_span(&self) -> Option<u64> {
        self.segments.keys().next_back().map(|id| id.span_start)
    }

    pub fn ids(&self) -> impl Iterator<Item = SegmentId> + '_ {
        self.segments.keys().copied()
    }
}
