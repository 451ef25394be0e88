//! The version this binary reports everywhere (`flowwarden version`, the console's
//! `status`, the page, the SIEM heartbeat). A laptop build says the package
//! version; `cargo xtask image` and `cargo xtask bundle` write the release's
//! version (default: package version + short commit, or `--version V`) into the
//! copy of the binary they put into a slot, by overwriting the stamp below in
//! place. One build serves every version: no recompilation per bundle.

/// Marks the stamp in the binary; xtask finds it (it must occur exactly once).
pub const MARK: &[u8; 16] = b"FWVERSION-STAMP:";
/// Bytes after the mark for the version, NUL-padded.
pub const ROOM: usize = 64;

const fn stamp() -> [u8; 16 + ROOM] {
    let mut s = [0u8; 16 + ROOM];
    let mut i = 0;
    while i < 16 {
        s[i] = MARK[i];
        i += 1;
    }
    let v = env!("CARGO_PKG_VERSION").as_bytes();
    let mut j = 0;
    while j < v.len() && j < ROOM {
        s[16 + j] = v[j];
        j += 1;
    }
    s
}

#[used]
static STAMP: [u8; 16 + ROOM] = stamp();

/// The version of this binary (the stamp, which xtask may have rewritten).
pub fn version() -> &'static str {
    // Read through an opaque reference: the compiler must not fold the build-time value in.
    let s: &'static [u8; 16 + ROOM] = std::hint::black_box(&STAMP);
    let v = &s[16..];
    let end = v.iter().position(|b| *b == 0).unwrap_or(v.len());
    match std::str::from_utf8(&v[..end]) {
        Ok(t) if !t.is_empty() => t,
        _ => env!("CARGO_PKG_VERSION"),
    }
}

/// Whether `v` can be stamped: 1 to 64 bytes of letters, digits and `.+-_~`.
pub fn valid(v: &str) -> bool {
    !v.is_empty() && v.len() <= ROOM && v.bytes().all(|b| b.is_ascii_alphanumeric() || b".+-_~".contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unstamped_binary_says_the_package_version() {
        assert_eq!(version(), env!("CARGO_PKG_VERSION"));
        assert!(valid("0.1.0+g1a2b3c4d5e6f") && valid("9.9.9-test"));
        assert!(!valid("") && !valid("a b") && !valid(&"x".repeat(65)));
    }
}
