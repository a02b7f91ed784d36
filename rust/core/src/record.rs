//! The fixed 64-byte audit record and its little-endian byte layout (docs/FORMAT.md).

/// Size of one record in bytes: one cache line.
pub const RECORD_SIZE: usize = 64;
/// Bytes covered by the CRC (everything before the CRC field).
pub const CRC_COVERED: usize = 60;

/// `flags` bit: written by the flusher itself (GAP, CLOCK, SESSION_*).
pub const FLAG_SYSTEM: u8 = 0x01;
/// `flags` bit: the record came through the emergency ring.
pub const FLAG_EMERGENCY: u8 = 0x02;

/// Record kinds. Values are part of the file format.
#[allow(missing_docs)]
pub mod kind {
    pub const KILL_SWITCH: u8 = 1;
    pub const TRADE: u8 = 2;
    pub const ORDER_SENT: u8 = 3;
    pub const ORDER_CANCELLED: u8 = 4;
    pub const RISK_CHECK: u8 = 5;
    pub const STATE_CHANGE: u8 = 6;
    pub const RESET: u8 = 7;
    pub const HANDLER_FAILURE: u8 = 8;
    pub const TEXT: u8 = 9;
    pub const ORDER_DENIED: u8 = 10;
    pub const STOP_STEP: u8 = 11;
    pub const USER: u8 = 12;
    pub const GAP: u8 = 64;
    pub const CLOCK: u8 = 65;
    pub const SESSION_START: u8 = 66;
    pub const SESSION_END: u8 = 67;
}

/// One decoded record. `crc32c` is zero until the flusher stamps it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Record {
    /// Sequence number: one counter per logger, shared by both rings.
    pub seq: u64,
    /// UTC nanoseconds since the Unix epoch.
    pub wall_ns: u64,
    /// CLOCK_MONOTONIC nanoseconds.
    pub mono_ns: u64,
    /// See [`kind`].
    pub kind: u8,
    /// [`FLAG_SYSTEM`], [`FLAG_EMERGENCY`].
    pub flags: u8,
    /// Reason / ring / state code, by kind.
    pub code: u16,
    /// Producer OS thread id (0 for system records).
    pub thread_id: u32,
    /// Position size / quantity / first lost seq, by kind.
    pub a: i64,
    /// P&L cents / price cents / count lost, by kind.
    pub b: i64,
    /// Order id / last lost seq / auxiliary, by kind.
    pub c: u64,
    /// Instrument id.
    pub symbol_id: u32,
    /// CRC-32C of bytes 0..60.
    pub crc32c: u32,
}

impl Record {
    /// Encodes to the on-disk layout, computing the CRC.
    pub fn to_bytes(&self) -> [u8; RECORD_SIZE] {
        let mut out = self.encode();
        let crc = crate::crc::crc32c(&out[..CRC_COVERED]);
        out[60..64].copy_from_slice(&crc.to_le_bytes());
        out
    }

    /// Encodes to the on-disk layout with the `crc32c` field as it is (not recomputed).
    pub fn encode(&self) -> [u8; RECORD_SIZE] {
        let mut out = [0u8; RECORD_SIZE];
        out[0..8].copy_from_slice(&self.seq.to_le_bytes());
        out[8..16].copy_from_slice(&self.wall_ns.to_le_bytes());
        out[16..24].copy_from_slice(&self.mono_ns.to_le_bytes());
        out[24] = self.kind;
        out[25] = self.flags;
        out[26..28].copy_from_slice(&self.code.to_le_bytes());
        out[28..32].copy_from_slice(&self.thread_id.to_le_bytes());
        out[32..40].copy_from_slice(&self.a.to_le_bytes());
        out[40..48].copy_from_slice(&self.b.to_le_bytes());
        out[48..56].copy_from_slice(&self.c.to_le_bytes());
        out[56..60].copy_from_slice(&self.symbol_id.to_le_bytes());
        out[60..64].copy_from_slice(&self.crc32c.to_le_bytes());
        out
    }

    /// Decodes from the on-disk layout without checking the CRC (see [`Record::crc_ok`]).
    pub fn from_bytes(b: &[u8; RECORD_SIZE]) -> Record {
        let u64_at = |o: usize| u64::from_le_bytes(b[o..o + 8].try_into().expect("8 bytes"));
        let u32_at = |o: usize| u32::from_le_bytes(b[o..o + 4].try_into().expect("4 bytes"));
        Record {
            seq: u64_at(0),
            wall_ns: u64_at(8),
            mono_ns: u64_at(16),
            kind: b[24],
            flags: b[25],
            code: u16::from_le_bytes([b[26], b[27]]),
            thread_id: u32_at(28),
            a: u64_at(32) as i64,
            b: u64_at(40) as i64,
            c: u64_at(48),
            symbol_id: u32_at(56),
            crc32c: u32_at(60),
        }
    }

    /// True when the stored CRC matches bytes 0..60.
    pub fn crc_ok(b: &[u8; RECORD_SIZE]) -> bool {
        let stored = u32::from_le_bytes(b[60..64].try_into().expect("4 bytes"));
        crate::crc::crc32c(&b[..CRC_COVERED]) == stored
    }

    /// The record of a ring entry, with its ticks already converted to (monotonic, UTC) ns.
    pub fn from_entry(e: &crate::ring::Entry, mono_ns: u64, wall_ns: u64) -> Record {
        Record {
            seq: e.seq,
            wall_ns,
            mono_ns,
            kind: e.kind,
            flags: e.flags,
            code: e.code,
            thread_id: e.thread_id,
            a: e.a,
            b: e.b,
            c: e.c,
            symbol_id: e.symbol_id,
            crc32c: 0,
        }
    }

    /// True for records written by the flusher.
    pub fn is_system(&self) -> bool {
        self.flags & FLAG_SYSTEM != 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_crc() {
        let r = Record {
            seq: 7,
            wall_ns: 1_700_000_000_000_000_000,
            mono_ns: 42,
            kind: kind::TRADE,
            flags: 0,
            code: 3,
            thread_id: 99,
            a: -5,
            b: i64::MIN,
            c: u64::MAX,
            symbol_id: 12,
            crc32c: 0,
        };
        let bytes = r.to_bytes();
        assert!(Record::crc_ok(&bytes));
        let back = Record::from_bytes(&bytes);
        assert_eq!(
            Record {
                crc32c: back.crc32c,
                ..r
            },
            back
        );
        let mut flipped = bytes;
        flipped[33] ^= 0x10;
        assert!(!Record::crc_ok(&flipped));
    }
}
