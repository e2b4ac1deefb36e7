//! The embedded storage engine: the default `mlaudit` store, needing no external service.
//!
//! On disk (see `docs/FORMAT.md`): append-only segment files `seg-<start>.log` holding framed
//! event and checkpoint records ([`record`]), plus derived files ([`derived`]) that make proofs
//! O(log n) reads and queries index lookups.
//!
//! **Invariants**
//! * The segments are the only source of truth. Derived files are trusted up to the fsync'd
//!   watermark in `derived.meta` and recomputed beyond it at open.
//! * One writer thread appends; a group of concurrent batches shares one write and one
//!   `fdatasync` of the segment (group commit). Every group ends with a signed checkpoint
//!   record for the new size, so an acknowledged batch and its checkpoint are durable together.
//! * Nothing is acknowledged before its `fdatasync` returns; after a failed write or sync the
//!   writer stops for good (no retry of a failed fsync).
//! * At open, an incomplete last record of the last segment (a torn, never-acknowledged tail)
//!   is truncated and reported; any other damage refuses to open and names file and offset.

#![cfg_attr(
    test,
    allow(
        clippy::unwrap_used,
        clippy::expect_used,
        reason = "a unit test fails loudly on any unexpected error"
    )
)]

pub mod derived;
pub mod guard;
pub mod index;
pub mod keyed;
mod merger;
pub mod packed;
pub mod record;
mod recover;
mod removal;
pub mod runs;
mod writer;

use index::Index;
use mlaudit_core::event::PreparedEvent;
use mlaudit_core::merkle::Hash;
use mlaudit_core::note::NoteSigner;
use mlaudit_core::EventId;
use mlaudit_store::{
    AppendReceipt, Appender, Diagnostics, LogReader, Querier, Query, StoreError, StoredEvent, Tier,
};
use std::fs::File;
use std::ops::ControlFlow;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

pub use recover::{OpenError, OpenReport};

/// Mode of every file the store creates: private to the service user.
pub(crate) const FILE_MODE: u32 = 0o600;
/// Mode of the store's directory.
pub(crate) const DIR_MODE: u32 = 0o700;

/// Events whose times one step of a time-only query scans under the index lock.
const TIME_SCAN_WINDOW: u64 = 1 << 16;

/// Bytes read at a time when scanning segments.
const SCAN_CHUNK: usize = 8 << 20;

/// A segment is closed for appends once it reaches this size (by default; see [`Options`]).
pub const SEGMENT_TARGET: u64 = 128 << 20;

/// The in-memory tail of the indexes is written out as a run once it holds this many events
/// (by default; see [`Options`]).
pub const RUN_EVENTS: u64 = 1 << 18;

/// Memory for the runs' fences and Bloom filters (by default; see [`Options`]).
pub const INDEX_CACHE: u64 = 256 << 20;

/// How a store is opened ([`EmbeddedStore::open_with`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Options {
    /// A segment is closed for appends, and a new one started, once it holds at least this
    /// many bytes. Tests set it small to exercise many segments.
    pub segment_target: u64,
    /// The in-memory tail of the indexes is written out as a run once it holds this many
    /// events. Tests set it small to exercise many runs and their merges.
    pub run_events: u64,
    /// Bytes of memory the runs' fences and Bloom filters may take; past it, lookups read them
    /// from the files.
    pub index_cache: u64,
    /// Compress segments once the writer has moved on from them ([`packed`]).
    pub pack_sealed: bool,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            segment_target: SEGMENT_TARGET,
            run_events: RUN_EVENTS,
            index_cache: INDEX_CACHE,
            pack_sealed: true,
        }
    }
}

/// One segment file: raw (`seg-<start>.log`, appended to while it is the last) or packed
/// (`seg-<start>.zst`, sealed). Reads go through [`Segment::read_exact_at`] and
/// [`Segment::len`], which answer in raw offsets either way.
#[derive(Debug, Clone)]
pub(crate) struct Segment {
    pub start: u64,
    pub file: Arc<File>,
    pub name: String,
    pub packed: Option<Arc<packed::Packed>>,
}

impl EmbeddedStore {
    /// Checks that every seq is in the log.
    fn check_seqs(&self, mut seqs: impl Iterator<Item = u64>) -> Result<(), StoreError> {
        let size = self.tree_size();
        match seqs.find(|seq| *seq >= size) {
            Some(seq) => Err(StoreError::NotFound(format!("seq {seq}"))),
            None => Ok(()),
        }
    }
}

impl Segment {
    /// The tier of the payloads it holds: hot while raw, warm once packed.
    pub fn tier(&self) -> Tier {
        match self.packed {
            Some(_) => Tier::Warm,
            None => Tier::Hot,
        }
    }

