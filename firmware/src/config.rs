//! The appliance configuration: one TOML file, validated into a typed [`Config`].
//!
//! Every stage reads its settings from here. Unknown keys are rejected
//! (`deny_unknown_fields`); every error names the file, the line and column,
//! the key path and what was expected, and `run` refuses to start with it.
//! With no file at all the embedded defaults apply.

use crate::net::IpNet;
use serde::Deserialize;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use thiserror::Error;

/// The configuration `run` reads from its data directory when no `--config`
/// is given; the page's settings and provisioning save there.
pub const SAVED_CONFIG: &str = "flowwarden.toml";

/// A configuration that cannot be used.
#[derive(Debug, Error)]
pub enum ConfigError {
    #[error("{path}: cannot read: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}:{line}:{column}: {message}")]
    Syntax {
        path: PathBuf,
        line: usize,
        column: usize,
        message: String,
    },
    #[error("{path}:{line}: {key}: {message}")]
    Invalid {
        path: PathBuf,
        line: usize,
        key: String,
        message: String,
    },
}

pub use crate::decode::settings::{ExporterOverride, SamplingMode};
pub use crate::store::settings::StorageConfig;
pub use crate::units::{SizeSpec, Span};

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct CollectorConfig {
    /// UDP addresses to listen on.
    pub listen: Vec<SocketAddr>,
    /// SO_RCVBUF per socket, bytes.
    pub receive_buffer: SizeSpec,
    /// Exporter sessions tracked at once (template scopes); the least recently
    /// seen is evicted, and counted, beyond this.
    pub max_exporters: usize,
    /// Data sets held per exporter while their template is unknown.
    pub pending_per_exporter: usize,
    /// How long such data is held before it expires (counted).
    pub pending_ttl: Span,
    /// Flows per batch handed to the store and detectors.
    pub batch_flows: usize,
    /// Batches queued between decoder and store before drops (counted).
    pub queue_batches: usize,
    /// Flows dated further than this from their datagram's export time (or
    /// before 2000, or this far ahead of the box's clock) are clamped to the
    /// export time, marked and counted per exporter.
    pub max_clock_skew: Span,
}

impl Default for CollectorConfig {
    fn default() -> Self {
        let mut listen = Vec::new();
        for port in [2055u16, 4739, 9995] {
            listen.push(SocketAddr::from(([0, 0, 0, 0], port)));
            listen.push(SocketAddr::from(([0u16; 8], port)));
        }
        CollectorConfig {
            listen,
            receive_buffer: SizeSpec::Bytes(4 * 1024 * 1024),
            max_exporters: 4096,
            pending_per_exporter: 1024,
            pending_ttl: Span(120_000),
            batch_flows: 4096,
            queue_batches: 64,
            max_clock_skew: Span(86_400_000),
        }
    }
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct NetworkConfig {
    /// Networks that are "inside" the branch.
    pub internal: Vec<IpNet>,
    /// Names for addresses and networks (`[[network.name]]`: `net`, `name`),
    /// shown beside them on the page.
    #[serde(rename = "name")]
    pub names: Vec<crate::net::NamedNet>,
}

impl Default for NetworkConfig {
    fn default() -> Self {
        NetworkConfig {
            internal: IpNet::default_internal(),
            names: Vec::new(),
        }
    }
}

/// What a configuration sets, in one line (`check-config`, the page's settings).
pub fn summary(cfg: &Config) -> String {
    format!(
        "{} listeners, storage budget {}, {} internal networks, {} exporter overrides, {} forwarding destinations",
        cfg.collector.listen.len(),
        cfg.storage.budget,
        cfg.network.internal.len(),
        cfg.exporters.len(),
        cfg.forward.len()
    )
}

/// The whole configuration.
#[derive(Debug, Clone, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub data_dir: Option<PathBuf>,
    pub collector: CollectorConfig,
    pub storage: StorageConfig,
    pub network: NetworkConfig,
    #[serde(rename = "exporter")]
    pub exporters: Vec<ExporterOverride>,
    pub detect: crate::detect::settings::DetectConfig,
    /// SIEM destinations (`[[forward]]`).
    pub forward: Vec<crate::forward::settings::ForwardConfig>,
    /// The local web status page (`[web]`).
    pub web: crate::web::settings::WebConfig,
    /// The image's management network as the site sets it (`[management]`;
    /// PID 1 applies it, the board file holds the defaults).
    pub management: Option<crate::management::Management>,
}

