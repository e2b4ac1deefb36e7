//! What the engine promises a hostile or unlucky caller: files private to the service user,
//! ids reused with other content refused even while the first is in flight, proofs found by
//! leaf hash, and time-only queries that scan in windows and still answer exactly.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{open, Spec, TempDir, KINDS};
use mlaudit_core::entry::EventId;
use mlaudit_core::merkle::{leaf_hash, Hash};
use mlaudit_store::prelude::*;
use mlaudit_store::{Query, StoreError};
use std::os::unix::fs::PermissionsExt;
use std::sync::mpsc;

fn id(n: u64, tag: u8) -> EventId {
    let mut b = [tag; 16];
    b[..8].copy_from_slice(&n.to_be_bytes());
    EventId(b)
}

fn specs(first: u64, n: u64, tag: u8) -> Vec<Spec> {
    (first..first + n)
        .map(|i| Spec::simple(id(i, tag), KINDS[i as usize % KINDS.len()], i))
        .collect()
}

fn mode(path: &std::path::Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[test]
fn the_store_directory_and_its_files_are_private() {
    let dir = TempDir::new("modes");
    let log = dir.path().join("log");
    {
        let (store, _) = open(&log);
        store
            .append(specs(0, 40, 1).iter().map(Spec::prepare).collect())
            .unwrap();
    }
    let check = || {
        assert_eq!(mode(&log), 0o700, "the store's directory");
        let mut files = 0;
        for ent in std::fs::read_dir(&log).unwrap() {
            let path = ent.unwrap().path();
            assert_eq!(mode(&path), 0o600, "{}", path.display());
            files += 1;
        }
        assert!(
            files >= 8,
            "segments, tree levels, indexes, watermark, guard, lock"
        );
    };
    check();
    // A store left readable by an older version is made private when it is opened.
    std::fs::set_permissions(&log, std::fs::Permissions::from_mode(0o755)).unwrap();
    for ent in std::fs::read_dir(&log).unwrap() {
        std::fs::set_permissions(ent.unwrap().path(), std::fs::Permissions::from_mode(0o644))
            .unwrap();
    }
    drop(open(&log));
    check();
}

#[test]
fn an_id_reused_while_its_first_event_is_in_flight_is_a_conflict() {
    let dir = TempDir::new("inflight");
    let (store, _) = open(dir.path());
    for round in 0..50u64 {
        let (tx, rx) = mpsc::channel();
        let first = Spec::simple(id(round, 2), "x.first", round);
        let other = Spec::simple(id(round, 2), "x.other", round);
        let retry = first.clone();
        for (i, spec) in [first, other, retry].into_iter().enumerate() {
            let tx = tx.clone();
            store.submit(
                vec![spec.prepare()],
                Box::new(move |outcome| tx.send((i, outcome)).unwrap()),
            );
        }
        drop(tx);
        let mut outcomes: Vec<_> = rx.iter().collect();
        outcomes.sort_by_key(|(i, _)| *i);
        let seq = match &outcomes[0].1 {
            Ok(r) => r.events[0].seq,
            Err(e) => panic!("round {round}: the first event: {e}"),
        };
        assert!(
            matches!(&outcomes[1].1, Err(StoreError::Conflict { index: 0, id: got }) if *got == id(round, 2)),
            "round {round}: other content under the same id: {:?}",
            outcomes[1].1
        );
        match &outcomes[2].1 {
            Ok(r) => assert!(r.events[0].duplicate && r.events[0].seq == seq),
            Err(e) => panic!("round {round}: the retry: {e}"),
        }
    }
    assert_eq!(store.tree_size(), 50);
    // Within one batch too.
    let a = Spec::simple(id(99, 3), "x.a", 1);
    let b = Spec::simple(id(99, 3), "x.b", 2);
    let outcome = store.append(vec![a.prepare(), a.prepare(), b.prepare()]);
    assert!(
        matches!(outcome, Err(StoreError::Conflict { index: 2, .. })),
        "{outcome:?}"
    );
    assert_eq!(
        store.tree_size(),
        50,
        "nothing of a refused batch is written"
    );
}

#[test]
fn every_event_is_found_by_its_leaf_hash() {
    let dir = TempDir::new("leaves");
    let (store, _) = open(dir.path());
    for b in 0..5 {
        store
            .append(specs(b * 37, 37, 4).iter().map(Spec::prepare).collect())
            .unwrap();
    }
    let check = |store: &mlaudit_embedded::EmbeddedStore| {
        for seq in 0..store.tree_size() {
            let leaf = leaf_hash(&store.event(seq).unwrap().entry);
            assert_eq!(store.seq_of_leaf(&leaf).unwrap(), Some(seq));
        }
        let mut unknown = leaf_hash(&store.event(3).unwrap().entry);
        unknown.0[31] ^= 1;
        assert_eq!(store.seq_of_leaf(&unknown).unwrap(), None);
        // Same first 8 bytes, another hash: not a match.
        let mut prefix_only = leaf_hash(&store.event(4).unwrap().entry);
        prefix_only.0[20] ^= 0x80;
        assert_eq!(store.seq_of_leaf(&prefix_only).unwrap(), None);
        assert_eq!(store.seq_of_leaf(&Hash([0; 32])).unwrap(), None);
    };
    check(&store);
    drop(store);
    // Reopened: the map is loaded from tree-00.hash; rebuilt: from the segments.
    let (store, _) = open(dir.path());
    check(&store);
    drop(store);
    std::fs::remove_file(dir.path().join("derived.meta")).unwrap();
    let (store, report) = open(dir.path());
    assert!(report.rebuilt.is_some());
    check(&store);
}

/// Time-only queries scan in windows of 65,536 events; results across window edges are
/// exactly those of one pass.
#[test]
fn time_only_queries_answer_exactly_across_scan_windows() {
    const WINDOW: u64 = 1 << 16;
    let dir = TempDir::new("times");
    let (store, _) = open(dir.path());
    let total = 2 * WINDOW + 300;
    let mut first = 0;
    while first < total {
        let n = 10_000.min(total - first);
        store
            .append(specs(first, n, 5).iter().map(Spec::prepare).collect())
            .unwrap();
        first += n;
    }
    let time = |seq: u64| {
        mlaudit_core::entry::decode(&store.event(seq).unwrap().entry)
            .unwrap()
            .event_time_ns
    };
    // Spec::simple's times increase with the event's number: a time range is a seq range.
    let (lo, hi) = (WINDOW - 7, 2 * WINDOW + 11);
    let q = Query {
        since_ns: Some(time(lo)),
        until_ns: Some(time(hi)),
        limit: 1000,
        ..Query::default()
    };
    let page = store.query(&q).unwrap();
    assert_eq!(page, (lo..lo + 1000).collect::<Vec<_>>());
    let mut after = Query {
        after_seq: Some(2 * WINDOW - 3),
        ..q.clone()
    };
    after.limit = 100;
    assert_eq!(
        store.query(&after).unwrap(),
        ((2 * WINDOW - 2)..hi).collect::<Vec<_>>()
    );
    // Nothing in range: the whole log is scanned, window by window, and nothing returned.
    let none = Query {
        since_ns: Some(time(total - 1) + 1),
        limit: 10,
        ..Query::default()
    };
    assert!(store.query(&none).unwrap().is_empty());
}