    /// Its raw length.
    pub fn len(&self) -> std::io::Result<u64> {
        match &self.packed {
            Some(p) => Ok(p.raw_len()),
            None => Ok(self.file.metadata()?.len()),
        }
    }

    /// Reads raw bytes at a raw offset.
    pub fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        match &self.packed {
            Some(p) => p.read_exact_at(buf, offset),
            None => self.file.read_exact_at(buf, offset),
        }
    }
}

/// The segment file name for a start position.
pub(crate) fn segment_name(start: u64) -> String {
    format!("seg-{start:020}.log")
}

/// State shared by readers and the writer.
#[derive(Debug)]
pub(crate) struct Shared {
    pub dir: PathBuf,
    pub size: AtomicU64,
    pub index: RwLock<Index>,
    /// Read handles on the fixed-size derived files (record positions, index records,
    /// checkpoints), read without the index lock.
    pub files: index::Files,
    pub segments: RwLock<Vec<Segment>>,
    pub levels: RwLock<Vec<Arc<File>>>,
    /// The stored hashes of the tree's upper levels, read once from their files and kept:
    /// every inclusion proof crosses them. See [`CACHED_FROM_LEVEL`].
    pub upper_nodes: RwLock<Vec<Vec<Hash>>>,
    /// Set when a sync failed: the committer stops writing.
    pub failed: std::sync::atomic::AtomicBool,
    /// Held across every segment `fdatasync` (see `writer::sync_segment`).
    pub sync_lock: Mutex<()>,
    /// Monitoring counters, updated by the syncer.
    pub stats: Mutex<SyncStats>,
    /// Read-held while reading raw segment bytes; held exclusively while a payload removal
    /// patches records of a raw segment in place ([`removal`]).
    pub rewriting: RwLock<()>,
    /// Held by whatever rewrites a segment file (packing, payload removal): one at a time.
    pub segment_rewrite: Mutex<()>,
    /// Where to ask the background thread for work ([`merger`]).
    pub maintenance: Mutex<Option<std::sync::mpsc::Sender<merger::Ask>>>,
    pub options: Options,
}

/// Levels from this one up may be served from memory (`Shared::upper_nodes`), so that an
/// inclusion proof reads the event's block and few nodes from disk. Stored nodes never change
/// once written, so the copy is filled from the files as the tree grows (a level at a time, on
/// first use) and never invalidated.
pub(crate) const CACHED_FROM_LEVEL: u32 = 4;

/// Bytes of the lowest level kept in memory: levels holding more hashes are read from their
/// files, so that the copy stays under twice this whatever the log's size.
const UPPER_LEVEL_BYTES: u64 = 8 << 20;

/// The lowest tree level served from memory for a tree of `size` leaves.
fn cached_from(size: u64) -> u32 {
    let mut level = CACHED_FROM_LEVEL;
    while (size >> level) * 32 > UPPER_LEVEL_BYTES {
        level += 1;
    }
    level
}

/// Events read together for an inclusion proof: the aligned block holding the event, whose
/// entries give the path's nodes below [`CACHED_FROM_LEVEL`] (the rest come from memory), so
/// that a proof costs one read of storage.
const PROOF_BLOCK: u64 = 1 << CACHED_FROM_LEVEL;

/// An event record's part B: the payload, the seq of the governance event that removed it, or
/// nothing (the payload is kept only in the cold archive).
#[derive(Clone, Copy, Debug)]
pub(crate) enum PartB<'a> {
    Payload(&'a [u8]),
    RemovedBy(u64),
    InArchive,
}

impl<'a> PartB<'a> {
    /// As the store interface names it.
    fn as_ref(self) -> mlaudit_store::PayloadRef<'a> {
        match self {
            PartB::Payload(p) => mlaudit_store::PayloadRef::Here(Some(p)),
            PartB::RemovedBy(r) => mlaudit_store::PayloadRef::RemovedBy(r),
            PartB::InArchive => mlaudit_store::PayloadRef::InArchive,
        }
    }

    /// The stored event with this part B, read from a segment of tier `local` (hot: raw,
    /// warm: packed).
    fn stored(self, seq: u64, entry: Vec<u8>, local: Tier) -> StoredEvent {
        let mut ev = StoredEvent::new(seq, entry, None);
        ev.tier = local;
        match self {
            PartB::Payload(p) => ev.payload = Some(p.to_vec()),
            PartB::RemovedBy(s) => ev.removed_by = Some(s),
            PartB::InArchive => ev.tier = Tier::Cold,
        }
        ev
    }
}

/// Perfect-subtree hashes inside one block, recomputed from its entries; every other node from
/// the store.
struct BlockNodes<'a> {
    store: &'a EmbeddedStore,
    block: u64,
    /// `levels[l][i]`: the node of level `l` whose first leaf is `block + (i << l)`.
    levels: Vec<Vec<Hash>>,
}

