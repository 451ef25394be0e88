//! `cargo xtask qemu-test --board NAME`: boots the board's image under QEMU
//! (TCG) exactly as the contract line says, plus a monitor socket, and checks
//! the appliance end to end:
//!
//! 1. boot to the `flowwarden: ready` line (DHCP from QEMU's user network);
//! 2. flowgen sends IPFIX to the forwarded collector port; the guest's own
//!    `query`, run on the serial console, counts every record;
//! 3. `reboot` on the console: flows and templates are still there;
//! 4. hard power-off (kill -9 QEMU) while a second stream is being ingested:
//!    on the next boot the store opens and holds at least every flow the guest
//!    had reported committed before the cut;
//! 5. the power button (`system_powerdown`): clean shutdown, data unmounted;
//! 6. the data partition copied out of the image (debugfs, no mount) is read by
//!    the host's `flowwarden query --data-dir`: same flows;
//! 7. the disk image grown by 256 MiB (as when written to a larger disk): the data
//!    partition is grown to the end (GPT edited, one reboot) and resize2fs grows the
//!    file system; flows intact;
//! 8. data partition damage: a wiped primary superblock is repaired from a backup
//!    (flows intact); a blank partition is formatted on first boot; a partition with
//!    neither is not formatted: PID 1 reports the fatal error and reboots after
//!    `panic=10` (the next boot starts PID 1 again).
//!
//! Boot-to-ready times, image and binary sizes go to target/qemu-test/NAME/report.md.

use crate::board::Board;
use crate::run;
use anyhow::{Context, Result, bail, ensure};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub(crate) struct Vm {
    /// Host ports forwarded to the guest's page (443) and redirect (80).
    web: crate::webcheck::Ports,
    child: Child,
    pub(crate) stdin: ChildStdin,
    lines: Arc<Mutex<Vec<String>>>,
    started: Instant,
    monitor: PathBuf,
}

impl Vm {
    pub(crate) fn start(board: &Board, disk: &Path, udp_port: u16, dir: &Path, boot_no: u32) -> Result<Vm> {
        let q = board.qemu.as_ref().context("board has no [qemu] table")?;
        let monitor = dir.join(format!("monitor-{boot_no}.sock"));
        let web = crate::webcheck::Ports {
            https: free_tcp_port()?,
            http: free_tcp_port()?,
        };
        let _ = std::fs::remove_file(&monitor);
        let mut cmd = Command::new(&q.command[0]);
        cmd.args(&q.command[1..])
            .args(["-bios", &q.firmware, "-nographic"])
            .arg("-drive")
            .arg(format!("file={},format=raw,if=virtio", disk.display()))
            .arg("-netdev")
            .arg(format!(
                "user,id=n0,hostfwd=udp:127.0.0.1:{udp_port}-:2055,hostfwd=tcp:127.0.0.1:{}-:443,hostfwd=tcp:127.0.0.1:{}-:80",
                web.https, web.http
            ))
            .args(["-device", "virtio-net-pci,netdev=n0"])
            .arg("-monitor")
            .arg(format!("unix:{},server=on,wait=off", monitor.display()))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        eprintln!("xtask: boot {boot_no}: {cmd:?}");
        let mut child = cmd.spawn().with_context(|| format!("cannot start {}", q.command[0]))?;
        let stdin = child.stdin.take().context("qemu stdin")?;
        let mut stdout = child.stdout.take().context("qemu stdout")?;
        let lines = Arc::new(Mutex::new(Vec::new()));
        let sink = lines.clone();
        let mut log = std::fs::File::create(dir.join(format!("serial-{boot_no}.log")))?;
        std::thread::spawn(move || {
            let mut cur = Vec::new();
            let mut buf = [0u8; 4096];
            while let Ok(n) = stdout.read(&mut buf) {
                if n == 0 {
                    break;
                }
                let _ = log.write_all(&buf[..n]);
                for &b in &buf[..n] {
                    if b == b'\n' {
                        let s = String::from_utf8_lossy(&cur).trim_end_matches('\r').to_string();
                        if let Ok(mut l) = sink.lock() {
                            l.push(s);
                        }
                        cur.clear();
                    } else {
                        cur.push(b);
                    }
                }
            }
        });
        Ok(Vm {
            web,
            child,
            stdin,
            lines,
            started: Instant::now(),
            monitor,
        })
    }

