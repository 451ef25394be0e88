//! The `[web]` configuration table.
//!
//! The keys `listen tls_cert_file tls_key_file metrics_public session_idle
//! redirect_listen` are a contract. Validation runs at config load and checks
//! what can be checked without binding: addresses, the certificate/key pair
//! (both or neither; they must load and belong together), the idle time.

use crate::units::Span;
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::PathBuf;

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct WebConfig {
    /// HTTPS listeners; unset: `0.0.0.0:443` and `[::]:443` when root, else `127.0.0.1:8443`.
    pub listen: Option<Vec<SocketAddr>>,
    /// PEM certificate chain; unset: a self-signed one kept in the data directory.
    pub tls_cert_file: Option<PathBuf>,
    pub tls_key_file: Option<PathBuf>,
    /// Serve `/metrics` without a token.
    pub metrics_public: bool,
    /// A session ends after this long without a request.
    pub session_idle: Span,
    /// Plain HTTP listener that only redirects to HTTPS (off unless set).
    pub redirect_listen: Option<SocketAddr>,
    /// The configuration file `run` was started with (not a key: set by `run`,
    /// read for the diagnostics bundle).
    #[serde(skip)]
    pub config_file: Option<PathBuf>,
}

impl Default for WebConfig {
    fn default() -> Self {
        WebConfig {
            listen: None,
            tls_cert_file: None,
            tls_key_file: None,
            metrics_public: false,
            session_idle: Span(30 * 60_000),
            redirect_listen: None,
            config_file: None,
        }
    }
}

/// Shortest and longest `session_idle`.
const IDLE_RANGE: std::ops::RangeInclusive<u64> = 60_000..=7 * 86_400_000;

impl WebConfig {
    /// The HTTPS addresses to bind; `root`: whether the process may bind low ports.
    pub fn listen_addrs(&self, root: bool) -> Vec<SocketAddr> {
        match &self.listen {
            Some(l) => l.clone(),
            None if root => vec![SocketAddr::from(([0, 0, 0, 0], 443)), SocketAddr::from(([0u16; 8], 443))],
            None => vec![SocketAddr::from(([127, 0, 0, 1], 8443))],
        }
    }

    /// The first problem, as (key, message).
    pub fn check(&self) -> Result<(), (&'static str, String)> {
        if let Some(l) = &self.listen {
            if l.is_empty() {
                return Err(("listen", "at least one ADDR:PORT is needed".into()));
            }
            for (i, a) in l.iter().enumerate() {
                if l[..i].contains(a) {
                    return Err(("listen", format!("{a} is listed twice")));
                }
            }
        }
        if let Some(r) = self.redirect_listen
            && r.port() != 0
            && self
                .listen
                .iter()
                .flatten()
                .any(|a| a.port() == r.port() && (a.ip() == r.ip() || a.ip().is_unspecified() || r.ip().is_unspecified()))
        {
            return Err((
                "redirect_listen",
                format!("{r} overlaps an HTTPS listener: the redirect needs a port of its own (usually 80)"),
            ));
        }
        if !IDLE_RANGE.contains(&self.session_idle.ms()) {
            return Err(("session_idle", "must be between 1m and 7d".into()));
        }
        match (&self.tls_cert_file, &self.tls_key_file) {
            (None, None) => {}
            (Some(_), None) => return Err(("tls_key_file", "tls_cert_file is set: its private key is needed too".into())),
            (None, Some(_)) => return Err(("tls_cert_file", "tls_key_file is set: its certificate is needed too".into())),
            (Some(c), Some(k)) => {
                let id = crate::pki::load_identity(c, k).map_err(|e| ("tls_cert_file", e.to_string()))?;
                super::cert::server_config(id).map_err(|e| ("tls_key_file", e.to_string()))?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(t: &str) -> WebConfig {
        toml::from_str(t).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn defaults_and_checks() {
        let d = WebConfig::default();
        assert_eq!(
            d.listen_addrs(false),
            vec!["127.0.0.1:8443".parse().unwrap_or_else(|e| panic!("{e}"))]
        );
        assert_eq!(d.listen_addrs(true).len(), 2);
        assert!(d.check().is_ok());
        let w = parse(
            r#"listen = ["127.0.0.1:0", "[::1]:8443"]
session_idle = "2h"
redirect_listen = "0.0.0.0:80""#,
        );
        assert_eq!(w.listen_addrs(true).len(), 2);
        assert!(w.check().is_ok());
        assert_eq!(parse("listen = []").check().map_err(|e| e.0), Err("listen"));
        assert_eq!(
            parse(r#"listen = ["127.0.0.1:1", "127.0.0.1:1"]"#).check().map_err(|e| e.0),
            Err("listen")
        );
        assert_eq!(
            parse("listen = [\"0.0.0.0:8080\"]\nredirect_listen = \"127.0.0.1:8080\"")
                .check()
                .map_err(|e| e.0),
            Err("redirect_listen")
        );
        assert_eq!(parse(r#"session_idle = "10s""#).check().map_err(|e| e.0), Err("session_idle"));
        assert_eq!(
            parse(r#"tls_cert_file = "/nonexistent.pem""#).check().map_err(|e| e.0),
            Err("tls_key_file")
        );
        let e = parse("tls_cert_file = \"/nonexistent.pem\"\ntls_key_file = \"/nonexistent.key\"").check();
        assert!(e.is_err_and(|(k, m)| k == "tls_cert_file" && m.contains("/nonexistent.pem: cannot read")));
        assert!(toml::from_str::<WebConfig>(r#"listen = ["localhost:443"]"#).is_err());
        assert!(toml::from_str::<WebConfig>("colour = true").is_err());
    }
}
