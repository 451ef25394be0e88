//! The `[detect]` configuration sections and their documented defaults.
//!
//! Each detector has its own table (`[detect.exfil]`, `[detect.beacon]`,
//! `[detect.scan]`, `[detect.spike]`); `[detect.baseline]` sizes the learned
//! history, `[detect.sessions]` the stitching/dedup table, and
//! `[[detect.allow]]` entries suppress matching alerts (counted).

use crate::alert::Kind;
use crate::net::IpNet;
use crate::units::{SizeSpec, Span};
use serde::Deserialize;

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct DetectConfig {
    /// Run the detectors at all (in `run` and `ingest`).
    pub enabled: bool,
    /// Event time allowed for late flows before a minute/hour is closed.
    pub grace: Span,
    /// One alert per (kind, src, dst[, port]) per window; repeats update it.
    pub suppress_window: Span,
    /// Flows further ahead of the event clock than this are clamped (counted).
    pub max_clock_jump: Span,
    pub sessions: SessionSettings,
    pub baseline: BaselineSettings,
    pub exfil: ExfilSettings,
    pub beacon: BeaconSettings,
    pub scan: ScanSettings,
    pub spike: SpikeSettings,
    pub allow: Vec<AllowRule>,
}

impl Default for DetectConfig {
    fn default() -> Self {
        DetectConfig {
            enabled: true,
            grace: Span(120_000),
            suppress_window: Span(3_600_000),
            max_clock_jump: Span(3 * 86_400_000),
            sessions: SessionSettings::default(),
            baseline: BaselineSettings::default(),
            exfil: ExfilSettings::default(),
            beacon: BeaconSettings::default(),
            scan: ScanSettings::default(),
            spike: SpikeSettings::default(),
            allow: Vec::new(),
        }
    }
}

/// Session stitching (initiator) and cross-exporter de-duplication.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct SessionSettings {
    /// Sessions tracked at once; the oldest are evicted (counted) beyond this.
    pub max_sessions: usize,
    /// A session with no record for this long is closed.
    pub idle_timeout: Span,
    /// A record of the same 5-tuple from another exporter overlapping within
    /// this tolerance is a duplicate copy (counted once).
    pub dedup_tolerance: Span,
    /// A record that starts within this of the previous one's end continues it
    /// (active-timeout splits), rather than being a new connection.
    pub continuation_gap: Span,
    /// How long a first contact waits for a reply before it counts as failed.
    pub reply_wait: Span,
}

