//! `mlaudit import mlflow`: backfills from an MLflow tracking server's REST API (2.0):
//! experiments, runs (`runs/search`, then each metric's full history from
//! `metrics/get-history`), registered models (with their aliases) and model versions. Every
//! list is paged; every request has a timeout and is retried on a transient failure.
//!
//! MLflow webhooks are delivered once (retried only on 429 and 5xx, then dropped): a periodic
//! import is what closes the gaps they leave.

use super::Importer;
use crate::ledger::InputError;
use anyhow::{anyhow, Context, Result};
use mlaudit_integrations::mlflow::rest;
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

const TIMEOUT: Duration = Duration::from_secs(30);
const PAGE: u64 = 1000;

/// A client of one tracking server.
struct Client {
    agent: ureq::Agent,
    base: String,
    auth: Option<String>,
}

impl Client {
    fn new(uri: &str) -> Result<Client> {
        if !(uri.starts_with("http://") || uri.starts_with("https://")) {
            return Err(InputError(format!(
                "--tracking-uri {uri:?} must be an http:// or https:// URL"
            ))
            .into());
        }
        let auth = match (
            std::env::var("MLFLOW_TRACKING_TOKEN")
                .ok()
                .filter(|t| !t.is_empty()),
            std::env::var("MLFLOW_TRACKING_USERNAME").ok(),
            std::env::var("MLFLOW_TRACKING_PASSWORD").ok(),
        ) {
            (Some(token), _, _) => Some(format!("Bearer {token}")),
            (None, Some(user), Some(password)) => {
                use base64::Engine;
                let pair =
                    base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
                Some(format!("Basic {pair}"))
            }
            _ => None,
        };
        Ok(Client {
            agent: ureq::AgentBuilder::new().timeout(TIMEOUT).build(),
            base: format!("{}/api/2.0/mlflow", uri.trim_end_matches('/')),
            auth,
        })
    }

    /// One call, retried (three attempts) on a connection failure, 429 or 5xx.
    fn call(
        &self,
        method: &str,
        path: &str,
        query: &[(&str, &str)],
        body: Option<&Value>,
    ) -> Result<Value> {
        let url = format!("{}/{path}", self.base);
        let mut last = None;
        for attempt in 0..3u32 {
            if attempt > 0 {
                std::thread::sleep(Duration::from_millis(500 << attempt));
            }
            let mut req = self.agent.request(method, &url);
            for (k, v) in query {
                req = req.query(k, v);
            }
            if let Some(a) = &self.auth {
                req = req.set("Authorization", a);
            }
            let result = match body {
                Some(b) => req.send_json(b.clone()),
                None => req.call(),
            };
            match result {
                Ok(resp) => {
                    return resp
                        .into_json()
                        .with_context(|| format!("{path}: the answer is not JSON"))
                }
                Err(ureq::Error::Status(code, resp)) if code == 429 || code >= 500 => {
                    last = Some(anyhow!(
                        "{path}: HTTP {code}: {}",
                        resp.into_string().unwrap_or_default()
                    ));
                }
                Err(ureq::Error::Status(code, resp)) => {
                    let text = resp.into_string().unwrap_or_default();
                    return Err(InputError(format!(
                        "MLflow {path}: HTTP {code}: {}",
                        text.chars().take(500).collect::<String>()
                    ))
                    .into());
                }
                Err(e) => last = Some(anyhow!("{path}: {e}")),
            }
        }
        Err(last.unwrap_or_else(|| anyhow!("{path}: failed")))
            .with_context(|| format!("cannot reach the MLflow tracking server at {}", self.base))
    }

    /// Every item of a paged list (`key` in each page, `next_page_token` between pages).
    fn paged(
        &self,
        method: &str,
        path: &str,
        key: &str,
        query: &[(&str, &str)],
        body: Option<Value>,
    ) -> Result<Vec<Value>> {
        let mut out = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let page = match (&body, &token) {
                (Some(b), t) => {
                    let mut b = b.clone();
                    if let Some(t) = t {
                        b["page_token"] = json!(t);
                    }
                    self.call(method, path, query, Some(&b))?
                }
                (None, t) => {
                    let mut q: Vec<(&str, &str)> = query.to_vec();
                    if let Some(t) = t {
                        q.push(("page_token", t));
                    }
                    self.call(method, path, &q, None)?
                }
            };
            out.extend(
                page.get(key)
                    .and_then(Value::as_array)
                    .cloned()
                    .unwrap_or_default(),
            );
            match page.get("next_page_token").and_then(Value::as_str) {
                Some(t) if !t.is_empty() => token = Some(t.to_owned()),
                _ => return Ok(out),
            }
        }
    }
}

fn created_at(v: &Value) -> Option<i64> {
    v.get("creation_timestamp").and_then(Value::as_i64)
}

