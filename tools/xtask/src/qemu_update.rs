//! The A/B update system test (part of `cargo xtask qemu-test`): an image that
//! trusts a throwaway key, bundles built by `cargo xtask bundle`'s code and served
//! from the host over HTTP (the guest fetches them from 10.0.2.2), and the update's
//! whole life cycle on the booted image:
//!
//! 1. refusals (x86_64): a bundle signed by another key, a tampered one, one with
//!    an older security epoch: `update refused: signature|hash|epoch`, exit 1, and
//!    the other slot is exactly as before;
//! 2. a good update: staged in slot b, reboots into it, on trial, marked good after
//!    its health checks, `version` says the bundle's version, every flow and alert
//!    (flowgen's horizontal scan) is there, as after the rollback and the power cut;
//! 3. a slot that cannot boot (its initramfs left out): GRUB tries it three times,
//!    falls back to the good slot, which says so in the contract's words, and the
//!    rollback is shown until acknowledged; flows still there;
//! 4. a power cut while a slot is written (x86_64): the box boots the good slot and
//!    the half-written one is not bootable;
//! 5. provisioning (x86_64): a `flowwarden-provision.toml` put on the ESP is applied
//!    once (a user with an argon2id hash, a configuration) and removed;
//! 6. a hung stage (x86_64): `watchdog-test writer --yes`; PID 1 stops petting,
//!    the iTCO watchdog resets the box, the next boot says why, flows stay;
//! 7. factory reset (x86_64): `factory-reset --yes` empties the box (no flows, no
//!    users, a new setup code) and keeps the slots.

use crate::board::Board;
use crate::qemu::{Vm, finish_flowgen, flowgen, free_udp_port};
use anyhow::{Context, Result, ensure};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// Serves the files of one directory over HTTP/1.1 on 127.0.0.1 (for the guest's
/// `update http://10.0.2.2:PORT/NAME`), one thread per connection.
struct Server {
    port: u16,
}

impl Server {
    fn start(dir: PathBuf) -> Result<Server> {
        let l = std::net::TcpListener::bind("127.0.0.1:0")?;
        let port = l.local_addr()?.port();
        std::thread::spawn(move || {
            for s in l.incoming().flatten() {
                let dir = dir.clone();
                std::thread::spawn(move || serve(s, &dir));
            }
        });
        Ok(Server { port })
    }
    fn url(&self, name: &str) -> String {
        format!("http://10.0.2.2:{}/{name}", self.port)
    }
}

fn serve(mut s: std::net::TcpStream, dir: &Path) {
    let mut req = Vec::new();
    let mut buf = [0u8; 1024];
    while !req.windows(4).any(|w| w == b"\r\n\r\n") && req.len() < 16384 {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => req.extend_from_slice(&buf[..n]),
        }
    }
    let text = String::from_utf8_lossy(&req);
    let path = text.split_whitespace().nth(1).unwrap_or("/").trim_start_matches('/').to_string();
    match (path.contains(['/', '\\']) || path.starts_with('.'), std::fs::read(dir.join(&path))) {
        (false, Ok(body)) => {
            let _ = write!(s, "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", body.len());
            let _ = s.write_all(&body);
        }
        _ => {
            let _ = write!(s, "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
        }
    }
}

fn openssl_key(dir: &Path, name: &str) -> Result<(PathBuf, PathBuf)> {
    let private = dir.join(format!("{name}.pem"));
    let public = dir.join(format!("{name}.pub.pem"));
    crate::run(
        Command::new("openssl")
            .args(["genpkey", "-algorithm", "ed25519", "-out"])
            .arg(&private),
    )?;
    crate::run(
        Command::new("openssl")
            .arg("pkey")
            .arg("-in")
            .arg(&private)
            .arg("-pubout")
            .arg("-out")
            .arg(&public),
    )?;
    Ok((private, public))
}

/// Runs a console command whatever its exit code; (output lines, exit code).
fn console_code(vm: &mut Vm, cmd: &str, timeout: Duration) -> Result<(Vec<String>, i32)> {
    let from = vm.len();
    writeln!(vm.stdin, "{cmd}")?;
    vm.stdin.flush()?;
    let end = vm.wait_for("flowwarden-console: done (exit ", from, timeout)?;
    let lines: Vec<String> = (from..=end).map(|i| vm.line(i)).collect();
    let code = lines
        .last()
        .and_then(|l| l.split("(exit ").nth(1))
        .and_then(|c| c.trim_end_matches(')').parse().ok())
        .unwrap_or(-1);
    Ok((lines, code))
}

