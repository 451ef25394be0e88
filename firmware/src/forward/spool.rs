//! The durable per-destination spool (at-least-once delivery).
//!
//! Writer side: [`SpoolBook`] is a [`StateParticipant`] of the store's state
//! transaction. Detection's alert rows, staged first in the same transaction,
//! hand their alerts to the [`Outbox`]; the book then appends an entry per
//! destination with the next sequence number and, past the destination's byte
//! cap, deletes the oldest entries (counted; the sender turns the hole into a
//! gap event), deletes what the senders confirmed and stores their reported
//! state — so an alert is never stored without its spool entries or the other
//! way round, and the store knows nothing of either. Sender side: [`SpoolReader`] reads the entries
//! after a sequence number through a read-only open of the state file. [`ForwardShared`] carries confirmations and state from the senders
//! to the writer (bounded: one slot per destination) and wakes senders after a
//! commit that spooled something.

use super::event::SpoolEntry;
use crate::store::StoreError;
use crate::store::reader::with_table;
use crate::store::rows::StateParticipant;
use crate::store::schema::{FORWARD_STATE, SPOOL, SPOOL_META};
use redb::{ReadableTable, WriteTransaction};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::Mutex;

/// Per-destination bookkeeping kept beside the entries.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SpoolMeta {
    /// Sequence number the next entry gets (first entry: 1).
    pub next_seq: u64,
    /// Highest sequence number confirmed delivered.
    pub acked_upto: u64,
    /// Entries and bytes now spooled.
    pub entries: u64,
    pub bytes: u64,
    /// Entries deleted unsent because the spool was full, ever.
    pub dropped: u64,
    pub dropped_bytes: u64,
    /// Cap in force when last written.
    pub max_bytes: u64,
}

/// A destination the writer spools for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpoolDest {
    pub name: String,
    pub max_bytes: u64,
}

/// Confirmations and state reports from the senders, picked up at each commit.
#[derive(Debug)]
pub struct ForwardShared {
    inner: Mutex<Pending>,
    wake: tokio::sync::watch::Sender<u64>,
}

#[derive(Debug, Default)]
struct Pending {
    acks: HashMap<String, u64>,
    states: HashMap<String, Vec<u8>>,
}

impl Default for ForwardShared {
    fn default() -> ForwardShared {
        let (tx, _) = tokio::sync::watch::channel(0);
        ForwardShared {
            inner: Mutex::new(Pending::default()),
            wake: tx,
        }
    }
}

impl ForwardShared {
    pub fn new() -> ForwardShared {
        ForwardShared::default()
    }

    /// Entries up to `seq` of `dest` were delivered.
    pub fn ack(&self, dest: &str, seq: u64) {
        if let Ok(mut p) = self.inner.lock() {
            let e = p.acks.entry(dest.to_string()).or_insert(0);
            *e = (*e).max(seq);
        }
    }

    /// The latest state of `dest` (JSON), to persist.
    pub fn report(&self, dest: &str, state_json: Vec<u8>) {
        if let Ok(mut p) = self.inner.lock() {
            p.states.insert(dest.to_string(), state_json);
        }
    }

    fn take(&self) -> Pending {
        self.inner.lock().map(|mut p| std::mem::take(&mut *p)).unwrap_or_default()
    }

    fn put_back(&self, old: Pending) {
        if let Ok(mut p) = self.inner.lock() {
            for (d, s) in old.acks {
                let e = p.acks.entry(d).or_insert(0);
                *e = (*e).max(s);
            }
            for (d, s) in old.states {
                p.states.entry(d).or_insert(s);
            }
        }
    }

    fn has_pending(&self) -> bool {
        self.inner
            .lock()
            .map(|p| !p.acks.is_empty() || !p.states.is_empty())
            .unwrap_or(false)
    }

    /// A receiver that changes after every commit that spooled entries.
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.wake.subscribe()
    }

    fn wake(&self) {
        self.wake.send_modify(|g| *g = g.wrapping_add(1));
    }
}

