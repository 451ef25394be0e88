//! The management network as the site sets it: the `[management]` table of the
//! configuration file on the data partition (mode DHCP/static, address,
//! gateway, VLAN, DNS and NTP servers). The image's board file holds only the
//! defaults; PID 1 lays this table over them at boot and, when a reload finds
//! it changed, applies it live on trial (`init/netman.rs`) — unless somebody
//! confirms the new settings from the page within `confirm_within`, PID 1 puts
//! the previous table back in the file and the previous network on the wire.
//!
//! A leaf: the configuration check (`config`), the page's settings form
//! (`web`), PID 1 (`init`) and the reload (`pipeline`) all use this one
//! definition, and [`ask_init`] is the appliance's side of PID 1's socket.

use crate::units::Span;
use serde::Deserialize;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::time::Duration;
use thiserror::Error;

/// PID 1's request socket (the image only; mode 0600, root).
pub const INIT_SOCKET: &str = "/run/flowwarden/init.sock";
/// In the data directory while new settings are on trial: the table to go back
/// to (so a restart during the trial goes back too).
pub const TRIAL_MARKER: &str = "management.trial";
/// How long new settings wait for a "keep" unless `confirm_within` says otherwise.
pub const DEFAULT_CONFIRM: Duration = Duration::from_secs(300);
/// The delay between PID 1's answer and the change, so the page that asked can
/// still tell the technician where to go next.
pub const APPLY_DELAY: Duration = Duration::from_secs(2);

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum NetMode {
    #[default]
    Dhcp,
    Static,
    /// Leave the interface down (lab use).
    None,
}

impl NetMode {
    pub fn as_str(self) -> &'static str {
        match self {
            NetMode::Dhcp => "dhcp",
            NetMode::Static => "static",
            NetMode::None => "none",
        }
    }
}

/// `[management]`: every key optional; a key left out keeps the board's default.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq, Default)]
#[serde(deny_unknown_fields)]
pub struct Management {
    pub mode: Option<NetMode>,
    /// Kernel interface name, or `auto` (the first Ethernet interface).
    pub interface: Option<String>,
    /// `a.b.c.d/len` (static).
    pub address: Option<String>,
    pub gateway: Option<Ipv4Addr>,
    /// 802.1Q VLAN id (1-4094) on top of the interface.
    pub vlan: Option<u16>,
    /// Name servers (static; with DHCP they replace the offered ones).
    pub dns: Option<Vec<Ipv4Addr>>,
    /// Numeric SNTP servers (`addr[:port]`), tried after DHCP-offered ones.
    pub ntp_servers: Option<Vec<String>>,
    /// How long changed settings wait for a "keep" before PID 1 goes back ("5m").
    pub confirm_within: Option<Span>,
}

/// Why an address in the network settings is not usable.
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

/// A kernel interface name (at most 15 bytes, no `/`, space or `:`), or `auto`.
pub fn check_interface(name: &str) -> Result<(), String> {
    if name == "auto" {
        return Ok(());
    }
    if name.is_empty() || name.len() > 15 || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b)) {
        return Err(format!(
            "{name:?}: expected an interface name (1-15 letters, digits, '-', '_' or '.') or \"auto\""
        ));
    }
    Ok(())
}

impl Management {
    /// The key that is wrong and why (the configuration check names the line).
    pub fn check(&self) -> Result<(), (&'static str, String)> {
        if let Some(i) = &self.interface {
            check_interface(i).map_err(|m| ("interface", m))?;
        }
        if let Some(a) = &self.address {
            let (addr, len) = parse_cidr4(a).map_err(|e| ("address", e.to_string()))?;
            if addr.is_unspecified() || addr.is_multicast() || addr.is_broadcast() || len == 0 {
                return Err((
                    "address",
                    format!("{a:?}: expected a host address with its prefix, like 192.0.2.10/24"),
                ));
            }
        }
        if self.mode == Some(NetMode::Static) && self.address.is_none() {
            return Err(("address", "mode = \"static\" needs address = \"a.b.c.d/len\"".into()));
        }
        if let (Some(gw), Some(Ok((addr, len)))) = (self.gateway, self.address.as_deref().map(parse_cidr4)) {
            let mask = if len == 0 { 0 } else { u32::MAX << (32 - u32::from(len)) };
            if u32::from(gw) & mask != u32::from(addr) & mask {
                return Err((
                    "gateway",
                    format!("{gw} is not inside {addr}/{len}: the gateway must be on the management network"),
                ));
            }
        }
        if let Some(v) = self.vlan
            && !(1..=4094).contains(&v)
        {
            return Err(("vlan", format!("{v}: expected a VLAN id 1-4094")));
        }
        if let (Some(v), Some(i)) = (self.vlan, &self.interface)
            && i != "auto"
            && format!("{i}.{v}").len() > 15
        {
            return Err(("vlan", format!("{i}.{v} is longer than an interface name may be (15)")));
        }
        for s in self.ntp_servers.iter().flatten() {
            ntp_addr(s).map_err(|e| ("ntp_servers", e.to_string()))?;
        }
        if self.dns.as_ref().is_some_and(|d| d.len() > 3) {
            return Err(("dns", "at most 3 name servers (the resolver reads no more)".into()));
        }
        if let Some(c) = self.confirm_within
            && !(30_000..=3_600_000).contains(&c.ms())
        {
            return Err(("confirm_within", "must be between 30s and 1h".into()));
        }
        Ok(())
    }

