//! Backup and restore of what a box has learned and been told, without its
//! flows: the configuration file, the certificates and keys under `pki/` and
//! `web/`, and the state file's accounts, alerts, acknowledgements, detector
//! state (baselines) and SIEM spools. A replacement box (RMA) restored from it
//! keeps its week of learning.
//!
//! One file, encrypted whole with a passphrase (argon2id → ChaCha20-Poly1305;
//! the header is authenticated too):
//!
//! | bytes | what                                                          |
//! |-------|---------------------------------------------------------------|
//! | 8     | `FWBACKUP`                                                    |
//! | 4     | N, the header's length (little-endian, at most 64 KiB)        |
//! | N     | the header, JSON ([`Header`]: versions, KDF parameters, nonce) |
//! | rest  | the sealed archive (postcard [`Archive`]) and its 16-byte tag |
//!
//! [`create`] reads the state file in one read transaction (consistent while
//! `run` writes). [`restore`] applies an archive to a data directory no
//! appliance runs on; while one runs, [`stage`] leaves it in
//! `restore/pending.bin` (0600) and `run` applies it when it next starts
//! ([`apply_pending`]), before it opens anything.

use crate::store::schema::{ALERT_ACKS, ALERTS, DETECT_STATE, FORWARD_STATE, SPOOL, SPOOL_META, TOKENS, USERS};
use crate::store::{DataDir, StoreError};
use redb::{ReadableDatabase, ReadableTable};
use ring::aead::{Aad, CHACHA20_POLY1305, LessSafeKey, Nonce, UnboundKey};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use thiserror::Error;

pub const MAGIC: &[u8; 8] = b"FWBACKUP";
const FORMAT: u32 = 1;
const MAX_HEADER: u32 = 64 * 1024;
/// Largest backup read (state files of a busy box are tens of MiB; the page holds
/// an upload in memory, so this bounds its memory too).
pub const MAX_ARCHIVE: u64 = 256 << 20;
/// Where a staged restore waits for the next start.
pub const PENDING: &str = "restore/pending.bin";
/// The configuration file (crate::config::SAVED_CONFIG; a test keeps them equal).
const CONFIG: &str = "flowwarden.toml";
/// Directories whose files are taken whole.
const FILE_DIRS: &[&str] = &["pki", "web"];
/// argon2id cost: 64 MiB, 3 passes (a backup is made and opened rarely).
const KDF_KIB: u32 = 64 * 1024;
const KDF_PASSES: u32 = 3;
/// Most argon2 memory a backup file may ask for when it is opened.
const MAX_KDF_KIB: u32 = 256 * 1024;
/// Shortest passphrase accepted for a new backup.
pub const MIN_PASSPHRASE: usize = 12;

/// The `&str -> bytes` state tables a backup carries, by name.
const STR_TABLES: &[(&str, redb::TableDefinition<&str, &[u8]>)] = &[
    ("users", USERS),
    ("tokens", TOKENS),
    ("alerts", ALERTS),
    ("alert_acks", ALERT_ACKS),
    ("detect_state", DETECT_STATE),
    ("forward_state", FORWARD_STATE),
    ("spool_meta", SPOOL_META),
];

#[derive(Debug, Error)]
pub enum BackupError {
    #[error("{}: {what}", path.display())]
    Format { path: PathBuf, what: String },
    #[error("{}: wrong passphrase, or the file was changed after it was written", path.display())]
    Passphrase { path: PathBuf },
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: std::io::Error },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("the passphrase is {0} characters; a backup needs at least {MIN_PASSPHRASE}")]
    ShortPassphrase(usize),
    #[error("{0}")]
    Crypto(String),
}

fn io(path: &Path) -> impl Fn(std::io::Error) -> BackupError + '_ {
    move |source| BackupError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Said in clear before the sealed archive (and authenticated with it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Header {
    pub format: u32,
    pub product: String,
    /// The firmware that wrote it.
    pub version: String,
    pub created_ms: u64,
    pub kdf: String,
    pub kdf_kib: u32,
    pub kdf_passes: u32,
    /// Hex.
    pub salt: String,
    pub cipher: String,
    /// Hex.
    pub nonce: String,
}

/// A state table's rows: key, value.
pub type TableRows = Vec<(String, Vec<u8>)>;

/// What a backup holds.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Archive {
    /// Data-directory-relative path, permission bits, contents.
    pub files: Vec<(String, u32, Vec<u8>)>,
    /// Table name → rows.
    pub tables: Vec<(String, TableRows)>,
    /// The spool: (destination, sequence) → entry.
    pub spool: Vec<(String, u64, Vec<u8>)>,
}

