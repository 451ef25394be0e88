//! Elastic Common Schema (ECS 8.x) JSON bodies, one object per message.
//!
//! `@timestamp`, `event.*` (kind alert/event, id, sequence, severity,
//! start/end, dataset `flowwarden.alert`), `source.ip`, `destination.ip/port`,
//! `source/destination.geo.country_iso_code` (from the country database),
//! `network.transport`, `threat.framework/technique/tactic`, `rule.name`,
//! `observer.*`, `message`, and the alert's own evidence under
//! `flowwarden.evidence` (left out when the message would be too long).

use super::event::{Envelope, Event, facts};
use serde_json::{Value, json};

/// The ECS JSON body; `with_evidence = false` leaves the evidence out.
pub fn body(env: &Envelope<'_>, with_evidence: bool) -> String {
    let ev = env.event;
    let s = env.sender;
    let mut v = json!({
        "@timestamp": crate::timefmt::rfc3339_ms(env.at_ms),
        "ecs": {"version": "8.11.0"},
        "message": ev.message(),
        "observer": {"hostname": s.hostname, "id": s.device_id, "product": "flowwarden", "vendor": "flowwarden", "version": s.version, "type": "nsm"},
        "event": {
            "kind": if matches!(ev, Event::Alert(_)) { "alert" } else { "event" },
            "module": "flowwarden",
            "dataset": format!("flowwarden.{}", if matches!(ev, Event::Alert(_)) { "alert" } else { ev.id() }),
            "action": ev.id(),
            "severity": ev.severity(),
        },
        "flowwarden": {"delivery": {"resent": env.resent}},
    });
    if let Some(seq) = env.seq {
        v["event"]["sequence"] = json!(seq);
    }
    match ev {
        Event::Alert(a) => {
            let f = facts(a);
            v["event"]["id"] = json!(a.id);
            v["event"]["category"] = json!(["network", "intrusion_detection"]);
            v["event"]["type"] = json!(["info"]);
            v["event"]["start"] = json!(crate::timefmt::rfc3339_ms(a.first_seen_ms));
            v["event"]["end"] = json!(crate::timefmt::rfc3339_ms(a.last_seen_ms));
            v["rule"] = json!({"name": a.kind.as_str(), "category": ev.name()});
            v["source"] = json!({"ip": a.src.to_string()});
            let text = |k: &str| a.evidence.get(k).and_then(|v| v.as_str()).map(str::to_string);
            if let Some(c) = text("src_country") {
                v["source"]["geo"] = json!({"country_iso_code": c});
            }
            if let Some(b) = f.bytes_out {
                v["source"]["bytes"] = json!(b);
            }
            if let Some(d) = a.dst {
                v["destination"] = json!({"ip": d.to_string()});
                if let Some(p) = a.dst_port {
                    v["destination"]["port"] = json!(p);
                }
                if let Some(b) = f.bytes_in {
                    v["destination"]["bytes"] = json!(b);
                }
                if let Some(c) = text("dst_country") {
                    v["destination"]["geo"] = json!({"country_iso_code": c});
                }
            }
            if let Some(p) = &f.proto {
                v["network"] = json!({"transport": p.to_ascii_lowercase()});
            }
            if !f.techniques.is_empty() {
                v["threat"] = json!({
                    "framework": "MITRE ATT&CK",
                    "technique": {"id": f.techniques},
                    "tactic": {"name": f.tactics},
                });
            }
            v["flowwarden"]["count"] = json!(a.count);
            for (k, val) in [("baseline", f.baseline), ("observed", f.observed), ("period_s", f.period_s)] {
                if let Some(x) = val {
                    v["flowwarden"][k] = json!(x);
                }
            }
            if let Some(d) = f.detail {
                v["flowwarden"]["detail"] = json!(d);
            }
            v["flowwarden"]["evidence"] = if with_evidence {
                Value::Object(a.evidence.clone())
            } else {
                json!({"omitted": "message size limit"})
            };
        }
        Event::Heartbeat(h) => {
            v["flowwarden"]["heartbeat"] = serde_json::to_value(h).unwrap_or(Value::Null);
            v["flowwarden"]["counters"] = Value::Object(h.counters.iter().map(|(k, c)| (k.clone(), json!(c))).collect());
        }
        Event::Gap(g) => {
            v["flowwarden"]["gap"] = json!({"first_lost": g.first_lost, "last_lost": g.last_lost, "lost": g.lost()});
        }
        Event::Test => {}
        Event::Audit(r) => {
            let auth = r.action.starts_with("login") || r.action.starts_with("setup") || r.action == "logout";
            v["event"]["category"] = json!([if auth { "authentication" } else { "configuration" }]);
            v["event"]["action"] = json!(r.action);
            v["event"]["outcome"] = json!(if r.action.ends_with("_failed") || r.action.ends_with("_throttled") {
                "failure"
            } else {
                "success"
            });
            v["user"] = json!({"name": r.actor});
            v["source"] = json!({"ip": r.addr});
            v["flowwarden"]["audit"] = json!({"detail": r.detail});
        }
    }
    v.to_string()
}
