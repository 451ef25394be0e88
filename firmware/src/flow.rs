//! The normalized flow: the one type every stage after decoding shares.
//!
//! Decoders turn NetFlow v5/v9 and IPFIX records into [`FlowRecord`]s (UTC
//! milliseconds, counters already multiplied by the sampling rate); the store,
//! the query engine and the detectors only ever see this type, in [`FlowBatch`]es
//! passed around as `Arc` over bounded channels.

use serde::{Deserialize, Serialize};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;

/// Where a flow goes relative to the site's internal networks (config
/// `[network] internal`), computed once during normalization.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[repr(u8)]
pub enum Direction {
    /// Neither end could be classified (no internal networks configured).
    #[default]
    Unknown = 0,
    /// Internal source to external destination.
    Outbound = 1,
    /// External source to internal destination.
    Inbound = 2,
    /// Both ends internal.
    Internal = 3,
    /// Both ends external (transit).
    External = 4,
}

impl Direction {
    /// The stable name used in query output and filters.
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Unknown => "unknown",
            Direction::Outbound => "outbound",
            Direction::Inbound => "inbound",
            Direction::Internal => "internal",
            Direction::External => "external",
        }
    }

    /// Inverse of [`Direction::as_str`].
    pub fn from_name(s: &str) -> Option<Direction> {
        Some(match s {
            "unknown" => Direction::Unknown,
            "outbound" => Direction::Outbound,
            "inbound" => Direction::Inbound,
            "internal" => Direction::Internal,
            "external" => Direction::External,
            _ => return None,
        })
    }

    /// Decode the stored byte; unknown values map to `Unknown`.
    pub fn from_u8(v: u8) -> Direction {
        match v {
            1 => Direction::Outbound,
            2 => Direction::Inbound,
            3 => Direction::Internal,
            4 => Direction::External,
            _ => Direction::Unknown,
        }
    }
}

/// One unidirectional flow as stored and queried.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FlowRecord {
    /// First packet, UTC milliseconds since the Unix epoch.
    pub start_ms: u64,
    /// Last packet, UTC milliseconds since the Unix epoch (>= `start_ms`).
    pub end_ms: u64,
    pub src: IpAddr,
    pub dst: IpAddr,
    pub src_port: u16,
    pub dst_port: u16,
    /// IP protocol number.
    pub proto: u8,
    /// Cumulative TCP flags (up to the 9 bits IPFIX defines).
    pub tcp_flags: u16,
    /// Octets, multiplied by `sampling_rate`.
    pub bytes: u64,
    /// Packets, multiplied by `sampling_rate`.
    pub packets: u64,
    pub in_if: u32,
    pub out_if: u32,
    /// Transport address the export datagram came from.
    pub exporter: SocketAddr,
    /// 1 for unsampled; N for 1-in-N sampling.
    pub sampling_rate: u32,
    pub direction: Direction,
    /// Quality marks set during normalization ([`MARK_TIME_CLAMPED`]).
    pub marks: u8,
}

/// The flow's times were implausibly far from its export time (or before 2000,
/// or ahead of the box's clock) and were clamped to the export time.
pub const MARK_TIME_CLAMPED: u8 = 1;

impl Default for FlowRecord {
    fn default() -> Self {
        FlowRecord {
            start_ms: 0,
            end_ms: 0,
            src: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            dst: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            src_port: 0,
            dst_port: 0,
            proto: 0,
            tcp_flags: 0,
            bytes: 0,
            packets: 0,
            in_if: 0,
            out_if: 0,
            exporter: SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0),
            sampling_rate: 1,
            direction: Direction::Unknown,
            marks: 0,
        }
    }
}

impl FlowRecord {
    /// Duration in milliseconds.
    pub fn duration_ms(&self) -> u64 {
        self.end_ms.saturating_sub(self.start_ms)
    }

    /// Whether the times were clamped during normalization.
    pub fn time_clamped(&self) -> bool {
        self.marks & MARK_TIME_CLAMPED != 0
    }
}

/// A group of flows that travels through the pipeline as one unit.
pub type FlowBatch = Arc<Vec<FlowRecord>>;

/// IANA protocol names used in filters and table output.
pub fn proto_name(p: u8) -> Option<&'static str> {
    Some(match p {
        1 => "icmp",
        2 => "igmp",
        6 => "tcp",
        17 => "udp",
        47 => "gre",
        50 => "esp",
        51 => "ah",
        58 => "icmp6",
        132 => "sctp",
        _ => return None,
    })
}

/// Inverse of [`proto_name`].
pub fn proto_number(name: &str) -> Option<u8> {
    Some(match name.to_ascii_lowercase().as_str() {
        "icmp" => 1,
        "igmp" => 2,
        "tcp" => 6,
        "udp" => 17,
        "gre" => 47,
        "esp" => 50,
        "ah" => 51,
        "icmp6" | "ipv6-icmp" | "icmpv6" => 58,
        "sctp" => 132,
        _ => return None,
    })
}

/// nfdump-style flag string (`.AP.SF` order: C E U A P R S F).
pub fn tcp_flags_string(flags: u16) -> String {
    const NAMES: [(u16, char); 8] = [
        (0x80, 'C'),
        (0x40, 'E'),
        (0x20, 'U'),
        (0x10, 'A'),
        (0x08, 'P'),
        (0x04, 'R'),
        (0x02, 'S'),
        (0x01, 'F'),
    ];
    NAMES.iter().map(|&(bit, c)| if flags & bit != 0 { c } else { '.' }).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_render_like_nfdump() {
        assert_eq!(tcp_flags_string(0x1b), "...AP.SF");
        assert_eq!(tcp_flags_string(0x02), "......S.");
        assert_eq!(tcp_flags_string(0x14), "...A.R..");
    }

    #[test]
    fn proto_names_round_trip() {
        for p in [1u8, 6, 17, 58, 132] {
            let name = proto_name(p).unwrap_or_default();
            assert_eq!(proto_number(name), Some(p));
        }
        assert_eq!(proto_number("bogus"), None);
    }
}
