//! A synthetic branch office: internal hosts, an internal DNS resolver,
//! web/SaaS destinations, NTP every 64 s, an hourly update check by every host,
//! a nightly backup upload, a diurnal/weekly activity curve, and optional
//! injected attacks. Generation is per minute of event time and seeded by
//! (seed, minute), so any window can be produced alone and reproducibly.

use crate::rng::Rng;
use std::net::{IpAddr, Ipv4Addr};

/// One generated flow (unidirectional, as an exporter reports it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Flow {
    pub start_ms: u64,
    pub end_ms: u64,
    pub src: IpAddr,
    pub dst: IpAddr,
    pub src_port: u16,
    pub dst_port: u16,
    pub proto: u8,
    pub tcp_flags: u8,
    pub bytes: u64,
    pub packets: u64,
    pub in_if: u16,
    pub out_if: u16,
}

/// Injected attack scenarios.
#[derive(Debug, Clone, PartialEq)]
pub enum Attack {
    /// Bulk upload from `host` to an external address starting at `at_ms`.
    Exfil {
        host: usize,
        dst: Ipv4Addr,
        at_ms: u64,
        bytes: u64,
        duration_ms: u64,
    },
    /// Periodic C2 check-ins with ± `jitter` (fraction) and `miss` chance per beat.
    Beacon {
        host: usize,
        c2: Ipv4Addr,
        port: u16,
        period_ms: u64,
        jitter: f64,
        miss: f64,
        from_ms: u64,
        to_ms: u64,
    },
    /// One port on many internal hosts (proto 6 SYN probes, 17 UDP probes, 1 ICMP echo).
    HorizontalScan {
        src: Ipv4Addr,
        proto: u8,
        port: u16,
        targets: u32,
        at_ms: u64,
        spread_ms: u64,
    },
    /// Many ports on one host.
    VerticalScan {
        src: Ipv4Addr,
        dst_host: usize,
        ports: u16,
        at_ms: u64,
        spread_ms: u64,
    },
    /// Inbound flood against `victim` from many sources.
    Flood {
        victim: usize,
        sources: u32,
        at_ms: u64,
        duration_ms: u64,
        pps: u64,
    },
}

/// The office model.
#[derive(Debug, Clone)]
pub struct Office {
    pub seed: u64,
    pub hosts: Vec<Ipv4Addr>,
    pub resolver: Ipv4Addr,
    pub backup_host: usize,
    pub backup_server: Ipv4Addr,
    pub update_server: Ipv4Addr,
    pub ntp_server: Ipv4Addr,
    pub web: Vec<Ipv4Addr>,
    /// Flows per host per minute at peak.
    pub intensity: f64,
    pub attacks: Vec<Attack>,
}

/// Largest office the address plan holds.
pub const MAX_HOSTS: usize = 250 * 254;

/// The internal network flowgen uses.
pub const OFFICE_NET: [u8; 2] = [10, 20];

impl Office {
    /// An office of `hosts` workstations.
    pub fn new(seed: u64, hosts: usize) -> Office {
        let mut r = Rng::derive(seed, u64::MAX);
        // 10.20.1.1 .. 10.20.254.250: at most MAX_HOSTS workstations.
        let hosts: Vec<Ipv4Addr> = (0..hosts.clamp(1, MAX_HOSTS))
            .map(|i| Ipv4Addr::new(10, 20, 1 + (i / 250) as u8, 1 + (i % 250) as u8))
            .collect();
        let web = (0..200)
            .map(|_| {
                Ipv4Addr::new(
                    23 + r.below(180) as u8,
                    r.below(256) as u8,
                    r.below(256) as u8,
                    1 + r.below(254) as u8,
                )
            })
            .collect();
        Office {
            seed,
            resolver: Ipv4Addr::new(10, 20, 0, 2),
            backup_host: 0,
            backup_server: Ipv4Addr::new(198, 51, 100, 20),
            update_server: Ipv4Addr::new(203, 0, 113, 80),
            ntp_server: Ipv4Addr::new(192, 0, 2, 123),
            web,
            hosts,
            intensity: 4.0,
            attacks: Vec::new(),
        }
    }

