//! Traffic spikes per site, per exporter interface and per internal host,
//! inbound and outbound, in buckets of `bucket` (default 5 min).
//!
//! Each series has a Holt forecast with a Brutlag band (level, trend, smoothed
//! absolute error). A bucket is anomalous when its bytes are above
//! `forecast + band·dev` (once the forecast has 12 buckets), at least
//! `min_ratio` times the learned baseline for that hour (the seasonal
//! expectation: so the Monday-morning ramp is not a spike) and at least
//! `min_excess` above it. An alert needs `persist_k` anomalous buckets of the
//! last `persist_n`. Anomalous values enter the forecast clipped to the band,
//! so a flood does not teach the forecast that it is normal. Inbound spikes
//! put the victim in `dst` and the top sources in the evidence. A site or
//! interface spike mostly explained by a host spike in the same bucket, and a
//! host's outbound spike while it has an open exfiltration alert, are merged
//! (counted) instead of alerting twice. Silent until the series has a baseline.

use super::baseline::{Baselines, HOUR_MS, Metric, SeriesKey};
use super::settings::SpikeSettings;
use super::stats::Holt;
use super::suppress::Candidate;
use crate::alert::{Kind, severity};
use crate::evidence;
use crate::fasthash::FxHashMap as HashMap;
use std::net::IpAddr;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
pub enum Dir {
    In,
    Out,
}

impl Dir {
    fn as_str(self) -> &'static str {
        match self {
            Dir::In => "inbound",
            Dir::Out => "outbound",
        }
    }
}

#[derive(Debug, Default, Clone, Copy, serde::Serialize, serde::Deserialize)]
struct State {
    holt: Holt,
    recent: u64,
}

/// Source/destination pairs kept per bucket for top contributors.
const PAIRS_PER_BUCKET: usize = 65_536;
/// Buckets a forecast needs before its band is trusted.
const WARM_BUCKETS: u32 = 12;

pub struct Spike {
    cfg: SpikeSettings,
    open: HashMap<(SeriesKey, Dir), u64>,
    pairs: HashMap<(IpAddr, IpAddr, Dir), u64>,
    states: HashMap<(SeriesKey, Dir), State>,
    pub merged: u64,
    pub pair_overflow: u64,
    pub silent_learning: u64,
}

pub struct SpikeContext<'a> {
    pub baselines: &'a Baselines,
    pub learning_hours: u64,
    pub min_week: usize,
}

struct Fired {
    key: SeriesKey,
    dir: Dir,
    x: f64,
    expected: f64,
    forecast: f64,
    upper: f64,
    hits: u32,
}

impl Spike {
    pub fn new(cfg: SpikeSettings) -> Spike {
        Spike {
            cfg,
            open: HashMap::default(),
            pairs: HashMap::default(),
            states: HashMap::default(),
            merged: 0,
            pair_overflow: 0,
            silent_learning: 0,
        }
    }

    pub fn bucket_ms(&self) -> u64 {
        self.cfg.bucket.ms()
    }

    /// The learned forecasts, for the state database.
    pub fn save(&self) -> Option<Vec<u8>> {
        let mut v: Vec<(&(SeriesKey, Dir), &State)> = self.states.iter().collect();
        v.sort_by_key(|(k, _)| **k);
        postcard::to_stdvec(&v).ok()
    }

    /// Restore forecasts saved by [`Spike::save`] (ignored if they do not decode).
    pub fn restore(&mut self, bytes: &[u8]) {
        if let Ok(v) = postcard::from_bytes::<Vec<((SeriesKey, Dir), State)>>(bytes) {
            self.states = v.into_iter().collect();
        }
    }

    /// Bytes of one flow for one series.
    pub fn add(&mut self, key: SeriesKey, dir: Dir, bytes: u64) {
        if self.cfg.enabled {
            *self.open.entry((key, dir)).or_default() += bytes;
        }
    }

