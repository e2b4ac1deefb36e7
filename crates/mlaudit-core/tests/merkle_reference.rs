//! Exhaustive comparison of `mlaudit_core::merkle` with a naive reference written straight from
//! RFC 9162 §2.1 (MTH §2.1.1, PATH §2.1.3.1, PROOF/SUBPROOF §2.1.4.1), for every tree size
//! 1..=300: every inclusion proof and every consistency proof.
//!
//! The reference works on slices of leaf hashes and recurses exactly as the RFC text does; it
//! shares nothing with the code under test except `leaf_hash` and `node_hash`, whose outputs are
//! pinned by `merkle_known_answer.rs`.

#![allow(clippy::needless_range_loop)]

use mlaudit_core::merkle::{
    consistency_proof, empty_root, inclusion_proof, leaf_hash, node_hash, subtree_hash,
    verify_consistency, verify_inclusion, CompactRange, Hash, NodeSource, ProofError,
};

const MAX: usize = 300;

// ---------------------------------------------------------------------------------------------
// The reference, from the RFC text.
// ---------------------------------------------------------------------------------------------

/// "the largest power of two smaller than n (i.e., k < n <= 2k)".
fn rfc_k(n: usize) -> usize {
    assert!(n >= 2);
    let mut k = 1;
    while k * 2 < n {
        k *= 2;
    }
    k
}

/// MTH(D[n]) over leaf hashes: MTH({}) = SHA-256(); MTH({d0}) = leaf hash;
/// MTH(D[n]) = HASH(0x01 || MTH(D[0:k]) || MTH(D[k:n])).
fn mth(d: &[Hash]) -> Hash {
    match d.len() {
        0 => empty_root(),
        1 => d[0],
        n => {
            let k = rfc_k(n);
            node_hash(&mth(&d[..k]), &mth(&d[k..]))
        }
    }
}

/// PATH(m, D[n]): PATH(0, {d0}) = {}; for m < k, PATH(m, D[0:k]) : MTH(D[k:n]);
/// for m >= k, PATH(m - k, D[k:n]) : MTH(D[0:k]).
fn path(m: usize, d: &[Hash]) -> Vec<Hash> {
    let n = d.len();
    assert!(m < n);
    if n == 1 {
        return Vec::new();
    }
    let k = rfc_k(n);
    if m < k {
        let mut p = path(m, &d[..k]);
        p.push(mth(&d[k..]));
        p
    } else {
        let mut p = path(m - k, &d[k..]);
        p.push(mth(&d[..k]));
        p
    }
}

/// PROOF(m, D[n]) = SUBPROOF(m, D[n], true).
fn proof(m: usize, d: &[Hash]) -> Vec<Hash> {
    subproof(m, d, true)
}

/// SUBPROOF(m, D[m], true) = {}; SUBPROOF(m, D[m], false) = {MTH(D[m])};
/// for m <= k: SUBPROOF(m, D[0:k], b) : MTH(D[k:n]);
/// for m > k: SUBPROOF(m - k, D[k:n], false) : MTH(D[0:k]).
fn subproof(m: usize, d: &[Hash], b: bool) -> Vec<Hash> {
    let n = d.len();
    assert!(0 < m && m <= n);
    if m == n {
        return if b { Vec::new() } else { vec![mth(d)] };
    }
    let k = rfc_k(n);
    if m <= k {
        let mut p = subproof(m, &d[..k], b);
        p.push(mth(&d[k..]));
        p
    } else {
        let mut p = subproof(m - k, &d[k..], false);
        p.push(mth(&d[..k]));
        p
    }
}

// ---------------------------------------------------------------------------------------------
// The store under test: every perfect subtree, as reported by `CompactRange::push`.
// ---------------------------------------------------------------------------------------------

struct Tree {
    leaves: Vec<Hash>,
    /// `levels[l][i]` is the hash of leaves `[i << l, (i + 1) << l)`.
    levels: Vec<Vec<Hash>>,
    /// `roots[n]` is the root of the first `n` leaves, from the CompactRange while it grew.
    roots: Vec<Hash>,
}

