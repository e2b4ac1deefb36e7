//! Typed events: one constructor per kind of the v1 catalogue (the table in `docs/API.md` and the design brief).
//!
//! **Invariant:** every constructor takes each field its kind requires (subject and
//! attributes), so an [`Event`] built here is never missing one. Optional fields are set with
//! the builder methods ([`Event::confidence`], [`Event::attribute`], ...). Values the server
//! checks beyond presence (a URI's scheme, a traffic split summing to 100) are still checked
//! by the server; an event it refuses is counted as `rejected`, never retried forever.
//!
//! The actor is optional here: the [`AuditLogger`](crate::AuditLogger) fills in its default
//! actor (required when it is built), so an event on the wire always has one.

use serde_json::{Map, Value};
use std::borrow::Cow;
use std::time::SystemTime;

/// A JSON object (attribute maps such as hyperparameters, metrics and compute).
pub type Object = Map<String, Value>;

/// Who did it: a user or a service.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Actor {
    pub(crate) id: String,
    pub(crate) kind: ActorKind,
}

/// The type of an [`Actor`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ActorKind {
    /// A person.
    User,
    /// A program.
    Service,
}

impl Actor {
    /// A person, by a stable identity (an email, an employee id).
    pub fn user(id: impl Into<String>) -> Actor {
        Actor {
            id: id.into(),
            kind: ActorKind::User,
        }
    }

    /// A program, by its name.
    pub fn service(id: impl Into<String>) -> Actor {
        Actor {
            id: id.into(),
            kind: ActorKind::Service,
        }
    }
}

/// What an event is about. Each field is one of the catalogue's subject links.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[allow(missing_docs)]
pub struct Subject {
    pub model: Option<String>,
    pub version: Option<String>,
    pub dataset: Option<String>,
    pub dataset_version: Option<String>,
    pub run: Option<String>,
    pub pipeline_run: Option<String>,
    pub deployment: Option<String>,
    pub request: Option<String>,
}

/// The typed part of a `prediction.served` event (sent in the protobuf's typed fields).
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Prediction {
    pub(crate) inputs: Value,
    pub(crate) outputs: Value,
    pub(crate) confidence: Option<f64>,
    pub(crate) latency_ms: Option<f64>,
    pub(crate) sample_rate: Option<f64>,
}

/// One audit event, ready to hand to [`AuditLogger::log`](crate::AuditLogger::log).
#[derive(Clone, Debug, PartialEq)]
pub struct Event {
    pub(crate) id: Option<uuid::Uuid>,
    pub(crate) time: Option<SystemTime>,
    pub(crate) kind: Cow<'static, str>,
    pub(crate) actor: Option<Actor>,
    pub(crate) subject: Subject,
    pub(crate) attributes: Object,
    pub(crate) prediction: Option<Prediction>,
}

/// A SHA-256 digest, sent as 64 lowercase hex digits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Sha256(pub [u8; 32]);

impl Sha256 {
    /// The digest of `bytes`.
    pub fn of(bytes: &[u8]) -> Sha256 {
        use sha2::Digest;
        Sha256(sha2::Sha256::digest(bytes).into())
    }

    fn hex(&self) -> String {
        self.0.iter().map(|b| format!("{b:02x}")).collect()
    }
}

fn text(s: impl Into<String>) -> Value {
    Value::String(s.into())
}

impl Event {
    fn new(kind: impl Into<Cow<'static, str>>) -> Event {
        Event {
            id: None,
            time: None,
            kind: kind.into(),
            actor: None,
            subject: Subject::default(),
            attributes: Object::new(),
            prediction: None,
        }
    }

    fn with(mut self, key: &str, value: Value) -> Event {
        self.attributes.insert(key.to_owned(), value);
        self
    }

    fn model_version(
        kind: &'static str,
        model: impl Into<String>,
        version: impl Into<String>,
    ) -> Event {
        let mut e = Event::new(kind);
        e.subject.model = Some(model.into());
        e.subject.version = Some(version.into());
        e
    }

    fn on_dataset(kind: &'static str, dataset: impl Into<String>) -> Event {
        let mut e = Event::new(kind);
        e.subject.dataset = Some(dataset.into());
        e
    }

    fn on_run(kind: &'static str, run: impl Into<String>) -> Event {
        let mut e = Event::new(kind);
        e.subject.run = Some(run.into());
        e
    }

    fn on_deployment(kind: &'static str, deployment: impl Into<String>) -> Event {
        let mut e = Event::new(kind);
        e.subject.deployment = Some(deployment.into());
        e
    }

    // --- data ---

    /// `data.source_accessed`: a dataset was read from `source` (a URI such as `s3://…`).
    pub fn source_accessed(dataset: impl Into<String>, source: impl Into<String>) -> Event {
        Event::on_dataset("data.source_accessed", dataset).with("source", text(source))
    }

