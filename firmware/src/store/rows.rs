//! What stages hand the store for its state file, without the store knowing
//! them: the store is a sink.
//!
//! A stage sends [`StateRows`] (templates and exporter health from the
//! decoder, alerts and baselines from detection, counters from anyone); the
//! writer stages every pending batch in its next state transaction, in the
//! order they came, and tells each when the transaction committed. Standing
//! [`StateParticipant`]s (the forwarding outbox) join every state transaction
//! after the rows, so what the rows handed them (alerts to spool) commits in
//! the same transaction. The tables each writes are `schema` constants.

use super::schema::STATE_META;
use redb::WriteTransaction;

/// One batch of rows for the next state transaction.
pub trait StateRows: Send {
    /// Write the rows into `txn`. Called again, in a new transaction, when
    /// an attempt fails: it must write the same rows each time.
    fn stage(&mut self, txn: &WriteTransaction) -> Result<(), redb::Error>;
    /// The transaction holding the rows committed.
    fn committed(&mut self) {}
}

/// A stage that takes part in every state transaction.
pub trait StateParticipant: Send {
    /// Whether it has something to write even without new rows.
    fn has_work(&self) -> bool;
    fn stage(&mut self, txn: &WriteTransaction) -> Result<(), redb::Error>;
    fn committed(&mut self);
    /// The attempt failed: forget what was staged (the rows stage again).
    fn failed(&mut self);
}

/// Named counters for the state file's `state_meta` table (latest value wins):
/// the snapshot the CLI shows.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct CounterRows(pub Vec<(String, u64)>);

impl StateRows for CounterRows {
    fn stage(&mut self, txn: &WriteTransaction) -> Result<(), redb::Error> {
        let mut t = txn.open_table(STATE_META)?;
        for (k, v) in &self.0 {
            t.insert(k.as_str(), *v)?;
        }
        Ok(())
    }
}

/// A snapshot of the metrics registry for the state file (`state_meta`, one
/// row per series, keyed `name{labels}`): what the CLI shows of a running or
/// stopped appliance.
pub struct MetricRows(pub Vec<crate::metrics::Sample>);

impl StateRows for MetricRows {
    fn stage(&mut self, txn: &WriteTransaction) -> Result<(), redb::Error> {
        let mut t = txn.open_table(STATE_META)?;
        for s in &self.0 {
            t.insert(s.series().as_str(), s.value)?;
        }
        Ok(())
    }
}

/// Put (Some) or delete (None) rows of one `&str -> &[u8]` state table.
pub struct TableRows {
    pub table: redb::TableDefinition<'static, &'static str, &'static [u8]>,
    pub rows: Vec<(String, Option<Vec<u8>>)>,
}

impl StateRows for TableRows {
    fn stage(&mut self, txn: &WriteTransaction) -> Result<(), redb::Error> {
        let mut t = txn.open_table(self.table)?;
        for (k, v) in &self.rows {
            match v {
                Some(v) => {
                    t.insert(k.as_str(), v.as_slice())?;
                }
                None => {
                    t.remove(k.as_str())?;
                }
            }
        }
        Ok(())
    }
}

/// Several batches sent as one message (they stage in order).
pub struct Batches(pub Vec<Box<dyn StateRows>>);

impl StateRows for Batches {
    fn stage(&mut self, txn: &WriteTransaction) -> Result<(), redb::Error> {
        for b in &mut self.0 {
            b.stage(txn)?;
        }
        Ok(())
    }
    fn committed(&mut self) {
        for b in &mut self.0 {
            b.committed();
        }
    }
}
