//! Protobuf batches (`mlaudit_server::protobuf`) without the HTTP layer: JSON events →
//! `encode_batch` → protobuf → `decode_batch` → canonical JSON texts → `prepare`, every
//! rejection with the event index and field it names, and random input that must never panic.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test fails loudly on any unexpected error"
)]

use mlaudit_core::entry::{ActorType, SubjectField};
use mlaudit_core::event::{prepare, PreparedEvent};
use mlaudit_server::protobuf::{
    self, decode_batch, encode_batch, Actor, EventBatch, PredictionAttributes, ProtoError, Subject,
    MAX_PROTO_EVENTS,
};
use prost::Message;
use serde_json::{json, Value};

fn prediction() -> Value {
    json!({
        "id": "00000000-0000-4000-8000-000000000001",
        "time": "2026-11-20T10:00:00Z",
        "kind": "prediction.served",
        "actor": {"id": "scoring-api", "type": "service"},
        "subject": {"model": "credit-risk", "version": "7", "request": "req-1"},
        "attributes": {
            "inputs": {"income": 52000, "age": 41, "tags": ["a", "b"]},
            "outputs": {"score": 0.82, "label": "approve"},
            "confidence": 0.91,
            "latency_ms": 12.5,
            "sample_rate": 0.1,
            "feature_store": "s3://features/v3"
        }
    })
}

fn approval() -> Value {
    json!({
        "id": "00000000-0000-4000-8000-00000000a001",
        "kind": "registry.approval_granted",
        "actor": {"id": "maria", "type": "user"},
        "subject": {"model": "credit-risk", "version": "7"},
        "attributes": {"approver": {"name": "Maria", "team": "risk"}, "reason": "fairness review passed"}
    })
}

fn custom() -> Value {
    json!({"kind": "x.custom", "actor": {"id": "nightly-job", "type": "service"}})
}

/// A one-event batch built field by field.
fn batch(event: protobuf::Event) -> Vec<u8> {
    EventBatch {
        events: vec![event],
    }
    .encode_to_vec()
}

fn service() -> Option<Actor> {
    Some(Actor {
        id: "svc".into(),
        r#type: protobuf::ActorType::Service as i32,
    })
}

fn served(prediction: PredictionAttributes) -> protobuf::Event {
    protobuf::Event {
        kind: "prediction.served".into(),
        actor: service(),
        subject: Some(Subject {
            model: Some("m".into()),
            version: Some("1".into()),
            request: Some("r".into()),
            ..Subject::default()
        }),
        prediction: Some(prediction),
        ..protobuf::Event::default()
    }
}

fn inputs_outputs() -> PredictionAttributes {
    PredictionAttributes {
        inputs_json: "[1,2]".into(),
        outputs_json: "{\"y\":1}".into(),
        ..PredictionAttributes::default()
    }
}

fn payload(e: &PreparedEvent) -> Value {
    serde_json::from_slice(&e.payload).unwrap()
}

fn field_error(bytes: &[u8]) -> (usize, &'static str, String) {
    match decode_batch(bytes) {
        Err(ProtoError::Field {
            index,
            field,
            problem,
        }) => (index, field, problem),
        other => panic!("expected a field error, got {other:?}"),
    }
}

