//! SIEM forwarding against a real receiver: rsyslog with its gnutls driver on
//! 127.0.0.1 (octet-counted and LF inputs, one requiring a client certificate
//! over TLS 1.3, one with an expired certificate, plain TCP and UDP), with a
//! throwaway CA made by rcgen. Alerts come from the real pipeline (flowgen
//! scans through decode and detection into the state file and its spools) and
//! are forwarded by the `flowwarden run` binary. What lands in rsyslog's files
//! is checked: RFC 5424 headers, CEF through an independent parser (pycef in a
//! throwaway venv), LEEF and ECS JSON fields, sequence ids, exactly-once or
//! marked duplicates across outages and restarts, the spool cap with its gap
//! event, and the TLS failures (wrong CA, wrong name, expired certificate,
//! missing client certificate, wrong fingerprint) with no delivery counted.
//!
//! Needs rsyslog, rsyslog-gnutls and python3 (`cargo xtask deps` installs them).

mod common;

use common::{Running, bin, cli, tool};
use flowgen::{Attack, Exporter, Office, Version, export_stream};
use flowwarden::alert::Alert;
use flowwarden::config::Config;
use flowwarden::pipeline::{Backpressure, Pipeline};
use flowwarden::store::DataDir;
use flowwarden::store::reader::Reader;
use serde_json::Value;
use std::ffi::OsStr;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Monday 2026-11-02 00:00 UTC.
const START: u64 = 1_793_577_600_000;
const HOUR: u64 = 3_600_000;

fn tmp() -> tempfile::TempDir {
    tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"))
}

fn write(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
}

// ---------------------------------------------------------------- certificates

struct Pki {
    dir: PathBuf,
}

impl Pki {
    /// CA, server (localhost + 127.0.0.1), expired server, client, and an unrelated CA.
    fn new(dir: &Path) -> Pki {
        use rcgen::{
            BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType,
        };
        fn ok<T>(r: Result<T, rcgen::Error>) -> T {
            r.unwrap_or_else(|e| panic!("rcgen: {e}"))
        }
        let ca = |name: &str| {
            let key = ok(KeyPair::generate());
            let mut p = ok(CertificateParams::new(Vec::<String>::new()));
            p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            p.distinguished_name.push(DnType::CommonName, name);
            p.key_usages = vec![
                KeyUsagePurpose::KeyCertSign,
                KeyUsagePurpose::CrlSign,
                KeyUsagePurpose::DigitalSignature,
            ];
            let cert = ok(p.self_signed(&key));
            (p, key, cert)
        };
        let (ca_p, ca_k, ca_c) = ca("flowwarden test CA");
        let (_, _, other_c) = ca("some other CA");
        let issuer = Issuer::from_params(&ca_p, &ca_k);
        let leaf = |cn: &str, server: bool, expired: bool| {
            let key = ok(KeyPair::generate());
            let names = if server { vec!["localhost".to_string()] } else { Vec::new() };
            let mut p = ok(CertificateParams::new(names));
            if server {
                p.subject_alt_names.push(SanType::IpAddress(std::net::IpAddr::from([127, 0, 0, 1])));
            }
            p.distinguished_name.push(DnType::CommonName, cn);
            p.extended_key_usages = vec![if server {
                ExtendedKeyUsagePurpose::ServerAuth
            } else {
                ExtendedKeyUsagePurpose::ClientAuth
            }];
            p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
            if expired {
                p.not_before = rcgen::date_time_ymd(2020, 1, 1);
                p.not_after = rcgen::date_time_ymd(2021, 1, 1);
            }
            let cert = ok(p.signed_by(&key, &issuer));
            (cert, key)
        };
        let pki = Pki { dir: dir.to_path_buf() };
        write(&pki.path("ca.pem"), &ca_c.pem());
        write(&pki.path("other-ca.pem"), &other_c.pem());
        for (name, server, expired) in [("server", true, false), ("expired", true, true), ("client", false, false)] {
            let (c, k) = leaf(name, server, expired);
            write(&pki.path(&format!("{name}.pem")), &c.pem());
            write(&pki.path(&format!("{name}.key")), &k.serialize_pem());
            if name == "server" {
                let fp = flowwarden::forward::tls::hex_colon(&flowwarden::forward::tls::sha256(c.der()));
                write(&pki.path("server.fp"), &format!("sha256:{fp}"));
            }
        }
        pki
    }

    fn path(&self, f: &str) -> PathBuf {
        self.dir.join(f)
    }

    fn p(&self, f: &str) -> String {
        self.path(f).display().to_string()
    }
}

// ---------------------------------------------------------------- the receiver

