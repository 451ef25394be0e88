//! Ingest stage: export datagrams in, normalized [`FlowRecord`]s out.
//!
//! One [`Decoder`] owns netflow_parser's `AutoScopedParser` (one parser state
//! per exporter transport address and observation domain / source id), the
//! zero-length-varlen pre-pass, persisted templates, sampling tables, per-exporter
//! health and the internal-network classifier. It is used the same way by the
//! live collector (arrival = wall clock) and by `ingest` (arrival = capture time).

pub mod clock;
pub mod exporters;
pub mod fastpath;
pub mod normalize;
pub mod rows;
pub mod sampling;
pub mod settings;
pub mod templates;
#[cfg(test)]
mod testwire;
pub mod varlen;

use crate::flow::{Direction, FlowRecord};
use crate::net::IpNet;
use exporters::{ExporterStats, ExporterTable};
use netflow_parser::scoped_parser::AutoScopedParser;
use netflow_parser::variable_versions::PendingFlowsConfig;
use netflow_parser::{NetflowPacket, NetflowParser};
use normalize::{RecordBuilder, TimeContext, ipfix_ie};
use sampling::{SamplingTable, v5_rate};
use settings::{DecoderSettings, ExporterOverride, SamplingMode};
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;
use templates::PersistentTemplates;
use thiserror::Error;

/// A [`RecordBuilder`] from a fixed-format v5 or v7 record (distinct types, same fields).
macro_rules! fixed_record {
    ($f:expr) => {{
        let f = $f;
        let mut b = RecordBuilder::default();
        b.apply_v5(
            f.src_addr,
            f.dst_addr,
            f.src_port,
            f.dst_port,
            f.protocol_number,
            f.tcp_flags,
            f.d_octets,
            f.d_pkts,
            f.input,
            f.output,
            f.first,
            f.last,
        );
        b
    }};
}

/// Templates the parser keeps per exporter session and per cache.
const TEMPLATES_PER_SOURCE: usize = 512;
/// Upper bound on persisted templates across all exporters.
const MAX_PERSISTED_TEMPLATES: usize = 65_536;
/// Pending (data-before-template) bytes per exporter session.
const PENDING_BYTES_PER_SOURCE: usize = 2 << 20;

#[derive(Debug, Error)]
pub enum DecodeError {
    #[error("cannot configure the NetFlow parser: {0}")]
    Parser(String),
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
    pub sets_without_template: u64,
    pub varlen_rewrites: u64,
    /// Datagrams whose first two bytes are not a NetFlow/IPFIX version.
    pub not_netflow: u64,
    /// v9 datagrams cut before trailing padding or a damaged flowset.
    pub trailing_garbage: u64,
    /// Data sets held for a template that had not arrived yet.
    pub pending_held: u64,
    /// Of those, decoded once the template arrived.
    pub pending_replayed: u64,
    /// Of those, expired or evicted before it did.
    pub pending_dropped: u64,
    /// RFC 5103 biflow records whose reverse direction became a second flow.
    pub biflow_reverse: u64,
    /// Flows whose times were implausible and were clamped (see [`clock`]).
    pub time_clamped: u64,
}

/// Stateful decoder for every exporter.
pub struct Decoder {
    parser: AutoScopedParser,
    templates: Arc<PersistentTemplates>,
    varlen: varlen::VarlenFixer,
    fast: fastpath::FastPath,
    /// Data records decoded by the fast path in the datagram being processed.
    fast_records: u64,
    exporters: ExporterTable,
    sampling: SamplingTable,
    system_init: HashMap<(SocketAddr, u32), u64>,
    internal: Vec<IpNet>,
    overrides: Vec<ExporterOverride>,
    max_streams: usize,
    /// Sampling rate applied to the most recent flow (shown per exporter).
    last_rate: u32,
    /// Arrival time of the datagram being decoded.
    arrival_ms: u64,
    /// The box's clock for the datagram being decoded (injectable for tests).
    now_ms: u64,
    clock: fn() -> u64,
    max_skew_ms: u64,
    pub totals: DecodeTotals,
}

