//! Destination state: what each sender reports (connected, last success, last
//! error, certificate expiry, counts) and what `flowwarden forward-status`
//! prints, joined with the spool's depth, age of the oldest entry and drops.

use super::settings::{Format, Framing, Transport};
use super::spool::{SpoolMeta, SpoolReader};
use crate::store::{DataDir, StoreError};
use serde::{Deserialize, Serialize};

/// A sender's view of its destination (persisted as JSON in `forward_state`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct DestState {
    pub name: String,
    pub address: String,
    pub transport: Transport,
    /// How messages are delimited on a stream; None over UDP (one per datagram).
    pub framing: Option<Framing>,
    pub format: Format,
    pub connected: bool,
    /// Resolved peer of the current or last connection.
    pub peer: Option<String>,
    /// Since when connected (or disconnected), UTC ms.
    pub since_ms: Option<u64>,
    pub last_success_ms: Option<u64>,
    pub last_error: Option<String>,
    /// What failed last: setup, resolve, connect, delivery or spool
    /// (`ForwardError::kind`).
    pub last_error_kind: Option<String>,
    pub last_error_ms: Option<u64>,
    pub tls_version: Option<String>,
    pub tls_cipher: Option<String>,
    pub server_cert_not_after_ms: Option<u64>,
    pub client_cert_not_after_ms: Option<u64>,
    /// Spool entries confirmed delivered, ever (counted by this sender, this run).
    pub delivered: u64,
    /// Entries sent again after a failed connection (possible duplicates).
    pub resent: u64,
    pub heartbeats: u64,
    pub gaps: u64,
    pub connects: u64,
    pub connect_failures: u64,
    /// Undecodable spool entries skipped (reported as a gap).
    pub bad_entries: u64,
    /// Highest sequence ever written to a connection (entries at or below it that
    /// are sent again are marked as possible duplicates, across restarts too).
    pub sent_upto: u64,
    pub updated_ms: u64,
}

/// One row of `forward-status`.
pub fn status_json(
    meta: Option<&SpoolMeta>,
    state: Option<&DestState>,
    name: &str,
    oldest_ms: Option<u64>,
    now_ms: u64,
) -> serde_json::Value {
    let t = |ms: Option<u64>| ms.map(crate::timefmt::rfc3339_ms);
    let m = meta.cloned().unwrap_or_default();
    let s = state.cloned().unwrap_or_default();
    let st = match state {
        None => "never started",
        Some(s) if s.connected => "connected",
        Some(_) => "disconnected",
    };
    serde_json::json!({
        "name": name,
        "state": st,
        "address": state.map(|s| s.address.clone()),
        "transport": state.map(|s| s.transport.as_str()),
        "framing": state.map(|s| s.framing.map_or("datagram", Framing::as_str)),
        "format": state.map(|s| s.format.as_str()),
        "peer": s.peer,
        "since": t(s.since_ms),
        "last_success": t(s.last_success_ms),
        "last_error": s.last_error,
        "last_error_kind": s.last_error_kind,
        "last_error_at": t(s.last_error_ms),
        "tls_version": s.tls_version,
        "tls_cipher": s.tls_cipher,
        "server_cert_not_after": t(s.server_cert_not_after_ms),
        "client_cert_not_after": t(s.client_cert_not_after_ms),
        "queue_depth": m.entries,
        "queue_bytes": m.bytes,
        "queue_max_bytes": m.max_bytes,
        "oldest_entry_age_s": oldest_ms.map(|o| now_ms.saturating_sub(o) / 1000),
        "next_sequence": m.next_seq,
        "acked_upto": m.acked_upto,
        "dropped": m.dropped,
        "dropped_bytes": m.dropped_bytes,
        "delivered": s.delivered,
        "resent": s.resent,
        "heartbeats": s.heartbeats,
        "gaps": s.gaps,
        "connects": s.connects,
        "connect_failures": s.connect_failures,
        "bad_entries": s.bad_entries,
        "updated": t(Some(s.updated_ms).filter(|v| *v > 0)),
    })
}

/// Every destination known to a data directory (spooled for or reported on), by name.
pub fn collect(dir: &DataDir, now_ms: u64) -> Result<Vec<serde_json::Value>, StoreError> {
    let r = SpoolReader::new(&dir.state());
    let metas = r.metas()?;
    let states: Vec<(String, DestState)> = r
        .states()?
        .into_iter()
        .filter_map(|(k, v)| serde_json::from_slice(&v).ok().map(|s| (k, s)))
        .collect();
    let mut names: Vec<String> = metas
        .iter()
        .map(|m| m.0.clone())
        .chain(states.iter().map(|s| s.0.clone()))
        .collect();
    names.sort_unstable();
    names.dedup();
    let mut out = Vec::new();
    for n in names {
        let meta = metas.iter().find(|m| m.0 == n).map(|m| &m.1);
        let state = states.iter().find(|s| s.0 == n).map(|s| &s.1);
        let oldest = if meta.is_some_and(|m| m.entries > 0) {
            r.oldest_at(&n)?
        } else {
            None
        };
        out.push(status_json(meta, state, &n, oldest, now_ms));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn typed_state_renders_the_contract_strings_and_survives_the_state_file() {
        let udp = DestState {
            name: "siem".into(),
            transport: Transport::Udp,
            framing: None,
            format: Format::Leef,
            ..DestState::default()
        };
        let v = status_json(None, Some(&udp), "siem", None, 0);
        assert_eq!(
            (v["transport"].as_str(), v["framing"].as_str(), v["format"].as_str()),
            (Some("udp"), Some("datagram"), Some("leef"))
        );
        let tls = DestState {
            framing: Some(Framing::Lf),
            ..DestState::default()
        };
        let v = status_json(None, Some(&tls), "siem", None, 0);
        assert_eq!(
            (v["transport"].as_str(), v["framing"].as_str(), v["format"].as_str()),
            (Some("tls"), Some("lf"), Some("cef"))
        );
        // Persisted as JSON in the state file, read back unchanged.
        let json = serde_json::to_vec(&udp).unwrap_or_default();
        assert_eq!(serde_json::from_slice::<DestState>(&json).ok(), Some(udp));
    }
}
