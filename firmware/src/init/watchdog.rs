//! PID 1's watchdog: it opens the board's watchdog device and pets it only while
//! the appliance reports progress. The appliance touches
//! `/run/flowwarden/alive` every few seconds while none of its stages is hung
//! (crate::progress); a hung stage writes `/run/flowwarden/stalled` instead. When
//! the appliance stops saying it is alive, PID 1 stops petting, keeps the reason
//! on the data partition, and the hardware resets the box. The next boot reports
//! the cause (the kept reason, and the driver's own boot status). A slot on
//! trial that hangs this way has used up a try (GRUB counts it before booting).
//!
//! The same freshness decides whether a slot on trial may be marked good
//! (crate::init::slots), with or without a watchdog device.

use super::sysconf;
use crate::progress::{ALIVE_FILE, STALL_FILE};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

/// Kept on the data partition while PID 1 is not petting; read at the next boot.
pub const LAST_WORDS: &str = "update/watchdog-reset.txt";
/// `WDIOF_CARDRESET` in `/sys/class/watchdog/watchdogN/bootstatus`.
const WDIOF_CARDRESET: u32 = 0x0020;

/// What PID 1 knows of the appliance's progress.
pub struct Health {
    stale: Duration,
    grace: Duration,
    /// When the appliance was last started, or last exited (a restart is pending).
    since: Instant,
    running: bool,
    /// The alive file as last seen (its contents and modification time) and when
    /// PID 1 saw it change.
    seen: Option<(String, Option<SystemTime>)>,
    last_alive: Option<Instant>,
}

/// Whether the appliance makes progress, from what PID 1 has seen.
pub fn verdict(
    now: Instant,
    running: bool,
    since: Instant,
    last_alive: Option<Instant>,
    stalled: Option<&str>,
    stale: Duration,
    grace: Duration,
) -> Result<(), String> {
    if let Some(s) = stalled {
        return Err(s.trim().to_string());
    }
    let age = |t: Instant| now.saturating_duration_since(t);
    match (running, last_alive) {
        (false, _) if age(since) > grace => Err(format!("the appliance has not been running for {} s", age(since).as_secs())),
        (false, _) => Ok(()),
        (true, Some(t)) if age(t) > stale => Err(format!("the appliance has not reported progress for {} s", age(t).as_secs())),
        (true, Some(_)) => Ok(()),
        (true, None) if age(since) > grace => Err(format!(
            "the appliance did not report progress within {} s of starting",
            grace.as_secs()
        )),
        (true, None) => Ok(()),
    }
}

impl Health {
    pub fn new(cfg: Option<&sysconf::Watchdog>) -> Health {
        let d = sysconf::Watchdog::default();
        let cfg = cfg.unwrap_or(&d);
        Health {
            stale: Duration::from_secs(cfg.stale_secs),
            grace: Duration::from_secs(cfg.startup_grace_secs),
            since: Instant::now(),
            running: false,
            seen: None,
            last_alive: None,
        }
    }

    /// A new appliance process: what the last one reported no longer counts.
    pub fn started(&mut self) {
        let _ = std::fs::remove_file(ALIVE_FILE);
        let _ = std::fs::remove_file(STALL_FILE);
        self.since = Instant::now();
        self.running = true;
        self.seen = None;
        self.last_alive = None;
    }

    /// The running appliance has said it is alive at least once.
    pub fn reported(&self) -> bool {
        self.running && self.last_alive.is_some()
    }

    pub fn exited(&mut self) {
        self.since = Instant::now();
        self.running = false;
    }

    /// Looks at the files the appliance writes; Ok while it makes progress.
    pub fn check(&mut self, pid: i32) -> Result<(), String> {
        let now = Instant::now();
        if let Ok(text) = std::fs::read_to_string(ALIVE_FILE) {
            let mtime = std::fs::metadata(ALIVE_FILE).and_then(|m| m.modified()).ok();
            let ours = text.lines().next().and_then(|l| l.trim().parse::<i32>().ok()) == Some(pid);
            let changed = self.seen.as_ref() != Some(&(text.clone(), mtime));
            if ours && changed {
                self.last_alive = Some(now);
            }
            self.seen = Some((text, mtime));
        }
        let stalled = std::fs::read_to_string(STALL_FILE).ok();
        verdict(
            now,
            self.running,
            self.since,
            self.last_alive,
            stalled.as_deref(),
            self.stale,
            self.grace,
        )
    }
}

/// The hardware watchdog, petted while [`Health`] says so.
pub struct Watchdog {
    file: std::fs::File,
    device: PathBuf,
    data: PathBuf,
    /// Why PID 1 stopped petting (None while it pets).
    stopped: Option<String>,
}

impl Watchdog {
    /// Opens (and so arms) the device; says how it is set up.
    pub fn open(cfg: &sysconf::Watchdog, data: &Path) -> Option<Watchdog> {
        match std::fs::OpenOptions::new().write(true).open(&cfg.device) {
            Ok(file) => {
                let sys = sysfs_dir(&cfg.device);
                let read = |f: &str| {
                    sys.as_ref()
                        .and_then(|d| std::fs::read_to_string(d.join(f)).ok())
                        .map(|s| s.trim().to_string())
                };
                say!(
                    "watchdog {} ({}, timeout {} s) armed: petted every {} s while the appliance reports progress \
                     (stale after {} s, {} s to start)",
                    cfg.device.display(),
                    read("identity").unwrap_or_else(|| "driver unknown".into()),
                    read("timeout").unwrap_or_else(|| "?".into()),
                    cfg.pet_secs,
                    cfg.stale_secs,
                    cfg.startup_grace_secs
                );
                Some(Watchdog {
                    file,
                    device: cfg.device.clone(),
                    data: data.to_path_buf(),
                    stopped: None,
                })
            }
            Err(e) => {
                say!("watchdog {}: {e}; running without one", cfg.device.display());
                None
            }
        }
    }

