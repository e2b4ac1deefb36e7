//! Property test of the embedded store against a reference model: a deterministic PRNG drives
//! random batches (random kinds, subjects, actors, times and ~10% repeated ids); a plain `Vec`
//! of what should be stored is checked against every read path of the store after every batch
//! and across reopens; at the end `verify` and inclusion/consistency proofs must check out.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{open, open_with, run_verify, verifier, Rng, Spec, TempDir, KINDS};
use mlaudit_core::entry::{self, ActorType, EventId, SubjectField};
use mlaudit_core::event::Stage;
use mlaudit_core::merkle::{self, leaf_hash, sha256, CompactRange, Hash};
use mlaudit_core::note::open_checkpoint;
use mlaudit_embedded::EmbeddedStore;
use mlaudit_embedded::Options;
use mlaudit_store::prelude::*;
use mlaudit_store::proofs::{consistency, inclusion_bundle};
use mlaudit_store::{Nodes, Query, StoreError};
use std::collections::HashMap;
use std::ops::ControlFlow;

const MODELS: &[&str] = &["m-credit", "m-fraud", "m-churn"];
const VERSIONS: &[&str] = &["1", "2", "17", "v3-beta"];
const ACTORS: &[&str] = &["alice", "bob", "ci-bot"];
const RUNS: &[&str] = &["run-a", "run-b", "run-c"];
const DATASETS: &[&str] = &["ds-loans", "ds-clicks"];
const DEPLOYMENTS: &[&str] = &["dep-eu", "dep-us"];
/// 2026-01-01T00:00:00Z.
const BASE_NS: i64 = 1_767_225_600_000_000_000;
/// Event times fall in [BASE_NS, BASE_NS + SPAN_NS).
const SPAN_NS: i64 = 1000 * 1_000_000_000;

/// One event the model expects the store to hold.
#[derive(Debug, Clone)]
struct MEvent {
    seq: u64,
    id: EventId,
    kind: String,
    actor_id: String,
    actor_type: ActorType,
    subjects: Vec<(SubjectField, String)>,
    time_ns: i64,
    payload: Vec<u8>,
}

impl MEvent {
    fn subject(&self, f: SubjectField) -> Option<&str> {
        self.subjects
            .iter()
            .find(|(g, _)| *g == f)
            .map(|(_, v)| v.as_str())
    }
}

#[derive(Debug, Default)]
struct Model {
    events: Vec<MEvent>,
    ids: HashMap<EventId, u64>,
    /// Every checkpoint size the store must list, ascending.
    checkpoints: Vec<u64>,
    /// The event written for each client-chosen id, to retry or contradict.
    specs: HashMap<EventId, Spec>,
    /// Batches refused for reusing an id with other content.
    conflicts: usize,
}

impl Model {
    /// The first event of a batch whose id is taken, in the log or earlier in the batch, by
    /// other content.
    fn first_conflict(&self, specs: &[Spec]) -> Option<(usize, EventId)> {
        let mut seen: HashMap<EventId, String> = HashMap::new();
        for (i, s) in specs.iter().enumerate() {
            let Some(id) = s.id else { continue };
            let original = seen.get(&id).cloned().or_else(|| {
                self.ids
                    .get(&id)
                    .map(|seq| self.specs[&self.events[*seq as usize].id].json())
            });
            if original.is_some_and(|o| o != s.json()) {
                return Some((i, id));
            }
            seen.entry(id).or_insert_with(|| s.json());
        }
        None
    }

    fn len(&self) -> u64 {
        self.events.len() as u64
    }

    /// The naive answer to a query.
    fn query(&self, q: &Query) -> Vec<u64> {
        let eq = |want: &Option<String>, have: Option<&str>| {
            want.as_deref().is_none_or(|w| have == Some(w))
        };
        self.events
            .iter()
            .filter(|e| {
                q.stage
                    .is_none_or(|s| Stage::of_kind(&e.kind).unwrap_or(Stage::Custom) == s)
            })
            .filter(|e| eq(&q.kind, Some(&e.kind)))
            .filter(|e| eq(&q.actor, Some(&e.actor_id)))
            .filter(|e| eq(&q.model, e.subject(SubjectField::Model)))
            .filter(|e| eq(&q.version, e.subject(SubjectField::Version)))
            .filter(|e| eq(&q.run, e.subject(SubjectField::Run)))
            .filter(|e| eq(&q.dataset, e.subject(SubjectField::Dataset)))
            .filter(|e| eq(&q.deployment, e.subject(SubjectField::Deployment)))
            .filter(|e| q.since_ns.is_none_or(|s| e.time_ns >= s))
            .filter(|e| q.until_ns.is_none_or(|u| e.time_ns < u))
            .filter(|e| q.after_seq.is_none_or(|a| e.seq > a))
            .map(|e| e.seq)
            .take(q.limit)
            .collect()
    }
}

