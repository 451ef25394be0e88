//! The roll-ups' share of the budget.
//!
//! `rollups.redb` may grow to `rollup_budget_percent` of the budget (a hard
//! cap in the quota). redb grows a full file by doubling it, and even deleting
//! rows needs a few new pages (copy-on-write), so the content is kept under
//! half the share: before each roll-up transaction the writer estimates what
//! the tables hold (row counts times bytes per row, measured with redb's table
//! statistics every so often) and trims the oldest tenth of the rows, whole
//! minutes and hours, until the new rows fit. Trimmed rows are counted; rows
//! older than what was trimmed are not written again. A trim that finds the
//! file at its cap may pass it by an eighth (at least 256 KiB) of the share:
//! otherwise a full file could never delete and every later roll-up would be lost.

use super::writer::StoreWriter;
use super::{StoreError, quota::Refusal};
use redb::{ReadableDatabase, ReadableTableMetadata, TableError};
use std::sync::atomic::Ordering;

/// Bytes a minute row and an hour top list take before the first measurement.
const MINUTE_ROW_BYTES: f64 = 64.0;
const HOUR_ROW_BYTES: f64 = 2048.0;
/// Estimates between two measurements.
const MEASURE_EVERY: u64 = 64;

/// Row counts and measured bytes per row of the two roll-up tables.
#[derive(Debug)]
pub struct RollupSpace {
    minute_bytes: f64,
    hour_bytes: f64,
    estimates: u64,
}

impl Default for RollupSpace {
    fn default() -> Self {
        RollupSpace {
            minute_bytes: MINUTE_ROW_BYTES,
            hour_bytes: HOUR_ROW_BYTES,
            estimates: 0,
        }
    }
}

impl RollupSpace {
    /// Measure again at the next estimate.
    pub fn invalidate(&mut self) {
        self.estimates = 0;
    }
}

/// (rows, stored+metadata+fragmented bytes) of one table.
fn table_size<K: redb::Key + 'static, V: redb::Value + 'static>(
    txn: &redb::ReadTransaction,
    def: redb::TableDefinition<K, V>,
    measure: bool,
) -> Result<(u64, Option<u64>), redb::Error> {
    match txn.open_table(def) {
        Ok(t) => {
            let rows = t.len()?;
            let bytes = if measure {
                let s = t.stats()?;
                Some(s.stored_bytes() + s.metadata_bytes() + s.fragmented_bytes())
            } else {
                None
            };
            Ok((rows, bytes))
        }
        Err(TableError::TableDoesNotExist(_)) => Ok((0, Some(0))),
        Err(e) => Err(e.into()),
    }
}

impl StoreWriter {
    /// Estimated bytes the roll-up tables hold, and their row counts.
    fn rollup_content(&mut self) -> Result<(u64, u64, u64), StoreError> {
        let p = self.dir.rollups();
        let measure = self.rollup_space.estimates.is_multiple_of(MEASURE_EVERY);
        self.rollup_space.estimates += 1;
        let ((m_rows, m_bytes), (h_rows, h_bytes)) = super::guard(&p.clone(), || {
            let db = self.rollup_db()?;
            let txn = db.begin_read().map_err(|e| StoreError::db(&p, e))?;
            let m = table_size(&txn, super::schema::MINUTE, measure).map_err(|e| StoreError::db(&p, e))?;
            let h = table_size(&txn, super::schema::HOUR_TOP, measure).map_err(|e| StoreError::db(&p, e))?;
            Ok((m, h))
        })?;
        let space = &mut self.rollup_space;
        if let Some(b) = m_bytes.filter(|_| m_rows > 1000) {
            space.minute_bytes = b as f64 / m_rows as f64;
        }
        if let Some(b) = h_bytes.filter(|_| h_rows > 100) {
            space.hour_bytes = b as f64 / h_rows as f64;
        }
        let est = m_rows as f64 * space.minute_bytes + h_rows as f64 * space.hour_bytes;
        Ok((est as u64, m_rows, h_rows))
    }

    /// Before writing about `minute_rows` and `hour_rows` new rows: trim the
    /// oldest roll-ups until content and new rows fit in half the share.
    pub(super) fn ensure_rollup_room(&mut self, minute_rows: u64, hour_rows: u64) {
        let target = self.rollup_share() / 2;
        let adding = (minute_rows as f64 * self.rollup_space.minute_bytes + hour_rows as f64 * self.rollup_space.hour_bytes) as u64;
        for _ in 0..20 {
            let (content, m_rows, h_rows) = match self.rollup_content() {
                Ok(c) => c,
                Err(e) => {
                    tracing::debug!("cannot measure the roll-ups: {e}");
                    return;
                }
            };
            if content + adding <= target || m_rows + h_rows == 0 {
                return;
            }
            if !self.trim_rollups() {
                return;
            }
        }
    }

    /// Delete the oldest tenth of the roll-up rows (at least one minute and
    /// one hour). Returns whether it did.
    pub(super) fn trim_rollups(&mut self) -> bool {
        let p = self.dir.rollups();
        let share = self.rollup_share();
        let trimmed = self.trim_rollups_within(&p, share);
        // The cap may have been lifted for the trim: back to the share.
        self.quota.set_cap(&p, share);
        trimmed
    }

    fn trim_rollups_within(&mut self, p: &std::path::Path, share: u64) -> bool {
        let p = p.to_path_buf();
        let (mut lifted, mut made_room) = (false, false);
        for _ in 1..=3 {
            let res = super::guard(&p, || {
                let db = self.rollup_db()?;
                let txn = db.begin_write().map_err(|e| StoreError::db(&p, e))?;
                let trimmed = super::rollup::trim_oldest(&txn, 10).map_err(|e| StoreError::db(&p, e))?;
                txn.commit().map_err(|e| StoreError::db(&p, e))?;
                // redb hands pages freed by a commit to the allocator at the next
                // commit: one empty commit makes the trimmed pages reusable now.
                let txn = db.begin_write().map_err(|e| StoreError::db(&p, e))?;
                txn.commit().map_err(|e| StoreError::db(&p, e))?;
                Ok(trimmed)
            });
            match res {
                Ok((n, minute_cut, hour_cut)) => {
                    // Rows older than what was trimmed are not written again.
                    self.rollup_floor.0 = self.rollup_floor.0.max(minute_cut);
                    self.rollup_floor.1 = self.rollup_floor.1.max(hour_cut);
                    let before = self.counters.rollup_rows_trimmed.fetch_add(n, Ordering::Relaxed);
                    if before == 0 {
                        tracing::info!(
                            "roll-ups reached their share of the budget ({}): the oldest go first",
                            crate::units::bytes(self.rollup_share())
                        );
                    }
                    return n > 0;
                }
                Err(e) => {
                    self.rollups = None;
                    match self.quota.take_refusal(&p) {
                        // Deleting needs new pages too (copy-on-write), and a
                        // file at its cap could never trim again: the trim alone
                        // may pass the cap by a little. The pages it frees take
                        // the next roll-up writes, so the file grows no further.
                        Some(Refusal::FileCap) if !lifted => {
                            lifted = true;
                            self.quota.set_cap(&p, share + (share / 8).max(256 << 10));
                        }
                        Some(Refusal::Budget | Refusal::Disk) if !made_room => {
                            made_room = true;
                            let need = self.quota.file_len(&p).unwrap_or(0) + (256 << 10);
                            self.make_room(need, None);
                        }
                        _ => {
                            tracing::warn!("cannot trim roll-ups: {e}");
                            return false;
                        }
                    }
                }
            }
        }
        false
    }
}