#[test]
fn json_protobuf_json_round_trip_prepares_like_the_json_events() {
    let originals = [prediction(), approval(), custom()];
    let bytes = encode_batch(&originals);

    // The prediction's hot-path attributes travel in the typed fields, the rest as JSON text.
    let wire = EventBatch::decode(&bytes[..]).unwrap();
    assert_eq!(wire.events.len(), 3);
    let p = wire.events[0]
        .prediction
        .as_ref()
        .expect("prediction.served uses the typed fields");
    assert_eq!(
        serde_json::from_str::<Value>(&p.inputs_json).unwrap(),
        originals[0]["attributes"]["inputs"]
    );
    assert_eq!(
        serde_json::from_str::<Value>(&p.outputs_json).unwrap(),
        originals[0]["attributes"]["outputs"]
    );
    assert_eq!(
        (p.confidence, p.latency_ms, p.sample_rate),
        (Some(0.91), Some(12.5), Some(0.1))
    );
    assert_eq!(
        serde_json::from_str::<Value>(&wire.events[0].attributes_json).unwrap(),
        json!({"feature_store": "s3://features/v3"})
    );
    assert_eq!(
        wire.events[0].actor.as_ref().unwrap().r#type,
        protobuf::ActorType::Service as i32
    );
    assert!(
        wire.events[1].prediction.is_none(),
        "other kinds keep everything in attributes_json"
    );
    assert_eq!(
        wire.events[1].actor.as_ref().unwrap().r#type,
        protobuf::ActorType::User as i32
    );
    assert!(wire.events[2].subject.is_none() && wire.events[2].attributes_json.is_empty());

    let texts = decode_batch(&bytes).unwrap();
    assert_eq!(texts.len(), 3);
    for (text, original) in texts.iter().zip(&originals) {
        assert_eq!(
            &serde_json::from_str::<Value>(text).unwrap(),
            original,
            "the canonical JSON is the event encoded"
        );
    }
    let prepared: Vec<PreparedEvent> = texts
        .iter()
        .map(|t| prepare(t, "writer").unwrap())
        .collect();

    let p = &prepared[0];
    assert_eq!(p.kind, "prediction.served");
    assert_eq!(
        (p.actor_type, p.actor_id.as_str()),
        (ActorType::Service, "scoring-api")
    );
    assert_eq!(
        p.id.map(|id| id.to_string()).as_deref(),
        Some("00000000-0000-4000-8000-000000000001")
    );
    assert_eq!(
        p.event_time_ns,
        mlaudit_core::event::parse_time("2026-11-20T10:00:00Z")
    );
    assert_eq!(
        p.subjects,
        vec![
            (SubjectField::Model, "credit-risk".into()),
            (SubjectField::Version, "7".into()),
            (SubjectField::Request, "req-1".into())
        ]
    );
    assert_eq!(payload(p)["attributes"], originals[0]["attributes"]);
    assert_eq!(p.principal, "writer");

    let a = &prepared[1];
    assert_eq!(a.kind, "registry.approval_granted");
    assert_eq!(
        (a.actor_type, a.actor_id.as_str()),
        (ActorType::User, "maria")
    );
    assert_eq!(
        a.subjects,
        vec![
            (SubjectField::Model, "credit-risk".into()),
            (SubjectField::Version, "7".into())
        ]
    );
    assert_eq!(payload(a)["attributes"], originals[1]["attributes"]);
    assert_eq!(a.event_time_ns, None, "no time: the receipt time");

    let c = &prepared[2];
    assert_eq!(c.kind, "x.custom");
    assert_eq!(
        (c.actor_type, c.actor_id.as_str()),
        (ActorType::Service, "nightly-job")
    );
    assert!(c.subjects.is_empty() && c.id.is_none());
    assert_eq!(
        payload(c).get("attributes").cloned().unwrap_or(json!({})),
        json!({})
    );
}

#[test]
fn decoding_is_deterministic_and_canonical() {
    let bytes = encode_batch(&[prediction(), approval(), custom()]);
    let first = decode_batch(&bytes).unwrap();
    assert_eq!(
        decode_batch(&bytes).unwrap(),
        first,
        "the same bytes give the same texts (and payload digests)"
    );
    // Only what is set appears: no empty id or time, no unset subject fields.
    let c: Value = serde_json::from_str(&first[2]).unwrap();
    assert!(c.get("id").is_none() && c.get("time").is_none(), "{c}");
    let a: Value = serde_json::from_str(&first[1]).unwrap();
    assert_eq!(a["subject"].as_object().unwrap().len(), 2, "{a}");
}

