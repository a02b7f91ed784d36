//! CRC-32C (Castagnoli), the record checksum: the `crc32c` crate's, which uses the SSE4.2
//! `crc32` instructions on x86_64, the ARMv8 CRC instructions on aarch64, and a
//! slicing-by-8 table elsewhere. This module keeps the one name the rest of the core calls.

/// CRC-32C of `data` (init and final xor `0xFFFF_FFFF`), e.g. `crc32c(b"123456789") == 0xE306_9283`.
#[inline]
pub fn crc32c(data: &[u8]) -> u32 {
    ::crc32c::crc32c(data)
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
}
