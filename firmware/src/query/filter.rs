//! The flow filter language, in the spirit of nfdump:
//!
//! ```text
//! src net 10.0.0.0/8 and dst port 443 and proto tcp and bytes > 1M
//! not (host 192.0.2.7 or port 53) and direction outbound
//! ```
//!
//! Terms: `[src|dst] host|ip ADDR`, `[src|dst] net CIDR`, `[src|dst] port [OP] N`,
//! `proto NAME|N` (or a bare `tcp`, `udp`, `icmp`, ...), `bytes|packets|duration [OP] N[k|M|G]`
//! (`duration` in ms), `flags LETTERS` (all of `FSRPAUEC` set), `exporter ADDR[:PORT]`,
//! `[in|out] if N`, `direction outbound|inbound|internal|external|unknown`,
//! `ipv4`, `ipv6`, `clamped` (times clamped at ingest: the exporter's clock was
//! implausible), `[src|dst] country CC` (ISO 3166 two letters, from the country
//! database, [`crate::geo`]; private addresses have none), `any`; combined with `and`, `or`, `not` and parentheses.
//! OP is one of `= == != > < >= <=` or `eq ne gt lt ge le`. Errors name the
//! column and the token and say what was expected there.
//!
//! Filters are bounded (at most [`MAX_DEPTH`] levels of parentheses and `not`,
//! [`MAX_TERMS`] terms) and evaluate in time linear in their size: `and`/`or`
//! chains are flat lists, and long lists of `host`/`port` alternatives (or of
//! their negations) become one set lookup.

use crate::flow::{Direction, FlowRecord, proto_number};
use crate::net::IpNet;
use std::collections::HashSet;
use std::fmt;
use std::net::{IpAddr, SocketAddr};

/// Deepest nesting of parentheses and `not`.
pub const MAX_DEPTH: usize = 64;
/// Most terms in one filter.
pub const MAX_TERMS: usize = 100_000;
/// Longest filter text.
pub const MAX_LEN: usize = 4 << 20;

/// A filter that does not parse.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FilterError {
    pub input: String,
    /// Byte offset of the offending token.
    pub pos: usize,
    pub len: usize,
    pub message: String,
}

impl fmt::Display for FilterError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let col = self.input[..self.pos.min(self.input.len())].chars().count() + 1;
        let tok = self.input.get(self.pos..self.pos + self.len).unwrap_or("");
        if tok.is_empty() {
            writeln!(f, "filter error at column {col} (end of filter): {}", self.message)?;
        } else {
            writeln!(f, "filter error at column {col} near {tok:?}: {}", self.message)?;
        }
        writeln!(f, "  {}", self.input)?;
        write!(f, "  {}{}", " ".repeat(col - 1), "^".repeat(self.len.max(1)))
    }
}

impl std::error::Error for FilterError {}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Src,
    Dst,
    Either,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Eq,
    Ne,
    Gt,
    Lt,
    Ge,
    Le,
}

