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
use super::schema::{ALERTS, BLOCKS, DETECT_STATE, EXPORTERS, ROLLUP_META, SCHEMA_VERSION, SEGMENT_META, STATE_META, TEMPLATES};
use super::{DataDir, SegmentId, StoreCounters, StoreError, block, open_writable};
use crate::decode::exporters::ExporterStats;
use crate::decode::templates::TemplateChange;
use crate::detect::{DetectLoaded, DetectUpdate, StoredAlert};
use crate::flow::{FlowBatch, FlowRecord};
use redb::{Database, ReadableDatabase, ReadableTable, ReadableTableMetadata};
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
    Templates(Vec<TemplateChange>),
    Exporters(Vec<ExporterStats>),
    /// Named stage counters (collector drops, ...) to keep in the state file.
    Counters(Vec<(String, u64)>),
    /// Alerts, learned baselines and detector counters.
    Detect(DetectUpdate),
    /// Commit now and answer.
    Sync(SyncSender<()>),
}

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
    /// Alerts kept in the state file; beyond it the least recently seen go (counted).
    pub max_alerts: u64,
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
    pub fn from_config(s: &crate::config::StorageConfig, budget: u64) -> WriterSettings {
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
            max_alerts: 100_000,
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

/// State loaded at open for the decoder.
#[derive(Debug, Default)]
pub struct LoadedState {
    pub templates: Vec<(String, Vec<u8>)>,
    pub exporters: Vec<ExporterStats>,
    /// Detector state and the alerts still open for suppression.
    pub detect: DetectLoaded,
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
    templates: Vec<TemplateChange>,
    exporters: Option<Vec<ExporterStats>>,
    named_counters: Vec<(String, u64)>,
    detect_alerts: Vec<StoredAlert>,
    detect_state: Vec<(String, Vec<u8>)>,
    agg: RollupAgg,
    pub(super) latest_event: u64,
    last_expire_hour: u64,
    last_hours_write: Instant,
    /// Forwarding spools fed in the state transaction (None: no destinations).
    spool: Option<crate::forward::spool::SpoolBook>,
    pub counters: Arc<StoreCounters>,
}

fn check_schema(db: &Database, path: &std::path::Path, meta: redb::TableDefinition<&str, u64>) -> Result<(), StoreError> {
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
    /// Open the data directory for writing and load persisted state.
    pub fn open(dir: DataDir, cfg: WriterSettings) -> Result<(StoreWriter, LoadedState), StoreError> {
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
            templates: Vec::new(),
            exporters: None,
            named_counters: Vec::new(),
            detect_alerts: Vec::new(),
            detect_state: Vec::new(),
            agg: RollupAgg::default(),
            latest_event: 0,
            last_expire_hour: 0,
            last_hours_write: Instant::now(),
            spool: None,
            counters,
        };
        w.counters.flows_at_open.store(w.catalog.flows(), Ordering::Relaxed);
        w.rollup_share();
        w.publish_gauges();
        // An over-budget directory (budget lowered, files from elsewhere) is trimmed first.
        if w.quota.used() > w.capacity() {
            w.evict_to(w.low_watermark(), None);
        }
        let loaded = w.load_state()?;
        w.rollup_db()?;
        if w.rebuild_rollups {
            w.rebuild_rollups_from_segments();
        }
        Ok((w, loaded))
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

    fn load_state(&mut self) -> Result<LoadedState, StoreError> {
        let p = self.dir.state();
        let db = self.state_db()?;
        let txn = db.begin_read().map_err(|e| StoreError::db(&p, e))?;
        let mut out = LoadedState::default();
        if let Ok(t) = txn.open_table(TEMPLATES) {
            for row in t.iter().map_err(|e| StoreError::db(&p, e))? {
                let (k, v) = row.map_err(|e| StoreError::db(&p, e))?;
                out.templates.push((k.value().to_string(), v.value().to_vec()));
            }
        }
        if let Ok(t) = txn.open_table(EXPORTERS) {
            for row in t.iter().map_err(|e| StoreError::db(&p, e))? {
                let (_, v) = row.map_err(|e| StoreError::db(&p, e))?;
                if let Ok(s) = postcard::from_bytes::<ExporterStats>(v.value()) {
                    out.exporters.push(s);
                }
            }
        }
        if let Ok(t) = txn.open_table(DETECT_STATE) {
            for row in t.iter().map_err(|e| StoreError::db(&p, e))? {
                let (k, v) = row.map_err(|e| StoreError::db(&p, e))?;
                out.detect.state.push((k.value().to_string(), v.value().to_vec()));
            }
        }
        if let Ok(t) = txn.open_table(ALERTS) {
            for row in t.iter().map_err(|e| StoreError::db(&p, e))? {
                let (_, v) = row.map_err(|e| StoreError::db(&p, e))?;
                if let Ok(a) = serde_json::from_slice::<StoredAlert>(v.value()) {
                    out.detect.alerts.push(a);
                }
            }
        }
        Ok(out)
    }

    /// Spool every alert (new or updated) for these destinations, in the same
    /// transaction that stores it, and persist the senders' confirmations and state.
    pub fn set_forwarding(
        &mut self,
        dests: Vec<crate::forward::spool::SpoolDest>,
        shared: Arc<crate::forward::spool::ForwardShared>,
    ) -> Result<(), StoreError> {
        let p = self.dir.state();
        let db = self.state_db()?;
        let book = crate::forward::spool::SpoolBook::load(db, dests, shared).map_err(|e| StoreError::db(&p, e))?;
        self.spool = Some(book);
        Ok(())
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

    pub fn add_templates(&mut self, changes: Vec<TemplateChange>) {
        self.templates.extend(changes);
    }

    pub fn set_exporters(&mut self, stats: Vec<ExporterStats>) {
        self.exporters = Some(stats);
    }

    /// Named counters for the state file (latest value wins).
    pub fn set_counters(&mut self, counters: Vec<(String, u64)>) {
        self.named_counters.extend(counters);
    }

    /// Queue alerts and detector state for the next state commit.
    pub fn add_detect(&mut self, u: DetectUpdate) {
        self.detect_alerts.extend(u.alerts);
        self.detect_state.extend(u.state);
        self.named_counters.extend(u.counters);
    }

    /// This writer's own counters under their state-file names.
    fn own_counters(&self) -> Vec<(String, u64)> {
        let c = &self.counters;
        let g = StoreCounters::get;
        [
            ("store.flows_committed", g(&c.flows_committed)),
            ("store.commit_failures", g(&c.commit_failures)),
            ("store.reopens", g(&c.reopens)),
            ("store.segments_evicted", g(&c.segments_evicted)),
            ("store.bytes_evicted", g(&c.bytes_evicted)),
            ("store.flows_dropped", g(&c.flows_dropped)),
            ("store.flows_too_old", g(&c.flows_too_old)),
            ("store.rollup_overflow", g(&c.rollup_overflow)),
            ("store.alerts_evicted", g(&c.alerts_evicted)),
            ("store.flows_evicted", g(&c.flows_evicted)),
            ("store.flows_evicted_age", g(&c.flows_evicted_age)),
            ("store.flows_kept", self.catalog.flows()),
            ("store.segments", self.catalog.len() as u64),
            ("store.rollup_rows_trimmed", g(&c.rollup_rows_trimmed)),
            ("store.rollup_failures", g(&c.rollup_failures)),
            ("store.state_failures", g(&c.state_failures)),
            ("store.files_damaged", g(&c.files_damaged)),
            ("store.disk_full", self.quota.disk_full.load(Ordering::Relaxed)),
            ("forward.spool_dropped", g(&c.spool_dropped)),
            ("store.bytes_used", self.quota.used()),
            ("store.budget", self.cfg.budget),
            ("store.capacity", self.capacity()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
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

    fn commit_state(&mut self) {
        if self.templates.is_empty()
            && self.exporters.is_none()
            && self.named_counters.is_empty()
            && self.detect_alerts.is_empty()
            && self.detect_state.is_empty()
            && !self.spool.as_ref().is_some_and(|s| s.has_work())
        {
            return;
        }
        // Every alert (new or updated) becomes a spool entry for each destination;
        // an alert updated several times before this commit is sent once, as it is now.
        let at_ms = crate::timefmt::now_ms();
        let spool_entries: Vec<Vec<u8>> = match &self.spool {
            Some(s) if !s.is_empty() => {
                let last: HashMap<&str, usize> = self
                    .detect_alerts
                    .iter()
                    .enumerate()
                    .map(|(i, a)| (a.alert.id.as_str(), i))
                    .collect();
                self.detect_alerts
                    .iter()
                    .enumerate()
                    .filter(|(i, a)| last.get(a.alert.id.as_str()) == Some(i))
                    .map(|(_, a)| {
                        serde_json::to_vec(&crate::forward::event::SpoolEntry {
                            at_ms,
                            event: crate::forward::event::Event::Alert(a.alert.clone()),
                        })
                        .unwrap_or_default()
                    })
                    .collect()
            }
            _ => Vec::new(),
        };
        let mut named = std::mem::take(&mut self.named_counters);
        named.extend(self.own_counters());
        for attempt in 1..=MAX_ATTEMPTS {
            let templates = &self.templates;
            let exporters = &self.exporters;
            let named = &named;
            let alerts = &self.detect_alerts;
            let detect_state = &self.detect_state;
            let max_alerts = self.cfg.max_alerts;
            let mut evicted_alerts = 0;
            let p = self.dir.state();
            let spool = &mut self.spool;
            let spool_entries = &spool_entries;
            let res = super::guard(&p, || {
                let db = match &self.state {
                    Some(db) => db,
                    None => return Err(StoreError::io(&p, std::io::Error::other("state closed"))),
                };
                let txn = db.begin_write().map_err(|e| StoreError::db(&p, e))?;
                {
                    let mut t = txn.open_table(TEMPLATES).map_err(|e| StoreError::db(&p, e))?;
                    for (k, v) in templates {
                        match v {
                            Some(v) => t.insert(k.as_str(), v.as_slice()).map(|_| ()),
                            None => t.remove(k.as_str()).map(|_| ()),
                        }
                        .map_err(|e| StoreError::db(&p, e))?;
                    }
                    let mut meta = txn.open_table(STATE_META).map_err(|e| StoreError::db(&p, e))?;
                    for (k, v) in named {
                        meta.insert(k.as_str(), *v).map_err(|e| StoreError::db(&p, e))?;
                    }
                    if let Some(ex) = exporters {
                        let mut t = txn.open_table(EXPORTERS).map_err(|e| StoreError::db(&p, e))?;
                        for s in ex {
                            let bytes = postcard::to_stdvec(s).unwrap_or_default();
                            t.insert(s.exporter.as_str(), bytes.as_slice()).map_err(|e| StoreError::db(&p, e))?;
                        }
                    }
                    let mut t = txn.open_table(ALERTS).map_err(|e| StoreError::db(&p, e))?;
                    for a in alerts {
                        let bytes = serde_json::to_vec(a).unwrap_or_default();
                        t.insert(a.alert.id.as_str(), bytes.as_slice()).map_err(|e| StoreError::db(&p, e))?;
                    }
                    evicted_alerts = cap_alerts(&mut t, max_alerts).map_err(|e| StoreError::db(&p, e))?;
                    let mut t = txn.open_table(DETECT_STATE).map_err(|e| StoreError::db(&p, e))?;
                    for (k, v) in detect_state {
                        t.insert(k.as_str(), v.as_slice()).map_err(|e| StoreError::db(&p, e))?;
                    }
                }
                if let Some(s) = spool.as_mut() {
                    s.stage(&txn, spool_entries).map_err(|e| StoreError::db(&p, e))?;
                }
                txn.commit().map_err(|e| StoreError::db(&p, e))
            });
            match res {
                Ok(()) => {
                    if let Some(s) = self.spool.as_mut() {
                        s.committed();
                        self.counters.spool_dropped.store(s.dropped, Ordering::Relaxed);
                    }
                    self.counters.alerts_evicted.fetch_add(evicted_alerts, Ordering::Relaxed);
                    self.templates.clear();
                    self.exporters = None;
                    self.detect_alerts.clear();
                    self.detect_state.clear();
                    return;
                }
                Err(e) => {
                    if let Some(s) = self.spool.as_mut() {
                        s.failed();
                    }
                    self.state = None;
                    self.counters.reopens.fetch_add(1, Ordering::Relaxed);
                    let p = self.dir.state();
                    self.recover_file(&p, &e, attempt);
                    if let Err(e) = self.state_db() {
                        tracing::warn!("cannot reopen the state file: {e}");
                    }
                }
            }
        }
        tracing::error!("state commit failed {MAX_ATTEMPTS} times; kept in memory for the next commit");
        self.counters.state_failures.fetch_add(1, Ordering::Relaxed);
    }

    /// Commit and close everything.
    pub fn finish(mut self) {
        self.commit();
        self.flush_hours();
        let spans: Vec<u64> = self.open.keys().copied().collect();
        for span in spans {
            self.close_segment(span);
        }
        if self.rebuild_rollups {
            self.rebuild_rollups_from_segments();
        }
        self.publish_gauges();
    }
}

/// Keep at most `max` alerts: past it, delete the least recently seen tenth
/// (so the scan that finds them runs rarely). Returns how many were deleted.
fn cap_alerts(t: &mut redb::Table<&'static str, &'static [u8]>, max: u64) -> Result<u64, redb::StorageError> {
    let len = t.len()?;
    if len <= max {
        return Ok(0);
    }
    let mut all: Vec<(u64, String)> = Vec::with_capacity(len as usize);
    for row in t.iter()? {
        let (k, v) = row?;
        let seen = serde_json::from_slice::<StoredAlert>(v.value())
            .map(|a| a.alert.last_seen_ms)
            .unwrap_or(0);
        all.push((seen, k.value().to_string()));
    }
    all.sort_unstable();
    let n = len - max * 9 / 10;
    for (_, id) in all.iter().take(n as usize) {
        t.remove(id.as_str())?;
    }
    Ok(n)
}

/// Drive a writer from a channel until every sender is gone.
pub fn run_writer(mut w: StoreWriter, rx: Receiver<StoreMsg>) -> Arc<StoreCounters> {
    let mut deadline = Instant::now() + w.cfg.commit_interval;
    loop {
        let wait = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(wait) {
            Ok(StoreMsg::Flows(b)) => {
                w.add_batch(b);
                if w.pending_flows() >= w.cfg.commit_max_flows {
                    w.commit();
                    deadline = Instant::now() + w.cfg.commit_interval;
                }
            }
            Ok(StoreMsg::Templates(t)) => w.add_templates(t),
            Ok(StoreMsg::Exporters(e)) => w.set_exporters(e),
            Ok(StoreMsg::Counters(c)) => w.set_counters(c),
            Ok(StoreMsg::Detect(u)) => w.add_detect(u),
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::alert::{Alert, Kind};

    #[test]
    fn alert_table_is_capped_oldest_first() {
        let d = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let db = Database::create(d.path().join("s.redb")).unwrap_or_else(|e| panic!("{e}"));
        let txn = db.begin_write().unwrap_or_else(|e| panic!("{e}"));
        {
            let mut t = txn.open_table(ALERTS).unwrap_or_else(|e| panic!("{e}"));
            for i in 0..30u64 {
                let a = StoredAlert {
                    group: format!("g{i}"),
                    alert: Alert {
                        id: format!("fw-{i:02}"),
                        kind: Kind::Scan,
                        severity: 4,
                        src: std::net::IpAddr::from([10, 0, 0, 1]),
                        dst: None,
                        dst_port: None,
                        first_seen_ms: i,
                        // Not in id order: eviction goes by last_seen.
                        last_seen_ms: (i * 7) % 30,
                        count: 1,
                        summary: String::new(),
                        attack: vec![],
                        evidence: Default::default(),
                    },
                };
                let bytes = serde_json::to_vec(&a).unwrap_or_default();
                t.insert(a.alert.id.as_str(), bytes.as_slice()).unwrap_or_else(|e| panic!("{e}"));
            }
            assert_eq!(cap_alerts(&mut t, 40).unwrap_or_else(|e| panic!("{e}")), 0);
            assert_eq!(cap_alerts(&mut t, 20).unwrap_or_else(|e| panic!("{e}")), 12);
            assert_eq!(t.len().unwrap_or_else(|e| panic!("{e}")), 18);
            for row in t.iter().unwrap_or_else(|e| panic!("{e}")) {
                let (_, v) = row.unwrap_or_else(|e| panic!("{e}"));
                let a: StoredAlert = serde_json::from_slice(v.value()).unwrap_or_else(|e| panic!("{e}"));
                assert!(a.alert.last_seen_ms >= 12, "{a:?}");
            }
        }
        txn.commit().unwrap_or_else(|e| panic!("{e}"));
    }
}
