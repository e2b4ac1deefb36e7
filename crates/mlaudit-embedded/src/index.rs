//! The in-memory indexes of the embedded engine: id → seq, seq → record position and event time,
//! and posting lists (ascending seqs) per kind, stage, actor and subject value.
//!
//! They are rebuilt at open from the persisted derived files (`offsets.bin`, `index.bin`,
//! `terms.bin`, `checkpoints.bin`) and from the log records after the last watermark.
//!
//! **Invariant:** every posting list is strictly ascending, and `offsets`, `times` and the
//! id map cover exactly seqs `0..size`.

use mlaudit_core::entry::{EventId, SubjectField};
use mlaudit_core::event::Stage;
use mlaudit_core::merkle::Hash;
use mlaudit_store::Query;
use std::collections::HashMap;
use std::hash::BuildHasherDefault;

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

/// The maps keyed by what clients send (event ids, term values, leaf hashes) hash under a random
/// key per process ([`Keyed`]): a client cannot choose ids or values that collide and turn
/// lookups into linear scans.
use crate::keyed::Keyed;

type IdMap = HashMap<EventId, u64, Keyed>;

type TermMap = HashMap<Box<str>, u32, Keyed>;

/// The hasher of [`Index::leaves`]: the key is already the first 8 bytes of a SHA-256 of an
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

