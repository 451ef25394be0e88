//! The firmware bundle (`.fwb`): one file that carries a whole system slot to an
//! appliance. `cargo xtask bundle` writes it; the appliance's PID 1 checks it
//! before a single byte reaches a slot (firmware/src/update/). One crate for both
//! sides, so the writer and the reader cannot drift.
//!
//! Layout (all integers little-endian):
//!
//! | offset    | bytes | what                                                          |
//! |-----------|-------|---------------------------------------------------------------|
//! | 0         | 8     | `FWBUNDLE`                                                    |
//! | 8         | 4     | N, the manifest's length (at most [`MAX_MANIFEST`])           |
//! | 12        | N     | the manifest, JSON ([`Manifest`])                             |
//! | 12 + N    | 64    | Ed25519 signature over [`SIGNING_CONTEXT`] followed by the manifest |
//! | 76 + N    | rest  | the payload: the slot's file system image, zstd-compressed    |
//!
//! The signature covers the manifest; the manifest names the payload's sizes and
//! the SHA-256 of both the compressed bytes and the decompressed image, so the
//! payload is covered through it. The compressed hash is checked first: the
//! decompressor never reads a byte that was not signed (and a changed byte that
//! happens to decompress to the same image is still refused).

pub mod boot;

use ring::signature::{ED25519, Ed25519KeyPair, KeyPair, UnparsedPublicKey};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{PrivatePkcs8KeyDer, SubjectPublicKeyInfoDer};
use serde::{Deserialize, Serialize};
use std::io::Read;
use thiserror::Error;

pub const MAGIC: &[u8; 8] = b"FWBUNDLE";
/// What the signature is over, ahead of the manifest (no other signed message starts so).
pub const SIGNING_CONTEXT: &[u8] = b"flowwarden firmware bundle v1\0";
pub const MAX_MANIFEST: u32 = 64 * 1024;
pub const FORMAT: u32 = 1;
pub const PRODUCT: &str = "flowwarden";
/// The DER prefix of an Ed25519 SubjectPublicKeyInfo (RFC 8410), before the 32 key bytes.
const SPKI_ED25519: [u8; 12] = [0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00];

/// What a bundle says about itself; signed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub format: u32,
    pub product: String,
    pub board: String,
    /// `x86_64` or `aarch64` (Rust's names, as `std::env::consts::ARCH`).
    pub arch: String,
    pub version: String,
    /// Anti-rollback floor: a box refuses a bundle whose epoch is below its own.
    pub epoch: u32,
    pub compression: String,
    /// Bytes of payload after the signature (the compressed image).
    pub compressed_size: u64,
    /// SHA-256 of those bytes as they are in the file, lower-case hex.
    pub compressed_sha256: String,
    /// Bytes of the decompressed slot image.
    pub payload_size: u64,
    /// SHA-256 of the decompressed slot image, lower-case hex.
    pub payload_sha256: String,
}

/// Why a bundle is not installed. The first word of the message names the check.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum Refusal {
    #[error("format: {0}")]
    Format(String),
    #[error("signature: {0}")]
    Signature(String),
    #[error("product: {0}")]
    Product(String),
    #[error("board: {0}")]
    Board(String),
    #[error("arch: {0}")]
    Arch(String),
    #[error("epoch: {0}")]
    Epoch(String),
    #[error("size: {0}")]
    Size(String),
    #[error("hash: {0}")]
    Hash(String),
}

#[derive(Debug, Error)]
pub enum KeyError {
    #[error("not a PEM file with a {0} block")]
    Pem(&'static str),
    #[error("not an Ed25519 key: {0}")]
    NotEd25519(String),
}

/// A trusted update key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PublicKey(pub [u8; 32]);

impl PublicKey {
    /// Reads a `-----BEGIN PUBLIC KEY-----` PEM (what `openssl pkey -pubout` writes).
    pub fn from_pem(text: &[u8]) -> Result<PublicKey, KeyError> {
        let der = SubjectPublicKeyInfoDer::from_pem_slice(text).map_err(|_| KeyError::Pem("PUBLIC KEY"))?;
        let d: &[u8] = der.as_ref();
        if d.len() != 44 || d[..12] != SPKI_ED25519 {
            return Err(KeyError::NotEd25519(format!("a {}-byte public key of another algorithm", d.len())));
        }
        let mut k = [0u8; 32];
        k.copy_from_slice(&d[12..]);
        Ok(PublicKey(k))
    }

