//! Reading archived events back.

use crate::layout;
use crate::{Archive, ArchiveError};
use mlaudit_core::note::{unverified_checkpoint, Checkpoint, NoteVerifier};
use mlaudit_store::tiles::TILE_WIDTH;
use mlaudit_store::StoredEvent;

impl Archive {
    /// The archive's checkpoint, checked with the log's verifier key (`None`: an empty
    /// archive).
    pub fn verified_checkpoint(
        &self,
        verifier: &NoteVerifier,
    ) -> Result<Option<Checkpoint>, ArchiveError> {
        self.checkpoint_note()?
            .map(|note| crate::open_note(layout::CHECKPOINT, &note, verifier))
            .transpose()
    }

    /// The tree size of the archive's checkpoint, checked with the log's verifier key (0 for
    /// an empty archive).
    pub fn verified_size(&self, verifier: &NoteVerifier) -> Result<u64, ArchiveError> {
        Ok(self.verified_checkpoint(verifier)?.map_or(0, |c| c.size))
    }

    /// The tree size of the archive's checkpoint (0 for an empty archive), for reading. The
    /// signature is not checked here: [`crate::verify::verify`] and
    /// [`Archive::verified_size`] do that.
    pub fn size(&self) -> Result<u64, ArchiveError> {
        match self.checkpoint_note()? {
            None => Ok(0),
            Some(note) => unverified_checkpoint(&note)
                .map(|c| c.size)
                .map_err(|e| ArchiveError::invalid(layout::CHECKPOINT, e.to_string())),
        }
    }

    /// The archived events `from..to` (within the archive's size), entry and payload, read
    /// tile by tile.
    pub fn events(&self, from: u64, to: u64) -> Result<Vec<StoredEvent>, ArchiveError> {
        let size = self.size()?;
        if to > size || from > to {
            return Err(ArchiveError::Diverged(format!(
                "events {from}..{to} are not all in the archive, which holds {size}"
            )));
        }
        let mut out = Vec::with_capacity((to - from) as usize);
        let mut seq = from;
        while seq < to {
            let tile = layout::tile_of(seq, size);
            let first = tile.index * TILE_WIDTH;
            let width = usize::from(tile.width);
            let names = (
                layout::entry_bundle_name(tile),
                layout::payload_bundle_name(tile),
            );
            let (entries, payloads) = self.block_on(async {
                futures_util::try_join!(
                    self.fetch_required(&names.0),
                    self.fetch_required(&names.1),
                )
            })?;
            let entries = layout::decode_entries(&names.0, &entries, width)?;
            let mut payloads = layout::decode_payloads(&names.1, &payloads, width)?;
            let end = (first + width as u64).min(to);
            for s in seq..end {
                let i = (s - first) as usize;
                out.push(StoredEvent::new(s, entries[i].to_vec(), payloads[i].take()));
            }
            seq = end;
        }
        Ok(out)
    }
}