/// `update URL` without --no-reboot: the box reboots right after the staged line,
/// before the console can say `done`. Returns the ending line.
fn update_rebooting(vm: &mut Vm, url: &str) -> Result<String> {
    let from = vm.len();
    writeln!(vm.stdin, "update {url}")?;
    vm.stdin.flush()?;
    let i = vm.wait_for("flowwarden: update ", from, Duration::from_secs(900))?;
    Ok(vm.line(i))
}

fn status(vm: &mut Vm) -> Result<String> {
    Ok(vm.console("status", Duration::from_secs(30))?.join("\n"))
}

/// The ids of the alerts the box keeps (console `alerts --format jsonl`), sorted.
fn alert_ids(vm: &mut Vm) -> Result<Vec<String>> {
    let lines = vm.console("alerts --format jsonl", Duration::from_secs(60))?;
    let mut ids: Vec<String> = lines
        .iter()
        .filter(|l| l.starts_with('{'))
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|v| v["id"].as_str().map(String::from))
        .collect();
    ids.sort();
    Ok(ids)
}

/// Line of `status` starting with `prefix`.
fn status_line(status: &str, prefix: &str) -> String {
    status.lines().find(|l| l.starts_with(prefix)).unwrap_or("").to_string()
}

pub fn update_test(root: &Path, board: &Board, dir: &Path, full: bool) -> Result<String> {
    let t0 = Instant::now();
    let name = board.name.as_str();
    let q = board.qemu.as_ref().context("board has no [qemu] table")?;
    let ready = Duration::from_secs(q.ready_timeout_secs);
    let keys = dir.join("keys");
    let served = dir.join("served");
    std::fs::create_dir_all(&keys)?;
    std::fs::create_dir_all(&served)?;
    let (private, public) = openssl_key(&keys, "update")?;
    let img = crate::image::image(root, name, &[public])?;
    let disk = dir.join("update-disk.img");
    crate::run(Command::new("cp").arg("--sparse=always").arg(&img).arg(&disk))?;
    let built = |version: &str, key: &Path, epoch: Option<u32>, broken: bool, as_name: &str| -> Result<()> {
        let b = crate::image::bundle(root, name, key, Some(version), epoch, broken)?;
        std::fs::rename(&b, served.join(as_name))?;
        Ok(())
    };
    built("9.9.9-good", &private, None, false, "good.fwb")?;
    built("9.9.9-broken", &private, None, true, "broken.fwb")?;
    if full {
        let (other, _) = openssl_key(&keys, "other")?;
        built("9.9.9-other", &other, None, false, "other.fwb")?;
        built("0.0.1-old", &private, Some(0), false, "old.fwb")?;
        // One byte of the compressed payload changed: the signature still holds, the
        // compressed payload's hash does not. (Checking only the decompressed image's
        // hash let this pass once: zstd can decode a changed byte to the same image.)
        let mut t = std::fs::read(served.join("good.fwb"))?;
        let at = t.len() - 4096;
        t[at] ^= 0x40;
        std::fs::write(served.join("tampered.fwb"), t)?;
    }
    let server = Server::start(served.clone())?;
    let mut report = Vec::new();

    let port = free_udp_port()?;
    let mut vm = Vm::start(board, &disk, port, dir, 11)?;
    vm.wait_for("flowwarden: ready", 0, ready)?;
    let st = status(&mut vm)?;
    let version0 = status_line(&st, "version: ").trim_start_matches("version: ").to_string();
    ensure!(
        status_line(&st, "slot: ").starts_with(&format!("slot: running a ({version0}, good)")),
        "fresh image status:\n{st}"
    );
    let other0 = status_line(&st, "other slot: ");
    // Two hours of a 40-host office with a horizontal scan at 01:00: flows and an alert
    // that must both survive the update, the rollback and the power cut.
    let sent = 12_000u64;
    let out = finish_flowgen(flowgen(root, port, sent, 3000, 7, 0, &["--attack", "hscan"])?)?;
    eprintln!("xtask: flowgen: {out}");
    let mut stored = 0;
    for _ in 0..20 {
        stored = vm.flows()?;
        if stored >= sent {
            break;
        }
        std::thread::sleep(Duration::from_secs(1));
    }
    ensure!(stored == sent, "guest stored {stored} of {sent} flows");
    let mut alerts0 = Vec::new();
    for _ in 0..30 {
        alerts0 = alert_ids(&mut vm)?;
        if !alerts0.is_empty() {
            break;
        }
        std::thread::sleep(Duration::from_secs(2));
    }
    ensure!(!alerts0.is_empty(), "the scan raised no alert in the guest");

    if full {
        for (file, reason) in [("other.fwb", "signature: "), ("tampered.fwb", "hash: "), ("old.fwb", "epoch: ")] {
            let t = Instant::now();
            let (lines, code) = console_code(
                &mut vm,
                &format!("update {} --no-reboot", server.url(file)),
                Duration::from_secs(600),
            )?;
            let want = format!("flowwarden: update refused: {reason}");
            ensure!(
                code == 1 && lines.iter().any(|l| l.starts_with(&want)),
                "{file}: expected {want:?} and exit 1, got exit {code}:\n{}",
                lines.join("\n")
            );
            let st = status(&mut vm)?;
            ensure!(
                status_line(&st, "other slot: ") == other0,
                "{file} was refused but slot b changed:\n{st}"
            );
            report.push(format!("{file}: refused ({reason}…) in {:.0} s", t.elapsed().as_secs_f64()));
        }
    }

    // A good update, then the reboot into it.
    let t = Instant::now();
    let from = vm.len();
    let end = update_rebooting(&mut vm, &server.url("good.fwb"))?;
    ensure!(end == "flowwarden: update 9.9.9-good staged in slot b", "good bundle: {end}");
    let staged_s = t.elapsed().as_secs_f64();
    vm.wait_for("flowwarden-init: data partition unmounted cleanly", from, Duration::from_secs(60))?;
    vm.wait_for("flowwarden: slot b (9.9.9-good) on trial, boot 1 of 3", from, ready)?;
    vm.wait_for("flowwarden: ready", from, ready)?;
    vm.wait_for("flowwarden: slot b (9.9.9-good) marked good", from, Duration::from_secs(180))?;
    let v = vm.console("version", Duration::from_secs(30))?.join("\n");
    ensure!(v.contains("flowwarden 9.9.9-good"), "version after the update: {v}");
    let st = status(&mut vm)?;
    ensure!(
        status_line(&st, "slot: ") == "slot: running b (9.9.9-good, good)",
        "after the update:\n{st}"
    );
    ensure!(vm.flows()? == sent, "flows changed across the update");
    ensure!(alert_ids(&mut vm)? == alerts0, "alerts changed across the update");
    report.push(format!(
        "good bundle: downloaded, checked and written in {staged_s:.0} s; booted, marked good {:.0} s after the update began",
        t.elapsed().as_secs_f64()
    ));

    // A slot that cannot boot: three tries, then back to b.
    let t = Instant::now();
    let from = vm.len();
    let end = update_rebooting(&mut vm, &server.url("broken.fwb"))?;
    ensure!(end == "flowwarden: update 9.9.9-broken staged in slot a", "broken bundle: {end}");
    for n in 1..=3 {
        vm.wait_for(&format!("flowwarden: slot a on trial, try {n} of 3"), from, ready)?;
    }
    let i = vm.wait_for("flowwarden: rolled back to slot b", from, ready)?;
    let line = vm.line(i);
    ensure!(
        line == "flowwarden: rolled back to slot b (9.9.9-good) after 3 failed boots of slot a (9.9.9-broken)",
        "rollback line: {line}"
    );
    vm.wait_for("flowwarden: ready", i, ready)?;
    let st = status(&mut vm)?;
    ensure!(
        st.contains("ROLLBACK not acknowledged: rolled back to slot b")
            && status_line(&st, "other slot: ") == "other slot: a (9.9.9-broken, failed its 3 tries: not bootable)",
        "after the rollback:\n{st}"
    );
    ensure!(vm.flows()? == sent, "flows changed across the rollback");
    ensure!(alert_ids(&mut vm)? == alerts0, "alerts changed across the rollback");
    vm.console("update --acknowledge-rollback", Duration::from_secs(30))?;
    ensure!(
        !status(&mut vm)?.contains("ROLLBACK"),
        "the rollback is still shown after acknowledging it"
    );
    report.push(format!(
        "slot without initramfs: 3 tries, back on slot b in {:.0} s",
        t.elapsed().as_secs_f64()
    ));

    if full {
        // Power cut while slot a is written: b boots, a is not bootable.
        let from = vm.len();
        writeln!(vm.stdin, "update {} --no-reboot", server.url("good.fwb"))?;
        vm.stdin.flush()?;
        vm.wait_for("slot a marked not bootable while it is written", from, Duration::from_secs(600))?;
        std::thread::sleep(Duration::from_millis(1500));
        vm.kill();
        let mut vm2 = Vm::start(board, &disk, free_udp_port()?, dir, 12)?;
        vm2.wait_for("flowwarden: ready", 0, ready)?;
        let st = status(&mut vm2)?;
        ensure!(
            status_line(&st, "slot: ") == "slot: running b (9.9.9-good, good)"
                && status_line(&st, "other slot: ").starts_with("other slot: a (not bootable"),
            "after a power cut while writing slot a:\n{st}"
        );
        ensure!(vm2.flows()? == sent, "flows changed across the power cut");
        ensure!(alert_ids(&mut vm2)? == alerts0, "alerts changed across the power cut");
        report.push("power cut while writing slot a: slot b boots, slot a not bootable".into());
        vm2.poweroff()?;
        report.push(provision_and_reset(board, &disk, dir, ready, sent)?);
    } else {
        vm.poweroff()?;
    }
    let text = format!("{name} updates ({:.0} s): {}", t0.elapsed().as_secs_f64(), report.join("; "));
    eprintln!("xtask: {text}");
    Ok(text)
}

