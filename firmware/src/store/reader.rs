//! Reading the store: flows by time range, roll-ups, exporter health.
//!
//! Opens files read-only (redb `SingleWriter` mode), so it runs beside a live
//! writer. Segments are chosen by name, blocks by their uncompressed headers,
//! and only then decompressed; flows stream to a callback in storage order
//! (chronological within a block, blocks ordered by their first start).

use super::schema::{BLOCKS, HOUR_TOP, MINUTE, STATE_META};
use super::{DataDir, StoreError, block, open_readonly};
use crate::flow::FlowRecord;
use crate::store::rollup::TopEntry;
use redb::{ReadableDatabase, ReadableTable, TableError};
use std::ops::ControlFlow;

/// Longest span plus longest flow we look back for (segments are named by span start).
const LOOKBACK_MS: u64 = 2 * 86_400_000;

/// A per-minute roll-up row: (minute start, key, bytes, packets, flows).
pub type MinuteRow = (u64, Vec<u8>, u64, u64, u64);

/// An hour and its stored top list (None: none stored).
pub type HourTops = (u64, Option<Vec<TopEntry>>);

/// What a scan touched.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ScanStats {
    pub segments: u64,
    pub blocks_read: u64,
    pub blocks_skipped: u64,
    pub flows_seen: u64,
    /// Segments skipped because they could not be read.
    pub damaged: u64,
}

/// Read access to a data directory.
pub struct Reader {
    dir: DataDir,
}

impl Reader {
    pub fn new(dir: DataDir) -> Reader {
        Reader { dir }
    }

    /// Call `f` for every stored flow overlapping `[from, to)`; stop when it breaks.
    /// Segments that cannot be read (damaged) are skipped and counted.
    pub fn scan(&self, from: u64, to: u64, mut f: impl FnMut(&FlowRecord) -> ControlFlow<()>) -> Result<ScanStats, StoreError> {
        let mut stats = ScanStats::default();
        let segs = self.dir.list_segments().map_err(|e| StoreError::io(&self.dir.flows(), e))?;
        for (id, _) in segs {
            if id.span_start >= to || id.span_start.saturating_add(LOOKBACK_MS) < from {
                continue;
            }
            let path = self.dir.segment(id);
            match super::guard(&path, || self.scan_one(id, from, to, &mut f, &mut stats)) {
                Ok(ControlFlow::Continue(())) => {}
                Ok(ControlFlow::Break(())) => break,
                Err(e) if super::is_damage(&e) => {
                    stats.damaged += 1;
                    tracing::warn!("skipping damaged segment: {e}");
                }
                Err(e) => return Err(e),
            }
        }
        Ok(stats)
    }

    /// Call `f` for every flow of one segment overlapping `[from, to)`.
    pub fn scan_segment(
        &self,
        id: super::SegmentId,
        from: u64,
        to: u64,
        f: &mut dyn FnMut(&FlowRecord) -> ControlFlow<()>,
    ) -> Result<ScanStats, StoreError> {
        let mut stats = ScanStats::default();
        let path = self.dir.segment(id);
        let _ = super::guard(&path, || self.scan_one(id, from, to, f, &mut stats))?;
        Ok(stats)
    }

    fn scan_one(
        &self,
        id: super::SegmentId,
        from: u64,
        to: u64,
        f: &mut dyn FnMut(&FlowRecord) -> ControlFlow<()>,
        stats: &mut ScanStats,
    ) -> Result<ControlFlow<()>, StoreError> {
        let path = self.dir.segment(id);
        let db = match open_readonly(&path) {
            Ok(db) => db,
            // Evicted between listing and opening: nothing to read.
            Err(StoreError::Db {
                source: redb::Error::Io(e),
                ..
            }) if e.kind() == std::io::ErrorKind::NotFound => return Ok(ControlFlow::Continue(())),
            Err(e) => return Err(e),
        };
        stats.segments += 1;
        let txn = db.begin_read().map_err(|e| StoreError::db(&path, e))?;
        let table = match txn.open_table(BLOCKS) {
            Ok(t) => t,
            Err(TableError::TableDoesNotExist(_)) => return Ok(ControlFlow::Continue(())),
            Err(e) => return Err(StoreError::db(&path, e)),
        };
        let mut buf = Vec::new();
        for row in table.iter().map_err(|e| StoreError::db(&path, e))? {
            let (k, v) = row.map_err(|e| StoreError::db(&path, e))?;
            let bytes = v.value();
            let key = k.value();
            let h = block::header(bytes).map_err(|source| StoreError::Block {
                path: path.clone(),
                key,
                source,
            })?;
            if h.min_start >= to || h.max_end < from {
                stats.blocks_skipped += 1;
                continue;
            }
            stats.blocks_read += 1;
            buf.clear();
            block::decode(bytes, &mut buf).map_err(|source| StoreError::Block {
                path: path.clone(),
                key,
                source,
            })?;
            for flow in &buf {
                stats.flows_seen += 1;
                if flow.end_ms < from || flow.start_ms >= to {
                    continue;
                }
                if f(flow).is_break() {
                    return Ok(ControlFlow::Break(()));
                }
            }
        }
        Ok(ControlFlow::Continue(()))
    }

