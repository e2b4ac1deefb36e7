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

fn count(schema: &Schema, table: &str) -> i64 {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let (client, conn) = tokio_postgres::connect(&common::server_url(), tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(conn);
        let row = client
            .query_one(
                &format!("SELECT count(*) FROM {}.{table}", schema.name),
                &[],
            )
            .await
            .unwrap();
        row.get(0)
    })
}

#[test]
fn a_queued_batch_the_database_would_refuse_is_rejected_and_the_log_goes_on() {
    let schema = Schema::new("poison");
    let (store, _) = PostgresStore::init(&schema.url(""), signer()).unwrap();
    // A row no server of ours writes: a kind with a NUL, which PostgreSQL text cannot hold.
    let payload = b"{}";
    let entry = mlaudit_core::entry::Entry {
        seq: 0,
        event_time_ns: 0,
        receipt_time_ns: 0,
        id: mlaudit_core::entry::EventId([9; 16]),
        payload_sha256: mlaudit_core::merkle::sha256(payload),
        payload_len: 2,
        actor_type: mlaudit_core::entry::ActorType::Service,
        kind: "x.bad\0kind".into(),
        actor_id: "a".into(),
        principal: "p".into(),
        subjects: vec![],
    };
    let header = mlaudit_core::entry::encode(&entry).unwrap();
    let hex = |b: &[u8]| mlaudit_core::merkle::hex(b);
    common::admin(&format!(
        "INSERT INTO {}.pending (batch, ord, header, timed, payload) VALUES ('\\x{}', 0, '\\x{}', false, '\\x{}')",
        schema.name,
        hex(&[1; 16]),
        hex(&header),
        hex(payload)
    ))
    .unwrap();
    // The sequencer takes it with the next group, refuses it alone, and goes on.
    let receipt = store.append(vec![prediction(1, "a")]).unwrap();
    assert_eq!(receipt.tree_size, 1);
    assert!(
        common::wait(Duration::from_secs(5), || count(&schema, "pending") == 0),
        "the bad batch was not taken"
    );
    assert_eq!(count(&schema, "outcomes"), 1);
    store.append(vec![prediction(2, "b")]).unwrap();
    assert_eq!(store.tree_size(), 2);
    mlaudit_store::verify::verify(&store, &verifier(), &mut |_, _| {}).unwrap();
}

#[test]
fn a_batch_no_sequencer_takes_in_time_is_withdrawn_and_said_not_stored() {
    let schema = Schema::new("late");
    drop(PostgresStore::init(&schema.url(""), signer()).unwrap());
    let options = Options {
        may_sequence: false,
        sequencing_timeout: Duration::from_millis(500),
        ..Options::default()
    };
    let standby = PostgresStore::open(&schema.url(""), Some(signer()), options).unwrap();
    let e = standby.append(vec![prediction(1, "a")]).unwrap_err();
    assert!(e.to_string().contains("withdrawn"), "{e}");
    assert_eq!(count(&schema, "pending"), 0, "the batch is withdrawn");
    // Later a sequencer appears: nothing of the withdrawn batch is stored.
    let (sequencer, _) = PostgresStore::init(&schema.url(""), signer()).unwrap();
    assert_eq!(sequencer.append(vec![]).unwrap().tree_size, 0);
    assert_eq!(
        sequencer.seq_of(&prediction(1, "a").id.unwrap()).unwrap(),
        None
    );
}
