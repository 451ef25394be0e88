//! Reading the store: flows by time range, roll-ups, exporter health.
//!
//! Opens files read-only (redb `SingleWriter` mode), so it runs beside a live
//! writer. Segments are chosen by name, blocks by their uncompressed headers,
//! and only then decompressed; flows stream to a callback in storage order
//! (chronological within a block, blocks ordered by their first start).

use super::schema::{BLOCKS, EXPORTERS, HOUR_TOP, MINUTE, STATE_META};
use super::{DataDir, StoreError, block, open_readonly};
use crate::decode::exporters::ExporterStats;
use crate::flow::FlowRecord;
use crate::store::rollup::TopEntry;
use redb::{ReadableDatabase, ReadableTable, TableError};
use std::ops::ControlFlow;

/// Longest span plus longest flow we look back for (segments are named by span start).
const LOOKBACK_MS: u64 = 2 * 86_400_000;

/// A per-minute roll-up row: (minute start, key, bytes, packets, flows).
pub type MinuteRow = (u64, Vec<u8>, u64, u64, u64);

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

    /// Exporter health as last persisted by the writer.
    pub fn exporters(&self) -> Result<Vec<ExporterStats>, StoreError> {
        with_table(&self.dir.state(), EXPORTERS, |t| {
            let mut out = Vec::new();
            for row in t.iter()? {
                if let Ok(s) = postcard::from_bytes::<ExporterStats>(row?.1.value()) {
                    out.push(s);
                }
            }
            Ok(out)
        })
    }

    /// Stored alerts (undecodable rows are skipped and counted in the second value).
    pub fn alerts(&self) -> Result<(Vec<crate::detect::StoredAlert>, u64), StoreError> {
        with_table(&self.dir.state(), super::schema::ALERTS, |t| {
            let mut out = Vec::new();
            let mut bad = 0;
            for row in t.iter()? {
                match serde_json::from_slice(row?.1.value()) {
                    Ok(a) => out.push(a),
                    Err(_) => bad += 1,
                }
            }
            Ok((out, bad))
        })
    }

    /// Detector learning state as last persisted.
    pub fn detect_status(&self) -> Result<Option<crate::detect::EngineStatus>, StoreError> {
        with_table(&self.dir.state(), super::schema::DETECT_STATE, |t| {
            Ok(t.get("status")?.and_then(|v| serde_json::from_slice(v.value()).ok()))
        })
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
