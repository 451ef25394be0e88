//! The topology: the one module that builds the threads and channels of the
//! data flow and hands out the shared handles; the stages know none of each
//! other.
//!
//! [`Pipeline::open`] opens the store (its writer thread), reads back what the
//! decoder and the detectors persisted, starts the detector thread, and joins
//! detection to forwarding: the detector's alert rows hand their alerts to the
//! forwarding outbox inside the same state transaction. Datagrams go into a
//! [`Decoder`]; flows are grouped into [`FlowBatch`]es and handed (as the same
//! `Arc`) to the writer and to the detection engine over bounded channels.
//! Live collection never waits on either: a full channel drops the batch and
//! counts it. Offline ingest blocks instead, so a replay loses nothing.
//! [`run_live`] wires the collector's sockets, the decoder thread and the SIEM
//! senders around a pipeline for `flowwarden run`.

use crate::collector::{self, SocketCounters};
use crate::config::Config;
use crate::decode::rows::DecoderRows;
use crate::decode::{DecodeError, DecodeTotals, Decoder};
use crate::detect::Engine;
use crate::detect::rows::DetectRows;
use crate::flow::{FlowBatch, FlowRecord};
use crate::forward::spool::Outbox;
use crate::metrics::{Registry, defs};
use crate::store::reader::Reader;
use crate::store::rows::StateRows;
use crate::store::writer::{StoreMsg, StoreWriter, WriterSettings, run_writer};
use crate::store::{DataDir, StoreCounters, StoreError, resolve_budget};
use std::future::Future;
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{RecvTimeoutError, SyncSender, TrySendError, sync_channel};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use thiserror::Error;

