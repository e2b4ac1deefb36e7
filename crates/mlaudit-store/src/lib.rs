//! The storage interface of mlaudit and the ledger operations written once on top of it.
//!
//! * [`Store`] — what an engine must provide: durable, idempotent batch appends that also sign
//!   and keep a checkpoint; reads by seq and by id; stored perfect-subtree hashes; checkpoints;
//!   indexed queries. The embedded engine (`mlaudit-embedded`) implements it; a PostgreSQL engine
//!   will.
//! * [`proofs`], [`verify`], [`lineage`] — proof bundles, full verification and lineage, for any
//!   engine.
//!
//! **Invariant:** this crate knows nothing of files, sockets or SQL; the trait speaks only of
//! sequence numbers, ids, hashes and notes. Engines report where a fault lives through
//! [`LogReader::location`].

#![cfg_attr(
    test,
    allow(
        clippy::unwrap_used,
        clippy::expect_used,
        reason = "a unit test fails loudly on any unexpected error"
    )
)]

pub mod audit;
pub mod conformance;
pub mod erasure;
pub mod holds;
pub mod ingest;
pub mod lineage;
pub mod proofs;
pub mod tiles;
pub mod verify;
pub mod view;

use mlaudit_core::event::{PreparedEvent, Stage};
use mlaudit_core::merkle::{Hash, NodeSource};
use mlaudit_core::EventId;
use std::ops::ControlFlow;

/// One stored event: its entry header bytes and its payload (`None` once redacted).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredEvent {
    pub seq: u64,
    pub entry: Vec<u8>,
    pub payload: Option<Vec<u8>>,
    /// The seq of the governance event that removed the payload (expiry, erasure), when the
    /// engine knows it.
    pub removed_by: Option<u64>,
    /// Where the payload was read from: a tier of [`Tier::Cold`] with no payload and no
    /// remover means the payload is kept only in the cold archive, for a reader that knows
    /// the archive to fetch.
    pub tier: Tier,
}

/// Which storage answered for an event: the server's uncompressed log (hot), its compressed
/// segments (warm), or the cold archive on object storage (cold). Entries, leaves and
/// checkpoints are always local; the tier is where the payload lives.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Tier {
    #[default]
    Hot,
    Warm,
    Cold,
}

impl Tier {
    /// `hot`, `warm` or `cold`, as the API spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            Tier::Hot => "hot",
            Tier::Warm => "warm",
            Tier::Cold => "cold",
        }
    }
}

impl StoredEvent {
    /// An event with its payload.
    pub fn new(seq: u64, entry: Vec<u8>, payload: Option<Vec<u8>>) -> StoredEvent {
        StoredEvent {
            seq,
            entry,
            payload,
            removed_by: None,
            tier: Tier::Hot,
        }
    }

    /// Whether the payload is kept only in the cold archive (to be fetched from there).
    pub fn payload_in_archive(&self) -> bool {
        self.tier == Tier::Cold && self.payload.is_none() && self.removed_by.is_none()
    }
}

/// An event and its inclusion path (or why that path cannot exist), from
/// [`LogReader::inclusion_material`].
pub type InclusionMaterial = (
    StoredEvent,
    Result<Vec<Hash>, mlaudit_core::merkle::ProofRequestError>,
);

/// [`LogReader::inclusion_material`] from `event` and stored nodes, one read each: the
/// default, and what an engine with a faster path falls back to.
pub fn event_and_path<S: LogReader + ?Sized>(
    store: &S,
    seq: u64,
    size: u64,
) -> Result<InclusionMaterial, StoreError> {
    let event = store.event(seq)?;
    let path = mlaudit_core::merkle::inclusion_proof(&Nodes(store), seq, size)?;
    Ok((event, path))
}

/// One event of an [`EventRun`]: its seq, entry bytes and payload (`None` once redacted).
pub type RunEvent<'a> = (u64, &'a [u8], Option<&'a [u8]>);

