//! Live collection: the UDP listeners (stage 1 of the data flow, its sockets).
//!
//! One tokio task per socket (defaults: 2055, 4739, 9995 on IPv4 and IPv6)
//! receives datagrams and passes them, stamped with the arrival time, over a
//! bounded channel that the topology ([`crate::pipeline::run_live`]) connects
//! to the decoder thread. A full channel drops the datagram and counts it;
//! drops in the kernel's socket buffer are read from /proc/net/udp{,6}. On
//! shutdown the sockets drain what the kernel holds and close.

use crate::timefmt::now_ms;
use socket2::{Domain, Protocol, Socket, Type};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{SyncSender, TrySendError};
use thiserror::Error;

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
}

/// Live counters of the socket side.
#[derive(Debug, Default)]
pub struct SocketCounters {
    pub datagrams: AtomicU64,
    pub queue_drops: AtomicU64,
    pub kernel_drops: AtomicU64,
}

/// A bound listener.
pub struct Bound {
    socket: std::net::UdpSocket,
    pub addr: SocketAddr,
    /// The socket's inode (to find its drops in /proc/net/udp).
    pub inode: u64,
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

/// A received datagram: sender, arrival time (UTC ms), payload.
pub type Datagram = (SocketAddr, u64, Vec<u8>);

/// Bind every listener (a host without IPv6 still collects on IPv4 with the
/// default listeners; an explicit listener that fails is an error).
pub fn bind_all(addrs: &[SocketAddr], explicit: bool, rcvbuf: usize) -> Result<Vec<Bound>, CollectorError> {
    let mut bound = Vec::new();
    for &addr in addrs {
        match bind(addr, rcvbuf) {
            Ok(b) => bound.push(b),
            Err(e) if !explicit && addr.is_ipv6() => tracing::warn!("skipping udp {addr}: {e}"),
            Err(source) => return Err(CollectorError::Bind { addr, source }),
        }
    }
    if bound.is_empty() {
        return Err(CollectorError::NoListener);
    }
    Ok(bound)
}

/// Start one receiving task per socket on the current tokio runtime; each
/// stops (after draining what the kernel holds) when `stop` changes.
/// Returns the tasks and "ADDR (rcvbuf N)" per socket for the ready line.
pub fn spawn_receivers(
    bound: Vec<Bound>,
    tx: SyncSender<Datagram>,
    counters: Arc<SocketCounters>,
    stop: tokio::sync::watch::Receiver<bool>,
) -> Result<(Vec<tokio::task::JoinHandle<()>>, Vec<String>), CollectorError> {
    let mut tasks = Vec::new();
    let mut summary = Vec::new();
    for b in bound {
        summary.push(format!("{} (rcvbuf {})", b.addr, b.rcvbuf));
        let sock = match tokio::net::UdpSocket::from_std(b.socket) {
            Ok(s) => s,
            Err(source) => return Err(CollectorError::Bind { addr: b.addr, source }),
        };
        tasks.push(tokio::spawn(receive(sock, tx.clone(), counters.clone(), stop.clone())));
    }
    Ok((tasks, summary))
}

async fn receive(
    sock: tokio::net::UdpSocket,
    tx: SyncSender<Datagram>,
    counters: Arc<SocketCounters>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let mut buf = vec![0u8; 65_536];
    let name = sock.local_addr().map(|a| a.to_string()).unwrap_or_default();
    let stage = crate::progress::global().stage(format!("collector {name}"));
    loop {
        tokio::select! {
            r = sock.recv_from(&mut buf) => match r {
                Ok((n, src)) => {
                    let _unit = stage.busy();
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
