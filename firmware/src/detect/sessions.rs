//! Session stitching and cross-exporter de-duplication: the first stage of
//! detection.
//!
//! Exporters report each direction of a connection as its own record, and a
//! flow crossing two routers is reported twice. This table, keyed by the
//! canonical 5-tuple, decides for every record whether it is a duplicate copy
//! (same direction, another exporter, overlapping in time: dropped, counted),
//! which side initiated the connection (the side seen first; a record that
//! arrives first but looks like a reply by its ports is taken as the reply),
//! whether it starts a new connection or continues one (active-timeout splits),
//! and when a first contact is answered or not (the outcome the scan detector's
//! random walk needs: reply seen or handshake evidence = success; RST-only
//! reply or no reply within `reply_wait` = failure).
//!
//! Bounded: at most `max_sessions`; the least recently active are evicted
//! first (counted); sessions idle for `idle_timeout` close.

use super::settings::SessionSettings;
use crate::fasthash::FxHashMap as HashMap;
use crate::flow::FlowRecord;
use std::collections::VecDeque;
use std::net::{IpAddr, SocketAddr};

const TCP: u8 = 6;
const SYN: u16 = 0x02;
const RST: u16 = 0x04;
const ACK: u16 = 0x10;
const PSH: u16 = 0x08;
const FIN: u16 = 0x01;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct Key {
    a: IpAddr,
    b: IpAddr,
    pa: u16,
    pb: u16,
    proto: u8,
}

fn has_ports(proto: u8) -> bool {
    matches!(proto, 6 | 17 | 132)
}

fn key_of(f: &FlowRecord) -> (Key, bool) {
    let (sp, dp) = if has_ports(f.proto) { (f.src_port, f.dst_port) } else { (0, 0) };
    if (f.src, sp) <= (f.dst, dp) {
        (
            Key {
                a: f.src,
                b: f.dst,
                pa: sp,
                pb: dp,
                proto: f.proto,
            },
            true,
        )
    } else {
        (
            Key {
                a: f.dst,
                b: f.src,
                pa: dp,
                pb: sp,
                proto: f.proto,
            },
            false,
        )
    }
}

/// Ports that are services even above 1024.
const SERVICE_PORTS: [u16; 16] = [
    1433, 1521, 1883, 2049, 3306, 3389, 5060, 5432, 5900, 6379, 8080, 8443, 8883, 9200, 11211, 27017,
];

/// Whether a record that opens a session looks like the reply of a connection
/// (from a service port to an ephemeral port).
fn looks_like_reply(f: &FlowRecord) -> bool {
    if !has_ports(f.proto) {
        // ICMP: echo reply (type 0), unreachable (3), time exceeded (11) are answers.
        return matches!(f.proto, 1 | 58) && matches!(f.dst_port >> 8, 0 | 3 | 11 | 129 | 1);
    }
    let service = |p: u16| p < 1024 || SERVICE_PORTS.contains(&p);
    service(f.src_port) && !service(f.dst_port) && f.dst_port >= 1024
}

#[derive(Debug, Clone)]
struct Side {
    exporter: SocketAddr,
    start: u64,
    end: u64,
}

#[derive(Debug, Clone)]
struct Session {
    /// True when `Key::a` is the initiator.
    init_is_a: bool,
    init: Option<Side>,
    resp: Option<Side>,
    /// First-contact outcome still to be decided.
    pending: bool,
    last_ms: u64,
}

/// What the table says about one record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Seen {
    /// A copy of a record already seen from another exporter: ignore it.
    pub duplicate: bool,
    /// The record's source initiated the connection.
    pub initiator: bool,
    /// The record starts a new connection (not an active-timeout continuation).
    pub new_connection: bool,
}

/// A decided first contact (initiator → responder).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Outcome {
    pub src: IpAddr,
    pub dst: IpAddr,
    pub dst_port: u16,
    pub proto: u8,
    pub success: bool,
    pub at_ms: u64,
}

