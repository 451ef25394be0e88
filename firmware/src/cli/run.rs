//! `flowwarden run` (the live appliance on a tokio runtime until SIGTERM or
//! SIGINT) and `flowwarden forward-test` (one test event per SIEM destination).

use crate::config::Config;
use anyhow::{Context, Result, bail};
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

/// Where `run` reads its configuration (again, at a reload) and what its
/// command line changes in it.
pub struct Overrides {
    /// `--config`, else the data directory's `flowwarden.toml` (which may not exist: the built-in defaults).
    pub file: PathBuf,
    pub web_listen: Vec<SocketAddr>,
    pub web_redirect_default: Option<SocketAddr>,
}

impl Overrides {
    /// The command line's settings over the file's.
    pub fn apply(&self, mut cfg: Config) -> Result<Config> {
        cfg.web.config_file = Some(self.file.clone());
        if !self.web_listen.is_empty() {
            cfg.web.listen = Some(self.web_listen.clone());
        }
        if cfg.web.redirect_listen.is_none() {
            cfg.web.redirect_listen = self.web_redirect_default;
        }
        cfg.web
            .check()
            .map_err(|(k, m)| anyhow::anyhow!("--web-listen/--web-redirect-default: [web] {k}: {m}"))?;
        Ok(cfg)
    }

    /// Read the file again (a reload), validated as `check-config` does.
    fn reload(&self) -> std::result::Result<Config, String> {
        let cfg = if self.file.exists() {
            Config::load(&self.file).map_err(|e| e.to_string())?
        } else {
            Config::default()
        };
        self.apply(cfg).map_err(|e| format!("{e:#}"))
    }
}

/// `flowwarden reload`: ask the running appliance to apply its configuration file again.
pub fn reload(dir: &Path, out: &mut dyn Write) -> Result<()> {
    match crate::control::request(dir, &crate::control::Request::Reload)? {
        Some(crate::control::Reply::Reloaded(what)) => {
            writeln!(out, "flowwarden: {what}")?;
            Ok(())
        }
        Some(crate::control::Reply::Refused(why)) => bail!("reload refused: {why}"),
        Some(crate::control::Reply::Done) => Ok(()),
        None => bail!(
            "{}: no appliance is running on this data directory (its configuration is read when `run` starts)",
            dir.display()
        ),
    }
}

/// `flowwarden watchdog-test`: hang one stage of the running appliance on purpose.
pub fn watchdog_test(dir: &Path, stage: &str, yes: bool, out: &mut dyn Write) -> Result<()> {
    if !yes {
        writeln!(
            out,
            "flowwarden: this hangs stage {stage} of the running appliance; it stays hung until the appliance restarts, \
             and on the image the watchdog resets the box about {} s later. Add --yes to do it.",
            crate::progress::STALL.as_secs()
        )?;
        return Ok(());
    }
    let req = crate::control::Request::FreezeStage { stage: stage.to_string() };
    match crate::control::request(dir, &req)? {
        Some(crate::control::Reply::Done) => {
            writeln!(
                out,
                "flowwarden: stage {stage} hangs from its next unit of work; the watchdog notices after {} s",
                crate::progress::STALL.as_secs()
            )?;
            Ok(())
        }
        Some(crate::control::Reply::Refused(why)) => bail!("watchdog-test refused: {why}"),
        Some(other) => bail!("watchdog-test: unexpected answer {other:?}"),
        None => bail!("{}: no appliance is running on this data directory", dir.display()),
    }
}

pub fn run(cfg: Config, dir: PathBuf, listen: Vec<SocketAddr>, overrides: Overrides, demo: bool) -> Result<()> {
    if demo && !cfg!(feature = "demo") {
        bail!("--demo: this build has no demo (firmware images are built without it; use a laptop build)");
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    rt.block_on(async move {
        let shutdown = async {
            let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(e) => {
                    tracing::error!("cannot install SIGTERM handler: {e}");
                    let _ = tokio::signal::ctrl_c().await;
                    return;
                }
            };
            tokio::select! {
                _ = term.recv() => tracing::info!("SIGTERM received"),
                _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received"),
            }
        };
        tracing::info!("data directory {}", dir.display());
        if overrides.file.exists() {
            tracing::info!("configuration {}", overrides.file.display());
        } else {
            tracing::info!(
                "built-in configuration ({} is read at a reload once it exists)",
                overrides.file.display()
            );
        }
        let reloader: crate::pipeline::Reloader = Box::new(move || overrides.reload());
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let mut demo_thread: Option<std::thread::JoinHandle<()>> = None;
        let on_ready = |addrs: &[SocketAddr]| {
            if !demo {
                return;
            }
            #[cfg(feature = "demo")]
            match crate::demo::target(addrs).map(|to| crate::demo::spawn(to, stop.clone())) {
                Some(Ok(h)) => demo_thread = Some(h),
                Some(Err(e)) => tracing::error!("cannot start the demo sender: {e}"),
                None => tracing::error!("demo: no listener to send to"),
            }
            #[cfg(not(feature = "demo"))]
            let _ = (addrs, &stop, &mut demo_thread);
        };
        let res = crate::pipeline::run_live(cfg, dir, listen, reloader, shutdown, on_ready).await;
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(h) = demo_thread {
            let _ = h.join();
        }
        res?;
        Ok(())
    })
}

pub fn forward_test(config: &Path, out: &mut dyn Write) -> Result<()> {
    let cfg = Config::load(config)?;
    if cfg.forward.is_empty() {
        bail!("{}: no [[forward]] destination configured", config.display());
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let results = rt.block_on(crate::forward::test_all(&cfg.forward));
    let mut failed = 0;
    for (name, r) in &results {
        match r {
            // UDP has no acknowledgement: say so rather than "ok".
            Ok(line) if line.starts_with("sent ") => writeln!(out, "{name}: sent, not confirmed: {line}")?,
            Ok(line) => writeln!(out, "{name}: ok: {line}")?,
            Err(e) => {
                failed += 1;
                writeln!(out, "{name}: FAILED: {e}")?;
            }
        }
    }
    if failed > 0 {
        bail!("{failed} of {} destinations failed", results.len());
    }
    Ok(())
}
