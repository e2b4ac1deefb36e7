//! `POST /v1/integrations/mlflow/webhook`: MLflow registry webhooks, authenticated by their
//! HMAC signature (MLflow sends no bearer token) against `[integrations.mlflow]
//! webhook_secret`. A delivery's event id derives from its `X-MLflow-Delivery-Id`, so MLflow's
//! retries are stored once. The principal recorded is `integration:mlflow-webhook`.
//!
//! MLflow names no actor. With `tracking_uri` set, the creator of a new model version is
//! looked up (`GET /api/2.0/mlflow/model-versions/get` → `user_id`, within 3 s); every other
//! event, or a failed lookup, records the `mlflow` service as the actor with
//! `attributes.human_actor = "unknown"`.

use super::{append_values, read_body, refused};
use crate::error::ApiError;
use crate::AppState;
use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use mlaudit_integrations::mlflow::{self as mf, WebhookActor};
use mlaudit_store::Query;
use serde_json::{json, Value};
use std::time::Duration;

const NAME: &str = "mlflow";
/// The principal of signed deliveries.
pub const PRINCIPAL: &str = "integration:mlflow-webhook";
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(3);

pub async fn post(State(state): State<AppState>, req: Request) -> Result<Response, ApiError> {
    let outcome = receive(&state, req).await;
    if let Err(e) = &outcome {
        if e.is_client_error() {
            state.integrations.counters.refused(NAME);
        }
    }
    outcome
}

fn header<'a>(headers: &'a axum::http::HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

async fn receive(state: &AppState, req: Request) -> Result<Response, ApiError> {
    let config = &state.integrations.config.mlflow;
    let Some(secret) = config.webhook_secret.clone() else {
        return Err(ApiError::NotEnabled(
            "the MLflow webhook receiver is off: set [integrations.mlflow] webhook_secret (or MLAUDIT_MLFLOW_WEBHOOK_SECRET)".into(),
        ));
    };
    let (headers, body) = read_body(state, req).await?;
    let delivery_id = header(&headers, "x-mlflow-delivery-id");
    mf::verify_signature(
        secret.as_bytes(),
        delivery_id,
        header(&headers, "x-mlflow-timestamp"),
        header(&headers, "x-mlflow-signature"),
        &body,
        crate::auth::now_ns() / 1_000_000_000,
    )
    .map_err(|e| {
        tracing::warn!(reason = %e, "MLflow webhook refused");
        ApiError::Unauthorized(e.to_string())
    })?;
    let delivery_id = delivery_id.unwrap_or_default().to_owned();
    if delivery_id.is_empty() || delivery_id.len() > 256 {
        return Err(ApiError::BadRequest(
            "X-MLflow-Delivery-Id must be 1 to 256 bytes".into(),
        ));
    }
    let delivery = mf::parse_delivery(&body).map_err(refused)?;
    let actor = match (delivery.created_version(), &config.tracking_uri) {
        (Some((name, version)), Some(uri)) => {
            look_up_creator(uri.clone(), config.tracking_token.clone(), name, version).await
        }
        _ => WebhookActor::Unknown,
    };
    let alias_version = match delivery.deleted_alias() {
        Some((model, alias)) => last_alias_version(state, model, alias).await?,
        None => None,
    };
    let event = mf::webhook_event(&delivery, &delivery_id, &actor, alias_version.as_deref())
        .map_err(refused)?;
    let id = event["id"].as_str().unwrap_or_default().to_owned();
    let receipt = match append_values(state, PRINCIPAL, std::slice::from_ref(&event)).await {
        // A creation whose id is taken, with other content: the same fact recorded by
        // `mlaudit import mlflow` (acknowledged as a duplicate), or another object of the same
        // name (a model deleted and created again), written under the delivery's own id.
        Err(ApiError::Store(mlaudit_store::StoreError::Conflict { .. })) => {
            let (seq, same) = same_fact(state, &id, &event).await?;
            if same {
                return Ok(already_recorded(state, &id, seq));
            }
            let mut again = event.clone();
            again["id"] = json!(mlaudit_core::entry::EventId::derived(
                "mlflow-webhook",
                &delivery_id
            )
            .to_string());
            again["attributes"]["same_id_as"] = json!(id);
            append_values(state, PRINCIPAL, &[again]).await?
        }
        other => other?,
    };
    state
        .integrations
        .counters
        .accepted(NAME, super::new_events(receipt.as_ref()));
    Ok(super::answer(receipt.as_ref(), json!({})))
}