fn now_ns() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as i64
}

fn pool_value(rng: &mut Rng, field: SubjectField, n: u64) -> String {
    match field {
        SubjectField::Model => rng.pick(MODELS).to_string(),
        SubjectField::Version => rng.pick(VERSIONS).to_string(),
        SubjectField::Run => rng.pick(RUNS).to_string(),
        SubjectField::Dataset => rng.pick(DATASETS).to_string(),
        SubjectField::Deployment => rng.pick(DEPLOYMENTS).to_string(),
        other => format!("{}-{n}", other.as_str()),
    }
}

/// A random event. About one in ten reuses an id written earlier or earlier in the batch: nine
/// times in ten as an exact retry (a duplicate), otherwise with other content (a conflict).
fn random_spec(rng: &mut Rng, n: u64, earlier: &[&Spec], in_batch: &[Spec]) -> Spec {
    let r = rng.below(100);
    let repeat_of = if r < 5 && !earlier.is_empty() {
        Some((*rng.pick(earlier)).clone())
    } else if r < 10 && !in_batch.is_empty() {
        Some(rng.pick(in_batch).clone())
    } else {
        None
    };
    if let Some(original) = &repeat_of {
        if rng.chance(90) {
            return original.clone();
        }
    }
    let id = if let Some(original) = &repeat_of {
        original.id
    } else if r < 13 {
        None // the store generates one
    } else {
        Some(rng.id())
    };
    let time_ns = if rng.chance(95) {
        Some(BASE_NS + rng.below(SPAN_NS as u64) as i64)
    } else {
        None
    };
    let kind = rng.pick(KINDS).to_string();
    let required = common::required_subjects(&kind);
    let mut subjects = Vec::new();
    for field in [
        SubjectField::Model,
        SubjectField::Version,
        SubjectField::Dataset,
        SubjectField::Run,
        SubjectField::Deployment,
        SubjectField::Request,
    ] {
        if required.contains(&field) || rng.chance(35) {
            let value = pool_value(rng, field, n);
            let numeric = value.bytes().all(|b| b.is_ascii_digit()) && rng.chance(50);
            subjects.push((field, value, numeric));
        }
    }
    subjects.sort_by_key(|(f, _, _)| *f);
    let actor_type = if rng.chance(50) {
        ActorType::User
    } else {
        ActorType::Service
    };
    Spec {
        id,
        time_ns,
        kind,
        actor_id: rng.pick(ACTORS).to_string(),
        actor_type,
        subjects,
        n,
    }
}

fn random_query(rng: &mut Rng, model: &Model) -> Query {
    let mut q = Query::default();
    let maybe = |rng: &mut Rng, pool: &[&str]| -> Option<String> {
        if rng.chance(25) {
            // Now and then a value nobody used.
            Some(if rng.chance(10) {
                "no-such-value".to_owned()
            } else {
                rng.pick(pool).to_string()
            })
        } else {
            None
        }
    };
    q.kind = maybe(rng, KINDS);
    q.actor = maybe(rng, ACTORS);
    q.model = maybe(rng, MODELS);
    q.version = maybe(rng, VERSIONS);
    q.run = maybe(rng, RUNS);
    q.dataset = maybe(rng, DATASETS);
    q.deployment = maybe(rng, DEPLOYMENTS);
    if rng.chance(25) {
        q.stage = Some(*rng.pick(&Stage::ALL));
    }
    if rng.chance(30) {
        q.since_ns = Some(BASE_NS + rng.below(SPAN_NS as u64) as i64);
    }
    if rng.chance(30) {
        q.until_ns = Some(BASE_NS + rng.below(SPAN_NS as u64) as i64);
    }
    if rng.chance(30) {
        q.after_seq = Some(rng.below(model.len() + 3));
    }
    q.limit = *rng.pick(&[0usize, 1, 2, 5, 20, 100, usize::MAX, usize::MAX]);
    q
}

