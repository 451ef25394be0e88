//! The local web status page for field technicians and analysts (issue 13).
//!
//! `run` calls [`start`]: it loads or makes the HTTPS identity, binds every
//! `[web] listen` address (and `redirect_listen`), prints one
//! `flowwarden: web https://ADDR:PORT/ certificate sha256:…` line per
//! listener and, while no admin exists, the one-time setup code. Requests go
//! through [`app`] (routes, sessions, CSRF, headers); the pages and their JSON
//! twins are built from one snapshot per view ([`views`]) that reads the
//! store read-only and the process's live metrics, and rendered by [`pages`].
//! Account changes made on the page go through the control channel's handler,
//! exactly like `flowwarden user …`.

pub mod app;
pub mod audit;
pub mod auth;
pub mod cert;
pub mod config_edit;
pub mod html;
pub mod listen;
pub mod pages;
pub mod settings;
pub mod site;
pub mod views;

use crate::metrics::Registry;
use settings::WebConfig;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use thiserror::Error;

#[derive(Debug, Error)]
pub enum WebError {
    #[error("web: cannot listen on {addr}: {source}")]
    Bind { addr: SocketAddr, source: std::io::Error },
    #[error("web: HTTPS certificate: {0}")]
    Cert(#[from] cert::CertError),
}

/// The page's clock (Unix ms); tests inject their own.
pub type Clock = Arc<dyn Fn() -> u64 + Send + Sync>;

/// What the page needs from the appliance.
pub struct Appliance {
    pub data_dir: PathBuf,
    pub metrics: Arc<Registry>,
    /// Applies account changes (the control channel's handler); None: read-only.
    pub control: Option<crate::control::Handler>,
    pub clock: Clock,
    /// Where the collector listens (for the overview).
    pub collector: Vec<SocketAddr>,
    /// The configured SIEM destinations at start (the page's state takes them; a reload replaces them there).
    pub forward: Vec<crate::forward::settings::ForwardConfig>,
    /// Where PID 1 writes `network.json` and `time.json` (`/run/flowwarden`; None: not known).
    pub host_status_dir: Option<PathBuf>,
    /// Where audit events go to be spooled for every `[[forward]]` destination.
    pub audit_outbox: Option<crate::forward::spool::Outbox>,
    /// The configuration file the page's settings change (None: read-only).
    pub settings: Option<config_edit::SettingsAccess>,
    /// Names shown beside addresses (`[[network.name]]`).
    pub names: Vec<crate::net::NamedNet>,
}

/// A started page: its listeners' addresses and tasks.
pub struct Started {
    /// The HTTPS addresses actually bound.
    pub urls: Vec<SocketAddr>,
    /// The page's state (a reload hands it the new settings).
    pub state: app::State,
    pub tasks: Vec<tokio::task::JoinHandle<()>>,
}

/// Bind the page's listeners and serve until `stop`. Prints the listener lines
/// (and the setup code while no admin exists) on stdout.
pub async fn start(cfg: &WebConfig, app: Appliance, root: bool, stop: tokio::sync::watch::Receiver<bool>) -> Result<Started, WebError> {
    let addrs = cfg.listen_addrs(root);
    let names = host_names();
    let identity = cert::load_or_generate(
        cfg.tls_cert_file.as_deref(),
        cfg.tls_key_file.as_deref(),
        &app.data_dir,
        &names,
        (app.clock)(),
    )?;
    match &identity.origin {
        cert::Origin::Generated { replaced: Some(why) } => {
            tracing::warn!("web: {why}; a new self-signed certificate was made")
        }
        cert::Origin::Generated { replaced: None } => tracing::info!("web: made a self-signed certificate (kept in the data directory)"),
        _ => {}
    }
    let mut listeners = Vec::new();
    for a in &addrs {
        match listen::bind(*a) {
            Ok(l) => listeners.push(l),
            // The default `[::]:443` on a kernel without IPv6: the IPv4 listener serves.
            Err(WebError::Bind { source, .. })
                if cfg.listen.is_none()
                    && a.is_ipv6()
                    && [rustix::io::Errno::AFNOSUPPORT, rustix::io::Errno::ADDRNOTAVAIL]
                        .iter()
                        .any(|e| source.raw_os_error() == Some(e.raw_os_error())) =>
            {
                tracing::warn!("web: no IPv6 on this system; not listening on {a}");
            }
            Err(e) => return Err(e),
        }
    }
    let redirect = cfg.redirect_listen.map(listen::bind).transpose()?;
    let shared = listen::Shared::new(app.metrics.clone());
    html::set_names(app.names.clone());
    let state = app::State::new(app, cfg, identity.fingerprint.clone(), identity.not_after_ms);
    let router = app::router(state.clone());
    let mut tasks = Vec::new();
    let mut urls = Vec::new();
    for l in listeners {
        let Ok(bound) = l.local_addr() else { continue };
        urls.push(bound);
        tasks.push(tokio::spawn(listen::serve_https(
            l,
            identity.config.clone(),
            router.clone(),
            shared.clone(),
            stop.clone(),
        )));
    }
    state.set_urls(&urls);
    let mut out = std::io::stdout();
    for u in &urls {
        say(
            &mut out,
            &format!("flowwarden: web https://{u}/ certificate {}", identity.fingerprint),
        );
    }
    if let Some(l) = redirect {
        let port = urls.first().map(|u| u.port()).unwrap_or(443);
        if let Ok(b) = l.local_addr() {
            say(&mut out, &format!("flowwarden: web http://{b}/ redirects to https"));
        }
        tasks.push(tokio::spawn(listen::serve_redirect(l, port, shared.clone(), stop.clone())));
    }
    // Prints the setup code while no admin exists.
    state.refresh_setup();
    tasks.push(tokio::spawn(app::housekeeping(state.clone(), stop)));
    Ok(Started { urls, state, tasks })
}

/// A line on stdout (the console on the image) and in the log.
fn say(out: &mut impl std::io::Write, line: &str) {
    let _ = writeln!(out, "{line}");
    tracing::info!("{line}");
}

/// This machine's host name, for a generated certificate's names.
fn host_names() -> Vec<String> {
    let u = rustix::system::uname();
    let n = u.nodename().to_string_lossy().to_string();
    if n.is_empty() || n == "(none)" { Vec::new() } else { vec![n] }
}
