//! The writer: a two-stage pipeline with group commit.
//!
//! Appenders send batches over a bounded channel and wait for their reply.
//!
//! **Committer thread.** Takes one batch, drains whatever else is queued (up to
//! [`MAX_GROUP_EVENTS`]) and, for the group:
//! 1. dedups ids against the index (including ids reserved by groups still in flight) and within
//!    the group, assigns seqs and one receipt time, interns index terms;
//! 2. encodes entries, hashes leaves and frames records (on two threads for large groups);
//! 3. extends the tree, signs a checkpoint for the new size, frames it after the events;
//! 4. writes the group to the current segment (page cache) and hands it to the syncer.
//!
//! **Syncer thread.** Takes every group handed over so far (at most [`SYNC_QUEUE`] wait) and,
//! in log order: one `fdatasync` of the last group's segment (earlier segments were synced
//! before the next was started), unless an earlier sync already covered their end — *the
//! durability point* — then one write per derived file for all of them, publishes them to
//! readers and replies. While the syncer waits on the disk, the
//! committer prepares and writes the next groups, so CPU work and disk flushes overlap; under
//! load the groups that queue up behind one sync share the next (with 64 single-event
//! clients this halved the acknowledgement latency, measured).
//!
//! Nothing is acknowledged, and nothing is visible to readers, before its sync. A failed write
//! or sync stops the writer for good: every later append fails until reopen, which truncates
//! whatever torn tail the failure left. Groups with only duplicates also wait for a sync, so a
//! retry is never acknowledged before the original is durable.

use crate::derived::{Derived, DerivedWriteError, Meta, Pending};
use crate::index::IndexRecord;
use crate::{lock_poisoned, record, segment_name, Segment, Shared};
use mlaudit_core::entry::{self, EntryRef, EventId};
use mlaudit_core::event::PreparedEvent;
use mlaudit_core::merkle::{leaf_hash, CompactRange, Hash};
use mlaudit_core::note::{Checkpoint, NoteSigner};
use mlaudit_store::{limit_problem, AppendDone, AppendReceipt, Appended, StoreError};
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::sync::atomic::Ordering;
use std::sync::{mpsc, Arc, Mutex};
use std::thread::JoinHandle;

/// A group stops growing once it holds this many events.
pub const MAX_GROUP_EVENTS: usize = 1 << 16;
/// Groups at least this large are encoded and hashed on two threads.
const PARALLEL_MIN: usize = 4096;
/// Larger record buffers are freed rather than kept for reuse.
const SPARE_MAX: usize = 64 << 20;
/// Groups written and waiting for the syncer (the syncer makes all of them durable together).
const SYNC_QUEUE: usize = 4;
/// The derived watermark is advanced after this many events.
const META_EVERY: u64 = 1 << 20;

/// The answer, with the batch's events: they go back to be freed on the thread that
/// allocated them (with mimalloc a free from another thread is slower, and memory freed where
/// it was allocated is reused while still mapped and in cache: +11 % ingest, measured).
type Answer = (Result<AppendReceipt, StoreError>, Vec<PreparedEvent>);

/// Where an append's outcome goes.
enum Reply {
    /// A thread blocked in [`Handle::append`].
    Wait(mpsc::Sender<Answer>),
    /// A callback from [`Handle::submit`] (it runs on the syncer thread; the events are freed
    /// there).
    Call(Callback),
}

impl Reply {
    fn send(self, answer: Result<AppendReceipt, StoreError>, events: Vec<PreparedEvent>) {
        match self {
            Reply::Wait(tx) => {
                let _ = tx.send((answer, events));
            }
            Reply::Call(mut done) => {
                drop(events);
                done.call(answer);
            }
        }
    }
}

/// A submitted batch's callback, called exactly once: with the outcome, or, if the batch is
/// dropped unanswered (a writer thread that panicked or exited with batches still queued),
/// with `WriterStopped` when this is dropped. A callback that panics is contained, so that
/// it cannot take the syncer, and every batch behind it, down.
struct Callback(Option<AppendDone>);

impl Callback {
    fn call(&mut self, answer: Result<AppendReceipt, StoreError>) {
        if let Some(done) = self.0.take() {
            let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || done(answer)));
        }
    }
}

impl Drop for Callback {
    fn drop(&mut self) {
        self.call(Err(stopped()));
    }
}

enum Msg {
    Append(Vec<PreparedEvent>, Reply),
    Shutdown(mpsc::Sender<Result<(), StoreError>>),
}

/// What a batch of a group got: the seqs of its events, or why it was refused.
type Outcome = Result<Vec<Appended>, StoreError>;

/// A batch of the group: where its answer goes, its outcome and its events (returned with the
/// answer).
type Waiting = (Reply, Outcome, Vec<PreparedEvent>);

