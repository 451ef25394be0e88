//! SNTP client (RFC 4330) PID 1 uses to set the clock at boot before the
//! appliance stamps anything with wall-clock time. One request per server, the
//! reply checked (mode, stratum, originate timestamp) and the clock offset
//! computed from the four timestamps. Whether the clock was synced, from where
//! and by how much is written to /run/flowwarden/time.json either way.

use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use thiserror::Error;

/// Seconds between 1900-01-01 (NTP era 0) and 1970-01-01.
const NTP_UNIX_OFFSET: u64 = 2_208_988_800;

#[derive(Debug, Error)]
pub enum SntpError {
    #[error("{server}: {source}")]
    Io {
        server: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("{server}: no reply within {ms} ms")]
    Timeout { server: SocketAddr, ms: u64 },
    #[error("{server}: unusable reply: {reason}")]
    BadReply { server: SocketAddr, reason: &'static str },
}

/// A measured clock offset.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sample {
    pub server: SocketAddr,
    /// Server time minus local time, in nanoseconds.
    pub offset_ns: i128,
    pub delay_ns: i128,
    pub stratum: u8,
}

fn to_ntp(t: SystemTime) -> u64 {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs() + NTP_UNIX_OFFSET;
    let frac = ((d.subsec_nanos() as u64) << 32) / 1_000_000_000;
    (secs << 32) | frac
}

/// NTP 64-bit timestamp → nanoseconds since the Unix epoch (era 0 only, fine until 2036;
/// timestamps with the top bit clear are taken as era 1, RFC 4330 section 3).
pub fn ntp_to_unix_ns(ts: u64) -> i128 {
    let mut secs = (ts >> 32) as i128;
    if secs < (1i128 << 31) {
        secs += 1i128 << 32;
    }
    let frac = (ts & 0xffff_ffff) as i128;
    (secs - NTP_UNIX_OFFSET as i128) * 1_000_000_000 + ((frac * 1_000_000_000) >> 32)
}

/// The 48-byte client request carrying `transmit` as its transmit timestamp.
pub fn request(transmit: u64) -> [u8; 48] {
    let mut p = [0u8; 48];
    p[0] = 0x23; // LI 0, version 4, mode 3 (client)
    p[40..48].copy_from_slice(&transmit.to_be_bytes());
    p
}

/// Checks a reply to a request sent with `transmit`; returns (stratum, receive, transmit) stamps.
pub fn parse_reply(b: &[u8], transmit: u64) -> Result<(u8, u64, u64), &'static str> {
    if b.len() < 48 {
        return Err("shorter than 48 bytes");
    }
    let mode = b[0] & 7;
    if mode != 4 && mode != 5 {
        return Err("not a server reply (mode)");
    }
    if b[0] >> 6 == 3 {
        return Err("server clock not synchronised (leap indicator 3)");
    }
    let stratum = b[1];
    if stratum == 0 || stratum > 15 {
        return Err("kiss-o'-death or invalid stratum");
    }
    let u64_at = |o: usize| u64::from_be_bytes([b[o], b[o + 1], b[o + 2], b[o + 3], b[o + 4], b[o + 5], b[o + 6], b[o + 7]]);
    if u64_at(24) != transmit {
        return Err("originate timestamp does not match our request");
    }
    let (rx, tx) = (u64_at(32), u64_at(40));
    if tx == 0 {
        return Err("zero transmit timestamp");
    }
    Ok((stratum, rx, tx))
}

