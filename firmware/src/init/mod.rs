//! PID 1 of the firmware image. When the `flowwarden` binary finds itself
//! running as process 1 (the kernel started it as /init from the initramfs) it
//! brings the box up and then supervises the appliance:
//!
//! 1. mounts /proc, /sys, /dev, /run, /tmp ([`mounts::early`]);
//! 2. reads /etc/flowwarden/system.toml ([`sysconf`]), loads the board's kernel
//!    modules in dependency order ([`kmod`]), sets the host name;
//! 3. finds the GPT partition named `data`; grows it to the end of a larger disk
//!    ([`gpt`], then reboots once) and its file system after it (resize2fs); runs e2fsck -p
//!    (a damaged superblock is repaired from a backup, a blank partition is formatted:
//!    first boot), mounts it on /data;
//! 4. brings up lo and the management interface as the board file and the data
//!    partition's `[management]` table say: DHCPv4 ([`dhcp`]) or a static address,
//!    optionally on a VLAN, default route and /etc/resolv.conf, via route netlink
//!    ([`netlink`]); [`netman`] keeps it (renewals, live changes on trial, and
//!    going back when they are not kept), asked over /run/flowwarden/init.sock;
//! 5. sets the clock by SNTP when a server answers ([`sntp`]) and records in
//!    /run/flowwarden/time.json whether it did;
//! 6. runs `flowwarden run --data-dir /data` as a child, restarts it with backoff
//!    if it dies, reaps every other child, serves the serial console ([`console`]);
//! 7. on SIGTERM, the power button ([`power`]) or `poweroff`/`reboot` on the
//!    console: stops the appliance, syncs, unmounts /data, powers off or reboots.
//!
//! It never returns: a fatal error is printed, the disks synced and the box
//! rebooted after the kernel's `panic=N` seconds (N = 0: it stays halted).

pub mod console;
pub mod dhcp;
pub mod gpt;
pub mod kmod;
pub mod mounts;
pub mod netlink;
pub mod power;
pub mod slots;
pub mod sntp;
pub mod sysconf;

use anyhow::{Context, Result, anyhow};
use console::ConsoleCmd;
use rustix::process::{Pid, Signal, WaitOptions};
use rustix::system::RebootCommand;
use std::collections::{HashMap, VecDeque};
use std::io::BufRead;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use sysconf::SystemConfig;

/// True when this process is PID 1.
pub fn is_pid1() -> bool {
    rustix::process::getpid().is_init()
}

/// What `status` on the console shows; updated as the boot goes on.
#[derive(Debug, Default, Clone)]
struct Status {
    network: String,
    time: String,
    data: String,
    appliance: String,
    restarts: u32,
}

type Shared = Arc<Mutex<Status>>;

fn set(status: &Shared, f: impl FnOnce(&mut Status)) {
    if let Ok(mut s) = status.lock() {
        f(&mut s);
    }
}

macro_rules! say {
    ($($t:tt)*) => { eprintln!("flowwarden-init: {}", format!($($t)*)) };
}

pub mod netman;
pub mod watchdog;

/// Written by `cargo xtask image`: version, board, commit, kernel package.
const RELEASE_FILE: &str = "/etc/flowwarden/release";

/// Entry point when running as PID 1. Never returns.
pub fn main() -> ! {
    let boot = Instant::now();
    say!("flowwarden {} starting as PID 1", crate::version::version());
    // What the image was built from (board, commit, the kernel xtask chose and why).
    if let Ok(text) = std::fs::read_to_string(RELEASE_FILE) {
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            say!("release: {line}");
        }
    }
    let outcome = std::panic::catch_unwind(|| boot_and_supervise(boot));
    let why = match outcome {
        Ok(Ok(())) => "supervisor stopped".to_string(),
        Ok(Err(e)) => format!("{e:#}"),
        Err(_) => "panic in PID 1".to_string(),
    };
    fatal(&why)
}

