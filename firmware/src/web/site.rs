//! `/settings` (admins): the technician configures the box where it stands.
//!
//! Every form — internal networks, exporter overrides, allow-list entries,
//! one SIEM destination (certificates and keys uploaded as files), or the
//! whole file — makes a candidate configuration from the file in force
//! ([`super::config_edit`]); the candidate is checked by the appliance's own
//! `check-config` code and shown as a diff with the check's result; "Apply"
//! saves it (the old text kept as `FILE.previous`), asks the appliance to
//! reload over the control channel and, if the reload is refused, puts the
//! old text back. "Revert" previews the previous version the same way. Every
//! apply and revert is an audit event.

use super::app::{State, csrf_ok, csrf_refused, peer_ip};
use super::auth::Viewer;
use super::config_edit::{self, DestinationEdit, SettingsAccess, SiteView};
use super::html::{self, esc};
use crate::decode::settings::{ExporterOverride, SamplingMode};
use crate::detect::settings::AllowRule;
use crate::management::{Management, NetMode};
use axum::Form;
use axum::extract::{Multipart, State as AxState};
use axum::http::{StatusCode, request::Parts};
use axum::response::{Html, IntoResponse, Response};
use std::collections::HashMap;
use std::fmt::Write;
use std::path::PathBuf;

fn page(status: StatusCode, title: &str, v: &Viewer, body: &str) -> Response {
    (status, Html(html::layout(title, "/settings", Some(v), body))).into_response()
}

fn forbidden(v: &Viewer) -> Response {
    page(StatusCode::FORBIDDEN, "Not allowed", v, "<p>Settings need an admin.</p>")
}

fn unavailable(v: &Viewer) -> Response {
    page(
        StatusCode::SERVICE_UNAVAILABLE,
        "Settings",
        v,
        "<p>This appliance cannot change its settings from the page.</p>",
    )
}

/// Access for admins only; Err: the response to send instead.
fn access(s: &State, v: &Viewer) -> Result<SettingsAccess, Box<Response>> {
    if !v.is_admin() {
        return Err(Box::new(forbidden(v)));
    }
    s.app.settings.clone().ok_or_else(|| Box::new(unavailable(v)))
}

fn run_check(a: &SettingsAccess, text: &str) -> Result<SiteView, String> {
    (a.check)(text, &a.file)
}

