//! Wire formats of NetFlow v5, v7, v9 and IPFIX (RFC 3954, RFC 7011): checked,
//! zero-copy readers over one datagram.
//!
//! The decoder walks each datagram once with these: a header, then the sets
//! (v9 flowsets / IPFIX sets) as borrowed slices, template records as they are
//! defined, and data records through a compiled [`super::layout::Layout`].
//! Nothing here allocates per record or panics on any input: every read is
//! bounds-checked and a damaged part becomes a [`WireError`] that says what,
//! where (byte offset in the datagram) and what was expected.

use thiserror::Error;

/// A v5 header and record size; v7 uses the same header with 52-byte records.
pub const V5_HEADER: usize = 24;
pub const V5_RECORD: usize = 48;
pub const V7_RECORD: usize = 52;
pub const V9_HEADER: usize = 20;
pub const IPFIX_HEADER: usize = 16;
/// The length that marks a variable-length field in an IPFIX template.
pub const VARLEN: u16 = 65535;

/// What was wrong with a datagram, and where.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum WireError {
    #[error("{what} at byte {at}: needs {need} bytes, {have} left")]
    Truncated {
        what: &'static str,
        at: usize,
        need: usize,
        have: usize,
    },
    #[error("v{version} header says {count} records ({need} bytes with the header), the datagram has {have} bytes")]
    RecordCount {
        version: u16,
        count: u16,
        need: usize,
        have: usize,
    },
    #[error("IPFIX header says the message has {declared} bytes, the datagram has {have}")]
    MessageLength { declared: usize, have: usize },
    #[error("set {id} at byte {at} declares {len} bytes; expected 4 to {left}")]
    SetLength { id: u16, at: usize, len: usize, left: usize },
    #[error("template {tid} at byte {at}: {why}")]
    Template { tid: u16, at: usize, why: String },
    #[error("data set {tid} at byte {at}, record {record}: {why}")]
    Record {
        tid: u16,
        at: usize,
        record: u64,
        why: &'static str,
    },
}

#[inline]
pub fn be16(d: &[u8], at: usize) -> Option<u16> {
    d.get(at..at + 2).map(|b| u16::from_be_bytes([b[0], b[1]]))
}

#[inline]
pub fn be32(d: &[u8], at: usize) -> Option<u32> {
    d.get(at..at + 4).map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
}

fn need(d: &[u8], len: usize, what: &'static str) -> Result<(), WireError> {
    if d.len() < len {
        return Err(WireError::Truncated {
            what,
            at: 0,
            need: len,
            have: d.len(),
        });
    }
    Ok(())
}

/// The header of a v5 or v7 datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct V5Header {
    pub version: u16,
    pub count: u16,
    pub sys_uptime: u32,
    pub unix_secs: u32,
    pub unix_nsecs: u32,
    pub sequence: u32,
    pub engine_type: u8,
    pub engine_id: u8,
    pub sampling_interval: u16,
}

impl V5Header {
    /// Read the header and check that the records it announces are there.
    /// Returns the header and the records' bytes (`count` × the record size).
    pub fn parse(d: &[u8]) -> Result<(V5Header, &[u8]), WireError> {
        need(d, V5_HEADER, "v5/v7 header")?;
        let g16 = |at| be16(d, at).unwrap_or(0);
        let g32 = |at| be32(d, at).unwrap_or(0);
        let h = V5Header {
            version: g16(0),
            count: g16(2),
            sys_uptime: g32(4),
            unix_secs: g32(8),
            unix_nsecs: g32(12),
            sequence: g32(16),
            engine_type: d[20],
            engine_id: d[21],
            sampling_interval: g16(22),
        };
        let size = if h.version == 7 { V7_RECORD } else { V5_RECORD };
        let end = V5_HEADER + h.count as usize * size;
        if end > d.len() {
            return Err(WireError::RecordCount {
                version: h.version,
                count: h.count,
                need: end,
                have: d.len(),
            });
        }
        Ok((h, &d[V5_HEADER..end]))
    }

