//! flowgen command line: synthetic branch-office flows to a pcap or a UDP collector.

use anyhow::{Context, Result, bail};
use clap::Parser;
use flowgen::{Attack, Exporter, Office, Version, export_stream};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket};
use std::path::PathBuf;

#[derive(Debug, Parser)]
#[command(name = "flowgen", about = "Seeded synthetic NetFlow v5/v9/IPFIX from a branch-office model")]
struct Args {
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Workstations in the office.
    #[arg(long, default_value_t = 50)]
    hosts: usize,
    /// Start of the generated period, Unix seconds (default: Monday 2026-11-02 00:00 UTC).
    #[arg(long, default_value_t = 1_793_577_600)]
    start: u64,
    /// Length of the period: 30m, 6h, 7d ...
    #[arg(long, default_value = "1h")]
    duration: String,
    /// Export protocol: v5, v9, ipfix.
    #[arg(long, default_value = "ipfix")]
    version: Version,
    /// Inject attacks: exfil, beacon, hscan, vscan, flood (repeatable).
    #[arg(long = "attack")]
    attacks: Vec<String>,
    /// Flows per host per minute at peak activity.
    #[arg(long, default_value_t = 4.0)]
    intensity: f64,
    /// Stop after this many records (the model repeats day by day if needed).
    #[arg(long)]
    records: Option<u64>,
    /// Write a pcap here.
    #[arg(long, conflicts_with = "udp")]
    pcap: Option<PathBuf>,
    /// Send to this collector.
    #[arg(long)]
    udp: Option<SocketAddr>,
    /// Records per second when sending (0 = as fast as possible).
    #[arg(long, default_value_t = 0)]
    rate: u64,
    /// v9/IPFIX: templates every N datagrams and in the first; 0 = never (data only).
    #[arg(long, default_value_t = 20)]
    template_every: u32,
    /// UDP source port (default: any), so a later run is the same exporter.
    #[arg(long, default_value_t = 0)]
    source_port: u16,
    /// Evaluation scenario (nine days): benign, attacks. Replaces --duration and --attack.
    #[arg(long, conflicts_with = "attacks")]
    scenario: Option<String>,
    /// Write the scenario's ground truth here (one JSON object per attack).
    #[arg(long, requires = "scenario")]
    truth: Option<PathBuf>,
}

fn span_ms(s: &str) -> Result<u64> {
    let split = s
        .find(|c: char| !c.is_ascii_digit())
        .context("duration needs a unit (s, m, h, d)")?;
    let (n, u) = s.split_at(split);
    let n: u64 = n.parse().context("duration needs a number")?;
    Ok(n * match u {
        "s" => 1000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => bail!("unknown duration unit {u:?}"),
    })
}

fn main() -> Result<()> {
    let a = Args::parse();
    let start = a.start * 1000;
    let mut dur = span_ms(&a.duration)?;
    let mut office = Office::new(a.seed, a.hosts);
    if let Some(name) = &a.scenario {
        let s = flowgen::scenario::build(name, a.seed, start, a.hosts)
            .with_context(|| format!("unknown scenario {name:?} ({})", flowgen::scenario::NAMES.join(", ")))?;
        office = s.office;
        dur = s.duration_ms;
        if let Some(path) = &a.truth {
            let text: String = s.truth.iter().map(|t| t.to_json() + "\n").collect();
            std::fs::write(path, text).with_context(|| format!("cannot write {}", path.display()))?;
        }
    }
    office.intensity = a.intensity;
    for name in &a.attacks {
        let mid = start + dur / 2;
        office.attacks.push(match name.as_str() {
            "exfil" => Attack::Exfil {
                host: 3,
                dst: Ipv4Addr::new(185, 220, 101, 9),
                at_ms: mid,
                bytes: 2_000_000_000,
                duration_ms: 1_200_000,
            },
            "beacon" => Attack::Beacon {
                host: 5,
                c2: Ipv4Addr::new(185, 100, 87, 5),
                port: 443,
                period_ms: 300_000,
                jitter: 0.15,
                miss: 0.05,
                from_ms: start,
                to_ms: start + dur,
            },
            "hscan" => Attack::HorizontalScan {
                src: Ipv4Addr::new(10, 20, 1, 99),
                proto: 6,
                port: 445,
                targets: 250,
                at_ms: mid,
                spread_ms: 120_000,
            },
            "vscan" => Attack::VerticalScan {
                src: Ipv4Addr::new(203, 0, 113, 66),
                dst_host: 1,
                ports: 1024,
                at_ms: mid,
                spread_ms: 60_000,
            },
            "flood" => Attack::Flood {
                victim: 2,
                sources: 200,
                at_ms: mid,
                duration_ms: 600_000,
                pps: 50_000,
            },
            other => bail!("unknown attack {other:?} (exfil, beacon, hscan, vscan, flood)"),
        });
    }
    let mut exporter = Exporter::new(a.version, start.saturating_sub(3_600_000));
    exporter.template_every = a.template_every;
    let mut stream = Vec::new();
    let mut produced = 0u64;
    // Ten minutes of model time at a time, so a record cap stops generation early;
    // with a cap the model runs past --duration until it is reached.
    const WINDOW: u64 = 600_000;
    let mut from = start;
    loop {
        let to = if a.records.is_some() {
            from + WINDOW
        } else {
            (from + WINDOW).min(start + dur)
        };
        let mut flows = office.flows(from, to);
        if let Some(limit) = a.records {
            flows.truncate((limit - produced) as usize);
        }
        produced += flows.len() as u64;
        stream.extend(export_stream(&mut exporter, &flows, 1000));
        from = to;
        let done = match a.records {
            Some(limit) => produced >= limit || from >= start + 366 * 86_400_000,
            None => from >= start + dur,
        };
        if done {
            break;
        }
    }
    let records: u64 = stream.iter().map(|s| s.1 as u64).sum();
    if let Some(path) = a.pcap {
        let file = std::fs::File::create(&path).with_context(|| format!("cannot create {}", path.display()))?;
        let mut w = flowgen::pcap::PcapWriter::new(std::io::BufWriter::new(file))?;
        let src = SocketAddrV4::new(Ipv4Addr::new(10, 20, 0, 1), 50_000);
        let dst = SocketAddrV4::new(Ipv4Addr::new(10, 20, 0, 5), 2055);
        for (t, _, d) in &stream {
            w.datagram(*t, src, dst, d)?;
        }
        w.finish()?;
        println!("{} datagrams, {records} records written to {}", stream.len(), path.display());
    } else if let Some(target) = a.udp {
        let bind: SocketAddr = if target.is_ipv4() {
            SocketAddr::new(Ipv4Addr::UNSPECIFIED.into(), a.source_port)
        } else {
            SocketAddr::new(std::net::Ipv6Addr::UNSPECIFIED.into(), a.source_port)
        };
        let socket = UdpSocket::bind(bind)?;
        let dgrams: Vec<(u32, Vec<u8>)> = stream.into_iter().map(|(_, n, d)| (n, d)).collect();
        let rep = flowgen::send::paced(&socket, target, &dgrams, a.rate);
        println!(
            "sent {} datagrams, {} records in {:.3} s ({:.0} records/s, {} send errors)",
            rep.datagrams,
            rep.records,
            rep.elapsed.as_secs_f64(),
            rep.records as f64 / rep.elapsed.as_secs_f64().max(1e-9),
            rep.errors
        );
    } else {
        bail!("say where to: --pcap FILE or --udp ADDR:PORT");
    }
    Ok(())
}
