//! The shared pipeline behind `run` and `ingest`: decoder → bounded channels →
//! store writer thread and detector thread.
//!
//! Datagrams go into a [`Decoder`]; flows are grouped into [`FlowBatch`]es and
//! handed (as the same `Arc`) to the writer and to the detection engine over
//! bounded channels. Live collection never waits on either: a full channel
//! drops the batch and counts it. Offline ingest blocks instead, so a replay
//! loses nothing. Template changes and exporter health are sent along so the
//! state database stays current; the detector thread sends its alerts and
//! learned state to the writer (waiting for room: alerts are never dropped).

use crate::config::Config;
use crate::decode::{DecodeError, DecodeTotals, Decoder};
use crate::detect::Engine;
use crate::flow::{FlowBatch, FlowRecord};
use crate::store::writer::{StoreMsg, StoreWriter, WriterSettings, run_writer};
use crate::store::{DataDir, StoreCounters, StoreError, resolve_budget};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{SyncSender, TrySendError, sync_channel};
use std::thread::JoinHandle;
use thiserror::Error;

#[derive(Debug, Error)]
pub enum PipelineError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Decode(#[from] DecodeError),
    #[error("cannot start the store writer thread: {0}")]
    Thread(std::io::Error),
}

/// When a full store queue is met.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backpressure {
    /// Wait for room (offline ingest).
    Block,
    /// Drop the batch and count it (live collection).
    Drop,
}

/// Counters of the pipeline itself.
#[derive(Debug, Default)]
pub struct PipelineCounters {
    pub batches_dropped: AtomicU64,
    pub flows_dropped: AtomicU64,
    /// Batches the detector queue had no room for (live only).
    pub detect_batches_dropped: AtomicU64,
    pub detect_flows_dropped: AtomicU64,
}

/// Messages to the detector thread.
enum DetectMsg {
    Flows(FlowBatch),
    /// Hand everything to the writer, then answer.
    Sync(SyncSender<()>),
}

/// What a finished pipeline did.
#[derive(Debug, Clone, Default)]
pub struct PipelineReport {
    pub decode: DecodeTotals,
    pub flows_committed: u64,
    pub flows_dropped_queue: u64,
    pub flows_dropped_store: u64,
    pub flows_too_old: u64,
    pub segments_evicted: u64,
    /// Oldest flows removed (or not stored) to stay within the budget.
    pub flows_evicted: u64,
    /// Flows removed by the age cap.
    pub flows_evicted_age: u64,
    /// Flows in the store before this run and now (what `query` counts).
    pub flows_before: u64,
    pub flows_kept: u64,
    pub bytes_used: u64,
    pub budget: u64,
    pub capacity: u64,
    pub segments: u64,
    /// Damaged files moved aside, roll-up and state commits given up.
    pub files_damaged: u64,
    pub rollup_failures: u64,
    pub state_failures: u64,
    pub rollup_rows_trimmed: u64,
    pub commit_failures: u64,
    pub block_bytes: u64,
    pub templates: usize,
    pub exporters_evicted: u64,
    pub flows_dropped_detect_queue: u64,
}

pub struct Pipeline {
    pub decoder: Decoder,
    tx: Option<SyncSender<StoreMsg>>,
    writer: Option<JoinHandle<Arc<StoreCounters>>>,
    detect_tx: Option<SyncSender<DetectMsg>>,
    detector: Option<JoinHandle<()>>,
    store_counters: Arc<StoreCounters>,
    batch: Vec<FlowRecord>,
    batch_flows: usize,
    mode: Backpressure,
    pub counters: Arc<PipelineCounters>,
    /// Where forwarding senders report confirmations and state to the writer.
    pub forward: Arc<crate::forward::spool::ForwardShared>,
}

