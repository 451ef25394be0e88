//! Detection: flows in, few explainable alerts out (stage 4 of the data flow).
//!
//! The [`Engine`] runs on event time: its clock is the largest flow end seen
//! (a flow further ahead than `max_clock_jump` is clamped and counted), and a
//! minute closes once the clock is `grace` past it. Every record goes through
//! session stitching / de-duplication ([`sessions`]), then feeds the hourly
//! baselines ([`baseline`]), exfiltration ([`exfil`]), beaconing ([`beacon`]),
//! scan ([`scan`]) and spike ([`spike`]) detectors; detections pass the
//! allow-list and suppression ([`suppress`]) and come out as alerts for the
//! state database. Minute ticks decide reply timeouts and check exfiltration;
//! spike buckets close every `spike.bucket`; beacons are scored every 10
//! minutes; hours close into the baselines, which are persisted then. Because
//! nothing reads the wall clock, `ingest` of a week gives the same alerts as
//! the same week live.

pub mod baseline;
pub mod beacon;
pub mod exfil;
pub mod rows;
pub mod scan;
pub mod sessions;
pub mod settings;
pub mod spike;
pub mod stats;
pub mod suppress;

use crate::alert::{Alert, Kind};
use crate::flow::{Direction, FlowRecord};
use crate::net::IpNet;
use baseline::{Baselines, HOUR_MS, Metric, SeriesKey};
use serde::{Deserialize, Serialize};
use settings::DetectConfig;
use std::net::IpAddr;
use suppress::{Candidate, Suppressor};

const MINUTE_MS: u64 = 60_000;
/// Beacon scoring interval.
const BEACON_EVERY_MS: u64 = 600_000;
/// Consecutive flows ahead of the clock after which the clock follows them.
const JUMP_AFTER: u64 = 10_000;

/// An alert with its suppression group, as stored in the state database.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoredAlert {
    pub group: String,
    pub alert: Alert,
}

/// What the engine hands to the store writer.
#[derive(Debug, Default)]
pub struct DetectUpdate {
    pub alerts: Vec<StoredAlert>,
    /// State rows (key, bytes) to write.
    pub state: Vec<(String, Vec<u8>)>,
}

impl DetectUpdate {
    pub fn is_empty(&self) -> bool {
        self.alerts.is_empty() && self.state.is_empty()
    }
}

/// What the engine restores at start.
#[derive(Debug, Default)]
pub struct DetectLoaded {
    pub state: Vec<(String, Vec<u8>)>,
    pub alerts: Vec<StoredAlert>,
}

/// Clock and tick positions, persisted so a later run continues.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq)]
struct Meta {
    clock: u64,
    next_minute: u64,
    last_beacon_eval: u64,
}

/// Learning / activity state of one detector (for `flowwarden detectors`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct DetectorStatus {
    pub name: String,
    pub state: DetectorState,
    pub detail: String,
}

/// Whether a detector raises alerts now (serialized lowercase: "active", "learning", "disabled").
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum DetectorState {
    /// Raising alerts.
    Active,
    /// Still building the baseline it needs; no alerts yet.
    #[default]
    Learning,
    /// Turned off in the configuration.
    Disabled,
}

impl DetectorState {
    pub fn as_str(self) -> &'static str {
        match self {
            DetectorState::Active => "active",
            DetectorState::Learning => "learning",
            DetectorState::Disabled => "disabled",
        }
    }
}

/// Everything `flowwarden detectors` shows.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct EngineStatus {
    pub clock: String,
    pub detectors: Vec<DetectorStatus>,
    pub tracked: Vec<(String, u64)>,
}

#[derive(Debug, Default)]
struct Counters {
    flows: u64,
    late: u64,
    future: u64,
    alerts_new: u64,
    alerts_updated: u64,
}

pub struct Engine {
    cfg: DetectConfig,
    internal: Vec<IpNet>,
    /// `[[network.name]]`: names beside the addresses of the alerts that leave.
    names: Vec<crate::net::NamedNet>,
    learning_hours: u64,
    capacity_hours: usize,
    meta: Meta,
    future_run: u64,
    sessions: sessions::Sessions,
    pub baselines: Baselines,
    exfil: exfil::Exfil,
    beacon: beacon::Beacon,
    scan: scan::Scan,
    spike: spike::Spike,
    suppress: Suppressor,
    counters: Counters,
    out_alerts: Vec<StoredAlert>,
    out_state: Vec<(String, Vec<u8>)>,
}

