//! The store near its budget, as a user meets it: a capture of hundreds of
//! hours (made by the tests' own NetFlow v5 exporter, not flowgen) into a
//! budget far smaller than it, on an ordinary disk, on a small tmpfs, and with a
//! budget larger than the tmpfs; offline (`ingest`) and live (`run` over UDP).
//! Every run must keep disk use within the budget, keep the newest hours
//! (at least 80 % of the newest segments that fit, the newest hour always),
//! report exactly what `query` then finds, and exit 0 (planned eviction is
//! not a loss). Then damaged roll-up and state files, and exporter clocks
//! decades off.

mod common;

use common::v5;
use std::ffi::OsStr;
use std::path::{Path, PathBuf};

const HOUR: u64 = 3_600_000;
/// 2026-09-27T11:00:00Z: an hour boundary before the box's clock.
const START: u64 = 1_790_506_800_000;

fn os(s: &str) -> &OsStr {
    OsStr::new(s)
}

/// The number after `label` in an ingest summary.
fn number(out: &str, label: &str) -> u64 {
    out.lines()
        .find_map(|l| l.strip_prefix(label))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no {label:?} in:\n{out}"))
}

/// Every file under `dir` with its length.
fn files(dir: &Path) -> Vec<(PathBuf, u64)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap_or_else(|e| panic!("{}: {e}", d.display())) {
            let e = e.unwrap_or_else(|e| panic!("{e}"));
            let m = e.metadata().unwrap_or_else(|e| panic!("{e}"));
            if m.is_dir() {
                stack.push(e.path());
            } else {
                out.push((e.path(), m.len()));
            }
        }
    }
    out
}

/// (hour start, flows) from `query --series 1h`.
fn hours_stored(data: &Path) -> Vec<(String, u64)> {
    let (ok, out, err) = common::cli(&[
        os("query"),
        os("--data-dir"),
        data.as_os_str(),
        os("--series"),
        os("1h"),
        os("--format"),
        os("csv"),
    ]);
    assert!(ok, "query failed: {err}");
    out.lines()
        .skip(1)
        .map(|l| {
            let mut c = l.split(',');
            let t = c.next().unwrap_or_default().to_string();
            let n = c.next().and_then(|n| n.parse().ok()).unwrap_or_else(|| panic!("bad row {l:?}"));
            (t, n)
        })
        .collect()
}

fn hour_name(ms: u64) -> String {
    flowwarden::timefmt::rfc3339_ms(ms)
}

/// What every run must show: within `limit` bytes on disk, the newest hours
/// kept whole and contiguous up to the last one written, at least 80 % of the
/// newest segments that fit in `room` (the budget, or what the disk holds),
/// and `kept` equal to what `query` finds.
fn check_kept(data: &Path, limit: u64, room: u64, total_hours: u64, per_hour: u64, kept: u64) {
    check_kept_upto(data, limit, room, START + (total_hours - 1) * HOUR, total_hours, per_hour, kept)
}

fn check_kept_upto(data: &Path, limit: u64, room: u64, last: u64, total_hours: u64, per_hour: u64, kept: u64) {
    let all = files(data);
    let on_disk: u64 = all.iter().map(|f| f.1).sum();
    assert!(on_disk <= limit, "{on_disk} bytes on disk exceed {limit}");
    let hours = hours_stored(data);
    let found: u64 = hours.iter().map(|h| h.1).sum();
    assert_eq!(found, kept, "the summary's kept flows differ from what query finds");
    assert_eq!(
        hours.last().map(|h| h.0.clone()),
        Some(hour_name(last)),
        "the newest hour is missing"
    );
    for (i, (t, n)) in hours.iter().rev().enumerate() {
        assert_eq!(*t, hour_name(last - i as u64 * HOUR), "kept hours are not the newest, contiguous");
        assert_eq!(*n, per_hour, "hour {t} kept partly");
    }
    let segments: Vec<u64> = all
        .iter()
        .filter(|f| f.0.parent().is_some_and(|p| p.ends_with("flows")))
        .map(|f| f.1)
        .collect();
    let other: u64 = on_disk - segments.iter().sum::<u64>();
    let mean = segments.iter().sum::<u64>() / segments.len().max(1) as u64;
    let fit = ((room.saturating_sub(other)) / mean.max(1)).min(total_hours);
    eprintln!(
        "{} of {total_hours} hours kept, {fit} fit ({} segments of {mean} bytes, {other} bytes of state and roll-ups, {on_disk} of {room} bytes)",
        hours.len(),
        segments.len()
    );
    assert!(
        hours.len() as u64 * 10 >= fit * 8,
        "only {} hours kept where {fit} fit",
        hours.len()
    );
}