/// `GET /settings`.
pub async fn settings(AxState(s): AxState<State>, v: Viewer) -> Response {
    let a = match access(&s, &v) {
        Ok(a) => a,
        Err(r) => return *r,
    };
    let built = tokio::task::spawn_blocking(move || {
        let current = a.read()?;
        let previous = a.read_previous()?;
        Ok::<_, String>((current.clone(), previous, run_check(&a, &current), a))
    })
    .await;
    let (current, previous, view, a) = match built {
        Ok(Ok(x)) => x,
        Ok(Err(e)) => {
            return page(
                StatusCode::INTERNAL_SERVER_ERROR,
                "Settings",
                &v,
                &format!("<p class=\"error\">{}</p>", esc(&e)),
            );
        }
        Err(_) => {
            return page(
                StatusCode::INTERNAL_SERVER_ERROR,
                "Settings",
                &v,
                "<p class=\"error\">the settings view failed</p>",
            );
        }
    };
    let csrf = html::csrf(&v);
    let mut b = String::new();
    let _ = write!(
        b,
        "<p>The configuration file <code>{}</code> {}. Each change is checked exactly as \
         <code>flowwarden check-config</code> checks it and shown as a difference before it is applied; applying \
         reloads the appliance without losing flows or queued alerts.</p>",
        esc(&a.file.display().to_string()),
        if current.is_empty() {
            "does not exist yet: the built-in defaults are in force"
        } else {
            "is in force"
        }
    );
    if previous.is_some() {
        let _ = write!(
            b,
            "<form method=\"post\" action=\"/settings/revert\" class=\"card\">{csrf}<p>The version before the last change \
             made here is kept.</p><button type=\"submit\">Show the previous version to revert to</button></form>"
        );
    }
    let view = match view {
        Ok(view) => view,
        Err(e) => {
            let _ = write!(
                b,
                "<p class=\"error\" role=\"alert\">The file in force does not pass the check now: {}</p>\
                 <p>Fix it in the whole file below.</p>",
                esc(&e)
            );
            SiteView::default()
        }
    };
    for w in &view.warnings {
        let _ = write!(b, "<p class=\"hint\">Warning: {}</p>", esc(w));
    }
    // Internal networks.
    let nets: Vec<String> = view.internal.iter().map(|n| n.to_string()).collect();
    let _ = write!(
        b,
        "<section class=\"card\" id=\"internal\"><h2>Internal networks</h2><p class=\"hint\">Addresses inside the branch \
         (one prefix per line). Flows between them are internal; detection watches what leaves them.</p>\
         <form method=\"post\" action=\"/settings/preview\" class=\"stack\">{csrf}\
         <input type=\"hidden\" name=\"section\" value=\"internal\">\
         <label>Networks <textarea name=\"internal\" rows=\"{}\" spellcheck=\"false\">{}</textarea></label>\
         <button type=\"submit\">Preview</button></form></section>",
        nets.len().clamp(3, 12),
        esc(&nets.join("\n"))
    );
    // Names for addresses and networks.
    let mut rows = String::new();
    for (i, n) in view.names.iter().map(Some).chain([None]).enumerate() {
        let _ = write!(
            rows,
            "<tr><td><input name=\"n{i}_net\" value=\"{}\" placeholder=\"10.1.2.3 or 10.1.2.0/24\" aria-label=\"Address or network\"></td>\
             <td><input name=\"n{i}_name\" value=\"{}\" aria-label=\"Name\"></td><td>{}</td></tr>",
            esc(&n.map(|n| n.net.to_string()).unwrap_or_default()),
            esc(n.map(|n| n.name.as_str()).unwrap_or("")),
            if n.is_some() {
                format!("<label><input type=\"checkbox\" name=\"n{i}_remove\"> remove</label>")
            } else {
                "new".into()
            }
        );
    }
    let _ = write!(
        b,
        "<section class=\"card\" id=\"names\"><h2>Names</h2><p class=\"hint\">Shown beside matching addresses on \
         every page and in alert evidence (the most specific entry wins).</p>\
         <form method=\"post\" action=\"/settings/preview\">{csrf}<input type=\"hidden\" name=\"section\" value=\"names\">\
         <div class=\"scroll\"><table><thead><tr><th>Address or network</th><th>Name</th><th></th></tr></thead>\
         <tbody>{rows}</tbody></table></div><button type=\"submit\">Preview</button></form></section>"
    );
    // Exporter overrides.
    let mut rows = String::new();
    let blank = ExporterOverride {
        address: std::net::IpAddr::from([0, 0, 0, 0]),
        sampling_rate: None,
        sampling_mode: SamplingMode::Default,
        name: None,
    };
    for (i, e) in view.exporters.iter().map(Some).chain([None]).enumerate() {
        let x = e.unwrap_or(&blank);
        let mode = |m: SamplingMode| if x.sampling_mode == m && e.is_some() { " selected" } else { "" };
        let _ = write!(
            rows,
            "<tr><td><input name=\"e{i}_address\" value=\"{}\" placeholder=\"192.0.2.1\" aria-label=\"Exporter address\"></td>\
             <td><input name=\"e{i}_rate\" value=\"{}\" size=\"6\" placeholder=\"1\" aria-label=\"Sampling rate\"></td>\
             <td><select name=\"e{i}_mode\" aria-label=\"Sampling mode\"><option value=\"default\"{}>when the exporter says none</option>\
             <option value=\"force\"{}>always</option></select></td>\
             <td><input name=\"e{i}_name\" value=\"{}\" aria-label=\"Name\"></td><td>{}</td></tr>",
            e.map(|e| esc(&e.address.to_string())).unwrap_or_default(),
            e.and_then(|e| e.sampling_rate).map(|r| r.to_string()).unwrap_or_default(),
            mode(SamplingMode::Default),
            mode(SamplingMode::Force),
            esc(x.name.as_deref().unwrap_or("")),
            if e.is_some() {
                format!("<label><input type=\"checkbox\" name=\"e{i}_remove\"> remove</label>")
            } else {
                "new".into()
            }
        );
    }
    let _ = write!(
        b,
        "<section class=\"card\" id=\"exporters\"><h2>Exporters</h2><p class=\"hint\">A sampling rate (1 in N packets) for \
         exporters that sample without saying so, and a name shown beside the address.</p>\
         <form method=\"post\" action=\"/settings/preview\">{csrf}<input type=\"hidden\" name=\"section\" value=\"exporters\">\
         <div class=\"scroll\"><table><thead><tr><th>Address</th><th>Sampling 1:N</th><th>Use the rate</th><th>Name</th><th></th></tr></thead>\
         <tbody>{rows}</tbody></table></div><button type=\"submit\">Preview</button></form></section>"
    );
    // Allow-list.
    let mut rows = String::new();
    for (i, r) in view.allow.iter().map(Some).chain([None]).enumerate() {
        let f = |x: Option<String>| esc(&x.unwrap_or_default());
        let _ = write!(
            rows,
            "<tr><td><input name=\"a{i}_name\" value=\"{}\" aria-label=\"Name\"></td>\
             <td><input name=\"a{i}_src\" value=\"{}\" placeholder=\"10.1.2.3/32\" aria-label=\"Source\"></td>\
             <td><input name=\"a{i}_dst\" value=\"{}\" aria-label=\"Destination\"></td>\
             <td><input name=\"a{i}_port\" value=\"{}\" size=\"5\" aria-label=\"Port\"></td>\
             <td><input name=\"a{i}_proto\" value=\"{}\" size=\"5\" aria-label=\"Protocol\"></td>\
             <td><input name=\"a{i}_kinds\" value=\"{}\" placeholder=\"all\" aria-label=\"Kinds\"></td><td>{}</td></tr>",
            f(r.and_then(|r| r.name.clone())),
            f(r.and_then(|r| r.src.map(|n| n.to_string()))),
            f(r.and_then(|r| r.dst.map(|n| n.to_string()))),
            f(r.and_then(|r| r.port.map(|p| p.to_string()))),
            f(r.and_then(|r| r.proto.clone())),
            f(r.map(|r| r.kinds.join(", "))),
            if r.is_some() {
                format!("<label><input type=\"checkbox\" name=\"a{i}_remove\"> remove</label>")
            } else {
                "new".into()
            }
        );
    }
    let _ = write!(
        b,
        "<section class=\"card\" id=\"allow\"><h2>Allow-list</h2><p class=\"hint\">Detections matching every field given \
         are not raised (counted per entry). Kinds: exfiltration, beaconing, scan, spike, comma-separated; empty = all.</p>\
         <form method=\"post\" action=\"/settings/preview\">{csrf}<input type=\"hidden\" name=\"section\" value=\"allow\">\
         <div class=\"scroll\"><table><thead><tr><th>Name</th><th>Source</th><th>Destination</th><th>Port</th><th>Protocol</th>\
         <th>Kinds</th><th></th></tr></thead><tbody>{rows}</tbody></table></div><button type=\"submit\">Preview</button></form></section>"
    );
    b.push_str(&management_form(&csrf, view.management.as_ref()));
    // SIEM destinations.
    let _ = write!(
        b,
        "<section class=\"card\" id=\"forward\"><h2>SIEM destinations</h2><p class=\"hint\">Alerts, heartbeats and audit \
         events go to each destination over syslog. Verify the receiver by a CA file or its certificate's SHA-256 \
         fingerprint; a client certificate and key give mutual TLS. After applying, \
         <a href=\"/forwarding\">send a test event</a>.</p>"
    );
    for f in view.forward.iter().map(Some).chain([None]) {
        b.push_str(&destination_form(&v, f));
    }
    b.push_str("</section>");
    // The whole file.
    let _ = write!(
        b,
        "<section class=\"card\" id=\"text\"><h2>Whole file</h2><p class=\"hint\">Every key and default: \
         <code>firmware/src/config.rs</code> and the README.</p>\
         <form method=\"post\" action=\"/settings/preview\" class=\"stack wide\">{csrf}<input type=\"hidden\" name=\"section\" value=\"text\">\
         <textarea name=\"text\" rows=\"20\" spellcheck=\"false\" class=\"code\">{}</textarea>\
         <button type=\"submit\">Preview</button></form></section>",
        esc(&current)
    );
    page(StatusCode::OK, "Settings", &v, &b)
}

