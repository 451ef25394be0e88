//! Which Debian kernel package an image gets.
//!
//! board.toml pins a package, version and sha256 (reproducible images). Debian
//! drops superseded kernels from bookworm-security without notice, so a pin
//! that is gone must not fail the build: xtask then takes the newest kernel of
//! the same series and flavour (`linux-image-6.1.0-N-amd64`, highest N) that
//! the configured mirrors offer. `apt-get download` checks that package against
//! the hashes in Debian's signed indexes; xtask records which kernel it used,
//! and why, in the image's release file. It fails only when no kernel of the
//! series exists at all.

use crate::board::Board;
use crate::run;
use anyhow::{Context, Result, bail};
use std::path::{Path, PathBuf};
use std::process::Command;

/// The kernel an image is built with.
#[derive(Debug, Clone)]
pub struct KernelDeb {
    pub deb: PathBuf,
    pub package: String,
    pub version: String,
    pub sha256: String,
    /// Why it is not the pinned one, when it is not.
    pub note: Option<String>,
}

impl KernelDeb {
    /// `6.1.0-57-amd64`: the directory under /lib/modules and the vmlinuz suffix.
    pub fn release(&self) -> &str {
        self.package.trim_start_matches("linux-image-")
    }

    /// The line for the image's release file.
    pub fn release_line(&self) -> String {
        match &self.note {
            Some(n) => format!("kernel {} {} sha256 {} ({n})", self.package, self.version, self.sha256),
            None => format!("kernel {} {} sha256 {}", self.package, self.version, self.sha256),
        }
    }
}

/// `linux-image-6.1.0-56-amd64` → (`linux-image-6.1.0-`, `amd64`): the series and flavour around the ABI number.
pub fn series(package: &str) -> Option<(String, String)> {
    let rest = package.strip_prefix("linux-image-")?;
    let mut parts: Vec<&str> = rest.split('-').collect();
    if parts.len() < 3 {
        return None;
    }
    let upstream = parts.remove(0);
    let abi = parts.remove(0);
    if !abi.chars().all(|c| c.is_ascii_digit()) || !upstream.split('.').all(|p| p.parse::<u32>().is_ok()) {
        return None;
    }
    Some((format!("linux-image-{upstream}-"), parts.join("-")))
}

/// The ABI number of a package of `series`/`flavour`, if it is one (not -dbg, -unsigned, ...).
fn abi_of(package: &str, prefix: &str, flavour: &str) -> Option<u32> {
    package.strip_prefix(prefix)?.strip_suffix(&format!("-{flavour}"))?.parse().ok()
}

/// Versions of `package` the mirrors offer for `arch`, newest first (apt-cache madison order).
fn available(package: &str, arch: &str) -> Result<Vec<String>> {
    let o = Command::new("apt-cache")
        .args(["madison", &format!("{package}:{arch}")])
        .output()
        .context("apt-cache madison")?;
    Ok(String::from_utf8_lossy(&o.stdout)
        .lines()
        .filter_map(|l| l.split('|').nth(1).map(|v| v.trim().to_string()))
        .filter(|v| !v.is_empty())
        .collect())
}

/// The SHA256 that Debian's index lists for `package`=`version` on `arch`.
fn index_sha256(package: &str, version: &str, arch: &str) -> Result<String> {
    let o = Command::new("apt-cache")
        .args(["show", &format!("{package}:{arch}={version}")])
        .output()
        .context("apt-cache show")?;
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("SHA256: ").map(|s| s.trim().to_string()))
        .with_context(|| format!("apt-cache show {package}={version} lists no SHA256"))
}

