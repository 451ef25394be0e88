//! Flow blocks: the unit of storage inside a segment.
//!
//! A block holds up to a few thousand flows sorted by start time, encoded
//! column by column with postcard (varints, time and counter deltas) and then
//! compressed with zstd. A small uncompressed header (count and time bounds)
//! lets readers skip blocks outside a query's time range without decompressing.
//! Layout: `u16 LE header length | postcard BlockHeader | zstd(postcard Columns)`.
//! The direction column's byte carries the direction in its low nibble and the
//! flow's quality marks in its high nibble (blocks written before marks existed
//! read as unmarked).

use crate::flow::{Direction, FlowRecord};
use serde::{Deserialize, Serialize};
use std::net::{IpAddr, SocketAddr};
use thiserror::Error;

#[derive(Debug, Error)]
pub enum BlockError {
    #[error("block header is damaged")]
    Header,
    #[error("block body is damaged: {0}")]
    Body(String),
    #[error("cannot compress block: {0}")]
    Compress(std::io::Error),
}

/// Uncompressed summary stored in front of the block.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlockHeader {
    pub count: u32,
    pub min_start: u64,
    pub max_start: u64,
    pub max_end: u64,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct Columns {
    exporters: Vec<SocketAddr>,
    start_delta: Vec<u64>,
    duration: Vec<u64>,
    src: Vec<IpAddr>,
    dst: Vec<IpAddr>,
    src_port: Vec<u16>,
    dst_port: Vec<u16>,
    proto: Vec<u8>,
    tcp_flags: Vec<u16>,
    bytes: Vec<u64>,
    packets: Vec<u64>,
    in_if: Vec<u32>,
    out_if: Vec<u32>,
    exporter: Vec<u16>,
    sampling_rate: Vec<u32>,
    direction: Vec<u8>,
}

/// Encode flows (sorted by `start_ms` here) into block bytes.
pub fn encode(flows: &mut [FlowRecord], level: i32) -> Result<(BlockHeader, Vec<u8>), BlockError> {
    flows.sort_by_key(|f| f.start_ms);
    let mut refs: Vec<&FlowRecord> = flows.iter().collect();
    encode_refs(&mut refs, level)
}

