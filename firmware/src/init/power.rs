//! Watches the kernel's input devices for the power button (ACPI button on
//! x86, ACPI GED / gpio-keys on ARM) so PID 1 can shut down cleanly when the
//! button is pressed or QEMU sends `system_powerdown`. One thread per
//! /dev/input/event* device; each press is one message on the channel.

use std::io::Read;
use std::path::PathBuf;

const EV_KEY: u16 = 1;
const KEY_POWER: u16 = 116;
/// struct input_event on 64-bit Linux: timeval (16) + type (2) + code (2) + value (4).
const EVENT_SIZE: usize = 24;

/// True when a raw input_event is a power-key press.
pub fn is_power_press(ev: &[u8]) -> bool {
    ev.len() >= EVENT_SIZE
        && u16::from_ne_bytes([ev[16], ev[17]]) == EV_KEY
        && u16::from_ne_bytes([ev[18], ev[19]]) == KEY_POWER
        && i32::from_ne_bytes([ev[20], ev[21], ev[22], ev[23]]) == 1
}

/// Starts a watcher per event device; returns the devices watched.
pub fn watch(on_press: impl Fn() + Send + Clone + 'static) -> Vec<PathBuf> {
    let mut devs: Vec<PathBuf> = std::fs::read_dir("/dev/input")
        .map(|d| {
            d.flatten()
                .map(|e| e.path())
                .filter(|p| p.file_name().is_some_and(|n| n.to_string_lossy().starts_with("event")))
                .collect()
        })
        .unwrap_or_default();
    devs.sort();
    for dev in &devs {
        let Ok(mut f) = std::fs::File::open(dev) else { continue };
        let cb = on_press.clone();
        let _ = std::thread::Builder::new().name("power-button".into()).spawn(move || {
            let mut ev = [0u8; EVENT_SIZE];
            while f.read_exact(&mut ev).is_ok() {
                if is_power_press(&ev) {
                    cb();
                }
            }
        });
    }
    devs
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recognises_power_key_press_only() {
        let mut ev = [0u8; 24];
        ev[16..18].copy_from_slice(&EV_KEY.to_ne_bytes());
        ev[18..20].copy_from_slice(&KEY_POWER.to_ne_bytes());
        ev[20..24].copy_from_slice(&1i32.to_ne_bytes());
        assert!(is_power_press(&ev));
        ev[20..24].copy_from_slice(&0i32.to_ne_bytes()); // release
        assert!(!is_power_press(&ev));
        assert!(!is_power_press(&ev[..20]));
    }
}
