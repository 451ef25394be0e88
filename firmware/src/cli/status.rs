//! The read-only views: `exporters`, `alerts`, `detectors`, `forward-status`
//! and `check-config`. Tables for people (sizes, rates and durations scaled,
//! one duration format); JSON with exact numbers for tools.

use super::args::{AlertFormat, TableOrJson};
use crate::config::Config;
use crate::store::DataDir;
use crate::store::reader::Reader;
use crate::table::{Align, Table};
use crate::timefmt::{now_ms, parse_time, rfc3339_ms};
use crate::units;
use anyhow::{Context, Result};
use std::io::Write;
use std::path::Path;

/// Protocol versions (5, 7, 9, 10) from the stored bit set.
fn versions(bits: u16) -> Vec<u16> {
    [5u16, 7, 9, 10].into_iter().filter(|v| bits & (1 << v) != 0).collect()
}

/// A metric series as a person reads it: bytes scaled, times as times.
fn counter_text(series: &str, v: u64) -> String {
    let name = crate::metrics::metric_of(series);
    if name.ends_with("_timestamp_seconds") {
        rfc3339_ms(v * 1000)
    } else if name.ends_with("_bytes") || name.ends_with("_bytes_total") || name == "flowwarden_store_bytes" {
        format!("{} ({v} bytes)", units::bytes(v))
    } else {
        v.to_string()
    }
}

/// The metrics snapshot kept in the state file (series `name{labels}` and value).
fn metrics_snapshot(reader: &Reader) -> Result<Vec<(String, u64)>> {
    Ok(reader
        .counters()?
        .into_iter()
        .filter(|(k, _)| k.starts_with("flowwarden_"))
        .collect())
}

/// `flowwarden metrics`: the last snapshot in the Prometheus text format.
pub fn metrics(data_dir: &Path, out: &mut dyn Write) -> Result<()> {
    let reader = Reader::new(DataDir::new(data_dir));
    let snapshot = metrics_snapshot(&reader)?;
    if snapshot.is_empty() {
        anyhow::bail!(
            "{}: no metrics yet (they are kept once `run` or `ingest` has committed)",
            data_dir.display()
        );
    }
    let mut last = "";
    for (series, v) in &snapshot {
        let name = crate::metrics::metric_of(series);
        if name != last {
            if let Some(d) = crate::metrics::def(name) {
                writeln!(out, "# HELP {name} {}", d.help)?;
                writeln!(out, "# TYPE {name} {}", d.kind.as_str())?;
            }
            last = name;
        }
        writeln!(out, "{series} {v}")?;
    }
    Ok(())
}

