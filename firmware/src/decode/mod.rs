//! Ingest stage: export datagrams in, normalized [`FlowRecord`]s out.
//!
//! One [`Decoder`] walks each datagram once with the checked readers of
//! [`wire`]: v5/v7 records straight into the record builder; v9 and IPFIX sets
//! in order, learning templates into the one [`templates::TemplateCache`] (per
//! exporter session, persisted), learning options data (sampling, exporter boot
//! time) before the data records of the same datagram, decoding data sets
//! through compiled [`layout::Layout`]s, and holding sets whose template is not
//! known yet in [`pending::Pending`] with their own header's time context. It
//! also keeps sampling tables, per-exporter health and the internal-network
//! classifier, and is used the same way by the live collector (arrival = wall
//! clock) and by `ingest` (arrival = capture time).

pub mod clock;
pub mod exporters;
pub mod layout;
pub mod normalize;
pub mod pending;
pub mod rows;
pub mod sampling;
pub mod settings;
pub mod strangers;
pub mod templates;
#[cfg(test)]
mod testwire;
pub mod wire;

use crate::flow::{Direction, FlowRecord};
use crate::net::IpNet;
use exporters::{ExporterStats, ExporterTable};
use layout::Layout;
use normalize::{RecordBuilder, TimeContext};
use pending::{Held, Pending, PendingLimits};
use sampling::{SamplingTable, v5_rate};
use settings::{DecoderSettings, ExporterOverride, SamplingMode};
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::ops::Range;
use std::sync::Arc;
use templates::{Limits, Scope, TemplateCache};
use thiserror::Error;
use wire::{SetsEnd, TemplateEvent, TemplateSetKind, TemplatedHeader, V5_RECORD, V5Header, V5Record, V7_RECORD, WireError};

/// Templates kept per exporter session.
const TEMPLATES_PER_SOURCE: usize = 512;
/// Templates kept across all exporters.
const MAX_TEMPLATES: usize = 65_536;
/// Held (data-before-template) bytes per exporter, and in total.
const PENDING_BYTES_PER_SOURCE: usize = 2 << 20;
const PENDING_BYTES_TOTAL: usize = 64 << 20;

#[derive(Debug, Error)]
pub enum DecodeError {
    #[error("cannot configure the decoder: {0}")]
    Settings(String),
}

/// Totals across all exporters, for summaries and metrics.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DecodeTotals {
    pub datagrams: u64,
    pub records: u64,
    pub flows: u64,
    /// Records without a source and destination address (not flows).
    pub non_flow_records: u64,
    pub malformed: u64,
    /// Data sets whose template was unknown when they arrived (held or not).
    pub sets_without_template: u64,
    /// Datagrams whose first two bytes are not a NetFlow/IPFIX version.
    pub not_netflow: u64,
    /// v9 datagrams with bytes after the last whole flowset (padding or a damaged flowset).
    pub trailing_garbage: u64,
    /// Data sets held for a template that had not arrived yet.
    pub pending_held: u64,
    /// Of those, decoded once the template arrived.
    pub pending_replayed: u64,
    /// Sets dropped while waiting: expired, pushed out or refused by the bounds.
    pub pending_dropped: u64,
    /// RFC 5103 biflow records whose reverse direction became a second flow.
    pub biflow_reverse: u64,
    /// Flows whose times were implausible and were clamped (see [`clock`]).
    pub time_clamped: u64,
    /// Templates forgotten to stay inside the cache's bounds.
    pub templates_evicted: u64,
}

/// Stateful decoder for every exporter.
pub struct Decoder {
    templates: TemplateCache,
    pending: Pending,
    exporters: ExporterTable,
    sampling: SamplingTable,
    system_init: HashMap<(SocketAddr, u32), u64>,
    internal: Vec<IpNet>,
    overrides: Vec<ExporterOverride>,
    max_streams: usize,
    /// Sampling rate applied to the most recent flow (shown per exporter).
    last_rate: u32,
    /// The current datagram's longest first-packet-to-export and last-packet-to-export times, ms.
    lag: (u64, u64),
    /// Senders of datagrams that were not NetFlow or IPFIX (bounded).
    pub strangers: strangers::Strangers,
    /// Arrival time of the datagram being decoded.
    arrival_ms: u64,
    /// The box's clock for the datagram being decoded (injectable for tests).
    now_ms: u64,
    clock: fn() -> u64,
    max_skew_ms: u64,
    /// Data sets of the datagram being decoded, decoded after its options data.
    data_sets: Vec<(Arc<Layout>, u16, Range<usize>)>,
    /// Held sets whose template arrived in the datagram being decoded.
    replays: Vec<Held>,
    pub totals: DecodeTotals,
}

