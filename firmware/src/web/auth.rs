//! Who is asking: sessions (cookie `__Host-fw_session`), the login throttle,
//! the first-start setup code, bearer tokens and CSRF tokens.
//!
//! Everything here is in memory and bounded: sessions and failure records are
//! kept in maps with a fixed capacity (the oldest goes first, counted in
//! `flowwarden_web_table_evicted_total{table}`). Time comes from the page's
//! clock (event time in tests). Secrets are compared in constant time and
//! session ids are kept only as their SHA-256.

use crate::accounts::{TokenRole, UserRole};
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;

/// The session cookie (`__Host-`: Secure, Path=/, no Domain).
pub const SESSION_COOKIE: &str = "__Host-fw_session";
/// The login form's double-submit cookie (CSRF before a session exists).
pub const LOGIN_COOKIE: &str = "__Host-fw_login";
/// Sessions kept at once.
pub const MAX_SESSIONS: usize = 1024;
/// Failure records (per address and per user) kept at once.
pub const MAX_FAILURES: usize = 4096;
/// Failed logins allowed before a delay.
pub const FREE_FAILURES: u32 = 3;
/// The longest delay (never a permanent lockout).
pub const MAX_DELAY_MS: u64 = 15 * 60_000;
/// A failure record is forgotten this long after its last failure.
const FAILURE_MEMORY_MS: u64 = 3_600_000;
/// The setup code's alphabet: upper case without 0/O, 1/I/L.
const SETUP_ALPHABET: &[u8] = b"ABCDEFGHJKMNPQRSTUVWXYZ23456789";

/// Who a request is from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Viewer {
    /// User name, or `token:NAME` for a bearer token.
    pub name: String,
    pub role: UserRole,
    /// The session's CSRF token (empty for bearer tokens, which cannot post forms).
    pub csrf: String,
}

impl Viewer {
    pub fn is_admin(&self) -> bool {
        self.role == UserRole::Admin
    }
}

/// Constant-time equality of two byte strings (length is not secret).
pub fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// 32 random bytes as 64 hex characters.
pub fn random_hex() -> Option<String> {
    let b = crate::accounts::random::<32>().ok()?;
    Some(b.iter().map(|x| format!("{x:02x}")).collect())
}

struct Session {
    user: String,
    role: UserRole,
    csrf: String,
    last_ms: u64,
}

/// Open sessions, by the SHA-256 of their id.
pub struct Sessions {
    map: Mutex<HashMap<[u8; 32], Session>>,
    idle_ms: u64,
}

