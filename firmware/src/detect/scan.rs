//! Scan detection: Threshold Random Walk over first contacts plus fan-out
//! counting, for horizontal (one port, many hosts), vertical (many ports, one
//! host) and slow scans, over TCP, UDP and ICMP. Needs no baseline.
//!
//! Input is the first-contact outcomes from session stitching. Each new target
//! (host, port, protocol) of a source moves the source's log-likelihood ratio
//! (success down, failure up). A source is reported when the walk says
//! "scanner" and it has at least `min_targets` failed targets, or when inside
//! one `window` it touched `fanout_hosts` hosts on one port or `fanout_ports`
//! ports on one host (unanswered targets, and answered internal ones). The
//! walk is not windowed, so a slow scan accumulates until it crosses.

use super::settings::ScanSettings;
use super::stats::{Trw, TrwVerdict};
use super::suppress::Candidate;
use crate::alert::{Kind, severity};
use crate::evidence;
use crate::fasthash::{FxHashMap as HashMap, FxHashSet as HashSet};
use crate::flow::proto_name;
use std::net::IpAddr;

/// Targets remembered per source (beyond: counted as overflow, not walked).
const TARGETS_PER_SOURCE: usize = 4096;
/// Window fan-out set size per key.
const WINDOW_SET: usize = 4096;

#[derive(Debug, Default)]
struct Source {
    llr: f64,
    scanner: bool,
    /// Target -> (answered, suspicious: unanswered or internal-to-internal).
    targets: HashMap<(IpAddr, u16, u8), (bool, bool)>,
    suspicious: usize,
    overflow: u64,
    failed: usize,
    answered: usize,
    first_ms: u64,
    last_ms: u64,
    /// Last suspicious contact (the alert's last_seen).
    last_suspicious_ms: u64,
    internal: bool,
    window_start: u64,
    win_hosts: HashMap<(u16, u8), HashSet<IpAddr>>,
    win_ports: HashMap<IpAddr, HashSet<u16>>,
    /// Largest set in `win_hosts` / `win_ports` (kept as they grow).
    win_max_hosts: usize,
    win_max_ports: usize,
    /// Suspicious targets at the last report, and when (re-report when it
    /// doubles, or grew and a window passed).
    reported: usize,
    reported_at: u64,
}

pub struct Scan {
    cfg: ScanSettings,
    trw: Trw,
    sources: HashMap<IpAddr, Source>,
    pub evicted: u64,
    pub target_overflow: u64,
    /// Targets remembered over all sources, and answered targets forgotten to stay under the cap.
    total_targets: usize,
    pub targets_forgotten: u64,
}

/// Targets remembered over all sources.
const TOTAL_TARGETS: usize = 1_000_000;

fn ignorable(ip: &IpAddr) -> bool {
    match ip {
        IpAddr::V4(a) => a.is_multicast() || a.is_broadcast() || a.is_unspecified() || a.octets()[3] == 255,
        IpAddr::V6(a) => a.is_multicast() || a.is_unspecified(),
    }
}

impl Scan {
    pub fn new(cfg: ScanSettings) -> Scan {
        let trw = Trw::new(cfg.theta0, cfg.theta1, cfg.detection_probability, cfg.false_positive_rate);
        Scan {
            cfg,
            trw,
            sources: HashMap::default(),
            evicted: 0,
            target_overflow: 0,
            total_targets: 0,
            targets_forgotten: 0,
        }
    }

    pub fn tracked(&self) -> usize {
        self.sources.len()
    }