/// Where a record came from, for sampling, exporter attribution and the clock window.
#[derive(Clone, Copy)]
struct Stream {
    exporter: SocketAddr,
    domain: u32,
    header_rate: Option<u32>,
    ov: Override,
    arrival_ms: u64,
}

/// Sampling decided per datagram from the config.
#[derive(Clone, Copy)]
struct Override {
    rate: Option<u32>,
    force: bool,
}

impl Decoder {
    /// Build a decoder. `templates` and `saved` come from the state database.
    pub fn new(cfg: &DecoderSettings, templates: Vec<(String, Vec<u8>)>, saved: Vec<ExporterStats>) -> Result<Decoder, DecodeError> {
        if cfg.max_exporters == 0 {
            return Err(DecodeError::Settings("max_exporters must be at least 1".into()));
        }
        let max_streams = cfg.max_exporters * 4;
        let templates = TemplateCache::load(
            templates,
            Limits {
                sessions: max_streams,
                per_session: TEMPLATES_PER_SOURCE,
                total: MAX_TEMPLATES,
            },
        );
        if templates.unreadable > 0 {
            tracing::info!(
                "{} saved templates were of an older format and are dropped; exporters resend theirs within minutes",
                templates.unreadable
            );
        }
        let pending = Pending::new(PendingLimits {
            sets_per_exporter: cfg.pending_per_exporter.max(1),
            bytes_per_exporter: PENDING_BYTES_PER_SOURCE,
            total_bytes: PENDING_BYTES_TOTAL,
            exporters: cfg.max_exporters,
            ttl_ms: cfg.pending_ttl_ms,
        });
        let mut exporters = ExporterTable::new(cfg.max_exporters);
        exporters.restore(saved);
        Ok(Decoder {
            templates,
            pending,
            exporters,
            sampling: SamplingTable::new(max_streams),
            system_init: HashMap::new(),
            internal: cfg.internal.clone(),
            overrides: cfg.overrides.clone(),
            max_streams,
            last_rate: 1,
            lag: (0, 0),
            strangers: strangers::Strangers::default(),
            arrival_ms: 0,
            now_ms: 0,
            clock: crate::timefmt::now_ms,
            max_skew_ms: cfg.max_clock_skew_ms,
            data_sets: Vec::new(),
            replays: Vec::new(),
            totals: DecodeTotals::default(),
        })
    }

    /// New settings while running (a configuration reload): internal
    /// networks, exporter overrides and the clock-skew limit apply to the next
    /// datagram; templates, data waiting for them and exporter health are kept.
    /// The table sizes stay until the next start (the reload names them).
    pub fn reconfigure(&mut self, cfg: &DecoderSettings) {
        self.internal = cfg.internal.clone();
        self.overrides = cfg.overrides.clone();
        self.max_skew_ms = cfg.max_clock_skew_ms;
    }

    /// Replace the box's clock (tests: flows judged against a fixed "now").
    pub fn set_clock(&mut self, clock: fn() -> u64) {
        self.clock = clock;
    }

    /// Template changes to persist (drained).
    pub fn template_changes(&mut self) -> Vec<templates::TemplateChange> {
        self.templates.take_changes()
    }

    /// Number of templates currently known.
    pub fn template_count(&self) -> usize {
        self.templates.len()
    }

    /// Data sets held for their template now.
    pub fn pending_count(&self) -> usize {
        self.pending.len()
    }

