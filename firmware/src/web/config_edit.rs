//! The configuration file as the page's settings change it: edits of one
//! section at a time on the TOML document (comments and layout elsewhere
//! kept), a line diff for the preview, and the atomic write that keeps the
//! version before as `FILE.previous` for a one-click revert.
//!
//! Validation is not here: the page asks the appliance's checker (the same
//! code as `check-config`) through [`SettingsAccess`], so the page never
//! judges a configuration by other rules than `run` does.

use crate::decode::settings::{ExporterOverride, SamplingMode};
use crate::detect::settings::AllowRule;
use crate::forward::settings::ForwardConfig;
use crate::net::IpNet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use toml_edit::{Array, ArrayOfTables, DocumentMut, Item, Table, value};

/// What the checker found in a candidate file: `check-config`'s summary and
/// warnings, and the settings the page's forms show.
#[derive(Debug, Clone, Default)]
pub struct SiteView {
    pub summary: String,
    pub warnings: Vec<String>,
    pub internal: Vec<IpNet>,
    pub names: Vec<crate::net::NamedNet>,
    pub exporters: Vec<ExporterOverride>,
    pub allow: Vec<AllowRule>,
    pub forward: Vec<ForwardConfig>,
    pub management: Option<crate::management::Management>,
}

/// Validate text as the file at the path (messages name it, with line numbers).
pub type Checker = Arc<dyn Fn(&str, &Path) -> Result<SiteView, String> + Send + Sync>;

/// Where the page's settings are saved and how they are checked.
#[derive(Clone)]
pub struct SettingsAccess {
    /// The file `run` reads (at start and at every reload).
    pub file: PathBuf,
    pub check: Checker,
}

impl SettingsAccess {
    /// The version before the last change made on the page.
    pub fn previous(&self) -> PathBuf {
        let mut name = self.file.file_name().map(|n| n.to_os_string()).unwrap_or_default();
        name.push(".previous");
        self.file.with_file_name(name)
    }

    /// The file's text; empty when there is none (the built-in defaults).
    pub fn read(&self) -> Result<String, String> {
        read_or_empty(&self.file)
    }

    /// The previous version's text, if the page ever saved one.
    pub fn read_previous(&self) -> Result<Option<String>, String> {
        let p = self.previous();
        if !p.exists() {
            return Ok(None);
        }
        read_or_empty(&p).map(Some)
    }

    /// Keep `old` as the previous version, then replace the file with `new`
    /// (each written to a temporary file, synced and renamed over).
    pub fn save(&self, old: &str, new: &str) -> Result<(), String> {
        write_atomic(&self.previous(), old)?;
        write_atomic(&self.file, new)
    }

    /// Put `text` back as the file (a reload refused what was saved).
    pub fn restore(&self, text: &str) -> Result<(), String> {
        write_atomic(&self.file, text)
    }

    /// Where uploaded certificates and keys are kept: beside the file, in `pki/`.
    pub fn pki_dir(&self) -> PathBuf {
        self.file.parent().unwrap_or(Path::new(".")).join("pki")
    }
}

fn read_or_empty(p: &Path) -> Result<String, String> {
    match std::fs::read_to_string(p) {
        Ok(t) => Ok(t),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(String::new()),
        Err(e) => Err(format!("{}: cannot read: {e}", p.display())),
    }
}

/// Replace `path` with `text` atomically, mode 0600 (the file may hold paths to keys).
pub fn write_atomic(path: &Path, text: &str) -> Result<(), String> {
    crate::fsutil::write_atomic(path, text.as_bytes(), 0o600).map_err(|e| e.to_string())
}

