//! The status page over real HTTPS against a running appliance (`run` on
//! 127.0.0.1:0): listener lines, first-admin setup with the one-time code,
//! every route behind a session, roles, CSRF, bearer tokens, the login
//! throttle, the security headers, `/metrics` in the Prometheus text format,
//! and the JSON twins against the CLI's own views of the same data directory.

mod common;

use common::Running;
use common::https::{Client, Resp, csrf_field};
use std::ffi::OsStr;
use std::io::{Read, Write};

use std::path::Path;

const PASSWORD: &str = "a good long password";

const HTML_ROUTES: [&str; 9] = [
    "/",
    "/exporters",
    "/traffic",
    "/alerts",
    "/alerts/0123456789abcdef",
    "/flows?filter=any",
    "/storage",
    "/forwarding",
    "/system",
];
const API_ROUTES: [&str; 9] = [
    "/api/v1/status",
    "/api/v1/exporters",
    "/api/v1/traffic",
    "/api/v1/alerts",
    "/api/v1/alerts/0123456789abcdef",
    "/api/v1/flows",
    "/api/v1/storage",
    "/api/v1/forwarding",
    "/api/v1/system",
];

fn os(s: &str) -> &OsStr {
    OsStr::new(s)
}

fn tmp() -> tempfile::TempDir {
    tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"))
}

fn client(r: &Running) -> Client {
    let (addr, fp) = r.web.clone().unwrap_or_else(|| panic!("run printed no web line"));
    Client::new(addr, &fp)
}

fn user_set(dir: &Path, name: &str, role: &str) {
    let (ok, _, err) = common::user_set(dir, name, role, &format!("{PASSWORD}\n"));
    assert!(ok, "{err}");
}

fn token(dir: &Path, name: &str, role: &str) -> String {
    let (ok, out, err) = common::token_create(dir, name, role);
    assert!(ok, "{err}");
    out.trim().to_string()
}

/// The actions in the page's audit log (`/api/v1/system`).
fn audit_actions(c: &mut Client) -> Vec<String> {
    let v = c.get("/api/v1/system").json();
    v["audit"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| e["action"].as_str().map(String::from))
        .collect()
}

fn login(c: &mut Client, user: &str, password: &str) -> Resp {
    c.login(user, password)
}

fn assert_headers(r: &Resp, what: &str) {
    let csp = r.header("content-security-policy").unwrap_or_default();
    assert!(
        csp.starts_with("default-src 'none'") && csp.contains("frame-ancestors 'none'"),
        "{what}: {csp}"
    );
    assert!(!csp.contains("unsafe-inline"), "{what}: {csp}");
    assert_eq!(r.header("x-content-type-options"), Some("nosniff"), "{what}");
    assert_eq!(r.header("referrer-policy"), Some("no-referrer"), "{what}");
    assert_eq!(r.header("cache-control"), Some("no-store"), "{what}");
}

