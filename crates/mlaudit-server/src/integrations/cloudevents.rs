//! `POST /v1/integrations/cloudevents`: CloudEvents 1.0.2 in binary mode (`ce-*` headers),
//! structured mode (`application/cloudevents+json`) or a batch
//! (`application/cloudevents-batch+json`). KServe's and Seldon's inference halves are joined
//! ([`super::join`]) into `prediction.served`, after the model's sampling policy; CDEvents
//! become operations events; any other type `x.cloudevents`. Answers 200 once everything of
//! the body is durable (KServe's logger treats any other status as a failure).

use super::join::{JournalError, Offer, Waiting};
use super::{append_values, media_type, read_body, refused};
use crate::auth::Principal;
use crate::error::ApiError;
use crate::AppState;
use axum::extract::{Request, State};
use axum::response::Response;
use mlaudit_core::entry::EventId;
use mlaudit_integrations::cloudevents::{self as ce, Classified, Half, Side};
use serde_json::json;

const NAME: &str = "cloudevents";

pub async fn post(State(state): State<AppState>, mut req: Request) -> Result<Response, ApiError> {
    let principal = req.extensions_mut().remove::<Principal>().ok_or_else(|| {
        ApiError::Internal("the request reached a receiver without a principal".into())
    })?;
    let outcome = receive(&state, &principal.name, req).await;
    match &outcome {
        Ok(_) => {}
        Err(e) if e.is_client_error() => state.integrations.counters.refused(NAME),
        Err(_) => {}
    }
    outcome
}

async fn receive(state: &AppState, principal: &str, req: Request) -> Result<Response, ApiError> {
    let (headers, body) = read_body(state, req).await?;
    let mime = media_type(&headers);
    let max = state.limits.max_events_per_batch;
    let events = if mime == "application/cloudevents-batch+json" {
        ce::from_batch(&body, max).map_err(refused)?
    } else if mime.starts_with("application/cloudevents") {
        let value = serde_json::from_slice(&body).map_err(|e| {
            ApiError::BadRequest(format!("the structured CloudEvent is not JSON: {e}"))
        })?;
        vec![ce::from_structured(value).map_err(refused)?]
    } else if headers.contains_key("ce-specversion") {
        let pairs = headers
            .iter()
            .filter_map(|(k, v)| Some((k.as_str(), v.to_str().ok()?)));
        let content_type = headers
            .get(axum::http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok());
        vec![ce::from_binary(pairs, content_type, &body).map_err(refused)?]
    } else {
        return Err(ApiError::BadRequest(
            "not a CloudEvent: send ce-* headers (binary mode), application/cloudevents+json (structured) or application/cloudevents-batch+json (a batch)".into(),
        ));
    };
    // Everything is checked before anything is written: a body answered 4xx writes nothing.
    let mut complete = Vec::new();
    let mut halves = Vec::new();
    let mut sampled_out = 0u64;
    let config = &state.integrations.config.cloudevents;
    for (index, event) in events.into_iter().enumerate() {
        match ce::classify(event).map_err(refused)? {
            Classified::Event(v) => complete.push(v),
            Classified::Half(h) => match config.sampling.keep(&h.model, &h.request) {
                None => sampled_out += 1,
                Some(rate) => {
                    let w = Waiting {
                        half: *h,
                        principal: principal.to_owned(),
                        rate,
                        arrived_ns: crate::auth::now_ns(),
                        bytes: 0,
                    };
                    check_alone(state, &w, index)?;
                    halves.push(w);
                }
            },
        }
    }
    super::check_values(principal, &complete)?;
    state
        .integrations
        .counters
        .sampled_out
        .fetch_add(sampled_out, std::sync::atomic::Ordering::Relaxed);
    let mut receipts = Vec::new();
    receipts.extend(append_values(state, principal, &complete).await?);
    let mut waiting = std::collections::HashSet::new();
    for w in halves {
        let key = (w.half.logger, w.half.key.clone());
        match offer(state, w).await? {
            Handled::Written(receipt) => {
                // Its partner may have come earlier in this same body.
                waiting.remove(&key);
                receipts.extend(receipt);
            }
            Handled::Waiting => {
                waiting.insert(key);
            }
        }
    }
    let written = receipts.iter().map(|r| super::new_events(Some(r))).sum();
    state.integrations.counters.accepted(NAME, written);
    // One receipt for the whole body: every event written, and the tree after the last.
    let merged = receipts.into_iter().reduce(|mut all, r| {
        all.events.extend(r.events);
        all.tree_size = r.tree_size;
        all.checkpoint = r.checkpoint;
        all
    });
    Ok(super::answer(
        merged.as_ref(),
        json!({ "waiting_for_partner": waiting.len(), "sampled_out": sampled_out }),
    ))
}

