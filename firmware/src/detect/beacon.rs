//! Beaconing (C2 check-ins): per (internal source, external destination, port,
//! protocol) series of connection starts and sizes, scored in the spirit of
//! RITA. Needs no baseline.
//!
//! Score = (2·timing + size) / 3, each the mean of three parts in [0, 1]:
//! timing: 1 - |Bowley skew| of the intervals (1 when their quartiles are
//! within 10 % of the median), 1 - (MAD/median of the
//! intervals)/0.5 (relative, so ±15 % jitter on any period still scores ~0.8),
//! and the evenness of connections over the series' span (1 - coefficient of
//! variation of a histogram of up to 24 buckets); size: 1 - |Bowley skew|,
//! 1 - (MAD/median)/0.5 of bytes sent, and smallness 1 - median/64 KiB.
//! Missing beats make a few double intervals, which median and MAD ignore.
//! A destination contacted by many internal hosts (update servers) or a
//! well-known periodic service (NTP, DNS, ...) has its score multiplied by
//! `down_weight`; the evidence says so and why.

use super::settings::{BeaconSettings, parse_service};
use super::stats::{bowley_skew, median_mad};
use super::suppress::Candidate;
use crate::alert::{Kind, severity};
use crate::evidence;
use crate::fasthash::FxHashMap as HashMap;
use crate::flow::proto_name;
use std::collections::VecDeque;
use std::net::IpAddr;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PairKey {
    pub src: IpAddr,
    pub dst: IpAddr,
    pub port: u16,
    pub proto: u8,
}

#[derive(Debug, Default)]
struct Pair {
    /// (connection start ms, bytes sent by the initiator)
    points: VecDeque<(u64, u64)>,
    last_ms: u64,
    /// New points since the last evaluation.
    fresh: bool,
}

/// The parts of a score (kept for the evidence).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Score {
    pub ts_skew: f64,
    pub ts_madm: f64,
    pub ts_hist: f64,
    pub ds_skew: f64,
    pub ds_madm: f64,
    pub ds_small: f64,
    pub period_ms: f64,
    pub jitter_mad_ms: f64,
    pub size_median: f64,
}

impl Score {
    pub fn timing(&self) -> f64 {
        (self.ts_skew + self.ts_madm + self.ts_hist) / 3.0
    }
    pub fn size(&self) -> f64 {
        (self.ds_skew + self.ds_madm + self.ds_small) / 3.0
    }
    pub fn total(&self) -> f64 {
        (2.0 * self.timing() + self.size()) / 3.0
    }
}

/// 1 - |Bowley skew|, but 1 when the quartiles lie within 10 % of the median:
/// the asymmetry of a tight distribution is noise, not irregularity.
fn skew_score(v: &[f64], median: f64) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let iqr = super::stats::quantile_sorted(&s, 0.75) - super::stats::quantile_sorted(&s, 0.25);
    if iqr <= 0.1 * median.abs() {
        return 1.0;
    }
    1.0 - bowley_skew(v).abs()
}

/// Score a sorted series of (start ms, bytes). None with fewer than 3 points.
pub fn score(points: &[(u64, u64)]) -> Option<Score> {
    if points.len() < 3 {
        return None;
    }
    let intervals: Vec<f64> = points.windows(2).map(|w| (w[1].0 - w[0].0) as f64).collect();
    let (period, mad) = median_mad(&intervals);
    let rel = |mad: f64, med: f64| if med > 0.0 { (1.0 - (mad / med) / 0.5).max(0.0) } else { 0.0 };
    let ts_madm = rel(mad, period);
    let ts_skew = skew_score(&intervals, period);
    // Evenness over the span.
    let first = points[0].0;
    let span = (points[points.len() - 1].0 - first).max(1);
    let buckets = (points.len() / 4).clamp(2, 24);
    let mut hist = vec![0f64; buckets];
    for &(t, _) in points {
        let i = (((t - first) as u128 * buckets as u128) / (span as u128 + 1)) as usize;
        hist[i.min(buckets - 1)] += 1.0;
    }
    let mean = hist.iter().sum::<f64>() / buckets as f64;
    let var = hist.iter().map(|c| (c - mean).powi(2)).sum::<f64>() / buckets as f64;
    let cv = if mean > 0.0 { var.sqrt() / mean } else { 1.0 };
    let ts_hist = (1.0 - cv).max(0.0);
    let sizes: Vec<f64> = points.iter().map(|p| p.1 as f64).collect();
    let (size_median, size_mad) = median_mad(&sizes);
    Some(Score {
        ts_skew,
        ts_madm,
        ts_hist,
        ds_skew: skew_score(&sizes, size_median),
        ds_madm: rel(size_mad, size_median),
        ds_small: (1.0 - size_median / 65_536.0).max(0.0),
        period_ms: period,
        jitter_mad_ms: mad,
        size_median,
    })
}