/// Prints the error, syncs and reboots after `panic=N` seconds from the kernel command line.
fn fatal(why: &str) -> ! {
    say!("FATAL: {why}");
    rustix::fs::sync();
    let secs = panic_secs(&std::fs::read_to_string("/proc/cmdline").unwrap_or_default());
    if secs > 0 {
        say!("rebooting in {secs} s (kernel command line panic={secs})");
        std::thread::sleep(Duration::from_secs(secs));
        rustix::fs::sync();
        let _ = rustix::system::reboot(RebootCommand::Restart);
    } else {
        say!("panic=0 on the kernel command line: staying halted");
    }
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}

/// `panic=N` from a kernel command line (default 10 s when absent; negative means at once).
pub fn panic_secs(cmdline: &str) -> u64 {
    cmdline
        .split_whitespace()
        .find_map(|w| w.strip_prefix("panic="))
        .and_then(|v| v.parse::<i64>().ok())
        .map(|n| if n < 0 { 1 } else { n as u64 })
        .unwrap_or(10)
}

fn boot_and_supervise(boot: Instant) -> Result<()> {
    mounts::early().context("early mounts")?;
    let cfg = match SystemConfig::load(Path::new(sysconf::SYSTEM_TOML)) {
        Ok(c) => c,
        Err(sysconf::SysConfError::Read { .. }) if !Path::new(sysconf::SYSTEM_TOML).exists() => {
            say!("{} missing: using built-in defaults", sysconf::SYSTEM_TOML);
            SystemConfig::default()
        }
        Err(e) => return Err(e.into()),
    };
    // Ctrl-Alt-Del becomes SIGINT to us (a clean reboot) instead of an instant reset.
    let _ = rustix::system::reboot(RebootCommand::CadOff);
    let failed = kmod::load_all(&cfg.modules);
    say!(
        "loaded {} of {} kernel modules",
        cfg.modules.len() - failed.len(),
        cfg.modules.len()
    );
    if let Err(e) = rustix::system::sethostname(cfg.hostname.as_bytes()) {
        say!("sethostname {}: {e}", cfg.hostname);
    }
    let _ = std::fs::create_dir_all("/run/flowwarden");
    let status: Shared = Arc::new(Mutex::new(Status::default()));

    let dev = mounts::wait_partition(&cfg.data.partition, Duration::from_secs(cfg.data.wait_secs)).context("data partition")?;
    match mounts::grow_to_disk(&dev, &cfg.data.partition) {
        Ok(Some(g)) => {
            say!(
                "grew the data partition {} from {} MiB to {} MiB to fill the disk; rebooting to use it",
                dev.display(),
                (g.old_last + 1 - g.first) / 2048,
                (g.new_last + 1 - g.first) / 2048
            );
            rustix::fs::sync();
            let _ = rustix::system::reboot(RebootCommand::Restart);
        }
        Ok(None) => {}
        Err(e) => say!("not growing the data partition: {e}"),
    }
    mounts::mount_data(&cfg.data, &dev).context("data partition")?;
    say!("data partition {} mounted on {}", dev.display(), cfg.data.mountpoint.display());
    if let Some(line) = mounts::resize_to_partition(&cfg.data, &dev) {
        say!("{line}");
    }
    // A/B slots: what this boot is (trial, rollback), before the appliance starts.
    let release = std::fs::read_to_string(RELEASE_FILE).unwrap_or_default();
    let slot_ctl = slots::SlotCtl::start(&cfg, &cfg.data.mountpoint, &release).map(Arc::new);
    let size = mounts::ext4_bytes(&dev).map(|b| format!(", {} MiB", b >> 20)).unwrap_or_default();
    set(&status, |s| {
        s.data = format!("{} on {}{size}", dev.display(), cfg.data.mountpoint.display())
    });

    let appliance_pid = Arc::new(AtomicI32::new(0));
    let (net, effective, ntp_from_dhcp) = netman::start(&cfg, &cfg.data.mountpoint, &status, appliance_pid.clone());
    sync_time(&effective, &ntp_from_dhcp, &status);
    say!("system up in {} ms", boot.elapsed().as_millis());

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("async runtime for the supervisor")?;
    rt.block_on(supervise(cfg, status, net, appliance_pid, slot_ctl, dev))
}

