//! `cargo xtask image --board NAME`: a raw GPT disk image from a clean checkout,
//! with no loop mounts and no root-only steps beyond apt-get:
//!
//! | # | GPT name   | contents                                                   |
//! |---|------------|------------------------------------------------------------|
//! | 1 | `esp`      | FAT32: EFI/BOOT/BOOT{X64,AA64}.EFI (GRUB), grub.cfg, grubenv |
//! | 2 | `system_a` | ext4 `flowwarden_sys`: vmlinuz, initrd.img, release        |
//! | 3 | `system_b` | ext4 `flowwarden_sys`: the same (an update's target)       |
//! | 4 | `data`     | ext4 `data`: the appliance's data directory (empty)        |
//!
//! The initramfs holds the static binary as /init (PID 1), the board's kernel
//! modules in dependency order, a static e2fsck, Debian's mke2fs with its libraries
//! (first-boot format of a blank data partition) and /etc/flowwarden/system.toml.
//! The Debian kernel package is pinned by version and sha256 in board.toml.
//! image/README.md describes the layout and boot flow.
//!
//! `cargo xtask bundle` builds the same slot file system and signs it into a
//! bundle (tools/fwbundle) that `flowwarden update` installs into the other slot.

use crate::board::Board;
use crate::cpio::Cpio;
use crate::{apt_ensure, run};
use anyhow::{Context, Result, bail};
use std::collections::{HashMap, HashSet};
use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

const MIB: u64 = 1024 * 1024;

/// What a slot is built as: the version its binary reports, the security epoch and
/// the update keys (PEM public keys) it trusts.
pub struct Release {
    pub version: String,
    pub epoch: u32,
    pub keys: Vec<String>,
    /// Tests only: a slot whose initramfs is missing (it cannot boot).
    pub without_initrd: bool,
}

/// `--version`'s default: the package version and the short commit.
pub fn default_version(root: &Path) -> String {
    format!("{}+g{}", env!("CARGO_PKG_VERSION"), git_commit(root))
}

/// The tree's security epoch (one number in image/security-epoch).
pub fn security_epoch(root: &Path) -> Result<u32> {
    let p = root.join("image/security-epoch");
    let t = std::fs::read_to_string(&p).with_context(|| format!("{}", p.display()))?;
    t.lines()
        .map(str::trim)
        .find(|l| !l.is_empty() && !l.starts_with('#'))
        .and_then(|l| l.parse().ok())
        .with_context(|| format!("{}: expected one number (the security epoch)", p.display()))
}

/// The development update key (target/keys/dev-update.pem, made once): images built
/// without --update-key trust it; never for boxes that leave the building.
pub fn dev_key(root: &Path) -> Result<(PathBuf, PathBuf)> {
    let dir = root.join("target/keys");
    let private = dir.join("dev-update.pem");
    let public = dir.join("dev-update.pub.pem");
    if !private.exists() {
        std::fs::create_dir_all(&dir)?;
        let pem = fwbundle::SigningKey::generate_pem()?;
        write_private(&private, &pem)?;
        eprintln!(
            "xtask: made a development update key {} (images without --update-key trust it)",
            private.display()
        );
    }
    let key = fwbundle::SigningKey::from_pem(&std::fs::read(&private)?).with_context(|| format!("{}", private.display()))?;
    std::fs::write(&public, key.public().to_pem())?;
    Ok((private, public))
}

/// Writes a private key readable by its owner only.
pub fn write_private(path: &Path, pem: &str) -> Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("{}", path.display()))?;
    f.write_all(pem.as_bytes())?;
    Ok(())
}

/// The public keys of `--update-key` files (or the development key), checked.
pub fn update_keys(root: &Path, files: &[PathBuf]) -> Result<Vec<String>> {
    let files = if files.is_empty() {
        let (_, public) = dev_key(root)?;
        eprintln!(
            "xtask: no --update-key given: the image trusts the development key {}",
            public.display()
        );
        vec![public]
    } else {
        files.to_vec()
    };
    files
        .iter()
        .map(|f| {
            let text = std::fs::read(f).with_context(|| format!("--update-key {}", f.display()))?;
            let key = fwbundle::PublicKey::from_pem(&text).with_context(|| format!("--update-key {}", f.display()))?;
            eprintln!("xtask: update key {} ({})", key.fingerprint(), f.display());
            Ok(key.to_pem())
        })
        .collect()
}

