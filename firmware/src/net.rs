//! IP prefixes (CIDR) used by the config's internal networks and the query filter.

use serde::{Deserialize, Deserializer};
use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;
use thiserror::Error;

/// An address prefix such as `10.0.0.0/8` or `fc00::/7`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct IpNet {
    addr: IpAddr,
    prefix: u8,
}

/// A name for an internal address or network (`[[network.name]]`), shown
/// beside matching addresses on the page; the longest prefix wins.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NamedNet {
    pub net: IpNet,
    pub name: String,
}

/// Longest names accepted.
pub const MAX_NAME: usize = 64;

/// The name of the most specific entry containing `ip`.
pub fn name_of<'a>(names: &'a [NamedNet], ip: &IpAddr) -> Option<&'a str> {
    names
        .iter()
        .filter(|n| n.net.contains(ip))
        .max_by_key(|n| n.net.prefix)
        .map(|n| n.name.as_str())
}

/// Whether a name can be shown: 1 to [`MAX_NAME`] characters, no control characters.
pub fn check_name(name: &str) -> Result<(), String> {
    if name.trim().is_empty() || name.chars().count() > MAX_NAME || name.chars().any(char::is_control) {
        return Err(format!("{name:?}: a name has 1 to {MAX_NAME} characters and no control characters"));
    }
    Ok(())
}

#[derive(Debug, Error, PartialEq, Eq)]
#[error("invalid network {input:?}: {why} (expected ADDRESS/PREFIX like 10.0.0.0/8 or fc00::/7)")]
pub struct IpNetError {
    pub input: String,
    pub why: &'static str,
}

impl IpNet {
    /// Build a prefix; host bits are cleared.
    pub fn new(addr: IpAddr, prefix: u8) -> Option<IpNet> {
        let max = if addr.is_ipv4() { 32 } else { 128 };
        if prefix > max {
            return None;
        }
        let addr = match addr {
            IpAddr::V4(a) => IpAddr::V4((u32::from(a) & mask32(prefix)).into()),
            IpAddr::V6(a) => IpAddr::V6((u128::from(a) & mask128(prefix)).into()),
        };
        Some(IpNet { addr, prefix })
    }

    /// Whether this prefix is a single address (/32 or /128).
    pub fn is_host(&self) -> bool {
        self.prefix == if self.addr.is_ipv4() { 32 } else { 128 }
    }

    /// The network address.
    pub fn addr(&self) -> IpAddr {
        self.addr
    }

    /// `ip` as [`IpNet::contains`] compares it (IPv4-mapped IPv6 as IPv4).
    pub fn canonical(ip: &IpAddr) -> IpAddr {
        match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(*ip),
            v4 => *v4,
        }
    }

    /// Whether `ip` lies inside this prefix (IPv4-mapped IPv6 is treated as IPv4).
    pub fn contains(&self, ip: &IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(*ip),
            v4 => *v4,
        };
        match (self.addr, ip) {
            (IpAddr::V4(n), IpAddr::V4(a)) => u32::from(a) & mask32(self.prefix) == u32::from(n),
            (IpAddr::V6(n), IpAddr::V6(a)) => u128::from(a) & mask128(self.prefix) == u128::from(n),
            _ => false,
        }
    }

    /// The default internal networks: RFC 1918, CGNAT 100.64/10, ULA fc00::/7.
    pub fn default_internal() -> Vec<IpNet> {
        ["10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10", "fc00::/7"]
            .iter()
            .filter_map(|s| s.parse().ok())
            .collect()
    }
}

fn mask32(prefix: u8) -> u32 {
    if prefix == 0 { 0 } else { u32::MAX << (32 - prefix as u32) }
}

fn mask128(prefix: u8) -> u128 {
    if prefix == 0 { 0 } else { u128::MAX << (128 - prefix as u32) }
}

impl FromStr for IpNet {
    type Err = IpNetError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = |why| IpNetError { input: s.to_string(), why };
        let (a, p) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: IpAddr = a.parse().map_err(|_| err("not an IP address"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match p {
            Some(p) => p.parse::<u8>().map_err(|_| err("prefix is not a number"))?,
            None => max,
        };
        IpNet::new(addr, prefix).ok_or_else(|| err("prefix longer than the address"))
    }
}

impl fmt::Display for IpNet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

impl<'de> Deserialize<'de> for IpNet {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn contains_v4_v6_and_mapped() {
        let n: IpNet = "10.1.2.3/8".parse().unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(n.to_string(), "10.0.0.0/8");
        assert!(n.contains(&"10.200.0.1".parse().unwrap_or(IpAddr::from([0; 4]))));
        assert!(n.contains(&"::ffff:10.0.0.1".parse().unwrap_or(IpAddr::from([0; 4]))));
        assert!(!n.contains(&"11.0.0.1".parse().unwrap_or(IpAddr::from([0; 4]))));
        let u: IpNet = "fc00::/7".parse().unwrap_or_else(|e| panic!("{e}"));
        assert!(u.contains(&"fd12::1".parse().unwrap_or(IpAddr::from([0; 4]))));
        let all: IpNet = "0.0.0.0/0".parse().unwrap_or_else(|e| panic!("{e}"));
        assert!(all.contains(&"8.8.8.8".parse().unwrap_or(IpAddr::from([0; 4]))));
    }

    #[test]
    fn rejects_bad_prefixes() {
        assert_eq!(
            "10.0.0.0/33".parse::<IpNet>().map_err(|e| e.why),
            Err("prefix longer than the address")
        );
        assert!("banana/8".parse::<IpNet>().is_err());
    }
}
