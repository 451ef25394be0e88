//! The system settings PID 1 reads before anything else runs: what to mount,
//! which kernel modules to load, how to bring up the management interface and
//! where to get the time. `cargo xtask image` writes this file into the
//! initramfs (`/etc/flowwarden/system.toml`) from the board's `[system]` table;
//! board/README.md documents every key.

use serde::Deserialize;
use std::net::{Ipv4Addr, SocketAddr};
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
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Watchdog {
    #[serde(default = "default_wdt")]
    pub device: PathBuf,
    /// Seconds between pets; must be well under the driver's timeout (iTCO: 30 s).
    #[serde(default = "default_pet")]
    pub pet_secs: u64,
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
    /// Seconds to keep trying DHCP before running without an address (and trying again later).
    #[serde(default = "default_dhcp_timeout")]
    pub dhcp_timeout_secs: u64,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum NetMode {
    #[default]
    Dhcp,
    Static,
    /// Leave the interface down (lab use).
    None,
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
        if let Some(w) = &cfg.watchdog
            && !(1..=60).contains(&w.pet_secs)
        {
            return Err(invalid(format!("watchdog.pet_secs = {}: expected 1-60", w.pet_secs)));
        }
        for s in &cfg.time.ntp_servers {
            ntp_addr(s).map_err(|m| invalid(format!("time.ntp_servers: {m}")))?;
        }
        Ok(cfg)
    }
}

/// Why an address in the system configuration is not usable.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum AddrError {
    #[error("{0:?}: expected a.b.c.d/len")]
    NoPrefix(String),
    #[error("{0:?}: expected an IPv4 address")]
    NotIpv4(String),
    #[error("{0:?}: expected a prefix length 0-32")]
    PrefixLength(String),
    #[error("{0:?}: expected a numeric address (PID 1 has no resolver)")]
    NotNumeric(String),
}

/// `a.b.c.d/len` → address and prefix length.
pub fn parse_cidr4(s: &str) -> Result<(Ipv4Addr, u8), AddrError> {
    let (a, l) = s.split_once('/').ok_or_else(|| AddrError::NoPrefix(s.into()))?;
    let addr: Ipv4Addr = a.parse().map_err(|_| AddrError::NotIpv4(a.into()))?;
    let len: u8 = l
        .parse()
        .ok()
        .filter(|l| *l <= 32)
        .ok_or_else(|| AddrError::PrefixLength(l.into()))?;
    Ok((addr, len))
}

/// A numeric NTP server: `a.b.c.d`, `a.b.c.d:port`, `[v6]:port` or a bare IPv6 address.
pub fn ntp_addr(s: &str) -> Result<SocketAddr, AddrError> {
    if let Ok(sa) = s.parse::<SocketAddr>() {
        return Ok(sa);
    }
    s.parse::<std::net::IpAddr>()
        .map(|ip| SocketAddr::new(ip, 123))
        .map_err(|_| AddrError::NotNumeric(s.into()))
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
        assert_eq!(parse_cidr4("10.0.0.1/33"), Err(AddrError::PrefixLength("33".into())));
        assert_eq!(parse_cidr4("10.0.2.15/24").unwrap(), (Ipv4Addr::new(10, 0, 2, 15), 24));
    }
}
