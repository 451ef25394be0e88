//! `cargo xtask bench-page` (and a section of `cargo xtask bench`): the status
//! page's weight and time per page over a large store. flowgen makes the
//! 3000-host office for two office hours of the last day (inside the pages'
//! 24-hour ranges), `ingest` stores it, `run` serves the page on loopback, and curl logs
//! in and fetches each page and JSON twin five times (median time to the last
//! byte over TLS, bytes of the body).

use anyhow::{Context, Result, ensure};
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

/// Pages and twins measured (path, what).
const PAGES: &[&str] = &[
    "/",
    "/api/v1/status",
    "/exporters",
    "/traffic?range=1h",
    "/traffic?range=24h",
    "/api/v1/traffic?range=24h",
    "/alerts",
    "/flows?from=-24h",
    "/flows?from=-24h&filter=dst%20port%2022%20and%20bytes%20%3E%201M",
    "/storage",
    "/forwarding",
    "/system",
    "/metrics",
];

/// The markdown section for BENCHMARKS.md.
pub fn measure(fw: &Path, fg: &Path, out: &Path, hosts: &str) -> Result<String> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    // Office hours (09:00-11:00 UTC, as `bench`'s capture) of the most recent day
    // that lie wholly in the past: inside the pages' 24-hour ranges.
    let day = 86_400;
    let mut start = now / day * day + 9 * 3600;
    while start + 2 * 3600 > now {
        start -= day;
    }
    let pcap = out.join("page-office.pcap");
    crate::bench::office_pcap(fg, hosts, &start.to_string(), "2h", "ipfix", &pcap)?;
    let dir = out.join("page-store");
    let _ = std::fs::remove_dir_all(&dir);
    let ingest = Command::new(fw).arg("ingest").arg("--data-dir").arg(&dir).arg(&pcap).output()?;
    ensure!(ingest.status.success(), "ingest: {}", String::from_utf8_lossy(&ingest.stderr));
    let summary = String::from_utf8_lossy(&ingest.stdout).to_string();
    let kept = summary
        .lines()
        .find_map(|l| l.trim().strip_prefix("flows kept:"))
        .and_then(|r| r.split_whitespace().next())
        .unwrap_or("?")
        .to_string();
    let password = "bench page password";
    let mut set = Command::new(fw)
        .args(["user", "set", "--data-dir"])
        .arg(&dir)
        .args(["bench", "--role", "admin"])
        .stdin(Stdio::piped())
        .spawn()?;
    if let Some(mut i) = set.stdin.take() {
        writeln!(i, "{password}")?;
    }
    ensure!(set.wait()?.success(), "user set failed");
    let mut child = Command::new(fw)
        .args(["run", "--listen", "127.0.0.1:0", "--web-listen", "127.0.0.1:0", "--data-dir"])
        .arg(&dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()?;
    let stdout = child.stdout.take().context("no stdout")?;
    let mut lines = BufReader::new(stdout).lines();
    let mut base = None;
    for line in lines.by_ref() {
        let line = line?;
        if let Some(rest) = line.strip_prefix("flowwarden: web https://") {
            base = rest.split('/').next().map(|a| format!("https://{a}"));
        }
        if line.starts_with("flowwarden: ready") {
            break;
        }
    }
    // Keep reading run's stdout so it never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines {});
    let result = (|| -> Result<String> {
        let base = base.context("run printed no web line")?;
        let jar = out.join("page-cookies.txt");
        let _ = std::fs::remove_file(&jar);
        let curl = || {
            let mut c = Command::new("curl");
            c.args(["-sS", "-k", "--max-time", "120", "-c"]).arg(&jar).arg("-b").arg(&jar);
            c
        };
        let login = crate::bench::cmd_out(curl().arg(format!("{base}/login")))?;
        let csrf = login
            .split("name=\"csrf\" value=\"")
            .nth(1)
            .and_then(|r| r.split('"').next())
            .context("no csrf on /login")?
            .to_string();
        let code = crate::bench::cmd_out(
            curl()
                .args(["-o", "/dev/null", "-w", "%{http_code}", "-H", &format!("Origin: {base}")])
                .args(["--data-urlencode", &format!("csrf={csrf}"), "--data-urlencode", "user=bench"])
                .args(["--data-urlencode", &format!("password={password}")])
                .arg(format!("{base}/login")),
        )?;
        ensure!(code == "303", "login answered {code}");
        // Let the first state commit publish the store's numbers.
        std::thread::sleep(Duration::from_secs(2));
        let mut md = format!(
            "## Status page over {kept} stored flows ({hosts}-host office, 09:00-11:00 UTC of the last day; median of 5, curl over TLS on loopback)\n\n\
             Reproduce: `cargo xtask bench-page` (also part of `cargo xtask bench`).\n\n\
             | page | body bytes | ms to last byte |\n|---|---:|---:|\n"
        );
        for p in PAGES {
            let mut times = Vec::new();
            let mut size = 0.0;
            for _ in 0..5 {
                let w = crate::bench::cmd_out(
                    curl()
                        .args(["-o", "/dev/null", "-w", "%{http_code} %{size_download} %{time_total}"])
                        .arg(format!("{base}{p}")),
                )?;
                let f: Vec<&str> = w.split_whitespace().collect();
                ensure!(f.first() == Some(&"200"), "{p} answered {w}");
                size = f.get(1).and_then(|s| s.parse().ok()).unwrap_or(0.0);
                times.push(f.get(2).and_then(|s| s.parse::<f64>().ok()).unwrap_or(0.0) * 1000.0);
            }
            let ms = crate::bench::median(times);
            eprintln!("bench-page: {p}: {size} bytes, {ms:.1} ms");
            md.push_str(&format!("| `{p}` | {size:.0} | {ms:.1} |\n"));
        }
        Ok(md)
    })();
    let _ = Command::new("kill").arg(child.id().to_string()).status();
    let _ = child.wait();
    result
}
