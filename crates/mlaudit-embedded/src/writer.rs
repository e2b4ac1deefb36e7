//! The single writer thread and its group commit.
//!
//! Appenders send batches over a bounded channel and wait for their reply. The writer takes
//! one batch, drains whatever else is queued (up to [`MAX_GROUP_EVENTS`]), and commits them as
//! one group:
//!
//! 1. dedup by id against the index and within the group; assign seqs and one receipt time;
//! 2. encode entries, hash leaves and frame records (on two threads for large groups);
//! 3. extend the tree, sign a checkpoint for the new size, frame it after the events;
//! 4. write the group to the current segment and `fdatasync` it — the durability point;
//! 5. write derived files, publish to readers, reply to every batch.
//!
//! A failed write or sync stops the writer for good: every later append fails until reopen,
//! which truncates whatever torn tail the failure left.

use crate::derived::{Derived, Meta, Pending};
use crate::index::{IdHasher, IndexRecord};
use crate::{lock_poisoned, record, segment_name, Segment, Shared, SEGMENT_TARGET};
use mlaudit_core::entry::{self, EntryRef, EventId, MAX_ID_LEN};
use mlaudit_core::event::{PreparedEvent, MAX_EVENT_BYTES};
use mlaudit_core::merkle::{leaf_hash, CompactRange, Hash};
use mlaudit_core::note::{Checkpoint, NoteSigner};
use mlaudit_store::{AppendReceipt, Appended, StoreError};
use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::hash::BuildHasherDefault;
use std::io::Write;
use std::sync::atomic::Ordering;
use std::sync::{mpsc, Arc, Mutex};
use std::thread::JoinHandle;

/// A group stops growing once it holds this many events.
pub const MAX_GROUP_EVENTS: usize = 1 << 16;
/// Groups at least this large are encoded and hashed on two threads.
const PARALLEL_MIN: usize = 512;
/// The derived watermark is advanced after this many events.
const META_EVERY: u64 = 1 << 20;

type Reply = mpsc::Sender<Result<AppendReceipt, StoreError>>;

enum Msg {
    Append(Vec<PreparedEvent>, Reply),
    Shutdown(mpsc::Sender<Result<(), StoreError>>),
}

/// A cloneable handle to the writer thread.
#[derive(Clone, Debug)]
pub(crate) struct Handle {
    tx: mpsc::SyncSender<Msg>,
    join: Arc<Mutex<Option<JoinHandle<()>>>>,
}

impl std::fmt::Debug for Msg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Msg")
    }
}

fn stopped() -> StoreError {
    StoreError::WriterStopped("the writer thread has exited".into())
}

impl Handle {
    pub fn append(&self, events: Vec<PreparedEvent>) -> Result<AppendReceipt, StoreError> {
        let (tx, rx) = mpsc::channel();
        self.tx.send(Msg::Append(events, tx)).map_err(|_| stopped())?;
        rx.recv().map_err(|_| stopped())?
    }

    pub fn shutdown(self) -> Result<(), StoreError> {
        let (tx, rx) = mpsc::channel();
        let result = match self.tx.send(Msg::Shutdown(tx)) {
            Ok(()) => rx.recv().map_err(|_| stopped()).and_then(|r| r),
            Err(_) => Ok(()),
        };
        if let Some(join) = self.join.lock().map_err(|_| lock_poisoned())?.take() {
            join.join().map_err(|_| StoreError::WriterStopped("the writer thread panicked".into()))?;
        }
        result
    }
}

pub(crate) fn spawn(shared: Arc<Shared>, mut state: State) -> Handle {
    let (tx, rx) = mpsc::sync_channel::<Msg>(1024);
    let join = std::thread::Builder::new()
        .name("mlaudit-writer".into())
        .spawn(move || state.run(&shared, rx))
        .ok();
    Handle { tx, join: Arc::new(Mutex::new(join)) }
}

