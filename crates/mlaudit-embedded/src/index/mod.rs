//! The indexes of the embedded engine: id → seq, seq → record position and event time, leaf
//! hash → seq, and posting lists (ascending seqs) per kind, stage, actor and subject value.
//!
//! Memory does not grow with the log. The indexes live in files, read through small bounded
//! structures:
//! * record positions (`offsets.bin`), event times (`index.bin`) and checkpoint positions
//!   (`checkpoints.bin`) are fixed-size records read by seq (`pread`);
//! * ids, leaf hashes and posting lists of seqs `0..base` are in immutable run files
//!   ([`crate::runs`]), at most a few dozen, merged in the background;
//! * the tail, seqs `base..len`, is in memory ([`Tail`]) until it holds
//!   [`crate::Options::run_events`] events, when it is written out as a new run;
//! * the term dictionary (distinct kinds, actors and subject values) is in memory.
//!
//! **Invariants:** every posting list is strictly ascending; the runs cover `0..base` without
//! gap or overlap; the tail covers `base..len`; the id map of the tail also holds the ids
//! reserved for seqs being written (`>= len`), which readers filter by the published size.

mod check;
mod query;

pub use check::Checker;

use crate::runs::{self, Budget, Run, RunContent, STAGE_TERM};
use mlaudit_core::entry::{EventId, SubjectField};
use mlaudit_core::event::Stage;
use mlaudit_core::merkle::Hash;
use std::collections::HashMap;
use std::fs::File;
use std::hash::BuildHasherDefault;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// What a term names. The code is its tag byte in `terms.bin`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tag {
    Kind = 0,
    Actor = 1,
    Model = 2,
    Version = 3,
    Run = 4,
    Dataset = 5,
    Deployment = 6,
}

/// Number of tags, and of term slots in an index record.
pub const TAGS: usize = 7;

impl Tag {
    pub const ALL: [Tag; TAGS] = [
        Tag::Kind,
        Tag::Actor,
        Tag::Model,
        Tag::Version,
        Tag::Run,
        Tag::Dataset,
        Tag::Deployment,
    ];

    pub fn from_code(code: u8) -> Option<Tag> {
        Tag::ALL.get(usize::from(code)).copied()
    }

    /// The tag indexing a subject field, if that field is indexed.
    pub fn for_subject(field: SubjectField) -> Option<Tag> {
        match field {
            SubjectField::Model => Some(Tag::Model),
            SubjectField::Version => Some(Tag::Version),
            SubjectField::Run => Some(Tag::Run),
            SubjectField::Dataset => Some(Tag::Dataset),
            SubjectField::Deployment => Some(Tag::Deployment),
            SubjectField::DatasetVersion | SubjectField::PipelineRun | SubjectField::Request => {
                None
            }
        }
    }
}

/// The maps keyed by what clients send (event ids, term values) hash under a random key per
/// process ([`Keyed`]): a client cannot choose ids or values that collide and turn lookups into
/// linear scans.
use crate::keyed::Keyed;

type IdMap = HashMap<EventId, u64, Keyed>;

type TermMap = HashMap<Box<str>, u32, Keyed>;

/// The hasher of the tail's leaf map: the key is already the first 8 bytes of a SHA-256 of an
/// entry that holds the server's receipt time to the nanosecond, so no client can steer it; it
/// is used as it is.
#[derive(Default, Clone, Copy, Debug)]
pub struct LeafPrefix(u64);

impl std::hash::Hasher for LeafPrefix {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0 << 8) | u64::from(*b);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

/// The first 8 bytes of a leaf hash, the key of the leaf index.
pub fn leaf_key(leaf: &Hash) -> u64 {
    let mut k = [0u8; 8];
    k.copy_from_slice(&leaf.0[..8]);
    u64::from_be_bytes(k)
}

/// The per-event record of `index.bin`: id, event time and one term id per tag (0 = none).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IndexRecord {
    pub id: EventId,
    pub time_ns: i64,
    pub terms: [u32; TAGS],
}