/// Consecutive stored events in one buffer, for bulk reads (`verify`): one allocation per run
/// instead of two per event.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EventRun {
    /// The seq of the first event.
    pub first: u64,
    bytes: Vec<u8>,
    /// Per event: where its entry starts, where it ends (and its payload starts), and where
    /// its payload ends (`None` once redacted).
    spans: Vec<(usize, usize, Option<usize>)>,
    /// (index in the run, remover seq) of the events whose payload was removed.
    removed: Vec<(usize, u64)>,
    /// Indexes in the run of the events whose payload is kept only in the cold archive.
    in_archive: Vec<usize>,
}

impl EventRun {
    /// An empty run starting at `first`, with room for about `events` events.
    pub fn new(first: u64, events: usize) -> EventRun {
        EventRun {
            first,
            bytes: Vec::with_capacity(events * 640),
            spans: Vec::with_capacity(events),
            removed: Vec::new(),
            in_archive: Vec::new(),
        }
    }

    /// Adds the next event whose payload is kept only in the cold archive.
    pub fn push_in_archive(&mut self, entry: &[u8]) {
        self.in_archive.push(self.spans.len());
        self.push(entry, None);
    }

    /// The seqs of the run's events whose payload is kept only in the cold archive.
    pub fn in_archive(&self) -> impl Iterator<Item = u64> + '_ {
        self.in_archive.iter().map(|i| self.first + *i as u64)
    }

    /// Adds the next stored event, whatever its payload's state.
    pub fn push_stored(&mut self, ev: &StoredEvent) {
        match (&ev.payload, ev.removed_by) {
            (None, Some(remover)) => self.push_removed(&ev.entry, remover),
            (None, None) if ev.tier == Tier::Cold => self.push_in_archive(&ev.entry),
            (payload, _) => self.push(&ev.entry, payload.as_deref()),
        }
    }

    /// Adds the next event whose payload was removed by the governance event `remover`.
    pub fn push_removed(&mut self, entry: &[u8], remover: u64) {
        self.removed.push((self.spans.len(), remover));
        self.push(entry, None);
    }

    /// The removal events of the run's removed payloads: (seq, remover seq).
    pub fn removals(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        self.removed
            .iter()
            .map(|(i, r)| (self.first + *i as u64, *r))
    }

    /// Adds the next event.
    pub fn push(&mut self, entry: &[u8], payload: Option<&[u8]>) {
        let start = self.bytes.len();
        self.bytes.extend_from_slice(entry);
        let entry_end = self.bytes.len();
        let payload_end = payload.map(|p| {
            self.bytes.extend_from_slice(p);
            self.bytes.len()
        });
        self.spans.push((start, entry_end, payload_end));
    }

    pub fn len(&self) -> usize {
        self.spans.len()
    }

    pub fn is_empty(&self) -> bool {
        self.spans.is_empty()
    }

    /// Event `i` of the run: its seq, entry and payload.
    pub fn get(&self, i: usize) -> Option<RunEvent<'_>> {
        let &(start, entry_end, payload_end) = self.spans.get(i)?;
        Some((
            self.first + i as u64,
            &self.bytes[start..entry_end],
            payload_end.map(|end| &self.bytes[entry_end..end]),
        ))
    }
}

/// An event's payload as a store holds it, for [`group_runs`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PayloadRef<'a> {
    /// Here (or absent with no reason recorded: `verify` reports that).
    Here(Option<&'a [u8]>),
    /// Removed by the governance event of this seq.
    RemovedBy(u64),
    /// Kept only in the cold archive.
    InArchive,
}

