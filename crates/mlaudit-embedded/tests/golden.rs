//! Golden on-disk fixture: a small store written once by `generate_golden_fixture` and
//! committed under `tests/fixtures/golden-v1/`, with what it must contain in
//! `tests/fixtures/golden-v1.json`. The tests open a copy of it with today's code, so any change
//! to the segment framing, the entry header, leaf hashing, checkpoints or the derived files'
//! layout that would make existing logs unreadable (or read differently) fails here.
//!
//! The entries carry receipt times taken from the clock when the fixture was generated, so the
//! fixture cannot be regenerated identically: it was generated once and committed. Regenerate
//! (`MLAUDIT_REGENERATE_GOLDEN=1 cargo test -p mlaudit-embedded --test golden -- --ignored
//! generate_golden_fixture`) only for a deliberate format change, together with a new fixture
//! version.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{copy_dir, records, TempDir};
use mlaudit_core::entry::{self, EventId, SubjectField};
use mlaudit_core::merkle::{hex, leaf_hash, Hash};
use mlaudit_core::note::{open_checkpoint, NoteSigner};
use mlaudit_embedded::{record, EmbeddedStore};
use mlaudit_store::prelude::*;
use mlaudit_store::verify::verify;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};

const FIXTURE: &str = "golden-v1";
const REGENERATE_VAR: &str = "MLAUDIT_REGENERATE_GOLDEN";

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests")
        .join("fixtures")
}

fn golden_signer() -> NoteSigner {
    NoteSigner::from_seed("golden.mlaudit.test", [42; 32]).unwrap()
}

/// The fixture's events, by batch. Fixed ids and event times; catalogue and custom kinds.
const BATCHES: &[&[&str]] = &[
    &[
        r#"{"id":"00000000-0000-4000-8000-000000000001","time":"2026-01-01T00:00:00Z","kind":"data.source_accessed","actor":{"id":"etl","type":"service"},"subject":{"dataset":"loans"},"attributes":{"source":"s3://bucket/loans.csv"}}"#,
        r#"{"id":"00000000-0000-4000-8000-000000000002","time":"2026-01-01T00:01:00.5Z","kind":"training.run_started","actor":{"id":"alice","type":"user"},"subject":{"run":"run-1","model":"credit"},"attributes":{"hyperparameters":{"lr":0.01},"random_seed":7,"datasets":["loans@1"]}}"#,
    ],
    &[
        r#"{"id":"00000000-0000-4000-8000-000000000003","time":"2026-01-01T01:00:00Z","kind":"registry.model_registered","actor":{"id":"alice","type":"user"},"subject":{"model":"credit","version":1,"run":"run-1"},"attributes":{"artifact_sha256":"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"}}"#,
        r#"{"id":"00000000-0000-4000-8000-000000000004","time":"2026-01-01T02:00:00Z","kind":"registry.approval_granted","actor":{"id":"bob","type":"user"},"subject":{"model":"credit","version":"1"},"attributes":{"approver":"bob","reason":"validation passed"}}"#,
        r#"{"id":"00000000-0000-4000-8000-000000000005","time":"2026-01-01T03:00:00Z","kind":"operations.deployed","actor":{"id":"cd","type":"service"},"subject":{"deployment":"dep-eu","model":"credit","version":"1"},"attributes":{"environment":"prod"}}"#,
    ],
    &[
        r#"{"id":"00000000-0000-4000-8000-000000000006","time":"2026-01-02T00:00:00Z","kind":"prediction.served","actor":{"id":"scorer","type":"service"},"subject":{"model":"credit","version":"1","request":"req-1"},"attributes":{"inputs":{"x":1},"outputs":{"y":0.5}}}"#,
        r#"{"id":"00000000-0000-4000-8000-000000000007","time":"2026-01-02T00:00:01Z","kind":"x.custom_note","actor":{"id":"ops","type":"user"},"attributes":{"text":"héllo"}}"#,
    ],
];

