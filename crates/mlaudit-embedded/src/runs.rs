//! Immutable index runs: the on-disk part of the indexes, one file per contiguous range of
//! seqs (`run-<first>-<end>.idx`, 20-digit decimals each).
//!
//! A run holds, for the events `first..end`:
//! * the id table: `(event id, seq)` pairs sorted by id, 24 bytes each, with a fence (the first
//!   id of every block of [`ID_BLOCK`] pairs) and a blocked Bloom filter, so that an id lookup
//!   costs a few probes in memory and at most one read of one block;
//! * the leaf table: `(first 8 bytes of the leaf hash, seq)` pairs sorted, 16 bytes each;
//! * the posting lists: per term (and per stage, as pseudo-terms from [`STAGE_TERM`]) the
//!   ascending seqs of its events, as `u32` offsets from `first`, and a directory of the lists.
//!
//! The layout, byte for byte, is in `docs/FORMAT.md` §6. Runs are written once (to a temporary
//! name, synced, renamed, directory synced) and never changed; two adjacent runs are merged
//! into a new one that replaces both. Only the directory of posting lists is read at open;
//! fences and Bloom filters are loaded on first use, within the index cache's budget
//! ([`Budget`]); past it, they are read from the file at each lookup instead.
//!
//! **Invariants:** the runs of a log are contiguous from seq 0; each table is sorted; every
//! seq in a run is within `first..end`; a run never ends beyond the derived watermark.

use crate::keyed;
use mlaudit_core::EventId;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

/// Pairs per id block: one fence each, one read per lookup (4,080 bytes).
pub const ID_BLOCK: u64 = 170;
/// Length of an id table pair.
const ID_LEN: u64 = 24;
/// Length of a leaf table pair.
const LEAF_LEN: u64 = 16;
/// Length of a directory entry: term u32, count u32, offset u64.
const DIR_LEN: u64 = 16;
/// Bits of Bloom filter per id, and bits set per id.
const BLOOM_BITS_PER_ID: u64 = 10;
const BLOOM_PROBES: u32 = 7;
/// A Bloom block: 512 bits.
const BLOOM_BLOCK: u64 = 64;
/// Seqs per time block: a run keeps the least and greatest event time of each block of seqs
/// `k * TIME_BLOCK..(k + 1) * TIME_BLOCK` it holds, so that a query bounded in time reads only
/// the blocks that can match.
pub const TIME_BLOCK: u64 = 4096;
/// Term numbers from here up name stages (`STAGE_TERM + stage`), not terms.
pub const STAGE_TERM: u32 = 0x8000_0000;

const MAGIC: &[u8; 8] = b"MLARUN01";
/// Length of the footer.
pub const FOOTER_LEN: u64 = 8 + 8 * 10 + 4 + 4;

/// The memory that fences and Bloom filters of every run of one store may take together.
#[derive(Debug)]
pub struct Budget {
    limit: u64,
    used: AtomicU64,
}

impl Budget {
    pub fn new(limit: u64) -> Arc<Budget> {
        Arc::new(Budget {
            limit,
            used: AtomicU64::new(0),
        })
    }

    /// Takes `bytes` from the budget if they fit.
    fn take(&self, bytes: u64) -> bool {
        self.used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |u| {
                (u + bytes <= self.limit).then_some(u + bytes)
            })
            .is_ok()
    }

    fn give_back(&self, bytes: u64) {
        self.used.fetch_sub(bytes, Ordering::AcqRel);
    }

    /// Bytes in use.
    pub fn used(&self) -> u64 {
        self.used.load(Ordering::Acquire)
    }
}

/// The footer of a run file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Footer {
    pub first: u64,
    pub end: u64,
    pub min_time: i64,
    pub max_time: i64,
    pub ids: u64,
    pub leaves: u64,
    pub lists: u64,
    pub postings: u64,
    pub bloom_blocks: u64,
    pub seed: u64,
    /// CRC-32C of every byte before the footer.
    pub body_crc: u32,
}

impl Footer {
    fn encode(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(FOOTER_LEN as usize);
        b.extend_from_slice(MAGIC);
        for v in [self.first, self.end] {
            b.extend_from_slice(&v.to_be_bytes());
        }
        for v in [self.min_time, self.max_time] {
            b.extend_from_slice(&v.to_be_bytes());
        }
        for v in [
            self.ids,
            self.leaves,
            self.lists,
            self.postings,
            self.bloom_blocks,
            self.seed,
        ] {
            b.extend_from_slice(&v.to_be_bytes());
        }
        b.extend_from_slice(&self.body_crc.to_be_bytes());
        let crc = crc32c::crc32c(&b);
        b.extend_from_slice(&crc.to_be_bytes());
        b
    }

    fn decode(b: &[u8]) -> Option<Footer> {
        if b.len() as u64 != FOOTER_LEN || &b[..8] != MAGIC {
            return None;
        }
        let crc_at = FOOTER_LEN as usize - 4;
        if crc32c::crc32c(&b[..crc_at]).to_be_bytes() != b[crc_at..] {
            return None;
        }
        let u =
            |i: usize| u64::from_be_bytes(b[8 + 8 * i..16 + 8 * i].try_into().unwrap_or([0; 8]));
        // Counts bounded so that no offset computed from them can overflow (a run holds at
        // most 2^32 events; the file's length is checked against them next).
        let plausible = |i: usize| u(i) < 1 << 40;
        if !(4..=8).all(plausible) || u(0) > u(1) || u(1) - u(0) > u64::from(u32::MAX) {
            return None;
        }
        Some(Footer {
            first: u(0),
            end: u(1),
            min_time: u(2) as i64,
            max_time: u(3) as i64,
            ids: u(4),
            leaves: u(5),
            lists: u(6),
            postings: u(7),
            bloom_blocks: u(8),
            seed: u(9),
            body_crc: u32::from_be_bytes(b[88..92].try_into().unwrap_or([0; 4])),
        })
    }