impl Config {
    /// Read and validate a file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Config::parse(&text, path)
    }

    /// Parse and validate text; `path` is only used in messages.
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let cfg: Config = toml::from_str(text).map_err(|e| {
            let (line, column) = e.span().map(|s| line_col(text, s.start)).unwrap_or((1, 1));
            ConfigError::Syntax {
                path: path.to_path_buf(),
                line,
                column,
                message: plain_message(e.message().trim()),
            }
        })?;
        cfg.validate(text, path)?;
        Ok(cfg)
    }

    fn validate(&self, text: &str, path: &Path) -> Result<(), ConfigError> {
        let bad = |table: &str, key: &str, message: String| ConfigError::Invalid {
            path: path.to_path_buf(),
            line: key_line(text, table, key),
            key: if table.is_empty() {
                key.to_string()
            } else {
                format!("{table}.{key}")
            },
            message,
        };
        if let Err((key, message)) = self.web.check() {
            return Err(bad("web", key, message));
        }
        if let Some(Err((key, message))) = self.management.as_ref().map(|m| m.check()) {
            return Err(bad("management", key, message));
        }
        for (i, n) in self.network.names.iter().enumerate() {
            if let Err(m) = crate::net::check_name(&n.name) {
                return Err(bad("network.name", "name", format!("entry {}: {m}", i + 1)));
            }
        }
        let c = &self.collector;
        if c.listen.is_empty() {
            return Err(bad("collector", "listen", "at least one address is needed".into()));
        }
        if c.max_exporters == 0 || c.max_exporters > 1_000_000 {
            return Err(bad("collector", "max_exporters", "must be between 1 and 1000000".into()));
        }
        if c.batch_flows == 0 || c.batch_flows > 1 << 20 {
            return Err(bad("collector", "batch_flows", "must be between 1 and 1048576".into()));
        }
        if c.queue_batches == 0 || c.queue_batches > 1 << 16 {
            return Err(bad("collector", "queue_batches", "must be between 1 and 65536".into()));
        }
        if !(60_000..=36_500 * 86_400_000).contains(&c.max_clock_skew.ms()) {
            return Err(bad("collector", "max_clock_skew", "must be between 1m and 36500d".into()));
        }
        if let SizeSpec::Bytes(b) = c.receive_buffer
            && !(4096..=1 << 30).contains(&b)
        {
            return Err(bad("collector", "receive_buffer", "must be between 4 KiB and 1 GiB".into()));
        }
        let s = &self.storage;
        if !(10.0..100.0).contains(&s.low_watermark_percent) {
            return Err(bad("storage", "low_watermark_percent", "must be in [10, 100)".into()));
        }
        if let Some(age) = s.max_age
            && age.ms() < 3_600_000
        {
            return Err(bad(
                "storage",
                "max_age",
                format!(
                    "{} would delete almost every flow as soon as it is stored; use at least 1h, or leave max_age out (no age cap)",
                    crate::units::duration_ms(age.ms())
                ),
            ));
        }
        for (key, span) in [
            ("minute_rollup_retention", s.minute_rollup_retention),
            ("hour_rollup_retention", s.hour_rollup_retention),
        ] {
            if span.ms() < 3_600_000 {
                return Err(bad("storage", key, "must be at least 1h".into()));
            }
        }
        if !(10..=60_000).contains(&s.commit_interval.ms()) {
            return Err(bad("storage", "commit_interval", "must be between 10ms and 60s".into()));
        }
        if let SizeSpec::Bytes(b) = s.budget
            && b < 4 * 1024 * 1024
        {
            return Err(bad("storage", "budget", "must be at least 4 MiB".into()));
        }
        if s.segment_span.ms() < 60_000 || s.segment_span.ms() > 86_400_000 {
            return Err(bad("storage", "segment_span", "must be between 1m and 1d".into()));
        }
        if s.block_flows == 0 || s.block_flows > 1 << 20 {
            return Err(bad("storage", "block_flows", "must be between 1 and 1048576".into()));
        }
        if !(-7..=19).contains(&s.compression_level) || s.compression_level == 0 {
            return Err(bad(
                "storage",
                "compression_level",
                format!(
                    "{} is not a zstd level: use 1 to 19 (higher: smaller, slower) or -7 to -1 (faster)",
                    s.compression_level
                ),
            ));
        }
        if !(1.0..=90.0).contains(&s.rollup_budget_percent) {
            return Err(bad("storage", "rollup_budget_percent", "must be between 1 and 90".into()));
        }
        if s.top_entries == 0 || s.top_entries > 10_000 {
            return Err(bad("storage", "top_entries", "must be between 1 and 10000".into()));
        }
        for e in &self.exporters {
            if e.sampling_rate == Some(0) {
                return Err(bad("exporter", "sampling_rate", "must be at least 1".into()));
            }
            if e.sampling_mode == SamplingMode::Force && e.sampling_rate.is_none() {
                return Err(bad("exporter", "sampling_mode", "\"force\" needs a sampling_rate".into()));
            }
        }
        if let Err((table, key, message)) = crate::detect::settings::validate(&self.detect) {
            return Err(bad(table, key, message));
        }
        if let Err((index, key, message)) = crate::forward::settings::validate(&self.forward) {
            return Err(ConfigError::Invalid {
                path: path.to_path_buf(),
                line: array_key_line(text, "forward", index, key),
                key: format!("forward[{index}].{key}"),
                message,
            });
        }
        Ok(())
    }

    /// Settings that are legal but probably not what was meant (check-config
    /// prints them; `run` logs them).
    pub fn warnings(&self) -> Vec<String> {
        let mut w = Vec::new();
        if let SizeSpec::Bytes(b) = self.storage.budget
            && b < 64 << 20
        {
            w.push(format!(
                "storage.budget: {} holds little history (hours at most for a busy branch)",
                crate::units::bytes(b)
            ));
        }
        if let Some(age) = self.storage.max_age
            && age.ms() < 86_400_000
        {
            w.push(format!(
                "storage.max_age: flows older than {} are deleted even when the disk has room",
                crate::units::duration_ms(age.ms())
            ));
        }
        if self.detect.enabled && self.detect.suppress_window.ms() == 0 {
            w.push("detect.suppress_window = \"0s\": every repeat of a detection is a new alert".into());
        }
        if self.collector.max_clock_skew.ms() > 30 * 86_400_000 {
            w.push(format!(
                "collector.max_clock_skew: {} lets flows dated far from their export time into the store (meant for replays of old captures)",
                crate::units::duration_ms(self.collector.max_clock_skew.ms())
            ));
        }
        let spools: u64 = self.forward.iter().map(|f| f.spool_bytes()).sum();
        if let SizeSpec::Bytes(b) = self.storage.budget
            && spools > b / 4
        {
            w.push(format!(
                "forward: the spools may grow to {} together, more than a quarter of storage.budget ({}); flows are evicted to make room for them",
                crate::units::bytes(spools),
                crate::units::bytes(b)
            ));
        }
        if self.network.internal.is_empty() {
            w.push(
                "network.internal is empty: no flow is inbound or outbound, and the detectors cannot tell the branch from the internet"
                    .into(),
            );
        }
        w
    }

    /// The decoder's share of the configuration.
    pub fn decoder_settings(&self) -> crate::decode::settings::DecoderSettings {
        crate::decode::settings::DecoderSettings {
            max_exporters: self.collector.max_exporters,
            pending_per_exporter: self.collector.pending_per_exporter,
            pending_ttl_ms: self.collector.pending_ttl.ms(),
            internal: self.network.internal.clone(),
            overrides: self.exporters.clone(),
            max_clock_skew_ms: self.collector.max_clock_skew.ms(),
        }
    }

    /// The override for an exporter address, if any.
    pub fn exporter_override(&self, ip: IpAddr) -> Option<&ExporterOverride> {
        self.exporters.iter().find(|e| e.address == ip)
    }
}