/// Whether the event stored under `id` records the same creation as `event` (same subject,
/// and for a version the same source), and its seq.
async fn same_fact(
    state: &AppState,
    id: &str,
    event: &Value,
) -> Result<(Option<u64>, bool), ApiError> {
    let parsed = mlaudit_core::entry::EventId::parse(id)
        .ok_or_else(|| ApiError::Internal("a translated event has no id".into()))?;
    let store = state.store.clone();
    let found = tokio::task::spawn_blocking(move || match store.seq_of(&parsed)? {
        Some(seq) => store.event(seq).map(|e| Some((seq, e.payload))),
        None => Ok(None),
    })
    .await
    .map_err(|e| ApiError::Internal(format!("lookup task failed: {e}")))??;
    let Some((seq, Some(payload))) = found else {
        return Ok((None, false));
    };
    let stored: Value = serde_json::from_slice(&payload).unwrap_or_default();
    let same = stored["kind"] == event["kind"]
        && stored["subject"] == event["subject"]
        && stored["attributes"]["source"] == event["attributes"]["source"];
    Ok((Some(seq), same))
}

/// The answer for a delivery whose fact is already in the log under its id.
fn already_recorded(state: &AppState, id: &str, seq: Option<u64>) -> Response {
    state.integrations.counters.accepted(NAME, 0);
    axum::Json(json!({
        "events": [{"id": id, "seq": seq, "duplicate": true}],
        "recorded_by": "an earlier delivery or import of the same object",
    }))
    .into_response()
}

/// The creator of a model version per the MLflow REST API, or `Unknown` (logged) when the
/// lookup fails or names nobody.
async fn look_up_creator(
    uri: String,
    token: Option<String>,
    name: String,
    version: String,
) -> WebhookActor {
    let found = tokio::task::spawn_blocking(move || {
        let agent = ureq::AgentBuilder::new().timeout(LOOKUP_TIMEOUT).build();
        let url = format!(
            "{}/api/2.0/mlflow/model-versions/get",
            uri.trim_end_matches('/')
        );
        let mut request = agent
            .get(&url)
            .query("name", &name)
            .query("version", &version);
        if let Some(t) = &token {
            request = request.set("Authorization", &format!("Bearer {t}"));
        }
        let body: Value = request
            .call()
            .map_err(|e| e.to_string())?
            .into_json()
            .map_err(|e| e.to_string())?;
        Ok::<_, String>(
            body.pointer("/model_version/user_id")
                .and_then(Value::as_str)
                .map(str::to_owned),
        )
    })
    .await;
    match found {
        // MLflow records `unknown` for a version created without a user: nobody.
        Ok(Ok(Some(user))) if !user.is_empty() && user != "unknown" => WebhookActor::Looked(user),
        Ok(Ok(_)) => WebhookActor::Unknown,
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "MLflow user lookup failed; recording the actor as unknown");
            WebhookActor::Unknown
        }
        Err(e) => {
            tracing::warn!(error = %e, "MLflow user lookup task failed");
            WebhookActor::Unknown
        }
    }
}

/// The version `alias` of `model` was last assigned to in this log (by a webhook or an
/// import), for a deletion whose body does not say.
async fn last_alias_version(
    state: &AppState,
    model: String,
    alias: String,
) -> Result<Option<String>, ApiError> {
    let store = state.store.clone();
    tokio::task::spawn_blocking(move || {
        let mut found = None;
        let mut after = None;
        loop {
            let seqs = store.query(&Query {
                kind: Some("registry.stage_changed".into()),
                model: Some(model.clone()),
                after_seq: after,
                limit: 1000,
                ..Query::default()
            })?;
            for &seq in &seqs {
                let ev = store.event(seq)?;
                let Some(payload) = ev.payload else { continue };
                let Ok(v) = serde_json::from_slice::<Value>(&payload) else {
                    continue;
                };
                let attrs = &v["attributes"];
                if attrs["to_stage"].as_str() == Some(alias.as_str())
                    && attrs["alias"].as_bool() == Some(true)
                {
                    found = v["subject"]["version"].as_str().map(str::to_owned);
                }
            }
            match seqs.last() {
                Some(&last) if seqs.len() == 1000 => after = Some(last),
                _ => break,
            }
        }
        Ok::<_, mlaudit_store::StoreError>(found)
    })
    .await
    .map_err(|e| ApiError::Internal(format!("lookup task failed: {e}")))?
    .map_err(ApiError::from)
}
