//! The system settings PID 1 reads before anything else runs: what to mount,
//! which kernel modules to load, how to bring up the management interface and
//! where to get the time. `cargo xtask image` writes this file into the
//! initramfs (`/etc/flowwarden/system.toml`) from the board's `[system]` table;
//! board/README.md documents every key.

use crate::management::Management;
pub use crate::management::{AddrError, NetMode, ntp_addr, parse_cidr4};
use serde::Deserialize;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use thiserror::Error;

/// Where PID 1 finds its settings inside the initramfs.
pub const SYSTEM_TOML: &str = "/etc/flowwarden/system.toml";

#[derive(Debug, Error)]
pub enum SysConfError {
    #[error("{path}: cannot read: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Invalid { path: PathBuf, message: String },
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SystemConfig {
    /// Host name set with sethostname(2); also the syslog HOSTNAME later.
    #[serde(default = "default_hostname")]
    pub hostname: String,
    /// Kernel modules (paths inside the initramfs), already in dependency order.
    #[serde(default)]
    pub modules: Vec<PathBuf>,
    #[serde(default)]
    pub data: DataPartition,
    #[serde(default)]
    pub network: Network,
    #[serde(default)]
    pub time: Time,
    /// Hardware watchdog, petted only while the appliance runs; absent = none.
    pub watchdog: Option<Watchdog>,
    #[serde(default)]
    pub update: UpdatePolicy,
}

/// A/B updates: when a slot on trial counts as good.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct UpdatePolicy {
    /// Seconds the appliance must have been ready (one process, not restarted) before
    /// a slot on trial is marked good.
    #[serde(default = "default_good_after")]
    pub good_after_secs: u64,
}

impl Default for UpdatePolicy {
    fn default() -> Self {
        UpdatePolicy {
            good_after_secs: default_good_after(),
        }
    }
}