/// The first 8 bytes of a leaf hash, the key of [`Index::leaves`].
fn leaf_key(leaf: &Hash) -> u64 {
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

/// The indexes, covering seqs `0..len()`.
#[derive(Debug, Default)]
pub struct Index {
    pub offsets: Vec<u64>,
    pub ids: IdMap,
    pub times: Vec<i64>,
    /// Per tag: value → term id (ids start at 1).
    term_ids: Vec<TermMap>,
    /// Per tag: the last term interned, a cheap hit for runs of similar events.
    last_term: Vec<u32>,
    /// Term id → (tag, value); index 0 unused.
    terms: Vec<(Tag, Box<str>)>,
    /// Term id → ascending seqs; index 0 unused.
    postings: Vec<Vec<u64>>,
    stages: Vec<Vec<u64>>,
    /// Term id → stage, for kind terms.
    kind_stage: Vec<Option<Stage>>,
    /// (tree size, record position) of every checkpoint, in log order.
    pub checkpoints: Vec<(u64, u64)>,
    /// Leaf hash (its first 8 bytes) → seq of the first leaf with that prefix; lookups check
    /// the whole hash against the stored leaf.
    leaves: HashMap<u64, u64, BuildHasherDefault<LeafPrefix>>,
    /// Seqs of later leaves whose prefix another leaf already had (about none below 2^32
    /// events), searched when the first does not match.
    leaf_collisions: Vec<u64>,
}

impl Index {
    pub fn new() -> Index {
        Index {
            term_ids: (0..TAGS).map(|_| TermMap::default()).collect(),
            last_term: vec![0; TAGS],
            terms: vec![(Tag::Kind, "".into())],
            postings: vec![Vec::new()],
            kind_stage: vec![None],
            stages: (0..Stage::ALL.len()).map(|_| Vec::new()).collect(),
            ..Index::default()
        }
    }

    /// Makes room for `more` leaves at once (loading a large log), instead of growing the map
    /// step by step.
    pub fn reserve_leaves(&mut self, more: usize) {
        self.leaves.reserve(more);
    }

    /// Records the leaf hash of event `seq` for [`Index::leaf_candidates`].
    pub fn push_leaf(&mut self, seq: u64, leaf: &Hash) {
        if let Some(first) = self.leaves.insert(leaf_key(leaf), seq) {
            // Keep the first leaf in the map, the later one on the side.
            self.leaves.insert(leaf_key(leaf), first);
            self.leaf_collisions.push(seq);
        }
    }

    /// The seqs whose leaf may be `leaf` (the caller compares the stored leaf hashes): the
    /// first leaf with its prefix, then every leaf whose prefix collided.
    pub fn leaf_candidates(&self, leaf: &Hash) -> impl Iterator<Item = u64> + '_ {
        let first = self.leaves.get(&leaf_key(leaf)).copied();
        let more = first.is_some().then_some(&self.leaf_collisions);
        first.into_iter().chain(more.into_iter().flatten().copied())
    }

    /// Number of indexed events.
    pub fn len(&self) -> u64 {
        self.offsets.len() as u64
    }

    /// Whether no event is indexed.
    pub fn is_empty(&self) -> bool {
        self.offsets.is_empty()
    }

    /// Number of known terms (excluding the unused slot 0).
    pub fn term_count(&self) -> u32 {
        (self.terms.len() - 1) as u32
    }

    /// Adds a term read from `terms.bin`; it must get the next id.
    pub fn load_term(&mut self, tag: Tag, value: &str) -> u32 {
        let id = self.terms.len() as u32;
        self.term_ids[tag as usize].insert(value.into(), id);
        self.terms.push((tag, value.into()));
        self.postings.push(Vec::new());
        self.kind_stage
            .push((tag == Tag::Kind).then(|| Stage::of_kind(value).unwrap_or(Stage::Custom)));
        id
    }

    /// The term id of a value, creating it (and reporting it through `new_term`) if unknown.
    pub fn intern(&mut self, tag: Tag, value: &str, new_term: &mut impl FnMut(Tag, &str)) -> u32 {
        let last = self.last_term[tag as usize];
        if last != 0 && &*self.terms[last as usize].1 == value {
            return last;
        }
        let id = match self.term_ids[tag as usize].get(value) {
            Some(id) => *id,
            None => {
                new_term(tag, value);
                self.load_term(tag, value)
            }
        };
        self.last_term[tag as usize] = id;
        id
    }

    fn lookup(&self, tag: Tag, value: &str) -> Option<u32> {
        self.term_ids[tag as usize].get(value).copied()
    }

    /// Adds the next event. `rec.terms` must name known terms. With `with_id` false the id was
    /// already reserved through [`Index::reserve_id`].
    pub fn push(&mut self, offset: u64, rec: &IndexRecord, with_id: bool) {
        let seq = self.offsets.len() as u64;
        self.offsets.push(offset);
        if with_id {
            self.ids.insert(rec.id, seq);
        }
        self.times.push(rec.time_ns);
        for t in rec.terms {
            if let Some(list) = self.postings.get_mut(t as usize).filter(|_| t != 0) {
                list.push(seq);
            }
        }
        let kind = rec.terms[Tag::Kind as usize] as usize;
        let stage = self
            .kind_stage
            .get(kind)
            .copied()
            .flatten()
            .unwrap_or(Stage::Custom);
        self.stages[stage as usize].push(seq);
    }

    /// Reserves an id for a seq that is being written but not yet published. Readers never
    /// see it before publication: lookups are filtered by the published tree size.
    pub fn reserve_id(&mut self, id: EventId, seq: u64) {
        self.ids.insert(id, seq);
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

    /// Whether a query filters by a term or a stage (and so reads posting lists), rather than
    /// by time alone.
    pub fn uses_postings(q: &Query) -> bool {
        q.stage.is_some() || term_filters(q).iter().any(|(_, v)| v.is_some())
    }

    /// Appends to `out` the seqs in `from..to` whose event time is within the query's bounds,
    /// until `out` holds `q.limit`; for time-only queries, which the caller runs one bounded
    /// window at a time so that no lock is held across a long scan.
    pub fn scan_times(&self, q: &Query, from: u64, to: u64, out: &mut Vec<u64>) {
        let to = to.min(self.len());
        for seq in from..to {
            if out.len() >= q.limit {
                return;
            }
            if in_time(q, self.times[seq as usize]) {
                out.push(seq);
            }
        }
    }

    /// Evaluates a query that filters by a term or a stage ([`Index::uses_postings`]) over the
    /// indexes; never reads the log. Time-only queries go through [`Index::scan_times`].
    pub fn query(&self, q: &Query) -> Vec<u64> {
        let mut lists: Vec<&[u64]> = Vec::new();
        for (tag, value) in term_filters(q) {
            if let Some(v) = value {
                match self.lookup(tag, v) {
                    Some(id) => lists.push(&self.postings[id as usize]),
                    None => return Vec::new(),
                }
            }
        }
        if let Some(stage) = q.stage {
            lists.push(&self.stages[stage as usize]);
        }
        let first = q.after_seq.map_or(0, |s| s.saturating_add(1));
        let mut out = Vec::new();
        lists.sort_by_key(|l| l.len());
        let Some((smallest, rest)) = lists.split_first() else {
            self.scan_times(q, first, self.len(), &mut out);
            return out;
        };
        let from = smallest.partition_point(|s| *s < first);
        for &seq in &smallest[from..] {
            if out.len() >= q.limit {
                break;
            }
            if in_time(q, self.times[seq as usize])
                && rest.iter().all(|l| l.binary_search(&seq).is_ok())
            {
                out.push(seq);
            }
        }
        out
    }
}

/// A query's filters on indexed terms, each with the tag it looks up.
fn term_filters(q: &Query) -> [(Tag, &Option<String>); TAGS] {
    [
        (Tag::Kind, &q.kind),
        (Tag::Actor, &q.actor),
        (Tag::Model, &q.model),
        (Tag::Version, &q.version),
        (Tag::Run, &q.run),
        (Tag::Dataset, &q.dataset),
        (Tag::Deployment, &q.deployment),
    ]
}

/// Whether an event time is within a query's bounds (`since` inclusive, `until` exclusive).
fn in_time(q: &Query, t: i64) -> bool {
    q.since_ns.is_none_or(|s| t >= s) && q.until_ns.is_none_or(|u| t < u)
}

/// Checks the indexes against entries visited in seq order: each posting list must hold exactly
/// the seqs whose entries carry its term, in order, which cursors check in O(1) per term.
#[derive(Debug)]
pub struct Checker<'a> {
    index: &'a std::sync::RwLock<Index>,
    /// Per term id: how many of its postings have been matched.
    cursors: Vec<usize>,
    stage_cursors: Vec<usize>,
    /// Per tag: the last term id seen, to skip hashing runs of equal values.
    last: [u32; TAGS],
    /// The ids of the entries, by seq, and their multiset digest (see [`id_digest`]).
    ids: Vec<EventId>,
    id_sum: u128,
}

