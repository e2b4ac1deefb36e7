//! Removing payloads (expiry, erasure): the bytes leave raw and packed segments, every entry,
//! leaf and checkpoint stays (the log verifies, proofs still check), the remover is recorded,
//! a removal survives reopening, and a removal cut short by a crash — a torn patch with its
//! journal left behind — is finished when the store opens, while a torn record without one is
//! reported as damage.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests fail loudly")]

mod common;

use common::{open_with, run_verify, segments, verifier, Spec, TempDir};
use mlaudit_core::EventId;
use mlaudit_embedded::{record, EmbeddedStore, Options};
use mlaudit_store::prelude::*;
use mlaudit_store::Tier;
use std::path::Path;

const EVENTS: u64 = 300;

fn options() -> Options {
    Options {
        segment_target: 8 << 10,
        run_events: 64,
        ..Options::default()
    }
}

fn id(n: u64) -> EventId {
    let mut b = [0x5a; 16];
    b[8..].copy_from_slice(&n.to_be_bytes());
    EventId(b)
}

/// A log of [`EVENTS`] events over many small segments, the sealed ones packed.
fn build(dir: &Path) -> EmbeddedStore {
    build_with(dir, options())
}

fn build_with(dir: &Path, options: Options) -> EmbeddedStore {
    let (store, _) = open_with(dir, options);
    for b in 0..EVENTS / 20 {
        let batch = (b * 20..b * 20 + 20)
            .map(|n| Spec::simple(id(n), "registry.promotion_requested", n).prepare())
            .collect();
        store.append(batch).unwrap();
    }
    store.settle();
    store
}

/// A `governance.payload_erased` event listing the events `ns`.
fn erasure(ns: &[u64]) -> mlaudit_core::event::PreparedEvent {
    let ids: Vec<String> = ns.iter().map(|n| id(*n).to_string()).collect();
    let json = format!(
        r#"{{"kind":"governance.payload_erased","actor":{{"id":"local:dpo","type":"user"}},"attributes":{{"reason":"DSR-1","criteria":{{"actor":"x"}},"events":{ids:?}}}}}"#
    );
    mlaudit_core::event::prepare_reserved(&json, "local:dpo").unwrap()
}

fn payload_marker(store: &EmbeddedStore, seq: u64) -> Vec<u8> {
    store.event(seq).unwrap().payload.expect("payload kept")
}

fn raw_segments_hold(dir: &Path, needle: &[u8]) -> bool {
    segments(dir)
        .iter()
        .filter(|p| p.extension().is_some_and(|e| e == "log"))
        .any(|p| {
            std::fs::read(p)
                .unwrap()
                .windows(needle.len())
                .any(|w| w == needle)
        })
}

/// The raw segment holding log position `pos`, and its start.
fn segment_holding(dir: &Path, pos: u64) -> (std::path::PathBuf, u64) {
    segments(dir)
        .into_iter()
        .map(|p| {
            let name = p.file_name().unwrap().to_str().unwrap().to_owned();
            (p, name[4..24].parse::<u64>().unwrap())
        })
        .rfind(|(_, start)| *start <= pos)
        .filter(|(p, _)| p.extension().is_some_and(|e| e == "log"))
        .expect("a raw segment holds it")
}

/// What a crash in the middle of rewriting the record of `seq` leaves: a journal holding the
/// record `new` makes of its entry and payload length, and the record torn halfway. Returns
/// the segment, the record's offset in it and its header.
fn crash_mid_patch(
    dir: &Path,
    seq: u64,
    new: impl FnOnce(&[u8], u32) -> Vec<u8>,
) -> (std::path::PathBuf, usize, record::Header) {
    let offsets = std::fs::read(dir.join("offsets.bin")).unwrap();
    let pos = u64::from_be_bytes(offsets[seq as usize * 8..][..8].try_into().unwrap());
    let (seg, start) = segment_holding(dir, pos);
    let mut bytes = std::fs::read(&seg).unwrap();
    let at = (pos - start) as usize;
    let h = record::parse_header(bytes[at..at + record::HEADER_LEN].try_into().unwrap()).unwrap();
    let (entry, _) = record::check_record(&h, &bytes[at..at + h.total_len() as usize]).unwrap();
    let new = new(entry, h.len_b);
    let mut journal = b"MLARMJ01".to_vec();
    journal.extend_from_slice(&1u32.to_be_bytes());
    journal.extend_from_slice(&pos.to_be_bytes());
    journal.extend_from_slice(&(new.len() as u32).to_be_bytes());
    journal.extend_from_slice(&new);
    let crc = crc32c::crc32c(&journal);
    journal.extend_from_slice(&crc.to_be_bytes());
    std::fs::write(dir.join("payload-removal.journal"), journal).unwrap();
    bytes[at..at + new.len() / 2].copy_from_slice(&new[..new.len() / 2]);
    std::fs::write(&seg, &bytes).unwrap();
    (seg, at, h)
}

