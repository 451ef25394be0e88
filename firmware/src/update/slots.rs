//! What the grubenv flags say about the two slots, and every change PID 1 makes
//! to them: at boot (a trial, or a rollback GRUB already did), before a slot is
//! written (nothing bootable there while it is), once it is staged, and when the
//! running slot is marked good. GRUB's side of the same flags is
//! `fwbundle::boot::grub_cfg`.

use super::grubenv::{Env, EnvError};
use fwbundle::boot::{self, TRIES};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Slot {
    A,
    B,
}

impl Slot {
    pub fn as_str(self) -> &'static str {
        match self {
            Slot::A => "a",
            Slot::B => "b",
        }
    }
    pub fn other(self) -> Slot {
        match self {
            Slot::A => Slot::B,
            Slot::B => Slot::A,
        }
    }
    pub fn parse(s: &str) -> Option<Slot> {
        match s {
            "a" => Some(Slot::A),
            "b" => Some(Slot::B),
            _ => None,
        }
    }
    /// `flowwarden.slot=X` from a kernel command line.
    pub fn from_cmdline(cmdline: &str) -> Option<Slot> {
        cmdline
            .split_whitespace()
            .find_map(|w| w.strip_prefix("flowwarden.slot="))
            .and_then(Slot::parse)
    }
    /// The GPT partition name of the slot.
    pub fn partition(self) -> &'static str {
        match self {
            Slot::A => "system_a",
            Slot::B => "system_b",
        }
    }
}

/// One slot as the flags describe it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotInfo {
    pub version: String,
    pub good: bool,
    pub tries_used: u8,
}

impl SlotInfo {
    /// "0.2.0, good" / "0.2.0, on trial (try 2 of 3)" / "0.2.0, failed its 3 tries: not
    /// bootable" / "not bootable (being written …)". `running`: this slot is the one
    /// running (its last try is a trial, not a failure).
    pub fn describe(&self, running: bool) -> String {
        let v = if self.version.is_empty() {
            "unknown version"
        } else {
            &self.version
        };
        if self.good {
            format!("{v}, good")
        } else if running {
            format!("{v}, on trial (try {} of {TRIES})", self.tries_used.clamp(1, TRIES))
        } else if self.tries_used >= TRIES {
            if self.version.is_empty() {
                "not bootable (being written, or a write did not finish)".to_string()
            } else {
                format!("{v}, failed its {TRIES} tries: not bootable")
            }
        } else {
            format!("{v}, on trial ({} of {TRIES} tries used)", self.tries_used)
        }
    }
}

pub fn info(env: &Env, s: Slot) -> SlotInfo {
    let n = s.as_str();
    SlotInfo {
        version: env.get(&boot::version(n)).to_string(),
        good: env.get(&boot::good(n)) == "1",
        tries_used: (1..=TRIES).filter(|t| env.get(&boot::tried(n, *t)) == "1").count() as u8,
    }
}

/// The slot GRUB tries first.
pub fn order(env: &Env) -> Slot {
    Slot::parse(env.get(boot::ORDER))
        .or_else(|| Slot::parse(env.get("slot")))
        .unwrap_or(Slot::A)
}

/// What this boot is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Boot {
    /// The running slot is good and first in order.
    Good,
    /// The running slot is on trial: marked good once the health checks pass.
    Trial { try_no: u8 },
    /// GRUB passed over `failed` (on trial and out of tries, or its kernel did not
    /// load) and booted the running slot, which is good.
    RolledBack { failed: Slot, failed_version: String, tries: u8 },
}

/// Reads the flags at boot and settles them: an image from before the flags (only
/// `slot=`) gets them, and after a rollback the running slot goes first again.
/// Returns what the boot is and whether `env` changed (to be written back).
pub fn on_boot(env: &mut Env, running: Slot, running_version: &str) -> Result<(Boot, bool), EnvError> {
    let mut changed = false;
    if env.get(boot::ORDER).is_empty() {
        // Flags from an older image: both slots were built alike and both booted before.
        env.set(boot::ORDER, order(env).as_str())?;
        for s in boot::SLOTS {
            env.set(&boot::good(s), "1")?;
        }
        changed = true;
    }
    let me = info(env, running);
    if me.version != running_version {
        env.set(&boot::version(running.as_str()), running_version)?;
        changed = true;
    }
    let first = order(env);
    if !me.good {
        return Ok((
            Boot::Trial {
                try_no: me.tries_used.max(1),
            },
            changed,
        ));
    }
    if first == running {
        return Ok((Boot::Good, changed));
    }
    let f = info(env, first);
    env.set(boot::ORDER, running.as_str())?;
    Ok((
        Boot::RolledBack {
            failed: first,
            failed_version: f.version,
            tries: f.tries_used,
        },
        true,
    ))
}

/// Before a slot is written: not good, all tries used, no version: GRUB skips it
/// and the fallback entry leaves it out, whatever state the write leaves it in.
pub fn invalidate(env: &mut Env, target: Slot) -> Result<(), EnvError> {
    let n = target.as_str();
    env.set(&boot::good(n), "0")?;
    for t in 1..=TRIES {
        env.set(&boot::tried(n, t), "1")?;
    }
    env.set(&boot::version(n), "")
}

