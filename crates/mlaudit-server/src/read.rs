//! The read endpoints: events by id, indexed queries with cursor pagination, lineage,
//! checkpoints, proofs and the verifier key.

use crate::auth::Principal;
use crate::error::ApiError;
use crate::AppState;
use axum::extract::rejection::QueryRejection;
use axum::extract::OriginalUri;
use axum::extract::{Path, Query, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::Extension;
use axum::Json;
use mlaudit_core::event::{parse_time_bound, Stage};
use mlaudit_store::view::{self, LookupError};
use mlaudit_store::{lineage, proofs, Store};
use serde::Deserialize;
use serde_json::{json, Value};
use std::sync::Arc;

/// Most events one query page returns.
pub const MAX_PAGE: usize = 1000;

impl From<LookupError> for ApiError {
    fn from(e: LookupError) -> ApiError {
        match e {
            LookupError::Store(e) => ApiError::Store(e),
            // Anything that does not name an event is "not found", malformed or not.
            other => ApiError::NotFound(other.to_string()),
        }
    }
}

impl From<proofs::ProveError> for ApiError {
    fn from(e: proofs::ProveError) -> ApiError {
        match e {
            proofs::ProveError::Store(e) => ApiError::Store(e),
            proofs::ProveError::NotCheckpointed(_) | proofs::ProveError::NoCheckpoint(_) => {
                ApiError::NotFound(e.to_string())
            }
            // No consistency proof exists from a larger tree to a smaller one (or from size 0).
            proofs::ProveError::BadRequest(_) => ApiError::NotFound(e.to_string()),
            other => ApiError::Internal(other.to_string()),
        }
    }
}

/// Runs blocking store work off the async threads.
async fn blocking<T: Send + 'static>(
    state: &AppState,
    f: impl FnOnce(&dyn Store) -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    let store: Arc<dyn Store> = state.store.clone();
    tokio::task::spawn_blocking(move || f(&*store))
        .await
        .map_err(|e| ApiError::Internal(format!("task failed: {e}")))?
}

/// Records a read by an authenticated principal as a `governance.audit_accessed` event,
/// durably, before the response is sent. Anonymous reads of public proof material are not
/// reads of the trail's content and are not recorded.
async fn audit(
    state: &AppState,
    principal: &Principal,
    uri: &OriginalUri,
    results: usize,
) -> Result<(), ApiError> {
    if principal.role.is_none() {
        return Ok(());
    }
    let event = json!({
        "kind": "governance.audit_accessed",
        "actor": { "id": principal.name, "type": "service" },
        "attributes": { "request": format!("GET {}", uri.0), "results": results }
    });
    let event = mlaudit_core::event::prepare_reserved(&event.to_string(), &principal.name)
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    let store = state.store.clone();
    tokio::task::spawn_blocking(move || store.append(vec![event]))
        .await
        .map_err(|e| ApiError::Internal(format!("task failed: {e}")))??;
    Ok(())
}

pub async fn get_event(
    State(state): State<AppState>,
    Extension(who): Extension<Principal>,
    uri: OriginalUri,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let found = blocking(&state, move |store| {
        let seq = view::resolve(store, &id)?;
        Ok(Json(view::event_json(store, seq)?))
    })
    .await?;
    audit(&state, &who, &uri, 1).await?;
    Ok(found)
}

/// Query parameters of `GET /v1/events`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventsQuery {
    stage: Option<String>,
    kind: Option<String>,
    model: Option<String>,
    version: Option<String>,
    actor: Option<String>,
    run: Option<String>,
    dataset: Option<String>,
    deployment: Option<String>,
    since: Option<String>,
    until: Option<String>,
    limit: Option<usize>,
    cursor: Option<String>,
}

fn time_param(name: &str, value: Option<String>) -> Result<Option<i64>, ApiError> {
    value
        .map(|v| {
            parse_time_bound(&v).ok_or_else(|| {
                ApiError::BadRequest(format!("{name}={v:?} is not an RFC 3339 time"))
            })
        })
        .transpose()
}

