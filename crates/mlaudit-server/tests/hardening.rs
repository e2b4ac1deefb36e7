//! What the API does with a hostile or unlucky client, through `Router::oneshot`: reserved
//! kinds refused, every read recorded (HEAD, 404s, the token list) with a bounded request and
//! the client's address, unknown query parameters refused, reused ids a conflict, batch limits
//! enforced while parsing, lineage bounded, a rate limit, storage failures answered 507/503,
//! and token changes that take effect only once they are in the log.

#![allow(
    clippy::unwrap_used,
    reason = "a test fails loudly on any unexpected error"
)]

mod common;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use common::*;
use mlaudit_server::auth::{now_ns, Change, Principal, Role, Tokens};
use mlaudit_server::ratelimit::RateLimiter;
use mlaudit_server::{AppState, ClientAddr, Limits};
use mlaudit_store::prelude::*;
use mlaudit_store::Query;
use serde_json::{json, Value};
use std::sync::Arc;

/// The `governance.audit_accessed` events in the log, oldest first, as JSON views.
fn audits(f: &Fixture) -> Vec<Value> {
    let q = Query {
        kind: Some("governance.audit_accessed".into()),
        limit: 1000,
        ..Query::default()
    };
    f.store
        .query(&q)
        .unwrap()
        .into_iter()
        .map(|s| mlaudit_store::view::event_json(&*f.store, s).unwrap()["event"].clone())
        .collect()
}

async fn as_reader(f: &Fixture, method: &str, uri: &str) -> Reply {
    call(
        f,
        Request::builder()
            .method(method)
            .uri(uri)
            .header("authorization", bearer(&f.reader))
            .body(Body::empty())
            .unwrap(),
    )
    .await
}

#[tokio::test]
async fn reserved_kinds_are_refused_in_every_body_shape() {
    let f = fixture("reserved", Limits::default());
    for kind in ["governance.access_changed", "governance.audit_accessed"] {
        let e = json!({"kind": kind, "actor": {"id": "mallory", "type": "user"},
            "attributes": {"principal": "token:mallory", "role": "admin", "change": "granted"}});
        let bodies: Vec<(&str, Vec<u8>)> = vec![
            ("application/json", e.to_string().into_bytes()),
            (
                "application/json",
                json!([event(0), e]).to_string().into_bytes(),
            ),
            (
                "application/x-ndjson",
                ndjson(&[event(1), e.clone()]).into_bytes(),
            ),
            (
                "application/x-protobuf",
                mlaudit_server::protobuf::encode_batch(std::slice::from_ref(&e)),
            ),
        ];
        for (ct, body) in bodies {
            let r = post(&f, ct, body).await;
            assert_rejected(
                &f,
                &r,
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_events",
                0,
            );
            let details = r.json()["error"]["details"].to_string();
            assert!(
                details.contains(kind) && details.contains("server alone"),
                "{details}"
            );
        }
    }
}

