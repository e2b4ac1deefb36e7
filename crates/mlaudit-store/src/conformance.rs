//! The conformance suite every engine passes: one function that drives an empty store through
//! a realistic lifecycle and checks every role's answers against what the events themselves
//! say — receipts, duplicates and conflicts, reads by seq, id and leaf, scans, queries against
//! a naive filter, checkpoints and their pages, inclusion bundles and consistency proofs
//! verified with the key, `verify`, and lineage. Each engine's tests call [`check`] on a fresh
//! store, so that two engines give the same answers to the same questions.

use crate::{lineage, proofs, verify, Query, Store, StoreError};
use mlaudit_core::entry::{self, Entry, EventId, SubjectField};
use mlaudit_core::event::{prepare, PreparedEvent, Stage};
use mlaudit_core::merkle::leaf_hash;
use mlaudit_core::note::{open_checkpoint, NoteVerifier};
use serde_json::{json, Value};
use std::ops::ControlFlow;

/// What the suite found wrong: the check and what differed.
#[derive(Debug, thiserror::Error)]
#[error("conformance: {0}")]
pub struct Failure(pub String);

impl From<StoreError> for Failure {
    fn from(e: StoreError) -> Failure {
        Failure(format!("store error: {e}"))
    }
}

macro_rules! ensure {
    ($cond:expr, $($msg:tt)+) => {
        if !$cond {
            return Err(Failure(format!($($msg)+)));
        }
    };
}

/// How many predictions the lifecycle serves (in three batches, with the other stages).
const PREDICTIONS: usize = 60;

fn id(i: usize) -> String {
    format!("00000000-0000-4000-8000-{i:012}")
}

fn time(minute: usize) -> String {
    format!("2026-03-01T{:02}:{:02}:00Z", 8 + minute / 60, minute % 60)
}

/// The lifecycle, as event JSON: data, training, registry, deployment, predictions of two
/// model versions.
fn lifecycle() -> Vec<Value> {
    let svc = |name: &str| json!({"id": name, "type": "service"});
    let mut out = vec![
        json!({"id": id(1), "time": time(0), "kind": "data.source_accessed", "actor": svc("etl"),
               "subject": {"dataset": "loans", "dataset_version": "v1"}, "attributes": {"source": "s3://bank/loans"}}),
        json!({"id": id(2), "time": time(1), "kind": "data.snapshot_created", "actor": svc("etl"),
               "subject": {"dataset": "loans", "dataset_version": "v1"}, "attributes": {"content_sha256": "ab".repeat(32)}}),
        json!({"id": id(3), "time": time(2), "kind": "training.run_started", "actor": {"id": "alice", "type": "user"},
               "subject": {"run": "run-1", "model": "credit"},
               "attributes": {"hyperparameters": {"lr": 0.1}, "random_seed": 7, "datasets": ["loans@v1"]}}),
        json!({"id": id(4), "time": time(3), "kind": "training.checkpoint_evaluated", "actor": svc("trainer"),
               "subject": {"run": "run-1"}, "attributes": {"step": 1, "metrics": {"auc": 0.8}}}),
        json!({"id": id(5), "time": time(4), "kind": "registry.model_registered", "actor": {"id": "alice", "type": "user"},
               "subject": {"model": "credit", "version": "1", "run": "run-1"}, "attributes": {"artifact_sha256": "cd".repeat(32)}}),
        json!({"id": id(6), "time": time(5), "kind": "registry.approval_granted", "actor": {"id": "bob", "type": "user"},
               "subject": {"model": "credit", "version": "1"}, "attributes": {"approver": "bob", "reason": "validated"}}),
        json!({"id": id(7), "time": time(6), "kind": "operations.deployed", "actor": svc("cd"),
               "subject": {"deployment": "prod-credit", "model": "credit", "version": "1"}, "attributes": {"environment": "prod"}}),
    ];
    for i in 0..PREDICTIONS {
        let version = if i % 3 == 0 { "2" } else { "1" };
        out.push(json!({"id": id(100 + i), "time": time(10 + i), "kind": "prediction.served", "actor": svc("scoring"),
            "subject": {"model": "credit", "version": version, "request": format!("req-{i}")},
            "attributes": {"inputs": {"x": i}, "outputs": {"score": 0.5}}}));
    }
    out
}