fn default_good_after() -> u64 {
    30
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Watchdog {
    #[serde(default = "default_wdt")]
    pub device: PathBuf,
    /// Seconds between pets; must be well under the driver's timeout (iTCO: 30 s).
    #[serde(default = "default_pet")]
    pub pet_secs: u64,
    /// Petting stops when the appliance has not reported progress for this long
    /// (it reports every 5 s while no stage is hung: crate::progress).
    #[serde(default = "default_stale")]
    pub stale_secs: u64,
    /// How long a starting appliance (opening a large store) may take before its
    /// first report; also how long a restart may be pending.
    #[serde(default = "default_grace")]
    pub startup_grace_secs: u64,
}

impl Default for Watchdog {
    fn default() -> Self {
        Watchdog {
            device: default_wdt(),
            pet_secs: default_pet(),
            stale_secs: default_stale(),
            startup_grace_secs: default_grace(),
        }
    }
}

fn default_stale() -> u64 {
    20
}
fn default_grace() -> u64 {
    300
}

fn default_wdt() -> PathBuf {
    PathBuf::from("/dev/watchdog")
}
fn default_pet() -> u64 {
    10
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DataPartition {
    /// GPT partition name of the data partition.
    #[serde(default = "default_partname")]
    pub partition: String,
    /// Where it is mounted; this is the appliance's `--data-dir`.
    #[serde(default = "default_mountpoint")]
    pub mountpoint: PathBuf,
    /// A static e2fsck run with `-p` before mounting when present.
    #[serde(default = "default_fsck")]
    pub fsck: PathBuf,
    /// mke2fs for the first boot on a blank partition (Debian's, with its libraries
    /// in `mkfs_libs`; the image's loader runs it).
    #[serde(default = "default_mkfs")]
    pub mkfs: PathBuf,
    #[serde(default = "default_mkfs_libs")]
    pub mkfs_libs: PathBuf,
    /// resize2fs (same libraries) to grow the file system after the partition grew.
    #[serde(default = "default_resize")]
    pub resize: PathBuf,
    /// How long to wait for the disk to appear.
    #[serde(default = "default_wait")]
    pub wait_secs: u64,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Network {
    /// Kernel interface name of the management port (`eth0`), or `auto` for the
    /// first interface with an Ethernet address.
    #[serde(default = "default_iface")]
    pub interface: String,
    #[serde(default)]
    pub mode: NetMode,
    /// `a.b.c.d/len` for `mode = "static"`.
    pub address: Option<String>,
    pub gateway: Option<Ipv4Addr>,
    #[serde(default)]
    pub dns: Vec<Ipv4Addr>,
    /// 802.1Q VLAN id: the address goes on `INTERFACE.VLAN` instead.
    pub vlan: Option<u16>,
    /// Seconds to keep trying DHCP before running without an address (and trying again later).
    #[serde(default = "default_dhcp_timeout")]
    pub dhcp_timeout_secs: u64,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Time {
    /// SNTP servers, numeric `addr[:port]` (no resolver in PID 1). Servers
    /// handed out by DHCP (option 42) are tried first.
    #[serde(default)]
    pub ntp_servers: Vec<String>,
    #[serde(default = "default_ntp_timeout")]
    pub timeout_ms: u64,
}

fn default_hostname() -> String {
    "flowwarden".into()
}
fn default_partname() -> String {
    "data".into()
}
fn default_mountpoint() -> PathBuf {
    PathBuf::from("/data")
}
fn default_fsck() -> PathBuf {
    PathBuf::from("/sbin/e2fsck")
}
fn default_mkfs() -> PathBuf {
    PathBuf::from("/sbin/mke2fs")
}
fn default_resize() -> PathBuf {
    PathBuf::from("/sbin/resize2fs")
}
fn default_mkfs_libs() -> PathBuf {
    PathBuf::from("/lib/mke2fs")
}
fn default_wait() -> u64 {
    30
}
fn default_iface() -> String {
    "auto".into()
}
fn default_dhcp_timeout() -> u64 {
    30
}
fn default_ntp_timeout() -> u64 {
    2000
}

impl Default for DataPartition {
    fn default() -> Self {
        DataPartition {
            partition: default_partname(),
            mountpoint: default_mountpoint(),
            fsck: default_fsck(),
            mkfs: default_mkfs(),
            mkfs_libs: default_mkfs_libs(),
            resize: default_resize(),
            wait_secs: default_wait(),
        }
    }
}

impl Default for Network {
    fn default() -> Self {
        Network {
            interface: default_iface(),
            mode: NetMode::Dhcp,
            address: None,
            gateway: None,
            dns: Vec::new(),
            vlan: None,
            dhcp_timeout_secs: default_dhcp_timeout(),
        }
    }
}

impl Default for Time {
    fn default() -> Self {
        Time {
            ntp_servers: Vec::new(),
            timeout_ms: default_ntp_timeout(),
        }
    }
}

impl Default for SystemConfig {
    fn default() -> Self {
        SystemConfig {
            hostname: default_hostname(),
            modules: Vec::new(),
            data: DataPartition::default(),
            network: Network::default(),
            time: Time::default(),
            watchdog: None,
            update: UpdatePolicy::default(),
        }
    }
}

impl SystemConfig {
    pub fn load(path: &Path) -> Result<Self, SysConfError> {
        let text = std::fs::read_to_string(path).map_err(|source| SysConfError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(&text, path)
    }

    pub fn parse(text: &str, path: &Path) -> Result<Self, SysConfError> {
        let invalid = |message: String| SysConfError::Invalid {
            path: path.to_path_buf(),
            message,
        };
        let cfg: SystemConfig = toml::from_str(text).map_err(|e| invalid(e.to_string().trim_end().replace('\n', " ")))?;
        if cfg.hostname.is_empty() || cfg.hostname.len() > 64 || !cfg.hostname.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
            return Err(invalid(format!(
                "hostname {:?}: expected 1-64 letters, digits or '-'",
                cfg.hostname
            )));
        }
        if cfg.network.mode == NetMode::Static {
            let Some(addr) = &cfg.network.address else {
                return Err(invalid("network.mode = \"static\" needs network.address = \"a.b.c.d/len\"".into()));
            };
            parse_cidr4(addr).map_err(|m| invalid(format!("network.address: {m}")))?;
        }
        if let Some(v) = cfg.network.vlan
            && !(1..=4094).contains(&v)
        {
            return Err(invalid(format!("network.vlan = {v}: expected a VLAN id 1-4094")));
        }
        if let Some(w) = &cfg.watchdog
            && !(1..=60).contains(&w.pet_secs)
        {
            return Err(invalid(format!("watchdog.pet_secs = {}: expected 1-60", w.pet_secs)));
        }
        if let Some(w) = &cfg.watchdog
            && !(15..=600).contains(&w.stale_secs)
        {
            return Err(invalid(format!(
                "watchdog.stale_secs = {}: expected 15-600 (the appliance reports every 5 s)",
                w.stale_secs
            )));
        }
        if let Some(w) = &cfg.watchdog
            && !(30..=3600).contains(&w.startup_grace_secs)
        {
            return Err(invalid(format!(
                "watchdog.startup_grace_secs = {}: expected 30-3600",
                w.startup_grace_secs
            )));
        }
        for s in &cfg.time.ntp_servers {
            ntp_addr(s).map_err(|m| invalid(format!("time.ntp_servers: {m}")))?;
        }
        Ok(cfg)
    }

    /// These settings with the site's `[management]` table laid over them (the
    /// network and the NTP servers; a key the table leaves out keeps its value here).
    pub fn with_management(&self, m: Option<&Management>) -> SystemConfig {
        let mut c = self.clone();
        let Some(m) = m else { return c };
        let n = &mut c.network;
        if let Some(mode) = m.mode {
            n.mode = mode;
        }
        if let Some(i) = &m.interface {
            n.interface = i.clone();
        }
        if m.address.is_some() {
            n.address = m.address.clone();
        }
        if m.gateway.is_some() {
            n.gateway = m.gateway;
        }
        if m.vlan.is_some() {
            n.vlan = m.vlan;
        }
        if let Some(d) = &m.dns {
            n.dns = d.clone();
        }
        if let Some(t) = &m.ntp_servers {
            c.time.ntp_servers = t.clone();
        }
        c
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_full_file() {
        let d = SystemConfig::parse("", Path::new("s.toml")).unwrap();
        assert_eq!(d, SystemConfig::default());
        let c = SystemConfig::parse(
            "hostname = \"branch-7\"\nmodules = [\"/lib/modules/virtio.ko\"]\n[network]\nmode = \"static\"\naddress = \"192.0.2.5/24\"\ngateway = \"192.0.2.1\"\ndns = [\"192.0.2.53\"]\n[time]\nntp_servers = [\"192.0.2.1\", \"[2001:db8::1]:1123\"]\n",
            Path::new("s.toml"),
        )
        .unwrap();
        assert_eq!(c.hostname, "branch-7");
        assert_eq!(c.network.mode, NetMode::Static);
        assert_eq!(ntp_addr(&c.time.ntp_servers[1]).unwrap().port(), 1123);
    }

    #[test]
    fn errors_say_what_was_expected() {
        let e = SystemConfig::parse("[network]\nmode = \"static\"\n", Path::new("s.toml"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("needs network.address"), "{e}");
        let e = SystemConfig::parse("[time]\nntp_servers = [\"pool.ntp.org\"]\n", Path::new("s.toml"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("numeric"), "{e}");
        let e = SystemConfig::parse("hostnme = \"x\"\n", Path::new("s.toml"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("hostnme"), "{e}");
        let e = SystemConfig::parse("[watchdog]\npet_secs = 0\n", Path::new("s.toml"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("watchdog.pet_secs"), "{e}");
        let w = SystemConfig::parse("[watchdog]\n", Path::new("s.toml")).unwrap().watchdog.unwrap();
        assert_eq!((w.device.as_path(), w.pet_secs), (Path::new("/dev/watchdog"), 10));
        assert_eq!(w, Watchdog::default());
        let e = SystemConfig::parse("[watchdog]\nstale_secs = 5\n", Path::new("s.toml"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("watchdog.stale_secs = 5: expected 15-600"), "{e}");
    }

    #[test]
    fn the_site_table_lays_over_the_board() {
        let board = SystemConfig::parse(
            "[network]\ninterface = \"eth0\"\ndns = [\"10.0.2.3\"]\n[time]\nntp_servers = [\"10.0.2.2:1123\"]\n",
            Path::new("s.toml"),
        )
        .unwrap();
        assert_eq!(board.with_management(None), board);
        let m = crate::management::from_text(
            "[management]\nmode = \"static\"\naddress = \"192.0.2.5/24\"\nvlan = 20\nntp_servers = [\"192.0.2.1\"]\n",
        )
        .unwrap();
        let c = board.with_management(m.as_ref());
        assert_eq!(c.network.mode, NetMode::Static);
        assert_eq!(c.network.address.as_deref(), Some("192.0.2.5/24"));
        assert_eq!((c.network.interface.as_str(), c.network.vlan), ("eth0", Some(20)));
        assert_eq!(c.network.dns, vec![Ipv4Addr::new(10, 0, 2, 3)], "left out: the board's");
        assert_eq!(c.time.ntp_servers, vec!["192.0.2.1".to_string()]);
    }
}
