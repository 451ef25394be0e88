//! PID 1's part of A/B updates. At boot: mounts the ESP, reads GRUB's flags and
//! says what this boot is (good, a trial, or a rollback GRUB already made). While
//! running: installs bundles the appliance hands it over /run/flowwarden/init.sock
//! (`update stage FILE`, [`crate::update::install`]), and marks a slot on trial good
//! once the appliance has been ready (config valid, store open, collector bound,
//! page up, senders configured) for `[update] good_after_secs`. It keeps the last
//! outcome in the data directory (`update.json`) and the slots' state for the page
//! and the console in /run/flowwarden/slots.json.

use super::sysconf::SystemConfig;
use crate::update::install::{self, Target, UpdateError};
use crate::update::slots::{self, Boot, Slot};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

macro_rules! say {
    ($($t:tt)*) => { eprintln!("flowwarden-init: {}", format!($($t)*)) };
}

use crate::update::READY_FILE;
const SLOTS_JSON: &str = "/run/flowwarden/slots.json";
const RECORD: &str = "update.json";
/// The appliance's configuration file in the data directory (crate::config::SAVED_CONFIG;
/// a test keeps the two equal: init does not import the configuration's code).
pub const CONFIG: &str = "flowwarden.toml";

/// Where the configuration a slot ran with before an update is kept.
fn kept_config(data: &Path, slot: Slot) -> PathBuf {
    data.join(format!("update/config-slot-{}.toml", slot.as_str()))
}

/// After a rollback to `running`: the configuration may have been changed under the
/// slot that failed (on the page, by its first start) into something `running`
/// refuses, and the box would never come up. `check` is this slot's own
/// `check-config`. When it refuses the current file and differs from the one kept
/// before the update, the kept one is restored and the refused one kept beside it.
/// Returns the line to print.
pub fn restore_config(
    data: &Path,
    running: Slot,
    failed: Slot,
    failed_version: &str,
    check: &dyn Fn(&Path) -> Result<(), String>,
) -> Option<String> {
    let current = data.join(CONFIG);
    let kept = kept_config(data, running);
    let (Ok(now), Ok(before)) = (std::fs::read(&current), std::fs::read(&kept)) else {
        return None;
    };
    if now == before {
        return None;
    }
    let why = check(&current).err()?;
    let aside = data.join(format!("{CONFIG}.from-slot-{}", failed.as_str()));
    if let Err(e) = std::fs::rename(&current, &aside) {
        return Some(format!("cannot move the refused configuration aside to {}: {e}", aside.display()));
    }
    if let Err(e) = crate::fsutil::write_atomic(&current, &before, 0o600) {
        return Some(format!("cannot restore {} from {}: {e}", current.display(), kept.display()));
    }
    Some(format!(
        "configuration restored: slot {} ({failed_version}) left {CONFIG} in a form this slot refuses ({why}); \
         it is back to what slot {} ran with before the update, the refused file is {}",
        failed.as_str(),
        running.as_str(),
        aside.display()
    ))
}

/// `check-config FILE` by this very binary (the slot's own rules); Err(first line).
fn check_with_own_binary(file: &Path) -> Result<(), String> {
    let exe = std::env::current_exe().unwrap_or_else(|_| PathBuf::from("/init"));
    let out = std::process::Command::new(exe)
        .arg("check-config")
        .arg(file)
        .env("NO_COLOR", "1")
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|e| format!("check-config could not run: {e}"))?;
    if out.status.success() {
        return Ok(());
    }
    let text = String::from_utf8_lossy(&out.stderr);
    Err(text.lines().find(|l| !l.trim().is_empty()).unwrap_or("refused").trim().to_string())
}

/// What happened last, kept on the data partition across reboots.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Record {
    /// The last update's outcome: "staged 2.0 in slot b", "refused: …", "failed: …",
    /// "2.0 in slot b marked good", "rolled back …".
    pub last: Option<Entry>,
    /// The last rollback, shown in red until acknowledged.
    pub rollback: Option<Entry>,
    #[serde(default)]
    pub rollback_acknowledged: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Entry {
    pub at: String,
    pub text: String,
}

