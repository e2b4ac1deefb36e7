//! `Store::submit`: batches queued without waiting get their outcomes through the callback,
//! only once durable, in the order they were queued; after close the callback gets an error.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use mlaudit_store::prelude::*;
use mlaudit_store::{AppendReceipt, StoreError};
use std::sync::mpsc;

#[test]
fn submitted_batches_are_answered_once_durable_and_in_queue_order() {
    let dir = TempDir::new("submit");
    let (store, _) = open(dir.path());
    let mut rng = Rng::new(0x5eed_0042);
    let (tx, rx) = mpsc::channel::<(usize, Result<AppendReceipt, StoreError>)>();
    let mut ids = Vec::new();
    for b in 0..40usize {
        let batch: Vec<_> = (0..25u64)
            .map(|k| {
                let id = rng.id();
                ids.push(id);
                Spec::simple(id, "registry.promotion_requested", b as u64 * 25 + k).prepare()
            })
            .collect();
        let tx = tx.clone();
        store.submit(
            batch,
            Box::new(move |outcome| tx.send((b, outcome)).unwrap()),
        );
    }
    drop(tx);
    let mut answers: Vec<(usize, AppendReceipt)> = rx
        .iter()
        .map(|(b, r)| (b, r.expect("append failed")))
        .collect();
    assert_eq!(answers.len(), 40);
    answers.sort_by_key(|(b, _)| *b);
    for (b, receipt) in &answers {
        // Durable before the answer: the receipt's tree covers the batch.
        let seqs: Vec<u64> = receipt.events.iter().map(|a| a.seq).collect();
        assert_eq!(
            seqs,
            (*b as u64 * 25..*b as u64 * 25 + 25).collect::<Vec<_>>(),
            "batch {b}"
        );
        assert!(receipt.tree_size >= *b as u64 * 25 + 25);
        assert!(receipt.events.iter().all(|a| !a.duplicate));
    }
    assert_eq!(store.tree_size(), 1000);
    for (seq, id) in ids.iter().enumerate() {
        assert_eq!(store.seq_of(id).unwrap(), Some(seq as u64));
    }
    run_verify(&store).expect("the log verifies");

    store.close().unwrap();
    let (tx, rx) = mpsc::channel();
    let late = Spec::simple(rng.id(), "registry.promotion_requested", 5000).prepare();
    store.submit(
        vec![late],
        Box::new(move |outcome| tx.send(outcome).unwrap()),
    );
    assert!(matches!(
        rx.recv().unwrap(),
        Err(StoreError::WriterStopped(_))
    ));
}

#[test]
fn a_panicking_callback_does_not_stop_the_writer_and_try_submit_queues() {
    let dir = TempDir::new("submit-panic");
    let (store, _) = open(dir.path());
    let mut rng = Rng::new(0x5eed_0043);
    let first = Spec::simple(rng.id(), "registry.promotion_requested", 1).prepare();
    store.submit(vec![first], Box::new(|_| panic!("a careless callback")));
    let (tx, rx) = mpsc::channel();
    let second = Spec::simple(rng.id(), "registry.promotion_requested", 2).prepare();
    let queued = store.try_submit(
        vec![second],
        Box::new(move |outcome| tx.send(outcome).unwrap()),
    );
    assert!(queued.is_ok(), "an idle writer's queue has room");
    let receipt = rx.recv().unwrap().expect("the writer survived the panic");
    assert_eq!((receipt.events[0].seq, receipt.tree_size), (1, 2));
    let third = Spec::simple(rng.id(), "registry.promotion_requested", 3).prepare();
    assert_eq!(store.append(vec![third]).unwrap().tree_size, 3);
    run_verify(&store).expect("the log verifies");
}