/// The password of the provisioned user, and its argon2id hash (made once with the
/// `argon2` tool: `echo -n PASS | argon2 flowwardenprovsalt -id -m 16 -t 2 -p 1 -e`).
const PROVISIONED_HASH: &str = "$argon2id$v=19$m=65536,t=2,p=1$Zmxvd3dhcmRlbnByb3ZzYWx0$T0+XsWuaXj2goyi4Fc0YIc9aJIWgRR+SND0rBNo+Sh4";

/// Provisioning from the ESP, then a factory reset.
fn provision_and_reset(board: &Board, disk: &Path, dir: &Path, ready: Duration, sent: u64) -> Result<String> {
    let (esp_start, _) = crate::qemu::partition(disk, "esp")?;
    let esp = format!("{}@@{esp_start}", disk.display());
    let file = dir.join("flowwarden-provision.toml");
    std::fs::write(
        &file,
        format!(
            "# A branch office's settings, put on the ESP before the box is shipped.\n[network]\ninternal = [\"10.77.0.0/16\"]\n\n\
             [[user]]\nname = \"regional-it\"\nrole = \"admin\"\nhash = \"{PROVISIONED_HASH}\"\n\n\
             [[file]]\npath = \"pki/siem-ca.pem\"\ncontents = \"\"\"\n-----BEGIN CERTIFICATE-----\nMIIBtest\n-----END CERTIFICATE-----\n\"\"\"\n"
        ),
    )?;
    crate::run(
        Command::new("mcopy")
            .env("MTOOLS_SKIP_CHECK", "1")
            .arg("-i")
            .arg(&esp)
            .arg(&file)
            .arg("::/"),
    )?;
    let mut vm = Vm::start(board, disk, free_udp_port()?, dir, 13)?;
    let i = vm.wait_for("flowwarden: provisioning ", 0, ready)?;
    let line = vm.line(i);
    ensure!(
        line.contains("flowwarden: provisioning applied /boot/efi/flowwarden-provision.toml: configuration written; 1 user(s) (regional-it admin); 1 file(s) (pki/siem-ca.pem)"),
        "provisioning: {line}"
    );
    vm.wait_for("flowwarden: ready", i, ready)?;
    let users = vm.console("user list", Duration::from_secs(60))?.join("\n");
    ensure!(users.contains("regional-it"), "user list after provisioning: {users}");
    ensure!(vm.flows()? == sent, "flows changed with provisioning");
    // Once: the file is gone from the ESP, and a reboot applies nothing.
    let from = vm.len();
    writeln!(vm.stdin, "reboot")?;
    vm.stdin.flush()?;
    vm.wait_for("flowwarden: ready", from, ready)?;
    ensure!(
        (from..vm.len()).all(|i| !vm.line(i).contains("flowwarden: provisioning")),
        "provisioning applied twice"
    );
    let hang = watchdog_reset(&mut vm, ready, sent)?;

    // Factory reset: asked for by typing the word, or --yes.
    let from = vm.len();
    writeln!(vm.stdin, "factory-reset")?;
    vm.stdin.flush()?;
    vm.wait_for("Type reset to go on, anything else to cancel:", from, Duration::from_secs(30))?;
    writeln!(vm.stdin, "no")?;
    vm.stdin.flush()?;
    vm.wait_for(
        "flowwarden-console: factory reset cancelled; nothing changed",
        from,
        Duration::from_secs(30),
    )?;
    vm.wait_for("flowwarden-console: done (exit 1)", from, Duration::from_secs(30))?;
    let from = vm.len();
    writeln!(vm.stdin, "factory-reset --yes")?;
    vm.stdin.flush()?;
    vm.wait_for("flowwarden: factory reset: /dev/vda4 wiped", from, Duration::from_secs(120))?;
    vm.wait_for("is blank: formatting it as ext4 (first boot)", from, ready)?;
    vm.wait_for("flowwarden: web setup code ", from, ready)?;
    vm.wait_for("flowwarden: ready", from, ready)?;
    ensure!(vm.flows()? == 0, "flows left after the factory reset");
    let users = vm.console("user list", Duration::from_secs(60))?.join("\n");
    ensure!(!users.contains("regional-it"), "users left after the factory reset: {users}");
    let st = status(&mut vm)?;
    ensure!(
        status_line(&st, "slot: ") == "slot: running b (9.9.9-good, good)",
        "the slots changed with the factory reset:\n{st}"
    );
    vm.poweroff()?;
    let left = Command::new("mdir")
        .env("MTOOLS_SKIP_CHECK", "1")
        .arg("-i")
        .arg(&esp)
        .arg("-b")
        .arg("::/")
        .output()?;
    let left = String::from_utf8_lossy(&left.stdout).to_string();
    ensure!(
        !left.contains("flowwarden-provision"),
        "the provisioning file is still on the ESP: {left}"
    );
    Ok(format!(
        "provisioning from the ESP applied once; {hang}; factory reset emptied the box and kept the slots"
    ))
}

