//! OpenLineage (spec 2-0-2) RunEvent, JobEvent and DatasetEvent → data and training kinds.
//!
//! * Every OpenLineage event becomes one *record* event that keeps it whole: a training job's
//!   RunEvent → `training.run_started` (START) or `training.run_completed` (COMPLETE, FAIL,
//!   ABORT); any other RunEvent → `x.openlineage.run_event`; a JobEvent →
//!   `x.openlineage.job_event`; a DatasetEvent → `data.snapshot_created` when it names a
//!   dataset version, else `x.openlineage.dataset_event`.
//! * Each input dataset → `data.source_accessed`; each output → `data.transformation_applied`
//!   (its inputs, and the job as the transformation), and `data.snapshot_created` when the
//!   output carries a `version` facet. These name their record event in
//!   `attributes.openlineage_event`.
//! * A dataset is `<namespace>/<name>`; its version is the `version` facet's
//!   `datasetVersion`. A training run lists its inputs as `dataset@version` in
//!   `attributes.datasets`, which is what lineage follows from a model to its data.
//! * A job is a training job when its `jobType` facet says `TRAINING` (or `MODEL_TRAINING`),
//!   or its name matches one of the configured [`Options::training_jobs`] patterns.

use crate::{custom_kind, malformed, sha256_hex, Actor, Draft, TranslateError};
use serde_json::{json, Value};

/// How OpenLineage events are read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    /// Job names (`namespace/name` or `name`) that train models; `*` at the end matches any
    /// suffix.
    pub training_jobs: Vec<String>,
    /// Most catalogue events one OpenLineage event may become (checked before any is built).
    pub max_events: usize,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            training_jobs: Vec::new(),
            max_events: 10_000,
        }
    }
}

/// Most (input, output) pairs one event may hold: each output's event lists every input.
pub const MAX_INPUT_OUTPUT_PAIRS: usize = 1_000_000;

impl Options {
    fn is_training(&self, job: &Value) -> bool {
        let facet = job
            .pointer("/facets/jobType/jobType")
            .and_then(Value::as_str)
            .unwrap_or("");
        if facet.eq_ignore_ascii_case("TRAINING") || facet.eq_ignore_ascii_case("MODEL_TRAINING") {
            return true;
        }
        let name = crate::text(job, "name").unwrap_or("");
        let full = format!("{}/{name}", crate::text(job, "namespace").unwrap_or(""));
        self.training_jobs
            .iter()
            .any(|p| match p.strip_suffix('*') {
                Some(prefix) => name.starts_with(prefix) || full.starts_with(prefix),
                None => name == p || full == *p,
            })
    }
}

/// What kind of OpenLineage event a body is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventType {
    Run,
    Job,
    Dataset,
}

/// The event's type: from `schemaURL`'s fragment when it names one, else from its shape
/// (`run` → RunEvent, `dataset` → DatasetEvent, `job` → JobEvent).
pub fn event_type(event: &Value) -> Result<EventType, TranslateError> {
    if !event.is_object() {
        return Err(malformed("an OpenLineage event must be a JSON object"));
    }
    if let Some(url) = crate::text(event, "schemaURL") {
        if let Some((_, fragment)) = url.rsplit_once("#/$defs/") {
            return match fragment {
                "RunEvent" => Ok(EventType::Run),
                "JobEvent" => Ok(EventType::Job),
                "DatasetEvent" => Ok(EventType::Dataset),
                other => Err(TranslateError::UnknownType(format!(
                    "unknown OpenLineage event type {:?} (schemaURL): RunEvent, JobEvent and DatasetEvent are taken",
                    other.chars().take(64).collect::<String>()
                ))),
            };
        }
    }
    if event.get("run").is_some() {
        Ok(EventType::Run)
    } else if event.get("dataset").is_some() {
        Ok(EventType::Dataset)
    } else if event.get("job").is_some() {
        Ok(EventType::Job)
    } else {
        Err(TranslateError::UnknownType(
            "unknown OpenLineage event: it has no run, job or dataset".into(),
        ))
    }
}

fn require_text<'a>(v: &'a Value, path: &str, what: &str) -> Result<&'a str, TranslateError> {
    v.pointer(path)
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .ok_or_else(|| malformed(format!("the OpenLineage {what} has no {}", &path[1..])))
}

