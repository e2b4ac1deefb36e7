//! Tampering with a closed store: single byte flips in each kind of stored bytes, whole records
//! removed, duplicated or swapped, and records re-framed with valid CRCs so that only the Merkle
//! layer can notice. Each must be caught either by `EmbeddedStore::open` (`OpenError::Corrupt`
//! naming the segment and the record's offset) or by `verify` (naming the first bad seq).
//!
//! Each case is run twice: on a copy as closed (derived files trusted up to the watermark, so
//! open does not re-read old records and `verify` must catch it) and on a copy without
//! `derived.meta` (open replays every record).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{
    file_name, flip, only_segment, open, records, reframe, run_verify, try_open, Rec, Spec,
    TempDir, KINDS,
};
use mlaudit_core::entry::{self, EventId};
use mlaudit_embedded::{record, OpenError};
use mlaudit_store::prelude::*;
use std::path::Path;

/// Batch sizes: several groups, so checkpoints sit between events.
const GROUPS: &[usize] = &[3, 5, 1, 4, 2];

struct Base {
    dir: TempDir,
    seg_name: String,
    bytes: Vec<u8>,
    /// Event records by seq.
    events: Vec<Rec>,
    /// (tree size, record) of every checkpoint, in log order (the first is the empty tree's).
    checkpoints: Vec<(u64, Rec)>,
    ids: Vec<EventId>,
}

impl Base {
    fn total(&self) -> u64 {
        self.events.len() as u64
    }
    /// The first seq of the group that ends with the checkpoint of size `size`.
    fn group_start(&self, size: u64) -> u64 {
        self.checkpoints
            .iter()
            .map(|(s, _)| *s)
            .filter(|s| *s < size)
            .max()
            .unwrap_or(0)
    }
    /// The checkpoint that closes the group holding `seq`.
    fn checkpoint_after(&self, seq: u64) -> (u64, Rec) {
        *self.checkpoints.iter().find(|(s, _)| *s > seq).unwrap()
    }
}

fn build_base(tag: &str) -> Base {
    let dir = TempDir::new(tag);
    let (store, _) = open(dir.path());
    let mut n = 0u64;
    let mut ids = Vec::new();
    for &size in GROUPS {
        let specs: Vec<Spec> = (0..size)
            .map(|_| {
                n += 1;
                Spec::simple(EventId([n as u8; 16]), KINDS[n as usize % KINDS.len()], n)
            })
            .collect();
        let r = store
            .append(specs.iter().map(Spec::prepare).collect())
            .unwrap();
        ids.extend(r.events.iter().map(|a| a.id));
    }
    run_verify(&store).unwrap();
    drop(store);
    let seg = only_segment(dir.path());
    let bytes = std::fs::read(&seg).unwrap();
    let mut events = Vec::new();
    let mut checkpoints = Vec::new();
    for rec in records(&bytes) {
        if rec.kind == record::EVENT {
            events.push(rec);
        } else {
            checkpoints.push((events.len() as u64, rec));
        }
    }
    assert_eq!(checkpoints.len(), GROUPS.len() + 1);
    Base {
        dir,
        seg_name: file_name(&seg),
        bytes,
        events,
        checkpoints,
        ids,
    }
}

/// How damage was caught.
#[derive(Debug)]
enum Caught {
    Open {
        file: String,
        offset: u64,
        problem: String,
    },
    OpenOther(String),
    Verify {
        seq: Option<u64>,
        location: String,
        problem: String,
    },
    Not,
}

fn outcome(dir: &Path) -> Caught {
    match try_open(dir) {
        Err(OpenError::Corrupt {
            file,
            offset,
            problem,
        }) => Caught::Open {
            file,
            offset,
            problem,
        },
        Err(e) => Caught::OpenOther(e.to_string()),
        Ok((store, _)) => match run_verify(&store) {
            Err(f) => Caught::Verify {
                seq: f.seq,
                location: f.location,
                problem: f.problem,
            },
            Ok(_) => Caught::Not,
        },
    }
}

