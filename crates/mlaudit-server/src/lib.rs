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
pub mod conn;
pub mod error;
mod holds;
mod ingest;
pub mod integrations;
pub mod metrics;
pub mod openapi;
pub mod protobuf;
pub mod ratelimit;
mod read;
mod tiles;
pub mod tls;
mod token_file;
mod tokens;

use auth::{Access, Principal, Tokens};
use axum::extract::DefaultBodyLimit;
use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post, put, MethodRouter};
use axum::Router;
use error::ApiError;
use mlaudit_core::note::NoteVerifier;
use mlaudit_store::Store;
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::Duration;

pub use background::BackgroundServer;
pub use read::MAX_PAGE;
pub use tokens::parse_duration_ns;

/// Explicit request limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest request body, before and after gzip decompression.
    pub max_body_bytes: u64,
    /// Most events in one `POST /v1/events`.
    pub max_events_per_batch: usize,
    /// Longest a request may take, body and answer included (408 after it).
    pub request_timeout: Duration,
    /// Longest the body of a request may take to arrive (408 after it).
    pub body_read_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_body_bytes: 16 << 20,
            max_events_per_batch: 10_000,
            request_timeout: Duration::from_secs(60),
            body_read_timeout: Duration::from_secs(30),
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
    /// Checkpoints, the verifier key, consistency proofs and inclusion proofs by leaf hash need
    /// no token.
    pub public_proofs: bool,
    /// The server's counters for `/metrics`.
    pub metrics: Arc<metrics::Metrics>,
    /// Requests per second each principal may make; `None` for no limit.
    pub rate_limit: Option<Arc<ratelimit::RateLimiter>>,
    /// The receivers for other tools' events: their settings and the inference join.
    pub integrations: Arc<integrations::Integrations>,
    /// The queue consumers' counters (`mlaudit serve --ingest`): in `/metrics`, and `/readyz`
    /// fails while one is disconnected.
    pub ingest: Vec<Arc<mlaudit_queue::Stats>>,
}

impl AppState {
    /// A state with the default limits, public proofs, no rate limit and fresh counters.
    pub fn new(
        store: Arc<dyn Store>,
        verifier: NoteVerifier,
        tokens: Option<Arc<RwLock<Tokens>>>,
    ) -> AppState {
        AppState {
            store,
            verifier,
            limits: Limits::default(),
            tokens,
            public_proofs: true,
            metrics: Default::default(),
            rate_limit: None,
            integrations: Default::default(),
            ingest: Vec::new(),
        }
    }
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

/// One route of the API: its handler, what it needs, the query parameters it takes, and
/// whether answering it is a read of the trail (recorded as `governance.audit_accessed`).
#[derive(Debug, Clone, Copy)]
pub struct Route {
    pub method: &'static str,
    pub path: &'static str,
    /// Makes the route's handler (for this method) when the router is built.
    handler: fn() -> MethodRouter<AppState>,
    pub access: Access,
    /// Every other query parameter is a 400.
    pub params: &'static [&'static str],
    pub audited: bool,
}

const fn route(
    method: &'static str,
    path: &'static str,
    access: Access,
    handler: fn() -> MethodRouter<AppState>,
) -> Route {
    Route {
        method,
        path,
        handler,
        access,
        params: &[],
        audited: false,
    }
}

const QUERY_PARAMS: &[&str] = &[
    "stage",
    "kind",
    "model",
    "version",
    "actor",
    "run",
    "dataset",
    "deployment",
    "since",
    "until",
    "limit",
    "cursor",
];