pub fn exporters(data_dir: &Path, format: TableOrJson, out: &mut dyn Write) -> Result<()> {
    let reader = Reader::new(DataDir::new(data_dir));
    let list = crate::decode::rows::load_exporters(&reader)?;
    let counters = metrics_snapshot(&reader)?;
    match format {
        TableOrJson::Json => {
            let rows: Vec<serde_json::Value> = list
                .iter()
                .map(|e| {
                    let mut v = serde_json::to_value(e).unwrap_or_default();
                    // The stored bit set, as the versions themselves.
                    v["versions"] = serde_json::json!(versions(e.versions));
                    // [from first packet, from last packet] to export, seconds, when last saved.
                    v["export_lag_s"] = serde_json::json!(e.export_lag_s);
                    v
                })
                .collect();
            writeln!(out, "{}", serde_json::to_string_pretty(&rows)?)?;
        }
        TableOrJson::Table => {
            let mut t = Table::new(&[
                ("Exporter", Align::Left),
                ("Name", Align::Left),
                ("Versions", Align::Left),
                ("Packets", Align::Right),
                ("Records", Align::Right),
                ("Templates", Align::Right),
                ("No template", Align::Right),
                ("Seq gaps", Align::Right),
                ("Lost records", Align::Right),
                ("Malformed", Align::Right),
                ("Clamped", Align::Right),
                ("Sampling", Align::Right),
                ("Last seen (UTC)", Align::Left),
                ("Clock offset", Align::Right),
                ("Export lag", Align::Right),
            ]);
            for e in &list {
                let v: Vec<String> = versions(e.versions).iter().map(|v| v.to_string()).collect();
                t.row(vec![
                    e.exporter.clone(),
                    e.name.clone().unwrap_or_else(|| "-".into()),
                    v.join(","),
                    e.packets.to_string(),
                    e.records.to_string(),
                    (e.templates + e.options_templates).to_string(),
                    (e.sets_without_template + e.pending_held).to_string(),
                    e.sequence_gaps.to_string(),
                    e.lost_records.to_string(),
                    e.malformed.to_string(),
                    e.time_clamped.to_string(),
                    if e.sampling_rate > 1 {
                        format!("1:{}", e.sampling_rate)
                    } else {
                        "-".into()
                    },
                    rfc3339_ms(e.last_seen_ms)[..19].replace('T', " "),
                    units::offset_ms(e.clock_offset_ms),
                    match e.export_lag_s {
                        Some((held, delay)) => format!("{} / {}", units::duration_ms(held * 1000), units::duration_ms(delay * 1000)),
                        None => "-".into(),
                    },
                ]);
            }
            if t.is_empty() {
                writeln!(out, "no exporter has sent anything to {}", data_dir.display())?;
            } else {
                t.write(out)?;
                if list.iter().any(|e| e.export_lag_s.is_some()) {
                    writeln!(
                        out,
                        "Export lag: the longest time from a flow's first packet / from its last packet to its export, \
                         over the 5-10 min before the exporter was last seen (the exporter's active / idle timeouts)."
                    )?;
                }
            }
            let problems: Vec<String> = list
                .iter()
                .filter_map(|e| {
                    let mut p = Vec::new();
                    if let Some(err) = &e.last_error {
                        p.push(format!("last error: {err}"));
                    }
                    if let Some(c) = e.last_clamped_ms {
                        p.push(format!("last implausible flow time: {}", rfc3339_ms(c)));
                    }
                    (!p.is_empty()).then(|| format!("{}: {}", e.exporter, p.join("; ")))
                })
                .collect();
            if !problems.is_empty() {
                writeln!(out)?;
                for p in problems {
                    writeln!(out, "{p}")?;
                }
            }
            if !counters.is_empty() {
                writeln!(out)?;
                let mut t = Table::new(&[("Metric", Align::Left), ("Value", Align::Right)]);
                for (k, v) in &counters {
                    t.row(vec![k.clone(), counter_text(k, *v)]);
                }
                t.write(out)?;
            }
        }
    }
    Ok(())
}

pub fn alerts(data_dir: &Path, since: Option<&str>, kind: Option<&str>, format: AlertFormat, out: &mut dyn Write) -> Result<()> {
    let since = since.map(|t| parse_time(t, now_ms())).transpose()?.unwrap_or(0);
    let kind = match kind {
        Some(k) => Some(
            crate::alert::Kind::from_name(k).with_context(|| format!("--kind {k:?}: expected exfiltration, beaconing, scan or spike"))?,
        ),
        None => None,
    };
    let reader = Reader::new(DataDir::new(data_dir));
    let (stored, bad) = crate::detect::rows::load_alerts(&reader)?;
    let mut list: Vec<crate::alert::Alert> = stored
        .into_iter()
        .map(|s| s.alert)
        .filter(|a| a.last_seen_ms >= since && kind.is_none_or(|k| a.kind == k))
        .collect();
    list.sort_by(|a, b| (a.first_seen_ms, &a.id).cmp(&(b.first_seen_ms, &b.id)));
    match format {
        AlertFormat::Jsonl => {
            for a in &list {
                writeln!(out, "{}", a.to_json())?;
            }
        }
        AlertFormat::Table => {
            let mut t = Table::new(&[
                ("First seen (UTC)", Align::Left),
                ("Kind", Align::Left),
                ("Sev", Align::Right),
                ("Src", Align::Left),
                ("Dst", Align::Left),
                ("Port", Align::Right),
                ("Count", Align::Right),
                ("Summary", Align::Left),
            ]);
            for a in &list {
                t.row(vec![
                    rfc3339_ms(a.first_seen_ms)[..19].replace('T', " "),
                    a.kind.as_str().into(),
                    a.severity.to_string(),
                    a.src.to_string(),
                    a.dst.map(|d| d.to_string()).unwrap_or_else(|| "-".into()),
                    a.dst_port.map(|p| p.to_string()).unwrap_or_else(|| "-".into()),
                    a.count.to_string(),
                    a.summary.clone(),
                ]);
            }
            t.write(out)?;
            writeln!(out, "{} alerts", list.len())?;
        }
    }
    if bad > 0 {
        eprintln!("note: {bad} stored alerts could not be decoded and are not shown");
    }
    Ok(())
}

