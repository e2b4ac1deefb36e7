//! Torn tails and damaged derived files: a store is built, closed, and then copies of it are
//! cut, zero-extended, or have derived files removed, shortened or garbled. Every such copy must
//! open (truncating a torn tail, rebuilding or replaying derived state), keep every event that
//! was complete, and pass `verify`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{file_name, only_segment, open, records, run_verify, try_open, Spec, TempDir, KINDS};
use mlaudit_core::entry::EventId;
use mlaudit_core::merkle::Hash;
use mlaudit_embedded::{record, OpenError};
use mlaudit_store::prelude::*;
use mlaudit_store::Query;
use std::path::Path;

/// Batch sizes of the base store. The last group has several events so that cutting its final
/// event keeps the others.
const GROUPS: &[usize] = &[3, 5, 1, 4];

/// A closed store and what it holds.
struct Base {
    dir: TempDir,
    /// (id, seq, payload) per event, grouped per batch.
    groups: Vec<Vec<(EventId, u64, Vec<u8>)>>,
    /// `derived.meta` as it was before the last group was appended: restoring it makes the
    /// directory look like a crash right after the last group was written.
    meta_before_last: Vec<u8>,
    /// `latest-checkpoint` as it was before the last group: with `meta_before_last`, the state
    /// of a crash before the last group's sync (the guard is written only after it).
    guard_before_last: Vec<u8>,
    root: Hash,
}

impl Base {
    /// Puts the watermark and the guard of a crash before the last group's sync into `dir`.
    fn crash_before_last(&self, dir: &Path) {
        std::fs::write(dir.join("derived.meta"), &self.meta_before_last).unwrap();
        std::fs::write(dir.join("latest-checkpoint"), &self.guard_before_last).unwrap();
    }
}

impl Base {
    fn total(&self) -> u64 {
        self.groups.iter().map(|g| g.len() as u64).sum()
    }
    fn all(&self) -> impl Iterator<Item = &(EventId, u64, Vec<u8>)> {
        self.groups.iter().flatten()
    }
}

fn build_base(tag: &str) -> Base {
    let dir = TempDir::new(tag);
    let mut groups = Vec::new();
    let mut n = 0u64;
    let mut meta_before_last = Vec::new();
    let mut guard_before_last = Vec::new();
    for (i, &size) in GROUPS.iter().enumerate() {
        if i == GROUPS.len() - 1 {
            meta_before_last = std::fs::read(dir.path().join("derived.meta")).unwrap();
            guard_before_last = std::fs::read(dir.path().join("latest-checkpoint")).unwrap();
        }
        let (store, _) = open(dir.path());
        let specs: Vec<Spec> = (0..size)
            .map(|_| {
                n += 1;
                Spec::simple(EventId([n as u8; 16]), KINDS[n as usize % KINDS.len()], n)
            })
            .collect();
        let receipt = store
            .append(specs.iter().map(Spec::prepare).collect())
            .unwrap();
        groups.push(
            specs
                .iter()
                .zip(&receipt.events)
                .map(|(s, a)| (a.id, a.seq, s.json().into_bytes()))
                .collect(),
        );
        drop(store);
    }
    let (store, _) = open(dir.path());
    let root = run_verify(&store).unwrap().root;
    drop(store);
    Base {
        dir,
        groups,
        meta_before_last,
        guard_before_last,
        root,
    }
}

/// Every event in `expect` is stored at its seq with its payload, the store holds exactly
/// `size` events, and `verify` passes with every checkpoint checked.
fn check_store(dir: &Path, expect: &[&(EventId, u64, Vec<u8>)], size: u64) {
    let (store, report) = open(dir);
    assert_eq!(
        report.truncated, None,
        "a second open finds nothing more to cut"
    );
    assert_eq!(store.tree_size(), size);
    for (id, seq, payload) in expect {
        assert_eq!(store.seq_of(id).unwrap(), Some(*seq));
        assert_eq!(
            store.event(*seq).unwrap().payload.as_deref(),
            Some(&payload[..])
        );
    }
    let v = run_verify(&store).unwrap();
    assert_eq!(v.events, size);
    assert_eq!(
        v.unsigned_tail, 0,
        "recovery signs a checkpoint for what it kept"
    );
    assert_eq!(store.checkpoint_sizes().unwrap().last(), Some(&size));
}