impl<'a> PayloadRef<'a> {
    /// The payload state of a stored event.
    pub fn of(ev: &'a StoredEvent) -> PayloadRef<'a> {
        match (&ev.payload, ev.removed_by) {
            (None, Some(remover)) => PayloadRef::RemovedBy(remover),
            (None, None) if ev.tier == Tier::Cold => PayloadRef::InArchive,
            (payload, _) => PayloadRef::Here(payload.as_deref()),
        }
    }
}

/// Groups the events that `feed` pushes one at a time (in seq order from `from`) into runs of
/// `run_len` for `visit`; for implementations of [`LogReader::scan_runs`].
pub fn group_runs(
    from: u64,
    run_len: usize,
    visit: &mut dyn FnMut(EventRun) -> ControlFlow<()>,
    feed: impl FnOnce(
        &mut dyn FnMut(&[u8], PayloadRef<'_>) -> ControlFlow<()>,
    ) -> Result<(), StoreError>,
) -> Result<(), StoreError> {
    let run_len = run_len.max(1);
    let mut run = EventRun::new(from, run_len);
    let mut stopped = false;
    let fed = feed(&mut |entry, payload| {
        match payload {
            PayloadRef::RemovedBy(remover) => run.push_removed(entry, remover),
            PayloadRef::InArchive => run.push_in_archive(entry),
            PayloadRef::Here(payload) => run.push(entry, payload),
        }
        if run.len() == run_len {
            let next = EventRun::new(run.first + run_len as u64, run_len);
            if visit(std::mem::replace(&mut run, next)).is_break() {
                stopped = true;
                return ControlFlow::Break(());
            }
        }
        ControlFlow::Continue(())
    });
    // Also before an error: the events read before it are visited, so that the error is seen
    // at the seq where it happened.
    if !stopped && !run.is_empty() {
        let _ = visit(run);
    }
    fed
}

/// The first event of a batch that no engine can store, and why: a principal longer than an
/// entry allows, or a payload over the event size limit. Engines check every batch with it
/// before writing anything ([`StoreError::Rejected`]).
pub fn limit_problem(events: &[PreparedEvent]) -> Option<(usize, String)> {
    use mlaudit_core::entry::MAX_ID_LEN;
    use mlaudit_core::event::MAX_EVENT_BYTES;
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

/// The outcome of appending one event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Appended {
    pub id: EventId,
    pub seq: u64,
    /// `true` when the id was already in the log: nothing was written, `seq` is the original.
    pub duplicate: bool,
}

/// The outcome of a durable batch append.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AppendReceipt {
    /// One per input event, in input order.
    pub events: Vec<Appended>,
    /// The tree size after the batch.
    pub tree_size: u64,
    /// The signed checkpoint note for `tree_size`.
    pub checkpoint: String,
}

/// Filters for [`LogReader::query`]; all given filters must match. Results are in seq order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Query {
    pub stage: Option<Stage>,
    pub kind: Option<String>,
    pub model: Option<String>,
    pub version: Option<String>,
    pub actor: Option<String>,
    pub run: Option<String>,
    pub dataset: Option<String>,
    pub deployment: Option<String>,
    /// Event time >= since (unix ns).
    pub since_ns: Option<i64>,
    /// Event time < until (unix ns).
    pub until_ns: Option<i64>,
    /// Only seqs greater than this (cursor pagination).
    pub after_seq: Option<u64>,
    /// At most this many results.
    pub limit: usize,
}

/// A storage failure. Engines map their own errors into these.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// Stored bytes are damaged; `location` names the place (e.g. file and offset).
    #[error("corruption at {location}: {problem}")]
    Corrupt { location: String, problem: String },
    /// A seq beyond the tree, or a node that does not exist yet.
    #[error("not found: {0}")]
    NotFound(String),
    /// The store was opened without a signing key and cannot append.
    #[error("this store was opened read-only (no signing key)")]
    ReadOnly,
    /// An event cannot be stored (a limit was exceeded).
    #[error("event {index} of the batch cannot be stored: {problem}")]
    Rejected { index: usize, problem: String },
    /// An event's id is already in the log (or earlier in the batch) with a different
    /// payload: the whole batch was refused and nothing of it was written. (A retry of the
    /// same event, with the same payload digest, is a duplicate, not a conflict.)
    #[error("event {index} of the batch reuses id {id}, already in the log with a different payload (kind or content)")]
    Conflict { index: usize, id: EventId },
    /// The disk is full: nothing of the batch was acknowledged. Appends work again once space
    /// is freed.
    #[error("the disk is full: {0}")]
    DiskFull(String),
    /// A resource ran out for a moment (open files): nothing of the batch was acknowledged,
    /// and the next batch tries again.
    #[error("temporarily unable to store: {0}")]
    Unavailable(String),
    /// The engine cannot do this.
    #[error("{0}")]
    Unsupported(String),
    /// A request the store refuses as it stands (e.g. a payload removal not named by a
    /// removal event).
    #[error("{0}")]
    Refused(String),
    /// The writer stopped after an earlier failure; reopen the store.
    #[error("the store's writer has stopped: {0}")]
    WriterStopped(String),
    /// An I/O error from the engine.
    #[error("{context}: {source}")]
    Io {
        context: String,
        source: std::io::Error,
    },
}

