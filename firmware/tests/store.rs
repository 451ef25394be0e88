//! The rolling store under pressure: the byte budget holds while far more than
//! the budget is written, a refused growth (budget or full disk) is recovered
//! by eviction without losing the batch, and state survives a restart.

mod common;

use flowwarden::config::{Config, SizeSpec, Span};
use flowwarden::flow::{Direction, FlowRecord};
use flowwarden::store::writer::{StoreWriter, WriterSettings};
use flowwarden::store::{DataDir, StoreCounters};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::Ordering;

/// Flows that compress like real traffic (random hosts, ports, sizes).
fn flows(seed: u64, n: usize, t0: u64, spacing_ms: u64) -> Vec<FlowRecord> {
    let mut r = flowgen::rng::Rng::new(seed);
    let exporter: SocketAddr = "192.0.2.1:2055".parse().unwrap_or_else(|e| panic!("{e}"));
    (0..n)
        .map(|i| {
            let start = t0 + i as u64 * spacing_ms;
            FlowRecord {
                start_ms: start,
                end_ms: start + r.below(30_000),
                src: IpAddr::from([10, 20, r.below(4) as u8, r.below(250) as u8]),
                dst: IpAddr::from([r.below(223) as u8 + 1, r.below(256) as u8, r.below(256) as u8, r.below(256) as u8]),
                src_port: 32_768 + r.below(28_000) as u16,
                dst_port: [443, 80, 53, 22, 8080][r.below(5) as usize],
                proto: 6,
                tcp_flags: 0x1b,
                bytes: r.size(5000.0),
                packets: 1 + r.below(100),
                in_if: 1,
                out_if: 2,
                exporter,
                sampling_rate: 1,
                direction: Direction::Outbound,
                marks: 0,
            }
        })
        .collect()
}

fn settings(budget: u64) -> WriterSettings {
    let mut s = Config::default().storage;
    s.budget = SizeSpec::Bytes(budget);
    s.segment_span = Span(60_000);
    WriterSettings::from_config(&s, budget)
}

fn counter(c: &StoreCounters, f: impl Fn(&StoreCounters) -> &std::sync::atomic::AtomicU64) -> u64 {
    f(c).load(Ordering::Relaxed)
}

#[test]
fn budget_holds_while_writing_five_times_more() {
    let budget = 8 << 20;
    let tmp = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let dir = DataDir::new(tmp.path());
    let mut w = StoreWriter::open(dir.clone(), settings(budget), flowwarden::metrics::Registry::new()).unwrap_or_else(|e| panic!("{e}"));
    let t0 = 1_793_577_600_000;
    let mut written = 0u64;
    let mut max_seen = 0;
    for round in 0..40u64 {
        let batch = flows(round, 50_000, t0 + round * 50_000 * 40, 40);
        w.add(&batch);
        w.commit();
        written += batch.len() as u64;
        let on_disk = dir.total_bytes().unwrap_or_else(|e| panic!("{e}"));
        max_seen = max_seen.max(on_disk);
        assert!(
            on_disk <= budget,
            "round {round}: {on_disk} bytes on disk exceed the budget of {budget}"
        );
    }
    let c = w.counters.clone();
    w.finish();
    let on_disk = dir.total_bytes().unwrap_or_else(|e| panic!("{e}"));
    assert!(on_disk <= budget, "after finish: {on_disk} > {budget}");
    assert_eq!(counter(&c, |c| &c.flows_dropped), 0, "nothing may be dropped: eviction makes room");
    assert!(counter(&c, |c| &c.segments_evicted) > 0);
    let kept = common::read_all(tmp.path());
    let block_bytes = counter(&c, |c| &c.block_bytes) as f64 / counter(&c, |c| &c.flows_committed) as f64;
    eprintln!(
        "wrote {written} flows, {} kept, max {max_seen} bytes on disk, {block_bytes:.1} compressed bytes per flow",
        kept.len()
    );
    assert!(written >= 5 * kept.len() as u64, "the store should hold far less than was written");
    // What is kept is the newest data, contiguous up to the last flow written.
    let newest = kept.iter().map(|f| f.start_ms).max().unwrap_or(0);
    assert_eq!(newest, t0 + 39 * 50_000 * 40 + 49_999 * 40);
    assert!(kept.len() > 100_000, "only {} flows kept in {budget} bytes", kept.len());
}