impl Op {
    fn test(self, a: u64, b: u64) -> bool {
        match self {
            Op::Eq => a == b,
            Op::Ne => a != b,
            Op::Gt => a > b,
            Op::Lt => a < b,
            Op::Ge => a >= b,
            Op::Le => a <= b,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Num {
    Bytes,
    Packets,
    Duration,
}

/// A set of ports (one bit each).
#[derive(Clone, PartialEq, Eq)]
pub struct PortSet(Box<[u64; 1024]>);

impl PortSet {
    fn new() -> PortSet {
        PortSet(Box::new([0; 1024]))
    }
    fn insert(&mut self, p: u16) {
        self.0[p as usize / 64] |= 1 << (p % 64);
    }
    fn contains(&self, p: u16) -> bool {
        self.0[p as usize / 64] & (1 << (p % 64)) != 0
    }
}

impl fmt::Debug for PortSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n: u32 = self.0.iter().map(|w| w.count_ones()).sum();
        write!(f, "PortSet({n} ports)")
    }
}

/// A parsed filter.
#[derive(Debug, Clone, PartialEq)]
pub enum Filter {
    Any,
    /// Every child matches (`and`).
    All(Vec<Filter>),
    /// Some child matches (`or`).
    AnyOf(Vec<Filter>),
    Not(Box<Filter>),
    Net(Side, IpNet),
    /// One of many hosts (a long `host A or host B or ...`).
    Hosts(Side, HashSet<IpAddr>),
    Port(Side, Op, u16),
    /// One of many ports (a long `port 1 or port 2 or ...`).
    Ports(Side, PortSet),
    Proto(u8),
    Number(Num, Op, u64),
    Flags(u16),
    Exporter(IpAddr, Option<u16>),
    Interface(Side, u32),
    Direction(Direction),
    Family(bool),
    /// Times were clamped at ingest (implausible exporter clock).
    Clamped,
    /// The address's country (from the process's country database).
    Country(Side, [u8; 2]),
}

impl Filter {
    /// Parse a filter expression; an empty string matches everything.
    pub fn parse(input: &str) -> Result<Filter, FilterError> {
        if input.len() > MAX_LEN {
            return Err(FilterError {
                input: input.chars().take(60).collect::<String>() + "...",
                pos: 0,
                len: 0,
                message: format!("the filter is {} bytes long; at most {MAX_LEN} are accepted", input.len()),
            });
        }
        let toks = tokenize(input);
        if toks.is_empty() {
            return Ok(Filter::Any);
        }
        let mut p = Parser {
            input,
            toks,
            i: 0,
            depth: 0,
            terms: 0,
        };
        let f = p.or()?;
        if let Some(t) = p.toks.get(p.i) {
            return Err(p.err_at(t, "expected 'and', 'or' or the end of the filter"));
        }
        Ok(f)
    }