/// rsyslog's inputs in these tests: name → (port, extra imtcp parameters).
const TLS_INPUTS: &[(&str, &str)] = &[
    ("octet", ""),
    ("lf", r#"SupportOctetCountedFraming="off""#),
    (
        "mtls",
        r#"streamDriver.authMode="x509/certvalid" gnutlsPriorityString="NORMAL:-VERS-ALL:+VERS-TLS1.3""#,
    ),
    ("expired", "EXPIRED"),
    ("tcp", r#"streamDriver.name="ptcp" streamDriver.mode="0""#),
];

/// A real rsyslogd on 127.0.0.1, writing each input's raw messages to NAME.log.
struct Rsyslog {
    child: Option<Child>,
    dir: PathBuf,
    ports: Vec<(String, u16)>,
}

fn free_port(udp: bool) -> u16 {
    if udp {
        let s = std::net::UdpSocket::bind("127.0.0.1:0").unwrap_or_else(|e| panic!("{e}"));
        s.local_addr().map(|a| a.port()).unwrap_or_else(|e| panic!("{e}"))
    } else {
        let s = std::net::TcpListener::bind("127.0.0.1:0").unwrap_or_else(|e| panic!("{e}"));
        s.local_addr().map(|a| a.port()).unwrap_or_else(|e| panic!("{e}"))
    }
}

impl Rsyslog {
    /// Configure (fixed ports, so a restart listens where the appliance sends) and start.
    fn new(dir: &Path, pki: &Pki) -> Rsyslog {
        std::fs::create_dir_all(dir.join("work")).unwrap_or_else(|e| panic!("{e}"));
        let mut ports: Vec<(String, u16)> = TLS_INPUTS.iter().map(|(n, _)| (n.to_string(), free_port(false))).collect();
        ports.push(("udp".into(), free_port(true)));
        let d = dir.display();
        let mut conf = format!(
            r#"global(workDirectory="{d}/work" parser.escapeControlCharactersOnReceive="off"
  DefaultNetstreamDriverCAFile="{ca}" DefaultNetstreamDriverCertFile="{cert}" DefaultNetstreamDriverKeyFile="{key}")
module(load="imtcp" StreamDriver.Name="gtls" StreamDriver.Mode="1" StreamDriver.AuthMode="anon")
module(load="imudp")
template(name="raw" type="string" string="%rawmsg%\n")
"#,
            ca = pki.p("ca.pem"),
            cert = pki.p("server.pem"),
            key = pki.p("server.key"),
        );
        for (name, port) in &ports {
            conf.push_str(&format!(
                "ruleset(name=\"{name}\") {{ action(type=\"omfile\" file=\"{d}/{name}.log\" template=\"raw\") }}\n"
            ));
            let extra = TLS_INPUTS.iter().find(|(n, _)| n == name).map(|(_, e)| *e);
            match extra {
                Some("EXPIRED") => conf.push_str(&format!(
                    "input(type=\"imtcp\" address=\"127.0.0.1\" port=\"{port}\" ruleset=\"{name}\" streamDriver.CertFile=\"{}\" streamDriver.KeyFile=\"{}\")\n",
                    pki.p("expired.pem"),
                    pki.p("expired.key")
                )),
                Some(e) => conf.push_str(&format!("input(type=\"imtcp\" address=\"127.0.0.1\" port=\"{port}\" ruleset=\"{name}\" {e})\n")),
                None => conf.push_str(&format!("input(type=\"imudp\" address=\"127.0.0.1\" port=\"{port}\" ruleset=\"{name}\")\n")),
            }
        }
        write(&dir.join("rsyslog.conf"), &conf);
        let mut r = Rsyslog {
            child: None,
            dir: dir.to_path_buf(),
            ports,
        };
        r.start();
        r
    }

    fn port(&self, name: &str) -> u16 {
        self.ports
            .iter()
            .find(|p| p.0 == name)
            .map(|p| p.1)
            .unwrap_or_else(|| panic!("no input {name}"))
    }

    fn start(&mut self) {
        let rsyslogd = tool("rsyslogd", "rsyslog");
        let child = Command::new(rsyslogd)
            .arg("-n")
            .arg("-f")
            .arg(self.dir.join("rsyslog.conf"))
            .arg("-i")
            .arg(self.dir.join("rsyslog.pid"))
            .stdout(Stdio::null())
            .stderr(
                std::fs::File::create(self.dir.join("rsyslogd.stderr"))
                    .map(Stdio::from)
                    .unwrap_or_else(|_| Stdio::null()),
            )
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start rsyslogd: {e}"));
        self.child = Some(child);
        // Ready when every TCP input accepts.
        let deadline = Instant::now() + Duration::from_secs(20);
        for (name, port) in self.ports.clone() {
            if name == "udp" {
                continue;
            }
            while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
                assert!(Instant::now() < deadline, "rsyslogd does not listen on {port} ({name}) after 20 s");
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        // The UDP input opens with the others; give it a moment.
        std::thread::sleep(Duration::from_millis(300));
    }

    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            if let Some(pid) = rustix::process::Pid::from_raw(c.id() as i32) {
                let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
            }
            let t = Instant::now();
            while matches!(c.try_wait(), Ok(None)) && t.elapsed() < Duration::from_secs(10) {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Lines rsyslog wrote for one input.
    fn lines(&self, name: &str) -> Vec<String> {
        std::fs::read_to_string(self.dir.join(format!("{name}.log")))
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect()
    }

    /// Wait until `pred` holds for an input's lines.
    fn wait_for(&self, name: &str, what: &str, pred: impl Fn(&[String]) -> bool) -> Vec<String> {
        wait_until(&format!("{name}: {what}"), || {
            let l = self.lines(name);
            if pred(&l) {
                Ok(l)
            } else {
                Err(format!("{} lines:\n{}", l.len(), l.join("\n")))
            }
        })
    }
}

impl Drop for Rsyslog {
    fn drop(&mut self) {
        self.stop();
    }
}

// ---------------------------------------------------------------- alerts

/// Ingest an office with one horizontal scan per source in `srcs` (an hour
/// apart, starting at `from`) through the pipeline with `cfg`: one alert each.
fn make_alerts(cfg: &Config, dir: &Path, from: u64, srcs: &[u8]) {
    let mut o = Office::new(7, 6);
    for (i, s) in srcs.iter().enumerate() {
        o.attacks.push(Attack::HorizontalScan {
            src: Ipv4Addr::new(10, 20, 1, *s),
            proto: 6,
            port: 445,
            targets: 250,
            at_ms: from + i as u64 * HOUR + 600_000,
            spread_ms: 120_000,
        });
    }
    let to = from + srcs.len() as u64 * HOUR + HOUR;
    let mut p = Pipeline::open(cfg, dir, Backpressure::Block).unwrap_or_else(|e| panic!("{e}"));
    let mut e = Exporter::new(Version::Ipfix, from - HOUR);
    let exporter = SocketAddr::from(([10, 20, 0, 1], 2055));
    let flows = o.flows(from, to);
    for (ts, _, d) in export_stream(&mut e, &flows, 1000) {
        p.datagram(exporter, ts, &d);
    }
    p.finish();
}

fn stored_alerts(dir: &Path) -> Vec<Alert> {
    let (v, bad) = flowwarden::detect::rows::load_alerts(&Reader::new(DataDir::new(dir))).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(bad, 0);
    v.into_iter().map(|s| s.alert).collect()
}

fn config(text: &str, dir: &Path) -> Config {
    let path = dir.join("flowwarden.toml");
    write(&path, text);
    Config::load(&path).unwrap_or_else(|e| panic!("{e}"))
}

fn status(data: &Path) -> Vec<Value> {
    let (ok, out, err) = cli(&[
        OsStr::new("forward-status"),
        OsStr::new("--data-dir"),
        data.as_os_str(),
        OsStr::new("--format"),
        OsStr::new("json"),
    ]);
    assert!(ok, "forward-status failed: {err}");
    let v: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    v["destinations"].as_array().cloned().unwrap_or_default()
}

/// Entries ever spooled for `name` (alerts and their updates).
fn spooled(data: &Path, name: &str) -> u64 {
    dest(&status(data), name)["next_sequence"].as_u64().unwrap_or(1) - 1
}

/// The last message per alert id (an alert updated after it was sent is sent again).
fn latest_by_id(lines: &[(Syslog, String)]) -> Vec<(String, usize)> {
    let mut out: Vec<(String, usize)> = Vec::new();
    for (i, (s, l)) in lines.iter().enumerate() {
        let id = sd_param(&s.sd, "id").unwrap_or_else(|| panic!("no id: {l}"));
        match out.iter_mut().find(|(k, _)| *k == id) {
            Some(e) => e.1 = i,
            None => out.push((id, i)),
        }
    }
    out
}

fn dest<'a>(rows: &'a [Value], name: &str) -> &'a Value {
    rows.iter()
        .find(|r| r["name"] == name)
        .unwrap_or_else(|| panic!("no destination {name} in {rows:?}"))
}

fn wait_status(data: &Path, name: &str, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
    wait_until(&format!("{name}: {what} in forward-status"), || {
        let rows = status(data);
        match rows.iter().find(|r| r["name"] == name) {
            Some(r) if pred(r) => Ok(r.clone()),
            _ => Err(format!("{rows:?}")),
        }
    })
}

/// Poll `probe` until it gives a value (40 s at most; the panic shows the last miss).
fn wait_until<T>(what: &str, mut probe: impl FnMut() -> Result<T, String>) -> T {
    let deadline = Instant::now() + Duration::from_secs(40);
    loop {
        match probe() {
            Ok(v) => return v,
            Err(last) => assert!(Instant::now() < deadline, "{what}: not seen within 40 s; last: {last}"),
        }
        std::thread::sleep(Duration::from_millis(150));
    }
}

// ---------------------------------------------------------------- message checks

/// A parsed RFC 5424 line: (pri, timestamp, hostname, msgid, structured data, body).
struct Syslog {
    pri: u16,
    msgid: String,
    sd: String,
    body: String,
}

/// Validate an RFC 5424 header (as far as flowwarden writes it) and split it.
fn rfc5424(line: &str) -> Syslog {
    let bad = |why: &str| -> ! { panic!("not RFC 5424 ({why}): {line}") };
    let rest = line.strip_prefix('<').unwrap_or_else(|| bad("no <PRI>"));
    let (pri, rest) = rest.split_once(">1 ").unwrap_or_else(|| bad("no VERSION 1"));
    let pri: u16 = pri.parse().unwrap_or_else(|_| bad("PRI not a number"));
    assert!(pri <= 191, "PRI {pri} out of range: {line}");
    let mut it = rest.splitn(5, ' ');
    let ts = it.next().unwrap_or_else(|| bad("no TIMESTAMP"));
    assert_eq!(ts.len(), 24, "timestamp {ts} is not YYYY-MM-DDTHH:MM:SS.mmmZ");
    assert!(
        ts.ends_with('Z') && ts.as_bytes()[10] == b'T' && ts.as_bytes()[19] == b'.',
        "timestamp {ts}"
    );
    flowwarden::timefmt::parse_time(ts, 0).unwrap_or_else(|e| panic!("timestamp {ts}: {e}"));
    let host = it.next().unwrap_or_else(|| bad("no HOSTNAME"));
    assert!(!host.is_empty() && host.chars().all(|c| c.is_ascii_graphic()), "HOSTNAME {host:?}");
    assert_eq!(it.next(), Some("flowwarden"), "APP-NAME: {line}");
    let procid = it.next().unwrap_or_else(|| bad("no PROCID"));
    assert!(procid.chars().all(|c| c.is_ascii_digit()), "PROCID {procid}");
    let rest = it.next().unwrap_or_else(|| bad("no MSGID"));
    let (msgid, rest) = rest.split_once(' ').unwrap_or_else(|| bad("no SD"));
    assert!(msgid.len() <= 32 && msgid.chars().all(|c| c.is_ascii_graphic()), "MSGID {msgid}");
    // Structured data: elements [ID k="v" ...] with \" \\ \] escapes, then one space.
    let b = rest.as_bytes();
    let mut i = 0;
    assert_eq!(b.first(), Some(&b'['), "no SD element: {line}");
    while b.get(i) == Some(&b'[') {
        let mut in_value = false;
        i += 1;
        loop {
            let c = *b.get(i).unwrap_or_else(|| bad("unterminated SD"));
            if in_value && c == b'\\' {
                let n = *b.get(i + 1).unwrap_or_else(|| bad("dangling escape"));
                assert!(matches!(n, b'"' | b'\\' | b']'), "bad SD escape in {line}");
                i += 2;
                continue;
            }
            if c == b'"' {
                in_value = !in_value;
            } else if c == b']' && !in_value {
                i += 1;
                break;
            } else if in_value {
                // Unescaped '"', '\' and ']' never appear inside a value.
                assert!(c != b']', "unescaped ] in SD value: {line}");
            }
            i += 1;
        }
    }
    assert_eq!(b.get(i), Some(&b' '), "no space after SD: {line}");
    Syslog {
        pri,
        msgid: msgid.to_string(),
        sd: rest[..i].to_string(),
        body: rest[i + 1..].to_string(),
    }
}

/// An SD parameter's (unescaped) value.
fn sd_param(sd: &str, name: &str) -> Option<String> {
    let start = sd.find(&format!(" {name}=\""))? + name.len() + 3;
    let mut out = String::new();
    let mut chars = sd[start..].chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => out.push(chars.next()?),
            '"' => return Some(out),
            c => out.push(c),
        }
    }
    None
}

