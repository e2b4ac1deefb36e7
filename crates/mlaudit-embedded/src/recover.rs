//! Opening a store: lock the directory, load the derived state up to its watermark, replay the
//! segments beyond it, and classify whatever ends the log.
//!
//! * A torn tail — the last segment ends inside a record whose header is intact or incomplete,
//!   or in a run of zero bytes — was never acknowledged (acknowledgement follows the fsync of a
//!   whole group): it is truncated and reported in [`OpenReport::truncated`].
//! * Anything else that does not check out (a checksum, a header, a seq out of order, a
//!   checkpoint that does not sign the recomputed root) is corruption: open fails with
//!   [`OpenError::Corrupt`] naming the file and offset, and nothing is changed.

use crate::derived::{self, Derived, Meta, Pending};
use crate::guard::{self, Guard, Recorded};
use crate::index::Index;
use crate::writer::{Recovered, State};
use crate::{record, segment_name, Segment, Shared};
use mlaudit_core::entry::{self, SubjectField};
use mlaudit_core::merkle::{leaf_hash, CompactRange, NodeSource};
use mlaudit_core::note::{unverified_checkpoint, NoteSigner};
use std::fs::{File, OpenOptions};
use std::os::unix::fs::{FileExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, RwLock};

/// Why a store could not be opened.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OpenError {
    /// Damage to something complete: the store refuses to open.
    #[error("corruption in {file} at offset {offset}: {problem}")]
    Corrupt {
        file: String,
        offset: u64,
        problem: String,
    },
    /// The log holds fewer events than a checkpoint it made durable, or another tree at that
    /// size (`latest-checkpoint`): acknowledged events are missing or were rewritten.
    #[error("{0}")]
    Rollback(String),
    /// Another process has the store open.
    #[error("{0} is in use by another mlaudit process")]
    Locked(PathBuf),
    /// I/O failed.
    #[error("{context}: {source}")]
    Io {
        context: String,
        source: std::io::Error,
    },
}

/// What opening found and did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OpenReport {
    pub events: u64,
    /// `(file, offset, bytes)` of a torn tail that was truncated.
    pub truncated: Option<(String, u64, u64)>,
    /// Events replayed from the segments beyond the derived watermark.
    pub replayed: u64,
    /// Set when the derived files were unusable and were rebuilt from the segments.
    pub rebuilt: Option<String>,
    /// Set when a checkpoint was signed at open for events after the last stored checkpoint.
    pub signed_at_open: Option<u64>,
    /// What an operator should hear about: a missing or damaged `derived.meta` or
    /// `latest-checkpoint` in a log that holds events (nothing then guards against a log
    /// shorter than it was).
    pub warnings: Vec<String>,
}

fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> OpenError {
    let context = context.into();
    move |source| OpenError::Io { context, source }
}

struct LevelFiles<'a>(&'a [Arc<File>]);

impl NodeSource for LevelFiles<'_> {
    type Error = OpenError;
    fn node(&self, level: u32, index: u64) -> Result<mlaudit_core::Hash, OpenError> {
        let mut buf = [0u8; 32];
        let f = self
            .0
            .get(level as usize)
            .ok_or_else(|| OpenError::Corrupt {
                file: format!("tree-{level:02}.hash"),
                offset: 0,
                problem: "missing".into(),
            })?;
        f.read_exact_at(&mut buf, index * 32)
            .map_err(io(format!("reading tree-{level:02}.hash")))?;
        Ok(mlaudit_core::Hash(buf))
    }
}

/// Makes the store's directory private to the service user (0700) and every file in it 0600,
/// whatever the umask or an older version left; what cannot be changed is reported.
fn make_private(dir: &Path, report: &mut OpenReport) {
    let mut tighten = |path: &Path, mode: u32| {
        let loose = std::fs::metadata(path).map(|m| m.permissions().mode() & 0o7777 != mode);
        if loose.unwrap_or(false) {
            if let Err(e) = std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)) {
                report.warnings.push(format!(
                    "cannot make {} private (mode {mode:o}): {e}",
                    path.display()
                ));
            }
        }
    };
    tighten(dir, crate::DIR_MODE);
    if let Ok(entries) = std::fs::read_dir(dir) {
        for ent in entries.flatten() {
            if ent.file_type().is_ok_and(|t| t.is_file()) {
                tighten(&ent.path(), crate::FILE_MODE);
            }
        }
    }
}

