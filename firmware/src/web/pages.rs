//! The HTML pages: each renders the same view value its `/api/v1/` twin
//! returns as JSON ([`super::views`]), plus the login/setup form, messages and
//! the admin forms (send a test event, add or remove a user).

use super::app::{Q, State, csrf_ok, csrf_refused, peer_ip};
use super::auth::Viewer;
use super::html::{self, badge, esc, table, time};
use super::views::{self, Level};
use crate::units;
use axum::Form;
use axum::extract::{Path, State as AxState};
use axum::http::{StatusCode, request::Parts};
use axum::response::{Html, IntoResponse, Response};
use serde::Deserialize;
use std::fmt::Write;

fn page(title: &str, active: &str, viewer: &Viewer, body: &str) -> Response {
    Html(html::layout(title, active, Some(viewer), body)).into_response()
}

fn failed() -> Response {
    (StatusCode::INTERNAL_SERVER_ERROR, "the view failed").into_response()
}

/// A short page with a message and one link.
pub fn message_page(viewer: Option<&Viewer>, title: &str, text: &str, link: &str, link_text: &str) -> String {
    html::layout(
        title,
        "",
        viewer,
        &format!("<p>{}</p><p><a href=\"{}\">{}</a></p>", esc(text), esc(link), esc(link_text)),
    )
}

/// `/login`: the form, or first-time setup while no admin exists.
pub fn login(setup: bool, token: &str, error: Option<&str>) -> String {
    let mut b = String::new();
    if let Some(e) = error {
        let _ = write!(b, "<p class=\"error\" role=\"alert\">{}</p>", esc(e));
    }
    if setup {
        let _ = write!(
            b,
            "<section class=\"card\"><h2>First-time setup</h2><p>No admin exists yet. Enter the setup code that \
             <code>flowwarden run</code> printed (on the appliance: the serial console) and choose the first \
             admin's name and password (at least {} characters).</p>\
             <form method=\"post\" action=\"/setup\" class=\"stack\">\
             <input type=\"hidden\" name=\"csrf\" value=\"{t}\">\
             <label>Setup code <input name=\"code\" autocomplete=\"off\" required placeholder=\"XXXX-XXXX-XXXX\"></label>\
             <label>Admin user name <input name=\"user\" autocomplete=\"username\" required></label>\
             <label>Password <input type=\"password\" name=\"password\" autocomplete=\"new-password\" required></label>\
             <label>Password again <input type=\"password\" name=\"password2\" autocomplete=\"new-password\" required></label>\
             <button type=\"submit\">Create admin and log in</button></form></section>",
            crate::accounts::MIN_PASSWORD,
            t = esc(token)
        );
        return html::layout("Set up", "", None, &b);
    }
    let _ = write!(
        b,
        "<form method=\"post\" action=\"/login\" class=\"stack card\">\
         <input type=\"hidden\" name=\"csrf\" value=\"{}\">\
         <label>User name <input type=\"text\" name=\"user\" autocomplete=\"username\" required autofocus></label>\
         <label>Password <input type=\"password\" name=\"password\" autocomplete=\"current-password\" required></label>\
         <button type=\"submit\">Log in</button></form>\
         <p class=\"hint\">Forgot the password? On the serial console: <code>user set NAME --role admin</code>.</p>",
        esc(token)
    );
    html::layout("Log in", "", None, &b)
}

fn level_badge(l: Level) -> String {
    let text = match l {
        Level::Ok => "OK",
        Level::Warming => "warming up",
        Level::Warn => "attention",
        Level::Bad => "problem",
    };
    badge(l.as_str(), text)
}

fn rate(v: f64, unit: &str) -> String {
    if v >= 1e6 {
        format!("{:.2} M{unit}/s", v / 1e6)
    } else if v >= 1e3 {
        format!("{:.1} k{unit}/s", v / 1e3)
    } else {
        format!("{v:.1} {unit}/s")
    }
}

fn alert_link(a: &serde_json::Value) -> String {
    let id = a["id"].as_str().unwrap_or("");
    format!(
        "<a href=\"/alerts/{}\">{}</a>",
        html::url(id),
        esc(a["summary"].as_str().unwrap_or(id))
    )
}

fn alert_rows(list: &[serde_json::Value]) -> Vec<Vec<String>> {
    list.iter()
        .map(|a| {
            let sev = a["severity"].as_u64().unwrap_or(0);
            let class = if sev >= 7 {
                "bad"
            } else if sev >= 4 {
                "warn"
            } else {
                "ok"
            };
            vec![
                time(a["last_seen"].as_str().unwrap_or("")),
                esc(a["kind"].as_str().unwrap_or("")),
                badge(class, &sev.to_string()),
                esc(a["src"].as_str().unwrap_or("")),
                esc(a["dst"].as_str().unwrap_or("-")),
                alert_link(a),
            ]
        })
        .collect()
}

const ALERT_HEAD: [&str; 6] = ["Last seen", "Kind", "Severity", "Source", "Destination", "Summary"];

pub async fn overview(AxState(s): AxState<State>, v: Viewer) -> Response {
    let Some(st) = views::build(&s, views::status).await else {
        return failed();
    };
    let mut b = String::new();
    let _ = write!(
        b,
        "<section class=\"verdict {}\" id=\"verdict\"><h2>{} {}</h2><ul>",
        st.verdict.as_str(),
        level_badge(st.verdict),
        match st.verdict {
            Level::Ok => "Healthy",
            Level::Warming => "Warming up",
            Level::Warn => "Needs attention",
            Level::Bad => "Not working",
        }
    );
    for c in &st.checks {
        let _ = write!(
            b,
            "<li class=\"{}\">{} <b>{}</b>: {}{}</li>",
            c.level.as_str(),
            level_badge(c.level),
            esc(c.name),
            esc(&c.reason),
            c.fix
                .as_ref()
                .map(|f| format!(" <span class=\"fix\">→ {}</span>", esc(f)))
                .unwrap_or_default()
        );
    }
    b.push_str("</ul></section><section class=\"tiles\">");
    for (k, val) in [
        ("Flows", rate(st.rate.flows_per_s, "")),
        ("Traffic", units::bits_per_second(st.rate.bytes_per_s * 8.0)),
        ("Packets", rate(st.rate.packets_per_s, "")),
        (
            "Alerts (24 h)",
            format!("{} ({} new, {} kept)", st.alerts_24h, st.alerts_24h_new, st.alerts_total),
        ),
        ("History", format!("{:.1} days", st.storage.days_kept)),
        ("Uptime", units::duration_ms(st.uptime_s * 1000)),
    ] {
        let _ = write!(b, "<div class=\"tile\"><span>{k}</span><b>{}</b></div>", esc(&val));
    }
    b.push_str("</section>");
    if let Some(m) = &st.rate.minute {
        let _ = write!(b, "<p class=\"hint\">Rates of the last complete minute ({}).</p>", time(m));
    }
    b.push_str("<h2>Alerts of the last 24 hours</h2>");
    if !st.alerts_24h_by_kind.is_empty() {
        let kinds: Vec<String> = st
            .alerts_24h_by_kind
            .iter()
            .map(|(k, n)| format!("<a href=\"/alerts?kind={}\">{} {}</a>", html::url(k), n, esc(k)))
            .collect();
        let _ = write!(b, "<p>{}</p>", kinds.join(" · "));
    }
    b.push_str(&table(&ALERT_HEAD, &alert_rows(&st.recent_alerts)));
    b.push_str("<h2>Last errors</h2>");
    if st.errors.is_empty() {
        b.push_str("<p>none</p>");
    } else {
        b.push_str("<ul class=\"errors\">");
        for e in &st.errors {
            let _ = write!(b, "<li>{}</li>", esc(e));
        }
        b.push_str("</ul>");
    }
    let _ = write!(
        b,
        "<h2>This appliance</h2><dl><dt>Version</dt><dd>{}</dd><dt>Started</dt><dd>{}</dd>\
         <dt>Page</dt><dd>{}</dd><dt>Certificate</dt><dd><code>{}</code></dd><dt>Collector</dt><dd>{}</dd></dl>",
        esc(&st.version),
        time(&st.started),
        esc(&st.web.join(", ")),
        esc(&st.certificate),
        esc(&st.collector.join(", "))
    );
    page("Overview", "/", &v, &b)
}