#[test]
#[ignore = "writes the committed fixture; run only for a deliberate format change"]
fn generate_golden_fixture() {
    // Also guarded by an environment variable, so that `--include-ignored` runs (which run this
    // concurrently with the tests reading the fixture) never rewrite it.
    if std::env::var_os(REGENERATE_VAR).is_none() {
        eprintln!("set {REGENERATE_VAR}=1 to regenerate the golden fixture");
        return;
    }
    let out = fixtures().join(FIXTURE);
    if out.exists() {
        std::fs::remove_dir_all(&out).unwrap();
    }
    let tmp = TempDir::new("golden-gen");
    let signer = golden_signer();
    let (store, _) = EmbeddedStore::open(tmp.path(), Some(signer.clone())).unwrap();
    for batch in BATCHES {
        let events = batch
            .iter()
            .map(|j| mlaudit_core::event::prepare(j, "golden-principal").unwrap())
            .collect();
        store.append(events).unwrap();
    }
    let size = store.tree_size();
    let report = verify(&store, &signer.verifier(), &mut |_, _| {}).unwrap();
    let mut events = Vec::new();
    for seq in 0..size {
        let ev = store.event(seq).unwrap();
        let e = entry::decode(&ev.entry).unwrap();
        events.push(json!({"seq": seq, "id": e.id.to_string(), "leaf_hash_hex": leaf_hash(&ev.entry).to_hex()}));
    }
    let first_entry = store.event(0).unwrap().entry;
    let expected = json!({
        "origin": signer.name(),
        "verifier_key": signer.verifier().to_text(),
        "tree_size": size,
        "root_hex": report.root.to_hex(),
        "checkpoint_sizes": store.checkpoint_sizes().unwrap(),
        "events": events,
        "first_entry_hex": hex(&first_entry),
    });
    drop(store);
    copy_dir(tmp.path(), &out);
    std::fs::write(
        fixtures().join(format!("{FIXTURE}.json")),
        serde_json::to_string_pretty(&expected).unwrap() + "\n",
    )
    .unwrap();
}

fn expected() -> Value {
    let text = std::fs::read_to_string(fixtures().join(format!("{FIXTURE}.json"))).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

fn u64s(v: &Value) -> Vec<u64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap())
        .collect()
}

/// A temp copy of the committed fixture (the tests never write to the fixture itself).
fn fixture_copy() -> TempDir {
    let src = fixtures().join(FIXTURE);
    assert!(
        src.join("derived.meta").exists(),
        "the committed fixture is missing: {}",
        src.display()
    );
    TempDir::copy_of(&src, "golden")
}

#[test]
fn golden_fixture_opens_with_the_expected_contents_and_verifies() {
    let want = expected();
    let signer = golden_signer();
    assert_eq!(want["origin"], signer.name());
    assert_eq!(
        want["verifier_key"],
        signer.verifier().to_text(),
        "key derivation from the seed changed"
    );
    let copy = fixture_copy();
    // Read-only: no key needed to read and verify.
    let (store, report) = EmbeddedStore::open(copy.path(), None).unwrap();
    let size = want["tree_size"].as_u64().unwrap();
    assert_eq!(report.events, size);
    assert_eq!(
        (
            report.truncated.clone(),
            report.rebuilt.clone(),
            report.replayed,
            report.signed_at_open
        ),
        (None, None, 0, None),
        "{report:?}"
    );
    assert_eq!(store.tree_size(), size);
    assert_eq!(
        store.checkpoint_sizes().unwrap(),
        u64s(&want["checkpoint_sizes"])
    );
    let root = Hash::from_slice(&unhex(want["root_hex"].as_str().unwrap())).unwrap();
    let v = verify(&store, &signer.verifier(), &mut |_, _| {}).unwrap();
    assert_eq!(v.root, root);
    assert_eq!(v.events, size);
    assert_eq!(
        v.checkpoints,
        want["checkpoint_sizes"].as_array().unwrap().len() as u64
    );
    let latest = open_checkpoint(
        &signer.verifier(),
        &store.checkpoint(size).unwrap().unwrap(),
    )
    .unwrap();
    assert_eq!(latest.root, root);
    let events = want["events"].as_array().unwrap();
    assert_eq!(events.len() as u64, size);
    for e in events {
        let seq = e["seq"].as_u64().unwrap();
        let id = EventId::parse(e["id"].as_str().unwrap()).unwrap();
        assert_eq!(store.seq_of(&id).unwrap(), Some(seq));
        let stored = store.event(seq).unwrap();
        let leaf = leaf_hash(&stored.entry);
        assert_eq!(
            leaf.to_hex(),
            e["leaf_hash_hex"].as_str().unwrap(),
            "leaf of seq {seq}"
        );
        assert_eq!(
            store.node(0, seq).unwrap(),
            leaf,
            "stored leaf of seq {seq}"
        );
        // The payload is the event's JSON exactly as submitted.
        let batch_json = BATCHES
            .iter()
            .flat_map(|b| b.iter())
            .nth(seq as usize)
            .unwrap();
        assert_eq!(stored.payload.as_deref(), Some(batch_json.as_bytes()));
    }
    assert_eq!(
        hex(&store.event(0).unwrap().entry),
        want["first_entry_hex"].as_str().unwrap()
    );
    // The derived indexes answer queries over the fixture as they did when it was written.
    let q = |f: fn(&mut mlaudit_store::Query)| {
        let mut q = mlaudit_store::Query {
            limit: usize::MAX,
            ..Default::default()
        };
        f(&mut q);
        store.query(&q).unwrap()
    };
    assert_eq!(q(|q| q.model = Some("credit".into())), vec![1, 2, 3, 4, 5]);
    assert_eq!(q(|q| q.version = Some("1".into())), vec![2, 3, 4, 5]);
    assert_eq!(q(|q| q.actor = Some("alice".into())), vec![1, 2]);
    assert_eq!(
        q(|q| q.stage = Some(mlaudit_core::event::Stage::Custom)),
        vec![6]
    );
    assert_eq!(
        q(|q| q.since_ns = mlaudit_core::event::parse_time("2026-01-01T01:00:00Z")),
        vec![2, 3, 4, 5, 6]
    );
}