    /// Export time, UTC ms.
    pub fn export_ms(&self) -> u64 {
        self.unix_secs as u64 * 1000 + (self.unix_nsecs / 1_000_000) as u64
    }
}

/// One v5 (or v7: the first 48 bytes match) flow record, read from its bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct V5Record {
    pub src: [u8; 4],
    pub dst: [u8; 4],
    pub input: u16,
    pub output: u16,
    pub packets: u32,
    pub octets: u32,
    pub first: u32,
    pub last: u32,
    pub src_port: u16,
    pub dst_port: u16,
    pub tcp_flags: u8,
    pub proto: u8,
}

impl V5Record {
    /// `r` is one record (at least 48 bytes, as [`V5Header::parse`] guarantees).
    pub fn read(r: &[u8]) -> Option<V5Record> {
        let a4 = |at: usize| -> Option<[u8; 4]> { r.get(at..at + 4)?.try_into().ok() };
        Some(V5Record {
            src: a4(0)?,
            dst: a4(4)?,
            input: be16(r, 12)?,
            output: be16(r, 14)?,
            packets: be32(r, 16)?,
            octets: be32(r, 20)?,
            first: be32(r, 24)?,
            last: be32(r, 28)?,
            src_port: be16(r, 32)?,
            dst_port: be16(r, 34)?,
            tcp_flags: *r.get(37)?,
            proto: *r.get(38)?,
        })
    }
}

/// The header of a v9 packet or an IPFIX message, in the fields both have.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TemplatedHeader {
    pub version: u16,
    /// sysUptime at export (v9 only), ms.
    pub sys_uptime: Option<u32>,
    pub export_secs: u32,
    pub sequence: u32,
    /// v9 source id / IPFIX observation domain id.
    pub domain: u32,
    /// Where the sets begin and end.
    pub sets_at: usize,
    pub end: usize,
}

impl TemplatedHeader {
    /// Read a v9 or IPFIX header. An IPFIX message longer than the datagram is an
    /// error returned beside the header (the sets that fit are still read).
    pub fn parse(d: &[u8]) -> Result<(TemplatedHeader, Option<WireError>), WireError> {
        match be16(d, 0) {
            Some(9) => {
                need(d, V9_HEADER, "v9 header")?;
                Ok((
                    TemplatedHeader {
                        version: 9,
                        sys_uptime: be32(d, 4),
                        export_secs: be32(d, 8).unwrap_or(0),
                        sequence: be32(d, 12).unwrap_or(0),
                        domain: be32(d, 16).unwrap_or(0),
                        sets_at: V9_HEADER,
                        end: d.len(),
                    },
                    None,
                ))
            }
            _ => {
                need(d, IPFIX_HEADER, "IPFIX header")?;
                let declared = be16(d, 2).unwrap_or(0) as usize;
                let mut err = None;
                let end = if declared > d.len() {
                    err = Some(WireError::MessageLength { declared, have: d.len() });
                    d.len()
                } else if declared < IPFIX_HEADER {
                    err = Some(WireError::MessageLength { declared, have: d.len() });
                    IPFIX_HEADER
                } else {
                    declared
                };
                Ok((
                    TemplatedHeader {
                        version: 10,
                        sys_uptime: None,
                        export_secs: be32(d, 4).unwrap_or(0),
                        sequence: be32(d, 8).unwrap_or(0),
                        domain: be32(d, 12).unwrap_or(0),
                        sets_at: IPFIX_HEADER,
                        end,
                    },
                    err,
                ))
            }
        }
    }
}

/// One set (v9 flowset): its id, where it starts in the datagram, its body.
#[derive(Debug, Clone, Copy)]
pub struct Set<'a> {
    pub id: u16,
    pub at: usize,
    pub body: &'a [u8],
}

/// Why the walk over the sets stopped before the end.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SetsEnd {
    /// Every byte belonged to a set.
    Clean,
    /// 1-3 bytes too few for a set header (padding).
    Padding(usize),
    /// A set length that is too small or runs past the end.
    Damaged(WireError),
}

