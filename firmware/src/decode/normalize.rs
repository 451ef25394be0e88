//! Field-level normalization: NetFlow/IPFIX information elements into a
//! [`FlowRecord`], including time conversion and sampling scale.
//!
//! Times: v5 and v9 `FIRST/LAST_SWITCHED` are sysUptime-relative and converted
//! with the header's unix time; IPFIX absolute seconds/milliseconds/NTP
//! (150-157) are used as they are; delta microseconds (158/159) are relative to
//! the export time; sysUptime forms (21/22) are anchored by
//! `systemInitTimeMilliseconds` (160) from the record or the exporter's options.

use crate::decode::sampling::SamplingInfo;
use crate::flow::FlowRecord;
use std::net::IpAddr;

/// How far a flow time may lead the export's sysUptime and still count as "now".
const UPTIME_LEAD_MS: u32 = 3_600_000;

/// Seconds between the NTP era and the Unix epoch.
const NTP_UNIX_OFFSET: u64 = 2_208_988_800;

/// RFC 5103 reverse information elements (PEN 29305), numbered here as
/// `REVERSE | forward IE` (only the counters and flags a reverse record needs).
pub const REVERSE: u16 = 0x8000;
pub const REVERSE_OCTETS: u16 = REVERSE | 1;
pub const REVERSE_PACKETS: u16 = REVERSE | 2;
pub const REVERSE_TCP_FLAGS: u16 = REVERSE | 6;
/// The IANA private enterprise number of RFC 5103's reverse elements.
pub const REVERSE_PEN: u32 = 29305;

/// Whether the builder reads IE `ie` when it is `len` bytes long (other sizes
/// of these elements are not what RFC 7011 allows and are skipped).
pub fn raw_field_known(ie: u16, len: u16) -> bool {
    match ie {
        REVERSE_OCTETS | REVERSE_PACKETS | REVERSE_TCP_FLAGS => (1..=8).contains(&len),
        8 | 12 => len == 4,
        27 | 28 => len == 16,
        150 | 151 => len == 4,
        152 | 153 | 154 | 155 | 156 | 157 | 160 => len == 8,
        1 | 2 | 4 | 6 | 7 | 10 | 11 | 14 | 21 | 22 | 23 | 24 | 32 | 34 | 48 | 50 | 85 | 86 | 139 | 158 | 159 | 302 | 305 | 306 | 309
        | 310 => (1..=8).contains(&len),
        _ => false,
    }
}

#[inline]
fn be(b: &[u8]) -> u64 {
    b.iter().fold(0u64, |a, &x| (a << 8) | x as u64)
}

/// Time anchors of the datagram a record came in.
#[derive(Debug, Clone, Copy, Default)]
pub struct TimeContext {
    /// Export time from the header, UTC ms.
    pub export_ms: u64,
    /// sysUptime at export (v9), ms.
    pub sys_uptime_ms: Option<u32>,
    /// Exporter boot time (IPFIX 160 from options data), UTC ms.
    pub system_init_ms: Option<u64>,
}

/// Accumulates the fields of one data record.
#[derive(Debug, Default)]
pub struct RecordBuilder {
    src4: Option<IpAddr>,
    dst4: Option<IpAddr>,
    src6: Option<IpAddr>,
    dst6: Option<IpAddr>,
    src_port: u16,
    dst_port: u16,
    icmp: Option<u16>,
    proto: u8,
    tcp_flags: u16,
    bytes: Option<u64>,
    packets: Option<u64>,
    post_bytes: Option<u64>,
    post_packets: Option<u64>,
    in_if: u32,
    out_if: u32,
    start_abs: Option<u64>,
    end_abs: Option<u64>,
    start_up: Option<u64>,
    end_up: Option<u64>,
    start_delta_us: Option<u64>,
    end_delta_us: Option<u64>,
    system_init: Option<u64>,
    /// RFC 5103 biflow: the reverse direction's counters and flags.
    rev_bytes: Option<u64>,
    rev_packets: Option<u64>,
    rev_flags: u16,
    pub sampling: SamplingInfo,
}

