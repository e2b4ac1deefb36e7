//! MLflow: registry webhooks (MLflow 3.3 and later) and the records of its REST API.
//!
//! **Webhooks.** MLflow POSTs `{"entity", "action", "timestamp", "data"}` with three headers:
//! `X-MLflow-Delivery-Id` (a UUID, the same on every retry), `X-MLflow-Timestamp` (Unix
//! seconds) and `X-MLflow-Signature` (`v1,` + base64 HMAC-SHA256 over
//! `"{delivery id}.{timestamp}.{body}"` with the webhook's secret), checked by
//! [`verify_signature`]. Each delivery becomes one event ([`webhook_event`]) whose id is
//! derived from the delivery id, so a retry is stored once.
//!
//! | MLflow event | kind |
//! |---|---|
//! | `model_version.created` | `registry.model_registered` (`x.mlflow.model_version.created` without a run) |
//! | `model_version_alias.created` | `registry.stage_changed` (`to_stage` = the alias) |
//! | `model_version_alias.deleted` | `registry.stage_changed` (`from_stage` = the alias, `to_stage` = `none`) when the version is known, else `x.mlflow.model_version_alias.deleted` |
//! | `registered_model.created`, `model_version_tag.set/deleted`, `prompt*.*` | `x.mlflow.<entity>.<action>` (no catalogue kind records them) |
//!
//! MLflow's payloads name no actor: the caller passes the one it found ([`WebhookActor`]).

use crate::{custom_kind, malformed, Actor, Draft, TranslateError};
use base64::Engine;
use hmac::{Hmac, Mac};
use serde_json::{json, Map, Value};
use std::collections::BTreeMap;

/// The actor of MLflow's own actions when no person is known.
pub const SERVICE_ACTOR: &str = "mlflow";

/// How far a webhook's timestamp may be from now, either way.
pub const MAX_SKEW_S: i64 = 300;

/// Why a webhook delivery is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("the {0} header is missing")]
    Missing(&'static str),
    #[error("the X-MLflow-Timestamp header is not a Unix time in seconds")]
    BadTimestamp,
    #[error("the delivery is {age_s} s from now; at most {MAX_SKEW_S} s are accepted (a replay, or a clock out of step)")]
    Stale { age_s: i64 },
    #[error("the X-MLflow-Signature does not match the body (wrong secret, or a modified body)")]
    Mismatch,
}

/// Checks a delivery's signature and age. `now_s` is the receiver's Unix time.
pub fn verify_signature(
    secret: &[u8],
    delivery_id: Option<&str>,
    timestamp: Option<&str>,
    signature: Option<&str>,
    body: &[u8],
    now_s: i64,
) -> Result<(), SignatureError> {
    let delivery_id = delivery_id.ok_or(SignatureError::Missing("X-MLflow-Delivery-Id"))?;
    let timestamp = timestamp.ok_or(SignatureError::Missing("X-MLflow-Timestamp"))?;
    let signature = signature.ok_or(SignatureError::Missing("X-MLflow-Signature"))?;
    let mut mac =
        Hmac::<sha2::Sha256>::new_from_slice(secret).map_err(|_| SignatureError::Mismatch)?;
    mac.update(delivery_id.as_bytes());
    mac.update(b".");
    mac.update(timestamp.as_bytes());
    mac.update(b".");
    mac.update(body);
    // Several signatures may be sent, space-separated (`v1,<sig> v1,<sig>`), during a
    // secret's rotation; any one that matches is enough.
    let matched = signature.split_whitespace().any(|candidate| {
        candidate
            .strip_prefix("v1,")
            .and_then(|b64| base64::engine::general_purpose::STANDARD.decode(b64).ok())
            .is_some_and(|sig| mac.clone().verify_slice(&sig).is_ok())
    });
    if !matched {
        return Err(SignatureError::Mismatch);
    }
    let sent: i64 = timestamp
        .trim()
        .parse()
        .map_err(|_| SignatureError::BadTimestamp)?;
    let age_s = now_s.saturating_sub(sent);
    if age_s.abs() > MAX_SKEW_S {
        return Err(SignatureError::Stale { age_s });
    }
    Ok(())
}

/// Who did what a webhook reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WebhookActor {
    /// A person the MLflow REST API named (`model-versions/get` → `user_id`).
    Looked(String),
    /// Nobody is named: the MLflow service acted, the human is unknown.
    Unknown,
}