    fn leaves_at(&self) -> u64 {
        self.ids * ID_LEN
    }
    fn postings_at(&self) -> u64 {
        self.leaves_at() + self.leaves * LEAF_LEN
    }
    fn dir_at(&self) -> u64 {
        self.postings_at() + self.postings * 4
    }
    fn fences_at(&self) -> u64 {
        self.dir_at() + self.lists * DIR_LEN
    }
    fn fence_count(&self) -> u64 {
        self.ids.div_ceil(ID_BLOCK)
    }
    fn bloom_at(&self) -> u64 {
        self.fences_at() + self.fence_count() * 16
    }
    fn times_at(&self) -> u64 {
        self.bloom_at() + self.bloom_blocks * BLOOM_BLOCK
    }
    /// The first time block of the run, and how many it has.
    pub fn time_blocks(&self) -> (u64, u64) {
        time_blocks(self.first, self.end)
    }
    fn len(&self) -> u64 {
        self.times_at() + self.time_blocks().1 * 16 + FOOTER_LEN
    }
}

/// The first time block of seqs `first..end`, and how many there are.
pub fn time_blocks(first: u64, end: u64) -> (u64, u64) {
    if end <= first {
        return (first / TIME_BLOCK, 0);
    }
    let (a, b) = (first / TIME_BLOCK, (end - 1) / TIME_BLOCK);
    (a, b - a + 1)
}

/// The first of `0..n` for which `in_front` is false, `in_front` being true for a prefix:
/// [`slice::partition_point`] over records read from a file as it goes.
pub fn partition_point(
    n: u64,
    mut in_front: impl FnMut(u64) -> std::io::Result<bool>,
) -> std::io::Result<u64> {
    let (mut lo, mut hi) = (0u64, n);
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        if in_front(mid)? {
            lo = mid + 1;
        } else {
            hi = mid;
        }
    }
    Ok(lo)
}

/// The file name of the run of `first..end`.
pub fn run_name(first: u64, end: u64) -> String {
    format!("run-{first:020}-{end:020}.idx")
}

/// `(first, end)` of a run file name.
pub fn parse_run_name(name: &str) -> Option<(u64, u64)> {
    let rest = name.strip_prefix("run-")?.strip_suffix(".idx")?;
    let (a, b) = rest.split_once('-')?;
    if a.len() != 20 || b.len() != 20 {
        return None;
    }
    Some((a.parse().ok()?, b.parse().ok()?))
}

/// What a posting list directory entry says.
#[derive(Debug, Clone, Copy)]
pub struct ListAt {
    pub count: u64,
    /// Byte position of the list in the file.
    pub at: u64,
}

/// An open run.
#[derive(Debug)]
pub struct Run {
    pub footer: Footer,
    pub name: String,
    file: File,
    /// Term → its list (sorted by term).
    directory: Vec<(u32, ListAt)>,
    fences: OnceLock<Option<Vec<[u8; 16]>>>,
    bloom: OnceLock<Option<Vec<u8>>>,
    budget: Arc<Budget>,
    /// Least and greatest event time per time block (see [`TIME_BLOCK`]).
    times: Vec<(i64, i64)>,
}

impl Drop for Run {
    fn drop(&mut self) {
        let mut held = 0;
        if let Some(Some(f)) = self.fences.get() {
            held += f.len() as u64 * 16;
        }
        if let Some(Some(b)) = self.bloom.get() {
            held += b.len() as u64;
        }
        self.budget.give_back(held);
    }
}

/// Why a run file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("{file}: {source}")]
    Io {
        file: String,
        source: std::io::Error,
    },
    #[error("{file}: {problem}")]
    Damaged { file: String, problem: String },
}

