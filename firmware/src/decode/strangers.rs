//! Senders of datagrams on the collector's port that are not NetFlow or IPFIX
//! (an sFlow agent, syslog or SNMP traps pointed at the wrong port, NetFlow
//! versions this box does not read, scanners): counted per source address
//! with a guess at what they send, so `/exporters` can say who they are and
//! what to change. Kept per (address, kind of datagram) and bounded: the
//! entry heard least recently makes room and is counted in `evicted`.

use crate::fasthash::FxHashMap;
use std::net::IpAddr;

/// (sender, kind) entries tracked at once.
pub const MAX_SENDERS: usize = 32;

/// What a datagram's first bytes look like (the metric's `looks_like` label).
pub fn looks_like(data: &[u8]) -> &'static str {
    let word = |i: usize| data.get(i..i + 4).map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]));
    match data {
        [] => "empty",
        // sFlow v4/v5: version, then the agent address type (1 IPv4, 2 IPv6).
        _ if matches!(word(0), Some(4 | 5)) && matches!(word(4), Some(1 | 2)) => "sflow",
        [0, 1, ..] => "netflow_v1",
        [0, 6, ..] => "netflow_v6",
        [0, 8, ..] => "netflow_v8",
        [b'<', d, ..] if d.is_ascii_digit() => "syslog",
        // An ASN.1 SEQUENCE: SNMP (traps sent to the flow port).
        [0x30, ..] => "snmp",
        _ => "other",
    }
}

/// What to do about a sender that looks like `looks_like`, for the page.
pub fn advice(looks_like: &str) -> &'static str {
    match looks_like {
        "sflow" => "sFlow is not read here: configure NetFlow v9 or IPFIX export on this device",
        "netflow_v1" | "netflow_v6" | "netflow_v8" => "this NetFlow version is not read here: export NetFlow v5, v9 or IPFIX",
        "syslog" => "syslog sent to the flow port: point the device's syslog at the SIEM instead",
        "snmp" => "SNMP sent to the flow port: point the device's traps elsewhere",
        "empty" => "empty datagrams: a probe or a misconfigured sender",
        _ => "not NetFlow or IPFIX: check what this address sends to the collector's port",
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stranger {
    pub datagrams: u64,
    pub last_ms: u64,
}

/// The bounded table of unknown senders.
#[derive(Debug, Default)]
pub struct Strangers {
    map: FxHashMap<(IpAddr, &'static str), Stranger>,
    /// Entries forgotten to make room.
    pub evicted: u64,
}

impl Strangers {
    /// Count a datagram from `ip` that was not NetFlow or IPFIX.
    pub fn note(&mut self, ip: IpAddr, now_ms: u64, data: &[u8]) {
        let key = (ip, looks_like(data));
        if !self.map.contains_key(&key)
            && self.map.len() >= MAX_SENDERS
            && let Some(oldest) = self.map.iter().min_by_key(|(k, s)| (s.last_ms, **k)).map(|(k, _)| *k)
        {
            self.map.remove(&oldest);
            self.evicted += 1;
        }
        let s = self.map.entry(key).or_insert(Stranger {
            datagrams: 0,
            last_ms: now_ms,
        });
        s.datagrams += 1;
        s.last_ms = s.last_ms.max(now_ms);
    }

    /// (sender, what it looked like) and its count.
    pub fn iter(&self) -> impl Iterator<Item = (&(IpAddr, &'static str), &Stranger)> {
        self.map.iter()
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guesses_what_a_sender_sends() {
        let sflow = [0, 0, 0, 5, 0, 0, 0, 1, 192, 0, 2, 1];
        assert_eq!(looks_like(&sflow), "sflow");
        assert_eq!(looks_like(&[0, 1, 0, 3]), "netflow_v1");
        assert_eq!(looks_like(&[0, 8]), "netflow_v8");
        assert_eq!(looks_like(b"<134>Dec  5 18:00:00 router1 %SYS-5-CONFIG_I"), "syslog");
        assert_eq!(looks_like(&[0x30, 0x29, 2, 1, 1]), "snmp");
        assert_eq!(looks_like(&[]), "empty");
        assert_eq!(looks_like(b"GET / HTTP/1.1"), "other");
        // A short sFlow-like start is not enough.
        assert_eq!(looks_like(&[0, 0, 0, 5]), "other");
        assert!(advice("sflow").contains("IPFIX"));
    }

    #[test]
    fn bounded_and_the_least_recently_heard_makes_room() {
        let mut s = Strangers::default();
        for i in 0..MAX_SENDERS as u32 {
            s.note(IpAddr::from((0xc000_0200u32 + i).to_be_bytes()), 1000 + i as u64, b"<1>x");
        }
        // The first sender is heard again: it is not the one evicted.
        s.note(IpAddr::from([192, 0, 2, 0]), 5000, b"<2>y");
        // Another kind from a known sender is an entry of its own.
        s.note(IpAddr::from([192, 0, 2, 0]), 6000, &[0, 1]);
        assert_eq!((s.len(), s.evicted), (MAX_SENDERS, 1));
        let get = |ip: [u8; 4], kind: &str| s.iter().find(|(k, _)| k.0 == IpAddr::from(ip) && k.1 == kind).map(|(_, x)| *x);
        assert_eq!(
            get([192, 0, 2, 0], "syslog"),
            Some(Stranger {
                datagrams: 2,
                last_ms: 5000
            })
        );
        assert_eq!(
            get([192, 0, 2, 0], "netflow_v1"),
            Some(Stranger {
                datagrams: 1,
                last_ms: 6000
            })
        );
        assert_eq!(get([192, 0, 2, 1], "syslog"), None, "the least recently heard went");
    }
}
