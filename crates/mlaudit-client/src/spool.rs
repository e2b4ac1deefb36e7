//! The on-disk spool: an append-only queue of encoded events that the server has not yet
//! acknowledged, drained in order.
//!
//! Layout of a spool directory:
//! - `spool-<20-digit number>.seg`: segments, read lowest number first. Each holds records
//!   `u32 LE length | u32 LE CRC-32C(payload) | payload`, the payload being one encoded
//!   `mlaudit.v1.Event`. A new tail segment starts once the tail reaches [`SEGMENT_BYTES`].
//! - `cursor`: `u64 LE segment | u64 LE offset | u32 LE CRC-32C of the 16 bytes`, the first
//!   record not yet acknowledged. Segments numbered below it are consumed and deleted. Replaced
//!   atomically (write, fsync, rename, fsync the directory).
//!
//! **Invariants.** Records are delivered in the order: prepended records first (a batch that
//! was in flight when the spool started to fill is older than everything in it), then segment
//! order, then file order. The cursor only moves past records the server acknowledged, so a
//! crash at any point re-sends at most an acknowledged batch — which the server answers as
//! `duplicate`, since the bytes carry the same event ids. A torn record at the end of the last
//! segment (a crash mid-write) is cut off at open; a record that fails its CRC elsewhere ends
//! its segment's readable part and is reported as lost, never sent.

use std::collections::BTreeSet;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// A tail segment this large is closed and a new one started.
pub const SEGMENT_BYTES: u64 = 16 << 20;
/// The largest record the spool writes or reads.
pub const MAX_RECORD_BYTES: usize = 16 << 20;
const HEADER: usize = 8;
const FIRST_SEGMENT: u64 = 1 << 62;

/// A position in the spool: a segment and a byte offset in it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Pos {
    pub(crate) segment: u64,
    pub(crate) offset: u64,
}

/// What [`Spool::open`] found.
#[derive(Debug, Default)]
pub(crate) struct Opened {
    /// Records not yet acknowledged.
    pub(crate) pending: u64,
    /// Bytes cut off the end of the last segment (a torn write).
    pub(crate) torn_bytes: u64,
    /// Bytes of other segments that failed their checksum and cannot be sent.
    pub(crate) corrupt_bytes: u64,
}

/// Records read from the head, and the position just after them.
#[derive(Debug)]
pub(crate) struct Head {
    pub(crate) records: Vec<Vec<u8>>,
    pub(crate) end: Pos,
}

#[derive(Debug)]
struct Tail {
    segment: u64,
    file: BufWriter<File>,
    len: u64,
}

/// The spool of one logger. Not thread-safe by itself: the logger keeps it behind a mutex.
#[derive(Debug)]
pub(crate) struct Spool {
    dir: PathBuf,
    cursor: Pos,
    segments: BTreeSet<u64>,
    tail: Option<Tail>,
    /// Bytes of all segment files.
    disk_bytes: u64,
    max_bytes: u64,
    pending: u64,
    unsynced: bool,
    dir_unsynced: bool,
}

fn segment_name(n: u64) -> String {
    format!("spool-{n:020}.seg")
}

fn parse_segment(name: &str) -> Option<u64> {
    name.strip_prefix("spool-")?
        .strip_suffix(".seg")?
        .parse()
        .ok()
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Reads one record at the reader's position: `Ok(None)` at a clean end, `Err` with
/// `InvalidData` for a torn or corrupt record.
fn read_record(r: &mut impl Read) -> io::Result<Option<Vec<u8>>> {
    let mut header = [0u8; HEADER];
    let mut got = 0;
    while got < HEADER {
        match r.read(&mut header[got..])? {
            0 if got == 0 => return Ok(None),
            0 => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "a torn record header",
                ))
            }
            n => got += n,
        }
    }
    let len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]) as usize;
    let crc = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
    if len == 0 || len > MAX_RECORD_BYTES {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("a record length of {len}"),
        ));
    }
    let mut payload = vec![0u8; len];
    r.read_exact(&mut payload)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "a torn record"))?;
    if crc32c::crc32c(&payload) != crc {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "a record that fails its checksum",
        ));
    }
    Ok(Some(payload))
}

