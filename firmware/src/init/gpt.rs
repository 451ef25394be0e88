//! Grows the data partition to the end of its disk on the boot after the image was
//! written to a larger disk: edits the GUID partition table (primary and backup
//! headers, entry array, their CRC32s, the protective MBR) so the last partition,
//! if it is the data partition, ends at the last whole MiB. PID 1 then reboots so the
//! kernel sees the new size, and `resize2fs` grows the mounted file system.

use std::io::{Read, Seek, SeekFrom, Write};
use thiserror::Error;

const SECTOR: u64 = 512;
const ALIGN: u64 = 2048; // 1 MiB in sectors
/// Growing by less than this is not worth a reboot.
const MIN_GAIN: u64 = 16 * ALIGN;

#[derive(Debug, Error)]
pub enum GptError {
    #[error("partition table: {0}")]
    Io(#[from] std::io::Error),
    #[error("partition table: {0}")]
    Invalid(&'static str),
}

/// A partition that was grown, in sectors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Grown {
    pub first: u64,
    pub old_last: u64,
    pub new_last: u64,
}

/// CRC-32 (IEEE 802.3, reflected), as GPT uses.
pub fn crc32(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 { (crc >> 1) ^ 0xEDB8_8320 } else { crc >> 1 };
        }
    }
    !crc
}

fn u32_at(b: &[u8], o: usize) -> u32 {
    u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]])
}

fn u64_at(b: &[u8], o: usize) -> u64 {
    u64::from(u32_at(b, o)) | (u64::from(u32_at(b, o + 4)) << 32)
}

fn name_of(entry: &[u8]) -> String {
    let units: Vec<u16> = entry[56..128]
        .chunks_exact(2)
        .map(|c| u16::from_le_bytes([c[0], c[1]]))
        .take_while(|u| *u != 0)
        .collect();
    String::from_utf16_lossy(&units)
}

fn set_header_crc(h: &mut [u8], size: usize) {
    h[16..20].fill(0);
    let c = crc32(&h[..size]);
    h[16..20].copy_from_slice(&c.to_le_bytes());
}

fn read_at(disk: &mut (impl Read + Seek), lba: u64, len: usize) -> Result<Vec<u8>, GptError> {
    let mut b = vec![0u8; len];
    disk.seek(SeekFrom::Start(lba * SECTOR))?;
    disk.read_exact(&mut b)?;
    Ok(b)
}

fn write_at(disk: &mut (impl Write + Seek), lba: u64, data: &[u8]) -> Result<(), GptError> {
    disk.seek(SeekFrom::Start(lba * SECTOR))?;
    disk.write_all(data)?;
    Ok(())
}

