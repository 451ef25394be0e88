//! Connections to a destination: name resolution in Rust (hickory; a static
//! glibc binary has no getaddrinfo), TCP with a timeout, the TLS handshake,
//! UDP; writing framed messages and confirming them.
//!
//! A write that returned is not yet a delivery: a TLS 1.3 server that rejects
//! the client certificate says so only after the handshake, and a receiver that
//! died leaves our bytes in the kernel. So every batch is followed by a read
//! probe ([`Conn::confirm`]): an alert, a close or a reset within the
//! confirmation window means "not delivered" (the batch stays spooled and is
//! sent again, marked); silence means the receiver took it. UDP cannot be
//! confirmed: a datagram handed to the kernel counts as sent.

use super::error::ForwardError;
use super::settings::{ForwardConfig, Transport};
use rustls::ClientConfig;
use rustls_pki_types::ServerName;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};

enum Stream {
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
    Tcp(TcpStream),
    Udp(UdpSocket),
}

/// An open connection.
pub struct Conn {
    stream: Stream,
    pub peer: SocketAddr,
    pub tls_version: Option<String>,
    pub tls_cipher: Option<String>,
    pub server_cert_not_after_ms: Option<u64>,
    /// How long silence must last after a write before it counts as delivered.
    pub confirm_wait: Duration,
}

/// Resolve `host` to addresses: numeric as is, `localhost` to loopback, else
/// /etc/hosts and the DNS servers of /etc/resolv.conf (hickory).
pub async fn resolve(host: &str, port: u16) -> Result<Vec<SocketAddr>, ForwardError> {
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Ok(vec![SocketAddr::new(ip, port)]);
    }
    if host.eq_ignore_ascii_case("localhost") {
        return Ok(vec![
            SocketAddr::from(([127, 0, 0, 1], port)),
            SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, port)),
        ]);
    }
    let resolver = hickory_resolver::Resolver::builder_tokio()
        .map_err(|e| {
            ForwardError::Resolve(format!(
                "cannot resolve {host:?}: no usable resolver configuration (/etc/resolv.conf): {e}"
            ))
        })?
        .build();
    let ips = resolver
        .lookup_ip(host)
        .await
        .map_err(|e| ForwardError::Resolve(resolve_failure(host, &e)))?;
    let out: Vec<SocketAddr> = ips.iter().map(|ip| SocketAddr::new(ip, port)).collect();
    if out.is_empty() {
        return Err(ForwardError::Resolve(format!("cannot resolve {host:?}: no addresses")));
    }
    Ok(out)
}

/// A failed lookup in words (hickory's messages print its query structs).
fn resolve_failure(host: &str, e: &hickory_resolver::ResolveError) -> String {
    if e.is_nx_domain() {
        return format!("cannot resolve {host:?}: no such name (the DNS servers of /etc/resolv.conf say it does not exist)");
    }
    if e.is_no_records_found() {
        return format!("cannot resolve {host:?}: the name has no IPv4 or IPv6 address (no A or AAAA record)");
    }
    let text = e.to_string();
    if text.contains("timed out") || text.contains("timeout") {
        return format!("cannot resolve {host:?}: the DNS servers of /etc/resolv.conf did not answer");
    }
    // Whatever else: the first clause, without the structs that follow it.
    let first = text.split(" for Query").next().unwrap_or(&text);
    format!("cannot resolve {host:?}: {first}")
}

/// How long a UDP send waits for the receiving host's ICMP port unreachable.
const UDP_CONFIRM_WAIT: Duration = Duration::from_millis(200);
/// A write that the receiver does not take within this long fails the session
/// (which reconnects) instead of hanging the sender: the watchdog counts a
/// sender stuck in a write as hung.
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);

fn io_reason(e: &std::io::Error, f: &ForwardConfig) -> String {
    if let Some(t) = e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) {
        return super::tls::explain(t, f);
    }
    match e.kind() {
        std::io::ErrorKind::ConnectionRefused => "connection refused (is the receiver running and listening?)".into(),
        std::io::ErrorKind::ConnectionReset => "connection reset by the receiver".into(),
        std::io::ErrorKind::BrokenPipe => "the receiver closed the connection".into(),
        std::io::ErrorKind::UnexpectedEof => "the receiver closed the connection without a TLS close_notify".into(),
        _ => e.to_string(),
    }
}