#[test]
fn removed_payloads_are_gone_and_every_proof_still_verifies() {
    let dir = TempDir::new("removal");
    let store = build(dir.path());
    let (first, last) = (3, store.tree_size() - 2); // in a packed segment, in the raw tail
    let last_payload = payload_marker(&store, last);
    assert!(raw_segments_hold(dir.path(), &last_payload));
    let refused = store.remove_payloads(&[first], last + 1).unwrap_err();
    assert!(
        matches!(refused, mlaudit_store::StoreError::Refused(_)),
        "only a removal event may remove payloads: {refused}"
    );
    let remover = store.append(vec![erasure(&[first, last])]).unwrap().events[0].seq;
    let size = store.tree_size();
    let checkpoint_before = mlaudit_store::latest_checkpoint(&store).unwrap();
    assert_eq!(
        store
            .remove_payloads(&[first, last, first], remover)
            .unwrap(),
        2
    );
    assert_eq!(
        store.remove_payloads(&[first], remover).unwrap(),
        0,
        "already removed"
    );
    for seq in [first, last] {
        let ev = store.event(seq).unwrap();
        assert_eq!((ev.payload, ev.removed_by), (None, Some(remover)));
    }
    assert!(!raw_segments_hold(dir.path(), &last_payload));
    assert_eq!(store.event(4).unwrap().removed_by, None);
    assert_eq!(
        mlaudit_store::latest_checkpoint(&store).unwrap(),
        checkpoint_before
    );
    // The leaf is the entry's: an inclusion proof still checks, with no payload.
    let bundle = mlaudit_store::proofs::inclusion_bundle(&store, first).unwrap();
    assert_eq!(bundle.payload, None);
    let removal = bundle
        .payload_erased_by
        .as_ref()
        .expect("names its remover");
    assert_eq!(removal.leaf_index, remover);
    let checked = bundle.verify(&verifier()).unwrap();
    assert_eq!(
        checked.payload_erased_by.unwrap().kind,
        "governance.payload_erased"
    );
    assert_eq!(run_verify(&store).unwrap().events, size);
    drop(store);

    let (store, _) = open_with(dir.path(), options());
    let ev = store.event(first).unwrap();
    assert_eq!((ev.payload, ev.removed_by), (None, Some(remover)));
    let mut seen = Vec::new();
    store
        .scan(0, &mut |ev| {
            if ev.payload.is_none() {
                seen.push(ev.seq);
            }
            std::ops::ControlFlow::Continue(())
        })
        .unwrap();
    assert_eq!(seen, vec![first, last]);
    assert_eq!(run_verify(&store).unwrap().events, size);
}

#[test]
fn a_removal_cut_short_is_finished_at_open() {
    let dir = TempDir::new("removal-crash");
    let raw_only = Options {
        pack_sealed: false,
        ..options()
    };
    let store = build_with(dir.path(), raw_only);
    let seq = store.tree_size() - 3;
    let payload = payload_marker(&store, seq);
    let remover = store.append(vec![erasure(&[seq])]).unwrap().events[0].seq;
    let size = store.tree_size();
    drop(store);
    // What a crash in the middle of patching leaves: the journal, and a torn record.
    crash_mid_patch(dir.path(), seq, |entry, len_b| {
        record::removed(entry, len_b, remover).unwrap()
    });

    let (store, _) = open_with(dir.path(), raw_only);
    let ev = store.event(seq).unwrap();
    assert_eq!((ev.payload, ev.removed_by), (None, Some(remover)));
    assert!(!raw_segments_hold(dir.path(), &payload));
    assert!(!dir.path().join("payload-removal.journal").exists());
    assert_eq!(run_verify(&store).unwrap().events, size);
}

#[test]
fn a_torn_record_without_a_journal_is_reported_as_damage() {
    let dir = TempDir::new("removal-torn");
    let raw_only = Options {
        pack_sealed: false,
        ..options()
    };
    let store = build_with(dir.path(), raw_only);
    let seq = store.tree_size() - 3;
    drop(store);
    let offsets = std::fs::read(dir.path().join("offsets.bin")).unwrap();
    let pos = u64::from_be_bytes(offsets[seq as usize * 8..][..8].try_into().unwrap());
    let (seg, start) = segment_holding(dir.path(), pos);
    let mut bytes = std::fs::read(&seg).unwrap();
    bytes[(pos - start) as usize] = record::REMOVED;
    std::fs::write(&seg, &bytes).unwrap();
    // Opening trusts records below the derived watermark; reading and verifying catch it.
    let (store, _) = open_with(dir.path(), raw_only);
    assert!(matches!(
        store.event(seq),
        Err(mlaudit_store::StoreError::Corrupt { .. })
    ));
    assert!(run_verify(&store).is_err());
}