/// Every route of the API: the router is built from this table, the access rule of each
/// request is read from it, and the OpenAPI document must describe exactly these.
pub const ROUTES: &[Route] = &[
    route("POST", "/v1/events", Access::Write, || {
        post(ingest::post_events)
    }),
    Route {
        params: QUERY_PARAMS,
        audited: true,
        ..route("GET", "/v1/events", Access::Read, || get(read::list_events))
    },
    Route {
        audited: true,
        ..route("GET", "/v1/events/{id}", Access::Read, || {
            get(read::get_event)
        })
    },
    Route {
        audited: true,
        ..route("GET", "/v1/lineage/{id}", Access::Read, || {
            get(read::get_lineage)
        })
    },
    route("GET", "/v1/checkpoint", Access::ProofMaterial, || {
        get(read::get_checkpoint)
    }),
    route("GET", "/v1/verifier-key", Access::ProofMaterial, || {
        get(read::get_verifier_key)
    }),
    route("GET", "/checkpoint", Access::ProofMaterial, || {
        get(tiles::checkpoint)
    }),
    Route {
        audited: true,
        ..route("GET", "/tile/entries/{*tile}", Access::Read, || {
            get(tiles::entry_bundle)
        })
    },
    route(
        "GET",
        "/tile/{level}/{*tile}",
        Access::ProofMaterial,
        || get(tiles::hash_tile),
    ),
    Route {
        params: &["leaf_hash", "tree_size"],
        ..route("GET", "/v1/proof/inclusion", Access::ProofMaterial, || {
            get(read::get_inclusion_by_hash)
        })
    },
    Route {
        audited: true,
        ..route("GET", "/v1/proof/inclusion/{id}", Access::Read, || {
            get(read::get_inclusion)
        })
    },
    Route {
        params: &["from", "to"],
        ..route(
            "GET",
            "/v1/proof/consistency",
            Access::ProofMaterial,
            || get(read::get_consistency),
        )
    },
    route(
        "POST",
        "/v1/integrations/mlflow/webhook",
        Access::Public,
        || post(integrations::mlflow::post),
    ),
    Route {
        params: &["token"],
        ..route("POST", CLOUDEVENTS_PATH, Access::Write, || {
            post(integrations::cloudevents::post)
        })
    },
    route("POST", "/api/v1/lineage", Access::Write, || {
        post(integrations::openlineage::post_one)
    }),
    route("POST", "/api/v1/lineage/batch", Access::Write, || {
        post(integrations::openlineage::post_batch)
    }),
    route("GET", "/healthz", Access::Public, || get(read::healthz)),
    route("GET", "/readyz", Access::Public, || get(read::readyz)),
    route("GET", "/metrics", Access::Read, || get(metrics::serve)),
    route("GET", "/openapi.json", Access::Public, || {
        get(openapi::serve)
    }),
    Route {
        audited: true,
        ..route("GET", "/v1/tokens", Access::Admin, || get(tokens::list))
    },
    route("POST", "/v1/tokens", Access::Admin, || post(tokens::create)),
    Route {
        audited: true,
        ..route("GET", "/v1/holds", Access::Read, || get(holds::list))
    },
    route("POST", "/v1/holds", Access::Admin, || post(holds::create)),
    route("POST", "/v1/holds/{hold}/release", Access::Admin, || {
        post(holds::release)
    }),
    route("PUT", "/v1/tokens/{name}", Access::Admin, || {
        put(tokens::set_role)
    }),
    route("DELETE", "/v1/tokens/{name}", Access::Admin, || {
        delete(tokens::revoke)
    }),
];

/// The CloudEvents receiver: the one route that may take its token as `?token=` (KServe's
/// payload logger cannot send an Authorization header), when the config allows it.
pub const CLOUDEVENTS_PATH: &str = "/v1/integrations/cloudevents";

/// The route a request matched (`HEAD` is served as `GET`), if any.
pub fn route_of(method: &str, template: &str) -> Option<&'static Route> {
    let method = if method == "HEAD" { "GET" } else { method };
    ROUTES
        .iter()
        .find(|r| r.method == method && r.path == template)
}

/// The API's routes.
pub fn router(state: AppState) -> Router {
    let body_limit = usize::try_from(state.limits.max_body_bytes).unwrap_or(usize::MAX);
    let mut paths: Vec<&str> = ROUTES.iter().map(|r| r.path).collect();
    paths.sort_unstable();
    paths.dedup();
    let mut app = Router::new();
    for path in paths {
        let methods = ROUTES
            .iter()
            .filter(|r| r.path == path)
            .fold(MethodRouter::new(), |m, r| m.merge((r.handler)()));
        app = app.route(path, methods);
    }
    app.fallback(not_found)
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

/// The token a request presents: its bearer token, or — on the CloudEvents receiver, when
/// `[integrations.cloudevents] query_token` is on — its `?token=` parameter. A query token
/// sent while that is off is refused (400) rather than ignored, so that a misconfiguration is
/// seen at once. The query is never logged.
fn presented_token<'a>(
    state: &AppState,
    route: Option<&Route>,
    req: &'a Request,
) -> Result<Option<std::borrow::Cow<'a, str>>, ApiError> {
    if let Some(token) = bearer(req) {
        return Ok(Some(token.into()));
    }
    let Some(route) = route.filter(|r| r.path == CLOUDEVENTS_PATH) else {
        return Ok(None);
    };
    let token = req
        .uri()
        .query()
        .into_iter()
        .flat_map(|q| q.split('&'))
        .find_map(|p| p.strip_prefix("token="));
    match token {
        None => Ok(None),
        Some(_) if !state.integrations.config.cloudevents.query_token => Err(ApiError::BadRequest(format!(
            "{} takes ?token= only when [integrations.cloudevents] query_token = true; send Authorization: Bearer instead",
            route.path
        ))),
        Some(t) => Ok(Some(percent_decode(t).into())),
    }
}