/// A hung stage: `watchdog-test writer --yes` hangs the store writer; the
/// appliance stops reporting progress, PID 1 stops petting, the board's watchdog
/// (q35's iTCO) resets the box, and the next boot says why. Committed flows stay.
fn watchdog_reset(vm: &mut Vm, ready: Duration, sent: u64) -> Result<String> {
    let t = Instant::now();
    let from = vm.len();
    let (lines, code) = console_code(vm, "watchdog-test writer --yes", Duration::from_secs(60))?;
    ensure!(
        code == 0
            && lines
                .iter()
                .any(|l| l.starts_with("flowwarden: stage writer hangs from its next unit of work")),
        "watchdog-test: exit {code}:\n{}",
        lines.join("\n")
    );
    vm.wait_for("watchdog: stage writer made no progress for ", from, Duration::from_secs(180))?;
    let i = vm.wait_for(
        "flowwarden-init: watchdog: not petting any more: stage writer made no progress for ",
        from,
        Duration::from_secs(60),
    )?;
    let stopped = t.elapsed();
    let i = vm.wait_for(
        "flowwarden: the previous boot was reset by the watchdog: stage writer made no progress for ",
        i,
        Duration::from_secs(300),
    )?;
    let line = vm.line(i);
    let reset = t.elapsed();
    vm.wait_for("flowwarden: ready", i, ready)?;
    ensure!(vm.flows()? == sent, "flows changed across the watchdog reset");
    Ok(format!(
        "watchdog: writer hung, petting stopped after {:.0} s, box reset and back after {:.0} s (driver {})",
        stopped.as_secs_f64(),
        reset.as_secs_f64(),
        if line.contains("the driver confirms") {
            "confirms the reset"
        } else {
            "does not report it"
        }
    ))
}
