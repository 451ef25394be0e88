//! Learned baselines: hourly history per internal host, per site and per
//! exporter interface, and the robust hour-of-week / hour-of-day statistics
//! the exfiltration and spike detectors compare against.
//!
//! Each series keeps a dense ring of hourly samples (bytes out and in to/from
//! external networks, connections initiated, distinct external peers) for
//! `history_days`; hours without traffic are zeros, so a quiet night is part of
//! the baseline. Statistics for hour H use the same hour of previous weeks once
//! `min_week_samples` exist, else the same hour of previous days (hour-of-day
//! fallback). A series is learned once its history spans the learning period.
//! Series are persisted (postcard) in the state database and survive restarts.

use super::stats::median_mad;
use crate::fasthash::{FxHashMap as HashMap, FxHashSet as HashSet};
use serde::{Deserialize, Serialize};
use std::net::{IpAddr, SocketAddr};

pub const HOUR_MS: u64 = 3_600_000;

/// Metrics kept per hour.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Metric {
    BytesOut = 0,
    BytesIn = 1,
    Flows = 2,
    Peers = 3,
}

/// One hour of one series. Bytes in KiB (saturating) to keep history small.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HourSample(pub [u32; 4]);

impl HourSample {
    pub fn from_counts(c: &HourCounts) -> HourSample {
        let kib = |b: u64| u32::try_from(b / 1024).unwrap_or(u32::MAX);
        HourSample([
            kib(c.bytes_out),
            kib(c.bytes_in),
            u32::try_from(c.flows).unwrap_or(u32::MAX),
            u32::try_from(c.peers).unwrap_or(u32::MAX),
        ])
    }

    /// The metric in its natural unit (bytes for byte metrics).
    pub fn get(&self, m: Metric) -> f64 {
        let v = f64::from(self.0[m as usize]);
        match m {
            Metric::BytesOut | Metric::BytesIn => v * 1024.0,
            _ => v,
        }
    }
}

/// Running totals of the open hour (or bucket) of one series.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HourCounts {
    pub bytes_out: u64,
    pub bytes_in: u64,
    pub flows: u64,
    pub peers: u64,
}

impl HourCounts {
    pub fn get(&self, m: Metric) -> f64 {
        match m {
            Metric::BytesOut => self.bytes_out as f64,
            Metric::BytesIn => self.bytes_in as f64,
            Metric::Flows => self.flows as f64,
            Metric::Peers => self.peers as f64,
        }
    }
}

/// Dense hourly history of one series.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct History {
    /// Hour number (ms / HOUR_MS) of the first hour ever seen (learning start).
    pub first_hour: u64,
    /// Hour number of `samples[0]`.
    pub start_hour: u64,
    pub samples: std::collections::VecDeque<HourSample>,
}

/// Where a baseline value came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Basis {
    HourOfWeek,
    HourOfDay,
}

impl Basis {
    pub fn as_str(self) -> &'static str {
        match self {
            Basis::HourOfWeek => "hour-of-week",
            Basis::HourOfDay => "hour-of-day",
        }
    }
}

/// Median and MAD of one metric for one hour, with how many samples and which basis.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Expected {
    pub median: f64,
    pub mad: f64,
    pub samples: usize,
    pub basis: Basis,
}

impl History {
    pub fn new(hour: u64) -> History {
        History {
            first_hour: hour,
            start_hour: hour,
            samples: Default::default(),
        }
    }

    /// Hour after the last stored one.
    pub fn end_hour(&self) -> u64 {
        self.start_hour + self.samples.len() as u64
    }

    /// Store the closed hour `hour` (zeros fill any gap; older hours fall off).
    pub fn push(&mut self, hour: u64, s: HourSample, capacity: usize) {
        if hour < self.end_hour() {
            // A late close of an hour already stored: add into it.
            if let Some(old) = hour.checked_sub(self.start_hour).and_then(|i| self.samples.get_mut(i as usize)) {
                for (a, b) in old.0.iter_mut().zip(s.0) {
                    *a = a.saturating_add(b);
                }
            }
            return;
        }
        let gap = hour - self.end_hour();
        if gap as usize >= capacity {
            self.samples.clear();
            self.start_hour = hour;
        } else {
            for _ in 0..gap {
                self.samples.push_back(HourSample::default());
            }
        }
        if self.samples.is_empty() {
            self.start_hour = hour;
        }
        self.samples.push_back(s);
        while self.samples.len() > capacity {
            self.samples.pop_front();
            self.start_hour += 1;
        }
    }