impl Engine {
    /// An engine with its settings, the site's internal networks and what was persisted.
    pub fn new(d: DetectConfig, internal: Vec<IpNet>, loaded: DetectLoaded) -> Engine {
        let mut e = Engine {
            internal,
            learning_hours: d.baseline.learning_period.ms().div_ceil(HOUR_MS),
            capacity_hours: d.baseline.history_days as usize * 24,
            meta: Meta::default(),
            future_run: 0,
            sessions: sessions::Sessions::new(d.sessions.clone()),
            baselines: Baselines::default(),
            exfil: exfil::Exfil::new(d.exfil.clone()),
            beacon: beacon::Beacon::new(d.beacon.clone()),
            scan: scan::Scan::new(d.scan.clone()),
            spike: spike::Spike::new(d.spike.clone()),
            suppress: Suppressor::new(d.suppress_window.ms(), d.beacon.window.ms(), d.allow.clone()),
            counters: Counters::default(),
            out_alerts: Vec::new(),
            names: Vec::new(),
            out_state: Vec::new(),
            cfg: d,
        };
        for (k, v) in &loaded.state {
            if k.starts_with("baseline/") {
                e.baselines.restore(v);
            } else if k == "spike/forecasts" {
                e.spike.restore(v);
            } else if k == "meta"
                && let Ok(m) = postcard::from_bytes::<Meta>(v)
            {
                e.meta = m;
            }
        }
        e.suppress.restore(loaded.alerts.into_iter().map(|s| (s.group, s.alert)).collect());
        e
    }

    /// New settings while running (a configuration reload): the learned
    /// baselines, open alerts, counters and every detector whose settings did
    /// not change keep their state; a detector whose settings changed starts
    /// its windows afresh (its old windows were measured by other rules).
    pub fn reconfigure(&mut self, d: DetectConfig, internal: Vec<IpNet>) {
        if d == self.cfg && internal == self.internal {
            return;
        }
        self.internal = internal;
        self.learning_hours = d.baseline.learning_period.ms().div_ceil(HOUR_MS);
        self.capacity_hours = d.baseline.history_days as usize * 24;
        if d.sessions != self.cfg.sessions {
            self.sessions = sessions::Sessions::new(d.sessions.clone());
        }
        if d.exfil != self.cfg.exfil {
            self.exfil = exfil::Exfil::new(d.exfil.clone());
        }
        if d.beacon != self.cfg.beacon {
            self.beacon = beacon::Beacon::new(d.beacon.clone());
        }
        if d.scan != self.cfg.scan {
            self.scan = scan::Scan::new(d.scan.clone());
        }
        if d.spike != self.cfg.spike {
            self.spike = spike::Spike::new(d.spike.clone());
        }
        self.suppress
            .reconfigure(d.suppress_window.ms(), d.beacon.window.ms(), d.allow.clone());
        self.cfg = d;
    }

    fn is_internal(&self, ip: &IpAddr) -> bool {
        self.internal.iter().any(|n| n.contains(ip))
    }

    /// Event time now.
    pub fn clock(&self) -> u64 {
        self.meta.clock
    }

    /// Feed a batch (any order; processed by start time).
    pub fn process(&mut self, flows: &[FlowRecord]) {
        if !self.cfg.enabled {
            return;
        }
        let mut order: Vec<&FlowRecord> = flows.iter().collect();
        order.sort_by_key(|f| f.start_ms);
        for f in order {
            self.flow(f);
        }
    }