/// Where alerts to spool are handed over (by the alert rows, inside the state
/// transaction): (alert id, encoded entry), the latest per alert kept.
#[derive(Debug, Clone, Default)]
pub struct Outbox {
    entries: Arc<Mutex<Vec<Handed>>>,
    /// Audit events from the page: (waiting, in the transaction being built).
    /// Unlike alerts nobody hands them over again, so a failed commit puts them back.
    audit: Arc<Mutex<AuditQueue>>,
}

/// Encoded audit entries: (waiting, taken into the transaction being built).
type AuditQueue = (std::collections::VecDeque<Vec<u8>>, Vec<Vec<u8>>);

/// Audit events waiting for a state commit; beyond this the oldest is dropped (counted by the caller).
pub const AUDIT_QUEUE: usize = 1024;

/// An alert id and its encoded spool entry.
type Handed = (String, Vec<u8>);

impl Outbox {
    /// Queue these alerts (new or updated) for every destination.
    pub fn push(&self, alerts: &[crate::alert::Alert]) {
        let at_ms = crate::timefmt::now_ms();
        let mut g = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        for a in alerts {
            let entry = SpoolEntry {
                at_ms,
                event: super::event::Event::Alert(a.clone()),
            };
            if let Ok(bytes) = serde_json::to_vec(&entry) {
                g.push((a.id.clone(), bytes));
            }
        }
    }

    /// Queue an audit event for every destination; returns how many older
    /// events were dropped to stay within [`AUDIT_QUEUE`] (0 or 1).
    pub fn push_audit(&self, record: super::event::AuditRecord) -> u64 {
        let entry = SpoolEntry {
            at_ms: crate::timefmt::now_ms(),
            event: super::event::Event::Audit(record),
        };
        let Ok(bytes) = serde_json::to_vec(&entry) else { return 0 };
        let mut g = self.audit.lock().unwrap_or_else(|p| p.into_inner());
        let dropped = if g.0.len() >= AUDIT_QUEUE {
            g.0.pop_front();
            1
        } else {
            0
        };
        g.0.push_back(bytes);
        dropped
    }

    /// Take the entries, an alert updated several times only in its latest
    /// version, then the audit events.
    fn take(&self) -> Vec<Vec<u8>> {
        let all = std::mem::take(&mut *self.entries.lock().unwrap_or_else(|p| p.into_inner()));
        let last: HashMap<&str, usize> = all.iter().enumerate().map(|(i, (id, _))| (id.as_str(), i)).collect();
        let mut out: Vec<Vec<u8>> = all
            .iter()
            .enumerate()
            .filter(|(i, (id, _))| last.get(id.as_str()) == Some(i))
            .map(|(_, (_, e))| e.clone())
            .collect();
        let mut g = self.audit.lock().unwrap_or_else(|p| p.into_inner());
        let audit: Vec<Vec<u8>> = g.0.drain(..).collect();
        out.extend(audit.iter().cloned());
        g.1.extend(audit);
        out
    }

    /// The transaction holding the taken audit events committed.
    fn audit_committed(&self) {
        self.audit.lock().unwrap_or_else(|p| p.into_inner()).1.clear();
    }

    /// It failed: the taken audit events wait again, in order, ahead of newer ones.
    fn audit_failed(&self) {
        let mut g = self.audit.lock().unwrap_or_else(|p| p.into_inner());
        let taken = std::mem::take(&mut g.1);
        for e in taken.into_iter().rev() {
            g.0.push_front(e);
        }
        while g.0.len() > AUDIT_QUEUE {
            g.0.pop_back();
        }
    }

    fn clear(&self) {
        self.entries.lock().unwrap_or_else(|p| p.into_inner()).clear();
        let mut g = self.audit.lock().unwrap_or_else(|p| p.into_inner());
        g.0.clear();
        g.1.clear();
    }