    /// Per-exporter health.
    pub fn exporter_snapshot(&mut self) -> Vec<ExporterStats> {
        let mut list = self.exporters.snapshot();
        // The configured label (`[[exporter]] name`) of each exporter's address.
        for e in &mut list {
            let ip = e.exporter.parse::<SocketAddr>().map(|a| a.ip()).ok();
            e.name = ip
                .and_then(|ip| self.overrides.iter().find(|o| o.address == ip))
                .and_then(|o| o.name.clone());
        }
        list
    }

    /// Exporters evicted from the health table because it was full.
    pub fn exporters_evicted(&self) -> u64 {
        self.exporters.evicted
    }

    fn classify(&self, src: &IpAddr, dst: &IpAddr) -> Direction {
        if self.internal.is_empty() {
            return Direction::Unknown;
        }
        let s = self.internal.iter().any(|n| n.contains(src));
        let d = self.internal.iter().any(|n| n.contains(dst));
        match (s, d) {
            (true, true) => Direction::Internal,
            (true, false) => Direction::Outbound,
            (false, true) => Direction::Inbound,
            (false, false) => Direction::External,
        }
    }

    fn override_for(&self, ip: IpAddr) -> Override {
        match self.overrides.iter().find(|o| o.address == ip) {
            Some(o) => Override {
                rate: o.sampling_rate,
                force: o.sampling_mode == SamplingMode::Force,
            },
            None => Override { rate: None, force: false },
        }
    }

    /// Decode one datagram from `exporter` received at `arrival_ms`; flows are appended to `out`.
    pub fn decode(&mut self, exporter: SocketAddr, arrival_ms: u64, data: &[u8], out: &mut Vec<FlowRecord>) {
        self.totals.datagrams += 1;
        self.arrival_ms = arrival_ms;
        self.now_ms = (self.clock)();
        // Anything that is not a NetFlow/IPFIX header (DNS in a capture, probes)
        // is counted but does not create an exporter entry.
        let version = data.get(..2).map(|v| u16::from_be_bytes([v[0], v[1]]));
        if !matches!(version, Some(5 | 7 | 9 | 10)) {
            self.totals.not_netflow += 1;
            self.strangers.note(exporter.ip(), arrival_ms, data);
            return;
        }
        for (addr, n) in self.pending.expire(arrival_ms) {
            self.totals.pending_dropped += n;
            self.exporters.entry(addr).pending_dropped += n;
        }
        let ov = self.override_for(exporter.ip());
        let before = out.len();
        self.lag = (0, 0);
        let (records, err) = match version {
            Some(5 | 7) => self.fixed_format(exporter, data, ov, out),
            _ => self.templated(exporter, data, ov, out),
        };
        let flows = (out.len() - before) as u64;
        self.totals.records += records;
        self.totals.flows += flows;
        self.totals.templates_evicted = self.templates.evicted;
        let e = self.exporters.entry(exporter);
        e.packets += 1;
        e.records += records;
        e.last_seen_ms = arrival_ms;
        if flows > 0 {
            e.sampling_rate = self.last_rate;
        }
        if let Some(err) = err {
            self.totals.malformed += 1;
            e.malformed += 1;
            e.last_error = Some(err.to_string());
        }
        if flows > 0 {
            self.exporters.note_lag(exporter, arrival_ms, self.lag.0, self.lag.1);
        }
    }

    /// A v5 or v7 datagram: a header and fixed records. Returns the records decoded.
    fn fixed_format(&mut self, exporter: SocketAddr, data: &[u8], ov: Override, out: &mut Vec<FlowRecord>) -> (u64, Option<WireError>) {
        let (h, recs) = match V5Header::parse(data) {
            Ok(x) => x,
            Err(e) => return (0, Some(e)),
        };
        let export_ms = h.export_ms();
        let ctx = TimeContext {
            export_ms,
            sys_uptime_ms: Some(h.sys_uptime),
            system_init_ms: None,
        };
        // v7's engine and sampling bytes are reserved.
        let (size, domain, header_rate) = if h.version == 5 {
            (
                V5_RECORD,
                ((h.engine_type as u32) << 8) | h.engine_id as u32,
                v5_rate(h.sampling_interval),
            )
        } else {
            (V7_RECORD, 0, None)
        };
        self.exporters
            .sequence(exporter, domain, h.version as u8, h.sequence, h.count as u32, 1);
        self.note_header(exporter, h.version as u8, export_ms);
        let stream = Stream {
            exporter,
            domain,
            header_rate,
            ov,
            arrival_ms: self.arrival_ms,
        };
        for r in recs.chunks_exact(size).filter_map(V5Record::read) {
            let mut b = RecordBuilder::default();
            b.apply_v5(
                r.src.into(),
                r.dst.into(),
                r.src_port,
                r.dst_port,
                r.proto,
                r.tcp_flags,
                r.octets,
                r.packets,
                r.input,
                r.output,
                r.first,
                r.last,
            );
            self.emit(b, &ctx, stream, out);
        }
        (h.count as u64, None)
    }