/// Scans a segment from `offset`: the records that read cleanly and the offset where they end.
fn scan(path: &Path, offset: u64) -> io::Result<(u64, u64)> {
    let mut r = io::BufReader::new(File::open(path)?);
    r.seek(SeekFrom::Start(offset))?;
    let (mut count, mut end) = (0u64, offset);
    while let Ok(Some(record)) = read_record(&mut r) {
        count += 1;
        end += (HEADER + record.len()) as u64;
    }
    Ok((count, end))
}

/// Mode of every file the logger writes in its spool directory: private to the user.
pub(crate) const FILE_MODE: u32 = 0o600;
/// Mode of the spool directory.
pub(crate) const DIR_MODE: u32 = 0o700;

/// Creates `dir` if needed and makes it private (0700), and every file in it 0600 (a spool
/// left readable by an older version is tightened).
pub(crate) fn private_dir(dir: &Path) -> io::Result<()> {
    fs::create_dir_all(dir)?;
    fs::set_permissions(dir, fs::Permissions::from_mode(DIR_MODE))?;
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        if entry.file_type()?.is_file() {
            let loose = entry.metadata()?.permissions().mode() & 0o077 != 0;
            if loose {
                fs::set_permissions(entry.path(), fs::Permissions::from_mode(FILE_MODE))?;
            }
        }
    }
    Ok(())
}

/// Creates (truncating) a file readable by this user only, whatever the umask.
pub(crate) fn create_private(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(FILE_MODE)
        .open(path)
}

impl Spool {
    /// Opens (or creates) the spool in `dir`, cutting a torn tail off the last segment.
    pub(crate) fn open(dir: &Path, max_bytes: u64) -> io::Result<(Spool, Opened)> {
        private_dir(dir)?;
        let mut segments = BTreeSet::new();
        for entry in fs::read_dir(dir)? {
            if let Some(n) = entry?.file_name().to_str().and_then(parse_segment) {
                segments.insert(n);
            }
        }
        let cursor = read_cursor(&dir.join("cursor"))?.unwrap_or(Pos {
            segment: segments.first().copied().unwrap_or(FIRST_SEGMENT),
            offset: 0,
        });
        let mut spool = Spool {
            dir: dir.to_owned(),
            cursor,
            segments: BTreeSet::new(),
            tail: None,
            disk_bytes: 0,
            max_bytes,
            pending: 0,
            unsynced: false,
            dir_unsynced: false,
        };
        let mut opened = Opened::default();
        let last = segments.last().copied();
        for n in segments {
            let path = spool.path(n);
            if n < cursor.segment {
                fs::remove_file(&path)?;
                continue;
            }
            let start = if n == cursor.segment {
                cursor.offset
            } else {
                0
            };
            let len = fs::metadata(&path)?.len();
            let (count, end) = scan(&path, start.min(len))?;
            if end < len {
                if Some(n) == last {
                    opened.torn_bytes += len - end;
                } else {
                    opened.corrupt_bytes += len - end;
                }
                OpenOptions::new().write(true).open(&path)?.set_len(end)?;
            }
            opened.pending += count;
            spool.disk_bytes += end;
            spool.segments.insert(n);
        }
        spool.pending = opened.pending;
        Ok((spool, opened))
    }

    fn path(&self, segment: u64) -> PathBuf {
        self.dir.join(segment_name(segment))
    }

    /// Records not yet acknowledged.
    pub(crate) fn pending(&self) -> u64 {
        self.pending
    }

    fn tail(&mut self) -> io::Result<&mut Tail> {
        let full = self.tail.as_ref().is_some_and(|t| t.len >= SEGMENT_BYTES);
        if full {
            self.close_tail()?;
        }
        if self.tail.is_none() {
            // Always a new segment: one found at open may hold a torn or consumed end.
            let segment = self
                .segments
                .last()
                .copied()
                .unwrap_or(0)
                .max(self.cursor.segment)
                + 1;
            let file = OpenOptions::new()
                .create(true)
                .append(true)
                .mode(FILE_MODE)
                .open(self.path(segment))?;
            let len = file.metadata()?.len();
            if self.segments.insert(segment) {
                self.dir_unsynced = true;
            }
            self.tail = Some(Tail {
                segment,
                file: BufWriter::with_capacity(256 << 10, file),
                len,
            });
        }
        self.tail
            .as_mut()
            .ok_or_else(|| io::Error::other("no tail segment"))
    }

    fn close_tail(&mut self) -> io::Result<()> {
        if let Some(mut t) = self.tail.take() {
            t.file.flush()?;
            t.file.get_ref().sync_data()?;
        }
        Ok(())
    }