    fn flow(&mut self, f: &FlowRecord) {
        self.counters.flows += 1;
        let end = f.end_ms.max(f.start_ms);
        if self.meta.clock == 0 {
            self.meta.clock = end;
            self.meta.next_minute = (end / MINUTE_MS + 1) * MINUTE_MS;
            self.meta.last_beacon_eval = end / BEACON_EVERY_MS * BEACON_EVERY_MS;
        } else if end > self.meta.clock + self.cfg.max_clock_jump.ms() {
            self.counters.future += 1;
            self.future_run += 1;
            if self.future_run >= JUMP_AFTER {
                // The exporters really moved on (or a later capture): follow them.
                self.jump_to(end);
            }
        } else {
            self.future_run = 0;
            self.meta.clock = self.meta.clock.max(end);
        }
        self.advance(self.meta.clock.saturating_sub(self.cfg.grace.ms()));
        if end + MINUTE_MS < self.meta.next_minute {
            self.counters.late += 1;
        }
        let now = self.meta.clock;
        let seen = self.sessions.observe(f, now);
        self.drain_outcomes();
        if seen.duplicate {
            return;
        }
        let hour = (self.meta.next_minute - MINUTE_MS) / HOUR_MS;
        let caps = (self.cfg.baseline.max_hosts, self.cfg.baseline.max_interfaces);
        let conn = seen.initiator && seen.new_connection;
        let bytes = f.bytes;
        match f.direction {
            Direction::Outbound => {
                let host = f.src;
                self.baselines.add(
                    SeriesKey::Host(host),
                    hour,
                    |c| {
                        c.bytes_out += bytes;
                        c.flows += u64::from(conn);
                    },
                    caps,
                );
                self.baselines.add(
                    SeriesKey::Site,
                    hour,
                    |c| {
                        c.bytes_out += bytes;
                        c.flows += u64::from(conn);
                    },
                    caps,
                );
                self.baselines.add_peer(host, f.dst);
                let cap = self.cfg.baseline.peers_per_host;
                let (new_dst, new_port) = match self.baselines.series.get_mut(&SeriesKey::Host(host)) {
                    Some(s) => {
                        let learned = s.history.learned(hour, self.learning_hours);
                        let nd = s.peers.touch(f.dst, hour, cap);
                        let np = seen.initiator && s.peers.touch_port(f.dst_port, hour, 64);
                        (nd && learned, np && learned)
                    }
                    None => (false, false),
                };
                // Destinations are tracked once a host's hour nears the floor (a quarter
                // of it): cheap for the many hosts that never upload much.
                let host_bytes = self.baselines.open_counts(&SeriesKey::Host(host)).map(|c| c.bytes_out).unwrap_or(0);
                if host_bytes >= self.cfg.exfil.min_excess.resolve(0) / 4 {
                    self.exfil
                        .outbound(host, f.dst, f.dst_port, bytes, f.start_ms, end, new_dst, new_port);
                }
                if conn {
                    self.beacon.connection(
                        beacon::PairKey {
                            src: host,
                            dst: f.dst,
                            port: if matches!(f.proto, 6 | 17 | 132) { f.dst_port } else { 0 },
                            proto: f.proto,
                        },
                        f.start_ms,
                        bytes,
                    );
                }
                self.spike.add(SeriesKey::Host(host), spike::Dir::Out, bytes);
                self.spike.add(SeriesKey::Site, spike::Dir::Out, bytes);
                self.spike.add_pair(host, f.dst, spike::Dir::Out, bytes);
            }
            Direction::Inbound => {
                let host = f.dst;
                self.baselines.add(SeriesKey::Host(host), hour, |c| c.bytes_in += bytes, caps);
                self.baselines.add(SeriesKey::Site, hour, |c| c.bytes_in += bytes, caps);
                self.spike.add(SeriesKey::Host(host), spike::Dir::In, bytes);
                self.spike.add(SeriesKey::Site, spike::Dir::In, bytes);
                self.spike.add_pair(f.src, host, spike::Dir::In, bytes);
            }
            _ => {}
        }
        for (ifindex, dir) in [(f.in_if, spike::Dir::In), (f.out_if, spike::Dir::Out)] {
            if ifindex != 0 {
                let key = SeriesKey::Interface(f.exporter, ifindex);
                let ok = self.baselines.add(
                    key,
                    hour,
                    |c| match dir {
                        spike::Dir::In => c.bytes_in += bytes,
                        spike::Dir::Out => c.bytes_out += bytes,
                    },
                    caps,
                );
                if ok {
                    self.spike.add(key, dir, bytes);
                }
            }
        }
    }

