//! Rewriting payloads in segments that are otherwise never rewritten: removing them (expiry,
//! erasure), leaving them to the cold archive, and bringing them back from it.
//!
//! Each replaces an event record by one of the same length and entry (docs/FORMAT.md §6): a
//! removal by a [`record::REMOVED`] record (part B the remover's seq then zeros), an offload
//! by a [`record::IN_ARCHIVE`] record (part B zeros), a restore by the [`record::EVENT`]
//! record again (part B the payload its entry commits to). To survive a crash halfway, the new
//! records are first written to a journal (`payload-removal.journal`, written under a
//! temporary name, synced and renamed into place), then applied: a raw segment is patched in
//! place and synced; a packed one is packed again from its patched bytes and renamed over
//! itself. The journal is removed once all of that is durable. Opening applies a journal left
//! behind again — applying writes final bytes, so doing it twice changes nothing.
//!
//! **Invariants:** record positions and lengths never change, so `offsets.bin`, tree nodes,
//! indexes and checkpoints stay valid; an entry is never touched, so neither is any leaf.
//! Readers never see a half-patched record: they read raw segments under `Shared::rewriting`,
//! which a patch holds exclusively. One rewrite of a segment file runs at a time
//! (`Shared::segment_rewrite`, also held while packing).

use crate::packed::{self, Packed, Patched};
use crate::{lock_poisoned, read_record, record, Segment, Shared};
use mlaudit_store::StoreError;
use std::collections::BTreeMap;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::{Arc, RwLock};

/// The journal's file name inside the store's directory.
pub(crate) const JOURNAL: &str = "payload-removal.journal";
const MAGIC: &[u8; 8] = b"MLARMJ01";
/// A removal journals and applies its records this many bytes at a time (a packed segment is
/// packed again once per such part), so that memory and the journal stay bounded.
const JOURNAL_BYTES: usize = 32 << 20;

/// One record's new bytes at a log position.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Patch {
    pub pos: u64,
    pub bytes: Vec<u8>,
}

/// magic, u32 count, per patch (u64 position, u32 length, bytes), u32 CRC-32C of all before.
fn encode(patches: &[Patch]) -> Vec<u8> {
    let mut out = MAGIC.to_vec();
    out.extend_from_slice(&(patches.len() as u32).to_be_bytes());
    for p in patches {
        out.extend_from_slice(&p.pos.to_be_bytes());
        out.extend_from_slice(&(p.bytes.len() as u32).to_be_bytes());
        out.extend_from_slice(&p.bytes);
    }
    let crc = crc32c::crc32c(&out);
    out.extend_from_slice(&crc.to_be_bytes());
    out
}

/// The patches of a journal; `None` if it does not check out.
fn decode(bytes: &[u8]) -> Option<Vec<Patch>> {
    let (body, crc) = bytes.split_at_checked(bytes.len().checked_sub(4)?)?;
    if crc32c::crc32c(body).to_be_bytes() != crc || body.get(..8)? != MAGIC {
        return None;
    }
    let mut at = 12usize;
    let count = u32::from_be_bytes(body.get(8..12)?.try_into().ok()?);
    let mut patches = Vec::new();
    for _ in 0..count {
        let pos = u64::from_be_bytes(body.get(at..at + 8)?.try_into().ok()?);
        let len = u32::from_be_bytes(body.get(at + 8..at + 12)?.try_into().ok()?) as usize;
        let bytes = body.get(at + 12..at.checked_add(12 + len)?)?.to_vec();
        patches.push(Patch { pos, bytes });
        at += 12 + len;
    }
    (at == body.len()).then_some(patches)
}

fn write_journal(dir: &Path, patches: &[Patch]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = dir.join(format!("{JOURNAL}.tmp"));
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(crate::FILE_MODE)
        .open(&tmp)?;
    f.write_all(&encode(patches))?;
    f.sync_all()?;
    std::fs::rename(&tmp, dir.join(JOURNAL))?;
    crate::derived::sync_dir(dir)
}

fn remove_journal(dir: &Path) -> std::io::Result<()> {
    std::fs::remove_file(dir.join(JOURNAL))?;
    crate::derived::sync_dir(dir)
}

