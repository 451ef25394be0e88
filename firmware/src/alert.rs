//! The alert: what detectors produce, the state database stores, `flowwarden
//! alerts` prints and the forwarder sends.
//!
//! An alert is oriented as the traffic flows (the attacker or sending host is
//! `src`; for an inbound flood the victim is `dst` and the top sources are in
//! the evidence). Its id is stable: a hash of kind, src, dst, port and the
//! suppression window it opened in, so a repeat inside the window updates the
//! same alert (count, last_seen) instead of making a new one.
//!
//! ## Severity table (0-10; the one place severities come from)
//!
//! | kind          | base | + modifiers (capped at 10)                                                        |
//! |---------------|------|-----------------------------------------------------------------------------------|
//! | exfiltration  | 6    | +1 excess >= 1 GB, +1 new destination, +1 off-hours, +1 unusual port              |
//! | beaconing     | 5    | +1 score >= 0.9, +1 score >= 0.97, +1 on a port other than 80/443, -2 down-weighted (prevalent or periodic service) |
//! | scan          | 4    | +2 internal source (lateral movement), +1 >= 250 targets, +1 a target answered   |
//! | spike         | 4    | +2 against one internal host, +1 ratio >= 10, +1 ratio >= 100                     |

use crate::timefmt::rfc3339_ms;
use serde::{Deserialize, Serialize};
use std::net::IpAddr;

/// What was detected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Exfiltration,
    Beaconing,
    Scan,
    Spike,
}

impl Kind {
    pub const ALL: [Kind; 4] = [Kind::Exfiltration, Kind::Beaconing, Kind::Scan, Kind::Spike];

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Exfiltration => "exfiltration",
            Kind::Beaconing => "beaconing",
            Kind::Scan => "scan",
            Kind::Spike => "spike",
        }
    }

    pub fn from_name(s: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.as_str() == s)
    }

    /// Base severity from the table above.
    pub fn base_severity(self) -> i32 {
        match self {
            Kind::Exfiltration => 6,
            Kind::Beaconing => 5,
            Kind::Scan => 4,
            Kind::Spike => 4,
        }
    }
}

/// Clamp a base + modifiers sum to the 0-10 scale.
pub fn severity(kind: Kind, modifiers: i32) -> u8 {
    (kind.base_severity() + modifiers).clamp(0, 10) as u8
}

/// One alert as stored (state database, JSON) and printed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Alert {
    pub id: String,
    pub kind: Kind,
    pub severity: u8,
    pub src: IpAddr,
    pub dst: Option<IpAddr>,
    pub dst_port: Option<u16>,
    /// Event time, UTC ms.
    pub first_seen_ms: u64,
    pub last_seen_ms: u64,
    /// Detections folded into this alert by suppression.
    pub count: u64,
    pub summary: String,
    pub attack: Vec<String>,
    pub evidence: serde_json::Map<String, serde_json::Value>,
}

/// FNV-1a 64: stable across builds and platforms (ids must not change between versions).
fn fnv1a(parts: &[&[u8]]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for p in parts {
        for b in *p {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        h ^= 0xff;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// The stable id of an alert: kind, src, dst, port and the event time it opened at.
pub fn alert_id(kind: Kind, src: IpAddr, dst: Option<IpAddr>, port: Option<u16>, opened_ms: u64) -> String {
    let dst = dst.map(|d| d.to_string()).unwrap_or_default();
    let port = port.map(|p| p.to_string()).unwrap_or_default();
    let h = fnv1a(&[
        kind.as_str().as_bytes(),
        src.to_string().as_bytes(),
        dst.as_bytes(),
        port.as_bytes(),
        &opened_ms.to_be_bytes(),
    ]);
    format!("fw-{h:016x}")
}

/// The keys of an `alerts --format jsonl` object, sorted (a contract).
pub const JSON_KEYS: [&str; 12] = [
    "attack",
    "count",
    "dst",
    "dst_port",
    "evidence",
    "first_seen",
    "id",
    "kind",
    "last_seen",
    "severity",
    "src",
    "summary",
];

impl Alert {
    /// The `alerts --format jsonl` object (a contract: keys and their forms).
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "id": self.id,
            "kind": self.kind.as_str(),
            "severity": self.severity,
            "src": self.src.to_string(),
            "dst": self.dst.map(|d| d.to_string()),
            "dst_port": self.dst_port,
            "first_seen": rfc3339_ms(self.first_seen_ms),
            "last_seen": rfc3339_ms(self.last_seen_ms),
            "count": self.count,
            "summary": self.summary,
            "attack": self.attack,
            "evidence": self.evidence,
        })
    }
}

/// Build an evidence object from key/value pairs.
#[macro_export]
macro_rules! evidence {
    ($($k:expr => $v:expr),* $(,)?) => {{
        let mut m = serde_json::Map::new();
        $( m.insert($k.to_string(), serde_json::json!($v)); )*
        m
    }};
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_stable_and_distinct() {
        let a: IpAddr = "10.0.0.1".parse().unwrap_or(IpAddr::from([0, 0, 0, 0]));
        let b: IpAddr = "203.0.113.5".parse().unwrap_or(IpAddr::from([0, 0, 0, 0]));
        let id = alert_id(Kind::Beaconing, a, Some(b), Some(443), 1_000);
        // Pinned: ids must survive rebuilds (the SIEM de-duplicates on them).
        assert_eq!(id, alert_id(Kind::Beaconing, a, Some(b), Some(443), 1_000));
        assert_eq!(id.len(), 19);
        assert_ne!(id, alert_id(Kind::Beaconing, a, Some(b), Some(80), 1_000));
        assert_ne!(id, alert_id(Kind::Scan, a, Some(b), Some(443), 1_000));
        assert_ne!(id, alert_id(Kind::Beaconing, a, None, Some(443), 1_000));
        assert_eq!(fnv1a(&[b"a"]), fnv1a(&[b"a"]));
    }

    #[test]
    fn severity_is_clamped() {
        assert_eq!(severity(Kind::Exfiltration, 10), 10);
        assert_eq!(severity(Kind::Scan, -9), 0);
        assert_eq!(severity(Kind::Spike, 2), 6);
    }

    #[test]
    fn json_has_the_contract_keys() {
        let a = Alert {
            id: "fw-1".into(),
            kind: Kind::Scan,
            severity: 6,
            src: IpAddr::from([10, 0, 0, 9]),
            dst: None,
            dst_port: Some(445),
            first_seen_ms: 0,
            last_seen_ms: 60_000,
            count: 2,
            summary: "s".into(),
            attack: vec!["T1046".into()],
            evidence: evidence! {"targets" => 3},
        };
        let v = a.to_json();
        let obj = v.as_object().cloned().unwrap_or_default();
        let mut keys: Vec<&str> = obj.keys().map(|k| k.as_str()).collect();
        keys.sort_unstable();
        assert_eq!(keys, JSON_KEYS);
        assert_eq!(v["dst"], serde_json::Value::Null);
        assert_eq!(v["last_seen"], "1970-01-01T00:01:00.000Z");
        assert_eq!(v["evidence"]["targets"], 3);
    }
}
