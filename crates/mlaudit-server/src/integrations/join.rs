//! Joining the two halves of an inference (KServe and Seldon log a request and its response
//! as two CloudEvents, in either order) into one `prediction.served`.
//!
//! **Durability.** A half is answered 200 only once it is durable somewhere: either in the log
//! (joined with its partner), or in the join journal (`pending.jsonl`, fsynced before the
//! answer) while it waits — a retry of a waiting half is journaled again before its own 200,
//! so that no answer gets ahead of an fsync. After a crash the journal is replayed: every
//! waiting half waits again, and is written alone when its timeout passes. A half is
//! forgotten (a `done` line) only after the event that carries it is durable in the log; until
//! then, while its event is on its way (joined, or being written alone), it is *in flight* and
//! still part of every compaction.
//!
//! **Keys.** Halves join on (principal, logger, key): a writer can never complete, or
//! pre-empt, another principal's inference. A half whose key and side are already waiting with
//! other content is not a retry ([`Offer::Differs`]): the caller writes it alone.
//!
//! **The journal** is append-only JSON lines — `{"op":"add", …half…}` and `{"op":"done", …}`
//! — rewritten with only the live halves (waiting and in flight) when it is opened and whenever
//! it has grown past [`COMPACT_BYTES`] and four times what is live. A torn last line (a crash
//! mid-write) is ignored: its half was never acknowledged. Any other line that does not parse
//! is skipped and reported, after the whole file is copied aside (`pending.jsonl.bad-<ns>`),
//! so that nothing is destroyed.

use mlaudit_integrations::cloudevents::{CloudEvent, Half, Logger, Side};
use serde_json::{json, Map, Value};
use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// The journal is compacted once it is larger than this and four times what is live.
pub const COMPACT_BYTES: u64 = 1 << 20;

/// A waiting half.
#[derive(Debug, Clone, PartialEq)]
pub struct Waiting {
    pub half: Half,
    /// Who sent it (recorded on the event that carries it; part of the join key).
    pub principal: String,
    /// The sample rate it was kept at.
    pub rate: f64,
    /// When it arrived (Unix ns).
    pub arrived_ns: i64,
    /// Its size as held (the joiner sets it when the half is offered).
    pub bytes: u64,
}

impl Waiting {
    /// The SHA-256 of what the half carries: its context and its data.
    pub fn digest(&self) -> String {
        mlaudit_integrations::sha256_hex(event_json(&self.half.event).to_string().as_bytes())
    }
}

/// What became of an offered half.
#[derive(Debug)]
pub enum Offer {
    /// Its partner was waiting: write the joined event, then call [`Joiner::forget`] with the
    /// partner (or [`Joiner::put_back`] if the write failed).
    Joined(Box<Waiting>),
    /// It waits, durably, for its partner.
    Waiting,
    /// The same half (same content) was already waiting: a retry, journaled again.
    Duplicate,
    /// A half of the same key and side waits with other content: this is another inference
    /// reusing the id; write it alone.
    Differs,
}

/// (principal, logger, key).
type Key = (String, Logger, String);

fn key_of(w: &Waiting) -> Key {
    (w.principal.clone(), w.half.logger, w.half.key.clone())
}

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

/// The halves waiting for their partners, and those whose events are on their way.
#[derive(Debug, Default)]
struct Halves {
    waiting: HashMap<Key, Waiting>,
    in_flight: HashMap<(Key, Side), Waiting>,
    /// Bytes of the waiting halves.
    held: u64,
}

impl Halves {
    fn insert(&mut self, w: Waiting) {
        self.held += w.bytes;
        if let Some(old) = self.waiting.insert(key_of(&w), w) {
            self.held = self.held.saturating_sub(old.bytes);
        }
    }

    fn remove(&mut self, key: &Key) -> Option<Waiting> {
        let w = self.waiting.remove(key)?;
        self.held = self.held.saturating_sub(w.bytes);
        Some(w)
    }

    /// Takes a waiting half into flight.
    fn launch(&mut self, key: &Key) -> Option<Waiting> {
        let w = self.remove(key)?;
        self.in_flight.insert((key.clone(), w.half.side), w.clone());
        Some(w)
    }

    fn live(&self) -> impl Iterator<Item = &Waiting> {
        self.waiting.values().chain(self.in_flight.values())
    }
}

/// The halves waiting for their partners.
#[derive(Debug)]
pub struct Joiner {
    halves: Mutex<Halves>,
    journal: Option<Mutex<Journal>>,
}

fn io_error(path: &Path) -> impl Fn(std::io::Error) -> JournalError + '_ {
    move |source| JournalError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// A CloudEvent as the journal keeps it: every field under its own name, nothing merged, so
