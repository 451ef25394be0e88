//! File systems PID 1 sets up: the kernel's pseudo file systems first, then
//! the data partition (found by its GPT name, checked with e2fsck, mounted as
//! the appliance's data directory), and the clean unmount at shutdown.

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
        "{dev}: no ext4 file system (the image ships the data partition formatted; write the image again or create one with mke2fs -t ext4 -L data)"
    )]
    NotFormatted { dev: PathBuf },
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

/// Waits for the partition, checks it and mounts it on `mountpoint`.
pub fn data_partition(partname: &str, mountpoint: &Path, fsck: &Path, wait: Duration) -> Result<PathBuf, MountError> {
    let start = Instant::now();
    let dev = loop {
        let (dev, seen) = find_partition(Path::new("/sys/class/block"), partname);
        if let Some(d) = dev {
            break d;
        }
        if start.elapsed() >= wait {
            return Err(MountError::NoPartition {
                name: partname.to_string(),
                secs: wait.as_secs(),
                seen: if seen.is_empty() { "none".into() } else { seen.join(", ") },
            });
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    if !has_ext4_magic(&dev) {
        return Err(MountError::NotFormatted { dev });
    }
    if fsck.exists() {
        // -p: fix what is safe without asking (the journal is replayed here too); if
        // that leaves errors, -y: fix everything e2fsck can.
        let code = fsck_run(fsck, "-p", &dev);
        if code >= 4 && fsck_run(fsck, "-y", &dev) >= 4 {
            return Err(MountError::Fsck { dev, code });
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
    Ok(dev)
}

/// Runs e2fsck with `mode` on `dev`; its exit status (8 if it could not run).
fn fsck_run(fsck: &Path, mode: &str, dev: &Path) -> i32 {
    let code = Command::new(fsck)
        .arg(mode)
        .arg(dev)
        .stdin(std::process::Stdio::null())
        .status()
        .map(|s| s.code().unwrap_or(8))
        .unwrap_or(8);
    eprintln!("flowwarden-init: e2fsck {mode} {}: exit {code}", dev.display());
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
    }
}