    fn is_empty(&self) -> bool {
        self.entries.lock().map(|g| g.is_empty()).unwrap_or(true) && self.audit.lock().map(|g| g.0.is_empty()).unwrap_or(true)
    }
}

/// The writer's view of every spool: metas in memory, changed only on commit.
#[derive(Debug)]
pub struct SpoolBook {
    dests: Vec<SpoolDest>,
    outbox: Outbox,
    metrics: Arc<crate::metrics::Registry>,
    metas: HashMap<String, SpoolMeta>,
    shared: std::sync::Arc<ForwardShared>,
    /// Metas changed by the transaction being built (swapped in on commit).
    staged: Option<HashMap<String, SpoolMeta>>,
    staged_pending: Option<Pending>,
    staged_spooled: bool,
    staged_dropped: u64,
    /// Entries deleted unsent (spool full), this process.
    pub dropped: u64,
}

fn db_err(e: impl Into<redb::Error>) -> redb::Error {
    e.into()
}

impl SpoolBook {
    /// Load the metas of `dests` from the state file (new destinations start
    /// at sequence 1); alerts handed to `outbox` are spooled.
    pub fn load(
        state_path: &Path,
        dests: Vec<SpoolDest>,
        shared: Arc<ForwardShared>,
        outbox: Outbox,
        metrics: Arc<crate::metrics::Registry>,
    ) -> Result<SpoolBook, StoreError> {
        let mut metas: HashMap<String, SpoolMeta> = with_table(state_path, SPOOL_META, |t| {
            let mut out = HashMap::new();
            for row in t.iter()? {
                let (k, v) = row?;
                if let Ok(m) = postcard::from_bytes::<SpoolMeta>(v.value()) {
                    out.insert(k.value().to_string(), m);
                }
            }
            Ok(out)
        })?;
        for d in &dests {
            metas.entry(d.name.clone()).or_insert(SpoolMeta {
                next_seq: 1,
                ..SpoolMeta::default()
            });
        }
        Ok(SpoolBook {
            dests,
            outbox,
            metrics,
            metas,
            shared,
            staged: None,
            staged_pending: None,
            staged_spooled: false,
            staged_dropped: 0,
            dropped: 0,
        })
    }

    pub fn is_empty(&self) -> bool {
        self.dests.is_empty()
    }

