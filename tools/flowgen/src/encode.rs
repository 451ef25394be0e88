//! Export encoders: NetFlow v5, NetFlow v9 and IPFIX datagrams from [`Flow`]s,
//! written from the RFCs (3954, 7011) independently of the collector's decoder.
//!
//! An [`Exporter`] keeps what a real exporter keeps: sequence numbers, boot
//! time (for sysUptime-relative v5/v9 times), and a template refresh interval.

use crate::model::Flow;
use std::net::IpAddr;

/// Export protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    V5,
    V9,
    Ipfix,
}

impl std::str::FromStr for Version {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "v5" | "5" => Ok(Version::V5),
            "v9" | "9" => Ok(Version::V9),
            "ipfix" | "v10" | "10" => Ok(Version::Ipfix),
            _ => Err(format!("unknown export version {s:?} (v5, v9, ipfix)")),
        }
    }
}

const MAX_DATAGRAM: usize = 1400;
const TID_V4: u16 = 256;
const TID_V6: u16 = 257;

/// v9 template fields (type, length) for IPv4 and IPv6 flows.
const V9_FIELDS_V4: [(u16, u16); 12] = [
    (8, 4),
    (12, 4),
    (7, 2),
    (11, 2),
    (4, 1),
    (6, 1),
    (1, 8),
    (2, 8),
    (22, 4),
    (21, 4),
    (10, 2),
    (14, 2),
];
const V9_FIELDS_V6: [(u16, u16); 12] = [
    (27, 16),
    (28, 16),
    (7, 2),
    (11, 2),
    (4, 1),
    (6, 1),
    (1, 8),
    (2, 8),
    (22, 4),
    (21, 4),
    (10, 2),
    (14, 2),
];
/// IPFIX: absolute millisecond times (152/153) and 4-byte interfaces.
const IPFIX_FIELDS_V4: [(u16, u16); 12] = [
    (8, 4),
    (12, 4),
    (7, 2),
    (11, 2),
    (4, 1),
    (6, 1),
    (1, 8),
    (2, 8),
    (152, 8),
    (153, 8),
    (10, 4),
    (14, 4),
];
const IPFIX_FIELDS_V6: [(u16, u16); 12] = [
    (27, 16),
    (28, 16),
    (7, 2),
    (11, 2),
    (4, 1),
    (6, 1),
    (1, 8),
    (2, 8),
    (152, 8),
    (153, 8),
    (10, 4),
    (14, 4),
];

/// A stateful exporter.
#[derive(Debug, Clone)]
pub struct Exporter {
    pub version: Version,
    /// Observation domain / source id.
    pub domain: u32,
    /// Exporter boot time, UTC ms (for sysUptime).
    pub boot_ms: u64,
    /// Send templates every this many datagrams (and in the first); 0 = never
    /// (data sets only: the collector must already know the templates).
    pub template_every: u32,
    /// Sampling interval announced (v5 header; v9/IPFIX via IE 34 in an options record is not emitted).
    pub v5_sampling: u16,
    seq: u32,
    datagrams: u32,
}

impl Exporter {
    pub fn new(version: Version, boot_ms: u64) -> Exporter {
        Exporter {
            version,
            domain: 0,
            boot_ms,
            template_every: 20,
            v5_sampling: 0,
            seq: 0,
            datagrams: 0,
        }
    }

    /// Encode flows (all exported at `export_ms`) into datagrams with their record counts.
    pub fn encode(&mut self, flows: &[Flow], export_ms: u64) -> Vec<(u32, Vec<u8>)> {
        match self.version {
            Version::V5 => self.v5(flows, export_ms),
            Version::V9 | Version::Ipfix => self.templated(flows, export_ms),
        }
    }

    fn uptime(&self, t: u64) -> u32 {
        t.saturating_sub(self.boot_ms) as u32
    }

