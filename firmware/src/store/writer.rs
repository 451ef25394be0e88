//! The store writer: the one thread that commits to redb.
//!
//! It receives [`StoreMsg`]s over a bounded channel, groups flows by segment
//! span, compresses them into blocks and commits them together with roll-up
//! deltas and state changes, at least every `commit_interval`. When a commit
//! is refused for room (budget, roll-up cap, full disk) it drops the failed
//! handle, makes room ([`super::retention`]: oldest segments first, never
//! newer data for older), reopens and retries; a damaged file is moved aside
//! and rebuilt from what survives. What still cannot be stored is counted as
//! lost; planned eviction of the oldest data is counted as evicted.

use super::catalog::{Catalog, Quarantined};
use super::quota::{Quota, Refusal};
use super::rollup::RollupAgg;
use super::rows::{MetricRows, StateParticipant, StateRows};
use super::schema::{BLOCKS, ROLLUP_META, SCHEMA_VERSION, SEGMENT_META, STATE_META};
use super::{DataDir, SegmentId, StoreCounters, StoreError, block, open_writable};
use crate::flow::{FlowBatch, FlowRecord};
use crate::metrics::{Registry, defs};
use redb::{Database, ReadableDatabase, ReadableTable};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender};
use std::time::{Duration, Instant};

/// Segments kept open for writing at once (late flows may reopen older spans).
const MAX_OPEN_SEGMENTS: usize = 3;
/// Attempts per commit before the data is dropped and counted.
const MAX_ATTEMPTS: usize = 4;

/// Messages to the writer.
pub enum StoreMsg {
    Flows(FlowBatch),
    /// Rows for the next state commit, from a stage the store does not know
    /// (templates, exporter health, alerts, baselines, counters).
    Rows(Box<dyn StateRows>),
    /// Commit now and answer.
    Sync(SyncSender<()>),
}

/// How often a snapshot of the metrics goes into the state file.
const SNAPSHOT_EVERY: Duration = Duration::from_secs(1);

/// State rows kept pending while state commits fail, at most (oldest dropped, counted).
const MAX_PENDING_ROWS: usize = 4096;

/// Resolved writer settings.
#[derive(Debug, Clone)]
pub struct WriterSettings {
    pub budget: u64,
    pub low_watermark_percent: f64,
    pub max_age_ms: Option<u64>,
    pub segment_span_ms: u64,
    pub segment_max_bytes: u64,
    pub commit_interval: Duration,
    pub block_flows: usize,
    pub compression_level: i32,
    pub minute_keep_ms: u64,
    pub hour_keep_ms: u64,
    pub top_n: usize,
    /// Commit early once this many flows are pending: small for live collection
    /// (short stalls, so a burst never outruns the store queue), large for
    /// offline ingest (fewer syncs).
    pub commit_max_flows: usize,
    /// Share of the store's capacity (percent) `rollups.redb` may use; past
    /// it the oldest roll-ups are trimmed early (counted).
    pub rollup_percent: f64,
}

impl WriterSettings {
    /// From the config and a resolved byte budget.
    pub fn from_config(s: &super::settings::StorageConfig, budget: u64) -> WriterSettings {
        WriterSettings {
            budget,
            low_watermark_percent: s.low_watermark_percent,
            max_age_ms: s.max_age.map(|a| a.ms()),
            segment_span_ms: s.segment_span.ms(),
            segment_max_bytes: (budget / 16).clamp(1 << 20, 1 << 30),
            commit_interval: Duration::from_millis(s.commit_interval.ms().max(10)),
            block_flows: s.block_flows,
            compression_level: s.compression_level,
            minute_keep_ms: s.minute_rollup_retention.ms(),
            hour_keep_ms: s.hour_rollup_retention.ms(),
            top_n: s.top_entries,
            commit_max_flows: 65_536,
            rollup_percent: s.rollup_budget_percent,
        }
    }
}

pub(super) struct OpenSegment {
    pub(super) id: SegmentId,
    db: Database,
    next_block: u64,
}

/// What became of a span's flows in a commit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SpanOutcome {
    Stored,
    /// Older than everything the budget keeps: not stored, by the rules.
    EvictedOnArrival,
    /// Could not be stored although they should have been: a loss.
    Lost,
}

/// The writer itself (driven by [`run_writer`] or directly in tests).
pub struct StoreWriter {
    /// Held while this writer lives: one writer per data directory.
    _lock: super::WriterLock,
    pub(super) dir: DataDir,
    pub(super) cfg: WriterSettings,
    pub(super) quota: Arc<Quota>,
    state: Option<Database>,
    pub(super) rollups: Option<Database>,
    pub(super) open: HashMap<u64, OpenSegment>,
    /// Every segment with its flow count.
    pub(super) catalog: Catalog,
    /// Damaged files moved aside since this writer opened.
    pub recovered: Vec<Quarantined>,
    /// The roll-up file was damaged: rebuild it from the segments.
    rebuild_rollups: bool,
    /// The segment the span commit is writing to, or opening (to attribute a refused create).
    opening: Option<SegmentId>,
    /// Minute and hour before which roll-ups were trimmed for room (not written again).
    pub(super) rollup_floor: (u64, u64),
    /// What the roll-up tables hold, estimated between measurements.
    pub(super) rollup_space: super::rollup_space::RollupSpace,
    /// Batches received since the last commit (shared with other stages, never copied).
    pending: Vec<FlowBatch>,
    pending_flows: usize,
    /// State rows waiting for the next state commit, in arrival order.
    rows: Vec<Box<dyn StateRows>>,
    /// Stages that take part in every state commit.
    participants: Vec<Box<dyn StateParticipant>>,
    agg: RollupAgg,
    pub(super) latest_event: u64,
    last_expire_hour: u64,
    last_hours_write: Instant,
    pub counters: Arc<StoreCounters>,
    /// The process's metrics: the store's are published here, and a snapshot
    /// of all of them goes into the state file.
    metrics: Arc<Registry>,
    last_snapshot: Instant,
}

