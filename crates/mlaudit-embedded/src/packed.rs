//! Sealed segments, compressed: `seg-<start>.zst` holds the same bytes as the `seg-<start>.log`
//! it replaces, as independently decodable zstd frames of whole records (blocks of about
//! [`BLOCK_TARGET`] bytes), so that reading one record decompresses one block, not a segment.
//! The layout, byte for byte, is in `docs/FORMAT.md` §6.
//!
//! A segment is packed once the writer has moved on to the next one (it was synced before the
//! next was created, and never changes again): the packed file is written under a temporary
//! name, synced, read back and compared with the original block by block, renamed into place,
//! the directory synced, and only then is the original removed. A crash leaves the original,
//! or both (opening keeps the packed file if its trailer checks out), never neither.
//!
//! **Invariants:** log positions do not change: a packed segment answers reads at the same
//! offsets as the original; every block is checked against its CRC-32C before it is
//! decompressed, and a block that does not check out is reported with the file and offset.

use crate::record;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

/// Raw bytes per block (whole records; a larger record is a block of its own).
pub const BLOCK_TARGET: usize = 64 << 10;
/// The most raw bytes a block can hold: the target, then one record of the largest size.
const MAX_BLOCK: u32 = BLOCK_TARGET as u32 + (33 << 20);
/// zstd level: ratio close to the higher levels' on these records at a fraction of the time.
const LEVEL: i32 = 3;
const MAGIC: &[u8; 8] = b"MLASEGZ1";
/// One block index entry: raw offset u64, stored offset u64, stored length u32, raw length
/// u32, CRC-32C of the stored bytes u32.
const ENTRY_LEN: usize = 28;
/// The trailer: magic, segment start, raw length, block count, index offset, index CRC, CRC.
pub const TRAILER_LEN: u64 = 8 + 8 + 8 + 4 + 8 + 4 + 4;

/// The file name of the packed segment starting at `start`.
pub fn packed_name(start: u64) -> String {
    format!("seg-{start:020}.zst")
}

/// Where a block is.
#[derive(Debug, Clone, Copy)]
struct Block {
    raw_at: u64,
    stored_at: u64,
    stored_len: u32,
    raw_len: u32,
    crc: u32,
}

/// The big-endian u64 at `i` of a slice the caller sized (0 past its end).
fn u64_at(b: &[u8], i: usize) -> u64 {
    b.get(i..i + 8)
        .and_then(|s| s.try_into().ok())
        .map_or(0, u64::from_be_bytes)
}

/// The big-endian u32 at `i` of a slice the caller sized (0 past its end).
fn u32_at(b: &[u8], i: usize) -> u32 {
    b.get(i..i + 4)
        .and_then(|s| s.try_into().ok())
        .map_or(0, u32::from_be_bytes)
}

/// Why a packed segment cannot be read.
fn damaged(name: &str, offset: u64, problem: impl Into<String>) -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::InvalidData,
        format!("{name} at offset {offset}: {}", problem.into()),
    )
}

/// Decompressed blocks kept for the next read, across all packed segments: a record's header
/// and body are read one after the other, and a scan reads on from where it stopped.
const CACHED_BLOCKS: usize = 8;

/// The decompressed blocks of [`CACHED_BLOCKS`], most recent last: (the [`Packed`]'s
/// instance number, block).
type BlockCache = Mutex<std::collections::VecDeque<(u64, u32, Arc<Vec<u8>>)>>;

static CACHE: BlockCache = Mutex::new(std::collections::VecDeque::new());

/// Numbers every [`Packed`] opened in this process (several stores may be open at once).
static INSTANCES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// An open packed segment.
#[derive(Debug)]
pub struct Packed {
    pub name: String,
    /// Its key in the block cache.
    instance: u64,
    file: Arc<File>,
    start: u64,
    raw_len: u64,
    blocks: u32,
    index_at: u64,
    index_crc: u32,
    /// Read on first use (28 bytes per 64 KiB of log).
    index: OnceLock<Vec<Block>>,
}