pub fn image(root: &Path, board_name: &str, key_files: &[PathBuf]) -> Result<PathBuf> {
    let board = Board::load(root, board_name)?;
    eprintln!("xtask: image for {}", board.describe());
    apt_ensure(
        &[
            ("mtools", "mcopy"),
            ("dosfstools", "mkfs.fat"),
            ("grub-common", "grub-mkimage"),
            ("e2fsprogs", "mke2fs"),
            ("fdisk", "sfdisk"),
        ],
        board.arch == "aarch64",
    )?;
    let release = Release {
        version: default_version(root),
        epoch: security_epoch(root)?,
        keys: update_keys(root, key_files)?,
        without_initrd: false,
    };
    let out_dir = root.join("target/images");
    let cache = out_dir.join("cache");
    let work = out_dir.join(format!("{board_name}.work"));
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work)?;
    let slot_fs = system_slot(root, &board, &release, &work)?;
    let (grub_pkg, grub_fmt, efi_name) = if board.arch == "aarch64" {
        ("grub-efi-arm64-bin", "arm64-efi", "BOOTAA64.EFI")
    } else {
        ("grub-efi-amd64-bin", "x86_64-efi", "BOOTX64.EFI")
    };
    let grub_root = extract(
        &fetch_latest(&cache, grub_pkg, board.deb_arch())?,
        &cache.join(format!("{grub_pkg}-{}", board.deb_arch())),
    )?;
    // Both slots hold the same build at first.
    let mut parts: Vec<(&str, &str, PathBuf, u64)> = vec![
        ("system_a", LINUX_FS, slot_fs.clone(), board.disk.slot_mib),
        ("system_b", LINUX_FS, slot_fs, board.disk.slot_mib),
    ];
    let empty = work.join("empty");
    std::fs::create_dir_all(&empty)?;
    let data = work.join("data.fs");
    mke2fs(&data, "data", &empty, board.disk.data_mib, &[])?;

    // ESP with GRUB: both slots good, a first.
    std::fs::write(work.join("grub.cfg"), fwbundle::boot::grub_cfg(&board.kernel.cmdline))?;
    let env = work.join("grubenv");
    run(Command::new("grub-editenv").arg(&env).arg("create"))?;
    run(Command::new("grub-editenv").arg(&env).arg("set").args([
        format!("{}=a", fwbundle::boot::ORDER),
        format!("{}=1", fwbundle::boot::good("a")),
        format!("{}=1", fwbundle::boot::good("b")),
        format!("{}={}", fwbundle::boot::version("a"), release.version),
        format!("{}={}", fwbundle::boot::version("b"), release.version),
    ]))?;
    let efi = work.join(efi_name);
    run(Command::new("grub-mkimage")
        .arg("-d")
        .arg(grub_root.join("usr/lib/grub").join(grub_fmt))
        .args(["-O", grub_fmt, "-p", "/EFI/BOOT", "-o"])
        .arg(&efi)
        .args(GRUB_MODULES))?;
    let esp = work.join("esp.fs");
    let _ = std::fs::remove_file(&esp);
    run(Command::new("mkfs.fat")
        .args(["-F", "32", "-n", "FW-ESP", "-C"])
        .arg(&esp)
        .arg((board.disk.esp_mib * 1024).to_string())
        .stdout(Stdio::null()))?;
    run(Command::new("mmd")
        .env("MTOOLS_SKIP_CHECK", "1")
        .arg("-i")
        .arg(&esp)
        .args(["::/EFI", "::/EFI/BOOT"]))?;
    run(Command::new("mcopy")
        .env("MTOOLS_SKIP_CHECK", "1")
        .arg("-i")
        .arg(&esp)
        .arg(&efi)
        .arg(work.join("grub.cfg"))
        .arg(&env)
        .arg("::/EFI/BOOT/"))?;
    parts.insert(0, ("esp", ESP, esp, board.disk.esp_mib));
    parts.push(("data", LINUX_FS, data, board.disk.data_mib));

    let img = out_dir.join(format!("{board_name}.img"));
    assemble(&img, &parts)?;
    let _ = std::fs::remove_dir_all(&work);
    Ok(img)
}