fn list_segments(dir: &Path) -> Result<Vec<Segment>, OpenError> {
    let mut raw = std::collections::BTreeMap::new();
    let mut packed = std::collections::BTreeMap::new();
    for ent in std::fs::read_dir(dir).map_err(io(format!("listing {}", dir.display())))? {
        let ent = ent.map_err(io("listing segments"))?;
        let name = ent.file_name().to_string_lossy().into_owned();
        if name.starts_with("seg-") && name.ends_with(".zst.tmp") {
            // A packing cut short: the raw segment is still there.
            std::fs::remove_file(ent.path()).map_err(io(format!("removing {name}")))?;
            continue;
        }
        let Some((start, ext)) = name
            .strip_prefix("seg-")
            .and_then(|n| n.split_once('.'))
            .and_then(|(n, ext)| Some((n.parse::<u64>().ok()?, ext)))
        else {
            continue;
        };
        match ext {
            "log" => raw.insert(start, (name, ent.path())),
            "zst" => packed.insert(start, (name, ent.path())),
            _ => None,
        };
    }
    let mut segs = Vec::new();
    for (start, (name, path)) in packed {
        match crate::packed::Packed::open(&path) {
            Ok(p) if p.start() == start && (!raw.contains_key(&start) || p.check().is_ok()) => {
                if let Some((raw_name, raw_path)) = raw.remove(&start) {
                    // Packed, checked against it and renamed into place before a crash: the
                    // raw copy is no longer needed.
                    std::fs::remove_file(&raw_path).map_err(io(format!("removing {raw_name}")))?;
                }
                segs.push(Segment {
                    start,
                    file: p.file(),
                    name,
                    packed: Some(Arc::new(p)),
                });
            }
            Ok(_) | Err(_) if raw.contains_key(&start) => {
                std::fs::remove_file(&path).map_err(io(format!("removing {name}")))?;
            }
            Ok(_) => {
                return Err(OpenError::Corrupt {
                    file: name,
                    offset: 0,
                    problem: "its trailer names another start".into(),
                })
            }
            Err(e) => {
                return Err(OpenError::Corrupt {
                    file: name,
                    offset: 0,
                    problem: e.to_string(),
                })
            }
        }
    }
    for (start, (name, path)) in raw {
        let file = OpenOptions::new()
            .read(true)
            .append(true)
            .open(&path)
            .map_err(io(format!("opening {name}")))?;
        segs.push(Segment {
            start,
            file: Arc::new(file),
            name,
            packed: None,
        });
    }
    segs.sort_by_key(|s| s.start);
    Ok(segs)
}

/// Replay state while scanning segments.
struct Replay {
    index: Index,
    range: CompactRange,
    pending: Pending,
    derived: Derived,
    signer: Option<NoteSigner>,
    replayed: u64,
    run_events: u64,
}

impl Replay {
    fn flush(&mut self) -> Result<(), OpenError> {
        self.derived.write(&self.pending).map_err(|e| match e {
            derived::DerivedWriteError::Undone(e) | derived::DerivedWriteError::Left(e) => {
                io("writing derived files")(e)
            }
        })?;
        self.pending = Pending::default();
        Ok(())
    }