impl RecordBuilder {
    /// Fill from a fixed-format v5/v7 record, field by field (no information
    /// element numbers in between). First/last are sysUptime milliseconds.
    #[allow(clippy::too_many_arguments)]
    pub fn apply_v5(
        &mut self,
        src: std::net::Ipv4Addr,
        dst: std::net::Ipv4Addr,
        sport: u16,
        dport: u16,
        proto: u8,
        flags: u8,
        octets: u32,
        pkts: u32,
        input: u16,
        output: u16,
        first: u32,
        last: u32,
    ) {
        self.src4 = Some(IpAddr::V4(src));
        self.dst4 = Some(IpAddr::V4(dst));
        self.src_port = sport;
        self.dst_port = dport;
        self.proto = proto;
        self.tcp_flags = u16::from(flags);
        self.bytes = Some(u64::from(octets));
        self.packets = Some(u64::from(pkts));
        self.in_if = u32::from(input);
        self.out_if = u32::from(output);
        self.start_up = Some(u64::from(first));
        self.end_up = Some(u64::from(last));
    }

    /// Apply one field read from the wire (only sizes [`raw_field_known`] accepts).
    #[inline]
    pub fn apply_raw(&mut self, ie: u16, b: &[u8]) {
        match ie {
            8 | 12 => {
                let ip = Some(IpAddr::from([b[0], b[1], b[2], b[3]]));
                if ie == 8 { self.src4 = ip } else { self.dst4 = ip }
            }
            27 | 28 => {
                let mut a = [0u8; 16];
                a.copy_from_slice(&b[..16]);
                let ip = Some(IpAddr::from(a));
                if ie == 27 { self.src6 = ip } else { self.dst6 = ip }
            }
            150 | 151 => {
                let t = Some(be(b) * 1000);
                if ie == 150 { self.start_abs = t } else { self.end_abs = t }
            }
            152 | 153 => {
                let t = Some(be(b));
                if ie == 152 { self.start_abs = t } else { self.end_abs = t }
            }
            154..=157 => {
                let secs = be(&b[..4]);
                let frac = be(&b[4..8]);
                let t = Some(secs.saturating_sub(NTP_UNIX_OFFSET) * 1000 + ((frac * 1000) >> 32));
                if ie.is_multiple_of(2) {
                    self.start_abs = t
                } else {
                    self.end_abs = t
                }
            }
            160 => self.system_init = Some(be(b)),
            _ => {
                let v = be(b);
                match ie {
                    1 => self.bytes = Some(v),
                    2 => self.packets = Some(v),
                    REVERSE_OCTETS => self.rev_bytes = Some(v),
                    REVERSE_PACKETS => self.rev_packets = Some(v),
                    REVERSE_TCP_FLAGS => self.rev_flags = v as u16,
                    4 => self.proto = v as u8,
                    6 => self.tcp_flags = v as u16,
                    7 => self.src_port = v as u16,
                    10 => self.in_if = v as u32,
                    11 => self.dst_port = v as u16,
                    14 => self.out_if = v as u32,
                    21 => self.end_up = Some(v),
                    22 => self.start_up = Some(v),
                    23 => self.post_bytes = Some(v),
                    24 => self.post_packets = Some(v),
                    32 | 139 => self.icmp = Some(v as u16),
                    34 | 50 => self.sampling.rate = Some(v.min(u32::MAX as u64) as u32),
                    48 | 302 => self.sampling.sampler_id = Some(v),
                    85 if self.bytes.is_none() => self.bytes = Some(v),
                    86 if self.packets.is_none() => self.packets = Some(v),
                    158 => self.start_delta_us = Some(v),
                    159 => self.end_delta_us = Some(v),
                    305 => self.sampling.packet_interval = Some(v as u32),
                    306 => self.sampling.packet_space = Some(v as u32),
                    309 => self.sampling.size = Some(v as u32),
                    310 => self.sampling.population = Some(v as u32),
                    _ => {}
                }
            }
        }
    }

