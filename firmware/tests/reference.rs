//! Our wire layer against a reference decoder: for every capture in
//! ../shared/captures (conformance corpus and real exporters' streams), the flows
//! our decoder stores equal the records netflow_parser 1.0.6 (the decoder this
//! project used before it had its own wire layer) decodes from the same
//! datagrams, as multisets of (addresses, ports, protocol, bytes, packets),
//! RFC 5103 reverse halves as their own flows and sampling taken out.
//!
//! Captures on which the reference reports an error (it rejects zero-length
//! variable-length values and v9 templates with variable-length fields, and
//! stops at damaged sets) are not compared; they are listed, and their count is
//! bounded so that the comparison keeps covering the corpus.

mod common;

use flowwarden::decode::Decoder;
use netflow_parser::scoped_parser::AutoScopedParser;
use netflow_parser::variable_versions::PendingFlowsConfig;
use netflow_parser::variable_versions::ipfix::lookup::IPFixField;
use netflow_parser::{DataNumber, FieldValue, NetflowPacket, NetflowParser};
use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

type Key = (IpAddr, IpAddr, u16, u16, u8, u64, u64);

fn num(v: &FieldValue) -> Option<u64> {
    match v {
        FieldValue::DataNumber(n) => match n {
            DataNumber::U8(x) => Some(*x as u64),
            DataNumber::U16(x) => Some(*x as u64),
            DataNumber::U24(x) => Some(*x as u64),
            DataNumber::U32(x) => Some(*x as u64),
            DataNumber::U64(x) => Some(*x),
            DataNumber::Vec(b) if b.len() <= 8 => Some(b.iter().fold(0, |a, &x| (a << 8) | x as u64)),
            _ => None,
        },
        FieldValue::ProtocolType(p) => Some(u8::from(*p) as u64),
        FieldValue::TcpControlBits(bits, _) => Some(u16::from(*bits) as u64),
        FieldValue::Vec(b) if b.len() <= 8 => Some(b.iter().fold(0, |a, &x| (a << 8) | x as u64)),
        _ => None,
    }
}

fn ip(v: &FieldValue) -> Option<IpAddr> {
    match v {
        FieldValue::Ip4Addr(a) => Some(IpAddr::V4(*a)),
        FieldValue::Ip6Addr(a) => Some(IpAddr::V6(*a)),
        _ => None,
    }
}

/// The flows one record stands for, from (PEN, element, value) triples.
fn flows_of(fields: &[(u32, u16, &FieldValue)], out: &mut Vec<Key>) {
    // An element a template declares twice (outer and inner headers of a tunnel)
    // has the last occurrence's value, as in the product.
    let get = |pen: u32, ie: u16| fields.iter().rev().find(|(p, i, _)| *p == pen && *i == ie).map(|(_, _, v)| *v);
    let n = |ie| get(0, ie).and_then(num);
    let (Some(src), Some(dst)) = (
        get(0, 8).and_then(ip).or_else(|| get(0, 27).and_then(ip)),
        get(0, 12).and_then(ip).or_else(|| get(0, 28).and_then(ip)),
    ) else {
        return;
    };
    let sport = n(7).unwrap_or(0) as u16;
    let dport = match n(11).unwrap_or(0) as u16 {
        0 => n(32).or_else(|| n(139)).unwrap_or(0) as u16,
        p => p,
    };
    let proto = n(4).unwrap_or(0) as u8;
    let bytes = n(1).or_else(|| n(85)).or_else(|| n(23)).unwrap_or(0);
    let packets = n(2).or_else(|| n(86)).or_else(|| n(24)).unwrap_or(0);
    out.push((src, dst, sport, dport, proto, bytes, packets));
    let rb = get(29305, 1).and_then(num).unwrap_or(0);
    let rp = get(29305, 2).and_then(num).unwrap_or(0);
    if rb > 0 || rp > 0 {
        out.push((dst, src, dport, sport, proto, rb, rp));
    }
}