    /// Appends records at the tail (buffered; durable after [`Spool::sync`]). Returns how many
    /// were stored; the rest would pass the disk limit and are not written.
    pub(crate) fn append<'a>(
        &mut self,
        records: impl IntoIterator<Item = &'a [u8]>,
    ) -> io::Result<u64> {
        let mut stored = 0;
        for record in records {
            let size = (HEADER + record.len()) as u64;
            if record.is_empty()
                || record.len() > MAX_RECORD_BYTES
                || self.disk_bytes + size > self.max_bytes
            {
                continue;
            }
            let tail = self.tail()?;
            tail.file.write_all(&(record.len() as u32).to_le_bytes())?;
            tail.file.write_all(&crc32c::crc32c(record).to_le_bytes())?;
            tail.file.write_all(record)?;
            tail.len += size;
            self.disk_bytes += size;
            self.pending += 1;
            stored += 1;
            self.unsynced = true;
        }
        Ok(stored)
    }

    /// Puts records ahead of everything in the spool, durably (they are older than anything
    /// already in it). Ignores the disk limit: they are one batch at most.
    pub(crate) fn prepend(&mut self, records: &[Vec<u8>]) -> io::Result<()> {
        if records.is_empty() {
            return Ok(());
        }
        self.sync()?;
        let head = self
            .segments
            .first()
            .copied()
            .unwrap_or(self.cursor.segment + 1)
            .min(self.cursor.segment);
        let segment = head - 1;
        let path = self.path(segment);
        let mut out = BufWriter::new(create_private(&path)?);
        let mut size = 0u64;
        let mut write = |out: &mut BufWriter<File>, r: &[u8]| -> io::Result<()> {
            out.write_all(&(r.len() as u32).to_le_bytes())?;
            out.write_all(&crc32c::crc32c(r).to_le_bytes())?;
            size += (HEADER + r.len()) as u64;
            out.write_all(r)
        };
        let mut written = 0u64;
        for r in records
            .iter()
            .filter(|r| !r.is_empty() && r.len() <= MAX_RECORD_BYTES)
        {
            write(&mut out, r)?;
            written += 1;
        }
        // A partly consumed head segment: its unread rest moves into the new segment, so that
        // the cursor can point at the new segment's start.
        let partial = (self.cursor.offset > 0 && self.segments.contains(&self.cursor.segment))
            .then_some(self.cursor.segment);
        if let Some(old) = partial {
            let mut r = io::BufReader::new(File::open(self.path(old))?);
            r.seek(SeekFrom::Start(self.cursor.offset))?;
            while let Ok(Some(record)) = read_record(&mut r) {
                write(&mut out, &record)?;
            }
        }
        out.flush()?;
        out.get_ref().sync_data()?;
        drop(out);
        sync_dir(&self.dir)?;
        self.segments.insert(segment);
        self.disk_bytes += size;
        self.pending += written;
        self.write_cursor(Pos { segment, offset: 0 })?;
        if let Some(old) = partial {
            if self.tail.as_ref().is_some_and(|t| t.segment == old) {
                self.tail = None;
            }
            self.disk_bytes = self
                .disk_bytes
                .saturating_sub(fs::metadata(self.path(old))?.len());
            fs::remove_file(self.path(old))?;
            self.segments.remove(&old);
        }
        Ok(())
    }

    /// Makes every appended record durable (one `fdatasync`, and one of the directory if a
    /// segment was created).
    pub(crate) fn sync(&mut self) -> io::Result<()> {
        if self.unsynced {
            if let Some(t) = &mut self.tail {
                t.file.flush()?;
                t.file.get_ref().sync_data()?;
            }
            self.unsynced = false;
        }
        if self.dir_unsynced {
            sync_dir(&self.dir)?;
            self.dir_unsynced = false;
        }
        Ok(())
    }

    /// Up to `max` records from the head (fewer if they would pass `max_bytes` of payload),
    /// without consuming them.
    pub(crate) fn read_head(&mut self, max: usize, max_bytes: usize) -> io::Result<Head> {
        if let Some(t) = &mut self.tail {
            t.file.flush()?;
        }
        let mut records = Vec::new();
        let mut bytes = 0usize;
        let mut end = self.cursor;
        for &segment in self.segments.range(self.cursor.segment..) {
            let offset = if segment == self.cursor.segment {
                self.cursor.offset
            } else {
                0
            };
            let mut r = io::BufReader::new(File::open(self.path(segment))?);
            r.seek(SeekFrom::Start(offset))?;
            end = Pos { segment, offset };
            while records.len() < max {
                let Ok(Some(record)) = read_record(&mut r) else {
                    break;
                };
                if !records.is_empty() && bytes + record.len() > max_bytes {
                    return Ok(Head { records, end });
                }
                bytes += record.len();
                end.offset += (HEADER + record.len()) as u64;
                records.push(record);
            }
            if records.len() >= max {
                break;
            }
        }
        Ok(Head { records, end })
    }

    /// Consumes `count` records up to `end` (the server acknowledged them): moves the cursor past
    /// them, durably, and deletes the segments it left behind. With nothing left, the tail is
    /// closed and removed too, so that later records start a fresh segment.
    pub(crate) fn consume(&mut self, end: Pos, count: u64) -> io::Result<()> {
        // Nothing changes in memory until the cursor is durable: a failed write leaves the
        // spool as it was, and the batch is simply sent again (answered as duplicates).
        let pending = self.pending.saturating_sub(count);
        let cursor = if pending == 0 {
            // Everything acknowledged: every segment goes, and later records start after them.
            let last = self.segments.last().copied().unwrap_or(end.segment);
            Pos {
                segment: last.max(end.segment),
                offset: u64::MAX,
            }
        } else {
            end
        };
        self.write_cursor(cursor)?;
        self.pending = pending;
        let remove: Vec<u64> = if pending == 0 {
            self.tail = None;
            self.segments.iter().copied().collect()
        } else {
            self.segments.range(..end.segment).copied().collect()
        };
        for n in remove {
            let path = self.path(n);
            self.disk_bytes = self
                .disk_bytes
                .saturating_sub(fs::metadata(&path).map(|m| m.len()).unwrap_or(0));
            fs::remove_file(&path)?;
            self.segments.remove(&n);
        }
        if pending == 0 {
            self.disk_bytes = 0;
        }
        Ok(())
    }

    fn write_cursor(&mut self, pos: Pos) -> io::Result<()> {
        let mut bytes = [0u8; 20];
        bytes[..8].copy_from_slice(&pos.segment.to_le_bytes());
        bytes[8..16].copy_from_slice(&pos.offset.to_le_bytes());
        let crc = crc32c::crc32c(&bytes[..16]);
        bytes[16..].copy_from_slice(&crc.to_le_bytes());
        let tmp = self.dir.join("cursor.tmp");
        let mut f = create_private(&tmp)?;
        f.write_all(&bytes)?;
        f.sync_data()?;
        fs::rename(&tmp, self.dir.join("cursor"))?;
        sync_dir(&self.dir)?;
        self.cursor = pos;
        Ok(())
    }
}

