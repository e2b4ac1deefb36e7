//! Derived files: everything in the engine's directory except the segments, recomputable from
//! the segments alone.
//!
//! * `tree-LL.hash` — level `LL` of the tree: the hash of every complete perfect subtree of
//!   `2^LL` leaves, 32 bytes each, in order (level 00 holds the leaf hashes).
//! * `offsets.bin` — u64 log position of each event's record.
//! * `index.bin` — one [`IndexRecord`] per event, with a CRC-32C each.
//! * `terms.bin` — the term dictionary: `u8 tag, u16 length, bytes, u32 CRC-32C` per term;
//!   term ids count from 1.
//! * `checkpoints.bin` — `u64 tree size, u64 log position` per checkpoint record.
//! * `derived.meta` — the watermark: all of the above are complete and fsync'd for the first
//!   `size` events (the log up to `log_end`). Written atomically (temp file, fsync, rename,
//!   directory fsync) only after the files are fsync'd.
//!
//! **Invariant:** nothing beyond the watermark is trusted at open; it is truncated and
//! recomputed from the segments.

use crate::index::{Files, Index, IndexRecord, Tag, INDEX_RECORD_LEN};
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

const META_MAGIC: &[u8; 8] = b"MLADMETA";
const META_VERSION: u32 = 1;
const META_LEN: usize = 8 + 4 + 8 + 8 + 8 + 4 + 8 + 4;

/// Why [`Derived::write`] failed.
#[derive(Debug)]
pub enum DerivedWriteError {
    /// Nothing of the write is left: the files are as they were.
    Undone(std::io::Error),
    /// The files could not be cut back: their ends are unknown.
    Left(std::io::Error),
}

/// The watermark in `derived.meta`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Meta {
    pub size: u64,
    pub log_end: u64,
    pub terms_bytes: u64,
    pub term_count: u32,
    pub checkpoints: u64,
}

impl Meta {
    fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(META_LEN);
        out.extend_from_slice(META_MAGIC);
        out.extend_from_slice(&META_VERSION.to_be_bytes());
        out.extend_from_slice(&self.size.to_be_bytes());
        out.extend_from_slice(&self.log_end.to_be_bytes());
        out.extend_from_slice(&self.terms_bytes.to_be_bytes());
        out.extend_from_slice(&self.term_count.to_be_bytes());
        out.extend_from_slice(&self.checkpoints.to_be_bytes());
        let crc = crc32c::crc32c(&out);
        out.extend_from_slice(&crc.to_be_bytes());
        out
    }

    fn decode(b: &[u8]) -> Option<Meta> {
        if b.len() != META_LEN || &b[..8] != META_MAGIC {
            return None;
        }
        let crc = u32::from_be_bytes(b[META_LEN - 4..].try_into().ok()?);
        if crc32c::crc32c(&b[..META_LEN - 4]) != crc
            || u32::from_be_bytes(b[8..12].try_into().ok()?) != META_VERSION
        {
            return None;
        }
        let u64_at = |at: usize| b[at..at + 8].try_into().ok().map(u64::from_be_bytes);
        Some(Meta {
            size: u64_at(12)?,
            log_end: u64_at(20)?,
            terms_bytes: u64_at(28)?,
            term_count: u32::from_be_bytes(b[36..40].try_into().ok()?),
            checkpoints: u64_at(40)?,
        })
    }
}

/// The open derived files.
#[derive(Debug)]
pub struct Derived {
    dir: PathBuf,
    pub levels: Vec<std::sync::Arc<File>>,
    offsets: File,
    index: File,
    terms: File,
    checkpoints: File,
    pub terms_bytes: u64,
    /// Terms written to `terms.bin`.
    pub term_count: u32,
}

fn open_rw(path: &Path) -> std::io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    OpenOptions::new()
        .read(true)
        .append(true)
        .create(true)
        .mode(crate::FILE_MODE)
        .open(path)
}

/// The path of a tree level file.
pub fn level_path(dir: &Path, level: usize) -> PathBuf {
    dir.join(format!("tree-{level:02}.hash"))
}