pub struct Beacon {
    cfg: BeaconSettings,
    services: Vec<(u8, u16)>,
    pairs: HashMap<PairKey, Pair>,
    points: usize,
    /// Destination -> internal sources that contacted it, with last time.
    prevalence: HashMap<IpAddr, HashMap<IpAddr, u64>>,
    /// Internal hosts with outbound connections, with last time.
    active: HashMap<IpAddr, u64>,
    pub evicted_pairs: u64,
    /// Scorings that passed the threshold before and fell below it after down-weighting.
    pub down_weighted: u64,
    /// Pairs with new connections since the last evaluation.
    fresh: Vec<PairKey>,
    last_sweep: u64,
}

/// Sources remembered per destination for prevalence.
const PREVALENCE_SOURCES: usize = 1024;
/// Destinations remembered for prevalence / hosts for the active count.
const PREVALENCE_DESTS: usize = 65_536;

fn round3(v: f64) -> f64 {
    (v * 1000.0).round() / 1000.0
}

impl Beacon {
    pub fn new(cfg: BeaconSettings) -> Beacon {
        let services = cfg.periodic_services.iter().filter_map(|s| parse_service(s)).collect();
        Beacon {
            cfg,
            services,
            pairs: HashMap::default(),
            points: 0,
            prevalence: HashMap::default(),
            active: HashMap::default(),
            evicted_pairs: 0,
            down_weighted: 0,
            fresh: Vec::new(),
            last_sweep: 0,
        }
    }

    pub fn tracked(&self) -> usize {
        self.pairs.len()
    }

    /// A new outbound connection from an internal host.
    pub fn connection(&mut self, key: PairKey, start: u64, bytes: u64) {
        if !self.cfg.enabled {
            return;
        }
        if self.active.len() < PREVALENCE_DESTS || self.active.contains_key(&key.src) {
            self.active.insert(key.src, start);
        }
        if self.prevalence.len() < PREVALENCE_DESTS || self.prevalence.contains_key(&key.dst) {
            let m = self.prevalence.entry(key.dst).or_default();
            if m.len() < PREVALENCE_SOURCES || m.contains_key(&key.src) {
                m.insert(key.src, start);
            }
        }
        if !self.pairs.contains_key(&key) && self.pairs.len() >= self.cfg.max_pairs {
            self.evict(self.cfg.max_pairs / 10 + 1);
        }
        let p = self.pairs.entry(key).or_default();
        // Keep the series sorted (records arrive in export order, nearly sorted).
        let pos = p.points.iter().rposition(|q| q.0 <= start).map(|i| i + 1).unwrap_or(0);
        p.points.insert(pos, (start, bytes));
        p.last_ms = p.last_ms.max(start);
        if !p.fresh {
            p.fresh = true;
            self.fresh.push(key);
        }
        self.points += 1;
        if self.points > self.cfg.max_points {
            self.evict(self.pairs.len() / 10 + 1);
        }
    }

    /// Drop the least recently active pairs (counted).
    fn evict(&mut self, n: usize) {
        let mut by_age: Vec<(u64, PairKey)> = self.pairs.iter().map(|(k, p)| (p.last_ms, *k)).collect();
        by_age.sort_unstable_by_key(|e| e.0);
        for (_, k) in by_age.into_iter().take(n) {
            if let Some(p) = self.pairs.remove(&k) {
                self.points -= p.points.len();
                self.evicted_pairs += 1;
            }
        }
    }

