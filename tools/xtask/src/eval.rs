//! `cargo xtask eval`: detection quality on flowgen's scenarios and on real
//! captures.
//!
//! For every seed, flowgen writes the nine-day `benign` and `attacks`
//! scenarios (pcap + ground truth); `flowwarden ingest` replays each into a
//! fresh data directory with the default settings; `flowwarden alerts --format
//! jsonl` is matched against the truth: an attack is detected when an alert of
//! its kind names its actor (src, or dst for a flood victim / C2 server) and
//! overlaps its time; time to detect is the alert's `evidence.detected_at`
//! (event time when it was raised) minus the attack's start. Every other alert
//! is a false positive. Tuning seeds and held-out seeds (never used while
//! choosing defaults) are reported separately. Then the real captures in
//! ../shared/captures/exported are ingested and what each yields is listed.
//! The result goes to target/eval/results.md and, unless --quick, into
//! BENCHMARKS.md's "## Detection evaluation" section.

use anyhow::{Context, Result, bail};
use serde_json::Value;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

/// Seeds the defaults were tuned on.
const TUNING: &[u64] = &[1, 2, 3];
/// Seeds never looked at while tuning.
const HELD_OUT: &[u64] = &[101, 202, 303, 404];
/// Section heading in BENCHMARKS.md.
pub const SECTION: &str = "## Detection evaluation";

/// Real captures: (label, file under ../shared/captures/exported, what it holds,
/// the site's internal network when it is not RFC 1918).
const REAL: &[(&str, &str, &str, Option<&str>)] = &[
    (
        "slips-cc-1 softflowd v9 -a",
        "softflowd_test-cc-capture-1_v9a.pcap",
        "Slips test-cc-capture-1: HTTPS beacon every 2-3 s",
        Some("147.32.80.0/24"),
    ),
    (
        "slips-cc-1 pmacct v9",
        "pmacctd_test-cc-capture-1_pmacct_v9.pcap",
        "same capture through pmacctd",
        Some("147.32.80.0/24"),
    ),
    (
        "masscan tcp 0-1000",
        "softflowd_tcp_0_1000_20190821_v9.pcap",
        "esnet masscan TCP ports 0-1000",
        None,
    ),
    (
        "masscan udp 0-1000",
        "softflowd_udp_0_1000_20190821_v9.pcap",
        "esnet masscan UDP ports 0-1000",
        None,
    ),
    (
        "ssh brute force",
        "softflowd_malicious-ssh-bruteforce_v9.pcap",
        "Slips test19 ssh brute force",
        Some("147.32.80.0/24"),
    ),
    (
        "loopback beacon+scan (fprobe v5)",
        "fprobe_v5_loopback_beacon_scan_q10000.pcap",
        "generated loopback beacon and scan",
        Some("127.0.0.0/8"),
    ),
    (
        "slips test1-malicious (nfreplay v9)",
        "nfreplay_test1-malicious.v17.nfcapd_nfreplay_v9.pcap",
        "Slips test1 malicious nfdump file replayed",
        Some("147.32.0.0/16"),
    ),
];

struct Bins {
    fw: PathBuf,
    fg: PathBuf,
}

#[derive(Debug, Clone)]
struct Truth {
    name: String,
    kind: String,
    src: Option<String>,
    dst: Option<String>,
    start_ms: u64,
    end_ms: u64,
}

#[derive(Debug, Clone)]
struct AlertRow {
    kind: String,
    src: String,
    dst: Option<String>,
    port: Option<u64>,
    first_ms: u64,
    last_ms: u64,
    detected_ms: u64,
    summary: String,
}

/// Days since 1970-01-01 of a civil date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// `YYYY-MM-DDTHH:MM:SS.mmmZ` -> ms.
fn parse_rfc3339(s: &str) -> Option<u64> {
    let n = |a: usize, b: usize| s.get(a..b)?.parse::<i64>().ok();
    let days = days_from_civil(n(0, 4)?, n(5, 7)?, n(8, 10)?);
    let secs = days * 86_400 + n(11, 13)? * 3600 + n(14, 16)? * 60 + n(17, 19)?;
    let ms = n(20, 23).unwrap_or(0);
    u64::try_from(secs * 1000 + ms).ok()
}

