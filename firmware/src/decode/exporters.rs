//! Per-exporter health: what each router sent, what was lost and why.
//!
//! Updated by the decoder for every datagram, snapshotted into the state
//! database by the store writer, and printed by `flowwarden exporters`.

use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::net::SocketAddr;

/// How late an exporter's flows arrive: maxima over the current and the previous
/// 5-minute window (by arrival time), so one old flow ages out.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Lag {
    window_start_ms: u64,
    cur: (u64, u64),
    prev: (u64, u64),
}

impl Lag {
    const WINDOW_MS: u64 = 300_000;

    fn note(&mut self, arrival_ms: u64, held_ms: u64, delay_ms: u64) {
        if arrival_ms >= self.window_start_ms + Self::WINDOW_MS {
            // A silent window in between leaves nothing to carry over.
            self.prev = if arrival_ms < self.window_start_ms + 2 * Self::WINDOW_MS {
                self.cur
            } else {
                (0, 0)
            };
            self.cur = (0, 0);
            self.window_start_ms = arrival_ms - arrival_ms % Self::WINDOW_MS;
        }
        self.cur = (self.cur.0.max(held_ms), self.cur.1.max(delay_ms));
    }

    pub fn held_ms(&self) -> u64 {
        self.cur.0.max(self.prev.0)
    }

    pub fn delay_ms(&self) -> u64 {
        self.cur.1.max(self.prev.1)
    }
}

/// Counters for one exporter (transport address).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ExporterStats {
    pub exporter: String,
    /// Label from the config's `[[exporter]] name`.
    pub name: Option<String>,
    /// Export protocol versions seen (5, 7, 9, 10) as a bit set: bit n = version n.
    pub versions: u16,
    pub packets: u64,
    pub records: u64,
    pub templates: u64,
    pub options_templates: u64,
    pub options_records: u64,
    /// Data sets whose template was unknown when they arrived.
    pub sets_without_template: u64,
    /// Data sets held by the parser until their template arrives.
    pub pending_held: u64,
    /// Of those, replayed once the template arrived.
    pub pending_replayed: u64,
    /// Of those, expired or evicted before their template arrived.
    pub pending_dropped: u64,
    /// Sequence discontinuities seen.
    pub sequence_gaps: u64,
    /// Estimated records lost in those gaps.
    pub lost_records: u64,
    /// v9 datagrams cut before trailing padding or a damaged flowset.
    pub trailing_garbage: u64,
    /// Datagrams that failed to decode (fully or partly).
    pub malformed: u64,
    /// Last decode error text, for the technician.
    pub last_error: Option<String>,
    /// Arrival time of the last datagram, UTC ms.
    pub last_seen_ms: u64,
    /// Exporter clock minus arrival time, ms (positive: exporter ahead).
    pub clock_offset_ms: i64,
    /// Sampling rate last applied to this exporter's records.
    pub sampling_rate: u32,
    /// Flows whose times were implausible and were clamped to the export time.
    pub time_clamped: u64,
    /// The original end time of the last clamped flow, UTC ms.
    pub last_clamped_ms: Option<u64>,
    /// Export lag when the snapshot was taken: the longest time, in seconds,
    /// from a flow's first packet and from its last packet to its export over
    /// the 5-10 min before (None: no flows in them). Stored after the row's
    /// first layout by `rows.rs` (postcard cannot add a field), hence skipped
    /// here; the page and the CLI put it in their JSON themselves.
    #[serde(skip)]
    pub export_lag_s: Option<(u64, u64)>,
}

/// Sequence tracking state for one (exporter, domain, version) stream.
#[derive(Debug, Clone, Copy)]
struct SeqState {
    next: u32,
}

/// Bounded table of exporters and their sequence streams.
#[derive(Debug)]
pub struct ExporterTable {
    stats: HashMap<SocketAddr, ExporterStats>,
    seq: HashMap<(SocketAddr, u32, u8), SeqState>,
    /// How late each exporter's flows arrive (live only; one entry per exporter in `stats`).
    lag: HashMap<SocketAddr, Lag>,
    cap: usize,
    /// Exporters dropped from the table because `cap` was reached.
    pub evicted: u64,
}

impl ExporterTable {
    pub fn new(cap: usize) -> Self {
        ExporterTable {
            stats: HashMap::new(),
            seq: HashMap::new(),
            lag: HashMap::new(),
            cap,
            evicted: 0,
        }
    }

    /// Restore a persisted snapshot.
    pub fn restore(&mut self, saved: Vec<ExporterStats>) {
        for s in saved {
            if let Ok(addr) = s.exporter.parse::<SocketAddr>()
                && self.stats.len() < self.cap
            {
                self.stats.insert(addr, s);
            }
        }
    }

    /// The entry for `addr`, created (evicting the stalest one if full).
    pub fn entry(&mut self, addr: SocketAddr) -> &mut ExporterStats {
        if !self.stats.contains_key(&addr)
            && self.stats.len() >= self.cap
            && let Some(oldest) = self.stats.iter().min_by_key(|(_, s)| s.last_seen_ms).map(|(a, _)| *a)
        {
            self.stats.remove(&oldest);
            self.seq.retain(|k, _| k.0 != oldest);
            self.lag.remove(&oldest);
            self.evicted += 1;
        }
        self.stats.entry(addr).or_insert_with(|| ExporterStats {
            exporter: addr.to_string(),
            ..ExporterStats::default()
        })
    }

