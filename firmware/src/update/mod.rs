//! A/B firmware updates. A signed bundle (tools/fwbundle) reaches the box as a
//! file or over http ([`fetch`], run by `flowwarden update`), PID 1 checks it and
//! writes it to the inactive slot ([`install`]), and the boot order in GRUB's
//! environment block ([`grubenv`]) puts that slot on trial. PID 1 marks the slot
//! good once the appliance's health checks pass after boot, or finds at the next
//! boot that GRUB fell back to the old slot after three failed tries ([`slots`]).

pub mod ask;
pub mod fetch;
pub mod grubenv;
pub mod install;
pub mod slots;

/// Where PID 1 mounts the ESP (GRUB, grub.cfg and grubenv in EFI/BOOT/).
pub const ESP_MOUNT: &str = "/boot/efi";
/// The public keys bundles must be signed with (PEM files, in the initramfs).
pub const KEYS_DIR: &str = "/etc/flowwarden/update-keys";
/// Written by the appliance (its pid) once it is ready: config valid, store open,
/// collector bound, page up, senders configured. PID 1 removes it before each
/// start and marks a slot on trial good once it has stayed for a while.
pub const READY_FILE: &str = "/run/flowwarden/ready";
/// The most a bundle may be: larger files are refused before they are downloaded.
pub const MAX_BUNDLE: u64 = 1 << 30;

/// The trusted update keys in `dir` (every `*.pem`); unreadable files are named.
pub fn load_keys(dir: &std::path::Path) -> (Vec<fwbundle::PublicKey>, Vec<String>) {
    let mut keys = Vec::new();
    let mut errors = Vec::new();
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    files.sort();
    for p in files.into_iter().filter(|p| p.extension().is_some_and(|e| e == "pem")) {
        match std::fs::read(&p)
            .map_err(|e| e.to_string())
            .and_then(|t| fwbundle::PublicKey::from_pem(&t).map_err(|e| e.to_string()))
        {
            Ok(k) => keys.push(k),
            Err(e) => errors.push(format!("{}: {e}", p.display())),
        }
    }
    (keys, errors)
}

/// `epoch N` from the release file (0 when absent).
pub fn release_field<'a>(release: &'a str, key: &str) -> Option<&'a str> {
    release
        .lines()
        .find_map(|l| l.strip_prefix(key).and_then(|r| r.strip_prefix(' ')).map(str::trim))
}

/// PID 1's update events waiting for the appliance to audit them (in the data
/// directory): installed, refused, failed, marked good, rolled back, acknowledged.
pub const EVENTS: &str = "update/events.jsonl";
/// Events wait here at most this many bytes; beyond it new ones are dropped (and say so).
const EVENTS_MAX: u64 = 64 * 1024;

/// One event from PID 1 about the slots.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Event {
    pub at_ms: u64,
    pub action: String,
    pub detail: String,
}

/// Appends an event for the appliance to audit (PID 1). Returns false when it was
/// dropped because the appliance has not taken the earlier ones.
pub fn append_event(data_dir: &std::path::Path, action: &str, detail: &str) -> bool {
    use std::io::Write;
    let path = data_dir.join(EVENTS);
    if let Some(parent) = path.parent() {
        let _ = std::fs::create_dir_all(parent);
    }
    if std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0) > EVENTS_MAX {
        return false;
    }
    let e = Event {
        at_ms: crate::timefmt::now_ms(),
        action: action.to_string(),
        detail: detail.to_string(),
    };
    let Ok(line) = serde_json::to_string(&e) else { return false };
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .and_then(|mut f| f.write_all(format!("{line}\n").as_bytes()))
        .is_ok()
}

/// Takes the waiting events (the appliance): moves the file aside, reads it, removes it.
/// Lines that do not parse are returned as `unreadable` events rather than lost.
pub fn take_events(data_dir: &std::path::Path) -> Vec<Event> {
    let path = data_dir.join(EVENTS);
    let taking = path.with_extension("taking");
    // A file left by a taker that stopped half-way is taken first.
    if !taking.exists() && std::fs::rename(&path, &taking).is_err() {
        return Vec::new();
    }
    let text = std::fs::read_to_string(&taking).unwrap_or_default();
    let _ = std::fs::remove_file(&taking);
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            serde_json::from_str(l).unwrap_or_else(|e| Event {
                at_ms: crate::timefmt::now_ms(),
                action: "update_event_unreadable".into(),
                detail: format!("{e}: {}", l.chars().take(200).collect::<String>()),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_pass_from_pid1_to_the_appliance_once() {
        let d = tempfile::tempdir().unwrap();
        assert!(take_events(d.path()).is_empty());
        assert!(append_event(d.path(), "update_staged", "2.0 staged in slot b"));
        assert!(append_event(d.path(), "slot_marked_good", "slot b (2.0) marked good"));
        let got = take_events(d.path());
        assert_eq!(
            got.iter().map(|e| e.action.as_str()).collect::<Vec<_>>(),
            ["update_staged", "slot_marked_good"]
        );
        assert!(take_events(d.path()).is_empty());
        // Bounded: once 64 KiB wait untaken, more are dropped.
        let mut kept = 0;
        for _ in 0..2000 {
            kept += usize::from(append_event(d.path(), "update_failed", &"x".repeat(100)));
        }
        assert!(kept < 2000 && kept > 400, "{kept}");
        std::fs::write(d.path().join(EVENTS), "not json\n").unwrap();
        assert_eq!(take_events(d.path())[0].action, "update_event_unreadable");
    }

    #[test]
    fn release_fields() {
        let r = "flowwarden 1.0\nboard qemu-x86_64\nepoch 3\n";
        assert_eq!(release_field(r, "board"), Some("qemu-x86_64"));
        assert_eq!(release_field(r, "epoch"), Some("3"));
        assert_eq!(release_field(r, "commit"), None);
    }
}