    /// Whether a flow matches.
    pub fn matches(&self, f: &FlowRecord) -> bool {
        match self {
            Filter::Any => true,
            Filter::All(v) => v.iter().all(|c| c.matches(f)),
            Filter::AnyOf(v) => v.iter().any(|c| c.matches(f)),
            Filter::Not(a) => !a.matches(f),
            Filter::Net(side, n) => side_any(*side, |src| n.contains(if src { &f.src } else { &f.dst })),
            Filter::Hosts(side, set) => side_any(*side, |src| set.contains(&IpNet::canonical(if src { &f.src } else { &f.dst }))),
            Filter::Port(side, op, p) => side_any(*side, |src| op.test(if src { f.src_port } else { f.dst_port } as u64, *p as u64)),
            Filter::Ports(side, set) => side_any(*side, |src| set.contains(if src { f.src_port } else { f.dst_port })),
            Filter::Proto(p) => f.proto == *p,
            Filter::Number(n, op, v) => {
                let x = match n {
                    Num::Bytes => f.bytes,
                    Num::Packets => f.packets,
                    Num::Duration => f.duration_ms(),
                };
                op.test(x, *v)
            }
            Filter::Flags(mask) => f.tcp_flags & mask == *mask,
            Filter::Exporter(ip, port) => f.exporter.ip() == *ip && port.is_none_or(|p| f.exporter.port() == p),
            Filter::Interface(side, idx) => side_any(*side, |src| if src { f.in_if } else { f.out_if } == *idx),
            Filter::Direction(d) => f.direction == *d,
            Filter::Family(v4) => f.src.is_ipv4() == *v4,
            Filter::Clamped => f.time_clamped(),
            Filter::Country(side, cc) => match crate::geo::global() {
                Some(g) => side_any(*side, |src| g.country(if src { f.src } else { f.dst }) == Some(*cc)),
                None => false,
            },
        }
    }
}

/// A single host (a /32 or /128 network) and its side, if `f` is one.
fn host_term(f: &Filter) -> Option<(Side, IpAddr)> {
    match f {
        Filter::Net(side, n) if n.is_host() => Some((*side, n.addr())),
        _ => None,
    }
}

/// An equality port term and its side, if `f` is one.
fn port_term(f: &Filter) -> Option<(Side, u16)> {
    match f {
        Filter::Port(side, Op::Eq, p) => Some((*side, *p)),
        _ => None,
    }
}

/// Fold many host/port alternatives into sets: `a or b or c` over hosts of one
/// side becomes one [`Filter::Hosts`] (likewise ports). Few terms stay as they are.
fn fold_alternatives(children: Vec<Filter>) -> Vec<Filter> {
    const MIN_SET: usize = 8;
    let sides = [Side::Src, Side::Dst, Side::Either];
    let count_hosts = |s: Side| children.iter().filter(|c| host_term(c).is_some_and(|h| h.0 == s)).count();
    let count_ports = |s: Side| children.iter().filter(|c| port_term(c).is_some_and(|h| h.0 == s)).count();
    let host_sides: Vec<Side> = sides.iter().copied().filter(|s| count_hosts(*s) >= MIN_SET).collect();
    let port_sides: Vec<Side> = sides.iter().copied().filter(|s| count_ports(*s) >= MIN_SET).collect();
    if host_sides.is_empty() && port_sides.is_empty() {
        return children;
    }
    let mut hosts: Vec<(Side, HashSet<IpAddr>)> = host_sides.iter().map(|s| (*s, HashSet::new())).collect();
    let mut ports: Vec<(Side, PortSet)> = port_sides.iter().map(|s| (*s, PortSet::new())).collect();
    let mut rest = Vec::new();
    for c in children {
        if let Some((side, ip)) = host_term(&c)
            && let Some(h) = hosts.iter_mut().find(|h| h.0 == side)
        {
            h.1.insert(ip);
        } else if let Some((side, p)) = port_term(&c)
            && let Some(s) = ports.iter_mut().find(|s| s.0 == side)
        {
            s.1.insert(p);
        } else {
            rest.push(c);
        }
    }
    rest.extend(hosts.into_iter().map(|(s, h)| Filter::Hosts(s, h)));
    rest.extend(ports.into_iter().map(|(s, p)| Filter::Ports(s, p)));
    rest
}

/// `and` children: negated host/port terms fold like alternatives
/// (`not a and not b` = `not (a or b)`).
fn fold_conjunction(children: Vec<Filter>) -> Vec<Filter> {
    let (negated, mut rest): (Vec<Filter>, Vec<Filter>) = children.into_iter().partition(|c| match c {
        Filter::Not(inner) => host_term(inner).is_some() || port_term(inner).is_some(),
        _ => false,
    });
    if negated.len() < 8 {
        rest.extend(negated);
        return rest;
    }
    let inner: Vec<Filter> = negated
        .into_iter()
        .filter_map(|c| match c {
            Filter::Not(inner) => Some(*inner),
            _ => None,
        })
        .collect();
    let folded = fold_alternatives(inner);
    rest.push(Filter::Not(Box::new(if folded.len() == 1 {
        folded.into_iter().next().unwrap_or(Filter::Any)
    } else {
        Filter::AnyOf(folded)
    })));
    rest
}

fn side_any(side: Side, test: impl Fn(bool) -> bool) -> bool {
    match side {
        Side::Src => test(true),
        Side::Dst => test(false),
        Side::Either => test(true) || test(false),
    }
}

#[derive(Debug, Clone)]
struct Tok<'a> {
    text: &'a str,
    pos: usize,
}

fn tokenize(input: &str) -> Vec<Tok<'_>> {
    let mut out = Vec::new();
    let b = input.as_bytes();
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        if c.is_ascii_whitespace() {
            i += 1;
        } else if c == b'(' || c == b')' {
            out.push(Tok {
                text: &input[i..i + 1],
                pos: i,
            });
            i += 1;
        } else if matches!(c, b'=' | b'!' | b'<' | b'>') {
            let len = if b.get(i + 1) == Some(&b'=') { 2 } else { 1 };
            out.push(Tok {
                text: &input[i..i + len],
                pos: i,
            });
            i += len;
        } else {
            let start = i;
            while i < b.len() && !b[i].is_ascii_whitespace() && !matches!(b[i], b'(' | b')' | b'=' | b'!' | b'<' | b'>') {
                i += 1;
            }
            // Keep IPv6 literals intact even though they cannot contain these chars anyway.
            out.push(Tok {
                text: &input[start..i],
                pos: start,
            });
        }
    }
    out
}