impl Packed {
    /// Opens a packed segment, checking its trailer.
    pub fn open(path: &Path) -> std::io::Result<Packed> {
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let file = Arc::new(File::open(path)?);
        let len = file.metadata()?.len();
        if len < TRAILER_LEN + 8 {
            return Err(damaged(&name, 0, "shorter than its header and trailer"));
        }
        let mut t = [0u8; TRAILER_LEN as usize];
        file.read_exact_at(&mut t, len - TRAILER_LEN)?;
        let crc_at = TRAILER_LEN as usize - 4;
        if &t[..8] != MAGIC || crc32c::crc32c(&t[..crc_at]).to_be_bytes() != t[crc_at..] {
            return Err(damaged(&name, len - TRAILER_LEN, "damaged trailer"));
        }
        let p = Packed {
            start: u64_at(&t, 8),
            raw_len: u64_at(&t, 16),
            blocks: u32_at(&t, 24),
            index_at: u64_at(&t, 28),
            index_crc: u32_at(&t, 36),
            name,
            file,
            index: OnceLock::new(),
            instance: INSTANCES.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
        };
        let end = (u64::from(p.blocks) * ENTRY_LEN as u64)
            .checked_add(TRAILER_LEN)
            .and_then(|n| n.checked_add(p.index_at));
        if end != Some(len) {
            return Err(damaged(
                &p.name,
                len - TRAILER_LEN,
                "its trailer disagrees with its length",
            ));
        }
        Ok(p)
    }

    /// The file, for the segment list (one descriptor per segment).
    pub fn file(&self) -> Arc<File> {
        self.file.clone()
    }

    /// The log position of its first byte.
    pub fn start(&self) -> u64 {
        self.start
    }

    /// Raw (uncompressed) length: the length of the segment it replaces.
    pub fn raw_len(&self) -> u64 {
        self.raw_len
    }

    fn index(&self) -> std::io::Result<&[Block]> {
        if let Some(i) = self.index.get() {
            return Ok(i);
        }
        let mut b = vec![0u8; self.blocks as usize * ENTRY_LEN];
        self.file.read_exact_at(&mut b, self.index_at)?;
        if crc32c::crc32c(&b) != self.index_crc {
            return Err(damaged(
                &self.name,
                self.index_at,
                "its block index is damaged",
            ));
        }
        let mut blocks = Vec::with_capacity(self.blocks as usize);
        let mut raw = 0u64;
        for e in b.chunks_exact(ENTRY_LEN) {
            let block = Block {
                raw_at: u64_at(e, 0),
                stored_at: u64_at(e, 8),
                stored_len: u32_at(e, 16),
                raw_len: u32_at(e, 20),
                crc: u32_at(e, 24),
            };
            let stored_end = block.stored_at.checked_add(u64::from(block.stored_len));
            if block.raw_at != raw
                || stored_end.is_none_or(|e| e > self.index_at)
                || block.raw_len > MAX_BLOCK
            {
                return Err(damaged(
                    &self.name,
                    self.index_at,
                    "its block index is malformed",
                ));
            }
            raw += u64::from(block.raw_len);
            blocks.push(block);
        }
        if raw != self.raw_len {
            return Err(damaged(
                &self.name,
                self.index_at,
                "its blocks do not add up to its length",
            ));
        }
        Ok(self.index.get_or_init(|| blocks))
    }

    /// The raw bytes of block `i`.
    fn block(&self, i: u32) -> std::io::Result<Arc<Vec<u8>>> {
        if let Ok(cache) = CACHE.lock() {
            let hit = cache
                .iter()
                .find(|(s, n, _)| *s == self.instance && *n == i);
            if let Some((_, _, bytes)) = hit {
                return Ok(bytes.clone());
            }
        }
        let b = self.index()?[i as usize];
        let mut stored = vec![0u8; b.stored_len as usize];
        self.file.read_exact_at(&mut stored, b.stored_at)?;
        if crc32c::crc32c(&stored) != b.crc {
            return Err(damaged(
                &self.name,
                b.stored_at,
                format!("block {i} does not match its checksum"),
            ));
        }
        let raw = zstd::bulk::decompress(&stored, b.raw_len as usize)
            .map_err(|e| damaged(&self.name, b.stored_at, format!("block {i}: {e}")))?;
        if raw.len() != b.raw_len as usize {
            return Err(damaged(
                &self.name,
                b.stored_at,
                format!("block {i} has the wrong length"),
            ));
        }
        let raw = Arc::new(raw);
        if let Ok(mut cache) = CACHE.lock() {
            if cache.len() == CACHED_BLOCKS {
                cache.pop_front();
            }
            cache.push_back((self.instance, i, raw.clone()));
        }
        Ok(raw)
    }

