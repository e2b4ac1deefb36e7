//! Every kind of the catalogue has a typed constructor, and what each builds — taken through
//! the protobuf encoding and the server's own decoder — passes the server's validation.

use mlaudit_client::{encode_batch, Actor, Event, Sha256};
use mlaudit_core::event::{catalogue_kinds, prepare};
use serde_json::{json, Map, Value};
use std::collections::BTreeSet;
use std::time::{Duration, UNIX_EPOCH};

fn obj(v: Value) -> Map<String, Value> {
    v.as_object().cloned().unwrap_or_default()
}

/// One event of every kind, built only with the typed constructors.
fn one_of_each() -> Vec<Event> {
    let digest = Sha256::of(b"the data");
    vec![
        Event::source_accessed(
            "applications",
            "s3://bank-data/applications/2026-11.parquet",
        ),
        Event::transformation_applied(
            "applications-clean",
            ["applications"],
            "drop rows with missing income",
        )
        .attribute("filter", json!({"income": "not null"})),
        Event::snapshot_created("applications-clean", "v3", digest),
        Event::run_started(
            "run-1",
            "credit-risk",
            obj(json!({"depth": 6, "eta": 0.1})),
            42,
            ["applications-clean@v3"],
        ),
        Event::checkpoint_evaluated("run-1", 10, obj(json!({"auc": 0.91}))),
        Event::run_completed(
            "run-1",
            "succeeded",
            312.5,
            obj(json!({"gpu_hours": 0.0, "cpu_hours": 1.2})),
        ),
        Event::model_registered("credit-risk", "7", "run-1", digest),
        Event::promotion_requested("credit-risk", "7", "production"),
        Event::approval_granted(
            "credit-risk",
            "7",
            "maria.k@bank.example",
            "validation report MRM-2291 accepted",
        )
        .actor(Actor::user("maria.k@bank.example")),
        Event::approval_rejected(
            "credit-risk",
            "6",
            "maria.k@bank.example",
            "fairness gap on age band 18-25",
        ),
        Event::stage_changed("credit-risk", "7", "staging", "production"),
        Event::deployment_target_assigned("credit-risk", "7", "k8s/eu-west-1/scoring"),
        Event::deployed("scoring-eu", "credit-risk", "7", "production"),
        Event::traffic_routed("scoring-eu", [("7", 90.0), ("6", 10.0)]),
        Event::rolled_back("scoring-eu", "7", "6", "p99 latency alert"),
        Event::config_changed("scoring-eu", ("threshold", json!(0.5), json!(0.55)), []),
        Event::prediction_served(
            "credit-risk",
            "7",
            "req-1",
            json!({"income": 52000}),
            json!({"default": 0.03}),
        )
        .confidence(0.97)
        .latency_ms(2.5),
        Event::policy_changed("sampling.credit-risk", json!("low"), json!("high")),
        Event::custom("feature_store.refreshed").attribute("rows", 1200),
    ]
}

/// Every kind a client may submit; the server alone writes the reserved ones.
#[test]
fn every_catalogue_kind_a_client_may_submit_has_a_constructor() {
    let built: BTreeSet<String> = one_of_each().iter().map(|e| e.kind().to_owned()).collect();
    for kind in catalogue_kinds() {
        let reserved = mlaudit_core::event::is_reserved_kind(kind);
        assert_eq!(built.contains(kind), !reserved, "{kind}");
    }
    assert!(built.contains("x.feature_store.refreshed"));
}

#[test]
fn every_constructed_event_passes_the_servers_validation_through_protobuf() {
    let events = one_of_each();
    let n = events.len();
    let body = encode_batch(events, &Actor::service("scoring-api"));
    let decoded = mlaudit_server::protobuf::decode_batch(&body)
        .unwrap_or_else(|e| panic!("the server cannot decode the batch: {e}"));
    assert_eq!(decoded.len(), n);
    for json in &decoded {
        let prepared = prepare(json, "token:test");
        assert!(
            prepared.is_ok(),
            "{json}\nrefused: {}",
            prepared.err().map(|e| e.to_string()).unwrap_or_default()
        );
    }
}

#[test]
fn ids_times_and_actors_are_filled_in_and_kept_when_given() {
    let id = uuid::Uuid::new_v4();
    let at = UNIX_EPOCH + Duration::from_secs(1_790_000_000) + Duration::from_micros(123_456);
    let given = Event::custom("a")
        .id(id)
        .time(at)
        .actor(Actor::user("alice"));
    let body = encode_batch(
        [given, Event::custom("b"), Event::custom("c")],
        &Actor::service("svc"),
    );
    let decoded: Vec<Value> = mlaudit_server::protobuf::decode_batch(&body)
        .unwrap()
        .iter()
        .map(|t| serde_json::from_str(t).unwrap())
        .collect();
    assert_eq!(decoded[0]["id"], id.to_string());
    assert_eq!(decoded[0]["time"], "2026-09-21T14:13:20.123456Z");
    assert_eq!(decoded[0]["actor"], json!({"id": "alice", "type": "user"}));
    assert_eq!(decoded[1]["actor"], json!({"id": "svc", "type": "service"}));
    let (a, b) = (
        decoded[1]["id"].as_str().unwrap(),
        decoded[2]["id"].as_str().unwrap(),
    );
    assert_ne!(a, b);
    for generated in [a, b] {
        let parsed = uuid::Uuid::parse_str(generated).unwrap();
        assert_eq!(parsed.get_version_num(), 4, "{generated}");
    }
}