#[test]
fn first_admin_setup_then_every_route_needs_a_session() {
    let d = tmp();
    let r = Running::start(d.path(), &[]);
    let (addr, fp) = r.web.clone().unwrap_or_else(|| panic!("no web line"));
    assert_ne!(addr.port(), 0, "the line shows the bound port");
    assert!(fp.starts_with("sha256:") && fp.len() == 7 + 32 * 3 - 1, "{fp}");
    let code = r.setup_code.clone().unwrap_or_else(|| panic!("no setup code printed"));
    assert_eq!(code.len(), 14, "{code}");

    // Plain HTTP to the HTTPS port gets no page.
    let mut plain = std::net::TcpStream::connect(addr).unwrap_or_else(|e| panic!("{e}"));
    let _ = plain.set_read_timeout(Some(std::time::Duration::from_secs(15)));
    let _ = plain.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
    let mut got = Vec::new();
    let _ = plain.read_to_end(&mut got);
    assert!(
        !String::from_utf8_lossy(&got).contains("HTTP/1.1 "),
        "{:?}",
        String::from_utf8_lossy(&got)
    );

    let mut c = client(&r);
    for p in HTML_ROUTES {
        let res = c.get(p);
        assert_eq!((res.status, res.header("location")), (303, Some("/login")), "{p}");
        assert_headers(&res, p);
    }
    for p in API_ROUTES {
        let res = c.get(p);
        assert_eq!(res.status, 401, "{p}");
        assert!(res.json()["error"].is_string(), "{p}");
    }
    assert_eq!(c.get("/metrics").status, 401);

    // The setup form while no admin exists; a wrong code is refused.
    let page = c.get("/login");
    assert!(
        page.body.contains("name=\"code\"") && page.body.contains("First-time setup"),
        "{}",
        page.body
    );
    let csrf = csrf_field(&page.body);
    let form = |code: &str, pw: &str| {
        vec![
            ("code", code.to_string()),
            ("user", "tech".to_string()),
            ("password", pw.to_string()),
            ("password2", pw.to_string()),
            ("csrf", csrf.clone()),
        ]
    };
    let post = |c: &mut Client, f: Vec<(&str, String)>| {
        let f: Vec<(&str, &str)> = f.iter().map(|(k, v)| (*k, v.as_str())).collect();
        c.post_form("/setup", &f)
    };
    assert_eq!(post(&mut c, form("AAAA-AAAA-AAAA", PASSWORD)).status, 401);
    let short = post(&mut c, form(&code, "short"));
    assert_eq!(short.status, 400, "{}", short.body);
    let same = post(&mut c, form(&code, &code));
    assert!(same.status == 400 && same.body.contains("setup code"), "{}", same.body);
    let res = post(&mut c, form(&code, PASSWORD));
    assert_eq!((res.status, res.header("location")), (303, Some("/")), "{}", res.body);
    let cookie = res
        .all("set-cookie")
        .into_iter()
        .find(|c| c.starts_with("__Host-fw_session="))
        .unwrap_or_else(|| panic!("no session cookie: {:?}", res.headers));
    for attr in ["Secure", "HttpOnly", "SameSite=Strict", "Path=/"] {
        assert!(cookie.contains(attr), "{cookie}");
    }
    // The code died with the first admin.
    let mut other = client(&r);
    let p = other.get("/login");
    assert!(
        !p.body.contains("name=\"code\"") && p.body.contains("type=\"password\""),
        "{}",
        p.body
    );
    let csrf2 = csrf_field(&p.body);
    let again = other.post_form(
        "/setup",
        &[
            ("code", &code),
            ("user", "evil"),
            ("password", PASSWORD),
            ("password2", PASSWORD),
            ("csrf", &csrf2),
        ],
    );
    assert_eq!(again.status, 409);

    // The login form: one text input, one password input, a submit button.
    assert_eq!(p.body.matches("type=\"text\"").count(), 1, "{}", p.body);
    assert_eq!(p.body.matches("type=\"password\"").count(), 1);
    assert_eq!(p.body.matches("type=\"submit\"").count(), 1);

    // Every page and its twin with the session.
    for p in HTML_ROUTES.iter().chain(API_ROUTES.iter()) {
        let res = c.get(p);
        let want = if p.contains("0123456789abcdef") { 404 } else { 200 };
        assert_eq!(res.status, want, "{p}: {}", res.body);
        assert_headers(&res, p);
    }
    let status = c.get("/api/v1/status").json();
    assert_eq!(status["web"][0], format!("https://{addr}/"));
    assert_eq!(status["certificate"], fp);
    assert!(status["checks"].as_array().is_some_and(|l| l.len() >= 5), "{status}");

    // Log out: the session is gone.
    let home = c.get("/");
    let csrf = csrf_field(&home.body);
    let out = c.post_form("/logout", &[("csrf", &csrf)]);
    assert_eq!((out.status, out.header("location")), (303, Some("/login")));
    assert_eq!(c.get("/").status, 303);
    let (status, lines) = r.stop_output();
    assert!(status.success(), "{lines:?}");
}