pub fn detectors(data_dir: &Path, format: TableOrJson, out: &mut dyn Write) -> Result<()> {
    let reader = Reader::new(DataDir::new(data_dir));
    let status = crate::detect::rows::load_status(&reader)?;
    let counters: Vec<(String, u64)> = metrics_snapshot(&reader)?
        .into_iter()
        .filter(|(k, _)| k.starts_with("flowwarden_detect_"))
        .collect();
    match format {
        TableOrJson::Json => {
            let v = serde_json::json!({
                "status": status,
                "counters": counters.iter().cloned().collect::<std::collections::BTreeMap<String, u64>>(),
            });
            writeln!(out, "{}", serde_json::to_string_pretty(&v)?)?;
        }
        TableOrJson::Table => {
            match &status {
                Some(s) => {
                    writeln!(out, "event clock: {}", s.clock)?;
                    let mut t = Table::new(&[("Detector", Align::Left), ("State", Align::Left), ("Detail", Align::Left)]);
                    for d in &s.detectors {
                        t.row(vec![d.name.clone(), d.state.as_str().into(), d.detail.clone()]);
                    }
                    t.write(out)?;
                    let mut t = Table::new(&[("Tracked", Align::Left), ("Now", Align::Right)]);
                    for (k, v) in &s.tracked {
                        t.row(vec![k.clone(), v.to_string()]);
                    }
                    writeln!(out)?;
                    t.write(out)?;
                }
                None => writeln!(
                    out,
                    "no detector state yet: no flow has reached the detectors of {}",
                    data_dir.display()
                )?,
            }
            if !counters.is_empty() {
                writeln!(out)?;
                let mut t = Table::new(&[("Metric", Align::Left), ("Value", Align::Right)]);
                for (k, v) in &counters {
                    t.row(vec![k.clone(), v.to_string()]);
                }
                t.write(out)?;
            }
        }
    }
    Ok(())
}

pub fn forward_status(data_dir: &Path, format: TableOrJson, out: &mut dyn Write) -> Result<()> {
    let rows = crate::forward::status::collect(&DataDir::new(data_dir), now_ms())?;
    match format {
        TableOrJson::Json => writeln!(out, "{}", serde_json::json!({ "destinations": rows }))?,
        TableOrJson::Table => {
            if rows.is_empty() {
                writeln!(out, "no forwarding destinations in {}", data_dir.display())?;
            }
            for r in &rows {
                let s = |k: &str| match &r[k] {
                    serde_json::Value::Null => "-".to_string(),
                    serde_json::Value::String(v) => v.clone(),
                    v => v.to_string(),
                };
                let n = |k: &str| r[k].as_u64().unwrap_or(0);
                writeln!(
                    out,
                    "{} ({} {} {} {}): {}",
                    s("name"),
                    s("transport"),
                    s("address"),
                    s("framing"),
                    s("format"),
                    s("state")
                )?;
                let age = match r["oldest_entry_age_s"].as_u64() {
                    Some(a) => units::duration_ms(a * 1000),
                    None => "-".into(),
                };
                writeln!(
                    out,
                    "  queue {} entries, {} of {}; oldest {age}; dropped {}",
                    n("queue_depth"),
                    units::bytes(n("queue_bytes")),
                    units::bytes(n("queue_max_bytes")),
                    n("dropped")
                )?;
                writeln!(
                    out,
                    "  delivered {}, resent {}, heartbeats {}, gaps {}; last success {}",
                    n("delivered"),
                    n("resent"),
                    n("heartbeats"),
                    n("gaps"),
                    s("last_success")
                )?;
                if r["last_error"].is_null() {
                    writeln!(out, "  last error: none")?;
                } else {
                    writeln!(
                        out,
                        "  last error ({}) at {}: {}",
                        s("last_error_kind"),
                        s("last_error_at"),
                        s("last_error")
                    )?;
                }
                writeln!(
                    out,
                    "  {} {}; server certificate until {}; client certificate until {}",
                    s("tls_version"),
                    s("tls_cipher"),
                    s("server_cert_not_after"),
                    s("client_cert_not_after")
                )?;
            }
        }
    }
    Ok(())
}

pub fn check_config(file: &Path, out: &mut dyn Write) -> Result<()> {
    let cfg = Config::load(file)?;
    writeln!(out, "{}: ok ({})", file.display(), crate::config::summary(&cfg))?;
    for w in cfg.warnings() {
        writeln!(out, "{}: warning: {w}", file.display())?;
    }
    Ok(())
}
