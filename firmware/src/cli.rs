//! The command line (a contract: other tools and checks rely on these flags).
//!
//! `run`, `ingest`, `query`, `exporters`, `alerts`, `detectors`, `forward-test`,
//! `forward-status`, `check-config`, `version`. This is the
//! edge of the program: errors become messages and exit codes here.

use crate::config::Config;
use crate::pipeline::{Backpressure, Pipeline, PipelineReport};
use crate::query::{self, By, Filter, Format, Scope, TopKey};
use crate::store::DataDir;
use crate::store::reader::Reader;
use crate::timefmt::{now_ms, parse_time, rfc3339_ms};
use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand, ValueEnum};
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Instant;

#[derive(Debug, Parser)]
#[command(name = "flowwarden", version, about = "NetFlow/IPFIX security monitoring appliance")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the live collector.
    Run {
        #[arg(long)]
        config: Option<PathBuf>,
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// UDP address to listen on (repeatable; replaces the configured listeners).
        #[arg(long = "listen", value_name = "ADDR:PORT")]
        listen: Vec<SocketAddr>,
        /// Feed a synthetic branch office with injected attacks through the live pipeline.
        #[arg(long)]
        demo: bool,
    },
    /// Replay NetFlow/IPFIX export packets from pcap/pcapng files, on event time.
    Ingest {
        #[arg(long)]
        config: Option<PathBuf>,
        #[arg(long)]
        data_dir: PathBuf,
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// List, rank or chart stored flows.
    Query {
        #[arg(long)]
        data_dir: PathBuf,
        /// Start (RFC 3339, 'YYYY-MM-DD HH:MM[:SS]' UTC, Unix seconds, or -2h).
        #[arg(long, allow_hyphen_values = true)]
        from: Option<String>,
        /// End, exclusive (same forms as --from).
        #[arg(long, allow_hyphen_values = true)]
        to: Option<String>,
        /// Filter expression, e.g. "src net 10.0.0.0/8 and dst port 443".
        #[arg(long, default_value = "")]
        filter: String,
        #[arg(long, value_enum, default_value = "table")]
        format: Format,
        /// Rank by this key instead of listing flows.
        #[arg(long, value_enum)]
        top: Option<TopKey>,
        #[arg(long, value_enum, default_value = "bytes")]
        by: By,
        /// Rows for --top (default 10) or flows for a listing (default all).
        #[arg(long)]
        limit: Option<u64>,
        /// Time series with this bucket instead of listing flows.
        #[arg(long, value_enum, conflicts_with = "top")]
        series: Option<Bucket>,
    },
    /// Per-exporter health.
    Exporters {
        #[arg(long)]
        data_dir: PathBuf,
        #[arg(long, value_enum, default_value = "table")]
        format: TableOrJson,
    },
    /// List stored alerts.
    Alerts {
        #[arg(long)]
        data_dir: PathBuf,
        /// Only alerts seen at or after this time (same forms as query --from, e.g. -2h).
        #[arg(long, allow_hyphen_values = true)]
        since: Option<String>,
        /// Only this kind: exfiltration, beaconing, scan, spike.
        #[arg(long)]
        kind: Option<String>,
        #[arg(long, value_enum, default_value = "table")]
        format: AlertFormat,
    },
    /// Detector learning state and counters.
    Detectors {
        #[arg(long)]
        data_dir: PathBuf,
        #[arg(long, value_enum, default_value = "table")]
        format: TableOrJson,
    },
    /// Send a test event to every [[forward]] destination and report per destination.
    ForwardTest {
        #[arg(long)]
        config: PathBuf,
    },
    /// Each SIEM destination's state: connection, last success/error, spool depth, drops.
    ForwardStatus {
        #[arg(long)]
        data_dir: PathBuf,
        #[arg(long, value_enum, default_value = "table")]
        format: TableOrJson,
    },
    /// Validate a configuration file.
    CheckConfig { file: PathBuf },
    /// Print version information.
    Version,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Bucket {
    #[value(name = "1m")]
    Minute,
    #[value(name = "1h")]
    Hour,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum AlertFormat {
    Table,
    Jsonl,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum TableOrJson {
    Table,
    Json,
}

fn load_config(path: Option<&Path>) -> Result<Config> {
    match path {
        Some(p) => Ok(Config::load(p)?),
        None => Ok(Config::default()),
    }
}

/// Where `run` keeps data when neither flag nor config says.
pub fn default_data_dir() -> PathBuf {
    if rustix::process::getuid().is_root() {
        PathBuf::from("/var/lib/flowwarden")
    } else {
        std::env::var_os("HOME")
            .map(|h| PathBuf::from(h).join(".local/share/flowwarden"))
            .unwrap_or_else(|| PathBuf::from("flowwarden-data"))
    }
}

pub fn main_with(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Run {
            config,
            data_dir,
            listen,
            demo,
        } => {
            let cfg = load_config(config.as_deref())?;
            let dir = data_dir.or_else(|| cfg.data_dir.clone()).unwrap_or_else(default_data_dir);
            run(cfg, dir, listen, demo)
        }
        Command::Ingest { config, data_dir, files } => {
            let cfg = load_config(config.as_deref())?;
            ingest(&cfg, &data_dir, &files)
        }
        Command::Query {
            data_dir,
            from,
            to,
            filter,
            format,
            top,
            by,
            limit,
            series,
        } => {
            let now = now_ms();
            let from = from.map(|t| parse_time(&t, now)).transpose()?.unwrap_or(0);
            let to = to.map(|t| parse_time(&t, now)).transpose()?.unwrap_or(u64::MAX);
            if from >= to {
                bail!("--from ({}) must be before --to ({})", rfc3339_ms(from), rfc3339_ms(to));
            }
            let filter = Filter::parse(&filter).map_err(|e| anyhow::anyhow!("{e}"))?;
            if !data_dir.is_dir() {
                bail!("{}: no such data directory", data_dir.display());
            }
            let reader = Reader::new(DataDir::new(&data_dir));
            let scope = Scope { from, to, filter };
            let stdout = std::io::stdout();
            let mut out = std::io::BufWriter::new(stdout.lock());
            if let Some(key) = top {
                let (rows, totals, overflow, _) = query::top(&reader, &scope, key, by, limit.unwrap_or(10) as usize)?;
                let label = match key {
                    TopKey::Src => "src",
                    TopKey::Dst => "dst",
                    TopKey::DstPort => "dst_port",
                    TopKey::Proto => "proto",
                    TopKey::Conversation => "conversation",
                };
                query::output::rows(format, label, &rows, &totals, &mut out)?;
                if overflow > 0 {
                    eprintln!("note: {overflow} flows had keys beyond the aggregation limit and are not ranked");
                }
            } else if let Some(b) = series {
                let ms = match b {
                    Bucket::Minute => 60_000,
                    Bucket::Hour => 3_600_000,
                };
                let (buckets, _) = query::series(&reader, &scope, ms)?;
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
                };
                query::output::rows(format, "start", &rows, &totals, &mut out)?;
            } else {
                query::list(&reader, &scope, format, limit, &mut out)?;
            }
            match out.flush() {
                Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
                r => Ok(r?),
            }
        }
        Command::Exporters { data_dir, format } => exporters(&data_dir, format),
        Command::Alerts {
            data_dir,
            since,
            kind,
            format,
        } => alerts(&data_dir, since.as_deref(), kind.as_deref(), format),
        Command::Detectors { data_dir, format } => detectors(&data_dir, format),
        Command::ForwardTest { config } => forward_test(&config),
        Command::ForwardStatus { data_dir, format } => forward_status(&data_dir, format),
        Command::CheckConfig { file } => {
            let cfg = Config::load(&file)?;
            println!(
                "{}: ok ({} listeners, storage budget {:?}, {} internal networks, {} exporter overrides, {} forwarding destinations)",
                file.display(),
                cfg.collector.listen.len(),
                cfg.storage.budget,
                cfg.network.internal.len(),
                cfg.exporters.len(),
                cfg.forward.len()
            );
            Ok(())
        }
        Command::Version => {
            println!(
                "flowwarden {} ({} {}, store schema {})",
                env!("CARGO_PKG_VERSION"),
                std::env::consts::ARCH,
                std::env::consts::OS,
                crate::store::schema::SCHEMA_VERSION
            );
            Ok(())
        }
    }
}

fn forward_test(config: &Path) -> Result<()> {
    let cfg = Config::load(config)?;
    if cfg.forward.is_empty() {
        bail!("{}: no [[forward]] destination configured", config.display());
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let results = rt.block_on(crate::forward::test_all(&cfg.forward));
    let mut failed = 0;
    for (name, r) in &results {
        match r {
            Ok(line) => println!("{name}: ok: {line}"),
            Err(e) => {
                failed += 1;
                println!("{name}: FAILED: {e}");
            }
        }
    }
    if failed > 0 {
        bail!("{failed} of {} destinations failed", results.len());
    }
    Ok(())
}

fn forward_status(data_dir: &Path, format: TableOrJson) -> Result<()> {
    if !data_dir.is_dir() {
        bail!("{}: no such data directory", data_dir.display());
    }
    let rows = crate::forward::status::collect(&DataDir::new(data_dir), now_ms())?;
    let mut out = std::io::stdout().lock();
    match format {
        TableOrJson::Json => writeln!(out, "{}", serde_json::json!({ "destinations": rows }))?,
        TableOrJson::Table => {
            if rows.is_empty() {
                writeln!(out, "no forwarding destinations in {}", data_dir.display())?;
            }
            for r in &rows {
                let s = |k: &str| match &r[k] {
                    serde_json::Value::Null => "-".to_string(),
                    serde_json::Value::String(v) => v.clone(),
                    v => v.to_string(),
                };
                writeln!(
                    out,
                    "{} ({} {} {} {}): {}",
                    s("name"),
                    s("transport"),
                    s("address"),
                    s("framing"),
                    s("format"),
                    s("state")
                )?;
                writeln!(
                    out,
                    "  queue {} entries, {} bytes of {}; oldest {} s; dropped {}",
                    s("queue_depth"),
                    s("queue_bytes"),
                    s("queue_max_bytes"),
                    s("oldest_entry_age_s"),
                    s("dropped")
                )?;
                writeln!(
                    out,
                    "  delivered {}, resent {}, heartbeats {}, gaps {}; last success {}",
                    s("delivered"),
                    s("resent"),
                    s("heartbeats"),
                    s("gaps"),
                    s("last_success")
                )?;
                writeln!(out, "  last error {} at {}", s("last_error"), s("last_error_at"))?;
                writeln!(
                    out,
                    "  {} {}; server certificate until {}; client certificate until {}",
                    s("tls_version"),
                    s("tls_cipher"),
                    s("server_cert_not_after"),
                    s("client_cert_not_after")
                )?;
            }
        }
    }
    Ok(())
}

fn run(cfg: Config, dir: PathBuf, listen: Vec<SocketAddr>, demo: bool) -> Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    rt.block_on(async move {
        let shutdown = async {
            let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(e) => {
                    tracing::error!("cannot install SIGTERM handler: {e}");
                    let _ = tokio::signal::ctrl_c().await;
                    return;
                }
            };
            tokio::select! {
                _ = term.recv() => tracing::info!("SIGTERM received"),
                _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received"),
            }
        };
        tracing::info!("data directory {}", dir.display());
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let mut demo_thread = None;
        let on_ready = |addrs: &[SocketAddr]| {
            if !demo {
                return;
            }
            match crate::demo::target(addrs).map(|to| crate::demo::spawn(to, stop.clone())) {
                Some(Ok(h)) => demo_thread = Some(h),
                Some(Err(e)) => tracing::error!("cannot start the demo sender: {e}"),
                None => tracing::error!("demo: no listener to send to"),
            }
        };
        let res = crate::collector::run(cfg, dir, listen, shutdown, on_ready).await;
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(h) = demo_thread {
            let _ = h.join();
        }
        res?;
        Ok(())
    })
}