enum Handled {
    Written(Option<mlaudit_store::AppendReceipt>),
    Waiting,
}

/// Refuses (422, nothing kept) a half that even alone would not make a valid event — too
/// large, say — so that nothing acknowledged can fail to be written later.
fn check_alone(state: &AppState, w: &Waiting, index: usize) -> Result<(), ApiError> {
    let alone = alone_event(state, w)?;
    mlaudit_core::event::prepare(&alone.to_string(), &w.principal)
        .map(|_| ())
        .map_err(|e| ApiError::Invalid {
            count: 1,
            errors: vec![
                json!({"index": index, "kind": "prediction.served", "error": e.to_string()}),
            ],
        })
}

/// Joins a checked half with its partner, or makes it wait (durably).
async fn offer(state: &AppState, waiting: Waiting) -> Result<Handled, ApiError> {
    let config = &state.integrations.config.cloudevents;
    let integrations = state.integrations.clone();
    let max = (config.max_pending, config.max_pending_bytes);
    let offered = {
        let w = waiting.clone();
        tokio::task::spawn_blocking(move || integrations.joiner.offer(w, max))
            .await
            .map_err(|e| ApiError::Internal(format!("join task failed: {e}")))?
    };
    let principal = waiting.principal.as_str();
    let partner = match offered {
        Ok(Offer::Joined(partner)) => *partner,
        Ok(Offer::Waiting | Offer::Duplicate) => return Ok(Handled::Waiting),
        Ok(Offer::Differs) => {
            // Another inference under an id that is waiting: written alone at once, under an
            // id of its own content.
            let mut event = alone_event(state, &waiting)?;
            event["id"] = json!(EventId::derived(
                waiting.half.logger.as_str(),
                &format!(
                    "{}/{}/{}",
                    waiting.half.key,
                    waiting.half.side.as_str(),
                    waiting.digest()
                )
            )
            .to_string());
            event["attributes"]["join"] = json!("id_reused");
            let receipt = append_values(state, principal, &[event]).await?;
            return Ok(Handled::Written(receipt));
        }
        Err(e @ (JournalError::Full(_) | JournalError::FullBytes(_))) => {
            return Err(ApiError::Store(mlaudit_store::StoreError::Unavailable(
                e.to_string(),
            )))
        }
        Err(e) => return Err(ApiError::Internal(e.to_string())),
    };
    let rate = waiting.rate;
    let (request, response) = match waiting.half.side {
        Side::Request => (&waiting, &partner),
        Side::Response => (&partner, &waiting),
    };
    let joined = ce::prediction(
        Some(&request.half),
        Some(&response.half),
        rate,
        config.default_version.as_deref(),
    )
    .map_err(refused)?;
    // Two halves that are each valid may still be too large together: then each is written
    // alone (both were checked), never dropped.
    let events = match mlaudit_core::event::prepare(&joined.to_string(), principal) {
        Ok(_) => vec![joined],
        Err(_) => {
            let mut both = [alone_event(state, &partner)?, alone_event(state, &waiting)?];
            for e in &mut both {
                e["attributes"]["join"] = json!("too_large_to_join");
            }
            both.to_vec()
        }
    };
    match append_values(state, principal, &events).await {
        Ok(receipt) => {
            let integrations = state.integrations.clone();
            let _ = tokio::task::spawn_blocking(move || integrations.joiner.forget(&partner)).await;
            Ok(Handled::Written(receipt))
        }
        Err(e) => {
            state.integrations.joiner.put_back(partner);
            Err(e)
        }
    }
}

/// The event of a half written alone (its partner never came, or the two are too large to
/// join).
fn alone_event(state: &AppState, w: &Waiting) -> Result<serde_json::Value, ApiError> {
    let (request, response) = match w.half.side {
        Side::Request => (Some(&w.half), None),
        Side::Response => (None, Some(&w.half)),
    };
    let config = &state.integrations.config.cloudevents;
    ce::prediction(request, response, w.rate, config.default_version.as_deref()).map_err(refused)
}

