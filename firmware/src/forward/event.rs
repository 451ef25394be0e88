//! What the forwarder sends: spooled alerts and the events it makes itself
//! (heartbeat, gap, test), with the fields every body format draws from.
//!
//! Only [`Event::Alert`] is spooled (it must survive outages); heartbeats,
//! gap notices and test events are made at send time. [`Envelope`] adds what
//! a message needs beyond the event: its spool sequence number, whether it may
//! be a duplicate, and who sends it.

use crate::alert::Alert;
use serde::{Deserialize, Serialize};

/// The spool's unit (JSON in the `spool` table).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SpoolEntry {
    /// Wall-clock time the alert (or its update) was stored, UTC ms.
    pub at_ms: u64,
    pub event: Event,
}

/// One forwardable event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum Event {
    Alert(Alert),
    Heartbeat(Heartbeat),
    Gap(Gap),
    Test,
    /// A login, failure, lockout, logout, account change or admin action on the page.
    Audit(AuditRecord),
}

/// What the page's audit trail forwards (spooled like alerts).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditRecord {
    /// `login`, `login_failed`, `login_throttled`, `logout`, `setup`, `user_change`, …
    pub action: String,
    /// User name, `token:NAME`, or `-` before login.
    pub actor: String,
    /// Source address of the request.
    pub addr: String,
    pub detail: String,
}

/// The periodic "still here" event, so the SIEM can alert on silence.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Heartbeat {
    pub queue_depth: u64,
    pub queue_bytes: u64,
    pub oldest_age_s: u64,
    pub delivered: u64,
    pub dropped: u64,
    pub resent: u64,
    pub uptime_s: u64,
    /// Selected appliance counters (store, collector, detection).
    pub counters: Vec<(String, u64)>,
}

/// Spool entries that were dropped (spool full) before delivery.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Gap {
    pub first_lost: u64,
    pub last_lost: u64,
}

impl Gap {
    pub fn lost(&self) -> u64 {
        self.last_lost.saturating_sub(self.first_lost) + 1
    }
}

/// An event on its way out.
#[derive(Debug, Clone, Copy)]
pub struct Envelope<'a> {
    pub event: &'a Event,
    /// Spool sequence number (alerts only).
    pub seq: Option<u64>,
    /// Sent before on a connection that failed: the SIEM may already have it.
    pub resent: bool,
    /// When the event happened (alert stored, heartbeat made), UTC ms.
    pub at_ms: u64,
    pub sender: &'a Sender,
}

/// Who is sending (same for every message of a run).
#[derive(Debug, Clone)]
pub struct Sender {
    pub hostname: String,
    /// Stable appliance id (/etc/machine-id, else the hostname).
    pub device_id: String,
    pub version: &'static str,
    pub pid: u32,
}

impl Sender {
    /// From the running system.
    pub fn local() -> Sender {
        let hostname = rustix::system::uname().nodename().to_string_lossy().into_owned();
        let device_id = std::fs::read_to_string("/etc/machine-id")
            .ok()
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| hostname.clone());
        Sender {
            hostname,
            device_id,
            version: crate::version::version(),
            pid: std::process::id(),
        }
    }
}

impl Event {
    /// RFC 5424 MSGID, CEF signature id, LEEF event id.
    pub fn id(&self) -> &'static str {
        match self {
            Event::Alert(a) => a.kind.as_str(),
            Event::Heartbeat(_) => "heartbeat",
            Event::Gap(_) => "gap",
            Event::Test => "test",
            Event::Audit(_) => "audit",
        }
    }

    /// Human event name.
    pub fn name(&self) -> &'static str {
        use crate::alert::Kind;
        match self {
            Event::Alert(a) => match a.kind {
                Kind::Exfiltration => "Possible data exfiltration",
                Kind::Beaconing => "Possible C2 beaconing",
                Kind::Scan => "Network scan",
                Kind::Spike => "Traffic spike",
            },
            Event::Heartbeat(_) => "Forwarder heartbeat",
            Event::Gap(_) => "Forwarding gap: events lost",
            Event::Test => "Forwarding test event",
            Event::Audit(_) => "Status page audit event",
        }
    }

    /// Severity 0-10 (alerts: as detected).
    pub fn severity(&self) -> u8 {
        match self {
            Event::Alert(a) => a.severity.min(10),
            Event::Gap(_) => 7,
            Event::Audit(r) => match r.action.as_str() {
                "login_throttled" => 5,
                "login_failed" | "setup_failed" => 4,
                _ => 2,
            },
            Event::Heartbeat(_) | Event::Test => 0,
        }
    }

    /// RFC 5424 severity (0 emergency .. 7 debug) for the PRI field.
    pub fn syslog_severity(&self) -> u8 {
        match self.severity() {
            9..=10 => 2,
            7..=8 => 3,
            5..=6 => 4,
            3..=4 => 5,
            _ => 6,
        }
    }

    /// One line for humans (CEF msg, ECS message).
    pub fn message(&self) -> String {
        match self {
            Event::Alert(a) => a.summary.clone(),
            Event::Heartbeat(h) => format!(
                "heartbeat: queue {} ({} bytes, oldest {} s), delivered {}, dropped {}, resent {}, up {} s",
                h.queue_depth, h.queue_bytes, h.oldest_age_s, h.delivered, h.dropped, h.resent, h.uptime_s
            ),
            Event::Gap(g) => format!(
                "{} events (sequence {}..{}) were dropped from the full spool before delivery",
                g.lost(),
                g.first_lost,
                g.last_lost
            ),
            Event::Test => "flowwarden forward-test: test event".into(),
            Event::Audit(r) => format!("{} by {} from {}: {}", r.action, r.actor, r.addr, r.detail),
        }
    }
}

