//! Extending an archive to a signed checkpoint of the log.
//!
//! The archive holds the prefix of the log up to its `checkpoint`. Extending it to a larger
//! checkpoint writes the tiles and bundles that the larger tree adds or completes (create-only),
//! then `checkpoints/<size>`, then replaces `checkpoint`. A run cut short anywhere leaves the
//! previous checkpoint in place, still covering a complete archive.

use crate::layout::{self, hashes_at, tiles_from};
use crate::{Archive, ArchiveError, Put, CONCURRENCY};
use bytes::Bytes;
use futures_util::stream::{self, StreamExt, TryStreamExt};
use mlaudit_core::merkle::{leaf_hash, CompactRange};
use mlaudit_core::note::{open_checkpoint, Checkpoint, NoteVerifier};
use mlaudit_store::tiles::{hash_tile, TileRef, TILE_WIDTH};
use mlaudit_store::{LogReader, Nodes};
use std::ops::ControlFlow;

/// What one run of [`extend`] did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Extended {
    /// The archive's size before the run (0 for a new archive).
    pub from: u64,
    /// The archive's size after it.
    pub size: u64,
    /// Objects stored by this run.
    pub written: u64,
    /// Objects found already stored with the same bytes (an earlier, interrupted run).
    pub already_there: u64,
    /// Bytes of the objects stored.
    pub bytes: u64,
}

/// Progress of a run: events archived so far, out of how many.
pub type Progress<'a> = &'a mut dyn FnMut(u64, u64);

/// Extends the archive to the checkpoint `note` of `log` (signed by `verifier`'s key): stores
/// the entry, payload and hash tiles of every event up to its size, then the checkpoint.
pub fn extend(
    archive: &Archive,
    log: &dyn LogReader,
    note: &str,
    verifier: &NoteVerifier,
    progress: Progress<'_>,
) -> Result<Extended, ArchiveError> {
    let cp = open_checkpoint(verifier, note).map_err(|e| {
        ArchiveError::Diverged(format!("the checkpoint to archive does not verify: {e}"))
    })?;
    check_log_holds(log, &cp, "the checkpoint to archive")?;
    let from = match archive.verified_checkpoint(verifier)? {
        None => 0,
        Some(old) => {
            if old.size > cp.size {
                return Err(ArchiveError::Diverged(format!(
                    "the archive already holds {} events, more than the checkpoint of {} to archive",
                    old.size, cp.size
                )));
            }
            check_log_holds(log, &old, "the archive's checkpoint")?;
            old.size
        }
    };
    let mut done = Extended {
        from,
        size: cp.size,
        ..Extended::default()
    };
    let start = from / TILE_WIDTH * TILE_WIDTH;
    put_leaf_tiles(archive, log, start, cp.size, &mut done, progress)?;
    for level in 1u8.. {
        let count = hashes_at(level, cp.size);
        if count == 0 {
            break;
        }
        let tiles: Vec<TileRef> = tiles_from(hashes_at(level, from), count).collect();
        let mut objects = Vec::with_capacity(tiles.len());
        for tile in tiles {
            let bytes = hash_tile(log, level, tile, cp.size)?;
            objects.push((layout::hash_tile_name(level, tile), bytes));
        }
        put_all(archive, objects, &mut done)?;
    }
    put_all(
        archive,
        vec![(layout::checkpoint_name(cp.size), note.as_bytes().to_vec())],
        &mut done,
    )?;
    // Another writer may have gone further meanwhile: never replace its larger checkpoint.
    // (A race within this window only leaves `checkpoint` behind `checkpoints/`, which verify
    // reports and the next run repairs.)
    let larger = archive
        .block_on(archive.list(layout::CHECKPOINTS_DIR))?
        .iter()
        .filter_map(|n| n.parse::<u64>().ok())
        .any(|s| s > cp.size);
    if !larger {
        archive
            .block_on(archive.put_overwrite(layout::CHECKPOINT, Bytes::from(note.to_owned())))?;
    }
    Ok(done)
}

/// Checks that the log's tree at `cp.size` is the one `cp` signed.
fn check_log_holds(log: &dyn LogReader, cp: &Checkpoint, what: &str) -> Result<(), ArchiveError> {
    if cp.size > log.tree_size() {
        return Err(ArchiveError::Diverged(format!(
            "{what} covers {} events, the log holds {}",
            cp.size,
            log.tree_size()
        )));
    }
    let root = CompactRange::from_source(&Nodes(log), cp.size)?.root();
    if !root.ct_eq(&cp.root) {
        return Err(ArchiveError::Diverged(format!(
            "{what} (size {}) is not the log's tree at that size: the archive holds another log",
            cp.size
        )));
    }
    Ok(())
}

