//! One snapshot type per view, built once per request from the store (read
//! only, beside the live writer) and the process's live metrics; the HTML
//! pages ([`super::pages`]) and the JSON twins under `/api/v1/` (here) render
//! the same value. Alerts use the `alerts --format jsonl` keys; flows the
//! `query` jsonl keys.

use super::app::{ListQuery, Q, State};
use super::auth::Viewer;
use crate::metrics::defs;
use crate::query::{self, By, Filter, Scope, TopKey};
use crate::timefmt::{parse_time, rfc3339_ms};
use axum::Json;
use axum::extract::{Path, State as AxState};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use std::collections::BTreeMap;

const MINUTE: u64 = 60_000;
const HOUR: u64 = 3_600_000;
/// An exporter not heard for this long is "silent".
pub const SILENT_MS: u64 = 5 * MINUTE;
/// The first minutes after start: missing data is "warming up", not red.
pub const WARMUP_MS: u64 = 10 * MINUTE;
/// Clock differences the overview accepts.
const CLOCK_OK_MS: u64 = 60_000;
/// Above these the exporters page says the exporter's timeouts make flows late.
const EXPORT_LAG_HINT_S: u64 = 600;
const EXPORT_DELAY_HINT_S: u64 = 120;
/// Most flows one page or download lists.
pub const MAX_LIMIT: u64 = 10_000;

/// A check's colour.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    Ok,
    Warming,
    Warn,
    Bad,
}

impl Level {
    pub fn as_str(self) -> &'static str {
        match self {
            Level::Ok => "ok",
            Level::Warming => "warming",
            Level::Warn => "warn",
            Level::Bad => "bad",
        }
    }
}

/// One line of the overview's verdict: what, how it is, why, and what to do.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Check {
    pub name: &'static str,
    pub level: Level,
    pub reason: String,
    pub fix: Option<String>,
}

