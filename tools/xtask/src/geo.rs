//! The country database, fetched at build time (never by the appliance):
//! ip-location-db's `geo-whois-asn-country-mmdb` from the npm registry, one
//! pinned version checked against its SHA-256, unpacked to
//! `target/geo/country.mmdb` once. The images carry it as
//! `/usr/share/flowwarden/country.mmdb`; tests copy it into a data directory
//! (`DATA_DIR/geo/country.mmdb`, where a newer file replaces the image's).
//!
//! The package is data of the NRO (CC BY 4.0: the page shows the attribution).
//! Its README says npm updates are deprecated in favour of the project's GitHub
//! releases; this version is the last npm one and is pinned until that source
//! is reachable from the build machines.

use crate::run;
use anyhow::{Context, Result, bail};
use std::path::{Path, PathBuf};
use std::process::Command;

const VERSION: &str = "2.3.2026061719";
const SHA256: &str = "91757a1b06cdcd1955f292e4c4cfc54e091204f998e159a3187f7a2ef3724be0";
const MEMBER: &str = "package/geo-whois-asn-country.mmdb";

/// `target/geo/country.mmdb`, fetched and checked if missing.
pub fn database(root: &Path) -> Result<PathBuf> {
    let dir = root.join("target/geo");
    let db = dir.join("country.mmdb");
    if db.is_file() {
        return Ok(db);
    }
    std::fs::create_dir_all(&dir)?;
    let tgz = dir.join(format!("geo-whois-asn-country-mmdb-{VERSION}.tgz"));
    let url = format!("https://registry.npmjs.org/@ip-location-db/geo-whois-asn-country-mmdb/-/geo-whois-asn-country-mmdb-{VERSION}.tgz");
    if !tgz.is_file() || crate::image::sha256(&tgz)? != SHA256 {
        eprintln!("xtask: fetching the country database {url}");
        run(Command::new("curl").args(["-sSfL", "--retry", "3", "-o"]).arg(&tgz).arg(&url))
            .with_context(|| format!("cannot download {url}"))?;
    }
    let got = crate::image::sha256(&tgz)?;
    if got != SHA256 {
        let _ = std::fs::remove_file(&tgz);
        bail!(
            "{}: SHA-256 {got}, expected {SHA256}: not the pinned country database",
            tgz.display()
        );
    }
    run(Command::new("tar").arg("-xzf").arg(&tgz).arg("-C").arg(&dir).arg(MEMBER))?;
    std::fs::rename(dir.join(MEMBER), &db)?;
    let _ = std::fs::remove_dir_all(dir.join("package"));
    eprintln!("xtask: country database {} ({} bytes)", db.display(), std::fs::metadata(&db)?.len());
    Ok(db)
}
