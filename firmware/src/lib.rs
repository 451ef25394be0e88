//! flowwarden: NetFlow/IPFIX collector, rolling flow store and detectors for
//! branch-office security monitoring. The `flowwarden` binary is a thin shell
//! over this library; see ../README.md for the data flow.

pub mod accounts;
pub mod alert;
pub mod backup;
pub mod capture;
pub mod cli;
pub mod collector;
pub mod config;
pub mod control;
pub mod decode;
#[cfg(feature = "demo")]
pub mod demo;
pub mod detect;
pub mod fasthash;
pub mod flow;
pub mod forward;
pub mod fsutil;
pub mod geo;
pub mod init;
pub mod management;
pub mod metrics;
pub mod net;
pub mod pipeline;
pub mod pki;
pub mod progress;
pub mod provision;
pub mod query;
pub mod store;
pub mod table;
pub mod timefmt;
pub mod units;
pub mod update;
pub mod version;
pub mod web;