/// Keep uploaded PEM bytes under `dir` by their content's SHA-256 (the same
/// upload twice is one file; nothing is overwritten). Returns the path.
pub fn store_upload(dir: &Path, bytes: &[u8]) -> Result<PathBuf, String> {
    let digest = ring::digest::digest(&ring::digest::SHA256, bytes);
    let hex: String = digest.as_ref().iter().take(12).map(|b| format!("{b:02x}")).collect();
    let path = dir.join(format!("upload-{hex}.pem"));
    if !path.exists() {
        let text = std::str::from_utf8(bytes).map_err(|_| "the uploaded file is not PEM text".to_string())?;
        if !text.contains("-----BEGIN ") {
            return Err("the uploaded file is not PEM (no \"-----BEGIN\" line)".into());
        }
        write_atomic(&path, text)?;
    }
    Ok(path)
}

/// Parse the file's text for editing.
pub fn document(text: &str) -> Result<DocumentMut, String> {
    text.parse::<DocumentMut>()
        .map_err(|e| format!("the file cannot be edited by the forms (fix it in \"Whole file\"): {e}"))
}

/// A table under `key`, made (implicit, so no empty `[key]` header) if missing.
fn table_mut<'a>(doc: &'a mut DocumentMut, key: &str) -> Result<&'a mut Table, String> {
    if !doc.contains_key(key) {
        let mut t = Table::new();
        t.set_implicit(true);
        doc.insert(key, Item::Table(t));
    }
    doc[key]
        .as_table_mut()
        .ok_or_else(|| format!("`{key}` in the file is not a table; fix it in \"Whole file\""))
}

fn strings(items: impl IntoIterator<Item = String>) -> Array {
    let mut a = Array::new();
    for s in items {
        a.push(s);
    }
    a
}

/// `[network] internal = [...]`.
pub fn set_internal(doc: &mut DocumentMut, nets: &[IpNet]) -> Result<(), String> {
    let t = table_mut(doc, "network")?;
    t.set_implicit(false);
    t.insert("internal", value(strings(nets.iter().map(|n| n.to_string()))));
    Ok(())
}

/// Every `[[network.name]]` replaced by these.
pub fn set_names(doc: &mut DocumentMut, list: &[crate::net::NamedNet]) -> Result<(), String> {
    let mut aot = ArrayOfTables::new();
    for n in list {
        let mut t = Table::new();
        t.insert("net", value(n.net.to_string()));
        t.insert("name", value(n.name.as_str()));
        aot.push(t);
    }
    let network = table_mut(doc, "network")?;
    network.remove("name");
    if !aot.is_empty() {
        network.insert("name", Item::ArrayOfTables(aot));
    }
    Ok(())
}

/// Every `[[exporter]]` replaced by these.
pub fn set_exporters(doc: &mut DocumentMut, list: &[ExporterOverride]) {
    let mut aot = ArrayOfTables::new();
    for e in list {
        let mut t = Table::new();
        t.insert("address", value(e.address.to_string()));
        if let Some(r) = e.sampling_rate {
            t.insert("sampling_rate", value(i64::from(r)));
        }
        if e.sampling_mode == SamplingMode::Force {
            t.insert("sampling_mode", value("force"));
        }
        if let Some(n) = &e.name {
            t.insert("name", value(n.as_str()));
        }
        aot.push(t);
    }
    doc.remove("exporter");
    if !aot.is_empty() {
        doc.insert("exporter", Item::ArrayOfTables(aot));
    }
}

/// Every `[[detect.allow]]` replaced by these.
pub fn set_allow(doc: &mut DocumentMut, list: &[AllowRule]) -> Result<(), String> {
    let mut aot = ArrayOfTables::new();
    for r in list {
        let mut t = Table::new();
        if let Some(n) = &r.name {
            t.insert("name", value(n.as_str()));
        }
        if let Some(s) = &r.src {
            t.insert("src", value(s.to_string()));
        }
        if let Some(d) = &r.dst {
            t.insert("dst", value(d.to_string()));
        }
        if let Some(p) = r.port {
            t.insert("port", value(i64::from(p)));
        }
        if let Some(p) = &r.proto {
            t.insert("proto", value(p.as_str()));
        }
        if !r.kinds.is_empty() {
            t.insert("kinds", value(strings(r.kinds.iter().cloned())));
        }
        aot.push(t);
    }
    let detect = table_mut(doc, "detect")?;
    detect.remove("allow");
    if !aot.is_empty() {
        detect.insert("allow", Item::ArrayOfTables(aot));
    }
    Ok(())
}