    /// Score every pair with new connections; returns detections.
    pub fn evaluate(&mut self, now: u64) -> Vec<Candidate> {
        let mut out = Vec::new();
        let window = self.cfg.window.ms();
        let horizon = now.saturating_sub(window);
        // Prevalence and the active host count over the window.
        self.active.retain(|_, t| *t >= horizon);
        for m in self.prevalence.values_mut() {
            m.retain(|_, t| *t >= horizon);
        }
        self.prevalence.retain(|_, m| !m.is_empty());
        let active = self.active.len().max(1);
        let mut removed = 0;
        // Sweep quiet pairs out once an hour; fresh pairs are trimmed below.
        if now >= self.last_sweep + 3_600_000 {
            self.last_sweep = now;
            self.pairs.retain(|_, p| {
                while p.points.front().is_some_and(|q| q.0 < horizon) {
                    p.points.pop_front();
                    removed += 1;
                }
                !p.points.is_empty()
            });
        }
        let mut todo: Vec<(PairKey, Vec<(u64, u64)>)> = Vec::new();
        for k in std::mem::take(&mut self.fresh) {
            let Some(p) = self.pairs.get_mut(&k) else { continue };
            p.fresh = false;
            while p.points.front().is_some_and(|q| q.0 < horizon) {
                p.points.pop_front();
                removed += 1;
            }
            if p.points.len() >= self.cfg.min_connections {
                todo.push((k, p.points.iter().copied().collect()));
            }
        }
        self.points -= removed;
        todo.sort_by_key(|(k, _)| (k.src, k.dst, k.port, k.proto));
        for (k, pts) in &todo {
            let Some(sc) = score(pts) else { continue };
            let raw = sc.total();
            if raw < self.cfg.threshold * self.cfg.down_weight {
                continue;
            }
            let srcs = self.prevalence.get(&k.dst).map(HashMap::len).unwrap_or(1);
            let share = srcs as f64 / active as f64;
            let mut weight = 1.0;
            let mut reasons = Vec::new();
            if share >= self.cfg.prevalence && srcs >= self.cfg.prevalence_min_hosts {
                weight *= self.cfg.down_weight;
                reasons.push(format!("popular destination: {srcs} of {active} internal hosts"));
            }
            if self.services.contains(&(k.proto, k.port)) {
                weight *= self.cfg.down_weight;
                reasons.push(format!(
                    "well-known periodic service {}/{}",
                    proto_name(k.proto).unwrap_or("?"),
                    k.port
                ));
            }
            let total = raw * weight;
            if total < self.cfg.threshold {
                if raw >= self.cfg.threshold {
                    self.down_weighted += 1;
                }
                continue;
            }
            out.push(self.candidate(k, pts, &sc, raw, weight, total, srcs, active, reasons));
        }
        out
    }

