//! Inclusion proof bundles and consistency proofs, from any [`Store`].
//!
//! A bundle is made against the latest stored checkpoint, so its `tree_size` always has a
//! signed note; a consistency proof is made between two stored checkpoints.

use crate::{Nodes, Store, StoreError};
use mlaudit_core::b64;
use mlaudit_core::bundle::{ProofBundle, RemovalProof};
use mlaudit_core::merkle::{self, Hash};
use mlaudit_core::note::{open_checkpoint, Checkpoint, NoteVerifier};
use serde::Serialize;

/// Why a proof could not be made.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProveError {
    /// The event is not yet covered by a stored checkpoint.
    #[error("seq {0} is not covered by any checkpoint yet")]
    NotCheckpointed(u64),
    /// No checkpoint is stored for a requested size.
    #[error("no checkpoint is stored for tree size {0}; see `mlaudit checkpoint --list`")]
    NoCheckpoint(u64),
    /// The sizes are not `0 < from <= to`.
    #[error("{0}")]
    BadRequest(#[from] merkle::ProofRequestError),
    /// The stored checkpoint does not parse.
    #[error("stored checkpoint for size {size} is unreadable: {problem}")]
    BadCheckpoint { size: u64, problem: String },
    /// Storage failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The inclusion proof bundle of event `seq`, against the latest checkpoint.
pub fn inclusion_bundle(store: &dyn Store, seq: u64) -> Result<ProofBundle, ProveError> {
    let size = store
        .latest_checkpoint_size()?
        .filter(|s| *s > seq)
        .ok_or(ProveError::NotCheckpointed(seq))?;
    let note = store
        .checkpoint(size)?
        .ok_or(ProveError::NoCheckpoint(size))?;
    let (event, path) = store.inclusion_material(seq, size)?;
    let path = path?;
    let mut bundle = ProofBundle::new(
        &event.entry,
        event.payload.as_deref(),
        seq,
        size,
        &path,
        note,
    );
    if let Some(remover) = event.removed_by.filter(|r| *r < size) {
        let (removal, path) = store.inclusion_material(remover, size)?;
        if let Some(listing) = &removal.payload {
            bundle.payload_erased_by =
                Some(RemovalProof::new(&removal.entry, listing, remover, &path?));
        }
    }
    Ok(bundle)
}

/// A consistency proof between two stored checkpoints, with both notes.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct ConsistencyProof {
    pub from: u64,
    pub to: u64,
    /// base64 hashes, RFC 9162 order.
    pub proof: Vec<String>,
    pub from_checkpoint: String,
    pub to_checkpoint: String,
}

/// Builds the consistency proof between the checkpoints of sizes `from` and `to`.
pub fn consistency(store: &dyn Store, from: u64, to: u64) -> Result<ConsistencyProof, ProveError> {
    let from_note = store
        .checkpoint(from)?
        .ok_or(ProveError::NoCheckpoint(from))?;
    let to_note = store.checkpoint(to)?.ok_or(ProveError::NoCheckpoint(to))?;
    let proof = merkle::consistency_proof(&Nodes(store), from, to)??;
    Ok(ConsistencyProof {
        from,
        to,
        proof: proof.iter().map(|h| b64::encode(h.0)).collect(),
        from_checkpoint: from_note,
        to_checkpoint: to_note,
    })
}

/// Why a consistency proof did not verify.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConsistencyError {
    #[error("checkpoint: {0}")]
    Checkpoint(#[from] mlaudit_core::note::NoteError),
    #[error("checkpoint sizes {found} differ from the proof's {claimed}")]
    SizeMismatch { claimed: u64, found: u64 },
    #[error("proof hash is not base64 of 32 bytes")]
    Malformed,
    #[error("{0}")]
    Proof(#[from] merkle::ProofError),
}

impl ConsistencyProof {
    /// Checks both signatures and the proof.
    pub fn verify(&self, key: &NoteVerifier) -> Result<(Checkpoint, Checkpoint), ConsistencyError> {
        let old = open_checkpoint(key, &self.from_checkpoint)?;
        let new = open_checkpoint(key, &self.to_checkpoint)?;
        for (claimed, found) in [(self.from, old.size), (self.to, new.size)] {
            if claimed != found {
                return Err(ConsistencyError::SizeMismatch { claimed, found });
            }
        }
        let proof = self
            .proof
            .iter()
            .map(|h| b64::decode(h).ok().and_then(|b| Hash::from_slice(&b)))
            .collect::<Option<Vec<_>>>()
            .ok_or(ConsistencyError::Malformed)?;
        merkle::verify_consistency(old.size, new.size, &old.root, &new.root, &proof)?;
        Ok((old, new))
    }
}

/// Parses a stored checkpoint without checking its signature (the store wrote it).
pub fn parse_stored(size: u64, note: &str) -> Result<Checkpoint, ProveError> {
    mlaudit_core::note::unverified_checkpoint(note).map_err(|e| ProveError::BadCheckpoint {
        size,
        problem: e.to_string(),
    })
}