/// Size of an [`IndexRecord`] on disk, with its trailing CRC-32C.
pub const INDEX_RECORD_LEN: usize = 16 + 8 + 4 * TAGS + 4;

impl IndexRecord {
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        let start = out.len();
        out.extend_from_slice(&self.id.0);
        out.extend_from_slice(&self.time_ns.to_be_bytes());
        for t in self.terms {
            out.extend_from_slice(&t.to_be_bytes());
        }
        let crc = crc32c::crc32c(&out[start..]);
        out.extend_from_slice(&crc.to_be_bytes());
    }

    /// Decodes a record; `None` when its checksum does not match.
    pub fn decode(b: &[u8; INDEX_RECORD_LEN]) -> Option<IndexRecord> {
        let body = INDEX_RECORD_LEN - 4;
        if crc32c::crc32c(&b[..body]).to_be_bytes() != b[body..] {
            return None;
        }
        Some(Self::decode_body(b))
    }

    fn decode_body(b: &[u8; INDEX_RECORD_LEN]) -> IndexRecord {
        let mut id = [0u8; 16];
        id.copy_from_slice(&b[..16]);
        let mut time = [0u8; 8];
        time.copy_from_slice(&b[16..24]);
        let mut terms = [0u32; TAGS];
        for (i, t) in terms.iter_mut().enumerate() {
            let at = 24 + 4 * i;
            *t = u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]]);
        }
        IndexRecord {
            id: EventId(id),
            time_ns: i64::from_be_bytes(time),
            terms,
        }
    }
}

/// Read handles on the fixed-size derived files, shared by readers.
#[derive(Debug, Clone)]
pub struct Files {
    pub offsets: Arc<File>,
    pub records: Arc<File>,
    pub checkpoints: Arc<File>,
}

impl Files {
    /// The log position of seq's record.
    pub fn offset(&self, seq: u64) -> std::io::Result<u64> {
        let mut b = [0u8; 8];
        self.offsets.read_exact_at(&mut b, seq * 8)?;
        Ok(u64::from_be_bytes(b))
    }

    /// The log positions of `count` records from `seq`.
    pub fn offsets(&self, seq: u64, count: u64) -> std::io::Result<Vec<u64>> {
        let mut b = vec![0u8; count as usize * 8];
        self.offsets.read_exact_at(&mut b, seq * 8)?;
        Ok(b.chunks_exact(8)
            .map(|c| u64::from_be_bytes(c.try_into().unwrap_or([0; 8])))
            .collect())
    }

    /// The `index.bin` records of `count` events from `seq`, checked.
    pub fn records(&self, seq: u64, count: u64) -> std::io::Result<Vec<IndexRecord>> {
        let mut b = vec![0u8; count as usize * INDEX_RECORD_LEN];
        self.records
            .read_exact_at(&mut b, seq * INDEX_RECORD_LEN as u64)?;
        b.chunks_exact(INDEX_RECORD_LEN)
            .enumerate()
            .map(|(i, c)| {
                c.try_into()
                    .ok()
                    .and_then(IndexRecord::decode)
                    .ok_or_else(|| {
                        std::io::Error::other(format!(
                            "index.bin record {} is damaged",
                            seq + i as u64
                        ))
                    })
            })
            .collect()
    }

    /// The `(tree size, log position)` of checkpoint record `i`.
    pub fn checkpoint(&self, i: u64) -> std::io::Result<(u64, u64)> {
        let mut b = [0u8; 16];
        self.checkpoints.read_exact_at(&mut b, i * 16)?;
        Ok((
            u64::from_be_bytes(b[..8].try_into().unwrap_or([0; 8])),
            u64::from_be_bytes(b[8..].try_into().unwrap_or([0; 8])),
        ))
    }
}

