//! The store's settings (`[storage]` in the configuration file), read by the
//! configuration and handed to the store; the store knows nothing else of it.

use crate::units::{SizeSpec, Span};
use serde::Deserialize;

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct StorageConfig {
    /// Byte budget for everything under the data directory.
    pub budget: SizeSpec,
    /// After eviction, use falls to this share of the budget (percent).
    pub low_watermark_percent: f64,
    /// Optional age cap for raw flows.
    pub max_age: Option<Span>,
    /// Time span of one flow segment file.
    pub segment_span: Span,
    /// Commit at least this often.
    pub commit_interval: Span,
    /// Flows per compressed block.
    pub block_flows: usize,
    /// zstd level for flow blocks (1: measured 12.3 B/flow at 515 k flows/s on one core; 3: 11.5 B/flow at 449 k/s).
    pub compression_level: i32,
    /// Retention of per-minute roll-ups.
    pub minute_rollup_retention: Span,
    /// Retention of per-hour roll-ups.
    pub hour_rollup_retention: Span,
    /// Entries kept per top-N roll-up.
    pub top_entries: usize,
    /// Share of the budget (percent) the roll-up file may use; past it the
    /// oldest roll-ups go first, before their retention.
    pub rollup_budget_percent: f64,
}

impl Default for StorageConfig {
    fn default() -> Self {
        StorageConfig {
            budget: SizeSpec::Percent(85.0),
            low_watermark_percent: 95.0,
            max_age: None,
            segment_span: Span(3_600_000),
            commit_interval: Span(1000),
            block_flows: 8192,
            compression_level: 1,
            minute_rollup_retention: Span(35 * 86_400_000),
            hour_rollup_retention: Span(400 * 86_400_000),
            top_entries: 100,
            rollup_budget_percent: 20.0,
        }
    }
}