fn prepared(events: &[Value]) -> Result<Vec<PreparedEvent>, Failure> {
    events
        .iter()
        .map(|e| {
            prepare(&e.to_string(), "conformance").map_err(|err| Failure(format!("{e}: {err}")))
        })
        .collect()
}

/// Runs the suite on `store`, which must be empty and sign with the key `key` verifies.
pub fn check(store: &dyn Store, key: &NoteVerifier) -> Result<(), Failure> {
    ensure!(
        store.tree_size() == 0,
        "the store under test must start empty"
    );
    let events = lifecycle();
    let batches: Vec<&[Value]> = vec![&events[..7], &events[7..40], &events[40..]];
    for batch in &batches {
        append_checked(store, key, batch)?;
    }
    let n = events.len() as u64;
    ensure!(
        store.tree_size() == n,
        "tree size {} after {n} events",
        store.tree_size()
    );
    duplicates_and_conflicts(store, &events)?;
    let entries = reads(store, &events)?;
    scans(store, &entries)?;
    queries(store, &entries)?;
    checkpoints(store, key, batches.len())?;
    let report = verify::verify(store, key, &mut |_, _| {})
        .map_err(|f| Failure(format!("verify failed: {f:?}")))?;
    ensure!(
        report.events == n,
        "verify saw {} events of {n}",
        report.events
    );
    lineage_of_a_prediction(store)?;
    Ok(())
}

fn append_checked(store: &dyn Store, key: &NoteVerifier, batch: &[Value]) -> Result<(), Failure> {
    let before = store.tree_size();
    let receipt = store.append(prepared(batch)?)?;
    ensure!(receipt.events.len() == batch.len(), "a receipt per event");
    for (i, (a, e)) in receipt.events.iter().zip(batch).enumerate() {
        ensure!(
            a.seq == before + i as u64,
            "seqs are dense: {} at {i}",
            a.seq
        );
        ensure!(!a.duplicate, "a new event is not a duplicate");
        ensure!(
            Some(a.id) == e["id"].as_str().and_then(EventId::parse),
            "the receipt names the event's id"
        );
    }
    ensure!(
        receipt.tree_size == before + batch.len() as u64,
        "the receipt's tree size"
    );
    let cp = open_checkpoint(key, &receipt.checkpoint)
        .map_err(|e| Failure(format!("the receipt's checkpoint does not verify: {e}")))?;
    ensure!(
        cp.size == receipt.tree_size,
        "the receipt's checkpoint signs its tree size"
    );
    Ok(())
}

fn duplicates_and_conflicts(store: &dyn Store, events: &[Value]) -> Result<(), Failure> {
    let size = store.tree_size();
    let again = store.append(prepared(&events[..5])?)?;
    ensure!(
        again.events.iter().all(|a| a.duplicate),
        "a resent event is a duplicate"
    );
    ensure!(
        again
            .events
            .iter()
            .enumerate()
            .all(|(i, a)| a.seq == i as u64),
        "a duplicate answers the original seq"
    );
    ensure!(store.tree_size() == size, "duplicates write nothing");
    let mut changed = events[0].clone();
    changed["attributes"]["source"] = json!("s3://elsewhere");
    let fresh =
        json!({"id": id(9_999), "kind": "x.fresh", "actor": {"id": "t", "type": "service"}});
    match store.append(prepared(&[fresh, changed])?) {
        Err(StoreError::Conflict { index, .. }) => {
            ensure!(index == 1, "the conflict names event 1, not {index}")
        }
        other => {
            return Err(Failure(format!(
                "a reused id with another payload must conflict, got {other:?}"
            )))
        }
    }
    ensure!(
        store.tree_size() == size,
        "a conflicting batch writes nothing, not even its other events"
    );
    ensure!(
        store
            .seq_of(&EventId::derived("conformance", "absent"))?
            .is_none(),
        "an absent id has no seq"
    );
    Ok(())
}