/// Cuts the segment of a copy of `base` at every offset inside its last two records (the last
/// group's final event and its checkpoint) and reopens, with the watermark from before the last
/// group, as after a crash.
fn cut_every_offset(base: &Base) {
    let seg = only_segment(base.dir.path());
    let name = file_name(&seg);
    let bytes = std::fs::read(&seg).unwrap();
    let recs = records(&bytes);
    let (ev, cp) = (recs[recs.len() - 2], recs[recs.len() - 1]);
    assert_eq!((ev.kind, cp.kind), (record::EVENT, record::CHECKPOINT));
    assert_eq!(cp.end(), bytes.len() as u64);
    let total = base.total();
    let mut reopen_checked = 0;
    for cut in ev.off..cp.end() {
        let copy = TempDir::copy_of(base.dir.path(), "cut");
        base.crash_before_last(copy.path());
        let path = copy.path().join(&name);
        std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .unwrap()
            .set_len(cut)
            .unwrap();
        let (store, report) = match try_open(copy.path()) {
            Ok(x) => x,
            Err(e) => panic!(
                "cut at {cut} (event record at {}, checkpoint at {}): open failed: {e}",
                ev.off, cp.off
            ),
        };
        // What survives: everything but the final event when the cut is inside its record.
        let keeps_last = cut >= cp.off;
        let size = if keeps_last { total } else { total - 1 };
        let boundary = if keeps_last { cp.off } else { ev.off };
        if cut == boundary {
            assert_eq!(
                report.truncated, None,
                "a cut at a record boundary leaves no torn record"
            );
        } else {
            assert_eq!(
                report.truncated,
                Some((name.clone(), boundary, cut - boundary)),
                "cut at {cut}"
            );
        }
        assert_eq!(report.events, size, "cut at {cut}");
        assert_eq!(
            report.signed_at_open,
            Some(size),
            "the lost checkpoint is replaced at open"
        );
        assert_eq!(store.tree_size(), size);
        for (id, seq, payload) in base.all().filter(|(_, s, _)| *s < size) {
            assert_eq!(store.seq_of(id).unwrap(), Some(*seq), "cut at {cut}");
            assert_eq!(
                store.event(*seq).unwrap().payload.as_deref(),
                Some(&payload[..])
            );
        }
        let last = base.groups.last().unwrap().last().unwrap();
        assert_eq!(
            store.seq_of(&last.0).unwrap(),
            if keeps_last { Some(last.1) } else { None }
        );
        let v = match run_verify(&store) {
            Ok(v) => v,
            Err(f) => panic!("cut at {cut}: verify failed: {f}"),
        };
        assert_eq!(v.events, size);
        if keeps_last {
            assert_eq!(v.root, base.root);
        }
        assert_eq!(
            std::fs::metadata(&path).unwrap().len(),
            boundary + store_growth(&store, size),
            "cut at {cut}: the torn bytes are gone and the new checkpoint follows"
        );
        drop(store);
        // Now and then: reopen (nothing more to cut), append, verify again.
        if cut % 23 == 0 || cut == boundary {
            reopen_checked += 1;
            let kept: Vec<_> = base.all().filter(|(_, s, _)| *s < size).collect();
            check_store(copy.path(), &kept, size);
            let (store, _) = open(copy.path());
            let extra = Spec::simple(EventId([0xee; 16]), "x.after_recovery", 999);
            let r = store.append(vec![extra.prepare()]).unwrap();
            assert_eq!(r.events[0].seq, size);
            assert_eq!(run_verify(&store).unwrap().events, size + 1);
        }
    }
    assert!(reopen_checked >= 5);
}

/// Bytes the recovered store added at open: the checkpoint record it signed.
fn store_growth(store: &mlaudit_embedded::EmbeddedStore, size: u64) -> u64 {
    let note = store.checkpoint(size).unwrap().unwrap();
    (record::HEADER_LEN + note.len() + record::TRAILER_LEN) as u64
}

#[test]
fn every_cut_of_the_last_records_after_a_crash_is_recovered() {
    // The realistic crash: the derived watermark is the one from before the last group (the
    // watermark is only advanced at open, at close and every 2^20 events).
    let base = build_base("cut-crash");
    cut_every_offset(&base);
}