/// serde's wording for people: Rust type names become what the key expects.
fn plain_message(m: &str) -> String {
    let mut out = m.to_string();
    // "invalid type: integer `N` as i128, expected X": the number does not fit.
    if let Some(rest) = out.strip_prefix("invalid type: integer `")
        && let Some((n, tail)) = rest.split_once("` as i128")
    {
        out = format!("{n} is too large{}", tail.replacen(", expected", "; expected", 1));
    }
    for (rust, words) in [
        ("expected u64", "expected a whole number"),
        ("expected u32", "expected a whole number"),
        ("expected u16", "expected a whole number from 0 to 65535"),
        ("expected u8", "expected a whole number from 0 to 255"),
        ("expected usize", "expected a whole number"),
        ("expected i32", "expected a whole number"),
        ("expected i64", "expected a whole number"),
        ("expected f64", "expected a number"),
        ("expected a boolean", "expected true or false"),
    ] {
        if let Some(i) = out.find(rust)
            && !out[i + rust.len()..].starts_with(|c: char| c.is_alphanumeric())
        {
            out.replace_range(i..i + rust.len(), words);
        }
    }
    out
}

fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.rfind('\n').map(|i| offset - i).unwrap_or(offset + 1);
    (line, column)
}

/// Best-effort line of `key` in the `index`-th `[[table]]` (its header line if
/// the key is absent, 1 if the table is).
fn array_key_line(text: &str, table: &str, index: usize, key: &str) -> usize {
    let header = format!("[[{table}]]");
    let mut seen = 0usize;
    let mut in_it = false;
    let mut header_line = 1;
    for (i, line) in text.lines().enumerate() {
        let t = line.trim();
        if t.starts_with('[') {
            in_it = t.replace(' ', "") == header && {
                seen += 1;
                seen == index + 1
            };
            if in_it {
                header_line = i + 1;
            }
            continue;
        }
        if in_it && t.split('=').next().map(str::trim) == Some(key) {
            return i + 1;
        }
    }
    header_line
}

