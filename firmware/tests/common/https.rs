//! A small HTTPS/1.1 client for the page's tests: it trusts exactly the
//! certificate whose fingerprint `run` printed (through the forwarder's pinned
//! verifier), keeps cookies like a browser, and sends form posts with this
//! origin's `Origin` header.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::Duration;

#[derive(Debug, Clone)]
pub struct Resp {
    pub status: u16,
    /// Header names in lower case, in order.
    pub headers: Vec<(String, String)>,
    pub body: String,
    /// The body's bytes (downloads).
    pub raw: Vec<u8>,
}

impl Resp {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }

    pub fn all(&self, name: &str) -> Vec<&str> {
        self.headers.iter().filter(|(k, _)| k == name).map(|(_, v)| v.as_str()).collect()
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }
}

pub struct Client {
    pub addr: SocketAddr,
    config: Arc<rustls::ClientConfig>,
    name: rustls_pki_types::ServerName<'static>,
    pub cookies: BTreeMap<String, String>,
}

impl Client {
    /// A client for the page at `addr` whose certificate has `fingerprint` (`sha256:AB:…`).
    pub fn new(addr: SocketAddr, fingerprint: &str) -> Client {
        let toml = format!(
            "name = \"page\"\naddress = \"localhost:{}\"\ntransport = \"tls\"\nfingerprint = \"{fingerprint}\"\n",
            addr.port()
        );
        let f: flowwarden::forward::settings::ForwardConfig = toml::from_str(&toml).unwrap_or_else(|e| panic!("{e}"));
        let (config, name) = flowwarden::forward::tls::client_config(&f).unwrap_or_else(|e| panic!("{e}"));
        Client {
            addr,
            config,
            name,
            cookies: BTreeMap::new(),
        }
    }

    /// One request on a new connection (`Connection: close`); cookies are sent and kept.
    pub fn request(&mut self, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Resp {
        let mut tcp = TcpStream::connect(self.addr).unwrap_or_else(|e| panic!("connect {}: {e}", self.addr));
        let _ = tcp.set_read_timeout(Some(Duration::from_secs(30)));
        let mut conn = rustls::ClientConnection::new(self.config.clone(), self.name.clone()).unwrap_or_else(|e| panic!("{e}"));
        let mut tls = rustls::Stream::new(&mut conn, &mut tcp);
        let mut req = format!(
            "{method} {path} HTTP/1.1\r\nHost: localhost:{}\r\nConnection: close\r\n",
            self.addr.port()
        );
        if !self.cookies.is_empty() {
            let c: Vec<String> = self.cookies.iter().map(|(k, v)| format!("{k}={v}")).collect();
            req.push_str(&format!("Cookie: {}\r\n", c.join("; ")));
        }
        for (k, v) in headers {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        if !body.is_empty() || method == "POST" {
            req.push_str(&format!("Content-Length: {}\r\n", body.len()));
        }
        req.push_str("\r\n");
        tls.write_all(req.as_bytes()).unwrap_or_else(|e| panic!("write: {e}"));
        tls.write_all(body).unwrap_or_else(|e| panic!("write: {e}"));
        let mut raw = Vec::new();
        match tls.read_to_end(&mut raw) {
            Ok(_) => {}
            // The server closes without close_notify after `Connection: close` at times.
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {}
            Err(e) => panic!("read: {e}"),
        }
        let resp = parse(&raw);
        for c in resp.all("set-cookie") {
            let first = c.split(';').next().unwrap_or_default();
            if let Some((k, v)) = first.split_once('=') {
                if v.is_empty() || c.contains("Max-Age=0") {
                    self.cookies.remove(k);
                } else {
                    self.cookies.insert(k.to_string(), v.to_string());
                }
            }
        }
        resp
    }

    pub fn get(&mut self, path: &str) -> Resp {
        self.request("GET", path, &[], b"")
    }

    pub fn get_with(&mut self, path: &str, headers: &[(&str, &str)]) -> Resp {
        self.request("GET", path, headers, b"")
    }

    /// A form post from this origin (as a browser sends it).
    pub fn post_form(&mut self, path: &str, fields: &[(&str, &str)]) -> Resp {
        let origin = format!("https://localhost:{}", self.addr.port());
        self.post_form_with(path, fields, &[("Origin", &origin), ("Sec-Fetch-Site", "same-origin")])
    }

    pub fn post_form_with(&mut self, path: &str, fields: &[(&str, &str)], headers: &[(&str, &str)]) -> Resp {
        let body: Vec<String> = fields.iter().map(|(k, v)| format!("{}={}", enc(k), enc(v))).collect();
        let mut h = vec![("Content-Type", "application/x-www-form-urlencoded")];
        h.extend_from_slice(headers);
        self.request("POST", path, &h, body.join("&").as_bytes())
    }
}

/// The hidden CSRF field of a page's form.
pub fn csrf_field(html: &str) -> String {
    html.split("name=\"csrf\" value=\"")
        .nth(1)
        .and_then(|r| r.split('"').next())
        .unwrap_or_else(|| panic!("no csrf field in {html}"))
        .to_string()
}

impl Client {
    /// Log in through the form as a browser does (GET /login for its token, then POST).
    pub fn login(&mut self, user: &str, password: &str) -> Resp {
        let page = self.get("/login");
        assert_eq!(page.status, 200);
        let csrf = csrf_field(&page.body);
        self.post_form("/login", &[("user", user), ("password", password), ("csrf", &csrf)])
    }
}

fn enc(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Parse a whole HTTP/1.1 response (Content-Length, chunked, or to EOF).
fn parse(raw: &[u8]) -> Resp {
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no response head in {:?}", String::from_utf8_lossy(raw)));
    let head = String::from_utf8_lossy(&raw[..split]).to_string();
    let mut lines = head.split("\r\n");
    let status: u16 = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad status line in {head:?}"));
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let rest = &raw[split + 4..];
    let chunked = headers
        .iter()
        .any(|(k, v)| k == "transfer-encoding" && v.eq_ignore_ascii_case("chunked"));
    let body = if chunked {
        let mut out = Vec::new();
        let mut at = 0;
        while let Some(nl) = rest[at..].windows(2).position(|w| w == b"\r\n") {
            let size = usize::from_str_radix(String::from_utf8_lossy(&rest[at..at + nl]).trim(), 16).unwrap_or(0);
            at += nl + 2;
            if size == 0 {
                break;
            }
            out.extend_from_slice(&rest[at..(at + size).min(rest.len())]);
            at += size + 2;
        }
        out
    } else {
        rest.to_vec()
    };
    Resp {
        status,
        headers,
        body: String::from_utf8_lossy(&body).to_string(),
        raw: body,
    }
}