#[test]
fn every_cut_below_a_clean_watermark_is_refused_as_corruption() {
    // After a clean close the watermark records every group as durable (acknowledged), so a
    // segment cut anywhere inside the last records is not a torn tail but lost acknowledged
    // events: open must refuse, name the segment and where it now ends, and change nothing.
    let base = build_base("cut-closed");
    let seg = only_segment(base.dir.path());
    let name = file_name(&seg);
    let bytes = std::fs::read(&seg).unwrap();
    let recs = records(&bytes);
    let ev = recs[recs.len() - 2];
    for cut in ev.off..bytes.len() as u64 {
        let copy = TempDir::copy_of(base.dir.path(), "cut-closed");
        let path = copy.path().join(&name);
        std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .unwrap()
            .set_len(cut)
            .unwrap();
        let meta = std::fs::read(copy.path().join("derived.meta")).unwrap();
        match try_open(copy.path()) {
            Err(OpenError::Corrupt {
                file,
                offset,
                problem,
            }) => {
                assert_eq!(
                    (file.as_str(), offset),
                    (name.as_str(), cut),
                    "cut at {cut}: {problem}"
                );
                assert!(problem.contains("derived.meta"), "{problem}");
            }
            Err(e) => panic!("cut at {cut}: refused, but not as corruption: {e}"),
            Ok((store, report)) => panic!(
                "cut at {cut}: opened with {} events ({report:?})",
                store.tree_size()
            ),
        }
        assert_eq!(
            std::fs::read(&path).unwrap(),
            bytes[..cut as usize],
            "cut at {cut}: a refused open changed the segment"
        );
        assert_eq!(
            std::fs::read(copy.path().join("derived.meta")).unwrap(),
            meta,
            "cut at {cut}: a refused open changed the watermark"
        );
    }
}

#[test]
fn a_zero_filled_tail_is_truncated() {
    let base = build_base("zeros");
    let seg = only_segment(base.dir.path());
    let name = file_name(&seg);
    let len = std::fs::metadata(&seg).unwrap().len();
    for zeros in [1u64, 5, 12, 13, 14, 100, 4096, 70_000] {
        for crash_meta in [false, true] {
            let copy = TempDir::copy_of(base.dir.path(), "zeros");
            if crash_meta {
                std::fs::write(copy.path().join("derived.meta"), &base.meta_before_last).unwrap();
            }
            let path = copy.path().join(&name);
            std::fs::OpenOptions::new()
                .write(true)
                .open(&path)
                .unwrap()
                .set_len(len + zeros)
                .unwrap();
            let (store, report) = open(copy.path());
            assert_eq!(
                report.truncated,
                Some((name.clone(), len, zeros)),
                "{zeros} zeros (crash meta: {crash_meta})"
            );
            assert_eq!(report.signed_at_open, None, "the last checkpoint survived");
            assert_eq!(std::fs::metadata(&path).unwrap().len(), len);
            assert_eq!(run_verify(&store).unwrap().root, base.root);
            drop(store);
            let all: Vec<_> = base.all().collect();
            check_store(copy.path(), &all, base.total());
        }
    }
}

#[test]

fn a_last_record_zeroed_through_the_end_is_a_torn_tail() {
    // A crash on a file system that extends the size before the data is written (XFS,
    // ext4 data=writeback) leaves the tail of the unsynced group as zeros, at page granularity.
    let base = build_base("zero-body");
    let seg = only_segment(base.dir.path());
    let name = file_name(&seg);
    let bytes = std::fs::read(&seg).unwrap();
    let recs = records(&bytes);
    let (ev, cp) = (recs[recs.len() - 2], recs[recs.len() - 1]);
    for from in [
        ev.off + record::HEADER_LEN as u64,
        ev.off + 40,
        cp.off + record::HEADER_LEN as u64 + 3,
    ] {
        let copy = TempDir::copy_of(base.dir.path(), "zero-body");
        base.crash_before_last(copy.path());
        let mut b = bytes.clone();
        b[from as usize..].fill(0);
        std::fs::write(copy.path().join(&name), &b).unwrap();
        let (store, report) = match try_open(copy.path()) {
            Ok(x) => x,
            Err(e) => panic!(
                "zeros from {from} (event at {}, checkpoint at {}): {e}",
                ev.off, cp.off
            ),
        };
        let boundary = if from >= cp.off { cp.off } else { ev.off };
        assert_eq!(
            report.truncated,
            Some((name.clone(), boundary, bytes.len() as u64 - boundary))
        );
        run_verify(&store).unwrap();
    }
}