    /// `data.transformation_applied`: `transformation` turned `inputs` into the dataset.
    /// Filter criteria, if any, go in [`Event::attribute`]`("filter", …)`.
    pub fn transformation_applied<I: Into<String>>(
        dataset: impl Into<String>,
        inputs: impl IntoIterator<Item = I>,
        transformation: impl Into<Value>,
    ) -> Event {
        let inputs = inputs.into_iter().map(|i| text(i)).collect();
        Event::on_dataset("data.transformation_applied", dataset)
            .with("inputs", Value::Array(inputs))
            .with("transformation", transformation.into())
    }

    /// `data.snapshot_created`: an immutable version of a dataset, with its content digest.
    pub fn snapshot_created(
        dataset: impl Into<String>,
        dataset_version: impl Into<String>,
        content: Sha256,
    ) -> Event {
        let mut e = Event::on_dataset("data.snapshot_created", dataset);
        e.subject.dataset_version = Some(dataset_version.into());
        e.with("content_sha256", text(content.hex()))
    }

    // --- training ---

    /// `training.run_started`; `datasets` are `dataset@version` references.
    pub fn run_started<D: Into<String>>(
        run: impl Into<String>,
        model: impl Into<String>,
        hyperparameters: Object,
        random_seed: i64,
        datasets: impl IntoIterator<Item = D>,
    ) -> Event {
        let mut e = Event::on_run("training.run_started", run);
        e.subject.model = Some(model.into());
        let datasets = datasets.into_iter().map(|d| text(d)).collect();
        e.with("hyperparameters", Value::Object(hyperparameters))
            .with("random_seed", random_seed.into())
            .with("datasets", Value::Array(datasets))
    }

    /// `training.checkpoint_evaluated`: metrics at a training step.
    pub fn checkpoint_evaluated(run: impl Into<String>, step: u64, metrics: Object) -> Event {
        Event::on_run("training.checkpoint_evaluated", run)
            .with("step", step.into())
            .with("metrics", Value::Object(metrics))
    }

    /// `training.run_completed`: `status` (e.g. `succeeded`), wall time and resources consumed.
    pub fn run_completed(
        run: impl Into<String>,
        status: impl Into<String>,
        duration_s: f64,
        compute: Object,
    ) -> Event {
        let duration =
            serde_json::Number::from_f64(duration_s.max(0.0)).map_or(Value::from(0), Value::Number);
        Event::on_run("training.run_completed", run)
            .with("status", text(status))
            .with("duration_s", duration)
            .with("compute", Value::Object(compute))
    }

    // --- registry ---

    /// `registry.model_registered`: `model@version`, produced by `run`, with its artifact digest.
    pub fn model_registered(
        model: impl Into<String>,
        version: impl Into<String>,
        run: impl Into<String>,
        artifact: Sha256,
    ) -> Event {
        let mut e = Event::model_version("registry.model_registered", model, version);
        e.subject.run = Some(run.into());
        e.with("artifact_sha256", text(artifact.hex()))
    }

    /// `registry.promotion_requested` to a stage (`staging`, `production`, …).
    pub fn promotion_requested(
        model: impl Into<String>,
        version: impl Into<String>,
        to_stage: impl Into<String>,
    ) -> Event {
        Event::model_version("registry.promotion_requested", model, version)
            .with("to_stage", text(to_stage))
    }

    /// `registry.approval_granted` by a named approver, with the reason.
    pub fn approval_granted(
        model: impl Into<String>,
        version: impl Into<String>,
        approver: impl Into<String>,
        reason: impl Into<String>,
    ) -> Event {
        Event::model_version("registry.approval_granted", model, version)
            .with("approver", text(approver))
            .with("reason", text(reason))
    }

    /// `registry.approval_rejected` by a named approver, with the reason.
    pub fn approval_rejected(
        model: impl Into<String>,
        version: impl Into<String>,
        approver: impl Into<String>,
        reason: impl Into<String>,
    ) -> Event {
        Event::model_version("registry.approval_rejected", model, version)
            .with("approver", text(approver))
            .with("reason", text(reason))
    }

    /// `registry.stage_changed` from one stage to another.
    pub fn stage_changed(
        model: impl Into<String>,
        version: impl Into<String>,
        from_stage: impl Into<String>,
        to_stage: impl Into<String>,
    ) -> Event {
        Event::model_version("registry.stage_changed", model, version)
            .with("from_stage", text(from_stage))
            .with("to_stage", text(to_stage))
    }

    /// `registry.deployment_target_assigned`: where this version is to run.
    pub fn deployment_target_assigned(
        model: impl Into<String>,
        version: impl Into<String>,
        target: impl Into<String>,
    ) -> Event {
        Event::model_version("registry.deployment_target_assigned", model, version)
            .with("target", text(target))
    }

    // --- operations ---

    /// `operations.deployed`: `model@version` went live as `deployment` in `environment`.
    pub fn deployed(
        deployment: impl Into<String>,
        model: impl Into<String>,
        version: impl Into<String>,
        environment: impl Into<String>,
    ) -> Event {
        let mut e = Event::model_version("operations.deployed", model, version);
        e.subject.deployment = Some(deployment.into());
        e.with("environment", text(environment))
    }

