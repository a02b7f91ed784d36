//! The halt latch file (`halt.state` in the audit directory): the kill switch's restrictions,
//! written by the stopping thread itself with one `pwrite` into space reserved at start.
//!
//! It exists for the cases the log cannot cover alone: a disk so full that the halt's records
//! cannot reach a segment, a halt after the logger was closed, and the microseconds between a
//! stop and the flusher. It needs no new space (fallocated once) and survives `kill -9` the
//! moment `pwrite` returns (page cache). It can only restrict: restore takes the stricter of
//! the latch and the log, and a latched halt is lifted only by an authenticated reset in the
//! log with a later seq, or by a reset of this switch (which clears the slot).
//!
//! Layout (little-endian): 256 slots of 256 bytes. Slot 0 is the header (`KSLATCH1`, version,
//! slot size, slot count). Slots 1..256: an all-zero slot is free; otherwise
//! `state u8 | flags u8 | text_len u16 | reserved u32 | scope_id u64 | seq u64 | wall_ns u64 |
//! scope text [220] | crc32c u32` (CRC of bytes 0..252). A slot whose CRC fails is damage,
//! which restore turns into a firm halt. When every slot is taken, slot 1 becomes a firm halt
//! (flag `OVERFLOW`): fail closed rather than forget a restriction.
use crate::clock;
use crate::crc::crc32c;
use std::fs::File;
use std::io;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// File name inside the audit directory.
pub const FILE_NAME: &str = "halt.state";
const MAGIC: &[u8; 8] = b"KSLATCH1";
const SLOT: usize = 256;
const SLOTS: usize = 256;
const TEXT_MAX: usize = 220;
/// Flag: the latch ran out of slots and holds a firm halt instead.
pub const FLAG_OVERFLOW: u8 = 1;
/// `seq` of a latched restriction whose record could not be audited.
pub const SEQ_UNKNOWN: u64 = u64::MAX;

/// One latched restriction read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Latched {
    /// Scope id (0: firm).
    pub scope_id: u64,
    /// Canonical scope text (`firm` for the firm).
    pub text: String,
    /// REDUCING or HALTED.
    pub state: u8,
    /// Seq of the record that restricted it (SEQ_UNKNOWN: none could be written).
    pub seq: u64,
    /// Flags (FLAG_OVERFLOW).
    pub flags: u8,
}

/// What a latch file holds: the restrictions, and damage (slot offsets with a bad CRC).
#[derive(Debug, Default)]
pub struct LatchContents {
    /// Valid latched restrictions.
    pub latched: Vec<Latched>,
    /// "path: offset N: why" for each damaged slot or header.
    pub damage: Vec<String>,
}

/// The writer side, owned by a kill switch. Slots are found by probing from
/// `1 + scope_id % 255` and reading the file, not from a table in memory, so several switches
/// (or processes) on one directory never overwrite each other's slots.
pub struct Latch {
    file: File,
    path: PathBuf,
    /// Serialises this switch's writers (a probe, then a write).
    lock: Mutex<()>,
}

fn encode(l: &Latched) -> [u8; SLOT] {
    let mut b = [0u8; SLOT];
    b[0] = l.state;
    b[1] = l.flags;
    let text = truncate_utf8(&l.text, TEXT_MAX);
    b[2..4].copy_from_slice(&(text.len() as u16).to_le_bytes());
    b[8..16].copy_from_slice(&l.scope_id.to_le_bytes());
    b[16..24].copy_from_slice(&l.seq.to_le_bytes());
    b[24..32].copy_from_slice(&clock::realtime_ns().to_le_bytes());
    b[32..32 + text.len()].copy_from_slice(text.as_bytes());
    let crc = crc32c(&b[..SLOT - 4]);
    b[SLOT - 4..].copy_from_slice(&crc.to_le_bytes());
    b
}

fn truncate_utf8(s: &str, max: usize) -> &str {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

fn decode(b: &[u8]) -> Result<Option<Latched>, &'static str> {
    if b.iter().all(|&x| x == 0) {
        return Ok(None);
    }
    let stored = u32::from_le_bytes(b[SLOT - 4..].try_into().expect("4 bytes"));
    if crc32c(&b[..SLOT - 4]) != stored {
        return Err("latch slot checksum mismatch");
    }
    let text_len = u16::from_le_bytes([b[2], b[3]]) as usize;
    if text_len > TEXT_MAX {
        return Err("latch slot text length out of range");
    }
    let text = std::str::from_utf8(&b[32..32 + text_len]).map_err(|_| "latch text not UTF-8")?;
    Ok(Some(Latched {
        state: b[0],
        flags: b[1],
        scope_id: u64::from_le_bytes(b[8..16].try_into().expect("8 bytes")),
        seq: u64::from_le_bytes(b[16..24].try_into().expect("8 bytes")),
        text: text.to_owned(),
    }))
}