    /// Console line `i` (empty if there is none).
    pub(crate) fn line(&self, i: usize) -> String {
        self.lines.lock().ok().and_then(|l| l.get(i).cloned()).unwrap_or_default()
    }

    pub(crate) fn len(&self) -> usize {
        self.lines.lock().map(|l| l.len()).unwrap_or(0)
    }

    /// Index of the first line at or after `from` containing `pat`.
    pub(crate) fn wait_for(&mut self, pat: &str, from: usize, timeout: Duration) -> Result<usize> {
        let t0 = Instant::now();
        loop {
            if let Ok(l) = self.lines.lock()
                && let Some(i) = l.iter().skip(from).position(|s| s.contains(pat))
            {
                return Ok(from + i);
            }
            if let Ok(Some(st)) = self.child.try_wait() {
                bail!("QEMU exited ({st}) before the console printed {pat:?}");
            }
            if t0.elapsed() > timeout {
                let tail: Vec<String> = self
                    .lines
                    .lock()
                    .map(|l| l.iter().rev().take(15).rev().cloned().collect())
                    .unwrap_or_default();
                bail!(
                    "no {pat:?} on the serial console within {} s; last lines:\n{}",
                    timeout.as_secs(),
                    tail.join("\n")
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Runs a console command; returns its output lines (exit 0 required).
    pub(crate) fn console(&mut self, cmd: &str, timeout: Duration) -> Result<Vec<String>> {
        let from = self.len();
        writeln!(self.stdin, "{cmd}")?;
        self.stdin.flush()?;
        let end = self.wait_for("flowwarden-console: done (exit ", from, timeout)?;
        let lines: Vec<String> = self.lines.lock().map(|l| l[from..=end].to_vec()).unwrap_or_default();
        let last = lines.last().cloned().unwrap_or_default();
        ensure!(last.contains("(exit 0)"), "console {cmd:?} failed: {}", lines.join("\n"));
        Ok(lines[..lines.len() - 1].iter().filter(|l| !l.contains(cmd)).cloned().collect())
    }

    /// Runs a console command that asks for a password twice; answers each
    /// prompt once it is shown (echo is off only then). Returns the output lines.
    fn console_password(&mut self, cmd: &str, password: &str, timeout: Duration) -> Result<Vec<String>> {
        let from = self.len();
        writeln!(self.stdin, "{cmd}")?;
        self.stdin.flush()?;
        let first = self.wait_for("password (not shown):", from, timeout)?;
        writeln!(self.stdin, "{password}")?;
        self.stdin.flush()?;
        self.wait_for("the same password again:", first, timeout)?;
        writeln!(self.stdin, "{password}")?;
        self.stdin.flush()?;
        let end = self.wait_for("flowwarden-console: done (exit ", from, timeout)?;
        let lines: Vec<String> = self.lines.lock().map(|l| l[from..=end].to_vec()).unwrap_or_default();
        ensure!(
            lines.last().is_some_and(|l| l.contains("(exit 0)")),
            "console {cmd:?} failed: {}",
            lines.join("\n")
        );
        ensure!(
            !lines.iter().any(|l| l.contains(password)),
            "the console echoed the password: {}",
            lines.join("\n")
        );
        Ok(lines)
    }

    /// Total stored flows according to the guest's own query.
    pub(crate) fn flows(&mut self) -> Result<u64> {
        let out = self.console("query --series 1h --format csv", Duration::from_secs(120))?;
        Ok(sum_series(&out))
    }

    fn monitor(&self, cmd: &str) -> Result<()> {
        let mut s = std::os::unix::net::UnixStream::connect(&self.monitor).with_context(|| format!("{}", self.monitor.display()))?;
        s.write_all(format!("{cmd}\n").as_bytes())?;
        std::thread::sleep(Duration::from_millis(500));
        Ok(())
    }

    /// `poweroff` on the console; waits for the clean unmount and QEMU's exit.
    pub(crate) fn poweroff(mut self) -> Result<()> {
        let from = self.len();
        writeln!(self.stdin, "poweroff")?;
        self.stdin.flush()?;
        self.wait_for("flowwarden-init: data partition unmounted cleanly", from, Duration::from_secs(60))?;
        self.wait_exit(Duration::from_secs(60))
    }

    fn wait_exit(&mut self, timeout: Duration) -> Result<()> {
        let t0 = Instant::now();
        while t0.elapsed() < timeout {
            if self.child.try_wait()?.is_some() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        let _ = self.child.kill();
        bail!("QEMU still running {} s after power-off", timeout.as_secs())
    }

    pub(crate) fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// chronyd serving NTP on 127.0.0.1:1123 (QEMU's user network maps the guest's
/// 10.0.2.2 to the host's loopback); it never touches the host clock (-x).
struct Chrony(Child);

impl Chrony {
    fn start(dir: &Path) -> Result<Chrony> {
        let conf = dir.join("chrony.conf");
        std::fs::write(
            &conf,
            format!(
                "port 1123\nbindaddress 127.0.0.1\nallow 127.0.0.1\nlocal stratum 8\ncmdport 0\npidfile {0}/chronyd.pid\ndriftfile {0}/chrony.drift\n",
                dir.display()
            ),
        )?;
        let child = Command::new("chronyd")
            .args(["-x", "-d", "-u", "root", "-f"])
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("chronyd.log"))?)
            .spawn()
            .context("chronyd")?;
        std::thread::sleep(Duration::from_millis(500));
        Ok(Chrony(child))
    }
}

impl Drop for Chrony {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Sums the `flows` column of `query --series ... --format csv` output lines.
/// The management network from the page: a static address applied live on
/// trial and kept; then a VLAN (which QEMU's user network does not carry, so
/// the page becomes unreachable) that nobody can keep, and PID 1 goes back by
/// itself, in the file too. The kept static settings stay for the reboot.
fn management_network(vm: &mut Vm, dir: &Path) -> Result<()> {
    use crate::webcheck::{apply_settings, keep_network, network_status};
    let stat = [
        ("section", "management"),
        ("m_mode", "static"),
        ("m_interface", "eth0"),
        ("m_address", "10.0.2.15/24"),
        ("m_gateway", "10.0.2.2"),
        ("m_dns", "10.0.2.3"),
        ("m_confirm", "60s"),
    ];
    let from = vm.len();
    let applied = apply_settings(dir, vm.web, &stat)?;
    ensure!(
        applied.contains("management network changing in 2 s to eth0 static 10.0.2.15/24 via 10.0.2.2"),
        "applying a static address said: {applied}"
    );
    vm.wait_for(
        "flowwarden-init: network: eth0 static 10.0.2.15/24: ok",
        from,
        Duration::from_secs(30),
    )?;
    let n = network_status(dir, vm.web)?;
    ensure!(
        n["mode"] == "static" && n["trial"]["confirm_secs"] == 60 && n["source"] == "site",
        "after applying static: {n}"
    );
    let kept = keep_network(dir, vm.web)?;
    ensure!(kept.contains("kept eth0 static 10.0.2.15/24"), "keep said: {kept}");
    let n = network_status(dir, vm.web)?;
    ensure!(n["trial"].is_null(), "still on trial after keep: {n}");

    // A VLAN nobody can reach: back by itself after 30 s.
    let mut vlan = stat.to_vec();
    vlan.push(("m_vlan", "20"));
    vlan.retain(|(k, _)| *k != "m_confirm");
    vlan.push(("m_confirm", "30s"));
    let from = vm.len();
    let applied = apply_settings(dir, vm.web, &vlan)?;
    ensure!(
        applied.contains("to eth0 VLAN 20 static 10.0.2.15/24"),
        "applying a VLAN said: {applied}"
    );
    vm.wait_for(
        "flowwarden-init: network: eth0.20 static 10.0.2.15/24: ok",
        from,
        Duration::from_secs(30),
    )?;
    let t = Instant::now();
    vm.wait_for(
        "NOT kept within 30 s: back to eth0 static 10.0.2.15/24 via 10.0.2.2, dns 10.0.2.3",
        from,
        Duration::from_secs(120),
    )?;
    vm.wait_for(
        "flowwarden-init: network: eth0 static 10.0.2.15/24: ok",
        from,
        Duration::from_secs(30),
    )?;
    // PID 1 had the appliance reload the file it put back; the table in force is unchanged for PID 1.
    vm.wait_for(
        "flowwarden: configuration reloaded; the management network settings are unchanged",
        from,
        Duration::from_secs(30),
    )?;
    let n = network_status(dir, vm.web)?;
    ensure!(
        n["vlan"].is_null() && n["address"] == "10.0.2.15/24" && n["trial"].is_null(),
        "after going back: {n}"
    );
    ensure!(
        n["last_change"].as_str().is_some_and(|c| c.contains("NOT kept within 30 s")),
        "the page does not say it went back: {n}"
    );
    eprintln!(
        "xtask: management network: static applied and kept; an unreachable VLAN went back by itself {:.1} s after the wait began",
        t.elapsed().as_secs_f64()
    );
    Ok(())
}

pub fn sum_series(lines: &[String]) -> u64 {
    lines
        .iter()
        .filter(|l| l.len() > 20 && l.as_bytes()[0].is_ascii_digit())
        .filter_map(|l| l.split(',').nth(1)?.trim().parse::<u64>().ok())
        .sum()
}

/// Overwrites `bytes` at `offset` of the disk image (the guest is not running).
fn wipe(disk: &Path, offset: u64, bytes: &[u8]) -> Result<()> {
    use std::io::Seek;
    let mut f = std::fs::OpenOptions::new().write(true).open(disk)?;
    f.seek(std::io::SeekFrom::Start(offset))?;
    f.write_all(bytes)?;
    f.sync_all()?;
    Ok(())
}

fn free_tcp_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

pub(crate) fn free_udp_port() -> Result<u16> {
    Ok(std::net::UdpSocket::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// flowgen sending IPFIX from `source_port` (0: any); `extra` adds flags.
pub(crate) fn flowgen(root: &Path, port: u16, records: u64, rate: u64, seed: u64, source_port: u16, extra: &[&str]) -> Result<Child> {
    let bin = root.join("target/release/flowgen");
    Command::new(bin)
        .args(["--hosts", "40", "--duration", "2h", "--version", "ipfix", "--seed"])
        .arg(seed.to_string())
        .arg("--source-port")
        .arg(source_port.to_string())
        .args(extra)
        .arg("--records")
        .arg(records.to_string())
        .arg("--udp")
        .arg(format!("127.0.0.1:{port}"))
        .arg("--rate")
        .arg(rate.to_string())
        .stdout(Stdio::piped())
        .spawn()
        .context("flowgen")
}

pub(crate) fn finish_flowgen(mut c: Child) -> Result<String> {
    let st = c.wait()?;
    let mut out = String::new();
    if let Some(mut o) = c.stdout.take() {
        o.read_to_string(&mut out)?;
    }
    ensure!(st.success(), "flowgen failed: {out}");
    Ok(out.trim().to_string())
}

/// Start and length in bytes of the GPT partition named `name`.
pub(crate) fn partition(img: &Path, name: &str) -> Result<(u64, u64)> {
    let o = Command::new("sfdisk").arg("--dump").arg(img).output().context("sfdisk --dump")?;
    let text = String::from_utf8_lossy(&o.stdout);
    for line in text.lines() {
        if line.contains(&format!("name=\"{name}\"")) {
            let field = |k: &str| -> Option<u64> {
                line.split(',').find_map(|f| {
                    f.trim()
                        .split_once('=')
                        .filter(|(a, _)| a.trim().ends_with(k))
                        .and_then(|(_, v)| v.trim().parse().ok())
                })
            };
            let (start, size) = (field("start").context("start")?, field("size").context("size")?);
            return Ok((start * 512, size * 512));
        }
    }
    bail!("{}: no partition named {name:?}:\n{text}", img.display())
}

pub fn qemu_test(root: &Path, board_name: &str, only_updates: bool) -> Result<()> {
    let t_all = Instant::now();
    let board = Board::load(root, board_name)?;
    let q = board
        .qemu
        .as_ref()
        .with_context(|| format!("board {board_name} is not a QEMU board"))?;
    let pkgs: Vec<(&str, &str)> = q
        .packages
        .iter()
        .map(|p| {
            (
                p.as_str(),
                if p.starts_with("qemu-system") {
                    q.command[0].as_str()
                } else {
                    q.firmware.as_str()
                },
            )
        })
        .collect();
    crate::apt_ensure(&pkgs, false)?;
    crate::apt_ensure(&[("chrony", "chronyd")], false)?;
    if only_updates {
        run(crate::cargo().args(["build", "--release", "--package", "flowgen"]))?;
        let dir = root.join("target/qemu-test").join(board_name);
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)?;
        let text = crate::qemu_update::update_test(root, &board, &dir, board.arch == "x86_64")?;
        std::fs::write(dir.join("report.md"), format!("{text}\n"))?;
        return Ok(());
    }
    let img = crate::image::image(root, board_name, &[])?;
    let host_bin = crate::build::build(root, "x86_64")?;
    run(crate::cargo().args(["build", "--release", "--package", "flowgen"]))?;
    let dir = root.join("target/qemu-test").join(board_name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let disk = dir.join("disk.img");
    run(Command::new("cp").arg("--sparse=always").arg(&img).arg(&disk))?;
    let ready_timeout = Duration::from_secs(q.ready_timeout_secs);
    let mut report = Vec::new();

    // 1. First boot.
    let port = free_udp_port()?;
    let mut vm = Vm::start(&board, &disk, port, &dir, 1)?;
    vm.wait_for("flowwarden: ready", 0, ready_timeout)?;
    let boot1 = vm.started.elapsed().as_secs_f64();
    eprintln!("xtask: {board_name}: ready {boot1:.1} s after QEMU started");
    vm.wait_for(
        "flowwarden-init: network: eth0 dhcp 10.0.2.15/24 via 10.0.2.2",
        0,
        Duration::from_secs(1),
    )?;
    vm.wait_for("flowwarden-init: time: ", 0, Duration::from_secs(1))?;
    vm.wait_for("data partition /dev/vda4 mounted on /data", 0, Duration::from_secs(1))?;
    // The release file names the kernel xtask chose (the pin, or the newest of its series).
    vm.wait_for("flowwarden-init: release: kernel linux-image-", 0, Duration::from_secs(1))?;

    // 2. Flows in, read back through the guest.
    let sent1 = 6000u64;
    // A fixed source port: after the reboot the same exporter sends data sets only.
    let exporter_port = free_udp_port()?;
    let out = finish_flowgen(flowgen(root, port, sent1, 3000, 1, exporter_port, &[])?)?;
    eprintln!("xtask: flowgen: {out}");
    let mut stored1 = 0;
    for _ in 0..20 {
        stored1 = vm.flows()?;
        if stored1 >= sent1 {
            break;
        }
        std::thread::sleep(Duration::from_secs(1));
    }
    ensure!(stored1 == sent1, "guest stored {stored1} flows of {sent1} sent");
    let status = vm.console("status", Duration::from_secs(30))?;
    eprintln!("xtask: status:\n{}", status.join("\n"));

    // The page, from the host over the forwarded ports: the console's listener
    // line and one-time setup code, then what a technician's laptop does.
    let i = vm.wait_for(
        "flowwarden: web https://0.0.0.0:443/ certificate sha256:",
        0,
        Duration::from_secs(1),
    )?;
    let fingerprint = vm.line(i).split("certificate ").nth(1).unwrap_or_default().trim().to_string();
    let i = vm.wait_for("flowwarden: web setup code ", 0, Duration::from_secs(1))?;
    let code = vm.line(i).split("setup code ").nth(1).unwrap_or_default().trim().to_string();
    vm.wait_for("flowwarden: web http://0.0.0.0:80/ redirects to https", 0, Duration::from_secs(1))?;
    let verdict = crate::webcheck::check(&dir, vm.web, &fingerprint, &code, "field tech pass 42")?;
    eprintln!("xtask: {board_name}: the page over HTTPS: verdict {verdict}");
    management_network(&mut vm, &dir)?;

    // 3. Reboot from the console: flows and templates survive. An NTP server (chronyd)
    //    now answers on the host: the next boot must sync from it through 10.0.2.2.
    vm.wait_for(
        "flowwarden-init: time: NOT synced (10.0.2.2:1123: no reply",
        0,
        Duration::from_secs(1),
    )?;
    let _chrony = Chrony::start(&dir)?;
    let from = vm.len();
    writeln!(vm.stdin, "reboot")?;
    vm.stdin.flush()?;
    vm.wait_for("flowwarden-init: data partition unmounted cleanly", from, Duration::from_secs(60))?;
    let t_reboot = Instant::now();
    vm.wait_for("flowwarden: ready", from, ready_timeout)?;
    let reboot_secs = t_reboot.elapsed().as_secs_f64();
    vm.wait_for(
        "flowwarden-init: time: synced from 10.0.2.2:1123 (stratum ",
        from,
        Duration::from_secs(1),
    )?;
    // The kept site settings came up at boot (static, not the board's DHCP).
    vm.wait_for(
        "flowwarden-init: network: eth0 static 10.0.2.15/24: ok",
        from,
        Duration::from_secs(1),
    )?;
    let after_reboot = vm.flows()?;
    ensure!(after_reboot == sent1, "after reboot {after_reboot} flows, expected {sent1}");
    // Templates survived: the same exporter's data-only stream decodes in full.
    let data_only = 3000u64;
    let out = finish_flowgen(flowgen(root, port, data_only, 3000, 5, exporter_port, &["--template-every", "0"])?)?;
    eprintln!("xtask: flowgen (data sets only, no templates): {out}");
    let mut after_data_only = 0;
    for _ in 0..20 {
        after_data_only = vm.flows()?;
        if after_data_only >= sent1 + data_only {
            break;
        }
        std::thread::sleep(Duration::from_secs(1));
    }
    let exporters = vm.console("exporters --format json", Duration::from_secs(60))?.join("\n");
    ensure!(
        after_data_only == sent1 + data_only,
        "after reboot, {} of {data_only} template-less records decoded; exporters: {exporters}",
        after_data_only - sent1
    );
    let sent1 = sent1 + data_only;

    // Password recovery on the console: `user set` reaches the running appliance
    // over its control socket and keeps every flow.
    let out = vm
        .console_password("user set tech --role admin", "recovery pass 0815", Duration::from_secs(60))?
        .join("\n");
    ensure!(
        out.contains("flowwarden: user tech set (admin) in the running appliance"),
        "console user set: {out}"
    );
    let users = vm.console("user list", Duration::from_secs(30))?.join("\n");
    ensure!(users.contains("tech") && users.contains("admin"), "console user list: {users}");
    ensure!(vm.flows()? == sent1, "flows changed across the console's user set");
    eprintln!("xtask: {board_name}: console user set went through the control socket");

    // 4. Hard power-off while ingesting.
    let sent2 = 400_000u64;
    let gen2 = flowgen(root, port, sent2, 8000, 2, 0, &[])?;
    std::thread::sleep(Duration::from_secs(12));
    let committed = vm.flows()?;
    vm.kill();
    let mut gen2 = gen2;
    let _ = gen2.kill();
    let _ = gen2.wait();
    ensure!(
        committed > sent1,
        "nothing of the second stream was committed before the cut ({committed})"
    );
    eprintln!("xtask: {board_name}: killed QEMU with {committed} flows reported committed");
    let port = free_udp_port()?;
    let mut vm = Vm::start(&board, &disk, port, &dir, 3)?;
    vm.wait_for("flowwarden: ready", 0, ready_timeout)?;
    let boot3 = vm.started.elapsed().as_secs_f64();
    let after_cut = vm.flows()?;
    ensure!(
        after_cut >= committed && after_cut <= sent1 + sent2,
        "after the power cut {after_cut} flows; {committed} were committed before it"
    );

    // 5. Power button.
    let from = vm.len();
    vm.monitor("system_powerdown")?;
    vm.wait_for("flowwarden-init: power button pressed", from, Duration::from_secs(60))?;
    vm.wait_for("flowwarden-init: data partition unmounted cleanly", from, Duration::from_secs(60))?;
    vm.wait_exit(Duration::from_secs(60))?;

    // 6. The host reads the guest's data partition.
    let (start, len) = partition(&disk, "data")?;
    let part = dir.join("data.fs");
    {
        let mut f = std::fs::File::open(&disk)?;
        use std::io::Seek;
        f.seek(std::io::SeekFrom::Start(start))?;
        let mut out = std::fs::File::create(&part)?;
        std::io::copy(&mut f.take(len), &mut out)?;
    }
    let copy = dir.join("data-copy");
    std::fs::create_dir_all(&copy)?;
    run(Command::new("debugfs")
        .arg("-R")
        .arg(format!("rdump / {}", copy.display()))
        .arg(&part)
        .stderr(Stdio::null()))?;
    let o = Command::new(&host_bin)
        .args(["query", "--data-dir"])
        .arg(&copy)
        .args(["--series", "1h", "--format", "csv"])
        .output()?;
    ensure!(o.status.success(), "host query failed: {}", String::from_utf8_lossy(&o.stderr));
    let host_lines: Vec<String> = String::from_utf8_lossy(&o.stdout).lines().map(String::from).collect();
    let on_host = sum_series(&host_lines);
    ensure!(
        on_host == after_cut,
        "host copy has {on_host} flows, the guest reported {after_cut}"
    );

    // 7. The image written to a larger disk: the data partition grows to the end of
    //    it (one extra reboot), then its file system, and every flow is still there.
    std::fs::OpenOptions::new()
        .write(true)
        .open(&disk)?
        .set_len(std::fs::metadata(&disk)?.len() + (256 << 20))?;
    let mut vm = Vm::start(&board, &disk, free_udp_port()?, &dir, 7)?;
    vm.wait_for("grew the data partition /dev/vda4 from 512 MiB to 768 MiB", 0, ready_timeout)?;
    let first = vm.wait_for("starting as PID 1", 0, ready_timeout)?;
    let again = vm.wait_for("starting as PID 1", first + 1, ready_timeout)?;
    vm.wait_for(
        "resized the data file system on /dev/vda4 from 512 MiB to 768 MiB",
        again,
        ready_timeout,
    )?;
    vm.wait_for("flowwarden: ready", again, ready_timeout)?;
    let grown = vm.flows()?;
    ensure!(
        grown == after_cut,
        "after growing the data partition {grown} flows, expected {after_cut}"
    );
    vm.poweroff()?;
    let (start, len) = partition(&disk, "data")?;

    // 8. Damaged, blank and foreign data partitions.
    //  a. primary superblock wiped: e2fsck repairs it from a backup, every flow is there;
    wipe(&disk, start + 1024, &[0u8; 1024])?;
    let mut vm = Vm::start(&board, &disk, free_udp_port()?, &dir, 4)?;
    vm.wait_for("repaired from the backup at block 32768", 0, ready_timeout)?;
    vm.wait_for("flowwarden: ready", 0, ready_timeout)?;
    let repaired = vm.flows()?;
    ensure!(
        repaired == after_cut,
        "after the superblock repair {repaired} flows, expected {after_cut}"
    );
    vm.poweroff()?;
    //  b. blank (never written, as on a new disk): the first boot formats it;
    run(Command::new("fallocate")
        .args(["--punch-hole", "--offset", &start.to_string(), "--length", &len.to_string()])
        .arg(&disk))?;
    let mut vm = Vm::start(&board, &disk, free_udp_port()?, &dir, 5)?;
    vm.wait_for("is blank: formatting it as ext4 (first boot)", 0, ready_timeout)?;
    vm.wait_for("flowwarden: ready", 0, ready_timeout)?;
    ensure!(vm.flows()? == 0, "a freshly formatted data partition holds flows");
    vm.poweroff()?;
    //  c. something else (no superblock anywhere, not blank): PID 1 refuses to format it,
    //     says why, syncs and reboots after the kernel's panic=N (it never just exits).
    run(Command::new("fallocate")
        .args(["--punch-hole", "--offset", &start.to_string(), "--length", &len.to_string()])
        .arg(&disk))?;
    wipe(&disk, start, &vec![0xa5u8; 1 << 20])?;
    let mut vm = Vm::start(&board, &disk, free_udp_port()?, &dir, 6)?;
    let fatal = vm.wait_for("flowwarden-init: FATAL: data partition", 0, ready_timeout)?;
    vm.wait_for("not formatting it", fatal, Duration::from_secs(1))?;
    vm.wait_for("rebooting in 10 s (kernel command line panic=10)", fatal, Duration::from_secs(10))?;
    vm.wait_for("starting as PID 1", fatal, ready_timeout)?;
    vm.kill();

    // 9. A/B updates: the full set on x86_64, update and fallback on the others.
    let updates = crate::qemu_update::update_test(root, &board, &dir, board.arch == "x86_64")?;

    let img_meta = std::fs::metadata(&img)?;
    let allocated = {
        use std::os::unix::fs::MetadataExt;
        img_meta.blocks() * 512
    };
    let bin = if board.arch == "aarch64" {
        root.join("target/cross/aarch64-unknown-linux-gnu/firmware/flowwarden")
    } else {
        host_bin.clone()
    };
    let bin_size = std::fs::metadata(&bin)?.len();
    report.push(format!(
        "| {board_name} | {boot1:.1} s | {reboot_secs:.1} s | {boot3:.1} s | {:.1} MiB ({:.1} MiB allocated) | {:.1} MiB | {sent1} / {sent1} | {committed} → {after_cut} | {:.0} s |",
        img_meta.len() as f64 / 1048576.0,
        allocated as f64 / 1048576.0,
        bin_size as f64 / 1048576.0,
        t_all.elapsed().as_secs_f64()
    ));
    let text = format!(
        "| board | boot → ready | reboot → ready | boot after power cut → ready | image | static binary | flows sent / read back | committed before cut → after boot | whole test |\n|---|---|---|---|---|---|---|---|---|\n{}\n",
        report.join("\n")
    );
    let text = format!("{text}\n{updates}\n");
    std::fs::write(dir.join("report.md"), &text)?;
    eprintln!("xtask: qemu-test {board_name} passed\n{text}");
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn sums_series_csv() {
        let l: Vec<String> = [
            "query --series",
            "start,flows,packets,bytes",
            "2026-11-02T00:00:00.000Z,300,3155,3488311",
            "2026-11-02T01:00:00.000Z,7,1,1",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        assert_eq!(super::sum_series(&l), 307);
    }
}
