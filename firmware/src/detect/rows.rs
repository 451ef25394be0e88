//! Detection's part of the state file: alerts (capped, the least recently
//! seen evicted and counted) and learned state (baselines, clock, status),
//! handed to the store as [`StateRows`] and read back at start.

use super::{DetectLoaded, EngineStatus, StoredAlert};
use crate::store::StoreError;
use crate::store::reader::Reader;
use crate::store::rows::StateRows;
use crate::store::schema::{ALERT_ACKS, ALERTS, DETECT_STATE};
use redb::{ReadableTable, ReadableTableMetadata, WriteTransaction};

/// Alerts kept in the state file; beyond it the least recently seen go (counted).
pub const MAX_ALERTS: u64 = 100_000;

/// Alerts and state rows of one detector update.
#[derive(Debug)]
pub struct DetectRows {
    pub alerts: Vec<StoredAlert>,
    pub state: Vec<(String, Vec<u8>)>,
    pub max_alerts: u64,
    /// `flowwarden_detect_evicted_total{table="alerts"}`: alerts evicted by the cap.
    pub evicted: crate::metrics::Counter,
    staged_evicted: u64,
}

impl DetectRows {
    pub fn new(alerts: Vec<StoredAlert>, state: Vec<(String, Vec<u8>)>, evicted: crate::metrics::Counter) -> DetectRows {
        DetectRows {
            alerts,
            state,
            max_alerts: MAX_ALERTS,
            evicted,
            staged_evicted: 0,
        }
    }
}

impl StateRows for DetectRows {
    fn stage(&mut self, txn: &WriteTransaction) -> Result<(), redb::Error> {
        let mut t = txn.open_table(ALERTS)?;
        for a in &self.alerts {
            let bytes = serde_json::to_vec(a).unwrap_or_default();
            t.insert(a.alert.id.as_str(), bytes.as_slice())?;
        }
        self.staged_evicted = cap_alerts(&mut t, self.max_alerts)?;
        let mut t = txn.open_table(DETECT_STATE)?;
        for (k, v) in &self.state {
            t.insert(k.as_str(), v.as_slice())?;
        }
        Ok(())
    }

    fn committed(&mut self) {
        self.evicted.add(self.staged_evicted);
    }
}

/// Keep at most `max` alerts: past it, delete the least recently seen tenth
/// (so the scan that finds them runs rarely). Returns how many were deleted.
fn cap_alerts(t: &mut redb::Table<&'static str, &'static [u8]>, max: u64) -> Result<u64, redb::StorageError> {
    let len = t.len()?;
    if len <= max {
        return Ok(0);
    }
    let mut all: Vec<(u64, String)> = Vec::with_capacity(len as usize);
    for row in t.iter()? {
        let (k, v) = row?;
        let seen = serde_json::from_slice::<StoredAlert>(v.value())
            .map(|a| a.alert.last_seen_ms)
            .unwrap_or(0);
        all.push((seen, k.value().to_string()));
    }
    all.sort_unstable();
    let n = len - max * 9 / 10;
    for (_, id) in all.iter().take(n as usize) {
        t.remove(id.as_str())?;
    }
    Ok(n)
}

/// What the engine restores at start: its state rows and the stored alerts.
pub fn load(reader: &Reader) -> Result<DetectLoaded, StoreError> {
    Ok(DetectLoaded {
        state: reader.state_rows(DETECT_STATE)?,
        alerts: load_alerts(reader)?.0,
    })
}

/// Stored alerts (undecodable rows are skipped and counted in the second value).
pub fn load_alerts(reader: &Reader) -> Result<(Vec<StoredAlert>, u64), StoreError> {
    let mut out = Vec::new();
    let mut bad = 0;
    for (_, v) in reader.state_rows(ALERTS)? {
        match serde_json::from_slice(&v) {
            Ok(a) => out.push(a),
            Err(_) => bad += 1,
        }
    }
    Ok((out, bad))
}

/// An alert acknowledged by someone on the page.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Ack {
    pub by: String,
    pub at_ms: u64,
}

/// Acknowledgements for the next state commit.
#[derive(Debug)]
pub struct AckRows {
    pub acks: Vec<(String, Ack)>,
    /// Told once the transaction holding them committed.
    pub notify: Option<std::sync::mpsc::SyncSender<()>>,
}

impl StateRows for AckRows {
    fn stage(&mut self, txn: &WriteTransaction) -> Result<(), redb::Error> {
        let mut t = txn.open_table(ALERT_ACKS)?;
        for (id, ack) in &self.acks {
            if let Ok(v) = serde_json::to_vec(ack) {
                t.insert(id.as_str(), v.as_slice())?;
            }
        }
        Ok(())
    }

    fn committed(&mut self) {
        if let Some(n) = self.notify.take() {
            let _ = n.try_send(());
        }
    }
}

/// Every acknowledgement, by alert id (undecodable rows skipped).
pub fn load_acks(reader: &Reader) -> Result<std::collections::BTreeMap<String, Ack>, StoreError> {
    Ok(reader
        .state_rows(ALERT_ACKS)?
        .into_iter()
        .filter_map(|(k, v)| serde_json::from_slice(&v).ok().map(|a| (k, a)))
        .collect())
}

/// The learning state as last published.
pub fn load_status(reader: &Reader) -> Result<Option<EngineStatus>, StoreError> {
    Ok(reader
        .state_row(DETECT_STATE, "status")?
        .and_then(|v| serde_json::from_slice(&v).ok()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::alert::{Alert, Kind};
    use redb::Database;

    #[test]
    fn alert_table_is_capped_oldest_first() {
        let d = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let db = Database::create(d.path().join("s.redb")).unwrap_or_else(|e| panic!("{e}"));
        let txn = db.begin_write().unwrap_or_else(|e| panic!("{e}"));
        {
            let mut t = txn.open_table(ALERTS).unwrap_or_else(|e| panic!("{e}"));
            for i in 0..30u64 {
                let a = StoredAlert {
                    group: format!("g{i}"),
                    alert: Alert {
                        id: format!("fw-{i:02}"),
                        kind: Kind::Scan,
                        severity: 4,
                        src: std::net::IpAddr::from([10, 0, 0, 1]),
                        dst: None,
                        dst_port: None,
                        first_seen_ms: i,
                        // Not in id order: eviction goes by last_seen.
                        last_seen_ms: (i * 7) % 30,
                        count: 1,
                        summary: String::new(),
                        attack: vec![],
                        evidence: Default::default(),
                    },
                };
                let bytes = serde_json::to_vec(&a).unwrap_or_default();
                t.insert(a.alert.id.as_str(), bytes.as_slice()).unwrap_or_else(|e| panic!("{e}"));
            }
            assert_eq!(cap_alerts(&mut t, 40).unwrap_or_else(|e| panic!("{e}")), 0);
            assert_eq!(cap_alerts(&mut t, 20).unwrap_or_else(|e| panic!("{e}")), 12);
            assert_eq!(t.len().unwrap_or_else(|e| panic!("{e}")), 18);
            for row in t.iter().unwrap_or_else(|e| panic!("{e}")) {
                let (_, v) = row.unwrap_or_else(|e| panic!("{e}"));
                let a: StoredAlert = serde_json::from_slice(v.value()).unwrap_or_else(|e| panic!("{e}"));
                assert!(a.alert.last_seen_ms >= 12, "{a:?}");
            }
        }
        txn.commit().unwrap_or_else(|e| panic!("{e}"));
    }
}