#[derive(Debug, Error)]
pub enum PipelineError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Decode(#[from] DecodeError),
    #[error(transparent)]
    Collector(#[from] crate::collector::CollectorError),
    #[error("cannot start a thread: {0}")]
    Thread(std::io::Error),
    #[error("control socket: {0}")]
    Control(#[from] crate::control::ControlError),
    #[error("{0}")]
    Web(#[from] crate::web::WebError),
}

/// Datagrams queued between the sockets and the decoder.
const DATAGRAM_QUEUE: usize = 65_536;
/// How often partial batches and exporter health go to the store.
const FLUSH_EVERY: Duration = Duration::from_millis(500);
/// How often kernel drop counters are read.
const KERNEL_STATS_EVERY: Duration = Duration::from_secs(5);

/// When a full store queue is met.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backpressure {
    /// Wait for room (offline ingest).
    Block,
    /// Drop the batch and count it (live collection).
    Drop,
}

/// What outlives one generation of the stages (a configuration reload keeps
/// them): the metrics registry and the forwarding outbox the page's audit
/// events wait in.
#[derive(Clone)]
pub struct Lasting {
    pub metrics: Arc<Registry>,
    pub outbox: Outbox,
}

impl Lasting {
    pub fn new() -> Lasting {
        Lasting {
            metrics: Registry::new(),
            outbox: Outbox::default(),
        }
    }
}

impl Default for Lasting {
    fn default() -> Self {
        Lasting::new()
    }
}

impl PipelineReport {
    /// Add another generation's flow counts (a reload ended it).
    fn add(&mut self, other: &PipelineReport) {
        self.flows_committed += other.flows_committed;
        self.flows_evicted += other.flows_evicted;
        self.flows_dropped_queue += other.flows_dropped_queue;
        self.flows_dropped_store += other.flows_dropped_store;
    }
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
    detector: Option<JoinHandle<Option<Engine>>>,
    /// Tells the detector thread to hand its engine back instead of finishing it.
    detect_handoff: Arc<std::sync::atomic::AtomicBool>,
    store_counters: Arc<StoreCounters>,
    batch: Vec<FlowRecord>,
    batch_flows: usize,
    mode: Backpressure,
    pub counters: Arc<PipelineCounters>,
    /// Where forwarding senders report confirmations and state to the writer.
    pub forward: Arc<crate::forward::spool::ForwardShared>,
    /// The process's metrics (every stage publishes here; the writer snapshots them).
    pub metrics: Arc<Registry>,
    /// What goes into the forwarding spools with the next state commit (alerts, the page's audit events).
    pub outbox: Outbox,
}

impl Pipeline {
    /// Open the data directory and start the writer thread.
    pub fn open(cfg: &Config, data_dir: &Path, mode: Backpressure) -> Result<Pipeline, PipelineError> {
        Pipeline::open_with(cfg, data_dir, mode, Lasting::new(), Carried::default())
    }

    /// [`Pipeline::open`] publishing into handles that outlive it, and going on
    /// with the decoder and detection engine of the generation before (a
    /// reload: they take the new settings and keep their state).
    pub fn open_with(
        cfg: &Config,
        data_dir: &Path,
        mode: Backpressure,
        lasting: Lasting,
        carried: Carried,
    ) -> Result<Pipeline, PipelineError> {
        std::fs::create_dir_all(data_dir).map_err(|e| StoreError::Io {
            path: data_dir.to_path_buf(),
            source: e,
        })?;
        let budget = resolve_budget(cfg.storage.budget, data_dir)?;
        let mut settings = WriterSettings::from_config(&cfg.storage, budget);
        if mode == Backpressure::Block {
            settings.commit_max_flows = 262_144;
            // Offline ingest commits by count, not by the clock: a replay leaves the
            // same files whatever the machine's load. (Measured: under load the 1 s
            // timer made many small commits whose transient growth of the state and
            // roll-up files evicted hours that fitted: 175 of 230 kept.)
            settings.commit_interval = Duration::from_secs(3600);
        }
        let dir = DataDir::new(data_dir);
        let Lasting { metrics, outbox } = lasting;
        let mut writer = StoreWriter::open(dir.clone(), settings, metrics.clone())?;
        // What the stages persisted, read back beside the writer.
        let reader = Reader::new(dir.clone());
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
        let book = crate::forward::spool::SpoolBook::load(&dir.state(), dests, forward.clone(), outbox.clone(), metrics.clone())?;
        writer.add_participant(Box::new(book));
        let store_counters = writer.counters.clone();
        let decoder = match carried.decoder {
            Some(mut d) => {
                d.reconfigure(&cfg.decoder_settings());
                d
            }
            None => Decoder::new(
                &cfg.decoder_settings(),
                crate::decode::rows::load_templates(&reader)?,
                crate::decode::rows::load_exporters(&reader)?,
            )?,
        };
        let (tx, rx) = sync_channel(cfg.collector.queue_batches);
        let handle = std::thread::Builder::new()
            .name("store-writer".into())
            .spawn(move || run_writer(writer, rx))
            .map_err(PipelineError::Thread)?;
        let spool_outbox = outbox.clone();
        let detect_handoff = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (detect_tx, detector) = if cfg.detect.enabled {
            let mut engine = match carried.engine {
                Some(mut e) => {
                    e.reconfigure(cfg.detect.clone(), cfg.network.internal.clone());
                    e
                }
                None => Engine::new(
                    cfg.detect.clone(),
                    cfg.network.internal.clone(),
                    crate::detect::rows::load(&reader)?,
                ),
            };
            engine.set_names(cfg.network.names.clone());
            let (dtx, drx) = sync_channel(cfg.collector.queue_batches);
            let wtx = tx.clone();
            let m = metrics.clone();
            let handoff = detect_handoff.clone();
            let h = std::thread::Builder::new()
                .name("detect".into())
                .spawn(move || run_detector(engine, drx, wtx, outbox, m, handoff))
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
            detect_handoff,
            store_counters,
            batch: Vec::with_capacity(cfg.collector.batch_flows),
            batch_flows: cfg.collector.batch_flows,
            mode,
            counters: Arc::new(PipelineCounters::default()),
            forward,
            metrics,
            outbox: spool_outbox,
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
        let templates = self.decoder.template_changes();
        if !templates.is_empty() {
            // Templates must not be lost to a momentarily full queue: wait for room.
            if let Some(tx) = &self.tx {
                let _ = tx.send(StoreMsg::Rows(Box::new(DecoderRows {
                    templates,
                    exporters: None,
                })));
            }
        }
        let snapshot = self.decoder.exporter_snapshot();
        crate::decode::publish_metrics(&self.metrics, &self.decoder, &snapshot);
        self.publish_metrics();
        let _ = self.send(StoreMsg::Rows(Box::new(DecoderRows {
            templates: Vec::new(),
            exporters: Some(snapshot),
        })));
    }

    /// The pipeline's own drops into the metrics registry.
    fn publish_metrics(&self) {
        let c = &self.counters;
        for (queue, v) in [
            ("store", c.flows_dropped.load(Ordering::Relaxed)),
            ("detect", c.detect_flows_dropped.load(Ordering::Relaxed)),
        ] {
            self.metrics.counter(&defs::PIPELINE_DROPPED_FLOWS, &[queue]).set_at_least(v);
        }
    }

    /// The collector sockets' counters into the metrics registry.
    pub fn publish_socket_metrics(&self, c: &SocketCounters) {
        let m = &self.metrics;
        m.counter(&defs::COLLECTOR_DATAGRAMS, &[])
            .set_at_least(c.datagrams.load(Ordering::Relaxed));
        m.counter(&defs::COLLECTOR_DROPPED, &["decoder_queue"])
            .set_at_least(c.queue_drops.load(Ordering::Relaxed));
        m.counter(&defs::COLLECTOR_DROPPED, &["kernel"])
            .set_at_least(c.kernel_drops.load(Ordering::Relaxed));
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
        self.stop(false).0
    }

    /// Stop this generation for a reload: everything is written as by
    /// [`Pipeline::finish`], but the decoder (templates, data waiting for
    /// them, exporter health) and, with `keep_engine`, the detection engine
    /// (sessions, windows, open alerts) are handed back unfinished, for
    /// [`Pipeline::open_with`] to go on with.
    pub fn hand_over(mut self, keep_engine: bool) -> (PipelineReport, Carried) {
        let (report, engine) = self.stop(keep_engine);
        let Pipeline { decoder, .. } = self;
        (
            report,
            Carried {
                decoder: Some(decoder),
                engine,
            },
        )
    }

    fn stop(&mut self, keep_engine: bool) -> (PipelineReport, Option<Engine>) {
        self.flush();
        // The detector finishes first: its last alerts and state go to the writer.
        self.detect_handoff.store(keep_engine, Ordering::Relaxed);
        drop(self.detect_tx.take());
        let engine = self.detector.take().and_then(|h| h.join().ok().flatten());
        if let Some(tx) = self.tx.take() {
            let _ = tx.send(StoreMsg::Rows(Box::new(DecoderRows {
                templates: self.decoder.template_changes(),
                exporters: Some(self.decoder.exporter_snapshot()),
            })));
        }
        if let Some(h) = self.writer.take() {
            let _ = h.join();
        }
        let c = &self.store_counters;
        let g = StoreCounters::get;
        let report = PipelineReport {
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
        };
        (report, engine)
    }
}

/// What a stopped generation hands to the next (see [`Pipeline::hand_over`]):
/// the decoder and the detection engine.
#[derive(Default)]
pub struct Carried {
    pub decoder: Option<Decoder>,
    pub engine: Option<Engine>,
}

/// How `run` reads its configuration again for a reload: the file it was
/// started with (or the data directory's `flowwarden.toml`), validated exactly
/// like `check-config`, with the command line's overrides applied.
pub type Reloader = Box<dyn Fn() -> Result<Config, String> + Send + Sync>;

/// A reload asked for; the control channel waits for what happened.
type ReloadAsk = Option<SyncSender<Result<String, String>>>;

/// The store writer's sender for the control channel: swapped at each reload,
/// None while the stages restart (requests then wait a moment).
type WriterSlot = Arc<std::sync::Mutex<Option<SyncSender<StoreMsg>>>>;

/// Metrics whose sources start again at zero in a new generation (the store
/// writer and the pipeline's own queues; the decoder, the detection engine,
/// the sockets and the spools carry on).
fn restarts_with_generation(name: &str) -> bool {
    name.starts_with("flowwarden_store_") || name == defs::PIPELINE_DROPPED_FLOWS.name
}

type DatagramRx = std::sync::mpsc::Receiver<collector::Datagram>;

/// One generation of the stages behind the collector's sockets: the pipeline
/// (writer, detector) owned by the decoder thread, and the SIEM senders.
struct Generation {
    decoder: JoinHandle<(DatagramRx, PipelineReport, Carried)>,
    /// Set: the decoder thread stops and hands its pipeline over (a reload).
    hand_over: Arc<std::sync::atomic::AtomicU8>,
    senders: Vec<tokio::task::JoinHandle<()>>,
    senders_stop: tokio::sync::watch::Sender<bool>,
}

/// `hand_over` values.
const RUNNING: u8 = 0;
const HAND_OVER_KEEP_ENGINE: u8 = 1;
const HAND_OVER_FINISH_ENGINE: u8 = 2;

struct GenerationParts<'a> {
    cfg: &'a Config,
    data_dir: &'a Path,
    rx: DatagramRx,
    counters: Arc<SocketCounters>,
    inodes: Vec<u64>,
    slot: &'a WriterSlot,
}

fn start_generation(pipeline: Pipeline, p: GenerationParts<'_>) -> Result<Generation, PipelineError> {
    *p.slot.lock().unwrap_or_else(|e| e.into_inner()) = pipeline.tx.clone();
    let (senders_stop, stop_rx) = tokio::sync::watch::channel(false);
    let senders = crate::forward::spawn_all(
        &p.cfg.forward,
        &crate::store::DataDir::new(p.data_dir),
        pipeline.forward.clone(),
        pipeline.metrics.clone(),
        stop_rx,
    );
    let hand_over = Arc::new(std::sync::atomic::AtomicU8::new(RUNNING));
    let flag = hand_over.clone();
    let GenerationParts { rx, counters, inodes, .. } = p;
    let mut pipeline = pipeline;
    let decoder = std::thread::Builder::new()
        .name("decoder".into())
        .spawn(move || {
            let mut last_flush = Instant::now();
            let mut last_kernel = Instant::now();
            let mut reported_drops = counters.kernel_drops.load(Ordering::Relaxed);
            let stage = crate::progress::global().stage("decoder");
            loop {
                let mode = flag.load(Ordering::Relaxed);
                if mode != RUNNING {
                    // A reload: what is still queued waits for the next generation.
                    pipeline.publish_socket_metrics(&counters);
                    let (report, carried) = pipeline.hand_over(mode == HAND_OVER_KEEP_ENGINE);
                    return (rx, report, carried);
                }
                let got = rx.recv_timeout(Duration::from_millis(100));
                // Waiting is idle; from here to the next wait is one unit of work.
                let _unit = stage.busy();
                match got {
                    Ok((src, arrival, data)) => pipeline.datagram(src, arrival, &data),
                    Err(RecvTimeoutError::Timeout) => {}
                    Err(RecvTimeoutError::Disconnected) => break,
                }
                if last_flush.elapsed() >= FLUSH_EVERY {
                    pipeline.publish_socket_metrics(&counters);
                    pipeline.flush();
                    last_flush = Instant::now();
                }
                if last_kernel.elapsed() >= KERNEL_STATS_EVERY {
                    let drops = collector::kernel_drops(&inodes);
                    counters.kernel_drops.store(drops, Ordering::Relaxed);
                    if drops > reported_drops {
                        tracing::warn!(
                            "kernel dropped {} datagrams in socket buffers (total {drops})",
                            drops - reported_drops
                        );
                        reported_drops = drops;
                    }
                    last_kernel = Instant::now();
                }
            }
            counters.kernel_drops.store(collector::kernel_drops(&inodes), Ordering::Relaxed);
            pipeline.publish_socket_metrics(&counters);
            let report = pipeline.finish();
            (rx, report, Carried::default())
        })
        .map_err(PipelineError::Thread)?;
    Ok(Generation {
        decoder,
        hand_over,
        senders,
        senders_stop,
    })
}

impl Generation {
    /// Stop the senders (their last state reaches the writer's final commit),
    /// then the decoder thread, which writes everything and hands over (a
    /// reload, `hand_over` set) or finishes (the sockets closed).
    async fn stop(self, hand_over: u8, slot: &WriterSlot) -> (std::sync::mpsc::Receiver<collector::Datagram>, PipelineReport, Carried) {
        let _ = self.senders_stop.send(true);
        for s in self.senders {
            let _ = tokio::time::timeout(Duration::from_secs(5), s).await;
        }
        // The control channel's sender goes first, or the writer never ends.
        slot.lock().unwrap_or_else(|e| e.into_inner()).take();
        self.hand_over.store(hand_over, Ordering::Relaxed);
        tokio::task::spawn_blocking(move || self.decoder.join())
            .await
            .ok()
            .and_then(|r| r.ok())
            .unwrap_or_else(|| {
                tracing::error!("the decoder thread failed");
                let (_, rx) = sync_channel(1);
                (rx, PipelineReport::default(), Carried::default())
            })
    }
}

/// The page's settings check a candidate file exactly as `check-config` does
/// (and as the reload will), and read back what its forms show.
fn check_for_page(text: &str, path: &Path) -> Result<crate::web::config_edit::SiteView, String> {
    let cfg = Config::parse(text, path).map_err(|e| e.to_string())?;
    Ok(crate::web::config_edit::SiteView {
        summary: crate::config::summary(&cfg),
        warnings: cfg.warnings(),
        internal: cfg.network.internal.clone(),
        names: cfg.network.names.clone(),
        exporters: cfg.exporters.clone(),
        allow: cfg.detect.allow.clone(),
        forward: cfg.forward.clone(),
        management: cfg.management.clone(),
    })
}

/// A reload changed `[management]`: PID 1 applies it (on the image), else say
/// that nothing here uses it.
async fn management_changed() -> String {
    if !crate::management::under_init() {
        return "the [management] settings are used by the appliance image only".into();
    }
    match tokio::task::spawn_blocking(|| crate::management::ask_init("network apply")).await {
        Ok(Ok(said)) => said,
        Ok(Err(e)) => format!("management network NOT changed: {e}"),
        Err(e) => format!("management network NOT changed: {e}"),
    }
}

/// What changed between two configurations that a reload cannot apply (the
/// sockets, the page and the decoder's table sizes stay until the next start).
fn needs_restart(old: &Config, new: &Config) -> Vec<&'static str> {
    let (a, b) = (&old.collector, &new.collector);
    [
        (a.listen != b.listen, "collector.listen"),
        (a.receive_buffer != b.receive_buffer, "collector.receive_buffer"),
        (a.max_exporters != b.max_exporters, "collector.max_exporters"),
        (a.pending_per_exporter != b.pending_per_exporter, "collector.pending_per_exporter"),
        (a.pending_ttl != b.pending_ttl, "collector.pending_ttl"),
        (old.web != new.web, "[web]"),
        (old.data_dir != new.data_dir, "data_dir"),
    ]
    .into_iter()
    .filter_map(|(changed, key)| changed.then_some(key))
    .collect()
}

/// `flowwarden run`: the pipeline behind the collector's sockets, the decoder
/// thread between them, and the SIEM senders, until `shutdown` resolves;
/// returns what was stored. `on_ready` gets the bound addresses once the
/// sockets listen (the demo sends there). SIGHUP, `flowwarden reload` and the
/// page's settings reload the configuration through `reload`: the stages
/// behind the sockets restart with the new settings (the decoder and the
/// detection engine keep their state) while the sockets, the page and the
/// control channel stay; datagrams wait in the queue meanwhile.
pub async fn run_live(
    cfg: Config,
    data_dir: PathBuf,
    listen: Vec<SocketAddr>,
    reload: Reloader,
    shutdown: impl Future<Output = ()>,
    on_ready: impl FnOnce(&[SocketAddr]),
) -> Result<PipelineReport, PipelineError> {
    let lasting = Lasting::new();
    // The data directory first: a second appliance on it is named before any socket is taken.
    let pipeline = Pipeline::open_with(&cfg, &data_dir, Backpressure::Drop, lasting.clone(), Carried::default())?;
    let rcvbuf = cfg.collector.receive_buffer.resolve(0).max(4096) as usize;
    let explicit = !listen.is_empty();
    let addrs = if explicit { listen } else { cfg.collector.listen.clone() };
    let bound = collector::bind_all(&addrs, explicit, rcvbuf)?;
    let counters = Arc::new(SocketCounters::default());
    let inodes: Vec<u64> = bound.iter().map(|b| b.inode).collect();
    let (tx, rx) = sync_channel::<collector::Datagram>(DATAGRAM_QUEUE);
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    // The control channel (accounts, acknowledgements, reloads) commits through the writer of the day.
    let slot: WriterSlot = Arc::new(std::sync::Mutex::new(None));
    let (reload_tx, mut reload_rx) = tokio::sync::mpsc::channel::<ReloadAsk>(4);
    let control = crate::control::bind(&data_dir)?;
    let handler = control_handler(slot.clone(), crate::store::DataDir::new(&data_dir), reload_tx.clone());
    let control_task = tokio::spawn(crate::control::serve(control, data_dir.clone(), handler.clone(), stop_rx.clone()));
    let mut generation = start_generation(
        pipeline,
        GenerationParts {
            cfg: &cfg,
            data_dir: &data_dir,
            rx,
            counters: counters.clone(),
            inodes: inodes.clone(),
            slot: &slot,
        },
    )?;
    let addrs: Vec<SocketAddr> = bound.iter().map(|b| b.addr).collect();
    let (tasks, summary) = collector::spawn_receivers(bound, tx, counters.clone(), stop_rx.clone())?;
    // The page: its listener lines (and the setup code) come before the ready line.
    let web = crate::web::start(
        &cfg.web,
        crate::web::Appliance {
            data_dir: data_dir.clone(),
            metrics: lasting.metrics.clone(),
            control: Some(handler),
            clock: Arc::new(crate::timefmt::now_ms),
            collector: addrs.clone(),
            forward: cfg.forward.clone(),
            audit_outbox: Some(lasting.outbox.clone()),
            host_status_dir: Some(PathBuf::from("/run/flowwarden")),
            names: cfg.network.names.clone(),
            settings: cfg.web.config_file.clone().map(|file| crate::web::config_edit::SettingsAccess {
                file,
                check: Arc::new(check_for_page),
            }),
        },
        rustix::process::geteuid().is_root(),
        stop_rx.clone(),
    )
    .await?;
    let hup_task = tokio::spawn(reload_on_sighup(reload_tx, stop_rx.clone()));
    let progress_task = tokio::spawn(report_progress(stop_rx.clone()));
    let ready = format!("flowwarden: ready, listening on udp {}", summary.join(", "));
    // A closed stdout (the reader of `run | head` gone) must not stop the appliance.
    let _ = writeln!(std::io::stdout(), "{ready}");
    tracing::info!("{ready}");
    if crate::management::under_init() {
        // PID 1's health check for a slot on trial (crate::init::slots).
        let _ = std::fs::write(crate::update::READY_FILE, format!("{}\n", std::process::id()));
    }
    on_ready(&addrs);
    tokio::pin!(shutdown);
    let mut cfg = cfg;
    // What the generations before the last one stored and lost.
    let mut earlier = PipelineReport::default();
    loop {
        let ask = tokio::select! {
            _ = &mut shutdown => break,
            a = reload_rx.recv() => a,
        };
        let Some(reply) = ask else { break };
        let outcome = match reload() {
            Err(e) => Err(e),
            Ok(new) => {
                let (rx, done, carried) = generation
                    .stop(
                        if new.detect.enabled {
                            HAND_OVER_KEEP_ENGINE
                        } else {
                            HAND_OVER_FINISH_ENGINE
                        },
                        &slot,
                    )
                    .await;
                lasting.metrics.rebase(restarts_with_generation);
                earlier.add(&done);
                let parts = |cfg| GenerationParts {
                    cfg,
                    data_dir: &data_dir,
                    rx,
                    counters: counters.clone(),
                    inodes: inodes.clone(),
                    slot: &slot,
                };
                match Pipeline::open_with(&new, &data_dir, Backpressure::Drop, lasting.clone(), carried) {
                    Ok(p) => {
                        generation = start_generation(p, parts(&new))?;
                        let later = needs_restart(&cfg, &new);
                        web.state.reconfigure(new.forward.clone(), new.network.names.clone());
                        let network = (cfg.management != new.management).then(management_changed);
                        cfg = new;
                        let mut said = if later.is_empty() {
                            "configuration reloaded".to_string()
                        } else {
                            format!(
                                "configuration reloaded; {} changed and take effect when the appliance restarts",
                                later.join(", ")
                            )
                        };
                        if let Some(network) = network {
                            said.push_str("; ");
                            said.push_str(&network.await);
                        }
                        Ok(said)
                    }
                    Err(e) => {
                        // The old settings again (their stages start afresh from the state file).
                        tracing::error!("reload: {e}; going on with the previous configuration");
                        let p = Pipeline::open_with(&cfg, &data_dir, Backpressure::Drop, lasting.clone(), Carried::default())?;
                        generation = start_generation(p, parts(&cfg))?;
                        Err(format!("{e}; the previous configuration stays"))
                    }
                }
            }
        };
        let line = match &outcome {
            Ok(m) => format!("flowwarden: {m}"),
            Err(e) => format!("flowwarden: reload refused: {e}"),
        };
        let _ = writeln!(std::io::stdout(), "{line}");
        if outcome.is_ok() {
            tracing::info!("{line}");
        } else {
            tracing::warn!("{line}");
        }
        if let Some(r) = reply {
            let _ = r.try_send(outcome);
        }
    }
    tracing::info!("shutting down: draining received datagrams");
    let _ = stop_tx.send(true);
    for t in tasks {
        let _ = t.await;
    }
    let _ = hup_task.await;
    let _ = progress_task.await;
    // The control server (and the page, through its handler) reach the writer:
    // they end before it may.
    let _ = control_task.await;
    for t in web.tasks {
        let _ = tokio::time::timeout(Duration::from_secs(5), t).await;
    }
    // The sockets are closed: the decoder drains the queue and finishes.
    let (_, mut report, _) = generation.stop(RUNNING, &slot).await;
    report.add(&earlier);
    let losses: Vec<String> = [
        (counters.queue_drops.load(Ordering::Relaxed), "datagrams in the decoder queue"),
        (
            counters.kernel_drops.load(Ordering::Relaxed),
            "datagrams in the kernel's socket buffers",
        ),
        (report.flows_dropped_queue, "flows in the store queue"),
        (report.flows_dropped_store, "flows the store could not write"),
    ]
    .iter()
    .filter(|(n, _)| *n > 0)
    .map(|(n, what)| format!("{n} {what}"))
    .collect();
    let stopped = format!(
        "flowwarden: stopped: {} datagrams; {} flows stored; {} flows evicted (oldest, budget); {} flows kept; lost: {}",
        counters.datagrams.load(Ordering::Relaxed),
        report.flows_committed,
        report.flows_evicted,
        report.flows_kept,
        if losses.is_empty() {
            "nothing".to_string()
        } else {
            losses.join(", ")
        }
    );
    let _ = writeln!(std::io::stdout(), "{stopped}");
    tracing::info!("{stopped}");
    Ok(report)
}

/// How often the detectors' learning state is published while flows arrive.
const STATUS_EVERY: std::time::Duration = std::time::Duration::from_secs(10);

/// Updates without alerts or state still carry counters every this many batches.
const COUNTERS_EVERY: u64 = 32;

/// Nice value of the detector thread: on a saturated machine receiving and
/// storing flows win the CPU, and the detector queue drops (counted) instead of
/// the socket buffers. Offline ingest blocks on the queue, so it loses nothing.
const DETECTOR_NICE: i32 = 19;

/// Hand `rows` (whose `committed()` tells `done`) to the store writer, force a
/// commit, and wait: Ok once the transaction holding them committed.
fn commit_through_writer(slot: &WriterSlot, rows: Box<dyn StateRows + Send>, done: std::sync::mpsc::Receiver<()>) -> Result<(), String> {
    // While a reload restarts the stages there is no writer for a moment.
    let mut tx = None;
    for _ in 0..100 {
        tx = slot.lock().unwrap_or_else(|e| e.into_inner()).clone();
        if tx.is_some() {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let Some(tx) = tx else {
        return Err("the appliance is restarting its stages (a reload); nothing changed, try again".into());
    };
    let (reply_tx, reply_rx) = sync_channel(1);
    if tx.send(StoreMsg::Rows(rows)).is_err() || tx.send(StoreMsg::Sync(reply_tx)).is_err() || reply_rx.recv().is_err() {
        return Err("the store writer has stopped; nothing changed".into());
    }
    if done.try_recv().is_err() {
        // The rows stay queued and are written by the next commit that succeeds.
        return Err(
            "the state file could not be written now (see the appliance's log); the change is queued and \
                    takes effect when a state commit succeeds"
                .into(),
        );
    }
    Ok(())
}

/// What the control channel's requests do in a running appliance: account
/// changes are checked against the state file, committed by the store writer
/// (the reply waits for the commit) and logged; so are alert acknowledgements.
fn control_handler(tx: WriterSlot, dir: crate::store::DataDir, reload: tokio::sync::mpsc::Sender<ReloadAsk>) -> crate::control::Handler {
    use crate::accounts::{AccountChange, AccountRows};
    use crate::control::{Reply, Request};
    Arc::new(move |req: Request| match req {
        Request::Accounts(change) => {
            if let Err(e) = crate::accounts::validate(&change, &crate::store::reader::Reader::new(dir.clone())) {
                return Reply::Refused(e.to_string());
            }
            let what = match &change {
                AccountChange::SetUser { name, user } => format!("user {name} set ({})", user.role.as_str()),
                AccountChange::RemoveUser { name } => format!("user {name} removed"),
                AccountChange::SetToken { name, token } => format!("token {name} created ({})", token.role.as_str()),
                AccountChange::RemoveToken { name } => format!("token {name} removed"),
            };
            let (done_tx, done_rx) = sync_channel(1);
            let rows = AccountRows {
                changes: vec![change],
                notify: Some(done_tx),
            };
            match commit_through_writer(&tx, Box::new(rows), done_rx) {
                Ok(()) => {
                    tracing::info!("accounts: {what} (control channel)");
                    Reply::Done
                }
                Err(e) => Reply::Refused(e),
            }
        }
        Request::AckAlert { id, by, at_ms } => {
            let (done_tx, done_rx) = sync_channel(1);
            let rows = crate::detect::rows::AckRows {
                acks: vec![(id.clone(), crate::detect::rows::Ack { by: by.clone(), at_ms })],
                notify: Some(done_tx),
            };
            match commit_through_writer(&tx, Box::new(rows), done_rx) {
                Ok(()) => {
                    tracing::info!("alert {id} acknowledged by {by}");
                    Reply::Done
                }
                Err(e) => Reply::Refused(e),
            }
        }
        Request::FreezeStage { stage } => match crate::progress::global().freeze(&stage) {
            Ok(hit) => {
                tracing::warn!("watchdog-test: stage(s) {} will hang in their next unit of work", hit.join(", "));
                Reply::Done
            }
            Err(there) => Reply::Refused(format!("no stage named {stage:?}; running: {}", there.join(", "))),
        },
        Request::Reload => {
            let (reply_tx, reply_rx) = sync_channel(1);
            if reload.blocking_send(Some(reply_tx)).is_err() {
                return Reply::Refused("the appliance is stopping".into());
            }
            match reply_rx.recv_timeout(RELOAD_WAIT) {
                Ok(Ok(m)) => Reply::Reloaded(m),
                Ok(Err(e)) => Reply::Refused(e),
                Err(_) => Reply::Refused("the reload did not finish in time (see the appliance's log)".into()),
            }
        }
    })
}

/// How long `flowwarden reload` waits for the stages to restart.
const RELOAD_WAIT: Duration = Duration::from_secs(120);

/// The watchdog's side in the appliance (crate::progress): every few seconds,
/// tell PID 1 that every stage makes progress (on the image), and log a stage
/// that hangs once when it starts and once when it recovers.
async fn report_progress(mut stop: tokio::sync::watch::Receiver<bool>) {
    let on_image = crate::management::under_init();
    let p = crate::progress::global();
    let mut stalled: Option<crate::progress::Stalled> = None;
    loop {
        let now = if on_image {
            crate::progress::report(p, Path::new(crate::progress::ALIVE_FILE), Path::new(crate::progress::STALL_FILE))
        } else {
            p.check().err()
        };
        match (&stalled, &now) {
            (None, Some(s)) => tracing::error!(
                "watchdog: {s}{}",
                if on_image {
                    "; PID 1 stops petting the watchdog and the box resets unless it recovers"
                } else {
                    ""
                }
            ),
            (Some(s), None) => tracing::warn!("watchdog: stage {} makes progress again", s.stage),
            _ => {}
        }
        stalled = now;
        tokio::select! {
            _ = tokio::time::sleep(crate::progress::REPORT_EVERY) => {}
            _ = stop.changed() => break,
        }
    }
    if on_image {
        let _ = std::fs::remove_file(crate::progress::ALIVE_FILE);
    }
}

/// SIGHUP asks for a reload (as daemons do), until the appliance stops.
async fn reload_on_sighup(reload: tokio::sync::mpsc::Sender<ReloadAsk>, mut stop: tokio::sync::watch::Receiver<bool>) {
    let Ok(mut hup) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) else {
        tracing::warn!("cannot install the SIGHUP handler: reload through `flowwarden reload` only");
        return;
    };
    loop {
        tokio::select! {
            _ = hup.recv() => {
                tracing::info!("SIGHUP received: reloading the configuration");
                if reload.send(None).await.is_err() {
                    return;
                }
            }
            _ = stop.changed() => return,
        }
    }
}

/// Detection's rows joined to forwarding: the alerts are stored and handed to
/// the outbox in the same state transaction.
struct AlertRows {
    rows: DetectRows,
    outbox: Outbox,
}

impl StateRows for AlertRows {
    fn stage(&mut self, txn: &redb::WriteTransaction) -> Result<(), redb::Error> {
        self.rows.stage(txn)?;
        let alerts: Vec<crate::alert::Alert> = self.rows.alerts.iter().map(|a| a.alert.clone()).collect();
        self.outbox.push(&alerts);
        Ok(())
    }

    fn committed(&mut self) {
        self.rows.committed();
    }
}

/// The detector thread: batches in, alerts and state out to the writer.
fn run_detector(
    mut engine: Engine,
    rx: std::sync::mpsc::Receiver<DetectMsg>,
    wtx: SyncSender<StoreMsg>,
    outbox: Outbox,
    metrics: Arc<Registry>,
    handoff: Arc<std::sync::atomic::AtomicBool>,
) -> Option<Engine> {
    let evicted = metrics.counter(&defs::DETECT_EVICTED, &["alerts"]);
    let rows = |engine: &mut Engine| -> StoreMsg {
        engine.publish_metrics(&metrics);
        let u = engine.take_update();
        StoreMsg::Rows(Box::new(AlertRows {
            rows: DetectRows::new(u.alerts, u.state, evicted.clone()),
            outbox: outbox.clone(),
        }))
    };
    // On Linux PRIO_PROCESS with a thread id sets that thread's nice value only.
    if let Err(e) = rustix::process::setpriority_process(Some(rustix::thread::gettid()), DETECTOR_NICE) {
        tracing::debug!("cannot lower the detector thread's priority: {e}");
    }
    let mut batches = 0u64;
    // The learning state is published at the first batch and then every STATUS_EVERY.
    let mut last_status: Option<std::time::Instant> = None;
    let stage = crate::progress::global().stage("detector");
    while let Ok(msg) = rx.recv() {
        let _unit = stage.busy();
        match msg {
            DetectMsg::Flows(b) => {
                engine.process(&b);
                batches += 1;
                if last_status.is_none_or(|t| t.elapsed() >= STATUS_EVERY) {
                    engine.publish_status();
                    last_status = Some(std::time::Instant::now());
                }
                if (engine.has_update() || batches.is_multiple_of(COUNTERS_EVERY)) && wtx.send(rows(&mut engine)).is_err() {
                    tracing::error!("store writer gone: detector stops");
                    return None;
                }
            }
            DetectMsg::Sync(reply) => {
                let _ = wtx.send(rows(&mut engine));
                let _ = reply.send(());
            }
        }
    }
    // A reload goes on with this engine: what it holds is not final.
    if handoff.load(Ordering::Relaxed) {
        let _ = wtx.send(rows(&mut engine));
        return Some(engine);
    }
    engine.finish();
    let _ = wtx.send(rows(&mut engine));
    None
}