impl Archive {
    /// One line for people: what is inside.
    pub fn summary(&self) -> String {
        let rows = |name: &str| self.tables.iter().find(|(n, _)| n == name).map(|(_, r)| r.len()).unwrap_or(0);
        let has_config = self.files.iter().any(|(p, _, _)| p == CONFIG);
        format!(
            "{} file(s){}; {} user(s), {} token(s), {} alert(s), {} detector state row(s), {} spooled event(s)",
            self.files.len(),
            if has_config { " (configuration included)" } else { "" },
            rows("users"),
            rows("tokens"),
            rows("alerts"),
            rows("detect_state"),
            self.spool.len()
        )
    }
}

/// Collects what a backup of `dir` holds (the state file in one read transaction).
pub fn collect(dir: &DataDir) -> Result<Archive, BackupError> {
    let mut a = Archive::default();
    let config = dir.root().join(CONFIG);
    if config.exists() {
        a.files.push(read_file(dir.root(), &config)?);
    }
    for sub in FILE_DIRS {
        let d = dir.root().join(sub);
        let Ok(entries) = std::fs::read_dir(&d) else { continue };
        let mut names: Vec<PathBuf> = entries.flatten().map(|e| e.path()).filter(|p| p.is_file()).collect();
        names.sort();
        for p in names {
            a.files.push(read_file(dir.root(), &p)?);
        }
    }
    let state = dir.state();
    if state.exists() {
        let db = crate::store::open_readonly(&state)?;
        let db_err = |e: redb::Error| BackupError::Store(StoreError::db(&state, e));
        let txn = db.begin_read().map_err(|e| db_err(e.into()))?;
        for (name, def) in STR_TABLES {
            let mut rows = Vec::new();
            match txn.open_table(*def) {
                Ok(t) => {
                    for r in t.iter().map_err(|e| db_err(e.into()))? {
                        let (k, v) = r.map_err(|e| db_err(e.into()))?;
                        rows.push((k.value().to_string(), v.value().to_vec()));
                    }
                }
                Err(redb::TableError::TableDoesNotExist(_)) => {}
                Err(e) => return Err(db_err(e.into())),
            }
            a.tables.push((name.to_string(), rows));
        }
        match txn.open_table(SPOOL) {
            Ok(t) => {
                for r in t.iter().map_err(|e| db_err(e.into()))? {
                    let (k, v) = r.map_err(|e| db_err(e.into()))?;
                    let (dest, seq) = k.value();
                    a.spool.push((dest.to_string(), seq, v.value().to_vec()));
                }
            }
            Err(redb::TableError::TableDoesNotExist(_)) => {}
            Err(e) => return Err(db_err(e.into())),
        }
    }
    Ok(a)
}

fn read_file(root: &Path, p: &Path) -> Result<(String, u32, Vec<u8>), BackupError> {
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::metadata(p).map_err(io(p))?;
    if meta.len() > 16 << 20 {
        return Err(BackupError::Format {
            path: p.to_path_buf(),
            what: format!("{} bytes: not a configuration or key file (limit 16 MiB)", meta.len()),
        });
    }
    let rel = p.strip_prefix(root).unwrap_or(p).to_string_lossy().to_string();
    Ok((rel, meta.permissions().mode() & 0o777, std::fs::read(p).map_err(io(p))?))
}

fn key_from(passphrase: &str, salt: &[u8], kib: u32, passes: u32) -> Result<LessSafeKey, BackupError> {
    let params = argon2::Params::new(kib, passes, 1, Some(32)).map_err(|e| BackupError::Crypto(e.to_string()))?;
    let a = argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params);
    let mut k = [0u8; 32];
    a.hash_password_into(passphrase.as_bytes(), salt, &mut k)
        .map_err(|e| BackupError::Crypto(e.to_string()))?;
    let unbound = UnboundKey::new(&CHACHA20_POLY1305, &k).map_err(|_| BackupError::Crypto("key setup".into()))?;
    Ok(LessSafeKey::new(unbound))
}

