//! Detection through the real pipeline: flowgen export streams (and real
//! captures) go through decode, the detector thread and the store; alerts are
//! read back from the state database and through the CLI. Each detector fires
//! on its attack and stays silent on its benign look-alike; baselines survive
//! a restart; copies from a second exporter are counted once; the same input
//! gives the same alerts.

mod common;

use flowgen::{Attack, Exporter, Office, Version, export_stream};
use flowwarden::alert::{Alert, Kind};
use flowwarden::config::Config;
use flowwarden::pipeline::{Backpressure, Pipeline};
use flowwarden::store::DataDir;
use flowwarden::store::reader::Reader;
use std::ffi::OsStr;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;

/// Monday 2026-11-02 00:00 UTC.
const START: u64 = 1_793_577_600_000;
const HOUR: u64 = 3_600_000;
const DAY: u64 = 24 * HOUR;

fn exporter(n: u8) -> SocketAddr {
    SocketAddr::from(([10, 20, 0, n], 2055))
}

/// Export `office`'s flows of [from, to) as IPFIX from each of `exporters` (every
/// datagram from each, interleaved) into a pipeline on `dir`.
fn ingest(cfg: &Config, dir: &Path, office: &Office, from: u64, to: u64, exporters: &[SocketAddr]) -> u64 {
    let mut p = Pipeline::open(cfg, dir, Backpressure::Block).unwrap_or_else(|e| panic!("{e}"));
    let mut exps: Vec<Exporter> = exporters.iter().map(|_| Exporter::new(Version::Ipfix, from - DAY)).collect();
    let mut records = 0u64;
    // A day at a time keeps memory small.
    let mut t = from;
    while t < to {
        let end = (t + DAY).min(to);
        let flows = office.flows(t, end);
        records += flows.len() as u64;
        let streams: Vec<Vec<(u64, u32, Vec<u8>)>> = exps.iter_mut().map(|e| export_stream(e, &flows, 1000)).collect();
        for i in 0..streams[0].len() {
            for (k, s) in streams.iter().enumerate() {
                let (ts, _, d) = &s[i];
                p.datagram(exporters[k], *ts, d);
            }
        }
        t = end;
    }
    p.finish();
    records
}

fn alerts(dir: &Path) -> Vec<Alert> {
    let (stored, bad) = flowwarden::detect::rows::load_alerts(&Reader::new(DataDir::new(dir))).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(bad, 0);
    let mut v: Vec<Alert> = stored.into_iter().map(|s| s.alert).collect();
    v.sort_by(|a, b| (a.first_seen_ms, &a.id).cmp(&(b.first_seen_ms, &b.id)));
    v
}

fn counter(dir: &Path, name: &str) -> u64 {
    Reader::new(DataDir::new(dir))
        .counters()
        .unwrap_or_else(|e| panic!("{e}"))
        .into_iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v)
        .unwrap_or_else(|| panic!("counter {name} missing"))
}

fn tmp() -> tempfile::TempDir {
    tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"))
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
}

fn os(s: &str) -> &OsStr {
    OsStr::new(s)
}

fn beacon_office(seed: u64) -> Office {
    let mut o = Office::new(seed, 8);
    o.attacks.push(Attack::Beacon {
        host: 5,
        c2: Ipv4Addr::new(185, 100, 87, 5),
        port: 443,
        period_ms: 300_000,
        jitter: 0.15,
        miss: 0.1,
        from_ms: START,
        to_ms: START + DAY,
    });
    o
}