/// Open a connection to the destination (first address that works).
pub async fn connect(f: &ForwardConfig, tls: Option<&(Arc<ClientConfig>, ServerName<'static>)>) -> Result<Conn, ForwardError> {
    let (host, port) = f.host_port()?;
    let addrs = resolve(&host, port).await?;
    let limit = Duration::from_millis(f.connect_timeout.ms());
    let mut last = String::new();
    for addr in addrs {
        match connect_one(f, tls, addr, limit).await {
            Ok(c) => return Ok(c),
            Err(e) => last = format!("{addr}: {e}"),
        }
    }
    Err(ForwardError::Connect(last))
}

async fn connect_one(
    f: &ForwardConfig,
    tls: Option<&(Arc<ClientConfig>, ServerName<'static>)>,
    addr: SocketAddr,
    limit: Duration,
) -> Result<Conn, ForwardError> {
    connect_to(f, tls, addr, limit).await.map_err(ForwardError::Connect)
}

async fn connect_to(
    f: &ForwardConfig,
    tls: Option<&(Arc<ClientConfig>, ServerName<'static>)>,
    addr: SocketAddr,
    limit: Duration,
) -> Result<Conn, String> {
    let t0 = Instant::now();
    if f.transport == Transport::Udp {
        let local: SocketAddr = if addr.is_ipv4() {
            SocketAddr::from(([0, 0, 0, 0], 0))
        } else {
            SocketAddr::from((std::net::Ipv6Addr::UNSPECIFIED, 0))
        };
        let s = UdpSocket::bind(local).await.map_err(|e| format!("udp socket: {e}"))?;
        s.connect(addr).await.map_err(|e| format!("udp connect: {e}"))?;
        return Ok(Conn {
            stream: Stream::Udp(s),
            peer: addr,
            tls_version: None,
            tls_cipher: None,
            server_cert_not_after_ms: None,
            // Long enough for an ICMP port unreachable from the receiving host to come back.
            confirm_wait: UDP_CONFIRM_WAIT,
        });
    }
    let tcp = tokio::time::timeout(limit, TcpStream::connect(addr))
        .await
        .map_err(|_| format!("no TCP connection within {} ms", limit.as_millis()))?
        .map_err(|e| io_reason(&e, f))?;
    let _ = tcp.set_nodelay(true);
    let mut conn = match (f.transport, tls) {
        (Transport::Tls, Some((cfg, name))) => {
            let connector = tokio_rustls::TlsConnector::from(cfg.clone());
            let left = limit.saturating_sub(t0.elapsed());
            let s = tokio::time::timeout(left, connector.connect(name.clone(), tcp))
                .await
                .map_err(|_| format!("no TLS handshake within {} ms", limit.as_millis()))?
                .map_err(|e| format!("TLS handshake failed: {}", io_reason(&e, f)))?;
            let (_, session) = s.get_ref();
            let tls_version = session.protocol_version().map(|v| format!("{v:?}"));
            let tls_cipher = session.negotiated_cipher_suite().map(|c| format!("{:?}", c.suite()));
            let not_after = session
                .peer_certificates()
                .and_then(|c| c.first())
                .and_then(|c| super::tls::validity(c))
                .map(|v| v.1);
            Conn {
                stream: Stream::Tls(Box::new(s)),
                peer: addr,
                tls_version,
                tls_cipher,
                server_cert_not_after_ms: not_after,
                confirm_wait: Duration::ZERO,
            }
        }
        _ => Conn {
            stream: Stream::Tcp(tcp),
            peer: addr,
            tls_version: None,
            tls_cipher: None,
            server_cert_not_after_ms: None,
            confirm_wait: Duration::ZERO,
        },
    };
    // A few round trips of this connection, at least 200 ms, at most 3 s.
    conn.confirm_wait = (t0.elapsed() * 2).clamp(Duration::from_millis(200), Duration::from_secs(3));
    // A server that rejects our certificate after a TLS 1.3 handshake says so now.
    if let Err(e) = conn.confirm(f).await {
        let hint = match (&conn.stream, &f.client_cert_file) {
            (Stream::Tls(_), None) => " - it probably requires a client certificate (set client_cert_file and client_key_file)".to_string(),
            (Stream::Tls(_), Some(c)) => format!(" - it probably rejected the client certificate {}", c.display()),
            _ => String::new(),
        };
        return Err(format!("the receiver ended the session right after connecting: {e}{hint}"));
    }
    Ok(conn)
}

impl Conn {
    /// Write framed bytes (stream) or datagrams (udp).
    pub async fn send(&mut self, f: &ForwardConfig, stream_bytes: &[u8], datagrams: &[Vec<u8>]) -> Result<(), ForwardError> {
        match tokio::time::timeout(WRITE_TIMEOUT, self.write(f, stream_bytes, datagrams)).await {
            Ok(r) => r,
            Err(_) => Err(ForwardError::Delivery(format!(
                "write failed: timed out after {} s: the receiver stopped reading",
                WRITE_TIMEOUT.as_secs()
            ))),
        }
    }

    async fn write(&mut self, f: &ForwardConfig, stream_bytes: &[u8], datagrams: &[Vec<u8>]) -> Result<(), ForwardError> {
        let res = match &mut self.stream {
            Stream::Tls(s) => match s.write_all(stream_bytes).await {
                Ok(()) => s.flush().await,
                Err(e) => Err(e),
            },
            Stream::Tcp(s) => s.write_all(stream_bytes).await,
            Stream::Udp(s) => {
                let mut r = Ok(());
                for d in datagrams {
                    if let Err(e) = s.send(d).await {
                        r = Err(e);
                        break;
                    }
                }
                r
            }
        };
        res.map_err(|e| ForwardError::Delivery(format!("write failed: {}", io_reason(&e, f))))
    }

    /// Read for the confirmation window: silence = delivered. Over UDP the
    /// only answer possible is the receiving host's ICMP port unreachable,
    /// which a connected socket reports as a refused read.
    pub async fn confirm(&mut self, f: &ForwardConfig) -> Result<(), ForwardError> {
        self.confirmed(f).await.map_err(ForwardError::Delivery)
    }

    async fn confirmed(&mut self, f: &ForwardConfig) -> Result<(), String> {
        let wait = self.confirm_wait;
        let peer = self.peer;
        if let Stream::Udp(s) = &self.stream {
            // The error an ICMP message leaves on the socket (SO_ERROR); a
            // pending recv is not woken by it, so look for it while waiting.
            let t0 = Instant::now();
            loop {
                match s.take_error() {
                    Ok(Some(e)) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                        return Err(format!("{peer} answered ICMP port unreachable: nothing listens on that UDP port"));
                    }
                    Ok(Some(e)) => return Err(format!("udp: {e}")),
                    Ok(None) | Err(_) => {}
                }
                if t0.elapsed() >= wait {
                    return Ok(());
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
        let mut buf = [0u8; 512];
        let read = async {
            match &mut self.stream {
                Stream::Tls(s) => s.read(&mut buf).await,
                Stream::Tcp(s) => s.read(&mut buf).await,
                Stream::Udp(_) => std::future::pending().await,
            }
        };
        match tokio::time::timeout(wait, read).await {
            Err(_) => Ok(()),
            Ok(Ok(0)) => Err("the receiver closed the connection (nothing written since its last confirmation counts as delivered)".into()),
            // Syslog receivers do not talk; whatever it was, the connection is alive.
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(format!("connection failed: {}", io_reason(&e, f))),
        }
    }

    /// Resolves when the receiver closes the connection or it fails (idle watch).
    pub async fn closed(&mut self, f: &ForwardConfig) -> ForwardError {
        ForwardError::Delivery(self.closed_why(f).await)
    }

    async fn closed_why(&mut self, f: &ForwardConfig) -> String {
        let mut buf = [0u8; 512];
        loop {
            let r = match &mut self.stream {
                Stream::Tls(s) => s.read(&mut buf).await,
                Stream::Tcp(s) => s.read(&mut buf).await,
                Stream::Udp(_) => std::future::pending().await,
            };
            match r {
                Ok(0) => return "the receiver closed the connection".into(),
                Ok(_) => continue,
                Err(e) => return format!("connection failed: {}", io_reason(&e, f)),
            }
        }
    }

    /// Close politely (TLS close_notify), briefly.
    pub async fn close(mut self) {
        let _ = tokio::time::timeout(Duration::from_secs(2), async {
            match &mut self.stream {
                Stream::Tls(s) => s.shutdown().await,
                Stream::Tcp(s) => s.shutdown().await,
                Stream::Udp(_) => Ok(()),
            }
        })
        .await;
    }
}