impl Run {
    /// Opens a run file, checking its footer and reading its directory.
    pub fn open(path: &Path, budget: Arc<Budget>) -> Result<Run, RunError> {
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let io = |source| RunError::Io {
            file: name.clone(),
            source,
        };
        let damaged = |problem: &str| RunError::Damaged {
            file: name.clone(),
            problem: problem.to_owned(),
        };
        let file = File::open(path).map_err(io)?;
        let len = file.metadata().map_err(io)?.len();
        if len < FOOTER_LEN {
            return Err(damaged("shorter than a footer"));
        }
        let mut fb = vec![0u8; FOOTER_LEN as usize];
        file.read_exact_at(&mut fb, len - FOOTER_LEN).map_err(io)?;
        let footer = Footer::decode(&fb).ok_or_else(|| damaged("damaged footer"))?;
        if footer.len() != len || parse_run_name(&name) != Some((footer.first, footer.end)) {
            return Err(damaged("its footer disagrees with its length or name"));
        }
        let mut db = vec![0u8; (footer.lists * DIR_LEN) as usize];
        file.read_exact_at(&mut db, footer.dir_at()).map_err(io)?;
        let mut directory = Vec::with_capacity(footer.lists as usize);
        for e in db.chunks_exact(DIR_LEN as usize) {
            let term = u32::from_be_bytes([e[0], e[1], e[2], e[3]]);
            let count = u64::from(u32::from_be_bytes([e[4], e[5], e[6], e[7]]));
            let off = u64::from_be_bytes(e[8..16].try_into().unwrap_or([0; 8]));
            if off + count * 4 > footer.postings * 4
                || directory.last().is_some_and(|(t, _)| *t >= term)
            {
                return Err(damaged("its posting directory is malformed"));
            }
            directory.push((
                term,
                ListAt {
                    count,
                    at: footer.postings_at() + off,
                },
            ));
        }
        let mut tb = vec![0u8; (footer.time_blocks().1 * 16) as usize];
        file.read_exact_at(&mut tb, footer.times_at()).map_err(io)?;
        let times = tb
            .chunks_exact(16)
            .map(|c| {
                let at = |i: usize| i64::from_be_bytes(c[i..i + 8].try_into().unwrap_or([0; 8]));
                (at(0), at(8))
            })
            .collect();
        Ok(Run {
            footer,
            name,
            file,
            directory,
            fences: OnceLock::new(),
            bloom: OnceLock::new(),
            budget,
            times,
        })
    }

    /// The ranges of seqs of this run (ascending, from `from`) whose time blocks hold an event
    /// time in `since..until` (each bound optional).
    pub fn time_ranges(
        &self,
        from: u64,
        since: Option<i64>,
        until: Option<i64>,
    ) -> Vec<(u64, u64)> {
        let (f, e) = (self.footer.first.max(from), self.footer.end);
        let first_block = self.footer.time_blocks().0;
        let mut out: Vec<(u64, u64)> = Vec::new();
        for (k, (lo, hi)) in (first_block..).zip(&self.times) {
            let (a, b) = ((k * TIME_BLOCK).max(f), ((k + 1) * TIME_BLOCK).min(e));
            if a >= b || since.is_some_and(|s| *hi < s) || until.is_some_and(|u| *lo >= u) {
                continue;
            }
            match out.last_mut() {
                Some(last) if last.1 == a => last.1 = b,
                _ => out.push((a, b)),
            }
        }
        out
    }

    fn read_at(&self, buf: &mut [u8], at: u64) -> std::io::Result<()> {
        self.file.read_exact_at(buf, at)
    }

    /// The list of a term (or stage pseudo-term) in this run.
    pub fn list(&self, term: u32) -> Option<ListAt> {
        self.directory
            .binary_search_by_key(&term, |(t, _)| *t)
            .ok()
            .map(|i| self.directory[i].1)
    }

    /// Every list, by term.
    pub fn lists(&self) -> &[(u32, ListAt)] {
        &self.directory
    }

    /// Reads `count` posting values of a list from index `from`, as seqs.
    pub fn read_postings(&self, list: ListAt, from: u64, count: u64) -> std::io::Result<Vec<u64>> {
        let count = count.min(list.count.saturating_sub(from));
        let mut buf = vec![0u8; count as usize * 4];
        self.read_at(&mut buf, list.at + from * 4)?;
        Ok(buf
            .chunks_exact(4)
            .map(|c| self.footer.first + u64::from(u32::from_be_bytes([c[0], c[1], c[2], c[3]])))
            .collect())
    }

    /// The index in a list of its first seq `>= seq`.
    pub fn seek(&self, list: ListAt, seq: u64) -> std::io::Result<u64> {
        let want = seq.saturating_sub(self.footer.first);
        let mut b = [0u8; 4];
        partition_point(list.count, |i| {
            self.read_at(&mut b, list.at + i * 4)?;
            Ok(u64::from(u32::from_be_bytes(b)) < want)
        })
    }

    fn fences(&self) -> std::io::Result<Option<&[[u8; 16]]>> {
        if let Some(f) = self.fences.get() {
            return Ok(f.as_deref());
        }
        let n = self.footer.fence_count();
        let loaded = if self.budget.take(n * 16) {
            let mut buf = vec![0u8; (n * 16) as usize];
            if let Err(e) = self.read_at(&mut buf, self.footer.fences_at()) {
                self.budget.give_back(n * 16);
                return Err(e);
            }
            let fences = buf
                .chunks_exact(16)
                .map(|c| c.try_into().unwrap_or([0; 16]))
                .collect();
            Some(fences)
        } else {
            None
        };
        let held = loaded.is_some();
        if self.fences.set(loaded).is_err() && held {
            self.budget.give_back(n * 16);
        }
        Ok(self.fences.get().and_then(|f| f.as_deref()))
    }

    fn fence(&self, i: u64) -> std::io::Result<[u8; 16]> {
        let mut b = [0u8; 16];
        self.read_at(&mut b, self.footer.fences_at() + i * 16)?;
        Ok(b)
    }