/// The management network section (PID 1 applies it on the image, on trial).
fn management_form(csrf: &str, m: Option<&Management>) -> String {
    let d = Management::default();
    let m_or = m.unwrap_or(&d);
    let mode = match (m, m_or.mode) {
        (None, _) => "board",
        (Some(_), None) => "board",
        (Some(_), Some(x)) => x.as_str(),
    };
    let opt = |v: &str, label: &str| format!("<option value=\"{v}\"{}>{label}</option>", if v == mode { " selected" } else { "" });
    let join = |v: Option<Vec<String>>| v.map(|v| v.join(" ")).unwrap_or_default();
    let field = |name: &str, label: &str, value: &str, hint: &str| {
        format!(
            "<label>{label}<input name=\"{name}\" value=\"{}\" placeholder=\"{hint}\"></label>",
            esc(value)
        )
    };
    format!(
        "<section class=\"card\" id=\"management\"><h2>Management network</h2><p class=\"hint\">How this box is reached \
         on the appliance image (PID 1 applies it; empty fields keep the image's defaults). A change goes on \
         <strong>trial</strong>: open the page at the new address and press \"Keep these settings\" on \
         <a href=\"/system\">System</a> in time, or the previous settings come back by themselves.</p>\
         <form method=\"post\" action=\"/settings/preview\" class=\"stack\">{csrf}<input type=\"hidden\" name=\"section\" value=\"management\">\
         <label>Mode<select name=\"m_mode\">{}{}{}{}</select></label>{}{}{}{}{}{}{}\
         <button type=\"submit\">Preview</button></form></section>",
        opt("board", "the image's default"),
        opt("dhcp", "DHCP"),
        opt("static", "static address"),
        opt("none", "off (lab use)"),
        field("m_interface", "Interface", m_or.interface.as_deref().unwrap_or(""), "auto"),
        field(
            "m_address",
            "Address/prefix (static)",
            m_or.address.as_deref().unwrap_or(""),
            "192.0.2.10/24"
        ),
        field(
            "m_gateway",
            "Gateway",
            &m_or.gateway.map(|g| g.to_string()).unwrap_or_default(),
            "192.0.2.1"
        ),
        field("m_vlan", "VLAN id", &m_or.vlan.map(|v| v.to_string()).unwrap_or_default(), "none"),
        field(
            "m_dns",
            "DNS servers",
            &join(m_or.dns.as_ref().map(|d| d.iter().map(|a| a.to_string()).collect())),
            "192.0.2.53"
        ),
        field(
            "m_ntp",
            "NTP servers",
            &join(m_or.ntp_servers.clone()),
            "192.0.2.1 or 192.0.2.1:123"
        ),
        field(
            "m_confirm",
            "Keep within",
            &m_or.confirm_within.map(|c| format!("{}s", c.ms() / 1000)).unwrap_or_default(),
            "5m"
        ),
    )
}

/// The `[management]` table a form asks for (None: the image's defaults).
fn parse_management(fields: &HashMap<String, String>) -> Result<Option<Management>, String> {
    let get = |k: &str| fields.get(k).map(|v| v.trim()).unwrap_or("");
    let some = |v: &str| (!v.is_empty()).then(|| v.to_string());
    let list = |v: &str| -> Vec<String> {
        v.split([' ', ',', '\n', '\r'])
            .filter(|x| !x.is_empty())
            .map(str::to_string)
            .collect()
    };
    let mode = match get("m_mode") {
        "board" | "" => return Ok(None),
        "dhcp" => NetMode::Dhcp,
        "static" => NetMode::Static,
        "none" => NetMode::None,
        other => return Err(format!("management network, mode: {other:?} is not dhcp, static or none")),
    };
    let gateway = match get("m_gateway") {
        "" => None,
        g => Some(
            g.parse()
                .map_err(|_| format!("management network, gateway: {g:?} is not an IPv4 address"))?,
        ),
    };
    let vlan = match get("m_vlan") {
        "" | "none" => None,
        v => Some(
            v.parse()
                .map_err(|_| format!("management network, VLAN id: {v:?} is not a number 1-4094"))?,
        ),
    };
    let mut dns = Vec::new();
    for d in list(get("m_dns")) {
        dns.push(
            d.parse()
                .map_err(|_| format!("management network, DNS servers: {d:?} is not an IPv4 address"))?,
        );
    }
    let confirm_within = match get("m_confirm") {
        "" => None,
        c => Some(crate::units::Span(crate::timefmt::parse_span_ms(c).map_err(|_| {
            format!("management network, keep within: {c:?} is not a duration like 5m")
        })?)),
    };
    let m = Management {
        mode: Some(mode),
        interface: some(get("m_interface")),
        address: some(get("m_address")),
        gateway,
        vlan,
        dns: (!dns.is_empty()).then_some(dns),
        ntp_servers: Some(list(get("m_ntp"))).filter(|l| !l.is_empty()),
        confirm_within,
    };
    m.check().map_err(|(k, why)| format!("management network, {k}: {why}"))?;
    Ok(Some(m))
}

