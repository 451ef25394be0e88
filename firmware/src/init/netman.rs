//! PID 1's management network (boot step 4 and after): brings up lo and the
//! management interface as the board file says with the site's `[management]`
//! table (the data partition's configuration file) laid over it — DHCPv4 with
//! renewals or a static address, optionally on an 802.1Q VLAN link, default
//! route, /etc/resolv.conf — and owns it from then on in one thread.
//!
//! Changed settings come in as `network apply` on PID 1's socket (the
//! appliance asks when a reload finds the table changed). They go on the wire
//! on trial: the table to go back to is written to `DATA/management.trial`
//! first, and unless `network keep` comes (the page's "Keep these settings",
//! reached over the new network) within `confirm_within`, the thread puts that
//! table back into the file, the previous network back on the wire, and asks
//! the appliance to reload. A restart during the trial goes back too (the
//! marker is found at boot). What is in force is written to
//! /run/flowwarden/network.json for the page.

use super::sysconf::{NetMode, SystemConfig};
use super::{Shared, dhcp, netlink, set};
use crate::management::{self, Management};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender};
use std::time::{Duration, Instant, SystemTime};

const NETWORK_JSON: &str = "/run/flowwarden/network.json";

/// A request to the network thread; the answer is one line, `ok …` or `error …`.
enum Cmd {
    Apply(SyncSender<String>),
    /// When it was asked: a keep asked before the new settings went on the
    /// wire came over the old network and proves nothing.
    Keep(SyncSender<String>, Instant),
}

/// The supervisor's way to the network thread.
#[derive(Clone)]
pub struct Handle(SyncSender<Cmd>);

impl Handle {
    /// Handles one request line of PID 1's socket (blocking: up to a DHCP exchange).
    pub fn request(&self, line: &str) -> String {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        let cmd = match line.trim() {
            "network apply" => Cmd::Apply(tx),
            "network keep" => Cmd::Keep(tx, Instant::now()),
            other => return format!("error unknown request {other:?} (expected \"network apply\" or \"network keep\")"),
        };
        if self.0.send(cmd).is_err() {
            return "error the network thread is gone".into();
        }
        rx.recv_timeout(Duration::from_secs(80))
            .unwrap_or_else(|_| "error the network thread did not answer within 80 s".into())
    }
}

/// The interface addresses go on (the VLAN link when there is one).
#[derive(Debug, Clone)]
struct Link {
    name: String,
    ifindex: u32,
    mac: [u8; 6],
}

/// What we put on the wire, to take away before other settings go on.
#[derive(Debug, Default)]
struct Applied {
    vlan: Option<u32>,
    addr: Option<(u32, Ipv4Addr, u8)>,
    route: Option<(u32, Ipv4Addr)>,
}

struct Trial {
    /// When the previous settings came off the wire.
    changed: Instant,
    until: Instant,
    until_wall: SystemTime,
    confirm: Duration,
    /// The table to go back to (None: none, the board's defaults).
    previous: Option<Management>,
    tried: String,
}

impl Trial {
    /// Why a keep asked at `asked` does not count: it came before these
    /// settings were on the wire, so over the previous network.
    fn too_early(&self, asked: Instant) -> Option<String> {
        (asked < self.changed).then(|| {
            format!(
                "error not kept: asked before {} was on the wire (over the previous network); ask again once the \
                 page answers over the new one",
                self.tried
            )
        })
    }
}

struct Netman {
    nl: netlink::Netlink,
    board: SystemConfig,
    config: PathBuf,
    marker: PathBuf,
    status: Shared,
    appliance: Arc<AtomicI32>,
    /// The site's table in force.
    site: Option<Management>,
    link: Option<Link>,
    applied: Applied,
    /// The DHCP lease in force and when to renew it.
    lease: Option<dhcp::Lease>,
    renew_at: Option<Instant>,
    trial: Option<Trial>,
    /// The last change and how it ended, for the page.
    last_change: Option<String>,
    /// What network.json says about the interface.
    wire: serde_json::Value,
}