/// The overview (`/`, `/api/v1/status`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Status {
    pub version: String,
    pub now: String,
    pub started: String,
    pub uptime_s: u64,
    pub web: Vec<String>,
    pub collector: Vec<String>,
    pub certificate: String,
    pub verdict: Level,
    pub checks: Vec<Check>,
    /// The last complete minute of stored flows.
    pub rate: Rate,
    pub alerts_24h: u64,
    /// Of the last 24 h's alerts, not acknowledged yet.
    pub alerts_24h_new: u64,
    pub alerts_total: u64,
    pub alerts_24h_by_kind: BTreeMap<String, u64>,
    pub recent_alerts: Vec<serde_json::Value>,
    pub errors: Vec<String>,
    pub storage: StorageSummary,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Rate {
    pub minute: Option<String>,
    pub flows_per_s: f64,
    pub bytes_per_s: f64,
    pub packets_per_s: f64,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct StorageSummary {
    pub flows_kept: u64,
    pub bytes_used: u64,
    pub capacity_bytes: u64,
    pub budget_bytes: u64,
    pub segments: u64,
    pub oldest_flow: Option<String>,
    pub days_kept: f64,
    pub flows_evicted: u64,
    pub commit_failures: u64,
    pub disk_full: u64,
    pub files_damaged: u64,
}

fn storage_summary(state: &State) -> StorageSummary {
    let m = &state.app.metrics;
    let v = |d| m.value(d, &[]);
    let oldest = state.reader().oldest_span().ok().flatten();
    let now = state.now();
    StorageSummary {
        flows_kept: v(&defs::STORE_FLOWS),
        bytes_used: v(&defs::STORE_BYTES),
        capacity_bytes: v(&defs::STORE_CAPACITY_BYTES),
        budget_bytes: v(&defs::STORE_BUDGET_BYTES),
        segments: v(&defs::STORE_SEGMENTS),
        oldest_flow: oldest.map(rfc3339_ms),
        days_kept: oldest.map(|o| now.saturating_sub(o) as f64 / 86_400_000.0).unwrap_or(0.0),
        flows_evicted: v(&defs::STORE_FLOWS_EVICTED),
        commit_failures: v(&defs::STORE_COMMIT_FAILURES),
        disk_full: v(&defs::STORE_DISK_FULL),
        files_damaged: v(&defs::STORE_FILES_DAMAGED),
    }
}

/// One of the JSON files PID 1 writes about the host (`network.json`,
/// `time.json` in `/run/flowwarden` on the image); None on a laptop.
fn host_status(state: &State, name: &str) -> Option<serde_json::Value> {
    let dir = state.app.host_status_dir.as_ref()?;
    let text = std::fs::read_to_string(dir.join(name)).ok()?;
    serde_json::from_str(&text).ok()
}

/// The last complete minute's rates from the roll-ups.
fn last_minute(state: &State) -> Rate {
    let now = state.now();
    let to = now - now % MINUTE;
    let scope = Scope {
        from: to.saturating_sub(5 * MINUTE),
        to,
        filter: Filter::Any,
    };
    match query::rollups::series(&state.reader(), &scope, MINUTE) {
        Ok(Ok(b)) => match b.iter().next_back() {
            Some((t, c)) => Rate {
                minute: Some(rfc3339_ms(*t)),
                flows_per_s: c.0 as f64 / 60.0,
                packets_per_s: c.1 as f64 / 60.0,
                bytes_per_s: c.2 as f64 / 60.0,
            },
            None => Rate::default(),
        },
        _ => Rate::default(),
    }
}

pub fn status(state: &State) -> Status {
    let now = state.now();
    let reader = state.reader();
    let uptime = now.saturating_sub(state.started_ms);
    let warming = uptime < WARMUP_MS;
    let exporters = crate::decode::rows::load_exporters(&reader).unwrap_or_default();
    let storage = storage_summary(state);
    let forwarding = crate::forward::status::collect(reader.dir(), now).unwrap_or_default();
    let detectors = crate::detect::rows::load_status(&reader).ok().flatten();
    let alerts = crate::detect::rows::load_alerts(&reader).map(|(a, _)| a).unwrap_or_default();
    let collector: Vec<String> = state.app.collector.iter().map(|a| format!("udp {a}")).collect();
    let mut checks = Vec::new();

    // Exporters heard.
    let silent: Vec<&str> = exporters
        .iter()
        .filter(|e| now.saturating_sub(e.last_seen_ms) > SILENT_MS)
        .map(|e| e.exporter.as_str())
        .collect();
    checks.push(if exporters.is_empty() {
        Check {
            name: "exporters",
            level: if warming { Level::Warming } else { Level::Bad },
            reason: "no exporter has sent flows yet".into(),
            fix: Some(format!(
                "point the routers' NetFlow/IPFIX export at this box ({}) and check firewalls on the way",
                collector.join(", ")
            )),
        }
    } else if silent.len() == exporters.len() {
        Check {
            name: "exporters",
            level: Level::Bad,
            reason: format!("no exporter heard for more than {} min", SILENT_MS / MINUTE),
            fix: Some("check the exporters are up and still export to this box".into()),
        }
    } else if !silent.is_empty() {
        Check {
            name: "exporters",
            level: Level::Warn,
            reason: format!("{} of {} exporters silent: {}", silent.len(), exporters.len(), silent.join(", ")),
            fix: Some("see Exporters for when each was last heard".into()),
        }
    } else {
        Check {
            name: "exporters",
            level: Level::Ok,
            reason: format!("{} exporters heard in the last {} min", exporters.len(), SILENT_MS / MINUTE),
            fix: None,
        }
    });

    // Store.
    checks.push(if storage.files_damaged > 0 || storage.commit_failures > 0 {
        Check {
            name: "store",
            level: Level::Bad,
            reason: format!(
                "{} failed commits, {} damaged files since start",
                storage.commit_failures, storage.files_damaged
            ),
            fix: Some("see Storage and the appliance's log; the data partition may be failing".into()),
        }
    } else if storage.flows_kept == 0 {
        Check {
            name: "store",
            level: if warming || exporters.is_empty() {
                Level::Warming
            } else {
                Level::Warn
            },
            reason: "no flows stored yet".into(),
            fix: None,
        }
    } else {
        Check {
            name: "store",
            level: Level::Ok,
            reason: format!(
                "{} flows kept, {:.1} days of history, {} of {} used",
                storage.flows_kept,
                storage.days_kept,
                crate::units::bytes(storage.bytes_used),
                crate::units::bytes(storage.capacity_bytes)
            ),
            fix: None,
        }
    });

    // Firmware: a rollback (red until acknowledged) or a slot still on trial.
    if let Some(f) = host_status(state, "slots.json") {
        let running = f["running"].as_str().unwrap_or("?");
        let version = f["version"].as_str().unwrap_or("?");
        if let Some(rb) = f["rollback"].as_object().filter(|_| f["rollback_acknowledged"] != true) {
            checks.push(Check {
                name: "firmware",
                level: Level::Bad,
                reason: format!(
                    "{} (at {})",
                    rb.get("text").and_then(|t| t.as_str()).unwrap_or("rolled back"),
                    rb.get("at")
                        .and_then(|t| t.as_str())
                        .map(|at| match parse_time(at, 0) {
                            Ok(ms) => format!("{} UTC", crate::timefmt::plain_seconds(ms)),
                            Err(_) => at.to_string(),
                        })
                        .unwrap_or_else(|| "?".into())
                ),
                fix: Some("the update did not come up: read the console log of its boots, then acknowledge on /system".into()),
            });
        } else if f["running_good"] == false {
            checks.push(Check {
                name: "firmware",
                level: Level::Warming,
                reason: format!("slot {running} ({version}) is on trial: it is marked good once the appliance has been ready for a while"),
                fix: None,
            });
        } else {
            checks.push(Check {
                name: "firmware",
                level: Level::Ok,
                reason: format!("running {version} from slot {running}, marked good"),
                fix: None,
            });
        }
    }

    // Time: the box's own synchronisation (what PID 1 recorded on the image).
    if let Some(t) = host_status(state, "time.json") {
        checks.push(if t["synced"] == true {
            Check {
                name: "time",
                level: Level::Ok,
                reason: format!(
                    "the box's clock is synchronised from {} (stratum {}, offset {:.1} ms at boot)",
                    t["server"].as_str().unwrap_or("?"),
                    t["stratum"],
                    t["offset_ns"].as_f64().unwrap_or(0.0) / 1e6
                ),
                fix: None,
            }
        } else {
            Check {
                name: "time",
                level: Level::Warn,
                reason: format!(
                    "the box's clock is not synchronised ({}); it runs on its hardware clock",
                    t["reason"].as_str().unwrap_or("no answer")
                ),
                fix: Some("give the box an NTP server it can reach (DHCP option 42, or the image's [system.time] ntp_servers)".into()),
            }
        });
    }
    // Time: the exporters' clocks against the box's.
    let worst = exporters.iter().max_by_key(|e| e.clock_offset_ms.unsigned_abs());
    checks.push(match worst {
        Some(e) if e.clock_offset_ms.unsigned_abs() > CLOCK_OK_MS => Check {
            name: "time",
            level: Level::Warn,
            reason: format!(
                "{}'s clock differs from the box's by {}",
                e.exporter,
                crate::units::duration_ms(e.clock_offset_ms.unsigned_abs())
            ),
            fix: Some("set NTP on the exporter (and on this box's network) so flow times agree".into()),
        },
        Some(_) => Check {
            name: "time",
            level: Level::Ok,
            reason: "exporters' clocks agree with the box's within 1 min".into(),
            fix: None,
        },
        None => Check {
            name: "time",
            level: Level::Warming,
            reason: "no exporter clock to compare with yet".into(),
            fix: None,
        },
    });

    // SIEM destinations.
    if state.forward().is_empty() {
        checks.push(Check {
            name: "siem",
            level: Level::Warn,
            reason: "no SIEM destination configured: alerts stay on this box".into(),
            fix: Some("add a [[forward]] destination to the configuration".into()),
        });
    }
    for d in &forwarding {
        let name = d["name"].as_str().unwrap_or("?").to_string();
        let depth = d["queue_depth"].as_u64().unwrap_or(0);
        let age = d["oldest_entry_age_s"].as_u64().unwrap_or(0);
        let failing = !d["last_error"].is_null() && d["last_error_ms"].as_u64().unwrap_or(0) >= d["last_success_ms"].as_u64().unwrap_or(0);
        checks.push(if failing && (depth > 0 || !warming) {
            Check {
                name: "siem",
                level: if warming { Level::Warming } else { Level::Bad },
                reason: format!(
                    "{name}: not delivering ({}); {depth} events waiting",
                    d["last_error"].as_str().unwrap_or("error")
                ),
                fix: Some("see Forwarding: address, certificate and firewall; events wait in the spool".into()),
            }
        } else if depth > 0 && age > 300 {
            Check {
                name: "siem",
                level: Level::Warn,
                reason: format!(
                    "{name}: {depth} events waiting, the oldest for {}",
                    crate::units::duration_ms(age * 1000)
                ),
                fix: None,
            }
        } else {
            Check {
                name: "siem",
                level: Level::Ok,
                reason: format!("{name}: delivering ({})", d["state"].as_str().unwrap_or("ok")),
                fix: None,
            }
        });
    }

    // Detectors.
    checks.push(match &detectors {
        None => Check {
            name: "detectors",
            level: Level::Warming,
            reason: "no flow has reached the detectors yet".into(),
            fix: None,
        },
        Some(s) => {
            let learning: Vec<&str> = s
                .detectors
                .iter()
                .filter(|d| d.state == crate::detect::DetectorState::Learning)
                .map(|d| d.name.as_str())
                .collect();
            if learning.is_empty() {
                Check {
                    name: "detectors",
                    level: Level::Ok,
                    reason: "all detectors active".into(),
                    fix: None,
                }
            } else {
                Check {
                    name: "detectors",
                    level: Level::Warming,
                    reason: format!("learning the baseline: {}", learning.join(", ")),
                    fix: None,
                }
            }
        }
    });

    // Disk use against the budget.
    if storage.capacity_bytes > 0 {
        let pct = storage.bytes_used as f64 * 100.0 / storage.capacity_bytes as f64;
        checks.push(Check {
            name: "disk",
            level: if storage.disk_full > 0 && storage.capacity_bytes < storage.budget_bytes {
                Level::Warn
            } else {
                Level::Ok
            },
            reason: format!(
                "{pct:.0} % of {} used{}",
                crate::units::bytes(storage.capacity_bytes),
                if storage.capacity_bytes < storage.budget_bytes {
                    " (the data file system is smaller than the budget)"
                } else {
                    ""
                }
            ),
            fix: None,
        });
    }

    let verdict = checks.iter().map(|c| c.level).max().unwrap_or(Level::Ok);
    let acks = crate::detect::rows::load_acks(&reader).unwrap_or_default();
    let day_ago = now.saturating_sub(24 * HOUR);
    let mut recent: Vec<&crate::alert::Alert> = alerts.iter().map(|s| &s.alert).filter(|a| a.last_seen_ms >= day_ago).collect();
    recent.sort_by_key(|a| std::cmp::Reverse(a.last_seen_ms));
    let mut by_kind = BTreeMap::new();
    for a in &recent {
        *by_kind.entry(a.kind.as_str().to_string()).or_insert(0) += 1;
    }
    let mut errors: Vec<String> = exporters
        .iter()
        .filter_map(|e| e.last_error.as_ref().map(|err| format!("exporter {}: {err}", e.exporter)))
        .collect();
    errors.extend(forwarding.iter().filter(|d| !d["last_error"].is_null()).map(|d| {
        format!(
            "forward {} at {}: {}",
            d["name"].as_str().unwrap_or("?"),
            d["last_error_at"].as_str().unwrap_or("?"),
            d["last_error"].as_str().unwrap_or("?")
        )
    }));
    Status {
        version: crate::version::version().to_string(),
        now: rfc3339_ms(now),
        started: rfc3339_ms(state.started_ms),
        uptime_s: uptime / 1000,
        web: state.urls().iter().map(|u| format!("https://{u}/")).collect(),
        collector,
        certificate: state.fingerprint.clone(),
        verdict,
        checks,
        rate: last_minute(state),
        alerts_24h: recent.len() as u64,
        alerts_24h_new: recent.iter().filter(|a| !acks.contains_key(&a.id)).count() as u64,
        alerts_total: alerts.len() as u64,
        alerts_24h_by_kind: by_kind,
        recent_alerts: recent.iter().take(5).map(|a| a.to_json()).collect(),
        errors,
        storage,
    }
}

/// One exporter on `/exporters`: its stored health plus a hint per problem.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ExporterView {
    #[serde(flatten)]
    pub stats: crate::decode::exporters::ExporterStats,
    pub versions_seen: Vec<u16>,
    pub last_seen: String,
    pub silent: bool,
    /// Records per second over the last few seconds (live).
    pub records_per_s: f64,
    /// Seconds from a flow's first packet and from its last packet to its
    /// export, longest in the last 5-10 min (live; None: no flows lately).
    pub export_lag_s: Option<(u64, u64)>,
    pub hints: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Exporters {
    pub exporters: Vec<ExporterView>,
    /// Datagrams lost in the kernel's socket buffers and in the decoder queue.
    pub kernel_drops: u64,
    pub queue_drops: u64,
    /// Datagrams that were not NetFlow/IPFIX (another sender on the port, or not an exporter).
    pub not_netflow: u64,
    /// Who sent them (the 32 heard most recently), most datagrams first.
    pub unknown_senders: Vec<UnknownSender>,
    /// Templates known now and data sets waiting for theirs (all exporters).
    pub templates_known: u64,
    pub sets_waiting: u64,
}

/// A sender of datagrams that were not NetFlow or IPFIX.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct UnknownSender {
    pub sender: String,
    /// sflow, netflow_v1, netflow_v6, netflow_v8, syslog, snmp, empty, other.
    pub looks_like: String,
    pub datagrams: u64,
    pub hint: String,
}

