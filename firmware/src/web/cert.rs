//! The page's HTTPS identity: the configured certificate and key, or a
//! self-signed pair generated at first start and kept in the data directory
//! (`DATA/web/cert.pem`, `DATA/web/key.pem` with mode 0600), so its
//! fingerprint — printed at start, and what a technician pins — stays the
//! same across restarts. A kept pair that no longer loads, does not belong
//! together or has expired is replaced (and said so by the caller).

use crate::pki::{self, Identity};
use rustls::ServerConfig;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use thiserror::Error;

/// Where a generated pair is kept, under the data directory.
pub const DIR: &str = "web";

#[derive(Debug, Error)]
pub enum CertError {
    #[error("{0}")]
    Load(#[from] pki::PkiError),
    #[error("the certificate and key do not make a TLS server identity: {0}")]
    Tls(#[from] rustls::Error),
    #[error("cannot generate a self-signed certificate: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: std::io::Error },
}

/// What the listeners serve and what `run` prints.
pub struct ServerIdentity {
    pub config: Arc<ServerConfig>,
    /// `sha256:AB:CD:..` of the end-entity certificate.
    pub fingerprint: String,
    /// Not-after of the end-entity certificate, Unix ms.
    pub not_after_ms: Option<u64>,
    /// How it came about, for the log.
    pub origin: Origin,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// `[web] tls_cert_file` / `tls_key_file`.
    Configured,
    /// Kept in the data directory from an earlier start.
    Kept,
    /// Made now (first start); `replaced` says why an earlier one was not used.
    Generated { replaced: Option<String> },
}

/// The rustls server configuration for an identity: TLS 1.2 and 1.3 (ring), HTTP/1.1.
pub fn server_config((chain, key): Identity) -> Result<Arc<ServerConfig>, CertError> {
    let mut c = ServerConfig::builder_with_provider(pki::provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_no_client_auth()
        .with_single_cert(chain, key)?;
    c.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(c))
}

fn identity(id: Identity, origin: Origin) -> Result<ServerIdentity, CertError> {
    let end = id.0.first().map(|c| c.as_ref().to_vec()).unwrap_or_default();
    Ok(ServerIdentity {
        fingerprint: pki::fingerprint(&end),
        not_after_ms: pki::validity(&end).map(|(_, a)| a),
        config: server_config(id)?,
        origin,
    })
}

/// The configured pair, else the kept one, else a new self-signed one (kept).
/// `names`: extra subject names for a generated certificate (host name, addresses).
pub fn load_or_generate(
    cert_file: Option<&Path>,
    key_file: Option<&Path>,
    data_dir: &Path,
    names: &[String],
    now_ms: u64,
) -> Result<ServerIdentity, CertError> {
    if let (Some(c), Some(k)) = (cert_file, key_file) {
        return identity(pki::load_identity(c, k)?, Origin::Configured);
    }
    let dir = data_dir.join(DIR);
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    let replaced = if cert.exists() || key.exists() {
        match pki::load_identity(&cert, &key)
            .map_err(CertError::from)
            .and_then(|id| identity(id, Origin::Kept))
        {
            Ok(id) if id.not_after_ms.is_some_and(|a| a > now_ms) => return Ok(id),
            Ok(_) => Some("the kept certificate has expired".to_string()),
            Err(e) => Some(format!("the kept certificate is unusable: {e}")),
        }
    } else {
        None
    };
    let id = generate(names, now_ms)?;
    std::fs::create_dir_all(&dir).map_err(|source| CertError::Io { path: dir.clone(), source })?;
    write_private(&key, id.signing_key.serialize_pem().as_bytes(), 0o600)?;
    write_private(&cert, id.cert.pem().as_bytes(), 0o644)?;
    identity(pki::load_identity(&cert, &key)?, Origin::Generated { replaced })
}

/// A self-signed certificate for `flowwarden`, `localhost` and `names`, valid
/// from the start of this year for 20 years (browsers warn about any
/// self-signed certificate; the fingerprint is what a technician checks).
fn generate(names: &[String], now_ms: u64) -> Result<rcgen::CertifiedKey<rcgen::KeyPair>, CertError> {
    let mut sans = vec!["flowwarden".to_string(), "localhost".to_string()];
    for n in names {
        if !sans.contains(n) {
            sans.push(n.clone());
        }
    }
    let mut params = rcgen::CertificateParams::new(sans)?;
    params.distinguished_name = rcgen::DistinguishedName::new();
    params.distinguished_name.push(rcgen::DnType::CommonName, "flowwarden appliance");
    params
        .distinguished_name
        .push(rcgen::DnType::OrganizationName, "flowwarden (self-signed)");
    let year: i32 = crate::timefmt::rfc3339_ms(now_ms)
        .get(..4)
        .and_then(|y| y.parse().ok())
        .unwrap_or(2026);
    params.not_before = rcgen::date_time_ymd(year, 1, 1);
    params.not_after = rcgen::date_time_ymd(year + 20, 1, 1);
    let signing_key = rcgen::KeyPair::generate()?;
    let cert = params.self_signed(&signing_key)?;
    Ok(rcgen::CertifiedKey { cert, signing_key })
}

/// Write `bytes` to `path` atomically, created with `mode`.
fn write_private(path: &Path, bytes: &[u8], mode: u32) -> Result<(), CertError> {
    crate::fsutil::write_atomic(path, bytes, mode).map_err(|e| CertError::Io {
        path: e.path,
        source: e.source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    const NOW: u64 = 1_793_610_000_000; // 2026-11-02

    #[test]
    fn generated_once_then_kept_and_replaced_when_damaged() {
        let d = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let names = vec!["192.0.2.7".to_string(), "branch-1".to_string()];
        let a = load_or_generate(None, None, d.path(), &names, NOW).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(a.origin, Origin::Generated { replaced: None });
        assert!(
            a.fingerprint.starts_with("sha256:") && a.fingerprint.len() == 7 + 32 * 3 - 1,
            "{}",
            a.fingerprint
        );
        let key_mode = std::fs::metadata(d.path().join("web/key.pem")).map(|m| m.permissions().mode() & 0o777);
        assert_eq!(key_mode.ok(), Some(0o600));
        assert!(a.not_after_ms.is_some_and(|t| t > NOW + 19 * 365 * 86_400_000));
        let b = load_or_generate(None, None, d.path(), &names, NOW).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((b.origin, &b.fingerprint), (Origin::Kept, &a.fingerprint));
        // Expired (the clock moved past not-after): a new one, and why.
        let late = a.not_after_ms.unwrap_or(0) + 1;
        let c = load_or_generate(None, None, d.path(), &names, late).unwrap_or_else(|e| panic!("{e}"));
        assert!(matches!(&c.origin, Origin::Generated { replaced: Some(r) } if r.contains("expired")));
        // Damaged key: replaced, not a failed start.
        std::fs::write(d.path().join("web/key.pem"), "garbage").unwrap_or_else(|e| panic!("{e}"));
        let e = load_or_generate(None, None, d.path(), &names, NOW).unwrap_or_else(|e| panic!("{e}"));
        assert!(matches!(&e.origin, Origin::Generated { replaced: Some(r) } if r.contains("unusable")));
        assert_ne!(e.fingerprint, a.fingerprint);
    }

    #[test]
    fn configured_pair_is_used_and_a_mismatch_is_refused() {
        let d = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let one = generate(&[], NOW).unwrap_or_else(|e| panic!("{e}"));
        let two = generate(&[], NOW).unwrap_or_else(|e| panic!("{e}"));
        let (c, k, k2) = (d.path().join("c.pem"), d.path().join("k.pem"), d.path().join("k2.pem"));
        let w = |p: &Path, s: String| std::fs::write(p, s).unwrap_or_else(|e| panic!("{e}"));
        w(&c, one.cert.pem());
        w(&k, one.signing_key.serialize_pem());
        w(&k2, two.signing_key.serialize_pem());
        let id = load_or_generate(Some(&c), Some(&k), d.path(), &[], NOW).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(id.origin, Origin::Configured);
        assert_eq!(id.fingerprint, pki::fingerprint(one.cert.der()));
        assert!(!d.path().join(DIR).exists(), "nothing generated when a pair is configured");
        let e = load_or_generate(Some(&c), Some(&k2), d.path(), &[], NOW)
            .err()
            .map(|e| e.to_string());
        assert!(e.is_some_and(|m| m.contains("do not make a TLS server identity")));
    }
}
