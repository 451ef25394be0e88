//! Typed metrics: one in-process registry of counters and gauges that every
//! stage updates and that the heartbeat, the page and `/metrics` read
//! directly (a leaf: it imports nothing of the stages).
//!
//! Every metric is a [`Def`] in [`defs`]: a Prometheus-style name
//! `flowwarden_<stage>_<what>_<unit>` (counters end in `_total`), its kind,
//! help text and label names. A stage asks the registry once for a handle
//! ([`Counter`], [`Gauge`]) with its label values and then only touches an
//! atomic. Label sets per metric are bounded ([`MAX_SERIES`]); past the bound,
//! updates go to one series labelled `overflow` and are counted. The store
//! writer keeps a periodic [`Registry::snapshot`] in the state file for the CLI.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

/// Counter (only grows) or gauge (set to the current value).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
        }
    }
}

/// One metric's definition.
#[derive(Debug)]
pub struct Def {
    pub name: &'static str,
    pub kind: Kind,
    pub help: &'static str,
    pub labels: &'static [&'static str],
}

/// Distinct label sets kept per metric.
pub const MAX_SERIES: usize = 4096;

/// One series' value, and what a cumulative source restarted at zero adds to
/// it (see [`Registry::rebase`]).
#[derive(Debug, Default)]
struct Cell {
    value: AtomicU64,
    base: AtomicU64,
}

/// A counter handle (cheap to clone, one atomic add per update).
#[derive(Debug, Clone)]
pub struct Counter(Arc<Cell>);

impl Counter {
    pub fn inc(&self) {
        self.0.value.fetch_add(1, Ordering::Relaxed);
    }
    pub fn add(&self, n: u64) {
        self.0.value.fetch_add(n, Ordering::Relaxed);
    }
    /// Raise to `v` (plus the base of earlier generations) if below: a counter
    /// mirrored from a cumulative source.
    pub fn set_at_least(&self, v: u64) {
        let v = v.saturating_add(self.0.base.load(Ordering::Relaxed));
        self.0.value.fetch_max(v, Ordering::Relaxed);
    }
    pub fn get(&self) -> u64 {
        self.0.value.load(Ordering::Relaxed)
    }
}

/// A gauge handle.
#[derive(Debug, Clone)]
pub struct Gauge(Arc<Cell>);

impl Gauge {
    pub fn set(&self, v: u64) {
        self.0.value.store(v, Ordering::Relaxed);
    }
    pub fn get(&self) -> u64 {
        self.0.value.load(Ordering::Relaxed)
    }
}

/// One value with its labels, as read out of the registry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sample {
    pub name: &'static str,
    pub kind: Kind,
    pub labels: Vec<(&'static str, String)>,
    pub value: u64,
}

impl Sample {
    /// `name{a="x",b="y"}`: the Prometheus series name, also the key in the state file.
    pub fn series(&self) -> String {
        series_name(self.name, &self.labels)
    }
}

/// `name{a="x"}` with label values escaped as Prometheus requires.
pub fn series_name(name: &str, labels: &[(&str, String)]) -> String {
    if labels.is_empty() {
        return name.to_string();
    }
    let mut s = format!("{name}{{");
    for (i, (k, v)) in labels.iter().enumerate() {
        if i > 0 {
            s.push(',');
        }
        let v = v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n");
        let _ = write!(s, "{k}=\"{v}\"");
    }
    s.push('}');
    s
}

#[derive(Debug, Default)]
struct Series {
    by_labels: BTreeMap<Vec<String>, Arc<Cell>>,
}

#[derive(Debug, Default)]
struct Inner {
    metrics: BTreeMap<&'static str, (&'static Def, Series)>,
}

/// The process's metrics.
#[derive(Debug, Default)]
pub struct Registry {
    inner: Mutex<Inner>,
    /// Updates that went to an `overflow` series because a metric had too many label sets.
    overflowed: AtomicU64,
}