pub fn exporters(state: &State) -> Exporters {
    let now = state.now();
    let list = crate::decode::rows::load_exporters(&state.reader()).unwrap_or_default();
    let m = &state.app.metrics;
    let mut lags: std::collections::HashMap<String, (u64, u64)> = std::collections::HashMap::new();
    // Per sender: datagrams by what they looked like.
    let mut unknown: BTreeMap<String, Vec<(u64, String)>> = BTreeMap::new();
    for x in m.snapshot() {
        if x.name == defs::DECODE_UNKNOWN_SENDER.name {
            let label = |k: &str| x.labels.iter().find(|l| l.0 == k).map(|l| l.1.clone()).unwrap_or_default();
            unknown.entry(label("sender")).or_default().push((x.value, label("looks_like")));
            continue;
        }
        let Some((_, exporter)) = x.labels.first() else { continue };
        if x.name == defs::DECODE_EXPORT_LAG.name {
            lags.entry(exporter.clone()).or_default().0 = x.value;
        } else if x.name == defs::DECODE_EXPORT_DELAY.name {
            lags.entry(exporter.clone()).or_default().1 = x.value;
        }
    }
    let views = list
        .into_iter()
        .map(|e| {
            let mut hints = Vec::new();
            let silent = now.saturating_sub(e.last_seen_ms) > SILENT_MS;
            if silent {
                hints.push(format!(
                    "not heard for {}: check the exporter is up and still exports here",
                    crate::units::duration_ms(now.saturating_sub(e.last_seen_ms))
                ));
            }
            let versions: Vec<u16> = [5u16, 7, 9, 10].into_iter().filter(|v| e.versions & (1 << v) != 0).collect();
            let templated = versions.iter().any(|v| *v >= 9);
            if templated && e.templates == 0 {
                hints.push("data but no templates: check the exporter's template refresh (timeout or packet count)".into());
            } else if e.pending_dropped > 0 {
                hints.push(format!(
                    "{} data sets expired waiting for their template: shorten the exporter's template refresh",
                    e.pending_dropped
                ));
            }
            if e.lost_records > 0 {
                let pct = e.lost_records as f64 * 100.0 / (e.records + e.lost_records).max(1) as f64;
                hints.push(format!(
                    "{pct:.2} % of records lost in sequence gaps: check the path's loss or this box's receive buffer"
                ));
            }
            if e.clock_offset_ms.unsigned_abs() > CLOCK_OK_MS {
                hints.push("clock differs from the box's: set NTP on the exporter".into());
            }
            if e.malformed > 0 {
                hints.push(format!(
                    "{} datagrams did not decode{}",
                    e.malformed,
                    e.last_error.as_ref().map(|x| format!(" (last: {x})")).unwrap_or_default()
                ));
            }
            // Live from the decoder; else as last saved (the CLI's `exporters` reads that too).
            let export_lag_s = lags.get(&e.exporter).copied().or(e.export_lag_s);
            if let Some((held, delay)) = export_lag_s {
                if held > EXPORT_LAG_HINT_S {
                    hints.push(format!(
                        "flows are exported up to {} after their first packet (the exporter's active timeout): long \
                         connections reach this box and its detectors late; 60-120 s is usual for security monitoring",
                        crate::units::duration_ms(held * 1000)
                    ));
                }
                if delay > EXPORT_DELAY_HINT_S {
                    hints.push(format!(
                        "flows arrive up to {} after their last packet: check the exporter's inactive (idle) timeout and export buffering",
                        crate::units::duration_ms(delay * 1000)
                    ));
                }
            }
            if e.time_clamped > 0 {
                hints.push(format!("{} flows had implausible times and were re-dated", e.time_clamped));
            }
            ExporterView {
                records_per_s: state.record_rate(&e.exporter),
                export_lag_s,
                versions_seen: versions,
                last_seen: rfc3339_ms(e.last_seen_ms),
                silent,
                hints,
                stats: e,
            }
        })
        .collect();
    Exporters {
        exporters: views,
        kernel_drops: m.value(&defs::COLLECTOR_DROPPED, &["kernel"]),
        queue_drops: m.value(&defs::COLLECTOR_DROPPED, &["decoder_queue"]),
        not_netflow: m.value(&defs::DECODE_DROPPED, &["not_netflow"]),
        unknown_senders: {
            let mut v: Vec<UnknownSender> = unknown
                .into_iter()
                .map(|(sender, mut kinds)| {
                    // The row names what it sent most.
                    kinds.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.cmp(&b.1)));
                    let looks_like = kinds.first().map(|k| k.1.clone()).unwrap_or_default();
                    UnknownSender {
                        sender,
                        datagrams: kinds.iter().map(|k| k.0).sum(),
                        hint: crate::decode::strangers::advice(&looks_like).to_string(),
                        looks_like,
                    }
                })
                .collect();
            v.sort_by(|a, b| b.datagrams.cmp(&a.datagrams).then_with(|| a.sender.cmp(&b.sender)));
            v
        },
        templates_known: m.value(&defs::DECODE_TEMPLATES, &[]),
        sets_waiting: m.value(&defs::DECODE_PENDING_SETS, &[]),
    }
}