/// that it reads back exactly (an extension can never pose as the data).
fn event_json(e: &CloudEvent) -> Value {
    json!({
        "id": e.id, "source": e.source, "type": e.ty, "time": e.time, "subject": e.subject,
        "datacontenttype": e.datacontenttype, "dataschema": e.dataschema,
        "extensions": e.extensions, "data": e.data, "data_base64": e.data_base64,
    })
}

fn event_from_json(v: &Value) -> Option<CloudEvent> {
    let text = |name: &str| v.get(name).and_then(Value::as_str).map(str::to_owned);
    let extensions = match v.get("extensions")? {
        Value::Object(m) => m.clone().into_iter().collect(),
        _ => return None,
    };
    Some(CloudEvent {
        id: text("id")?,
        source: text("source")?,
        ty: text("type")?,
        time: text("time"),
        subject: text("subject"),
        datacontenttype: text("datacontenttype"),
        dataschema: text("dataschema"),
        extensions,
        data: v.get("data").filter(|d| !d.is_null()).cloned(),
        data_base64: text("data_base64"),
    })
}

fn record(op: &str, w: &Waiting) -> Value {
    let mut r = Map::new();
    r.insert("op".into(), json!(op));
    r.insert("logger".into(), json!(w.half.logger.as_str()));
    r.insert("side".into(), json!(w.half.side.as_str()));
    r.insert("key".into(), json!(w.half.key));
    r.insert("principal".into(), json!(w.principal));
    if op == "add" {
        r.insert("request".into(), json!(w.half.request));
        r.insert("model".into(), json!(w.half.model));
        r.insert("rate".into(), json!(w.rate));
        r.insert("arrived_ns".into(), json!(w.arrived_ns));
        r.insert("event".into(), event_json(&w.half.event));
    }
    Value::Object(r)
}

/// A journal line: its op, its key and side, and (for `add`) the half.
fn parse_record(line: &str) -> Option<(String, Key, Side, Option<Waiting>)> {
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
    let principal = v.get("principal")?.as_str()?.to_owned();
    let key = v.get("key")?.as_str()?.to_owned();
    let waiting = match op.as_str() {
        "add" => Some(Waiting {
            half: Half {
                logger,
                side,
                key: key.clone(),
                request: v.get("request")?.as_str()?.to_owned(),
                model: v.get("model")?.as_str()?.to_owned(),
                event: event_from_json(v.get("event")?)?,
            },
            principal: principal.clone(),
            rate: v.get("rate")?.as_f64()?,
            arrived_ns: v.get("arrived_ns")?.as_i64()?,
            bytes: line.len() as u64,
        }),
        "done" => None,
        _ => return None,
    };
    Some((op, (principal, logger, key), side, waiting))
}

impl Journal {
    fn append(&mut self, line: &str, sync: bool) -> Result<(), JournalError> {
        let path = self.path.clone();
        self.file
            .write_all(format!("{line}\n").as_bytes())
            .map_err(io_error(&path))?;
        if sync {
            self.file.sync_data().map_err(io_error(&path))?;
        }
        self.bytes += line.len() as u64 + 1;
        Ok(())
    }