/// IANA and RFC 5103 elements the comparison reads, by their reference names.
fn ipfix_id(f: &IPFixField) -> Option<(u32, u16)> {
    const IDS: [u16; 16] = [1, 2, 4, 7, 8, 11, 12, 23, 24, 27, 28, 32, 85, 86, 139, 6];
    for ie in IDS {
        if *f == IPFixField::new(ie, None) {
            return Some((0, ie));
        }
    }
    for ie in [1, 2] {
        if *f == IPFixField::new(ie, Some(29305)) {
            return Some((29305, ie));
        }
    }
    None
}

/// v5 and v7 records (distinct types with the same fields).
macro_rules! fixed_records {
    ($p:expr, $out:expr) => {
        for f in &$p.flowsets {
            $out.push((
                IpAddr::V4(f.src_addr),
                IpAddr::V4(f.dst_addr),
                f.src_port,
                f.dst_port,
                f.protocol_number,
                f.d_octets as u64,
                f.d_pkts as u64,
            ));
        }
    };
}

/// The reference's flows for a stream of datagrams, or the first error it reported.
fn reference(dgrams: &[(SocketAddr, Vec<u8>)]) -> Result<Vec<Key>, String> {
    let builder = NetflowParser::builder()
        .with_cache_size(512)
        .with_pending_flows(PendingFlowsConfig::with_ttl(64, Duration::from_secs(3600)));
    let mut p = AutoScopedParser::try_with_builder(builder).map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    for (src, d) in dgrams {
        let r = p.parse_from_source(*src, d);
        if let Some(e) = r.error {
            return Err(e.to_string().chars().take(120).collect());
        }
        for pkt in &r.packets {
            match pkt {
                NetflowPacket::V5(v5) => fixed_records!(v5, out),
                NetflowPacket::V7(v7) => fixed_records!(v7, out),
                NetflowPacket::V9(v9) => {
                    use netflow_parser::variable_versions::v9::FlowSetBody as B;
                    for fs in &v9.flowsets {
                        if let B::Data(d) = &fs.body {
                            for r in &d.fields {
                                let f: Vec<(u32, u16, &FieldValue)> = r.iter().map(|(f, v)| (0, u16::from(*f), v)).collect();
                                flows_of(&f, &mut out);
                            }
                        }
                    }
                }
                NetflowPacket::IPFix(x) => {
                    use netflow_parser::variable_versions::ipfix::FlowSetBody as B;
                    for fs in &x.flowsets {
                        match &fs.body {
                            B::Data(d) => {
                                for r in &d.fields {
                                    let f: Vec<(u32, u16, &FieldValue)> =
                                        r.iter().filter_map(|(f, v)| ipfix_id(f).map(|(p, i)| (p, i, v))).collect();
                                    flows_of(&f, &mut out);
                                }
                            }
                            B::V9Data(d) => {
                                for r in &d.fields {
                                    let f: Vec<(u32, u16, &FieldValue)> = r.iter().map(|(f, v)| (0, u16::from(*f), v)).collect();
                                    flows_of(&f, &mut out);
                                }
                            }
                            _ => {}
                        }
                    }
                }
                _ => {}
            }
        }
    }
    Ok(out)
}

fn ours(dgrams: &[(SocketAddr, Vec<u8>)]) -> Vec<Key> {
    let cfg = common::test_config();
    let mut dec = Decoder::new(&cfg.decoder_settings(), Vec::new(), Vec::new()).unwrap_or_else(|e| panic!("{e}"));
    let mut flows = Vec::new();
    for (src, d) in dgrams {
        dec.decode(*src, 0, d, &mut flows);
    }
    flows
        .iter()
        .map(|r| {
            let rate = u64::from(r.sampling_rate.max(1));
            (r.src, r.dst, r.src_port, r.dst_port, r.proto, r.bytes / rate, r.packets / rate)
        })
        .collect()
}

