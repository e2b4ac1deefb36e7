//! Joining the two halves of an inference (KServe and Seldon log a request and its response
//! as two CloudEvents, in either order) into one `prediction.served`.
//!
//! **Durability.** A half is answered 200 only once it is durable somewhere: either in the log
//! (joined with its partner), or in the join journal (`pending.jsonl`, fsynced before the
//! answer) while it waits. After a crash the journal is replayed: every waiting half waits
//! again, and is written alone when its timeout passes. A half is forgotten (a `done` line)
//! only after the event that carries it is durable in the log. The event ids are derived from
//! the join key, so a half replayed after its joined event was written is recognised
//! (`prediction::joined_id`) and not written twice.
//!
//! The journal is append-only JSON lines — `{"op":"add", …half…}` and `{"op":"done", …}` —
//! and is rewritten with only the waiting halves when it is opened and whenever it grows past
//! [`COMPACT_BYTES`] with nothing waiting. A torn last line (a crash mid-write) is ignored: its
//! half was never acknowledged.

use mlaudit_integrations::cloudevents::{from_structured, Half, Logger, Side};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Mutex;

/// A journal with nothing waiting is emptied once it is larger than this.
pub const COMPACT_BYTES: u64 = 1 << 20;

/// A waiting half.
#[derive(Debug, Clone, PartialEq)]
pub struct Waiting {
    pub half: Half,
    /// Who sent it (recorded on the event that carries it).
    pub principal: String,
    /// The sample rate it was kept at.
    pub rate: f64,
    /// When it arrived (Unix ns).
    pub arrived_ns: i64,
    /// Its size as held (the joiner sets it when the half is offered).
    pub bytes: u64,
}

/// What became of an offered half.
#[derive(Debug)]
pub enum Offer {
    /// Its partner was waiting: write the joined event, then call [`Joiner::forget`] with the
    /// partner (or [`Joiner::put_back`] if the write failed).
    Joined(Box<Waiting>),
    /// It waits, durably, for its partner.
    Waiting,
    /// The same half is already waiting (a retry).
    Duplicate,
}

type Key = (Logger, String);

/// Why the journal failed.
#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error("join journal {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("{0} inference halves are already waiting for their partners (the limit)")]
    Full(usize),
    #[error("the inference halves waiting for their partners already hold {0} bytes (the limit)")]
    FullBytes(u64),
}

#[derive(Debug)]
struct Journal {
    path: PathBuf,
    file: File,
    bytes: u64,
}

/// The halves waiting for their partners.
#[derive(Debug)]
pub struct Joiner {
    waiting: Mutex<HashMap<Key, Waiting>>,
    journal: Option<Mutex<Journal>>,
    /// Bytes of the waiting halves.
    held: std::sync::atomic::AtomicU64,
}

fn io_error(path: &Path) -> impl Fn(std::io::Error) -> JournalError + '_ {
    move |source| JournalError::Io {
        path: path.display().to_string(),
        source,
    }
}

fn record(op: &str, w: &Waiting) -> Value {
    json!({
        "op": op,
        "logger": w.half.logger.as_str(),
        "side": w.half.side.as_str(),
        "key": w.half.key,
        "request": w.half.request,
        "model": w.half.model,
        "principal": w.principal,
        "rate": w.rate,
        "arrived_ns": w.arrived_ns,
        "event": if op == "add" { w.half.event.to_json() } else { Value::Null },
    })
}