    fn drain_outcomes(&mut self) {
        let outcomes = std::mem::take(&mut self.sessions.outcomes);
        for o in outcomes {
            let si = self.is_internal(&o.src);
            let di = self.is_internal(&o.dst);
            if let Some(c) = self.scan.outcome(o.src, o.dst, o.dst_port, o.proto, o.success, o.at_ms, si, di) {
                self.submit(c);
            }
        }
    }

    fn submit(&mut self, mut c: Candidate) {
        // Exfiltration to a host this source beacons to goes over the C2 channel.
        if c.kind == Kind::Exfiltration
            && let Some(dst) = c.dst
            && self.suppress.open_to(Kind::Beaconing, dst)
        {
            c.attack = vec!["T1041".into()];
            c.evidence.insert("c2_channel".into(), serde_json::json!(true));
        }
        c.evidence
            .insert("detected_at".into(), serde_json::json!(crate::timefmt::rfc3339_ms(self.meta.clock)));
        if let Some((group, mut alert)) = self.suppress.submit(c) {
            let names = &self.names;
            alert.annotate(
                |ip| crate::net::name_of(names, ip).map(String::from),
                |ip| crate::geo::global().and_then(|g| g.country_str(*ip)),
            );
            if alert.count == 1 {
                self.counters.alerts_new += 1;
            } else {
                self.counters.alerts_updated += 1;
            }
            self.out_alerts.push(StoredAlert { group, alert });
        }
    }

    fn jump_to(&mut self, end: u64) {
        self.future_run = 0;
        // Close what is open, then continue from the new time.
        self.advance(self.meta.next_minute + HOUR_MS);
        self.meta.clock = end;
        let m = (end / MINUTE_MS) * MINUTE_MS;
        if m > self.meta.next_minute {
            self.meta.next_minute = m;
            self.meta.last_beacon_eval = m / BEACON_EVERY_MS * BEACON_EVERY_MS;
        }
    }

    /// Run every tick up to `until`.
    fn advance(&mut self, until: u64) {
        // A long silence (or a replay gap): skip empty minutes, keep hour closes.
        if until > self.meta.next_minute + 2 * HOUR_MS {
            self.tick(self.meta.next_minute, true);
            let target = until / MINUTE_MS * MINUTE_MS;
            self.meta.next_minute = target.max(self.meta.next_minute + MINUTE_MS);
        }
        while self.meta.next_minute <= until {
            let m = self.meta.next_minute;
            self.tick(m, false);
            self.meta.next_minute += MINUTE_MS;
        }
    }

    /// The minute ending at `m` closed (`force_hour`: close the open hour too).
    fn tick(&mut self, m: u64, force_hour: bool) {
        self.sessions.expire(m);
        self.drain_outcomes();
        let hour = (m - MINUTE_MS) / HOUR_MS;
        self.check_exfil(hour);
        let bucket = self.spike.bucket_ms();
        if m.is_multiple_of(bucket) {
            let ctx = spike::SpikeContext {
                baselines: &self.baselines,
                learning_hours: self.learning_hours,
                min_week: self.cfg.baseline.min_week_samples,
            };
            let suppress = &self.suppress;
            let found = self
                .spike
                .close_bucket(m - bucket, &ctx, |h| suppress.open_for(Kind::Exfiltration, h, m).is_some());
            for c in found {
                self.submit(c);
            }
        }
        if m >= self.meta.last_beacon_eval + BEACON_EVERY_MS {
            self.meta.last_beacon_eval = m;
            for c in self.beacon.evaluate(m) {
                self.submit(c);
            }
            for c in self.scan.refresh(m) {
                self.submit(c);
            }
        }
        if m.is_multiple_of(HOUR_MS) || force_hour {
            self.close_hour(hour, m);
        }
    }

    fn check_exfil(&mut self, hour: u64) {
        let off_hours = self.off_hours(hour);
        let ctx = exfil::HourContext {
            baselines: &self.baselines,
            hour,
            learning_hours: self.learning_hours,
            min_week: self.cfg.baseline.min_week_samples,
            off_hours,
        };
        for c in self.exfil.check(&ctx) {
            self.submit(c);
        }
    }

