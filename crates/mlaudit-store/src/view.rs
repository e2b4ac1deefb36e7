//! Finding events by what people type (an id or a seq) and showing them as JSON, shared by the
//! command line and the HTTP API.

use crate::{Store, StoreError};
use mlaudit_core::bundle::render_event;
use mlaudit_core::entry::{self, EventId};
use mlaudit_core::merkle::leaf_hash;
use serde_json::{json, Value};

/// Why a reference to an event could not be resolved.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LookupError {
    #[error("no event with id {0}")]
    UnknownId(EventId),
    #[error("no event with seq {seq}; the log holds {size}")]
    UnknownSeq { seq: u64, size: u64 },
    #[error("{0:?} is neither an event id (UUID) nor a seq number")]
    Malformed(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Resolves an event id (any UUID form) or a bare seq number to a seq.
pub fn resolve(store: &dyn Store, reference: &str) -> Result<u64, LookupError> {
    if let Some(id) = EventId::parse(reference) {
        return store.seq_of(&id)?.ok_or(LookupError::UnknownId(id));
    }
    match reference.parse::<u64>() {
        Ok(seq) if seq < store.tree_size() => Ok(seq),
        Ok(seq) => Err(LookupError::UnknownSeq {
            seq,
            size: store.tree_size(),
        }),
        Err(_) => Err(LookupError::Malformed(reference.chars().take(80).collect())),
    }
}

/// `{"seq", "leaf_hash", "tier", "event"}`: a stored event with its seq, its leaf hash and the
/// tier that answered (`hot`, `warm`, `cold`), and `payload_removed_by` (the seq of the
/// erasure or expiry event) once its payload is gone.
pub fn event_json(store: &dyn Store, seq: u64) -> Result<Value, StoreError> {
    let ev = store.event(seq)?;
    let e = entry::decode(&ev.entry).map_err(|err| StoreError::Corrupt {
        location: store.location(seq),
        problem: format!("entry does not decode: {err}"),
    })?;
    let mut view = json!({
        "seq": seq,
        "leaf_hash": leaf_hash(&ev.entry).to_hex(),
        "tier": ev.tier.as_str(),
        "event": render_event(&e, ev.payload.as_deref()),
    });
    if let Some(remover) = ev.removed_by {
        view["payload_removed_by"] = json!(remover);
    }
    Ok(view)
}