    fn at(&self, hour: u64) -> Option<HourSample> {
        if hour < self.start_hour {
            return None;
        }
        if hour >= self.end_hour() {
            // Known series, no traffic since: zero.
            return Some(HourSample::default());
        }
        self.samples.get((hour - self.start_hour) as usize).copied()
    }

    /// Whether the history spans the learning period at `hour`.
    pub fn learned(&self, hour: u64, learning_hours: u64) -> bool {
        hour.saturating_sub(self.first_hour) >= learning_hours && !self.samples.is_empty()
    }

    /// Baseline of `m` for hour `hour` from hours before it.
    pub fn expected(&self, hour: u64, m: Metric, min_week_samples: usize) -> Option<Expected> {
        let collect = |step: u64| -> Vec<f64> {
            let mut v = Vec::new();
            let mut h = hour;
            while h >= step + self.start_hour {
                h -= step;
                if let Some(s) = self.at(h) {
                    v.push(s.get(m));
                }
            }
            v
        };
        let weekly = collect(168);
        let (values, basis) = if weekly.len() >= min_week_samples {
            (weekly, Basis::HourOfWeek)
        } else {
            (collect(24), Basis::HourOfDay)
        };
        if values.is_empty() {
            return None;
        }
        let (median, mad) = median_mad(&values);
        Some(Expected {
            median,
            mad,
            samples: values.len(),
            basis,
        })
    }

    /// The largest hour-of-day median of `m` (the busiest hour), for "off-hours".
    pub fn busiest_hour_median(&self, m: Metric, now_hour: u64) -> f64 {
        (0..24)
            .filter_map(|d| self.expected(now_hour + d, m, usize::MAX).map(|e| e.median))
            .fold(0.0, f64::max)
    }
}

/// Identity of a baselined series.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum SeriesKey {
    Site,
    Host(IpAddr),
    Interface(SocketAddr, u32),
}

impl SeriesKey {
    /// Key in the state database.
    pub fn state_key(&self) -> String {
        match self {
            SeriesKey::Site => "baseline/site".into(),
            SeriesKey::Host(ip) => format!("baseline/host/{ip}"),
            SeriesKey::Interface(e, i) => format!("baseline/if/{e}/{i}"),
        }
    }

    pub fn label(&self) -> String {
        match self {
            SeriesKey::Site => "site".into(),
            SeriesKey::Host(ip) => format!("host {ip}"),
            SeriesKey::Interface(e, i) => format!("interface {i} of exporter {e}"),
        }
    }
}

/// A host's remembered external destinations (for "new destination").
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Peers {
    /// Destination -> last hour seen, at most `cap` entries.
    pub list: HashMap<IpAddr, u64>,
    /// Ports the host has used towards external destinations -> last hour.
    pub ports: HashMap<u16, u64>,
}

impl Peers {
    /// Record a contact; returns whether the destination was new.
    pub fn touch(&mut self, ip: IpAddr, hour: u64, cap: usize) -> bool {
        touch_lru(&mut self.list, ip, hour, cap)
    }

    /// Record a port; returns whether it was new.
    pub fn touch_port(&mut self, port: u16, hour: u64, cap: usize) -> bool {
        touch_lru(&mut self.ports, port, hour, cap)
    }
}

fn touch_lru<T: Eq + std::hash::Hash + Copy + Ord>(list: &mut HashMap<T, u64>, v: T, hour: u64, cap: usize) -> bool {
    if let Some(e) = list.get_mut(&v) {
        *e = hour;
        return false;
    }
    if list.len() >= cap.max(1) {
        // Forget the least recently seen half at once (one sort per cap/2 new
        // entries; ties broken by value, so it is deterministic).
        let mut v: Vec<(u64, T)> = list.iter().map(|(k, h)| (*h, *k)).collect();
        v.sort_unstable();
        for (_, k) in v.iter().take(list.len().div_ceil(2)) {
            list.remove(k);
        }
    }
    list.insert(v, hour);
    true
}

/// Persisted form of one series.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SeriesState {
    pub history: History,
    pub peers: Peers,
    pub last_active_hour: u64,
    /// Totals of the open hour (not persisted: a restart closes it).
    #[serde(skip)]
    pub open: Option<HourCounts>,
}

/// All baselined series with their open hour.
#[derive(Debug, Default)]
pub struct Baselines {
    pub series: HashMap<SeriesKey, SeriesState>,
    /// Series of each kind (hosts, interfaces), kept for the caps.
    hosts: usize,
    interfaces: usize,
    /// Distinct external peers of each host in the open hour (capped).
    pub open_peers: HashMap<IpAddr, HashSet<IpAddr>>,
    /// Distinct external peers of the whole site in the open hour (capped).
    pub site_peers: HashSet<IpAddr>,
    pub dirty: HashSet<SeriesKey>,
    pub evicted: u64,
}

