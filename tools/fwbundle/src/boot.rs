//! Boot selection between the two system slots: the names of the grubenv
//! variables that GRUB's script and the appliance's PID 1 share, and the script
//! itself (written to the ESP by `cargo xtask image`).
//!
//! Variables: `order` (`a` or `b`, the slot tried first), per slot `X_good`
//! (`1` once PID 1 marked it good after its health checks), `X_t1`..`X_t3` (set by
//! GRUB before each boot of a slot on trial: three tries, counted with flags because
//! GRUB has no arithmetic) and `X_version`.
//!
//! GRUB boots the first slot in `order` that is good or has an unused try, and
//! marks the try used (`save_env`) before it boots. A slot on trial whose three
//! tries are used is skipped for good: it is never retried until an update
//! rewrites it. A good slot is always tried. When no slot qualifies (both on
//! trial and out of tries, which an update never leaves behind) the first in
//! `order` boots anyway rather than none.

pub const SLOTS: [&str; 2] = ["a", "b"];
pub const ORDER: &str = "order";
pub const TRIES: u8 = 3;

pub fn good(slot: &str) -> String {
    format!("{slot}_good")
}
pub fn version(slot: &str) -> String {
    format!("{slot}_version")
}
/// The flag of try `n` (1..=TRIES).
pub fn tried(slot: &str, n: u8) -> String {
    format!("{slot}_t{n}")
}

/// GPT partition number of each slot (the image's layout: 1 ESP, 2 slot a, 3 slot b, 4 data).
pub fn partition_number(slot: &str) -> u8 {
    if slot == "b" { 3 } else { 2 }
}

/// The GRUB script: pick the slot, then boot it with `flowwarden.slot=X` added to
/// `cmdline`; the other slot, when good, is the menu's fallback entry (used when
/// the chosen slot's kernel cannot even be loaded). Slots are found by partition
/// number on the disk GRUB itself came from (a bundle's file system does not know
/// which slot it will land in, so no label can name it).
pub fn grub_cfg(cmdline: &str) -> String {
    let pick = |s: &str| {
        let mut t = format!(
            "  if [ -z \"$boot\" ]; then\n    if [ \"${}\" = \"1\" ]; then set boot={s}\n",
            good(s)
        );
        for n in 1..=TRIES {
            let f = tried(s, n);
            t.push_str(&format!(
                "    elif [ \"${f}\" != \"1\" ]; then set {f}=1; save_env -f \"$prefix/grubenv\" {f}; set boot={s}; echo \"flowwarden: slot {s} on trial, try {n} of {TRIES}\"\n"
            ));
        }
        t.push_str("    fi\n  fi\n");
        t
    };
    let entry = |s: &str, title: &str| {
        format!(
            "  menuentry \"flowwarden slot {s}{title}\" {{\n    regexp --set=1:disk '^([^,]+)' \"$root\"\n    set root=\"($disk,gpt{p})\"\n    linux /vmlinuz {cmdline} flowwarden.slot={s}\n    initrd /initrd.img\n  }}\n",
            p = partition_number(s)
        )
    };
    let menu = |s: &str, o: &str| {
        format!(
            "{}  if [ \"${}\" = \"1\" ]; then\n    set fallback=1\n{}  fi\n",
            entry(s, ""),
            good(o),
            entry(o, " (fallback)")
                .replace("\n  ", "\n    ")
                .replacen("  menuentry", "    menuentry", 1)
        )
    };
    format!(
        r#"# flowwarden boot selection (written by cargo xtask image; see tools/fwbundle/src/boot.rs).
set timeout=0
set default=0
if [ -s "$prefix/grubenv" ]; then load_env -f "$prefix/grubenv"; fi
set boot=""
if [ "$order" = "b" ]; then
{pick_b}{pick_a}else
{pick_a}{pick_b}fi
if [ -z "$boot" ]; then
  if [ "$order" = "b" ]; then set boot=b; else set boot=a; fi
  echo "flowwarden: no slot is good or has a try left; booting slot $boot anyway"
fi
if [ "$boot" = "b" ]; then
{menu_b}else
{menu_a}fi
"#,
        pick_a = pick("a"),
        pick_b = pick("b"),
        menu_a = menu("a", "b"),
        menu_b = menu("b", "a"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn script_counts_three_tries_per_slot_in_both_orders() {
        let s = grub_cfg("console=ttyS0 panic=10");
        for slot in SLOTS {
            for n in 1..=TRIES {
                let f = tried(slot, n);
                assert_eq!(
                    s.matches(&format!("set {f}=1; save_env -f \"$prefix/grubenv\" {f};")).count(),
                    2,
                    "{f}"
                );
            }
        }
        assert!(s.contains("linux /vmlinuz console=ttyS0 panic=10 flowwarden.slot=a"));
        assert!(s.contains("set root=\"($disk,gpt3)\"\n      linux /vmlinuz console=ttyS0 panic=10 flowwarden.slot=b"));
        assert!(!s.contains("t4"));
    }
}
