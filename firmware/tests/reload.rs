//! `run` reloads its configuration while flows arrive (`flowwarden reload`,
//! SIGHUP): every flow sent is stored, the new settings apply to what comes
//! after, and a broken file is refused while the appliance goes on with the
//! settings it had.

mod common;

use std::ffi::OsStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

const DATAGRAMS: u32 = 3000;
const PER_DATAGRAM: u32 = 30;

#[test]
fn reloads_while_flows_arrive_lose_nothing_and_apply_the_new_settings() {
    let d = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let file = d.path().join("site.toml");
    let write = |text: &str| std::fs::write(&file, text).unwrap_or_else(|e| panic!("{e}"));
    write("[network]\ninternal = [\"10.0.0.0/8\"]\n");
    let data = d.path().join("data");
    let run = common::Running::start(&data, &["--config", file.to_str().unwrap_or_default()]);
    let to = run.addr();
    // A sender, paced: datagram i carries source port i, so the store tells
    // which datagram each flow came from.
    let sent = Arc::new(AtomicU32::new(0));
    let sender = {
        let sent = sent.clone();
        std::thread::spawn(move || {
            let sock = std::net::UdpSocket::bind("127.0.0.1:0").unwrap_or_else(|e| panic!("{e}"));
            let boot = now_ms() - 3_600_000;
            let mut r = common::v5::Rng::new(7);
            for i in 0..DATAGRAMS {
                let t = now_ms();
                let recs: Vec<common::v5::Rec> = (0..PER_DATAGRAM)
                    .map(|_| {
                        let src = [10, 1, (r.below(4)) as u8, 1 + r.below(200) as u8];
                        let dst = [198, 51, 100, 1 + r.below(200) as u8];
                        (src, dst, i as u16, 443, 6, 1000, 1, t - 2000, t - 1000)
                    })
                    .collect();
                sock.send_to(&common::v5::datagram(i * PER_DATAGRAM, t, boot, &recs), to)
                    .unwrap_or_else(|e| panic!("{e}"));
                sent.store(i + 1, Ordering::SeqCst);
                std::thread::sleep(Duration::from_micros(1500));
            }
        })
    };
    let reload = || common::cli(&[OsStr::new("reload"), OsStr::new("--data-dir"), data.as_os_str()]);
    let wait_sent = |n: u32| {
        while sent.load(Ordering::SeqCst) < n {
            std::thread::sleep(Duration::from_millis(10));
        }
    };
    wait_sent(300);
    // 1. Sampling 1:10 for the exporter: flows after the reload count ten times.
    write("[network]\ninternal = [\"10.0.0.0/8\"]\n[[exporter]]\naddress = \"127.0.0.1\"\nsampling_rate = 10\n");
    let (ok, out, err) = reload();
    assert!(ok, "reload failed: {out}{err}");
    assert!(out.contains("flowwarden: configuration reloaded"), "{out}");
    // The console says so too.
    run.wait_for_line("flowwarden: configuration reloaded", Duration::from_secs(10));
    let after_first = sent.load(Ordering::SeqCst);
    wait_sent(after_first + 300);
    // 2. A broken file is refused with its line, and nothing changes.
    write("[network]\ninternal = [\"10.0.0.0/33\"]\n");
    let (ok, out, err) = reload();
    assert!(!ok, "a broken configuration was accepted: {out}");
    assert!(
        err.contains("reload refused") && err.contains("site.toml:2"),
        "the refusal should name the file and line: {err}"
    );
    run.wait_for_line("flowwarden: reload refused", Duration::from_secs(10));
    wait_sent(after_first + 600);
    // 3. SIGHUP: back to unsampled.
    write("[network]\ninternal = [\"10.0.0.0/8\"]\n");
    let before_hup = sent.load(Ordering::SeqCst);
    run.hangup();
    run.wait_for_line("flowwarden: configuration reloaded", Duration::from_secs(60));
    let after_hup = sent.load(Ordering::SeqCst);
    sender.join().unwrap_or_else(|_| panic!("sender failed"));
    std::thread::sleep(Duration::from_secs(2));
    let (status, lines) = run.stop_output();
    assert!(status.success(), "{lines:?}");
    let stopped = lines
        .iter()
        .find(|l| l.contains("flowwarden: stopped"))
        .cloned()
        .unwrap_or_default();
    assert!(stopped.contains("lost: nothing"), "{stopped}");
    assert!(
        stopped.contains(&format!("; {} flows stored;", DATAGRAMS * PER_DATAGRAM)),
        "the summary counts every generation: {stopped}"
    );

    let flows = common::read_all(&data);
    assert_eq!(
        flows.len() as u64,
        u64::from(DATAGRAMS * PER_DATAGRAM),
        "every flow sent across three reloads is stored"
    );
    let mut per_datagram = vec![0u32; DATAGRAMS as usize];
    for f in &flows {
        let i = u32::from(f.src_port);
        per_datagram[i as usize] += 1;
        // Sent before the first reload finished: unsampled; after it and
        // before the SIGHUP: 1:10; after the SIGHUP's reload: unsampled.
        if i < 300 {
            assert_eq!(f.bytes, 1000, "datagram {i} (before the first reload)");
        } else if i >= after_first && i < before_hup {
            assert_eq!(f.bytes, 10_000, "datagram {i} (sampling 1:10 in force)");
        } else if i >= after_hup {
            assert_eq!(f.bytes, 1000, "datagram {i} (after SIGHUP)");
        } else {
            assert!(f.bytes == 1000 || f.bytes == 10_000, "datagram {i}: {} bytes", f.bytes);
        }
    }
    assert!(
        per_datagram.iter().all(|&n| n == PER_DATAGRAM),
        "each datagram's flows, exactly once"
    );
}