impl Record {
    fn load(data: &Path) -> Record {
        std::fs::read(data.join(RECORD))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default()
    }
    fn save(&self, data: &Path) {
        let bytes = serde_json::to_vec_pretty(self).unwrap_or_default();
        if let Err(e) = crate::fsutil::write_atomic(&data.join(RECORD), &bytes, 0o644) {
            say!("cannot keep the update record: {e}");
        }
    }
}

fn entry(text: String) -> Entry {
    Entry {
        at: crate::timefmt::rfc3339_ms(crate::timefmt::now_ms()),
        text,
    }
}

struct Trial {
    /// When the appliance with this pid was first seen ready.
    ready_since: Option<(i32, Instant)>,
}

pub struct SlotCtl {
    running: Slot,
    version: String,
    grubenv: PathBuf,
    board: String,
    epoch: u32,
    keys: Vec<fwbundle::PublicKey>,
    data: PathBuf,
    good_after: Duration,
    trial: Mutex<Option<Trial>>,
    busy: Mutex<()>,
    record: Mutex<Record>,
}

impl SlotCtl {
    /// Mounts the ESP and settles the flags for this boot; None when this boot is
    /// not one of ours (no `flowwarden.slot=`) or the ESP cannot be used.
    pub fn start(cfg: &SystemConfig, data: &Path, release: &str) -> Option<SlotCtl> {
        let cmdline = std::fs::read_to_string("/proc/cmdline").unwrap_or_default();
        let Some(running) = Slot::from_cmdline(&cmdline) else {
            say!("updates: off (no flowwarden.slot= on the kernel command line: not booted by the image's GRUB)");
            return None;
        };
        let esp = match super::mounts::wait_partition("esp", Duration::from_secs(5)) {
            Ok(d) => d,
            Err(e) => {
                say!("updates: off: {e}");
                return None;
            }
        };
        let _ = std::fs::create_dir_all(crate::update::ESP_MOUNT);
        if let Err(e) = rustix::mount::mount(
            &esp,
            crate::update::ESP_MOUNT,
            "vfat",
            rustix::mount::MountFlags::NOATIME | rustix::mount::MountFlags::NODEV | rustix::mount::MountFlags::NOEXEC,
            None,
        ) {
            say!("updates: off: cannot mount the ESP {} (vfat): {e}", esp.display());
            return None;
        }
        let (keys, key_errors) = crate::update::load_keys(Path::new(crate::update::KEYS_DIR));
        for e in key_errors {
            say!("update key ignored: {e}");
        }
        let ctl = SlotCtl {
            running,
            version: crate::version::version().to_string(),
            grubenv: Path::new(crate::update::ESP_MOUNT).join("EFI/BOOT/grubenv"),
            board: crate::update::release_field(release, "board").unwrap_or("").to_string(),
            epoch: crate::update::release_field(release, "epoch")
                .and_then(|e| e.parse().ok())
                .unwrap_or(0),
            keys,
            data: data.to_path_buf(),
            good_after: Duration::from_secs(cfg.update.good_after_secs),
            trial: Mutex::new(None),
            busy: Mutex::new(()),
            record: Mutex::new(Record::load(data)),
        };
        say!(
            "updates: running slot {}, board {}, security epoch {}, {} trusted update key(s){}",
            running.as_str(),
            ctl.board,
            ctl.epoch,
            ctl.keys.len(),
            ctl.keys.iter().map(|k| format!(" {}", k.fingerprint())).collect::<String>()
        );
        let mut found = None;
        let env = install::edit_env(&ctl.grubenv, |env| {
            let (boot, _) = slots::on_boot(env, running, &ctl.version)?;
            found = Some(boot);
            Ok(())
        });
        match env {
            Ok(env) => {
                if let Some(boot) = found {
                    ctl.report_boot(&env, boot);
                }
            }
            Err(e) => {
                say!("updates: off: the boot flags: {e}");
                return None;
            }
        }
        ctl.publish();
        Some(ctl)
    }

