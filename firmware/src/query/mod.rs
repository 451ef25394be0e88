//! Query stage: list, top-N and time series over stored flows, for the
//! `query` command (and later the web page).
//!
//! Everything streams from [`Reader::scan`](crate::store::reader::Reader::scan)
//! through a [`Filter`]; listing writes as it reads, aggregations keep bounded maps.

pub mod filter;
pub mod output;
pub mod rollups;

use crate::flow::FlowRecord;
use crate::store::StoreError;
use crate::store::reader::{Reader, ScanStats};
pub use filter::{Filter, FilterError};
pub use output::Format;
use std::collections::BTreeMap;
use std::io::Write;
use std::net::IpAddr;
use std::ops::ControlFlow;
use thiserror::Error;

/// Distinct keys a top-N aggregation keeps before counting the rest as overflow.
const TOP_KEYS_CAP: usize = 10_000_000;

#[derive(Debug, Error)]
pub enum QueryError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cannot write output: {0}")]
    Output(#[from] std::io::Error),
}

/// What to aggregate by for `--top`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum TopKey {
    Src,
    Dst,
    /// Spelled `dst_port` as in the command-line contract (`dst-port` also accepted).
    #[value(name = "dst_port", alias = "dst-port")]
    DstPort,
    Proto,
    Conversation,
}

/// Ranking metric for `--top`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum By {
    Bytes,
    Packets,
    Flows,
}

/// Common query bounds.
#[derive(Debug, Clone)]
pub struct Scope {
    pub from: u64,
    pub to: u64,
    pub filter: Filter,
}

/// Totals of what was output.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Totals {
    pub flows: u64,
    pub bytes: u64,
    pub packets: u64,
    /// Of the flows, those whose times were clamped at ingest.
    pub clamped: u64,
}

fn broken_pipe(e: &std::io::Error) -> bool {
    e.kind() == std::io::ErrorKind::BrokenPipe
}

/// List matching flows.
pub fn list(
    reader: &Reader,
    scope: &Scope,
    format: Format,
    limit: Option<u64>,
    out: &mut dyn Write,
) -> Result<(Totals, ScanStats), QueryError> {
    let mut totals = Totals::default();
    let mut err = None;
    output::flow_header(format, out)?;
    if limit == Some(0) {
        output::flow_footer(format, &totals, out)?;
        return Ok((totals, ScanStats::default()));
    }
    let stats = reader.scan(scope.from, scope.to, |f| {
        if !scope.filter.matches(f) {
            return ControlFlow::Continue(());
        }
        if let Err(e) = output::flow_row(format, f, out) {
            err = Some(e);
            return ControlFlow::Break(());
        }
        totals.flows += 1;
        totals.bytes += f.bytes;
        totals.packets += f.packets;
        totals.clamped += u64::from(f.time_clamped());
        if limit.is_some_and(|l| totals.flows >= l) {
            ControlFlow::Break(())
        } else {
            ControlFlow::Continue(())
        }
    })?;
    match err {
        Some(e) if broken_pipe(&e) => return Ok((totals, stats)),
        Some(e) => return Err(e.into()),
        None => {}
    }
    output::flow_footer(format, &totals, out)?;
    Ok((totals, stats))
}

/// One aggregated row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row {
    pub key: String,
    pub flows: u64,
    pub packets: u64,
    pub bytes: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) enum Key {
    Ip(IpAddr),
    Port(u8, u16),
    Proto(u8),
    Pair(IpAddr, IpAddr),
}

fn key_of(k: TopKey, f: &FlowRecord) -> Key {
    match k {
        TopKey::Src => Key::Ip(f.src),
        TopKey::Dst => Key::Ip(f.dst),
        TopKey::DstPort => Key::Port(f.proto, f.dst_port),
        TopKey::Proto => Key::Proto(f.proto),
        TopKey::Conversation => {
            // Both directions of a conversation count together.
            if f.src <= f.dst {
                Key::Pair(f.src, f.dst)
            } else {
                Key::Pair(f.dst, f.src)
            }
        }
    }
}

pub(crate) fn render(k: &Key) -> String {
    let proto = |p: u8| crate::flow::proto_name(p).map(str::to_string).unwrap_or_else(|| p.to_string());
    match k {
        Key::Ip(ip) => ip.to_string(),
        Key::Port(p, port) => format!("{port}/{}", proto(*p)),
        Key::Proto(p) => proto(*p),
        Key::Pair(a, b) => format!("{a} <-> {b}"),
    }
}

/// Top-N aggregation. Returns the rows, overall totals, keys that did not fit and scan stats.
pub fn top(reader: &Reader, scope: &Scope, key: TopKey, by: By, limit: usize) -> Result<(Vec<Row>, Totals, u64, ScanStats), QueryError> {
    let mut map: crate::fasthash::FxHashMap<Key, (u64, u64, u64)> = Default::default();
    let mut totals = Totals::default();
    let mut overflow = 0u64;
    let stats = reader.scan(scope.from, scope.to, |f| {
        // Aggregates count the flows that started in range (as the roll-ups do).
        if f.start_ms >= scope.from && f.start_ms < scope.to && scope.filter.matches(f) {
            totals.flows += 1;
            totals.bytes += f.bytes;
            totals.packets += f.packets;
            let k = key_of(key, f);
            let len = map.len();
            match map.get_mut(&k) {
                Some(c) => {
                    c.0 += 1;
                    c.1 += f.packets;
                    c.2 += f.bytes;
                }
                None if len < TOP_KEYS_CAP => {
                    map.insert(k, (1, f.packets, f.bytes));
                }
                None => overflow += 1,
            }
        }
        ControlFlow::Continue(())
    })?;
    let metric = |c: &(u64, u64, u64)| match by {
        By::Flows => c.0,
        By::Packets => c.1,
        By::Bytes => c.2,
    };
    let mut rows: Vec<(Key, (u64, u64, u64))> = map.into_iter().collect();
    // Rank on the typed keys; only the rows shown are rendered.
    let by = |a: &(Key, (u64, u64, u64)), b: &(Key, (u64, u64, u64))| metric(&b.1).cmp(&metric(&a.1)).then_with(|| a.0.cmp(&b.0));
    if rows.len() > limit {
        rows.select_nth_unstable_by(limit, by);
        rows.truncate(limit);
    }
    rows.sort_by(by);
    let rows = rows
        .into_iter()
        .map(|(k, c)| Row {
            key: render(&k),
            flows: c.0,
            packets: c.1,
            bytes: c.2,
        })
        .collect();
    Ok((rows, totals, overflow, stats))
}

/// Time series in buckets of `bucket_ms` (by flow start). Keys are bucket starts.
/// Flows, packets and bytes.
pub type Counts = (u64, u64, u64);

pub fn series(reader: &Reader, scope: &Scope, bucket_ms: u64) -> Result<(BTreeMap<u64, Counts>, ScanStats), QueryError> {
    let mut buckets: BTreeMap<u64, (u64, u64, u64)> = BTreeMap::new();
    let stats = reader.scan(scope.from, scope.to, |f| {
        // Flows count in the bucket they started in, and only if they started in range
        // (as the roll-ups count them).
        if f.start_ms >= scope.from && f.start_ms < scope.to && scope.filter.matches(f) {
            let b = buckets.entry(f.start_ms - f.start_ms % bucket_ms).or_default();
            b.0 += 1;
            b.1 += f.packets;
            b.2 += f.bytes;
        }
        ControlFlow::Continue(())
    })?;
    Ok((buckets, stats))
}