fn destination_form(v: &Viewer, f: Option<&crate::forward::settings::ForwardConfig>) -> String {
    let transport = f.map(|f| f.transport.as_str());
    let framing = f.map(|f| f.framing.as_str());
    let format = f.map(|f| f.format.as_str()).unwrap_or("cef");
    let opt = |name: &str, options: &[&str], cur: &str| {
        let mut s = format!("<select name=\"{name}\">");
        for o in options {
            let sel = if *o == cur { " selected" } else { "" };
            let _ = write!(s, "<option{sel}>{o}</option>");
        }
        s.push_str("</select>");
        s
    };
    let path = |p: &Option<PathBuf>| p.as_ref().map(|p| p.display().to_string());
    let kept = |what: &str, p: Option<String>, clear: &str| match p {
        Some(p) => format!(
            "<span class=\"hint\">{what}: <code>{}</code></span> <label class=\"inline\"><input type=\"checkbox\" name=\"{clear}\"> remove</label>",
            esc(&p)
        ),
        None => String::new(),
    };
    let mut s = String::new();
    let _ = write!(
        s,
        "<form method=\"post\" action=\"/settings/destination\" enctype=\"multipart/form-data\" class=\"dest\">\
         <h3>{}</h3>{}<input type=\"hidden\" name=\"original\" value=\"{}\"><div class=\"grid\">\
         <label>Name <input name=\"name\" value=\"{}\" required></label>\
         <label>Address (host:port) <input name=\"address\" value=\"{}\" placeholder=\"siem.example:6514\" required></label>\
         <label>Transport {}</label><label>Framing {}</label><label>Format {}</label>\
         <label>Receiver fingerprint <input name=\"fingerprint\" value=\"{}\" placeholder=\"sha256:AB:CD:…\"></label>\
         <label>Server name <input name=\"server_name\" value=\"{}\" placeholder=\"the address's host\"></label>\
         <label>CA file (PEM) <input type=\"file\" name=\"ca\" accept=\".pem,.crt,.cer\">{}</label>\
         <label>Client certificate (PEM) <input type=\"file\" name=\"client_cert\" accept=\".pem,.crt,.cer\">{}</label>\
         <label>Client key (PEM) <input type=\"file\" name=\"client_key\" accept=\".pem,.key\">{}</label></div>",
        if f.is_some() { "Destination" } else { "Add a destination" },
        html::csrf(v),
        esc(f.map(|f| f.name.as_str()).unwrap_or("")),
        esc(f.map(|f| f.name.as_str()).unwrap_or("")),
        esc(f.map(|f| f.address.as_str()).unwrap_or("")),
        opt("transport", &["tls", "tcp", "udp"], transport.unwrap_or("tls")),
        opt("framing", &["octet", "lf"], framing.unwrap_or("octet")),
        opt("format", &["cef", "leef", "json"], format),
        esc(f.and_then(|f| f.fingerprint.as_deref()).unwrap_or("")),
        esc(f.and_then(|f| f.server_name.as_deref()).unwrap_or("")),
        kept("now", f.and_then(|f| path(&f.ca_file)), "clear_ca"),
        kept("now", f.and_then(|f| path(&f.client_cert_file)), "clear_client"),
        kept("now", f.and_then(|f| path(&f.client_key_file)), "clear_client"),
    );
    if f.is_some() {
        s.push_str("<label class=\"inline\"><input type=\"checkbox\" name=\"remove\"> remove this destination</label> ");
    }
    s.push_str("<button type=\"submit\">Preview</button></form>");
    s
}

/// Numbered row fields (`e0_address`, …) in order, up to the first missing
/// row; rows marked `remove` and rows left blank are left out.
fn rows<'a>(fields: &'a HashMap<String, String>, prefix: &str, keys: &[&'static str]) -> Vec<HashMap<&'static str, &'a str>> {
    let mut out = Vec::new();
    for i in 0..1000 {
        let get = |k: &str| fields.get(&format!("{prefix}{i}_{k}")).map(String::as_str);
        if keys.iter().all(|k| get(k).is_none()) {
            break;
        }
        if get("remove").is_some() {
            continue;
        }
        let row: HashMap<&'static str, &str> = keys.iter().map(|k| (*k, get(k).unwrap_or("").trim())).collect();
        if row.iter().any(|(k, v)| *k != "mode" && !v.is_empty()) {
            out.push(row);
        }
    }
    out
}

fn parse_names(fields: &HashMap<String, String>) -> Result<Vec<crate::net::NamedNet>, String> {
    let mut out = Vec::new();
    for (n, r) in rows(fields, "n", &["net", "name"]).into_iter().enumerate() {
        let row = n + 1;
        let net = r["net"]
            .parse()
            .map_err(|_| format!("names row {row}: {:?} is not an address or network", r["net"]))?;
        crate::net::check_name(r["name"]).map_err(|e| format!("names row {row}: {e}"))?;
        out.push(crate::net::NamedNet {
            net,
            name: r["name"].to_string(),
        });
    }
    Ok(out)
}

