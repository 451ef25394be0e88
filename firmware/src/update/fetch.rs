//! Downloads a bundle over plain HTTP into a file (the appliance's side of
//! `flowwarden update URL`). The bundle's signature, not the transport, is what
//! makes it trusted, so http:// is enough; the body is streamed to disk with a
//! size limit and read timeouts. Hosts are numeric: the image resolves no names.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::path::Path;
use std::time::Duration;

/// `http://HOST[:PORT]/PATH` split into the address and the request path.
pub fn parse_url(url: &str) -> Result<(SocketAddr, String, String), String> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| format!("{url:?}: only http:// URLs are fetched (the bundle's signature protects it), or give a file path"))?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], rest[i..].to_string()),
        None => (rest, "/".to_string()),
    };
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        let (h, after) = v6.split_once(']').ok_or_else(|| format!("{url:?}: unclosed [ in the host"))?;
        (h, after.strip_prefix(':'))
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (authority, None),
        }
    };
    let port: u16 = match port {
        Some(p) => p
            .parse()
            .map_err(|_| format!("{url:?}: port {p:?} is not a number from 1 to 65535"))?,
        None => 80,
    };
    let ip: IpAddr = host
        .parse()
        .map_err(|_| format!("{url:?}: host {host:?} is not a numeric address (the appliance resolves no names; use the server's IP)"))?;
    if path.contains(['\r', '\n', ' ']) {
        return Err(format!("{url:?}: the path has spaces or line breaks"));
    }
    Ok((SocketAddr::new(ip, port), authority.to_string(), path))
}

/// GETs `url` into `dest` (created or truncated); at most `limit` bytes. Returns the bytes written.
pub fn download(url: &str, dest: &Path, limit: u64, timeout: Duration) -> Result<u64, String> {
    let (addr, host, path) = parse_url(url)?;
    let mut s = TcpStream::connect_timeout(&addr, timeout).map_err(|e| format!("cannot connect to {addr}: {e}"))?;
    let _ = s.set_read_timeout(Some(timeout));
    let _ = s.set_write_timeout(Some(timeout));
    // One write: a server may answer (and close) as soon as the request is complete.
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: flowwarden/{}\r\nAccept: */*\r\nConnection: close\r\n\r\n",
        crate::version::version()
    );
    s.write_all(request.as_bytes())
        .map_err(|e| format!("{addr}: sending the request: {e}"))?;
    let mut r = BufReader::new(s);
    let mut status = String::new();
    r.by_ref()
        .take(1024)
        .read_line(&mut status)
        .map_err(|e| format!("{addr}: reading the status line: {e}"))?;
    let code = status.split_whitespace().nth(1).unwrap_or("");
    if !status.starts_with("HTTP/1.") {
        return Err(format!("{addr} did not answer HTTP ({:?})", status.trim_end()));
    }
    if code != "200" {
        return Err(format!("{url}: the server answered {:?}", status.trim_end()));
    }
    let mut length: Option<u64> = None;
    let mut header_bytes = 0usize;
    loop {
        let mut line = String::new();
        let n = r
            .by_ref()
            .take(8192)
            .read_line(&mut line)
            .map_err(|e| format!("{addr}: reading the headers: {e}"))?;
        header_bytes += n;
        if n == 0 || header_bytes > 64 * 1024 {
            return Err(format!("{addr}: the headers do not end (or exceed 64 KiB)"));
        }
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        if let Some((k, v)) = line.split_once(':') {
            let (k, v) = (k.trim().to_ascii_lowercase(), v.trim());
            if k == "content-length" {
                length = Some(v.parse().map_err(|_| format!("{addr}: Content-Length {v:?} is not a number"))?);
            } else if k == "transfer-encoding" && !v.eq_ignore_ascii_case("identity") {
                return Err(format!(
                    "{addr}: Transfer-Encoding {v} is not supported; serve the file with a Content-Length"
                ));
            }
        }
    }
    if let Some(l) = length
        && l > limit
    {
        return Err(format!("{url} is {l} bytes, more than the {limit} a bundle may have"));
    }
    let mut out = std::fs::File::create(dest).map_err(|e| format!("cannot create {}: {e}", dest.display()))?;
    let copied = std::io::copy(&mut r.take(limit + 1), &mut out).map_err(|e| format!("{url}: download broke off: {e}"))?;
    if copied > limit {
        return Err(format!("{url} is more than the {limit} bytes a bundle may have"));
    }
    if let Some(l) = length
        && copied != l
    {
        return Err(format!("{url}: the connection closed after {copied} of {l} bytes"));
    }
    out.sync_all().map_err(|e| format!("cannot sync {}: {e}", dest.display()))?;
    Ok(copied)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_numeric_http() {
        let (a, h, p) = parse_url("http://10.0.2.2:8080/b/x.fwb").unwrap();
        assert_eq!(
            (a.to_string(), h.as_str(), p.as_str()),
            ("10.0.2.2:8080".into(), "10.0.2.2:8080", "/b/x.fwb")
        );
        assert_eq!(parse_url("http://[::1]/x").unwrap().0.to_string(), "[::1]:80");
        assert!(parse_url("https://10.0.0.1/x").unwrap_err().contains("only http://"));
        assert!(parse_url("http://updates.example/x").unwrap_err().contains("not a numeric address"));
        assert!(parse_url("http://10.0.0.1:99999/x").unwrap_err().contains("port"));
    }

    #[test]
    fn downloads_by_content_length_and_names_a_short_body() {
        let dir = tempfile::tempdir().unwrap();
        let serve = |body: &'static [u8], claim: usize| {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            let port = l.local_addr().unwrap().port();
            std::thread::spawn(move || {
                let (mut s, _) = l.accept().unwrap();
                let mut req = Vec::new();
                let mut buf = [0u8; 1024];
                while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => req.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = write!(s, "HTTP/1.1 200 OK\r\nContent-Length: {claim}\r\n\r\n");
                let _ = s.write_all(body);
            });
            format!("http://127.0.0.1:{port}/b.fwb")
        };
        let dest = dir.path().join("b.fwb");
        let url = serve(b"0123456789", 10);
        assert_eq!(download(&url, &dest, 100, Duration::from_secs(5)), Ok(10));
        assert_eq!(std::fs::read(&dest).unwrap(), b"0123456789");
        let url = serve(b"01234", 10);
        let e = download(&url, &dest, 100, Duration::from_secs(5)).unwrap_err();
        assert!(e.contains("closed after 5 of 10 bytes"), "{e}");
        let url = serve(b"0123456789", 10);
        let e = download(&url, &dest, 4, Duration::from_secs(5)).unwrap_err();
        assert!(e.contains("more than the 4"), "{e}");
    }
}
