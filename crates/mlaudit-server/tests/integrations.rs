//! The receivers for other tools' events, through the real router and an embedded store: the
//! MLflow webhook's signature, age and replay rules; CloudEvents in every mode with the
//! KServe join, its durable journal and timeout, the query token and sampling; OpenLineage;
//! and the 4xx contract (a JSON error, nothing written) for every malformed body.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test fails loudly on any unexpected error"
)]

mod common;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use base64::Engine;
use common::{assert_rejected, bearer, call, fixture, get, Fixture};
use hmac::{Hmac, Mac};
use mlaudit_integrations::sampling::SamplePolicy;
use mlaudit_server::integrations::join::{Joiner, Waiting};
use mlaudit_server::integrations::{Integrations, IntegrationsConfig};
use mlaudit_server::Limits;
use mlaudit_store::prelude::*;
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::Duration;

const SECRET: &str = "a-webhook-secret-of-some-length";

fn configured(name: &str, config: IntegrationsConfig) -> Fixture {
    let mut f = fixture(name, Limits::default());
    f.state.integrations = Arc::new(Integrations::new(config, Joiner::in_memory()));
    f
}

fn with_secret() -> IntegrationsConfig {
    let mut c = IntegrationsConfig::default();
    c.mlflow.webhook_secret = Some(SECRET.into());
    c
}

fn now_s() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

fn sign(secret: &str, id: &str, ts: i64, body: &str) -> String {
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(format!("{id}.{ts}.{body}").as_bytes());
    format!(
        "v1,{}",
        base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
    )
}

async fn webhook(
    f: &Fixture,
    id: &str,
    ts: i64,
    signature: Option<String>,
    body: &str,
) -> common::Reply {
    let mut req = Request::post("/v1/integrations/mlflow/webhook")
        .header("content-type", "application/json")
        .header("x-mlflow-delivery-id", id)
        .header("x-mlflow-timestamp", ts.to_string());
    if let Some(s) = signature {
        req = req.header("x-mlflow-signature", s);
    }
    call(f, req.body(Body::from(body.to_owned())).unwrap()).await
}

fn payload(f: &Fixture, seq: u64) -> Value {
    serde_json::from_slice(&f.store.event(seq).unwrap().payload.unwrap()).unwrap()
}

const VERSION_CREATED: &str = r#"{"entity": "model_version", "action": "created", "timestamp": "2026-12-04T17:33:39.083787+00:00", "data": {"name": "credit-risk", "version": "3", "source": "runs:/r1/model", "run_id": "r1", "tags": {}, "description": ""}}"#;