    fn off_hours(&self, hour: u64) -> bool {
        let Some(site) = self.baselines.series.get(&SeriesKey::Site) else {
            return false;
        };
        if !site.history.learned(hour, self.learning_hours) {
            return false;
        }
        // Distinct external peers: background chatter (NTP, update checks) keeps
        // connection counts up at night, but people reach many more hosts by day.
        let busiest = site.history.busiest_hour_median(Metric::Peers, hour);
        let now = site
            .history
            .expected(hour, Metric::Peers, usize::MAX)
            .map(|e| e.median)
            .unwrap_or(0.0);
        busiest > 0.0 && now < self.cfg.exfil.off_hours_share * busiest
    }

    fn close_hour(&mut self, hour: u64, now: u64) {
        self.baselines.close_hour(hour, self.capacity_hours);
        self.exfil.close_hour();
        self.suppress.expire(now);
        self.scan.expire(now);
        self.persist();
    }

    /// Publish the learning state now (the detector thread calls this every
    /// few seconds while flows arrive, so `detectors` shows a live box's state
    /// without waiting for an hour to close).
    pub fn publish_status(&mut self) {
        if self.meta.clock == 0 {
            return;
        }
        if let Ok(b) = serde_json::to_vec(&self.status()) {
            self.out_state.push(("status".into(), b));
        }
    }

    fn persist(&mut self) {
        self.out_state.extend(self.baselines.take_dirty());
        if let Ok(b) = postcard::to_stdvec(&self.meta) {
            self.out_state.push(("meta".into(), b));
        }
        if let Some(b) = self.spike.save() {
            self.out_state.push(("spike/forecasts".into(), b));
        }
        if let Ok(b) = serde_json::to_vec(&self.status()) {
            self.out_state.push(("status".into(), b));
        }
    }

    /// End of input (ingest finished, or shutdown): decide what can be
    /// decided at the current clock, score beacons, close the open hour
    /// (a later run adds to it) and persist.
    pub fn finish(&mut self) {
        if !self.cfg.enabled || self.meta.clock == 0 {
            return;
        }
        let clock = self.meta.clock;
        self.advance(clock.saturating_sub(self.cfg.grace.ms()));
        // No more records are coming: first contacts still waiting for a reply have none.
        self.sessions.expire(clock + self.cfg.sessions.reply_wait.ms());
        self.drain_outcomes();
        let hour = (self.meta.next_minute - MINUTE_MS) / HOUR_MS;
        self.check_exfil(hour);
        for c in self.beacon.evaluate(clock) {
            self.submit(c);
        }
        for c in self.scan.refresh(clock + self.cfg.scan.window.ms()) {
            self.submit(c);
        }
        self.close_hour(hour, clock);
    }

    /// Take what should be written (alerts, state rows, counters).
    /// Whether alerts or state rows are waiting.
    pub fn has_update(&self) -> bool {
        !self.out_alerts.is_empty() || !self.out_state.is_empty()
    }

    /// The names put beside alert addresses (set at start and every reload).
    pub fn set_names(&mut self, names: Vec<crate::net::NamedNet>) {
        self.names = names;
    }

    pub fn take_update(&mut self) -> DetectUpdate {
        DetectUpdate {
            alerts: std::mem::take(&mut self.out_alerts),
            state: std::mem::take(&mut self.out_state),
        }
    }