/// Buffered derived writes of one group, flushed by [`Derived::write`].
#[derive(Debug, Default)]
pub struct Pending {
    pub levels: Vec<Vec<u8>>,
    pub offsets: Vec<u8>,
    pub index: Vec<u8>,
    pub terms: Vec<u8>,
    pub term_count: u32,
    pub checkpoints: Vec<u8>,
}

impl Pending {
    pub fn node(&mut self, level: u32, hash: &[u8; 32]) {
        let level = level as usize;
        if self.levels.len() <= level {
            self.levels.resize_with(level + 1, Vec::new);
        }
        self.levels[level].extend_from_slice(hash);
    }
    pub fn event(&mut self, offset: u64, rec: &IndexRecord) {
        self.offsets.extend_from_slice(&offset.to_be_bytes());
        rec.encode_into(&mut self.index);
    }
    pub fn term(&mut self, tag: Tag, value: &str) {
        let start = self.terms.len();
        self.terms.push(tag as u8);
        self.terms
            .extend_from_slice(&(value.len() as u16).to_be_bytes()); // values are <= MAX_ID_LEN
        self.terms.extend_from_slice(value.as_bytes());
        let crc = crc32c::crc32c(&self.terms[start..]);
        self.terms.extend_from_slice(&crc.to_be_bytes());
        self.term_count += 1;
    }
    pub fn checkpoint(&mut self, size: u64, pos: u64) {
        self.checkpoints.extend_from_slice(&size.to_be_bytes());
        self.checkpoints.extend_from_slice(&pos.to_be_bytes());
    }
    pub fn is_empty(&self) -> bool {
        self.offsets.is_empty() && self.checkpoints.is_empty()
    }
    /// Appends `other`'s bytes after this one's, file by file.
    pub fn append(&mut self, other: &Pending) {
        if self.levels.len() < other.levels.len() {
            self.levels.resize_with(other.levels.len(), Vec::new);
        }
        for (mine, theirs) in self.levels.iter_mut().zip(&other.levels) {
            mine.extend_from_slice(theirs);
        }
        self.offsets.extend_from_slice(&other.offsets);
        self.index.extend_from_slice(&other.index);
        self.terms.extend_from_slice(&other.terms);
        self.term_count += other.term_count;
        self.checkpoints.extend_from_slice(&other.checkpoints);
    }
}

impl Derived {
    /// Opens (creating) the derived files of `dir`.
    pub fn open(dir: &Path) -> std::io::Result<Derived> {
        // Open (creating any gap) every level up to the highest one present, so that a reset
        // empties them all even when a lower level file was deleted.
        let present = (0..64usize)
            .filter(|l| level_path(dir, *l).exists())
            .max()
            .map_or(0, |l| l + 1);
        let mut levels = Vec::with_capacity(present);
        for level in 0..present {
            levels.push(std::sync::Arc::new(open_rw(&level_path(dir, level))?));
        }
        Ok(Derived {
            dir: dir.to_owned(),
            levels,
            offsets: open_rw(&dir.join("offsets.bin"))?,
            index: open_rw(&dir.join("index.bin"))?,
            terms: open_rw(&dir.join("terms.bin"))?,
            checkpoints: open_rw(&dir.join("checkpoints.bin"))?,
            terms_bytes: 0,
            term_count: 0,
        })
    }

    /// Read handles on the fixed-size files, for readers.
    pub fn read_handles(&self) -> std::io::Result<Files> {
        Ok(Files {
            offsets: std::sync::Arc::new(self.offsets.try_clone()?),
            records: std::sync::Arc::new(self.index.try_clone()?),
            checkpoints: std::sync::Arc::new(self.checkpoints.try_clone()?),
        })
    }

    /// Reads the watermark; `None` if absent or damaged.
    pub fn read_meta(dir: &Path) -> Option<Meta> {
        let mut buf = Vec::new();
        File::open(dir.join("derived.meta"))
            .ok()?
            .read_to_end(&mut buf)
            .ok()?;
        Meta::decode(&buf)
    }