    /// Bytes between an external and an internal address (for top contributors).
    pub fn add_pair(&mut self, src: IpAddr, dst: IpAddr, dir: Dir, bytes: u64) {
        if !self.cfg.enabled {
            return;
        }
        let k = (src, dst, dir);
        if self.pairs.len() >= PAIRS_PER_BUCKET && !self.pairs.contains_key(&k) {
            self.pair_overflow += 1;
            return;
        }
        *self.pairs.entry(k).or_default() += bytes;
    }

    /// Close the bucket starting at `start`; returns detections.
    pub fn close_bucket(&mut self, start: u64, ctx: &SpikeContext<'_>, exfil_open: impl Fn(IpAddr) -> bool) -> Vec<Candidate> {
        let open = std::mem::take(&mut self.open);
        let pairs = std::mem::take(&mut self.pairs);
        if !self.cfg.enabled {
            return Vec::new();
        }
        let hour = start / HOUR_MS;
        let per_hour = (HOUR_MS / self.cfg.bucket.ms()).max(1) as f64;
        let floor = self.cfg.min_excess.resolve(0) as f64;
        let mask = if self.cfg.persist_n >= 64 {
            u64::MAX
        } else {
            (1u64 << self.cfg.persist_n) - 1
        };
        // Forget forecasts of series no longer tracked.
        let series = &ctx.baselines.series;
        self.states.retain(|(k, _), _| series.contains_key(k));
        let mut fired: Vec<Fired> = Vec::new();
        for key in series.keys() {
            for dir in [Dir::In, Dir::Out] {
                let x = open.get(&(*key, dir)).copied().unwrap_or(0) as f64;
                let metric = if dir == Dir::In { Metric::BytesIn } else { Metric::BytesOut };
                let Some(exp) = ctx.baselines.expected(key, hour, metric, ctx.learning_hours, ctx.min_week) else {
                    if x > floor {
                        self.silent_learning += 1;
                    }
                    continue;
                };
                let expected = exp.median / per_hour;
                let st = self.states.entry((*key, dir)).or_default();
                let forecast = st.holt.forecast();
                let upper = st.holt.upper(self.cfg.band);
                let above_band = st.holt.n < WARM_BUCKETS || x > upper;
                let anomalous = above_band && x >= self.cfg.min_ratio * expected && x - expected >= floor;
                let fed = if anomalous && st.holt.n >= WARM_BUCKETS { x.min(upper) } else { x };
                st.holt.update(fed, self.cfg.alpha, self.cfg.beta, self.cfg.gamma);
                st.recent = ((st.recent << 1) | u64::from(anomalous)) & mask;
                let hits = st.recent.count_ones();
                if anomalous && hits as usize >= self.cfg.persist_k {
                    fired.push(Fired {
                        key: *key,
                        dir,
                        x,
                        expected,
                        forecast,
                        upper,
                        hits,
                    });
                }
            }
        }
        // Host spikes first; wider series they explain are merged into them.
        fired.sort_by_key(|f| (!matches!(f.key, SeriesKey::Host(_)), f.key, f.dir == Dir::Out));
        // Largest host excess per site direction (an interface carries both).
        let mut host_excess: HashMap<Dir, f64> = HashMap::default();
        let mut out = Vec::new();
        for f in fired {
            let excess = f.x - f.expected;
            match f.key {
                SeriesKey::Host(h) => {
                    let e = host_excess.entry(f.dir).or_default();
                    *e = e.max(excess);
                    if f.dir == Dir::Out && exfil_open(h) {
                        self.merged += 1;
                        continue;
                    }
                }
                SeriesKey::Site => {
                    if host_excess.get(&f.dir).is_some_and(|h| *h >= 0.5 * excess) {
                        self.merged += 1;
                        continue;
                    }
                }
                SeriesKey::Interface(..) => {
                    if host_excess.values().any(|h| *h >= 0.5 * excess) {
                        self.merged += 1;
                        continue;
                    }
                }
            }
            out.push(self.candidate(&f, start, &pairs));
        }
        out
    }

