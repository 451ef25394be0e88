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

impl Alert {
    /// Names (`[[network.name]]`) and countries (the country database) beside
    /// the alert's addresses, for the analyst who reads it in the SIEM: the
    /// evidence gets `src_name`, `dst_name`, `src_country`, `dst_country`
    /// where known, and the summary says them at each address's first mention
    /// ("… to 203.0.113.9 (NL)", "10.20.1.5 (finance-pc) …"). Run on every
    /// copy that leaves the detector; running it twice changes nothing.
    pub fn annotate(&mut self, name_of: impl Fn(&IpAddr) -> Option<String>, country_of: impl Fn(&IpAddr) -> Option<String>) {
        for (end, ip) in [("src", Some(self.src)), ("dst", self.dst)] {
            let Some(ip) = ip else { continue };
            let name = name_of(&ip);
            let country = country_of(&ip);
            if let Some(n) = &name {
                self.evidence.insert(format!("{end}_name"), serde_json::json!(n));
            }
            if let Some(c) = &country {
                self.evidence.insert(format!("{end}_country"), serde_json::json!(c));
            }
            let label: Vec<&str> = [name.as_deref(), country.as_deref()].into_iter().flatten().collect();
            if !label.is_empty() {
                self.summary = mention(&self.summary, &ip.to_string(), &label.join(", "));
            }
        }
    }
}

/// `text` with ` (label)` after the first mention of the address `addr`
/// (not inside a longer address: 10.0.0.1 is not in 10.0.0.15), unless a
/// parenthesis follows it already.
fn mention(text: &str, addr: &str, label: &str) -> String {
    let bytes = text.as_bytes();
    let addr_char = |b: u8| b.is_ascii_hexdigit() || b == b':';
    let mut from = 0;
    while let Some(i) = text[from..].find(addr).map(|i| i + from) {
        let end = i + addr.len();
        let before_ok = i == 0 || !(addr_char(bytes[i - 1]) || bytes[i - 1] == b'.');
        // A '.' ends a sentence unless an address goes on after it.
        let after_ok = match bytes.get(end) {
            None => true,
            Some(b'.') => !bytes.get(end + 1).is_some_and(|b| b.is_ascii_digit()),
            Some(b) => !addr_char(*b),
        };
        if before_ok && after_ok {
            if text[end..].starts_with(" (") {
                return text.to_string();
            }
            return format!("{} ({label}){}", &text[..end], &text[end..]);
        }
        from = end;
    }
    text.to_string()
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
    fn annotate_names_and_countries_once() {
        let mut a = Alert {
            id: "fw-1".into(),
            kind: Kind::Exfiltration,
            severity: 7,
            src: IpAddr::from([10, 0, 0, 1]),
            dst: Some(IpAddr::from([203, 0, 113, 9])),
            dst_port: Some(443),
            first_seen_ms: 0,
            last_seen_ms: 0,
            count: 1,
            summary: "10.0.0.15 and 10.0.0.1 sent 1.8 GB to 203.0.113.9.".into(),
            attack: Vec::new(),
            evidence: serde_json::Map::new(),
        };
        let name = |ip: &IpAddr| (*ip == IpAddr::from([10, 0, 0, 1])).then(|| "finance-pc".to_string());
        let country = |ip: &IpAddr| (*ip == IpAddr::from([203, 0, 113, 9])).then(|| "NL".to_string());
        a.annotate(name, country);
        assert_eq!(a.summary, "10.0.0.15 and 10.0.0.1 (finance-pc) sent 1.8 GB to 203.0.113.9 (NL).");
        assert_eq!(a.evidence["src_name"], "finance-pc");
        assert_eq!(a.evidence["dst_country"], "NL");
        assert!(!a.evidence.contains_key("src_country") && !a.evidence.contains_key("dst_name"));
        let once = a.clone();
        a.annotate(name, country);
        assert_eq!(a, once);
        // An address inside a longer one, or IPv6 inside another, is not a mention.
        assert_eq!(mention("to 2001:db8::10", "2001:db8::1", "X"), "to 2001:db8::10");
        assert_eq!(
            mention("203.0.113.90 203.0.113.9", "203.0.113.9", "NL"),
            "203.0.113.90 203.0.113.9 (NL)"
        );
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
