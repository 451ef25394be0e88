//! Benchmarks (filled in below).
use anyhow::Result;
use std::path::Path;

pub fn bench(_root: &Path, _args: &[String]) -> Result<()> {
    anyhow::bail!("benchmarks are not implemented yet")
}