impl BlockNodes<'_> {
    fn new<'a>(store: &'a EmbeddedStore, block: u64, events: &[StoredEvent]) -> BlockNodes<'a> {
        let mut levels = vec![events
            .iter()
            .map(|e| mlaudit_core::merkle::leaf_hash(&e.entry))
            .collect::<Vec<Hash>>()];
        while levels.last().is_some_and(|l| l.len() > 1) {
            let below = levels.last().map(Vec::as_slice).unwrap_or_default();
            let up = below
                .chunks_exact(2)
                .map(|p| mlaudit_core::merkle::node_hash(&p[0], &p[1]))
                .collect();
            levels.push(up);
        }
        BlockNodes {
            store,
            block,
            levels,
        }
    }
}

impl mlaudit_core::merkle::NodeSource for BlockNodes<'_> {
    type Error = StoreError;
    fn node(&self, level: u32, index: u64) -> Result<Hash, StoreError> {
        let first = index << level;
        if first >= self.block && first + (1 << level) <= self.block + PROOF_BLOCK {
            if let Some(h) = self
                .levels
                .get(level as usize)
                .and_then(|l| l.get(((first - self.block) >> level) as usize))
            {
                return Ok(*h);
            }
        }
        self.store.node(level, index)
    }
}

/// Upper bounds of the events-per-sync histogram.
pub(crate) const SYNC_SIZE_BOUNDS: [u64; 6] = [1, 10, 100, 1_000, 10_000, u64::MAX];

/// What the syncer has made durable since open.
#[derive(Debug, Default)]
pub(crate) struct SyncStats {
    pub syncs: u64,
    pub events: u64,
    pub buckets: [u64; SYNC_SIZE_BOUNDS.len()],
    pub log_bytes: u64,
}

impl SyncStats {
    pub fn record(&mut self, events: u64, log_bytes: u64) {
        self.syncs += 1;
        self.events += events;
        if let Some(i) = SYNC_SIZE_BOUNDS.iter().position(|b| events <= *b) {
            self.buckets[i] += 1;
        }
        self.log_bytes = log_bytes;
    }
}

/// The embedded store. Cheap to share behind an `Arc`; dropping it stops the writer cleanly and
/// records the derived-file watermark.
#[derive(Debug)]
pub struct EmbeddedStore {
    shared: Arc<Shared>,
    writer: Mutex<Option<writer::Handle>>,
}