#[test]
fn beacon_fires_and_its_look_alikes_stay_quiet() {
    let d = tmp();
    let office = beacon_office(21);
    ingest(&Config::default(), d.path(), &office, START, START + DAY, &[exporter(1)]);
    let got = alerts(d.path());
    // The hourly update check of every host (popular, perfectly periodic) and NTP
    // every 64 s (periodic service) are down-weighted; DNS goes to an internal resolver.
    assert_eq!(got.len(), 1, "{got:#?}");
    let a = &got[0];
    assert_eq!(a.kind, Kind::Beaconing);
    assert_eq!(a.src, IpAddr::V4(office.hosts[5]));
    assert_eq!(a.dst, Some(ip("185.100.87.5")));
    assert_eq!(a.dst_port, Some(443));
    assert_eq!(a.attack, vec!["T1071", "T1573"]);
    let period = a.evidence["period_s"].as_f64().unwrap_or(0.0);
    assert!((270.0..330.0).contains(&period), "period {period}");
    assert!(a.evidence["score"].as_f64().unwrap_or(0.0) >= 0.8);
    assert!(a.count > 1, "re-detections fold into one alert");

    // The CLI contract.
    let dir = d.path().as_os_str();
    let (ok, out, err) = common::cli(&[os("alerts"), os("--data-dir"), dir, os("--format"), os("jsonl")]);
    assert!(ok, "{err}");
    let lines: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    assert_eq!(lines.len(), 1);
    let o = lines[0].as_object().cloned().unwrap_or_default();
    let mut keys: Vec<&str> = o.keys().map(String::as_str).collect();
    keys.sort_unstable();
    assert_eq!(keys, flowwarden::alert::JSON_KEYS);
    assert_eq!(o["kind"], "beaconing");
    assert_eq!(o["id"], a.id.as_str());
    assert!(
        o["first_seen"]
            .as_str()
            .is_some_and(|s| s.starts_with("2026-11-02T") && s.ends_with('Z'))
    );
    let (ok, out, _) = common::cli(&[
        os("alerts"),
        os("--data-dir"),
        dir,
        os("--format"),
        os("jsonl"),
        os("--kind"),
        os("scan"),
    ]);
    assert!(ok && out.is_empty(), "{out}");
    let (ok, out, _) = common::cli(&[
        os("alerts"),
        os("--data-dir"),
        dir,
        os("--format"),
        os("jsonl"),
        os("--since"),
        os("2026-11-03T00:00:00Z"),
    ]);
    assert!(ok && out.is_empty(), "{out}");
    let (ok, out, _) = common::cli(&[os("alerts"), os("--data-dir"), dir]);
    assert!(ok && out.contains("beaconing") && out.contains("1 alerts"), "{out}");
    let (ok, _, err) = common::cli(&[os("alerts"), os("--data-dir"), dir, os("--kind"), os("worm")]);
    assert!(
        !ok && err.contains("--kind \"worm\": expected exfiltration, beaconing, scan or spike"),
        "{err}"
    );
    let (ok, out, _) = common::cli(&[os("detectors"), os("--data-dir"), dir, os("--format"), os("json")]);
    assert!(ok);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    let states: Vec<(String, String)> = v["status"]["detectors"]
        .as_array()
        .unwrap_or_else(|| panic!("{out}"))
        .iter()
        .map(|d| (d["name"].as_str().unwrap_or("").into(), d["state"].as_str().unwrap_or("").into()))
        .collect();
    // One day of history: the baseline detectors are still learning.
    assert!(states.contains(&("exfiltration".into(), "learning".into())), "{states:?}");
    assert!(states.contains(&("beaconing".into(), "active".into())), "{states:?}");
    assert!(
        v["counters"]["flowwarden_detect_flows_total"].as_u64().unwrap_or(0) > 10_000,
        "{out}"
    );
    // The update checks scored as beacons and were down-weighted below the threshold.
    assert!(
        v["counters"]["flowwarden_detect_beacon_down_weighted_total"].as_u64().unwrap_or(0) > 0,
        "{out}"
    );
}

