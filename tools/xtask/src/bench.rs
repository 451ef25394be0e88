//! `cargo xtask bench`: ingest speed, storage density, memory and query latency
//! of flowwarden, and live loss side by side with nfdump's nfcapd in the same
//! run. Writes bench-out/ (captures, data, logs) and BENCHMARKS.md.
//!
//! `--quick` uses smaller inputs (for trying the harness; numbers are not reported).
//! `--before BIN` also runs an older flowwarden binary on the same inputs in the
//! same run (ingest with and without detection, and the queries over its own
//! data), for a before/after table with ratios.

use crate::run;
use anyhow::{Context, Result, bail};
use std::fmt::Write as _;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Monday 2026-11-02 09:00 UTC: business hours in flowgen's office model.
const START: &str = "1793610000";

struct Bins {
    fw: PathBuf,
    fg: PathBuf,
}

/// flowgen's office of `hosts` hosts (intensity 8) from `start` (Unix s) for
/// `dur`, exported as `version`, written to `pcap`.
pub fn office_pcap(fg: &Path, hosts: &str, start: &str, dur: &str, version: &str, pcap: &Path) -> Result<()> {
    run(Command::new(fg)
        .args(["--hosts", hosts, "--intensity", "8", "--start", start, "--duration", dur])
        .args(["--version", version, "--pcap"])
        .arg(pcap))
}

pub fn cmd_out(c: &mut Command) -> Result<String> {
    let o = c.output().with_context(|| format!("cannot run {c:?}"))?;
    if !o.status.success() {
        bail!("{c:?} failed: {}", String::from_utf8_lossy(&o.stderr));
    }
    Ok(String::from_utf8_lossy(&o.stdout).into_owned())
}

fn field(out: &str, prefix: &str) -> Option<f64> {
    out.lines()
        .find_map(|l| l.trim_start().strip_prefix(prefix))
        .and_then(|r| r.split_whitespace().next())
        .and_then(|n| n.parse().ok())
}

