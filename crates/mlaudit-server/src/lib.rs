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

#![cfg_attr(
    test,
    allow(
        clippy::unwrap_used,
        clippy::expect_used,
        reason = "a unit test fails loudly on any unexpected error"
    )
)]

pub mod auth;
mod background;
pub mod error;
mod ingest;
pub mod metrics;
pub mod openapi;
pub mod protobuf;
mod read;
pub mod tls;
mod tokens;

use auth::{Access, Principal, Tokens};
use axum::extract::DefaultBodyLimit;
use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use error::ApiError;
use mlaudit_core::note::NoteVerifier;
use mlaudit_store::Store;
use std::sync::{Arc, RwLock};

pub use background::BackgroundServer;
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
        Limits {
            max_body_bytes: 16 << 20,
            max_events_per_batch: 10_000,
        }
    }
}

/// What every handler shares.
#[derive(Clone)]
pub struct AppState {
    pub store: Arc<dyn Store>,
    pub verifier: NoteVerifier,
    pub limits: Limits,
    /// The token file; `None` serves without authentication (`--danger-no-auth`).
    pub tokens: Option<Arc<RwLock<Tokens>>>,
    /// Checkpoints, the verifier key and proofs need no token (inclusion bundles then omit the
    /// payload for anonymous callers).
    pub public_proofs: bool,
    /// The server's counters for `/metrics`.
    pub metrics: Arc<metrics::Metrics>,
}

impl std::fmt::Debug for AppState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppState")
            .field("verifier", &self.verifier)
            .field("limits", &self.limits)
            .finish_non_exhaustive()
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
    ("GET", "/metrics"),
    ("GET", "/openapi.json"),
    ("GET", "/v1/tokens"),
    ("POST", "/v1/tokens"),
    ("PUT", "/v1/tokens/{name}"),
    ("DELETE", "/v1/tokens/{name}"),
];

/// The API's routes.
pub fn router(state: AppState) -> Router {
    let body_limit = usize::try_from(state.limits.max_body_bytes).unwrap_or(usize::MAX);
    Router::new()
        .route(
            "/v1/events",
            post(ingest::post_events).get(read::list_events),
        )
        .route("/v1/events/{id}", get(read::get_event))
        .route("/v1/lineage/{id}", get(read::get_lineage))
        .route("/v1/checkpoint", get(read::get_checkpoint))
        .route("/v1/verifier-key", get(read::get_verifier_key))
        .route("/v1/proof/inclusion/{id}", get(read::get_inclusion))
        .route("/v1/proof/consistency", get(read::get_consistency))
        .route("/healthz", get(read::healthz))
        .route("/readyz", get(read::readyz))
        .route("/metrics", get(metrics::serve))
        .route("/openapi.json", get(openapi::serve))
        .route("/v1/tokens", get(tokens::list).post(tokens::create))
        .route(
            "/v1/tokens/{name}",
            axum::routing::put(tokens::set_role).delete(tokens::revoke),
        )
        .fallback(not_found)
        .layer(axum::middleware::from_fn_with_state(state.clone(), guard))
        .layer(DefaultBodyLimit::max(body_limit))
        .with_state(state)
}

/// A panic while handling a request (a bug: on the async worker, say in an engine's
/// `try_submit`) answers 500 with the usual JSON error body, and is logged, instead of
/// dropping the connection without a word.
async fn contain_panics(work: impl std::future::Future<Output = Response>) -> Response {
    use futures_util::FutureExt;
    match std::panic::AssertUnwindSafe(work).catch_unwind().await {
        Ok(response) => response,
        Err(panic) => {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_default();
            tracing::error!(panic = %what, "a request handler panicked");
            ApiError::Internal(
                "the server failed while handling this request (a bug, logged on the server)"
                    .into(),
            )
            .into_response()
        }
    }
}