    fn apply(&mut self, h: &record::Header, a: &[u8], pos: u64) -> Result<(), String> {
        let seq = self.index.len();
        if record::is_event(h.kind) {
            let e = entry::decode_view(a).map_err(|e| format!("entry: {e}"))?;
            if e.seq != seq {
                return Err(format!(
                    "entry has seq {} where seq {seq} was expected",
                    e.seq
                ));
            }
            let pending = &mut self.pending;
            let leaf = leaf_hash(a);
            self.range
                .push(leaf, |level, _, hash| pending.node(level, &hash.0));
            self.index.push_leaf(seq, &leaf);
            let subjects = SubjectField::ALL
                .into_iter()
                .filter_map(|f| e.subject(f).map(|v| (f, v)));
            let rec = self.index.record_for(
                e.id,
                e.event_time_ns,
                e.kind,
                e.actor_id,
                subjects,
                &mut |t, v| pending.term(t, v),
            );
            pending.event(pos, &rec);
            self.index.push(&rec, true);
            self.replayed += 1;
        } else {
            let note = std::str::from_utf8(a).map_err(|_| "checkpoint is not UTF-8".to_owned())?;
            let cp = unverified_checkpoint(note).map_err(|e| format!("checkpoint: {e}"))?;
            if cp.size != seq || cp.root != self.range.root() {
                return Err(format!(
                    "checkpoint for size {} does not sign the log's root at size {seq}",
                    cp.size
                ));
            }
            if let Some(signer) = &self.signer {
                signer
                    .verifier()
                    .open(note)
                    .map_err(|e| format!("checkpoint signature: {e}"))?;
            }
            self.pending.checkpoint(cp.size, pos);
            self.index.push_checkpoint(cp.size, pos);
        }
        if self.pending.offsets.len() > 1 << 20 {
            self.flush().map_err(|e| e.to_string())?;
        }
        if self.index.tail_len() >= self.run_events {
            // A run may end beyond the watermark only until the next one is recorded: if
            // opening is cut short, the next open removes it (`runs::open_chain`).
            self.index.flush_tail().map_err(|e| e.to_string())?;
        }
        Ok(())
    }
}

/// Bytes of a segment replayed at a time: opening never holds a whole segment in memory.
const REPLAY_CHUNK: u64 = 8 << 20;

/// Whether every byte of `seg` from `from` to its end is zero, read a chunk at a time.
fn zero_from(seg: &Segment, from: u64, len: u64) -> Result<bool, OpenError> {
    let mut at = from;
    let mut buf = Vec::new();
    while at < len {
        let n = REPLAY_CHUNK.min(len - at);
        buf.resize(n as usize, 0);
        seg.read_exact_at(&mut buf, at)
            .map_err(io(format!("reading {}", seg.name)))?;
        if buf.iter().any(|b| *b != 0) {
            return Ok(false);
        }
        at += n;
    }
    Ok(true)
}

/// A window on a segment's bytes, `[start, start + buf.len())`, moved forward as records are
/// replayed and grown to hold a whole record.
struct Window<'a> {
    seg: &'a Segment,
    len: u64,
    start: u64,
    buf: Vec<u8>,
}

impl Window<'_> {
    /// Makes the window hold `need` bytes from `at` (or everything to the end of the file).
    fn hold(&mut self, at: u64, need: u64) -> Result<(), OpenError> {
        let end = (at + need.max(REPLAY_CHUNK)).min(self.len);
        if at >= self.start && at + need.min(self.len - at) <= self.start + self.buf.len() as u64 {
            return Ok(());
        }
        let keep_from = (at - self.start) as usize;
        self.buf.drain(..keep_from.min(self.buf.len()));
        self.start = at;
        let old = self.buf.len();
        let want = (end - at) as usize;
        if want > old {
            self.buf.resize(want, 0);
            self.seg
                .read_exact_at(&mut self.buf[old..], at + old as u64)
                .map_err(io(format!("reading {}", self.seg.name)))?;
        }
        Ok(())
    }

    fn at(&self, at: u64) -> &[u8] {
        &self.buf[(at - self.start) as usize..]
    }
}

