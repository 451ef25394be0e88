//! `user` and `token` (a contract of the web page, issue 13): they work whether
//! or not `run` is running: into the state file directly when it is not, over
//! the owner-only control socket when it is; passwords stored as argon2id,
//! tokens shown once and stored as digests; clear errors for bad input.

mod common;

use flowwarden::accounts::{self, TokenRole, UserRole};
use flowwarden::store::DataDir;
use flowwarden::store::reader::Reader;
use std::ffi::OsStr;
use std::path::Path;

fn os(s: &str) -> &OsStr {
    OsStr::new(s)
}

fn users(dir: &Path) -> Vec<(String, accounts::User)> {
    accounts::load_users(&Reader::new(DataDir::new(dir))).unwrap_or_else(|e| panic!("{e}"))
}

fn user_set(dir: &Path, name: &str, role: &str, pw: &str) -> (bool, String, String) {
    common::user_set(dir, name, role, pw)
}

fn token_create(dir: &Path, name: &str, role: &str) -> (bool, String, String) {
    common::token_create(dir, name, role)
}

#[test]
fn accounts_without_a_running_appliance() {
    let tmp = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    // A data directory that does not exist yet is created (first setup before the first run).
    let dir = tmp.path().join("data");
    let (ok, out, err) = user_set(&dir, "alice", "admin", "correct horse battery\n");
    assert!(ok, "{err}");
    assert_eq!(out.trim(), "flowwarden: user alice set (admin) in the state file");
    let u = users(&dir);
    assert_eq!(u.len(), 1);
    assert_eq!((u[0].0.as_str(), u[0].1.role), ("alice", UserRole::Admin));
    assert!(u[0].1.hash.starts_with("$argon2id$"));
    assert!(accounts::verify_password(&u[0].1.hash, "correct horse battery"));
    // Changing the password and role keeps one user.
    let (ok, _, err) = user_set(&dir, "alice", "viewer", "another long password\r\n");
    assert!(ok, "{err}");
    let u = users(&dir);
    assert_eq!(u.len(), 1);
    assert_eq!(u[0].1.role, UserRole::Viewer);
    assert!(accounts::verify_password(&u[0].1.hash, "another long password"));
    assert!(!accounts::verify_password(&u[0].1.hash, "correct horse battery"));

    // Bad input: clear errors, nothing changed.
    let (ok, _, err) = user_set(&dir, "bob", "admin", "short\n");
    assert!(!ok && err.contains("the password is 5 characters; it needs at least 10"), "{err}");
    let (ok, _, err) = user_set(&dir, "bob", "admin", "");
    assert!(!ok && err.contains("no password on stdin"), "{err}");
    let (ok, _, err) = user_set(&dir, "bob smith", "admin", "long enough pw\n");
    assert!(!ok && err.contains("a name is 1 to 64 characters"), "{err}");
    let (ok, _, err) = user_set(&dir, "bob", "root", "long enough pw\n");
    assert!(!ok && err.contains("invalid value 'root'"), "{err}");
    let (ok, _, err) = common::cli(&[os("user"), os("remove"), os("--data-dir"), dir.as_os_str(), os("bob")]);
    assert!(!ok && err.contains("no user \"bob\""), "{err}");
    assert_eq!(users(&dir).len(), 1);

    // Tokens: printed once, stored as a digest, names unique.
    let (ok, token, err) = token_create(&dir, "prometheus", "metrics");
    assert!(ok, "{err}");
    assert!(err.contains("it is shown only this once"), "{err}");
    let token = token.trim();
    assert!(token.starts_with("fwt_") && token.len() == 68, "{token}");
    let t = accounts::load_tokens(&Reader::new(DataDir::new(&dir))).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(t.len(), 1);
    assert_eq!((t[0].1.role, t[0].1.sha256), (TokenRole::Metrics, accounts::token_digest(token)));
    let (ok, _, err) = token_create(&dir, "prometheus", "viewer");
    assert!(!ok && err.contains("a token named \"prometheus\" exists"), "{err}");
    let (ok, out, _) = common::cli(&[os("token"), os("list"), os("--data-dir"), dir.as_os_str()]);
    assert!(
        ok && out.contains("prometheus") && out.contains("metrics") && !out.contains("fwt_"),
        "{out}"
    );
    let (ok, out, _) = common::cli(&[
        os("user"),
        os("list"),
        os("--data-dir"),
        dir.as_os_str(),
        os("--format"),
        os("json"),
    ]);
    assert!(ok, "{out}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    assert_eq!(v[0]["name"], "alice");
    assert_eq!(v[0]["role"], "viewer");
    assert!(!out.contains("argon2"), "hashes are never shown: {out}");
    let (ok, _, err) = common::cli(&[os("token"), os("remove"), os("--data-dir"), dir.as_os_str(), os("prometheus")]);
    assert!(ok, "{err}");
    assert!(
        accounts::load_tokens(&Reader::new(DataDir::new(&dir)))
            .unwrap_or_default()
            .is_empty()
    );
}

#[test]
fn accounts_through_a_running_appliance() {
    let tmp = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let dir = tmp.path();
    let run = common::Running::start(dir, &[]);
    // The control socket is the owner's only.
    use std::os::unix::fs::PermissionsExt;
    let sock = dir.join("control.sock");
    let mode = std::fs::metadata(&sock).map(|m| m.permissions().mode() & 0o777);
    assert_eq!(mode.ok(), Some(0o600));
    let (ok, out, err) = user_set(dir, "tech", "admin", "a long enough password\n");
    assert!(ok, "{err}");
    assert_eq!(out.trim(), "flowwarden: user tech set (admin) in the running appliance");
    // Committed before the answer: readable at once beside the running writer.
    let u = users(dir);
    assert_eq!(u.len(), 1);
    assert!(accounts::verify_password(&u[0].1.hash, "a long enough password"));
    let (ok, _, err) = common::cli(&[os("user"), os("remove"), os("--data-dir"), dir.as_os_str(), os("nobody")]);
    assert!(!ok && err.contains("no user \"nobody\""), "{err}");
    let (ok, _, err) = token_create(dir, "scripts", "viewer");
    assert!(ok && err.contains("in the running appliance"), "{err}");
    let (status, _) = run.stop();
    assert!(status.success());
    assert!(!sock.exists(), "the socket goes with the appliance");
    // Kept across the restart, and changed directly now that nothing runs.
    assert_eq!(users(dir).len(), 1);
    let (ok, out, err) = common::cli(&[os("user"), os("remove"), os("--data-dir"), dir.as_os_str(), os("tech")]);
    assert!(ok, "{err}");
    assert_eq!(out.trim(), "flowwarden: user tech removed from the state file");
    assert!(users(dir).is_empty());
    let t = accounts::load_tokens(&Reader::new(DataDir::new(dir))).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(t.len(), 1);
}