    /// Activity factor for a time: business hours on weekdays, quiet nights and weekends.
    pub fn activity(t_ms: u64) -> f64 {
        let hour = (t_ms / 3_600_000) % 24;
        let day = (t_ms / 86_400_000 + 3) % 7; // 1970-01-01 was a Thursday; 0 = Monday
        let weekday = day < 5;
        let base: f64 = match hour {
            8..=11 | 13..=17 => 1.0,
            12 => 0.6,
            7 | 18 => 0.4,
            19..=22 => 0.12,
            _ => 0.04,
        };
        if weekday { base } else { base * 0.15 }
    }

    /// Every flow starting in `[from_ms, to_ms)`, sorted by start.
    pub fn flows(&self, from_ms: u64, to_ms: u64) -> Vec<Flow> {
        let mut out = Vec::new();
        let first_minute = from_ms / 60_000;
        let last_minute = to_ms.div_ceil(60_000);
        for m in first_minute..last_minute {
            self.minute(m, &mut out);
        }
        for a in &self.attacks {
            self.attack(a, from_ms, to_ms, &mut out);
        }
        out.retain(|f| f.start_ms >= from_ms && f.start_ms < to_ms);
        out.sort_by_key(|f| (f.start_ms, f.src, f.dst, f.src_port));
        out
    }

    fn minute(&self, m: u64, out: &mut Vec<Flow>) {
        let t0 = m * 60_000;
        let mut r = Rng::derive(self.seed, m);
        let act = Office::activity(t0);
        for (i, &h) in self.hosts.iter().enumerate() {
            let h = IpAddr::V4(h);
            // Web and SaaS sessions.
            let n = poisson(&mut r, self.intensity * act);
            for _ in 0..n {
                let dst = IpAddr::V4(self.web[r.below(self.web.len() as u64) as usize]);
                let start = t0 + r.below(60_000);
                let dur = 50 + r.below(20_000);
                let up = r.size(1_500.0);
                let down = r.size(40_000.0);
                let sport = 32_768 + r.below(28_000) as u16;
                let port = if r.chance(0.9) { 443 } else { 80 };
                out.push(tcp(start, dur, h, dst, sport, port, up, 0x1b, 1, 2));
                out.push(tcp(start + 20, dur, dst, h, port, sport, down, 0x1b, 2, 1));
                // DNS lookup before it, to the internal resolver, and its answer.
                out.push(udp(
                    start.saturating_sub(30),
                    2,
                    h,
                    IpAddr::V4(self.resolver),
                    sport.wrapping_add(1),
                    53,
                    70,
                    1,
                    3,
                    3,
                ));
                out.push(udp(
                    start.saturating_sub(28),
                    1,
                    IpAddr::V4(self.resolver),
                    h,
                    53,
                    sport.wrapping_add(1),
                    140 + r.below(200),
                    1,
                    3,
                    3,
                ));
            }
            // NTP every 64 s (a benign periodic look-alike).
            let phase = (i as u64 * 7_919) % 64_000;
            let mut t = (t0.saturating_sub(phase)).div_ceil(64_000) * 64_000 + phase;
            while t < t0 + 60_000 {
                out.push(udp(t, 1, h, IpAddr::V4(self.ntp_server), 123, 123, 76, 1, 1, 2));
                out.push(udp(t + 20, 1, IpAddr::V4(self.ntp_server), h, 123, 123, 76, 1, 2, 1));
                t += 64_000;
            }
            // Hourly update check, minute fixed per host.
            if m % 60 == (i as u64 * 13) % 60 {
                let start = t0 + (i as u64 * 1_013) % 60_000;
                out.push(tcp(
                    start,
                    800,
                    h,
                    IpAddr::V4(self.update_server),
                    40_000 + i as u16,
                    443,
                    2_400,
                    0x1b,
                    1,
                    2,
                ));
                out.push(tcp(
                    start + 20,
                    780,
                    IpAddr::V4(self.update_server),
                    h,
                    443,
                    40_000 + i as u16,
                    6_100,
                    0x1b,
                    2,
                    1,
                ));
            }
        }
        // Nightly backup: 02:00-02:40 every day, a large upload (baseline, not an attack).
        if (m % 1440) / 60 == 2 && m % 60 < 40 {
            let h = IpAddr::V4(self.hosts[self.backup_host]);
            out.push(tcp(
                t0,
                59_000,
                h,
                IpAddr::V4(self.backup_server),
                50_000,
                22,
                25_000_000 + r.below(5_000_000),
                0x1b,
                1,
                2,
            ));
            out.push(tcp(
                t0 + 20,
                59_000,
                IpAddr::V4(self.backup_server),
                h,
                22,
                50_000,
                400_000 + r.below(40_000),
                0x1b,
                2,
                1,
            ));
        }
    }