    /// Reads raw bytes at a raw offset, as from the original segment.
    pub fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        let end = offset + buf.len() as u64;
        if end > self.raw_len {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                format!("{}: read past its end", self.name),
            ));
        }
        let index = self.index()?;
        let mut i = index
            .partition_point(|b| b.raw_at <= offset)
            .saturating_sub(1);
        let mut done = 0usize;
        while done < buf.len() {
            let b = index[i];
            let raw = self.block(i as u32)?;
            let from = (offset + done as u64 - b.raw_at) as usize;
            let n = (raw.len() - from).min(buf.len() - done);
            buf[done..done + n].copy_from_slice(&raw[from..from + n]);
            done += n;
            i += 1;
        }
        Ok(())
    }

    /// Drops its decompressed blocks from the cache (once a newer copy replaced it).
    pub fn forget(&self) {
        if let Ok(mut cache) = CACHE.lock() {
            cache.retain(|(s, _, _)| *s != self.instance);
        }
    }

    /// Checks every block's checksum (a full read of the file).
    pub fn check(&self) -> std::io::Result<()> {
        for i in 0..self.blocks {
            self.block(i)?;
        }
        Ok(())
    }
}

/// The raw bytes of a segment, by offset: what a packed segment is written from.
pub trait RawSource {
    /// The raw length.
    fn raw_len(&self) -> std::io::Result<u64>;
    /// Reads raw bytes at a raw offset.
    fn read_raw_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()>;
}

impl RawSource for File {
    fn raw_len(&self) -> std::io::Result<u64> {
        Ok(self.metadata()?.len())
    }
    fn read_raw_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        FileExt::read_exact_at(self, buf, offset)
    }
}

impl RawSource for Packed {
    fn raw_len(&self) -> std::io::Result<u64> {
        Ok(self.raw_len)
    }
    fn read_raw_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        Packed::read_exact_at(self, buf, offset)
    }
}

/// A segment's raw bytes with some byte ranges replaced: (raw offset, new bytes), sorted by
/// offset and not overlapping.
pub struct Patched<'a> {
    pub base: &'a dyn RawSource,
    pub patches: &'a [(u64, Vec<u8>)],
}

impl std::fmt::Debug for Patched<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Patched")
            .field("patches", &self.patches.len())
            .finish_non_exhaustive()
    }
}

impl RawSource for Patched<'_> {
    fn raw_len(&self) -> std::io::Result<u64> {
        self.base.raw_len()
    }
    fn read_raw_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        self.base.read_raw_at(buf, offset)?;
        let end = offset + buf.len() as u64;
        // Patches are sorted and never overlap: start at the first one ending past `offset`.
        let first = self
            .patches
            .partition_point(|(at, bytes)| at + bytes.len() as u64 <= offset);
        for (at, bytes) in &self.patches[first..] {
            if *at >= end {
                break;
            }
            let patch_end = at + bytes.len() as u64;
            let from = offset.max(*at);
            let to = end.min(patch_end);
            buf[(from - offset) as usize..(to - offset) as usize]
                .copy_from_slice(&bytes[(from - at) as usize..(to - at) as usize]);
        }
        Ok(())
    }
}

