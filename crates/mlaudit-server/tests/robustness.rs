//! Property-based robustness of the server's decoders of request bytes (proptest): Protobuf
//! batches (`protobuf::decode_batch`) and the `cursor` query parameter of `GET /v1/events`,
//! through the router. On arbitrary input and on mutations of valid input each answers `Ok` or
//! an error (a 4xx for the cursor) and never panics; length fields and counts claiming huge
//! sizes are refused at once; what a batch decodes to grows at most linearly with its bytes.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test fails loudly on any unexpected error"
)]

use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt;
use mlaudit_core::note::NoteSigner;
use mlaudit_embedded::EmbeddedStore;
use mlaudit_server::protobuf::{
    self, decode_batch, decode_batch_limited, encode_batch, Actor, EventBatch,
    PredictionAttributes, ProtoError, Subject, MAX_PROTO_EVENTS,
};
use mlaudit_server::{router, AppState};
use mlaudit_store::prelude::*;
use proptest::collection::vec;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use prost::Message;
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tower::ServiceExt;

fn config(cases: u32) -> Config {
    Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    }
}

/// Runs `f` and requires it to finish promptly: a decoder that walks or allocates what a length
/// field claims would not.
fn prompt<T>(what: &str, f: impl FnOnce() -> T) -> T {
    let started = Instant::now();
    let out = f();
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{what} took {:?}",
        started.elapsed()
    );
    out
}

// ---------------------------------------------------------------------------------------------
// Protobuf batches.
// ---------------------------------------------------------------------------------------------

fn valid_events() -> Vec<Value> {
    vec![
        json!({
            "id": "00000000-0000-4000-8000-000000000001",
            "time": "2026-11-20T10:00:00Z",
            "kind": "prediction.served",
            "actor": {"id": "scoring-api", "type": "service"},
            "subject": {"model": "credit-risk", "version": "7", "request": "req-1"},
            "attributes": {
                "inputs": {"income": 52000, "tags": ["a", "b"]},
                "outputs": {"score": 0.82},
                "confidence": 0.91,
                "latency_ms": 12.5,
                "sample_rate": 0.1,
                "feature_store": "s3://features/v3"
            }
        }),
        json!({
            "kind": "registry.approval_granted",
            "actor": {"id": "maria", "type": "user"},
            "subject": {"model": "credit-risk", "version": "7"},
            "attributes": {"approver": {"name": "Maria"}, "reason": "fairness review passed"}
        }),
        json!({"kind": "x.custom", "actor": {"id": "nightly-job", "type": "service"}}),
    ]
}

/// What every answer of `decode_batch` must satisfy: the count cannot exceed what the bytes can
/// frame (an event takes at least 2 bytes), each text is a JSON object, and the texts together
/// are at most a constant factor of the input (a string byte becomes at most a 6-byte `\u`
/// escape) plus a bounded skeleton per event.
fn check_decoded(bytes: &[u8], got: &Result<Vec<String>, ProtoError>) -> Result<(), TestCaseError> {
    match got {
        Ok(texts) => {
            prop_assert!(texts.len() <= bytes.len() / 2);
            prop_assert!(texts.len() <= MAX_PROTO_EVENTS);
            let total: usize = texts.iter().map(String::len).sum();
            prop_assert!(
                total <= 6 * bytes.len() + 512 * texts.len(),
                "{} bytes decoded to {} bytes of JSON",
                bytes.len(),
                total
            );
            for t in texts {
                let v: Value = serde_json::from_str(t).unwrap();
                prop_assert!(v.is_object());
                // The JSON path takes it from here: it must not panic either.
                let _ = mlaudit_core::event::prepare(t, "token:fuzz");
            }
        }
        Err(e) => prop_assert!(!e.to_string().is_empty()),
    }
    Ok(())
}

/// One edit of a byte string; positions are taken modulo the length.
#[derive(Clone, Debug)]
enum Mutation {
    Flip(usize, u8),
    Set(usize, u8),
    Insert(usize, Vec<u8>),
    Delete(usize, usize),
    Truncate(usize),
    Repeat(usize, usize, usize),
    /// Writes a varint (a length or a key) over the bytes at a position.
    Varint(usize, u64),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    let number = prop_oneof![
        any::<u64>(),
        Just(u64::MAX),
        Just(u64::from(u32::MAX)),
        0u64..300
    ];
    prop_oneof![
        (any::<usize>(), 0u8..8).prop_map(|(at, bit)| Mutation::Flip(at, bit)),
        (any::<usize>(), any::<u8>()).prop_map(|(at, b)| Mutation::Set(at, b)),
        (any::<usize>(), vec(any::<u8>(), 1..5)).prop_map(|(at, b)| Mutation::Insert(at, b)),
        (any::<usize>(), 1usize..17).prop_map(|(at, n)| Mutation::Delete(at, n)),
        any::<usize>().prop_map(Mutation::Truncate),
        (any::<usize>(), 1usize..40, any::<usize>())
            .prop_map(|(a, n, to)| Mutation::Repeat(a, n, to)),
        (any::<usize>(), number).prop_map(|(at, n)| Mutation::Varint(at, n)),
    ]
}

