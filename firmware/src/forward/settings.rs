//! The `[[forward]]` configuration tables: one per SIEM destination.
//!
//! The keys `name address transport framing format ca_file fingerprint
//! server_name client_cert_file client_key_file spool_max_bytes` are a
//! contract; the rest tune delivery and have documented defaults. Validation
//! names the destination and the key, and checks what can be checked without
//! the network (files exist and parse, fingerprint form, sizes).

use super::error::ForwardError;
use crate::units::{SizeSpec, Span};
use serde::Deserialize;
use std::path::PathBuf;

/// How messages travel.
#[derive(Debug, Clone, Copy, Deserialize, serde::Serialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    /// RFC 5425: syslog over TLS (default port 6514).
    #[default]
    Tls,
    /// RFC 6587: syslog over plain TCP (legacy receivers).
    Tcp,
    /// RFC 5426: one message per datagram, size capped.
    Udp,
}

impl Transport {
    pub fn as_str(self) -> &'static str {
        match self {
            Transport::Tls => "tls",
            Transport::Tcp => "tcp",
            Transport::Udp => "udp",
        }
    }
}

/// How messages are delimited on a stream.
#[derive(Debug, Clone, Copy, Deserialize, serde::Serialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum Framing {
    /// `LEN SP MSG` (RFC 5425 / RFC 6587 octet counting).
    #[default]
    Octet,
    /// `MSG LF` (Splunk/SC4S, Filebeat, syslog-ng `network()`).
    Lf,
}

impl Framing {
    pub fn as_str(self) -> &'static str {
        match self {
            Framing::Octet => "octet",
            Framing::Lf => "lf",
        }
    }
}

/// The message body carried after the RFC 5424 header.
#[derive(Debug, Clone, Copy, Deserialize, serde::Serialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// ArcSight CEF:0.
    #[default]
    Cef,
    /// IBM QRadar LEEF 2.0.
    Leef,
    /// Elastic Common Schema JSON.
    Json,
}

impl Format {
    pub fn as_str(self) -> &'static str {
        match self {
            Format::Cef => "cef",
            Format::Leef => "leef",
            Format::Json => "json",
        }
    }
}

/// One `[[forward]]` table.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ForwardConfig {
    /// Label in logs, state and metrics; also the spool's key (keep it stable).
    pub name: String,
    /// `host:port` or `[v6]:port` (the port is required).
    pub address: String,
    #[serde(default = "d_transport")]
    pub transport: Transport,
    #[serde(default = "d_framing")]
    pub framing: Framing,
    #[serde(default = "d_format")]
    pub format: Format,
    /// PEM bundle of the CA(s) that sign the receiver's certificate.
    pub ca_file: Option<PathBuf>,
    /// Or: the receiver certificate's SHA-256, `sha256:AB:CD:...` (64 hex digits, colons optional).
    pub fingerprint: Option<String>,
    /// Name checked against the certificate (DNS or IP SAN); default: the host of `address`.
    pub server_name: Option<String>,
    /// Client certificate chain (PEM) for mutual TLS, with `client_key_file`.
    pub client_cert_file: Option<PathBuf>,
    pub client_key_file: Option<PathBuf>,
    /// Spool cap for this destination; past it the oldest entries are dropped (counted, gap event).
    #[serde(default = "d_spool")]
    pub spool_max_bytes: SizeSpec,
    /// Longest message in bytes (header included); longer ones are cut on a character
    /// boundary. Default 8192 (2048 for udp).
    pub max_message_bytes: Option<usize>,
    /// Heartbeat event interval; "0s" turns heartbeats off.
    #[serde(default = "d_heartbeat")]
    pub heartbeat_interval: Span,
    /// Syslog facility name (kern..local7) for the PRI field.
    #[serde(default = "d_facility")]
    pub facility: String,
    /// First and longest wait between connection attempts (jittered exponential backoff).
    #[serde(default = "d_reconnect_min")]
    pub reconnect_min: Span,
    #[serde(default = "d_reconnect_max")]
    pub reconnect_max: Span,
    /// Connect + handshake timeout.
    #[serde(default = "d_connect_timeout")]
    pub connect_timeout: Span,
}

fn d_transport() -> Transport {
    Transport::Tls
}
fn d_framing() -> Framing {
    Framing::Octet
}
fn d_format() -> Format {
    Format::Cef
}
fn d_spool() -> SizeSpec {
    SizeSpec::Bytes(64 << 20)
}
fn d_heartbeat() -> Span {
    Span(300_000)
}
fn d_facility() -> String {
    "local4".into()
}
fn d_reconnect_min() -> Span {
    Span(1_000)
}
fn d_reconnect_max() -> Span {
    Span(60_000)
}
fn d_connect_timeout() -> Span {
    Span(10_000)
}