pub async fn exporters(AxState(s): AxState<State>, v: Viewer) -> Response {
    let Some(x) = views::build(&s, views::exporters).await else {
        return failed();
    };
    let rows: Vec<Vec<String>> = x
        .exporters
        .iter()
        .map(|e| {
            let st = &e.stats;
            let loss = if st.lost_records > 0 {
                format!(
                    "{:.2} %",
                    st.lost_records as f64 * 100.0 / (st.records + st.lost_records).max(1) as f64
                )
            } else {
                "0".into()
            };
            vec![
                format!(
                    "{}{}",
                    esc(&st.exporter),
                    st.name
                        .as_ref()
                        .map(|n| format!("<br><small>{}</small>", esc(n)))
                        .unwrap_or_default()
                ),
                esc(&e.versions_seen.iter().map(|v| v.to_string()).collect::<Vec<_>>().join(",")),
                format!(
                    "{}{}",
                    time(&e.last_seen),
                    if e.silent {
                        " ".to_string() + &badge("bad", "silent")
                    } else {
                        String::new()
                    }
                ),
                rate(e.records_per_s, ""),
                st.records.to_string(),
                (st.templates + st.options_templates).to_string(),
                (st.pending_held.saturating_sub(st.pending_replayed + st.pending_dropped)).to_string(),
                if st.sampling_rate > 1 {
                    format!("1:{}", st.sampling_rate)
                } else {
                    "-".into()
                },
                loss,
                esc(&units::offset_ms(st.clock_offset_ms)),
                match e.export_lag_s {
                    Some((held, delay)) => format!(
                        "{}<br><small>{} after the last packet</small>",
                        esc(&units::duration_ms(held * 1000)),
                        esc(&units::duration_ms(delay * 1000))
                    ),
                    None => "-".into(),
                },
                st.malformed.to_string(),
                if e.hints.is_empty() {
                    badge("ok", "OK")
                } else {
                    e.hints.iter().map(|h| format!("<div class=\"hint\">{}</div>", esc(h))).collect()
                },
            ]
        })
        .collect();
    let mut b = table(
        &[
            "Exporter",
            "Versions",
            "Last seen",
            "Records/s",
            "Records",
            "Template records",
            "Waiting for template",
            "Sampling",
            "Seq. loss",
            "Clock offset",
            "Export lag",
            "Decode errors",
            "Hints",
        ],
        &rows,
    );
    let _ = write!(
        b,
        "<p>Templates known now: {}; data sets waiting for their template: {}. Datagrams dropped: {} in the kernel's \
         socket buffers, {} in the decoder queue; {} {} not NetFlow or IPFIX (another sender on the collector's \
         port).</p>",
        x.templates_known,
        x.sets_waiting,
        x.kernel_drops,
        x.queue_drops,
        x.not_netflow,
        if x.not_netflow == 1 { "was" } else { "were" }
    );
    if !x.unknown_senders.is_empty() {
        b.push_str(
            "<h2>Unknown senders</h2><p class=\"hint\">Addresses that sent datagrams to the collector's port that \
             were not NetFlow or IPFIX (the 32 heard most recently).</p>",
        );
        let rows: Vec<Vec<String>> = x
            .unknown_senders
            .iter()
            .map(|u| vec![html::addr(&u.sender), esc(&u.looks_like), u.datagrams.to_string(), esc(&u.hint)])
            .collect();
        b.push_str(&table(&["Sender", "Looks like", "Datagrams", "What to do"], &rows));
    }
    page("Exporters", "/exporters", &v, &b)
}

/// The traffic page's in vs out: a mirrored chart of bytes out (up) and in
/// (down), and the range's totals per direction with links to their flows.
fn in_vs_out(t: &views::Traffic, every: &str, span: &str) -> String {
    let mut b = String::from("<h2>In vs out</h2>");
    if let Some(n) = &t.directions_note {
        let _ = write!(b, "<p class=\"hint\">{}</p>", esc(n));
        return b;
    }
    let out: Vec<u64> = t.in_out.iter().map(|p| p.1).collect();
    let inb: Vec<u64> = t.in_out.iter().map(|p| p.0).collect();
    b.push_str(&html::bars_mirrored(
        &out,
        &inb,
        ("out", "in"),
        &format!("Bytes per {every}, out to and in from outside the internal networks"),
        units::bytes,
        span,
    ));
    let all: u64 = t.directions.iter().map(|d| d.bytes).sum();
    let rows: Vec<Vec<String>> = t
        .directions
        .iter()
        .map(|d| {
            let what = match d.direction.as_str() {
                "inbound" => "In: from outside to an internal address",
                "outbound" => "Out: from an internal address to outside",
                "internal" => "Inside: both ends internal",
                "external" => "Transit: neither end internal",
                _ => "Unclassified (no internal networks configured)",
            };
            let share = if all == 0 { 0.0 } else { d.bytes as f64 * 100.0 / all as f64 };
            vec![
                format!(
                    "<a href=\"/flows?filter={}&amp;from=-{}\">{}</a>",
                    html::url(&format!("direction {}", d.direction)),
                    esc(&t.range),
                    esc(what)
                ),
                units::bytes(d.bytes),
                format!("{share:.1} %"),
                d.packets.to_string(),
                d.flows.to_string(),
            ]
        })
        .filter(|r| r[4] != "0")
        .collect();
    if rows.is_empty() {
        b.push_str("<p>No flows in this range.</p>");
    } else {
        b.push_str(&table(
            &["Direction (by Settings → internal networks)", "Bytes", "Share", "Packets", "Flows"],
            &rows,
        ));
    }
    b
}

