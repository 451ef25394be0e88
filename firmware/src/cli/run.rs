//! `flowwarden run` (the live appliance on a tokio runtime until SIGTERM or
//! SIGINT) and `flowwarden forward-test` (one test event per SIEM destination).

use crate::config::Config;
use anyhow::{Context, Result, bail};
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

pub fn run(cfg: Config, dir: PathBuf, listen: Vec<SocketAddr>, demo: bool) -> Result<()> {
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
        let res = crate::pipeline::run_live(cfg, dir, listen, shutdown, on_ready).await;
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
