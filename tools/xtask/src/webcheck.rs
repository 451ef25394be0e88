//! The QEMU test's look at the guest's status page from the host, through
//! QEMU's forwarded TCP ports, with the host's curl and openssl: plain HTTP on
//! port 80 redirects to HTTPS, the certificate served on 443 has the
//! fingerprint the console printed, the first admin is set up with the
//! console's one-time code through the form, and the overview and its JSON
//! twin answer for the logged-in session.

use anyhow::{Context, Result, ensure};
use std::path::Path;
use std::process::Command;

/// The forwarded host ports of the guest's page.
#[derive(Debug, Clone, Copy)]
pub struct Ports {
    pub https: u16,
    pub http: u16,
}

fn output(cmd: &mut Command) -> Result<String> {
    let out = cmd.output().with_context(|| format!("cannot run {cmd:?}"))?;
    ensure!(
        out.status.success(),
        "{cmd:?} failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn curl(jar: &Path) -> Command {
    let mut c = Command::new("curl");
    c.args(["-sS", "-k", "--max-time", "60", "-c"]).arg(jar).arg("-b").arg(jar);
    c
}

/// The SHA-256 fingerprint (`AB:CD:…`) of the certificate served on `port`.
fn served_fingerprint(port: u16) -> Result<String> {
    let pem = output(Command::new("sh").arg("-c").arg(format!(
        "openssl s_client -connect 127.0.0.1:{port} -servername flowwarden </dev/null 2>/dev/null | openssl x509 -noout -fingerprint -sha256"
    )))?;
    pem.trim()
        .split('=')
        .nth(1)
        .map(str::to_string)
        .with_context(|| format!("openssl printed no fingerprint: {pem:?}"))
}

/// Check the page as a technician would; `fingerprint` and `code` as the console printed them.
/// Returns the overview's verdict.
pub fn check(dir: &Path, ports: Ports, fingerprint: &str, code: &str, password: &str) -> Result<String> {
    // Plain HTTP: a redirect to HTTPS and nothing else.
    let redirect = output(Command::new("curl").args([
        "-sS",
        "--max-time",
        "60",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code} %{redirect_url}",
        &format!("http://127.0.0.1:{}/alerts", ports.http),
    ]))?;
    ensure!(
        redirect.starts_with("308 https://127.0.0.1/alerts"),
        "port 80 answered {redirect:?}, expected a redirect to https"
    );
    // The certificate is the one whose fingerprint the console printed.
    let served = served_fingerprint(ports.https)?;
    ensure!(
        fingerprint == format!("sha256:{served}"),
        "the page serves sha256:{served}, the console printed {fingerprint}"
    );
    let base = format!("https://127.0.0.1:{}", ports.https);
    let jar = dir.join("web-cookies.txt");
    let _ = std::fs::remove_file(&jar);
    // Without a session: the login page; then first-time setup with the code.
    let login = output(curl(&jar).arg(format!("{base}/login")))?;
    ensure!(login.contains("First-time setup"), "no setup form on /login: {login}");
    let csrf = login
        .split("name=\"csrf\" value=\"")
        .nth(1)
        .and_then(|r| r.split('"').next())
        .context("no csrf field on /login")?;
    let setup = output(
        curl(&jar)
            .args(["-o", "/dev/null", "-w", "%{http_code} %{redirect_url}"])
            .args(["-H", &format!("Origin: {base}")])
            .args(["--data-urlencode", &format!("csrf={csrf}")])
            .args(["--data-urlencode", &format!("code={code}")])
            .args(["--data-urlencode", "user=field"])
            .args(["--data-urlencode", &format!("password={password}")])
            .args(["--data-urlencode", &format!("password2={password}")])
            .arg(format!("{base}/setup")),
    )?;
    ensure!(setup.starts_with("303 ") && setup.ends_with('/'), "setup answered {setup:?}");
    let overview = output(curl(&jar).arg(format!("{base}/")))?;
    ensure!(overview.contains("id=\"verdict\""), "no verdict on the overview: {overview}");
    let status = output(curl(&jar).arg(format!("{base}/api/v1/status")))?;
    let v: serde_json::Value = serde_json::from_str(&status).with_context(|| format!("/api/v1/status: {status}"))?;
    let exporters = v["checks"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["name"] == "exporters"))
        .context("no exporters check")?;
    ensure!(exporters["level"] == "ok", "the guest's page says: {exporters}");
    // The image carries the country database and the appliance uses it.
    let system = output(curl(&jar).arg(format!("{base}/api/v1/system")))?;
    let sys: serde_json::Value = serde_json::from_str(&system).with_context(|| format!("/api/v1/system: {system}"))?;
    let countries = sys["countries"]["file"].as_str().unwrap_or("none");
    ensure!(
        countries == "/usr/share/flowwarden/country.mmdb",
        "the guest uses no country database from the image: {}",
        sys["countries"]
    );
    Ok(format!(
        "{} ({} flows kept; {}; countries from {countries})",
        v["verdict"],
        v["storage"]["flows_kept"],
        exporters["reason"].as_str().unwrap_or("")
    ))
}