/// Tries DHCP-offered then configured SNTP servers; steps the clock on the first answer.
fn sync_time(cfg: &SystemConfig, from_dhcp: &[Ipv4Addr], status: &Shared) {
    let mut servers: Vec<std::net::SocketAddr> = from_dhcp.iter().map(|ip| std::net::SocketAddr::new((*ip).into(), 123)).collect();
    servers.extend(cfg.time.ntp_servers.iter().filter_map(|s| sysconf::ntp_addr(s).ok()));
    let timeout = Duration::from_millis(cfg.time.timeout_ms);
    let mut errors = Vec::new();
    for server in servers.iter().take(4) {
        match sntp::query(*server, timeout) {
            Ok(sample) => {
                let stepped = sntp::step_clock(sample.offset_ns);
                let line = format!(
                    "synced from {} (stratum {}, offset {:.3} s, delay {:.1} ms){}",
                    server,
                    sample.stratum,
                    sample.offset_ns as f64 / 1e9,
                    sample.delay_ns as f64 / 1e6,
                    stepped
                        .as_ref()
                        .err()
                        .map(|e| format!(", but setting the clock failed: {e}"))
                        .unwrap_or_default()
                );
                say!("time: {line}");
                let _ = std::fs::write(
                    "/run/flowwarden/time.json",
                    serde_json::json!({"synced": stepped.is_ok(), "server": server.to_string(), "offset_ns": sample.offset_ns as i64,
                        "stratum": sample.stratum, "at": crate::timefmt::rfc3339_ms(crate::timefmt::now_ms())})
                    .to_string(),
                );
                set(status, |s| s.time = line);
                return;
            }
            Err(e) => errors.push(e.to_string()),
        }
    }
    let why = if servers.is_empty() {
        "no SNTP server configured or offered by DHCP".to_string()
    } else {
        errors.join("; ")
    };
    say!("time: NOT synced ({why}); using the hardware clock");
    let _ = std::fs::write(
        "/run/flowwarden/time.json",
        serde_json::json!({"synced": false, "reason": why, "clock": crate::timefmt::rfc3339_ms(crate::timefmt::now_ms())}).to_string(),
    );
    set(status, |s| s.time = format!("NOT synced: {why}"));
}