fn replay_segment(
    r: &mut Replay,
    seg: &Segment,
    from_off: u64,
    last: bool,
) -> Result<Option<(u64, u64)>, OpenError> {
    let len = seg.len().map_err(io(seg.name.clone()))?;
    let mut w = Window {
        seg,
        len,
        start: from_off,
        buf: Vec::new(),
    };
    let mut offset = from_off;
    while offset < len {
        let corrupt = |problem: String| OpenError::Corrupt {
            file: seg.name.clone(),
            offset,
            problem,
        };
        w.hold(offset, record::HEADER_LEN as u64)?;
        let rest = len - offset;
        let parsed = w
            .at(offset)
            .get(..record::HEADER_LEN)
            .and_then(|h| <&[u8; record::HEADER_LEN]>::try_from(h).ok())
            .map(record::parse_header);
        let torn = Ok(Some((offset, rest)));
        let h = match parsed {
            Some(Ok(h)) if h.total_len() <= rest => h,
            // Torn: an incomplete header or record at the end of the last segment, or zeros
            // through its end.
            None if last => return torn,
            Some(Ok(_)) if last => return torn,
            _ if last && zero_from(seg, offset, len)? => return torn,
            Some(Err(e)) => return Err(corrupt(e.to_string())),
            _ => {
                return Err(corrupt(
                    "record runs past the end of a closed segment".into(),
                ))
            }
        };
        let total = h.total_len();
        w.hold(offset, total)?;
        let rec = &w.at(offset)[..total as usize];
        let (a, b) = match record::check_record(&h, rec) {
            Ok(parts) => parts,
            // The header reached the disk but the end of the record did not (the size was
            // extended first): zeros from inside the record (at least its last 8 bytes,
            // checksum included) through the end of the file.
            Err(_) if last && total >= 8 && zero_from(seg, offset + total - 8, len)? => {
                return torn
            }
            Err(e) => return Err(corrupt(e.to_string())),
        };
        if h.kind == record::REMOVED && record::remover(b).is_none() {
            return Err(corrupt(
                "a removed payload's record holds more than its remover's seq".into(),
            ));
        }
        if h.kind == record::IN_ARCHIVE && b.iter().any(|&z| z != 0) {
            return Err(corrupt(
                "an archived payload's record holds more than zeros".into(),
            ));
        }
        r.apply(&h, a, seg.start + offset).map_err(corrupt)?;
        offset += total;
    }
    Ok(None)
}

/// Creates (or takes over, if empty) the raw segment starting at `start`, durably.
fn create_segment(dir: &Path, start: u64) -> Result<Segment, OpenError> {
    let name = segment_name(start);
    let file = OpenOptions::new()
        .read(true)
        .append(true)
        .create(true)
        .mode(crate::FILE_MODE)
        .open(dir.join(&name))
        .map_err(io(format!("creating {name}")))?;
    derived::sync_dir(dir).map_err(io("syncing directory"))?;
    Ok(Segment {
        start,
        file: Arc::new(file),
        name,
        packed: None,
    })
}

