//! A NetFlow v5 exporter written for the tests alone (not flowgen, whose
//! model the product was tuned on): random hosts, ports and sizes, each flow
//! starting and ending inside its hour, so each hour is one segment with a
//! known number of flows. Datagrams can be written into a pcap or sent over UDP.

/// xorshift64*: a seeded generator independent of the product's.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

/// One v5 record: (src, dst, sport, dport, proto, bytes, packets, first ms, last ms).
pub type Rec = ([u8; 4], [u8; 4], u16, u16, u8, u32, u32, u64, u64);

/// A v5 datagram exported at `export_ms` by a box booted at `boot_ms`.
pub fn datagram(seq: u32, export_ms: u64, boot_ms: u64, recs: &[Rec]) -> Vec<u8> {
    let up = |t: u64| (t.saturating_sub(boot_ms)) as u32;
    let mut d = Vec::with_capacity(24 + 48 * recs.len());
    d.extend_from_slice(&5u16.to_be_bytes());
    d.extend_from_slice(&(recs.len() as u16).to_be_bytes());
    d.extend_from_slice(&up(export_ms).to_be_bytes());
    d.extend_from_slice(&((export_ms / 1000) as u32).to_be_bytes());
    d.extend_from_slice(&(((export_ms % 1000) * 1_000_000) as u32).to_be_bytes());
    d.extend_from_slice(&seq.to_be_bytes());
    d.extend_from_slice(&[0, 0, 0, 0]); // engine type/id, sampling
    for &(src, dst, sport, dport, proto, bytes, packets, first, last) in recs {
        d.extend_from_slice(&src);
        d.extend_from_slice(&dst);
        d.extend_from_slice(&[0; 4]); // next hop
        d.extend_from_slice(&1u16.to_be_bytes());
        d.extend_from_slice(&2u16.to_be_bytes());
        d.extend_from_slice(&packets.to_be_bytes());
        d.extend_from_slice(&bytes.to_be_bytes());
        d.extend_from_slice(&up(first).to_be_bytes());
        d.extend_from_slice(&up(last).to_be_bytes());
        d.extend_from_slice(&sport.to_be_bytes());
        d.extend_from_slice(&dport.to_be_bytes());
        d.extend_from_slice(&[0, 0x1b, proto, 0]);
        d.extend_from_slice(&[0; 4]); // AS numbers
        d.extend_from_slice(&[24, 24, 0, 0]);
    }
    d
}

/// `hours` hours from `start_ms` (an hour boundary), `per_hour` random flows
/// each, 30 to a datagram exported right after its last flow ended: (export ms, datagram).
pub fn hours(seed: u64, start_ms: u64, hours: u64, per_hour: u64) -> Vec<(u64, Vec<u8>)> {
    let mut r = Rng::new(seed);
    let boot = start_ms - 3_600_000;
    let mut out = Vec::new();
    let mut seq = 0u32;
    for h in 0..hours {
        let t0 = start_ms + h * 3_600_000;
        let mut flows: Vec<Rec> = (0..per_hour)
            .map(|_| {
                let first = t0 + r.below(3_000_000);
                let last = first + r.below(60_000);
                let ip = |r: &mut Rng| (r.next() as u32).to_be_bytes();
                (
                    ip(&mut r),
                    ip(&mut r),
                    1 + r.below(65_535) as u16,
                    1 + r.below(65_535) as u16,
                    [6u8, 17][r.below(2) as usize],
                    40 + r.below(1_000_000) as u32,
                    1 + r.below(100) as u32,
                    first,
                    last,
                )
            })
            .collect();
        flows.sort_by_key(|f| f.8);
        for chunk in flows.chunks(30) {
            let export = chunk.iter().map(|f| f.8).max().unwrap_or(t0) + 1000;
            out.push((export, datagram(seq, export, boot, chunk)));
            seq = seq.wrapping_add(chunk.len() as u32);
        }
    }
    out.sort_by_key(|d| d.0);
    out
}

/// A classic pcap (Ethernet, IPv4, UDP from 192.0.2.1:40000 to 2055) of the datagrams.
pub fn write_pcap(path: &std::path::Path, datagrams: &[(u64, Vec<u8>)]) {
    write_pcap_from(path, [192, 0, 2, 1], datagrams)
}

/// [`write_pcap`] from another exporter address (port 40000).
pub fn write_pcap_from(path: &std::path::Path, exporter: [u8; 4], datagrams: &[(u64, Vec<u8>)]) {
    let mut f = Vec::new();
    f.extend_from_slice(&0xa1b2_c3d4u32.to_le_bytes());
    f.extend_from_slice(&2u16.to_le_bytes());
    f.extend_from_slice(&4u16.to_le_bytes());
    f.extend_from_slice(&[0; 8]);
    f.extend_from_slice(&65_535u32.to_le_bytes());
    f.extend_from_slice(&1u32.to_le_bytes());
    for (ts, payload) in datagrams {
        let udp_len = 8 + payload.len();
        let ip_len = 20 + udp_len;
        let mut frame = vec![0u8; 12];
        frame.extend_from_slice(&[0x08, 0x00]);
        frame.extend_from_slice(&[0x45, 0, (ip_len >> 8) as u8, ip_len as u8, 0, 0, 0, 0, 64, 17, 0, 0]);
        frame.extend_from_slice(&exporter);
        frame.extend_from_slice(&[127, 0, 0, 1]);
        frame.extend_from_slice(&40_000u16.to_be_bytes());
        frame.extend_from_slice(&2055u16.to_be_bytes());
        frame.extend_from_slice(&(udp_len as u16).to_be_bytes());
        frame.extend_from_slice(&[0, 0]);
        frame.extend_from_slice(payload);
        f.extend_from_slice(&((ts / 1000) as u32).to_le_bytes());
        f.extend_from_slice(&(((ts % 1000) * 1000) as u32).to_le_bytes());
        f.extend_from_slice(&(frame.len() as u32).to_le_bytes());
        f.extend_from_slice(&(frame.len() as u32).to_le_bytes());
        f.extend_from_slice(&frame);
    }
    std::fs::write(path, f).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
}
