//! Receivers for what ML tools send as they send it: MLflow registry webhooks
//! ([`mlflow`]), CloudEvents from KServe's and Seldon's payload loggers and CDEvents
//! ([`cloudevents`]), and OpenLineage ([`openlineage`]). The translations themselves are
//! `mlaudit-integrations`; this module authenticates, reads the body within the API's limits,
//! appends durably and answers.
//!
//! **Invariants.** A receiver writes nothing for a body it refuses (4xx, a JSON error naming
//! the problem). A 2xx means every event of the body is durable — or, for half of a KServe or
//! Seldon inference, that the half is durable in the join journal ([`join`]) and will reach
//! the log joined with its partner or alone after the timeout. The principal recorded on
//! every event is the token's (or `integration:mlflow-webhook` for a signed MLflow delivery).

pub mod cloudevents;
pub mod join;
pub mod mlflow;
pub mod openlineage;

use crate::error::ApiError;
use crate::AppState;
use axum::extract::Request;
use axum::http::{header, HeaderMap};
use mlaudit_integrations::sampling::SamplePolicy;
use mlaudit_integrations::TranslateError;
use mlaudit_store::AppendReceipt;
use serde_json::Value;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// `[integrations.mlflow]`.
#[derive(Debug, Clone, Default)]
pub struct MlflowConfig {
    /// The secret webhooks are signed with; the receiver answers 404 without one.
    pub webhook_secret: Option<String>,
    /// Where to look up who created a model version (`model-versions/get` → `user_id`).
    pub tracking_uri: Option<String>,
    /// A bearer token for that tracking server, if it needs one.
    pub tracking_token: Option<String>,
}

/// `[integrations.cloudevents]`.
#[derive(Debug, Clone)]
pub struct CloudEventsConfig {
    /// Accept a writer token as `?token=` (KServe's logger cannot send an Authorization
    /// header). Off by default.
    pub query_token: bool,
    /// The version recorded when an inference's bodies name none.
    pub default_version: Option<String>,
    /// How long a request or response waits for its partner before it is written alone.
    pub join_timeout: Duration,
    /// Most halves waiting at once (beyond it, a new half is refused with 503).
    pub max_pending: usize,
    /// Most bytes the waiting halves may hold (beyond it, a new half is refused with 503).
    pub max_pending_bytes: u64,
    /// Which predictions are kept, per model.
    pub sampling: SamplePolicy,
}

impl Default for CloudEventsConfig {
    fn default() -> CloudEventsConfig {
        CloudEventsConfig {
            query_token: false,
            default_version: None,
            join_timeout: Duration::from_secs(30),
            max_pending: 100_000,
            max_pending_bytes: 256 << 20,
            sampling: SamplePolicy::default(),
        }
    }
}

/// Every integration's settings.
#[derive(Debug, Clone, Default)]
pub struct IntegrationsConfig {
    pub mlflow: MlflowConfig,
    pub cloudevents: CloudEventsConfig,
    pub openlineage: mlaudit_integrations::openlineage::Options,
}

/// The integrations' settings and running state.
#[derive(Debug)]
pub struct Integrations {
    pub config: IntegrationsConfig,
    pub joiner: join::Joiner,
    pub counters: Counters,
}

impl Integrations {
    /// Integrations with `config`, joining inference halves through `joiner`.
    pub fn new(config: IntegrationsConfig, joiner: join::Joiner) -> Integrations {
        Integrations {
            config,
            joiner,
            counters: Counters::default(),
        }
    }
}

impl Default for Integrations {
    /// Nothing configured; inference halves are joined in memory only (tests and embedders
    /// that give no journal).
    fn default() -> Integrations {
        Integrations::new(IntegrationsConfig::default(), join::Joiner::in_memory())
    }
}

/// The integrations that count requests and events in `/metrics`.
pub const NAMES: [&str; 3] = ["mlflow", "cloudevents", "openlineage"];

/// Per-integration counters for `/metrics`.
#[derive(Debug, Default)]
pub struct Counters {
    accepted: [AtomicU64; 3],
    refused: [AtomicU64; 3],
    events: [AtomicU64; 3],
    /// Inference halves written alone after the join timed out.
    pub unmatched: AtomicU64,
    /// Predictions left out by the sampling policy.
    pub sampled_out: AtomicU64,
}

impl Counters {
    fn slot(name: &str) -> usize {
        NAMES.iter().position(|n| *n == name).unwrap_or(0)
    }

    /// Counts a request of `integration` that was answered 2xx with `events` new events.
    pub fn accepted(&self, integration: &str, events: u64) {
        self.accepted[Self::slot(integration)].fetch_add(1, Ordering::Relaxed);
        self.events[Self::slot(integration)].fetch_add(events, Ordering::Relaxed);
    }

    /// Counts events a receiver wrote outside a request (an inference half written alone).
    pub fn written(&self, integration: &str, events: u64) {
        self.events[Self::slot(integration)].fetch_add(events, Ordering::Relaxed);
    }