impl Tree {
    fn build(n: usize) -> Tree {
        let leaves: Vec<Hash> = (0..n as u64)
            .map(|i| leaf_hash(format!("leaf {i}").as_bytes()))
            .collect();
        let mut levels: Vec<Vec<Hash>> = Vec::new();
        let mut roots = vec![CompactRange::new().root()];
        let mut cr = CompactRange::new();
        for (i, leaf) in leaves.iter().enumerate() {
            let mut last_level = None;
            cr.push(*leaf, |level, index, hash| {
                // Lowest level first, each level once, every node exactly once and in order.
                assert_eq!(
                    last_level.map_or(0, |l: u32| l + 1),
                    level,
                    "push {i}: levels out of order"
                );
                last_level = Some(level);
                let level = level as usize;
                if levels.len() == level {
                    levels.push(Vec::new());
                }
                assert_eq!(
                    levels[level].len() as u64,
                    index,
                    "push {i}: node ({level}, {index}) out of order"
                );
                levels[level].push(*hash);
            });
            // A push completes exactly the subtrees whose size divides the new size.
            let size = i + 1;
            assert_eq!(last_level, Some(size.trailing_zeros()), "push {i}");
            roots.push(cr.root());
        }
        Tree {
            leaves,
            levels,
            roots,
        }
    }

    fn view(&self, size: u64) -> View<'_> {
        View { tree: self, size }
    }
}

/// The tree of the first `size` leaves; asking for anything outside it is an error.
struct View<'a> {
    tree: &'a Tree,
    size: u64,
}

impl NodeSource for View<'_> {
    type Error = String;
    fn node(&self, level: u32, index: u64) -> Result<Hash, String> {
        if (index + 1) << level > self.size {
            return Err(format!(
                "asked for node ({level}, {index}) outside a tree of {}",
                self.size
            ));
        }
        self.tree
            .levels
            .get(level as usize)
            .and_then(|l| l.get(index as usize))
            .copied()
            .ok_or_else(|| format!("node ({level}, {index}) was never reported"))
    }
}

fn ok<T, E1: std::fmt::Debug, E2: std::fmt::Debug>(r: Result<Result<T, E2>, E1>, what: &str) -> T {
    match r {
        Ok(Ok(v)) => v,
        Ok(Err(e)) => panic!("{what}: request refused: {e:?}"),
        Err(e) => panic!("{what}: storage error: {e:?}"),
    }
}

fn mutate(h: &Hash, i: usize) -> Hash {
    let mut x = *h;
    x.0[i % 32] ^= 1 << (i % 8);
    x
}

/// For trees up to this size an inclusion proof is also tried at *every* other index; above it,
/// at a fixed set of nearby and far indices (the full cross product is ~60M hashes, too slow for
/// the time budget of this file).
const EVERY_OTHER_INDEX_UP_TO: usize = 160;

// ---------------------------------------------------------------------------------------------
// Tests.
// ---------------------------------------------------------------------------------------------

#[test]
fn roots_and_subtree_hashes_match_mth() {
    let tree = Tree::build(MAX);
    for n in 0..=MAX {
        let want = mth(&tree.leaves[..n]);
        assert_eq!(tree.roots[n], want, "CompactRange root of {n}");
        let view = tree.view(n as u64);
        assert_eq!(
            subtree_hash(&view, 0, n as u64),
            Ok(want),
            "subtree_hash(0, {n})"
        );
        let rebuilt = CompactRange::from_source(&view, n as u64)
            .unwrap_or_else(|e| panic!("from_source({n}): {e}"));
        assert_eq!(rebuilt.size(), n as u64);
        assert_eq!(rebuilt.root(), want, "from_source({n}).root()");
    }
    // MTH of arbitrary ranges D[a:b] (the RFC's MTH applies to any list of leaves).
    let view = tree.view(MAX as u64);
    for a in 0..=100usize {
        for b in a..=100usize {
            assert_eq!(
                subtree_hash(&view, a as u64, b as u64),
                Ok(mth(&tree.leaves[a..b])),
                "subtree_hash({a}, {b})"
            );
        }
    }
    for (a, b) in [
        (0usize, MAX),
        (1, MAX),
        (17, 299),
        (128, 256),
        (129, 255),
        (255, 300),
        (299, 300),
        (300, 300),
    ] {
        assert_eq!(
            subtree_hash(&view, a as u64, b as u64),
            Ok(mth(&tree.leaves[a..b])),
            "subtree_hash({a}, {b})"
        );
    }
}