    pub fn to_pem(&self) -> String {
        let mut der = SPKI_ED25519.to_vec();
        der.extend_from_slice(&self.0);
        pem("PUBLIC KEY", &der)
    }

    /// Short name for messages: the first 8 bytes of the key's SHA-256, hex.
    pub fn fingerprint(&self) -> String {
        hex(&ring::digest::digest(&ring::digest::SHA256, &self.0).as_ref()[..8])
    }
}

/// A signing key (PKCS#8 PEM, as `openssl genpkey -algorithm ed25519` writes it).
pub struct SigningKey(Ed25519KeyPair);

impl SigningKey {
    pub fn from_pem(text: &[u8]) -> Result<SigningKey, KeyError> {
        let der = PrivatePkcs8KeyDer::from_pem_slice(text).map_err(|_| KeyError::Pem("PRIVATE KEY"))?;
        // OpenSSL writes PKCS#8 v1 (no public key inside): the "maybe unchecked" reader takes it.
        Ed25519KeyPair::from_pkcs8_maybe_unchecked(der.secret_pkcs8_der())
            .map(SigningKey)
            .map_err(|e| KeyError::NotEd25519(e.to_string()))
    }

    /// A fresh key as PKCS#8 PEM (development keys; tests make throwaway ones).
    pub fn generate_pem() -> Result<String, KeyError> {
        let rng = ring::rand::SystemRandom::new();
        let doc = Ed25519KeyPair::generate_pkcs8(&rng).map_err(|e| KeyError::NotEd25519(e.to_string()))?;
        Ok(pem("PRIVATE KEY", doc.as_ref()))
    }

    pub fn public(&self) -> PublicKey {
        let mut k = [0u8; 32];
        k.copy_from_slice(self.0.public_key().as_ref());
        PublicKey(k)
    }

    pub fn sign(&self, manifest_json: &[u8]) -> [u8; 64] {
        let mut msg = SIGNING_CONTEXT.to_vec();
        msg.extend_from_slice(manifest_json);
        let mut sig = [0u8; 64];
        sig.copy_from_slice(self.0.sign(&msg).as_ref());
        sig
    }
}

/// Magic, manifest length, manifest and signature: what goes before the payload.
pub fn header_bytes(manifest_json: &[u8], signature: &[u8; 64]) -> Vec<u8> {
    let mut out = Vec::with_capacity(12 + manifest_json.len() + 64);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&(manifest_json.len() as u32).to_le_bytes());
    out.extend_from_slice(manifest_json);
    out.extend_from_slice(signature);
    out
}

/// A bundle's header as read, before anything is trusted.
#[derive(Debug, Clone)]
pub struct Header {
    pub manifest: Manifest,
    pub manifest_bytes: Vec<u8>,
    pub signature: [u8; 64],
    /// Where the payload starts in the file.
    pub payload_offset: u64,
}