/// After the slot was written and read back: on trial with three tries, first in order.
pub fn staged(env: &mut Env, target: Slot, version: &str) -> Result<(), EnvError> {
    let n = target.as_str();
    env.set(&boot::good(n), "0")?;
    for t in 1..=TRIES {
        env.remove(&boot::tried(n, t));
    }
    env.set(&boot::version(n), version)?;
    env.set(boot::ORDER, n)
}

/// The running slot passed its health checks.
pub fn mark_good(env: &mut Env, running: Slot) -> Result<(), EnvError> {
    let n = running.as_str();
    env.set(&boot::good(n), "1")?;
    for t in 1..=TRIES {
        env.remove(&boot::tried(n, t));
    }
    env.set(boot::ORDER, n)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn factory() -> Env {
        let mut e = Env::default();
        for (k, v) in [
            ("order", "a"),
            ("a_good", "1"),
            ("b_good", "1"),
            ("a_version", "1.0"),
            ("b_version", "1.0"),
        ] {
            e.set(k, v).unwrap();
        }
        e
    }

    /// What GRUB's script does with the flags (fwbundle::boot::grub_cfg), for the tests.
    fn grub(env: &mut Env) -> Slot {
        let first = order(env);
        for s in [first, first.other()] {
            let n = s.as_str();
            if env.get(&boot::good(n)) == "1" {
                return s;
            }
            for t in 1..=TRIES {
                if env.get(&boot::tried(n, t)) != "1" {
                    env.set(&boot::tried(n, t), "1").unwrap();
                    return s;
                }
            }
        }
        first
    }

    #[test]
    fn an_update_that_never_comes_up_falls_back_after_three_tries_and_stays_back() {
        let mut env = factory();
        assert_eq!(on_boot(&mut env, Slot::A, "1.0").unwrap(), (Boot::Good, false));
        invalidate(&mut env, Slot::B).unwrap();
        // A power cut here: GRUB still boots A, and never B.
        let mut cut = env.clone();
        for _ in 0..5 {
            assert_eq!(grub(&mut cut), Slot::A);
        }
        assert!(info(&cut, Slot::B).describe(false).starts_with("not bootable"));
        staged(&mut env, Slot::B, "2.0").unwrap();
        for t in 1..=3 {
            assert_eq!(grub(&mut env), Slot::B, "try {t}");
            assert_eq!(info(&env, Slot::B).describe(true), format!("2.0, on trial (try {t} of 3)"));
            if t < 3 {
                assert_eq!(info(&env, Slot::B).describe(false), format!("2.0, on trial ({t} of 3 tries used)"));
            }
        }
        assert_eq!(grub(&mut env), Slot::A);
        let (b, changed) = on_boot(&mut env, Slot::A, "1.0").unwrap();
        assert!(changed);
        assert_eq!(
            b,
            Boot::RolledBack {
                failed: Slot::B,
                failed_version: "2.0".into(),
                tries: 3
            }
        );
        // Settled: A first, B never retried.
        for _ in 0..5 {
            assert_eq!(grub(&mut env), Slot::A);
        }
        assert_eq!(on_boot(&mut env, Slot::A, "1.0").unwrap(), (Boot::Good, false));
        assert_eq!(info(&env, Slot::B).describe(false), "2.0, failed its 3 tries: not bootable");
    }

    #[test]
    fn an_update_that_comes_up_is_marked_good_and_stays() {
        let mut env = factory();
        invalidate(&mut env, Slot::B).unwrap();
        staged(&mut env, Slot::B, "2.0").unwrap();
        assert_eq!(grub(&mut env), Slot::B);
        assert_eq!(on_boot(&mut env, Slot::B, "2.0").unwrap().0, Boot::Trial { try_no: 1 });
        // A reset before the checks passed is the second try.
        assert_eq!(grub(&mut env), Slot::B);
        assert_eq!(on_boot(&mut env, Slot::B, "2.0").unwrap().0, Boot::Trial { try_no: 2 });
        mark_good(&mut env, Slot::B).unwrap();
        for _ in 0..5 {
            assert_eq!(grub(&mut env), Slot::B);
        }
        assert_eq!(on_boot(&mut env, Slot::B, "2.0").unwrap(), (Boot::Good, false));
        // The next update goes to A, and B is its fallback.
        invalidate(&mut env, Slot::A).unwrap();
        staged(&mut env, Slot::A, "3.0").unwrap();
        for _ in 0..3 {
            assert_eq!(grub(&mut env), Slot::A);
        }
        assert_eq!(grub(&mut env), Slot::B);
    }

    #[test]
    fn flags_of_an_older_image_are_completed() {
        let mut env = Env::default();
        env.set("slot", "a").unwrap();
        let (b, changed) = on_boot(&mut env, Slot::A, "1.1").unwrap();
        assert_eq!((b, changed), (Boot::Good, true));
        assert_eq!(info(&env, Slot::A).describe(false), "1.1, good");
        assert_eq!(info(&env, Slot::B).describe(false), "unknown version, good");
        assert_eq!(Slot::from_cmdline("console=ttyS0 flowwarden.slot=b panic=10"), Some(Slot::B));
        assert_eq!(Slot::from_cmdline("console=ttyS0"), None);
    }
}
