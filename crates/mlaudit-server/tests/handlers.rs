//! Handler tests without sockets (`Router::oneshot`) over a real embedded store: every ingest
//! shape, all-or-nothing batches, idempotent retries, limits and bad input (each a 4xx JSON
//! error with the store unchanged), and the read endpoints.

#![allow(
    clippy::unwrap_used,
    reason = "a test fails loudly on any unexpected error"
)]

use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt;
use mlaudit_server::{router, AppState, Limits};
use mlaudit_store::prelude::*;
use serde_json::{json, Value};
use std::io::Write;
use std::sync::Arc;
use tower::ServiceExt;

mod common;

use common::*;

#[tokio::test]
async fn ingests_one_object_an_array_and_ndjson() {
    let f = fixture("shapes", Limits::default());
    let r = post(&f, "application/json", event(0).to_string()).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let body = r.json();
    assert_eq!(body["events"][0]["seq"], 0);
    assert_eq!(
        body["events"][0]["id"],
        "00000000-0000-4000-8000-000000000000"
    );
    assert_eq!(body["events"][0]["duplicate"], false);
    assert_eq!(body["tree_size"], 1);
    assert!(body["checkpoint"]
        .as_str()
        .unwrap()
        .starts_with("test.mlaudit/server\n1\n"));

    let r = post(
        &f,
        "application/json",
        json!([event(1), event(2)]).to_string(),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(
        r.json()["events"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["seq"].as_u64().unwrap())
            .collect::<Vec<_>>(),
        vec![1, 2]
    );

    let r = post(
        &f,
        "application/x-ndjson; charset=utf-8",
        ndjson(&[event(3), event(4), event(5)]),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(r.json()["tree_size"], 6);
    assert_eq!(f.store.tree_size(), 6);
    let e = get(&f, "/v1/events/4").await.json();
    assert_eq!(
        e["event"]["principal"], "token:writer",
        "the server records the authenticated principal"
    );
}

#[tokio::test]
async fn gzip_bodies_are_accepted() {
    let f = fixture("gzip", Limits::default());
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(ndjson(&[event(0), event(1)]).as_bytes())
        .unwrap();
    let body = gz.finish().unwrap();
    let req = Request::post("/v1/events")
        .header("authorization", bearer(&f.writer))
        .header("content-type", "application/x-ndjson")
        .header("content-encoding", "gzip")
        .body(Body::from(body))
        .unwrap();
    let r = call(&f, req).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(f.store.tree_size(), 2);
    let req = Request::post("/v1/events")
        .header("authorization", bearer(&f.writer))
        .header("content-type", "application/json")
        .header("content-encoding", "gzip")
        .body(Body::from("not gzip"))
        .unwrap();
    assert_rejected(
        &f,
        &call(&f, req).await,
        StatusCode::BAD_REQUEST,
        "bad_request",
        2,
    );
    let req = Request::post("/v1/events")
        .header("authorization", bearer(&f.writer))
        .header("content-type", "application/json")
        .header("content-encoding", "br")
        .body(Body::from("{}"))
        .unwrap();
    assert_rejected(
        &f,
        &call(&f, req).await,
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "unsupported_media_type",
        2,
    );
}

#[tokio::test]
async fn a_batch_with_an_invalid_event_writes_nothing_and_names_each_by_index() {
    let f = fixture("all-or-nothing", Limits::default());
    let mut bad = event(1);
    bad["kind"] = json!("registry.approval_granted");
    let mut unknown = event(3);
    unknown["kind"] = json!("no.such_kind");
    let r = post(
        &f,
        "application/json",
        json!([event(0), bad, event(2), unknown]).to_string(),
    )
    .await;
    assert_rejected(
        &f,
        &r,
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_events",
        0,
    );
    let details = r.json()["error"]["details"].clone();
    assert_eq!(details.as_array().unwrap().len(), 2, "{details}");
    assert_eq!(details[0]["index"], 1);
    assert_eq!(
        details[0]["error"],
        "registry.approval_granted: attributes.approver is required"
    );
    assert_eq!(details[1]["index"], 3);
    assert!(
        details[1]["error"]
            .as_str()
            .unwrap()
            .contains("unknown kind"),
        "{details}"
    );
}

#[tokio::test]
async fn retrying_an_id_returns_the_original_seq_and_writes_nothing() {
    let f = fixture("idempotent", Limits::default());
    post(
        &f,
        "application/json",
        json!([event(0), event(1)]).to_string(),
    )
    .await;
    let r = post(
        &f,
        "application/json",
        json!([event(1), event(2)]).to_string(),
    )
    .await;
    let body = r.json();
    assert_eq!(
        body["events"][0],
        json!({"id": "00000000-0000-4000-8000-000000000001", "seq": 1, "duplicate": true})
    );
    assert_eq!(body["events"][1]["seq"], 2);
    assert_eq!(f.store.tree_size(), 3);
}

#[tokio::test]
async fn bad_input_gets_a_4xx_json_error_and_changes_nothing() {
    let f = fixture(
        "bad-input",
        Limits {
            max_body_bytes: 4096,
            max_events_per_batch: 3,
            ..Limits::default()
        },
    );
    post(&f, "application/json", event(0).to_string()).await;
    let cases: Vec<(&str, Vec<u8>, StatusCode, &str)> = vec![
        (
            "application/json",
            b"{not json".to_vec(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_events",
        ),
        (
            "application/json",
            b"[1, 2".to_vec(),
            StatusCode::BAD_REQUEST,
            "bad_request",
        ),
        (
            "application/json",
            vec![b'{', 0xff, 0xfe, b'}'],
            StatusCode::BAD_REQUEST,
            "bad_request",
        ),
        (
            "application/json",
            b"".to_vec(),
            StatusCode::BAD_REQUEST,
            "bad_request",
        ),
        (
            "application/json",
            b"[]".to_vec(),
            StatusCode::BAD_REQUEST,
            "bad_request",
        ),
        (
            "text/plain",
            event(1).to_string().into_bytes(),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
        ),
        (
            "",
            event(1).to_string().into_bytes(),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
        ),
        (
            "application/x-ndjson",
            ndjson(&[event(1), event(2), event(3), event(4)]).into_bytes(),
            StatusCode::PAYLOAD_TOO_LARGE,
            "limit_exceeded",
        ),
        (
            "application/json",
            vec![b' '; 5000],
            StatusCode::PAYLOAD_TOO_LARGE,
            "limit_exceeded",
        ),
    ];
    for (ct, body, status, code) in cases {
        let mut req = Request::post("/v1/events").header("authorization", bearer(&f.writer));
        if !ct.is_empty() {
            req = req.header("content-type", ct);
        }
        let r = call(&f, req.body(Body::from(body.clone())).unwrap()).await;
        assert_rejected(&f, &r, status, code, 1);
    }
    let r = post(
        &f,
        "application/x-ndjson",
        ndjson(&[event(1), event(2), event(3), event(4)]),
    )
    .await;
    assert_eq!(
        r.json()["error"]["details"],
        json!({"limit": "max_events_per_batch", "max": 3})
    );
    let report =
        mlaudit_store::verify::verify(&*f.store, &f.state.verifier, &mut |_, _| {}).unwrap();
    assert_eq!(report.events, 1);
}

#[tokio::test]
async fn read_endpoints() {
    let f = fixture("read", Limits::default());
    post(
        &f,
        "application/x-ndjson",
        ndjson(&(0..2).map(event).collect::<Vec<_>>()),
    )
    .await;
    post(
        &f,
        "application/x-ndjson",
        ndjson(&(2..5).map(event).collect::<Vec<_>>()),
    )
    .await;
    assert_eq!(f.store.checkpoint_sizes().unwrap(), vec![0, 2, 5]);

    let r = get(&f, "/v1/events/00000000-0000-4000-8000-000000000003").await;
    assert_eq!(r.status, StatusCode::OK);
    let e = r.json();
    assert_eq!(e["seq"], 3);
    assert_eq!(e["leaf_hash"].as_str().unwrap().len(), 64);
    assert_eq!(get(&f, "/v1/events/3").await.json(), e);
    assert_eq!(
        get(&f, "/v1/events/00000000-0000-4000-8000-000000000099")
            .await
            .status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        get(&f, "/v1/events/garbage").await.status,
        StatusCode::NOT_FOUND,
        "a reference that names no event is not found"
    );

    let page = get(&f, "/v1/events?model=credit-risk&limit=2").await.json();
    assert_eq!(page["events"].as_array().unwrap().len(), 2);
    assert_eq!(page["next_cursor"], "1");
    let page2 = get(&f, "/v1/events?model=credit-risk&limit=2&cursor=1")
        .await
        .json();
    assert_eq!(page2["events"][0]["seq"], 2);
    let last = get(&f, "/v1/events?model=credit-risk&limit=2&cursor=3")
        .await
        .json();
    assert_eq!(last["events"].as_array().unwrap().len(), 1);
    assert_eq!(last["next_cursor"], Value::Null);
    assert_eq!(get(&f, "/v1/events?stage=prediction&kind=prediction.served&version=7&actor=scoring-api&since=2026-01-01T00:00:00Z&until=2027-01-01T00:00:00Z").await.json()["events"].as_array().unwrap().len(), 5);
    assert_eq!(
        get(&f, "/v1/events?model=other").await.json()["events"]
            .as_array()
            .unwrap()
            .len(),
        0
    );
    for bad in [
        "/v1/events?limit=0",
        "/v1/events?limit=x",
        "/v1/events?since=yesterday",
        "/v1/events?stage=nope",
        "/v1/events?cursor=x",
        "/v1/events?bogus=1",
    ] {
        let r = get(&f, bad).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{bad}: {}", r.text());
        assert_eq!(r.json()["error"]["code"], "bad_request");
    }

    let l = get(&f, "/v1/lineage/2").await.json();
    assert_eq!(l["model"], "credit-risk");
    assert_eq!(l["event"]["seq"], 2);

    let cp = get(&f, "/v1/checkpoint").await;
    assert!(cp.content_type.starts_with("text/plain"));
    assert!(
        cp.text()
            .starts_with(&format!("test.mlaudit/server\n{}\n", f.store.tree_size())),
        "reads are audited, so the log grew: {}",
        cp.text()
    );
    let key = get(&f, "/v1/verifier-key").await.text();
    assert_eq!(key.trim(), f.state.verifier.to_text());

    let bundle: mlaudit_core::bundle::ProofBundle = serde_json::from_slice(
        &get(
            &f,
            "/v1/proof/inclusion/00000000-0000-4000-8000-000000000002",
        )
        .await
        .body,
    )
    .unwrap();
    assert_eq!(bundle.leaf_index, 2);
    bundle.verify(&f.state.verifier).unwrap();

    let c = get(&f, "/v1/proof/consistency?from=2&to=5").await;
    assert_eq!(c.status, StatusCode::OK, "{}", c.text());
    let proof: Value = c.json();
    assert_eq!(proof["from"], 2);
    assert_eq!(proof["to"], 5);
    let old = mlaudit_core::note::open_checkpoint(
        &f.state.verifier,
        proof["from_checkpoint"].as_str().unwrap(),
    )
    .unwrap();
    let new = mlaudit_core::note::open_checkpoint(
        &f.state.verifier,
        proof["to_checkpoint"].as_str().unwrap(),
    )
    .unwrap();
    let hashes: Vec<mlaudit_core::Hash> = proof["proof"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| {
            mlaudit_core::Hash::from_slice(&mlaudit_core::b64::decode(h.as_str().unwrap()).unwrap())
                .unwrap()
        })
        .collect();
    mlaudit_core::merkle::verify_consistency(2, 5, &old.root, &new.root, &hashes).unwrap();
    let latest = *f.store.checkpoint_sizes().unwrap().last().unwrap();
    assert_eq!(
        get(&f, "/v1/proof/consistency?from=2").await.json()["to"],
        latest,
        "to defaults to the latest checkpoint"
    );
    assert_eq!(
        get(&f, "/v1/proof/consistency?from=3").await.status,
        StatusCode::NOT_FOUND,
        "no checkpoint at size 3"
    );
    assert_eq!(
        get(&f, "/v1/proof/consistency").await.status,
        StatusCode::BAD_REQUEST
    );

    assert_eq!(get(&f, "/healthz").await.json()["status"], "ok");
    assert_eq!(
        get(&f, "/readyz").await.json()["tree_size"],
        f.store.tree_size()
    );
    let r = get(&f, "/v1/nope").await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert_eq!(r.json()["error"]["code"], "not_found");
}

/// Who calls: no token, a wrong token, or one of the three roles.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Caller {
    Nobody,
    Wrong,
    Writer,
    Reader,
    Admin,
}

fn token_of(f: &Fixture, c: Caller) -> Option<String> {
    match c {
        Caller::Nobody => None,
        Caller::Wrong => {
            Some("mla_0000000000000000000000000000000000000000000000000000000000000000".into())
        }
        Caller::Writer => Some(f.writer.clone()),
        Caller::Reader => Some(f.reader.clone()),
        Caller::Admin => Some(f.admin.clone()),
    }
}

async fn call_as(
    f: &Fixture,
    c: Caller,
    method: &str,
    uri: &str,
    content_type: &str,
    body: String,
) -> Reply {
    let mut req = Request::builder().method(method).uri(uri);
    if let Some(t) = token_of(f, c) {
        req = req.header("authorization", bearer(&t));
    }
    if !content_type.is_empty() {
        req = req.header("content-type", content_type);
    }
    call(f, req.body(Body::from(body)).unwrap()).await
}

#[tokio::test]
async fn role_matrix_every_endpoint_by_every_caller() {
    use Caller::*;
    for public_proofs in [true, false] {
        let mut f = fixture(
            if public_proofs {
                "matrix-public"
            } else {
                "matrix-private"
            },
            Limits::default(),
        );
        f.state.public_proofs = public_proofs;
        post(
            &f,
            "application/json",
            json!([event(0), event(1)]).to_string(),
        )
        .await;
        let proof_ok: &[Caller] = if public_proofs {
            &[Nobody, Writer, Reader, Admin]
        } else {
            &[Writer, Reader, Admin]
        };
        let leaf = mlaudit_core::merkle::leaf_hash(&f.store.event(0).unwrap().entry).to_hex();
        let routes: Vec<(&str, String, &str, String, &[Caller])> = vec![
            (
                "POST",
                "/v1/events".into(),
                "application/json",
                event(9).to_string(),
                &[Writer],
            ),
            (
                "GET",
                "/v1/events".into(),
                "",
                String::new(),
                &[Reader, Admin],
            ),
            (
                "GET",
                "/v1/events/0".into(),
                "",
                String::new(),
                &[Reader, Admin],
            ),
            (
                "GET",
                "/v1/lineage/0".into(),
                "",
                String::new(),
                &[Reader, Admin],
            ),
            ("GET", "/v1/checkpoint".into(), "", String::new(), proof_ok),
            (
                "GET",
                "/v1/verifier-key".into(),
                "",
                String::new(),
                proof_ok,
            ),
            (
                "GET",
                "/v1/proof/inclusion/0".into(),
                "",
                String::new(),
                &[Reader, Admin],
            ),
            (
                "GET",
                format!("/v1/proof/inclusion?leaf_hash={leaf}"),
                "",
                String::new(),
                proof_ok,
            ),
            (
                "GET",
                "/v1/proof/consistency?from=2".into(),
                "",
                String::new(),
                proof_ok,
            ),
            // Fully public: answered whatever Authorization is sent, even a wrong one.
            (
                "GET",
                "/healthz".into(),
                "",
                String::new(),
                &[Nobody, Wrong, Writer, Reader, Admin],
            ),
            (
                "GET",
                "/readyz".into(),
                "",
                String::new(),
                &[Nobody, Wrong, Writer, Reader, Admin],
            ),
            (
                "GET",
                "/openapi.json".into(),
                "",
                String::new(),
                &[Nobody, Wrong, Writer, Reader, Admin],
            ),
            (
                "GET",
                "/metrics".into(),
                "",
                String::new(),
                &[Reader, Admin],
            ),
            ("GET", "/v1/tokens".into(), "", String::new(), &[Admin]),
            (
                "GET",
                "/v1/holds".into(),
                "",
                String::new(),
                &[Reader, Admin],
            ),
            (
                "POST",
                "/v1/holds".into(),
                "application/json",
                json!({"model": "credit-risk", "reason": "matrix"}).to_string(),
                &[Admin],
            ),
            (
                "POST",
                "/v1/tokens".into(),
                "application/json",
                json!({"name": "made-by-matrix", "role": "reader"}).to_string(),
                &[Admin],
            ),
            (
                "PUT",
                "/v1/tokens/made-by-matrix".into(),
                "application/json",
                json!({"role": "writer"}).to_string(),
                &[Admin],
            ),
            (
                "DELETE",
                "/v1/tokens/made-by-matrix".into(),
                "",
                String::new(),
                &[Admin],
            ),
        ];
        for (method, uri, ct, body, allowed) in routes {
            for caller in [Nobody, Wrong, Writer, Reader, Admin] {
                let r = call_as(&f, caller, method, &uri, ct, body.clone()).await;
                let expected = if allowed.contains(&caller) {
                    r.status // checked below: a success
                } else if caller == Wrong || caller == Nobody {
                    StatusCode::UNAUTHORIZED
                } else {
                    StatusCode::FORBIDDEN
                };
                assert_eq!(
                    r.status,
                    expected,
                    "{method} {uri} as {caller:?} (public proofs {public_proofs}): {}",
                    r.text()
                );
                if allowed.contains(&caller) {
                    assert!(
                        r.status.is_success(),
                        "{method} {uri} as {caller:?}: {} {}",
                        r.status,
                        r.text()
                    );
                } else {
                    assert_eq!(
                        r.json()["error"]["code"],
                        if expected == StatusCode::UNAUTHORIZED {
                            "unauthorized"
                        } else {
                            "forbidden"
                        }
                    );
                }
            }
        }
    }
}

/// A full bundle (entry header and payload) is reader data; anyone may ask for the proof of a
/// leaf whose hash they already hold, and gets hashes only, which verify against the entry.
#[tokio::test]
async fn bundles_need_a_reader_and_proofs_by_leaf_hash_reveal_only_hashes() {
    let f = fixture("by-hash", Limits::default());
    post(
        &f,
        "application/json",
        json!([event(0), event(1)]).to_string(),
    )
    .await;
    for caller in [Caller::Nobody, Caller::Writer] {
        let r = call_as(
            &f,
            caller,
            "GET",
            "/v1/proof/inclusion/0",
            "",
            String::new(),
        )
        .await;
        assert!(
            matches!(r.status, StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN),
            "{caller:?}: {}",
            r.status
        );
    }
    let full: mlaudit_core::bundle::ProofBundle =
        serde_json::from_slice(&get(&f, "/v1/proof/inclusion/1").await.body).unwrap();
    assert!(full.payload.is_some());
    let entry = f.store.event(1).unwrap().entry;
    let leaf = mlaudit_core::merkle::leaf_hash(&entry);
    let uri = format!("/v1/proof/inclusion?leaf_hash={}", leaf.to_hex());
    for caller in [Caller::Nobody, Caller::Writer, Caller::Reader] {
        let r = call_as(&f, caller, "GET", &uri, "", String::new()).await;
        assert_eq!(r.status, StatusCode::OK, "{caller:?}: {}", r.text());
        let v = r.json();
        let keys: Vec<&String> = v.as_object().unwrap().keys().collect();
        assert_eq!(
            keys,
            ["checkpoint", "inclusion_path", "leaf_index", "tree_size"]
        );
        assert_eq!(v["leaf_index"], 1);
        assert!(
            !r.text().contains("credit-risk"),
            "no event content: {}",
            r.text()
        );
        // It verifies against the entry the caller holds.
        let cp = mlaudit_core::note::open_checkpoint(
            &f.state.verifier,
            v["checkpoint"].as_str().unwrap(),
        )
        .unwrap();
        assert_eq!(
            v["tree_size"].as_u64(),
            Some(cp.size),
            "the latest checkpoint's size"
        );
        let path: Vec<mlaudit_core::merkle::Hash> = v["inclusion_path"]
            .as_array()
            .unwrap()
            .iter()
            .map(|h| {
                let b = mlaudit_core::b64::decode(h.as_str().unwrap()).unwrap();
                mlaudit_core::merkle::Hash::from_slice(&b).unwrap()
            })
            .collect();
        mlaudit_core::merkle::verify_inclusion(1, cp.size, &leaf, &path, &cp.root).unwrap();
    }
    // An older tree size that has a checkpoint, and the ones that cannot answer.
    let older = get(
        &f,
        &format!(
            "/v1/proof/inclusion?leaf_hash={}&tree_size=0",
            leaf.to_hex()
        ),
    )
    .await;
    assert_eq!(older.status, StatusCode::NOT_FOUND, "{}", older.text());
    let mut unknown = leaf;
    unknown.0[0] ^= 1;
    let r = get(
        &f,
        &format!("/v1/proof/inclusion?leaf_hash={}", unknown.to_hex()),
    )
    .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    for bad in ["abc", "zz"] {
        let r = get(&f, &format!("/v1/proof/inclusion?leaf_hash={bad}")).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.text());
    }
}

#[tokio::test]
async fn reads_are_audited_and_token_changes_are_recorded() {
    let f = fixture("audit", Limits::default());
    post(
        &f,
        "application/json",
        json!([event(0), event(1)]).to_string(),
    )
    .await;
    assert_eq!(
        get(&f, "/v1/events?model=credit-risk").await.status,
        StatusCode::OK
    );
    let audits = mlaudit_store::Query {
        kind: Some("governance.audit_accessed".into()),
        limit: 10,
        ..Default::default()
    };
    let seqs = f.store.query(&audits).unwrap();
    assert_eq!(seqs.len(), 1);
    let a = mlaudit_store::view::event_json(&*f.store, seqs[0]).unwrap();
    assert_eq!(a["event"]["actor"]["id"], "token:reader");
    assert_eq!(a["event"]["principal"], "token:reader");
    assert_eq!(
        a["event"]["attributes"]["request"],
        "GET /v1/events?model=credit-risk"
    );
    assert_eq!(a["event"]["attributes"]["results"], 2);

    let r = call_as(
        &f,
        Caller::Admin,
        "POST",
        "/v1/tokens",
        "application/json",
        json!({"name": "scorer", "role": "writer"}).to_string(),
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text());
    let token = r.json()["token"].as_str().unwrap().to_owned();
    let listed = call_as(&f, Caller::Admin, "GET", "/v1/tokens", "", String::new()).await;
    assert!(
        !listed.text().contains(&token) && !listed.text().contains("sha256"),
        "tokens are never shown again: {}",
        listed.text()
    );
    let ok = call(
        &f,
        Request::post("/v1/events")
            .header("authorization", bearer(&token))
            .header("content-type", "application/json")
            .body(Body::from(event(5).to_string()))
            .unwrap(),
    )
    .await;
    assert_eq!(ok.status, StatusCode::OK);
    let dup = call_as(
        &f,
        Caller::Admin,
        "POST",
        "/v1/tokens",
        "application/json",
        json!({"name": "scorer", "role": "reader"}).to_string(),
    )
    .await;
    assert_eq!(dup.status, StatusCode::CONFLICT);
    assert_eq!(
        call_as(
            &f,
            Caller::Admin,
            "DELETE",
            "/v1/tokens/scorer",
            "",
            String::new()
        )
        .await
        .status,
        StatusCode::OK
    );
    let denied = call(
        &f,
        Request::post("/v1/events")
            .header("authorization", bearer(&token))
            .header("content-type", "application/json")
            .body(Body::from(event(6).to_string()))
            .unwrap(),
    )
    .await;
    assert_eq!(denied.status, StatusCode::UNAUTHORIZED);

    let changes = mlaudit_store::Query {
        kind: Some("governance.access_changed".into()),
        limit: 10,
        ..Default::default()
    };
    let changes: Vec<Value> = f
        .store
        .query(&changes)
        .unwrap()
        .into_iter()
        .map(|s| mlaudit_store::view::event_json(&*f.store, s).unwrap())
        .collect();
    assert_eq!(changes.len(), 2);
    assert_eq!(
        changes[0]["event"]["attributes"],
        json!({"principal": "token:scorer", "role": "writer", "change": "granted"})
    );
    assert_eq!(changes[0]["event"]["actor"]["id"], "token:admin");
    assert_eq!(changes[1]["event"]["attributes"]["change"], "revoked");
}

#[tokio::test]
async fn metrics_count_ingest_latency_syncs_and_size() {
    let f = fixture("metrics", Limits::default());
    post(
        &f,
        "application/json",
        json!([event(0), event(1), event(2)]).to_string(),
    )
    .await;
    post(&f, "application/json", json!([event(2)]).to_string()).await;
    let r = get(&f, "/metrics").await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(r.content_type.starts_with("text/plain; version=0.0.4"));
    let text = r.text();
    assert!(
        text.contains("mlaudit_events_ingested_total{stage=\"prediction\"} 3\n"),
        "duplicates are not counted: {text}"
    );
    assert!(
        text.contains("mlaudit_events_ingested_total{stage=\"governance\"} 0\n"),
        "{text}"
    );
    assert!(text.contains("mlaudit_http_request_duration_seconds_count{method=\"POST\",route=\"/v1/events\",status=\"200\"} 2\n"), "{text}");
    assert!(text.contains("mlaudit_http_request_duration_seconds_bucket{method=\"POST\",route=\"/v1/events\",status=\"200\",le=\"+Inf\"} 2\n"), "{text}");
    assert!(
        text.contains(&format!("mlaudit_tree_size {}\n", f.store.tree_size())),
        "{text}"
    );
    let syncs = text
        .lines()
        .find_map(|l| l.strip_prefix("mlaudit_sync_batch_events_count "))
        .unwrap()
        .parse::<u64>()
        .unwrap();
    assert!(syncs >= 1, "{text}");
    assert!(
        text.contains("mlaudit_sync_batch_events_bucket{le=\"+Inf\"}"),
        "{text}"
    );
    let bytes = text
        .lines()
        .find_map(|l| l.strip_prefix("mlaudit_log_bytes "))
        .unwrap()
        .parse::<u64>()
        .unwrap();
    assert!(bytes > 1000, "{text}");
    // No raw ids in labels: the route template is used.
    get(&f, "/v1/events/00000000-0000-4000-8000-000000000001").await;
    let text = get(&f, "/metrics").await.text();
    assert!(text.contains("route=\"/v1/events/{id}\""), "{text}");
    assert!(
        !text.contains("00000000-0000-4000-8000-000000000001"),
        "{text}"
    );
    // Nor methods of the client's invention: every label comes from a bounded set.
    for made_up in ["XYZ123", "ANOTHERONE"] {
        let r = call(
            &f,
            Request::builder()
                .method(made_up)
                .uri("/healthz")
                .body(Body::empty())
                .unwrap(),
        )
        .await;
        assert_eq!(r.status, StatusCode::METHOD_NOT_ALLOWED);
    }
    let r = call(
        &f,
        Request::builder()
            .method("XYZ123")
            .uri("/no/such/route")
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(
        r.status,
        StatusCode::UNAUTHORIZED,
        "an unknown path needs a token like any other"
    );
    let text = get(&f, "/metrics").await.text();
    assert!(
        !text.contains("XYZ123") && !text.contains("ANOTHERONE"),
        "{text}"
    );
    assert!(text.contains("mlaudit_http_request_duration_seconds_count{method=\"other\",route=\"/healthz\",status=\"405\"} 2\n"), "{text}");
    assert!(!text.contains("/no/such/route"), "{text}");
}

#[tokio::test]
async fn protobuf_batches_are_ingested_like_json() {
    use mlaudit_server::protobuf::{decode_batch, encode_batch};
    let f = fixture("protobuf", Limits::default());
    let approval = json!({"id": "00000000-0000-4000-8000-00000000a001", "kind": "registry.approval_granted", "actor": {"id": "maria", "type": "user"},
        "subject": {"model": "credit-risk", "version": "7"}, "attributes": {"approver": "maria", "reason": "ok"}});
    let custom = json!({"kind": "x.note", "actor": {"id": "svc", "type": "service"}});
    let mut prediction = event(0);
    prediction["attributes"]["confidence"] = json!(0.75);
    let body = encode_batch(&[prediction.clone(), approval, custom]);
    let r = post(&f, "application/x-protobuf", body.clone()).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(r.json()["tree_size"], 3);
    let stored = get(&f, "/v1/events/0").await.json();
    assert_eq!(
        stored["event"]["attributes"], prediction["attributes"],
        "the typed prediction fields come back as attributes"
    );
    assert_eq!(stored["event"]["subject"]["request"], "r0");
    assert_eq!(
        get(&f, "/v1/events/1").await.json()["event"]["attributes"]["approver"],
        "maria"
    );
    // Retrying the batch is idempotent for the events with ids.
    let again = post(&f, "application/x-protobuf", body).await;
    assert_eq!(again.json()["events"][0]["duplicate"], true);
    // Garbage and semantically bad protobuf: 4xx, nothing written.
    let size = f.store.tree_size();
    for bad in [
        vec![0xff, 0xff, 0xff],
        encode_batch(&[json!({"kind": "x.a", "actor": {"id": "a", "type": "robot"}})]),
    ] {
        let r = post(&f, "application/x-protobuf", bad).await;
        assert_rejected(&f, &r, StatusCode::BAD_REQUEST, "bad_request", size);
    }
    let invalid = encode_batch(&[
        json!({"kind": "registry.approval_granted", "actor": {"id": "a", "type": "user"}}),
    ]);
    let r = post(&f, "application/x-protobuf", invalid).await;
    assert_rejected(
        &f,
        &r,
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_events",
        size,
    );
    // Random bytes never panic the decoder.
    let mut x = 0x2545_f491_4f6c_dd1du64;
    for _ in 0..3000 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let bytes: Vec<u8> = (0..(x % 64)).map(|i| (x >> (i % 56)) as u8).collect();
        let _ = decode_batch(&bytes);
    }
}

/// With an engine whose `submit` blocks, ingest calls it off the async worker: on this
/// single-threaded runtime, an `append` on the worker would wait for a permit that the
/// permit task, needing that same worker, could never send.
#[tokio::test(flavor = "current_thread")]
async fn a_blocking_engine_is_never_called_on_the_async_worker() {
    let f = fixture("blocking-engine", Limits::default());
    let (tx, rx) = std::sync::mpsc::channel();
    let engine = Arc::new(QuirkyEngine {
        inner: f.store.clone(),
        quirk: Quirk::NeedsPermit(std::sync::Mutex::new(rx)),
    });
    let state = AppState {
        store: engine,
        ..f.state.clone()
    };
    let permit = tokio::spawn(async move {
        tokio::task::yield_now().await;
        tx.send(()).unwrap();
    });
    let req = Request::post("/v1/events")
        .header("authorization", bearer(&f.writer))
        .header("content-type", "application/json")
        .body(Body::from(event(0).to_string()))
        .unwrap();
    let resp = router(state).oneshot(req).await.unwrap();
    let status = resp.status();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(status, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
    permit.await.unwrap();
    assert_eq!(f.store.tree_size(), 1);
}

/// A panic on the async worker answers 500 with a JSON error, and the server goes on serving.
#[tokio::test]
async fn a_panicking_handler_answers_500_json_and_the_server_goes_on() {
    let f = fixture("panicking-engine", Limits::default());
    let engine = Arc::new(QuirkyEngine {
        inner: f.store.clone(),
        quirk: Quirk::PanicsOnSubmit,
    });
    let app = router(AppState {
        store: engine,
        ..f.state.clone()
    });
    let req = Request::post("/v1/events")
        .header("authorization", bearer(&f.writer))
        .header("content-type", "application/json")
        .body(Body::from(event(0).to_string()))
        .unwrap();
    let resp = app.clone().oneshot(req).await.unwrap();
    let status = resp.status();
    let body: Value =
        serde_json::from_slice(&resp.into_body().collect().await.unwrap().to_bytes()).unwrap();
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(body["error"]["code"], "internal", "{body}");
    let health = app
        .oneshot(Request::get("/healthz").body(Body::empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(health.status(), StatusCode::OK);
    assert_eq!(f.store.tree_size(), 0);
}

#[tokio::test]
async fn legal_holds_are_placed_listed_and_released_by_admins_only() {
    let f = fixture("holds", Limits::default());
    let placed = call_as(
        &f,
        Caller::Admin,
        "POST",
        "/v1/holds",
        "application/json",
        json!({"model": "credit-risk", "version": "7", "reason": "case 17"}).to_string(),
    )
    .await;
    assert_eq!(placed.status, StatusCode::CREATED, "{}", placed.text());
    let hold = placed.json()["hold"].as_str().unwrap().to_owned();
    let seq = placed.json()["seq"].as_u64().unwrap();
    let recorded = mlaudit_store::view::event_json(&*f.store, seq).unwrap();
    assert_eq!(recorded["event"]["kind"], "governance.hold_created");
    assert_eq!(recorded["event"]["principal"], "token:admin");

    for (body, why) in [
        (json!({"reason": "no scope"}), "needs a scope"),
        (json!({"model": "m", "reason": " "}), "needs a reason"),
        (json!({"from": "soon", "reason": "r"}), "RFC 3339"),
        (json!({"model": null, "reason": "r"}), "may not be null"),
        (json!({"events": ["A1"], "reason": "r"}), "not an event id"),
        (
            json!({"model": "m", "reason": "r", "extra": 1}),
            "unknown field",
        ),
    ] {
        let r = call_as(
            &f,
            Caller::Admin,
            "POST",
            "/v1/holds",
            "application/json",
            body.to_string(),
        )
        .await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{why}: {}", r.text());
        assert!(r.text().contains(why), "{why}: {}", r.text());
    }
    let listed = call_as(&f, Caller::Reader, "GET", "/v1/holds", "", String::new()).await;
    assert_eq!(listed.status, StatusCode::OK);
    assert_eq!(listed.json()["holds"][0]["active"], true);
    assert_eq!(listed.json()["holds"][0]["scope"]["version"], "7");

    let uri = format!("/v1/holds/{hold}/release");
    let denied = call_as(&f, Caller::Writer, "POST", &uri, "", String::new()).await;
    assert_eq!(denied.status, StatusCode::FORBIDDEN);
    let released = call_as(
        &f,
        Caller::Admin,
        "POST",
        &uri,
        "application/json",
        json!({"reason": "case closed"}).to_string(),
    )
    .await;
    assert_eq!(released.status, StatusCode::OK, "{}", released.text());
    let again = call_as(&f, Caller::Admin, "POST", &uri, "", String::new()).await;
    assert_eq!(again.status, StatusCode::CONFLICT, "{}", again.text());
    let unknown = call_as(
        &f,
        Caller::Admin,
        "POST",
        "/v1/holds/hold-nope/release",
        "",
        String::new(),
    )
    .await;
    assert_eq!(unknown.status, StatusCode::NOT_FOUND, "{}", unknown.text());
    let listed = call_as(&f, Caller::Reader, "GET", "/v1/holds", "", String::new()).await;
    assert_eq!(listed.json()["holds"][0]["active"], false);
    assert_eq!(listed.json()["holds"][0]["release_reason"], "case closed");
}
