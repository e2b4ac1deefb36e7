//! Verifying an archive alone, with only the log's verifier key.
//!
//! The tree checked is the largest archived checkpoint's (`checkpoint`, or a larger
//! `checkpoints/<size>` when a run stopped between its last two writes). The partial tiles and
//! bundles an earlier, smaller archive left must each be the beginning of the tile at their
//! index.
//!
//! The check recomputes the whole tree from the entry bundles and compares it with everything
//! else: each hash tile, each payload (against the SHA-256 its entry commits to), the signed
//! `checkpoint` and every archived `checkpoints/<size>`. A disagreement is reported with the
//! name of the object at fault: when the tree recomputed from the entries has the signed root,
//! a hash tile that differs from it is the damaged object; when it has not, the first entry
//! bundle whose hashes differ from the stored ones is.

use crate::layout::{self, hashes_at, tiles_from};
use crate::{open_note, Archive, ArchiveError, CONCURRENCY};
use futures_util::stream::{self, StreamExt};
use mlaudit_core::entry::decode_view;
use mlaudit_core::merkle::{leaf_hash, sha256, CompactRange, Hash};
use mlaudit_core::note::{Checkpoint, NoteVerifier};
use mlaudit_store::tiles::{TileRef, TILE_WIDTH};

/// What a successful verification covered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verified {
    /// Events in the archive (its checkpoint's tree size).
    pub size: u64,
    /// The signed root.
    pub root: Hash,
    /// Objects read and checked.
    pub objects: u64,
    /// Payloads present and matching their entries.
    pub payloads: u64,
    /// Events whose payload is no longer kept (expired or erased).
    pub payloads_absent: u64,
    /// Archived checkpoints checked against the tree (`checkpoints/<size>`).
    pub checkpoints: u64,
    /// The size `checkpoint` names when it is behind the largest archived checkpoint: a run
    /// cut short between its last two writes (the next run repairs it), or that one object
    /// put back. Every object of the larger tree was stored before it, and verified here.
    pub checkpoint_behind: Option<u64>,
}