/// Parse CEF lines with pycef (PyPI), installed in a throwaway venv under the target dir.
fn pycef(lines: &[String]) -> Vec<Value> {
    static VENV: std::sync::Mutex<Option<PathBuf>> = std::sync::Mutex::new(None);
    let python = {
        let mut g = VENV.lock().unwrap_or_else(|e| e.into_inner());
        if g.is_none() {
            let venv = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("cef-venv");
            let py = venv.join("bin/python");
            if !py.exists() {
                let ok = Command::new("python3")
                    .args(["-m", "venv"])
                    .arg(&venv)
                    .status()
                    .map(|s| s.success())
                    .unwrap_or(false);
                assert!(ok, "python3 -m venv failed (install python3-venv)");
            }
            let ok = Command::new(&py)
                .args(["-m", "pip", "install", "-q", "--disable-pip-version-check", "pycef==1.11"])
                .status()
                .map(|s| s.success())
                .unwrap_or(false);
            assert!(ok, "pip install pycef==1.11 failed");
            *g = Some(py);
        }
        g.clone().unwrap_or_default()
    };
    let d = tmp();
    let input = d.path().join("cef.txt");
    write(&input, &(lines.join("\n") + "\n"));
    let out = Command::new(python)
        .arg("-c")
        .arg("import json,sys,pycef\nfor l in open(sys.argv[1]):\n    print(json.dumps(pycef.parse(l.rstrip('\\n'))))")
        .arg(&input)
        .output()
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(out.status.success(), "pycef: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

/// CEF extension value as written, unescaped.
fn cef_unescape(v: &str) -> String {
    let mut out = String::new();
    let mut chars = v.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            match chars.next() {
                Some('n') => out.push('\n'),
                Some('r') => out.push('\r'),
                Some(n) => out.push(n),
                None => out.push('\\'),
            }
        } else {
            out.push(c);
        }
    }
    out
}