pub(super) fn check_schema(db: &Database, path: &std::path::Path, meta: redb::TableDefinition<&str, u64>) -> Result<(), StoreError> {
    let txn = db.begin_write().map_err(|e| StoreError::db(path, e))?;
    {
        let mut t = txn.open_table(meta).map_err(|e| StoreError::db(path, e))?;
        let found = t.get("schema").map_err(|e| StoreError::db(path, e))?.map(|v| v.value());
        match found {
            Some(v) if v != SCHEMA_VERSION => {
                return Err(StoreError::Schema {
                    path: path.to_path_buf(),
                    found: v,
                    expected: SCHEMA_VERSION,
                });
            }
            Some(_) => {}
            None => {
                t.insert("schema", SCHEMA_VERSION).map_err(|e| StoreError::db(path, e))?;
            }
        }
    }
    txn.commit().map_err(|e| StoreError::db(path, e))
}

impl StoreWriter {
    /// Open the data directory for writing (stages read what they persisted
    /// through [`super::reader::Reader`] once this returns).
    pub fn open(dir: DataDir, cfg: WriterSettings, metrics: Arc<Registry>) -> Result<StoreWriter, StoreError> {
        std::fs::create_dir_all(dir.flows()).map_err(|e| StoreError::io(&dir.flows(), e))?;
        let lock = super::WriterLock::take(&dir)?;
        let quota = Quota::new(cfg.budget, Some(dir.root().to_path_buf()));
        let (catalog, recovered) = Catalog::load(&dir)?;
        for (path, len) in dir.files().map_err(|e| StoreError::io(dir.root(), e))? {
            quota.set_file(&path, len);
        }
        let counters = Arc::new(StoreCounters::default());
        counters.files_damaged.store(recovered.len() as u64, Ordering::Relaxed);
        let mut w = StoreWriter {
            _lock: lock,
            dir,
            cfg,
            quota,
            state: None,
            rollups: None,
            open: HashMap::new(),
            catalog,
            recovered,
            rebuild_rollups: false,
            opening: None,
            rollup_floor: (0, 0),
            rollup_space: Default::default(),
            pending: Vec::new(),
            pending_flows: 0,
            rows: Vec::new(),
            participants: Vec::new(),
            agg: RollupAgg::default(),
            latest_event: 0,
            last_expire_hour: 0,
            last_hours_write: Instant::now(),
            counters,
            metrics,
            last_snapshot: Instant::now() - SNAPSHOT_EVERY,
        };
        w.counters.flows_at_open.store(w.catalog.flows(), Ordering::Relaxed);
        w.rollup_share();
        w.publish_gauges();
        // An over-budget directory (budget lowered, files from elsewhere) is trimmed first.
        if w.quota.used() > w.capacity() {
            w.evict_to(w.low_watermark(), None);
        }
        w.state_db()?;
        w.rollup_db()?;
        if w.rebuild_rollups {
            w.rebuild_rollups_from_segments();
        }
        Ok(w)
    }

    /// What the store may occupy: the budget, or less when the file system
    /// cannot hold that much (a budget larger than the disk, or a disk that
    /// other files fill): our files plus the free space left.
    pub(super) fn capacity(&self) -> u64 {
        match self.quota.fs_available() {
            Some(avail) => self
                .cfg
                .budget
                .min(self.quota.used() + avail.saturating_sub(super::quota::FS_RESERVE)),
            None => self.cfg.budget,
        }
    }

    pub(super) fn low_watermark(&self) -> u64 {
        (self.capacity() as f64 * self.cfg.low_watermark_percent / 100.0) as u64
    }

    pub(super) fn high_watermark(&self) -> u64 {
        let cap = self.capacity();
        let low = (cap as f64 * self.cfg.low_watermark_percent / 100.0) as u64;
        low + (cap - low) / 2
    }

    /// The roll-up file's share of the capacity (also its hard cap in the quota).
    pub(super) fn rollup_share(&self) -> u64 {
        let share = (self.capacity() as f64 * self.cfg.rollup_percent / 100.0) as u64;
        self.quota.set_cap(&self.dir.rollups(), share);
        share
    }

    /// Bytes the store occupies (the sum of its files' lengths).
    pub fn used_bytes(&self) -> u64 {
        self.quota.used()
    }