impl Pipeline {
    /// Open the data directory and start the writer thread.
    pub fn open(cfg: &Config, data_dir: &Path, mode: Backpressure) -> Result<Pipeline, PipelineError> {
        std::fs::create_dir_all(data_dir).map_err(|e| StoreError::Io {
            path: data_dir.to_path_buf(),
            source: e,
        })?;
        let budget = resolve_budget(cfg.storage.budget, data_dir)?;
        let mut settings = WriterSettings::from_config(&cfg.storage, budget);
        if mode == Backpressure::Block {
            settings.commit_max_flows = 262_144;
        }
        let (mut writer, loaded) = StoreWriter::open(DataDir::new(data_dir), settings)?;
        // Alerts are spooled for every configured SIEM destination as they are stored.
        let forward = Arc::new(crate::forward::spool::ForwardShared::new());
        let dests = cfg
            .forward
            .iter()
            .map(|f| crate::forward::spool::SpoolDest {
                name: f.name.clone(),
                max_bytes: f.spool_bytes(),
            })
            .collect();
        writer.set_forwarding(dests, forward.clone())?;
        let store_counters = writer.counters.clone();
        let decoder = Decoder::new(cfg, loaded.templates, loaded.exporters)?;
        let (tx, rx) = sync_channel(cfg.collector.queue_batches);
        let handle = std::thread::Builder::new()
            .name("store-writer".into())
            .spawn(move || run_writer(writer, rx))
            .map_err(PipelineError::Thread)?;
        let (detect_tx, detector) = if cfg.detect.enabled {
            let engine = Engine::new(cfg, loaded.detect);
            let (dtx, drx) = sync_channel(cfg.collector.queue_batches);
            let wtx = tx.clone();
            let h = std::thread::Builder::new()
                .name("detect".into())
                .spawn(move || run_detector(engine, drx, wtx))
                .map_err(PipelineError::Thread)?;
            (Some(dtx), Some(h))
        } else {
            (None, None)
        };
        Ok(Pipeline {
            decoder,
            tx: Some(tx),
            writer: Some(handle),
            detect_tx,
            detector,
            store_counters,
            batch: Vec::with_capacity(cfg.collector.batch_flows),
            batch_flows: cfg.collector.batch_flows,
            mode,
            counters: Arc::new(PipelineCounters::default()),
            forward,
        })
    }

    /// Decode one datagram.
    pub fn datagram(&mut self, exporter: SocketAddr, arrival_ms: u64, data: &[u8]) {
        self.decoder.decode(exporter, arrival_ms, data, &mut self.batch);
        if self.batch.len() >= self.batch_flows {
            self.send_batch();
        }
    }

    fn send(&self, msg: StoreMsg) -> Result<(), StoreMsg> {
        let Some(tx) = &self.tx else { return Err(msg) };
        match self.mode {
            Backpressure::Block => tx.send(msg).map_err(|e| e.0),
            Backpressure::Drop => tx.try_send(msg).map_err(|e| match e {
                TrySendError::Full(m) | TrySendError::Disconnected(m) => m,
            }),
        }
    }

    fn send_batch(&mut self) {
        if self.batch.is_empty() {
            return;
        }
        let batch: FlowBatch = Arc::new(std::mem::replace(&mut self.batch, Vec::with_capacity(self.batch_flows)));
        let n = batch.len() as u64;
        if let Some(dtx) = &self.detect_tx {
            let msg = DetectMsg::Flows(batch.clone());
            let sent = match self.mode {
                Backpressure::Block => dtx.send(msg).is_ok(),
                Backpressure::Drop => dtx.try_send(msg).is_ok(),
            };
            if !sent {
                self.counters.detect_batches_dropped.fetch_add(1, Ordering::Relaxed);
                self.counters.detect_flows_dropped.fetch_add(n, Ordering::Relaxed);
            }
        }
        if self.send(StoreMsg::Flows(batch)).is_err() {
            self.counters.batches_dropped.fetch_add(1, Ordering::Relaxed);
            self.counters.flows_dropped.fetch_add(n, Ordering::Relaxed);
        }
    }

    /// Hand over the partial batch, template changes and exporter health.
    pub fn flush(&mut self) {
        self.send_batch();
        let changes = self.decoder.template_changes();
        if !changes.is_empty() {
            // State must not be lost to a momentarily full queue: wait for room.
            if let Some(tx) = &self.tx {
                let _ = tx.send(StoreMsg::Templates(changes));
            }
        }
        let snapshot = self.decoder.exporter_snapshot();
        let _ = self.send(StoreMsg::Exporters(snapshot));
    }

    /// Hand named stage counters to the state file (dropped, not waited for, if the queue is full).
    pub fn send_counters(&mut self, mut counters: Vec<(String, u64)>) {
        counters.push((
            "pipeline.flows_dropped_store_queue".into(),
            self.counters.flows_dropped.load(Ordering::Relaxed),
        ));
        counters.push((
            "pipeline.batches_dropped_store_queue".into(),
            self.counters.batches_dropped.load(Ordering::Relaxed),
        ));
        counters.push((
            "pipeline.flows_dropped_detect_queue".into(),
            self.counters.detect_flows_dropped.load(Ordering::Relaxed),
        ));
        let _ = self.send(StoreMsg::Counters(counters));
    }