pub async fn traffic(AxState(s): AxState<State>, v: Viewer, q: Q) -> Response {
    let Some(t) = views::build(&s, move |s| views::traffic(s, &q.0)).await else {
        return failed();
    };
    let mut b = String::from("<p class=\"ranges\">");
    for (name, _, _) in views::RANGES {
        let cls = if name == t.range { " class=\"active\"" } else { "" };
        let _ = write!(b, "<a href=\"/traffic?range={name}\"{cls}>{name}</a> ");
    }
    b.push_str("</p>");
    let bytes: Vec<u64> = t.series.iter().map(|p| p.3).collect();
    let flows: Vec<u64> = t.series.iter().map(|p| p.1).collect();
    let span = match (t.series.first(), t.series.last()) {
        (Some(a), Some(z)) => format!(", {} to {}", time(&a.0), time(&z.0)),
        _ => String::new(),
    };
    let every = units::duration_ms(t.bucket_s * 1000);
    b.push_str(&html::bars(&bytes, &format!("Bytes per {every}"), units::bytes, &span));
    b.push_str(&html::bars(&flows, &format!("Flows per {every}"), |n| n.to_string(), &span));
    if let Some(n) = &t.note {
        let _ = write!(b, "<p class=\"hint\">{}</p>", esc(n));
    }
    b.push_str(&in_vs_out(&t, &every, &span));
    for (name, rows) in &t.top {
        let _ = write!(b, "<h2>Top {}</h2>", esc(name));
        if t.top_approximate.contains(name) {
            b.push_str(
                "<p class=\"hint\">Approximate: summed from each hour's stored top list (every value is at least \
                 this; the exact ranking: <code>flowwarden query --top</code>).</p>",
            );
        }
        let r: Vec<Vec<String>> = rows
            .iter()
            .map(|r| vec![esc(&r.key), units::bytes(r.bytes), r.packets.to_string(), r.flows.to_string()])
            .collect();
        b.push_str(&table(&["Key", "Bytes", "Packets", "Flows"], &r));
    }
    if !t.countries.is_empty() {
        b.push_str(
            "<h2>Countries</h2><p class=\"hint\">External addresses among each hour's stored top destinations and \
             talkers, summed (at least these). <code>dst country NL</code> in the flow search finds the flows.</p>",
        );
        let r: Vec<Vec<String>> = t
            .countries
            .iter()
            .map(|c| {
                vec![
                    format!(
                        "<a href=\"/flows?filter={}&amp;from=-{}\">{}</a>",
                        html::url(&format!("country {}", c.country)),
                        esc(&t.range),
                        esc(&c.country)
                    ),
                    units::bytes(c.bytes_to),
                    units::bytes(c.bytes_from),
                    c.flows.to_string(),
                ]
            })
            .collect();
        b.push_str(&table(&["Country", "Bytes to", "Bytes from", "Flows"], &r));
    }
    page("Traffic", "/traffic", &v, &b)
}

pub async fn alerts(AxState(s): AxState<State>, v: Viewer, q: Q) -> Response {
    let Some(a) = views::build(&s, move |s| views::alerts(s, &q.0)).await else {
        return failed();
    };
    let f = |k: &str| esc(a.filter.get(k).map(String::as_str).unwrap_or(""));
    let mut b = format!(
        "<form method=\"get\" action=\"/alerts\" class=\"filters\">\
         <label>Kind <input name=\"kind\" value=\"{}\" placeholder=\"scan\"></label>\
         <label>Min. severity <input name=\"severity\" value=\"{}\" size=\"3\"></label>\
         <label>Host <input name=\"host\" value=\"{}\" placeholder=\"10.0.0.7\"></label>\
         <label>Since <input name=\"since\" value=\"{}\" placeholder=\"-24h\"></label>\
         <button type=\"submit\">Filter</button></form>",
        f("kind"),
        f("severity"),
        f("host"),
        f("since")
    );
    if let Some(e) = &a.error {
        let _ = write!(b, "<p class=\"error\">{}</p>", esc(e));
    }
    let _ = write!(
        b,
        "<p>{} alerts, {} not acknowledged{}</p>",
        a.total,
        a.unacknowledged,
        if a.total > 500 { " (newest 500 shown)" } else { "" }
    );
    let rows: Vec<Vec<String>> = alert_rows(&a.alerts)
        .into_iter()
        .zip(&a.alerts)
        .map(|(mut r, j)| {
            let id = j["id"].as_str().unwrap_or("");
            r.push(match a.acknowledged.get(id) {
                Some(k) => format!("✓ {}", esc(&k.by)),
                None => badge("warn", "new"),
            });
            r
        })
        .collect();
    let mut head = ALERT_HEAD.to_vec();
    head.push("Acknowledged");
    b.push_str(&table(&head, &rows));
    page("Alerts", "/alerts", &v, &b)
}

pub async fn alert(AxState(s): AxState<State>, v: Viewer, Path(id): Path<String>) -> Response {
    let Some(found) = views::build(&s, move |s| views::alert(s, &id)).await else {
        return failed();
    };
    let Some(d) = found else {
        return no_such_alert(&v);
    };
    let a = &d.alert;
    let mut b = format!("<p class=\"summary\">{}</p><dl>", esc(a["summary"].as_str().unwrap_or("")));
    for (k, label) in [
        ("id", "Id"),
        ("kind", "Kind"),
        ("severity", "Severity"),
        ("src", "Source"),
        ("dst", "Destination"),
        ("dst_port", "Port"),
        ("count", "Detections folded in"),
    ] {
        let val = match &a[k] {
            serde_json::Value::String(s) if k == "src" || k == "dst" => html::addr(s),
            serde_json::Value::String(s) => esc(s),
            serde_json::Value::Null => "-".into(),
            other => esc(&other.to_string()),
        };
        let _ = write!(b, "<dt>{label}</dt><dd>{val}</dd>");
    }
    let _ = write!(
        b,
        "<dt>First seen</dt><dd>{}</dd><dt>Last seen</dt><dd>{}</dd>",
        time(a["first_seen"].as_str().unwrap_or("")),
        time(a["last_seen"].as_str().unwrap_or(""))
    );
    let attack: Vec<String> = a["attack"]
        .as_array()
        .map(|l| l.iter().filter_map(|x| x.as_str()).map(esc).collect())
        .unwrap_or_default();
    let _ = write!(
        b,
        "<dt>ATT&amp;CK</dt><dd>{}</dd></dl>",
        if attack.is_empty() { "-".into() } else { attack.join(", ") }
    );
    b.push_str("<h2>Evidence</h2>");
    let ev: Vec<Vec<String>> = a["evidence"]
        .as_object()
        .map(|o| o.iter().map(|(k, v)| vec![esc(k), evidence_html(v)]).collect())
        .unwrap_or_default();
    b.push_str(&table(&["Field", "Value"], &ev));
    match &d.acknowledged {
        Some(k) => {
            let _ = write!(b, "<p>Acknowledged by {} at {}.</p>", esc(&k.by), html::time_ms(k.at_ms));
        }
        None if v.is_admin() => {
            let _ = write!(
                b,
                "<form method=\"post\" action=\"/alerts/{}/ack\">{}<button type=\"submit\">Acknowledge</button></form>",
                html::url(a["id"].as_str().unwrap_or("")),
                html::csrf(&v)
            );
        }
        None => b.push_str("<p>Not acknowledged yet.</p>"),
    }
    b.push_str("<h2>SIEM delivery</h2>");
    let del: Vec<Vec<String>> = d.delivery.iter().map(|x| vec![esc(&x.destination), esc(&x.state)]).collect();
    b.push_str(&table(&["Destination", "State"], &del));
    let _ = write!(
        b,
        "<p><a class=\"button\" href=\"/flows?filter={}&amp;from={}&amp;to={}\">Flows behind this alert</a></p>",
        html::url(&d.flows_filter),
        html::url(&d.flows_from),
        html::url(&d.flows_to)
    );
    page("Alert", "/alerts", &v, &b)
}

