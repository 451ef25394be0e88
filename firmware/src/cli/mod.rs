//! The command line: the edge of the program, where errors become messages
//! and exit codes.
//!
//! `run`, `ingest`, `query`, `exporters`, `alerts`, `detectors`, `forward-test`,
//! `forward-status`, `user`, `token`, `check-config`, `version` ([`args`]). Every command writes
//! through one buffered stdout handle; a reader that goes away (`| head`) ends
//! the program quietly with success, as Unix tools do. Tables for people go
//! through [`crate::table`]; sizes, rates and durations through [`crate::units`].

mod accounts;
pub mod args;
mod ingest;
mod query;
mod run;
mod status;
mod update;

pub use args::{AlertFormat, Bucket, Cli, Command, QueryArgs, TableOrJson};

use crate::config::Config;
use anyhow::{Result, bail};
use std::io::Write;
use std::path::{Path, PathBuf};

pub use crate::config::SAVED_CONFIG;

fn load_config(path: Option<&Path>) -> Result<Config> {
    match path {
        Some(p) => Ok(Config::load(p)?),
        None => Ok(Config::default()),
    }
}

/// An ending whose message was already printed: exit with this code and say nothing more.
#[derive(Debug, thiserror::Error)]
#[error("exit {0}")]
pub struct Quiet(pub u8);

/// Where `run` keeps data when neither flag nor config says.
pub fn default_data_dir() -> PathBuf {
    if rustix::process::getuid().is_root() {
        PathBuf::from("/var/lib/flowwarden")
    } else {
        std::env::var_os("HOME")
            .map(|h| PathBuf::from(h).join(".local/share/flowwarden"))
            .unwrap_or_else(|| PathBuf::from("flowwarden-data"))
    }
}

/// A data directory a reading command needs: it must exist and be a directory.
fn existing_data_dir(dir: &Path) -> Result<()> {
    match std::fs::metadata(dir) {
        Ok(m) if m.is_dir() => Ok(()),
        Ok(_) => bail!("{} is a file, not a data directory (--data-dir)", dir.display()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => bail!(
            "{}: no such data directory (--data-dir names where `run` or `ingest` stored flows)",
            dir.display()
        ),
        Err(e) => bail!("{}: cannot read the data directory: {e}", dir.display()),
    }
}

/// A data directory a writing command may create: not a file.
fn writable_data_dir(dir: &Path) -> Result<()> {
    match std::fs::metadata(dir) {
        Ok(m) if !m.is_dir() => bail!(
            "{} is a file, not a directory: give --data-dir a directory (it is created if missing)",
            dir.display()
        ),
        _ => Ok(()),
    }
}

/// Whether an error comes from writing into a pipe whose reader has gone.
pub fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

pub fn main_with(cli: Cli) -> Result<()> {
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    let r = dispatch(cli, &mut out);
    let flushed = out.flush();
    r?;
    Ok(flushed?)
}

fn dispatch(cli: Cli, out: &mut dyn Write) -> Result<()> {
    match cli.command {
        Command::Run {
            config,
            data_dir,
            listen,
            web_listen,
            web_redirect_default,
            demo,
        } => {
            let mut cfg = load_config(config.as_deref())?;
            let dir = data_dir.or_else(|| cfg.data_dir.clone()).unwrap_or_else(default_data_dir);
            writable_data_dir(&dir)?;
            // First boot: a provisioning file (ESP or data directory) is applied once, before
            // the configuration is read.
            let places = [
                Path::new(crate::update::ESP_MOUNT).join(crate::provision::FILE),
                dir.join(crate::provision::FILE),
            ];
            match crate::provision::run_pending(&dir, &places, crate::timefmt::now_ms()) {
                Some(Ok(summary)) => {
                    writeln!(out, "flowwarden: provisioning {summary}")?;
                    out.flush()?;
                }
                Some(Err(e)) => {
                    writeln!(out, "flowwarden: provisioning REJECTED, nothing of it applied: {e}")?;
                    out.flush()?;
                }
                None => {}
            }
            // A restore staged while the appliance ran (`flowwarden restore`, the page): now,
            // before anything is opened.
            match crate::backup::apply_pending(&crate::store::DataDir::new(&dir)) {
                Ok(Some(summary)) => {
                    let line = format!("restore applied: {summary}");
                    writeln!(out, "flowwarden: {line}")?;
                    out.flush()?;
                    crate::update::append_event(&dir, "restored", &line);
                }
                Ok(None) => {}
                Err(e) => {
                    writeln!(out, "flowwarden: restore NOT applied: {e}")?;
                    out.flush()?;
                    crate::update::append_event(&dir, "restore_failed", &e.to_string());
                }
            }
            // Without --config, the data directory's file (written by the page's settings) if there is one.
            let file = config.unwrap_or_else(|| dir.join(SAVED_CONFIG));
            let overrides = run::Overrides {
                file,
                web_listen,
                web_redirect_default,
            };
            if overrides.file.exists() {
                cfg = Config::load(&overrides.file)?;
            }
            let cfg = overrides.apply(cfg)?;
            crate::geo::install(&dir);
            run::run(cfg, dir, listen, overrides, demo)
        }
        Command::Ingest { config, data_dir, files } => {
            let cfg = load_config(config.as_deref())?;
            writable_data_dir(&data_dir)?;
            // Alerts carry the countries of their addresses.
            crate::geo::install(&data_dir);
            ingest::ingest(&cfg, &data_dir, &files, out)
        }
        Command::Query { data_dir, query } => {
            existing_data_dir(&data_dir)?;
            crate::geo::install(&data_dir);
            query::query(&data_dir, query, out)
        }
        Command::Exporters { data_dir, format } => {
            existing_data_dir(&data_dir)?;
            status::exporters(&data_dir, format, out)
        }
        Command::Alerts {
            data_dir,
            since,
            kind,
            format,
        } => {
            existing_data_dir(&data_dir)?;
            status::alerts(&data_dir, since.as_deref(), kind.as_deref(), format, out)
        }
        Command::Detectors { data_dir, format } => {
            existing_data_dir(&data_dir)?;
            status::detectors(&data_dir, format, out)
        }
        Command::Metrics { data_dir } => {
            existing_data_dir(&data_dir)?;
            status::metrics(&data_dir, out)
        }
        Command::ForwardTest { config } => run::forward_test(&config, out),
        Command::ForwardStatus { data_dir, format } => {
            existing_data_dir(&data_dir)?;
            status::forward_status(&data_dir, format, out)
        }
        Command::User { action } => accounts::user(action, out),
        Command::Token { action } => accounts::token(action, out),
        Command::CheckConfig { file } => status::check_config(&file, out),
        Command::Backup { data_dir, file } => accounts::backup(&data_dir, &file, out),
        Command::Restore { data_dir, file } => accounts::restore(&data_dir, &file, out),
        Command::Reload { data_dir } => run::reload(&data_dir, out),
        Command::WatchdogTest { data_dir, stage, yes } => run::watchdog_test(&data_dir, &stage, yes, out),
        Command::Update {
            source,
            no_reboot,
            data_dir,
            acknowledge_rollback,
        } => update::update(source.as_deref(), &data_dir, no_reboot, acknowledge_rollback, out),
        Command::Version => {
            writeln!(
                out,
                "flowwarden {} ({} {}, store schema {})",
                crate::version::version(),
                std::env::consts::ARCH,
                std::env::consts::OS,
                crate::store::schema::SCHEMA_VERSION
            )?;
            Ok(())
        }
    }
}
