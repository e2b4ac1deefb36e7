//! Two engines on one log in one process: exactly one is the sequencer; the other's appends go
//! through the queue and are answered only once sequenced; when the sequencer goes away the
//! other takes over, and the log stays one consistent history.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test fails loudly on any unexpected error"
)]

mod common;

use common::{prediction, signer, verifier, Schema};
use mlaudit_core::note::open_checkpoint;
use mlaudit_postgres::{Options, PostgresStore};
use mlaudit_store::prelude::*;
use mlaudit_store::StoreError;
use std::time::{Duration, Instant};

fn open(schema: &Schema) -> PostgresStore {
    PostgresStore::open(&schema.url(""), Some(signer()), Options::default()).unwrap()
}

#[test]
fn a_standby_queues_appends_and_takes_over_when_the_sequencer_leaves() {
    let schema = Schema::new("seq");
    let (first, _) = PostgresStore::init(&schema.url(""), signer()).unwrap();
    let second = open(&schema);
    assert!(first.is_sequencer());
    assert!(!second.is_sequencer(), "one sequencer at a time");

    let direct = first.append(vec![prediction(1, "a")]).unwrap();
    assert_eq!(direct.tree_size, 1);

    // Through the standby: queued, sequenced by `first`, answered with a covering checkpoint.
    let queued = second
        .append(vec![
            prediction(2, "b"),
            prediction(3, "c"),
            prediction(1, "a"),
        ])
        .unwrap();
    let seqs: Vec<u64> = queued.events.iter().map(|a| a.seq).collect();
    assert_eq!(seqs, [1, 2, 0]);
    assert!(queued.events[2].duplicate && !queued.events[0].duplicate);
    let cp = open_checkpoint(&verifier(), &queued.checkpoint).unwrap();
    assert_eq!(cp.size, queued.tree_size);
    assert!(cp.size >= 3);
    assert_eq!(first.seq_of(&queued.events[1].id).unwrap(), Some(2));

    // A conflicting id through the queue is refused whole, as it would be directly.
    let e = second
        .append(vec![prediction(4, "d"), prediction(2, "changed")])
        .unwrap_err();
    assert!(matches!(e, StoreError::Conflict { index: 1, .. }), "{e}");
    assert_eq!(first.seq_of(&prediction(4, "d").id.unwrap()).unwrap(), None);

    // The sequencer leaves; the standby is elected within seconds and appends directly.
    drop(first);
    let start = Instant::now();
    while !second.is_sequencer() {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "no takeover within 5 s"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(second.takeovers(), 1);
    let after = second.append(vec![prediction(5, "e")]).unwrap();
    assert_eq!(after.events[0].seq, 3);
    let stats = second.stats();
    assert_eq!((stats.sequencer, stats.takeovers), (Some(true), 1));

    // One history: the checkpoints before and after the takeover are consistent.
    let proof = mlaudit_store::proofs::consistency(&second, cp.size, after.tree_size).unwrap();
    proof.verify(&verifier()).unwrap();
    mlaudit_store::verify::verify(&second, &verifier(), &mut |_, _| {}).unwrap();
}