pub async fn flows(AxState(s): AxState<State>, v: Viewer, q: Q) -> Response {
    let q = q.0;
    if matches!(q.format.as_deref(), Some("csv") | Some("json")) {
        let format = if q.format.as_deref() == Some("csv") {
            crate::query::output::Format::Csv
        } else {
            crate::query::output::Format::Jsonl
        };
        return views::build(&s, move |s| views::flows_download(s, &q, format))
            .await
            .unwrap_or_else(failed);
    }
    let Some(f) = views::build(&s, move |s| views::flows(s, &q)).await else {
        return failed();
    };
    let mut b = format!(
        "<form method=\"get\" action=\"/flows\" class=\"filters\">\
         <label class=\"wide\">Filter <input name=\"filter\" value=\"{}\" placeholder=\"src net 10.0.0.0/8 and dst port 443\"></label>\
         <label>From <input name=\"from\" value=\"{}\" placeholder=\"-1h (default)\"></label>\
         <label>To <input name=\"to\" value=\"{}\" placeholder=\"now\"></label>\
         <label>Per page <input name=\"limit\" value=\"{}\" size=\"5\"></label>\
         <button type=\"submit\">Search</button></form>",
        esc(&f.filter),
        esc(f.from.as_deref().unwrap_or("")),
        esc(f.to.as_deref().unwrap_or("")),
        f.limit
    );
    if let Some(e) = &f.error {
        let _ = write!(b, "<pre class=\"error\">{}</pre>", esc(e));
    }
    let rows: Vec<Vec<String>> = f
        .flows
        .iter()
        .map(|r| {
            let g = |k: &str| match &r[k] {
                serde_json::Value::String(s) => esc(s),
                other => esc(&other.to_string()),
            };
            vec![
                time(r["start"].as_str().unwrap_or("")),
                units::duration_ms(duration_between(r["start"].as_str(), r["end"].as_str())),
                format!("{}:{}", html::addr(r["src"].as_str().unwrap_or("")), g("src_port")),
                format!("{}:{}", html::addr(r["dst"].as_str().unwrap_or("")), g("dst_port")),
                proto_text(r["proto"].as_u64()),
                units::bytes(r["bytes"].as_u64().unwrap_or(0)),
                g("packets"),
                g("exporter"),
            ]
        })
        .collect();
    b.push_str(&table(
        &[
            "Start",
            "Duration",
            "Source",
            "Destination",
            "Proto",
            "Bytes",
            "Packets",
            "Exporter",
        ],
        &rows,
    ));
    let base = format!(
        "/flows?filter={}&amp;from={}&amp;to={}&amp;limit={}",
        html::url(&f.filter),
        html::url(f.from.as_deref().unwrap_or("")),
        html::url(f.to.as_deref().unwrap_or("")),
        f.limit
    );
    b.push_str("<p class=\"pager\">");
    if f.page > 1 {
        let _ = write!(b, "<a href=\"{base}&amp;page={}\">← previous</a> ", f.page - 1);
    }
    let _ = write!(b, "page {} ", f.page);
    if f.more {
        let _ = write!(b, "<a href=\"{base}&amp;page={}\">next →</a>", f.page + 1);
    }
    let _ = write!(
        b,
        " · download this page: <a href=\"{base}&amp;page={p}&amp;format=csv\">CSV</a> \
         <a href=\"{base}&amp;page={p}&amp;format=json\">JSON lines</a></p>",
        p = f.page
    );
    page("Flows", "/flows", &v, &b)
}

pub async fn storage(AxState(s): AxState<State>, v: Viewer) -> Response {
    let Some(x) = views::build(&s, views::storage).await else {
        return failed();
    };
    let m = &x.summary;
    let mut b = String::from("<dl>");
    for (k, val) in [
        ("Flows kept", m.flows_kept.to_string()),
        ("Oldest flow", m.oldest_flow.as_deref().map(time).unwrap_or_else(|| "-".into())),
        ("History", format!("{:.1} days", m.days_kept)),
        (
            "History the capacity holds at this rate",
            x.projected_days
                .map(|d| format!("about {d:.0} days"))
                .unwrap_or_else(|| "not known yet".into()),
        ),
        ("Used", units::bytes(m.bytes_used)),
        ("Capacity (budget or disk, whichever is smaller)", units::bytes(m.capacity_bytes)),
        ("Budget", units::bytes(m.budget_bytes)),
        ("Bytes per flow", format!("{:.1}", x.bytes_per_flow)),
        ("Segments", m.segments.to_string()),
        ("Flows evicted (oldest first, by the budget)", m.flows_evicted.to_string()),
        ("Segments evicted", x.segments_evicted.to_string()),
        ("Roll-up rows trimmed", x.rollup_rows_trimmed.to_string()),
        ("Failed commits", m.commit_failures.to_string()),
        ("Disk full", m.disk_full.to_string()),
        ("Damaged files moved aside", m.files_damaged.to_string()),
        ("Data directory", esc(&x.data_dir)),
    ] {
        let _ = write!(b, "<dt>{}</dt><dd>{val}</dd>", esc(k));
    }
    b.push_str("</dl>");
    page("Storage", "/storage", &v, &b)
}

pub async fn forwarding(AxState(s): AxState<State>, v: Viewer) -> Response {
    let Some(f) = views::build(&s, views::forwarding).await else {
        return failed();
    };
    let mut b = String::new();
    if f.destinations.is_empty() {
        b.push_str(
            "<p>No SIEM destination is configured: alerts stay on this box. Add a <code>[[forward]]</code> table to the configuration.</p>",
        );
    }
    for d in &f.destinations {
        let g = |k: &str| match &d[k] {
            serde_json::Value::String(s) => esc(s),
            serde_json::Value::Null => "-".into(),
            other => esc(&other.to_string()),
        };
        let _ = write!(
            b,
            "<section class=\"card\"><h2>{} <small>{} {} {} {}</small></h2><dl>\
             <dt>State</dt><dd>{}</dd><dt>Last success</dt><dd>{}</dd><dt>Last error</dt><dd>{} {}</dd>\
             <dt>Queue</dt><dd>{} entries, oldest {} s</dd><dt>Delivered</dt><dd>{}</dd><dt>Dropped (spool full)</dt><dd>{}</dd>\
             <dt>TLS</dt><dd>{} {}</dd><dt>Server certificate until</dt><dd>{}</dd><dt>Client certificate until</dt><dd>{}</dd></dl>",
            g("name"),
            g("transport"),
            g("address"),
            g("framing"),
            g("format"),
            g("state"),
            g("last_success"),
            g("last_error"),
            d["last_error_at"].as_str().map(|t| format!("({})", time(t))).unwrap_or_default(),
            g("queue_depth"),
            g("oldest_entry_age_s"),
            g("delivered"),
            g("dropped"),
            g("tls_version"),
            g("tls_cipher"),
            g("server_cert_not_after"),
            g("client_cert_not_after"),
        );
        if v.is_admin() {
            let _ = write!(
                b,
                "<form method=\"post\" action=\"/forwarding/test\">{}<input type=\"hidden\" name=\"destination\" value=\"{}\">\
                 <button type=\"submit\">Send test event</button></form>",
                html::csrf(&v),
                g("name")
            );
        }
        b.push_str("</section>");
    }
    page("Forwarding", "/forwarding", &v, &b)
}