    /// A v9 packet or an IPFIX message, in one walk over its sets.
    fn templated(&mut self, exporter: SocketAddr, data: &[u8], ov: Override, out: &mut Vec<FlowRecord>) -> (u64, Option<WireError>) {
        let (h, mut err) = match TemplatedHeader::parse(data) {
            Ok(x) => x,
            Err(e) => return (0, Some(e)),
        };
        let scope = Scope {
            exporter,
            version: h.version,
            domain: h.domain,
        };
        let export_ms = h.export_secs as u64 * 1000;
        self.note_header(exporter, h.version as u8, export_ms);
        let header_ctx = TimeContext {
            export_ms,
            sys_uptime_ms: h.sys_uptime,
            system_init_ms: None,
        };
        let mut data_sets = std::mem::take(&mut self.data_sets);
        let mut replays = std::mem::take(&mut self.replays);
        let mut held_any = false;
        let mut options_records = 0u64;
        let mut sets = wire::Sets::new(data, &h);
        for set in sets.by_ref() {
            let at = set.at + 4;
            if let Some(kind) = TemplateSetKind::of(h.version, set.id) {
                let r = wire::templates(kind, set.body, at, |ev| self.template_event(scope, ev, &mut replays));
                if let Err(e) = r {
                    err.get_or_insert(e);
                }
            } else if set.id >= 256 {
                match self.templates.get(&scope, set.id) {
                    // Options data first: a sampling rate or boot time in this
                    // datagram applies to the data records that follow it.
                    Some(l) if l.spec.options => {
                        let (n, e) = l.records(set.body, set.id, at, |b| self.learn_options(exporter, h.domain, &b));
                        options_records += n;
                        if let Some(e) = e {
                            err.get_or_insert(e);
                        }
                    }
                    Some(l) => data_sets.push((l, set.id, at..at + set.body.len())),
                    None => {
                        held_any = true;
                        self.hold(scope, set.id, at, header_ctx, set.body);
                    }
                }
            }
            // Set ids 2-255 other than IPFIX's templates are reserved: skipped.
        }
        match std::mem::replace(&mut sets.stop, SetsEnd::Clean) {
            SetsEnd::Clean => {}
            SetsEnd::Padding(_) if h.version == 10 => {}
            SetsEnd::Padding(_) | SetsEnd::Damaged(_) if h.version == 9 => {
                self.totals.trailing_garbage += 1;
                self.exporters.entry(exporter).trailing_garbage += 1;
            }
            SetsEnd::Padding(_) => {}
            SetsEnd::Damaged(e) => {
                err.get_or_insert(e);
            }
        }
        self.exporters.entry(exporter).options_records += options_records;
        let ctx = TimeContext {
            system_init_ms: if h.version == 10 {
                self.system_init.get(&(exporter, h.domain)).copied()
            } else {
                None
            },
            ..header_ctx
        };
        let stream = Stream {
            exporter,
            domain: h.domain,
            header_rate: None,
            ov,
            arrival_ms: self.arrival_ms,
        };
        let mut records = 0u64;
        for (l, tid, range) in data_sets.drain(..) {
            let Some(body) = data.get(range.clone()) else { continue };
            let (n, e) = l.records(body, tid, range.start, |b| self.emit(b, &ctx, stream, out));
            records += n;
            if let Some(e) = e {
                err.get_or_insert(e);
            }
        }
        // Sets held earlier whose template came in this datagram, each dated
        // against its own datagram's header.
        let mut replayed = 0u64;
        for held in replays.drain(..) {
            replayed += self.replay(held, ov, out);
        }
        self.data_sets = data_sets;
        self.replays = replays;
        // v9 sequence numbers count export packets, IPFIX's count data records
        // (options records too). A message with held sets has an unknown count.
        if h.version == 9 {
            let per_packet = (records as u32).max(1);
            self.exporters.sequence(exporter, h.domain, 9, h.sequence, 1, per_packet);
        } else if held_any {
            self.exporters.sequence_unknown(exporter, h.domain, 10, h.sequence);
        } else {
            self.exporters
                .sequence(exporter, h.domain, 10, h.sequence, (records + options_records) as u32, 1);
        }
        (records + replayed, err)
    }