/// The writer's private state.
#[derive(Debug)]
pub(crate) struct State {
    segment: Segment,
    log_end: u64,
    derived: Derived,
    range: CompactRange,
    signer: Option<NoteSigner>,
    meta: Meta,
    latest_note: Option<String>,
    failed: Option<String>,
    _lock: File,
}

/// One group's records, built by one thread.
struct Built {
    buf: Vec<u8>,
    leaves: Vec<Hash>,
    /// Offset of each event's record within `buf`.
    rel: Vec<u64>,
}

/// An event of the group that will be written.
struct NewEvent<'a> {
    ev: &'a PreparedEvent,
    id: EventId,
    seq: u64,
    time_ns: i64,
}

fn now_ns() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

fn limit_problem(events: &[PreparedEvent]) -> Option<(usize, String)> {
    events.iter().enumerate().find_map(|(i, ev)| {
        if ev.principal.len() > MAX_ID_LEN {
            Some((i, format!("principal is longer than {MAX_ID_LEN} bytes")))
        } else if ev.payload.len() > MAX_EVENT_BYTES {
            Some((i, format!("event is larger than {MAX_EVENT_BYTES} bytes")))
        } else {
            None
        }
    })
}

fn build(items: &[NewEvent<'_>], receipt_ns: i64) -> Result<Built, String> {
    let mut out = Built { buf: Vec::with_capacity(items.len() * 512), leaves: Vec::with_capacity(items.len()), rel: Vec::with_capacity(items.len()) };
    let mut entry_buf = Vec::with_capacity(256);
    for it in items {
        entry_buf.clear();
        let e = EntryRef {
            seq: it.seq,
            event_time_ns: it.time_ns,
            receipt_time_ns: receipt_ns,
            id: it.id,
            payload_sha256: &it.ev.payload_sha256,
            payload_len: it.ev.payload.len() as u32, // <= MAX_EVENT_BYTES, checked before
            actor_type: it.ev.actor_type,
            kind: &it.ev.kind,
            actor_id: &it.ev.actor_id,
            principal: &it.ev.principal,
            subjects: &it.ev.subjects,
        };
        entry::encode_into(&e, &mut entry_buf).map_err(|e| e.to_string())?;
        out.leaves.push(leaf_hash(&entry_buf));
        out.rel.push(out.buf.len() as u64);
        record::encode_into(&mut out.buf, record::EVENT, &entry_buf, &it.ev.payload);
    }
    Ok(out)
}

fn build_parallel(items: &[NewEvent<'_>], receipt_ns: i64) -> Result<Vec<Built>, String> {
    if items.len() < PARALLEL_MIN {
        return Ok(vec![build(items, receipt_ns)?]);
    }
    let (a, b) = items.split_at(items.len() / 2);
    std::thread::scope(|s| {
        let second = s.spawn(|| build(b, receipt_ns));
        let first = build(a, receipt_ns)?;
        let second = second.join().map_err(|_| "encoding thread panicked".to_owned())??;
        Ok(vec![first, second])
    })
}

impl State {
    #[allow(clippy::too_many_arguments)]
    pub fn new(segment: Segment, log_end: u64, derived: Derived, range: CompactRange, signer: Option<NoteSigner>, meta: Meta, lock: File) -> State {
        State { segment, log_end, derived, range, signer, meta, latest_note: None, failed: None, _lock: lock }
    }

    pub fn can_sign(&self) -> bool {
        self.signer.is_some()
    }

    /// Signs and durably stores a checkpoint for the current size (recovery of an unsigned tail,
    /// or the empty tree of a new log).
    pub fn sign_at_open(&mut self, shared: &Shared) -> std::io::Result<()> {
        self.write_group(shared, &[], now_ns()).map(drop)
    }

    fn run(&mut self, shared: &Shared, rx: mpsc::Receiver<Msg>) {
        while let Ok(msg) = rx.recv() {
            let mut group = Vec::new();
            let mut shutdown = None;
            let mut count = 0usize;
            match msg {
                Msg::Append(events, reply) => {
                    count += events.len();
                    group.push((events, reply));
                }
                Msg::Shutdown(tx) => shutdown = Some(tx),
            }
            while shutdown.is_none() && count < MAX_GROUP_EVENTS {
                match rx.try_recv() {
                    Ok(Msg::Append(events, reply)) => {
                        count += events.len();
                        group.push((events, reply));
                    }
                    Ok(Msg::Shutdown(tx)) => shutdown = Some(tx),
                    Err(_) => break,
                }
            }
            if !group.is_empty() {
                self.commit(shared, group);
            }
            if let Some(tx) = shutdown {
                let _ = tx.send(self.close(shared));
                return;
            }
        }
        let _ = self.close(shared);
    }

    fn close(&mut self, shared: &Shared) -> Result<(), StoreError> {
        if self.failed.is_some() {
            return Ok(());
        }
        self.commit_meta(shared).map_err(|source| StoreError::Io { context: "recording the derived watermark".into(), source })
    }

    fn commit_meta(&mut self, shared: &Shared) -> std::io::Result<()> {
        let index = shared.index.read().map_err(|_| std::io::Error::other("index lock poisoned"))?;
        let meta = Meta {
            size: index.len(),
            log_end: self.log_end,
            terms_bytes: self.derived.terms_bytes,
            term_count: index.term_count(),
            checkpoints: index.checkpoints.len() as u64,
        };
        drop(index);
        if meta != self.meta {
            self.derived.commit_meta(&meta)?;
            self.meta = meta;
        }
        Ok(())
    }

    fn commit(&mut self, shared: &Shared, group: Vec<(Vec<PreparedEvent>, Reply)>) {
        let refuse = |group: Vec<(Vec<PreparedEvent>, Reply)>, err: &dyn Fn() -> StoreError| {
            for (_, reply) in group {
                let _ = reply.send(Err(err()));
            }
        };
        if let Some(why) = self.failed.clone() {
            return refuse(group, &|| StoreError::WriterStopped(why.clone()));
        }
        if self.signer.is_none() {
            return refuse(group, &|| StoreError::ReadOnly);
        }
        let receipt_ns = now_ns();
        let mut outcomes: Vec<Result<Vec<Appended>, StoreError>> = Vec::with_capacity(group.len());
        let mut new: Vec<NewEvent<'_>> = Vec::new();
        {
            let Ok(index) = shared.index.read() else {
                return refuse(group, &lock_poisoned);
            };
            let mut in_group: HashMap<EventId, u64, BuildHasherDefault<IdHasher>> = HashMap::default();
            let mut next = index.len();
            for (events, _) in &group {
                if let Some((i, problem)) = limit_problem(events) {
                    outcomes.push(Err(StoreError::Rejected { index: i, problem }));
                    continue;
                }
                let mut results = Vec::with_capacity(events.len());
                for ev in events {
                    let id = ev.id.unwrap_or_else(|| EventId(*uuid::Uuid::new_v4().as_bytes()));
                    if let Some(seq) = index.ids.get(&id).or_else(|| in_group.get(&id)) {
                        results.push(Appended { id, seq: *seq, duplicate: true });
                        continue;
                    }
                    in_group.insert(id, next);
                    results.push(Appended { id, seq: next, duplicate: false });
                    new.push(NewEvent { ev, id, seq: next, time_ns: ev.event_time_ns.unwrap_or(receipt_ns) });
                    next += 1;
                }
                outcomes.push(Ok(results));
            }
        }
        let written = if new.is_empty() && self.latest_note.is_some() {
            Ok((self.range.size(), self.latest_note.clone().unwrap_or_default()))
        } else {
            self.write_group(shared, &new, receipt_ns)
        };
        match written {
            Ok((tree_size, checkpoint)) => {
                for ((_, reply), outcome) in group.into_iter().zip(outcomes) {
                    let _ = reply.send(outcome.map(|events| AppendReceipt { events, tree_size, checkpoint: checkpoint.clone() }));
                }
            }
            Err(e) => {
                let why = format!("write failed: {e}");
                self.failed = Some(why.clone());
                refuse(group, &|| StoreError::WriterStopped(why.clone()));
            }
        }
    }

    /// Writes events and a checkpoint as one durable group, then publishes them.
    fn write_group(&mut self, shared: &Shared, new: &[NewEvent<'_>], receipt_ns: i64) -> std::io::Result<(u64, String)> {
        let signer = self.signer.clone().ok_or_else(|| std::io::Error::other("read-only store"))?;
        let chunks = build_parallel(new, receipt_ns).map_err(std::io::Error::other)?;
        let mut pending = Pending::default();
        let mut positions = Vec::with_capacity(new.len());
        let mut pos = self.log_end;
        for c in &chunks {
            for (leaf, rel) in c.leaves.iter().zip(&c.rel) {
                self.range.push(*leaf, |level, _, hash| pending.node(level, &hash.0));
                positions.push(pos + rel);
            }
            pos += c.buf.len() as u64;
        }
        let size = self.range.size();
        let cp = Checkpoint { origin: signer.name().to_owned(), size, root: self.range.root() };
        let note = signer.sign(&cp.to_text()).map_err(std::io::Error::other)?;
        let mut cp_buf = Vec::with_capacity(note.len() + 32);
        record::encode_into(&mut cp_buf, record::CHECKPOINT, note.as_bytes(), &[]);
        let cp_pos = pos;
        // Intern terms and build index records before the sync; publication waits until after.
        let records: Vec<IndexRecord> = {
            let mut index = shared.index.write().map_err(|_| std::io::Error::other("index lock poisoned"))?;
            new.iter()
                .map(|n| index.record_for(&n.ev.kind, &n.ev.actor_id, &n.ev.subjects, n.id, n.time_ns, &mut |t, v| pending.term(t, v)))
                .collect()
        };
        let seg = &*self.segment.file;
        let mut w = seg;
        for c in &chunks {
            w.write_all(&c.buf)?;
        }
        w.write_all(&cp_buf)?;
        seg.sync_data()?;
        // Durable. Everything below only derives from it.
        self.log_end = cp_pos + cp_buf.len() as u64;
        for (offset, rec) in positions.iter().zip(&records) {
            pending.event(*offset, rec);
        }
        pending.checkpoint(size, cp_pos);
        self.derived.write(&pending)?;
        {
            let mut levels = shared.levels.write().map_err(|_| std::io::Error::other("levels lock poisoned"))?;
            if levels.len() < self.derived.levels.len() {
                *levels = self.derived.levels.clone();
            }
        }
        {
            let mut index = shared.index.write().map_err(|_| std::io::Error::other("index lock poisoned"))?;
            for (offset, rec) in positions.iter().zip(&records) {
                index.push(*offset, rec);
            }
            index.checkpoints.push((size, cp_pos));
            shared.size.store(size, Ordering::Release);
        }
        self.latest_note = Some(note.clone());
        if size - self.meta.size >= META_EVERY {
            self.commit_meta(shared)?;
        }
        if self.log_end - self.segment.start >= SEGMENT_TARGET {
            self.roll_segment(shared)?;
        }
        Ok((size, note))
    }

    /// Starts a new segment at the current end of the log.
    fn roll_segment(&mut self, shared: &Shared) -> std::io::Result<()> {
        let name = segment_name(self.log_end);
        let file = OpenOptions::new().read(true).append(true).create_new(true).open(shared.dir.join(&name))?;
        crate::derived::sync_dir(&shared.dir)?;
        let seg = Segment { start: self.log_end, file: Arc::new(file), name };
        shared.segments.write().map_err(|_| std::io::Error::other("segments lock poisoned"))?.push(seg.clone());
        self.segment = seg;
        Ok(())
    }

    /// Loads the latest stored note so that an all-duplicate group can answer without writing.
    pub fn set_latest_note(&mut self, note: Option<String>) {
        self.latest_note = note;
    }
}
