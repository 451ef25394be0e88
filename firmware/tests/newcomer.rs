//! What a new user tripped over (issue 11's list), each pinned by a test
//! against the real binary: filters that overflowed or crawled, output into
//! closed pipes, colour in logs, impossible dates, messages that leaked
//! internals, configs that silently lost data, confusing data-directory
//! errors, detector state that appeared only at shutdown, numbers nobody could
//! read, and a UDP forward-test that said "ok" to a closed port.

mod common;

use common::v5;
use std::ffi::OsStr;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

fn os(s: &str) -> &OsStr {
    OsStr::new(s)
}

/// A data directory holding `hours` hours of v5 flows (30 an hour).
fn stored(hours: u64) -> (tempfile::TempDir, PathBuf) {
    let t = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let pcap = t.path().join("v5.pcap");
    v5::write_pcap(&pcap, &v5::hours(3, 1_790_506_800_000, hours, 30));
    let data = t.path().join("data");
    let (ok, out, err) = common::cli(&[os("ingest"), os("--data-dir"), data.as_os_str(), pcap.as_os_str()]);
    assert!(ok, "{out}\n{err}");
    (t, data)
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap_or_else(|e| panic!("{e}"));
    p
}

#[test]
fn filters_are_bounded_and_linear() {
    let (_t, data) = stored(4);
    let deep = format!("{}tcp{}", "(".repeat(20_000), ")".repeat(20_000));
    let (ok, _, err) = common::cli(&[os("query"), os("--data-dir"), data.as_os_str(), os("--filter"), os(&deep)]);
    assert!(!ok);
    assert!(err.contains("nests deeper than 64 levels"), "{err}");
    assert!(!err.contains("overflow") && !err.contains("panicked"), "{err}");
    // 6000 alternatives and 6000 negations: answered, and correctly.
    let csv = |filter: &str| -> usize {
        let (ok, out, err) = common::cli(&[
            os("query"),
            os("--data-dir"),
            data.as_os_str(),
            os("--format"),
            os("csv"),
            os("--filter"),
            os(filter),
        ]);
        assert!(ok, "{err}");
        out.lines().count() - 1
    };
    let ors: Vec<String> = (0..6000u32).map(|i| format!("dst port {}", i + 1)).collect();
    let (_, all, _) = common::cli(&[os("query"), os("--data-dir"), data.as_os_str(), os("--format"), os("csv")]);
    let expect = all
        .lines()
        .skip(1)
        .filter(|l| {
            l.split(',')
                .nth(5)
                .and_then(|p| p.parse::<u32>().ok())
                .is_some_and(|p| (1..=6000).contains(&p))
        })
        .count();
    assert_eq!(csv(&ors.join(" or ")), expect);
    let ands: Vec<String> = (0..6000u32).map(|i| format!("not dst port {}", i + 1)).collect();
    assert_eq!(csv(&ands.join(" and ")), all.lines().count() - 1 - expect);
}

/// Run with stdout a pipe whose reader is already gone.
fn into_closed_pipe(args: &[&OsStr]) -> (std::process::ExitStatus, String) {
    let mut child = Command::new(common::bin())
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{e}"));
    drop(child.stdout.take());
    let mut err = String::new();
    if let Some(mut e) = child.stderr.take() {
        let _ = e.read_to_string(&mut err);
    }
    (child.wait().unwrap_or_else(|e| panic!("{e}")), err)
}

#[test]
fn closed_pipes_end_quietly() {
    let (_t, data) = stored(3);
    let d = data.as_os_str();
    for args in [
        vec![os("detectors"), os("--data-dir"), d, os("--format"), os("json")],
        vec![os("exporters"), os("--data-dir"), d],
        vec![os("query"), os("--data-dir"), d],
        vec![os("query"), os("--data-dir"), d, os("--top"), os("src")],
        vec![os("alerts"), os("--data-dir"), d],
        vec![os("version")],
    ] {
        let (st, err) = into_closed_pipe(&args);
        assert!(st.success(), "{args:?}: {st}: {err}");
        assert!(
            !err.contains("panicked") && !err.contains("Broken pipe") && !err.contains("error"),
            "{args:?}: {err}"
        );
    }
}