/// The term dictionary: every distinct indexed value, with its id.
#[derive(Debug)]
struct Terms {
    /// Per tag: value → term id (ids start at 1).
    ids: Vec<TermMap>,
    /// Per tag: the last term interned, a cheap hit for runs of similar events.
    last: Vec<u32>,
    /// Term id → (tag, value); index 0 unused.
    values: Vec<(Tag, Box<str>)>,
    /// Term id → stage, for kind terms.
    kind_stage: Vec<Option<Stage>>,
}

impl Terms {
    fn new() -> Terms {
        Terms {
            ids: (0..TAGS).map(|_| TermMap::default()).collect(),
            last: vec![0; TAGS],
            values: vec![(Tag::Kind, "".into())],
            kind_stage: vec![None],
        }
    }

    fn lookup(&self, tag: Tag, value: &str) -> Option<u32> {
        self.ids[tag as usize].get(value).copied()
    }

    fn stage_of(&self, kind_term: u32) -> Stage {
        self.kind_stage
            .get(kind_term as usize)
            .copied()
            .flatten()
            .unwrap_or(Stage::Custom)
    }
}

/// The indexes of the seqs not yet in a run, in memory.
#[derive(Debug, Default)]
struct Tail {
    ids: IdMap,
    times: Vec<i64>,
    /// Term id → ascending seqs; grown on demand.
    postings: Vec<Vec<u64>>,
    stages: Vec<Vec<u64>>,
    /// Leaf prefix → seq of the first leaf with it.
    leaves: HashMap<u64, u64, BuildHasherDefault<LeafPrefix>>,
    /// (prefix, seq) of later leaves whose prefix another leaf already had (about none below
    /// 2^32 events).
    leaf_collisions: Vec<(u64, u64)>,
}

/// Where checkpoint records are: their count, the last one; the rest in `checkpoints.bin`.
#[derive(Debug, Default, Clone, Copy)]
struct Checkpoints {
    count: u64,
    last: Option<(u64, u64)>,
}

/// The indexes, covering seqs `0..len()`.
#[derive(Debug)]
pub struct Index {
    dir: PathBuf,
    files: Files,
    budget: Arc<Budget>,
    /// Cover `0..base`, in order.
    runs: Vec<Arc<Run>>,
    base: u64,
    len: u64,
    tail: Tail,
    terms: Terms,
    checkpoints: Checkpoints,
}

impl Index {
    pub fn new(dir: &Path, files: Files, budget: Arc<Budget>) -> Index {
        Index {
            dir: dir.to_owned(),
            files,
            budget,
            runs: Vec::new(),
            base: 0,
            len: 0,
            tail: Tail {
                stages: (0..Stage::ALL.len()).map(|_| Vec::new()).collect(),
                ..Tail::default()
            },
            terms: Terms::new(),
            checkpoints: Checkpoints::default(),
        }
    }

    /// Takes the runs covering `0..base` (checked contiguous by the caller); the tail starts
    /// there.
    pub fn set_runs(&mut self, runs: Vec<Arc<Run>>) {
        self.base = runs.last().map_or(0, |r| r.footer.end);
        self.len = self.base;
        self.runs = runs;
    }

    /// The read handles on the fixed-size files.
    pub fn files(&self) -> &Files {
        &self.files
    }

    /// The runs, in order.
    pub fn runs(&self) -> &[Arc<Run>] {
        &self.runs
    }

    /// First seq of the tail.
    pub fn base(&self) -> u64 {
        self.base
    }

    /// Events in the in-memory tail.
    pub fn tail_len(&self) -> u64 {
        self.len - self.base
    }

    /// Records the leaf hash of event `seq` for [`Index::leaf_candidates`].
    pub fn push_leaf(&mut self, seq: u64, leaf: &Hash) {
        let t = &mut self.tail;
        if let Some(first) = t.leaves.insert(leaf_key(leaf), seq) {
            // Keep the first leaf in the map, the later one on the side.
            t.leaves.insert(leaf_key(leaf), first);
            t.leaf_collisions.push((leaf_key(leaf), seq));
        }
    }