/// Newest ABI of the series on the mirrors: (package, version).
fn newest_of_series(prefix: &str, flavour: &str, arch: &str) -> Result<Option<(String, String)>> {
    let pattern = format!("^{}[0-9]+-{}$", regex_escape(prefix), regex_escape(flavour));
    let o = Command::new("apt-cache")
        .args(["search", "--names-only", &pattern])
        .output()
        .context("apt-cache search")?;
    let mut found: Vec<(u32, String)> = String::from_utf8_lossy(&o.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter_map(|p| abi_of(p, prefix, flavour).map(|abi| (abi, p.to_string())))
        .collect();
    found.sort();
    while let Some((_, pkg)) = found.pop() {
        if let Some(v) = available(&pkg, arch)?.into_iter().next() {
            return Ok(Some((pkg, v)));
        }
    }
    Ok(None)
}

fn regex_escape(s: &str) -> String {
    s.chars()
        .flat_map(|c| if ".+*?()[]{}|^$\\".contains(c) { vec!['\\', c] } else { vec![c] })
        .collect()
}

fn download(cache: &Path, package: &str, version: &str, arch: &str) -> Result<PathBuf> {
    let deb = cache.join(format!("{package}_{version}_{arch}.deb"));
    if !deb.exists() {
        eprintln!("xtask: downloading {package} {version} ({arch}) with apt-get download");
        run(Command::new("apt-get")
            .args(["download", "-q", &format!("{package}:{arch}={version}")])
            .current_dir(cache))?;
        // apt names the file with the version's epoch escaped; find what it wrote.
        if !deb.exists() {
            let prefix = format!("{package}_");
            let written = std::fs::read_dir(cache)?
                .flatten()
                .map(|e| e.path())
                .find(|p| {
                    p.file_name()
                        .map(|n| n.to_string_lossy().into_owned())
                        .is_some_and(|n| n.starts_with(&prefix) && n.ends_with(&format!("_{arch}.deb")) && n.contains(version))
                })
                .with_context(|| format!("apt-get download left no {prefix}*.deb in {}", cache.display()))?;
            std::fs::rename(written, &deb)?;
        }
    }
    Ok(deb)
}

/// The board's kernel: the pinned package if the mirrors still have it (its
/// sha256 checked against the pin), else the newest of its series.
pub fn fetch(cache: &Path, board: &Board) -> Result<KernelDeb> {
    let k = &board.kernel;
    let arch = board.deb_arch();
    let pinned_deb = cache.join(format!("{}_{}_{arch}.deb", k.package, k.version));
    let pinned_available = pinned_deb.exists() || available(&k.package, arch)?.contains(&k.version);
    if pinned_available {
        let deb = download(cache, &k.package, &k.version, arch)?;
        let got = crate::image::sha256(&deb)?;
        if !got.eq_ignore_ascii_case(&k.sha256) {
            bail!(
                "{}: sha256 {got}, board/{}/board.toml pins {}; delete the file to download it again",
                deb.display(),
                board.name,
                k.sha256
            );
        }
        return Ok(KernelDeb {
            deb,
            package: k.package.clone(),
            version: k.version.clone(),
            sha256: got,
            note: None,
        });
    }
    let (prefix, flavour) = series(&k.package).with_context(|| {
        format!(
            "board/{}/board.toml: {:?} is not a linux-image-X.Y.Z-ABI-FLAVOUR package",
            board.name, k.package
        )
    })?;
    let (package, version) = newest_of_series(&prefix, &flavour, arch)?.with_context(|| {
        format!(
            "no kernel of the series {prefix}N-{flavour} ({arch}) is on the configured Debian mirrors \
             (pinned: {} {}); check /etc/apt/sources.list for bookworm and bookworm-security",
            k.package, k.version
        )
    })?;
    let deb = download(cache, &package, &version, arch)?;
    let listed = index_sha256(&package, &version, arch)?;
    let got = crate::image::sha256(&deb)?;
    if !got.eq_ignore_ascii_case(&listed) {
        bail!("{}: sha256 {got}, Debian's index lists {listed}", deb.display());
    }
    let note = format!(
        "pinned {} {} is no longer on the mirrors; newest of its series, verified by apt against Debian's signed index",
        k.package, k.version
    );
    eprintln!("xtask: kernel for {}: {package} {version} ({note})", board.name);
    Ok(KernelDeb {
        deb,
        package,
        version,
        sha256: got,
        note: Some(note),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn series_and_abi_are_read_from_the_package_name() {
        assert_eq!(
            series("linux-image-6.1.0-56-amd64"),
            Some(("linux-image-6.1.0-".into(), "amd64".into()))
        );
        assert_eq!(
            series("linux-image-6.1.0-56-rt-arm64"),
            Some(("linux-image-6.1.0-".into(), "rt-arm64".into()))
        );
        assert_eq!(series("linux-image-amd64"), None);
        assert_eq!(abi_of("linux-image-6.1.0-57-amd64", "linux-image-6.1.0-", "amd64"), Some(57));
        assert_eq!(abi_of("linux-image-6.1.0-57-amd64-dbg", "linux-image-6.1.0-", "amd64"), None);
        assert_eq!(abi_of("linux-image-6.1.0-57-amd64-unsigned", "linux-image-6.1.0-", "amd64"), None);
        assert_eq!(abi_of("linux-image-6.1.0-57-rt-amd64", "linux-image-6.1.0-", "amd64"), None);
        assert_eq!(regex_escape("linux-image-6.1.0-"), "linux-image-6\\.1\\.0-");
    }
}