/// `<namespace>/<name>` of a dataset or job.
fn qualified(v: &Value, what: &str) -> Result<String, TranslateError> {
    let ns = require_text(v, "/namespace", what)?;
    let name = require_text(v, "/name", what)?;
    Ok(format!("{}/{name}", ns.trim_end_matches('/')))
}

fn dataset_version(dataset: &Value) -> Option<String> {
    crate::ident(dataset.pointer("/facets/version")?, "datasetVersion")
}

/// A dataset's reference for `attributes.datasets`: `dataset@version`, or the dataset alone.
fn dataset_ref(dataset: &Value) -> Result<String, TranslateError> {
    let id = qualified(dataset, "dataset")?;
    Ok(match dataset_version(dataset) {
        Some(v) => format!("{id}@{v}"),
        None => id,
    })
}

/// A URI for `data.source_accessed`: the dataset id when its namespace has a scheme, else an
/// `openlineage:` URI.
fn source_uri(id: &str) -> String {
    let has_scheme = id.split_once(':').is_some_and(|(s, _)| {
        !s.is_empty()
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c))
    });
    if has_scheme {
        id.to_owned()
    } else {
        format!("openlineage:{id}")
    }
}

fn datasets<'a>(event: &'a Value, key: &str) -> Result<&'a [Value], TranslateError> {
    match event.get(key) {
        None | Some(Value::Null) => Ok(&[]),
        Some(Value::Array(items)) => Ok(items),
        Some(_) => Err(malformed(format!(
            "the OpenLineage event's {key} must be a list"
        ))),
    }
}

/// The catalogue events for one OpenLineage event (the record event first).
pub fn translate(event: &Value, options: &Options) -> Result<Vec<Value>, TranslateError> {
    let ty = event_type(event)?;
    let time = crate::text(event, "eventTime")
        .ok_or_else(|| malformed("the OpenLineage event has no eventTime"))?;
    if mlaudit_core::event::parse_time(time).is_none() {
        return Err(malformed(format!(
            "the OpenLineage eventTime {:?} is not an ISO 8601 time with an offset",
            time.chars().take(64).collect::<String>()
        )));
    }
    let time = Some(time.to_owned());
    let producer = crate::text(event, "producer").unwrap_or("openlineage");
    let actor = Actor::service(format!(
        "openlineage:{}",
        producer.chars().take(900).collect::<String>()
    ));
    let digest = sha256_hex(event.to_string().as_bytes());
    let record = match ty {
        EventType::Run => run_record(event, options, &digest, &actor, time.clone())?,
        EventType::Job => {
            let job = qualified(event.get("job").unwrap_or(&Value::Null), "job")?;
            Draft::new(
                "openlineage",
                &digest,
                "x.openlineage.job_event",
                actor.clone(),
            )
            .time(time.clone())
            .attr("job", job)
            .attr("openlineage", event.clone())
        }
        EventType::Dataset => {
            let dataset = event
                .get("dataset")
                .filter(|d| d.is_object())
                .ok_or_else(|| malformed("the OpenLineage DatasetEvent has no dataset"))?;
            let id = qualified(dataset, "dataset")?;
            match dataset_version(dataset) {
                Some(version) => Draft::new(
                    "openlineage",
                    &digest,
                    "data.snapshot_created",
                    actor.clone(),
                )
                .subject("dataset", id)
                .subject("dataset_version", version)
                .unreported("content_sha256"),
                None => Draft::new(
                    "openlineage",
                    &digest,
                    "x.openlineage.dataset_event",
                    actor.clone(),
                )
                .subject("dataset", id),
            }
            .time(time.clone())
            .attr("openlineage", event.clone())
        }
    };
    let record_id = record.id().to_string();
    let job = match event.get("job") {
        Some(job) => Some(qualified(job, "job")?),
        None => None,
    };
    let run = event.pointer("/run/runId").and_then(Value::as_str);
    let inputs = datasets(event, "inputs")?;
    let outputs = datasets(event, "outputs")?;
    let count = 1 + inputs.len() + 2 * outputs.len();
    if count > options.max_events
        || inputs.len().saturating_mul(outputs.len()) > MAX_INPUT_OUTPUT_PAIRS
    {
        return Err(TranslateError::TooMany {
            count,
            max: options.max_events,
        });
    }
    let input_ids = inputs
        .iter()
        .map(|d| qualified(d, "dataset"))
        .collect::<Result<Vec<_>, _>>()?;
    let mut out = vec![record.build()];
    let derived = |role: &str, index: usize, kind: &str| {
        Draft::new(
            "openlineage",
            &format!("{digest}/{role}/{index}"),
            kind,
            actor.clone(),
        )
        .time(time.clone())
        .attr("openlineage_event", record_id.clone())
    };
    for (i, (input, id)) in inputs.iter().zip(&input_ids).enumerate() {
        let mut d = derived("input", i, "data.source_accessed")
            .subject("dataset", id.clone())
            .attr("source", source_uri(id))
            .attr("facets", input.get("facets").cloned().unwrap_or(json!({})));
        if let Some(v) = dataset_version(input) {
            d = d.subject("dataset_version", v);
        }
        if let Some(run) = run {
            d = d.subject("run", run);
        }
        out.push(d.build());
    }
    for (i, output) in outputs.iter().enumerate() {
        let id = qualified(output, "dataset")?;
        let mut d = derived("output", i, "data.transformation_applied")
            .subject("dataset", id.clone())
            .attr("inputs", json!(input_ids))
            .attr(
                "transformation",
                json!({ "job": job, "run": run, "event_type": event.get("eventType") }),
            )
            .attr("facets", output.get("facets").cloned().unwrap_or(json!({})));
        if let Some(run) = run {
            d = d.subject("run", run);
        }
        out.push(d.build());
        if let Some(version) = dataset_version(output) {
            out.push(
                derived("snapshot", i, "data.snapshot_created")
                    .subject("dataset", id)
                    .subject("dataset_version", version)
                    .unreported("content_sha256")
                    .build(),
            );
        }
    }
    Ok(out)
}