#[test]
fn roles_csrf_tokens_throttle_and_metrics() {
    let d = tmp();
    user_set(d.path(), "boss", "admin");
    user_set(d.path(), "watcher", "viewer");
    let viewer_token = token(d.path(), "script", "viewer");
    let metrics_token = token(d.path(), "prom", "metrics");
    let r = Running::start(d.path(), &[]);
    assert_eq!(r.setup_code, None, "an admin exists: no setup code");

    // A viewer sees pages but every admin action is 403.
    let mut v = client(&r);
    assert_eq!(login(&mut v, "watcher", PASSWORD).status, 303);
    let sys = v.get("/system");
    assert_eq!(sys.status, 200);
    assert!(!sys.body.contains("Add or change user"), "a viewer gets no user admin");
    let csrf = csrf_field(&sys.body);
    let res = v.post_form("/system/users", &[("csrf", &csrf), ("action", "remove"), ("user", "boss")]);
    assert_eq!(res.status, 403);
    assert_eq!(
        v.post_form("/forwarding/test", &[("csrf", &csrf), ("destination", "x")]).status,
        403
    );
    assert_eq!(v.post_form("/alerts/fw-0123456789abcdef/ack", &[("csrf", &csrf)]).status, 403);

    // An admin: CSRF token and origin are both required.
    let mut a = client(&r);
    assert_eq!(login(&mut a, "boss", PASSWORD).status, 303);
    let sys = a.get("/system");
    let csrf = csrf_field(&sys.body);
    let add = [
        ("csrf", csrf.as_str()),
        ("action", "set"),
        ("user", "helper"),
        ("role", "viewer"),
        ("password", PASSWORD),
    ];
    let mut no_token = add;
    no_token[0] = ("csrf", "");
    assert_eq!(a.post_form("/system/users", &no_token).status, 403);
    let cross = a.post_form_with(
        "/system/users",
        &add,
        &[("Origin", "https://evil.example"), ("Sec-Fetch-Site", "cross-site")],
    );
    assert_eq!(cross.status, 403);
    let ok = a.post_form("/system/users", &add);
    assert_eq!(ok.status, 200, "{}", ok.body);
    let (lst_ok, list, _) = common::cli(&[os("user"), os("list"), os("--data-dir"), d.path().as_os_str()]);
    assert!(lst_ok && list.contains("helper"), "{list}");
    let last = a.post_form("/system/users", &[("csrf", &csrf), ("action", "remove"), ("user", "boss")]);
    assert!(last.status == 400 && last.body.contains("last admin"), "{}", last.body);
    // The audit log shows what happened.
    let actions = audit_actions(&mut a);
    assert!(
        actions.iter().any(|a| a == "login") && actions.iter().any(|a| a == "user_change"),
        "{actions:?}"
    );

    // The diagnostics bundle: admins only, one JSON attachment without secrets.
    assert_eq!(v.get("/system/diagnostics").status, 403);
    let diag = a.get("/system/diagnostics");
    assert_eq!(diag.status, 200);
    assert!(diag.header("content-disposition").is_some_and(|h| h.starts_with("attachment;")));
    let dj = diag.json();
    assert!(dj["status"]["checks"].is_array() && dj["metrics"].as_str().is_some_and(|m| m.contains("flowwarden_")));
    assert!(
        !diag.body.contains("$argon2id$") && !diag.body.contains(&viewer_token),
        "no hashes or tokens"
    );

    // Bearer tokens: viewer for the API, metrics for /metrics, nothing else.
    let bearer = |t: &str| format!("Bearer {t}");
    let mut t = client(&r);
    assert_eq!(
        t.get_with("/api/v1/status", &[("Authorization", &bearer(&viewer_token))]).status,
        200
    );
    assert_eq!(t.get_with("/metrics", &[("Authorization", &bearer(&viewer_token))]).status, 401);
    assert_eq!(
        t.get_with("/api/v1/status", &[("Authorization", &bearer(&metrics_token))]).status,
        403
    );
    assert_eq!(t.get_with("/api/v1/status", &[("Authorization", "Bearer fwt_nope")]).status, 401);
    assert_eq!(
        t.get_with("/", &[("Authorization", &bearer(&viewer_token))]).status,
        303,
        "tokens do not open pages"
    );
    let m = t.get_with("/metrics", &[("Authorization", &bearer(&metrics_token))]);
    assert_eq!(m.status, 200);
    assert!(m.header("content-type").is_some_and(|c| c.starts_with("text/plain; version=0.0.4")));
    check_prometheus(&m.body);

    // Password guessing: after a few failures, 429 with the wait, even for the right password.
    let mut g = client(&r);
    for _ in 0..4 {
        assert_eq!(login(&mut g, "watcher", "wrong password!").status, 401);
    }
    let blocked = login(&mut g, "watcher", PASSWORD);
    assert_eq!(blocked.status, 429, "{}", blocked.body);
    assert!(blocked.body.contains("try again in"), "{}", blocked.body);
    let actions = audit_actions(&mut a);
    assert!(
        actions.iter().any(|a| a == "login_failed") && actions.iter().any(|a| a == "login_throttled"),
        "{actions:?}"
    );
    let m = t.get_with("/metrics", &[("Authorization", &bearer(&metrics_token))]);
    assert!(m.body.contains("flowwarden_web_logins_total{result=\"throttled\"}"), "{}", m.body);
    r.stop();
}

/// Every line of a Prometheus text exposition (0.0.4) parses; names and types follow the rules.
fn check_prometheus(text: &str) {
    let mut types = std::collections::BTreeMap::new();
    let mut samples = 0;
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut p = rest.split(' ');
            let (name, ty) = (p.next().unwrap_or_default(), p.next().unwrap_or_default());
            assert!(matches!(ty, "counter" | "gauge"), "{line}");
            assert!(types.insert(name.to_string(), ty.to_string()).is_none(), "TYPE twice: {line}");
            continue;
        }
        if line.starts_with("# HELP ") || line.is_empty() {
            continue;
        }
        let (series, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("no value: {line}"));
        assert!(value.parse::<f64>().is_ok(), "{line}");
        let name = series.split('{').next().unwrap_or_default();
        assert!(name.starts_with("flowwarden_"), "{line}");
        assert!(name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'), "{line}");
        let ty = types.get(name).unwrap_or_else(|| panic!("sample before its TYPE: {line}"));
        assert_eq!(ty == "counter", name.ends_with("_total"), "{line}");
        if let Some(labels) = series.strip_prefix(name)
            && !labels.is_empty()
        {
            assert!(labels.starts_with('{') && labels.ends_with('}'), "{line}");
            for kv in labels[1..labels.len() - 1].split("\",") {
                let (k, v) = kv.split_once('=').unwrap_or_else(|| panic!("{line}"));
                assert!(k.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'), "{line}");
                assert!(v.starts_with('"'), "{line}");
            }
        }
        samples += 1;
    }
    assert!(samples > 10, "{text}");
}