fn ingest(data: &Path, config: Option<&Path>, pcap: &Path) -> (bool, String, String) {
    let mut args = vec![os("ingest"), os("--data-dir"), data.as_os_str()];
    if let Some(c) = config {
        args.extend([os("--config"), c.as_os_str()]);
    }
    args.push(pcap.as_os_str());
    common::cli(&args)
}

/// A tmpfs of `size` bytes mounted for one test (the tests run as root in CI;
/// `cargo xtask ci` runs them so).
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    fn new(size: u64) -> Tmpfs {
        assert!(
            rustix::process::getuid().is_root(),
            "this test mounts a small tmpfs and needs root (cargo xtask ci runs as root)"
        );
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let st = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .status()
            .unwrap_or_else(|e| panic!("mount: {e}"));
        assert!(st.success(), "cannot mount a tmpfs on {}", dir.path().display());
        Tmpfs { dir }
    }
    fn path(&self) -> &Path {
        self.dir.path()
    }
    fn size(&self) -> u64 {
        let s = rustix::fs::statvfs(self.path()).unwrap_or_else(|e| panic!("{e}"));
        s.f_blocks * s.f_frsize
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(self.dir.path()).status();
    }
}

fn capture(dir: &Path, seed: u64, hours: u64, per_hour: u64) -> PathBuf {
    capture_from(dir, seed, START, hours, per_hour)
}

fn capture_from(dir: &Path, seed: u64, start: u64, hours: u64, per_hour: u64) -> PathBuf {
    let p = dir.join(format!("v5-{seed}-{hours}h.pcap"));
    v5::write_pcap(&p, &v5::hours(seed, start, hours, per_hour));
    p
}

fn budget_config(dir: &Path, budget: &str) -> PathBuf {
    let p = dir.join("budget.toml");
    std::fs::write(&p, format!("[storage]\nbudget = \"{budget}\"\n")).unwrap_or_else(|e| panic!("{e}"));
    p
}

#[test]
fn offline_small_budget_keeps_the_newest_hours_and_says_so() {
    let t = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let (hours, per_hour) = (500, 600);
    let pcap = capture(t.path(), 11, hours, per_hour);
    let cfg = budget_config(t.path(), "16MB");
    let data = t.path().join("data");
    let (ok, out, err) = ingest(&data, Some(&cfg), &pcap);
    assert!(ok, "planned eviction must not fail the ingest:\n{out}\n{err}");
    let stored = number(&out, "flows stored:");
    let evicted = number(&out, "flows evicted (oldest, budget):");
    let kept = number(&out, "flows kept:");
    assert_eq!(stored, hours * per_hour, "{out}");
    assert!(evicted > 0, "a 16 MB budget cannot hold {stored} flows:\n{out}");
    assert_eq!(stored - evicted, kept, "{out}");
    assert_eq!(number(&out, "  store errors:"), 0, "{out}");
    check_kept(&data, 16_000_000, 16_000_000, hours, per_hour, kept);
    // A second ingest of the following weeks into the same directory: what was
    // there counts as before, nothing is lost, the newest are kept.
    let more = capture_from(t.path(), 12, START + hours * HOUR, 100, per_hour);
    let (ok, out2, err) = ingest(&data, Some(&cfg), &more);
    assert!(ok, "{out2}\n{err}");
    assert_eq!(number(&out2, "flows before:"), kept, "{out2}");
    let kept2 = number(&out2, "flows kept:");
    assert_eq!(
        kept + number(&out2, "flows stored:") - number(&out2, "flows evicted (oldest, budget):"),
        kept2,
        "{out2}"
    );
    check_kept_upto(
        &data,
        16_000_000,
        16_000_000,
        START + (hours + 99) * HOUR,
        hours + 100,
        per_hour,
        kept2,
    );
}