    fn read_env(&self) -> Result<crate::update::grubenv::Env, UpdateError> {
        install::read_env(&self.grubenv)
    }

    fn report_boot(&self, env: &crate::update::grubenv::Env, boot: Boot) {
        let me = slots::info(env, self.running);
        let other = self.running.other();
        match boot {
            Boot::Good => say!(
                "slot {} ({}) is good; slot {}: {}",
                self.running.as_str(),
                me.describe(true),
                other.as_str(),
                slots::info(env, other).describe(false)
            ),
            Boot::Trial { try_no } => {
                println!(
                    "flowwarden: slot {} ({}) on trial, boot {try_no} of {}: marked good once the appliance has been ready and reporting progress for {} s",
                    self.running.as_str(),
                    self.version,
                    fwbundle::boot::TRIES,
                    self.good_after.as_secs()
                );
                if let Ok(mut t) = self.trial.lock() {
                    *t = Some(Trial { ready_since: None });
                }
            }
            Boot::RolledBack {
                failed,
                failed_version,
                tries,
            } => {
                let failed_version = if failed_version.is_empty() {
                    "unknown version"
                } else {
                    &failed_version
                };
                let line = if tries == 0 {
                    // GRUB's menu fallback: the slot's kernel or initramfs could not be loaded.
                    format!(
                        "rolled back to slot {} ({}) after GRUB could not load slot {} ({}): no boot of it started",
                        self.running.as_str(),
                        self.version,
                        failed.as_str(),
                        failed_version
                    )
                } else {
                    format!(
                        "rolled back to slot {} ({}) after {tries} failed boots of slot {} ({})",
                        self.running.as_str(),
                        self.version,
                        failed.as_str(),
                        failed_version
                    )
                };
                println!("flowwarden: {line}");
                self.audit("rolled_back", &line);
                if let Some(restored) = restore_config(&self.data, self.running, failed, failed_version, &check_with_own_binary) {
                    println!("flowwarden: {restored}");
                    self.audit("config_restored", &restored);
                }
                self.remember(|r| {
                    r.last = Some(entry(line.clone()));
                    r.rollback = Some(entry(line));
                    r.rollback_acknowledged = false;
                });
            }
        }
    }

    fn remember(&self, f: impl FnOnce(&mut Record)) {
        if let Ok(mut r) = self.record.lock() {
            f(&mut r);
            r.save(&self.data);
        }
    }

    /// An audit event for the appliance to log and forward (crate::update::EVENTS).
    fn audit(&self, action: &str, detail: &str) {
        if !crate::update::append_event(&self.data, action, detail) {
            say!("update event {action} not queued for the audit trail (the appliance has not taken the earlier ones)");
        }
    }

    /// Called every few seconds by the supervisor with the appliance's pid (0: not
    /// running) and whether it reports progress (init::watchdog): a slot is marked
    /// good only after `good_after` of both, without a restart in between.
    pub fn check_health(&self, appliance_pid: i32, progressing: bool) {
        let Ok(mut guard) = self.trial.lock() else { return };
        let Some(trial) = guard.as_mut() else { return };
        let ready_pid = std::fs::read_to_string(READY_FILE).ok().and_then(|t| t.trim().parse::<i32>().ok());
        if appliance_pid == 0 || ready_pid != Some(appliance_pid) || !progressing {
            trial.ready_since = None;
            return;
        }
        let since = match trial.ready_since {
            Some((pid, at)) if pid == appliance_pid => at,
            _ => {
                trial.ready_since = Some((appliance_pid, Instant::now()));
                return;
            }
        };
        if since.elapsed() < self.good_after {
            return;
        }
        match install::edit_env(&self.grubenv, |env| slots::mark_good(env, self.running)) {
            Ok(_) => {
                *guard = None;
                drop(guard);
                let line = format!(
                    "slot {} ({}) marked good: the appliance has been ready and reporting progress for {} s",
                    self.running.as_str(),
                    self.version,
                    self.good_after.as_secs()
                );
                println!("flowwarden: {line}");
                self.audit("slot_marked_good", &line);
                self.remember(|r| r.last = Some(entry(line)));
                self.publish();
            }
            Err(e) => say!("cannot mark slot {} good: {e}", self.running.as_str()),
        }
    }

