//! Evaluation scenarios: nine days of branch-office background (with its
//! benign look-alikes: nightly backup upload, hourly update check by every
//! host, NTP every 64 s, DNS to the internal resolver) and, in `attacks`, a
//! set of injected attacks whose hosts, times, sizes and targets are drawn
//! from the seed. Each attack comes with its ground truth so an evaluation can
//! say whether it was detected, by which alert, and how fast.
//!
//! Baseline-dependent attacks (exfiltration, flood) come after the default
//! seven-day learning period; beacons and scans come earlier as well, since
//! their detectors need no baseline.

use crate::model::{Attack, Office};
use crate::rng::Rng;
use std::net::Ipv4Addr;

pub const DAY_MS: u64 = 86_400_000;
const HOUR_MS: u64 = 3_600_000;
const MIN_MS: u64 = 60_000;

/// What an evaluation matches alerts against.
#[derive(Debug, Clone, PartialEq)]
pub struct Truth {
    /// Short name (`exfil-night`, `beacon-60s`, ...).
    pub name: String,
    /// Alert kind expected: exfiltration, beaconing, scan, spike.
    pub kind: &'static str,
    /// The alert's src must be this (attacker / sending host) ...
    pub src: Option<Ipv4Addr>,
    /// ... and/or its dst this (C2 server, flood victim).
    pub dst: Option<Ipv4Addr>,
    pub start_ms: u64,
    pub end_ms: u64,
}

impl Truth {
    /// One JSON object (flowgen has no JSON dependency; the fields are simple).
    pub fn to_json(&self) -> String {
        let ip = |v: Option<Ipv4Addr>| v.map(|a| format!("\"{a}\"")).unwrap_or_else(|| "null".into());
        format!(
            "{{\"name\":\"{}\",\"kind\":\"{}\",\"src\":{},\"dst\":{},\"start_ms\":{},\"end_ms\":{}}}",
            self.name,
            self.kind,
            ip(self.src),
            ip(self.dst),
            self.start_ms,
            self.end_ms
        )
    }
}

/// A whole scenario.
#[derive(Debug, Clone)]
pub struct Scenario {
    pub office: Office,
    pub start_ms: u64,
    pub duration_ms: u64,
    pub truth: Vec<Truth>,
}

/// Scenario names.
pub const NAMES: [&str; 2] = ["benign", "attacks"];

/// Build scenario `name` for `seed`, starting at `start_ms` (midnight UTC).
pub fn build(name: &str, seed: u64, start_ms: u64, hosts: usize) -> Option<Scenario> {
    let office = Office::new(seed, hosts);
    let mut s = Scenario {
        office,
        start_ms,
        duration_ms: 9 * DAY_MS,
        truth: Vec::new(),
    };
    match name {
        "benign" => {}
        "attacks" => inject(&mut s, seed),
        _ => return None,
    }
    Some(s)
}

fn external(r: &mut Rng) -> Ipv4Addr {
    // Outside the office's web pool (23-202.x): 185-195.x.
    Ipv4Addr::new(
        185 + r.below(10) as u8,
        r.below(256) as u8,
        r.below(256) as u8,
        1 + r.below(254) as u8,
    )
}

