//! The decoder's settings: what `[collector]`, `[network]` and `[[exporter]]`
//! say about decoding, assembled by the configuration.

use crate::net::IpNet;
use serde::Deserialize;
use std::net::IpAddr;

/// How a configured sampling rate combines with what the exporter announces.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum SamplingMode {
    /// Used when the exporter announces no rate.
    #[default]
    Default,
    /// Always used, whatever the exporter announces.
    Force,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ExporterOverride {
    /// Exporter IP address (any source port).
    pub address: IpAddr,
    pub sampling_rate: Option<u32>,
    #[serde(default)]
    pub sampling_mode: SamplingMode,
    /// Human label shown in the exporters table.
    pub name: Option<String>,
}

/// Everything the decoder needs.
#[derive(Debug, Clone, PartialEq)]
pub struct DecoderSettings {
    /// Exporter sessions tracked at once (template scopes).
    pub max_exporters: usize,
    /// Data sets held per exporter while their template is unknown, and for how long.
    pub pending_per_exporter: usize,
    pub pending_ttl_ms: u64,
    /// The site's internal networks (flow direction).
    pub internal: Vec<IpNet>,
    /// Per-exporter sampling overrides and names.
    pub overrides: Vec<ExporterOverride>,
    /// Flows further than this from their export time are clamped.
    pub max_clock_skew_ms: u64,
}