    /// `update stage FILE` from the appliance: checks and writes the bundle to the
    /// other slot. The last line is `staged V SLOT`, `refused REASON` or `failed REASON`.
    pub fn stage(&self, bundle: &Path, say_line: &mut dyn FnMut(&str)) -> String {
        let Ok(_one) = self.busy.try_lock() else {
            return "failed another update is being installed".into();
        };
        // What this (good) slot runs with, in case the new one changes it and then fails.
        if let Ok(text) = std::fs::read(self.data.join(CONFIG)) {
            let kept = kept_config(&self.data, self.running);
            let _ = std::fs::create_dir_all(self.data.join("update"));
            if let Err(e) = crate::fsutil::write_atomic(&kept, &text, 0o600) {
                say!("cannot keep the configuration in {}: {e}", kept.display());
            }
        }
        let target = self.running.other();
        let device = match super::mounts::wait_partition(target.partition(), Duration::from_secs(1)) {
            Ok(d) => d,
            Err(e) => return format!("failed {e}"),
        };
        let slot_size = partition_bytes(&device).unwrap_or(0);
        let t = Target {
            slot: target,
            device,
            slot_size,
            grubenv: self.grubenv.clone(),
            keys: self.keys.clone(),
            board: self.board.clone(),
            arch: std::env::consts::ARCH.to_string(),
            epoch: self.epoch,
        };
        say!("update: installing {} into slot {}", bundle.display(), target.as_str());
        // The steps go to the asking command (it prints them); the outcome is logged here too.
        let result = install::stage(bundle, &t, say_line);
        let (answer, text, action) = match &result {
            Ok(s) => (
                format!("staged {} {}", s.version, s.slot.as_str()),
                format!("{} staged in slot {}", s.version, s.slot.as_str()),
                "update_staged",
            ),
            Err(UpdateError::Refused(r)) => (format!("refused {r}"), format!("refused: {r}"), "update_refused"),
            Err(UpdateError::Failed(f)) => (format!("failed {f}"), format!("failed: {f}"), "update_failed"),
        };
        say!("update {text}");
        self.audit(action, &format!("update {text}"));
        self.remember(|r| r.last = Some(entry(format!("update {text}"))));
        self.publish();
        answer
    }

    pub fn acknowledge(&self) -> String {
        let mut had = None;
        self.remember(|r| {
            had = r.rollback.as_ref().filter(|_| !r.rollback_acknowledged).map(|e| e.text.clone());
            r.rollback_acknowledged = true;
        });
        if let Some(text) = &had {
            self.audit("rollback_acknowledged", text);
        }
        self.publish();
        if had.is_some() {
            "ok rollback acknowledged".into()
        } else {
            "ok no rollback to acknowledge".into()
        }
    }

    /// Lines for the console's `status`.
    pub fn status_lines(&self) -> Vec<String> {
        let mut out = Vec::new();
        match self.read_env() {
            Ok(env) => {
                let me = slots::info(&env, self.running);
                out.push(format!("slot: running {} ({})", self.running.as_str(), me.describe(true)));
                let o = self.running.other();
                out.push(format!("other slot: {} ({})", o.as_str(), slots::info(&env, o).describe(false)));
            }
            Err(e) => out.push(format!("slot: running {} (flags unreadable: {e})", self.running.as_str())),
        }
        if let Ok(r) = self.record.lock() {
            out.push(format!(
                "last update: {}",
                r.last
                    .as_ref()
                    .map(|e| format!("{} ({})", e.text, e.at))
                    .unwrap_or_else(|| "none".into())
            ));
            if let Some(rb) = r.rollback.as_ref().filter(|_| !r.rollback_acknowledged) {
                out.push(format!("ROLLBACK not acknowledged: {} ({})", rb.text, rb.at));
            }
        }
        out
    }