/// Brings the network up at boot; returns the thread's handle (None: no
/// netlink, nothing to manage), the settings in force and the NTP servers DHCP offered.
pub(super) fn start(
    board: &SystemConfig,
    data_dir: &Path,
    status: &Shared,
    appliance: Arc<AtomicI32>,
) -> (Option<Handle>, SystemConfig, Vec<Ipv4Addr>) {
    let config = data_dir.join("flowwarden.toml");
    let marker = data_dir.join(management::TRIAL_MARKER);
    let last_change = restore_unconfirmed(&config, &marker);
    let site = read_site(&config).unwrap_or_else(|e| {
        say!("network: {e}; using the board's network settings");
        None
    });
    let effective = board.with_management(site.as_ref());
    let nl = match netlink::Netlink::open() {
        Ok(n) => n,
        Err(e) => {
            say!("network: {e}");
            set(status, |s| s.network = format!("down: {e}"));
            return (None, effective, Vec::new());
        }
    };
    let mut n = Netman {
        nl,
        board: board.clone(),
        config,
        marker,
        status: status.clone(),
        appliance,
        site,
        link: None,
        applied: Applied::default(),
        lease: None,
        renew_at: None,
        trial: None,
        last_change,
        wire: serde_json::Value::Null,
    };
    let seq = n.nl.next_seq();
    if let Err(e) = n.nl.request("lo up", seq, &netlink::link_up(seq, 1)) {
        say!("{e}");
    }
    let ntp = n.bring_up(&effective, Duration::from_secs(effective.network.dhcp_timeout_secs));
    let (tx, rx) = std::sync::mpsc::sync_channel(4);
    let spawned = std::thread::Builder::new().name("network".into()).spawn(move || n.run(rx));
    if let Err(e) = spawned {
        say!("network: cannot start its thread: {e}; no renewals, no changes");
        return (None, effective, ntp);
    }
    (Some(Handle(tx)), effective, ntp)
}