struct Parser<'a> {
    input: &'a str,
    toks: Vec<Tok<'a>>,
    i: usize,
    /// Current nesting of parentheses and `not`.
    depth: usize,
    /// Terms parsed so far.
    terms: usize,
}

impl<'a> Parser<'a> {
    fn err_at(&self, t: &Tok<'_>, msg: &str) -> FilterError {
        FilterError {
            input: self.input.to_string(),
            pos: t.pos,
            len: t.text.len(),
            message: msg.to_string(),
        }
    }

    fn err_end(&self, msg: &str) -> FilterError {
        FilterError {
            input: self.input.to_string(),
            pos: self.input.len(),
            len: 0,
            message: msg.to_string(),
        }
    }

    fn peek(&self) -> Option<&Tok<'a>> {
        self.toks.get(self.i)
    }

    fn peek_is(&self, word: &str) -> bool {
        self.peek().is_some_and(|t| t.text.eq_ignore_ascii_case(word))
    }

    fn next(&mut self, what: &str) -> Result<Tok<'a>, FilterError> {
        match self.toks.get(self.i) {
            Some(t) => {
                self.i += 1;
                Ok(t.clone())
            }
            None => Err(self.err_end(&format!("expected {what}"))),
        }
    }

    fn or(&mut self) -> Result<Filter, FilterError> {
        let mut children = vec![self.and()?];
        while self.peek_is("or") || self.peek_is("||") {
            self.i += 1;
            children.push(self.and()?);
        }
        if children.len() == 1 {
            return Ok(children.pop().unwrap_or(Filter::Any));
        }
        let mut children = fold_alternatives(children);
        Ok(if children.len() == 1 {
            children.pop().unwrap_or(Filter::Any)
        } else {
            Filter::AnyOf(children)
        })
    }

    fn and(&mut self) -> Result<Filter, FilterError> {
        let mut children = vec![self.not()?];
        while self.peek_is("and") || self.peek_is("&&") {
            self.i += 1;
            children.push(self.not()?);
        }
        if children.len() == 1 {
            return Ok(children.pop().unwrap_or(Filter::Any));
        }
        let mut children = fold_conjunction(children);
        Ok(if children.len() == 1 {
            children.pop().unwrap_or(Filter::Any)
        } else {
            Filter::All(children)
        })
    }

    /// Enter one level of nesting at token `t`, refusing past [`MAX_DEPTH`].
    fn enter(&mut self, t: &Tok<'_>) -> Result<(), FilterError> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err(self.err_at(
                t,
                &format!("the filter nests deeper than {MAX_DEPTH} levels of parentheses and 'not'"),
            ));
        }
        Ok(())
    }

    fn not(&mut self) -> Result<Filter, FilterError> {
        if self.peek_is("not") || self.peek().is_some_and(|t| t.text == "!") {
            let t = self.next("'not'")?;
            self.enter(&t)?;
            let inner = self.not()?;
            self.depth -= 1;
            return Ok(match inner {
                Filter::Not(x) => *x,
                x => Filter::Not(Box::new(x)),
            });
        }
        self.primary()
    }

    fn op(&mut self) -> Op {
        let op = match self.peek().map(|t| t.text.to_ascii_lowercase()) {
            Some(s) => match s.as_str() {
                "=" | "==" | "eq" => Some(Op::Eq),
                "!=" | "ne" => Some(Op::Ne),
                ">" | "gt" => Some(Op::Gt),
                "<" | "lt" => Some(Op::Lt),
                ">=" | "ge" => Some(Op::Ge),
                "<=" | "le" => Some(Op::Le),
                _ => None,
            },
            None => None,
        };
        if op.is_some() {
            self.i += 1;
        }
        op.unwrap_or(Op::Eq)
    }

    fn number(&mut self, what: &str) -> Result<u64, FilterError> {
        let t = self.next(what)?;
        parse_scaled(t.text).ok_or_else(|| self.err_at(&t, &format!("expected {what}")))
    }

    fn primary(&mut self) -> Result<Filter, FilterError> {
        let t = self.next("a filter term (host, net, port, proto, bytes, packets, ...)")?;
        self.terms += 1;
        if self.terms > MAX_TERMS {
            return Err(self.err_at(&t, &format!("the filter has more than {MAX_TERMS} terms")));
        }
        let word = t.text.to_ascii_lowercase();
        if word == "(" {
            self.enter(&t)?;
            let f = self.or()?;
            self.depth -= 1;
            let close = self.next("')'")?;
            if close.text != ")" {
                return Err(self.err_at(&close, "expected ')'"));
            }
            return Ok(f);
        }
        let side = match word.as_str() {
            "src" => Some(Side::Src),
            "dst" => Some(Side::Dst),
            "in" => Some(Side::Src),
            "out" => Some(Side::Dst),
            _ => None,
        };
        if let Some(side) = side {
            let what = self.next("'host', 'net', 'port', 'if' or 'country'")?;
            return self.sided(side, &what, &word);
        }
        match word.as_str() {
            "host" | "ip" | "net" | "port" | "if" | "country" => self.sided(Side::Either, &t, ""),
            "any" => Ok(Filter::Any),
            "clamped" => Ok(Filter::Clamped),
            "ipv4" | "inet" => Ok(Filter::Family(true)),
            "ipv6" | "inet6" => Ok(Filter::Family(false)),
            "proto" => {
                let p = self.next("a protocol name or number")?;
                proto_number(p.text)
                    .or_else(|| p.text.parse().ok())
                    .map(Filter::Proto)
                    .ok_or_else(|| self.err_at(&p, "expected a protocol name (tcp, udp, icmp, icmp6, gre, esp, sctp) or number 0-255"))
            }
            "bytes" | "packets" | "duration" => {
                let n = match word.as_str() {
                    "bytes" => Num::Bytes,
                    "packets" => Num::Packets,
                    _ => Num::Duration,
                };
                let op = self.op();
                Ok(Filter::Number(n, op, self.number("a number (suffixes k, M, G allowed)")?))
            }
            "flags" => {
                let f = self.next("TCP flag letters (F S R P A U E C)")?;
                let mut mask = 0u16;
                for c in f.text.chars() {
                    mask |= match c.to_ascii_uppercase() {
                        'F' => 0x01,
                        'S' => 0x02,
                        'R' => 0x04,
                        'P' => 0x08,
                        'A' => 0x10,
                        'U' => 0x20,
                        'E' => 0x40,
                        'C' => 0x80,
                        _ => return Err(self.err_at(&f, "expected TCP flag letters (F S R P A U E C)")),
                    };
                }
                Ok(Filter::Flags(mask))
            }
            "exporter" => {
                let a = self.next("an exporter address")?;
                if let Ok(sa) = a.text.parse::<SocketAddr>() {
                    return Ok(Filter::Exporter(sa.ip(), Some(sa.port())));
                }
                a.text
                    .parse::<IpAddr>()
                    .map(|ip| Filter::Exporter(ip, None))
                    .map_err(|_| self.err_at(&a, "expected an exporter address like 192.0.2.1 or 192.0.2.1:2055"))
            }
            "direction" => {
                let d = self.next("a direction")?;
                Direction::from_name(&d.text.to_ascii_lowercase())
                    .map(Filter::Direction)
                    .ok_or_else(|| self.err_at(&d, "expected outbound, inbound, internal, external or unknown"))
            }
            w => match proto_number(w) {
                Some(p) => Ok(Filter::Proto(p)),
                None => Err(self.err_at(&t, "expected a filter term (src, dst, host, net, port, country, proto, bytes, packets, duration, flags, exporter, if, direction, ipv4, ipv6, clamped, not, '(')")),
            },
        }
    }

    fn sided(&mut self, side: Side, what: &Tok<'a>, side_word: &str) -> Result<Filter, FilterError> {
        match what.text.to_ascii_lowercase().as_str() {
            "host" | "ip" => {
                let a = self.next("an IP address")?;
                let ip: IpAddr = a.text.parse().map_err(|_| self.err_at(&a, "expected an IP address"))?;
                let max = if ip.is_ipv4() { 32 } else { 128 };
                let net = IpNet::new(ip, max).ok_or_else(|| self.err_at(&a, "expected an IP address"))?;
                Ok(Filter::Net(side, net))
            }
            "net" => {
                let a = self.next("a network like 10.0.0.0/8")?;
                let net: IpNet = a
                    .text
                    .parse()
                    .map_err(|_| self.err_at(&a, "expected a network like 10.0.0.0/8 or 2001:db8::/32"))?;
                Ok(Filter::Net(side, net))
            }
            "port" => {
                let op = self.op();
                let p = self.next("a port number")?;
                let port: u16 = p.text.parse().map_err(|_| self.err_at(&p, "expected a port number 0-65535"))?;
                Ok(Filter::Port(side, op, port))
            }
            "country" => {
                let c = self.next("a two-letter country code like NL")?;
                let cc = match c.text.as_bytes() {
                    [a, b] if a.is_ascii_alphabetic() && b.is_ascii_alphabetic() => [a.to_ascii_uppercase(), b.to_ascii_uppercase()],
                    _ => return Err(self.err_at(&c, "expected a two-letter country code (ISO 3166) like NL")),
                };
                if crate::geo::global().is_none() {
                    return Err(self.err_at(
                        what,
                        "no country database is installed (the image carries one; on a laptop `cargo xtask deps` fetches it, \
                         or put a MaxMind-format file at DATA_DIR/geo/country.mmdb)",
                    ));
                }
                Ok(Filter::Country(side, cc))
            }
            "if" => {
                let n = self.next("an interface index")?;
                let idx: u32 = n.text.parse().map_err(|_| self.err_at(&n, "expected an interface index"))?;
                Ok(Filter::Interface(side, idx))
            }
            _ => {
                let _ = side_word;
                Err(self.err_at(what, "expected 'host', 'net', 'port', 'if' or 'country'"))
            }
        }
    }
}