fn io_err(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> StoreError {
    let context = context.into();
    move |source| StoreError::Io { context, source }
}

/// Receives (seq, entry, part B, the segment's tier) of each event a scan reads.
type SliceVisitor<'a> = &'a mut dyn FnMut(u64, &[u8], PartB<'_>, Tier) -> ControlFlow<()>;

fn lock_poisoned() -> StoreError {
    StoreError::WriterStopped("a thread panicked while holding the store's lock".into())
}

impl EmbeddedStore {
    /// Visits events `from..tree_size()` in order, as borrowed (seq, entry, payload) slices:
    /// the one sequential reader behind [`Store::scan`] and [`Store::scan_runs`].
    fn scan_slices(&self, from: u64, visit: SliceVisitor<'_>) -> Result<(), StoreError> {
        let end = self.tree_size();
        if from >= end {
            return Ok(());
        }
        let start_pos = self.offset_of(from)?;
        let segments = self
            .shared
            .segments
            .read()
            .map_err(|_| lock_poisoned())?
            .clone();
        let mut seq = from;
        let mut offsets = OffsetWindow::default();
        let mut buf: Vec<u8> = Vec::with_capacity(SCAN_CHUNK);
        for seg in &segments {
            let len = seg.len().map_err(io_err(seg.name.clone()))?;
            if seg.start + len <= start_pos {
                continue;
            }
            // `buf` holds the segment's bytes from file offset `base`; records are parsed at `at`.
            let mut base = start_pos.saturating_sub(seg.start);
            let mut at = 0usize;
            buf.clear();
            while seq < end {
                let corrupt = |off: u64, p: String| StoreError::Corrupt {
                    location: format!("{}:{off}", seg.name),
                    problem: p,
                };
                let avail = buf.len() - at;
                let need = match buf
                    .get(at..at + record::HEADER_LEN)
                    .and_then(|h| <&[u8; record::HEADER_LEN]>::try_from(h).ok())
                {
                    Some(header) => match record::parse_header(header) {
                        Ok(h) => h.total_len() as usize,
                        Err(_) => {
                            reread_into(&self.shared, &mut buf, at, seg.start + base + at as u64)?;
                            continue;
                        }
                    },
                    None => record::HEADER_LEN,
                };
                if avail < need {
                    let file_pos = base + buf.len() as u64;
                    if file_pos >= len {
                        if avail == 0 {
                            break;
                        }
                        return Err(corrupt(base + at as u64, "truncated record".into()));
                    }
                    buf.drain(..at);
                    base += at as u64;
                    at = 0;
                    let add = (need.max(SCAN_CHUNK).saturating_sub(buf.len()) as u64)
                        .min(len - file_pos) as usize;
                    let old = buf.len();
                    buf.resize(old + add, 0);
                    read_records(&self.shared, seg, &mut buf[old..], file_pos)
                        .map_err(io_err(format!("reading {}", seg.name)))?;
                    continue;
                }
                let rec = &buf[at..at + need];
                let off = base + at as u64;
                let header: &[u8; record::HEADER_LEN] = rec[..record::HEADER_LEN]
                    .try_into()
                    .map_err(|_| corrupt(off, "truncated record header".into()))?;
                let checked = record::parse_header(header)
                    .and_then(|h| record::check_record(&h, rec).map(|_| h));
                let Ok(h) = checked else {
                    reread_into(&self.shared, &mut buf, at, seg.start + off)?;
                    continue;
                };
                if record::is_event(h.kind) {
                    let pos = seg.start + off;
                    if offsets.at(self, seq)? != pos {
                        return Err(StoreError::Corrupt {
                            location: format!("offsets.bin entry for seq {seq}"),
                            problem: format!("does not point at its record (log position {pos})"),
                        });
                    }
                    let (entry, b) = event_parts(&h, rec).map_err(|p| corrupt(off, p))?;
                    if visit(seq, entry, b, seg.tier()).is_break() {
                        return Ok(());
                    }
                    seq += 1;
                }
                at += need;
            }
        }
        Ok(())
    }

    /// `count` hashes of `level` from `start`, read from the level's file.
    fn read_nodes(&self, level: u32, start: u64, count: u64) -> Result<Vec<Hash>, StoreError> {
        let file = self
            .shared
            .levels
            .read()
            .map_err(|_| lock_poisoned())?
            .get(level as usize)
            .cloned();
        let file = file.ok_or_else(|| StoreError::NotFound(format!("tree level {level}")))?;
        let mut buf = vec![0u8; count as usize * 32];
        file.read_exact_at(&mut buf, start * 32)
            .map_err(|source| StoreError::Io {
                context: format!(
                    "reading {} at {}",
                    derived::level_path(&self.shared.dir, level as usize).display(),
                    start * 32
                ),
                source,
            })?;
        Ok(buf.chunks_exact(32).filter_map(Hash::from_slice).collect())
    }

    /// Hashes of a cached upper level: from memory, after reading whatever the tree grew by.
    fn upper_nodes(
        &self,
        level: u32,
        start: u64,
        count: u64,
        available: u64,
    ) -> Result<Vec<Hash>, StoreError> {
        let (lvl, range) = (level as usize, start as usize..(start + count) as usize);
        {
            let cache = self
                .shared
                .upper_nodes
                .read()
                .map_err(|_| lock_poisoned())?;
            if let Some(hashes) = cache.get(lvl).and_then(|l| l.get(range.clone())) {
                return Ok(hashes.to_vec());
            }
        }
        let mut cache = self
            .shared
            .upper_nodes
            .write()
            .map_err(|_| lock_poisoned())?;
        if cache.len() <= lvl {
            cache.resize_with(lvl + 1, Vec::new);
        }
        for lower in cache
            .iter_mut()
            .take(cached_from(self.tree_size()) as usize)
        {
            // Levels the tree outgrew are read from their files from now on.
            *lower = Vec::new();
        }
        let have = cache[lvl].len() as u64;
        if have < available {
            let more = self.read_nodes(level, have, available - have)?;
            cache[lvl].extend(more);
        }
        cache[lvl].get(range).map(<[Hash]>::to_vec).ok_or_else(|| {
            StoreError::NotFound(format!(
                "tree nodes {start}..{} at level {level}",
                start + count
            ))
        })
    }

    /// Opens (creating if needed) the store in `dir`, recovering from any crash. Without a
    /// signer the store is read-only.
    pub fn open(
        dir: &Path,
        signer: Option<NoteSigner>,
    ) -> Result<(EmbeddedStore, OpenReport), OpenError> {
        EmbeddedStore::open_with(dir, signer, Options::default())
    }

    /// [`EmbeddedStore::open`] with explicit options.
    pub fn open_with(
        dir: &Path,
        signer: Option<NoteSigner>,
        options: Options,
    ) -> Result<(EmbeddedStore, OpenReport), OpenError> {
        let (shared, state, report) = recover::open(dir, signer, options)?;
        let shared = Arc::new(shared);
        let handle = writer::spawn(shared.clone(), state);
        Ok((
            EmbeddedStore {
                shared,
                writer: Mutex::new(Some(handle)),
            },
            report,
        ))
    }

    /// The directory this store lives in.
    pub fn dir(&self) -> &Path {
        &self.shared.dir
    }

    fn segment_for(&self, pos: u64) -> Result<Segment, StoreError> {
        segment_for(&self.shared, pos)
    }

    fn read_record(&self, pos: u64) -> Result<(record::Header, Vec<u8>, Segment), StoreError> {
        read_record(&self.shared, pos)
    }

    /// The entries and payloads of events `block..block + PROOF_BLOCK` from one read, when the
    /// run lies in one segment and ends before the tree does; `None` to take the slower path.
    fn read_block(&self, block: u64) -> Result<Option<Vec<StoredEvent>>, StoreError> {
        let end = block + PROOF_BLOCK;
        if end >= self.tree_size() {
            return Ok(None);
        }
        let (start, stop) = (self.offset_of(block)?, self.offset_of(end)?);
        let seg = self.segment_for(start)?;
        if stop <= start || self.segment_for(stop - 1)?.start != seg.start {
            return Ok(None);
        }
        let mut buf = vec![0u8; (stop - start) as usize];
        let corrupt = |off: u64, problem: String| StoreError::Corrupt {
            location: format!("{}:{off}", seg.name),
            problem,
        };
        read_records(&self.shared, &seg, &mut buf, start - seg.start)
            .map_err(|e| corrupt(start - seg.start, format!("cannot read records: {e}")))?;
        let mut events = Vec::with_capacity(PROOF_BLOCK as usize);
        let mut at = 0usize;
        while at < buf.len() {
            let off = start - seg.start + at as u64;
            let header: &[u8; record::HEADER_LEN] = buf
                .get(at..at + record::HEADER_LEN)
                .and_then(|h| h.try_into().ok())
                .ok_or_else(|| corrupt(off, "truncated record header".into()))?;
            let h = record::parse_header(header).map_err(|e| corrupt(off, e.to_string()))?;
            let rec = buf
                .get(at..at + h.total_len() as usize)
                .ok_or_else(|| corrupt(off, "truncated record".into()))?;
            record::check_record(&h, rec).map_err(|e| corrupt(off, e.to_string()))?;
            if record::is_event(h.kind) {
                let (entry, b) = event_parts(&h, rec).map_err(|p| corrupt(off, p))?;
                let seq = block + events.len() as u64;
                if entry_seq(entry) != Some(seq) {
                    return Err(StoreError::Corrupt {
                        location: format!("offsets.bin entries for seqs {block}..{end}"),
                        problem: format!("the record at {}:{off} is not seq {seq}", seg.name),
                    });
                }
                events.push(b.stored(seq, entry.to_vec(), seg.tier()));
            }
            at += h.total_len() as usize;
        }
        Ok((events.len() as u64 == PROOF_BLOCK).then_some(events))
    }

    fn offset_of(&self, seq: u64) -> Result<u64, StoreError> {
        if seq >= self.tree_size() {
            return Err(StoreError::NotFound(format!("seq {seq}")));
        }
        self.shared
            .files
            .offset(seq)
            .map_err(io_err(format!("reading offsets.bin at seq {seq}")))
    }

    fn writer(&self) -> Result<writer::Handle, StoreError> {
        self.writer
            .lock()
            .map_err(|_| lock_poisoned())?
            .clone()
            .ok_or_else(|| StoreError::WriterStopped("store is closing".into()))
    }

    /// Waits until the background work due so far is done: sealed segments packed, index runs
    /// merged. (Closing does not wait for it: it stops after the step in progress.)
    pub fn settle(&self) {
        merger::settle(&self.shared);
    }

    /// Stops the writer, waiting for queued appends, and records the watermark.
    pub fn close(&self) -> Result<(), StoreError> {
        let handle = self.writer.lock().map_err(|_| lock_poisoned())?.take();
        match handle {
            Some(h) => h.shutdown(),
            None => Ok(()),
        }
    }
}

/// A run of `offsets.bin` read at once, so that a scan reads it once per 64k events rather
/// than once per event.
#[derive(Default)]
struct OffsetWindow {
    first: u64,
    offsets: Vec<u64>,
}

impl OffsetWindow {
    const SPAN: usize = 1 << 16;

    fn at(&mut self, store: &EmbeddedStore, seq: u64) -> Result<u64, StoreError> {
        let hit = seq
            .checked_sub(self.first)
            .and_then(|i| self.offsets.get(i as usize).copied());
        if let Some(pos) = hit {
            return Ok(pos);
        }
        let size = store.tree_size();
        let count = (Self::SPAN as u64).min(size.saturating_sub(seq));
        self.first = seq;
        self.offsets = store
            .shared
            .files
            .offsets(seq, count)
            .map_err(io_err(format!("reading offsets.bin at seq {seq}")))?;
        self.offsets
            .first()
            .copied()
            .ok_or_else(|| StoreError::NotFound(format!("seq {seq}")))
    }
}

impl Drop for EmbeddedStore {
    fn drop(&mut self) {
        let _ = self.close();
    }
}

fn segment_for(shared: &Shared, pos: u64) -> Result<Segment, StoreError> {
    let segs = shared.segments.read().map_err(|_| lock_poisoned())?;
    let i = segs.partition_point(|s| s.start <= pos);
    segs.get(i.wrapping_sub(1))
        .cloned()
        .ok_or_else(|| StoreError::NotFound(format!("log position {pos}")))
}

fn read_record(
    shared: &Shared,
    pos: u64,
) -> Result<(record::Header, Vec<u8>, Segment), StoreError> {
    let seg = segment_for(shared, pos)?;
    let off = pos - seg.start;
    let corrupt = |problem: String| StoreError::Corrupt {
        location: format!("{}:{off}", seg.name),
        problem,
    };
    let _stable = shared.rewriting.read().map_err(|_| lock_poisoned())?;
    let mut header = [0u8; record::HEADER_LEN];
    seg.read_exact_at(&mut header, off)
        .map_err(|e| corrupt(format!("cannot read record header: {e}")))?;
    let h = record::parse_header(&header).map_err(|e| corrupt(e.to_string()))?;
    let mut buf = vec![0u8; h.total_len() as usize];
    seg.read_exact_at(&mut buf, off)
        .map_err(|e| corrupt(format!("cannot read record: {e}")))?;
    record::check_record(&h, &buf).map_err(|e| corrupt(e.to_string()))?;
    Ok((h, buf, seg))
}

/// Replaces `buf` from `at` on with the record at log position `pos`, read again in one
/// consistent read: a scan reads a segment in chunks, and a payload removal may rewrite a
/// record between the chunk holding its start and the next. A record that is damaged on disk
/// is reported as such.
fn reread_into(shared: &Shared, buf: &mut Vec<u8>, at: usize, pos: u64) -> Result<(), StoreError> {
    let (_, bytes, _) = read_record(shared, pos)?;
    buf.truncate(at);
    buf.extend_from_slice(&bytes);
    Ok(())
}

/// Reads raw segment bytes while no payload removal is rewriting them.
fn read_records(shared: &Shared, seg: &Segment, buf: &mut [u8], off: u64) -> std::io::Result<()> {
    let _stable = shared
        .rewriting
        .read()
        .map_err(|_| std::io::Error::other("the store's rewrite lock is poisoned"))?;
    seg.read_exact_at(buf, off)
}

/// The event `seq`, whose record is at log position `pos`.
pub(crate) fn read_event_at(
    shared: &Shared,
    seq: u64,
    pos: u64,
) -> Result<StoredEvent, StoreError> {
    let (h, buf, seg) = read_record(shared, pos)?;
    let off = pos - seg.start;
    if !record::is_event(h.kind) {
        return Err(StoreError::Corrupt {
            location: seg.name,
            problem: format!("seq {seq} points at a non-event record"),
        });
    }
    let (entry, b) = event_parts(&h, &buf).map_err(|problem| StoreError::Corrupt {
        location: format!("{}:{off}", seg.name),
        problem,
    })?;
    let stored_seq = entry_seq(entry);
    if stored_seq != Some(seq) {
        return Err(StoreError::Corrupt {
            location: format!("offsets.bin entry for seq {seq}"),
            problem: format!("points at the record of seq {stored_seq:?}"),
        });
    }
    Ok(b.stored(seq, entry.to_vec(), seg.tier()))
}

/// The seq an entry header claims (bytes 1..9, big-endian; docs/FORMAT.md §1), without
/// decoding the rest.
pub(crate) fn entry_seq(entry: &[u8]) -> Option<u64> {
    entry
        .get(1..9)
        .and_then(|b| b.try_into().ok())
        .map(u64::from_be_bytes)
}

/// A checked record's two parts.
fn record_parts<'a>(h: &record::Header, buf: &'a [u8]) -> (&'a [u8], &'a [u8]) {
    let a_end = record::HEADER_LEN + h.len_a as usize;
    let b_end = a_end + h.len_b as usize;
    (&buf[record::HEADER_LEN..a_end], &buf[a_end..b_end])
}

/// A checked event record's entry and part B.
pub(crate) fn event_parts<'a>(
    h: &record::Header,
    buf: &'a [u8],
) -> Result<(&'a [u8], PartB<'a>), String> {
    let (a, b) = record_parts(h, buf);
    match h.kind {
        record::REMOVED => {
            let remover = record::remover(b)
                .ok_or("a removed payload's record holds more than its remover's seq")?;
            Ok((a, PartB::RemovedBy(remover)))
        }
        record::IN_ARCHIVE if b.iter().any(|&z| z != 0) => {
            Err("an archived payload's record holds more than zeros".into())
        }
        record::IN_ARCHIVE => Ok((a, PartB::InArchive)),
        _ => Ok((a, PartB::Payload(b))),
    }
}