/// What the formats need from an alert beyond its own fields.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AlertFacts {
    pub tactics: Vec<&'static str>,
    pub techniques: Vec<String>,
    /// IANA protocol name when the detection knows it.
    pub proto: Option<String>,
    pub baseline: Option<i64>,
    pub observed: Option<i64>,
    /// Period in seconds (beacon interval, bucket or hour).
    pub period_s: Option<i64>,
    pub bytes_out: Option<u64>,
    pub bytes_in: Option<u64>,
    /// Shape, scope or score in a few words.
    pub detail: Option<String>,
    pub detected_at: Option<String>,
}

/// The ATT&CK tactic of a technique id (the ones detectors emit).
pub fn tactic(technique: &str) -> Option<&'static str> {
    match technique.split('.').next().unwrap_or(technique) {
        "T1048" | "T1041" | "T1567" | "T1030" | "T1020" => Some("Exfiltration"),
        "T1071" | "T1573" | "T1095" | "T1571" | "T1090" => Some("Command and Control"),
        "T1046" | "T1018" => Some("Discovery"),
        "T1595" => Some("Reconnaissance"),
        "T1498" | "T1499" => Some("Impact"),
        _ => None,
    }
}

/// Pull the common facts out of an alert's evidence.
pub fn facts(a: &Alert) -> AlertFacts {
    use crate::alert::Kind;
    let ev = &a.evidence;
    let num = |k: &str| ev.get(k).and_then(|v| v.as_f64()).map(|f| f.round() as i64);
    let text = |k: &str| ev.get(k).and_then(|v| v.as_str()).map(str::to_string);
    let mut tactics: Vec<&'static str> = Vec::new();
    for t in a.attack.iter().filter_map(|t| tactic(t)) {
        if !tactics.contains(&t) {
            tactics.push(t);
        }
    }
    let mut f = AlertFacts {
        tactics,
        techniques: a.attack.clone(),
        proto: text("proto").map(|p| p.to_ascii_uppercase()),
        detected_at: text("detected_at"),
        ..AlertFacts::default()
    };
    match a.kind {
        Kind::Exfiltration => {
            f.baseline = num("baseline_median_bytes");
            f.observed = num("observed_bytes");
            f.period_s = Some(3600);
            f.bytes_out = num("observed_bytes").map(|v| v.max(0) as u64);
            f.detail = num("robust_z").map(|z| format!("robust z {z}"));
        }
        Kind::Beaconing => {
            f.observed = num("connections");
            f.period_s = num("period_s");
            f.detail = ev.get("score").and_then(|v| v.as_f64()).map(|s| format!("score {s:.2}"));
            if f.proto.is_none() {
                f.proto = Some("TCP".into()).filter(|_| a.dst_port.is_some_and(|p| p == 443 || p == 80));
            }
        }
        Kind::Scan => {
            f.observed = num("targets");
            f.detail = text("shape");
        }
        Kind::Spike => {
            f.baseline = num("expected_bytes");
            f.observed = num("observed_bytes");
            f.period_s = num("bucket_s");
            let obs = num("observed_bytes").map(|v| v.max(0) as u64);
            match ev.get("direction").and_then(|v| v.as_str()) {
                Some("in") => f.bytes_in = obs,
                Some("out") => f.bytes_out = obs,
                _ => {}
            }
            f.detail = match (text("scope"), text("series")) {
                (Some(s), Some(k)) => Some(format!("{s} {k}")),
                (s, k) => s.or(k),
            };
        }
    }
    f
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spool_entries_round_trip_as_json() {
        let e = SpoolEntry {
            at_ms: 5,
            event: Event::Gap(Gap {
                first_lost: 3,
                last_lost: 9,
            }),
        };
        let bytes = serde_json::to_vec(&e).unwrap_or_default();
        let back: SpoolEntry = serde_json::from_slice(&bytes).unwrap_or_else(|err| panic!("{err}"));
        assert_eq!(back, e);
        assert_eq!(
            Gap {
                first_lost: 3,
                last_lost: 9
            }
            .lost(),
            7
        );
    }

    #[test]
    fn techniques_map_to_tactics() {
        assert_eq!(tactic("T1048"), Some("Exfiltration"));
        assert_eq!(tactic("T1071.001"), Some("Command and Control"));
        assert_eq!(tactic("T1595"), Some("Reconnaissance"));
        assert_eq!(tactic("T9999"), None);
    }
}
