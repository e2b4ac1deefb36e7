//! The token administration endpoints (`admin` role): list, create, change role, revoke. Every
//! change is recorded in the log as a `governance.access_changed` event, durably, before the
//! response. If that append fails, a grant or role change is undone; a revocation stands.

use crate::auth::{access_changed_event, Principal, Role, TokenError};
use crate::error::ApiError;
use crate::AppState;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::{Extension, Json};
use mlaudit_core::event::{format_time, prepare_reserved};
use serde::Deserialize;
use serde_json::{json, Value};

fn now() -> String {
    let ns = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0);
    format_time(ns)
}

impl From<TokenError> for ApiError {
    fn from(e: TokenError) -> ApiError {
        match e {
            TokenError::Exists(_) => ApiError::Conflict(e.to_string()),
            TokenError::Unknown(_) => ApiError::NotFound(e.to_string()),
            TokenError::BadName(_) => ApiError::BadRequest(e.to_string()),
            other => ApiError::Internal(other.to_string()),
        }
    }
}

fn tokens(
    state: &AppState,
) -> Result<&std::sync::Arc<std::sync::RwLock<crate::auth::Tokens>>, ApiError> {
    state.tokens.as_ref().ok_or_else(|| {
        ApiError::NotFound(
            "this server runs without authentication (--danger-no-auth): it has no tokens".into(),
        )
    })
}

/// Appends the access change durably.
async fn record(
    state: &AppState,
    actor: &Principal,
    name: &str,
    role: Role,
    change: &str,
) -> Result<(), ApiError> {
    let event = prepare_reserved(
        &access_changed_event(actor, name, role, change),
        &actor.name,
    )
    .map_err(|e| ApiError::Internal(e.to_string()))?;
    let store = state.store.clone();
    tokio::task::spawn_blocking(move || store.append(vec![event]))
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))??;
    Ok(())
}

pub async fn list(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    let t = tokens(&state)?
        .read()
        .map_err(|_| ApiError::Internal("token lock poisoned".into()))?;
    let list: Vec<Value> = t.list().iter().map(|r| json!({ "name": r.name, "role": r.role, "created": r.created, "revoked": r.revoked })).collect();
    Ok(Json(json!({ "tokens": list })))
}

/// Body of `POST /v1/tokens` and `PUT /v1/tokens/{name}`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenRequest {
    name: Option<String>,
    role: String,
}

fn role(text: &str) -> Result<Role, ApiError> {
    Role::parse(text).ok_or_else(|| {
        ApiError::BadRequest(format!("role {text:?} is not one of writer, reader, admin"))
    })
}

fn body(
    b: Result<Json<TokenRequest>, axum::extract::rejection::JsonRejection>,
) -> Result<TokenRequest, ApiError> {
    b.map(|Json(r)| r)
        .map_err(|e| ApiError::BadRequest(e.body_text()))
}

pub async fn create(
    State(state): State<AppState>,
    Extension(actor): Extension<Principal>,
    req: Result<Json<TokenRequest>, axum::extract::rejection::JsonRejection>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let req = body(req)?;
    let role = role(&req.role)?;
    let name = req
        .name
        .ok_or_else(|| ApiError::BadRequest("name is required".into()))?;
    let table = tokens(&state)?.clone();
    let token = table
        .write()
        .map_err(|_| ApiError::Internal("token lock poisoned".into()))?
        .create(&name, role, &now())?;
    if let Err(e) = record(&state, &actor, &name, role, "granted").await {
        let _ = table.write().map(|mut t| t.revoke(&name, &now()));
        return Err(e);
    }
    Ok((
        StatusCode::CREATED,
        Json(json!({ "name": name, "role": role, "token": token })),
    ))
}

pub async fn set_role(
    State(state): State<AppState>,
    Extension(actor): Extension<Principal>,
    Path(name): Path<String>,
    req: Result<Json<TokenRequest>, axum::extract::rejection::JsonRejection>,
) -> Result<Json<Value>, ApiError> {
    let req = body(req)?;
    let role = role(&req.role)?;
    let table = tokens(&state)?.clone();
    let old = table
        .write()
        .map_err(|_| ApiError::Internal("token lock poisoned".into()))?
        .set_role(&name, role)?;
    if let Err(e) = record(&state, &actor, &name, role, "granted").await {
        let _ = table.write().map(|mut t| t.set_role(&name, old));
        return Err(e);
    }
    Ok(Json(
        json!({ "name": name, "role": role, "previous_role": old }),
    ))
}

pub async fn revoke(
    State(state): State<AppState>,
    Extension(actor): Extension<Principal>,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let table = tokens(&state)?.clone();
    let role = table
        .write()
        .map_err(|_| ApiError::Internal("token lock poisoned".into()))?
        .revoke(&name, &now())?;
    record(&state, &actor, &name, role, "revoked").await?;
    Ok(Json(json!({ "name": name, "role": role, "revoked": true })))
}