/// `cargo xtask bundle`: the board's slot file system, compressed and signed with
/// `key` into target/bundles/BOARD-VERSION.fwb. The slot trusts the signing key's
/// public half for the updates after it.
pub fn bundle(
    root: &Path,
    board_name: &str,
    key: &Path,
    version: Option<&str>,
    epoch: Option<u32>,
    without_initrd: bool,
) -> Result<PathBuf> {
    let board = Board::load(root, board_name)?;
    apt_ensure(&[("e2fsprogs", "mke2fs")], board.arch == "aarch64")?;
    let signer =
        fwbundle::SigningKey::from_pem(&std::fs::read(key).with_context(|| format!("--key {}", key.display()))?).with_context(|| {
            format!(
                "--key {} (an Ed25519 private key in PKCS#8 PEM: openssl genpkey -algorithm ed25519)",
                key.display()
            )
        })?;
    let version = version.map(str::to_string).unwrap_or_else(|| default_version(root));
    let release = Release {
        version: version.clone(),
        epoch: match epoch {
            Some(e) => e,
            None => security_epoch(root)?,
        },
        keys: vec![signer.public().to_pem()],
        without_initrd,
    };
    eprintln!(
        "xtask: bundle {version} for {board_name} (security epoch {}), signed by update key {}",
        release.epoch,
        signer.public().fingerprint()
    );
    let out_dir = root.join("target/bundles");
    let work = out_dir.join(format!("{board_name}.work"));
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work)?;
    let slot_fs = system_slot(root, &board, &release, &work)?;
    let image = std::fs::read(&slot_fs)?;
    let compressed = zstd::bulk::compress(&image, 9).context("zstd")?;
    let manifest = fwbundle::Manifest {
        format: fwbundle::FORMAT,
        product: fwbundle::PRODUCT.into(),
        board: board_name.to_string(),
        arch: board.arch.clone(),
        version: version.clone(),
        epoch: release.epoch,
        compression: "zstd".into(),
        compressed_size: compressed.len() as u64,
        compressed_sha256: fwbundle::sha256_hex(&compressed),
        payload_size: image.len() as u64,
        payload_sha256: fwbundle::sha256_hex(&image),
    };
    let json = serde_json::to_vec_pretty(&manifest)?;
    let out = out_dir.join(format!("{board_name}-{version}.fwb"));
    let mut f = std::fs::File::create(&out).with_context(|| format!("{}", out.display()))?;
    f.write_all(&fwbundle::header_bytes(&json, &signer.sign(&json)))?;
    f.write_all(&compressed)?;
    f.sync_all()?;
    eprintln!(
        "xtask: {}: slot image {} MiB, bundle {:.1} MiB",
        out.display(),
        image.len() >> 20,
        (compressed.len() + json.len() + 76) as f64 / (1 << 20) as f64
    );
    let _ = std::fs::remove_dir_all(&work);
    Ok(out)
}