/// A group written to the page cache, on its way to the syncer.
struct Written {
    file: Arc<File>,
    end: u64,
    size: u64,
    /// The root the group's checkpoint signs (`None` when nothing was written).
    root: Option<Hash>,
    note: String,
    pending: Pending,
    positions: Vec<u64>,
    records: Vec<IndexRecord>,
    cp_pos: Option<u64>,
    replies: Vec<Waiting>,
}

enum ToSyncer {
    Group(Box<Written>),
    /// The committer refused a group (it stopped, or a transient failure).
    Failed(Refusal, Vec<(Reply, Vec<PreparedEvent>)>),
    Shutdown(mpsc::Sender<Result<(), StoreError>>),
}

/// A cloneable handle to the writer.
#[derive(Clone)]
pub(crate) struct Handle {
    tx: mpsc::SyncSender<Msg>,
    join: Arc<Mutex<Vec<JoinHandle<()>>>>,
}

impl std::fmt::Debug for Handle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("writer::Handle")
    }
}

fn stopped() -> StoreError {
    StoreError::WriterStopped("the writer thread has exited".into())
}

impl Handle {
    pub fn append(&self, events: Vec<PreparedEvent>) -> Result<AppendReceipt, StoreError> {
        let (tx, rx) = mpsc::channel();
        self.tx
            .send(Msg::Append(events, Reply::Wait(tx)))
            .map_err(|_| stopped())?;
        let (answer, events) = rx.recv().map_err(|_| stopped())?;
        drop(events);
        answer
    }

    /// Queues a batch; `done` gets the outcome once it is durable or refused. Blocks only
    /// while the queue to the committer is full (backpressure).
    pub fn submit(&self, events: Vec<PreparedEvent>, done: AppendDone) {
        if let Err(mpsc::SendError(Msg::Append(events, reply))) = self
            .tx
            .send(Msg::Append(events, Reply::Call(Callback(Some(done)))))
        {
            reply.send(Err(stopped()), events);
        }
    }

    /// [`Handle::submit`] without ever blocking: a full queue hands the batch back.
    pub fn try_submit(
        &self,
        events: Vec<PreparedEvent>,
        done: AppendDone,
    ) -> Result<(), (Vec<PreparedEvent>, AppendDone)> {
        match self
            .tx
            .try_send(Msg::Append(events, Reply::Call(Callback(Some(done)))))
        {
            Ok(()) => Ok(()),
            Err(mpsc::TrySendError::Full(Msg::Append(events, Reply::Call(mut callback)))) => {
                match callback.0.take() {
                    Some(done) => Err((events, done)),
                    None => Ok(()),
                }
            }
            Err(mpsc::TrySendError::Disconnected(Msg::Append(events, reply))) => {
                reply.send(Err(stopped()), events);
                Ok(())
            }
            Err(_) => Ok(()), // only Append is sent here
        }
    }

    pub fn shutdown(self) -> Result<(), StoreError> {
        let (tx, rx) = mpsc::channel();
        let result = match self.tx.send(Msg::Shutdown(tx)) {
            Ok(()) => rx.recv().map_err(|_| stopped()).and_then(|r| r),
            Err(_) => Ok(()),
        };
        let joins = std::mem::take(&mut *self.join.lock().map_err(|_| lock_poisoned())?);
        for join in joins {
            join.join()
                .map_err(|_| StoreError::WriterStopped("a writer thread panicked".into()))?;
        }
        result
    }
}

pub(crate) fn spawn(shared: Arc<Shared>, state: State) -> Handle {
    let (tx, rx) = mpsc::sync_channel::<Msg>(1024);
    let (sync_tx, sync_rx) = mpsc::sync_channel::<ToSyncer>(SYNC_QUEUE);
    let State {
        committer,
        mut syncer,
    } = state;
    let mut joins = Vec::new();
    syncer.merger = Some(crate::merger::Merger::spawn(shared.clone()));
    let s2 = shared.clone();
    if let Ok(j) = std::thread::Builder::new()
        .name("mlaudit-syncer".into())
        .spawn(move || syncer.run(&s2, sync_rx))
    {
        joins.push(j);
    }
    let mut committer = committer;
    if let Ok(j) = std::thread::Builder::new()
        .name("mlaudit-writer".into())
        .spawn(move || committer.run(&shared, rx, sync_tx))
    {
        joins.push(j);
    }
    Handle {
        tx,
        join: Arc::new(Mutex::new(joins)),
    }
}

/// The writer's state, split between its two threads.
#[derive(Debug)]
pub(crate) struct State {
    committer: Committer,
    syncer: Syncer,
}

#[derive(Debug)]
struct Committer {
    segment: Segment,
    log_end: u64,
    range: CompactRange,
    signer: Option<NoteSigner>,
    latest_note: Option<String>,
    failed: Option<String>,
    /// Record buffers kept for the next group.
    spare: Vec<Vec<u8>>,
    /// Payload digests of the events written but not yet published, for conflict checks.
    inflight: InFlight,
}