/// Reads the header from the start of a bundle. Nothing in it is trusted yet:
/// [`check`] verifies it.
pub fn read_header(r: &mut impl Read) -> Result<Header, Refusal> {
    let short = |what: &str, e: std::io::Error| Refusal::Format(format!("the file ends inside the {what} ({e})"));
    let mut magic = [0u8; 8];
    r.read_exact(&mut magic).map_err(|e| short("magic", e))?;
    if &magic != MAGIC {
        return Err(Refusal::Format(format!(
            "not a flowwarden bundle (starts with {:?}, expected \"FWBUNDLE\")",
            String::from_utf8_lossy(&magic)
        )));
    }
    let mut len = [0u8; 4];
    r.read_exact(&mut len).map_err(|e| short("manifest length", e))?;
    let len = u32::from_le_bytes(len);
    if len == 0 || len > MAX_MANIFEST {
        return Err(Refusal::Format(format!(
            "manifest length {len} at offset 8 is outside 1..={MAX_MANIFEST}"
        )));
    }
    let mut manifest_bytes = vec![0u8; len as usize];
    r.read_exact(&mut manifest_bytes).map_err(|e| short("manifest", e))?;
    let mut signature = [0u8; 64];
    r.read_exact(&mut signature).map_err(|e| short("signature", e))?;
    let manifest: Manifest =
        serde_json::from_slice(&manifest_bytes).map_err(|e| Refusal::Format(format!("manifest at offset 12 is not valid: {e}")))?;
    Ok(Header {
        manifest,
        manifest_bytes,
        signature,
        payload_offset: 12 + u64::from(len) + 64,
    })
}

/// What the box installing a bundle requires of it.
#[derive(Debug, Clone)]
pub struct Expect<'a> {
    pub board: &'a str,
    pub arch: &'a str,
    /// The running system's epoch: older bundles are refused.
    pub min_epoch: u32,
    /// The target slot's size in bytes.
    pub slot_size: u64,
    /// The bundle file's length (payload truncated or appended to).
    pub file_size: u64,
}

/// Checks signature (first: nothing unsigned is even read further), then product,
/// format, board, arch, epoch and sizes. Returns the index of the key that signed.
pub fn check(h: &Header, keys: &[PublicKey], want: &Expect) -> Result<usize, Refusal> {
    if keys.is_empty() {
        return Err(Refusal::Signature("this box trusts no update key".into()));
    }
    let mut msg = SIGNING_CONTEXT.to_vec();
    msg.extend_from_slice(&h.manifest_bytes);
    let Some(which) = keys
        .iter()
        .position(|k| UnparsedPublicKey::new(&ED25519, &k.0).verify(&msg, &h.signature).is_ok())
    else {
        return Err(Refusal::Signature(format!(
            "not signed by any of the {} update key(s) this box trusts ({})",
            keys.len(),
            keys.iter().map(|k| k.fingerprint()).collect::<Vec<_>>().join(", ")
        )));
    };
    let m = &h.manifest;
    if m.product != PRODUCT {
        return Err(Refusal::Product(format!("bundle is for {:?}, this is {PRODUCT}", m.product)));
    }
    if m.format != FORMAT || m.compression != "zstd" {
        return Err(Refusal::Format(format!(
            "format {} with {} compression; this box reads format {FORMAT} with zstd",
            m.format, m.compression
        )));
    }
    if m.board != want.board {
        return Err(Refusal::Board(format!(
            "bundle is for board {}, this box is {}",
            m.board, want.board
        )));
    }
    if m.arch != want.arch {
        return Err(Refusal::Arch(format!("bundle is for {}, this box is {}", m.arch, want.arch)));
    }
    if m.epoch < want.min_epoch {
        return Err(Refusal::Epoch(format!(
            "bundle {} has security epoch {}, this box runs epoch {}: installing it would roll back security fixes",
            m.version, m.epoch, want.min_epoch
        )));
    }
    if m.payload_size > want.slot_size {
        return Err(Refusal::Size(format!(
            "the slot image is {} bytes, the slot holds {}",
            m.payload_size, want.slot_size
        )));
    }
    if h.payload_offset + m.compressed_size != want.file_size {
        return Err(Refusal::Size(format!(
            "the file is {} bytes, the manifest says {} (header {} + payload {}): truncated or appended to",
            want.file_size,
            h.payload_offset + m.compressed_size,
            h.payload_offset,
            m.compressed_size
        )));
    }
    for (name, h) in [("payload_sha256", &m.payload_sha256), ("compressed_sha256", &m.compressed_sha256)] {
        if h.len() != 64 || !h.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(Refusal::Format(format!("{name} is not 64 hex digits")));
        }
    }
    Ok(which)
}

