//! Removing payloads from an archive (erasure, expiry). Every payload bundle that holds one of
//! them — the bundle of its tile at the archive's size, and the partial bundles that earlier,
//! smaller archives left at that index — is written again with the payload marked absent
//! (`0xFFFFFFFF`, docs/FORMAT.md §9). Entry bundles, hash tiles and checkpoints are never
//! touched, so the archive still verifies and every proof from it still holds.
//!
//! **Invariant:** a payload bundle is the one kind of archived object ever replaced, and only
//! by a copy in which payloads went from present to absent (a plain put: atomic on every
//! backend). On a versioned bucket with Object Lock the replaced version stays until its
//! retention ends; the current version no longer holds the payload.

use crate::layout::{self, CHECKPOINTS_DIR};
use crate::{Archive, ArchiveError};
use bytes::Bytes;
use mlaudit_store::tiles::{TileRef, TILE_WIDTH};
use std::collections::BTreeMap;

/// What [`Archive::remove_payloads`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Removed {
    /// Payloads that were in the archive's bundles and are no longer (counted once per
    /// bundle holding them).
    pub payloads: u64,
    /// Payload bundles written again.
    pub bundles: u64,
}

impl Archive {
    /// Marks the payloads of `seqs` absent in every payload bundle holding them; seqs beyond
    /// the archive are ignored (they are not in it).
    pub fn remove_payloads(&self, seqs: &[u64]) -> Result<Removed, ArchiveError> {
        let size = self.size()?;
        let mut by_tile: BTreeMap<u64, Vec<usize>> = BTreeMap::new();
        for &s in seqs.iter().filter(|s| **s < size) {
            by_tile
                .entry(s / TILE_WIDTH)
                .or_default()
                .push((s % TILE_WIDTH) as usize);
        }
        if by_tile.is_empty() {
            return Ok(Removed::default());
        }
        self.block_on(async {
            let widths = self.partial_widths(size).await?;
            let mut done = Removed::default();
            for (index, offsets) in &by_tile {
                let mut tiles = vec![layout::tile_of(index * TILE_WIDTH, size)];
                tiles.extend(widths.get(index).into_iter().flatten().map(|w| TileRef {
                    index: *index,
                    width: *w,
                }));
                for tile in tiles {
                    let removed = self.rewrite_without(tile, offsets).await?;
                    if removed > 0 {
                        done.payloads += removed;
                        done.bundles += 1;
                    }
                }
            }
            Ok(done)
        })
    }

    /// Tile index -> the widths of the partial level-0 tiles earlier archived sizes left.
    async fn partial_widths(&self, size: u64) -> Result<BTreeMap<u64, Vec<u16>>, ArchiveError> {
        let mut widths: BTreeMap<u64, Vec<u16>> = BTreeMap::new();
        for name in self.list(CHECKPOINTS_DIR).await? {
            let Ok(c) = name.parse::<u64>() else { continue };
            let width = (c % TILE_WIDTH) as u16;
            if c < size && width != 0 {
                widths.entry(c / TILE_WIDTH).or_default().push(width);
            }
        }
        Ok(widths)
    }

    /// Writes the payload bundle of `tile` again without the payloads at `offsets` (those
    /// inside it); returns how many it held. A bundle that is not there is left alone.
    async fn rewrite_without(&self, tile: TileRef, offsets: &[usize]) -> Result<u64, ArchiveError> {
        let name = layout::payload_bundle_name(tile);
        let Some(bytes) = self.fetch(&name).await? else {
            return Ok(0);
        };
        let width = usize::from(tile.width);
        let mut payloads = layout::decode_payloads(&name, &bytes, width)?;
        let mut removed = 0;
        for &i in offsets.iter().filter(|i| **i < width) {
            if payloads[i].take().is_some() {
                removed += 1;
            }
        }
        if removed == 0 {
            return Ok(0);
        }
        let encoded = layout::encode_payloads(payloads.iter().map(Option::as_deref))
            .map_err(|e| ArchiveError::invalid(&name, format!("compressing: {e}")))?;
        self.put_overwrite(&name, Bytes::from(encoded)).await?;
        Ok(removed)
    }
}
