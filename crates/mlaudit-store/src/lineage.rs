//! Lineage: from any event to the model version it concerns, that version's registry history
//! (registration, approvals, stage changes), the training run that produced it, and the datasets
//! and data events behind that run — following subject links through indexed queries.

use crate::{Query, Store, StoreError};
use mlaudit_core::bundle::render_event;
use mlaudit_core::entry::{self, Entry, SubjectField};
use mlaudit_core::event::Stage;
use serde::Serialize;
use serde_json::Value;

/// How many events each lineage step lists at most.
const STEP_LIMIT: usize = 1000;
/// How many events one lineage lists at most, over all its steps.
pub const MAX_LINEAGE_EVENTS: usize = 5000;
/// How many distinct datasets of a training run a lineage follows at most.
pub const MAX_DATASET_REFS: usize = 100;

/// The lineage of one event. Every listed event carries its `seq`.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Lineage {
    pub event: Value,
    pub model: Option<String>,
    pub version: Option<String>,
    /// Registry events of that model version: registration, promotion, approvals, stage changes.
    pub registry: Vec<Value>,
    /// Deployment events of that model version.
    pub deployments: Vec<Value>,
    /// The training run that produced the version.
    pub run: Option<String>,
    pub training: Vec<Value>,
    /// Datasets the run used (`dataset@version`), each with its data events.
    pub datasets: Vec<DatasetLineage>,
    /// Set when a step had more events than it lists ([`STEP_LIMIT`] per step,
    /// [`MAX_LINEAGE_EVENTS`] in all, [`MAX_DATASET_REFS`] datasets): the lineage is a prefix.
    pub truncated: bool,
}

/// One dataset a training run used.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct DatasetLineage {
    pub dataset: String,
    pub version: Option<String>,
    pub events: Vec<Value>,
}

struct Loaded {
    entry: Entry,
    view: Value,
}

fn load(store: &dyn Store, seq: u64) -> Result<Loaded, StoreError> {
    let ev = store.event(seq)?;
    let entry = entry::decode(&ev.entry).map_err(|e| StoreError::Corrupt {
        location: store.location(seq),
        problem: e.to_string(),
    })?;
    let view = render_event(&entry, ev.payload.as_deref());
    Ok(Loaded { entry, view })
}

/// The events a lineage may still list, shared by its steps.
struct Budget {
    left: usize,
    truncated: bool,
}

impl Budget {
    /// The events matching `q`, at most [`STEP_LIMIT`] and what is left of the budget; notes
    /// when more matched.
    fn find(&mut self, store: &dyn Store, q: Query) -> Result<Vec<Loaded>, StoreError> {
        let limit = STEP_LIMIT.min(self.left);
        let q = Query {
            limit: limit + 1,
            ..q
        };
        let mut seqs = store.query(&q)?;
        if seqs.len() > limit {
            seqs.truncate(limit);
            self.truncated = true;
        }
        self.left -= seqs.len();
        seqs.into_iter().map(|seq| load(store, seq)).collect()
    }
}

/// The lineage of the event at `seq`.
pub fn lineage(store: &dyn Store, seq: u64) -> Result<Lineage, StoreError> {
    let mut budget = Budget {
        left: MAX_LINEAGE_EVENTS,
        truncated: false,
    };
    let start = load(store, seq)?;
    let subject = |f| start.entry.subject(f).map(str::to_owned);
    let (mut model, mut version) = (subject(SubjectField::Model), subject(SubjectField::Version));
    if let (None, Some(deployment)) = (&model, subject(SubjectField::Deployment)) {
        let deployed = budget.find(
            store,
            Query {
                kind: Some("operations.deployed".into()),
                deployment: Some(deployment),
                ..Query::default()
            },
        )?;
        if let Some(d) = deployed
            .iter()
            .rev()
            .find(|d| d.entry.seq <= seq)
            .or(deployed.last())
        {
            model = d.entry.subject(SubjectField::Model).map(str::to_owned);
            version = d.entry.subject(SubjectField::Version).map(str::to_owned);
        }
    }
    let mut out = Lineage {
        event: start.view.clone(),
        model: model.clone(),
        version: version.clone(),
        registry: vec![],
        deployments: vec![],
        run: subject(SubjectField::Run),
        training: vec![],
        datasets: vec![],
        truncated: false,
    };
    if let (Some(model), Some(version)) = (&model, &version) {
        let by_version = |stage| Query {
            stage: Some(stage),
            model: Some(model.clone()),
            version: Some(version.clone()),
            ..Query::default()
        };
        let registry = budget.find(store, by_version(Stage::Registry))?;
        if let Some(reg) = registry
            .iter()
            .find(|r| r.entry.kind == "registry.model_registered")
        {
            out.run = reg
                .entry
                .subject(SubjectField::Run)
                .map(str::to_owned)
                .or(out.run);
        }
        out.registry = registry.into_iter().map(|l| l.view).collect();
        out.deployments = budget
            .find(store, by_version(Stage::Operations))?
            .into_iter()
            .map(|l| l.view)
            .collect();
    }
    if let Some(run) = out.run.clone() {
        let training = budget.find(
            store,
            Query {
                stage: Some(Stage::Training),
                run: Some(run),
                ..Query::default()
            },
        )?;
        // `datasets` lists `dataset@version` (split at the first `@`, as the catalogue
        // reads it); `unversioned_datasets` (written for a source that named no version, or
        // a dataset whose name holds an `@`) lists datasets alone, followed with every
        // version.
        let mut refs: Vec<(String, Option<String>)> = Vec::new();
        for t in training
            .iter()
            .filter(|t| t.entry.kind == "training.run_started")
        {
            let attributes = &t.view["attributes"];
            let listed = |name: &str| {
                attributes[name]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|v| v.as_str().map(str::to_owned))
                    .collect::<Vec<_>>()
            };
            for r in listed("datasets") {
                refs.push(match r.split_once('@') {
                    Some((d, v)) => (d.to_owned(), Some(v.to_owned())),
                    None => (r, None),
                });
            }
            refs.extend(
                listed("unversioned_datasets")
                    .into_iter()
                    .map(|d| (d, None)),
            );
        }
        // Each dataset once, in first-mention order, and a bounded number of them.
        let mut seen = std::collections::BTreeSet::new();
        let mut refs: Vec<(String, Option<String>)> = refs
            .into_iter()
            .filter(|r| seen.insert(r.clone()))
            .collect();
        if refs.len() > MAX_DATASET_REFS {
            refs.truncate(MAX_DATASET_REFS);
            budget.truncated = true;
        }
        out.training = training.into_iter().map(|l| l.view).collect();
        for (dataset, version) in refs {
            let events = budget.find(
                store,
                Query {
                    stage: Some(Stage::Data),
                    dataset: Some(dataset.clone()),
                    ..Query::default()
                },
            )?;
            let events = events
                .into_iter()
                .filter(
                    |l| match (l.entry.subject(SubjectField::DatasetVersion), &version) {
                        (Some(have), Some(want)) => have == want,
                        _ => true,
                    },
                )
                .map(|l| l.view)
                .collect();
            out.datasets.push(DatasetLineage {
                dataset,
                version,
                events,
            });
        }
    }
    out.truncated = budget.truncated;
    Ok(out)
}
