//! The page's audit trail: every login, failure, lockout, logout, account
//! change and admin action becomes one event, logged (target `audit`) and kept
//! in a bounded ring shown on `/system` (the oldest falls out first).

use serde::Serialize;
use std::collections::VecDeque;
use std::sync::Mutex;

/// Events kept for `/system`.
pub const KEPT: usize = 256;

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AuditEvent {
    pub at_ms: u64,
    /// `login`, `login_failed`, `login_throttled`, `logout`, `setup`, `user_set`, …
    pub action: String,
    /// Who did it (user name, `token:NAME`, or `-` before login).
    pub actor: String,
    /// The source address.
    pub addr: String,
    /// What it concerned and how it ended, in words.
    pub detail: String,
}

#[derive(Default)]
pub struct Audit {
    ring: Mutex<VecDeque<AuditEvent>>,
}

impl Audit {
    pub fn record(&self, e: AuditEvent) {
        tracing::info!(target: "audit", "{} by {} from {}: {}", e.action, e.actor, e.addr, e.detail);
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