    /// Truncates every file to the watermark and loads the in-memory part of the indexes it
    /// covers: the terms, and the tail after the runs `index` already holds (written out as
    /// runs of `run_events` as it grows). Fails (and the caller rebuilds from scratch) when a
    /// file is shorter than the watermark says.
    pub fn load(&mut self, meta: &Meta, index: &mut Index, run_events: u64) -> Result<(), String> {
        let io = |e: std::io::Error| e.to_string();
        let want = |f: &File, len: u64, name: &str| -> Result<(), String> {
            let have = f.metadata().map_err(io)?.len();
            if have < len {
                return Err(format!(
                    "{name} holds {have} bytes, the watermark needs {len}"
                ));
            }
            f.set_len(len).map_err(io)
        };
        want(&self.offsets, meta.size * 8, "offsets.bin")?;
        want(
            &self.index,
            meta.size * INDEX_RECORD_LEN as u64,
            "index.bin",
        )?;
        want(&self.terms, meta.terms_bytes, "terms.bin")?;
        want(&self.checkpoints, meta.checkpoints * 16, "checkpoints.bin")?;
        for level in 0..64usize {
            let count = meta.size >> level;
            if count == 0 {
                break;
            }
            let f = self
                .levels
                .get(level)
                .ok_or_else(|| format!("tree level {level} is missing"))?;
            want(f, count * 32, &format!("tree-{level:02}.hash"))?;
        }
        for f in self
            .levels
            .iter()
            .skip((64 - meta.size.leading_zeros()) as usize)
        {
            f.set_len(0).map_err(io)?;
        }
        self.terms_bytes = meta.terms_bytes;
        self.term_count = meta.term_count;
        let terms = read_all(&self.terms)?;
        let mut at = 0usize;
        while at < terms.len() {
            let bad = || "terms.bin is malformed".to_owned();
            let tag = Tag::from_code(terms[at]).ok_or_else(bad)?;
            let len = u16::from_be_bytes(
                terms
                    .get(at + 1..at + 3)
                    .ok_or_else(bad)?
                    .try_into()
                    .map_err(|_| bad())?,
            ) as usize;
            let value = std::str::from_utf8(terms.get(at + 3..at + 3 + len).ok_or_else(bad)?)
                .map_err(|_| bad())?;
            let crc = terms.get(at + 3 + len..at + 7 + len).ok_or_else(bad)?;
            if crc32c::crc32c(&terms[at..at + 3 + len]).to_be_bytes() != crc {
                return Err(format!(
                    "terms.bin term {} is damaged",
                    index.term_count() + 1
                ));
            }
            index.load_term(tag, value);
            at += 7 + len;
        }
        if index.term_count() != meta.term_count {
            return Err("terms.bin disagrees with the watermark".into());
        }
        if index.base() > meta.size {
            return Err("the index runs cover more events than the watermark".into());
        }
        self.load_tail(meta.size, index, run_events)?;
        let files = self.read_handles().map_err(io)?;
        let last = match meta.checkpoints.checked_sub(1) {
            Some(i) => Some(files.checkpoint(i).map_err(io)?),
            None => None,
        };
        index.set_checkpoints(meta.checkpoints, last);
        Ok(())
    }

    /// Feeds the index records and leaf hashes of seqs `index.len()..size` to the index's
    /// tail, one bounded buffer at a time.
    fn load_tail(&self, size: u64, index: &mut Index, run_events: u64) -> Result<(), String> {
        use std::os::unix::fs::FileExt;
        const CHUNK: u64 = 1 << 15;
        let files = self.read_handles().map_err(|e| e.to_string())?;
        let Some(leaves) = self.levels.first() else {
            return if size == index.len() {
                Ok(())
            } else {
                Err("tree level 0 is missing".into())
            };
        };
        let mut buf = Vec::new();
        let term_count = index.term_count();
        while index.len() < size {
            let seq = index.len();
            let n = CHUNK.min(size - seq);
            buf.resize(n as usize * 32, 0);
            leaves
                .read_exact_at(&mut buf, seq * 32)
                .map_err(|e| format!("reading tree-00.hash: {e}"))?;
            let records = files.records(seq, n).map_err(|e| e.to_string())?;
            for (rec, (s, h)) in records.iter().zip((seq..).zip(buf.chunks_exact(32))) {
                if rec.terms.iter().any(|t| *t > term_count) {
                    return Err("index.bin names an unknown term".into());
                }
                index.push(rec, true);
                if let Some(h) = mlaudit_core::merkle::Hash::from_slice(h) {
                    index.push_leaf(s, &h);
                }
            }
            if index.tail_len() >= run_events {
                index.flush_tail().map_err(|e| e.to_string())?;
            }
        }
        Ok(())
    }