#[test]
fn prediction_fields_alone_make_the_attributes() {
    let bytes = batch(served(PredictionAttributes {
        confidence: Some(0.5),
        ..inputs_outputs()
    }));
    let texts = decode_batch(&bytes).unwrap();
    let e = prepare(&texts[0], "w").unwrap();
    assert_eq!(
        payload(&e)["attributes"],
        json!({"inputs": [1, 2], "outputs": {"y": 1}, "confidence": 0.5})
    );
    // Zero is a value, not "unset", for the optional doubles.
    let bytes = batch(served(PredictionAttributes {
        latency_ms: Some(0.0),
        ..inputs_outputs()
    }));
    let v: Value = serde_json::from_str(&decode_batch(&bytes).unwrap()[0]).unwrap();
    assert_eq!(v["attributes"]["latency_ms"], json!(0.0));
    assert!(v["attributes"].get("confidence").is_none());
}

#[test]
fn integer_subject_values_survive_encoding() {
    // JSON accepts integer identifiers; the protobuf carries them as their decimal text.
    let mut e = approval();
    e["subject"]["version"] = json!(7);
    let texts = decode_batch(&encode_batch(&[e])).unwrap();
    let p = prepare(&texts[0], "w").unwrap();
    assert_eq!(
        p.subjects,
        vec![
            (SubjectField::Model, "credit-risk".into()),
            (SubjectField::Version, "7".into())
        ]
    );
}

#[test]
fn encoding_never_drops_an_attribute_the_typed_fields_cannot_carry() {
    // A non-numeric confidence stays in attributes_json, so the server rejects it as it would
    // the JSON event, instead of storing a prediction without it.
    let mut e = prediction();
    e["attributes"]["confidence"] = json!("high");
    let texts = decode_batch(&encode_batch(&[e.clone()])).unwrap();
    assert_eq!(serde_json::from_str::<Value>(&texts[0]).unwrap(), e);
    assert!(prepare(&texts[0], "w")
        .unwrap_err()
        .to_string()
        .contains("attributes.confidence"));
}

#[test]
fn an_empty_batch_decodes_to_no_events() {
    assert_eq!(decode_batch(&[]).unwrap(), Vec::<String>::new());
    assert_eq!(encode_batch(&[]), Vec::<u8>::new());
}

#[test]
fn unknown_fields_are_skipped() {
    // In the event: field 15 (varint). In the batch: fields 15 (varint), 11 (bytes), 12
    // (fixed32), 13 (fixed64), 14 (a group holding a varint), 300 (a two-byte key). A newer
    // client's additions do not break an older server.
    let mut event = protobuf::Event {
        kind: "x.a".into(),
        actor: service(),
        ..protobuf::Event::default()
    }
    .encode_to_vec();
    event.extend_from_slice(&[15 << 3, 42]);
    let mut bytes = vec![1 << 3 | 2, event.len() as u8];
    bytes.extend_from_slice(&event);
    bytes.extend_from_slice(&[
        15 << 3,
        1,
        11 << 3 | 2,
        2,
        0xff,
        0xff,
        12 << 3 | 5,
        1,
        2,
        3,
        4,
        13 << 3 | 1,
        1,
        2,
        3,
        4,
        5,
        6,
        7,
        8,
    ]);
    bytes.extend_from_slice(&[14 << 3 | 3, 2 << 3, 5, 14 << 3 | 4, 0xe0, 0x12, 7]);
    assert!(
        EventBatch::decode(&bytes[..]).is_ok(),
        "prost agrees the batch is valid"
    );
    let texts = decode_batch(&bytes).unwrap();
    assert_eq!(
        serde_json::from_str::<Value>(&texts[0]).unwrap(),
        json!({"kind": "x.a", "actor": {"id": "svc", "type": "service"}})
    );
}

