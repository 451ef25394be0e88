//! The last stage of detection: allow-lists and suppression.
//!
//! A detection (a [`Candidate`]) first meets the allow-list: an entry matching
//! every field it names (src/dst CIDR, port, protocol, kinds) drops it, and
//! the drop is counted per kind and per entry. What passes is folded into the
//! open alert of its group (by default kind, src, dst and port) when it starts
//! within `suppress_window` of that alert's last_seen: count, last_seen,
//! severity and evidence are updated under the same id. Otherwise it opens a
//! new alert. Open alerts are bounded (oldest closed first, counted) and are
//! restored from the state database after a restart.

use super::settings::{AllowRule, parse_proto};
use crate::alert::{Alert, Kind, alert_id};
use std::collections::HashMap;
use std::net::IpAddr;

/// A detection before allow-listing and suppression.
#[derive(Debug, Clone)]
pub struct Candidate {
    pub kind: Kind,
    /// Suppression group; `None` = kind/src/dst/port.
    pub group: Option<String>,
    pub src: IpAddr,
    pub dst: Option<IpAddr>,
    pub dst_port: Option<u16>,
    pub proto: Option<u8>,
    pub first_seen_ms: u64,
    pub last_seen_ms: u64,
    pub severity: u8,
    pub summary: String,
    pub attack: Vec<String>,
    pub evidence: serde_json::Map<String, serde_json::Value>,
}

impl Candidate {
    fn group_key(&self) -> String {
        self.group.clone().unwrap_or_else(|| {
            format!(
                "{}/{}/{}/{}",
                self.kind.as_str(),
                self.src,
                self.dst.map(|d| d.to_string()).unwrap_or_default(),
                self.dst_port.map(|p| p.to_string()).unwrap_or_default()
            )
        })
    }
}

/// Open alerts kept for suppression.
const MAX_OPEN: usize = 65_536;

#[derive(Debug, Default, Clone)]
pub struct SuppressCounters {
    /// Detections folded into an existing alert.
    pub folded: u64,
    /// Allow-listed per kind (index = position in `Kind::ALL`).
    pub allowed: [u64; 4],
    /// Allow-listed per rule (name or index).
    pub per_rule: Vec<(String, u64)>,
    /// Open alerts closed early because the table was full.
    pub evicted: u64,
}

pub struct Suppressor {
    window_ms: u64,
    /// How long an alert stays open for folding: the window plus the longest
    /// detector look-back (a beacon detection covers the last day of connections).
    retain_ms: u64,
    rules: Vec<AllowRule>,
    open: HashMap<String, Alert>,
    pub counters: SuppressCounters,
}

impl Suppressor {
    pub fn new(window_ms: u64, lookback_ms: u64, rules: Vec<AllowRule>) -> Suppressor {
        let per_rule = rules
            .iter()
            .enumerate()
            .map(|(i, r)| (r.name.clone().unwrap_or_else(|| format!("rule{}", i + 1)), 0))
            .collect();
        Suppressor {
            window_ms,
            retain_ms: window_ms + lookback_ms,
            rules,
            open: HashMap::new(),
            counters: SuppressCounters {
                per_rule,
                ..Default::default()
            },
        }
    }

    /// New settings (a configuration reload): open alerts stay open; the
    /// allow-list's per-entry counters are kept for entries whose name stays.
    pub fn reconfigure(&mut self, window_ms: u64, lookback_ms: u64, rules: Vec<AllowRule>) {
        let mut fresh = Suppressor::new(window_ms, lookback_ms, rules);
        for (name, n) in fresh.counters.per_rule.iter_mut() {
            if let Some((_, old)) = self.counters.per_rule.iter().find(|(o, _)| o == name) {
                *n = *old;
            }
        }
        fresh.open = std::mem::take(&mut self.open);
        let per_rule = std::mem::take(&mut fresh.counters.per_rule);
        fresh.counters = std::mem::take(&mut self.counters);
        fresh.counters.per_rule = per_rule;
        *self = fresh;
    }

    /// Re-open alerts from the state database (those still inside the window of the newest).
    pub fn restore(&mut self, alerts: Vec<(String, Alert)>) {
        let newest = alerts.iter().map(|(_, a)| a.last_seen_ms).max().unwrap_or(0);
        for (group, a) in alerts {
            if a.last_seen_ms + self.retain_ms >= newest {
                self.open.insert(group, a);
            }
        }
    }

    fn allowed_by(&self, c: &Candidate) -> Option<usize> {
        self.rules.iter().position(|r| {
            r.src.is_none_or(|n| n.contains(&c.src))
                && r.dst.is_none_or(|n| c.dst.is_some_and(|d| n.contains(&d)))
                && r.port.is_none_or(|p| c.dst_port == Some(p))
                && r.proto
                    .as_deref()
                    .is_none_or(|p| parse_proto(p).is_some_and(|p| c.proto == Some(p)))
                && (r.kinds.is_empty() || r.kinds.iter().any(|k| k == c.kind.as_str()))
        })
    }