fn header() -> [u8; SLOT] {
    let mut h = [0u8; SLOT];
    h[..8].copy_from_slice(MAGIC);
    h[8..10].copy_from_slice(&1u16.to_le_bytes());
    h[10..12].copy_from_slice(&(SLOT as u16).to_le_bytes());
    h[12..16].copy_from_slice(&(SLOTS as u32).to_le_bytes());
    h
}

/// Reads the latch file of `dir` (no file: nothing latched).
pub fn read(dir: &Path) -> LatchContents {
    let path = dir.join(FILE_NAME);
    let mut out = LatchContents::default();
    let bytes = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return out,
        Err(e) => {
            out.damage
                .push(format!("{}: unreadable: {e}", path.display()));
            return out;
        }
    };
    if bytes.len() < SLOT || bytes[..SLOT] != header() {
        out.damage.push(format!(
            "{}: offset 0: not a latch file header",
            path.display()
        ));
    }
    for (i, slot) in bytes.chunks_exact(SLOT).enumerate().skip(1) {
        match decode(slot) {
            Ok(Some(l)) => out.latched.push(l),
            Ok(None) => {}
            Err(why) => out
                .damage
                .push(format!("{}: offset {}: {why}", path.display(), i * SLOT)),
        }
    }
    if bytes.len() % SLOT != 0 {
        out.damage.push(format!(
            "{}: offset {}: trailing bytes",
            path.display(),
            bytes.len() - bytes.len() % SLOT
        ));
    }
    out
}