/// The segment files in `dir`: start -> (raw exists, packed exists).
fn segment_files(dir: &Path) -> std::io::Result<BTreeMap<u64, (bool, bool)>> {
    let mut found = BTreeMap::new();
    for ent in std::fs::read_dir(dir)? {
        let name = ent?.file_name().to_string_lossy().into_owned();
        let parsed = name
            .strip_prefix("seg-")
            .and_then(|n| n.split_once('.'))
            .and_then(|(n, ext)| Some((n.parse::<u64>().ok()?, ext.to_owned())));
        let Some((start, ext)) = parsed else { continue };
        let e: &mut (bool, bool) = found.entry(start).or_default();
        match ext.as_str() {
            "log" => e.0 = true,
            "zst" => e.1 = true,
            _ => {}
        }
    }
    found.retain(|_, (raw, packed)| *raw || *packed);
    Ok(found)
}

/// Applies `patches` to the segment files of `dir` (both copies of a segment caught between
/// packing and removing its raw file), each checked first ([`check_patch`]). A raw segment is
/// patched in place under `rewriting` (when given) and synced; a packed one is packed again,
/// and its start pushed to `repacked` (also when a later segment then fails).
fn apply(
    dir: &Path,
    patches: &[Patch],
    rewriting: Option<&RwLock<()>>,
    repacked: &mut Vec<u64>,
) -> std::io::Result<()> {
    let files = segment_files(dir)?;
    let mut by_segment: BTreeMap<u64, Vec<(u64, Vec<u8>)>> = BTreeMap::new();
    for p in patches {
        let start = files.range(..=p.pos).next_back().map(|(s, _)| *s);
        let start = start.ok_or_else(|| {
            std::io::Error::other(format!("no segment holds log position {}", p.pos))
        })?;
        let group = by_segment.entry(start).or_default();
        group.push((p.pos - start, p.bytes.clone()));
    }
    for (start, mut group) in by_segment {
        group.sort_by_key(|(at, _)| *at);
        let (raw, packed) = files.get(&start).copied().unwrap_or_default();
        if raw {
            patch_raw(dir, start, &group, rewriting)?;
        }
        if packed {
            let path = dir.join(packed::packed_name(start));
            let old = Packed::open(&path)?;
            check_group(&old, &old.name, &group)?;
            let source = Patched {
                base: &old,
                patches: &group,
            };
            packed::pack(dir, start, &source, &old.name.clone())?;
            old.forget();
            repacked.push(start);
        }
    }
    Ok(())
}

/// Checks every patch of a segment against the bytes it replaces.
fn check_group(
    segment: &dyn packed::RawSource,
    name: &str,
    group: &[(u64, Vec<u8>)],
) -> std::io::Result<()> {
    for (at, new) in group {
        let mut old = vec![0u8; new.len()];
        segment.read_raw_at(&mut old, *at)?;
        check_patch(&old, new).map_err(|problem| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("{name} at offset {at}: refusing a payload rewrite: {problem}"),
            )
        })?;
    }
    Ok(())
}

/// A patch may only move one event record between its forms — payload here, removed, in the
/// archive only — as [`patch_for`] makes them: `new` must be a well-formed record of one of
/// those forms (an event record's payload must be the one its entry commits to), and `old` —
/// the bytes it replaces, possibly torn by a crash halfway through an earlier attempt — must
/// hold the same entry at the same place, and if it checks out as a record, be a form `new`
/// may follow (or already `new`).
fn check_patch(old: &[u8], new: &[u8]) -> Result<(), String> {
    fn parse(b: &[u8]) -> Option<(record::Header, &[u8], &[u8])> {
        let h = record::parse_header(b.get(..record::HEADER_LEN)?.try_into().ok()?).ok()?;
        record::check_record(&h, b)
            .ok()
            .map(|(a, part_b)| (h, a, part_b))
    }
    let (h, entry, part_b) = parse(new).ok_or("the new record does not check out")?;
    let may_follow: &[u8] = match h.kind {
        record::REMOVED if record::remover(part_b).is_some() => {
            &[record::EVENT, record::IN_ARCHIVE]
        }
        record::IN_ARCHIVE if part_b.iter().all(|&z| z == 0) => &[record::EVENT],
        record::EVENT => {
            let seq = crate::entry_seq(entry).ok_or("the new record's entry has no seq")?;
            mlaudit_store::check_restored(seq, entry, part_b).map_err(|e| e.to_string())?;
            &[record::IN_ARCHIVE]
        }
        _ => return Err("the new record is not a removed, archived or restored payload's".into()),
    };
    // The lengths (bytes 1..9) are the same in every form of an event record, and in any mix
    // of two that a crash can leave.
    if old.get(1..9) != new.get(1..9) {
        return Err("the record there has other lengths".into());
    }
    let at = record::HEADER_LEN..record::HEADER_LEN + entry.len();
    if old.get(at) != Some(entry) {
        return Err("the record there holds another entry".into());
    }
    match parse(old) {
        Some((h, _, _)) if may_follow.contains(&h.kind) => Ok(()),
        Some(_) if old == new => Ok(()),
        Some(_) => Err("the record there is not in a form this one may replace".into()),
        None => Ok(()), // torn by a crash in an earlier attempt: the entry matched
    }
}