pub(crate) fn open(
    dir: &Path,
    signer: Option<NoteSigner>,
    options: crate::Options,
) -> Result<(Shared, State, OpenReport), OpenError> {
    std::fs::create_dir_all(dir).map_err(io(format!("creating {}", dir.display())))?;
    let mut report = OpenReport::default();
    make_private(dir, &mut report);
    let lock = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(crate::FILE_MODE)
        .open(dir.join("LOCK"))
        .map_err(io("opening LOCK"))?;
    if lock.try_lock().is_err() {
        return Err(OpenError::Locked(dir.to_owned()));
    }
    crate::removal::replay(dir)?;
    let mut segments = list_segments(dir)?;
    if segments.is_empty() {
        segments.push(create_segment(dir, 0)?);
    }
    if let Some(last) = segments.last().filter(|s| s.packed.is_some()) {
        // Appends go to a raw segment: start one where the packed one ends.
        let start = last.start + last.len().map_err(io(last.name.clone()))?;
        segments.push(create_segment(dir, start)?);
    }
    for pair in segments.windows(2) {
        let len = pair[0].len().map_err(io(pair[0].name.clone()))?;
        if pair[0].start + len != pair[1].start {
            return Err(OpenError::Corrupt {
                file: pair[1].name.clone(),
                offset: 0,
                problem: format!("segment does not start where {} ends", pair[0].name),
            });
        }
    }
    let last_seg = &segments[segments.len() - 1];
    let actual_end = last_seg.start
        + last_seg
            .file
            .metadata()
            .map_err(io(last_seg.name.clone()))?
            .len();
    if let Some(meta) = Derived::read_meta(dir).filter(|m| m.log_end > actual_end) {
        return Err(OpenError::Corrupt {
            file: last_seg.name.clone(),
            offset: actual_end - last_seg.start,
            problem: format!(
                "the log ends at position {actual_end}, but {} events up to position {} were recorded as durable (derived.meta): acknowledged events are missing",
                meta.size, meta.log_end
            ),
        });
    }
    let mut derived = Derived::open(dir).map_err(io("opening derived files"))?;
    let files = derived
        .read_handles()
        .map_err(io("opening derived files"))?;
    let budget = crate::runs::Budget::new(options.index_cache);
    let new_index = || Index::new(dir, files.clone(), budget.clone());
    let mut index = new_index();
    let meta = match Derived::read_meta(dir) {
        Some(m) if m.log_end >= segments[0].start => {
            let chain = crate::runs::open_chain(dir, m.size, &budget, &mut report.warnings)
                .map_err(io("opening the index runs"))?;
            index.set_runs(chain);
            match derived.load(&m, &mut index, options.run_events) {
                Ok(()) => m,
                Err(why) => {
                    report.rebuilt = Some(why);
                    Meta::default()
                }
            }
        }
        Some(_) => {
            report.rebuilt = Some("derived.meta points before the first segment".into());
            Meta::default()
        }
        None => {
            let why = match dir.join("derived.meta").exists() {
                true => "derived.meta is damaged",
                false => "derived.meta is missing",
            };
            if segments.iter().any(|seg| seg.len().is_ok_and(|n| n > 0)) {
                report.warnings.push(format!(
                    "{why}: the indexes were rebuilt from the log, and its length could not be checked against the last watermark"
                ));
                report.rebuilt = Some(why.into());
            }
            Meta::default()
        }
    };
    if meta.size == 0 {
        index = new_index();
        derived.reset().map_err(io("resetting derived files"))?;
        crate::runs::remove_all(dir).map_err(io("removing the index runs"))?;
    }
    let log_start = if meta.size == 0 {
        segments[0].start
    } else {
        meta.log_end
    };
    let range = CompactRange::from_source(&LevelFiles(&derived.levels), meta.size)?;
    let mut r = Replay {
        index,
        range,
        pending: Pending::default(),
        derived,
        signer,
        replayed: 0,
        run_events: options.run_events,
    };
    let last_i = segments.len() - 1;
    for (i, seg) in segments.iter().enumerate() {
        let len = seg.len().map_err(io(seg.name.clone()))?;
        if seg.start + len <= log_start && i != last_i {
            continue;
        }
        let from_off = log_start.saturating_sub(seg.start);
        if let Some((offset, bytes)) = replay_segment(&mut r, seg, from_off, i == last_i)? {
            seg.file
                .set_len(offset)
                .map_err(io(format!("truncating {}", seg.name)))?;
            seg.file
                .sync_all()
                .map_err(io(format!("syncing {}", seg.name)))?;
            report.truncated = Some((seg.name.clone(), offset, bytes));
        }
    }
    r.flush()?;
    let last = &segments[last_i];
    let log_end = last.start + last.len().map_err(io(last.name.clone()))?;
    let size = r.index.len();
    report.events = size;
    report.replayed = r.replayed;
    let levels = r.derived.levels.clone();
    let terms_bytes = r.derived.terms_bytes;
    let meta = Meta {
        size,
        log_end,
        terms_bytes,
        term_count: r.derived.term_count,
        checkpoints: r.index.checkpoint_count(),
    };
    r.derived
        .commit_meta(&meta)
        .map_err(io("recording the derived watermark"))?;
    let shared = Shared {
        dir: dir.to_owned(),
        size: AtomicU64::new(size),
        index: RwLock::new(r.index),
        files,
        segments: RwLock::new(segments.clone()),
        levels: RwLock::new(levels),
        upper_nodes: RwLock::new(Vec::new()),
        failed: std::sync::atomic::AtomicBool::new(false),
        sync_lock: std::sync::Mutex::new(()),
        rewriting: RwLock::new(()),
        segment_rewrite: std::sync::Mutex::new(()),
        maintenance: std::sync::Mutex::new(None),
        stats: std::sync::Mutex::new(crate::SyncStats {
            log_bytes: log_end,
            ..Default::default()
        }),
        options,
    };
    check_guard(dir, &segments, &shared, &r.range, &mut report)?;
    let mut guard = Guard::open(dir);
    let signed_size = shared
        .index
        .read()
        .ok()
        .and_then(|i| i.last_checkpoint().map(|(s, _)| s));
    if signed_size == Some(size) {
        guard.record(size, &r.range.root());
    }
    let mut state = State::new(Recovered {
        segment: last.clone(),
        log_end,
        derived: r.derived,
        range: r.range,
        signer: r.signer,
        meta,
        lock,
        guard,
    });
    let signed = shared.index.read().ok().and_then(|i| i.last_checkpoint());
    if let Some((cp_size, pos)) = signed.filter(|(s, _)| *s == size) {
        state.set_latest_note(Some(read_note(&segments, pos)?).filter(|_| cp_size == size));
    } else if state.can_sign() {
        state
            .sign_at_open(&shared)
            .map_err(io("signing a checkpoint at open"))?;
        report.signed_at_open = Some(size);
    }
    Ok((shared, state, report))
}