/// The payload digest of every event reserved but not yet visible to readers, by seq, so that
/// an id reused while its first event is still on its way to the disk is checked like any
/// other. Seqs `base..base + len` are held; the front is dropped as the syncer publishes.
#[derive(Debug)]
struct InFlight {
    base: u64,
    digests: std::collections::VecDeque<[u8; 32]>,
}

impl InFlight {
    fn starting_at(base: u64) -> InFlight {
        InFlight {
            base,
            digests: std::collections::VecDeque::new(),
        }
    }

    /// Holds the digest of the next seq.
    fn push(&mut self, digest: [u8; 32]) {
        self.digests.push_back(digest);
    }

    fn get(&self, seq: u64) -> Option<[u8; 32]> {
        let i = usize::try_from(seq.checked_sub(self.base)?).ok()?;
        self.digests.get(i).copied()
    }

    /// Drops the seqs below `published` (readers can find them in the log now).
    fn prune(&mut self, published: u64) {
        while self.base < published && self.digests.pop_front().is_some() {
            self.base += 1;
        }
    }

    /// Drops the seqs from `seq` on (reserved, then not written after all).
    fn truncate(&mut self, seq: u64) {
        let keep = seq.saturating_sub(self.base);
        self.digests
            .truncate(usize::try_from(keep).unwrap_or(usize::MAX));
    }
}

#[derive(Debug)]
struct Syncer {
    derived: Derived,
    synced_end: u64,
    meta: Meta,
    failed: Option<String>,
    /// Groups durable in the log whose derived files could not be written (a transient
    /// failure): written and published before the next groups.
    backlog: Backlog,
    /// The size and root of the latest durable checkpoint, for the rollback check at open.
    guard: crate::guard::Guard,
    /// Merges index runs and packs sealed segments in the background; started with the
    /// writer.
    merger: Option<crate::merger::Merger>,
    /// Segments there were when the merger was last asked to look (a new one means the one
    /// before it is sealed).
    segments_seen: usize,
    /// After a run could not be written, the tail length at which to try again.
    run_retry_at: u64,
    _lock: File,
}

/// One thread's share of a group's records.
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