/// What the destination form sets (the other keys of a destination stay as the file has them).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DestinationEdit {
    pub name: String,
    pub address: String,
    pub transport: String,
    pub framing: String,
    pub format: String,
    pub fingerprint: Option<String>,
    pub server_name: Option<String>,
    pub ca_file: Option<PathBuf>,
    pub client_cert_file: Option<PathBuf>,
    pub client_key_file: Option<PathBuf>,
}

/// Change the `[[forward]]` named `original` (or add one when None), or remove it.
pub fn set_destination(doc: &mut DocumentMut, original: Option<&str>, edit: Option<&DestinationEdit>) -> Result<(), String> {
    if !doc.contains_key("forward") {
        doc.insert("forward", Item::ArrayOfTables(ArrayOfTables::new()));
    }
    let aot = doc["forward"]
        .as_array_of_tables_mut()
        .ok_or_else(|| "`forward` in the file is not a list of [[forward]] tables; fix it in \"Whole file\"".to_string())?;
    let index = match original {
        Some(name) => Some(
            aot.iter()
                .position(|t| t.get("name").and_then(|v| v.as_str()) == Some(name))
                .ok_or_else(|| format!("no destination {name:?} in the file (changed meanwhile?)"))?,
        ),
        None => None,
    };
    let Some(e) = edit else {
        if let Some(i) = index {
            aot.remove(i);
        }
        if aot.is_empty() {
            doc.remove("forward");
        }
        return Ok(());
    };
    let mut fresh = Table::new();
    let t = match index {
        Some(i) => aot.get_mut(i).ok_or("destination vanished")?,
        None => &mut fresh,
    };
    for (k, v) in [
        ("name", &e.name),
        ("address", &e.address),
        ("transport", &e.transport),
        ("framing", &e.framing),
        ("format", &e.format),
    ] {
        set_keeping_comment(t, k, v);
    }
    let opt = |t: &mut Table, k: &str, v: Option<String>| match v {
        Some(v) => set_keeping_comment(t, k, &v),
        None => {
            t.remove(k);
        }
    };
    opt(t, "fingerprint", e.fingerprint.clone());
    opt(t, "server_name", e.server_name.clone());
    let path = |p: &Option<PathBuf>| p.as_ref().map(|p| p.display().to_string());
    opt(t, "ca_file", path(&e.ca_file));
    opt(t, "client_cert_file", path(&e.client_cert_file));
    opt(t, "client_key_file", path(&e.client_key_file));
    if index.is_none() {
        aot.push(fresh);
    }
    Ok(())
}

/// Set a string key; a value already there keeps its comment and spacing.
fn set_keeping_comment(t: &mut Table, k: &str, v: &str) {
    if let Some(old) = t.get_mut(k).and_then(Item::as_value_mut) {
        if old.as_str() == Some(v) {
            return;
        }
        let decor = old.decor().clone();
        *old = toml_edit::Value::from(v);
        *old.decor_mut() = decor;
        return;
    }
    t.insert(k, value(v));
}

/// One line of a diff: ' ' same, '-' only in the old text, '+' only in the new.
pub type DiffLine = (char, String);

/// Longest files compared line by line (beyond, the diff is old-all then new-all).
const DIFF_MAX_LINES: usize = 4000;

