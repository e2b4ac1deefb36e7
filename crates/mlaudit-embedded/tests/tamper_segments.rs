//! Tampering with a log spread over many segments: a segment removed, cut short, swapped with
//! another, or with a byte flipped in the middle of the log. Each must be caught, by open
//! (naming a segment) or by `verify` (naming the first bad seq), both with the derived files
//! trusted up to the watermark and without `derived.meta` (open replays every record).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{
    file_name, flip, records, run_verify, segments, signer, try_open, Spec, TempDir, KINDS,
};
use mlaudit_core::entry::EventId;
use mlaudit_embedded::{record, EmbeddedStore, OpenError, Options};
use mlaudit_store::prelude::*;
use std::path::{Path, PathBuf};

const GROUPS: usize = 12;
const PER_GROUP: usize = 5;

/// A closed store of twelve groups, each in a segment of its own (the target is 1 KiB; the
/// first segment also holds the empty tree's checkpoint). Every event
/// has the same kind and a payload of the same length, so that the segments of groups 1 to 11
/// are of equal length.
fn build(tag: &str) -> (TempDir, Vec<PathBuf>) {
    let dir = TempDir::new(tag);
    let (store, _) = EmbeddedStore::open_with(
        dir.path(),
        Some(signer()),
        Options {
            segment_target: 1024,
            run_events: 40,
            // Raw segments, whose records these tests rearrange (packed ones: `packed.rs`).
            pack_sealed: false,
            ..Options::default()
        },
    )
    .unwrap();
    let mut n = 100u64;
    for _ in 0..GROUPS {
        let specs: Vec<Spec> = (0..PER_GROUP)
            .map(|_| {
                n += 1;
                Spec::simple(EventId([n as u8; 16]), KINDS[0], n)
            })
            .collect();
        store
            .append(specs.iter().map(Spec::prepare).collect())
            .unwrap();
    }
    run_verify(&store).unwrap();
    store.close().unwrap();
    drop(store);
    let segs = segments(dir.path());
    assert_eq!(segs.len(), GROUPS);
    (dir, segs)
}

/// The seq of the first event in segment `k`.
fn first_seq_of(k: usize) -> u64 {
    (k * PER_GROUP) as u64
}

/// What opening and verifying a copy says: `Ok(None)` intact, `Ok(Some(seq))` verify failed at
/// `seq`, `Err((file, problem))` open refused.
fn outcome(dir: &Path) -> Result<Option<u64>, (String, String)> {
    match try_open(dir) {
        Err(OpenError::Corrupt { file, problem, .. }) => Err((file, problem)),
        Err(e) => Err((String::new(), e.to_string())),
        Ok((store, _)) => Ok(run_verify(&store).err().map(|f| f.seq.unwrap_or(u64::MAX))),
    }
}

/// Applies `damage` to two copies of `base`, one without `derived.meta`, and returns both
/// outcomes (as closed, replayed).
fn damaged(base: &Path, damage: impl Fn(&Path)) -> [Result<Option<u64>, (String, String)>; 2] {
    [false, true].map(|replay| {
        let copy = TempDir::copy_of(base, "tamper-seg");
        if replay {
            std::fs::remove_file(copy.path().join("derived.meta")).unwrap();
        }
        damage(copy.path());
        let out = outcome(copy.path());
        drop(copy);
        out
    })
}

fn in_copy(copy: &Path, seg: &Path) -> PathBuf {
    copy.join(file_name(seg))
}

#[test]
fn a_removed_middle_segment_is_refused_at_open() {
    let (base, segs) = build("seg-removed");
    let victim = &segs[segs.len() / 2];
    let next = file_name(&segs[segs.len() / 2 + 1]);
    for out in damaged(base.path(), |c| {
        std::fs::remove_file(in_copy(c, victim)).unwrap()
    }) {
        let (file, problem) = out.expect_err("a missing segment must not open");
        assert_eq!(file, next, "{problem}");
        assert!(problem.contains("does not start where"), "{problem}");
    }
}

#[test]
fn a_middle_segment_cut_short_is_refused_at_open() {
    let (base, segs) = build("seg-cut");
    let victim = segs[3].clone();
    for out in damaged(base.path(), |c| {
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(in_copy(c, &victim))
            .unwrap();
        let len = f.metadata().unwrap().len();
        f.set_len(len - 7).unwrap();
    }) {
        let (file, problem) = out.expect_err("a shortened segment must not open");
        assert!(file.starts_with("seg-"), "{file}: {problem}");
    }
}

#[test]
fn the_last_segments_removed_are_refused_while_the_watermark_says_they_were_durable() {
    let (base, segs) = build("seg-tail-removed");
    let [closed, _] = damaged(base.path(), |c| {
        for s in &segs[segs.len() - 3..] {
            std::fs::remove_file(in_copy(c, s)).unwrap();
        }
    });
    let (_, problem) = closed.expect_err("a log shorter than its watermark must not open");
    assert!(
        problem.contains("acknowledged events are missing"),
        "{problem}"
    );
}

#[test]
fn two_segments_of_equal_length_swapped_are_caught() {
    let (base, segs) = build("seg-swap");
    // Two segments of groups 1 to 11 of equal length: they still abut after the swap, so only
    // their contents can tell.
    let len = |k: usize| std::fs::metadata(&segs[k]).unwrap().len();
    let (i, j) = (1..GROUPS)
        .flat_map(|i| (i + 1..GROUPS).map(move |j| (i, j)))
        .find(|&(i, j)| len(i) == len(j))
        .expect("two segments of equal length");
    let [closed, replayed] = damaged(base.path(), |c| {
        let (a, b) = (in_copy(c, &segs[i]), in_copy(c, &segs[j]));
        let tmp = c.join("swap.tmp");
        std::fs::rename(&a, &tmp).unwrap();
        std::fs::rename(&b, &a).unwrap();
        std::fs::rename(&tmp, &b).unwrap();
    });
    assert_eq!(
        closed,
        Ok(Some(first_seq_of(i))),
        "as closed, verify names the first event of the first swapped segment"
    );
    let (file, problem) = replayed.expect_err("replay must refuse the swapped segments");
    assert_eq!(file, file_name(&segs[i]), "{problem}");
}

#[test]
fn a_flipped_byte_in_a_middle_segment_is_caught_at_its_seq() {
    let (base, segs) = build("seg-flip");
    let k = segs.len() / 2;
    let bytes = std::fs::read(&segs[k]).unwrap();
    let rec = records(&bytes)
        .into_iter()
        .filter(|r| r.kind == record::EVENT)
        .nth(2)
        .unwrap();
    let seq = first_seq_of(k) + 2;
    let [closed, replayed] = damaged(base.path(), |c| {
        flip(&in_copy(c, &segs[k]), rec.b().start as u64 + 5, 0x20)
    });
    assert_eq!(
        closed,
        Ok(Some(seq)),
        "as closed, verify names the event's seq"
    );
    let (file, problem) = replayed.expect_err("replay must refuse the damaged record");
    assert_eq!(file, file_name(&segs[k]), "{problem}");
}