/// A copy of the base with the segment replaced by `seg` and, if `replay`, without the
/// watermark (so that open re-reads every record).
fn damaged_copy(base: &Base, seg: &[u8], replay: bool) -> TempDir {
    let copy = TempDir::copy_of(base.dir.path(), "tamper");
    std::fs::write(copy.path().join(&base.seg_name), seg).unwrap();
    if replay {
        std::fs::remove_file(copy.path().join("derived.meta")).unwrap();
    }
    copy
}

/// The damage at record `rec` (holding event `seq`, if any) must be caught: as closed, by verify
/// at `seq` (or, for a checkpoint record, at `verify_seq`), or by open at the record; on replay,
/// by open naming the segment and the record's offset.
fn assert_caught_at_record(base: &Base, seg: &[u8], rec: Rec, verify_seq: u64, what: &str) {
    let closed = damaged_copy(base, seg, false);
    match outcome(closed.path()) {
        Caught::Verify {
            seq,
            location,
            problem,
        } => {
            assert_eq!(
                seq,
                Some(verify_seq),
                "{what}: verify names the wrong seq ({problem} at {location})"
            );
        }
        Caught::Open { file, offset, .. } => {
            assert_eq!(
                (file.as_str(), offset),
                (base.seg_name.as_str(), rec.off),
                "{what}"
            );
        }
        other => panic!("{what}: not caught as closed: {other:?}"),
    }
    let replay = damaged_copy(base, seg, true);
    match outcome(replay.path()) {
        Caught::Open { file, offset, .. } => assert_eq!(
            (file.as_str(), offset),
            (base.seg_name.as_str(), rec.off),
            "{what} (replay)"
        ),
        other => panic!("{what}: replay did not refuse to open at the record: {other:?}"),
    }
}

#[test]
fn a_flipped_byte_in_an_entry_is_caught_at_its_seq() {
    let base = build_base("entry");
    for seq in [0u64, 4, 8, 11, base.total() - 1] {
        let rec = base.events[seq as usize];
        for at in [0usize, 5, 30, 90] {
            let mut seg = base.bytes.clone();
            seg[rec.a().start + at] ^= 0x04;
            assert_caught_at_record(
                &base,
                &seg,
                rec,
                seq,
                &format!("entry byte {at} of seq {seq}"),
            );
        }
    }
}

#[test]
fn a_flipped_byte_in_a_payload_is_caught_at_its_seq() {
    let base = build_base("payload");
    for seq in [0u64, 3, 9, base.total() - 1] {
        let rec = base.events[seq as usize];
        for at in [0usize, rec.len_b as usize / 2, rec.len_b as usize - 1] {
            let mut seg = base.bytes.clone();
            seg[rec.b().start + at] ^= 0x10;
            assert_caught_at_record(
                &base,
                &seg,
                rec,
                seq,
                &format!("payload byte {at} of seq {seq}"),
            );
        }
    }
}

#[test]
fn a_flipped_byte_in_a_record_length_is_caught() {
    let base = build_base("length");
    for seq in [0u64, 6, base.total() - 1] {
        let rec = base.events[seq as usize];
        for at in [1usize, 4, 6, 8] {
            let mut seg = base.bytes.clone();
            seg[rec.off as usize + at] ^= 0x01;
            assert_caught_at_record(
                &base,
                &seg,
                rec,
                seq,
                &format!("length byte {at} of seq {seq}"),
            );
        }
    }
    // The length of a checkpoint record: verify reads that checkpoint when it reaches its size
    // and blames the group the checkpoint covers.
    for &(size, rec) in &base.checkpoints[1..] {
        let mut seg = base.bytes.clone();
        seg[rec.off as usize + 3] ^= 0x01;
        assert_caught_at_record(
            &base,
            &seg,
            rec,
            base.group_start(size),
            &format!("length of checkpoint {size}"),
        );
    }
}

