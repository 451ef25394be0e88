//! board/<name>/board.toml: what a hardware target needs (data only; the keys
//! are documented in board/README.md). `image` and `qemu-test` read it.

use anyhow::{Context, Result, bail};
use serde::Deserialize;
use std::path::Path;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Board {
    pub name: String,
    pub arch: String,
    pub description: String,
    pub kernel: Kernel,
    pub disk: Disk,
    pub nic: Nic,
    pub qemu: Option<Qemu>,
    /// Passed through to the initramfs as /etc/flowwarden/system.toml (plus `modules`).
    #[serde(default)]
    pub system: toml::Table,
    /// Free-form notes for hardware boards (how to flash, what a smoke test needs);
    /// read by people, checked only for TOML syntax.
    #[serde(default)]
    #[allow(dead_code)]
    pub hardware: Option<toml::Table>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Kernel {
    pub package: String,
    pub version: String,
    pub sha256: String,
    pub cmdline: String,
    pub console: String,
    pub modules: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Disk {
    pub device: String,
    pub esp_mib: u64,
    pub slot_mib: u64,
    pub data_mib: u64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Nic {
    pub names: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Qemu {
    pub command: Vec<String>,
    pub firmware: String,
    pub packages: Vec<String>,
    pub ready_timeout_secs: u64,
}

impl Board {
    pub fn load(root: &Path, name: &str) -> Result<Board> {
        let path = root.join("board").join(name).join("board.toml");
        let text = std::fs::read_to_string(&path).with_context(|| {
            let known: Vec<String> = std::fs::read_dir(root.join("board"))
                .map(|d| {
                    d.flatten()
                        .filter(|e| e.path().join("board.toml").exists())
                        .map(|e| e.file_name().to_string_lossy().into_owned())
                        .collect()
                })
                .unwrap_or_default();
            format!("board {name:?}: cannot read {} (boards: {})", path.display(), known.join(", "))
        })?;
        let b: Board = toml::from_str(&text).with_context(|| format!("{}", path.display()))?;
        if b.name != name {
            bail!("{}: name = {:?} but the directory is {name:?}", path.display(), b.name);
        }
        if !matches!(b.arch.as_str(), "x86_64" | "aarch64") {
            bail!("{}: arch = {:?}: expected x86_64 or aarch64", path.display(), b.arch);
        }
        if b.kernel.sha256.len() != 64 || !b.kernel.sha256.bytes().all(|c| c.is_ascii_hexdigit()) {
            bail!("{}: kernel.sha256: expected 64 hex digits", path.display());
        }
        if !b
            .kernel
            .cmdline
            .split_whitespace()
            .any(|w| w == format!("console={}", b.kernel.console) || w.starts_with(&format!("console={},", b.kernel.console)))
        {
            bail!(
                "{}: kernel.cmdline must send the console to {} (console={})",
                path.display(),
                b.kernel.console,
                b.kernel.console
            );
        }
        if b.nic.names.is_empty() {
            bail!("{}: nic.names: list the management interface first", path.display());
        }
        Ok(b)
    }

    pub fn describe(&self) -> String {
        format!(
            "{} ({}): {}; disk {}; NICs {}",
            self.name,
            self.arch,
            self.description,
            self.disk.device,
            self.nic.names.join(", ")
        )
    }

    /// Debian's architecture name.
    pub fn deb_arch(&self) -> &'static str {
        if self.arch == "aarch64" { "arm64" } else { "amd64" }
    }
}
