//! The control channel: how a command changes a running appliance's state.
//!
//! `run` listens on `DATA_DIR/control.sock`, a Unix socket created with mode
//! 0600 (only its owner, and root, may connect). A command sends one JSON
//! request line and reads one JSON reply line; the appliance applies the change
//! through its own store writer, so nothing else ever writes the state file
//! while it runs. With no appliance running (no socket, or a stale one nobody
//! listens on) [`request`] says so and the command writes the state file itself.

use crate::accounts::AccountChange;
use serde::{Deserialize, Serialize};
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use thiserror::Error;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};

/// The socket's name in the data directory.
pub const SOCKET: &str = "control.sock";
/// Longest request or reply line.
const MAX_LINE: u64 = 64 * 1024;
/// Requests served at once (each may wait for a state commit).
const MAX_CLIENTS: usize = 8;
/// How long a command waits for the appliance's answer.
const REPLY_TIMEOUT: Duration = Duration::from_secs(60);

/// What a command asks of the running appliance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Request {
    Accounts(AccountChange),
    /// An alert acknowledged (by the page's admin `by`, at `at_ms`).
    AckAlert {
        id: String,
        by: String,
        at_ms: u64,
    },
    /// Read the configuration file again and apply it (`flowwarden reload`,
    /// the page's settings).
    Reload,
    /// `flowwarden watchdog-test`: the named stage hangs in its next unit of
    /// work (crate::progress), so the watchdog can be seen to reset the box.
    FreezeStage {
        stage: String,
    },
}

/// The appliance's answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Reply {
    /// Applied and committed.
    Done,
    /// Not applied, and why.
    Refused(String),
    /// The configuration was reloaded (what the appliance said).
    Reloaded(String),
}

#[derive(Debug, Error)]
pub enum ControlError {
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: std::io::Error },
    #[error("control.sock: the appliance answered something that is not a reply: {0}")]
    Protocol(String),
}

fn io(path: &Path) -> impl Fn(std::io::Error) -> ControlError + '_ {
    move |source| ControlError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Ask a running appliance to apply `req`. `Ok(None)`: no appliance runs on
/// this data directory (the caller applies the change itself).
pub fn request(data_dir: &Path, req: &Request) -> Result<Option<Reply>, ControlError> {
    let path = data_dir.join(SOCKET);
    let mut s = match UnixStream::connect(&path) {
        Ok(s) => s,
        Err(e) if matches!(e.kind(), std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused) => {
            return Ok(None);
        }
        Err(e) => return Err(io(&path)(e)),
    };
    s.set_read_timeout(Some(REPLY_TIMEOUT)).map_err(io(&path))?;
    let mut line = serde_json::to_vec(req).map_err(|e| ControlError::Protocol(e.to_string()))?;
    line.push(b'\n');
    s.write_all(&line).map_err(io(&path))?;
    let mut reply = String::new();
    BufReader::new(s.take(MAX_LINE)).read_line(&mut reply).map_err(io(&path))?;
    serde_json::from_str(reply.trim_end()).map(Some).map_err(|_| {
        ControlError::Protocol(if reply.is_empty() {
            "nothing (the appliance stopped?)".into()
        } else {
            reply.chars().take(200).collect()
        })
    })
}

/// What applies requests (blocking: it may wait for a state commit).
pub type Handler = Arc<dyn Fn(Request) -> Reply + Send + Sync>;

/// Bind the control socket (mode 0600), replacing a stale one. Fails if another
/// appliance answers on it.
pub fn bind(data_dir: &Path) -> Result<tokio::net::UnixListener, ControlError> {
    let path = data_dir.join(SOCKET);
    if std::fs::symlink_metadata(&path).is_ok() {
        if UnixStream::connect(&path).is_ok() {
            return Err(io(&path)(std::io::Error::new(
                std::io::ErrorKind::AddrInUse,
                "another flowwarden answers on this control socket",
            )));
        }
        std::fs::remove_file(&path).map_err(io(&path))?;
    }
    // Created owner-only from the start (no window with a wider mode).
    let old = rustix::process::umask(rustix::fs::Mode::from_bits_truncate(0o177));
    let l = tokio::net::UnixListener::bind(&path);
    rustix::process::umask(old);
    l.map_err(io(&path))
}

/// Serve requests until `stop` turns true; then remove the socket.
pub async fn serve(listener: tokio::net::UnixListener, data_dir: PathBuf, handler: Handler, mut stop: tokio::sync::watch::Receiver<bool>) {
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CLIENTS));
    loop {
        let conn = tokio::select! {
            c = listener.accept() => c,
            _ = stop.changed() => break,
        };
        let Ok((stream, _)) = conn else { continue };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            // Busy: the client sees the connection close without a reply.
            continue;
        };
        let h = handler.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let (r, mut w) = stream.into_split();
            let mut line = String::new();
            let read = tokio::time::timeout(
                Duration::from_secs(10),
                tokio::io::BufReader::new(r.take(MAX_LINE)).read_line(&mut line),
            )
            .await;
            let reply = match (read, serde_json::from_str::<Request>(line.trim_end())) {
                (Ok(Ok(_)), Ok(req)) => tokio::task::spawn_blocking(move || h(req))
                    .await
                    .unwrap_or_else(|_| Reply::Refused("the request failed inside the appliance".into())),
                _ => Reply::Refused("not a control request".into()),
            };
            let mut out = serde_json::to_vec(&reply).unwrap_or_default();
            out.push(b'\n');
            let _ = w.write_all(&out).await;
        });
    }
    let _ = std::fs::remove_file(data_dir.join(SOCKET));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn requests_reach_the_handler_and_a_missing_appliance_is_none() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let p = dir.path().to_path_buf();
        let req = Request::Accounts(AccountChange::RemoveUser { name: "x".into() });
        let r = tokio::task::spawn_blocking({
            let (p, req) = (p.clone(), req.clone());
            move || request(&p, &req)
        })
        .await
        .unwrap_or_else(|e| panic!("{e}"));
        assert!(matches!(r, Ok(None)));
        let l = bind(&p).unwrap_or_else(|e| panic!("{e}"));
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(p.join(SOCKET))
            .map(|m| m.permissions().mode() & 0o777)
            .unwrap_or(0);
        assert_eq!(mode, 0o600);
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let handler: Handler = Arc::new(|r: Request| match r {
            Request::Accounts(AccountChange::RemoveUser { name }) => Reply::Refused(format!("no user {name:?}")),
            _ => Reply::Done,
        });
        let server = tokio::spawn(serve(l, p.clone(), handler, stop_rx));
        // A second appliance cannot take the socket.
        assert!(bind(&p).is_err());
        let r = tokio::task::spawn_blocking({
            let p = p.clone();
            move || request(&p, &req)
        })
        .await
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(r.ok().flatten(), Some(Reply::Refused("no user \"x\"".into())));
        let _ = stop_tx.send(true);
        let _ = server.await;
        assert!(!p.join(SOCKET).exists());
    }
}
