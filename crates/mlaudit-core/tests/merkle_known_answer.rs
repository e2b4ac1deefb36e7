//! Known-answer tests for the RFC 9162 (RFC 6962) Merkle math against published vectors.
//!
//! Source of every hash below (copied verbatim, not recomputed):
//!
//! * transparency-dev/merkle, `proof/verify_test.go`
//!   (commit 02194e9afb6c1d95b5381350007963aa70fff472): the eight leaves `leaves`, the tree
//!   heads `roots` for sizes 1..=8, `inclusionProofs` and `consistencyProofs`, and the probe
//!   hashes `sha256SomeHash` / `sha256EmptyTreeHash`. The same values originate in the
//!   Certificate Transparency reference implementation's RFC 6962 test data.
//! * transparency-dev/merkle, `rfc6962/rfc6962_test.go`
//!   (commit 78493b07ef9b552e3379abf9e23d4da26fbe797c): the empty root, the hash of the empty
//!   leaf and the hash of the leaf "L123456".
//!
//! In `verify_test.go`, inclusion vectors give the leaf as a 1-based number (`p.leaf - 1` is the
//! index); they are converted to 0-based indices here and the original is kept in a comment.
//! The corruption probes mirror `corruptInclusionProof` / `corruptConsistencyProof` there.

#![allow(clippy::needless_range_loop)]

use mlaudit_core::merkle::{
    consistency_proof, empty_root, inclusion_proof, leaf_hash, node_hash, subtree_hash,
    verify_consistency, verify_inclusion, CompactRange, Hash, NodeSource, ProofError,
    ProofRequestError,
};
use std::collections::HashMap;

// ---------------------------------------------------------------------------------------------
// Published vectors.
// ---------------------------------------------------------------------------------------------

/// `leaves` in verify_test.go (hex of the leaf data, not of leaf hashes).
const LEAVES_HEX: [&str; 8] = [
    "",
    "00",
    "10",
    "2021",
    "3031",
    "40414243",
    "5051525354555657",
    "606162636465666768696a6b6c6d6e6f",
];

/// `roots` in verify_test.go: `ROOTS[n - 1]` is the head of the tree of the first `n` leaves.
const ROOTS: [&str; 8] = [
    "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
    "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
    "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
    "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
    "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
    "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
];

/// `sha256EmptyTreeHash` in verify_test.go; "RFC6962 Empty" in rfc6962_test.go.
const EMPTY_ROOT: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
/// `sha256SomeHash` in verify_test.go.
const SOME_HASH: &str = "abacaba000000000000000000000000000000000000000000060061e00123456";
/// "RFC6962 Empty Leaf" in rfc6962_test.go.
const EMPTY_LEAF_HASH: &str = "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d";
/// "RFC6962 Leaf" in rfc6962_test.go: the leaf hash of the bytes "L123456".
const L123456_LEAF_HASH: &str = "395aa064aa4c29f7010acfe3f25db9485bbd4b91897b6ad7ad547639252b4d56";

struct InclusionVector {
    index: u64,
    size: u64,
    proof: &'static [&'static str],
}

/// `inclusionProofs` in verify_test.go (its `{0, 0, nil}` entry is an invalid request, tested
/// separately in `invalid_requests_are_refused`).
const INCLUSION: &[InclusionVector] = &[
    // {1, 1, nil}
    InclusionVector {
        index: 0,
        size: 1,
        proof: &[],
    },
    // {1, 8, ...}
    InclusionVector {
        index: 0,
        size: 8,
        proof: &[
            "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
        ],
    },
    // {6, 8, ...}
    InclusionVector {
        index: 5,
        size: 8,
        proof: &[
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
            "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        ],
    },
    // {3, 3, ...}
    InclusionVector {
        index: 2,
        size: 3,
        proof: &["fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125"],
    },
    // {2, 5, ...}
    InclusionVector {
        index: 1,
        size: 5,
        proof: &[
            "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
        ],
    },
];

struct ConsistencyVector {
    old: u64,
    new: u64,
    proof: &'static [&'static str],
}

