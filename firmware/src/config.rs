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

/// Size given as bytes (`536870912`, `"512MiB"`, `"2G"`) or a share of the
/// data file system (`"85%"`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum SizeSpec {
    Bytes(u64),
    Percent(f64),
}

impl SizeSpec {
    /// Resolve against the size of the file system holding the data.
    pub fn resolve(&self, filesystem_bytes: u64) -> u64 {
        match *self {
            SizeSpec::Bytes(b) => b,
            SizeSpec::Percent(p) => (filesystem_bytes as f64 * p / 100.0) as u64,
        }
    }

    fn parse(s: &str) -> Result<SizeSpec, String> {
        let s = s.trim();
        if let Some(p) = s.strip_suffix('%') {
            let v: f64 = p.trim().parse().map_err(|_| format!("{s:?} is not a percentage"))?;
            if !(v > 0.0 && v <= 100.0) {
                return Err(format!("{s:?}: a percentage must be in (0, 100]"));
            }
            return Ok(SizeSpec::Percent(v));
        }
        let split = s.find(|c: char| !c.is_ascii_digit() && c != '.').unwrap_or(s.len());
        let (n, unit) = s.split_at(split);
        let n: f64 = n.parse().map_err(|_| format!("{s:?} is not a size"))?;
        let mul: f64 = match unit.trim().to_ascii_lowercase().as_str() {
            "" | "b" => 1.0,
            "k" | "kb" => 1e3,
            "kib" => 1024.0,
            "m" | "mb" => 1e6,
            "mib" => 1024.0 * 1024.0,
            "g" | "gb" => 1e9,
            "gib" => 1024.0 * 1024.0 * 1024.0,
            "t" | "tb" => 1e12,
            "tib" => 1024f64.powi(4),
            u => return Err(format!("unknown size unit {u:?} (use B, KiB, MiB, GiB, TiB, KB, MB, GB, TB or %)")),
        };
        Ok(SizeSpec::Bytes((n * mul) as u64))
    }
}

impl<'de> Deserialize<'de> for SizeSpec {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            N(u64),
            S(String),
        }
        match Raw::deserialize(d)? {
            Raw::N(n) => Ok(SizeSpec::Bytes(n)),
            Raw::S(s) => SizeSpec::parse(&s).map_err(serde::de::Error::custom),
        }
    }
}

/// A duration written as `"90s"`, `"5m"`, `"2h"`, `"30d"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Span(pub u64);

impl Span {
    pub fn ms(self) -> u64 {
        self.0
    }
}

impl<'de> Deserialize<'de> for Span {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        crate::timefmt::parse_span_ms(&s)
            .map(Span)
            .map_err(|_| serde::de::Error::custom(format!("{s:?} is not a duration (like 90s, 5m, 2h, 30d)")))
    }
}

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
pub struct StorageConfig {
    /// Byte budget for everything under the data directory.
    pub budget: SizeSpec,
    /// After eviction, use falls to this share of the budget (percent).
    pub low_watermark_percent: f64,
    /// Optional age cap for raw flows.
    pub max_age: Option<Span>,
    /// Time span of one flow segment file.
    pub segment_span: Span,
    /// Commit at least this often.
    pub commit_interval: Span,
    /// Flows per compressed block.
    pub block_flows: usize,
    /// zstd level for flow blocks (1: measured 12.3 B/flow at 515 k flows/s on one core; 3: 11.5 B/flow at 449 k/s).
    pub compression_level: i32,
    /// Retention of per-minute roll-ups.
    pub minute_rollup_retention: Span,
    /// Retention of per-hour roll-ups.
    pub hour_rollup_retention: Span,
    /// Entries kept per top-N roll-up.
    pub top_entries: usize,
    /// Share of the budget (percent) the roll-up file may use; past it the
    /// oldest roll-ups go first, before their retention.
    pub rollup_budget_percent: f64,
}

impl Default for StorageConfig {
    fn default() -> Self {
        StorageConfig {
            budget: SizeSpec::Percent(85.0),
            low_watermark_percent: 90.0,
            max_age: None,
            segment_span: Span(3_600_000),
            commit_interval: Span(1000),
            block_flows: 8192,
            compression_level: 1,
            minute_rollup_retention: Span(35 * 86_400_000),
            hour_rollup_retention: Span(400 * 86_400_000),
            top_entries: 100,
            rollup_budget_percent: 20.0,
        }
    }
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct NetworkConfig {
    /// Networks that are "inside" the branch.
    pub internal: Vec<IpNet>,
}

impl Default for NetworkConfig {
    fn default() -> Self {
        NetworkConfig {
            internal: IpNet::default_internal(),
        }
    }
}

/// How a configured sampling rate combines with what the exporter announces.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum SamplingMode {
    /// Used when the exporter announces no rate.
    #[default]
    Default,
    /// Always used, whatever the exporter announces.
    Force,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ExporterOverride {
    /// Exporter IP address (any source port).
    pub address: IpAddr,
    pub sampling_rate: Option<u32>,
    #[serde(default)]
    pub sampling_mode: SamplingMode,
    /// Human label shown in the exporters table.
    pub name: Option<String>,
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
                message: e.message().trim().to_string(),
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
                "must be between -7 (fastest) and 19, not 0".into(),
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

    /// The override for an exporter address, if any.
    pub fn exporter_override(&self, ip: IpAddr) -> Option<&ExporterOverride> {
        self.exporters.iter().find(|e| e.address == ip)
    }
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
    fn sizes_resolve() {
        assert_eq!(SizeSpec::Percent(50.0).resolve(1000), 500);
        assert_eq!(SizeSpec::parse("1.5GB"), Ok(SizeSpec::Bytes(1_500_000_000)));
        assert!(SizeSpec::parse("150%").is_err());
    }
}