/// Iterator over the sets of a v9 packet or IPFIX message.
pub struct Sets<'a> {
    data: &'a [u8],
    off: usize,
    end: usize,
    pub stop: SetsEnd,
}

impl<'a> Sets<'a> {
    pub fn new(data: &'a [u8], h: &TemplatedHeader) -> Sets<'a> {
        Sets {
            data,
            off: h.sets_at,
            end: h.end.min(data.len()),
            stop: SetsEnd::Clean,
        }
    }
}

impl<'a> Iterator for Sets<'a> {
    type Item = Set<'a>;

    fn next(&mut self) -> Option<Set<'a>> {
        if self.off >= self.end {
            return None;
        }
        let left = self.end - self.off;
        let (Some(id), Some(len)) = (be16(self.data, self.off), be16(self.data, self.off + 2)) else {
            self.stop = SetsEnd::Padding(left);
            self.off = self.end;
            return None;
        };
        let len = len as usize;
        if left < 4 {
            self.stop = SetsEnd::Padding(left);
            self.off = self.end;
            return None;
        }
        if len < 4 || len > left {
            self.stop = SetsEnd::Damaged(WireError::SetLength {
                id,
                at: self.off,
                len,
                left,
            });
            self.off = self.end;
            return None;
        }
        let at = self.off;
        self.off += len;
        Some(Set {
            id,
            at,
            body: &self.data[at + 4..at + len],
        })
    }
}

/// The four kinds of template set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TemplateSetKind {
    /// v9 flowset 0 (also accepted inside IPFIX messages, as some exporters send it).
    V9Data,
    /// v9 flowset 1: scope and option lengths in bytes, scope types not IEs.
    V9Options,
    /// IPFIX set 2.
    IpfixData,
    /// IPFIX set 3: field count and scope field count.
    IpfixOptions,
}

impl TemplateSetKind {
    pub fn of(version: u16, set_id: u16) -> Option<TemplateSetKind> {
        match (version, set_id) {
            (_, 0) => Some(TemplateSetKind::V9Data),
            (_, 1) => Some(TemplateSetKind::V9Options),
            (10, 2) => Some(TemplateSetKind::IpfixData),
            (10, 3) => Some(TemplateSetKind::IpfixOptions),
            _ => None,
        }
    }

    pub fn options(self) -> bool {
        matches!(self, TemplateSetKind::V9Options | TemplateSetKind::IpfixOptions)
    }

    fn ipfix(self) -> bool {
        matches!(self, TemplateSetKind::IpfixData | TemplateSetKind::IpfixOptions)
    }
}

/// One field of a template as the exporter declared it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct FieldSpec {
    /// Information element id (v9 field type), without the enterprise bit.
    pub ie: u16,
    /// Private enterprise number (IPFIX), 0 for IANA elements.
    pub pen: u32,
    /// Length in bytes, or [`VARLEN`].
    pub len: u16,
    /// A v9 options scope field: its type is a scope type, not an element.
    pub scope: bool,
}

/// A template as declared: what is persisted and compiled into a layout.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct TemplateSpec {
    pub options: bool,
    pub scope_fields: u16,
    pub fields: Vec<FieldSpec>,
}

/// What a template record said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TemplateEvent {
    Define(u16, TemplateSpec),
    /// An IPFIX withdrawal of one template id.
    Withdraw(u16),
    /// An IPFIX withdrawal of all (options) templates (template id = set id).
    WithdrawAll {
        options: bool,
    },
}

/// Fields a template may declare (a 64 KiB set holds at most ~16 k anyway).
const MAX_TEMPLATE_FIELDS: usize = 1024;