/// The line diff from `old` to `new` (longest common subsequence).
pub fn diff(old: &str, new: &str) -> Vec<DiffLine> {
    let a: Vec<&str> = old.lines().collect();
    let b: Vec<&str> = new.lines().collect();
    if a.len() > DIFF_MAX_LINES || b.len() > DIFF_MAX_LINES {
        let mut out: Vec<DiffLine> = a.iter().map(|l| ('-', l.to_string())).collect();
        out.extend(b.iter().map(|l| ('+', l.to_string())));
        return out;
    }
    // lcs[i][j]: common lines of a[i..] and b[j..].
    let w = b.len() + 1;
    let mut lcs = vec![0u32; (a.len() + 1) * w];
    for i in (0..a.len()).rev() {
        for j in (0..b.len()).rev() {
            lcs[i * w + j] = if a[i] == b[j] {
                lcs[(i + 1) * w + j + 1] + 1
            } else {
                lcs[(i + 1) * w + j].max(lcs[i * w + j + 1])
            };
        }
    }
    let (mut i, mut j) = (0, 0);
    let mut out = Vec::new();
    while i < a.len() && j < b.len() {
        if a[i] == b[j] {
            out.push((' ', a[i].to_string()));
            i += 1;
            j += 1;
        } else if lcs[(i + 1) * w + j] >= lcs[i * w + j + 1] {
            out.push(('-', a[i].to_string()));
            i += 1;
        } else {
            out.push(('+', b[j].to_string()));
            j += 1;
        }
    }
    out.extend(a[i..].iter().map(|l| ('-', l.to_string())));
    out.extend(b[j..].iter().map(|l| ('+', l.to_string())));
    out
}