/// Syslog facility names (RFC 5424 table 1) in code order.
const FACILITIES: [&str; 24] = [
    "kern", "user", "mail", "daemon", "auth", "syslog", "lpr", "news", "uucp", "cron", "authpriv", "ftp", "ntp", "audit", "alert", "clock",
    "local0", "local1", "local2", "local3", "local4", "local5", "local6", "local7",
];

impl ForwardConfig {
    /// Facility code for the PRI field (validated: unknown names never get here).
    pub fn facility_code(&self) -> u8 {
        FACILITIES.iter().position(|f| *f == self.facility).unwrap_or(20) as u8
    }

    /// The spool cap in bytes.
    pub fn spool_bytes(&self) -> u64 {
        self.spool_max_bytes.resolve(0)
    }

    /// The message size limit in bytes.
    pub fn message_limit(&self) -> usize {
        self.max_message_bytes.unwrap_or(match self.transport {
            Transport::Udp => 2048,
            _ => 8192,
        })
    }

    /// `(host, port)` of `address`, the port defaulted by transport.
    pub fn host_port(&self) -> Result<(String, u16), ForwardError> {
        split_host_port(&self.address, if self.transport == Transport::Tls { 6514 } else { 514 })
    }

    /// The pinned certificate digest, if configured (32 bytes).
    pub fn pinned_sha256(&self) -> Result<Option<[u8; 32]>, ForwardError> {
        let Some(f) = &self.fingerprint else { return Ok(None) };
        let hex: String = f
            .trim()
            .strip_prefix("sha256:")
            .or_else(|| f.trim().strip_prefix("SHA256:"))
            .ok_or_else(|| ForwardError::Setup(format!("{f:?}: must start with \"sha256:\"")))?
            .chars()
            .filter(|c| *c != ':')
            .collect();
        if hex.len() != 64 || !hex.chars().all(|c| c.is_ascii_hexdigit()) {
            return Err(ForwardError::Setup(format!(
                "{f:?}: expected 64 hex digits after \"sha256:\" (colons allowed)"
            )));
        }
        let mut out = [0u8; 32];
        for (i, b) in out.iter_mut().enumerate() {
            *b = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).map_err(|e| ForwardError::Setup(e.to_string()))?;
        }
        Ok(Some(out))
    }
}

/// Whether an address names its port (`host:port`, `[v6]:port`).
fn has_port(s: &str) -> bool {
    let s = s.trim();
    match s.strip_prefix('[') {
        Some(rest) => rest.split_once(']').is_some_and(|(_, tail)| tail.starts_with(':')),
        None => s.matches(':').count() == 1,
    }
}

/// Split `host:port`, `[v6]:port`, `v6` or `host`.
pub fn split_host_port(s: &str, default_port: u16) -> Result<(String, u16), ForwardError> {
    split(s, default_port).map_err(ForwardError::Setup)
}

fn split(s: &str, default_port: u16) -> Result<(String, u16), String> {
    let s = s.trim();
    if s.is_empty() {
        return Err("empty address".into());
    }
    if let Some(rest) = s.strip_prefix('[') {
        let (host, tail) = rest.split_once(']').ok_or_else(|| format!("{s:?}: missing ']'"))?;
        let port = match tail.strip_prefix(':') {
            Some(p) => p.parse().map_err(|_| format!("{s:?}: bad port {p:?}"))?,
            None if tail.is_empty() => default_port,
            None => return Err(format!("{s:?}: expected ':PORT' after ']'")),
        };
        return Ok((host.to_string(), port));
    }
    if s.matches(':').count() > 1 {
        // A bare IPv6 address.
        return Ok((s.to_string(), default_port));
    }
    match s.split_once(':') {
        Some((h, p)) => {
            let port: u16 = p.parse().map_err(|_| format!("{s:?}: bad port {p:?}"))?;
            if port == 0 || h.is_empty() {
                return Err(format!("{s:?}: expected HOST:PORT with a port from 1 to 65535"));
            }
            Ok((h.to_string(), port))
        }
        None => Ok((s.to_string(), default_port)),
    }
}

