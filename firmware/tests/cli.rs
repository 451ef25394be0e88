//! The binary as users and scripts drive it: the command-line contract, output
//! formats, error messages, and `run` collecting from UDP and shutting down cleanly.

mod common;

use std::ffi::OsStr;
use std::net::UdpSocket;

fn os(s: &str) -> &OsStr {
    OsStr::new(s)
}

fn ingest_fixture(dir: &std::path::Path) -> String {
    let pcap = common::captures().join("exported/softflowd_test-cc-capture-1_v9a.pcap");
    let (ok, out, err) = common::cli(&[os("ingest"), os("--data-dir"), dir.as_os_str(), pcap.as_os_str()]);
    assert!(ok, "ingest failed: {err}");
    out
}

#[test]
fn ingest_prints_a_summary() {
    let d = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let out = ingest_fixture(d.path());
    for field in [
        "packets:",
        "records:",
        "flows stored:",
        "drops:",
        "malformed datagrams:",
        "sets without template:",
        "elapsed:",
        "records/s:",
    ] {
        assert!(out.contains(field), "summary lacks {field:?}:\n{out}");
    }
    assert!(out.contains("flows stored:       594"), "{out}");
}

#[test]
fn query_formats_follow_the_contract() {
    let d = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    ingest_fixture(d.path());
    let dir = d.path().as_os_str();
    let (ok, out, err) = common::cli(&[os("query"), os("--data-dir"), dir, os("--format"), os("jsonl")]);
    assert!(ok, "{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 594);
    let keys = [
        "start",
        "end",
        "src",
        "dst",
        "src_port",
        "dst_port",
        "proto",
        "bytes",
        "packets",
        "tcp_flags",
        "in_if",
        "out_if",
        "exporter",
        "sampling_rate",
    ];
    for l in &lines {
        let v: serde_json::Value = serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}"));
        let obj = v.as_object().unwrap_or_else(|| panic!("not an object: {l}"));
        let mut got: Vec<&str> = obj.keys().map(String::as_str).collect();
        got.sort();
        let mut want = keys.to_vec();
        want.sort();
        assert_eq!(got, want);
        let start = obj["start"].as_str().unwrap_or_default();
        assert!(
            start.len() == 24 && start.ends_with('Z') && start.as_bytes()[19] == b'.',
            "not RFC 3339 with ms: {start}"
        );
        assert!(obj["proto"].is_u64() && obj["bytes"].is_u64());
    }
    let (ok, csv, _) = common::cli(&[os("query"), os("--data-dir"), dir, os("--format"), os("csv")]);
    assert!(ok);
    assert_eq!(
        csv.lines().next(),
        Some("start,end,src,dst,src_port,dst_port,proto,bytes,packets,tcp_flags,in_if,out_if,exporter,sampling_rate")
    );
    assert_eq!(csv.lines().count(), 595);
    // Filters narrow; the table ends with a summary.
    let (ok, t, _) = common::cli(&[os("query"), os("--data-dir"), dir, os("--filter"), os("dst port 443 and proto tcp")]);
    assert!(ok);
    let summary = t.lines().last().unwrap_or_default();
    let n: usize = summary
        .trim_start_matches("Summary: ")
        .split(' ')
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    let want = lines
        .iter()
        .filter(|l| l.contains("\"dst_port\":443,") && l.contains("\"proto\":6,"))
        .count();
    assert_eq!(n, want, "{summary}");
    assert!(n > 0);
}

#[test]
fn top_and_series_agree_with_the_flows() {
    let d = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    ingest_fixture(d.path());
    let flows = common::read_all(d.path());
    let dir = d.path().as_os_str();
    let (ok, out, err) = common::cli(&[
        os("query"),
        os("--data-dir"),
        dir,
        os("--top"),
        os("dst"),
        os("--by"),
        os("bytes"),
        os("--limit"),
        os("3"),
        os("--format"),
        os("jsonl"),
    ]);
    assert!(ok, "{err}");
    let rows: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}")))
        .collect();
    assert_eq!(rows.len(), 3);
    let mut by_dst: std::collections::HashMap<String, u64> = Default::default();
    for f in &flows {
        *by_dst.entry(f.dst.to_string()).or_default() += f.bytes;
    }
    let mut want: Vec<(String, u64)> = by_dst.into_iter().collect();
    want.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    for (row, (k, b)) in rows.iter().zip(&want) {
        assert_eq!(row["dst"].as_str(), Some(k.as_str()));
        assert_eq!(row["bytes"].as_u64(), Some(*b));
    }
    // The contract spells the key dst_port.
    let (ok, out, err) = common::cli(&[
        os("query"),
        os("--data-dir"),
        dir,
        os("--top"),
        os("dst_port"),
        os("--by"),
        os("flows"),
        os("--format"),
        os("jsonl"),
    ]);
    assert!(ok, "{err}");
    let first: serde_json::Value = serde_json::from_str(out.lines().next().unwrap_or("{}")).unwrap_or_default();
    let top_port = first["dst_port"].as_str().unwrap_or_default().to_string();
    let mut by_port: std::collections::HashMap<String, u64> = Default::default();
    for f in &flows {
        *by_port
            .entry(format!("{}/{}", f.dst_port, flowwarden::flow::proto_name(f.proto).unwrap_or("?")))
            .or_default() += 1;
    }
    let most = by_port.values().max().copied().unwrap_or(0);
    assert_eq!(by_port.get(&top_port).copied(), Some(most), "{top_port}");
    assert_eq!(first["flows"].as_u64(), Some(most));
    let (ok, out, _) = common::cli(&[
        os("query"),
        os("--data-dir"),
        dir,
        os("--series"),
        os("1m"),
        os("--format"),
        os("csv"),
    ]);
    assert!(ok);
    let total: u64 = out
        .lines()
        .skip(1)
        .map(|l| l.split(',').nth(1).and_then(|n| n.parse::<u64>().ok()).unwrap_or(0))
        .sum();
    assert_eq!(total, flows.len() as u64);
}