/// Where a record came from, for sampling and exporter attribution.
#[derive(Clone, Copy)]
struct Stream {
    exporter: SocketAddr,
    domain: u32,
    header_rate: Option<u32>,
    ov: Override,
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
        let templates = Arc::new(PersistentTemplates::new(templates, MAX_PERSISTED_TEMPLATES));
        let mut pending = PendingFlowsConfig::with_ttl(64, Duration::from_millis(cfg.pending_ttl_ms));
        pending.max_entries_per_template = cfg.pending_per_exporter.max(1);
        pending.max_total_bytes = PENDING_BYTES_PER_SOURCE;
        let builder = NetflowParser::builder()
            .with_cache_size(TEMPLATES_PER_SOURCE)
            .with_pending_flows(pending)
            .with_template_store(templates.clone());
        let parser = AutoScopedParser::try_with_builder(builder)
            .and_then(|p| p.with_max_sources(cfg.max_exporters))
            .map_err(|e| DecodeError::Parser(e.to_string()))?;
        let mut exporters = ExporterTable::new(cfg.max_exporters);
        exporters.restore(saved);
        Ok(Decoder {
            parser,
            templates,
            varlen: varlen::VarlenFixer::new(MAX_PERSISTED_TEMPLATES),
            fast: fastpath::FastPath::new(MAX_PERSISTED_TEMPLATES),
            fast_records: 0,
            exporters,
            sampling: SamplingTable::new(cfg.max_exporters * 4),
            system_init: HashMap::new(),
            internal: cfg.internal.clone(),
            overrides: cfg.overrides.clone(),
            max_streams: cfg.max_exporters * 4,
            last_rate: 1,
            arrival_ms: 0,
            now_ms: 0,
            clock: crate::timefmt::now_ms,
            max_skew_ms: cfg.max_clock_skew_ms,
            totals: DecodeTotals::default(),
        })
    }

    /// Replace the box's clock (tests: flows judged against a fixed "now").
    pub fn set_clock(&mut self, clock: fn() -> u64) {
        self.clock = clock;
    }

    /// Template changes to persist (drained).
    pub fn template_changes(&self) -> Vec<templates::TemplateChange> {
        self.templates.take_changes()
    }

    /// Number of templates currently known (persisted set).
    pub fn template_count(&self) -> usize {
        self.templates.len()
    }

    /// Per-exporter health with the parser's pending-flow counters folded in.
    pub fn exporter_snapshot(&mut self) -> Vec<ExporterStats> {
        // (held, replayed, dropped) per exporter, from every parser session.
        let mut pending: HashMap<SocketAddr, (u64, u64, u64)> = HashMap::new();
        let mut add = |addr: SocketAddr, m: &netflow_parser::CacheMetrics| {
            let e = pending.entry(addr).or_default();
            e.0 += m.pending_cached;
            e.1 += m.pending_replayed;
            e.2 += m.pending_dropped + m.pending_replay_failed;
        };
        for (k, info) in self.parser.ipfix_info() {
            add(k.addr, &info.ipfix.metrics);
            add(k.addr, &info.v9.metrics);
        }
        for (k, info) in self.parser.v9_info() {
            add(k.addr, &info.v9.metrics);
        }
        let (mut held, mut replayed, mut dropped) = (0, 0, 0);
        for (addr, (h, r, d)) in pending {
            held += h;
            replayed += r;
            dropped += d;
            if let Some(s) = self.exporters.get_mut(&addr) {
                s.pending_held = h;
                s.pending_replayed = r;
                s.pending_dropped = d;
            }
        }
        self.totals.pending_held = held;
        self.totals.pending_replayed = replayed;
        self.totals.pending_dropped = dropped;
        self.exporters.snapshot()
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
            return;
        }
        let fixed = self.varlen.fix(exporter, data);
        self.totals.varlen_rewrites = self.varlen.rewritten;
        let mut bytes = fixed.as_deref().unwrap_or(data);
        if let Some(len) = varlen::v9_well_formed_len(bytes) {
            self.totals.trailing_garbage += 1;
            self.exporters.entry(exporter).trailing_garbage += 1;
            bytes = &bytes[..len];
        }
        let (patched, taken) = self.fast.scan(exporter, bytes);
        let parser_bytes = patched.as_deref().unwrap_or(bytes);
        // Count the fast records into this datagram's sequence accounting.
        self.fast_records = taken.iter().map(|(l, r)| (r.len() / l.record_len) as u64).sum();
        let result = self.parser.parse_from_source(exporter, parser_bytes);
        let ov = self.override_for(exporter.ip());
        let before = out.len();
        let mut records = 0u64;
        for pkt in &result.packets {
            records += self.packet(exporter, arrival_ms, pkt, ov, out);
        }
        // Fast records last: options data in this datagram (sampling, system
        // init time) have been learned by now, as they would be for the parser.
        if !taken.is_empty() {
            records += self.fast_records(exporter, bytes, &taken, ov, out);
        }
        let flows = (out.len() - before) as u64;
        self.totals.records += records;
        self.totals.flows += flows;
        let e = self.exporters.entry(exporter);
        e.packets += 1;
        e.records += records;
        e.last_seen_ms = arrival_ms;
        if flows > 0 {
            e.sampling_rate = self.last_rate;
        }
        if let Some(err) = result.error {
            self.totals.malformed += 1;
            e.malformed += 1;
            e.last_error = Some(plain_error(&err.to_string()));
        }
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
        let window = clock::Window::new(ctx.export_ms, self.arrival_ms, self.now_ms, self.max_skew_ms);
        if let Some(original) = window.clamp(&mut rec) {
            self.totals.time_clamped += 1;
            let e = self.exporters.entry(exporter);
            e.time_clamped += 1;
            e.last_clamped_ms = Some(original);
        }
        self.last_rate = rate;
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

    /// Returns the number of data records in the packet.
    fn packet(&mut self, exporter: SocketAddr, arrival_ms: u64, pkt: &NetflowPacket, ov: Override, out: &mut Vec<FlowRecord>) -> u64 {
        match pkt {
            NetflowPacket::V5(v5) => {
                let h = &v5.header;
                let export_ms = h.unix_secs as u64 * 1000 + (h.unix_nsecs / 1_000_000) as u64;
                let ctx = TimeContext {
                    export_ms,
                    sys_uptime_ms: Some(h.sys_up_time),
                    system_init_ms: None,
                };
                let domain = ((h.engine_type as u32) << 8) | h.engine_id as u32;
                self.exporters
                    .sequence(exporter, domain, 5, h.flow_sequence, v5.flowsets.len() as u32, 1);
                self.note_header(exporter, 5, export_ms, arrival_ms);
                let header_rate = v5_rate(h.sampling_interval);
                for f in &v5.flowsets {
                    let b = fixed_record!(f);
                    self.emit(
                        b,
                        &ctx,
                        Stream {
                            exporter,
                            domain,
                            header_rate,
                            ov,
                        },
                        out,
                    );
                }
                v5.flowsets.len() as u64
            }
            NetflowPacket::V7(v7) => {
                let h = &v7.header;
                let export_ms = h.unix_secs as u64 * 1000 + (h.unix_nsecs / 1_000_000) as u64;
                let ctx = TimeContext {
                    export_ms,
                    sys_uptime_ms: Some(h.sys_up_time),
                    system_init_ms: None,
                };
                self.exporters
                    .sequence(exporter, 0, 7, h.flow_sequence, v7.flowsets.len() as u32, 1);
                self.note_header(exporter, 7, export_ms, arrival_ms);
                for f in &v7.flowsets {
                    let b = fixed_record!(f);
                    self.emit(
                        b,
                        &ctx,
                        Stream {
                            exporter,
                            domain: 0,
                            header_rate: None,
                            ov,
                        },
                        out,
                    );
                }
                v7.flowsets.len() as u64
            }
            NetflowPacket::V9(v9) => {
                use netflow_parser::variable_versions::v9::FlowSetBody as B;
                let h = &v9.header;
                let export_ms = h.unix_secs as u64 * 1000;
                let domain = h.source_id;
                let ctx = TimeContext {
                    export_ms,
                    sys_uptime_ms: Some(h.sys_up_time),
                    system_init_ms: None,
                };
                self.note_header(exporter, 9, export_ms, arrival_ms);
                let stream = Stream {
                    exporter,
                    domain,
                    header_rate: None,
                    ov,
                };
                let mut n = 0u64;
                for fs in &v9.flowsets {
                    match &fs.body {
                        B::Template(t) => self.exporters.entry(exporter).templates += t.templates.len() as u64,
                        B::OptionsTemplate(t) => self.exporters.entry(exporter).options_templates += t.templates.len() as u64,
                        B::OptionsData(o) => self.v9_options(exporter, domain, o),
                        B::Data(d) => n += self.v9_data(d, &ctx, stream, out),
                        B::NoTemplate(_) => self.note_no_template(exporter),
                        _ => {}
                    }
                }
                // v9 sequence numbers count export packets.
                let per_packet = ((n + self.fast_records) as u32).max(1);
                self.exporters.sequence(exporter, domain, 9, h.sequence_number, 1, per_packet);
                n
            }
            NetflowPacket::IPFix(ipfix) => {
                use netflow_parser::variable_versions::ipfix::FlowSetBody as B;
                let h = &ipfix.header;
                let export_ms = h.export_time as u64 * 1000;
                let domain = h.observation_domain_id;
                self.note_header(exporter, 10, export_ms, arrival_ms);
                // Options data first: a system init time or sampling rate in this
                // message applies to the data records that follow it.
                for fs in &ipfix.flowsets {
                    match &fs.body {
                        B::OptionsData(o) => {
                            for r in &o.fields {
                                let mut b = RecordBuilder::default();
                                for (f, v) in r {
                                    if let Some(ie) = ipfix_ie(f) {
                                        b.apply(ie, v);
                                    }
                                }
                                self.learn_options(exporter, domain, &b);
                                self.exporters.entry(exporter).options_records += 1;
                            }
                        }
                        B::V9OptionsData(o) => self.v9_options(exporter, domain, o),
                        _ => {}
                    }
                }
                let ctx = TimeContext {
                    export_ms,
                    sys_uptime_ms: None,
                    system_init_ms: self.system_init.get(&(exporter, domain)).copied(),
                };
                let stream = Stream {
                    exporter,
                    domain,
                    header_rate: None,
                    ov,
                };
                let mut n = 0u64;
                for fs in &ipfix.flowsets {
                    match &fs.body {
                        B::Template(_) | B::V9Template(_) => self.exporters.entry(exporter).templates += 1,
                        B::Templates(t) => self.exporters.entry(exporter).templates += t.len() as u64,
                        B::V9Templates(t) => self.exporters.entry(exporter).templates += t.len() as u64,
                        B::OptionsTemplate(_) | B::V9OptionsTemplate(_) => self.exporters.entry(exporter).options_templates += 1,
                        B::OptionsTemplates(t) => self.exporters.entry(exporter).options_templates += t.len() as u64,
                        B::V9OptionsTemplates(t) => self.exporters.entry(exporter).options_templates += t.len() as u64,
                        B::Data(d) => {
                            for r in &d.fields {
                                let mut b = RecordBuilder::default();
                                for (f, v) in r {
                                    if let Some(ie) = ipfix_ie(f) {
                                        b.apply(ie, v);
                                    }
                                }
                                n += 1;
                                self.emit(b, &ctx, stream, out);
                            }
                        }
                        B::V9Data(d) => n += self.v9_data(d, &ctx, stream, out),
                        B::NoTemplate(_) => self.note_no_template(exporter),
                        _ => {}
                    }
                }
                // IPFIX sequence numbers count data records.
                self.exporters
                    .sequence(exporter, domain, 10, h.sequence_number, (n + self.fast_records) as u32, 1);
                n
            }
            _ => 0,
        }
    }

    /// Options records carried in v9 form (v9 packets and v9 sets inside IPFIX).
    fn v9_options(&mut self, exporter: SocketAddr, domain: u32, o: &netflow_parser::variable_versions::v9::OptionsData) {
        for r in &o.fields {
            let mut b = RecordBuilder::default();
            for (f, v) in &r.options_fields {
                b.apply(u16::from(*f), v);
            }
            self.learn_options(exporter, domain, &b);
            self.exporters.entry(exporter).options_records += 1;
        }
    }

    /// Data records carried in v9 form; returns how many.
    fn v9_data(
        &mut self,
        d: &netflow_parser::variable_versions::v9::Data,
        ctx: &TimeContext,
        src: Stream,
        out: &mut Vec<FlowRecord>,
    ) -> u64 {
        for r in &d.fields {
            let mut b = RecordBuilder::default();
            for (f, v) in r {
                b.apply(u16::from(*f), v);
            }
            self.emit(b, ctx, src, out);
        }
        d.fields.len() as u64
    }

    /// Decode the sets the fast path took from `data`.
    fn fast_records(&mut self, exporter: SocketAddr, data: &[u8], taken: &fastpath::Taken, ov: Override, out: &mut Vec<FlowRecord>) -> u64 {
        let be32 = |at: usize| {
            data.get(at..at + 4)
                .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
                .unwrap_or(0)
        };
        let (ctx, domain) = if data.first() == Some(&0) && data.get(1) == Some(&9) {
            let domain = be32(16);
            (
                TimeContext {
                    export_ms: be32(8) as u64 * 1000,
                    sys_uptime_ms: Some(be32(4)),
                    system_init_ms: None,
                },
                domain,
            )
        } else {
            let domain = be32(12);
            let init = self.system_init.get(&(exporter, domain)).copied();
            (
                TimeContext {
                    export_ms: be32(4) as u64 * 1000,
                    sys_uptime_ms: None,
                    system_init_ms: init,
                },
                domain,
            )
        };
        let stream = Stream {
            exporter,
            domain,
            header_rate: None,
            ov,
        };
        let mut n = 0;
        for (layout, range) in taken {
            let Some(body) = data.get(range.clone()) else { continue };
            for rec in body.chunks_exact(layout.record_len) {
                let mut b = RecordBuilder::default();
                for &(ie, off, len) in &layout.fields {
                    b.apply_raw(ie, &rec[off as usize..off as usize + len as usize]);
                }
                self.emit(b, &ctx, stream, out);
                n += 1;
            }
        }
        n
    }

    fn note_no_template(&mut self, exporter: SocketAddr) {
        self.totals.sets_without_template += 1;
        self.exporters.entry(exporter).sets_without_template += 1;
    }

    fn note_header(&mut self, exporter: SocketAddr, version: u8, export_ms: u64, arrival_ms: u64) {
        let e = self.exporters.entry(exporter);
        e.versions |= 1 << version;
        e.clock_offset_ms = export_ms as i64 - arrival_ms as i64;
    }
}