impl Appender for EmbeddedStore {
    fn append(&self, events: Vec<PreparedEvent>) -> Result<AppendReceipt, StoreError> {
        self.writer()?.append(events)
    }

    fn remove_payload_batch(&self, removals: &[(u64, u64)]) -> Result<u64, StoreError> {
        mlaudit_store::check_removals(self, removals)?;
        let changes = removals
            .iter()
            .map(|(seq, remover)| (*seq, removal::Change::Remove(*remover)));
        removal::rewrite(&self.shared, changes.collect())
    }

    fn offload_payloads(&self, seqs: &[u64]) -> Result<u64, StoreError> {
        self.check_seqs(seqs.iter().copied())?;
        let changes = seqs.iter().map(|seq| (*seq, removal::Change::Offload));
        removal::rewrite(&self.shared, changes.collect())
    }

    fn restore_payloads(&self, payloads: &[(u64, Vec<u8>)]) -> Result<u64, StoreError> {
        self.check_seqs(payloads.iter().map(|(seq, _)| *seq))?;
        let changes = payloads
            .iter()
            .map(|(seq, p)| (*seq, removal::Change::Restore(p.clone())));
        removal::rewrite(&self.shared, changes.collect())
    }

    fn submit(&self, events: Vec<PreparedEvent>, done: mlaudit_store::AppendDone) {
        match self.writer() {
            Ok(writer) => writer.submit(events, done),
            Err(e) => done(Err(e)),
        }
    }