#[test]
fn refused_growth_is_recovered_by_eviction() {
    // One commit much larger than the room left: the quota backend refuses the
    // growth, the writer drops the handle, evicts the oldest segments, reopens
    // and retries; the batch is stored whole.
    let budget = 6 << 20;
    let tmp = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let dir = DataDir::new(tmp.path());
    let mut w = StoreWriter::open(dir.clone(), settings(budget), flowwarden::metrics::Registry::new()).unwrap_or_else(|e| panic!("{e}"));
    let t0 = 1_793_577_600_000;
    for round in 0..6u64 {
        w.add(&flows(round, 20_000, t0 + round * 600_000, 30));
        w.commit();
    }
    let big = flows(99, 60_000, t0 + 10 * 3_600_000, 1);
    w.add(&big);
    w.commit();
    let c = w.counters.clone();
    w.finish();
    assert!(
        counter(&c, |c| &c.commit_retries) > 0,
        "the quota should have refused at least once"
    );
    assert_eq!(counter(&c, |c| &c.commit_failures), 0, "a refusal for room is not a failure");
    assert_eq!(counter(&c, |c| &c.flows_dropped), 0);
    assert!(dir.total_bytes().unwrap_or(u64::MAX) <= budget);
    let kept = common::read_all(tmp.path());
    let late = kept.iter().filter(|f| f.start_ms >= t0 + 10 * 3_600_000).count();
    assert_eq!(late, big.len(), "the large batch must be stored whole");
}

#[test]
fn age_cap_removes_old_segments() {
    let tmp = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let dir = DataDir::new(tmp.path());
    let mut s = settings(256 << 20);
    s.max_age_ms = Some(3_600_000);
    let mut w = StoreWriter::open(dir.clone(), s, flowwarden::metrics::Registry::new()).unwrap_or_else(|e| panic!("{e}"));
    let t0 = 1_793_577_600_000;
    for h in 0..6u64 {
        w.add(&flows(h, 1000, t0 + h * 3_600_000, 3_000));
        w.commit();
    }
    w.finish();
    let kept = common::read_all(tmp.path());
    let oldest = kept.iter().map(|f| f.start_ms).min().unwrap_or(0);
    assert!(
        oldest >= t0 + 3 * 3_600_000,
        "flows older than the cap plus a span remain: {oldest}"
    );
}

#[test]
fn templates_and_exporter_health_survive_restart() {
    // First run sees the templates (only in the first datagram); the second run,
    // a new process state, gets only data datagrams from the same exporter.
    let mut office = flowgen::Office::new(3, 30);
    office.intensity = 6.0;
    let t0 = 1_793_577_600_000 + 10 * 3_600_000;
    let all = office.flows(t0, t0 + 3_600_000);
    for version in [flowgen::Version::V9, flowgen::Version::Ipfix] {
        let mut exp = flowgen::Exporter::new(version, t0 - 86_400_000);
        exp.template_every = u32::MAX;
        let stream = flowgen::export_stream(&mut exp, &all, 1000);
        let (first, second) = stream.split_at(stream.len() / 2);
        let tmp = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let cfg: Config = common::test_config();
        let src: SocketAddr = "198.51.100.7:9996".parse().unwrap_or_else(|e| panic!("{e}"));
        let run = |part: &[(u64, u32, Vec<u8>)]| {
            let mut p = flowwarden::pipeline::Pipeline::open(&cfg, tmp.path(), flowwarden::pipeline::Backpressure::Block)
                .unwrap_or_else(|e| panic!("{e}"));
            for (t, _, d) in part {
                p.datagram(src, *t, d);
            }
            p.finish()
        };
        let r1 = run(first);
        let r2 = run(second);
        assert_eq!(
            r2.decode.pending_held + r2.decode.sets_without_template,
            0,
            "{version:?}: second run lacked templates"
        );
        let want: u64 = second.iter().map(|s| s.1 as u64).sum();
        assert_eq!(r2.decode.records, want, "{version:?}");
        assert_eq!(r1.flows_committed + r2.flows_committed, all.len() as u64, "{version:?}");
        assert_eq!(common::read_all(tmp.path()).len(), all.len(), "{version:?}");
        // Exporter health carried over and kept counting.
        let ex = flowwarden::decode::rows::load_exporters(&flowwarden::store::reader::Reader::new(DataDir::new(tmp.path())))
            .unwrap_or_else(|e| panic!("{e}"));
        let e = ex
            .iter()
            .find(|e| e.exporter == src.to_string())
            .unwrap_or_else(|| panic!("exporter missing"));
        assert_eq!(e.packets, stream.len() as u64, "{version:?}");
    }
}

