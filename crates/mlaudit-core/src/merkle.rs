//! RFC 9162 §2.1 Merkle tree hashing and proofs.
//!
//! * Leaf hash: `SHA-256(0x00 || entry)`; node hash: `SHA-256(0x01 || left || right)`;
//!   the empty tree's root is `SHA-256("")`.
//! * A tree of `n` leaves splits at `k`, the largest power of two smaller than `n`.
//! * Proof *generation* reads hashes of perfect subtrees through [`NodeSource`], so that a store
//!   which keeps every perfect subtree hash answers any proof in O(log n) reads.
//! * Proof *verification* is the exact algorithm of RFC 9162 §2.1.3.2 and §2.1.4.2.
//!
//! **Invariant:** hash equality is compared in constant time ([`Hash::ct_eq`], and `==`).

use sha2::{Digest, Sha256};
use std::fmt;

/// Length of every hash in the tree.
pub const HASH_LEN: usize = 32;

/// A SHA-256 tree hash. `==` compares in constant time.
#[derive(Clone, Copy, Eq, Default)]
pub struct Hash(pub [u8; HASH_LEN]);

impl Hash {
    /// Compares two hashes without an early exit, so timing reveals nothing about where they differ.
    pub fn ct_eq(&self, other: &Hash) -> bool {
        let mut diff = 0u8;
        for (a, b) in self.0.iter().zip(other.0.iter()) {
            diff |= a ^ b;
        }
        diff == 0
    }

    /// Lower-case hex, for messages.
    pub fn to_hex(&self) -> String {
        hex(&self.0)
    }

    /// Parses a hash from exactly 32 bytes.
    pub fn from_slice(bytes: &[u8]) -> Option<Hash> {
        <[u8; HASH_LEN]>::try_from(bytes).ok().map(Hash)
    }

    /// Parses a hash from exactly 64 hex digits (either case).
    pub fn from_hex(text: &str) -> Option<Hash> {
        let digit = |b: u8| (b as char).to_digit(16);
        let text = text.as_bytes();
        if text.len() != 2 * HASH_LEN {
            return None;
        }
        let mut out = [0u8; HASH_LEN];
        for (byte, pair) in out.iter_mut().zip(text.chunks_exact(2)) {
            *byte = u8::try_from(digit(pair[0])? * 16 + digit(pair[1])?).ok()?;
        }
        Some(Hash(out))
    }
}

impl PartialEq for Hash {
    fn eq(&self, other: &Hash) -> bool {
        self.ct_eq(other)
    }
}

impl std::hash::Hash for Hash {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.0.hash(state)
    }
}

impl fmt::Debug for Hash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Hash({})", self.to_hex())
    }
}

/// Lower-case hex of bytes.
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(DIGITS[(b >> 4) as usize] as char);
        out.push(DIGITS[(b & 15) as usize] as char);
    }
    out
}

/// Position of a leaf in the log (0-based). Equal to the event's `seq`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct LeafIndex(pub u64);

/// Number of leaves in a tree.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TreeSize(pub u64);

/// Plain SHA-256 (payload digests).
pub fn sha256(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

/// `SHA-256(0x00 || entry)`.
pub fn leaf_hash(entry: &[u8]) -> Hash {
    let mut h = Sha256::new();
    h.update([0u8]);
    h.update(entry);
    Hash(h.finalize().into())
}

/// `SHA-256(0x01 || left || right)`.
pub fn node_hash(left: &Hash, right: &Hash) -> Hash {
    let mut buf = [0u8; 1 + 2 * HASH_LEN];
    buf[0] = 1;
    buf[1..33].copy_from_slice(&left.0);
    buf[33..].copy_from_slice(&right.0);
    Hash(Sha256::digest(buf).into())
}

/// The root of the empty tree, `SHA-256("")`.
pub fn empty_root() -> Hash {
    Hash(Sha256::digest([]).into())
}

/// The largest power of two strictly smaller than `n` (`n >= 2`).
fn split_point(n: u64) -> u64 {
    debug_assert!(n >= 2);
    1u64 << (63 - (n - 1).leading_zeros())
}

/// Where perfect-subtree hashes come from: the hash of leaves
/// `[index << level, (index + 1) << level)`; level 0 is the leaf hashes.
pub trait NodeSource {
    /// Error of the underlying storage.
    type Error;
    /// The hash of one complete perfect subtree. Callers only ask for subtrees inside the tree.
    fn node(&self, level: u32, index: u64) -> Result<Hash, Self::Error>;
}

/// The RFC 9162 `MTH` of leaves `[start, end)`, built from perfect subtrees.
pub fn subtree_hash<S: NodeSource>(src: &S, start: u64, end: u64) -> Result<Hash, S::Error> {
    let size = end - start;
    if size == 0 {
        return Ok(empty_root());
    }
    if size.is_power_of_two() && start.is_multiple_of(size) {
        let level = size.trailing_zeros();
        return src.node(level, start >> level);
    }
    let k = if size.is_power_of_two() {
        size / 2
    } else {
        split_point(size)
    };
    let left = subtree_hash(src, start, start + k)?;
    let right = subtree_hash(src, start + k, end)?;
    Ok(node_hash(&left, &right))
}

/// Why a proof could not be produced.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum ProofRequestError {
    /// The leaf index is not inside the tree.
    #[error("leaf index {index} is outside a tree of size {size}")]
    IndexOutOfRange { index: u64, size: u64 },
    /// The sizes are not `0 < old <= new`.
    #[error("a consistency proof needs 0 < from <= to; got from {from}, to {to}")]
    BadSizes { from: u64, to: u64 },
}