/// Distinct peers counted per host and hour before the count saturates.
const PEERS_PER_HOUR: usize = 512;
const SITE_PEERS_PER_HOUR: usize = 65_536;

impl Baselines {
    /// Add traffic of the open hour. Returns false when the series could not be
    /// tracked (cap reached even after evicting; counted by the caller).
    pub fn add(&mut self, key: SeriesKey, hour: u64, f: impl FnOnce(&mut HourCounts), caps: (usize, usize)) -> bool {
        if let Some(s) = self.series.get_mut(&key) {
            s.last_active_hour = hour;
            f(s.open.get_or_insert_with(HourCounts::default));
            return true;
        }
        let (cap, count) = match key {
            SeriesKey::Site => (usize::MAX, 0),
            SeriesKey::Host(_) => (caps.0, self.hosts),
            SeriesKey::Interface(..) => (caps.1, self.interfaces),
        };
        if count >= cap && !self.evict_one(key) {
            return false;
        }
        let mut open = HourCounts::default();
        f(&mut open);
        self.insert(
            key,
            SeriesState {
                history: History::new(hour),
                peers: Peers::default(),
                last_active_hour: hour,
                open: Some(open),
            },
        );
        true
    }

    fn insert(&mut self, key: SeriesKey, s: SeriesState) {
        if self.series.insert(key, s).is_none() {
            match key {
                SeriesKey::Host(_) => self.hosts += 1,
                SeriesKey::Interface(..) => self.interfaces += 1,
                SeriesKey::Site => {}
            }
        }
    }

    /// Totals of the open hour of a series.
    pub fn open_counts(&self, key: &SeriesKey) -> Option<&HourCounts> {
        self.series.get(key)?.open.as_ref()
    }

    /// Evict the least recently active series of the same kind as `like`.
    fn evict_one(&mut self, like: SeriesKey) -> bool {
        let same = |k: &SeriesKey| std::mem::discriminant(k) == std::mem::discriminant(&like);
        let victim = self
            .series
            .iter()
            .filter(|(k, _)| same(k))
            .min_by_key(|(_, s)| s.last_active_hour)
            .map(|(k, _)| *k);
        match victim {
            Some(k) => {
                self.series.remove(&k);
                match k {
                    SeriesKey::Host(_) => self.hosts -= 1,
                    SeriesKey::Interface(..) => self.interfaces -= 1,
                    SeriesKey::Site => {}
                }
                self.evicted += 1;
                true
            }
            None => false,
        }
    }

    /// Count a distinct external peer of `host` (and of the site) in the open hour.
    pub fn add_peer(&mut self, host: IpAddr, peer: IpAddr) {
        let list = self.open_peers.entry(host).or_default();
        if list.len() < PEERS_PER_HOUR
            && list.insert(peer)
            && let Some(c) = self.series.get_mut(&SeriesKey::Host(host)).and_then(|s| s.open.as_mut())
        {
            c.peers += 1;
        }
        if self.site_peers.len() < SITE_PEERS_PER_HOUR
            && self.site_peers.insert(peer)
            && let Some(c) = self.series.get_mut(&SeriesKey::Site).and_then(|s| s.open.as_mut())
        {
            c.peers += 1;
        }
    }

    /// Close hour `hour`: every open series becomes a sample.
    pub fn close_hour(&mut self, hour: u64, capacity: usize) {
        self.open_peers.clear();
        self.site_peers.clear();
        for (k, s) in self.series.iter_mut() {
            if let Some(c) = s.open.take() {
                s.history.push(hour, HourSample::from_counts(&c), capacity);
                self.dirty.insert(*k);
            }
        }
    }

    /// Baseline of a series for `hour`, if it exists and is learned.
    pub fn expected(&self, key: &SeriesKey, hour: u64, m: Metric, learning_hours: u64, min_week: usize) -> Option<Expected> {
        let s = self.series.get(key)?;
        if !s.history.learned(hour, learning_hours) {
            return None;
        }
        s.history.expected(hour, m, min_week)
    }

    /// Serialized dirty series (state key, postcard bytes), clearing the dirty set.
    pub fn take_dirty(&mut self) -> Vec<(String, Vec<u8>)> {
        let dirty = std::mem::take(&mut self.dirty);
        dirty
            .into_iter()
            .filter_map(|k| {
                let s = self.series.get(&k)?;
                let bytes = postcard::to_stdvec(&(k, s)).ok()?;
                Some((k.state_key(), bytes))
            })
            .collect()
    }