/// What comes after `name="KEY" value="` in `html`, up to the closing quote.
fn hidden(html: &str, key: &str) -> Result<String> {
    html.split(&format!("name=\"{key}\" value=\""))
        .nth(1)
        .and_then(|r| r.split('"').next())
        .map(unescape)
        .with_context(|| format!("no {key} field in: {html}"))
}

fn unescape(s: &str) -> String {
    s.replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&#39;", "'")
        .replace("&amp;", "&")
}

/// As the admin logged in by [`check`]: a settings form (`fields`) previewed,
/// then applied; returns the apply page.
pub fn apply_settings(dir: &Path, ports: Ports, fields: &[(&str, &str)]) -> Result<String> {
    let base = format!("https://127.0.0.1:{}", ports.https);
    let jar = dir.join("web-cookies.txt");
    let settings = output(curl(&jar).arg(format!("{base}/settings")))?;
    let csrf = hidden(&settings, "csrf")?;
    let mut post = curl(&jar);
    post.args(["-H", &format!("Origin: {base}")])
        .args(["--data-urlencode", &format!("csrf={csrf}")]);
    for (k, v) in fields {
        post.args(["--data-urlencode", &format!("{k}={v}")]);
    }
    let preview = output(post.arg(format!("{base}/settings/preview")))?;
    ensure!(preview.contains("Apply and reload"), "the preview offers no apply: {preview}");
    let text = preview
        .split("readonly class=\"code\">")
        .nth(1)
        .and_then(|r| r.split("</textarea>").next())
        .map(unescape)
        .context("no candidate text in the preview")?;
    output(
        curl(&jar)
            .args(["-H", &format!("Origin: {base}")])
            .args(["--data-urlencode", &format!("csrf={csrf}")])
            .args(["--data-urlencode", &format!("base={}", hidden(&preview, "base")?)])
            .args(["--data-urlencode", &format!("origin={}", hidden(&preview, "origin")?)])
            .args(["--data-urlencode", &format!("text={text}")])
            .arg(format!("{base}/settings/apply")),
    )
}

/// As that admin: "Keep these settings" on /system; returns the answer page.
pub fn keep_network(dir: &Path, ports: Ports) -> Result<String> {
    let base = format!("https://127.0.0.1:{}", ports.https);
    let jar = dir.join("web-cookies.txt");
    let system = output(curl(&jar).arg(format!("{base}/system")))?;
    ensure!(
        system.contains("id=\"network-trial\""),
        "/system shows no settings on trial: {system}"
    );
    let csrf = hidden(&system, "csrf")?;
    output(
        curl(&jar)
            .args(["-H", &format!("Origin: {base}")])
            .args(["--data-urlencode", &format!("csrf={csrf}")])
            .arg(format!("{base}/system/network/keep")),
    )
}

/// As that admin: `/api/v1/system`'s `network`.
pub fn network_status(dir: &Path, ports: Ports) -> Result<serde_json::Value> {
    let jar = dir.join("web-cookies.txt");
    let system = output(curl(&jar).arg(format!("https://127.0.0.1:{}/api/v1/system", ports.https)))?;
    let sys: serde_json::Value = serde_json::from_str(&system).with_context(|| format!("/api/v1/system: {system}"))?;
    Ok(sys["network"].clone())
}