#[test]
fn rollups_total_and_rank_what_was_stored() {
    use flowwarden::store::reader::Reader;
    use flowwarden::store::schema::{dim, metric, top};
    let tmp = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let dir = DataDir::new(tmp.path());
    let mut w = StoreWriter::open(dir.clone(), settings(256 << 20), flowwarden::metrics::Registry::new()).unwrap_or_else(|e| panic!("{e}"));
    let t0 = 1_793_577_600_000 + 3_600_000;
    let mut all = flows(1, 5_000, t0, 100); // 500 s: spans 9 minutes
    let other: SocketAddr = "192.0.2.2:9995".parse().unwrap_or_else(|e| panic!("{e}"));
    for f in all.iter_mut().step_by(3) {
        f.exporter = other;
        f.proto = 17;
    }
    w.add(&all[..2_500]);
    w.commit();
    w.add(&all[2_500..]);
    w.commit();
    w.finish();
    let r = Reader::new(dir);
    let total: u64 = r.minutes(dim::TOTAL, 0, u64::MAX).unwrap_or_default().iter().map(|m| m.2).sum();
    assert_eq!(total, all.iter().map(|f| f.bytes).sum::<u64>());
    let flows_per_minute = r.minutes(dim::TOTAL, 0, u64::MAX).unwrap_or_default();
    assert_eq!(flows_per_minute.len(), 9);
    assert_eq!(flows_per_minute.iter().map(|m| m.4).sum::<u64>(), 5_000);
    let udp: u64 = r
        .minutes(dim::PROTOCOL, 0, u64::MAX)
        .unwrap_or_default()
        .iter()
        .filter(|m| m.1 == vec![17])
        .map(|m| m.4)
        .sum();
    assert_eq!(udp, all.iter().filter(|f| f.proto == 17).count() as u64);
    let by_exporter = r.minutes(dim::EXPORTER, 0, u64::MAX).unwrap_or_default();
    let other_flows: u64 = by_exporter
        .iter()
        .filter(|m| m.1 == other.to_string().into_bytes())
        .map(|m| m.4)
        .sum();
    assert_eq!(other_flows, all.iter().filter(|f| f.exporter == other).count() as u64);
    // Hour top sources by bytes equal a direct computation.
    let hour = t0 - t0 % 3_600_000;
    let listed = r.hour_top(hour, top::SRC, metric::BYTES).unwrap_or_default();
    let mut by_src: std::collections::HashMap<IpAddr, u64> = Default::default();
    for f in &all {
        *by_src.entry(f.src).or_default() += f.bytes;
    }
    let mut want: Vec<(IpAddr, u64)> = by_src.into_iter().collect();
    want.sort_by_key(|w| std::cmp::Reverse(w.1));
    assert!(!listed.is_empty());
    for (e, (ip, bytes)) in listed.iter().zip(&want).take(10) {
        assert_eq!(flowwarden::store::rollup::render_key(top::SRC, &e.key), ip.to_string());
        assert_eq!(e.bytes, *bytes);
    }
}