pub async fn list_events(
    State(state): State<AppState>,
    Extension(who): Extension<Principal>,
    uri: OriginalUri,
    q: Result<Query<EventsQuery>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let Query(q) = q.map_err(|r| ApiError::BadRequest(r.body_text()))?;
    let stage = q
        .stage
        .map(|s| {
            Stage::parse(&s)
                .ok_or_else(|| ApiError::BadRequest(format!("stage={s:?} is not a stage")))
        })
        .transpose()?;
    let limit = q.limit.unwrap_or(100);
    if limit == 0 || limit > MAX_PAGE {
        return Err(ApiError::BadRequest(format!(
            "limit must be between 1 and {MAX_PAGE}"
        )));
    }
    let after_seq = q
        .cursor
        .map(|c| {
            c.parse::<u64>().map_err(|_| {
                ApiError::BadRequest(format!("cursor={c:?} is not a cursor from a previous page"))
            })
        })
        .transpose()?;
    let query = mlaudit_store::Query {
        stage,
        kind: q.kind,
        model: q.model,
        version: q.version,
        actor: q.actor,
        run: q.run,
        dataset: q.dataset,
        deployment: q.deployment,
        since_ns: time_param("since", q.since)?,
        until_ns: time_param("until", q.until)?,
        after_seq,
        limit,
    };
    let (page, count) = blocking(&state, move |store| {
        let seqs = store.query(&query)?;
        let events = seqs
            .iter()
            .map(|s| view::event_json(store, *s))
            .collect::<Result<Vec<_>, _>>()?;
        let next = if seqs.len() == limit {
            seqs.last().map(|s| s.to_string())
        } else {
            None
        };
        Ok((
            Json(json!({ "events": events, "next_cursor": next })),
            seqs.len(),
        ))
    })
    .await?;
    audit(&state, &who, &uri, count).await?;
    Ok(page)
}

pub async fn get_lineage(
    State(state): State<AppState>,
    Extension(who): Extension<Principal>,
    uri: OriginalUri,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let (found, count) = blocking(&state, move |store| {
        let seq = view::resolve(store, &id)?;
        let l = lineage::lineage(store, seq)?;
        let count = 1
            + l.registry.len()
            + l.deployments.len()
            + l.training.len()
            + l.datasets.iter().map(|d| d.events.len()).sum::<usize>();
        serde_json::to_value(l)
            .map(|v| (Json(v), count))
            .map_err(|e| ApiError::Internal(e.to_string()))
    })
    .await?;
    audit(&state, &who, &uri, count).await?;
    Ok(found)
}

fn text(body: String) -> Response {
    ([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], body).into_response()
}

pub async fn get_checkpoint(State(state): State<AppState>) -> Result<Response, ApiError> {
    blocking(&state, |store| {
        mlaudit_store::latest_checkpoint(store)?
            .ok_or_else(|| ApiError::NotFound("the log has no checkpoint yet".into()))
    })
    .await
    .map(text)
}

pub async fn get_verifier_key(State(state): State<AppState>) -> Response {
    text(format!("{}\n", state.verifier.to_text()))
}

/// The inclusion bundle of one event. Anonymous callers (public proofs) get it without the
/// payload, which still verifies: the entry commits to the payload's digest only.
pub async fn get_inclusion(
    State(state): State<AppState>,
    Extension(who): Extension<Principal>,
    uri: OriginalUri,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let anonymous = who.role.is_none();
    let bundle = blocking(&state, move |store| {
        let seq = view::resolve(store, &id)?;
        let mut bundle = proofs::inclusion_bundle(store, seq)?;
        if anonymous {
            bundle.payload = None;
            bundle.event["attributes"] =
                Value::String("[withheld: authenticate as a reader to see the payload]".into());
        }
        serde_json::to_value(bundle)
            .map(Json)
            .map_err(|e| ApiError::Internal(e.to_string()))
    })
    .await?;
    audit(&state, &who, &uri, 1).await?;
    Ok(bundle)
}

/// Query parameters of `GET /v1/proof/consistency`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsistencyQuery {
    from: u64,
    to: Option<u64>,
}

pub async fn get_consistency(
    State(state): State<AppState>,
    q: Result<Query<ConsistencyQuery>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let Query(q) = q.map_err(|r| ApiError::BadRequest(r.body_text()))?;
    blocking(&state, move |store| {
        let to = match q.to {
            Some(t) => t,
            None => store
                .latest_checkpoint_size()?
                .ok_or_else(|| ApiError::NotFound("the log has no checkpoint yet".into()))?,
        };
        let proof = proofs::consistency(store, q.from, to)?;
        serde_json::to_value(proof)
            .map(Json)
            .map_err(|e| ApiError::Internal(e.to_string()))
    })
    .await
}

pub async fn healthz() -> Json<Value> {
    Json(json!({ "status": "ok" }))
}

pub async fn readyz(State(state): State<AppState>) -> Json<Value> {
    Json(json!({ "status": "ready", "tree_size": state.store.tree_size() }))
}