fn check_entry(store: &EmbeddedStore, e: &MEvent) {
    let stored = store.event(e.seq).unwrap();
    assert_eq!(stored.seq, e.seq);
    let entry = entry::decode(&stored.entry).unwrap();
    assert_eq!(entry.seq, e.seq);
    assert_eq!(entry.id, e.id, "seq {}", e.seq);
    assert_eq!(entry.kind, e.kind, "seq {}", e.seq);
    assert_eq!(entry.actor_id, e.actor_id, "seq {}", e.seq);
    assert_eq!(entry.actor_type, e.actor_type, "seq {}", e.seq);
    assert_eq!(entry.principal, "test", "seq {}", e.seq);
    assert_eq!(entry.subjects, e.subjects, "seq {}", e.seq);
    assert_eq!(entry.event_time_ns, e.time_ns, "seq {}", e.seq);
    assert_eq!(entry.payload_sha256, sha256(&e.payload), "seq {}", e.seq);
    assert_eq!(entry.payload_len as usize, e.payload.len(), "seq {}", e.seq);
    assert_eq!(
        stored.payload.as_deref(),
        Some(&e.payload[..]),
        "payload of seq {}",
        e.seq
    );
    // The entry bytes are canonical: re-encoding the decoded entry gives them back.
    assert_eq!(
        entry::encode(&entry).unwrap(),
        stored.entry,
        "seq {}",
        e.seq
    );
}

/// Checks every read path of the store against the model. Returns how many of the random
/// queries had a non-empty answer (so the test can make sure it tests something).
fn check_all(store: &EmbeddedStore, model: &Model, rng: &mut Rng) -> usize {
    assert_eq!(store.tree_size(), model.len());
    assert_eq!(store.checkpoint_sizes().unwrap(), model.checkpoints);
    for e in &model.events {
        assert_eq!(store.seq_of(&e.id).unwrap(), Some(e.seq), "seq_of {}", e.id);
        check_entry(store, e);
    }
    for _ in 0..3 {
        let unknown = rng.id();
        assert_eq!(store.seq_of(&unknown).unwrap(), None);
    }
    assert!(matches!(
        store.event(model.len()),
        Err(mlaudit_store::StoreError::NotFound(_))
    ));
    let mut nonempty = 0;
    for _ in 0..25 {
        let q = random_query(rng, model);
        let want = model.query(&q);
        nonempty += usize::from(!want.is_empty());
        assert_eq!(store.query(&q).unwrap(), want, "query {q:?}");
    }
    // A query with no filter and an unlimited limit lists everything.
    let all = Query {
        limit: usize::MAX,
        ..Query::default()
    };
    assert_eq!(
        store.query(&all).unwrap(),
        (0..model.len()).collect::<Vec<_>>()
    );
    // Scans from a random start yield exactly the events from there, in order.
    let from = rng.below(model.len() + 1);
    let mut seen = Vec::new();
    store
        .scan(from, &mut |ev| {
            seen.push((ev.seq, ev.payload.unwrap()));
            ControlFlow::Continue(())
        })
        .unwrap();
    let want: Vec<(u64, Vec<u8>)> = model.events[from as usize..]
        .iter()
        .map(|e| (e.seq, e.payload.clone()))
        .collect();
    assert_eq!(seen, want, "scan from {from}");
    nonempty
}

