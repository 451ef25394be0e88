//! `cargo xtask`: the one build/test/bench entry point (CI only calls this).
//!
//! - `cargo xtask ci`     installs missing test peers (apt-get), then fmt, clippy, every test.
//! - `cargo xtask bench`  benchmarks against nfcapd; writes bench-out/ and prints a BENCHMARKS.md section.
//! - `cargo xtask eval`   detection quality on flowgen scenarios and real captures (BENCHMARKS.md).
//! - `cargo xtask deps`   only installs the test peers.
//! - `cargo xtask build --arch x86_64|aarch64`  static binary for a firmware image.
//! - `cargo xtask image --board NAME`           target/images/NAME.img (path printed last).
//! - `cargo xtask qemu-test --board NAME`       boots the image under QEMU and tests it.

mod bench;
mod board;
mod build;
mod cpio;
mod eval;
mod geo;
mod image;
mod kernel;
mod pagebench;
mod qemu;
mod qemu_update;
mod readme;
mod webcheck;

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
    // The SIEM in the forwarding tests: rsyslog with its gnutls driver.
    ("rsyslog", "rsyslogd"),
    ("rsyslog-gnutls", "/usr/share/doc/rsyslog-gnutls/copyright"),
    // init::gpt's unit test checks its partition table against sfdisk.
    ("fdisk", "sfdisk"),
    // The page's browser test: headless Chromium driven over WebDriver.
    ("chromium", "chromium"),
    ("chromium-driver", "chromedriver"),
    // The QEMU test reads the guest's page from the host.
    ("curl", "curl"),
    ("openssl", "openssl"),
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
    let peers: Vec<(&str, &str)> = PEERS.to_vec();
    apt_ensure(&peers, false)?;
    // The tests use the country database the images carry.
    geo::database(&root()).map(|_| ())
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| o.stdout.starts_with(b"0\n"))
        .unwrap_or(false)
}

/// Installs the Debian packages whose witness (a binary name or an absolute path)
/// is missing, saying what and why. `arm64` packages need the arm64 architecture.
pub fn apt_ensure(wanted: &[(&str, &str)], arm64: bool) -> Result<()> {
    let present = |w: &str| if w.starts_with('/') { Path::new(w).exists() } else { have(w) };
    let missing: Vec<&str> = wanted.iter().filter(|(_, w)| !present(w)).map(|(pkg, _)| *pkg).collect();
    if missing.is_empty() {
        eprintln!("xtask: present: {}", wanted.iter().map(|p| p.0).collect::<Vec<_>>().join(", "));
        return Ok(());
    }
    if !is_root() {
        bail!(
            "missing Debian packages {missing:?}; install them with: sudo apt-get install -y {}",
            missing.join(" ")
        );
    }
    if arm64 || missing.iter().any(|p| p.ends_with(":arm64")) {
        let archs = Command::new("dpkg").arg("--print-foreign-architectures").output()?;
        if !String::from_utf8_lossy(&archs.stdout).lines().any(|l| l.trim() == "arm64") {
            eprintln!("xtask: enabling Debian's arm64 architecture (for the aarch64 standard library and firmware)");
            run(Command::new("dpkg").args(["--add-architecture", "arm64"]))?;
        }
    }
    eprintln!("xtask: installing {missing:?} with apt-get");
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
    if no_color() {
        c.env("CARGO_TERM_COLOR", "never");
    }
    c
}

/// NO_COLOR (https://no-color.org): set and not empty.
pub fn no_color() -> bool {
    std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty())
}

/// Run one named step of a longer job, printing how long it took (and, when it
/// fails, which step failed).
pub fn step<T>(name: &str, f: impl FnOnce() -> Result<T>) -> Result<T> {
    let t = Instant::now();
    eprintln!("xtask: == {name}");
    match f() {
        Ok(v) => {
            eprintln!("xtask: == {name}: ok in {:.0} s", t.elapsed().as_secs_f64());
            Ok(v)
        }
        Err(e) => {
            eprintln!("xtask: == {name}: FAILED after {:.0} s", t.elapsed().as_secs_f64());
            Err(e.context(format!("step {name:?} failed")))
        }
    }
}