    /// Whether the Bloom filter admits `id` (false: certainly absent).
    fn bloom_admits(&self, id: &EventId) -> std::io::Result<bool> {
        let blocks = self.footer.bloom_blocks;
        if blocks == 0 {
            return Ok(self.footer.ids > 0);
        }
        let (block, bits) = bloom_position(self.footer.seed, id, blocks);
        let loaded = self.bloom.get_or_init(|| {
            let bytes = blocks * BLOOM_BLOCK;
            if !self.budget.take(bytes) {
                return None;
            }
            let mut buf = vec![0u8; bytes as usize];
            match self.read_at(&mut buf, self.footer.bloom_at()) {
                Ok(()) => Some(buf),
                Err(_) => {
                    self.budget.give_back(bytes);
                    None
                }
            }
        });
        let mut one = [0u8; BLOOM_BLOCK as usize];
        let data: &[u8] = match loaded {
            Some(all) => &all[(block * BLOOM_BLOCK) as usize..((block + 1) * BLOOM_BLOCK) as usize],
            None => {
                self.read_at(&mut one, self.footer.bloom_at() + block * BLOOM_BLOCK)?;
                &one
            }
        };
        Ok(bits
            .iter()
            .all(|&bit| data[(bit / 8) as usize] & (1 << (bit % 8)) != 0))
    }

    /// The seq of `id` in this run, if it is there.
    pub fn find_id(&self, id: &EventId) -> std::io::Result<Option<u64>> {
        if !self.bloom_admits(id)? {
            return Ok(None);
        }
        let blocks = self.footer.fence_count();
        // The last block whose fence is <= id.
        let block = match self.fences()? {
            Some(f) => f.partition_point(|k| k <= &id.0),
            None => partition_point(blocks, |i| Ok(self.fence(i)? <= id.0))? as usize,
        };
        let Some(block) = (block as u64).checked_sub(1) else {
            return Ok(None);
        };
        let start = block * ID_BLOCK;
        let n = ID_BLOCK.min(self.footer.ids - start);
        let mut buf = vec![0u8; (n * ID_LEN) as usize];
        self.read_at(&mut buf, start * ID_LEN)?;
        let pairs: Vec<&[u8]> = buf.chunks_exact(ID_LEN as usize).collect();
        Ok(pairs
            .binary_search_by(|p| p[..16].cmp(&id.0))
            .ok()
            .map(|i| u64::from_be_bytes(pairs[i][16..24].try_into().unwrap_or([0; 8]))))
    }

    /// The seqs whose leaf hash starts with `prefix`.
    pub fn find_leaf(&self, prefix: u64) -> std::io::Result<Vec<u64>> {
        let at = self.footer.leaves_at();
        let read = |i: u64| -> std::io::Result<(u64, u64)> {
            let mut b = [0u8; LEAF_LEN as usize];
            self.read_at(&mut b, at + i * LEAF_LEN)?;
            Ok((
                u64::from_be_bytes(b[..8].try_into().unwrap_or([0; 8])),
                u64::from_be_bytes(b[8..].try_into().unwrap_or([0; 8])),
            ))
        };
        let mut lo = partition_point(self.footer.leaves, |i| Ok(read(i)?.0 < prefix))?;
        let mut out = Vec::new();
        while lo < self.footer.leaves {
            let (p, seq) = read(lo)?;
            if p != prefix {
                break;
            }
            out.push(seq);
            lo += 1;
        }
        Ok(out)
    }

    /// Visits every `(id, seq)` pair in id order, `chunk` pairs per read.
    pub fn for_each_id(&self, mut visit: impl FnMut(EventId, u64)) -> std::io::Result<()> {
        self.for_each_fixed(0, self.footer.ids, ID_LEN, |b| {
            let mut id = [0u8; 16];
            id.copy_from_slice(&b[..16]);
            visit(
                EventId(id),
                u64::from_be_bytes(b[16..24].try_into().unwrap_or([0; 8])),
            );
        })
    }

    /// Visits every `(leaf prefix, seq)` pair in order.
    pub fn for_each_leaf(&self, mut visit: impl FnMut(u64, u64)) -> std::io::Result<()> {
        self.for_each_fixed(self.footer.leaves_at(), self.footer.leaves, LEAF_LEN, |b| {
            visit(
                u64::from_be_bytes(b[..8].try_into().unwrap_or([0; 8])),
                u64::from_be_bytes(b[8..16].try_into().unwrap_or([0; 8])),
            );
        })
    }

    /// Visits the seqs of a list in order.
    pub fn for_each_posting(
        &self,
        list: ListAt,
        mut visit: impl FnMut(u64),
    ) -> std::io::Result<()> {
        let first = self.footer.first;
        self.for_each_fixed(list.at, list.count, 4, |b| {
            visit(first + u64::from(u32::from_be_bytes([b[0], b[1], b[2], b[3]])));
        })
    }

    fn for_each_fixed(
        &self,
        at: u64,
        count: u64,
        len: u64,
        mut visit: impl FnMut(&[u8]),
    ) -> std::io::Result<()> {
        const CHUNK: u64 = 1 << 16;
        let mut buf = Vec::new();
        let mut i = 0;
        while i < count {
            let n = CHUNK.min(count - i);
            buf.resize((n * len) as usize, 0);
            self.read_at(&mut buf, at + i * len)?;
            buf.chunks_exact(len as usize).for_each(&mut visit);
            i += n;
        }
        Ok(())
    }

    /// Checks the CRC-32C of everything before the footer (a full read of the file).
    pub fn check_body(&self) -> std::io::Result<bool> {
        let body = self.footer.len() - FOOTER_LEN;
        let mut crc = 0u32;
        let mut buf = vec![0u8; 1 << 20];
        let mut at = 0u64;
        while at < body {
            let n = (buf.len() as u64).min(body - at) as usize;
            self.read_at(&mut buf[..n], at)?;
            crc = crc32c::crc32c_append(crc, &buf[..n]);
            at += n as u64;
        }
        Ok(crc == self.footer.body_crc)
    }
}