/// Appends one random batch and checks its receipt; returns the number of repeated ids.
fn append_batch(
    store: &EmbeddedStore,
    model: &mut Model,
    rng: &mut Rng,
    counter: &mut u64,
) -> usize {
    let n = rng.range(1, 51);
    let earlier: Vec<&Spec> = model.specs.values().collect();
    let mut specs: Vec<Spec> = Vec::new();
    for _ in 0..n {
        *counter += 1;
        let spec = random_spec(rng, *counter, &earlier, &specs);
        specs.push(spec);
    }
    let prepared: Vec<_> = specs.iter().map(Spec::prepare).collect();
    for (s, p) in specs.iter().zip(&prepared) {
        assert_eq!(p.payload, s.json().into_bytes());
        assert_eq!(p.event_time_ns, s.time_ns);
        assert_eq!(p.subjects, s.header_subjects());
    }
    if let Some((index, id)) = model.first_conflict(&specs) {
        let size = store.tree_size();
        match store.append(prepared) {
            Err(StoreError::Conflict { index: i, id: got }) => assert_eq!((i, got), (index, id)),
            other => panic!("a batch reusing {id} with other content: {other:?}"),
        }
        assert_eq!(store.tree_size(), size, "a refused batch writes nothing");
        model.conflicts += 1;
        return 0;
    }
    let before = now_ns();
    let receipt = store.append(prepared).unwrap();
    let after = now_ns();
    assert_eq!(receipt.events.len(), specs.len());
    let mut wrote_any = false;
    let mut repeats = 0;
    let mut receipt_times = Vec::new();
    for (spec, got) in specs.iter().zip(&receipt.events) {
        if let Some(&seq) = spec.id.and_then(|id| model.ids.get(&id)) {
            assert_eq!(
                *got,
                mlaudit_store::Appended {
                    id: spec.id.unwrap(),
                    seq,
                    duplicate: true
                },
                "a repeated id reports the original seq"
            );
            repeats += 1;
            continue;
        }
        let seq = model.len();
        assert_eq!(got.seq, seq);
        assert!(!got.duplicate);
        match spec.id {
            Some(id) => assert_eq!(got.id, id),
            None => assert!(!model.ids.contains_key(&got.id), "a generated id collides"),
        }
        wrote_any = true;
        let time_ns = match spec.time_ns {
            Some(t) => t,
            None => {
                // "At receipt": the store uses its receipt time, taken during the append.
                let entry = entry::decode(&store.event(seq).unwrap().entry).unwrap();
                assert_eq!(entry.event_time_ns, entry.receipt_time_ns);
                assert!(before <= entry.receipt_time_ns && entry.receipt_time_ns <= after);
                entry.event_time_ns
            }
        };
        receipt_times.push(
            entry::decode(&store.event(seq).unwrap().entry)
                .unwrap()
                .receipt_time_ns,
        );
        model.ids.insert(got.id, seq);
        if spec.id.is_some() {
            model.specs.insert(got.id, spec.clone());
        }
        model.events.push(MEvent {
            seq,
            id: got.id,
            kind: spec.kind.clone(),
            actor_id: spec.actor_id.clone(),
            actor_type: spec.actor_type,
            subjects: spec.header_subjects(),
            time_ns,
            payload: spec.json().into_bytes(),
        });
    }
    // One batch appended alone is one group: one receipt time for all its events.
    receipt_times.dedup();
    assert!(
        receipt_times.len() <= 1,
        "one group, one receipt time: {receipt_times:?}"
    );
    if wrote_any {
        model.checkpoints.push(model.len());
    }
    assert_eq!(receipt.tree_size, model.len());
    let cp = open_checkpoint(&verifier(), &receipt.checkpoint).unwrap();
    assert_eq!(
        cp.size,
        model.len(),
        "the receipt's checkpoint is for the new size"
    );
    repeats
}

fn checkpoint_root(store: &EmbeddedStore, size: u64) -> Hash {
    let note = store.checkpoint(size).unwrap().unwrap();
    let cp = open_checkpoint(&verifier(), &note).unwrap();
    assert_eq!(cp.size, size);
    cp.root
}

#[test]
fn random_batches_match_the_reference_model() {
    random_batches_match(Options::default(), 0x5eed_0001);
}

/// The same with the index's tail written out every few events: most lookups and queries
/// go through run files and their merges, across reopens.
#[test]
fn random_batches_match_the_reference_model_through_index_runs() {
    random_batches_match(common::small_runs(7), 0x5eed_0002);
    random_batches_match(common::small_runs(64), 0x5eed_0003);
}

/// And with small segments, sealed and packed in the background as the log grows, across
/// reopens, beside small index runs and their merges.
#[test]
fn random_batches_match_the_reference_model_through_packed_segments() {
    let options = Options {
        segment_target: 16 << 10,
        ..common::small_runs(16)
    };
    random_batches_match(options, 0x5eed_0004);
}

