//! W&B audit logs (JSONL: one flat object per line — `timestamp`, `action`,
//! `actor_user_id`, `actor_email`, `user_email`, `artifact_qualified_name`, …; keys that do
//! not apply are absent) → governance and custom kinds.
//!
//! * Membership and credential changes (`team:invite_user`, `team:uninvite`, `user:create`,
//!   `user:deactivate`, `user:reactivate`, `user:permanently_delete`, `user:create_api_key`,
//!   `user:delete_api_key`, `team:create_service_account`) → `governance.access_changed`
//!   with `attributes.system = "wandb"`: access to W&B, recorded by the operator's import
//!   (a reserved kind: the importer writes it, never a client).
//! * Every other action → `x.wandb.<object>.<verb>`; artifact actions carry the artifact as
//!   `subject.model` / `subject.version` (`entity/project/name` and its alias or version).
//!
//! The whole line is kept in `attributes.wandb`. Ids derive from the line's SHA-256, so
//! importing the same file twice writes nothing new.

use crate::{custom_kind, malformed, sha256_hex, Actor, Draft, TranslateError};
use serde_json::Value;

/// (action, role granted or revoked, change).
const ACCESS: &[(&str, &str, &str)] = &[
    ("team:invite_user", "team member", "granted"),
    ("team:uninvite", "team member", "revoked"),
    ("team:create_service_account", "service account", "granted"),
    ("user:create", "user", "granted"),
    ("user:reactivate", "user", "granted"),
    ("user:deactivate", "user", "revoked"),
    ("user:permanently_delete", "user", "revoked"),
    ("user:create_api_key", "api key", "granted"),
    ("user:delete_api_key", "api key", "revoked"),
];

/// Whether an event of this kind must be written as a reserved (importer-only) kind.
pub fn is_reserved(event: &Value) -> bool {
    event.get("kind").and_then(Value::as_str) == Some("governance.access_changed")
}

/// The event of one audit-log line.
pub fn audit_line(line: &str) -> Result<Value, TranslateError> {
    let entry: Value =
        serde_json::from_str(line).map_err(|e| malformed(format!("not a JSON object: {e}")))?;
    if !entry.is_object() {
        return Err(malformed("a W&B audit-log line must be a JSON object"));
    }
    let action = crate::text(&entry, "action")
        .map(str::trim)
        .filter(|a| !a.is_empty())
        .ok_or_else(|| malformed("the line has no action"))?
        .to_owned();
    let time =
        crate::text(&entry, "timestamp").ok_or_else(|| malformed("the line has no timestamp"))?;
    if mlaudit_core::event::parse_time(time).is_none() {
        return Err(malformed(format!(
            "timestamp {:?} is not RFC 3339",
            time.chars().take(64).collect::<String>()
        )));
    }
    let actor = match (
        crate::text(&entry, "actor_email").filter(|s| !s.is_empty()),
        crate::text(&entry, "actor_user_id").filter(|s| !s.is_empty()),
    ) {
        (Some(email), _) => Actor::user(email),
        (None, Some(id)) => Actor::user(format!("wandb-user:{id}")),
        (None, None) => Actor::service("wandb"),
    };
    let key = sha256_hex(line.trim().as_bytes());
    let mut draft = match ACCESS.iter().find(|(a, _, _)| *a == action) {
        Some((_, role, change)) => {
            let principal = crate::text(&entry, "user_email")
                .or_else(|| crate::text(&entry, "user_asset"))
                .or_else(|| crate::text(&entry, "actor_email"))
                .unwrap_or("unknown")
                .to_owned();
            Draft::new("wandb-audit", &key, "governance.access_changed", actor)
                .attr("principal", principal)
                .attr("role", *role)
                .attr("change", *change)
                .attr("system", "wandb")
        }
        None => {
            let kind = custom_kind("wandb", &action.replace(':', "."));
            let mut d = Draft::new("wandb-audit", &key, kind, actor);
            if let Some(name) = crate::text(&entry, "artifact_qualified_name") {
                let (model, version) = match name.rsplit_once(':') {
                    Some((m, v)) => (m, Some(v)),
                    None => (name, None),
                };
                d = d.subject("model", model);
                if let Some(v) = version {
                    d = d.subject("version", v);
                }
            }
            d
        }
    };
    draft = draft
        .time(Some(time.to_owned()))
        .attr("action", action)
        .attr("wandb", entry);
    Ok(draft.build())
}