fn ingest(cfg: &Config, data_dir: &Path, files: &[PathBuf]) -> Result<()> {
    let started = Instant::now();
    let mut pipeline = Pipeline::open(cfg, data_dir, Backpressure::Block)?;
    let mut capture = crate::capture::CaptureStats::default();
    let mut failed = Vec::new();
    for file in files {
        let res = crate::capture::read_capture(file, |d| pipeline.datagram(d.src, d.ts_ms, d.payload));
        match res {
            Ok(s) => {
                capture.frames += s.frames;
                capture.udp += s.udp;
                capture.not_ip += s.not_ip;
                capture.not_udp += s.not_udp;
                capture.fragments += s.fragments;
                capture.truncated += s.truncated;
                capture.unsupported_linktype += s.unsupported_linktype;
            }
            // What was read before the damage is kept; say what went wrong and go on.
            Err(e) => {
                eprintln!("error: {e}");
                failed.push(file.clone());
            }
        }
    }
    let report = pipeline.finish();
    print_ingest_summary(files.len(), &capture, &report, started.elapsed().as_secs_f64());
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

fn print_ingest_summary(files: usize, c: &crate::capture::CaptureStats, r: &PipelineReport, secs: f64) {
    use crate::units;
    let d = &r.decode;
    println!("files:              {files}");
    println!("frames:             {} ({} UDP datagrams)", c.frames, c.udp);
    println!("packets:            {} NetFlow/IPFIX datagrams", d.datagrams - d.not_netflow);
    println!("records:            {}", d.records);
    println!("flows stored:       {}", r.flows_committed);
    println!("flows evicted (oldest, budget): {}", r.flows_evicted);
    if r.flows_evicted_age > 0 {
        println!("flows evicted (age cap):        {}", r.flows_evicted_age);
    }
    if r.flows_before > 0 {
        println!("flows before:       {} (already in the data directory)", r.flows_before);
    }
    println!("flows kept:         {} (what query finds now)", r.flows_kept);
    println!(
        "store:              {} of {} budget ({}), {} segments",
        units::bytes(r.bytes_used),
        units::bytes(r.budget),
        units::percent(r.bytes_used, r.budget),
        r.segments
    );
    if r.capacity < r.budget {
        println!(
            "                    the data file system holds only {} for the store: kept within that",
            units::bytes(r.capacity)
        );
    }
    if d.time_clamped > 0 {
        println!(
            "times clamped:      {} flows dated implausibly far from their export time (see exporters)",
            d.time_clamped
        );
    }
    println!("drops:");
    println!("  not netflow:              {}", d.not_netflow);
    println!("  malformed datagrams:      {}", d.malformed);
    println!(
        "  sets without template:    {} (held {}, decoded later {}, expired {})",
        d.sets_without_template + d.pending_held,
        d.pending_held,
        d.pending_replayed,
        d.pending_dropped
    );
    println!("  trailing garbage cut:     {}", d.trailing_garbage);
    println!("  non-flow records:         {}", d.non_flow_records);
    println!("  capture not ip/udp:       {}", c.not_ip + c.not_udp);
    println!("  capture fragments:        {}", c.fragments);
    println!("  capture truncated:        {}", c.truncated);
    println!("  store queue:              {}", r.flows_dropped_queue);
    println!("  store errors:             {}", r.flows_dropped_store);
    println!("  older than age cap:       {}", r.flows_too_old);
    if r.files_damaged + r.rollup_failures + r.state_failures + r.rollup_rows_trimmed > 0 {
        println!("store trouble:");
        println!("  damaged files moved aside: {}", r.files_damaged);
        println!("  roll-up commits failed:    {}", r.rollup_failures);
        println!("  state commits failed:      {}", r.state_failures);
        println!(
            "  roll-up rows trimmed early: {} (their share of the budget was full)",
            r.rollup_rows_trimmed
        );
    }
    println!(
        "compressed blocks:  {} ({:.1} bytes per flow)",
        units::bytes(r.block_bytes),
        r.block_bytes as f64 / r.flows_committed.max(1) as f64
    );
    println!("segments evicted:   {}", r.segments_evicted);
    println!("templates known:    {}", r.templates);
    println!("elapsed:            {}", units::duration_s(secs));
    println!("records/s:          {:.0}", if secs > 0.0 { d.records as f64 / secs } else { 0.0 });
}

fn exporters(data_dir: &Path, format: TableOrJson) -> Result<()> {
    if !data_dir.is_dir() {
        bail!("{}: no such data directory", data_dir.display());
    }
    let reader = Reader::new(DataDir::new(data_dir));
    let list = reader.exporters()?;
    let counters = reader.counters()?;
    match format {
        TableOrJson::Json => println!("{}", serde_json::to_string_pretty(&list)?),
        TableOrJson::Table => {
            println!(
                "{:<46} {:>8} {:>10} {:>10} {:>6} {:>8} {:>8} {:>9} {:>9} {:>6} {:<24} {:>9}",
                "Exporter",
                "Versions",
                "Packets",
                "Records",
                "Tmpl",
                "NoTmpl",
                "SeqGaps",
                "LostRecs",
                "Malformed",
                "Rate",
                "Last seen",
                "Offset ms"
            );
            for e in &list {
                let versions: Vec<String> = [5u16, 7, 9, 10]
                    .iter()
                    .filter(|v| e.versions & (1 << **v) != 0)
                    .map(|v| v.to_string())
                    .collect();
                println!(
                    "{:<46} {:>8} {:>10} {:>10} {:>6} {:>8} {:>8} {:>9} {:>9} {:>6} {:<24} {:>9}",
                    e.exporter,
                    versions.join(","),
                    e.packets,
                    e.records,
                    e.templates + e.options_templates,
                    e.sets_without_template + e.pending_held,
                    e.sequence_gaps,
                    e.lost_records,
                    e.malformed,
                    e.sampling_rate,
                    rfc3339_ms(e.last_seen_ms),
                    e.clock_offset_ms
                );
            }
            if !counters.is_empty() {
                println!();
                for (k, v) in &counters {
                    match k.as_str() {
                        "collector.updated_ms" => println!("{k:<48} {}", rfc3339_ms(*v)),
                        _ => println!("{k:<48} {v}"),
                    }
                }
            }
        }
    }
    Ok(())
}

fn alerts(data_dir: &Path, since: Option<&str>, kind: Option<&str>, format: AlertFormat) -> Result<()> {
    let since = since.map(|t| parse_time(t, now_ms())).transpose()?.unwrap_or(0);
    let kind = match kind {
        Some(k) => Some(
            crate::alert::Kind::from_name(k).with_context(|| format!("--kind {k:?}: expected exfiltration, beaconing, scan or spike"))?,
        ),
        None => None,
    };
    if !data_dir.is_dir() {
        bail!("{}: no such data directory", data_dir.display());
    }
    let reader = Reader::new(DataDir::new(data_dir));
    let (stored, bad) = reader.alerts()?;
    let mut list: Vec<crate::alert::Alert> = stored
        .into_iter()
        .map(|s| s.alert)
        .filter(|a| a.last_seen_ms >= since && kind.is_none_or(|k| a.kind == k))
        .collect();
    list.sort_by(|a, b| (a.first_seen_ms, &a.id).cmp(&(b.first_seen_ms, &b.id)));
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    match format {
        AlertFormat::Jsonl => {
            for a in &list {
                writeln!(out, "{}", a.to_json())?;
            }
        }
        AlertFormat::Table => {
            writeln!(
                out,
                "{:<24} {:<12} {:>3} {:<39} {:<39} {:>5} {:>6}  Summary",
                "First seen", "Kind", "Sev", "Src", "Dst", "Port", "Count"
            )?;
            for a in &list {
                writeln!(
                    out,
                    "{:<24} {:<12} {:>3} {:<39} {:<39} {:>5} {:>6}  {}",
                    rfc3339_ms(a.first_seen_ms),
                    a.kind.as_str(),
                    a.severity,
                    a.src.to_string(),
                    a.dst.map(|d| d.to_string()).unwrap_or_else(|| "-".into()),
                    a.dst_port.map(|p| p.to_string()).unwrap_or_else(|| "-".into()),
                    a.count,
                    a.summary
                )?;
            }
            writeln!(out, "{} alerts", list.len())?;
        }
    }
    if bad > 0 {
        eprintln!("note: {bad} stored alerts could not be decoded and are not shown");
    }
    match out.flush() {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        r => Ok(r?),
    }
}

fn detectors(data_dir: &Path, format: TableOrJson) -> Result<()> {
    if !data_dir.is_dir() {
        bail!("{}: no such data directory", data_dir.display());
    }
    let reader = Reader::new(DataDir::new(data_dir));
    let status = reader.detect_status()?;
    let counters: Vec<(String, u64)> = reader.counters()?.into_iter().filter(|(k, _)| k.starts_with("detect.")).collect();
    match format {
        TableOrJson::Json => {
            let v = serde_json::json!({
                "status": status,
                "counters": counters.iter().cloned().collect::<std::collections::BTreeMap<String, u64>>(),
            });
            println!("{}", serde_json::to_string_pretty(&v)?);
        }
        TableOrJson::Table => {
            match &status {
                Some(s) => {
                    println!("event clock: {}", s.clock);
                    for d in &s.detectors {
                        println!("{:<14} {:<9} {}", d.name, d.state, d.detail);
                    }
                    for (k, v) in &s.tracked {
                        println!("tracked {k:<20} {v}");
                    }
                }
                None => println!("no detector state yet (no flows processed)"),
            }
            for (k, v) in &counters {
                println!("{k:<48} {v}");
            }
        }
    }
    Ok(())
}