impl Registry {
    pub fn new() -> Arc<Registry> {
        Arc::new(Registry::default())
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn cell(&self, def: &'static Def, values: &[&str]) -> Arc<Cell> {
        let mut key: Vec<String> = values.iter().map(|v| v.to_string()).collect();
        key.resize(def.labels.len(), String::new());
        let mut g = self.lock();
        let (_, series) = g.metrics.entry(def.name).or_insert_with(|| (def, Series::default()));
        if let Some(c) = series.by_labels.get(&key) {
            return c.clone();
        }
        if series.by_labels.len() >= MAX_SERIES {
            self.overflowed.fetch_add(1, Ordering::Relaxed);
            key = vec!["overflow".to_string(); def.labels.len()];
        }
        series.by_labels.entry(key).or_default().clone()
    }

    /// The counter `def` with these label values (in `def.labels` order).
    pub fn counter(&self, def: &'static Def, values: &[&str]) -> Counter {
        debug_assert_eq!(def.kind, Kind::Counter, "{} is not a counter", def.name);
        Counter(self.cell(def, values))
    }

    /// The gauge `def` with these label values.
    pub fn gauge(&self, def: &'static Def, values: &[&str]) -> Gauge {
        debug_assert_eq!(def.kind, Kind::Gauge, "{} is not a gauge", def.name);
        Gauge(self.cell(def, values))
    }

    /// Every series now, sorted by name and labels.
    pub fn snapshot(&self) -> Vec<Sample> {
        let g = self.lock();
        let mut out = Vec::new();
        for (name, (def, series)) in &g.metrics {
            for (values, cell) in &series.by_labels {
                out.push(Sample {
                    name,
                    kind: def.kind,
                    labels: def.labels.iter().copied().zip(values.iter().cloned()).collect(),
                    value: cell.value.load(Ordering::Relaxed),
                });
            }
        }
        out
    }

    /// The value of one series (0 if it was never touched).
    pub fn value(&self, def: &'static Def, values: &[&str]) -> u64 {
        let key: Vec<String> = values.iter().map(|v| v.to_string()).collect();
        let g = self.lock();
        g.metrics
            .get(def.name)
            .and_then(|(_, s)| s.by_labels.get(&key))
            .map(|c| c.value.load(Ordering::Relaxed))
            .unwrap_or(0)
    }

    /// The Prometheus text exposition of every series (HELP and TYPE once per metric).
    pub fn prometheus(&self) -> String {
        let g = self.lock();
        let mut s = String::new();
        for (name, (def, series)) in &g.metrics {
            let _ = writeln!(s, "# HELP {name} {}", def.help);
            let _ = writeln!(s, "# TYPE {name} {}", def.kind.as_str());
            for (values, cell) in &series.by_labels {
                let labels: Vec<(&str, String)> = def.labels.iter().copied().zip(values.iter().cloned()).collect();
                let _ = writeln!(s, "{} {}", series_name(name, &labels), cell.value.load(Ordering::Relaxed));
            }
        }
        s
    }

    /// A new generation of the stages starts (a configuration reload): the
    /// cumulative sources of the metrics `restarted` names begin again at zero,
    /// so each such counter's present value becomes the base its mirrored
    /// values add to. Counters never go back, nor stall; metrics whose sources
    /// carry on (or are restored from the state file) are left alone.
    pub fn rebase(&self, restarted: impl Fn(&str) -> bool) {
        let g = self.lock();
        for (name, (def, series)) in &g.metrics {
            if def.kind != Kind::Counter || !restarted(name) {
                continue;
            }
            for cell in series.by_labels.values() {
                cell.base.store(cell.value.load(Ordering::Relaxed), Ordering::Relaxed);
            }
        }
    }

    /// Updates that were folded into `overflow` series.
    pub fn overflowed(&self) -> u64 {
        self.overflowed.load(Ordering::Relaxed)
    }
}

/// Every metric flowwarden exports (the README's table lists the same).
pub mod defs {
    use super::{Def, Kind};

    macro_rules! def {
        ($id:ident, $name:literal, $kind:ident, [$($l:literal),*], $help:literal) => {
            pub static $id: Def = Def { name: $name, kind: Kind::$kind, help: $help, labels: &[$($l),*] };
        };
    }