    /// The seqs whose leaf may be `leaf` (the caller compares the stored leaf hashes).
    pub fn leaf_candidates(&self, leaf: &Hash) -> std::io::Result<Vec<u64>> {
        let key = leaf_key(leaf);
        let mut out = Vec::new();
        for run in &self.runs {
            out.extend(run.find_leaf(key)?);
        }
        if let Some(first) = self.tail.leaves.get(&key) {
            out.push(*first);
            let more = self.tail.leaf_collisions.iter();
            out.extend(more.filter(|(k, _)| *k == key).map(|(_, s)| *s));
        }
        Ok(out)
    }

    /// Number of indexed events.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether no event is indexed.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Number of known terms (excluding the unused slot 0).
    pub fn term_count(&self) -> u32 {
        (self.terms.values.len() - 1) as u32
    }

    /// Adds a term read from `terms.bin`; it must get the next id.
    pub fn load_term(&mut self, tag: Tag, value: &str) -> u32 {
        let t = &mut self.terms;
        let id = t.values.len() as u32;
        t.ids[tag as usize].insert(value.into(), id);
        t.values.push((tag, value.into()));
        t.kind_stage
            .push((tag == Tag::Kind).then(|| Stage::of_kind(value).unwrap_or(Stage::Custom)));
        id
    }

    /// The term id of a value, creating it (and reporting it through `new_term`) if unknown.
    pub fn intern(&mut self, tag: Tag, value: &str, new_term: &mut impl FnMut(Tag, &str)) -> u32 {
        let last = self.terms.last[tag as usize];
        if last != 0 && &*self.terms.values[last as usize].1 == value {
            return last;
        }
        let id = match self.terms.lookup(tag, value) {
            Some(id) => id,
            None => {
                new_term(tag, value);
                self.load_term(tag, value)
            }
        };
        self.terms.last[tag as usize] = id;
        id
    }

    /// Adds the next event. `rec.terms` must name known terms. With `with_id` false the id was
    /// already reserved through [`Index::reserve_id`].
    pub fn push(&mut self, rec: &IndexRecord, with_id: bool) {
        let seq = self.len;
        self.len += 1;
        let t = &mut self.tail;
        if with_id {
            t.ids.insert(rec.id, seq);
        }
        t.times.push(rec.time_ns);
        for term in rec.terms.into_iter().filter(|t| *t != 0) {
            let term = term as usize;
            if t.postings.len() <= term {
                t.postings.resize_with(term + 1, Vec::new);
            }
            t.postings[term].push(seq);
        }
        let stage = self.terms.stage_of(rec.terms[Tag::Kind as usize]);
        t.stages[stage as usize].push(seq);
    }

    /// Reserves an id for a seq that is being written but not yet published. Readers never
    /// see it before publication: lookups are filtered by the published tree size.
    pub fn reserve_id(&mut self, id: EventId, seq: u64) {
        self.tail.ids.insert(id, seq);
    }

    /// Gives back an id reserved through [`Index::reserve_id`].
    pub fn release_id(&mut self, id: &EventId) {
        self.tail.ids.remove(id);
    }

    /// The seq of an id (possibly a reserved one, `>= len`).
    pub fn seq_of(&self, id: &EventId) -> std::io::Result<Option<u64>> {
        if let Some(seq) = self.tail.ids.get(id) {
            return Ok(Some(*seq));
        }
        for run in self.runs.iter().rev() {
            if let Some(seq) = run.find_id(id)? {
                return Ok(Some(seq));
            }
        }
        Ok(None)
    }

    /// The event time of `seq`.
    pub fn time(&self, seq: u64) -> std::io::Result<i64> {
        match seq.checked_sub(self.base) {
            Some(i) => self.tail.times.get(i as usize).copied().ok_or_else(|| {
                std::io::Error::new(std::io::ErrorKind::NotFound, format!("seq {seq}"))
            }),
            None => Ok(self.files.records(seq, 1)?[0].time_ns),
        }
    }