fn parse_exporters(fields: &HashMap<String, String>) -> Result<Vec<ExporterOverride>, String> {
    let mut out = Vec::new();
    for (n, r) in rows(fields, "e", &["address", "rate", "mode", "name"]).into_iter().enumerate() {
        let row = n + 1;
        let address = r["address"]
            .parse()
            .map_err(|_| format!("exporter row {row}: {:?} is not an IP address", r["address"]))?;
        let sampling_rate = match r["rate"] {
            "" => None,
            x => Some(
                x.parse::<u32>()
                    .ok()
                    .filter(|&v| v >= 1)
                    .ok_or_else(|| format!("exporter row {row}: sampling rate {x:?} is not a whole number ≥ 1"))?,
            ),
        };
        let sampling_mode = if r["mode"] == "force" {
            SamplingMode::Force
        } else {
            SamplingMode::Default
        };
        let name = Some(r["name"].to_string()).filter(|n| !n.is_empty());
        out.push(ExporterOverride {
            address,
            sampling_rate,
            sampling_mode,
            name,
        });
    }
    Ok(out)
}

fn parse_allow(fields: &HashMap<String, String>) -> Result<Vec<AllowRule>, String> {
    let mut out = Vec::new();
    for (n, r) in rows(fields, "a", &["name", "src", "dst", "port", "proto", "kinds"])
        .into_iter()
        .enumerate()
    {
        let row = n + 1;
        let net = |k: &str| -> Result<Option<crate::net::IpNet>, String> {
            match r[k] {
                "" => Ok(None),
                x => x
                    .parse()
                    .map(Some)
                    .map_err(|_| format!("allow-list row {row}: {k} {x:?} is not an address or prefix")),
            }
        };
        let port = match r["port"] {
            "" => None,
            x => Some(
                x.parse::<u16>()
                    .map_err(|_| format!("allow-list row {row}: port {x:?} is not a port number"))?,
            ),
        };
        let kinds = r["kinds"]
            .split([',', ' '])
            .map(str::trim)
            .filter(|k| !k.is_empty())
            .map(str::to_string)
            .collect();
        out.push(AllowRule {
            src: net("src")?,
            dst: net("dst")?,
            port,
            proto: Some(r["proto"].to_string()).filter(|p| !p.is_empty()),
            kinds,
            name: Some(r["name"].to_string()).filter(|n| !n.is_empty()),
        });
    }
    Ok(out)
}

/// The candidate text a section form makes of the file in force.
fn candidate(current: &str, fields: &HashMap<String, String>) -> Result<String, String> {
    let section = fields.get("section").map(String::as_str).unwrap_or("");
    if section == "text" {
        return Ok(fields.get("text").cloned().unwrap_or_default().replace("\r\n", "\n"));
    }
    let mut doc = config_edit::document(current)?;
    match section {
        "internal" => {
            let mut nets = Vec::new();
            for (i, line) in fields.get("internal").map(String::as_str).unwrap_or("").lines().enumerate() {
                let line = line.trim();
                if line.is_empty() || line.starts_with('#') {
                    continue;
                }
                nets.push(
                    line.parse()
                        .map_err(|_| format!("internal networks, line {}: {line:?} is not an address or prefix", i + 1))?,
                );
            }
            config_edit::set_internal(&mut doc, &nets)?;
        }
        "names" => config_edit::set_names(&mut doc, &parse_names(fields)?)?,
        "exporters" => config_edit::set_exporters(&mut doc, &parse_exporters(fields)?),
        "allow" => config_edit::set_allow(&mut doc, &parse_allow(fields)?)?,
        "management" => return crate::management::write_into(&doc.to_string(), parse_management(fields)?.as_ref()),
        other => return Err(format!("unknown settings section {other:?}")),
    }
    Ok(doc.to_string())
}

/// The preview: the diff from the file in force, the check's verdict, and
/// (when it passes) the form that applies it.
fn preview(v: &Viewer, a: &SettingsAccess, current: &str, cand: Result<String, String>, origin: &str) -> Response {
    let mut b = String::new();
    let cand = match cand {
        Ok(c) => c,
        Err(e) => {
            let _ = write!(
                b,
                "<p class=\"error\" role=\"alert\">{}</p><p><a href=\"/settings\">Back to the settings</a> (nothing was changed)</p>",
                esc(&e)
            );
            return page(StatusCode::BAD_REQUEST, "Not valid", v, &b);
        }
    };
    let d = config_edit::diff(current, &cand);
    let changed = d.iter().filter(|(k, _)| *k != ' ').count();
    if changed == 0 {
        return page(
            StatusCode::OK,
            "Nothing to change",
            v,
            "<p>The file would stay as it is.</p><p><a href=\"/settings\">Back to the settings</a></p>",
        );
    }
    let _ = write!(b, "<h2>Changes to <code>{}</code></h2>", esc(&a.file.display().to_string()));
    b.push_str(&diff_html(&d));
    let check = run_check(a, &cand);
    let ok = check.is_ok();
    match check {
        Ok(view) => {
            let _ = write!(b, "<p class=\"ok-text\">Check passed: {}</p>", esc(&view.summary));
            for w in &view.warnings {
                let _ = write!(b, "<p class=\"hint\">Warning: {}</p>", esc(w));
            }
            let _ = write!(
                b,
                "<form method=\"post\" action=\"/settings/apply\" class=\"stack wide\">{}\
                 <input type=\"hidden\" name=\"base\" value=\"{}\"><input type=\"hidden\" name=\"origin\" value=\"{}\">\
                 <details><summary>The whole new file</summary><textarea name=\"text\" rows=\"20\" readonly class=\"code\">{}</textarea></details>\
                 <button type=\"submit\">Apply and reload</button></form>",
                html::csrf(v),
                config_edit::text_hash(current),
                esc(origin),
                esc(&cand)
            );
        }
        Err(e) => {
            let _ = write!(b, "<p class=\"error\" role=\"alert\">Not valid, nothing applied: {}</p>", esc(&e));
        }
    }
    b.push_str("<p><a href=\"/settings\">Back to the settings</a></p>");
    page(
        if ok { StatusCode::OK } else { StatusCode::BAD_REQUEST },
        if origin == "revert" { "Revert: preview" } else { "Preview" },
        v,
        &b,
    )
}