/// The id of the joined event of a half's inference.
fn joined_id(half: &Half) -> EventId {
    EventId::derived(half.logger.as_str(), &half.key)
}

/// Whether the log already holds this half: in its inference's joined event, with this very
/// content (a `done` line lost in a crash). A joined event of the same id that carries other
/// content (another inference reusing the id) does not count.
async fn carried_already(state: &AppState, w: &Waiting) -> Result<bool, ApiError> {
    let store = state.store.clone();
    let id = joined_id(&w.half);
    let payload = tokio::task::spawn_blocking(move || match store.seq_of(&id)? {
        Some(seq) => store.event(seq).map(|e| e.payload),
        None => Ok(None),
    })
    .await
    .map_err(|e| ApiError::Internal(format!("lookup task failed: {e}")))??;
    let Some(payload) = payload else {
        return Ok(false);
    };
    let stored: serde_json::Value = serde_json::from_slice(&payload).unwrap_or_default();
    let field = match w.half.side {
        Side::Request => "inputs",
        Side::Response => "outputs",
    };
    Ok(stored["attributes"].get(field) == w.half.event.data_value().as_ref())
}

/// Writes every half whose partner did not come within the join timeout, alone (its missing
/// side named in `attributes.unreported`), unless its joined event is already in the log (a
/// `done` line lost in a crash). Runs until the server stops.
pub async fn sweep(state: AppState) {
    let timeout = state.integrations.config.cloudevents.join_timeout;
    let tick = (timeout / 4).clamp(
        std::time::Duration::from_millis(100),
        std::time::Duration::from_secs(5),
    );
    let mut interval = tokio::time::interval(tick);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        interval.tick().await;
        let cutoff = crate::auth::now_ns()
            .saturating_sub(i64::try_from(timeout.as_nanos()).unwrap_or(i64::MAX));
        for w in state.integrations.joiner.due(cutoff) {
            if let Err(e) = write_alone(&state, &w).await {
                tracing::warn!(error = %e, key = %w.half.key, "cannot write an unmatched inference half yet; retrying");
                state.integrations.joiner.put_back(w);
            }
        }
    }
}

async fn write_alone(state: &AppState, w: &Waiting) -> Result<(), ApiError> {
    if !carried_already(state, w).await? {
        let event = alone_event(state, w)?;
        let receipt = match append_values(state, &w.principal, &[event]).await {
            // Its own event is in the log already (written alone before, say as too large
            // to join, and this half re-sent since): nothing to add.
            Err(ApiError::Store(mlaudit_store::StoreError::Conflict { .. })) => None,
            Err(e) if e.is_client_error() => {
                // Checked when it arrived, so only a change of limits since (a restart with
                // other settings) gets here: keep what can be kept rather than retry forever.
                tracing::error!(error = %e, key = %w.half.key, "an inference half no longer makes a valid event; recording its context and digest");
                append_values(state, &w.principal, &[unwritable(w, &e)]).await?
            }
            other => other?,
        };
        state
            .integrations
            .counters
            .written(NAME, super::new_events(receipt.as_ref()));
        state
            .integrations
            .counters
            .unmatched
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
    let integrations = state.integrations.clone();
    let w = w.clone();
    let _ = tokio::task::spawn_blocking(move || integrations.joiner.forget(&w)).await;
    Ok(())
}

/// `x.cloudevents.unwritable`: an acknowledged half that no longer validates, as its context,
/// the SHA-256 and size of its data and the reason.
fn unwritable(w: &Waiting, why: &ApiError) -> serde_json::Value {
    let event = &w.half.event;
    let data = match (&event.data, &event.data_base64) {
        (Some(d), _) => d.to_string(),
        (None, Some(b)) => b.clone(),
        (None, None) => String::new(),
    };
    json!({
        "id": EventId::derived(w.half.logger.as_str(), &format!("{}/{}/unwritable", w.half.key, w.half.side.as_str())).to_string(),
        "kind": "x.cloudevents.unwritable",
        "actor": {"id": format!("{}:{}", w.half.logger.as_str(), w.half.model), "type": "service"},
        "subject": {"model": w.half.model, "request": w.half.request},
        "attributes": {
            "side": w.half.side.as_str(),
            "cloudevent": w.half.event.context(),
            "data_sha256": mlaudit_integrations::sha256_hex(data.as_bytes()),
            "data_bytes": data.len(),
            "reason": why.to_string(),
        },
    })
}