/// A parsed delivery body.
#[derive(Debug, Clone, PartialEq)]
pub struct Delivery {
    pub entity: String,
    pub action: String,
    pub timestamp: Option<String>,
    pub data: Value,
    pub body: Value,
}

impl Delivery {
    /// The model version whose creator the REST API can name (`model_version.created`
    /// only: the creator of a version did not necessarily set its tags or aliases).
    pub fn created_version(&self) -> Option<(String, String)> {
        (self.entity == "model_version" && self.action == "created")
            .then(|| {
                Some((
                    crate::ident(&self.data, "name")?,
                    crate::ident(&self.data, "version")?,
                ))
            })
            .flatten()
    }

    /// The model and alias of an alias deletion (whose body does not name the version).
    pub fn deleted_alias(&self) -> Option<(String, String)> {
        (self.entity == "model_version_alias" && self.action == "deleted")
            .then(|| {
                Some((
                    crate::ident(&self.data, "name")?,
                    crate::ident(&self.data, "alias")?,
                ))
            })
            .flatten()
    }
}

/// Parses a delivery body.
pub fn parse_delivery(body: &[u8]) -> Result<Delivery, TranslateError> {
    let value = crate::parse_json("MLflow webhook", body)?;
    let field = |name: &str| -> Result<String, TranslateError> {
        crate::text(&value, name)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .ok_or_else(|| malformed(format!("the MLflow webhook body has no {name}")))
    };
    let entity = field("entity")?;
    let action = field("action")?;
    let data = value
        .get("data")
        .filter(|d| d.is_object())
        .cloned()
        .ok_or_else(|| malformed("the MLflow webhook body has no data object"))?;
    Ok(Delivery {
        entity,
        action,
        timestamp: crate::text(&value, "timestamp").map(str::to_owned),
        data,
        body: value,
    })
}

/// The event of one delivery. `alias_version` is the version an alias pointed to before a
/// deletion, when the caller knows it (from the log's own last assignment).
pub fn webhook_event(
    delivery: &Delivery,
    delivery_id: &str,
    actor: &WebhookActor,
    alias_version: Option<&str>,
) -> Result<Value, TranslateError> {
    let data = &delivery.data;
    let name = crate::ident(data, "name");
    let version = crate::ident(data, "version").or_else(|| alias_version.map(str::to_owned));
    let (who, human) = match actor {
        WebhookActor::Looked(user) => (Actor::user(user.clone()), None),
        WebhookActor::Unknown => (Actor::service(SERVICE_ACTOR), Some("unknown")),
    };
    let kind = match (delivery.entity.as_str(), delivery.action.as_str()) {
        ("model_version", "created")
            if data
                .get("run_id")
                .and_then(Value::as_str)
                .is_some_and(|r| !r.is_empty()) =>
        {
            "registry.model_registered".to_owned()
        }
        ("model_version_alias", "created" | "deleted") if name.is_some() && version.is_some() => {
            "registry.stage_changed".to_owned()
        }
        (entity, action) => custom_kind("mlflow", &format!("{entity}.{action}")),
    };
    // A creation is one fact however it reaches the log: its id is the one `mlaudit import
    // mlflow` derives for the same object, so a backfill after a webhook (or the reverse)
    // records it once. Every other delivery is keyed by its delivery id (an alias may be set
    // to the same version twice).
    let (source, key) = match (
        delivery.entity.as_str(),
        delivery.action.as_str(),
        &name,
        &version,
    ) {
        ("registered_model", "created", Some(n), _) => ("mlflow", format!("model/{n}/created")),
        ("model_version", "created", Some(n), Some(v)) => {
            ("mlflow", format!("model/{n}/version/{v}/created"))
        }
        _ => ("mlflow-webhook", delivery_id.to_owned()),
    };
    let mut draft = Draft::new(source, &key, kind.clone(), who)
        .time(delivery.timestamp.clone())
        .attr(
            "mlflow_event",
            format!("{}.{}", delivery.entity, delivery.action),
        )
        .attr("delivery_id", delivery_id)
        .attr("mlflow", delivery.body.clone());
    if let Some(h) = human {
        draft = draft.attr("human_actor", h);
    }
    if let Some(n) = &name {
        draft = draft.subject("model", n.clone());
    }
    if let Some(v) = &version {
        draft = draft.subject("version", v.clone());
    }
    let alias = crate::text(data, "alias").unwrap_or("").to_owned();
    draft = match (kind.as_str(), delivery.action.as_str()) {
        ("registry.model_registered", _) => draft
            .subject("run", crate::text(data, "run_id").unwrap_or(""))
            .attr("source", data.get("source").cloned().unwrap_or(Value::Null))
            .unreported("artifact_sha256"),
        ("registry.stage_changed", "created") => draft
            .unreported("from_stage")
            .attr("to_stage", alias)
            .attr("alias", true),
        ("registry.stage_changed", _) => draft
            .attr("from_stage", alias)
            .attr("to_stage", "none")
            .attr("alias", true)
            .attr(
                "version_source",
                if crate::ident(data, "version").is_some() {
                    "webhook"
                } else {
                    "the log's last assignment of this alias"
                },
            ),
        _ => draft,
    };
    Ok(draft.build())
}