#[test]
fn logs_are_plain_text_off_a_terminal() {
    let t = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let bad = write(t.path(), "empty.pcap", "");
    // stderr is a pipe here: no ANSI colour, with or without NO_COLOR.
    for no_color in [None, Some("1")] {
        let mut c = Command::new(common::bin());
        c.args([os("ingest"), os("--data-dir")]).arg(t.path().join("d")).arg(&bad);
        c.env("RUST_LOG", "debug");
        if let Some(v) = no_color {
            c.env("NO_COLOR", v);
        }
        let out = c.output().unwrap_or_else(|e| panic!("{e}"));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("DEBUG") || err.contains("INFO") || err.contains("error"), "{err}");
        assert!(!err.contains('\x1b'), "colour codes in a log: {err:?}");
    }
}

#[test]
fn impossible_dates_are_refused_and_relative_ones_accepted() {
    let (_t, data) = stored(2);
    for bad in ["2026-11-31", "2026-02-30", "2026-13-45", "2026-04-31 10:00"] {
        let (ok, _, err) = common::cli(&[os("query"), os("--data-dir"), data.as_os_str(), os("--from"), os(bad)]);
        assert!(!ok, "{bad} accepted");
        assert!(err.contains("invalid time"), "{bad}: {err}");
    }
    let (ok, _, err) = common::cli(&[os("query"), os("--data-dir"), data.as_os_str(), os("--from"), os("-2h")]);
    assert!(ok, "{err}");
    let (ok, _, err) = common::cli(&[os("alerts"), os("--data-dir"), data.as_os_str(), os("--since"), os("-2h")]);
    assert!(ok, "{err}");
}

#[test]
fn messages_say_what_where_and_what_was_expected() {
    let t = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let check = |text: &str| -> (bool, String) {
        let p = write(t.path(), "c.toml", text);
        let (ok, out, err) = common::cli(&[os("check-config"), p.as_os_str()]);
        (ok, out + &err)
    };
    let (ok, out) = check("[storage]\nbudget = \"24MB\"\n");
    assert!(ok, "{out}");
    assert!(out.contains("storage budget 22.9 MiB (24000000 bytes)"), "{out}");
    assert!(!out.contains("Bytes(") && !out.contains("Percent("), "{out}");
    let (_, out) = check("");
    assert!(out.contains("85 % of the data file system"), "{out}");
    let forward = "[[forward]]\nname = \"a\"\naddress = \"127.0.0.1:514\"\ntransport = \"udp\"\nformat = \"json\"\n";
    let (ok, out) = check(&format!("{forward}spool_max_bytes = -1\n"));
    assert!(
        !ok && out.contains("c.toml:6:") && out.contains("-1 is negative; expected a size"),
        "{out}"
    );
    assert!(!out.contains("untagged"), "{out}");
    let (ok, out) = check(&format!("{forward}spool_max_bytes = 12345678901234567890123\n"));
    assert!(!ok && out.contains("is too large") && !out.contains("i128"), "{out}");
    let (ok, out) = check("[storage]\ncompression_level = 99\n");
    assert!(!ok && out.contains("99 is not a zstd level"), "{out}");
    // Captures: words, not parser internals.
    let data = t.path().join("d");
    for (name, bytes, expect) in [
        ("empty.pcap", Vec::new(), "the file is empty"),
        (
            "bad.pcapng",
            b"\x0a\x0d\x0d\x0a\x1c\x00\x00\x00\x4d\x3c\x2b\x1a\xff\xff\xff\x7f".repeat(40),
            "damaged after 0 frames",
        ),
    ] {
        let p = t.path().join(name);
        std::fs::write(&p, bytes).unwrap_or_else(|e| panic!("{e}"));
        let (ok, _, err) = common::cli(&[os("ingest"), os("--data-dir"), data.as_os_str(), p.as_os_str()]);
        assert!(!ok);
        assert!(err.contains(expect), "{name}: {err}");
        assert!(
            !err.contains("Eof") && !err.contains("NomError") && !err.contains('['),
            "{name}: {err}"
        );
    }
    // Exporter errors without raw bytes (a Cisco ASA v9 stream with a damaged flowset).
    let malformed = common::captures().join("conformance/logstash");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&malformed)
        .unwrap_or_else(|e| panic!("{e}"))
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    files.sort();
    let mut args = vec![os("ingest"), os("--data-dir"), data.as_os_str()];
    args.extend(files.iter().map(|f| f.as_os_str()));
    let _ = common::cli(&args);
    let (ok, json, _) = common::cli(&[os("exporters"), os("--data-dir"), data.as_os_str(), os("--format"), os("json")]);
    assert!(ok);
    let v: serde_json::Value = serde_json::from_str(&json).unwrap_or_else(|e| panic!("{e}"));
    let errors: Vec<&str> = v
        .as_array()
        .map(|a| a.iter().filter_map(|e| e["last_error"].as_str()).collect())
        .unwrap_or_default();
    assert!(!errors.is_empty(), "the logstash corpus has malformed datagrams");
    for e in errors {
        assert!(!e.contains("input: ["), "raw bytes in {e}");
    }
}

