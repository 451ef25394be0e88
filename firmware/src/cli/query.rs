//! `flowwarden query`: list, rank (`--top`) or chart (`--series`) stored flows.

use super::args::QueryArgs;
use crate::query::{self, Filter, Scope, TopKey};
use crate::store::DataDir;
use crate::store::reader::Reader;
use crate::timefmt::{now_ms, parse_time, rfc3339_ms};
use anyhow::{Result, bail};
use std::io::Write;
use std::path::Path;

pub fn query(data_dir: &Path, a: QueryArgs, out: &mut dyn Write) -> Result<()> {
    let now = now_ms();
    let from = a.from.map(|t| parse_time(&t, now)).transpose()?.unwrap_or(0);
    let to = a.to.map(|t| parse_time(&t, now)).transpose()?.unwrap_or(u64::MAX);
    if from >= to {
        bail!("--from ({}) must be before --to ({})", rfc3339_ms(from), rfc3339_ms(to));
    }
    let filter = Filter::parse(&a.filter).map_err(|e| anyhow::anyhow!("{e}"))?;
    let reader = Reader::new(DataDir::new(data_dir));
    let scope = Scope { from, to, filter };
    let explain = |plan: &str| {
        if a.explain {
            eprintln!("plan: {plan}");
        }
    };
    let stats = if let Some(key) = a.top {
        let limit = a.limit.unwrap_or(10) as usize;
        let (rows, totals, stats) = match query::rollups::top(&reader, &scope, key, a.by, limit)? {
            Ok((rows, totals)) => {
                explain("roll-ups (per-hour top lists and per-minute totals)");
                (rows, totals, Default::default())
            }
            Err(why) => {
                explain(&format!("raw flows ({why})"));
                let (rows, totals, overflow, stats) = query::top(&reader, &scope, key, a.by, limit)?;
                if overflow > 0 {
                    eprintln!("note: {overflow} flows had keys beyond the aggregation limit and are not ranked");
                }
                (rows, totals, stats)
            }
        };
        let label = match key {
            TopKey::Src => "src",
            TopKey::Dst => "dst",
            TopKey::DstPort => "dst_port",
            TopKey::Proto => "proto",
            TopKey::Conversation => "conversation",
        };
        query::output::rows(a.format, label, &rows, &totals, out)?;
        stats
    } else if let Some(b) = a.series {
        let (buckets, stats) = match query::rollups::series(&reader, &scope, b.ms())? {
            Ok(buckets) => {
                explain("roll-ups (per-minute rows)");
                (buckets, Default::default())
            }
            Err(why) => {
                explain(&format!("raw flows ({why})"));
                query::series(&reader, &scope, b.ms())?
            }
        };
        let rows: Vec<query::Row> = buckets
            .iter()
            .map(|(t, c)| query::Row {
                key: rfc3339_ms(*t),
                flows: c.0,
                packets: c.1,
                bytes: c.2,
            })
            .collect();
        let totals = query::Totals {
            flows: rows.iter().map(|r| r.flows).sum(),
            packets: rows.iter().map(|r| r.packets).sum(),
            bytes: rows.iter().map(|r| r.bytes).sum(),
            clamped: 0,
        };
        query::output::rows(a.format, "start", &rows, &totals, out)?;
        stats
    } else {
        explain("raw flows (a listing shows each flow)");
        query::list(&reader, &scope, a.format, a.limit, out)?.1
    };
    if stats.damaged > 0 {
        eprintln!(
            "note: {} damaged segments could not be read and are not in these results",
            stats.damaged
        );
    }
    Ok(())
}