// ---------------------------------------------------------------------------------------------
// Derived files
// ---------------------------------------------------------------------------------------------

/// What the store answers: root, checkpoint sizes, a few queries, `seq_of` of every id.
type Answers = (Hash, Vec<u64>, Vec<Vec<u64>>, Vec<Option<u64>>);

/// Snapshot of what the store answers, to compare before and after a rebuild.
fn answers(dir: &Path, base: &Base) -> Answers {
    let (store, _) = open(dir);
    let root = run_verify(&store).unwrap().root;
    let queries = [
        Query {
            limit: usize::MAX,
            ..Query::default()
        },
        Query {
            kind: Some(KINDS[1].into()),
            limit: usize::MAX,
            ..Query::default()
        },
        Query {
            actor: Some("actor-1".into()),
            limit: usize::MAX,
            ..Query::default()
        },
        Query {
            model: Some("model-2".into()),
            limit: usize::MAX,
            ..Query::default()
        },
        Query {
            since_ns: Some(1_767_225_600_000_000_000 + 5_000_000_000),
            limit: 4,
            ..Query::default()
        },
    ];
    let q = queries.iter().map(|q| store.query(q).unwrap()).collect();
    let ids = base
        .all()
        .map(|(id, _, _)| store.seq_of(id).unwrap())
        .collect();
    (root, store.checkpoint_sizes().unwrap(), q, ids)
}

fn damage_and_reopen(
    base: &Base,
    what: &str,
    damage: impl Fn(&Path),
) -> mlaudit_embedded::OpenReport {
    let want = answers(base.dir.path(), base);
    let copy = TempDir::copy_of(base.dir.path(), "derived");
    damage(copy.path());
    let report = match try_open(copy.path()) {
        Ok((_, report)) => report,
        Err(e) => panic!("{what}: open failed: {e}"),
    };
    assert_eq!(report.events, base.total(), "{what}");
    assert_eq!(report.truncated, None, "{what}");
    assert_eq!(report.signed_at_open, None, "{what}");
    let got = answers(copy.path(), base);
    assert_eq!(got, want, "{what}: answers after the rebuild differ");
    assert_eq!(got.0, base.root);
    report
}

fn shorten(path: &Path, by: u64) {
    let len = std::fs::metadata(path).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .unwrap()
        .set_len(len.saturating_sub(by))
        .unwrap();
}

#[test]
fn missing_or_damaged_watermark_replays_everything() {
    let base = build_base("meta");
    let r = damage_and_reopen(&base, "derived.meta deleted", |d| {
        std::fs::remove_file(d.join("derived.meta")).unwrap()
    });
    assert_eq!(r.replayed, base.total());
    let r = damage_and_reopen(&base, "derived.meta garbled", |d| {
        common::flip(&d.join("derived.meta"), 20, 0x01)
    });
    assert_eq!(r.replayed, base.total());
    let r = damage_and_reopen(&base, "derived.meta truncated", |d| {
        shorten(&d.join("derived.meta"), 3)
    });
    assert_eq!(r.replayed, base.total());
    // Every derived file gone: the segments alone rebuild everything.
    let r = damage_and_reopen(&base, "all derived files deleted", |d| {
        for ent in std::fs::read_dir(d).unwrap() {
            let p = ent.unwrap().path();
            if !file_name(&p).starts_with("seg-") {
                std::fs::remove_file(p).unwrap();
            }
        }
    });
    assert_eq!(r.replayed, base.total());
}

#[test]
fn shortened_derived_files_are_rebuilt() {
    let base = build_base("short");
    for file in [
        "index.bin",
        "offsets.bin",
        "tree-00.hash",
        "tree-01.hash",
        "tree-02.hash",
        "checkpoints.bin",
        "terms.bin",
    ] {
        for by in [1u64, 8, 1000] {
            let r = damage_and_reopen(&base, &format!("{file} shortened by {by}"), |d| {
                shorten(&d.join(file), by)
            });
            assert!(
                r.rebuilt.is_some(),
                "{file} shortened by {by}: expected a rebuild, got {r:?}"
            );
            assert_eq!(r.replayed, base.total());
        }
    }
}