fn parse_record(line: &str) -> Option<(String, Waiting)> {
    let v: Value = serde_json::from_str(line).ok()?;
    let logger = match v.get("logger")?.as_str()? {
        "kserve" => Logger::Kserve,
        "seldon" => Logger::Seldon,
        _ => return None,
    };
    let side = match v.get("side")?.as_str()? {
        "request" => Side::Request,
        "response" => Side::Response,
        _ => return None,
    };
    let op = v.get("op")?.as_str()?.to_owned();
    let event = match v.get("event") {
        Some(e) if e.is_object() => from_structured(e.clone()).ok()?,
        _ => mlaudit_integrations::cloudevents::CloudEvent {
            id: String::new(),
            source: String::new(),
            ty: String::new(),
            time: None,
            subject: None,
            datacontenttype: None,
            dataschema: None,
            extensions: Default::default(),
            data: None,
            data_base64: None,
        },
    };
    Some((
        op,
        Waiting {
            half: Half {
                logger,
                side,
                key: v.get("key")?.as_str()?.to_owned(),
                request: v.get("request")?.as_str()?.to_owned(),
                model: v.get("model")?.as_str()?.to_owned(),
                event,
            },
            principal: v.get("principal")?.as_str()?.to_owned(),
            rate: v.get("rate")?.as_f64()?,
            arrived_ns: v.get("arrived_ns")?.as_i64()?,
            bytes: line.len() as u64,
        },
    ))
}

impl Journal {
    fn append(&mut self, line: &Value, sync: bool) -> Result<(), JournalError> {
        let mut bytes = line.to_string().into_bytes();
        bytes.push(b'\n');
        let path = self.path.clone();
        self.file.write_all(&bytes).map_err(io_error(&path))?;
        if sync {
            self.file.sync_data().map_err(io_error(&path))?;
        }
        self.bytes += bytes.len() as u64;
        Ok(())
    }

    /// Replaces the file with one holding only `waiting` (write, fsync, rename, fsync dir).
    fn rewrite(path: &Path, waiting: &HashMap<Key, Waiting>) -> Result<Journal, JournalError> {
        let tmp = path.with_extension("jsonl.tmp");
        let mut text = String::new();
        for w in waiting.values() {
            text.push_str(&record("add", w).to_string());
            text.push('\n');
        }
        let mut f = private_file(&tmp, true).map_err(io_error(&tmp))?;
        f.write_all(text.as_bytes()).map_err(io_error(&tmp))?;
        f.sync_all().map_err(io_error(&tmp))?;
        std::fs::rename(&tmp, path).map_err(io_error(path))?;
        if let Some(dir) = path.parent() {
            File::open(dir)
                .and_then(|d| d.sync_all())
                .map_err(io_error(dir))?;
        }
        let file = private_file(path, false).map_err(io_error(path))?;
        Ok(Journal {
            path: path.to_owned(),
            file,
            bytes: text.len() as u64,
        })
    }
}

fn private_file(path: &Path, truncate: bool) -> std::io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    OpenOptions::new()
        .create(true)
        .append(!truncate)
        .write(true)
        .truncate(truncate)
        .mode(0o600)
        .open(path)
}

impl Joiner {
    /// A joiner without a journal: waiting halves live in memory only, and a crash loses
    /// them. For tests and embedders; `mlaudit serve` always opens a journal.
    pub fn in_memory() -> Joiner {
        Joiner {
            waiting: Mutex::new(HashMap::new()),
            journal: None,
            held: Default::default(),
        }
    }

