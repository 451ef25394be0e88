//! `cargo xtask`: the one build/test/bench entry point (CI only calls this).
//!
//! - `cargo xtask ci`     installs missing test peers (apt-get), then fmt, clippy, every test.
//! - `cargo xtask bench`  benchmarks against nfcapd; writes bench-out/ and prints a BENCHMARKS.md section.
//! - `cargo xtask deps`   only installs the test peers.

mod bench;

use anyhow::{Context, Result, bail};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

/// Debian packages the tests and benchmarks talk to, with a binary that proves each is there.
const PEERS: &[(&str, &str)] = &[
    ("nfdump", "nfcapd"),
    ("softflowd", "softflowd"),
    ("fprobe", "fprobe"),
    ("tshark", "tshark"),
];

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .unwrap_or_else(|_| PathBuf::from("."))
}

fn have(bin: &str) -> bool {
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(bin).is_file()))
        .unwrap_or(false)
        || ["/usr/sbin", "/sbin"].iter().any(|d| Path::new(d).join(bin).is_file())
}

pub fn run(cmd: &mut Command) -> Result<()> {
    eprintln!("xtask: $ {cmd:?}");
    let status = cmd.status().with_context(|| format!("cannot start {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed with {status}");
    }
    Ok(())
}

fn deps() -> Result<()> {
    let missing: Vec<&str> = PEERS.iter().filter(|(_, bin)| !have(bin)).map(|(pkg, _)| *pkg).collect();
    if missing.is_empty() {
        eprintln!(
            "xtask: test peers present ({})",
            PEERS.iter().map(|p| p.0).collect::<Vec<_>>().join(", ")
        );
        return Ok(());
    }
    let is_root = Command::new("id")
        .arg("-u")
        .output()
        .map(|o| o.stdout.starts_with(b"0"))
        .unwrap_or(false);
    if !is_root {
        bail!(
            "missing Debian packages {missing:?}; install them with: sudo apt-get install -y {}",
            missing.join(" ")
        );
    }
    eprintln!("xtask: installing {missing:?} with apt-get (needed by the integration tests)");
    run(Command::new("apt-get").args(["update", "-qq"]))?;
    run(Command::new("apt-get")
        .env("DEBIAN_FRONTEND", "noninteractive")
        .args(["install", "-y", "-qq", "--no-install-recommends"])
        .args(&missing))?;
    Ok(())
}

fn cargo() -> Command {
    let mut c = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    c.current_dir(root());
    c
}

fn ci() -> Result<()> {
    let t0 = Instant::now();
    deps()?;
    run(cargo().args(["fmt", "--all", "--", "--check"]))?;
    run(cargo().args(["clippy", "--workspace", "--all-targets", "--profile", "ci", "--", "-D", "warnings"]))?;
    run(cargo().args(["test", "--workspace", "--profile", "ci", "--no-fail-fast"]))?;
    eprintln!("xtask: ci passed in {:.0} s", t0.elapsed().as_secs_f64());
    Ok(())
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("ci") => ci(),
        Some("deps") => deps(),
        Some("bench") => {
            deps()?;
            bench::bench(&root(), &args[1..])
        }
        _ => {
            eprintln!("usage: cargo xtask <ci|bench|deps>");
            std::process::exit(2);
        }
    }
}