fn reads(store: &dyn Store, events: &[Value]) -> Result<Vec<Entry>, Failure> {
    let mut entries = Vec::new();
    for (seq, e) in events.iter().enumerate() {
        let seq = seq as u64;
        let stored = store.event(seq)?;
        ensure!(stored.seq == seq, "event({seq}) answers seq {}", stored.seq);
        let entry =
            entry::decode(&stored.entry).map_err(|err| Failure(format!("entry {seq}: {err}")))?;
        ensure!(entry.seq == seq, "entry {seq} says seq {}", entry.seq);
        ensure!(
            stored.payload.as_deref() == Some(e.to_string().as_bytes()),
            "payload {seq} is the event as sent"
        );
        ensure!(
            store.seq_of(&entry.id)? == Some(seq),
            "seq_of the id of {seq}"
        );
        ensure!(
            store.seq_of_leaf(&leaf_hash(&stored.entry))? == Some(seq),
            "seq_of_leaf of {seq}"
        );
        ensure!(
            store.node(0, seq)? == leaf_hash(&stored.entry),
            "the stored leaf of {seq}"
        );
        entries.push(entry);
    }
    ensure!(
        matches!(
            store.event(events.len() as u64),
            Err(StoreError::NotFound(_))
        ),
        "an event past the end is NotFound"
    );
    Ok(entries)
}

fn scans(store: &dyn Store, entries: &[Entry]) -> Result<(), Failure> {
    let mut seen = Vec::new();
    store.scan(3, &mut |e| {
        seen.push(e.seq);
        ControlFlow::Continue(())
    })?;
    ensure!(
        seen == (3..entries.len() as u64).collect::<Vec<_>>(),
        "scan from 3 visits every later seq in order"
    );
    let mut runs = Vec::new();
    store.scan_runs(0, 16, &mut |run| {
        for i in 0..run.len() {
            if let Some((seq, _, _)) = run.get(i) {
                runs.push(seq);
            }
        }
        ControlFlow::Continue(())
    })?;
    ensure!(
        runs == (0..entries.len() as u64).collect::<Vec<_>>(),
        "scan_runs visits every seq in order"
    );
    Ok(())
}

/// Each query's answer against a naive filter over the decoded entries.
fn queries(store: &dyn Store, entries: &[Entry]) -> Result<(), Failure> {
    let q = Query::default;
    let cases: Vec<Query> = vec![
        Query {
            kind: Some("prediction.served".into()),
            limit: 1000,
            ..q()
        },
        Query {
            stage: Some(Stage::Registry),
            limit: 1000,
            ..q()
        },
        Query {
            model: Some("credit".into()),
            version: Some("2".into()),
            limit: 1000,
            ..q()
        },
        Query {
            run: Some("run-1".into()),
            limit: 1000,
            ..q()
        },
        Query {
            dataset: Some("loans".into()),
            limit: 1000,
            ..q()
        },
        Query {
            deployment: Some("prod-credit".into()),
            limit: 1000,
            ..q()
        },
        Query {
            actor: Some("alice".into()),
            limit: 1000,
            ..q()
        },
        Query {
            kind: Some("prediction.served".into()),
            after_seq: Some(30),
            limit: 5,
            ..q()
        },
        Query {
            since_ns: mlaudit_core::event::parse_time(&time(20)),
            until_ns: mlaudit_core::event::parse_time(&time(30)),
            limit: 1000,
            ..q()
        },
        Query {
            kind: Some("no.such.kind".into()),
            limit: 1000,
            ..q()
        },
    ];
    for case in cases {
        let want: Vec<u64> = entries
            .iter()
            .filter(|e| matches(case.clone(), e))
            .map(|e| e.seq)
            .filter(|s| case.after_seq.is_none_or(|a| *s > a))
            .take(case.limit)
            .collect();
        let got = store.query(&case)?;
        ensure!(got == want, "query {case:?}: {got:?}, expected {want:?}");
    }
    Ok(())
}