#[test]
fn verify_catches_a_payload_removed_in_the_name_of_an_erasure_that_does_not_list_it() {
    let dir = TempDir::new("removal-unlisted");
    let store = build(dir.path());
    let remover = store.append(vec![erasure(&[5])]).unwrap().events[0].seq;
    store.remove_payloads(&[5], remover).unwrap();
    assert!(run_verify(&store).is_ok());
    store.remove_payloads(&[6], remover).unwrap();
    // Both verifiers of a bundle read the removal's list of ids too.
    let bundle = mlaudit_store::proofs::inclusion_bundle(&store, 6).unwrap();
    let refused = bundle.verify(&verifier()).unwrap_err();
    assert!(
        refused.to_string().contains("does not list event"),
        "{refused}"
    );
    let failure = run_verify(&store).unwrap_err();
    assert_eq!(failure.seq, Some(6));
    assert!(failure.problem.contains("does not list event"), "{failure}");
}

#[test]
fn readers_and_appends_never_see_a_half_removed_record() {
    use std::sync::atomic::{AtomicBool, Ordering};
    let dir = TempDir::new("removal-race");
    let store = build(dir.path());
    let size = store.tree_size();
    let stop = AtomicBool::new(false);
    std::thread::scope(|s| {
        for reader in 0..2u64 {
            let (store, stop) = (&store, &stop);
            s.spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    for seq in (reader..size).step_by(3) {
                        let ev = store.event(seq).unwrap();
                        assert_eq!(ev.payload.is_none(), ev.removed_by.is_some(), "seq {seq}");
                    }
                    let mut seen = 0;
                    store
                        .scan(0, &mut |_| {
                            seen += 1;
                            std::ops::ControlFlow::Continue(())
                        })
                        .unwrap();
                    assert!(seen >= size);
                }
            });
        }
        let (store_ref, stop_ref) = (&store, &stop);
        s.spawn(move || {
            for b in 0..20u64 {
                let batch = (0..10)
                    .map(|k| {
                        Spec::simple(id(10_000 + b * 10 + k), "registry.promotion_requested", k)
                            .prepare()
                    })
                    .collect();
                store_ref.append(batch).unwrap();
            }
            let _ = stop_ref;
        });
        // Payloads in packed segments and in the raw tail, ten at a time.
        for round in 0..10u64 {
            let seqs: Vec<u64> = (0..10).map(|k| (round * 29 + k * 3) % size).collect();
            let remover = store.append(vec![erasure(&seqs)]).unwrap().events[0].seq;
            store.remove_payloads(&seqs, remover).unwrap();
        }
        stop.store(true, Ordering::Relaxed);
    });
    store.settle();
    run_verify(&store).unwrap();
}

#[test]
fn a_failure_part_way_leaves_no_recorded_removal_undone() {
    use mlaudit_store::erasure::{remove_recorded, ErasureError};
    let dir = TempDir::new("removal-partway");
    let (store, _) = open_with(dir.path(), options());
    for b in 0..15u64 {
        let batch = (b * 100..b * 100 + 100)
            .map(|n| Spec::simple(id(n), "registry.promotion_requested", n).prepare())
            .collect();
        store.append(batch).unwrap();
    }
    let todo: Vec<(u64, EventId)> = (0..1500).map(|n| (n, id(n))).collect();
    // The archive (the other copy) fails on the second chunk of 1,000 ids.
    let mut calls = 0;
    let mut copies = |_: &[u64]| {
        calls += 1;
        match calls {
            2 => Err(ErasureError::Elsewhere("the archive is unreachable".into())),
            _ => Ok(()),
        }
    };
    let base = serde_json::json!({"reason": "DSR-4", "criteria": {"actor": "x"}});
    let failed = remove_recorded(
        &store,
        "governance.payload_erased",
        &base,
        &todo,
        "local:dpo",
        true,
        &mut copies,
    )
    .unwrap_err();
    assert!(matches!(failed, ErasureError::Elsewhere(_)), "{failed}");
    // The first chunk, recorded and cleared from the archive, is removed from the log too.
    assert_eq!(store.event(999).unwrap().payload, None);
    assert!(store.event(1000).unwrap().payload.is_some());
    run_verify(&store).unwrap();
}

