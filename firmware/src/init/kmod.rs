//! Kernel module loading for PID 1: the board's modules, already put in
//! dependency order by `cargo xtask image` (it reads each module's `depends=`),
//! loaded one by one with finit_module(2). There is no modprobe in the image.

use std::path::{Path, PathBuf};

/// What happened to one module.
#[derive(Debug)]
pub enum Loaded {
    Loaded,
    AlreadyThere,
    Failed(std::io::Error),
}

pub fn load(path: &Path) -> Loaded {
    let file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) => return Loaded::Failed(e),
    };
    match rustix::system::finit_module(&file, c"", 0) {
        Ok(()) => Loaded::Loaded,
        Err(rustix::io::Errno::EXIST) => Loaded::AlreadyThere,
        Err(e) => Loaded::Failed(e.into()),
    }
}

/// Loads every module in order; returns the failures (the boot goes on without them).
pub fn load_all(paths: &[PathBuf]) -> Vec<(PathBuf, std::io::Error)> {
    let mut failed = Vec::new();
    for p in paths {
        if let Loaded::Failed(e) = load(p) {
            eprintln!("flowwarden-init: module {}: {e}", p.display());
            failed.push((p.clone(), e));
        }
    }
    failed
}
