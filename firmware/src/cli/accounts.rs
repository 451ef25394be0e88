//! `user set|list|remove` and `token create|list|remove`: the web page's
//! accounts. A change goes to a running appliance over its control socket, or,
//! when none runs on the data directory, into the state file directly.

use super::args::{AccountList, AccountName, TableOrJson, TokenAction, UserAction};
use crate::accounts::{self, AccountChange, AccountRows, User};
use crate::control::{self, Reply, Request};
use crate::store::DataDir;
use crate::store::reader::Reader;
use crate::table::{Align, Table};
use anyhow::{Context, Result, bail};
use std::io::{BufRead, IsTerminal, Write};
use std::path::Path;

/// Apply a change where it belongs; returns where it went (for the message).
fn apply(dir: &Path, change: AccountChange) -> Result<&'static str> {
    match control::request(dir, &Request::Accounts(change.clone()))? {
        Some(Reply::Done | Reply::Reloaded(_)) => Ok("the running appliance"),
        Some(Reply::Refused(why)) => bail!("{why}"),
        None => {
            super::writable_data_dir(dir)?;
            let data = DataDir::new(dir);
            accounts::validate(&change, &Reader::new(data.clone()))?;
            crate::store::commit_state_rows(&data, &mut AccountRows::new(vec![change]))
                .with_context(|| format!("cannot change the accounts in {}", dir.display()))?;
            Ok("the state file")
        }
    }
}

/// The new password: stdin's first line when it is not a terminal, else asked twice without echo.
fn read_password() -> Result<String> {
    read_secret("password", true, &|pw| Ok(accounts::check_password(pw)?))
}

/// A secret (`what`: password, passphrase): stdin's first line when it is not a
/// terminal, else asked without echo (twice when `new`, checked by `check` first).
fn read_secret(what: &str, new: bool, check: &dyn Fn(&str) -> Result<()>) -> Result<String> {
    let stdin = std::io::stdin();
    if !stdin.is_terminal() {
        let mut line = String::new();
        stdin
            .lock()
            .read_line(&mut line)
            .with_context(|| format!("cannot read the {what} from stdin"))?;
        let pw = line.strip_suffix('\n').unwrap_or(&line);
        let pw = pw.strip_suffix('\r').unwrap_or(pw);
        if pw.is_empty() {
            bail!("no {what} on stdin (its first line is the {what})");
        }
        return Ok(pw.to_string());
    }
    if !new {
        return prompt_hidden(&format!("The backup's {what}: "));
    }
    let first = prompt_hidden(&format!("New {what}: "))?;
    check(&first)?;
    let second = prompt_hidden(&format!("Same {what} again: "))?;
    if first != second {
        bail!("the two {what}s differ; nothing changed");
    }
    Ok(first)
}

/// `flowwarden backup`: configuration, certificates and state (no flows) in one encrypted file.
pub fn backup(dir: &Path, file: &Path, out: &mut dyn Write) -> Result<()> {
    let data = DataDir::new(dir);
    let archive = crate::backup::collect(&data)?;
    let pass = read_secret("passphrase", true, &|p| {
        let n = p.chars().count();
        if n < crate::backup::MIN_PASSPHRASE {
            bail!(
                "the passphrase is {n} characters; a backup needs at least {}",
                crate::backup::MIN_PASSPHRASE
            );
        }
        Ok(())
    })?;
    let sealed = crate::backup::seal(&archive, &pass, crate::timefmt::now_ms())?;
    crate::fsutil::write_atomic(file, &sealed, 0o600)?;
    writeln!(
        out,
        "flowwarden: backup written to {} ({} bytes, encrypted): {}",
        file.display(),
        sealed.len(),
        archive.summary()
    )?;
    Ok(())
}

/// `flowwarden restore`: applied now when no appliance runs on `dir`, else staged for its next start.
pub fn restore(dir: &Path, file: &Path, out: &mut dyn Write) -> Result<()> {
    let pass = read_secret("passphrase", false, &|_| Ok(()))?;
    let (header, archive) = crate::backup::read(file, &pass)?;
    let data = DataDir::new(dir);
    let from = format!(
        "{} (made {} by {})",
        file.display(),
        crate::timefmt::rfc3339_ms(header.created_ms),
        header.version
    );
    // A replacement box's data directory may not exist yet.
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    match crate::store::WriterLock::take(&data) {
        Ok(lock) => {
            drop(lock);
            crate::backup::restore(&data, &archive)?;
            writeln!(out, "flowwarden: restored from {from}: {}", archive.summary())?;
        }
        Err(crate::store::StoreError::InUse { holder, .. }) => {
            let p = crate::backup::stage(&data, &archive)?;
            writeln!(
                out,
                "flowwarden: restore from {from} staged in {}: {} is in use ({holder}); the appliance applies the restore \
                 when it next starts (restart it; on the image: reboot): {}",
                p.display(),
                dir.display(),
                archive.summary()
            )?;
        }
        Err(e) => return Err(e.into()),
    }
    Ok(())
}

