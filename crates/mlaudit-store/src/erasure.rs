//! Erasure: removing the payloads of chosen events (a data subject's request, a mistaken
//! upload) while every entry, leaf and checkpoint stays, so that every proof still verifies.
//!
//! An erasure is recorded first, as `governance.payload_erased` events (a reserved kind, written
//! only on an admin's behalf) naming the reason, the criteria and the ids erased — at most
//! [`IDS_PER_EVENT`] per event — and each payload is then removed naming the event that erased
//! it ([`crate::Appender::remove_payloads`]) — from other copies (the cold archive) first, then
//! from the log. A crash between those steps leaves the record of an erasure not yet done;
//! running the same erasure again finishes it (payloads already gone are skipped).
//!
//! **Invariants:** an event a hold in force covers is never erased: an erasure touching one is
//! refused as a whole, before anything is written. The trail's own records (the server-only
//! kinds: holds, access changes, erasures themselves) are never erased: `mlaudit verify` reads
//! each erasure's list of ids to confirm every removed payload.

use crate::holds::{self, governance_event};
use crate::{Query, Store, StoreError};
use mlaudit_core::entry::{decode_view, EventId, SubjectField};
use mlaudit_core::event::is_reserved_kind;
use serde::Serialize;
use serde_json::json;
use std::ops::ControlFlow;

/// Most event ids one `governance.payload_erased` event names (well inside the attribute
/// size limit).
pub const IDS_PER_EVENT: usize = 1000;

/// Removal events whose payloads are removed together: a compressed segment is written again
/// once per batch, not once per event.
const EVENTS_PER_BATCH: usize = 50;

/// Which events to erase.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    /// One event.
    Event(EventId),
    /// Every event whose subject field has this value (e.g. `request=R`).
    Subject(SubjectField, String),
    /// Every event by this actor.
    Actor(String),
}

impl Target {
    /// Parses `field=value` for [`Target::Subject`].
    pub fn subject(text: &str) -> Result<Target, ErasureError> {
        let bad = || ErasureError::BadSubject(text.to_owned());
        let (field, value) = text.split_once('=').ok_or_else(bad)?;
        let field = SubjectField::ALL
            .into_iter()
            .find(|f| f.as_str() == field)
            .ok_or_else(bad)?;
        if value.is_empty() {
            return Err(bad());
        }
        Ok(Target::Subject(field, value.to_owned()))
    }

    /// How the erasure event records it.
    fn criteria(&self) -> serde_json::Value {
        match self {
            Target::Event(id) => json!({"event": id.to_string()}),
            Target::Subject(f, v) => json!({"subject": format!("{}={v}", f.as_str())}),
            Target::Actor(a) => json!({"actor": a}),
        }
    }
}

