//! `flowwarden backup` / `restore`: a replacement box gets the configuration,
//! certificates, accounts, alerts and baselines of the old one, not its flows;
//! a wrong passphrase or a changed file restores nothing; a restore while the
//! appliance runs waits for its next start.

mod common;

use flowwarden::backup::TableRows;
use flowwarden::store::DataDir;
use flowwarden::store::reader::Reader;
use flowwarden::store::schema::{ALERTS, DETECT_STATE, TOKENS, USERS};
use redb::TableHandle;
use std::ffi::OsStr;
use std::path::Path;

type R = Result<(), Box<dyn std::error::Error>>;

fn os(s: &str) -> &OsStr {
    OsStr::new(s)
}

const PASS: &str = "branch office 42 passphrase";

fn rows(dir: &Path, t: redb::TableDefinition<&str, &[u8]>) -> Result<TableRows, Box<dyn std::error::Error>> {
    Ok(Reader::new(DataDir::new(dir)).state_rows(t)?)
}

/// `flowwarden backup|restore --data-dir DIR FILE` with `input` on stdin; (ok, stdout, stderr).
fn backup(dir: &OsStr, file: &OsStr, input: &str) -> (bool, String, String) {
    common::cli_stdin(&[os("backup"), os("--data-dir"), dir, file], input)
}

fn restore(dir: &OsStr, file: &OsStr, input: &str) -> (bool, String, String) {
    common::cli_stdin(&[os("restore"), os("--data-dir"), dir, file], input)
}

fn mode(p: &Path) -> Result<u32, Box<dyn std::error::Error>> {
    use std::os::unix::fs::PermissionsExt;
    Ok(std::fs::metadata(p)?.permissions().mode() & 0o777)
}

/// A box that has been running: a web certificate, a configuration with a key
/// file beside it, a user, a token, flows and what the detectors learned.
fn old_box(dir: &Path) -> R {
    drop(common::Running::start(dir, &[]));
    std::fs::write(dir.join("flowwarden.toml"), "[network]\ninternal = [\"10.0.0.0/8\"]\n")?;
    std::fs::create_dir_all(dir.join("pki"))?;
    std::fs::write(
        dir.join("pki/siem-ca.pem"),
        "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n",
    )?;
    let (ok, _, err) = common::user_set(dir, "tech", "admin", "a long enough password\n");
    assert!(ok, "{err}");
    let (ok, _, err) = common::token_create(dir, "prometheus", "metrics");
    assert!(ok, "{err}");
    let pcap = common::captures().join("exported/fprobe_v5_loopback_beacon_scan_q10000.pcap");
    let (ok, _, err) = common::cli(&[os("ingest"), os("--data-dir"), dir.as_os_str(), pcap.as_os_str()]);
    assert!(ok, "{err}");
    Ok(())
}

#[test]
fn a_replacement_box_gets_everything_but_the_flows() -> R {
    let (a, t, f) = (tempfile::tempdir()?, tempfile::tempdir()?, tempfile::tempdir()?);
    old_box(a.path())?;
    // The replacement box's data directory does not exist yet.
    let b = t.path().join("new-box");
    let b = b.as_path();
    assert!(!common::read_all(a.path()).is_empty());
    let file = f.path().join("old-box.fwbk");
    let (ok, out, err) = backup(a.path().as_os_str(), file.as_os_str(), &format!("{PASS}\n"));
    assert!(ok, "{err}");
    assert!(
        out.starts_with(&format!("flowwarden: backup written to {} (", file.display()))
            && out.contains("(configuration included); 1 user(s), 1 token(s), "),
        "{out}"
    );
    assert_eq!(mode(&file)?, 0o600);
    // The key material is not readable in the file.
    let sealed = std::fs::read(&file)?;
    let key = std::fs::read(a.path().join("web/key.pem"))?;
    assert!(!sealed.windows(40).any(|w| key.windows(40).any(|k| k == w)));

    // A wrong passphrase restores nothing and says so.
    let (ok, _, err) = restore(b.as_os_str(), file.as_os_str(), "not the passphrase\n");
    assert!(!ok);
    assert!(
        err.contains("wrong passphrase, or the file was changed after it was written"),
        "{err}"
    );
    assert!(!b.exists(), "a refused restore created the data directory");

    let (ok, out, err) = restore(b.as_os_str(), file.as_os_str(), &format!("{PASS}\n"));
    assert!(ok, "{err}");
    assert!(
        out.starts_with(&format!("flowwarden: restored from {} (made ", file.display())),
        "{out}"
    );
    for t in [USERS, TOKENS, ALERTS, DETECT_STATE] {
        assert_eq!(rows(a.path(), t)?, rows(b, t)?, "table {}", t.name());
    }
    assert!(!rows(b, DETECT_STATE)?.is_empty(), "no detector state to carry over");
    for f in ["flowwarden.toml", "pki/siem-ca.pem", "web/cert.pem", "web/key.pem"] {
        assert_eq!(std::fs::read(a.path().join(f))?, std::fs::read(b.join(f))?, "{f}");
        assert_eq!(mode(&a.path().join(f))?, mode(&b.join(f))?, "{f}");
    }
    assert_eq!(mode(&b.join("web/key.pem"))?, 0o600);
    assert!(common::read_all(b).is_empty(), "flows came along");
    // The restored user can be listed (and logs in with the old password: the hash came along).
    let (ok, out, _) = common::cli(&[os("user"), os("list"), os("--data-dir"), b.as_os_str()]);
    assert!(ok && out.contains("tech"), "{out}");
    Ok(())
}

