//! The README's run command, run literally: `cargo xtask ci` starts it exactly
//! as a newcomer would type it, waits for the ready line, stops it with
//! SIGTERM and checks that it shut down cleanly, so the README cannot rot.

use anyhow::{Context, Result, bail};
use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// The first command under "## The two commands" (an indented line starting with `cargo`).
pub fn run_command(readme: &str) -> Result<String> {
    let section = readme
        .split("\n## ")
        .find(|s| s.starts_with("The two commands"))
        .context("README.md has no \"## The two commands\" section")?;
    section
        .lines()
        .filter_map(|l| l.strip_prefix("    "))
        .map(str::trim)
        .find(|l| l.starts_with("cargo ") && !l.contains("xtask"))
        .map(str::to_string)
        .context("README.md's \"The two commands\" has no indented `cargo ...` run command")
}

/// Start the README's run command in `root`, wait for the ready line (the first
/// run builds the release binary), stop it, and require a clean stop.
pub fn check(root: &Path, build_timeout: Duration) -> Result<()> {
    let text = std::fs::read_to_string(root.join("README.md")).context("README.md")?;
    let cmd = run_command(&text)?;
    eprintln!("xtask: README run command, literally: {cmd}");
    let mut child = Command::new("sh")
        .arg("-c")
        .arg(format!("exec {cmd}"))
        .current_dir(root)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .process_group(0)
        .spawn()
        .with_context(|| format!("cannot start {cmd:?}"))?;
    let pgid = child.id();
    let out = child.stdout.take().context("no stdout")?;
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let kill = |sig: &str| {
        let _ = Command::new("kill").args([sig, "--", &format!("-{pgid}")]).status();
    };
    let started = Instant::now();
    let mut web = Vec::new();
    let ready = loop {
        match rx.recv_timeout(Duration::from_millis(500)) {
            Ok(line) if line.starts_with("flowwarden: ready") => break line,
            Ok(line) => {
                if line.starts_with("flowwarden: web https://") {
                    web.push(line.clone());
                }
                // The one-time setup code is a secret: not copied into CI logs.
                if !line.starts_with("flowwarden: web setup code") {
                    eprintln!("  {line}");
                }
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                let st = child.wait()?;
                bail!("`{cmd}` exited ({st}) before printing its ready line");
            }
        }
        if let Some(st) = child.try_wait()? {
            bail!("`{cmd}` exited ({st}) before printing its ready line");
        }
        if started.elapsed() > build_timeout {
            kill("-KILL");
            let _ = child.wait();
            bail!("`{cmd}` printed no ready line within {} s", build_timeout.as_secs());
        }
    };
    eprintln!("xtask: {ready} ({:.0} s after `{cmd}` started)", started.elapsed().as_secs_f64());
    if web.is_empty() {
        kill("-KILL");
        let _ = child.wait();
        bail!("`{cmd}` printed no `flowwarden: web https://…` line before its ready line");
    }
    kill("-TERM");
    let stop = Instant::now();
    let status = loop {
        if let Some(st) = child.try_wait()? {
            break st;
        }
        if stop.elapsed() > Duration::from_secs(30) {
            kill("-KILL");
            let _ = child.wait();
            bail!("`{cmd}` did not stop within 30 s of SIGTERM");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let rest: Vec<String> = rx.try_iter().collect();
    let stopped = rest.iter().find(|l| l.starts_with("flowwarden: stopped:"));
    if !status.success() {
        bail!("`{cmd}` exited with {status} after SIGTERM: {rest:?}");
    }
    let stopped = stopped.with_context(|| format!("`{cmd}` printed no stop summary: {rest:?}"))?;
    eprintln!("xtask: {stopped}");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_run_command() {
        let readme = "# x\n\n## The two commands\n\nRun it:\n\n    cargo run --release -- run\n\nTest:\n\n    cargo xtask ci\n\n## Next\n    cargo other\n";
        assert_eq!(run_command(readme).ok().as_deref(), Some("cargo run --release -- run"));
        assert!(run_command("# x\n").is_err());
    }

    #[test]
    fn the_readme_has_exactly_the_two_commands() {
        let text = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../../README.md")).unwrap_or_default();
        assert_eq!(run_command(&text).ok().as_deref(), Some("cargo run --release -- run"));
        assert!(text.contains("\n    cargo xtask ci\n"));
    }
}
