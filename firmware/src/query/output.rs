//! Output formats for query results: an aligned table for people, JSON lines
//! and CSV for tools. The jsonl/csv flow keys are a contract:
//! `start end src dst src_port dst_port proto bytes packets tcp_flags in_if out_if exporter sampling_rate`.

use super::{Row, Totals};
use crate::flow::{FlowRecord, proto_name, tcp_flags_string};
use crate::table::{Align, Table};
use crate::timefmt::rfc3339_ms;
use crate::units;
use std::io::{self, Write};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Table,
    Jsonl,
    Csv,
}

const CSV_HEADER: &str = "start,end,src,dst,src_port,dst_port,proto,bytes,packets,tcp_flags,in_if,out_if,exporter,sampling_rate";

pub fn flow_header(format: Format, out: &mut dyn Write) -> io::Result<()> {
    match format {
        Format::Table => writeln!(
            out,
            "{:<23} {:>9} {:<5} {:>45} {:>45} {:<8} {:>10} {:>10} {:>12} {:>7}",
            "Date first seen (UTC)",
            "Duration",
            "Proto",
            "Src IP Addr:Port",
            "Dst IP Addr:Port",
            "Flags",
            "Packets",
            "Bytes",
            "Rate",
            "Sampled"
        ),
        Format::Csv => writeln!(out, "{CSV_HEADER}"),
        Format::Jsonl => Ok(()),
    }
}

fn endpoint(ip: &std::net::IpAddr, port: u16) -> String {
    match ip {
        std::net::IpAddr::V4(a) => format!("{a}:{port}"),
        std::net::IpAddr::V6(a) => format!("[{a}]:{port}"),
    }
}

pub fn flow_row(format: Format, f: &FlowRecord, out: &mut dyn Write) -> io::Result<()> {
    match format {
        Format::Jsonl => writeln!(
            out,
            "{{\"start\":\"{}\",\"end\":\"{}\",\"src\":\"{}\",\"dst\":\"{}\",\"src_port\":{},\"dst_port\":{},\"proto\":{},\"bytes\":{},\"packets\":{},\"tcp_flags\":{},\"in_if\":{},\"out_if\":{},\"exporter\":\"{}\",\"sampling_rate\":{}}}",
            rfc3339_ms(f.start_ms),
            rfc3339_ms(f.end_ms),
            f.src,
            f.dst,
            f.src_port,
            f.dst_port,
            f.proto,
            f.bytes,
            f.packets,
            f.tcp_flags,
            f.in_if,
            f.out_if,
            f.exporter,
            f.sampling_rate
        ),
        Format::Csv => writeln!(
            out,
            "{},{},{},{},{},{},{},{},{},{},{},{},{},{}",
            rfc3339_ms(f.start_ms),
            rfc3339_ms(f.end_ms),
            f.src,
            f.dst,
            f.src_port,
            f.dst_port,
            f.proto,
            f.bytes,
            f.packets,
            f.tcp_flags,
            f.in_if,
            f.out_if,
            f.exporter,
            f.sampling_rate
        ),
        Format::Table => {
            let t = rfc3339_ms(f.start_ms);
            let proto = proto_name(f.proto).map(|p| p.to_uppercase()).unwrap_or_else(|| f.proto.to_string());
            // Mean bit rate over the flow's duration, as nfdump's bps (none for an instant flow).
            let rate = match f.duration_ms() {
                0 => "-".to_string(),
                ms => units::bits_per_second(f.bytes as f64 * 8000.0 / ms as f64),
            };
            let sampled = if f.sampling_rate > 1 {
                format!("1:{}", f.sampling_rate)
            } else {
                "-".into()
            };
            let mark = if f.time_clamped() { "*" } else { "" };
            writeln!(
                out,
                "{} {}{mark} {:>9.3} {:<5} {:>45} {:>45} {:<8} {:>10} {:>10} {:>12} {:>7}",
                &t[0..10],
                &t[11..23],
                f.duration_ms() as f64 / 1000.0,
                proto,
                endpoint(&f.src, f.src_port),
                endpoint(&f.dst, f.dst_port),
                tcp_flags_string(f.tcp_flags),
                f.packets,
                units::bytes(f.bytes),
                rate,
                sampled
            )
        }
    }
}

pub fn flow_footer(format: Format, t: &Totals, out: &mut dyn Write) -> io::Result<()> {
    if format == Format::Table {
        writeln!(
            out,
            "Summary: {} flows, {} ({} bytes), {} packets",
            t.flows,
            units::bytes(t.bytes),
            t.bytes,
            t.packets
        )?;
        if t.clamped > 0 {
            writeln!(
                out,
                "{} flows marked * had implausible times (the exporter's clock) and are dated at their export time",
                t.clamped
            )?;
        }
    }
    Ok(())
}

/// Top-N or series rows; `label` names the key column.
pub fn rows(format: Format, label: &str, rows: &[Row], totals: &Totals, out: &mut dyn Write) -> io::Result<()> {
    let share = |v: u64, of: u64| if of == 0 { 0.0 } else { v as f64 * 100.0 / of as f64 };
    match format {
        Format::Table => {
            let mut t = Table::new(&[
                (label, Align::Left),
                ("Flows", Align::Right),
                ("%", Align::Right),
                ("Packets", Align::Right),
                ("%", Align::Right),
                ("Bytes", Align::Right),
                ("%", Align::Right),
            ]);
            for r in rows {
                t.row(vec![
                    r.key.clone(),
                    r.flows.to_string(),
                    format!("{:.1}", share(r.flows, totals.flows)),
                    r.packets.to_string(),
                    format!("{:.1}", share(r.packets, totals.packets)),
                    units::bytes(r.bytes),
                    format!("{:.1}", share(r.bytes, totals.bytes)),
                ]);
            }
            t.write(out)?;
            writeln!(
                out,
                "Summary: {} flows, {} ({} bytes), {} packets",
                totals.flows,
                units::bytes(totals.bytes),
                totals.bytes,
                totals.packets
            )
        }
        Format::Jsonl => {
            for r in rows {
                writeln!(
                    out,
                    "{{\"{label}\":{},\"flows\":{},\"packets\":{},\"bytes\":{}}}",
                    serde_json::Value::from(r.key.as_str()),
                    r.flows,
                    r.packets,
                    r.bytes
                )?;
            }
            Ok(())
        }
        Format::Csv => {
            writeln!(out, "{label},flows,packets,bytes")?;
            for r in rows {
                let key = if r.key.contains(',') {
                    format!("\"{}\"", r.key)
                } else {
                    r.key.clone()
                };
                writeln!(out, "{key},{},{},{}", r.flows, r.packets, r.bytes)?;
            }
            Ok(())
        }
    }
}
