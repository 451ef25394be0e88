//! Live collection: UDP listeners feeding the pipeline.
//!
//! One tokio task per socket (defaults: 2055, 4739, 9995 on IPv4 and IPv6)
//! receives datagrams and passes them, stamped with the arrival time, over a
//! bounded channel to the decoder thread, which runs the shared [`Pipeline`].
//! A full channel drops the datagram and counts it; drops in the kernel's
//! socket buffer are read from /proc/net/udp{,6} and reported. On shutdown the
//! sockets close, the decoder drains what was received, and the store commits.

use crate::config::Config;
use crate::pipeline::{Backpressure, Pipeline, PipelineError, PipelineReport};
use crate::timefmt::now_ms;
use socket2::{Domain, Protocol, Socket, Type};
use std::future::Future;
use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{RecvTimeoutError, SyncSender, TrySendError, sync_channel};
use std::time::{Duration, Instant};
use thiserror::Error;

/// Datagrams queued between the sockets and the decoder.
const DATAGRAM_QUEUE: usize = 65_536;
/// How often partial batches and exporter health go to the store.
const FLUSH_EVERY: Duration = Duration::from_millis(500);
/// How often kernel drop counters are read.
const KERNEL_STATS_EVERY: Duration = Duration::from_secs(5);

#[derive(Debug, Error)]
pub enum CollectorError {
    #[error("cannot listen on udp {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("no listener could be opened")]
    NoListener,
    #[error(transparent)]
    Pipeline(#[from] PipelineError),
    #[error("cannot start the decoder thread: {0}")]
    Thread(std::io::Error),
}

/// Live counters of the socket side.
#[derive(Debug, Default)]
pub struct SocketCounters {
    pub datagrams: AtomicU64,
    pub queue_drops: AtomicU64,
    pub kernel_drops: AtomicU64,
}

struct Bound {
    socket: std::net::UdpSocket,
    addr: SocketAddr,
    inode: u64,
    rcvbuf: usize,
}

fn bind(addr: SocketAddr, rcvbuf: usize) -> std::io::Result<Bound> {
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    // SO_RCVBUFFORCE works for root beyond net.core.rmem_max; fall back to SO_RCVBUF.
    if rustix::net::sockopt::set_socket_recv_buffer_size_force(&socket, rcvbuf).is_err() {
        socket.set_recv_buffer_size(rcvbuf)?;
    }
    socket.bind(&addr.into())?;
    socket.set_nonblocking(true)?;
    let socket: std::net::UdpSocket = socket.into();
    let inode = rustix::fs::fstat(&socket).map(|s| s.st_ino).unwrap_or(0);
    let rcvbuf = rustix::net::sockopt::socket_recv_buffer_size(&socket).unwrap_or(0);
    let addr = socket.local_addr()?;
    Ok(Bound {
        socket,
        addr,
        inode,
        rcvbuf,
    })
}

/// Sum the `drops` column of /proc/net/udp and udp6 for our socket inodes.
pub fn kernel_drops(inodes: &[u64]) -> u64 {
    let mut total = 0;
    for path in ["/proc/net/udp", "/proc/net/udp6"] {
        let Ok(text) = std::fs::read_to_string(path) else { continue };
        for line in text.lines().skip(1) {
            let cols: Vec<&str> = line.split_whitespace().collect();
            if cols.len() < 13 {
                continue;
            }
            if let (Ok(inode), Ok(drops)) = (cols[9].parse::<u64>(), cols[12].parse::<u64>())
                && inodes.contains(&inode)
            {
                total += drops;
            }
        }
    }
    total
}

type Datagram = (SocketAddr, u64, Vec<u8>);

/// The socket side's counters under their state-file names.
fn socket_counters(c: &SocketCounters) -> Vec<(String, u64)> {
    vec![
        ("collector.datagrams".into(), c.datagrams.load(Ordering::Relaxed)),
        (
            "collector.datagrams_dropped_decoder_queue".into(),
            c.queue_drops.load(Ordering::Relaxed),
        ),
        ("collector.datagrams_dropped_kernel".into(), c.kernel_drops.load(Ordering::Relaxed)),
        ("collector.updated_ms".into(), now_ms()),
    ]
}

/// Run the collector until `shutdown` resolves; returns what was stored.
/// `on_ready` gets the bound addresses once the sockets listen (the demo sends there).
pub async fn run(
    cfg: Config,
    data_dir: PathBuf,
    listen: Vec<SocketAddr>,
    shutdown: impl Future<Output = ()>,
    on_ready: impl FnOnce(&[SocketAddr]),
) -> Result<PipelineReport, CollectorError> {
    // The data directory first: a second appliance on it is named before any socket is taken.
    let mut pipeline = Pipeline::open(&cfg, &data_dir, Backpressure::Drop)?;
    let rcvbuf = cfg.collector.receive_buffer.resolve(0).max(4096) as usize;
    let explicit = !listen.is_empty();
    let addrs = if explicit { listen } else { cfg.collector.listen.clone() };
    let mut bound = Vec::new();
    for addr in addrs {
        match bind(addr, rcvbuf) {
            Ok(b) => bound.push(b),
            // With the default listeners, a host without IPv6 still collects on IPv4.
            Err(e) if !explicit && addr.is_ipv6() => tracing::warn!("skipping udp {addr}: {e}"),
            Err(source) => return Err(CollectorError::Bind { addr, source }),
        }
    }
    if bound.is_empty() {
        return Err(CollectorError::NoListener);
    }
    let forward_shared = pipeline.forward.clone();
    let counters = Arc::new(SocketCounters::default());
    let inodes: Vec<u64> = bound.iter().map(|b| b.inode).collect();
    let (tx, rx) = sync_channel::<Datagram>(DATAGRAM_QUEUE);

    let dec_counters = counters.clone();
    let decoder = std::thread::Builder::new()
        .name("decoder".into())
        .spawn(move || {
            let mut last_flush = Instant::now();
            let mut last_kernel = Instant::now();
            let mut reported_drops = 0;
            loop {
                match rx.recv_timeout(Duration::from_millis(100)) {
                    Ok((src, arrival, data)) => pipeline.datagram(src, arrival, &data),
                    Err(RecvTimeoutError::Timeout) => {}
                    Err(RecvTimeoutError::Disconnected) => break,
                }
                if last_flush.elapsed() >= FLUSH_EVERY {
                    pipeline.flush();
                    pipeline.send_counters(socket_counters(&dec_counters));
                    last_flush = Instant::now();
                }
                if last_kernel.elapsed() >= KERNEL_STATS_EVERY {
                    let drops = kernel_drops(&inodes);
                    dec_counters.kernel_drops.store(drops, Ordering::Relaxed);
                    if drops > reported_drops {
                        tracing::warn!(
                            "kernel dropped {} datagrams in socket buffers (total {drops})",
                            drops - reported_drops
                        );
                        reported_drops = drops;
                    }
                    last_kernel = Instant::now();
                }
            }
            dec_counters.kernel_drops.store(kernel_drops(&inodes), Ordering::Relaxed);
            pipeline.send_counters(socket_counters(&dec_counters));
            pipeline.finish()
        })
        .map_err(CollectorError::Thread)?;

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut tasks = Vec::new();
    let mut summary = Vec::new();
    let addrs: Vec<SocketAddr> = bound.iter().map(|b| b.addr).collect();
    for b in bound {
        summary.push(format!("{} (rcvbuf {})", b.addr, b.rcvbuf));
        let sock = match tokio::net::UdpSocket::from_std(b.socket) {
            Ok(s) => s,
            Err(source) => return Err(CollectorError::Bind { addr: b.addr, source }),
        };
        tasks.push(tokio::spawn(receive(sock, tx.clone(), counters.clone(), stop_rx.clone())));
    }
    drop(tx);
    // SIEM senders: one per [[forward]] destination, fed from the spools.
    let senders = crate::forward::spawn_all(
        &cfg.forward,
        &crate::store::DataDir::new(&data_dir),
        forward_shared,
        stop_rx.clone(),
    );
    let ready = format!("flowwarden: ready, listening on udp {}", summary.join(", "));
    // A closed stdout (the reader of `run | head` gone) must not stop the appliance.
    let _ = writeln!(std::io::stdout(), "{ready}");
    tracing::info!("{ready}");
    on_ready(&addrs);
    shutdown.await;
    tracing::info!("shutting down: draining received datagrams");
    let _ = stop_tx.send(true);
    // Senders report their last state before the writer's final commit.
    for s in senders {
        let _ = tokio::time::timeout(Duration::from_secs(5), s).await;
    }
    for t in tasks {
        let _ = t.await;
    }
    let report = tokio::task::spawn_blocking(move || decoder.join())
        .await
        .ok()
        .and_then(|r| r.ok())
        .unwrap_or_default();
    let losses: Vec<String> = [
        (counters.queue_drops.load(Ordering::Relaxed), "datagrams in the decoder queue"),
        (
            counters.kernel_drops.load(Ordering::Relaxed),
            "datagrams in the kernel's socket buffers",
        ),
        (report.flows_dropped_queue, "flows in the store queue"),
        (report.flows_dropped_store, "flows the store could not write"),
    ]
    .iter()
    .filter(|(n, _)| *n > 0)
    .map(|(n, what)| format!("{n} {what}"))
    .collect();
    let stopped = format!(
        "flowwarden: stopped: {} datagrams; {} flows stored; {} flows evicted (oldest, budget); {} flows kept; lost: {}",
        counters.datagrams.load(Ordering::Relaxed),
        report.flows_committed,
        report.flows_evicted,
        report.flows_kept,
        if losses.is_empty() {
            "nothing".to_string()
        } else {
            losses.join(", ")
        }
    );
    let _ = writeln!(std::io::stdout(), "{stopped}");
    tracing::info!("{stopped}");
    Ok(report)
}

async fn receive(
    sock: tokio::net::UdpSocket,
    tx: SyncSender<Datagram>,
    counters: Arc<SocketCounters>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let mut buf = vec![0u8; 65_536];
    loop {
        tokio::select! {
            r = sock.recv_from(&mut buf) => match r {
                Ok((n, src)) => {
                    counters.datagrams.fetch_add(1, Ordering::Relaxed);
                    match tx.try_send((src, now_ms(), buf[..n].to_vec())) {
                        Ok(()) => {}
                        Err(TrySendError::Full(_)) => { counters.queue_drops.fetch_add(1, Ordering::Relaxed); }
                        Err(TrySendError::Disconnected(_)) => return,
                    }
                }
                Err(e) => tracing::warn!("udp receive error: {e}"),
            },
            _ = stop.changed() => {
                // Drain what the kernel already holds, then stop.
                while let Ok((n, src)) = sock.try_recv_from(&mut buf) {
                    counters.datagrams.fetch_add(1, Ordering::Relaxed);
                    if tx.try_send((src, now_ms(), buf[..n].to_vec())).is_err() {
                        counters.queue_drops.fetch_add(1, Ordering::Relaxed);
                    }
                }
                return;
            }
        }
    }
}
