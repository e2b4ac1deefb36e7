//! `POST /api/v1/lineage` (one OpenLineage event: the path the `openlineage-python` HTTP
//! transport posts to) and `POST /api/v1/lineage/batch` (a JSON array of events), optionally
//! gzip-compressed, with a writer token as `Authorization: Bearer` (the client's `api_key`
//! auth). A batch is all-or-nothing. Answers 200 once every event is durable; the client's
//! retries (on 5xx) are stored once, as ids derive from each event's bytes.

use super::{append_values, media_type, read_body, refused};
use crate::auth::Principal;
use crate::error::ApiError;
use crate::AppState;
use axum::extract::{Request, State};
use axum::response::Response;
use mlaudit_integrations::openlineage;
use serde_json::{json, Value};

const NAME: &str = "openlineage";

pub async fn post_one(State(state): State<AppState>, req: Request) -> Result<Response, ApiError> {
    counted(&state, receive(&state, req, false).await)
}

pub async fn post_batch(State(state): State<AppState>, req: Request) -> Result<Response, ApiError> {
    counted(&state, receive(&state, req, true).await)
}

fn counted(state: &AppState, outcome: Result<Response, ApiError>) -> Result<Response, ApiError> {
    if let Err(e) = &outcome {
        if e.is_client_error() {
            state.integrations.counters.refused(NAME);
        }
    }
    outcome
}

async fn receive(state: &AppState, mut req: Request, batch: bool) -> Result<Response, ApiError> {
    let principal = req.extensions_mut().remove::<Principal>().ok_or_else(|| {
        ApiError::Internal("the request reached a receiver without a principal".into())
    })?;
    let (headers, body) = read_body(state, req).await?;
    let mime = media_type(&headers);
    if !(mime.is_empty() || mime == "application/json" || mime.ends_with("+json")) {
        return Err(ApiError::UnsupportedMediaType(format!(
            "unsupported Content-Type {mime:?}: OpenLineage events are application/json"
        )));
    }
    let value: Value = serde_json::from_slice(&body)
        .map_err(|e| ApiError::BadRequest(format!("the OpenLineage body is not JSON: {e}")))?;
    let items = match (batch, value) {
        (false, v @ Value::Object(_)) => vec![v],
        (false, _) => {
            return Err(ApiError::BadRequest(
                "an OpenLineage event is a JSON object (POST a list to /api/v1/lineage/batch)"
                    .into(),
            ))
        }
        (true, Value::Array(items)) => items,
        (true, _) => {
            return Err(ApiError::BadRequest(
                "an OpenLineage batch is a JSON array of events".into(),
            ))
        }
    };
    if items.is_empty() {
        return Err(ApiError::BadRequest("the batch holds no event".into()));
    }
    let options = &mlaudit_integrations::openlineage::Options {
        max_events: state.limits.max_events_per_batch,
        ..state.integrations.config.openlineage.clone()
    };
    let mut events = Vec::new();
    for (index, item) in items.iter().enumerate() {
        let translated = openlineage::translate(item, options).map_err(|e| {
            let e = refused(e);
            if batch {
                match e {
                    ApiError::BadRequest(m) => ApiError::BadRequest(format!("event {index}: {m}")),
                    ApiError::Unprocessable(m) => {
                        ApiError::Unprocessable(format!("event {index}: {m}"))
                    }
                    other => other,
                }
            } else {
                e
            }
        })?;
        events.extend(translated);
    }
    let receipt = append_values(state, &principal.name, &events).await?;
    state
        .integrations
        .counters
        .accepted(NAME, super::new_events(receipt.as_ref()));
    Ok(super::answer(
        receipt.as_ref(),
        json!({ "openlineage_events": items.len() }),
    ))
}