    fn v5(&mut self, flows: &[Flow], export_ms: u64) -> Vec<(u32, Vec<u8>)> {
        let v4: Vec<&Flow> = flows.iter().filter(|f| f.src.is_ipv4() && f.dst.is_ipv4()).collect();
        let mut out = Vec::new();
        for chunk in v4.chunks(30) {
            let mut d = Vec::with_capacity(24 + 48 * chunk.len());
            d.extend_from_slice(&5u16.to_be_bytes());
            d.extend_from_slice(&(chunk.len() as u16).to_be_bytes());
            d.extend_from_slice(&self.uptime(export_ms).to_be_bytes());
            d.extend_from_slice(&((export_ms / 1000) as u32).to_be_bytes());
            d.extend_from_slice(&(((export_ms % 1000) * 1_000_000) as u32).to_be_bytes());
            d.extend_from_slice(&self.seq.to_be_bytes());
            d.push(0);
            d.push(self.domain as u8);
            d.extend_from_slice(&self.v5_sampling.to_be_bytes());
            for f in chunk {
                let (IpAddr::V4(s), IpAddr::V4(t)) = (f.src, f.dst) else { continue };
                d.extend_from_slice(&s.octets());
                d.extend_from_slice(&t.octets());
                d.extend_from_slice(&[0; 4]); // next hop
                d.extend_from_slice(&f.in_if.to_be_bytes());
                d.extend_from_slice(&f.out_if.to_be_bytes());
                d.extend_from_slice(&(f.packets.min(u32::MAX as u64) as u32).to_be_bytes());
                d.extend_from_slice(&(f.bytes.min(u32::MAX as u64) as u32).to_be_bytes());
                d.extend_from_slice(&self.uptime(f.start_ms).to_be_bytes());
                d.extend_from_slice(&self.uptime(f.end_ms).to_be_bytes());
                d.extend_from_slice(&f.src_port.to_be_bytes());
                d.extend_from_slice(&f.dst_port.to_be_bytes());
                d.push(0);
                d.push(f.tcp_flags);
                d.push(f.proto);
                d.push(0); // tos
                d.extend_from_slice(&[0; 4]); // as
                d.extend_from_slice(&[0, 0, 0, 0]); // masks, pad
            }
            self.seq = self.seq.wrapping_add(chunk.len() as u32);
            out.push((chunk.len() as u32, d));
        }
        out
    }