#[test]
fn configs_that_would_lose_data_are_refused() {
    let t = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    for (text, key) in [
        ("[storage]\nmax_age = \"0s\"\n", "storage.max_age"),
        ("[detect.beacon]\nwindow = \"0s\"\n", "detect.beacon.window"),
        ("[detect.scan]\nwindow = \"0s\"\n", "detect.scan.window"),
        (
            "[[forward]]\nname = \"a\"\naddress = \"siem.example\"\ntransport = \"tcp\"\n",
            "forward[0].address",
        ),
    ] {
        let p = write(t.path(), "c.toml", text);
        let (ok, _, err) = common::cli(&[os("check-config"), p.as_os_str()]);
        assert!(!ok, "{text} accepted");
        assert!(err.contains(key), "{text}: {err}");
    }
    let p = write(t.path(), "c.toml", "[storage]\nbudget = \"24MB\"\nmax_age = \"6h\"\n");
    let (ok, out, _) = common::cli(&[os("check-config"), p.as_os_str()]);
    assert!(ok);
    assert!(out.contains("warning: storage.max_age"), "{out}");
    assert!(out.contains("warning: storage.budget"), "{out}");
}

#[test]
fn data_directory_errors_name_the_problem() {
    let t = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let file = write(t.path(), "afile", "x");
    let (ok, _, err) = common::cli(&[os("run"), os("--data-dir"), file.as_os_str(), os("--listen"), os("127.0.0.1:0")]);
    assert!(!ok);
    assert!(err.contains("is a file, not a directory"), "{err}");
    assert!(!err.contains("os error"), "{err}");
    // A second appliance on the same directory is told who holds it.
    let data = t.path().join("data");
    let fw = common::Running::start(&data, &[]);
    let (ok, _, err) = common::cli(&[os("run"), os("--data-dir"), data.as_os_str(), os("--listen"), os("127.0.0.1:0")]);
    assert!(!ok);
    assert!(
        err.contains("is in use by another flowwarden") && err.contains(&format!("pid {}", fw.child.id())),
        "{err}"
    );
    let pcap = t.path().join("v5.pcap");
    v5::write_pcap(&pcap, &v5::hours(4, 1_790_506_800_000, 1, 30));
    let (ok, _, err) = common::cli(&[os("ingest"), os("--data-dir"), data.as_os_str(), pcap.as_os_str()]);
    assert!(!ok && err.contains("is in use by another flowwarden"), "{err}");
    let (status, _) = fw.stop();
    assert!(status.success());
    let (ok, out, err) = common::cli(&[os("ingest"), os("--data-dir"), data.as_os_str(), pcap.as_os_str()]);
    assert!(ok, "{err}");
    assert!(out.contains("flows kept:         30"), "{out}");
    // --limit 0 lists nothing.
    let (ok, out, _) = common::cli(&[
        os("query"),
        os("--data-dir"),
        data.as_os_str(),
        os("--limit"),
        os("0"),
        os("--format"),
        os("csv"),
    ]);
    assert!(ok);
    assert_eq!(out.lines().count(), 1, "{out}");
    // A truncated capture: what was read is counted, frames and packets alike.
    let whole = std::fs::read(&pcap).unwrap_or_default();
    let cut = write(t.path(), "cut.pcap", "");
    std::fs::write(&cut, &whole[..whole.len() - 100]).unwrap_or_else(|e| panic!("{e}"));
    let (ok, out, err) = common::cli(&[os("ingest"), os("--data-dir"), t.path().join("d2").as_os_str(), cut.as_os_str()]);
    assert!(!ok, "{out}");
    assert!(err.contains("damaged after 0 frames"), "{err}");
    let frames: u64 = out
        .lines()
        .find_map(|l| l.strip_prefix("frames:")?.split_whitespace().next()?.parse().ok())
        .unwrap_or(u64::MAX);
    let packets: u64 = out
        .lines()
        .find_map(|l| l.strip_prefix("packets:")?.split_whitespace().next()?.parse().ok())
        .unwrap_or(u64::MAX);
    assert_eq!(frames, packets, "{out}");
}

