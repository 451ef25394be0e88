//! The store writer: the one thread that commits to redb.
//!
//! It receives [`StoreMsg`]s over a bounded channel, groups flows by segment
//! span, compresses them into blocks and commits them together with roll-up
//! deltas and state changes, at least every `commit_interval`. When a commit
//! fails (full disk, budget reached) it drops the failed handle, evicts the
//! oldest segments, reopens and retries; what still cannot be stored is
//! counted. Retention (byte budget with low watermark, optional age cap)
//! deletes whole segments, oldest first.

use super::quota::Quota;
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
        }
    }
}

struct OpenSegment {
    id: SegmentId,
    db: Database,
    next_block: u64,
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
    dir: DataDir,
    cfg: WriterSettings,
    quota: Arc<Quota>,
    state: Option<Database>,
    rollups: Option<Database>,
    open: HashMap<u64, OpenSegment>,
    /// Batches received since the last commit (shared with other stages, never copied).
    pending: Vec<FlowBatch>,
    pending_flows: usize,
    templates: Vec<TemplateChange>,
    exporters: Option<Vec<ExporterStats>>,
    named_counters: Vec<(String, u64)>,
    detect_alerts: Vec<StoredAlert>,
    detect_state: Vec<(String, Vec<u8>)>,
    agg: RollupAgg,
    latest_event: u64,
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
        let quota = Quota::new(cfg.budget);
        quota.charge(dir.total_bytes().map_err(|e| StoreError::io(dir.root(), e))?);
        let mut w = StoreWriter {
            dir,
            cfg,
            quota,
            state: None,
            rollups: None,
            open: HashMap::new(),
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
            counters: Arc::new(StoreCounters::default()),
        };
        // An over-budget directory (budget lowered, files from elsewhere) is trimmed first.
        if w.quota.used() > w.cfg.budget {
            w.evict_to(w.low_watermark());
        }
        let loaded = w.load_state()?;
        Ok((w, loaded))
    }

    fn low_watermark(&self) -> u64 {
        (self.cfg.budget as f64 * self.cfg.low_watermark_percent / 100.0) as u64
    }

    fn high_watermark(&self) -> u64 {
        let low = self.low_watermark();
        low + (self.cfg.budget - low) / 2
    }

    /// Bytes the store occupies (as charged to the budget).
    pub fn used_bytes(&self) -> u64 {
        self.quota.used()
    }

    fn state_db(&mut self) -> Result<&Database, StoreError> {
        if self.state.is_none() {
            let p = self.dir.state();
            let db = open_writable(&p, &self.quota)?;
            check_schema(&db, &p, STATE_META)?;
            self.state = Some(db);
        }
        self.state
            .as_ref()
            .ok_or_else(|| StoreError::io(&self.dir.state(), std::io::Error::other("state closed")))
    }

    fn rollup_db(&mut self) -> Result<&Database, StoreError> {
        if self.rollups.is_none() {
            let p = self.dir.rollups();
            let db = open_writable(&p, &self.quota)?;
            check_schema(&db, &p, ROLLUP_META)?;
            self.rollups = Some(db);
        }
        self.rollups
            .as_ref()
            .ok_or_else(|| StoreError::io(&self.dir.rollups(), std::io::Error::other("rollups closed")))
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
            ("forward.spool_dropped", g(&c.spool_dropped)),
            ("store.bytes_used", self.quota.used()),
            ("store.budget", self.cfg.budget),
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
            self.agg.add(f);
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
            self.commit_span(span, &blocks);
        }
        self.commit_rollups();
        self.commit_state();
        self.retention();
        self.counters.commits.fetch_add(1, Ordering::Relaxed);
    }

    fn commit_span(&mut self, span: u64, blocks: &[(block::BlockHeader, Vec<u8>)]) {
        if blocks.is_empty() {
            return;
        }
        let flows: u64 = blocks.iter().map(|b| b.0.count as u64).sum();
        for attempt in 1..=MAX_ATTEMPTS {
            match self.try_commit_span(span, blocks) {
                Ok(()) => {
                    self.counters.flows_committed.fetch_add(flows, Ordering::Relaxed);
                    self.counters.blocks_written.fetch_add(blocks.len() as u64, Ordering::Relaxed);
                    let bytes: u64 = blocks.iter().map(|b| b.1.len() as u64).sum();
                    self.counters.block_bytes.fetch_add(bytes, Ordering::Relaxed);
                    return;
                }
                Err(e) => {
                    self.counters.commit_failures.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!("commit of {flows} flows failed (attempt {attempt}/{MAX_ATTEMPTS}): {e}");
                    // A redb handle refuses work after a failed commit: drop it and
                    // make room before reopening.
                    self.open.remove(&span);
                    self.counters.reopens.fetch_add(1, Ordering::Relaxed);
                    let need = blocks.iter().map(|b| b.1.len() as u64 * 2).sum::<u64>() + (1 << 20);
                    let target = self.low_watermark().min(self.cfg.budget.saturating_sub(need));
                    if !self.evict_to(target) && attempt > 1 {
                        break;
                    }
                }
            }
        }
        tracing::error!("dropping {flows} flows that could not be stored");
        self.counters.flows_dropped.fetch_add(flows, Ordering::Relaxed);
    }

    fn segment_for(&mut self, span: u64) -> Result<&mut OpenSegment, StoreError> {
        let rolled = match self.open.get(&span) {
            Some(s) => std::fs::metadata(self.dir.segment(s.id)).map(|m| m.len()).unwrap_or(0) >= self.cfg.segment_max_bytes,
            None => false,
        };
        if rolled {
            self.open.remove(&span);
        }
        if !self.open.contains_key(&span) {
            if self.open.len() >= MAX_OPEN_SEGMENTS
                && let Some(&oldest) = self.open.keys().min()
            {
                self.open.remove(&oldest);
            }
            let existing = self
                .dir
                .list_segments()
                .map_err(|e| StoreError::io(&self.dir.flows(), e))?
                .into_iter()
                .rfind(|(id, _)| id.span_start == span);
            let id = match existing {
                Some((id, size)) if size < self.cfg.segment_max_bytes => id,
                Some((id, _)) => SegmentId {
                    span_start: span,
                    seq: id.seq + 1,
                },
                None => SegmentId { span_start: span, seq: 0 },
            };
            let path = self.dir.segment(id);
            let db = open_writable(&path, &self.quota)?;
            check_schema(&db, &path, SEGMENT_META)?;
            let next_block = {
                let txn = db.begin_read().map_err(|e| StoreError::db(&path, e))?;
                match txn.open_table(SEGMENT_META) {
                    Ok(t) => t
                        .get("next_block")
                        .map_err(|e| StoreError::db(&path, e))?
                        .map(|v| v.value())
                        .unwrap_or(0),
                    Err(_) => 0,
                }
            };
            self.open.insert(span, OpenSegment { id, db, next_block });
        }
        self.open
            .get_mut(&span)
            .ok_or_else(|| StoreError::io(&self.dir.flows(), std::io::Error::other("segment vanished")))
    }

    fn try_commit_span(&mut self, span: u64, blocks: &[(block::BlockHeader, Vec<u8>)]) -> Result<(), StoreError> {
        let span_ms = self.cfg.segment_span_ms;
        let seg = self.segment_for(span)?;
        let path = PathBuf::from(format!("{}", seg.id));
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

    fn commit_rollups(&mut self) {
        let write_hours = self.agg.hours_dirty() && self.last_hours_write.elapsed() >= Duration::from_secs(30);
        let hour = self.latest_event / 3_600_000;
        let expire = hour != self.last_expire_hour;
        for attempt in 1..=MAX_ATTEMPTS {
            let res = (|| -> Result<(), StoreError> {
                let p = self.dir.rollups();
                let top_n = self.cfg.top_n;
                let close_before = self.latest_event.saturating_sub(3_600_000);
                let (mk, hk, now) = (self.cfg.minute_keep_ms, self.cfg.hour_keep_ms, self.latest_event);
                let db = self.rollup_db()?;
                let txn = db.begin_write().map_err(|e| StoreError::db(&p, e))?;
                let mut agg = std::mem::take(&mut self.agg);
                let r = agg.write_minutes(&txn).and_then(|_| {
                    if write_hours {
                        agg.write_hours(&txn, top_n, close_before)
                    } else {
                        Ok(())
                    }
                });
                let r = r.and_then(|_| if expire { super::rollup::expire(&txn, now, mk, hk) } else { Ok(()) });
                self.agg = agg;
                r.map_err(|e| StoreError::db(&p, e))?;
                txn.commit().map_err(|e| StoreError::db(&p, e))
            })();
            match res {
                Ok(()) => {
                    self.agg.clear_minutes();
                    if write_hours {
                        self.last_hours_write = Instant::now();
                    }
                    if expire {
                        self.last_expire_hour = hour;
                    }
                    self.counters.rollup_overflow.store(self.agg.hour_overflow, Ordering::Relaxed);
                    return;
                }
                Err(e) => {
                    tracing::warn!("roll-up commit failed (attempt {attempt}): {e}");
                    self.rollups = None;
                    self.counters.reopens.fetch_add(1, Ordering::Relaxed);
                    self.evict_to(self.low_watermark());
                }
            }
        }
        self.counters.state_failures.fetch_add(1, Ordering::Relaxed);
        self.agg.clear_minutes();
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
            let res = (|| -> Result<(), StoreError> {
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
            })();
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
                    tracing::warn!("state commit failed (attempt {attempt}): {e}");
                    self.state = None;
                    self.counters.reopens.fetch_add(1, Ordering::Relaxed);
                    self.evict_to(self.low_watermark());
                    if self.state_db().is_err() {
                        continue;
                    }
                }
            }
        }
        self.counters.state_failures.fetch_add(1, Ordering::Relaxed);
    }

    fn retention(&mut self) {
        if self.quota.used() > self.high_watermark() {
            self.evict_to(self.low_watermark());
        }
        if let Some(age) = self.cfg.max_age_ms {
            let cutoff = self.latest_event.saturating_sub(age);
            let Ok(segs) = self.dir.list_segments() else { return };
            for (id, size) in segs {
                // Flows in a segment start before span end; give them a span of slack to end.
                if id.span_start + 2 * self.cfg.segment_span_ms < cutoff {
                    self.delete_segment(id, size);
                }
            }
        }
    }

    fn delete_segment(&mut self, id: SegmentId, size: u64) -> bool {
        if self.open.get(&id.span_start).is_some_and(|s| s.id == id) {
            self.open.remove(&id.span_start);
        }
        match std::fs::remove_file(self.dir.segment(id)) {
            Ok(()) => {
                self.quota.release(size);
                self.counters.segments_evicted.fetch_add(1, Ordering::Relaxed);
                self.counters.bytes_evicted.fetch_add(size, Ordering::Relaxed);
                tracing::info!("evicted segment {id} ({size} bytes)");
                true
            }
            Err(e) => {
                tracing::error!("cannot delete segment {id}: {e}");
                false
            }
        }
    }

    /// Delete oldest segments until use is at or below `target`. Returns whether any was deleted.
    fn evict_to(&mut self, target: u64) -> bool {
        let mut any = false;
        while self.quota.used() > target {
            let Ok(segs) = self.dir.list_segments() else { break };
            let Some(&(id, size)) = segs.first() else { break };
            // Sizes on disk may have grown since they were charged (open files); re-read.
            if !self.delete_segment(id, size) {
                break;
            }
            any = true;
        }
        any
    }

    /// Commit and close everything.
    pub fn finish(mut self) {
        self.commit();
        self.flush_hours();
        self.open.clear();
    }
}

use std::path::PathBuf;

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