/// `consistencyProofs` in verify_test.go.
const CONSISTENCY: &[ConsistencyVector] = &[
    ConsistencyVector {
        old: 1,
        new: 1,
        proof: &[],
    },
    ConsistencyVector {
        old: 1,
        new: 8,
        proof: &[
            "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
        ],
    },
    ConsistencyVector {
        old: 6,
        new: 8,
        proof: &[
            "0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
            "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        ],
    },
    ConsistencyVector {
        old: 2,
        new: 5,
        proof: &[
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
        ],
    },
    ConsistencyVector {
        old: 6,
        new: 7,
        proof: &[
            "0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
            "b08693ec2e721597130641e8211e7eedccb4c26413963eee6c1e2ed16ffb1a5f",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        ],
    },
];

// ---------------------------------------------------------------------------------------------
// Helpers.
// ---------------------------------------------------------------------------------------------

fn unhex(s: &str) -> Vec<u8> {
    assert!(s.len() & 1 == 0, "odd hex {s:?}");
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap_or_else(|_| panic!("bad hex {s:?}")))
        .collect()
}

fn h(s: &str) -> Hash {
    Hash::from_slice(&unhex(s)).unwrap_or_else(|| panic!("not 32 bytes: {s:?}"))
}

fn hs(list: &[&str]) -> Vec<Hash> {
    list.iter().map(|s| h(s)).collect()
}

fn leaf_hashes() -> Vec<Hash> {
    LEAVES_HEX.iter().map(|l| leaf_hash(&unhex(l))).collect()
}

fn root(size: u64) -> Hash {
    h(ROOTS[size as usize - 1])
}

/// Every perfect subtree hash, as reported by `CompactRange::push`.
#[derive(Default)]
struct MemSource {
    nodes: HashMap<(u32, u64), Hash>,
}

impl MemSource {
    fn from_leaves(leaves: &[Hash]) -> MemSource {
        let mut src = MemSource::default();
        let mut cr = CompactRange::new();
        for leaf in leaves {
            cr.push(*leaf, |level, index, hash| {
                let old = src.nodes.insert((level, index), *hash);
                assert!(old.is_none(), "node ({level}, {index}) reported twice");
            });
        }
        src
    }

    /// A view that refuses any node not entirely inside the first `size` leaves.
    fn limited(&self, size: u64) -> Limited<'_> {
        Limited { src: self, size }
    }
}

struct Limited<'a> {
    src: &'a MemSource,
    size: u64,
}

impl NodeSource for Limited<'_> {
    type Error = String;
    fn node(&self, level: u32, index: u64) -> Result<Hash, String> {
        let end = (index + 1) << level;
        if end > self.size {
            return Err(format!(
                "node ({level}, {index}) reaches leaf {end}, beyond tree size {}",
                self.size
            ));
        }
        self.src
            .nodes
            .get(&(level, index))
            .copied()
            .ok_or_else(|| format!("node ({level}, {index}) missing"))
    }
}

fn flip(mut x: Hash, byte: usize, bit: u8) -> Hash {
    x.0[byte] ^= 1 << bit;
    x
}

// ---------------------------------------------------------------------------------------------
// Hashing.
// ---------------------------------------------------------------------------------------------

#[test]
fn hashing_matches_rfc6962_test_data() {
    assert_eq!(empty_root(), h(EMPTY_ROOT));
    assert_eq!(leaf_hash(b""), h(EMPTY_LEAF_HASH));
    assert_eq!(leaf_hash(b"L123456"), h(L123456_LEAF_HASH));
    assert_ne!(
        leaf_hash(b""),
        empty_root(),
        "the empty leaf is not the empty tree"
    );
    assert_eq!(h(EMPTY_ROOT).to_hex(), EMPTY_ROOT);
    assert!(Hash::from_slice(&[0u8; 31]).is_none());
    assert!(Hash::from_slice(&[0u8; 33]).is_none());
}