/// The alert list (`/alerts`): filtered by kind, minimum severity, host and time.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Alerts {
    pub alerts: Vec<serde_json::Value>,
    pub total: u64,
    /// Of `total`, not acknowledged yet.
    pub unacknowledged: u64,
    /// Acknowledgements of the listed alerts, by id.
    pub acknowledged: BTreeMap<String, crate::detect::rows::Ack>,
    pub filter: BTreeMap<String, String>,
    pub error: Option<String>,
}

pub fn alerts(state: &State, q: &ListQuery) -> Alerts {
    let now = state.now();
    let mut filter = BTreeMap::new();
    let mut error = None;
    let kind = match q.kind.as_deref().filter(|k| !k.is_empty()) {
        Some(k) => {
            filter.insert("kind".into(), k.to_string());
            match crate::alert::Kind::from_name(k) {
                Some(k) => Some(k),
                None => {
                    error = Some(format!("kind {k:?}: expected exfiltration, beaconing, scan or spike"));
                    None
                }
            }
        }
        None => None,
    };
    let since = match q.since.as_deref().filter(|s| !s.is_empty()) {
        Some(s) => {
            filter.insert("since".into(), s.to_string());
            parse_time(s, now).unwrap_or_else(|e| {
                error = Some(format!("since {s:?}: {e}"));
                0
            })
        }
        None => 0,
    };
    let host: Option<std::net::IpAddr> = match q.host.as_deref().filter(|h| !h.is_empty()) {
        Some(h) => {
            filter.insert("host".into(), h.to_string());
            h.parse().map(Some).unwrap_or_else(|_| {
                error = Some(format!("host {h:?}: expected an IPv4 or IPv6 address"));
                None
            })
        }
        None => None,
    };
    let min_sev = q.severity.unwrap_or(0);
    if min_sev > 0 {
        filter.insert("severity".into(), min_sev.to_string());
    }
    let stored = crate::detect::rows::load_alerts(&state.reader())
        .map(|(a, _)| a)
        .unwrap_or_default();
    let mut list: Vec<crate::alert::Alert> = stored
        .into_iter()
        .map(|s| s.alert)
        .filter(|a| {
            a.last_seen_ms >= since
                && kind.is_none_or(|k| a.kind == k)
                && a.severity >= min_sev
                && host.is_none_or(|h| a.src == h || a.dst == Some(h))
        })
        .collect();
    list.sort_by(|a, b| (b.last_seen_ms, &b.id).cmp(&(a.last_seen_ms, &a.id)));
    let acks = crate::detect::rows::load_acks(&state.reader()).unwrap_or_default();
    let shown = &list[..list.len().min(500)];
    Alerts {
        total: list.len() as u64,
        unacknowledged: list.iter().filter(|a| !acks.contains_key(&a.id)).count() as u64,
        acknowledged: shown
            .iter()
            .filter_map(|a| acks.get(&a.id).map(|k| (a.id.clone(), k.clone())))
            .collect(),
        alerts: shown.iter().map(|a| a.to_json()).collect(),
        filter,
        error,
    }
}

