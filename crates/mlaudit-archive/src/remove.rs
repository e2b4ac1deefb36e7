//! Removing payloads from an archive (erasure, expiry). Every payload bundle that holds one of
//! them — the full bundle of its tile and every partial bundle at that index, those earlier,
//! smaller archives left and any a run cut short left — is written again with the payload marked absent
//! (`0xFFFFFFFF`, docs/FORMAT.md §9). Entry bundles, hash tiles and checkpoints are never
//! touched, so the archive still verifies and every proof from it still holds.
//!
//! **Invariant:** a payload bundle is the one kind of archived object ever replaced, and only
//! by a copy in which payloads went from present to absent (a plain put: atomic on every
//! backend). On a versioned bucket with Object Lock the replaced version stays until its
//! retention ends; the current version no longer holds the payload.

use crate::layout;
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
    /// Marks the payloads of `seqs` absent in every payload bundle holding them: the full
    /// bundle of each one's tile and every partial bundle at that index, whether an archived
    /// checkpoint covers it or a run cut short left it.
    pub fn remove_payloads(&self, seqs: &[u64]) -> Result<Removed, ArchiveError> {
        let mut by_tile: BTreeMap<u64, Vec<usize>> = BTreeMap::new();
        for &s in seqs {
            by_tile
                .entry(s / TILE_WIDTH)
                .or_default()
                .push((s % TILE_WIDTH) as usize);
        }
        if by_tile.is_empty() {
            return Ok(Removed::default());
        }
        self.block_on(async {
            let mut done = Removed::default();
            for (index, offsets) in &by_tile {
                for tile in self.payload_bundles(*index).await? {
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

    /// The payload bundles stored at tile `index`: the full one and every partial one.
    async fn payload_bundles(&self, index: u64) -> Result<Vec<TileRef>, ArchiveError> {
        let full = TileRef {
            index,
            width: TILE_WIDTH as u16,
        };
        let mut tiles = vec![full];
        // `payload/<N>.p/<W>`: list the directory `payload/<N>.p`.
        let one = layout::payload_bundle_name(TileRef { index, width: 1 });
        let dir = one.strip_suffix("/1").unwrap_or(&one);
        for name in self.list(dir).await? {
            match name.parse::<u16>() {
                Ok(width) if width > 0 && u64::from(width) < TILE_WIDTH => {
                    tiles.push(TileRef { index, width });
                }
                _ => {}
            }
        }
        Ok(tiles)
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
