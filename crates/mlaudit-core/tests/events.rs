//! Validation of the v1 event catalogue (`mlaudit_core::event::prepare`) and round-trips of the
//! entry header (`mlaudit_core::entry`), including deterministic random-input loops that must
//! never panic.

#![allow(clippy::needless_range_loop)]

use mlaudit_core::entry::{
    self, ActorType, Entry, EntryError, EventId, SubjectField, MAX_ID_LEN, MAX_KIND_LEN,
};
use mlaudit_core::event::{
    catalogue_kinds, format_time, parse_time, prepare, prepare_reserved, EventError, PreparedEvent,
    Stage, MAX_ATTRIBUTES, MAX_ATTRIBUTES_BYTES, MAX_EVENT_BYTES, RESERVED_KINDS,
};
use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};
use std::collections::BTreeSet;

// ---------------------------------------------------------------------------------------------
// The catalogue's requirements, restated independently of src/event.rs.
// ---------------------------------------------------------------------------------------------

mod catalogue;

use catalogue::*;

fn field(name: &str) -> SubjectField {
    SubjectField::ALL
        .into_iter()
        .find(|f| f.as_str() == name)
        .unwrap_or_else(|| panic!("no subject field {name}"))
}

fn text(e: &Map<String, Value>) -> String {
    serde_json::to_string(e).unwrap_or_else(|err| panic!("{err}"))
}

/// The catalogue's rules, as the server applies them to the events it writes itself: the
/// reserved kinds are validated like every other (clients may not submit them at all; see
/// `clients_may_not_submit_reserved_kinds`).
fn must_prepare(json: &str) -> PreparedEvent {
    prepare_reserved(json, "token:ingest").unwrap_or_else(|e| panic!("rejected: {e}\n{json}"))
}

fn err(json: &str) -> EventError {
    match prepare_reserved(json, "token:ingest") {
        Ok(p) => panic!("accepted {json}\n{p:?}"),
        Err(e) => e,
    }
}

/// The entry header a store would write for a prepared event.
fn entry_of(p: &PreparedEvent, seq: u64) -> Entry {
    Entry {
        seq,
        event_time_ns: p.event_time_ns.unwrap_or(0),
        receipt_time_ns: 1,
        id: p.id.unwrap_or(EventId([0; 16])),
        payload_sha256: p.payload_sha256,
        payload_len: p.payload.len() as u32,
        actor_type: p.actor_type,
        kind: p.kind.clone(),
        actor_id: p.actor_id.clone(),
        principal: p.principal.clone(),
        subjects: p.subjects.clone(),
    }
}

/// Everything a `PreparedEvent` promises, checked on any accepted input.
fn check_invariants(input: &str, p: &PreparedEvent) {
    assert_eq!(
        p.payload,
        input.trim().as_bytes(),
        "payload is the input, trimmed"
    );
    assert_eq!(
        p.payload_sha256,
        <[u8; 32]>::from(Sha256::digest(&p.payload)),
        "payload hash"
    );
    assert!(p.payload.len() <= MAX_EVENT_BYTES);
    assert!(
        !p.kind.is_empty() && p.kind.len() <= MAX_KIND_LEN,
        "kind {:?}",
        p.kind
    );
    assert!(
        catalogue_kinds().any(|k| k == p.kind) || (p.kind.starts_with("x.") && p.kind.len() > 2),
        "kind {:?}",
        p.kind
    );
    assert_eq!(Stage::of_kind(&p.kind), Some(p.stage()));
    assert!(
        !p.actor_id.is_empty() && p.actor_id.len() <= MAX_ID_LEN,
        "actor id"
    );
    for w in p.subjects.windows(2) {
        assert!(
            w[0].0 < w[1].0,
            "subjects not strictly sorted: {:?}",
            p.subjects
        );
    }
    for (f, v) in &p.subjects {
        assert!(
            !v.is_empty() && v.len() <= MAX_ID_LEN,
            "subject {f:?} = {v:?}"
        );
    }
    if let Some((_, subjects, _)) = SPEC.iter().find(|(k, _, _)| *k == p.kind) {
        for s in *subjects {
            assert!(
                p.subjects.iter().any(|(f, _)| f.as_str() == *s),
                "{}: accepted without subject.{s}",
                p.kind
            );
        }
    }
    // A prepared event always fits in an entry header.
    let e = entry_of(p, 9);
    let bytes = entry::encode(&e)
        .unwrap_or_else(|err| panic!("prepared event does not encode: {err}\n{p:?}"));
    assert_eq!(entry::decode(&bytes), Ok(e));
}

// ---------------------------------------------------------------------------------------------
// The catalogue.
// ---------------------------------------------------------------------------------------------

#[test]
fn spec_table_covers_the_catalogue_exactly() {
    let ours: BTreeSet<&str> = SPEC.iter().map(|(k, _, _)| *k).collect();
    let theirs: BTreeSet<&str> = catalogue_kinds().collect();
    assert_eq!(ours, theirs);
    assert_eq!(SPEC.len(), 24);
    for kind in catalogue_kinds() {
        let stage = Stage::of_kind(kind).unwrap_or_else(|| panic!("no stage for {kind}"));
        assert_eq!(Some(stage.as_str()), kind.split('.').next(), "{kind}");
        assert_eq!(Stage::parse(stage.as_str()), Some(stage));
    }
    assert_eq!(Stage::of_kind("x.foo"), Some(Stage::Custom));
    assert_eq!(Stage::of_kind("data.nope"), None);
    assert_eq!(Stage::parse("custom"), Some(Stage::Custom));
}

#[test]
fn every_kind_has_a_valid_example() {
    for (kind, e) in examples() {
        let json = text(&e);
        let p = must_prepare(&json);
        check_invariants(&json, &p);
        assert_eq!(p.kind, kind);
        assert_eq!(p.id, EventId::parse(ID));
        assert_eq!(p.id.map(|i| i.to_string()).as_deref(), Some(ID));
        assert_eq!(p.event_time_ns, Some(TIME_NS));
        assert_eq!(p.actor_type, ActorType::Service);
        assert_eq!(p.actor_id, "pipeline@ci");
        assert_eq!(p.principal, "token:ingest");
        let subject = e["subject"]
            .as_object()
            .unwrap_or_else(|| panic!("no subject"));
        let mut want: Vec<(SubjectField, String)> = subject
            .iter()
            .map(|(k, v)| {
                (
                    field(k),
                    v.as_str().map_or_else(|| v.to_string(), str::to_owned),
                )
            })
            .collect();
        want.sort();
        assert_eq!(p.subjects, want, "{kind}");
        assert_eq!(
            p.stage().as_str(),
            if kind.starts_with("x.") {
                "custom"
            } else {
                kind.split('.').next().unwrap_or("")
            }
        );
    }
}

