//! Roll-ups: per-minute totals (overall, per exporter, per interface, per
//! protocol, per direction: in vs out by `[network] internal`) and per-hour top-N (sources, destinations, conversations,
//! destination ports by bytes, packets and flows).
//!
//! The writer folds every committed flow into a [`RollupAgg`]; minute deltas
//! are merged into `rollups.redb` with each commit, hour tops are rewritten
//! periodically and when an hour closes on event time. Maps are bounded and
//! count what they could not hold.

use crate::fasthash::FxHashMap;
use crate::flow::FlowRecord;
use crate::store::schema::{HOUR_TOP, MINUTE, ROLLUP_META, dim, metric, top};
use redb::ReadableTable;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::IpAddr;

/// Distinct keys one hour may track per top kind.
const HOUR_KEYS_CAP: usize = 200_000;

/// One row of a top-N list.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopEntry {
    pub key: Vec<u8>,
    pub bytes: u64,
    pub packets: u64,
    pub flows: u64,
}

type Counts = (u64, u64, u64);

/// A minute roll-up delta: (minute, dimension kind, key) and (bytes, packets, flows).
pub type MinuteRowDelta = ((u64, u8, Vec<u8>), Counts);

/// Merge minute deltas into the table.
pub fn write_minute_rows<'a>(txn: &redb::WriteTransaction, rows: impl Iterator<Item = &'a MinuteRowDelta>) -> Result<(), redb::Error> {
    let mut t = txn.open_table(MINUTE)?;
    let mut meta_t = txn.open_table(ROLLUP_META)?;
    if meta_t.get(meta::DIRECTIONS_FROM)?.is_none() {
        // A file written before the direction rows existed: they count from the
        // minute after its last one (that minute has rows without them).
        let from = t.last()?.map(|(k, _)| k.value().0 + 60_000).unwrap_or(0);
        meta_t.insert(meta::DIRECTIONS_FROM, from)?;
    }
    for ((m, kind, key), (b, p, n)) in rows {
        let old = t.get((*m, *kind, key.as_slice()))?.map(|v| v.value()).unwrap_or_default();
        t.insert((*m, *kind, key.as_slice()), (old.0 + b, old.1 + p, old.2 + n))?;
    }
    Ok(())
}

/// What a minute roll-up is folded by; the six dimensions are derived at write time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct MinuteKey {
    minute: u64,
    exporter: std::net::SocketAddr,
    in_if: u32,
    out_if: u32,
    proto: u8,
    direction: u8,
}

#[derive(Debug, Default)]
struct HourTop {
    src: FxHashMap<IpAddr, Counts>,
    dst: FxHashMap<IpAddr, Counts>,
    /// Both directions of a conversation together (the smaller address first), as `query` ranks them.
    conversation: FxHashMap<(IpAddr, IpAddr), Counts>,
    dst_port: FxHashMap<(u8, u16), Counts>,
    /// Flows folded in (the lists are current when this equals the hour's minute totals).
    flows: u64,
    /// Per top kind: its lists cannot be exact (its map was full, or flows
    /// arrived after the hour was written and forgotten).
    inexact: [bool; 4],
    dirty: bool,
}

/// In-memory aggregation between commits.
#[derive(Debug, Default)]
pub struct RollupAgg {
    minutes: FxHashMap<MinuteKey, Counts>,
    hours: BTreeMap<u64, HourTop>,
    /// Hours before this were written and forgotten: flows for them now are late.
    forgotten_before: u64,
    /// Contributions not counted in an hour top because its map was full.
    pub hour_overflow: u64,
}

/// Roll-up metadata keys (in `rollup_meta`): the first minute and hour whose
/// rows are complete (older ones were trimmed or expired), and per hour the
/// flows its top lists cover or that they are inexact.
pub mod meta {
    pub const MINUTES_FROM: &str = "minutes_from";
    pub const HOURS_FROM: &str = "hours_from";
    /// The first minute with direction rows (0: all of them; a later minute
    /// when the file was written by a version without them).
    pub const DIRECTIONS_FROM: &str = "directions_from";
    /// The length of a full top list when the lists were written.
    pub const TOP_ENTRIES: &str = "top_entries";
    pub fn hour_flows(hour: u64) -> String {
        format!("hour_flows/{hour}")
    }
    pub fn inexact(hour: u64, kind: u8) -> String {
        format!("inexact/{hour}/{kind}")
    }
}

