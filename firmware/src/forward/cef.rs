//! ArcSight CEF:0 bodies (CEF implementation standard v27 escaping rules).
//!
//! Header fields escape `\` and `|`; extension values escape `\` and `=`
//! and write CR/LF as `\r`/`\n`. Alerts carry src, dst (and shost, dhost:
//! the site's names for them), dpt, proto, start,
//! end, rt, cnt, in/out, cat, act (`alert` for a new alert, `update` when a
//! repeat was folded into it), msg, externalId (the stable alert id), dvchost,
//! deviceExternalId, cs1-cs6 and cn1-cn3 with their labels, threatAttackID and
//! frameworkName.

use super::event::{Envelope, Event, facts};

/// Escape a header field.
pub fn header_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '|' => out.push_str("\\|"),
            '\r' | '\n' => out.push(' '),
            c => out.push(c),
        }
    }
    out
}

/// Escape an extension value.
pub fn value_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '=' => out.push_str("\\="),
            '\r' => out.push_str("\\r"),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

/// Extension pairs in order.
struct Ext(Vec<(String, String)>);

impl Ext {
    fn add(&mut self, k: &str, v: impl ToString) {
        self.0.push((k.to_string(), v.to_string()));
    }
    fn labelled(&mut self, key: &str, label: &str, v: Option<impl ToString>) {
        if let Some(v) = v {
            self.add(&format!("{key}Label"), label);
            self.add(key, v);
        }
    }
}

