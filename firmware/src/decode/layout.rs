//! Compiled templates: a declared [`TemplateSpec`] turned into the reads that
//! fill a [`RecordBuilder`], and the walk over a data set's records with it.
//!
//! Fixed-length layouts read each used field at its precomputed offset (no
//! per-record allocation, no per-field dispatch on unused fields);
//! variable-length layouts (IPFIX, RFC 7011 §7) read each length prefix,
//! including zero-length values. Elements the builder does not use, enterprise
//! elements other than RFC 5103's reverse ones, v9 scope fields and values of an
//! unexpected size are skipped, never misread.

use super::normalize::{REVERSE, REVERSE_PEN, RecordBuilder, raw_field_known};
use super::wire::{FieldSpec, TemplateSpec, VARLEN, WireError, be16};

/// A template ready to decode records.
#[derive(Debug, PartialEq, Eq)]
pub struct Layout {
    pub spec: TemplateSpec,
    /// Every field in order: the element the builder knows it as (or None) and its declared length.
    slots: Vec<(Option<u16>, u16)>,
    /// The record length when no field is variable-length.
    fixed: Option<usize>,
    /// Fixed layouts: (element, offset, length) of the used fields only.
    direct: Vec<(u16, usize, usize)>,
    /// The shortest record (variable-length fields empty).
    min_len: usize,
}

/// The builder's element number for a field, if it uses the field at this size.
fn element(f: &FieldSpec) -> Option<u16> {
    if f.scope || f.len == VARLEN || f.ie >= REVERSE {
        return None;
    }
    let ie = match f.pen {
        0 => f.ie,
        REVERSE_PEN => REVERSE | f.ie,
        _ => return None,
    };
    raw_field_known(ie, f.len).then_some(ie)
}

impl Layout {
    /// Compile a template; None when its records would have no length (nothing to read).
    pub fn compile(spec: TemplateSpec) -> Option<Layout> {
        let slots: Vec<(Option<u16>, u16)> = spec.fields.iter().map(|f| (element(f), f.len)).collect();
        let varlen = spec.fields.iter().any(|f| f.len == VARLEN);
        let min_len: usize = spec.fields.iter().map(|f| if f.len == VARLEN { 1 } else { f.len as usize }).sum();
        if min_len == 0 {
            return None;
        }
        let mut direct = Vec::new();
        let fixed = if varlen {
            None
        } else {
            let mut off = 0usize;
            for &(el, len) in &slots {
                if let Some(ie) = el {
                    direct.push((ie, off, len as usize));
                }
                off += len as usize;
            }
            Some(off)
        };
        Some(Layout {
            spec,
            slots,
            fixed,
            direct,
            min_len,
        })
    }