/// Captures where the reference decodes fewer records than there are, and why.
fn reference_drops(name: &str) -> Option<&'static str> {
    Some(match name {
        // Records with a zero-length variable-length value (an empty VRF name,
        // application name, ...): netflow_parser 1.0.6 drops the whole set
        // without an error. Every record it does decode must be ours too.
        "conformance/pmacct/106-IPFIXv10-HUAWEI-vrf_name__traffic-00.pcap"
        | "conformance/logstash/ctx_ipfix_from_ixia_something_something.pcap"
        | "conformance/logstash/ctx_ipfix_procera.pcap"
        | "conformance/logstash/single_ipfix_test_ixia_tpldata271.pcap" => "variable-length values it drops without an error",
        _ => return None,
    })
}

fn multiset(v: Vec<Key>) -> BTreeMap<Key, usize> {
    let mut m = BTreeMap::new();
    for k in v {
        *m.entry(k).or_default() += 1;
    }
    m
}

fn captures() -> Vec<(String, PathBuf)> {
    let root = common::captures();
    let mut out = Vec::new();
    for dir in [
        "conformance/akvorado",
        "conformance/pmacct",
        "conformance/scapy",
        "conformance/logstash",
        "conformance/derived",
        "exported",
    ] {
        let Ok(rd) = std::fs::read_dir(root.join(dir)) else { continue };
        let mut files: Vec<PathBuf> = rd
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|f| f.extension().is_some_and(|e| e == "pcap" || e == "pcapng"))
            .collect();
        files.sort();
        for f in files {
            let name = format!("{dir}/{}", f.file_name().and_then(|n| n.to_str()).unwrap_or_default());
            out.push((name, f));
        }
    }
    out
}

#[test]
fn flows_equal_the_reference_decoders() {
    let mut compared = 0;
    let mut flows = 0;
    let mut skipped = Vec::new();
    let mut failures = Vec::new();
    for (name, path) in captures() {
        let mut dgrams = Vec::new();
        if flowwarden::capture::read_capture(&path, |d| dgrams.push((d.src, d.payload.to_vec()))).is_err() {
            continue;
        }
        let theirs = match reference(&dgrams) {
            Ok(v) => v,
            Err(e) => {
                skipped.push(format!("{name}: {e}"));
                continue;
            }
        };
        let mine = ours(&dgrams);
        compared += 1;
        flows += mine.len();
        let (a, b) = (multiset(mine), multiset(theirs));
        if let Some(why) = reference_drops(&name) {
            let missing = b.iter().filter(|(k, n)| a.get(*k).copied().unwrap_or(0) < **n).count();
            let more = a.values().sum::<usize>() > b.values().sum::<usize>();
            if missing > 0 || !more {
                failures.push(format!("{name} ({why}): expected a strict superset of the reference's flows"));
            }
            continue;
        }
        if a != b {
            let only_ours: Vec<_> = a.iter().filter(|(k, n)| b.get(*k) != Some(n)).take(3).collect();
            let only_theirs: Vec<_> = b.iter().filter(|(k, n)| a.get(*k) != Some(n)).take(3).collect();
            failures.push(format!(
                "{name}: {} flows here, {} in the reference; here not there: {only_ours:?}; there not here: {only_theirs:?}",
                a.values().sum::<usize>(),
                b.values().sum::<usize>()
            ));
        }
    }
    eprintln!(
        "compared {compared} captures ({flows} flows); reference errors on {}:\n{}",
        skipped.len(),
        skipped.join("\n")
    );
    assert!(compared >= 100, "only {compared} captures compared");
    assert!(flows > 10_000, "only {flows} flows compared");
    assert!(skipped.len() <= 20, "{} captures skipped", skipped.len());
    assert!(failures.is_empty(), "{} differ:\n{}", failures.len(), failures.join("\n"));
}