/// The Bloom block of `id` and the bits it sets in it.
fn bloom_position(seed: u64, id: &EventId, blocks: u64) -> (u64, [u32; BLOOM_PROBES as usize]) {
    let h = keyed::stable_hash(seed, &id.0);
    let block = ((u128::from(h[0]) * u128::from(blocks)) >> 64) as u64;
    let mut bits = [0u32; BLOOM_PROBES as usize];
    let mut x = h[1];
    for b in &mut bits {
        *b = (x & 511) as u32;
        x = x.rotate_right(9);
    }
    (block, bits)
}

/// What a new run holds, gathered in memory (a flush of the in-memory tail).
#[derive(Debug, Default)]
pub struct RunContent {
    pub first: u64,
    pub end: u64,
    pub min_time: i64,
    pub max_time: i64,
    /// Sorted by id.
    pub ids: Vec<(EventId, u64)>,
    /// Sorted.
    pub leaves: Vec<(u64, u64)>,
    /// Sorted by term; each list ascending, every seq in `first..end`.
    pub lists: Vec<(u32, Vec<u64>)>,
    /// Least and greatest event time per time block ([`time_blocks`]).
    pub times: Vec<(i64, i64)>,
}

/// The time blocks of events `first..` with event times `times`.
pub fn block_times(first: u64, times: &[i64]) -> Vec<(i64, i64)> {
    let mut out: Vec<(i64, i64)> = Vec::new();
    let mut block = None;
    for (seq, t) in (first..).zip(times) {
        let k = seq / TIME_BLOCK;
        match out.last_mut() {
            Some((lo, hi)) if block == Some(k) => {
                *lo = (*lo).min(*t);
                *hi = (*hi).max(*t);
            }
            _ => {
                out.push((*t, *t));
                block = Some(k);
            }
        }
    }
    out
}

fn put_times(w: &mut RunWriter, times: &[(i64, i64)]) -> std::io::Result<()> {
    for (lo, hi) in times {
        w.put(&lo.to_be_bytes())?;
        w.put(&hi.to_be_bytes())?;
    }
    Ok(())
}

/// Writes runs: a temporary file, then synced and renamed into place.
struct RunWriter {
    out: BufWriter<File>,
    crc: u32,
    tmp: PathBuf,
}

impl RunWriter {
    fn create(dir: &Path, first: u64, end: u64) -> std::io::Result<RunWriter> {
        use std::os::unix::fs::OpenOptionsExt;
        let tmp = dir.join(format!("{}.tmp", run_name(first, end)));
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(crate::FILE_MODE)
            .open(&tmp)?;
        Ok(RunWriter {
            out: BufWriter::with_capacity(1 << 20, file),
            crc: 0,
            tmp,
        })
    }

    fn put(&mut self, b: &[u8]) -> std::io::Result<()> {
        self.crc = crc32c::crc32c_append(self.crc, b);
        self.out.write_all(b)
    }

    fn finish(mut self, mut footer: Footer, dir: &Path) -> std::io::Result<PathBuf> {
        footer.body_crc = self.crc;
        self.out.write_all(&footer.encode())?;
        let file = self.out.into_inner().map_err(|e| e.into_error())?;
        file.sync_all()?;
        let path = dir.join(run_name(footer.first, footer.end));
        std::fs::rename(&self.tmp, &path)?;
        crate::derived::sync_dir(dir)?;
        Ok(path)
    }
}

/// A new random Bloom seed.
fn new_seed() -> u64 {
    use std::hash::BuildHasher;
    std::collections::hash_map::RandomState::new().hash_one(0x6d6c_6172_756eu64)
}

/// Builds a Bloom filter for `count` ids.
struct BloomBuilder {
    seed: u64,
    blocks: u64,
    bits: Vec<u8>,
}

impl BloomBuilder {
    fn new(count: u64) -> BloomBuilder {
        let blocks = (count * BLOOM_BITS_PER_ID).div_ceil(BLOOM_BLOCK * 8);
        BloomBuilder {
            seed: new_seed(),
            blocks,
            bits: vec![0u8; (blocks * BLOOM_BLOCK) as usize],
        }
    }
    fn add(&mut self, id: &EventId) {
        let (block, bits) = bloom_position(self.seed, id, self.blocks);
        for bit in bits {
            self.bits[(block * BLOOM_BLOCK) as usize + (bit / 8) as usize] |= 1 << (bit % 8);
        }
    }
}

/// Writes the tables after the leaf table: postings, directory, fences, Bloom.
fn write_rest(
    w: &mut RunWriter,
    lists: &[(u32, u64)],
    mut postings: impl FnMut(&mut RunWriter) -> std::io::Result<()>,
    fences: &[[u8; 16]],
    bloom: &BloomBuilder,
) -> std::io::Result<()> {
    postings(w)?;
    let mut off = 0u64;
    for (term, count) in lists {
        w.put(&term.to_be_bytes())?;
        w.put(&(*count as u32).to_be_bytes())?;
        w.put(&(off * 4).to_be_bytes())?;
        off += count;
    }
    for f in fences {
        w.put(f)?;
    }
    w.put(&bloom.bits)
}

