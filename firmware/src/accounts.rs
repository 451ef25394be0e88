//! Accounts for the web page and its API: users (name, role admin|viewer,
//! argon2id password hash) and bearer tokens (name, role viewer|metrics, the
//! SHA-256 of the token: tokens are 256 random bits, shown once).
//!
//! Both live in the state file (`users`, `tokens`). A change is an
//! [`AccountChange`]: the CLI hashes the secret and hands the change either to
//! a running appliance over the control channel ([`crate::control`]), whose
//! store writer commits it with everything else, or, when none runs, commits
//! it into the state file itself ([`crate::store::commit_state_rows`]).

use crate::store::StoreError;
use crate::store::reader::Reader;
use crate::store::rows::StateRows;
use crate::store::schema::{TOKENS, USERS};
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
use redb::WriteTransaction;
use ring::rand::SecureRandom;
use serde::{Deserialize, Serialize};
use thiserror::Error;

/// Shortest password accepted.
pub const MIN_PASSWORD: usize = 10;
/// Longest password accepted (argon2 would take more, a login form should not).
pub const MAX_PASSWORD: usize = 1024;
/// Argon2id cost (OWASP's first recommendation: 19 MiB, 2 passes, 1 lane).
const ARGON2_KIB: u32 = 19 * 1024;
const ARGON2_PASSES: u32 = 2;
/// Prefix of every bearer token (recognisable in logs and secret scanners).
pub const TOKEN_PREFIX: &str = "fwt_";

/// What a user may do on the page.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum UserRole {
    /// Everything, including settings, users and updates.
    Admin,
    /// Every page and the JSON API, no changes.
    Viewer,
}

/// What a bearer token may read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum TokenRole {
    /// The JSON API under /api/v1/.
    Viewer,
    /// /metrics only (Prometheus).
    Metrics,
}

impl UserRole {
    pub fn as_str(self) -> &'static str {
        match self {
            UserRole::Admin => "admin",
            UserRole::Viewer => "viewer",
        }
    }
}

impl TokenRole {
    pub fn as_str(self) -> &'static str {
        match self {
            TokenRole::Viewer => "viewer",
            TokenRole::Metrics => "metrics",
        }
    }
}

/// A stored user.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct User {
    pub role: UserRole,
    /// PHC string (`$argon2id$v=19$m=…`).
    pub hash: String,
    /// When the password or role was last set, UTC ms.
    pub changed_ms: u64,
}

/// A stored bearer token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Token {
    pub role: TokenRole,
    /// SHA-256 of the whole token text.
    pub sha256: [u8; 32],
    pub created_ms: u64,
}

/// One change to the accounts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum AccountChange {
    SetUser { name: String, user: User },
    RemoveUser { name: String },
    SetToken { name: String, token: Token },
    RemoveToken { name: String },
}

#[derive(Debug, Error)]
pub enum AccountError {
    #[error("{0:?}: a name is 1 to 64 characters from A-Z a-z 0-9 . _ - (not starting with - or .)")]
    Name(String),
    #[error("the password is {0} characters; it needs at least {MIN_PASSWORD}")]
    TooShort(usize),
    #[error("the password is longer than {MAX_PASSWORD} characters")]
    TooLong,
    #[error("the password contains a control character (a line break?)")]
    ControlCharacter,
    #[error("no user {0:?}")]
    NoUser(String),
    #[error("no token {0:?}")]
    NoToken(String),
    #[error("a token named {0:?} exists; remove it first (tokens are shown only once)")]
    TokenExists(String),
    #[error("cannot hash the password: {0}")]
    Hash(String),
    #[error("the system random generator failed")]
    Random,
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Check a user or token name.
pub fn check_name(name: &str) -> Result<(), AccountError> {
    let ok = (1..=64).contains(&name.len())
        && !name.starts_with(['-', '.'])
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
    if ok { Ok(()) } else { Err(AccountError::Name(name.to_string())) }
}

/// Check a new password's form (length, no control characters).
pub fn check_password(pw: &str) -> Result<(), AccountError> {
    let n = pw.chars().count();
    if pw.chars().any(char::is_control) {
        return Err(AccountError::ControlCharacter);
    }
    if n < MIN_PASSWORD {
        return Err(AccountError::TooShort(n));
    }
    if n > MAX_PASSWORD {
        return Err(AccountError::TooLong);
    }
    Ok(())
}

/// `N` random bytes from the operating system (ring).
pub fn random<const N: usize>() -> Result<[u8; N], AccountError> {
    let mut b = [0u8; N];
    ring::rand::SystemRandom::new().fill(&mut b).map_err(|_| AccountError::Random)?;
    Ok(b)
}

fn argon2() -> Result<Argon2<'static>, AccountError> {
    let params = Params::new(ARGON2_KIB, ARGON2_PASSES, 1, None).map_err(|e| AccountError::Hash(e.to_string()))?;
    Ok(Argon2::new(Algorithm::Argon2id, Version::V0x13, params))
}

/// An argon2id PHC hash of `pw` with a fresh random salt.
pub fn hash_password(pw: &str) -> Result<String, AccountError> {
    check_password(pw)?;
    let salt = SaltString::encode_b64(&random::<16>()?).map_err(|e| AccountError::Hash(e.to_string()))?;
    let hash = argon2()?
        .hash_password(pw.as_bytes(), &salt)
        .map_err(|e| AccountError::Hash(e.to_string()))?;
    Ok(hash.to_string())
}

