//! Recovery at open: where the previous run of a directory left off ([`recover()`]), the
//! segment header checks ([`check_headers`]) and the notes about sealed or damaged segments.
use super::*;

/// Where the previous run of a directory left off.
pub(super) struct Recovered {
    pub(super) next_index: u64,
    pub(super) next_seq: u64,
    pub(super) prev_chain: ChainHead,
    pub(super) notes: Vec<String>,
}

fn key_help(dir: &Path) -> String {
    format!(
        "give the key of {} as hex in the environment variable named by the config key \
         audit_system.hmac_key_env (default KILLSWITCH_AUDIT_HMAC_KEY), or as hmac_key=",
        dir.display()
    )
}

/// Reads every segment header: keyed or not, the highest `seq_reserved` mark, and checks the
/// key against the last closed segment. Returns the highest sane mark.
fn check_headers(
    dir: &LogDir,
    segments: &[(u64, PathBuf)],
    key: Option<&[u8]>,
    notes: &mut Vec<String>,
) -> Result<u64, OpenError> {
    let path = dir.path();
    let mut mark = 0u64;
    let (mut keyed, mut unkeyed) = (None, None);
    let mut last_closed = None;
    for (_, seg_path) in segments {
        let name = seg_path.file_name().unwrap_or_default().to_string_lossy();
        // Unreadable or foreign files: the reader below reports them.
        let Ok(file) = dir.open_rw(&name) else {
            continue;
        };
        let Ok(h) = segment::read_header(&file) else {
            continue;
        };
        if &h[..8] != MAGIC {
            continue;
        }
        let flags = header_u32(&h, off::FLAGS);
        if flags & FLAG_KEYED != 0 {
            keyed.get_or_insert_with(|| seg_path.clone());
        } else {
            unkeyed.get_or_insert_with(|| seg_path.clone());
        }
        let m = header_u64(&h, off::SEQ_RESERVED);
        if m >= SEQ_LIMIT {
            notes.push(format!(
                "{}: offset {}: seq_reserved {m} is beyond any real counter (damage or \
                 forgery); not used for the sequence counter",
                seg_path.display(),
                off::SEQ_RESERVED
            ));
        } else {
            mark = mark.max(m);
        }
        if flags & FLAG_CLOSED != 0 {
            last_closed = Some((file, seg_path.clone()));
        }
    }
    match (key, keyed, unkeyed) {
        (None, Some(k), _) => {
            return Err(OpenError::Key(format!(
                "{}: the audit log is HMAC-keyed ({} has the KEYED flag) and no key was given: \
                 {}",
                path.display(),
                k.display(),
                key_help(path)
            )))
        }
        (Some(_), _, Some(u)) => {
            return Err(OpenError::Key(format!(
                "{}: an HMAC key was given but this audit log is not keyed ({} is plain \
                 SHA-256): a directory is keyed from its first segment on, so that a cleared \
                 KEYED flag is always tampering; start keyed logging in a new directory",
                path.display(),
                u.display()
            )))
        }
        _ => {}
    }
    if let (Some(k), Some((file, seg_path))) = (key, last_closed) {
        let verifies = segment::writer_chain_verifies(&file, Some(k))
            .map_err(|e| OpenError::Io(seg_path.clone(), e))?;
        if verifies != Some(true) {
            return Err(OpenError::Key(format!(
                "{}: offset {}: the chain head of this closed segment does not verify with \
                 the given HMAC key: the key is wrong (or the segment was altered; run \
                 `killswitch-audit verify`); {}",
                seg_path.display(),
                off::CHAIN_HEAD,
                key_help(path)
            )));
        }
    }
    Ok(mark)
}

/// At most this many "record above the mark" notes per segment.
const MAX_SEQ_NOTES: usize = 3;