/// Builds one slot's ext4 file system (kernel, initramfs, release file) in `work`.
fn system_slot(root: &Path, board: &Board, release: &Release, work: &Path) -> Result<PathBuf> {
    let board_name = board.name.as_str();
    if !flowwarden_version_ok(&release.version) {
        bail!("--version {:?}: 1 to 64 characters from A-Z a-z 0-9 . + - _ ~", release.version);
    }
    let bin = crate::build::build(root, &board.arch)?;
    let bin = stamp_version(&std::fs::read(&bin)?, &release.version).with_context(|| format!("{}", bin.display()))?;
    let cache = root.join("target/images/cache");
    std::fs::create_dir_all(&cache)?;

    // Kernel: the pinned one, or the newest of its series once Debian dropped it.
    let kernel = crate::kernel::fetch(&cache, board)?;
    let deb = kernel.deb.clone();
    let kdir = extract(&deb, &cache.join(format!("{}_{}", kernel.package, kernel.version)))?;
    let kver = kernel.release().to_string();
    let vmlinuz = kdir.join("boot").join(format!("vmlinuz-{kver}"));
    if !vmlinuz.exists() {
        bail!("{} has no boot/vmlinuz-{kver}", deb.display());
    }
    let moddir = kdir.join("lib/modules").join(&kver);
    let modules = resolve_modules(&moddir, &board.kernel.modules)?;
    eprintln!(
        "xtask: modules in load order: {}",
        modules.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>().join(" ")
    );

    // A static e2fsck for the board's architecture.
    let fsck_root = extract(
        &fetch_latest(&cache, "e2fsck-static", board.deb_arch())?,
        &cache.join(format!("e2fsck-static-{}", board.deb_arch())),
    )?;
    let e2fsck = fsck_root.join("sbin/e2fsck.static");
    let mkfs = mke2fs_files(&cache, board.deb_arch())?;

    // Initramfs.
    let mut sys = board.system.clone();
    sys.insert(
        "modules".into(),
        toml::Value::Array(
            modules
                .iter()
                .map(|(n, _)| toml::Value::String(format!("/lib/modules/{n}.ko")))
                .collect(),
        ),
    );
    let system_toml = format!(
        "# Written by cargo xtask image from board/{board_name}/board.toml [system]; read by PID 1.\n{}",
        toml::to_string(&sys)?
    );
    let mut cpio = Cpio::new();
    for d in [
        "dev",
        "proc",
        "sys",
        "run",
        "tmp",
        "data",
        "etc",
        "etc/flowwarden",
        "lib",
        "lib/modules",
        "lib/mke2fs",
        "lib64",
        "sbin",
        "var",
        "var/lib",
        "usr",
        "usr/share",
        "usr/share/flowwarden",
    ] {
        cpio.dir(d);
    }
    for (dest, data) in &mkfs {
        cpio.file(dest, 0o755, data);
    }
    cpio.char_dev("dev/console", 0o600, 5, 1);
    cpio.char_dev("dev/null", 0o666, 1, 3);
    cpio.file("init", 0o755, &bin);
    cpio.file(
        "sbin/e2fsck",
        0o755,
        &std::fs::read(&e2fsck).with_context(|| format!("{}", e2fsck.display()))?,
    );
    cpio.file("etc/flowwarden/system.toml", 0o644, system_toml.as_bytes());
    let release_text = format!(
        "flowwarden {}\nboard {board_name}\ncommit {}\nepoch {}\n{}\n",
        release.version,
        git_commit(root),
        release.epoch,
        kernel.release_line()
    );
    cpio.file("etc/flowwarden/release", 0o644, release_text.as_bytes());
    // The keys the next update must be signed with.
    cpio.dir("etc/flowwarden/update-keys");
    for (i, pem) in release.keys.iter().enumerate() {
        cpio.file(&format!("etc/flowwarden/update-keys/key{}.pem", i + 1), 0o644, pem.as_bytes());
    }
    // Countries of external addresses (a newer file on the data partition wins).
    cpio.file(
        "usr/share/flowwarden/country.mmdb",
        0o644,
        &std::fs::read(crate::geo::database(root)?)?,
    );
    cpio.file("etc/resolv.conf", 0o644, b"");
    cpio.file("etc/hostname", 0o644, b"flowwarden\n");
    for (name, path) in &modules {
        cpio.file(&format!("lib/modules/{name}.ko"), 0o644, &std::fs::read(path)?);
    }
    let initrd = work.join("initrd.img");
    gzip(&cpio.finish(), &initrd)?;

    let slot_dir = work.join("slot");
    std::fs::create_dir_all(&slot_dir)?;
    std::fs::copy(&vmlinuz, slot_dir.join("vmlinuz"))?;
    if !release.without_initrd {
        std::fs::copy(&initrd, slot_dir.join("initrd.img"))?;
    }
    std::fs::write(slot_dir.join("release"), &release_text)?;
    let img = work.join("system.fs");
    // GRUB 2.06 reads ext4 but not these two newer features of e2fsprogs 1.47.
    mke2fs(
        &img,
        "flowwarden_sys",
        &slot_dir,
        board.disk.slot_mib,
        &["-O", "^metadata_csum_seed,^orphan_file"],
    )?;
    Ok(img)
}

