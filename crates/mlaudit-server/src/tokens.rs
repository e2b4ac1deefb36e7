//! The token administration endpoints (`admin` role): list, create, change role, revoke. Every
//! change is recorded in the log as a `governance.access_changed` event, durably, and takes
//! effect only then ([`Tokens::apply`]): if the log cannot take the event, the change is not
//! made and the admin gets the log's error.

use crate::auth::{now_ns, Change, ChangeError, Principal, Role, Staged, TokenError, Tokens};
use crate::error::ApiError;
use crate::AppState;
use crate::Shown;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use mlaudit_core::event::format_time;
use serde::Deserialize;
use serde_json::{json, Value};

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

impl From<ChangeError> for ApiError {
    fn from(e: ChangeError) -> ApiError {
        match e {
            ChangeError::Token(e) => e.into(),
            ChangeError::Log(e) => e.into(),
        }
    }
}

type Table = std::sync::Arc<std::sync::RwLock<Tokens>>;

fn tokens(state: &AppState) -> Result<Table, ApiError> {
    state.tokens.clone().ok_or_else(|| {
        ApiError::NotFound(
            "this server runs without authentication (--danger-no-auth): it has no tokens".into(),
        )
    })
}

/// Makes a change on a blocking thread (it takes a file lock, writes the file and waits for
/// the log), durably, before answering.
async fn change(state: &AppState, actor: Principal, c: Change) -> Result<Staged, ApiError> {
    let table = tokens(state)?;
    let store = state.store.clone();
    tokio::task::spawn_blocking(move || Tokens::apply(&table, &*store, &actor, c, now_ns()))
        .await
        .map_err(|e| ApiError::Internal(format!("token task failed: {e}")))?
        .map_err(ApiError::from)
}

pub async fn list(State(state): State<AppState>) -> Result<Response, ApiError> {
    let table = tokens(&state)?;
    let t = table
        .read()
        .map_err(|_| ApiError::Internal("token lock poisoned".into()))?;
    let list: Vec<Value> = t
        .list()
        .iter()
        .map(|r| json!({ "name": r.name, "role": r.role, "created": r.created, "revoked": r.revoked, "expires": r.expires }))
        .collect();
    let shown = list.len();
    let mut response = Json(json!({ "tokens": list })).into_response();
    response.extensions_mut().insert(Shown(shown));
    Ok(response)
}

/// Body of `POST /v1/tokens` and `PUT /v1/tokens/{name}`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenRequest {
    name: Option<String>,
    role: String,
    /// How long a new token works, e.g. `90d`, `12h` (null or absent: until revoked).
    expires_in: Option<String>,
}

fn role(text: &str) -> Result<Role, ApiError> {
    Role::parse(text).ok_or_else(|| {
        ApiError::BadRequest(format!("role {text:?} is not one of writer, reader, admin"))
    })
}

/// Parses a duration such as `90d`, `12h`, `30m` or `45s` into nanoseconds: 1 to 99,999 units
/// (no leading zero) of days, hours, minutes or seconds.
pub fn parse_duration_ns(text: &str) -> Option<i64> {
    let unit = text.chars().last()?;
    let digits = &text[..text.len() - unit.len_utf8()];
    let well_formed = (1..=5).contains(&digits.len())
        && digits.bytes().all(|b| b.is_ascii_digit())
        && !digits.starts_with('0');
    if !well_formed {
        return None;
    }
    let seconds = match unit {
        'd' => 86_400,
        'h' => 3_600,
        'm' => 60,
        's' => 1,
        _ => return None,
    };
    let n: i64 = digits.parse().ok()?;
    Some(n * seconds * 1_000_000_000)
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
    let expires_ns = match req.expires_in.as_deref() {
        None => None,
        Some(text) => {
            let ns = parse_duration_ns(text).ok_or_else(|| {
                ApiError::BadRequest(format!(
                    "expires_in {text:?} is not a duration of 1 to 99999 days, hours, minutes or seconds, such as 90d, 12h, 30m or 45s"
                ))
            })?;
            Some(now_ns().saturating_add(ns))
        }
    };
    let c = Change::Create {
        name,
        role,
        expires_ns,
    };
    let done = change(&state, actor, c).await?;
    Ok((
        StatusCode::CREATED,
        Json(
            json!({ "name": done.name, "role": done.role, "token": done.token, "expires": expires_ns.map(format_time) }),
        ),
    ))
}

pub async fn set_role(
    State(state): State<AppState>,
    Extension(actor): Extension<Principal>,
    Path(name): Path<String>,
    req: Result<Json<TokenRequest>, axum::extract::rejection::JsonRejection>,
) -> Result<Json<Value>, ApiError> {
    let req = body(req)?;
    if req.expires_in.is_some() {
        return Err(ApiError::BadRequest(
            "expires_in is set when a token is created".into(),
        ));
    }
    let role = role(&req.role)?;
    let done = change(&state, actor, Change::SetRole { name, role }).await?;
    Ok(Json(
        json!({ "name": done.name, "role": done.role, "previous_role": done.previous_role }),
    ))
}

pub async fn revoke(
    State(state): State<AppState>,
    Extension(actor): Extension<Principal>,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let done = change(&state, actor, Change::Revoke { name }).await?;
    Ok(Json(
        json!({ "name": done.name, "role": done.role, "revoked": true }),
    ))
}

#[cfg(test)]
mod tests {
    use super::parse_duration_ns;

    #[test]
    fn durations_are_1_to_99999_units_without_leading_zeros() {
        const S: i64 = 1_000_000_000;
        assert_eq!(parse_duration_ns("90d"), Some(90 * 86_400 * S));
        assert_eq!(parse_duration_ns("12h"), Some(12 * 3_600 * S));
        assert_eq!(parse_duration_ns("30m"), Some(30 * 60 * S));
        assert_eq!(parse_duration_ns("99999d"), Some(99_999 * 86_400 * S));
        for bad in [
            "", "d", "0d", "01d", "100000s", "1w", "1.5d", "-1d", "1 d", "1é",
        ] {
            assert_eq!(parse_duration_ns(bad), None, "{bad:?}");
        }
    }
}