/// Run a child to completion, sampling its resident memory; (stdout, peak RSS bytes, wall time).
fn with_rss(mut c: Command) -> Result<(String, u64, Duration)> {
    let t = Instant::now();
    let mut child = c
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot start {c:?}"))?;
    let status_path = format!("/proc/{}/status", child.id());
    let mut peak = 0u64;
    loop {
        if let Ok(s) = std::fs::read_to_string(&status_path)
            && let Some(kb) = s
                .lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.split_whitespace().next())
                .and_then(|v| v.parse::<u64>().ok())
        {
            peak = peak.max(kb * 1024);
        }
        if child.try_wait()?.is_some() {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let o = child.wait_with_output()?;
    if !o.status.success() {
        bail!("{c:?} failed: {}", String::from_utf8_lossy(&o.stderr));
    }
    Ok((String::from_utf8_lossy(&o.stdout).into_owned(), peak, t.elapsed()))
}

fn du(path: &Path) -> u64 {
    let mut total = 0;
    if let Ok(rd) = std::fs::read_dir(path) {
        for e in rd.flatten() {
            let p = e.path();
            total += if p.is_dir() {
                du(&p)
            } else {
                e.metadata().map(|m| m.len()).unwrap_or(0)
            };
        }
    }
    total
}

pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

struct Offline {
    label: String,
    records: f64,
    stored: f64,
    rate: f64,
    rss: u64,
    bytes_per_flow: f64,
    dir_bytes_per_flow: f64,
    dir: PathBuf,
}

fn offline(b: &Bins, label: &str, files: &[PathBuf], out: &Path, reps: usize) -> Result<Offline> {
    offline_with(&b.fw, None, label, files, out, reps)
}

/// `taskset -c 0 FW ingest [--config CONFIG]`, `reps` times; the median rate.
fn offline_with(fw: &Path, config: Option<&Path>, label: &str, files: &[PathBuf], out: &Path, reps: usize) -> Result<Offline> {
    let mut rates = Vec::new();
    let mut last = None;
    for i in 0..reps {
        let dir = out.join(format!("ingest-{label}"));
        let _ = std::fs::remove_dir_all(&dir);
        let mut c = Command::new("taskset");
        c.args(["-c", "0"]).arg(fw).arg("ingest");
        if let Some(cfg) = config {
            c.arg("--config").arg(cfg);
        }
        c.arg("--data-dir").arg(&dir).args(files);
        let (stdout, rss, _) = with_rss(c)?;
        let rate = field(&stdout, "records/s:").context("no records/s in ingest output")?;
        eprintln!(
            "bench: offline {label} run {}: {rate:.0} records/s, peak RSS {} MiB",
            i + 1,
            rss >> 20
        );
        rates.push(rate);
        let stored = field(&stdout, "flows stored:").unwrap_or(0.0);
        let records = field(&stdout, "records:").unwrap_or(0.0);
        let flows_bytes = du(&dir.join("flows"));
        last = Some(Offline {
            label: label.to_string(),
            records,
            stored,
            rate,
            rss,
            bytes_per_flow: flows_bytes as f64 / stored.max(1.0),
            dir_bytes_per_flow: du(&dir) as f64 / stored.max(1.0),
            dir,
        });
    }
    let mut o = last.context("no runs")?;
    o.rate = median(rates);
    Ok(o)
}

fn query_latency(b: &Bins, dir: &Path, args: &[&str]) -> Result<f64> {
    query_latency_with(&b.fw, dir, args)
}

fn query_latency_with(fw: &Path, dir: &Path, args: &[&str]) -> Result<f64> {
    let mut t = Vec::new();
    for _ in 0..3 {
        let s = Instant::now();
        cmd_out(
            Command::new(fw)
                .arg("query")
                .arg("--data-dir")
                .arg(dir)
                .args(args)
                .stdout(Stdio::null()),
        )?;
        t.push(s.elapsed().as_secs_f64() * 1000.0);
    }
    Ok(median(t))
}

/// What `query --explain` says answered.
fn query_plan(b: &Bins, dir: &Path, args: &[&str]) -> Result<String> {
    let o = Command::new(&b.fw)
        .arg("query")
        .arg("--data-dir")
        .arg(dir)
        .args(args)
        .arg("--explain")
        .stdout(Stdio::null())
        .output()?;
    let err = String::from_utf8_lossy(&o.stderr);
    Ok(err
        .lines()
        .find_map(|l| l.strip_prefix("plan: "))
        .map(|p| p.split(" (").next().unwrap_or(p).to_string())
        .unwrap_or_else(|| "?".into()))
}

fn free_port() -> Result<u16> {
    Ok(std::net::UdpSocket::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn stop(child: &mut Child) -> Result<()> {
    run(Command::new("kill").args(["-TERM", &child.id().to_string()]))?;
    let t = Instant::now();
    while child.try_wait()?.is_none() {
        if t.elapsed() > Duration::from_secs(60) {
            let _ = child.kill();
            bail!("collector did not stop within 60 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

struct Live {
    rate: u64,
    sent: u64,
    ours: u64,
    nfcapd: u64,
    send_rate: f64,
}

fn send(b: &Bins, port: u16, rate: u64, records: u64) -> Result<(u64, f64)> {
    let out = cmd_out(Command::new(&b.fg).args([
        "--hosts",
        "20000",
        "--intensity",
        "8",
        "--start",
        START,
        "--version",
        "ipfix",
        "--records",
        &records.to_string(),
        "--rate",
        &rate.to_string(),
        "--udp",
        &format!("127.0.0.1:{port}"),
    ]))?;
    // "sent D datagrams, R records in S s (X records/s, E send errors)"
    let words: Vec<&str> = out.split_whitespace().collect();
    let sent = words.get(3).and_then(|w| w.parse().ok()).context("flowgen output")?;
    let achieved = out
        .split('(')
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0.0);
    Ok((sent, achieved))
}

fn live_ours(b: &Bins, out: &Path, rate: u64, records: u64) -> Result<(u64, u64, f64)> {
    let dir = out.join(format!("live-fw-{rate}"));
    let _ = std::fs::remove_dir_all(&dir);
    let port = free_port()?;
    let mut child = Command::new(&b.fw)
        .args([
            "run",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--web-listen",
            "127.0.0.1:0",
            "--data-dir",
        ])
        .arg(&dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let stdout = child.stdout.take().context("stdout")?;
    let mut lines = BufReader::new(stdout).lines();
    loop {
        match lines.next() {
            Some(Ok(l)) if l.contains("flowwarden: ready") => break,
            Some(_) => {}
            None => bail!("flowwarden run exited before it was ready"),
        }
    }
    let (sent, achieved) = send(b, port, rate, records)?;
    std::thread::sleep(Duration::from_secs(2));
    stop(&mut child)?;
    let stored: u64 = cmd_out(
        Command::new(&b.fw)
            .args(["query", "--top", "proto", "--format", "jsonl", "--data-dir"])
            .arg(&dir),
    )?
    .lines()
    .filter_map(|l| l.split("\"flows\":").nth(1))
    .filter_map(|r| r.split(',').next()?.parse::<u64>().ok())
    .sum();
    Ok((sent, stored, achieved))
}

fn live_nfcapd(b: &Bins, out: &Path, rate: u64, records: u64) -> Result<u64> {
    let dir = out.join(format!("live-nfcapd-{rate}"));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let port = free_port()?;
    let mut child = Command::new("nfcapd")
        .args(["-w"])
        .arg(&dir)
        .args(["-p", &port.to_string(), "-b", "127.0.0.1", "-B", "4194304", "-t", "3600"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("cannot start nfcapd")?;
    std::thread::sleep(Duration::from_millis(500));
    send(b, port, rate, records)?;
    std::thread::sleep(Duration::from_secs(2));
    stop(&mut child)?;
    let info = cmd_out(Command::new("nfdump").arg("-R").arg(&dir).args(["-I", "-N"]))?;
    let flows = info
        .lines()
        .find_map(|l| l.strip_prefix("Flows:"))
        .and_then(|n| n.trim().parse().ok())
        .context("no Flows: in nfdump -I")?;
    Ok(flows)
}

pub fn bench(root: &Path, args: &[String]) -> Result<()> {
    let quick = args.iter().any(|a| a == "--quick");
    run(Command::new("cargo")
        .current_dir(root)
        .args(["build", "--release", "-p", "flowwarden", "-p", "flowgen"]))?;
    let b = Bins {
        fw: root.join("target/release/flowwarden"),
        fg: root.join("target/release/flowgen"),
    };
    let out = root.join("bench-out");
    std::fs::create_dir_all(&out)?;
    // Give nfcapd's SO_RCVBUF the same 4 MiB flowwarden takes with SO_RCVBUFFORCE.
    let rmem: u64 = std::fs::read_to_string("/proc/sys/net/core/rmem_max")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0);
    if rmem < 4_194_304 {
        run(Command::new("sysctl").args(["-w", "net.core.rmem_max=4194304"]))?;
    }

    // Synthetic captures.
    let (hosts, dur) = if quick { ("300", "30m") } else { ("3000", "2h") };
    let mut syn = Vec::new();
    for v in ["ipfix", "v9", "v5"] {
        let p = out.join(format!("synthetic-{v}.pcap"));
        if !p.exists() {
            office_pcap(&b.fg, hosts, START, dur, v, &p)?;
        }
        syn.push((v, p));
    }
    let exported: Vec<PathBuf> = {
        let mut v: Vec<PathBuf> = std::fs::read_dir(root.join("../shared/captures/exported"))?
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|e| e == "pcap"))
            .collect();
        v.sort();
        v
    };
    let reps = if quick { 1 } else { 3 };
    let mut offl = Vec::new();
    for (v, p) in &syn {
        offl.push(offline(&b, &format!("synthetic-{v}"), std::slice::from_ref(p), &out, reps)?);
    }
    offl.push(offline(&b, "exported", &exported, &out, reps)?);
    let big = &offl[0];
    // Each aggregate twice in the same run: as `query` answers it (from the
    // roll-ups where exact) and forced through the raw flows (a filter the
    // roll-ups are not keyed by): before and after the roll-ups answered.
    let mut queries = Vec::new();
    for args in [
        &["--top", "src", "--by", "bytes", "--limit", "10"][..],
        &["--top", "dst", "--by", "flows", "--limit", "10"][..],
        &["--top", "conversation", "--by", "flows", "--limit", "10"][..],
        &["--top", "proto", "--by", "bytes"][..],
        &["--series", "1h"][..],
        &["--series", "1m"][..],
    ] {
        let answered = query_latency(&b, &big.dir, args)?;
        let mut raw_args = args.to_vec();
        raw_args.extend(["--filter", "any and any"]);
        let raw = query_latency(&b, &big.dir, &raw_args)?;
        let plan = query_plan(&b, &big.dir, args)?;
        queries.push((args.join(" "), answered, raw, plan));
    }
    let q_filter = query_latency(&b, &big.dir, &["--filter", "dst port 22 and bytes > 1M", "--format", "jsonl"])?;
    let before = match args.iter().position(|a| a == "--before") {
        Some(i) => {
            let old = PathBuf::from(args.get(i + 1).context("--before needs a binary")?);
            Some(before_after(&b, &old, &syn, &offl, &queries, q_filter, &out, reps)?)
        }
        None => None,
    };

    // Live, side by side.
    let rates: &[u64] = if quick {
        &[100_000]
    } else {
        &[100_000, 200_000, 500_000, 1_000_000]
    };
    let mut live = Vec::new();
    for &rate in rates {
        let records = if quick { rate } else { rate * 5 };
        let (sent, ours, achieved) = live_ours(&b, &out, rate, records)?;
        let nf = live_nfcapd(&b, &out, rate, records)?;
        eprintln!("bench: live {rate}/s: sent {sent}, flowwarden {ours}, nfcapd {nf} (sender achieved {achieved:.0}/s)");
        live.push(Live {
            rate,
            sent,
            ours,
            nfcapd: nf,
            send_rate: achieved,
        });
    }

    // Report.
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|m| m.trim_start_matches([' ', '\t', ':']).to_string())
        })
        .unwrap_or_default();
    let nproc = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0);
    let mut md = String::new();
    writeln!(md, "# Benchmarks\n")?;
    writeln!(
        md,
        "Reproduce with `cargo xtask bench` (writes this file; inputs, data and logs in bench-out/)."
    )?;
    writeln!(
        md,
        "Machine: {nproc} cores ({cpu}), {} UTC.{}\n",
        chrono_like_now(),
        if quick { " QUICK RUN: not representative." } else { "" }
    )?;
    writeln!(
        md,
        "## Offline ingest (decode → store), one core (`taskset -c 0 flowwarden ingest`)\n"
    )?;
    writeln!(
        md,
        "| input | records | flows stored | records/s (median of {reps}) | peak RSS | flow segment bytes per flow | all data-dir bytes per flow |"
    )?;
    writeln!(md, "|---|---:|---:|---:|---:|---:|---:|")?;
    for o in &offl {
        writeln!(
            md,
            "| {} | {:.0} | {:.0} | {:.0} | {} MiB | {:.1} | {:.1} |",
            o.label,
            o.records,
            o.stored,
            o.rate,
            o.rss >> 20,
            o.bytes_per_flow,
            o.dir_bytes_per_flow
        )?;
    }
    writeln!(
        md,
        "\nSynthetic: `flowgen --hosts {hosts} --intensity 8 --start {START} --duration {dur} --version V --pcap` (office in business hours)."
    )?;
    writeln!(
        md,
        "Exported: every pcap in ../shared/captures/exported in one ingest (small: startup dominates).\n"
    )?;
    writeln!(
        md,
        "## Query latency over all stored data (synthetic-ipfix, {:.0} flows; median of 3, whole process)\n",
        big.stored
    )?;
    writeln!(
        md,
        "| query | ms as answered | ms over the raw flows | answered from |\n|---|---:|---:|---|"
    )?;
    for (q, answered, raw, plan) in &queries {
        writeln!(md, "| `{q}` | {answered:.0} | {raw:.0} | {plan} |")?;
    }
    writeln!(
        md,
        "| `--filter 'dst port 22 and bytes > 1M' --format jsonl` | {q_filter:.0} | {q_filter:.0} | raw flows (a listing) |\n"
    )?;
    writeln!(
        md,
        "\"Over the raw flows\" is the same query with `--filter 'any and any'`, which the roll-ups are not keyed by: what every aggregate cost before the roll-ups answered. Where the plan says raw flows, `query --explain` names why (an inexact or too short hourly list).\n"
    )?;
    writeln!(
        md,
        "## Live collection vs nfcapd (same run, same sender, same 4 MiB socket buffer)\n"
    )?;
    writeln!(
        md,
        "flowgen sends IPFIX to 127.0.0.1 at a fixed record rate for 5 s; each collector is stopped (SIGTERM) 2 s after the last datagram and its stored flows counted. nfcapd: `nfcapd -w DIR -p PORT -b 127.0.0.1 -B 4194304 -t 3600`; flowwarden: `flowwarden run --listen 127.0.0.1:PORT` (default 4 MiB buffer).\n"
    )?;
    writeln!(
        md,
        "| target rate | sender achieved | records sent | flowwarden stored | flowwarden loss | nfcapd stored | nfcapd loss | ratio stored (fw/nfcapd) |"
    )?;
    writeln!(md, "|---:|---:|---:|---:|---:|---:|---:|---:|")?;
    for l in &live {
        let loss = |n: u64| 100.0 * (1.0 - n as f64 / l.sent.max(1) as f64);
        writeln!(
            md,
            "| {} | {:.0} | {} | {} | {:.2} % | {} | {:.2} % | {:.3} |",
            l.rate,
            l.send_rate,
            l.sent,
            l.ours,
            loss(l.ours),
            l.nfcapd,
            loss(l.nfcapd),
            l.ours as f64 / l.nfcapd.max(1) as f64
        )?;
    }
    if let Some(section) = &before {
        md.push_str(section);
    }
    md.push('\n');
    md.push_str(&crate::pagebench::measure(&b.fw, &b.fg, &out, hosts)?);
    std::fs::write(out.join("results.md"), &md)?;
    if !quick {
        // The firmware-image section comes from `cargo xtask qemu-test`, not from this
        // run: keep it as it is.
        let old = std::fs::read_to_string(root.join("BENCHMARKS.md")).unwrap_or_default();
        let kept = old.find(FIRMWARE_SECTION).map(|i| &old[i..]).unwrap_or("");
        std::fs::write(root.join("BENCHMARKS.md"), format!("{md}\n{kept}"))?;
    }
    println!("{md}");
    Ok(())
}

/// The same ingest and queries with an older binary, in this run: a markdown section.
#[allow(clippy::too_many_arguments)]
fn before_after(
    b: &Bins,
    old: &Path,
    syn: &[(&str, PathBuf)],
    offl: &[Offline],
    queries: &[(String, f64, f64, String)],
    q_filter: f64,
    out: &Path,
    reps: usize,
) -> Result<String> {
    let version = cmd_out(Command::new(old).arg("version"))?;
    let nodetect = out.join("no-detect.toml");
    std::fs::write(&nodetect, "[detect]\nenabled = false\n")?;
    let mut md = String::new();
    writeln!(md, "\n## Before and after (same run): `{}` against this tree\n", old.display())?;
    writeln!(md, "Before: {}.\n", version.trim())?;
    writeln!(
        md,
        "| input | detection | before records/s | after records/s | after/before | before peak RSS | after peak RSS |\n|---|---|---:|---:|---:|---:|---:|"
    )?;
    let mut old_big = None;
    for (i, (v, p)) in syn.iter().enumerate() {
        let label = format!("synthetic-{v}");
        let files = std::slice::from_ref(p);
        let ob = offline_with(old, None, &format!("before-{label}"), files, out, reps)?;
        let on = offline_with(old, Some(&nodetect), &format!("before-nodetect-{label}"), files, out, reps)?;
        let nn = offline_with(&b.fw, Some(&nodetect), &format!("nodetect-{label}"), files, out, reps)?;
        let nb = &offl[i];
        for (det, o, n) in [("on", &ob, nb), ("off", &on, &nn)] {
            writeln!(
                md,
                "| {label} | {det} | {:.0} | {:.0} | {:.2} | {} MiB | {} MiB |",
                o.rate,
                n.rate,
                n.rate / o.rate.max(1.0),
                o.rss >> 20,
                n.rss >> 20
            )?;
        }
        if i == 0 {
            old_big = Some(ob);
        }
    }
    let old_big = old_big.context("no synthetic input")?;
    writeln!(
        md,
        "\n| query (synthetic-ipfix, all data) | before ms | after ms | after/before |\n|---|---:|---:|---:|"
    )?;
    for (q, answered, _, _) in queries {
        let args: Vec<&str> = q.split(' ').collect();
        let t = query_latency_with(old, &old_big.dir, &args)?;
        writeln!(md, "| `{q}` | {t:.0} | {answered:.0} | {:.3} |", answered / t.max(0.001))?;
    }
    let t = query_latency_with(old, &old_big.dir, &["--filter", "dst port 22 and bytes > 1M", "--format", "jsonl"])?;
    writeln!(
        md,
        "| `--filter 'dst port 22 and bytes > 1M' --format jsonl` | {t:.0} | {q_filter:.0} | {:.3} |",
        q_filter / t.max(0.001)
    )?;
    writeln!(
        md,
        "\nBuilt with `git worktree add ../before REV && CARGO_TARGET_DIR=target cargo build --release -p flowwarden --manifest-path ../before/Cargo.toml` (copy the binary out), then `cargo xtask bench --before BIN`. Same inputs, same one core, same number of runs; detection \"off\" is `[detect] enabled = false`.\n"
    )?;
    Ok(md)
}

/// Heading of the BENCHMARKS.md section written by hand from qemu-test reports.
const FIRMWARE_SECTION: &str = "## Firmware images under QEMU";

/// Current UTC time as YYYY-MM-DD HH:MM (no date crate in xtask).
pub fn chrono_like_now() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let days = secs / 86_400;
    let (mut y, mut d) = (1970u64, days);
    loop {
        let len = if y.is_multiple_of(4) && (!y.is_multiple_of(100) || y.is_multiple_of(400)) {
            366
        } else {
            365
        };
        if d < len {
            break;
        }
        d -= len;
        y += 1;
    }
    let leap = y.is_multiple_of(4) && (!y.is_multiple_of(100) || y.is_multiple_of(400));
    let months = [31, if leap { 29 } else { 28 }, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31];
    let mut m = 0;
    while d >= months[m] {
        d -= months[m];
        m += 1;
    }
    format!(
        "{y}-{:02}-{:02} {:02}:{:02}",
        m + 1,
        d + 1,
        (secs % 86_400) / 3600,
        (secs % 3600) / 60
    )
}
