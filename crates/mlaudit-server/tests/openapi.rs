//! The OpenAPI document matches the real API: exactly the router's routes, every `$ref`
//! resolves, and real responses validate against the documented schemas.

#![allow(
    clippy::unwrap_used,
    reason = "a test fails loudly on any unexpected error"
)]

use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt;
use mlaudit_core::note::NoteSigner;
use mlaudit_embedded::EmbeddedStore;
use mlaudit_server::auth::{Role, Tokens};
use mlaudit_server::{openapi, router, AppState, ROUTES};
use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::sync::{Arc, RwLock};
use tower::ServiceExt;

fn doc() -> Value {
    serde_json::from_str(openapi::document()).unwrap()
}

fn documented() -> BTreeSet<(String, String)> {
    doc()["paths"]
        .as_object()
        .unwrap()
        .iter()
        .flat_map(|(path, ops)| {
            ops.as_object()
                .unwrap()
                .keys()
                .map(move |m| (m.to_uppercase(), path.clone()))
        })
        .collect()
}

#[test]
fn documents_exactly_the_route_table() {
    assert!(doc()["openapi"].as_str().unwrap().starts_with("3.0."));
    let routed: BTreeSet<(String, String)> = ROUTES
        .iter()
        .map(|r| (r.method.to_string(), r.path.replace("{*", "{")))
        .collect();
    assert_eq!(documented(), routed);
}

/// The router itself (not a list kept beside it) answers every documented operation, and
/// answers 405 for every other method on a documented path.
#[tokio::test]
async fn the_router_serves_exactly_the_documented_operations() {
    let dir = std::env::temp_dir().join(format!("mlaudit-openapi-probe-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let signer = NoteSigner::from_seed("openapi.probe", [9; 32]).unwrap();
    let (store, _) = EmbeddedStore::open(&dir.join("log"), Some(signer.clone())).unwrap();
    let store = Arc::new(store);
    let app = router(AppState::new(store.clone(), signer.verifier(), None));
    let documented = documented();
    let paths: BTreeSet<&String> = documented.iter().map(|(_, p)| p).collect();
    for path in paths {
        let uri = path
            .replace("{id}", "0")
            .replace("{name}", "nobody")
            .replace("{level}", "0")
            .replace("{tile}", "000");
        for method in ["GET", "POST", "PUT", "DELETE", "PATCH"] {
            let req = Request::builder()
                .method(method)
                .uri(&uri)
                .body(Body::empty())
                .unwrap();
            let resp = app.clone().oneshot(req).await.unwrap();
            let status = resp.status();
            let body = resp.into_body().collect().await.unwrap().to_bytes();
            let fallback = String::from_utf8_lossy(&body).contains("no such endpoint");
            if documented.contains(&(method.to_string(), path.clone())) {
                assert!(
                    !fallback && status != StatusCode::METHOD_NOT_ALLOWED,
                    "{method} {path} is documented but not routed: {status}"
                );
            } else {
                assert_eq!(
                    status,
                    StatusCode::METHOD_NOT_ALLOWED,
                    "{method} {path} is routed but not documented"
                );
            }
        }
    }
    store.close().unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}

fn resolve<'a>(d: &'a Value, r: &str) -> &'a Value {
    let mut v = d;
    for part in r.trim_start_matches("#/").split('/') {
        v = &v[part];
    }
    assert!(!v.is_null(), "unresolved $ref {r}");
    v
}

#[test]
fn every_ref_resolves() {
    fn walk(d: &Value, v: &Value) {
        match v {
            Value::Object(m) => {
                if let Some(Value::String(r)) = m.get("$ref") {
                    resolve(d, r);
                }
                m.values().for_each(|x| walk(d, x));
            }
            Value::Array(a) => a.iter().for_each(|x| walk(d, x)),
            _ => {}
        }
    }
    let d = doc();
    walk(&d, &d);
}

/// The literal a pattern anchored with `^` requires a string to start with (with `\` escapes),
/// up to its first other construct; `None` for an unanchored pattern, which the checker below
/// does not evaluate.
fn literal_prefix(pattern: &str) -> Option<String> {
    let mut out = String::new();
    let mut chars = pattern.strip_prefix('^')?.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => out.push(chars.next()?),
            // A quantifier may make the last literal optional.
            c if "*+?{".contains(c) => {
                out.pop();
                break;
            }
            c if "[](){}*+?.|$^".contains(c) => break,
            c => out.push(c),
        }
    }
    Some(out)
}

