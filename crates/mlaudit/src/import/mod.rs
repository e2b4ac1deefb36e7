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
mod remote;
pub mod wandb;
mod zip;

use crate::ledger::{self, InputError};
use anyhow::{Context, Result};
use mlaudit_core::entry::EventId;
use mlaudit_core::event::{prepare, prepare_reserved, PreparedEvent};
use mlaudit_store::prelude::*;
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
        #[command(flatten)]
        to: TargetArgs,
    },
    /// A W&B audit log (JSONL, as W&B exports it).
    WandbAudit {
        #[arg(value_name = "FILE")]
        file: PathBuf,
        #[command(flatten)]
        to: TargetArgs,
    },
    /// A ClearML offline session: the folder `Task.set_offline(True)` writes, or its zip.
    ClearmlOffline {
        #[arg(value_name = "PATH")]
        path: PathBuf,
        #[command(flatten)]
        to: TargetArgs,
    },
}

/// Where imported events go.
#[derive(Debug, clap::Args)]
pub struct TargetArgs {
    /// Send the events to a running `mlaudit serve` at this URL (e.g. http://127.0.0.1:8080)
    /// with the writer token in MLAUDIT_TOKEN, instead of opening the data directory (which a
    /// running server holds).
    #[arg(long, value_name = "URL")]
    url: Option<String>,
}

/// Where imported events go, resolved.
#[derive(Debug)]
pub enum Target<'a> {
    Data(&'a Path),
    Server { url: String, token: String },
}

impl TargetArgs {
    fn resolve(self, data: &Path) -> Result<Target<'_>> {
        match self.url {
            None => Ok(Target::Data(data)),
            Some(url) => {
                let token = std::env::var("MLAUDIT_TOKEN")
                    .ok()
                    .filter(|t| !t.is_empty())
                    .ok_or_else(|| {
                        InputError("--url needs a writer token in MLAUDIT_TOKEN".into())
                    })?;
                Ok(Target::Server {
                    url: url.trim_end_matches('/').to_owned(),
                    token,
                })
            }
        }
    }
}

pub fn run(data: &Path, cmd: ImportCommand) -> Result<()> {
    match cmd {
        ImportCommand::Mlflow {
            tracking_uri,
            experiment,
            since,
            to,
        } => {
            let since_ms = match since {
                None => None,
                Some(t) => Some(
                    mlaudit_core::event::parse_time(&t).ok_or_else(|| {
                        InputError(format!("--since {t:?} is not an RFC 3339 time"))
                    })? / 1_000_000,
                ),
            };
            let target = to.resolve(data)?;
            mlflow::run(target, &tracking_uri, experiment.as_deref(), since_ms)
        }
        ImportCommand::WandbAudit { file, to } => wandb::run(to.resolve(data)?, &file),
        ImportCommand::ClearmlOffline { path, to } => clearml::run(to.resolve(data)?, &path),
    }
}

/// Events per durable batch, and bytes (well under a server's default body limit).
const BATCH: usize = 500;
const BATCH_BYTES: usize = 8 << 20;

/// Writes translated events: skips those already in the log, validates the rest and appends
/// them in durable batches — to the data directory, or through a running server's
/// `POST /v1/events` (where an id already stored with other content is a 409, counted as
/// present).
pub struct Importer {
    sink: Sink,
    principal: String,
    source: &'static str,
    batch: Vec<(PreparedEvent, String)>,
    pub written: u64,
    pub present: u64,
}

enum Sink {
    Store(Box<crate::ledger::Ledger>),
    Server(remote::Server),
}

impl Importer {
    /// Opens the data directory, or readies the server, for writing.
    pub fn open(target: &Target<'_>, source: &'static str) -> Result<Importer> {
        let sink = match target {
            Target::Data(data) => Sink::Store(Box::new(ledger::open(data)?)),
            Target::Server { url, token } => Sink::Server(remote::Server::new(url, token)),
        };
        Ok(Importer {
            sink,
            principal: format!("{} (import {source})", crate::append::local_principal()),
            source,
            batch: Vec::new(),
            written: 0,
            present: 0,
        })
    }

    /// Adds one translated event. `reserved` lets the importer write a kind clients may not
    /// (a W&B access change as `governance.access_changed`): only into the data directory,
    /// as a server refuses those kinds from any client.
    pub fn add(&mut self, event: &Value, reserved: bool) -> Result<()> {
        let id = event
            .get("id")
            .and_then(Value::as_str)
            .and_then(EventId::parse)
            .context("a translated event has no id")?;
        let stored = match &self.sink {
            Sink::Store(store) => store.seq_of(&id)?.is_some(),
            Sink::Server(_) if reserved => {
                return Err(InputError(format!(
                    "{}: a {} event is a kind only the log itself writes; import this file into the data directory (without --url, with the server stopped)",
                    self.source,
                    event.get("kind").and_then(Value::as_str).unwrap_or("?")
                ))
                .into())
            }
            Sink::Server(_) => false,
        };
        if stored || self.batch.iter().any(|(e, _)| e.id == Some(id)) {
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
                "{}: a {} event does not validate ({e}); the events before it were written",
                self.source,
                event.get("kind").and_then(Value::as_str).unwrap_or("?")
            ))
        })?;
        self.batch.push((prepared, text));
        let bytes: usize = self.batch.iter().map(|(_, t)| t.len()).sum();
        if self.batch.len() >= BATCH || bytes >= BATCH_BYTES {
            self.flush()?;
        }
        Ok(())
    }

    /// Appends what is pending (durable when this returns).
    pub fn flush(&mut self) -> Result<()> {
        if self.batch.is_empty() {
            return Ok(());
        }
        let batch = std::mem::take(&mut self.batch);
        let duplicates: Vec<bool> = match &self.sink {
            Sink::Store(store) => store
                .append(batch.into_iter().map(|(e, _)| e).collect())
                .context("appending to the log")?
                .events
                .iter()
                .map(|e| e.duplicate)
                .collect(),
            Sink::Server(server) => {
                let texts: Vec<String> = batch.into_iter().map(|(_, t)| t).collect();
                server.append(&texts)?
            }
        };
        for duplicate in duplicates {
            if duplicate {
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
        if let Sink::Store(store) = &self.sink {
            store.close()?;
        }
        println!(
            "imported: {} new events, {} already present",
            self.written, self.present
        );
        Ok(())
    }
}