#[test]
fn every_inclusion_proof_matches_path_and_verifies() {
    let tree = Tree::build(MAX);
    for n in 1..=MAX {
        let d = &tree.leaves[..n];
        let root = tree.roots[n];
        let view = tree.view(n as u64);
        for m in 0..n {
            let got = ok(
                inclusion_proof(&view, m as u64, n as u64),
                &format!("inclusion_proof({m}, {n})"),
            );
            assert_eq!(
                got,
                path(m, d),
                "inclusion proof of leaf {m} in tree of {n}"
            );
            assert_eq!(
                verify_inclusion(m as u64, n as u64, &d[m], &got, &root),
                Ok(()),
                "verify leaf {m} size {n}"
            );
        }
    }
}

#[test]
fn inclusion_proofs_fail_for_wrong_index_size_or_root() {
    let tree = Tree::build(MAX + 1);
    for n in 1..=MAX {
        let d = &tree.leaves[..n];
        let root = tree.roots[n];
        let view = tree.view(n as u64);
        for m in 0..n {
            let p = ok(
                inclusion_proof(&view, m as u64, n as u64),
                "inclusion_proof",
            );
            let leaf = &d[m];
            // Wrong index.
            let mut wrong: Vec<usize> = if n <= EVERY_OTHER_INDEX_UP_TO {
                (0..n + 2).collect()
            } else {
                let top = 1usize << (usize::BITS - 1 - n.leading_zeros());
                vec![
                    0,
                    1,
                    m.wrapping_sub(1),
                    m + 1,
                    m ^ 1,
                    m ^ 2,
                    m ^ 4,
                    m ^ top,
                    n - 1,
                    n - 2,
                    n,
                    n + 1,
                    (m * 7 + 13) % n,
                    (m * 31 + 101) % n,
                ]
            };
            wrong.retain(|&j| j != m);
            for j in wrong {
                assert!(
                    verify_inclusion(j as u64, n as u64, leaf, &p, &root).is_err(),
                    "leaf {m} size {n} accepted at index {j}"
                );
            }
            // Wrong size, paired with the real root of that size.
            if n > 1 {
                assert!(
                    verify_inclusion(m as u64, n as u64 - 1, leaf, &p, &tree.roots[n - 1]).is_err(),
                    "leaf {m} size {n} accepted at size {}",
                    n - 1
                );
            }
            assert!(
                verify_inclusion(m as u64, n as u64 + 1, leaf, &p, &tree.roots[n + 1]).is_err(),
                "leaf {m} size {n} accepted at size {}",
                n + 1
            );
            // Mutated root, mutated leaf.
            assert_eq!(
                verify_inclusion(m as u64, n as u64, leaf, &p, &mutate(&root, m + n)),
                Err(ProofError::RootMismatch),
                "leaf {m} size {n}: mutated root"
            );
            assert_eq!(
                verify_inclusion(m as u64, n as u64, &mutate(leaf, m), &p, &root),
                Err(ProofError::RootMismatch),
                "leaf {m} size {n}: mutated leaf"
            );
            // Mutated proof element, one too few and one too many.
            if !p.is_empty() {
                let mut q = p.clone();
                let i = (m + n) % q.len();
                q[i] = mutate(&q[i], m);
                assert!(
                    verify_inclusion(m as u64, n as u64, leaf, &q, &root).is_err(),
                    "leaf {m} size {n}: mutated proof[{i}]"
                );
                assert_eq!(
                    verify_inclusion(m as u64, n as u64, leaf, &p[..p.len() - 1], &root),
                    Err(ProofError::WrongLength),
                    "leaf {m} size {n}: truncated"
                );
            }
            let mut longer = p.clone();
            longer.push(root);
            assert_eq!(
                verify_inclusion(m as u64, n as u64, leaf, &longer, &root),
                Err(ProofError::WrongLength),
                "leaf {m} size {n}: extended"
            );
        }
        assert_eq!(
            verify_inclusion(n as u64, n as u64, &d[0], &[], &root),
            Err(ProofError::IndexOutOfRange {
                index: n as u64,
                size: n as u64
            })
        );
    }
}