#[test]
fn undecodable_protobuf_is_rejected() {
    let good = encode_batch(&[custom(), prediction()]);
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("garbage", vec![0xff, 0xff, 0xff]),
        ("truncated", good[..good.len() - 3].to_vec()),
        ("a length past the end", vec![1 << 3 | 2, 100, 0]),
        ("an unterminated varint", vec![1 << 3 | 2, 0x80]),
        ("field number zero", vec![0, 0]),
        ("events with the wrong wire type", vec![1 << 3, 1]),
        ("an invalid wire type", vec![1 << 3 | 7]),
    ];
    for (what, bytes) in cases {
        let err = agrees_with_prost(&bytes).expect_err(what);
        assert!(
            matches!(
                err,
                ProtoError::Malformed { .. } | ProtoError::Decode { .. }
            ),
            "{what}: {err:?}"
        );
        assert!(err.to_string().contains("mlaudit.v1."), "{what}: {err}");
    }
    // Invalid UTF-8 inside the second event: the error names the event and the field.
    let mut event = protobuf::Event {
        kind: "x.a".into(),
        actor: service(),
        ..protobuf::Event::default()
    }
    .encode_to_vec();
    let at = event.windows(3).position(|w| w == b"x.a").unwrap();
    event[at] = 0xff;
    let mut bytes = encode_batch(&[custom()]);
    bytes.extend_from_slice(&[1 << 3 | 2, event.len() as u8]);
    bytes.extend_from_slice(&event);
    let err = decode_batch(&bytes).unwrap_err();
    assert!(
        matches!(err, ProtoError::Decode { index: 1, .. }),
        "{err:?}"
    );
    let text = err.to_string();
    assert!(text.contains("event 1") && text.contains("kind"), "{text}");
}

#[test]
fn invalid_json_texts_are_rejected_naming_event_and_field() {
    let bad_attributes = protobuf::Event {
        kind: "x.a".into(),
        actor: service(),
        attributes_json: "{\"a\": ".into(),
        ..protobuf::Event::default()
    };
    let ok = protobuf::Event {
        kind: "x.a".into(),
        actor: service(),
        ..protobuf::Event::default()
    };
    let bytes = EventBatch {
        events: vec![ok.clone(), ok.clone(), bad_attributes],
    }
    .encode_to_vec();
    let (index, field, problem) = field_error(&bytes);
    assert_eq!((index, field), (2, "attributes_json"));
    assert!(problem.contains("not valid JSON"), "{problem}");
    assert!(decode_batch(&bytes)
        .unwrap_err()
        .to_string()
        .starts_with("event 2: attributes_json "));

    let (index, field, _) = field_error(&batch(served(PredictionAttributes {
        inputs_json: "{nope".into(),
        ..inputs_outputs()
    })));
    assert_eq!((index, field), (0, "prediction.inputs_json"));
    let (index, field, _) = field_error(&batch(served(PredictionAttributes {
        outputs_json: "[1,".into(),
        ..inputs_outputs()
    })));
    assert_eq!((index, field), (0, "prediction.outputs_json"));
    // An unset inputs_json is not JSON at all: a prediction must carry both.
    let (index, field, _) = field_error(&batch(served(PredictionAttributes {
        inputs_json: String::new(),
        ..inputs_outputs()
    })));
    assert_eq!((index, field), (0, "prediction.inputs_json"));
    // Trailing text after the JSON value.
    let (_, field, _) = field_error(&batch(served(PredictionAttributes {
        outputs_json: "1 2".into(),
        ..inputs_outputs()
    })));
    assert_eq!(field, "prediction.outputs_json");
}

#[test]
fn attributes_json_must_be_an_object_with_unique_keys() {
    for text in ["[1, 2]", "\"text\"", "3", "null", "true"] {
        let e = protobuf::Event {
            kind: "x.a".into(),
            actor: service(),
            attributes_json: text.into(),
            ..protobuf::Event::default()
        };
        let (index, field, problem) = field_error(&batch(e));
        assert_eq!((index, field), (0, "attributes_json"), "{text}");
        assert!(problem.contains("object"), "{text}: {problem}");
    }
    let e = protobuf::Event {
        kind: "x.a".into(),
        actor: service(),
        attributes_json: "{\"a\": 1, \"a\": 2}".into(),
        ..protobuf::Event::default()
    };
    let (_, field, problem) = field_error(&batch(e));
    assert_eq!(field, "attributes_json");
    assert!(
        problem.contains("duplicate") && problem.contains("\"a\""),
        "{problem}"
    );
    // An empty object is fine, and the same as none.
    let e = protobuf::Event {
        kind: "x.a".into(),
        actor: service(),
        attributes_json: "{}".into(),
        ..protobuf::Event::default()
    };
    prepare(&decode_batch(&batch(e)).unwrap()[0], "w").unwrap();
}

