//! Answers from the roll-ups: `--series` from the per-minute rows and `--top`
//! from the per-minute protocol rows or the per-hour top lists, whenever the
//! filter and the time range allow and the answer is exact; otherwise the
//! caller scans the raw flows. Never a silent approximation:
//!
//! - series: the filter must be one the minute rows are keyed by (none,
//!   `proto N`, `exporter ADDR[:PORT]`, `direction D`), the range on whole minutes, and the
//!   roll-ups complete over it (nothing trimmed or expired where raw flows
//!   remain). Buckets count flows by the minute they started, as the raw scan does.
//! - top: no filter, whole hours (whole minutes for `proto`), and for each hour
//!   in range a top list that covers exactly the flows its minute rows count
//!   and is not marked inexact. The per-hour lists are then summed with bounds
//!   (a key missing from a full list counts at most that list's smallest value)
//!   and the result is used only when the N keys shown have exact values and
//!   no other key could rank among them.

use super::{By, Counts, Key, Row, Scope, TopKey, Totals, render};
use crate::query::filter::Filter;
use crate::store::StoreError;
use crate::store::reader::Reader;
use crate::store::rollup::{TopEntry, meta};
use crate::store::schema::{dim, metric, top};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::{IpAddr, SocketAddr};

const MINUTE: u64 = 60_000;
const HOUR: u64 = 3_600_000;

/// Why the roll-ups cannot answer (for `--explain`), or the answer.
pub type Answer<T> = Result<T, String>;

/// Which keys of a minute-row dimension a filter selects.
type KeySelect = Box<dyn Fn(&[u8]) -> bool>;

/// The minute-row dimension and key a filter selects, if the roll-ups hold it.
fn dimension(filter: &Filter) -> Answer<(u8, KeySelect)> {
    match filter {
        Filter::Any => Ok((dim::TOTAL, Box::new(|_| true))),
        Filter::Proto(p) => {
            let p = *p;
            Ok((dim::PROTOCOL, Box::new(move |k| k == [p])))
        }
        Filter::Exporter(ip, port) => {
            let (ip, port) = (*ip, *port);
            Ok((
                dim::EXPORTER,
                Box::new(move |k| {
                    std::str::from_utf8(k)
                        .ok()
                        .and_then(|s| s.parse::<SocketAddr>().ok())
                        .is_some_and(|a| a.ip() == ip && port.is_none_or(|p| a.port() == p))
                }),
            ))
        }
        Filter::Direction(d) => {
            let d = *d as u8;
            Ok((dim::DIRECTION, Box::new(move |k| k == [d])))
        }
        _ => Err("the filter is not one the roll-ups are keyed by (none, proto, exporter, direction)".into()),
    }
}

fn aligned(scope: &Scope, step: u64, what: &str) -> Answer<(u64, u64)> {
    if !scope.from.is_multiple_of(step) || (scope.to != u64::MAX && !scope.to.is_multiple_of(step)) {
        return Err(format!("--from/--to are not on whole {what}"));
    }
    Ok((scope.from, scope.to))
}

/// Whether roll-ups from `from` on hold everything the raw flows do.
fn complete(reader: &Reader, meta: &BTreeMap<String, u64>, key: &str, from: u64) -> Result<Answer<()>, StoreError> {
    let complete_from = meta.get(key).copied().unwrap_or(0);
    if from >= complete_from {
        return Ok(Ok(()));
    }
    let why = if key == meta::DIRECTIONS_FROM {
        "roll-ups before {} were written without directions (an older version) while raw flows remain"
    } else {
        "roll-ups before {} were trimmed or expired while raw flows remain"
    };
    match reader.oldest_span()? {
        // Raw flows older than what the roll-ups still hold: only they can answer.
        Some(oldest) if oldest < complete_from => Ok(Err(why.replace("{}", &crate::timefmt::rfc3339_ms(complete_from)))),
        _ => Ok(Ok(())),
    }
}

/// The minute rows of dimension `kind` over the scope's range, when they are
/// complete there and the range and the bucket are whole minutes.
fn minute_rows(
    reader: &Reader,
    scope: &Scope,
    bucket_ms: u64,
    kind: u8,
) -> Result<Answer<Vec<crate::store::reader::MinuteRow>>, StoreError> {
    let (from, to) = match aligned(scope, MINUTE, "minutes") {
        Ok(r) => r,
        Err(e) => return Ok(Err(e)),
    };
    if !bucket_ms.is_multiple_of(MINUTE) {
        return Ok(Err("the bucket is not whole minutes".into()));
    }
    let meta = reader.rollup_meta()?;
    if let Err(e) = complete(reader, &meta, meta::MINUTES_FROM, from)? {
        return Ok(Err(e));
    }
    if kind == dim::DIRECTION
        && let Err(e) = complete(reader, &meta, meta::DIRECTIONS_FROM, from)?
    {
        return Ok(Err(e));
    }
    Ok(Ok(reader.minutes(kind, from, to)?))
}

