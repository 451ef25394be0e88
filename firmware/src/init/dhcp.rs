//! DHCPv4 client for the management interface (RFC 2131/2132): DISCOVER →
//! OFFER → REQUEST → ACK over a UDP socket bound to the interface, broadcast
//! both ways. Yields the lease PID 1 turns into an address, a default route,
//! /etc/resolv.conf and SNTP servers. Untrusted replies are parsed without
//! panicking; anything malformed is ignored like a lost packet.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket};
use std::time::{Duration, Instant};
use thiserror::Error;

const MAGIC: [u8; 4] = [99, 130, 83, 99];
const DISCOVER: u8 = 1;
const OFFER: u8 = 2;
const REQUEST: u8 = 3;
const ACK: u8 = 5;
const NAK: u8 = 6;

#[derive(Debug, Error)]
pub enum DhcpError {
    #[error("DHCP socket on {iface}: {source}")]
    Socket {
        iface: String,
        #[source]
        source: std::io::Error,
    },
    #[error("no DHCP lease on {iface} after {secs} s ({sent} DISCOVER/REQUEST sent, {offers} offers, {naks} NAKs)")]
    Timeout {
        iface: String,
        secs: u64,
        sent: u32,
        offers: u32,
        naks: u32,
    },
}

/// What the server handed out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub address: Ipv4Addr,
    pub prefix_len: u8,
    pub router: Option<Ipv4Addr>,
    pub dns: Vec<Ipv4Addr>,
    pub ntp: Vec<Ipv4Addr>,
    pub server: Ipv4Addr,
    pub lease_secs: u32,
}

/// One parsed BOOTREPLY.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub msg_type: u8,
    pub yiaddr: Ipv4Addr,
    pub server_id: Option<Ipv4Addr>,
    pub mask: Option<Ipv4Addr>,
    pub router: Option<Ipv4Addr>,
    pub dns: Vec<Ipv4Addr>,
    pub ntp: Vec<Ipv4Addr>,
    pub lease_secs: Option<u32>,
}

/// A BOOTREQUEST of `msg_type` (DISCOVER or REQUEST), broadcast flag set.
pub fn request_packet(msg_type: u8, xid: u32, mac: [u8; 6], requested: Option<(Ipv4Addr, Ipv4Addr)>, hostname: &str) -> Vec<u8> {
    let mut p = vec![0u8; 236];
    p[0] = 1; // BOOTREQUEST
    p[1] = 1; // Ethernet
    p[2] = 6;
    p[4..8].copy_from_slice(&xid.to_be_bytes());
    p[10] = 0x80; // broadcast: we have no address to receive unicast on
    p[28..34].copy_from_slice(&mac);
    p.extend_from_slice(&MAGIC);
    p.extend_from_slice(&[53, 1, msg_type]);
    let mut cid = vec![61, 7, 1];
    cid.extend_from_slice(&mac);
    p.extend_from_slice(&cid);
    if let Some((addr, server)) = requested {
        p.extend_from_slice(&[50, 4]);
        p.extend_from_slice(&addr.octets());
        p.extend_from_slice(&[54, 4]);
        p.extend_from_slice(&server.octets());
    }
    let name = &hostname.as_bytes()[..hostname.len().min(63)];
    if !name.is_empty() {
        p.extend_from_slice(&[12, name.len() as u8]);
        p.extend_from_slice(name);
    }
    p.extend_from_slice(&[55, 5, 1, 3, 6, 42, 51]); // parameter request list
    p.extend_from_slice(&[57, 2, 0x05, 0xdc]); // max message size 1500
    p.push(255);
    while p.len() < 300 {
        p.push(0);
    }
    p
}

