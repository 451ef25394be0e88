//! Roll-ups: per-minute totals (overall, per exporter, per interface, per
//! protocol) and per-hour top-N (sources, destinations, conversations,
//! destination ports by bytes, packets and flows).
//!
//! The writer folds every committed flow into a [`RollupAgg`]; minute deltas
//! are merged into `rollups.redb` with each commit, hour tops are rewritten
//! periodically and when an hour closes on event time. Maps are bounded and
//! count what they could not hold.

use crate::flow::FlowRecord;
use crate::store::schema::{HOUR_TOP, MINUTE, dim, metric, top};
use redb::ReadableTable;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
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

#[derive(Debug, Default)]
struct HourTop {
    kinds: [HashMap<Vec<u8>, Counts>; 4],
    dirty: bool,
}

/// In-memory aggregation between commits.
#[derive(Debug, Default)]
pub struct RollupAgg {
    minutes: HashMap<(u64, u8, Vec<u8>), Counts>,
    hours: BTreeMap<u64, HourTop>,
    /// Contributions not counted in an hour top because its map was full.
    pub hour_overflow: u64,
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

fn add(c: &mut Counts, f: &FlowRecord) {
    c.0 += f.bytes;
    c.1 += f.packets;
    c.2 += 1;
}

impl RollupAgg {
    /// Fold one flow in.
    pub fn add(&mut self, f: &FlowRecord) {
        let minute = f.start_ms - f.start_ms % 60_000;
        let exporter = f.exporter.to_string().into_bytes();
        let mut iface = |kind: u8, idx: u32| {
            let mut k = exporter.clone();
            k.push(b'#');
            k.extend_from_slice(idx.to_string().as_bytes());
            add(self.minutes.entry((minute, kind, k)).or_default(), f);
        };
        iface(dim::IN_INTERFACE, f.in_if);
        iface(dim::OUT_INTERFACE, f.out_if);
        add(self.minutes.entry((minute, dim::TOTAL, Vec::new())).or_default(), f);
        add(self.minutes.entry((minute, dim::EXPORTER, exporter)).or_default(), f);
        add(self.minutes.entry((minute, dim::PROTOCOL, vec![f.proto])).or_default(), f);

        let hour = f.start_ms - f.start_ms % 3_600_000;
        let h = self.hours.entry(hour).or_default();
        h.dirty = true;
        let src = ip_key(&f.src);
        let dst = ip_key(&f.dst);
        let mut conv = vec![src.len() as u8];
        conv.extend_from_slice(&src);
        conv.extend_from_slice(&dst);
        let port = vec![f.proto, (f.dst_port >> 8) as u8, f.dst_port as u8];
        for (kind, key) in [(top::SRC, src), (top::DST, dst), (top::CONVERSATION, conv), (top::DST_PORT, port)] {
            let map = &mut h.kinds[kind as usize];
            if let Some(c) = map.get_mut(&key) {
                add(c, f);
            } else if map.len() < HOUR_KEYS_CAP {
                let mut c = Counts::default();
                add(&mut c, f);
                map.insert(key, c);
            } else {
                self.hour_overflow += 1;
            }
        }
    }

    /// Merge minute deltas into the table.
    pub fn write_minutes(&mut self, txn: &redb::WriteTransaction) -> Result<(), redb::Error> {
        let mut t = txn.open_table(MINUTE)?;
        for ((m, kind, key), (b, p, n)) in &self.minutes {
            let old = t.get((*m, *kind, key.as_slice()))?.map(|v| v.value()).unwrap_or_default();
            t.insert((*m, *kind, key.as_slice()), (old.0 + b, old.1 + p, old.2 + n))?;
        }
        Ok(())
    }

    /// Forget minute deltas (after they were written, or given up on).
    pub fn clear_minutes(&mut self) {
        self.minutes.clear();
    }

    /// Rewrite the top lists of changed hours; forget hours that closed before `close_before`.
    pub fn write_hours(&mut self, txn: &redb::WriteTransaction, top_n: usize, close_before: u64) -> Result<(), redb::Error> {
        let mut t = txn.open_table(HOUR_TOP)?;
        for (&hour, h) in self.hours.iter_mut().filter(|(_, h)| h.dirty) {
            for kind in 0..4u8 {
                let map = &h.kinds[kind as usize];
                for (m, pick) in [
                    (metric::BYTES, (|c: &Counts| c.0) as fn(&Counts) -> u64),
                    (metric::PACKETS, |c: &Counts| c.1),
                    (metric::FLOWS, |c: &Counts| c.2),
                ] {
                    let list = top_of(map, top_n, pick);
                    let bytes = postcard::to_stdvec(&list).unwrap_or_default();
                    t.insert((hour, kind, m), bytes.as_slice())?;
                }
            }
            h.dirty = false;
        }
        self.hours.retain(|&hour, _| hour + 3_600_000 >= close_before);
        Ok(())
    }

    /// Whether there are unwritten hour tops.
    pub fn hours_dirty(&self) -> bool {
        self.hours.values().any(|h| h.dirty)
    }
}

fn top_of(map: &HashMap<Vec<u8>, Counts>, n: usize, pick: fn(&Counts) -> u64) -> Vec<TopEntry> {
    let mut v: Vec<(&Vec<u8>, &Counts)> = map.iter().collect();
    let by = |a: &(&Vec<u8>, &Counts), b: &(&Vec<u8>, &Counts)| pick(b.1).cmp(&pick(a.1)).then_with(|| a.0.cmp(b.0));
    if v.len() > n {
        v.select_nth_unstable_by(n, by);
        v.truncate(n);
    }
    v.sort_by(by);
    v.into_iter()
        .map(|(k, c)| TopEntry {
            key: k.clone(),
            bytes: c.0,
            packets: c.1,
            flows: c.2,
        })
        .collect()
}

/// Delete roll-ups older than their retention (`now` is event time).
pub fn expire(txn: &redb::WriteTransaction, now: u64, minute_keep: u64, hour_keep: u64) -> Result<(), redb::Error> {
    let mcut = now.saturating_sub(minute_keep);
    let hcut = now.saturating_sub(hour_keep);
    txn.open_table(MINUTE)?.retain(|k, _| k.0 >= mcut)?;
    txn.open_table(HOUR_TOP)?.retain(|k, _| k.0 >= hcut)?;
    Ok(())
}
