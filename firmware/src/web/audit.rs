//! The page's audit trail: every login, failure, lockout, logout, account
//! change and admin action becomes one event, logged (target `audit`) and kept
//! in a bounded ring shown on `/system` (the oldest falls out first).

use crate::forward::event::AuditRecord;
use serde::Serialize;
use std::collections::VecDeque;
use std::sync::Mutex;

/// Events kept for `/system`.
pub const KEPT: usize = 256;

/// An audit event as kept for `/system`: when, and what the SIEM gets too.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AuditEvent {
    pub at_ms: u64,
    #[serde(flatten)]
    pub record: AuditRecord,
}

#[derive(Default)]
pub struct Audit {
    ring: Mutex<VecDeque<AuditEvent>>,
}

impl Audit {
    pub fn record(&self, e: AuditEvent) {
        let r = &e.record;
        tracing::info!(target: "audit", "{} by {} from {}: {}", r.action, r.actor, r.addr, r.detail);
        let mut r = self.ring.lock().unwrap_or_else(|p| p.into_inner());
        if r.len() >= KEPT {
            r.pop_front();
        }
        r.push_back(e);
    }

    /// The kept events, newest first.
    pub fn recent(&self) -> Vec<AuditEvent> {
        self.ring.lock().unwrap_or_else(|p| p.into_inner()).iter().rev().cloned().collect()
    }
}
