//! Legal holds. A hold is created by a `governance.hold_created` event and ends with a
//! `governance.hold_released` event naming it; both are reserved kinds, written only by the
//! server and the command line on an admin's behalf, so a writer can neither create nor
//! release one. The holds in force are folded from the log itself ([`list`]): there is no
//! other state to lose or to tamper with.
//!
//! **Invariant:** an event any hold in force covers ([`HoldScope::covers`]) never expires and
//! never loses its payload.

use crate::{seqs_of_kind, Store, StoreError};
use mlaudit_core::entry::{decode_view, EntryView, EventId, SubjectField};
use mlaudit_core::event::{format_time, parse_time_bound, prepare_reserved, PreparedEvent};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

/// What a hold covers: events matching every criterion given among model, version, dataset
/// and event time (`from` inclusive, `to` exclusive), and every event listed by id.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HoldScope {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dataset: Option<String>,
    /// RFC 3339.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    /// RFC 3339.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub events: Vec<String>,
}

/// A hold, as the log records it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Hold {
    pub hold: String,
    pub reason: String,
    pub scope: HoldScope,
    /// Seq of its `governance.hold_created` event.
    pub created_seq: u64,
    pub created_by: String,
    pub created: String,
    /// Seq of its `governance.hold_released` event, once released.
    pub released_seq: Option<u64>,
    pub released_by: Option<String>,
    pub release_reason: Option<String>,
}

impl Hold {
    pub fn active(&self) -> bool {
        self.released_seq.is_none()
    }
}