    /// Decode every record of a data set body (`tid` and `at`, the body's offset
    /// in the datagram, for errors). Each record's builder goes to `each`.
    /// Returns the records decoded and, if the set was damaged, why the walk
    /// stopped (the records before the damage are delivered).
    pub fn records(&self, body: &[u8], tid: u16, at: usize, mut each: impl FnMut(RecordBuilder)) -> (u64, Option<WireError>) {
        if let Some(len) = self.fixed {
            let mut n = 0;
            // What is left after the last whole record is padding.
            for rec in body.chunks_exact(len) {
                let mut b = RecordBuilder::default();
                for &(ie, off, l) in &self.direct {
                    if let Some(v) = rec.get(off..off + l) {
                        b.apply_raw(ie, v);
                    }
                }
                each(b);
                n += 1;
            }
            return (n, None);
        }
        let mut n = 0u64;
        let mut p = 0usize;
        while body.len() - p >= self.min_len {
            let start = p;
            let mut b = RecordBuilder::default();
            for &(el, len) in &self.slots {
                let l = if len == VARLEN {
                    match body.get(p) {
                        Some(255) => {
                            let l = be16(body, p + 1);
                            p += 3;
                            l.map(usize::from)
                        }
                        Some(&l) => {
                            p += 1;
                            Some(l as usize)
                        }
                        None => None,
                    }
                } else {
                    Some(len as usize)
                };
                let Some(v) = l.and_then(|l| body.get(p..p + l)) else {
                    // A zero-filled tail is padding, anything else is damage.
                    if body[start..].iter().all(|&x| x == 0) {
                        return (n, None);
                    }
                    return (
                        n,
                        Some(WireError::Record {
                            tid,
                            at,
                            record: n + 1,
                            why: "a field runs past the end of the set",
                        }),
                    );
                };
                if let Some(ie) = el {
                    b.apply_raw(ie, v);
                }
                p += v.len();
            }
            each(b);
            n += 1;
        }
        (n, None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flow::FlowRecord;

    fn spec(fields: &[(u16, u32, u16)]) -> TemplateSpec {
        TemplateSpec {
            options: false,
            scope_fields: 0,
            fields: fields
                .iter()
                .map(|&(ie, pen, len)| FieldSpec {
                    ie,
                    pen,
                    len,
                    scope: false,
                })
                .collect(),
        }
    }

    fn flows(l: &Layout, body: &[u8]) -> (Vec<FlowRecord>, Option<WireError>) {
        let mut out = Vec::new();
        let (_, e) = l.records(body, 300, 20, |b| {
            let mut r = FlowRecord::default();
            b.finish(&Default::default(), 1, &mut r);
            out.push(r);
        });
        (out, e)
    }

    #[test]
    fn fixed_records_and_padding() {
        let l = Layout::compile(spec(&[(8, 0, 4), (12, 0, 4), (1, 0, 4), (999, 0, 2)])).unwrap_or_else(|| panic!());
        let mut body = vec![10, 0, 0, 1, 10, 0, 0, 2, 0, 0, 1, 0, 0, 0];
        body.extend_from_slice(&[192, 0, 2, 1, 192, 0, 2, 2, 0, 0, 0, 7, 0, 0, 0, 0, 0]);
        let (f, e) = flows(&l, &body);
        assert!(e.is_none());
        assert_eq!(f.len(), 2);
        assert_eq!((f[0].src.to_string(), f[0].bytes), ("10.0.0.1".into(), 256));
        assert_eq!((f[1].dst.to_string(), f[1].bytes), ("192.0.2.2".into(), 7));
    }

    #[test]
    fn variable_length_values_including_empty_ones() {
        // src(4), interfaceName (varlen), octets(4); the second record's name is empty,
        // the third uses the 3-byte length form.
        let l = Layout::compile(spec(&[(8, 0, 4), (82, 0, VARLEN), (12, 0, 4), (1, 0, 4)])).unwrap_or_else(|| panic!());
        let mut body = vec![10, 0, 0, 1, 2, b'e', b'0', 10, 0, 0, 2, 0, 0, 0, 5];
        body.extend_from_slice(&[10, 0, 0, 3, 0, 10, 0, 0, 4, 0, 0, 0, 6]);
        body.extend_from_slice(&[10, 0, 0, 5, 255, 0, 1, b'x', 10, 0, 0, 6, 0, 0, 0, 7, 0, 0]);
        let (f, e) = flows(&l, &body);
        assert!(e.is_none(), "{e:?}");
        assert_eq!(
            f.iter().map(|r| (r.src.to_string(), r.bytes)).collect::<Vec<_>>(),
            vec![("10.0.0.1".into(), 5), ("10.0.0.3".into(), 6), ("10.0.0.5".into(), 7)]
        );
        // A length that runs past the set is damage, after the records before it.
        let mut bad = body[..15].to_vec();
        bad.extend_from_slice(&[10, 0, 0, 3, 40, 1, 2, 3, 4, 5, 6, 7, 8, 9]);
        let (f, e) = flows(&l, &bad);
        assert_eq!(f.len(), 1);
        assert_eq!(
            e.map(|e| e.to_string()).as_deref(),
            Some("data set 300 at byte 20, record 2: a field runs past the end of the set")
        );
    }

    #[test]
    fn reverse_elements_enterprise_fields_and_odd_sizes() {
        let l =
            Layout::compile(spec(&[(8, 0, 4), (12, 0, 4), (1, 29305, 4), (1, 9, 4), (8, 0, 16), (1, 0, 2)])).unwrap_or_else(|| panic!());
        let body = [
            10, 0, 0, 1, 10, 0, 0, 2, 0, 0, 0, 50, 0, 0, 0, 60, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 9,
        ];
        let mut got = None;
        l.records(&body, 300, 0, |b| got = Some((b.reverse(), b.is_flow())));
        // Reverse octets from PEN 29305; PEN 9's element and the 16-byte IPv4 field are skipped.
        assert_eq!(got, Some((Some((50, 0, 0)), true)));
        assert!(Layout::compile(spec(&[(8, 0, 0)])).is_none());
    }

    proptest::proptest! {
        #[test]
        fn never_panics(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..300)) {
            let l = Layout::compile(spec(&[(8, 0, 4), (82, 0, VARLEN), (12, 0, 4), (1, 0, 8), (83, 0, VARLEN)])).unwrap_or_else(|| panic!());
            let _ = l.records(&bytes, 256, 0, |_| {});
        }
    }
}
