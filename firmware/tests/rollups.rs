//! Roll-ups answer: `query --series` and `--top` read them whenever the
//! filter and range allow, and what they answer equals the raw scan exactly
//! (the raw path is forced with a filter the roll-ups are not keyed by,
//! `any and any`). Where they cannot be exact they fall back, and `--explain`
//! says which source answered.

mod common;

use common::v5;
use std::ffi::OsStr;
use std::path::Path;

fn os(s: &str) -> &OsStr {
    OsStr::new(s)
}

/// (plan line, stdout) of a query.
fn query(data: &Path, args: &[&str]) -> (String, String) {
    let mut a = vec![
        os("query"),
        os("--data-dir"),
        data.as_os_str(),
        os("--explain"),
        os("--format"),
        os("csv"),
    ];
    a.extend(args.iter().map(|s| os(s)));
    let (ok, out, err) = common::cli(&a);
    assert!(ok, "{args:?}: {err}");
    let plan = err.lines().find(|l| l.starts_with("plan: ")).unwrap_or_default().to_string();
    (plan, out)
}

fn with_filter<'a>(args: &[&'a str], filter: &'a str) -> Vec<&'a str> {
    let mut v = args.to_vec();
    v.extend(["--filter", filter]);
    v
}

/// An office from flowgen (few hosts: complete top lists) and random v5 traffic
/// (many hosts: truncated lists), two exporters, several hours.
fn data(dir: &Path) -> std::path::PathBuf {
    let data = dir.join("data");
    let t0 = 1_790_506_800_000;
    let office = flowgen::Office::new(9, 30).flows(t0, t0 + 5 * 3_600_000);
    let mut exp = flowgen::Exporter::new(flowgen::Version::Ipfix, t0 - 86_400_000);
    let stream = flowgen::export_stream(&mut exp, &office, 1000);
    let office_pcap = dir.join("office.pcap");
    // The office's exporter: 192.0.2.9 (the random v5 one is 192.0.2.1).
    let datagrams: Vec<(u64, Vec<u8>)> = stream.into_iter().map(|(t, _, d)| (t, d)).collect();
    v5::write_pcap_from(&office_pcap, [192, 0, 2, 9], &datagrams);
    let random_pcap = dir.join("random.pcap");
    v5::write_pcap(&random_pcap, &v5::hours(7, t0, 5, 400));
    let cfg = dir.join("c.toml");
    std::fs::write(&cfg, "[storage]\ntop_entries = 1000\n").unwrap_or_else(|e| panic!("{e}"));
    let (ok, out, err) = common::cli(&[
        os("ingest"),
        os("--config"),
        cfg.as_os_str(),
        os("--data-dir"),
        data.as_os_str(),
        office_pcap.as_os_str(),
        random_pcap.as_os_str(),
    ]);
    assert!(ok, "{out}\n{err}");
    data
}

#[test]
fn series_from_rollups_equal_the_raw_scan() {
    let t = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let data = data(t.path());
    for bucket in ["1m", "1h"] {
        for filter in [
            "",
            "proto udp",
            "exporter 192.0.2.1:40000",
            "exporter 192.0.2.1",
            "direction outbound",
            "direction inbound",
            "direction external",
        ] {
            for range in [vec![], vec!["--from", "2026-09-27T12:00:00Z", "--to", "2026-09-27T14:30:00Z"]] {
                let mut args = vec!["--series", bucket];
                args.extend(range.iter());
                let (plan, fast) = query(&data, &with_filter(&args, filter));
                assert!(plan.starts_with("plan: roll-ups"), "{args:?} {filter:?}: {plan}");
                let raw_filter = if filter.is_empty() {
                    "any and any".to_string()
                } else {
                    format!("{filter} and any")
                };
                let (plan, raw) = query(&data, &with_filter(&args, &raw_filter));
                assert!(plan.starts_with("plan: raw flows"), "{plan}");
                assert_eq!(fast, raw, "series {bucket} {filter:?} {range:?}");
                assert!(fast.lines().count() > 1);
            }
        }
    }
    // A range off the minute, or a filter the roll-ups are not keyed by: raw, and said why.
    let (plan, _) = query(&data, &["--series", "1m", "--from", "2026-09-27T12:00:30Z"]);
    assert!(plan.contains("raw flows") && plan.contains("whole minutes"), "{plan}");
    let (plan, _) = query(&data, &["--series", "1h", "--filter", "dst port 443"]);
    assert!(
        plan.contains("raw flows") && plan.contains("not one the roll-ups are keyed by"),
        "{plan}"
    );
}

#[test]
fn top_from_rollups_is_exact_or_not_used() {
    let t = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let data = data(t.path());
    let mut from_rollups = 0;
    for key in ["src", "dst", "dst_port", "proto", "conversation"] {
        for by in ["bytes", "packets", "flows"] {
            for range in [vec![], vec!["--from", "2026-09-27T12:00:00Z", "--to", "2026-09-27T14:00:00Z"]] {
                let mut args = vec!["--top", key, "--by", by, "--limit", "10"];
                args.extend(range.iter());
                let (plan, fast) = query(&data, &args);
                let (raw_plan, raw) = query(&data, &with_filter(&args, "any and any"));
                assert!(raw_plan.starts_with("plan: raw flows"), "{raw_plan}");
                assert_eq!(fast, raw, "top {key} by {by} {range:?} ({plan})");
                if plan.starts_with("plan: roll-ups") {
                    from_rollups += 1;
                }
            }
        }
    }
    // Protocols always (minute rows); the others where every hour's list is exact.
    assert!(from_rollups >= 6, "only {from_rollups} top queries were answered from the roll-ups");
    let (plan, _) = query(&data, &["--top", "src", "--from", "2026-09-27T12:10:00Z"]);
    assert!(plan.contains("whole hours"), "{plan}");
}

#[test]
fn late_flows_make_an_hour_inexact_not_wrong() {
    let t = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let data = t.path().join("data");
    let t0 = 1_790_506_800_000;
    // Hours 0-3, then hour 1 again (late: its lists were written and forgotten).
    let first = t.path().join("a.pcap");
    v5::write_pcap(&first, &v5::hours(1, t0, 4, 50));
    let late = t.path().join("b.pcap");
    v5::write_pcap(&late, &v5::hours(2, t0 + 3_600_000, 1, 50));
    for p in [&first, &late] {
        let (ok, out, err) = common::cli(&[os("ingest"), os("--data-dir"), data.as_os_str(), p.as_os_str()]);
        assert!(ok, "{out}\n{err}");
    }
    let args = ["--top", "src", "--by", "flows", "--limit", "5"];
    let (plan, fast) = query(&data, &args);
    let (_, raw) = query(&data, &with_filter(&args, "any and any"));
    assert_eq!(fast, raw);
    assert!(plan.contains("raw flows"), "{plan}");
}