fn alert_lines(lines: &[String]) -> Vec<(Syslog, String)> {
    lines
        .iter()
        .map(|l| (rfc5424(l), l.clone()))
        .filter(|(s, _)| !matches!(s.msgid.as_str(), "heartbeat" | "gap" | "test"))
        .collect()
}

fn seqs(lines: &[(Syslog, String)]) -> Vec<u64> {
    lines
        .iter()
        .map(|(s, l)| {
            sd_param(&s.sd, "seq")
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| panic!("no seq: {l}"))
        })
        .collect()
}

fn forward_block(name: &str, port: u16, extra: &str) -> String {
    format!("[[forward]]\nname = \"{name}\"\naddress = \"127.0.0.1:{port}\"\nreconnect_min = \"200ms\"\nreconnect_max = \"1s\"\n{extra}\n")
}

const BASE: &str = "[storage]\nbudget = \"256MiB\"\n";

// ---------------------------------------------------------------- tests

#[test]
fn every_format_and_framing_reaches_rsyslog() {
    let d = tmp();
    let pki = Pki::new(d.path());
    let rs = Rsyslog::new(&d.path().join("rsyslog"), &pki);
    let ca = pki.p("ca.pem");
    let fp = std::fs::read_to_string(pki.path("server.fp")).unwrap_or_default();
    let mut text = BASE.to_string();
    text += &forward_block(
        "cef-octet",
        rs.port("octet"),
        &format!("ca_file = \"{ca}\"\nserver_name = \"localhost\"\nheartbeat_interval = \"1s\""),
    );
    text += &forward_block(
        "leef-lf",
        rs.port("lf"),
        &format!("framing = \"lf\"\nformat = \"leef\"\nfingerprint = \"{fp}\""),
    );
    text += &forward_block(
        "json-mtls",
        rs.port("mtls"),
        &format!(
            "format = \"json\"\nca_file = \"{ca}\"\nclient_cert_file = \"{}\"\nclient_key_file = \"{}\"",
            pki.p("client.pem"),
            pki.p("client.key")
        ),
    );
    text += &forward_block("cef-tcp-lf", rs.port("tcp"), "transport = \"tcp\"\nframing = \"lf\"");
    text += &forward_block("json-udp", rs.port("udp"), "transport = \"udp\"\nformat = \"json\"");
    let data = d.path().join("data");
    let cfg = config(&text, d.path());
    make_alerts(&cfg, &data, START + 9 * HOUR, &[91, 92, 93]);
    let alerts = stored_alerts(&data);
    assert!(alerts.len() >= 3, "expected the three scans, got {alerts:?}");
    // Spooled (each alert and its updates), nothing sent yet: ingest does not forward.
    let n = spooled(&data, "cef-octet") as usize;
    assert!(n >= alerts.len(), "{n} entries for {} alerts", alerts.len());
    let before = status(&data);
    assert_eq!(dest(&before, "cef-octet")["queue_depth"], n as u64);
    assert_eq!(dest(&before, "cef-octet")["state"], "never started");

    let cfg_path = d.path().join("flowwarden.toml");
    let run = Running::start(&data, &["--config", &cfg_path.display().to_string()]);
    for input in ["octet", "lf", "mtls", "tcp", "udp"] {
        rs.wait_for(input, "every alert", |l| alert_lines(l).len() >= n);
    }
    let hb = rs.wait_for("octet", "a heartbeat", |l| l.iter().any(|x| x.contains("|heartbeat|")));
    let st = wait_status(&data, "cef-octet", "delivery", |r| {
        r["delivered"].as_u64() >= Some(n as u64) && r["queue_depth"] == 0
    });
    assert_eq!(st["state"], "connected");
    assert!(st["server_cert_not_after"].as_str().is_some(), "{st}");
    let mt = wait_status(&data, "json-mtls", "delivery", |r| r["delivered"].as_u64() >= Some(n as u64));
    assert_eq!(mt["tls_version"], "TLSv1_3", "the mutual-TLS input only speaks TLS 1.3: {mt}");
    assert!(mt["client_cert_not_after"].as_str().is_some());
    run.stop();

    // Every message: a valid RFC 5424 header, one per spool entry, sequence 1..n in order,
    // and the last message of every alert id carries the alert as stored.
    for input in ["octet", "lf", "mtls", "tcp", "udp"] {
        let lines = alert_lines(&rs.lines(input));
        assert_eq!(lines.len(), n, "{input}: one message per spool entry");
        let ids: Vec<String> = latest_by_id(&lines).into_iter().map(|x| x.0).collect();
        let mut want: Vec<String> = alerts.iter().map(|a| a.id.clone()).collect();
        want.sort();
        let mut got_ids = ids.clone();
        got_ids.sort();
        assert_eq!(got_ids, want, "{input}: every alert");
        assert_eq!(seqs(&lines), (1..=n as u64).collect::<Vec<_>>(), "{input}: sequence");
        for (i, (s, _)) in lines.iter().enumerate() {
            let wrapped = format!("[meta sequenceId=\"{}\"]", i + 1);
            assert!(s.sd.starts_with(&wrapped), "{input}: {}", s.sd);
            assert!(sd_param(&s.sd, "resent").is_none(), "{input}: nothing was resent");
            // local4 (20) * 8 + severity.
            assert!((160..=167).contains(&s.pri), "{input}: PRI {}", s.pri);
        }
    }
    let by_id = |id: &str| alerts.iter().find(|a| a.id == id).unwrap_or_else(|| panic!("unknown id {id}"));

    // CEF through pycef, octet-counted TLS and LF plain TCP alike.
    for input in ["octet", "tcp"] {
        let all_lines = alert_lines(&rs.lines(input));
        let raw: Vec<String> = all_lines.iter().map(|(_, l)| l.clone()).collect();
        // Every line parses; the latest per alert carries its fields.
        let parsed = pycef(&raw);
        assert!(
            parsed.iter().all(|p| p["CEFVersion"] == "0" && p["externalId"].is_string()),
            "{parsed:?}"
        );
        let latest = latest_by_id(&all_lines);
        for (p, (s, _)) in latest.iter().map(|(_, i)| (&parsed[*i], &all_lines[*i])) {
            assert_eq!(p["CEFVersion"], "0");
            assert_eq!(p["DeviceVendor"], "flowwarden");
            let id = p["externalId"].as_str().unwrap_or_else(|| panic!("no externalId: {p}"));
            let a = by_id(id);
            assert_eq!(sd_param(&s.sd, "id").as_deref(), Some(id));
            assert_eq!(p["DeviceEventClassID"], a.kind.as_str());
            assert_eq!(s.msgid, a.kind.as_str());
            assert_eq!(p["Severity"], a.severity.to_string());
            assert_eq!(p["src"], a.src.to_string());
            assert_eq!(p["dpt"], a.dst_port.map(|x| x.to_string()).unwrap_or_default());
            assert_eq!(p["start"], a.first_seen_ms.to_string());
            assert_eq!(p["end"], a.last_seen_ms.to_string());
            assert_eq!(p["cnt"], a.count.to_string());
            assert_eq!(p["proto"], "TCP");
            assert_eq!(cef_unescape(p["msg"].as_str().unwrap_or_default()), a.summary);
            assert_eq!(p["attackTechnique"], a.attack.join(","));
            assert_eq!(p["threatAttackID"], a.attack.join(","));
            assert_eq!(p["frameworkName"], "MITRE ATT&CK");
            assert_eq!(p["attackTactic"], "Discovery");
            assert_eq!(p["observed"].as_str().map(|v| v.parse::<u64>().is_ok()), Some(true), "{p}");
            let ev: Value =
                serde_json::from_str(&cef_unescape(p["evidence"].as_str().unwrap_or_default())).unwrap_or_else(|e| panic!("{e}: {p}"));
            assert_eq!(ev, Value::Object(a.evidence.clone()));
            assert_eq!(p["delivery"], "first");
            assert_eq!(p["act"], if a.count > 1 { "update" } else { "alert" });
        }
    }
    // LEEF 2.0 over LF-framed TLS with a pinned certificate.
    let leef = alert_lines(&rs.lines("lf"));
    for (_, i) in latest_by_id(&leef) {
        let l = &leef[i].1;
        let body = &l[l.find("LEEF:").unwrap_or_else(|| panic!("no LEEF: {l}"))..];
        let parts: Vec<&str> = body.splitn(7, '|').collect();
        assert_eq!(
            &parts[..6],
            ["LEEF:2.0", "flowwarden", "flowwarden", env!("CARGO_PKG_VERSION"), "scan", "x09"]
        );
        let kv: std::collections::HashMap<&str, &str> = parts[6].split('\t').filter_map(|p| p.split_once('=')).collect();
        let a = by_id(kv["externalId"]);
        assert_eq!(kv["src"], a.src.to_string());
        assert_eq!(kv["sev"], a.severity.max(1).to_string());
        assert_eq!(kv["cat"], "scan");
        assert_eq!(kv["summary"], a.summary);
        assert_eq!(kv["attackTechnique"], a.attack.join(","));
    }
    // ECS JSON over mutual TLS and over UDP.
    for input in ["mtls", "udp"] {
        let js = alert_lines(&rs.lines(input));
        for (_, i) in latest_by_id(&js) {
            let s = &js[i].0;
            let v: Value = serde_json::from_str(&s.body).unwrap_or_else(|e| panic!("{input}: {e}: {}", s.body));
            let a = by_id(v["event"]["id"].as_str().unwrap_or_default());
            assert_eq!(v["event"]["kind"], "alert");
            assert_eq!(v["source"]["ip"], a.src.to_string());
            assert_eq!(v["event"]["severity"], a.severity);
            assert_eq!(v["flowwarden"]["count"], a.count);
            assert_eq!(v["threat"]["technique"]["id"], serde_json::json!(a.attack));
            assert_eq!(v["flowwarden"]["evidence"], Value::Object(a.evidence.clone()));
            assert_eq!(v["observer"]["product"], "flowwarden");
        }
    }
    // The heartbeat: queue, counters, version.
    let hb_line = hb.iter().find(|x| x.contains("|heartbeat|")).cloned().unwrap_or_default();
    let p = &pycef(std::slice::from_ref(&hb_line))[0];
    assert_eq!(p["DeviceEventClassID"], "heartbeat");
    assert_eq!(p["version"], env!("CARGO_PKG_VERSION"));
    assert!(
        p["queueDepth"].as_str().is_some()
            && p["counters"]
                .as_str()
                .is_some_and(|c| c.contains("flowwarden_store_flows_stored_total:")),
        "{p}"
    );
}

