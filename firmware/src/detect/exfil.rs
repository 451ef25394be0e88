//! Exfiltration: an internal host's bytes to external destinations in the open
//! hour, far above its learned baseline for that hour.
//!
//! Checked every minute of event time against the host's hour-of-week (or,
//! while history is short, hour-of-day) median and MAD: robust z-score
//! `(observed - median) / max(1.4826·MAD, median/4, min_excess/z_threshold)`,
//! multiplied by `boost` for each of: a destination the host never used
//! before, an off-hours hour (the site's distinct external peers at this hour
//! of day below `off_hours_share` of its busiest hour), a port the host never used before. It fires when the boosted
//! score reaches `z_threshold` and the excess over the median is at least
//! `min_excess`. A host that uploads the same every night (a backup) has that
//! upload in its median and stays quiet. Silent (counted) while the host is
//! still learning. Per-destination bytes (for the alert's dst and evidence)
//! are kept from the moment a host's hour passes a quarter of `min_excess`.

use super::baseline::{Baselines, Expected, Metric, SeriesKey};
use super::settings::ExfilSettings;
use super::suppress::Candidate;
use crate::alert::{Kind, severity};
use crate::evidence;
use crate::fasthash::FxHashMap as HashMap;
use crate::timefmt::rfc3339_ms;
use std::net::IpAddr;

/// Destinations tracked per host and hour (the rest are summed as "other").
const DESTS_PER_HOUR: usize = 256;

#[derive(Debug, Default, Clone)]
struct Dest {
    bytes: u64,
    new: bool,
    first_ms: u64,
    last_ms: u64,
    ports: Vec<(u16, u64, bool)>,
}

#[derive(Debug, Default)]
struct HostHour {
    dests: HashMap<IpAddr, Dest>,
    other_bytes: u64,
    changed: bool,
    /// Observed bytes when last reported this hour (re-report when it doubles).
    reported: u64,
}

pub struct Exfil {
    pub cfg: ExfilSettings,
    hosts: HashMap<IpAddr, HostHour>,
    pub silent_learning: u64,
}

/// What the engine knows about the hour being checked.
pub struct HourContext<'a> {
    pub baselines: &'a Baselines,
    pub hour: u64,
    pub learning_hours: u64,
    pub min_week: usize,
    /// The site is in an off-hours hour.
    pub off_hours: bool,
}

fn fmt_bytes(b: f64) -> String {
    crate::units::bytes(b.max(0.0) as u64)
}

impl Exfil {
    pub fn new(cfg: ExfilSettings) -> Exfil {
        Exfil {
            cfg,
            hosts: HashMap::default(),
            silent_learning: 0,
        }
    }

    /// An outbound flow of an internal host. `new_dst`/`new_port`: never used by the host before.
    #[allow(clippy::too_many_arguments)]
    pub fn outbound(&mut self, host: IpAddr, dst: IpAddr, port: u16, bytes: u64, start: u64, end: u64, new_dst: bool, new_port: bool) {
        if !self.cfg.enabled {
            return;
        }
        let h = self.hosts.entry(host).or_default();
        h.changed = true;
        if !h.dests.contains_key(&dst) && h.dests.len() >= DESTS_PER_HOUR {
            h.other_bytes += bytes;
            return;
        }
        let d = h.dests.entry(dst).or_insert_with(|| Dest {
            first_ms: start,
            ..Default::default()
        });
        d.bytes += bytes;
        d.new |= new_dst;
        d.first_ms = d.first_ms.min(start);
        d.last_ms = d.last_ms.max(end);
        if let Some(p) = d.ports.iter_mut().find(|p| p.0 == port) {
            p.1 += bytes;
            p.2 |= new_port;
        } else if d.ports.len() < 16 {
            d.ports.push((port, bytes, new_port));
        }
    }

    /// The hour closed: start over.
    pub fn close_hour(&mut self) {
        self.hosts.clear();
    }

