//! `flowwarden update FILE|URL [--no-reboot]`: hands a bundle to PID 1, which
//! checks and installs it (crate::init::slots), and prints each step. A URL is
//! downloaded into the data directory first. Ends with exactly one of
//! `flowwarden: update V staged in slot a|b` (exit 0; then PID 1 reboots unless
//! `--no-reboot`), `flowwarden: update refused: REASON` (exit 1) or
//! `flowwarden: update failed: REASON` (exit 2).

use super::Quiet;
use crate::update::ask::{Ending, ask_lines};
use anyhow::Result;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub fn update(source: Option<&str>, data_dir: &Path, no_reboot: bool, acknowledge: bool, out: &mut dyn Write) -> Result<()> {
    if acknowledge {
        let answer = ask_lines("update acknowledge", &mut |_| {});
        let ok = answer.starts_with("ok ");
        writeln!(out, "flowwarden: {}", answer.strip_prefix("ok ").unwrap_or(&answer))?;
        return if ok { Ok(()) } else { Err(Quiet(2).into()) };
    }
    let Some(source) = source else {
        anyhow::bail!("give the bundle: a file or an http:// URL (or --acknowledge-rollback)");
    };
    let ending = install(source, data_dir, out)?;
    writeln!(out, "{}", ending.line())?;
    out.flush()?;
    if let Ending::Staged { .. } = ending
        && !no_reboot
    {
        let answer = ask_lines("system reboot", &mut |_| {});
        if !answer.starts_with("ok") {
            eprintln!("flowwarden: the box did not reboot ({answer}); reboot it to start the new slot");
        }
    }
    match ending.code() {
        0 => Ok(()),
        c => Err(Quiet(c).into()),
    }
}

fn install(source: &str, data_dir: &Path, out: &mut dyn Write) -> Result<Ending> {
    if !crate::management::under_init() {
        // Says why (no PID 1 here) before anything is downloaded.
        return Ok(crate::update::ask::stage(Path::new(source), &mut |_| {}));
    }
    let (file, downloaded) = if source.contains("://") {
        let dir = data_dir.join("update");
        if let Err(e) = std::fs::create_dir_all(&dir) {
            return Ok(Ending::Failed(format!("cannot create {}: {e}", dir.display())));
        }
        let dest = dir.join("download.fwb");
        writeln!(out, "flowwarden: downloading {source}")?;
        out.flush()?;
        match crate::update::fetch::download(source, &dest, crate::update::MAX_BUNDLE, Duration::from_secs(30)) {
            Ok(n) => writeln!(out, "flowwarden: downloaded {n} bytes to {}", dest.display())?,
            Err(e) => {
                let _ = std::fs::remove_file(&dest);
                return Ok(Ending::Failed(format!("download: {e}")));
            }
        }
        (dest, true)
    } else {
        let p = PathBuf::from(source);
        match std::fs::canonicalize(&p) {
            Ok(abs) => (abs, false),
            Err(e) => return Ok(Ending::Failed(format!("{}: {e}", p.display()))),
        }
    };
    writeln!(out, "flowwarden: checking {} and installing it into the other slot", file.display())?;
    out.flush()?;
    let ending = crate::update::ask::stage(&file, &mut |l| {
        let _ = writeln!(out, "flowwarden: {l}");
        let _ = out.flush();
    });
    if downloaded {
        let _ = std::fs::remove_file(&file);
    }
    Ok(ending)
}