#[test]
fn small_tmpfs_with_the_default_budget() {
    let fs = Tmpfs::new(8 << 20);
    let t = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let (hours, per_hour) = (300, 600);
    let pcap = capture(t.path(), 21, hours, per_hour);
    let data = fs.path().join("data");
    let (ok, out, err) = ingest(&data, None, &pcap);
    assert!(ok, "{out}\n{err}");
    let budget = fs.size() * 85 / 100;
    check_kept(&data, budget, budget, hours, per_hour, number(&out, "flows kept:"));
}

#[test]
fn budget_larger_than_the_disk_keeps_within_the_disk() {
    let fs = Tmpfs::new(8 << 20);
    let t = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let (hours, per_hour) = (300, 600);
    let pcap = capture(t.path(), 31, hours, per_hour);
    let cfg = budget_config(t.path(), "64MB");
    let data = fs.path().join("data");
    let (ok, out, err) = ingest(&data, Some(&cfg), &pcap);
    assert!(ok, "{out}\n{err}");
    assert!(out.contains("the data file system holds only"), "{out}");
    // Nothing half-written: every file is a readable database (query reads them all).
    let room = fs.size() - (256 << 10);
    check_kept(&data, fs.size(), room, hours, per_hour, number(&out, "flows kept:"));
    // The directory works on a disk with room, roll-ups included.
    let roomy = t.path().join("copy");
    let st = std::process::Command::new("cp")
        .arg("-a")
        .arg(&data)
        .arg(&roomy)
        .status()
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(st.success());
    let (ok, out2, err) = ingest(&roomy, Some(&cfg), &capture(t.path(), 32, 310, per_hour));
    assert!(ok, "{out2}\n{err}");
    assert_eq!(number(&out2, "  store errors:"), 0);
}