/// One `(id, seq)` pair's share of a multiset digest: two 64-bit finalizer mixes.
///
/// The id index is proved right by comparing the wrapping sum of these over the entries with
/// the sum over the map (and the map's size with the count): sequential passes instead of one
/// random lookup per event. The index is derived data, not a trust boundary (the Merkle tree
/// and checkpoints are), so a non-cryptographic digest is enough to catch damage; on any
/// difference the checker falls back to looking every id up, to name the first bad seq.
fn id_digest(id: &EventId, seq: u64) -> u128 {
    fn mix(mut x: u64) -> u64 {
        x ^= x >> 30;
        x = x.wrapping_mul(0xbf58_476d_1ce4_e5b9);
        x ^= x >> 27;
        x = x.wrapping_mul(0x94d0_49bb_1331_11eb);
        x ^ (x >> 31)
    }
    let mut half = [0u8; 8];
    half.copy_from_slice(&id.0[..8]);
    let a = u64::from_le_bytes(half);
    half.copy_from_slice(&id.0[8..]);
    let b = u64::from_le_bytes(half);
    let hi = mix(a ^ mix(seq ^ 0x9e37_79b9_7f4a_7c15));
    let lo = mix(b ^ mix(hi ^ seq));
    (u128::from(hi) << 64) | u128::from(lo)
}

