//! Live collection from a real exporter: Debian's softflowd turns ordinary
//! packet captures into NetFlow v5, v9 and IPFIX sent to a running
//! `flowwarden run` on loopback; what is stored equals what softflowd says it
//! exported (records, and bytes and packets per protocol). Then a crash:
//! kill -9 in the middle of an ingest, and every flow a reader saw committed
//! before the kill is there after it.

mod common;

use std::collections::HashMap;
use std::ffi::OsStr;
use std::path::Path;
use std::process::Command;

#[derive(Debug, Default, PartialEq, Eq)]
struct Exported {
    records: u64,
    /// protocol -> (octets, packets)
    per_proto: HashMap<u8, (u64, u64)>,
}

fn softflowd(pcap: &Path, target: std::net::SocketAddr, version: &str, pidfile: &Path) -> Exported {
    let out = Command::new(common::tool("softflowd", "softflowd"))
        .arg("-D")
        .arg("-r")
        .arg(pcap)
        .args(["-n", &target.to_string(), "-v", version, "-c", "none", "-p"])
        .arg(pidfile)
        .output()
        .unwrap_or_else(|e| panic!("softflowd: {e}"));
    let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    let mut e = Exported::default();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("Flows exported: ") {
            // "1001 (1001 records) in 32 packets (0 failures)"
            let recs = rest
                .split('(')
                .nth(1)
                .and_then(|r| r.split_whitespace().next())
                .and_then(|n| n.parse().ok());
            e.records = recs.unwrap_or_else(|| panic!("cannot read {line:?}"));
            assert!(rest.ends_with("(0 failures)"), "softflowd reported send failures: {line}");
        }
        // "            tcp (6):          46230         1005       0.00s       1.05s"
        let t = line.trim();
        if let Some((name, rest)) = t.split_once("):")
            && let Some(num) = name.rsplit('(').next().and_then(|n| n.parse::<u8>().ok())
        {
            let v: Vec<u64> = rest.split_whitespace().take(2).filter_map(|x| x.parse().ok()).collect();
            if v.len() == 2 {
                e.per_proto.insert(num, (v[0], v[1]));
            }
        }
    }
    assert!(
        e.records > 0,
        "softflowd exported nothing:\n{}",
        &text[text.len().saturating_sub(2000)..]
    );
    e
}

#[test]
fn softflowd_exports_arrive_complete() {
    let traffic = common::captures().join("traffic");
    let pcaps = [
        traffic.join("esnet-curated/tcp_0_1000_20190821.pcap"),
        traffic.join("esnet-curated/udp_0_1000_20190821.pcap"),
        traffic.join("slips/test-cc-capture-1.pcap"),
        traffic.join("zeek/ssh.pcap"),
    ];
    for version in ["5", "9", "10"] {
        let d = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let fw = common::Running::start(d.path(), &[]);
        let mut want = Exported::default();
        for p in &pcaps {
            let e = softflowd(p, fw.addr(), version, &d.path().join("softflowd.pid"));
            want.records += e.records;
            for (k, (o, n)) in e.per_proto {
                let w = want.per_proto.entry(k).or_default();
                w.0 += o;
                w.1 += n;
            }
        }
        let (status, _) = fw.stop();
        assert!(status.success());
        let flows = common::read_all(d.path());
        let mut got = Exported {
            records: flows.len() as u64,
            per_proto: HashMap::new(),
        };
        for f in &flows {
            let w = got.per_proto.entry(f.proto).or_default();
            w.0 += f.bytes;
            w.1 += f.packets;
        }
        assert_eq!(got, want, "NetFlow version {version}: stored vs softflowd's own export");
    }
}

#[test]
fn kill_9_during_ingest_loses_nothing_committed() {
    let d = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    // A capture big enough to take a few seconds.
    let pcap = d.path().join("big.pcap");
    let t0 = 1_793_577_600_000 + 9 * 3_600_000;
    let mut office = flowgen::Office::new(5, 2000);
    office.intensity = 8.0;
    let flows = office.flows(t0, t0 + 2 * 3_600_000);
    let mut exp = flowgen::Exporter::new(flowgen::Version::Ipfix, t0 - 86_400_000);
    let file = std::fs::File::create(&pcap).unwrap_or_else(|e| panic!("{e}"));
    let mut w = flowgen::pcap::PcapWriter::new(std::io::BufWriter::new(file)).unwrap_or_else(|e| panic!("{e}"));
    let (src, dst) = (
        "10.20.0.1:50000".parse().unwrap_or_else(|e| panic!("{e}")),
        "10.20.0.5:2055".parse().unwrap_or_else(|e| panic!("{e}")),
    );
    for (t, _, dg) in flowgen::export_stream(&mut exp, &flows, 1000) {
        w.datagram(t, src, dst, &dg).unwrap_or_else(|e| panic!("{e}"));
    }
    w.finish().unwrap_or_else(|e| panic!("{e}"));
    let data = d.path().join("data");
    let mut child = Command::new(common::bin())
        .arg("ingest")
        .arg("--data-dir")
        .arg(&data)
        .arg(&pcap)
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("{e}"));
    // Watch commits from another process, then pull the plug.
    let count = || -> Option<u64> {
        let (ok, out, _) = common::cli(&[
            OsStr::new("query"),
            OsStr::new("--data-dir"),
            data.as_os_str(),
            OsStr::new("--top"),
            OsStr::new("proto"),
            OsStr::new("--format"),
            OsStr::new("jsonl"),
        ]);
        ok.then(|| {
            out.lines()
                .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
                .filter_map(|v| v["flows"].as_u64())
                .sum()
        })
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let seen = loop {
        if let Some(n) = count().filter(|&n| n > 0) {
            break n;
        }
        assert!(
            child.try_wait().ok().flatten().is_none(),
            "ingest finished before it could be killed: make the capture bigger"
        );
        assert!(std::time::Instant::now() < deadline, "nothing committed within 60 s");
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    child.kill().unwrap_or_else(|e| panic!("{e}")); // SIGKILL
    let _ = child.wait();
    assert!((seen as usize) < flows.len(), "the kill came too late to test anything");
    // The store opens, every block decodes, nothing committed is missing.
    let after = common::read_all(&data).len() as u64;
    assert!(after >= seen, "{seen} flows were visible before the kill, {after} after");
    // And the writer can reopen it and carry on.
    let (ok, out, err) = common::cli(&[
        OsStr::new("ingest"),
        OsStr::new("--data-dir"),
        data.as_os_str(),
        common::captures().join("exported/softflowd_test_v9.pcap").as_os_str(),
    ]);
    assert!(ok, "{err}");
    assert!(out.contains("flows stored:       45"), "{out}");
    assert_eq!(common::read_all(&data).len() as u64, after + 45);
}
