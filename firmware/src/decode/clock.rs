//! Plausible flow times: a flow dated decades away (a broken exporter clock,
//! a corrupt or hostile datagram) must not create a segment in 1970 or 2105,
//! where it would outlive real data under oldest-first eviction.
//!
//! The reference is the datagram's header (export) time when that is itself
//! plausible (not before 2000, not beyond the box's clock plus the allowed
//! skew), else the arrival time (the capture's clock in `ingest`). A flow
//! whose end lies more than `max_clock_skew` from the reference is dated at
//! the reference (start = end); one that only started too long before it (a
//! very long flow, or a broken start field) keeps its end and starts at the
//! window's edge. Either way it is marked and counted per exporter.

use crate::flow::{FlowRecord, MARK_TIME_CLAMPED};

/// 2000-01-01T00:00:00Z: no exporter of ours predates it.
pub const FLOOR_MS: u64 = 946_684_800_000;

/// The window a datagram's flows must fall in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    pub reference: u64,
    pub lo: u64,
    pub hi: u64,
}

impl Window {
    /// The window for a datagram exported at `header_ms`, received at
    /// `arrival_ms`, on a box whose clock reads `now_ms`.
    pub fn new(header_ms: u64, arrival_ms: u64, now_ms: u64, skew_ms: u64) -> Window {
        let ceiling = now_ms.max(FLOOR_MS).saturating_add(skew_ms);
        let plausible = |t: u64| (FLOOR_MS..=ceiling).contains(&t);
        let reference = if plausible(header_ms) {
            header_ms
        } else {
            arrival_ms.clamp(FLOOR_MS, ceiling)
        };
        Window {
            reference,
            lo: reference.saturating_sub(skew_ms).max(FLOOR_MS),
            hi: reference.saturating_add(skew_ms).min(ceiling),
        }
    }

    /// Clamp a flow into the window; returns the original end time if it was changed.
    pub fn clamp(&self, f: &mut FlowRecord) -> Option<u64> {
        let original = f.end_ms;
        if f.end_ms < self.lo || f.end_ms > self.hi {
            f.start_ms = self.reference;
            f.end_ms = self.reference;
        } else if f.start_ms < self.lo || f.start_ms > f.end_ms {
            f.start_ms = self.lo.min(f.end_ms);
        } else {
            return None;
        }
        f.marks |= MARK_TIME_CLAMPED;
        Some(original)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: u64 = 86_400_000;
    const NOW: u64 = 1_796_000_000_000; // 2026-11-29

    fn flow(start: u64, end: u64) -> FlowRecord {
        FlowRecord {
            start_ms: start,
            end_ms: end,
            ..FlowRecord::default()
        }
    }

    #[test]
    fn plausible_flows_are_untouched() {
        let w = Window::new(NOW - 3_600_000, NOW - 3_600_000, NOW, DAY);
        let mut f = flow(NOW - 3_600_000 - 60_000, NOW - 3_600_000 - 1000);
        assert_eq!(w.clamp(&mut f), None);
        assert_eq!(f.marks, 0);
        // A replayed capture from years ago: the header is the reference, not the box's clock.
        let old = 1_600_000_000_000;
        let w = Window::new(old, old, NOW, DAY);
        let mut f = flow(old - 30_000, old - 1000);
        assert_eq!(w.clamp(&mut f), None);
    }

    #[test]
    fn decades_away_are_clamped_to_the_header() {
        let h = NOW - 1000;
        let w = Window::new(h, h, NOW, DAY);
        for (s, e) in [(0, 1000), (4_000_000_000_000, 4_000_000_001_000), (h - 3 * DAY, h - 2 * DAY)] {
            let mut f = flow(s, e);
            assert_eq!(w.clamp(&mut f), Some(e));
            assert_eq!((f.start_ms, f.end_ms), (h, h));
            assert!(f.time_clamped());
        }
        // Only the start is implausible: the end stays.
        let mut f = flow(h - 5 * DAY, h - 1000);
        assert!(w.clamp(&mut f).is_some());
        assert_eq!((f.start_ms, f.end_ms), (h - DAY, h - 1000));
    }

    #[test]
    fn an_implausible_header_falls_back_to_arrival() {
        for header in [0, 4_102_444_800_000] {
            let w = Window::new(header, NOW, NOW, DAY);
            assert_eq!(w.reference, NOW);
            let mut f = flow(header, header);
            assert!(w.clamp(&mut f).is_some());
            assert_eq!(f.start_ms, NOW);
        }
        // Never ahead of the box's clock by more than the skew, nor before 2000.
        let w = Window::new(NOW + 10 * DAY, NOW + 10 * DAY, NOW, DAY);
        assert_eq!(w.reference, NOW + DAY);
        let w = Window::new(5, 5, NOW, DAY);
        assert_eq!(w.reference, FLOOR_MS);
        assert_eq!(w.lo, FLOOR_MS);
    }
}
