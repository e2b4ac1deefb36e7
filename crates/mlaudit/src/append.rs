//! `mlaudit append`: validate every line first, then append in durable batches.
//!
//! Nothing is written unless every line is valid; the batches are then submitted in order, a
//! few at a time so that the store commits one while it syncs another, and each is atomic and
//! durable when it is answered. Ids make a re-run after an interruption safe (already-stored
//! events are reported as duplicates, not written twice).

use crate::ledger::{self, InputError};
use crate::output::Progress;
use anyhow::{Context, Result};
use mlaudit_core::event::PreparedEvent;
use mlaudit_store::ingest::{ndjson_lines, prepare_lines};
use mlaudit_store::{AppendReceipt, Store, StoreError};
use std::collections::VecDeque;
use std::io::Read;
use std::path::Path;
use std::sync::mpsc;

/// The principal recorded for events appended from this command line.
pub fn local_principal() -> String {
    let user = ["USER", "LOGNAME"]
        .iter()
        .find_map(|v| std::env::var(v).ok().filter(|u| !u.is_empty()))
        .unwrap_or_else(|| "unknown".into());
    format!("local:{user}")
}

fn read_input(file: &Path) -> Result<String> {
    let mut bytes = Vec::new();
    if file == Path::new("-") {
        std::io::stdin()
            .read_to_end(&mut bytes)
            .context("reading standard input")?;
    } else {
        bytes = std::fs::read(file)
            .map_err(|e| InputError(format!("cannot read {}: {e}", file.display())))?;
    }
    String::from_utf8(bytes).map_err(|e| {
        let line = 1 + e.utf8_error().valid_up_to().min(e.as_bytes().len());
        let line_no = e.as_bytes()[..line - 1]
            .iter()
            .filter(|b| **b == b'\n')
            .count()
            + 1;
        InputError(format!("line {line_no}: input is not valid UTF-8")).into()
    })
}

/// Summary of an append.
#[derive(Debug, Default)]
pub struct Appended {
    pub new: u64,
    pub duplicates: u64,
    pub first_seq: Option<u64>,
    pub last_seq: Option<u64>,
    pub checkpoint: String,
}

/// Batches submitted and not yet answered: the store commits the next while the previous one
/// syncs, and merges queued batches into larger groups.
const IN_FLIGHT: usize = 4;

/// Appends validated events in durable batches of `batch_size`, up to [`IN_FLIGHT`] at a
/// time. Each batch is atomic and durable when answered; answers are taken in submission
/// order, and the first failure is returned (batches still in flight may be written after it:
/// the events' ids make a re-run safe).
pub fn append_events(
    store: &dyn Store,
    events: Vec<PreparedEvent>,
    batch_size: usize,
    progress: &mut Progress,
) -> Result<Appended> {
    let batch_size = batch_size.max(1);
    let mut out = Appended::default();
    let mut done = 0u64;
    let mut events = events.into_iter().peekable();
    // One channel per batch: a store that dropped a callback unanswered ends the wait with an
    // error instead of a hang.
    let mut in_flight: VecDeque<mpsc::Receiver<Result<AppendReceipt, StoreError>>> =
        VecDeque::new();
    loop {
        while in_flight.len() < IN_FLIGHT && events.peek().is_some() {
            let batch: Vec<PreparedEvent> = events.by_ref().take(batch_size).collect();
            let (tx, rx) = mpsc::channel();
            store.submit(batch, Box::new(move |outcome| drop(tx.send(outcome))));
            in_flight.push_back(rx);
        }
        let Some(oldest) = in_flight.pop_front() else {
            return Ok(out);
        };
        let receipt = oldest
            .recv()
            .context("the store dropped a batch unanswered")??;
        for e in &receipt.events {
            if e.duplicate {
                out.duplicates += 1;
            } else {
                out.new += 1;
                out.first_seq.get_or_insert(e.seq);
                out.last_seq = Some(e.seq);
            }
        }
        done += receipt.events.len() as u64;
        progress.set(done);
        out.checkpoint = receipt.checkpoint;
    }
}

pub fn run(data: &Path, file: &Path, batch_size: usize) -> Result<()> {
    if batch_size == 0 {
        return Err(InputError("--batch-size must be at least 1".into()).into());
    }
    let text = read_input(file)?;
    let lines = ndjson_lines(&text);
    let events = match prepare_lines(&lines, &local_principal(), 2) {
        Ok(events) => events,
        Err(errors) => {
            for e in errors.iter().take(20) {
                eprintln!("mlaudit: {e}");
            }
            let more = errors.len().saturating_sub(20);
            let tail = if more > 0 {
                format!(" (and {more} more)")
            } else {
                String::new()
            };
            return Err(InputError(format!(
                "{} invalid line(s){tail}; nothing was appended",
                errors.len()
            ))
            .into());
        }
    };
    let store = ledger::open(data)?;
    let mut progress = Progress::new("appending", events.len() as u64);
    let summary = append_events(&store, events, batch_size, &mut progress)?;
    progress.finish();
    match (summary.first_seq, summary.last_seq) {
        (Some(a), Some(b)) => println!("appended {} events, seq {a}..={b}", summary.new),
        _ => println!("appended 0 events"),
    }
    if summary.duplicates > 0 {
        println!(
            "{} events were already in the log (same id) and were not written again",
            summary.duplicates
        );
    }
    print!("{}", summary.checkpoint);
    store.close()?;
    Ok(())
}