    fn attack(&self, a: &Attack, from: u64, to: u64, out: &mut Vec<Flow>) {
        let mut r = Rng::derive(self.seed ^ 0xa77a, from / 60_000);
        match *a {
            Attack::Exfil {
                host,
                dst,
                at_ms,
                bytes,
                duration_ms,
            } => {
                let h = IpAddr::V4(self.hosts[host % self.hosts.len()]);
                // Exported as one flow record per minute (active timeout).
                let mut t = at_ms;
                let per_min = bytes / duration_ms.div_ceil(60_000).max(1);
                while t < at_ms + duration_ms {
                    if t >= from && t < to {
                        out.push(tcp(
                            t,
                            59_000.min(at_ms + duration_ms - t),
                            h,
                            IpAddr::V4(dst),
                            51_515,
                            443,
                            per_min,
                            0x1b,
                            1,
                            2,
                        ));
                    }
                    t += 60_000;
                }
            }
            Attack::Beacon {
                host,
                c2,
                port,
                period_ms,
                jitter,
                miss,
                from_ms,
                to_ms,
            } => {
                let h = IpAddr::V4(self.hosts[host % self.hosts.len()]);
                let mut k = from.saturating_sub(from_ms) / period_ms.max(1);
                loop {
                    let nominal = from_ms + k * period_ms;
                    if nominal >= to_ms || nominal >= to + period_ms {
                        break;
                    }
                    let mut br = Rng::derive(self.seed ^ 0xbeac, nominal);
                    let off = ((br.unit() * 2.0 - 1.0) * jitter * period_ms as f64) as i64;
                    let t = (nominal as i64 + off).max(0) as u64;
                    if t >= from && t < to && !br.chance(miss) {
                        let size = 600 + br.below(60);
                        out.push(tcp(t, 300, h, IpAddr::V4(c2), 45_000 + (k % 1000) as u16, port, size, 0x1b, 1, 2));
                        out.push(tcp(
                            t + 40,
                            300,
                            IpAddr::V4(c2),
                            h,
                            port,
                            45_000 + (k % 1000) as u16,
                            1_200 + br.below(80),
                            0x1b,
                            2,
                            1,
                        ));
                    }
                    k += 1;
                }
            }
            Attack::HorizontalScan {
                src,
                proto,
                port,
                targets,
                at_ms,
                spread_ms,
            } => {
                for i in 0..targets {
                    let t = at_ms + spread_ms * i as u64 / targets.max(1) as u64;
                    if t >= from && t < to {
                        let dst = Ipv4Addr::new(10, 20, 1 + ((i / 250) % 254) as u8, (i % 250) as u8 + 1);
                        let live = self.hosts.contains(&dst);
                        let (s, d) = (IpAddr::V4(src), IpAddr::V4(dst));
                        match proto {
                            17 => out.push(udp(t, 0, s, d, 61_000, port, 60, 1, 2, 1)),
                            1 => {
                                let mut f = udp(t, 0, s, d, 0, 8 << 8, 84, 1, 2, 1);
                                f.proto = 1;
                                out.push(f);
                                if live {
                                    // Live hosts answer the echo request.
                                    let mut rf = udp(t + 1, 0, d, s, 0, 0, 84, 1, 1, 2);
                                    rf.proto = 1;
                                    out.push(rf);
                                }
                            }
                            _ => {
                                out.push(tcp(t, 0, s, d, 61_000, port, 40 + r.below(4) * 4, 0x02, 2, 1));
                                if live {
                                    // Closed port on a live host: RST.
                                    out.push(tcp(t + 1, 0, d, s, port, 61_000, 40, 0x14, 1, 2));
                                }
                            }
                        }
                    }
                }
            }
            Attack::VerticalScan {
                src,
                dst_host,
                ports,
                at_ms,
                spread_ms,
            } => {
                let dst = IpAddr::V4(self.hosts[dst_host % self.hosts.len()]);
                for p in 1..=ports {
                    let t = at_ms + spread_ms * p as u64 / ports.max(1) as u64;
                    if t >= from && t < to {
                        out.push(tcp(t, 0, IpAddr::V4(src), dst, 62_000, p, 44, 0x02, 2, 1));
                        // Open ports answer SYN-ACK, closed ones RST.
                        let flags = if matches!(p, 22 | 135 | 445) { 0x12 } else { 0x14 };
                        out.push(tcp(t + 1, 0, dst, IpAddr::V4(src), p, 62_000, 44, flags, 1, 2));
                    }
                }
            }
            Attack::Flood {
                victim,
                sources,
                at_ms,
                duration_ms,
                pps,
            } => {
                let dst = IpAddr::V4(self.hosts[victim % self.hosts.len()]);
                let mut t = at_ms;
                while t < at_ms + duration_ms {
                    if t >= from && t < to {
                        for s in 0..sources {
                            let src = Ipv4Addr::new(45, (s >> 8) as u8, s as u8, 7);
                            let pk = pps * 60 / sources.max(1) as u64;
                            out.push(udp(t, 59_000, IpAddr::V4(src), dst, 1024 + s as u16, 80, pk * 512, pk, 2, 1));
                        }
                    }
                    t += 60_000;
                }
            }
        }
    }
}

