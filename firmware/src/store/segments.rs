//! The data directory layout and flow segment naming.
//!
//! ```text
//! DATA/state.redb                       templates, exporter health, counters
//! DATA/rollups.redb                     per-minute totals, per-hour top-N
//! DATA/flows/20261127T1800Z-000.redb    flows starting in that span (seq rolls by size)
//! DATA/damaged/                         files that could not be read, kept for inspection
//! ```
//! Segment names sort by time, so eviction removes the lexically first files.

use crate::timefmt::rfc3339_ms;
use std::fmt;
use std::path::{Path, PathBuf};

/// Paths under one data directory.
#[derive(Debug, Clone)]
pub struct DataDir {
    root: PathBuf,
}

impl DataDir {
    pub fn new(root: impl Into<PathBuf>) -> DataDir {
        DataDir { root: root.into() }
    }
    pub fn root(&self) -> &Path {
        &self.root
    }
    pub fn flows(&self) -> PathBuf {
        self.root.join("flows")
    }
    pub fn state(&self) -> PathBuf {
        self.root.join("state.redb")
    }
    pub fn rollups(&self) -> PathBuf {
        self.root.join("rollups.redb")
    }
    pub fn segment(&self, id: SegmentId) -> PathBuf {
        self.flows().join(format!("{id}.redb"))
    }
    pub fn damaged(&self) -> PathBuf {
        self.root.join("damaged")
    }

    /// Files in the damaged folder, oldest first (by name, which ends in a time stamp), with sizes.
    pub fn list_damaged(&self) -> std::io::Result<Vec<(PathBuf, u64)>> {
        let mut out = files_in(&self.damaged())?;
        // Oldest first by the time stamp after the last dot.
        out.sort_by(|a, b| {
            let stamp = |p: &PathBuf| p.extension().map(|e| e.to_string_lossy().into_owned()).unwrap_or_default();
            stamp(&a.0).cmp(&stamp(&b.0))
        });
        Ok(out)
    }

    /// Every file the store owns with its length: segments, state, roll-ups, damaged files.
    pub fn files(&self) -> std::io::Result<Vec<(PathBuf, u64)>> {
        let mut out: Vec<(PathBuf, u64)> = self.list_segments()?.into_iter().map(|(id, len)| (self.segment(id), len)).collect();
        for p in [self.state(), self.rollups()] {
            match std::fs::metadata(&p) {
                Ok(m) => out.push((p, m.len())),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
        out.extend(self.list_damaged()?);
        Ok(out)
    }

    /// All segments on disk, oldest first, with their sizes.
    pub fn list_segments(&self) -> std::io::Result<Vec<(SegmentId, u64)>> {
        let mut out: Vec<(SegmentId, u64)> = files_in(&self.flows())?
            .into_iter()
            .filter_map(|(p, len)| {
                let name = p.file_name()?.to_str()?;
                Some((SegmentId::parse(name.strip_suffix(".redb")?)?, len))
            })
            .collect();
        out.sort();
        Ok(out)
    }

    /// Total bytes of every file the store owns.
    pub fn total_bytes(&self) -> std::io::Result<u64> {
        Ok(self.files()?.iter().map(|f| f.1).sum())
    }
}

/// The regular files directly in `dir` with their lengths (none if it does not exist).
fn files_in(dir: &Path) -> std::io::Result<Vec<(PathBuf, u64)>> {
    let mut out = Vec::new();
    let entries = match std::fs::read_dir(dir) {
        Ok(d) => d,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(e),
    };
    for entry in entries {
        let entry = entry?;
        let meta = entry.metadata()?;
        if meta.is_file() {
            out.push((entry.path(), meta.len()));
        }
    }
    Ok(out)
}

/// A segment: the time span its flows start in, and a sequence number
/// within the span (a new file starts when one grows past its size share).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SegmentId {
    pub span_start: u64,
    pub seq: u32,
}

impl SegmentId {
    /// Parse `20261127T1800Z-000`.
    pub fn parse(s: &str) -> Option<SegmentId> {
        let (t, seq) = s.split_once('-')?;
        if t.len() != 14 || !t.ends_with('Z') || t.as_bytes()[8] != b'T' {
            return None;
        }
        let iso = format!("{}-{}-{}T{}:{}:00Z", &t[0..4], &t[4..6], &t[6..8], &t[9..11], &t[11..13]);
        let span_start = crate::timefmt::parse_time(&iso, 0).ok()?;
        Some(SegmentId {
            span_start,
            seq: seq.parse().ok()?,
        })
    }
}

impl fmt::Display for SegmentId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let r = rfc3339_ms(self.span_start);
        write!(
            f,
            "{}{}{}T{}{}Z-{:03}",
            &r[0..4],
            &r[5..7],
            &r[8..10],
            &r[11..13],
            &r[14..16],
            self.seq
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_sort_by_time() {
        let a = SegmentId {
            span_start: 1_566_410_400_000,
            seq: 0,
        };
        assert_eq!(a.to_string(), "20190821T1800Z-000");
        assert_eq!(SegmentId::parse("20190821T1800Z-000"), Some(a));
        let b = SegmentId {
            span_start: a.span_start + 3_600_000,
            seq: 0,
        };
        assert!(a.to_string() < b.to_string() && a < b);
        assert_eq!(SegmentId::parse("junk"), None);
    }
}