    /// Stage `entries` (already encoded) for every destination, then the senders'
    /// confirmations and states, inside `txn`. Call [`Self::committed`] or
    /// [`Self::failed`] after the commit.
    fn stage_entries(&mut self, txn: &WriteTransaction, entries: &[Vec<u8>]) -> Result<(), redb::Error> {
        let mut metas = self.metas.clone();
        let pending = self.shared.take();
        let mut dropped = 0;
        {
            let mut spool = txn.open_table(SPOOL).map_err(db_err)?;
            let mut meta_t = txn.open_table(SPOOL_META).map_err(db_err)?;
            let mut touched: Vec<String> = Vec::new();
            // Confirmations first: they free room.
            for (dest, upto) in &pending.acks {
                let Some(m) = metas.get_mut(dest) else { continue };
                if *upto <= m.acked_upto {
                    continue;
                }
                let gone: Vec<(u64, usize)> = spool
                    .range((dest.as_str(), 0)..=(dest.as_str(), *upto))
                    .map_err(db_err)?
                    .map(|r| r.map(|(k, v)| (k.value().1, v.value().len())))
                    .collect::<Result<_, _>>()
                    .map_err(db_err)?;
                for (seq, len) in gone {
                    spool.remove((dest.as_str(), seq)).map_err(db_err)?;
                    m.entries = m.entries.saturating_sub(1);
                    m.bytes = m.bytes.saturating_sub(len as u64);
                }
                m.acked_upto = (*upto).min(m.next_seq.saturating_sub(1));
                touched.push(dest.clone());
            }
            for d in &self.dests {
                let Some(m) = metas.get_mut(&d.name) else { continue };
                m.max_bytes = d.max_bytes;
                for e in entries {
                    spool.insert((d.name.as_str(), m.next_seq), e.as_slice()).map_err(db_err)?;
                    m.next_seq += 1;
                    m.entries += 1;
                    m.bytes += e.len() as u64;
                }
                // Over the cap: oldest first, never the newest entry.
                while m.bytes > d.max_bytes && m.entries > 1 {
                    let first = spool
                        .range((d.name.as_str(), 0)..(d.name.as_str(), u64::MAX))
                        .map_err(db_err)?
                        .next()
                        .transpose()
                        .map_err(db_err)?
                        .map(|(k, v)| (k.value().1, v.value().len()));
                    let Some((seq, len)) = first else { break };
                    spool.remove((d.name.as_str(), seq)).map_err(db_err)?;
                    m.entries -= 1;
                    m.bytes = m.bytes.saturating_sub(len as u64);
                    m.dropped += 1;
                    m.dropped_bytes += len as u64;
                    dropped += 1;
                }
                touched.push(d.name.clone());
            }
            touched.sort_unstable();
            touched.dedup();
            for name in touched {
                if let Some(m) = metas.get(&name) {
                    let bytes = postcard::to_stdvec(m).unwrap_or_default();
                    meta_t.insert(name.as_str(), bytes.as_slice()).map_err(db_err)?;
                }
            }
            let mut st = txn.open_table(FORWARD_STATE).map_err(db_err)?;
            for (dest, json) in &pending.states {
                st.insert(dest.as_str(), json.as_slice()).map_err(db_err)?;
            }
        }
        self.staged = Some(metas);
        self.staged_pending = Some(pending);
        self.staged_spooled = !entries.is_empty() && !self.dests.is_empty();
        self.staged_dropped = dropped;
        Ok(())
    }

    /// The staged transaction committed.
    fn on_committed(&mut self) {
        if let Some(m) = self.staged.take() {
            self.metas = m;
        }
        self.staged_pending = None;
        self.dropped += std::mem::take(&mut self.staged_dropped);
        if std::mem::take(&mut self.staged_spooled) {
            self.shared.wake();
        }
    }

    /// The staged transaction failed: keep the confirmations for the next try.
    fn on_failed(&mut self) {
        self.staged = None;
        self.staged_spooled = false;
        self.staged_dropped = 0;
        if let Some(p) = self.staged_pending.take() {
            self.shared.put_back(p);
        }
    }
}

impl StateParticipant for SpoolBook {
    fn has_work(&self) -> bool {
        self.shared.has_pending() || !self.outbox.is_empty()
    }

    fn stage(&mut self, txn: &WriteTransaction) -> Result<(), redb::Error> {
        let entries = if self.dests.is_empty() {
            self.outbox.clear();
            Vec::new()
        } else {
            self.outbox.take()
        };
        self.stage_entries(txn, &entries)?;
        Ok(())
    }

    fn committed(&mut self) {
        self.outbox.audit_committed();
        self.on_committed();
        use crate::metrics::defs::{FORWARD_DROPPED, FORWARD_QUEUE};
        for d in &self.dests {
            if let Some(m) = self.metas.get(&d.name) {
                self.metrics.counter(&FORWARD_DROPPED, &[&d.name]).set_at_least(m.dropped);
                self.metrics.gauge(&FORWARD_QUEUE, &[&d.name]).set(m.entries);
            }
        }
    }

    fn failed(&mut self) {
        // The alert rows hand their alerts over again when the commit is retried;
        // the audit events wait in the outbox again.
        self.outbox.entries.lock().unwrap_or_else(|p| p.into_inner()).clear();
        self.outbox.audit_failed();
        self.on_failed();
    }
}

/// Read access to the spool for senders and status. Each call opens the state
/// file read-only (like every other reader: works beside the live writer, sees
/// its latest commit, repairs after a crash when no writer holds it).
pub struct SpoolReader {
    path: PathBuf,
}