fn ci() -> Result<()> {
    let t0 = Instant::now();
    step("deps", deps)?;
    step("fmt", || run(cargo().args(["fmt", "--all", "--", "--check"])))?;
    step("clippy", || {
        run(cargo().args(["clippy", "--workspace", "--all-targets", "--profile", "ci", "--", "-D", "warnings"]))
    })?;
    step("test", || {
        run(cargo().args(["test", "--workspace", "--profile", "ci", "--no-fail-fast"]))
    })?;
    // The README's first command, exactly as written (builds the release binary once).
    step("readme run command", || {
        readme::check(&root(), std::time::Duration::from_secs(1800))
    })?;
    // Detection targets on one tuning and one held-out seed (the full table: `cargo xtask eval`).
    step("eval --quick", || {
        eval::eval(&root(), &["--quick".into(), "--profile".into(), "ci".into()])
    })?;
    for board in QEMU_BOARDS {
        step(&format!("qemu-test {board}"), || qemu::qemu_test(&root(), board, false))?;
    }
    // Hardware boards are not booted here, but their images must build (module lists
    // resolve against the board's kernel); the binaries are already built above.
    for board in HARDWARE_BOARDS {
        step(&format!("image {board}"), || image::image(&root(), board, &[]).map(|_| ()))?;
    }
    eprintln!("xtask: ci passed in {:.0} s", t0.elapsed().as_secs_f64());
    Ok(())
}

/// Long suites, not part of CI (their results go in BENCHMARKS.md): every
/// property test with many more cases, the hostile-input suite over more seeds,
/// the full detection evaluation (all tuning and held-out seeds), and repeated
/// boots of each QEMU board.
fn soak(args: &[String]) -> Result<()> {
    let t0 = Instant::now();
    let cases = flag(args, "--cases").unwrap_or("20000");
    let seeds = flag(args, "--seeds").unwrap_or("20");
    let boots: usize = flag(args, "--boots").unwrap_or("3").parse().context("--boots takes a number")?;
    step("deps", deps)?;
    step(&format!("property tests, {cases} cases each"), || {
        run(cargo()
            .env("PROPTEST_CASES", cases)
            .args(["test", "--workspace", "--profile", "ci", "--lib", "--no-fail-fast"]))
    })?;
    step(&format!("hostile input, {seeds} seeds"), || {
        run(cargo()
            .env("FLOWWARDEN_HOSTILE_SEEDS", seeds)
            .args(["test", "--profile", "ci", "-p", "flowwarden", "--test", "hostile"]))
    })?;
    step("eval (all seeds)", || eval::eval(&root(), &["--profile".into(), "ci".into()]))?;
    for board in QEMU_BOARDS {
        for i in 1..=boots {
            step(&format!("qemu-test {board} ({i}/{boots})"), || {
                qemu::qemu_test(&root(), board, false)
            })?;
        }
    }
    eprintln!("xtask: soak passed in {:.0} s", t0.elapsed().as_secs_f64());
    Ok(())
}

/// The boards `cargo xtask ci` builds and boots.
const QEMU_BOARDS: &[&str] = &["qemu-x86_64", "qemu-aarch64"];
const HARDWARE_BOARDS: &[&str] = &["x86-appliance", "arm-minipc"];

/// Every value of a flag that may be given more than once.
fn flags(args: &[String], name: &str) -> Vec<String> {
    args.windows(2).filter(|w| w[0] == name).map(|w| w[1].clone()).collect()
}

/// The value of `--name VALUE` in `args`.
fn flag<'a>(args: &'a [String], name: &str) -> Result<&'a str> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .map(String::as_str)
        .with_context(|| format!("missing {name} VALUE"))
}

const USAGE: &str = "usage: cargo xtask <command>
  ci                          everything CI runs (deps, fmt, clippy, tests, README run command, eval --quick, QEMU)
  deps                        install the Debian test peers
  readme                      run the README's run command, wait for ready, stop it
  soak [--cases N] [--seeds N] [--boots N]   long suites CI does not run (property tests, hostile seeds, full eval, boots)
  bench [--quick] [--before BIN]   benchmarks beside nfcapd (BENCHMARKS.md); BIN: an older build to compare
  bench-page [--hosts N]      the status page's weight and time per page over a 2-hour office (N hosts, default 3000)
  eval [--quick] [--profile P]   detection quality on flowgen scenarios and real captures
  build --arch x86_64|aarch64 static binary for a firmware image
  image --board NAME [--update-key PUB.pem]...   disk image for a board (trusting those update keys; default: a development key in target/keys/)
  bundle --board NAME --key KEY.pem [--version V] [--epoch N]   signed update bundle target/bundles/NAME-V.fwb
  qemu-test --board NAME [--only-updates]   boot the board's image under QEMU and test it (--only-updates: just the A/B update test)";