pub fn ip_key(ip: &IpAddr) -> Vec<u8> {
    match ip {
        IpAddr::V4(a) => a.octets().to_vec(),
        IpAddr::V6(a) => a.octets().to_vec(),
    }
}

/// Render a top key of `kind` for people.
pub fn render_key(kind: u8, key: &[u8]) -> String {
    fn ip(b: &[u8]) -> String {
        match b.len() {
            4 => IpAddr::from([b[0], b[1], b[2], b[3]]).to_string(),
            16 => {
                let mut a = [0u8; 16];
                a.copy_from_slice(b);
                IpAddr::from(a).to_string()
            }
            _ => format!("{b:02x?}"),
        }
    }
    match kind {
        top::CONVERSATION if !key.is_empty() => {
            let n = key[0] as usize;
            format!(
                "{} <-> {}",
                ip(key.get(1..1 + n).unwrap_or(&[])),
                ip(key.get(1 + n..).unwrap_or(&[]))
            )
        }
        top::DST_PORT if key.len() == 3 => {
            let port = u16::from_be_bytes([key[1], key[2]]);
            match crate::flow::proto_name(key[0]) {
                Some(p) => format!("{port}/{p}"),
                None => format!("{port}/{}", key[0]),
            }
        }
        _ => ip(key),
    }
}

#[inline]
fn add(c: &mut Counts, f: &FlowRecord) {
    c.0 += f.bytes;
    c.1 += f.packets;
    c.2 += 1;
}

/// Count a flow under `key`; false when the map was full and it was not counted.
#[inline]
fn bump<K: std::hash::Hash + Eq>(map: &mut FxHashMap<K, Counts>, key: K, f: &FlowRecord, overflow: &mut u64) -> bool {
    if let Some(c) = map.get_mut(&key) {
        add(c, f);
    } else if map.len() < HOUR_KEYS_CAP {
        let mut c = Counts::default();
        add(&mut c, f);
        map.insert(key, c);
    } else {
        *overflow += 1;
        return false;
    }
    true
}

fn conversation_key(a: &IpAddr, b: &IpAddr) -> Vec<u8> {
    let (a, b) = (ip_key(a), ip_key(b));
    let mut k = vec![a.len() as u8];
    k.extend_from_slice(&a);
    k.extend_from_slice(&b);
    k
}

impl RollupAgg {
    /// Fold one flow in.
    pub fn add(&mut self, f: &FlowRecord) {
        let minute = f.start_ms - f.start_ms % 60_000;
        let key = MinuteKey {
            minute,
            exporter: f.exporter,
            in_if: f.in_if,
            out_if: f.out_if,
            proto: f.proto,
            direction: f.direction as u8,
        };
        add(self.minutes.entry(key).or_default(), f);
        let hour = f.start_ms - f.start_ms % 3_600_000;
        let late = hour < self.forgotten_before;
        let h = self.hours.entry(hour).or_insert_with(|| HourTop {
            // Re-created after it was written and forgotten: its lists would cover only the late flows.
            inexact: [late; 4],
            ..HourTop::default()
        });
        h.dirty = true;
        h.flows += 1;
        let o = &mut self.hour_overflow;
        let pair = if f.src <= f.dst { (f.src, f.dst) } else { (f.dst, f.src) };
        h.inexact[top::SRC as usize] |= !bump(&mut h.src, f.src, f, o);
        h.inexact[top::DST as usize] |= !bump(&mut h.dst, f.dst, f, o);
        h.inexact[top::CONVERSATION as usize] |= !bump(&mut h.conversation, pair, f, o);
        h.inexact[top::DST_PORT as usize] |= !bump(&mut h.dst_port, (f.proto, f.dst_port), f, o);
    }

