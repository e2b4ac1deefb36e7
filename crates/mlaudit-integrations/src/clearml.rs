//! ClearML offline sessions (`Task.set_offline(True)`): the folder ClearML writes under
//! `~/.clearml/cache/offline/<task id>/` (or its zip) holds `task.json` (the task: id, name,
//! project, type, tags, `hyperparams.<section>.<name>.value`, `offline_output_models`,
//! `execution.artifacts`) and `metrics.jsonl` (each line a JSON *array* of reports:
//! `training_stats_scalar` with `metric`, `variant`, `iter`, `value`, `timestamp` in ms).
//!
//! * The task → `training.run_started` (`subject.run` = the task id; `subject.model` = its
//!   first output model's name, else `<project>/<task name>`); parameters as
//!   `hyperparameters` (`section/name` → value, as ClearML stores them: strings).
//! * Scalars → one `training.checkpoint_evaluated` per iteration (`"<title>/<series>"` →
//!   value); single values (ClearML's summary iteration) are marked `summary`.
//! * Each output model → `registry.model_registered` (`subject.version` = the model's id),
//!   with `artifact_sha256` the SHA-256 of its weights file when the session holds it.
//!
//! An offline session records no user and no end state: the actor is the ClearML service
//! with `human_actor = "unknown"`, and no `training.run_completed` is written.

use crate::{malformed, Actor, Draft, TranslateError};
use serde_json::{json, Map, Value};
use std::collections::BTreeMap;

/// ClearML's iteration for single (summary) values.
const SUMMARY_ITER: i64 = -2_147_483_648;

/// The session's task: `task.json`'s contents.
pub fn parse_task(bytes: &[u8]) -> Result<Value, TranslateError> {
    let task = crate::parse_json("task.json", bytes)?;
    if crate::text(&task, "id").is_none_or(str::is_empty) {
        return Err(malformed("task.json has no task id"));
    }
    Ok(task)
}

/// The scalar reports of `metrics.jsonl` (other report types are skipped).
pub fn parse_metrics(text: &str) -> Result<Vec<Value>, TranslateError> {
    let mut out = Vec::new();
    for (n, line) in text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
    {
        let value: Value = serde_json::from_str(line)
            .map_err(|e| malformed(format!("metrics.jsonl line {}: {e}", n + 1)))?;
        let reports = match value {
            Value::Array(items) => items,
            single @ Value::Object(_) => vec![single],
            _ => {
                return Err(malformed(format!(
                    "metrics.jsonl line {}: not a report",
                    n + 1
                )))
            }
        };
        out.extend(
            reports
                .into_iter()
                .filter(|r| crate::text(r, "type") == Some("training_stats_scalar")),
        );
    }
    Ok(out)
}

/// The events of one session. `weights_sha256` maps a model's weights file (its path under
/// the session's `models/` folder, as in `weights.weights_filename`) to the SHA-256 of the
/// file in the session.
pub fn session_events(
    task: &Value,
    scalars: &[Value],
    weights_sha256: &BTreeMap<String, String>,
) -> Result<Vec<Value>, TranslateError> {
    let id = crate::text(task, "id").unwrap_or_default();
    let name = crate::text(task, "name").unwrap_or("task");
    let project = crate::text(task, "project_name").unwrap_or("");
    let actor = Actor::service("clearml");
    let models: Vec<&Value> = task
        .get("offline_output_models")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .collect();
    let model_name = models
        .iter()
        .find_map(|m| m.pointer("/init/name").and_then(Value::as_str))
        .map(str::to_owned)
        .unwrap_or_else(|| format!("{project}/{name}"));
    let mut params = Map::new();
    if let Some(sections) = task.get("hyperparams").and_then(Value::as_object) {
        for (section, entries) in sections {
            for (pname, p) in entries.as_object().into_iter().flatten() {
                let value = p.get("value").cloned().unwrap_or(Value::Null);
                let key = if section == "General" {
                    pname.clone()
                } else {
                    format!("{section}/{pname}")
                };
                params.insert(key, value);
            }
        }
    }
    let first_time = scalars
        .iter()
        .filter_map(|s| s.get("timestamp").and_then(Value::as_i64))
        .min();
    let seed = crate::seed_param(&params);
    let mut started = Draft::new(
        "clearml",
        &format!("task/{id}/started"),
        "training.run_started",
        actor.clone(),
    )
    .time(first_time.and_then(crate::millis_to_time))
    .subject("run", id)
    .subject("model", model_name.clone())
    .attr("hyperparameters", Value::Object(params))
    .attr("project", project)
    .attr("task_name", name)
    .attr("human_actor", "unknown")
    .attr("clearml_task", summary_of(task))
    .unreported("datasets");
    started = match seed {
        Some(s) => started.attr("random_seed", s),
        None => started.unreported("random_seed"),
    };
    let mut out = vec![started.build()];
    let steps = crate::by_step(scalars.iter().filter_map(|s| {
        let metric = format!(
            "{}/{}",
            crate::text(s, "metric").unwrap_or(""),
            crate::text(s, "variant").unwrap_or("")
        );
        let at = s.get("timestamp").and_then(Value::as_i64).unwrap_or(0);
        Some((
            s.get("iter").and_then(Value::as_i64)?,
            metric,
            s.get("value")?,
            at,
        ))
    }));
    for (iter, (metrics, at)) in steps {
        out.push(
            Draft::new(
                "clearml",
                &format!("task/{id}/iter/{iter}"),
                "training.checkpoint_evaluated",
                actor.clone(),
            )
            .time(crate::millis_to_time(at))
            .subject("run", id)
            .attr("step", iter)
            .attr("metrics", Value::Object(metrics))
            .attr("summary", iter == SUMMARY_ITER)
            .build(),
        );
    }
    for m in models {
        let Some(model_id) = crate::text(m, "id") else {
            continue;
        };
        let mname = m
            .pointer("/init/name")
            .and_then(Value::as_str)
            .unwrap_or(&model_name);
        // The file's path under the session's models/ folder (its name alone when the path
        // does not pass through one).
        let path = m
            .pointer("/weights/weights_filename")
            .and_then(Value::as_str)
            .unwrap_or("")
            .replace('\\', "/");
        let file = match path.rfind("/models/") {
            Some(at) => path[at + "/models/".len()..].to_owned(),
            None => path.rsplit('/').next().unwrap_or("").to_owned(),
        };
        let file = file.as_str();
        let mut d = Draft::new(
            "clearml",
            &format!("model/{model_id}"),
            "registry.model_registered",
            actor.clone(),
        )
        .time(first_time.and_then(crate::millis_to_time))
        .subject("model", mname)
        .subject("version", model_id)
        .subject("run", id)
        .attr("human_actor", "unknown")
        .attr("clearml_model", m.clone());
        d = match weights_sha256.get(file) {
            Some(digest) => d
                .attr("artifact_sha256", digest.clone())
                .attr("weights_file", file),
            None => d.unreported("artifact_sha256"),
        };
        out.push(d.build());
    }
    Ok(out)
}

/// The task without its bulky parts (the script's diff and requirements), which are kept
/// as their SHA-256.
fn summary_of(task: &Value) -> Value {
    let mut t = task.clone();
    if let Some(script) = t.get_mut("script").and_then(Value::as_object_mut) {
        for field in ["diff", "requirements"] {
            if let Some(v) = script.remove(field) {
                script.insert(
                    format!("{field}_sha256"),
                    json!(crate::sha256_hex(v.to_string().as_bytes())),
                );
            }
        }
    }
    t
}
