//! GRUB's environment block (`EFI/BOOT/grubenv` on the ESP): the boot order and
//! each slot's good/tries flags that GRUB's script reads and counts down. It is a
//! 1024-byte file that GRUB's `save_env` rewrites in place (it cannot grow or move
//! it), so PID 1 writes it in place too: the same 1024 bytes, then fsync.

use std::collections::BTreeMap;
use thiserror::Error;

pub const SIZE: usize = 1024;
const HEADER: &str = "# GRUB Environment Block\n";

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum EnvError {
    #[error("grubenv is {0} bytes, expected {SIZE}")]
    Size(usize),
    #[error("grubenv does not start with {HEADER:?}")]
    Header,
    #[error("grubenv line {0} is not NAME=VALUE")]
    Line(usize),
    #[error("grubenv variable {0:?}: names are letters, digits and _; values have no newline or backslash")]
    Invalid(String),
    #[error("grubenv would be {0} bytes with these variables, more than {SIZE}")]
    Full(usize),
}

/// The variables of an environment block, in name order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Env(BTreeMap<String, String>);

impl Env {
    pub fn parse(block: &[u8]) -> Result<Env, EnvError> {
        if block.len() != SIZE {
            return Err(EnvError::Size(block.len()));
        }
        let text = String::from_utf8_lossy(block);
        let body = text.strip_prefix(HEADER).ok_or(EnvError::Header)?;
        let mut vars = BTreeMap::new();
        for (i, line) in body.split('\n').enumerate() {
            // The '#' padding (and any comment) ends in the last "line".
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (k, v) = line.split_once('=').ok_or(EnvError::Line(i + 2))?;
            vars.insert(k.to_string(), v.replace("\\\\", "\\"));
        }
        Ok(Env(vars))
    }

    pub fn get(&self, k: &str) -> &str {
        self.0.get(k).map(String::as_str).unwrap_or("")
    }

    pub fn set(&mut self, k: &str, v: &str) -> Result<(), EnvError> {
        let name_ok = !k.is_empty() && k.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
        if !name_ok || v.contains(['\n', '\\']) {
            return Err(EnvError::Invalid(k.to_string()));
        }
        self.0.insert(k.to_string(), v.to_string());
        Ok(())
    }

    pub fn remove(&mut self, k: &str) {
        self.0.remove(k);
    }

    /// The 1024-byte block: header, `name=value` lines, `#` padding.
    pub fn render(&self) -> Result<[u8; SIZE], EnvError> {
        let mut s = String::from(HEADER);
        for (k, v) in &self.0 {
            s.push_str(k);
            s.push('=');
            s.push_str(v);
            s.push('\n');
        }
        if s.len() > SIZE {
            return Err(EnvError::Full(s.len()));
        }
        let mut out = [b'#'; SIZE];
        out[..s.len()].copy_from_slice(s.as_bytes());
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_what_grub_editenv_writes_and_writes_it_back() {
        // `grub-editenv grubenv create; grub-editenv grubenv set slot=a`.
        let mut block = [b'#'; SIZE];
        let t = b"# GRUB Environment Block\nslot=a\n";
        block[..t.len()].copy_from_slice(t);
        let mut env = Env::parse(&block).unwrap();
        assert_eq!(env.get("slot"), "a");
        assert_eq!(env.get("order"), "");
        env.set("order", "b").unwrap();
        env.set("b_t1", "1").unwrap();
        let out = env.render().unwrap();
        assert!(out.starts_with(b"# GRUB Environment Block\nb_t1=1\norder=b\nslot=a\n#"));
        assert_eq!(Env::parse(&out).unwrap(), env);
    }

    #[test]
    fn damage_and_overflow_are_errors() {
        assert_eq!(Env::parse(&[b'#'; 10]), Err(EnvError::Size(10)));
        assert_eq!(Env::parse(&[0u8; SIZE]), Err(EnvError::Header));
        let mut block = [b'#'; SIZE];
        let t = b"# GRUB Environment Block\nnoequals\n";
        block[..t.len()].copy_from_slice(t);
        assert_eq!(Env::parse(&block), Err(EnvError::Line(2)));
        let mut env = Env::default();
        assert!(env.set("a b", "1").is_err() && env.set("x", "1\n").is_err());
        env.set("big", &"v".repeat(1000)).unwrap();
        assert!(matches!(env.render(), Err(EnvError::Full(_))));
    }
}
