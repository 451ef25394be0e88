//! The page's sockets: HTTPS listeners on `[web] listen` (a TLS handshake,
//! then HTTP/1.1 into the router) and the optional plain-HTTP listener on
//! `[web] redirect_listen` that only redirects to HTTPS.
//!
//! Each connection is a task. Their number, the handshake's time and the time
//! to send a request's headers are bounded; a connection refused for any of
//! these is closed without an answer and counted
//! (`flowwarden_web_connections_refused_total{reason}`). Plain HTTP sent to an
//! HTTPS port fails the handshake and gets no page.

use super::WebError;
use crate::metrics::{Registry, defs};
use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tower::ServiceExt;

/// Connections served at once (HTTPS and redirect together).
pub const MAX_CONNECTIONS: usize = 256;
/// Time a client has to finish the TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Time a client has to send a request's headers (slowloris).
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest request head (request line and headers) read.
const MAX_HEAD: usize = 16 * 1024;

/// The peer of a request's connection, put into each request's extensions.
#[derive(Debug, Clone, Copy)]
pub struct Peer(pub SocketAddr);

/// Bind a TCP listener (IPv6 addresses are IPv6 only, so `0.0.0.0:443` and
/// `[::]:443` can both be bound, as the defaults do).
pub fn bind(addr: SocketAddr) -> Result<TcpListener, WebError> {
    let err = |source| WebError::Bind { addr, source };
    let sock = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM,
        Some(socket2::Protocol::TCP),
    )
    .map_err(err)?;
    sock.set_reuse_address(true).map_err(err)?;
    if addr.is_ipv6() {
        sock.set_only_v6(true).map_err(err)?;
    }
    sock.bind(&addr.into()).map_err(err)?;
    sock.listen(128).map_err(err)?;
    sock.set_nonblocking(true).map_err(err)?;
    TcpListener::from_std(sock.into()).map_err(err)
}

/// What every connection task shares.
#[derive(Clone)]
pub struct Shared {
    pub slots: Arc<Semaphore>,
    pub metrics: Arc<Registry>,
}

impl Shared {
    pub fn new(metrics: Arc<Registry>) -> Shared {
        Shared {
            slots: Arc::new(Semaphore::new(MAX_CONNECTIONS)),
            metrics,
        }
    }

    fn refused(&self, reason: &str) {
        self.metrics.counter(&defs::WEB_CONNECTIONS_REFUSED, &[reason]).inc();
    }
}

/// Serve HTTP/1.1 on one accepted stream with `app`, headers bounded in time and size.
async fn serve_http<S>(io: S, peer: SocketAddr, app: Router, shared: &Shared)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let metrics = shared.metrics.clone();
    let svc = hyper::service::service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
        req.extensions_mut().insert(Peer(peer));
        let app = app.clone();
        let metrics = metrics.clone();
        async move {
            let res = app.oneshot(req.map(axum::body::Body::new)).await?;
            let class = match res.status().as_u16() {
                200..=299 => "2xx",
                300..=399 => "3xx",
                400..=499 => "4xx",
                _ => "5xx",
            };
            metrics.counter(&defs::WEB_REQUESTS, &[class]).inc();
            Ok::<_, Infallible>(res)
        }
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT)
        .max_buf_size(MAX_HEAD)
        .serve_connection(TokioIo::new(io), svc);
    if let Err(e) = conn.await {
        if e.is_timeout() {
            shared.refused("timeout");
        }
        tracing::debug!("web: connection from {peer}: {e}");
    }
}

/// Accept on `listener` until `stop`; each connection that gets a slot is
/// served by `serve` in its own task (the slot is held until it ends).
async fn accept_each<F, Fut>(listener: TcpListener, shared: Shared, mut stop: watch::Receiver<bool>, serve: F)
where
    F: Fn(tokio::net::TcpStream, SocketAddr, Shared) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    loop {
        let (tcp, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    // Out of descriptors and the like: wait a little rather than spin.
                    tracing::warn!("web: accept: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = stop.changed() => break,
        };
        let Ok(permit) = shared.slots.clone().try_acquire_owned() else {
            shared.refused("limit");
            continue;
        };
        let fut = serve(tcp, peer, shared.clone());
        tokio::spawn(async move {
            let _permit = permit;
            fut.await;
        });
    }
}