impl<'a> Checker<'a> {
    pub fn new(index: &'a std::sync::RwLock<Index>) -> Checker<'a> {
        Checker {
            index,
            cursors: Vec::new(),
            stage_cursors: vec![0; Stage::ALL.len()],
            last: [0; TAGS],
            ids: Vec::new(),
            id_sum: 0,
        }
    }
}

fn advance(list: &[u64], cursor: &mut usize, seq: u64) -> bool {
    let ok = list.get(*cursor) == Some(&seq);
    *cursor += 1;
    ok
}

impl mlaudit_store::IndexCheck for Checker<'_> {
    fn check(&mut self, seq: u64, e: &mlaudit_core::entry::EntryView<'_>) -> Result<(), String> {
        let index = self
            .index
            .read()
            .map_err(|_| "index lock poisoned".to_owned())?;
        if index.times.get(seq as usize) != Some(&e.event_time_ns) {
            return Err(format!("index.bin holds another event time for seq {seq}"));
        }
        if index.offsets.len() as u64 <= seq {
            return Err(format!("the offsets index stops before seq {seq}"));
        }

        let mut values: [Option<(Tag, &str)>; TAGS] = [None; TAGS];
        values[0] = Some((Tag::Kind, e.kind));
        values[1] = Some((Tag::Actor, e.actor_id));
        for (slot, field) in values[2..].iter_mut().zip([
            SubjectField::Model,
            SubjectField::Version,
            SubjectField::Run,
            SubjectField::Dataset,
            SubjectField::Deployment,
        ]) {
            *slot = e
                .subject(field)
                .and_then(|v| Some((Tag::for_subject(field)?, v)));
        }
        for (tag, value) in values.into_iter().flatten() {
            let last = self.last[tag as usize];
            let term = if last != 0
                && index
                    .terms
                    .get(last as usize)
                    .is_some_and(|(_, v)| &**v == value)
            {
                last
            } else {
                index
                    .lookup(tag, value)
                    .ok_or_else(|| format!("the {tag:?} index has no term {value:?} (seq {seq})"))?
            };
            self.last[tag as usize] = term;
            if self.cursors.len() <= term as usize {
                self.cursors.resize(term as usize + 1, 0);
            }
            if !advance(
                &index.postings[term as usize],
                &mut self.cursors[term as usize],
                seq,
            ) {
                return Err(format!(
                    "the {tag:?} index does not list seq {seq} under {value:?} in order"
                ));
            }
        }
        let stage = Stage::of_kind(e.kind).unwrap_or(Stage::Custom);
        if !advance(
            &index.stages[stage as usize],
            &mut self.stage_cursors[stage as usize],
            seq,
        ) {
            return Err(format!(
                "the stage index does not list seq {seq} under {} in order",
                stage.as_str()
            ));
        }
        self.ids.push(e.id);
        self.id_sum = self.id_sum.wrapping_add(id_digest(&e.id, seq));
        Ok(())
    }

    fn checks_ids(&self) -> bool {
        true
    }

    fn finish(&mut self, n: u64) -> Result<(), (Option<u64>, String)> {
        let index = self
            .index
            .read()
            .map_err(|_| (None, "index lock poisoned".to_owned()))?;
        let (mut count, mut sum) = (0u64, 0u128);
        for (id, &seq) in &index.ids {
            if seq < n {
                count += 1;
                sum = sum.wrapping_add(id_digest(id, seq));
            }
        }
        if count != n || sum != self.id_sum || self.ids.len() as u64 != n {
            // Something differs: find the first seq whose id does not map back to it.
            for (seq, id) in self.ids.iter().enumerate() {
                let found = index.ids.get(id).copied().filter(|s| *s < n);
                if found != Some(seq as u64) {
                    return Err((
                        Some(seq as u64),
                        format!("the id index maps event {id} to {found:?}, not to this seq"),
                    ));
                }
            }
            return Err((
                None,
                format!(
                    "the id index holds {count} ids below seq {n}, which are not the entries' ids"
                ),
            ));
        }
        self.finish_postings(&index, n).map_err(|p| (None, p))
    }
}

impl Checker<'_> {
    fn finish_postings(&self, index: &Index, n: u64) -> Result<(), String> {
        let below = |list: &[u64]| list.partition_point(|s| *s < n);
        for (term, list) in index.postings.iter().enumerate().skip(1) {
            if self.cursors.get(term).copied().unwrap_or(0) != below(list) {
                let (tag, value) = &index.terms[term];
                return Err(format!(
                    "the {tag:?} index lists events under {value:?} that do not carry it"
                ));
            }
        }
        for (stage, list) in index.stages.iter().enumerate() {
            if self.stage_cursors[stage] != below(list) {
                return Err(format!(
                    "the stage index lists events under {} that are not of that stage",
                    Stage::ALL[stage].as_str()
                ));
            }
        }
        Ok(())
    }
}
