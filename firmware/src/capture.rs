//! Capture files: UDP datagrams out of pcap and pcapng files, for `ingest`.
//!
//! Frames are walked with smoltcp's checked wire parsers (Ethernet with VLAN
//! tags, Linux cooked v1/v2, BSD loopback, raw IP); each UDP payload is handed
//! on with its capture timestamp and the sender's address and port, which
//! becomes the exporter. Anything that is not a complete unfragmented UDP
//! datagram is counted by reason and skipped; nothing here panics on bad bytes.

use pcap_parser::pcapng::Block;
use pcap_parser::{Linktype, PcapBlockOwned, PcapError, create_reader};
use smoltcp::wire::{EthernetFrame, EthernetProtocol, IpProtocol, Ipv4Packet, Ipv6Packet, UdpPacket};
use std::fs::File;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use thiserror::Error;

#[derive(Debug, Error)]
pub enum CaptureError {
    #[error("{path}: cannot open: {source}")]
    Open {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: not a pcap or pcapng file ({detail})")]
    Format { path: PathBuf, detail: String },
    #[error("{path}: damaged after {} frames, at byte {offset}: {detail} (the frames before it were read)", stats.frames)]
    Corrupt {
        path: PathBuf,
        /// What was read before the damage.
        stats: CaptureStats,
        offset: u64,
        detail: String,
    },
}

impl CaptureError {
    /// What was read before the error (nothing if the file could not be opened).
    pub fn stats(&self) -> CaptureStats {
        match self {
            CaptureError::Corrupt { stats, .. } => stats.clone(),
            _ => CaptureStats::default(),
        }
    }
}

/// A pcap-parser error in words (its debug form dumps raw bytes).
fn describe<I>(e: &PcapError<I>) -> String {
    match e {
        PcapError::Eof => "the file is empty".into(),
        PcapError::BufferTooSmall => "a block is larger than 1 MiB".into(),
        PcapError::UnexpectedEof | PcapError::Incomplete(_) => "the file ends in the middle of a block (truncated)".into(),
        PcapError::ReadError => "the file could not be read".into(),
        PcapError::HeaderNotRecognized => "its first bytes are neither a pcap nor a pcapng header".into(),
        PcapError::NomError(_, kind) | PcapError::OwnedNomError(_, kind) => {
            format!("a block does not follow the format ({})", kind.description())
        }
    }
}

/// One UDP datagram found in a capture.
#[derive(Debug)]
pub struct Datagram<'a> {
    pub ts_ms: u64,
    pub src: SocketAddr,
    pub dst: SocketAddr,
    pub payload: &'a [u8],
}

/// What was found and skipped.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct CaptureStats {
    pub frames: u64,
    pub udp: u64,
    pub not_ip: u64,
    pub not_udp: u64,
    pub fragments: u64,
    pub truncated: u64,
    pub unsupported_linktype: u64,
}

/// Decode a link-layer frame into a UDP datagram.
pub fn udp_of_frame<'a>(linktype: Linktype, data: &'a [u8], stats: &mut CaptureStats) -> Option<(SocketAddr, SocketAddr, &'a [u8])> {
    let l3 = match linktype {
        Linktype::ETHERNET => {
            let eth = match EthernetFrame::new_checked(data) {
                Ok(e) => e,
                Err(_) => {
                    stats.truncated += 1;
                    return None;
                }
            };
            let mut ethertype = u16::from(eth.ethertype());
            let mut off = EthernetFrame::<&[u8]>::header_len();
            // 802.1Q / 802.1ad tags.
            while ethertype == 0x8100 || ethertype == 0x88a8 {
                let Some(t) = data.get(off + 2..off + 4) else {
                    stats.truncated += 1;
                    return None;
                };
                ethertype = u16::from_be_bytes([t[0], t[1]]);
                off += 4;
            }
            match EthernetProtocol::from(ethertype) {
                EthernetProtocol::Ipv4 | EthernetProtocol::Ipv6 => data.get(off..)?,
                _ => {
                    stats.not_ip += 1;
                    return None;
                }
            }
        }
        Linktype::LINUX_SLL => data.get(16..)?,
        Linktype::LINUX_SLL2 => data.get(20..)?,
        Linktype::NULL | Linktype::LOOP => data.get(4..)?,
        Linktype::RAW | Linktype::IPV4 | Linktype::IPV6 => data,
        Linktype(12) | Linktype(14) => data,
        _ => {
            stats.unsupported_linktype += 1;
            return None;
        }
    };
    udp_of_ip(l3, stats)
}