    /// The index record of an event, interning its terms.
    pub fn record_for<'v>(
        &mut self,
        id: EventId,
        time_ns: i64,
        kind: &str,
        actor: &str,
        subjects: impl Iterator<Item = (SubjectField, &'v str)>,
        new_term: &mut impl FnMut(Tag, &str),
    ) -> IndexRecord {
        let mut terms = [0u32; TAGS];
        terms[Tag::Kind as usize] = self.intern(Tag::Kind, kind, new_term);
        terms[Tag::Actor as usize] = self.intern(Tag::Actor, actor, new_term);
        for (field, value) in subjects {
            if let Some(tag) = Tag::for_subject(field) {
                terms[tag as usize] = self.intern(tag, value, new_term);
            }
        }
        IndexRecord { id, time_ns, terms }
    }

    /// Records a checkpoint record (already in `checkpoints.bin`, or about to be).
    pub fn push_checkpoint(&mut self, size: u64, pos: u64) {
        self.checkpoints.count += 1;
        self.checkpoints.last = Some((size, pos));
    }

    /// Sets the checkpoint records loaded from `checkpoints.bin`.
    pub fn set_checkpoints(&mut self, count: u64, last: Option<(u64, u64)>) {
        self.checkpoints = Checkpoints { count, last };
    }

    /// Number of checkpoint records.
    pub fn checkpoint_count(&self) -> u64 {
        self.checkpoints.count
    }

    /// The last checkpoint record's `(tree size, log position)`.
    pub fn last_checkpoint(&self) -> Option<(u64, u64)> {
        self.checkpoints.last
    }

    /// The log position of the last checkpoint record for `size` (binary search: sizes never
    /// decrease along the file).
    pub fn checkpoint_at(&self, size: u64) -> std::io::Result<Option<u64>> {
        if let Some((_, pos)) = self.checkpoints.last.filter(|(s, _)| *s == size) {
            return Ok(Some(pos));
        }
        match self.first_checkpoint_after(size)?.checked_sub(1) {
            Some(i) => {
                let (s, pos) = self.files.checkpoint(i)?;
                Ok((s == size).then_some(pos))
            }
            None => Ok(None),
        }
    }

    /// The index of the first checkpoint record for a size greater than `size` (sizes never
    /// decrease along the file).
    fn first_checkpoint_after(&self, size: u64) -> std::io::Result<u64> {
        runs::partition_point(self.checkpoints.count, |i| {
            Ok(self.files.checkpoint(i)?.0 <= size)
        })
    }

    /// Every checkpointed size, ascending, without repeats.
    pub fn checkpoint_sizes(&self) -> std::io::Result<Vec<u64>> {
        self.checkpoint_sizes_after(None, usize::MAX)
    }

    /// Up to `max` checkpointed sizes greater than `after`, ascending, without repeats.
    pub fn checkpoint_sizes_after(
        &self,
        after: Option<u64>,
        max: usize,
    ) -> std::io::Result<Vec<u64>> {
        let mut out = Vec::new();
        const CHUNK: u64 = 1 << 14;
        let mut i = match after {
            Some(after) => self.first_checkpoint_after(after)?,
            None => 0,
        };
        let mut buf = Vec::new();
        while i < self.checkpoints.count && out.len() < max {
            let n = CHUNK.min(self.checkpoints.count - i);
            buf.resize(n as usize * 16, 0);
            self.files.checkpoints.read_exact_at(&mut buf, i * 16)?;
            for c in buf.chunks_exact(16) {
                let s = u64::from_be_bytes(c[..8].try_into().unwrap_or([0; 8]));
                if out.last() != Some(&s) && out.len() < max {
                    out.push(s);
                }
            }
            i += n;
        }
        Ok(out)
    }