    /// Flush and wait until the writer has committed everything sent so far.
    pub fn sync(&mut self) {
        self.flush();
        if let Some(dtx) = &self.detect_tx {
            let (reply_tx, reply_rx) = sync_channel(1);
            if dtx.send(DetectMsg::Sync(reply_tx)).is_ok() {
                let _ = reply_rx.recv();
            }
        }
        let (reply_tx, reply_rx) = sync_channel(1);
        if let Some(tx) = &self.tx
            && tx.send(StoreMsg::Sync(reply_tx)).is_ok()
        {
            let _ = reply_rx.recv();
        }
    }

    /// Store counters (live).
    pub fn store_counters(&self) -> &Arc<StoreCounters> {
        &self.store_counters
    }

    /// Flush, stop the writer and report.
    pub fn finish(mut self) -> PipelineReport {
        self.flush();
        // The detector finishes first: its last alerts and state go to the writer.
        drop(self.detect_tx.take());
        if let Some(h) = self.detector.take() {
            let _ = h.join();
        }
        if let Some(tx) = self.tx.take() {
            let _ = tx.send(StoreMsg::Exporters(self.decoder.exporter_snapshot()));
        }
        if let Some(h) = self.writer.take() {
            let _ = h.join();
        }
        let c = &self.store_counters;
        let g = StoreCounters::get;
        PipelineReport {
            decode: self.decoder.totals.clone(),
            flows_committed: g(&c.flows_committed),
            flows_dropped_queue: self.counters.flows_dropped.load(Ordering::Relaxed),
            flows_dropped_store: g(&c.flows_dropped),
            flows_too_old: g(&c.flows_too_old),
            segments_evicted: g(&c.segments_evicted),
            flows_evicted: g(&c.flows_evicted),
            flows_evicted_age: g(&c.flows_evicted_age),
            flows_before: g(&c.flows_at_open),
            flows_kept: g(&c.flows_kept),
            bytes_used: g(&c.bytes_used),
            budget: g(&c.budget),
            capacity: g(&c.capacity),
            segments: g(&c.segments),
            files_damaged: g(&c.files_damaged),
            rollup_failures: g(&c.rollup_failures),
            state_failures: g(&c.state_failures),
            rollup_rows_trimmed: g(&c.rollup_rows_trimmed),
            commit_failures: g(&c.commit_failures),
            block_bytes: g(&c.block_bytes),
            templates: self.decoder.template_count(),
            exporters_evicted: self.decoder.exporters_evicted(),
            flows_dropped_detect_queue: self.counters.detect_flows_dropped.load(Ordering::Relaxed),
        }
    }
}

/// How often the detectors' learning state is published while flows arrive.
const STATUS_EVERY: std::time::Duration = std::time::Duration::from_secs(10);

/// Updates without alerts or state still carry counters every this many batches.
const COUNTERS_EVERY: u64 = 32;

/// Nice value of the detector thread: on a saturated machine receiving and
/// storing flows win the CPU, and the detector queue drops (counted) instead of
/// the socket buffers. Offline ingest blocks on the queue, so it loses nothing.
const DETECTOR_NICE: i32 = 19;

/// The detector thread: batches in, alerts and state out to the writer.
fn run_detector(mut engine: Engine, rx: std::sync::mpsc::Receiver<DetectMsg>, wtx: SyncSender<StoreMsg>) {
    // On Linux PRIO_PROCESS with a thread id sets that thread's nice value only.
    if let Err(e) = rustix::process::setpriority_process(Some(rustix::thread::gettid()), DETECTOR_NICE) {
        tracing::debug!("cannot lower the detector thread's priority: {e}");
    }
    let mut batches = 0u64;
    // The learning state is published at the first batch and then every STATUS_EVERY.
    let mut last_status: Option<std::time::Instant> = None;
    while let Ok(msg) = rx.recv() {
        match msg {
            DetectMsg::Flows(b) => {
                engine.process(&b);
                batches += 1;
                if last_status.is_none_or(|t| t.elapsed() >= STATUS_EVERY) {
                    engine.publish_status();
                    last_status = Some(std::time::Instant::now());
                }
                let u = engine.take_update();
                if (!u.is_empty() || batches.is_multiple_of(COUNTERS_EVERY)) && wtx.send(StoreMsg::Detect(u)).is_err() {
                    tracing::error!("store writer gone: detector stops");
                    return;
                }
            }
            DetectMsg::Sync(reply) => {
                let _ = wtx.send(StoreMsg::Detect(engine.take_update()));
                let _ = reply.send(());
            }
        }
    }
    engine.finish();
    let _ = wtx.send(StoreMsg::Detect(engine.take_update()));
}