enum Event {
    Console(ConsoleCmd, std::sync::mpsc::SyncSender<i32>),
    /// A console command whose child reads this line on its stdin (a password).
    ConsoleWithInput(Vec<String>, String, std::sync::mpsc::SyncSender<i32>),
    PowerButton,
    /// `system reboot` over the request socket (after an update was staged).
    Reboot,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Stop {
    PowerOff,
    Reboot,
    /// Wipe the data partition, then reboot (it is formatted afresh: first boot again).
    FactoryReset,
}

/// PID 1's request socket: one line in (`network apply`, `network keep`, `update
/// stage FILE`, `update acknowledge`, `system reboot`), one line out; `update stage`
/// first sends a `progress …` line per step.
fn serve_requests(net: Option<netman::Handle>, slot_ctl: Option<Arc<slots::SlotCtl>>, tx: tokio::sync::mpsc::Sender<Event>) {
    use std::os::unix::fs::PermissionsExt;
    let path = crate::management::INIT_SOCKET;
    let _ = std::fs::remove_file(path);
    let listener = match tokio::net::UnixListener::bind(path) {
        Ok(l) => l,
        Err(e) => {
            say!("{path}: {e}; the appliance cannot ask for network changes");
            return;
        }
    };
    let _ = std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600));
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else { continue };
            let net = net.clone();
            let slot_ctl = slot_ctl.clone();
            let tx = tx.clone();
            tokio::spawn(async move {
                use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
                let (r, mut w) = stream.into_split();
                let mut line = String::new();
                let read = tokio::time::timeout(Duration::from_secs(5), tokio::io::BufReader::new(r.take(4096)).read_line(&mut line)).await;
                let ask = line.trim().to_string();
                if read.as_ref().is_ok_and(|r| r.is_ok()) && (ask.starts_with("update ") || ask.starts_with("system ")) {
                    let answer = system_request(&ask, slot_ctl, &tx, &mut w).await;
                    let _ = w.write_all(format!("{}\n", answer.replace('\n', " ")).as_bytes()).await;
                    return;
                }
                let answer = match (read, net) {
                    (Ok(Ok(_)), Some(net)) => tokio::task::spawn_blocking(move || net.request(&line))
                        .await
                        .unwrap_or_else(|_| "error the request failed".into()),
                    (Ok(Ok(_)), None) => "error PID 1 manages no network here (no netlink)".into(),
                    _ => "error no request line within 5 s".into(),
                };
                let _ = w.write_all(format!("{}\n", answer.replace('\n', " ")).as_bytes()).await;
            });
        }
    });
}

/// The update and system requests of [`serve_requests`]; returns the last line.
async fn system_request(
    ask: &str,
    slot_ctl: Option<Arc<slots::SlotCtl>>,
    tx: &tokio::sync::mpsc::Sender<Event>,
    w: &mut tokio::net::unix::OwnedWriteHalf,
) -> String {
    use tokio::io::AsyncWriteExt;
    if ask == "system reboot" {
        return match tx.send(Event::Reboot).await {
            Ok(()) => "ok rebooting".into(),
            Err(_) => "error the supervisor is gone".into(),
        };
    }
    let Some(ctl) = slot_ctl else {
        return "failed updates are off on this boot (see the console at boot: no flowwarden.slot=, or no ESP)".into();
    };
    if ask == "update acknowledge" {
        return tokio::task::spawn_blocking(move || ctl.acknowledge())
            .await
            .unwrap_or_else(|_| "error the request failed".into());
    }
    let Some(file) = ask.strip_prefix("update stage ") else {
        return format!("error unknown request {ask:?}");
    };
    let file = PathBuf::from(file);
    let (ptx, mut prx) = tokio::sync::mpsc::channel::<String>(64);
    let job = tokio::task::spawn_blocking(move || {
        ctl.stage(&file, &mut |l| {
            let _ = ptx.blocking_send(l.to_string());
        })
    });
    while let Some(l) = prx.recv().await {
        let _ = w.write_all(format!("progress {}\n", l.replace('\n', " ")).as_bytes()).await;
    }
    job.await.unwrap_or_else(|_| "failed the installer stopped unexpectedly".into())
}