/// Deletes one tree level file of a copy, reopens (which must rebuild), appends another batch
/// and verifies, in the same session and after a reopen.
fn delete_tree_level_then_append(base: &Base, level: u32) {
    let copy = TempDir::copy_of(base.dir.path(), "del-tree");
    std::fs::remove_file(copy.path().join(format!("tree-{level:02}.hash"))).unwrap();
    let (store, report) = open(copy.path());
    assert!(
        report.rebuilt.is_some(),
        "tree-{level:02}.hash deleted: {report:?}"
    );
    assert_eq!(run_verify(&store).unwrap().root, base.root);
    let specs: Vec<Spec> = (0..9u8)
        .map(|i| Spec::simple(EventId([0xd0 + i; 16]), "x.more", 500 + u64::from(i)))
        .collect();
    store
        .append(specs.iter().map(Spec::prepare).collect())
        .unwrap();
    if let Err(f) = run_verify(&store) {
        panic!("tree-{level:02}.hash deleted, rebuilt, 9 events appended: {f}");
    }
    drop(store);
    let (store, _) = open(copy.path());
    if let Err(f) = run_verify(&store) {
        panic!("tree-{level:02}.hash deleted, rebuilt, appended, reopened: {f}");
    }
}

#[test]
fn deleted_top_tree_level_is_rebuilt() {
    let base = build_base("del-top");
    let top = (0..64)
        .take_while(|l| base.dir.path().join(format!("tree-{l:02}.hash")).exists())
        .last()
        .unwrap();
    let r = damage_and_reopen(&base, "top tree level deleted", |d| {
        std::fs::remove_file(d.join(format!("tree-{top:02}.hash"))).unwrap()
    });
    assert!(r.rebuilt.is_some());
    delete_tree_level_then_append(&base, top);
}

#[test]

fn deleted_lower_tree_level_is_rebuilt() {
    let base = build_base("del-tree");
    for level in [0, 1] {
        delete_tree_level_then_append(&base, level);
    }
}

#[test]
fn derived_files_beyond_the_watermark_are_replaced() {
    // Garbage appended to every derived file past the watermark (a crash while the syncer was
    // writing them) is cut at open and never read.
    let base = build_base("beyond");
    damage_and_reopen(&base, "garbage past the watermark", |d| {
        for ent in std::fs::read_dir(d).unwrap() {
            let p = ent.unwrap().path();
            let n = file_name(&p);
            if n.ends_with(".bin") || n.ends_with(".hash") {
                let mut b = std::fs::read(&p).unwrap();
                b.extend_from_slice(&[0xa5; 77]);
                std::fs::write(&p, b).unwrap();
            }
        }
    });
    // And a crash-time watermark with the derived files already extended by the last group:
    // the group is replayed from the segment.
    let r = damage_and_reopen(&base, "stale watermark", |d| {
        std::fs::write(d.join("derived.meta"), &base.meta_before_last).unwrap()
    });
    assert_eq!(r.replayed, *GROUPS.last().unwrap() as u64);
    assert_eq!(r.rebuilt, None);
}

#[test]
fn garbled_derived_files_that_fail_their_checks_are_rebuilt() {
    // Damage inside the watermark that the load's own checks notice: the files are rebuilt from
    // the segments. (Damage they cannot notice is in tamper.rs: verify must catch it.)
    let base = build_base("garble");
    let rec_len = mlaudit_embedded::index::INDEX_RECORD_LEN as u64;
    let r = damage_and_reopen(&base, "index.bin names an unknown term", |d| {
        // The kind term slot of seq 2 (after 16 id bytes and 8 time bytes).
        let p = d.join("index.bin");
        let mut b = std::fs::read(&p).unwrap();
        let at = (2 * rec_len + 24) as usize;
        b[at..at + 4].copy_from_slice(&u32::MAX.to_be_bytes());
        std::fs::write(&p, b).unwrap();
    });
    assert!(r.rebuilt.is_some(), "{r:?}");
    let r = damage_and_reopen(&base, "terms.bin has an unknown tag", |d| {
        let p = d.join("terms.bin");
        let mut b = std::fs::read(&p).unwrap();
        b[0] = 0xff;
        std::fs::write(&p, b).unwrap();
    });
    assert!(r.rebuilt.is_some(), "{r:?}");
    let r = damage_and_reopen(&base, "terms.bin has a wrong length", |d| {
        let p = d.join("terms.bin");
        let mut b = std::fs::read(&p).unwrap();
        b[2] = b[2].wrapping_add(200);
        std::fs::write(&p, b).unwrap();
    });
    assert!(r.rebuilt.is_some(), "{r:?}");
}