/// `1500`, `1.5k`, `2M`, `1G` (decimal multiples, as nfdump).
fn parse_scaled(s: &str) -> Option<u64> {
    let (num, mul) = match s.chars().last()? {
        'k' | 'K' => (&s[..s.len() - 1], 1e3),
        'm' | 'M' => (&s[..s.len() - 1], 1e6),
        'g' | 'G' => (&s[..s.len() - 1], 1e9),
        't' | 'T' => (&s[..s.len() - 1], 1e12),
        _ => (s, 1.0),
    };
    if mul == 1.0 {
        return num.parse().ok();
    }
    let v: f64 = num.parse().ok()?;
    (v >= 0.0 && v.is_finite()).then_some((v * mul) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flow() -> FlowRecord {
        FlowRecord {
            src: "10.1.2.3".parse().unwrap_or(IpAddr::from([0; 4])),
            dst: "93.184.216.34".parse().unwrap_or(IpAddr::from([0; 4])),
            src_port: 51000,
            dst_port: 443,
            proto: 6,
            tcp_flags: 0x1b,
            bytes: 2_000_000,
            packets: 1500,
            start_ms: 1000,
            end_ms: 61_000,
            in_if: 3,
            out_if: 7,
            direction: Direction::Outbound,
            exporter: "192.0.2.1:2055".parse().unwrap_or(SocketAddr::from(([0; 4], 0))),
            ..FlowRecord::default()
        }
    }

    fn m(expr: &str) -> bool {
        Filter::parse(expr).unwrap_or_else(|e| panic!("{e}")).matches(&flow())
    }

    #[test]
    fn issue_example_matches() {
        assert!(m("src net 10.0.0.0/8 and dst port 443 and proto tcp and bytes > 1M"));
        assert!(!m("src net 10.0.0.0/8 and dst port 443 and proto tcp and bytes > 3M"));
    }

    #[test]
    fn terms() {
        assert!(m(""));
        assert!(m("host 93.184.216.34"));
        assert!(!m("src host 93.184.216.34"));
        assert!(m("port 51000 and port 443"));
        assert!(m("dst port >= 400 and dst port < 500"));
        assert!(m("tcp and not udp"));
        assert!(m("packets gt 1k and duration = 60000"));
        assert!(m("flags SAF and not flags R"));
        assert!(m("exporter 192.0.2.1 and exporter 192.0.2.1:2055 and not exporter 192.0.2.1:9"));
        assert!(m("in if 3 and out if 7 and if 7"));
        assert!(m("direction outbound and ipv4 and not ipv6"));
        assert!(m("(proto udp or proto 6) and !(port 22)"));
        assert!(m("proto udp or proto tcp and bytes > 1"));
    }

    #[test]
    fn errors_point_at_the_bad_token() {
        let e = Filter::parse("src net 10.0.0.0/8 and dst prot 443").unwrap_err();
        assert_eq!(e.pos, 27);
        let shown = e.to_string();
        assert!(shown.contains("column 28 near \"prot\""), "{shown}");
        assert!(shown.contains("expected 'host', 'net', 'port', 'if' or 'country'"), "{shown}");
        assert!(shown.ends_with("^^^^"), "{shown}");
        let e = Filter::parse("bytes > lots").unwrap_err();
        assert!(e.to_string().contains("near \"lots\""));
        let e = Filter::parse("port 443 and").unwrap_err();
        assert!(e.to_string().contains("end of filter"));
        let e = Filter::parse("(tcp").unwrap_err();
        assert!(e.to_string().contains("expected ')'"));
        let e = Filter::parse("net 10.0.0.0/40").unwrap_err();
        assert!(e.to_string().contains("near \"10.0.0.0/40\""));
    }

    #[test]
    fn deep_and_long_filters_are_bounded_and_fast() {
        let deep = format!("{}tcp{}", "(".repeat(20_000), ")".repeat(20_000));
        let e = Filter::parse(&deep).unwrap_err().to_string();
        assert!(e.contains("deeper than 64 levels"), "{e}");
        let nots = format!("{}tcp", "not ".repeat(20_000));
        assert!(Filter::parse(&nots).unwrap_err().to_string().contains("deeper than"));
        // 6000 alternatives and 5000 negations: one set lookup each.
        let ors: Vec<String> = (0..6000u32)
            .map(|i| format!("host 10.{}.{}.{}", i >> 16, (i >> 8) & 255, i & 255))
            .collect();
        let f = Filter::parse(&ors.join(" or ")).unwrap_or_else(|e| panic!("{e}"));
        assert!(matches!(&f, Filter::Hosts(Side::Either, s) if s.len() == 6000), "{f:?}");
        let mut flow = flow();
        flow.src = "10.0.23.100".parse().unwrap_or(flow.src);
        assert!(f.matches(&flow));
        let ands: Vec<String> = (0..5000u32).map(|i| format!("not port {}", i + 1)).collect();
        let g = Filter::parse(&format!("tcp and {}", ands.join(" and "))).unwrap_or_else(|e| panic!("{e}"));
        assert!(matches!(&g, Filter::All(v) if v.len() == 2), "{g:?}");
        assert!(!g.matches(&flow), "port 443 is among the negated ports");
        let started = std::time::Instant::now();
        for _ in 0..100_000 {
            std::hint::black_box(f.matches(&flow) && g.matches(&flow));
        }
        // Set lookups: far below the 6000 comparisons per flow a chain would need.
        assert!(started.elapsed() < std::time::Duration::from_secs(5));
        let many: Vec<&str> = std::iter::repeat_n("tcp", MAX_TERMS + 1).collect();
        assert!(
            Filter::parse(&many.join(" or "))
                .unwrap_err()
                .to_string()
                .contains("more than 100000 terms")
        );
    }

    #[test]
    fn double_negation_and_clamped() {
        assert_eq!(Filter::parse("not not tcp").ok(), Some(Filter::Proto(6)));
        let mut f = flow();
        assert!(!Filter::parse("clamped").unwrap_or(Filter::Any).matches(&f));
        f.marks = crate::flow::MARK_TIME_CLAMPED;
        assert!(Filter::parse("clamped and tcp").unwrap_or(Filter::Any).matches(&f));
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_text_never_panics(s in "\\PC{0,40}") {
            if let Ok(f) = Filter::parse(&s) {
                let _ = f.matches(&flow());
            } else if let Err(e) = Filter::parse(&s) {
                let _ = e.to_string();
            }
        }
    }
}