    fn candidate(&self, f: &Fired, start: u64, pairs: &HashMap<(IpAddr, IpAddr, Dir), u64>) -> Candidate {
        // Top contributors: by the external side for inbound, the internal side for outbound.
        let mut by_src: HashMap<IpAddr, u64> = HashMap::default();
        let mut by_dst: HashMap<IpAddr, u64> = HashMap::default();
        for (&(s, d, dir), &b) in pairs {
            if dir != f.dir && !matches!(f.key, SeriesKey::Interface(..)) {
                continue;
            }
            let relevant = match f.key {
                SeriesKey::Host(h) => (f.dir == Dir::In && d == h) || (f.dir == Dir::Out && s == h),
                SeriesKey::Site => true,
                // An interface carries both site directions: rank all pairs.
                SeriesKey::Interface(..) => true,
            };
            if relevant {
                *by_src.entry(s).or_default() += b;
                *by_dst.entry(d).or_default() += b;
            }
        }
        let top = |m: &HashMap<IpAddr, u64>| -> Vec<(IpAddr, u64)> {
            let mut v: Vec<(IpAddr, u64)> = m.iter().map(|(k, v)| (*k, *v)).collect();
            v.sort_by_key(|(ip, b)| (std::cmp::Reverse(*b), *ip));
            v.truncate(self.cfg.top);
            v
        };
        let srcs = top(&by_src);
        let dsts = top(&by_dst);
        let (src, dst, scope, group) = match f.key {
            SeriesKey::Host(h) => match f.dir {
                Dir::In => (
                    srcs.first().map(|e| e.0).unwrap_or(h),
                    Some(h),
                    "host",
                    format!("spike/host/{h}/in"),
                ),
                Dir::Out => (h, dsts.first().map(|e| e.0), "host", format!("spike/host/{h}/out")),
            },
            SeriesKey::Site => (
                srcs.first().map(|e| e.0).unwrap_or(IpAddr::from([0, 0, 0, 0])),
                dsts.first().map(|e| e.0),
                "site",
                format!("spike/site/{}", f.dir.as_str()),
            ),
            SeriesKey::Interface(e, i) => (
                srcs.first().map(|e| e.0).unwrap_or(e.ip()),
                dsts.first().map(|e| e.0),
                "interface",
                format!("spike/if/{e}/{i}/{}", f.dir.as_str()),
            ),
        };
        let ratio = if f.expected > 0.0 { f.x / f.expected } else { f64::INFINITY };
        let mut m = 0;
        if scope == "host" {
            m += 2;
        }
        if ratio >= 10.0 {
            m += 1;
        }
        if ratio >= 100.0 {
            m += 1;
        }
        let list = |v: &[(IpAddr, u64)]| -> Vec<serde_json::Value> {
            v.iter()
                .map(|(ip, b)| serde_json::json!({"addr": ip.to_string(), "bytes": b}))
                .collect()
        };
        let secs = self.cfg.bucket.ms() / 1000;
        let bps = |bytes: f64| crate::units::bits_per_second(bytes * 8.0 / secs.max(1) as f64);
        Candidate {
            kind: Kind::Spike,
            group: Some(group),
            src,
            dst,
            dst_port: None,
            proto: None,
            first_seen_ms: start,
            last_seen_ms: start + self.cfg.bucket.ms(),
            severity: severity(Kind::Spike, m),
            summary: format!(
                "{} traffic of {} at {}, {} the expected {} for this hour ({} of the last {} buckets of {} above the band)",
                f.dir.as_str(),
                f.key.label(),
                bps(f.x),
                if ratio.is_finite() {
                    format!("{ratio:.0}x")
                } else {
                    "far above".into()
                },
                bps(f.expected),
                f.hits,
                self.cfg.persist_n,
                crate::units::duration_ms(self.cfg.bucket.ms())
            ),
            attack: vec!["T1498".to_string()],
            evidence: evidence! {
                "scope" => scope,
                "series" => f.key.label(),
                "direction" => f.dir.as_str(),
                "bucket_start" => crate::timefmt::rfc3339_ms(start),
                "bucket_s" => secs,
                "observed_bytes" => f.x as u64,
                "expected_bytes" => f.expected as u64,
                "forecast_bytes" => f.forecast.max(0.0) as u64,
                "band_upper_bytes" => f.upper.max(0.0) as u64,
                "ratio" => if ratio.is_finite() { (ratio * 10.0).round() / 10.0 } else { -1.0 },
                "buckets_above" => f.hits,
                "persist_k" => self.cfg.persist_k,
                "persist_n" => self.cfg.persist_n,
                "top_sources" => list(&srcs),
                "top_destinations" => list(&dsts),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::baseline::HourCounts;
    use super::*;

    fn learned(host: IpAddr, per_hour_in: u64) -> Baselines {
        let mut b = Baselines::default();
        for hour in 0..200u64 {
            b.add(
                SeriesKey::Host(host),
                hour,
                |c: &mut HourCounts| c.bytes_in += per_hour_in,
                (10, 10),
            );
            b.close_hour(hour, 24 * 28);
        }
        b
    }

    fn feed(
        s: &mut Spike,
        b: &Baselines,
        host: IpAddr,
        buckets: std::ops::Range<u64>,
        bytes: impl Fn(u64) -> u64,
    ) -> Vec<(u64, Candidate)> {
        let ctx = SpikeContext {
            baselines: b,
            learning_hours: 168,
            min_week: 3,
        };
        let mut out = Vec::new();
        for k in buckets {
            let x = bytes(k);
            s.add(SeriesKey::Host(host), Dir::In, x);
            s.add_pair(IpAddr::from([45, 0, (k % 7) as u8, 7]), host, Dir::In, x);
            for c in s.close_bucket(200 * HOUR_MS + k * 300_000, &ctx, |_| false) {
                out.push((k, c));
            }
        }
        out
    }

    #[test]
    fn flood_fires_after_persistence_with_victim_as_dst() {
        let h = IpAddr::from([10, 20, 1, 3]);
        let b = learned(h, 120_000_000); // 10 MB per 5 min
        let mut s = Spike::new(SpikeSettings::default());
        let got = feed(
            &mut s,
            &b,
            h,
            0..40,
            |k| if (30..34).contains(&k) { 8_000_000_000 } else { 10_000_000 },
        );
        assert!(!got.is_empty());
        // 2 of 3: the second flooded bucket.
        assert_eq!(got[0].0, 31);
        let c = &got[0].1;
        assert_eq!(c.dst, Some(h));
        assert_eq!(c.attack, vec!["T1498"]);
        assert_eq!(c.evidence["direction"], "inbound");
        assert!(c.evidence["top_sources"].as_array().is_some_and(|a| !a.is_empty()));
        assert_eq!(c.severity, 8);
    }

    #[test]
    fn steady_and_single_bursts_are_quiet() {
        let h = IpAddr::from([10, 20, 1, 3]);
        let b = learned(h, 120_000_000);
        let mut s = Spike::new(SpikeSettings::default());
        // One 5-minute burst only (k-of-n not met), otherwise noisy normal traffic.
        let got = feed(&mut s, &b, h, 0..60, |k| {
            if k == 30 {
                8_000_000_000
            } else {
                5_000_000 + (k * 7919 % 10) * 1_000_000
            }
        });
        assert!(got.is_empty(), "{:?}", got.first().map(|c| &c.1.summary));
    }

    #[test]
    fn forecasts_survive_save_and_restore() {
        let h = IpAddr::from([10, 20, 1, 3]);
        let b = learned(h, 120_000_000);
        let mut s = Spike::new(SpikeSettings::default());
        feed(&mut s, &b, h, 0..20, |_| 10_000_000);
        let saved = s.save().unwrap_or_default();
        let mut r = Spike::new(SpikeSettings::default());
        r.restore(&saved);
        let key = (SeriesKey::Host(h), Dir::In);
        assert_eq!(r.states.get(&key).map(|s| s.holt), s.states.get(&key).map(|s| s.holt));
        assert_eq!(r.states.get(&key).map(|s| s.holt.n), Some(20));
    }

    #[test]
    fn unlearned_series_are_silent() {
        let h = IpAddr::from([10, 20, 1, 3]);
        let b = Baselines::default();
        let mut s = Spike::new(SpikeSettings::default());
        assert!(feed(&mut s, &b, h, 0..10, |_| 9_000_000_000).is_empty());
    }
}
