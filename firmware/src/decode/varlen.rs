//! Pre-pass that makes IPFIX messages with zero-length variable-length fields
//! acceptable to `netflow_parser`.
//!
//! RFC 7011 §7 allows a variable-length Information Element to be encoded with
//! length 0 (for example an empty interface name), but netflow_parser 1.0.6
//! rejects the whole data set when it meets one. Before a datagram reaches the
//! parser this pass tracks, per transport session and observation domain, the
//! layout of templates that contain variable-length fields; when a data set of
//! such a template holds a zero-length value, the message is rewritten with a
//! one-byte value (0x00) in its place and set and message lengths adjusted.
//! None of the fields flowwarden stores are variable-length, so the stored flow
//! is exactly what the exporter sent. Only templates with variable-length
//! fields are remembered, and at most `cap` of them (further ones are counted).

use std::collections::HashMap;
use std::net::SocketAddr;

const VARLEN: u16 = 65535;

/// Tracks variable-length template layouts and rewrites affected messages.
#[derive(Debug)]
pub struct VarlenFixer {
    templates: HashMap<(SocketAddr, u32, u16), Box<[u16]>>,
    cap: usize,
    /// Templates not remembered because `cap` was reached.
    pub templates_dropped: u64,
    /// Messages rewritten.
    pub rewritten: u64,
    /// Rewrites abandoned because the message would exceed 65535 bytes.
    pub oversize: u64,
}

fn be16(d: &[u8], at: usize) -> Option<u16> {
    d.get(at..at + 2).map(|b| u16::from_be_bytes([b[0], b[1]]))
}

impl VarlenFixer {
    pub fn new(cap: usize) -> Self {
        VarlenFixer {
            templates: HashMap::new(),
            cap,
            templates_dropped: 0,
            rewritten: 0,
            oversize: 0,
        }
    }

    /// Inspect one datagram; returns a rewritten copy when it needs one.
    pub fn fix(&mut self, src: SocketAddr, data: &[u8]) -> Option<Vec<u8>> {
        if data.len() < 16 || be16(data, 0) != Some(10) {
            return None;
        }
        let limit = (be16(data, 2)? as usize).min(data.len());
        let domain = u32::from_be_bytes([data[12], data[13], data[14], data[15]]);
        let mut off = 16;
        let mut needs_fix = false;
        while off + 4 <= limit {
            let set_id = be16(data, off)?;
            let set_len = be16(data, off + 2)? as usize;
            if set_len < 4 || off + set_len > limit {
                break;
            }
            let body = &data[off + 4..off + set_len];
            match set_id {
                2 => self.learn(src, domain, body, false),
                3 => self.learn(src, domain, body, true),
                id if id >= 256 => {
                    if let Some(layout) = self.templates.get(&(src, domain, id))
                        && has_zero_varlen(body, layout)
                    {
                        needs_fix = true;
                    }
                }
                _ => {}
            }
            off += set_len;
        }
        if !needs_fix {
            return None;
        }
        let out = self.rewrite(src, domain, data, limit);
        if out.is_some() {
            self.rewritten += 1;
        } else {
            self.oversize += 1;
        }
        out
    }

    fn learn(&mut self, src: SocketAddr, domain: u32, body: &[u8], options: bool) {
        let mut p = 0;
        let header = if options { 6 } else { 4 };
        while p + header <= body.len() {
            let Some(tid) = be16(body, p) else { return };
            let Some(count) = be16(body, p + 2) else { return };
            if tid < 256 {
                return; // padding
            }
            p += header;
            let mut lens = Vec::with_capacity(count as usize);
            for _ in 0..count {
                let (Some(id), Some(len)) = (be16(body, p), be16(body, p + 2)) else {
                    return;
                };
                p += if id & 0x8000 != 0 { 8 } else { 4 };
                if p > body.len() {
                    return;
                }
                lens.push(len);
            }
            let key = (src, domain, tid);
            if lens.contains(&VARLEN) {
                if self.templates.len() >= self.cap && !self.templates.contains_key(&key) {
                    self.templates_dropped += 1;
                } else {
                    self.templates.insert(key, lens.into_boxed_slice());
                }
            } else {
                self.templates.remove(&key);
            }
        }
    }

    fn rewrite(&self, src: SocketAddr, domain: u32, data: &[u8], limit: usize) -> Option<Vec<u8>> {
        let mut out = Vec::with_capacity(limit + 64);
        out.extend_from_slice(&data[..16]);
        let mut off = 16;
        while off + 4 <= limit {
            let set_id = be16(data, off)?;
            let set_len = be16(data, off + 2)? as usize;
            if set_len < 4 || off + set_len > limit {
                break;
            }
            let body = &data[off + 4..off + set_len];
            let layout = (set_id >= 256).then(|| self.templates.get(&(src, domain, set_id))).flatten();
            match layout {
                Some(layout) if has_zero_varlen(body, layout) => {
                    let start = out.len();
                    out.extend_from_slice(&set_id.to_be_bytes());
                    out.extend_from_slice(&[0, 0]);
                    rewrite_body(body, layout, &mut out);
                    let new_len = u16::try_from(out.len() - start).ok()?;
                    out[start + 2..start + 4].copy_from_slice(&new_len.to_be_bytes());
                }
                _ => out.extend_from_slice(&data[off..off + set_len]),
            }
            off += set_len;
        }
        let total = u16::try_from(out.len()).ok()?;
        out[2..4].copy_from_slice(&total.to_be_bytes());
        Some(out)
    }
}