fn matches(q: Query, e: &Entry) -> bool {
    let subject = |f: SubjectField, want: &Option<String>| {
        want.as_ref()
            .is_none_or(|w| e.subjects.iter().any(|(sf, v)| *sf == f && v == w))
    };
    q.kind.as_ref().is_none_or(|k| *k == e.kind)
        && q.stage.is_none_or(|s| Stage::of_kind(&e.kind) == Some(s))
        && q.actor.as_ref().is_none_or(|a| *a == e.actor_id)
        && subject(SubjectField::Model, &q.model)
        && subject(SubjectField::Version, &q.version)
        && subject(SubjectField::Run, &q.run)
        && subject(SubjectField::Dataset, &q.dataset)
        && subject(SubjectField::Deployment, &q.deployment)
        && q.since_ns.is_none_or(|t| e.event_time_ns >= t)
        && q.until_ns.is_none_or(|t| e.event_time_ns < t)
}

fn checkpoints(store: &dyn Store, key: &NoteVerifier, batches: usize) -> Result<(), Failure> {
    let sizes = store.checkpoint_sizes()?;
    ensure!(
        sizes.windows(2).all(|w| w[0] < w[1]),
        "checkpoint sizes ascend without repeats: {sizes:?}"
    );
    ensure!(
        sizes.len() >= batches,
        "a checkpoint per durable batch at least: {sizes:?}"
    );
    ensure!(
        sizes.last() == Some(&store.tree_size()),
        "the latest checkpoint signs the whole log"
    );
    ensure!(
        store.latest_checkpoint_size()? == sizes.last().copied(),
        "latest_checkpoint_size"
    );
    let mut paged = Vec::new();
    let mut after = None;
    loop {
        let page = store.checkpoint_sizes_after(after, 1)?;
        let Some(&last) = page.last() else { break };
        paged.extend(page);
        after = Some(last);
    }
    ensure!(
        paged == sizes,
        "checkpoint_sizes_after, a page of one at a time"
    );
    let nonzero: Vec<u64> = sizes.iter().copied().filter(|s| *s > 0).collect();
    for size in &nonzero {
        let note = store
            .checkpoint(*size)?
            .ok_or_else(|| Failure(format!("no checkpoint for {size}")))?;
        let cp =
            open_checkpoint(key, &note).map_err(|e| Failure(format!("checkpoint {size}: {e}")))?;
        ensure!(cp.size == *size, "checkpoint {size} signs size {}", cp.size);
    }
    for pair in nonzero.windows(2) {
        let proof = proofs::consistency(store, pair[0], pair[1])
            .map_err(|e| Failure(format!("consistency {pair:?}: {e}")))?;
        proof
            .verify(key)
            .map_err(|e| Failure(format!("consistency {pair:?} does not verify: {e}")))?;
    }
    for seq in 0..store.tree_size() {
        let bundle = proofs::inclusion_bundle(store, seq)
            .map_err(|e| Failure(format!("bundle {seq}: {e}")))?;
        bundle
            .verify(key)
            .map_err(|e| Failure(format!("bundle {seq} does not verify: {e}")))?;
    }
    Ok(())
}

fn lineage_of_a_prediction(store: &dyn Store) -> Result<(), Failure> {
    let seq = store
        .seq_of(&EventId::parse(&id(101)).ok_or_else(|| Failure("id".into()))?)?
        .ok_or_else(|| Failure("prediction 1 is stored".into()))?;
    let l = lineage::lineage(store, seq)?;
    ensure!(
        l.model.as_deref() == Some("credit") && l.version.as_deref() == Some("1"),
        "lineage names the model version"
    );
    ensure!(
        l.run.as_deref() == Some("run-1"),
        "lineage reaches the training run"
    );
    let kinds: Vec<&str> = l
        .registry
        .iter()
        .filter_map(|e| e["kind"].as_str())
        .collect();
    ensure!(
        kinds.contains(&"registry.model_registered")
            && kinds.contains(&"registry.approval_granted"),
        "lineage lists the registry history: {kinds:?}"
    );
    ensure!(l.deployments.len() == 1, "lineage lists the deployment");
    ensure!(
        l.training.len() == 2,
        "lineage lists the run's training events"
    );
    ensure!(
        l.datasets.len() == 1
            && l.datasets[0].dataset == "loans"
            && l.datasets[0].events.len() == 2,
        "lineage reaches the dataset and its events: {:?}",
        l.datasets
    );
    Ok(())
}