    /// Check hosts with new traffic against their baselines.
    pub fn check(&mut self, ctx: &HourContext<'_>) -> Vec<Candidate> {
        let mut out = Vec::new();
        if !self.cfg.enabled {
            return out;
        }
        let floor = self.cfg.min_excess.resolve(0) as f64;
        let mut hosts: Vec<(&IpAddr, &mut HostHour)> = self.hosts.iter_mut().collect();
        hosts.sort_by_key(|(ip, _)| **ip);
        for (host, hh) in hosts {
            if !hh.changed {
                continue;
            }
            hh.changed = false;
            let key = SeriesKey::Host(*host);
            let observed = ctx.baselines.open_counts(&key).map(|c| c.bytes_out as f64).unwrap_or(0.0);
            if observed < floor {
                continue;
            }
            let Some(exp) = ctx
                .baselines
                .expected(&key, ctx.hour, Metric::BytesOut, ctx.learning_hours, ctx.min_week)
            else {
                self.silent_learning += 1;
                continue;
            };
            let excess = observed - exp.median;
            if excess < floor || (hh.reported > 0 && observed < 2.0 * hh.reported as f64) {
                continue;
            }
            let scale_floor = (exp.median / 4.0).max(floor / self.cfg.z_threshold);
            let z = super::stats::robust_z(observed, exp.median, exp.mad, scale_floor);
            let Some((top_dst, top)) = hh.dests.iter().max_by_key(|(ip, d)| (d.bytes, std::cmp::Reverse(**ip))) else {
                continue;
            };
            let (top_port, _, port_new) = top.ports.iter().max_by_key(|p| p.1).copied().unwrap_or((0, 0, false));
            let mut boosts = Vec::new();
            let mut score = z;
            if top.new {
                score *= self.cfg.boost;
                boosts.push("new destination");
            }
            if ctx.off_hours {
                score *= self.cfg.boost;
                boosts.push("off-hours");
            }
            if port_new {
                score *= self.cfg.boost;
                boosts.push("unusual port");
            }
            if score < self.cfg.z_threshold {
                continue;
            }
            hh.reported = observed as u64;
            out.push(candidate(
                *host, *top_dst, top_port, top, hh, observed, &exp, z, score, &boosts, ctx, &self.cfg,
            ));
        }
        out
    }
}