/// A log cut at a record boundary, after its last group was acknowledged (so its guard says
/// so), with the watermark of before that group (so `derived.meta` cannot tell): opening
/// refuses, naming what is missing, instead of signing the shorter tree; deleting the guard is
/// the operator's way to open a copy restored on purpose, and opening then says the check was
/// skipped.
#[test]
fn a_log_shorter_than_its_last_durable_checkpoint_is_refused() {
    let base = build_base("rollback");
    let seg = only_segment(base.dir.path());
    let name = file_name(&seg);
    let bytes = std::fs::read(&seg).unwrap();
    let recs = records(&bytes);
    // Cut just after the checkpoint that precedes the last group.
    let last_group = *GROUPS.last().unwrap();
    let cut = recs[recs.len() - 2 - last_group].end();
    let copy = TempDir::copy_of(base.dir.path(), "rollback");
    std::fs::write(copy.path().join("derived.meta"), &base.meta_before_last).unwrap();
    let path = copy.path().join(&name);
    std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(cut)
        .unwrap();
    let total = base.total();
    match try_open(copy.path()) {
        Err(OpenError::Rollback(why)) => {
            let want = format!(
                "the log holds {} events, but it made a checkpoint of {total} events durable",
                total - last_group as u64
            );
            assert!(why.contains(&want), "{why}");
        }
        other => panic!("a rolled-back log opened: {:?}", other.map(|(_, r)| r)),
    }
    assert_eq!(
        std::fs::metadata(&path).unwrap().len(),
        cut,
        "a refused open changes nothing"
    );
    std::fs::remove_file(copy.path().join("latest-checkpoint")).unwrap();
    let (store, report) = open(copy.path());
    assert_eq!(store.tree_size(), total - last_group as u64);
    assert!(
        report
            .warnings
            .iter()
            .any(|w| w.contains("latest-checkpoint is missing")),
        "{report:?}"
    );
}

/// The same size, another tree: a log whose last group was rewritten (and re-signed with the
/// key) is refused too.
#[test]
fn a_rewritten_log_is_refused_against_its_last_durable_checkpoint() {
    let base = build_base("rewrite");
    let other = build_base("rewrite-other");
    let copy = TempDir::copy_of(base.dir.path(), "rewrite");
    std::fs::copy(
        other.dir.path().join("latest-checkpoint"),
        copy.path().join("latest-checkpoint"),
    )
    .unwrap();
    // Same events, same sizes, but other receipt times: another root at the same size.
    assert_ne!(base.root, other.root);
    match try_open(copy.path()) {
        Err(OpenError::Rollback(why)) => assert!(why.contains("was rewritten"), "{why}"),
        other => panic!("a rewritten log opened: {:?}", other.map(|(_, r)| r)),
    }
}

/// A missing `derived.meta` in a log that holds events is reported, not silently rebuilt.
#[test]
fn a_missing_or_damaged_watermark_is_reported() {
    let base = build_base("no-meta");
    for (what, damage) in [("missing", None), ("damaged", Some(b"garbage".to_vec()))] {
        let copy = TempDir::copy_of(base.dir.path(), "no-meta");
        match damage {
            None => std::fs::remove_file(copy.path().join("derived.meta")).unwrap(),
            Some(bytes) => std::fs::write(copy.path().join("derived.meta"), bytes).unwrap(),
        }
        let (store, report) = open(copy.path());
        assert_eq!(store.tree_size(), base.total());
        let want = format!("derived.meta is {what}");
        assert!(
            report.warnings.iter().any(|w| w.contains(&want)),
            "{what}: {report:?}"
        );
    }
}