async fn supervise(
    cfg: SystemConfig,
    status: Shared,
    net: Option<netman::Handle>,
    appliance_pid: Arc<AtomicI32>,
    slot_ctl: Option<Arc<slots::SlotCtl>>,
    data_dev: PathBuf,
) -> Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut sigchld = signal(SignalKind::child()).context("SIGCHLD handler")?;
    let mut sigterm = signal(SignalKind::terminate()).context("SIGTERM handler")?;
    let mut sigint = signal(SignalKind::interrupt()).context("SIGINT handler")?;
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Event>(16);

    let ptx = tx.clone();
    let watched = power::watch(move || {
        let _ = ptx.try_send(Event::PowerButton);
    });
    say!("watching {} input devices for the power button", watched.len());
    spawn_console(
        tx.clone(),
        status.clone(),
        cfg.data.mountpoint.display().to_string(),
        net.clone(),
        slot_ctl.clone(),
    );
    serve_requests(net, slot_ctl.clone(), tx.clone());
    // A slot on trial: look at the appliance's health every 2 s.
    let mut trial_tick = tokio::time::interval(Duration::from_secs(2));

    let exe = std::env::current_exe().unwrap_or_else(|_| PathBuf::from("/init"));
    // Why the last boot ended, if the watchdog ended it (before this boot arms it again).
    if let Some(line) = watchdog::previous_reset(cfg.watchdog.as_ref(), &cfg.data.mountpoint) {
        println!("flowwarden: {line}");
        if !crate::update::append_event(&cfg.data.mountpoint, "watchdog_reset", &line) {
            say!("event watchdog_reset not queued for the audit trail");
        }
    }
    // The watchdog resets the box unless we pet it; we pet it only while the
    // appliance reports progress (watchdog.rs).
    let mut health = watchdog::Health::new(cfg.watchdog.as_ref());
    let mut watchdog = cfg
        .watchdog
        .as_ref()
        .and_then(|w| watchdog::Watchdog::open(w, &cfg.data.mountpoint));
    let mut pet = tokio::time::interval(Duration::from_secs(cfg.watchdog.as_ref().map(|w| w.pet_secs).unwrap_or(5)));
    let mut appliance: Option<Pid> = None;
    // The last verdict on the appliance's progress (a slot on trial needs it to be marked good).
    let progressing = std::sync::atomic::AtomicBool::new(false);
    let mut exits: VecDeque<Instant> = VecDeque::new();
    let mut restart_at = Some(tokio::time::Instant::now());
    let mut console_children: HashMap<Pid, std::sync::mpsc::SyncSender<i32>> = HashMap::new();

    loop {
        let sleep_until = restart_at.unwrap_or_else(|| tokio::time::Instant::now() + Duration::from_secs(3600));
        let stop = tokio::select! {
            _ = sigchld.recv() => {
                for (pid, code) in reap() {
                    if Some(pid) == appliance {
                        appliance = None;
                        appliance_pid.store(0, Ordering::Relaxed);
                        health.exited();
                        let now = Instant::now();
                        exits.push_back(now);
                        while exits.front().is_some_and(|t| now.duration_since(*t) > Duration::from_secs(300)) {
                            exits.pop_front();
                        }
                        set(&status, |s| { s.restarts += 1; s.appliance = format!("exited with {code}"); });
                        if exits.len() >= 5 {
                            return Err(anyhow!("the appliance exited 5 times within 5 minutes (last status {code})"));
                        }
                        let backoff = Duration::from_secs(1 << exits.len().min(5));
                        say!("appliance exited with status {code}; restarting in {} s", backoff.as_secs());
                        restart_at = Some(tokio::time::Instant::now() + backoff);
                    } else if let Some(reply) = console_children.remove(&pid) {
                        let _ = reply.send(code);
                    }
                }
                None
            }
            _ = pet.tick() => {
                let verdict = health.check(appliance_pid.load(Ordering::Relaxed));
                // Marking a slot good needs a real report, not the start-up grace.
                progressing.store(verdict.is_ok() && health.reported(), Ordering::Relaxed);
                if let Some(w) = watchdog.as_mut() {
                    w.tick(verdict);
                }
                None
            }
            _ = trial_tick.tick(), if slot_ctl.is_some() => {
                if let Some(ctl) = slot_ctl.clone() {
                    let pid = appliance_pid.load(Ordering::Relaxed);
                    let ok = progressing.load(Ordering::Relaxed);
                    let _ = tokio::task::spawn_blocking(move || ctl.check_health(pid, ok)).await;
                }
                None
            }
            _ = sigterm.recv() => Some(Stop::PowerOff),
            _ = sigint.recv() => Some(Stop::Reboot),
            _ = tokio::time::sleep_until(sleep_until), if restart_at.is_some() => {
                restart_at = None;
                let _ = std::fs::remove_file(crate::update::READY_FILE);
                match spawn_appliance(&exe, &cfg.data.mountpoint) {
                    Ok(pid) => {
                        say!("appliance started (pid {})", pid.as_raw_nonzero());
                        set(&status, |s| s.appliance = format!("running, pid {}", pid.as_raw_nonzero()));
                        appliance = Some(pid);
                        appliance_pid.store(pid.as_raw_nonzero().get(), Ordering::Relaxed);
                        health.started();
                    }
                    Err(e) => return Err(e),
                }
                None
            }
            ev = rx.recv() => match ev {
                Some(Event::PowerButton) => { say!("power button pressed"); Some(Stop::PowerOff) }
                Some(Event::Reboot) => { say!("reboot asked for over the request socket"); Some(Stop::Reboot) }
                Some(Event::Console(ConsoleCmd::Reboot, r)) => { let _ = r.send(0); Some(Stop::Reboot) }
                Some(Event::Console(ConsoleCmd::FactoryReset { confirmed: true }, r)) => {
                    say!("factory reset asked for on the console");
                    let _ = r.send(0);
                    Some(Stop::FactoryReset)
                }
                Some(Event::Console(ConsoleCmd::PowerOff, r)) => { let _ = r.send(0); Some(Stop::PowerOff) }
                Some(Event::Console(ConsoleCmd::Exec(args), r)) => {
                    match std::process::Command::new(&exe).args(&args).env("NO_COLOR", "1").stdin(std::process::Stdio::null()).spawn() {
                        Ok(child) => { if let Some(pid) = Pid::from_raw(child.id() as i32) { console_children.insert(pid, r); } }
                        Err(e) => { say!("cannot run {args:?}: {e}"); let _ = r.send(127); }
                    }
                    None
                }
                Some(Event::ConsoleWithInput(args, input, r)) => {
                    match spawn_with_input(&exe, &args, input) {
                        Ok(pid) => { console_children.insert(pid, r); }
                        Err(e) => { say!("cannot run {}: {e}", args.join(" ")); let _ = r.send(127); }
                    }
                    None
                }
                Some(Event::Console(_, r)) => { let _ = r.send(0); None }
                None => None,
            },
        };
        if let Some(stop) = stop {
            if let Some(w) = watchdog.take() {
                // Magic close: a deliberate shutdown must not be taken for a hang.
                w.close();
            }
            if let Some(ctl) = &slot_ctl {
                ctl.shutdown();
            }
            shutdown(stop, appliance, &cfg.data.mountpoint, &data_dev, &mut sigchld).await;
        }
    }
}