impl Sessions {
    pub fn new(idle_ms: u64) -> Sessions {
        Sessions {
            map: Mutex::new(HashMap::new()),
            idle_ms,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<[u8; 32], Session>> {
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A new session for `user`: its id (the cookie's value). Returns the
    /// number of sessions evicted to make room (0 or 1).
    pub fn create(&self, user: &str, role: UserRole, now_ms: u64) -> Option<(String, u64)> {
        let id = random_hex()?;
        let csrf = random_hex()?;
        let mut map = self.lock();
        let idle = self.idle_ms;
        map.retain(|_, s| now_ms.saturating_sub(s.last_ms) < idle);
        let mut evicted = 0;
        if map.len() >= MAX_SESSIONS
            && let Some(oldest) = map.iter().min_by_key(|(_, s)| s.last_ms).map(|(k, _)| *k)
        {
            map.remove(&oldest);
            evicted = 1;
        }
        map.insert(
            crate::pki::sha256(id.as_bytes()),
            Session {
                user: user.to_string(),
                role,
                csrf,
                last_ms: now_ms,
            },
        );
        Some((id, evicted))
    }

    /// The session with this id, touched (its idle time starts again); an
    /// idle one is ended.
    pub fn get(&self, id: &str, now_ms: u64) -> Option<Viewer> {
        let key = crate::pki::sha256(id.as_bytes());
        let mut map = self.lock();
        let s = map.get_mut(&key)?;
        if now_ms.saturating_sub(s.last_ms) >= self.idle_ms {
            map.remove(&key);
            return None;
        }
        s.last_ms = now_ms.max(s.last_ms);
        Some(Viewer {
            name: s.user.clone(),
            role: s.role,
            csrf: s.csrf.clone(),
        })
    }

    /// End one session (logout).
    pub fn end(&self, id: &str) {
        self.lock().remove(&crate::pki::sha256(id.as_bytes()));
    }

    /// End every session of `user` (removed, or its password or role changed).
    pub fn end_user(&self, user: &str) {
        self.lock().retain(|_, s| s.user != user);
    }

    /// Sessions open now.
    pub fn count(&self, now_ms: u64) -> usize {
        let idle = self.idle_ms;
        self.lock().values().filter(|s| now_ms.saturating_sub(s.last_ms) < idle).count()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum FailKey {
    Addr(IpAddr),
    User(String),
}

#[derive(Debug, Clone, Copy)]
struct Failures {
    count: u32,
    last_ms: u64,
    until_ms: u64,
}

/// Why a login must wait.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Wait {
    pub ms: u64,
    /// "this address" or "this user".
    pub what: &'static str,
}

/// Failed logins per source address and per user name: after
/// [`FREE_FAILURES`], each further failure doubles the wait (1 s, 2 s, 4 s …
/// up to [`MAX_DELAY_MS`]); a success clears both records.
#[derive(Default)]
pub struct Throttle {
    map: Mutex<HashMap<FailKey, Failures>>,
}

impl Throttle {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<FailKey, Failures>> {
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether a login from `addr` for `user` must wait now.
    pub fn check(&self, addr: IpAddr, user: &str, now_ms: u64) -> Option<Wait> {
        let map = self.lock();
        let wait = |k: &FailKey| map.get(k).map(|f| f.until_ms.saturating_sub(now_ms)).filter(|w| *w > 0);
        if let Some(ms) = wait(&FailKey::Addr(addr)) {
            return Some(Wait { ms, what: "this address" });
        }
        wait(&FailKey::User(user.to_string())).map(|ms| Wait { ms, what: "this user" })
    }

    /// Record a failure; returns how many records were evicted to make room.
    pub fn fail(&self, addr: IpAddr, user: &str, now_ms: u64) -> u64 {
        let mut map = self.lock();
        map.retain(|_, f| now_ms.saturating_sub(f.last_ms) < FAILURE_MEMORY_MS);
        let mut evicted = 0;
        for key in [FailKey::Addr(addr), FailKey::User(user.to_string())] {
            if !map.contains_key(&key)
                && map.len() >= MAX_FAILURES
                && let Some(oldest) = map.iter().min_by_key(|(_, f)| f.last_ms).map(|(k, _)| k.clone())
            {
                map.remove(&oldest);
                evicted += 1;
            }
            let f = map.entry(key).or_insert(Failures {
                count: 0,
                last_ms: now_ms,
                until_ms: 0,
            });
            f.count = f.count.saturating_add(1);
            f.last_ms = now_ms;
            if f.count > FREE_FAILURES {
                let shift = (f.count - FREE_FAILURES - 1).min(20);
                f.until_ms = now_ms + (1000u64 << shift).min(MAX_DELAY_MS);
            }
        }
        evicted
    }

    /// A successful login clears the address's and the user's records.
    pub fn success(&self, addr: IpAddr, user: &str) {
        let mut map = self.lock();
        map.remove(&FailKey::Addr(addr));
        map.remove(&FailKey::User(user.to_string()));
    }
}

/// The one-time code that lets the first admin be created from the page.
#[derive(Default)]
pub struct SetupCode(Mutex<Option<String>>);

impl SetupCode {
    /// A new code `XXXX-XXXX-XXXX` (12 characters from an unambiguous alphabet).
    pub fn generate() -> Option<String> {
        let bytes = crate::accounts::random::<12>().ok()?;
        let chars: Vec<char> = bytes
            .iter()
            .map(|b| SETUP_ALPHABET[*b as usize % SETUP_ALPHABET.len()] as char)
            .collect();
        let s: String = chars.iter().collect();
        Some(format!("{}-{}-{}", &s[..4], &s[4..8], &s[8..]))
    }

    pub fn set(&self, code: Option<String>) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = code;
    }

    /// Whether a code is alive (no admin yet).
    pub fn active(&self) -> bool {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).is_some()
    }

    /// Whether `given` is the code (case and dashes/spaces ignored).
    pub fn matches(&self, given: &str) -> bool {
        let norm = |s: &str| -> String {
            s.chars()
                .filter(|c| !matches!(c, '-' | ' '))
                .map(|c| c.to_ascii_uppercase())
                .collect()
        };
        match &*self.0.lock().unwrap_or_else(|p| p.into_inner()) {
            Some(code) => same(norm(code).as_bytes(), norm(given).as_bytes()),
            None => false,
        }
    }
}

/// A bearer token's role, looked up by digest in `tokens` (name, role, digest).
pub fn token_role<'a>(tokens: &'a [(String, TokenRole, [u8; 32])], text: &str) -> Option<(&'a str, TokenRole)> {
    let digest = crate::accounts::token_digest(text.trim());
    tokens.iter().find(|(_, _, d)| same(d, &digest)).map(|(n, r, _)| (n.as_str(), *r))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sessions_expire_when_idle_and_end_on_logout() {
        let s = Sessions::new(60_000);
        let (id, _) = s.create("tech", UserRole::Admin, 1_000).unwrap_or_default();
        assert_eq!(id.len(), 64);
        let v = s.get(&id, 50_000).map(|v| (v.name, v.role));
        assert_eq!(v, Some(("tech".into(), UserRole::Admin)));
        // Touched at 50 s: still alive at 109 s, gone at 110 s.
        assert!(s.get(&id, 109_999).is_some());
        assert!(s.get(&id, 170_000).is_none());
        assert!(s.get(&id, 170_001).is_none(), "an expired session stays ended");
        let (id2, _) = s.create("tech", UserRole::Admin, 200_000).unwrap_or_default();
        assert_ne!(id, id2);
        s.end(&id2);
        assert!(s.get(&id2, 200_001).is_none());
        assert!(s.get("not a session", 0).is_none());
    }

    #[test]
    fn sessions_are_bounded() {
        let s = Sessions::new(3_600_000);
        let mut evicted = 0;
        let first = s.create("u", UserRole::Viewer, 0).unwrap_or_default().0;
        for i in 1..=MAX_SESSIONS as u64 {
            evicted += s.create("u", UserRole::Viewer, i).unwrap_or_default().1;
        }
        assert_eq!(evicted, 1);
        assert_eq!(s.count(MAX_SESSIONS as u64), MAX_SESSIONS);
        assert!(s.get(&first, MAX_SESSIONS as u64).is_none(), "the oldest went first");
    }

    #[test]
    fn failures_delay_exponentially_then_clear() {
        let t = Throttle::default();
        let ip = IpAddr::from([192, 0, 2, 1]);
        for _ in 0..FREE_FAILURES {
            t.fail(ip, "tech", 0);
            assert_eq!(t.check(ip, "tech", 0), None);
        }
        t.fail(ip, "tech", 0);
        assert_eq!(t.check(ip, "tech", 0).map(|w| w.ms), Some(1000));
        t.fail(ip, "tech", 1000);
        assert_eq!(t.check(ip, "tech", 1000).map(|w| w.ms), Some(2000));
        // Another address guessing the same user waits too.
        let other = IpAddr::from([192, 0, 2, 2]);
        assert_eq!(t.check(other, "tech", 1000).map(|w| w.what), Some("this user"));
        assert_eq!(t.check(other, "boss", 1000), None);
        for i in 0..40 {
            t.fail(ip, "tech", 2000 + i);
        }
        assert_eq!(
            t.check(ip, "tech", 2039).map(|w| w.ms),
            Some(MAX_DELAY_MS),
            "capped, never permanent"
        );
        assert_eq!(t.check(ip, "tech", 2039 + MAX_DELAY_MS), None);
        t.success(ip, "tech");
        assert_eq!(t.check(ip, "tech", 2040), None);
    }

    #[test]
    fn setup_codes_are_unambiguous_and_single_use() {
        let code = SetupCode::generate().unwrap_or_default();
        assert_eq!(code.len(), 14);
        assert!(code.chars().all(|c| c == '-' || SETUP_ALPHABET.contains(&(c as u8))), "{code}");
        let s = SetupCode::default();
        assert!(!s.matches(&code));
        s.set(Some(code.clone()));
        assert!(s.active());
        assert!(s.matches(&code.to_lowercase().replace('-', " ")));
        assert!(!s.matches("AAAA-AAAA-AAAA"));
        s.set(None);
        assert!(!s.matches(&code));
    }
}
