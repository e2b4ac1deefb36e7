//! The translations against what the real tools send (fixtures captured from MLflow 3.17's
//! webhooks, openlineage-python 1.54's HTTP transport and a ClearML 2.1 offline session; the
//! W&B audit log is written to W&B's documented schema), and every translated event is
//! accepted by the catalogue.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test fails loudly on any unexpected error"
)]

use mlaudit_core::event::prepare;
use mlaudit_integrations::cloudevents::{self as ce, Classified, Side};
use mlaudit_integrations::mlflow::{self, SignatureError, WebhookActor};
use mlaudit_integrations::{clearml, openlineage, sampling, wandb, TranslateError};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::path::PathBuf;

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

/// Every event passes the catalogue's validation.
fn valid(events: &[Value]) {
    for e in events {
        if let Err(err) = prepare(&e.to_string(), "test") {
            panic!(
                "{} does not validate: {err}",
                serde_json::to_string_pretty(e).unwrap()
            );
        }
    }
}

fn deliveries() -> Vec<(BTreeMap<String, String>, String, String)> {
    let mut out = Vec::new();
    let mut paths: Vec<_> = std::fs::read_dir(fixtures().join("mlflow"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    paths.sort();
    for p in paths {
        let v: Value = serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap();
        let headers = v["headers"]
            .as_object()
            .unwrap()
            .iter()
            .map(|(k, v)| (k.to_ascii_lowercase(), v.as_str().unwrap().to_owned()))
            .collect();
        out.push((
            headers,
            v["body"].as_str().unwrap().to_owned(),
            p.display().to_string(),
        ));
    }
    out
}

#[test]
fn real_mlflow_signatures_verify_and_any_change_is_refused() {
    let all = deliveries();
    assert!(all.len() >= 14, "every MLflow event type is captured");
    for (h, body, name) in &all {
        let ts: i64 = h["x-mlflow-timestamp"].parse().unwrap();
        let check = |secret: &[u8], body: &[u8], now: i64| {
            mlflow::verify_signature(
                secret,
                h.get("x-mlflow-delivery-id").map(String::as_str),
                h.get("x-mlflow-timestamp").map(String::as_str),
                h.get("x-mlflow-signature").map(String::as_str),
                body,
                now,
            )
        };
        assert_eq!(check(b"s3cr3t", body.as_bytes(), ts + 10), Ok(()), "{name}");
        assert_eq!(
            check(b"wrong", body.as_bytes(), ts),
            Err(SignatureError::Mismatch)
        );
        let mut tampered = body.clone().into_bytes();
        tampered[10] ^= 1;
        assert_eq!(
            check(b"s3cr3t", &tampered, ts),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            check(b"s3cr3t", body.as_bytes(), ts + 301),
            Err(SignatureError::Stale { age_s: 301 })
        );
        assert_eq!(
            check(b"s3cr3t", body.as_bytes(), ts - 301),
            Err(SignatureError::Stale { age_s: -301 })
        );
    }
    let (h, body, _) = &all[0];
    assert_eq!(
        mlflow::verify_signature(
            b"s3cr3t",
            h.get("x-mlflow-delivery-id").map(String::as_str),
            h.get("x-mlflow-timestamp").map(String::as_str),
            None,
            body.as_bytes(),
            0
        ),
        Err(SignatureError::Missing("X-MLflow-Signature"))
    );
    // The delivery id is signed: a captured signature replayed under another id fails.
    assert_eq!(
        mlflow::verify_signature(
            b"s3cr3t",
            Some("another-id"),
            h.get("x-mlflow-timestamp").map(String::as_str),
            h.get("x-mlflow-signature").map(String::as_str),
            body.as_bytes(),
            h["x-mlflow-timestamp"].parse().unwrap()
        ),
        Err(SignatureError::Mismatch)
    );
}

#[test]
fn every_mlflow_event_type_maps_and_validates() {
    let mut kinds = BTreeMap::new();
    for (h, body, _) in deliveries() {
        let d = mlflow::parse_delivery(body.as_bytes()).unwrap();
        let id = &h["x-mlflow-delivery-id"];
        let e = mlflow::webhook_event(&d, id, &WebhookActor::Unknown, Some("1")).unwrap();
        valid(std::slice::from_ref(&e));
        assert_eq!(e["attributes"]["human_actor"], "unknown");
        assert_eq!(e["actor"], json!({"id": "mlflow", "type": "service"}));
        assert_eq!(
            e["attributes"]["mlflow"],
            serde_json::from_str::<Value>(&body).unwrap(),
            "the body is kept"
        );
        // The same delivery (a retry) has the same id.
        let again = mlflow::webhook_event(&d, id, &WebhookActor::Unknown, Some("1")).unwrap();
        assert_eq!(e["id"], again["id"]);
        kinds.insert(
            format!("{}.{}", d.entity, d.action),
            e["kind"].as_str().unwrap().to_owned(),
        );
    }
    assert_eq!(kinds["model_version.created"], "registry.model_registered");
    assert_eq!(
        kinds["model_version_alias.created"],
        "registry.stage_changed"
    );
    assert_eq!(
        kinds["model_version_alias.deleted"],
        "registry.stage_changed"
    );
    assert_eq!(
        kinds["registered_model.created"],
        "x.mlflow.registered_model.created"
    );
    assert_eq!(
        kinds["model_version_tag.set"],
        "x.mlflow.model_version_tag.set"
    );
    assert_eq!(
        kinds["prompt_version.created"],
        "x.mlflow.prompt_version.created"
    );
}

#[test]
fn mlflow_versions_name_their_creator_only_when_looked_up_and_aliases_are_stages() {
    let created = mlflow::parse_delivery(br#"{"entity":"model_version","action":"created","timestamp":"2026-12-04T17:33:39.083787+00:00","data":{"name":"credit","version":"3","source":"runs:/r1/model","run_id":"r1","tags":{}}}"#).unwrap();
    let e =
        mlflow::webhook_event(&created, "d1", &WebhookActor::Looked("alice".into()), None).unwrap();
    valid(std::slice::from_ref(&e));
    assert_eq!(e["actor"], json!({"id": "alice", "type": "user"}));
    assert!(e["attributes"].get("human_actor").is_none());
    assert_eq!(
        e["subject"],
        json!({"model": "credit", "version": "3", "run": "r1"})
    );
    assert_eq!(e["attributes"]["unreported"], json!(["artifact_sha256"]));
    // A creation has the id the import derives for the same version: one fact, once.
    let imported = mlflow::rest::model_version_event(
        &json!({"name": "credit", "version": "3", "run_id": "r1"}),
    )
    .unwrap();
    assert_eq!(e["id"], imported["id"]);
    let deleted = mlflow::parse_delivery(br#"{"entity":"model_version_alias","action":"deleted","timestamp":"2026-12-04T17:33:40+00:00","data":{"name":"credit","alias":"champion"}}"#).unwrap();
    assert_eq!(
        deleted.deleted_alias(),
        Some(("credit".into(), "champion".into()))
    );
    let known = mlflow::webhook_event(&deleted, "d2", &WebhookActor::Unknown, Some("3")).unwrap();
    valid(std::slice::from_ref(&known));
    assert_eq!(known["kind"], "registry.stage_changed");
    assert_eq!(known["attributes"]["from_stage"], "champion");
    assert_eq!(known["attributes"]["to_stage"], "none");
    assert_eq!(known["subject"]["version"], "3");
    // Without a known version there is no stage change to record honestly.
    let unknown = mlflow::webhook_event(&deleted, "d2", &WebhookActor::Unknown, None).unwrap();
    assert_eq!(unknown["kind"], "x.mlflow.model_version_alias.deleted");
    assert!(mlflow::parse_delivery(b"{\"entity\":\"x\"}").is_err());
    assert!(mlflow::parse_delivery(b"not json").is_err());
}

#[test]
fn mlflow_rest_records_map_to_training_and_registry_kinds() {
    let run = json!({
        "info": {"run_id": "r1", "experiment_id": "1", "user_id": "bob", "status": "FINISHED",
                 "start_time": 1_700_000_000_000_i64, "end_time": 1_700_000_090_500_i64},
        "data": {"params": [{"key": "lr", "value": "0.1"}, {"key": "seed", "value": "42"}],
                 "metrics": [{"key": "auc", "value": 0.8, "step": 2}],
                 "tags": [{"key": "team", "value": "risk"}]},
        "inputs": {"dataset_inputs": [{"dataset": {"name": "loans", "digest": "abc123"}}]}
    });
    let history = BTreeMap::from([(
        "auc".to_owned(),
        vec![
            json!({"key": "auc", "value": 0.7, "step": 1, "timestamp": 1_700_000_010_000_i64}),
            json!({"key": "auc", "value": 0.8, "step": 2, "timestamp": 1_700_000_020_000_i64}),
        ],
    )]);
    let events = mlflow::rest::run_events(&run, "credit-exp", Some("credit"), &history).unwrap();
    valid(&events);
    let kinds: Vec<&str> = events.iter().map(|e| e["kind"].as_str().unwrap()).collect();
    assert_eq!(
        kinds,
        [
            "training.run_started",
            "training.checkpoint_evaluated",
            "training.checkpoint_evaluated",
            "training.run_completed"
        ]
    );
    assert_eq!(
        events[0]["subject"],
        json!({"run": "r1", "model": "credit"})
    );
    assert_eq!(events[0]["attributes"]["random_seed"], 42);
    assert_eq!(events[0]["attributes"]["datasets"], json!(["loans@abc123"]));
    assert_eq!(events[0]["actor"], json!({"id": "bob", "type": "user"}));
    assert!(events[0]["attributes"].get("human_actor").is_none());
    // MLflow's "unknown" user is nobody: the service acted, the person is unknown.
    let mut anonymous = run.clone();
    anonymous["info"]["user_id"] = json!("unknown");
    let a = mlflow::rest::run_events(&anonymous, "credit-exp", None, &BTreeMap::new()).unwrap();
    assert_eq!(a[0]["actor"], json!({"id": "mlflow", "type": "service"}));
    assert!(
        a.iter()
            .all(|e| e["attributes"]["human_actor"] == "unknown"),
        "every event of the run says so"
    );
    // A dataset input without a digest is listed apart, never as a bare name in `datasets`.
    let mut undigested = run.clone();
    undigested["inputs"]["dataset_inputs"] = json!([{"dataset": {"name": "loans"}}]);
    let u = mlflow::rest::run_events(&undigested, "credit-exp", None, &BTreeMap::new()).unwrap();
    valid(&u);
    assert_eq!(u[0]["attributes"]["datasets"], json!([]));
    assert_eq!(u[0]["attributes"]["unversioned_datasets"], json!(["loans"]));
    assert_eq!(a[0]["subject"]["model"], "credit-exp");
    assert_eq!(a[0]["attributes"]["model_source"], "experiment");
    assert_eq!(events[2]["attributes"]["metrics"], json!({"auc": 0.8}));
    assert_eq!(events[3]["attributes"]["duration_s"], 90.5);
    assert_eq!(events[3]["attributes"]["unreported"], json!(["compute"]));
    // Ids derive from MLflow's: a second translation is identical.
    assert_eq!(
        events,
        mlflow::rest::run_events(&run, "credit-exp", Some("credit"), &history).unwrap()
    );
    let model = json!({"name": "credit", "creation_timestamp": 1_700_000_100_000_i64, "aliases": [{"alias": "champion", "version": "1"}]});
    let m = mlflow::rest::registered_model_events(&model).unwrap();
    valid(&m);
    assert_eq!(m[1]["kind"], "registry.stage_changed");
    assert_eq!(m[1]["attributes"]["to_stage"], "champion");
    let v = mlflow::rest::model_version_event(&json!({"name": "credit", "version": "1", "run_id": "r1", "source": "runs:/r1/model", "creation_timestamp": 1_700_000_100_000_i64})).unwrap();
    valid(std::slice::from_ref(&v));
    assert_eq!(v["kind"], "registry.model_registered");
    assert_eq!(v["attributes"]["human_actor"], "unknown");
}

fn kserve_half(side: &str, id: &str, body: &[u8]) -> ce::CloudEvent {
    let ty = format!("org.kubeflow.serving.inference.{side}");
    let headers = [
        ("Ce-Specversion", "1.0"),
        ("Ce-Id", id),
        ("Ce-Type", ty.as_str()),
        ("Ce-Source", "http://localhost:9081/"),
        ("Ce-Time", "2023-04-05T07:39:53.505997782Z"),
        ("Ce-Inferenceservicename", "credit-risk"),
        ("Ce-Namespace", "default"),
        ("Ce-Component", "predictor"),
        ("Ce-Endpoint", ""),
    ];
    ce::from_binary(headers, Some("application/json"), body).unwrap()
}

fn half(e: ce::CloudEvent) -> ce::Half {
    match ce::classify(e).unwrap() {
        Classified::Half(h) => *h,
        Classified::Event(v) => panic!("not a half: {v}"),
    }
}

#[test]
fn kserve_v1_and_v2_halves_join_into_one_prediction() {
    let req = half(kserve_half(
        "request",
        "req-1",
        br#"{"instances": [[6.8, 2.8]]}"#,
    ));
    let resp = half(kserve_half("response", "req-1", br#"{"predictions": [1]}"#));
    assert_eq!(
        req.key, "req-1/predictor",
        "the logging component is part of the join key"
    );
    assert_eq!(
        (
            req.side,
            resp.side,
            req.request.as_str(),
            req.model.as_str()
        ),
        (
            Side::Request,
            Side::Response,
            "req-1",
            "default/credit-risk"
        )
    );
    let e = ce::prediction(Some(&req), Some(&resp), 1.0, Some("7")).unwrap();
    valid(std::slice::from_ref(&e));
    assert_eq!(e["kind"], "prediction.served");
    assert_eq!(
        e["subject"],
        json!({"model": "default/credit-risk", "version": "7", "request": "req-1"})
    );
    assert_eq!(
        e["attributes"]["inputs"],
        json!({"instances": [[6.8, 2.8]]})
    );
    assert_eq!(e["attributes"]["outputs"], json!({"predictions": [1]}));
    assert_eq!(e["attributes"]["join"], "matched");
    assert_eq!(e["attributes"]["component"], "predictor");
    assert_eq!(e["attributes"]["version_source"], "configured default");
    // v2: the response names the version.
    let req2 = half(kserve_half("request", "req-2", br#"{"id":"42","inputs":[{"name":"input-0","shape":[1,2],"datatype":"FP32","data":[6.8,2.8]}]}"#));
    let resp2 = half(kserve_half("response", "req-2", br#"{"model_name":"credit-risk","model_version":"3","id":"42","outputs":[{"name":"output-0","shape":[1],"datatype":"INT64","data":[1]}]}"#));
    let e2 = ce::prediction(Some(&req2), Some(&resp2), 0.5, None).unwrap();
    valid(std::slice::from_ref(&e2));
    assert_eq!(e2["subject"]["version"], "3");
    assert_eq!(e2["attributes"]["sample_rate"], 0.5);
    // A half alone names what is missing, with its own id.
    let alone = ce::prediction(Some(&req2), None, 1.0, None).unwrap();
    valid(std::slice::from_ref(&alone));
    assert_eq!(alone["attributes"]["unreported"], json!(["outputs"]));
    assert_eq!(alone["attributes"]["join"], "timed_out");
    assert_ne!(alone["id"], e2["id"]);
}

#[test]
fn seldon_halves_join_on_the_request_id_and_structured_mode_parses() {
    let mk = |side: &str, id: &str| {
        ce::from_structured(json!({
            "specversion": "1.0", "id": id, "source": "seldon", "type": format!("io.seldon.serving.inference.{side}"),
            "requestid": "puid-9", "modelid": "classifier", "inferenceservicename": "fraud", "namespace": "prod",
            "datacontenttype": "application/json", "data": {"data": {"ndarray": [[1, 2]]}}
        }))
        .unwrap()
    };
    let (a, b) = (half(mk("request", "x1")), half(mk("response", "x2")));
    assert_eq!(
        (a.request.as_str(), b.request.as_str(), a.model.as_str()),
        ("puid-9", "puid-9", "prod/fraud")
    );
    assert_eq!(a.key, b.key);
    assert_eq!(
        a.key, "puid-9/classifier",
        "two nodes of one graph are two predictions"
    );
    let e = ce::prediction(Some(&a), Some(&b), 1.0, None).unwrap();
    valid(std::slice::from_ref(&e));
    assert_eq!(e["subject"]["request"], "puid-9");
    assert_eq!(e["subject"]["version"], "unknown");
}

#[test]
fn malformed_cloudevents_are_refused_with_the_reason() {
    let missing_id = ce::from_binary(
        [
            ("ce-specversion", "1.0"),
            ("ce-type", "t"),
            ("ce-source", "s"),
        ],
        Some("application/json"),
        b"{}",
    );
    assert!(matches!(missing_id, Err(TranslateError::Malformed(m)) if m.contains("ce-id")));
    let bad_version =
        ce::from_structured(json!({"specversion": "0.3", "id": "1", "source": "s", "type": "t"}));
    assert!(matches!(bad_version, Err(TranslateError::Malformed(m)) if m.contains("0.3")));
    let bad_json = ce::from_binary(
        [
            ("ce-specversion", "1.0"),
            ("ce-id", "1"),
            ("ce-type", "t"),
            ("ce-source", "s"),
        ],
        Some("application/json"),
        b"{not json",
    )
    .unwrap();
    // Declared JSON but not (KServe reuses the request's content type): kept, as base64.
    assert_eq!(bad_json.data_base64.as_deref(), Some("e25vdCBqc29u"));
    assert!(matches!(
        ce::from_batch(b"[]", 10),
        Err(TranslateError::Malformed(_))
    ));
    let one = r#"{"specversion":"1.0","id":"1","source":"s","type":"t"}"#;
    assert!(matches!(
        ce::from_batch(format!("[{one},{one}]").as_bytes(), 1),
        Err(TranslateError::TooMany { count: 2, max: 1 })
    ));
    let bad_name = ce::from_structured(
        json!({"specversion": "1.0", "id": "1", "source": "s", "type": "t", "Bad-Name": "x"}),
    );
    assert!(bad_name.is_err());
    let bad_time = ce::from_structured(
        json!({"specversion": "1.0", "id": "1", "source": "s", "type": "t", "time": "yesterday"}),
    );
    assert!(bad_time.is_err());
    assert!(ce::from_batch(b"{}", 10).is_err());
    assert!(ce::from_batch(
        br#"[{"specversion":"1.0","id":"1","source":"s","type":"t"},{"specversion":"1.0"}]"#,
        10
    )
    .is_err());
    let no_model = ce::from_structured(json!({"specversion": "1.0", "id": "1", "source": "s", "type": "org.kubeflow.serving.inference.request"})).unwrap();
    assert!(ce::classify(no_model).is_err());
    // Non-JSON data is kept as base64.
    let binary = ce::from_binary(
        [
            ("ce-specversion", "1.0"),
            ("ce-id", "1"),
            ("ce-type", "t"),
            ("ce-source", "s"),
        ],
        Some("application/octet-stream"),
        &[0, 159, 146, 150],
    )
    .unwrap();
    assert_eq!(binary.data_base64.as_deref(), Some("AJ+Slg=="));
}

#[test]
fn cdevents_become_operations_events_and_other_types_are_kept() {
    let deployed = ce::from_structured(json!({
        "specversion": "1.0", "id": "c1", "source": "/argo", "type": "dev.cdevents.service.deployed.0.2.0",
        "data": {"context": {"version": "0.4.1", "id": "271069a8", "source": "/argo", "type": "dev.cdevents.service.deployed.0.2.0", "timestamp": "2026-03-20T14:27:05.315384Z"},
                 "subject": {"id": "credit-api", "source": "/argo", "type": "service", "content": {"environment": {"id": "prod"}, "artifactId": "pkg:oci/credit-risk@3"}}}
    })).unwrap();
    let Classified::Event(e) = ce::classify(deployed).unwrap() else {
        panic!("a CDEvent is complete")
    };
    valid(std::slice::from_ref(&e));
    assert_eq!(e["kind"], "operations.deployed");
    assert_eq!(
        e["subject"],
        json!({"deployment": "prod/credit-api", "model": "credit-risk", "version": "3"})
    );
    assert_eq!(e["attributes"]["environment"], "prod");
    for (action, kind) in [
        ("rolledback", "operations.rolled_back"),
        ("removed", "operations.config_changed"),
    ] {
        let ty = format!("dev.cdevents.service.{action}.0.2.0");
        let ev = ce::from_structured(json!({
            "specversion": "1.0", "id": "c2", "source": "/argo", "type": ty,
            "data": {"context": {"id": format!("ctx-{action}"), "source": "/argo", "type": ty, "timestamp": "2026-03-20T14:27:05Z"},
                     "subject": {"id": "credit-api", "content": {"environment": {"id": "prod"}, "artifactId": "pkg:oci/credit-risk@2"}}}
        })).unwrap();
        let Classified::Event(e) = ce::classify(ev).unwrap() else {
            panic!()
        };
        valid(std::slice::from_ref(&e));
        assert_eq!(e["kind"], kind);
    }
    let other = ce::from_structured(json!({"specversion": "1.0", "id": "o1", "source": "/x", "type": "com.example.thing", "data": {"a": 1}})).unwrap();
    let Classified::Event(e) = ce::classify(other).unwrap() else {
        panic!()
    };
    valid(std::slice::from_ref(&e));
    assert_eq!(e["kind"], "x.cloudevents");
    assert_eq!(e["attributes"]["type"], "com.example.thing");
    assert_eq!(e["attributes"]["cloudevent"]["data"], json!({"a": 1}));
}

#[test]
fn sampling_matches_the_sdks_known_answers() {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../clients/python/tests/sampling_vectors.json");
    let v: Value = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
    let vectors = v["vectors"].as_array().unwrap();
    assert!(!vectors.is_empty());
    for t in vectors {
        let id = t["request_id"].as_str().unwrap();
        let rate = t["rate"].as_f64().unwrap();
        assert_eq!(
            sampling::keeps(rate, id),
            t["expected_in"].as_bool().unwrap(),
            "{id} at {rate}"
        );
    }
}

fn openlineage_fixture(name: &str) -> Value {
    serde_json::from_slice(&std::fs::read(fixtures().join("openlineage").join(name)).unwrap())
        .unwrap()
}

#[test]
fn real_openlineage_events_map_to_data_and_training_kinds() {
    let options = openlineage::Options {
        training_jobs: vec!["train*".into()],
        ..Default::default()
    };
    let mut all = Vec::new();
    for name in ["01.json", "02.json", "03.json", "04.json"] {
        let event = openlineage_fixture(name);
        let out = openlineage::translate(&event, &options).unwrap();
        valid(&out);
        assert_eq!(
            out[0]["attributes"]["openlineage"], event,
            "the record event keeps the original"
        );
        for derived in &out[1..] {
            assert_eq!(derived["attributes"]["openlineage_event"], out[0]["id"]);
        }
        assert_eq!(
            out,
            openlineage::translate(&event, &options).unwrap(),
            "ids are stable"
        );
        all.extend(out);
    }
    let kinds: Vec<&str> = all.iter().map(|e| e["kind"].as_str().unwrap()).collect();
    for k in [
        "data.source_accessed",
        "data.transformation_applied",
        "x.openlineage.job_event",
    ] {
        assert!(kinds.contains(&k), "{k} in {kinds:?}");
    }
    let unknown = json!({"eventTime": "2026-01-01T00:00:00Z", "producer": "p", "schemaURL": "https://openlineage.io/spec/2-0-2/OpenLineage.json#/$defs/FooEvent"});
    assert!(matches!(
        openlineage::translate(&unknown, &options),
        Err(TranslateError::UnknownType(_))
    ));
    let shapeless = json!({"eventTime": "2026-01-01T00:00:00Z", "producer": "p"});
    assert!(matches!(
        openlineage::translate(&shapeless, &options),
        Err(TranslateError::UnknownType(_))
    ));
}

/// One event's fan-out is refused before anything is built: at most `max_events` events, and
/// a bounded number of (input, output) pairs.
#[test]
fn an_openlineage_event_cannot_fan_out_past_the_limits() {
    let many = |n: usize, prefix: &str| -> Vec<Value> {
        (0..n)
            .map(|i| json!({"namespace": "s3://b", "name": format!("{prefix}{i}")}))
            .collect()
    };
    let event = |inputs: usize, outputs: usize| {
        json!({
            "eventTime": "2026-06-01T10:00:00Z", "eventType": "COMPLETE", "producer": "p",
            "run": {"runId": "r"}, "job": {"namespace": "ml", "name": "etl"},
            "inputs": many(inputs, "in"), "outputs": many(outputs, "out")
        })
    };
    let options = openlineage::Options {
        max_events: 100,
        ..Default::default()
    };
    assert!(openlineage::translate(&event(49, 25), &options).is_ok());
    assert!(matches!(
        openlineage::translate(&event(60, 25), &options),
        Err(TranslateError::TooMany { .. })
    ));
    let wide = openlineage::Options {
        max_events: 1 << 20,
        ..Default::default()
    };
    assert!(matches!(
        openlineage::translate(&event(2000, 1000), &wide),
        Err(TranslateError::TooMany { .. })
    ));
}

#[test]
fn a_training_run_lists_its_versioned_inputs_for_lineage() {
    let start = json!({
        "eventTime": "2026-06-01T10:00:00Z", "eventType": "START", "producer": "https://example/airflow",
        "schemaURL": "https://openlineage.io/spec/2-0-2/OpenLineage.json#/$defs/RunEvent",
        "run": {"runId": "01a24220-11cb-73e4-a409-be17ddb04f9f"},
        "job": {"namespace": "ml", "name": "fit_credit", "facets": {"jobType": {"processingType": "BATCH", "integration": "AIRFLOW", "jobType": "TRAINING"}}},
        "inputs": [{"namespace": "s3://acme-data", "name": "credit/train.parquet", "facets": {"version": {"datasetVersion": "v7"}}}],
        "outputs": [{"namespace": "s3://acme-models", "name": "credit", "facets": {"version": {"datasetVersion": "m3"}}}]
    });
    let out = openlineage::translate(&start, &openlineage::Options::default()).unwrap();
    valid(&out);
    assert_eq!(out[0]["kind"], "training.run_started");
    assert_eq!(
        out[0]["attributes"]["datasets"],
        json!(["s3://acme-data/credit/train.parquet@v7"])
    );
    assert_eq!(
        out[0]["attributes"]["unreported"],
        json!(["hyperparameters", "random_seed"])
    );
    assert_eq!(out[1]["kind"], "data.source_accessed");
    assert_eq!(out[1]["subject"]["dataset_version"], "v7");
    assert_eq!(
        out[1]["attributes"]["source"],
        "s3://acme-data/credit/train.parquet"
    );
    let kinds: Vec<&str> = out.iter().map(|e| e["kind"].as_str().unwrap()).collect();
    assert_eq!(
        kinds,
        [
            "training.run_started",
            "data.source_accessed",
            "data.transformation_applied",
            "data.snapshot_created"
        ]
    );
    // An input without a version is listed beside the versioned ones, never given a version.
    let mut mixed = start.clone();
    mixed["inputs"]
        .as_array_mut()
        .unwrap()
        .push(json!({"namespace": "postgres://db:5432", "name": "public.applicants"}));
    let out = openlineage::translate(&mixed, &openlineage::Options::default()).unwrap();
    valid(&out);
    assert_eq!(
        out[0]["attributes"]["datasets"],
        json!(["s3://acme-data/credit/train.parquet@v7"])
    );
    assert_eq!(
        out[0]["attributes"]["unversioned_datasets"],
        json!(["postgres://db:5432/public.applicants"])
    );
}

#[test]
fn wandb_audit_lines_map_to_governance_and_custom_kinds() {
    let text = std::fs::read_to_string(fixtures().join("wandb-audit.jsonl")).unwrap();
    let events: Vec<Value> = text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| wandb::audit_line(l).unwrap())
        .collect();
    for e in &events {
        let r = if wandb::is_reserved(e) {
            mlaudit_core::event::prepare_reserved(&e.to_string(), "test")
        } else {
            prepare(&e.to_string(), "test")
        };
        r.unwrap_or_else(|err| panic!("{e}: {err}"));
    }
    let invite = events
        .iter()
        .find(|e| e["attributes"]["action"] == "team:invite_user")
        .expect("an invitation");
    assert_eq!(invite["kind"], "governance.access_changed");
    assert_eq!(invite["attributes"]["change"], "granted");
    assert_eq!(invite["attributes"]["system"], "wandb");
    let artifact = events
        .iter()
        .find(|e| e["attributes"]["action"] == "artifact:create")
        .unwrap();
    assert_eq!(artifact["kind"], "x.wandb.artifact.create");
    assert_eq!(
        artifact["subject"],
        json!({"model": "acme-ml/credit/credit-model", "version": "v3"})
    );
    assert!(
        wandb::audit_line("{\"action\": \"user:login\"}").is_err(),
        "no timestamp"
    );
    assert!(wandb::audit_line("[1]").is_err());
}

#[test]
fn a_real_clearml_offline_session_maps_to_training_and_registry_kinds() {
    let task =
        clearml::parse_task(&std::fs::read(fixtures().join("clearml/task.json")).unwrap()).unwrap();
    let scalars = clearml::parse_metrics(
        &std::fs::read_to_string(fixtures().join("clearml/metrics.jsonl")).unwrap(),
    )
    .unwrap();
    assert_eq!(scalars.len(), 7);
    let weights = BTreeMap::from([("model.pkl".to_owned(), "ab".repeat(32))]);
    let events = clearml::session_events(&task, &scalars, &weights).unwrap();
    valid(&events);
    let kinds: Vec<&str> = events.iter().map(|e| e["kind"].as_str().unwrap()).collect();
    assert_eq!(kinds.first(), Some(&"training.run_started"));
    assert_eq!(
        kinds
            .iter()
            .filter(|k| **k == "training.checkpoint_evaluated")
            .count(),
        4,
        "iterations 0, 1, 2 and the summary"
    );
    assert_eq!(kinds.last(), Some(&"registry.model_registered"));
    assert_eq!(
        events[0]["attributes"]["hyperparameters"],
        json!({"depth": "5", "lr": "0.1"})
    );
    assert_eq!(events[0]["subject"]["model"], "credit-model");
    let reg = events.last().unwrap();
    assert_eq!(reg["attributes"]["artifact_sha256"], "ab".repeat(32));
    assert_eq!(reg["subject"]["run"], task["id"]);
    // Without the weights file the digest is unreported, never invented.
    let bare = clearml::session_events(&task, &scalars, &BTreeMap::new()).unwrap();
    assert_eq!(
        bare.last().unwrap()["attributes"]["unreported"],
        json!(["artifact_sha256"])
    );
    assert!(clearml::parse_task(b"{}").is_err());
    assert!(clearml::parse_metrics("not json").is_err());
}