    /// Every row of one `&str -> &[u8]` table of the state file (stages decode their own).
    pub fn state_rows(&self, table: redb::TableDefinition<&str, &[u8]>) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        with_table(&self.dir.state(), table, |t| {
            let mut out = Vec::new();
            for row in t.iter()? {
                let (k, v) = row?;
                out.push((k.value().to_string(), v.value().to_vec()));
            }
            Ok(out)
        })
    }

    /// One row of a state table.
    pub fn state_row(&self, table: redb::TableDefinition<&str, &[u8]>, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        with_table(&self.dir.state(), table, |t| Ok(t.get(key)?.map(|v| v.value().to_vec())))
    }

    /// Where the state file is (for stages that read their tables themselves).
    pub fn dir(&self) -> &DataDir {
        &self.dir
    }

    /// Named stage counters kept in the state file (collector, pipeline, store).
    pub fn counters(&self) -> Result<Vec<(String, u64)>, StoreError> {
        with_table(&self.dir.state(), STATE_META, |t| {
            let mut out = Vec::new();
            for row in t.iter()? {
                let (k, v) = row?;
                if k.value() != "schema" {
                    out.push((k.value().to_string(), v.value()));
                }
            }
            Ok(out)
        })
    }

    /// Per-minute roll-up rows of one dimension kind in `[from, to)`: (minute, key, bytes, packets, flows).
    pub fn minutes(&self, kind: u8, from: u64, to: u64) -> Result<Vec<MinuteRow>, StoreError> {
        with_table(&self.dir.rollups(), MINUTE, |t| {
            let mut out = Vec::new();
            for row in t.range((from, 0u8, &[][..])..(to, 0u8, &[][..]))? {
                let (k, v) = row?;
                let (m, kd, key) = k.value();
                if kd == kind {
                    let (b, pk, n) = v.value();
                    out.push((m, key.to_vec(), b, pk, n));
                }
            }
            Ok(out)
        })
    }

    /// The stored top lists of these hours for one kind and metric (None: no list stored).
    pub fn hour_tops(&self, hours: &[u64], kind: u8, metric: u8) -> Result<Vec<HourTops>, StoreError> {
        with_table(&self.dir.rollups(), HOUR_TOP, |t| {
            let mut out = Vec::with_capacity(hours.len());
            for &h in hours {
                let list = t.get((h, kind, metric))?.and_then(|v| postcard::from_bytes(v.value()).ok());
                out.push((h, list));
            }
            Ok(out)
        })
    }

    /// The roll-up file's metadata (`store::rollup::meta` keys).
    pub fn rollup_meta(&self) -> Result<std::collections::BTreeMap<String, u64>, StoreError> {
        with_table(&self.dir.rollups(), super::schema::ROLLUP_META, |t| {
            let mut out = std::collections::BTreeMap::new();
            for row in t.iter()? {
                let (k, v) = row?;
                out.insert(k.value().to_string(), v.value());
            }
            Ok(out)
        })
    }

    /// Start of the oldest segment's span (None: no flows stored).
    pub fn oldest_span(&self) -> Result<Option<u64>, StoreError> {
        let segs = self.dir.list_segments().map_err(|e| StoreError::io(&self.dir.flows(), e))?;
        Ok(segs.first().map(|s| s.0.span_start))
    }

    /// The stored top list of one hour.
    pub fn hour_top(&self, hour: u64, kind: u8, metric: u8) -> Result<Vec<TopEntry>, StoreError> {
        with_table(&self.dir.rollups(), HOUR_TOP, |t| {
            Ok(t.get((hour, kind, metric))?
                .and_then(|v| postcard::from_bytes(v.value()).ok())
                .unwrap_or_default())
        })
    }
}

/// Run `f` on one table of a state or roll-up file; a file or table that does
/// not exist yet reads as empty.
pub(crate) fn with_table<K: redb::Key + 'static, V: redb::Value + 'static, T: Default>(
    path: &std::path::Path,
    table: redb::TableDefinition<K, V>,
    f: impl FnOnce(&redb::ReadOnlyTable<K, V>) -> Result<T, redb::StorageError>,
) -> Result<T, StoreError> {
    if !path.exists() {
        return Ok(T::default());
    }
    super::guard(path, || with_table_unguarded(path, table, f))
}

fn with_table_unguarded<K: redb::Key + 'static, V: redb::Value + 'static, T: Default>(
    path: &std::path::Path,
    table: redb::TableDefinition<K, V>,
    f: impl FnOnce(&redb::ReadOnlyTable<K, V>) -> Result<T, redb::StorageError>,
) -> Result<T, StoreError> {
    let db = open_readonly(path)?;
    let txn = db.begin_read().map_err(|e| StoreError::db(path, e))?;
    let t = match txn.open_table(table) {
        Ok(t) => t,
        Err(TableError::TableDoesNotExist(_)) => return Ok(T::default()),
        Err(e) => return Err(StoreError::db(path, e)),
    };
    f(&t).map_err(|e| StoreError::db(path, e))
}