/// Compares the log with the latest checkpoint it recorded as durable (`latest-checkpoint`):
/// a shorter log, or another tree at that size, refuses to open; a missing or damaged record
/// in a log that holds events is reported.
fn check_guard(
    dir: &Path,
    segments: &[Segment],
    shared: &Shared,
    range: &CompactRange,
    report: &mut OpenReport,
) -> Result<(), OpenError> {
    let size = range.size();
    let recorded = guard::read(dir).map_err(io(format!("reading {}", guard::FILE_NAME)))?;
    let (recorded_size, recorded_root) = match recorded {
        Recorded::At { size, root } => (size, root),
        Recorded::Missing | Recorded::Damaged if size == 0 => return Ok(()),
        other => {
            let what = if other == Recorded::Missing {
                "missing"
            } else {
                "damaged"
            };
            report.warnings.push(format!(
                "{} is {what}: the log could not be checked against the last checkpoint it made durable (it is written again now)",
                guard::FILE_NAME
            ));
            return Ok(());
        }
    };
    let hint = format!(
        "if this log was deliberately restored from an older copy, delete {} to open it",
        dir.join(guard::FILE_NAME).display()
    );
    if recorded_size > size {
        return Err(OpenError::Rollback(format!(
            "the log holds {size} events, but it made a checkpoint of {recorded_size} events durable ({}): acknowledged events are missing; {hint}",
            guard::FILE_NAME
        )));
    }
    let pos = match shared.index.read() {
        Ok(i) => i
            .checkpoint_at(recorded_size)
            .map_err(io(format!("reading {}", "checkpoints.bin")))?,
        Err(_) => None,
    };
    let root = match pos {
        Some(pos) => {
            let note = read_note(segments, pos)?;
            unverified_checkpoint(&note).ok().map(|c| c.root)
        }
        None => None,
    };
    if root.is_none_or(|r| !r.ct_eq(&recorded_root)) {
        return Err(OpenError::Rollback(format!(
            "the log's checkpoint of {recorded_size} events is not the one it made durable ({}): the log was rewritten; {hint}",
            guard::FILE_NAME
        )));
    }
    Ok(())
}

fn read_note(segments: &[Segment], pos: u64) -> Result<String, OpenError> {
    let i = segments
        .partition_point(|s| s.start <= pos)
        .saturating_sub(1);
    let seg = &segments[i];
    let off = pos - seg.start;
    let corrupt = |problem: String| OpenError::Corrupt {
        file: seg.name.clone(),
        offset: off,
        problem,
    };
    let mut header = [0u8; record::HEADER_LEN];
    seg.read_exact_at(&mut header, off)
        .map_err(io(format!("reading {}", seg.name)))?;
    let h = record::parse_header(&header).map_err(|e| corrupt(e.to_string()))?;
    let mut buf = vec![0u8; h.total_len() as usize];
    seg.read_exact_at(&mut buf, off)
        .map_err(io(format!("reading {}", seg.name)))?;
    let (a, _) = record::check_record(&h, &buf).map_err(|e| corrupt(e.to_string()))?;
    String::from_utf8(a.to_vec()).map_err(|_| corrupt("checkpoint is not UTF-8".into()))
}
