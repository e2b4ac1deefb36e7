//! Payload expiry: each rule's `expire` age applied to the payloads it covers. An expiry is
//! recorded first, as `governance.payload_expired` events naming the rule and the ids (at most
//! 1,000 per event), and each payload is then removed naming its event
//! (`mlaudit_store::erasure::remove_recorded`) — from the cold archive's payload bundles first,
//! then from the log; entries, leaves and checkpoints stay, so every proof still verifies. A
//! run cut short leaves payloads due, which the next run expires.
//!
//! **Invariants:** an event a hold in force covers never expires; the trail's own records (the
//! server-only kinds) never expire whatever the rules say.

use super::policy::Policy;
use crate::ledger::Ledger;
use crate::output::Progress;
use anyhow::Result;
use mlaudit_archive::remove::Removed;
use mlaudit_archive::Archive;
use mlaudit_core::entry::{decode_view, EventId};
use mlaudit_core::event::is_reserved_kind;
use mlaudit_store::erasure::ErasureError;
use mlaudit_store::prelude::*;
use mlaudit_store::Store;
use std::ops::ControlFlow;

/// What one rule makes due.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleDue {
    pub text: String,
    /// Payloads still kept that the rule makes due: (seq, id).
    pub due: Vec<(u64, EventId)>,
    /// Payloads it would make due that legal holds keep.
    pub held: u64,
}

/// Per rule, the payloads due at `now_ns` (a scan of the events old enough for the rule with
/// the shortest age).
pub fn due(store: &Ledger, policy: &Policy, now_ns: i64) -> Result<Vec<RuleDue>> {
    let mut due: Vec<RuleDue> = policy
        .rules
        .iter()
        .map(|r| RuleDue {
            text: r.text.clone(),
            due: Vec::new(),
            held: 0,
        })
        .collect();
    let holds: Vec<_> = mlaudit_store::holds::list(store)?
        .into_iter()
        .filter(|h| h.active())
        .collect();
    let Some(shortest) = policy.rules.iter().filter_map(|r| r.expire_ns).min() else {
        return Ok(due);
    };
    let end = super::first_received_since(store, now_ns.saturating_sub(shortest))?;
    if end == 0 {
        return Ok(due);
    }
    let mut progress = Progress::new("planning payload expiry", end);
    let mut failure = None;
    // Entries decide; a payload kept only in the archive is kept all the same.
    store.scan_stored(0, &mut |ev| {
        progress.set(ev.seq + 1);
        if ev.seq >= end {
            return ControlFlow::Break(());
        }
        let view = match decode_view(&ev.entry) {
            Ok(v) => v,
            Err(e) => {
                failure = Some(anyhow::anyhow!("decoding entry {}: {e}", ev.seq));
                return ControlFlow::Break(());
            }
        };
        let kept = ev.payload.is_some() || ev.payload_in_archive();
        if !kept || is_reserved_kind(view.kind) {
            return ControlFlow::Continue(());
        }
        if let Some(i) = policy.rule_for(&view) {
            let expired = policy.rules[i]
                .expire_ns
                .is_some_and(|age| view.receipt_time_ns < now_ns.saturating_sub(age));
            if expired {
                if holds.iter().any(|h| h.scope.covers(&view)) {
                    due[i].held += 1;
                } else {
                    due[i].due.push((ev.seq, view.id));
                }
            }
        }
        ControlFlow::Continue(())
    })?;
    progress.finish();
    match failure {
        Some(e) => Err(e),
        None => Ok(due),
    }
}

/// What expiring one rule's payloads did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expired {
    pub text: String,
    pub removed: u64,
    /// Seqs of the `governance.payload_expired` events recorded.
    pub recorded: Vec<u64>,
}

/// Removes the payloads of `seqs` from the archive's bundles, if there is an archive, adding
/// what it did to `tally`: the other copy that erasure and expiry clear before the log's own.
pub fn remove_archived(
    archive: Option<&Archive>,
    seqs: &[u64],
    tally: &mut Removed,
) -> Result<(), ErasureError> {
    if let Some(a) = archive {
        let done = a
            .remove_payloads(seqs)
            .map_err(|e| ErasureError::Elsewhere(format!("{}: {e}", a.url())))?;
        tally.payloads += done.payloads;
        tally.bundles += done.bundles;
    }
    Ok(())
}

/// Expires what `due` lists, rule by rule, from `archive` (if any) first, then from the log.
pub fn expire(
    store: &dyn Store,
    due: &[RuleDue],
    archive: Option<&Archive>,
    actor: &str,
    person: bool,
) -> Result<Vec<Expired>> {
    let mut out = Vec::new();
    for rule in due.iter().filter(|r| !r.due.is_empty()) {
        let base = serde_json::json!({"rule": rule.text});
        let mut from_archive =
            |seqs: &[u64]| remove_archived(archive, seqs, &mut Removed::default());
        let (removed, recorded) = mlaudit_store::erasure::remove_recorded(
            store,
            "governance.payload_expired",
            &base,
            &rule.due,
            actor,
            person,
            &mut from_archive,
        )?;
        out.push(Expired {
            text: rule.text.clone(),
            removed,
            recorded,
        });
    }
    Ok(out)
}