/// Why an erasure was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ErasureError {
    #[error("{0}: expected FIELD=VALUE with FIELD one of model, version, dataset, dataset_version, run, pipeline_run, deployment, request")]
    BadSubject(String),
    #[error("{0}: not an event id (a UUID)")]
    BadId(String),
    #[error("an erasure needs a reason")]
    NoReason,
    #[error("no event {0} in the log")]
    UnknownEvent(EventId),
    #[error("refused: {count} of the events to erase are under legal hold {hold} (e.g. event {example}); none of them was erased")]
    Held {
        hold: String,
        count: u64,
        example: String,
    },
    #[error("recording the erasure: {0}")]
    Event(String),
    #[error("removing the payloads from {0}")]
    Elsewhere(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What an erasure found and did.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Outcome {
    /// Events the criteria select.
    pub matched: u64,
    /// Of those, payloads removed now.
    pub erased: u64,
    /// Of those, payloads already gone (erased or expired before).
    pub already_removed: u64,
    /// Of those, the trail's own records (server-only kinds: holds, access, erasures), which
    /// are never erased.
    pub kept_records: u64,
    /// Seqs of the `governance.payload_erased` events recorded.
    pub recorded: Vec<u64>,
}

/// The seqs the target selects, ascending.
pub fn select(store: &dyn Store, target: &Target) -> Result<Vec<u64>, ErasureError> {
    let indexed = |q: Query| crate::seqs_matching(store, q).map_err(ErasureError::from);
    match target {
        Target::Event(id) => store
            .seq_of(id)?
            .map(|s| vec![s])
            .ok_or(ErasureError::UnknownEvent(*id)),
        Target::Actor(a) => indexed(Query {
            actor: Some(a.clone()),
            ..Query::default()
        }),
        Target::Subject(field, value) => {
            let mut q = Query::default();
            let slot = match field {
                SubjectField::Model => &mut q.model,
                SubjectField::Version => &mut q.version,
                SubjectField::Dataset => &mut q.dataset,
                SubjectField::Run => &mut q.run,
                SubjectField::Deployment => &mut q.deployment,
                // Not indexed: read the log.
                _ => return scan_subject(store, *field, value),
            };
            *slot = Some(value.clone());
            indexed(q)
        }
    }
}

fn scan_subject(
    store: &dyn Store,
    field: SubjectField,
    value: &str,
) -> Result<Vec<u64>, ErasureError> {
    let mut out = Vec::new();
    let mut bad = None;
    store.scan_stored(0, &mut |ev| {
        match decode_view(&ev.entry) {
            Ok(v) if v.subject(field) == Some(value) => out.push(ev.seq),
            Ok(_) => {}
            Err(e) => {
                bad = Some(StoreError::Corrupt {
                    location: format!("seq {}", ev.seq),
                    problem: e.to_string(),
                });
                return ControlFlow::Break(());
            }
        }
        ControlFlow::Continue(())
    })?;
    match bad {
        Some(e) => Err(e.into()),
        None => Ok(out),
    }
}

/// The selected events whose payloads are still there, with their ids; refuses if a hold in
/// force covers any selected event.
pub fn plan(
    store: &dyn Store,
    target: &Target,
) -> Result<(Vec<(u64, EventId)>, Outcome), ErasureError> {
    let seqs = select(store, target)?;
    let holds: Vec<_> = holds::list(store)?
        .into_iter()
        .filter(|h| h.active())
        .collect();
    let mut outcome = Outcome {
        matched: seqs.len() as u64,
        ..Outcome::default()
    };
    let mut todo = Vec::new();
    let mut held: Option<(String, u64, String)> = None;
    for seq in seqs {
        // As stored: a payload the archive keeps is kept, and is not fetched to be erased.
        let ev = store.stored_event(seq)?;
        let view = decode_view(&ev.entry).map_err(|e| StoreError::Corrupt {
            location: format!("seq {seq}"),
            problem: e.to_string(),
        })?;
        if let Some(h) = holds.iter().find(|h| h.scope.covers(&view)) {
            let entry = held.get_or_insert_with(|| (h.hold.clone(), 0, view.id.to_string()));
            entry.1 += 1;
        }
        if is_reserved_kind(view.kind) {
            outcome.kept_records += 1;
        } else if ev.payload.is_some() || ev.payload_in_archive() {
            todo.push((seq, view.id));
        } else {
            outcome.already_removed += 1;
        }
    }
    if let Some((hold, count, example)) = held {
        return Err(ErasureError::Held {
            hold,
            count,
            example,
        });
    }
    Ok((todo, outcome))
}

/// Removes payloads from another copy (the cold archive) before the log's own are removed,
/// so that a run cut short between the two leaves them due and the next run repeats both.
pub type OtherCopies<'a> = &'a mut dyn FnMut(&[u64]) -> Result<(), ErasureError>;

/// Erases the payloads `target` selects, recording why; see the module docs. `copies`
/// removes them from other copies first.
pub fn erase(
    store: &dyn Store,
    target: &Target,
    reason: &str,
    actor: &str,
    person: bool,
    copies: OtherCopies<'_>,
) -> Result<Outcome, ErasureError> {
    if reason.trim().is_empty() {
        return Err(ErasureError::NoReason);
    }
    let (todo, mut outcome) = plan(store, target)?;
    let base = json!({"reason": reason, "criteria": target.criteria()});
    let (erased, recorded) = remove_recorded(
        store,
        "governance.payload_erased",
        &base,
        &todo,
        actor,
        person,
        copies,
    )?;
    outcome.erased = erased;
    outcome.recorded = recorded;
    Ok(outcome)
}

/// Refuses if a hold in force at the log position `remover` covers any of `seqs`: a hold
/// placed (by another server) after the selection was planned but before the removal was
/// recorded still wins. A hold recorded after the removal comes after it in the log.
fn check_no_hold_before(store: &dyn Store, seqs: &[u64], remover: u64) -> Result<(), ErasureError> {
    let holds: Vec<_> = holds::list(store)?
        .into_iter()
        .filter(|h| h.created_seq < remover && h.released_seq.is_none_or(|r| r > remover))
        .collect();
    if holds.is_empty() {
        return Ok(());
    }
    for &seq in seqs {
        let ev = store.stored_event(seq)?;
        let view = decode_view(&ev.entry).map_err(|e| StoreError::Corrupt {
            location: format!("seq {seq}"),
            problem: e.to_string(),
        })?;
        if let Some(h) = holds.iter().find(|h| h.scope.covers(&view)) {
            return Err(ErasureError::Held {
                hold: h.hold.clone(),
                count: 1,
                example: view.id.to_string(),
            });
        }
    }
    Ok(())
}

/// Records removal events of `kind` — the attributes `base` plus `events`, the ids, at most
/// [`IDS_PER_EVENT`] per event — and removes the payloads each one names, from `copies` first
/// and then from the log. Returns the payloads removed from the log and the seqs of the events
/// recorded.
pub fn remove_recorded(
    store: &dyn Store,
    kind: &str,
    base: &serde_json::Value,
    todo: &[(u64, EventId)],
    actor: &str,
    person: bool,
    copies: OtherCopies<'_>,
) -> Result<(u64, Vec<u64>), ErasureError> {
    let (mut removed, mut recorded) = (0, Vec::new());
    for batch in todo.chunks(IDS_PER_EVENT * EVENTS_PER_BATCH) {
        let mut pairs = Vec::with_capacity(batch.len());
        let mut failed = None;
        for chunk in batch.chunks(IDS_PER_EVENT) {
            match record_chunk(store, kind, base, chunk, actor, person, copies) {
                Ok(remover) => {
                    recorded.push(remover);
                    pairs.extend(chunk.iter().map(|(s, _)| (*s, remover)));
                }
                Err(e) => {
                    failed = Some(e);
                    break;
                }
            }
        }
        // The chunks recorded and cleared from other copies are removed from the log even
        // when a later chunk failed, so that no recorded removal is left undone.
        removed += store.remove_payload_batch(&pairs)?;
        if let Some(e) = failed {
            return Err(e);
        }
    }
    Ok((removed, recorded))
}

/// Records the removal event of one chunk (its ids), checks holds again and removes the
/// payloads from `copies`; returns the event's seq.
fn record_chunk(
    store: &dyn Store,
    kind: &str,
    base: &serde_json::Value,
    chunk: &[(u64, EventId)],
    actor: &str,
    person: bool,
    copies: OtherCopies<'_>,
) -> Result<u64, ErasureError> {
    let ids: Vec<String> = chunk.iter().map(|(_, id)| id.to_string()).collect();
    let mut attributes = base.clone();
    attributes["events"] = json!(ids);
    let event = governance_event(kind, attributes, actor, person)
        .map_err(|e| ErasureError::Event(e.to_string()))?;
    let receipt = store.append(vec![event])?;
    let remover = receipt
        .events
        .first()
        .map(|e| e.seq)
        .ok_or_else(|| ErasureError::Event("the append returned no receipt".into()))?;
    let seqs: Vec<u64> = chunk.iter().map(|(s, _)| *s).collect();
    check_no_hold_before(store, &seqs, remover)?;
    copies(&seqs)?;
    Ok(remover)
}