/// Whether `pw` matches a stored hash (a malformed hash matches nothing).
pub fn verify_password(hash: &str, pw: &str) -> bool {
    match PasswordHash::new(hash) {
        // The cost comes from the stored hash, so older hashes keep verifying.
        Ok(parsed) => Argon2::default().verify_password(pw.as_bytes(), &parsed).is_ok(),
        Err(_) => false,
    }
}

/// A new bearer token: the text to show once and what to store.
pub fn new_token(role: TokenRole, now_ms: u64) -> Result<(String, Token), AccountError> {
    let bytes = random::<32>()?;
    let mut text = String::with_capacity(TOKEN_PREFIX.len() + 64);
    text.push_str(TOKEN_PREFIX);
    for b in bytes {
        text.push_str(&format!("{b:02x}"));
    }
    let token = Token {
        role,
        sha256: token_digest(&text),
        created_ms: now_ms,
    };
    Ok((text, token))
}

/// The digest a token is stored and looked up by.
pub fn token_digest(text: &str) -> [u8; 32] {
    crate::pki::sha256(text.as_bytes())
}

/// Account changes for the next state commit.
#[derive(Debug, Default)]
pub struct AccountRows {
    pub changes: Vec<AccountChange>,
    /// Told once the transaction holding the changes committed.
    pub notify: Option<std::sync::mpsc::SyncSender<()>>,
}

impl AccountRows {
    pub fn new(changes: Vec<AccountChange>) -> Self {
        AccountRows { changes, notify: None }
    }
}

impl StateRows for AccountRows {
    fn stage(&mut self, txn: &WriteTransaction) -> Result<(), redb::Error> {
        let mut users = txn.open_table(USERS)?;
        let mut tokens = txn.open_table(TOKENS)?;
        for c in &self.changes {
            match c {
                AccountChange::SetUser { name, user } => {
                    let v = postcard::to_stdvec(user).unwrap_or_default();
                    users.insert(name.as_str(), v.as_slice())?;
                }
                AccountChange::RemoveUser { name } => {
                    users.remove(name.as_str())?;
                }
                AccountChange::SetToken { name, token } => {
                    let v = postcard::to_stdvec(token).unwrap_or_default();
                    tokens.insert(name.as_str(), v.as_slice())?;
                }
                AccountChange::RemoveToken { name } => {
                    tokens.remove(name.as_str())?;
                }
            }
        }
        Ok(())
    }

    fn committed(&mut self) {
        if let Some(n) = self.notify.take() {
            let _ = n.try_send(());
        }
    }
}

/// Every user, by name (rows that do not decode are skipped).
pub fn load_users(reader: &Reader) -> Result<Vec<(String, User)>, StoreError> {
    Ok(reader
        .state_rows(USERS)?
        .into_iter()
        .filter_map(|(k, v)| postcard::from_bytes(&v).ok().map(|u| (k, u)))
        .collect())
}

/// Every token, by name.
pub fn load_tokens(reader: &Reader) -> Result<Vec<(String, Token)>, StoreError> {
    Ok(reader
        .state_rows(TOKENS)?
        .into_iter()
        .filter_map(|(k, v)| postcard::from_bytes(&v).ok().map(|t| (k, t)))
        .collect())
}

/// Check a change against the accounts as they are (removals of what does not
/// exist, a token name taken); run by whoever applies it.
pub fn validate(change: &AccountChange, reader: &Reader) -> Result<(), AccountError> {
    let user_exists = |name: &str| Ok::<_, AccountError>(load_users(reader)?.iter().any(|(n, _)| n == name));
    let token_exists = |name: &str| Ok::<_, AccountError>(load_tokens(reader)?.iter().any(|(n, _)| n == name));
    match change {
        AccountChange::SetUser { name, .. } => check_name(name),
        AccountChange::RemoveUser { name } if !user_exists(name)? => Err(AccountError::NoUser(name.clone())),
        AccountChange::SetToken { name, .. } => {
            check_name(name)?;
            if token_exists(name)? {
                Err(AccountError::TokenExists(name.clone()))
            } else {
                Ok(())
            }
        }
        AccountChange::RemoveToken { name } if !token_exists(name)? => Err(AccountError::NoToken(name.clone())),
        AccountChange::RemoveUser { .. } | AccountChange::RemoveToken { .. } => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_passwords() {
        assert!(check_name("tech-1.branch_7").is_ok());
        for bad in ["", "-x", ".x", "a b", "ä", &"x".repeat(65)] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
        assert!(matches!(check_password("short"), Err(AccountError::TooShort(5))));
        assert!(matches!(check_password("long enough\n"), Err(AccountError::ControlCharacter)));
        assert!(check_password("correct horse").is_ok());
    }

    #[test]
    fn argon2id_hashes_verify_and_are_salted() {
        let a = hash_password("correct horse").unwrap_or_else(|e| panic!("{e}"));
        let b = hash_password("correct horse").unwrap_or_else(|e| panic!("{e}"));
        assert!(a.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"), "{a}");
        assert_ne!(a, b);
        assert!(verify_password(&a, "correct horse"));
        assert!(!verify_password(&a, "correct horsE"));
        assert!(!verify_password("not a hash", "correct horse"));
    }

    #[test]
    fn tokens_are_random_and_stored_as_digests() {
        let (t1, s1) = new_token(TokenRole::Metrics, 5).unwrap_or_else(|e| panic!("{e}"));
        let (t2, _) = new_token(TokenRole::Metrics, 5).unwrap_or_else(|e| panic!("{e}"));
        assert!(t1.starts_with(TOKEN_PREFIX) && t1.len() == TOKEN_PREFIX.len() + 64);
        assert_ne!(t1, t2);
        assert_eq!(s1.sha256, token_digest(&t1));
        assert_ne!(s1.sha256, token_digest(&t2));
    }
}