#[allow(clippy::too_many_arguments)]
fn candidate(
    host: IpAddr,
    dst: IpAddr,
    port: u16,
    top: &Dest,
    hh: &HostHour,
    observed: f64,
    exp: &Expected,
    z: f64,
    score: f64,
    boosts: &[&str],
    ctx: &HourContext<'_>,
    cfg: &ExfilSettings,
) -> Candidate {
    let mut m = 0;
    if observed - exp.median >= 1e9 {
        m += 1;
    }
    m += boosts.len() as i32;
    let mut dests: Vec<(&IpAddr, &Dest)> = hh.dests.iter().collect();
    dests.sort_by_key(|(ip, d)| (std::cmp::Reverse(d.bytes), **ip));
    let top_list: Vec<serde_json::Value> = dests
        .iter()
        .take(5)
        .map(|(ip, d)| serde_json::json!({"dst": ip.to_string(), "bytes": d.bytes, "new": d.new}))
        .collect();
    let hour_ms = ctx.hour * super::baseline::HOUR_MS;
    Candidate {
        kind: Kind::Exfiltration,
        group: None,
        src: host,
        dst: Some(dst),
        dst_port: Some(port),
        proto: None,
        first_seen_ms: top.first_ms,
        last_seen_ms: top.last_ms,
        severity: severity(Kind::Exfiltration, m),
        summary: format!(
            "{host} sent {} to external hosts in the hour from {} ({} to {dst}:{port}); its {} baseline is {} (median of {} hours)",
            fmt_bytes(observed),
            &rfc3339_ms(hour_ms)[11..16],
            fmt_bytes(top.bytes as f64),
            exp.basis.as_str(),
            fmt_bytes(exp.median),
            exp.samples
        ),
        attack: vec!["T1048".to_string()],
        evidence: evidence! {
            "observed_bytes" => observed as u64,
            "baseline_median_bytes" => exp.median as u64,
            "baseline_mad_bytes" => exp.mad as u64,
            "baseline_samples" => exp.samples,
            "baseline_basis" => exp.basis.as_str(),
            "robust_z" => (z * 100.0).round() / 100.0,
            "score" => (score * 100.0).round() / 100.0,
            "z_threshold" => cfg.z_threshold,
            "min_excess_bytes" => cfg.min_excess.resolve(0),
            "boosts" => boosts,
            "hour_start" => rfc3339_ms(hour_ms),
            "top_destinations" => top_list,
            "other_bytes" => hh.other_bytes,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::super::baseline::HourCounts;
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap_or(IpAddr::from([0, 0, 0, 0]))
    }

    /// 10 days of history: `night` bytes at 02:00, 5 MB other hours.
    fn baselines(host: IpAddr, night: u64) -> Baselines {
        let mut b = Baselines::default();
        for hour in 0..240u64 {
            b.add(
                SeriesKey::Host(host),
                hour,
                |c: &mut HourCounts| c.bytes_out += if hour % 24 == 2 { night } else { 5_000_000 },
                (100, 100),
            );
            b.close_hour(hour, 24 * 28);
        }
        b
    }

    fn run(b: &mut Baselines, host: IpAddr, bytes: u64, new_dst: bool) -> Vec<Candidate> {
        let mut e = Exfil::new(ExfilSettings::default());
        let hour = 242; // 02:00 of day 11
        b.add(SeriesKey::Host(host), hour, |c| c.bytes_out += bytes, (100, 100));
        e.outbound(
            host,
            ip("185.220.101.9"),
            443,
            bytes,
            hour * 3_600_000,
            hour * 3_600_000 + 60_000,
            new_dst,
            false,
        );
        e.check(&HourContext {
            baselines: b,
            hour,
            learning_hours: 168,
            min_week: 3,
            off_hours: true,
        })
    }

    #[test]
    fn nightly_backup_is_baseline() {
        let h = ip("10.20.1.1");
        let mut b = baselines(h, 1_200_000_000);
        assert!(run(&mut b, h, 1_250_000_000, false).is_empty());
    }

    #[test]
    fn night_upload_of_a_quiet_host_fires() {
        let h = ip("10.20.1.4");
        let mut b = baselines(h, 5_000_000);
        let got = run(&mut b, h, 2_000_000_000, true);
        assert_eq!(got.len(), 1);
        let c = &got[0];
        assert_eq!(c.src, h);
        assert_eq!(c.dst, Some(ip("185.220.101.9")));
        assert_eq!(c.dst_port, Some(443));
        // 6 + 1 (>= 1 GB) + new destination + off-hours.
        assert_eq!(c.severity, 9);
        assert_eq!(c.evidence["baseline_basis"], "hour-of-day");
        assert_eq!(c.evidence["baseline_samples"], 10);
        assert_eq!(c.evidence["baseline_median_bytes"], 5_000_000 / 1024 * 1024);
    }

    #[test]
    fn below_the_floor_or_learning_is_silent() {
        let h = ip("10.20.1.4");
        let mut b = baselines(h, 5_000_000);
        assert!(run(&mut b, h, 150_000_000, true).is_empty());
        // A host with two days of history is still learning.
        let mut young = Baselines::default();
        for hour in 194..242u64 {
            young.add(SeriesKey::Host(h), hour, |c| c.bytes_out += 1000, (100, 100));
            young.close_hour(hour, 24 * 28);
        }
        assert!(run(&mut young, h, 5_000_000_000, true).is_empty());
    }
}