    fn publish_gauges(&self) {
        let c = &self.counters;
        c.flows_kept.store(self.catalog.flows(), Ordering::Relaxed);
        c.bytes_used.store(self.quota.used(), Ordering::Relaxed);
        c.budget.store(self.cfg.budget, Ordering::Relaxed);
        c.capacity.store(self.capacity(), Ordering::Relaxed);
        c.segments.store(self.catalog.len() as u64, Ordering::Relaxed);
        let m = &self.metrics;
        let g = StoreCounters::get;
        m.gauge(&defs::STORE_FLOWS, &[]).set(self.catalog.flows());
        m.gauge(&defs::STORE_BYTES, &[]).set(self.quota.used());
        m.gauge(&defs::STORE_BUDGET_BYTES, &[]).set(self.cfg.budget);
        m.gauge(&defs::STORE_CAPACITY_BYTES, &[]).set(self.capacity());
        m.gauge(&defs::STORE_SEGMENTS, &[]).set(self.catalog.len() as u64);
        for (def, labels, v) in [
            (&defs::STORE_FLOWS_STORED, &[][..], g(&c.flows_committed)),
            (&defs::STORE_FLOWS_EVICTED, &["budget"][..], g(&c.flows_evicted)),
            (&defs::STORE_FLOWS_EVICTED, &["age"][..], g(&c.flows_evicted_age)),
            (&defs::STORE_FLOWS_LOST, &[][..], g(&c.flows_dropped)),
            (&defs::STORE_FLOWS_TOO_OLD, &[][..], g(&c.flows_too_old)),
            (&defs::STORE_SEGMENTS_EVICTED, &[][..], g(&c.segments_evicted)),
            (&defs::STORE_EVICTED_BYTES, &[][..], g(&c.bytes_evicted)),
            (&defs::STORE_COMMITS, &[][..], g(&c.commits)),
            (&defs::STORE_COMMIT_FAILURES, &["segment"][..], g(&c.commit_failures)),
            (&defs::STORE_COMMIT_FAILURES, &["rollups"][..], g(&c.rollup_failures)),
            (&defs::STORE_COMMIT_FAILURES, &["state"][..], g(&c.state_failures)),
            (&defs::STORE_REOPENS, &[][..], g(&c.reopens)),
            (&defs::STORE_DISK_FULL, &[][..], self.quota.disk_full.load(Ordering::Relaxed)),
            (&defs::STORE_FILES_DAMAGED, &[][..], g(&c.files_damaged)),
            (&defs::STORE_ROLLUP_ROWS_TRIMMED, &[][..], g(&c.rollup_rows_trimmed)),
            (&defs::STORE_ROLLUP_OVERFLOW, &[][..], g(&c.rollup_overflow)),
            (&defs::STORE_STATE_ROWS_DROPPED, &[][..], g(&c.state_rows_dropped)),
        ] {
            m.counter(def, labels).set_at_least(v);
        }
    }

    /// Flows the store holds now (what a query over all time finds).
    pub fn flows_kept(&self) -> u64 {
        self.catalog.flows()
    }

    /// Open a state or roll-up file; a damaged one is moved aside and created afresh.
    fn open_db(&mut self, path: &std::path::Path, meta: redb::TableDefinition<&str, u64>) -> Result<(Database, bool), StoreError> {
        let first = super::guard(path, || {
            open_writable(path, &self.quota).and_then(|db| check_schema(&db, path, meta).map(|_| db))
        });
        match first {
            Ok(db) => Ok((db, false)),
            Err(e) if super::is_damage(&e) => {
                self.quota.forget(path);
                let q = super::quarantine(&self.dir, path, &e.to_string())?;
                if let Ok(len) = std::fs::metadata(&q.to).map(|m| m.len()) {
                    self.quota.set_file(&q.to, len);
                }
                self.recovered.push(q);
                self.counters.files_damaged.fetch_add(1, Ordering::Relaxed);
                let db = open_writable(path, &self.quota)?;
                check_schema(&db, path, meta)?;
                Ok((db, true))
            }
            Err(e) => Err(e),
        }
    }

    fn state_db(&mut self) -> Result<&Database, StoreError> {
        if self.state.is_none() {
            let p = self.dir.state();
            let (db, recreated) = self.open_db(&p, STATE_META)?;
            if recreated {
                tracing::error!(
                    "{}: recreated empty; templates, exporter health, alerts, learned baselines and SIEM spools kept there are lost",
                    p.display()
                );
            }
            self.state = Some(db);
        }
        self.state
            .as_ref()
            .ok_or_else(|| StoreError::io(&self.dir.state(), std::io::Error::other("state closed")))
    }

    pub(super) fn rollup_db(&mut self) -> Result<&Database, StoreError> {
        if self.rollups.is_none() {
            let p = self.dir.rollups();
            // Missing, never finished or damaged while segments hold flows: rebuild from them.
            let fresh = super::holds_no_database(&p) && !self.catalog.is_empty();
            let (db, recreated) = self.open_db(&p, ROLLUP_META)?;
            if recreated || fresh {
                if fresh {
                    tracing::warn!("{}: missing or empty; rebuilding it from the stored flows", p.display());
                }
                self.rebuild_rollups = true;
            }
            self.rollups = Some(db);
        }
        self.rollups
            .as_ref()
            .ok_or_else(|| StoreError::io(&self.dir.rollups(), std::io::Error::other("rollups closed")))
    }