impl StoreError {
    /// The error for an I/O failure that did not compromise durability (nothing was
    /// acknowledged, nothing written is left behind): a full disk, or any other resource.
    pub fn transient(context: &str, e: &std::io::Error) -> StoreError {
        /// `ENOSPC` and `EDQUOT` on Linux.
        const NO_SPACE: [i32; 2] = [28, 122];
        let full = e.kind() == std::io::ErrorKind::StorageFull
            || e.raw_os_error().is_some_and(|c| NO_SPACE.contains(&c));
        if full {
            StoreError::DiskFull(format!("{context}: {e}"))
        } else {
            StoreError::Unavailable(format!("{context}: {e}"))
        }
    }
}

/// Called with the outcome of an append submitted with [`Appender::submit`].
pub type AppendDone = Box<dyn FnOnce(Result<AppendReceipt, StoreError>) + Send>;

/// A storage engine for the log: the four roles below, which an engine implements one by one
/// (as Tessera separates its appender from its log reader), so that a second engine sees
/// clearly what each part of the system needs of it. Callers hold `&dyn Store` (or
/// `Arc<dyn Store>`); every engine that implements the four roles is a `Store`.
///
/// **Contract:** `append` returns only after every new event *and* the checkpoint for the new
/// size are durable; it is all-or-nothing per call; ids already in the log are not written
/// again. Seqs are dense from 0. Checkpoints are never removed.
pub trait Store: Appender + LogReader + Querier + Diagnostics {}

impl<T: Appender + LogReader + Querier + Diagnostics + ?Sized> Store for T {}

/// Appending: the one writer's role.
pub trait Appender: Send + Sync {
    /// Appends a batch durably and signs a checkpoint for the new tree size.
    fn append(&self, events: Vec<PreparedEvent>) -> Result<AppendReceipt, StoreError>;
    /// Submits a batch and calls `done` with what [`Appender::append`] would return, once the
    /// batch is durable or refused, possibly on another thread: it lets an async server wait
    /// for durability without holding a thread per request. `done` must be quick and must
    /// neither block nor call the store (it may run on the writer's own thread). The default
    /// appends on the calling thread.
    fn submit(&self, events: Vec<PreparedEvent>, done: AppendDone) {
        done(self.append(events))
    }
    /// [`Appender::submit`] if it can be done without blocking; otherwise the batch and the
    /// callback come back, for the caller to submit where blocking is allowed. An async
    /// caller uses this on its own worker. The default never queues.
    fn try_submit(
        &self,
        events: Vec<PreparedEvent>,
        done: AppendDone,
    ) -> Result<(), (Vec<PreparedEvent>, AppendDone)> {
        Err((events, done))
    }
    /// Removes the payloads of the events `seqs` (expiry, erasure), naming `remover`: the seq
    /// of the governance event, already in the log, that records why. Entries, leaves and
    /// checkpoints stay, so every proof still verifies. Payloads already removed are left as
    /// they are; returns how many were removed now. Durable when it returns.
    fn remove_payloads(&self, seqs: &[u64], remover: u64) -> Result<u64, StoreError> {
        let pairs: Vec<(u64, u64)> = seqs.iter().map(|s| (*s, remover)).collect();
        self.remove_payload_batch(&pairs)
    }
    /// [`Appender::remove_payloads`] for many (seq, remover) pairs at once: an engine that
    /// rewrites storage in bulk (a compressed segment) does it once per batch.
    fn remove_payload_batch(&self, removals: &[(u64, u64)]) -> Result<u64, StoreError> {
        let _ = removals;
        Err(StoreError::Unsupported(
            "this store cannot remove payloads".into(),
        ))
    }
    /// Drops the local copies of the payloads of `seqs`, which the caller has found in the
    /// cold archive byte for byte: each is then kept only there ([`Tier::Cold`]), and readers
    /// that know the archive fetch it. Entries, leaves and checkpoints stay. Payloads removed
    /// or already in the archive only are left as they are; returns how many were dropped
    /// now. Durable when it returns.
    fn offload_payloads(&self, seqs: &[u64]) -> Result<u64, StoreError> {
        let _ = seqs;
        Err(StoreError::Unsupported(
            "this store keeps every payload it holds on its own storage".into(),
        ))
    }
    /// Brings payloads kept only in the cold archive back to local storage: each (seq,
    /// payload) must be the payload its entry commits to ([`check_restored`]). Events whose
    /// payload is local or removed are left as they are; returns how many came back.
    /// Durable when it returns.
    fn restore_payloads(&self, payloads: &[(u64, Vec<u8>)]) -> Result<u64, StoreError> {
        let _ = payloads;
        Err(StoreError::Unsupported(
            "this store keeps every payload it holds on its own storage".into(),
        ))
    }
}

