//! The one template cache: compiled layouts per exporter session (transport
//! address, version, observation domain / source id) and template id, bounded
//! per session and in total, and persisted so that a restart loses no data whose
//! templates the exporter does not resend.
//!
//! Definitions and removals are queued (one pending change per key) and handed
//! to the store in the next state commit (`templates` table, key
//! `w1|ADDR|VERSION|DOMAIN|TID`, value: the postcard-encoded [`TemplateSpec`]).
//! At start the table is loaded back; rows of another format (netflow_parser's,
//! before 0.1's own wire layer) are removed and counted.

use super::layout::Layout;
use super::wire::TemplateSpec;
use crate::fasthash::FxHashMap;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

/// One pending change for the state database: key and new payload (None = removed).
pub type TemplateChange = (String, Option<Vec<u8>>);

/// Where template ids are valid: one exporter session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Scope {
    pub exporter: SocketAddr,
    pub version: u16,
    pub domain: u32,
}

fn key(s: &Scope, tid: u16) -> String {
    format!("w1|{}|{}|{}|{tid}", s.exporter, s.version, s.domain)
}

fn parse_key(k: &str) -> Option<(Scope, u16)> {
    let mut it = k.split('|');
    if it.next()? != "w1" {
        return None;
    }
    let scope = Scope {
        exporter: it.next()?.parse().ok()?,
        version: it.next()?.parse().ok()?,
        domain: it.next()?.parse().ok()?,
    };
    let tid = it.next()?.parse().ok()?;
    it.next().is_none().then_some((scope, tid))
}

#[derive(Debug, Default)]
struct Session {
    /// Layout and the tick of its last (re)definition.
    templates: FxHashMap<u16, (Arc<Layout>, u64)>,
    last: u64,
}

/// Bounds of the cache.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub sessions: usize,
    pub per_session: usize,
    pub total: usize,
}

#[derive(Debug)]
pub struct TemplateCache {
    sessions: FxHashMap<Scope, Session>,
    limits: Limits,
    total: usize,
    tick: u64,
    changes: HashMap<String, Option<Vec<u8>>>,
    /// Templates forgotten to make room (least recently defined first).
    pub evicted: u64,
    /// Persisted rows that could not be read back (other format, damaged).
    pub unreadable: u64,
}

impl TemplateCache {
    /// Start from the rows of the state file's `templates` table.
    pub fn load(rows: impl IntoIterator<Item = (String, Vec<u8>)>, limits: Limits) -> TemplateCache {
        let mut c = TemplateCache {
            sessions: FxHashMap::default(),
            limits,
            total: 0,
            tick: 0,
            changes: HashMap::new(),
            evicted: 0,
            unreadable: 0,
        };
        for (k, v) in rows {
            let parsed = parse_key(&k).and_then(|(scope, tid)| {
                let spec = postcard::from_bytes::<TemplateSpec>(&v).ok()?;
                Some((scope, tid, Layout::compile(spec)?))
            });
            match parsed {
                Some((scope, tid, layout)) => {
                    c.insert(scope, tid, Arc::new(layout));
                }
                None => {
                    c.unreadable += 1;
                    c.changes.insert(k, None);
                }
            }
        }
        // Loading is not a change; only removals of unreadable rows are.
        c.changes.retain(|_, v| v.is_none());
        c
    }

    /// The layout of template `tid` in `scope`.
    #[inline]
    pub fn get(&self, scope: &Scope, tid: u16) -> Option<Arc<Layout>> {
        self.sessions.get(scope)?.templates.get(&tid).map(|(l, _)| l.clone())
    }

    /// (Re)define a template. Returns its layout, or None when the template has
    /// nothing to read (then any previous definition is withdrawn).
    pub fn define(&mut self, scope: Scope, tid: u16, spec: TemplateSpec) -> Option<Arc<Layout>> {
        let Some(layout) = Layout::compile(spec) else {
            self.withdraw(&scope, tid);
            return None;
        };
        self.tick += 1;
        let tick = self.tick;
        if let Some(s) = self.sessions.get_mut(&scope)
            && let Some((old, stamp)) = s.templates.get_mut(&tid)
            && old.spec == layout.spec
        {
            *stamp = tick;
            s.last = tick;
            return Some(old.clone());
        }
        let bytes = postcard::to_stdvec(&layout.spec).ok();
        let layout = Arc::new(layout);
        self.insert(scope, tid, layout.clone());
        if let Some(bytes) = bytes {
            self.changes.insert(key(&scope, tid), Some(bytes));
        }
        Some(layout)
    }

    fn insert(&mut self, scope: Scope, tid: u16, layout: Arc<Layout>) {
        self.tick += 1;
        let tick = self.tick;
        if !self.sessions.contains_key(&scope) && self.sessions.len() >= self.limits.sessions {
            self.evict_session();
        }
        let (new, len) = {
            let s = self.sessions.entry(scope).or_default();
            (!s.templates.contains_key(&tid), s.templates.len())
        };
        if new && len >= self.limits.per_session {
            self.evict_oldest_in(&scope);
        } else if new && self.total >= self.limits.total {
            // Full in total: the least recently active other session gives one up.
            let other = self
                .sessions
                .iter()
                .filter(|(k, s)| **k != scope && !s.templates.is_empty())
                .min_by_key(|(_, s)| s.last)
                .map(|(k, _)| *k);
            match other {
                Some(o) => self.evict_oldest_in(&o),
                None => self.evict_oldest_in(&scope),
            }
        }
        let s = self.sessions.entry(scope).or_default();
        s.last = tick;
        if s.templates.insert(tid, (layout, tick)).is_none() {
            self.total += 1;
        }
    }