#[test]
fn compact_range_roots_match_published_roots() {
    let leaves = leaf_hashes();
    let mut cr = CompactRange::new();
    assert_eq!(cr.root(), h(EMPTY_ROOT));
    assert_eq!(cr.size(), 0);
    for (i, leaf) in leaves.iter().enumerate() {
        cr.push(*leaf, |_, _, _| {});
        let size = i as u64 + 1;
        assert_eq!(cr.size(), size);
        assert_eq!(cr.root(), root(size), "CompactRange root of size {size}");
    }
}

#[test]
fn subtree_hash_roots_match_published_roots() {
    let src = MemSource::from_leaves(&leaf_hashes());
    // 8 leaves: 8 + 4 + 2 + 1 perfect subtrees.
    assert_eq!(src.nodes.len(), 15);
    assert_eq!(subtree_hash(&src.limited(0), 0, 0), Ok(h(EMPTY_ROOT)));
    for size in 1..=8u64 {
        let view = src.limited(size);
        assert_eq!(
            subtree_hash(&view, 0, size),
            Ok(root(size)),
            "subtree_hash of size {size}"
        );
        let rebuilt = CompactRange::from_source(&view, size)
            .unwrap_or_else(|e| panic!("from_source({size}): {e}"));
        assert_eq!(rebuilt.size(), size);
        assert_eq!(
            rebuilt.root(),
            root(size),
            "from_source root of size {size}"
        );
    }
}