    fn template_event(&mut self, scope: Scope, ev: TemplateEvent, replays: &mut Vec<Held>) {
        match ev {
            TemplateEvent::Define(tid, spec) => {
                let e = self.exporters.entry(scope.exporter);
                if spec.options {
                    e.options_templates += 1;
                } else {
                    e.templates += 1;
                }
                if self.templates.define(scope, tid, spec).is_some() {
                    replays.extend(self.pending.take(&scope, tid));
                }
            }
            TemplateEvent::Withdraw(tid) => self.templates.withdraw(&scope, tid),
            TemplateEvent::WithdrawAll { options } => self.templates.withdraw_all(&scope, options),
        }
    }

    fn hold(&mut self, scope: Scope, tid: u16, at: usize, ctx: TimeContext, body: &[u8]) {
        self.totals.sets_without_template += 1;
        let o = self.pending.hold(Held {
            scope,
            tid,
            at,
            ctx,
            arrival_ms: self.arrival_ms,
            body: body.to_vec(),
        });
        let e = self.exporters.entry(scope.exporter);
        e.sets_without_template += 1;
        e.pending_held += u64::from(o.held);
        e.pending_dropped += o.dropped;
        self.totals.pending_held += u64::from(o.held);
        self.totals.pending_dropped += o.dropped;
    }

    /// Decode a held set now that its template is known; returns its records.
    fn replay(&mut self, held: Held, ov: Override, out: &mut Vec<FlowRecord>) -> u64 {
        let Some(l) = self.templates.get(&held.scope, held.tid) else {
            return 0;
        };
        let Scope { exporter, domain, .. } = held.scope;
        self.totals.pending_replayed += 1;
        self.exporters.entry(exporter).pending_replayed += 1;
        let (n, e) = if l.spec.options {
            let r = l.records(&held.body, held.tid, held.at, |b| self.learn_options(exporter, domain, &b));
            self.exporters.entry(exporter).options_records += r.0;
            (0, r.1)
        } else {
            let ctx = TimeContext {
                system_init_ms: held.ctx.system_init_ms.or_else(|| {
                    (held.scope.version == 10)
                        .then(|| self.system_init.get(&(exporter, domain)).copied())
                        .flatten()
                }),
                ..held.ctx
            };
            let stream = Stream {
                exporter,
                domain,
                header_rate: None,
                ov,
                arrival_ms: held.arrival_ms,
            };
            l.records(&held.body, held.tid, held.at, |b| self.emit(b, &ctx, stream, out))
        };
        if let Some(e) = e {
            let x = self.exporters.entry(exporter);
            x.malformed += 1;
            x.last_error = Some(e.to_string());
            self.totals.malformed += 1;
        }
        n
    }