/// One alert with where it went and the flows behind it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AlertDetail {
    pub alert: serde_json::Value,
    /// The `/flows` filter and time range behind the alert.
    pub flows_filter: String,
    pub flows_from: String,
    pub flows_to: String,
    /// Per configured destination: whether the alert reached it.
    pub delivery: Vec<Delivery>,
    /// Who acknowledged it on the page, and when.
    pub acknowledged: Option<crate::detect::rows::Ack>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Delivery {
    pub destination: String,
    pub state: String,
}

pub fn alert(state: &State, id: &str) -> Option<AlertDetail> {
    let reader = state.reader();
    let stored = crate::detect::rows::load_alerts(&reader).map(|(a, _)| a).unwrap_or_default();
    let a = stored.into_iter().map(|s| s.alert).find(|a| a.id == id)?;
    let mut filter = format!("host {}", a.src);
    if let Some(d) = a.dst {
        filter = format!("src host {} and dst host {d}", a.src);
        if let Some(p) = a.dst_port {
            filter.push_str(&format!(" and dst port {p}"));
        }
    }
    let forwarding = crate::forward::status::collect(reader.dir(), state.now()).unwrap_or_default();
    let delivery = forwarding
        .iter()
        .map(|d| {
            let last_ok = d["last_success_ms"].as_u64().unwrap_or(0);
            let waiting = d["queue_depth"].as_u64().unwrap_or(0) > 0;
            let state = if last_ok >= a.last_seen_ms && !waiting {
                "delivered (nothing waiting in its spool since)".to_string()
            } else if waiting {
                format!("waiting in the spool ({} entries)", d["queue_depth"].as_u64().unwrap_or(0))
            } else {
                "not confirmed yet".to_string()
            };
            Delivery {
                destination: d["name"].as_str().unwrap_or("?").to_string(),
                state,
            }
        })
        .collect();
    let acknowledged = crate::detect::rows::load_acks(&reader).ok().and_then(|mut m| m.remove(&a.id));
    Some(AlertDetail {
        acknowledged,
        flows_filter: filter,
        flows_from: rfc3339_ms(a.first_seen_ms.saturating_sub(MINUTE)),
        flows_to: rfc3339_ms(a.last_seen_ms + MINUTE),
        alert: a.to_json(),
        delivery,
    })
}

/// A page of flows matching the query filter.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Flows {
    pub filter: String,
    pub from: Option<String>,
    pub to: Option<String>,
    pub page: u64,
    pub limit: u64,
    pub flows: Vec<serde_json::Value>,
    /// Whether more flows match after this page.
    pub more: bool,
    pub error: Option<String>,
}

/// The flows scope of a query, or the error as the page shows it.
fn flows_scope(q: &ListQuery, now: u64) -> Result<Scope, String> {
    let from = match q.from.as_deref().filter(|s| !s.is_empty()) {
        Some(t) => parse_time(t, now).map_err(|e| format!("from {t:?}: {e}"))?,
        None => now.saturating_sub(HOUR),
    };
    let to = match q.to.as_deref().filter(|s| !s.is_empty()) {
        Some(t) => parse_time(t, now).map_err(|e| format!("to {t:?}: {e}"))?,
        None => u64::MAX,
    };
    if from >= to {
        return Err("from must be before to".into());
    }
    let filter = Filter::parse(q.filter.as_deref().unwrap_or("")).map_err(|e| e.to_string())?;
    Ok(Scope { from, to, filter })
}

/// Matching flows, `skip` then up to `limit`, passed to `f`; returns whether more match.
fn scan_page(state: &State, scope: &Scope, skip: u64, limit: u64, mut f: impl FnMut(&crate::flow::FlowRecord)) -> Result<bool, String> {
    let mut seen = 0u64;
    let mut more = false;
    state
        .reader()
        .scan(scope.from, scope.to, |r| {
            if !scope.filter.matches(r) {
                return std::ops::ControlFlow::Continue(());
            }
            seen += 1;
            if seen <= skip {
                return std::ops::ControlFlow::Continue(());
            }
            if seen > skip + limit {
                more = true;
                return std::ops::ControlFlow::Break(());
            }
            f(r);
            std::ops::ControlFlow::Continue(())
        })
        .map_err(|e| e.to_string())?;
    Ok(more)
}

pub fn flows(state: &State, q: &ListQuery) -> Flows {
    let limit = q.limit.unwrap_or(100).clamp(1, MAX_LIMIT);
    let page = q.page.unwrap_or(1).max(1);
    let mut out = Flows {
        filter: q.filter.clone().unwrap_or_default(),
        from: q.from.clone(),
        to: q.to.clone(),
        page,
        limit,
        flows: Vec::new(),
        more: false,
        error: None,
    };
    let scope = match flows_scope(q, state.now()) {
        Ok(s) => s,
        Err(e) => {
            out.error = Some(e);
            return out;
        }
    };
    let mut rows = Vec::new();
    match scan_page(state, &scope, (page - 1).saturating_mul(limit), limit, |r| rows.push(flow_json(r))) {
        Ok(more) => out.more = more,
        Err(e) => out.error = Some(e),
    }
    out.flows = rows;
    out
}

/// A flow with the `query --format jsonl` keys.
pub fn flow_json(f: &crate::flow::FlowRecord) -> serde_json::Value {
    let mut buf = Vec::new();
    let _ = query::output::flow_row(query::output::Format::Jsonl, f, &mut buf);
    serde_json::from_slice(&buf).unwrap_or_default()
}

/// `/flows?format=csv|json`: the page's flows as a download (same columns as `query`).
pub fn flows_download(state: &State, q: &ListQuery, format: query::output::Format) -> Response {
    let scope = match flows_scope(q, state.now()) {
        Ok(s) => s,
        Err(e) => return (StatusCode::BAD_REQUEST, Json(serde_json::json!({ "error": e }))).into_response(),
    };
    let limit = q.limit.unwrap_or(MAX_LIMIT).clamp(1, MAX_LIMIT);
    let page = q.page.unwrap_or(1).max(1);
    let mut buf = Vec::new();
    let _ = query::output::flow_header(format, &mut buf);
    let res = scan_page(state, &scope, (page - 1).saturating_mul(limit), limit, |r| {
        let _ = query::output::flow_row(format, r, &mut buf);
    });
    if let Err(e) = res {
        return (StatusCode::INTERNAL_SERVER_ERROR, Json(serde_json::json!({ "error": e }))).into_response();
    }
    let (ctype, name) = match format {
        query::output::Format::Csv => ("text/csv; charset=utf-8", "flows.csv"),
        _ => ("application/x-ndjson", "flows.jsonl"),
    };
    (
        [
            (header::CONTENT_TYPE, ctype.to_string()),
            (header::CONTENT_DISPOSITION, format!("attachment; filename=\"{name}\"")),
        ],
        buf,
    )
        .into_response()
}