pub fn run(
    target: super::Target<'_>,
    uri: &str,
    experiment: Option<&str>,
    since_ms: Option<i64>,
) -> Result<()> {
    let client = Client::new(uri)?;
    let experiments: Vec<Value> = match experiment {
        Some(name) => {
            let found = client.call(
                "GET",
                "experiments/get-by-name",
                &[("experiment_name", name)],
                None,
            )?;
            vec![found
                .get("experiment")
                .cloned()
                .ok_or_else(|| InputError(format!("no experiment named {name:?}")))?]
        }
        None => client.paged(
            "POST",
            "experiments/search",
            "experiments",
            &[],
            Some(json!({ "max_results": PAGE, "view_type": "ALL" })),
        )?,
    };
    let names: BTreeMap<String, String> = experiments
        .iter()
        .filter_map(|e| {
            Some((
                e.get("experiment_id")?.as_str()?.to_owned(),
                e.get("name")?.as_str()?.to_owned(),
            ))
        })
        .collect();
    eprintln!("mlflow: {} experiment(s)", names.len());
    let mut runs = Vec::new();
    if !names.is_empty() {
        let mut body = json!({
            "experiment_ids": names.keys().collect::<Vec<_>>(),
            "max_results": PAGE,
            "run_view_type": "ALL",
        });
        if let Some(ms) = since_ms {
            body["filter"] = json!(format!("attributes.start_time >= {ms}"));
        }
        runs = client.paged("POST", "runs/search", "runs", &[], Some(body))?;
    }
    let run_ids: BTreeSet<String> = runs
        .iter()
        .filter_map(|r| r.pointer("/info/run_id")?.as_str().map(str::to_owned))
        .collect();
    let models = client.paged(
        "GET",
        "registered-models/search",
        "registered_models",
        &[("max_results", "1000")],
        None,
    )?;
    let mut versions = Vec::new();
    for m in &models {
        let Some(name) = m.get("name").and_then(Value::as_str) else {
            continue;
        };
        let filter = format!("name='{}'", name.replace('\'', "\\'"));
        versions.extend(client.paged(
            "GET",
            "model-versions/search",
            "model_versions",
            &[("filter", &filter), ("max_results", "10000")],
            None,
        )?);
    }
    // Which registered model each run produced (a run's events name it as their model).
    let mut model_of_run: BTreeMap<String, String> = BTreeMap::new();
    for v in &versions {
        if let (Some(run), Some(name)) = (
            v.get("run_id").and_then(Value::as_str),
            v.get("name").and_then(Value::as_str),
        ) {
            if !run.is_empty() {
                model_of_run
                    .entry(run.to_owned())
                    .or_insert_with(|| name.to_owned());
            }
        }
    }
    let keep_version = |v: &Value| {
        let from_run = v.get("run_id").and_then(Value::as_str).unwrap_or("");
        (experiment.is_none() || run_ids.contains(from_run))
            && since_ms.is_none_or(|s| created_at(v).is_none_or(|c| c >= s))
    };
    let versions: Vec<&Value> = versions.iter().filter(|v| keep_version(v)).collect();
    let kept_models: BTreeSet<&str> = versions
        .iter()
        .filter_map(|v| v.get("name").and_then(Value::as_str))
        .collect();
    let models: Vec<&Value> = models
        .iter()
        .filter(|m| {
            let name = m.get("name").and_then(Value::as_str).unwrap_or("");
            if experiment.is_some() {
                kept_models.contains(name)
            } else {
                since_ms.is_none_or(|s| created_at(m).is_none_or(|c| c >= s))
                    || kept_models.contains(name)
            }
        })
        .collect();
    eprintln!(
        "mlflow: {} run(s), {} registered model(s), {} model version(s)",
        runs.len(),
        models.len(),
        versions.len()
    );

    let mut importer = Importer::open(&target, "mlflow")?;
    let mut progress = crate::output::Progress::new("runs", runs.len() as u64);
    for (i, run) in runs.iter().enumerate() {
        let info = run.get("info").cloned().unwrap_or_default();
        let id = info
            .get("run_id")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_owned();
        let experiment_name = info
            .get("experiment_id")
            .and_then(Value::as_str)
            .and_then(|e| names.get(e))
            .cloned()
            .unwrap_or_default();
        let mut history = BTreeMap::new();
        let keys: BTreeSet<String> = run
            .pointer("/data/metrics")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|m| m.get("key")?.as_str().map(str::to_owned))
            .collect();
        for key in keys {
            let points = client.paged(
                "GET",
                "metrics/get-history",
                "metrics",
                &[
                    ("run_id", &id),
                    ("metric_key", &key),
                    ("max_results", "25000"),
                ],
                None,
            )?;
            history.insert(key, points);
        }
        let events = rest::run_events(
            run,
            &experiment_name,
            model_of_run.get(&id).map(String::as_str),
            &history,
        )
        .map_err(|e| InputError(format!("run {id}: {e}")))?;
        for e in &events {
            importer.add(e, false)?;
        }
        progress.set(i as u64 + 1);
    }
    progress.finish();
    for m in &models {
        for e in rest::registered_model_events(m).map_err(|e| InputError(e.to_string()))? {
            importer.add(&e, false)?;
        }
    }
    for v in &versions {
        let e = rest::model_version_event(v).map_err(|e| InputError(e.to_string()))?;
        importer.add(&e, false)?;
    }
    importer.finish()
}