pub async fn system(AxState(s): AxState<State>, v: Viewer) -> Response {
    let v2 = v.clone();
    let Some(x) = views::build(&s, move |s| views::system(s, &v2)).await else {
        return failed();
    };
    let mut b = format!(
        "<dl><dt>Version</dt><dd>{}</dd><dt>Started</dt><dd>{}</dd><dt>Uptime</dt><dd>{}</dd>\
         <dt>Page</dt><dd>{}</dd><dt>Certificate</dt><dd><code>{}</code> until {}</dd><dt>Collector</dt><dd>{}</dd>         <dt>Countries</dt><dd>{}</dd></dl>",
        esc(&x.version),
        time(&x.started),
        units::duration_ms(x.uptime_s * 1000),
        esc(&x.web.join(", ")),
        esc(&x.certificate),
        x.certificate_not_after.as_deref().map(time).unwrap_or_else(|| "-".into()),
        esc(&x.collector.join(", ")),
        match &x.countries {
            Some(c) => format!(
                "<code>{}</code>, data of {} ({}; a newer file at <code>DATA_DIR/{}</code> replaces it)",
                esc(&c.file),
                time(&c.built),
                esc(&c.attribution),
                crate::geo::DATA_DB
            ),
            None => format!(
                "no database: countries are not shown (put a MaxMind-format file at <code>DATA_DIR/{}</code>)",
                crate::geo::DATA_DB
            ),
        }
    );
    b.push_str("<h2>Network and time</h2>");
    match (&x.network, &x.time) {
        (None, None) => b.push_str(
            "<p class=\"hint\">Not managed by flowwarden here: the host's own network and clock settings apply \
             (on the appliance image PID 1 sets them up and this section shows them).</p>",
        ),
        (net, time) => {
            b.push_str("<dl>");
            if let Some(n) = net {
                let g = |k: &str| match &n[k] {
                    serde_json::Value::String(s) => esc(s),
                    serde_json::Value::Null => "-".into(),
                    other => esc(&other.to_string()),
                };
                if let Some(t) = n["trial"].as_object() {
                    b.push_str(&network_trial(&v, t));
                }
                let _ = write!(
                    b,
                    "<dt>Interface</dt><dd>{} ({}{})</dd><dt>Address</dt><dd>{}</dd><dt>Gateway</dt><dd>{}</dd><dt>DNS</dt><dd>{}</dd>\
                     <dt>Settings from</dt><dd>{}</dd>",
                    g("interface"),
                    g("mode"),
                    n["vlan"].as_u64().map(|v| format!(", VLAN {v}")).unwrap_or_default(),
                    g("address"),
                    g("gateway"),
                    g("dns"),
                    match n["source"].as_str() {
                        Some("site") => "this site's settings (<a href=\"/settings#management\">Settings</a>)",
                        _ => "the image's defaults (<a href=\"/settings#management\">change them in Settings</a>)",
                    }
                );
                if let Some(c) = n["last_change"].as_str() {
                    let _ = write!(b, "<dt>Last change</dt><dd>{}</dd>", esc(c));
                }
            }
            if let Some(t) = time {
                let text = if t["synced"] == true {
                    format!(
                        "synchronised from {} (stratum {})",
                        t["server"].as_str().unwrap_or("?"),
                        t["stratum"]
                    )
                } else {
                    format!("NOT synchronised: {}", t["reason"].as_str().unwrap_or("no answer"))
                };
                let _ = write!(b, "<dt>Time</dt><dd>{}</dd>", esc(&text));
            }
            b.push_str("</dl>");
        }
    }
    if let Some(f) = &x.firmware {
        b.push_str(&firmware_section(&v, f));
    }
    if v.is_admin() {
        b.push_str(&backup_section(&v));
    }
    if let Some(d) = &x.detectors {
        b.push_str("<h2>Detectors</h2>");
        let rows: Vec<Vec<String>> = d
            .detectors
            .iter()
            .map(|x| vec![esc(&x.name), esc(x.state.as_str()), esc(&x.detail)])
            .collect();
        b.push_str(&table(&["Detector", "State", "Detail"], &rows));
    }
    if let Some(users) = &x.users {
        b.push_str("<h2>Users</h2>");
        let rows: Vec<Vec<String>> = users
            .iter()
            .map(|(n, r, c)| {
                vec![
                    esc(n),
                    esc(r),
                    time(c),
                    format!(
                        "<form method=\"post\" action=\"/system/users\">{}<input type=\"hidden\" name=\"action\" value=\"remove\">\
                         <input type=\"hidden\" name=\"user\" value=\"{}\"><button type=\"submit\" class=\"danger\">Remove</button></form>",
                        html::csrf(&v),
                        esc(n)
                    ),
                ]
            })
            .collect();
        b.push_str(&table(&["User", "Role", "Changed", ""], &rows));
        let _ = write!(
            b,
            "<form method=\"post\" action=\"/system/users\" class=\"filters\">{}<input type=\"hidden\" name=\"action\" value=\"set\">\
             <label>User <input name=\"user\" required></label>\
             <label>Role <select name=\"role\"><option>viewer</option><option>admin</option></select></label>\
             <label>Password <input type=\"password\" name=\"password\" autocomplete=\"new-password\" required></label>\
             <button type=\"submit\">Add or change user</button></form>",
            html::csrf(&v)
        );
    }
    if v.is_admin() {
        b.push_str(
            "<p><a class=\"button\" href=\"/system/diagnostics\">Download the diagnostics bundle</a> \
             <span class=\"hint\">configuration (secrets redacted), every view and the live metrics, one JSON file for support</span></p>",
        );
    }
    b.push_str("<h2>Audit log</h2>");
    let rows: Vec<Vec<String>> = x
        .audit
        .iter()
        .map(|e| {
            let r = &e.record;
            vec![html::time_ms(e.at_ms), esc(&r.action), esc(&r.actor), esc(&r.addr), esc(&r.detail)]
        })
        .collect();
    b.push_str(&table(&["Time", "Action", "By", "From", "Detail"], &rows));
    page("System", "/system", &v, &b)
}

#[derive(Deserialize)]
pub struct TestForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    destination: String,
}

/// Admin: send a test event to one SIEM destination.
pub async fn forward_test(AxState(s): AxState<State>, v: Viewer, parts: Parts, Form(f): Form<TestForm>) -> Response {
    if !v.is_admin() {
        return forbidden(&v);
    }
    if !csrf_ok(&parts.headers, &v.csrf, &f.csrf) {
        return csrf_refused(Some(&v));
    }
    let cfgs: Vec<_> = s.forward().iter().filter(|c| c.name == f.destination).cloned().collect();
    if cfgs.is_empty() {
        let body = message_page(
            Some(&v),
            "Unknown destination",
            "There is no such destination.",
            "/forwarding",
            "Forwarding",
        );
        return (StatusCode::NOT_FOUND, Html(body)).into_response();
    }
    let results = crate::forward::test_all(&cfgs).await;
    let text: Vec<String> = results
        .iter()
        .map(|(n, r)| match r {
            Ok(line) => format!("{n}: {line}"),
            Err(e) => format!("{n}: FAILED: {e}"),
        })
        .collect();
    s.audit_action(&v, peer_ip(&parts), "forward_test", text.join("; "));
    let body = message_page(Some(&v), "Test event", &text.join("\n"), "/forwarding", "Forwarding");
    Html(body).into_response()
}