/// A checker for the subset of JSON Schema the document uses (`format` is not checked, nor a
/// `pattern` other than a literal prefix).
fn check(d: &Value, schema: &Value, v: &Value, at: &str) -> Result<(), String> {
    if let Some(r) = schema["$ref"].as_str() {
        return check(d, resolve(d, r), v, at);
    }
    if v.is_null() {
        return if schema["nullable"] == true || schema.as_object().is_some_and(|m| m.is_empty()) {
            Ok(())
        } else {
            Err(format!("{at}: null is not allowed"))
        };
    }
    if let Some(options) = schema["oneOf"].as_array() {
        let ok = options
            .iter()
            .filter(|o| check(d, o, v, at).is_ok())
            .count();
        return if ok == 1 {
            Ok(())
        } else {
            Err(format!("{at}: matches {ok} of oneOf"))
        };
    }
    if let Some(allowed) = schema["enum"].as_array() {
        if !allowed.contains(v) {
            return Err(format!("{at}: {v} not in enum"));
        }
    }
    let ok = match schema["type"].as_str() {
        None => true,
        Some("object") => v.is_object(),
        Some("array") => v.is_array(),
        Some("string") => v.is_string(),
        Some("integer") => v.is_u64() || v.is_i64(),
        Some("number") => v.is_number(),
        Some("boolean") => v.is_boolean(),
        Some(other) => return Err(format!("{at}: unknown type {other}")),
    };
    if !ok {
        return Err(format!("{at}: {v} is not a {}", schema["type"]));
    }
    if let Some(s) = v.as_str() {
        let len = s.chars().count() as u64;
        if schema["minLength"].as_u64().is_some_and(|min| len < min)
            || schema["maxLength"].as_u64().is_some_and(|max| len > max)
        {
            return Err(format!("{at}: {v} has a length out of bounds"));
        }
        if let Some(prefix) = schema["pattern"].as_str().and_then(literal_prefix) {
            if !s.starts_with(&prefix) {
                return Err(format!("{at}: {v} does not start with {prefix:?}"));
            }
        }
    }
    if let (Some(min), Some(arr)) = (schema["minItems"].as_u64(), v.as_array()) {
        if (arr.len() as u64) < min {
            return Err(format!("{at}: fewer than {min} items"));
        }
    }
    if let Some(obj) = v.as_object() {
        for req in schema["required"].as_array().into_iter().flatten() {
            if !obj.contains_key(req.as_str().unwrap()) {
                return Err(format!("{at}: missing {req}"));
            }
        }
        let props = schema["properties"].as_object();
        for (k, val) in obj {
            match props.and_then(|p| p.get(k)) {
                Some(s) => check(d, s, val, &format!("{at}.{k}"))?,
                None if schema["additionalProperties"] == false => {
                    return Err(format!("{at}: unexpected {k}"))
                }
                None => {}
            }
        }
    }
    if let (Some(items), Some(arr)) = (schema.get("items"), v.as_array()) {
        for (i, x) in arr.iter().enumerate() {
            check(d, items, x, &format!("{at}[{i}]"))?;
        }
    }
    Ok(())
}

fn request_schema(d: &Value) -> &Value {
    &d["paths"]["/v1/events"]["post"]["requestBody"]["content"]["application/json"]["schema"]
}

#[test]
fn the_event_schema_has_a_branch_for_every_kind_a_client_may_submit() {
    let d = doc();
    let branches = d["components"]["schemas"]["Event"]["oneOf"]
        .as_array()
        .unwrap();
    let mut documented = BTreeSet::new();
    let mut custom = 0;
    for b in branches {
        let kind = &resolve(&d, b["$ref"].as_str().unwrap())["properties"]["kind"];
        match kind["enum"].as_array() {
            Some(one) => {
                assert_eq!(one.len(), 1, "{b}");
                documented.insert(one[0].as_str().unwrap().to_owned());
            }
            None => {
                assert_eq!(
                    literal_prefix(kind["pattern"].as_str().unwrap()).as_deref(),
                    Some("x."),
                    "{b}"
                );
                custom += 1;
            }
        }
    }
    // Every kind a client may submit: the reserved ones are written by the server alone.
    let catalogue: BTreeSet<String> = mlaudit_core::event::catalogue_kinds()
        .filter(|k| !mlaudit_core::event::is_reserved_kind(k))
        .map(str::to_owned)
        .collect();
    assert_eq!(documented, catalogue);
    assert_eq!(custom, 1);
    // The branches are told apart by their kind alone: one event matches exactly one.
    let event =
        json!({"kind": "x.thing", "actor": {"id": "a", "type": "user"}, "attributes": {"n": 1}});
    check(&d, request_schema(&d), &event, "custom").unwrap();
    check(&d, request_schema(&d), &json!([event]), "custom batch").unwrap();
    assert!(check(
        &d,
        request_schema(&d),
        &json!({"kind": "training.unknown", "actor": {"id": "a", "type": "user"}}),
        "unknown"
    )
    .is_err());
}

fn response_schema<'a>(d: &'a Value, method: &str, path: &str, status: u16) -> &'a Value {
    let r = &d["paths"][path][method.to_lowercase()]["responses"][status.to_string()];
    assert!(
        !r.is_null(),
        "{method} {path} does not document status {status}"
    );
    let r = match r["$ref"].as_str() {
        Some(reference) => resolve(d, reference),
        None => r,
    };
    &r["content"]["application/json"]["schema"]
}