    /// /run/flowwarden/slots.json for the page and `/api/v1/system`.
    pub fn publish(&self) {
        let env = self.read_env().ok();
        let slot = |s: Slot| {
            env.as_ref().map(|e| {
                let i = slots::info(e, s);
                serde_json::json!({"version": i.version, "good": i.good, "tries_used": i.tries_used, "state": i.describe(s == self.running)})
            })
        };
        let record = self.record.lock().map(|r| r.clone()).unwrap_or_default();
        let v = serde_json::json!({
            "running": self.running.as_str(),
            "version": self.version,
            "a": slot(Slot::A),
            "b": slot(Slot::B),
            "running_good": env.as_ref().map(|e| slots::info(e, self.running).good),
            "last_update": record.last,
            "rollback": record.rollback,
            "rollback_acknowledged": record.rollback_acknowledged,
        });
        let _ = crate::fsutil::write_atomic(Path::new(SLOTS_JSON), v.to_string().as_bytes(), 0o644);
    }

    /// Unmounts the ESP at shutdown (its flags are already synced).
    pub fn shutdown(&self) {
        let _ = rustix::mount::unmount(crate::update::ESP_MOUNT, rustix::mount::UnmountFlags::empty());
    }
}

/// Size of a block device from /sys/class/block/NAME/size (512-byte sectors).
fn partition_bytes(dev: &Path) -> Option<u64> {
    let name = dev.file_name()?.to_string_lossy().into_owned();
    let t = std::fs::read_to_string(Path::new("/sys/class/block").join(name).join("size")).ok()?;
    t.trim().parse::<u64>().ok().map(|s| s * 512)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_config_file_is_the_one_the_appliance_reads() {
        assert_eq!(CONFIG, crate::config::SAVED_CONFIG);
    }

    #[test]
    fn a_fallback_restores_the_configuration_only_when_this_slot_refuses_the_new_one() {
        let d = tempfile::tempdir().unwrap();
        let data = d.path();
        std::fs::create_dir_all(data.join("update")).unwrap();
        let refuse = |p: &Path| -> Result<(), String> {
            let t = std::fs::read_to_string(p).unwrap();
            if t.contains("new_key") {
                Err(format!("{}: unknown field `new_key`", p.display()))
            } else {
                Ok(())
            }
        };
        let run = || restore_config(data, Slot::A, Slot::B, "2.0", &refuse);
        // Nothing kept (no update from this slot yet): nothing to do.
        std::fs::write(data.join(CONFIG), "new_key = 1\n").unwrap();
        assert_eq!(run(), None);
        // The same file as before the update: nothing to do.
        std::fs::write(kept_config(data, Slot::A), "new_key = 1\n").unwrap();
        assert_eq!(run(), None);
        // Changed, and this slot accepts it: kept as changed.
        std::fs::write(kept_config(data, Slot::A), "[web]\n").unwrap();
        std::fs::write(data.join(CONFIG), "[web]\n[detect]\n").unwrap();
        assert_eq!(run(), None);
        assert_eq!(std::fs::read_to_string(data.join(CONFIG)).unwrap(), "[web]\n[detect]\n");
        // Changed into something this slot refuses: restored, the refused one kept aside.
        std::fs::write(data.join(CONFIG), "new_key = 1\n").unwrap();
        let line = run().unwrap();
        assert!(
            line.starts_with("configuration restored: slot b (2.0) left flowwarden.toml in a form this slot refuses (")
                && line.contains("unknown field `new_key`")
                && line.ends_with("flowwarden.toml.from-slot-b"),
            "{line}"
        );
        assert_eq!(std::fs::read_to_string(data.join(CONFIG)).unwrap(), "[web]\n");
        assert_eq!(
            std::fs::read_to_string(data.join("flowwarden.toml.from-slot-b")).unwrap(),
            "new_key = 1\n"
        );
        // And once restored, a second boot does nothing more.
        assert_eq!(run(), None);
    }
}