#[test]
fn live_small_budget_keeps_collecting_and_the_newest_flows() {
    let t = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let (hours, per_hour) = (400, 600);
    let cfg = budget_config(t.path(), "12MB");
    let data = t.path().join("data");
    let fw = common::Running::start(&data, &["--config", cfg.to_str().unwrap_or_default()]);
    let sock = std::net::UdpSocket::bind("127.0.0.1:0").unwrap_or_else(|e| panic!("{e}"));
    let datagrams = v5::hours(41, START, hours, per_hour);
    for (i, (_, d)) in datagrams.iter().enumerate() {
        sock.send_to(d, fw.addr()).unwrap_or_else(|e| panic!("{e}"));
        // Paced (about 50 000 flows/s) so a busy two-core machine keeps up.
        if i % 100 == 99 {
            std::thread::sleep(std::time::Duration::from_millis(60));
        }
    }
    // Then 450 flows dated now.
    let now = flowwarden::timefmt::now_ms();
    let mut r = v5::Rng::new(5);
    for k in 0..15u32 {
        let recs: Vec<v5::Rec> = (0..30)
            .map(|_| {
                let first = now - 30_000 - r.below(20_000);
                (
                    [10, 1, 2, r.below(250) as u8],
                    (r.next() as u32).to_be_bytes(),
                    40_000,
                    443,
                    6,
                    5000,
                    10,
                    first,
                    first + 5000,
                )
            })
            .collect();
        sock.send_to(&v5::datagram(k * 30, now, now - 86_400_000, &recs), fw.addr())
            .unwrap_or_else(|e| panic!("{e}"));
    }
    let total = hours * per_hour + 450;
    // The state file shows the collector and store counters moving while `run` runs.
    let counter = |name: &str| -> u64 {
        let (_, out, _) = common::cli(&[os("exporters"), os("--data-dir"), data.as_os_str()]);
        out.lines()
            .find_map(|l| l.strip_prefix(name)?.split_whitespace().next()?.parse().ok())
            .unwrap_or(0)
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while counter("flowwarden_store_flows_stored_total") < total {
        if std::time::Instant::now() > deadline {
            let (_, out, _) = common::cli(&[os("exporters"), os("--data-dir"), data.as_os_str()]);
            panic!(
                "stored {} of {total} flows after 60 s:\n{out}",
                counter("flowwarden_store_flows_stored_total")
            );
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    assert_eq!(counter("flowwarden_collector_datagrams_total"), datagrams.len() as u64 + 15);
    assert!(counter("flowwarden_store_flows_evicted_total{reason=\"budget\"}") > 0);
    // The newest flows are there while it runs.
    let (ok, recent, err) = common::cli(&[
        os("query"),
        os("--data-dir"),
        data.as_os_str(),
        os("--from"),
        os("-10m"),
        os("--format"),
        os("csv"),
    ]);
    assert!(ok, "{err}");
    assert_eq!(recent.lines().count() - 1, 450, "the flows dated now are missing");
    let (status, lines) = fw.stop_output();
    assert!(status.success());
    let stopped = lines
        .iter()
        .find(|l| l.starts_with("flowwarden: stopped:"))
        .unwrap_or_else(|| panic!("no stop summary in {lines:?}"));
    let field = |label: &str| -> u64 {
        stopped
            .split("; ")
            .find_map(|p| p.trim().strip_suffix(label).and_then(|n| n.trim().rsplit(' ').next()?.parse().ok()))
            .unwrap_or_else(|| panic!("no {label:?} in {stopped}"))
    };
    assert_eq!(field("flows stored"), total, "{stopped}");
    let kept = field("flows kept");
    assert_eq!(total - field("flows evicted (oldest, budget)"), kept, "{stopped}");
    assert!(stopped.ends_with("lost: nothing"), "{stopped}");
    let found: u64 = hours_stored(&data).iter().map(|h| h.1).sum();
    assert_eq!(found, kept);
    let on_disk: u64 = files(&data).iter().map(|f| f.1).sum();
    assert!(on_disk <= 12_000_000, "{on_disk} bytes on disk");
}

#[test]
fn damaged_rollup_and_state_files_are_set_aside_and_rebuilt() {
    use flowwarden::store::DataDir;
    use flowwarden::store::reader::Reader;
    use flowwarden::store::schema::dim;
    let t = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let data = t.path().join("data");
    let (ok, out, err) = ingest(&data, None, &capture(t.path(), 51, 30, 200));
    assert!(ok, "{out}\n{err}");
    let raw_bytes = || -> u64 { common::read_all(&data).iter().map(|f| f.bytes).sum() };
    let rolled_bytes = || -> u64 {
        Reader::new(DataDir::new(&data))
            .minutes(dim::TOTAL, 0, u64::MAX)
            .unwrap_or_else(|e| panic!("{e}"))
            .iter()
            .map(|m| m.2)
            .sum()
    };
    assert_eq!(rolled_bytes(), raw_bytes());
    let extra = capture(t.path(), 52, 1, 10);
    // 1. A roll-up file a full disk left as zeros (redb writes its magic number
    // last): it never held data; it is recreated and refilled from the segments.
    std::fs::write(data.join("rollups.redb"), vec![0u8; 73_728]).unwrap_or_else(|e| panic!("{e}"));
    let (ok, out, err) = ingest(&data, None, &extra);
    assert!(ok, "{out}\n{err}");
    assert!(err.contains("rebuilding it from the stored flows"), "{err}");
    assert_eq!(rolled_bytes(), raw_bytes());
    // 2. Damaged pages: moved aside, rebuilt, and the ingest says data was lost.
    let p = data.join("rollups.redb");
    let mut bytes = std::fs::read(&p).unwrap_or_else(|e| panic!("{e}"));
    for b in bytes.iter_mut().skip(4096).take(8192) {
        *b = 0xAB;
    }
    std::fs::write(&p, bytes).unwrap_or_else(|e| panic!("{e}"));
    let (ok, out, err) = ingest(&data, None, &extra);
    assert!(!ok, "a damaged file is a loss:\n{out}");
    assert!(err.contains("damaged store files were moved aside"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    assert_eq!(number(&out, "  damaged files moved aside:"), 1, "{out}");
    let damaged = files(&data.join("damaged"));
    assert!(
        damaged.iter().any(|f| f.0.to_string_lossy().contains("rollups.redb.")),
        "{damaged:?}"
    );
    assert_eq!(rolled_bytes(), raw_bytes());
    // 3. A damaged state file: set aside, recreated, said loudly; the next run is clean.
    let p = data.join("state.redb");
    let mut bytes = std::fs::read(&p).unwrap_or_else(|e| panic!("{e}"));
    for b in bytes.iter_mut().take(4096).skip(9) {
        *b = 0xCD;
    }
    std::fs::write(&p, bytes).unwrap_or_else(|e| panic!("{e}"));
    let (ok, out, err) = ingest(&data, None, &extra);
    assert!(!ok, "{out}");
    assert!(err.contains("state.redb: recreated empty"), "{err}");
    let (ok, out, err) = ingest(&data, None, &extra);
    assert!(ok, "{out}\n{err}");
    let (ok, _, err) = common::cli(&[os("exporters"), os("--data-dir"), data.as_os_str()]);
    assert!(ok, "{err}");
}

#[test]
fn exporter_clocks_decades_off_are_clamped_not_stored_in_1970_or_2105() {
    let t = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let mut r = v5::Rng::new(61);
    // 500 single-flow datagrams with random export times 1970..2105, the
    // capture itself recorded now: 500 segment files before this was fixed.
    let now = flowwarden::timefmt::now_ms();
    let datagrams: Vec<(u64, Vec<u8>)> = (0..500u32)
        .map(|i| {
            let export = r.below(4_260_000_000) * 1000;
            let first = export.saturating_sub(5000);
            let rec = ([10, 0, 0, 1], [192, 0, 2, (i % 250) as u8], 1234, 80, 6, 100, 1, first, export);
            (
                now - 60_000 + i as u64,
                v5::datagram(i, export, export.saturating_sub(3_600_000), &[rec]),
            )
        })
        .collect();
    let pcap = t.path().join("clocks.pcap");
    v5::write_pcap(&pcap, &datagrams);
    let data = t.path().join("data");
    let (ok, out, err) = ingest(&data, None, &pcap);
    assert!(ok, "{out}\n{err}");
    let plausible = datagrams.iter().filter(|(_, d)| {
        let secs = u32::from_be_bytes([d[8], d[9], d[10], d[11]]) as u64 * 1000;
        (946_684_800_000..=now + 86_400_000).contains(&secs)
    });
    let clamped = 500 - plausible.count() as u64;
    assert_eq!(number(&out, "times clamped:"), clamped, "{out}");
    let lo = hour_name(946_684_800_000);
    let hi = hour_name(now + 86_400_000);
    let segments: Vec<String> = files(&data.join("flows"))
        .iter()
        .filter_map(|f| f.0.file_name().map(|n| n.to_string_lossy().into_owned()))
        .collect();
    for name in &segments {
        let iso = format!("{}-{}-{}T{}:{}", &name[0..4], &name[4..6], &name[6..8], &name[9..11], &name[11..13]);
        assert!(
            iso.as_str() >= &lo[..16] && iso.as_str() <= &hi[..16],
            "segment {name} outside 2000..now+1d"
        );
    }
    // Marked and counted per exporter.
    let (ok, list, _) = common::cli(&[
        os("query"),
        os("--data-dir"),
        data.as_os_str(),
        os("--filter"),
        os("clamped"),
        os("--format"),
        os("csv"),
    ]);
    assert!(ok);
    assert_eq!(list.lines().count() as u64 - 1, clamped);
    let (ok, json, _) = common::cli(&[os("exporters"), os("--data-dir"), data.as_os_str(), os("--format"), os("json")]);
    assert!(ok);
    let v: serde_json::Value = serde_json::from_str(&json).unwrap_or_else(|e| panic!("{e}: {json}"));
    assert_eq!(v[0]["time_clamped"], clamped, "{json}");
}