    fn try_submit(
        &self,
        events: Vec<PreparedEvent>,
        done: mlaudit_store::AppendDone,
    ) -> Result<(), (Vec<PreparedEvent>, mlaudit_store::AppendDone)> {
        match self.writer() {
            Ok(writer) => writer.try_submit(events, done),
            Err(e) => {
                done(Err(e));
                Ok(())
            }
        }
    }
}

impl LogReader for EmbeddedStore {
    fn tree_size(&self) -> u64 {
        self.shared.size.load(Ordering::Acquire)
    }

    fn event(&self, seq: u64) -> Result<StoredEvent, StoreError> {
        if seq >= self.tree_size() {
            return Err(StoreError::NotFound(format!("seq {seq}")));
        }
        read_event_at(&self.shared, seq, self.offset_of(seq)?)
    }

    fn seq_of(&self, id: &EventId) -> Result<Option<u64>, StoreError> {
        let index = self.shared.index.read().map_err(|_| lock_poisoned())?;
        let found = index
            .seq_of(id)
            .map_err(io_err("looking an id up in the index"))?;
        Ok(found.filter(|s| *s < self.tree_size()))
    }

    fn node(&self, level: u32, index: u64) -> Result<Hash, StoreError> {
        Ok(self.nodes(level, index, 1)?[0])
    }

