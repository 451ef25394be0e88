//! Helpers shared by the integration tests: where the shared captures are,
//! ingesting through the real pipeline, reading everything back.
#![allow(dead_code)]

pub mod https;
pub mod v5;
pub mod webdriver;

use flowwarden::config::Config;
use flowwarden::flow::FlowRecord;
use flowwarden::pipeline::{Backpressure, Pipeline, PipelineReport};
use flowwarden::store::DataDir;
use flowwarden::store::reader::Reader;
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};

/// ../shared/captures relative to the workspace root. Absent material is a failure, not a skip.
pub fn captures() -> PathBuf {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/captures");
    assert!(
        p.is_dir(),
        "test captures not found at {} (the repository must sit beside ../shared)",
        p.display()
    );
    p
}

pub fn ingest(cfg: &Config, dir: &Path, files: &[PathBuf]) -> PipelineReport {
    let mut p = Pipeline::open(cfg, dir, Backpressure::Block).unwrap_or_else(|e| panic!("open {}: {e}", dir.display()));
    for f in files {
        flowwarden::capture::read_capture(f, |d| p.datagram(d.src, d.ts_ms, d.payload)).unwrap_or_else(|e| panic!("{e}"));
    }
    p.finish()
}

pub fn read_all(dir: &Path) -> Vec<FlowRecord> {
    let mut out = Vec::new();
    Reader::new(DataDir::new(dir))
        .scan(0, u64::MAX, |f| {
            out.push(f.clone());
            ControlFlow::Continue(())
        })
        .unwrap_or_else(|e| panic!("scan {}: {e}", dir.display()));
    out
}

/// A config with a small fixed budget suitable for tests.
pub fn test_config() -> Config {
    let mut c = Config::default();
    c.storage.budget = flowwarden::config::SizeSpec::Bytes(256 << 20);
    c
}

/// [`test_config`] for captures of real exporters replaying old packet
/// captures (../shared/captures/exported): softflowd and pmacct date the flows
/// with the replayed packets' times (years ago) but the export headers with the
/// time of the replay, so the default one-day `max_clock_skew` would clamp them.
pub fn replay_config() -> Config {
    let mut c = test_config();
    c.collector.max_clock_skew = flowwarden::config::Span(36_500 * 86_400_000);
    c
}

/// Path of the built `flowwarden` binary.
pub fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_flowwarden"))
}

/// A `flowwarden run` child on loopback.
pub struct Running {
    pub child: std::process::Child,
    pub port: u16,
    pub data_dir: PathBuf,
    /// The page's HTTPS address and certificate fingerprint, as `run` printed them.
    pub web: Option<(std::net::SocketAddr, String)>,
    /// The page's first-start setup code, if `run` printed one.
    pub setup_code: Option<String>,
    stdout: std::sync::mpsc::Receiver<String>,
}