/// Packs the raw segment `raw` (named `name`, starting at log position `start`) into
/// `dir/seg-<start>.zst`, replacing any packed file of that name; returns its path. The
/// original is not touched.
pub fn pack(dir: &Path, start: u64, raw: &dyn RawSource, name: &str) -> std::io::Result<PathBuf> {
    let len = raw.raw_len()?;
    let tmp = dir.join(format!("{}.tmp", packed_name(start)));
    let out = {
        use std::os::unix::fs::OpenOptionsExt;
        std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(crate::FILE_MODE)
            .open(&tmp)?
    };
    let result = write_blocks(
        raw,
        name,
        len,
        start,
        BufWriter::with_capacity(1 << 20, out),
    );
    let file = match result {
        Ok(f) => f,
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            return Err(e);
        }
    };
    file.sync_all()?;
    // Read back before the original can go.
    let packed = Packed::open(&tmp)?;
    if packed.raw_len() != len || packed.start() != start {
        let _ = std::fs::remove_file(&tmp);
        return Err(damaged(name, 0, "the packed copy does not match it"));
    }
    let mut want = vec![0u8; BLOCK_TARGET];
    let mut got = vec![0u8; BLOCK_TARGET];
    let mut at = 0u64;
    while at < len {
        let n = (BLOCK_TARGET as u64).min(len - at) as usize;
        raw.read_raw_at(&mut want[..n], at)?;
        packed.read_exact_at(&mut got[..n], at)?;
        if want[..n] != got[..n] {
            let _ = std::fs::remove_file(&tmp);
            return Err(damaged(name, at, "the packed copy does not match it"));
        }
        at += n as u64;
    }
    let path = dir.join(packed_name(start));
    std::fs::rename(&tmp, &path)?;
    crate::derived::sync_dir(dir)?;
    Ok(path)
}

/// Compresses `raw`'s records into blocks of whole records, then writes the index and trailer.
fn write_blocks(
    raw: &dyn RawSource,
    name: &str,
    len: u64,
    start: u64,
    mut out: BufWriter<File>,
) -> std::io::Result<File> {
    let mut compressor = zstd::bulk::Compressor::new(LEVEL)?;
    out.write_all(MAGIC)?;
    let mut stored_at = MAGIC.len() as u64;
    let mut index = Vec::new();
    let mut block: Vec<u8> = Vec::with_capacity(2 * BLOCK_TARGET);
    let mut block_at = 0u64;
    let mut at = 0u64;
    let mut header = [0u8; record::HEADER_LEN];
    let mut flush = |block: &mut Vec<u8>, block_at: u64, out: &mut BufWriter<File>| {
        if block.is_empty() {
            return Ok::<(), std::io::Error>(());
        }
        let stored = compressor.compress(block)?;
        out.write_all(&stored)?;
        index.extend_from_slice(&block_at.to_be_bytes());
        index.extend_from_slice(&stored_at.to_be_bytes());
        index.extend_from_slice(&(stored.len() as u32).to_be_bytes());
        index.extend_from_slice(&(block.len() as u32).to_be_bytes());
        index.extend_from_slice(&crc32c::crc32c(&stored).to_be_bytes());
        stored_at += stored.len() as u64;
        block.clear();
        Ok(())
    };
    while at < len {
        raw.read_raw_at(&mut header, at)?;
        let h = record::parse_header(&header).map_err(|e| damaged(name, at, e.to_string()))?;
        let rec_len = h.total_len();
        if at + rec_len > len {
            return Err(damaged(
                name,
                at,
                "a record runs past the end of a sealed segment",
            ));
        }
        if !block.is_empty() && block.len() as u64 + rec_len > BLOCK_TARGET as u64 {
            flush(&mut block, block_at, &mut out)?;
            block_at = at;
        }
        let old = block.len();
        block.resize(old + rec_len as usize, 0);
        raw.read_raw_at(&mut block[old..], at)?;
        record::check_record(&h, &block[old..]).map_err(|e| damaged(name, at, e.to_string()))?;
        at += rec_len;
    }
    flush(&mut block, block_at, &mut out)?;
    let blocks = (index.len() / ENTRY_LEN) as u32;
    out.write_all(&index)?;
    let mut t = Vec::with_capacity(TRAILER_LEN as usize);
    t.extend_from_slice(MAGIC);
    t.extend_from_slice(&start.to_be_bytes());
    t.extend_from_slice(&len.to_be_bytes());
    t.extend_from_slice(&blocks.to_be_bytes());
    t.extend_from_slice(&stored_at.to_be_bytes());
    t.extend_from_slice(&crc32c::crc32c(&index).to_be_bytes());
    let crc = crc32c::crc32c(&t);
    t.extend_from_slice(&crc.to_be_bytes());
    out.write_all(&t)?;
    out.into_inner().map_err(|e| e.into_error())
}