#[test]
fn golden_segment_frames_the_first_entry_byte_for_byte() {
    let want = expected();
    let first = unhex(want["first_entry_hex"].as_str().unwrap());
    let seg = std::fs::read(
        fixtures()
            .join(FIXTURE)
            .join("seg-00000000000000000000.log"),
    )
    .unwrap();
    let recs = records(&seg);
    // The empty tree's checkpoint, then the first event.
    assert_eq!(recs[0].kind, record::CHECKPOINT);
    assert_eq!(recs[1].kind, record::EVENT);
    assert_eq!(&seg[recs[1].a()], &first[..]);
    assert_eq!(
        recs.iter().filter(|r| r.kind == record::EVENT).count() as u64,
        want["tree_size"].as_u64().unwrap()
    );
    // Decoding and re-encoding the committed entry reproduces it exactly.
    let e = entry::decode(&first).unwrap();
    assert_eq!(entry::encode(&e).unwrap(), first);
    assert_eq!(e.seq, 0);
    assert_eq!(
        e.id,
        EventId::parse("00000000-0000-4000-8000-000000000001").unwrap()
    );
    assert_eq!(e.kind, "data.source_accessed");
    assert_eq!(e.actor_id, "etl");
    assert_eq!(e.principal, "golden-principal");
    assert_eq!(
        e.subjects,
        vec![(SubjectField::Dataset, "loans".to_owned())]
    );
    assert_eq!(
        e.event_time_ns,
        mlaudit_core::event::parse_time("2026-01-01T00:00:00Z").unwrap()
    );
    assert_eq!(e.payload_len as usize, BATCHES[0][0].len());
    // And re-framing the record reproduces the committed record bytes.
    let again = common::reframe(record::EVENT, &seg[recs[1].a()], &seg[recs[1].b()]);
    assert_eq!(&seg[recs[1].range()], &again[..]);
}

/// A flipped payload byte in a record the watermark covers: opening does not read that record
/// (it replays only the segments past `derived.meta`'s log position, and the fixture's
/// watermark covers the whole log: FORMAT.md §7), so the store opens as it is; `verify`, which
/// reads every record and checks every payload (§7), reports the damage at the event's seq and
/// the record's file offset.
#[test]
fn golden_copy_with_a_flipped_payload_byte_opens_and_fails_verify() {
    let copy = fixture_copy();
    let seg_path = copy.path().join("seg-00000000000000000000.log");
    let seg = std::fs::read(&seg_path).unwrap();
    let events: Vec<_> = records(&seg)
        .into_iter()
        .filter(|r| r.kind == record::EVENT)
        .collect();
    let rec = events[3];
    common::flip(&seg_path, rec.b().start as u64 + 10, 0x01);
    let (store, report) = match EmbeddedStore::open(copy.path(), None) {
        Ok(opened) => opened,
        Err(e) => panic!("opening read a record the watermark covers: {e}"),
    };
    assert_eq!(
        (report.truncated, report.rebuilt, report.replayed),
        (None, None, 0),
        "nothing past the watermark to replay or repair"
    );
    let f = verify(&store, &golden_signer().verifier(), &mut |_, _| {}).unwrap_err();
    assert_eq!(f.seq, Some(3), "{f}");
    assert_eq!(f.problem, "record checksum mismatch", "{f}");
    assert!(
        f.location
            .contains(&format!("seg-00000000000000000000.log:{}", rec.off)),
        "{f}"
    );
}