#[test]
fn a_key_set_twice_is_rejected() {
    for (key, attributes) in [
        ("inputs", "{\"inputs\": 1}"),
        ("outputs", "{\"outputs\": 1}"),
        ("confidence", "{\"confidence\": 0.2}"),
        ("sample_rate", "{\"sample_rate\": 1}"),
    ] {
        let mut e = served(PredictionAttributes {
            confidence: Some(0.3),
            sample_rate: Some(0.5),
            ..inputs_outputs()
        });
        e.attributes_json = attributes.into();
        let (index, field, problem) = field_error(&batch(e));
        assert_eq!(index, 0);
        assert!(field.starts_with("prediction"), "{field}");
        assert!(
            problem.contains(&format!("\"{key}\"")) && problem.contains("attributes_json"),
            "{problem}"
        );
    }
    // A prediction field that is not set does not collide.
    let mut e = served(inputs_outputs());
    e.attributes_json = "{\"confidence\": 0.2}".into();
    let v: Value = serde_json::from_str(&decode_batch(&batch(e)).unwrap()[0]).unwrap();
    assert_eq!(v["attributes"]["confidence"], json!(0.2));
}

#[test]
fn the_actor_type_must_be_user_or_service() {
    for t in [protobuf::ActorType::Unspecified as i32, 3, -1] {
        let e = protobuf::Event {
            kind: "x.a".into(),
            actor: Some(Actor {
                id: "a".into(),
                r#type: t,
            }),
            ..protobuf::Event::default()
        };
        let (index, field, _) = field_error(&encode_two(e));
        assert_eq!((index, field), (1, "actor.type"), "type {t}");
    }
    let e = protobuf::Event {
        kind: "x.a".into(),
        actor: None,
        ..protobuf::Event::default()
    };
    let (index, field, _) = field_error(&encode_two(e));
    assert_eq!((index, field), (1, "actor"));
    // encode_batch cannot express a bad type except as UNSPECIFIED, which decode rejects.
    let bytes = encode_batch(&[json!({"kind": "x.a", "actor": {"id": "a", "type": "robot"}})]);
    assert_eq!(field_error(&bytes).1, "actor.type");
}

/// A good event, then `e`.
fn encode_two(e: protobuf::Event) -> Vec<u8> {
    let ok = protobuf::Event {
        kind: "x.a".into(),
        actor: service(),
        ..protobuf::Event::default()
    };
    EventBatch {
        events: vec![ok, e],
    }
    .encode_to_vec()
}

#[test]
fn non_finite_numbers_are_rejected() {
    for bad in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
        let (index, field, problem) = field_error(&batch(served(PredictionAttributes {
            latency_ms: Some(bad),
            ..inputs_outputs()
        })));
        assert_eq!(index, 0);
        assert!(
            field.starts_with("prediction") && problem.contains("latency_ms"),
            "{field} {problem}"
        );
    }
}

#[test]
fn semantic_checks_are_left_to_prepare() {
    // decode_batch translates; prepare validates. A prediction without its subjects decodes and
    // is then rejected by the catalogue exactly as the JSON event would be.
    let mut e = served(inputs_outputs());
    e.subject = None;
    let texts = decode_batch(&batch(e)).unwrap();
    assert!(prepare(&texts[0], "w")
        .unwrap_err()
        .to_string()
        .contains("subject.model"));
    let bytes = encode_batch(&[
        json!({"kind": "prediction.served", "actor": {"id": "a", "type": "service"}, "subject": {"model": "m", "version": "1", "request": "r"},
        "attributes": {"inputs": 1, "outputs": 2, "sample_rate": 2.0}}),
    ]);
    assert!(prepare(&decode_batch(&bytes).unwrap()[0], "w")
        .unwrap_err()
        .to_string()
        .contains("sample_rate"));
}

