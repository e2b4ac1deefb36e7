//! The hasher of every map keyed by what clients send (event ids, index terms, leaf hashes):
//! a multiply-and-fold hash under two 64-bit keys drawn at random once per process, so that a
//! client cannot choose keys that collide and turn lookups into linear scans.
//!
//! It is not SipHash: the maps hold one entry per event, and SipHash, with the rest of the
//! hardening's per-event work, made ingest measurably slower. Each 8-byte word is mixed in with a full 64×64→128-bit multiply
//! by a secret odd key, folded to 64 bits; the length closes the input, and the result is
//! folded once more. Without the keys, which never leave the process, the bucket a key lands in
//! cannot be predicted.

use std::hash::{BuildHasher, Hasher};
use std::sync::OnceLock;

/// The keys of this process.
static KEYS: OnceLock<Keyed> = OnceLock::new();

/// Builds [`KeyedHasher`]s with this process's keys.
#[derive(Clone, Copy, Debug)]
pub struct Keyed {
    seed: u64,
    multiplier: u64,
}

impl Default for Keyed {
    fn default() -> Keyed {
        *KEYS.get_or_init(|| {
            // The standard library draws its SipHash keys from the OS's randomness.
            let random = std::collections::hash_map::RandomState::new();
            Keyed {
                seed: random.hash_one(0x6d6c_6175_6469_7430u64),
                multiplier: random.hash_one(0x6d6c_6175_6469_7431u64) | 1,
            }
        })
    }
}

impl BuildHasher for Keyed {
    type Hasher = KeyedHasher;
    fn build_hasher(&self) -> KeyedHasher {
        KeyedHasher {
            acc: self.seed,
            multiplier: self.multiplier,
        }
    }
}

/// The high and low halves of a 128-bit product, folded together.
fn fold(a: u64, b: u64) -> u64 {
    let p = u128::from(a) * u128::from(b);
    (p as u64) ^ ((p >> 64) as u64)
}

/// One key's hash in progress.
#[derive(Clone, Copy, Debug)]
pub struct KeyedHasher {
    acc: u64,
    multiplier: u64,
}

impl Hasher for KeyedHasher {
    fn write(&mut self, bytes: &[u8]) {
        let mut words = bytes.chunks_exact(8);
        for w in &mut words {
            let mut word = [0u8; 8];
            word.copy_from_slice(w);
            self.write_u64(u64::from_le_bytes(word));
        }
        let rest = words.remainder();
        if !rest.is_empty() {
            let mut word = [0u8; 8];
            word[..rest.len()].copy_from_slice(rest);
            self.write_u64(u64::from_le_bytes(word));
        }
        self.write_u64(bytes.len() as u64);
    }

    fn write_u64(&mut self, n: u64) {
        self.acc = fold(self.acc ^ n, self.multiplier);
    }

    fn write_u8(&mut self, n: u8) {
        self.write_u64(u64::from(n));
    }

    fn write_usize(&mut self, n: usize) {
        self.write_u64(n as u64);
    }

    fn finish(&self) -> u64 {
        fold(self.acc, self.multiplier.rotate_left(32) | 1)
    }
}

/// A 64-bit finalizer (SplitMix64's): every input bit affects every output bit.
pub fn mix(mut x: u64) -> u64 {
    x ^= x >> 30;
    x = x.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x ^= x >> 27;
    x = x.wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// Two 64-bit hashes of a 16-byte key under `seed`, the same in every process: for structures
/// kept on disk (a run's Bloom filter), whose seed is random per file and stored with it.
pub fn stable_hash(seed: u64, key: &[u8; 16]) -> [u64; 2] {
    let mut half = [0u8; 8];
    half.copy_from_slice(&key[..8]);
    let a = u64::from_le_bytes(half);
    half.copy_from_slice(&key[8..]);
    let b = u64::from_le_bytes(half);
    let first = mix(a ^ mix(b ^ seed));
    [first, mix(first ^ b ^ seed.rotate_left(17))]
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn keys_are_random_per_process_and_fixed_within_it() {
        let (a, b) = (Keyed::default(), Keyed::default());
        assert_eq!(a.hash_one(42u64), b.hash_one(42u64));
        assert_ne!(a.seed, 0x6d6c_6175_6469_7430u64);
        assert_eq!(a.multiplier & 1, 1);
    }

    /// Ids that differ in one byte, and strings that differ in length only, all hash apart:
    /// no structured family of keys collapses onto a few buckets.
    #[test]
    fn structured_keys_spread_over_the_low_bits() {
        let k = Keyed::default();
        let mut buckets = HashSet::new();
        for i in 0..4096u32 {
            let mut id = [0u8; 16];
            id[(i % 16) as usize] = (i / 16) as u8;
            buckets.insert(k.hash_one(id) & 0xfff);
        }
        assert!(buckets.len() > 2000, "{} of 4096 buckets", buckets.len());
        let strings: HashSet<u64> = (0..64).map(|n| k.hash_one("a".repeat(n))).collect();
        assert_eq!(strings.len(), 64);
    }
}
