//! HTML building blocks for the pages: escaping, the common layout (navigation,
//! who is logged in, log out), times (UTC in the markup; the page's script adds
//! the browser's local time beside it), tables and server-drawn SVG charts.
//! No inline script or style: the CSP allows only same-origin files.

use super::auth::Viewer;
use std::fmt::Write;

/// Text made safe for HTML content and attribute values.
pub fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// A query-string value.
pub fn url(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

/// The pages in the navigation: (path, label).
pub const NAV: [(&str, &str); 8] = [
    ("/", "Overview"),
    ("/exporters", "Exporters"),
    ("/traffic", "Traffic"),
    ("/alerts", "Alerts"),
    ("/flows", "Flows"),
    ("/storage", "Storage"),
    ("/forwarding", "Forwarding"),
    ("/system", "System"),
];

/// A whole page: head, navigation (when logged in), `body`.
pub fn layout(title: &str, active: &str, viewer: Option<&Viewer>, body: &str) -> String {
    let mut s = String::with_capacity(body.len() + 2048);
    let _ = write!(
        s,
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>{} · flowwarden</title><link rel=\"stylesheet\" href=\"/static/style.css\">\
         <script src=\"/static/page.js\" defer></script></head><body>",
        esc(title)
    );
    s.push_str("<header><span class=\"brand\">flowwarden</span>");
    if let Some(v) = viewer {
        s.push_str("<nav>");
        for (path, label) in NAV {
            let cls = if path == active { " class=\"active\"" } else { "" };
            let _ = write!(s, "<a href=\"{path}\"{cls}>{label}</a>");
        }
        if v.is_admin() {
            let cls = if active == "/settings" { " class=\"active\"" } else { "" };
            let _ = write!(s, "<a href=\"/settings\"{cls}>Settings</a>");
        }
        s.push_str("</nav>");
        let _ = write!(
            s,
            "<form method=\"post\" action=\"/logout\" class=\"who\"><span>{} ({})</span>\
             <input type=\"hidden\" name=\"csrf\" value=\"{}\"><button type=\"submit\">Log out</button></form>",
            esc(&v.name),
            v.role.as_str(),
            esc(&v.csrf)
        );
    }
    s.push_str("</header><main>");
    let _ = write!(s, "<h1>{}</h1>", esc(title));
    s.push_str(body);
    s.push_str("</main><footer>flowwarden ");
    s.push_str(crate::version::version());
    s.push_str(" · times in your browser's time zone with UTC beside them");
    if crate::geo::global().is_some() {
        s.push_str(" · ");
        s.push_str(&esc(crate::geo::ATTRIBUTION));
    }
    s.push_str("</footer></body></html>");
    s
}

/// A time: UTC text in the markup, the local time added by the page's script.
pub fn time(rfc3339: &str) -> String {
    let shown = rfc3339.get(..19).unwrap_or(rfc3339).replace('T', " ");
    format!("<time datetime=\"{}\">{} UTC</time>", esc(rfc3339), esc(&shown))
}

/// A time from Unix ms.
pub fn time_ms(ms: u64) -> String {
    time(&crate::timefmt::rfc3339_ms(ms))
}

/// A table: header cells, then rows of already-escaped HTML cells.
pub fn table(head: &[&str], rows: &[Vec<String>]) -> String {
    let mut s = String::from("<div class=\"scroll\"><table><thead><tr>");
    for h in head {
        let _ = write!(s, "<th>{}</th>", esc(h));
    }
    s.push_str("</tr></thead><tbody>");
    for r in rows {
        s.push_str("<tr>");
        for c in r {
            let _ = write!(s, "<td>{c}</td>");
        }
        s.push_str("</tr>");
    }
    if rows.is_empty() {
        let _ = write!(s, "<tr><td colspan=\"{}\" class=\"none\">none</td></tr>", head.len().max(1));
    }
    s.push_str("</tbody></table></div>");
    s
}

/// A bar chart of `values` (one bar per bucket) as inline SVG, with the
/// largest value labelled and `span_html` (already escaped) after the caption.
pub fn bars(values: &[u64], label: &str, unit: fn(u64) -> String, span_html: &str) -> String {
    let (w, h) = (720.0_f64, 140.0_f64);
    let max = values.iter().copied().max().unwrap_or(0).max(1) as f64;
    let n = values.len().max(1) as f64;
    let bw = w / n;
    let mut s = format!(
        "<figure><svg viewBox=\"0 0 {w} {}\" role=\"img\" aria-label=\"{}\" class=\"chart\">",
        h + 16.0,
        esc(label)
    );
    for (i, v) in values.iter().enumerate() {
        let bh = (*v as f64 / max) * h;
        let _ = write!(
            s,
            "<rect x=\"{:.1}\" y=\"{:.1}\" width=\"{:.1}\" height=\"{:.1}\"><title>{}</title></rect>",
            i as f64 * bw + 0.5,
            h - bh,
            (bw - 1.0).max(0.5),
            bh,
            esc(&unit(*v))
        );
    }
    let _ = write!(
        s,
        "<line x1=\"0\" y1=\"{h}\" x2=\"{w}\" y2=\"{h}\" class=\"axis\"/></svg><figcaption>{} (peak {}){span_html}</figcaption></figure>",
        esc(label),
        esc(&unit(max as u64))
    );
    s
}

/// Two series on one scale around a middle axis: `up` above it (outbound),
/// `down` below (inbound), for the traffic page's in vs out.
pub fn bars_mirrored(up: &[u64], down: &[u64], labels: (&str, &str), title: &str, unit: fn(u64) -> String, span_html: &str) -> String {
    let (w, half) = (720.0_f64, 70.0_f64);
    let max = up.iter().chain(down).copied().max().unwrap_or(0).max(1) as f64;
    let n = up.len().max(down.len()).max(1) as f64;
    let bw = w / n;
    let mut s = format!(
        "<figure><svg viewBox=\"0 0 {w} {}\" role=\"img\" aria-label=\"{}\" class=\"chart mirrored\">",
        2.0 * half + 16.0,
        esc(title)
    );
    for (series, cls, label, above) in [(up, "up", labels.0, true), (down, "down", labels.1, false)] {
        for (i, v) in series.iter().enumerate() {
            let bh = (*v as f64 / max) * half;
            let y = if above { half - bh } else { half };
            let _ = write!(
                s,
                "<rect class=\"{cls}\" x=\"{:.1}\" y=\"{y:.1}\" width=\"{:.1}\" height=\"{bh:.1}\"><title>{}: {}</title></rect>",
                i as f64 * bw + 0.5,
                (bw - 1.0).max(0.5),
                esc(label),
                esc(&unit(*v))
            );
        }
    }
    let peak = |v: &[u64]| esc(&unit(v.iter().copied().max().unwrap_or(0)));
    let _ = write!(
        s,
        "<line x1=\"0\" y1=\"{half}\" x2=\"{w}\" y2=\"{half}\" class=\"axis\"/></svg><figcaption>{}: \
         <span class=\"key up\">▲ {} (peak {})</span> <span class=\"key down\">▼ {} (peak {})</span>{span_html}</figcaption></figure>",
        esc(title),
        esc(labels.0),
        peak(up),
        esc(labels.1),
        peak(down)
    );
    s
}

/// The configuration's names for addresses (`[[network.name]]`), replaced at every reload.
static NAMES: std::sync::RwLock<Vec<crate::net::NamedNet>> = std::sync::RwLock::new(Vec::new());

/// The names the page shows beside addresses.
pub fn set_names(names: Vec<crate::net::NamedNet>) {
    *NAMES.write().unwrap_or_else(|p| p.into_inner()) = names;
}

/// An address (text as given, escaped here) with its configured name and its
/// country (public addresses, when the country database knows one) beside it.
pub fn addr(text: &str) -> String {
    // An address, ADDR:PORT, or ADDR:PORT/proto (a scan's targets in evidence).
    let bare = text
        .split_once('/')
        .filter(|(_, p)| p.chars().all(|c| c.is_ascii_alphanumeric()))
        .map_or(text, |(a, _)| a);
    let ip = text
        .parse::<std::net::IpAddr>()
        .ok()
        .or_else(|| bare.parse::<std::net::SocketAddr>().ok().map(|a| a.ip()));
    let Some(ip) = ip else { return esc(text) };
    let mut s = esc(text);
    if let Some(name) = crate::net::name_of(&NAMES.read().unwrap_or_else(|p| p.into_inner()), &ip) {
        let _ = write!(s, " <span class=\"name\">{}</span>", esc(name));
    }
    if let Some(cc) = crate::geo::global().and_then(|g| g.country_str(ip)) {
        let _ = write!(s, " <abbr class=\"cc\" title=\"country\">{cc}</abbr>");
    }
    s
}

/// A coloured badge for a check level or alert severity.
pub fn badge(class: &str, text: &str) -> String {
    format!("<span class=\"badge {}\">{}</span>", esc(class), esc(text))
}

/// A hidden CSRF field.
pub fn csrf(v: &Viewer) -> String {
    format!("<input type=\"hidden\" name=\"csrf\" value=\"{}\">", esc(&v.csrf))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaping_covers_markup_and_attributes() {
        assert_eq!(
            esc("<a href=\"x\">'&'</a>"),
            "&lt;a href=&quot;x&quot;&gt;&#39;&amp;&#39;&lt;/a&gt;"
        );
        assert_eq!(url("src host 10.0.0.1 and port 443"), "src%20host%2010.0.0.1%20and%20port%20443");
    }

    #[test]
    fn addresses_carry_their_most_specific_name() {
        let net = |s: &str| s.parse().unwrap_or_else(|e| panic!("{e:?}"));
        set_names(vec![
            crate::net::NamedNet {
                net: net("10.1.0.0/16"),
                name: "branch <LAN>".into(),
            },
            crate::net::NamedNet {
                net: net("10.1.2.3/32"),
                name: "printer".into(),
            },
        ]);
        assert_eq!(addr("10.1.2.3"), "10.1.2.3 <span class=\"name\">printer</span>");
        assert_eq!(addr("10.1.9.9"), "10.1.9.9 <span class=\"name\">branch &lt;LAN&gt;</span>");
        assert_eq!(addr("10.2.0.1"), "10.2.0.1");
        assert_eq!(addr("10.1.2.3:161/udp"), "10.1.2.3:161/udp <span class=\"name\">printer</span>");
        assert_eq!(addr("10.1.2.0/24"), "10.1.2.0/24", "a network is not an address");
        assert_eq!(addr("not <an> address"), "not &lt;an&gt; address");
        set_names(Vec::new());
    }
}
