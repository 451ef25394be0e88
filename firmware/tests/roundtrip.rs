//! flowgen's independent v5/v9/IPFIX encoders against the decoder: every field
//! of every generated flow comes back exactly (v5/v9 times to the millisecond
//! through sysUptime, IPFIX through absolute milliseconds), IPv6 included.

mod common;

use flowgen::{Attack, Exporter, Office, Version, export_stream};
use flowwarden::decode::Decoder;
use flowwarden::flow::FlowRecord;
use std::net::{IpAddr, SocketAddr};

const DAY: u64 = 86_400_000;
const START: u64 = 1_793_577_600_000; // Monday 2026-11-02 00:00 UTC

fn decode_all(version: Version, flows: &[flowgen::Flow]) -> (Vec<FlowRecord>, flowwarden::decode::DecodeTotals) {
    let cfg = common::test_config();
    let mut dec = Decoder::new(&cfg.decoder_settings(), Vec::new(), Vec::new()).unwrap_or_else(|e| panic!("{e}"));
    let mut exp = Exporter::new(version, START - DAY);
    let exporter: SocketAddr = "192.0.2.10:40000".parse().unwrap_or_else(|e| panic!("{e}"));
    let mut out = Vec::new();
    for (t, _, d) in export_stream(&mut exp, flows, 1000) {
        dec.decode(exporter, t, &d, &mut out);
    }
    (out, dec.totals.clone())
}

fn same(a: &flowgen::Flow, b: &FlowRecord, v5: bool) -> bool {
    let cap = |x: u64| if v5 { x.min(u32::MAX as u64) } else { x };
    a.src == b.src
        && a.dst == b.dst
        && a.src_port == b.src_port
        && a.dst_port == b.dst_port
        && a.proto == b.proto
        && a.tcp_flags as u16 == b.tcp_flags
        && cap(a.bytes) == b.bytes
        && cap(a.packets) == b.packets
        && a.start_ms == b.start_ms
        && a.end_ms == b.end_ms
        && a.in_if as u32 == b.in_if
        && a.out_if as u32 == b.out_if
        && b.sampling_rate == 1
}

fn office() -> Office {
    let mut o = Office::new(7, 40);
    o.attacks.push(Attack::Beacon {
        host: 3,
        c2: [185, 100, 87, 5].into(),
        port: 443,
        period_ms: 60_000,
        jitter: 0.1,
        miss: 0.0,
        from_ms: START,
        to_ms: START + DAY,
    });
    o.attacks.push(Attack::VerticalScan {
        src: [203, 0, 113, 66].into(),
        dst_host: 1,
        ports: 500,
        at_ms: START + 10 * 3_600_000,
        spread_ms: 60_000,
    });
    o
}

#[test]
fn every_field_survives_each_version() {
    let flows = office().flows(START + 9 * 3_600_000, START + 12 * 3_600_000);
    assert!(flows.len() > 5_000, "{}", flows.len());
    for version in [Version::V5, Version::V9, Version::Ipfix] {
        let (got, totals) = decode_all(version, &flows);
        assert_eq!(totals.malformed, 0, "{version:?}");
        assert_eq!(got.len(), flows.len(), "{version:?}: decoded {} of {}", got.len(), flows.len());
        let mut want: Vec<&flowgen::Flow> = flows.iter().collect();
        want.sort_by_key(|f| (f.start_ms, f.src, f.dst, f.src_port, f.dst_port, f.end_ms));
        let mut got = got;
        got.sort_by_key(|f| (f.start_ms, f.src, f.dst, f.src_port, f.dst_port, f.end_ms));
        for (a, b) in want.iter().zip(&got) {
            assert!(same(a, b, version == Version::V5), "{version:?}:\n sent {a:?}\n got  {b:?}");
        }
    }
}

#[test]
fn ipv6_flows_round_trip_in_v9_and_ipfix() {
    let v6: IpAddr = "2001:db8::10".parse().unwrap_or_else(|e| panic!("{e}"));
    let peer: IpAddr = "2001:db8:ffff::1".parse().unwrap_or_else(|e| panic!("{e}"));
    let flows: Vec<flowgen::Flow> = (0..100u64)
        .map(|i| flowgen::Flow {
            start_ms: START + i * 1000,
            end_ms: START + i * 1000 + 500,
            src: v6,
            dst: peer,
            src_port: 40_000 + i as u16,
            dst_port: 443,
            proto: 6,
            tcp_flags: 0x1b,
            bytes: 1_000 + i,
            packets: 3,
            in_if: 1,
            out_if: 2,
        })
        .collect();
    for version in [Version::V9, Version::Ipfix] {
        let (got, _) = decode_all(version, &flows);
        assert_eq!(got.len(), 100);
        assert!(flows.iter().zip(&got).all(|(a, b)| same(a, b, false)), "{version:?}");
    }
}

#[test]
fn sequence_gaps_are_counted_as_lost_records() {
    let flows = office().flows(START + 10 * 3_600_000, START + 11 * 3_600_000);
    for version in [Version::V5, Version::V9, Version::Ipfix] {
        let cfg = common::test_config();
        let mut dec = Decoder::new(&cfg.decoder_settings(), Vec::new(), Vec::new()).unwrap_or_else(|e| panic!("{e}"));
        let mut exp = Exporter::new(version, START - DAY);
        exp.template_every = 1; // every datagram self-contained, so a lost one loses only its data
        let exporter: SocketAddr = "192.0.2.11:40000".parse().unwrap_or_else(|e| panic!("{e}"));
        let stream = export_stream(&mut exp, &flows, 1000);
        let mut out = Vec::new();
        let mut dropped_records = 0u64;
        for (i, (t, n, d)) in stream.iter().enumerate() {
            if i % 10 == 5 {
                dropped_records += *n as u64;
                continue;
            }
            dec.decode(exporter, *t, d, &mut out);
        }
        let ex = dec
            .exporter_snapshot()
            .into_iter()
            .find(|e| e.exporter == exporter.to_string())
            .unwrap_or_default();
        assert!(ex.sequence_gaps > 0, "{version:?}");
        if version == Version::V9 {
            // v9 counts packets: the loss estimate uses records per packet.
            assert!(ex.lost_records > 0, "{version:?}");
        } else {
            assert_eq!(ex.lost_records, dropped_records, "{version:?}");
        }
    }
}
