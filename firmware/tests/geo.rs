//! Countries from the database the images carry (`cargo xtask deps` fetches it
//! to target/geo/): known addresses, `[src|dst] country CC` in `query` against
//! an independent lookup over every stored flow, and the page showing countries
//! beside addresses, the database on `/system` and its attribution.

mod common;

use common::Running;
use common::https::Client;
use flowwarden::geo::Geo;
use std::ffi::OsStr;
use std::path::{Path, PathBuf};

fn database() -> PathBuf {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/geo/country.mmdb");
    assert!(
        p.is_file(),
        "{}: missing; `cargo xtask deps` fetches the country database (as `cargo xtask ci` does first)",
        p.display()
    );
    p
}

fn os(s: &str) -> &OsStr {
    OsStr::new(s)
}

#[test]
fn countries_filter_flows_and_show_on_the_page() {
    let geo = Geo::open(&database()).unwrap_or_else(|e| panic!("{e}"));
    // Anchors that have not moved in decades: Google's resolver, RIPE NCC's own network.
    assert_eq!(
        geo.country_str("8.8.8.8".parse().unwrap_or_else(|e| panic!("{e}"))).as_deref(),
        Some("US")
    );
    assert_eq!(
        geo.country_str("193.0.6.139".parse().unwrap_or_else(|e| panic!("{e}"))).as_deref(),
        Some("NL")
    );
    assert_eq!(geo.country_str("10.1.2.3".parse().unwrap_or_else(|e| panic!("{e}"))), None);

    let d = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let data = d.path().join("data");
    let pcap = common::captures().join("exported/softflowd_test_v9.pcap");
    let (ok, _, err) = common::cli(&[os("ingest"), os("--data-dir"), data.as_os_str(), pcap.as_os_str()]);
    assert!(ok, "{err}");
    let query = |filter: &str| {
        common::cli(&[
            os("query"),
            os("--data-dir"),
            data.as_os_str(),
            os("--filter"),
            os(filter),
            os("--format"),
            os("jsonl"),
        ])
    };
    // Without a database a country filter says what is missing.
    let (ok, _, err) = query("dst country US");
    assert!(!ok && err.contains("no country database is installed"), "{err}");

    std::fs::create_dir_all(data.join("geo")).unwrap_or_else(|e| panic!("{e}"));
    std::fs::copy(database(), data.join("geo/country.mmdb")).unwrap_or_else(|e| panic!("{e}"));
    let flows = common::read_all(&data);
    for (filter, pick) in [
        ("dst country US", (false, true)),
        ("src country us", (true, false)),
        ("country US", (true, true)),
        ("not country US", (false, false)),
    ] {
        let (ok, out, err) = query(filter);
        assert!(ok, "{filter}: {err}");
        let got = out.lines().filter(|l| l.starts_with('{')).count();
        let us = |ip| geo.country_str(ip).as_deref() == Some("US");
        let want = flows
            .iter()
            .filter(|f| match pick {
                (false, true) => us(f.dst),
                (true, false) => us(f.src),
                (true, true) => us(f.src) || us(f.dst),
                _ => !(us(f.src) || us(f.dst)),
            })
            .count();
        assert_eq!(got, want, "{filter}");
        assert!(got > 0, "{filter}: the capture should have such flows");
    }
    let (ok, _, err) = query("dst country USA");
    assert!(!ok && err.contains("two-letter country code"), "{err}");

    // The page: countries beside addresses, the database on /system, the attribution.
    let (ok, _, err) = common::user_set(&data, "boss", "admin", "a good long password\n");
    assert!(ok, "{err}");
    let r = Running::start(&data, &[]);
    let (addr, fp) = r.web.clone().unwrap_or_else(|| panic!("no web line"));
    let mut c = Client::new(addr, &fp);
    assert_eq!(c.login("boss", "a good long password").status, 303);
    let page = c.get("/flows?filter=dst%20country%20US&from=0");
    assert_eq!(page.status, 200);
    assert!(
        page.body.contains("<abbr class=\"cc\" title=\"country\">US</abbr>"),
        "{}",
        page.body
    );
    assert!(page.body.contains("data © NRO, CC BY 4.0"), "attribution in the footer");
    let sys = c.get("/api/v1/system").json();
    assert!(
        sys["countries"]["file"].as_str().is_some_and(|f| f.ends_with("geo/country.mmdb")),
        "{sys}"
    );
    r.stop();
}