/// Ask on the terminal with echo off (restored even when reading fails).
fn prompt_hidden(prompt: &str) -> Result<String> {
    use rustix::termios::{LocalModes, OptionalActions, tcgetattr, tcsetattr};
    let stdin = std::io::stdin();
    let mut err = std::io::stderr();
    write!(err, "{prompt}")?;
    err.flush()?;
    let saved = tcgetattr(&stdin).context("cannot read the terminal's settings")?;
    let mut quiet = saved.clone();
    quiet.local_modes.remove(LocalModes::ECHO);
    tcsetattr(&stdin, OptionalActions::Now, &quiet).context("cannot turn the terminal's echo off")?;
    let mut line = String::new();
    let read = stdin.lock().read_line(&mut line);
    let _ = tcsetattr(&stdin, OptionalActions::Now, &saved);
    writeln!(err)?;
    read.context("cannot read the password")?;
    Ok(line.trim_end_matches(['\n', '\r']).to_string())
}

/// Names, roles and times as a table or JSON; `cols`: what the name and the time are.
fn list(out: &mut dyn Write, format: TableOrJson, cols: (&str, &str), rows: Vec<(String, &str, u64)>) -> Result<()> {
    let (what, when) = cols;
    match format {
        TableOrJson::Json => {
            let v: Vec<serde_json::Value> = rows
                .iter()
                .map(|(n, role, t)| {
                    let mut m = serde_json::Map::new();
                    m.insert("name".into(), n.as_str().into());
                    m.insert("role".into(), (*role).into());
                    m.insert(when.into(), crate::timefmt::rfc3339_ms(*t).into());
                    serde_json::Value::Object(m)
                })
                .collect();
            writeln!(out, "{}", serde_json::to_string_pretty(&v)?)?;
        }
        TableOrJson::Table => {
            let cap = |s: &str| s[..1].to_uppercase() + &s[1..];
            let (w, c) = (cap(what), cap(when));
            let mut t = Table::new(&[(w.as_str(), Align::Left), ("Role", Align::Left), (c.as_str(), Align::Left)]);
            for (n, role, at) in rows {
                t.row(vec![n, role.into(), crate::timefmt::rfc3339_ms(at)]);
            }
            t.write(out)?;
        }
    }
    Ok(())
}

pub fn user(action: UserAction, out: &mut dyn Write) -> Result<()> {
    match action {
        UserAction::Set {
            who: AccountName { data_dir, name },
            role,
        } => {
            accounts::check_name(&name)?;
            let pw = read_password()?;
            // Hashed here (argon2id, ~19 MiB, a fraction of a second), never sent or stored in clear.
            let hash = accounts::hash_password(&pw)?;
            let user = User {
                role,
                hash,
                changed_ms: crate::timefmt::now_ms(),
            };
            let via = apply(&data_dir, AccountChange::SetUser { name: name.clone(), user })?;
            writeln!(out, "flowwarden: user {name} set ({}) in {via}", role.as_str())?;
        }
        UserAction::List(AccountList { data_dir, format }) => {
            super::existing_data_dir(&data_dir)?;
            let users = accounts::load_users(&Reader::new(DataDir::new(&data_dir)))?;
            let rows = users.iter().map(|(n, u)| (n.clone(), u.role.as_str(), u.changed_ms)).collect();
            list(out, format, ("user", "changed"), rows)?;
            if users.is_empty() && format == TableOrJson::Table {
                writeln!(
                    out,
                    "(no users: `flowwarden user set --data-dir DIR NAME --role admin` makes the first)"
                )?;
            }
        }
        UserAction::Remove(AccountName { data_dir, name }) => {
            let via = apply(&data_dir, AccountChange::RemoveUser { name: name.clone() })?;
            writeln!(out, "flowwarden: user {name} removed from {via}")?;
        }
    }
    Ok(())
}

pub fn token(action: TokenAction, out: &mut dyn Write) -> Result<()> {
    match action {
        TokenAction::Create {
            who: AccountName { data_dir, name },
            role,
        } => {
            accounts::check_name(&name)?;
            let (text, token) = accounts::new_token(role, crate::timefmt::now_ms())?;
            let via = apply(&data_dir, AccountChange::SetToken { name: name.clone(), token })?;
            writeln!(out, "{text}")?;
            let mut err = std::io::stderr();
            writeln!(
                err,
                "flowwarden: token {name} ({}) created in {via}; it is shown only this once",
                role.as_str()
            )?;
        }
        TokenAction::List(AccountList { data_dir, format }) => {
            super::existing_data_dir(&data_dir)?;
            let tokens = accounts::load_tokens(&Reader::new(DataDir::new(&data_dir)))?;
            let rows = tokens.iter().map(|(n, t)| (n.clone(), t.role.as_str(), t.created_ms)).collect();
            list(out, format, ("token", "created"), rows)?;
        }
        TokenAction::Remove(AccountName { data_dir, name }) => {
            let via = apply(&data_dir, AccountChange::RemoveToken { name: name.clone() })?;
            writeln!(out, "flowwarden: token {name} removed from {via}")?;
        }
    }
    Ok(())
}