    fn fields(&self, v6: bool) -> &'static [(u16, u16)] {
        match (self.version, v6) {
            (Version::Ipfix, false) => &IPFIX_FIELDS_V4,
            (Version::Ipfix, true) => &IPFIX_FIELDS_V6,
            (_, false) => &V9_FIELDS_V4,
            (_, true) => &V9_FIELDS_V6,
        }
    }

    fn record(&self, f: &Flow, out: &mut Vec<u8>) {
        let ipfix = self.version == Version::Ipfix;
        match (f.src, f.dst) {
            (IpAddr::V4(s), IpAddr::V4(t)) => {
                out.extend_from_slice(&s.octets());
                out.extend_from_slice(&t.octets());
            }
            (s, t) => {
                let v6 = |a: IpAddr| match a {
                    IpAddr::V4(a) => a.to_ipv6_mapped().octets(),
                    IpAddr::V6(a) => a.octets(),
                };
                out.extend_from_slice(&v6(s));
                out.extend_from_slice(&v6(t));
            }
        }
        out.extend_from_slice(&f.src_port.to_be_bytes());
        out.extend_from_slice(&f.dst_port.to_be_bytes());
        out.push(f.proto);
        out.push(f.tcp_flags);
        out.extend_from_slice(&f.bytes.to_be_bytes());
        out.extend_from_slice(&f.packets.to_be_bytes());
        if ipfix {
            out.extend_from_slice(&f.start_ms.to_be_bytes());
            out.extend_from_slice(&f.end_ms.to_be_bytes());
            out.extend_from_slice(&(f.in_if as u32).to_be_bytes());
            out.extend_from_slice(&(f.out_if as u32).to_be_bytes());
        } else {
            out.extend_from_slice(&self.uptime(f.start_ms).to_be_bytes());
            out.extend_from_slice(&self.uptime(f.end_ms).to_be_bytes());
            out.extend_from_slice(&f.in_if.to_be_bytes());
            out.extend_from_slice(&f.out_if.to_be_bytes());
        }
    }

    fn template_set(&self) -> Vec<u8> {
        let ipfix = self.version == Version::Ipfix;
        let mut s = Vec::new();
        s.extend_from_slice(&(if ipfix { 2u16 } else { 0u16 }).to_be_bytes());
        s.extend_from_slice(&[0, 0]);
        for (tid, v6) in [(TID_V4, false), (TID_V6, true)] {
            let fields = self.fields(v6);
            s.extend_from_slice(&tid.to_be_bytes());
            s.extend_from_slice(&(fields.len() as u16).to_be_bytes());
            for (t, l) in fields {
                s.extend_from_slice(&t.to_be_bytes());
                s.extend_from_slice(&l.to_be_bytes());
            }
        }
        let len = s.len() as u16;
        s[2..4].copy_from_slice(&len.to_be_bytes());
        s
    }

    fn header(&self, export_ms: u64, count: u16, length: u16) -> Vec<u8> {
        let mut h = Vec::with_capacity(20);
        match self.version {
            Version::Ipfix => {
                h.extend_from_slice(&10u16.to_be_bytes());
                h.extend_from_slice(&length.to_be_bytes());
                h.extend_from_slice(&((export_ms / 1000) as u32).to_be_bytes());
                h.extend_from_slice(&self.seq.to_be_bytes());
                h.extend_from_slice(&self.domain.to_be_bytes());
            }
            _ => {
                h.extend_from_slice(&9u16.to_be_bytes());
                h.extend_from_slice(&count.to_be_bytes());
                h.extend_from_slice(&self.uptime(export_ms).to_be_bytes());
                h.extend_from_slice(&((export_ms / 1000) as u32).to_be_bytes());
                h.extend_from_slice(&self.seq.to_be_bytes());
                h.extend_from_slice(&self.domain.to_be_bytes());
            }
        }
        h
    }

    fn templated(&mut self, flows: &[Flow], export_ms: u64) -> Vec<(u32, Vec<u8>)> {
        let ipfix = self.version == Version::Ipfix;
        let hlen = if ipfix { 16 } else { 20 };
        let mut out = Vec::new();
        let mut i = 0;
        while i < flows.len() {
            let with_template = self.template_every != 0 && self.datagrams.is_multiple_of(self.template_every);
            let mut body = Vec::with_capacity(MAX_DATAGRAM);
            let mut count: u16 = 0;
            if with_template {
                body.extend_from_slice(&self.template_set());
                count += 2;
            }
            let v6 = !(flows[i].src.is_ipv4() && flows[i].dst.is_ipv4());
            let tid = if v6 { TID_V6 } else { TID_V4 };
            let set_start = body.len();
            body.extend_from_slice(&tid.to_be_bytes());
            body.extend_from_slice(&[0, 0]);
            let mut records = 0u32;
            while i < flows.len() {
                let f = &flows[i];
                let fv6 = !(f.src.is_ipv4() && f.dst.is_ipv4());
                if fv6 != v6 || hlen + body.len() + 64 > MAX_DATAGRAM {
                    break;
                }
                self.record(f, &mut body);
                records += 1;
                i += 1;
            }
            let set_len = (body.len() - set_start) as u16;
            body[set_start + 2..set_start + 4].copy_from_slice(&set_len.to_be_bytes());
            count += records as u16;
            let mut d = self.header(export_ms, count, (hlen + body.len()) as u16);
            d.extend_from_slice(&body);
            // v9 counts export packets; IPFIX counts data records.
            self.seq = self.seq.wrapping_add(if ipfix { records } else { 1 });
            self.datagrams += 1;
            out.push((records, d));
        }
        out
    }
}