#[tokio::test]
async fn a_signed_mlflow_delivery_is_stored_once_and_a_bad_one_never() {
    let f = configured("mlflow-signed", with_secret());
    let ts = now_s();
    let ok = webhook(
        &f,
        "d-1",
        ts,
        Some(sign(SECRET, "d-1", ts, VERSION_CREATED)),
        VERSION_CREATED,
    )
    .await;
    assert_eq!(ok.status, StatusCode::OK, "{}", ok.text());
    let body = ok.json();
    assert_eq!(body["events"][0]["duplicate"], false);
    let stored = payload(&f, 0);
    assert_eq!(stored["kind"], "registry.model_registered");
    assert_eq!(
        stored["subject"],
        json!({"model": "credit-risk", "version": "3", "run": "r1"})
    );
    assert_eq!(stored["attributes"]["human_actor"], "unknown");
    assert_eq!(stored["attributes"]["delivery_id"], "d-1");
    let entry = mlaudit_core::entry::decode(&f.store.event(0).unwrap().entry).unwrap();
    assert_eq!(entry.principal, "integration:mlflow-webhook");
    // MLflow's retry of the same delivery: acknowledged, not stored again.
    let again = webhook(
        &f,
        "d-1",
        ts,
        Some(sign(SECRET, "d-1", ts, VERSION_CREATED)),
        VERSION_CREATED,
    )
    .await;
    assert_eq!(again.status, StatusCode::OK);
    assert_eq!(again.json()["events"][0]["duplicate"], true);
    let size = f.store.tree_size();
    assert_eq!(size, 1);
    let wrong = webhook(
        &f,
        "d-2",
        ts,
        Some(sign("another-secret-entirely", "d-2", ts, VERSION_CREATED)),
        VERSION_CREATED,
    )
    .await;
    assert_rejected(&f, &wrong, StatusCode::UNAUTHORIZED, "unauthorized", size);
    let missing = webhook(&f, "d-3", ts, None, VERSION_CREATED).await;
    assert_rejected(&f, &missing, StatusCode::UNAUTHORIZED, "unauthorized", size);
    let stale_ts = ts - 301;
    let stale = webhook(
        &f,
        "d-4",
        stale_ts,
        Some(sign(SECRET, "d-4", stale_ts, VERSION_CREATED)),
        VERSION_CREATED,
    )
    .await;
    assert_rejected(&f, &stale, StatusCode::UNAUTHORIZED, "unauthorized", size);
    assert!(stale.json()["error"]["message"]
        .as_str()
        .unwrap()
        .contains("301 s"));
    // A signature over one body does not cover another.
    let swapped = VERSION_CREATED.replace("\"3\"", "\"4\"");
    let replayed = webhook(
        &f,
        "d-5",
        ts,
        Some(sign(SECRET, "d-5", ts, VERSION_CREATED)),
        &swapped,
    )
    .await;
    assert_rejected(
        &f,
        &replayed,
        StatusCode::UNAUTHORIZED,
        "unauthorized",
        size,
    );
    // Signed but malformed: 400, nothing written.
    let junk = r#"{"entity": "model_version"}"#;
    let malformed = webhook(&f, "d-6", ts, Some(sign(SECRET, "d-6", ts, junk)), junk).await;
    assert_rejected(&f, &malformed, StatusCode::BAD_REQUEST, "bad_request", size);
    let metrics = get(&f, "/metrics").await.text();
    assert!(
        metrics.contains("mlaudit_integration_requests_accepted_total{integration=\"mlflow\"} 2"),
        "{metrics}"
    );
    assert!(
        metrics.contains("mlaudit_integration_requests_refused_total{integration=\"mlflow\"} 5"),
        "{metrics}"
    );
    assert!(
        metrics.contains("mlaudit_integration_events_total{integration=\"mlflow\"} 1"),
        "{metrics}"
    );
}

#[tokio::test]
async fn the_mlflow_receiver_is_off_without_a_secret() {
    let f = configured("mlflow-off", IntegrationsConfig::default());
    let ts = now_s();
    let r = webhook(
        &f,
        "d-1",
        ts,
        Some(sign(SECRET, "d-1", ts, VERSION_CREATED)),
        VERSION_CREATED,
    )
    .await;
    assert_rejected(&f, &r, StatusCode::NOT_FOUND, "not_enabled", 0);
}