#[test]
fn scans_of_every_shape_and_protocol() {
    let d = tmp();
    let mut o = Office::new(22, 20);
    let t = START + 9 * HOUR;
    o.attacks = vec![
        Attack::HorizontalScan {
            src: Ipv4Addr::new(10, 20, 1, 99),
            proto: 6,
            port: 445,
            targets: 250,
            at_ms: t,
            spread_ms: 120_000,
        },
        Attack::HorizontalScan {
            src: Ipv4Addr::new(10, 20, 1, 98),
            proto: 17,
            port: 161,
            targets: 200,
            at_ms: t + HOUR,
            spread_ms: 120_000,
        },
        Attack::HorizontalScan {
            src: Ipv4Addr::new(10, 20, 1, 97),
            proto: 1,
            port: 0,
            targets: 200,
            at_ms: t + 2 * HOUR,
            spread_ms: 120_000,
        },
        Attack::VerticalScan {
            src: Ipv4Addr::new(203, 0, 113, 66),
            dst_host: 1,
            ports: 1024,
            at_ms: t + 3 * HOUR,
            spread_ms: 60_000,
        },
        // Slow: one probe every 3 minutes for 5 hours.
        Attack::HorizontalScan {
            src: Ipv4Addr::new(10, 20, 1, 96),
            proto: 6,
            port: 3389,
            targets: 100,
            at_ms: t,
            spread_ms: 300 * 60_000,
        },
    ];
    ingest(
        &Config::default(),
        d.path(),
        &o,
        START + 8 * HOUR,
        START + 16 * HOUR,
        &[exporter(1)],
    );
    let got = alerts(d.path());
    assert_eq!(got.len(), 5, "{got:#?}");
    let by_src = |s: &str| {
        got.iter()
            .find(|a| a.src == ip(s))
            .unwrap_or_else(|| panic!("no alert from {s}: {got:#?}"))
    };
    for (src, port, attack) in [
        ("10.20.1.99", Some(445), "T1046"),
        ("10.20.1.98", Some(161), "T1046"),
        ("10.20.1.97", None, "T1046"),
        ("10.20.1.96", Some(3389), "T1046"),
    ] {
        let a = by_src(src);
        assert_eq!(a.kind, Kind::Scan);
        assert_eq!(a.dst, None, "{a:#?}");
        assert_eq!(a.dst_port, port, "{a:#?}");
        assert_eq!(a.attack, vec![attack]);
        assert_eq!(a.evidence["shape"], "horizontal");
    }
    assert_eq!(by_src("10.20.1.97").evidence["proto"], "icmp");
    assert_eq!(by_src("10.20.1.98").evidence["proto"], "udp");
    let slow = by_src("10.20.1.96");
    assert_eq!(slow.evidence["targets"], 100, "the slow scan is reported whole: {slow:#?}");
    let v = by_src("203.0.113.66");
    assert_eq!(v.dst, Some(IpAddr::V4(o.hosts[1])));
    assert_eq!(v.dst_port, None);
    assert_eq!(v.attack, vec!["T1595"]);
    assert_eq!(v.evidence["shape"], "vertical");
    // Ports 22, 135 and 445 answered SYN-ACK: the open ones are in the evidence.
    assert_eq!(v.evidence["answered_probes"], 3, "{v:#?}");

    // The same input gives the same alerts, ids included (event time, no wall clock).
    let d2 = tmp();
    ingest(
        &Config::default(),
        d2.path(),
        &o,
        START + 8 * HOUR,
        START + 16 * HOUR,
        &[exporter(1)],
    );
    assert_eq!(alerts(d2.path()), got);
}

/// A small office (6 hosts) whose host 0 uploads a backup every night.
fn learning_office() -> Office {
    let mut o = Office::new(23, 6);
    o.intensity = 2.0;
    o
}