fn read_cursor(path: &Path) -> io::Result<Option<Pos>> {
    let bytes = match fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let valid = bytes.len() == 20 && crc32c::crc32c(&bytes[..16]).to_le_bytes() == bytes[16..20];
    if !valid {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "{} is damaged; the spool cannot tell which records were delivered",
                path.display()
            ),
        ));
    }
    let word = |i: usize| {
        let mut w = [0u8; 8];
        w.copy_from_slice(&bytes[i..i + 8]);
        u64::from_le_bytes(w)
    };
    Ok(Some(Pos {
        segment: word(0),
        offset: word(8),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Dir(PathBuf);
    impl Dir {
        fn new(name: &str) -> Dir {
            let p = std::env::temp_dir()
                .join(format!("mlaudit-spool-test-{}-{name}", std::process::id()));
            let _ = fs::remove_dir_all(&p);
            Dir(p)
        }
    }
    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    fn rec(i: u32) -> Vec<u8> {
        format!("event-{i:05}").into_bytes()
    }

    fn drain(spool: &mut Spool, per_read: usize) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        loop {
            let head = spool.read_head(per_read, usize::MAX).unwrap();
            if head.records.is_empty() {
                return out;
            }
            spool.consume(head.end, head.records.len() as u64).unwrap();
            out.extend(head.records);
        }
    }

    #[test]
    fn appended_records_come_back_in_order_across_reopen_and_partial_consumption() {
        let d = Dir::new("order");
        let (mut s, opened) = Spool::open(&d.0, u64::MAX).unwrap();
        assert_eq!(opened.pending, 0);
        let all: Vec<Vec<u8>> = (0..100).map(rec).collect();
        assert_eq!(s.append(all.iter().map(Vec::as_slice)).unwrap(), 100);
        s.sync().unwrap();
        let head = s.read_head(30, usize::MAX).unwrap();
        assert_eq!(head.records, all[..30]);
        s.consume(head.end, 30).unwrap();
        drop(s);
        let (mut s, opened) = Spool::open(&d.0, u64::MAX).unwrap();
        assert_eq!(opened.pending, 70);
        assert_eq!(drain(&mut s, 7), all[30..]);
        assert_eq!(s.pending(), 0);
        // Everything consumed: no segment is left, and new records start a fresh one.
        assert_eq!(
            fs::read_dir(&d.0)
                .unwrap()
                .filter(|e| e
                    .as_ref()
                    .unwrap()
                    .file_name()
                    .to_string_lossy()
                    .ends_with(".seg"))
                .count(),
            0
        );
        s.append([b"later".as_slice()]).unwrap();
        s.sync().unwrap();
        drop(s);
        let (mut s, opened) = Spool::open(&d.0, u64::MAX).unwrap();
        assert_eq!(opened.pending, 1);
        assert_eq!(drain(&mut s, 10), vec![b"later".to_vec()]);
    }

    #[test]
    fn prepended_records_come_first_even_with_a_partly_consumed_head() {
        let d = Dir::new("prepend");
        let (mut s, _) = Spool::open(&d.0, u64::MAX).unwrap();
        s.append(
            (10..20)
                .map(rec)
                .collect::<Vec<_>>()
                .iter()
                .map(Vec::as_slice),
        )
        .unwrap();
        let head = s.read_head(3, usize::MAX).unwrap();
        s.consume(head.end, 3).unwrap();
        s.prepend(&(0..5).map(rec).collect::<Vec<_>>()).unwrap();
        s.append([rec(20).as_slice()]).unwrap();
        s.prepend(&[rec(99)]).unwrap();
        s.sync().unwrap();
        let mut expected = vec![rec(99)];
        expected.extend((0..5).map(rec));
        expected.extend((13..21).map(rec));
        drop(s);
        let (mut s, opened) = Spool::open(&d.0, u64::MAX).unwrap();
        assert_eq!(opened.pending, expected.len() as u64);
        assert_eq!(drain(&mut s, 4), expected);
    }

    #[test]
    fn a_torn_tail_at_every_byte_is_cut_and_earlier_records_survive() {
        let d = Dir::new("torn");
        let (mut s, _) = Spool::open(&d.0, u64::MAX).unwrap();
        s.append(
            (0..3)
                .map(rec)
                .collect::<Vec<_>>()
                .iter()
                .map(Vec::as_slice),
        )
        .unwrap();
        s.sync().unwrap();
        drop(s);
        let seg = fs::read_dir(&d.0)
            .unwrap()
            .map(|e| e.unwrap().path())
            .find(|p| p.extension().is_some_and(|x| x == "seg"))
            .unwrap();
        let full = fs::read(&seg).unwrap();
        let record = HEADER + rec(0).len();
        for cut in 0..full.len() {
            fs::write(&seg, &full[..cut]).unwrap();
            let _ = fs::remove_file(d.0.join("cursor"));
            let (mut s, opened) = Spool::open(&d.0, u64::MAX).unwrap();
            let whole = cut / record;
            assert_eq!(opened.pending, whole as u64, "cut at {cut}");
            assert_eq!(
                opened.torn_bytes,
                (cut - whole * record) as u64,
                "cut at {cut}"
            );
            assert_eq!(
                drain(&mut s, 10),
                (0..whole as u32).map(rec).collect::<Vec<_>>(),
                "cut at {cut}"
            );
            drop(s);
            for e in fs::read_dir(&d.0).unwrap() {
                let p = e.unwrap().path();
                if p.extension().is_some_and(|x| x == "seg") {
                    fs::remove_file(p).unwrap();
                }
            }
            let _ = fs::remove_file(d.0.join("cursor"));
        }
    }

    #[test]
    fn a_flipped_byte_is_never_sent_and_is_reported() {
        let d = Dir::new("flip");
        let (mut s, _) = Spool::open(&d.0, u64::MAX).unwrap();
        s.append(
            (0..3)
                .map(rec)
                .collect::<Vec<_>>()
                .iter()
                .map(Vec::as_slice),
        )
        .unwrap();
        s.sync().unwrap();
        drop(s);
        let seg = fs::read_dir(&d.0)
            .unwrap()
            .map(|e| e.unwrap().path())
            .find(|p| p.extension().is_some_and(|x| x == "seg"))
            .unwrap();
        let mut bytes = fs::read(&seg).unwrap();
        let record = HEADER + rec(0).len();
        bytes[record + HEADER + 2] ^= 0x20;
        fs::write(&seg, &bytes).unwrap();
        let (mut s, opened) = Spool::open(&d.0, u64::MAX).unwrap();
        assert_eq!(opened.pending, 1);
        assert_eq!(opened.torn_bytes, 2 * record as u64);
        assert_eq!(drain(&mut s, 10), vec![rec(0)]);
    }

    #[test]
    fn the_disk_limit_stores_what_fits_and_refuses_the_rest() {
        let d = Dir::new("limit");
        let record = (HEADER + rec(0).len()) as u64;
        let (mut s, _) = Spool::open(&d.0, record * 4).unwrap();
        assert_eq!(
            s.append(
                (0..10)
                    .map(rec)
                    .collect::<Vec<_>>()
                    .iter()
                    .map(Vec::as_slice)
            )
            .unwrap(),
            4
        );
        assert_eq!(s.pending(), 4);
        assert_eq!(drain(&mut s, 3), (0..4).map(rec).collect::<Vec<_>>());
        assert_eq!(
            s.append([rec(7).as_slice()]).unwrap(),
            1,
            "room again once drained"
        );
    }

    #[test]
    fn a_damaged_cursor_is_an_error_not_a_guess() {
        let d = Dir::new("cursor");
        let (mut s, _) = Spool::open(&d.0, u64::MAX).unwrap();
        s.append([rec(1).as_slice(), rec(2).as_slice()]).unwrap();
        let head = s.read_head(1, usize::MAX).unwrap();
        s.consume(head.end, 1).unwrap();
        drop(s);
        let mut c = fs::read(d.0.join("cursor")).unwrap();
        c[3] ^= 1;
        fs::write(d.0.join("cursor"), c).unwrap();
        let e = Spool::open(&d.0, u64::MAX).unwrap_err();
        assert!(e.to_string().contains("damaged"), "{e}");
    }

    /// Random appends, prepends, partial reads, consumption, syncs and reopenings against a
    /// `VecDeque` model: the spool always yields exactly the model's records, in its order.
    #[test]
    fn matches_a_queue_model_under_random_operations() {
        let mut seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64
            | 1;
        println!("seed {seed}");
        let mut next = move |n: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % n
        };
        let d = Dir::new("model");
        let (mut s, _) = Spool::open(&d.0, u64::MAX).unwrap();
        let mut model = std::collections::VecDeque::new();
        let mut label = 0u32;
        for _ in 0..400 {
            match next(6) {
                0 | 1 => {
                    let n = next(20);
                    let recs: Vec<Vec<u8>> = (0..n)
                        .map(|_| {
                            label += 1;
                            rec(label)
                        })
                        .collect();
                    s.append(recs.iter().map(Vec::as_slice)).unwrap();
                    model.extend(recs);
                }
                2 => {
                    let n = next(5) + 1;
                    let recs: Vec<Vec<u8>> = (0..n)
                        .map(|_| {
                            label += 1;
                            rec(label)
                        })
                        .collect();
                    s.prepend(&recs).unwrap();
                    for r in recs.into_iter().rev() {
                        model.push_front(r);
                    }
                }
                3 => {
                    let head = s.read_head(next(30) as usize + 1, usize::MAX).unwrap();
                    let n = head.records.len();
                    assert_eq!(
                        head.records,
                        model.iter().take(n).cloned().collect::<Vec<_>>()
                    );
                    if n > 0 {
                        s.consume(head.end, n as u64).unwrap();
                        model.drain(..n);
                    }
                }
                4 => {
                    s.sync().unwrap();
                    drop(s);
                    let (reopened, opened) = Spool::open(&d.0, u64::MAX).unwrap();
                    assert_eq!(opened.pending, model.len() as u64);
                    s = reopened;
                }
                _ => s.sync().unwrap(),
            }
            assert_eq!(s.pending(), model.len() as u64);
        }
        assert_eq!(drain(&mut s, 13), model.into_iter().collect::<Vec<_>>());
    }
}