    /// Publish the detectors' counters into the metrics registry.
    pub fn publish_metrics(&self, r: &crate::metrics::Registry) {
        use crate::metrics::defs::*;
        let c = &self.counters;
        let s = &self.suppress.counters;
        let set = |def: &'static crate::metrics::Def, labels: &[&str], v: u64| r.counter(def, labels).set_at_least(v);
        set(&DETECT_FLOWS, &[], c.flows);
        set(&DETECT_CLOCK_FLOWS, &["late"], c.late);
        set(&DETECT_CLOCK_FLOWS, &["ahead"], c.future);
        set(&DETECT_DUPLICATES, &[], self.sessions.counters.duplicates);
        set(&DETECT_REPLIES_FIRST, &[], self.sessions.counters.replies_first);
        set(&DETECT_EVICTED, &["sessions"], self.sessions.counters.evicted);
        set(&DETECT_EVICTED, &["baseline_series"], self.baselines.evicted);
        set(&DETECT_EVICTED, &["beacon_pairs"], self.beacon.evicted_pairs);
        set(&DETECT_EVICTED, &["scan_sources"], self.scan.evicted);
        set(&DETECT_EVICTED, &["open_alerts"], s.evicted);
        set(&DETECT_OVERFLOW, &["scan_targets"], self.scan.target_overflow);
        set(&DETECT_OVERFLOW, &["spike_pairs"], self.spike.pair_overflow);
        set(&DETECT_SCAN_TARGETS_FORGOTTEN, &[], self.scan.targets_forgotten);
        set(&DETECT_BEACON_DOWN_WEIGHTED, &[], self.beacon.down_weighted);
        set(&DETECT_SPIKE_MERGED, &[], self.spike.merged);
        set(&DETECT_SILENT_LEARNING, &["exfiltration"], self.exfil.silent_learning);
        set(&DETECT_SILENT_LEARNING, &["spike"], self.spike.silent_learning);
        set(&DETECT_ALERTS, &["new"], c.alerts_new);
        set(&DETECT_ALERTS, &["updated"], c.alerts_updated);
        set(&DETECT_SUPPRESSED, &[], s.folded);
        for (i, k) in Kind::ALL.iter().enumerate() {
            set(&DETECT_ALLOWLISTED, &[k.as_str()], s.allowed[i]);
        }
        for (name, n) in &s.per_rule {
            set(&DETECT_ALLOW_RULE, &[name], *n);
        }
    }

    /// Learning state per detector.
    pub fn status(&self) -> EngineStatus {
        let hour = self.meta.clock / HOUR_MS;
        let hosts: Vec<&baseline::SeriesState> = self
            .baselines
            .series
            .iter()
            .filter(|(k, _)| matches!(k, SeriesKey::Host(_)))
            .map(|(_, s)| s)
            .collect();
        let learned_hosts = hosts.iter().filter(|s| s.history.learned(hour, self.learning_hours)).count();
        let site_hours = self
            .baselines
            .series
            .get(&SeriesKey::Site)
            .map(|s| hour.saturating_sub(s.history.first_hour))
            .unwrap_or(0);
        let learning = format!(
            "site history {site_hours} h of {} h; {learned_hosts} of {} hosts have a baseline",
            self.learning_hours,
            hosts.len()
        );
        let baseline_state = |enabled: bool| {
            if !enabled {
                DetectorState::Disabled
            } else if site_hours >= self.learning_hours {
                DetectorState::Active
            } else {
                DetectorState::Learning
            }
        };
        let on = |enabled: bool| if enabled { DetectorState::Active } else { DetectorState::Disabled };
        EngineStatus {
            clock: crate::timefmt::rfc3339_ms(self.meta.clock),
            detectors: vec![
                DetectorStatus {
                    name: "exfiltration".into(),
                    state: baseline_state(self.cfg.exfil.enabled),
                    detail: learning.clone(),
                },
                DetectorStatus {
                    name: "spike".into(),
                    state: baseline_state(self.cfg.spike.enabled),
                    detail: learning,
                },
                DetectorStatus {
                    name: "beaconing".into(),
                    state: on(self.cfg.beacon.enabled),
                    detail: format!("{} pairs tracked (no baseline needed)", self.beacon.tracked()),
                },
                DetectorStatus {
                    name: "scan".into(),
                    state: on(self.cfg.scan.enabled),
                    detail: format!("{} sources tracked (no baseline needed)", self.scan.tracked()),
                },
            ],
            tracked: vec![
                ("sessions".into(), self.sessions.len() as u64),
                ("baseline_series".into(), self.baselines.series.len() as u64),
                ("beacon_pairs".into(), self.beacon.tracked() as u64),
                ("scan_sources".into(), self.scan.tracked() as u64),
            ],
        }
    }
}