    /// Record a sequence number. `units` is what one step of the sequence
    /// counts in this datagram (records for v5/IPFIX, 1 packet for v9);
    /// `per_unit` converts a gap into an estimate of lost records.
    pub fn sequence(&mut self, addr: SocketAddr, domain: u32, version: u8, seq: u32, units: u32, per_unit: u32) {
        let key = (addr, domain, version);
        let next = seq.wrapping_add(units);
        let gap = match self.seq.get(&key) {
            Some(st) => {
                let d = seq.wrapping_sub(st.next);
                // Treat backwards jumps (reordering, restarts) as no loss.
                if d != 0 && d < 1 << 31 { Some(d) } else { None }
            }
            None => None,
        };
        if self.seq.len() < self.cap * 8 || self.seq.contains_key(&key) {
            self.seq.insert(key, SeqState { next });
        }
        if let Some(d) = gap {
            let e = self.entry(addr);
            e.sequence_gaps += 1;
            e.lost_records += d as u64 * per_unit.max(1) as u64;
        }
    }

    /// Record a sequence number of a datagram whose record count is unknown (it
    /// held sets for a template not yet known): a gap before it still counts,
    /// and the next datagram starts a fresh expectation.
    pub fn sequence_unknown(&mut self, addr: SocketAddr, domain: u32, version: u8, seq: u32) {
        self.sequence(addr, domain, version, seq, 0, 1);
        self.seq.remove(&(addr, domain, version));
    }

    /// One datagram's flows: the longest time from a flow's first packet to the
    /// export (`held_ms`) and from its last packet to the export (`delay_ms`).
    pub fn note_lag(&mut self, addr: SocketAddr, arrival_ms: u64, held_ms: u64, delay_ms: u64) {
        if !self.stats.contains_key(&addr) {
            return;
        }
        self.lag.entry(addr).or_default().note(arrival_ms, held_ms, delay_ms);
    }

    /// Each exporter's export lag over the last 5-10 minutes: (address, held, delay) in ms.
    pub fn lags(&self) -> Vec<(String, u64, u64)> {
        let mut v: Vec<(String, u64, u64)> = self.lag.iter().map(|(a, l)| (a.to_string(), l.held_ms(), l.delay_ms())).collect();
        v.sort();
        v
    }

    /// All exporters, sorted by address, with their export lag.
    pub fn snapshot(&self) -> Vec<ExporterStats> {
        let mut v: Vec<ExporterStats> = self
            .stats
            .iter()
            .map(|(a, s)| ExporterStats {
                export_lag_s: self
                    .lag
                    .get(a)
                    .filter(|l| l.held_ms() > 0 || l.delay_ms() > 0)
                    .map(|l| (l.held_ms() / 1000, l.delay_ms() / 1000))
                    // Nothing heard since a restart: as it was when last seen.
                    .or(s.export_lag_s),
                ..s.clone()
            })
            .collect();
        v.sort_by(|a, b| a.exporter.cmp(&b.exporter));
        v
    }

    pub fn get(&self, addr: &SocketAddr) -> Option<&ExporterStats> {
        self.stats.get(addr)
    }

    /// An existing entry (never creates or evicts).
    pub fn get_mut(&mut self, addr: &SocketAddr) -> Option<&mut ExporterStats> {
        self.stats.get_mut(addr)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn export_lag_is_the_maximum_of_the_last_windows_and_ages_out() {
        let a: SocketAddr = "192.0.2.1:2055".parse().unwrap();
        let mut t = ExporterTable::new(4);
        t.note_lag(a, 1_000, 5_000, 1_000);
        assert!(t.lags().is_empty(), "no entry for an exporter the table does not know");
        t.entry(a);
        let base = 1_800_000_000_000u64;
        t.note_lag(a, base, 1_800_000, 15_000); // a 30-minute active timeout
        t.note_lag(a, base + 1_000, 60_000, 2_000);
        assert_eq!(t.lags(), vec![(a.to_string(), 1_800_000, 15_000)]);
        // The next window still shows it; the one after that no longer.
        t.note_lag(a, base + 300_000, 60_000, 2_000);
        assert_eq!(t.lags()[0].1, 1_800_000);
        t.note_lag(a, base + 600_000, 60_000, 2_000);
        assert_eq!(t.lags()[0].1, 60_000);
        // After a long silence the old window is gone too.
        t.note_lag(a, base + 3_600_000, 1_000, 500);
        assert_eq!(t.lags(), vec![(a.to_string(), 1_000, 500)]);
    }

    #[test]
    fn sequence_gaps_estimate_lost_records() {
        let a = SocketAddr::from(([192, 0, 2, 1], 2055));
        let mut t = ExporterTable::new(4);
        t.sequence(a, 0, 5, 100, 30, 1); // next expected 130
        t.sequence(a, 0, 5, 130, 30, 1); // in order
        t.sequence(a, 0, 5, 190, 30, 1); // 30 lost
        t.sequence(a, 0, 5, 150, 30, 1); // reordered: not counted
        let s = t.get(&a).cloned().unwrap_or_default();
        assert_eq!((s.sequence_gaps, s.lost_records), (1, 30));
    }

    #[test]
    fn table_is_bounded_and_counts_evictions() {
        let mut t = ExporterTable::new(2);
        for i in 0..5u8 {
            let e = t.entry(SocketAddr::from(([10, 0, 0, i], 1)));
            e.last_seen_ms = i as u64;
        }
        assert_eq!(t.snapshot().len(), 2);
        assert_eq!(t.evicted, 3);
    }
}