pub(super) fn recover(dir: &LogDir, key: Option<&[u8]>) -> Result<Recovered, OpenError> {
    let path = dir.path();
    let io_err = |e| OpenError::Io(path.to_path_buf(), e);
    segment::remove_stale_prepared(dir).map_err(io_err)?;
    let segments = reader::list_segments(path).map_err(io_err)?;
    let mut out = Recovered {
        next_index: 0,
        next_seq: 0,
        prev_chain: [0; 32],
        notes: Vec::new(),
    };
    let Some((last_index, _)) = segments.last() else {
        return Ok(out);
    };
    // The next session starts at or above every mark a writer put on file: it handed out no
    // seq at or above its mark, and may have handed out any below it.
    out.next_seq = check_headers(dir, &segments, key, &mut out.notes)?;
    out.next_index = last_index + 1;
    for (pos, (_, seg_path)) in segments.iter().enumerate().rev() {
        let is_last = pos + 1 == segments.len();
        match reader::read_segment(seg_path) {
            Ok(seg) => {
                let mark = segment_mark(dir, seg_path);
                let limit = if mark == 0 { SEQ_LIMIT } else { mark };
                let mut bad = 0;
                for (i, r) in seg.records.iter().enumerate() {
                    if r.seq < limit {
                        out.next_seq = out.next_seq.max(r.seq + 1);
                        continue;
                    }
                    bad += 1;
                    if bad <= MAX_SEQ_NOTES {
                        out.notes.push(format!(
                            "{}: offset {}: record seq {} is at or above the segment's \
                             seq_reserved mark {limit}: damage or forgery, not used for the \
                             sequence counter",
                            seg_path.display(),
                            HEADER_SIZE + i * RECORD_SIZE,
                            r.seq
                        ));
                    }
                }
                if bad > MAX_SEQ_NOTES {
                    out.notes.push(format!(
                        "{}: {} more record(s) above the seq_reserved mark",
                        seg_path.display(),
                        bad - MAX_SEQ_NOTES
                    ));
                }
                if seg.header.first_seq < limit {
                    out.next_seq = out.next_seq.max(seg.header.first_seq);
                }
                if is_last {
                    out.prev_chain = if seg.header.is_closed() {
                        seg.header.chain_head
                    } else {
                        let valid = seg.records.len() as u64;
                        out.notes.push(format!(
                            "{}: not closed (writer died); sealed at {valid} records{}",
                            seg_path.display(),
                            seg.torn_at
                                .map(|o| format!(", torn record at offset {o} cut off"))
                                .unwrap_or_default()
                        ));
                        let sealed = segment::seal_after_crash(dir, seg_path, valid, key)
                            .map_err(|e| OpenError::Io(seg_path.clone(), e))?;
                        seal_notes(&mut out.notes, seg_path, valid, &sealed);
                        sealed.head
                    };
                }
                if !seg.records.is_empty() {
                    break;
                }
            }
            Err(e @ ReadError::Corrupt { .. }) | Err(e @ ReadError::Io { .. }) => {
                out.notes.push(format!("{e}; continuing after it"));
                if is_last {
                    // The chain cannot continue from a damaged segment: verify will show the break.
                    out.next_seq = out.next_seq.max(1 << 40);
                }
                break;
            }
        }
    }
    Ok(out)
}

/// The `seq_reserved` mark of one segment (0: none, or unreadable).
fn segment_mark(dir: &LogDir, seg_path: &Path) -> u64 {
    let name = seg_path.file_name().unwrap_or_default().to_string_lossy();
    dir.open_rw(&name)
        .and_then(|f| segment::read_header(&f))
        .map(|h| header_u64(&h, off::SEQ_RESERVED))
        .map(|m| if m >= SEQ_LIMIT { 0 } else { m })
        .unwrap_or(0)
}

fn seal_notes(notes: &mut Vec<String>, path: &Path, valid: u64, s: &segment::SealReport) {
    if !s.writer_chain_ok {
        notes.push(format!(
            "{}: offset {}: the dead writer's own chain head over its {} record(s) does not \
             verify (damage, tampering or a wrong key); sealed with writer_chained = 0: none \
             of its records can lift a halt",
            path.display(),
            off::CHAIN_HEAD,
            s.claimed_chained
        ));
    }
    if s.writer_chained < valid {
        notes.push(format!(
            "{}: offset {}: records {}..{valid} were never chained by their writer: readable, \
             but they cannot lift a halt",
            path.display(),
            HEADER_SIZE as u64 + s.writer_chained * RECORD_SIZE as u64,
            s.writer_chained
        ));
    }
}
