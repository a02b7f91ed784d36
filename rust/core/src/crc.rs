//! CRC-32C (Castagnoli), the record checksum: the `crc32c` crate's, which uses the SSE4.2
//! `crc32` instructions on x86_64, the ARMv8 CRC instructions on aarch64, and a
//! slicing-by-8 table elsewhere. This module keeps the one name the rest of the core calls.
//!
//! One piece is hand-written: checking many 64-byte records at once on x86_64
//! ([`first_record_mismatch`]). The crate computes one buffer at a time, and a record's CRC is
//! a chain of eight dependent `crc32` instructions (3 cycles each); three records side by side
//! keep the unit busy, which makes the bulk reader's check about three times cheaper.
use crate::record::{CRC_COVERED, RECORD_SIZE};

/// CRC-32C of `data` (init and final xor `0xFFFF_FFFF`), e.g. `crc32c(b"123456789") == 0xE306_9283`.
#[inline]
pub fn crc32c(data: &[u8]) -> u32 {
    ::crc32c::crc32c(data)
}

/// True when the CRC field (bytes 60..64) of the 64-byte record `r` matches its bytes 0..60.
#[inline]
pub fn record_crc_matches(r: &[u8]) -> bool {
    let stored = u32::from_le_bytes([r[60], r[61], r[62], r[63]]);
    crc32c(&r[..CRC_COVERED]) == stored
}

/// Index of the first whole 64-byte record of `records` whose CRC field does not match, or
/// None. (An all-zero record never matches: the CRC of 60 zero bytes is not zero.)
pub fn first_record_mismatch(records: &[u8]) -> Option<usize> {
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("sse4.2") {
        // SAFETY: the function's only requirement is SSE4.2, detected just above.
        return unsafe { x86::first_record_mismatch(records) };
    }
    records
        .chunks_exact(RECORD_SIZE)
        .position(|r| !record_crc_matches(r))
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::{CRC_COVERED, RECORD_SIZE};
    use std::arch::x86_64::{_mm_crc32_u32, _mm_crc32_u64};

    fn u64_at(r: &[u8], o: usize) -> u64 {
        u64::from_le_bytes(r[o..o + 8].try_into().expect("8 bytes"))
    }
    fn u32_at(r: &[u8], o: usize) -> u32 {
        u32::from_le_bytes(r[o..o + 4].try_into().expect("4 bytes"))
    }

    /// CRC-32C of bytes 0..60 of each of three records, computed side by side.
    #[target_feature(enable = "sse4.2")]
    fn crc3(a: &[u8], b: &[u8], c: &[u8]) -> [u32; 3] {
        let (mut x, mut y, mut z) = (0xFFFF_FFFFu64, 0xFFFF_FFFFu64, 0xFFFF_FFFFu64);
        for o in (0..56).step_by(8) {
            x = _mm_crc32_u64(x, u64_at(a, o));
            y = _mm_crc32_u64(y, u64_at(b, o));
            z = _mm_crc32_u64(z, u64_at(c, o));
        }
        // bytes 56..60; crc32 results fit in 32 bits
        [
            !_mm_crc32_u32(x as u32, u32_at(a, 56)),
            !_mm_crc32_u32(y as u32, u32_at(b, 56)),
            !_mm_crc32_u32(z as u32, u32_at(c, 56)),
        ]
    }

    #[target_feature(enable = "sse4.2")]
    pub(super) fn first_record_mismatch(records: &[u8]) -> Option<usize> {
        let mut groups = records.chunks_exact(3 * RECORD_SIZE);
        let mut i = 0;
        for g in groups.by_ref() {
            let (a, rest) = g.split_at(RECORD_SIZE);
            let (b, c) = rest.split_at(RECORD_SIZE);
            let crcs = crc3(a, b, c);
            for (k, r) in [a, b, c].into_iter().enumerate() {
                if crcs[k] != u32_at(r, CRC_COVERED) {
                    return Some(i + k);
                }
            }
            i += 3;
        }
        let rest = groups.remainder();
        rest.chunks_exact(RECORD_SIZE)
            .position(|r| !super::record_crc_matches(r))
            .map(|k| i + k)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Bitwise reference (RFC 3720's polynomial, reflected), to check every length.
    fn reference(data: &[u8]) -> u32 {
        let mut crc = !0u32;
        for &byte in data {
            crc ^= byte as u32;
            for _ in 0..8 {
                crc = if crc & 1 != 0 {
                    (crc >> 1) ^ 0x82F6_3B78
                } else {
                    crc >> 1
                };
            }
        }
        !crc
    }

    #[test]
    fn check_value() {
        assert_eq!(crc32c(b"123456789"), 0xE306_9283);
        // RFC 3720 B.4: 32 bytes of zeros, of 0xFF, ascending.
        assert_eq!(crc32c(&[0u8; 32]), 0x8A91_36AA);
        assert_eq!(crc32c(&[0xFFu8; 32]), 0x62A8_AB43);
        let ascending: Vec<u8> = (0..32).collect();
        assert_eq!(crc32c(&ascending), 0x46DD_794E);
        let data: Vec<u8> = (0..=255u8).cycle().take(1000).collect();
        for len in [0, 1, 7, 8, 9, 60, 64, 1000] {
            for start in [0, 1, 3] {
                let d = &data[start..start + len.min(1000 - start)];
                assert_eq!(crc32c(d), reference(d), "len {len} at {start}");
            }
        }
    }

    #[test]
    fn first_record_mismatch_finds_each_position() {
        let mut recs = vec![0u8; 10 * RECORD_SIZE];
        for (i, r) in recs.chunks_exact_mut(RECORD_SIZE).enumerate() {
            for (j, b) in r[..CRC_COVERED].iter_mut().enumerate() {
                *b = (i * 31 + j * 7 + 1) as u8;
            }
            let crc = crc32c(&r[..CRC_COVERED]);
            r[CRC_COVERED..].copy_from_slice(&crc.to_le_bytes());
        }
        assert_eq!(first_record_mismatch(&recs), None);
        // every position: in a group of three, in the remainder, a flipped bit anywhere
        for bad in 0..10 {
            for byte in [0, 7, 33, 59, 60, 63] {
                let mut copy = recs.clone();
                copy[bad * RECORD_SIZE + byte] ^= 0x10;
                assert_eq!(
                    first_record_mismatch(&copy),
                    Some(bad),
                    "record {bad} byte {byte}"
                );
                let portable = copy
                    .chunks_exact(RECORD_SIZE)
                    .position(|r| !record_crc_matches(r));
                assert_eq!(portable, Some(bad));
            }
        }
        // an all-zero record never matches
        assert_ne!(crc32c(&[0u8; CRC_COVERED]), 0);
        let mut zeroed = recs.clone();
        zeroed[4 * RECORD_SIZE..5 * RECORD_SIZE].fill(0);
        assert_eq!(first_record_mismatch(&zeroed), Some(4));
        // a partial record at the end is not looked at
        assert_eq!(first_record_mismatch(&recs[..3 * RECORD_SIZE + 10]), None);
    }
}