#[test]
fn a_restore_while_the_appliance_runs_is_applied_at_its_next_start() -> R {
    let (a, c) = (tempfile::tempdir()?, tempfile::tempdir()?);
    old_box(a.path())?;
    let file = c.path().join("old.fwbk");
    let (ok, _, err) = backup(a.path().as_os_str(), file.as_os_str(), &format!("{PASS}\n"));
    assert!(ok, "{err}");
    let new = c.path().join("box");
    let fw = common::Running::start(&new, &[]);
    let (ok, out, err) = restore(new.as_os_str(), file.as_os_str(), &format!("{PASS}\n"));
    assert!(ok, "{err}");
    assert!(
        out.contains(" staged in ") && out.contains("is in use (pid ") && out.contains("applies the restore when it next starts"),
        "{out}"
    );
    assert!(rows(&new, USERS)?.is_empty(), "applied under the running appliance");
    let (st, _) = fw.stop();
    assert!(st.success());
    let fw = common::Running::start(&new, &[]);
    let (st, _) = fw.stop();
    assert!(st.success());
    assert!(!new.join(flowwarden::backup::PENDING).exists(), "the staged restore is still there");
    assert_eq!(rows(a.path(), USERS)?, rows(&new, USERS)?);
    // What the detectors learned came along; their "status" row is what the restarted
    // engine reports live (sessions in memory are not part of the state).
    let learned = |d: &Path| -> Result<TableRows, Box<dyn std::error::Error>> {
        Ok(rows(d, DETECT_STATE)?.into_iter().filter(|(k, _)| k != "status").collect())
    };
    assert!(!learned(a.path())?.is_empty());
    assert_eq!(learned(a.path())?, learned(&new)?);
    Ok(())
}

#[test]
fn a_changed_or_foreign_file_is_refused_by_name() -> R {
    let a = tempfile::tempdir()?;
    old_box(a.path())?;
    let file = a.path().join("b.fwbk");
    let (ok, _, err) = backup(a.path().as_os_str(), file.as_os_str(), &format!("{PASS}\n"));
    assert!(ok, "{err}");
    let mut bytes = std::fs::read(&file)?;
    let n = bytes.len();
    bytes[n / 2] ^= 0x10;
    std::fs::write(&file, &bytes)?;
    let target = a.path().join("target");
    let (ok, _, err) = restore(target.as_os_str(), file.as_os_str(), &format!("{PASS}\n"));
    assert!(!ok && err.contains("the file was changed after it was written"), "{err}");
    std::fs::write(&file, b"PK\x03\x04 a zip file")?;
    let (ok, _, err) = restore(target.as_os_str(), file.as_os_str(), &format!("{PASS}\n"));
    assert!(!ok && err.contains("not a flowwarden backup"), "{err}");
    assert!(!target.exists(), "a refused restore created the data directory");
    // Too short a passphrase for a new backup.
    let (ok, _, err) = backup(a.path().as_os_str(), file.as_os_str(), "short\n");
    assert!(!ok && err.contains("a backup needs at least 12"), "{err}");
    Ok(())
}