#[test]
fn outages_and_restarts_deliver_everything_once_in_order_and_a_full_spool_says_so() {
    let d = tmp();
    let pki = Pki::new(d.path());
    let mut rs = Rsyslog::new(&d.path().join("rsyslog"), &pki);
    let ca = pki.p("ca.pem");
    let mut text = BASE.to_string();
    text += &forward_block(
        "siem",
        rs.port("octet"),
        &format!("ca_file = \"{ca}\"\nheartbeat_interval = \"0s\""),
    );
    text += &forward_block(
        "small",
        rs.port("tcp"),
        "transport = \"tcp\"\nspool_max_bytes = 4096\nheartbeat_interval = \"0s\"",
    );
    let cfg = config(&text, d.path());
    let cfg_path = d.path().join("flowwarden.toml");
    let cfg_arg = cfg_path.display().to_string();
    let data = d.path().join("data");

    // Phase A: receiver up; alerts delivered.
    make_alerts(&cfg, &data, START + 9 * HOUR, &[81, 82]);
    let n_a = spooled(&data, "siem") as usize;
    let run = Running::start(&data, &["--config", &cfg_arg]);
    rs.wait_for("octet", "phase A", |l| alert_lines(l).len() >= n_a);
    wait_status(&data, "siem", "phase A confirmed", |r| {
        r["queue_depth"] == 0 && r["acked_upto"] == n_a as u64
    });
    // The receiver goes away under a connected appliance.
    rs.stop();
    let down = wait_status(&data, "siem", "the outage", |r| {
        r["state"] == "disconnected" && r["last_error"].is_string()
    });
    assert!(
        down["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("closed") || e.contains("refused") || e.contains("reset")),
        "{down}"
    );
    run.stop();

    // Phase B: alerts made while the receiver is down (by ingest into the same data directory).
    make_alerts(&cfg, &data, START + 20 * HOUR, &[71, 72, 73, 74, 75, 76]);
    let all = stored_alerts(&data);
    assert!(all.len() >= 8, "2 + 6 scans: {all:?}");
    let n_b = spooled(&data, "siem") as usize - n_a;
    assert!(n_b >= 6, "six more scans: {n_b} entries");
    // The appliance restarts with the receiver still down: nothing is delivered, nothing lost.
    let run = Running::start(&data, &["--config", &cfg_arg]);
    // (The state's counters are this run's: it never connects, and fails repeatedly.)
    let st = wait_status(&data, "siem", "connection failures", |r| {
        r["connects"] == 0 && r["connect_failures"].as_u64() >= Some(2)
    });
    assert_eq!(st["queue_depth"], n_b as u64, "{st}");
    assert_eq!(st["delivered"], 0, "{st}");
    assert!(st["last_error"].as_str().is_some_and(|e| e.contains("refused")), "{st}");
    assert_eq!(st["last_error_kind"], "connect", "a refused connection is a connect failure: {st}");
    let small = dest(&status(&data), "small").clone();
    assert!(small["dropped"].as_u64() > Some(0), "the 4 KiB spool must have dropped: {small}");
    assert!(small["queue_bytes"].as_u64() <= Some(4096), "cap holds: {small}");
    run.stop();

    // Receiver and appliance back: phase B arrives, in order, once.
    rs.start();
    let run = Running::start(&data, &["--config", &cfg_arg]);
    let lines = rs.wait_for("octet", "phase B", |l| alert_lines(l).len() >= n_a + n_b);
    wait_status(&data, "siem", "phase B confirmed", |r| r["queue_depth"] == 0);
    let small_lines = rs.wait_for("tcp", "the gap event and the newest alerts", |l| {
        l.iter().any(|x| x.contains("|gap|")) && alert_lines(l).len() > n_a
    });
    let small_st = wait_status(&data, "small", "small drained", |r| r["queue_depth"] == 0);
    run.stop();

    let got = alert_lines(&lines);
    let seq = seqs(&got);
    let mut first_time = Vec::new();
    for ((s, l), q) in got.iter().zip(&seq) {
        if first_time.contains(q) {
            assert_eq!(sd_param(&s.sd, "resent").as_deref(), Some("1"), "an unmarked duplicate: {l}");
        } else {
            first_time.push(*q);
        }
    }
    assert_eq!(
        first_time,
        (1..=(n_a + n_b) as u64).collect::<Vec<_>>(),
        "every alert once, in order"
    );
    let ids: Vec<String> = got.iter().filter_map(|(s, _)| sd_param(&s.sd, "id")).collect();
    for a in &all {
        assert!(ids.contains(&a.id), "alert {} never arrived", a.id);
    }

    // The small spool: phase A whole, then a gap notice naming the lost range, then the newest.
    let parsed: Vec<Syslog> = small_lines.iter().map(|l| rfc5424(l)).collect();
    let gap_at = parsed.iter().position(|s| s.msgid == "gap").unwrap_or_else(|| panic!("no gap"));
    let gap = &small_lines[gap_at];
    let p = &pycef(std::slice::from_ref(gap))[0];
    let first_lost: u64 = p["firstLostSequence"].as_str().and_then(|v| v.parse().ok()).unwrap_or(0);
    let last_lost: u64 = p["lastLostSequence"].as_str().and_then(|v| v.parse().ok()).unwrap_or(0);
    assert_eq!(first_lost, n_a as u64 + 1, "{gap}");
    assert_eq!(p["cnt"], (last_lost - first_lost + 1).to_string());
    assert_eq!(small_st["dropped"].as_u64(), Some(last_lost - first_lost + 1), "{small_st}");
    let after: Vec<u64> = parsed[gap_at + 1..]
        .iter()
        .filter(|s| s.msgid == "scan")
        .filter_map(|s| sd_param(&s.sd, "seq").and_then(|v| v.parse().ok()))
        .collect();
    assert_eq!(
        after,
        (last_lost + 1..=(n_a + n_b) as u64).collect::<Vec<_>>(),
        "after the gap: the rest, in order"
    );
}

#[test]
fn tls_failures_are_clear_and_deliver_nothing() {
    let d = tmp();
    let pki = Pki::new(d.path());
    let rs = Rsyslog::new(&d.path().join("rsyslog"), &pki);
    let (octet, mtls, expired) = (rs.port("octet"), rs.port("mtls"), rs.port("expired"));
    let cases = [
        (
            "wrong-ca",
            octet,
            format!("ca_file = \"{}\"", pki.p("other-ca.pem")),
            "not signed by a CA",
        ),
        (
            "wrong-name",
            octet,
            format!("ca_file = \"{}\"\nserver_name = \"siem.example.org\"", pki.p("ca.pem")),
            "not valid for the name",
        ),
        ("expired", expired, format!("ca_file = \"{}\"", pki.p("ca.pem")), "expired"),
        (
            "no-client-cert",
            mtls,
            format!("ca_file = \"{}\"", pki.p("ca.pem")),
            "client certificate",
        ),
        (
            "wrong-pin",
            octet,
            format!("fingerprint = \"sha256:{}\"", flowwarden::forward::tls::hex_colon(&[7u8; 32])),
            "does not match the configured fingerprint",
        ),
    ];
    let mut text = BASE.to_string();
    for (name, port, extra, _) in &cases {
        text += &forward_block(name, *port, &format!("{extra}\nheartbeat_interval = \"0s\""));
    }
    let cfg = config(&text, d.path());
    let cfg_path = d.path().join("flowwarden.toml");
    let out = Command::new(bin())
        .args(["forward-test", "--config"])
        .arg(&cfg_path)
        .output()
        .unwrap_or_else(|e| panic!("{e}"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "forward-test must fail: {stdout}");
    for (name, _, _, why) in &cases {
        let line = stdout
            .lines()
            .find(|l| l.starts_with(&format!("{name}: ")))
            .unwrap_or_else(|| panic!("no line for {name}: {stdout}"));
        assert!(
            line.contains("FAILED") && line.contains(why),
            "{name}: expected {why:?} in {line:?}"
        );
    }
    // In `run`, the same failures stay in the destination state; nothing is delivered or removed.
    let data = d.path().join("data");
    make_alerts(&cfg, &data, START + 9 * HOUR, &[61]);
    let n = spooled(&data, "wrong-ca");
    let run = Running::start(&data, &["--config", &cfg_path.display().to_string()]);
    for (name, _, _, why) in &cases {
        let st = wait_status(&data, name, "a failure", |r| {
            r["last_error"].as_str().is_some_and(|e| e.contains(why))
        });
        assert_eq!(st["delivered"], 0, "{st}");
        assert_eq!(st["queue_depth"], n, "{st}");
        assert_ne!(st["state"], "connected", "{st}");
        // A server certificate is judged in the handshake; TLS 1.3 reports a
        // rejected client certificate only on the first read (delivery).
        let kind = if *name == "no-client-cert" {
            ["connect", "delivery"]
        } else {
            ["connect", "connect"]
        };
        assert!(kind.contains(&st["last_error_kind"].as_str().unwrap_or("")), "{name}: {st}");
    }
    run.stop();
    for input in ["octet", "mtls", "expired"] {
        assert!(
            alert_lines(&rs.lines(input)).is_empty(),
            "{input} received something: {:?}",
            rs.lines(input)
        );
    }
}

/// A receiver that takes a batch and then drops the connection (as a crashing or
/// restarting collector does) must see it again, marked: the first connection's
/// messages were never confirmed, so they stay spooled and the next connection
/// carries them with resent="1". rsyslog cannot be made to do this on cue, so
/// the peer here is a bare TCP listener in the test.
#[test]
fn unconfirmed_batches_are_sent_again_marked() {
    use std::io::Read;
    let d = tmp();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap_or_else(|e| panic!("{e}"));
    let port = listener.local_addr().map(|a| a.port()).unwrap_or_else(|e| panic!("{e}"));
    let text = BASE.to_string() + &forward_block("flaky", port, "transport = \"tcp\"\nheartbeat_interval = \"0s\"");
    let cfg = config(&text, d.path());
    let data = d.path().join("data");
    make_alerts(&cfg, &data, START + 9 * HOUR, &[51]);
    let n = spooled(&data, "flaky");
    let peer = std::thread::spawn(move || {
        let mut got = Vec::new();
        // First connection: read the first bytes of a batch, then close without a word.
        let (mut c1, _) = listener.accept().unwrap_or_else(|e| panic!("{e}"));
        let mut buf = [0u8; 65536];
        let k = c1.read(&mut buf).unwrap_or_else(|e| panic!("{e}"));
        got.push(String::from_utf8_lossy(&buf[..k]).into_owned());
        drop(c1);
        // Second connection: read everything until the appliance closes it.
        let (mut c2, _) = listener.accept().unwrap_or_else(|e| panic!("{e}"));
        let mut all = Vec::new();
        let _ = c2.read_to_end(&mut all);
        got.push(String::from_utf8_lossy(&all).into_owned());
        got
    });
    let cfg_path = d.path().join("flowwarden.toml");
    let run = Running::start(&data, &["--config", &cfg_path.display().to_string()]);
    let st = wait_status(&data, "flaky", "the resend confirmed", |r| {
        r["queue_depth"] == 0 && r["delivered"].as_u64() == Some(n)
    });
    assert_eq!(st["resent"], n, "every entry of the unconfirmed batch comes again, marked: {st}");
    assert_eq!(st["connects"], 2, "{st}");
    run.stop();
    let got = peer.join().unwrap_or_else(|_| panic!("peer thread"));
    assert!(
        got[0].contains("[meta sequenceId=\"1\"]") && !got[0].contains("resent="),
        "first try: {}",
        got[0]
    );
    // Octet-counted frames on the second connection: every one is marked, in order 1..n.
    let mut rest = got[1].as_str();
    let mut seqs = Vec::new();
    while let Some((len, tail)) = rest.split_once(' ') {
        let len: usize = len.parse().unwrap_or_else(|_| panic!("bad frame length {len:?}"));
        let msg = &tail[..len];
        let s = rfc5424(msg);
        assert_eq!(sd_param(&s.sd, "resent").as_deref(), Some("1"), "{msg}");
        assert!(msg.contains("cs6=resent"), "{msg}");
        seqs.push(sd_param(&s.sd, "seq").and_then(|v| v.parse::<u64>().ok()).unwrap_or(0));
        rest = &tail[len..];
    }
    assert_eq!(seqs, (1..=n).collect::<Vec<_>>());
}

#[test]
fn page_audit_events_reach_rsyslog() {
    let d = tmp();
    let pki = Pki::new(d.path());
    let rs = Rsyslog::new(&d.path().join("rsyslog"), &pki);
    let ca = pki.p("ca.pem");
    let mut text = BASE.to_string();
    text += &forward_block(
        "cef-octet",
        rs.port("octet"),
        &format!("ca_file = \"{ca}\"\nserver_name = \"localhost\""),
    );
    text += &forward_block(
        "json-tcp",
        rs.port("tcp"),
        "transport = \"tcp\"\nframing = \"lf\"\nformat = \"json\"",
    );
    let cfg_path = d.path().join("flowwarden.toml");
    write(&cfg_path, &text);
    let data = d.path().join("data");
    let (ok, _, err) = common::user_set(&data, "tech", "admin", "a good long password\n");
    assert!(ok, "{err}");
    let run = Running::start(&data, &["--config", &cfg_path.display().to_string()]);
    let (addr, fp) = run.web.clone().unwrap_or_else(|| panic!("no web line"));
    let mut c = common::https::Client::new(addr, &fp);
    for password in ["not the password", "a good long password"] {
        c.login("tech", password);
    }
    // CEF over TLS: syslog MSGID audit, cat=audit, the actor and the source address.
    let lines = rs.wait_for("octet", "the failed and the good login", |l| {
        l.iter().filter(|x| x.contains("cat=audit")).count() >= 2
    });
    let audit: Vec<&String> = lines.iter().filter(|x| x.contains("cat=audit")).collect();
    let failed = audit
        .iter()
        .find(|x| x.contains("act=login_failed"))
        .unwrap_or_else(|| panic!("{audit:?}"));
    assert!(
        failed.contains(" audit ") && failed.contains("|audit|"),
        "MSGID and signature: {failed}"
    );
    assert!(failed.contains("src=127.0.0.1") && failed.contains("suser=tech"), "{failed}");
    let ok = audit
        .iter()
        .find(|x| x.contains("act=login "))
        .unwrap_or_else(|| panic!("{audit:?}"));
    assert!(ok.contains("suser=tech"), "{ok}");
    // ECS JSON: authentication events with their outcome.
    let json = rs.wait_for("tcp", "audit events", |l| l.iter().filter(|x| x.contains("\"audit\"")).count() >= 2);
    let outcomes: Vec<String> = json
        .iter()
        .filter_map(|l| l.find('{').map(|i| &l[i..]))
        .filter_map(|j| serde_json::from_str::<Value>(j).ok())
        .filter(|v| v["event"]["dataset"] == "flowwarden.audit")
        .map(|v| format!("{}:{}", v["event"]["action"], v["event"]["outcome"]))
        .collect();
    assert!(outcomes.contains(&"\"login_failed\":\"failure\"".to_string()), "{outcomes:?}");
    assert!(outcomes.contains(&"\"login\":\"success\"".to_string()), "{outcomes:?}");
    run.stop();
}