/// Refuse flags a command does not know; `allowed` lists (flag, takes a value).
fn check_flags(command: &str, args: &[String], allowed: &[(&str, bool)]) -> Result<()> {
    let mut i = 0;
    while i < args.len() {
        let a = &args[i];
        match allowed.iter().find(|(f, _)| f == a) {
            Some((_, true)) => {
                if args.get(i + 1).is_none_or(|v| v.starts_with("--")) {
                    bail!("cargo xtask {command}: {a} needs a value\n{USAGE}");
                }
                i += 2;
            }
            Some((_, false)) => i += 1,
            None => {
                let known: Vec<&str> = allowed.iter().map(|f| f.0).collect();
                bail!(
                    "cargo xtask {command}: unknown argument {a:?} (it takes {})\n{USAGE}",
                    if known.is_empty() { "none".to_string() } else { known.join(", ") }
                );
            }
        }
    }
    Ok(())
}

fn dispatch(args: &[String]) -> Result<()> {
    let (command, rest) = match args.split_first() {
        Some((c, rest)) => (c.as_str(), rest),
        None => bail!("no command\n{USAGE}"),
    };
    match command {
        "ci" => {
            check_flags(command, rest, &[])?;
            ci()
        }
        "deps" => {
            check_flags(command, rest, &[])?;
            deps()
        }
        "soak" => {
            check_flags(command, rest, &[("--cases", true), ("--seeds", true), ("--boots", true)])?;
            soak(rest)
        }
        "readme" => {
            check_flags(command, rest, &[])?;
            readme::check(&root(), std::time::Duration::from_secs(1800))
        }
        "bench-page" => {
            check_flags(command, rest, &[("--hosts", true)])?;
            deps()?;
            let root = root();
            run(cargo().args(["build", "--release", "-p", "flowwarden", "-p", "flowgen"]))?;
            let out = root.join("bench-out");
            std::fs::create_dir_all(&out)?;
            let hosts = flag(rest, "--hosts").unwrap_or("3000");
            let md = pagebench::measure(
                &root.join("target/release/flowwarden"),
                &root.join("target/release/flowgen"),
                &out,
                hosts,
            )?;
            println!("{md}");
            Ok(())
        }
        "bench" => {
            check_flags(command, rest, &[("--quick", false), ("--before", true)])?;
            deps()?;
            bench::bench(&root(), rest)
        }
        "eval" => {
            check_flags(command, rest, &[("--quick", false), ("--profile", true)])?;
            eval::eval(&root(), rest)
        }
        "build" => {
            check_flags(command, rest, &[("--arch", true)])?;
            let bin = build::build(&root(), flag(rest, "--arch")?)?;
            println!("{}", bin.display());
            Ok(())
        }
        "image" => {
            check_flags(command, rest, &[("--board", true), ("--update-key", true)])?;
            let keys: Vec<PathBuf> = flags(rest, "--update-key").into_iter().map(PathBuf::from).collect();
            if keys.len() > 2 {
                bail!("cargo xtask image: at most two --update-key (the current one and its successor)");
            }
            let img = image::image(&root(), flag(rest, "--board")?, &keys)?;
            println!("{}", img.display());
            Ok(())
        }
        "bundle" => {
            check_flags(
                command,
                rest,
                &[("--board", true), ("--key", true), ("--version", true), ("--epoch", true)],
            )?;
            let epoch = match flag(rest, "--epoch") {
                Ok(e) => Some(
                    e.parse::<u32>()
                        .with_context(|| format!("--epoch {e:?}: expected a whole number"))?,
                ),
                Err(_) => None,
            };
            let out = image::bundle(
                &root(),
                flag(rest, "--board")?,
                Path::new(flag(rest, "--key")?),
                flag(rest, "--version").ok(),
                epoch,
                false,
            )?;
            println!("{}", out.display());
            Ok(())
        }
        "qemu-test" => {
            check_flags(command, rest, &[("--board", true), ("--only-updates", false)])?;
            qemu::qemu_test(&root(), flag(rest, "--board")?, rest.iter().any(|a| a == "--only-updates"))
        }
        other => bail!("unknown command {other:?}\n{USAGE}"),
    }
}

/// Errors are printed as a chain of causes (the failed step first), never as a
/// panic with a backtrace; the exit status is 1.
fn main() -> std::process::ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match dispatch(&args) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: error: {e}");
            for cause in e.chain().skip(1) {
                eprintln!("  because: {cause}");
            }
            std::process::ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_flags_are_refused() {
        let v = |s: &[&str]| s.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        assert!(
            check_flags(
                "eval",
                &v(&["--quick", "--profile", "ci"]),
                &[("--quick", false), ("--profile", true)]
            )
            .is_ok()
        );
        let e = check_flags("eval", &v(&["--quik"]), &[("--quick", false)])
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(e.contains("unknown argument \"--quik\""), "{e}");
        let e = check_flags("image", &v(&["--board"]), &[("--board", true)])
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(e.contains("--board needs a value"), "{e}");
        assert!(dispatch(&v(&["frobnicate"])).is_err());
    }
}
