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
            let due = Duration::from_secs_f64(rep.records as f64 / records_per_sec as f64);
            loop {
                let el = start.elapsed();
                if el >= due {
                    break;
                }
                let left = due - el;
                if left > Duration::from_micros(200) {
                    std::thread::sleep(left - Duration::from_micros(100));
                } else {
                    std::hint::spin_loop();
                }
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