fn flowwarden_version_ok(v: &str) -> bool {
    !v.is_empty() && v.len() <= 64 && v.bytes().all(|b| b.is_ascii_alphanumeric() || b".+-_~".contains(&b))
}

/// The static binary with `version` in its version stamp (firmware/src/version.rs).
pub fn stamp_version(bin: &[u8], version: &str) -> Result<Vec<u8>> {
    const MARK: &[u8] = b"FWVERSION-STAMP:";
    const ROOM: usize = 64;
    let at: Vec<usize> = bin
        .windows(MARK.len())
        .enumerate()
        .filter(|(_, w)| *w == MARK)
        .map(|(i, _)| i)
        .collect();
    let [at] = at[..] else {
        bail!("the version stamp occurs {} times in the binary, expected once", at.len());
    };
    let mut out = bin.to_vec();
    let room = out
        .get_mut(at + MARK.len()..at + MARK.len() + ROOM)
        .context("the version stamp is cut off")?;
    room.fill(0);
    room[..version.len()].copy_from_slice(version.as_bytes());
    Ok(out)
}

const ESP: &str = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B";
const LINUX_FS: &str = "0FC63DAF-8483-4772-8E79-3D69D8477DE4";
const GRUB_MODULES: &[&str] = &[
    "part_gpt",
    "fat",
    "ext2",
    "normal",
    "boot",
    "linux",
    "search",
    "search_label",
    "search_fs_file",
    "configfile",
    "echo",
    "test",
    "loadenv",
    "regexp",
    "gzio",
    "true",
    "all_video",
];

fn mke2fs(out: &Path, label: &str, content: &Path, mib: u64, extra: &[&str]) -> Result<()> {
    let _ = std::fs::remove_file(out);
    run(Command::new("mke2fs")
        .args(["-q", "-F", "-t", "ext4", "-L", label, "-E", "root_owner=0:0"])
        .args(extra)
        .arg("-d")
        .arg(content)
        .arg(out)
        .arg(format!("{mib}M")))
}

/// Lays out the GPT with sfdisk on the image file and copies each file system in.
fn assemble(img: &Path, parts: &[(&str, &str, PathBuf, u64)]) -> Result<()> {
    let total = MIB + parts.iter().map(|p| p.3 * MIB).sum::<u64>() + MIB;
    let _ = std::fs::remove_file(img);
    let f = std::fs::File::create(img)?;
    f.set_len(total)?;
    drop(f);
    let mut script = String::from("label: gpt\nunit: sectors\nfirst-lba: 2048\n");
    let mut offsets = Vec::new();
    let mut start = MIB;
    for (name, ty, _, mib) in parts {
        script.push_str(&format!(
            "start={}, size={}, type={ty}, name=\"{name}\"\n",
            start / 512,
            mib * MIB / 512
        ));
        offsets.push(start);
        start += mib * MIB;
    }
    let mut child = Command::new("sfdisk")
        .args(["--no-reread", "--no-tell-kernel", "-q"])
        .arg(img)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .context("sfdisk")?;
    child.stdin.take().context("sfdisk stdin")?.write_all(script.as_bytes())?;
    let st = child.wait()?;
    if !st.success() {
        bail!("sfdisk failed ({st}) on {}", img.display());
    }
    let mut out = std::fs::OpenOptions::new().write(true).open(img)?;
    for ((name, _, fs, mib), off) in parts.iter().zip(offsets) {
        let data = std::fs::read(fs)?;
        if data.len() as u64 > mib * MIB {
            bail!("partition {name}: file system is {} bytes, partition {mib} MiB", data.len());
        }
        out.seek(SeekFrom::Start(off))?;
        write_sparse(&mut out, &data)?;
    }
    out.sync_all()?;
    Ok(())
}