/// Check every destination; the error names the table index's key (for the line lookup).
pub fn validate(list: &[ForwardConfig]) -> Result<(), (usize, &'static str, String)> {
    let mut names = std::collections::HashSet::new();
    for (i, f) in list.iter().enumerate() {
        let err = |key: &'static str, m: String| Err((i, key, format!("destination {:?}: {m}", f.name)));
        if f.name.is_empty() || f.name.len() > 64 || !f.name.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)) {
            return err("name", "must be 1-64 characters of A-Z a-z 0-9 - _ .".into());
        }
        if !names.insert(f.name.clone()) {
            return err("name", "is used twice (each destination needs its own name)".into());
        }
        if let Err(m) = f.host_port() {
            return err("address", m.to_string());
        }
        if !has_port(&f.address) {
            let (host, _) = f.host_port().unwrap_or_default();
            let host = if host.contains(':') { format!("[{host}]") } else { host };
            return err(
                "address",
                format!(
                    "{:?} has no port; write it out, e.g. \"{host}:{}\" ({} syslog's usual port)",
                    f.address,
                    if f.transport == Transport::Tls { 6514 } else { 514 },
                    f.transport.as_str()
                ),
            );
        }
        if !FACILITIES.contains(&f.facility.as_str()) {
            return err(
                "facility",
                format!("{:?} is not a syslog facility ({})", f.facility, FACILITIES.join(", ")),
            );
        }
        let spool = f.spool_bytes();
        if !(4096..=1 << 40).contains(&spool) || matches!(f.spool_max_bytes, SizeSpec::Percent(_)) {
            return err("spool_max_bytes", "must be a size between 4 KiB and 1 TiB".into());
        }
        let limit = f.message_limit();
        let top = if f.transport == Transport::Udp { 65_000 } else { 1 << 20 };
        if !(480..=top).contains(&limit) {
            return err("max_message_bytes", format!("must be between 480 and {top}"));
        }
        if f.reconnect_min.ms() == 0 || f.reconnect_min.ms() > f.reconnect_max.ms() {
            return err("reconnect_min", "must be above 0 and at most reconnect_max".into());
        }
        if f.connect_timeout.ms() < 100 {
            return err("connect_timeout", "must be at least 100ms".into());
        }
        if f.heartbeat_interval.ms() != 0 && f.heartbeat_interval.ms() < 1000 {
            return err("heartbeat_interval", "must be 0s (off) or at least 1s".into());
        }
        if f.transport == Transport::Udp && f.framing != Framing::Octet {
            return err("framing", "does not apply to udp (one message per datagram); leave it out".into());
        }
        let tls_keys = [
            ("ca_file", f.ca_file.is_some()),
            ("fingerprint", f.fingerprint.is_some()),
            ("server_name", f.server_name.is_some()),
            ("client_cert_file", f.client_cert_file.is_some()),
            ("client_key_file", f.client_key_file.is_some()),
        ];
        if f.transport != Transport::Tls {
            if let Some((k, _)) = tls_keys.iter().find(|(_, set)| *set) {
                return err(
                    k,
                    format!("only applies to transport = \"tls\" (this is {:?})", f.transport.as_str()),
                );
            }
            continue;
        }
        match (&f.ca_file, &f.fingerprint) {
            (None, None) => {
                return err(
                    "ca_file",
                    "transport \"tls\" needs ca_file or fingerprint to verify the receiver".into(),
                );
            }
            (Some(_), Some(_)) => return err("fingerprint", "give either ca_file or fingerprint, not both".into()),
            _ => {}
        }
        if let Err(m) = f.pinned_sha256() {
            return err("fingerprint", m.to_string());
        }
        if let Some(p) = &f.ca_file
            && let Err(m) = super::tls::load_roots(p)
        {
            return err("ca_file", m.to_string());
        }
        if f.client_cert_file.is_some() != f.client_key_file.is_some() {
            return err("client_cert_file", "client_cert_file and client_key_file go together".into());
        }
        if let (Some(c), Some(k)) = (&f.client_cert_file, &f.client_key_file)
            && let Err(m) = super::tls::load_client_identity(c, k)
        {
            return err("client_cert_file", m.to_string());
        }
        if let Some(n) = &f.server_name
            && rustls_pki_types::ServerName::try_from(n.as_str()).is_err()
        {
            return err("server_name", format!("{n:?} is neither a DNS name nor an IP address"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_split_with_default_ports() {
        assert_eq!(split_host_port("siem.example:6514", 1), Ok(("siem.example".into(), 6514)));
        assert_eq!(split_host_port("[::1]:601", 1), Ok(("::1".into(), 601)));
        assert_eq!(split_host_port("::1", 6514), Ok(("::1".into(), 6514)));
        assert_eq!(split_host_port("10.0.0.1", 514), Ok(("10.0.0.1".into(), 514)));
        assert!(split_host_port("host:0", 1).is_err());
        assert!(split_host_port("host:http", 1).is_err());
        assert!(split_host_port("", 1).is_err());
    }

    #[test]
    fn fingerprints_parse_with_or_without_colons() {
        let hex = "AB".repeat(32);
        let colons: Vec<String> = (0..32).map(|_| "ab".to_string()).collect();
        for form in [format!("sha256:{hex}"), format!("sha256:{}", colons.join(":"))] {
            let f: ForwardConfig =
                toml::from_str(&format!("name='a'\naddress='h:1'\nfingerprint='{form}'")).unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(f.pinned_sha256(), Ok(Some([0xab; 32])));
        }
        let f: ForwardConfig = toml::from_str("name='a'\naddress='h:1'\nfingerprint='md5:00'").unwrap_or_else(|e| panic!("{e}"));
        assert!(f.pinned_sha256().is_err());
    }
}