#[test]
fn a_flipped_byte_in_a_checkpoint_note_is_caught() {
    let base = build_base("note");
    for &(size, rec) in &base.checkpoints[1..] {
        for at in [0usize, rec.len_a as usize / 2, rec.len_a as usize - 2] {
            let mut seg = base.bytes.clone();
            seg[rec.a().start + at] ^= 0x02;
            assert_caught_at_record(
                &base,
                &seg,
                rec,
                base.group_start(size),
                &format!("note byte {at} of checkpoint {size}"),
            );
        }
    }
}

#[test]

fn a_flipped_byte_in_the_empty_tree_checkpoint_is_caught() {
    let base = build_base("note0");
    let (size, rec) = base.checkpoints[0];
    assert_eq!(size, 0);
    let mut seg = base.bytes.clone();
    seg[rec.a().start + 5] ^= 0x02;
    let copy = damaged_copy(&base, &seg, false);
    let (store, _) = open(copy.path());
    assert!(store.checkpoint(0).is_err(), "the stored record is damaged");
    assert!(
        run_verify(&store).is_err(),
        "verify passes although a listed checkpoint is unreadable"
    );
}

// ---------------------------------------------------------------------------------------------
// Derived files
// ---------------------------------------------------------------------------------------------

#[test]
fn a_flipped_byte_in_a_tree_level_is_caught_in_its_leaf_range() {
    let base = build_base("tree");
    let total = base.total();
    for level in 0u32..4 {
        let count = total >> level;
        for index in [0, count / 2, count - 1] {
            let copy = TempDir::copy_of(base.dir.path(), "tree");
            flip(
                &copy.path().join(format!("tree-{level:02}.hash")),
                index * 32 + 7,
                0x80,
            );
            match outcome(copy.path()) {
                Caught::Verify { seq, problem, .. } => {
                    assert_eq!(
                        seq,
                        Some(index << level),
                        "level {level} index {index}: {problem}"
                    );
                    assert!(
                        problem.contains(&format!("level {level}, index {index}")),
                        "{problem}"
                    );
                }
                other => panic!("tree-{level:02}.hash node {index}: {other:?}"),
            }
        }
    }
}

/// Flips a byte of event `seq`'s position in `offsets.bin` of a closed copy.
fn flip_offset(base: &Base, seq: u64, byte: u64, mask: u8) -> Caught {
    let copy = TempDir::copy_of(base.dir.path(), "offsets");
    flip(&copy.path().join("offsets.bin"), seq * 8 + byte, mask);
    outcome(copy.path())
}

#[test]
fn a_flipped_byte_in_the_first_offset_is_caught() {
    let base = build_base("offsets0");
    for (byte, mask) in [(7u64, 0x01u8), (7, 0x40), (6, 0x01), (2, 0x10)] {
        match flip_offset(&base, 0, byte, mask) {
            Caught::Verify { seq, .. } => assert_eq!(seq, Some(0), "byte {byte} mask {mask:#x}"),
            Caught::Open { .. } => {}
            other => panic!("offsets.bin byte {byte} of seq 0: {other:?}"),
        }
    }
}

#[test]

fn a_flipped_byte_in_a_later_offset_is_caught() {
    let base = build_base("offsets");
    for seq in [1u64, 7, base.total() - 1] {
        // Point seq at its neighbour's record, which is a perfectly valid event record.
        let copy = TempDir::copy_of(base.dir.path(), "offsets");
        let path = copy.path().join("offsets.bin");
        let mut b = std::fs::read(&path).unwrap();
        let other = base.events[(seq - 1) as usize].off;
        b[seq as usize * 8..seq as usize * 8 + 8].copy_from_slice(&other.to_be_bytes());
        std::fs::write(&path, b).unwrap();
        {
            let (store, _) = open(copy.path());
            let served = store.event(seq);
            assert!(
                matches!(served, Err(mlaudit_store::StoreError::Corrupt { .. })),
                "event({seq}) must refuse to serve another event's record: {served:?}"
            );
        }
        match outcome(copy.path()) {
            Caught::Verify { seq: s, .. } => assert_eq!(s, Some(seq)),
            Caught::Open { .. } => {}
            other => panic!("offsets.bin entry of seq {seq} redirected: {other:?}"),
        }
        // And a plain flip.
        match flip_offset(&base, seq, 7, 0x01) {
            Caught::Verify { seq: s, .. } => assert_eq!(s, Some(seq)),
            Caught::Open { .. } => {}
            other => panic!("offsets.bin byte of seq {seq}: {other:?}"),
        }
    }
}