/// Checks that `payload` is the one the entry of event `seq` commits to (length and SHA-256):
/// the only payload a restore may bring back.
pub fn check_restored(seq: u64, entry: &[u8], payload: &[u8]) -> Result<(), StoreError> {
    let view = mlaudit_core::entry::decode_view(entry).map_err(|e| StoreError::Corrupt {
        location: format!("seq {seq}"),
        problem: e.to_string(),
    })?;
    let same = payload.len() as u64 == u64::from(view.payload_len)
        && mlaudit_core::merkle::sha256(payload) == view.payload_sha256;
    if same {
        return Ok(());
    }
    Err(StoreError::Refused(format!(
        "seq {seq}: the payload offered is not the one its entry commits to (length and SHA-256 differ)"
    )))
}

/// Reading the log and proving: events by seq and id, tree nodes, checkpoints, sequential
/// scans.
pub trait LogReader: Send + Sync {
    /// The number of events in the log (all of them durable).
    fn tree_size(&self) -> u64;
    /// One event by seq.
    fn event(&self, seq: u64) -> Result<StoredEvent, StoreError>;
    /// One event as the engine holds it, without fetching a payload kept only in the cold
    /// archive ([`StoredEvent::payload_in_archive`]): for work that needs the entry and whether
    /// the payload is kept, not the payload. A view that fetches archived payloads overrides
    /// this.
    fn stored_event(&self, seq: u64) -> Result<StoredEvent, StoreError> {
        self.event(seq)
    }
    /// [`LogReader::scan`] as the engine holds the events (see [`LogReader::stored_event`]).
    fn scan_stored(
        &self,
        from: u64,
        visit: &mut dyn FnMut(StoredEvent) -> ControlFlow<()>,
    ) -> Result<(), StoreError> {
        self.scan(from, visit)
    }
    /// The seq of an event id, if present.
    fn seq_of(&self, id: &EventId) -> Result<Option<u64>, StoreError>;
    /// The seq of the event whose leaf hash is `leaf`, if it is in the log: how a caller who
    /// holds an entry, but not its position, asks for its inclusion proof. The default reads
    /// every leaf; engines keep an index.
    fn seq_of_leaf(&self, leaf: &Hash) -> Result<Option<u64>, StoreError> {
        const CHUNK: u64 = 1 << 14;
        let size = self.tree_size();
        let mut start = 0;
        while start < size {
            let count = CHUNK.min(size - start);
            let found = self
                .nodes(0, start, count)?
                .iter()
                .position(|h| h.ct_eq(leaf));
            if let Some(i) = found {
                return Ok(Some(start + i as u64));
            }
            start += count;
        }
        Ok(None)
    }
    /// A stored perfect-subtree hash (see [`NodeSource`]).
    fn node(&self, level: u32, index: u64) -> Result<Hash, StoreError>;
    /// `count` consecutive stored hashes of one level from `start` (bulk reads for `verify`).
    fn nodes(&self, level: u32, start: u64, count: u64) -> Result<Vec<Hash>, StoreError> {
        (start..start + count)
            .map(|i| self.node(level, i))
            .collect()
    }
    /// The stored signed checkpoint for exactly this tree size.
    fn checkpoint(&self, size: u64) -> Result<Option<String>, StoreError>;
    /// Tree sizes of every stored checkpoint, ascending.
    fn checkpoint_sizes(&self) -> Result<Vec<u64>, StoreError>;
    /// Up to `max` tree sizes of stored checkpoints greater than `after` (from the first when
    /// `None`), ascending without repeats: [`LogReader::checkpoint_sizes`] a page at a time, for
    /// readers that must not hold one size per commit group of a large log.
    fn checkpoint_sizes_after(
        &self,
        after: Option<u64>,
        max: usize,
    ) -> Result<Vec<u64>, StoreError> {
        let all = self.checkpoint_sizes()?.into_iter();
        Ok(all
            .filter(|s| after.is_none_or(|a| *s > a))
            .take(max)
            .collect())
    }
    /// The event at `seq` and its inclusion path in the tree of `size` (RFC 9162 order): what
    /// a proof bundle needs from storage. Engines may read both at once.
    fn inclusion_material(&self, seq: u64, size: u64) -> Result<InclusionMaterial, StoreError> {
        event_and_path(self, seq, size)
    }
    /// The tree size of the latest stored checkpoint (what proofs are made against).
    fn latest_checkpoint_size(&self) -> Result<Option<u64>, StoreError> {
        Ok(self.checkpoint_sizes()?.last().copied())
    }
    /// Visits events `from..tree_size()` in order, reading storage sequentially.
    fn scan(
        &self,
        from: u64,
        visit: &mut dyn FnMut(StoredEvent) -> ControlFlow<()>,
    ) -> Result<(), StoreError>;
    /// As [`LogReader::scan`], in runs of up to `run_len` events sharing one buffer.
    fn scan_runs(
        &self,
        from: u64,
        run_len: usize,
        visit: &mut dyn FnMut(EventRun) -> ControlFlow<()>,
    ) -> Result<(), StoreError> {
        group_runs(from, run_len, visit, |push| {
            self.scan(from, &mut |ev| push(&ev.entry, PayloadRef::of(&ev)))
        })
    }
}

