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
                let bytes = postcard::to_stdvec(s).unwrap_or_default();
                t.insert(s.exporter.as_str(), bytes.as_slice())?;
            }
        }
        Ok(())
    }
}

/// Persisted templates (key, postcard-encoded template spec).
pub fn load_templates(reader: &Reader) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
    reader.state_rows(TEMPLATES)
}

/// Exporter health as last persisted (rows of an older layout are skipped).
pub fn load_exporters(reader: &Reader) -> Result<Vec<ExporterStats>, StoreError> {
    Ok(reader
        .state_rows(EXPORTERS)?
        .into_iter()
        .filter_map(|(_, v)| postcard::from_bytes::<ExporterStats>(&v).ok())
        .collect())
}