    /// Replaces the file with one holding only `live` (write, fsync, rename, fsync dir).
    fn rewrite<'a>(
        path: &Path,
        live: impl Iterator<Item = &'a Waiting>,
    ) -> Result<Journal, JournalError> {
        let tmp = path.with_extension("jsonl.tmp");
        let mut text = String::new();
        for w in live {
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

/// Replays a journal: the waiting halves, and the number of lines (not the last) that did
/// not parse.
fn replay(path: &Path) -> Result<(Halves, usize), JournalError> {
    let mut halves = Halves::default();
    let lines: Vec<String> = match File::open(path) {
        Ok(f) => std::io::BufReader::new(f)
            .split(b'\n')
            .map(|l| l.map(|b| String::from_utf8_lossy(&b).into_owned()))
            .collect::<Result<_, _>>()
            .map_err(io_error(path))?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(io_error(path)(e)),
    };
    let mut bad = 0;
    let last = lines.len().saturating_sub(1);
    for (n, line) in lines.iter().enumerate() {
        match parse_record(line) {
            Some((_, _, _, Some(w))) => halves.insert(w),
            Some((_, key, side, None)) => {
                if halves
                    .waiting
                    .get(&key)
                    .is_some_and(|x| x.half.side == side)
                {
                    halves.remove(&key);
                }
            }
            // The torn tail of a crash: never acknowledged.
            None if n == last => {}
            None => bad += 1,
        }
    }
    Ok((halves, bad))
}

impl Joiner {
    /// A joiner without a journal: waiting halves live in memory only, and a crash loses
    /// them. For tests and embedders; `mlaudit serve` always opens a journal.
    pub fn in_memory() -> Joiner {
        Joiner {
            halves: Mutex::new(Halves::default()),
            journal: None,
        }
    }

    /// Opens (or creates) the journal at `path` and replays it.
    pub fn open(path: &Path) -> Result<Joiner, JournalError> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(io_error(dir))?;
        }
        let (halves, bad) = replay(path)?;
        if bad > 0 {
            let aside = path.with_extension(format!("jsonl.bad-{}", crate::auth::now_ns()));
            std::fs::copy(path, &aside).map_err(io_error(&aside))?;
            tracing::error!(lines = bad, copy = %aside.display(), "the join journal held lines that do not parse; they are skipped, and the journal is kept as it was in the copy");
        }
        let journal = Journal::rewrite(path, halves.live())?;
        Ok(Joiner {
            halves: Mutex::new(halves),
            journal: Some(Mutex::new(journal)),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Halves> {
        self.halves.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// How many halves wait.
    pub fn len(&self) -> usize {
        self.lock().waiting.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes the waiting halves hold.
    pub fn held_bytes(&self) -> u64 {
        self.lock().held
    }

    fn journal_add(&self, line: &str) -> Result<(), JournalError> {
        match &self.journal {
            Some(journal) => journal
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .append(line, true),
            None => Ok(()),
        }
    }

    /// Offers a half: joined with its waiting partner, or made to wait (durably, before this
    /// returns), unless `limits` (halves, bytes) are reached. Blocking (an fsync): call it off
    /// the async workers.
    pub fn offer(&self, mut w: Waiting, limits: (usize, u64)) -> Result<Offer, JournalError> {
        let key = key_of(&w);
        let line = record("add", &w).to_string();
        w.bytes = line.len() as u64;
        {
            let mut halves = self.lock();
            match halves.waiting.get(&key) {
                Some(other) if other.half.side == w.half.side => {
                    if other.digest() != w.digest() {
                        return Ok(Offer::Differs);
                    }
                    drop(halves);
                    // A retry: journaled again, so that its 200 never precedes an fsync.
                    self.journal_add(&line)?;
                    return Ok(Offer::Duplicate);
                }
                Some(_) => {
                    let partner = halves.launch(&key).ok_or(JournalError::Full(0))?;
                    return Ok(Offer::Joined(Box::new(partner)));
                }
                None if halves.waiting.len() >= limits.0 => {
                    return Err(JournalError::Full(halves.waiting.len()))
                }
                None if halves.held + w.bytes > limits.1 => {
                    return Err(JournalError::FullBytes(halves.held))
                }
                // Visible at once, so that a partner arriving while this half is being
                // journaled joins it.
                None => halves.insert(w.clone()),
            }
        }
        if let Err(e) = self.journal_add(&line) {
            let mut halves = self.lock();
            if halves
                .waiting
                .get(&key)
                .is_some_and(|x| x.half.side == w.half.side)
            {
                halves.remove(&key);
            }
            return Err(e);
        }
        Ok(Offer::Waiting)
    }

    /// Puts back a half taken by [`Offer::Joined`] or [`Joiner::due`] whose event could not
    /// be written (it is still in the journal).
    pub fn put_back(&self, w: Waiting) {
        let key = key_of(&w);
        let mut halves = self.lock();
        halves.in_flight.remove(&(key.clone(), w.half.side));
        if !halves.waiting.contains_key(&key) {
            halves.insert(w);
        }
    }

    /// Forgets a half whose event is durable in the log.
    pub fn forget(&self, w: &Waiting) {
        let key = key_of(w);
        self.lock().in_flight.remove(&(key, w.half.side));
        let Some(journal) = &self.journal else { return };
        let mut j = journal.lock().unwrap_or_else(|p| p.into_inner());
        // Not synced: a lost `done` only makes the half wait again after a crash, and the
        // sweep then finds its event in the log and writes nothing.
        if let Err(e) = j.append(&record("done", w).to_string(), false) {
            tracing::warn!(error = %e, "cannot note a joined half in the journal");
        }
        let halves = self.lock();
        let live: u64 = halves.live().map(|w| w.bytes + 1).sum();
        if j.bytes > COMPACT_BYTES && j.bytes > 4 * live {
            let path = j.path.clone();
            match Journal::rewrite(&path, halves.live()) {
                Ok(fresh) => *j = fresh,
                Err(e) => tracing::warn!(error = %e, "cannot compact the join journal"),
            }
        }
    }

    /// Takes the halves that arrived before `cutoff_ns` (their partner did not come) into
    /// flight.
    pub fn due(&self, cutoff_ns: i64) -> Vec<Waiting> {
        let mut halves = self.lock();
        let keys: Vec<Key> = halves
            .waiting
            .iter()
            .filter(|(_, w)| w.arrived_ns < cutoff_ns)
            .map(|(k, _)| k.clone())
            .collect();
        keys.iter().filter_map(|k| halves.launch(k)).collect()
    }
}