    def!(
        SNAPSHOT_TIME,
        "flowwarden_snapshot_timestamp_seconds",
        Gauge,
        [],
        "When this snapshot of the metrics was taken (Unix seconds)"
    );
    def!(
        COLLECTOR_DATAGRAMS,
        "flowwarden_collector_datagrams_total",
        Counter,
        [],
        "UDP datagrams received on the collector sockets"
    );
    def!(
        COLLECTOR_DROPPED,
        "flowwarden_collector_dropped_total",
        Counter,
        ["reason"],
        "Datagrams lost before decoding, by reason (decoder_queue, kernel)"
    );
    def!(
        DECODE_DATAGRAMS,
        "flowwarden_decode_datagrams_total",
        Counter,
        ["exporter"],
        "Export datagrams decoded, per exporter"
    );
    def!(
        DECODE_RECORDS,
        "flowwarden_decode_records_total",
        Counter,
        ["exporter"],
        "Flow records decoded, per exporter"
    );
    def!(
        DECODE_MALFORMED,
        "flowwarden_decode_malformed_total",
        Counter,
        ["exporter"],
        "Datagrams that failed to decode fully, per exporter"
    );
    def!(
        DECODE_SEQUENCE_GAPS,
        "flowwarden_decode_sequence_gaps_total",
        Counter,
        ["exporter"],
        "Sequence number discontinuities, per exporter"
    );
    def!(
        DECODE_LOST_RECORDS,
        "flowwarden_decode_lost_records_total",
        Counter,
        ["exporter"],
        "Records an exporter's sequence numbers say were lost"
    );
    def!(
        DECODE_TIME_CLAMPED,
        "flowwarden_decode_time_clamped_total",
        Counter,
        ["exporter"],
        "Flows whose implausible times were clamped to the export time"
    );
    def!(
        DECODE_EXPORT_LAG,
        "flowwarden_decode_export_lag_seconds",
        Gauge,
        ["exporter"],
        "Longest time from a flow's first packet to its export in the last 5-10 min (the exporter's active timeout)"
    );
    def!(
        DECODE_EXPORT_DELAY,
        "flowwarden_decode_export_delay_seconds",
        Gauge,
        ["exporter"],
        "Longest time from a flow's last packet to its export in the last 5-10 min (idle timeout, buffering)"
    );
    def!(
        DECODE_DROPPED,
        "flowwarden_decode_dropped_total",
        Counter,
        ["reason"],
        "Input decoding could not use, by reason (not_netflow, malformed, no_template_expired, non_flow)"
    );
    def!(
        DECODE_TEMPLATES,
        "flowwarden_decode_templates",
        Gauge,
        [],
        "Templates known now, across exporter sessions"
    );
    def!(
        DECODE_UNKNOWN_SENDER,
        "flowwarden_decode_unknown_sender_datagrams_total",
        Counter,
        ["sender", "looks_like"],
        "Datagrams that were not NetFlow/IPFIX, per sending address and what they look like (sflow, netflow_v1, syslog, snmp, empty, other)"
    );
    def!(
        DECODE_UNKNOWN_SENDERS_EVICTED,
        "flowwarden_decode_unknown_senders_evicted_total",
        Counter,
        [],
        "Unknown (sender, kind) entries forgotten to keep their table at 32 (the least recently heard first)"
    );
    def!(
        DECODE_TEMPLATES_EVICTED,
        "flowwarden_decode_templates_evicted_total",
        Counter,
        [],
        "Templates forgotten to stay inside the template cache's bounds"
    );
    def!(
        DECODE_PENDING_SETS,
        "flowwarden_decode_pending_sets",
        Gauge,
        [],
        "Data sets held now until their template arrives"
    );
    def!(
        PIPELINE_DROPPED_FLOWS,
        "flowwarden_pipeline_dropped_flows_total",
        Counter,
        ["queue"],
        "Flows dropped because a stage's queue was full (store, detect)"
    );
    def!(
        STORE_FLOWS_STORED,
        "flowwarden_store_flows_stored_total",
        Counter,
        [],
        "Flows committed to the store"
    );
    def!(
        STORE_FLOWS_EVICTED,
        "flowwarden_store_flows_evicted_total",
        Counter,
        ["reason"],
        "Flows removed by retention (budget: the oldest first; age: the age cap)"
    );
    def!(
        STORE_FLOWS_LOST,
        "flowwarden_store_flows_lost_total",
        Counter,
        [],
        "Flows that could not be stored although they should have been"
    );
    def!(
        STORE_FLOWS_TOO_OLD,
        "flowwarden_store_flows_too_old_total",
        Counter,
        [],
        "Flows refused because they are older than the age cap"
    );
    def!(STORE_FLOWS, "flowwarden_store_flows", Gauge, [], "Flows the store holds now");
    def!(STORE_BYTES, "flowwarden_store_bytes", Gauge, [], "Bytes the store's files occupy");
    def!(
        STORE_BUDGET_BYTES,
        "flowwarden_store_budget_bytes",
        Gauge,
        [],
        "The configured byte budget"
    );
    def!(
        STORE_CAPACITY_BYTES,
        "flowwarden_store_capacity_bytes",
        Gauge,
        [],
        "The budget, or less when the file system cannot hold that much"
    );
    def!(STORE_SEGMENTS, "flowwarden_store_segments", Gauge, [], "Flow segment files");
    def!(
        STORE_SEGMENTS_EVICTED,
        "flowwarden_store_segments_evicted_total",
        Counter,
        [],
        "Segment files deleted by retention"
    );
    def!(
        STORE_EVICTED_BYTES,
        "flowwarden_store_evicted_bytes_total",
        Counter,
        [],
        "Bytes of segment files deleted by retention"
    );
    def!(STORE_COMMITS, "flowwarden_store_commits_total", Counter, [], "Store commits");
    def!(
        STORE_COMMIT_FAILURES,
        "flowwarden_store_commit_failures_total",
        Counter,
        ["file"],
        "Commits that failed and were given up (segment: for another reason than room; rollups; state)"
    );
    def!(
        STORE_REOPENS,
        "flowwarden_store_reopens_total",
        Counter,
        [],
        "Database handles dropped and reopened after a failed commit"
    );
    def!(
        STORE_DISK_FULL,
        "flowwarden_store_disk_full_total",
        Counter,
        [],
        "Growths refused because the data file system was full"
    );
    def!(
        STORE_FILES_DAMAGED,
        "flowwarden_store_files_damaged_total",
        Counter,
        [],
        "Damaged store files moved aside"
    );
    def!(
        STORE_ROLLUP_ROWS_TRIMMED,
        "flowwarden_store_rollup_rows_trimmed_total",
        Counter,
        [],
        "Roll-up rows deleted early to keep within their share"
    );
    def!(
        STORE_ROLLUP_OVERFLOW,
        "flowwarden_store_rollup_overflow_total",
        Counter,
        [],
        "Flows not counted in an hour's top lists because its key map was full"
    );
    def!(
        STORE_STATE_ROWS_DROPPED,
        "flowwarden_store_state_rows_dropped_total",
        Counter,
        [],
        "State rows dropped because state commits kept failing"
    );
    def!(
        DETECT_FLOWS,
        "flowwarden_detect_flows_total",
        Counter,
        [],
        "Flows the detectors processed"
    );
    def!(
        DETECT_CLOCK_FLOWS,
        "flowwarden_detect_clock_flows_total",
        Counter,
        ["kind"],
        "Flows late for their minute (late) or ahead of the event clock (ahead)"
    );
    def!(
        DETECT_DUPLICATES,
        "flowwarden_detect_duplicates_total",
        Counter,
        [],
        "Copies of a flow from a second exporter, counted once"
    );
    def!(
        DETECT_REPLIES_FIRST,
        "flowwarden_detect_replies_first_total",
        Counter,
        [],
        "Replies seen before their request (initiator decided by ports)"
    );
    def!(
        DETECT_EVICTED,
        "flowwarden_detect_evicted_total",
        Counter,
        ["table"],
        "Entries evicted from a full detector table (sessions, baseline_series, beacon_pairs, scan_sources, open_alerts, alerts)"
    );
    def!(
        DETECT_OVERFLOW,
        "flowwarden_detect_overflow_total",
        Counter,
        ["table"],
        "Entries a full table could not take (scan_targets, spike_pairs)"
    );
    def!(
        DETECT_SCAN_TARGETS_FORGOTTEN,
        "flowwarden_detect_scan_targets_forgotten_total",
        Counter,
        [],
        "Answered scan targets forgotten to bound memory"
    );
    def!(
        DETECT_BEACON_DOWN_WEIGHTED,
        "flowwarden_detect_beacon_down_weighted_total",
        Counter,
        [],
        "Beacon scorings down-weighted (popular destination or periodic service)"
    );
    def!(
        DETECT_SPIKE_MERGED,
        "flowwarden_detect_spike_merged_total",
        Counter,
        [],
        "Spike detections merged into a wider scope"
    );
    def!(
        DETECT_SILENT_LEARNING,
        "flowwarden_detect_silent_learning_total",
        Counter,
        ["detector"],
        "Detections withheld while a baseline was still learning"
    );
    def!(
        DETECT_ALERTS,
        "flowwarden_detect_alerts_total",
        Counter,
        ["state"],
        "Alerts raised (new) and updated (updated)"
    );
    def!(
        DETECT_SUPPRESSED,
        "flowwarden_detect_suppressed_total",
        Counter,
        [],
        "Detections folded into an open alert"
    );
    def!(
        DETECT_ALLOWLISTED,
        "flowwarden_detect_allowlisted_total",
        Counter,
        ["kind"],
        "Detections dropped by the allow-list, by kind"
    );
    def!(
        DETECT_ALLOW_RULE,
        "flowwarden_detect_allow_rule_total",
        Counter,
        ["rule"],
        "Detections dropped by each allow-list rule"
    );
    def!(
        FORWARD_DROPPED,
        "flowwarden_forward_dropped_total",
        Counter,
        ["destination"],
        "Spool entries deleted unsent because the spool was full"
    );
    def!(
        FORWARD_DELIVERED,
        "flowwarden_forward_delivered_total",
        Counter,
        ["destination"],
        "Events delivered to a SIEM destination (this process)"
    );
    def!(
        FORWARD_QUEUE,
        "flowwarden_forward_queue_entries",
        Gauge,
        ["destination"],
        "Entries waiting in a destination's spool"
    );
    def!(
        WEB_CONNECTIONS_REFUSED,
        "flowwarden_web_connections_refused_total",
        Counter,
        ["reason"],
        "Connections to the page closed before a request (limit, handshake, timeout)"
    );
    def!(
        WEB_REQUESTS,
        "flowwarden_web_requests_total",
        Counter,
        ["status"],
        "Requests the page answered, by status class (2xx, 3xx, 4xx, 5xx)"
    );
    def!(
        WEB_LOGINS,
        "flowwarden_web_logins_total",
        Counter,
        ["result"],
        "Login attempts on the page (ok, failed, throttled, setup)"
    );
    def!(WEB_SESSIONS, "flowwarden_web_sessions", Gauge, [], "Sessions open on the page");
    def!(
        WEB_TABLE_EVICTED,
        "flowwarden_web_table_evicted_total",
        Counter,
        ["table"],
        "Entries dropped from the page's bounded tables because they were full (sessions, login failures)"
    );
}

/// Every definition, for documentation and tests.
pub fn all() -> Vec<&'static Def> {
    use defs::*;
    vec![
        &SNAPSHOT_TIME,
        &COLLECTOR_DATAGRAMS,
        &COLLECTOR_DROPPED,
        &DECODE_DATAGRAMS,
        &DECODE_RECORDS,
        &DECODE_MALFORMED,
        &DECODE_SEQUENCE_GAPS,
        &DECODE_LOST_RECORDS,
        &DECODE_TIME_CLAMPED,
        &DECODE_EXPORT_LAG,
        &DECODE_EXPORT_DELAY,
        &DECODE_DROPPED,
        &DECODE_UNKNOWN_SENDER,
        &DECODE_UNKNOWN_SENDERS_EVICTED,
        &DECODE_TEMPLATES,
        &DECODE_TEMPLATES_EVICTED,
        &DECODE_PENDING_SETS,
        &PIPELINE_DROPPED_FLOWS,
        &STORE_FLOWS_STORED,
        &STORE_FLOWS_EVICTED,
        &STORE_FLOWS_LOST,
        &STORE_FLOWS_TOO_OLD,
        &STORE_FLOWS,
        &STORE_BYTES,
        &STORE_BUDGET_BYTES,
        &STORE_CAPACITY_BYTES,
        &STORE_SEGMENTS,
        &STORE_SEGMENTS_EVICTED,
        &STORE_EVICTED_BYTES,
        &STORE_COMMITS,
        &STORE_COMMIT_FAILURES,
        &STORE_REOPENS,
        &STORE_DISK_FULL,
        &STORE_FILES_DAMAGED,
        &STORE_ROLLUP_ROWS_TRIMMED,
        &STORE_ROLLUP_OVERFLOW,
        &STORE_STATE_ROWS_DROPPED,
        &DETECT_FLOWS,
        &DETECT_CLOCK_FLOWS,
        &DETECT_DUPLICATES,
        &DETECT_REPLIES_FIRST,
        &DETECT_EVICTED,
        &DETECT_OVERFLOW,
        &DETECT_SCAN_TARGETS_FORGOTTEN,
        &DETECT_BEACON_DOWN_WEIGHTED,
        &DETECT_SPIKE_MERGED,
        &DETECT_SILENT_LEARNING,
        &DETECT_ALERTS,
        &DETECT_SUPPRESSED,
        &DETECT_ALLOWLISTED,
        &DETECT_ALLOW_RULE,
        &FORWARD_DROPPED,
        &FORWARD_DELIVERED,
        &FORWARD_QUEUE,
        &WEB_CONNECTIONS_REFUSED,
        &WEB_REQUESTS,
        &WEB_LOGINS,
        &WEB_SESSIONS,
        &WEB_TABLE_EVICTED,
    ]
}