    /// One decided first contact. `dst_internal`/`src_internal` from the site's networks.
    #[allow(clippy::too_many_arguments)]
    pub fn outcome(
        &mut self,
        src: IpAddr,
        dst: IpAddr,
        port: u16,
        proto: u8,
        success: bool,
        at: u64,
        src_internal: bool,
        dst_internal: bool,
    ) -> Option<Candidate> {
        if !self.cfg.enabled || ignorable(&dst) || ignorable(&src) {
            return None;
        }
        if !self.sources.contains_key(&src)
            && self.sources.len() >= self.cfg.max_sources
            && let Some(old) = self.sources.iter().min_by_key(|(_, s)| s.last_ms).map(|(k, _)| *k)
        {
            if let Some(s) = self.sources.remove(&old) {
                self.total_targets -= s.targets.len();
            }
            self.evicted += 1;
        }
        let window = self.cfg.window.ms();
        let s = self.sources.entry(src).or_insert_with(|| Source {
            first_ms: at,
            window_start: at,
            ..Default::default()
        });
        s.last_ms = s.last_ms.max(at);
        if at >= s.window_start + window {
            s.window_start = at;
            s.win_hosts.clear();
            s.win_ports.clear();
            s.win_max_hosts = 0;
            s.win_max_ports = 0;
        }
        let port = if matches!(proto, 6 | 17 | 132) { port } else { 0 };
        let key = (dst, port, proto);
        if s.targets.contains_key(&key) {
            return None;
        }
        let suspicious = !success || (dst_internal && src_internal);
        if s.targets.len() >= TARGETS_PER_SOURCE {
            s.overflow += 1;
            self.target_overflow += 1;
        } else {
            s.targets.insert(key, (success, suspicious));
            self.total_targets += 1;
        }
        if suspicious {
            if s.suspicious == 0 {
                s.first_ms = at;
            }
            s.suspicious += 1;
            s.last_suspicious_ms = s.last_suspicious_ms.max(at);
        }
        s.internal = src_internal;
        let (llr, verdict) = self.trw.step(s.llr, success);
        s.llr = llr;
        match verdict {
            TrwVerdict::Scanner => {
                s.scanner = true;
                s.llr = s.llr.min(self.trw.upper * 4.0);
            }
            // Benign for now: start the walk again, so a host that turns scanner later is caught.
            TrwVerdict::Benign if !s.scanner => s.llr = 0.0,
            _ => {}
        }
        if success {
            s.answered += 1;
        } else {
            s.failed += 1;
        }
        if suspicious {
            let hs = s.win_hosts.entry((port, proto)).or_default();
            if hs.len() < WINDOW_SET {
                hs.insert(dst);
            }
            s.win_max_hosts = s.win_max_hosts.max(hs.len());
            let ps = s.win_ports.entry(dst).or_default();
            if ps.len() < WINDOW_SET {
                ps.insert(port);
            }
            s.win_max_ports = s.win_max_ports.max(ps.len());
        }
        let fan_h = s.win_max_hosts;
        let fan_v = s.win_max_ports;
        let result = self.decide(src, src_internal, fan_h, fan_v, at);
        if self.total_targets > TOTAL_TARGETS {
            self.forget_answered();
        }
        result
    }

    /// Over the global cap: the source remembering the most targets forgets its
    /// answered ones (meeting one again walks it towards benign, never scanner).
    fn forget_answered(&mut self) {
        let Some(src) = self.sources.iter().max_by_key(|(k, s)| (s.targets.len(), **k)).map(|(k, _)| *k) else {
            return;
        };
        if let Some(s) = self.sources.get_mut(&src) {
            let before = s.targets.len();
            s.targets.retain(|_, (_, suspicious)| *suspicious);
            let n = before - s.targets.len();
            self.total_targets -= n;
            self.targets_forgotten += n as u64;
        }
    }

    fn decide(&mut self, src: IpAddr, src_internal: bool, fan_h: usize, fan_v: usize, at: u64) -> Option<Candidate> {
        let window = self.cfg.window.ms();
        let s = self.sources.get_mut(&src)?;
        let by_trw = s.scanner && s.failed >= self.cfg.min_targets;
        let by_fan_h = fan_h >= self.cfg.fanout_hosts;
        let by_fan_v = fan_v >= self.cfg.fanout_ports;
        if !(by_trw || by_fan_h || by_fan_v) {
            return None;
        }
        if s.reported > 0 && s.suspicious < s.reported * 2 && !(s.suspicious > s.reported && at >= s.reported_at + window) {
            return None;
        }
        s.reported = s.suspicious;
        s.reported_at = at;
        Some(self.candidate(src, src_internal, (by_trw, by_fan_h, by_fan_v), fan_h, fan_v))
    }

