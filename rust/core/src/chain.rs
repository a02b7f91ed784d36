//! The per-segment hash chain: SHA-256, or HMAC-SHA256 when a key is configured, over
//! `prev_chain || segment_index (u64 LE) || record bytes in file order` (docs/FORMAT.md).
//! HMAC is the `hmac` crate's (RustCrypto, checked below against RFC 4231), not our own.
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

/// A 32-byte chain value.
pub type ChainHead = [u8; 32];

/// Incremental chain state of one segment.
#[derive(Clone)]
pub struct Chain {
    state: State,
}

#[derive(Clone)]
enum State {
    Plain(Sha256),
    Keyed(Hmac<Sha256>),
}

impl Chain {
    /// Starts the chain of segment `segment_index` after `prev` (zeros for the first segment).
    pub fn start(key: Option<&[u8]>, prev: &ChainHead, segment_index: u64) -> Chain {
        let mut state = match key {
            None => State::Plain(Sha256::new()),
            // HMAC takes a key of any length (a longer one than the block is hashed first).
            Some(key) => State::Keyed(
                Hmac::<Sha256>::new_from_slice(key).expect("HMAC accepts keys of any length"),
            ),
        };
        update(&mut state, prev);
        update(&mut state, &segment_index.to_le_bytes());
        Chain { state }
    }

    /// Adds record bytes.
    #[inline]
    pub fn update(&mut self, bytes: &[u8]) {
        update(&mut self.state, bytes);
    }

    /// The chain value over everything added so far (the state stays usable).
    pub fn head(&self) -> ChainHead {
        match &self.state {
            State::Plain(h) => h.clone().finalize().into(),
            State::Keyed(m) => m.clone().finalize().into_bytes().into(),
        }
    }
}

#[inline]
fn update(state: &mut State, bytes: &[u8]) {
    match state {
        State::Plain(h) => Digest::update(h, bytes),
        State::Keyed(m) => Mac::update(m, bytes),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    #[test]
    fn unkeyed_is_plain_sha256() {
        let prev = [7u8; 32];
        let mut c = Chain::start(None, &prev, 3);
        c.update(b"abc");
        let mut expect = Sha256::new();
        expect.update(prev);
        expect.update(3u64.to_le_bytes());
        expect.update(b"abc");
        assert_eq!(c.head(), <[u8; 32]>::from(expect.finalize()));
    }

    /// HMAC-SHA256 over `data`, computed through a chain: the chain's message is
    /// `prev || index || records`, so choose prev and index as the data's first 40 bytes.
    fn chain_hmac(key: &[u8], data: &[u8]) -> ChainHead {
        // Cases 1 and 2 have less data than that: the test checks them through `Hmac` only.
        assert!(data.len() >= 40);
        let prev: ChainHead = data[..32].try_into().unwrap();
        let index = u64::from_le_bytes(data[32..40].try_into().unwrap());
        let mut c = Chain::start(Some(key), &prev, index);
        // Split the rest, to check incremental updates too.
        let rest = &data[40..];
        let (a, b) = rest.split_at(rest.len() / 2);
        c.update(a);
        let _ = c.head(); // a head in between leaves the state usable
        c.update(b);
        c.head()
    }

    /// RFC 4231 section 4: test cases 1-4, 6 and 7 (5 is a truncated output).
    #[test]
    fn keyed_chain_is_hmac_sha256_rfc4231() {
        let aa131 = vec![0xaau8; 131];
        let cases: [(Vec<u8>, Vec<u8>, &str); 6] = [
            (
                vec![0x0b; 20],
                b"Hi There".to_vec(),
                "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7",
            ),
            (
                b"Jefe".to_vec(),
                b"what do ya want for nothing?".to_vec(),
                "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843",
            ),
            (
                vec![0xaa; 20],
                vec![0xdd; 50],
                "773ea91e36800e46854db8ebd09181a72959098b3ef8c122d9635514ced565fe",
            ),
            (
                hex("0102030405060708090a0b0c0d0e0f10111213141516171819"),
                vec![0xcd; 50],
                "82558a389a443c0ea4cc819899f2083a85f0faa3e578f8077a2e3ff46729665b",
            ),
            (
                aa131.clone(),
                b"Test Using Larger Than Block-Size Key - Hash Key First".to_vec(),
                "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54",
            ),
            (
                aa131,
                b"This is a test using a larger than block-size key and a larger than \
                  block-size data. The key needs to be hashed before being used by the \
                  HMAC algorithm."
                    .to_vec(),
                "9b09ffa71b942fcb27635fbcd5b0e944bfdc63644f0713938a7f51535c3a35e2",
            ),
        ];
        for (i, (key, data, want)) in cases.iter().enumerate() {
            let want = hex(want);
            if data.len() >= 40 {
                assert_eq!(chain_hmac(key, data).to_vec(), want, "case {i}");
            }
            // The construction itself, for the vectors too short to pass through a chain.
            let mut m = Hmac::<Sha256>::new_from_slice(key).unwrap();
            m.update(data);
            assert_eq!(m.finalize().into_bytes().to_vec(), want, "case {i} direct");
        }
    }

    #[test]
    fn keyed_differs_from_unkeyed_and_by_key() {
        let prev = [1u8; 32];
        let plain = Chain::start(None, &prev, 0).head();
        let a = Chain::start(Some(b"a"), &prev, 0).head();
        let b = Chain::start(Some(b"b"), &prev, 0).head();
        assert_ne!(plain, a);
        assert_ne!(a, b);
    }
}