#[tokio::test]
async fn every_read_is_recorded_head_not_found_and_token_list_included() {
    let f = fixture("audit-all", Limits::default());
    post(
        &f,
        "application/json",
        json!([event(0), event(1)]).to_string(),
    )
    .await;
    assert_eq!(
        as_reader(&f, "HEAD", "/v1/events/0").await.status,
        StatusCode::OK
    );
    let missing = "/v1/events/00000000-0000-4000-8000-0000000000ff";
    assert_eq!(
        as_reader(&f, "GET", missing).await.status,
        StatusCode::NOT_FOUND
    );
    let r = call(
        &f,
        Request::get("/v1/tokens")
            .header("authorization", bearer(&f.admin))
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    let a = audits(&f);
    let requests: Vec<&str> = a
        .iter()
        .map(|e| e["attributes"]["request"].as_str().unwrap())
        .collect();
    assert_eq!(
        requests,
        [
            "HEAD /v1/events/0",
            &format!("GET {missing}"),
            "GET /v1/tokens"
        ]
    );
    assert_eq!(a[0]["attributes"]["status"], 200);
    assert_eq!(a[1]["attributes"]["status"], 404);
    assert_eq!(a[1]["attributes"]["results"], 0);
    assert_eq!(a[2]["attributes"]["results"], 3, "three tokens listed");
    assert_eq!(a[2]["actor"]["id"], "token:admin");
    // Hash-only proof material and the writer's own receipts are not reads of the trail.
    assert_eq!(
        as_reader(&f, "GET", "/v1/checkpoint").await.status,
        StatusCode::OK
    );
    assert_eq!(audits(&f).len(), 3);
}

#[tokio::test]
async fn the_recorded_request_is_bounded_and_names_the_client() {
    let f = fixture("audit-bounds", Limits::default());
    let long = "m".repeat(10_000);
    let mut req = Request::get(format!("/v1/events?model={long}"))
        .header("authorization", bearer(&f.reader))
        .body(Body::empty())
        .unwrap();
    req.extensions_mut()
        .insert(ClientAddr("203.0.113.9:40100".parse().unwrap()));
    assert_eq!(call(&f, req).await.status, StatusCode::OK);
    let a = audits(&f);
    let attrs = &a[0]["attributes"];
    assert_eq!(attrs["truncated"], true);
    assert_eq!(attrs["client"], "203.0.113.9:40100");
    let request = attrs["request"].as_str().unwrap();
    assert!(request.starts_with("GET /v1/events?model=mmm"), "{request}");
    assert!(
        request.len() <= mlaudit_store::audit::MAX_RECORDED_PART + 32,
        "{}",
        request.len()
    );
}

#[tokio::test]
async fn unknown_query_parameters_are_a_400_and_nothing_is_read() {
    let f = fixture("params", Limits::default());
    post(&f, "application/json", event(0).to_string()).await;
    let size = f.store.tree_size();
    for uri in [
        "/v1/events?model=x&colour=red",
        "/v1/events/0?padding=aaaaaaaa",
        "/v1/lineage/0?x=1",
        "/v1/checkpoint?x",
        "/v1/proof/consistency?from=1&extra=2",
        "/v1/proof/inclusion/0?pad=1",
    ] {
        let r = as_reader(&f, "GET", uri).await;
        assert_rejected(&f, &r, StatusCode::BAD_REQUEST, "bad_request", size);
        assert!(
            r.text().contains("unknown query parameter"),
            "{uri}: {}",
            r.text()
        );
    }
}

#[tokio::test]
async fn an_id_reused_with_other_content_is_a_409_naming_it() {
    let f = fixture("conflict", Limits::default());
    let first = event(0);
    assert_eq!(
        post(&f, "application/json", first.to_string()).await.status,
        StatusCode::OK
    );
    // The same event again: a duplicate, as before.
    let again = post(&f, "application/json", first.to_string()).await;
    assert_eq!(again.json()["events"][0]["duplicate"], true);
    let mut other = first.clone();
    other["attributes"]["outputs"]["score"] = json!(0.99);
    let r = post(&f, "application/json", json!([event(1), other]).to_string()).await;
    assert_rejected(&f, &r, StatusCode::CONFLICT, "id_conflict", 1);
    let body = r.json();
    assert_eq!(body["error"]["details"]["index"], 1);
    assert_eq!(body["error"]["details"]["id"], first["id"]);
    assert!(body["error"]["message"]
        .as_str()
        .unwrap()
        .contains(first["id"].as_str().unwrap()));
}

#[tokio::test]
async fn batch_limits_are_enforced_while_parsing() {
    let limits = Limits {
        max_events_per_batch: 3,
        ..Limits::default()
    };
    let f = fixture("batch-count", limits);
    // Four events, the fourth not even JSON: refused for the count, before it is parsed.
    let json_body = format!("[{},{},{},{}", event(0), event(1), event(2), event(3));
    let r = post(
        &f,
        "application/json",
        format!("{json_body}, this is not json"),
    )
    .await;
    assert_rejected(&f, &r, StatusCode::PAYLOAD_TOO_LARGE, "limit_exceeded", 0);
    // Three lines, one of them not an event: within the count, so validated (422).
    let nd = format!("{}not json at all\n", ndjson(&[event(0), event(1)]));
    let r = post(&f, "application/x-ndjson", nd.clone()).await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", r.text());
    // Four lines: refused for the count.
    let r = post(
        &f,
        "application/x-ndjson",
        format!("{}{nd}", ndjson(&[event(4)])),
    )
    .await;
    assert_rejected(&f, &r, StatusCode::PAYLOAD_TOO_LARGE, "limit_exceeded", 0);
    let proto = mlaudit_server::protobuf::encode_batch(&[event(0), event(1), event(2), event(3)]);
    let r = post(&f, "application/x-protobuf", proto).await;
    assert_rejected(&f, &r, StatusCode::PAYLOAD_TOO_LARGE, "limit_exceeded", 0);
    assert_eq!(
        r.json()["error"]["details"]["limit"],
        "max_events_per_batch"
    );
}

#[tokio::test]
async fn lineage_follows_each_dataset_once_and_says_when_it_is_cut() {
    let f = fixture("lineage-bounds", Limits::default());
    let datasets: Vec<String> = (0..300).map(|i| format!("ds-{}@v1", i % 150)).collect();
    let run = json!({"kind": "training.run_started", "actor": {"id": "ci", "type": "service"},
        "subject": {"run": "run-1", "model": "m"},
        "attributes": {"hyperparameters": {}, "random_seed": 1, "datasets": datasets}});
    let reg = json!({"kind": "registry.model_registered", "actor": {"id": "ci", "type": "service"},
        "subject": {"model": "m", "version": "1", "run": "run-1"},
        "attributes": {"artifact_sha256": "a".repeat(64)}});
    let data: Vec<Value> = (0..3)
        .map(|i| {
            json!({"kind": "data.source_accessed", "actor": {"id": "etl", "type": "service"},
            "subject": {"dataset": format!("ds-{i}")}, "attributes": {"source": "s3://b/k"}})
        })
        .collect();
    let mut all = vec![run, reg];
    all.extend(data);
    assert_eq!(
        post(&f, "application/json", Value::Array(all).to_string())
            .await
            .status,
        StatusCode::OK
    );
    let l = as_reader(&f, "GET", "/v1/lineage/1").await.json();
    let names: Vec<&str> = l["datasets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["dataset"].as_str().unwrap())
        .collect();
    assert_eq!(names.len(), mlaudit_store::lineage::MAX_DATASET_REFS);
    let distinct: std::collections::BTreeSet<&&str> = names.iter().collect();
    assert_eq!(distinct.len(), names.len(), "each dataset once");
    assert_eq!(l["truncated"], true);
    assert_eq!(l["datasets"][0]["events"].as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn a_principal_over_its_rate_gets_429_with_retry_after() {
    let mut f = fixture("rate", Limits::default());
    f.state.rate_limit = Some(Arc::new(RateLimiter::new(1, 3)));
    for _ in 0..3 {
        assert_eq!(
            as_reader(&f, "GET", "/v1/checkpoint").await.status,
            StatusCode::OK
        );
    }
    let resp = router_call(&f, "/v1/checkpoint", &f.reader).await;
    assert_eq!(resp.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(resp.headers().get("retry-after").is_some());
    // Another token has its own allowance.
    assert_eq!(
        router_call(&f, "/v1/checkpoint", &f.admin).await.status(),
        StatusCode::OK
    );
}

async fn router_call(f: &Fixture, uri: &str, token: &str) -> axum::response::Response {
    use tower::ServiceExt;
    mlaudit_server::router(f.state.clone())
        .oneshot(
            Request::get(uri)
                .header("authorization", bearer(token))
                .body(Body::empty())
                .unwrap(),
        )
        .await
        .unwrap()
}

#[tokio::test]
async fn a_full_disk_is_507_and_a_resource_shortage_503_and_reads_are_withheld() {
    let f = fixture("refusing", Limits::default());
    post(&f, "application/json", event(0).to_string()).await;
    for (full, status, code) in [
        (true, StatusCode::INSUFFICIENT_STORAGE, "disk_full"),
        (false, StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
    ] {
        let state = AppState {
            store: Arc::new(QuirkyEngine {
                inner: f.store.clone(),
                quirk: Quirk::Refuses { disk_full: full },
            }),
            ..f.state.clone()
        };
        let app = mlaudit_server::router(state);
        let ingest = Request::post("/v1/events")
            .header("authorization", bearer(&f.writer))
            .header("content-type", "application/json")
            .body(Body::from(event(1).to_string()))
            .unwrap();
        use tower::ServiceExt;
        let resp = app.clone().oneshot(ingest).await.unwrap();
        assert_eq!(resp.status(), status);
        assert!(resp.headers().get("retry-after").is_some());
        // A read whose record cannot be written is not answered.
        let read = Request::get("/v1/events/0")
            .header("authorization", bearer(&f.reader))
            .body(Body::empty())
            .unwrap();
        let resp = app.oneshot(read).await.unwrap();
        assert_eq!(resp.status(), status);
        let body = http_body_util::BodyExt::collect(resp.into_body())
            .await
            .unwrap()
            .to_bytes();
        let v: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["error"]["code"], code);
        assert!(
            !String::from_utf8_lossy(&body).contains("credit-risk"),
            "the event was withheld"
        );
    }
    assert_eq!(f.store.tree_size(), 1);
}

#[tokio::test]
async fn token_changes_take_effect_only_once_recorded_and_names_are_never_reused() {
    let f = fixture("token-rules", Limits::default());
    let admin = |method: &str, uri: &str, body: Value| {
        Request::builder()
            .method(method)
            .uri(uri)
            .header("authorization", bearer(&f.admin))
            .header("content-type", "application/json")
            .body(Body::from(body.to_string()))
            .unwrap()
    };
    let made = call(
        &f,
        admin(
            "POST",
            "/v1/tokens",
            json!({"name": "once", "role": "writer"}),
        ),
    )
    .await;
    assert_eq!(made.status, StatusCode::CREATED);
    let revoked = call(&f, admin("DELETE", "/v1/tokens/once", Value::Null)).await;
    assert_eq!(revoked.status, StatusCode::OK);
    let again = call(
        &f,
        admin(
            "POST",
            "/v1/tokens",
            json!({"name": "once", "role": "writer"}),
        ),
    )
    .await;
    assert_eq!(again.status, StatusCode::CONFLICT, "{}", again.text());
    assert!(again.text().contains("never reused"));

    // With a log that cannot take the event, nothing changes.
    let state = AppState {
        store: Arc::new(QuirkyEngine {
            inner: f.store.clone(),
            quirk: Quirk::Refuses { disk_full: true },
        }),
        ..f.state.clone()
    };
    use tower::ServiceExt;
    let resp = mlaudit_server::router(state.clone())
        .oneshot(admin(
            "POST",
            "/v1/tokens",
            json!({"name": "ghost", "role": "admin"}),
        ))
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::INSUFFICIENT_STORAGE);
    let resp = mlaudit_server::router(state)
        .oneshot(admin("DELETE", "/v1/tokens/reader", Value::Null))
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::INSUFFICIENT_STORAGE);
    // The reader's token still works, no ghost was made, and the file holds no change.
    assert_eq!(
        as_reader(&f, "GET", "/v1/checkpoint").await.status,
        StatusCode::OK
    );
    let file = std::fs::read_to_string(f.dir.join("tokens.json")).unwrap();
    assert!(
        !file.contains("ghost") && !file.contains("pending"),
        "{file}"
    );
    let listed = call(&f, admin("GET", "/v1/tokens", Value::Null))
        .await
        .json();
    let names: Vec<&str> = listed["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["writer", "reader", "admin", "once"]);
}

#[tokio::test]
async fn expired_and_wrong_tokens_are_refused_and_counted() {
    let f = fixture("expiry", Limits::default());
    let table = f.state.tokens.clone().unwrap();
    let setup = Principal {
        name: "local:setup".into(),
        role: Some(Role::Admin),
    };
    let expired = Tokens::apply(
        &table,
        &*f.store,
        &setup,
        Change::Create {
            name: "short-lived".into(),
            role: Role::Reader,
            expires_ns: Some(now_ns() - 1),
        },
        now_ns(),
    )
    .unwrap()
    .token
    .unwrap();
    let r = call(
        &f,
        Request::get("/v1/events")
            .header("authorization", bearer(&expired))
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert!(r.text().contains("expired"), "{}", r.text());
    let wrong = call(
        &f,
        Request::get("/v1/events")
            .header("authorization", bearer("mla_not-a-token"))
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(wrong.status, StatusCode::UNAUTHORIZED);
    let text = as_reader(&f, "GET", "/metrics").await.text();
    assert!(
        text.contains("mlaudit_auth_failures_total{reason=\"expired\"} 1\n"),
        "{text}"
    );
    assert!(
        text.contains("mlaudit_auth_failures_total{reason=\"invalid\"} 1\n"),
        "{text}"
    );
    // A token with a future expiry works, and the expiry is listed.
    let created = call(
        &f,
        Request::post("/v1/tokens")
            .header("authorization", bearer(&f.admin))
            .header("content-type", "application/json")
            .body(Body::from(
                json!({"name": "quarterly", "role": "reader", "expires_in": "90d"}).to_string(),
            ))
            .unwrap(),
    )
    .await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.text());
    assert!(created.json()["expires"].as_str().is_some());
}

#[tokio::test]
async fn a_body_that_does_not_arrive_in_time_is_a_408() {
    let limits = Limits {
        body_read_timeout: std::time::Duration::from_millis(200),
        ..Limits::default()
    };
    let f = fixture("body-timeout", limits);
    let stalled = futures_util::stream::pending::<Result<Vec<u8>, std::io::Error>>();
    let r = post(&f, "application/json", Body::from_stream(stalled)).await;
    assert_rejected(&f, &r, StatusCode::REQUEST_TIMEOUT, "timeout", 0);
}

/// A crash between writing the token file and appending the change's event leaves a pending
/// record: the next load completes a change whose event reached the log, and undoes the rest.
#[test]
fn changes_left_pending_by_a_crash_are_completed_or_undone() {
    use mlaudit_core::merkle::{hex, sha256};
    let f = fixture("reconcile", Limits::default());
    let token = format!("mla_{}", "ab".repeat(32));
    let logged_id = "6f1c0000-0000-4000-8000-00000000c0de";
    // The revocation of `reader` reached the log; the creation of `ghost` did not.
    let event = json!({"id": logged_id, "kind": "governance.access_changed",
        "actor": {"id": "token:admin", "type": "user"},
        "attributes": {"principal": "token:reader", "role": "reader", "change": "revoked"}});
    let prepared =
        mlaudit_core::event::prepare_reserved(&event.to_string(), "token:admin").unwrap();
    f.store.append(vec![prepared]).unwrap();
    let path = f.dir.join("tokens.json");
    let mut file: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let records = file["tokens"].as_array_mut().unwrap();
    let reader = records.iter_mut().find(|r| r["name"] == "reader").unwrap();
    let before = reader.clone();
    reader["revoked"] = json!("2026-12-04T00:00:00Z");
    reader["pending"] = json!({"event_id": logged_id, "before": before});
    records.push(
        json!({"name": "ghost", "role": "admin", "sha256": hex(&sha256(token.as_bytes())),
        "created": "2026-12-04T00:00:00Z", "revoked": null,
        "pending": {"event_id": "6f1c0000-0000-4000-8000-00000000dead", "before": null}}),
    );
    std::fs::write(&path, serde_json::to_vec(&file).unwrap()).unwrap();

    let mut tokens = Tokens::load(&path).unwrap();
    // While pending, neither change is seen by authentication.
    assert!(tokens.authenticate(&f.reader, now_ns()).is_ok());
    assert!(tokens.authenticate(&token, now_ns()).is_err());
    let said = tokens.reconcile(&*f.store).unwrap();
    assert_eq!(said.len(), 2, "{said:?}");
    assert!(
        tokens.authenticate(&f.reader, now_ns()).is_err(),
        "the logged revocation holds"
    );
    assert!(
        tokens.authenticate(&token, now_ns()).is_err(),
        "the unlogged grant was undone"
    );
    let reloaded = std::fs::read_to_string(&path).unwrap();
    assert!(
        !reloaded.contains("pending") && !reloaded.contains("ghost"),
        "{reloaded}"
    );
    assert!(Tokens::load(&path)
        .unwrap()
        .authenticate(&f.writer, now_ns())
        .is_ok());
}

/// Token changes made at the same time are serialized (a file lock, and each change starts from
/// the file on disk): none is lost, and each is in the log.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_token_changes_are_all_kept() {
    let f = fixture("token-race", Limits::default());
    let mut tasks = Vec::new();
    for i in 0..16 {
        let app = mlaudit_server::router(f.state.clone());
        let req = Request::post("/v1/tokens")
            .header("authorization", bearer(&f.admin))
            .header("content-type", "application/json")
            .body(Body::from(
                json!({"name": format!("t{i}"), "role": "writer"}).to_string(),
            ))
            .unwrap();
        tasks.push(tokio::spawn(async move {
            use tower::ServiceExt;
            app.oneshot(req).await.unwrap().status()
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), StatusCode::CREATED);
    }
    let file = std::fs::read_to_string(f.dir.join("tokens.json")).unwrap();
    for i in 0..16 {
        assert!(file.contains(&format!("\"t{i}\"")), "t{i} was lost: {file}");
    }
    let grants = f
        .store
        .query(&Query {
            kind: Some("governance.access_changed".into()),
            limit: 100,
            ..Query::default()
        })
        .unwrap();
    assert_eq!(grants.len(), 16);
}

/// A cursor is what `next_cursor` wrote: other spellings of a number are refused, not read.
#[tokio::test]
async fn only_canonical_cursors_are_accepted() {
    let f = fixture("cursors", Limits::default());
    post(
        &f,
        "application/json",
        json!([event(0), event(1)]).to_string(),
    )
    .await;
    for bad in ["+1", "01", "007", "-0", " 1", "1 ", ""] {
        let uri = format!(
            "/v1/events?cursor={}",
            bad.replace(' ', "%20").replace('+', "%2B")
        );
        let r = as_reader(&f, "GET", &uri).await;
        assert_eq!(
            r.status,
            StatusCode::BAD_REQUEST,
            "cursor {bad:?}: {}",
            r.text()
        );
    }
    for good in ["0", "1", "18446744073709551615"] {
        let r = as_reader(&f, "GET", &format!("/v1/events?cursor={good}")).await;
        assert_eq!(r.status, StatusCode::OK, "cursor {good:?}");
    }
}