/// Queries by the indexed fields of events.
pub trait Querier: Send + Sync {
    /// Seqs of matching events, ascending, at most `limit`.
    fn query(&self, q: &Query) -> Result<Vec<u64>, StoreError>;
}

/// What operators and `verify` ask of an engine beside the log itself.
pub trait Diagnostics: Send + Sync {
    /// Where an event is stored, for messages (e.g. `log/seg-…:1234`).
    fn location(&self, seq: u64) -> String;
    /// Counters for monitoring; engines that keep none return the default.
    fn stats(&self) -> StoreStats {
        StoreStats::default()
    }
    /// A checker of the engine's own indexes against the entries, which `verify` feeds every
    /// event in seq order. Engines without derived indexes keep the default (none).
    fn index_check(&self) -> Option<Box<dyn IndexCheck + '_>> {
        None
    }
}

/// Monitoring counters of a store.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StoreStats {
    /// Durable syncs (group commits) since the store was opened.
    pub syncs: u64,
    /// Events made durable by those syncs.
    pub synced_events: u64,
    /// Histogram of events per sync: (upper bound, cumulative count), ascending, last is +Inf
    /// (`u64::MAX`).
    pub sync_sizes: Vec<(u64, u64)>,
    /// Bytes of the log (source of truth) on disk.
    pub log_bytes: u64,
    /// For engines shared by several processes: whether this process is the one that
    /// sequences appends now (`None` for single-process engines).
    pub sequencer: Option<bool>,
    /// How many times this process became the sequencer.
    pub takeovers: u64,
}