/// One spooled entry as read: its sequence number and the entry (None: undecodable).
pub type Spooled = (u64, Option<SpoolEntry>, usize);

impl SpoolReader {
    pub fn new(state_path: &Path) -> SpoolReader {
        SpoolReader {
            path: state_path.to_path_buf(),
        }
    }

    /// Entries of `dest` after sequence `after`, at most `max` entries and about `max_bytes`.
    pub fn read(&self, dest: &str, after: u64, max: usize, max_bytes: usize) -> Result<Vec<Spooled>, StoreError> {
        with_table(&self.path, SPOOL, |t| {
            let mut out = Vec::new();
            let mut bytes = 0;
            for row in t.range((dest, after.saturating_add(1))..(dest, u64::MAX))? {
                let (k, v) = row?;
                let raw = v.value();
                bytes += raw.len();
                out.push((k.value().1, serde_json::from_slice::<SpoolEntry>(raw).ok(), raw.len()));
                if out.len() >= max || bytes >= max_bytes {
                    break;
                }
            }
            Ok(out)
        })
    }

    /// Every row of a name-keyed state table (empty when it does not exist yet).
    fn named_rows(&self, table: redb::TableDefinition<&str, &[u8]>) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        with_table(&self.path, table, |t| {
            let mut out = Vec::new();
            for row in t.iter()? {
                let (k, v) = row?;
                out.push((k.value().to_string(), v.value().to_vec()));
            }
            Ok(out)
        })
    }

    /// The meta of every destination ever spooled for.
    pub fn metas(&self) -> Result<Vec<(String, SpoolMeta)>, StoreError> {
        Ok(self
            .named_rows(SPOOL_META)?
            .into_iter()
            .filter_map(|(k, v)| postcard::from_bytes::<SpoolMeta>(&v).ok().map(|m| (k, m)))
            .collect())
    }

    /// The first (oldest) entry's stored time of `dest`.
    pub fn oldest_at(&self, dest: &str) -> Result<Option<u64>, StoreError> {
        Ok(self.read(dest, 0, 1, 1)?.first().and_then(|(_, e, _)| e.as_ref().map(|e| e.at_ms)))
    }

    /// Destination states as last persisted (JSON).
    pub fn states(&self) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        self.named_rows(FORWARD_STATE)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::forward::event::{AuditRecord, Event};

    fn record(action: &str) -> AuditRecord {
        AuditRecord {
            action: action.into(),
            ..AuditRecord::default()
        }
    }

    fn actions(entries: &[Vec<u8>]) -> Vec<String> {
        entries
            .iter()
            .filter_map(|e| serde_json::from_slice::<SpoolEntry>(e).ok())
            .filter_map(|e| match e.event {
                Event::Audit(r) => Some(r.action),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn audit_events_survive_a_failed_commit_in_order_and_are_bounded() {
        let o = Outbox::default();
        for a in ["a0", "a1", "a2"] {
            assert_eq!(o.push_audit(record(a)), 0);
        }
        assert_eq!(actions(&o.take()), ["a0", "a1", "a2"]);
        assert!(o.is_empty(), "taken: nothing waits");
        o.push_audit(record("a3"));
        o.audit_failed();
        assert_eq!(actions(&o.take()), ["a0", "a1", "a2", "a3"], "put back ahead of newer ones");
        o.audit_committed();
        assert!(o.is_empty());
        o.audit_failed();
        assert!(o.is_empty(), "committed events are not sent twice");
        let dropped: u64 = (0..AUDIT_QUEUE + 5).map(|i| o.push_audit(record(&format!("b{i}")))).sum();
        assert_eq!(dropped, 5);
        let kept = actions(&o.take());
        assert_eq!(kept.len(), AUDIT_QUEUE);
        assert_eq!(kept[0], "b5", "the oldest went first");
    }
}