/// The site's table from the configuration file (None: no file or no table).
fn read_site(config: &Path) -> Result<Option<Management>, String> {
    match std::fs::read_to_string(config) {
        Ok(text) => management::from_text(&text).map_err(|e| format!("{}: {e}", config.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(format!("{}: {e}", config.display())),
    }
}

/// The trial marker's table (an empty marker: no table).
fn read_marker(marker: &Path) -> Result<Option<Management>, String> {
    let text = std::fs::read_to_string(marker).map_err(|e| format!("{}: {e}", marker.display()))?;
    management::from_text(&text).map_err(|e| format!("{}: {e}", marker.display()))
}

/// Puts `previous` back as the file's `[management]` table (atomically, 0600).
fn put_back(config: &Path, previous: Option<&Management>) -> Result<(), String> {
    let text = match std::fs::read_to_string(config) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && previous.is_none() => return Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(format!("{}: {e}", config.display())),
    };
    let new = management::write_into(&text, previous).map_err(|e| format!("{}: {e}", config.display()))?;
    if new == text {
        return Ok(());
    }
    crate::fsutil::write_atomic(config, new.as_bytes(), 0o600).map_err(|e| e.to_string())
}

/// At boot: settings still on trial when the box went down were never kept;
/// the table before them goes back into the file. Returns what happened.
fn restore_unconfirmed(config: &Path, marker: &Path) -> Option<String> {
    if !marker.exists() {
        return None;
    }
    let outcome = read_marker(marker).and_then(|prev| put_back(config, prev.as_ref()));
    let line = match outcome {
        Ok(()) => {
            let _ = std::fs::remove_file(marker);
            "the management network settings on trial when the box restarted were never kept: the previous ones are back".to_string()
        }
        Err(e) => format!("the management network settings on trial were never kept, but going back failed: {e}"),
    };
    say!("network: {line}");
    Some(line)
}

/// One line for the console and the page.
fn describe(c: &SystemConfig) -> String {
    let n = &c.network;
    let on = match n.vlan {
        Some(v) => format!("{} VLAN {v}", n.interface),
        None => n.interface.clone(),
    };
    let mut s = match n.mode {
        NetMode::None => return "management interface disabled (mode none)".into(),
        NetMode::Dhcp => format!("{on} dhcp"),
        NetMode::Static => format!(
            "{on} static {}{}",
            n.address.as_deref().unwrap_or("?"),
            n.gateway.map(|g| format!(" via {g}")).unwrap_or_default()
        ),
    };
    if !n.dns.is_empty() {
        s.push_str(&format!(
            ", dns {}",
            n.dns.iter().map(|d| d.to_string()).collect::<Vec<_>>().join(" ")
        ));
    }
    if !c.time.ntp_servers.is_empty() {
        s.push_str(&format!(", ntp {}", c.time.ntp_servers.join(" ")));
    }
    s
}

fn unix_secs(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

impl Netman {
    fn run(mut self, rx: Receiver<Cmd>) {
        loop {
            let next = [self.renew_at, self.trial.as_ref().map(|t| t.until)].into_iter().flatten().min();
            let wait = next
                .map(|n| n.saturating_duration_since(Instant::now()))
                .unwrap_or(Duration::from_secs(3600));
            match rx.recv_timeout(wait) {
                Ok(Cmd::Apply(reply)) => self.apply_site(&reply),
                Ok(Cmd::Keep(reply, asked)) => {
                    let _ = reply.send(self.keep(asked));
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => std::thread::sleep(wait),
            }
            let now = Instant::now();
            if self.trial.as_ref().is_some_and(|t| t.until <= now) {
                self.roll_back();
            }
            if self.renew_at.is_some_and(|r| r <= now) {
                self.renew();
            }
        }
    }

    /// Takes away what we put on the wire (errors: already gone).
    fn tear_down(&mut self) {
        if let Some((ifindex, gw)) = self.applied.route.take() {
            let seq = self.nl.next_seq();
            let _ = self
                .nl
                .request("delete default route", seq, &netlink::del_default_route(seq, ifindex, gw));
        }
        if let Some((ifindex, a, l)) = self.applied.addr.take() {
            let seq = self.nl.next_seq();
            let _ = self.nl.request("delete address", seq, &netlink::del_addr(seq, ifindex, a, l));
        }
        if let Some(ifindex) = self.applied.vlan.take() {
            let seq = self.nl.next_seq();
            if let Err(e) = self.nl.request("delete VLAN link", seq, &netlink::del_link(seq, ifindex)) {
                say!("network: {e}");
            }
        }
        self.link = None;
        self.lease = None;
        self.renew_at = None;
    }

    /// Brings the interface up with `cfg`; returns NTP servers DHCP offered.
    fn bring_up(&mut self, cfg: &SystemConfig, dhcp_wait: Duration) -> Vec<Ipv4Addr> {
        let n = &cfg.network;
        if n.mode == NetMode::None {
            self.report(
                "management interface disabled (mode none)".into(),
                serde_json::json!({"mode": "none"}),
            );
            return Vec::new();
        }
        let Some((iface, ifindex, mac)) = find_iface(&n.interface, Duration::from_secs(10)) else {
            say!("network: interface {:?} not found", n.interface);
            self.report(
                format!("interface {:?} not found", n.interface),
                serde_json::json!({"mode": n.mode.as_str(), "error": format!("interface {:?} not found", n.interface)}),
            );
            return Vec::new();
        };
        let seq = self.nl.next_seq();
        if let Err(e) = self.nl.request(&format!("{iface} up"), seq, &netlink::link_up(seq, ifindex)) {
            say!("{e}");
        }
        let link = match n.vlan {
            None => Link { name: iface, ifindex, mac },
            Some(vid) => match self.vlan_link(&iface, ifindex, vid) {
                Ok(vl) => Link {
                    name: vl.0,
                    ifindex: vl.1,
                    mac,
                },
                Err(e) => {
                    say!("network: {e}");
                    self.report(e.clone(), serde_json::json!({"mode": n.mode.as_str(), "error": e}));
                    return Vec::new();
                }
            },
        };
        self.link = Some(link.clone());
        match n.mode {
            NetMode::Static => {
                let Some(Ok((addr, len))) = n.address.as_deref().map(management::parse_cidr4) else {
                    return Vec::new();
                };
                let applied = self.put_on(&link, addr, len, n.gateway, &n.dns);
                let line = format!("{} static {addr}/{len}: {applied}", link.name);
                say!("network: {line}");
                self.report(
                    line,
                    serde_json::json!({"interface": link.name, "mode": "static", "address": format!("{addr}/{len}"),
                        "gateway": n.gateway.map(|g| g.to_string()), "dns": n.dns.iter().map(|d| d.to_string()).collect::<Vec<_>>(),
                        "vlan": n.vlan}),
                );
                Vec::new()
            }
            NetMode::Dhcp => {
                let lease = dhcp::obtain(&link.name, link.mac, &self.board.hostname, dhcp_wait);
                let ntp = lease.as_ref().map(|l| l.ntp.clone()).unwrap_or_default();
                self.take_lease(lease, cfg);
                ntp
            }
            NetMode::None => Vec::new(),
        }
    }

    /// Makes (or finds) `IFACE.VID`; its name and ifindex.
    fn vlan_link(&mut self, iface: &str, parent: u32, vid: u16) -> Result<(String, u32), String> {
        let name = format!("{iface}.{vid}");
        if name.len() > 15 {
            return Err(format!("VLAN link {name}: longer than an interface name may be (15)"));
        }
        let seq = self.nl.next_seq();
        if let Err(e) = self
            .nl
            .request(&format!("VLAN link {name}"), seq, &netlink::new_vlan(seq, parent, &name, vid))
            && !Path::new("/sys/class/net").join(&name).exists()
        {
            return Err(format!("{e} (is the 8021q kernel module in the image?)"));
        }
        let (_, ifindex, _) = find_iface(&name, Duration::from_secs(2)).ok_or_else(|| format!("VLAN link {name} did not appear"))?;
        self.applied.vlan = Some(ifindex);
        let seq = self.nl.next_seq();
        if let Err(e) = self.nl.request(&format!("{name} up"), seq, &netlink::link_up(seq, ifindex)) {
            say!("{e}");
        }
        Ok((name, ifindex))
    }

    /// Address, default route and resolv.conf on `link`; "ok" or what failed.
    fn put_on(&mut self, link: &Link, addr: Ipv4Addr, len: u8, gw: Option<Ipv4Addr>, dns: &[Ipv4Addr]) -> String {
        let mut problems = Vec::new();
        if self.applied.addr.is_some_and(|(i, a, l)| (i, a, l) != (link.ifindex, addr, len))
            && let Some((i, a, l)) = self.applied.addr.take()
        {
            let seq = self.nl.next_seq();
            let _ = self.nl.request("delete old address", seq, &netlink::del_addr(seq, i, a, l));
        }
        let seq = self.nl.next_seq();
        match self.nl.request(
            &format!("address {addr}/{len} on {}", link.name),
            seq,
            &netlink::add_addr(seq, link.ifindex, addr, len),
        ) {
            Ok(()) => self.applied.addr = Some((link.ifindex, addr, len)),
            Err(e) => problems.push(e.to_string()),
        }
        if let Some(gw) = gw {
            let seq = self.nl.next_seq();
            match self.nl.request(
                &format!("default route via {gw}"),
                seq,
                &netlink::default_route(seq, link.ifindex, gw),
            ) {
                Ok(()) => self.applied.route = Some((link.ifindex, gw)),
                Err(e) => problems.push(e.to_string()),
            }
        }
        let resolv: String = dns.iter().map(|d| format!("nameserver {d}\n")).collect();
        if let Err(e) = std::fs::write("/etc/resolv.conf", resolv) {
            problems.push(format!("/etc/resolv.conf: {e}"));
        }
        if problems.is_empty() { "ok".into() } else { problems.join("; ") }
    }

    fn take_lease(&mut self, lease: Result<dhcp::Lease, dhcp::DhcpError>, cfg: &SystemConfig) {
        let Some(link) = self.link.clone() else { return };
        match lease {
            Ok(l) => {
                let dns: Vec<Ipv4Addr> = if cfg.network.dns.is_empty() {
                    l.dns.clone()
                } else {
                    cfg.network.dns.clone()
                };
                let applied = self.put_on(&link, l.address, l.prefix_len, l.router, &dns);
                let line = format!(
                    "{} dhcp {}/{} via {} from {} (lease {} s, dns {:?}): {applied}",
                    link.name,
                    l.address,
                    l.prefix_len,
                    l.router.map(|r| r.to_string()).unwrap_or_else(|| "-".into()),
                    l.server,
                    l.lease_secs,
                    dns
                );
                say!("network: {line}");
                self.report(
                    line,
                    serde_json::json!({"interface": link.name, "mode": "dhcp", "address": format!("{}/{}", l.address, l.prefix_len),
                        "gateway": l.router.map(|r| r.to_string()), "dns": dns.iter().map(|d| d.to_string()).collect::<Vec<_>>(),
                        "dhcp_server": l.server.to_string(), "lease_secs": l.lease_secs, "vlan": cfg.network.vlan}),
                );
                // Renew at half the lease time.
                self.renew_at = Some(Instant::now() + Duration::from_secs(u64::from(l.lease_secs / 2).max(30)));
                self.lease = Some(l);
            }
            Err(e) => {
                say!("network: {e}; retrying in the background");
                self.report(
                    format!("no address: {e}"),
                    serde_json::json!({"interface": link.name, "mode": "dhcp", "error": e.to_string(), "vlan": cfg.network.vlan}),
                );
                self.renew_at = Some(Instant::now() + Duration::from_secs(30));
            }
        }
    }

    fn effective(&self) -> SystemConfig {
        self.board.with_management(self.site.as_ref())
    }

    fn renew(&mut self) {
        let cfg = self.effective();
        let Some(link) = self.link.clone() else {
            self.renew_at = None;
            return;
        };
        let lease = dhcp::obtain(&link.name, link.mac, &self.board.hostname, Duration::from_secs(30));
        self.take_lease(lease, &cfg);
    }

    /// `network apply`: the file's table, on trial.
    fn apply_site(&mut self, reply: &SyncSender<String>) {
        let new = match read_site(&self.config) {
            Ok(n) => n,
            Err(e) => {
                let _ = reply.send(format!("error {e}"));
                return;
            }
        };
        if new == self.site {
            let _ = reply.send("ok the management network settings are unchanged".into());
            return;
        }
        let before = self.effective();
        let after = self.board.with_management(new.as_ref());
        if after.network == before.network {
            // Only the time servers: nothing that could cut the box off.
            self.site = new;
            let _ = reply.send(format!(
                "ok management network unchanged; time servers now {:?}",
                after.time.ntp_servers
            ));
            let from_dhcp = self.lease.as_ref().map(|l| l.ntp.clone()).unwrap_or_default();
            super::sync_time(&after, &from_dhcp, &self.status);
            self.publish();
            return;
        }
        let previous = match &self.trial {
            Some(t) => t.previous.clone(),
            None => self.site.clone(),
        };
        let marker_text = previous.as_ref().map(Management::to_toml).unwrap_or_default();
        if let Err(e) = crate::fsutil::write_atomic(&self.marker, marker_text.as_bytes(), 0o600) {
            let _ = reply.send(format!("error {e}; nothing changed"));
            return;
        }
        let confirm = new.as_ref().map(Management::confirm).unwrap_or(management::DEFAULT_CONFIRM);
        let tried = describe(&after);
        let _ = reply.send(format!(
            "ok management network changing in {} s to {tried}; unless these settings are kept within {} s (System page: \"Keep these settings\", reached over the new network) the previous ones ({}) come back",
            management::APPLY_DELAY.as_secs(),
            confirm.as_secs(),
            describe(&before)
        ));
        std::thread::sleep(management::APPLY_DELAY);
        say!("network: trying {tried} for {} s", confirm.as_secs());
        let changed = Instant::now();
        self.tear_down();
        self.site = new;
        self.trial = Some(Trial {
            changed,
            until: Instant::now() + confirm,
            until_wall: SystemTime::now() + confirm,
            confirm,
            previous,
            tried: tried.clone(),
        });
        self.last_change = Some(format!("trying {tried}"));
        let ntp = self.bring_up(&after, Duration::from_secs(after.network.dhcp_timeout_secs.min(30)));
        super::sync_time(&after, &ntp, &self.status);
        self.publish();
    }

    /// `network keep`: the settings on trial stay.
    fn keep(&mut self, asked: Instant) -> String {
        let Some(t) = self.trial.take() else {
            return "error nothing to keep: no management network settings are on trial".into();
        };
        if let Some(no) = t.too_early(asked) {
            self.trial = Some(t);
            return no;
        }
        if let Err(e) = std::fs::remove_file(&self.marker)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            self.trial = Some(t);
            return format!("error {}: {e}", self.marker.display());
        }
        let line = format!("kept {} at {}", t.tried, crate::timefmt::rfc3339_ms(crate::timefmt::now_ms()));
        say!("network: {line}");
        self.last_change = Some(line.clone());
        self.publish();
        format!("ok {line}")
    }

    /// The trial ran out: the previous table back into the file and onto the wire.
    fn roll_back(&mut self) {
        let Some(t) = self.trial.take() else { return };
        let back = self.board.with_management(t.previous.as_ref());
        let file = match put_back(&self.config, t.previous.as_ref()) {
            Ok(()) => {
                let _ = std::fs::remove_file(&self.marker);
                String::new()
            }
            Err(e) => format!(" (but the file could not be put back: {e})"),
        };
        let line = format!(
            "{} NOT kept within {} s: back to {} at {}{file}",
            t.tried,
            t.confirm.as_secs(),
            describe(&back),
            crate::timefmt::rfc3339_ms(crate::timefmt::now_ms())
        );
        say!("network: {line}");
        self.last_change = Some(line);
        self.tear_down();
        self.site = t.previous;
        let ntp = self.bring_up(&back, Duration::from_secs(back.network.dhcp_timeout_secs.min(30)));
        self.publish();
        // The appliance reads the file again (its page then shows the table in force).
        let pid = self.appliance.load(Ordering::Relaxed);
        if let Some(pid) = rustix::process::Pid::from_raw(pid) {
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::HUP);
        }
        super::sync_time(&back, &ntp, &self.status);
    }

    /// The console's status line and network.json.
    fn report(&mut self, line: String, wire: serde_json::Value) {
        set(&self.status, |s| s.network = line);
        self.wire = wire;
        self.publish();
    }

    fn publish(&self) {
        let mut v = self.wire.clone();
        if let Some(o) = v.as_object_mut() {
            o.insert("source".into(), (if self.site.is_some() { "site" } else { "board" }).into());
            o.insert(
                "trial".into(),
                match &self.trial {
                    Some(t) => serde_json::json!({"settings": t.tried, "until_unix": unix_secs(t.until_wall),
                        "confirm_secs": t.confirm.as_secs(),
                        "previous": describe(&self.board.with_management(t.previous.as_ref()))}),
                    None => serde_json::Value::Null,
                },
            );
            o.insert("last_change".into(), self.last_change.clone().into());
        }
        if let Err(e) = std::fs::write(NETWORK_JSON, v.to_string()) {
            say!("{NETWORK_JSON}: {e}");
        }
    }
}

/// Name, ifindex and MAC of the interface `want` (`auto`: first Ethernet one).
fn find_iface(want: &str, wait: Duration) -> Option<(String, u32, [u8; 6])> {
    let start = Instant::now();
    loop {
        let mut names: Vec<String> = std::fs::read_dir("/sys/class/net")
            .map(|d| d.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect())
            .unwrap_or_default();
        names.sort();
        for name in names {
            let base = Path::new("/sys/class/net").join(&name);
            let read = |f: &str| std::fs::read_to_string(base.join(f)).unwrap_or_default().trim().to_string();
            // A VLAN link is Ethernet too, but never the `auto` choice.
            let is_ether = read("type") == "1" && name != "lo" && !name.contains('.');
            if (want == "auto" && is_ether) || name == want {
                let ifindex: u32 = read("ifindex").parse().ok()?;
                let mac = parse_mac(&read("address")).unwrap_or([0x02, 0, 0, 0, 0, 1]);
                return Some((name, ifindex, mac));
            }
        }
        if start.elapsed() >= wait {
            return None;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

pub fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let mut mac = [0u8; 6];
    let mut parts = s.split(':');
    for b in &mut mac {
        *b = u8::from_str_radix(parts.next()?, 16).ok()?;
    }
    parts.next().is_none().then_some(mac)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_keep_asked_before_the_change_does_not_count() {
        let before = Instant::now();
        let t = Trial {
            changed: before + Duration::from_secs(2),
            until: before + Duration::from_secs(32),
            until_wall: SystemTime::now(),
            confirm: Duration::from_secs(30),
            previous: None,
            tried: "eth0.20 static 10.0.2.15/24".into(),
        };
        let no = t.too_early(before).unwrap_or_default();
        assert!(no.starts_with("error not kept: asked before eth0.20 static"), "{no}");
        assert_eq!(t.too_early(before + Duration::from_secs(3)), None);
    }

    #[test]
    fn mac_addresses() {
        assert_eq!(parse_mac("52:54:00:12:34:56"), Some([0x52, 0x54, 0, 0x12, 0x34, 0x56]));
        assert_eq!(parse_mac("52:54:00:12:34"), None);
        assert_eq!(parse_mac("52:54:00:12:34:56:78"), None);
    }

    #[test]
    fn settings_never_kept_before_a_restart_go_back_in_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("flowwarden.toml");
        let marker = dir.path().join(management::TRIAL_MARKER);
        let tried =
            "# mine\n[network]\ninternal = [\"10.0.0.0/8\"]\n\n[management]\nmode = \"static\"\naddress = \"10.9.9.9/24\"\nvlan = 7\n";
        std::fs::write(&config, tried).unwrap();
        // No marker: nothing happens.
        assert_eq!(restore_unconfirmed(&config, &marker), None);
        // The previous table was DHCP.
        let prev = Management {
            mode: Some(NetMode::Dhcp),
            ..Management::default()
        };
        std::fs::write(&marker, prev.to_toml()).unwrap();
        let said = restore_unconfirmed(&config, &marker).unwrap();
        assert!(said.contains("never kept"), "{said}");
        assert!(!marker.exists());
        let now = std::fs::read_to_string(&config).unwrap();
        assert!(now.starts_with("# mine\n[network]\ninternal = [\"10.0.0.0/8\"]\n"), "{now}");
        assert_eq!(read_site(&config).unwrap(), Some(prev));
        // An empty marker: there was no table before.
        std::fs::write(&config, tried).unwrap();
        std::fs::write(&marker, "").unwrap();
        restore_unconfirmed(&config, &marker);
        assert_eq!(read_site(&config).unwrap(), None);
        assert!(std::fs::read_to_string(&config).unwrap().contains("internal"));
        // A broken marker is said, and the file is left alone.
        std::fs::write(&config, tried).unwrap();
        std::fs::write(&marker, "[management]\nvlan = 99999\n").unwrap();
        let said = restore_unconfirmed(&config, &marker).unwrap();
        assert!(said.contains("going back failed"), "{said}");
        assert_eq!(std::fs::read_to_string(&config).unwrap(), tried);
    }

    #[test]
    fn descriptions_name_what_goes_on_the_wire() {
        let board = SystemConfig::default();
        assert_eq!(describe(&board), "auto dhcp");
        let m = management::from_text(
            "[management]\nmode = \"static\"\ninterface = \"eth0\"\naddress = \"10.0.2.15/24\"\ngateway = \"10.0.2.2\"\nvlan = 20\ndns = [\"10.0.2.3\"]\nntp_servers = [\"10.0.2.2:1123\"]\n",
        )
        .unwrap();
        assert_eq!(
            describe(&board.with_management(m.as_ref())),
            "eth0 VLAN 20 static 10.0.2.15/24 via 10.0.2.2, dns 10.0.2.3, ntp 10.0.2.2:1123"
        );
    }
}