    /// The tail's content for seqs `base..len`, as a run to write (ids reserved beyond `len`
    /// stay out).
    pub fn tail_content(&self) -> RunContent {
        let (first, end) = (self.base, self.len);
        let t = &self.tail;
        let mut ids: Vec<(EventId, u64)> = t
            .ids
            .iter()
            .filter(|(_, s)| **s < end)
            .map(|(id, s)| (*id, *s))
            .collect();
        ids.sort_unstable();
        let mut leaves: Vec<(u64, u64)> = t
            .leaves
            .iter()
            .map(|(k, s)| (*k, *s))
            .chain(t.leaf_collisions.iter().copied())
            .filter(|(_, s)| *s < end)
            .collect();
        leaves.sort_unstable();
        let mut lists: Vec<(u32, Vec<u64>)> = t
            .postings
            .iter()
            .enumerate()
            .filter(|(_, l)| !l.is_empty())
            .map(|(term, l)| {
                (
                    term as u32,
                    l.iter().copied().filter(|s| *s < end).collect(),
                )
            })
            .collect();
        for (stage, l) in t.stages.iter().enumerate() {
            if !l.is_empty() {
                lists.push((STAGE_TERM + stage as u32, l.clone()));
            }
        }
        let (min_time, max_time) = t
            .times
            .iter()
            .fold((i64::MAX, i64::MIN), |(lo, hi), t| (lo.min(*t), hi.max(*t)));
        RunContent {
            first,
            end,
            min_time,
            max_time,
            ids,
            leaves,
            lists,
            times: runs::block_times(first, &t.times[..(end - first) as usize]),
        }
    }

    /// Takes a run just written from the tail (`tail_content`): drops what it covers from the
    /// tail.
    pub fn add_run(&mut self, run: Run) {
        let end = run.footer.end;
        debug_assert_eq!(run.footer.first, self.base);
        let drop_n = (end - self.base) as usize;
        let t = &mut self.tail;
        t.ids.retain(|_, s| *s >= end);
        t.times.drain(..drop_n.min(t.times.len()));
        for list in t.postings.iter_mut().chain(t.stages.iter_mut()) {
            let n = list.partition_point(|s| *s < end);
            list.drain(..n);
            if list.is_empty() {
                *list = Vec::new();
            }
        }
        t.leaves.retain(|_, s| *s >= end);
        t.leaf_collisions.retain(|(_, s)| *s >= end);
        t.ids.shrink_to_fit();
        t.leaves.shrink_to_fit();
        self.base = end;
        self.runs.push(Arc::new(run));
    }

    /// Writes the tail out as a run now (at open, where nothing runs concurrently).
    pub fn flush_tail(&mut self) -> Result<(), runs::RunError> {
        if self.tail_len() == 0 {
            return Ok(());
        }
        let content = self.tail_content();
        let run = write_and_open(&self.dir, &content, &self.budget)?;
        self.add_run(run);
        Ok(())
    }

    /// Replaces two adjacent runs by their merge, if both are still there.
    pub fn replace_runs(&mut self, a: &Arc<Run>, b: &Arc<Run>, merged: Run) -> bool {
        let Some(i) = self.runs.iter().position(|r| Arc::ptr_eq(r, a)) else {
            return false;
        };
        if !self.runs.get(i + 1).is_some_and(|r| Arc::ptr_eq(r, b)) {
            return false;
        }
        self.runs.splice(i..i + 2, [Arc::new(merged)]);
        true
    }

    /// The budget of run summaries.
    pub fn budget(&self) -> &Arc<Budget> {
        &self.budget
    }

    /// The directory of the run files.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

/// Writes a run and opens it.
pub fn write_and_open(
    dir: &Path,
    content: &RunContent,
    budget: &Arc<Budget>,
) -> Result<Run, runs::RunError> {
    let name = runs::run_name(content.first, content.end);
    let path = runs::write_run(dir, content)
        .map_err(|source| runs::RunError::Io { file: name, source })?;
    Run::open(&path, budget.clone())
}
