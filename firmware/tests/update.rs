//! Installing a bundle into a slot (what PID 1 does for `flowwarden update`), on
//! files standing in for the slot partition and the ESP's grubenv: a good bundle
//! lands byte for byte and goes first in the boot order on trial; every refusal
//! (key, tampering, truncation, board, epoch) leaves slot and flags exactly as they
//! were; a write that fails leaves the slot not bootable, never half-bootable.

use flowwarden::update::grubenv::Env;
use flowwarden::update::install::{self, Target, UpdateError};
use flowwarden::update::slots::{self, Slot};
use fwbundle::{Manifest, Refusal, SigningKey};
use std::path::{Path, PathBuf};

type R<T = ()> = Result<T, Box<dyn std::error::Error>>;

struct Fixture {
    _dir: tempfile::TempDir,
    root: PathBuf,
    key: SigningKey,
    payload: Vec<u8>,
}

const SLOT: u64 = 4 << 20;

fn fixture() -> R<Fixture> {
    let dir = tempfile::tempdir()?;
    let root = dir.path().to_path_buf();
    // A slot image: some varied bytes, then zeros (as a mostly empty ext4 is).
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut payload: Vec<u8> = (0..(1 << 20))
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 32) as u8
        })
        .collect();
    payload.resize(3 << 20, 0);
    std::fs::write(root.join("slot_b"), vec![0xeeu8; SLOT as usize])?;
    let mut env = Env::default();
    for (k, v) in [
        ("order", "a"),
        ("a_good", "1"),
        ("b_good", "1"),
        ("a_version", "1.0"),
        ("b_version", "1.0"),
    ] {
        env.set(k, v)?;
    }
    std::fs::write(root.join("grubenv"), env.render()?)?;
    let key = SigningKey::from_pem(SigningKey::generate_pem()?.as_bytes())?;
    Ok(Fixture {
        _dir: dir,
        root,
        key,
        payload,
    })
}

impl Fixture {
    fn manifest(&self, version: &str, compressed: &[u8]) -> Manifest {
        Manifest {
            format: fwbundle::FORMAT,
            product: fwbundle::PRODUCT.into(),
            board: "qemu-x86_64".into(),
            arch: "x86_64".into(),
            version: version.into(),
            epoch: 2,
            compression: "zstd".into(),
            compressed_size: compressed.len() as u64,
            compressed_sha256: fwbundle::sha256_hex(compressed),
            payload_size: self.payload.len() as u64,
            payload_sha256: fwbundle::sha256_hex(&self.payload),
        }
    }

    /// Writes a bundle; `edit` may change the manifest before it is signed.
    fn bundle(&self, name: &str, key: &SigningKey, edit: impl FnOnce(&mut Manifest)) -> R<PathBuf> {
        let compressed = zstd::bulk::compress(&self.payload, 3)?;
        self.bundle_of(name, key, &compressed, edit)
    }

    /// A bundle around `compressed` as given.
    fn bundle_of(&self, name: &str, key: &SigningKey, compressed: &[u8], edit: impl FnOnce(&mut Manifest)) -> R<PathBuf> {
        let mut m = self.manifest("2.0", compressed);
        edit(&mut m);
        let json = serde_json::to_vec(&m)?;
        let mut out = fwbundle::header_bytes(&json, &key.sign(&json));
        out.extend_from_slice(compressed);
        let p = self.root.join(name);
        std::fs::write(&p, out)?;
        Ok(p)
    }

    fn target(&self) -> Target {
        Target {
            slot: Slot::B,
            device: self.root.join("slot_b"),
            slot_size: SLOT,
            grubenv: self.root.join("grubenv"),
            keys: vec![self.key.public()],
            board: "qemu-x86_64".into(),
            arch: "x86_64".into(),
            epoch: 2,
        }
    }

    fn state(&self) -> R<(Vec<u8>, Vec<u8>)> {
        Ok((std::fs::read(self.root.join("slot_b"))?, std::fs::read(self.root.join("grubenv"))?))
    }
}

fn stage(bundle: &Path, t: &Target) -> (Result<install::Staged, UpdateError>, Vec<String>) {
    let mut said = Vec::new();
    let r = install::stage(bundle, t, &mut |l| said.push(l.to_string()));
    (r, said)
}

#[test]
fn a_good_bundle_lands_byte_for_byte_and_goes_first_on_trial() -> R {
    let f = fixture()?;
    let b = f.bundle("good.fwb", &f.key, |_| {})?;
    let (r, said) = stage(&b, &f.target());
    let staged = r?;
    assert_eq!(
        staged,
        install::Staged {
            version: "2.0".into(),
            slot: Slot::B
        }
    );
    let (dev, env) = f.state()?;
    assert_eq!(&dev[..f.payload.len()], &f.payload[..]);
    assert!(dev[f.payload.len()..].iter().all(|b| *b == 0xee), "wrote past the payload");
    let env = Env::parse(&env)?;
    assert_eq!(slots::order(&env), Slot::B);
    assert_eq!(slots::info(&env, Slot::B).describe(false), "2.0, on trial (0 of 3 tries used)");
    assert_eq!(slots::info(&env, Slot::A).describe(false), "1.0, good");
    let text = said.join("\n");
    for step in [
        "signature, board, arch, epoch and size are right",
        "payload checked",
        "marked not bootable",
        "read back",
        "on trial for 3 boots",
    ] {
        assert!(text.contains(step), "no {step:?} in:\n{text}");
    }
    Ok(())
}