/// Series buckets from the minute rows.
pub fn series(reader: &Reader, scope: &Scope, bucket_ms: u64) -> Result<Answer<BTreeMap<u64, Counts>>, StoreError> {
    let (kind, select) = match dimension(&scope.filter) {
        Ok(d) => d,
        Err(e) => return Ok(Err(e)),
    };
    let rows = match minute_rows(reader, scope, bucket_ms, kind)? {
        Ok(r) => r,
        Err(e) => return Ok(Err(e)),
    };
    let mut buckets: BTreeMap<u64, Counts> = BTreeMap::new();
    for (m, key, bytes, packets, flows) in rows {
        if select(&key) {
            let b = buckets.entry(m - m % bucket_ms).or_default();
            b.0 += flows;
            b.1 += packets;
            b.2 += bytes;
        }
    }
    Ok(Ok(buckets))
}

/// Series buckets of every direction at once (the scope's filter is not
/// used): per bucket, counts indexed by [`crate::flow::Direction`] as u8.
pub fn direction_series(reader: &Reader, scope: &Scope, bucket_ms: u64) -> Result<Answer<BTreeMap<u64, [Counts; 5]>>, StoreError> {
    let rows = match minute_rows(reader, scope, bucket_ms, dim::DIRECTION)? {
        Ok(r) => r,
        Err(e) => return Ok(Err(e)),
    };
    let mut buckets: BTreeMap<u64, [Counts; 5]> = BTreeMap::new();
    for (m, key, bytes, packets, flows) in rows {
        let Some(c) = key
            .first()
            .and_then(|d| buckets.entry(m - m % bucket_ms).or_default().get_mut(*d as usize))
        else {
            continue;
        };
        c.0 += flows;
        c.1 += packets;
        c.2 += bytes;
    }
    Ok(Ok(buckets))
}

fn pick(by: By, c: &Counts) -> u64 {
    match by {
        By::Flows => c.0,
        By::Packets => c.1,
        By::Bytes => c.2,
    }
}

/// Rank typed keys as the raw top does (metric descending, then key) and render.
fn ranked(mut rows: Vec<(Key, Counts)>, by: By, limit: usize) -> Vec<Row> {
    rows.sort_by(|a, b| pick(by, &b.1).cmp(&pick(by, &a.1)).then_with(|| a.0.cmp(&b.0)));
    rows.truncate(limit);
    rows.into_iter()
        .map(|(k, c)| Row {
            key: render(&k),
            flows: c.0,
            packets: c.1,
            bytes: c.2,
        })
        .collect()
}

fn ip_of(b: &[u8]) -> Option<IpAddr> {
    match b.len() {
        4 => Some(IpAddr::from([b[0], b[1], b[2], b[3]])),
        16 => {
            let mut a = [0u8; 16];
            a.copy_from_slice(b);
            Some(IpAddr::from(a))
        }
        _ => None,
    }
}

/// The query's typed key of a stored top entry.
fn typed(kind: u8, k: &[u8]) -> Option<Key> {
    match kind {
        top::SRC | top::DST => ip_of(k).map(Key::Ip),
        top::DST_PORT if k.len() == 3 => Some(Key::Port(k[0], u16::from_be_bytes([k[1], k[2]]))),
        top::CONVERSATION => {
            let n = *k.first()? as usize;
            Some(Key::Pair(ip_of(k.get(1..1 + n)?)?, ip_of(k.get(1 + n..)?)?))
        }
        _ => None,
    }
}

