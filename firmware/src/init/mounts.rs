//! File systems PID 1 sets up: the kernel's pseudo file systems first, then
//! the data partition (found by its GPT name, checked with e2fsck, mounted as
//! the appliance's data directory), and the clean unmount at shutdown.

use super::sysconf::DataPartition;
use rustix::mount::{MountFlags, UnmountFlags};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};
use thiserror::Error;

#[derive(Debug, Error)]
pub enum MountError {
    #[error("mount {what} on {target}: {source}")]
    Mount {
        what: String,
        target: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("no partition named {name:?} appeared within {secs} s (block devices seen: {seen})")]
    NoPartition { name: String, secs: u64, seen: String },
    #[error(
        "{dev}: no ext4 file system, no usable backup superblock and not blank: not formatting it (it may hold data); write the image again or run mke2fs -t ext4 -L data on it"
    )]
    NotFormatted { dev: PathBuf },
    #[error("{dev}: formatting the blank data partition failed: {why}")]
    Format { dev: PathBuf, why: String },
    #[error("{dev}: e2fsck exit status {code}: file system errors left uncorrected")]
    Fsck { dev: PathBuf, code: i32 },
}

/// /proc, /sys, /dev, /run, /tmp. Already-mounted targets (EBUSY) are fine.
pub fn early() -> Result<(), MountError> {
    let nodev = MountFlags::NOSUID | MountFlags::NODEV | MountFlags::NOEXEC;
    for (fs, target, flags, data) in [
        ("proc", "/proc", nodev, None),
        ("sysfs", "/sys", nodev, None),
        ("devtmpfs", "/dev", MountFlags::NOSUID, Some(c"mode=0755")),
        ("tmpfs", "/run", MountFlags::NOSUID | MountFlags::NODEV, Some(c"mode=0755")),
        ("tmpfs", "/tmp", MountFlags::NOSUID | MountFlags::NODEV, Some(c"mode=1777")),
    ] {
        let _ = std::fs::create_dir_all(target);
        match rustix::mount::mount(fs, target, fs, flags, data) {
            Ok(()) | Err(rustix::io::Errno::BUSY) => {}
            Err(e) => {
                return Err(MountError::Mount {
                    what: fs.to_string(),
                    target: PathBuf::from(target),
                    source: e.into(),
                });
            }
        }
    }
    Ok(())
}

/// `/dev/<name>` of the partition whose GPT name is `partname`, reading the
/// kernel's uevent files under `sys_block` (normally /sys/class/block).
pub fn find_partition(sys_block: &Path, partname: &str) -> (Option<PathBuf>, Vec<String>) {
    let mut seen = Vec::new();
    let Ok(entries) = std::fs::read_dir(sys_block) else {
        return (None, seen);
    };
    let mut names: Vec<_> = entries.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect();
    names.sort();
    for name in names {
        let uevent = std::fs::read_to_string(sys_block.join(&name).join("uevent")).unwrap_or_default();
        let pn = uevent.lines().find_map(|l| l.strip_prefix("PARTNAME="));
        seen.push(match pn {
            Some(p) => format!("{name}({p})"),
            None => name.clone(),
        });
        if pn == Some(partname) {
            let dev = uevent.lines().find_map(|l| l.strip_prefix("DEVNAME=")).unwrap_or(&name);
            return (Some(Path::new("/dev").join(dev)), seen);
        }
    }
    (None, seen)
}

