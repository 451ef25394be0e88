//! `run --demo`: flowgen's synthetic branch office with injected attacks, sent
//! as IPFIX over UDP to the collector's own socket, so a newcomer sees the
//! whole live pipeline (collector, store, detectors, alerts) on a laptop.
//!
//! The office is flowgen's `attacks` scenario for a 12-host office, starting at
//! midnight UTC eight days ago: the past is replayed at `REPLAY_RATE` records
//! per second (a week of learning, then beacons, scans, a night upload, ...),
//! then traffic continues minute by minute in real time until shutdown.

use crate::timefmt::now_ms;
use flowgen::{Exporter, Version, export_stream};
use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

const DAY_MS: u64 = 86_400_000;
/// Records per second while replaying the past (the live pipeline keeps up comfortably).
pub const REPLAY_RATE: u64 = 60_000;
const HOSTS: usize = 12;

/// Where to send: the first IPv4 listener (the unspecified address becomes loopback).
pub fn target(bound: &[SocketAddr]) -> Option<SocketAddr> {
    let a = bound.iter().find(|a| a.is_ipv4()).or_else(|| bound.first())?;
    let ip = if a.ip().is_unspecified() {
        if a.is_ipv4() {
            Ipv4Addr::LOCALHOST.into()
        } else {
            std::net::Ipv6Addr::LOCALHOST.into()
        }
    } else {
        a.ip()
    };
    Some(SocketAddr::new(ip, a.port()))
}

/// Start the demo sender thread; it stops when `stop` is set.
pub fn spawn(to: SocketAddr, stop: Arc<AtomicBool>) -> std::io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new().name("demo".into()).spawn(move || {
        if let Err(e) = send(to, &stop) {
            tracing::error!("demo traffic stopped: {e}");
        }
    })
}

fn send(to: SocketAddr, stop: &AtomicBool) -> std::io::Result<()> {
    let bind: SocketAddr = if to.is_ipv4() {
        (Ipv4Addr::LOCALHOST, 0).into()
    } else {
        (std::net::Ipv6Addr::LOCALHOST, 0).into()
    };
    let sock = UdpSocket::bind(bind)?;
    let now = now_ms();
    let start = now / DAY_MS * DAY_MS - 8 * DAY_MS;
    let Some(scenario) = flowgen::scenario::build("attacks", now / DAY_MS, start, HOSTS) else {
        return Ok(());
    };
    let mut office = scenario.office.clone();
    office.intensity = 2.0;
    tracing::info!(
        "demo: replaying {} days of a {HOSTS}-host office with {} injected attacks to {to}, then live traffic",
        (now - start) / DAY_MS,
        scenario.truth.len()
    );
    for t in &scenario.truth {
        tracing::info!("demo: injected {} ({})", t.name, t.kind);
    }
    let mut exporter = Exporter::new(Version::Ipfix, start.saturating_sub(3_600_000));
    // Replay the past an hour of event time at a time.
    let mut t = start;
    let mut window = |from: u64, to_ms: u64| {
        let flows = office.flows(from, to_ms);
        let dgrams: Vec<(u32, Vec<u8>)> = export_stream(&mut exporter, &flows, 1000)
            .into_iter()
            .map(|(_, n, d)| (n, d))
            .collect();
        flowgen::send::paced(&sock, to, &dgrams, REPLAY_RATE);
    };
    while t + 60_000 <= now && !stop.load(Ordering::Relaxed) {
        let end = (t + 3_600_000).min(now / 60_000 * 60_000);
        window(t, end);
        t = end;
    }
    tracing::info!("demo: replay done; live traffic from now on");
    // Then live, one minute at a time.
    while !stop.load(Ordering::Relaxed) {
        let end = t + 60_000;
        while now_ms() < end + 1000 {
            if stop.load(Ordering::Relaxed) {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        window(t, end);
        t = end;
    }
    Ok(())
}