/// The entry bundles, payload bundles and level-0 hash tiles of events `start..size`, scanned
/// once and stored tile by tile. Each entry's leaf hash is checked against the log's tree.
fn put_leaf_tiles(
    archive: &Archive,
    log: &dyn LogReader,
    start: u64,
    size: u64,
    done: &mut Extended,
    progress: Progress<'_>,
) -> Result<(), ArchiveError> {
    let mut entries: Vec<Vec<u8>> = Vec::with_capacity(TILE_WIDTH as usize);
    let mut payloads: Vec<Option<Vec<u8>>> = Vec::with_capacity(TILE_WIDTH as usize);
    let mut batch: Vec<(String, Vec<u8>)> = Vec::new();
    let mut failure = None;
    if start >= size {
        return Ok(());
    }
    log.scan(start, &mut |ev| {
        entries.push(ev.entry);
        payloads.push(ev.payload);
        let next = ev.seq + 1;
        if next % TILE_WIDTH == 0 || next == size {
            let tile = layout::tile_of(ev.seq, size);
            match leaf_objects(log, tile, &entries, &payloads) {
                Ok(objects) => batch.extend(objects),
                Err(e) => {
                    failure = Some(e);
                    return ControlFlow::Break(());
                }
            }
            entries.clear();
            payloads.clear();
            if batch.len() >= 3 * CONCURRENCY || next == size {
                if let Err(e) = put_all(archive, std::mem::take(&mut batch), done) {
                    failure = Some(e);
                    return ControlFlow::Break(());
                }
                progress(next - start, size - start);
            }
        }
        if next == size {
            ControlFlow::Break(())
        } else {
            ControlFlow::Continue(())
        }
    })?;
    match failure {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// The three objects of one leaf tile.
fn leaf_objects(
    log: &dyn LogReader,
    tile: TileRef,
    entries: &[Vec<u8>],
    payloads: &[Option<Vec<u8>>],
) -> Result<Vec<(String, Vec<u8>)>, ArchiveError> {
    let first = tile.index * TILE_WIDTH;
    let stored = log.nodes(0, first, entries.len() as u64)?;
    let mut bundle = Vec::with_capacity(entries.iter().map(|e| e.len() + 2).sum());
    let mut hashes = Vec::with_capacity(entries.len() * 32);
    for (i, (entry, node)) in entries.iter().zip(&stored).enumerate() {
        let seq = first + i as u64;
        if !leaf_hash(entry).ct_eq(node) {
            return Err(ArchiveError::Diverged(format!(
                "the log's entry {seq} does not match its leaf hash: run `mlaudit verify`"
            )));
        }
        let len = u16::try_from(entry.len())
            .map_err(|_| mlaudit_store::tiles::TileError::TooLong(seq))?;
        bundle.extend_from_slice(&len.to_be_bytes());
        bundle.extend_from_slice(entry);
        hashes.extend_from_slice(&node.0);
    }
    let payload_bundle = layout::encode_payloads(payloads.iter().map(|p| p.as_deref()))
        .map_err(ArchiveError::Compress)?;
    Ok(vec![
        (layout::entry_bundle_name(tile), bundle),
        (layout::payload_bundle_name(tile), payload_bundle),
        (layout::hash_tile_name(0, tile), hashes),
    ])
}

/// Stores every object create-only, [`CONCURRENCY`] at a time.
fn put_all(
    archive: &Archive,
    objects: Vec<(String, Vec<u8>)>,
    done: &mut Extended,
) -> Result<(), ArchiveError> {
    let results: Vec<(Put, u64)> = archive.block_on(
        stream::iter(objects)
            .map(|(name, bytes)| async move {
                let len = bytes.len() as u64;
                archive
                    .put_create(&name, Bytes::from(bytes))
                    .await
                    .map(|p| (p, len))
            })
            .buffer_unordered(CONCURRENCY)
            .try_collect(),
    )?;
    for (put, len) in results {
        match put {
            Put::Written => {
                done.written += 1;
                done.bytes += len;
            }
            Put::AlreadyThere => done.already_there += 1,
        }
    }
    Ok(())
}