#[test]
fn baselines_survive_a_restart_and_drive_exfiltration_and_spikes() {
    let d = tmp();
    let mut o = learning_office();
    // Run 1: a week of learning.
    ingest(&Config::default(), d.path(), &o, START, START + 7 * DAY, &[exporter(1)]);
    assert!(alerts(d.path()).is_empty(), "{:#?}", alerts(d.path()));
    // Run 2 (a new process would do the same: everything comes from the state file):
    // day 8 with a night upload by host 3 and an afternoon flood against host 2.
    let exfil_dst = Ipv4Addr::new(185, 220, 101, 9);
    let day8 = START + 7 * DAY;
    o.attacks = vec![
        Attack::Exfil {
            host: 3,
            dst: exfil_dst,
            at_ms: day8 + 2 * HOUR + 10 * 60_000,
            bytes: 1_500_000_000,
            duration_ms: 30 * 60_000,
        },
        Attack::Flood {
            victim: 2,
            sources: 120,
            at_ms: day8 + 14 * HOUR,
            duration_ms: 15 * 60_000,
            pps: 20_000,
        },
    ];
    ingest(&Config::default(), d.path(), &o, day8, day8 + DAY, &[exporter(1)]);
    let got = alerts(d.path());
    assert_eq!(got.len(), 2, "{got:#?}");
    let ex = got
        .iter()
        .find(|a| a.kind == Kind::Exfiltration)
        .unwrap_or_else(|| panic!("{got:#?}"));
    assert_eq!(ex.src, IpAddr::V4(o.hosts[3]));
    assert_eq!(ex.dst, Some(IpAddr::V4(exfil_dst)));
    assert_eq!(ex.attack, vec!["T1048"]);
    assert_eq!(ex.evidence["baseline_basis"], "hour-of-day");
    assert_eq!(ex.evidence["baseline_samples"], 7);
    let boosts = ex.evidence["boosts"].to_string();
    assert!(boosts.contains("new destination") && boosts.contains("off-hours"), "{boosts}");
    let sp = got.iter().find(|a| a.kind == Kind::Spike).unwrap_or_else(|| panic!("{got:#?}"));
    assert_eq!(sp.dst, Some(IpAddr::V4(o.hosts[2])), "the victim is dst: {sp:#?}");
    assert_eq!(sp.evidence["direction"], "inbound");
    assert_eq!(sp.evidence["scope"], "host");
    assert_eq!(sp.attack, vec!["T1498"]);
    let tops = sp.evidence["top_sources"].as_array().cloned().unwrap_or_default();
    assert_eq!(tops.len(), 5);
    assert!(tops.iter().all(|t| t["addr"].as_str().is_some_and(|a| a.starts_with("45."))));
    // The nightly backup of host 0 (1 GB every night at 02:00) is baseline: no alert.
    assert!(!got.iter().any(|a| a.src == IpAddr::V4(o.hosts[0])));

    // Without the persisted week the same day raises nothing that needs a baseline.
    let fresh = tmp();
    ingest(&Config::default(), fresh.path(), &o, day8, day8 + DAY, &[exporter(1)]);
    assert!(
        alerts(fresh.path())
            .iter()
            .all(|a| a.kind != Kind::Exfiltration && a.kind != Kind::Spike)
    );
    assert!(counter(fresh.path(), "flowwarden_detect_silent_learning_total{detector=\"exfiltration\"}") > 0);
}

#[test]
fn copies_from_a_second_exporter_are_counted_once() {
    let one = tmp();
    let two = tmp();
    let office = beacon_office(24);
    let records = ingest(&Config::default(), one.path(), &office, START, START + 12 * HOUR, &[exporter(1)]);
    ingest(
        &Config::default(),
        two.path(),
        &office,
        START,
        START + 12 * HOUR,
        &[exporter(1), exporter(2)],
    );
    // Every flow of the second exporter is a duplicate; the alerts do not change.
    assert_eq!(counter(two.path(), "flowwarden_detect_duplicates_total"), records);
    assert_eq!(counter(one.path(), "flowwarden_detect_duplicates_total"), 0);
    let (a, b) = (alerts(one.path()), alerts(two.path()));
    assert_eq!(a.len(), 1);
    assert_eq!(a, b);
}