/// The CEF body of an event.
pub fn body(env: &Envelope<'_>) -> String {
    let ev = env.event;
    let s = env.sender;
    let mut x = Ext(Vec::new());
    x.add("rt", env.at_ms);
    x.add("dvchost", &s.hostname);
    x.add("deviceExternalId", &s.device_id);
    match ev {
        Event::Alert(a) => {
            let f = facts(a);
            x.add("src", a.src);
            // The site's names for the addresses ([[network.name]]), when it has them.
            if let Some(n) = a.evidence.get("src_name").and_then(|v| v.as_str()) {
                x.add("shost", n);
            }
            if let Some(d) = a.dst {
                x.add("dst", d);
            }
            if let Some(n) = a.evidence.get("dst_name").and_then(|v| v.as_str()) {
                x.add("dhost", n);
            }
            if let Some(p) = a.dst_port {
                x.add("dpt", p);
            }
            if let Some(p) = &f.proto {
                x.add("proto", p);
            }
            x.add("start", a.first_seen_ms);
            x.add("end", a.last_seen_ms);
            x.add("cnt", a.count);
            if let Some(b) = f.bytes_out {
                x.add("out", b);
            }
            if let Some(b) = f.bytes_in {
                x.add("in", b);
            }
            x.add("cat", format!("flowwarden/{}", a.kind.as_str()));
            x.add("act", if a.count > 1 { "update" } else { "alert" });
            x.add("msg", &a.summary);
            x.add("externalId", &a.id);
            x.labelled("cs1", "attackTactic", Some(f.tactics.join(",")).filter(|t| !t.is_empty()));
            x.labelled("cs2", "attackTechnique", Some(f.techniques.join(",")).filter(|t| !t.is_empty()));
            x.labelled("cs3", "detail", f.detail.as_ref());
            x.labelled("cs4", "firstDetectedAt", f.detected_at.as_ref());
            x.labelled("cs5", "evidence", Some(serde_json::Value::Object(a.evidence.clone())));
            x.labelled("cs6", "delivery", Some(if env.resent { "resent" } else { "first" }));
            x.labelled("cn1", "baseline", f.baseline);
            x.labelled("cn2", "observed", f.observed);
            x.labelled("cn3", "periodSeconds", f.period_s);
            if !f.techniques.is_empty() {
                x.add("threatAttackID", f.techniques.join(","));
                x.add("frameworkName", "MITRE ATT&CK");
            }
        }
        Event::Heartbeat(h) => {
            x.add("msg", ev.message());
            x.add("cnt", h.queue_depth);
            x.labelled("cn1", "queueDepth", Some(h.queue_depth));
            x.labelled("cn2", "queueOldestAgeSeconds", Some(h.oldest_age_s));
            x.labelled("cn3", "droppedFromSpool", Some(h.dropped));
            x.labelled("cs1", "version", Some(s.version));
            x.labelled("cs2", "delivered", Some(h.delivered));
            x.labelled("cs3", "resent", Some(h.resent));
            x.labelled("cs4", "uptimeSeconds", Some(h.uptime_s));
            x.labelled("cs5", "queueBytes", Some(h.queue_bytes));
            let counters: Vec<String> = h.counters.iter().map(|(k, v)| format!("{k}:{v}")).collect();
            x.labelled("cs6", "counters", Some(counters.join(" ")));
        }
        Event::Gap(g) => {
            x.add("msg", ev.message());
            x.add("cnt", g.lost());
            x.labelled("cn1", "firstLostSequence", Some(g.first_lost));
            x.labelled("cn2", "lastLostSequence", Some(g.last_lost));
        }
        Event::Test => {
            x.add("msg", ev.message());
            x.labelled("cs1", "version", Some(s.version));
        }
        Event::Audit(r) => {
            x.add("cat", "audit");
            x.add("act", &r.action);
            x.add("suser", &r.actor);
            if let Ok(ip) = r.addr.parse::<std::net::IpAddr>() {
                x.add("src", ip);
            }
            x.add("msg", ev.message());
            x.labelled("cs1", "detail", Some(&r.detail));
        }
    }
    let ext: Vec<String> = x.0.iter().map(|(k, v)| format!("{k}={}", value_escape(v))).collect();
    format!(
        "CEF:0|flowwarden|flowwarden|{}|{}|{}|{}|{}",
        header_escape(s.version),
        header_escape(ev.id()),
        header_escape(ev.name()),
        ev.severity(),
        ext.join(" ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::alert::{Alert, Kind};
    use crate::forward::event::Sender;

    #[test]
    fn alert_body_golden() {
        let a = Alert {
            id: "fw-00000000000000ab".into(),
            kind: Kind::Scan,
            severity: 7,
            src: std::net::IpAddr::from([10, 0, 0, 9]),
            dst: None,
            dst_port: Some(445),
            first_seen_ms: 1_000,
            last_seen_ms: 61_000,
            count: 2,
            summary: "a=b \\ c|d\nline".into(),
            attack: vec!["T1046".into()],
            evidence: crate::evidence! {"shape" => "horizontal", "targets" => 250, "proto" => "tcp"},
        };
        let s = Sender {
            hostname: "fw|1".into(),
            device_id: "id=1".into(),
            version: "1.0|x",
            pid: 1,
        };
        let ev = Event::Alert(a);
        let env = Envelope {
            event: &ev,
            seq: Some(3),
            resent: true,
            at_ms: 99,
            sender: &s,
        };
        let golden = "CEF:0|flowwarden|flowwarden|1.0\\|x|scan|Network scan|7|rt=99 dvchost=fw|1 deviceExternalId=id\\=1 \
src=10.0.0.9 dpt=445 proto=TCP start=1000 end=61000 cnt=2 cat=flowwarden/scan act=update msg=a\\=b \\\\ c|d\\nline \
externalId=fw-00000000000000ab cs1Label=attackTactic cs1=Discovery cs2Label=attackTechnique cs2=T1046 \
cs3Label=detail cs3=horizontal cs5Label=evidence cs5={\"proto\":\"tcp\",\"shape\":\"horizontal\",\"targets\":250} \
cs6Label=delivery cs6=resent cn2Label=observed cn2=250 threatAttackID=T1046 frameworkName=MITRE ATT&CK";
        assert_eq!(body(&env), golden);
    }

    #[test]
    fn names_become_shost_and_dhost_and_countries_reach_every_format() {
        let mut a = Alert {
            id: "fw-1".into(),
            kind: Kind::Exfiltration,
            severity: 8,
            src: std::net::IpAddr::from([10, 0, 0, 5]),
            dst: Some(std::net::IpAddr::from([203, 0, 113, 9])),
            dst_port: Some(443),
            first_seen_ms: 0,
            last_seen_ms: 0,
            count: 1,
            summary: "10.0.0.5 sent 1.8 GB to 203.0.113.9".into(),
            attack: Vec::new(),
            evidence: serde_json::Map::new(),
        };
        a.annotate(
            |_| Some("finance pc".to_string()),
            |ip| (ip.to_string() == "203.0.113.9").then(|| "NL".into()),
        );
        let s = Sender {
            hostname: "fw1".into(),
            device_id: "id1".into(),
            version: "1",
            pid: 1,
        };
        let ev = Event::Alert(a);
        let env = Envelope {
            event: &ev,
            seq: None,
            resent: false,
            at_ms: 0,
            sender: &s,
        };
        let cef = body(&env);
        assert!(cef.contains("shost=finance pc") && cef.contains("dhost=finance pc"), "{cef}");
        assert!(
            cef.contains("msg=10.0.0.5 (finance pc) sent 1.8 GB to 203.0.113.9 (finance pc, NL)"),
            "{cef}"
        );
        let ecs: serde_json::Value = serde_json::from_str(&crate::forward::ecs::body(&env, true)).unwrap_or_default();
        assert_eq!(ecs["destination"]["geo"]["country_iso_code"], "NL");
        assert!(ecs["source"].get("geo").is_none(), "{ecs}");
        let leef = crate::forward::leef::body(&env);
        assert!(leef.contains("dstCountry=NL") && leef.contains("srcHostName=finance pc"), "{leef}");
    }

    #[test]
    fn escaping_rules() {
        assert_eq!(header_escape(r"a|b\c"), r"a\|b\\c");
        assert_eq!(header_escape("x=y\nz"), "x=y z");
        assert_eq!(value_escape("a=b\\c|d\r\ne"), "a\\=b\\\\c|d\\r\\ne");
    }
}
