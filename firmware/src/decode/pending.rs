//! Data sets held until their template arrives (exporters start sending data
//! before templates after a restart, and UDP reorders). Each held set keeps its
//! own datagram's time context and arrival time, so when it is decoded later its
//! flows are dated against the header they came with. Held sets expire on event
//! time (the arrival time of later datagrams), not on the box's clock, so
//! `ingest` of a capture behaves as the live collector did.
//!
//! Bounded per exporter (sets and bytes), in total bytes and in exporters; every
//! set that is refused, pushed out or expires is counted by the caller.

use super::normalize::TimeContext;
use super::templates::Scope;
use crate::fasthash::FxHashMap;
use std::collections::VecDeque;
use std::net::SocketAddr;

/// One held data set.
#[derive(Debug, Clone)]
pub struct Held {
    pub scope: Scope,
    pub tid: u16,
    /// The body's offset in its datagram (for errors).
    pub at: usize,
    pub ctx: TimeContext,
    pub arrival_ms: u64,
    pub body: Vec<u8>,
}

#[derive(Debug, Clone, Copy)]
pub struct PendingLimits {
    pub sets_per_exporter: usize,
    pub bytes_per_exporter: usize,
    pub total_bytes: usize,
    pub exporters: usize,
    pub ttl_ms: u64,
}

#[derive(Debug, Default)]
struct Queue {
    sets: VecDeque<Held>,
    bytes: usize,
}

#[derive(Debug)]
pub struct Pending {
    queues: FxHashMap<SocketAddr, Queue>,
    total_bytes: usize,
    limits: PendingLimits,
    last_sweep_ms: u64,
}

/// What holding a set did: whether it is held, and how many of the exporter's
/// sets (the new one or older ones) were dropped to stay inside the bounds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HoldOutcome {
    pub held: bool,
    pub dropped: u64,
}

impl Pending {
    pub fn new(limits: PendingLimits) -> Pending {
        Pending {
            queues: FxHashMap::default(),
            total_bytes: 0,
            limits,
            last_sweep_ms: 0,
        }
    }

    pub fn hold(&mut self, h: Held) -> HoldOutcome {
        let refused = HoldOutcome { held: false, dropped: 1 };
        let len = h.body.len();
        let l = self.limits;
        if len > l.bytes_per_exporter || self.limits.sets_per_exporter == 0 {
            return refused;
        }
        let exporter = h.scope.exporter;
        if !self.queues.contains_key(&exporter) && self.queues.len() >= l.exporters {
            return refused;
        }
        let q = self.queues.entry(exporter).or_default();
        let mut dropped = 0;
        while q.sets.len() >= l.sets_per_exporter || q.bytes + len > l.bytes_per_exporter {
            let Some(old) = q.sets.pop_front() else { break };
            q.bytes -= old.body.len();
            self.total_bytes -= old.body.len();
            dropped += 1;
        }
        if self.total_bytes + len > l.total_bytes {
            if q.sets.is_empty() {
                self.queues.remove(&exporter);
            }
            return HoldOutcome {
                held: false,
                dropped: dropped + 1,
            };
        }
        q.bytes += len;
        self.total_bytes += len;
        q.sets.push_back(h);
        HoldOutcome { held: true, dropped }
    }

    /// Take every set held for template `tid` of `scope`, oldest first.
    pub fn take(&mut self, scope: &Scope, tid: u16) -> Vec<Held> {
        let Some(q) = self.queues.get_mut(&scope.exporter) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        let mut keep = VecDeque::with_capacity(q.sets.len());
        for h in q.sets.drain(..) {
            if h.tid == tid && h.scope == *scope {
                out.push(h);
            } else {
                keep.push_back(h);
            }
        }
        let gone: usize = out.iter().map(|h| h.body.len()).sum();
        q.sets = keep;
        q.bytes -= gone;
        self.total_bytes -= gone;
        if q.sets.is_empty() {
            self.queues.remove(&scope.exporter);
        }
        out
    }

    /// Drop sets held longer than the TTL before `now_ms` (event time). Sweeps at
    /// most once per second of event time; returns the drops per exporter.
    pub fn expire(&mut self, now_ms: u64) -> Vec<(SocketAddr, u64)> {
        if self.queues.is_empty() || (now_ms >= self.last_sweep_ms && now_ms - self.last_sweep_ms < 1000) {
            return Vec::new();
        }
        self.last_sweep_ms = now_ms;
        let ttl = self.limits.ttl_ms;
        let mut out = Vec::new();
        let mut freed = 0;
        self.queues.retain(|addr, q| {
            let before = q.sets.len();
            q.sets.retain(|h| {
                let keep = h.arrival_ms.saturating_add(ttl) >= now_ms;
                if !keep {
                    q.bytes -= h.body.len();
                    freed += h.body.len();
                }
                keep
            });
            let n = (before - q.sets.len()) as u64;
            if n > 0 {
                out.push((*addr, n));
            }
            !q.sets.is_empty()
        });
        self.total_bytes -= freed;
        out
    }

    /// Sets held now.
    pub fn len(&self) -> usize {
        self.queues.values().map(|q| q.sets.len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.queues.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn held(port: u16, tid: u16, at_ms: u64, len: usize) -> Held {
        Held {
            scope: Scope {
                exporter: SocketAddr::from(([192, 0, 2, 1], port)),
                version: 10,
                domain: 1,
            },
            tid,
            at: 16,
            ctx: TimeContext::default(),
            arrival_ms: at_ms,
            body: vec![0; len],
        }
    }

    const L: PendingLimits = PendingLimits {
        sets_per_exporter: 3,
        bytes_per_exporter: 100,
        total_bytes: 150,
        exporters: 2,
        ttl_ms: 10_000,
    };

    #[test]
    fn bounds_push_out_and_refuse_with_counts() {
        let mut p = Pending::new(L);
        for i in 0..4 {
            let o = p.hold(held(1, 256 + i, 0, 10));
            assert_eq!(
                o,
                HoldOutcome {
                    held: true,
                    dropped: u64::from(i == 3)
                }
            );
        }
        assert_eq!(p.len(), 3);
        // Bytes per exporter: a 90-byte set pushes out two older ones.
        assert_eq!(p.hold(held(1, 300, 0, 90)), HoldOutcome { held: true, dropped: 2 });
        // Total bytes: 90 + 70 > 150 is refused.
        assert_eq!(p.hold(held(2, 256, 0, 70)), HoldOutcome { held: false, dropped: 1 });
        // Exporters.
        assert!(p.hold(held(2, 256, 0, 10)).held);
        assert_eq!(p.hold(held(3, 256, 0, 10)), HoldOutcome { held: false, dropped: 1 });
        // Too big for anyone.
        assert!(!p.hold(held(1, 301, 0, 101)).held);
    }

    #[test]
    fn taken_in_order_and_expired_on_event_time() {
        let mut p = Pending::new(L);
        p.hold(held(1, 256, 1_000, 1));
        p.hold(held(1, 257, 2_000, 2));
        p.hold(held(1, 256, 3_000, 3));
        let got: Vec<usize> = p.take(&held(1, 256, 0, 0).scope, 256).iter().map(|h| h.body.len()).collect();
        assert_eq!(got, vec![1, 3]);
        assert_eq!(p.expire(12_000), Vec::new());
        let a = held(1, 0, 0, 0).scope.exporter;
        assert_eq!(p.expire(13_000), vec![(a, 1)]);
        assert!(p.is_empty());
        assert_eq!(p.total_bytes, 0);
    }
}