/// Read every template record of a template set body (`at`: the body's offset in
/// the datagram). Events before a damaged record are delivered.
pub fn templates(kind: TemplateSetKind, body: &[u8], at: usize, mut each: impl FnMut(TemplateEvent)) -> Result<(), WireError> {
    let head = match kind {
        TemplateSetKind::V9Data | TemplateSetKind::IpfixData => 4,
        TemplateSetKind::V9Options | TemplateSetKind::IpfixOptions => 6,
    };
    let short = |what: &'static str, p: usize, need: usize| WireError::Truncated {
        what,
        at: at + p,
        need,
        have: body.len().saturating_sub(p),
    };
    let mut p = 0usize;
    while p + 4 <= body.len() {
        let tid = be16(body, p).unwrap_or(0);
        let count = be16(body, p + 2).unwrap_or(0) as usize;
        let rec_at = at + p;
        let err = |why: String| WireError::Template { tid, at: rec_at, why };
        // IPFIX withdrawals: a record with no fields (4 bytes even in an options set).
        if kind.ipfix() && count == 0 {
            if tid == 2 || tid == 3 {
                each(TemplateEvent::WithdrawAll { options: tid == 3 });
            } else if tid >= 256 {
                each(TemplateEvent::Withdraw(tid));
            }
            p += 4;
            continue;
        }
        if tid < 256 {
            // Padding (zeros) at the end of the set.
            if body[p..].iter().all(|&b| b == 0) {
                return Ok(());
            }
            return Err(err(format!("template id {tid} is reserved (expected 256 or more)")));
        }
        if p + head > body.len() {
            return Err(short("options template header", p, head));
        }
        let (nfields, nscope) = match kind {
            TemplateSetKind::V9Data | TemplateSetKind::IpfixData => (count, 0usize),
            TemplateSetKind::V9Options => {
                let scope_len = count;
                let opt_len = be16(body, p + 4).unwrap_or(0) as usize;
                if !scope_len.is_multiple_of(4) || !opt_len.is_multiple_of(4) {
                    return Err(err(format!(
                        "scope length {scope_len} and option length {opt_len} must be multiples of 4"
                    )));
                }
                ((scope_len + opt_len) / 4, scope_len / 4)
            }
            TemplateSetKind::IpfixOptions => {
                let scope = be16(body, p + 4).unwrap_or(0) as usize;
                if scope > count {
                    return Err(err(format!("{scope} scope fields of {count} fields")));
                }
                (count, scope)
            }
        };
        if nfields == 0 || nfields > MAX_TEMPLATE_FIELDS {
            return Err(err(format!("{nfields} fields (expected 1 to {MAX_TEMPLATE_FIELDS})")));
        }
        p += head;
        let mut fields = Vec::with_capacity(nfields);
        for i in 0..nfields {
            let (Some(raw), Some(len)) = (be16(body, p), be16(body, p + 2)) else {
                return Err(short("template field", p, 4));
            };
            p += 4;
            let enterprise = kind.ipfix() && raw & 0x8000 != 0;
            let pen = if enterprise {
                let Some(pen) = be32(body, p) else {
                    return Err(short("enterprise number", p, 4));
                };
                p += 4;
                pen
            } else {
                0
            };
            if len == VARLEN && !kind.ipfix() {
                return Err(err(format!(
                    "field {} (type {raw}) is variable-length, which v9 does not have",
                    i + 1
                )));
            }
            fields.push(FieldSpec {
                ie: if enterprise { raw & 0x7fff } else { raw },
                pen,
                len,
                scope: kind == TemplateSetKind::V9Options && i < nscope,
            });
        }
        each(TemplateEvent::Define(
            tid,
            TemplateSpec {
                options: kind.options(),
                scope_fields: nscope as u16,
                fields,
            },
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decode::testwire::{msg, set};

    #[test]
    fn v5_count_beyond_the_datagram_is_an_error() {
        let mut d = vec![0u8; V5_HEADER + V5_RECORD];
        d[1] = 5;
        d[3] = 2;
        let e = V5Header::parse(&d).err();
        assert_eq!(
            e.map(|e| e.to_string()).as_deref(),
            Some("v5 header says 2 records (120 bytes with the header), the datagram has 72 bytes")
        );
        d[3] = 1;
        let (h, recs) = V5Header::parse(&d).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((h.count, recs.len()), (1, 48));
    }

    #[test]
    fn sets_stop_at_damage_and_padding() {
        let m = msg(&[set(256, &[1, 2, 3, 4]), vec![0, 0]]);
        let (h, e) = TemplatedHeader::parse(&m).unwrap_or_else(|e| panic!("{e}"));
        assert!(e.is_none());
        let mut s = Sets::new(&m, &h);
        assert_eq!(s.next().map(|s| (s.id, s.at, s.body.len())), Some((256, 16, 4)));
        assert!(s.next().is_none());
        assert_eq!(s.stop, SetsEnd::Padding(2));
        let mut bad = msg(&[set(256, &[1, 2, 3, 4])]);
        bad[19] = 200;
        let (h, _) = TemplatedHeader::parse(&bad).unwrap_or_else(|e| panic!("{e}"));
        let mut s = Sets::new(&bad, &h);
        assert!(s.next().is_none());
        assert_eq!(
            s.stop,
            SetsEnd::Damaged(WireError::SetLength {
                id: 256,
                at: 16,
                len: 200,
                left: 8
            })
        );
    }

    #[test]
    fn ipfix_message_length_beyond_the_datagram_is_reported() {
        let mut m = msg(&[set(256, &[1, 2, 3, 4])]);
        m[3] = 100;
        let (h, e) = TemplatedHeader::parse(&m).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(h.end, m.len());
        assert_eq!(
            e.map(|e| e.to_string()).as_deref(),
            Some("IPFIX header says the message has 100 bytes, the datagram has 24")
        );
    }

    #[test]
    fn template_records_of_every_kind() {
        let mut got = Vec::new();
        // IPFIX: tid 300 with src(4), an enterprise field (PEN 29305, IE 1, 8 bytes), a varlen field.
        let body = [1, 44, 0, 3, 0, 8, 0, 4, 0x80, 1, 0, 8, 0, 0, 0x72, 0x79, 0, 82, 255, 255, 0, 0];
        templates(TemplateSetKind::IpfixData, &body, 20, |e| got.push(e)).unwrap_or_else(|e| panic!("{e}"));
        let TemplateEvent::Define(300, spec) = &got[0] else {
            panic!("{got:?}")
        };
        assert_eq!(spec.fields.len(), 3);
        assert_eq!(
            spec.fields[1],
            FieldSpec {
                ie: 1,
                pen: 29305,
                len: 8,
                scope: false
            }
        );
        assert_eq!(spec.fields[2].len, VARLEN);
        // v9 options: scope (system, 4 bytes), option 34 (4 bytes).
        got.clear();
        let body = [1, 0, 0, 4, 0, 4, 0, 1, 0, 4, 0, 34, 0, 4];
        templates(TemplateSetKind::V9Options, &body, 0, |e| got.push(e)).unwrap_or_else(|e| panic!("{e}"));
        let TemplateEvent::Define(256, spec) = &got[0] else {
            panic!("{got:?}")
        };
        assert!(spec.options && spec.fields[0].scope && !spec.fields[1].scope);
        // v9 varlen is refused with the reason.
        let e = templates(TemplateSetKind::V9Data, &[1, 0, 0, 1, 0, 82, 255, 255], 40, |_| {});
        assert_eq!(
            e.err().map(|e| e.to_string()).as_deref(),
            Some("template 256 at byte 40: field 1 (type 82) is variable-length, which v9 does not have")
        );
        // IPFIX withdrawals.
        got.clear();
        templates(TemplateSetKind::IpfixData, &[1, 0, 0, 0, 0, 2, 0, 0], 0, |e| got.push(e)).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            got,
            vec![TemplateEvent::Withdraw(256), TemplateEvent::WithdrawAll { options: false }]
        );
    }

    proptest::proptest! {
        #[test]
        fn never_panics(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..300), kind in 0u8..4) {
            let _ = V5Header::parse(&bytes);
            if let Ok((h, _)) = TemplatedHeader::parse(&bytes) {
                for s in Sets::new(&bytes, &h) {
                    let _ = s.body.len();
                }
            }
            let kind = [TemplateSetKind::V9Data, TemplateSetKind::V9Options, TemplateSetKind::IpfixData, TemplateSetKind::IpfixOptions][kind as usize];
            let _ = templates(kind, &bytes, 0, |_| {});
        }
    }
}