#[test]
fn compact_range_can_resume_from_source() {
    let leaves = leaf_hashes();
    let src = MemSource::from_leaves(&leaves);
    for start in 0..=8u64 {
        let mut cr =
            CompactRange::from_source(&src.limited(start), start).unwrap_or_else(|e| panic!("{e}"));
        let mut reported = Vec::new();
        for (i, leaf) in leaves.iter().enumerate().skip(start as usize) {
            cr.push(*leaf, |level, index, hash| {
                reported.push((level, index, *hash))
            });
            assert_eq!(
                cr.root(),
                root(i as u64 + 1),
                "resumed at {start}, size {}",
                i + 1
            );
        }
        for (level, index, hash) in reported {
            assert_eq!(
                src.nodes.get(&(level, index)),
                Some(&hash),
                "node ({level}, {index}) after resume at {start}"
            );
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Inclusion.
// ---------------------------------------------------------------------------------------------

#[test]
fn generated_inclusion_proofs_equal_published_ones() {
    let src = MemSource::from_leaves(&leaf_hashes());
    for v in INCLUSION {
        let got = inclusion_proof(&src.limited(v.size), v.index, v.size)
            .unwrap_or_else(|e| panic!("storage error: {e}"))
            .unwrap_or_else(|e| panic!("request error: {e}"));
        assert_eq!(
            got,
            hs(v.proof),
            "inclusion proof of leaf {} in tree of {}",
            v.index,
            v.size
        );
    }
}

#[test]
fn published_inclusion_proofs_verify() {
    let leaves = leaf_hashes();
    for v in INCLUSION {
        let leaf = leaves[v.index as usize];
        assert_eq!(
            verify_inclusion(v.index, v.size, &leaf, &hs(v.proof), &root(v.size)),
            Ok(()),
            "leaf {} size {}",
            v.index,
            v.size
        );
    }
}

/// The probes of `corruptInclusionProof`, plus every single-bit flip of every proof hash, leaf
/// and root.
#[test]
fn corrupted_inclusion_proofs_are_rejected() {
    let leaves = leaf_hashes();
    let some = h(SOME_HASH);
    let garbage = Hash::default();
    for v in INCLUSION {
        let (index, size) = (v.index, v.size);
        let proof = hs(v.proof);
        let root = self::root(size);
        let leaf = leaves[index as usize];
        let ctx = format!("leaf {index} size {size}");
        let reject = |i: u64, s: u64, lf: &Hash, p: &[Hash], r: &Hash, what: &str| {
            assert!(
                verify_inclusion(i, s, lf, p, r).is_err(),
                "{ctx}: accepted with {what}"
            );
        };
        let with = |f: &dyn Fn(&mut Vec<Hash>)| {
            let mut p = proof.clone();
            f(&mut p);
            p
        };

        // Wrong leaf index (wrapping like the Go uint64 arithmetic).
        reject(
            index.wrapping_sub(1),
            size,
            &leaf,
            &proof,
            &root,
            "index - 1",
        );
        reject(index + 1, size, &leaf, &proof, &root, "index + 1");
        reject(index ^ 2, size, &leaf, &proof, &root, "index ^ 2");
        for other in 0..size.max(16) {
            if other != index {
                reject(other, size, &leaf, &proof, &root, &format!("index {other}"));
            }
        }
        reject(u64::MAX, size, &leaf, &proof, &root, "index u64::MAX");
        // Wrong tree size.
        reject(index, size * 2, &leaf, &proof, &root, "size * 2");
        reject(index, size / 2, &leaf, &proof, &root, "size / 2");
        // Size +- 1, against the real root of that size (see
        // `verification_binds_the_shape_not_the_size` for why not the same root).
        for s in [size - 1, size + 1] {
            let r = if (1..=8).contains(&s) {
                self::root(s)
            } else {
                root
            };
            reject(
                index,
                s,
                &leaf,
                &proof,
                &r,
                &format!("size {s} with its own root"),
            );
        }
        reject(index, u64::MAX, &leaf, &proof, &root, "size u64::MAX");
        // Wrong leaf or root.
        reject(
            index,
            size,
            &leaf_hash(b"WrongLeaf"),
            &proof,
            &root,
            "wrong leaf",
        );
        reject(index, size, &leaf, &proof, &h(EMPTY_ROOT), "empty root");
        reject(index, size, &leaf, &proof, &some, "random root");
        if leaf != root {
            reject(index, size, &root, &proof, &leaf, "leaf and root swapped");
        }
        // Garbage at the end and at the front.
        reject(
            index,
            size,
            &leaf,
            &with(&|p| p.push(garbage)),
            &root,
            "trailing garbage",
        );
        reject(
            index,
            size,
            &leaf,
            &with(&|p| p.push(root)),
            &root,
            "trailing root",
        );
        reject(
            index,
            size,
            &leaf,
            &with(&|p| p.insert(0, garbage)),
            &root,
            "preceding garbage",
        );
        reject(
            index,
            size,
            &leaf,
            &with(&|p| p.insert(0, root)),
            &root,
            "preceding root",
        );
        // Removed / inserted / reordered components.
        for i in 0..proof.len() {
            reject(
                index,
                size,
                &leaf,
                &with(&|p| {
                    p.remove(i);
                }),
                &root,
                &format!("proof[{i}] removed"),
            );
            reject(
                index,
                size,
                &leaf,
                &with(&|p| p.insert(i, some)),
                &root,
                &format!("some hash inserted at {i}"),
            );
            reject(
                index,
                size,
                &leaf,
                &with(&|p| p.insert(i, proof[i])),
                &root,
                &format!("proof[{i}] duplicated"),
            );
        }
        if proof.len() > 1 {
            reject(
                index,
                size,
                &leaf,
                &with(&|p| p.swap(0, 1)),
                &root,
                "proof[0] and proof[1] swapped",
            );
        }
        // Every single-bit flip of every proof hash, of the leaf and of the root.
        for i in 0..proof.len() {
            for byte in 0..32 {
                for bit in 0..8 {
                    reject(
                        index,
                        size,
                        &leaf,
                        &with(&|p| p[i] = flip(p[i], byte, bit)),
                        &root,
                        &format!("proof[{i}] byte {byte} bit {bit}"),
                    );
                }
            }
        }
        for byte in 0..32 {
            for bit in 0..8 {
                reject(
                    index,
                    size,
                    &flip(leaf, byte, bit),
                    &proof,
                    &root,
                    &format!("leaf byte {byte} bit {bit}"),
                );
                reject(
                    index,
                    size,
                    &leaf,
                    &proof,
                    &flip(root, byte, bit),
                    &format!("root byte {byte} bit {bit}"),
                );
            }
        }
    }
}

#[test]
fn every_inclusion_proof_in_the_reference_tree_verifies() {
    let leaves = leaf_hashes();
    let src = MemSource::from_leaves(&leaves);
    for size in 1..=8u64 {
        for index in 0..size {
            let proof = inclusion_proof(&src.limited(size), index, size)
                .unwrap_or_else(|e| panic!("{e}"))
                .unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(
                verify_inclusion(index, size, &leaves[index as usize], &proof, &root(size)),
                Ok(()),
                "leaf {index} size {size}"
            );
        }
    }
}

/// TestVerifyInclusionSingleEntry: in a tree of one leaf the root is the leaf hash and the
/// proof is empty.
#[test]
fn single_entry_inclusion() {
    let hash = leaf_hash(b"data");
    assert_eq!(verify_inclusion(0, 1, &hash, &[], &hash), Ok(()));
    assert_eq!(
        verify_inclusion(0, 1, &hash, &[], &empty_root()),
        Err(ProofError::RootMismatch)
    );
    assert_eq!(
        verify_inclusion(0, 1, &empty_root(), &[], &hash),
        Err(ProofError::RootMismatch)
    );
    assert_eq!(
        verify_inclusion(0, 1, &hash, &[hash], &hash),
        Err(ProofError::WrongLength)
    );
}

// ---------------------------------------------------------------------------------------------
// Consistency.
// ---------------------------------------------------------------------------------------------

#[test]
fn generated_consistency_proofs_equal_published_ones() {
    let src = MemSource::from_leaves(&leaf_hashes());
    for v in CONSISTENCY {
        let got = consistency_proof(&src.limited(v.new), v.old, v.new)
            .unwrap_or_else(|e| panic!("storage error: {e}"))
            .unwrap_or_else(|e| panic!("request error: {e}"));
        assert_eq!(got, hs(v.proof), "consistency proof {} -> {}", v.old, v.new);
    }
}

#[test]
fn published_consistency_proofs_verify() {
    for v in CONSISTENCY {
        assert_eq!(
            verify_consistency(v.old, v.new, &root(v.old), &root(v.new), &hs(v.proof)),
            Ok(()),
            "consistency {} -> {}",
            v.old,
            v.new
        );
    }
}

/// The probes of `corruptConsistencyProof` (for the non-trivial vectors, as there), plus
/// every single-bit flip of every proof hash and of both roots.
#[test]
fn corrupted_consistency_proofs_are_rejected() {
    let some = h(SOME_HASH);
    let garbage = Hash::default();
    for v in CONSISTENCY.iter().filter(|v| !v.proof.is_empty()) {
        let (old, new) = (v.old, v.new);
        let proof = hs(v.proof);
        let (r1, r2) = (root(old), root(new));
        let ctx = format!("consistency {old} -> {new}");
        let reject = |o: u64, n: u64, a: &Hash, b: &Hash, p: &[Hash], what: &str| {
            assert!(
                verify_consistency(o, n, a, b, p).is_err(),
                "{ctx}: accepted with {what}"
            );
        };
        let with = |f: &dyn Fn(&mut Vec<Hash>)| {
            let mut p = proof.clone();
            f(&mut p);
            p
        };

        // Wrong old size.
        reject(old - 1, new, &r1, &r2, &proof, "old - 1");
        reject(old + 1, new, &r1, &r2, &proof, "old + 1");
        reject(old ^ 2, new, &r1, &r2, &proof, "old ^ 2");
        // Wrong new size.
        reject(old, new * 2, &r1, &r2, &proof, "new * 2");
        reject(old, new / 2, &r1, &r2, &proof, "new / 2");
        // new +- 1 with the same roots can pass when the path shape is unchanged (see
        // `verification_binds_the_shape_not_the_size`); with the real roots it must not.
        for n in [new - 1, new + 1] {
            let r = if n <= 8 { root(n) } else { r2 };
            reject(
                old,
                n,
                &r1,
                &r,
                &proof,
                &format!("new {n} with its own root"),
            );
        }
        // Every other pair of sizes of the reference tree, each with its own real roots.
        for n in 1..=8u64 {
            for o in 1..=n {
                if (o, n) != (old, new) {
                    reject(
                        o,
                        n,
                        &root(o),
                        &root(n),
                        &proof,
                        &format!("sizes {o} -> {n} with their roots"),
                    );
                }
            }
        }
        // Wrong roots.
        reject(old, new, &some, &r2, &proof, "wrong old root");
        reject(old, new, &r1, &some, &proof, "wrong new root");
        reject(old, new, &r2, &r1, &proof, "swapped roots");
        // Empty proof.
        reject(old, new, &r1, &r2, &[], "empty proof");
        // Garbage at the end and at the front.
        reject(
            old,
            new,
            &r1,
            &r2,
            &with(&|p| p.push(garbage)),
            "trailing garbage",
        );
        reject(
            old,
            new,
            &r1,
            &r2,
            &with(&|p| p.push(r1)),
            "trailing old root",
        );
        reject(
            old,
            new,
            &r1,
            &r2,
            &with(&|p| p.push(r2)),
            "trailing new root",
        );
        reject(
            old,
            new,
            &r1,
            &r2,
            &with(&|p| p.insert(0, garbage)),
            "preceding garbage",
        );
        reject(
            old,
            new,
            &r1,
            &r2,
            &with(&|p| p.insert(0, r1)),
            "preceding old root",
        );
        reject(
            old,
            new,
            &r1,
            &r2,
            &with(&|p| p.insert(0, r2)),
            "preceding new root",
        );
        reject(
            old,
            new,
            &r1,
            &r2,
            &with(&|p| p.insert(0, proof[0])),
            "preceding proof[0]",
        );
        // Removed / inserted components.
        for i in 0..proof.len() {
            reject(
                old,
                new,
                &r1,
                &r2,
                &with(&|p| {
                    p.remove(i);
                }),
                &format!("proof[{i}] removed"),
            );
            reject(
                old,
                new,
                &r1,
                &r2,
                &with(&|p| p.insert(i, some)),
                &format!("some hash inserted at {i}"),
            );
        }
        // Every single-bit flip.
        for i in 0..proof.len() {
            for byte in 0..32 {
                for bit in 0..8 {
                    reject(
                        old,
                        new,
                        &r1,
                        &r2,
                        &with(&|p| p[i] = flip(p[i], byte, bit)),
                        &format!("proof[{i}] byte {byte} bit {bit}"),
                    );
                }
            }
        }
        for byte in 0..32 {
            for bit in 0..8 {
                reject(
                    old,
                    new,
                    &flip(r1, byte, bit),
                    &r2,
                    &proof,
                    &format!("old root byte {byte} bit {bit}"),
                );
                reject(
                    old,
                    new,
                    &r1,
                    &flip(r2, byte, bit),
                    &proof,
                    &format!("new root byte {byte} bit {bit}"),
                );
            }
        }
    }
}

/// The table-driven cases of TestVerifyConsistency that apply to sizes >= 1 (this crate defines
/// consistency only for `0 < old <= new`; see `invalid_requests_are_refused`).
#[test]
fn equal_sizes_and_time_travel() {
    let (r1, r2) = (leaf_hash(b"don't care 1"), leaf_hash(b"don't care 2"));
    let empty = h(EMPTY_ROOT);
    assert_eq!(
        verify_consistency(1, 1, &r1, &r2, &[]),
        Err(ProofError::RootMismatch)
    );
    assert_eq!(verify_consistency(1, 1, &r2, &r2, &[]), Ok(()));
    assert_eq!(
        verify_consistency(2, 1, &r1, &r2, &[]),
        Err(ProofError::BadSizes { old: 2, new: 1 })
    );
    assert_eq!(
        verify_consistency(1, 2, &r1, &r2, &[]),
        Err(ProofError::WrongLength)
    );
    assert_eq!(
        verify_consistency(1, 1, &empty, &r2, &[]),
        Err(ProofError::RootMismatch)
    );
    assert_eq!(
        verify_consistency(1, 1, &empty, &empty, &[empty]),
        Err(ProofError::WrongLength)
    );
    for size in 1..=8u64 {
        assert_eq!(
            verify_consistency(size, size, &root(size), &root(size), &[]),
            Ok(())
        );
        assert!(verify_consistency(size, size, &root(size), &root(size), &[root(size)]).is_err());
    }
}

#[test]
fn every_consistency_proof_in_the_reference_tree_verifies() {
    let src = MemSource::from_leaves(&leaf_hashes());
    for new in 1..=8u64 {
        for old in 1..=new {
            let proof = consistency_proof(&src.limited(new), old, new)
                .unwrap_or_else(|e| panic!("{e}"))
                .unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(
                verify_consistency(old, new, &root(old), &root(new), &proof),
                Ok(()),
                "{old} -> {new}"
            );
            if old == new {
                assert!(proof.is_empty());
            }
        }
    }
}

#[test]
fn invalid_requests_are_refused() {
    let src = MemSource::from_leaves(&leaf_hashes());
    let view = src.limited(8);
    // verify_test.go `{0, 0, nil}` and TestInclusion's error cases.
    for (index, size) in [
        (0u64, 0u64),
        (1, 0),
        (2, 1),
        (3, 0),
        (8, 7),
        (8, 8),
        (u64::MAX, 8),
    ] {
        assert_eq!(
            inclusion_proof(&view, index, size),
            Ok(Err(ProofRequestError::IndexOutOfRange { index, size }))
        );
        let leaf = leaf_hash(b"");
        assert_eq!(
            verify_inclusion(index, size, &leaf, &[], &leaf),
            Err(ProofError::IndexOutOfRange { index, size })
        );
    }
    // TestConsistency's error cases, and size 0 (outside 0 < old <= new here).
    for (old, new) in [(5u64, 0u64), (9, 8), (0, 0), (0, 1), (0, 8), (2, 1)] {
        assert_eq!(
            consistency_proof(&view, old, new),
            Ok(Err(ProofRequestError::BadSizes { from: old, to: new }))
        );
        assert_eq!(
            verify_consistency(old, new, &empty_root(), &empty_root(), &[]),
            Err(ProofError::BadSizes { old, new })
        );
    }
    // Error messages name the numbers.
    assert_eq!(
        ProofRequestError::IndexOutOfRange { index: 8, size: 7 }.to_string(),
        "leaf index 8 is outside a tree of size 7"
    );
    assert_eq!(
        ProofError::BadSizes { old: 9, new: 8 }.to_string(),
        "consistency needs 0 < old <= new; got old 9, new 8"
    );
}

/// The node hash is over `0x01 || left || right`, in that order.
#[test]
fn node_hash_orders_children() {
    let leaves = leaf_hashes();
    assert_eq!(node_hash(&leaves[0], &leaves[1]), root(2));
    assert_ne!(node_hash(&leaves[1], &leaves[0]), root(2));
    assert_eq!(
        node_hash(
            &root(4),
            &node_hash(
                &node_hash(&leaves[4], &leaves[5]),
                &node_hash(&leaves[6], &leaves[7])
            )
        ),
        root(8)
    );
}

/// The RFC 9162 verification algorithms bind a proof to the *shape* of the path that `index` and
/// `size` determine, not to the exact size: the same hashes also "verify" for another size whose
/// path has the same shape, when paired with the same root. This is why a root must always be
/// taken from a checkpoint of the claimed size. Documented here so that nobody relies on the
/// verifiers to catch a size paired with the wrong root.
#[test]
fn verification_binds_the_shape_not_the_size() {
    let leaves = leaf_hashes();
    let v = &INCLUSION[1]; // leaf 0 in the tree of 8
    let proof = hs(v.proof);
    for size in 5..=8 {
        assert_eq!(
            verify_inclusion(0, size, &leaves[0], &proof, &root(8)),
            Ok(()),
            "size {size}"
        );
        // ...but never with the real root of that size (other than 8).
        if size != 8 {
            assert_eq!(
                verify_inclusion(0, size, &leaves[0], &proof, &root(size)),
                Err(ProofError::RootMismatch)
            );
        }
    }
    let c = &CONSISTENCY[1]; // 1 -> 8
    let proof = hs(c.proof);
    for new in 5..=8 {
        assert_eq!(
            verify_consistency(1, new, &root(1), &root(8), &proof),
            Ok(()),
            "1 -> {new}"
        );
    }
}