    fn emit(&mut self, b: RecordBuilder, ctx: &TimeContext, src: Stream, out: &mut Vec<FlowRecord>) {
        if !b.is_flow() {
            self.totals.non_flow_records += 1;
            return;
        }
        let Stream {
            exporter,
            domain,
            header_rate,
            ov,
            arrival_ms,
        } = src;
        let rate = if ov.force {
            ov.rate.unwrap_or(1)
        } else {
            self.sampling
                .lookup(exporter, domain, &b.sampling)
                .or(header_rate)
                .or(ov.rate)
                .unwrap_or(1)
        };
        let mut rec = FlowRecord {
            exporter,
            ..FlowRecord::default()
        };
        let reverse = b.reverse();
        b.finish(ctx, rate, &mut rec);
        let window = clock::Window::new(ctx.export_ms, arrival_ms, self.now_ms, self.max_skew_ms);
        if let Some(original) = window.clamp(&mut rec) {
            self.totals.time_clamped += 1;
            let e = self.exporters.entry(exporter);
            e.time_clamped += 1;
            e.last_clamped_ms = Some(original);
        }
        self.last_rate = rate;
        self.lag = (
            self.lag.0.max(ctx.export_ms.saturating_sub(rec.start_ms)),
            self.lag.1.max(ctx.export_ms.saturating_sub(rec.end_ms)),
        );
        rec.direction = self.classify(&rec.src, &rec.dst);
        // An RFC 5103 biflow becomes two records; the forward one (the initiator's,
        // as RFC 5103 defines it) comes first, so session stitching knows who began.
        if let Some((bytes, packets, flags)) = reverse {
            let r = rate.max(1) as u64;
            let back = FlowRecord {
                src: rec.dst,
                dst: rec.src,
                src_port: rec.dst_port,
                dst_port: rec.src_port,
                in_if: rec.out_if,
                out_if: rec.in_if,
                tcp_flags: flags,
                bytes: bytes.saturating_mul(r),
                packets: packets.saturating_mul(r),
                direction: self.classify(&rec.dst, &rec.src),
                ..rec.clone()
            };
            self.totals.biflow_reverse += 1;
            out.push(rec);
            out.push(back);
            return;
        }
        out.push(rec);
    }

    fn learn_options(&mut self, exporter: SocketAddr, domain: u32, b: &RecordBuilder) {
        self.sampling.learn(exporter, domain, &b.sampling);
        if let Some(init) = b.system_init()
            && (self.system_init.len() < self.max_streams || self.system_init.contains_key(&(exporter, domain)))
        {
            self.system_init.insert((exporter, domain), init);
        }
    }

    fn note_header(&mut self, exporter: SocketAddr, version: u8, export_ms: u64) {
        let e = self.exporters.entry(exporter);
        e.versions |= 1 << version;
        e.clock_offset_ms = export_ms as i64 - self.arrival_ms as i64;
    }
}