fn random_batches_match(options: Options, seed: u64) {
    let dir = TempDir::new("model");
    let mut rng = Rng::new(seed);
    let mut model = Model::default();
    let (mut store, report) = open_with(dir.path(), options);
    // A new log signs the empty tree at open.
    assert_eq!(report.signed_at_open, Some(0));
    model.checkpoints.push(0);
    let mut counter = 0u64;
    let (mut repeats, mut nonempty) = (0, 0);
    for round in 0..30 {
        repeats += append_batch(&store, &mut model, &mut rng, &mut counter);
        nonempty += check_all(&store, &model, &mut rng);
        if round % 4 == 3 {
            drop(store);
            let (s, report) = open_with(dir.path(), options);
            store = s;
            assert_eq!(report.events, model.len());
            assert_eq!(report.truncated, None);
            assert_eq!(report.rebuilt, None);
            assert_eq!(report.replayed, 0, "a clean close leaves nothing to replay");
            assert_eq!(
                report.signed_at_open, None,
                "the latest checkpoint covers everything"
            );
            nonempty += check_all(&store, &model, &mut rng);
        }
    }
    assert!(repeats >= 30, "only {repeats} repeated ids were tried");
    assert!(
        model.conflicts >= 3,
        "only {} conflicting batches were tried",
        model.conflicts
    );
    assert!(
        nonempty >= 200,
        "only {nonempty} random queries had matches"
    );
    assert!(
        model.len() > 300,
        "the test exercised a sizeable log ({} events)",
        model.len()
    );
    assert!(model.ids.len() as u64 == model.len());

    // Full verification, and the recomputed root is the latest checkpoint's.
    let report = run_verify(&store).unwrap();
    assert_eq!(report.events, model.len());
    assert_eq!(report.checkpoints, model.checkpoints.len() as u64);
    assert_eq!(report.unsigned_tail, 0);
    assert_eq!(report.redacted, 0);
    assert_eq!(report.root, checkpoint_root(&store, model.len()));

    // Every checkpoint signs the root of the prefix recomputed here from the stored entries.
    let mut range = CompactRange::new();
    let mut roots = HashMap::new();
    roots.insert(0u64, range.root());
    for e in &model.events {
        range.push(leaf_hash(&store.event(e.seq).unwrap().entry), |_, _, _| {});
        roots.insert(range.size(), range.root());
    }
    for &size in &model.checkpoints {
        assert_eq!(
            checkpoint_root(&store, size),
            roots[&size],
            "checkpoint {size}"
        );
    }

    // Inclusion bundles against the latest checkpoint, and raw inclusion proofs against random
    // earlier checkpoints.
    let key = verifier();
    for _ in 0..40 {
        let seq = rng.below(model.len());
        let bundle = inclusion_bundle(&store, seq).unwrap();
        let v = bundle.verify(&key).unwrap();
        assert_eq!(v.entry.seq, seq);
        assert_eq!(v.entry.id, model.events[seq as usize].id);
        assert_eq!(v.root, roots[&model.len()]);
        let covering: Vec<u64> = model
            .checkpoints
            .iter()
            .copied()
            .filter(|s| *s > seq)
            .collect();
        let size = *rng.pick(&covering);
        let path = merkle::inclusion_proof(&Nodes(&store), seq, size)
            .unwrap()
            .unwrap();
        let leaf = leaf_hash(&store.event(seq).unwrap().entry);
        merkle::verify_inclusion(seq, size, &leaf, &path, &checkpoint_root(&store, size)).unwrap();
        // The same path does not prove another leaf.
        let other = leaf_hash(&store.event((seq + 1) % model.len()).unwrap().entry);
        assert!(
            merkle::verify_inclusion(seq, size, &other, &path, &checkpoint_root(&store, size))
                .is_err()
        );
    }
    let nonzero: Vec<u64> = model
        .checkpoints
        .iter()
        .copied()
        .filter(|s| *s > 0)
        .collect();
    for _ in 0..40 {
        let a = *rng.pick(&nonzero);
        let b = *rng.pick(&nonzero);
        let (from, to) = (a.min(b), a.max(b));
        let proof = consistency(&store, from, to).unwrap();
        let (old, new) = proof.verify(&key).unwrap();
        assert_eq!((old.size, new.size), (from, to));
        assert_eq!((old.root, new.root), (roots[&from], roots[&to]));
    }
    // The sizes a page at a time (as `verify` reads them) are the sizes.
    let all = store.checkpoint_sizes().unwrap();
    let (mut paged, mut after) = (Vec::new(), None);
    loop {
        let page = store.checkpoint_sizes_after(after, 3).unwrap();
        let Some(last) = page.last().copied() else {
            break;
        };
        after = Some(last);
        paged.extend(page);
    }
    assert_eq!(paged, all);
    store.settle();
    drop(store);
    let runs = std::fs::read_dir(dir.path())
        .unwrap()
        .filter(|e| {
            let name = e.as_ref().unwrap().file_name();
            name.to_string_lossy().starts_with("run-")
        })
        .count() as u64;
    if options.run_events < model.len() {
        // Merged as a binary counter: about log2(events / run_events) + 1 runs.
        let most = 64 - (model.len() / options.run_events).leading_zeros() as u64 + 1;
        assert!(
            (1..=most).contains(&runs),
            "{runs} index runs for {} events of runs of {}",
            model.len(),
            options.run_events
        );
    }
    let segs = common::segments(dir.path());
    let packed = segs
        .iter()
        .filter(|p| common::file_name(p).ends_with(".zst"))
        .count();
    if options.segment_target < 1 << 20 {
        assert!(
            packed >= 3 && packed + 1 == segs.len(),
            "{packed} of {} segments packed",
            segs.len()
        );
    }
}