fn inject(s: &mut Scenario, seed: u64) {
    let mut r = Rng::derive(seed, 0x5ce7_a110);
    let n = s.office.hosts.len();
    let t0 = s.start_ms;
    // Distinct attack hosts (host 0 does the nightly backup: never an attacker here).
    let mut pool: Vec<usize> = (1..n).collect();
    let mut pick = |r: &mut Rng| -> usize {
        let i = r.below(pool.len() as u64) as usize;
        pool.swap_remove(i)
    };
    let host_ip = |i: usize| s.office.hosts[i];
    let mut attacks = Vec::new();
    let mut truth = Vec::new();

    // Bulk upload at night, day 8 (after learning).
    let h = pick(&mut r);
    let dst = external(&mut r);
    let at = t0 + 7 * DAY_MS + HOUR_MS + r.below(3 * HOUR_MS);
    let dur = (20 + r.below(40)) * MIN_MS;
    let bytes = 800_000_000 + r.below(2_200_000_000);
    attacks.push(Attack::Exfil {
        host: h,
        dst,
        at_ms: at,
        bytes,
        duration_ms: dur,
    });
    truth.push(Truth {
        name: "exfil-night".into(),
        kind: "exfiltration",
        src: Some(host_ip(h)),
        dst: None,
        start_ms: at,
        end_ms: at + dur,
    });

    // Jittered beacons at several periods.
    for (name, period, port, from_day, hours, miss) in [
        ("beacon-60s", MIN_MS, 443u16, 2u64, 8u64, 0.05),
        ("beacon-5m", 5 * MIN_MS, 8443, 3, 24, 0.1),
        ("beacon-1h", HOUR_MS, 80, 1, 72, 0.1),
    ] {
        let h = pick(&mut r);
        let c2 = external(&mut r);
        let from = t0 + from_day * DAY_MS + r.below(12) * HOUR_MS;
        let to = from + hours * HOUR_MS;
        attacks.push(Attack::Beacon {
            host: h,
            c2,
            port,
            period_ms: period,
            jitter: 0.15,
            miss,
            from_ms: from,
            to_ms: to,
        });
        truth.push(Truth {
            name: name.into(),
            kind: "beaconing",
            src: Some(host_ip(h)),
            dst: Some(c2),
            start_ms: from,
            end_ms: to,
        });
    }

    // Fast horizontal scans from an internal host: TCP 445, UDP 161, ICMP sweep.
    for (name, proto, port, day) in [("hscan-tcp", 6u8, 445u16, 4u64), ("hscan-udp", 17, 161, 5), ("hscan-icmp", 1, 0, 6)] {
        let h = pick(&mut r);
        let at = t0 + day * DAY_MS + (9 + r.below(8)) * HOUR_MS;
        let spread = 2 * MIN_MS;
        attacks.push(Attack::HorizontalScan {
            src: host_ip(h),
            proto,
            port,
            targets: 250,
            at_ms: at,
            spread_ms: spread,
        });
        truth.push(Truth {
            name: name.into(),
            kind: "scan",
            src: Some(host_ip(h)),
            dst: None,
            start_ms: at,
            end_ms: at + spread,
        });
    }

    // Vertical scan from outside against one host.
    let victim = pick(&mut r);
    let scanner = external(&mut r);
    let at = t0 + 5 * DAY_MS + r.below(DAY_MS);
    attacks.push(Attack::VerticalScan {
        src: scanner,
        dst_host: victim,
        ports: 1024,
        at_ms: at,
        spread_ms: MIN_MS,
    });
    truth.push(Truth {
        name: "vscan".into(),
        kind: "scan",
        src: Some(scanner),
        dst: None,
        start_ms: at,
        end_ms: at + MIN_MS,
    });

    // Slow scans: an internal host probing RDP on 100 hosts, one every 3 minutes;
    // an outside source probing 300 ports of one host, one every 2 minutes.
    let h = pick(&mut r);
    let at = t0 + 6 * DAY_MS + (8 + r.below(6)) * HOUR_MS;
    attacks.push(Attack::HorizontalScan {
        src: host_ip(h),
        proto: 6,
        port: 3389,
        targets: 100,
        at_ms: at,
        spread_ms: 100 * 3 * MIN_MS,
    });
    truth.push(Truth {
        name: "slow-hscan".into(),
        kind: "scan",
        src: Some(host_ip(h)),
        dst: None,
        start_ms: at,
        end_ms: at + 300 * MIN_MS,
    });
    let victim = pick(&mut r);
    let scanner = external(&mut r);
    let at = t0 + 7 * DAY_MS + r.below(12) * HOUR_MS;
    attacks.push(Attack::VerticalScan {
        src: scanner,
        dst_host: victim,
        ports: 300,
        at_ms: at,
        spread_ms: 300 * 2 * MIN_MS,
    });
    truth.push(Truth {
        name: "slow-vscan".into(),
        kind: "scan",
        src: Some(scanner),
        dst: None,
        start_ms: at,
        end_ms: at + 600 * MIN_MS,
    });

    // Inbound flood against one host, day 9 afternoon.
    let victim = pick(&mut r);
    let at = t0 + 8 * DAY_MS + (13 + r.below(4)) * HOUR_MS;
    let dur = (5 + r.below(15)) * MIN_MS;
    attacks.push(Attack::Flood {
        victim,
        sources: 50 + r.below(300) as u32,
        at_ms: at,
        duration_ms: dur,
        pps: 10_000 + r.below(40_000),
    });
    truth.push(Truth {
        name: "flood".into(),
        kind: "spike",
        src: None,
        dst: Some(host_ip(victim)),
        start_ms: at,
        end_ms: at + dur,
    });

    s.office.attacks = attacks;
    s.truth = truth;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scenarios_are_seeded_and_distinct() {
        let a = build("attacks", 1, 0, 50).unwrap_or_else(|| panic!());
        let b = build("attacks", 1, 0, 50).unwrap_or_else(|| panic!());
        let c = build("attacks", 2, 0, 50).unwrap_or_else(|| panic!());
        assert_eq!(a.truth, b.truth);
        assert_ne!(a.truth, c.truth);
        assert_eq!(a.truth.len(), 11);
        // Attack hosts are distinct and never the backup host.
        let mut srcs: Vec<Ipv4Addr> = a.truth.iter().filter_map(|t| t.src).filter(|s| s.octets()[0] == 10).collect();
        let n = srcs.len();
        srcs.sort();
        srcs.dedup();
        assert_eq!(srcs.len(), n);
        assert!(!srcs.contains(&a.office.hosts[0]));
        assert!(build("nope", 1, 0, 5).is_none());
        assert!(a.truth[0].to_json().starts_with("{\"name\":\"exfil-night\""));
    }
}