/// LEB128 varint, as postcard writes every integer wider than a byte.
#[inline]
fn varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push(v as u8 | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

#[inline]
fn ip(out: &mut Vec<u8>, a: &IpAddr) {
    match a {
        IpAddr::V4(a) => {
            out.push(0);
            out.extend_from_slice(&a.octets());
        }
        IpAddr::V6(a) => {
            out.push(1);
            out.extend_from_slice(&a.octets());
        }
    }
}

/// Encode flows given by reference (sorted here). The column bytes are written
/// by hand in exactly postcard's encoding of [`Columns`] (a test holds them
/// equal), so [`decode`] reads them with postcard.
pub fn encode_refs(flows: &mut [&FlowRecord], level: i32) -> Result<(BlockHeader, Vec<u8>), BlockError> {
    flows.sort_unstable_by_key(|f| f.start_ms);
    let n = flows.len();
    let mut exporters: Vec<SocketAddr> = Vec::new();
    let mut exporter_idx: Vec<u16> = Vec::with_capacity(n);
    let mut max_end = 0;
    for f in flows.iter() {
        max_end = max_end.max(f.end_ms);
        let idx = match exporters.iter().position(|e| *e == f.exporter) {
            Some(i) => i,
            None => {
                exporters.push(f.exporter);
                exporters.len() - 1
            }
        };
        exporter_idx.push(idx.min(u16::MAX as usize) as u16);
    }
    let first = flows.first().map(|f| f.start_ms).unwrap_or(0);
    let header = BlockHeader {
        count: n as u32,
        min_start: first,
        max_start: flows.last().map(|f| f.start_ms).unwrap_or(0),
        max_end,
    };
    let mut body = postcard::to_stdvec(&exporters).map_err(|e| BlockError::Body(e.to_string()))?;
    body.reserve(n * 48);
    let col = |body: &mut Vec<u8>, each: &dyn Fn(&mut Vec<u8>, usize, &FlowRecord)| {
        varint(body, n as u64);
        for (i, f) in flows.iter().enumerate() {
            each(body, i, f);
        }
    };
    let mut prev = first;
    varint(&mut body, n as u64);
    for f in flows.iter() {
        varint(&mut body, f.start_ms - prev);
        prev = f.start_ms;
    }
    col(&mut body, &|b, _, f| varint(b, f.duration_ms()));
    col(&mut body, &|b, _, f| ip(b, &f.src));
    col(&mut body, &|b, _, f| ip(b, &f.dst));
    col(&mut body, &|b, _, f| varint(b, f.src_port as u64));
    col(&mut body, &|b, _, f| varint(b, f.dst_port as u64));
    col(&mut body, &|b, _, f| b.push(f.proto));
    col(&mut body, &|b, _, f| varint(b, f.tcp_flags as u64));
    col(&mut body, &|b, _, f| varint(b, f.bytes));
    col(&mut body, &|b, _, f| varint(b, f.packets));
    col(&mut body, &|b, _, f| varint(b, f.in_if as u64));
    col(&mut body, &|b, _, f| varint(b, f.out_if as u64));
    col(&mut body, &|b, i, _| varint(b, exporter_idx[i] as u64));
    col(&mut body, &|b, _, f| varint(b, f.sampling_rate as u64));
    col(&mut body, &|b, _, f| b.push(f.direction as u8 | (f.marks & 0x0f) << 4));
    let compressed = zstd::bulk::compress(&body, level).map_err(BlockError::Compress)?;
    let head = postcard::to_stdvec(&header).map_err(|e| BlockError::Body(e.to_string()))?;
    let mut out = Vec::with_capacity(2 + head.len() + compressed.len());
    out.extend_from_slice(&(head.len() as u16).to_le_bytes());
    out.extend_from_slice(&head);
    out.extend_from_slice(&compressed);
    Ok((header, out))
}

/// Read only the header.
pub fn header(bytes: &[u8]) -> Result<BlockHeader, BlockError> {
    let len = bytes.get(..2).ok_or(BlockError::Header)?;
    let len = u16::from_le_bytes([len[0], len[1]]) as usize;
    let h = bytes.get(2..2 + len).ok_or(BlockError::Header)?;
    postcard::from_bytes(h).map_err(|_| BlockError::Header)
}

/// Upper bound on a block's decompressed size (guards against bombs).
const MAX_BODY: usize = 256 << 20;

/// Decode every flow of a block, appending to `out`.
pub fn decode(bytes: &[u8], out: &mut Vec<FlowRecord>) -> Result<BlockHeader, BlockError> {
    let h = header(bytes)?;
    let hl = u16::from_le_bytes([bytes[0], bytes[1]]) as usize;
    let body = zstd::bulk::decompress(&bytes[2 + hl..], MAX_BODY).map_err(|e| BlockError::Body(e.to_string()))?;
    let c: Columns = postcard::from_bytes(&body).map_err(|e| BlockError::Body(e.to_string()))?;
    let n = h.count as usize;
    let lens = [
        c.start_delta.len(),
        c.duration.len(),
        c.src.len(),
        c.dst.len(),
        c.src_port.len(),
        c.dst_port.len(),
        c.proto.len(),
        c.tcp_flags.len(),
        c.bytes.len(),
        c.packets.len(),
        c.in_if.len(),
        c.out_if.len(),
        c.exporter.len(),
        c.sampling_rate.len(),
        c.direction.len(),
    ];
    if lens.iter().any(|&l| l != n) {
        return Err(BlockError::Body(format!("column lengths {lens:?} differ from count {n}")));
    }
    out.reserve(n);
    let mut t = h.min_start;
    for i in 0..n {
        t = t.saturating_add(c.start_delta[i]);
        let exporter = *c
            .exporters
            .get(c.exporter[i] as usize)
            .ok_or_else(|| BlockError::Body("exporter index out of range".into()))?;
        out.push(FlowRecord {
            start_ms: t,
            end_ms: t.saturating_add(c.duration[i]),
            src: c.src[i],
            dst: c.dst[i],
            src_port: c.src_port[i],
            dst_port: c.dst_port[i],
            proto: c.proto[i],
            tcp_flags: c.tcp_flags[i],
            bytes: c.bytes[i],
            packets: c.packets[i],
            in_if: c.in_if[i],
            out_if: c.out_if[i],
            exporter,
            sampling_rate: c.sampling_rate[i],
            direction: Direction::from_u8(c.direction[i] & 0x0f),
            marks: c.direction[i] >> 4,
        });
    }
    Ok(h)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn arb_flow() -> impl Strategy<Value = FlowRecord> {
        (
            1_500_000_000_000u64..1_900_000_000_000,
            0u64..3_600_000,
            any::<[u8; 4]>(),
            any::<[u8; 16]>(),
            any::<(u16, u16, u8, u16)>(),
            any::<(u64, u64, u32, u32)>(),
            (any::<[u8; 4]>(), any::<u16>(), 1u32..10_000, 0u8..5, 0u8..2),
        )
            .prop_map(
                |(s, d, a4, a6, (sp, dp, pr, fl), (b, p, i, o), (e, ep, r, dir, marks))| FlowRecord {
                    start_ms: s,
                    end_ms: s + d,
                    src: IpAddr::from(a4),
                    dst: IpAddr::from(a6),
                    src_port: sp,
                    dst_port: dp,
                    proto: pr,
                    tcp_flags: fl,
                    bytes: b,
                    packets: p,
                    in_if: i,
                    out_if: o,
                    exporter: SocketAddr::new(IpAddr::from(e), ep),
                    sampling_rate: r,
                    direction: Direction::from_u8(dir),
                    marks,
                },
            )
    }

    /// The columns as postcard itself would write them (the reference for the hand encoder).
    fn postcard_columns(flows: &[FlowRecord]) -> Vec<u8> {
        let mut c = Columns::default();
        let mut prev = flows.first().map(|f| f.start_ms).unwrap_or(0);
        for f in flows {
            c.start_delta.push(f.start_ms - prev);
            prev = f.start_ms;
            c.duration.push(f.duration_ms());
            c.src.push(f.src);
            c.dst.push(f.dst);
            c.src_port.push(f.src_port);
            c.dst_port.push(f.dst_port);
            c.proto.push(f.proto);
            c.tcp_flags.push(f.tcp_flags);
            c.bytes.push(f.bytes);
            c.packets.push(f.packets);
            c.in_if.push(f.in_if);
            c.out_if.push(f.out_if);
            let idx = match c.exporters.iter().position(|e| *e == f.exporter) {
                Some(i) => i,
                None => {
                    c.exporters.push(f.exporter);
                    c.exporters.len() - 1
                }
            };
            c.exporter.push(idx as u16);
            c.sampling_rate.push(f.sampling_rate);
            c.direction.push(f.direction as u8 | (f.marks & 0x0f) << 4);
        }
        postcard::to_stdvec(&c).unwrap_or_default()
    }

    proptest! {
        #[test]
        fn hand_encoding_is_postcard(mut flows in proptest::collection::vec(arb_flow(), 0..100)) {
            flows.sort_by_key(|f| f.start_ms);
            let (_, bytes) = encode(&mut flows.clone(), 1).map_err(|e| TestCaseError::fail(e.to_string()))?;
            let hl = u16::from_le_bytes([bytes[0], bytes[1]]) as usize;
            let body = zstd::bulk::decompress(&bytes[2 + hl..], 1 << 24).map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert_eq!(body, postcard_columns(&flows));
        }

        #[test]
        fn round_trips(mut flows in proptest::collection::vec(arb_flow(), 0..200)) {
            let (h, bytes) = encode(&mut flows, 3).map_err(|e| TestCaseError::fail(e.to_string()))?;
            let mut back = Vec::new();
            let h2 = decode(&bytes, &mut back).map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert_eq!(h, h2);
            prop_assert_eq!(back, flows);
        }

        #[test]
        fn garbage_is_an_error_not_a_panic(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let mut out = Vec::new();
            let _ = decode(&bytes, &mut out);
        }
    }
}
