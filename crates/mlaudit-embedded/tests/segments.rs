//! A log spread over many segments: groups that the syncer makes durable together may span a
//! segment roll; every event is still found, the log verifies, and a reopen (with the default
//! segment size) recovers the same log and keeps appending to its last segment.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use mlaudit_embedded::{EmbeddedStore, Options};
use mlaudit_store::prelude::*;
use mlaudit_store::AppendReceipt;

#[test]
fn a_log_of_many_segments_verifies_and_reopens() {
    let dir = TempDir::new("segments");
    let small = Options {
        segment_target: 4096,
        run_events: 40,
        ..Options::default()
    };
    let (store, _) = EmbeddedStore::open_with(dir.path(), Some(signer()), small).unwrap();
    let mut rng = Rng::new(0x5eed_0051);
    let mut ids = Vec::new();
    let batches: Vec<Vec<_>> = (0..120u64)
        .map(|b| {
            (0..(1 + b % 7))
                .map(|k| {
                    let id = rng.id();
                    ids.push(id);
                    Spec::simple(id, "registry.promotion_requested", b * 10 + k).prepare()
                })
                .collect()
        })
        .collect();
    // Four concurrent appenders: many groups (a segment is rolled only between groups), and
    // groups that queue up behind a sync are made durable several at a time.
    let mut per_thread: Vec<Vec<Vec<_>>> = vec![Vec::new(); 4];
    for (i, b) in batches.into_iter().enumerate() {
        per_thread[i % 4].push(b);
    }
    let mut receipts: Vec<AppendReceipt> = Vec::new();
    std::thread::scope(|s| {
        let handles: Vec<_> = per_thread
            .into_iter()
            .map(|bs| {
                s.spawn(|| {
                    bs.into_iter()
                        .map(|b| store.append(b).expect("append failed"))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        for h in handles {
            receipts.extend(h.join().unwrap());
        }
    });
    assert_eq!(receipts.len(), 120);
    let mut seqs: Vec<u64> = receipts
        .iter()
        .flat_map(|r| r.events.iter().map(|a| a.seq))
        .collect();
    seqs.sort_unstable();
    assert_eq!(seqs, (0..ids.len() as u64).collect::<Vec<_>>());
    let total = ids.len() as u64;
    assert_eq!(store.tree_size(), total);
    let segs = segments(dir.path());
    assert!(
        segs.len() >= 10,
        "{} segments for {total} events",
        segs.len()
    );
    for id in &ids {
        let seq = store
            .seq_of(id)
            .unwrap()
            .expect("every acknowledged id is found");
        assert_eq!(store.event(seq).unwrap().seq, seq);
    }
    assert_eq!(run_verify(&store).expect("the log verifies").events, total);
    store.close().unwrap();
    drop(store);

    let (store, report) = open(dir.path());
    assert_eq!(report.truncated, None);
    assert_eq!(store.tree_size(), total);
    let more = Spec::simple(rng.id(), "registry.promotion_requested", 9999).prepare();
    assert_eq!(store.append(vec![more]).unwrap().events[0].seq, total);
    assert_eq!(
        segments(dir.path()).len(),
        segs.len(),
        "the reopened store appends to its last segment"
    );
    assert_eq!(
        run_verify(&store)
            .expect("the reopened log verifies")
            .events,
        total + 1
    );
}