impl Latch {
    /// Opens (or creates, mode 0640, fully allocated) the latch file of `dir`. Never follows
    /// a symlink planted in its place.
    pub fn open(dir: &Path) -> io::Result<Latch> {
        let path = dir.join(FILE_NAME);
        let size = (SLOT * SLOTS) as u64;
        let file = match std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(0o640)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&path)
        {
            Ok(f) => {
                crate::segment::allocate(&f, size)?;
                f.write_all_at(&header(), 0)?;
                f
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
                .open(&path)?,
            Err(e) => return Err(e),
        };
        if !file.metadata()?.is_file() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{} is not a regular file", path.display()),
            ));
        }
        if file.metadata()?.len() < size {
            crate::segment::allocate(&file, size)?;
            file.write_all_at(&header(), 0)?;
        }
        Ok(Latch {
            file,
            path,
            lock: Mutex::new(()),
        })
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The slot holding `scope_id`, else the first free one on its probe sequence (None: the
    /// latch is full). A slot that fails its CRC is never reused: it is evidence.
    fn probe(&self, scope_id: u64) -> io::Result<Option<usize>> {
        let mut buf = [0u8; SLOT];
        let start = (scope_id % (SLOTS as u64 - 1)) as usize;
        for k in 0..SLOTS - 1 {
            let i = 1 + (start + k) % (SLOTS - 1);
            self.file.read_exact_at(&mut buf, (i * SLOT) as u64)?;
            match decode(&buf) {
                Ok(Some(l)) if l.scope_id == scope_id && l.flags & FLAG_OVERFLOW == 0 => {
                    return Ok(Some(i))
                }
                // a free slot ends the probe; a cleared slot earlier in the chain can leave an
                // older copy further on, which is harmless: restore takes the most recent
                // evidence per scope and `clear` frees every copy
                Ok(None) => return Ok(Some(i)),
                _ => {}
            }
        }
        Ok(None)
    }

    /// Latches `scope_id` at `state` (a probe and one pwrite). On a full latch, a firm halt
    /// goes into slot 1 instead (fail closed).
    pub fn set(&self, scope_id: u64, text: &str, state: u8, seq: u64) -> io::Result<()> {
        let _guard = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        let (index, entry) = match self.probe(scope_id)? {
            Some(i) => (
                i,
                Latched {
                    scope_id,
                    text: text.to_owned(),
                    state,
                    seq,
                    flags: 0,
                },
            ),
            None => (
                1,
                Latched {
                    scope_id: 0,
                    text: "firm".into(),
                    state: crate::gate::HALTED,
                    seq: SEQ_UNKNOWN,
                    flags: FLAG_OVERFLOW,
                },
            ),
        };
        self.file
            .write_all_at(&encode(&entry), (index * SLOT) as u64)
    }

    /// Frees `scope_id`'s slot (after an accepted reset). A reset of the firm also clears an
    /// overflow marker and damaged slots (the operator's firm reset is how a fail-closed
    /// restore is lifted).
    pub fn clear(&self, scope_id: u64) -> io::Result<()> {
        let _guard = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        let mut buf = [0u8; SLOT];
        for i in 1..SLOTS {
            self.file.read_exact_at(&mut buf, (i * SLOT) as u64)?;
            let clear = match decode(&buf) {
                Ok(Some(l)) => {
                    l.scope_id == scope_id && (l.flags & FLAG_OVERFLOW == 0 || scope_id == 0)
                }
                Ok(None) => false,
                Err(_) => scope_id == 0,
            };
            if clear {
                self.file.write_all_at(&[0u8; SLOT], (i * SLOT) as u64)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latched_restrictions_read_back_and_clear() {
        let dir = tempfile::tempdir().unwrap();
        let l = Latch::open(dir.path()).unwrap();
        l.set(0, "firm", 2, 17).unwrap();
        l.set(42, "strategy=mm", 1, 20).unwrap();
        l.set(42, "strategy=mm", 2, 25).unwrap();
        let c = read(dir.path());
        assert!(c.damage.is_empty(), "{:?}", c.damage);
        assert_eq!(c.latched.len(), 2);
        assert_eq!(c.latched[1].state, 2);
        assert_eq!(c.latched[1].seq, 25);
        l.clear(0).unwrap();
        drop(l);
        let l = Latch::open(dir.path()).unwrap();
        let c = read(dir.path());
        assert_eq!(c.latched.len(), 1);
        assert_eq!(c.latched[0].text, "strategy=mm");
        l.clear(42).unwrap();
        assert!(read(dir.path()).latched.is_empty());
    }

    #[test]
    fn a_flipped_byte_is_damage_and_a_full_latch_halts_the_firm() {
        let dir = tempfile::tempdir().unwrap();
        let l = Latch::open(dir.path()).unwrap();
        for id in 1..=SLOTS as u64 {
            l.set(id, "x", 1, id).unwrap();
        }
        let c = read(dir.path());
        assert!(c
            .latched
            .iter()
            .any(|x| x.flags == FLAG_OVERFLOW && x.scope_id == 0 && x.state == 2));
        let path = dir.path().join(FILE_NAME);
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[SLOT * 3 + 40] ^= 1;
        std::fs::write(&path, bytes).unwrap();
        let c = read(dir.path());
        assert_eq!(c.damage.len(), 1);
        assert!(c.damage[0].contains("offset 768"), "{:?}", c.damage);
    }

    #[test]
    fn two_switches_on_one_directory_keep_each_others_slots() {
        let dir = tempfile::tempdir().unwrap();
        let a = Latch::open(dir.path()).unwrap();
        let b = Latch::open(dir.path()).unwrap();
        a.set(7, "strategy=a", 2, 1).unwrap();
        b.set(7 + 255, "strategy=b", 2, 2).unwrap(); // same home slot
        b.set(9, "strategy=c", 1, 3).unwrap();
        let mut ids: Vec<u64> = read(dir.path())
            .latched
            .iter()
            .map(|l| l.scope_id)
            .collect();
        ids.sort();
        assert_eq!(ids, vec![7, 9, 262]);
        a.clear(262).unwrap();
        let ids: Vec<u64> = read(dir.path())
            .latched
            .iter()
            .map(|l| l.scope_id)
            .collect();
        assert!(!ids.contains(&262) && ids.contains(&7));
    }

    #[test]
    fn a_planted_symlink_is_not_followed() {
        let dir = tempfile::tempdir().unwrap();
        let victim = dir.path().join("victim");
        std::fs::write(&victim, b"precious").unwrap();
        std::os::unix::fs::symlink(&victim, dir.path().join(FILE_NAME)).unwrap();
        assert!(Latch::open(dir.path()).is_err());
        assert_eq!(std::fs::read(&victim).unwrap(), b"precious");
    }
}
