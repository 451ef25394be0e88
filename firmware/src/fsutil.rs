//! File replacement shared by the page (configuration saves), PID 1 (the
//! management network's trial marker and rollback) and the certificate keeper:
//! a file is written whole through a temporary file in the same directory,
//! synced, renamed over the old one, and the directory synced, so a power cut
//! leaves either the old file or the new one, never half of either.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// A step of [`write_atomic`] failed; nothing replaced the file.
#[derive(Debug, thiserror::Error)]
#[error("{}: cannot {step}: {source}", path.display())]
pub struct WriteError {
    pub path: PathBuf,
    /// What was being done: "create its directory", "write", "sync", "replace".
    pub step: &'static str,
    #[source]
    pub source: std::io::Error,
}

/// Replace `path` with `bytes`, created with permission bits `mode`, through
/// `NAME.tmp` beside it. The directory is created when missing.
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> Result<(), WriteError> {
    let err = |step, source| WriteError {
        path: path.to_path_buf(),
        step,
        source,
    };
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    std::fs::create_dir_all(dir).map_err(|e| err("create its directory", e))?;
    let mut tmp_name = path.file_name().map(|n| n.to_os_string()).unwrap_or_default();
    tmp_name.push(".tmp");
    let tmp = path.with_file_name(tmp_name);
    // A leftover from a cut-off write may carry other permissions: start afresh.
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)
        .map_err(|e| err("write", e))?;
    f.write_all(bytes).map_err(|e| err("write", e))?;
    f.sync_all().map_err(|e| err("sync", e))?;
    drop(f);
    std::fs::rename(&tmp, path).map_err(|e| err("replace", e))?;
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn replaces_whole_with_the_mode_and_leaves_no_temporary() {
        let d = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let p = d.path().join("sub/flowwarden.toml");
        write_atomic(&p, b"one", 0o600).unwrap_or_else(|e| panic!("{e}"));
        // A leftover temporary with wider permissions does not pass them on.
        std::fs::write(d.path().join("sub/flowwarden.toml.tmp"), "junk").unwrap_or_else(|e| panic!("{e}"));
        write_atomic(&p, b"two", 0o600).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(std::fs::read_to_string(&p).unwrap_or_default(), "two");
        let mode = std::fs::metadata(&p).map(|m| m.permissions().mode() & 0o777).unwrap_or(0);
        assert_eq!(mode, 0o600);
        assert!(!d.path().join("sub/flowwarden.toml.tmp").exists());
    }

    #[test]
    fn a_failure_names_the_file_and_the_step() {
        let d = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        // The target is a directory: the rename cannot replace it.
        let p = d.path().join("taken");
        std::fs::create_dir_all(p.join("inside")).unwrap_or_else(|e| panic!("{e}"));
        let e = write_atomic(&p, b"x", 0o600).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(e.contains("taken: cannot replace"), "{e}");
    }
}