#[test]
fn json_twins_show_what_the_cli_shows() {
    let d = tmp();
    let cfg = d.path().join("replay.toml");
    std::fs::write(&cfg, "[collector]\nmax_clock_skew = \"36500d\"\n").unwrap_or_else(|e| panic!("{e}"));
    let data = d.path().join("data");
    let capture = common::captures().join("exported/softflowd_tcp_0_1000_20190821_v9.pcap");
    let (ok, _, err) = common::cli(&[
        os("ingest"),
        os("--config"),
        cfg.as_os_str(),
        os("--data-dir"),
        data.as_os_str(),
        capture.as_os_str(),
    ]);
    assert!(ok, "{err}");
    user_set(&data, "analyst", "viewer");
    let r = Running::start(&data, &[]);
    let mut c = client(&r);
    assert_eq!(login(&mut c, "analyst", PASSWORD).status, 303);

    // Alerts: the same objects as `alerts --format jsonl`.
    let (ok, jsonl, err) = common::cli(&[os("alerts"), os("--data-dir"), data.as_os_str(), os("--format"), os("jsonl")]);
    assert!(ok, "{err}");
    let cli: Vec<serde_json::Value> = jsonl.lines().map(|l| serde_json::from_str(l).unwrap_or_default()).collect();
    assert_eq!(cli.len(), 1, "{jsonl}");
    let api = c.get("/api/v1/alerts").json();
    assert_eq!(api["alerts"].as_array().cloned().unwrap_or_default(), cli);
    let id = cli[0]["id"].as_str().unwrap_or_default().to_string();
    let page = c.get("/alerts");
    assert!(page.body.contains(&format!("/alerts/{id}")), "{}", page.body);
    assert_eq!(c.get("/api/v1/alerts?kind=beaconing").json()["total"], 0);
    assert_eq!(c.get("/api/v1/alerts?kind=scan").json()["total"], 1);
    let bad = c.get("/api/v1/alerts?kind=worm").json();
    assert!(bad["error"].as_str().is_some_and(|e| e.contains("worm")), "{bad}");

    // The alert's detail links to the flows behind it; they are what `query` finds.
    let detail = c.get(&format!("/api/v1/alerts/{id}")).json();
    assert_eq!(detail["alert"], cli[0]);
    let filter = detail["flows_filter"].as_str().unwrap_or_default().to_string();
    let (from, to) = (
        detail["flows_from"].as_str().unwrap_or_default().to_string(),
        detail["flows_to"].as_str().unwrap_or_default().to_string(),
    );
    let html = c.get(&format!("/alerts/{id}"));
    assert!(
        html.body.contains("Flows behind this alert") && html.body.contains("T1046"),
        "{}",
        html.body
    );
    let q = |s: &str| s.replace(' ', "%20").replace(':', "%3A").replace('+', "%2B");
    let flows = c.get(&format!(
        "/api/v1/flows?filter={}&from={}&to={}&limit=10000",
        q(&filter),
        q(&from),
        q(&to)
    ));
    assert_eq!(flows.status, 200, "{}", flows.body);
    let flows = flows.json();
    let (ok, out, err) = common::cli(&[
        os("query"),
        os("--data-dir"),
        data.as_os_str(),
        os("--from"),
        os(&from),
        os("--to"),
        os(&to),
        os("--format"),
        os("jsonl"),
        os("--filter"),
        os(&filter),
    ]);
    assert!(ok, "{err}");
    let cli_flows: Vec<serde_json::Value> = out.lines().filter_map(|l| serde_json::from_str(l).ok()).collect();
    assert!(cli_flows.len() > 1000, "{}", cli_flows.len());
    let api_flows = flows["flows"].as_array().cloned().unwrap_or_default();
    assert_eq!(api_flows.len(), cli_flows.len().min(10_000));
    assert_eq!(api_flows[..], cli_flows[..api_flows.len()]);
    // The CSV download has query's columns.
    let csv = c.get(&format!(
        "/flows?filter={}&from={}&to={}&limit=5&format=csv",
        q(&filter),
        q(&from),
        q(&to)
    ));
    assert_eq!(csv.status, 200);
    assert!(
        csv.body
            .starts_with("start,end,src,dst,src_port,dst_port,proto,bytes,packets,tcp_flags"),
        "{}",
        csv.body
    );
    assert_eq!(csv.body.lines().count(), 6);
    // A filter error says where.
    let e = c.get("/api/v1/flows?filter=dst%20prot%2080");
    assert_eq!(e.status, 400);
    assert!(e.json()["error"].as_str().is_some_and(|m| m.contains("column")), "{}", e.body);

    // Exporters: the same exporters as `exporters --format json`.
    let (ok, out, err) = common::cli(&[os("exporters"), os("--data-dir"), data.as_os_str(), os("--format"), os("json")]);
    assert!(ok, "{err}");
    let cli_exp: serde_json::Value = serde_json::from_str(&out).unwrap_or_default();
    let api_exp = c.get("/api/v1/exporters").json();
    let names = |v: &serde_json::Value| -> Vec<String> {
        v.as_array()
            .into_iter()
            .flatten()
            .filter_map(|e| e["exporter"].as_str().map(String::from))
            .collect()
    };
    assert_eq!(names(&api_exp["exporters"]), names(&cli_exp));
    assert_eq!(api_exp["exporters"][0]["records"], cli_exp[0]["records"]);
    // Export lag (first packet / last packet to export, seconds) was measured by
    // `ingest`, kept in the state file, and read back by the CLI and the page alike.
    let lag = &cli_exp[0]["export_lag_s"];
    assert!(
        lag[0]
            .as_u64()
            .is_some_and(|held| held > 0 && lag[1].as_u64().is_some_and(|d| d <= held)),
        "{lag}"
    );
    assert_eq!(api_exp["exporters"][0]["export_lag_s"], *lag);
    let page = c.get("/exporters");
    for n in names(&cli_exp) {
        assert!(page.body.contains(&n), "{n}");
    }
    // Something else on the collector's port (an sFlow agent that also sends
    // syslog there) is named with what it sent and what to change.
    let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap_or_else(|e| panic!("{e}"));
    let sflow = [0u8, 0, 0, 5, 0, 0, 0, 1, 192, 0, 2, 77, 0, 0, 0, 0];
    for d in [&sflow[..], &sflow[..], b"<134>Dec  5 18:00:00 sw1 link up"] {
        udp.send_to(d, ("127.0.0.1", r.port)).unwrap_or_else(|e| panic!("{e}"));
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let unknown = loop {
        let u = c.get("/api/v1/exporters").json()["unknown_senders"].clone();
        if u[0]["datagrams"] == 3 || std::time::Instant::now() > deadline {
            break u;
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    };
    assert_eq!(unknown[0]["sender"], "127.0.0.1", "{unknown}");
    assert_eq!(unknown[0]["looks_like"], "sflow", "{unknown}");
    assert_eq!(unknown[0]["datagrams"], 3, "{unknown}");
    let page = c.get("/exporters");
    assert!(
        page.body.contains("Unknown senders") && page.body.contains("sFlow is not read here"),
        "{}",
        page.body
    );
    let prometheus = token(&data, "prometheus", "metrics");
    let metrics = client(&r).get_with("/metrics", &[("Authorization", &format!("Bearer {prometheus}"))]);
    assert_eq!(metrics.status, 200);
    assert!(
        metrics
            .body
            .contains("flowwarden_decode_unknown_sender_datagrams_total{sender=\"127.0.0.1\",looks_like=\"syslog\"} 1"),
        "{}",
        metrics.body
    );
    // Storage: the flows kept, as the store counts them.
    let st = c.get("/api/v1/storage").json();
    assert!(st["flows_kept"].as_u64().is_some_and(|n| n > 1000), "{st}");
    r.stop();
}

/// HTML text back to what was escaped into it.
fn unescape(s: &str) -> String {
    s.replace("&quot;", "\"")
        .replace("&#39;", "'")
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&amp;", "&")
}

/// The apply form of a preview: (base hash, the whole new file).
fn apply_fields(html: &str) -> (String, String) {
    let base = html
        .split("name=\"base\" value=\"")
        .nth(1)
        .and_then(|r| r.split('"').next())
        .unwrap_or_else(|| panic!("no apply form in {html}"))
        .to_string();
    let text = html
        .split("<textarea name=\"text\" rows=\"20\" readonly class=\"code\">")
        .nth(1)
        .and_then(|r| r.split("</textarea>").next())
        .unwrap_or_else(|| panic!("no new file in {html}"));
    (base, unescape(text))
}

/// A multipart/form-data post from this origin: text fields and (name, file name, bytes) files.
fn post_multipart(c: &mut Client, path: &str, fields: &[(&str, &str)], files: &[(&str, &str, &[u8])]) -> Resp {
    let boundary = "----flowwardentest7d3a";
    let mut body = Vec::new();
    for (k, v) in fields {
        body.extend_from_slice(format!("--{boundary}\r\nContent-Disposition: form-data; name=\"{k}\"\r\n\r\n{v}\r\n").as_bytes());
    }
    for (k, name, bytes) in files {
        body.extend_from_slice(
            format!(
                "--{boundary}\r\nContent-Disposition: form-data; name=\"{k}\"; filename=\"{name}\"\r\nContent-Type: application/x-pem-file\r\n\r\n"
            )
            .as_bytes(),
        );
        body.extend_from_slice(bytes);
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
    let origin = format!("https://localhost:{}", c.addr.port());
    let ct = format!("multipart/form-data; boundary={boundary}");
    c.request(
        "POST",
        path,
        &[("Content-Type", &ct), ("Origin", &origin), ("Sec-Fetch-Site", "same-origin")],
        &body,
    )
}

#[test]
fn settings_are_checked_previewed_applied_by_reload_and_reverted() {
    let d = tmp();
    user_set(d.path(), "boss", "admin");
    user_set(d.path(), "watcher", "viewer");
    // No --config: the page saves DATA_DIR/flowwarden.toml, which `run` reads at reloads and starts.
    let r = Running::start(d.path(), &[]);
    let file = d.path().join("flowwarden.toml");
    let mut anon = client(&r);
    let r0 = anon.get("/settings");
    assert_eq!((r0.status, r0.header("location")), (303, Some("/login")), "settings need a session");

    let mut v = client(&r);
    assert_eq!(login(&mut v, "watcher", PASSWORD).status, 303);
    assert_eq!(v.get("/settings").status, 403, "settings are for admins");
    let csrf_v = csrf_field(&v.get("/").body);
    for path in ["/settings/preview", "/settings/revert", "/settings/apply"] {
        assert_eq!(
            v.post_form(path, &[("csrf", &csrf_v), ("section", "text"), ("text", "")]).status,
            403,
            "{path}"
        );
    }
    assert!(!v.get("/").body.contains("href=\"/settings\""), "no settings link for a viewer");

    let mut a = client(&r);
    assert_eq!(login(&mut a, "boss", PASSWORD).status, 303);
    let page = a.get("/settings");
    assert_eq!(page.status, 200);
    assert_headers(&page, "/settings");
    assert!(page.body.contains("does not exist yet"), "{}", page.body);
    assert!(page.body.contains("10.0.0.0/8\n172.16.0.0/12"), "the defaults in force are shown");
    let csrf = csrf_field(&page.body);

    // Refused: no CSRF token; a form value that is no network; a file that fails check-config.
    assert_eq!(
        a.post_form("/settings/preview", &[("section", "internal"), ("internal", "10.20.0.0/16")])
            .status,
        403
    );
    let bad = a.post_form(
        "/settings/preview",
        &[("csrf", &csrf), ("section", "internal"), ("internal", "10.20.0.0/16\nten")],
    );
    assert_eq!(bad.status, 400);
    assert!(bad.body.contains("internal networks, line 2: &quot;ten&quot;"), "{}", bad.body);
    let bad = a.post_form(
        "/settings/preview",
        &[
            ("csrf", &csrf),
            ("section", "text"),
            ("text", "[network]\ninternal = [\"10.0.0.0/33\"]\n"),
        ],
    );
    assert_eq!(bad.status, 400);
    assert!(
        bad.body.contains("flowwarden.toml:2") && !bad.body.contains("/settings/apply"),
        "{}",
        bad.body
    );
    assert!(!file.exists(), "nothing saved by a preview");

    // Internal networks: preview (a diff), apply, reload.
    let pv = a.post_form(
        "/settings/preview",
        &[
            ("csrf", &csrf),
            ("section", "internal"),
            ("internal", "10.20.0.0/16\r\n192.168.7.0/24"),
        ],
    );
    assert_eq!(pv.status, 200, "{}", pv.body);
    assert!(
        pv.body
            .contains("<span class=\"add\">+ internal = [&quot;10.20.0.0/16&quot;, &quot;192.168.7.0/24&quot;]</span>"),
        "{}",
        pv.body
    );
    assert!(pv.body.contains("Check passed: "), "{}", pv.body);
    let (base, text) = apply_fields(&pv.body);
    let applied = a.post_form(
        "/settings/apply",
        &[("csrf", &csrf), ("base", &base), ("origin", "form"), ("text", &text)],
    );
    assert_eq!(applied.status, 200, "{}", applied.body);
    assert!(applied.body.contains("Configuration reloaded"), "{}", applied.body);
    r.wait_for_line("flowwarden: configuration reloaded", std::time::Duration::from_secs(30));
    let saved = std::fs::read_to_string(&file).unwrap_or_else(|e| panic!("{e}"));
    assert!(saved.contains("internal = [\"10.20.0.0/16\", \"192.168.7.0/24\"]"), "{saved}");
    // The same preview again: the file changed since, so its apply is refused.
    let stale = a.post_form(
        "/settings/apply",
        &[("csrf", &csrf), ("base", &base), ("origin", "form"), ("text", &text)],
    );
    assert_eq!(stale.status, 409);

    // A name for an address: in the file, on the settings page after the reload.
    let pv = a.post_form(
        "/settings/preview",
        &[
            ("csrf", &csrf),
            ("section", "names"),
            ("n0_net", "10.20.1.5"),
            ("n0_name", "front desk"),
        ],
    );
    assert_eq!(pv.status, 200, "{}", pv.body);
    let (base, text) = apply_fields(&pv.body);
    assert!(
        text.contains("[[network.name]]\nnet = \"10.20.1.5/32\"\nname = \"front desk\""),
        "{text}"
    );
    let applied = a.post_form(
        "/settings/apply",
        &[("csrf", &csrf), ("base", &base), ("origin", "form"), ("text", &text)],
    );
    assert_eq!(applied.status, 200, "{}", applied.body);
    r.wait_for_line("flowwarden: configuration reloaded", std::time::Duration::from_secs(30));
    assert!(a.get("/settings").body.contains("value=\"front desk\""));

    // The management network: in the file and the form; off the image nothing applies it
    // (the reload says so) and there is nothing to keep.
    let pv = a.post_form(
        "/settings/preview",
        &[
            ("csrf", &csrf),
            ("section", "management"),
            ("m_mode", "static"),
            ("m_address", "192.0.2.10/24"),
            ("m_gateway", "192.0.2.1"),
            ("m_vlan", "20"),
            ("m_confirm", "2m"),
        ],
    );
    assert_eq!(pv.status, 200, "{}", pv.body);
    assert!(pv.body.contains("<span class=\"add\">+ vlan = 20</span>"), "{}", pv.body);
    let (base, text) = apply_fields(&pv.body);
    let applied = a.post_form(
        "/settings/apply",
        &[("csrf", &csrf), ("base", &base), ("origin", "form"), ("text", &text)],
    );
    assert_eq!(applied.status, 200, "{}", applied.body);
    assert!(
        applied
            .body
            .contains("the [management] settings are used by the appliance image only"),
        "{}",
        applied.body
    );
    r.wait_for_line("flowwarden: configuration reloaded", std::time::Duration::from_secs(30));
    let saved = std::fs::read_to_string(&file).unwrap_or_else(|e| panic!("{e}"));
    assert!(
        saved.contains(
            "[management]\nmode = \"static\"\naddress = \"192.0.2.10/24\"\ngateway = \"192.0.2.1\"\nvlan = 20\nconfirm_within = \"120s\"\n"
        ),
        "{saved}"
    );
    let page = a.get("/settings");
    assert!(
        page.body.contains("<option value=\"static\" selected>") && page.body.contains("name=\"m_vlan\" value=\"20\""),
        "{}",
        page.body
    );
    let bad = a.post_form(
        "/settings/preview",
        &[
            ("csrf", &csrf),
            ("section", "management"),
            ("m_mode", "static"),
            ("m_address", "192.0.2.10/24"),
            ("m_gateway", "198.51.100.1"),
        ],
    );
    assert_eq!(bad.status, 400);
    assert!(
        bad.body
            .contains("management network, gateway: 198.51.100.1 is not inside 192.0.2.10/24"),
        "{}",
        bad.body
    );
    let keep = a.post_form("/system/network/keep", &[("csrf", &csrf)]);
    assert_eq!(keep.status, 409);
    assert!(keep.body.contains("PID 1 does not manage the network here"), "{}", keep.body);
    assert_eq!(
        v.post_form("/system/network/keep", &[("csrf", &csrf_v)]).status,
        403,
        "keeping is for admins"
    );

    // A SIEM destination with an uploaded CA file; it is in force after the reload.
    let ca = std::fs::read(d.path().join("web/cert.pem")).unwrap_or_else(|e| panic!("{e}"));
    let pv = post_multipart(
        &mut a,
        "/settings/destination",
        &[
            ("csrf", &csrf),
            ("original", ""),
            ("name", "soc"),
            ("address", "127.0.0.1:9"),
            ("transport", "tls"),
            ("framing", "octet"),
            ("format", "leef"),
            ("fingerprint", ""),
            ("server_name", "localhost"),
        ],
        &[("ca", "siem-ca.pem", &ca)],
    );
    assert_eq!(pv.status, 200, "{}", pv.body);
    let (base, text) = apply_fields(&pv.body);
    assert!(
        text.contains("[[forward]]\nname = \"soc\"") && text.contains("ca_file = "),
        "{text}"
    );
    let ca_path = text
        .split("ca_file = \"")
        .nth(1)
        .and_then(|r| r.split('"').next())
        .unwrap_or_default()
        .to_string();
    assert_eq!(
        std::fs::read(&ca_path).ok(),
        Some(ca.clone()),
        "the upload is kept where the file points"
    );
    let applied = a.post_form(
        "/settings/apply",
        &[("csrf", &csrf), ("base", &base), ("origin", "form"), ("text", &text)],
    );
    assert_eq!(applied.status, 200, "{}", applied.body);
    r.wait_for_line("flowwarden: configuration reloaded", std::time::Duration::from_secs(30));
    let fwd = a.get("/forwarding");
    assert!(fwd.body.contains("soc"), "the page knows the new destination: {}", fwd.body);
    let page = a.get("/settings");
    assert!(
        page.body.contains("value=\"soc\"") && page.body.contains("10.20.0.0/16"),
        "{}",
        page.body
    );

    // Revert: back to the version before the destination.
    let pv = a.post_form("/settings/revert", &[("csrf", &csrf)]);
    assert_eq!(pv.status, 200, "{}", pv.body);
    assert!(
        pv.body.contains("<span class=\"del\">- name = &quot;soc&quot;</span>"),
        "{}",
        pv.body
    );
    let (base, text) = apply_fields(&pv.body);
    let applied = a.post_form(
        "/settings/apply",
        &[("csrf", &csrf), ("base", &base), ("origin", "revert"), ("text", &text)],
    );
    assert_eq!(applied.status, 200, "{}", applied.body);
    r.wait_for_line("flowwarden: configuration reloaded", std::time::Duration::from_secs(30));
    let saved = std::fs::read_to_string(&file).unwrap_or_else(|e| panic!("{e}"));
    assert!(!saved.contains("soc") && saved.contains("10.20.0.0/16"), "{saved}");
    assert!(!a.get("/settings").body.contains("value=\"soc\""));

    let actions = audit_actions(&mut a);
    assert_eq!(actions.iter().filter(|x| *x == "settings_applied").count(), 4, "{actions:?}");
    assert!(
        actions.iter().any(|x| x == "network_kept"),
        "a refused keep is audited too: {actions:?}"
    );
    assert!(actions.iter().any(|x| x == "settings_reverted"), "{actions:?}");
}

#[test]
fn an_admin_downloads_a_backup_and_restores_it_on_a_new_box() {
    let (d, e) = (tmp(), tmp());
    user_set(d.path(), "boss", "admin");
    user_set(d.path(), "watcher", "viewer");
    let r = Running::start(d.path(), &[]);
    let mut v = client(&r);
    assert_eq!(login(&mut v, "watcher", PASSWORD).status, 303);
    assert!(!v.get("/system").body.contains("id=\"backup\""), "backup is for admins");
    let csrf_v = csrf_field(&v.get("/").body);
    let pass = "branch office 42 passphrase";
    let fields = [("csrf", csrf_v.as_str()), ("passphrase", pass), ("again", pass)];
    assert_eq!(v.post_form("/system/backup", &fields).status, 403);

    let mut a = client(&r);
    assert_eq!(login(&mut a, "boss", PASSWORD).status, 303);
    let page = a.get("/system");
    assert!(page.body.contains("id=\"backup-form\"") && page.body.contains("id=\"restore-form\""));
    let csrf = csrf_field(&page.body);
    // Refused: no CSRF token; passphrases that differ; one too short.
    assert_eq!(a.post_form("/system/backup", &[("passphrase", pass), ("again", pass)]).status, 403);
    let differ = a.post_form("/system/backup", &[("csrf", &csrf), ("passphrase", pass), ("again", "other")]);
    assert_eq!(differ.status, 400);
    assert!(differ.body.contains("The two passphrases differ"), "{}", differ.body);
    let short = a.post_form("/system/backup", &[("csrf", &csrf), ("passphrase", "short"), ("again", "short")]);
    assert!(short.status == 400 && short.body.contains("at least 12"), "{}", short.body);
    let got = a.post_form("/system/backup", &[("csrf", &csrf), ("passphrase", pass), ("again", pass)]);
    assert_eq!(got.status, 200);
    assert!(
        got.header("content-disposition")
            .is_some_and(|c| c.starts_with("attachment; filename=\"flowwarden-backup-") && c.ends_with(".fwbk\"")),
        "{:?}",
        got.headers
    );
    assert!(got.raw.starts_with(b"FWBACKUP"));
    assert!(audit_actions(&mut a).iter().any(|x| x == "backup_download"));
    drop(r);

    // A new box: set up by its first admin, then restored from the download.
    user_set(e.path(), "newadmin", "admin");
    let r2 = Running::start(e.path(), &[]);
    let mut n = client(&r2);
    assert_eq!(login(&mut n, "newadmin", PASSWORD).status, 303);
    let csrf = csrf_field(&n.get("/system").body);
    let wrong = post_multipart(
        &mut n,
        &format!("/system/restore?csrf={csrf}"),
        &[("passphrase", "not the passphrase")],
        &[("backup", "b.fwbk", &got.raw)],
    );
    assert_eq!(wrong.status, 400);
    assert!(wrong.body.contains("wrong passphrase"), "{}", wrong.body);
    let ok = post_multipart(
        &mut n,
        &format!("/system/restore?csrf={csrf}"),
        &[("passphrase", pass)],
        &[("backup", "b.fwbk", &got.raw)],
    );
    assert_eq!(ok.status, 200, "{}", ok.body);
    assert!(ok.body.contains("Restore staged") && ok.body.contains("2 user(s)"), "{}", ok.body);
    assert!(audit_actions(&mut n).iter().any(|x| x == "restore_upload"));
    let (st, _) = r2.stop();
    assert!(st.success());
    // At the next start the old box's users are this box's users.
    let r3 = Running::start(e.path(), &[]);
    let mut b = client(&r3);
    assert_eq!(login(&mut b, "boss", PASSWORD).status, 303, "the old box's admin logs in");
    let mut gone = client(&r3);
    assert_eq!(login(&mut gone, "newadmin", PASSWORD).status, 401, "the restore replaced the users");
}