fn poisson(r: &mut Rng, lambda: f64) -> u32 {
    let l = (-lambda).exp();
    let mut k = 0;
    let mut p = 1.0;
    loop {
        p *= r.unit();
        if p <= l || k > 1000 {
            return k;
        }
        k += 1;
    }
}

#[allow(clippy::too_many_arguments)]
fn tcp(start: u64, dur: u64, src: IpAddr, dst: IpAddr, sport: u16, dport: u16, bytes: u64, flags: u8, in_if: u16, out_if: u16) -> Flow {
    Flow {
        start_ms: start,
        end_ms: start + dur,
        src,
        dst,
        src_port: sport,
        dst_port: dport,
        proto: 6,
        tcp_flags: flags,
        packets: bytes.div_ceil(1200).max(1),
        bytes,
        in_if,
        out_if,
    }
}

#[allow(clippy::too_many_arguments)]
fn udp(start: u64, dur: u64, src: IpAddr, dst: IpAddr, sport: u16, dport: u16, bytes: u64, packets: u64, in_if: u16, out_if: u16) -> Flow {
    Flow {
        start_ms: start,
        end_ms: start + dur,
        src,
        dst,
        src_port: sport,
        dst_port: dport,
        proto: 17,
        tcp_flags: 0,
        bytes,
        packets,
        in_if,
        out_if,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deterministic_and_windowed() {
        let o = Office::new(42, 20);
        let day = 1_700_000_000_000 / 86_400_000 * 86_400_000;
        let a = o.flows(day + 10 * 3_600_000, day + 11 * 3_600_000);
        let b = o.flows(day + 10 * 3_600_000, day + 11 * 3_600_000);
        assert_eq!(a, b);
        assert!(!a.is_empty());
        // Two half windows give the same flows as the whole.
        let mut c = o.flows(day + 10 * 3_600_000, day + 10 * 3_600_000 + 1_800_000);
        c.extend(o.flows(day + 10 * 3_600_000 + 1_800_000, day + 11 * 3_600_000));
        assert_eq!(a, c);
    }

    #[test]
    fn beacon_period_and_jitter() {
        let mut o = Office::new(1, 5);
        o.intensity = 0.0;
        let c2 = Ipv4Addr::new(185, 100, 87, 5);
        o.attacks.push(Attack::Beacon {
            host: 1,
            c2,
            port: 443,
            period_ms: 300_000,
            jitter: 0.15,
            miss: 0.0,
            from_ms: 0,
            to_ms: 3_600_000,
        });
        let beats: Vec<u64> = o
            .flows(0, 3_600_000)
            .into_iter()
            .filter(|f| f.dst == IpAddr::V4(c2))
            .map(|f| f.start_ms)
            .collect();
        assert_eq!(beats.len(), 12);
        for (k, t) in beats.iter().enumerate() {
            let nominal = k as i64 * 300_000;
            assert!((*t as i64 - nominal).abs() <= 45_000, "beat {k} at {t}");
        }
    }
}