impl Running {
    /// Start `run` listening on 127.0.0.1:0 and wait for the ready line.
    pub fn start(data_dir: &Path, extra: &[&str]) -> Running {
        use std::io::BufRead;
        let mut child = std::process::Command::new(bin())
            .args(["run", "--listen", "127.0.0.1:0", "--web-listen", "127.0.0.1:0", "--data-dir"])
            .arg(data_dir)
            .args(extra)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start flowwarden: {e}"));
        let out = child.stdout.take();
        let (tx, rx) = std::sync::mpsc::channel();
        // From here on, Drop kills and reaps the child on every path, panics included.
        let mut running = Running {
            child,
            port: 0,
            data_dir: data_dir.to_path_buf(),
            web: None,
            setup_code: None,
            stdout: rx,
        };
        let out = out.unwrap_or_else(|| panic!("no stdout"));
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            let line = running
                .stdout
                .recv_timeout(left)
                .unwrap_or_else(|_| panic!("no ready line within 30 s"));
            if let Some(rest) = line.strip_prefix("flowwarden: web https://") {
                let mut parts = rest.split(' ');
                let addr = parts.next().unwrap_or_default().trim_end_matches('/');
                let fp = parts.nth(1).unwrap_or_default().to_string();
                running.web = addr.parse().ok().map(|a| (a, fp));
            }
            if let Some(code) = line.strip_prefix("flowwarden: web setup code ") {
                running.setup_code = Some(code.trim().to_string());
            }
            if let Some(rest) = line.split("flowwarden: ready, listening on udp ").nth(1) {
                let addr = rest.split_whitespace().next().unwrap_or_default();
                running.port = addr
                    .rsplit(':')
                    .next()
                    .and_then(|p| p.parse().ok())
                    .unwrap_or_else(|| panic!("no port in {line:?}"));
                return running;
            }
        }
    }

    /// Wait for a stdout line containing `needle` (printed after the ready line).
    pub fn wait_for_line(&self, needle: &str, within: std::time::Duration) -> String {
        let deadline = std::time::Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.stdout.recv_timeout(left) {
                Ok(line) if line.contains(needle) => return line,
                Ok(_) => {}
                Err(_) => panic!("no line with {needle:?} within {within:?}"),
            }
        }
    }

    /// SIGHUP: reload the configuration.
    pub fn hangup(&self) {
        let pid = rustix::process::Pid::from_raw(self.child.id() as i32).unwrap_or_else(|| panic!("bad pid"));
        rustix::process::kill_process(pid, rustix::process::Signal::HUP).unwrap_or_else(|e| panic!("kill: {e}"));
    }

    pub fn addr(&self) -> std::net::SocketAddr {
        std::net::SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// SIGTERM; returns the exit status and what it printed on stdout after the ready line.
    pub fn stop_output(mut self) -> (std::process::ExitStatus, Vec<String>) {
        let rx = self.take_stdout();
        let (status, _) = self.stop();
        let mut lines = Vec::new();
        while let Ok(line) = rx.recv_timeout(std::time::Duration::from_secs(5)) {
            lines.push(line);
        }
        (status, lines)
    }

    fn take_stdout(&mut self) -> std::sync::mpsc::Receiver<String> {
        std::mem::replace(&mut self.stdout, std::sync::mpsc::channel().1)
    }

    /// SIGTERM; returns the exit status and how long the shutdown took.
    pub fn stop(mut self) -> (std::process::ExitStatus, std::time::Duration) {
        let t = std::time::Instant::now();
        let pid = rustix::process::Pid::from_raw(self.child.id() as i32).unwrap_or_else(|| panic!("bad pid"));
        rustix::process::kill_process(pid, rustix::process::Signal::TERM).unwrap_or_else(|e| panic!("kill: {e}"));
        loop {
            if let Some(st) = self.child.try_wait().unwrap_or_else(|e| panic!("{e}")) {
                let _ = self.stdout.try_recv();
                return (st, t.elapsed());
            }
            if t.elapsed() > std::time::Duration::from_secs(20) {
                let _ = self.child.kill();
                panic!("flowwarden did not exit within 20 s of SIGTERM");
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

/// Run the binary with arguments; (exit success, stdout, stderr).
pub fn cli(args: &[&std::ffi::OsStr]) -> (bool, String, String) {
    let out = std::process::Command::new(bin())
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{e}"));
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Find a Debian-installed tool; its absence fails the test with the fix.
pub fn tool(name: &str, package: &str) -> PathBuf {
    for d in ["/usr/sbin", "/usr/bin", "/sbin", "/bin"] {
        let p = Path::new(d).join(name);
        if p.is_file() {
            return p;
        }
    }
    panic!("{name} is not installed: run `cargo xtask deps` (apt-get install {package})");
}

/// Run the binary with `input` on stdin; (success, stdout, stderr).
pub fn cli_stdin(args: &[&std::ffi::OsStr], input: &str) -> (bool, String, String) {
    use std::io::Write;
    use std::process::Stdio;
    let mut child = std::process::Command::new(bin())
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{e}"));
    if let Some(mut stdin) = child.stdin.take() {
        let _ = stdin.write_all(input.as_bytes());
    }
    let out = child.wait_with_output().unwrap_or_else(|e| panic!("{e}"));
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `flowwarden user set --data-dir DIR NAME --role ROLE` with `stdin` as its input.
pub fn user_set(dir: &Path, name: &str, role: &str, stdin: &str) -> (bool, String, String) {
    let os = std::ffi::OsStr::new;
    cli_stdin(
        &[
            os("user"),
            os("set"),
            os("--data-dir"),
            dir.as_os_str(),
            os(name),
            os("--role"),
            os(role),
        ],
        stdin,
    )
}

/// `flowwarden token create --data-dir DIR NAME --role ROLE`.
pub fn token_create(dir: &Path, name: &str, role: &str) -> (bool, String, String) {
    let os = std::ffi::OsStr::new;
    cli(&[
        os("token"),
        os("create"),
        os("--data-dir"),
        dir.as_os_str(),
        os(name),
        os("--role"),
        os(role),
    ])
}