/// Checks derived indexes against entries visited in seq order `0..n`.
pub trait IndexCheck {
    /// Checks that every index lists event `seq` as its entry says.
    fn check(&mut self, seq: u64, entry: &mlaudit_core::entry::EntryView<'_>)
        -> Result<(), String>;
    /// After the last event `n - 1`: checks that the indexes list nothing more below `n`.
    /// An error may name the first seq it concerns.
    fn finish(&mut self, n: u64) -> Result<(), (Option<u64>, String)>;
    /// Whether this checker also proves the id index (`seq_of`) right for every event, so that
    /// `verify` need not look each id up.
    fn checks_ids(&self) -> bool {
        false
    }
}

/// Adapts a store to the Merkle [`NodeSource`].
#[derive(Debug)]
pub struct Nodes<'a, S: ?Sized>(pub &'a S);

impl<S: LogReader + ?Sized> NodeSource for Nodes<'_, S> {
    type Error = StoreError;
    fn node(&self, level: u32, index: u64) -> Result<Hash, StoreError> {
        self.0.node(level, index)
    }
}

/// Checks that `entry` is a payload removal event (`governance.payload_erased` or
/// `governance.payload_expired`): the only events that may name a removed payload.
pub fn check_remover(seq: u64, entry: &[u8]) -> Result<(), StoreError> {
    let view = mlaudit_core::entry::decode_view(entry).map_err(|e| StoreError::Corrupt {
        location: format!("seq {seq}"),
        problem: e.to_string(),
    })?;
    if mlaudit_core::event::PAYLOAD_REMOVAL_KINDS.contains(&view.kind) {
        return Ok(());
    }
    Err(StoreError::Refused(format!(
        "seq {seq} is a {} event: only a governance.payload_erased or governance.payload_expired event may remove payloads",
        view.kind
    )))
}

/// Checks a batch of (seq, remover) pairs before an engine removes anything: every seq is in
/// the log, and every remover is a payload removal event of it ([`check_remover`]).
pub fn check_removals(log: &dyn LogReader, removals: &[(u64, u64)]) -> Result<(), StoreError> {
    let size = log.tree_size();
    if let Some((seq, _)) = removals.iter().find(|(seq, _)| *seq >= size) {
        return Err(StoreError::NotFound(format!("seq {seq}")));
    }
    let mut removers: Vec<u64> = removals.iter().map(|(_, r)| *r).collect();
    removers.sort_unstable();
    removers.dedup();
    for remover in removers {
        if remover >= size {
            return Err(StoreError::NotFound(format!("remover seq {remover}")));
        }
        check_remover(remover, &log.event(remover)?.entry)?;
    }
    Ok(())
}

/// Every seq of events of `kind`, in order.
pub fn seqs_of_kind(store: &dyn Store, kind: &str) -> Result<Vec<u64>, StoreError> {
    seqs_matching(
        store,
        Query {
            kind: Some(kind.into()),
            ..Query::default()
        },
    )
}

/// Every seq matching `query` (its cursor and limit aside), in order, read a page of 10,000
/// at a time.
pub fn seqs_matching(store: &dyn Store, query: Query) -> Result<Vec<u64>, StoreError> {
    let mut out = Vec::new();
    loop {
        let page = store.query(&Query {
            after_seq: out.last().copied(),
            limit: 10_000,
            ..query.clone()
        })?;
        if page.is_empty() {
            return Ok(out);
        }
        out.extend(page);
    }
}

/// The latest checkpoint note, if any.
pub fn latest_checkpoint(store: &dyn Store) -> Result<Option<String>, StoreError> {
    match store.latest_checkpoint_size()? {
        Some(size) => store.checkpoint(size),
        None => Ok(None),
    }
}

/// The store's role traits, for callers that call their methods on a concrete engine:
/// `use mlaudit_store::prelude::*;`.
pub mod prelude {
    pub use crate::{Appender, Diagnostics, LogReader, Querier, Store};
}