impl Default for SessionSettings {
    fn default() -> Self {
        SessionSettings {
            max_sessions: 262_144,
            idle_timeout: Span(300_000),
            dedup_tolerance: Span(2_000),
            continuation_gap: Span(5_000),
            reply_wait: Span(60_000),
        }
    }
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct BaselineSettings {
    /// History needed before baseline detectors speak.
    pub learning_period: Span,
    /// Days of hourly history kept per host (hour-of-week needs 3 weeks).
    pub history_days: u32,
    /// Same-hour-of-week samples needed before hour-of-week replaces hour-of-day.
    pub min_week_samples: usize,
    /// Internal hosts with a baseline; the least recently active is evicted (counted).
    pub max_hosts: usize,
    /// Exporter interfaces with a baseline.
    pub max_interfaces: usize,
    /// Destinations remembered per host for "new destination".
    pub peers_per_host: usize,
}

impl Default for BaselineSettings {
    fn default() -> Self {
        BaselineSettings {
            learning_period: Span(7 * 86_400_000),
            history_days: 28,
            min_week_samples: 3,
            max_hosts: 4096,
            max_interfaces: 256,
            peers_per_host: 256,
        }
    }
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ExfilSettings {
    pub enabled: bool,
    /// Robust z-score (after boosts) at which an hour's upload is exfiltration.
    pub z_threshold: f64,
    /// Bytes above the baseline median needed in any case (absolute floor).
    pub min_excess: SizeSpec,
    /// Score multiplier for each of: new destination, off-hours, unusual port.
    pub boost: f64,
    /// Site activity below this share of its busiest hour-of-day is off-hours.
    pub off_hours_share: f64,
}

impl Default for ExfilSettings {
    fn default() -> Self {
        ExfilSettings {
            enabled: true,
            z_threshold: 8.0,
            min_excess: SizeSpec::Bytes(200_000_000),
            boost: 1.5,
            off_hours_share: 0.2,
        }
    }
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct BeaconSettings {
    pub enabled: bool,
    /// Connections a pair needs inside the window before it is scored.
    pub min_connections: usize,
    /// Analysis window (RITA uses a day).
    pub window: Span,
    /// Score (0-1) at which a pair is beaconing.
    pub threshold: f64,
    /// Share of active internal hosts contacting a destination above which it is
    /// "popular" and down-weighted.
    pub prevalence: f64,
    /// ... but only when at least this many hosts contact it.
    pub prevalence_min_hosts: usize,
    /// Score multiplier for popular destinations and periodic services.
    pub down_weight: f64,
    /// Well-known periodic services, `proto/port` (down-weighted).
    pub periodic_services: Vec<String>,
    /// Pairs tracked at once (least recently active evicted, counted).
    pub max_pairs: usize,
    /// Timestamps kept over all pairs.
    pub max_points: usize,
}

impl Default for BeaconSettings {
    fn default() -> Self {
        BeaconSettings {
            enabled: true,
            min_connections: 12,
            window: Span(86_400_000),
            threshold: 0.8,
            prevalence: 0.25,
            prevalence_min_hosts: 3,
            down_weight: 0.6,
            periodic_services: ["udp/123", "udp/53", "tcp/53", "udp/67", "udp/161", "udp/514"]
                .iter()
                .map(|s| s.to_string())
                .collect(),
            max_pairs: 32_768,
            max_points: 2_000_000,
        }
    }
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ScanSettings {
    pub enabled: bool,
    /// TRW θ0: success probability of a benign source's first contact.
    pub theta0: f64,
    /// TRW θ1: success probability of a scanner's first contact.
    pub theta1: f64,
    /// TRW detection probability and false-positive rate (set the thresholds).
    pub detection_probability: f64,
    pub false_positive_rate: f64,
    /// Distinct failed targets (host or host:port) a source needs before an alert.
    pub min_targets: usize,
    /// Fan-out window.
    pub window: Span,
    /// Distinct hosts on one port (horizontal) per window.
    pub fanout_hosts: usize,
    /// Distinct ports on one host (vertical) per window.
    pub fanout_ports: usize,
    /// Sources tracked at once.
    pub max_sources: usize,
    /// A source idle this long is forgotten.
    pub source_idle: Span,
}

impl Default for ScanSettings {
    fn default() -> Self {
        ScanSettings {
            enabled: true,
            theta0: 0.8,
            theta1: 0.2,
            detection_probability: 0.99,
            false_positive_rate: 0.01,
            min_targets: 20,
            window: Span(600_000),
            fanout_hosts: 50,
            fanout_ports: 50,
            max_sources: 65_536,
            source_idle: Span(86_400_000),
        }
    }
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct SpikeSettings {
    pub enabled: bool,
    /// Bucket length of the series.
    pub bucket: Span,
    /// Holt smoothing of level, trend and deviation.
    pub alpha: f64,
    pub beta: f64,
    pub gamma: f64,
    /// Band width in smoothed deviations.
    pub band: f64,
    /// k of the last n buckets must be above the band.
    pub persist_k: usize,
    pub persist_n: usize,
    /// Observed / expected needed as well.
    pub min_ratio: f64,
    /// Bytes per bucket above expectation needed as well.
    pub min_excess: SizeSpec,
    /// Top contributors reported.
    pub top: usize,
}

impl Default for SpikeSettings {
    fn default() -> Self {
        SpikeSettings {
            enabled: true,
            bucket: Span(300_000),
            alpha: 0.3,
            beta: 0.05,
            gamma: 0.1,
            band: 4.0,
            persist_k: 2,
            persist_n: 3,
            min_ratio: 4.0,
            min_excess: SizeSpec::Bytes(500_000_000),
            top: 5,
        }
    }
}

/// An allow-list entry: an alert matching every given field is suppressed (counted).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AllowRule {
    /// Matches the alert's src.
    pub src: Option<IpNet>,
    /// Matches the alert's dst.
    pub dst: Option<IpNet>,
    /// Matches the alert's dst_port.
    pub port: Option<u16>,
    /// Protocol name or number, matched against the alert's evidence `proto`.
    pub proto: Option<String>,
    /// Alert kinds; empty = all.
    #[serde(default)]
    pub kinds: Vec<String>,
    /// Label for counters and logs.
    pub name: Option<String>,
}

/// Check value ranges; returns (table, key, message) of the first bad one.
pub fn validate(d: &DetectConfig) -> Result<(), (&'static str, &'static str, String)> {
    let unit = |v: f64| (0.0..=1.0).contains(&v);
    if d.sessions.max_sessions < 1024 {
        return Err(("detect.sessions", "max_sessions", "must be at least 1024".into()));
    }
    if d.sessions.reply_wait.ms() >= d.sessions.idle_timeout.ms() {
        return Err((
            "detect.sessions",
            "reply_wait",
            "must be shorter than idle_timeout (a first contact is decided before its session closes)".into(),
        ));
    }
    if d.baseline.history_days < 7 || d.baseline.history_days > 90 {
        return Err(("detect.baseline", "history_days", "must be between 7 and 90".into()));
    }
    if d.baseline.learning_period.ms() > u64::from(d.baseline.history_days) * 86_400_000 {
        return Err(("detect.baseline", "learning_period", "must not be longer than history_days".into()));
    }
    if d.baseline.max_hosts == 0 || d.baseline.max_hosts > 1_000_000 {
        return Err(("detect.baseline", "max_hosts", "must be between 1 and 1000000".into()));
    }
    if d.exfil.z_threshold.is_nan() || d.exfil.z_threshold <= 0.0 {
        return Err(("detect.exfil", "z_threshold", "must be positive".into()));
    }
    if d.exfil.boost.is_nan() || d.exfil.boost < 1.0 {
        return Err(("detect.exfil", "boost", "must be at least 1".into()));
    }
    if !unit(d.beacon.threshold) || !unit(d.beacon.prevalence) || !unit(d.beacon.down_weight) {
        return Err((
            "detect.beacon",
            "threshold",
            "threshold, prevalence and down_weight must be in [0, 1]".into(),
        ));
    }
    if !(3_600_000..=7 * 86_400_000).contains(&d.beacon.window.ms()) {
        return Err((
            "detect.beacon",
            "window",
            "must be between 1h and 7d (beacons are found among repeats inside it)".into(),
        ));
    }
    if d.sessions.idle_timeout.ms() < 10_000 {
        return Err(("detect.sessions", "idle_timeout", "must be at least 10s".into()));
    }
    if d.max_clock_jump.ms() < 3_600_000 {
        return Err(("detect", "max_clock_jump", "must be at least 1h".into()));
    }
    if !(60_000..=86_400_000).contains(&d.scan.window.ms()) {
        return Err(("detect.scan", "window", "must be between 1m and 1d".into()));
    }
    if d.scan.source_idle.ms() < d.scan.window.ms() {
        return Err(("detect.scan", "source_idle", "must not be shorter than the scan window".into()));
    }
    if d.beacon.min_connections < 4 {
        return Err(("detect.beacon", "min_connections", "must be at least 4".into()));
    }
    for s in &d.beacon.periodic_services {
        if parse_service(s).is_none() {
            return Err((
                "detect.beacon",
                "periodic_services",
                format!("{s:?} is not PROTO/PORT like \"udp/123\""),
            ));
        }
    }
    let sc = &d.scan;
    if !(0.0 < sc.theta1 && sc.theta1 < sc.theta0 && sc.theta0 < 1.0) {
        return Err(("detect.scan", "theta0", "need 0 < theta1 < theta0 < 1".into()));
    }
    if !(0.0 < sc.false_positive_rate && sc.false_positive_rate < sc.detection_probability && sc.detection_probability < 1.0) {
        return Err((
            "detect.scan",
            "detection_probability",
            "need 0 < false_positive_rate < detection_probability < 1".into(),
        ));
    }
    let sp = &d.spike;
    if sp.bucket.ms() < 60_000 || 3_600_000 % sp.bucket.ms() != 0 {
        return Err(("detect.spike", "bucket", "must be at least 1m and divide an hour".into()));
    }
    if !(unit(sp.alpha) && unit(sp.beta) && unit(sp.gamma)) {
        return Err(("detect.spike", "alpha", "alpha, beta and gamma must be in [0, 1]".into()));
    }
    if sp.persist_k == 0 || sp.persist_k > sp.persist_n || sp.persist_n > 64 {
        return Err(("detect.spike", "persist_k", "need 1 <= persist_k <= persist_n <= 64".into()));
    }
    for a in &d.allow {
        if let Some(p) = &a.proto
            && parse_proto(p).is_none()
        {
            return Err(("detect.allow", "proto", format!("{p:?} is not a protocol name or number")));
        }
        for k in &a.kinds {
            if Kind::from_name(k).is_none() {
                return Err((
                    "detect.allow",
                    "kinds",
                    format!("{k:?} is not one of exfiltration, beaconing, scan, spike"),
                ));
            }
        }
    }
    Ok(())
}

/// `tcp` / `17` -> protocol number.
pub fn parse_proto(s: &str) -> Option<u8> {
    crate::flow::proto_number(s).or_else(|| s.parse().ok())
}

/// `udp/123` -> (17, 123).
pub fn parse_service(s: &str) -> Option<(u8, u16)> {
    let (p, port) = s.split_once('/')?;
    Some((parse_proto(p)?, port.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    /// The README's `[detect]` block documents the defaults: keep them equal.
    #[test]
    fn readme_block_is_the_defaults() {
        let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md")).unwrap_or_default();
        let start = readme
            .find("```toml\n[network]")
            .unwrap_or_else(|| panic!("README has no detect block"));
        let body = &readme[start + 8..];
        let block = &body[..body.find("```").unwrap_or(body.len())];
        let cfg = Config::parse(block, std::path::Path::new("README.md")).unwrap_or_else(|e| panic!("{e}"));
        let mut d = cfg.detect.clone();
        assert_eq!(d.allow.len(), 1);
        d.allow.clear();
        assert_eq!(d, DetectConfig::default());
        assert_eq!(cfg.network, crate::config::NetworkConfig::default());
    }

    #[test]
    fn bad_values_name_the_key() {
        let e = |t: &str| {
            Config::parse(t, std::path::Path::new("t.toml"))
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default()
        };
        assert!(e("[detect.scan]\ntheta1 = 0.9\n").contains("detect.scan.theta0: need 0 < theta1 < theta0 < 1"));
        assert!(e("[detect.spike]\nbucket = \"7m\"\n").contains("detect.spike.bucket"));
        assert!(e("[detect.beacon]\nperiodic_services = [\"ntp\"]\n").contains("\"ntp\" is not PROTO/PORT"));
        assert!(e("[detect.baseline]\nlearning_period = \"60d\"\n").contains("learning_period"));
        assert!(e("[detect.sessions]\nreply_wait = \"10m\"\n").contains("reply_wait"));
        assert!(e("[detect]\nbogus = 1\n").contains("unknown field `bogus`"));
        assert!(e("[detect.beacon]\nwindow = \"0s\"\n").contains("detect.beacon.window: must be between 1h and 7d"));
        assert!(e("[detect.scan]\nwindow = \"0s\"\n").contains("detect.scan.window"));
    }
}