    #[allow(clippy::too_many_arguments)]
    fn candidate(
        &self,
        k: &PairKey,
        pts: &[(u64, u64)],
        sc: &Score,
        raw: f64,
        weight: f64,
        total: f64,
        srcs: usize,
        active: usize,
        reasons: Vec<String>,
    ) -> Candidate {
        let first = pts[0].0;
        let last = pts[pts.len() - 1].0;
        let pname = proto_name(k.proto).map(str::to_string).unwrap_or_else(|| k.proto.to_string());
        let mut m = 0;
        if total >= 0.9 {
            m += 1;
        }
        if total >= 0.97 {
            m += 1;
        }
        if k.port != 80 && k.port != 443 {
            m += 1;
        }
        if weight < 1.0 {
            m -= 2;
        }
        let tls = matches!(k.port, 443 | 465 | 636 | 853 | 989 | 990 | 993 | 995 | 5061 | 6514 | 8443);
        let mut attack = vec!["T1071".to_string()];
        if tls {
            attack.push("T1573".into());
        }
        let period_s = sc.period_ms / 1000.0;
        Candidate {
            kind: Kind::Beaconing,
            group: None,
            src: k.src,
            dst: Some(k.dst),
            dst_port: Some(k.port),
            proto: Some(k.proto),
            first_seen_ms: first,
            last_seen_ms: last,
            severity: severity(Kind::Beaconing, m),
            summary: format!(
                "{} connected to {}:{}/{} {} times, every {} (±{:.0} %), over {}; beacon score {:.2}",
                k.src,
                k.dst,
                k.port,
                pname,
                pts.len(),
                crate::units::duration_s(period_s),
                if sc.period_ms > 0.0 {
                    100.0 * sc.jitter_mad_ms / sc.period_ms
                } else {
                    0.0
                },
                crate::units::duration_ms(last - first),
                total
            ),
            attack,
            evidence: evidence! {
                "connections" => pts.len(),
                "period_s" => round3(period_s),
                "interval_mad_s" => round3(sc.jitter_mad_ms / 1000.0),
                "interval_skew_score" => round3(sc.ts_skew),
                "interval_mad_score" => round3(sc.ts_madm),
                "histogram_score" => round3(sc.ts_hist),
                "size_median_bytes" => sc.size_median,
                "size_skew_score" => round3(sc.ds_skew),
                "size_mad_score" => round3(sc.ds_madm),
                "size_smallness_score" => round3(sc.ds_small),
                "timing_score" => round3(sc.timing()),
                "size_score" => round3(sc.size()),
                "raw_score" => round3(raw),
                "weight" => round3(weight),
                "score" => round3(total),
                "threshold" => self.cfg.threshold,
                "duration_s" => (last - first) / 1000,
                "internal_hosts_contacting_dst" => srcs,
                "active_internal_hosts" => active,
                "down_weighted" => reasons,
                "proto" => pname,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Tiny deterministic generator (xorshift) for jitter.
    fn xs(state: &mut u64) -> f64 {
        *state ^= *state << 13;
        *state ^= *state >> 7;
        *state ^= *state << 17;
        (*state >> 11) as f64 / (1u64 << 53) as f64
    }

    fn series(period: u64, jitter: f64, miss: f64, n: usize, seed: u64) -> Vec<(u64, u64)> {
        let mut s = seed;
        let mut v = Vec::new();
        for k in 0..n as u64 {
            let off = ((xs(&mut s) * 2.0 - 1.0) * jitter * period as f64) as i64;
            let keep = xs(&mut s) >= miss;
            if keep {
                v.push(((1_000_000 + k * period) as i64 + off, 600 + (xs(&mut s) * 60.0) as u64));
            }
        }
        v.sort();
        v.into_iter().map(|(t, b)| (t as u64, b)).collect()
    }

    #[test]
    fn perfect_beacon_scores_one() {
        let pts: Vec<(u64, u64)> = (0..48).map(|k| (k * 60_000, 512)).collect();
        let s = score(&pts).unwrap_or_else(|| panic!());
        assert_eq!(s.ts_skew, 1.0);
        assert_eq!(s.ts_madm, 1.0);
        assert_eq!(s.ds_madm, 1.0);
        assert!((s.ts_hist - 1.0).abs() < 1e-9, "{}", s.ts_hist);
        assert!((s.ds_small - (1.0 - 512.0 / 65_536.0)).abs() < 1e-12);
        assert!(s.total() > 0.99);
    }

    #[test]
    fn jittered_beacons_with_missing_beats_pass() {
        for (period, seed) in [(60_000, 1), (300_000, 2), (1_800_000, 3), (3_600_000, 4)] {
            let pts = series(period, 0.15, 0.1, 40, seed);
            let s = score(&pts).unwrap_or_else(|| panic!());
            assert!(s.total() >= 0.8, "period {period}: {s:?} total {}", s.total());
            assert!((s.period_ms - period as f64).abs() < 0.1 * period as f64);
        }
    }

    #[test]
    fn random_arrivals_fail() {
        // Poisson arrivals (exponential gaps, mean 5 min) with random sizes.
        let mut st = 99u64;
        let mut t = 0u64;
        let mut pts = Vec::new();
        for _ in 0..100 {
            t += (-(1.0 - xs(&mut st)).ln() * 300_000.0) as u64 + 1;
            pts.push((t, 200 + (xs(&mut st) * 50_000.0) as u64));
        }
        let s = score(&pts).unwrap_or_else(|| panic!());
        assert!(s.total() < 0.6, "{s:?} {}", s.total());
    }

    #[test]
    fn popular_destinations_and_services_are_down_weighted() {
        let mut b = Beacon::new(BeaconSettings::default());
        let upd = IpAddr::from([203, 0, 113, 80]);
        for h in 1..=10u8 {
            for k in 0..24u64 {
                let key = PairKey {
                    src: IpAddr::from([10, 0, 0, h]),
                    dst: upd,
                    port: 443,
                    proto: 6,
                };
                b.connection(key, k * 3_600_000 + u64::from(h) * 1000, 2400);
            }
        }
        // One host beaconing alone.
        let c2 = IpAddr::from([185, 100, 87, 5]);
        for k in 0..24u64 {
            let key = PairKey {
                src: IpAddr::from([10, 0, 0, 1]),
                dst: c2,
                port: 8080,
                proto: 6,
            };
            b.connection(key, k * 3_600_000 + 500, 700);
        }
        let got = b.evaluate(24 * 3_600_000);
        assert_eq!(got.len(), 1, "{got:?}");
        assert_eq!(got[0].dst, Some(c2));
        assert_eq!(got[0].severity, 8);
        assert_eq!(got[0].attack, vec!["T1071"]);
        // Evaluated pairs are not scored again until new connections arrive.
        assert!(b.evaluate(24 * 3_600_000 + 1).is_empty());
    }

    #[test]
    fn pairs_and_points_are_bounded() {
        let cfg = BeaconSettings {
            max_pairs: 100,
            max_points: 1000,
            ..Default::default()
        };
        let mut b = Beacon::new(cfg);
        for i in 0..500u32 {
            let d = i.to_be_bytes();
            for k in 0..5u64 {
                b.connection(
                    PairKey {
                        src: IpAddr::from([10, 0, 0, 1]),
                        dst: IpAddr::from([23, d[1], d[2], d[3]]),
                        port: 443,
                        proto: 6,
                    },
                    u64::from(i) * 10 + k,
                    100,
                );
            }
        }
        assert!(b.tracked() <= 100);
        assert!(b.points <= 1000);
        assert!(b.evicted_pairs >= 400);
    }
}