/// Writes a run from content gathered in memory; returns its path.
pub fn write_run(dir: &Path, c: &RunContent) -> std::io::Result<PathBuf> {
    let mut w = RunWriter::create(dir, c.first, c.end)?;
    let mut bloom = BloomBuilder::new(c.ids.len() as u64);
    let mut fences = Vec::new();
    for (i, (id, seq)) in c.ids.iter().enumerate() {
        if (i as u64).is_multiple_of(ID_BLOCK) {
            fences.push(id.0);
        }
        bloom.add(id);
        w.put(&id.0)?;
        w.put(&seq.to_be_bytes())?;
    }
    for (prefix, seq) in &c.leaves {
        w.put(&prefix.to_be_bytes())?;
        w.put(&seq.to_be_bytes())?;
    }
    let counts: Vec<(u32, u64)> = c.lists.iter().map(|(t, l)| (*t, l.len() as u64)).collect();
    write_rest(
        &mut w,
        &counts,
        |w| {
            for (_, list) in &c.lists {
                for seq in list {
                    w.put(&((seq - c.first) as u32).to_be_bytes())?;
                }
            }
            Ok(())
        },
        &fences,
        &bloom,
    )?;
    put_times(&mut w, &c.times)?;
    let footer = Footer {
        first: c.first,
        end: c.end,
        min_time: c.min_time,
        max_time: c.max_time,
        ids: c.ids.len() as u64,
        leaves: c.leaves.len() as u64,
        lists: counts.len() as u64,
        postings: counts.iter().map(|(_, n)| n).sum(),
        bloom_blocks: bloom.blocks,
        seed: bloom.seed,
        body_crc: 0,
    };
    w.finish(footer, dir)
}

/// Reads a table of fixed-size records in order, a chunk at a time.
struct Stream<'a> {
    run: &'a Run,
    at: u64,
    len: u64,
    left: u64,
    buf: Vec<u8>,
    pos: usize,
}

impl<'a> Stream<'a> {
    fn new(run: &'a Run, at: u64, count: u64, len: u64) -> Stream<'a> {
        Stream {
            run,
            at,
            len,
            left: count,
            buf: Vec::new(),
            pos: 0,
        }
    }

    fn next(&mut self) -> std::io::Result<Option<&[u8]>> {
        if self.pos >= self.buf.len() {
            if self.left == 0 {
                return Ok(None);
            }
            let n = self.left.min(1 << 14);
            self.buf.resize((n * self.len) as usize, 0);
            self.run.read_at(&mut self.buf, self.at)?;
            self.at += n * self.len;
            self.left -= n;
            self.pos = 0;
        }
        let rec = &self.buf[self.pos..self.pos + self.len as usize];
        self.pos += self.len as usize;
        Ok(Some(rec))
    }
}

/// Merges two adjacent runs (`a` ends where `b` begins) into a new run file; returns its path.
pub fn merge(dir: &Path, a: &Run, b: &Run) -> std::io::Result<PathBuf> {
    let (fa, fb) = (a.footer, b.footer);
    if fa.end != fb.first || fb.end - fa.first > u64::from(u32::MAX) {
        return Err(std::io::Error::other(
            "runs are not adjacent or too large to merge",
        ));
    }
    let mut w = RunWriter::create(dir, fa.first, fb.end)?;
    let ids = fa.ids + fb.ids;
    let mut bloom = BloomBuilder::new(ids);
    let mut fences = Vec::new();
    let mut n = 0u64;
    let ids_at = (0, 0);
    merge_sorted((a, b), ids_at, (fa.ids, fb.ids), ID_LEN, 16, &mut |rec| {
        if n.is_multiple_of(ID_BLOCK) {
            fences.push(rec[..16].try_into().unwrap_or([0; 16]));
        }
        n += 1;
        bloom.add(&EventId(rec[..16].try_into().unwrap_or([0; 16])));
        w.put(rec)
    })?;
    let mut terms: Vec<u32> = a.lists().iter().chain(b.lists()).map(|(t, _)| *t).collect();
    terms.sort_unstable();
    terms.dedup();
    let counts: Vec<(u32, u64)> = terms
        .iter()
        .map(|t| {
            let n = |r: &Run| r.list(*t).map_or(0, |l| l.count);
            (*t, n(a) + n(b))
        })
        .collect();
    merge_sorted(
        (a, b),
        (fa.leaves_at(), fb.leaves_at()),
        (fa.leaves, fb.leaves),
        LEAF_LEN,
        8,
        &mut |rec| w.put(rec),
    )?;
    write_rest(
        &mut w,
        &counts,
        |w| {
            for t in &terms {
                for run in [a, b] {
                    if let Some(list) = run.list(*t) {
                        let shift = (run.footer.first - fa.first) as u32;
                        let mut s = Stream::new(run, list.at, list.count, 4);
                        while let Some(v) = s.next()? {
                            let v = u32::from_be_bytes([v[0], v[1], v[2], v[3]]) + shift;
                            w.put(&v.to_be_bytes())?;
                        }
                    }
                }
            }
            Ok(())
        },
        &fences,
        &bloom,
    )?;
    let mut times = a.times.clone();
    let mut later = b.times.iter().copied();
    if fa.end % TIME_BLOCK != 0 {
        // The block `a` ends in is the one `b` begins in.
        if let (Some(last), Some((lo, hi))) = (times.last_mut(), later.next()) {
            *last = (last.0.min(lo), last.1.max(hi));
        }
    }
    times.extend(later);
    put_times(&mut w, &times)?;
    let footer = Footer {
        first: fa.first,
        end: fb.end,
        min_time: fa.min_time.min(fb.min_time),
        max_time: fa.max_time.max(fb.max_time),
        ids,
        leaves: fa.leaves + fb.leaves,
        lists: counts.len() as u64,
        postings: counts.iter().map(|(_, n)| n).sum(),
        bloom_blocks: bloom.blocks,
        seed: bloom.seed,
        body_crc: 0,
    };
    w.finish(footer, dir)
}

/// Merges the sorted tables of two runs (at byte positions `at`, with `count` records of `len`
/// bytes each, ordered by their first `key` bytes), passing each record to `put` in order.
fn merge_sorted(
    (a, b): (&Run, &Run),
    at: (u64, u64),
    count: (u64, u64),
    len: u64,
    key: usize,
    put: &mut dyn FnMut(&[u8]) -> std::io::Result<()>,
) -> std::io::Result<()> {
    let mut sa = Stream::new(a, at.0, count.0, len);
    let mut sb = Stream::new(b, at.1, count.1, len);
    let mut ra = [0u8; 32];
    let mut rb = [0u8; 32];
    let n = len as usize;
    let mut has_a = copy_next(&mut sa, &mut ra)?;
    let mut has_b = copy_next(&mut sb, &mut rb)?;
    while has_a || has_b {
        if has_a && (!has_b || ra[..key] <= rb[..key]) {
            put(&ra[..n])?;
            has_a = copy_next(&mut sa, &mut ra)?;
        } else {
            put(&rb[..n])?;
            has_b = copy_next(&mut sb, &mut rb)?;
        }
    }
    Ok(())
}

/// Copies the next record of a stream into `into`; false at its end.
fn copy_next(s: &mut Stream<'_>, into: &mut [u8; 32]) -> std::io::Result<bool> {
    match s.next()? {
        Some(r) => {
            into[..r.len()].copy_from_slice(r);
            Ok(true)
        }
        None => Ok(false),
    }
}

/// The run files of `dir`, by `(first, end)`; leftover temporary files are removed.
fn list(dir: &Path) -> std::io::Result<Vec<(u64, u64, PathBuf)>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        if name.starts_with("run-") && name.ends_with(".idx.tmp") {
            std::fs::remove_file(&path)?;
        } else if let Some((first, end)) = parse_run_name(&name) {
            out.push((first, end, path));
        }
    }
    out.sort_by_key(|(first, end, _)| (*first, std::cmp::Reverse(*end)));
    Ok(out)
}