    fn seq_of_leaf(&self, leaf: &Hash) -> Result<Option<u64>, StoreError> {
        let size = self.tree_size();
        let candidates: Vec<u64> = {
            let index = self.shared.index.read().map_err(|_| lock_poisoned())?;
            let found = index
                .leaf_candidates(leaf)
                .map_err(io_err("looking a leaf hash up in the index"))?;
            found.into_iter().filter(|s| *s < size).collect()
        };
        for seq in candidates {
            if self.node(0, seq)?.ct_eq(leaf) {
                return Ok(Some(seq));
            }
        }
        Ok(None)
    }

    fn nodes(&self, level: u32, start: u64, count: u64) -> Result<Vec<Hash>, StoreError> {
        let available = self.tree_size().checked_shr(level).unwrap_or(0);
        if start.saturating_add(count) > available {
            return Err(StoreError::NotFound(format!(
                "tree nodes {start}..{} at level {level}",
                start + count
            )));
        }
        if level >= cached_from(self.tree_size()) {
            return self.upper_nodes(level, start, count, available);
        }
        self.read_nodes(level, start, count)
    }

    fn checkpoint(&self, size: u64) -> Result<Option<String>, StoreError> {
        let pos = {
            let index = self.shared.index.read().map_err(|_| lock_poisoned())?;
            index
                .checkpoint_at(size)
                .map_err(io_err("reading checkpoints.bin"))?
        };
        let Some(pos) = pos else { return Ok(None) };
        let (h, buf, seg) = self.read_record(pos)?;
        let (note, _) = record_parts(&h, &buf);
        String::from_utf8(note.to_vec())
            .map(Some)
            .map_err(|_| StoreError::Corrupt {
                location: format!("{}:{}", seg.name, pos - seg.start),
                problem: "checkpoint is not UTF-8".into(),
            })
    }

