//! TLS client settings for RFC 5425 destinations (rustls with the ring provider).
//!
//! The receiver is verified either by a CA bundle plus the configured name
//! (DNS or IP SAN, webpki) or by a pinned SHA-256 fingerprint of its
//! certificate (validity period still checked, handshake signatures still
//! verified). A client certificate is offered when configured (mutual TLS).
//! TLS 1.2 and 1.3 only; no 0-RTT (rustls never sends early data unless asked).
//! Fingerprints, PEM loading and validity periods are the leaf `pki`'s.

use super::error::ForwardError;
use super::settings::ForwardConfig;
pub use crate::pki::{Identity, hex_colon, pem_not_after, provider, sha256, validity};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
use std::path::Path;
use std::sync::Arc;

/// Read a PEM CA bundle (at least one certificate).
pub fn load_roots(path: &Path) -> Result<RootCertStore, ForwardError> {
    roots(path).map_err(ForwardError::Setup)
}

fn roots(path: &Path) -> Result<RootCertStore, String> {
    let iter = CertificateDer::pem_file_iter(path).map_err(|e| format!("{}: cannot read: {e}", path.display()))?;
    let mut roots = RootCertStore::empty();
    for (i, c) in iter.enumerate() {
        let c = c.map_err(|e| format!("{}: certificate {} is not valid PEM: {e}", path.display(), i + 1))?;
        roots
            .add(c)
            .map_err(|e| format!("{}: certificate {} is not a usable CA certificate: {e}", path.display(), i + 1))?;
    }
    if roots.is_empty() {
        return Err(format!(
            "{}: no PEM certificate (expected -----BEGIN CERTIFICATE-----)",
            path.display()
        ));
    }
    Ok(roots)
}

/// Read a client certificate chain and its private key (PEM).
pub fn load_client_identity(cert: &Path, key: &Path) -> Result<Identity, ForwardError> {
    crate::pki::load_identity(cert, key).map_err(|e| ForwardError::Setup(e.to_string()))
}

/// The rustls client configuration of a destination and the name to check.
pub fn client_config(f: &ForwardConfig) -> Result<(Arc<ClientConfig>, ServerName<'static>), ForwardError> {
    let setup = ForwardError::Setup;
    let provider = provider();
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| setup(format!("TLS setup: {e}")))?;
    let builder = match (&f.ca_file, f.pinned_sha256()?) {
        (_, Some(pin)) => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(PinnedVerifier { pin, provider })),
        (Some(ca), None) => builder.with_root_certificates(load_roots(ca)?),
        (None, None) => return Err(setup("transport \"tls\" needs ca_file or fingerprint".into())),
    };
    let mut cfg = match (&f.client_cert_file, &f.client_key_file) {
        (Some(c), Some(k)) => {
            let (chain, key) = load_client_identity(c, k)?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| setup(format!("{}: client certificate and key do not fit together: {e}", c.display())))?
        }
        _ => builder.with_no_client_auth(),
    };
    cfg.enable_early_data = false;
    let name = match &f.server_name {
        Some(n) => n.clone(),
        None => f.host_port()?.0,
    };
    let name = ServerName::try_from(name.clone()).map_err(|_| setup(format!("{name:?} is neither a DNS name nor an IP address")))?;
    Ok((Arc::new(cfg), name))
}

/// Trusts exactly one certificate, by its SHA-256.
#[derive(Debug)]
struct PinnedVerifier {
    pin: [u8; 32],
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for PinnedVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let got = sha256(end_entity);
        if got != self.pin {
            return Err(rustls::Error::General(format!(
                "server certificate fingerprint sha256:{} does not match the configured fingerprint",
                hex_colon(&got)
            )));
        }
        let Some((before, after)) = validity(end_entity) else {
            return Err(rustls::Error::InvalidCertificate(rustls::CertificateError::BadEncoding));
        };
        let now_ms = now.as_secs().saturating_mul(1000);
        if now_ms > after {
            return Err(rustls::Error::InvalidCertificate(rustls::CertificateError::Expired));
        }
        if now_ms < before {
            return Err(rustls::Error::InvalidCertificate(rustls::CertificateError::NotValidYet));
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}

/// A rustls error in words a technician can act on.
pub fn explain(e: &rustls::Error, f: &ForwardConfig) -> String {
    use rustls::{AlertDescription as A, CertificateError as C, Error as E};
    let trust = match (&f.ca_file, &f.fingerprint) {
        (Some(ca), _) => format!("ca_file {}", ca.display()),
        (_, Some(fp)) => format!("fingerprint {fp}"),
        _ => "the configuration".into(),
    };
    match e {
        E::InvalidCertificate(C::UnknownIssuer) | E::InvalidCertificate(C::BadSignature) => {
            format!("server certificate is not signed by a CA in {trust} (rustls: {e})")
        }
        E::InvalidCertificate(C::NotValidForName) | E::InvalidCertificate(C::NotValidForNameContext { .. }) => {
            format!("server certificate is not valid for the name the destination checks (set server_name?) (rustls: {e})")
        }
        E::InvalidCertificate(C::Expired) | E::InvalidCertificate(C::ExpiredContext { .. }) => {
            format!("server certificate has expired (rustls: {e})")
        }
        E::InvalidCertificate(C::NotValidYet) | E::InvalidCertificate(C::NotValidYetContext { .. }) => {
            format!("server certificate is not valid yet (check the clock) (rustls: {e})")
        }
        E::AlertReceived(A::CertificateRequired) => {
            "server requires a client certificate (set client_cert_file and client_key_file)".into()
        }
        E::AlertReceived(a @ (A::BadCertificate | A::UnknownCA | A::CertificateUnknown | A::AccessDenied | A::DecryptError)) => {
            format!("server rejected the client certificate (TLS alert {a:?}); is it signed by a CA the receiver trusts?")
        }
        E::AlertReceived(a) => format!("server ended the TLS session with alert {a:?}"),
        // Our own verifier's words (pinned fingerprint) need no prefix.
        E::General(m) => m.clone(),
        _ => format!("TLS: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validity_is_read_from_rcgen_certificates() {
        let mut p = rcgen::CertificateParams::new(vec!["localhost".into()]).unwrap_or_else(|e| panic!("{e}"));
        p.not_before = rcgen::date_time_ymd(2021, 3, 4);
        p.not_after = rcgen::date_time_ymd(2055, 6, 7);
        let key = rcgen::KeyPair::generate().unwrap_or_else(|e| panic!("{e}"));
        let cert = p.self_signed(&key).unwrap_or_else(|e| panic!("{e}"));
        let (nb, na) = validity(cert.der()).unwrap_or_else(|| panic!("no validity"));
        assert_eq!(crate::timefmt::rfc3339_ms(nb), "2021-03-04T00:00:00.000Z");
        assert_eq!(crate::timefmt::rfc3339_ms(na), "2055-06-07T00:00:00.000Z");
        assert_eq!(validity(&cert.der()[..40]), None);
        assert_eq!(validity(&[]), None);
    }

    #[test]
    fn der_reader_survives_garbage() {
        for n in 0..512u32 {
            let junk: Vec<u8> = (0..n).map(|i| (i.wrapping_mul(2_654_435_761) >> 7) as u8).collect();
            let _ = validity(&junk);
        }
        assert_eq!(hex_colon(&[0xab, 0x01]), "AB:01");
    }
}