/// The definition of a metric by name.
pub fn def(name: &str) -> Option<&'static Def> {
    all().into_iter().find(|d| d.name == name)
}

/// The metric name of a series name (`name{labels}` or `name`).
pub fn metric_of(series: &str) -> &str {
    series.split('{').next().unwrap_or(series)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handles_share_their_series() {
        let r = Registry::new();
        let a = r.counter(&defs::COLLECTOR_DROPPED, &["kernel"]);
        let b = r.counter(&defs::COLLECTOR_DROPPED, &["kernel"]);
        a.add(3);
        b.inc();
        r.counter(&defs::COLLECTOR_DROPPED, &["decoder_queue"]).add(2);
        r.gauge(&defs::STORE_BYTES, &[]).set(1024);
        assert_eq!(r.value(&defs::COLLECTOR_DROPPED, &["kernel"]), 4);
        let snap = r.snapshot();
        assert_eq!(snap.len(), 3);
        assert_eq!(snap[0].series(), "flowwarden_collector_dropped_total{reason=\"decoder_queue\"}");
        let text = r.prometheus();
        assert!(text.contains("# TYPE flowwarden_collector_dropped_total counter\n"), "{text}");
        assert!(text.contains("flowwarden_collector_dropped_total{reason=\"kernel\"} 4\n"), "{text}");
        assert!(
            text.contains("# TYPE flowwarden_store_bytes gauge\nflowwarden_store_bytes 1024\n"),
            "{text}"
        );
    }

    #[test]
    fn a_reload_neither_rewinds_nor_stalls_mirrored_counters() {
        let r = Registry::new();
        let dropped = r.counter(&defs::PIPELINE_DROPPED_FLOWS, &["store"]);
        let records = r.counter(&defs::DECODE_RECORDS, &["192.0.2.1:2055"]);
        dropped.set_at_least(40);
        records.set_at_least(1000);
        // A reload: the pipeline's drops restart at 0, the exporter's records
        // are restored from the state file and carry on.
        r.rebase(|name| name == defs::PIPELINE_DROPPED_FLOWS.name);
        dropped.set_at_least(0);
        assert_eq!(dropped.get(), 40);
        dropped.set_at_least(5);
        assert_eq!(dropped.get(), 45, "new drops count at once");
        records.set_at_least(1000);
        records.set_at_least(1010);
        assert_eq!(records.get(), 1010, "a carried source is not counted twice");
    }

    #[test]
    fn label_sets_are_bounded() {
        let r = Registry::new();
        for i in 0..MAX_SERIES + 10 {
            r.counter(&defs::DECODE_RECORDS, &[&format!("192.0.2.{i}:2055")]).inc();
        }
        assert_eq!(r.snapshot().len(), MAX_SERIES + 1);
        assert_eq!(r.value(&defs::DECODE_RECORDS, &["overflow"]), 10);
        assert_eq!(r.overflowed(), 10);
    }

    #[test]
    fn names_follow_the_convention() {
        for d in all() {
            assert!(d.name.starts_with("flowwarden_"), "{}", d.name);
            assert_eq!(d.kind == Kind::Counter, d.name.ends_with("_total"), "{}", d.name);
            assert!(d.name.chars().all(|c| c.is_ascii_lowercase() || c == '_'), "{}", d.name);
        }
    }

    #[test]
    fn the_readme_lists_every_metric() {
        let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md")).unwrap_or_default();
        for d in all() {
            assert!(
                readme.contains(&format!("| `{}` | {} |", d.name, d.kind.as_str())),
                "README lacks {}",
                d.name
            );
        }
    }

    #[test]
    fn escaping() {
        assert_eq!(series_name("m", &[("a", "x\"y\\z".into())]), "m{a=\"x\\\"y\\\\z\"}");
    }
}