/// Changed lines with two lines of context around them.
fn diff_html(d: &[config_edit::DiffLine]) -> String {
    const CONTEXT: usize = 2;
    let near: Vec<bool> = (0..d.len())
        .map(|i| {
            d[i.saturating_sub(CONTEXT)..(i + CONTEXT + 1).min(d.len())]
                .iter()
                .any(|(k, _)| *k != ' ')
        })
        .collect();
    let mut s = String::from("<pre class=\"diff\">");
    let mut skipped = false;
    for (i, (k, line)) in d.iter().enumerate() {
        if !near[i] {
            skipped = true;
            continue;
        }
        if skipped {
            s.push_str("<span class=\"skip\">…</span>");
            skipped = false;
        }
        let class = match k {
            '+' => "add",
            '-' => "del",
            _ => "same",
        };
        let _ = write!(s, "<span class=\"{class}\">{k} {}</span>", esc(line));
    }
    s.push_str("</pre>");
    s
}

/// An admin's form post with a good CSRF token: the settings access and the fields.
fn admin_form(
    s: &State,
    v: &Viewer,
    parts: &Parts,
    f: Vec<(String, String)>,
) -> Result<(SettingsAccess, HashMap<String, String>), Box<Response>> {
    let a = access(s, v)?;
    let fields: HashMap<String, String> = f.into_iter().collect();
    if !csrf_ok(&parts.headers, &v.csrf, fields.get("csrf").map(String::as_str).unwrap_or("")) {
        return Err(Box::new(csrf_refused(Some(v))));
    }
    Ok((a, fields))
}

async fn read_current(a: &SettingsAccess) -> Result<String, String> {
    let a = a.clone();
    tokio::task::spawn_blocking(move || a.read()).await.map_err(|e| e.to_string())?
}

/// `POST /settings/preview` (a section form or the whole file).
pub async fn preview_form(AxState(s): AxState<State>, v: Viewer, parts: Parts, Form(f): Form<Vec<(String, String)>>) -> Response {
    let (a, fields) = match admin_form(&s, &v, &parts, f) {
        Ok(x) => x,
        Err(r) => return *r,
    };
    let current = match read_current(&a).await {
        Ok(c) => c,
        Err(e) => return preview(&v, &a, "", Err(e), "form"),
    };
    let cand = candidate(&current, &fields);
    off_thread(&v, move |v| preview(v, &a, &current, cand, "form")).await
}

/// Build a page on a blocking thread (file reads and the check).
async fn off_thread(v: &Viewer, build: impl FnOnce(&Viewer) -> Response + Send + 'static) -> Response {
    let v2 = v.clone();
    tokio::task::spawn_blocking(move || build(&v2)).await.unwrap_or_else(|_| {
        page(
            StatusCode::INTERNAL_SERVER_ERROR,
            "Settings",
            v,
            "<p class=\"error\">the page failed</p>",
        )
    })
}

/// `POST /settings/destination` (multipart: one SIEM destination with its files).
pub async fn destination_form_post(AxState(s): AxState<State>, v: Viewer, parts: Parts, mut m: Multipart) -> Response {
    let a = match access(&s, &v) {
        Ok(a) => a,
        Err(r) => return *r,
    };
    let mut text: HashMap<String, String> = HashMap::new();
    let mut files: HashMap<String, Vec<u8>> = HashMap::new();
    loop {
        match m.next_field().await {
            Ok(Some(field)) => {
                let name = field.name().unwrap_or("").to_string();
                let is_file = field.file_name().is_some();
                match field.bytes().await {
                    Ok(bytes) if is_file => {
                        if !bytes.is_empty() {
                            files.insert(name, bytes.to_vec());
                        }
                    }
                    Ok(bytes) => {
                        text.insert(name, String::from_utf8_lossy(&bytes).trim().to_string());
                    }
                    Err(e) => return preview(&v, &a, "", Err(format!("the form could not be read: {e}")), "form"),
                }
            }
            Ok(None) => break,
            Err(e) => return preview(&v, &a, "", Err(format!("the form could not be read: {e}")), "form"),
        }
    }
    if !csrf_ok(&parts.headers, &v.csrf, text.get("csrf").map(String::as_str).unwrap_or("")) {
        return csrf_refused(Some(&v));
    }
    let current = match read_current(&a).await {
        Ok(c) => c,
        Err(e) => return preview(&v, &a, "", Err(e), "form"),
    };
    off_thread(&v, move |v| {
        let cand = destination_candidate(&a, &current, &text, &files);
        preview(v, &a, &current, cand, "form")
    })
    .await
}