/// Parses a BOOTREPLY for `xid`; `None` for anything else or anything malformed.
pub fn parse_reply(b: &[u8], xid: u32) -> Option<Reply> {
    if b.len() < 240 || b[0] != 2 || b[4..8] != xid.to_be_bytes() || b[236..240] != MAGIC {
        return None;
    }
    let ip = |s: &[u8]| Ipv4Addr::new(s[0], s[1], s[2], s[3]);
    let list = |v: &[u8]| v.chunks_exact(4).map(ip).collect::<Vec<_>>();
    let mut r = Reply {
        msg_type: 0,
        yiaddr: ip(&b[16..20]),
        server_id: None,
        mask: None,
        router: None,
        dns: Vec::new(),
        ntp: Vec::new(),
        lease_secs: None,
    };
    let mut i = 240;
    while i < b.len() {
        let code = b[i];
        if code == 0 {
            i += 1;
            continue;
        }
        if code == 255 {
            break;
        }
        let len = *b.get(i + 1)? as usize;
        let v = b.get(i + 2..i + 2 + len)?;
        match (code, len) {
            (53, 1) => r.msg_type = v[0],
            (54, 4) => r.server_id = Some(ip(v)),
            (1, 4) => r.mask = Some(ip(v)),
            (3, l) if l >= 4 => r.router = Some(ip(v)),
            (6, _) => r.dns = list(v),
            (42, _) => r.ntp = list(v),
            (51, 4) => r.lease_secs = Some(u32::from_be_bytes([v[0], v[1], v[2], v[3]])),
            _ => {}
        }
        i += 2 + len;
    }
    (r.msg_type != 0).then_some(r)
}

/// Prefix length of a contiguous netmask (a non-contiguous one counts its ones).
pub fn mask_len(mask: Ipv4Addr) -> u8 {
    u32::from(mask).count_ones() as u8
}

/// Runs DISCOVER/REQUEST on `iface` until a lease is ACKed or `timeout` passes.
pub fn obtain(iface: &str, mac: [u8; 6], hostname: &str, timeout: Duration) -> Result<Lease, DhcpError> {
    let sock_err = |source| DhcpError::Socket {
        iface: iface.to_string(),
        source,
    };
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::DGRAM, Some(socket2::Protocol::UDP)).map_err(sock_err)?;
    sock.set_reuse_address(true).map_err(sock_err)?;
    sock.set_broadcast(true).map_err(sock_err)?;
    sock.bind_device(Some(iface.as_bytes())).map_err(sock_err)?;
    sock.bind(&SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 68)).into())
        .map_err(sock_err)?;
    let sock: UdpSocket = sock.into();
    let server = SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::BROADCAST, 67));
    let deadline = Instant::now() + timeout;
    let seed = u32::from_be_bytes([mac[2], mac[3], mac[4], mac[5]]) ^ std::process::id();
    let (mut sent, mut offers, mut naks) = (0u32, 0u32, 0u32);
    let mut attempt = 0u32;
    let mut buf = [0u8; 1500];
    while Instant::now() < deadline {
        attempt += 1;
        let xid = seed.wrapping_mul(2_654_435_761).wrapping_add(attempt);
        // Backoff 1, 2, 4, 4 ... seconds per attempt, bounded by the deadline.
        let wait = Duration::from_secs(1u64 << (attempt - 1).min(2));
        sock.send_to(&request_packet(DISCOVER, xid, mac, None, hostname), server)
            .map_err(sock_err)?;
        sent += 1;
        let Some(offer) = wait_for(
            &sock,
            &mut buf,
            xid,
            wait.min(deadline.saturating_duration_since(Instant::now())),
            |r| r.msg_type == OFFER,
        ) else {
            continue;
        };
        offers += 1;
        let Some(server_id) = offer.server_id else { continue };
        sock.send_to(
            &request_packet(REQUEST, xid, mac, Some((offer.yiaddr, server_id)), hostname),
            server,
        )
        .map_err(sock_err)?;
        sent += 1;
        let Some(ack) = wait_for(
            &sock,
            &mut buf,
            xid,
            wait.min(deadline.saturating_duration_since(Instant::now())),
            |r| r.msg_type == ACK || r.msg_type == NAK,
        ) else {
            continue;
        };
        if ack.msg_type == NAK {
            naks += 1;
            continue;
        }
        return Ok(Lease {
            address: ack.yiaddr,
            prefix_len: ack.mask.or(offer.mask).map(mask_len).unwrap_or(24),
            router: ack.router.or(offer.router),
            dns: if ack.dns.is_empty() { offer.dns } else { ack.dns },
            ntp: if ack.ntp.is_empty() { offer.ntp } else { ack.ntp },
            server: server_id,
            lease_secs: ack.lease_secs.or(offer.lease_secs).unwrap_or(3600),
        });
    }
    Err(DhcpError::Timeout {
        iface: iface.to_string(),
        secs: timeout.as_secs(),
        sent,
        offers,
        naks,
    })
}