/// Best-effort line of `key` inside `[table]` (1 if not found: the default applied).
fn key_line(text: &str, table: &str, key: &str) -> usize {
    let mut in_table = table.is_empty();
    for (i, line) in text.lines().enumerate() {
        let t = line.trim();
        if t.starts_with('[') {
            let name = t.trim_matches(|c| c == '[' || c == ']').trim();
            in_table = name == table;
            continue;
        }
        if in_table && t.split('=').next().map(str::trim) == Some(key) {
            return i + 1;
        }
    }
    1
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(t: &str) -> Result<Config, ConfigError> {
        Config::parse(t, Path::new("test.toml"))
    }

    #[test]
    fn empty_file_gives_defaults() {
        let c = parse("").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(c.collector.listen.len(), 6);
        assert_eq!(c.storage.budget, SizeSpec::Percent(85.0));
        assert_eq!(c.network.internal.len(), 5);
    }

    #[test]
    fn full_file_parses() {
        let c = parse(
            r#"
data_dir = "/var/lib/flowwarden"
[collector]
listen = ["127.0.0.1:2055"]
receive_buffer = "8MiB"
pending_ttl = "30s"
[storage]
budget = "2GiB"
max_age = "30d"
[network]
internal = ["10.0.0.0/8"]
[[exporter]]
address = "192.0.2.1"
sampling_rate = 100
sampling_mode = "force"
"#,
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(c.collector.receive_buffer, SizeSpec::Bytes(8 << 20));
        assert_eq!(c.storage.budget, SizeSpec::Bytes(2 << 30));
        assert_eq!(c.storage.max_age, Some(Span(30 * 86_400_000)));
        assert_eq!(c.exporters[0].sampling_mode, SamplingMode::Force);
    }

    #[test]
    fn unknown_key_names_line() {
        let e = parse("[collector]\nlisten = [\"127.0.0.1:1\"]\nlisen = 3\n").unwrap_err();
        let msg = e.to_string();
        assert!(msg.starts_with("test.toml:3:"), "{msg}");
        assert!(msg.contains("unknown field `lisen`"), "{msg}");
    }

    #[test]
    fn wrong_type_names_line_and_expectation() {
        let e = parse("[storage]\n\nbudget = \"lots\"\n").unwrap_err().to_string();
        assert!(e.starts_with("test.toml:3:"), "{e}");
        assert!(e.contains("not a size"), "{e}");
    }

    #[test]
    fn semantic_error_names_key_and_line() {
        let e = parse("[storage]\nblock_flows = 0\n").unwrap_err().to_string();
        assert_eq!(e, "test.toml:2: storage.block_flows: must be between 1 and 1048576");
        let e = parse("[[exporter]]\naddress = \"10.0.0.1\"\nsampling_mode = \"force\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("exporter.sampling_mode"), "{e}");
    }

    #[test]
    fn forward_tables_are_checked_with_their_line() {
        let ok = parse("[[forward]]\nname = \"a\"\naddress = \"127.0.0.1:514\"\ntransport = \"udp\"\nformat = \"json\"\n");
        let c = ok.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(c.forward.len(), 1);
        assert_eq!(c.forward[0].message_limit(), 2048);
        let text = "[[forward]]\nname = \"a\"\naddress = \"h:1\"\ntransport = \"udp\"\n\n[[forward]]\nname = \"b\"\naddress = \"h:6514\"\n";
        let e = parse(text).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(
            e.contains(":6: forward[1].ca_file: destination \"b\": transport \"tls\" needs ca_file or fingerprint"),
            "{e}"
        );
        let e = parse("[[forward]]\nname = \"a\"\naddress = \"h:1\"\nca_file = \"/nonexistent/ca.pem\"\n")
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            e.contains(":4: forward[0].ca_file:") && e.contains("/nonexistent/ca.pem: cannot read"),
            "{e}"
        );
        let e = parse("[[forward]]\nname = \"a\"\naddress = \"h:1\"\ntransport = \"smtp\"\n")
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(e.contains(":4:") && e.contains("smtp"), "{e}");
        let e = parse("[[forward]]\nname = \"a\"\naddress = \"h:1\"\ntransport = \"tcp\"\nfacility = \"local9\"\n")
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(e.contains("forward[0].facility"), "{e}");
    }

    #[test]
    fn messages_say_what_is_expected_in_words() {
        let e = |t: &str| parse(t).err().map(|e| e.to_string()).unwrap_or_default();
        let m = e("[[forward]]\nname = \"a\"\naddress = \"h:1\"\ntransport = \"udp\"\nspool_max_bytes = -1\n");
        assert!(m.contains("-1 is negative; expected a size"), "{m}");
        let m = e("[[forward]]\nname = \"a\"\naddress = \"h:1\"\ntransport = \"udp\"\nspool_max_bytes = 12345678901234567890123\n");
        assert!(m.contains("12345678901234567890123 is too large"), "{m}");
        assert!(!m.contains("i128"), "{m}");
        let m = e("[collector]\nmax_exporters = 99999999999999999999999\n");
        assert!(m.contains("is too large; expected a whole number"), "{m}");
        let m = e("[collector]\nmax_exporters = \"many\"\n");
        assert!(m.contains("expected a whole number"), "{m}");
        let m = e("[storage]\ncompression_level = 99\n");
        assert!(m.contains("99 is not a zstd level"), "{m}");
        let m = e("[storage]\nmax_age = \"0s\"\n");
        assert!(m.contains(":2: storage.max_age"), "{m}");
        let m = e("[[forward]]\nname = \"a\"\naddress = \"siem.example\"\ntransport = \"udp\"\n");
        assert!(m.contains("has no port"), "{m}");
        assert_eq!(SizeSpec::Percent(85.0).to_string(), "85 % of the data file system");
        assert_eq!(SizeSpec::Bytes(24_000_000).to_string(), "22.9 MiB (24000000 bytes)");
    }

    #[test]
    fn sizes_resolve() {
        assert_eq!(SizeSpec::Percent(50.0).resolve(1000), 500);
        assert_eq!(SizeSpec::parse("1.5GB"), Ok(SizeSpec::Bytes(1_500_000_000)));
        assert!(SizeSpec::parse("150%").is_err());
    }
}
