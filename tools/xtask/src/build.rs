//! `cargo xtask build --arch x86_64|aarch64`: the static `flowwarden` binary
//! for a firmware image. x86_64 uses the host toolchain with +crt-static;
//! aarch64 uses Debian bookworm's rustc-web and its arm64 standard library
//! (rustup cannot download targets here), linked by aarch64-linux-gnu-gcc.

use crate::{apt_ensure, cargo, run};
use anyhow::{Context, Result, bail};
use std::path::{Path, PathBuf};

pub fn target_triple(arch: &str) -> Result<&'static str> {
    match arch {
        "x86_64" => Ok("x86_64-unknown-linux-gnu"),
        "aarch64" => Ok("aarch64-unknown-linux-gnu"),
        other => bail!("--arch {other:?}: expected x86_64 or aarch64"),
    }
}

/// Builds and checks the binary; returns its path.
pub fn build(root: &Path, arch: &str) -> Result<PathBuf> {
    let triple = target_triple(arch)?;
    let mut cmd = cargo();
    cmd.args([
        "build",
        "--profile",
        "firmware",
        "--package",
        "flowwarden",
        "--bin",
        "flowwarden",
        // The image leaves out flowgen and `run --demo`.
        "--no-default-features",
        "--target",
        triple,
    ]);
    let target_dir = if arch == "aarch64" {
        apt_ensure(
            &[
                ("rustc-web", "/usr/bin/rustc"),
                ("libstd-rust-web-dev:arm64", "/usr/lib/rustlib/aarch64-unknown-linux-gnu/lib"),
                ("gcc-aarch64-linux-gnu", "/usr/bin/aarch64-linux-gnu-gcc"),
                ("libc6-dev-arm64-cross", "/usr/aarch64-linux-gnu/lib/libc.a"),
            ],
            true,
        )?;
        // A separate target dir: a different rustc must not invalidate the host build.
        let dir = root.join("target/cross");
        cmd.env("RUSTC", "/usr/bin/rustc")
            .env("CARGO_TARGET_DIR", &dir)
            .env("CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER", "aarch64-linux-gnu-gcc")
            .env("CC_aarch64_unknown_linux_gnu", "aarch64-linux-gnu-gcc")
            .env("AR_aarch64_unknown_linux_gnu", "aarch64-linux-gnu-ar")
            .env("CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_RUSTFLAGS", "-C target-feature=+crt-static");
        dir
    } else {
        cmd.env("CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_RUSTFLAGS", "-C target-feature=+crt-static");
        root.join("target")
    };
    run(&mut cmd)?;
    let bin = target_dir.join(triple).join("firmware").join("flowwarden");
    let elf = std::fs::read(&bin).with_context(|| format!("{}", bin.display()))?;
    check_static(&elf, arch).with_context(|| format!("{}", bin.display()))?;
    eprintln!("xtask: {} is a static {arch} ELF, {} bytes", bin.display(), elf.len());
    Ok(bin)
}

/// Checks machine type and that there is no program interpreter (PT_INTERP): the
/// image has no dynamic loader and no libc to load.
pub fn check_static(elf: &[u8], arch: &str) -> Result<()> {
    if elf.len() < 64 || &elf[..4] != b"\x7fELF" || elf[4] != 2 || elf[5] != 1 {
        bail!("not a 64-bit little-endian ELF file");
    }
    let u16_at = |o: usize| u16::from_le_bytes([elf[o], elf[o + 1]]);
    let machine = u16_at(18);
    let want = if arch == "aarch64" { 183 } else { 62 };
    if machine != want {
        bail!("ELF machine {machine}, expected {want} for {arch}");
    }
    let phoff = u64::from_le_bytes(elf[32..40].try_into()?) as usize;
    let (phentsize, phnum) = (u16_at(54) as usize, u16_at(56) as usize);
    for i in 0..phnum {
        let o = phoff + i * phentsize;
        let p_type = u32::from_le_bytes(elf.get(o..o + 4).context("truncated program headers")?.try_into()?);
        if p_type == 3 {
            bail!("has a PT_INTERP (dynamic loader): not statically linked");
        }
    }
    // glibc's resolver drags in NSS (nsswitch.conf, gai.conf), which the image has not got.
    for needle in [&b"/etc/nsswitch.conf"[..], b"/etc/gai.conf"] {
        if elf.windows(needle.len()).any(|w| w == needle) {
            bail!(
                "links glibc's name resolution ({}): use numeric addresses or a Rust resolver",
                String::from_utf8_lossy(needle)
            );
        }
    }
    Ok(())
}