#[derive(Debug, Default, Clone, Copy)]
pub struct SessionCounters {
    pub duplicates: u64,
    pub evicted: u64,
    pub replies_first: u64,
}

pub struct Sessions {
    cfg: SessionSettings,
    map: HashMap<Key, Session>,
    /// (key, last_ms when queued): lazy expiry order.
    order: VecDeque<(Key, u64)>,
    /// (key, deadline): first contacts waiting for a reply.
    waiting: VecDeque<(Key, u64)>,
    pub outcomes: Vec<Outcome>,
    pub counters: SessionCounters,
}

impl Sessions {
    pub fn new(cfg: SessionSettings) -> Sessions {
        Sessions {
            cfg,
            map: HashMap::default(),
            order: VecDeque::new(),
            waiting: VecDeque::new(),
            outcomes: Vec::new(),
            counters: SessionCounters::default(),
        }
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Classify one record at event time `now`.
    pub fn observe(&mut self, f: &FlowRecord, now: u64) -> Seen {
        let (key, src_is_a) = key_of(f);
        let tol = self.cfg.dedup_tolerance.ms();
        let gap = self.cfg.continuation_gap.ms();
        let idle = self.cfg.idle_timeout.ms();
        let side = Side {
            exporter: f.exporter,
            start: f.start_ms,
            end: f.end_ms,
        };
        // Same 5-tuple long after: a new connection reusing the ports.
        if self
            .map
            .get(&key)
            .is_some_and(|s| f.start_ms > s.last_ms.saturating_add(idle) && !s.pending)
        {
            self.map.remove(&key);
        }
        if let Some(s) = self.map.get_mut(&key) {
            let initiator = s.init_is_a == src_is_a;
            let slot = if initiator { &mut s.init } else { &mut s.resp };
            if let Some(prev) = slot.as_ref()
                && prev.exporter != f.exporter
                && f.start_ms + tol >= prev.start
                && f.start_ms <= prev.end + tol
            {
                self.counters.duplicates += 1;
                return Seen {
                    duplicate: true,
                    initiator,
                    new_connection: false,
                };
            }
            let continues = slot.as_ref().is_some_and(|p| f.start_ms <= p.end.saturating_add(gap));
            let new_connection = initiator && !continues;
            *slot = Some(side);
            s.last_ms = s.last_ms.max(f.end_ms);
            let mut decided = None;
            if !initiator && s.pending {
                s.pending = false;
                decided = Some(reply_success(f));
            } else if initiator && s.pending && handshake_done(f) {
                s.pending = false;
                decided = Some(true);
            }
            if let Some(success) = decided {
                let o = outcome(&key, s, f, success);
                self.outcomes.push(o);
            }
            self.order.push_back((key, s.last_ms));
            return Seen {
                duplicate: false,
                initiator,
                new_connection,
            };
        }
        // A new session.
        let reply_first = looks_like_reply(f);
        if reply_first {
            self.counters.replies_first += 1;
        }
        let init_is_a = if reply_first { !src_is_a } else { src_is_a };
        let mut s = Session {
            init_is_a,
            init: None,
            resp: None,
            pending: false,
            last_ms: f.end_ms.max(f.start_ms),
        };
        if reply_first {
            s.resp = Some(side);
        } else {
            s.init = Some(side);
            if handshake_done(f) {
                let o = outcome(&key, &s, f, true);
                self.outcomes.push(o);
            } else {
                s.pending = true;
                self.waiting.push_back((key, now.max(f.end_ms) + self.cfg.reply_wait.ms()));
            }
        }
        self.map.insert(key, s);
        self.order.push_back((key, f.end_ms.max(f.start_ms)));
        self.enforce_cap();
        Seen {
            duplicate: false,
            initiator: !reply_first,
            new_connection: !reply_first,
        }
    }

    /// Decide first contacts whose reply wait ran out and close idle sessions.
    pub fn expire(&mut self, now: u64) {
        while let Some(&(key, deadline)) = self.waiting.front() {
            if deadline > now {
                break;
            }
            self.waiting.pop_front();
            if let Some(s) = self.map.get_mut(&key)
                && s.pending
            {
                s.pending = false;
                if let Some(init) = s.init.clone() {
                    let (src, dst, _, dport) = endpoints(&key, s.init_is_a);
                    self.outcomes.push(Outcome {
                        src,
                        dst,
                        dst_port: dport,
                        proto: key.proto,
                        success: false,
                        at_ms: init.start,
                    });
                }
            }
        }
        let idle = self.cfg.idle_timeout.ms();
        while let Some(&(key, queued)) = self.order.front() {
            if queued.saturating_add(idle) > now {
                break;
            }
            self.order.pop_front();
            // (reply_wait < idle_timeout: a first contact is decided before its session closes)
            if self.map.get(&key).is_some_and(|s| s.last_ms == queued) {
                self.map.remove(&key);
            }
        }
        // The lazy queue may hold stale entries; keep it from growing without bound.
        if self.order.len() > 4 * self.cfg.max_sessions {
            let map = &self.map;
            self.order.retain(|(k, q)| map.get(k).is_some_and(|s| s.last_ms == *q));
        }
    }

    fn enforce_cap(&mut self) {
        while self.map.len() > self.cfg.max_sessions {
            let Some((key, queued)) = self.order.pop_front() else {
                break;
            };
            if self.map.get(&key).is_some_and(|s| s.last_ms == queued) {
                self.map.remove(&key);
                self.counters.evicted += 1;
            }
        }
    }
}

/// Initiator's own record proves the handshake completed.
fn handshake_done(f: &FlowRecord) -> bool {
    f.proto == TCP && f.tcp_flags & ACK != 0 && (f.tcp_flags & (PSH | FIN) != 0 || f.packets >= 4) && f.tcp_flags & RST == 0
}

/// Whether a reply record means the first contact succeeded.
fn reply_success(f: &FlowRecord) -> bool {
    if f.proto == TCP {
        // SYN-ACK (or data) = open; RST without SYN = closed.
        return f.tcp_flags & SYN != 0 || (f.tcp_flags & RST == 0 && f.tcp_flags & ACK != 0);
    }
    if matches!(f.proto, 1 | 58) {
        // Destination unreachable is a failure.
        return !matches!(f.dst_port >> 8, 3 | 1);
    }
    true
}

fn endpoints(key: &Key, init_is_a: bool) -> (IpAddr, IpAddr, u16, u16) {
    if init_is_a {
        (key.a, key.b, key.pa, key.pb)
    } else {
        (key.b, key.a, key.pb, key.pa)
    }
}

fn outcome(key: &Key, s: &Session, f: &FlowRecord, success: bool) -> Outcome {
    let (src, dst, _, dport) = endpoints(key, s.init_is_a);
    Outcome {
        src,
        dst,
        dst_port: dport,
        proto: key.proto,
        success,
        at_ms: s.init.as_ref().map(|i| i.start).unwrap_or(f.start_ms),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(src: [u8; 4], sp: u16, dst: [u8; 4], dp: u16, start: u64, flags: u16, exporter: u16) -> FlowRecord {
        FlowRecord {
            start_ms: start,
            end_ms: start + 100,
            src: IpAddr::from(src),
            dst: IpAddr::from(dst),
            src_port: sp,
            dst_port: dp,
            proto: TCP,
            tcp_flags: flags,
            bytes: 100,
            packets: 1,
            exporter: SocketAddr::from(([192, 0, 2, 1], exporter)),
            ..FlowRecord::default()
        }
    }

    fn table() -> Sessions {
        Sessions::new(SessionSettings::default())
    }

    #[test]
    fn initiator_reply_and_success() {
        let mut t = table();
        let s = t.observe(&rec([10, 0, 0, 1], 40000, [1, 1, 1, 1], 443, 1000, SYN, 1), 1000);
        assert!(s.initiator && s.new_connection && !s.duplicate);
        assert!(t.outcomes.is_empty());
        let r = t.observe(&rec([1, 1, 1, 1], 443, [10, 0, 0, 1], 40000, 1010, SYN | ACK, 1), 1010);
        assert!(!r.initiator && !r.new_connection);
        assert_eq!(t.outcomes.len(), 1);
        assert!(t.outcomes[0].success);
        assert_eq!(t.outcomes[0].src, IpAddr::from([10, 0, 0, 1]));
        assert_eq!(t.outcomes[0].dst_port, 443);
    }

    #[test]
    fn reply_first_is_still_the_reply() {
        let mut t = table();
        let r = t.observe(&rec([1, 1, 1, 1], 443, [10, 0, 0, 1], 40000, 1010, SYN | ACK, 1), 1010);
        assert!(!r.initiator);
        let s = t.observe(&rec([10, 0, 0, 1], 40000, [1, 1, 1, 1], 443, 1000, SYN | ACK | PSH, 1), 1010);
        assert!(s.initiator);
        assert_eq!(t.counters.replies_first, 1);
    }

    #[test]
    fn rst_or_silence_is_failure() {
        let mut t = table();
        t.observe(&rec([10, 0, 0, 9], 61000, [10, 0, 0, 2], 22, 0, SYN, 1), 0);
        t.observe(&rec([10, 0, 0, 2], 22, [10, 0, 0, 9], 61000, 5, RST | ACK, 1), 5);
        t.observe(&rec([10, 0, 0, 9], 61000, [10, 0, 0, 3], 22, 10, SYN, 1), 10);
        assert_eq!(t.outcomes.len(), 1);
        assert!(!t.outcomes[0].success);
        t.expire(59_000);
        assert_eq!(t.outcomes.len(), 1, "still waiting for a reply");
        t.expire(60_200);
        assert_eq!(t.outcomes.len(), 2);
        assert!(!t.outcomes[1].success);
        assert_eq!(t.outcomes[1].dst, IpAddr::from([10, 0, 0, 3]));
    }

    #[test]
    fn copies_from_another_exporter_are_duplicates() {
        let mut t = table();
        let a = rec([10, 0, 0, 1], 40000, [1, 1, 1, 1], 443, 1000, 0x1b, 1);
        let mut b = a.clone();
        b.exporter = SocketAddr::from(([192, 0, 2, 2], 9));
        b.start_ms += 300;
        assert!(!t.observe(&a, 1000).duplicate);
        assert!(t.observe(&b, 1000).duplicate);
        // The same exporter again is a continuation, not a copy.
        let mut c = a.clone();
        c.start_ms = a.end_ms + 1000;
        c.end_ms = c.start_ms + 100;
        let s = t.observe(&c, 3000);
        assert!(!s.duplicate && !s.new_connection);
        assert_eq!(t.counters.duplicates, 1);
    }

    #[test]
    fn reused_ports_later_are_a_new_connection() {
        let mut t = table();
        let mut a = rec([10, 0, 0, 1], 123, [1, 1, 1, 1], 123, 0, 0, 1);
        a.proto = 17;
        assert!(t.observe(&a, 0).new_connection);
        a.start_ms = 64_000;
        a.end_ms = 64_001;
        assert!(t.observe(&a, 64_000).new_connection);
    }

    #[test]
    fn table_is_bounded() {
        let cfg = SessionSettings {
            max_sessions: 1024,
            ..Default::default()
        };
        let mut t = Sessions::new(cfg);
        for i in 0..5000u32 {
            let b = i.to_be_bytes();
            t.observe(
                &rec([10, 1, b[2], b[3]], 40000, [1, 1, 1, 1], 443, u64::from(i), 0x1b, 1),
                u64::from(i),
            );
        }
        assert!(t.len() <= 1024);
        assert_eq!(t.counters.evicted, 5000 - 1024);
    }
}