#[test]
fn bad_input_gets_a_clear_error() {
    let d = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    ingest_fixture(d.path());
    let dir = d.path().as_os_str();
    let (ok, _, err) = common::cli(&[
        os("query"),
        os("--data-dir"),
        dir,
        os("--filter"),
        os("src net 10.0.0.0/8 and dst prot 443"),
    ]);
    assert!(!ok);
    assert!(
        err.contains("column 28") && err.contains("\"prot\"") && err.contains("expected 'host', 'net', 'port', 'if' or 'country'"),
        "{err}"
    );
    let (ok, _, err) = common::cli(&[os("query"), os("--data-dir"), dir, os("--from"), os("yesterday")]);
    assert!(!ok && err.contains("invalid time \"yesterday\""), "{err}");
    // Config errors: file, line, what was expected; run refuses to start.
    let cfg = d.path().join("bad.toml");
    std::fs::write(&cfg, "[collector]\nlisten = [\"127.0.0.1:0\"]\n\n[storage]\nbudget = \"lots\"\n").unwrap_or_else(|e| panic!("{e}"));
    let (ok, _, err) = common::cli(&[os("check-config"), cfg.as_os_str()]);
    assert!(!ok && err.contains("bad.toml:5:") && err.contains("not a size"), "{err}");
    let (ok, _, err) = common::cli(&[os("run"), os("--config"), cfg.as_os_str(), os("--data-dir"), dir]);
    assert!(!ok && err.contains("bad.toml:5:"), "{err}");
    let good = d.path().join("good.toml");
    std::fs::write(&good, "[storage]\nbudget = \"1GiB\"\n").unwrap_or_else(|e| panic!("{e}"));
    let (ok, out, _) = common::cli(&[os("check-config"), good.as_os_str()]);
    assert!(ok && out.contains(": ok"), "{out}");
    // A damaged capture: what was read is kept, the error names the file and offset.
    let broken = d.path().join("broken.pcap");
    let mut bytes = std::fs::read(common::captures().join("exported/softflowd_test-cc-capture-1_v9a.pcap")).unwrap_or_default();
    bytes.truncate(bytes.len() / 2);
    bytes.extend_from_slice(&[0xff; 40]);
    std::fs::write(&broken, &bytes).unwrap_or_else(|e| panic!("{e}"));
    let d2 = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let (ok, out, err) = common::cli(&[os("ingest"), os("--data-dir"), d2.path().as_os_str(), broken.as_os_str()]);
    assert!(!ok, "a damaged file must not look like success");
    assert!(err.contains("broken.pcap"), "{err}");
    let stored: u64 = out
        .lines()
        .find_map(|l| l.strip_prefix("flows stored:"))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0);
    assert!(stored > 0 && stored as usize == common::read_all(d2.path()).len(), "{out}");
}