fn wait_for(sock: &UdpSocket, buf: &mut [u8], xid: u32, wait: Duration, want: impl Fn(&Reply) -> bool) -> Option<Reply> {
    let until = Instant::now() + wait;
    loop {
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return None;
        }
        sock.set_read_timeout(Some(left)).ok()?;
        match sock.recv_from(buf) {
            Ok((n, _)) => {
                if let Some(r) = parse_reply(&buf[..n], xid).filter(|r| want(r)) {
                    return Some(r);
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => return None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reply(msg: u8, xid: u32, opts: &[u8]) -> Vec<u8> {
        let mut p = vec![0u8; 236];
        p[0] = 2;
        p[4..8].copy_from_slice(&xid.to_be_bytes());
        p[16..20].copy_from_slice(&[10, 0, 2, 15]);
        p.extend_from_slice(&MAGIC);
        p.extend_from_slice(&[53, 1, msg]);
        p.extend_from_slice(opts);
        p.push(255);
        p
    }

    #[test]
    fn request_carries_type_mac_and_requested_address() {
        let mac = [0x52, 0x54, 0, 0x12, 0x34, 0x56];
        let p = request_packet(
            REQUEST,
            7,
            mac,
            Some((Ipv4Addr::new(10, 0, 2, 15), Ipv4Addr::new(10, 0, 2, 2))),
            "fw",
        );
        assert_eq!(&p[28..34], &mac);
        assert_eq!(&p[236..240], &MAGIC);
        assert_eq!(&p[240..243], &[53, 1, REQUEST]);
        assert!(p.windows(6).any(|w| w == [50, 4, 10, 0, 2, 15]));
        assert!(p.len() >= 300);
    }

    #[test]
    fn parses_an_ack_like_slirp_sends() {
        let opts = [
            1, 4, 255, 255, 255, 0, 3, 4, 10, 0, 2, 2, 6, 4, 10, 0, 2, 3, 54, 4, 10, 0, 2, 2, 51, 4, 0, 1, 81, 128, 42, 8, 1, 2, 3, 4, 5,
            6, 7, 8,
        ];
        let r = parse_reply(&reply(ACK, 9, &opts), 9).unwrap();
        assert_eq!(r.msg_type, ACK);
        assert_eq!(r.yiaddr, Ipv4Addr::new(10, 0, 2, 15));
        assert_eq!(r.router, Some(Ipv4Addr::new(10, 0, 2, 2)));
        assert_eq!(r.dns, vec![Ipv4Addr::new(10, 0, 2, 3)]);
        assert_eq!(r.ntp.len(), 2);
        assert_eq!(r.lease_secs, Some(86400));
        assert_eq!(mask_len(r.mask.unwrap()), 24);
        assert!(parse_reply(&reply(ACK, 9, &opts), 10).is_none(), "other xid");
    }

    #[test]
    fn truncated_or_garbage_replies_are_ignored() {
        let full = reply(OFFER, 1, &[3, 4, 10, 0, 2, 2]);
        for n in 0..full.len() {
            let _ = parse_reply(&full[..n], 1);
        }
        let mut bad = reply(OFFER, 1, &[]);
        bad.pop();
        bad.extend_from_slice(&[6, 200, 1]); // option longer than the packet
        assert!(parse_reply(&bad, 1).is_none());
    }

    proptest::proptest! {
        #[test]
        fn never_panics(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..600)) {
            let _ = parse_reply(&bytes, 0);
        }
    }
}
