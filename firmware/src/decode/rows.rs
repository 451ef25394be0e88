//! The decoder's part of the state file: templates (so a restart loses no
//! data whose templates the exporter does not resend) and exporter health,
//! handed to the store as [`StateRows`] and read back at start.

use super::exporters::ExporterStats;
use super::templates::TemplateChange;
use crate::store::StoreError;
use crate::store::reader::Reader;
use crate::store::rows::StateRows;
use crate::store::schema::{EXPORTERS, TEMPLATES};
use redb::WriteTransaction;

/// Template changes and an exporter-health snapshot for the next state commit.
#[derive(Debug, Default)]
pub struct DecoderRows {
    pub templates: Vec<TemplateChange>,
    pub exporters: Option<Vec<ExporterStats>>,
}

impl DecoderRows {
    pub fn is_empty(&self) -> bool {
        self.templates.is_empty() && self.exporters.is_none()
    }
}

impl StateRows for DecoderRows {
    fn stage(&mut self, txn: &WriteTransaction) -> Result<(), redb::Error> {
        let mut t = txn.open_table(TEMPLATES)?;
        for (k, v) in &self.templates {
            match v {
                Some(v) => {
                    t.insert(k.as_str(), v.as_slice())?;
                }
                None => {
                    t.remove(k.as_str())?;
                }
            }
        }
        if let Some(ex) = &self.exporters {
            let mut t = txn.open_table(EXPORTERS)?;
            for s in ex {
                t.insert(s.exporter.as_str(), encode_exporter(s).as_slice())?;
            }
        }
        Ok(())
    }
}

/// Persisted templates (key, postcard-encoded template spec).
pub fn load_templates(reader: &Reader) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
    reader.state_rows(TEMPLATES)
}

/// What an exporter row carries after [`ExporterStats`]' first layout. Postcard
/// cannot add a field to a struct without breaking stored rows, but it ignores
/// trailing bytes: new fields go here, a row written before them reads as the
/// default, and an older version reading a newer row sees only the first part.
/// Add fields only at the end of this struct, with the same reasoning.
#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
struct ExporterRowTail {
    export_lag_s: Option<(u64, u64)>,
}

fn encode_exporter(s: &ExporterStats) -> Vec<u8> {
    let mut bytes = postcard::to_stdvec(s).unwrap_or_default();
    let tail = ExporterRowTail {
        export_lag_s: s.export_lag_s,
    };
    bytes.extend(postcard::to_stdvec(&tail).unwrap_or_default());
    bytes
}

fn decode_exporter(bytes: &[u8]) -> Option<ExporterStats> {
    let (mut s, rest) = postcard::take_from_bytes::<ExporterStats>(bytes).ok()?;
    let tail: ExporterRowTail = postcard::from_bytes(rest).unwrap_or_default();
    s.export_lag_s = tail.export_lag_s;
    Some(s)
}

/// Exporter health as last persisted (rows of an older layout are skipped).
pub fn load_exporters(reader: &Reader) -> Result<Vec<ExporterStats>, StoreError> {
    Ok(reader
        .state_rows(EXPORTERS)?
        .into_iter()
        .filter_map(|(_, v)| decode_exporter(&v))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stats() -> ExporterStats {
        ExporterStats {
            exporter: "192.0.2.1:2055".into(),
            records: 42,
            export_lag_s: Some((1800, 15)),
            ..ExporterStats::default()
        }
    }

    #[test]
    fn the_tail_round_trips_and_rows_from_before_it_still_read() {
        assert_eq!(decode_exporter(&encode_exporter(&stats())), Some(stats()));
        // A row written before the tail existed: the stats alone.
        let old = postcard::to_stdvec(&stats()).unwrap_or_default();
        let read = decode_exporter(&old);
        assert_eq!(read.as_ref().map(|s| (s.records, s.export_lag_s)), Some((42, None)));
        // What an older version reads of a new row: the stats, the tail ignored.
        let older: Option<ExporterStats> = postcard::from_bytes(&encode_exporter(&stats())).ok();
        assert_eq!(older.map(|s| s.records), Some(42));
        // Damage is skipped, not a panic.
        assert_eq!(decode_exporter(&[0xff; 3]), None);
    }
}