#[test]

fn a_flipped_byte_in_an_index_id_is_caught() {
    // Regression: index.bin had no checksum, so a flipped id byte made `seq_of` miss the event
    // and a retry was stored twice. Each index record now carries a CRC-32C; a damaged record
    // is noticed at open, which rebuilds the derived files from the segments.
    let base = build_base("index");
    let seq = 5u64;
    let copy = TempDir::copy_of(base.dir.path(), "index");
    flip(
        &copy.path().join("index.bin"),
        seq * mlaudit_embedded::index::INDEX_RECORD_LEN as u64 + 3,
        0x01,
    );
    let (store, report) = open(copy.path());
    let why = report.rebuilt.clone().unwrap_or_default();
    assert!(
        why.contains("index.bin record 5 is damaged"),
        "open must notice the damaged record: {report:?}"
    );
    let id = base.ids[seq as usize];
    assert_eq!(store.seq_of(&id).unwrap(), Some(seq));
    // The event `build_base` wrote at this seq, sent again.
    let n = seq + 1;
    let retry = Spec::simple(id, KINDS[n as usize % KINDS.len()], n).prepare();
    let r = store.append(vec![retry]).unwrap();
    assert!(
        r.events[0].duplicate,
        "event {id} is now stored twice: seqs {seq} and {}",
        r.events[0].seq
    );
    assert_eq!(r.events[0].seq, seq);
    // Other content under the same id is found as well, and refused.
    let other = Spec::simple(id, "x.retry", 77).prepare();
    assert!(matches!(
        store.append(vec![other]),
        Err(mlaudit_store::StoreError::Conflict { index: 0, id: got }) if got == id
    ));
    assert!(run_verify(&store).is_ok());
}

/// Rewrites index.bin record `seq` with `id` and a valid CRC, as a bug in the writer (not a
/// flipped bit) would: open accepts it, so `verify` must notice.
fn rewrite_index_id(dir: &Path, seq: u64, id: &mlaudit_core::EventId) {
    let len = mlaudit_embedded::index::INDEX_RECORD_LEN;
    let path = dir.join("index.bin");
    let mut bytes = std::fs::read(&path).unwrap();
    let at = seq as usize * len;
    bytes[at..at + 16].copy_from_slice(&id.0);
    let crc = crc32c::crc32c(&bytes[at..at + len - 4]);
    bytes[at + len - 4..at + len].copy_from_slice(&crc.to_be_bytes());
    std::fs::write(&path, bytes).unwrap();
}