/// Traffic over a range from the roll-ups, and the top lists.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Traffic {
    pub range: String,
    pub bucket_s: u64,
    /// (bucket start, flows, packets, bytes).
    pub series: Vec<(String, u64, u64, u64)>,
    /// Per bucket of `series`: (bytes in, bytes out): inbound flows (from
    /// outside `[network] internal` to inside) and outbound ones. Empty when
    /// the roll-ups cannot tell (`directions_note` says why).
    pub in_out: Vec<(u64, u64)>,
    /// The range's totals per direction (inbound, outbound, internal, transit, unclassified).
    pub directions: Vec<DirectionRow>,
    pub directions_note: Option<String>,
    pub top: BTreeMap<String, Vec<TopRow>>,
    /// Top lists summed from each hour's stored list (values at least these,
    /// the order may differ from an exact ranking): `flowwarden query --top` is exact.
    pub top_approximate: Vec<String>,
    pub note: Option<String>,
    /// Bytes to and from each country: the external addresses among each
    /// hour's stored top destinations and talkers, summed (at least these).
    /// Empty without a country database.
    pub countries: Vec<CountryRow>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DirectionRow {
    /// The `direction` filter's word: inbound, outbound, internal, external, unknown.
    pub direction: String,
    pub bytes: u64,
    pub packets: u64,
    pub flows: u64,
}

/// Per bucket (bytes in, bytes out), and the range's totals per direction.
type InOut = (Vec<(u64, u64)>, Vec<DirectionRow>);

/// In vs out per bucket and the totals per direction, from the minute roll-ups.
fn directions(reader: &crate::store::reader::Reader, scope: &Scope, bucket: u64) -> Result<InOut, String> {
    use crate::flow::Direction;
    let by = match query::rollups::direction_series(reader, scope, bucket) {
        Ok(Ok(b)) => b,
        Ok(Err(why)) => return Err(why),
        Err(e) => return Err(e.to_string()),
    };
    let mut in_out = Vec::new();
    let mut totals = [(0u64, 0u64, 0u64); 5];
    let mut t = scope.from;
    while t < scope.to {
        let c = by.get(&t).copied().unwrap_or_default();
        in_out.push((c[Direction::Inbound as usize].2, c[Direction::Outbound as usize].2));
        for (sum, x) in totals.iter_mut().zip(c) {
            sum.0 += x.0;
            sum.1 += x.1;
            sum.2 += x.2;
        }
        t += bucket;
    }
    let rows = [
        Direction::Inbound,
        Direction::Outbound,
        Direction::Internal,
        Direction::External,
        Direction::Unknown,
    ]
    .into_iter()
    .map(|d| {
        let (flows, packets, bytes) = totals[d as usize];
        DirectionRow {
            direction: d.as_str().to_string(),
            bytes,
            packets,
            flows,
        }
    })
    .collect();
    Ok((in_out, rows))
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CountryRow {
    pub country: String,
    /// To addresses in the country (they were destinations).
    pub bytes_to: u64,
    /// From addresses in the country (they were sources).
    pub bytes_from: u64,
    pub flows: u64,
}

/// How many of each hour's top addresses the country table looks at.
const COUNTRY_SAMPLE: usize = 500;

fn countries(reader: &crate::store::reader::Reader, scope: &Scope, geo: &crate::geo::Geo) -> Vec<CountryRow> {
    let mut by: BTreeMap<String, CountryRow> = BTreeMap::new();
    for (key, to) in [(TopKey::Dst, true), (TopKey::Src, false)] {
        let Ok(Some(rows)) = query::rollups::top_from_hour_lists(reader, scope, key, By::Bytes, COUNTRY_SAMPLE) else {
            continue;
        };
        for r in rows {
            let Some(cc) = r.key.parse().ok().and_then(|ip| geo.country_str(ip)) else {
                continue;
            };
            let e = by.entry(cc.clone()).or_insert(CountryRow {
                country: cc,
                bytes_to: 0,
                bytes_from: 0,
                flows: 0,
            });
            if to {
                e.bytes_to += r.bytes;
            } else {
                e.bytes_from += r.bytes;
            }
            e.flows += r.flows;
        }
    }
    let mut out: Vec<CountryRow> = by.into_values().collect();
    out.sort_by(|a, b| {
        (b.bytes_to + b.bytes_from)
            .cmp(&(a.bytes_to + a.bytes_from))
            .then(a.country.cmp(&b.country))
    });
    out.truncate(20);
    out
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TopRow {
    pub key: String,
    pub bytes: u64,
    pub packets: u64,
    pub flows: u64,
}

/// The ranges the traffic view offers: (name, length, bucket).
pub const RANGES: [(&str, u64, u64); 3] = [
    ("1h", HOUR, MINUTE),
    ("24h", 24 * HOUR, 15 * MINUTE),
    ("7d", 7 * 24 * HOUR, 2 * HOUR),
];

pub fn traffic(state: &State, q: &ListQuery) -> Traffic {
    let (range, len, bucket) = RANGES
        .iter()
        .copied()
        .find(|(n, _, _)| Some(*n) == q.range.as_deref())
        .unwrap_or(RANGES[0]);
    let now = state.now();
    let to = now - now % bucket + bucket;
    let scope = Scope {
        from: to.saturating_sub(len),
        to,
        filter: Filter::Any,
    };
    let reader = state.reader();
    let mut note = None;
    let series = match query::rollups::series(&reader, &scope, bucket) {
        Ok(Ok(b)) => b,
        Ok(Err(why)) => {
            note = Some(format!("from the raw flows: {why}"));
            query::series(&reader, &scope, bucket).map(|(b, _)| b).unwrap_or_default()
        }
        Err(e) => {
            note = Some(e.to_string());
            BTreeMap::new()
        }
    };
    let (in_out, directions, directions_note) = match directions(&reader, &scope, bucket) {
        Ok((io, rows)) => (io, rows, None),
        Err(why) => (Vec::new(), Vec::new(), Some(format!("in vs out is not shown: {why}"))),
    };
    let mut points = Vec::new();
    let mut t = scope.from;
    while t < scope.to {
        let c = series.get(&t).copied().unwrap_or_default();
        points.push((rfc3339_ms(t), c.0, c.1, c.2));
        t += bucket;
    }
    // Top lists over the whole hours of the range (the roll-ups answer those).
    let hour_to = now - now % HOUR + HOUR;
    let top_scope = Scope {
        from: hour_to.saturating_sub(len.max(HOUR)),
        to: hour_to,
        filter: Filter::Any,
    };
    let mut top = BTreeMap::new();
    let mut approximate = Vec::new();
    for (name, key) in [
        ("talkers", TopKey::Src),
        ("destinations", TopKey::Dst),
        ("conversations", TopKey::Conversation),
        ("ports", TopKey::DstPort),
        ("protocols", TopKey::Proto),
    ] {
        // Exact from the roll-ups where they can; else each hour's stored list
        // summed (lower bounds, said so) — never a scan of the raw flows here.
        let rows = match query::rollups::top(&reader, &top_scope, key, By::Bytes, 10) {
            Ok(Ok((rows, _))) => rows,
            _ => match query::rollups::top_from_hour_lists(&reader, &top_scope, key, By::Bytes, 10) {
                Ok(Some(rows)) => {
                    approximate.push(name.to_string());
                    rows
                }
                _ => Vec::new(),
            },
        };
        top.insert(
            name.to_string(),
            rows.into_iter()
                .map(|r| TopRow {
                    key: r.key,
                    bytes: r.bytes,
                    packets: r.packets,
                    flows: r.flows,
                })
                .collect(),
        );
    }
    Traffic {
        range: range.to_string(),
        bucket_s: bucket / 1000,
        series: points,
        in_out,
        directions,
        directions_note,
        top,
        top_approximate: approximate,
        note,
        countries: crate::geo::global().map(|g| countries(&reader, &top_scope, g)).unwrap_or_default(),
    }
}

/// `/storage`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Storage {
    #[serde(flatten)]
    pub summary: StorageSummary,
    pub bytes_per_flow: f64,
    /// Days of history the capacity holds at the rate seen so far (None: too little data yet).
    pub projected_days: Option<f64>,
    pub segments_evicted: u64,
    pub rollup_rows_trimmed: u64,
    pub data_dir: String,
}

pub fn storage(state: &State) -> Storage {
    let summary = storage_summary(state);
    let m = &state.app.metrics;
    Storage {
        bytes_per_flow: summary.bytes_used as f64 / summary.flows_kept.max(1) as f64,
        projected_days: (summary.days_kept > 0.01 && summary.bytes_used > 0)
            .then(|| summary.capacity_bytes as f64 / (summary.bytes_used as f64 / summary.days_kept)),
        segments_evicted: m.value(&defs::STORE_SEGMENTS_EVICTED, &[]),
        rollup_rows_trimmed: m.value(&defs::STORE_ROLLUP_ROWS_TRIMMED, &[]),
        data_dir: state.app.data_dir.display().to_string(),
        summary,
    }
}

/// `/forwarding`: the `forward-status --format json` rows.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Forwarding {
    pub destinations: Vec<serde_json::Value>,
}