/// Top-N from the roll-ups, with the totals of the range.
pub fn top(reader: &Reader, scope: &Scope, key: TopKey, by: By, limit: usize) -> Result<Answer<(Vec<Row>, Totals)>, StoreError> {
    if scope.filter != Filter::Any {
        return Ok(Err("the roll-ups rank over all flows; a filter needs the raw flows".into()));
    }
    let meta = reader.rollup_meta()?;
    if key == TopKey::Proto {
        let (from, to) = match aligned(scope, MINUTE, "minutes") {
            Ok(r) => r,
            Err(e) => return Ok(Err(e)),
        };
        if let Err(e) = complete(reader, &meta, meta::MINUTES_FROM, from)? {
            return Ok(Err(e));
        }
        let mut by_proto: HashMap<u8, Counts> = HashMap::new();
        let mut totals = Totals::default();
        for (_, k, bytes, packets, flows) in reader.minutes(dim::PROTOCOL, from, to)? {
            let Some(&p) = k.first() else { continue };
            let c = by_proto.entry(p).or_default();
            c.0 += flows;
            c.1 += packets;
            c.2 += bytes;
            totals.flows += flows;
            totals.packets += packets;
            totals.bytes += bytes;
        }
        let rows = by_proto.into_iter().map(|(p, c)| (Key::Proto(p), c)).collect();
        return Ok(Ok((ranked(rows, by, limit), totals)));
    }
    let (from, to) = match aligned(scope, HOUR, "hours") {
        Ok(r) => r,
        Err(e) => return Ok(Err(e)),
    };
    if let Err(e) = complete(reader, &meta, meta::MINUTES_FROM, from)? {
        return Ok(Err(e));
    }
    if let Err(e) = complete(reader, &meta, meta::HOURS_FROM, from)? {
        return Ok(Err(e));
    }
    // Flows per hour from the minute totals: every hour with flows needs a current list.
    let mut hour_flows: BTreeMap<u64, u64> = BTreeMap::new();
    let mut totals = Totals::default();
    for (m, _, bytes, packets, flows) in reader.minutes(dim::TOTAL, from, to)? {
        *hour_flows.entry(m - m % HOUR).or_default() += flows;
        totals.flows += flows;
        totals.packets += packets;
        totals.bytes += bytes;
    }
    let kind = match key {
        TopKey::Src => top::SRC,
        TopKey::Dst => top::DST,
        TopKey::DstPort => top::DST_PORT,
        TopKey::Conversation => top::CONVERSATION,
        TopKey::Proto => unreachable_proto(),
    };
    for (&h, &n) in &hour_flows {
        if meta.contains_key(&meta::inexact(h, kind)) {
            return Ok(Err(format!(
                "the hour {}'s top list is inexact (late flows, or more keys than it can count)",
                crate::timefmt::rfc3339_ms(h)
            )));
        }
        if meta.get(&meta::hour_flows(h)) != Some(&n) {
            return Ok(Err(format!(
                "the top lists of the hour {} are not written yet",
                crate::timefmt::rfc3339_ms(h)
            )));
        }
    }
    let m = match by {
        By::Bytes => metric::BYTES,
        By::Packets => metric::PACKETS,
        By::Flows => metric::FLOWS,
    };
    let hours: Vec<u64> = hour_flows.keys().copied().collect();
    let lists = reader.hour_tops(&hours, kind, m)?;
    let top_n = meta.get(meta::TOP_ENTRIES).copied().unwrap_or(100) as usize;
    Ok(certify(kind, by, limit, top_n, &lists).map(|rows| (rows, totals)))
}

/// An approximate ranking for views that must not scan (the status page):
/// each whole hour's stored top list summed, so every value is a lower bound
/// (a key counts only in the hours whose list holds it). None when the range
/// has no stored lists. Callers say it is approximate.
pub fn top_from_hour_lists(reader: &Reader, scope: &Scope, key: TopKey, by: By, limit: usize) -> Result<Option<Vec<Row>>, StoreError> {
    let kind = match key {
        TopKey::Src => top::SRC,
        TopKey::Dst => top::DST,
        TopKey::DstPort => top::DST_PORT,
        TopKey::Conversation => top::CONVERSATION,
        TopKey::Proto => return Ok(None),
    };
    let m = match by {
        By::Bytes => metric::BYTES,
        By::Packets => metric::PACKETS,
        By::Flows => metric::FLOWS,
    };
    let first = scope.from - scope.from % HOUR;
    let hours: Vec<u64> = (first..scope.to.min(first + 400 * 24 * HOUR)).step_by(HOUR as usize).collect();
    let mut sums: HashMap<Key, Counts> = HashMap::new();
    let mut any = false;
    for (_, list) in reader.hour_tops(&hours, kind, m)? {
        for e in list.into_iter().flatten() {
            any = true;
            if let Some(k) = typed(kind, &e.key) {
                let c = sums.entry(k).or_default();
                c.0 += e.flows;
                c.1 += e.packets;
                c.2 += e.bytes;
            }
        }
    }
    Ok(any.then(|| ranked(sums.into_iter().collect(), by, limit)))
}

/// The proto key is answered from the minute rows above.
fn unreachable_proto() -> u8 {
    top::SRC
}