/// Decodes `%XX` escapes (and `+` as a space) of a query value.
fn percent_decode(value: &str) -> String {
    let bytes = value.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: Option<&u8>| b.and_then(|b| (*b as char).to_digit(16));
        match (bytes[i], hex(bytes.get(i + 1)), hex(bytes.get(i + 2))) {
            (b'%', Some(h), Some(l)) => {
                out.push((h * 16 + l) as u8);
                i += 3;
            }
            (b'+', _, _) => {
                out.push(b' ');
                i += 1;
            }
            (b, _, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
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

/// The address of the client a request came from, set by the connection layer ([`conn`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientAddr(pub SocketAddr);

/// How many events an answer showed, set by a handler for the audit record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shown(pub usize);

/// Every request's work around its handler, in one middleware layer (each layer clones the
/// app state and the inner service stack per request): [`refuse_declared_oversize`], the
/// query parameters the route takes, then [`authorize`] and the rate limit, with panics
/// contained ([`contain_panics`]) and the whole bounded by the request timeout; then, for a
/// read of the trail, the audit record ([`audit`]) before the answer leaves; timed for the
/// latency metric by method, route template and status. Every label comes from a bounded set,
/// so that clients cannot grow the metric: the route template, never the raw path (ids would
/// explode the labels); a method the standard does not name is `other`; requests that match
/// no route are not timed (a 405 on a route's path is).
async fn guard(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let method = method_label(req.method());
    let template = req
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .cloned();
    // A method the path does not take (answered 405) needs what the path's first route needs.
    let route = template.as_ref().and_then(|t| {
        route_of(req.method().as_str(), t.as_str())
            .or_else(|| ROUTES.iter().find(|r| r.path == t.as_str()))
    });
    let start = std::time::Instant::now();
    let timeout = state.limits.request_timeout;
    let work = contain_panics(async {
        if let Some(refusal) = refuse_declared_oversize(&state, &req)
            .or_else(|| route.and_then(|r| unknown_params(r, req.uri().query())))
        {
            return refusal.into_response();
        }
        let audited = route.is_some_and(|r| r.audited);
        let request = audit::Recorded::of(&req, audited);
        let (response, principal) = authorize(&state, route, req, next).await;
        match (request, principal) {
            (Some(request), Some(principal)) => {
                audit::record(&state, &principal, &request, response).await
            }
            _ => response,
        }
    });
    let response = match tokio::time::timeout(timeout, work).await {
        Ok(response) => response,
        Err(_) => ApiError::Timeout(format!(
            "the request took longer than {} s",
            timeout.as_secs_f64()
        ))
        .into_response(),
    };
    if let Some(template) = template {
        state.metrics.observe(
            method,
            template.as_str(),
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

/// 400 for a query parameter the route does not take (so that nothing unexpected reaches a
/// handler, or an audit record).
fn unknown_params(route: &Route, query: Option<&str>) -> Option<ApiError> {
    let query = query?;
    let unknown = query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| p.split_once('=').map_or(p, |(k, _)| k))
        .find(|k| !route.params.contains(k))?;
    let shown: String = unknown.chars().take(64).collect();
    Some(ApiError::BadRequest(if route.params.is_empty() {
        format!(
            "unknown query parameter {shown:?}: {} {} takes none",
            route.method, route.path
        )
    } else {
        format!(
            "unknown query parameter {shown:?}: {} {} takes {}",
            route.method,
            route.path,
            route.params.join(", ")
        )
    }))
}

/// Authenticates the bearer token (401 when missing, wrong or expired), checks the route's
/// access against the token's role (403) and the principal's rate (429), and hands the
/// [`Principal`] to the handler. Returns the principal that was let through.
async fn authorize(
    state: &AppState,
    route: Option<&Route>,
    mut req: Request,
    next: Next,
) -> (Response, Option<Principal>) {
    let declared = route.map_or(Access::Read, |r| r.access);
    let access = match declared {
        Access::ProofMaterial if state.public_proofs => Access::Public,
        other => other,
    };
    let client = req.extensions().get::<ClientAddr>().map(|c| c.0);
    let principal = match &state.tokens {
        None => Principal {
            name: "anonymous (danger-no-auth)".into(),
            role: Some(auth::Role::Admin),
        },
        // Health, readiness and the API document answer anyone, whatever Authorization they
        // carry.
        Some(_) if declared == Access::Public => Principal::anonymous(),
        Some(tokens) => {
            if let Err(e) = refresh_tokens(tokens).await {
                return (e.into_response(), None);
            }
            let presented = match presented_token(state, route, &req) {
                Ok(t) => t.map(std::borrow::Cow::into_owned),
                Err(e) => return (e.into_response(), None),
            };
            let found = match (presented.as_deref(), tokens.read()) {
                (Some(token), Ok(tokens)) => tokens.authenticate(token, auth::now_ns()),
                (None, _) if access == Access::Public => Ok(Principal::anonymous()),
                (None, _) => Err(auth::AuthFailure::Missing),
                (_, Err(_)) => {
                    let e = ApiError::Internal("the token table lock is poisoned".into());
                    return (e.into_response(), None);
                }
            };
            match found {
                Ok(p) => p,
                Err(why) => {
                    state.metrics.auth_failed(why);
                    tracing::warn!(client = ?client, path = %req.uri().path(), reason = why.as_str(), "authentication failed");
                    return (
                        ApiError::Unauthorized(why.message().into()).into_response(),
                        None,
                    );
                }
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
        let e = ApiError::Forbidden(format!(
            "the {role} role may not {} {}",
            req.method(),
            req.uri().path()
        ));
        return (e.into_response(), None);
    }
    if let Some(limiter) = &state.rate_limit {
        if let Err(wait) = limiter.check(&principal.rate_key(client)) {
            return (ApiError::TooManyRequests(wait).into_response(), None);
        }
    }
    req.extensions_mut().insert(principal.clone());
    (next.run(req).await, Some(principal))
}

mod audit {
    //! The audit record of a read: built from the request before it is handled, appended
    //! (durably) after, before the answer leaves. If it cannot be appended, the answer is
    //! withheld and the client gets the error instead: no read goes unrecorded.

    use super::{AppState, ClientAddr, Principal, Shown};
    use crate::error::ApiError;
    use axum::extract::Request;
    use axum::response::{IntoResponse, Response};
    use mlaudit_store::audit::{audit_event, Access};

    /// What an audit record says of a request.
    pub struct Recorded {
        method: String,
        path: String,
        query: Option<String>,
        client: Option<String>,
    }

    impl Recorded {
        /// The parts of `req` to record, when the route is audited.
        pub fn of(req: &Request, audited: bool) -> Option<Recorded> {
            audited.then(|| Recorded {
                method: req.method().as_str().to_owned(),
                path: req.uri().path().to_owned(),
                query: req.uri().query().map(str::to_owned),
                client: req
                    .extensions()
                    .get::<ClientAddr>()
                    .map(|c| c.0.to_string()),
            })
        }
    }

    /// Appends the record of `request` (answered by `response`) and returns the response, or
    /// the error that kept the record from being written.
    pub async fn record(
        state: &AppState,
        principal: &Principal,
        request: &Recorded,
        response: Response,
    ) -> Response {
        if principal.role.is_none() {
            return response;
        }
        let shown = response.extensions().get::<Shown>().map_or(0, |s| s.0);
        let access = Access {
            principal: &principal.name,
            person: false,
            method: &request.method,
            path: &request.path,
            query: request.query.as_deref(),
            client: request.client.as_deref(),
            results: shown,
            status: Some(response.status().as_u16()),
        };
        let event = match audit_event(&access) {
            Ok(e) => e,
            Err(e) => return ApiError::Internal(format!("audit record: {e}")).into_response(),
        };
        let store = state.store.clone();
        match tokio::task::spawn_blocking(move || store.append(vec![event])).await {
            Ok(Ok(_)) => response,
            Ok(Err(e)) => ApiError::from(e).into_response(),
            Err(e) => ApiError::Internal(format!("audit task failed: {e}")).into_response(),
        }
    }
}

/// Serves the API on `listener` (plain HTTP) with the default connection settings until
/// `shutdown` resolves, then finishes in-flight requests ([`conn::serve`]).
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: AppState,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    conn::serve(listener, state, conn::ConnConfig::default(), None, shutdown).await
}

/// Reads a shared token table again when another server has changed it, so that a creation
/// or revocation made anywhere holds here before the next request is authenticated. The table
/// is read without holding the lock, and replaces the one in use only if it is newer.
async fn refresh_tokens(tokens: &Arc<RwLock<Tokens>>) -> Result<(), ApiError> {
    let poisoned = || ApiError::Internal("the token table lock is poisoned".into());
    let stale = {
        let t = tokens.read().map_err(|_| poisoned())?;
        t.is_stale().then(|| t.doc())
    };
    let Some(doc) = stale else {
        return Ok(());
    };
    let fresh = tokio::task::spawn_blocking(move || Tokens::load_from(doc))
        .await
        .map_err(|e| ApiError::Internal(format!("token task failed: {e}")))?
        .map_err(|e| {
            ApiError::Store(mlaudit_store::StoreError::Unavailable(format!(
                "reading the token table: {e}"
            )))
        })?;
    let mut t = tokens.write().map_err(|_| poisoned())?;
    if fresh.version() > t.version() {
        *t = fresh;
    }
    Ok(())
}