#[test]
fn every_consistency_proof_matches_proof_and_verifies() {
    let tree = Tree::build(MAX + 1);
    for n in 1..=MAX {
        let d = &tree.leaves[..n];
        let view = tree.view(n as u64);
        let new_root = tree.roots[n];
        for m in 1..=n {
            let got = ok(
                consistency_proof(&view, m as u64, n as u64),
                &format!("consistency_proof({m}, {n})"),
            );
            assert_eq!(got, proof(m, d), "consistency proof {m} -> {n}");
            let old_root = tree.roots[m];
            assert_eq!(
                verify_consistency(m as u64, n as u64, &old_root, &new_root, &got),
                Ok(()),
                "verify {m} -> {n}"
            );

            // Wrong sizes, each paired with the real root of that size.
            if m > 1 {
                assert!(
                    verify_consistency(m as u64 - 1, n as u64, &tree.roots[m - 1], &new_root, &got)
                        .is_err(),
                    "{m} -> {n} accepted as {} -> {n}",
                    m - 1
                );
            }
            if m < n {
                assert!(
                    verify_consistency(m as u64 + 1, n as u64, &tree.roots[m + 1], &new_root, &got)
                        .is_err(),
                    "{m} -> {n} accepted as {} -> {n}",
                    m + 1
                );
                assert!(
                    verify_consistency(m as u64, n as u64 - 1, &old_root, &tree.roots[n - 1], &got)
                        .is_err(),
                    "{m} -> {n} accepted as {m} -> {}",
                    n - 1
                );
            }
            assert!(
                verify_consistency(m as u64, n as u64 + 1, &old_root, &tree.roots[n + 1], &got)
                    .is_err(),
                "{m} -> {n} accepted as {m} -> {}",
                n + 1
            );
            // Mutated roots.
            assert_eq!(
                verify_consistency(m as u64, n as u64, &mutate(&old_root, m), &new_root, &got),
                Err(ProofError::RootMismatch),
                "{m} -> {n}: mutated old root"
            );
            assert_eq!(
                verify_consistency(m as u64, n as u64, &old_root, &mutate(&new_root, n), &got),
                Err(ProofError::RootMismatch),
                "{m} -> {n}: mutated new root"
            );
            // Mutated, missing and extra proof elements.
            if !got.is_empty() {
                let mut q = got.clone();
                let i = (m + n) % q.len();
                q[i] = mutate(&q[i], m + n);
                assert!(
                    verify_consistency(m as u64, n as u64, &old_root, &new_root, &q).is_err(),
                    "{m} -> {n}: mutated proof[{i}]"
                );
                assert!(
                    verify_consistency(
                        m as u64,
                        n as u64,
                        &old_root,
                        &new_root,
                        &got[..got.len() - 1]
                    )
                    .is_err(),
                    "{m} -> {n}: truncated"
                );
            }
            let mut longer = got.clone();
            longer.push(new_root);
            assert!(
                verify_consistency(m as u64, n as u64, &old_root, &new_root, &longer).is_err(),
                "{m} -> {n}: extended"
            );
        }
    }
}