/// The upper tree levels are served from memory once read: as the log grows past several
/// nodes of those levels (and is reopened), every stored node still equals the naive
/// recomputation, and proofs at every size verify against the signed roots.
#[test]
fn cached_upper_tree_levels_stay_equal_to_the_recomputed_tree_as_the_log_grows() {
    let dir = TempDir::new("upper-levels");
    let (mut store, _) = open(dir.path());
    let mut leaves = Vec::new();
    let mut n = 0u64;
    for round in 0..12u64 {
        let batch: Vec<_> = (0..700)
            .map(|_| {
                n += 1;
                Spec::simple(
                    EventId(uuid::Uuid::from_u64_pair(0xcafe, n).into_bytes()),
                    "x.grow",
                    n,
                )
                .prepare()
            })
            .collect();
        store.append(batch).unwrap();
        if round == 6 {
            drop(store);
            store = open(dir.path()).0;
        }
        let size = store.tree_size();
        while (leaves.len() as u64) < size {
            leaves.push(leaf_hash(&store.event(leaves.len() as u64).unwrap().entry));
        }
        for level in 4..=13u32 {
            let count = size >> level;
            let stored = store.nodes(level, 0, count).unwrap();
            for (i, h) in stored.iter().enumerate() {
                let span = 1usize << level;
                assert_eq!(
                    *h,
                    root_of(&leaves[i * span..(i + 1) * span]),
                    "level {level} node {i} at size {size}"
                );
            }
        }
        let root = checkpoint_root(&store, size);
        for seq in [0, 15, 16, size / 3, size - 17, size - 16, size - 1] {
            let path = merkle::inclusion_proof(&Nodes(&store), seq, size)
                .unwrap()
                .unwrap();
            assert!(
                merkle::verify_inclusion(seq, size, &leaves[seq as usize], &path, &root).is_ok(),
                "seq {seq} at size {size}"
            );
            // The engine's own path (one read of the event's 16-event block) is the same path.
            let (event, engine_path) = store.inclusion_material(seq, size).unwrap();
            assert_eq!(
                (event.seq, engine_path.unwrap()),
                (seq, path),
                "seq {seq} at size {size}"
            );
            assert_eq!(leaf_hash(&event.entry), leaves[seq as usize]);
        }
    }
    assert!(n >= 8 * 1024);
}

fn root_of(leaves: &[Hash]) -> Hash {
    let mut range = CompactRange::new();
    for leaf in leaves {
        range.push(*leaf, |_, _, _| {});
    }
    range.root()
}
