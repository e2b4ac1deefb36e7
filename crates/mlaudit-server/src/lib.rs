//! mlaudit's HTTP API: ingest, queries, lineage, checkpoints and proofs over any
//! [`Store`], with axum on tokio.
//!
//! Every error is a JSON body `{"error": {"code", "message", "details"?}}` with a fitting 4xx
//! or 5xx status ([`error::ApiError`]); storage work runs on blocking threads so that a slow
//! `fdatasync` never stalls the async workers.
//!
//! **Architecture invariant:** the server reaches storage only through `Arc<dyn Store>` and the
//! operations of `mlaudit-store`; it knows nothing of files or engines. The principal recorded
//! on every event comes from the server, never from the request body.

pub mod error;
mod ingest;
mod read;

use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};
use axum::Router;
use error::ApiError;
use mlaudit_core::note::NoteVerifier;
use mlaudit_store::Store;
use std::sync::Arc;

pub use read::MAX_PAGE;

/// Explicit request limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest request body, before and after gzip decompression.
    pub max_body_bytes: u64,
    /// Most events in one `POST /v1/events`.
    pub max_events_per_batch: usize,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits { max_body_bytes: 16 << 20, max_events_per_batch: 10_000 }
    }
}

/// What every handler shares.
#[derive(Clone)]
pub struct AppState {
    pub store: Arc<dyn Store>,
    pub verifier: NoteVerifier,
    pub limits: Limits,
    /// The principal recorded on ingested events. Until authentication exists this is the
    /// single principal of an unauthenticated (`--danger-no-auth`) server.
    pub principal: String,
}

impl std::fmt::Debug for AppState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppState").field("verifier", &self.verifier).field("limits", &self.limits).finish_non_exhaustive()
    }
}

async fn not_found() -> ApiError {
    ApiError::NotFound("no such endpoint".into())
}

/// Every route of the API as (method, path) — the OpenAPI document must describe exactly these.
pub const ROUTES: &[(&str, &str)] = &[
    ("POST", "/v1/events"),
    ("GET", "/v1/events"),
    ("GET", "/v1/events/{id}"),
    ("GET", "/v1/lineage/{id}"),
    ("GET", "/v1/checkpoint"),
    ("GET", "/v1/verifier-key"),
    ("GET", "/v1/proof/inclusion/{id}"),
    ("GET", "/v1/proof/consistency"),
    ("GET", "/healthz"),
    ("GET", "/readyz"),
];

/// The API's routes.
pub fn router(state: AppState) -> Router {
    let body_limit = usize::try_from(state.limits.max_body_bytes).unwrap_or(usize::MAX);
    Router::new()
        .route("/v1/events", post(ingest::post_events).get(read::list_events))
        .route("/v1/events/{id}", get(read::get_event))
        .route("/v1/lineage/{id}", get(read::get_lineage))
        .route("/v1/checkpoint", get(read::get_checkpoint))
        .route("/v1/verifier-key", get(read::get_verifier_key))
        .route("/v1/proof/inclusion/{id}", get(read::get_inclusion))
        .route("/v1/proof/consistency", get(read::get_consistency))
        .route("/healthz", get(read::healthz))
        .route("/readyz", get(read::readyz))
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(body_limit))
        .with_state(state)
}

/// Serves the API on `listener` until `shutdown` resolves, then finishes in-flight requests.
pub async fn serve(listener: tokio::net::TcpListener, state: AppState, shutdown: impl std::future::Future<Output = ()> + Send + 'static) -> std::io::Result<()> {
    axum::serve(listener, router(state)).with_graceful_shutdown(shutdown).await
}
