//! `mlaudit import`: backfills the log from other tools' records — MLflow's REST API
//! ([`mlflow`]), W&B audit logs ([`wandb`]) and ClearML offline sessions ([`clearml`]) —
//! translated by `mlaudit-integrations`.
//!
//! **Idempotent.** Every event id derives from the tool's own ids, and an event whose id is
//! already in the log is skipped, not rewritten: importing the same records twice writes
//! nothing the second time, and an import never changes what an earlier one recorded (a
//! record that changed since is still shown as first seen). Events are validated and written
//! in durable batches, with progress on standard error and a summary on standard output.

pub mod clearml;
pub mod mlflow;
pub mod wandb;
mod zip;

use crate::ledger::{self, InputError};
use anyhow::{Context, Result};
use mlaudit_core::entry::EventId;
use mlaudit_core::event::{prepare, prepare_reserved, PreparedEvent};
use mlaudit_embedded::EmbeddedStore;
use mlaudit_store::Store;
use serde_json::Value;
use std::path::{Path, PathBuf};

/// `mlaudit import …`.
#[derive(Debug, clap::Subcommand)]
pub enum ImportCommand {
    /// Runs, registered models, versions and aliases from an MLflow tracking server's REST API.
    Mlflow {
        /// The tracking server, e.g. http://mlflow:5000 (MLFLOW_TRACKING_TOKEN, or
        /// MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD, authenticate).
        #[arg(long, value_name = "URL")]
        tracking_uri: String,
        /// Only this experiment's runs, and the model versions made from them.
        #[arg(long, value_name = "NAME")]
        experiment: Option<String>,
        /// Only runs started, and models and versions created, at or after this time
        /// (RFC 3339, e.g. 2026-01-01T00:00:00Z).
        #[arg(long, value_name = "TIME")]
        since: Option<String>,
    },
    /// A W&B audit log (JSONL, as W&B exports it).
    WandbAudit {
        #[arg(value_name = "FILE")]
        file: PathBuf,
    },
    /// A ClearML offline session: the folder `Task.set_offline(True)` writes, or its zip.
    ClearmlOffline {
        #[arg(value_name = "PATH")]
        path: PathBuf,
    },
}

pub fn run(data: &Path, cmd: ImportCommand) -> Result<()> {
    match cmd {
        ImportCommand::Mlflow {
            tracking_uri,
            experiment,
            since,
        } => {
            let since_ms = match since {
                None => None,
                Some(t) => Some(
                    mlaudit_core::event::parse_time(&t).ok_or_else(|| {
                        InputError(format!("--since {t:?} is not an RFC 3339 time"))
                    })? / 1_000_000,
                ),
            };
            mlflow::run(data, &tracking_uri, experiment.as_deref(), since_ms)
        }
        ImportCommand::WandbAudit { file } => wandb::run(data, &file),
        ImportCommand::ClearmlOffline { path } => clearml::run(data, &path),
    }
}

/// Events per durable batch.
const BATCH: usize = 500;

/// Writes translated events: skips those already in the log, validates the rest and appends
/// them in durable batches.
pub struct Importer {
    store: EmbeddedStore,
    principal: String,
    source: &'static str,
    batch: Vec<PreparedEvent>,
    pub written: u64,
    pub present: u64,
}

impl Importer {
    /// Opens the data directory for writing.
    pub fn open(data: &Path, source: &'static str) -> Result<Importer> {
        let store = ledger::open(data)?;
        Ok(Importer {
            store,
            principal: format!("{} (import {source})", crate::append::local_principal()),
            source,
            batch: Vec::new(),
            written: 0,
            present: 0,
        })
    }

    /// Adds one translated event. `reserved` lets the importer write a kind clients may not
    /// (a W&B access change as `governance.access_changed`).
    pub fn add(&mut self, event: &Value, reserved: bool) -> Result<()> {
        let id = event
            .get("id")
            .and_then(Value::as_str)
            .and_then(EventId::parse)
            .context("a translated event has no id")?;
        if self.store.seq_of(&id)?.is_some() || self.batch.iter().any(|e| e.id == Some(id)) {
            self.present += 1;
            return Ok(());
        }
        let text = event.to_string();
        let prepared = if reserved {
            prepare_reserved(&text, &self.principal)
        } else {
            prepare(&text, &self.principal)
        }
        .map_err(|e| {
            InputError(format!(
                "{}: a {} event does not validate ({e}); nothing of this batch was written",
                self.source,
                event.get("kind").and_then(Value::as_str).unwrap_or("?")
            ))
        })?;
        self.batch.push(prepared);
        if self.batch.len() >= BATCH {
            self.flush()?;
        }
        Ok(())
    }

    /// Appends what is pending (durable when this returns).
    pub fn flush(&mut self) -> Result<()> {
        if self.batch.is_empty() {
            return Ok(());
        }
        let events = std::mem::take(&mut self.batch);
        let receipt = self.store.append(events).context("appending to the log")?;
        for e in &receipt.events {
            if e.duplicate {
                self.present += 1;
            } else {
                self.written += 1;
            }
        }
        Ok(())
    }

    /// Flushes, closes the store and prints the summary.
    pub fn finish(mut self) -> Result<()> {
        self.flush()?;
        self.store.close()?;
        println!(
            "imported: {} new events, {} already present",
            self.written, self.present
        );
        Ok(())
    }
}