fn destination_candidate(
    a: &SettingsAccess,
    current: &str,
    text: &HashMap<String, String>,
    files: &HashMap<String, Vec<u8>>,
) -> Result<String, String> {
    let get = |k: &str| text.get(k).map(String::as_str).unwrap_or("");
    let original = Some(get("original")).filter(|o| !o.is_empty());
    let mut doc = config_edit::document(current)?;
    if get("remove") == "on" {
        let Some(o) = original else {
            return Err("a new destination cannot be removed".into());
        };
        config_edit::set_destination(&mut doc, Some(o), None)?;
        return Ok(doc.to_string());
    }
    // What the destination has now (paths kept unless replaced or removed).
    let now = original.and_then(|o| run_check(a, current).ok()?.forward.into_iter().find(|f| f.name == o));
    let upload = |k: &str, what: &str| -> Result<Option<PathBuf>, String> {
        match files.get(k) {
            Some(bytes) => config_edit::store_upload(&a.pki_dir(), bytes)
                .map(Some)
                .map_err(|e| format!("{what}: {e}")),
            None => Ok(None),
        }
    };
    let keep = |clear: &str, p: Option<PathBuf>| if get(clear) == "on" { None } else { p };
    let ca_file = upload("ca", "CA file")?.or_else(|| keep("clear_ca", now.as_ref().and_then(|f| f.ca_file.clone())));
    let client_cert_file = upload("client_cert", "client certificate")?
        .or_else(|| keep("clear_client", now.as_ref().and_then(|f| f.client_cert_file.clone())));
    let client_key_file =
        upload("client_key", "client key")?.or_else(|| keep("clear_client", now.as_ref().and_then(|f| f.client_key_file.clone())));
    let opt = |k: &str| Some(get(k).to_string()).filter(|x| !x.is_empty());
    let edit = DestinationEdit {
        name: get("name").to_string(),
        address: get("address").to_string(),
        transport: get("transport").to_string(),
        framing: get("framing").to_string(),
        format: get("format").to_string(),
        fingerprint: opt("fingerprint"),
        server_name: opt("server_name"),
        ca_file,
        client_cert_file,
        client_key_file,
    };
    if edit.name.is_empty() || edit.address.is_empty() {
        return Err("a destination needs a name and an address".into());
    }
    config_edit::set_destination(&mut doc, original, Some(&edit))?;
    Ok(doc.to_string())
}

/// `POST /settings/revert`: preview going back to the previous version.
pub async fn revert(AxState(s): AxState<State>, v: Viewer, parts: Parts, Form(f): Form<Vec<(String, String)>>) -> Response {
    let (a, _) = match admin_form(&s, &v, &parts, f) {
        Ok(x) => x,
        Err(r) => return *r,
    };
    off_thread(&v, move |v| match (a.read(), a.read_previous()) {
        (Ok(cur), Ok(Some(prev))) => preview(v, &a, &cur, Ok(prev), "revert"),
        (Ok(cur), Ok(None)) => preview(v, &a, &cur, Err("no previous version is kept yet".into()), "revert"),
        (Err(e), _) | (_, Err(e)) => preview(v, &a, "", Err(e), "revert"),
    })
    .await
}

/// `POST /settings/apply`: save the previewed text if the file is still the
/// one previewed, reload, and put the old text back if the reload refuses.
pub async fn apply(AxState(s): AxState<State>, v: Viewer, parts: Parts, Form(f): Form<Vec<(String, String)>>) -> Response {
    let (a, fields) = match admin_form(&s, &v, &parts, f) {
        Ok(x) => x,
        Err(r) => return *r,
    };
    let get = |k: &str| fields.get(k).map(String::as_str).unwrap_or("");
    let text = get("text").replace("\r\n", "\n");
    let action = if get("origin") == "revert" {
        "settings_reverted"
    } else {
        "settings_applied"
    };
    let current = match read_current(&a).await {
        Ok(c) => c,
        Err(e) => {
            return page(
                StatusCode::INTERNAL_SERVER_ERROR,
                "Not applied",
                &v,
                &format!("<p class=\"error\">{}</p>", esc(&e)),
            );
        }
    };
    if config_edit::text_hash(&current) != get("base") {
        return page(
            StatusCode::CONFLICT,
            "Not applied",
            &v,
            "<p class=\"error\" role=\"alert\">The file changed since this preview (another admin, or by hand). Nothing was \
             applied.</p><p><a href=\"/settings\">Start again from the settings</a></p>",
        );
    }
    let saved = {
        let (a, current, text) = (a.clone(), current.clone(), text.clone());
        tokio::task::spawn_blocking(move || {
            run_check(&a, &text).map_err(|e| format!("not valid, nothing applied: {e}"))?;
            a.save(&current, &text)
        })
        .await
        .unwrap_or_else(|e| Err(e.to_string()))
    };
    if let Err(e) = saved {
        s.audit_action(&v, peer_ip(&parts), action, format!("refused: {e}"));
        return page(
            StatusCode::BAD_REQUEST,
            "Not applied",
            &v,
            &format!(
                "<p class=\"error\" role=\"alert\">{}</p><p><a href=\"/settings\">Back to the settings</a></p>",
                esc(&e)
            ),
        );
    }
    let d = config_edit::diff(&current, &text);
    let (plus, minus) = (
        d.iter().filter(|(k, _)| *k == '+').count(),
        d.iter().filter(|(k, _)| *k == '-').count(),
    );
    match s.control(crate::control::Request::Reload).await {
        Ok(what) => {
            s.audit_action(
                &v,
                peer_ip(&parts),
                action,
                format!("{}: +{plus} -{minus} lines; {what}", a.file.display()),
            );
            page(
                StatusCode::OK,
                "Applied",
                &v,
                &format!(
                    "<p class=\"ok-text\" role=\"status\">{}. The version before is kept for a revert.</p><p><a href=\"/settings\">Back to the settings</a></p>",
                    esc(&capitalise(&what))
                ),
            )
        }
        Err(e) => {
            let restored = a.restore(&current);
            let tail = match restored {
                Ok(()) => "the file was put back as it was".to_string(),
                Err(r) => format!("and the old file could not be put back: {r}"),
            };
            s.audit_action(&v, peer_ip(&parts), action, format!("reload refused: {e}; {tail}"));
            page(
                StatusCode::BAD_REQUEST,
                "Not applied",
                &v,
                &format!(
                    "<p class=\"error\" role=\"alert\">The appliance refused to reload: {}; {}.</p><p><a href=\"/settings\">Back to the settings</a></p>",
                    esc(&e),
                    esc(&tail)
                ),
            )
        }
    }
}