    /// Empties every derived file (full rebuild).
    pub fn reset(&mut self) -> std::io::Result<()> {
        for f in self.levels.iter().map(|a| &**a).chain([
            &self.offsets,
            &self.index,
            &self.terms,
            &self.checkpoints,
        ]) {
            f.set_len(0)?;
        }
        self.terms_bytes = 0;
        self.term_count = 0;
        Ok(())
    }

    /// Appends one group's derived bytes (no fsync). If any write fails, every file is cut
    /// back to its length before, so that the next attempt appends where this one began.
    pub fn write(&mut self, p: &Pending) -> Result<(), DerivedWriteError> {
        let before = self.lengths().map_err(DerivedWriteError::Undone)?;
        match self.append(p) {
            Ok(()) => {
                self.terms_bytes += p.terms.len() as u64;
                self.term_count += p.term_count;
                Ok(())
            }
            Err(e) => match self.cut_back(&before) {
                Ok(()) => Err(DerivedWriteError::Undone(e)),
                Err(cut) => Err(DerivedWriteError::Left(std::io::Error::other(format!(
                    "{e}; and cutting the derived files back failed: {cut}"
                )))),
            },
        }
    }

    fn files(&self) -> impl Iterator<Item = &File> {
        self.levels.iter().map(|a| &**a).chain([
            &self.offsets,
            &self.index,
            &self.terms,
            &self.checkpoints,
        ])
    }

    fn lengths(&self) -> std::io::Result<Vec<u64>> {
        self.files().map(|f| Ok(f.metadata()?.len())).collect()
    }

    /// Cuts every file back to the lengths `before` (tree levels opened since are emptied).
    fn cut_back(&self, before: &[u64]) -> std::io::Result<()> {
        let (old_levels, fixed) = before.split_at(before.len() - 4);
        let new_levels = self.levels.len() - old_levels.len();
        let wanted = old_levels
            .iter()
            .copied()
            .chain(std::iter::repeat_n(0, new_levels))
            .chain(fixed.iter().copied());
        for (f, len) in self.files().zip(wanted) {
            f.set_len(len)?;
        }
        Ok(())
    }

    fn append(&mut self, p: &Pending) -> std::io::Result<()> {
        while self.levels.len() < p.levels.len() {
            self.levels.push(std::sync::Arc::new(open_rw(&level_path(
                &self.dir,
                self.levels.len(),
            ))?));
        }
        for (file, bytes) in self.levels.iter().zip(&p.levels) {
            (&**file).write_all(bytes)?;
        }
        (&self.offsets).write_all(&p.offsets)?;
        (&self.index).write_all(&p.index)?;
        (&self.terms).write_all(&p.terms)?;
        (&self.checkpoints).write_all(&p.checkpoints)?;
        Ok(())
    }

    /// Makes every derived file durable, then records the watermark atomically.
    pub fn commit_meta(&self, meta: &Meta) -> std::io::Result<()> {
        for f in self.levels.iter().map(|a| &**a).chain([
            &self.offsets,
            &self.index,
            &self.terms,
            &self.checkpoints,
        ]) {
            f.sync_data()?;
        }
        use std::os::unix::fs::OpenOptionsExt;
        let tmp = self.dir.join("derived.meta.tmp");
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(crate::FILE_MODE)
            .open(&tmp)?;
        f.write_all(&meta.encode())?;
        f.sync_all()?;
        std::fs::rename(&tmp, self.dir.join("derived.meta"))?;
        sync_dir(&self.dir)
    }
}

fn read_all(f: &File) -> Result<Vec<u8>, String> {
    use std::os::unix::fs::FileExt;
    let len = f.metadata().map_err(|e| e.to_string())?.len();
    let mut buf = vec![0u8; len as usize];
    f.read_exact_at(&mut buf, 0).map_err(|e| e.to_string())?;
    Ok(buf)
}

/// fsyncs a directory so that renames and new files in it are durable.
pub fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}
