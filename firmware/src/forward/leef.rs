//! IBM QRadar LEEF 2.0 bodies.
//!
//! `LEEF:2.0|flowwarden|flowwarden|VERSION|EVENTID|x09|` followed by
//! tab-separated `key=value` attributes. LEEF has no escape character: tabs,
//! CR and LF inside values become spaces, and header fields lose `|`.
//! Predefined keys (devTime with devTimeFormat, src, dst, dstPort, proto, sev
//! 1-10, cat, srcBytes/dstBytes) come first; the rest are flowwarden's own.

use super::event::{Envelope, Event, facts};

/// Clean a value of the delimiter and line breaks.
pub fn value_clean(s: &str) -> String {
    s.chars().map(|c| if matches!(c, '\t' | '\r' | '\n') { ' ' } else { c }).collect()
}

fn header_clean(s: &str) -> String {
    value_clean(s).replace('|', "/")
}

/// The LEEF body of an event.
pub fn body(env: &Envelope<'_>) -> String {
    let ev = env.event;
    let s = env.sender;
    let mut kv: Vec<(&str, String)> = vec![
        ("devTime", crate::timefmt::rfc3339_ms(env.at_ms)),
        ("devTimeFormat", "yyyy-MM-dd'T'HH:mm:ss.SSSX".into()),
        ("sev", ev.severity().max(1).to_string()),
        ("identHostName", s.hostname.clone()),
        ("deviceId", s.device_id.clone()),
    ];
    match ev {
        Event::Alert(a) => {
            let f = facts(a);
            kv.push(("cat", a.kind.as_str().into()));
            kv.push(("src", a.src.to_string()));
            if let Some(d) = a.dst {
                kv.push(("dst", d.to_string()));
            }
            if let Some(p) = a.dst_port {
                kv.push(("dstPort", p.to_string()));
            }
            // The site's names and the countries of the addresses (custom keys).
            for (key, ev_key) in [
                ("srcHostName", "src_name"),
                ("dstHostName", "dst_name"),
                ("srcCountry", "src_country"),
                ("dstCountry", "dst_country"),
            ] {
                if let Some(v) = a.evidence.get(ev_key).and_then(|v| v.as_str()) {
                    kv.push((key, v.to_string()));
                }
            }
            if let Some(p) = f.proto {
                kv.push(("proto", p));
            }
            if let Some(b) = f.bytes_out {
                kv.push(("srcBytes", b.to_string()));
            }
            if let Some(b) = f.bytes_in {
                kv.push(("dstBytes", b.to_string()));
            }
            kv.push(("externalId", a.id.clone()));
            kv.push(("count", a.count.to_string()));
            kv.push(("action", if a.count > 1 { "update" } else { "alert" }.into()));
            kv.push(("startTime", crate::timefmt::rfc3339_ms(a.first_seen_ms)));
            kv.push(("endTime", crate::timefmt::rfc3339_ms(a.last_seen_ms)));
            kv.push(("summary", a.summary.clone()));
            kv.push(("attackTactic", f.tactics.join(",")));
            kv.push(("attackTechnique", f.techniques.join(",")));
            if let Some(v) = f.baseline {
                kv.push(("baseline", v.to_string()));
            }
            if let Some(v) = f.observed {
                kv.push(("observed", v.to_string()));
            }
            if let Some(v) = f.period_s {
                kv.push(("periodSeconds", v.to_string()));
            }
            if let Some(d) = f.detail {
                kv.push(("detail", d));
            }
            kv.push(("evidence", serde_json::Value::Object(a.evidence.clone()).to_string()));
        }
        Event::Heartbeat(h) => {
            kv.push(("cat", "heartbeat".into()));
            kv.push(("queueDepth", h.queue_depth.to_string()));
            kv.push(("queueBytes", h.queue_bytes.to_string()));
            kv.push(("queueOldestAgeSeconds", h.oldest_age_s.to_string()));
            kv.push(("delivered", h.delivered.to_string()));
            kv.push(("droppedFromSpool", h.dropped.to_string()));
            kv.push(("resent", h.resent.to_string()));
            kv.push(("uptimeSeconds", h.uptime_s.to_string()));
            kv.push(("version", s.version.into()));
            for (k, v) in &h.counters {
                kv.push((k.as_str(), v.to_string()));
            }
        }
        Event::Gap(g) => {
            kv.push(("cat", "gap".into()));
            kv.push(("lost", g.lost().to_string()));
            kv.push(("firstLostSequence", g.first_lost.to_string()));
            kv.push(("lastLostSequence", g.last_lost.to_string()));
            kv.push(("summary", ev.message()));
        }
        Event::Test => {
            kv.push(("cat", "test".into()));
            kv.push(("summary", ev.message()));
        }
        Event::Audit(r) => {
            kv.push(("cat", "audit".into()));
            kv.push(("action", r.action.clone()));
            kv.push(("usrName", r.actor.clone()));
            kv.push(("src", r.addr.clone()));
            kv.push(("summary", ev.message()));
        }
    }
    if let Some(seq) = env.seq {
        kv.push(("sequence", seq.to_string()));
    }
    if env.resent {
        kv.push(("resent", "true".into()));
    }
    let attrs: Vec<String> = kv.iter().map(|(k, v)| format!("{k}={}", value_clean(v))).collect();
    format!(
        "LEEF:2.0|flowwarden|flowwarden|{}|{}|x09|{}",
        header_clean(s.version),
        header_clean(ev.id()),
        attrs.join("\t")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_lose_delimiters() {
        assert_eq!(value_clean("a\tb\r\nc=d|e"), "a b  c=d|e");
        assert_eq!(header_clean("x|y"), "x/y");
    }
}