/// Sum per-hour lists with bounds; the top `limit` only if it is exact.
fn certify(kind: u8, by: By, limit: usize, top_n: usize, lists: &[(u64, Option<Vec<TopEntry>>)]) -> Answer<Vec<Row>> {
    // Per key: exact counts summed where listed, and the bound of the hours where it is not.
    let mut sums: HashMap<Key, (Counts, u64)> = HashMap::new();
    let mut listed_in: HashMap<Key, BTreeSet<u64>> = HashMap::new();
    let mut unlisted_bound = 0u64;
    let mut thresholds: Vec<(u64, u64)> = Vec::new();
    for (hour, list) in lists {
        let Some(list) = list else {
            return Err(format!("no top list stored for the hour {}", crate::timefmt::rfc3339_ms(*hour)));
        };
        // A list shorter than the configured length holds every key of its hour.
        let full = list.len() >= top_n;
        let threshold = if full {
            list.iter().map(|e| pick(by, &(e.flows, e.packets, e.bytes))).min().unwrap_or(0)
        } else {
            0
        };
        thresholds.push((*hour, threshold));
        unlisted_bound += threshold;
        for e in list {
            let Some(k) = typed(kind, &e.key) else {
                return Err("a stored top entry cannot be read".into());
            };
            let s = sums.entry(k).or_default();
            s.0.0 += e.flows;
            s.0.1 += e.packets;
            s.0.2 += e.bytes;
            listed_in.entry(k).or_default().insert(*hour);
        }
    }
    // Upper bound of each seen key: its sum plus the thresholds of the hours it is missing from.
    let mut rows: Vec<(Key, Counts, u64, bool)> = sums
        .into_iter()
        .map(|(k, (c, _))| {
            let seen = &listed_in[&k];
            let missing: u64 = thresholds.iter().filter(|(h, _)| !seen.contains(h)).map(|t| t.1).sum();
            (k, c, pick(by, &c) + missing, missing == 0)
        })
        .collect();
    rows.sort_by(|a, b| pick(by, &b.1).cmp(&pick(by, &a.1)).then_with(|| a.0.cmp(&b.0)));
    let shown: Vec<&(Key, Counts, u64, bool)> = rows.iter().take(limit).collect();
    if let Some(bad) = shown.iter().find(|r| !r.3) {
        return Err(format!("the value of {} is not in every hour's list", render(&bad.0)));
    }
    // No key outside the shown rows may reach the last shown value: keys never
    // listed may hold up to the sum of the thresholds, partly listed ones up to
    // their bound (exact ones beyond the limit are already ordered correctly).
    let uncertain = rows
        .iter()
        .skip(limit)
        .filter(|r| !r.3)
        .map(|r| r.2)
        .max()
        .unwrap_or(0)
        .max(unlisted_bound);
    let last = shown.last().map(|r| pick(by, &r.1)).unwrap_or(0);
    if uncertain > 0 && (shown.len() < limit || uncertain >= last) {
        return Err("keys outside the hours' lists could rank among the top; the lists are too short".into());
    }
    Ok(ranked(shown.iter().map(|r| (r.0, r.1)).collect(), by, limit))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn e(ip: u8, flows: u64) -> TopEntry {
        TopEntry {
            key: vec![10, 0, 0, ip],
            bytes: flows * 100,
            packets: flows * 2,
            flows,
        }
    }

    #[test]
    fn complete_lists_sum_exactly() {
        let lists = vec![(0, Some(vec![e(1, 5), e(2, 3)])), (HOUR, Some(vec![e(2, 4), e(3, 1)]))];
        let rows = certify(top::SRC, By::Flows, 2, 10, &lists).unwrap_or_default();
        assert_eq!(
            rows.iter().map(|r| (r.key.as_str(), r.flows)).collect::<Vec<_>>(),
            [("10.0.0.2", 7), ("10.0.0.1", 5)]
        );
    }

    #[test]
    fn truncated_lists_certify_or_refuse() {
        // Lists of length 2 (= top_n): a key missing from a list may hide up to its smallest value.
        let clear = vec![(0, Some(vec![e(1, 50), e(2, 3)])), (HOUR, Some(vec![e(1, 40), e(3, 2)]))];
        let rows = certify(top::SRC, By::Flows, 1, 2, &clear).unwrap_or_default();
        assert_eq!(rows[0].flows, 90);
        // 10.0.0.2 might have up to 3 + 2 = 5 flows: it cannot be ranked second exactly.
        assert!(certify(top::SRC, By::Flows, 2, 2, &clear).is_err());
        let missing = vec![(0, None)];
        assert!(certify(top::SRC, By::Flows, 1, 2, &missing).is_err());
    }
}