/// The configured destinations in the configuration's order, each with what
/// its sender last reported (a destination added by a reload shows "starting"
/// until it does); then destinations no longer configured whose spool still
/// holds entries.
pub fn forwarding(state: &State) -> Forwarding {
    let stored = crate::forward::status::collect(&crate::store::DataDir::new(&state.app.data_dir), state.now()).unwrap_or_default();
    let name_of = |d: &serde_json::Value| d["name"].as_str().unwrap_or_default().to_string();
    let configured = state.forward();
    let mut destinations: Vec<serde_json::Value> = configured
        .iter()
        .map(|f| {
            stored.iter().find(|d| name_of(d) == f.name).cloned().unwrap_or_else(|| {
                serde_json::json!({
                    "name": f.name,
                    "transport": f.transport.as_str(),
                    "address": f.address,
                    "framing": f.framing.as_str(),
                    "format": f.format.as_str(),
                    "state": "starting",
                    "queue_depth": 0,
                })
            })
        })
        .collect();
    for d in stored {
        if !configured.iter().any(|f| f.name == name_of(&d)) && d["queue_depth"].as_u64().unwrap_or(0) > 0 {
            let mut d = d;
            d["state"] = serde_json::Value::from("not configured any more; its spool is kept");
            destinations.push(d);
        }
    }
    Forwarding { destinations }
}

/// `/system`: version, certificate, users (admins only), audit log.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct System {
    pub version: String,
    pub started: String,
    pub uptime_s: u64,
    pub web: Vec<String>,
    pub certificate: String,
    pub certificate_not_after: Option<String>,
    pub collector: Vec<String>,
    /// The management network and time sync as PID 1 set them up (the image only).
    pub network: Option<serde_json::Value>,
    pub time: Option<serde_json::Value>,
    /// The A/B slots, the last update and any rollback (PID 1's slots.json; the image only).
    pub firmware: Option<serde_json::Value>,
    pub detectors: Option<crate::detect::EngineStatus>,
    /// (name, role, changed); only for admins.
    pub users: Option<Vec<(String, String, String)>>,
    pub audit: Vec<super::audit::AuditEvent>,
    /// The country database in use: (file, built), with its attribution.
    pub countries: Option<CountryDatabase>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CountryDatabase {
    pub file: String,
    pub built: String,
    pub attribution: String,
}

pub fn system(state: &State, viewer: &Viewer) -> System {
    let reader = state.reader();
    let now = state.now();
    let users = viewer.is_admin().then(|| {
        crate::accounts::load_users(&reader)
            .unwrap_or_default()
            .into_iter()
            .map(|(n, u)| (n, u.role.as_str().to_string(), rfc3339_ms(u.changed_ms)))
            .collect()
    });
    System {
        version: crate::version::version().to_string(),
        started: rfc3339_ms(state.started_ms),
        uptime_s: now.saturating_sub(state.started_ms) / 1000,
        web: state.urls().iter().map(|u| format!("https://{u}/")).collect(),
        certificate: state.fingerprint.clone(),
        certificate_not_after: state.cert_not_after_ms.map(rfc3339_ms),
        collector: state.app.collector.iter().map(|a| format!("udp {a}")).collect(),
        network: host_status(state, "network.json"),
        time: host_status(state, "time.json"),
        firmware: host_status(state, "slots.json"),
        detectors: crate::detect::rows::load_status(&reader).ok().flatten(),
        users,
        audit: state.audit.recent(),
        countries: crate::geo::global().map(|g| CountryDatabase {
            file: g.path.display().to_string(),
            built: rfc3339_ms(g.built * 1000),
            attribution: crate::geo::ATTRIBUTION.to_string(),
        }),
    }
}