#[test]
fn run_collects_and_flushes_on_sigterm() {
    let d = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let fw = common::Running::start(d.path(), &[]);
    let t0 = 1_793_577_600_000 + 10 * 3_600_000;
    let flows = flowgen::Office::new(11, 40).flows(t0, t0 + 1_800_000);
    let mut sent = 0u64;
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap_or_else(|e| panic!("{e}"));
    for version in [flowgen::Version::V5, flowgen::Version::V9, flowgen::Version::Ipfix] {
        let mut exp = flowgen::Exporter::new(version, t0 - 86_400_000);
        let dgrams: Vec<(u32, Vec<u8>)> = flowgen::export_stream(&mut exp, &flows, 1000)
            .into_iter()
            .map(|(_, n, d)| (n, d))
            .collect();
        let rep = flowgen::send::paced(&sock, fw.addr(), &dgrams, 50_000);
        assert_eq!(rep.errors, 0);
        sent += rep.records;
    }
    // Stop right away: everything received must still be stored.
    let (status, took) = fw.stop();
    assert!(status.success(), "exit status {status}");
    assert!(took < std::time::Duration::from_secs(5), "shutdown took {took:?}");
    assert_eq!(common::read_all(d.path()).len() as u64, sent);
    let (ok, out, _) = common::cli(&[os("exporters"), os("--data-dir"), d.path().as_os_str(), os("--format"), os("json")]);
    assert!(ok);
    let ex: serde_json::Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    let e = &ex.as_array().unwrap_or_else(|| panic!("{out}"))[0];
    assert_eq!(e["records"].as_u64(), Some(sent));
    assert_eq!(
        e["versions"],
        serde_json::json!([5, 9, 10]),
        "the versions themselves, not a bit set"
    );
    assert_eq!(e["malformed"].as_u64(), Some(0));
    // Every stage's metrics, kernel drops included, are kept in the state file.
    let (ok, table, _) = common::cli(&[os("exporters"), os("--data-dir"), d.path().as_os_str()]);
    assert!(ok);
    for name in [
        "flowwarden_collector_datagrams_total",
        "flowwarden_collector_dropped_total{reason=\"kernel\"}",
        "flowwarden_collector_dropped_total{reason=\"decoder_queue\"}",
        "flowwarden_pipeline_dropped_flows_total{queue=\"store\"}",
        "flowwarden_store_flows_stored_total",
        "flowwarden_store_budget_bytes",
        "flowwarden_decode_records_total{exporter=",
    ] {
        assert!(table.contains(name), "{name} missing from:\n{table}");
    }
    let committed: u64 = table
        .lines()
        .find_map(|l| l.strip_prefix("flowwarden_store_flows_stored_total"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    assert_eq!(committed, sent);
    // The same snapshot in the Prometheus text format.
    let (ok, prom, err) = common::cli(&[os("metrics"), os("--data-dir"), d.path().as_os_str()]);
    assert!(ok, "{err}");
    assert!(prom.contains("# TYPE flowwarden_store_flows_stored_total counter\n"), "{prom}");
    assert!(prom.contains(&format!("\nflowwarden_store_flows_stored_total {sent}\n")), "{prom}");
}

#[test]
fn query_reads_while_run_writes() {
    let d = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let fw = common::Running::start(d.path(), &[]);
    let t0 = 1_793_577_600_000 + 9 * 3_600_000;
    let flows = flowgen::Office::new(12, 20).flows(t0, t0 + 600_000);
    let mut exp = flowgen::Exporter::new(flowgen::Version::Ipfix, t0 - 86_400_000);
    let dgrams: Vec<(u32, Vec<u8>)> = flowgen::export_stream(&mut exp, &flows, 1000)
        .into_iter()
        .map(|(_, n, d)| (n, d))
        .collect();
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap_or_else(|e| panic!("{e}"));
    flowgen::send::paced(&sock, fw.addr(), &dgrams, 0);
    // Commits happen at least every second; a concurrent reader sees them.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    loop {
        let (ok, out, err) = common::cli(&[os("query"), os("--data-dir"), d.path().as_os_str(), os("--format"), os("jsonl")]);
        assert!(ok, "query while running failed: {err}");
        if out.lines().count() == flows.len() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "only {} of {} flows visible",
            out.lines().count(),
            flows.len()
        );
        std::thread::sleep(std::time::Duration::from_millis(300));
    }
    let (status, _) = fw.stop();
    assert!(status.success());
}

#[test]
fn watchdog_test_names_the_stages_and_freezes_only_what_is_asked() {
    let d = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let dir = d.path().as_os_str();
    let fw = common::Running::start(d.path(), &[]);
    let (ok, _, err) = common::cli(&[os("watchdog-test"), os("--data-dir"), dir, os("nosuch"), os("--yes")]);
    assert!(!ok);
    assert!(err.contains("watchdog-test refused: no stage named \"nosuch\"; running: "), "{err}");
    for stage in ["decoder", "writer", "detector", "collector 127.0.0.1:", "web"] {
        assert!(err.contains(stage), "{stage} not among the stages named: {err}");
    }
    // Without --yes it only says what it would do.
    let (ok, out, _) = common::cli(&[os("watchdog-test"), os("--data-dir"), dir, os("collector")]);
    assert!(ok && out.contains("Add --yes to do it."), "{out}");
    // The collector hangs at its next datagram; none is sent, so the appliance still stops cleanly.
    let (ok, out, err) = common::cli(&[os("watchdog-test"), os("--data-dir"), dir, os("collector"), os("--yes")]);
    assert!(ok, "{err}");
    assert!(
        out.starts_with("flowwarden: stage collector hangs from its next unit of work; the watchdog notices after 60 s"),
        "{out}"
    );
    let (status, _) = fw.stop();
    assert!(status.success(), "{status}");
    let (ok, _, err) = common::cli(&[os("watchdog-test"), os("--data-dir"), dir, os("--yes")]);
    assert!(!ok && err.contains("no appliance is running on this data directory"), "{err}");
}
