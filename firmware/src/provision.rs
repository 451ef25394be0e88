//! First-boot provisioning: a `flowwarden-provision.toml` on the ESP (the image's
//! /boot/efi) or in the data directory is applied once when `run` starts, before
//! the configuration is read, then removed. It holds the configuration file's own
//! tables (written as the data directory's `flowwarden.toml`), `[[user]]` entries
//! with an argon2id hash (`name`, `role`, `hash`: never a plain password) and
//! `[[file]]` entries that put PEM files into the data directory (`path` relative to
//! it, `contents`). Everything is checked before anything is written; a file that
//! fails a check is renamed `….rejected` with the reason on the console, and nothing
//! of it is applied. What was applied becomes an audit event.

use crate::accounts::{AccountChange, AccountRows, User, UserRole};
use crate::config::Config;
use crate::store::DataDir;
use crate::store::reader::Reader;
use serde::Deserialize;
use std::path::{Component, Path, PathBuf};
use thiserror::Error;

pub const FILE: &str = "flowwarden-provision.toml";

#[derive(Debug, Error)]
pub enum ProvisionError {
    #[error("{path}: {message}")]
    Invalid { path: PathBuf, message: String },
    #[error("{path}: cannot {what}: {source}")]
    Io {
        path: PathBuf,
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ProvUser {
    name: String,
    role: String,
    hash: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ProvFile {
    path: String,
    contents: String,
}

/// What a provisioning file asks for, checked.
#[derive(Debug)]
pub struct Plan {
    pub source: PathBuf,
    /// The configuration file's text (the provisioning file without `[[user]]`/`[[file]]`).
    pub config: Option<String>,
    pub users: Vec<(String, User)>,
    pub files: Vec<(PathBuf, String)>,
}

/// Reads and checks a provisioning file against the data directory it is for.
pub fn plan(source: &Path, data_dir: &Path, now_ms: u64) -> Result<Plan, ProvisionError> {
    let invalid = |message: String| ProvisionError::Invalid {
        path: source.to_path_buf(),
        message,
    };
    let text = std::fs::read_to_string(source).map_err(|e| ProvisionError::Io {
        path: source.to_path_buf(),
        what: "read it",
        source: e,
    })?;
    let mut table: toml::Table = text.parse().map_err(|e: toml::de::Error| invalid(e.to_string()))?;
    let users: Vec<ProvUser> = match table.remove("user") {
        Some(v) => v.try_into().map_err(|e: toml::de::Error| invalid(format!("[[user]]: {e}")))?,
        None => Vec::new(),
    };
    let files: Vec<ProvFile> = match table.remove("file") {
        Some(v) => v.try_into().map_err(|e: toml::de::Error| invalid(format!("[[file]]: {e}")))?,
        None => Vec::new(),
    };
    let config = if table.is_empty() {
        None
    } else {
        let text = toml::to_string(&table).map_err(|e| invalid(e.to_string()))?;
        Config::parse(&text, source).map_err(|e| invalid(format!("configuration: {e}")))?;
        Some(text)
    };
    let mut out_users = Vec::new();
    for u in users {
        crate::accounts::check_name(&u.name).map_err(|e| invalid(format!("[[user]] {:?}: {e}", u.name)))?;
        let role = match u.role.as_str() {
            "admin" => UserRole::Admin,
            "viewer" => UserRole::Viewer,
            other => return Err(invalid(format!("[[user]] {:?}: role {other:?}: expected admin or viewer", u.name))),
        };
        if !u.hash.starts_with("$argon2id$") || argon2::PasswordHash::new(&u.hash).is_err() {
            return Err(invalid(format!(
                "[[user]] {:?}: hash is not an argon2id PHC string ($argon2id$v=19$m=…); plain passwords are never accepted here",
                u.name
            )));
        }
        out_users.push((
            u.name,
            User {
                role,
                hash: u.hash,
                changed_ms: now_ms,
            },
        ));
    }
    let mut out_files = Vec::new();
    for f in files {
        let rel = Path::new(&f.path);
        if f.path.is_empty() || rel.components().any(|c| !matches!(c, Component::Normal(_))) {
            return Err(invalid(format!(
                "[[file]] path {:?}: must be relative to the data directory, without .. or /",
                f.path
            )));
        }
        if f.contents.len() > 256 * 1024 {
            return Err(invalid(format!("[[file]] {:?}: more than 256 KiB", f.path)));
        }
        out_files.push((data_dir.join(rel), f.contents));
    }
    Ok(Plan {
        source: source.to_path_buf(),
        config,
        users: out_users,
        files: out_files,
    })
}

/// Writes what the plan asks for; returns a one-line summary for the audit trail.
pub fn apply(plan: &Plan, data_dir: &Path) -> Result<String, ProvisionError> {
    let io = |path: &Path, what: &'static str| {
        let path = path.to_path_buf();
        move |source| ProvisionError::Io { path, what, source }
    };
    for (path, contents) in &plan.files {
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(io(parent, "create the directory"))?;
        }
        // Keys and anything else that could be secret: owner only.
        let mode = if contents.contains("PRIVATE KEY") { 0o600 } else { 0o644 };
        crate::fsutil::write_atomic(path, contents.as_bytes(), mode).map_err(|e| ProvisionError::Invalid {
            path: path.clone(),
            message: e.to_string(),
        })?;
    }
    if !plan.users.is_empty() {
        let data = DataDir::new(data_dir);
        let changes: Vec<AccountChange> = plan
            .users
            .iter()
            .map(|(name, user)| AccountChange::SetUser {
                name: name.clone(),
                user: user.clone(),
            })
            .collect();
        for c in &changes {
            crate::accounts::validate(c, &Reader::new(data.clone())).map_err(|e| ProvisionError::Invalid {
                path: plan.source.clone(),
                message: e.to_string(),
            })?;
        }
        crate::store::commit_state_rows(&data, &mut AccountRows::new(changes)).map_err(|e| ProvisionError::Invalid {
            path: data_dir.to_path_buf(),
            message: format!("cannot store the users: {e}"),
        })?;
    }
    if let Some(text) = &plan.config {
        let dest = data_dir.join(crate::config::SAVED_CONFIG);
        if dest.exists() {
            let kept = dest.with_extension("toml.before-provisioning");
            std::fs::rename(&dest, &kept).map_err(io(&dest, "keep the previous configuration"))?;
        }
        let body = format!(
            "# Written from {} at provisioning; the page's settings edit it from here on.\n{text}",
            plan.source.display()
        );
        crate::fsutil::write_atomic(&dest, body.as_bytes(), 0o644).map_err(|e| ProvisionError::Invalid {
            path: dest.clone(),
            message: e.to_string(),
        })?;
    }
    Ok(format!(
        "applied {}: {}; {} user(s) ({}); {} file(s) ({})",
        plan.source.display(),
        if plan.config.is_some() {
            "configuration written"
        } else {
            "no configuration"
        },
        plan.users.len(),
        plan.users
            .iter()
            .map(|(n, u)| format!("{n} {}", u.role.as_str()))
            .collect::<Vec<_>>()
            .join(", "),
        plan.files.len(),
        plan.files
            .iter()
            .map(|(p, _)| p.strip_prefix(data_dir).unwrap_or(p).display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    ))
}

/// Looks for a provisioning file in `places` (first found wins), applies it once and
/// removes it (a rejected one is renamed `….rejected`). Returns what happened, for
/// the console; None when there was nothing to do.
pub fn run_pending(data_dir: &Path, places: &[PathBuf], now_ms: u64) -> Option<Result<String, ProvisionError>> {
    let source = places.iter().find(|p| p.is_file())?.clone();
    let result = plan(&source, data_dir, now_ms).and_then(|p| apply(&p, data_dir));
    match &result {
        Ok(summary) => {
            if let Err(e) = std::fs::remove_file(&source) {
                tracing::error!("provisioning: applied, but cannot remove {}: {e}", source.display());
            }
            crate::update::append_event(data_dir, "provisioned", summary);
        }
        Err(e) => {
            let rejected = source.with_extension("toml.rejected");
            let _ = std::fs::rename(&source, &rejected);
            crate::update::append_event(data_dir, "provisioning_rejected", &e.to_string());
        }
    }
    rustix::fs::sync();
    Some(result)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hash() -> String {
        crate::accounts::hash_password("a long enough passphrase").unwrap_or_default()
    }

    #[test]
    fn a_provisioning_file_is_applied_once_then_removed() {
        let d = tempfile::tempdir().unwrap();
        let data = d.path().join("data");
        std::fs::create_dir_all(&data).unwrap();
        let src = d.path().join(FILE);
        let text = format!(
            "[network]\ninternal = [\"10.20.0.0/16\"]\n\n[[user]]\nname = \"ops\"\nrole = \"admin\"\nhash = \"{}\"\n\n\
             [[file]]\npath = \"pki/siem-ca.pem\"\ncontents = \"\"\"-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n\"\"\"\n\n\
             [[file]]\npath = \"pki/client.key\"\ncontents = \"-----BEGIN PRIVATE KEY-----\\nx\\n-----END PRIVATE KEY-----\\n\"\n",
            hash()
        );
        std::fs::write(&src, &text).unwrap();
        let out = run_pending(&data, &[d.path().join("nothing-here.toml"), src.clone()], 1000)
            .unwrap()
            .unwrap();
        assert!(out.contains("1 user(s) (ops admin)") && out.contains("pki/client.key"), "{out}");
        assert!(!src.exists(), "the provisioning file stays");
        let cfg = Config::load(&data.join(crate::config::SAVED_CONFIG)).unwrap();
        assert_eq!(cfg.network.internal.len(), 1);
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(data.join("pki/client.key")).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let users = crate::accounts::load_users(&Reader::new(DataDir::new(&data))).unwrap();
        assert_eq!(users.len(), 1);
        assert_eq!(users[0].0, "ops");
        // Once: nothing left to do.
        assert!(run_pending(&data, &[src], 2000).is_none());
        let events = crate::update::take_events(&data);
        assert_eq!(events.len(), 1);
        assert_eq!(events[0].action, "provisioned");
    }

    #[test]
    fn a_bad_file_is_rejected_whole_and_kept_aside() {
        let d = tempfile::tempdir().unwrap();
        let data = d.path().to_path_buf();
        let src = d.path().join(FILE);
        for (text, why) in [
            ("[[user]]\nname = \"ops\"\nrole = \"admin\"\nhash = \"hunter2\"\n", "argon2id"),
            ("[[user]]\nname = \"ops\"\nrole = \"root\"\nhash = \"$argon2id$x\"\n", "role"),
            ("[[file]]\npath = \"../etc/passwd\"\ncontents = \"x\"\n", "relative"),
            ("[collector]\nbogus = 1\n", "configuration"),
            ("not toml at all [", "TOML"),
        ] {
            let text = format!("[network]\ninternal = [\"10.0.0.0/8\"]\n{text}");
            std::fs::write(&src, text).unwrap();
            let e = run_pending(&data, std::slice::from_ref(&src), 1).unwrap().unwrap_err().to_string();
            assert!(e.contains(why) || (why == "TOML" && e.contains(FILE)), "{why}: {e}");
            assert!(!src.exists() && src.with_extension("toml.rejected").exists());
            assert!(
                !data.join(crate::config::SAVED_CONFIG).exists(),
                "{why}: a rejected file was applied in part"
            );
        }
    }
}