#[test]
fn refusals_change_nothing() -> R {
    let f = fixture()?;
    let before = f.state()?;
    let other = SigningKey::from_pem(SigningKey::generate_pem()?.as_bytes())?;
    let cases: Vec<(PathBuf, &str)> = vec![
        (f.bundle("other.fwb", &other, |_| {})?, "signature: "),
        (f.bundle("board.fwb", &f.key, |m| m.board = "qemu-aarch64".into())?, "board: "),
        (f.bundle("arch.fwb", &f.key, |m| m.arch = "aarch64".into())?, "arch: "),
        (f.bundle("old.fwb", &f.key, |m| m.epoch = 1)?, "epoch: "),
        (f.bundle("big.fwb", &f.key, |m| m.payload_size = SLOT + 1)?, "size: "),
        // Signed, but the payload is not what the manifest says.
        (f.bundle("short.fwb", &f.key, |m| m.payload_size -= 1)?, "hash: "),
        (
            f.bundle("wrong.fwb", &f.key, |m| m.payload_sha256 = "0".repeat(64))?,
            "hash: the payload decompresses",
        ),
        (
            f.bundle("wrongz.fwb", &f.key, |m| m.compressed_sha256 = "0".repeat(64))?,
            "hash: the compressed payload",
        ),
        (
            f.bundle("nohash.fwb", &f.key, |m| m.compressed_sha256 = "zz".into())?,
            "format: compressed_sha256",
        ),
    ];
    let tampered = f.bundle("tampered.fwb", &f.key, |_| {})?;
    let mut t = std::fs::read(&tampered)?;
    let n = t.len();
    t[n - 100] ^= 1;
    std::fs::write(&tampered, &t)?;
    // A zstd skippable frame ahead of the image: changing a byte inside it leaves the
    // decompressed image as signed, and the bundle must still be refused.
    let mut skippable = vec![0x50, 0x2a, 0x4d, 0x18, 16, 0, 0, 0];
    skippable.extend_from_slice(&[0xaa; 16]);
    skippable.extend_from_slice(&zstd::bulk::compress(&f.payload, 3)?);
    let same_image = f.bundle_of("skippable.fwb", &f.key, &skippable, |_| {})?;
    let mut b = std::fs::read(&same_image)?;
    let at = b.len() - skippable.len() + 8;
    b[at] ^= 0x40;
    std::fs::write(&same_image, &b)?;
    let truncated = f.root.join("truncated.fwb");
    std::fs::write(&truncated, &t[..n - 10])?;
    let not_a_bundle = f.root.join("notes.txt");
    std::fs::write(&not_a_bundle, b"hello")?;
    let cases = cases.into_iter().chain([
        (tampered, "hash: the compressed payload"),
        (same_image, "hash: the compressed payload"),
        (truncated, "size: "),
        (not_a_bundle, "format: "),
    ]);
    for (bundle, reason) in cases {
        let (r, _) = stage(&bundle, &f.target());
        match r {
            Err(UpdateError::Refused(e)) => assert!(e.to_string().starts_with(reason), "{}: {e}", bundle.display()),
            other => panic!("{}: expected a refusal ({reason}), got {other:?}", bundle.display()),
        }
        assert!(f.state()? == before, "{}: slot or flags changed", bundle.display());
    }
    // The same bundle with two trusted keys (rotation): the second one signed it.
    let mut t2 = f.target();
    t2.keys = vec![other.public(), f.key.public()];
    let (r, said) = stage(&f.bundle("rotated.fwb", &f.key, |_| {})?, &t2);
    assert!(r.is_ok(), "{r:?}");
    assert!(said[0].contains(&f.key.public().fingerprint()), "{said:?}");
    Ok(())
}

#[test]
fn a_failed_write_leaves_the_slot_not_bootable() -> R {
    let f = fixture()?;
    let b = f.bundle("good.fwb", &f.key, |_| {})?;
    let mut t = f.target();
    t.device = f.root.join("no-such-dir/slot_b");
    let (r, _) = stage(&b, &t);
    assert!(
        matches!(r, Err(UpdateError::Failed(ref e)) if e.contains("cannot open the slot")),
        "{r:?}"
    );
    let env = Env::parse(&f.state()?.1)?;
    assert_eq!(slots::order(&env), Slot::A, "the boot order changed");
    assert!(slots::info(&env, Slot::B).describe(false).starts_with("not bootable"));
    // A damaged grubenv is a failure before anything is written.
    std::fs::write(f.root.join("grubenv"), b"garbage")?;
    let before = std::fs::read(f.root.join("slot_b"))?;
    let (r, _) = stage(&b, &f.target());
    assert!(matches!(r, Err(UpdateError::Failed(ref e)) if e.contains("grubenv")), "{r:?}");
    assert_eq!(std::fs::read(f.root.join("slot_b"))?, before);
    Ok(())
}

#[test]
fn refusal_words_match_the_contract() {
    // `flowwarden: update refused: REASON`: REASON starts with the check's name.
    for (r, word) in [
        (Refusal::Signature("x".into()), "signature"),
        (Refusal::Board("x".into()), "board"),
        (Refusal::Arch("x".into()), "arch"),
        (Refusal::Epoch("x".into()), "epoch"),
        (Refusal::Size("x".into()), "size"),
        (Refusal::Hash("x".into()), "hash"),
    ] {
        assert_eq!(r.to_string(), format!("{word}: x"));
    }
}
