//! Sampling rates: learned from v5 headers and v9/IPFIX options data, or set
//! per exporter in the config, and applied to bytes and packets.
//!
//! Options data map a sampler/selector id (IEs 48 and 302) to an interval (IEs
//! 34, 50, 305 with 306, or 309/310); a data record names its sampler (48/302)
//! or carries its own interval. Options data without a sampler id set the
//! exporter-wide default. Tables are bounded per exporter stream.

use crate::fasthash::FxHashMap;
use std::net::SocketAddr;

const MAX_SAMPLERS_PER_STREAM: usize = 256;

/// What an options record or data record said about sampling.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct SamplingInfo {
    pub sampler_id: Option<u64>,
    /// 1-in-N from IE 34/50 (or 305+306, 309/310).
    pub rate: Option<u32>,
    pub packet_interval: Option<u32>,
    pub packet_space: Option<u32>,
    pub size: Option<u32>,
    pub population: Option<u32>,
}

impl SamplingInfo {
    /// The 1-in-N rate this information implies, if any.
    pub fn effective_rate(&self) -> Option<u32> {
        if let Some(r) = self.rate.filter(|&r| r > 0) {
            return Some(r);
        }
        // n-out-of-N (RFC 5477 samplingSize / samplingPopulation).
        if let (Some(s), Some(p)) = (self.size, self.population)
            && s > 0
            && p >= s
        {
            return Some(p / s);
        }
        // Systematic count-based: interval packets selected, space packets skipped.
        // An interval without a space says nothing about the rate.
        match (self.packet_interval, self.packet_space) {
            (Some(i), Some(space)) if i > 0 => Some(((i as u64 + space as u64) / i as u64).max(1) as u32),
            _ => None,
        }
    }
}

#[derive(Debug, Default)]
struct Stream {
    default_rate: Option<u32>,
    samplers: FxHashMap<u64, u32>,
}

/// Learned sampling per (exporter, observation domain / source id).
#[derive(Debug, Default)]
pub struct SamplingTable {
    streams: FxHashMap<(SocketAddr, u32), Stream>,
    cap: usize,
    /// Sampler entries not stored because a bound was reached.
    pub dropped: u64,
}

impl SamplingTable {
    pub fn new(cap_streams: usize) -> Self {
        SamplingTable {
            streams: FxHashMap::default(),
            cap: cap_streams,
            dropped: 0,
        }
    }

    /// Learn from an options data record.
    pub fn learn(&mut self, exporter: SocketAddr, domain: u32, info: &SamplingInfo) {
        let Some(rate) = info.effective_rate() else { return };
        let key = (exporter, domain);
        if !self.streams.contains_key(&key) && self.streams.len() >= self.cap {
            self.dropped += 1;
            return;
        }
        let s = self.streams.entry(key).or_default();
        match info.sampler_id {
            Some(id) => {
                if s.samplers.len() >= MAX_SAMPLERS_PER_STREAM && !s.samplers.contains_key(&id) {
                    self.dropped += 1;
                } else {
                    s.samplers.insert(id, rate);
                }
                // A lone sampler also serves records that do not name one.
                if s.samplers.len() == 1 {
                    s.default_rate = Some(rate);
                }
            }
            None => s.default_rate = Some(rate),
        }
    }

    /// Rate for a data record, before config overrides.
    pub fn lookup(&self, exporter: SocketAddr, domain: u32, record: &SamplingInfo) -> Option<u32> {
        if let Some(r) = record.effective_rate() {
            return Some(r);
        }
        let s = self.streams.get(&(exporter, domain))?;
        if let Some(id) = record.sampler_id
            && let Some(&r) = s.samplers.get(&id)
        {
            return Some(r);
        }
        s.default_rate
    }
}

/// v5 header `sampling_interval`: top two bits mode, low 14 bits interval.
pub fn v5_rate(sampling_interval: u16) -> Option<u32> {
    let interval = (sampling_interval & 0x3fff) as u32;
    (interval > 1).then_some(interval)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ex() -> SocketAddr {
        SocketAddr::from(([192, 0, 2, 9], 2055))
    }

    #[test]
    fn sampler_ids_map_to_rates() {
        let mut t = SamplingTable::new(8);
        t.learn(
            ex(),
            0,
            &SamplingInfo {
                sampler_id: Some(1),
                rate: Some(100),
                ..Default::default()
            },
        );
        t.learn(
            ex(),
            0,
            &SamplingInfo {
                sampler_id: Some(2),
                rate: Some(1000),
                ..Default::default()
            },
        );
        let rec = |id| SamplingInfo {
            sampler_id: Some(id),
            ..Default::default()
        };
        assert_eq!(t.lookup(ex(), 0, &rec(1)), Some(100));
        assert_eq!(t.lookup(ex(), 0, &rec(2)), Some(1000));
        assert_eq!(t.lookup(ex(), 1, &rec(2)), None);
    }

    #[test]
    fn packet_interval_and_space() {
        let i = SamplingInfo {
            packet_interval: Some(1),
            packet_space: Some(99),
            ..Default::default()
        };
        assert_eq!(i.effective_rate(), Some(100));
        let p = SamplingInfo {
            size: Some(1),
            population: Some(512),
            ..Default::default()
        };
        assert_eq!(p.effective_rate(), Some(512));
    }

    #[test]
    fn v5_header_interval() {
        assert_eq!(v5_rate(0x4000 | 100), Some(100));
        assert_eq!(v5_rate(0), None);
        assert_eq!(v5_rate(1), None);
    }
}