#[test]
fn allow_list_suppresses_and_counts() {
    let d = tmp();
    let cfg = Config::parse(
        "[[detect.allow]]\nname = \"c2-lab\"\ndst = \"185.100.87.0/24\"\nport = 443\nproto = \"tcp\"\nkinds = [\"beaconing\"]\n",
        Path::new("allow.toml"),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    ingest(&cfg, d.path(), &beacon_office(21), START, START + DAY, &[exporter(1)]);
    assert!(alerts(d.path()).is_empty());
    assert!(counter(d.path(), "flowwarden_detect_allowlisted_total{kind=\"beaconing\"}") > 0);
    assert_eq!(
        counter(d.path(), "flowwarden_detect_allowlisted_total{kind=\"beaconing\"}"),
        counter(d.path(), "flowwarden_detect_allow_rule_total{rule=\"c2-lab\"}")
    );
    // A bad entry is a clear config error.
    let e = Config::parse("[[detect.allow]]\nkinds = [\"worm\"]\n", Path::new("bad.toml"))
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(e.contains("detect.allow.kinds") && e.contains("\"worm\""), "{e}");
}

#[test]
fn real_captures_beacon_and_masscan() {
    let exported = common::captures().join("exported");
    // Slips test-cc-capture-1: an HTTPS beacon every ~2 s from 147.32.80.37.
    // Both as unidirectional v9 and as RFC 5103 biflows (softflowd -b, IPFIX).
    // Replays of old captures: flows dated years before their export headers.
    let cfg = Config::parse(
        "[collector]\nmax_clock_skew = \"36500d\"\n[network]\ninternal = [\"147.32.80.0/24\"]\n",
        Path::new("slips.toml"),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    for stream in ["softflowd_test-cc-capture-1_v9a.pcap", "softflowd_test-cc-capture-1_v10b.pcap"] {
        let d = tmp();
        common::ingest(&cfg, d.path(), &[exported.join(stream)]);
        let got = alerts(d.path());
        assert_eq!(got.len(), 1, "{stream}: {got:#?}");
        assert_eq!(got[0].kind, Kind::Beaconing);
        assert_eq!(got[0].src, ip("147.32.80.37"));
        assert_eq!(got[0].dst, Some(ip("141.193.213.21")));
        assert_eq!(got[0].dst_port, Some(443));
        assert_eq!(got[0].evidence["connections"], 295, "{stream}");
    }
    // esnet masscan of TCP ports 0-1000 from 172.31.15.102 (RFC 1918: internal by default).
    let d = tmp();
    common::ingest(
        &common::replay_config(),
        d.path(),
        &[exported.join("softflowd_tcp_0_1000_20190821_v9.pcap")],
    );
    let got = alerts(d.path());
    assert_eq!(got.len(), 1, "{got:#?}");
    assert_eq!(got[0].kind, Kind::Scan);
    assert_eq!(got[0].src, ip("172.31.15.102"));
    assert_eq!(got[0].dst, Some(ip("198.124.152.15")));
    assert_eq!(got[0].evidence["shape"], "vertical");
    assert_eq!(got[0].evidence["targets"], 1001);
    assert_eq!(got[0].attack, vec!["T1046"]);
}

#[test]
fn run_demo_raises_alerts_through_the_live_pipeline() {
    let d = tmp();
    let fw = common::Running::start(d.path(), &["--demo"]);
    let dir = d.path().as_os_str();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(240);
    let mut kinds = std::collections::BTreeSet::new();
    let mut last = String::new();
    // The demo replays eight days (a week of learning, then the attacks) at 60 k records/s.
    while !(kinds.contains("beaconing") && kinds.contains("scan") && kinds.contains("exfiltration")) {
        assert!(
            std::time::Instant::now() < deadline,
            "demo alerts incomplete after 240 s: {kinds:?}\n{last}"
        );
        std::thread::sleep(std::time::Duration::from_secs(3));
        let (ok, out, err) = common::cli(&[os("alerts"), os("--data-dir"), dir, os("--format"), os("jsonl")]);
        assert!(ok, "{err}");
        kinds = out
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter_map(|v| v["kind"].as_str().map(str::to_string))
            .collect();
        last = out;
    }
    let (status, _) = fw.stop();
    assert!(status.success(), "{status}");
}