fn patch_raw(
    dir: &Path,
    start: u64,
    group: &[(u64, Vec<u8>)],
    rewriting: Option<&RwLock<()>>,
) -> std::io::Result<()> {
    let name = crate::segment_name(start);
    // Not opened for appending: with O_APPEND a positioned write would land at the end.
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(dir.join(&name))?;
    check_group(&file, &name, group)?;
    {
        let _exclusive = rewriting
            .map(|l| l.write())
            .transpose()
            .map_err(|_| std::io::Error::other("the store's rewrite lock is poisoned"))?;
        for (at, bytes) in group {
            file.write_all_at(bytes, *at)?;
        }
    }
    file.sync_data()
}

/// The patches of a journal left behind, if any (a `.tmp` one, never renamed into place,
/// had nothing applied from it and is removed).
fn left_journal(dir: &Path) -> std::io::Result<Option<Vec<Patch>>> {
    let tmp = dir.join(format!("{JOURNAL}.tmp"));
    if tmp.exists() {
        std::fs::remove_file(&tmp)?;
    }
    let bytes = match std::fs::read(dir.join(JOURNAL)) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    decode(&bytes).map(Some).ok_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("{JOURNAL} does not check out"),
        )
    })
}

/// At open, before segments are read: applies a journal a removal left behind.
pub(crate) fn replay(dir: &Path) -> Result<(), crate::OpenError> {
    let io = |what: &str| {
        let what = what.to_owned();
        move |source| crate::OpenError::Io {
            context: what,
            source,
        }
    };
    let Some(patches) = left_journal(dir).map_err(|e| crate::OpenError::Corrupt {
        file: JOURNAL.into(),
        offset: 0,
        problem: e.to_string(),
    })?
    else {
        return Ok(());
    };
    apply(dir, &patches, None, &mut Vec::new())
        .map_err(io("finishing an interrupted payload removal"))?;
    remove_journal(dir).map_err(io("removing the payload removal journal"))
}

/// Applies the journal's `patches`, points readers at the segments packed again (even after a
/// failure part way), and removes the journal.
fn run_journal(shared: &Shared, patches: &[Patch]) -> Result<(), StoreError> {
    let io = |what: &'static str| {
        move |source| StoreError::Io {
            context: what.into(),
            source,
        }
    };
    let mut repacked = Vec::new();
    let applied = apply(&shared.dir, patches, Some(&shared.rewriting), &mut repacked);
    swap_repacked(shared, &repacked)?;
    applied.map_err(io("removing payloads from segments"))?;
    remove_journal(&shared.dir).map_err(io("removing the payload removal journal"))
}

/// What to do to one event's payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Change {
    /// Remove it, naming the governance event of this seq.
    Remove(u64),
    /// Keep it only in the cold archive.
    Offload,
    /// Bring it back from the cold archive: these bytes.
    Restore(Vec<u8>),
}

/// Applies the (seq, change) pairs, which the caller has checked; each segment is rewritten
/// once for the whole batch. Returns how many records changed.
pub(crate) fn rewrite(shared: &Shared, changes: Vec<(u64, Change)>) -> Result<u64, StoreError> {
    let _one_rewrite = shared.segment_rewrite.lock().map_err(|_| lock_poisoned())?;
    // A rewrite that failed part way is finished first: its journal would be replaced.
    let left = left_journal(&shared.dir).map_err(|source| StoreError::Io {
        context: "reading the payload removal journal".into(),
        source,
    })?;
    if let Some(patches) = left {
        run_journal(shared, &patches)?;
    }
    let mut wanted = changes;
    wanted.sort_unstable_by_key(|(seq, _)| *seq);
    wanted.dedup_by_key(|(seq, _)| *seq);
    let (mut changed, mut patches, mut bytes) = (0, Vec::new(), 0usize);
    for (seq, change) in wanted {
        if let Some(p) = patch_for(shared, seq, &change)? {
            bytes += p.bytes.len();
            patches.push(p);
        }
        if bytes >= JOURNAL_BYTES {
            changed += journal_and_apply(shared, &std::mem::take(&mut patches))?;
            bytes = 0;
        }
    }
    changed += journal_and_apply(shared, &patches)?;
    Ok(changed)
}