/// Opens the runs of `dir` that cover `0..base` for the largest `base <= up_to` they reach
/// without a gap, taking the longest run at each step (a merge that replaced two runs and
/// was interrupted before removing them leaves both); removes every other run file. A damaged
/// run ends the chain there (the tail is rebuilt from `index.bin` from its first seq), and is
/// reported in `warnings`.
pub fn open_chain(
    dir: &Path,
    up_to: u64,
    budget: &Arc<Budget>,
    warnings: &mut Vec<String>,
) -> std::io::Result<Vec<Arc<Run>>> {
    let mut chain: Vec<Arc<Run>> = Vec::new();
    let mut at = 0u64;
    let mut broken = false;
    for (first, end, path) in list(dir)? {
        if !broken && first == at && end > first && end <= up_to {
            match Run::open(&path, budget.clone()) {
                Ok(run) => {
                    chain.push(Arc::new(run));
                    at = end;
                    continue;
                }
                Err(e) => {
                    warnings.push(format!("{e}: the index is rebuilt from seq {at}"));
                    broken = true;
                }
            }
        }
        std::fs::remove_file(&path)?;
    }
    Ok(chain)
}

/// Removes every run file of `dir` (the indexes are rebuilt from the start).
pub fn remove_all(dir: &Path) -> std::io::Result<()> {
    for (_, _, path) in list(dir)? {
        std::fs::remove_file(path)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("mlaudit-runs-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    fn id(n: u64) -> EventId {
        let mut b = [0u8; 16];
        b[..8].copy_from_slice(&keyed::mix(n).to_be_bytes());
        b[8..].copy_from_slice(&n.to_be_bytes());
        EventId(b)
    }

    /// A run of seqs `first..end`: every id, a leaf prefix per seq, term 1 on even seqs and
    /// term 2 on every third.
    fn content(first: u64, end: u64) -> RunContent {
        let mut ids: Vec<(EventId, u64)> = (first..end).map(|s| (id(s), s)).collect();
        ids.sort_unstable();
        let mut leaves: Vec<(u64, u64)> = (first..end).map(|s| (keyed::mix(!s), s)).collect();
        leaves.sort_unstable();
        let lists = vec![
            (1, (first..end).filter(|s| s % 2 == 0).collect()),
            (2, (first..end).filter(|s| s % 3 == 0).collect()),
            (STAGE_TERM + 4, (first..end).collect()),
        ];
        let times: Vec<i64> = (first..end).map(|s| s as i64 * 10).collect();
        RunContent {
            first,
            end,
            min_time: first as i64 * 10,
            max_time: (end as i64 - 1) * 10,
            ids,
            leaves,
            lists,
            times: block_times(first, &times),
        }
    }

    fn check_run(run: &Run, first: u64, end: u64) {
        for s in first..end {
            assert_eq!(run.find_id(&id(s)).unwrap(), Some(s), "id of seq {s}");
            assert_eq!(run.find_leaf(keyed::mix(!s)).unwrap(), vec![s]);
        }
        for s in [end, end + 1, first + 1_000_000] {
            assert_eq!(run.find_id(&id(s)).unwrap(), None);
        }
        let mut evens = Vec::new();
        run.for_each_posting(run.list(1).unwrap(), |s| evens.push(s))
            .unwrap();
        assert_eq!(
            evens,
            (first..end).filter(|s| s % 2 == 0).collect::<Vec<_>>()
        );
        let thirds = run.list(2).unwrap();
        let from = run.seek(thirds, first + 10).unwrap();
        let got = run.read_postings(thirds, from, 2).unwrap();
        let want: Vec<u64> = (first + 10..end).filter(|s| s % 3 == 0).take(2).collect();
        assert_eq!(got, want);
        assert!(run.check_body().unwrap());
    }

    #[test]
    fn a_written_run_answers_every_lookup_with_or_without_memory_for_its_summaries() {
        let d = dir("lookup");
        for budget in [u64::MAX, 0] {
            let path = write_run(&d, &content(100, 2100)).unwrap();
            let run = Run::open(&path, Budget::new(budget)).unwrap();
            check_run(&run, 100, 2100);
        }
        std::fs::remove_dir_all(d).unwrap();
    }

    #[test]
    fn a_merge_holds_both_runs_and_an_interrupted_merge_opens_as_the_merged_run() {
        let d = dir("merge");
        let budget = Budget::new(u64::MAX);
        let a = Run::open(&write_run(&d, &content(0, 700)).unwrap(), budget.clone()).unwrap();
        let b = Run::open(&write_run(&d, &content(700, 1000)).unwrap(), budget.clone()).unwrap();
        let merged = Run::open(&merge(&d, &a, &b).unwrap(), budget.clone()).unwrap();
        check_run(&merged, 0, 1000);
        // Both runs' times are in time block 0; the merge keeps one block for it.
        assert_eq!(merged.times, vec![(0, 9990)]);
        assert_eq!(merged.time_ranges(0, Some(5000), None), vec![(0, 1000)]);
        assert_eq!(merged.time_ranges(0, Some(10_000), None), vec![]);
        assert_eq!(merged.time_ranges(0, None, Some(0)), vec![]);
        let big = Run::open(
            &write_run(&d, &content(4000, 13000)).unwrap(),
            budget.clone(),
        )
        .unwrap();
        assert_eq!(
            big.times.len(),
            4,
            "blocks 0, 1, 2 and 3 (seqs 4000..13000)"
        );
        // Event times 85,000..86,000 are seqs 8500..8600, in block 2 (8192..12288).
        assert_eq!(
            big.time_ranges(0, Some(85_000), Some(86_000)),
            vec![(8192, 12288)]
        );
        assert_eq!(
            big.time_ranges(9000, Some(85_000), Some(86_000)),
            vec![(9000, 12288)]
        );
        drop(big);
        std::fs::remove_file(d.join(run_name(4000, 13000))).unwrap();
        // As a crash after the merged run's rename leaves it: both old runs still there, with
        // a later run and a leftover temporary file beside them.
        write_run(&d, &content(1000, 1100)).unwrap();
        std::fs::write(d.join(format!("{}.tmp", run_name(1100, 1200))), b"partial").unwrap();
        let mut warnings = Vec::new();
        let chain = open_chain(&d, 1100, &budget, &mut warnings).unwrap();
        let ranges: Vec<(u64, u64)> = chain
            .iter()
            .map(|r| (r.footer.first, r.footer.end))
            .collect();
        assert_eq!(ranges, vec![(0, 1000), (1000, 1100)]);
        assert!(warnings.is_empty(), "{warnings:?}");
        let mut left: Vec<String> = std::fs::read_dir(&d)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(left, vec![run_name(0, 1000), run_name(1000, 1100)]);
        std::fs::remove_dir_all(d).unwrap();
    }

    #[test]
    fn runs_beyond_the_watermark_or_damaged_are_removed_at_open() {
        let d = dir("chain");
        let budget = Budget::new(u64::MAX);
        write_run(&d, &content(0, 50)).unwrap();
        let second = write_run(&d, &content(50, 90)).unwrap();
        write_run(&d, &content(90, 120)).unwrap();
        // Beyond a watermark of 100 events: removed.
        let mut warnings = Vec::new();
        let chain = open_chain(&d, 100, &budget, &mut warnings).unwrap();
        assert_eq!(chain.len(), 2);
        assert!(!d.join(run_name(90, 120)).exists());
        drop(chain);
        // A damaged footer ends the chain before it, and says so.
        let mut bytes = std::fs::read(&second).unwrap();
        let at = bytes.len() - 10;
        bytes[at] ^= 1;
        std::fs::write(&second, bytes).unwrap();
        let chain = open_chain(&d, 100, &budget, &mut warnings).unwrap();
        assert_eq!(chain.len(), 1);
        assert!(warnings[0].contains("damaged footer"), "{warnings:?}");
        assert!(!second.exists());
        std::fs::remove_dir_all(d).unwrap();
    }
}