fn udp_of_ip<'a>(l3: &'a [u8], stats: &mut CaptureStats) -> Option<(SocketAddr, SocketAddr, &'a [u8])> {
    let version = l3.first().map(|b| b >> 4);
    let (src_ip, dst_ip, l4): (IpAddr, IpAddr, &[u8]) = match version {
        Some(4) => {
            let Ok(ip) = Ipv4Packet::new_checked(l3) else {
                stats.truncated += 1;
                return None;
            };
            if ip.more_frags() || ip.frag_offset() != 0 {
                stats.fragments += 1;
                return None;
            }
            if ip.next_header() != IpProtocol::Udp {
                stats.not_udp += 1;
                return None;
            }
            let hl = ip.header_len() as usize;
            let total = (ip.total_len() as usize).min(l3.len());
            (IpAddr::V4(ip.src_addr()), IpAddr::V4(ip.dst_addr()), l3.get(hl..total)?)
        }
        Some(6) => {
            let Ok(ip) = Ipv6Packet::new_checked(l3) else {
                stats.truncated += 1;
                return None;
            };
            if ip.next_header() != IpProtocol::Udp {
                stats.not_udp += 1;
                return None;
            }
            (IpAddr::V6(ip.src_addr()), IpAddr::V6(ip.dst_addr()), ip.payload())
        }
        _ => {
            stats.not_ip += 1;
            return None;
        }
    };
    let Ok(udp) = UdpPacket::new_checked(l4) else {
        stats.truncated += 1;
        return None;
    };
    let src = SocketAddr::new(src_ip, udp.src_port());
    let dst = SocketAddr::new(dst_ip, udp.dst_port());
    stats.udp += 1;
    Some((src, dst, udp.payload()))
}