/// Publish what the exporters sent and what decoding could not use.
pub fn publish_metrics(r: &crate::metrics::Registry, exporters: &[ExporterStats], t: &DecodeTotals) {
    use crate::metrics::defs::*;
    for e in exporters {
        let l = [e.exporter.as_str()];
        r.counter(&DECODE_DATAGRAMS, &l).set_at_least(e.packets);
        r.counter(&DECODE_RECORDS, &l).set_at_least(e.records);
        r.counter(&DECODE_MALFORMED, &l).set_at_least(e.malformed);
        r.counter(&DECODE_SEQUENCE_GAPS, &l).set_at_least(e.sequence_gaps);
        r.counter(&DECODE_LOST_RECORDS, &l).set_at_least(e.lost_records);
        r.counter(&DECODE_TIME_CLAMPED, &l).set_at_least(e.time_clamped);
    }
    for (reason, v) in [
        ("not_netflow", t.not_netflow),
        ("malformed", t.malformed),
        ("no_template_expired", t.pending_dropped),
        ("non_flow", t.non_flow_records),
    ] {
        r.counter(&DECODE_DROPPED, &[reason]).set_at_least(v);
    }
}

/// A parser error for people: netflow_parser embeds the raw input bytes
/// (`input: [12, 209, ...]`); they become a length, and the text is cut to 200
/// characters on a character boundary.
pub fn plain_error(msg: &str) -> String {
    let mut out = String::with_capacity(msg.len().min(256));
    let mut rest = msg;
    while let Some(i) = rest.find("input: [") {
        out.push_str(&rest[..i]);
        let after = &rest[i + "input: [".len()..];
        match after.find(']') {
            Some(j) => {
                let n = after[..j].split(',').filter(|x| !x.trim().is_empty()).count();
                out.push_str(&format!("input: {n} bytes"));
                rest = &after[j + 1..];
            }
            None => {
                out.push_str("input: (bytes)");
                rest = "";
            }
        }
    }
    out.push_str(rest);
    if out.chars().count() > 200 {
        out = out.chars().take(199).collect::<String>() + "…";
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parser_errors_lose_their_raw_bytes() {
        let e = plain_error("Partial parse error: V9 parse error: Parsing Error: Error { input: [12, 209, 0, 28], code: Eof }");
        assert_eq!(
            e,
            "Partial parse error: V9 parse error: Parsing Error: Error { input: 4 bytes, code: Eof }"
        );
        let long = format!("x: Error {{ input: [{}", "1, ".repeat(500));
        assert_eq!(plain_error(&long), "x: Error { input: (bytes)");
        assert!(plain_error(&"é".repeat(300)).chars().count() <= 200);
    }
}