    /// Re-aggregate the roll-ups from every stored flow (after the roll-up file
    /// was found damaged). Roll-ups of flows already evicted cannot come back.
    fn rebuild_rollups_from_segments(&mut self) {
        self.rebuild_rollups = false;
        // Everything comes from the segments, the open hours included.
        self.agg = RollupAgg::default();
        let reader = super::reader::Reader::new(self.dir.clone());
        let ids: Vec<SegmentId> = self.catalog.ids().collect();
        let mut flows = 0u64;
        for id in ids {
            let mut seg_flows = Vec::new();
            let r = reader.scan_segment(id, 0, u64::MAX, &mut |f| {
                seg_flows.push(f.clone());
                std::ops::ControlFlow::Continue(())
            });
            if let Err(e) = r {
                tracing::warn!("roll-up rebuild: segment {id} unreadable: {e}");
                continue;
            }
            for f in &seg_flows {
                self.latest_event = self.latest_event.max(f.end_ms);
                self.agg.add(f);
            }
            flows += seg_flows.len() as u64;
            self.flush_hours();
        }
        tracing::warn!(
            "{}: rebuilt from {flows} stored flows in {} segments",
            self.dir.rollups().display(),
            self.catalog.len()
        );
    }

    /// A stage that takes part in every state commit (the forwarding outbox).
    pub fn add_participant(&mut self, p: Box<dyn StateParticipant>) {
        self.participants.push(p);
    }

    /// Queue flows for the next commit (copies them; the pipeline uses [`Self::add_batch`]).
    pub fn add(&mut self, flows: &[FlowRecord]) {
        self.add_batch(std::sync::Arc::new(flows.to_vec()));
    }

    /// Queue a batch for the next commit.
    pub fn add_batch(&mut self, batch: FlowBatch) {
        for f in batch.iter() {
            self.latest_event = self.latest_event.max(f.end_ms);
        }
        // Flows older than the age cap (relative to the newest flow seen) are refused at commit.
        self.pending_flows += batch.len();
        self.pending.push(batch);
    }

    /// Queue rows for the next state commit.
    pub fn add_rows(&mut self, rows: Box<dyn StateRows>) {
        if self.rows.len() >= MAX_PENDING_ROWS {
            // State commits have been failing for long: the oldest rows go, counted.
            self.rows.remove(0);
            self.counters.state_rows_dropped.fetch_add(1, Ordering::Relaxed);
        }
        self.rows.push(rows);
    }

    pub fn pending_flows(&self) -> usize {
        self.pending_flows
    }

    /// Commit everything pending.
    pub fn commit(&mut self) {
        let pending = std::mem::take(&mut self.pending);
        self.pending_flows = 0;
        let cutoff = self.cfg.max_age_ms.map(|a| self.latest_event.saturating_sub(a));
        let span_ms = self.cfg.segment_span_ms;
        // Group by segment span, by reference; consecutive flows nearly always share one.
        let mut spans: BTreeMap<u64, Vec<&FlowRecord>> = BTreeMap::new();
        let mut run: Option<(u64, Vec<&FlowRecord>)> = None;
        let mut too_old = 0u64;
        for f in pending.iter().flat_map(|b| b.iter()) {
            if cutoff.is_some_and(|c| f.end_ms < c) {
                too_old += 1;
                continue;
            }
            let span = f.start_ms - f.start_ms % span_ms;
            match &mut run {
                Some((s, v)) if *s == span => v.push(f),
                _ => {
                    if let Some((s, v)) = run.take() {
                        spans.entry(s).or_default().extend(v);
                    }
                    run = Some((span, vec![f]));
                }
            }
        }
        if let Some((s, v)) = run {
            spans.entry(s).or_default().extend(v);
        }
        self.counters.flows_too_old.fetch_add(too_old, Ordering::Relaxed);
        for (span, mut flows) in spans {
            let mut blocks = Vec::new();
            for chunk in flows.chunks_mut(self.cfg.block_flows) {
                match block::encode_refs(chunk, self.cfg.compression_level) {
                    Ok(b) => blocks.push(b),
                    Err(e) => {
                        tracing::error!("cannot encode a block of {} flows: {e}", chunk.len());
                        self.counters.flows_dropped.fetch_add(chunk.len() as u64, Ordering::Relaxed);
                    }
                }
            }
            if self.commit_span(span, &blocks) == SpanOutcome::Stored {
                for f in &flows {
                    self.agg.add(f);
                }
            }
        }
        self.commit_rollups();
        self.commit_state();
        self.retention();
        if self.rebuild_rollups {
            self.rebuild_rollups_from_segments();
        }
        self.publish_gauges();
        self.counters.commits.fetch_add(1, Ordering::Relaxed);
    }