    fn candidate(&self, src: IpAddr, src_internal: bool, how: (bool, bool, bool), fan_h: usize, fan_v: usize) -> Candidate {
        let s = &self.sources[&src];
        // Shape of the failed targets: hosts per port and ports per host.
        let mut hosts_per_port: HashMap<(u16, u8), usize> = HashMap::default();
        let mut ports_per_host: HashMap<IpAddr, usize> = HashMap::default();
        let mut hosts = HashSet::default();
        let mut ports = HashSet::default();
        let mut open: Vec<String> = Vec::new();
        // An answered probe is an "open" finding when it is lateral or one of
        // several ports the source tried on that host (a port scan).
        let mut all_ports: HashMap<IpAddr, usize> = HashMap::default();
        for &(h, _, _) in s.targets.keys() {
            *all_ports.entry(h).or_default() += 1;
        }
        for (&(h, p, pr), &(ok, suspicious)) in &s.targets {
            if ok && (suspicious || all_ports.get(&h).is_some_and(|n| *n > 1)) {
                open.push(format!("{h}:{p}/{}", proto_name(pr).unwrap_or("?")));
            }
            if !suspicious {
                continue;
            }
            *hosts_per_port.entry((p, pr)).or_default() += 1;
            *ports_per_host.entry(h).or_default() += 1;
            hosts.insert(h);
            ports.insert((p, pr));
        }
        open.sort();
        let open_count = open.len();
        open.truncate(10);
        let ((top_port, top_proto), port_hosts) = hosts_per_port
            .iter()
            .max_by_key(|(k, n)| (**n, std::cmp::Reverse(**k)))
            .map(|(k, n)| (*k, *n))
            .unwrap_or(((0, 0), 0));
        let (top_host, host_ports) = ports_per_host
            .iter()
            .max_by_key(|(h, n)| (**n, std::cmp::Reverse(**h)))
            .map(|(h, n)| (Some(*h), *n))
            .unwrap_or((None, 0));
        let vertical = host_ports > port_hosts;
        let total = s.suspicious;
        let unanswered = s.failed;
        let secs = (s.last_suspicious_ms.saturating_sub(s.first_ms)) / 1000;
        let during = crate::units::duration_ms(secs * 1000);
        let pname = proto_name(top_proto).map(str::to_string).unwrap_or_else(|| top_proto.to_string());
        let (dst, dst_port, shape, summary) = if vertical {
            let h = top_host.map(|h| h.to_string()).unwrap_or_default();
            (
                top_host,
                None,
                "vertical",
                format!("{src} probed {host_ports} ports of {h} ({unanswered} targets unanswered in all) over {during}"),
            )
        } else {
            (
                None,
                if top_proto == 1 || top_proto == 58 { None } else { Some(top_port) },
                "horizontal",
                format!(
                    "{src} probed {port_hosts} hosts on {} ({unanswered} targets unanswered in all) over {during}",
                    if top_proto == 1 || top_proto == 58 {
                        pname.clone()
                    } else {
                        format!("port {top_port}/{pname}")
                    },
                ),
            )
        };
        let mut m = 0;
        if src_internal {
            m += 2;
        }
        if total >= 250 {
            m += 1;
        }
        if !open.is_empty() {
            m += 1;
        }
        let mut methods = Vec::new();
        if how.0 {
            methods.push("trw");
        }
        if how.1 {
            methods.push("fanout-hosts");
        }
        if how.2 {
            methods.push("fanout-ports");
        }
        Candidate {
            kind: Kind::Scan,
            group: Some(format!("scan/{src}/{shape}")),
            src,
            dst,
            dst_port,
            proto: Some(top_proto),
            first_seen_ms: s.first_ms,
            last_seen_ms: s.last_suspicious_ms.max(s.first_ms),
            severity: severity(Kind::Scan, m),
            summary,
            attack: vec![if src_internal { "T1046" } else { "T1595" }.to_string()],
            evidence: evidence! {
                "shape" => shape,
                "methods" => methods,
                "targets" => total,
                "failed" => s.failed,
                "answered" => s.answered,
                "answered_probes" => open_count,
                "distinct_hosts" => hosts.len(),
                "distinct_ports" => ports.len(),
                "top_port" => top_port,
                "top_port_hosts" => port_hosts,
                "top_host" => top_host.map(|h| h.to_string()),
                "top_host_ports" => host_ports,
                "proto" => pname,
                "trw_llr" => (s.llr * 1000.0).round() / 1000.0,
                "trw_threshold" => (self.trw.upper * 1000.0).round() / 1000.0,
                "window_s" => self.cfg.window.ms() / 1000,
                "window_max_hosts_on_port" => fan_h,
                "window_max_ports_on_host" => fan_v,
                "answered_targets" => open,
                "duration_s" => secs,
            },
        }
    }

    /// Re-report sources whose scan grew since their last report and went
    /// quiet for a window (so the stored alert ends with the whole scan).
    pub fn refresh(&mut self, now: u64) -> Vec<Candidate> {
        let window = self.cfg.window.ms();
        let mut due: Vec<IpAddr> = self
            .sources
            .iter()
            .filter(|(_, s)| s.reported > 0 && s.suspicious > s.reported && now >= s.reported_at + window)
            .map(|(k, _)| *k)
            .collect();
        due.sort();
        let mut out = Vec::new();
        for src in due {
            let Some(s) = self.sources.get_mut(&src) else { continue };
            s.reported = s.suspicious;
            s.reported_at = now;
            let internal = s.internal;
            let fan_h = s.win_max_hosts;
            let fan_v = s.win_max_ports;
            let how = (s.scanner, fan_h >= self.cfg.fanout_hosts, fan_v >= self.cfg.fanout_ports);
            out.push(self.candidate(src, internal, how, fan_h, fan_v));
        }
        out
    }