/// Accept on `listener` until `stop`: TLS, then the router.
pub async fn serve_https(listener: TcpListener, tls: Arc<rustls::ServerConfig>, app: Router, shared: Shared, stop: watch::Receiver<bool>) {
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    accept_each(listener, shared, stop, move |tcp, peer, shared| {
        let (acceptor, app) = (acceptor.clone(), app.clone());
        async move {
            match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(tls)) => serve_http(tls, peer, app, &shared).await,
                Ok(Err(e)) => {
                    shared.refused("handshake");
                    tracing::debug!("web: TLS handshake with {peer}: {e}");
                }
                Err(_) => shared.refused("timeout"),
            }
        }
    })
    .await;
}

/// Accept plain HTTP on `listener` until `stop` and answer every request with
/// a redirect to the same path on HTTPS port `https_port`.
pub async fn serve_redirect(listener: TcpListener, https_port: u16, shared: Shared, stop: watch::Receiver<bool>) {
    let local = listener.local_addr().ok().map(|a| a.ip());
    let app = Router::new().fallback(move |req: axum::extract::Request| async move { redirect(&req, local, https_port) });
    accept_each(listener, shared, stop, move |tcp, peer, shared| {
        let app = app.clone();
        async move { serve_http(tcp, peer, app, &shared).await }
    })
    .await;
}

/// 308 to `https://HOST[:PORT]/path?query`; the host is the request's own when
/// it is a plain host name or address, else the listener's address.
fn redirect(req: &axum::extract::Request, local: Option<IpAddr>, https_port: u16) -> axum::response::Response {
    use axum::http::{StatusCode, header};
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .and_then(host_only)
        .map(str::to_string)
        .or_else(|| {
            local.map(|ip| match ip {
                IpAddr::V6(v6) => format!("[{v6}]"),
                IpAddr::V4(v4) => v4.to_string(),
            })
        })
        .unwrap_or_else(|| "localhost".into());
    let port = if https_port == 443 {
        String::new()
    } else {
        format!(":{https_port}")
    };
    let path = req.uri().path_and_query().map(|p| p.as_str()).unwrap_or("/");
    // An absolute-form or `//host` path must not make this an open redirect.
    let path = if path.starts_with('/') && !path.starts_with("//") {
        path
    } else {
        "/"
    };
    let location = format!("https://{host}{port}{path}");
    axum::response::Response::builder()
        .status(StatusCode::PERMANENT_REDIRECT)
        .header(header::LOCATION, location)
        .header(header::CONTENT_LENGTH, "0")
        .body(axum::body::Body::empty())
        .unwrap_or_default()
}

/// The host part of a Host header, if it is a plain DNS name or address literal.
fn host_only(h: &str) -> Option<&str> {
    let host = if let Some(rest) = h.strip_prefix('[') {
        let end = rest.find(']')?;
        &h[..end + 2]
    } else {
        h.split(':').next()?
    };
    let ok = !host.is_empty()
        && host.len() <= 253
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'[' | b']' | b':'));
    ok.then_some(host)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(host: Option<&str>, path: &str) -> axum::extract::Request {
        let mut b = axum::http::Request::builder().uri(path);
        if let Some(h) = host {
            b = b.header("host", h);
        }
        b.body(axum::body::Body::empty()).unwrap_or_default()
    }

    fn location(r: &axum::response::Response) -> &str {
        r.headers().get("location").and_then(|v| v.to_str().ok()).unwrap_or("")
    }

    #[test]
    fn redirects_keep_host_and_path_but_never_leave_the_box() {
        let local = Some(IpAddr::from([192, 0, 2, 7]));
        let r = redirect(&req(Some("box.branch:80"), "/alerts?kind=scan"), local, 443);
        assert_eq!(r.status(), 308);
        assert_eq!(location(&r), "https://box.branch/alerts?kind=scan");
        assert_eq!(
            location(&redirect(&req(Some("[fd00::1]:80"), "/"), local, 8443)),
            "https://[fd00::1]:8443/"
        );
        // A hostile Host header falls back to the listener's address.
        assert_eq!(
            location(&redirect(&req(Some("evil.example/x?"), "/"), local, 443)),
            "https://192.0.2.7/"
        );
        assert_eq!(location(&redirect(&req(None, "/"), local, 443)), "https://192.0.2.7/");
    }
}