/// The inclusion proof (audit path, leaf to root) of leaf `index` in the tree of `size` leaves.
pub fn inclusion_proof<S: NodeSource>(
    src: &S,
    index: u64,
    size: u64,
) -> Result<Result<Vec<Hash>, ProofRequestError>, S::Error> {
    if index >= size {
        return Ok(Err(ProofRequestError::IndexOutOfRange { index, size }));
    }
    // Walk from the root down, collecting siblings; reverse at the end for leaf-to-root order.
    let mut path = Vec::new();
    let (mut start, mut end) = (0u64, size);
    while end - start > 1 {
        let k = split_point(end - start);
        if index < start + k {
            path.push(subtree_hash(src, start + k, end)?);
            end = start + k;
        } else {
            path.push(subtree_hash(src, start, start + k)?);
            start += k;
        }
    }
    path.reverse();
    Ok(Ok(path))
}

/// The consistency proof between the trees of `old` and `new` leaves (RFC 9162 `PROOF(m, D[n])`).
pub fn consistency_proof<S: NodeSource>(
    src: &S,
    old: u64,
    new: u64,
) -> Result<Result<Vec<Hash>, ProofRequestError>, S::Error> {
    if old == 0 || old > new {
        return Ok(Err(ProofRequestError::BadSizes { from: old, to: new }));
    }
    // SUBPROOF(m, D[start:end], b), unrolled: collect siblings top-down, reverse at the end.
    let mut proof = Vec::new();
    let (mut m, mut start, mut end, mut complete) = (old, 0u64, new, true);
    loop {
        let n = end - start;
        if m == n {
            if !complete {
                proof.push(subtree_hash(src, start, end)?);
            }
            break;
        }
        let k = split_point(n);
        if m <= k {
            proof.push(subtree_hash(src, start + k, end)?);
            end = start + k;
        } else {
            proof.push(subtree_hash(src, start, start + k)?);
            start += k;
            m -= k;
            complete = false;
        }
    }
    proof.reverse();
    Ok(Ok(proof))
}

/// Why a proof did not verify.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum ProofError {
    /// The leaf index is not inside the tree.
    #[error("leaf index {index} is outside a tree of size {size}")]
    IndexOutOfRange { index: u64, size: u64 },
    /// The sizes are not `0 < old <= new`.
    #[error("consistency needs 0 < old <= new; got old {old}, new {new}")]
    BadSizes { old: u64, new: u64 },
    /// The proof has the wrong number of hashes for this index and size.
    #[error("the proof has the wrong length for this index and tree size")]
    WrongLength,
    /// The recomputed root differs from the expected one.
    #[error("the proof does not lead to the expected root")]
    RootMismatch,
}

/// RFC 9162 §2.1.3.2: verifies that `leaf` is at `index` in the tree of `size` with `root`.
pub fn verify_inclusion(
    index: u64,
    size: u64,
    leaf: &Hash,
    path: &[Hash],
    root: &Hash,
) -> Result<(), ProofError> {
    if index >= size {
        return Err(ProofError::IndexOutOfRange { index, size });
    }
    let (mut fnode, mut snode) = (index, size - 1);
    let mut r = *leaf;
    for p in path {
        if snode == 0 {
            return Err(ProofError::WrongLength);
        }
        if fnode & 1 == 1 || fnode == snode {
            r = node_hash(p, &r);
            if fnode & 1 == 0 {
                while fnode & 1 == 0 && fnode != 0 {
                    fnode >>= 1;
                    snode >>= 1;
                }
            }
        } else {
            r = node_hash(&r, p);
        }
        fnode >>= 1;
        snode >>= 1;
    }
    if snode != 0 {
        return Err(ProofError::WrongLength);
    }
    if r.ct_eq(root) {
        Ok(())
    } else {
        Err(ProofError::RootMismatch)
    }
}