    /// Allow-list, then fold or open. Returns the alert to store (new or updated)
    /// with its suppression group, or None when allow-listed.
    pub fn submit(&mut self, c: Candidate) -> Option<(String, Alert)> {
        if let Some(i) = self.allowed_by(&c) {
            if let Some(k) = Kind::ALL.iter().position(|k| *k == c.kind) {
                self.counters.allowed[k] += 1;
            }
            if let Some(r) = self.counters.per_rule.get_mut(i) {
                r.1 += 1;
            }
            return None;
        }
        let group = c.group_key();
        if let Some(a) = self.open.get_mut(&group)
            && c.first_seen_ms <= a.last_seen_ms + self.window_ms
        {
            a.count += 1;
            a.last_seen_ms = a.last_seen_ms.max(c.last_seen_ms);
            a.first_seen_ms = a.first_seen_ms.min(c.first_seen_ms);
            a.severity = a.severity.max(c.severity);
            a.summary = c.summary;
            // The evidence is the latest; when the alert was first raised stays.
            let first = a.evidence.get("detected_at").cloned();
            let mut ev = c.evidence;
            if let Some(first) = first
                && let Some(latest) = ev.insert("detected_at".into(), first)
            {
                ev.insert("last_detected_at".into(), latest);
            }
            a.evidence = ev;
            self.counters.folded += 1;
            return Some((group, a.clone()));
        }
        let a = Alert {
            id: alert_id(c.kind, c.src, c.dst, c.dst_port, c.first_seen_ms),
            kind: c.kind,
            severity: c.severity,
            src: c.src,
            dst: c.dst,
            dst_port: c.dst_port,
            first_seen_ms: c.first_seen_ms,
            last_seen_ms: c.last_seen_ms,
            count: 1,
            summary: c.summary,
            attack: c.attack,
            evidence: c.evidence,
        };
        if self.open.len() >= MAX_OPEN
            && let Some(oldest) = self.open.iter().min_by_key(|(_, a)| a.last_seen_ms).map(|(k, _)| k.clone())
        {
            self.open.remove(&oldest);
            self.counters.evicted += 1;
        }
        self.open.insert(group.clone(), a.clone());
        Some((group, a))
    }

    /// Close alerts that no detection can fold into any more.
    pub fn expire(&mut self, now: u64) {
        let w = self.retain_ms;
        self.open.retain(|_, a| a.last_seen_ms + w >= now);
    }

    /// Whether an alert of `kind` from `src` is open (for cross-detector correlation).
    pub fn open_for(&self, kind: Kind, src: IpAddr, now: u64) -> Option<&Alert> {
        self.open
            .values()
            .find(|a| a.kind == kind && a.src == src && a.last_seen_ms + self.window_ms >= now)
    }

    /// Whether an alert of `kind` towards `dst` is open.
    pub fn open_to(&self, kind: Kind, dst: IpAddr) -> bool {
        self.open.values().any(|a| a.kind == kind && a.dst == Some(dst))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cand(kind: Kind, src: [u8; 4], port: u16, first: u64) -> Candidate {
        Candidate {
            kind,
            group: None,
            src: IpAddr::from(src),
            dst: Some(IpAddr::from([198, 51, 100, 1])),
            dst_port: Some(port),
            proto: Some(6),
            first_seen_ms: first,
            last_seen_ms: first + 10,
            severity: 5,
            summary: "x".into(),
            attack: vec![],
            evidence: Default::default(),
        }
    }

    #[test]
    fn repeats_inside_the_window_fold() {
        let mut s = Suppressor::new(3_600_000, 0, vec![]);
        let (_, a) = s.submit(cand(Kind::Beaconing, [10, 0, 0, 1], 443, 0)).unwrap_or_else(|| panic!());
        let (_, b) = s
            .submit(cand(Kind::Beaconing, [10, 0, 0, 1], 443, 1_000_000))
            .unwrap_or_else(|| panic!());
        assert_eq!(a.id, b.id);
        assert_eq!(b.count, 2);
        assert_eq!(b.last_seen_ms, 1_000_010);
        // Other port: other alert.
        let (_, c) = s.submit(cand(Kind::Beaconing, [10, 0, 0, 1], 80, 0)).unwrap_or_else(|| panic!());
        assert_ne!(c.id, a.id);
        // After the window: a new alert.
        let (_, d) = s
            .submit(cand(Kind::Beaconing, [10, 0, 0, 1], 443, 1_000_010 + 3_600_001))
            .unwrap_or_else(|| panic!());
        assert_ne!(d.id, a.id);
        assert_eq!(d.count, 1);
        assert_eq!(s.counters.folded, 1);
    }

    #[test]
    fn allow_list_matches_all_given_fields_and_counts() {
        let rule = AllowRule {
            src: "10.0.0.0/24".parse().ok(),
            dst: None,
            port: Some(443),
            proto: Some("tcp".into()),
            kinds: vec!["beaconing".into()],
            name: Some("updates".into()),
        };
        let mut s = Suppressor::new(3_600_000, 0, vec![rule]);
        assert!(s.submit(cand(Kind::Beaconing, [10, 0, 0, 1], 443, 0)).is_none());
        assert!(s.submit(cand(Kind::Beaconing, [10, 0, 1, 1], 443, 0)).is_some());
        assert!(s.submit(cand(Kind::Beaconing, [10, 0, 0, 1], 80, 0)).is_some());
        assert!(s.submit(cand(Kind::Scan, [10, 0, 0, 1], 443, 0)).is_some());
        assert_eq!(s.counters.allowed[1], 1);
        assert_eq!(s.counters.per_rule, vec![("updates".to_string(), 1)]);
    }
}
