//! RFC 5424 messages and their framing on the wire.
//!
//! `<PRI>1 TIMESTAMP HOSTNAME flowwarden PROCID MSGID [meta sequenceId="N"][flowwarden@32473 ...] BODY`
//! with PRI = facility * 8 + severity, TIMESTAMP in UTC with milliseconds, and
//! SD-PARAM values escaped (`"`, `\`, `]`). The body is CEF, LEEF or ECS JSON
//! (see the sibling modules). A message longer than the destination's limit is
//! cut on a UTF-8 character boundary (and never inside a CEF escape). Framing:
//! octet counting (`LEN SP MSG`, RFC 5425/6587) or LF-terminated.
//!
//! `sequenceId` is RFC 5424's (1..2^31-1, wrapping); the private element
//! carries the full 64-bit spool sequence (`seq`), the alert id and, when the
//! message may be a duplicate of one sent on a failed connection, `resent="1"`.
//! 32473 is the documentation enterprise number of RFC 5612 (flowwarden has no PEN).

use super::event::Envelope;
use super::settings::{Format, Framing};

/// SD-ID of flowwarden's own structured data element.
pub const SD_ID: &str = "flowwarden@32473";
/// APP-NAME.
pub const APP_NAME: &str = "flowwarden";

/// Escape an SD-PARAM value (RFC 5424 section 6.3.3).
pub fn sd_escape(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for c in v.chars() {
        if matches!(c, '"' | '\\' | ']') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// A header field: printable US-ASCII without spaces, at most `max` long, or "-".
fn header_field(s: &str, max: usize) -> String {
    let f: String = s.chars().filter(|c| c.is_ascii_graphic()).take(max).collect();
    if f.is_empty() { "-".into() } else { f }
}

/// The RFC 5424 header and structured data (ends with the space before the body).
pub fn header(env: &Envelope<'_>, facility: u8) -> String {
    let pri = u16::from(facility) * 8 + u16::from(env.event.syslog_severity());
    let mut h = format!(
        "<{pri}>1 {} {} {APP_NAME} {} {} ",
        crate::timefmt::rfc3339_ms(env.at_ms),
        header_field(&env.sender.hostname, 255),
        env.sender.pid,
        header_field(env.event.id(), 32),
    );
    let mut sd = String::new();
    if let Some(seq) = env.seq {
        // RFC 5424 7.3.1: 1..2147483647, wrapping.
        let wrapped = (seq.saturating_sub(1)) % 2_147_483_647 + 1;
        sd.push_str(&format!("[meta sequenceId=\"{wrapped}\"]"));
    }
    let mut params = Vec::new();
    if let Some(seq) = env.seq {
        params.push(format!("seq=\"{seq}\""));
    }
    if let super::event::Event::Alert(a) = env.event {
        params.push(format!("id=\"{}\"", sd_escape(&a.id)));
        params.push(format!("count=\"{}\"", a.count));
    }
    if env.resent {
        params.push("resent=\"1\"".into());
    }
    params.push(format!("device=\"{}\"", sd_escape(&env.sender.device_id)));
    sd.push_str(&format!("[{SD_ID} {}]", params.join(" ")));
    h.push_str(&sd);
    h.push(' ');
    h
}

/// The whole message, cut to `limit` bytes.
pub fn message(env: &Envelope<'_>, facility: u8, format: Format, limit: usize) -> Vec<u8> {
    let head = header(env, facility);
    let room = limit.saturating_sub(head.len());
    let body = match format {
        Format::Cef => super::cef::body(env),
        Format::Leef => super::leef::body(env),
        Format::Json => {
            let b = super::ecs::body(env, true);
            if b.len() > room { super::ecs::body(env, false) } else { b }
        }
    };
    let mut out = head.into_bytes();
    out.extend_from_slice(cut(&body, room, format == Format::Cef).as_bytes());
    out
}

/// `s` shortened to at most `max` bytes on a character boundary; for CEF a cut
/// never leaves half of a backslash escape.
pub fn cut(s: &str, max: usize, cef: bool) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while end > 0 && !s.is_char_boundary(end) {
        end -= 1;
    }
    let mut t = &s[..end];
    if cef {
        let backslashes = t.bytes().rev().take_while(|b| *b == b'\\').count();
        if backslashes % 2 == 1 {
            t = &t[..t.len() - 1];
        }
    }
    t
}

/// Frame one message for a stream.
pub fn frame(msg: &[u8], framing: Framing, out: &mut Vec<u8>) {
    match framing {
        Framing::Octet => {
            out.extend_from_slice(format!("{} ", msg.len()).as_bytes());
            out.extend_from_slice(msg);
        }
        Framing::Lf => {
            // The bodies escape line breaks; a stray one would split the message.
            out.extend(msg.iter().map(|&b| if b == b'\n' || b == b'\r' { b' ' } else { b }));
            out.push(b'\n');
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::forward::event::{Event, Sender};

    fn sender() -> Sender {
        Sender {
            hostname: "branch 7".into(),
            device_id: "dev\"]\\x".into(),
            version: "0.1.0",
            pid: 42,
        }
    }

    #[test]
    fn header_fields_and_escaping() {
        let s = sender();
        let ev = Event::Test;
        let env = Envelope {
            event: &ev,
            seq: Some(2_147_483_648),
            resent: true,
            at_ms: 1_793_577_600_123,
            sender: &s,
        };
        let h = header(&env, 20);
        assert_eq!(
            h,
            "<166>1 2026-11-02T00:00:00.123Z branch7 flowwarden 42 test [meta sequenceId=\"1\"][flowwarden@32473 seq=\"2147483648\" resent=\"1\" device=\"dev\\\"\\]\\\\x\"] "
        );
    }

    #[test]
    fn cuts_respect_characters_and_escapes() {
        assert_eq!(cut("aé", 2, false), "a");
        assert_eq!(cut("ab\\=c", 3, true), "ab");
        assert_eq!(cut("ab\\\\c", 4, true), "ab\\\\");
        assert_eq!(cut("short", 10, true), "short");
    }

    #[test]
    fn framing_octet_and_lf() {
        let mut out = Vec::new();
        frame(b"hello", Framing::Octet, &mut out);
        frame(b"a\nb", Framing::Lf, &mut out);
        assert_eq!(out, b"5 helloa b\n");
    }
}
