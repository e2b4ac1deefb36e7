//! The event catalogue's requirements restated independently of `src/event.rs`, and one
//! complete valid example event per kind: shared by the validation tests and the robustness
//! tests.

#![allow(dead_code, reason = "each test file uses part of it")]

use serde_json::{json, Map, Value};

/// (kind, required subjects, required attributes), in the order the catalogue checks them.
pub const SPEC: &[(&str, &[&str], &[&str])] = &[
    ("data.source_accessed", &["dataset"], &["source"]),
    (
        "data.transformation_applied",
        &["dataset"],
        &["inputs", "transformation"],
    ),
    (
        "data.snapshot_created",
        &["dataset", "dataset_version"],
        &["content_sha256"],
    ),
    (
        "training.run_started",
        &["run", "model"],
        &["hyperparameters", "random_seed", "datasets"],
    ),
    (
        "training.checkpoint_evaluated",
        &["run"],
        &["step", "metrics"],
    ),
    (
        "training.run_completed",
        &["run"],
        &["status", "duration_s", "compute"],
    ),
    (
        "registry.model_registered",
        &["model", "version", "run"],
        &["artifact_sha256"],
    ),
    (
        "registry.promotion_requested",
        &["model", "version"],
        &["to_stage"],
    ),
    (
        "registry.approval_granted",
        &["model", "version"],
        &["approver", "reason"],
    ),
    (
        "registry.approval_rejected",
        &["model", "version"],
        &["approver", "reason"],
    ),
    (
        "registry.stage_changed",
        &["model", "version"],
        &["from_stage", "to_stage"],
    ),
    (
        "registry.deployment_target_assigned",
        &["model", "version"],
        &["target"],
    ),
    (
        "operations.deployed",
        &["deployment", "model", "version"],
        &["environment"],
    ),
    ("operations.traffic_routed", &["deployment"], &["split"]),
    (
        "operations.rolled_back",
        &["deployment"],
        &["from_version", "to_version", "trigger"],
    ),
    ("operations.config_changed", &["deployment"], &["changes"]),
    (
        "prediction.served",
        &["model", "version", "request"],
        &["inputs", "outputs"],
    ),
    ("governance.policy_changed", &[], &["policy", "old", "new"]),
    (
        "governance.access_changed",
        &[],
        &["principal", "role", "change"],
    ),
    ("governance.audit_accessed", &[], &[]),
    ("governance.hold_created", &[], &["hold", "reason", "scope"]),
    ("governance.hold_released", &[], &["hold", "reason"]),
    (
        "governance.payload_erased",
        &[],
        &["reason", "criteria", "events"],
    ),
    ("governance.payload_expired", &[], &["rule", "events"]),
];

pub const ID: &str = "6f9619ff-8b86-d011-b42d-00c04fc964ff";
pub const TIME: &str = "2026-01-31T12:00:00Z";
/// `date -u -d 2026-01-31T12:00:00Z +%s`, in nanoseconds.
pub const TIME_NS: i64 = 1_769_860_800_000_000_000;
pub const SHA: &str = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";

pub fn subject_value(name: &str) -> Value {
    match name {
        "model" => json!("credit-risk"),
        "version" => json!(7), // integers are accepted as identifiers
        "dataset" => json!("loans"),
        "dataset_version" => json!("2026-01-31"),
        "run" => json!("run-17"),
        "pipeline_run" => json!("pipe-3"),
        "deployment" => json!("credit-risk-prod"),
        "request" => json!("req-0001"),
        other => panic!("no example subject {other}"),
    }
}

pub fn attribute_value(kind: &str, name: &str) -> Value {
    match name {
        "source" => json!("s3://bucket/raw/loans.parquet"),
        "inputs" if kind.starts_with("data.") => json!(["s3://bucket/raw/loans.parquet"]),
        "inputs" => json!({"income": 52000, "age": 41}),
        "transformation" => json!({"op": "dedupe", "keys": ["id"]}),
        "content_sha256" | "artifact_sha256" => json!(SHA),
        "hyperparameters" => json!({"lr": 0.01, "depth": 6}),
        "random_seed" => json!(42),
        "datasets" => json!(["loans@2026-01-31", "bureau@3"]),
        "step" => json!(1000),
        "metrics" => json!({"auc": 0.91}),
        "status" => json!("succeeded"),
        "duration_s" => json!(3600.5),
        "compute" => json!({"gpu_hours": 8}),
        "to_stage" => json!("production"),
        "from_stage" => json!("staging"),
        "approver" => json!({"id": "bob", "type": "user"}),
        "reason" => json!("meets the validation bar"),
        "target" => json!("k8s://prod/credit-risk"),
        "environment" => json!("production"),
        "split" => json!({"7": 90, "8": 10}),
        "from_version" => json!(8),
        "to_version" => json!("7"),
        "trigger" => json!("error rate above 2%"),
        "changes" => json!({"timeout_ms": {"old": 100, "new": 200}}),
        "outputs" => json!({"score": 0.12}),
        "policy" => json!("retention"),
        "hold" => json!("hold-1f2e3d4c"),
        "scope" => json!({"model": "credit-risk"}),
        "criteria" => json!({"subject": "request=req-0001"}),
        "events" => json!([ID]),
        "rule" => json!("stage=prediction risk=low expire=365d"),
        "old" => json!({"days": 30}),
        "new" => json!({"days": 90}),
        "principal" => json!("carol"),
        "role" => json!("auditor"),
        "change" => json!("granted"),
        other => panic!("no example attribute {other}"),
    }
}

/// A complete valid event of `kind`, as a JSON object.
pub fn example(kind: &str, subjects: &[&str], attrs: &[&str]) -> Map<String, Value> {
    let mut e = Map::new();
    e.insert("id".into(), json!(ID));
    e.insert("time".into(), json!(TIME));
    e.insert("kind".into(), json!(kind));
    e.insert(
        "actor".into(),
        json!({"id": "pipeline@ci", "type": "service"}),
    );
    let mut s = Map::new();
    for name in subjects {
        s.insert((*name).into(), subject_value(name));
    }
    e.insert("subject".into(), Value::Object(s));
    let mut a = Map::new();
    for name in attrs {
        a.insert((*name).into(), attribute_value(kind, name));
    }
    e.insert("attributes".into(), Value::Object(a));
    e
}

pub fn examples() -> Vec<(&'static str, Map<String, Value>)> {
    let mut out: Vec<_> = SPEC
        .iter()
        .map(|(k, s, a)| (*k, example(k, s, a)))
        .collect();
    let mut custom = example("x.foo", &["model", "pipeline_run"], &[]);
    custom.insert(
        "attributes".into(),
        json!({"anything": [1, 2, {"goes": null}]}),
    );
    out.push(("x.foo", custom));
    out
}