    /// One pet interval: pets while `health` is Ok; otherwise stops, once saying why.
    pub fn tick(&mut self, health: Result<(), String>) {
        match health {
            Ok(()) => {
                if let Some(why) = self.stopped.take() {
                    say!("watchdog: petting again, the appliance makes progress (it had stopped: {why})");
                    let _ = std::fs::remove_file(self.data.join(LAST_WORDS));
                }
                if let Err(e) = self.file.write_all(b"\0") {
                    say!("watchdog {}: {e}", self.device.display());
                }
            }
            Err(why) => {
                if self.stopped.is_none() {
                    say!("watchdog: not petting any more: {why}; the box resets when the watchdog expires");
                    let at = crate::timefmt::rfc3339_ms(crate::timefmt::now_ms());
                    let p = self.data.join(LAST_WORDS);
                    if let Some(dir) = p.parent() {
                        let _ = std::fs::create_dir_all(dir);
                    }
                    if let Err(e) = crate::fsutil::write_atomic(&p, format!("{at} {why}\n").as_bytes(), 0o644) {
                        say!("watchdog: cannot keep the reason in {}: {e}", p.display());
                    }
                    self.stopped = Some(why);
                }
            }
        }
    }

    /// A deliberate shutdown: magic close, so it is not taken for a hang.
    pub fn close(mut self) {
        let _ = self.file.write_all(b"V");
        let _ = std::fs::remove_file(self.data.join(LAST_WORDS));
    }
}

/// `/sys/class/watchdog/watchdogN` for `/dev/watchdog` or `/dev/watchdogN`.
fn sysfs_dir(device: &Path) -> Option<PathBuf> {
    let name = device.file_name()?.to_str()?;
    let n = if name == "watchdog" { "watchdog0" } else { name };
    let d = Path::new("/sys/class/watchdog").join(n);
    d.exists().then_some(d)
}

/// Why the previous boot ended, if a watchdog reset it: the reason PID 1 kept
/// (and removes now) and what the driver says. None after a clean shutdown.
pub fn previous_reset(cfg: Option<&sysconf::Watchdog>, data: &Path) -> Option<String> {
    let words_path = data.join(LAST_WORDS);
    let words = std::fs::read_to_string(&words_path).ok().map(|s| s.trim().to_string());
    let _ = std::fs::remove_file(&words_path);
    let card = cfg
        .and_then(|c| sysfs_dir(&c.device))
        .and_then(|d| std::fs::read_to_string(d.join("bootstatus")).ok())
        .and_then(|s| parse_status(&s))
        .is_some_and(|b| b & WDIOF_CARDRESET != 0);
    describe_reset(words.as_deref(), card)
}

fn parse_status(s: &str) -> Option<u32> {
    let s = s.trim();
    match s.strip_prefix("0x") {
        Some(h) => u32::from_str_radix(h, 16).ok(),
        None => s.parse().ok(),
    }
}

/// The boot's report line from the kept reason (`TIME REASON`) and the driver's flag.
pub fn describe_reset(words: Option<&str>, card_reset: bool) -> Option<String> {
    match (words, card_reset) {
        (Some(w), card) => {
            let (at, why) = w.split_once(' ').unwrap_or(("", w));
            Some(format!(
                "the previous boot was reset by the watchdog: {why} (petting stopped at {at}{})",
                if card { "; the driver confirms a watchdog reset" } else { "" }
            ))
        }
        (None, true) => Some(
            "the previous boot was reset by the watchdog (the driver says so; PID 1 kept no reason: PID 1 itself or the kernel hung)"
                .to_string(),
        ),
        (None, false) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_decides_the_petting() {
        let t0 = Instant::now();
        let (stale, grace) = (Duration::from_secs(20), Duration::from_secs(300));
        let at = |s: u64| t0 + Duration::from_secs(s);
        // Starting: petted for the grace period, then not without a report.
        assert!(verdict(at(299), true, t0, None, None, stale, grace).is_ok());
        let e = verdict(at(301), true, t0, None, None, stale, grace).unwrap_err();
        assert_eq!(e, "the appliance did not report progress within 300 s of starting");
        // Reporting: petted while fresh.
        assert!(verdict(at(400), true, t0, Some(at(390)), None, stale, grace).is_ok());
        let e = verdict(at(421), true, t0, Some(at(400)), None, stale, grace).unwrap_err();
        assert_eq!(e, "the appliance has not reported progress for 21 s");
        // A hung stage stops it at once, even while starting.
        let e = verdict(
            at(1),
            true,
            t0,
            None,
            Some("stage writer made no progress for 61 s\n"),
            stale,
            grace,
        );
        assert_eq!(e, Err("stage writer made no progress for 61 s".into()));
        // Between an exit and the restart: petted for the grace period.
        assert!(verdict(at(30), false, t0, None, None, stale, grace).is_ok());
        assert!(verdict(at(301), false, t0, None, None, stale, grace).is_err());
    }

    #[test]
    fn the_next_boot_says_why() {
        assert_eq!(describe_reset(None, false), None);
        assert_eq!(
            describe_reset(Some("2026-12-06T03:00:00.000Z stage writer made no progress for 61 s"), true).unwrap(),
            "the previous boot was reset by the watchdog: stage writer made no progress for 61 s \
             (petting stopped at 2026-12-06T03:00:00.000Z; the driver confirms a watchdog reset)"
        );
        assert!(describe_reset(None, true).unwrap().contains("kept no reason"));
        assert_eq!(parse_status("32\n"), Some(32));
        assert_eq!(parse_status("0x20"), Some(32));
        assert_eq!(parse_status("x"), None);
    }
}