    /// `operations.traffic_routed`: version → percent of traffic (the percents must sum to 100).
    pub fn traffic_routed<V: Into<String>>(
        deployment: impl Into<String>,
        split: impl IntoIterator<Item = (V, f64)>,
    ) -> Event {
        let split: Object = split
            .into_iter()
            .map(|(v, p)| {
                (
                    v.into(),
                    serde_json::Number::from_f64(p).map_or(Value::Null, Value::Number),
                )
            })
            .collect();
        Event::on_deployment("operations.traffic_routed", deployment)
            .with("split", Value::Object(split))
    }

    /// `operations.rolled_back` from one version to another, and what triggered it.
    pub fn rolled_back(
        deployment: impl Into<String>,
        from_version: impl Into<String>,
        to_version: impl Into<String>,
        trigger: impl Into<String>,
    ) -> Event {
        Event::on_deployment("operations.rolled_back", deployment)
            .with("from_version", text(from_version))
            .with("to_version", text(to_version))
            .with("trigger", text(trigger))
    }

    /// `operations.config_changed`: one `(key, old, new)` per change (at least one).
    pub fn config_changed<K: Into<String>>(
        deployment: impl Into<String>,
        first: (K, Value, Value),
        more: impl IntoIterator<Item = (K, Value, Value)>,
    ) -> Event {
        let changes: Object = std::iter::once(first)
            .chain(more)
            .map(|(k, old, new)| (k.into(), serde_json::json!({ "old": old, "new": new })))
            .collect();
        Event::on_deployment("operations.config_changed", deployment)
            .with("changes", Value::Object(changes))
    }

    // --- prediction ---

    /// `prediction.served`: one prediction of `model@version` for `request`, with its inputs
    /// and outputs. Confidence and latency are optional; the sample rate is set by the logger's
    /// sampling policy.
    pub fn prediction_served(
        model: impl Into<String>,
        version: impl Into<String>,
        request: impl Into<String>,
        inputs: Value,
        outputs: Value,
    ) -> Event {
        let mut e = Event::model_version("prediction.served", model, version);
        e.subject.request = Some(request.into());
        e.prediction = Some(Prediction {
            inputs,
            outputs,
            confidence: None,
            latency_ms: None,
            sample_rate: None,
        });
        e
    }

    // --- governance ---

    /// `governance.policy_changed`: a named policy went from `old` to `new`. Never sampled.
    pub fn policy_changed(policy: impl Into<String>, old: Value, new: Value) -> Event {
        Event::new("governance.policy_changed")
            .with("policy", text(policy))
            .with("old", old)
            .with("new", new)
    }

    // `governance.access_changed` and `governance.audit_accessed` have no constructor: the
    // server writes them alone (it records token changes and reads of the trail itself), and
    // refuses them from a client.

    /// A custom `x.<name>` event: nothing is required.
    pub fn custom(name: &str) -> Event {
        Event::new(format!("x.{}", name.strip_prefix("x.").unwrap_or(name)))
    }

    // --- optional fields ---

    /// The idempotency key. Without one the logger assigns a fresh UUID before the first
    /// send, and keeps it through every retry and the spool.
    pub fn id(mut self, id: uuid::Uuid) -> Event {
        self.id = Some(id);
        self
    }

    /// When it happened. Without one, [`AuditLogger::log`](crate::AuditLogger::log) stamps
    /// the time of the call (not the time it is sent).
    pub fn time(mut self, time: SystemTime) -> Event {
        self.time = Some(time);
        self
    }

    /// Who did it, instead of the logger's default actor.
    pub fn actor(mut self, actor: Actor) -> Event {
        self.actor = Some(actor);
        self
    }

    /// Sets or replaces any attribute (kind-specific extras are kept by the server).
    pub fn attribute(self, key: &str, value: impl Into<Value>) -> Event {
        self.with(key, value.into())
    }

    /// Sets one more subject link (e.g. the `pipeline_run` behind a dataset).
    pub fn subject(mut self, f: impl FnOnce(&mut Subject)) -> Event {
        f(&mut self.subject);
        self
    }

    /// A prediction's confidence (≥ 0). Ignored on other kinds.
    pub fn confidence(mut self, confidence: f64) -> Event {
        if let Some(p) = &mut self.prediction {
            p.confidence = Some(confidence);
        }
        self
    }

    /// A prediction's latency in milliseconds (≥ 0). Ignored on other kinds.
    pub fn latency_ms(mut self, latency_ms: f64) -> Event {
        if let Some(p) = &mut self.prediction {
            p.latency_ms = Some(latency_ms);
        }
        self
    }

    /// The event's kind, e.g. `prediction.served`.
    pub fn kind(&self) -> &str {
        &self.kind
    }

    /// The subject links.
    pub fn subjects(&self) -> &Subject {
        &self.subject
    }
}