    pub fn refused(&self, integration: &str) {
        self.refused[Self::slot(integration)].fetch_add(1, Ordering::Relaxed);
    }

    /// (integration, accepted requests, refused requests, events written).
    pub fn snapshot(&self) -> Vec<(&'static str, u64, u64, u64)> {
        NAMES
            .iter()
            .enumerate()
            .map(|(i, n)| {
                (
                    *n,
                    self.accepted[i].load(Ordering::Relaxed),
                    self.refused[i].load(Ordering::Relaxed),
                    self.events[i].load(Ordering::Relaxed),
                )
            })
            .collect()
    }
}

/// A translation error as the client's 4xx.
pub(crate) fn refused(e: TranslateError) -> ApiError {
    match e {
        TranslateError::Malformed(m) => ApiError::BadRequest(m),
        TranslateError::UnknownType(m) => ApiError::Unprocessable(m),
        TranslateError::TooMany { count, max } => ApiError::TooLarge {
            limit: "max_events_per_batch",
            max: max as u64,
            message: format!("the body holds {count} records; at most {max} are taken at once"),
        },
        other => ApiError::BadRequest(other.to_string()),
    }
}

/// A request's headers and its body, read within the body timeout and size limit, and
/// decompressed when `Content-Encoding: gzip`.
pub(crate) async fn read_body(
    state: &AppState,
    req: Request,
) -> Result<(HeaderMap, Vec<u8>), ApiError> {
    let headers = req.headers().clone();
    let gzip = crate::ingest::gzipped(&headers);
    let body = crate::ingest::read_bytes(state, req).await?;
    let body = if gzip? {
        crate::ingest::gunzip(&body, state.limits.max_body_bytes)?
    } else {
        body.to_vec()
    };
    Ok((headers, body))
}

/// The body's media type, lower-cased, without parameters.
pub(crate) fn media_type(headers: &HeaderMap) -> String {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase()
}

/// Checks translated events without writing them: the batch limit (413) and the catalogue
/// (a 422 naming each invalid one).
pub(crate) fn check_values(principal: &str, values: &[Value]) -> Result<(), ApiError> {
    let errors: Vec<Value> = values
        .iter()
        .enumerate()
        .filter_map(|(index, v)| {
            mlaudit_core::event::prepare(&v.to_string(), principal)
                .err()
                .map(|e| serde_json::json!({"index": index, "kind": v.get("kind"), "error": e.to_string()}))
        })
        .collect();
    if errors.is_empty() {
        Ok(())
    } else {
        Err(ApiError::Invalid {
            count: errors.len(),
            errors,
        })
    }
}

/// Validates translated events (all-or-nothing, a 422 naming each invalid one — a
/// translation the catalogue refuses, or one over the event limits) and appends them durably.
pub(crate) async fn append_values(
    state: &AppState,
    principal: &str,
    values: &[Value],
) -> Result<Option<AppendReceipt>, ApiError> {
    let limit = state.limits.max_events_per_batch;
    if values.len() > limit {
        return Err(ApiError::TooLarge {
            limit: "max_events_per_batch",
            max: limit as u64,
            message: format!(
                "the body translates into {} events; at most {limit} are written at once",
                values.len()
            ),
        });
    }
    let mut events = Vec::with_capacity(values.len());
    let mut errors = Vec::new();
    for (index, v) in values.iter().enumerate() {
        match mlaudit_core::event::prepare(&v.to_string(), principal) {
            Ok(e) => events.push(e),
            Err(e) => errors.push(serde_json::json!({
                "index": index,
                "kind": v.get("kind"),
                "error": e.to_string(),
            })),
        }
    }
    if !errors.is_empty() {
        return Err(ApiError::Invalid {
            count: errors.len(),
            errors,
        });
    }
    if events.is_empty() {
        return Ok(None);
    }
    crate::ingest::append_prepared(state, events)
        .await
        .map(Some)
}

/// The number of events of a receipt that were new.
pub(crate) fn new_events(receipt: Option<&AppendReceipt>) -> u64 {
    receipt.map_or(0, |r| {
        r.events.iter().filter(|e| !e.duplicate).count() as u64
    })
}

/// The answer to a body whose events are durable: the receipt's ids and seqs, plus what the
/// receiver did beside (`extra`).
pub(crate) fn answer(receipt: Option<&AppendReceipt>, extra: Value) -> axum::response::Response {
    use axum::response::IntoResponse;
    let mut body = serde_json::json!({
        "events": receipt.map_or(Vec::new(), |r| r.events.iter().map(|e| serde_json::json!({
            "id": e.id.to_string(), "seq": e.seq, "duplicate": e.duplicate,
        })).collect()),
    });
    if let Some(r) = receipt {
        body["tree_size"] = r.tree_size.into();
        body["checkpoint"] = r.checkpoint.clone().into();
    }
    if let (Some(b), Value::Object(extra)) = (body.as_object_mut(), extra) {
        b.extend(extra);
    }
    axum::Json(body).into_response()
}
