//! `flowwarden ingest`: replay captures through the live pipeline on event
//! time, then say what was stored, evicted and kept (each a number `query`
//! confirms) and what was lost. Exits non-zero only when data was lost against
//! the rules (a file that could not be read, a failed commit, a damaged store
//! file); planned eviction of the oldest data is not a loss.

use crate::config::Config;
use crate::pipeline::{Backpressure, Pipeline, PipelineReport};
use anyhow::{Result, bail};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

pub fn ingest(cfg: &Config, data_dir: &Path, files: &[PathBuf], out: &mut dyn Write) -> Result<()> {
    let started = Instant::now();
    let mut pipeline = Pipeline::open(cfg, data_dir, Backpressure::Block)?;
    let mut capture = crate::capture::CaptureStats::default();
    let mut failed = Vec::new();
    for file in files {
        let res = crate::capture::read_capture(file, |d| pipeline.datagram(d.src, d.ts_ms, d.payload));
        let s = match res {
            Ok(s) => s,
            // What was read before the damage is kept (and counted); say what went wrong and go on.
            Err(e) => {
                eprintln!("error: {e}");
                failed.push(file.clone());
                e.stats()
            }
        };
        capture.frames += s.frames;
        capture.udp += s.udp;
        capture.not_ip += s.not_ip;
        capture.not_udp += s.not_udp;
        capture.fragments += s.fragments;
        capture.truncated += s.truncated;
        capture.unsupported_linktype += s.unsupported_linktype;
    }
    let report = pipeline.finish();
    print_ingest_summary(files.len(), &capture, &report, started.elapsed().as_secs_f64(), out)?;
    out.flush()?;
    if !failed.is_empty() {
        bail!("{} of {} files could not be read completely", failed.len(), files.len());
    }
    let lost = ingest_losses(&report);
    if !lost.is_empty() {
        bail!("data was lost: {}", lost.join("; "));
    }
    Ok(())
}

/// What an ingest lost against the rules (planned eviction of the oldest data is not a loss).
fn ingest_losses(r: &PipelineReport) -> Vec<String> {
    let mut lost = Vec::new();
    if r.flows_dropped_store > 0 {
        lost.push(format!("{} flows could not be stored", r.flows_dropped_store));
    }
    if r.flows_dropped_queue > 0 {
        lost.push(format!("{} flows were dropped in the store queue", r.flows_dropped_queue));
    }
    if r.files_damaged > 0 {
        lost.push(format!(
            "{} damaged store files were moved aside (see the log and the damaged/ folder)",
            r.files_damaged
        ));
    }
    if r.rollup_failures > 0 {
        lost.push(format!("{} roll-up commits failed", r.rollup_failures));
    }
    if r.state_failures > 0 {
        lost.push(format!("{} state commits failed", r.state_failures));
    }
    lost
}

fn print_ingest_summary(
    files: usize,
    c: &crate::capture::CaptureStats,
    r: &PipelineReport,
    secs: f64,
    out: &mut dyn Write,
) -> std::io::Result<()> {
    use crate::units;
    let d = &r.decode;
    writeln!(out, "files:              {files}")?;
    writeln!(out, "frames:             {} ({} UDP datagrams)", c.frames, c.udp)?;
    writeln!(out, "packets:            {} NetFlow/IPFIX datagrams", d.datagrams - d.not_netflow)?;
    writeln!(out, "records:            {}", d.records)?;
    writeln!(out, "flows stored:       {}", r.flows_committed)?;
    writeln!(out, "flows evicted (oldest, budget): {}", r.flows_evicted)?;
    if r.flows_evicted_age > 0 {
        writeln!(out, "flows evicted (age cap):        {}", r.flows_evicted_age)?;
    }
    if r.flows_before > 0 {
        writeln!(out, "flows before:       {} (already in the data directory)", r.flows_before)?;
    }
    writeln!(out, "flows kept:         {} (what query finds now)", r.flows_kept)?;
    writeln!(
        out,
        "store:              {} of {} budget ({}), {} segments",
        units::bytes(r.bytes_used),
        units::bytes(r.budget),
        units::percent(r.bytes_used, r.budget),
        r.segments
    )?;
    if r.capacity < r.budget {
        writeln!(
            out,
            "                    the data file system holds only {} for the store: kept within that",
            units::bytes(r.capacity)
        )?;
    }
    if d.time_clamped > 0 {
        writeln!(
            out,
            "times clamped:      {} flows dated implausibly far from their export time (see exporters)",
            d.time_clamped
        )?;
    }
    writeln!(out, "drops:")?;
    writeln!(out, "  not netflow:              {}", d.not_netflow)?;
    writeln!(out, "  malformed datagrams:      {}", d.malformed)?;
    writeln!(
        out,
        "  sets without template:    {} (held {}, decoded later {}, expired {})",
        d.sets_without_template, d.pending_held, d.pending_replayed, d.pending_dropped
    )?;
    writeln!(out, "  trailing garbage cut:     {}", d.trailing_garbage)?;
    writeln!(out, "  non-flow records:         {}", d.non_flow_records)?;
    writeln!(out, "  capture not ip/udp:       {}", c.not_ip + c.not_udp)?;
    writeln!(out, "  capture fragments:        {}", c.fragments)?;
    writeln!(out, "  capture truncated:        {}", c.truncated)?;
    writeln!(out, "  store queue:              {}", r.flows_dropped_queue)?;
    writeln!(out, "  store errors:             {}", r.flows_dropped_store)?;
    writeln!(out, "  older than age cap:       {}", r.flows_too_old)?;
    if r.files_damaged + r.rollup_failures + r.state_failures + r.rollup_rows_trimmed > 0 {
        writeln!(out, "store trouble:")?;
        writeln!(out, "  damaged files moved aside: {}", r.files_damaged)?;
        writeln!(out, "  roll-up commits failed:    {}", r.rollup_failures)?;
        writeln!(out, "  state commits failed:      {}", r.state_failures)?;
        writeln!(
            out,
            "  roll-up rows trimmed early: {} (their share of the budget was full)",
            r.rollup_rows_trimmed
        )?;
    }
    writeln!(
        out,
        "compressed blocks:  {} ({:.1} bytes per flow)",
        units::bytes(r.block_bytes),
        r.block_bytes as f64 / r.flows_committed.max(1) as f64
    )?;
    writeln!(out, "segments evicted:   {}", r.segments_evicted)?;
    writeln!(out, "templates known:    {}", r.templates)?;
    writeln!(out, "elapsed:            {}", units::duration_s(secs))?;
    writeln!(
        out,
        "records/s:          {:.0}",
        if secs > 0.0 { d.records as f64 / secs } else { 0.0 }
    )?;
    Ok(())
}