#[tokio::test]
async fn an_alias_deletion_names_the_version_the_log_last_saw_it_on() {
    let f = configured("mlflow-alias", with_secret());
    let ts = now_s();
    for (id, version) in [("a-1", "1"), ("a-2", "2")] {
        let body = format!(
            r#"{{"entity": "model_version_alias", "action": "created", "timestamp": "2026-12-04T17:33:39+00:00", "data": {{"name": "credit-risk", "alias": "champion", "version": "{version}"}}}}"#
        );
        let r = webhook(&f, id, ts, Some(sign(SECRET, id, ts, &body)), &body).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    }
    let deleted = r#"{"entity": "model_version_alias", "action": "deleted", "timestamp": "2026-12-04T17:34:00+00:00", "data": {"name": "credit-risk", "alias": "champion"}}"#;
    let r = webhook(
        &f,
        "a-3",
        ts,
        Some(sign(SECRET, "a-3", ts, deleted)),
        deleted,
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let e = payload(&f, 2);
    assert_eq!(e["kind"], "registry.stage_changed");
    assert_eq!(e["subject"]["version"], "2");
    assert_eq!(e["attributes"]["from_stage"], "champion");
    assert_eq!(e["attributes"]["to_stage"], "none");
    assert_eq!(payload(&f, 1)["attributes"]["to_stage"], "champion");
}

fn kserve(
    f: &Fixture,
    side: &str,
    id: &str,
    body: &str,
    auth: Option<&str>,
    query: &str,
) -> Request<Body> {
    let mut req = Request::post(format!("/v1/integrations/cloudevents{query}"))
        .header("content-type", "application/json")
        .header("ce-specversion", "1.0")
        .header("ce-id", id)
        .header("ce-type", format!("org.kubeflow.serving.inference.{side}"))
        .header("ce-source", "http://localhost:9081/")
        .header("ce-inferenceservicename", "credit-risk")
        .header("ce-namespace", "default")
        .header("ce-component", "predictor");
    let _ = f;
    if let Some(token) = auth {
        req = req.header("authorization", bearer(token));
    }
    req.body(Body::from(body.to_owned())).unwrap()
}

#[tokio::test]
async fn kserve_halves_in_binary_mode_join_into_one_prediction() {
    let mut config = IntegrationsConfig::default();
    config.cloudevents.default_version = Some("7".into());
    let f = configured("ce-binary", config);
    let w = f.writer.clone();
    let first = call(
        &f,
        kserve(
            &f,
            "response",
            "req-1",
            r#"{"predictions": [1]}"#,
            Some(&w),
            "",
        ),
    )
    .await;
    assert_eq!(first.status, StatusCode::OK, "{}", first.text());
    assert_eq!(first.json()["waiting_for_partner"], 1);
    assert_eq!(f.store.tree_size(), 0, "a half alone waits");
    let second = call(
        &f,
        kserve(
            &f,
            "request",
            "req-1",
            r#"{"instances": [[1, 2]]}"#,
            Some(&w),
            "",
        ),
    )
    .await;
    assert_eq!(second.status, StatusCode::OK, "{}", second.text());
    assert_eq!(f.store.tree_size(), 1);
    let e = payload(&f, 0);
    assert_eq!(e["kind"], "prediction.served");
    assert_eq!(
        e["subject"],
        json!({"model": "default/credit-risk", "version": "7", "request": "req-1"})
    );
    assert_eq!(e["attributes"]["inputs"], json!({"instances": [[1, 2]]}));
    assert_eq!(e["attributes"]["outputs"], json!({"predictions": [1]}));
    assert_eq!(f.state.integrations.joiner.len(), 0);
    // A half sent again after the join (a retry) waits, and is recognised when it times out.
    let reader = call(
        &f,
        kserve(&f, "request", "req-2", "{}", Some(&f.reader.clone()), ""),
    )
    .await;
    assert_rejected(&f, &reader, StatusCode::FORBIDDEN, "forbidden", 1);
}

#[tokio::test]
async fn structured_and_batch_modes_cdevents_and_unknown_types() {
    let f = configured("ce-structured", IntegrationsConfig::default());
    let batch = json!([
        {"specversion": "1.0", "id": "b-1", "source": "kserve", "type": "org.kubeflow.serving.inference.request",
         "inferenceservicename": "credit-risk", "namespace": "default", "datacontenttype": "application/json",
         "data": {"id": "42", "inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [1.0]}]}},
        {"specversion": "1.0", "id": "b-1", "source": "kserve", "type": "org.kubeflow.serving.inference.response",
         "inferenceservicename": "credit-risk", "namespace": "default", "datacontenttype": "application/json",
         "data": {"model_name": "credit-risk", "model_version": "5", "id": "42", "outputs": [{"name": "y", "shape": [1], "datatype": "INT64", "data": [1]}]}},
        {"specversion": "1.0", "id": "c-1", "source": "/argo", "type": "dev.cdevents.service.deployed.0.2.0",
         "data": {"context": {"id": "ctx-1", "source": "/argo", "type": "dev.cdevents.service.deployed.0.2.0", "timestamp": "2026-03-20T14:27:05Z"},
                  "subject": {"id": "credit-api", "content": {"environment": {"id": "prod"}, "artifactId": "pkg:oci/credit-risk@5"}}}},
        {"specversion": "1.0", "id": "o-1", "source": "/x", "type": "com.example.other", "data": {"n": 1}}
    ]);
    let r = call(
        &f,
        Request::post("/v1/integrations/cloudevents")
            .header("authorization", bearer(&f.writer))
            .header("content-type", "application/cloudevents-batch+json")
            .body(Body::from(batch.to_string()))
            .unwrap(),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let kinds: Vec<String> = (0..f.store.tree_size())
        .map(|s| payload(&f, s)["kind"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        kinds,
        ["operations.deployed", "x.cloudevents", "prediction.served"]
    );
    assert_eq!(payload(&f, 2)["subject"]["version"], "5");
    let structured = json!({"specversion": "1.0", "id": "s-1", "source": "/y", "type": "com.example.single", "data": {"k": "v"}});
    let r = call(
        &f,
        Request::post("/v1/integrations/cloudevents")
            .header("authorization", bearer(&f.writer))
            .header(
                "content-type",
                "application/cloudevents+json; charset=utf-8",
            )
            .body(Body::from(structured.to_string()))
            .unwrap(),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(payload(&f, 3)["attributes"]["type"], "com.example.single");
    // Malformed: a JSON error, nothing written.
    let size = f.store.tree_size();
    let cases: Vec<(&str, String)> = vec![
        (
            "application/cloudevents+json",
            json!({"specversion": "1.0", "source": "/y", "type": "t"}).to_string(),
        ),
        ("application/cloudevents+json", "{not json".into()),
        (
            "application/cloudevents-batch+json",
            json!({"not": "an array"}).to_string(),
        ),
        ("application/json", "{}".into()),
    ];
    for (ct, body) in cases {
        let r = call(
            &f,
            Request::post("/v1/integrations/cloudevents")
                .header("authorization", bearer(&f.writer))
                .header("content-type", ct)
                .body(Body::from(body))
                .unwrap(),
        )
        .await;
        assert_rejected(&f, &r, StatusCode::BAD_REQUEST, "bad_request", size);
    }
    let half_bad_batch = json!([structured, {"specversion": "1.0", "id": "z"}]);
    let r = call(
        &f,
        Request::post("/v1/integrations/cloudevents")
            .header("authorization", bearer(&f.writer))
            .header("content-type", "application/cloudevents-batch+json")
            .body(Body::from(half_bad_batch.to_string()))
            .unwrap(),
    )
    .await;
    assert_rejected(&f, &r, StatusCode::BAD_REQUEST, "bad_request", size);
}

#[tokio::test]
async fn the_query_token_works_only_when_enabled() {
    let off = configured("ce-token-off", IntegrationsConfig::default());
    let q = format!("?token={}", off.writer);
    let r = call(&off, kserve(&off, "request", "q-1", "{}", None, &q)).await;
    assert_rejected(&off, &r, StatusCode::BAD_REQUEST, "bad_request", 0);
    assert!(!r.text().contains(&off.writer), "the token is never echoed");
    let mut config = IntegrationsConfig::default();
    config.cloudevents.query_token = true;
    let on = configured("ce-token-on", config);
    let q = format!("?token={}", on.writer);
    let r = call(&on, kserve(&on, "request", "q-1", "{}", None, &q)).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let r = call(
        &on,
        kserve(&on, "request", "q-2", "{}", None, "?token=not-a-token"),
    )
    .await;
    assert_rejected(&on, &r, StatusCode::UNAUTHORIZED, "unauthorized", 0);
    // Only the CloudEvents receiver takes it.
    let r = call(
        &on,
        Request::get(format!("/v1/events?token={}", on.reader))
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn sampling_keeps_the_same_requests_the_sdks_would() {
    let mut config = IntegrationsConfig::default();
    config.cloudevents.sampling = SamplePolicy {
        rates: [("default/credit-risk".to_owned(), 0.05)].into(),
        default_rate: 1.0,
    };
    let f = configured("ce-sampling", config);
    let w = f.writer.clone();
    let mut kept = 0;
    for i in 0..40 {
        let id = format!("req-{i}");
        for side in ["request", "response"] {
            let r = call(&f, kserve(&f, side, &id, "{}", Some(&w), "")).await;
            assert_eq!(r.status, StatusCode::OK);
        }
        if mlaudit_integrations::sampling::keeps(0.05, &id) {
            kept += 1;
        }
    }
    assert_eq!(f.store.tree_size(), kept);
    for s in 0..kept {
        assert_eq!(payload(&f, s)["attributes"]["sample_rate"], 0.05);
    }
    assert!(kept < 40);
}

#[tokio::test]
async fn an_unmatched_half_is_written_alone_after_the_timeout() {
    let mut config = IntegrationsConfig::default();
    config.cloudevents.join_timeout = Duration::from_millis(200);
    let f = configured("ce-timeout", config);
    let sweeper = tokio::spawn(mlaudit_server::integrations::cloudevents::sweep(
        f.state.clone(),
    ));
    let r = call(
        &f,
        kserve(
            &f,
            "request",
            "lonely",
            r#"{"instances": [[3]]}"#,
            Some(&f.writer.clone()),
            "",
        ),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    for _ in 0..100 {
        if f.store.tree_size() > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    sweeper.abort();
    assert_eq!(f.store.tree_size(), 1, "the half was written alone");
    let e = payload(&f, 0);
    assert_eq!(e["kind"], "prediction.served");
    assert_eq!(e["attributes"]["join"], "timed_out");
    assert_eq!(e["attributes"]["unreported"], json!(["outputs"]));
    let entry = mlaudit_core::entry::decode(&f.store.event(0).unwrap().entry).unwrap();
    assert_eq!(
        entry.principal, "token:writer",
        "the sender's principal, kept through the wait"
    );
    assert_eq!(f.state.integrations.joiner.len(), 0);
}

fn waiting(key: &str, side: mlaudit_integrations::cloudevents::Side) -> Waiting {
    let ty = match side {
        mlaudit_integrations::cloudevents::Side::Request => {
            "org.kubeflow.serving.inference.request"
        }
        mlaudit_integrations::cloudevents::Side::Response => {
            "org.kubeflow.serving.inference.response"
        }
    };
    let event = mlaudit_integrations::cloudevents::from_structured(json!({
        "specversion": "1.0", "id": key, "source": "s", "type": ty,
        "inferenceservicename": "m", "namespace": "ns", "data": {"x": 1}
    }))
    .unwrap();
    let mlaudit_integrations::cloudevents::Classified::Half(half) =
        mlaudit_integrations::cloudevents::classify(event).unwrap()
    else {
        panic!("a half")
    };
    Waiting {
        half: *half,
        principal: "token:writer".into(),
        rate: 1.0,
        arrived_ns: 1,
        bytes: 0,
    }
}

/// An acknowledged half survives a crash: the journal is replayed at open, a torn last line
/// (never acknowledged) is ignored, and a forgotten half stays forgotten.
#[test]
fn the_join_journal_keeps_every_acknowledged_half_across_a_restart() {
    use mlaudit_integrations::cloudevents::Side;
    use mlaudit_server::integrations::join::Offer;
    let dir = std::env::temp_dir().join(format!("mlaudit-join-journal-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let path = dir.join("pending.jsonl");
    {
        let j = Joiner::open(&path).unwrap();
        for key in ["k1", "k2", "k3"] {
            assert!(matches!(
                j.offer(waiting(key, Side::Request), (10, 1 << 20)).unwrap(),
                Offer::Waiting
            ));
        }
        assert!(matches!(
            j.offer(waiting("k1", Side::Request), (10, 1 << 20))
                .unwrap(),
            Offer::Duplicate
        ));
        let Offer::Joined(partner) = j
            .offer(waiting("k2", Side::Response), (10, 1 << 20))
            .unwrap()
        else {
            panic!("k2's partner waits")
        };
        j.forget(&partner);
        // Dropped without any shutdown: a crash.
    }
    {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap();
        f.write_all(br#"{"op":"add","logger":"kserve","side":"request","key":"torn"#)
            .unwrap();
    }
    let j = Joiner::open(&path).unwrap();
    assert_eq!(j.len(), 2);
    let mut keys: Vec<String> = j.due(i64::MAX).into_iter().map(|w| w.half.key).collect();
    keys.sort();
    assert_eq!(keys, ["k1", "k3"]);
    let full = j
        .offer(waiting("k9", Side::Request), (0, 1 << 20))
        .err()
        .map(|e| e.to_string());
    assert!(
        full.unwrap_or_default().contains("limit"),
        "a full joiner refuses"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn openlineage_events_are_received_and_unknown_types_refused() {
    let mut config = IntegrationsConfig::default();
    config.openlineage.training_jobs = vec!["train_*".into()];
    let f = configured("openlineage", config);
    let start = json!({
        "eventTime": "2026-06-01T10:00:00Z", "eventType": "START", "producer": "https://example/airflow",
        "schemaURL": "https://openlineage.io/spec/2-0-2/OpenLineage.json#/$defs/RunEvent",
        "run": {"runId": "01a24220-11cb-73e4-a409-be17ddb04f9f"},
        "job": {"namespace": "ml", "name": "train_credit"},
        "inputs": [{"namespace": "s3://acme-data", "name": "credit/train.parquet", "facets": {"version": {"datasetVersion": "v7"}}}]
    });
    let gz = {
        use std::io::Write;
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        e.write_all(start.to_string().as_bytes()).unwrap();
        e.finish().unwrap()
    };
    let post = |uri: &str, body: Vec<u8>, token: &str, gzip: bool| {
        let mut req = Request::post(uri)
            .header("authorization", bearer(token))
            .header("content-type", "application/json");
        if gzip {
            req = req.header("content-encoding", "gzip");
        }
        req.body(Body::from(body)).unwrap()
    };
    let r = call(&f, post("/api/v1/lineage", gz, &f.writer, true)).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(f.store.tree_size(), 2);
    assert_eq!(payload(&f, 0)["kind"], "training.run_started");
    assert_eq!(payload(&f, 1)["kind"], "data.source_accessed");
    // The client's retry of the same event writes nothing new.
    let r = call(
        &f,
        post(
            "/api/v1/lineage",
            start.to_string().into_bytes(),
            &f.writer,
            false,
        ),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(r.json()["events"]
        .as_array()
        .unwrap()
        .iter()
        .all(|e| e["duplicate"] == true));
    let size = f.store.tree_size();
    let unknown = json!({"eventTime": "2026-06-01T10:00:00Z", "producer": "p", "schemaURL": "https://openlineage.io/spec/2-0-2/OpenLineage.json#/$defs/FooEvent"});
    let r = call(
        &f,
        post(
            "/api/v1/lineage",
            unknown.to_string().into_bytes(),
            &f.writer,
            false,
        ),
    )
    .await;
    assert_rejected(
        &f,
        &r,
        StatusCode::UNPROCESSABLE_ENTITY,
        "unprocessable",
        size,
    );
    let r = call(
        &f,
        post(
            "/api/v1/lineage/batch",
            start.to_string().into_bytes(),
            &f.writer,
            false,
        ),
    )
    .await;
    assert_rejected(&f, &r, StatusCode::BAD_REQUEST, "bad_request", size);
    let batch = json!([start, unknown]);
    let r = call(
        &f,
        post(
            "/api/v1/lineage/batch",
            batch.to_string().into_bytes(),
            &f.writer,
            false,
        ),
    )
    .await;
    assert_rejected(
        &f,
        &r,
        StatusCode::UNPROCESSABLE_ENTITY,
        "unprocessable",
        size,
    );
    assert!(r.text().contains("event 1"));
    let r = call(&f, post("/api/v1/lineage", b"{".to_vec(), &f.writer, false)).await;
    assert_rejected(&f, &r, StatusCode::BAD_REQUEST, "bad_request", size);
    let r = call(
        &f,
        post(
            "/api/v1/lineage",
            start.to_string().into_bytes(),
            &f.reader,
            false,
        ),
    )
    .await;
    assert_rejected(&f, &r, StatusCode::FORBIDDEN, "forbidden", size);
    let r = call(
        &f,
        Request::post("/api/v1/lineage")
            .header("content-type", "application/json")
            .body(Body::from(start.to_string()))
            .unwrap(),
    )
    .await;
    assert_rejected(&f, &r, StatusCode::UNAUTHORIZED, "unauthorized", size);
}

/// A half that could never be written (even alone it is over the event limits) is refused at
/// once, not acknowledged and then lost; two halves too large together are written apart.
#[tokio::test]
async fn halves_are_checked_before_they_are_acknowledged() {
    let f = configured("ce-too-large", IntegrationsConfig::default());
    let w = f.writer.clone();
    let huge = format!("{{\"instances\": [\"{}\"]}}", "x".repeat(300 << 10));
    let r = call(&f, kserve(&f, "request", "big", &huge, Some(&w), "")).await;
    assert_rejected(
        &f,
        &r,
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_events",
        0,
    );
    assert_eq!(
        f.state.integrations.joiner.len(),
        0,
        "nothing waits for a partner"
    );
    let half_size = format!("{{\"instances\": [\"{}\"]}}", "y".repeat(150 << 10));
    let r = call(&f, kserve(&f, "request", "pair", &half_size, Some(&w), "")).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let r = call(
        &f,
        kserve(
            &f,
            "response",
            "pair",
            &half_size.replace("instances", "predictions"),
            Some(&w),
            "",
        ),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(f.store.tree_size(), 2);
    let sides: Vec<Value> = (0..2)
        .map(|s| payload(&f, s)["attributes"]["unreported"].clone())
        .collect();
    assert!(
        sides.contains(&json!(["outputs"])) && sides.contains(&json!(["inputs"])),
        "{sides:?}"
    );
    assert_eq!(payload(&f, 0)["attributes"]["join"], "too_large_to_join");
}

/// `mlaudit import mlflow` and the webhook derive the same id for a creation: whichever comes
/// second is acknowledged as already recorded.
#[tokio::test]
async fn a_creation_already_imported_is_acknowledged_once() {
    let f = configured("mlflow-imported", with_secret());
    let imported = mlaudit_integrations::mlflow::rest::model_version_event(&json!({
        "name": "credit-risk", "version": "3", "run_id": "r1", "source": "runs:/r1/model",
        "creation_timestamp": 1_700_000_000_000_i64
    }))
    .unwrap();
    let prepared = mlaudit_core::event::prepare(&imported.to_string(), "local:tester").unwrap();
    f.store.append(vec![prepared]).unwrap();
    let ts = now_s();
    let r = webhook(
        &f,
        "d-9",
        ts,
        Some(sign(SECRET, "d-9", ts, VERSION_CREATED)),
        VERSION_CREATED,
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let body = r.json();
    assert_eq!(body["events"][0]["duplicate"], true);
    assert_eq!(body["events"][0]["seq"], 0);
    assert_eq!(body["events"][0]["id"], imported["id"]);
    assert_eq!(f.store.tree_size(), 1);
}

/// Halves join only within one principal, a reused id with other content is not taken for a
/// retry, a line of the journal that does not parse loses nothing after it, and a compaction
/// keeps the halves whose events are still on their way.
#[test]
fn the_join_journal_keeps_principals_apart_and_loses_nothing_on_replay() {
    use mlaudit_integrations::cloudevents::Side;
    use mlaudit_server::integrations::join::Offer;
    let dir = std::env::temp_dir().join(format!("mlaudit-join-safety-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let path = dir.join("pending.jsonl");
    let limits = (1000, 64 << 20);
    {
        let j = Joiner::open(&path).unwrap();
        let mine = waiting("r1", Side::Request);
        let mut theirs = waiting("r1", Side::Response);
        theirs.principal = "token:someone-else".into();
        assert!(matches!(
            j.offer(mine.clone(), limits).unwrap(),
            Offer::Waiting
        ));
        assert!(
            matches!(j.offer(theirs, limits).unwrap(), Offer::Waiting),
            "no join across principals"
        );
        let mut reused = mine.clone();
        reused.half.event.data = Some(json!({"x": 2}));
        assert!(matches!(j.offer(reused, limits).unwrap(), Offer::Differs));
        assert!(matches!(j.offer(mine, limits).unwrap(), Offer::Duplicate));
        // Grow the journal past the compaction threshold with joined pairs, while one half
        // is in flight (taken by the sweep, its event not yet durable).
        assert!(matches!(
            j.offer(waiting("flying", Side::Request), limits).unwrap(),
            Offer::Waiting
        ));
        let mut flying = j.due(i64::MAX);
        flying.retain(|w| w.half.key.starts_with("flying"));
        assert_eq!(flying.len(), 1);
        for i in 0..60 {
            let mut req = waiting(&format!("p{i}"), Side::Request);
            req.half.event.data = Some(json!({"pad": "z".repeat(40 << 10)}));
            req.arrived_ns = i64::MAX;
            assert!(matches!(j.offer(req, limits).unwrap(), Offer::Waiting));
            let Offer::Joined(partner) = j
                .offer(waiting(&format!("p{i}"), Side::Response), limits)
                .unwrap()
            else {
                panic!("p{i} joins")
            };
            j.forget(&partner);
        }
        assert!(
            std::fs::metadata(&path).unwrap().len() < 1 << 20,
            "compacted"
        );
        // Crash: the in-flight half's event never reached the log.
    }
    {
        // A damaged line in the middle (not a torn tail).
        let text = std::fs::read_to_string(&path).unwrap();
        let mut lines: Vec<&str> = text.lines().collect();
        lines.insert(1, "{\"op\":\"add\",\"garbage\":");
        std::fs::write(&path, format!("{}\n", lines.join("\n"))).unwrap();
    }
    let j = Joiner::open(&path).unwrap();
    let mut keys: Vec<String> = j
        .due(i64::MAX)
        .into_iter()
        .map(|w| format!("{}:{}", w.principal, w.half.key))
        .collect();
    keys.sort();
    assert!(keys.iter().any(|k| k.contains("flying")), "{keys:?}");
    assert_eq!(
        keys.len(),
        3,
        "r1 (mine), r1 (theirs) and the in-flight half: {keys:?}"
    );
    let copies = std::fs::read_dir(&dir)
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .contains(".bad-")
        })
        .count();
    assert_eq!(copies, 1, "the damaged journal is kept aside");
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn a_reused_request_id_is_another_inference_and_data_headers_are_refused() {
    let f = configured("ce-reused", IntegrationsConfig::default());
    let w = f.writer.clone();
    let r = call(
        &f,
        kserve(
            &f,
            "request",
            "dup",
            r#"{"instances": [[1]]}"#,
            Some(&w),
            "",
        ),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    let r = call(
        &f,
        kserve(
            &f,
            "request",
            "dup",
            r#"{"instances": [[1]]}"#,
            Some(&w),
            "",
        ),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(f.store.tree_size(), 0, "a retry waits once");
    let r = call(
        &f,
        kserve(
            &f,
            "request",
            "dup",
            r#"{"instances": [[2]]}"#,
            Some(&w),
            "",
        ),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(
        f.store.tree_size(),
        1,
        "other content under a waiting id is written alone"
    );
    let e = payload(&f, 0);
    assert_eq!(e["attributes"]["join"], "id_reused");
    assert_eq!(e["attributes"]["inputs"], json!({"instances": [[2]]}));
    let mut req = kserve(&f, "request", "hdr", "abc", Some(&w), "");
    req.headers_mut().insert("ce-data", "x".parse().unwrap());
    let r = call(&f, req).await;
    assert_rejected(&f, &r, StatusCode::BAD_REQUEST, "bad_request", 1);
    // A batch whose second half is refused writes none of its events.
    let big = "x".repeat(300 << 10);
    let batch = json!([
        {"specversion": "1.0", "id": "c-9", "source": "/x", "type": "com.example.other", "data": {"n": 1}},
        {"specversion": "1.0", "id": "b-9", "source": "kserve", "type": "org.kubeflow.serving.inference.request",
         "inferenceservicename": "credit-risk", "namespace": "default", "data": {"instances": [big]}}
    ]);
    let r = call(
        &f,
        Request::post("/v1/integrations/cloudevents")
            .header("authorization", bearer(&f.writer))
            .header("content-type", "application/cloudevents-batch+json")
            .body(Body::from(batch.to_string()))
            .unwrap(),
    )
    .await;
    assert_rejected(
        &f,
        &r,
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_events",
        1,
    );
    assert!(r.text().contains("\"index\":1"), "{}", r.text());
}

/// A creation whose derived id is taken by another object of the same name (a model deleted
/// and created again, its versions numbered from 1) is written under the delivery's id.
#[tokio::test]
async fn a_recreated_model_version_is_not_taken_for_the_old_one() {
    let f = configured("mlflow-recreated", with_secret());
    let ts = now_s();
    let r = webhook(
        &f,
        "v-1",
        ts,
        Some(sign(SECRET, "v-1", ts, VERSION_CREATED)),
        VERSION_CREATED,
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let again = VERSION_CREATED
        .replace("runs:/r1/model", "runs:/r9/model")
        .replace("\"r1\"", "\"r9\"");
    let r = webhook(&f, "v-2", ts, Some(sign(SECRET, "v-2", ts, &again)), &again).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(r.json()["events"][0]["duplicate"], false);
    assert_eq!(f.store.tree_size(), 2);
    let second = payload(&f, 1);
    assert_eq!(second["subject"]["run"], "r9");
    assert_eq!(second["attributes"]["same_id_as"], payload(&f, 0)["id"]);
}