fn varint(mut n: u64) -> Vec<u8> {
    let mut out = Vec::new();
    while n >= 0x80 {
        out.push((n as u8) | 0x80);
        n >>= 7;
    }
    out.push(n as u8);
    out
}

fn mutate(base: &[u8], edits: &[Mutation]) -> Vec<u8> {
    let mut b = base.to_vec();
    for m in edits {
        let len = b.len();
        match m {
            Mutation::Flip(i, bit) if len > 0 => b[i % len] ^= 1 << bit,
            Mutation::Set(i, v) if len > 0 => b[i % len] = *v,
            Mutation::Insert(i, bytes) => {
                let i = i % (len + 1);
                b.splice(i..i, bytes.iter().copied());
            }
            Mutation::Delete(i, n) if len > 0 => {
                let i = i % len;
                b.drain(i..(i + n).min(len));
            }
            Mutation::Truncate(i) => b.truncate(i % (len + 1)),
            Mutation::Repeat(i, n, to) if len > 0 => {
                let i = i % len;
                let piece = b[i..(i + n).min(len)].to_vec();
                let to = to % (len + 1);
                b.splice(to..to, piece);
            }
            Mutation::Varint(i, n) => {
                let v = varint(*n);
                let i = i % (len + 1);
                let end = (i + v.len()).min(len);
                b.splice(i..end, v);
            }
            _ => {}
        }
    }
    b
}

fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => any::<String>(),
        1 => proptest::sample::select(&[
            "",
            "x.a",
            "prediction.served",
            "2026-11-20T10:00:00Z",
            "00000000-0000-4000-8000-000000000001",
            "{}",
            "[1,2]",
            "{\"a\":1,\"a\":2}",
            "{\"inputs\":1}",
            "1e15",
            "null",
            "\u{0}\u{1}\u{1f}",
        ][..])
        .prop_map(str::to_owned),
    ]
}