/// MLflow REST records (API 2.0) → events, for `mlaudit import mlflow`. Ids derive from
/// MLflow's own ids, so a second import writes nothing new.
pub mod rest {
    use super::*;

    /// The person MLflow names (`user_id`), or the service when it names nobody (an empty
    /// id, or `unknown`, which MLflow records for runs created without a user).
    fn actor_of(user: Option<&str>) -> (Actor, bool) {
        match user.filter(|u| !u.is_empty() && *u != "unknown") {
            Some(u) => (Actor::user(u), true),
            None => (Actor::service(SERVICE_ACTOR), false),
        }
    }

    fn key_values(list: Option<&Value>) -> Map<String, Value> {
        list.and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|kv| Some((crate::text(kv, "key")?.to_owned(), kv.get("value")?.clone())))
            .collect()
    }

    /// A run's events: `training.run_started`, one `training.checkpoint_evaluated` per step
    /// that logged metrics, and `training.run_completed` once it ended. `model` is the
    /// registered model a version of which came from this run, else the experiment's name
    /// (`model_source` says which). `history` maps a metric key to its `metrics/get-history`
    /// points.
    pub fn run_events(
        run: &Value,
        experiment: &str,
        model: Option<&str>,
        history: &BTreeMap<String, Vec<Value>>,
    ) -> Result<Vec<Value>, TranslateError> {
        let info = run
            .get("info")
            .ok_or_else(|| malformed("an MLflow run has no info"))?;
        let id = crate::text(info, "run_id")
            .filter(|s| !s.is_empty())
            .ok_or_else(|| malformed("an MLflow run has no run_id"))?;
        let data = run.get("data").cloned().unwrap_or(json!({}));
        let params = key_values(data.get("params"));
        let tags = key_values(data.get("tags"));
        let (actor, known) = actor_of(crate::text(info, "user_id"));
        let start = info.get("start_time").and_then(Value::as_i64);
        let end = info.get("end_time").and_then(Value::as_i64);
        // MLflow's dataset digest is its version; a dataset without one is listed apart.
        let mut datasets: Vec<String> = Vec::new();
        let mut unversioned: Vec<String> = Vec::new();
        for d in run
            .pointer("/inputs/dataset_inputs")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let Some(ds) = d.get("dataset") else { continue };
            let Some(name) = crate::text(ds, "name").filter(|n| !n.is_empty()) else {
                continue;
            };
            match crate::text(ds, "digest") {
                Some(digest) if !digest.is_empty() && !name.contains('@') => {
                    datasets.push(format!("{name}@{digest}"))
                }
                _ => unversioned.push(name.to_owned()),
            }
        }
        let mut started = Draft::new(
            "mlflow",
            &format!("run/{id}/started"),
            "training.run_started",
            actor.clone(),
        )
        .time(start.and_then(crate::millis_to_time))
        .subject("run", id)
        .subject("model", model.unwrap_or(experiment))
        .attr(
            "model_source",
            if model.is_some() {
                "registered model"
            } else {
                "experiment"
            },
        )
        .attr("experiment", experiment)
        .attr("hyperparameters", Value::Object(params.clone()))
        .attr("datasets", json!(datasets))
        .attr("tags", Value::Object(tags))
        .attr("mlflow_run", info.clone());
        if !unversioned.is_empty() {
            started = started.attr("unversioned_datasets", json!(unversioned));
        }
        let human = |d: Draft| {
            if known {
                d
            } else {
                d.attr("human_actor", "unknown")
            }
        };
        started = human(started);
        started = match crate::seed_param(&params) {
            Some(s) => started.attr("random_seed", s),
            None => started.unreported("random_seed"),
        };
        let mut out = vec![started.build()];
        let steps = crate::by_step(history.iter().flat_map(|(key, points)| {
            points.iter().filter_map(move |p| {
                let step = p.get("step").and_then(Value::as_i64).unwrap_or(0);
                let at = p.get("timestamp").and_then(Value::as_i64).unwrap_or(0);
                Some((step, key.clone(), p.get("value")?, at))
            })
        }));
        for (step, (metrics, at)) in steps {
            out.push(
                Draft::new(
                    "mlflow",
                    &format!("run/{id}/step/{step}"),
                    "training.checkpoint_evaluated",
                    actor.clone(),
                )
                .time(crate::millis_to_time(at))
                .subject("run", id)
                .attr("step", step)
                .attr("metrics", Value::Object(metrics))
                .pipe(human)
                .build(),
            );
        }
        let status = crate::text(info, "status").unwrap_or("");
        if matches!(status, "FINISHED" | "FAILED" | "KILLED") {
            let mut done = Draft::new(
                "mlflow",
                &format!("run/{id}/completed"),
                "training.run_completed",
                actor,
            )
            .time(end.and_then(crate::millis_to_time))
            .subject("run", id)
            .attr("status", crate::run_status(status))
            .attr("source_status", status)
            .unreported("compute");
            done = match (start, end) {
                (Some(s), Some(e)) if e >= s => done.attr("duration_s", (e - s) as f64 / 1000.0),
                _ => done.unreported("duration_s"),
            };
            out.push(human(done).build());
        }
        Ok(out)
    }

    /// A registered model's events: its creation, and each alias it holds now (MLflow keeps
    /// no history of aliases: an alias is recorded as observed by the import).
    pub fn registered_model_events(model: &Value) -> Result<Vec<Value>, TranslateError> {
        let name = crate::text(model, "name")
            .filter(|s| !s.is_empty())
            .ok_or_else(|| malformed("an MLflow registered model has no name"))?;
        let mut out = vec![Draft::new(
            "mlflow",
            &format!("model/{name}/created"),
            custom_kind("mlflow", "registered_model.created"),
            Actor::service(SERVICE_ACTOR),
        )
        .time(
            model
                .get("creation_timestamp")
                .and_then(Value::as_i64)
                .and_then(crate::millis_to_time),
        )
        .subject("model", name)
        .attr("human_actor", "unknown")
        .attr("mlflow", model.clone())
        .build()];
        for alias in model
            .get("aliases")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let (Some(a), Some(v)) = (crate::text(alias, "alias"), crate::ident(alias, "version"))
            else {
                continue;
            };
            out.push(
                Draft::new(
                    "mlflow",
                    &format!("model/{name}/alias/{a}/{v}"),
                    "registry.stage_changed",
                    Actor::service(SERVICE_ACTOR),
                )
                .subject("model", name)
                .subject("version", v)
                .unreported("from_stage")
                .attr("to_stage", a)
                .attr("alias", true)
                .attr("observed_by_import", true)
                .attr("human_actor", "unknown")
                .build(),
            );
        }
        Ok(out)
    }

    /// A model version's `registry.model_registered` (or `x.mlflow.model_version.created`
    /// when it names no run).
    pub fn model_version_event(version: &Value) -> Result<Value, TranslateError> {
        let name = crate::ident(version, "name")
            .ok_or_else(|| malformed("an MLflow model version has no name"))?;
        let v = crate::ident(version, "version")
            .ok_or_else(|| malformed("an MLflow model version has no version"))?;
        let run = crate::text(version, "run_id").unwrap_or("");
        let (actor, known) = actor_of(crate::text(version, "user_id"));
        let kind = if run.is_empty() {
            custom_kind("mlflow", "model_version.created")
        } else {
            "registry.model_registered".into()
        };
        let mut d = Draft::new(
            "mlflow",
            &format!("model/{name}/version/{v}/created"),
            kind.clone(),
            actor,
        )
        .time(
            version
                .get("creation_timestamp")
                .and_then(Value::as_i64)
                .and_then(crate::millis_to_time),
        )
        .subject("model", name)
        .subject("version", v)
        .subject("run", run)
        .attr(
            "source",
            version.get("source").cloned().unwrap_or(Value::Null),
        )
        .attr("mlflow", version.clone());
        if !known {
            d = d.attr("human_actor", "unknown");
        }
        if kind == "registry.model_registered" {
            d = d.unreported("artifact_sha256");
        }
        Ok(d.build())
    }
}
