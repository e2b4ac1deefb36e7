//! The read endpoints: events by id, indexed queries with cursor pagination, lineage,
//! checkpoints, proofs and the verifier key.

use crate::error::ApiError;
use crate::AppState;
use crate::Shown;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
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
pub(crate) async fn blocking<T: Send + 'static>(
    state: &AppState,
    f: impl FnOnce(&dyn Store) -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    let store: Arc<dyn Store> = state.store.clone();
    tokio::task::spawn_blocking(move || f(&*store))
        .await
        .map_err(|e| ApiError::Internal(format!("task failed: {e}")))?
}

/// A JSON answer that showed `n` events (for the audit record of the read).
fn shown(body: Value, n: usize) -> Response {
    let mut response = Json(body).into_response();
    response.extensions_mut().insert(Shown(n));
    response
}

pub async fn get_event(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    blocking(&state, move |store| {
        let seq = view::resolve(store, &id)?;
        Ok(shown(view::event_json(store, seq)?, 1))
    })
    .await
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

/// A cursor as `next_cursor` writes it: a seq in decimal, without sign or leading zeros.
fn parse_cursor(text: &str) -> Option<u64> {
    let canonical = text.bytes().all(|b| b.is_ascii_digit())
        && !text.is_empty()
        && (text == "0" || !text.starts_with('0'));
    canonical.then(|| text.parse().ok()).flatten()
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
    q: Result<Query<EventsQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
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
            parse_cursor(&c).ok_or_else(|| {
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
    blocking(&state, move |store| {
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
        Ok(shown(
            json!({ "events": events, "next_cursor": next }),
            seqs.len(),
        ))
    })
    .await
}

pub async fn get_lineage(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    blocking(&state, move |store| {
        let seq = view::resolve(store, &id)?;
        let l = lineage::lineage(store, seq)?;
        let count = 1
            + l.registry.len()
            + l.deployments.len()
            + l.training.len()
            + l.datasets.iter().map(|d| d.events.len()).sum::<usize>();
        serde_json::to_value(l)
            .map(|v| shown(v, count))
            .map_err(|e| ApiError::Internal(e.to_string()))
    })
    .await
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

/// The full inclusion bundle of one event (entry header and payload): reader data.
pub async fn get_inclusion(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    blocking(&state, move |store| {
        let seq = view::resolve(store, &id)?;
        let bundle = proofs::inclusion_bundle(store, seq)?;
        serde_json::to_value(bundle)
            .map(|v| shown(v, 1))
            .map_err(|e| ApiError::Internal(e.to_string()))
    })
    .await
}

/// Query parameters of `GET /v1/proof/inclusion`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ByHashQuery {
    leaf_hash: String,
    tree_size: Option<u64>,
}

/// The inclusion proof of the leaf with a given hash, for a caller who holds the entry (a
/// receipt, an exported bundle): the leaf index, the path and the signed checkpoint, and
/// nothing of the event itself.
pub async fn get_inclusion_by_hash(
    State(state): State<AppState>,
    q: Result<Query<ByHashQuery>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let Query(q) = q.map_err(|r| ApiError::BadRequest(r.body_text()))?;
    let leaf = mlaudit_core::merkle::Hash::from_hex(&q.leaf_hash).ok_or_else(|| {
        ApiError::BadRequest("leaf_hash must be 64 hex digits (a SHA-256 leaf hash)".into())
    })?;
    blocking(&state, move |store| {
        let size = match q.tree_size {
            Some(size) => size,
            None => store
                .latest_checkpoint_size()?
                .ok_or_else(|| ApiError::NotFound("the log has no checkpoint yet".into()))?,
        };
        let checkpoint = store.checkpoint(size)?.ok_or_else(|| {
            ApiError::NotFound(format!("no checkpoint is stored for tree size {size}"))
        })?;
        let seq = store
            .seq_of_leaf(&leaf)?
            .filter(|seq| *seq < size)
            .ok_or_else(|| {
                ApiError::NotFound(format!("no leaf with this hash in the tree of size {size}"))
            })?;
        let path = mlaudit_core::merkle::inclusion_proof(&mlaudit_store::Nodes(store), seq, size)?
            .map_err(|e| ApiError::NotFound(e.to_string()))?;
        let path: Vec<String> = path
            .iter()
            .map(|h| mlaudit_core::b64::encode(h.0))
            .collect();
        Ok(Json(json!({
            "leaf_index": seq,
            "tree_size": size,
            "inclusion_path": path,
            "checkpoint": checkpoint,
        })))
    })
    .await
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

/// `GET /readyz`: 200 while the server can take events; 503 while a queue consumer
/// (`--ingest`) is disconnected, naming it.
pub async fn readyz(State(state): State<AppState>) -> Response {
    let mut body = json!({ "status": "ready", "tree_size": state.store.tree_size() });
    if let Some(sequencer) = state.store.stats().sequencer {
        body["sequencer"] = json!(sequencer);
    }
    if state.ingest.is_empty() {
        return Json(body).into_response();
    }
    let sources: Vec<Value> = state
        .ingest
        .iter()
        .map(|s| json!({ "source": s.source(), "connected": s.connected() }))
        .collect();
    let down: Vec<&str> = state
        .ingest
        .iter()
        .filter(|s| !s.connected())
        .map(|s| s.source())
        .collect();
    body["ingest"] = json!(sources);
    if down.is_empty() {
        return Json(body).into_response();
    }
    let error = json!({
        "code": "unavailable",
        "message": format!("queue consumer disconnected: {}", down.join(", ")),
        "details": { "ingest": body["ingest"] },
    });
    (
        StatusCode::SERVICE_UNAVAILABLE,
        Json(json!({ "error": error })),
    )
        .into_response()
}