    /// Take the minute deltas as rows per dimension, sorted (oldest minute first).
    pub fn take_minute_rows(&mut self) -> Vec<MinuteRowDelta> {
        let mut rows: std::collections::HashMap<(u64, u8, Vec<u8>), Counts> = Default::default();
        let mut exporters: FxHashMap<std::net::SocketAddr, Vec<u8>> = FxHashMap::default();
        for (k, c) in self.minutes.drain() {
            let ex = exporters
                .entry(k.exporter)
                .or_insert_with(|| k.exporter.to_string().into_bytes())
                .clone();
            let iface = |idx: u32| {
                let mut v = ex.clone();
                v.push(b'#');
                v.extend_from_slice(idx.to_string().as_bytes());
                v
            };
            for key in [
                (k.minute, dim::TOTAL, Vec::new()),
                (k.minute, dim::EXPORTER, ex.clone()),
                (k.minute, dim::IN_INTERFACE, iface(k.in_if)),
                (k.minute, dim::OUT_INTERFACE, iface(k.out_if)),
                (k.minute, dim::PROTOCOL, vec![k.proto]),
                (k.minute, dim::DIRECTION, vec![k.direction]),
            ] {
                let e = rows.entry(key).or_default();
                e.0 += c.0;
                e.1 += c.1;
                e.2 += c.2;
            }
        }
        let mut rows: Vec<MinuteRowDelta> = rows.into_iter().collect();
        rows.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        rows
    }

    /// Hours whose top lists changed since they were written, at or after `floor`, oldest first.
    pub fn dirty_hours(&self, floor: u64) -> Vec<u64> {
        self.hours
            .iter()
            .filter(|(h, t)| t.dirty && **h >= floor)
            .map(|(h, _)| *h)
            .collect()
    }

    /// Whether an hour before `before` has unwritten changes (it closed: write it now).
    pub fn closed_dirty(&self, before: u64) -> bool {
        self.hours.range(..before).any(|(_, t)| t.dirty)
    }

    /// Write the top lists of these hours (rewriting what is stored for them),
    /// with the flows they cover; an inexact hour is marked so instead.
    pub fn write_hours(&self, txn: &redb::WriteTransaction, top_n: usize, hours: &[u64]) -> Result<(), redb::Error> {
        let mut t = txn.open_table(HOUR_TOP)?;
        let mut m = txn.open_table(ROLLUP_META)?;
        m.insert(meta::TOP_ENTRIES, top_n as u64)?;
        for hour in hours {
            let Some(h) = self.hours.get(hour) else { continue };
            for (kind, inexact) in h.inexact.iter().enumerate() {
                if *inexact {
                    m.insert(meta::inexact(*hour, kind as u8).as_str(), 1)?;
                }
            }
            if h.inexact.iter().all(|x| *x) {
                // Late flows: the lists would cover only them; keep what was written before.
                m.remove(meta::hour_flows(*hour).as_str())?;
                continue;
            }
            m.insert(meta::hour_flows(*hour).as_str(), h.flows)?;
            let mut put = |kind: u8, lists: [Vec<TopEntry>; 3]| -> Result<(), redb::Error> {
                for (m, list) in [metric::BYTES, metric::PACKETS, metric::FLOWS].into_iter().zip(lists) {
                    let bytes = postcard::to_stdvec(&list).unwrap_or_default();
                    t.insert((*hour, kind, m), bytes.as_slice())?;
                }
                Ok(())
            };
            put(top::SRC, tops(&h.src, top_n, ip_key))?;
            put(top::DST, tops(&h.dst, top_n, ip_key))?;
            put(top::CONVERSATION, tops(&h.conversation, top_n, |(a, b)| conversation_key(a, b)))?;
            put(
                top::DST_PORT,
                tops(&h.dst_port, top_n, |(p, port)| vec![*p, (port >> 8) as u8, *port as u8]),
            )?;
        }
        Ok(())
    }

    /// After the hours' commit: they are clean; hours that closed before
    /// `close_before` (or were trimmed, before `floor`) are forgotten once clean.
    pub fn hours_written(&mut self, hours: &[u64], close_before: u64, floor: u64) {
        for h in hours {
            if let Some(t) = self.hours.get_mut(h) {
                t.dirty = false;
            }
        }
        let before = self.hours.len();
        self.hours
            .retain(|&hour, t| hour >= floor && (t.dirty || hour + 3_600_000 >= close_before));
        if self.hours.len() != before {
            self.forgotten_before = self.forgotten_before.max(close_before.saturating_sub(3_600_000));
        }
    }