    /// Restore one persisted series (ignored if it does not decode: the schema moved on).
    pub fn restore(&mut self, bytes: &[u8]) -> bool {
        match postcard::from_bytes::<(SeriesKey, SeriesState)>(bytes) {
            Ok((k, s)) => {
                self.insert(k, s);
                true
            }
            Err(_) => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(out_kib: u32) -> HourSample {
        HourSample([out_kib, 0, 0, 0])
    }

    #[test]
    fn gaps_are_zero_and_capacity_holds() {
        let mut h = History::new(100);
        h.push(100, sample(5), 10);
        h.push(103, sample(7), 10);
        assert_eq!(h.samples.len(), 4);
        assert_eq!(h.at(101), Some(HourSample::default()));
        assert_eq!(h.at(103), Some(sample(7)));
        assert_eq!(h.at(200), Some(HourSample::default()));
        for i in 104..130 {
            h.push(i, sample(1), 10);
        }
        assert_eq!(h.samples.len(), 10);
        assert_eq!(h.start_hour, 120);
        assert_eq!(h.first_hour, 100);
    }

    #[test]
    fn hour_of_day_then_hour_of_week() {
        let mut h = History::new(0);
        // 10 days: hour 2 of each day uploads 1000 KiB, other hours 10 KiB.
        for hour in 0..240u64 {
            h.push(hour, sample(if hour % 24 == 2 { 1000 } else { 10 }), 24 * 28);
        }
        let e = h.expected(242, Metric::BytesOut, 3);
        let e = e.unwrap_or_else(|| panic!("no baseline"));
        assert_eq!(e.basis, Basis::HourOfDay);
        assert_eq!(e.samples, 10);
        assert_eq!(e.median, 1000.0 * 1024.0);
        assert_eq!(e.mad, 0.0);
        // After 3 weeks, the same hour of week: 3 samples.
        for hour in 240..(24 * 22) {
            h.push(hour, sample(if hour % 168 == 5 { 50 } else { 10 }), 24 * 28);
        }
        let e = h.expected(24 * 22 + 5 - (24 * 22) % 168 + 168, Metric::BytesOut, 3);
        let e = e.unwrap_or_else(|| panic!("no baseline"));
        // Same hour of week: 509, 341 (50 KiB each), 173, 5 (10 KiB, before the change).
        assert_eq!(e.basis, Basis::HourOfWeek);
        assert_eq!(e.samples, 4);
        assert_eq!(e.median, 30.0 * 1024.0);
        assert!(h.learned(24 * 7, 24 * 7) && !h.learned(24 * 7 - 1, 24 * 7));
    }

    #[test]
    fn hosts_are_capped_and_eviction_counted() {
        let mut b = Baselines::default();
        for i in 0..5u8 {
            let ok = b.add(SeriesKey::Host(IpAddr::from([10, 0, 0, i])), u64::from(i), |c| c.flows += 1, (3, 3));
            assert!(ok);
        }
        assert_eq!(b.series.len(), 3);
        assert_eq!(b.evicted, 2);
        // The most recent stay.
        assert!(b.series.contains_key(&SeriesKey::Host(IpAddr::from([10, 0, 0, 4]))));
    }

    #[test]
    fn persisted_series_round_trip() {
        let mut b = Baselines::default();
        let k = SeriesKey::Host(IpAddr::from([10, 0, 0, 1]));
        b.add(k, 7, |c| c.bytes_out += 4096, (10, 10));
        b.close_hour(7, 100);
        let saved = b.take_dirty();
        assert_eq!(saved.len(), 1);
        assert_eq!(saved[0].0, "baseline/host/10.0.0.1");
        let mut c = Baselines::default();
        assert!(c.restore(&saved[0].1));
        assert_eq!(c.series.get(&k), b.series.get(&k));
    }

    #[test]
    fn peers_lru() {
        let mut p = Peers::default();
        assert!(p.touch(IpAddr::from([1, 1, 1, 1]), 1, 2));
        assert!(!p.touch(IpAddr::from([1, 1, 1, 1]), 2, 2));
        assert!(p.touch(IpAddr::from([2, 2, 2, 2]), 3, 2));
        assert!(p.touch(IpAddr::from([3, 3, 3, 3]), 4, 2));
        assert_eq!(p.list.len(), 2);
        assert!(!p.list.contains_key(&IpAddr::from([1, 1, 1, 1])));
    }
}
