//! Packed (compressed) sealed segments: read back exactly, a raw log from before opens and is
//! packed, a flipped byte in a block is reported with file and offset, and a crash at any step
//! of packing loses nothing.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests fail loudly")]

mod common;

use common::{file_name, open_with, run_verify, segments, Spec, TempDir, KINDS};
use mlaudit_core::EventId;
use mlaudit_embedded::{EmbeddedStore, Options};
use mlaudit_store::prelude::*;
use mlaudit_store::StoreError;
use std::path::Path;

const EVENTS: u64 = 400;

fn options(pack_sealed: bool) -> Options {
    Options {
        segment_target: 8 << 10,
        run_events: 64,
        pack_sealed,
        ..Options::default()
    }
}

fn id(n: u64) -> EventId {
    let mut b = [0x7c; 16];
    b[8..].copy_from_slice(&n.to_be_bytes());
    EventId(b)
}

/// A closed log of [`EVENTS`] events over many 8 KiB segments.
fn build(tag: &str, pack_sealed: bool) -> TempDir {
    let dir = TempDir::new(tag);
    let (store, _) = open_with(dir.path(), options(pack_sealed));
    for b in 0..EVENTS / 20 {
        let batch = (b * 20..b * 20 + 20)
            .map(|n| Spec::simple(id(n), KINDS[n as usize % KINDS.len()], n).prepare())
            .collect();
        store.append(batch).unwrap();
    }
    store.settle();
    drop(store);
    dir
}

/// A copy of a raw log, opened with packing, packed and closed.
fn packed_copy(raw: &TempDir, tag: &str) -> TempDir {
    let copy = TempDir::copy_of(raw.path(), tag);
    let (store, _) = open_with(copy.path(), options(true));
    store.settle();
    drop(store);
    copy
}

fn kinds(dir: &Path) -> (usize, usize) {
    let segs = segments(dir);
    let packed = segs
        .iter()
        .filter(|p| file_name(p).ends_with(".zst"))
        .count();
    (packed, segs.len() - packed)
}

/// Every event's entry and payload, by seq.
fn contents(store: &EmbeddedStore) -> Vec<(Vec<u8>, Option<Vec<u8>>)> {
    (0..store.tree_size())
        .map(|seq| {
            let e = store.event(seq).unwrap();
            (e.entry, e.payload)
        })
        .collect()
}

#[test]
fn sealed_segments_are_packed_and_read_back_exactly() {
    let raw = build("packed-raw", false);
    let packed = packed_copy(&raw, "packed");
    let (p, r) = kinds(packed.path());
    assert!(p >= 5 && r == 1, "{p} packed and {r} raw segments");
    assert_eq!(kinds(raw.path()).0, 0);
    let (a, _) = open_with(raw.path(), options(false));
    let (b, _) = open_with(packed.path(), options(false));
    assert_eq!(
        contents(&a),
        contents(&b),
        "the same bytes, whichever way stored"
    );
    let ra = run_verify(&a).unwrap();
    let rb = run_verify(&b).unwrap();
    assert_eq!((ra.events, ra.root), (rb.events, rb.root));
    for n in (0..EVENTS).step_by(37) {
        let seq = b.seq_of(&id(n)).unwrap().unwrap();
        let bundle = mlaudit_store::proofs::inclusion_bundle(&b, seq).unwrap();
        bundle.verify(&common::verifier()).unwrap();
    }
    let bytes = |d: &Path| -> u64 {
        segments(d)
            .iter()
            .map(|p| p.metadata().unwrap().len())
            .sum()
    };
    assert!(
        bytes(packed.path()) * 2 < bytes(raw.path()),
        "packed {} bytes against raw {}",
        bytes(packed.path()),
        bytes(raw.path())
    );
}

#[test]
fn a_log_of_raw_segments_opens_and_is_packed() {
    let dir = build("packed-upgrade", false);
    let (store, _) = open_with(dir.path(), options(false));
    let before = (contents(&store), run_verify(&store).unwrap().root);
    drop(store);
    let (store, _) = open_with(dir.path(), options(true));
    store
        .append(vec![Spec::simple(id(EVENTS), KINDS[0], EVENTS).prepare()])
        .unwrap();
    store.settle();
    drop(store);
    let (p, r) = kinds(dir.path());
    assert!(p >= 5 && r == 1, "{p} packed and {r} raw segments");
    let (store, _) = open_with(dir.path(), options(true));
    let after = contents(&store);
    assert_eq!(after[..before.0.len()], before.0[..]);
    let report = run_verify(&store).unwrap();
    assert_eq!(report.events, EVENTS + 1);
}

#[test]
fn a_flipped_byte_in_a_packed_block_is_reported_with_file_and_offset() {
    let base = build("packed-flip", true);
    let first = segments(base.path())[0].clone();
    let name = file_name(&first);
    assert!(name.ends_with(".zst"));
    let copy = TempDir::copy_of(base.path(), "packed-flip");
    let path = copy.path().join(&name);
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[40] ^= 0x04; // Inside the first block (after the 8-byte magic).
    std::fs::write(&path, bytes).unwrap();
    let (store, _) = open_with(copy.path(), options(true));
    match store.event(0) {
        Err(StoreError::Corrupt { location, problem }) => {
            let text = format!("{location}: {problem}");
            assert!(
                text.contains(&name) && text.contains("at offset 8"),
                "the file and the block's offset: {text}"
            );
        }
        other => panic!("a damaged block must be reported: {other:?}"),
    }
    let failure = run_verify(&store).expect_err("verify must fail");
    assert!(failure.to_string().contains(&name), "{failure}");
}

/// What a crash left, and how to make it.
type Damage<'a> = (&'a str, &'a dyn Fn(&Path));

#[test]
fn a_crash_at_any_step_of_packing_loses_nothing() {
    let raw = build("packed-crash-raw", false);
    let packed = packed_copy(&raw, "packed-crash");
    let (store, _) = open_with(raw.path(), options(false));
    let want = (contents(&store), run_verify(&store).unwrap().root);
    drop(store);
    let first_raw = segments(raw.path())[0].clone();
    let first_packed = segments(packed.path())[0].clone();
    let cases: [Damage<'_>; 3] = [
        ("a packed copy cut short under its temporary name", &|d| {
            let bytes = std::fs::read(&first_packed).unwrap();
            std::fs::write(
                d.join(format!("{}.tmp", file_name(&first_packed))),
                &bytes[..bytes.len() / 2],
            )
            .unwrap();
        }),
        (
            "the packed copy renamed, the raw one not yet removed",
            &|d| {
                std::fs::copy(&first_packed, d.join(file_name(&first_packed))).unwrap();
            },
        ),
        (
            "a packed copy with a damaged trailer beside the raw one",
            &|d| {
                let mut bytes = std::fs::read(&first_packed).unwrap();
                let n = bytes.len();
                bytes[n - 20] ^= 1;
                std::fs::write(d.join(file_name(&first_packed)), bytes).unwrap();
            },
        ),
    ];
    for (what, damage) in cases {
        let copy = TempDir::copy_of(raw.path(), "packed-crash");
        damage(copy.path());
        let (store, _) = open_with(copy.path(), options(false));
        assert_eq!(contents(&store), want.0, "{what}");
        assert_eq!(run_verify(&store).unwrap().root, want.1, "{what}");
        drop(store);
        let names: Vec<String> = std::fs::read_dir(copy.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with(&file_name(&first_raw)[..24]))
            .collect();
        assert_eq!(
            names.len(),
            1,
            "{what}: one copy of the segment is left: {names:?}"
        );
    }
}