/// A reader that hashes and counts what passes through it.
pub struct Hashing<R> {
    inner: R,
    ctx: ring::digest::Context,
    pub count: u64,
}

impl<R: Read> Hashing<R> {
    pub fn new(inner: R) -> Self {
        Hashing {
            inner,
            ctx: ring::digest::Context::new(&ring::digest::SHA256),
            count: 0,
        }
    }
    /// The SHA-256 of everything read so far, hex.
    pub fn finish(self) -> (u64, String) {
        (self.count, hex(self.ctx.finish().as_ref()))
    }
}

impl<R: Read> Read for Hashing<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.ctx.update(&buf[..n]);
        self.count += n as u64;
        Ok(n)
    }
}

/// SHA-256 of a byte slice, hex.
pub fn sha256_hex(data: &[u8]) -> String {
    hex(ring::digest::digest(&ring::digest::SHA256, data).as_ref())
}

pub fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn pem(label: &str, der: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut b64 = String::new();
    for c in der.chunks(3) {
        let n = (u32::from(c[0]) << 16) | (u32::from(*c.get(1).unwrap_or(&0)) << 8) | u32::from(*c.get(2).unwrap_or(&0));
        for i in 0..4 {
            if i <= c.len() {
                b64.push(T[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                b64.push('=');
            }
        }
    }
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(line));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest(payload: &[u8], compressed: &[u8]) -> Manifest {
        Manifest {
            format: FORMAT,
            product: PRODUCT.into(),
            board: "qemu-x86_64".into(),
            arch: "x86_64".into(),
            version: "1.2.3".into(),
            epoch: 2,
            compression: "zstd".into(),
            compressed_size: compressed.len() as u64,
            compressed_sha256: sha256_hex(compressed),
            payload_size: payload.len() as u64,
            payload_sha256: sha256_hex(payload),
        }
    }

    fn bundle(key: &SigningKey, m: &Manifest, payload: &[u8]) -> Vec<u8> {
        let json = serde_json::to_vec(m).unwrap();
        let mut out = header_bytes(&json, &key.sign(&json));
        out.extend_from_slice(payload);
        out
    }

    fn expect(file: &[u8]) -> Expect<'static> {
        Expect {
            board: "qemu-x86_64",
            arch: "x86_64",
            min_epoch: 2,
            slot_size: 1 << 20,
            file_size: file.len() as u64,
        }
    }

    #[test]
    fn a_signed_bundle_passes_and_every_check_names_itself() {
        let key = SigningKey::from_pem(SigningKey::generate_pem().unwrap().as_bytes()).unwrap();
        let other = SigningKey::from_pem(SigningKey::generate_pem().unwrap().as_bytes()).unwrap();
        let keys = [other.public(), key.public()];
        let m = manifest(b"slot image", b"zzzz");
        let file = bundle(&key, &m, b"zzzz");
        let h = read_header(&mut &file[..]).unwrap();
        assert_eq!(h.manifest, m);
        assert_eq!(h.payload_offset as usize, file.len() - 4);
        assert_eq!(check(&h, &keys, &expect(&file)), Ok(1));

        // Another key.
        let e = check(&h, &[other.public()], &expect(&file)).unwrap_err();
        assert!(matches!(e, Refusal::Signature(_)), "{e}");
        assert!(e.to_string().starts_with("signature: not signed by any of the 1"), "{e}");
        // One flipped bit in the manifest.
        let mut bad = file.clone();
        let at = bad.windows(5).position(|w| w == b"1.2.3").unwrap();
        bad[at] = b'9';
        let h2 = read_header(&mut &bad[..]).unwrap();
        assert!(matches!(check(&h2, &keys, &expect(&bad)), Err(Refusal::Signature(_))));
        // Board, arch, epoch, size each refused by name.
        let mut want = expect(&file);
        want.board = "qemu-aarch64";
        assert!(
            check(&h, &keys, &want)
                .unwrap_err()
                .to_string()
                .starts_with("board: bundle is for board qemu-x86_64")
        );
        let mut want = expect(&file);
        want.arch = "aarch64";
        assert!(matches!(check(&h, &keys, &want), Err(Refusal::Arch(_))));
        let mut want = expect(&file);
        want.min_epoch = 3;
        let e = check(&h, &keys, &want).unwrap_err().to_string();
        assert!(
            e.starts_with("epoch: bundle 1.2.3 has security epoch 2, this box runs epoch 3"),
            "{e}"
        );
        let mut want = expect(&file);
        want.slot_size = 5;
        assert!(matches!(check(&h, &keys, &want), Err(Refusal::Size(_))));
        // Truncated payload.
        let mut want = expect(&file);
        want.file_size -= 1;
        assert!(check(&h, &keys, &want).unwrap_err().to_string().contains("truncated or appended"));
        // No key at all.
        assert!(matches!(check(&h, &[], &expect(&file)), Err(Refusal::Signature(_))));
    }

    #[test]
    fn damaged_headers_are_format_errors_never_panics() {
        assert!(matches!(read_header(&mut &b""[..]), Err(Refusal::Format(_))));
        assert!(
            read_header(&mut &b"NOTABUNDLE.."[..])
                .unwrap_err()
                .to_string()
                .contains("not a flowwarden bundle")
        );
        let mut f = MAGIC.to_vec();
        f.extend_from_slice(&u32::MAX.to_le_bytes());
        assert!(read_header(&mut &f[..]).unwrap_err().to_string().contains("outside"));
        let mut f = MAGIC.to_vec();
        f.extend_from_slice(&3u32.to_le_bytes());
        f.extend_from_slice(b"{}");
        assert!(
            read_header(&mut &f[..])
                .unwrap_err()
                .to_string()
                .contains("ends inside the manifest")
        );
        f.push(b' ');
        f.extend_from_slice(&[0u8; 64]);
        assert!(read_header(&mut &f[..]).unwrap_err().to_string().contains("manifest at offset 12"));
        // Every prefix of a real header fails cleanly.
        let key = SigningKey::from_pem(SigningKey::generate_pem().unwrap().as_bytes()).unwrap();
        let file = bundle(&key, &manifest(b"x", b""), b"");
        for n in 0..file.len() {
            assert!(read_header(&mut &file[..n]).is_err());
        }
    }

    #[test]
    fn keys_round_trip_through_pem_and_other_algorithms_are_named() {
        let key = SigningKey::from_pem(SigningKey::generate_pem().unwrap().as_bytes()).unwrap();
        let pem = key.public().to_pem();
        assert!(pem.starts_with("-----BEGIN PUBLIC KEY-----\n"));
        assert_eq!(PublicKey::from_pem(pem.as_bytes()).unwrap(), key.public());
        assert!(matches!(PublicKey::from_pem(b"nothing"), Err(KeyError::Pem(_))));
        // An EC P-256 public key (91 bytes of SPKI) is not Ed25519.
        let p256 = "-----BEGIN PUBLIC KEY-----\nMFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEyd/P2oqgXW1ROV7MdqyRFcVpZ8j3\nqrWGrsaG3ZRGWtjIZc+4ryKfMC3UASN+WFMnHMQTgoXnEFMb4/n8DfKD+g==\n-----END PUBLIC KEY-----\n";
        assert!(matches!(PublicKey::from_pem(p256.as_bytes()), Err(KeyError::NotEd25519(_))));
    }

    #[test]
    fn hashing_reader_counts_and_hashes() {
        let mut r = Hashing::new(&b"abc"[..]);
        let mut v = Vec::new();
        r.read_to_end(&mut v).unwrap();
        assert_eq!(
            r.finish(),
            (3, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad".into())
        );
    }
}