/// Publish what the exporters sent and what decoding could not use.
pub fn publish_metrics(r: &crate::metrics::Registry, d: &Decoder, exporters: &[ExporterStats]) {
    use crate::metrics::defs::*;
    let t = &d.totals;
    r.gauge(&DECODE_TEMPLATES, &[]).set(d.template_count() as u64);
    r.counter(&DECODE_TEMPLATES_EVICTED, &[]).set_at_least(t.templates_evicted);
    r.gauge(&DECODE_PENDING_SETS, &[]).set(d.pending_count() as u64);
    for e in exporters {
        let l = [e.exporter.as_str()];
        r.counter(&DECODE_DATAGRAMS, &l).set_at_least(e.packets);
        r.counter(&DECODE_RECORDS, &l).set_at_least(e.records);
        r.counter(&DECODE_MALFORMED, &l).set_at_least(e.malformed);
        r.counter(&DECODE_SEQUENCE_GAPS, &l).set_at_least(e.sequence_gaps);
        r.counter(&DECODE_LOST_RECORDS, &l).set_at_least(e.lost_records);
        r.counter(&DECODE_TIME_CLAMPED, &l).set_at_least(e.time_clamped);
    }
    for (exporter, held, delay) in d.exporters.lags() {
        let l = [exporter.as_str()];
        r.gauge(&DECODE_EXPORT_LAG, &l).set(held / 1000);
        r.gauge(&DECODE_EXPORT_DELAY, &l).set(delay / 1000);
    }
    for ((ip, looks_like), x) in d.strangers.iter() {
        r.counter(&DECODE_UNKNOWN_SENDER, &[&ip.to_string(), looks_like])
            .set_at_least(x.datagrams);
    }
    r.counter(&DECODE_UNKNOWN_SENDERS_EVICTED, &[]).set_at_least(d.strangers.evicted);
    for (reason, v) in [
        ("not_netflow", t.not_netflow),
        ("malformed", t.malformed),
        ("no_template_expired", t.pending_dropped),
        ("non_flow", t.non_flow_records),
    ] {
        r.counter(&DECODE_DROPPED, &[reason]).set_at_least(v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decode::testwire::{msg, set};

    fn settings() -> DecoderSettings {
        DecoderSettings {
            max_exporters: 16,
            pending_per_exporter: 8,
            pending_ttl_ms: 60_000,
            internal: Vec::new(),
            overrides: Vec::new(),
            max_clock_skew_ms: u64::MAX / 4,
        }
    }

    fn src() -> SocketAddr {
        SocketAddr::from(([192, 0, 2, 1], 4739))
    }

    #[test]
    fn other_senders_are_counted_by_address_and_kind_not_as_exporters() {
        let mut d = Decoder::new(&settings(), Vec::new(), Vec::new()).unwrap_or_else(|e| panic!("{e}"));
        d.set_clock(now);
        let mut out = Vec::new();
        let agent = SocketAddr::from(([192, 0, 2, 50], 6343));
        d.decode(agent, now(), &[0, 0, 0, 5, 0, 0, 0, 1, 192, 0, 2, 50], &mut out);
        d.decode(agent, now(), &[0, 0, 0, 5, 0, 0, 0, 1, 192, 0, 2, 50], &mut out);
        assert!(out.is_empty());
        assert_eq!(d.totals.not_netflow, 2);
        let r = crate::metrics::Registry::new();
        publish_metrics(&r, &d, &[]);
        assert_eq!(r.value(&crate::metrics::defs::DECODE_UNKNOWN_SENDER, &["192.0.2.50", "sflow"]), 2);
        assert_eq!(r.value(&crate::metrics::defs::DECODE_DROPPED, &["not_netflow"]), 2);
        assert_eq!(d.exporters_evicted(), 0);
    }

    fn now() -> u64 {
        2_000_000_000_000
    }

    /// tid 256: src(4), dst(4), octets(4), flowStartSysUpTime(4).
    fn template() -> Vec<u8> {
        set(2, &[1, 0, 0, 4, 0, 8, 0, 4, 0, 12, 0, 4, 0, 1, 0, 4, 0, 22, 0, 4])
    }

    fn with_time(mut m: Vec<u8>, secs: u32, seq: u32) -> Vec<u8> {
        m[4..8].copy_from_slice(&secs.to_be_bytes());
        m[8..12].copy_from_slice(&seq.to_be_bytes());
        m
    }

    #[test]
    fn held_sets_are_dated_against_their_own_header_and_expire_on_event_time() {
        let mut d = Decoder::new(&settings(), Vec::new(), Vec::new()).unwrap_or_else(|e| panic!("{e}"));
        d.set_clock(now);
        let mut out = Vec::new();
        const T0: u32 = 1_700_000_000;
        // tid 258: src, dst, octets (no times: a flow is dated at its export time).
        let tpl = set(2, &[1, 2, 0, 3, 0, 8, 0, 4, 0, 12, 0, 4, 0, 1, 0, 4]);
        let data = set(258, &[10, 0, 0, 1, 10, 0, 0, 2, 0, 0, 0, 9]);
        d.decode(
            src(),
            T0 as u64 * 1000,
            &with_time(msg(std::slice::from_ref(&data)), T0, 0),
            &mut out,
        );
        assert!(out.is_empty());
        assert_eq!((d.totals.pending_held, d.pending_count()), (1, 1));
        // The template comes 30 s later, in a message exported then.
        d.decode(src(), (T0 as u64 + 30) * 1000, &with_time(msg(&[tpl]), T0 + 30, 1), &mut out);
        assert_eq!(out.len(), 1);
        assert_eq!(d.totals.pending_replayed, 1);
        assert_eq!((out[0].src.to_string(), out[0].bytes), ("10.0.0.1".into(), 9));
        assert_eq!((out[0].start_ms, out[0].end_ms), (T0 as u64 * 1000, T0 as u64 * 1000));
        // A set for an unknown template held longer than the TTL (60 s of event time) expires.
        let other = set(259, &[1, 2, 3, 4]);
        d.decode(src(), (T0 as u64 + 100) * 1000, &with_time(msg(&[other]), T0 + 100, 2), &mut out);
        d.decode(src(), (T0 as u64 + 161) * 1000, &with_time(msg(&[data]), T0 + 161, 3), &mut out);
        assert_eq!(d.totals.pending_dropped, 1);
        assert_eq!(out.len(), 2);
    }

    #[test]
    fn data_set_and_template_in_one_message_in_either_order() {
        let mut d = Decoder::new(&settings(), Vec::new(), Vec::new()).unwrap_or_else(|e| panic!("{e}"));
        d.set_clock(now);
        let mut out = Vec::new();
        let data = set(256, &[10, 0, 0, 1, 10, 0, 0, 2, 0, 0, 0, 9, 0, 0, 0, 0]);
        d.decode(src(), 0, &msg(&[data.clone(), template()]), &mut out);
        d.decode(src(), 0, &msg(&[template(), data]), &mut out);
        assert_eq!(out.len(), 2);
        assert_eq!(d.totals.records, 2);
        assert_eq!(d.totals.malformed, 0);
    }

    #[test]
    fn export_lag_per_exporter_reaches_the_metrics() {
        let mut d = Decoder::new(&settings(), Vec::new(), Vec::new()).unwrap_or_else(|e| panic!("{e}"));
        d.set_clock(now);
        let mut out = Vec::new();
        const T0: u32 = 1_700_000_000;
        // tid 259: src, dst, octets, flowStartSeconds, flowEndSeconds.
        let tpl = set(2, &[1, 3, 0, 5, 0, 8, 0, 4, 0, 12, 0, 4, 0, 1, 0, 4, 0, 150, 0, 4, 0, 151, 0, 4]);
        let rec = |start: u32, end: u32| {
            let mut r = vec![10, 0, 0, 1, 10, 0, 0, 2, 0, 0, 0, 9];
            r.extend_from_slice(&start.to_be_bytes());
            r.extend_from_slice(&end.to_be_bytes());
            r
        };
        // A websocket cut by a 30-minute active timeout, and a short flow that ended 5 s ago.
        let mut body = rec(T0 - 1800, T0 - 1);
        body.extend(rec(T0 - 40, T0 - 5));
        let m = with_time(msg(&[tpl, set(259, &body)]), T0, 0);
        d.decode(src(), T0 as u64 * 1000, &m, &mut out);
        assert_eq!(out.len(), 2);
        let r = crate::metrics::Registry::new();
        let snap = d.exporter_snapshot();
        publish_metrics(&r, &d, &snap);
        use crate::metrics::defs::{DECODE_EXPORT_DELAY, DECODE_EXPORT_LAG};
        assert_eq!(r.value(&DECODE_EXPORT_LAG, &["192.0.2.1:4739"]), 1800);
        assert_eq!(r.value(&DECODE_EXPORT_DELAY, &["192.0.2.1:4739"]), 5);
        assert!(
            r.prometheus()
                .contains("flowwarden_decode_export_lag_seconds{exporter=\"192.0.2.1:4739\"} 1800")
        );
    }

    #[test]
    fn damage_is_counted_with_where_and_what() {
        let mut d = Decoder::new(&settings(), Vec::new(), Vec::new()).unwrap_or_else(|e| panic!("{e}"));
        let mut out = Vec::new();
        let mut m = msg(&[template(), set(256, &[10, 0, 0, 1, 10, 0, 0, 2, 0, 0, 0, 9, 0, 0, 0, 0])]);
        let n = m.len();
        m[n - 17] = 99; // the data set's length
        d.decode(src(), 0, &m, &mut out);
        assert!(out.is_empty());
        let snap = d.exporter_snapshot();
        assert_eq!(d.totals.malformed, 1);
        assert_eq!(
            snap[0].last_error.as_deref(),
            Some("set 256 at byte 40 declares 99 bytes; expected 4 to 20")
        );
        // The template before the damage was learned.
        assert_eq!(d.template_count(), 1);
    }
}
