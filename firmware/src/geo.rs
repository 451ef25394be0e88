//! The country of an external address, for the page, the alert evidence and
//! the filter language (`dst country NL`).
//!
//! The data is a MaxMind-format database with a `country_code` per network:
//! ip-location-db's `geo-whois-asn-country` (GeoFeed, then the five RIRs'
//! WHOIS, then their IP-to-ASN data; NRO data under CC BY 4.0, attribution
//! [`ATTRIBUTION`]), fetched by `cargo xtask` at build time — never at run
//! time — and carried in the image. A newer file replaces it on the data
//! partition: `DATA_DIR/geo/country.mmdb` wins over the image's
//! [`SYSTEM_DB`]. Without either, countries are simply not shown and a
//! filter naming one says why.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use thiserror::Error;

/// Where the image carries the database.
pub const SYSTEM_DB: &str = "/usr/share/flowwarden/country.mmdb";
/// Where a replacement goes, under the data directory.
pub const DATA_DB: &str = "geo/country.mmdb";
/// What the page says about the data's origin (its licence asks for it).
pub const ATTRIBUTION: &str = "Countries: ip-location-db geo-whois-asn-country (data © NRO, CC BY 4.0)";

#[derive(Debug, Error)]
pub enum GeoError {
    #[error("{path}: cannot read the country database: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{path}: not a MaxMind-format country database: {message}")]
    Format { path: PathBuf, message: String },
}

/// An open country database.
pub struct Geo {
    reader: maxminddb::Reader<Vec<u8>>,
    pub path: PathBuf,
    /// When the data was built (Unix seconds, from the file's metadata).
    pub built: u64,
}

#[derive(serde::Deserialize)]
struct Record<'a> {
    country_code: &'a str,
}

impl Geo {
    pub fn open(path: &Path) -> Result<Geo, GeoError> {
        let bytes = std::fs::read(path).map_err(|source| GeoError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let reader = maxminddb::Reader::from_source(bytes).map_err(|e| GeoError::Format {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        let built = reader.metadata().build_epoch;
        Ok(Geo {
            reader,
            path: path.to_path_buf(),
            built,
        })
    }

    /// The two-letter country of a public address; None for private,
    /// reserved and unlisted ones.
    pub fn country(&self, ip: IpAddr) -> Option<[u8; 2]> {
        if !is_public(ip) {
            return None;
        }
        let found = self.reader.lookup(ip).ok()?;
        let rec: Record = found.decode().ok()??;
        match rec.country_code.as_bytes() {
            [a, b] if a.is_ascii_alphabetic() && b.is_ascii_alphabetic() => Some([a.to_ascii_uppercase(), b.to_ascii_uppercase()]),
            _ => None,
        }
    }

    /// [`Geo::country`] as text.
    pub fn country_str(&self, ip: IpAddr) -> Option<String> {
        self.country(ip).map(|c| String::from_utf8_lossy(&c).into_owned())
    }
}

/// Addresses a country database says nothing true about.
fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(a) => {
            !(a.is_private()
                || a.is_loopback()
                || a.is_link_local()
                || a.is_multicast()
                || a.is_broadcast()
                || a.is_unspecified()
                || a.is_documentation()
                || a.octets()[0] == 100 && (a.octets()[1] & 0xc0) == 64
                || a.octets()[0] >= 240)
        }
        IpAddr::V6(a) => {
            let s = a.segments();
            !(a.is_loopback()
                || a.is_unspecified()
                || a.is_multicast()
                || (s[0] & 0xfe00) == 0xfc00
                || (s[0] & 0xffc0) == 0xfe80
                || (s[0] == 0x2001 && s[1] == 0x0db8))
        }
    }
}

/// The database to use for a data directory: its replacement, else the image's.
pub fn locate(data_dir: &Path) -> Option<PathBuf> {
    [data_dir.join(DATA_DB), PathBuf::from(SYSTEM_DB)].into_iter().find(|p| p.is_file())
}

static GLOBAL: OnceLock<Option<Geo>> = OnceLock::new();

/// Open the data directory's database once for this process (the first call
/// decides); a damaged file is logged and countries stay off.
pub fn install(data_dir: &Path) -> Option<&'static Geo> {
    GLOBAL
        .get_or_init(|| {
            let path = locate(data_dir)?;
            match Geo::open(&path) {
                Ok(g) => {
                    tracing::debug!("countries from {}", path.display());
                    Some(g)
                }
                Err(e) => {
                    tracing::warn!("{e}; countries are not shown");
                    None
                }
            }
        })
        .as_ref()
}

/// The process's database, if [`install`] found one.
pub fn global() -> Option<&'static Geo> {
    GLOBAL.get().and_then(Option::as_ref)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn private_and_reserved_addresses_have_no_country() {
        for a in [
            "10.1.2.3",
            "192.168.1.1",
            "172.16.0.1",
            "100.64.0.1",
            "127.0.0.1",
            "169.254.1.1",
            "224.0.0.1",
            "192.0.2.1",
            "fd00::1",
            "fe80::1",
            "2001:db8::1",
            "::1",
        ] {
            assert!(!is_public(a.parse().unwrap_or_else(|e| panic!("{e}"))), "{a}");
        }
        for a in ["8.8.8.8", "203.0.114.1", "2a00:1450::1"] {
            assert!(is_public(a.parse().unwrap_or_else(|e| panic!("{e}"))), "{a}");
        }
    }

    #[test]
    fn a_file_that_is_no_database_is_a_clear_error() {
        let d = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let p = d.path().join("country.mmdb");
        std::fs::write(&p, b"not a database").unwrap_or_else(|e| panic!("{e}"));
        let e = Geo::open(&p).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(e.contains("country.mmdb: not a MaxMind-format country database"), "{e}");
        assert!(Geo::open(&d.path().join("none.mmdb")).is_err());
    }
}
