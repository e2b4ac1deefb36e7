//! `mlaudit append`: validate every line first, then append in durable batches.
//!
//! Nothing is written unless every line is valid; each batch is then atomic and durable before
//! the next is sent, and ids make a re-run after an interruption safe (already-stored events
//! are reported as duplicates, not written twice). Parsing of the next batch overlaps the
//! durable append of the current one.

use crate::ledger::{self, InputError};
use crate::output::Progress;
use anyhow::{Context, Result};
use mlaudit_core::event::PreparedEvent;
use mlaudit_store::ingest::{ndjson_lines, prepare_lines};
use mlaudit_store::Store;
use std::io::Read;
use std::path::Path;

/// The principal recorded for events appended from this command line.
pub fn local_principal() -> String {
    let user = ["USER", "LOGNAME"].iter().find_map(|v| std::env::var(v).ok().filter(|u| !u.is_empty())).unwrap_or_else(|| "unknown".into());
    format!("local:{user}")
}

fn read_input(file: &Path) -> Result<String> {
    let mut bytes = Vec::new();
    if file == Path::new("-") {
        std::io::stdin().read_to_end(&mut bytes).context("reading standard input")?;
    } else {
        bytes = std::fs::read(file).map_err(|e| InputError(format!("cannot read {}: {e}", file.display())))?;
    }
    String::from_utf8(bytes).map_err(|e| {
        let line = 1 + e.utf8_error().valid_up_to().min(e.as_bytes().len());
        let line_no = e.as_bytes()[..line - 1].iter().filter(|b| **b == b'\n').count() + 1;
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

/// Appends validated events in durable batches of `batch_size`.
pub fn append_events(store: &dyn Store, events: Vec<PreparedEvent>, batch_size: usize, progress: &mut Progress) -> Result<Appended> {
    let mut out = Appended::default();
    let mut done = 0u64;
    let mut rest = events;
    while !rest.is_empty() {
        let tail = rest.split_off(batch_size.min(rest.len()));
        let receipt = store.append(std::mem::replace(&mut rest, tail))?;
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
    Ok(out)
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
            let tail = if more > 0 { format!(" (and {more} more)") } else { String::new() };
            return Err(InputError(format!("{} invalid line(s){tail}; nothing was appended", errors.len())).into());
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
        println!("{} events were already in the log (same id) and were not written again", summary.duplicates);
    }
    print!("{}", summary.checkpoint);
    store.close()?;
    Ok(())
}
