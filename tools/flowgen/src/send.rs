//! Sending datagrams to a collector at a fixed record rate.

use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

/// What a paced send achieved.
#[derive(Debug, Clone, Default)]
pub struct SendReport {
    pub datagrams: u64,
    pub records: u64,
    pub errors: u64,
    pub elapsed: Duration,
}

/// Send `datagrams` (each with its record count) to `target`, pacing to
/// `records_per_sec` (0 = as fast as possible).
pub fn paced(socket: &UdpSocket, target: SocketAddr, datagrams: &[(u32, Vec<u8>)], records_per_sec: u64) -> SendReport {
    let start = Instant::now();
    let mut rep = SendReport::default();
    for (n, d) in datagrams {
        if records_per_sec > 0 {
            // Send what is due, then sleep: bursts of at most ~1 ms, like an
            // exporter's export cycle, without spinning a core on the pacing.
            let due = Duration::from_secs_f64(rep.records as f64 / records_per_sec as f64);
            let el = start.elapsed();
            if due > el + Duration::from_millis(1) {
                std::thread::sleep(due - el);
            }
        }
        if socket.send_to(d, target).is_err() {
            rep.errors += 1;
        }
        rep.datagrams += 1;
        rep.records += *n as u64;
    }
    rep.elapsed = start.elapsed();
    rep
}
