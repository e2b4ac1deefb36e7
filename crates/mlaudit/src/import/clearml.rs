//! `mlaudit import clearml-offline PATH`: a ClearML offline session, as the folder ClearML
//! writes or its zip. `task.json`, `metrics.jsonl` and the weights files under `models/` are
//! read (the weights only to hash them).

use super::zip::Archive;
use super::Importer;
use crate::ledger::InputError;
use anyhow::{Context, Result};
use mlaudit_integrations::clearml;
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::io::Read;
use std::path::Path;

const MAX_TASK_BYTES: u64 = 64 << 20;
const MAX_METRICS_BYTES: u64 = 1 << 30;
const MAX_WEIGHTS_BYTES: u64 = 64 << 30;

/// What a session holds: the task, its metrics text, and the SHA-256 of each weights file.
struct Session {
    task: Vec<u8>,
    metrics: String,
    weights: BTreeMap<String, String>,
}

fn hex(digest: &[u8]) -> String {
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// The SHA-256 of what `reader` yields, refused past [`MAX_WEIGHTS_BYTES`] (never a digest
/// of a truncated file).
fn hash(reader: &mut dyn Read, what: &str) -> Result<String> {
    let mut h = Sha256::new();
    let n = std::io::copy(&mut reader.take(MAX_WEIGHTS_BYTES + 1), &mut h)?;
    if n > MAX_WEIGHTS_BYTES {
        return Err(InputError(format!("{what} is larger than {MAX_WEIGHTS_BYTES} bytes")).into());
    }
    Ok(hex(&h.finalize()))
}

fn read_limited(reader: impl Read, limit: u64, what: &str) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    reader.take(limit + 1).read_to_end(&mut out)?;
    if out.len() as u64 > limit {
        return Err(InputError(format!("{what} is larger than {limit} bytes")).into());
    }
    Ok(out)
}

fn from_folder(dir: &Path) -> Result<Session> {
    let task_path = dir.join("task.json");
    let task = read_limited(
        std::fs::File::open(&task_path).map_err(|e| {
            InputError(format!(
                "{}: {e} (not a ClearML offline session?)",
                task_path.display()
            ))
        })?,
        MAX_TASK_BYTES,
        "task.json",
    )?;
    let metrics = match std::fs::File::open(dir.join("metrics.jsonl")) {
        Ok(f) => String::from_utf8(read_limited(f, MAX_METRICS_BYTES, "metrics.jsonl")?)
            .map_err(|_| InputError("metrics.jsonl is not UTF-8".into()))?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(e).context("reading metrics.jsonl"),
    };
    let mut weights = BTreeMap::new();
    if let Ok(entries) = std::fs::read_dir(dir.join("models")) {
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_file() {
                let mut f = std::fs::File::open(&path)?;
                let name = entry.file_name().to_string_lossy().into_owned();
                let digest = hash(&mut f, &name)?;
                weights.insert(name, digest);
            }
        }
    }
    Ok(Session {
        task,
        metrics,
        weights,
    })
}

fn from_zip(path: &Path) -> Result<Session> {
    let mut zip = Archive::open(path).map_err(|e| InputError(format!("{e:#}")))?;
    let task_member = zip.member("task.json").cloned().ok_or_else(|| {
        InputError(format!(
            "{} holds no task.json (not a ClearML offline session?)",
            path.display()
        ))
    })?;
    let task = zip.read(&task_member, MAX_TASK_BYTES)?;
    let metrics = match zip.member("metrics.jsonl").cloned() {
        Some(m) => String::from_utf8(zip.read(&m, MAX_METRICS_BYTES)?)
            .map_err(|_| InputError("metrics.jsonl is not UTF-8".into()))?,
        None => String::new(),
    };
    let mut weights = BTreeMap::new();
    let models: Vec<_> = zip
        .members
        .iter()
        .filter(|m| m.name.starts_with("models/") && !m.name.ends_with('/'))
        .cloned()
        .collect();
    for m in models {
        // Keyed by the path under models/, so that two files of one name in two folders
        // keep their own digests.
        let name = m.name.trim_start_matches("models/").to_owned();
        let digest = hash(&mut zip.reader(&m, MAX_WEIGHTS_BYTES + 1)?, &m.name)?;
        weights.insert(name, digest);
    }
    Ok(Session {
        task,
        metrics,
        weights,
    })
}

pub fn run(target: super::Target<'_>, path: &Path) -> Result<()> {
    let meta = std::fs::metadata(path)
        .map_err(|e| InputError(format!("cannot read {}: {e}", path.display())))?;
    let session = if meta.is_dir() {
        from_folder(path)?
    } else {
        from_zip(path)?
    };
    let task = clearml::parse_task(&session.task).map_err(|e| InputError(e.to_string()))?;
    let scalars =
        clearml::parse_metrics(&session.metrics).map_err(|e| InputError(e.to_string()))?;
    let events = clearml::session_events(&task, &scalars, &session.weights)
        .map_err(|e| InputError(e.to_string()))?;
    eprintln!(
        "clearml: task {} — {} scalar reports, {} weights files, {} events",
        task["id"].as_str().unwrap_or("?"),
        scalars.len(),
        session.weights.len(),
        events.len()
    );
    let mut importer = Importer::open(&target, "clearml-offline")?;
    for e in &events {
        importer.add(e, false)?;
    }
    importer.finish()
}