#[test]
fn detector_state_is_published_while_running() {
    let t = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let data = t.path().join("data");
    let fw = common::Running::start(&data, &[]);
    let sock = std::net::UdpSocket::bind("127.0.0.1:0").unwrap_or_else(|e| panic!("{e}"));
    let now = flowwarden::timefmt::now_ms();
    for (_, d) in v5::hours(5, now - now % 3_600_000 - 3_600_000, 1, 60) {
        sock.send_to(&d, fw.addr()).unwrap_or_else(|e| panic!("{e}"));
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let (ok, out, _) = common::cli(&[os("detectors"), os("--data-dir"), data.as_os_str(), os("--format"), os("json")]);
        assert!(ok);
        let v: serde_json::Value = serde_json::from_str(&out).unwrap_or_default();
        if !v["status"].is_null() {
            assert!(v["status"]["detectors"].as_array().is_some_and(|d| !d.is_empty()), "{out}");
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no detector state 20 s after flows arrived:\n{out}"
        );
        std::thread::sleep(std::time::Duration::from_millis(250));
    }
    let _ = fw.stop();
}

#[test]
fn numbers_are_for_people_in_tables_and_exact_in_json() {
    let (_t, data) = stored(3);
    let (ok, out, _) = common::cli(&[os("query"), os("--data-dir"), data.as_os_str(), os("--limit"), os("5")]);
    assert!(ok);
    let header = out.lines().next().unwrap_or_default();
    assert!(header.contains("Sampled") && header.contains("Rate"), "{header}");
    assert!(out.contains("bit/s") && out.contains("iB"), "{out}");
    let (_, out, _) = common::cli(&[os("exporters"), os("--data-dir"), data.as_os_str()]);
    assert!(out.contains("flowwarden_store_budget_bytes") && out.contains("GiB ("), "{out}");
    assert!(out.contains("Clock offset"), "{out}");
    let (_, csv, _) = common::cli(&[os("query"), os("--data-dir"), data.as_os_str(), os("--format"), os("csv")]);
    assert!(csv.lines().nth(1).is_some_and(|l| !l.contains("iB")), "CSV keeps exact numbers");
    for args in [
        vec![os("run"), os("--help")],
        vec![os("ingest"), os("--help")],
        vec![os("query"), os("--help")],
    ] {
        let (_, help, _) = common::cli(&args);
        let lines: Vec<&str> = help.lines().collect();
        for (i, line) in lines.iter().enumerate() {
            let flag = line.trim_start();
            if !(flag.starts_with("--config") || flag.starts_with("--data-dir")) {
                continue;
            }
            // The text follows the flag, or (long help) fills the next line.
            let same_line = flag.split_once('>').is_some_and(|(_, rest)| rest.trim().len() > 4);
            let next_line = lines
                .get(i + 1)
                .is_some_and(|n| n.trim().len() > 4 && !n.trim_start().starts_with('-'));
            assert!(same_line || next_line, "no help text for {flag:?} in:\n{help}");
        }
    }
}

#[test]
fn forward_test_tells_udp_apart() {
    let t = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let closed = std::net::UdpSocket::bind("127.0.0.1:0").unwrap_or_else(|e| panic!("{e}"));
    let closed_port = closed.local_addr().map(|a| a.port()).unwrap_or(0);
    drop(closed);
    let open = std::net::UdpSocket::bind("127.0.0.1:0").unwrap_or_else(|e| panic!("{e}"));
    let open_port = open.local_addr().map(|a| a.port()).unwrap_or(0);
    let cfg = write(
        t.path(),
        "f.toml",
        &format!(
            "[[forward]]\nname = \"closed\"\naddress = \"127.0.0.1:{closed_port}\"\ntransport = \"udp\"\nformat = \"json\"\n\
             [[forward]]\nname = \"open\"\naddress = \"127.0.0.1:{open_port}\"\ntransport = \"udp\"\nformat = \"json\"\n"
        ),
    );
    let (ok, out, _) = common::cli(&[os("forward-test"), os("--config"), cfg.as_os_str()]);
    assert!(!ok, "{out}");
    assert!(
        out.lines()
            .any(|l| l.starts_with("closed: FAILED:") && l.contains("ICMP port unreachable")),
        "{out}"
    );
    assert!(
        out.lines()
            .any(|l| l.starts_with("open: sent, not confirmed:") && l.contains("UDP cannot confirm delivery")),
        "{out}"
    );
    let mut buf = [0u8; 4096];
    open.set_read_timeout(Some(std::time::Duration::from_secs(2))).unwrap_or_default();
    assert!(open.recv(&mut buf).is_ok(), "the test event did not arrive");
}