/// Journals `patches` durably, then applies them; returns how many there were.
fn journal_and_apply(shared: &Shared, patches: &[Patch]) -> Result<u64, StoreError> {
    if patches.is_empty() {
        return Ok(0);
    }
    write_journal(&shared.dir, patches).map_err(|source| StoreError::Io {
        context: "writing the payload removal journal".into(),
        source,
    })?;
    run_journal(shared, patches)?;
    Ok(patches.len() as u64)
}

/// The new record for `seq`, or `None` when there is nothing to change (removed already, or
/// already where `change` would put it).
fn patch_for(shared: &Shared, seq: u64, change: &Change) -> Result<Option<Patch>, StoreError> {
    let pos = shared.files.offset(seq).map_err(|source| StoreError::Io {
        context: format!("reading offsets.bin at seq {seq}"),
        source,
    })?;
    let (h, buf, seg) = read_record(shared, pos)?;
    let corrupt = |problem: &str| StoreError::Corrupt {
        location: format!("{}:{}", seg.name, pos - seg.start),
        problem: format!("seq {seq}: {problem}"),
    };
    let entry = &buf[record::HEADER_LEN..record::HEADER_LEN + h.len_a as usize];
    let bytes = match (h.kind, change) {
        (record::REMOVED, _)
        | (record::IN_ARCHIVE, Change::Offload)
        | (record::EVENT, Change::Restore(_)) => return Ok(None),
        (record::EVENT | record::IN_ARCHIVE, Change::Remove(remover)) => {
            record::removed(entry, h.len_b, *remover)
                .ok_or_else(|| corrupt("a payload shorter than 8 bytes cannot be removed"))?
        }
        (record::EVENT, Change::Offload) => record::in_archive(entry, h.len_b)
            .ok_or_else(|| corrupt("a payload too long for this platform"))?,
        (record::IN_ARCHIVE, Change::Restore(payload)) => {
            mlaudit_store::check_restored(seq, entry, payload)?;
            record::event(entry, payload)
        }
        _ => return Err(corrupt("not an event record")),
    };
    Ok(Some(Patch { pos, bytes }))
}

/// Points readers at the packed segments written again.
fn swap_repacked(shared: &Shared, starts: &[u64]) -> Result<(), StoreError> {
    for &start in starts {
        let path = shared.dir.join(packed::packed_name(start));
        let p = Packed::open(&path).map_err(|source| StoreError::Io {
            context: format!("opening {}", path.display()),
            source,
        })?;
        let p = Arc::new(p);
        let mut segs = shared.segments.write().map_err(|_| lock_poisoned())?;
        if let Some(s) = segs.iter_mut().find(|s| s.start == start) {
            if let Some(old) = &s.packed {
                old.forget();
            }
            *s = Segment {
                start,
                file: p.file(),
                name: packed::packed_name(start),
                packed: Some(p),
            };
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_journal_round_trips_and_refuses_any_damage() {
        let patches = vec![
            Patch {
                pos: 7,
                bytes: b"abc".to_vec(),
            },
            Patch {
                pos: 1 << 40,
                bytes: vec![0; 20],
            },
        ];
        let bytes = encode(&patches);
        assert_eq!(decode(&bytes), Some(patches));
        for i in 0..bytes.len() {
            let mut bad = bytes.clone();
            bad[i] ^= 1;
            assert_eq!(decode(&bad), None, "flip at {i}");
        }
        for n in 0..bytes.len() {
            assert_eq!(decode(&bytes[..n]), None, "cut at {n}");
        }
    }

    #[test]
    fn a_patch_only_turns_its_own_event_into_its_removed_form() {
        let payload = br#"{"kind":"x.y"}"#;
        let mut event = Vec::new();
        record::encode_into(&mut event, record::EVENT, b"entry-1", payload);
        let new = record::removed(b"entry-1", payload.len() as u32, 9).unwrap();
        assert_eq!(check_patch(&event, &new), Ok(()));
        assert_eq!(check_patch(&new, &new), Ok(()), "applied already");
        let half = new.len() / 2;
        let torn = [&new[..half], &event[half..]].concat();
        assert_eq!(check_patch(&torn, &new), Ok(()), "torn by a crash");
        let mut other = Vec::new();
        record::encode_into(&mut other, record::EVENT, b"entry-2", payload);
        assert!(check_patch(&other, &new).is_err(), "another event");
        assert!(check_patch(&event, &event).is_err(), "not a removal");
        let by_another = record::removed(b"entry-1", payload.len() as u32, 10).unwrap();
        assert!(
            check_patch(&by_another, &new).is_err(),
            "removed already, by another"
        );
    }
}