#[test]
fn an_id_index_that_disagrees_with_the_entries_fails_verify_at_the_first_bad_seq() {
    let base = build_base("index-id");
    for (seq, id) in [(5u64, mlaudit_core::EventId([0xab; 16])), (7, base.ids[3])] {
        let copy = TempDir::copy_of(base.dir.path(), "index-id");
        rewrite_index_id(copy.path(), seq, &id);
        match outcome(copy.path()) {
            Caught::Verify {
                seq: s, problem, ..
            } => {
                assert!(problem.contains("id index"), "{problem}");
                // A duplicate id maps to one of its two seqs: the first that does not map back.
                let first = if id == base.ids[3] { 3 } else { seq };
                assert_eq!(s, Some(first), "{problem}");
            }
            other => panic!("index id of seq {seq} replaced: {other:?}"),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Whole records removed, duplicated or swapped
// ---------------------------------------------------------------------------------------------

/// For structural damage: caught by open (any refusal) or by verify at `seq`.
fn assert_structure_caught(base: &Base, seg: &[u8], seq: u64, what: &str) {
    for replay in [false, true] {
        let copy = damaged_copy(base, seg, replay);
        match outcome(copy.path()) {
            Caught::Verify {
                seq: s,
                location,
                problem,
            } => {
                assert_eq!(
                    s,
                    Some(seq),
                    "{what} (replay: {replay}): {problem} at {location}"
                );
            }
            Caught::Open { file, .. } => assert_eq!(file, base.seg_name, "{what}"),
            Caught::OpenOther(e) => {
                panic!("{what} (replay: {replay}): open failed, but not as corruption: {e}")
            }
            Caught::Not => panic!("{what} (replay: {replay}): not caught"),
        }
    }
}

fn splice(bytes: &[u8], range: std::ops::Range<usize>, with: &[u8]) -> Vec<u8> {
    let mut out = bytes[..range.start].to_vec();
    out.extend_from_slice(with);
    out.extend_from_slice(&bytes[range.end..]);
    out
}

#[test]
fn a_deleted_event_record_is_caught() {
    let base = build_base("delete");
    for seq in [0u64, 4, 9] {
        let rec = base.events[seq as usize];
        let seg = splice(&base.bytes, rec.range(), &[]);
        assert_structure_caught(&base, &seg, seq, &format!("seq {seq} deleted"));
    }
}

#[test]
fn a_log_shorter_than_its_watermark_is_reported_as_corruption() {
    // As closed, the watermark says how long the log was: a deleted record is refused at open,
    // naming the segment and where it now ends.
    let base = build_base("shorter");
    for seq in [0u64, 4, 9] {
        let rec = base.events[seq as usize];
        let seg = splice(&base.bytes, rec.range(), &[]);
        let copy = damaged_copy(&base, &seg, false);
        match outcome(copy.path()) {
            Caught::Open { file, offset, .. } => {
                assert_eq!((file, offset), (base.seg_name.clone(), seg.len() as u64))
            }
            other => panic!("seq {seq} deleted from a closed store: {other:?}"),
        }
    }
}

#[test]
fn a_duplicated_event_record_is_caught() {
    let base = build_base("dup");
    for seq in [0u64, 4, 9, base.total() - 1] {
        let rec = base.events[seq as usize];
        let copy_of_rec = base.bytes[rec.range()].to_vec();
        let seg = splice(
            &base.bytes,
            rec.end() as usize..rec.end() as usize,
            &copy_of_rec,
        );
        assert_structure_caught(&base, &seg, seq + 1, &format!("seq {seq} duplicated"));
    }
}

#[test]
fn swapped_adjacent_event_records_are_caught() {
    let base = build_base("swap");
    for seq in [0u64, 3, 5, 9] {
        let (a, b) = (base.events[seq as usize], base.events[seq as usize + 1]);
        assert_eq!(a.end(), b.off, "seq {seq} and {} are adjacent", seq + 1);
        let mut swapped = base.bytes[b.range()].to_vec();
        swapped.extend_from_slice(&base.bytes[a.range()]);
        let seg = splice(&base.bytes, a.off as usize..b.end() as usize, &swapped);
        assert_structure_caught(
            &base,
            &seg,
            seq,
            &format!("seqs {seq} and {} swapped", seq + 1),
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Re-framed records: valid CRCs, so only the hashes can tell
// ---------------------------------------------------------------------------------------------

/// Replaces event `seq`'s record by one framed from `entry` and `payload` (same length).
fn reframed(base: &Base, seq: u64, entry: &[u8], payload: &[u8]) -> Vec<u8> {
    let rec = base.events[seq as usize];
    let new = reframe(record::EVENT, entry, payload);
    assert_eq!(
        new.len() as u64,
        rec.total(),
        "same length, so no offset moves"
    );
    splice(&base.bytes, rec.range(), &new)
}

#[test]
fn a_reframed_payload_change_is_caught_by_verify_at_its_seq() {
    let base = build_base("reframe-payload");
    for seq in [0u64, 4, 9, base.total() - 1] {
        let rec = base.events[seq as usize];
        let entry_bytes = &base.bytes[rec.a()];
        let mut payload = base.bytes[rec.b()].to_vec();
        let at = payload.iter().position(|b| b.is_ascii_digit()).unwrap();
        payload[at] = if payload[at] == b'9' {
            b'0'
        } else {
            payload[at] + 1
        };
        let seg = reframed(&base, seq, entry_bytes, &payload);
        for replay in [false, true] {
            let copy = damaged_copy(&base, &seg, replay);
            let (store, _) = match try_open(copy.path()) {
                Ok(x) => x,
                Err(e) => panic!("payload of seq {seq} (replay {replay}): the framing is valid, open must succeed: {e}"),
            };
            let f = run_verify(&store).unwrap_err();
            assert_eq!(
                f.seq,
                Some(seq),
                "payload of seq {seq} (replay {replay}): {f}"
            );
            assert!(f.problem.contains("SHA-256"), "{f}");
            assert!(
                f.location
                    .ends_with(&format!("{}:{}", base.seg_name, rec.off)),
                "{f}"
            );
        }
    }
}

#[test]
fn a_reframed_entry_change_is_caught_by_the_merkle_layer() {
    let base = build_base("reframe-entry");
    for seq in [0u64, 3, 8, 11] {
        let rec = base.events[seq as usize];
        let mut e = entry::decode(&base.bytes[rec.a()]).unwrap();
        // Same length, still a valid entry: only its leaf hash changes.
        let last = e.kind.pop().unwrap();
        e.kind.push(if last == 'z' { 'y' } else { 'z' });
        let new_entry = entry::encode(&e).unwrap();
        assert_eq!(new_entry.len() as u64, rec.len_a);
        let seg = reframed(&base, seq, &new_entry, &base.bytes[rec.b()]);
        let (size, cp) = base.checkpoint_after(seq);
        let first = base.group_start(size);
        // As closed: verify recomputes the root when it reaches the group's checkpoint.
        let copy = damaged_copy(&base, &seg, false);
        let (store, _) = open(copy.path());
        let f = run_verify(&store).unwrap_err();
        let s = f.seq.unwrap();
        assert!(
            s <= seq && seq < size && s >= first,
            "entry of seq {seq}: verify names {s}, outside group {first}..{size}: {f}"
        );
        if seq == first {
            assert_eq!(s, seq);
        }
        assert!(
            f.problem.contains("root") || f.problem.contains("tree node"),
            "{f}"
        );
        drop(store);
        // Without the watermark: the replay recomputes the root and the group's checkpoint does
        // not sign it.
        let copy = damaged_copy(&base, &seg, true);
        match outcome(copy.path()) {
            Caught::Open {
                file,
                offset,
                problem,
            } => {
                assert_eq!(
                    (file.as_str(), offset),
                    (base.seg_name.as_str(), cp.off),
                    "entry of seq {seq}: {problem}"
                );
            }
            other => panic!("entry of seq {seq} (replay): {other:?}"),
        }
        // Also with the stored leaf kept stale but the checkpoints out of the way: the stored
        // level-0 node is compared with the recomputed leaf.
        let copy = damaged_copy(&base, &seg, false);
        let (store, _) = open(copy.path());
        let stored = store.node(0, seq).unwrap();
        assert_ne!(
            stored,
            mlaudit_core::merkle::leaf_hash(&new_entry),
            "the stored leaf is the original one"
        );
    }
}

#[test]
fn a_reframed_entry_with_a_wrong_seq_is_caught() {
    let base = build_base("reframe-seq");
    let seq = 6u64;
    let rec = base.events[seq as usize];
    let mut e = entry::decode(&base.bytes[rec.a()]).unwrap();
    e.seq += 1;
    let seg = reframed(
        &base,
        seq,
        &entry::encode(&e).unwrap(),
        &base.bytes[rec.b()],
    );
    assert_structure_caught(&base, &seg, seq, "entry seq rewritten");
}
