//! Certificates and keys, shared by every TLS user (SIEM forwarding as a
//! client, the web page as a server): the one crypto provider (ring), PEM
//! loading, SHA-256 fingerprints in the `sha256:AB:CD:..` form that
//! `[[forward]] fingerprint` takes, and a certificate's validity period read
//! from its DER. A leaf: it imports nothing of the crate but `timefmt`.

use rustls::crypto::CryptoProvider;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use std::path::Path;
use std::sync::Arc;
use thiserror::Error;

/// A certificate chain and its private key.
pub type Identity = (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>);

/// What is wrong with a certificate or key file (names the file).
#[derive(Debug, Error)]
#[error("{0}")]
pub struct PkiError(pub String);

/// The one crypto provider flowwarden uses (ring; never aws-lc-rs).
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Read a certificate chain and its private key (PEM files).
pub fn load_identity(cert: &Path, key: &Path) -> Result<Identity, PkiError> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(|e| PkiError(format!("{}: cannot read: {e}", cert.display())))?
        .collect::<Result<_, _>>()
        .map_err(|e| PkiError(format!("{}: not valid PEM: {e}", cert.display())))?;
    if chain.is_empty() {
        return Err(PkiError(format!(
            "{}: no PEM certificate (expected -----BEGIN CERTIFICATE-----)",
            cert.display()
        )));
    }
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| PkiError(format!("{}: no usable private key: {e}", key.display())))?;
    Ok((chain, key))
}

/// Not-after of the first certificate in a PEM file (for the state's expiry).
pub fn pem_not_after(path: &Path) -> Option<u64> {
    let c = CertificateDer::pem_file_iter(path).ok()?.next()?.ok()?;
    validity(&c).map(|(_, after)| after)
}

/// SHA-256 of a DER certificate.
pub fn sha256(der: &[u8]) -> [u8; 32] {
    let d = ring::digest::digest(&ring::digest::SHA256, der);
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

/// `AB:CD:...` upper-case hex.
pub fn hex_colon(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02X}")).collect::<Vec<_>>().join(":")
}

/// One DER TLV: (tag, contents, rest).
fn tlv(b: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = b.split_first()?;
    let (&l0, rest) = rest.split_first()?;
    let (len, rest) = if l0 < 0x80 {
        (usize::from(l0), rest)
    } else {
        let n = usize::from(l0 & 0x7f);
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let len = rest[..n].iter().fold(0usize, |a, &x| (a << 8) | usize::from(x));
        (len, &rest[n..])
    };
    if rest.len() < len {
        return None;
    }
    Some((tag, &rest[..len], &rest[len..]))
}

/// (not before, not after) of an X.509 certificate, Unix ms.
pub fn validity(der: &[u8]) -> Option<(u64, u64)> {
    let (0x30, cert, _) = tlv(der)? else { return None };
    let (0x30, tbs, _) = tlv(cert)? else { return None };
    let mut rest = tbs;
    let (tag, _, r) = tlv(rest)?;
    if tag == 0xa0 {
        rest = r; // explicit version
    }
    // serialNumber, signature, issuer
    for _ in 0..3 {
        rest = tlv(rest)?.2;
    }
    let (0x30, val, _) = tlv(rest)? else { return None };
    let (t1, nb, r) = tlv(val)?;
    let (t2, na, _) = tlv(r)?;
    Some((der_time(t1, nb)?, der_time(t2, na)?))
}

fn der_time(tag: u8, v: &[u8]) -> Option<u64> {
    let s = std::str::from_utf8(v).ok()?;
    let s = s.strip_suffix('Z')?;
    let (year, rest) = match tag {
        0x17 if s.len() == 12 => {
            let yy: i64 = s[..2].parse().ok()?;
            (if yy >= 50 { 1900 + yy } else { 2000 + yy }, &s[2..])
        }
        0x18 if s.len() == 14 => (s[..4].parse().ok()?, &s[4..]),
        _ => return None,
    };
    let n = |i: usize| -> Option<u32> { rest.get(i..i + 2)?.parse().ok() };
    let days = crate::timefmt::days_from_civil(year, n(0)?, n(2)?);
    let secs = days * 86_400 + i64::from(n(4)?) * 3600 + i64::from(n(6)?) * 60 + i64::from(n(8)?);
    u64::try_from(secs).ok().map(|s| s * 1000)
}

/// `sha256:AB:CD:...` of a DER certificate.
pub fn fingerprint(der: &[u8]) -> String {
    format!("sha256:{}", hex_colon(&sha256(der)))
}