    /// Forget sources idle for `source_idle`.
    pub fn expire(&mut self, now: u64) {
        let idle = self.cfg.source_idle.ms();
        let mut gone = 0;
        self.sources.retain(|_, s| {
            let keep = s.last_ms + idle >= now;
            if !keep {
                gone += s.targets.len();
            }
            keep
        });
        self.total_targets -= gone;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(a: u8, b: u8) -> IpAddr {
        IpAddr::from([10, 0, a, b])
    }

    #[test]
    fn horizontal_scan_by_trw() {
        let mut s = Scan::new(ScanSettings::default());
        let mut fired = None;
        for i in 0..30u8 {
            if let Some(c) = s.outcome(ip(0, 9), ip(1, i + 1), 445, 6, false, u64::from(i) * 1000, true, true) {
                fired.get_or_insert((i, c));
            }
        }
        let (at, c) = fired.unwrap_or_else(|| panic!("no alert"));
        // min_targets = 20 failures (the walk itself crossed at the 4th).
        assert_eq!(at, 19);
        assert_eq!(c.dst, None);
        assert_eq!(c.dst_port, Some(445));
        assert_eq!(c.attack, vec!["T1046"]);
        assert_eq!(c.evidence["shape"], "horizontal");
        assert_eq!(c.severity, 6);
    }

    #[test]
    fn vertical_scan_from_outside() {
        let mut s = Scan::new(ScanSettings::default());
        let mut got = None;
        for p in 1..=100u16 {
            if let Some(c) = s.outcome(IpAddr::from([203, 0, 113, 5]), ip(1, 2), p, 6, p == 22, u64::from(p), false, true) {
                got = Some(c);
            }
        }
        let c = got.unwrap_or_else(|| panic!("no alert"));
        assert_eq!(c.dst, Some(ip(1, 2)));
        assert_eq!(c.dst_port, None);
        assert_eq!(c.attack, vec!["T1595"]);
        // The last report (targets doubled since the first) knows port 22 answered.
        assert_eq!(c.evidence["answered"], 1);
        assert_eq!(c.evidence["targets"], 80);
    }

    #[test]
    fn successful_clients_are_not_scanners() {
        let mut s = Scan::new(ScanSettings::default());
        // 500 web servers, 1 in 20 not answering.
        for i in 0..500u32 {
            let b = i.to_be_bytes();
            let dst = IpAddr::from([23, b[1], b[2], b[3]]);
            assert!(
                s.outcome(ip(0, 1), dst, 443, 6, i % 20 != 0, u64::from(i) * 1000, true, false)
                    .is_none()
            );
        }
    }

    #[test]
    fn target_memory_is_capped_by_forgetting_answered_targets() {
        let mut s = Scan::new(ScanSettings::default());
        let n = TOTAL_TARGETS * 11 / 10;
        for i in 0..n as u32 {
            let b = i.to_be_bytes();
            // Sources of up to 4096 answered targets each, one unanswered per source.
            let k = (i / 4096).to_be_bytes();
            let src = IpAddr::from([10, 1, k[2], k[3]]);
            let dst = IpAddr::from([23, b[1], b[2], b[3]]);
            s.outcome(src, dst, 443, 6, i % 4096 != 0, u64::from(i), true, false);
        }
        assert!(s.total_targets <= TOTAL_TARGETS, "{}", s.total_targets);
        assert!(s.targets_forgotten > 0);
        let kept: usize = s.sources.values().map(|x| x.targets.len()).sum();
        assert_eq!(kept, s.total_targets);
    }

    #[test]
    fn multicast_is_ignored_and_sources_bounded() {
        let cfg = ScanSettings {
            max_sources: 10,
            ..Default::default()
        };
        let mut s = Scan::new(cfg);
        assert!(
            s.outcome(ip(0, 1), IpAddr::from([239, 255, 255, 250]), 1900, 17, false, 0, true, false)
                .is_none()
        );
        assert_eq!(s.tracked(), 0);
        for i in 0..20u8 {
            s.outcome(ip(2, i), ip(1, 1), 80, 6, true, u64::from(i), true, true);
        }
        assert_eq!(s.tracked(), 10);
        assert_eq!(s.evicted, 10);
    }
}