#[test]
fn offloaded_payloads_leave_the_segments_and_come_back_only_as_they_were() {
    let dir = TempDir::new("offload");
    let store = build(dir.path());
    let (packed_seq, raw_seq) = (5, store.tree_size() - 2);
    let payloads: Vec<(u64, Vec<u8>)> = [packed_seq, raw_seq, 6]
        .iter()
        .map(|s| (*s, payload_marker(&store, *s)))
        .collect();
    assert_eq!(store.event(packed_seq).unwrap().tier, Tier::Warm);
    assert_eq!(store.event(raw_seq).unwrap().tier, Tier::Hot);
    let size = store.tree_size();
    let checkpoint = mlaudit_store::latest_checkpoint(&store).unwrap();
    assert_eq!(
        store.offload_payloads(&[packed_seq, raw_seq, 6]).unwrap(),
        3
    );
    assert_eq!(store.offload_payloads(&[raw_seq]).unwrap(), 0, "already");
    assert!(!raw_segments_hold(dir.path(), &payloads[1].1));
    for seq in [packed_seq, raw_seq] {
        let ev = store.event(seq).unwrap();
        assert!(ev.payload_in_archive(), "{ev:?}");
        assert_eq!(ev.tier, Tier::Cold);
    }
    // Nothing the tree commits to changed; verify counts on the archive for these payloads.
    assert_eq!(
        mlaudit_store::latest_checkpoint(&store).unwrap(),
        checkpoint
    );
    let bundle = mlaudit_store::proofs::inclusion_bundle(&store, raw_seq).unwrap();
    bundle.verify(&verifier()).unwrap();
    let mut in_archive = Vec::new();
    store
        .scan_runs(0, 50, &mut |run| {
            in_archive.extend(run.in_archive());
            std::ops::ControlFlow::Continue(())
        })
        .unwrap();
    assert_eq!(in_archive, vec![packed_seq, 6, raw_seq]);
    let report = run_verify(&store).unwrap();
    assert_eq!((report.events, report.in_archive), (size, 3));
    drop(store);

    let (store, _) = open_with(dir.path(), options());
    assert!(store.event(raw_seq).unwrap().payload_in_archive());
    // Only the payload an entry commits to comes back.
    let forged = vec![(packed_seq, payloads[2].1.clone())];
    let refused = store.restore_payloads(&forged).unwrap_err();
    assert!(
        matches!(refused, mlaudit_store::StoreError::Refused(_)),
        "{refused}"
    );
    assert_eq!(store.restore_payloads(&payloads[..2]).unwrap(), 2);
    assert_eq!(
        store.restore_payloads(&payloads[..2]).unwrap(),
        0,
        "already"
    );
    let back = store.event(packed_seq).unwrap();
    assert_eq!(
        (back.payload.as_ref(), back.tier),
        (Some(&payloads[0].1), Tier::Warm)
    );
    let back = store.event(raw_seq).unwrap();
    assert_eq!(
        (back.payload.as_ref(), back.tier),
        (Some(&payloads[1].1), Tier::Hot)
    );
    assert!(raw_segments_hold(dir.path(), &payloads[1].1));
    // A payload kept only in the archive can still be erased.
    let remover = store.append(vec![erasure(&[6])]).unwrap().events[0].seq;
    assert_eq!(store.remove_payloads(&[6], remover).unwrap(), 1);
    assert_eq!(store.event(6).unwrap().removed_by, Some(remover));
    assert_eq!(run_verify(&store).unwrap().events, size + 1);
}

#[test]
fn an_offload_cut_short_is_finished_at_open() {
    let dir = TempDir::new("offload-crash");
    let raw_only = Options {
        pack_sealed: false,
        ..options()
    };
    let store = build_with(dir.path(), raw_only);
    let seq = store.tree_size() - 3;
    let payload = payload_marker(&store, seq);
    drop(store);
    let (seg, at, h) = crash_mid_patch(dir.path(), seq, |entry, len_b| {
        record::in_archive(entry, len_b).unwrap()
    });

    let (store, _) = open_with(dir.path(), raw_only);
    assert!(store.event(seq).unwrap().payload_in_archive());
    assert!(!raw_segments_hold(dir.path(), &payload));
    assert!(!dir.path().join("payload-removal.journal").exists());
    // Hidden bytes in an archived record's part B are damage, not an archived payload.
    drop(store);
    let mut bytes = std::fs::read(&seg).unwrap();
    let b_at = at + record::HEADER_LEN + h.len_a as usize;
    bytes[b_at] = 1;
    let end = at + h.total_len() as usize - record::TRAILER_LEN;
    let crc = crc32c::crc32c(&bytes[at..end]);
    bytes[end..end + 4].copy_from_slice(&crc.to_be_bytes());
    std::fs::write(&seg, &bytes).unwrap();
    let (store, _) = open_with(dir.path(), raw_only);
    assert!(matches!(
        store.event(seq),
        Err(mlaudit_store::StoreError::Corrupt { .. })
    ));
}