/// Why a hold request is refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HoldError {
    #[error("a hold needs a scope: --model, --version, --dataset, --from/--to or --events")]
    EmptyScope,
    #[error("{0}: not an RFC 3339 time")]
    BadTime(String),
    #[error("{0}: not an event id (a UUID)")]
    BadId(String),
    #[error("a hold needs a reason")]
    NoReason,
    #[error("no hold {0}")]
    Unknown(String),
    #[error("hold {0} was already released (seq {1})")]
    Released(String, u64),
    #[error("recording the hold: {0}")]
    Event(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A scope's time bounds in unix ns (times beyond 1677..2262 clamp to those ends).
fn bounds(scope: &HoldScope) -> Result<(Option<i64>, Option<i64>), HoldError> {
    let t = |text: &Option<String>| {
        text.as_deref()
            .map(|s| parse_time_bound(s).ok_or_else(|| HoldError::BadTime(s.to_owned())))
            .transpose()
    };
    Ok((t(&scope.from)?, t(&scope.to)?))
}

impl HoldScope {
    /// Checks it names something, its times parse and its ids are ids; writes each id in its
    /// canonical form (lowercase, hyphenated), the one [`HoldScope::covers`] compares.
    pub fn check(&mut self) -> Result<(), HoldError> {
        bounds(self)?;
        for id in &mut self.events {
            *id = EventId::parse(id)
                .ok_or_else(|| HoldError::BadId(id.clone()))?
                .to_string();
        }
        let criteria = self.model.is_some()
            || self.version.is_some()
            || self.dataset.is_some()
            || self.from.is_some()
            || self.to.is_some();
        if !criteria && self.events.is_empty() {
            return Err(HoldError::EmptyScope);
        }
        Ok(())
    }

    /// Whether the hold covers the event `entry`.
    pub fn covers(&self, entry: &EntryView<'_>) -> bool {
        if self.events.iter().any(|id| *id == entry.id.to_string()) {
            return true;
        }
        let subject = |want: &Option<String>, field| {
            want.as_deref()
                .is_none_or(|w| entry.subject(field) == Some(w))
        };
        let Ok((from, to)) = bounds(self) else {
            // A scope that does not parse covers everything: a hold errs on keeping.
            return true;
        };
        let any = self.model.is_some()
            || self.version.is_some()
            || self.dataset.is_some()
            || from.is_some()
            || to.is_some();
        any && subject(&self.model, SubjectField::Model)
            && subject(&self.version, SubjectField::Version)
            && subject(&self.dataset, SubjectField::Dataset)
            && from.is_none_or(|f| entry.event_time_ns >= f)
            && to.is_none_or(|t| entry.event_time_ns < t)
    }
}

pub(crate) fn governance_event(
    kind: &str,
    attributes: Value,
    actor: &str,
    person: bool,
) -> Result<PreparedEvent, HoldError> {
    let event = json!({
        "kind": kind,
        "actor": {"id": actor, "type": if person { "user" } else { "service" }},
        "attributes": attributes,
    });
    prepare_reserved(&event.to_string(), actor).map_err(|e| HoldError::Event(e.to_string()))
}

/// A new hold's id: `hold-` and 12 random hex digits.
pub fn new_id() -> String {
    format!("hold-{}", &uuid::Uuid::new_v4().simple().to_string()[..12])
}

/// The `governance.hold_created` event of a new hold `hold` (an id the caller chose).
pub fn create_event(
    hold: &str,
    scope: &mut HoldScope,
    reason: &str,
    actor: &str,
    person: bool,
) -> Result<PreparedEvent, HoldError> {
    scope.check()?;
    if reason.trim().is_empty() {
        return Err(HoldError::NoReason);
    }
    let attributes = json!({"hold": hold, "reason": reason, "scope": scope});
    governance_event("governance.hold_created", attributes, actor, person)
}

/// The `governance.hold_released` event ending the hold `hold`, which must be in force.
pub fn release_event(
    store: &dyn Store,
    hold: &str,
    reason: &str,
    actor: &str,
    person: bool,
) -> Result<PreparedEvent, HoldError> {
    let found = list(store)?
        .into_iter()
        .find(|h| h.hold == hold)
        .ok_or_else(|| HoldError::Unknown(hold.to_owned()))?;
    if let Some(seq) = found.released_seq {
        return Err(HoldError::Released(hold.to_owned(), seq));
    }
    if reason.trim().is_empty() {
        return Err(HoldError::NoReason);
    }
    governance_event(
        "governance.hold_released",
        json!({"hold": hold, "reason": reason}),
        actor,
        person,
    )
}

/// An event's attributes, principal and receipt time.
fn read(store: &dyn Store, seq: u64) -> Result<(Value, String, i64), StoreError> {
    let ev = store.event(seq)?;
    let corrupt = |problem: String| StoreError::Corrupt {
        location: format!("seq {seq}"),
        problem,
    };
    let view = decode_view(&ev.entry).map_err(|e| corrupt(e.to_string()))?;
    let attributes = match &ev.payload {
        Some(p) => serde_json::from_slice::<Value>(p)
            .map_err(|e| corrupt(format!("payload: {e}")))?
            .get("attributes")
            .cloned()
            .unwrap_or(Value::Null),
        None => Value::Null,
    };
    Ok((attributes, view.principal.to_owned(), view.receipt_time_ns))
}

/// Every hold the log records, in order of creation, with its release if any.
pub fn list(store: &dyn Store) -> Result<Vec<Hold>, StoreError> {
    let mut holds = Vec::new();
    for seq in seqs_of_kind(store, "governance.hold_created")? {
        let (a, by, at) = read(store, seq)?;
        let scope = serde_json::from_value(a["scope"].clone()).unwrap_or_else(|_| HoldScope {
            // A scope this build cannot read covers everything: a hold errs on keeping.
            from: Some("0000-01-01T00:00:00Z".into()),
            ..HoldScope::default()
        });
        holds.push(Hold {
            hold: a["hold"].as_str().unwrap_or_default().to_owned(),
            reason: a["reason"].as_str().unwrap_or_default().to_owned(),
            scope,
            created_seq: seq,
            created_by: by,
            created: format_time(at),
            released_seq: None,
            released_by: None,
            release_reason: None,
        });
    }
    for seq in seqs_of_kind(store, "governance.hold_released")? {
        let (a, by, _) = read(store, seq)?;
        let name = a["hold"].as_str().unwrap_or_default();
        if let Some(h) = holds
            .iter_mut()
            .find(|h| h.hold == name && h.created_seq < seq && h.released_seq.is_none())
        {
            h.released_seq = Some(seq);
            h.released_by = Some(by);
            h.release_reason = a["reason"].as_str().map(str::to_owned);
        }
    }
    Ok(holds)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "a unit test fails loudly")]
    use super::*;
    use mlaudit_core::event::prepare;

    fn entry(json: &str) -> Vec<u8> {
        let p = prepare(json, "t").unwrap();
        let e = mlaudit_core::entry::Entry {
            seq: 3,
            event_time_ns: p.event_time_ns.unwrap(),
            receipt_time_ns: 2_000,
            id: p.id.unwrap(),
            payload_sha256: p.payload_sha256,
            payload_len: p.payload.len() as u32,
            actor_type: p.actor_type,
            kind: p.kind,
            actor_id: p.actor_id,
            principal: p.principal,
            subjects: p.subjects,
        };
        mlaudit_core::entry::encode(&e).unwrap()
    }

    #[test]
    fn a_scope_needs_a_criterion_and_covers_only_what_matches_all_of_them() {
        assert!(HoldScope::default().check().is_err());
        let mut bad_id = HoldScope {
            events: vec!["nope".into()],
            ..HoldScope::default()
        };
        assert!(bad_id.check().is_err());
        let mut bad_time = HoldScope {
            from: Some("yesterday".into()),
            ..HoldScope::default()
        };
        assert!(bad_time.check().is_err());
        let bytes = entry(
            r#"{"id":"6f9619ff-8b86-d011-b42d-00c04fc964ff","time":"2026-03-01T00:00:00Z","kind":"prediction.served","actor":{"id":"a","type":"service"},"subject":{"model":"credit","version":"3","request":"r"},"attributes":{"inputs":1,"outputs":2}}"#,
        );
        let e = decode_view(&bytes).unwrap();
        let scope = |model: &str, version: Option<&str>, from: Option<&str>| HoldScope {
            model: Some(model.into()),
            version: version.map(str::to_owned),
            from: from.map(str::to_owned),
            ..HoldScope::default()
        };
        assert!(scope("credit", None, None).covers(&e));
        assert!(scope("credit", Some("3"), Some("2026-01-01T00:00:00Z")).covers(&e));
        assert!(!scope("credit", Some("4"), None).covers(&e));
        assert!(!scope("credit", None, Some("2026-04-01T00:00:00Z")).covers(&e));
        assert!(!scope("churn", None, None).covers(&e));
        let mut by_id = HoldScope {
            events: vec!["6F9619FF8B86D011B42D00C04FC964FF".into()],
            ..HoldScope::default()
        };
        by_id.check().unwrap();
        assert!(by_id.covers(&e), "{by_id:?}");
    }
}