fn random<const N: usize>() -> Result<[u8; N], BackupError> {
    use ring::rand::SecureRandom;
    let mut b = [0u8; N];
    ring::rand::SystemRandom::new()
        .fill(&mut b)
        .map_err(|_| BackupError::Crypto("no randomness from the operating system".into()))?;
    Ok(b)
}

/// The sealed file for `archive`.
pub fn seal(archive: &Archive, passphrase: &str, created_ms: u64) -> Result<Vec<u8>, BackupError> {
    let n = passphrase.chars().count();
    if n < MIN_PASSPHRASE {
        return Err(BackupError::ShortPassphrase(n));
    }
    let salt = random::<16>()?;
    let nonce = random::<12>()?;
    let header = Header {
        format: FORMAT,
        product: "flowwarden".into(),
        version: crate::version::version().to_string(),
        created_ms,
        kdf: "argon2id".into(),
        kdf_kib: KDF_KIB,
        kdf_passes: KDF_PASSES,
        salt: fwbundle::hex(&salt),
        cipher: "chacha20-poly1305".into(),
        nonce: fwbundle::hex(&nonce),
    };
    let json = serde_json::to_vec(&header).map_err(|e| BackupError::Crypto(e.to_string()))?;
    let mut body = postcard::to_allocvec(archive).map_err(|e| BackupError::Crypto(e.to_string()))?;
    let key = key_from(passphrase, &salt, KDF_KIB, KDF_PASSES)?;
    key.seal_in_place_append_tag(Nonce::assume_unique_for_key(nonce), Aad::from(&json), &mut body)
        .map_err(|_| BackupError::Crypto("sealing failed".into()))?;
    let mut out = Vec::with_capacity(12 + json.len() + body.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&(json.len() as u32).to_le_bytes());
    out.extend_from_slice(&json);
    out.extend_from_slice(&body);
    Ok(out)
}

/// Opens a sealed file (`path` names it in errors): header, then the archive.
pub fn open(bytes: &[u8], passphrase: &str, path: &Path) -> Result<(Header, Archive), BackupError> {
    let bad = |what: String| BackupError::Format {
        path: path.to_path_buf(),
        what,
    };
    if bytes.len() < 12 || &bytes[..8] != MAGIC {
        return Err(bad(format!(
            "not a flowwarden backup (starts with {:?}, expected \"FWBACKUP\")",
            String::from_utf8_lossy(&bytes[..bytes.len().min(8)])
        )));
    }
    let len = u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]);
    if len == 0 || len > MAX_HEADER || 12 + len as usize > bytes.len() {
        return Err(bad(format!(
            "header length {len} at offset 8 does not fit the file ({} bytes)",
            bytes.len()
        )));
    }
    let json = &bytes[12..12 + len as usize];
    let header: Header = serde_json::from_slice(json).map_err(|e| bad(format!("header at offset 12: {e}")))?;
    if header.format != FORMAT || header.kdf != "argon2id" || header.cipher != "chacha20-poly1305" {
        return Err(bad(format!(
            "format {} ({}, {}); this version reads format {FORMAT} (argon2id, chacha20-poly1305)",
            header.format, header.kdf, header.cipher
        )));
    }
    // Costs from the file are bounded: a crafted header must not take the box's memory
    // (a mini PC has 1-2 GiB; this version writes 64 MiB, 3 passes).
    if header.kdf_kib > MAX_KDF_KIB || header.kdf_passes > 16 {
        return Err(bad(format!(
            "key derivation costs {} KiB × {} passes are beyond what this box accepts",
            header.kdf_kib, header.kdf_passes
        )));
    }
    let salt = unhex(&header.salt).ok_or_else(|| bad("salt is not hex".into()))?;
    let nonce: [u8; 12] = unhex(&header.nonce)
        .and_then(|n| n.try_into().ok())
        .ok_or_else(|| bad("nonce is not 12 bytes of hex".into()))?;
    let key = key_from(passphrase, &salt, header.kdf_kib, header.kdf_passes)?;
    let mut body = bytes[12 + len as usize..].to_vec();
    let plain = key
        .open_in_place(Nonce::assume_unique_for_key(nonce), Aad::from(json), &mut body)
        .map_err(|_| BackupError::Passphrase { path: path.to_path_buf() })?;
    let archive: Archive = postcard::from_bytes(plain).map_err(|e| bad(format!("archive: {e}")))?;
    for (p, _, _) in &archive.files {
        check_path(p).map_err(|w| bad(format!("file {p:?}: {w}")))?;
    }
    Ok((header, archive))
}

