//! The status page in a real browser: Debian's headless Chromium, driven over
//! WebDriver by chromedriver, against `run --demo` (flowgen's branch office
//! with injected attacks through the live pipeline). It sets up the first
//! admin through the form with the printed code, opens every page, checks
//! what each shows against the CLI's view of the same data directory, looks
//! at the page at phone width, logs out, and saves screenshots under
//! target/browser/ (look at them).

mod common;

use common::Running;
use common::webdriver::Browser;
use std::ffi::OsStr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

fn os(s: &str) -> &OsStr {
    OsStr::new(s)
}

fn shots() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("../browser")
}

fn cli_json_lines(args: &[&OsStr]) -> Vec<serde_json::Value> {
    let (ok, out, err) = common::cli(args);
    assert!(ok, "{err}");
    out.lines().filter_map(|l| serde_json::from_str(l).ok()).collect()
}

#[test]
fn a_technician_sets_up_logs_in_and_reads_every_page() {
    let d = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let data = d.path().join("data");
    // The country database the images carry (`cargo xtask deps` fetched it).
    let geo = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/geo/country.mmdb");
    std::fs::create_dir_all(data.join("geo")).unwrap_or_else(|e| panic!("{e}"));
    std::fs::copy(&geo, data.join("geo/country.mmdb")).unwrap_or_else(|e| panic!("{}: {e} (`cargo xtask deps` fetches it)", geo.display()));
    let r = Running::start(&data, &["--demo"]);
    let (addr, _) = r.web.clone().unwrap_or_else(|| panic!("no web line"));
    let code = r.setup_code.clone().unwrap_or_else(|| panic!("no setup code"));
    let base = format!("https://{addr}");
    let b = Browser::start(1280, 1000);

    // No session: the page sends the browser to the login form, here the first-time setup.
    b.goto(&format!("{base}/alerts"));
    assert!(b.url().ends_with("/login"), "{}", b.url());
    b.screenshot(&shots().join("setup.png"));
    b.type_into("input[name=code]", &code);
    b.type_into("input[name=user]", "tech");
    b.type_into("input[name=password]", "a good long password");
    b.type_into("input[name=password2]", "a good long password");
    b.click("button[type=submit]");
    b.wait_until("the overview after setup", |b| b.url() == format!("{base}/"));
    assert!(b.text("#verdict").len() > 20, "{}", b.source());

    // Wait for the demo's attacks to raise alerts (the replay takes seconds).
    let data_os = data.as_os_str();
    let alerts_args = [os("alerts"), os("--data-dir"), data_os, os("--format"), os("jsonl")];
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut alerts = cli_json_lines(&alerts_args);
    while alerts.len() < 5 {
        assert!(Instant::now() < deadline, "the demo raised only {} alerts in 120 s", alerts.len());
        std::thread::sleep(Duration::from_secs(2));
        alerts = cli_json_lines(&alerts_args);
    }

    // Overview: the verdict with its checks, the tiles, times in local time with UTC beside.
    b.goto(&format!("{base}/"));
    let verdict = b.text("#verdict");
    for check in ["exporters", "store", "detectors"] {
        assert!(verdict.contains(check), "{verdict}");
    }
    assert!(b.text(".tiles").contains("Alerts (24 h)"));
    assert!(b.count("time .local") > 0, "the page script shows local times with UTC beside them");
    b.screenshot(&shots().join("overview.png"));

    // Exporters: the same exporters as the CLI.
    let (ok, out, err) = common::cli(&[os("exporters"), os("--data-dir"), data_os, os("--format"), os("json")]);
    assert!(ok, "{err}");
    let exporters: serde_json::Value = serde_json::from_str(&out).unwrap_or_default();
    // A switch that sends sFlow to the collector's port is named under "Unknown senders".
    let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap_or_else(|e| panic!("{e}"));
    udp.send_to(&[0, 0, 0, 5, 0, 0, 0, 1, 192, 0, 2, 9, 0, 0, 0, 0], ("127.0.0.1", r.port))
        .unwrap_or_else(|e| panic!("{e}"));
    b.wait_until("the sFlow sender on /exporters", |b| {
        b.goto(&format!("{base}/exporters"));
        b.text("main").contains("sFlow is not read here")
    });
    let table = b.text("table");
    for e in exporters.as_array().into_iter().flatten() {
        assert!(table.contains(e["exporter"].as_str().unwrap_or("?")), "{table}");
    }
    b.screenshot(&shots().join("exporters.png"));

    // Alerts: every alert the CLI lists has its row and link (the list may have grown since).
    b.goto(&format!("{base}/alerts"));
    let src = b.source();
    for a in &alerts {
        let id = a["id"].as_str().unwrap_or("?");
        assert!(src.contains(&format!("/alerts/{id}")), "alert {id} missing");
    }
    assert!(b.count("a[href^='/alerts/']") >= alerts.len());
    b.screenshot(&shots().join("alerts.png"));
    // The filter form as a person fills it (the other fields left blank).
    b.type_into("input[name=kind]", "beaconing");
    b.click("form.filters button");
    b.wait_until("the filtered list", |b| b.url().contains("kind=beaconing"));
    let kinds = b.script("return [...document.querySelectorAll('main tbody tr td:nth-child(2)')].map(t => t.textContent)");
    let want = alerts.iter().filter(|a| a["kind"] == "beaconing").count();
    let got = kinds.as_array().cloned().unwrap_or_default();
    assert!(got.iter().all(|k| k == "beaconing") && got.len() >= want, "{got:?}");

    // An alert's detail: its summary, evidence, ATT&CK ids, and the flows behind it.
    let a = &alerts[0];
    b.goto(&format!("{base}/alerts/{}", a["id"].as_str().unwrap_or("")));
    let main = b.text("main");
    assert!(main.contains(a["summary"].as_str().unwrap_or("?")), "{main}");
    for t in a["attack"].as_array().into_iter().flatten() {
        assert!(main.contains(t.as_str().unwrap_or("?")), "{main}");
    }
    b.screenshot(&shots().join("alert.png"));
    // The admin acknowledges it; the page and the list say so.
    b.click("form[action$='/ack'] button");
    b.wait_for_text("Acknowledged by tech");
    b.click("a.button");
    b.wait_until("the flows behind the alert", |b| b.url().contains("/flows?filter="));
    let filter = b
        .script("return document.querySelector('input[name=filter]').value")
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(filter.contains(a["src"].as_str().unwrap_or("?")), "{filter}");
    let from = b.script("return document.querySelector('input[name=from]').value");
    let to = b.script("return document.querySelector('input[name=to]').value");
    let rows = b.count("main table tbody tr td time");
    let cli_rows = cli_json_lines(&[
        os("query"),
        os("--data-dir"),
        data_os,
        os("--filter"),
        os(&filter),
        os("--from"),
        os(from.as_str().unwrap_or("")),
        os("--to"),
        os(to.as_str().unwrap_or("")),
        os("--format"),
        os("jsonl"),
    ]);
    assert!(!cli_rows.is_empty());
    // One time (the start) per flow row; the page shows its first 100.
    assert_eq!(rows, cli_rows.len().min(100), "flows behind the alert: page vs query");
    b.screenshot(&shots().join("flows.png"));

    b.goto(&format!("{base}/alerts"));
    assert!(b.text("main table").contains("✓ tech"), "the list shows the acknowledgement");

    // A filter error says where it is wrong.
    b.goto(&format!("{base}/flows?filter=dst%20prot%2080"));
    assert!(b.text(".error").contains("column"), "{}", b.source());

    // Traffic: three server-drawn charts (bytes, flows, in vs out) and the top lists from the roll-ups.
    b.goto(&format!("{base}/traffic?range=24h"));
    assert_eq!(b.count("svg.chart"), 3);
    assert!(b.count("svg.chart rect") > 10);
    assert!(b.text("main").contains("Top talkers"));
    assert!(b.count("svg.chart.mirrored rect.up") > 0 && b.count("svg.chart.mirrored rect.down") > 0);
    // In vs out of the week's first day (replayed first) is what `query` counts
    // with `direction inbound|outbound` once the replay has passed it.
    b.wait_until("the page's in vs out equals query --filter 'direction …'", |b| {
        let t = b.script("return fetch('/api/v1/traffic?range=7d').then(r => r.json())");
        let (Some(from), Some(to)) = (t["series"][0][0].as_str(), t["series"][12][0].as_str()) else {
            return false;
        };
        let page = |i: usize| -> u64 { (0..12).map(|k| t["in_out"][k][i].as_u64().unwrap_or(0)).sum() };
        let cli = |dir: &str| -> u64 {
            let filter = format!("direction {dir}");
            cli_json_lines(&[
                os("query"),
                os("--data-dir"),
                data_os,
                os("--series"),
                os("1h"),
                os("--filter"),
                os(&filter),
                os("--from"),
                os(from),
                os("--to"),
                os(to),
                os("--format"),
                os("jsonl"),
            ])
            .iter()
            .filter_map(|r| r["bytes"].as_u64())
            .sum()
        };
        let seen = (page(0), page(1));
        seen.0 > 0 && seen.1 > 0 && seen == (cli("inbound"), cli("outbound"))
    });
    // Every top list of the week has rows once the replay has closed some hours
    // (hour lists are written as event time passes them).
    b.wait_until("top lists with rows on /traffic?range=7d", |b| {
        b.goto(&format!("{base}/traffic?range=7d"));
        b.script("return [...document.querySelectorAll('main table')].filter(t => t.querySelector('td.none')).length") == 0
    });
    b.screenshot(&shots().join("traffic.png"));
    let main = b.text("main");
    assert!(
        main.contains("In vs out")
            && main.contains("In: from outside to an internal address")
            && main.contains("Out: from an internal address to outside"),
        "{main}"
    );
    b.script(
        "const h = [...document.querySelectorAll('h2')].find(h => h.textContent == 'In vs out'); window.scrollTo(0, h.offsetTop); return 0",
    );
    b.screenshot(&shots().join("traffic-in-out.png"));
    assert!(main.contains("Countries"), "the week's countries table on /traffic");
    assert!(b.text("footer").contains("NRO"), "the country data's attribution");
    b.script(
        "const h = [...document.querySelectorAll('h2')].find(h => h.textContent == 'Countries'); window.scrollTo(0, h.offsetTop); return 0",
    );
    b.screenshot(&shots().join("traffic-countries.png"));

    for (path, expect) in [
        ("/storage", "Flows kept"),
        ("/forwarding", "No SIEM destination"),
        ("/system", "Audit log"),
    ] {
        b.goto(&format!("{base}{path}"));
        let main = b.text("main");
        assert!(main.contains(expect), "{path}: {main}");
        b.screenshot(&shots().join(format!("{}.png", &path[1..])));
    }
    assert!(b.text("main").contains("setup"), "the audit log shows the first admin's setup");
    let main = b.text("main");
    assert!(
        main.contains("Backup and restore") && main.contains("Download backup") && main.contains("Restore and restart"),
        "the admin's /system has backup and restore: {main}"
    );

    // Settings: name the demo's exporter through the form; the preview shows
    // the change as a diff, "Apply" reloads, and the exporters page shows the name.
    b.goto(&format!("{base}/settings"));
    assert!(b.text("main").contains("built-in defaults are in force"), "{}", b.text("main"));
    b.screenshot(&shots().join("settings.png"));
    b.script("window.scrollTo(0, document.querySelector('#forward').offsetTop); return 0");
    b.screenshot(&shots().join("settings-destinations.png"));
    let exporter = exporters
        .as_array()
        .and_then(|a| a.first())
        .and_then(|e| e["exporter"].as_str())
        .and_then(|a| a.parse::<std::net::SocketAddr>().ok())
        .map(|a| a.ip().to_string())
        .unwrap_or_else(|| panic!("no exporter in the CLI: {exporters}"));
    b.type_into("input[name=e0_address]", &exporter);
    b.type_into("input[name=e0_name]", "demo router");
    b.click("#exporters button[type=submit]");
    b.wait_for_text("Check passed");
    assert!(b.text("pre.diff").contains("+ name = \"demo router\""), "{}", b.text("pre.diff"));
    b.screenshot(&shots().join("settings-preview.png"));
    b.click("form[action='/settings/apply'] button[type=submit]");
    b.wait_for_text("Configuration reloaded");
    b.wait_until("the exporter's name on /exporters", |b| {
        b.goto(&format!("{base}/exporters"));
        b.text("main table").contains("demo router")
    });

    // A phone: the overview fits the width (tables scroll inside their own box).
    b.resize(390, 844);
    b.goto(&format!("{base}/"));
    let fits = b.script("return document.documentElement.scrollWidth <= window.innerWidth + 1");
    assert_eq!(fits, true, "the overview is wider than a phone");
    b.screenshot(&shots().join("overview-phone.png"));

    // Log out from the header.
    b.resize(1280, 1000);
    b.click("header form.who button");
    b.wait_until("the login page after logging out", |b| b.url().ends_with("/login"));
    b.goto(&format!("{base}/"));
    assert!(b.url().ends_with("/login"), "the session ended");
    drop(b);
    r.stop();
}