    fn commit_span(&mut self, span: u64, blocks: &[(block::BlockHeader, Vec<u8>)]) -> SpanOutcome {
        if blocks.is_empty() {
            return SpanOutcome::Stored;
        }
        let flows: u64 = blocks.iter().map(|b| b.0.count as u64).sum();
        let bytes: u64 = blocks.iter().map(|b| b.1.len() as u64).sum();
        for attempt in 1..=MAX_ATTEMPTS {
            let err = match self.try_commit_span(span, blocks) {
                Ok(id) => {
                    self.catalog.add_flows(id, flows);
                    self.counters.flows_committed.fetch_add(flows, Ordering::Relaxed);
                    self.counters.flows_kept.store(self.catalog.flows(), Ordering::Relaxed);
                    self.counters.blocks_written.fetch_add(blocks.len() as u64, Ordering::Relaxed);
                    self.counters.block_bytes.fetch_add(bytes, Ordering::Relaxed);
                    return SpanOutcome::Stored;
                }
                Err(e) => e,
            };
            let id = self.opening;
            // A redb handle refuses work after a failed commit: drop it before anything else.
            self.open.remove(&span);
            self.counters.reopens.fetch_add(1, Ordering::Relaxed);
            let path = id.map(|id| self.dir.segment(id));
            let refusal = path.as_deref().and_then(|p| self.quota.take_refusal(p));
            match refusal {
                Some(_) => {
                    self.counters.commit_retries.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!("commit of {flows} flows needs room (attempt {attempt}/{MAX_ATTEMPTS}): {err}");
                    // redb doubles a small file: the room needed is about its length again.
                    let len = path.as_deref().and_then(|p| self.quota.file_len(p)).unwrap_or(0);
                    let need = len.max(2 * bytes) + (256 << 10);
                    if !self.make_room(need, id) {
                        // Nothing older is left to evict. If every segment kept is newer,
                        // these flows are the oldest data: not kept, by the rules.
                        let newer_only = self.catalog.oldest(|s| Some(s) == id).is_none_or(|o| o.span_start > span);
                        if newer_only && self.catalog.len() > usize::from(id.is_some()) {
                            self.note_evicted_on_arrival(flows);
                            // A segment created for them and left empty goes too.
                            if let Some(id) = id
                                && self.catalog.flows_in(id) == 0
                            {
                                self.delete_segment(id, super::retention::Why::Budget);
                            }
                            return SpanOutcome::EvictedOnArrival;
                        }
                        break;
                    }
                }
                None => {
                    self.counters.commit_failures.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!("commit of {flows} flows failed (attempt {attempt}/{MAX_ATTEMPTS}): {err}");
                    if super::is_damage(&err)
                        && let Some(id) = id
                    {
                        self.quarantine_segment(id, &err.to_string());
                    }
                }
            }
        }
        tracing::error!("dropping {flows} flows that could not be stored (the store is too small for them, or the disk fails)");
        self.counters.flows_dropped.fetch_add(flows, Ordering::Relaxed);
        SpanOutcome::Lost
    }

    fn note_evicted_on_arrival(&mut self, flows: u64) {
        let before = self.counters.flows_evicted.fetch_add(flows, Ordering::Relaxed);
        if before == 0 || self.counters.commits.load(Ordering::Relaxed).is_multiple_of(1000) {
            tracing::info!("{flows} flows older than everything the budget keeps were not stored (oldest first)");
        }
        self.counters.flows_committed.fetch_add(flows, Ordering::Relaxed);
    }