/// Writes `data`, skipping all-zero 64 KiB blocks so the image stays sparse.
fn write_sparse(out: &mut std::fs::File, data: &[u8]) -> Result<()> {
    for chunk in data.chunks(64 * 1024) {
        if chunk.iter().all(|b| *b == 0) {
            out.seek(SeekFrom::Current(chunk.len() as i64))?;
        } else {
            out.write_all(chunk)?;
        }
    }
    Ok(())
}

fn gzip(data: &[u8], out: &Path) -> Result<()> {
    let mut child = Command::new("gzip")
        .args(["-9", "-n", "-c"])
        .stdin(Stdio::piped())
        .stdout(std::fs::File::create(out)?)
        .spawn()
        .context("gzip")?;
    child.stdin.take().context("gzip stdin")?.write_all(data)?;
    if !child.wait()?.success() {
        bail!("gzip failed");
    }
    Ok(())
}

fn git_commit(root: &Path) -> String {
    Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .current_dir(root)
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|| "unknown".into())
}

pub fn sha256(path: &Path) -> Result<String> {
    let o = Command::new("sha256sum").arg(path).output().context("sha256sum")?;
    Ok(String::from_utf8_lossy(&o.stdout)
        .split_whitespace()
        .next()
        .unwrap_or("")
        .to_string())
}

/// The current version of a helper package (GRUB modules, static e2fsck), cached.
fn fetch_latest(cache: &Path, pkg: &str, arch: &str) -> Result<PathBuf> {
    let prefix = format!("{pkg}_");
    let suffix = format!("_{arch}.deb");
    let find = || -> Option<PathBuf> {
        std::fs::read_dir(cache).ok()?.flatten().map(|e| e.path()).find(|p| {
            p.file_name()
                .map(|n| n.to_string_lossy().to_string())
                .is_some_and(|n| n.starts_with(&prefix) && n.ends_with(&suffix))
        })
    };
    if let Some(p) = find() {
        return Ok(p);
    }
    eprintln!("xtask: downloading {pkg}:{arch} with apt-get download");
    run(Command::new("apt-get")
        .args(["download", "-q", &format!("{pkg}:{arch}")])
        .current_dir(cache))?;
    find().with_context(|| format!("apt-get download {pkg}:{arch} left no {prefix}*{suffix} in {}", cache.display()))
}

fn extract(deb: &Path, dir: &Path) -> Result<PathBuf> {
    let stamp = dir.join(".extracted");
    if !stamp.exists() {
        let _ = std::fs::remove_dir_all(dir);
        std::fs::create_dir_all(dir)?;
        run(Command::new("dpkg-deb").arg("-x").arg(deb).arg(dir))?;
        std::fs::write(&stamp, deb.display().to_string())?;
    }
    Ok(dir.to_path_buf())
}

/// Debian's (dynamic) mke2fs with its libraries, loader and mke2fs.conf, for PID 1 to
/// format a blank data partition on first boot: (path in the initramfs, bytes).
fn mke2fs_files(cache: &Path, arch: &str) -> Result<Vec<(String, Vec<u8>)>> {
    let mut roots = Vec::new();
    for pkg in ["e2fsprogs", "libext2fs2", "libcom-err2", "libblkid1", "libuuid1", "libc6"] {
        roots.push(extract(&fetch_latest(cache, pkg, arch)?, &cache.join(format!("{pkg}-{arch}")))?);
    }
    let (triple, loader_name, loader_at) = if arch == "arm64" {
        ("aarch64-linux-gnu", "ld-linux-aarch64.so.1", "lib/ld-linux-aarch64.so.1")
    } else {
        ("x86_64-linux-gnu", "ld-linux-x86-64.so.2", "lib64/ld-linux-x86-64.so.2")
    };
    let find = |rel: &[&str]| -> Result<Vec<u8>> {
        for root in &roots {
            for r in rel {
                let p = root.join(r);
                if std::fs::symlink_metadata(&p).is_ok() {
                    let real = resolve_in(root, &p)?;
                    return std::fs::read(&real).with_context(|| format!("{}", real.display()));
                }
            }
        }
        bail!("none of {rel:?} in the extracted {arch} packages")
    };
    let mut out = vec![
        ("sbin/mke2fs".to_string(), find(&["sbin/mke2fs", "usr/sbin/mke2fs"])?),
        ("sbin/resize2fs".to_string(), find(&["sbin/resize2fs", "usr/sbin/resize2fs"])?),
        ("etc/mke2fs.conf".to_string(), find(&["etc/mke2fs.conf"])?),
        (
            loader_at.to_string(),
            find(&[&format!("lib/{triple}/{loader_name}"), &format!("usr/lib/{triple}/{loader_name}")])?,
        ),
    ];
    for lib in [
        "libext2fs.so.2",
        "libcom_err.so.2",
        "libblkid.so.1",
        "libuuid.so.1",
        "libe2p.so.2",
        "libc.so.6",
    ] {
        out.push((
            format!("lib/mke2fs/{lib}"),
            find(&[&format!("lib/{triple}/{lib}"), &format!("usr/lib/{triple}/{lib}")])?,
        ));
    }
    Ok(out)
}

