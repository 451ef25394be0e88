//! Hostile and broken input: never a panic, never unbounded memory, always counted.
//! Truncations and byte flips of real datagrams, template floods, exporter
//! floods, and a template id reused with a new layout.

mod common;

use flowwarden::decode::Decoder;
use std::net::SocketAddr;

fn datagrams(files: &[&str]) -> Vec<(SocketAddr, Vec<u8>)> {
    let mut out = Vec::new();
    for f in files {
        flowwarden::capture::read_capture(&common::captures().join(f), |d| out.push((d.src, d.payload.to_vec())))
            .unwrap_or_else(|e| panic!("{e}"));
    }
    out
}

fn corpus() -> Vec<(SocketAddr, Vec<u8>)> {
    datagrams(&[
        "conformance/pmacct/401-IPFIXv10-BMP-IPv6-CISCO-MPLS-multiple-sources__traffic-00.pcap",
        "conformance/logstash/ctx_ipfix_netscaler_with_variable_length_fields.pcap",
        "conformance/logstash/ctx_netflow_9_cisco_asa_2.pcap",
        "conformance/logstash/ctx_netflow_5_valid_01.pcap",
        "conformance/akvorado/data+templates.pcap",
        "exported/softflowd_test_v10.pcap",
    ])
}

#[test]
fn truncations_and_bit_flips_never_panic() {
    let cfg = common::test_config();
    let mut dec = Decoder::new(&cfg.decoder_settings(), Vec::new(), Vec::new()).unwrap_or_else(|e| panic!("{e}"));
    let mut out = Vec::new();
    let dgrams = corpus();
    assert!(dgrams.len() > 500);
    // Every datagram first whole (so templates are known), then every truncation of some.
    for (src, d) in &dgrams {
        dec.decode(*src, 0, d, &mut out);
    }
    for (src, d) in dgrams.iter().step_by(7) {
        for len in 0..d.len() {
            dec.decode(*src, 0, &d[..len], &mut out);
        }
    }
    // One seed here; `cargo xtask soak` sets FLOWWARDEN_HOSTILE_SEEDS for more.
    let seeds: u64 = std::env::var("FLOWWARDEN_HOSTILE_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1);
    for seed in 99..99 + seeds {
        let mut r = flowgen::rng::Rng::new(seed);
        for _ in 0..200_000 {
            let (src, d) = &dgrams[r.below(dgrams.len() as u64) as usize];
            let mut m = d.clone();
            for _ in 0..1 + r.below(4) {
                let i = r.below(m.len() as u64) as usize;
                m[i] ^= 1 << r.below(8);
            }
            dec.decode(*src, 0, &m, &mut out);
            out.clear();
        }
    }
    assert!(dec.totals.malformed > 0, "damage must be counted");
}

fn ipfix_message(domain: u32, seq: u32, sets: &[Vec<u8>]) -> Vec<u8> {
    let mut m = vec![0, 10, 0, 0, 0x6a, 0xe6, 0x6a, 0x00];
    m.extend_from_slice(&seq.to_be_bytes());
    m.extend_from_slice(&domain.to_be_bytes());
    for s in sets {
        m.extend_from_slice(s);
    }
    let len = m.len() as u16;
    m[2..4].copy_from_slice(&len.to_be_bytes());
    m
}

fn set(id: u16, body: &[u8]) -> Vec<u8> {
    let mut s = id.to_be_bytes().to_vec();
    s.extend_from_slice(&((body.len() + 4) as u16).to_be_bytes());
    s.extend_from_slice(body);
    s
}

#[test]
fn template_flood_stays_bounded() {
    let cfg = common::test_config();
    let mut dec = Decoder::new(&cfg.decoder_settings(), Vec::new(), Vec::new()).unwrap_or_else(|e| panic!("{e}"));
    let src: SocketAddr = "203.0.113.9:4739".parse().unwrap_or_else(|e| panic!("{e}"));
    let mut out = Vec::new();
    // 60,000 distinct template ids, 40 per message.
    for batch in 0..1500u32 {
        let mut body = Vec::new();
        for i in 0..40u32 {
            let tid = 256 + ((batch * 40 + i) % 65_000) as u16;
            body.extend_from_slice(&tid.to_be_bytes());
            body.extend_from_slice(&[0, 2, 0, 8, 0, 4, 0, 12, 0, 4]);
        }
        dec.decode(src, 0, &ipfix_message(1, batch, &[set(2, &body)]), &mut out);
    }
    assert!(
        dec.template_count() <= 4 * 512,
        "{} templates held for one exporter",
        dec.template_count()
    );
    // And many exporters: the table is capped and evictions counted.
    let mut small = common::test_config();
    small.collector.max_exporters = 100;
    let mut dec = Decoder::new(&small.decoder_settings(), Vec::new(), Vec::new()).unwrap_or_else(|e| panic!("{e}"));
    let (_, d) = &datagrams(&["conformance/logstash/ctx_netflow_5_valid_01.pcap"])[0];
    for i in 0..10_000u32 {
        let src = SocketAddr::from(([10, (i >> 16) as u8, (i >> 8) as u8, i as u8], 2055));
        dec.decode(src, i as u64, d, &mut out);
    }
    assert!(dec.exporter_snapshot().len() <= 100);
    assert_eq!(dec.exporters_evicted(), 9_900);
}

#[test]
fn reused_template_id_uses_the_new_layout() {
    let cfg = common::test_config();
    let mut dec = Decoder::new(&cfg.decoder_settings(), Vec::new(), Vec::new()).unwrap_or_else(|e| panic!("{e}"));
    let src: SocketAddr = "203.0.113.10:4739".parse().unwrap_or_else(|e| panic!("{e}"));
    let mut out = Vec::new();
    // Layout A: src(4) dst(4) octets(4).
    let tpl_a = set(2, &[1, 0, 0, 3, 0, 8, 0, 4, 0, 12, 0, 4, 0, 1, 0, 4]);
    let data_a = set(256, &[10, 0, 0, 1, 10, 0, 0, 2, 0, 0, 1, 0]);
    dec.decode(src, 0, &ipfix_message(1, 0, &[tpl_a, data_a]), &mut out);
    // Layout B under the same id: octets(8) dst(4) src(4) dport(2).
    let tpl_b = set(2, &[1, 0, 0, 4, 0, 1, 0, 8, 0, 12, 0, 4, 0, 8, 0, 4, 0, 11, 0, 2]);
    let data_b = set(256, &[0, 0, 0, 0, 0, 0, 0, 77, 192, 0, 2, 2, 192, 0, 2, 1, 1, 187]);
    dec.decode(src, 0, &ipfix_message(1, 1, &[tpl_b, data_b]), &mut out);
    assert_eq!(out.len(), 2);
    assert_eq!(
        (out[0].src.to_string(), out[0].dst.to_string(), out[0].bytes),
        ("10.0.0.1".into(), "10.0.0.2".into(), 256)
    );
    assert_eq!(
        (out[1].src.to_string(), out[1].dst.to_string(), out[1].bytes, out[1].dst_port),
        ("192.0.2.1".into(), "192.0.2.2".into(), 77, 443)
    );
}