/// A restored file lands only where a backup takes files from.
fn check_path(p: &str) -> Result<(), &'static str> {
    let path = Path::new(p);
    if p == CONFIG {
        return Ok(());
    }
    let mut parts = path.components();
    let first = parts.next().and_then(|c| c.as_os_str().to_str());
    let ok_dir = first.is_some_and(|f| FILE_DIRS.contains(&f));
    let rest: Vec<_> = parts.collect();
    if ok_dir && rest.len() == 1 && matches!(rest[0], std::path::Component::Normal(_)) {
        Ok(())
    } else {
        Err("outside the configuration file, pki/ and web/")
    }
}

/// Reads and opens a backup file (bounded).
pub fn read(path: &Path, passphrase: &str) -> Result<(Header, Archive), BackupError> {
    let len = std::fs::metadata(path).map_err(io(path))?.len();
    if len > MAX_ARCHIVE {
        return Err(BackupError::Format {
            path: path.to_path_buf(),
            what: format!("{len} bytes: larger than any backup ({MAX_ARCHIVE})"),
        });
    }
    let bytes = std::fs::read(path).map_err(io(path))?;
    open(&bytes, passphrase, path)
}

/// The state rows of an archive, replacing the tables it carries.
struct Rows<'a>(&'a Archive);

impl crate::store::rows::StateRows for Rows<'_> {
    fn stage(&mut self, txn: &redb::WriteTransaction) -> Result<(), redb::Error> {
        for (name, def) in STR_TABLES {
            let Some((_, rows)) = self.0.tables.iter().find(|(n, _)| n == name) else {
                continue;
            };
            let mut t = txn.open_table(*def)?;
            t.retain(|_, _| false)?;
            for (k, v) in rows {
                t.insert(k.as_str(), v.as_slice())?;
            }
        }
        let mut t = txn.open_table(SPOOL)?;
        t.retain(|_, _| false)?;
        for (dest, seq, v) in &self.0.spool {
            t.insert((dest.as_str(), *seq), v.as_slice())?;
        }
        Ok(())
    }
}

/// Applies `archive` to a data directory no appliance runs on: files first
/// (each replaced whole), then the state tables in one transaction.
pub fn restore(dir: &DataDir, archive: &Archive) -> Result<(), BackupError> {
    for (rel, mode, bytes) in &archive.files {
        check_path(rel).map_err(|w| BackupError::Format {
            path: PathBuf::from(rel),
            what: w.to_string(),
        })?;
        let p = dir.root().join(rel);
        crate::fsutil::write_atomic(&p, bytes, *mode & 0o777).map_err(|e| BackupError::Io {
            path: p.clone(),
            source: std::io::Error::other(e.to_string()),
        })?;
    }
    crate::store::commit_state_rows(dir, &mut Rows(archive))?;
    Ok(())
}

/// Leaves an opened archive for the next start of `run` (0600: it holds keys).
pub fn stage(dir: &DataDir, archive: &Archive) -> Result<PathBuf, BackupError> {
    let p = dir.root().join(PENDING);
    let bytes = postcard::to_allocvec(archive).map_err(|e| BackupError::Crypto(e.to_string()))?;
    crate::fsutil::write_atomic(&p, &bytes, 0o600).map_err(|e| BackupError::Io {
        path: p.clone(),
        source: std::io::Error::other(e.to_string()),
    })?;
    Ok(p)
}