    /// Opens (or creates) the journal at `path` and replays it.
    pub fn open(path: &Path) -> Result<Joiner, JournalError> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(io_error(dir))?;
        }
        let mut waiting: HashMap<Key, Waiting> = HashMap::new();
        match File::open(path) {
            Ok(f) => {
                for line in std::io::BufReader::new(f).lines() {
                    let Ok(line) = line else { break };
                    // A line that does not parse is the torn tail of a crash (never
                    // acknowledged): stop there.
                    let Some((op, w)) = parse_record(&line) else {
                        break;
                    };
                    let key = (w.half.logger, w.half.key.clone());
                    match op.as_str() {
                        "add" => {
                            waiting.insert(key, w);
                        }
                        _ => {
                            if waiting
                                .get(&key)
                                .is_some_and(|x| x.half.side == w.half.side)
                            {
                                waiting.remove(&key);
                            }
                        }
                    }
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_error(path)(e)),
        }
        let journal = Journal::rewrite(path, &waiting)?;
        let held = waiting.values().map(|w| w.bytes).sum::<u64>();
        Ok(Joiner {
            waiting: Mutex::new(waiting),
            journal: Some(Mutex::new(journal)),
            held: held.into(),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Key, Waiting>> {
        self.waiting.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// How many halves wait.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes the waiting halves hold.
    pub fn held_bytes(&self) -> u64 {
        self.held.load(Ordering::Relaxed)
    }

    fn release(&self, w: &Waiting) {
        self.held
            .fetch_sub(w.bytes.min(self.held_bytes()), Ordering::Relaxed);
    }

    /// Offers a half: joined with its waiting partner, or made to wait (durably, before this
    /// returns), unless `limits` (halves, bytes) are reached. Blocking (an fsync): call it off
    /// the async workers.
    pub fn offer(&self, mut w: Waiting, limits: (usize, u64)) -> Result<Offer, JournalError> {
        let key = (w.half.logger, w.half.key.clone());
        let line = record("add", &w);
        w.bytes = line.to_string().len() as u64;
        {
            let mut waiting = self.lock();
            match waiting.get(&key) {
                Some(other) if other.half.side == w.half.side => return Ok(Offer::Duplicate),
                Some(_) => {
                    let partner = waiting.remove(&key).ok_or(JournalError::Full(0))?;
                    self.release(&partner);
                    return Ok(Offer::Joined(Box::new(partner)));
                }
                None if waiting.len() >= limits.0 => return Err(JournalError::Full(waiting.len())),
                None if self.held_bytes() + w.bytes > limits.1 => {
                    return Err(JournalError::FullBytes(self.held_bytes()))
                }
                // Visible at once, so that a partner arriving while this half is being
                // journaled joins it.
                None => {
                    self.held.fetch_add(w.bytes, Ordering::Relaxed);
                    waiting.insert(key.clone(), w.clone())
                }
            };
        }
        if let Some(journal) = &self.journal {
            let mut j = journal.lock().unwrap_or_else(|p| p.into_inner());
            if let Err(e) = j.append(&line, true) {
                drop(j);
                let mut waiting = self.lock();
                if waiting
                    .get(&key)
                    .is_some_and(|x| x.half.side == w.half.side)
                {
                    if let Some(gone) = waiting.remove(&key) {
                        self.release(&gone);
                    }
                }
                return Err(e);
            }
        }
        Ok(Offer::Waiting)
    }

    /// Puts back a half taken by [`Offer::Joined`] or [`Joiner::due`] whose event could not
    /// be written (it is still in the journal).
    pub fn put_back(&self, w: Waiting) {
        let key = (w.half.logger, w.half.key.clone());
        let mut waiting = self.lock();
        if let std::collections::hash_map::Entry::Vacant(slot) = waiting.entry(key) {
            self.held.fetch_add(w.bytes, Ordering::Relaxed);
            slot.insert(w);
        }
    }

    /// Forgets a half whose event is durable in the log.
    pub fn forget(&self, w: &Waiting) {
        let Some(journal) = &self.journal else { return };
        let empty = self.is_empty();
        let mut j = journal.lock().unwrap_or_else(|p| p.into_inner());
        // Not synced: a lost `done` only makes the half wait again after a crash, and its
        // derived id keeps it from being written twice.
        if let Err(e) = j.append(&record("done", w), false) {
            tracing::warn!(error = %e, "cannot note a joined half in the journal");
        }
        if empty && j.bytes > COMPACT_BYTES {
            let path = j.path.clone();
            match Journal::rewrite(&path, &self.lock()) {
                Ok(fresh) => *j = fresh,
                Err(e) => tracing::warn!(error = %e, "cannot compact the join journal"),
            }
        }
    }

    /// Takes the halves that arrived before `cutoff_ns` (their partner did not come).
    pub fn due(&self, cutoff_ns: i64) -> Vec<Waiting> {
        let mut waiting = self.lock();
        let keys: Vec<Key> = waiting
            .iter()
            .filter(|(_, w)| w.arrived_ns < cutoff_ns)
            .map(|(k, _)| k.clone())
            .collect();
        let due: Vec<Waiting> = keys
            .into_iter()
            .filter_map(|k| waiting.remove(&k))
            .collect();
        for w in &due {
            self.release(w);
        }
        due
    }
}