/// The banner of management network settings on trial, with "Keep" for admins.
fn network_trial(v: &Viewer, t: &serde_json::Map<String, serde_json::Value>) -> String {
    let until = t.get("until_unix").and_then(|u| u.as_u64()).unwrap_or(0);
    let mut b = format!(
        "</dl><div class=\"card warn\" id=\"network-trial\" role=\"alert\"><p>New management network settings are on trial: \
         <strong>{}</strong>. Unless they are kept by {}, the previous ones come back: {}.</p>",
        esc(t.get("settings").and_then(|s| s.as_str()).unwrap_or("?")),
        time(&crate::timefmt::rfc3339_ms(until.saturating_mul(1000))),
        esc(t.get("previous").and_then(|s| s.as_str()).unwrap_or("?"))
    );
    if v.is_admin() {
        let _ = write!(
            b,
            "<form method=\"post\" action=\"/system/network/keep\">{}<button type=\"submit\">Keep these settings</button></form>",
            html::csrf(v)
        );
    } else {
        b.push_str("<p class=\"hint\">An admin can keep them here.</p>");
    }
    b.push_str("</div><dl>");
    b
}

/// `/system`'s firmware section: both slots, the last update, a rollback (red until
/// acknowledged), and for admins the upload of a bundle.
fn firmware_section(v: &Viewer, f: &serde_json::Value) -> String {
    let slot = |n: &str| {
        let s = &f[n];
        if s.is_null() {
            "flags unreadable".to_string()
        } else {
            esc(s["state"].as_str().unwrap_or("?"))
        }
    };
    let running = f["running"].as_str().unwrap_or("?");
    let other = if running == "a" { "b" } else { "a" };
    let mut b = format!(
        "<h2 id=\"firmware\">Firmware</h2><dl><dt>Running</dt><dd>slot {} ({})</dd><dt>Other slot</dt><dd>slot {} ({})</dd><dt>Last update</dt><dd>{}</dd></dl>",
        esc(running),
        slot(running),
        esc(other),
        slot(other),
        f["last_update"]
            .as_object()
            .map(|e| format!(
                "{} ({})",
                esc(e.get("text").and_then(|t| t.as_str()).unwrap_or("?")),
                time(e.get("at").and_then(|t| t.as_str()).unwrap_or(""))
            ))
            .unwrap_or_else(|| "none".into())
    );
    if let Some(rb) = f["rollback"].as_object().filter(|_| f["rollback_acknowledged"] != true) {
        let _ = write!(
            b,
            "<div class=\"card bad\" id=\"rollback\" role=\"alert\"><p><strong>{}</strong> ({}).</p>",
            esc(rb.get("text").and_then(|t| t.as_str()).unwrap_or("rolled back")),
            time(rb.get("at").and_then(|t| t.as_str()).unwrap_or(""))
        );
        if v.is_admin() {
            let _ = write!(
                b,
                "<form method=\"post\" action=\"/system/update/acknowledge\">{}<button type=\"submit\">Acknowledge</button></form>",
                html::csrf(v)
            );
        }
        b.push_str("</div>");
    }
    if v.is_admin() {
        let _ = write!(
            b,
            "<form method=\"post\" action=\"/system/update?csrf={}\" enctype=\"multipart/form-data\" id=\"update-form\">\
             <label>Update bundle (.fwb, signed) <input type=\"file\" name=\"bundle\" accept=\".fwb\" required></label> \
             <button type=\"submit\">Install into slot {} and reboot</button></form>\
             <p class=\"hint\">The bundle is checked completely (signature, board, epoch, hash) before anything is written; \
             the box then reboots into the other slot and keeps it only once it proves itself.</p>",
            esc(&v.csrf),
            esc(other)
        );
    }
    b
}

/// An admin's form post (CSRF token in the form, or in the query for file uploads):
/// the refusal to send, or None when it may go on.
fn admin_post_refused(v: &Viewer, parts: &Parts, csrf: &str) -> Option<Response> {
    if !v.is_admin() {
        return Some(forbidden(v));
    }
    if !csrf_ok(&parts.headers, &v.csrf, csrf) {
        return Some(csrf_refused(Some(v)));
    }
    None
}

/// A message page answering an admin's action, linking back to `back` on /system.
fn answer(v: &Viewer, status: StatusCode, title: &str, text: &str, back: &str) -> Response {
    (status, Html(message_page(Some(v), title, text, back, "System"))).into_response()
}

/// Reboot in a moment: the answer reaches the browser before the box goes down.
fn reboot_soon() {
    tokio::spawn(async {
        tokio::time::sleep(std::time::Duration::from_secs(2)).await;
        let _ = tokio::task::spawn_blocking(|| crate::management::ask_init("system reboot")).await;
    });
}

/// Backup and restore (admin): what a replacement box needs, in one encrypted file.
fn backup_section(v: &Viewer) -> String {
    format!(
        "<h2 id=\"backup\">Backup and restore</h2>\
         <p class=\"hint\">Configuration, certificates, users, tokens, alerts, detector baselines and SIEM spools \
         (not the flows), encrypted with a passphrase of at least {min} characters. Restore it on a replacement box \
         to keep what this one has learned.</p>\
         <h3>Make a backup</h3>\
         <form method=\"post\" action=\"/system/backup\" class=\"stack\" id=\"backup-form\">{csrf}\
         <label>Passphrase <input type=\"password\" name=\"passphrase\" minlength=\"{min}\" autocomplete=\"new-password\" required></label>\
         <label>Same passphrase again <input type=\"password\" name=\"again\" minlength=\"{min}\" autocomplete=\"new-password\" required></label>\
         <button type=\"submit\">Download backup</button></form>\
         <h3>Restore a backup onto this box</h3>\
         <p class=\"hint\">A restore replaces the configuration, certificates, users, tokens, alerts and baselines of this box \
         (its flows stay) and restarts it to apply them.</p>\
         <form method=\"post\" action=\"/system/restore?csrf={token}\" enctype=\"multipart/form-data\" class=\"stack\" id=\"restore-form\">\
         <label>Backup file (.fwbk) <input type=\"file\" name=\"backup\" accept=\".fwbk\" required></label>\
         <label>Its passphrase <input type=\"password\" name=\"passphrase\" autocomplete=\"off\" required></label>\
         <button type=\"submit\" class=\"danger\">Restore and restart</button></form>",
        min = crate::backup::MIN_PASSPHRASE,
        csrf = html::csrf(v),
        token = esc(&v.csrf)
    )
}

#[derive(Deserialize)]
pub struct BackupForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    passphrase: String,
    #[serde(default)]
    again: String,
}

/// `POST /system/backup` (admin): the encrypted backup as a download.
pub async fn backup_download(AxState(s): AxState<State>, v: Viewer, parts: Parts, Form(f): Form<BackupForm>) -> Response {
    if let Some(r) = admin_post_refused(&v, &parts, &f.csrf) {
        return r;
    }
    let ip = peer_ip(&parts);
    let refused = |text: String| answer(&v, StatusCode::BAD_REQUEST, "Backup", &text, "/system#backup");
    if f.passphrase != f.again {
        return refused("The two passphrases differ; no backup was made.".into());
    }
    let dir = crate::store::DataDir::new(&s.app.data_dir);
    let now = s.now();
    let pass = f.passphrase;
    let made = tokio::task::spawn_blocking(move || {
        let a = crate::backup::collect(&dir)?;
        Ok::<_, crate::backup::BackupError>((crate::backup::seal(&a, &pass, now)?, a.summary()))
    })
    .await;
    match made {
        Ok(Ok((bytes, summary))) => {
            s.audit_action(&v, ip, "backup_download", format!("{} bytes: {summary}", bytes.len()));
            let name = format!(
                "flowwarden-backup-{}.fwbk",
                crate::timefmt::rfc3339_ms(now).get(..10).unwrap_or("now")
            );
            (
                StatusCode::OK,
                [
                    (axum::http::header::CONTENT_TYPE, "application/octet-stream".to_string()),
                    (axum::http::header::CONTENT_DISPOSITION, format!("attachment; filename=\"{name}\"")),
                    (axum::http::header::CACHE_CONTROL, "no-store".to_string()),
                ],
                bytes,
            )
                .into_response()
        }
        Ok(Err(e)) => {
            s.audit_action(&v, ip, "backup_download", format!("failed: {e}"));
            refused(format!("No backup was made: {e}."))
        }
        Err(e) => refused(format!("No backup was made: {e}.")),
    }
}

