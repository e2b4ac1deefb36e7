//! `mlaudit append`: validate every line first, then append in durable batches, streaming.
//!
//! Nothing is written unless every line is valid; the batches are then submitted in order, a
//! few at a time so that the store commits one while it syncs another, and each is atomic and
//! durable when it is answered. Ids make a re-run after an interruption safe (already-stored
//! events are reported as duplicates, not written twice).
//!
//! **Memory:** the input is read twice, [`CHUNK_LINES`] lines at a time (validate, then
//! append); what is held is one chunk and the batches in flight, whatever the input's size. A
//! line longer than an event may be is refused without being held.

use crate::ledger::{self, InputError};
use crate::output::Progress;
use anyhow::{Context, Result};
use mlaudit_core::event::PreparedEvent;
use mlaudit_store::ingest::prepare_lines;
use mlaudit_store::{AppendReceipt, Store, StoreError};
use std::collections::VecDeque;
use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::mpsc;

/// The principal recorded for events appended from this command line.
pub fn local_principal() -> String {
    let user = ["USER", "LOGNAME"]
        .iter()
        .find_map(|v| std::env::var(v).ok().filter(|u| !u.is_empty()))
        .unwrap_or_else(|| "unknown".into());
    format!("local:{user}")
}

/// Lines validated or appended at a time: what the command holds in memory besides the batches
/// in flight.
const CHUNK_LINES: usize = 4096;
/// Longest line read (an event is at most 1 MiB; a longer line is refused without being held).
const MAX_LINE_BYTES: u64 = (mlaudit_core::event::MAX_EVENT_BYTES as u64) + 4096;

/// Non-blank lines of an NDJSON stream, `CHUNK_LINES` at a time, each with its 1-based line
/// number, or the line's problem (not UTF-8, too long). Counts the bytes read.
struct Lines<R> {
    reader: R,
    line: usize,
    bytes: u64,
    done: bool,
}

type Chunk = Vec<(usize, Result<String, &'static str>)>;

impl<R: BufRead> Lines<R> {
    fn new(reader: R) -> Lines<R> {
        Lines {
            reader,
            line: 0,
            bytes: 0,
            done: false,
        }
    }

    /// The next chunk; empty at the end of the input.
    fn chunk(&mut self) -> std::io::Result<Chunk> {
        let mut out = Vec::new();
        let mut buf = Vec::new();
        while !self.done && out.len() < CHUNK_LINES {
            buf.clear();
            let n = (&mut self.reader)
                .take(MAX_LINE_BYTES)
                .read_until(b'\n', &mut buf)?;
            if n == 0 {
                self.done = true;
                break;
            }
            self.bytes += n as u64;
            self.line += 1;
            if buf.last() != Some(&b'\n') && n as u64 == MAX_LINE_BYTES {
                // Skip the rest of the over-long line.
                loop {
                    let (skip, found) = {
                        let avail = self.reader.fill_buf()?;
                        match avail.iter().position(|b| *b == b'\n') {
                            Some(i) => (i + 1, true),
                            None => (avail.len(), avail.is_empty()),
                        }
                    };
                    self.reader.consume(skip);
                    self.bytes += skip as u64;
                    if found {
                        break;
                    }
                }
                out.push((self.line, Err("the line is longer than an event may be")));
                continue;
            }
            match std::str::from_utf8(&buf) {
                Ok(text) if text.trim().is_empty() => {}
                Ok(text) => out.push((
                    self.line,
                    Ok(text.trim_end_matches(['\n', '\r']).to_owned()),
                )),
                Err(_) => out.push((self.line, Err("input is not valid UTF-8"))),
            }
        }
        Ok(out)
    }
}

/// Validates a chunk on two threads: its events, or the errors of its bad lines.
fn prepare_chunk(chunk: &Chunk, principal: &str) -> Result<Vec<PreparedEvent>, Vec<String>> {
    let mut errors: Vec<(usize, String)> = chunk
        .iter()
        .filter_map(|(n, l)| l.as_ref().err().map(|e| (*n, format!("line {n}: {e}"))))
        .collect();
    let lines: Vec<(usize, &str)> = chunk
        .iter()
        .filter_map(|(n, l)| l.as_ref().ok().map(|t| (*n, t.as_str())))
        .collect();
    match prepare_lines(&lines, principal, 2) {
        Ok(events) if errors.is_empty() => Ok(events),
        Ok(_) => Err(errors.into_iter().map(|(_, e)| e).collect()),
        Err(bad) => {
            errors.extend(bad.into_iter().map(|e| (e.line, e.to_string())));
            errors.sort_by_key(|(n, _)| *n);
            Err(errors.into_iter().map(|(_, e)| e).collect())
        }
    }
}

/// The input, readable twice: a file as it is, standard input copied on the first read to a
/// private temporary file beside the data directory (removed when done).
struct Input {
    path: PathBuf,
    copy: Option<PathBuf>,
}

impl Input {
    fn open(file: &Path, data: &Path) -> Result<Input> {
        if file != Path::new("-") {
            std::fs::metadata(file)
                .map_err(|e| InputError(format!("cannot read {}: {e}", file.display())))?;
            return Ok(Input {
                path: file.to_owned(),
                copy: None,
            });
        }
        let dir = data
            .canonicalize()
            .ok()
            .and_then(|d| d.parent().map(Path::to_owned))
            .unwrap_or_else(std::env::temp_dir);
        let copy = dir.join(format!(".mlaudit-append-{}.ndjson", std::process::id()));
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&copy)
            .with_context(|| format!("creating {}", copy.display()))?;
        let copied = std::io::copy(&mut std::io::stdin().lock(), &mut f);
        let input = Input {
            path: copy.clone(),
            copy: Some(copy),
        };
        copied.context("reading standard input")?;
        Ok(input)
    }

    fn lines(&self) -> Result<Lines<BufReader<File>>> {
        let f = File::open(&self.path)
            .map_err(|e| InputError(format!("cannot read {}: {e}", self.path.display())))?;
        Ok(Lines::new(BufReader::with_capacity(1 << 20, f)))
    }

    fn len(&self) -> u64 {
        std::fs::metadata(&self.path).map_or(0, |m| m.len())
    }
}

