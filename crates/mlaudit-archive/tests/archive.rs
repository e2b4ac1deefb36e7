//! The archive on the local filesystem backend: built from a real embedded log, extended,
//! verified alone with only the verifier key, read back, and every kind of damage named.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test fails loudly on any unexpected error"
)]

mod common;

use common::{checkpoint, extend_to, log_with, verifier, verify_all, TempDir};
use mlaudit_archive::write::extend;
use mlaudit_archive::{Archive, ArchiveError};
use mlaudit_store::prelude::*;

fn names(dir: &std::path::Path) -> Vec<String> {
    fn walk(base: &std::path::Path, dir: &std::path::Path, out: &mut Vec<String>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                walk(base, &p, out);
            } else {
                out.push(p.strip_prefix(base).unwrap().display().to_string());
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out);
    out.sort();
    out
}

#[test]
fn an_archive_is_built_in_the_tiles_layout_extended_and_verifies_alone() {
    let log_dir = TempDir::new("log");
    let arch = TempDir::new("arch");
    let store = log_with(&log_dir.0, &[600, 70_000 - 600], "a");
    let archive = Archive::open(&arch.url()).unwrap();
    let first = extend_to(&archive, &store, 600).unwrap();
    assert_eq!((first.from, first.size, first.already_there), (0, 600, 0));
    let v = verify_all(&archive).unwrap();
    assert_eq!(
        (v.size, v.payloads, v.payloads_absent, v.checkpoints),
        (600, 600, 0, 1)
    );

    let mut calls = 0;
    let second = extend(
        &archive,
        &store,
        &checkpoint(&store, 70_000),
        &verifier(),
        &mut |done, total| {
            calls += 1;
            assert!(done <= total && total == 70_000 - 512);
        },
    )
    .unwrap();
    assert!(calls > 0, "progress is reported");
    assert_eq!((second.from, second.size), (600, 70_000));
    let v = verify_all(&archive).unwrap();
    assert_eq!((v.size, v.payloads, v.checkpoints), (70_000, 70_000, 2));

    // The spec's own example: a tree of 70,000 entries.
    let all = names(&arch.0);
    for expected in [
        "checkpoint",
        "checkpoints/600",
        "checkpoints/70000",
        "tile/0/272",
        "tile/0/273.p/112",
        "tile/1/000",
        "tile/1/001.p/17",
        "tile/2/000.p/1",
        "tile/entries/273.p/112",
        "payload/273.p/112",
        // The partial tiles of the first run stay: create-only, never rewritten.
        "tile/0/002.p/88",
        "tile/entries/002.p/88",
    ] {
        assert!(
            all.contains(&expected.to_owned()),
            "{expected} missing: {all:?}"
        );
    }
    assert!(!all.iter().any(|n| n.starts_with("tile/3/")));
    let tile = std::fs::read(arch.0.join("tile/0/273.p/112")).unwrap();
    assert_eq!(tile.len(), 112 * 32);

    // The first run's partial tiles are checked too: each must begin the tile now at its index.
    for stale in [
        "tile/0/002.p/88",
        "tile/entries/002.p/88",
        "payload/002.p/88",
    ] {
        let path = arch.0.join(stale);
        let original = std::fs::read(&path).unwrap();
        let mut bytes = original.clone();
        bytes[40] ^= 1;
        std::fs::write(&path, &bytes).unwrap();
        let err = verify_all(&archive).unwrap_err();
        assert!(err.to_string().starts_with(&format!("{stale}: ")), "{err}");
        std::fs::write(&path, &original).unwrap();
    }
    // An object larger than its kind can be is refused unread.
    let path = arch.0.join("tile/1/000");
    let original = std::fs::read(&path).unwrap();
    std::fs::write(&path, vec![0u8; 256 * 32 + 1]).unwrap();
    let err = verify_all(&archive).unwrap_err();
    assert!(
        err.to_string().contains("more than an object of its kind"),
        "{err}"
    );
    std::fs::write(&path, &original).unwrap();
    verify_all(&archive).unwrap();

    // Archived events read back byte for byte.
    let back = archive.events(250, 260).unwrap();
    for ev in back {
        let live = store.event(ev.seq).unwrap();
        assert_eq!((ev.entry, ev.payload), (live.entry, live.payload));
    }
    assert!(archive.events(69_990, 70_001).is_err());
}

#[test]
fn a_cut_off_run_is_finished_by_running_again() {
    let log_dir = TempDir::new("log");
    let arch = TempDir::new("arch");
    let store = log_with(&log_dir.0, &[1000, 1000], "a");
    let archive = Archive::open(&arch.url()).unwrap();
    extend_to(&archive, &store, 1000).unwrap();
    extend_to(&archive, &store, 2000).unwrap();
    // As if the second run had stopped before its checkpoint: put the first one back and
    // remove a few of the second run's objects.
    std::fs::write(arch.0.join("checkpoint"), checkpoint(&store, 1000)).unwrap();
    // Stopped between its last two writes: the larger tree is whole, and verifies.
    let behind = verify_all(&archive).unwrap();
    assert_eq!((behind.size, behind.checkpoint_behind), (2000, Some(1000)));
    for name in ["checkpoints/2000", "tile/0/007.p/208", "payload/005"] {
        std::fs::remove_file(arch.0.join(name)).unwrap();
    }
    assert_eq!(verify_all(&archive).unwrap().size, 1000);
    let again = extend_to(&archive, &store, 2000).unwrap();
    assert_eq!(again.from, 1000);
    assert_eq!(again.written, 3, "the three missing objects");
    assert!(again.already_there > 0);
    assert_eq!(verify_all(&archive).unwrap().size, 2000);
}