/// The SHA-256 of a text, hex (the preview carries it so that apply notices a file changed meanwhile).
pub fn text_hash(text: &str) -> String {
    ring::digest::digest(&ring::digest::SHA256, text.as_bytes())
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn doc(text: &str) -> DocumentMut {
        document(text).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn section_edits_keep_the_rest_of_the_file() {
        let text = "# site config\n[storage]\nbudget = \"10GiB\" # the disk\n\n[[exporter]]\naddress = \"192.0.2.1\"\nname = \"old\"\n";
        let mut d = doc(text);
        set_internal(&mut d, &["10.0.0.0/8".parse().unwrap_or_else(|e| panic!("{e:?}"))]).unwrap_or_else(|e| panic!("{e}"));
        set_exporters(
            &mut d,
            &[ExporterOverride {
                address: "192.0.2.9".parse().unwrap_or_else(|e| panic!("{e}")),
                sampling_rate: Some(100),
                sampling_mode: SamplingMode::Force,
                name: Some("edge".into()),
            }],
        );
        set_allow(
            &mut d,
            &[AllowRule {
                src: None,
                dst: Some("203.0.113.0/24".parse().unwrap_or_else(|e| panic!("{e:?}"))),
                port: Some(443),
                proto: None,
                kinds: vec!["beaconing".into()],
                name: Some("backup".into()),
            }],
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let out = d.to_string();
        assert!(
            out.starts_with("# site config\n[storage]\nbudget = \"10GiB\" # the disk\n"),
            "{out}"
        );
        assert!(out.contains("[network]\ninternal = [\"10.0.0.0/8\"]"), "{out}");
        assert!(
            out.contains("[[exporter]]\naddress = \"192.0.2.9\"\nsampling_rate = 100\nsampling_mode = \"force\"\nname = \"edge\""),
            "{out}"
        );
        assert!(!out.contains("old"), "{out}");
        assert!(
            out.contains("[[detect.allow]]\nname = \"backup\"\ndst = \"203.0.113.0/24\"\nport = 443\nkinds = [\"beaconing\"]"),
            "{out}"
        );
        assert!(!out.contains("[detect]\n"), "no empty [detect] header: {out}");
        set_names(
            &mut d,
            &[crate::net::NamedNet {
                net: "10.1.2.3/32".parse().unwrap_or_else(|e| panic!("{e:?}")),
                name: "printer".into(),
            }],
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert!(
            d.to_string()
                .contains("[[network.name]]\nnet = \"10.1.2.3/32\"\nname = \"printer\""),
            "{d}"
        );
        // Removing every entry removes the tables.
        set_exporters(&mut d, &[]);
        set_allow(&mut d, &[]).unwrap_or_else(|e| panic!("{e}"));
        let out = d.to_string();
        assert!(!out.contains("exporter") && !out.contains("allow"), "{out}");
    }

    #[test]
    fn destinations_are_changed_in_place_added_and_removed() {
        let text =
            "[[forward]]\nname = \"soc\" # main SIEM\naddress = \"siem:6514\"\nfingerprint = \"sha256:AA\"\nspool_max_bytes = \"1GiB\"\n";
        let mut d = doc(text);
        let mut e = DestinationEdit {
            name: "soc".into(),
            address: "siem2:6514".into(),
            transport: "tls".into(),
            framing: "octet".into(),
            format: "leef".into(),
            ca_file: Some(PathBuf::from("/data/pki/upload-1.pem")),
            ..Default::default()
        };
        set_destination(&mut d, Some("soc"), Some(&e)).unwrap_or_else(|err| panic!("{err}"));
        let out = d.to_string();
        assert!(out.contains("name = \"soc\" # main SIEM"), "comments stay: {out}");
        assert!(
            out.contains("address = \"siem2:6514\"") && out.contains("format = \"leef\""),
            "{out}"
        );
        assert!(
            out.contains("spool_max_bytes = \"1GiB\""),
            "keys the form does not show stay: {out}"
        );
        assert!(
            !out.contains("fingerprint") && out.contains("ca_file = \"/data/pki/upload-1.pem\""),
            "{out}"
        );
        e.name = "backup".into();
        set_destination(&mut d, None, Some(&e)).unwrap_or_else(|err| panic!("{err}"));
        assert_eq!(d.to_string().matches("[[forward]]").count(), 2);
        assert!(set_destination(&mut d, Some("nope"), None).is_err());
        set_destination(&mut d, Some("soc"), None).unwrap_or_else(|err| panic!("{err}"));
        set_destination(&mut d, Some("backup"), None).unwrap_or_else(|err| panic!("{err}"));
        assert!(!d.to_string().contains("forward"), "{d}");
    }

    #[test]
    fn the_diff_shows_what_changed_in_order() {
        let d = diff("a\nb\nc\nd\n", "a\nc\nx\nd\ny\n");
        let shown: Vec<String> = d.iter().map(|(k, l)| format!("{k}{l}")).collect();
        assert_eq!(shown, [" a", "-b", " c", "+x", " d", "+y"]);
        assert!(diff("same\n", "same\n").iter().all(|(k, _)| *k == ' '));
        assert_eq!(diff("", "new\n"), vec![('+', "new".to_string())]);
    }

    #[test]
    fn saving_keeps_the_previous_version_and_uploads_by_content() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let access = SettingsAccess {
            file: dir.path().join("flowwarden.toml"),
            check: Arc::new(|_, _| Ok(SiteView::default())),
        };
        assert_eq!(access.read().ok().as_deref(), Some(""));
        assert_eq!(access.read_previous().ok(), Some(None));
        access.save("", "[network]\n").unwrap_or_else(|e| panic!("{e}"));
        access.save("[network]\n", "[storage]\n").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(access.read().ok().as_deref(), Some("[storage]\n"));
        assert_eq!(access.read_previous().ok().flatten().as_deref(), Some("[network]\n"));
        let pem = b"-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n";
        let a = store_upload(&access.pki_dir(), pem).unwrap_or_else(|e| panic!("{e}"));
        let b = store_upload(&access.pki_dir(), pem).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(a, b);
        assert!(store_upload(&access.pki_dir(), b"not pem").is_err());
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&access.file).map(|m| m.permissions().mode() & 0o777).unwrap_or(0);
        assert_eq!(mode, 0o600);
    }
}