    /// The system init time this record carries (IE 160), if any.
    pub fn system_init(&self) -> Option<u64> {
        self.system_init
    }

    /// A biflow's reverse direction (RFC 5103): (bytes, packets, tcp flags), when it carried traffic.
    pub fn reverse(&self) -> Option<(u64, u64, u16)> {
        let b = self.rev_bytes.unwrap_or(0);
        let p = self.rev_packets.unwrap_or(0);
        (b > 0 || p > 0).then_some((b, p, self.rev_flags))
    }

    /// Whether the record describes a flow (has addresses).
    pub fn is_flow(&self) -> bool {
        (self.src4.is_some() || self.src6.is_some()) && (self.dst4.is_some() || self.dst6.is_some())
    }

    /// Finish into a flow. `rate` is the sampling rate to apply.
    pub fn finish(self, ctx: &TimeContext, rate: u32, rec: &mut FlowRecord) {
        rec.src = self.src4.or(self.src6).unwrap_or(rec.src);
        rec.dst = self.dst4.or(self.dst6).unwrap_or(rec.dst);
        rec.src_port = self.src_port;
        rec.dst_port = if self.dst_port == 0 {
            self.icmp.unwrap_or(0)
        } else {
            self.dst_port
        };
        rec.proto = self.proto;
        rec.tcp_flags = self.tcp_flags;
        let rate = rate.max(1);
        rec.bytes = self.bytes.or(self.post_bytes).unwrap_or(0).saturating_mul(rate as u64);
        rec.packets = self.packets.or(self.post_packets).unwrap_or(0).saturating_mul(rate as u64);
        rec.sampling_rate = rate;
        rec.in_if = self.in_if;
        rec.out_if = self.out_if;
        let uptime_to_abs = |up: u64| -> Option<u64> {
            if let Some(init) = self.system_init.or(ctx.system_init_ms) {
                return Some(init + up);
            }
            let now_up = ctx.sys_uptime_ms?;
            // sysUptime is a 32-bit millisecond counter that wraps every 49.7
            // days. A flow cannot start after it was exported, so the difference
            // is read as "this long ago" across the whole range, except for a
            // small lead (exporter clock granularity), read as slightly ahead.
            let back = now_up.wrapping_sub(up as u32);
            let back = if back > u32::MAX - UPTIME_LEAD_MS {
                -((u32::MAX - back) as i64 + 1)
            } else {
                back as i64
            };
            Some((ctx.export_ms as i64 - back).max(0) as u64)
        };
        let start = self
            .start_abs
            .or_else(|| self.start_delta_us.map(|d| ctx.export_ms.saturating_sub(d / 1000)))
            .or_else(|| self.start_up.and_then(uptime_to_abs));
        let end = self
            .end_abs
            .or_else(|| self.end_delta_us.map(|d| ctx.export_ms.saturating_sub(d / 1000)))
            .or_else(|| self.end_up.and_then(uptime_to_abs));
        let (start, end) = match (start, end) {
            (Some(s), Some(e)) => (s, e.max(s)),
            (Some(s), None) => (s, s),
            (None, Some(e)) => (e, e),
            (None, None) => (ctx.export_ms, ctx.export_ms),
        };
        rec.start_ms = start;
        rec.end_ms = end;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v9_uptime_times_are_anchored_to_header() {
        let mut b = RecordBuilder::default();
        b.apply_raw(22, &9_000u32.to_be_bytes());
        b.apply_raw(21, &9_500u32.to_be_bytes());
        let ctx = TimeContext {
            export_ms: 1_000_000_000,
            sys_uptime_ms: Some(10_000),
            system_init_ms: None,
        };
        let mut r = FlowRecord::default();
        b.finish(&ctx, 1, &mut r);
        assert_eq!((r.start_ms, r.end_ms), (999_999_000, 999_999_500));
    }

    #[test]
    fn uptime_wraps() {
        let mut b = RecordBuilder::default();
        b.apply_raw(22, &(u32::MAX - 999).to_be_bytes());
        let ctx = TimeContext {
            export_ms: 5_000_000,
            sys_uptime_ms: Some(1000),
            system_init_ms: None,
        };
        let mut r = FlowRecord::default();
        b.finish(&ctx, 1, &mut r);
        assert_eq!(r.start_ms, 5_000_000 - 2000);
    }

    #[test]
    fn uptime_differences_beyond_2_pow_31_are_the_past() {
        // 29 days before export (more than 2^31 ms): still the past, as nfdump reads it.
        let day = 86_400_000u64;
        let mut b = RecordBuilder::default();
        let now_up = 3_000_000_000u32;
        b.apply_raw(22, &(now_up - (29 * day) as u32).to_be_bytes());
        let ctx = TimeContext {
            export_ms: 100 * day,
            sys_uptime_ms: Some(now_up),
            system_init_ms: None,
        };
        let mut r = FlowRecord::default();
        b.finish(&ctx, 1, &mut r);
        assert_eq!(r.start_ms, 71 * day);
        // A few ms ahead of the export uptime: read as just now, not 49 days ago.
        let mut b = RecordBuilder::default();
        b.apply_raw(22, &(now_up + 5).to_be_bytes());
        b.finish(&ctx, 1, &mut r);
        assert_eq!(r.start_ms, 100 * day + 5);
    }

    #[test]
    fn rfc5103_reverse_elements() {
        let mut b = RecordBuilder::default();
        assert_eq!(b.reverse(), None);
        b.apply_raw(REVERSE_OCTETS, &4483u32.to_be_bytes());
        b.apply_raw(REVERSE_PACKETS, &[0, 11]);
        b.apply_raw(REVERSE_TCP_FLAGS, &[0x1b]);
        assert_eq!(b.reverse(), Some((4483, 11, 0x1b)));
        assert!(raw_field_known(REVERSE_OCTETS, 8) && !raw_field_known(REVERSE | 8, 4));
    }

    #[test]
    fn ipfix_forms() {
        let ctx = TimeContext {
            export_ms: 2_000_000,
            sys_uptime_ms: None,
            system_init_ms: Some(1_000_000),
        };
        let mut b = RecordBuilder::default();
        b.apply_raw(22, &500u32.to_be_bytes());
        b.apply_raw(159, &250_000u32.to_be_bytes());
        let mut r = FlowRecord::default();
        b.finish(&ctx, 1, &mut r);
        assert_eq!((r.start_ms, r.end_ms), (1_000_500, 1_999_750));
        let mut b = RecordBuilder::default();
        b.apply_raw(152, &1_700_000_000_123u64.to_be_bytes());
        b.apply_raw(151, &1_700_000_001u32.to_be_bytes());
        b.finish(&ctx, 1, &mut r);
        assert_eq!((r.start_ms, r.end_ms), (1_700_000_000_123, 1_700_000_001_000));
        // NTP: a 2^31 fraction is half a second.
        let mut ntp = (NTP_UNIX_OFFSET + 10).to_be_bytes()[4..].to_vec();
        ntp.extend_from_slice(&(1u32 << 31).to_be_bytes());
        let mut b = RecordBuilder::default();
        b.apply_raw(154, &ntp);
        b.finish(&ctx, 1, &mut r);
        assert_eq!(r.start_ms, 10_500);
    }

    #[test]
    fn sampling_multiplies_counters_and_icmp_goes_to_port() {
        let mut b = RecordBuilder::default();
        b.apply_raw(1, &1000u32.to_be_bytes());
        b.apply_raw(2, &3u16.to_be_bytes());
        b.apply_raw(32, &0x0800_u16.to_be_bytes());
        let mut r = FlowRecord::default();
        b.finish(&TimeContext::default(), 100, &mut r);
        assert_eq!((r.bytes, r.packets, r.sampling_rate, r.dst_port), (100_000, 300, 100, 2048));
    }
}
