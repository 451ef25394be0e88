//! Installs a bundle into the inactive slot (run by PID 1, which owns the disk):
//! checks the signed manifest against this box, decompresses the whole payload
//! once to check its hash before a byte is written, marks the slot not bootable,
//! streams the payload onto the slot's partition, reads it back and compares, and
//! only then puts the slot first in the boot order, on trial. Any refusal or failure
//! leaves the slot not bootable (or untouched) and the boot order as it was.
//! Bundles are streamed: memory use does not depend on their size.

use super::grubenv::{self, Env};
use super::slots::{self, Slot};
use fwbundle::{Expect, Hashing, PublicKey, Refusal};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use thiserror::Error;

#[derive(Debug, Error)]
pub enum UpdateError {
    /// The bundle is not for this box (signature, board, arch, epoch, size, hash): exit 1.
    #[error("{0}")]
    Refused(#[from] Refusal),
    /// Reading, writing or downloading went wrong: exit 2.
    #[error("{0}")]
    Failed(String),
}

fn failed(what: impl std::fmt::Display, path: &Path, e: impl std::fmt::Display) -> UpdateError {
    UpdateError::Failed(format!("{what} {}: {e}", path.display()))
}

/// Where and for what box a bundle is installed.
#[derive(Debug, Clone)]
pub struct Target {
    pub slot: Slot,
    /// The slot's partition (a file in tests).
    pub device: PathBuf,
    pub slot_size: u64,
    pub grubenv: PathBuf,
    pub keys: Vec<PublicKey>,
    pub board: String,
    pub arch: String,
    /// The running system's security epoch.
    pub epoch: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Staged {
    pub version: String,
    pub slot: Slot,
}

const CHUNK: usize = 1 << 20;

/// Checks the bundle completely, then writes it to `t.slot`. `say` gets a line per step.
pub fn stage(bundle: &Path, t: &Target, say: &mut dyn FnMut(&str)) -> Result<Staged, UpdateError> {
    let mut f = std::fs::File::open(bundle).map_err(|e| failed("cannot open", bundle, e))?;
    let file_size = f.metadata().map_err(|e| failed("cannot stat", bundle, e))?.len();
    let header = fwbundle::read_header(&mut f)?;
    let key = fwbundle::check(
        &header,
        &t.keys,
        &Expect {
            board: &t.board,
            arch: &t.arch,
            min_epoch: t.epoch,
            slot_size: t.slot_size,
            file_size,
        },
    )?;
    let m = &header.manifest;
    say(&format!(
        "bundle {} for {} ({}), security epoch {}, signed by update key {}: signature, board, arch, epoch and size are right",
        m.version,
        m.board,
        m.arch,
        m.epoch,
        t.keys[key].fingerprint()
    ));

    // Pass 0: the compressed bytes are the signed ones; the decompressor reads nothing else.
    let (n0, hash0) = compressed_hash(&mut f, &header, bundle)?;
    if n0 != m.compressed_size || hash0 != m.compressed_sha256 {
        return Err(Refusal::Hash(format!(
            "the compressed payload is {n0} bytes with SHA-256 {hash0}, the signed manifest says {} bytes with {}",
            m.compressed_size, m.compressed_sha256
        ))
        .into());
    }

    // Pass 1: the whole payload decompresses to exactly what the manifest signed.
    let (n, hash) = decode(&mut f, &header, &mut std::io::sink(), bundle)?;
    if n != m.payload_size || hash != m.payload_sha256 {
        return Err(Refusal::Hash(format!(
            "the payload decompresses to {n} bytes with SHA-256 {hash}, the signed manifest says {} bytes with {}",
            m.payload_size, m.payload_sha256
        ))
        .into());
    }
    say(&format!("payload checked: {n} bytes, SHA-256 {}…", &hash[..16]));

    // Nothing bootable in the slot while it is written (a power cut leaves it skipped).
    edit_env(&t.grubenv, |env| slots::invalidate(env, t.slot))?;
    say(&format!("slot {} marked not bootable while it is written", t.slot.as_str()));

    // Pass 2: onto the partition, hashing again (the file could change in between).
    let mut dev = std::fs::OpenOptions::new()
        .write(true)
        .open(&t.device)
        .map_err(|e| failed("cannot open the slot", &t.device, e))?;
    let (n2, hash2) = decode(&mut f, &header, &mut dev, bundle)?;
    dev.sync_all().map_err(|e| failed("cannot sync the slot", &t.device, e))?;
    drop(dev);
    if n2 != n || hash2 != hash {
        return Err(UpdateError::Failed(format!(
            "{} changed while it was written ({n2} bytes, SHA-256 {hash2}); slot {} left not bootable",
            bundle.display(),
            t.slot.as_str()
        )));
    }

    // Read back what the disk holds, not the page cache's copy.
    let (n3, hash3) = read_back(&t.device, n)?;
    if n3 != n || hash3 != hash {
        return Err(UpdateError::Failed(format!(
            "slot {} reads back {n3} bytes with SHA-256 {hash3}, not what was written ({hash}); left not bootable",
            t.slot.as_str()
        )));
    }
    say(&format!(
        "slot {} ({}) written and read back: {n} bytes, SHA-256 matches",
        t.slot.as_str(),
        t.device.display()
    ));
    edit_env(&t.grubenv, |env| slots::staged(env, t.slot, &m.version))?;
    say(&format!(
        "slot {} is first in the boot order, on trial for {} boots until it is marked good",
        t.slot.as_str(),
        fwbundle::boot::TRIES
    ));
    Ok(Staged {
        version: m.version.clone(),
        slot: t.slot,
    })
}

/// The compressed payload's length and SHA-256 as the file holds it.
fn compressed_hash(f: &mut std::fs::File, h: &fwbundle::Header, bundle: &Path) -> Result<(u64, String), UpdateError> {
    f.seek(SeekFrom::Start(h.payload_offset))
        .map_err(|e| failed("cannot read", bundle, e))?;
    let mut r = Hashing::new((&mut *f).take(h.manifest.compressed_size));
    std::io::copy(&mut r, &mut std::io::sink()).map_err(|e| failed("cannot read", bundle, e))?;
    Ok(r.finish())
}

/// Decompresses the payload into `out`; (bytes, SHA-256 hex). A payload that does not
/// decompress, or decompresses to more than the manifest says, is refused (hash).
fn decode(f: &mut std::fs::File, h: &fwbundle::Header, out: &mut dyn Write, bundle: &Path) -> Result<(u64, String), UpdateError> {
    f.seek(SeekFrom::Start(h.payload_offset))
        .map_err(|e| failed("cannot read", bundle, e))?;
    let compressed = (&mut *f).take(h.manifest.compressed_size);
    let dec = zstd::stream::read::Decoder::new(compressed).map_err(|e| failed("cannot start decompressing", bundle, e))?;
    // One byte more than signed is enough to know it is too long.
    let mut r = Hashing::new(dec.take(h.manifest.payload_size + 1));
    let mut buf = vec![0u8; CHUNK];
    loop {
        let k = match r.read(&mut buf) {
            Ok(0) => break,
            Ok(k) => k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => {
                return Err(Refusal::Hash(format!("the payload does not decompress after {} bytes: {e}", r.count)).into());
            }
        };
        out.write_all(&buf[..k])
            .map_err(|e| UpdateError::Failed(format!("writing the slot after {} bytes: {e}", r.count - k as u64)))?;
    }
    Ok(r.finish())
}

fn read_back(device: &Path, len: u64) -> Result<(u64, String), UpdateError> {
    let f = std::fs::File::open(device).map_err(|e| failed("cannot open the slot", device, e))?;
    // Drop the cached pages so the hash is over what the disk returns.
    let _ = rustix::fs::fadvise(&f, 0, None, rustix::fs::Advice::DontNeed);
    let mut r = Hashing::new(f.take(len));
    std::io::copy(&mut r, &mut std::io::sink()).map_err(|e| failed("cannot read back", device, e))?;
    Ok(r.finish())
}

/// Reads the 1024-byte grubenv, changes it, writes it back in place and syncs.
pub fn edit_env(path: &Path, change: impl FnOnce(&mut Env) -> Result<(), grubenv::EnvError>) -> Result<Env, UpdateError> {
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .map_err(|e| failed("cannot open", path, e))?;
    let mut block = Vec::with_capacity(grubenv::SIZE);
    (&mut f)
        .take(grubenv::SIZE as u64 + 1)
        .read_to_end(&mut block)
        .map_err(|e| failed("cannot read", path, e))?;
    let mut env = Env::parse(&block).map_err(|e| failed("cannot use", path, e))?;
    change(&mut env).map_err(|e| failed("cannot change", path, e))?;
    let out = env.render().map_err(|e| failed("cannot change", path, e))?;
    f.seek(SeekFrom::Start(0)).map_err(|e| failed("cannot write", path, e))?;
    f.write_all(&out).map_err(|e| failed("cannot write", path, e))?;
    f.sync_all().map_err(|e| failed("cannot sync", path, e))?;
    Ok(env)
}

/// Reads the grubenv without changing it.
pub fn read_env(path: &Path) -> Result<Env, UpdateError> {
    let block = std::fs::read(path).map_err(|e| failed("cannot read", path, e))?;
    Env::parse(&block).map_err(|e| failed("cannot use", path, e))
}