/// At `run`'s start: a staged restore is applied and removed. Ok(None): none.
pub fn apply_pending(dir: &DataDir) -> Result<Option<String>, BackupError> {
    let p = dir.root().join(PENDING);
    let bytes = match std::fs::read(&p) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io(&p)(e)),
    };
    let archive: Archive = match postcard::from_bytes(&bytes) {
        Ok(a) => a,
        Err(e) => {
            let aside = p.with_extension("rejected");
            let _ = std::fs::rename(&p, &aside);
            return Err(BackupError::Format {
                path: aside,
                what: format!("the staged restore is damaged ({e}); nothing was applied"),
            });
        }
    };
    restore(dir, &archive)?;
    std::fs::remove_file(&p).map_err(io(&p))?;
    Ok(Some(archive.summary()))
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) || s.len() > 128 {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn archive() -> Archive {
        Archive {
            files: vec![
                (CONFIG.into(), 0o644, b"[web]\n".to_vec()),
                ("pki/siem.key".into(), 0o600, b"KEY".to_vec()),
            ],
            tables: vec![("users".into(), vec![("tech".into(), vec![1, 2, 3])])],
            spool: vec![("siem".into(), 7, b"{}".to_vec())],
        }
    }

    #[test]
    fn the_config_file_is_the_one_the_appliance_reads() {
        assert_eq!(CONFIG, crate::config::SAVED_CONFIG);
    }

    #[test]
    fn sealed_archives_open_only_with_their_passphrase_and_unchanged() {
        let a = archive();
        let sealed = seal(&a, "correct horse battery", 1).unwrap();
        // Secrets are not readable in the file.
        assert!(!sealed.windows(3).any(|w| w == b"KEY"));
        let p = Path::new("b.fwbk");
        let (h, back) = open(&sealed, "correct horse battery", p).unwrap();
        assert_eq!(back, a);
        assert_eq!((h.kdf.as_str(), h.cipher.as_str()), ("argon2id", "chacha20-poly1305"));
        let e = open(&sealed, "wrong horse battery", p).unwrap_err().to_string();
        assert_eq!(e, "b.fwbk: wrong passphrase, or the file was changed after it was written");
        // A changed header (authenticated) or body byte is refused the same way.
        for at in [20, sealed.len() - 1] {
            let mut t = sealed.clone();
            t[at] ^= 1;
            assert!(open(&t, "correct horse battery", p).is_err(), "byte {at}");
        }
        assert!(matches!(seal(&a, "short", 1), Err(BackupError::ShortPassphrase(5))));
    }

    #[test]
    fn damaged_files_are_format_errors_never_panics() {
        let p = Path::new("x");
        for bad in [&b""[..], b"FWBACKUP", b"NOTABACKUP..", b"FWBACKUP\xff\xff\xff\xff{}"] {
            assert!(matches!(open(bad, "correct horse battery", p), Err(BackupError::Format { .. })));
        }
        let sealed = seal(&archive(), "correct horse battery", 1).unwrap();
        for n in 0..80.min(sealed.len()) {
            assert!(open(&sealed[..n], "correct horse battery", p).is_err());
        }
        // Costs beyond the box's means are refused before any work.
        let mut h: Header =
            serde_json::from_slice(&sealed[12..12 + u32::from_le_bytes(sealed[8..12].try_into().unwrap()) as usize]).unwrap();
        h.kdf_kib = MAX_KDF_KIB + 1;
        let json = serde_json::to_vec(&h).unwrap();
        let mut f = MAGIC.to_vec();
        f.extend_from_slice(&(json.len() as u32).to_le_bytes());
        f.extend_from_slice(&json);
        let e = open(&f, "correct horse battery", p).unwrap_err().to_string();
        assert!(e.contains("beyond what this box accepts"), "{e}");
    }

    #[test]
    fn restored_files_stay_inside_the_data_directory() {
        assert!(check_path("flowwarden.toml").is_ok());
        assert!(check_path("pki/ca.pem").is_ok());
        assert!(check_path("web/key.pem").is_ok());
        for bad in ["../etc/passwd", "/etc/shadow", "pki/../../x", "pki/a/b", "state.redb", "web"] {
            assert!(check_path(bad).is_err(), "{bad}");
        }
    }
}
