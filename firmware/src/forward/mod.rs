//! SIEM forwarding (stage 5 of the data flow): alerts → durable spool →
//! RFC 5424 syslog (CEF, LEEF or ECS JSON) over TLS, TCP or UDP.
//!
//! The store writer puts every new or updated alert into each destination's
//! spool in the transaction that stores it ([`spool`]); `run` starts one
//! [`sender`] per `[[forward]]` destination that sends the spool in order,
//! confirms, and lets the writer delete what was delivered. Messages:
//! [`syslog`] (header, framing), [`cef`], [`leef`], [`ecs`]; connections:
//! [`transport`], [`tls`]; state for `forward-status`: [`status`].

pub mod cef;
pub mod ecs;
pub mod error;
pub mod event;
pub mod leef;
pub mod sender;
pub mod settings;
pub mod spool;
pub mod status;
pub mod syslog;
pub mod tls;
pub mod transport;

use crate::store::DataDir;
use std::sync::Arc;

/// Metrics a heartbeat carries (every series of each), read from the registry.
const HEARTBEAT_METRICS: &[&str] = &[
    "flowwarden_store_flows_stored_total",
    "flowwarden_store_flows_lost_total",
    "flowwarden_store_bytes",
    "flowwarden_store_budget_bytes",
    "flowwarden_detect_alerts_total",
    "flowwarden_pipeline_dropped_flows_total",
    "flowwarden_collector_datagrams_total",
    "flowwarden_collector_dropped_total",
    "flowwarden_forward_dropped_total",
];

/// Heartbeat counters: the appliance's metrics, straight from the registry.
pub fn registry_counters(metrics: Arc<crate::metrics::Registry>) -> sender::CounterSource {
    Arc::new(move || {
        metrics
            .snapshot()
            .into_iter()
            .filter(|s| HEARTBEAT_METRICS.contains(&s.name))
            .map(|s| (s.series(), s.value))
            .collect()
    })
}

/// Start a sender task per destination on the current tokio runtime.
/// Destinations whose TLS material cannot be loaded are reported and skipped
/// (their spools keep filling, capped).
pub fn spawn_all(
    list: &[settings::ForwardConfig],
    dir: &DataDir,
    shared: Arc<spool::ForwardShared>,
    metrics: Arc<crate::metrics::Registry>,
    stop: tokio::sync::watch::Receiver<bool>,
) -> Vec<tokio::task::JoinHandle<()>> {
    let who = Arc::new(event::Sender::local());
    let mut out = Vec::new();
    for cfg in list {
        match sender::Destination::new(cfg.clone(), who.clone()) {
            Ok(d) => {
                let counters = registry_counters(metrics.clone());
                let delivered = metrics.counter(&crate::metrics::defs::FORWARD_DELIVERED, &[&cfg.name]);
                out.push(tokio::spawn(sender::run(
                    d,
                    dir.clone(),
                    shared.clone(),
                    counters,
                    delivered,
                    stop.clone(),
                )));
            }
            Err(e) => {
                tracing::error!("forward {}: cannot start: {e}", cfg.name);
                let st = status::DestState {
                    name: cfg.name.clone(),
                    address: cfg.address.clone(),
                    transport: cfg.transport,
                    framing: (cfg.transport != settings::Transport::Udp).then_some(cfg.framing),
                    format: cfg.format,
                    last_error: Some(format!("cannot start: {e}")),
                    last_error_kind: Some(e.kind().into()),
                    last_error_ms: Some(crate::timefmt::now_ms()),
                    updated_ms: crate::timefmt::now_ms(),
                    ..status::DestState::default()
                };
                shared.report(&cfg.name, serde_json::to_vec(&st).unwrap_or_default());
            }
        }
    }
    out
}

/// `forward-test`: one test event per destination; (name, outcome) in config order.
pub async fn test_all(list: &[settings::ForwardConfig]) -> Vec<(String, Result<String, error::ForwardError>)> {
    let who = Arc::new(event::Sender::local());
    let mut out = Vec::new();
    for cfg in list {
        let r = match sender::Destination::new(cfg.clone(), who.clone()) {
            Ok(d) => sender::test_destination(&d).await,
            Err(e) => Err(e),
        };
        out.push((cfg.name.clone(), r));
    }
    out
}