    pub fn confirm(&self) -> Duration {
        self.confirm_within
            .map(|s| Duration::from_millis(s.ms()))
            .unwrap_or(DEFAULT_CONFIRM)
    }

    /// This table as TOML `key = value` lines (what [`write_into`] puts in the file).
    fn table(&self) -> toml_edit::Table {
        let mut t = toml_edit::Table::new();
        let strings = |v: &mut dyn Iterator<Item = String>| toml_edit::value(v.collect::<toml_edit::Array>());
        if let Some(m) = self.mode {
            t["mode"] = toml_edit::value(m.as_str());
        }
        if let Some(i) = &self.interface {
            t["interface"] = toml_edit::value(i.as_str());
        }
        if let Some(a) = &self.address {
            t["address"] = toml_edit::value(a.as_str());
        }
        if let Some(g) = self.gateway {
            t["gateway"] = toml_edit::value(g.to_string());
        }
        if let Some(v) = self.vlan {
            t["vlan"] = toml_edit::value(i64::from(v));
        }
        if let Some(d) = &self.dns {
            t["dns"] = strings(&mut d.iter().map(|a| a.to_string()));
        }
        if let Some(n) = &self.ntp_servers {
            t["ntp_servers"] = strings(&mut n.iter().cloned());
        }
        if let Some(c) = self.confirm_within {
            t["confirm_within"] = toml_edit::value(format!("{}s", c.ms() / 1000));
        }
        t
    }

    /// The table as it stands alone in the trial marker.
    pub fn to_toml(&self) -> String {
        let mut d = toml_edit::DocumentMut::new();
        d["management"] = toml_edit::Item::Table(self.table());
        d.to_string()
    }
}

/// The `[management]` table of a configuration file's text, alone: PID 1 reads
/// only this table, so a mistake elsewhere in the file keeps the network up.
pub fn from_text(text: &str) -> Result<Option<Management>, String> {
    #[derive(Deserialize)]
    struct Only {
        management: Option<Management>,
    }
    let table: toml::Table = toml::from_str(text).map_err(|e| e.message().trim().to_string())?;
    let Some(m) = table.get("management") else {
        return Ok(None);
    };
    let mut one = toml::Table::new();
    one.insert("management".into(), m.clone());
    let only: Only = one
        .try_into()
        .map_err(|e: toml::de::Error| format!("[management]: {}", e.message().trim()))?;
    if let Some(m) = &only.management {
        m.check().map_err(|(k, why)| format!("management.{k}: {why}"))?;
    }
    Ok(only.management)
}

/// `text` with its `[management]` table replaced by `m` (removed for None);
/// comments and layout elsewhere are kept.
pub fn write_into(text: &str, m: Option<&Management>) -> Result<String, String> {
    let mut doc: toml_edit::DocumentMut = text.parse().map_err(|e: toml_edit::TomlError| e.message().to_string())?;
    match m {
        Some(m) => {
            let mut t = m.table();
            // Keep the table where it was (and its leading comment).
            if let Some(old) = doc.get("management").and_then(|i| i.as_table()) {
                if let Some(p) = old.position() {
                    t.set_position(p);
                }
                *t.decor_mut() = old.decor().clone();
            }
            doc["management"] = toml_edit::Item::Table(t);
        }
        None => {
            doc.remove("management");
        }
    }
    Ok(doc.to_string())
}

/// Whether PID 1 is there to ask (the appliance runs on the image).
pub fn under_init() -> bool {
    Path::new(INIT_SOCKET).exists()
}