/// Waits up to `wait` for the partition whose GPT name is `partname`.
pub fn wait_partition(partname: &str, wait: Duration) -> Result<PathBuf, MountError> {
    let start = Instant::now();
    loop {
        let (dev, seen) = find_partition(Path::new("/sys/class/block"), partname);
        if let Some(d) = dev {
            return Ok(d);
        }
        if start.elapsed() >= wait {
            return Err(MountError::NoPartition {
                name: partname.to_string(),
                secs: wait.as_secs(),
                seen: if seen.is_empty() { "none".into() } else { seen.join(", ") },
            });
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Grows the partition `dev` (named `partname`) to the end of its disk when the disk
/// is larger than the image was; the caller reboots so the kernel reads the new table.
pub fn grow_to_disk(dev: &Path, partname: &str) -> Result<Option<super::gpt::Grown>, String> {
    let name = dev.file_name().map(|n| n.to_string_lossy().to_string()).ok_or("no device name")?;
    let sys = std::fs::canonicalize(Path::new("/sys/class/block").join(&name)).map_err(|e| format!("/sys/class/block/{name}: {e}"))?;
    let disk = sys
        .parent()
        .and_then(|p| p.file_name())
        .map(|n| n.to_string_lossy().to_string())
        .ok_or("no parent disk")?;
    let sectors: u64 = std::fs::read_to_string(Path::new("/sys/class/block").join(&disk).join("size"))
        .map_err(|e| format!("size of {disk}: {e}"))?
        .trim()
        .parse()
        .map_err(|_| format!("size of {disk}: not a number"))?;
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(Path::new("/dev").join(&disk))
        .map_err(|e| format!("/dev/{disk}: {e}"))?;
    let grown = super::gpt::grow(&mut f, sectors, partname).map_err(|e| format!("/dev/{disk}: {e}"))?;
    if grown.is_some() {
        f.sync_all().map_err(|e| format!("/dev/{disk}: {e}"))?;
    }
    Ok(grown)
}

/// Bytes of the ext4 file system on `dev`, from its superblock.
pub fn ext4_bytes(dev: &Path) -> Option<u64> {
    use std::io::{Read, Seek, SeekFrom};
    let mut sb = [0u8; 1024];
    let mut f = std::fs::File::open(dev).ok()?;
    f.seek(SeekFrom::Start(1024)).ok()?;
    f.read_exact(&mut sb).ok()?;
    if sb[56..58] != [0x53, 0xef] {
        return None;
    }
    let le32 = |o: usize| u64::from(u32::from_le_bytes([sb[o], sb[o + 1], sb[o + 2], sb[o + 3]]));
    let incompat_64bit = le32(0x60) & 0x80 != 0;
    let blocks = le32(4) | if incompat_64bit { le32(0x150) << 32 } else { 0 };
    let log = le32(24);
    (log <= 6).then(|| blocks * (1024u64 << log))
}

/// Grows the mounted file system online to fill its partition when the partition is
/// at least 16 MiB larger (after [`grow_to_disk`] and a reboot); returns a summary.
pub fn resize_to_partition(cfg: &DataPartition, dev: &Path) -> Option<String> {
    let name = dev.file_name()?.to_string_lossy().to_string();
    let part: u64 = std::fs::read_to_string(Path::new("/sys/class/block").join(&name).join("size"))
        .ok()?
        .trim()
        .parse::<u64>()
        .ok()?
        * 512;
    let fs = ext4_bytes(dev)?;
    if part < fs + (16 << 20) {
        return None;
    }
    let st = Command::new(&cfg.resize)
        .env("LD_LIBRARY_PATH", &cfg.mkfs_libs)
        .arg(dev)
        .stdin(std::process::Stdio::null())
        .status();
    let after = ext4_bytes(dev).unwrap_or(fs);
    Some(match st {
        Ok(s) if s.success() => format!(
            "resized the data file system on {} from {} MiB to {} MiB",
            dev.display(),
            fs >> 20,
            after >> 20
        ),
        Ok(s) => format!(
            "resize2fs {} exited with {s}; the file system stays at {} MiB",
            dev.display(),
            fs >> 20
        ),
        Err(e) => format!(
            "cannot run {}: {e}; the file system stays at {} MiB",
            cfg.resize.display(),
            fs >> 20
        ),
    })
}

/// Checks the data partition `dev` and mounts it on the configured mount point.
pub fn mount_data(cfg: &DataPartition, dev: &Path) -> Result<(), MountError> {
    let (mountpoint, fsck) = (cfg.mountpoint.as_path(), cfg.fsck.as_path());
    let dev = dev.to_path_buf();
    if !has_ext4_magic(&dev) {
        prepare_unformatted(cfg, &dev)?;
    }
    if fsck.exists() {
        // -p: fix what is safe without asking (the journal is replayed here too); if
        // that leaves errors, -y: fix everything e2fsck can.
        if fsck_run(fsck, &["-p"], &dev) >= 4 {
            let code = fsck_run(fsck, &["-y"], &dev);
            if code >= 4 {
                return Err(MountError::Fsck { dev, code });
            }
        }
    } else {
        eprintln!("flowwarden-init: {} not in the image; relying on the ext4 journal", fsck.display());
    }
    let _ = std::fs::create_dir_all(mountpoint);
    rustix::mount::mount(
        &dev,
        mountpoint,
        "ext4",
        MountFlags::NOATIME | MountFlags::NODEV | MountFlags::NOSUID,
        None,
    )
    .map_err(|e| MountError::Mount {
        what: dev.display().to_string(),
        target: mountpoint.to_path_buf(),
        source: e.into(),
    })?;
    Ok(())
}

/// A data partition without an ext4 superblock: a damaged primary superblock is
/// repaired from a backup copy; a blank partition (first MiB all zero) is the first
/// boot and gets formatted; anything else is left alone (formatting it could destroy
/// data someone can still recover) and is an error.
fn prepare_unformatted(cfg: &DataPartition, dev: &Path) -> Result<(), MountError> {
    if is_blank(dev) {
        return format_blank(cfg, dev);
    }
    if cfg.fsck.exists() {
        // Backup superblocks of 4 KiB- and 1 KiB-block file systems.
        for (block, size) in [("32768", "4096"), ("8193", "1024")] {
            let code = fsck_run(&cfg.fsck, &["-y", "-b", block, "-B", size], dev);
            // e2fsck may stop with an error after writing the primary superblock back
            // (a backup copied while mounted carries needs_recovery): what counts is
            // whether a superblock is there now; the -p/-y check that follows fixes the rest.
            if has_ext4_magic(dev) {
                eprintln!(
                    "flowwarden-init: {}: primary superblock was damaged; repaired from the backup at block {block} (e2fsck exit {code})",
                    dev.display()
                );
                return Ok(());
            }
        }
    }
    Err(MountError::NotFormatted { dev: dev.to_path_buf() })
}

/// mke2fs on the blank data partition.
fn format_blank(cfg: &DataPartition, dev: &Path) -> Result<(), MountError> {
    eprintln!("flowwarden-init: {} is blank: formatting it as ext4 (first boot)", dev.display());
    let st = Command::new(&cfg.mkfs)
        .env("LD_LIBRARY_PATH", &cfg.mkfs_libs)
        .args(["-q", "-F", "-t", "ext4", "-L", &cfg.partition])
        .arg(dev)
        .stdin(std::process::Stdio::null())
        .status();
    match st {
        Ok(s) if s.success() && has_ext4_magic(dev) => Ok(()),
        Ok(s) => Err(MountError::Format {
            dev: dev.to_path_buf(),
            why: format!("{} exited with {s}", cfg.mkfs.display()),
        }),
        Err(e) => Err(MountError::Format {
            dev: dev.to_path_buf(),
            why: format!("cannot run {}: {e}", cfg.mkfs.display()),
        }),
    }
}

/// Zeroes the first MiB of `dev` (factory reset): the next boot takes it for blank
/// and formats it.
pub fn blank(dev: &Path) -> std::io::Result<()> {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new().write(true).open(dev)?;
    f.write_all(&vec![0u8; 1 << 20])?;
    f.sync_all()
}

/// True when the first MiB of `dev` is all zero bytes (never written).
pub fn is_blank(dev: &Path) -> bool {
    use std::io::Read;
    let mut b = vec![0u8; 1 << 20];
    std::fs::File::open(dev)
        .and_then(|mut f| f.read_exact(&mut b))
        .map(|()| b.iter().all(|x| *x == 0))
        .unwrap_or(false)
}

/// Runs e2fsck with `args` on `dev`; its exit status (8 if it could not run).
fn fsck_run(fsck: &Path, args: &[&str], dev: &Path) -> i32 {
    let code = Command::new(fsck)
        .args(args)
        .arg(dev)
        .stdin(std::process::Stdio::null())
        .status()
        .map(|s| s.code().unwrap_or(8))
        .unwrap_or(8);
    eprintln!("flowwarden-init: e2fsck {} {}: exit {code}", args.join(" "), dev.display());
    code
}

/// The ext2/3/4 superblock magic 0xEF53 at byte 1080.
pub fn has_ext4_magic(dev: &Path) -> bool {
    use std::io::{Read, Seek, SeekFrom};
    let mut b = [0u8; 2];
    std::fs::File::open(dev)
        .and_then(|mut f| {
            f.seek(SeekFrom::Start(1080))?;
            f.read_exact(&mut b)
        })
        .map(|()| b == [0x53, 0xef])
        .unwrap_or(false)
}

/// Syncs and unmounts the data partition (lazily if something still holds it).
pub fn unmount_data(mountpoint: &Path) -> std::io::Result<()> {
    rustix::fs::sync();
    match rustix::mount::unmount(mountpoint, UnmountFlags::empty()) {
        Ok(()) => Ok(()),
        Err(_) => {
            // Still busy: make it read-only so the journal is clean, then detach.
            let ro = rustix::mount::mount_remount(mountpoint, MountFlags::RDONLY, "");
            let _ = rustix::mount::unmount(mountpoint, UnmountFlags::DETACH);
            ro.map_err(Into::into)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_partition_by_gpt_name() {
        let d = tempfile::tempdir().unwrap();
        for (n, ue) in [
            ("vda", "MAJOR=254\nDEVNAME=vda\nDEVTYPE=disk\n"),
            ("vda1", "DEVNAME=vda1\nDEVTYPE=partition\nPARTN=1\nPARTNAME=esp\n"),
            ("vda4", "DEVNAME=vda4\nDEVTYPE=partition\nPARTN=4\nPARTNAME=data\n"),
        ] {
            std::fs::create_dir(d.path().join(n)).unwrap();
            std::fs::write(d.path().join(n).join("uevent"), ue).unwrap();
        }
        let (dev, _) = find_partition(d.path(), "data");
        assert_eq!(dev, Some(PathBuf::from("/dev/vda4")));
        let (dev, seen) = find_partition(d.path(), "nope");
        assert_eq!(dev, None);
        assert_eq!(seen, vec!["vda", "vda1(esp)", "vda4(data)"]);
    }

    #[test]
    fn ext4_magic() {
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("fs");
        let mut img = vec![0u8; 4096];
        std::fs::write(&f, &img).unwrap();
        assert!(!has_ext4_magic(&f));
        img[1080] = 0x53;
        img[1081] = 0xef;
        std::fs::write(&f, &img).unwrap();
        assert!(has_ext4_magic(&f));
        assert!(!has_ext4_magic(&d.path().join("missing")));
        let blank = d.path().join("blank");
        std::fs::write(&blank, vec![0u8; 1 << 20]).unwrap();
        assert!(is_blank(&blank));
        assert!(!is_blank(&f), "short or non-zero");
        let mut nz = vec![0u8; 1 << 20];
        nz[(1 << 20) - 1] = 1;
        std::fs::write(&blank, nz).unwrap();
        assert!(!is_blank(&blank));
    }
}