    fn evict_oldest_in(&mut self, scope: &Scope) {
        let Some(s) = self.sessions.get_mut(scope) else { return };
        let Some(tid) = s.templates.iter().min_by_key(|(_, (_, t))| *t).map(|(k, _)| *k) else {
            return;
        };
        s.templates.remove(&tid);
        self.total -= 1;
        self.evicted += 1;
        self.changes.insert(key(scope, tid), None);
    }

    fn evict_session(&mut self) {
        let Some(scope) = self.sessions.iter().min_by_key(|(_, s)| s.last).map(|(k, _)| *k) else {
            return;
        };
        if let Some(s) = self.sessions.remove(&scope) {
            self.total -= s.templates.len();
            self.evicted += s.templates.len() as u64;
            for tid in s.templates.keys() {
                self.changes.insert(key(&scope, *tid), None);
            }
        }
    }

    /// An IPFIX withdrawal of one template.
    pub fn withdraw(&mut self, scope: &Scope, tid: u16) {
        if let Some(s) = self.sessions.get_mut(scope)
            && s.templates.remove(&tid).is_some()
        {
            self.total -= 1;
            self.changes.insert(key(scope, tid), None);
        }
    }

    /// An IPFIX withdrawal of all data (or all options) templates of a session.
    pub fn withdraw_all(&mut self, scope: &Scope, options: bool) {
        let Some(s) = self.sessions.get_mut(scope) else { return };
        let gone: Vec<u16> = s
            .templates
            .iter()
            .filter(|(_, (l, _))| l.spec.options == options)
            .map(|(k, _)| *k)
            .collect();
        for tid in gone {
            s.templates.remove(&tid);
            self.total -= 1;
            self.changes.insert(key(scope, tid), None);
        }
    }

    /// Changes since the last call, for the state commit.
    pub fn take_changes(&mut self) -> Vec<TemplateChange> {
        let mut v: Vec<TemplateChange> = self.changes.drain().collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }

    /// Templates held.
    pub fn len(&self) -> usize {
        self.total
    }

    pub fn is_empty(&self) -> bool {
        self.total == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decode::wire::FieldSpec;

    fn spec(len: u16) -> TemplateSpec {
        TemplateSpec {
            options: false,
            scope_fields: 0,
            fields: vec![FieldSpec {
                ie: 1,
                pen: 0,
                len,
                scope: false,
            }],
        }
    }

    fn scope(port: u16) -> Scope {
        Scope {
            exporter: SocketAddr::from(([192, 0, 2, 1], port)),
            version: 10,
            domain: 7,
        }
    }

    const LIMITS: Limits = Limits {
        sessions: 2,
        per_session: 3,
        total: 5,
    };

    #[test]
    fn definitions_persist_and_load_back() {
        let mut c = TemplateCache::load(Vec::new(), LIMITS);
        assert!(c.define(scope(1), 256, spec(4)).is_some());
        // The same definition again is not a change.
        let changes = c.take_changes();
        c.define(scope(1), 256, spec(4));
        assert!(c.take_changes().is_empty());
        assert_eq!(changes.len(), 1);
        assert_eq!(changes[0].0, "w1|192.0.2.1:1|10|7|256");
        let mut rows: Vec<(String, Vec<u8>)> = changes.into_iter().filter_map(|(k, v)| Some((k, v?))).collect();
        rows.push(("3|1|256".into(), vec![1, 2, 3]));
        let mut back = TemplateCache::load(rows, LIMITS);
        assert_eq!(back.get(&scope(1), 256).map(|l| l.spec.clone()), Some(spec(4)));
        assert_eq!(back.unreadable, 1);
        assert_eq!(back.take_changes(), vec![("3|1|256".to_string(), None)]);
    }

    #[test]
    fn bounded_per_session_in_total_and_in_sessions() {
        let mut c = TemplateCache::load(Vec::new(), LIMITS);
        for tid in 256..262 {
            c.define(scope(1), tid, spec(4));
        }
        assert_eq!(c.len(), 3);
        assert!(c.get(&scope(1), 256).is_none() && c.get(&scope(1), 261).is_some());
        for tid in 256..259 {
            c.define(scope(2), tid, spec(4));
        }
        assert!(c.len() <= 5);
        // A third session evicts the least recently active one.
        c.define(scope(3), 256, spec(4));
        assert!(c.get(&scope(1), 261).is_none());
        assert!(c.get(&scope(3), 256).is_some());
        assert!(c.evicted >= 4);
        let removed = c.take_changes().into_iter().filter(|(_, v)| v.is_none()).count();
        assert!(removed >= 3);
    }

    #[test]
    fn withdrawals() {
        let mut c = TemplateCache::load(Vec::new(), LIMITS);
        c.define(scope(1), 256, spec(4));
        c.define(scope(1), 257, spec(8));
        c.withdraw(&scope(1), 256);
        assert!(c.get(&scope(1), 256).is_none());
        c.withdraw_all(&scope(1), false);
        assert!(c.is_empty());
        assert!(c.define(scope(1), 258, spec(0)).is_none());
    }
}