/// Run a console command with `input` as its stdin's first line (written and
/// closed before the child is tracked, so it never waits on us).
fn spawn_with_input(exe: &Path, args: &[String], input: String) -> std::io::Result<Pid> {
    use std::io::Write;
    let mut child = std::process::Command::new(exe)
        .args(args)
        .env("NO_COLOR", "1")
        .stdin(std::process::Stdio::piped())
        .spawn()?;
    if let Some(mut stdin) = child.stdin.take() {
        // A line of at most a few hundred bytes fits the pipe's buffer: no deadlock.
        stdin.write_all(format!("{input}\n").as_bytes())?;
    }
    Pid::from_raw(child.id() as i32).ok_or_else(|| std::io::Error::other("child without a pid"))
}

/// Read a password from the console twice with echo off (when it is a terminal).
fn console_password(lines: &mut impl Iterator<Item = std::io::Result<String>>) -> std::result::Result<String, String> {
    use rustix::termios::{LocalModes, OptionalActions, tcgetattr, tcsetattr};
    let stdin = std::io::stdin();
    let saved = tcgetattr(&stdin).ok();
    if let Some(s) = &saved {
        let mut quiet = s.clone();
        quiet.local_modes.remove(LocalModes::ECHO);
        let _ = tcsetattr(&stdin, OptionalActions::Now, &quiet);
    }
    println!("password (not shown):");
    let first = lines.next().and_then(|l| l.ok());
    println!("the same password again:");
    let second = lines.next().and_then(|l| l.ok());
    if let Some(s) = &saved {
        let _ = tcsetattr(&stdin, OptionalActions::Now, s);
    }
    match (first, second) {
        (Some(a), Some(b)) if a == b => Ok(a.trim_end_matches('\r').to_string()),
        (Some(_), Some(_)) => Err("the two passwords differ; nothing changed".into()),
        _ => Err("the console closed before the password was read".into()),
    }
}