impl Drop for Input {
    fn drop(&mut self) {
        if let Some(copy) = &self.copy {
            let _ = std::fs::remove_file(copy);
        }
    }
}

/// Most errors printed; the rest are counted.
const SHOWN_ERRORS: usize = 20;

/// Validates every line (the first pass): the number of events, or an error after printing
/// the first bad lines.
fn validate(input: &Input, principal: &str) -> Result<u64> {
    let mut lines = input.lines()?;
    let mut progress = Progress::bytes("validating", input.len());
    let (mut events, mut bad) = (0u64, 0usize);
    loop {
        let chunk = lines.chunk().context("reading the input")?;
        if chunk.is_empty() {
            break;
        }
        match prepare_chunk(&chunk, principal) {
            Ok(ok) => events += ok.len() as u64,
            Err(errors) => {
                for e in errors.iter().take(SHOWN_ERRORS.saturating_sub(bad)) {
                    eprintln!("mlaudit: {e}");
                }
                bad += errors.len();
            }
        }
        progress.set_bytes(lines.bytes, events);
    }
    progress.finish();
    if bad > 0 {
        let more = bad.saturating_sub(SHOWN_ERRORS);
        let tail = if more > 0 {
            format!(" (and {more} more)")
        } else {
            String::new()
        };
        return Err(
            InputError(format!("{bad} invalid line(s){tail}; nothing was appended")).into(),
        );
    }
    Ok(events)
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
const IN_FLIGHT: usize = 2;

/// Appends validated events in durable batches of `batch_size`, up to [`IN_FLIGHT`] at a
/// time. Each batch is atomic and durable when answered; answers are taken in submission
/// order, and the first failure is returned (batches still in flight may be written after it:
/// the events' ids make a re-run safe).
/// Submits batches of `batch_size` events, up to [`IN_FLIGHT`] at a time, and takes the
/// answers in submission order.
struct Sender<'s> {
    store: &'s dyn Store,
    batch_size: usize,
    batch: Vec<PreparedEvent>,
    /// One channel per batch: a store that dropped a callback unanswered ends the wait with an
    /// error instead of a hang.
    in_flight: VecDeque<mpsc::Receiver<Result<AppendReceipt, StoreError>>>,
}

impl<'s> Sender<'s> {
    fn new(store: &'s dyn Store, batch_size: usize) -> Sender<'s> {
        Sender {
            store,
            batch_size: batch_size.max(1),
            batch: Vec::new(),
            in_flight: VecDeque::new(),
        }
    }

    fn push(&mut self, e: PreparedEvent, out: &mut Appended) -> Result<()> {
        self.batch.push(e);
        if self.batch.len() == self.batch_size {
            self.submit(out)?;
        }
        Ok(())
    }

    fn submit(&mut self, out: &mut Appended) -> Result<()> {
        if self.in_flight.len() == IN_FLIGHT {
            self.answer(out)?;
        }
        let batch = std::mem::take(&mut self.batch);
        let (tx, rx) = mpsc::channel();
        self.store
            .submit(batch, Box::new(move |outcome| drop(tx.send(outcome))));
        self.in_flight.push_back(rx);
        Ok(())
    }

    /// Waits for the oldest batch in flight.
    fn answer(&mut self, out: &mut Appended) -> Result<()> {
        let Some(oldest) = self.in_flight.pop_front() else {
            return Ok(());
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
        out.checkpoint = receipt.checkpoint;
        Ok(())
    }

    fn finish(&mut self, out: &mut Appended) -> Result<()> {
        if !self.batch.is_empty() {
            self.submit(out)?;
        }
        while !self.in_flight.is_empty() {
            self.answer(out)?;
        }
        Ok(())
    }
}

pub fn run(data: &Path, file: &Path, batch_size: usize) -> Result<()> {
    if batch_size == 0 {
        return Err(InputError("--batch-size must be at least 1".into()).into());
    }
    let principal = local_principal();
    let input = Input::open(file, data)?;
    // Two passes over the input, each holding one chunk of lines and the batches in flight:
    // every line is validated before anything is written, in memory that does not grow with
    // the input.
    let total = validate(&input, &principal)?;
    let store = ledger::open(data)?;
    let mut progress = Progress::new("appending", total);
    let mut lines = input.lines()?;
    let mut summary = Appended::default();
    let mut sender = Sender::new(&store, batch_size);
    loop {
        let chunk = lines.chunk().context("reading the input again")?;
        if chunk.is_empty() {
            break;
        }
        let events = prepare_chunk(&chunk, &principal).map_err(|errors| {
            InputError(format!(
                "the input changed while it was appended: {}",
                errors.first().map_or("", String::as_str)
            ))
        })?;
        for e in events {
            sender.push(e, &mut summary)?;
        }
        progress.set(summary.new + summary.duplicates);
    }
    sender.finish(&mut summary)?;
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