/// Grows the partition named `name` to the end of a disk of `total` sectors if it is
/// the last partition and at least 16 MiB would be gained; `Ok(None)` otherwise.
pub fn grow(disk: &mut (impl Read + Write + Seek), total: u64, name: &str) -> Result<Option<Grown>, GptError> {
    let mut h = read_at(disk, 1, SECTOR as usize)?;
    if &h[0..8] != b"EFI PART" {
        return Err(GptError::Invalid("no GPT header at LBA 1"));
    }
    let hsize = u32_at(&h, 12) as usize;
    if !(92..=512).contains(&hsize) {
        return Err(GptError::Invalid("header size out of range"));
    }
    let mut check = h.clone();
    set_header_crc(&mut check, hsize);
    if check[16..20] != h[16..20] {
        return Err(GptError::Invalid("primary header CRC mismatch"));
    }
    let (entries_lba, n, esize) = (u64_at(&h, 72), u32_at(&h, 80) as usize, u32_at(&h, 84) as usize);
    if esize < 128 || n == 0 || n * esize > 1 << 20 {
        return Err(GptError::Invalid("entry array size out of range"));
    }
    let mut entries = read_at(disk, entries_lba, n * esize)?;
    if crc32(&entries) != u32_at(&h, 88) {
        return Err(GptError::Invalid("entry array CRC mismatch"));
    }
    let used: Vec<usize> = (0..n)
        .filter(|i| entries[i * esize..i * esize + 16].iter().any(|b| *b != 0))
        .collect();
    let Some(&idx) = used.iter().find(|i| name_of(&entries[*i * esize..(*i + 1) * esize]) == name) else {
        return Ok(None);
    };
    let e = idx * esize;
    let (first, old_last) = (u64_at(&entries, e + 32), u64_at(&entries, e + 40));
    if used.iter().any(|i| u64_at(&entries, i * esize + 32) > first) {
        return Ok(None); // not the last partition: nothing to grow into
    }
    let entry_sectors = ((n * esize) as u64).div_ceil(SECTOR);
    let Some(last_usable) = total.checked_sub(2 + entry_sectors) else {
        return Err(GptError::Invalid("disk smaller than its partition table"));
    };
    let new_last = ((last_usable + 1) / ALIGN) * ALIGN - 1;
    if new_last < old_last + MIN_GAIN {
        return Ok(None);
    }
    entries[e + 40..e + 48].copy_from_slice(&new_last.to_le_bytes());
    let ecrc = crc32(&entries).to_le_bytes();
    h[32..40].copy_from_slice(&(total - 1).to_le_bytes());
    h[48..56].copy_from_slice(&last_usable.to_le_bytes());
    h[88..92].copy_from_slice(&ecrc);
    set_header_crc(&mut h, hsize);
    let mut backup = h.clone();
    backup[24..32].copy_from_slice(&(total - 1).to_le_bytes());
    backup[32..40].copy_from_slice(&1u64.to_le_bytes());
    backup[72..80].copy_from_slice(&(total - 1 - entry_sectors).to_le_bytes());
    set_header_crc(&mut backup, hsize);
    // Backup first, primary last: a cut in between leaves a valid primary (old size).
    write_at(disk, total - 1 - entry_sectors, &entries)?;
    write_at(disk, total - 1, &backup)?;
    write_at(disk, entries_lba, &entries)?;
    write_at(disk, 1, &h)?;
    // Protective MBR: one 0xEE partition covering the disk (capped at 2^32-1 sectors).
    let mut mbr = read_at(disk, 0, SECTOR as usize)?;
    if mbr[510..512] == [0x55, 0xaa] && mbr[446 + 4] == 0xee {
        let size = (total - 1).min(u64::from(u32::MAX)) as u32;
        mbr[446 + 12..446 + 16].copy_from_slice(&size.to_le_bytes());
        write_at(disk, 0, &mbr)?;
    }
    disk.flush()?;
    Ok(Some(Grown { first, old_last, new_last }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::{Command, Stdio};

    fn sfdisk(img: &std::path::Path, args: &[&str], stdin: Option<&str>) -> String {
        let mut c = Command::new("sfdisk")
            .args(args)
            .arg(img)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("sfdisk (util-linux)");
        if let Some(s) = stdin {
            c.stdin.take().unwrap().write_all(s.as_bytes()).unwrap();
        }
        let o = c.wait_with_output().unwrap();
        String::from_utf8_lossy(&o.stdout).to_string() + &String::from_utf8_lossy(&o.stderr)
    }

    #[test]
    fn crc32_known_value() {
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
    }

    #[test]
    fn grows_the_last_partition_and_sfdisk_agrees() {
        let d = tempfile::tempdir().unwrap();
        let img = d.path().join("disk.img");
        std::fs::File::create(&img).unwrap().set_len(64 << 20).unwrap();
        sfdisk(
            &img,
            &["--no-reread", "--no-tell-kernel", "-q"],
            Some(
                "label: gpt\nstart=2048, size=16384, type=C12A7328-F81F-11D2-BA4B-00A0C93EC93B, name=\"esp\"\nstart=18432, size=110592, type=0FC63DAF-8483-4772-8E79-3D69D8477DE4, name=\"data\"\n",
            ),
        );
        let mut f = std::fs::OpenOptions::new().read(true).write(true).open(&img).unwrap();
        // Same size: nothing to gain.
        assert_eq!(grow(&mut f, (64 << 20) / 512, "data").unwrap(), None);
        f.set_len(256 << 20).unwrap();
        let total = (256 << 20) / 512;
        assert_eq!(grow(&mut f, total, "esp").unwrap(), None, "esp is not the last partition");
        let g = grow(&mut f, total, "data").unwrap().unwrap();
        assert_eq!(g.old_last, 18432 + 110592 - 1);
        assert_eq!((g.new_last + 1) % 2048, 0);
        assert!(g.new_last <= total - 34);
        drop(f);
        let verify = sfdisk(&img, &["--verify"], None);
        assert!(verify.contains("No errors detected"), "{verify}");
        let dump = sfdisk(&img, &["--dump"], None);
        let size = g.new_last - 18432 + 1;
        let line = dump.lines().find(|l| l.contains("name=\"data\"")).unwrap();
        let words: Vec<&str> = line.split_whitespace().collect();
        assert!(words.contains(&"18432,") && words.contains(&format!("{size},").as_str()), "{dump}");
        assert!(dump.contains("last-lba: 524254"), "{dump}");
        // Idempotent: the second boot finds nothing to do.
        let mut f = std::fs::OpenOptions::new().read(true).write(true).open(&img).unwrap();
        assert_eq!(grow(&mut f, total, "data").unwrap(), None);
    }

    #[test]
    fn corrupt_tables_are_refused() {
        let mut c = std::io::Cursor::new(vec![0u8; 1 << 20]);
        assert!(grow(&mut c, 2048, "data").is_err());
        let mut short = std::io::Cursor::new(vec![0u8; 100]);
        assert!(grow(&mut short, 2048, "data").is_err());
    }
}