fn run_record(
    event: &Value,
    options: &Options,
    digest: &str,
    actor: &Actor,
    time: Option<String>,
) -> Result<Draft, TranslateError> {
    let run = require_text(event, "/run/runId", "RunEvent")?;
    let job_value = event
        .get("job")
        .ok_or_else(|| malformed("the OpenLineage RunEvent has no job"))?;
    let job = qualified(job_value, "job")?;
    let event_type = crate::text(event, "eventType").unwrap_or("OTHER");
    let training = options.is_training(job_value);
    let draft = match (training, event_type) {
        (true, "START") => {
            // The catalogue lists a run's datasets as `dataset@version`; an input without a
            // version facet is listed beside them, not given an invented version.
            // A dataset whose name holds an `@` (a URI with a user, say) cannot be written
            // as `dataset@version` unambiguously: it is listed apart, its version in
            // `dataset_versions`.
            let mut versioned = Vec::new();
            let mut unversioned = Vec::new();
            let mut versions = serde_json::Map::new();
            for input in datasets(event, "inputs")? {
                let id = qualified(input, "dataset")?;
                match dataset_version(input) {
                    Some(_) if !id.contains('@') => versioned.push(dataset_ref(input)?),
                    Some(v) => {
                        versions.insert(id.clone(), Value::String(v));
                        unversioned.push(id);
                    }
                    None => unversioned.push(id),
                }
            }
            let mut d = Draft::new("openlineage", digest, "training.run_started", actor.clone())
                .subject("run", run)
                .subject("model", job.clone())
                .attr("datasets", json!(versioned));
            if !unversioned.is_empty() {
                d = d.attr("unversioned_datasets", json!(unversioned));
            }
            if !versions.is_empty() {
                d = d.attr("dataset_versions", Value::Object(versions));
            }
            d.unreported("hyperparameters").unreported("random_seed")
        }
        (true, "COMPLETE" | "FAIL" | "ABORT") => Draft::new(
            "openlineage",
            digest,
            "training.run_completed",
            actor.clone(),
        )
        .subject("run", run)
        .attr("status", crate::run_status(event_type))
        .attr("source_status", event_type)
        .unreported("duration_s")
        .unreported("compute"),
        _ => Draft::new(
            "openlineage",
            digest,
            custom_kind("openlineage", "run_event"),
            actor.clone(),
        )
        .subject("run", run),
    };
    Ok(draft
        .time(time)
        .attr("job", job)
        .attr("event_type", event_type)
        .attr("openlineage", event.clone()))
}