fn spawn_appliance(exe: &Path, data: &Path) -> Result<Pid> {
    let mut cmd = std::process::Command::new(exe);
    // The page on 443 (and [::]:443), plain HTTP on 80 redirecting to it.
    cmd.arg("run")
        .arg("--data-dir")
        .arg(data)
        .arg("--web-redirect-default")
        .arg("0.0.0.0:80");
    let user_cfg = data.join("flowwarden.toml");
    if user_cfg.exists() {
        cmd.arg("--config").arg(&user_cfg);
    }
    // Plain log lines on the serial console (no ANSI colours).
    let child = cmd
        .env("NO_COLOR", "1")
        .stdin(std::process::Stdio::null())
        .spawn()
        .context("cannot start the appliance")?;
    Pid::from_raw(child.id() as i32).ok_or_else(|| anyhow!("appliance has no pid"))
}

/// Reaps every exited child: (pid, exit code or 128+signal).
fn reap() -> Vec<(Pid, i32)> {
    let mut out = Vec::new();
    while let Ok(Some((pid, st))) = rustix::process::wait(WaitOptions::NOHANG) {
        let code = st.exit_status().or_else(|| st.terminating_signal().map(|s| 128 + s)).unwrap_or(-1);
        out.push((pid, code));
    }
    out
}

async fn shutdown(stop: Stop, appliance: Option<Pid>, data: &Path, data_dev: &Path, sigchld: &mut tokio::signal::unix::Signal) -> ! {
    say!(
        "shutting down ({})",
        match stop {
            Stop::Reboot => "reboot",
            Stop::PowerOff => "power off",
            Stop::FactoryReset => "factory reset",
        }
    );
    if let Some(pid) = appliance {
        let _ = rustix::process::kill_process(pid, Signal::TERM);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        let mut gone = false;
        while !gone {
            tokio::select! {
                _ = sigchld.recv() => { gone = reap().iter().any(|(p, _)| *p == pid); }
                _ = tokio::time::sleep_until(deadline) => {
                    say!("appliance did not stop within 20 s; killing it");
                    let _ = rustix::process::kill_process(pid, Signal::KILL);
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    let _ = reap();
                    gone = true;
                }
            }
        }
        say!("appliance stopped");
    }
    match mounts::unmount_data(data) {
        Ok(()) => say!("data partition unmounted cleanly"),
        Err(e) => say!("data partition: {e} (left read-only)"),
    }
    rustix::fs::sync();
    if stop == Stop::FactoryReset {
        // The first MiB zeroed: the next boot finds a blank partition and formats it
        // (mounts::mount_data), as on the first boot. The slots are not touched.
        match mounts::blank(data_dev) {
            Ok(()) => println!(
                "flowwarden: factory reset: {} wiped (configuration, users, certificates, flows, alerts); the installed firmware stays; rebooting",
                data_dev.display()
            ),
            Err(e) => say!(
                "factory reset: cannot wipe {}: {e}; rebooting with the data as it was",
                data_dev.display()
            ),
        }
        rustix::fs::sync();
    }
    let cmd = if stop != Stop::PowerOff {
        RebootCommand::Restart
    } else {
        RebootCommand::PowerOff
    };
    say!("{}", if stop == Stop::PowerOff { "powering off" } else { "rebooting" });
    let r = rustix::system::reboot(cmd);
    fatal(&format!("reboot(2) failed: {r:?}"))
}