/// `POST /system/restore` (admin, multipart `backup` and `passphrase`): opened and
/// checked here, staged for the appliance's next start, then (on the image) the
/// box reboots to apply it. The CSRF token comes in the query.
pub async fn restore_upload(
    AxState(s): AxState<State>,
    v: Viewer,
    parts: Parts,
    axum::extract::Query(q): axum::extract::Query<CsrfQuery>,
    mut form: axum::extract::Multipart,
) -> Response {
    if let Some(r) = admin_post_refused(&v, &parts, &q.csrf) {
        return r;
    }
    let ip = peer_ip(&parts);
    let page = |status: StatusCode, text: String| answer(&v, status, "Restore", &text, "/system#backup");
    let (mut file, mut pass) = (Vec::new(), String::new());
    loop {
        match form.next_field().await {
            Ok(Some(field)) => {
                let name = field.name().unwrap_or("").to_string();
                match field.bytes().await {
                    Ok(b) if name == "backup" => file = b.to_vec(),
                    Ok(b) if name == "passphrase" => pass = String::from_utf8_lossy(&b).to_string(),
                    Ok(_) => {}
                    Err(e) => return page(StatusCode::BAD_REQUEST, format!("The upload broke off: {e}.")),
                }
            }
            Ok(None) => break,
            Err(e) => return page(StatusCode::BAD_REQUEST, format!("The upload broke off: {e}.")),
        }
    }
    let dir = crate::store::DataDir::new(&s.app.data_dir);
    let staged = tokio::task::spawn_blocking(move || {
        let (h, a) = crate::backup::open(&file, &pass, std::path::Path::new("the uploaded backup"))?;
        crate::backup::stage(&dir, &a)?;
        Ok::<_, crate::backup::BackupError>(format!(
            "made {} by {}: {}",
            crate::timefmt::rfc3339_ms(h.created_ms),
            h.version,
            a.summary()
        ))
    })
    .await;
    let what = match staged {
        Ok(Ok(w)) => w,
        Ok(Err(e)) => {
            s.audit_action(&v, ip, "restore_upload", format!("refused: {e}"));
            return page(StatusCode::BAD_REQUEST, format!("Nothing was restored: {e}."));
        }
        Err(e) => return page(StatusCode::INTERNAL_SERVER_ERROR, format!("Nothing was restored: {e}.")),
    };
    s.audit_action(&v, ip, "restore_upload", format!("staged: {what}"));
    if crate::management::under_init() {
        reboot_soon();
        page(
            StatusCode::OK,
            format!("Restore staged ({what}). The box reboots to apply it; this page answers again in a minute or two."),
        )
    } else {
        page(
            StatusCode::OK,
            format!("Restore staged ({what}). It is applied when flowwarden next starts: restart it."),
        )
    }
}

#[derive(Deserialize)]
pub struct CsrfForm {
    #[serde(default)]
    csrf: String,
}

/// What an admin's button asks PID 1, and how the answer is shown and audited.
struct Pid1Ask {
    request: &'static str,
    /// When PID 1 is not there (a laptop).
    absent: &'static str,
    audit: &'static str,
    title: &'static str,
    ok: &'static str,
    refused: &'static str,
    back: &'static str,
}

/// An admin's request to PID 1 from the page: checked (role, CSRF), asked, audited, shown.
async fn ask_pid1(s: &State, v: &Viewer, parts: &Parts, csrf: &str, a: Pid1Ask) -> Response {
    if let Some(r) = admin_post_refused(v, parts, csrf) {
        return r;
    }
    let answer = if crate::management::under_init() {
        tokio::task::spawn_blocking(move || crate::management::ask_init(a.request))
            .await
            .unwrap_or_else(|e| Err(e.to_string()))
    } else {
        Err(a.absent.to_string())
    };
    let (status, text) = match &answer {
        Ok(line) => (StatusCode::OK, format!("{}: {line}.", a.ok)),
        Err(e) => (StatusCode::CONFLICT, format!("{}: {e}.", a.refused)),
    };
    s.audit_action(
        v,
        peer_ip(parts),
        a.audit,
        match &answer {
            Ok(l) => l.clone(),
            Err(e) => format!("refused: {e}"),
        },
    );
    (status, Html(message_page(Some(v), a.title, &text, a.back, "System"))).into_response()
}

/// `POST /system/network/keep` (admin): the management network settings on
/// trial stay (PID 1 is asked; reaching this page over them proves they work).
pub async fn network_keep(AxState(s): AxState<State>, v: Viewer, parts: Parts, Form(f): Form<CsrfForm>) -> Response {
    let a = Pid1Ask {
        request: "network keep",
        absent: "PID 1 does not manage the network here (not the appliance image)",
        audit: "network_kept",
        title: "Management network",
        ok: "Management network",
        refused: "Not kept",
        back: "/system",
    };
    ask_pid1(&s, &v, &parts, &f.csrf, a).await
}

/// `POST /system/update/acknowledge` (admin): the rollback stops being shown in red.
pub async fn update_acknowledge(AxState(s): AxState<State>, v: Viewer, parts: Parts, Form(f): Form<CsrfForm>) -> Response {
    let a = Pid1Ask {
        request: "update acknowledge",
        absent: "there are no update slots here (not the appliance image)",
        audit: "rollback_acknowledge",
        title: "Firmware",
        ok: "Firmware",
        refused: "Not acknowledged",
        back: "/system#firmware",
    };
    ask_pid1(&s, &v, &parts, &f.csrf, a).await
}

#[derive(Deserialize)]
pub struct CsrfQuery {
    #[serde(default)]
    csrf: String,
}

