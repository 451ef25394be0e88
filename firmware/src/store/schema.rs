#![allow(clippy::type_complexity)] // redb table types are spelled out on purpose
//! Every redb table flowwarden uses, in one place, with the schema version.
//!
//! Three kinds of file live under the data directory: flow segments
//! (`flows/*.redb`), the long-lived roll-ups (`rollups.redb`) and the state file
//! (`state.redb`: templates, exporter health, settings).

use redb::TableDefinition;

/// Bumped when any table's key or value encoding changes.
pub const SCHEMA_VERSION: u64 = 1;

/// Segment: (first start ms in block, block number) -> block bytes (see `block`).
pub const BLOCKS: TableDefinition<(u64, u64), &[u8]> = TableDefinition::new("blocks");
/// Segment metadata: "schema", "flows", "min_start", "max_start", "max_end".
pub const SEGMENT_META: TableDefinition<&str, u64> = TableDefinition::new("segment_meta");

/// Roll-ups per minute: (minute start ms, dimension kind, dimension key) -> (bytes, packets, flows).
pub const MINUTE: TableDefinition<(u64, u8, &[u8]), (u64, u64, u64)> = TableDefinition::new("minute");
/// Top-N per hour: (hour start ms, top kind, metric) -> postcard `Vec<TopEntry>`.
pub const HOUR_TOP: TableDefinition<(u64, u8, u8), &[u8]> = TableDefinition::new("hour_top");
/// Roll-up file metadata.
pub const ROLLUP_META: TableDefinition<&str, u64> = TableDefinition::new("rollup_meta");

/// State: template key (`w1|ADDR|VERSION|DOMAIN|TID`) -> postcard-encoded template spec.
pub const TEMPLATES: TableDefinition<&str, &[u8]> = TableDefinition::new("templates");
/// State: exporter address -> postcard `ExporterStats`.
pub const EXPORTERS: TableDefinition<&str, &[u8]> = TableDefinition::new("exporters");
/// State: alert id -> JSON `StoredAlert` (suppression group + alert).
pub const ALERTS: TableDefinition<&str, &[u8]> = TableDefinition::new("alerts");
/// State: detector state ("baseline/...", "meta" postcard; "status" JSON).
pub const DETECT_STATE: TableDefinition<&str, &[u8]> = TableDefinition::new("detect_state");
/// State: forwarding spool, (destination name, sequence) -> JSON `forward::event::SpoolEntry`.
pub const SPOOL: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("spool");
/// State: destination name -> postcard `forward::spool::SpoolMeta` (sequence, size, drops).
pub const SPOOL_META: TableDefinition<&str, &[u8]> = TableDefinition::new("spool_meta");
/// State: destination name -> JSON `forward::status::DestState` (as last reported by `run`).
pub const FORWARD_STATE: TableDefinition<&str, &[u8]> = TableDefinition::new("forward_state");
/// State: user name -> postcard `accounts::User` (role, argon2id hash).
pub const USERS: TableDefinition<&str, &[u8]> = TableDefinition::new("users");
/// State: token name -> postcard `accounts::Token` (role, SHA-256 of the token).
pub const TOKENS: TableDefinition<&str, &[u8]> = TableDefinition::new("tokens");
/// State: alert id -> JSON `detect::rows::Ack` (who acknowledged it on the page, and when).
pub const ALERT_ACKS: TableDefinition<&str, &[u8]> = TableDefinition::new("alert_acks");
/// State: named counters and settings ("schema", store counters).
pub const STATE_META: TableDefinition<&str, u64> = TableDefinition::new("state_meta");

/// Minute roll-up dimension kinds.
pub mod dim {
    pub const TOTAL: u8 = 0;
    pub const EXPORTER: u8 = 1;
    pub const IN_INTERFACE: u8 = 2;
    pub const OUT_INTERFACE: u8 = 3;
    pub const PROTOCOL: u8 = 4;
    /// Key: one byte, the flow's [`crate::flow::Direction`] (rows from `meta::DIRECTIONS_FROM` on).
    pub const DIRECTION: u8 = 5;
}

/// Hour top kinds.
pub mod top {
    pub const SRC: u8 = 0;
    pub const DST: u8 = 1;
    pub const CONVERSATION: u8 = 2;
    pub const DST_PORT: u8 = 3;
}

/// Metrics a top list is ranked by.
pub mod metric {
    pub const BYTES: u8 = 0;
    pub const PACKETS: u8 = 1;
    pub const FLOWS: u8 = 2;
}
