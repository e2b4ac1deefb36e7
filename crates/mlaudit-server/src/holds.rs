//! Legal holds over the API: `GET /v1/holds` (reader, recorded as a read), `POST /v1/holds`
//! and `POST /v1/holds/{hold}/release` (admin). A hold and its release take effect when their
//! governance event is durable in the log (see `mlaudit_store::holds`).

use crate::auth::Principal;
use crate::error::ApiError;
use crate::read::blocking;
use crate::{AppState, Shown};
use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use mlaudit_store::holds::{self, HoldError, HoldScope};
use serde::Deserialize;
use serde_json::{json, Value};

impl From<HoldError> for ApiError {
    fn from(e: HoldError) -> ApiError {
        match e {
            HoldError::Unknown(_) => ApiError::NotFound(e.to_string()),
            HoldError::Released(..) => ApiError::Conflict(e.to_string()),
            HoldError::Store(e) => ApiError::Store(e),
            HoldError::Event(_) => ApiError::Internal(e.to_string()),
            other => ApiError::BadRequest(other.to_string()),
        }
    }
}

/// Body of `POST /v1/holds`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HoldRequest {
    reason: String,
    model: Option<String>,
    version: Option<String>,
    dataset: Option<String>,
    from: Option<String>,
    to: Option<String>,
    #[serde(default)]
    events: Vec<String>,
}

/// Body of `POST /v1/holds/{hold}/release`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReleaseRequest {
    reason: Option<String>,
}

pub async fn list(State(state): State<AppState>) -> Result<Response, ApiError> {
    let all = blocking(&state, |store| Ok(holds::list(store)?)).await?;
    let shown = all.len();
    let list: Vec<Value> = all
        .into_iter()
        .map(|h| {
            let mut v = json!(h);
            v["active"] = json!(h.active());
            v
        })
        .collect();
    let mut response = Json(json!({ "holds": list })).into_response();
    response.extensions_mut().insert(Shown(shown));
    Ok(response)
}

pub async fn create(
    State(state): State<AppState>,
    Extension(actor): Extension<Principal>,
    req: Result<Json<Value>, JsonRejection>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let Json(body) = req.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    // A criterion given as null would read as absent: refuse it rather than guess.
    if let Some((k, _)) = body
        .as_object()
        .and_then(|o| o.iter().find(|(_, v)| v.is_null()))
    {
        return Err(ApiError::BadRequest(format!("{k} may not be null")));
    }
    let req: HoldRequest =
        serde_json::from_value(body).map_err(|e| ApiError::BadRequest(e.to_string()))?;
    let mut scope = HoldScope {
        model: req.model,
        version: req.version,
        dataset: req.dataset,
        from: req.from,
        to: req.to,
        events: req.events,
    };
    let hold = holds::new_id();
    let event = holds::create_event(&hold, &mut scope, &req.reason, &actor.name, false)?;
    let receipt = blocking(&state, |store| Ok(store.append(vec![event])?)).await?;
    let seq = receipt.events.first().map(|e| e.seq);
    Ok((
        StatusCode::CREATED,
        Json(json!({ "hold": hold, "seq": seq, "scope": scope, "reason": req.reason })),
    ))
}

pub async fn release(
    State(state): State<AppState>,
    Extension(actor): Extension<Principal>,
    Path(hold): Path<String>,
    body: axum::body::Bytes,
) -> Result<Json<Value>, ApiError> {
    let req: ReleaseRequest = if body.iter().all(u8::is_ascii_whitespace) {
        ReleaseRequest::default()
    } else {
        serde_json::from_slice(&body).map_err(|e| ApiError::BadRequest(format!("body: {e}")))?
    };
    let reason = req.reason.unwrap_or_else(|| "released".into());
    let name = hold.clone();
    let seq = blocking(&state, move |store| {
        let event = holds::release_event(store, &name, &reason, &actor.name, false)?;
        let receipt = store.append(vec![event])?;
        Ok(receipt.events.first().map(|e| e.seq))
    })
    .await?;
    Ok(Json(json!({ "hold": hold, "seq": seq, "released": true })))
}