#[test]
fn another_log_can_never_overwrite_an_archive() {
    let (a_dir, b_dir) = (TempDir::new("log-a"), TempDir::new("log-b"));
    let arch = TempDir::new("arch");
    let a = log_with(&a_dir.0, &[300], "a");
    let b = log_with(&b_dir.0, &[300, 200], "b");
    let archive = Archive::open(&arch.url()).unwrap();
    extend_to(&archive, &a, 300).unwrap();
    let before = std::fs::read(arch.0.join("tile/entries/000")).unwrap();
    let err = extend_to(&archive, &b, 500).unwrap_err();
    assert!(matches!(err, ArchiveError::Diverged(_)), "{err}");
    // Even without the checkpoint check, create-only writes refuse the other log's bytes.
    std::fs::remove_file(arch.0.join("checkpoint")).unwrap();
    let err = extend_to(&archive, &b, 500).unwrap_err();
    assert!(matches!(err, ArchiveError::Conflict { .. }), "{err}");
    assert!(err.is_verification_failure());
    assert_eq!(
        std::fs::read(arch.0.join("tile/entries/000")).unwrap(),
        before
    );
}

#[test]
fn damage_to_any_object_is_caught_and_named() {
    let log_dir = TempDir::new("log");
    let arch = TempDir::new("arch");
    let store = log_with(&log_dir.0, &[700, 65_836], "a");
    let archive = Archive::open(&arch.url()).unwrap();
    extend_to(&archive, &store, 66_536).unwrap();
    extend_to(&archive, &store, 700).expect_err("an archive never goes back to a smaller tree");
    verify_all(&archive).unwrap();
    let flip = |name: &str, at: usize| {
        let path = arch.0.join(name);
        let original = std::fs::read(&path).unwrap();
        let mut bytes = original.clone();
        let i = at.min(bytes.len() - 1);
        bytes[i] ^= 0x01;
        std::fs::write(&path, &bytes).unwrap();
        let err = verify_all(&archive).unwrap_err();
        std::fs::write(&path, &original).unwrap();
        err
    };
    for (name, at) in [
        ("tile/entries/001", 100),
        ("tile/0/001", 40),
        ("tile/0/259.p/232", 0),
        ("tile/1/000", 64),
        ("tile/1/001.p/3", 5),
        ("payload/001", 200),
        ("checkpoint", 20),
        ("checkpoints/66536", 20),
    ] {
        let err = flip(name, at);
        assert!(err.is_verification_failure(), "{name}: {err}");
        match &err {
            ArchiveError::Invalid { object, .. } => assert_eq!(object, name, "{err}"),
            other => panic!("{name}: {other}"),
        }
    }
    std::fs::remove_file(arch.0.join("tile/entries/000")).unwrap();
    let err = verify_all(&archive).unwrap_err();
    assert!(
        err.to_string().starts_with("tile/entries/000: missing"),
        "{err}"
    );
}

#[test]
fn urls_other_than_the_four_backends_are_refused() {
    for bad in [
        "http://example.com/x",
        "s3://",
        "file://host/x",
        "file:///",
        "s3://bucket/x?region=eu",
        "not a url",
    ] {
        assert!(Archive::open(bad).is_err(), "{bad} must be refused");
    }
}

#[test]
fn removed_payloads_leave_every_bundle_holding_them_and_the_archive_still_verifies() {
    let log_dir = TempDir::new("log-rm");
    let arch = TempDir::new("arch-rm");
    let store = log_with(&log_dir.0, &[300, 400], "rm");
    let archive = Archive::open(&arch.url()).unwrap();
    extend_to(&archive, &store, 300).unwrap(); // leaves payload/001.p/44 behind
    extend_to(&archive, &store, 700).unwrap();
    let partial = arch.0.join("payload/001.p/44");
    assert!(partial.exists());
    let before = std::fs::read(&partial).unwrap();

    // 260 and 290 are in the full bundle of tile 1 and in the earlier partial one, so six
    // copies in four bundles (000, 001, 001.p/44, 002.p/188); 900 is not archived.
    let removed = archive.remove_payloads(&[10, 260, 290, 650, 900]).unwrap();
    assert_eq!((removed.payloads, removed.bundles), (6, 4));
    assert_ne!(std::fs::read(&partial).unwrap(), before);
    let again = archive.remove_payloads(&[10, 290]).unwrap();
    assert_eq!(again, mlaudit_archive::remove::Removed::default());

    let v = verify_all(&archive).unwrap();
    assert_eq!((v.size, v.payloads, v.payloads_absent), (700, 696, 4));
    let events = archive.events(0, 700).unwrap();
    for seq in [10, 260, 290, 650] {
        assert_eq!(events[seq].payload, None, "seq {seq}");
        assert_eq!(events[seq].entry, store.event(seq as u64).unwrap().entry);
    }
    assert!(events[11].payload.is_some());
}