/// One request line to PID 1 (`network apply`, `network keep`); its one-line answer.
pub fn ask_init(request: &str) -> Result<String, String> {
    use std::io::{BufRead, Read, Write};
    let mut s = std::os::unix::net::UnixStream::connect(INIT_SOCKET).map_err(|e| format!("{INIT_SOCKET}: {e}"))?;
    let _ = s.set_read_timeout(Some(Duration::from_secs(90)));
    let _ = s.set_write_timeout(Some(Duration::from_secs(5)));
    writeln!(s, "{request}").map_err(|e| format!("{INIT_SOCKET}: {e}"))?;
    let mut line = String::new();
    std::io::BufReader::new(s.take(4096))
        .read_line(&mut line)
        .map_err(|e| format!("{INIT_SOCKET}: {e}"))?;
    let line = line.trim_end();
    match line.strip_prefix("ok ") {
        Some(ok) => Ok(ok.to_string()),
        None => Err(line.strip_prefix("error ").unwrap_or(line).to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_is_read_alone_checked_and_written_back_in_place() {
        let text = "# site\n[network]\ninternal = [\"10.0.0.0/8\"]\n\n# the office LAN\n[management]\nmode = \"static\"\naddress = \"192.0.2.10/24\"\ngateway = \"192.0.2.1\"\n\n[web]\nmetrics_public = true\n";
        let m = from_text(text).unwrap().unwrap();
        assert_eq!(m.mode, Some(NetMode::Static));
        assert_eq!(m.gateway, Some(Ipv4Addr::new(192, 0, 2, 1)));
        // A mistake elsewhere in the file does not hide the table.
        assert!(from_text("[web]\nbogus = 1\n[management]\nmode = \"dhcp\"\n").unwrap().is_some());
        assert_eq!(from_text("[web]\n").unwrap(), None);
        let e = from_text("[management]\nmode = \"static\"\n").unwrap_err();
        assert!(e.contains("management.address") && e.contains("needs"), "{e}");
        let e = from_text("[management]\nmode = \"dchp\"\n").unwrap_err();
        assert!(e.contains("dchp"), "{e}");

        let changed = Management {
            mode: Some(NetMode::Static),
            address: Some("192.0.2.20/24".into()),
            gateway: Some(Ipv4Addr::new(192, 0, 2, 1)),
            vlan: Some(20),
            dns: Some(vec![Ipv4Addr::new(192, 0, 2, 53)]),
            ntp_servers: Some(vec!["192.0.2.1".into()]),
            confirm_within: Some(Span(60_000)),
            ..Management::default()
        };
        let out = write_into(text, Some(&changed)).unwrap();
        assert!(out.starts_with("# site\n[network]\ninternal = [\"10.0.0.0/8\"]\n\n# the office LAN\n[management]\nmode = \"static\"\naddress = \"192.0.2.20/24\""), "{out}");
        assert!(out.ends_with("[web]\nmetrics_public = true\n"), "{out}");
        assert_eq!(from_text(&out).unwrap(), Some(changed.clone()));
        assert_eq!(from_text(&changed.to_toml()).unwrap(), Some(changed));
        let removed = write_into(&out, None).unwrap();
        assert_eq!(from_text(&removed).unwrap(), None);
        assert!(removed.contains("[web]\nmetrics_public = true\n"));
    }

    #[test]
    fn checks_say_what_was_expected() {
        let bad = |t: &str| from_text(t).unwrap_err();
        assert!(bad("[management]\nvlan = 4095\n").contains("management.vlan: 4095"));
        assert!(bad("[management]\naddress = \"10.0.0.1/33\"\n").contains("prefix length"));
        assert!(bad("[management]\naddress = \"0.0.0.0/24\"\n").contains("host address"));
        assert!(bad("[management]\naddress = \"10.0.0.5/24\"\ngateway = \"10.0.1.1\"\n").contains("not inside 10.0.0.5/24"));
        assert!(bad("[management]\nntp_servers = [\"pool.ntp.org\"]\n").contains("numeric"));
        assert!(bad("[management]\ninterface = \"eth 0\"\n").contains("interface name"));
        assert!(bad("[management]\ninterface = \"enp0s31f6xyzab\"\nvlan = 4000\n").contains("longer than"));
        assert!(bad("[management]\nconfirm_within = \"5s\"\n").contains("between 30s and 1h"));
        assert!(bad("[management]\ndns = [\"1.1.1.1\", \"1.0.0.1\", \"8.8.8.8\", \"8.8.4.4\"]\n").contains("at most 3"));
        assert_eq!(parse_cidr4("10.0.0.1/33"), Err(AddrError::PrefixLength("33".into())));
        assert_eq!(parse_cidr4("10.0.2.15/24").unwrap(), (Ipv4Addr::new(10, 0, 2, 15), 24));
        assert_eq!(ntp_addr("[2001:db8::1]:1123").unwrap().port(), 1123);
        assert_eq!(from_text("[management]\n").unwrap().unwrap().confirm(), DEFAULT_CONFIRM);
    }
}