/// RFC 9162 §2.1.4.2: verifies that the tree (`old`, `old_root`) is a prefix of (`new`, `new_root`).
pub fn verify_consistency(
    old: u64,
    new: u64,
    old_root: &Hash,
    new_root: &Hash,
    proof: &[Hash],
) -> Result<(), ProofError> {
    if old == 0 || old > new {
        return Err(ProofError::BadSizes { old, new });
    }
    if old == new {
        if !proof.is_empty() {
            return Err(ProofError::WrongLength);
        }
        return if old_root.ct_eq(new_root) {
            Ok(())
        } else {
            Err(ProofError::RootMismatch)
        };
    }
    if proof.is_empty() {
        return Err(ProofError::WrongLength);
    }
    let mut path: Vec<Hash> = Vec::with_capacity(proof.len() + 1);
    if old.is_power_of_two() {
        path.push(*old_root);
    }
    path.extend_from_slice(proof);
    let Some((first, rest)) = path.split_first() else {
        return Err(ProofError::WrongLength);
    };
    let (mut fnode, mut snode) = (old - 1, new - 1);
    while fnode & 1 == 1 {
        fnode >>= 1;
        snode >>= 1;
    }
    let (mut fr, mut sr) = (*first, *first);
    for c in rest {
        if snode == 0 {
            return Err(ProofError::WrongLength);
        }
        if fnode & 1 == 1 || fnode == snode {
            fr = node_hash(c, &fr);
            sr = node_hash(c, &sr);
            if fnode & 1 == 0 {
                while fnode & 1 == 0 && fnode != 0 {
                    fnode >>= 1;
                    snode >>= 1;
                }
            }
        } else {
            sr = node_hash(&sr, c);
        }
        fnode >>= 1;
        snode >>= 1;
    }
    if snode != 0 {
        return Err(ProofError::WrongLength);
    }
    if fr.ct_eq(old_root) && sr.ct_eq(new_root) {
        Ok(())
    } else {
        Err(ProofError::RootMismatch)
    }
}

/// An append-only in-memory accumulator of the right edge of a tree (a "compact range"):
/// O(log n) memory, yields the root of any prefix it has absorbed, and reports every perfect
/// subtree hash as it completes (used by stores to persist nodes and by `verify`).
#[derive(Clone, Debug, Default)]
pub struct CompactRange {
    size: u64,
    /// Perfect subtree roots on the right edge, from the largest (leftmost) to the smallest.
    stack: Vec<Hash>,
}

impl CompactRange {
    /// An empty tree.
    pub fn new() -> CompactRange {
        CompactRange::default()
    }

    /// Rebuilds the right edge of a tree of `size` leaves from stored perfect subtrees.
    pub fn from_source<S: NodeSource>(src: &S, size: u64) -> Result<CompactRange, S::Error> {
        let mut stack = Vec::new();
        let mut start = 0u64;
        for level in (0..64u32).rev() {
            if size & (1u64 << level) != 0 {
                stack.push(src.node(level, start >> level)?);
                start += 1u64 << level;
            }
        }
        Ok(CompactRange { size, stack })
    }

    /// The perfect subtree roots on the right edge, largest (leftmost) first: one per set bit
    /// of the size, together covering every leaf absorbed.
    pub fn edge(&self) -> &[Hash] {
        &self.stack
    }

    /// Number of leaves absorbed.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Appends one leaf hash. `on_node(level, index, hash)` is called for the leaf (level 0) and
    /// for every perfect subtree this append completes, lowest level first.
    pub fn push(&mut self, leaf: Hash, mut on_node: impl FnMut(u32, u64, &Hash)) {
        let index = self.size;
        on_node(0, index, &leaf);
        let mut cur = leaf;
        let mut level = 0u32;
        while (index >> level) & 1 == 1 {
            // Invariant: bit `level` of `index` is set, so a left sibling sits on the stack.
            let Some(left) = self.stack.pop() else { break };
            cur = node_hash(&left, &cur);
            level += 1;
            on_node(level, index >> level, &cur);
        }
        self.stack.push(cur);
        self.size += 1;
    }

    /// The root of the absorbed tree.
    pub fn root(&self) -> Hash {
        let mut iter = self.stack.iter().rev();
        let Some(first) = iter.next() else {
            return empty_root();
        };
        iter.fold(*first, |acc, left| node_hash(left, &acc))
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn hex_round_trips_and_anything_but_64_hex_digits_is_refused() {
        let h = super::Hash(super::sha256(b"x"));
        assert_eq!(super::Hash::from_hex(&h.to_hex()), Some(h));
        assert_eq!(super::Hash::from_hex(&h.to_hex().to_uppercase()), Some(h));
        let plus = format!("+a{}", &h.to_hex()[2..]);
        for bad in [
            "",
            "ab",
            &h.to_hex()[1..],
            &format!("{}0", h.to_hex()),
            &plus,
        ] {
            assert_eq!(super::Hash::from_hex(bad), None, "{bad:?}");
        }
    }

    use super::*;

    #[test]
    fn split_point_is_largest_power_of_two_below() {
        assert_eq!(split_point(2), 1);
        assert_eq!(split_point(3), 2);
        assert_eq!(split_point(4), 2);
        assert_eq!(split_point(5), 4);
        assert_eq!(split_point(1 << 40), 1 << 39);
    }

    #[test]
    fn ct_eq_detects_any_difference() {
        let a = Hash([7; 32]);
        for i in 0..32 {
            let mut b = a;
            b.0[i] ^= 1;
            assert!(!a.ct_eq(&b));
        }
        assert!(a.ct_eq(&Hash([7; 32])));
    }
}