    /// Whether there are unwritten hour tops.
    pub fn hours_dirty(&self) -> bool {
        self.hours.values().any(|h| h.dirty)
    }
}

/// Top `n` by bytes, packets and flows; keys become bytes only for the winners.
fn tops<K: Ord>(map: &FxHashMap<K, Counts>, n: usize, key: impl Fn(&K) -> Vec<u8>) -> [Vec<TopEntry>; 3] {
    let pick = |m: u8, c: &Counts| match m {
        metric::BYTES => c.0,
        metric::PACKETS => c.1,
        _ => c.2,
    };
    [metric::BYTES, metric::PACKETS, metric::FLOWS].map(|m| {
        let mut v: Vec<(&K, &Counts)> = map.iter().collect();
        let by = |a: &(&K, &Counts), b: &(&K, &Counts)| pick(m, b.1).cmp(&pick(m, a.1)).then_with(|| a.0.cmp(b.0));
        if v.len() > n {
            v.select_nth_unstable_by(n, by);
            v.truncate(n);
        }
        v.sort_by(by);
        v.into_iter()
            .map(|(k, c)| TopEntry {
                key: key(k),
                bytes: c.0,
                packets: c.1,
                flows: c.2,
            })
            .collect()
    })
}

/// Delete roll-ups older than their retention (`now` is event time).
pub fn expire(txn: &redb::WriteTransaction, now: u64, minute_keep: u64, hour_keep: u64) -> Result<(), redb::Error> {
    let mcut = now.saturating_sub(minute_keep);
    let hcut = now.saturating_sub(hour_keep);
    txn.open_table(MINUTE)?.retain(|k, _| k.0 >= mcut)?;
    txn.open_table(HOUR_TOP)?.retain(|k, _| k.0 >= hcut)?;
    mark_complete_from(txn, mcut, hcut)
}

/// Raise the first minute and hour whose roll-ups are complete (after a trim
/// or an expiry), and forget the per-hour notes of hours gone.
pub fn mark_complete_from(txn: &redb::WriteTransaction, minute: u64, hour: u64) -> Result<(), redb::Error> {
    let mut m = txn.open_table(ROLLUP_META)?;
    for (key, v) in [(meta::MINUTES_FROM, minute), (meta::HOURS_FROM, hour)] {
        let old = m.get(key)?.map(|x| x.value()).unwrap_or(0);
        if v > old {
            m.insert(key, v)?;
        }
    }
    m.retain(|k, _| {
        let hour_of = |s: &str| s.split('/').nth(1).and_then(|h| h.parse::<u64>().ok());
        !(k.starts_with("hour_flows/") || k.starts_with("inexact/")) || hour_of(k).is_none_or(|h| h >= hour)
    })?;
    Ok(())
}