fn bearer(req: &Request) -> Option<&str> {
    let value = req
        .headers()
        .get(axum::http::header::AUTHORIZATION)?
        .to_str()
        .ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

/// Every request's work around its handler, in one middleware layer (each layer clones the
/// app state and the inner service stack per request): [`refuse_declared_oversize`], then
/// [`authorize`], with panics contained ([`contain_panics`]), timed for the latency metric by
/// method, route template and status. Every label comes from a bounded set, so that clients
/// cannot grow the metric: the route template, never the raw path (ids would explode the
/// labels); a method the standard does not name is `other`; requests that match no route are
/// not timed (a 405 on a route's path is).
async fn guard(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let method = method_label(req.method());
    let route = req
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .cloned();
    let start = std::time::Instant::now();
    let response = contain_panics(async {
        match refuse_declared_oversize(&state, &req) {
            Some(refusal) => refusal.into_response(),
            None => authorize(&state, req, next).await,
        }
    })
    .await;
    if let Some(route) = route {
        state.metrics.observe(
            method,
            route.as_str(),
            response.status().as_u16(),
            start.elapsed().as_secs_f64(),
        );
    }
    response
}

/// The metric's method label: a method the standard names, else `other` (any token is a
/// valid HTTP method, and a client's own would otherwise become a label).
fn method_label(method: &axum::http::Method) -> &'static str {
    use axum::http::Method;
    static KNOWN: [Method; 9] = [
        Method::GET,
        Method::HEAD,
        Method::POST,
        Method::PUT,
        Method::DELETE,
        Method::PATCH,
        Method::OPTIONS,
        Method::TRACE,
        Method::CONNECT,
    ];
    KNOWN
        .iter()
        .find(|m| *m == method)
        .map_or("other", |m| m.as_str())
}

/// 413 at once when the declared `Content-Length` is over the body limit, instead of waiting
/// for bytes that would be refused anyway.
fn refuse_declared_oversize(state: &AppState, req: &Request) -> Option<ApiError> {
    let declared = req
        .headers()
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())?;
    (declared > state.limits.max_body_bytes).then(|| ApiError::TooLarge {
        limit: "max_body_bytes",
        max: state.limits.max_body_bytes,
        message: format!(
            "the declared body of {declared} bytes exceeds {} bytes",
            state.limits.max_body_bytes
        ),
    })
}

/// Authenticates the bearer token (401 when missing or wrong), checks the route's access
/// against the token's role (403), and hands the [`Principal`] to the handler.
async fn authorize(state: &AppState, mut req: Request, next: Next) -> Response {
    let access = match auth::required(req.method().as_str(), req.uri().path()) {
        Access::ProofMaterial if state.public_proofs => Access::Public,
        Access::ProofMaterial => Access::Read,
        other => other,
    };
    // Health, readiness and the API document answer anyone, whatever Authorization they carry.
    let fully_public = auth::required(req.method().as_str(), req.uri().path()) == Access::Public;
    let principal = match &state.tokens {
        None => Principal {
            name: "anonymous (danger-no-auth)".into(),
            role: Some(auth::Role::Admin),
        },
        Some(_) if fully_public => Principal::anonymous(),
        Some(tokens) => {
            let found = match (bearer(&req), tokens.read()) {
                (Some(token), Ok(tokens)) => tokens
                    .authenticate(token)
                    .ok_or("the bearer token is not valid"),
                (None, _) if access == Access::Public => Ok(Principal::anonymous()),
                (None, _) => {
                    Err("this endpoint needs a bearer token (Authorization: Bearer mla_...)")
                }
                (_, Err(_)) => {
                    return ApiError::Internal("the token table lock is poisoned".into())
                        .into_response()
                }
            };
            match found {
                Ok(p) => p,
                Err(why) => return ApiError::Unauthorized(why.into()).into_response(),
            }
        }
    };
    let allowed = match principal.role {
        _ if state.tokens.is_none() => true,
        Some(role) => role.allows(access),
        None => access == Access::Public,
    };
    if !allowed {
        let role = principal.role.map_or("anonymous", |r| r.as_str());
        return ApiError::Forbidden(format!(
            "the {role} role may not {} {}",
            req.method(),
            req.uri().path()
        ))
        .into_response();
    }
    req.extensions_mut().insert(principal);
    next.run(req).await
}

/// Serves the API on `listener` until `shutdown` resolves, then finishes in-flight requests.
/// Connections are `TCP_NODELAY`: a response written in more than one piece is not held back
/// by Nagle's algorithm waiting for the client's delayed ACK.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: AppState,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    use axum::serve::ListenerExt;
    let listener = listener.tap_io(|tcp| {
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "cannot set TCP_NODELAY on a connection");
        }
    });
    axum::serve(listener, router(state))
        .with_graceful_shutdown(shutdown)
        .await
}