#[test]
fn optional_parts_may_be_absent_or_null() {
    // id and time are optional; an empty custom event is valid.
    let p = must_prepare(r#"{"kind":"x.foo","actor":{"id":"a","type":"user"}}"#);
    assert_eq!((p.id, p.event_time_ns, p.subjects.len()), (None, None, 0));
    assert_eq!(p.actor_type, ActorType::User);
    let p = must_prepare(
        r#"{"id":null,"time":null,"kind":"x.foo","actor":{"id":"a","type":"user"},"subject":null,"attributes":null}"#,
    );
    assert_eq!((p.id, p.event_time_ns), (None, None));
    must_prepare(
        r#"{"kind":"governance.audit_accessed","actor":{"id":"a","type":"user"},"subject":{},"attributes":{}}"#,
    );
    // Identity attributes may be strings; versions may be strings or integers.
    let mut e = example(
        "registry.approval_rejected",
        &["model", "version"],
        &["approver", "reason"],
    );
    e["attributes"]["approver"] = json!("bob@example.com");
    must_prepare(&text(&e));
    let mut e = example(
        "operations.rolled_back",
        &["deployment"],
        &["from_version", "to_version", "trigger"],
    );
    e["attributes"]["from_version"] = json!("v8");
    e["attributes"]["to_version"] = json!(7);
    must_prepare(&text(&e));
    // Optional prediction attributes, valid values.
    let mut e = example(
        "prediction.served",
        &["model", "version", "request"],
        &["inputs", "outputs"],
    );
    e["attributes"]["confidence"] = json!(0.97);
    e["attributes"]["latency_ms"] = json!(12);
    e["attributes"]["sample_rate"] = json!(1);
    must_prepare(&text(&e));
    // Other UUID forms are accepted and normalized.
    for form in [
        "6F9619FF8B86D011B42D00C04FC964FF",
        "{6f9619ff-8b86-d011-b42d-00c04fc964ff}",
        "urn:uuid:6f9619ff-8b86-d011-b42d-00c04fc964ff",
    ] {
        let p = must_prepare(&format!(
            r#"{{"id":"{form}","kind":"x.foo","actor":{{"id":"a","type":"user"}}}}"#
        ));
        assert_eq!(p.id.map(|i| i.to_string()).as_deref(), Some(ID), "{form}");
    }
    // Time offsets are normalized to UTC nanoseconds.
    let p = must_prepare(
        r#"{"time":"2026-01-31T13:00:00.5+01:00","kind":"x.foo","actor":{"id":"a","type":"user"}}"#,
    );
    assert_eq!(p.event_time_ns, Some(TIME_NS + 500_000_000));
    assert_eq!(parse_time(TIME), Some(TIME_NS));
    assert_eq!(format_time(TIME_NS), TIME);
    assert_eq!(parse_time(&format_time(TIME_NS + 123)), Some(TIME_NS + 123));
    assert_eq!(parse_time("1969-12-31T23:59:59.5Z"), Some(-500_000_000));
}

#[test]
fn removing_any_requirement_names_it() {
    for (kind, subjects, attrs) in SPEC {
        let full = example(kind, subjects, attrs);
        for s in *subjects {
            let want = format!("{kind}: subject.{s} is required");
            let mut e = full.clone();
            e["subject"].as_object_mut().map(|o| o.remove(*s));
            assert_eq!(err(&text(&e)).to_string(), want);
            let mut e = full.clone();
            e["subject"][*s] = Value::Null;
            assert_eq!(err(&text(&e)).to_string(), want, "null counts as absent");
            assert_eq!(
                err(&text(&e)),
                EventError::Requirement {
                    kind: (*kind).into(),
                    field: format!("subject.{s}"),
                    problem: "is required".into()
                }
            );
        }
        for a in *attrs {
            let want = format!("{kind}: attributes.{a} is required");
            let mut e = full.clone();
            e["attributes"].as_object_mut().map(|o| o.remove(*a));
            assert_eq!(err(&text(&e)).to_string(), want);
            let mut e = full.clone();
            e["attributes"][*a] = Value::Null;
            assert_eq!(err(&text(&e)).to_string(), want, "null counts as absent");
        }
        // Without the whole object, the first requirement is named.
        if let Some(first) = subjects.first() {
            let mut e = full.clone();
            e.remove("subject");
            assert_eq!(
                err(&text(&e)).to_string(),
                format!("{kind}: subject.{first} is required")
            );
        }
        if let Some(first) = attrs.first() {
            let mut e = full.clone();
            e.remove("attributes");
            assert_eq!(
                err(&text(&e)).to_string(),
                format!("{kind}: attributes.{first} is required")
            );
        }
    }
    // The example from the specification of this test.
    let mut e = example(
        "registry.approval_granted",
        &["model", "version"],
        &["approver", "reason"],
    );
    e["attributes"]
        .as_object_mut()
        .map(|o| o.remove("approver"));
    assert_eq!(
        err(&text(&e)).to_string(),
        "registry.approval_granted: attributes.approver is required"
    );
    // Top-level requirements.
    for (remove, want) in [("kind", "kind is required"), ("actor", "actor is required")] {
        let mut e = example("x.foo", &[], &[]);
        e.remove(remove);
        assert_eq!(err(&text(&e)).to_string(), want);
    }
}

/// Replaces one part of a valid event of `kind` and expects exactly `want` (or, when `want`
/// ends in `…`, a message starting with it).
fn expect_invalid(kind: &str, path: &[&str], value: Value, want: &str) {
    let (_, subjects, attrs) = SPEC
        .iter()
        .find(|(k, _, _)| *k == kind)
        .copied()
        .unwrap_or(("x.foo", &[], &[]));
    let mut e = Value::Object(example(kind, subjects, attrs));
    let mut slot = &mut e;
    for p in path {
        slot = &mut slot[*p];
    }
    *slot = value;
    let json = e.to_string();
    let got = err(&json).to_string();
    match want.strip_suffix('…') {
        Some(prefix) => assert!(got.starts_with(prefix), "{json}\n got: {got}\nwant: {want}"),
        None => assert_eq!(got, want, "{json}"),
    }
}

#[test]
fn malformed_values_give_clear_errors() {
    let split = ["attributes", "split"];
    let tr = "operations.traffic_routed";
    expect_invalid(
        tr,
        &split,
        json!({"7": 90, "8": 5}),
        "operations.traffic_routed: attributes.split percents sum to 95, not 100",
    );
    expect_invalid(
        tr,
        &split,
        json!({"7": 60, "8": 50}),
        "operations.traffic_routed: attributes.split percents sum to 110, not 100",
    );
    expect_invalid(tr, &split, json!({}), "operations.traffic_routed: attributes.split must map versions to percents between 0 and 100");
    expect_invalid(tr, &split, json!({"7": 150, "8": -50}), "operations.traffic_routed: attributes.split must map versions to percents between 0 and 100");
    expect_invalid(
        tr,
        &split,
        json!({"7": "100"}),
        "operations.traffic_routed: attributes.split must be an object of version -> percent",
    );
    expect_invalid(
        tr,
        &split,
        json!([100]),
        "operations.traffic_routed: attributes.split must be an object of version -> percent",
    );

    let sha = ["attributes", "content_sha256"];
    let sc = "data.snapshot_created";
    let bad_sha =
        "data.snapshot_created: attributes.content_sha256 must be 64 hex digits (a SHA-256)";
    expect_invalid(sc, &sha, json!("abc"), bad_sha);
    expect_invalid(sc, &sha, json!(&SHA[..63]), bad_sha);
    expect_invalid(sc, &sha, json!(format!("{SHA}0")), bad_sha);
    expect_invalid(sc, &sha, json!(format!("{}g", &SHA[..63])), bad_sha);
    expect_invalid(
        sc,
        &sha,
        json!(42),
        "data.snapshot_created: attributes.content_sha256 must be a string",
    );
    expect_invalid(
        sc,
        &sha,
        json!(""),
        "data.snapshot_created: attributes.content_sha256 must not be empty",
    );
    expect_invalid(
        "registry.model_registered",
        &["attributes", "artifact_sha256"],
        json!("sha256:abc"),
        "registry.model_registered: attributes.artifact_sha256 must be 64 hex digits (a SHA-256)",
    );

    let bad_time = "time must be an RFC 3339 time such as 2026-01-31T12:00:00Z";
    for t in [
        "yesterday",
        "2026-01-31",
        "2026-01-31T12:00:00",
        "2026-13-01T00:00:00Z",
        "2026-02-30T00:00:00Z",
        "",
        "9999-12-31T23:59:59Z",
    ] {
        expect_invalid("x.foo", &["time"], json!(t), bad_time);
    }
    expect_invalid(
        "x.foo",
        &["time"],
        json!(1769860800),
        "time must be a string",
    );

    for id in [
        "not-a-uuid",
        "",
        "6f9619ff-8b86-d011-b42d-00c04fc964f",
        "6f9619ff-8b86-d011-b42d-00c04fc964ffff",
        "zf9619ff-8b86-d011-b42d-00c04fc964ff",
    ] {
        expect_invalid("x.foo", &["id"], json!(id), "id must be a UUID");
    }
    expect_invalid("x.foo", &["id"], json!(42), "id must be a string");

    expect_invalid(
        "x.foo",
        &["actor", "type"],
        json!("robot"),
        "actor.type must be \"user\" or \"service\"",
    );
    expect_invalid(
        "x.foo",
        &["actor", "type"],
        json!("User"),
        "actor.type must be \"user\" or \"service\"",
    );
    expect_invalid(
        "x.foo",
        &["actor", "type"],
        Value::Null,
        "actor.type is required",
    );
    expect_invalid("x.foo", &["actor", "id"], json!(""), "actor.id is required");
    expect_invalid(
        "x.foo",
        &["actor", "id"],
        Value::Null,
        "actor.id is required",
    );
    expect_invalid(
        "x.foo",
        &["actor", "id"],
        json!("a".repeat(MAX_ID_LEN + 1)),
        "actor.id is longer than 1024 bytes",
    );
    expect_invalid("x.foo", &["actor", "id"], json!(7), "actor invalid type…");
    expect_invalid(
        "x.foo",
        &["actor", "team"],
        json!("x"),
        "actor unknown field `team`…",
    );
    expect_invalid(
        "x.foo",
        &["actor"],
        json!("alice"),
        "actor must be an object {\"id\": ..., \"type\": \"user\" | \"service\"}",
    );

    expect_invalid("x.foo", &["kind"], json!(5), "kind must be a string");
    expect_invalid(
        "x.foo",
        &["kind"],
        json!("data.unknown"),
        "unknown kind \"data.unknown\": use a catalogue kind or a custom kind x.<name>",
    );
    expect_invalid(
        "x.foo",
        &["kind"],
        json!("x."),
        "unknown kind \"x.\": use a catalogue kind or a custom kind x.<name>",
    );
    expect_invalid(
        "x.foo",
        &["kind"],
        json!(""),
        "unknown kind \"\": use a catalogue kind or a custom kind x.<name>",
    );
    expect_invalid(
        "x.foo",
        &["kind"],
        json!("Data.Source_Accessed"),
        "unknown kind \"Data.Source_Accessed\"…",
    );
    expect_invalid(
        "x.foo",
        &["kind"],
        json!(format!("x.{}", "k".repeat(MAX_KIND_LEN - 1))),
        "kind is longer than 128 bytes",
    );
    must_prepare(&json!({"kind": format!("x.{}", "k".repeat(MAX_KIND_LEN - 2)), "actor": {"id": "a", "type": "user"}}).to_string());

    expect_invalid(
        "x.foo",
        &["subject"],
        json!("credit-risk"),
        "subject must be an object",
    );
    expect_invalid(
        "x.foo",
        &["subject"],
        json!(["credit-risk"]),
        "subject must be an object",
    );
    expect_invalid(
        "x.foo",
        &["subject", "model"],
        json!(""),
        "subject.model must not be empty",
    );
    expect_invalid(
        "x.foo",
        &["subject", "model"],
        json!({"name": "m"}),
        "subject.model must be a string",
    );
    expect_invalid(
        "x.foo",
        &["subject", "model"],
        json!(1.5),
        "subject.model must be a string",
    );
    expect_invalid(
        "x.foo",
        &["subject", "model"],
        json!(true),
        "subject.model must be a string",
    );
    expect_invalid(
        "x.foo",
        &["subject", "model"],
        json!("m".repeat(MAX_ID_LEN + 1)),
        "subject.model is longer than 1024 bytes",
    );
    expect_invalid(
        "x.foo",
        &["subject", "team"],
        json!("risk"),
        "subject unknown field `team`…",
    );
    expect_invalid(
        "x.foo",
        &["attributes"],
        json!([1, 2]),
        "attributes must be an object",
    );
    expect_invalid(
        "x.foo",
        &["attributes"],
        json!("a=b"),
        "attributes must be an object",
    );

    let ps = "prediction.served";
    expect_invalid(
        ps,
        &["attributes", "sample_rate"],
        json!(0),
        "prediction.served: attributes.sample_rate must be in (0, 1]",
    );
    expect_invalid(
        ps,
        &["attributes", "sample_rate"],
        json!(1.5),
        "prediction.served: attributes.sample_rate must be in (0, 1]",
    );
    expect_invalid(
        ps,
        &["attributes", "sample_rate"],
        json!("all"),
        "prediction.served: attributes.sample_rate must be a number >= 0",
    );
    expect_invalid(
        ps,
        &["attributes", "confidence"],
        json!(-0.5),
        "prediction.served: attributes.confidence must be a number >= 0",
    );
    expect_invalid(
        ps,
        &["attributes", "latency_ms"],
        json!("12ms"),
        "prediction.served: attributes.latency_ms must be a number >= 0",
    );

    let rs = "training.run_started";
    expect_invalid(rs, &["attributes", "datasets"], json!(["loans"]), "training.run_started: attributes.datasets entry \"loans\" is not of the form dataset@version");
    expect_invalid(
        rs,
        &["attributes", "datasets"],
        json!(["@3"]),
        "training.run_started: attributes.datasets entry \"@3\" is not of the form dataset@version",
    );
    expect_invalid(
        rs,
        &["attributes", "datasets"],
        json!("loans@3"),
        "training.run_started: attributes.datasets must be a list of \"dataset@version\" strings",
    );
    expect_invalid(
        rs,
        &["attributes", "random_seed"],
        json!(1.5),
        "training.run_started: attributes.random_seed must be an integer",
    );
    expect_invalid(
        rs,
        &["attributes", "random_seed"],
        json!("42"),
        "training.run_started: attributes.random_seed must be an integer",
    );
    expect_invalid(
        rs,
        &["attributes", "hyperparameters"],
        json!([]),
        "training.run_started: attributes.hyperparameters must be an object",
    );
    expect_invalid(
        "data.transformation_applied",
        &["attributes", "inputs"],
        json!({}),
        "data.transformation_applied: attributes.inputs must be a list",
    );
    expect_invalid(
        "training.run_completed",
        &["attributes", "duration_s"],
        json!(-1),
        "training.run_completed: attributes.duration_s must be a number >= 0",
    );
    expect_invalid(
        "training.run_completed",
        &["attributes", "status"],
        json!(""),
        "training.run_completed: attributes.status must not be empty",
    );
    expect_invalid("data.source_accessed", &["attributes", "source"], json!("/data/raw"), "data.source_accessed: attributes.source must be a URI with a scheme, such as s3://bucket/key");
    expect_invalid("data.source_accessed", &["attributes", "source"], json!("s3:"), "data.source_accessed: attributes.source must be a URI with a scheme, such as s3://bucket/key");
    expect_invalid(
        "registry.approval_granted",
        &["attributes", "approver"],
        json!(""),
        "registry.approval_granted: attributes.approver must be a non-empty string or an object",
    );
    expect_invalid(
        "registry.approval_granted",
        &["attributes", "approver"],
        json!(7),
        "registry.approval_granted: attributes.approver must be a non-empty string or an object",
    );
    expect_invalid(
        "operations.rolled_back",
        &["attributes", "from_version"],
        json!({"v": 8}),
        "operations.rolled_back: attributes.from_version must be a version (string or integer)",
    );
    expect_invalid(
        "operations.rolled_back",
        &["attributes", "to_version"],
        json!(7.5),
        "operations.rolled_back: attributes.to_version must be a version (string or integer)",
    );
    let cc = "operations.config_changed";
    expect_invalid(
        cc,
        &["attributes", "changes"],
        json!({}),
        "operations.config_changed: attributes.changes must list at least one change",
    );
    expect_invalid(cc, &["attributes", "changes"], json!({"timeout_ms": {"old": 1}}), "operations.config_changed: attributes.changes entry \"timeout_ms\" needs both \"old\" and \"new\"");
    expect_invalid(cc, &["attributes", "changes"], json!({"timeout_ms": {"old": 1, "new": 2, "why": 3}}), "operations.config_changed: attributes.changes must be an object of key -> {\"old\": ..., \"new\": ...}");
    expect_invalid(cc, &["attributes", "changes"], json!([1]), "operations.config_changed: attributes.changes must be an object of key -> {\"old\": ..., \"new\": ...}");
    expect_invalid(
        "governance.access_changed",
        &["attributes", "change"],
        json!("maybe"),
        "governance.access_changed: attributes.change must be \"granted\" or \"revoked\"",
    );
    expect_invalid(
        "governance.access_changed",
        &["attributes", "change"],
        json!(true),
        "governance.access_changed: attributes.change must be a string",
    );
}

#[test]
fn malformed_documents_give_clear_errors() {
    let not_object = "invalid JSON: an event must be a JSON object";
    for doc in [
        "",
        "   ",
        "[]",
        "42",
        "\"event\"",
        "null",
        "true",
        "[{\"kind\":\"x.foo\"}]",
    ] {
        assert_eq!(err(doc).to_string(), not_object, "{doc:?}");
        assert!(matches!(err(doc), EventError::Json(_)));
    }
    for doc in [
        "{",
        "{\"kind\":}",
        "{\"kind\":\"x.foo\",}",
        "{\"kind\":\"x.foo\"} trailing",
        "{'kind':'x.foo'}",
    ] {
        let e = err(doc);
        assert!(matches!(e, EventError::Json(_)), "{doc:?}: {e:?}");
        assert!(e.to_string().starts_with("invalid JSON: "), "{doc:?}: {e}");
    }
    // A lone surrogate passes the raw split but not the decoding of the field; it is named.
    let e = err(r#"{"kind":"x.\ud800","actor":{"id":"a","type":"user"}}"#);
    assert!(
        matches!(&e, EventError::Invalid { field, .. } if field == "kind"),
        "{e:?}"
    );
    let e = err(r#"{"kind":"x.foo","actor":{"id":"\udc00","type":"user"}}"#);
    assert!(e.to_string().starts_with("actor "), "{e:?}");
    let base = r#""kind":"x.foo","actor":{"id":"a","type":"user"}"#;
    assert!(err(&format!(r#"{{{base},"foo":1}}"#))
        .to_string()
        .starts_with("invalid JSON: unknown field `foo`"));
    assert!(err(&format!(r#"{{{base},"Kind":"x.bar"}}"#))
        .to_string()
        .starts_with("invalid JSON: unknown field `Kind`"));
    assert!(err(&format!(r#"{{{base},"kind":"x.bar"}}"#))
        .to_string()
        .starts_with("invalid JSON: duplicate field `kind`"));
    assert_eq!(
        err(&format!(
            r#"{{{base},"attributes":{{"reason":"a","reason":"b"}}}}"#
        ))
        .to_string(),
        "attributes duplicate key \"reason\""
    );
    assert!(err(&format!(
        r#"{{{base},"subject":{{"model":"a","model":"b"}}}}"#
    ))
    .to_string()
    .starts_with("subject duplicate field `model`"));
    assert!(
        err(r#"{"kind":"x.foo","actor":{"id":"a","id":"b","type":"user"}}"#)
            .to_string()
            .starts_with("actor duplicate field `id`")
    );
    // Keys written with escapes are the same keys (they are decoded, not compared as text).
    assert_eq!(
        err(&format!(
            r#"{{{base},"attributes":{{"reason":"a","re\u0061son":"b"}}}}"#
        ))
        .to_string(),
        "attributes duplicate key \"reason\""
    );
    let escaped = must_prepare(
        r#"{"kind":"registry.approval_granted","actor":{"\u0069d":"b\u00f6b","typ\u0065":"user"},"subject":{"m\u006fdel":"m","version":"7"},"attributes":{"appr\u006fver":"bob","re\u0061son":"ok"}}"#,
    );
    assert_eq!(escaped.actor_id, "b\u{f6}b");
    assert_eq!(
        escaped.subjects,
        vec![
            (SubjectField::Model, "m".to_owned()),
            (SubjectField::Version, "7".to_owned())
        ]
    );
    let e = err(
        r#"{"kind":"registry.approval_granted","actor":{"id":"a","type":"user"},"subject":{"model":"m","version":"7"},"attributes":{"appr\u006fverx":"bob","reason":"ok"}}"#,
    );
    assert_eq!(
        e.to_string(),
        "registry.approval_granted: attributes.approver is required"
    );
    // Size limit (after trimming surrounding whitespace).
    let big = format!(
        r#"{{{base},"attributes":{{"blob":"{}"}}}}"#,
        "a".repeat(MAX_EVENT_BYTES)
    );
    assert_eq!(
        err(&big).to_string(),
        format!(
            "event is {} bytes; the limit is {MAX_EVENT_BYTES}",
            big.len()
        )
    );
    // An event of exactly the limit is within the event limit; its bulk must then sit outside
    // `attributes`, whose own limit is smaller: so it is refused for that limit, by name.
    let pad = MAX_EVENT_BYTES - format!(r#"{{{base},"attributes":{{"blob":""}}}}"#).len();
    let exact = format!(
        r#"{{{base},"attributes":{{"blob":"{}"}}}}"#,
        "a".repeat(pad)
    );
    assert_eq!(exact.len(), MAX_EVENT_BYTES);
    assert!(matches!(
        err(&format!("  \n{exact}\n ")),
        EventError::Limit {
            limit: "max_attributes_bytes",
            ..
        }
    ));
    // Attributes of exactly their limit (key bytes + value bytes, quotes included) are accepted.
    let at_limit = format!(
        r#"{{{base},"attributes":{{"blob":"{}"}}}}"#,
        "a".repeat(MAX_ATTRIBUTES_BYTES - "blob".len() - 2)
    );
    assert_eq!(
        must_prepare(&format!("  \n{at_limit}\n ")).payload.len(),
        at_limit.len()
    );
    let over = format!(
        r#"{{{base},"attributes":{{"blob":"{}"}}}}"#,
        "a".repeat(MAX_ATTRIBUTES_BYTES - "blob".len() - 1)
    );
    assert!(matches!(
        err(&over),
        EventError::Limit {
            limit: "max_attributes_bytes",
            ..
        }
    ));
}

#[test]
fn unknown_attributes_are_kept_verbatim() {
    let json = "\n  { \"kind\" : \"registry.approval_granted\",\n    \"actor\": {\"type\": \"user\", \"id\": \"b\\u00f6b\"},\n    \"subject\": {\"version\": \"7\", \"model\": \"credit-risk\"},\n    \"attributes\": {\"reason\": \"ok\", \"ticket\": \"JIRA-1\", \"approver\": \"bob\",\n                   \"nested\": {\"z\": [1, 2.50, 1e3, null], \"a\": \"\\u2603\"}, \"dup_elsewhere\": {\"k\": 1}} }\t\r\n";
    let p = must_prepare(json);
    check_invariants(json, &p);
    assert_eq!(p.payload, json.trim().as_bytes());
    assert_eq!(
        p.actor_id, "b\u{f6}b",
        "escapes in the header fields are decoded"
    );
    assert_eq!(
        p.subjects,
        vec![
            (SubjectField::Model, "credit-risk".to_owned()),
            (SubjectField::Version, "7".to_owned())
        ]
    );
    let payload = std::str::from_utf8(&p.payload).unwrap_or_else(|e| panic!("{e}"));
    for kept in [
        "\"ticket\": \"JIRA-1\"",
        "2.50, 1e3",
        "\\u2603",
        "\"z\": [1",
    ] {
        assert!(payload.contains(kept), "payload lost {kept:?}");
    }
    // Extra attributes on every catalogue kind.
    for (kind, mut e) in examples() {
        e["attributes"]["x_extra"] = json!({"any": ["thing", 1, null]});
        let json = text(&e);
        let p = must_prepare(&json);
        assert!(
            std::str::from_utf8(&p.payload)
                .is_ok_and(|t| t.contains(r#""x_extra":{"any":["thing",1,null]}"#)),
            "{kind}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Random inputs.
// ---------------------------------------------------------------------------------------------

/// xorshift64*: deterministic, dependency-free.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
    fn chance(&mut self, one_in: usize) -> bool {
        self.below(one_in) == 0
    }
    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
}

const TOKENS: &[&str] = &[
    "{",
    "}",
    "[",
    "]",
    ":",
    ",",
    "\"",
    "\\",
    "\\u",
    "\\ud800",
    "null",
    "true",
    "false",
    "0",
    "-1",
    "1e999",
    "1.5",
    "100",
    "\"kind\"",
    "\"actor\"",
    "\"subject\"",
    "\"attributes\"",
    "\"id\"",
    "\"type\"",
    "\"time\"",
    "\"user\"",
    "\"service\"",
    "\"x.foo\"",
    "\"x.\"",
    "\"registry.approval_granted\"",
    "\"split\"",
    "\"model\"",
    "\"version\"",
    " ",
    "\n",
    "\u{0}",
    "é",
    "\u{2603}",
    "\u{feff}",
    "\u{a0}",
    "\"2026-01-31T12:00:00Z\"",
    "\"6f9619ff-8b86-d011-b42d-00c04fc964ff\"",
];

fn random_json_value(rng: &mut Rng, depth: usize) -> Value {
    match rng.below(if depth > 3 { 6 } else { 9 }) {
        0 => Value::Null,
        1 => json!(rng.chance(2)),
        2 => json!(rng.next() as i64 >> rng.below(64)),
        3 => json!((rng.next() as i64 as f64) / 1e6),
        4 => json!(*rng.pick(&[
            "",
            "x",
            "s3://b/k",
            "a@1",
            "granted",
            "user",
            SHA,
            "7",
            "\u{0}\u{2603}"
        ])),
        5 => json!("z".repeat(rng.below(1100))),
        6 => Value::Array(
            (0..rng.below(4))
                .map(|_| random_json_value(rng, depth + 1))
                .collect(),
        ),
        _ => {
            let keys = [
                "old", "new", "id", "type", "model", "7", "8", "a", "split", "source",
            ];
            Value::Object(
                (0..rng.below(4))
                    .map(|_| {
                        (
                            (*rng.pick(&keys)).to_owned(),
                            random_json_value(rng, depth + 1),
                        )
                    })
                    .collect(),
            )
        }
    }
}

/// Replaces, removes or adds one value somewhere in a JSON tree.
fn mutate_value(rng: &mut Rng, v: &mut Value, depth: usize) {
    match v {
        Value::Object(map) if !map.is_empty() && (depth == 0 || !rng.chance(3)) => {
            let keys: Vec<String> = map.keys().cloned().collect();
            let key = rng.pick(&keys).clone();
            match rng.below(6) {
                0 => {
                    map.remove(&key);
                }
                1 => {
                    let names = [
                        "foo",
                        "kind",
                        "sample_rate",
                        "confidence",
                        "subject",
                        "x_extra",
                        "pipeline_run",
                        "request",
                    ];
                    map.insert(
                        (*rng.pick(&names)).to_owned(),
                        random_json_value(rng, depth + 1),
                    );
                }
                _ => {
                    if let Some(child) = map.get_mut(&key) {
                        mutate_value(rng, child, depth + 1);
                    }
                }
            }
        }
        Value::Array(items) if !items.is_empty() && !rng.chance(3) => {
            let i = rng.below(items.len());
            mutate_value(rng, &mut items[i], depth + 1);
        }
        _ => *v = random_json_value(rng, depth),
    }
}

fn mutate_bytes(rng: &mut Rng, bytes: &mut Vec<u8>) {
    for _ in 0..1 + rng.below(4) {
        let len = bytes.len();
        match rng.below(7) {
            0 if len > 0 => {
                let i = rng.below(len);
                bytes[i] ^= 1 << rng.below(8);
            }
            1 if len > 0 => {
                let i = rng.below(len);
                bytes[i] = rng.next() as u8;
            }
            2 => {
                let t = rng.pick(TOKENS).as_bytes().to_vec();
                let at = rng.below(len + 1);
                bytes.splice(at..at, t);
            }
            3 if len > 0 => {
                let a = rng.below(len);
                let b = (a + 1 + rng.below(16)).min(len);
                bytes.drain(a..b);
            }
            4 => bytes.truncate(rng.below(len + 1)),
            5 if len > 0 => {
                let a = rng.below(len);
                let b = (a + 1 + rng.below(32)).min(len);
                let piece = bytes[a..b].to_vec();
                let at = rng.below(len + 1);
                bytes.splice(at..at, piece);
            }
            _ => {
                let at = rng.below(len + 1);
                let n = 1 + rng.below(4);
                let junk = rng.bytes(n);
                bytes.splice(at..at, junk);
            }
        }
    }
}

#[test]
fn random_inputs_never_panic() {
    // Kinds a client may submit: mutations of a reserved kind are refused by their kind alone.
    let corpus: Vec<String> = examples()
        .iter()
        .filter(|(kind, _)| !mlaudit_core::event::is_reserved_kind(kind))
        .map(|(_, e)| text(e))
        .collect();
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let (mut accepted, mut rejected) = (0usize, 0usize);
    for round in 0..20_000usize {
        let input: String = match round % 4 {
            // Random bytes.
            0 => {
                let n = rng.below(256);
                let mut b = rng.bytes(n);
                if rng.chance(2) {
                    b.insert(0, b'{');
                }
                String::from_utf8_lossy(&b).into_owned()
            }
            // Random JSON-ish token soup.
            1 => (0..rng.below(40)).map(|_| *rng.pick(TOKENS)).collect(),
            // Byte-level mutations of valid events.
            2 => {
                let mut b = rng.pick(&corpus).clone().into_bytes();
                mutate_bytes(&mut rng, &mut b);
                String::from_utf8_lossy(&b).into_owned()
            }
            // Structural mutations of valid events.
            _ => {
                let base: &String = rng.pick(&corpus);
                let mut v: Value = serde_json::from_str(base).unwrap_or(Value::Null);
                for _ in 0..1 + rng.below(3) {
                    mutate_value(&mut rng, &mut v, 0);
                }
                v.to_string()
            }
        };
        let principal = if rng.chance(10) { "" } else { "token:fuzz" };
        match prepare(&input, principal) {
            Ok(p) => {
                accepted += 1;
                check_invariants(&input, &p);
                assert_eq!(p.principal, principal);
            }
            Err(e) => {
                rejected += 1;
                let msg = e.to_string();
                assert!(!msg.is_empty());
                // serde_json positions would refer to fragments, not the document.
                if !matches!(e, EventError::Json(_)) {
                    assert!(!msg.contains(" at line "), "{msg}");
                }
            }
        }
    }
    // The generator must exercise both outcomes substantially.
    assert!(accepted > 300, "only {accepted} accepted");
    assert!(rejected > 10_000, "only {rejected} rejected");
}

// ---------------------------------------------------------------------------------------------
// Entry header round-trips.
// ---------------------------------------------------------------------------------------------

fn random_string(rng: &mut Rng, max_bytes: usize) -> String {
    const CHARS: &[char] = &[
        'a',
        'Z',
        '0',
        '.',
        '-',
        ' ',
        '\u{0}',
        '\u{7f}',
        'é',
        '\u{2603}',
        '\u{10348}',
        '\u{feff}',
        '"',
        '\\',
    ];
    let target = match rng.below(5) {
        0 => 0,
        1 => max_bytes,
        2 => max_bytes.saturating_sub(rng.below(4)),
        _ => rng.below(max_bytes.min(40) + 1),
    };
    let mut s = String::new();
    loop {
        let c = *rng.pick(CHARS);
        if s.len() + c.len_utf8() > target {
            // Fill to the exact target with ASCII.
            while s.len() < target {
                s.push('x');
            }
            return s;
        }
        s.push(c);
    }
}

fn random_entry(rng: &mut Rng) -> Entry {
    let mut subjects = Vec::new();
    for f in SubjectField::ALL {
        if rng.chance(3) {
            let mut v = random_string(rng, MAX_ID_LEN);
            if v.is_empty() && rng.chance(2) {
                v.push('v');
            }
            subjects.push((f, v));
        }
    }
    let id: [u8; 16] = rng.bytes(16).try_into().unwrap_or([0; 16]);
    let sha: [u8; 32] = rng.bytes(32).try_into().unwrap_or([0; 32]);
    Entry {
        seq: rng.next() >> rng.below(64),
        event_time_ns: rng.next() as i64,
        receipt_time_ns: (rng.next() as i64) >> rng.below(64),
        id: EventId(id),
        payload_sha256: sha,
        payload_len: rng.next() as u32,
        actor_type: if rng.chance(2) {
            ActorType::User
        } else {
            ActorType::Service
        },
        kind: random_string(rng, MAX_KIND_LEN),
        actor_id: random_string(rng, MAX_ID_LEN),
        principal: random_string(rng, MAX_ID_LEN),
        subjects,
    }
}

fn encoded_len(e: &Entry) -> usize {
    1 + 8
        + 8
        + 8
        + 16
        + 32
        + 4
        + 1
        + (1 + e.kind.len())
        + (2 + e.actor_id.len())
        + (2 + e.principal.len())
        + 1
        + e.subjects
            .iter()
            .map(|(_, v)| 1 + 2 + v.len())
            .sum::<usize>()
}

#[test]
fn entries_round_trip_and_mutations_never_panic() {
    let mut rng = Rng(0x0123_4567_89ab_cdef);
    let (mut mutated_ok, mut mutated_err) = (0usize, 0usize);
    for round in 0..5_000 {
        let e = random_entry(&mut rng);
        let bytes = entry::encode(&e).unwrap_or_else(|err| panic!("round {round}: {err}\n{e:?}"));
        assert_eq!(bytes.len(), encoded_len(&e));
        assert_eq!(bytes[0], entry::ENTRY_VERSION);
        assert_eq!(entry::decode(&bytes).as_ref(), Ok(&e), "round {round}");
        for (f, v) in &e.subjects {
            assert_eq!(e.subject(*f), Some(v.as_str()));
        }
        // Mutations: decode never panics, and whatever it accepts is canonical.
        for _ in 0..4 {
            let mut m = bytes.clone();
            match rng.below(4) {
                0 => mutate_bytes(&mut rng, &mut m),
                1 => {
                    let i = rng.below(m.len());
                    m[i] ^= 1 << rng.below(8);
                }
                2 => {
                    // Corrupt one of the small header fields where structure lives.
                    let i = 77 + rng.below(m.len() - 77);
                    m[i] = *rng.pick(&[0u8, 1, 2, 3, 8, 9, 0x7f, 0x80, 0xff]);
                }
                _ => m.truncate(rng.below(m.len())),
            }
            match entry::decode(&m) {
                Ok(d) => {
                    mutated_ok += 1;
                    assert_eq!(
                        entry::encode(&d).as_deref(),
                        Ok(&m[..]),
                        "decode accepted non-canonical bytes"
                    );
                }
                Err(err) => {
                    mutated_err += 1;
                    assert!(!err.to_string().is_empty());
                }
            }
        }
    }
    assert!(
        mutated_ok > 100 && mutated_err > 1_000,
        "{mutated_ok} / {mutated_err}"
    );
    // Pure garbage.
    for _ in 0..20_000 {
        let n = rng.below(200);
        let mut b = rng.bytes(n);
        if rng.chance(2) && !b.is_empty() {
            b[0] = entry::ENTRY_VERSION;
        }
        if let Ok(d) = entry::decode(&b) {
            assert_eq!(entry::encode(&d).as_deref(), Ok(&b[..]));
        }
    }
}

fn sample_entry() -> Entry {
    Entry {
        seq: 1,
        event_time_ns: -1,
        receipt_time_ns: i64::MAX,
        id: EventId([7; 16]),
        payload_sha256: [9; 32],
        payload_len: u32::MAX,
        actor_type: ActorType::User,
        kind: "x.foo".into(),
        actor_id: "alice".into(),
        principal: "token:a".into(),
        subjects: vec![
            (SubjectField::Model, "m".into()),
            (SubjectField::Request, "r".into()),
        ],
    }
}

#[test]
fn entry_limits_and_canonical_form() {
    let ok = sample_entry();
    let bytes = entry::encode(&ok).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(bytes.len(), encoded_len(&ok));

    let too_long = |f: &dyn Fn(&mut Entry), field: &'static str, len: usize, max: usize| {
        let mut e = sample_entry();
        f(&mut e);
        assert_eq!(
            entry::encode(&e),
            Err(EntryError::TooLong { field, len, max })
        );
    };
    too_long(
        &|e| e.kind = "k".repeat(MAX_KIND_LEN + 1),
        "kind",
        MAX_KIND_LEN + 1,
        MAX_KIND_LEN,
    );
    too_long(
        &|e| e.actor_id = "a".repeat(MAX_ID_LEN + 1),
        "actor id",
        MAX_ID_LEN + 1,
        MAX_ID_LEN,
    );
    too_long(
        &|e| e.principal = "p".repeat(MAX_ID_LEN + 1),
        "principal",
        MAX_ID_LEN + 1,
        MAX_ID_LEN,
    );
    too_long(
        &|e| e.subjects[1].1 = "r".repeat(MAX_ID_LEN + 1),
        "subject value",
        MAX_ID_LEN + 1,
        MAX_ID_LEN,
    );
    let mut at_limit = sample_entry();
    at_limit.kind = "\u{2603}".repeat(MAX_KIND_LEN / 3) + &"k".repeat(MAX_KIND_LEN % 3);
    at_limit.actor_id = "a".repeat(MAX_ID_LEN);
    at_limit.principal = "p".repeat(MAX_ID_LEN);
    at_limit.subjects = SubjectField::ALL
        .iter()
        .map(|f| (*f, "s".repeat(MAX_ID_LEN)))
        .collect();
    assert_eq!(at_limit.kind.len(), MAX_KIND_LEN);
    let b = entry::encode(&at_limit).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(entry::decode(&b), Ok(at_limit));

    let mut unsorted = sample_entry();
    unsorted.subjects.reverse();
    assert_eq!(entry::encode(&unsorted), Err(EntryError::SubjectOrder));
    let mut dup = sample_entry();
    dup.subjects = vec![
        (SubjectField::Model, "a".into()),
        (SubjectField::Model, "b".into()),
    ];
    assert_eq!(entry::encode(&dup), Err(EntryError::SubjectOrder));

    // Decoder errors at known offsets: version 0, actor type at 77, kind length at 78.
    let mut b = bytes.clone();
    b[0] = 2;
    assert_eq!(entry::decode(&b), Err(EntryError::UnknownVersion(2)));
    for code in [0u8, 3, 255] {
        let mut b = bytes.clone();
        b[77] = code;
        assert_eq!(entry::decode(&b), Err(EntryError::UnknownActorType(code)));
    }
    let mut b = bytes.clone();
    b[78] = (MAX_KIND_LEN + 1) as u8;
    assert_eq!(
        entry::decode(&b),
        Err(EntryError::TooLong {
            field: "kind",
            len: MAX_KIND_LEN + 1,
            max: MAX_KIND_LEN
        })
    );
    let mut b = bytes.clone();
    b[79] = 0xff; // first byte of the kind
    assert_eq!(entry::decode(&b), Err(EntryError::NotUtf8("kind")));
    // Subject codes: the count byte follows the principal.
    let count_at = 79 + ok.kind.len() + 2 + ok.actor_id.len() + 2 + ok.principal.len();
    assert_eq!(bytes[count_at], 2);
    for code in [0u8, 9, 200] {
        let mut b = bytes.clone();
        b[count_at + 1] = code;
        assert_eq!(
            entry::decode(&b),
            Err(EntryError::UnknownSubjectField(code))
        );
    }
    let mut b = bytes.clone();
    b[count_at + 1] = SubjectField::Request.code();
    assert_eq!(entry::decode(&b), Err(EntryError::SubjectOrder));
    let mut b = bytes.clone();
    b[count_at] = 3;
    assert!(matches!(
        entry::decode(&b),
        Err(EntryError::Truncated { .. })
    ));
    let mut b = bytes.clone();
    b[count_at] = 1;
    assert_eq!(entry::decode(&b), Err(EntryError::TrailingBytes(1 + 2 + 1)));
    assert!(matches!(
        entry::decode(&[]),
        Err(EntryError::Truncated {
            offset: 0,
            needed: 1
        })
    ));

    for f in SubjectField::ALL {
        assert_eq!(SubjectField::from_code(f.code()), Some(f));
    }
    assert_eq!(SubjectField::from_code(0), None);
    assert_eq!(SubjectField::from_code(9), None);
    assert_eq!(ActorType::User.as_str(), "user");
    assert_eq!(ActorType::Service.as_str(), "service");
}

// ---------------------------------------------------------------------------------------------
// Regressions: bugs found by this file's first review of src/event.rs.
// ---------------------------------------------------------------------------------------------

/// A configuration key that is added (or removed) has `null` as its old (or new) value, but
/// `Attr::Changes` reads `old`/`new` as `Option<&RawValue>`, which serde turns into `None` for
/// `null`, so the event is rejected with "needs both "old" and "new"" although both are present.
#[test]
fn config_change_may_add_or_remove_a_key() {
    for changes in [
        json!({"retries": {"old": null, "new": 3}}),
        json!({"retries": {"old": 3, "new": null}}),
    ] {
        let mut e = example("operations.config_changed", &["deployment"], &["changes"]);
        e["attributes"]["changes"] = changes;
        must_prepare(&text(&e));
    }
}

/// Attribute keys must be unique (duplicates are rejected), but the versions of a traffic split
/// are read into a map that silently keeps the last duplicate: `{"7": 100, "7": 100}` (200%) and
/// `{"7": 0, "7": 100}` are accepted, and the verbatim payload stays ambiguous for readers that
/// keep the first duplicate.
#[test]
fn split_with_duplicate_versions_is_rejected() {
    for split in [r#"{"7":100,"7":100}"#, r#"{"7":0,"7":100}"#] {
        let json = format!(
            r#"{{"kind":"operations.traffic_routed","actor":{{"id":"a","type":"user"}},"subject":{{"deployment":"d"}},"attributes":{{"split":{split}}}}}"#
        );
        assert!(prepare(&json, "p").is_err(), "accepted {split}");
    }
}

#[test]
fn attribute_depth_and_size_limits_name_the_limit() {
    use mlaudit_core::event::{EventError, MAX_ATTRIBUTES_BYTES, MAX_ATTRIBUTE_DEPTH};
    let nested = |depth: usize| format!("{}1{}", "[".repeat(depth), "]".repeat(depth));
    let event = |attrs: String| {
        format!(r#"{{"kind":"x.limits","actor":{{"id":"a","type":"user"}},"attributes":{attrs}}}"#)
    };
    // The attributes object is level 1: a value nested MAX - 1 deep is the deepest allowed.
    assert!(prepare(
        &event(format!(r#"{{"v":{}}}"#, nested(MAX_ATTRIBUTE_DEPTH - 1))),
        "p"
    )
    .is_ok());
    let err = prepare(
        &event(format!(r#"{{"v":{}}}"#, nested(MAX_ATTRIBUTE_DEPTH))),
        "p",
    )
    .unwrap_err();
    assert!(
        matches!(
            &err,
            EventError::Limit {
                limit: "max_attribute_depth",
                ..
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("max_attribute_depth"), "{err}");
    // Brackets inside strings do not count.
    assert!(prepare(&event(format!(r#"{{"v":"{}"}}"#, "[".repeat(100))), "p").is_ok());
    let big = "x".repeat(MAX_ATTRIBUTES_BYTES);
    let err = prepare(&event(format!(r#"{{"v":"{big}"}}"#)), "p").unwrap_err();
    assert!(
        matches!(
            &err,
            EventError::Limit {
                limit: "max_attributes_bytes",
                ..
            }
        ),
        "{err}"
    );
}

// ---------------------------------------------------------------------------------------------
// What only the server writes, and what no event may carry.
// ---------------------------------------------------------------------------------------------

#[test]
fn clients_may_not_submit_reserved_kinds() {
    assert_eq!(
        RESERVED_KINDS,
        [
            "governance.access_changed",
            "governance.audit_accessed",
            "governance.hold_created",
            "governance.hold_released",
            "governance.payload_erased",
            "governance.payload_expired"
        ]
    );
    for kind in RESERVED_KINDS {
        let (_, subjects, attrs) = SPEC.iter().find(|(k, _, _)| *k == kind).unwrap();
        let json = text(&example(kind, subjects, attrs));
        let refused = prepare(&json, "token:writer").unwrap_err();
        assert_eq!(refused, EventError::ReservedKind(kind.into()));
        assert!(refused.to_string().contains(kind), "{refused}");
        // The same bytes are valid when the server writes them.
        assert_eq!(prepare_reserved(&json, "token:admin").unwrap().kind, kind);
    }
    // Every other catalogue kind is open to clients.
    for (kind, subjects, attrs) in SPEC.iter().filter(|(k, _, _)| !RESERVED_KINDS.contains(k)) {
        prepare(&text(&example(kind, subjects, attrs)), "token:writer")
            .unwrap_or_else(|e| panic!("{kind}: {e}"));
    }
}

#[test]
fn control_characters_are_refused_in_what_operators_see() {
    let base = || {
        example(
            "registry.approval_granted",
            &["model", "version"],
            &["approver", "reason"],
        )
    };
    for bad in [
        "a\u{1b}[2Jb",
        "line\nbreak",
        "nul\u{0}",
        "del\u{7f}",
        "c1\u{9b}",
        "rlo\u{202e}txt",
        "iso\u{2066}x",
    ] {
        for path in [
            &["actor", "id"][..],
            &["subject", "model"],
            &["subject", "version"],
            &["kind"],
        ] {
            let mut e = Value::Object(base());
            let mut slot = &mut e;
            for p in path {
                slot = &mut slot[*p];
            }
            *slot = Value::String(if path == ["kind"] {
                format!("x.{bad}")
            } else {
                bad.to_owned()
            });
            let json = e.to_string();
            match prepare(&json, "p") {
                Err(EventError::Invalid { field, problem }) => {
                    assert_eq!(field, path.join("."), "{json}");
                    assert!(problem.contains("control characters"), "{problem}");
                }
                other => panic!("{json}: {other:?}"),
            }
        }
    }
    // Attributes are payload, not header: they may hold any text.
    let mut e = base();
    e["attributes"]["reason"] = json!("two\nlines");
    must_prepare(&text(&e));
}

#[test]
fn too_many_attribute_keys_are_refused_with_the_limit_named() {
    let event = |n: usize| {
        let attrs: Vec<String> = (0..n).map(|i| format!(r#""k{i}":0"#)).collect();
        format!(
            r#"{{"kind":"x.many","actor":{{"id":"a","type":"user"}},"attributes":{{{}}}}}"#,
            attrs.join(",")
        )
    };
    assert_eq!(must_prepare(&event(MAX_ATTRIBUTES)).kind, "x.many");
    let e = prepare(&event(MAX_ATTRIBUTES + 1), "p").unwrap_err();
    assert!(
        matches!(
            &e,
            EventError::Limit {
                limit: "max_attributes",
                ..
            }
        ),
        "{e}"
    );
}

/// A duplicate key is found however many keys come before it, beyond the first few that are
/// compared one by one.
#[test]
fn duplicate_attribute_keys_are_found_among_many() {
    for n in [2usize, 15, 16, 17, 200, MAX_ATTRIBUTES - 1] {
        let mut attrs: Vec<String> = (0..n).map(|i| format!(r#""k{i}":0"#)).collect();
        attrs.push(r#""k0":1"#.into());
        let json = format!(
            r#"{{"kind":"x.dup","actor":{{"id":"a","type":"user"}},"attributes":{{{}}}}}"#,
            attrs.join(",")
        );
        let e = prepare(&json, "p").unwrap_err();
        assert!(e.to_string().contains("duplicate key \"k0\""), "{n}: {e}");
    }
}

/// A required attribute may be left out when the event names it in `attributes.unreported`
/// (a tool that does not report it); it must then be absent, and only required attributes of
/// the kind may be named.
#[test]
fn unreported_names_only_absent_required_attributes() {
    let base = json!({
        "kind": "registry.model_registered",
        "actor": {"id": "mlflow", "type": "service"},
        "subject": {"model": "m", "version": "1", "run": "r"},
    });
    let with = |attrs: Value| {
        let mut e = base.clone();
        e["attributes"] = attrs;
        e.to_string()
    };
    assert!(matches!(
        err(&with(json!({}))),
        EventError::Requirement { .. }
    ));
    must_prepare(&with(json!({"unreported": ["artifact_sha256"]})));
    let present = err(&with(
        json!({"unreported": ["artifact_sha256"], "artifact_sha256": "ab".repeat(32)}),
    ));
    assert!(
        present
            .to_string()
            .contains("listed in attributes.unreported but present"),
        "{present}"
    );
    let not_required = err(&with(json!({"unreported": ["artifact_sha256", "color"]})));
    assert!(
        not_required
            .to_string()
            .contains("not a required attribute"),
        "{not_required}"
    );
    let not_a_list = err(&with(json!({"unreported": "artifact_sha256"})));
    assert!(
        not_a_list.to_string().contains("must be a list"),
        "{not_a_list}"
    );
    // Subjects are links, never optional.
    let mut no_run = base.clone();
    no_run["subject"] = json!({"model": "m", "version": "1"});
    no_run["attributes"] = json!({"unreported": ["artifact_sha256"]});
    assert!(err(&no_run.to_string()).to_string().contains("subject.run"));
}

#[test]
fn derived_ids_are_stable_uuids_that_differ_by_source_and_key() {
    let a = EventId::derived("mlflow", "run/1/started");
    assert_eq!(a, EventId::derived("mlflow", "run/1/started"));
    assert_ne!(a, EventId::derived("mlflow", "run/1/completed"));
    assert_ne!(a, EventId::derived("clearml", "run/1/started"));
    // "mlflow" + "x\0y" must not collide with "mlflow\0x" + "y".
    assert_ne!(EventId::derived("a", "b\0c"), EventId::derived("a\0b", "c"));
    let text = a.to_string();
    assert_eq!(text.as_bytes()[14], b'8', "a version-8 UUID: {text}");
    assert_eq!(EventId::parse(&text), Some(a));
}