    /// A segment that cannot be written is moved aside; its flows are counted lost.
    fn quarantine_segment(&mut self, id: SegmentId, reason: &str) {
        let path = self.dir.segment(id);
        self.open.retain(|_, s| s.id != id);
        self.quota.forget(&path);
        let lost = self.catalog.remove(id).map(|i| i.flows).unwrap_or(0);
        self.counters.flows_dropped.fetch_add(lost, Ordering::Relaxed);
        match super::quarantine(&self.dir, &path, reason) {
            Ok(q) => {
                if let Ok(len) = std::fs::metadata(&q.to).map(|m| m.len()) {
                    self.quota.set_file(&q.to, len);
                }
                self.recovered.push(q);
                self.counters.files_damaged.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => tracing::error!("cannot move damaged segment {id} aside: {e}"),
        }
        self.counters.flows_kept.store(self.catalog.flows(), Ordering::Relaxed);
    }

    /// Close a span's open segment, giving back the room redb's last doubling
    /// left unused (compaction truncates the free tail), so a closed segment
    /// costs what it holds.
    fn close_segment(&mut self, span: u64) {
        let Some(mut seg) = self.open.remove(&span) else { return };
        let path = self.dir.segment(seg.id);
        let before = self.quota.file_len(&path).unwrap_or(0);
        match seg.db.compact() {
            Ok(_) => tracing::trace!(
                "segment {} closed: {before} -> {} bytes",
                seg.id,
                self.quota.file_len(&path).unwrap_or(0)
            ),
            Err(e) => tracing::debug!("segment {} closed without compaction: {e}", seg.id),
        }
    }

    fn segment_for(&mut self, span: u64) -> Result<&mut OpenSegment, StoreError> {
        let rolled = match self.open.get(&span) {
            Some(s) => self.quota.file_len(&self.dir.segment(s.id)).unwrap_or(0) >= self.cfg.segment_max_bytes,
            None => false,
        };
        if rolled {
            self.close_segment(span);
        }
        if let Some(seg) = self.open.get(&span) {
            self.opening = Some(seg.id);
        } else {
            if self.open.len() >= MAX_OPEN_SEGMENTS
                && let Some(&oldest) = self.open.keys().min()
            {
                self.close_segment(oldest);
            }
            let id = match self.catalog.last_of_span(span) {
                Some(id) if self.quota.file_len(&self.dir.segment(id)).unwrap_or(0) < self.cfg.segment_max_bytes => id,
                Some(id) => SegmentId {
                    span_start: span,
                    seq: id.seq + 1,
                },
                None => SegmentId { span_start: span, seq: 0 },
            };
            let path = self.dir.segment(id);
            self.opening = Some(id);
            let quota = self.quota.clone();
            let opened = super::guard(&path, || {
                let db = open_writable(&path, &quota)?;
                check_schema(&db, &path, SEGMENT_META)?;
                let txn = db.begin_read().map_err(|e| StoreError::db(&path, e))?;
                let next_block = match txn.open_table(SEGMENT_META) {
                    Ok(t) => t
                        .get("next_block")
                        .map_err(|e| StoreError::db(&path, e))?
                        .map(|v| v.value())
                        .unwrap_or(0),
                    Err(_) => 0,
                };
                drop(txn);
                Ok((db, next_block))
            });
            let (db, next_block) = match opened {
                Ok(db) => db,
                Err(e) => {
                    // A create refused for room leaves an empty file: nothing to keep.
                    if !self.catalog.contains(id) && std::fs::metadata(&path).is_ok_and(|m| m.len() == 0) {
                        let _ = std::fs::remove_file(&path);
                    }
                    return Err(e);
                }
            };
            self.catalog.insert(id);
            self.open.insert(span, OpenSegment { id, db, next_block });
        }
        self.open
            .get_mut(&span)
            .ok_or_else(|| StoreError::io(&self.dir.flows(), std::io::Error::other("segment vanished")))
    }

    /// Write blocks into the span's open segment; on failure, which segment (if one was reached).
    fn try_commit_span(&mut self, span: u64, blocks: &[(block::BlockHeader, Vec<u8>)]) -> Result<SegmentId, StoreError> {
        let span_ms = self.cfg.segment_span_ms;
        let dir = self.dir.clone();
        // A refused create or open is attributed to the file it was for.
        self.opening = None;
        let seg = self.segment_for(span)?;
        let id = seg.id;
        let path = dir.segment(id);
        super::guard(&path, || Self::write_blocks(seg, &path, span_ms, blocks))?;
        Ok(id)
    }

    fn write_blocks(
        seg: &mut OpenSegment,
        path: &std::path::Path,
        span_ms: u64,
        blocks: &[(block::BlockHeader, Vec<u8>)],
    ) -> Result<(), StoreError> {
        let path = path.to_path_buf();
        let txn = seg.db.begin_write().map_err(|e| StoreError::db(&path, e))?;
        let mut next = seg.next_block;
        {
            let mut t = txn.open_table(BLOCKS).map_err(|e| StoreError::db(&path, e))?;
            let mut meta = txn.open_table(SEGMENT_META).map_err(|e| StoreError::db(&path, e))?;
            let get = |meta: &redb::Table<&str, u64>, k: &str| -> Result<Option<u64>, StoreError> {
                Ok(meta.get(k).map_err(|e| StoreError::db(&path, e))?.map(|v| v.value()))
            };
            let mut count = get(&meta, "flows")?.unwrap_or(0);
            let mut min_start = get(&meta, "min_start")?.unwrap_or(u64::MAX);
            let mut max_start = get(&meta, "max_start")?.unwrap_or(0);
            let mut max_end = get(&meta, "max_end")?.unwrap_or(0);
            for (h, bytes) in blocks {
                t.insert((h.min_start, next), bytes.as_slice())
                    .map_err(|e| StoreError::db(&path, e))?;
                next += 1;
                count += h.count as u64;
                min_start = min_start.min(h.min_start);
                max_start = max_start.max(h.max_start);
                max_end = max_end.max(h.max_end);
            }
            for (k, v) in [
                ("flows", count),
                ("min_start", min_start),
                ("max_start", max_start),
                ("max_end", max_end),
                ("next_block", next),
                ("span_ms", span_ms),
            ] {
                meta.insert(k, v).map_err(|e| StoreError::db(&path, e))?;
            }
        }
        txn.commit().map_err(|e| StoreError::db(&path, e))?;
        seg.next_block = next;
        Ok(())
    }

    /// Merge the minute deltas and, when due, the hour tops into the roll-up
    /// file, oldest first, in transactions small enough for its share of the
    /// budget; expire what is past its retention.
    fn commit_rollups(&mut self) {
        let close_before = self.latest_event.saturating_sub(3_600_000);
        // Hour tops go out when an hour closes on event time, and every 30 s for the open ones.
        let write_hours =
            self.agg.closed_dirty(close_before) || (self.agg.hours_dirty() && self.last_hours_write.elapsed() >= Duration::from_secs(30));
        let hour = self.latest_event / 3_600_000;
        let expire = hour != self.last_expire_hour;
        let rows = self.agg.take_minute_rows();
        // ~60 bytes a minute row, ~30 KiB an hour's tops: a transaction stays well inside the share.
        let share = self.rollup_share();
        let chunk = ((share / 600) as usize).clamp(1000, 200_000);
        let hours_chunk = ((share / (300 << 10)) as usize).clamp(1, 168);
        let mut at = 0;
        while at < rows.len() {
            let end = (at + chunk).min(rows.len());
            self.ensure_rollup_room((end - at) as u64, 0);
            let ok = self.rollup_txn("minute roll-ups", |_, floor, txn| {
                let skipped = rows[at..end].iter().filter(|r| r.0.0 < floor.0).count() as u64;
                super::rollup::write_minute_rows(txn, rows[at..end].iter().filter(|r| r.0.0 >= floor.0))?;
                Ok(skipped)
            });
            match ok {
                Some(skipped) => {
                    self.counters.rollup_rows_trimmed.fetch_add(skipped, Ordering::Relaxed);
                }
                None => {
                    tracing::error!(
                        "roll-up deltas of {} minute rows are lost after {MAX_ATTEMPTS} attempts",
                        rows.len() - at
                    );
                    self.counters.rollup_failures.fetch_add(1, Ordering::Relaxed);
                    break;
                }
            }
            at = end;
        }
        if write_hours {
            let top_n = self.cfg.top_n;
            loop {
                let hours: Vec<u64> = self.agg.dirty_hours(self.rollup_floor.1).into_iter().take(hours_chunk).collect();
                if hours.is_empty() {
                    break;
                }
                self.ensure_rollup_room(0, hours.len() as u64 * 12);
                if self
                    .rollup_txn("hour tops", |agg, floor, txn| {
                        let hours: Vec<u64> = hours.iter().copied().filter(|h| *h >= floor.1).collect();
                        agg.write_hours(txn, top_n, &hours)
                    })
                    .is_none()
                {
                    tracing::error!("hour top lists of {} hours are lost after {MAX_ATTEMPTS} attempts", hours.len());
                    self.counters.rollup_failures.fetch_add(1, Ordering::Relaxed);
                }
                // Written or given up: either way they are not retried forever.
                self.agg.hours_written(&hours, close_before, self.rollup_floor.1);
            }
            self.last_hours_write = Instant::now();
        }
        if expire {
            let (mk, hk, now) = (self.cfg.minute_keep_ms, self.cfg.hour_keep_ms, self.latest_event);
            if self
                .rollup_txn("roll-up expiry", |_, _, txn| super::rollup::expire(txn, now, mk, hk))
                .is_some()
            {
                self.last_expire_hour = hour;
            }
        }
        self.counters.rollup_overflow.store(self.agg.hour_overflow, Ordering::Relaxed);
    }

    /// Run `f` in a roll-up write transaction and commit, recovering from a
    /// refusal (trim, make room) or damage between attempts. `f` gets the
    /// aggregation and the current trim floors (minute, hour) and must be
    /// repeatable. None when every attempt failed.
    fn rollup_txn<R>(
        &mut self,
        what: &str,
        mut f: impl FnMut(&RollupAgg, (u64, u64), &redb::WriteTransaction) -> Result<R, redb::Error>,
    ) -> Option<R> {
        for attempt in 1..=MAX_ATTEMPTS {
            let p = self.dir.rollups();
            let floor = self.rollup_floor;
            let res = super::guard(&p, || {
                let db = self.rollup_db()?;
                let txn = db.begin_write().map_err(|e| StoreError::db(&p, e))?;
                let r = f(&self.agg, floor, &txn).map_err(|e| StoreError::db(&p, e))?;
                txn.commit().map_err(|e| StoreError::db(&p, e))?;
                Ok(r)
            });
            match res {
                Ok(r) => return Some(r),
                Err(e) => {
                    tracing::debug!("{what}: commit failed (attempt {attempt}): {e}");
                    self.rollups = None;
                    self.counters.reopens.fetch_add(1, Ordering::Relaxed);
                    self.recover_file(&p, &e, attempt);
                }
            }
        }
        None
    }

    /// After a failed commit to the state or roll-up file (its handle already
    /// dropped): make room, trim old roll-ups, or move a damaged file aside.
    pub(super) fn recover_file(&mut self, path: &std::path::Path, err: &StoreError, attempt: usize) {
        match self.quota.take_refusal(path) {
            Some(Refusal::FileCap) => {
                tracing::debug!("{}: at its cap (attempt {attempt}): {err}", path.display());
                self.rollup_space.invalidate();
                let _ = self.trim_rollups();
            }
            Some(Refusal::Budget | Refusal::Disk) => {
                tracing::debug!("{}: needs room (attempt {attempt}): {err}", path.display());
                let need = self.quota.file_len(path).unwrap_or(0) + (256 << 10);
                self.make_room(need, None);
            }
            None if super::is_damage(err) => {
                self.quota.forget(path);
                match super::quarantine(&self.dir, path, &err.to_string()) {
                    Ok(q) => {
                        if let Ok(len) = std::fs::metadata(&q.to).map(|m| m.len()) {
                            self.quota.set_file(&q.to, len);
                        }
                        self.recovered.push(q);
                        self.counters.files_damaged.fetch_add(1, Ordering::Relaxed);
                        if path == self.dir.rollups() {
                            self.rebuild_rollups = true;
                        }
                    }
                    Err(e) => tracing::error!("cannot move damaged {} aside: {e}", path.display()),
                }
            }
            None => tracing::warn!("{}: commit failed (attempt {attempt}): {err}", path.display()),
        }
    }

    /// Force the hour top lists out now (shutdown, end of ingest).
    pub fn flush_hours(&mut self) {
        self.last_hours_write = Instant::now() - Duration::from_secs(3600);
        self.commit_rollups();
    }

    /// Commit the pending state rows, the participants' work and the store's
    /// own counters in one transaction; on failure recover (make room, move a
    /// damaged file aside) and retry. Rows that still fail stay pending.
    fn commit_state(&mut self) {
        let snapshot_due = self.last_snapshot.elapsed() >= SNAPSHOT_EVERY;
        if self.rows.is_empty() && !snapshot_due && !self.participants.iter().any(|p| p.has_work()) {
            return;
        }
        self.publish_gauges();
        self.metrics.gauge(&defs::SNAPSHOT_TIME, &[]).set(crate::timefmt::now_ms() / 1000);
        let mut own = MetricRows(self.metrics.snapshot());
        let p = self.dir.state();
        for attempt in 1..=MAX_ATTEMPTS {
            if let Err(e) = self.state_db() {
                tracing::warn!("cannot open the state file: {e}");
            }
            let rows = &mut self.rows;
            let participants = &mut self.participants;
            let state = &self.state;
            let res = super::guard(&p, || {
                let db = state
                    .as_ref()
                    .ok_or_else(|| StoreError::io(&p, std::io::Error::other("state closed")))?;
                let txn = db.begin_write().map_err(|e| StoreError::db(&p, e))?;
                for r in rows.iter_mut() {
                    r.stage(&txn).map_err(|e| StoreError::db(&p, e))?;
                }
                own.stage(&txn).map_err(|e| StoreError::db(&p, e))?;
                for x in participants.iter_mut() {
                    x.stage(&txn).map_err(|e| StoreError::db(&p, e))?;
                }
                txn.commit().map_err(|e| StoreError::db(&p, e))
            });
            match res {
                Ok(()) => {
                    for mut r in std::mem::take(&mut self.rows) {
                        r.committed();
                    }
                    for x in &mut self.participants {
                        x.committed();
                    }
                    self.last_snapshot = Instant::now();
                    return;
                }
                Err(e) => {
                    for x in &mut self.participants {
                        x.failed();
                    }
                    self.state = None;
                    self.counters.reopens.fetch_add(1, Ordering::Relaxed);
                    self.recover_file(&p, &e, attempt);
                }
            }
        }
        tracing::error!("state commit failed {MAX_ATTEMPTS} times; its rows are kept for the next commit");
        self.counters.state_failures.fetch_add(1, Ordering::Relaxed);
    }

    /// Commit and close everything.
    pub fn finish(mut self) {
        self.last_snapshot = Instant::now() - SNAPSHOT_EVERY;
        self.commit();
        self.flush_hours();
        let spans: Vec<u64> = self.open.keys().copied().collect();
        for span in spans {
            self.close_segment(span);
        }
        if self.rebuild_rollups {
            self.rebuild_rollups_from_segments();
        }
        // The last snapshot, with the sizes after closing.
        self.last_snapshot = Instant::now() - SNAPSHOT_EVERY;
        self.commit_state();
    }
}

/// Drive a writer from a channel until every sender is gone.
pub fn run_writer(mut w: StoreWriter, rx: Receiver<StoreMsg>) -> Arc<StoreCounters> {
    let mut deadline = Instant::now() + w.cfg.commit_interval;
    let stage = crate::progress::global().stage("writer");
    loop {
        let wait = deadline.saturating_duration_since(Instant::now());
        let got = rx.recv_timeout(wait);
        // Each message (and each timed commit) is one unit of work for the watchdog.
        let _unit = stage.busy();
        match got {
            Ok(StoreMsg::Flows(b)) => {
                w.add_batch(b);
                if w.pending_flows() >= w.cfg.commit_max_flows {
                    w.commit();
                    deadline = Instant::now() + w.cfg.commit_interval;
                }
            }
            Ok(StoreMsg::Rows(r)) => w.add_rows(r),
            Ok(StoreMsg::Sync(reply)) => {
                w.commit();
                let _ = reply.send(());
            }
            Err(RecvTimeoutError::Timeout) => {
                w.commit();
                deadline = Instant::now() + w.cfg.commit_interval;
            }
            Err(RecvTimeoutError::Disconnected) => break,
        }
    }
    let counters = w.counters.clone();
    w.finish();
    counters
}