/// Walk records; `Some(zero)` per record, None when the rest is padding/garbage.
fn walk_record(body: &[u8], mut p: usize, layout: &[u16], mut on_field: impl FnMut(usize, usize, bool)) -> Option<usize> {
    for &len in layout {
        if len == VARLEN {
            let first = *body.get(p)?;
            let (hdr, n) = if first == 255 {
                (3, be16(body, p + 1)? as usize)
            } else {
                (1, first as usize)
            };
            if p + hdr + n > body.len() {
                return None;
            }
            on_field(p, hdr + n, n == 0);
            p += hdr + n;
        } else {
            let n = len as usize;
            if p + n > body.len() {
                return None;
            }
            on_field(p, n, false);
            p += n;
        }
    }
    Some(p)
}

fn has_zero_varlen(body: &[u8], layout: &[u16]) -> bool {
    let mut p = 0;
    let mut found = false;
    while p < body.len() {
        match walk_record(body, p, layout, |_, _, zero| found |= zero) {
            Some(next) if next > p => p = next,
            _ => break,
        }
    }
    found
}

fn rewrite_body(body: &[u8], layout: &[u16], out: &mut Vec<u8>) {
    let mut p = 0;
    while p < body.len() {
        let mut spans: Vec<(usize, usize, bool)> = Vec::with_capacity(layout.len());
        match walk_record(body, p, layout, |at, n, zero| spans.push((at, n, zero))) {
            Some(next) if next > p => {
                for (at, n, zero) in spans {
                    if zero {
                        out.extend_from_slice(&[1, 0]);
                    } else {
                        out.extend_from_slice(&body[at..at + n]);
                    }
                }
                p = next;
            }
            _ => {
                out.extend_from_slice(&body[p..]);
                break;
            }
        }
    }
}

/// NetFlow v9 datagrams may end in zero padding or a damaged flowset (Palo
/// Alto pads to a fixed size); netflow_parser then rejects the whole datagram.
/// Returns the length up to the last well-formed flowset when something
/// follows it, so the good part is still decoded (the cut is counted).
pub fn v9_well_formed_len(data: &[u8]) -> Option<usize> {
    if data.len() < 20 || be16(data, 0) != Some(9) {
        return None;
    }
    let mut off = 20;
    while off + 4 <= data.len() {
        let len = be16(data, off + 2)? as usize;
        if len < 4 || off + len > data.len() {
            return Some(off);
        }
        off += len;
    }
    (off != data.len()).then_some(off)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decode::testwire::{msg, set};

    fn template() -> Vec<u8> {
        // tid 300: sourceIPv4Address(4), interfaceName(varlen), octetDeltaCount(4)
        set(2, &[1, 44, 0, 3, 0, 8, 0, 4, 0, 82, 255, 255, 0, 1, 0, 4])
    }

    fn src() -> SocketAddr {
        SocketAddr::from(([192, 0, 2, 1], 4739))
    }

    #[test]
    fn zero_length_value_is_rewritten() {
        let data = set(300, &[10, 0, 0, 1, 0, 0, 0, 0, 9, 10, 0, 0, 2, 2, b'e', b'0', 0, 0, 0, 5]);
        let m = msg(&[template(), data]);
        let mut f = VarlenFixer::new(16);
        let out = f.fix(src(), &m).unwrap_or_default();
        let expect = msg(&[
            template(),
            set(300, &[10, 0, 0, 1, 1, 0, 0, 0, 0, 9, 10, 0, 0, 2, 2, b'e', b'0', 0, 0, 0, 5]),
        ]);
        assert_eq!(out, expect);
        assert_eq!(f.rewritten, 1);
        // The rewritten message now parses in netflow_parser.
        let mut p = netflow_parser::NetflowParser::default();
        let r = p.parse_bytes(&out);
        assert!(r.error.is_none(), "{:?}", r.error);
    }

    #[test]
    fn untouched_when_no_zero_length() {
        let data = set(300, &[10, 0, 0, 1, 2, b'e', b'0', 0, 0, 0, 5]);
        let m = msg(&[template(), data]);
        let mut f = VarlenFixer::new(16);
        assert!(f.fix(src(), &m).is_none());
        assert_eq!(f.templates.len(), 1);
    }

    #[test]
    fn fixed_layout_template_is_forgotten_on_reuse() {
        let mut f = VarlenFixer::new(16);
        f.fix(src(), &msg(&[template()]));
        assert_eq!(f.templates.len(), 1);
        // Same id, fixed-length layout now.
        f.fix(src(), &msg(&[set(2, &[1, 44, 0, 1, 0, 8, 0, 4])]));
        assert!(f.templates.is_empty());
    }

    #[test]
    fn cap_is_counted() {
        let mut f = VarlenFixer::new(0);
        f.fix(src(), &msg(&[template()]));
        assert_eq!(f.templates_dropped, 1);
    }

    #[test]
    fn v9_zero_padding_is_cut() {
        let mut d = vec![0, 9, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
        d.extend_from_slice(&[1, 0, 0, 8, 1, 2, 3, 4]);
        assert_eq!(v9_well_formed_len(&d), None);
        d.extend_from_slice(&[0; 100]);
        assert_eq!(v9_well_formed_len(&d), Some(28));
    }

    proptest::proptest! {
        #[test]
        fn never_panics(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..300)) {
            let mut f = VarlenFixer::new(8);
            let mut m = bytes.clone();
            if m.len() >= 2 { m[0] = 0; m[1] = 10; }
            let _ = f.fix(src(), &m);
            let _ = f.fix(src(), &msg(&[template(), bytes]));
        }
    }
}