/// Delete the oldest `percent` of the rows of both roll-up tables (whole
/// minutes and hours, at least one of each), for a roll-up file at its share
/// of the budget. Returns the rows deleted and the first minute and hour kept.
pub fn trim_oldest(txn: &redb::WriteTransaction, percent: u64) -> Result<(u64, u64, u64), redb::Error> {
    use redb::ReadableTableMetadata;
    let mut deleted = 0;
    let mut minutes = txn.open_table(MINUTE)?;
    let n = (minutes.len()? * percent / 100).max(1);
    let mut cut = None;
    for row in minutes.iter()?.take(n as usize) {
        cut = Some(row?.0.value().0);
    }
    let mut minute_cut = 0;
    if let Some(cut) = cut {
        let before = minutes.len()?;
        minutes.retain_in((0u64, 0u8, &[][..])..(cut + 1, 0u8, &[][..]), |_, _| false)?;
        deleted += before - minutes.len()?;
        minute_cut = cut + 60_000;
    }
    let mut hours = txn.open_table(HOUR_TOP)?;
    let n = (hours.len()? * percent / 100).max(1);
    let mut cut = None;
    for row in hours.iter()?.take(n as usize) {
        cut = Some(row?.0.value().0);
    }
    let mut hour_cut = 0;
    if let Some(cut) = cut {
        let before = hours.len()?;
        hours.retain_in((0u64, 0u8, 0u8)..(cut + 1, 0u8, 0u8), |_, _| false)?;
        deleted += before - hours.len()?;
        hour_cut = cut + 3_600_000;
    }
    drop((minutes, hours));
    mark_complete_from(txn, minute_cut, hour_cut)?;
    Ok((deleted, minute_cut, hour_cut))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flow::Direction;
    use redb::{ReadableDatabase, ReadableTable};

    fn flow(start_ms: u64, direction: Direction, bytes: u64) -> FlowRecord {
        FlowRecord {
            start_ms,
            end_ms: start_ms,
            bytes,
            packets: 1,
            direction,
            ..FlowRecord::default()
        }
    }

    fn rows(db: &redb::Database, kind: u8) -> Vec<(u64, Vec<u8>, Counts)> {
        let txn = db.begin_read().unwrap_or_else(|e| panic!("{e}"));
        let t = txn.open_table(MINUTE).unwrap_or_else(|e| panic!("{e}"));
        t.iter()
            .unwrap_or_else(|e| panic!("{e}"))
            .filter_map(Result::ok)
            .filter_map(|(k, v)| {
                let (m, kd, key) = k.value();
                (kd == kind).then(|| (m, key.to_vec(), v.value()))
            })
            .collect()
    }

    fn directions_from(db: &redb::Database) -> Option<u64> {
        let txn = db.begin_read().unwrap_or_else(|e| panic!("{e}"));
        let t = txn.open_table(ROLLUP_META).unwrap_or_else(|e| panic!("{e}"));
        t.get(meta::DIRECTIONS_FROM).unwrap_or_else(|e| panic!("{e}")).map(|v| v.value())
    }

    fn write(db: &redb::Database, agg: &mut RollupAgg) {
        let txn = db.begin_write().unwrap_or_else(|e| panic!("{e}"));
        let r = agg.take_minute_rows();
        write_minute_rows(&txn, r.iter()).unwrap_or_else(|e| panic!("{e}"));
        txn.commit().unwrap_or_else(|e| panic!("{e}"));
    }

    #[test]
    fn minutes_count_each_direction_and_a_fresh_file_has_them_all() {
        let d = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let db = redb::Database::create(d.path().join("r.redb")).unwrap_or_else(|e| panic!("{e}"));
        let mut agg = RollupAgg::default();
        let m = 1_790_506_800_000;
        agg.add(&flow(m + 1, Direction::Outbound, 100));
        agg.add(&flow(m + 2, Direction::Outbound, 50));
        agg.add(&flow(m + 3, Direction::Inbound, 7));
        write(&db, &mut agg);
        assert_eq!(directions_from(&db), Some(0));
        let r = rows(&db, dim::DIRECTION);
        assert_eq!(
            r,
            vec![
                (m, vec![Direction::Outbound as u8], (150, 2, 2)),
                (m, vec![Direction::Inbound as u8], (7, 1, 1)),
            ]
        );
        // The totals are untouched by the new dimension.
        assert_eq!(rows(&db, dim::TOTAL), vec![(m, vec![], (157, 3, 3))]);
    }

    #[test]
    fn a_file_from_before_directions_has_them_from_the_minute_after_its_last() {
        let d = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let db = redb::Database::create(d.path().join("r.redb")).unwrap_or_else(|e| panic!("{e}"));
        let m = 1_790_506_800_000;
        // What an older version left: a total row for minute m and no meta key.
        let txn = db.begin_write().unwrap_or_else(|e| panic!("{e}"));
        {
            let mut t = txn.open_table(MINUTE).unwrap_or_else(|e| panic!("{e}"));
            t.insert((m, dim::TOTAL, &[][..]), (10, 1, 1)).unwrap_or_else(|e| panic!("{e}"));
        }
        txn.commit().unwrap_or_else(|e| panic!("{e}"));
        let mut agg = RollupAgg::default();
        agg.add(&flow(m + 5, Direction::Inbound, 3));
        agg.add(&flow(m + 60_000, Direction::Inbound, 4));
        write(&db, &mut agg);
        // Minute m holds rows without direction: it is not complete.
        assert_eq!(directions_from(&db), Some(m + 60_000));
        // Later writes keep the mark.
        agg.add(&flow(m + 120_000, Direction::Outbound, 5));
        write(&db, &mut agg);
        assert_eq!(directions_from(&db), Some(m + 60_000));
    }
}