/// Build a view off the async threads (it reads redb files).
pub async fn build<T: Send + 'static>(state: &State, f: impl FnOnce(&State) -> T + Send + 'static) -> Option<T> {
    let s = state.clone();
    tokio::task::spawn_blocking(move || f(&s)).await.ok()
}

fn json<T: Serialize>(v: Option<T>) -> Response {
    match v {
        Some(v) => Json(v).into_response(),
        None => (
            StatusCode::INTERNAL_SERVER_ERROR,
            Json(serde_json::json!({ "error": "the view failed" })),
        )
            .into_response(),
    }
}

pub async fn api_status(AxState(s): AxState<State>, _v: Viewer) -> Response {
    json(build(&s, status).await)
}

pub async fn api_exporters(AxState(s): AxState<State>, _v: Viewer) -> Response {
    json(build(&s, exporters).await)
}

pub async fn api_traffic(AxState(s): AxState<State>, _v: Viewer, q: Q) -> Response {
    json(build(&s, move |s| traffic(s, &q.0)).await)
}

pub async fn api_alerts(AxState(s): AxState<State>, _v: Viewer, q: Q) -> Response {
    json(build(&s, move |s| alerts(s, &q.0)).await)
}

pub async fn api_alert(AxState(s): AxState<State>, _v: Viewer, Path(id): Path<String>) -> Response {
    match build(&s, move |s| alert(s, &id)).await {
        Some(Some(a)) => Json(a).into_response(),
        Some(None) => (StatusCode::NOT_FOUND, Json(serde_json::json!({ "error": "no such alert" }))).into_response(),
        None => json::<()>(None),
    }
}

pub async fn api_flows(AxState(s): AxState<State>, _v: Viewer, q: Q) -> Response {
    let q = q.0;
    match q.format.as_deref() {
        Some("csv") => build(&s, move |s| flows_download(s, &q, query::output::Format::Csv))
            .await
            .unwrap_or_else(|| json::<()>(None)),
        Some("json") => build(&s, move |s| flows_download(s, &q, query::output::Format::Jsonl))
            .await
            .unwrap_or_else(|| json::<()>(None)),
        _ => {
            let v = build(&s, move |s| flows(s, &q)).await;
            match v {
                Some(f) if f.error.is_some() => (StatusCode::BAD_REQUEST, Json(f)).into_response(),
                v => json(v),
            }
        }
    }
}

pub async fn api_storage(AxState(s): AxState<State>, _v: Viewer) -> Response {
    json(build(&s, storage).await)
}

pub async fn api_forwarding(AxState(s): AxState<State>, _v: Viewer) -> Response {
    json(build(&s, forwarding).await)
}

pub async fn api_system(AxState(s): AxState<State>, v: Viewer) -> Response {
    json(build(&s, move |s| system(s, &v)).await)
}

/// The configuration file's text with every value of a key that names a
/// secret (password, secret, token, private key material) replaced.
pub fn redacted_config(text: &str) -> String {
    text.lines()
        .map(|l| {
            let key = l.split('=').next().unwrap_or("").trim().to_ascii_lowercase();
            let secret =
                l.contains('=') && !key.starts_with('#') && ["password", "secret", "token", "private"].iter().any(|w| key.contains(w));
            if secret || l.contains("-----BEGIN") {
                format!("{} = \"(redacted)\"", l.split('=').next().unwrap_or("").trim_end())
            } else {
                l.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// `/system/diagnostics` (admins): one JSON file for support: version, the
/// configuration (secrets redacted), and every view's snapshot, the live
/// metrics included. No password hashes, tokens or audit details of others.
pub async fn diagnostics(AxState(s): AxState<State>, v: Viewer) -> Response {
    if !v.is_admin() {
        return (
            StatusCode::FORBIDDEN,
            Json(serde_json::json!({ "error": "the diagnostics bundle needs an admin" })),
        )
            .into_response();
    }
    let built = build(&s, move |s| {
        let config = match &s.config_file {
            Some(p) if !p.exists() => serde_json::json!({ "file": p.display().to_string(), "text": "(built-in defaults)" }),
            Some(p) => match std::fs::read_to_string(p) {
                Ok(t) => serde_json::json!({ "file": p.display().to_string(), "text": redacted_config(&t) }),
                Err(e) => serde_json::json!({ "file": p.display().to_string(), "error": e.to_string() }),
            },
            None => serde_json::json!({ "file": null, "text": "(built-in defaults)" }),
        };
        let mut system = system(s, &v);
        system.users = system.users.map(|u| u.into_iter().map(|(n, r, _)| (n, r, String::new())).collect());
        serde_json::json!({
            "generated": rfc3339_ms(s.now()),
            "version": crate::version::version(),
            "config": config,
            "status": status(s),
            "exporters": exporters(s),
            "storage": storage(s),
            "forwarding": forwarding(s),
            "system": system,
            "alerts": alerts(s, &ListQuery::default()).total,
            "metrics": s.app.metrics.prometheus(),
        })
    })
    .await;
    match built {
        Some(v) => {
            let name = format!("flowwarden-diagnostics-{}.json", rfc3339_ms(s.now()).replace(':', ""));
            (
                [
                    (header::CONTENT_TYPE, "application/json".to_string()),
                    (header::CONTENT_DISPOSITION, format!("attachment; filename=\"{name}\"")),
                ],
                serde_json::to_string_pretty(&v).unwrap_or_default(),
            )
                .into_response()
        }
        None => json::<()>(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_diagnostics_config_hides_secrets_only() {
        let text = "[web]\nsession_idle = \"1h\"\n# password = \"commented\"\n[[forward]]\nname = \"soc\"\nclient_key_file = \"/data/k.pem\"\napi_token = \"abc\"\nPassword=\"x\"\n";
        let r = redacted_config(text);
        assert!(r.contains("session_idle = \"1h\"") && r.contains("name = \"soc\""), "{r}");
        assert!(r.contains("client_key_file = \"/data/k.pem\""), "a path is not a secret: {r}");
        assert!(r.contains("api_token = \"(redacted)\"") && !r.contains("abc"), "{r}");
        assert!(r.contains("Password = \"(redacted)\""), "{r}");
        assert!(r.contains("# password = \"commented\""), "{r}");
    }
}