#[tokio::test]
async fn real_responses_match_their_schemas() {
    let dir = std::env::temp_dir().join(format!("mlaudit-openapi-test-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let signer = NoteSigner::from_seed("openapi.test", [8; 32]).unwrap();
    let (store, _) = EmbeddedStore::open(&dir.join("log"), Some(signer.clone())).unwrap();
    let store = Arc::new(store);
    let tokens = RwLock::new(Tokens::load(&dir.join("tokens.json")).unwrap());
    let setup = mlaudit_server::auth::Principal {
        name: "local:setup".into(),
        role: Some(Role::Admin),
    };
    let admin = Tokens::create(&tokens, &*store, &setup, "admin", Role::Admin).unwrap();
    let writer = Tokens::create(&tokens, &*store, &setup, "writer", Role::Writer).unwrap();
    let state = AppState::new(store.clone(), signer.verifier(), Some(Arc::new(tokens)));
    let d = doc();
    let call = |method: &str, uri: &str, token: &str, body: Option<Value>| {
        let mut req = Request::builder()
            .method(method)
            .uri(uri)
            .header("authorization", format!("Bearer {token}"));
        if body.is_some() {
            req = req.header("content-type", "application/json");
        }
        let req = req
            .body(body.map_or(Body::empty(), |b| Body::from(b.to_string())))
            .unwrap();
        let app = router(state.clone());
        async move {
            let resp = app.oneshot(req).await.unwrap();
            let status = resp.status();
            let bytes = resp.into_body().collect().await.unwrap().to_bytes();
            (
                status,
                serde_json::from_slice::<Value>(&bytes).unwrap_or(Value::Null),
            )
        }
    };
    let event = |i: u32| json!({"id": format!("00000000-0000-4000-a000-{i:012}"), "kind": "registry.model_registered", "actor": {"id": "ci", "type": "service"}, "subject": {"model": "m", "version": "1", "run": "r"}, "attributes": {"artifact_sha256": "a".repeat(64)}});
    // (method, uri, token, body, documented path, expected status)
    type Case<'a> = (&'a str, String, &'a str, Option<Value>, &'a str, u16);
    let cases: Vec<Case> = vec![
        (
            "POST",
            "/v1/events".into(),
            &writer,
            Some(json!([event(0), event(1)])),
            "/v1/events",
            200,
        ),
        (
            "POST",
            "/v1/events".into(),
            &writer,
            Some(json!({"kind": "nope"})),
            "/v1/events",
            422,
        ),
        (
            "GET",
            "/v1/events?model=m".into(),
            &admin,
            None,
            "/v1/events",
            200,
        ),
        (
            "GET",
            "/v1/events?limit=0".into(),
            &admin,
            None,
            "/v1/events",
            400,
        ),
        (
            "GET",
            "/v1/events/0".into(),
            &admin,
            None,
            "/v1/events/{id}",
            200,
        ),
        (
            "GET",
            "/v1/events/99".into(),
            &admin,
            None,
            "/v1/events/{id}",
            404,
        ),
        (
            "GET",
            "/v1/lineage/1".into(),
            &admin,
            None,
            "/v1/lineage/{id}",
            200,
        ),
        (
            "GET",
            "/v1/proof/inclusion/1".into(),
            &admin,
            None,
            "/v1/proof/inclusion/{id}",
            200,
        ),
        (
            "GET",
            "/v1/proof/consistency?from=2".into(),
            &admin,
            None,
            "/v1/proof/consistency",
            200,
        ),
        ("GET", "/v1/tokens".into(), &admin, None, "/v1/tokens", 200),
        (
            "POST",
            "/v1/tokens".into(),
            &admin,
            Some(json!({"name": "x", "role": "reader"})),
            "/v1/tokens",
            201,
        ),
        ("GET", "/v1/tokens".into(), &writer, None, "/v1/tokens", 403),
        (
            "GET",
            "/v1/tokens".into(),
            "mla_wrong",
            None,
            "/v1/tokens",
            401,
        ),
        ("GET", "/healthz".into(), &admin, None, "/healthz", 200),
        ("GET", "/readyz".into(), &admin, None, "/readyz", 200),
    ];
    for (method, uri, token, body, path, expected) in cases {
        if let (Some(body), "/v1/events") = (&body, path) {
            // What the server accepts validates against the request schema, and what it rejects does not.
            assert_eq!(
                check(&d, request_schema(&d), body, "request").is_ok(),
                expected == 200,
                "{body}"
            );
        }
        let (status, value) = call(method, &uri, token, body).await;
        assert_eq!(
            status,
            StatusCode::from_u16(expected).unwrap(),
            "{method} {uri}: {value}"
        );
        let schema = response_schema(&d, method, path, expected);
        check(&d, schema, &value, &format!("{method} {uri}")).unwrap();
    }
    let (status, served) = call("GET", "/openapi.json", &admin, None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(served, d);
    store.close().unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}