#[test]
fn at_most_max_proto_events_per_batch() {
    // An empty Event is two bytes on the wire: 1 + MAX events fit in 200 KB.
    let at_limit: Vec<u8> = [1u8 << 3 | 2, 0].repeat(MAX_PROTO_EVENTS);
    // Empty events decode (then fail prepare: no kind, no actor) — here only the count matters.
    assert!(matches!(
        decode_batch(&at_limit),
        Err(ProtoError::Field {
            index: 0,
            field: "actor",
            ..
        })
    ));
    let over: Vec<u8> = [1u8 << 3 | 2, 0].repeat(MAX_PROTO_EVENTS + 1);
    let err = decode_batch(&over).unwrap_err();
    assert!(matches!(err, ProtoError::TooMany { .. }), "{err:?}");
    assert!(
        err.to_string().contains(&MAX_PROTO_EVENTS.to_string()),
        "{err}"
    );
    // A large body of empty events (16 MB, the default body limit: 8 million events) is
    // refused by counting, before any event is decoded.
    let huge: Vec<u8> = [1u8 << 3 | 2, 0].repeat(8 << 20);
    let started = std::time::Instant::now();
    assert!(matches!(
        decode_batch(&huge),
        Err(ProtoError::TooMany { .. })
    ));
    assert!(
        started.elapsed() < std::time::Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
}

/// decode_batch's framing and per-event decoding accept exactly what prost's decoding of the
/// whole batch accepts. (Events are converted in order, so an earlier event's field error may
/// be reported instead of a later event's decoding error.)
fn agrees_with_prost(bytes: &[u8]) -> Result<Vec<String>, ProtoError> {
    let ours = decode_batch(bytes);
    let prost_ok = EventBatch::decode(bytes).is_ok();
    let undecodable = matches!(
        ours,
        Err(ProtoError::Malformed { .. } | ProtoError::Decode { .. })
    );
    if prost_ok {
        assert!(
            !undecodable,
            "{bytes:02x?}: prost decodes it, decode_batch says {ours:?}"
        );
    } else {
        assert!(
            ours.is_err(),
            "{bytes:02x?}: prost rejects it, decode_batch accepts it"
        );
    }
    ours
}

fn xorshift(x: &mut u64) -> u64 {
    *x ^= *x << 13;
    *x ^= *x >> 7;
    *x ^= *x << 17;
    *x
}

#[test]
fn random_bytes_never_panic() {
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    let mut ok = 0;
    for _ in 0..5_000 {
        let len = (xorshift(&mut x) % 300) as usize;
        let bytes: Vec<u8> = (0..len).map(|_| xorshift(&mut x) as u8).collect();
        if let Ok(texts) = agrees_with_prost(&bytes) {
            ok += 1;
            for t in texts {
                assert!(serde_json::from_str::<Value>(&t).unwrap().is_object());
            }
        }
    }
    assert!(ok > 0, "some random inputs (e.g. empty) decode");
}

#[test]
fn mutated_valid_batches_never_panic() {
    // Flipping bytes of a real batch reaches much deeper than random bytes: nested messages,
    // strings, JSON texts, doubles, enum values.
    let good = encode_batch(&[prediction(), approval(), custom()]);
    let mut x = 0x2545_f491_4f6c_dd1du64;
    let (mut decoded, mut prepared) = (0, 0);
    for _ in 0..5_000 {
        let mut bytes = good.clone();
        for _ in 0..=(xorshift(&mut x) % 4) {
            let at = (xorshift(&mut x) % bytes.len() as u64) as usize;
            bytes[at] = xorshift(&mut x) as u8;
        }
        if xorshift(&mut x) & 7 == 0 {
            bytes.truncate((xorshift(&mut x) % bytes.len() as u64) as usize);
        }
        if let Ok(texts) = agrees_with_prost(&bytes) {
            decoded += 1;
            for t in &texts {
                if prepare(t, "w").is_ok() {
                    prepared += 1;
                }
            }
        }
    }
    assert!(
        decoded > 0 && prepared > 0,
        "decoded {decoded}, prepared {prepared}"
    );
}