fn capitalise(s: &str) -> String {
    let mut c = s.chars();
    match c.next() {
        Some(f) => f.to_uppercase().chain(c).collect(),
        None => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn forms_make_candidates_and_say_where_they_are_wrong() {
        let cur = "# kept\n[storage]\nbudget = \"1GiB\"\n";
        let c = candidate(
            cur,
            &fields(&[("section", "internal"), ("internal", "10.0.0.0/8\r\n\r\n# note\n192.168.1.0/24")]),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert!(
            c.starts_with("# kept\n") && c.contains("internal = [\"10.0.0.0/8\", \"192.168.1.0/24\"]"),
            "{c}"
        );
        let e = candidate(cur, &fields(&[("section", "internal"), ("internal", "10.0.0.0/8\nten")])).err();
        assert_eq!(e.as_deref(), Some("internal networks, line 2: \"ten\" is not an address or prefix"));
        let c = candidate(
            cur,
            &fields(&[
                ("section", "exporters"),
                ("e0_address", "192.0.2.1"),
                ("e0_rate", "100"),
                ("e0_mode", "force"),
                ("e0_name", "edge"),
                ("e1_address", "192.0.2.2"),
                ("e1_remove", "on"),
                ("e2_address", ""),
                ("e2_rate", ""),
                ("e2_mode", "default"),
                ("e2_name", ""),
            ]),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(c.matches("[[exporter]]").count(), 1, "{c}");
        assert!(c.contains("sampling_rate = 100") && !c.contains("192.0.2.2"), "{c}");
        let c = candidate(
            cur,
            &fields(&[("section", "names"), ("n0_net", "10.1.2.3"), ("n0_name", "printer")]),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert!(c.contains("[[network.name]]\nnet = \"10.1.2.3/32\"\nname = \"printer\""), "{c}");
        let e = candidate(cur, &fields(&[("section", "names"), ("n0_net", "10.1.2.3"), ("n0_name", "")])).err();
        assert!(e.is_some_and(|e| e.starts_with("names row 1: ")));
        let e = candidate(cur, &fields(&[("section", "exporters"), ("e0_address", "x"), ("e0_rate", "")])).err();
        assert_eq!(e.as_deref(), Some("exporter row 1: \"x\" is not an IP address"));
        let c = candidate(
            cur,
            &fields(&[
                ("section", "allow"),
                ("a0_name", "backup"),
                ("a0_dst", "203.0.113.9"),
                ("a0_port", "443"),
                ("a0_kinds", "beaconing, exfiltration"),
            ]),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert!(c.contains("kinds = [\"beaconing\", \"exfiltration\"]"), "{c}");
        let e = candidate(cur, &fields(&[("section", "allow"), ("a0_port", "99999")])).err();
        assert_eq!(e.as_deref(), Some("allow-list row 1: port \"99999\" is not a port number"));
        assert_eq!(
            candidate(cur, &fields(&[("section", "text"), ("text", "a\r\nb")])).ok().as_deref(),
            Some("a\nb")
        );
    }

    #[test]
    fn the_management_form_makes_the_table_and_says_what_is_wrong() {
        let cur = "# site\n[web]\nmetrics_public = true\n";
        let c = candidate(
            cur,
            &fields(&[
                ("section", "management"),
                ("m_mode", "static"),
                ("m_interface", "eth0"),
                ("m_address", "10.0.2.15/24"),
                ("m_gateway", "10.0.2.2"),
                ("m_vlan", "20"),
                ("m_dns", "10.0.2.3, 10.0.2.4"),
                ("m_ntp", "10.0.2.2:1123"),
                ("m_confirm", "45s"),
            ]),
        )
        .unwrap();
        assert!(c.starts_with(cur), "{c}");
        let m = crate::management::from_text(&c).unwrap().unwrap();
        assert_eq!(m.vlan, Some(20));
        assert_eq!(m.dns.as_ref().map(Vec::len), Some(2));
        assert_eq!(m.confirm().as_secs(), 45);
        // The form shows it back.
        let form = management_form("", Some(&m));
        assert!(
            form.contains("<option value=\"static\" selected>") && form.contains("value=\"10.0.2.3 10.0.2.4\""),
            "{form}"
        );
        // "The image's default" takes the table away.
        let back = candidate(&c, &fields(&[("section", "management"), ("m_mode", "board"), ("m_address", "x")])).unwrap();
        assert_eq!(crate::management::from_text(&back).unwrap(), None);
        let e = |f: &[(&str, &str)]| candidate(cur, &fields(f)).unwrap_err();
        assert!(e(&[("section", "management"), ("m_mode", "static")]).contains("management network, address: mode = \"static\" needs"));
        assert!(e(&[("section", "management"), ("m_mode", "dhcp"), ("m_vlan", "5000")]).contains("VLAN"));
        assert!(e(&[("section", "management"), ("m_mode", "dhcp"), ("m_dns", "dns.example")]).contains("\"dns.example\" is not an IPv4"));
        assert!(e(&[("section", "management"), ("m_mode", "dhcp"), ("m_confirm", "soon")]).contains("keep within"));
    }

    #[test]
    fn the_diff_shows_context_around_changes_only() {
        let old: String = (1..=20).map(|i| format!("line {i}\n")).collect();
        let new = old.replace("line 10\n", "line ten\n");
        let h = diff_html(&config_edit::diff(&old, &new));
        assert!(
            h.contains("<span class=\"del\">- line 10</span>") && h.contains("<span class=\"add\">+ line ten</span>"),
            "{h}"
        );
        assert!(
            h.contains("line 8") && h.contains("line 12") && !h.contains("line 7<") && !h.contains("line 13"),
            "{h}"
        );
        assert!(h.contains("…"), "{h}");
    }
}
