//! Writing export datagrams into a classic pcap file (Ethernet/IPv4/UDP), the
//! same shape tcpdump records on a collector.

use std::io::{self, Write};
use std::net::SocketAddrV4;

/// A pcap writer.
pub struct PcapWriter<W: Write> {
    out: W,
}

fn checksum(h: &[u8]) -> u16 {
    let mut sum: u32 = h
        .chunks(2)
        .map(|c| u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]) as u32)
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

impl<W: Write> PcapWriter<W> {
    pub fn new(mut out: W) -> io::Result<PcapWriter<W>> {
        out.write_all(&0xa1b2_c3d4u32.to_le_bytes())?;
        out.write_all(&2u16.to_le_bytes())?;
        out.write_all(&4u16.to_le_bytes())?;
        out.write_all(&[0; 8])?;
        out.write_all(&65_535u32.to_le_bytes())?;
        out.write_all(&1u32.to_le_bytes())?; // Ethernet
        Ok(PcapWriter { out })
    }

    /// One UDP datagram captured at `ts_ms`.
    pub fn datagram(&mut self, ts_ms: u64, src: SocketAddrV4, dst: SocketAddrV4, payload: &[u8]) -> io::Result<()> {
        let ip_len = 20 + 8 + payload.len();
        let frame_len = 14 + ip_len;
        self.out.write_all(&((ts_ms / 1000) as u32).to_le_bytes())?;
        self.out.write_all(&(((ts_ms % 1000) * 1000) as u32).to_le_bytes())?;
        self.out.write_all(&(frame_len as u32).to_le_bytes())?;
        self.out.write_all(&(frame_len as u32).to_le_bytes())?;
        self.out.write_all(&[0, 0, 0, 0, 0, 2, 0, 0, 0, 0, 0, 1, 0x08, 0x00])?;
        let mut ip = [0u8; 20];
        ip[0] = 0x45;
        ip[2..4].copy_from_slice(&(ip_len as u16).to_be_bytes());
        ip[6] = 0x40; // don't fragment
        ip[8] = 64;
        ip[9] = 17;
        ip[12..16].copy_from_slice(&src.ip().octets());
        ip[16..20].copy_from_slice(&dst.ip().octets());
        let c = checksum(&ip);
        ip[10..12].copy_from_slice(&c.to_be_bytes());
        self.out.write_all(&ip)?;
        self.out.write_all(&src.port().to_be_bytes())?;
        self.out.write_all(&dst.port().to_be_bytes())?;
        self.out.write_all(&((8 + payload.len()) as u16).to_be_bytes())?;
        self.out.write_all(&[0, 0])?;
        self.out.write_all(payload)
    }

    pub fn finish(mut self) -> io::Result<W> {
        self.out.flush()?;
        Ok(self.out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv4_header_checksum_verifies() {
        let mut w = PcapWriter::new(Vec::new()).unwrap_or_else(|e| panic!("{e}"));
        w.datagram(
            1_000,
            "10.0.0.1:5000".parse().unwrap_or(SocketAddrV4::new([0; 4].into(), 0)),
            "10.0.0.2:2055".parse().unwrap_or(SocketAddrV4::new([0; 4].into(), 0)),
            b"abc",
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let v = w.finish().unwrap_or_default();
        let ip = &v[24 + 16 + 14..24 + 16 + 34];
        assert_eq!(checksum(ip), 0);
    }
}