/// `POST /system/update` (admin, multipart `bundle`): the bundle is streamed into
/// the data directory, handed to PID 1 like `flowwarden update FILE`, and on
/// success the box reboots into it. The CSRF token comes in the query (the body is
/// the file).
pub async fn update_upload(
    AxState(s): AxState<State>,
    v: Viewer,
    parts: Parts,
    axum::extract::Query(q): axum::extract::Query<CsrfQuery>,
    mut form: axum::extract::Multipart,
) -> Response {
    if let Some(r) = admin_post_refused(&v, &parts, &q.csrf) {
        return r;
    }
    let ip = peer_ip(&parts);
    let page = |status: StatusCode, text: String| answer(&v, status, "Firmware update", &text, "/system#firmware");
    if !crate::management::under_init() {
        return page(
            StatusCode::CONFLICT,
            "Updates are installed on the appliance image; this host has no update slots.".into(),
        );
    }
    let dir = s.app.data_dir.join("update");
    let dest = dir.join("upload.fwb");
    let saved = async {
        std::fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        let mut field = loop {
            match form.next_field().await {
                Ok(Some(f)) if f.name() == Some("bundle") => break f,
                Ok(Some(_)) => continue,
                Ok(None) => return Err("the form has no bundle file".to_string()),
                Err(e) => return Err(format!("the upload broke off: {e}")),
            }
        };
        // Plain file writes (the page cache takes them; an admin uploads rarely).
        let mut out = std::fs::File::create(&dest).map_err(|e| format!("cannot create {}: {e}", dest.display()))?;
        let mut n: u64 = 0;
        use std::io::Write;
        loop {
            match field.chunk().await {
                Ok(Some(c)) => {
                    n += c.len() as u64;
                    if n > crate::update::MAX_BUNDLE {
                        return Err(format!(
                            "the file is larger than the {} bytes a bundle may have",
                            crate::update::MAX_BUNDLE
                        ));
                    }
                    out.write_all(&c).map_err(|e| format!("writing {}: {e}", dest.display()))?;
                }
                Ok(None) => break,
                Err(e) => return Err(format!("the upload broke off after {n} bytes: {e}")),
            }
        }
        out.sync_all().map_err(|e| format!("syncing {}: {e}", dest.display()))?;
        Ok(n)
    }
    .await;
    let n = match saved {
        Ok(n) => n,
        Err(e) => {
            let _ = std::fs::remove_file(&dest);
            s.audit_action(&v, ip, "update_upload", format!("failed: {e}"));
            return page(StatusCode::BAD_REQUEST, format!("flowwarden: update failed: {e}"));
        }
    };
    s.audit_action(&v, ip, "update_upload", format!("{n} bytes uploaded; handed to PID 1"));
    let file = dest.clone();
    let ending = tokio::task::spawn_blocking(move || crate::update::ask::stage(&file, &mut |_| {}).line())
        .await
        .unwrap_or_else(|e| format!("flowwarden: update failed: {e}"));
    let _ = std::fs::remove_file(&dest);
    if ending.contains(" staged in slot ") {
        reboot_soon();
        page(
            StatusCode::OK,
            format!("{ending}. The box reboots into it now; this page answers again in a minute or two."),
        )
    } else {
        page(StatusCode::CONFLICT, ending)
    }
}

#[derive(Deserialize)]
pub struct UserForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    action: String,
    #[serde(default)]
    user: String,
    #[serde(default)]
    role: String,
    #[serde(default)]
    password: String,
}

fn no_such_alert(v: &Viewer) -> Response {
    let body = message_page(Some(v), "No such alert", "There is no alert with this id.", "/alerts", "All alerts");
    (StatusCode::NOT_FOUND, Html(body)).into_response()
}

fn forbidden(v: &Viewer) -> Response {
    let body = message_page(Some(v), "Not allowed", "This needs an admin.", "/", "Overview");
    (StatusCode::FORBIDDEN, Html(body)).into_response()
}

/// Admin: add, change or remove a user (through the control channel, as `flowwarden user`).
pub async fn user_change(AxState(s): AxState<State>, v: Viewer, parts: Parts, Form(f): Form<UserForm>) -> Response {
    if !v.is_admin() {
        return forbidden(&v);
    }
    if !csrf_ok(&parts.headers, &v.csrf, &f.csrf) {
        return csrf_refused(Some(&v));
    }
    let result = s.user_change(&f.action, &f.user, &f.role, f.password).await;
    let (status, title, text) = match &result {
        Ok(what) => (StatusCode::OK, "Done", what.clone()),
        Err(e) => (StatusCode::BAD_REQUEST, "Not changed", e.clone()),
    };
    s.audit_action(&v, peer_ip(&parts), "user_change", format!("{} {}: {}", f.action, f.user, text));
    (status, Html(message_page(Some(&v), title, &text, "/system", "System"))).into_response()
}

/// Milliseconds between two RFC 3339 times (0 if either does not parse).
fn duration_between(start: Option<&str>, end: Option<&str>) -> u64 {
    let p = |t: Option<&str>| t.and_then(|t| crate::timefmt::parse_time(t, 0).ok());
    match (p(start), p(end)) {
        (Some(a), Some(b)) => b.saturating_sub(a),
        _ => 0,
    }
}

/// A protocol number as its name where it has one (`tcp`, `udp`, …).
fn proto_text(p: Option<u64>) -> String {
    match p.and_then(|p| u8::try_from(p).ok()) {
        Some(n) => crate::flow::proto_name(n).map(str::to_string).unwrap_or_else(|| n.to_string()),
        None => "-".into(),
    }
}

/// An evidence value for people (HTML): lists comma-separated (the first 20,
/// then how many more), addresses with their country, other strings as they
/// are, numbers as JSON writes them.
fn evidence_html(v: &serde_json::Value) -> String {
    const SHOWN: usize = 20;
    match v {
        serde_json::Value::String(s) => html::addr(s),
        serde_json::Value::Array(items) => {
            let mut parts: Vec<String> = items.iter().take(SHOWN).map(evidence_html).collect();
            if items.len() > SHOWN {
                parts.push(format!("… and {} more", items.len() - SHOWN));
            }
            parts.join(", ")
        }
        other => esc(&other.to_string()),
    }
}

#[derive(Deserialize)]
pub struct AckForm {
    #[serde(default)]
    csrf: String,
}

/// Admin: acknowledge an alert (kept in the state file, audited), back to its page.
pub async fn alert_ack(AxState(s): AxState<State>, v: Viewer, Path(id): Path<String>, parts: Parts, Form(f): Form<AckForm>) -> Response {
    if !v.is_admin() {
        return forbidden(&v);
    }
    if !csrf_ok(&parts.headers, &v.csrf, &f.csrf) {
        return csrf_refused(Some(&v));
    }
    let id2 = id.clone();
    let exists = views::build(&s, move |s| views::alert(s, &id2).is_some()).await.unwrap_or(false);
    if !exists {
        return no_such_alert(&v);
    }
    if let Err(e) = s.ack(&id, &v.name).await {
        let body = message_page(Some(&v), "Not acknowledged", &e, &format!("/alerts/{id}"), "The alert");
        return (StatusCode::SERVICE_UNAVAILABLE, Html(body)).into_response();
    }
    s.audit_action(&v, peer_ip(&parts), "alert_ack", format!("alert {id} acknowledged"));
    (
        StatusCode::SEE_OTHER,
        [(axum::http::header::LOCATION, format!("/alerts/{}", html::url(&id)))],
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_on_trial_show_a_keep_button_to_admins_only() {
        let t = serde_json::json!({"settings": "eth0 VLAN 20 static 10.0.2.15/24", "until_unix": 1_800_000_000u64,
            "confirm_secs": 30, "previous": "eth0 dhcp"});
        let t = t.as_object().unwrap();
        let viewer = |role| Viewer {
            name: "x".into(),
            role,
            csrf: "tok".into(),
        };
        let admin = network_trial(&viewer(crate::accounts::UserRole::Admin), t);
        assert!(admin.contains("<strong>eth0 VLAN 20 static 10.0.2.15/24</strong>"), "{admin}");
        assert!(admin.contains("2027-01-15T08:00:00"), "the deadline: {admin}");
        assert!(admin.contains("the previous ones come back: eth0 dhcp"), "{admin}");
        assert!(
            admin.contains("action=\"/system/network/keep\"") && admin.contains("value=\"tok\""),
            "{admin}"
        );
        let other = network_trial(&viewer(crate::accounts::UserRole::Viewer), t);
        assert!(!other.contains("<form") && other.contains("An admin can keep them"), "{other}");
    }
}