/// Verifies every object of the archive; `progress(done, total)` counts events.
pub fn verify(
    archive: &Archive,
    verifier: &NoteVerifier,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<Verified, ArchiveError> {
    let note = archive.checkpoint_note()?.ok_or_else(|| {
        ArchiveError::invalid(
            layout::CHECKPOINT,
            "missing: nothing was archived here, or it was removed",
        )
    })?;
    let cp = open_note(layout::CHECKPOINT, &note, verifier)?;
    let history = archive.block_on(history(archive, verifier, &cp))?;
    // The archive's tree is the largest archived checkpoint's: `checkpoints/<size>` is stored
    // only after every object of its tree.
    let target = history.last().cloned().unwrap_or_else(|| cp.clone());
    let mut state = Walk::new(target.size, history.clone());
    archive.block_on(state.walk(archive, progress))?;
    let mut verified = state.finish(&target)?;
    verified.objects += archive.block_on(earlier_partials(archive, &history, target.size))?;
    verified.checkpoint_behind = (cp.size < target.size).then_some(cp.size);
    Ok(verified)
}

/// Checks the partial tiles and bundles of every earlier archived size (create-only, they
/// stay): each must be the beginning of the tile or bundle at its index in the archive's
/// tree, which the walk verified. Returns the objects read.
async fn earlier_partials(
    archive: &Archive,
    history: &[Checkpoint],
    size: u64,
) -> Result<u64, ArchiveError> {
    let mut read = 0;
    for c in history.iter().filter(|c| c.size < size) {
        for level in 0u8..8 {
            let count = hashes_at(level, c.size);
            let width = count % TILE_WIDTH;
            if width == 0 {
                continue;
            }
            let old = TileRef {
                index: count / TILE_WIDTH,
                width: width as u16,
            };
            let now = layout::tile_of(old.index * TILE_WIDTH, hashes_at(level, size));
            if now == old {
                continue;
            }
            let (w, nw) = (usize::from(old.width), usize::from(now.width));
            let names = |name: fn(TileRef) -> String| ((name(old), w), (name(now), nw));
            let hash_names = (
                (layout::hash_tile_name(level, old), w),
                (layout::hash_tile_name(level, now), nw),
            );
            begins(archive, hash_names, hashes).await?;
            read += 1;
            if level == 0 {
                let entries = |n: &str, b: &[u8], w| {
                    Ok(layout::decode_entries(n, b, w)?
                        .into_iter()
                        .map(<[u8]>::to_vec)
                        .collect())
                };
                begins(archive, names(layout::entry_bundle_name), entries).await?;
                begins(
                    archive,
                    names(layout::payload_bundle_name),
                    layout::decode_payloads,
                )
                .await?;
                read += 2;
            }
        }
    }
    Ok(read)
}

/// The items of a hash tile of `width` hashes.
fn hashes(name: &str, bytes: &[u8], width: usize) -> Result<Vec<Vec<u8>>, ArchiveError> {
    if bytes.len() != width * 32 {
        return Err(ArchiveError::invalid(
            name,
            format!("holds {} bytes, not {}", bytes.len(), width * 32),
        ));
    }
    Ok(bytes.chunks(32).map(<[u8]>::to_vec).collect())
}

/// Checks that the object `a` (of `wa` items) is the beginning of the object `b` (of `wb`),
/// item by item as `decode` reads them.
async fn begins<T: PartialEq>(
    archive: &Archive,
    ((a, wa), (b, wb)): ((String, usize), (String, usize)),
    decode: impl Fn(&str, &[u8], usize) -> Result<Vec<T>, ArchiveError>,
) -> Result<(), ArchiveError> {
    let (old, now) =
        futures_util::try_join!(archive.fetch_required(&a), archive.fetch_required(&b))?;
    let (old, now) = (decode(&a, &old, wa)?, decode(&b, &now, wb)?);
    if now.get(..old.len()) != Some(&old[..]) {
        return Err(ArchiveError::invalid(
            &a,
            format!("is not the beginning of {b}"),
        ));
    }
    Ok(())
}

/// The archived checkpoints, sorted by size; the latest must be among them.
async fn history(
    archive: &Archive,
    verifier: &NoteVerifier,
    cp: &Checkpoint,
) -> Result<Vec<Checkpoint>, ArchiveError> {
    let mut out = Vec::new();
    for name in archive.list(layout::CHECKPOINTS_DIR).await? {
        let object = format!("{}/{name}", layout::CHECKPOINTS_DIR);
        let size: u64 = name
            .parse()
            .map_err(|_| ArchiveError::invalid(&object, "not a checkpoint's name"))?;
        let bytes = archive.fetch_required(&object).await?;
        let text =
            std::str::from_utf8(&bytes).map_err(|_| ArchiveError::invalid(&object, "not UTF-8"))?;
        let c = open_note(&object, text, verifier)?;
        if c.size != size {
            return Err(ArchiveError::invalid(
                &object,
                format!("holds a checkpoint of size {}", c.size),
            ));
        }
        out.push(c);
    }
    out.sort_by_key(|c| c.size);
    match out.iter().find(|c| c.size == cp.size) {
        Some(c) if c.root.ct_eq(&cp.root) => Ok(out),
        _ => Err(ArchiveError::invalid(
            layout::checkpoint_name(cp.size),
            "missing, or not the archive's checkpoint",
        )),
    }
}

/// The recomputation's state.
struct Walk {
    size: u64,
    range: CompactRange,
    /// Per tile level `L ≥ 1`: recomputed hashes of the tile being filled, and its index.
    upper: Vec<(Vec<Hash>, u64)>,
    history: Vec<Checkpoint>,
    next_history: usize,
    /// The first entry bundle whose leaf hashes differ from its hash tile, and why.
    entry_mismatch: Option<(String, String)>,
    /// The first hash tile that differs from the recomputed tree.
    tile_mismatch: Option<(String, String)>,
    /// The first archived checkpoint that signs another tree than the recomputed one.
    history_mismatch: Option<(String, String)>,
    /// The first payload that is not the one its entry commits to (decisive only once the
    /// entries are known good).
    payload_mismatch: Option<(String, String)>,
    objects: u64,
    payloads: u64,
    payloads_absent: u64,
}

/// The three objects of one leaf tile.
struct LeafTile {
    tile: TileRef,
    entries: bytes::Bytes,
    payloads: bytes::Bytes,
    hashes: bytes::Bytes,
}

impl Walk {
    fn new(size: u64, history: Vec<Checkpoint>) -> Walk {
        Walk {
            size,
            range: CompactRange::new(),
            upper: (0..8).map(|_| (Vec::new(), 0)).collect(),
            history,
            next_history: 0,
            entry_mismatch: None,
            tile_mismatch: None,
            history_mismatch: None,
            payload_mismatch: None,
            objects: 0,
            payloads: 0,
            payloads_absent: 0,
        }
    }

    async fn walk(
        &mut self,
        archive: &Archive,
        progress: &mut dyn FnMut(u64, u64),
    ) -> Result<(), ArchiveError> {
        let mut tiles = stream::iter(tiles_from(0, self.size))
            .map(|tile| async move {
                let names = [
                    layout::entry_bundle_name(tile),
                    layout::payload_bundle_name(tile),
                    layout::hash_tile_name(0, tile),
                ];
                let (entries, payloads, hashes) = futures_util::try_join!(
                    archive.fetch_required(&names[0]),
                    archive.fetch_required(&names[1]),
                    archive.fetch_required(&names[2]),
                )?;
                Ok::<_, ArchiveError>(LeafTile {
                    tile,
                    entries,
                    payloads,
                    hashes,
                })
            })
            .buffered(CONCURRENCY / 2);
        while let Some(leaf) = tiles.next().await {
            self.leaf_tile(leaf?)?;
            self.objects += 3;
            self.check_upper(archive, false).await?;
            progress(self.range.size(), self.size);
        }
        self.check_upper(archive, true).await
    }

    fn leaf_tile(&mut self, t: LeafTile) -> Result<(), ArchiveError> {
        let width = usize::from(t.tile.width);
        let entries_name = layout::entry_bundle_name(t.tile);
        let payloads_name = layout::payload_bundle_name(t.tile);
        let hashes_name = layout::hash_tile_name(0, t.tile);
        let entries = layout::decode_entries(&entries_name, &t.entries, width)?;
        let payloads = layout::decode_payloads(&payloads_name, &t.payloads, width)?;
        if t.hashes.len() != width * 32 {
            self.tile_mismatch.get_or_insert((
                hashes_name.clone(),
                format!("holds {} bytes, not {}", t.hashes.len(), width * 32),
            ));
        }
        let first = t.tile.index * TILE_WIDTH;
        for (i, (entry, payload)) in entries.iter().zip(&payloads).enumerate() {
            let seq = first + i as u64;
            let view = decode_view(entry).map_err(|e| {
                ArchiveError::invalid(&entries_name, format!("entry {seq} does not decode: {e}"))
            })?;
            if view.seq != seq {
                return Err(ArchiveError::invalid(
                    &entries_name,
                    format!("holds entry {} at position {seq}", view.seq),
                ));
            }
            self.payload(&payloads_name, seq, &view, payload.as_deref());
            let leaf = leaf_hash(entry);
            let stored = t.hashes.get(i * 32..i * 32 + 32).and_then(Hash::from_slice);
            if stored.is_none_or(|h| !h.ct_eq(&leaf)) && self.entry_mismatch.is_none() {
                let problem = format!("entry {seq} is not the leaf hash {hashes_name} holds");
                self.entry_mismatch = Some((entries_name.clone(), problem.clone()));
                self.tile_mismatch.get_or_insert((
                    hashes_name.clone(),
                    format!("hash {i} is not the leaf hash of entry {seq}"),
                ));
            }
            self.push(leaf);
        }
        Ok(())
    }

    fn payload(
        &mut self,
        name: &str,
        seq: u64,
        view: &mlaudit_core::entry::EntryView<'_>,
        payload: Option<&[u8]>,
    ) {
        let Some(p) = payload else {
            self.payloads_absent += 1;
            return;
        };
        if p.len() != view.payload_len as usize || sha256(p) != view.payload_sha256 {
            self.payload_mismatch.get_or_insert((
                name.to_owned(),
                format!("the payload of entry {seq} is not the one its entry commits to (SHA-256)"),
            ));
        }
        self.payloads += 1;
    }

    /// Absorbs a leaf recomputed from its entry; checks archived checkpoints it completes.
    fn push(&mut self, leaf: Hash) {
        let upper = &mut self.upper;
        self.range.push(leaf, |level, _, hash| {
            if level > 0 && level % 8 == 0 {
                if let Some((hashes, _)) = upper.get_mut(level as usize / 8) {
                    hashes.push(*hash);
                }
            }
        });
        while let Some(c) = self.history.get(self.next_history) {
            if c.size > self.range.size() {
                break;
            }
            if c.size == self.range.size() && !self.range.root().ct_eq(&c.root) {
                self.history_mismatch.get_or_insert((
                    layout::checkpoint_name(c.size),
                    "signs another tree than the archived entries make".into(),
                ));
            }
            self.next_history += 1;
        }
    }

    /// Compares every filled tile of level ≥ 1 (and, at the end, the partial ones).
    async fn check_upper(&mut self, archive: &Archive, end: bool) -> Result<(), ArchiveError> {
        for level in 1u8..8 {
            let count = hashes_at(level, self.size);
            let (hashes, index) = &mut self.upper[usize::from(level)];
            let full = hashes.len() as u64 == TILE_WIDTH;
            if !(full || (end && !hashes.is_empty())) {
                continue;
            }
            let tile = layout::tile_of(*index * TILE_WIDTH, count);
            let name = layout::hash_tile_name(level, tile);
            let stored = archive.fetch_required(&name).await?;
            self.objects += 1;
            let recomputed: Vec<u8> = hashes.iter().flat_map(|h| h.0).collect();
            if stored.as_ref() != recomputed.as_slice() {
                self.tile_mismatch
                    .get_or_insert((name, "differs from the tree the entry bundles make".into()));
            }
            hashes.clear();
            *index += 1;
        }
        Ok(())
    }

    fn finish(self, cp: &Checkpoint) -> Result<Verified, ArchiveError> {
        let root = self.range.root();
        if !root.ct_eq(&cp.root) {
            let (object, problem) = self.entry_mismatch.unwrap_or_else(|| {
                (
                    layout::CHECKPOINT.to_owned(),
                    "signs another root than the archived entries make: the entries were rewritten"
                        .into(),
                )
            });
            return Err(ArchiveError::invalid(
                object,
                format!("{problem}, and the entries do not make the signed root"),
            ));
        }
        if let Some((object, problem)) = self
            .tile_mismatch
            .or(self.history_mismatch)
            .or(self.payload_mismatch)
        {
            return Err(ArchiveError::invalid(object, problem));
        }
        Ok(Verified {
            size: self.size,
            root,
            objects: self.objects + 1 + self.history.len() as u64,
            payloads: self.payloads,
            payloads_absent: self.payloads_absent,
            checkpoints: self.history.len() as u64,
            checkpoint_behind: None,
        })
    }
}