fn any_event() -> impl Strategy<Value = protobuf::Event> {
    let subject = vec(proptest::option::of(text()), 8).prop_map(|v| Subject {
        model: v[0].clone(),
        version: v[1].clone(),
        dataset: v[2].clone(),
        dataset_version: v[3].clone(),
        run: v[4].clone(),
        pipeline_run: v[5].clone(),
        deployment: v[6].clone(),
        request: v[7].clone(),
    });
    let number = proptest::option::of(prop_oneof![
        any::<f64>(),
        Just(f64::NAN),
        Just(f64::INFINITY),
        Just(-0.0)
    ]);
    let prediction = (text(), text(), number.clone(), number.clone(), number).prop_map(
        |(inputs_json, outputs_json, confidence, latency_ms, sample_rate)| PredictionAttributes {
            inputs_json,
            outputs_json,
            confidence,
            latency_ms,
            sample_rate,
        },
    );
    let actor = (text(), -2i32..5).prop_map(|(id, r#type)| Actor { id, r#type });
    (
        (text(), text(), text()),
        proptest::option::of(actor),
        proptest::option::of(subject),
        text(),
        proptest::option::of(prediction),
    )
        .prop_map(
            |((id, time, kind), actor, subject, attributes_json, prediction)| protobuf::Event {
                id,
                time,
                kind,
                actor,
                subject,
                attributes_json,
                prediction,
            },
        )
}

proptest! {
    #![proptest_config(config(256))]

    #[test]
    fn decode_batch_never_panics_on_arbitrary_bytes(bytes in vec(any::<u8>(), 0..300)) {
        check_decoded(&bytes, &decode_batch(&bytes))?;
    }

    #[test]
    fn decode_batch_never_panics_on_mutated_batches(
        which in proptest::sample::subsequence(vec![0usize, 1, 2], 0..=3),
        edits in vec(mutation(), 1..5),
    ) {
        let events: Vec<Value> = which.iter().map(|i| valid_events()[*i].clone()).collect();
        let good = encode_batch(&events);
        prop_assert_eq!(decode_batch(&good).unwrap().len(), events.len());
        let bad = mutate(&good, &edits);
        check_decoded(&bad, &decode_batch(&bad))?;
    }

    #[test]
    fn decode_batch_never_panics_on_arbitrary_messages(
        events in vec(any_event(), 0..4),
        limit in 0usize..5,
    ) {
        let bytes = EventBatch { events: events.clone() }.encode_to_vec();
        let got = decode_batch(&bytes);
        check_decoded(&bytes, &got)?;
        if let Ok(texts) = &got {
            prop_assert_eq!(texts.len(), events.len());
        }
        match decode_batch_limited(&bytes, limit) {
            Err(ProtoError::TooMany { count, max }) => {
                prop_assert!(events.len() > limit && max == limit && count == limit + 1);
            }
            other => {
                prop_assert!(events.len() <= limit);
                prop_assert_eq!(other.is_ok(), got.is_ok());
            }
        }
    }
}

#[test]
fn batches_claiming_huge_sizes_are_refused_at_once() {
    let refused = |what: &str, bytes: &[u8]| {
        let got = prompt(what, || decode_batch(bytes));
        assert!(got.is_err(), "{what}: {got:?}");
        got.unwrap_err()
    };
    // An events entry (field 1, length-delimited) claiming u64::MAX, u32::MAX or a few more
    // bytes than there are.
    for claim in [u64::MAX, u64::from(u32::MAX), 10] {
        let mut bytes = vec![0x0a];
        bytes.extend(varint(claim));
        bytes.extend_from_slice(&[0; 8]);
        let e = refused("claimed length", &bytes);
        assert!(matches!(e, ProtoError::Malformed { .. }), "{claim}: {e}");
    }
    // Inside a well-framed event: a kind (field 3) claiming u32::MAX bytes.
    let mut event = vec![0x1a];
    event.extend(varint(u64::from(u32::MAX)));
    event.extend_from_slice(b"x.a");
    let mut bytes = vec![0x0a];
    bytes.extend(varint(event.len() as u64));
    bytes.extend(&event);
    let e = refused("inner length", &bytes);
    assert!(matches!(e, ProtoError::Decode { index: 0, .. }), "{e}");
    // A varint of eleven bytes.
    let e = refused(
        "long varint",
        &[
            0x0a, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01,
        ],
    );
    assert!(matches!(e, ProtoError::Malformed { .. }), "{e}");
    // More events than the limit, each 2 bytes: counted, not decoded.
    let bytes = [0x0a, 0x00].repeat(MAX_PROTO_EVENTS + 1);
    let e = refused("too many events", &bytes);
    assert!(
        matches!(e, ProtoError::TooMany { count, max } if count == MAX_PROTO_EVENTS + 1 && max == MAX_PROTO_EVENTS),
        "{e}"
    );
    // Unknown groups nested 100,000 deep (field 2, start group): refused, not recursed into.
    let bytes = vec![0x13; 100_000];
    let e = refused("deep groups", &bytes);
    assert!(matches!(e, ProtoError::Malformed { .. }), "{e}");
    // JSON nested 100,000 deep inside attributes_json and a prediction's inputs.
    let deep = format!("{}1{}", "[".repeat(100_000), "]".repeat(100_000));
    for e in [
        protobuf::Event {
            kind: "x.a".into(),
            actor: Some(Actor {
                id: "a".into(),
                r#type: protobuf::ActorType::User as i32,
            }),
            attributes_json: format!("{{\"a\":{deep}}}"),
            ..protobuf::Event::default()
        },
        protobuf::Event {
            kind: "prediction.served".into(),
            actor: Some(Actor {
                id: "a".into(),
                r#type: protobuf::ActorType::User as i32,
            }),
            prediction: Some(PredictionAttributes {
                inputs_json: deep.clone(),
                outputs_json: "1".into(),
                ..PredictionAttributes::default()
            }),
            ..protobuf::Event::default()
        },
    ] {
        let bytes = EventBatch { events: vec![e] }.encode_to_vec();
        let e = refused("deep JSON", &bytes);
        assert!(matches!(e, ProtoError::Field { index: 0, .. }), "{e}");
    }
}

// ---------------------------------------------------------------------------------------------
// The query cursor, through the router.
// ---------------------------------------------------------------------------------------------

/// A store of `PAGED` events of kind `x.page` (plus whatever reads record) behind the router,
/// without authentication.
struct Served {
    dir: std::path::PathBuf,
    store: Arc<EmbeddedStore>,
    state: AppState,
    rt: tokio::runtime::Runtime,
}

const PAGED: usize = 23;

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.store.close();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn served(name: &str) -> Served {
    let dir = std::env::temp_dir().join(format!(
        "mlaudit-server-robustness-{name}-{}",
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    let signer = NoteSigner::from_seed("test.mlaudit/robustness", [8; 32]).unwrap();
    let (store, _) = EmbeddedStore::open(&dir, Some(signer.clone())).unwrap();
    let store = Arc::new(store);
    let events = (0..PAGED)
        .map(|i| {
            let json = json!({"kind": "x.page", "actor": {"id": "a", "type": "user"}, "attributes": {"i": i}});
            mlaudit_core::event::prepare(&json.to_string(), "token:setup").unwrap()
        })
        .collect();
    store.append(events).unwrap();
    let state = AppState::new(store.clone(), signer.verifier(), None);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    Served {
        dir,
        store,
        state,
        rt,
    }
}

/// Every byte but the unreserved ones as `%XX`.
fn percent_encode(bytes: &[u8]) -> String {
    bytes
        .iter()
        .map(|&b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                char::from(b).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

impl Served {
    /// A GET through the router: the status and the JSON body.
    fn get(&self, uri: &str) -> (StatusCode, Value) {
        self.rt.block_on(async {
            let resp = router(self.state.clone())
                .oneshot(Request::get(uri).body(Body::empty()).unwrap())
                .await
                .unwrap();
            let status = resp.status();
            let body = resp.into_body().collect().await.unwrap().to_bytes();
            let body = serde_json::from_slice(&body).unwrap_or_else(|e| {
                panic!("{uri}: not JSON ({e}): {}", String::from_utf8_lossy(&body))
            });
            (status, body)
        })
    }

    /// `GET /v1/events?kind=x.page&limit=5&cursor=<cursor>`.
    fn page(&self, cursor: &[u8]) -> (StatusCode, Value) {
        self.get(&format!(
            "/v1/events?kind=x.page&limit=5&cursor={}",
            percent_encode(cursor)
        ))
    }
}

/// The seqs of a page, checked to be `x.page` events after `after`, at most 5, ascending.
fn seqs_of(body: &Value, after: Option<u64>) -> Vec<u64> {
    let events = body["events"].as_array().unwrap();
    assert!(events.len() <= 5, "{body}");
    let seqs: Vec<u64> = events
        .iter()
        .map(|e| {
            assert_eq!(e["event"]["kind"], "x.page", "{e}");
            e["seq"].as_u64().unwrap()
        })
        .collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");
    if let Some(after) = after {
        assert!(seqs.iter().all(|s| *s > after), "{seqs:?} after {after}");
    }
    seqs
}

#[test]
fn arbitrary_cursors_are_a_page_or_a_400_never_a_panic() {
    let s = served("cursor");
    let cursor = prop_oneof![
        any::<String>().prop_map(String::into_bytes),
        vec(any::<u8>(), 0..24),
        "[+-]?[0-9]{0,25}".prop_map(String::into_bytes),
        any::<u64>().prop_map(|n| n.to_string().into_bytes()),
    ];
    let mut runner = TestRunner::new(config(96));
    runner
        .run(&cursor, |c| {
            let (status, body) = s.page(&c);
            let text = std::str::from_utf8(&c).ok();
            // Only what `next_cursor` writes: decimal digits, no sign, no leading zero.
            let canonical = |t: &&str| {
                !t.is_empty()
                    && t.bytes().all(|b| b.is_ascii_digit())
                    && (*t == "0" || !t.starts_with('0'))
            };
            let number = text.filter(canonical).and_then(|t| t.parse::<u64>().ok());
            match status {
                StatusCode::OK => {
                    prop_assert!(number.is_some(), "{:?} was taken as a cursor", text);
                    seqs_of(&body, number);
                }
                StatusCode::BAD_REQUEST => {
                    prop_assert!(number.is_none(), "the cursor {:?} was refused", text);
                    prop_assert_eq!(&body["error"]["code"], "bad_request");
                }
                other => {
                    return Err(TestCaseError::fail(format!("{c:?}: status {other} {body}")));
                }
            }
            Ok(())
        })
        .unwrap();
}

#[test]
fn cursors_page_through_every_event_once_and_huge_ones_are_refused() {
    let s = served("pages");
    // From the first page to the last, following next_cursor.
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let (status, body) = match &cursor {
            None => s.get("/v1/events?kind=x.page&limit=5"),
            Some(c) => s.page(c.as_bytes()),
        };
        assert_eq!(status, StatusCode::OK, "{body}");
        let after = cursor.as_deref().map(|c| c.parse().unwrap());
        seen.extend(seqs_of(&body, after));
        match body["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => break,
        }
        assert!(seen.len() <= PAGED, "pagination does not end: {seen:?}");
    }
    assert_eq!(seen, (0..PAGED as u64).collect::<Vec<_>>());
    // The largest seq there can be: an empty last page.
    let (status, body) = s.page(u64::MAX.to_string().as_bytes());
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["events"], json!([]));
    assert_eq!(body["next_cursor"], Value::Null);
    // Beyond u64, negative, empty, 10,000 digits: 400, promptly.
    for bad in [
        "18446744073709551616".to_owned(),
        "-1".to_owned(),
        String::new(),
        "9".repeat(10_000),
        " 1".to_owned(),
        "0x10".to_owned(),
    ] {
        let (status, body) = prompt("a cursor", || s.page(bad.as_bytes()));
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad:?}: {body}");
        assert_eq!(body["error"]["code"], "bad_request");
    }
    assert!(s.store.tree_size() >= PAGED as u64);
}