fn spawn_console(
    tx: tokio::sync::mpsc::Sender<Event>,
    status: Shared,
    data_dir: String,
    net: Option<netman::Handle>,
    slot_ctl: Option<Arc<slots::SlotCtl>>,
) {
    let _ = std::thread::Builder::new().name("console".into()).spawn(move || {
        let stdin = std::io::stdin();
        let mut lines = stdin.lock().lines();
        while let Some(line) = lines.next() {
            let Ok(line) = line else { break };
            let code = match console::parse(&line, &data_dir) {
                Ok(ConsoleCmd::Empty) => continue,
                Ok(ConsoleCmd::Help) => {
                    println!("{}", console::HELP);
                    0
                }
                Ok(ConsoleCmd::Status) => {
                    let s = status.lock().map(|s| s.clone()).unwrap_or_default();
                    println!(
                        "version: {}\nnetwork: {}\ntime: {}\ndata: {}\nappliance: {} (restarts {})",
                        crate::version::version(),
                        s.network,
                        s.time,
                        s.data,
                        s.appliance,
                        s.restarts
                    );
                    match &slot_ctl {
                        Some(ctl) => ctl.status_lines().iter().for_each(|l| println!("{l}")),
                        None => println!("slot: updates are off on this boot"),
                    }
                    0
                }
                Ok(ConsoleCmd::NetworkKeep) => {
                    let answer = net
                        .as_ref()
                        .map(|n| n.request("network keep"))
                        .unwrap_or_else(|| "error PID 1 manages no network here".into());
                    println!("flowwarden-console: {answer}");
                    i32::from(!answer.starts_with("ok "))
                }
                Ok(ConsoleCmd::FactoryReset { confirmed: false }) => {
                    println!(
                        "factory reset wipes this box's configuration, users, tokens, certificates, flows and alerts \
                         (the installed firmware stays). Type reset to go on, anything else to cancel:"
                    );
                    let word = lines.next().and_then(|l| l.ok()).unwrap_or_default();
                    if word.trim() == "reset" {
                        let (rtx, rrx) = std::sync::mpsc::sync_channel(1);
                        if tx
                            .blocking_send(Event::Console(ConsoleCmd::FactoryReset { confirmed: true }, rtx))
                            .is_err()
                        {
                            break;
                        }
                        rrx.recv().unwrap_or(-1)
                    } else {
                        println!("flowwarden-console: factory reset cancelled; nothing changed");
                        1
                    }
                }
                Ok(ConsoleCmd::ExecWithPassword(args)) => match console_password(&mut lines) {
                    Ok(pw) => {
                        let (rtx, rrx) = std::sync::mpsc::sync_channel(1);
                        if tx.blocking_send(Event::ConsoleWithInput(args, pw, rtx)).is_err() {
                            break;
                        }
                        rrx.recv().unwrap_or(-1)
                    }
                    Err(e) => {
                        println!("flowwarden-console: {e}");
                        1
                    }
                },
                Ok(cmd) => {
                    let (rtx, rrx) = std::sync::mpsc::sync_channel(1);
                    if tx.blocking_send(Event::Console(cmd, rtx)).is_err() {
                        break;
                    }
                    rrx.recv().unwrap_or(-1)
                }
                Err(e) => {
                    println!("flowwarden-console: {e}");
                    2
                }
            };
            println!("flowwarden-console: done (exit {code})");
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn panic_delay_from_cmdline() {
        assert_eq!(panic_secs("console=ttyS0 panic=5 quiet"), 5);
        assert_eq!(panic_secs("console=ttyS0"), 10);
        assert_eq!(panic_secs("panic=0"), 0);
        assert_eq!(panic_secs("panic=-1"), 1);
    }
}
