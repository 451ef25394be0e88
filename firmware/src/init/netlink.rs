//! Route-netlink requests PID 1 needs to configure the management interface
//! (link up, VLAN link, IPv4 address, default route, and taking them away again), built by hand as bytes and sent over
//! an AF_NETLINK socket: no `ip` binary in the image, no unsafe ioctls. Each
//! request asks for an ACK and the kernel's errno comes back as the error.

use rustix::net::{AddressFamily, RecvFlags, SendFlags, SocketType};
use std::net::Ipv4Addr;
use thiserror::Error;

const RTM_NEWLINK: u16 = 16;
const RTM_DELLINK: u16 = 17;
const RTM_NEWADDR: u16 = 20;
const RTM_DELADDR: u16 = 21;
const RTM_NEWROUTE: u16 = 24;
const RTM_DELROUTE: u16 = 25;
const NLMSG_ERROR: u16 = 2;
const NLM_F_REQUEST: u16 = 1;
const NLM_F_ACK: u16 = 4;
const NLM_F_REPLACE: u16 = 0x100;
const NLM_F_EXCL: u16 = 0x200;
const NLM_F_CREATE: u16 = 0x400;
const AF_INET: u8 = 2;
const IFF_UP: u32 = 1;

#[derive(Debug, Error)]
pub enum NetlinkError {
    #[error("netlink socket: {0}")]
    Socket(#[source] std::io::Error),
    #[error("{what}: kernel said {source}")]
    Kernel {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{what}: no acknowledgement from the kernel")]
    NoAck { what: String },
}

/// One request: header + fixed part + attributes, padded as netlink wants.
#[derive(Debug)]
pub struct Message {
    buf: Vec<u8>,
}

impl Message {
    fn new(kind: u16, flags: u16, seq: u32, fixed: &[u8]) -> Self {
        let mut buf = vec![0u8; 16];
        buf[4..6].copy_from_slice(&kind.to_ne_bytes());
        buf[6..8].copy_from_slice(&(flags | NLM_F_REQUEST | NLM_F_ACK).to_ne_bytes());
        buf[8..12].copy_from_slice(&seq.to_ne_bytes());
        buf.extend_from_slice(fixed);
        let mut m = Message { buf };
        m.pad();
        m
    }

    fn attr(mut self, kind: u16, data: &[u8]) -> Self {
        let len = (4 + data.len()) as u16;
        self.buf.extend_from_slice(&len.to_ne_bytes());
        self.buf.extend_from_slice(&kind.to_ne_bytes());
        self.buf.extend_from_slice(data);
        self.pad();
        self
    }

    fn pad(&mut self) {
        while !self.buf.len().is_multiple_of(4) {
            self.buf.push(0);
        }
    }

    pub fn bytes(mut self) -> Vec<u8> {
        let len = self.buf.len() as u32;
        self.buf[0..4].copy_from_slice(&len.to_ne_bytes());
        self.buf
    }
}

/// RTM_NEWLINK setting IFF_UP on `ifindex`.
pub fn link_up(seq: u32, ifindex: u32) -> Vec<u8> {
    let mut fixed = [0u8; 16];
    fixed[4..8].copy_from_slice(&ifindex.to_ne_bytes());
    fixed[8..12].copy_from_slice(&IFF_UP.to_ne_bytes());
    fixed[12..16].copy_from_slice(&IFF_UP.to_ne_bytes());
    Message::new(RTM_NEWLINK, 0, seq, &fixed).bytes()
}

/// One attribute on its own (for nesting): length, type, data, padding.
fn nla(kind: u16, data: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(4 + data.len() + 3);
    v.extend_from_slice(&((4 + data.len()) as u16).to_ne_bytes());
    v.extend_from_slice(&kind.to_ne_bytes());
    v.extend_from_slice(data);
    while !v.len().is_multiple_of(4) {
        v.push(0);
    }
    v
}

/// RTM_NEWLINK creating the 802.1Q link `name` with VLAN id `vid` on `parent`.
pub fn new_vlan(seq: u32, parent: u32, name: &str, vid: u16) -> Vec<u8> {
    let mut ifname = name.as_bytes().to_vec();
    ifname.push(0);
    let mut info = nla(1, b"vlan"); // IFLA_INFO_KIND
    info.extend_from_slice(&nla(2, &nla(1, &vid.to_ne_bytes()))); // IFLA_INFO_DATA { IFLA_VLAN_ID }
    Message::new(RTM_NEWLINK, NLM_F_CREATE | NLM_F_EXCL, seq, &[0u8; 16])
        .attr(5, &parent.to_ne_bytes()) // IFLA_LINK
        .attr(3, &ifname) // IFLA_IFNAME
        .attr(18, &info) // IFLA_LINKINFO
        .bytes()
}

/// RTM_DELLINK of `ifindex` (a VLAN link we made; its addresses and routes go with it).
pub fn del_link(seq: u32, ifindex: u32) -> Vec<u8> {
    let mut fixed = [0u8; 16];
    fixed[4..8].copy_from_slice(&ifindex.to_ne_bytes());
    Message::new(RTM_DELLINK, 0, seq, &fixed).bytes()
}

/// RTM_NEWADDR `addr/prefix_len` on `ifindex` (replaces the same address).
pub fn add_addr(seq: u32, ifindex: u32, addr: Ipv4Addr, prefix_len: u8) -> Vec<u8> {
    addr_msg(RTM_NEWADDR, NLM_F_CREATE | NLM_F_REPLACE, seq, ifindex, addr, prefix_len)
}

/// RTM_DELADDR of `addr/prefix_len` on `ifindex`.
pub fn del_addr(seq: u32, ifindex: u32, addr: Ipv4Addr, prefix_len: u8) -> Vec<u8> {
    addr_msg(RTM_DELADDR, 0, seq, ifindex, addr, prefix_len)
}

fn addr_msg(kind: u16, flags: u16, seq: u32, ifindex: u32, addr: Ipv4Addr, prefix_len: u8) -> Vec<u8> {
    let fixed = [AF_INET, prefix_len, 0, 0];
    let mut f = fixed.to_vec();
    f.extend_from_slice(&ifindex.to_ne_bytes());
    let bcast = if prefix_len < 31 {
        u32::from(addr) | (u32::MAX >> prefix_len)
    } else {
        u32::from(addr)
    };
    Message::new(kind, flags, seq, &f)
        .attr(2, &addr.octets()) // IFA_LOCAL
        .attr(1, &addr.octets()) // IFA_ADDRESS
        .attr(4, &Ipv4Addr::from(bcast).octets()) // IFA_BROADCAST
        .bytes()
}

/// RTM_NEWROUTE 0.0.0.0/0 via `gateway` out of `ifindex`, main table.
pub fn default_route(seq: u32, ifindex: u32, gateway: Ipv4Addr) -> Vec<u8> {
    route_msg(RTM_NEWROUTE, NLM_F_CREATE | NLM_F_REPLACE, seq, ifindex, gateway)
}

/// RTM_DELROUTE of that default route.
pub fn del_default_route(seq: u32, ifindex: u32, gateway: Ipv4Addr) -> Vec<u8> {
    route_msg(RTM_DELROUTE, 0, seq, ifindex, gateway)
}

fn route_msg(kind: u16, flags: u16, seq: u32, ifindex: u32, gateway: Ipv4Addr) -> Vec<u8> {
    // family, dst_len, src_len, tos, table=main, protocol=boot, scope=universe, type=unicast, flags
    let fixed = [AF_INET, 0, 0, 0, 254, 3, 0, 1, 0, 0, 0, 0];
    Message::new(kind, flags, seq, &fixed)
        .attr(5, &gateway.octets()) // RTA_GATEWAY
        .attr(4, &ifindex.to_ne_bytes()) // RTA_OIF
        .bytes()
}

/// The errno of an NLMSG_ERROR reply to `seq` (0 = success), `None` if `buf` holds no such reply.
pub fn ack_errno(buf: &[u8], seq: u32) -> Option<i32> {
    let mut off = 0;
    while off + 16 <= buf.len() {
        let len = u32::from_ne_bytes(buf[off..off + 4].try_into().ok()?) as usize;
        if len < 16 || off + len > buf.len() {
            return None;
        }
        let kind = u16::from_ne_bytes(buf[off + 4..off + 6].try_into().ok()?);
        let s = u32::from_ne_bytes(buf[off + 8..off + 12].try_into().ok()?);
        if kind == NLMSG_ERROR && s == seq && len >= 20 {
            return Some(i32::from_ne_bytes(buf[off + 16..off + 20].try_into().ok()?));
        }
        off += (len + 3) & !3;
    }
    None
}

/// A route-netlink socket that sends requests and waits for their ACKs.
pub struct Netlink {
    fd: std::os::fd::OwnedFd,
    seq: u32,
}

impl Netlink {
    pub fn open() -> Result<Self, NetlinkError> {
        let fd = rustix::net::socket(AddressFamily::NETLINK, SocketType::RAW, None) // None = NETLINK_ROUTE (protocol 0)
            .map_err(|e| NetlinkError::Socket(e.into()))?;
        Ok(Netlink { fd, seq: 1 })
    }

    pub fn next_seq(&mut self) -> u32 {
        self.seq += 1;
        self.seq
    }

    /// Sends `msg` (built with sequence `seq`) and waits for its ACK.
    pub fn request(&mut self, what: &str, seq: u32, msg: &[u8]) -> Result<(), NetlinkError> {
        rustix::net::send(&self.fd, msg, SendFlags::empty()).map_err(|e| NetlinkError::Kernel {
            what: what.to_string(),
            source: e.into(),
        })?;
        let mut buf = [0u8; 8192];
        for _ in 0..16 {
            let (n, _) = rustix::net::recv(&self.fd, &mut buf[..], RecvFlags::empty()).map_err(|e| NetlinkError::Kernel {
                what: what.to_string(),
                source: e.into(),
            })?;
            match ack_errno(&buf[..n], seq) {
                Some(0) => return Ok(()),
                Some(errno) => {
                    return Err(NetlinkError::Kernel {
                        what: what.to_string(),
                        source: std::io::Error::from_raw_os_error(-errno),
                    });
                }
                None => continue,
            }
        }
        Err(NetlinkError::NoAck { what: what.to_string() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_are_padded_and_sized() {
        for m in [
            link_up(1, 2),
            add_addr(2, 2, Ipv4Addr::new(10, 0, 2, 15), 24),
            default_route(3, 2, Ipv4Addr::new(10, 0, 2, 2)),
            del_default_route(4, 2, Ipv4Addr::new(10, 0, 2, 2)),
            del_addr(5, 2, Ipv4Addr::new(10, 0, 2, 15), 24),
            new_vlan(6, 2, "eth0.20", 20),
            del_link(7, 9),
        ] {
            assert_eq!(m.len() % 4, 0);
            assert_eq!(u32::from_ne_bytes(m[0..4].try_into().unwrap()) as usize, m.len());
        }
        let a = add_addr(2, 2, Ipv4Addr::new(10, 0, 2, 15), 24);
        // broadcast attribute is the last 8 bytes: len 8, type 4, 10.0.2.255
        assert_eq!(&a[a.len() - 4..], &[10, 0, 2, 255]);
        // The VLAN request ends with IFLA_LINKINFO { kind "vlan", data { id 20 } }:
        // 4 + (8 "vlan") + (4 + (4 + 2 + 2 pad)) = 24 bytes.
        let v = new_vlan(6, 2, "eth0.20", 20);
        let tail = &v[v.len() - 24..];
        assert_eq!(u16::from_ne_bytes([tail[0], tail[1]]), 24);
        assert_eq!(u16::from_ne_bytes([tail[2], tail[3]]), 18);
        assert_eq!(&tail[8..12], b"vlan");
        assert_eq!(u16::from_ne_bytes([tail[20], tail[21]]), 20);
    }

    #[test]
    fn ack_parsing() {
        let mut ack = vec![0u8; 36];
        ack[0..4].copy_from_slice(&36u32.to_ne_bytes());
        ack[4..6].copy_from_slice(&NLMSG_ERROR.to_ne_bytes());
        ack[8..12].copy_from_slice(&7u32.to_ne_bytes());
        ack[16..20].copy_from_slice(&(-17i32).to_ne_bytes());
        assert_eq!(ack_errno(&ack, 7), Some(-17));
        assert_eq!(ack_errno(&ack, 8), None);
        assert_eq!(ack_errno(&ack[..10], 7), None);
    }
}
