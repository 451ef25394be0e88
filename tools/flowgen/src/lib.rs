//! flowgen: seeded synthetic NetFlow v5/v9/IPFIX for tests, benchmarks and the
//! appliance's demo mode. [`model`] makes flows of a branch office (with
//! optional attacks), [`encode`] turns them into export datagrams, [`pcap`]
//! writes captures, [`send`] paces datagrams to a UDP collector.

pub mod encode;
pub mod model;
pub mod pcap;
pub mod rng;
pub mod scenario;
pub mod send;

pub use encode::{Exporter, Version};
pub use model::{Attack, Flow, Office};

/// Export flows the way a router would: records are exported when they end,
/// grouped into export cycles of `cycle_ms`. Returns (export time, records, datagram).
pub fn export_stream(exporter: &mut Exporter, flows: &[Flow], cycle_ms: u64) -> Vec<(u64, u32, Vec<u8>)> {
    let mut by_end: Vec<&Flow> = flows.iter().collect();
    by_end.sort_by_key(|f| f.end_ms);
    let mut out = Vec::new();
    let mut i = 0;
    while i < by_end.len() {
        let cycle_end = (by_end[i].end_ms / cycle_ms + 1) * cycle_ms;
        let mut batch = Vec::new();
        while i < by_end.len() && by_end[i].end_ms < cycle_end {
            batch.push(by_end[i].clone());
            i += 1;
        }
        for (n, d) in exporter.encode(&batch, cycle_end) {
            out.push((cycle_end, n, d));
        }
    }
    out
}
