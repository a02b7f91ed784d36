//! What recovery does to segment files after a crash: removes stale prepared files, tells
//! whether a writer's own chain head verifies (a wrong key), and seals a segment its writer
//! left open.
use super::{header_chain, header_u32, header_u64, off, read_header, LogDir, STAGE_RECORDS};
use super::{FLAG_CLOSED, FLAG_RECOVERED, HEADER_SIZE};
use crate::chain::{Chain, ChainHead};
use crate::record::RECORD_SIZE;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;

/// Removes stale `*.seg.next` files left by a crash (a planted symlink: the link, not its
/// target).
pub fn remove_stale_prepared(dir: &LogDir) -> io::Result<()> {
    for entry in std::fs::read_dir(dir.path())? {
        let name = entry?.file_name();
        let name = name.to_string_lossy();
        if name.ends_with(".seg.next") {
            dir.unlink(&name)?;
        }
    }
    Ok(())
}

/// Hashes the first `count` records of a segment file after `prev`; also returns the chain
/// value after the first `check_at` records when `check_at <= count`.
fn hash_records(
    file: &File,
    key: Option<&[u8]>,
    prev: &ChainHead,
    index: u64,
    count: u64,
    check_at: u64,
) -> io::Result<(ChainHead, Option<ChainHead>)> {
    let mut chain = Chain::start(key, prev, index);
    let mut at_check = (check_at == 0).then(|| chain.head());
    let mut buf = vec![0u8; STAGE_RECORDS * RECORD_SIZE];
    let mut done = 0u64;
    while done < count {
        let mut n = (count - done).min(STAGE_RECORDS as u64);
        if done < check_at && done + n > check_at {
            n = check_at - done;
        }
        let bytes = &mut buf[..n as usize * RECORD_SIZE];
        file.read_exact_at(bytes, HEADER_SIZE as u64 + done * RECORD_SIZE as u64)?;
        chain.update(bytes);
        done += n;
        if done == check_at {
            at_check = Some(chain.head());
        }
    }
    Ok((chain.head(), at_check))
}

/// Does the `chain_head` of this segment's header verify over its `chain_records` records
/// with `key`? (A closed segment's chain covers all its records: this is how a wrong HMAC key
/// is told at open.) `None` when the header claims more records than the file holds.
pub fn writer_chain_verifies(file: &File, key: Option<&[u8]>) -> io::Result<Option<bool>> {
    let h = read_header(file)?;
    let len = file.metadata()?.len();
    let n = header_u64(&h, off::CHAIN_RECORDS);
    if n > len.saturating_sub(HEADER_SIZE as u64) / RECORD_SIZE as u64 {
        return Ok(None);
    }
    let index = header_u64(&h, off::SEGMENT_INDEX);
    let prev = header_chain(&h, off::PREV_CHAIN);
    let (head, _) = hash_records(file, key, &prev, index, n, n)?;
    Ok(Some(head == header_chain(&h, off::CHAIN_HEAD)))
}

/// What [`seal_after_crash`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SealReport {
    /// The final chain value (the next segment's `prev_chain`).
    pub head: ChainHead,
    /// Records the dead writer had chained itself (now in `writer_chained`); 0 when its own
    /// chain head did not verify.
    pub writer_chained: u64,
    /// The dead writer's `chain_records`, as its header said.
    pub claimed_chained: u64,
    /// False when the writer's own chain head does not verify over its `chain_records`
    /// records (damage, tampering, or a wrong key): none of its records is then trusted.
    pub writer_chain_ok: bool,
}

/// Seals a segment left open by a crash: `committed` and the chain cover exactly the
/// `valid` records a reader found, and the CLOSED and RECOVERED flags are set.
///
/// Before anything is written, the dead writer's own chain head is checked over its
/// `chain_records` records. `writer_chained` records how many records the writer itself
/// chained (0 when its head does not verify): records after that index were hashed by
/// recovery, not by their writer, so restore never lets them lift a halt (docs/FORMAT.md).
pub fn seal_after_crash(
    dir: &LogDir,
    path: &Path,
    valid: u64,
    key: Option<&[u8]>,
) -> io::Result<SealReport> {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let file = dir.open_rw(&name)?;
    let len = file.metadata()?.len();
    let needed = HEADER_SIZE as u64 + valid * RECORD_SIZE as u64;
    if len < needed {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{}: shorter than its records", path.display()),
        ));
    }
    let header = read_header(&file)?;
    let index = header_u64(&header, off::SEGMENT_INDEX);
    let prev = header_chain(&header, off::PREV_CHAIN);
    let claimed = header_u64(&header, off::CHAIN_RECORDS);
    let claimed_head = header_chain(&header, off::CHAIN_HEAD);
    let (head, at_claimed) = hash_records(&file, key, &prev, index, valid, claimed)?;
    let old_flags = header_u32(&header, off::FLAGS);
    let (writer_chained, writer_chain_ok) = if old_flags & FLAG_RECOVERED != 0 {
        // A seal interrupted by another crash: the chain fields may already be recovery's own,
        // so the writer's count is the one recorded before them.
        (header_u64(&header, off::WRITER_CHAINED).min(valid), true)
    } else {
        // A writer that died before its chainer published anything left zeros: nothing chained.
        let nothing_chained = claimed == 0 && claimed_head == [0; 32];
        let ok = nothing_chained || at_claimed == Some(claimed_head);
        (if ok && !nothing_chained { claimed } else { 0 }, ok)
    };
    // Order matters for a crash during the seal: `writer_chained` and RECOVERED first, then
    // the chain recovery computed, then CLOSED.
    file.write_all_at(&writer_chained.to_le_bytes(), off::WRITER_CHAINED as u64)?;
    file.write_all_at(
        &(old_flags | FLAG_RECOVERED).to_le_bytes(),
        off::FLAGS as u64,
    )?;
    file.write_all_at(&valid.to_le_bytes(), off::COMMITTED as u64)?;
    let mut chain_fields = [0u8; 40];
    chain_fields[..8].copy_from_slice(&valid.to_le_bytes());
    chain_fields[8..].copy_from_slice(&head);
    file.write_all_at(&chain_fields, off::CHAIN_RECORDS as u64)?;
    let flags = old_flags | FLAG_CLOSED | FLAG_RECOVERED;
    file.write_all_at(&flags.to_le_bytes(), off::FLAGS as u64)?;
    file.sync_data()?;
    Ok(SealReport {
        head,
        writer_chained,
        claimed_chained: claimed,
        writer_chain_ok,
    })
}