    fn inclusion_material(
        &self,
        seq: u64,
        size: u64,
    ) -> Result<mlaudit_store::InclusionMaterial, StoreError> {
        let block = seq & !(PROOF_BLOCK - 1);
        if seq < size && block + PROOF_BLOCK <= size {
            if let Some(mut events) = self.read_block(block)? {
                let path = mlaudit_core::merkle::inclusion_proof(
                    &BlockNodes::new(self, block, &events),
                    seq,
                    size,
                )?;
                return Ok((events.swap_remove((seq - block) as usize), path));
            }
        }
        mlaudit_store::event_and_path(self, seq, size)
    }

    fn latest_checkpoint_size(&self) -> Result<Option<u64>, StoreError> {
        let index = self.shared.index.read().map_err(|_| lock_poisoned())?;
        Ok(index.last_checkpoint().map(|(s, _)| s))
    }

    fn checkpoint_sizes(&self) -> Result<Vec<u64>, StoreError> {
        let index = self.shared.index.read().map_err(|_| lock_poisoned())?;
        index
            .checkpoint_sizes()
            .map_err(io_err("reading checkpoints.bin"))
    }

    fn checkpoint_sizes_after(
        &self,
        after: Option<u64>,
        max: usize,
    ) -> Result<Vec<u64>, StoreError> {
        let index = self.shared.index.read().map_err(|_| lock_poisoned())?;
        index
            .checkpoint_sizes_after(after, max)
            .map_err(io_err("reading checkpoints.bin"))
    }

    fn scan(
        &self,
        from: u64,
        visit: &mut dyn FnMut(StoredEvent) -> ControlFlow<()>,
    ) -> Result<(), StoreError> {
        self.scan_slices(from, &mut |seq, entry, b, tier| {
            visit(b.stored(seq, entry.to_vec(), tier))
        })
    }

    fn scan_runs(
        &self,
        from: u64,
        run_len: usize,
        visit: &mut dyn FnMut(mlaudit_store::EventRun) -> ControlFlow<()>,
    ) -> Result<(), StoreError> {
        mlaudit_store::group_runs(from, run_len, visit, |push| {
            self.scan_slices(from, &mut |_, entry, b, _| push(entry, b.as_ref()))
        })
    }
}

impl Querier for EmbeddedStore {
    fn query(&self, q: &Query) -> Result<Vec<u64>, StoreError> {
        if Index::uses_postings(q) {
            let plan = {
                let index = self.shared.index.read().map_err(|_| lock_poisoned())?;
                index.plan(q)
            };
            return match plan {
                Some(plan) => plan.run(q).map_err(io_err("reading the indexes")),
                None => Ok(Vec::new()),
            };
        }
        // By time alone: a scan of the event times, one window per lock, so that a long scan
        // never keeps the writer from publishing.
        let mut out = Vec::new();
        let mut from = q.after_seq.map_or(0, |s| s.saturating_add(1));
        let end = self.tree_size();
        while from < end && out.len() < q.limit {
            let to = from.saturating_add(TIME_SCAN_WINDOW).min(end);
            let index = self.shared.index.read().map_err(|_| lock_poisoned())?;
            index
                .scan_times(q, from, to, &mut out)
                .map_err(io_err("reading index.bin"))?;
            from = to;
        }
        Ok(out)
    }
}

impl Diagnostics for EmbeddedStore {
    fn stats(&self) -> mlaudit_store::StoreStats {
        let Ok(s) = self.shared.stats.lock() else {
            return mlaudit_store::StoreStats::default();
        };
        let mut cumulative = 0;
        let sync_sizes = SYNC_SIZE_BOUNDS
            .iter()
            .zip(s.buckets)
            .map(|(bound, n)| {
                cumulative += n;
                (*bound, cumulative)
            })
            .collect();
        mlaudit_store::StoreStats {
            syncs: s.syncs,
            synced_events: s.events,
            sync_sizes,
            log_bytes: s.log_bytes,
            ..Default::default()
        }
    }

    fn index_check(&self) -> Option<Box<dyn mlaudit_store::IndexCheck + '_>> {
        let checker = index::Checker::new(&self.shared.index)?;
        Some(Box::new(checker))
    }

    fn location(&self, seq: u64) -> String {
        match self
            .offset_of(seq)
            .and_then(|pos| Ok((pos, self.segment_for(pos)?)))
        {
            Ok((pos, seg)) => format!(
                "{}/{}:{}",
                self.shared.dir.display(),
                seg.name,
                pos - seg.start
            ),
            Err(_) => format!("seq {seq} (no stored position)"),
        }
    }
}
