//! `mlaudit import wandb-audit FILE`: a W&B audit log (JSONL). Every line is checked before
//! anything is written; a bad line is reported by number and nothing is imported.

use super::Importer;
use crate::ledger::InputError;
use crate::output::Progress;
use anyhow::Result;
use mlaudit_integrations::wandb;
use std::io::BufRead;
use std::path::Path;

/// Most errors printed.
const SHOWN: usize = 20;

pub fn run(target: super::Target<'_>, file: &Path) -> Result<()> {
    let open = || {
        std::fs::File::open(file)
            .map(std::io::BufReader::new)
            .map_err(|e| InputError(format!("cannot read {}: {e}", file.display())))
    };
    let mut events = Vec::new();
    let mut bad = Vec::new();
    for (n, line) in open()?.lines().enumerate() {
        let line =
            line.map_err(|e| InputError(format!("{} line {}: {e}", file.display(), n + 1)))?;
        if line.trim().is_empty() {
            continue;
        }
        match wandb::audit_line(&line) {
            Ok(e) => events.push(e),
            Err(e) => bad.push(format!("line {}: {e}", n + 1)),
        }
    }
    if !bad.is_empty() {
        for b in bad.iter().take(SHOWN) {
            eprintln!("mlaudit: {}: {b}", file.display());
        }
        return Err(InputError(format!(
            "{} bad line(s) in {}; nothing was imported",
            bad.len(),
            file.display()
        ))
        .into());
    }
    if matches!(target, super::Target::Server { .. }) && events.iter().any(wandb::is_reserved) {
        return Err(InputError(format!(
            "{} holds W&B access changes, which are governance.access_changed, a kind only the log itself writes: import this file into the data directory (without --url, with the server stopped); nothing was imported",
            file.display()
        ))
        .into());
    }
    let mut importer = Importer::open(&target, "wandb-audit")?;
    let mut progress = Progress::new("importing", events.len() as u64);
    for (i, e) in events.iter().enumerate() {
        importer.add(e, wandb::is_reserved(e))?;
        progress.set(i as u64 + 1);
    }
    progress.finish();
    importer.finish()
}
