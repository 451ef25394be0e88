//! Helpers shared by the integration tests: where the shared captures are,
//! ingesting through the real pipeline, reading everything back.
#![allow(dead_code)]

use flowwarden::config::Config;
use flowwarden::flow::FlowRecord;
use flowwarden::pipeline::{Backpressure, Pipeline, PipelineReport};
use flowwarden::store::DataDir;
use flowwarden::store::reader::Reader;
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};

/// ../shared/captures relative to the workspace root. Absent material is a failure, not a skip.
pub fn captures() -> PathBuf {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/captures");
    assert!(
        p.is_dir(),
        "test captures not found at {} (the repository must sit beside ../shared)",
        p.display()
    );
    p
}

pub fn ingest(cfg: &Config, dir: &Path, files: &[PathBuf]) -> PipelineReport {
    let mut p = Pipeline::open(cfg, dir, Backpressure::Block).unwrap_or_else(|e| panic!("open {}: {e}", dir.display()));
    for f in files {
        flowwarden::capture::read_capture(f, |d| p.datagram(d.src, d.ts_ms, d.payload)).unwrap_or_else(|e| panic!("{e}"));
    }
    p.finish()
}

pub fn read_all(dir: &Path) -> Vec<FlowRecord> {
    let mut out = Vec::new();
    Reader::new(DataDir::new(dir))
        .scan(0, u64::MAX, |f| {
            out.push(f.clone());
            ControlFlow::Continue(())
        })
        .unwrap_or_else(|e| panic!("scan {}: {e}", dir.display()));
    out
}

/// A config with a small fixed budget suitable for tests.
pub fn test_config() -> Config {
    let mut c = Config::default();
    c.storage.budget = flowwarden::config::SizeSpec::Bytes(256 << 20);
    c
}

/// Path of the built `flowwarden` binary.
pub fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_flowwarden"))
}