/// Asks `server` once and returns the offset; does not touch the clock.
pub fn query(server: SocketAddr, timeout: Duration) -> Result<Sample, SntpError> {
    let io = |source| SntpError::Io { server, source };
    let any: std::net::IpAddr = if server.is_ipv4() {
        std::net::Ipv4Addr::UNSPECIFIED.into()
    } else {
        std::net::Ipv6Addr::UNSPECIFIED.into()
    };
    let bind = SocketAddr::new(any, 0);
    let sock = UdpSocket::bind(bind).map_err(io)?;
    sock.connect(server).map_err(io)?;
    sock.set_read_timeout(Some(timeout)).map_err(io)?;
    let t1 = SystemTime::now();
    let t1_ntp = to_ntp(t1);
    sock.send(&request(t1_ntp)).map_err(io)?;
    let mut buf = [0u8; 512];
    let deadline = std::time::Instant::now() + timeout;
    // A stray or spoofed datagram does not end the wait; if nothing better comes, its
    // reason is the error.
    let mut rejected: Option<&'static str> = None;
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let give_up = || match rejected {
            Some(reason) => SntpError::BadReply { server, reason },
            None => SntpError::Timeout {
                server,
                ms: timeout.as_millis() as u64,
            },
        };
        if left.is_zero() {
            return Err(give_up());
        }
        sock.set_read_timeout(Some(left)).map_err(io)?;
        let n = match sock.recv(&mut buf) {
            Ok(n) => n,
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => return Err(give_up()),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(io(e)),
        };
        let t4 = SystemTime::now();
        match parse_reply(&buf[..n], t1_ntp) {
            Ok((stratum, rx, tx)) => {
                let t1n = ntp_to_unix_ns(t1_ntp);
                let t4n = ntp_to_unix_ns(to_ntp(t4));
                let (t2n, t3n) = (ntp_to_unix_ns(rx), ntp_to_unix_ns(tx));
                return Ok(Sample {
                    server,
                    offset_ns: ((t2n - t1n) + (t3n - t4n)) / 2,
                    delay_ns: (t4n - t1n) - (t3n - t2n),
                    stratum,
                });
            }
            Err(reason) => rejected = Some(reason),
        }
    }
}

/// Steps the system clock by `offset_ns`.
pub fn step_clock(offset_ns: i128) -> std::io::Result<()> {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_nanos() as i128;
    let target = now + offset_ns;
    let ts = rustix::time::Timespec {
        tv_sec: (target.div_euclid(1_000_000_000)) as i64,
        tv_nsec: (target.rem_euclid(1_000_000_000)) as _,
    };
    rustix::time::clock_settime(rustix::time::ClockId::Realtime, ts).map_err(std::io::Error::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A responder that answers like an NTP server 5 s ahead of us.
    fn server_ahead(ahead: Duration, stratum: u8) -> SocketAddr {
        let s = UdpSocket::bind("127.0.0.1:0").unwrap();
        let addr = s.local_addr().unwrap();
        std::thread::spawn(move || {
            let mut b = [0u8; 48];
            let (_, peer) = s.recv_from(&mut b).unwrap();
            let now = to_ntp(SystemTime::now() + ahead);
            let mut r = [0u8; 48];
            r[0] = 0x24;
            r[1] = stratum;
            r[24..32].copy_from_slice(&b[40..48]);
            r[32..40].copy_from_slice(&now.to_be_bytes());
            r[40..48].copy_from_slice(&now.to_be_bytes());
            s.send_to(&r, peer).unwrap();
        });
        addr
    }

    #[test]
    fn measures_offset_from_a_server() {
        let addr = server_ahead(Duration::from_secs(5), 2);
        let s = query(addr, Duration::from_secs(2)).unwrap();
        assert!((s.offset_ns - 5_000_000_000).abs() < 200_000_000, "{s:?}");
        assert_eq!(s.stratum, 2);
    }

    #[test]
    fn kiss_of_death_and_silence_are_errors() {
        let addr = server_ahead(Duration::ZERO, 0);
        let e = query(addr, Duration::from_millis(300)).unwrap_err().to_string();
        assert!(e.contains("stratum"), "{e}");
        let quiet = UdpSocket::bind("127.0.0.1:0").unwrap();
        let e = query(quiet.local_addr().unwrap(), Duration::from_millis(200))
            .unwrap_err()
            .to_string();
        assert!(e.contains("no reply"), "{e}");
    }

    #[test]
    fn timestamps_round_trip() {
        let t = UNIX_EPOCH + Duration::new(1_800_000_000, 500_000_000);
        let ns = ntp_to_unix_ns(to_ntp(t));
        assert!((ns - 1_800_000_000_500_000_000).abs() < 10);
        assert!(parse_reply(&[0u8; 47], 0).is_err());
    }
}