/// Follows symlinks of an extracted package tree inside that tree (absolute targets
/// are taken relative to `root`, not to the build host's /).
fn resolve_in(root: &Path, path: &Path) -> Result<PathBuf> {
    let mut p = path.to_path_buf();
    for _ in 0..16 {
        let meta = std::fs::symlink_metadata(&p).with_context(|| format!("{}", p.display()))?;
        if !meta.file_type().is_symlink() {
            return Ok(p);
        }
        let t = std::fs::read_link(&p)?;
        p = if t.is_absolute() {
            root.join(t.strip_prefix("/")?)
        } else {
            p.parent().context("symlink without parent")?.join(t)
        };
    }
    bail!("{}: symlink loop", path.display())
}

fn norm(name: &str) -> String {
    name.replace('-', "_")
}

/// `depends=` of a module, read from its .modinfo strings.
fn depends(ko: &[u8]) -> Vec<String> {
    let key = b"\0depends=";
    ko.windows(key.len())
        .position(|w| w == key)
        .map(|i| {
            let rest = &ko[i + key.len()..];
            let end = rest.iter().position(|b| *b == 0).unwrap_or(rest.len());
            String::from_utf8_lossy(&rest[..end])
                .split(',')
                .filter(|s| !s.is_empty())
                .map(norm)
                .collect()
        })
        .unwrap_or_default()
}

/// The requested modules plus everything they depend on, dependencies first.
fn resolve_modules(moddir: &Path, wanted: &[String]) -> Result<Vec<(String, PathBuf)>> {
    let mut index: HashMap<String, PathBuf> = HashMap::new();
    let mut stack = vec![moddir.join("kernel")];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).with_context(|| format!("{}", d.display()))?.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if let Some(n) = p
                .file_name()
                .map(|n| n.to_string_lossy().to_string())
                .and_then(|n| n.strip_suffix(".ko").map(norm))
            {
                index.insert(n, p);
            }
        }
    }
    let builtin: HashSet<String> = std::fs::read_to_string(moddir.join("modules.builtin"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.rsplit('/').next().and_then(|n| n.strip_suffix(".ko")).map(norm))
        .collect();
    let mut order = Vec::new();
    let mut done = HashSet::new();
    fn visit(
        name: &str,
        index: &HashMap<String, PathBuf>,
        builtin: &HashSet<String>,
        done: &mut HashSet<String>,
        order: &mut Vec<(String, PathBuf)>,
        depth: usize,
    ) -> Result<()> {
        if done.contains(name) || builtin.contains(name) {
            return Ok(());
        }
        if depth > 32 {
            bail!("module dependency loop at {name}");
        }
        let path = index
            .get(name)
            .with_context(|| format!("kernel module {name:?} is neither in the package nor built in"))?;
        for dep in depends(&std::fs::read(path)?) {
            visit(&dep, index, builtin, done, order, depth + 1)?;
        }
        done.insert(name.to_string());
        order.push((name.to_string(), path.clone()));
        Ok(())
    }
    for w in wanted {
        let n = norm(w);
        if builtin.contains(&n) {
            eprintln!("xtask: module {w} is built into this kernel; nothing to load");
        }
        visit(&n, &index, &builtin, &mut done, &mut order, 0)?;
    }
    Ok(order)
}