fn build(items: &[NewEvent<'_>], receipt_ns: i64, mut buf: Vec<u8>) -> Result<Built, String> {
    buf.clear();
    let mut out = Built {
        buf,
        leaves: Vec::with_capacity(items.len()),
        rel: Vec::with_capacity(items.len()),
    };
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

/// Builds the group's records, on two threads when it is large. `spare` holds buffers from
/// earlier groups, reused to avoid fresh (page-faulting) allocations.
fn build_parallel(
    items: &[NewEvent<'_>],
    receipt_ns: i64,
    spare: &mut Vec<Vec<u8>>,
) -> Result<Vec<Built>, String> {
    let first_buf = spare.pop().unwrap_or_default();
    if items.len() < PARALLEL_MIN {
        return Ok(vec![build(items, receipt_ns, first_buf)?]);
    }
    let second_buf = spare.pop().unwrap_or_default();
    let (a, b) = items.split_at(items.len() / 2);
    std::thread::scope(|s| {
        let second = s.spawn(|| build(b, receipt_ns, second_buf));
        let first = build(a, receipt_ns, first_buf)?;
        let second = second
            .join()
            .map_err(|_| "encoding thread panicked".to_owned())??;
        Ok(vec![first, second])
    })
}

fn io_other(what: &str) -> std::io::Error {
    std::io::Error::other(what.to_owned())
}

/// What opening hands to the writer.
pub(crate) struct Recovered {
    /// The last segment, where appends go.
    pub segment: Segment,
    /// The log's end position (everything before it is durable).
    pub log_end: u64,
    pub derived: Derived,
    pub range: CompactRange,
    pub signer: Option<NoteSigner>,
    pub meta: Meta,
    /// The directory's lock, held for as long as the writer lives.
    pub lock: File,
    pub guard: crate::guard::Guard,
}

impl State {
    pub fn new(r: Recovered) -> State {
        let size = r.range.size();
        State {
            committer: Committer {
                segment: r.segment,
                log_end: r.log_end,
                range: r.range,
                signer: r.signer,
                latest_note: None,
                failed: None,
                spare: Vec::new(),
                inflight: InFlight::starting_at(size),
            },
            syncer: Syncer {
                merger: None,
                segments_seen: 0,
                run_retry_at: 0,
                derived: r.derived,
                synced_end: r.log_end,
                meta: r.meta,
                failed: None,
                backlog: Backlog::default(),
                guard: r.guard,
                _lock: r.lock,
            },
        }
    }

    pub fn can_sign(&self) -> bool {
        self.committer.signer.is_some()
    }

    /// Loads the latest stored note.
    pub fn set_latest_note(&mut self, note: Option<String>) {
        self.committer.latest_note = note;
    }

    /// Signs and durably stores a checkpoint for the current size, synchronously (recovery of
    /// an unsigned tail, or the empty tree of a new log).
    pub fn sign_at_open(&mut self, shared: &Shared) -> std::io::Result<()> {
        let written = self
            .committer
            .write_group(shared, &[], now_ns())
            .map_err(WriteFailure::into_io)?;
        self.syncer
            .finish(shared, std::slice::from_ref(&written))
            .map_err(WriteFailure::into_io)
    }
}

impl Committer {
    fn run(
        &mut self,
        shared: &Shared,
        rx: mpsc::Receiver<Msg>,
        to_syncer: mpsc::SyncSender<ToSyncer>,
    ) {
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
                let msg = self.commit(shared, group);
                if to_syncer.send(msg).is_err() {
                    return;
                }
            }
            if let Some(tx) = shutdown {
                let _ = to_syncer.send(ToSyncer::Shutdown(tx));
                return;
            }
        }
    }

    fn commit(&mut self, shared: &Shared, group: Vec<(Vec<PreparedEvent>, Reply)>) -> ToSyncer {
        if let Some(why) = self.failed.clone() {
            return refuse(group, Refusal::Stopped(why));
        }
        if shared.failed.load(Ordering::Acquire) {
            return refuse(
                group,
                Refusal::Stopped("an earlier sync failed; reopen the store".into()),
            );
        }
        if self.signer.is_none() {
            return refuse(
                group,
                Refusal::Stopped("this store was opened read-only (no signing key)".into()),
            );
        }
        self.inflight.prune(shared.size.load(Ordering::Acquire));
        let receipt_ns = now_ns();
        let (outcomes, new) = match self.reserve(shared, &group, receipt_ns) {
            Ok(reserved) => reserved,
            Err(why) => return refuse(group, Refusal::Stopped(why)),
        };
        let written = if new.is_empty() && self.latest_note.is_some() {
            Ok(self.nothing_written())
        } else {
            self.write_group(shared, &new, receipt_ns)
                .and_then(|w| self.index_group(shared, w, &new))
        };
        match written {
            Ok(mut w) => {
                w.replies = group
                    .into_iter()
                    .zip(outcomes)
                    .map(|((events, reply), outcome)| (reply, outcome, events))
                    .collect();
                ToSyncer::Group(Box::new(w))
            }
            Err(failure) => {
                self.release(shared, &new);
                drop(new);
                let refusal = match failure {
                    WriteFailure::Transient(what, e) => Refusal::new(what, &e),
                    WriteFailure::Fatal(e) => {
                        let why = format!("write failed: {e}");
                        self.failed = Some(why.clone());
                        Refusal::Stopped(why)
                    }
                };
                refuse(group, refusal)
            }
        }
    }

    /// Checks each batch's limits and ids, and reserves ids and seqs for the new events (under
    /// the index lock): the outcome of every batch, and the events that will be written. A
    /// client id already taken — in the log, in a group on its way to the disk, or earlier in
    /// the batch — by another payload refuses the whole batch, and its reservations are undone.
    fn reserve<'g>(
        &mut self,
        shared: &Shared,
        group: &'g [(Vec<PreparedEvent>, Reply)],
        receipt_ns: i64,
    ) -> Result<(Vec<Outcome>, Vec<NewEvent<'g>>), String> {
        let mut outcomes: Vec<Outcome> = Vec::with_capacity(group.len());
        let mut new: Vec<NewEvent<'g>> = Vec::new();
        let Ok(mut index) = shared.index.write() else {
            return Err("the index lock is poisoned".into());
        };
        let mut next = self.range.size();
        for (events, _) in group {
            if let Some((i, problem)) = limit_problem(events) {
                outcomes.push(Err(StoreError::Rejected { index: i, problem }));
                continue;
            }
            let (first_new, first_seq) = (new.len(), next);
            let mut results = Vec::with_capacity(events.len());
            let mut refused = None;
            for (i, ev) in events.iter().enumerate() {
                let id = ev
                    .id
                    .unwrap_or_else(|| EventId(*uuid::Uuid::new_v4().as_bytes()));
                let known = match index.seq_of(&id) {
                    Ok(found) => found,
                    Err(source) => {
                        refused = Some(StoreError::Io {
                            context: "looking an id up in the index".into(),
                            source,
                        });
                        break;
                    }
                };
                if let Some(seq) = known {
                    match self.digest_of(shared, &index, seq) {
                        Ok(digest) if digest == ev.payload_sha256 => {}
                        Ok(_) => {
                            refused = Some(StoreError::Conflict { index: i, id });
                            break;
                        }
                        Err(e) => {
                            refused = Some(e);
                            break;
                        }
                    }
                    results.push(Appended {
                        id,
                        seq,
                        duplicate: true,
                    });
                    continue;
                }
                index.reserve_id(id, next);
                self.inflight.push(ev.payload_sha256);
                results.push(Appended {
                    id,
                    seq: next,
                    duplicate: false,
                });
                new.push(NewEvent {
                    ev,
                    id,
                    seq: next,
                    time_ns: ev.event_time_ns.unwrap_or(receipt_ns),
                });
                next += 1;
            }
            match refused {
                Some(e) => {
                    for n in new.drain(first_new..) {
                        index.release_id(&n.id);
                    }
                    self.inflight.truncate(first_seq);
                    next = first_seq;
                    outcomes.push(Err(e));
                }
                None => outcomes.push(Ok(results)),
            }
        }
        Ok((outcomes, new))
    }

    /// The payload digest of the event at `seq`: in flight, or read from the log.
    fn digest_of(
        &self,
        shared: &Shared,
        index: &crate::index::Index,
        seq: u64,
    ) -> Result<[u8; 32], StoreError> {
        match self.inflight.get(seq) {
            Some(digest) => Ok(digest),
            None => stored_digest(shared, index, seq),
        }
    }

    /// Gives back the ids and the in-flight records of events that were not written.
    fn release(&mut self, shared: &Shared, new: &[NewEvent<'_>]) {
        if let Ok(mut index) = shared.index.write() {
            for n in new {
                index.release_id(&n.id);
            }
        }
        if let Some(first) = new.first() {
            self.inflight.truncate(first.seq);
        }
    }

    /// A group with nothing new: its duplicates are answered with the latest checkpoint once
    /// everything before them is durable.
    fn nothing_written(&self) -> Written {
        Written {
            file: self.segment.file.clone(),
            end: self.log_end,
            size: self.range.size(),
            root: None,
            note: self.latest_note.clone().unwrap_or_default(),
            pending: Pending::default(),
            positions: Vec::new(),
            records: Vec::new(),
            cp_pos: None,
            replies: Vec::new(),
        }
    }

    /// Interns the written events' index terms and makes their index records (after the write,
    /// so that a write that fails leaves no term behind).
    fn index_group(
        &mut self,
        shared: &Shared,
        mut w: Written,
        new: &[NewEvent<'_>],
    ) -> Result<Written, WriteFailure> {
        let Ok(mut index) = shared.index.write() else {
            return Err(WriteFailure::Fatal(io_other("the index lock is poisoned")));
        };
        let mut terms = Pending::default();
        w.records = new
            .iter()
            .map(|n| {
                let subjects = n.ev.subjects.iter().map(|(f, v)| (*f, v.as_str()));
                index.record_for(
                    n.id,
                    n.time_ns,
                    &n.ev.kind,
                    &n.ev.actor_id,
                    subjects,
                    &mut |t, v| terms.term(t, v),
                )
            })
            .collect();
        w.pending.terms = terms.terms;
        w.pending.term_count = terms.term_count;
        Ok(w)
    }

    /// Frames events and a checkpoint and writes them to the segment (not yet synced). A
    /// failure that leaves the segment as it was (a roll that could not create the next
    /// segment, a write cut short and truncated away) is transient; anything else is fatal.
    fn write_group(
        &mut self,
        shared: &Shared,
        new: &[NewEvent<'_>],
        receipt_ns: i64,
    ) -> Result<Written, WriteFailure> {
        let signer = self
            .signer
            .clone()
            .ok_or_else(|| WriteFailure::Fatal(io_other("read-only store")))?;
        // A full segment is closed before the group, not after it: a roll that fails then
        // leaves nothing of the group written (and the group is refused).
        if self.log_end - self.segment.start >= shared.options.segment_target {
            self.roll_segment(shared)?;
        }
        let chunks = build_parallel(new, receipt_ns, &mut self.spare).map_err(|e| {
            WriteFailure::Transient("encoding the events", std::io::Error::other(e))
        })?;
        let range_before = self.range.clone();
        let mut pending = Pending::default();
        let mut positions = Vec::with_capacity(new.len());
        let mut pos = self.log_end;
        for c in &chunks {
            for (leaf, rel) in c.leaves.iter().zip(&c.rel) {
                self.range
                    .push(*leaf, |level, _, hash| pending.node(level, &hash.0));
                positions.push(pos + rel);
            }
            pos += c.buf.len() as u64;
        }
        let size = self.range.size();
        let cp = Checkpoint {
            origin: signer.name().to_owned(),
            size,
            root: self.range.root(),
        };
        let note = match signer.sign(&cp.to_text()) {
            Ok(note) => note,
            Err(e) => {
                self.range = range_before;
                return Err(WriteFailure::Transient(
                    "signing the checkpoint",
                    std::io::Error::other(e),
                ));
            }
        };
        let mut cp_buf = Vec::with_capacity(note.len() + 32);
        record::encode_into(&mut cp_buf, record::CHECKPOINT, note.as_bytes(), &[]);
        let cp_pos = pos;
        if let Err(e) = self.write_records(&chunks, &cp_buf) {
            self.range = range_before;
            return Err(self.undo_write(e));
        }
        self.log_end = cp_pos + cp_buf.len() as u64;
        self.spare.extend(
            chunks
                .into_iter()
                .map(|c| c.buf)
                .filter(|b| b.capacity() <= SPARE_MAX),
        );
        self.latest_note = Some(note.clone());
        Ok(Written {
            file: self.segment.file.clone(),
            end: self.log_end,
            size,
            root: Some(cp.root),
            note,
            pending,
            positions,
            records: Vec::new(),
            cp_pos: Some(cp_pos),
            replies: Vec::new(),
        })
    }

    fn write_records(&self, chunks: &[Built], cp_buf: &[u8]) -> std::io::Result<()> {
        let mut w = &*self.segment.file;
        for c in chunks {
            w.write_all(&c.buf)?;
        }
        w.write_all(cp_buf)
    }

    /// After a failed write: cuts the segment back to where the group began, so that nothing
    /// of it remains (transient); if even that fails, the segment's end is unknown (fatal).
    fn undo_write(&self, e: std::io::Error) -> WriteFailure {
        match self.segment.file.set_len(self.log_end - self.segment.start) {
            Ok(()) => WriteFailure::Transient("writing the log", e),
            Err(cut) => WriteFailure::Fatal(std::io::Error::other(format!(
                "{e}; and cutting {} back to {} failed: {cut}",
                self.segment.name,
                self.log_end - self.segment.start
            ))),
        }
    }

    /// Starts a new segment at the current end of the log. The old one is synced first, so
    /// that a later segment never holds data while an earlier one could still lose its tail
    /// (recovery accepts a torn tail only in the last segment). A failed sync is fatal; failing
    /// to create the new segment is not (the next group tries again, and an empty file left by
    /// a failed attempt is taken over).
    fn roll_segment(&mut self, shared: &Shared) -> Result<(), WriteFailure> {
        sync_segment(shared, &self.segment.file).map_err(WriteFailure::Fatal)?;
        let name = segment_name(self.log_end);
        let path = shared.dir.join(&name);
        let file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .mode(crate::FILE_MODE)
            .open(&path)
            .map_err(|e| WriteFailure::Transient("creating the next segment", e))?;
        match file.metadata() {
            Ok(m) if m.len() == 0 => {}
            Ok(m) => {
                return Err(WriteFailure::Fatal(io_other(&format!(
                    "{name} already holds {} bytes",
                    m.len()
                ))))
            }
            Err(e) => return Err(WriteFailure::Transient("creating the next segment", e)),
        }
        crate::derived::sync_dir(&shared.dir)
            .map_err(|e| WriteFailure::Transient("creating the next segment", e))?;
        let seg = Segment {
            start: self.log_end,
            file: Arc::new(file),
            name,
            packed: None,
        };
        shared
            .segments
            .write()
            .map_err(|_| WriteFailure::Fatal(io_other("segments lock poisoned")))?
            .push(seg.clone());
        self.segment = seg;
        Ok(())
    }
}

/// Groups waiting for their derived files (see `Syncer::finish_groups`).
#[derive(Default)]
struct Backlog(Vec<Written>);

impl std::fmt::Debug for Backlog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Backlog({} groups)", self.0.len())
    }
}

/// Why a group could not be written.
enum WriteFailure {
    /// Nothing of the group is left in the segment: refuse it, and take the next group. The
    /// text says what was being done.
    Transient(&'static str, std::io::Error),
    /// The segment's state is unknown (or a sync failed): stop the writer.
    Fatal(std::io::Error),
}

impl WriteFailure {
    /// The I/O error, for callers that fail either way (opening a store).
    fn into_io(self) -> std::io::Error {
        match self {
            WriteFailure::Transient(_, e) | WriteFailure::Fatal(e) => e,
        }
    }
}

/// The payload digest of the event at `seq`, read from its published entry.
fn stored_digest(
    shared: &Shared,
    index: &crate::index::Index,
    seq: u64,
) -> Result<[u8; 32], StoreError> {
    if seq >= index.len() {
        return Err(StoreError::Corrupt {
            location: format!("seq {seq}"),
            problem: "an id maps to a seq that is neither published nor in flight".into(),
        });
    }
    let pos = shared.files.offset(seq).map_err(|source| StoreError::Io {
        context: format!("reading offsets.bin at seq {seq}"),
        source,
    })?;
    let entry = crate::read_event_at(shared, seq, pos)?.entry;
    let view = entry::decode_view(&entry).map_err(|e| StoreError::Corrupt {
        location: format!("seq {seq}"),
        problem: e.to_string(),
    })?;
    Ok(view.payload_sha256)
}

/// Why a whole group was refused.
enum Refusal {
    /// The writer has stopped.
    Stopped(String),
    DiskFull(String),
    Unavailable(String),
}

impl Refusal {
    /// The refusal for a transient failure while doing `what`.
    fn new(what: &str, e: &std::io::Error) -> Refusal {
        match StoreError::transient(what, e) {
            StoreError::DiskFull(why) => Refusal::DiskFull(why),
            StoreError::Unavailable(why) => Refusal::Unavailable(why),
            other => Refusal::Unavailable(other.to_string()),
        }
    }

    fn error(&self) -> StoreError {
        match self {
            Refusal::Stopped(why) => StoreError::WriterStopped(why.clone()),
            Refusal::DiskFull(why) => StoreError::DiskFull(why.clone()),
            Refusal::Unavailable(why) => StoreError::Unavailable(why.clone()),
        }
    }
}

fn refuse(group: Vec<(Vec<PreparedEvent>, Reply)>, why: Refusal) -> ToSyncer {
    ToSyncer::Failed(
        why,
        group
            .into_iter()
            .map(|(events, reply)| (reply, events))
            .collect(),
    )
}

/// `fdatasync` of a segment, by either thread (the syncer for groups, the committer before a
/// roll). Linux reports a writeback error to one `fsync` of an open file only, so a sync that
/// returns 0 after another thread's sync failed proves nothing: the failure is recorded in
/// `shared.failed` under a lock held across the sync, and every sync checks the flag after
/// its own, under the same lock.
fn sync_segment(shared: &Shared, file: &File) -> std::io::Result<()> {
    let _serial = shared
        .sync_lock
        .lock()
        .map_err(|_| io_other("sync lock poisoned"))?;
    if let Err(e) = file.sync_data() {
        shared.failed.store(true, Ordering::Release);
        return Err(e);
    }
    if shared.failed.load(Ordering::Acquire) {
        return Err(io_other("an earlier sync failed"));
    }
    Ok(())
}

impl Syncer {
    fn run(&mut self, shared: &Shared, rx: mpsc::Receiver<ToSyncer>) {
        let mut next = rx.recv().ok();
        while let Some(msg) = next.take() {
            match msg {
                ToSyncer::Group(w) => {
                    // Every group already handed over goes in the same sync and the same
                    // derived writes: under load the per-sync work is shared by more events.
                    let mut groups = vec![*w];
                    loop {
                        match rx.try_recv() {
                            Ok(ToSyncer::Group(w)) => groups.push(*w),
                            Ok(other) => {
                                next = Some(other);
                                break;
                            }
                            Err(_) => break,
                        }
                    }
                    self.finish_groups(shared, groups);
                }
                ToSyncer::Failed(why, replies) => {
                    for (reply, events) in replies {
                        reply.send(Err(why.error()), events);
                    }
                }
                ToSyncer::Shutdown(tx) => {
                    let _ = tx.send(self.close(shared));
                    return;
                }
            }
            if next.is_none() {
                next = rx.recv().ok();
            }
        }
        let _ = self.close(shared);
    }

    /// Makes the groups durable with one sync, publishes them and answers their batches.
    /// Groups left over from a transient failure go first.
    fn finish_groups(&mut self, shared: &Shared, groups: Vec<Written>) {
        let mut all = std::mem::take(&mut self.backlog.0);
        all.extend(groups);
        let result = match &self.failed {
            Some(why) => Err(Refusal::Stopped(why.clone())),
            None => match self.finish(shared, &all) {
                Ok(()) => Ok(()),
                Err(WriteFailure::Transient(what, e)) => Err(Refusal::new(what, &e)),
                Err(WriteFailure::Fatal(e)) => {
                    let why = format!("sync failed: {e}");
                    self.failed = Some(why.clone());
                    shared.failed.store(true, Ordering::Release);
                    Err(Refusal::Stopped(why))
                }
            },
        };
        for w in &mut all {
            for (reply, outcome, events) in std::mem::take(&mut w.replies) {
                let answer = match &result {
                    Ok(()) => outcome.map(|events| AppendReceipt {
                        events,
                        tree_size: w.size,
                        checkpoint: w.note.clone(),
                    }),
                    Err(why) => Err(why.error()),
                };
                reply.send(answer, events);
            }
        }
        if let (Err(Refusal::DiskFull(_) | Refusal::Unavailable(_)), None) = (&result, &self.failed)
        {
            // Durable in the log, but not yet in the derived files nor visible: the next
            // group writes them first. Their batches were refused, and a retry is a duplicate
            // answered once they are published.
            self.backlog.0 = all;
        }
    }

    fn close(&mut self, shared: &Shared) -> Result<(), StoreError> {
        // Waits for a merge in progress.
        self.merger = None;
        if self.failed.is_some() {
            return Ok(());
        }
        self.commit_meta(shared).map_err(|source| StoreError::Io {
            context: "recording the derived watermark".into(),
            source,
        })
    }

    fn commit_meta(&mut self, shared: &Shared) -> std::io::Result<()> {
        let index = shared
            .index
            .read()
            .map_err(|_| io_other("index lock poisoned"))?;
        let meta = Meta {
            size: index.len(),
            log_end: self.synced_end,
            terms_bytes: self.derived.terms_bytes,
            term_count: self.derived.term_count,
            checkpoints: index.checkpoint_count(),
        };
        drop(index);
        if meta != self.meta {
            self.derived.commit_meta(&meta)?;
            self.meta = meta;
        }
        Ok(())
    }

    /// Makes written groups durable with one sync, then writes their derived files and
    /// publishes them, in order. A failed sync is fatal; failing to write the derived files
    /// (a full disk, no file descriptor for a new tree level) is transient: they are cut back
    /// and the groups stay unpublished.
    fn finish(&mut self, shared: &Shared, groups: &[Written]) -> Result<(), WriteFailure> {
        let Some(last) = groups.last() else {
            return Ok(());
        };
        let (end, size) = (last.end, last.size);
        if end > self.synced_end {
            // The groups were written in log order, and a segment is synced before the next
            // one is started (`roll_segment`): syncing the last group's segment covers them all.
            sync_segment(shared, &last.file).map_err(WriteFailure::Fatal)?;
            self.synced_end = end;
            let events = groups.iter().map(|w| w.positions.len() as u64).sum();
            if let Ok(mut stats) = shared.stats.lock() {
                stats.record(events, end);
            }
            if let Some(root) = last.root {
                self.guard.record(size, &root);
            }
            let segments = shared.segments.read().map_or(0, |s| s.len());
            if segments != self.segments_seen {
                self.segments_seen = segments;
                if let Some(m) = &self.merger {
                    m.poke();
                }
            }
        }
        // Durable. Everything below only derives from it.
        let mut pending = Pending::default();
        for w in groups {
            pending.append(&w.pending);
            for (offset, rec) in w.positions.iter().zip(&w.records) {
                pending.event(*offset, rec);
            }
            if let Some(cp_pos) = w.cp_pos {
                pending.checkpoint(w.size, cp_pos);
            }
        }
        if pending.is_empty() && pending.terms.is_empty() {
            return Ok(());
        }
        self.derived.write(&pending).map_err(|e| match e {
            DerivedWriteError::Undone(e) => {
                WriteFailure::Transient("writing the tree and index files", e)
            }
            DerivedWriteError::Left(e) => WriteFailure::Fatal(e),
        })?;
        let poisoned = |what: &str| WriteFailure::Fatal(io_other(&format!("{what} lock poisoned")));
        {
            let mut levels = shared.levels.write().map_err(|_| poisoned("levels"))?;
            if levels.len() < self.derived.levels.len() {
                *levels = self.derived.levels.clone();
            }
        }
        {
            let mut index = shared.index.write().map_err(|_| poisoned("index"))?;
            for w in groups {
                let first = index.len();
                for rec in &w.records {
                    index.push(rec, false);
                }
                let leaves = w.pending.levels.first().map_or(&[][..], Vec::as_slice);
                for (seq, leaf) in (first..).zip(leaves.chunks_exact(32)) {
                    if let Some(leaf) = Hash::from_slice(leaf) {
                        index.push_leaf(seq, &leaf);
                    }
                }
                if let Some(cp_pos) = w.cp_pos {
                    index.push_checkpoint(w.size, cp_pos);
                }
            }
            shared.size.store(size, Ordering::Release);
        }
        let tail = shared.index.read().map_or(0, |i| i.tail_len());
        let tail_full = tail >= shared.options.run_events.max(self.run_retry_at);
        if size - self.meta.size >= META_EVERY || tail_full {
            // Only a watermark and an index run: if they cannot be written now (a full disk),
            // opening replays a little more, the tail stays in memory a little longer, and
            // the next attempt comes with the next group.
            if self.commit_meta(shared).is_ok() && tail_full {
                self.write_run(shared);
            }
        }
        Ok(())
    }

    /// Writes the index's tail out as a run (everything in it is within the watermark just
    /// recorded: only this thread publishes) and hands the runs to the merger.
    fn write_run(&mut self, shared: &Shared) {
        let (content, budget) = match shared.index.read() {
            Ok(i) => (i.tail_content(), i.budget().clone()),
            Err(_) => return,
        };
        let Ok(run) = crate::index::write_and_open(&shared.dir, &content, &budget) else {
            let tmp = format!("{}.tmp", crate::runs::run_name(content.first, content.end));
            let _ = std::fs::remove_file(shared.dir.join(tmp));
            // Not at every group: after another quarter of a run.
            self.run_retry_at = content.end - content.first + shared.options.run_events / 4;
            return;
        };
        self.run_retry_at = 0;
        if let Ok(mut index) = shared.index.write() {
            index.add_run(run);
        }
        if let Some(m) = &self.merger {
            m.poke();
        }
    }
}
