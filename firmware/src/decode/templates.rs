//! Template persistence: netflow_parser's `TemplateStore` backed by the state
//! database, so a restart loses no data whose templates the exporter does not resend.
//!
//! The parser writes templates through to this store and reads it on a cache
//! miss. All entries live in memory (bounded); changes are queued and handed to
//! the store writer, which commits them to the state file's `templates` table.
//! At start the table is loaded back in.

use netflow_parser::template_store::{TemplateKind, TemplateStore, TemplateStoreError, TemplateStoreKey};
use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

/// One pending change for the state database: key and new payload (None = removed).
pub type TemplateChange = (String, Option<Vec<u8>>);

#[derive(Debug, Default)]
struct Inner {
    map: HashMap<String, Vec<u8>>,
    changes: Vec<TemplateChange>,
}

/// In-memory mirror of the persisted templates.
#[derive(Debug)]
pub struct PersistentTemplates {
    inner: Mutex<Inner>,
    cap: usize,
    /// Puts refused because `cap` entries are held.
    pub refused: AtomicU64,
}

fn kind_code(kind: TemplateKind) -> u8 {
    match kind {
        TemplateKind::V9Data => 1,
        TemplateKind::V9Options => 2,
        TemplateKind::IpfixData => 3,
        TemplateKind::IpfixOptions => 4,
        TemplateKind::IpfixV9Data => 5,
        TemplateKind::IpfixV9Options => 6,
        _ => 255,
    }
}

/// The string key used in the state database.
pub fn key_string(key: &TemplateStoreKey) -> String {
    format!("{}|{}|{}", key.scope, kind_code(key.kind), key.template_id)
}

impl PersistentTemplates {
    /// Start from entries loaded from the state database.
    pub fn new(loaded: impl IntoIterator<Item = (String, Vec<u8>)>, cap: usize) -> Self {
        PersistentTemplates {
            inner: Mutex::new(Inner {
                map: loaded.into_iter().collect(),
                changes: Vec::new(),
            }),
            cap,
            refused: AtomicU64::new(0),
        }
    }

    /// Changes since the last call, for the store writer.
    pub fn take_changes(&self) -> Vec<TemplateChange> {
        match self.inner.lock() {
            Ok(mut g) => std::mem::take(&mut g.changes),
            Err(_) => Vec::new(),
        }
    }

    /// Number of templates held.
    pub fn len(&self) -> usize {
        self.inner.lock().map(|g| g.map.len()).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

fn poisoned() -> TemplateStoreError {
    TemplateStoreError::Backend("template store lock poisoned".into())
}

impl TemplateStore for PersistentTemplates {
    fn get(&self, key: &TemplateStoreKey) -> Result<Option<Vec<u8>>, TemplateStoreError> {
        let g = self.inner.lock().map_err(|_| poisoned())?;
        Ok(g.map.get(&key_string(key)).cloned())
    }

    fn put(&self, key: &TemplateStoreKey, value: &[u8]) -> Result<(), TemplateStoreError> {
        let mut g = self.inner.lock().map_err(|_| poisoned())?;
        let k = key_string(key);
        if g.map.get(&k).is_some_and(|v| v == value) {
            return Ok(());
        }
        if g.map.len() >= self.cap && !g.map.contains_key(&k) {
            self.refused.fetch_add(1, Ordering::Relaxed);
            return Err(TemplateStoreError::Backend("template store full".into()));
        }
        g.map.insert(k.clone(), value.to_vec());
        g.changes.push((k, Some(value.to_vec())));
        Ok(())
    }

    fn remove(&self, key: &TemplateStoreKey) -> Result<(), TemplateStoreError> {
        let mut g = self.inner.lock().map_err(|_| poisoned())?;
        let k = key_string(key);
        if g.map.remove(&k).is_some() {
            g.changes.push((k, None));
        }
        Ok(())
    }
}