/// Read every UDP datagram of a pcap/pcapng file, in file order.
pub fn read_capture(path: &Path, mut on_datagram: impl FnMut(Datagram<'_>)) -> Result<CaptureStats, CaptureError> {
    let file = File::open(path).map_err(|source| CaptureError::Open {
        path: path.to_path_buf(),
        source,
    })?;
    let mut reader = create_reader(1 << 20, file).map_err(|e| CaptureError::Format {
        path: path.to_path_buf(),
        detail: describe(&e),
    })?;
    let mut stats = CaptureStats::default();
    let mut legacy_linktype = Linktype::ETHERNET;
    let mut legacy_nanos = false;
    // pcapng interfaces: (linktype, ticks per second, offset seconds)
    let mut interfaces: Vec<(Linktype, u64, i64)> = Vec::new();
    let mut consumed: u64 = 0;
    loop {
        match reader.next() {
            Ok((offset, block)) => {
                match block {
                    PcapBlockOwned::LegacyHeader(h) => {
                        legacy_linktype = h.network;
                        legacy_nanos = h.is_nanosecond_precision();
                    }
                    PcapBlockOwned::Legacy(b) => {
                        stats.frames += 1;
                        let frac_ms = if legacy_nanos {
                            b.ts_usec as u64 / 1_000_000
                        } else {
                            b.ts_usec as u64 / 1000
                        };
                        let ts_ms = b.ts_sec as u64 * 1000 + frac_ms;
                        if let Some((src, dst, payload)) = udp_of_frame(legacy_linktype, b.data, &mut stats) {
                            on_datagram(Datagram { ts_ms, src, dst, payload });
                        }
                    }
                    PcapBlockOwned::NG(Block::SectionHeader(_)) => interfaces.clear(),
                    PcapBlockOwned::NG(Block::InterfaceDescription(idb)) => {
                        interfaces.push((idb.linktype, idb.ts_resolution().unwrap_or(1_000_000).max(1), idb.ts_offset()));
                    }
                    PcapBlockOwned::NG(Block::EnhancedPacket(epb)) => {
                        stats.frames += 1;
                        let Some(&(lt, res, off)) = interfaces.get(epb.if_id as usize) else {
                            stats.unsupported_linktype += 1;
                            reader.consume(offset);
                            consumed += offset as u64;
                            continue;
                        };
                        let ticks = ((epb.ts_high as u64) << 32) | epb.ts_low as u64;
                        let ms = (ticks as u128 * 1000 / res as u128) as u64;
                        let ts_ms = (ms as i64 + off * 1000).max(0) as u64;
                        let data = &epb.data[..(epb.caplen as usize).min(epb.data.len())];
                        if let Some((src, dst, payload)) = udp_of_frame(lt, data, &mut stats) {
                            on_datagram(Datagram { ts_ms, src, dst, payload });
                        }
                    }
                    PcapBlockOwned::NG(Block::SimplePacket(spb)) => {
                        stats.frames += 1;
                        let lt = interfaces.first().map(|i| i.0).unwrap_or(Linktype::ETHERNET);
                        if let Some((src, dst, payload)) = udp_of_frame(lt, spb.data, &mut stats) {
                            on_datagram(Datagram {
                                ts_ms: 0,
                                src,
                                dst,
                                payload,
                            });
                        }
                    }
                    PcapBlockOwned::NG(_) => {}
                }
                reader.consume(offset);
                consumed += offset as u64;
            }
            Err(PcapError::Eof) => break,
            Err(PcapError::Incomplete(_)) => {
                if let Err(e) = reader.refill() {
                    return Err(CaptureError::Corrupt {
                        path: path.to_path_buf(),
                        stats,
                        offset: consumed,
                        detail: describe(&e),
                    });
                }
            }
            Err(e) => {
                return Err(CaptureError::Corrupt {
                    path: path.to_path_buf(),
                    stats,
                    offset: consumed,
                    detail: describe(&e),
                });
            }
        }
    }
    Ok(stats)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostile_frames_never_panic() {
        let mut st = CaptureStats::default();
        for lt in [Linktype::ETHERNET, Linktype::RAW, Linktype::LINUX_SLL, Linktype::NULL] {
            for len in 0..64 {
                let buf: Vec<u8> = (0..len).map(|i| (i * 37 + 5) as u8).collect();
                let _ = udp_of_frame(lt, &buf, &mut st);
                let mut v4 = buf.clone();
                if !v4.is_empty() {
                    v4[0] = 0x45;
                }
                let _ = udp_of_frame(lt, &v4, &mut st);
                let mut v6 = buf;
                if !v6.is_empty() {
                    v6[0] = 0x60;
                }
                let _ = udp_of_frame(lt, &v6, &mut st);
            }
        }
        assert!(st.truncated + st.not_ip + st.not_udp > 0);
    }

    #[test]
    fn raw_ipv4_udp() {
        // 20-byte IPv4 header + 8-byte UDP header + 3 payload bytes.
        let mut p = vec![0x45, 0, 0, 31, 0, 0, 0x40, 0, 64, 17, 0, 0, 192, 0, 2, 1, 192, 0, 2, 2];
        p.extend_from_slice(&[0x08, 0x07, 0x08, 0x08, 0, 11, 0, 0, 1, 2, 3]);
        let mut st = CaptureStats::default();
        let (s, d, pl) = udp_of_frame(Linktype::RAW, &p, &mut st).unwrap_or_else(|| panic!("{st:?}"));
        assert_eq!(s, "192.0.2.1:2055".parse().unwrap_or(s));
        assert_eq!(d.port(), 2056);
        assert_eq!(pl, &[1, 2, 3]);
    }
}