fn run_out(c: &mut Command) -> Result<String> {
    let out = c.output().with_context(|| format!("cannot start {c:?}"))?;
    if !out.status.success() {
        bail!("{c:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn alerts(b: &Bins, dir: &Path) -> Result<Vec<AlertRow>> {
    let text = run_out(Command::new(&b.fw).args(["alerts", "--format", "jsonl", "--data-dir"]).arg(dir))?;
    let mut out = Vec::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let v: Value = serde_json::from_str(line).with_context(|| format!("bad alert line {line}"))?;
        let s = |k: &str| v[k].as_str().map(str::to_string);
        let first_ms = s("first_seen").and_then(|t| parse_rfc3339(&t)).unwrap_or(0);
        out.push(AlertRow {
            kind: s("kind").unwrap_or_default(),
            src: s("src").unwrap_or_default(),
            dst: s("dst"),
            port: v["dst_port"].as_u64(),
            first_ms,
            last_ms: s("last_seen").and_then(|t| parse_rfc3339(&t)).unwrap_or(0),
            detected_ms: v["evidence"]["detected_at"].as_str().and_then(parse_rfc3339).unwrap_or(first_ms),
            summary: s("summary").unwrap_or_default(),
        });
    }
    Ok(out)
}

fn ingest(b: &Bins, pcap: &Path, dir: &Path, config: Option<&Path>) -> Result<f64> {
    if dir.exists() {
        std::fs::remove_dir_all(dir)?;
    }
    let t = Instant::now();
    let mut c = Command::new(&b.fw);
    c.arg("ingest").arg("--data-dir").arg(dir);
    if let Some(cfg) = config {
        c.arg("--config").arg(cfg);
    }
    run_out(c.arg(pcap))?;
    Ok(t.elapsed().as_secs_f64())
}

fn matches(t: &Truth, a: &AlertRow) -> bool {
    a.kind == t.kind
        && t.src.as_ref().is_none_or(|s| *s == a.src)
        && t.dst.as_ref().is_none_or(|d| a.dst.as_ref() == Some(d))
        && a.last_ms + 60_000 >= t.start_ms
        && a.first_ms <= t.end_ms + 2 * 3_600_000
}

/// One scenario run.
struct RunResult {
    seed: u64,
    scenario: &'static str,
    days: f64,
    records: u64,
    secs: f64,
    /// (attack name, detected, seconds to detect)
    attacks: Vec<(String, bool, Option<f64>)>,
    false_positives: Vec<AlertRow>,
    alerts: usize,
}

fn scenario(b: &Bins, out: &Path, name: &'static str, seed: u64, hosts: &str) -> Result<RunResult> {
    let pcap = out.join(format!("{name}-{seed}.pcap"));
    let truth_path = out.join(format!("{name}-{seed}.truth.jsonl"));
    let gen_out = run_out(
        Command::new(&b.fg)
            .args(["--scenario", name, "--seed", &seed.to_string(), "--hosts", hosts, "--pcap"])
            .arg(&pcap)
            .arg("--truth")
            .arg(&truth_path),
    )?;
    let records: u64 = gen_out
        .split_whitespace()
        .zip(gen_out.split_whitespace().skip(1))
        .find(|(_, w)| *w == "records")
        .and_then(|(n, _)| n.parse().ok())
        .unwrap_or(0);
    let mut truth = Vec::new();
    for line in std::fs::read_to_string(&truth_path)?.lines().filter(|l| !l.is_empty()) {
        let v: Value = serde_json::from_str(line)?;
        truth.push(Truth {
            name: v["name"].as_str().unwrap_or("").into(),
            kind: v["kind"].as_str().unwrap_or("").into(),
            src: v["src"].as_str().map(str::to_string),
            dst: v["dst"].as_str().map(str::to_string),
            start_ms: v["start_ms"].as_u64().unwrap_or(0),
            end_ms: v["end_ms"].as_u64().unwrap_or(0),
        });
    }
    let dir = out.join(format!("data-{name}-{seed}"));
    let secs = ingest(b, &pcap, &dir, None)?;
    let list = alerts(b, &dir)?;
    let mut used = vec![false; list.len()];
    let mut attacks = Vec::new();
    for t in &truth {
        let mut best: Option<f64> = None;
        for (i, a) in list.iter().enumerate() {
            if matches(t, a) {
                used[i] = true;
                let ttd = (a.detected_ms as f64 - t.start_ms as f64) / 1000.0;
                best = Some(best.map_or(ttd, |b: f64| b.min(ttd)));
            }
        }
        attacks.push((t.name.clone(), best.is_some(), best));
    }
    let false_positives: Vec<AlertRow> = list.iter().zip(&used).filter(|(_, u)| !**u).map(|(a, _)| a.clone()).collect();
    // Generated data are removed: each run is reproducible from its seed.
    let _ = std::fs::remove_file(&pcap);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(RunResult {
        seed,
        scenario: name,
        days: 9.0,
        records,
        secs,
        attacks,
        false_positives,
        alerts: list.len(),
    })
}

fn fmt_secs(s: f64) -> String {
    if s < 120.0 {
        format!("{s:.0} s")
    } else if s < 7200.0 {
        format!("{:.0} min", s / 60.0)
    } else {
        format!("{:.1} h", s / 3600.0)
    }
}

fn table(md: &mut String, label: &str, runs: &[RunResult]) -> Result<()> {
    let seeds: Vec<String> = {
        let mut v: Vec<u64> = runs.iter().map(|r| r.seed).collect();
        v.sort_unstable();
        v.dedup();
        v.iter().map(u64::to_string).collect()
    };
    writeln!(md, "### {label} (seeds {})\n", seeds.join(", "))?;
    writeln!(md, "| attack | detected | time to detect (per seed) |")?;
    writeln!(md, "|---|---|---|")?;
    let mut per: BTreeMap<String, Vec<(u64, bool, Option<f64>)>> = BTreeMap::new();
    let mut order = Vec::new();
    for r in runs.iter().filter(|r| r.scenario == "attacks") {
        for (name, ok, t) in &r.attacks {
            if !per.contains_key(name) {
                order.push(name.clone());
            }
            per.entry(name.clone()).or_default().push((r.seed, *ok, *t));
        }
    }
    for name in &order {
        let v = &per[name];
        let hits = v.iter().filter(|e| e.1).count();
        let times: Vec<String> = v
            .iter()
            .map(|(s, ok, t)| match (ok, t) {
                (true, Some(t)) => format!("{s}: {}", fmt_secs(*t)),
                _ => format!("{s}: MISSED"),
            })
            .collect();
        writeln!(md, "| {name} | {hits}/{} | {} |", v.len(), times.join(", "))?;
    }
    writeln!(md)?;
    writeln!(
        md,
        "| scenario | seed | records | ingest s (decode + store + detect) | records/s | alerts/day | false positives/day |"
    )?;
    writeln!(md, "|---|---|---|---|---|---|---|")?;
    for r in runs {
        writeln!(
            md,
            "| {} | {} | {} | {:.1} | {:.0} | {:.2} | {:.2} |",
            r.scenario,
            r.seed,
            r.records,
            r.secs,
            r.records as f64 / r.secs.max(1e-9),
            r.alerts as f64 / r.days,
            r.false_positives.len() as f64 / r.days
        )?;
    }
    let fps: Vec<&AlertRow> = runs.iter().flat_map(|r| r.false_positives.iter()).collect();
    if !fps.is_empty() {
        writeln!(md, "\nFalse positives:\n")?;
        for a in fps {
            writeln!(md, "- {} {} -> {:?}:{:?}: {}", a.kind, a.src, a.dst, a.port, a.summary)?;
        }
    }
    writeln!(md)?;
    Ok(())
}

pub fn eval(root: &Path, args: &[String]) -> Result<()> {
    let quick = args.iter().any(|a| a == "--quick");
    // `cargo xtask ci` runs the quick evaluation on its own (ci profile) build.
    let profile = args
        .iter()
        .position(|a| a == "--profile")
        .and_then(|i| args.get(i + 1))
        .map(String::as_str)
        .unwrap_or("release");
    let hosts = "50";
    crate::run(
        Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
            .current_dir(root)
            .args(["build", "--profile", profile, "-p", "flowwarden", "-p", "flowgen"]),
    )?;
    let b = Bins {
        fw: root.join("target").join(profile).join("flowwarden"),
        fg: root.join("target").join(profile).join("flowgen"),
    };
    let out = root.join("target/eval");
    std::fs::create_dir_all(&out)?;
    let (tuning, held): (&[u64], &[u64]) = if quick {
        (&TUNING[..1], &HELD_OUT[..1])
    } else {
        (TUNING, HELD_OUT)
    };
    let t0 = Instant::now();
    let mut md = String::new();
    writeln!(md, "{SECTION}\n")?;
    writeln!(
        md,
        "`cargo xtask eval` ({}; flowgen `--scenario benign|attacks --hosts {hosts}`: nine days of a {hosts}-host branch office, \
         default settings, `flowwarden ingest` then `flowwarden alerts --format jsonl` matched against flowgen's ground truth). \
         Time to detect is event time from the attack's start to the alert's `evidence.detected_at`.\n",
        crate::bench::chrono_like_now()
    )?;
    let mut all_ok = true;
    for (label, seeds) in [("Tuning seeds", tuning), ("Held-out seeds (never used for tuning)", held)] {
        let mut runs = Vec::new();
        for &seed in seeds {
            for name in ["benign", "attacks"] {
                eprintln!("xtask: eval {name} seed {seed}");
                let r = scenario(&b, &out, name, seed, hosts)?;
                all_ok &= r.attacks.iter().all(|a| a.1) && r.false_positives.is_empty();
                runs.push(r);
            }
        }
        table(&mut md, label, &runs)?;
    }
    writeln!(
        md,
        "### Real captures (../shared/captures/exported, default settings but `max_clock_skew = \"36500d\"`: the exporters replayed old packet captures, so flow times lie years before their export headers)\n"
    )?;
    writeln!(md, "| capture | what it is | internal network | flows | alerts |")?;
    writeln!(md, "|---|---|---|---|---|")?;
    let shared = root.join("../shared/captures/exported");
    for (label, file, what, internal) in REAL {
        let pcap = shared.join(file);
        if !pcap.exists() {
            writeln!(md, "| {label} | {what} | - | missing | - |")?;
            continue;
        }
        let dir = out.join("data-real");
        let cfg = out.join("real.toml");
        let nets = match internal {
            Some(n) => format!("[network]\ninternal = [\"{n}\"]\n"),
            None => String::new(),
        };
        let nets = format!("[collector]\nmax_clock_skew = \"36500d\"\n{nets}");
        std::fs::write(&cfg, nets)?;
        ingest(&b, &pcap, &dir, Some(&cfg))?;
        let flows = run_out(
            Command::new(&b.fw)
                .args(["query", "--series", "1h", "--format", "csv", "--data-dir"])
                .arg(&dir),
        )?
        .lines()
        .skip(1)
        .filter_map(|l| l.split(',').nth(1)?.parse::<u64>().ok())
        .sum::<u64>();
        let list = alerts(&b, &dir)?;
        let desc: Vec<String> = list
            .iter()
            .map(|a| {
                format!(
                    "{} {} -> {}{}: {}",
                    a.kind,
                    a.src,
                    a.dst.clone().unwrap_or_else(|| "-".into()),
                    a.port.map(|p| format!(":{p}")).unwrap_or_default(),
                    a.summary.replace('|', "/")
                )
            })
            .collect();
        writeln!(
            md,
            "| {label} | {what} | {} | {flows} | {} |",
            internal.unwrap_or("RFC 1918 (default)"),
            if desc.is_empty() { "none".to_string() } else { desc.join("<br>") }
        )?;
        let _ = std::fs::remove_dir_all(&dir);
    }
    writeln!(md, "\nWhole evaluation: {:.0} s.\n", t0.elapsed().as_secs_f64())?;
    std::fs::write(out.join("results.md"), &md)?;
    if !quick {
        let path = root.join("BENCHMARKS.md");
        let old = std::fs::read_to_string(&path).unwrap_or_default();
        let new = match old.find(SECTION) {
            Some(i) => {
                let rest = &old[i + SECTION.len()..];
                let end = rest.find("\n## ").map(|j| i + SECTION.len() + j + 1).unwrap_or(old.len());
                format!("{}{md}{}", &old[..i], &old[end..])
            }
            None => format!("{}\n{md}", old.trim_end()),
        };
        std::fs::write(&path, new)?;
    }
    println!("{md}");
    if !all_ok {
        bail!("some injected attacks were missed or false positives were raised (see the table)");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_parses() {
        assert_eq!(parse_rfc3339("1970-01-01T00:01:00.500Z"), Some(60_500));
        assert_eq!(parse_rfc3339("2026-11-02T00:00:00.000Z"), Some(1_793_577_600_000));
        assert_eq!(parse_rfc3339("garbage"), None);
    }
}
