//! `POST /v1/events`: one JSON event, a JSON array of events, or NDJSON
//! (`application/x-ndjson`), optionally gzip-compressed (`Content-Encoding: gzip`).
//!
//! A batch is all-or-nothing: every event is validated first; if any is invalid the response is
//! 422 listing each by index with its reason and nothing is written. Otherwise the batch is
//! appended and the response (200) comes only after it is durable, with each event's id, seq and
//! whether it was already in the log.

use crate::auth::Principal;
use crate::error::ApiError;
use crate::AppState;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{FromRequest, Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use mlaudit_core::event::{prepare, PreparedEvent};
use mlaudit_queue::decode::{mime, Format};
use mlaudit_store::AppendReceipt;
use serde_json::json;
use serde_json::value::RawValue;
use std::io::Read;

/// The body's format, from its content type. `Json` is one event or an array of them.
fn shape(headers: &HeaderMap) -> Result<Format, ApiError> {
    let ct = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    match Format::of_content_type(ct) {
        Some(format) => Ok(format),
        None if mime(ct).is_empty() => Err(ApiError::UnsupportedMediaType("a Content-Type is required: application/json, application/x-ndjson or application/x-protobuf".into())),
        None => Err(ApiError::UnsupportedMediaType(format!("unsupported Content-Type {:?}: use application/json, application/x-ndjson or application/x-protobuf", mime(ct)))),
    }
}

/// Decompresses a gzip body, refusing to inflate past `max` bytes.
pub(crate) fn gunzip(body: &[u8], max: u64) -> Result<Vec<u8>, ApiError> {
    let mut out = Vec::new();
    let mut reader = flate2::read::GzDecoder::new(body).take(max + 1);
    reader
        .read_to_end(&mut out)
        .map_err(|e| ApiError::BadRequest(format!("the gzip body does not decompress: {e}")))?;
    if out.len() as u64 > max {
        return Err(ApiError::TooLarge {
            limit: "max_body_bytes",
            max,
            message: format!("the decompressed body exceeds {max} bytes"),
        });
    }
    Ok(out)
}

/// The body's event texts, in order, refusing more than `max` as soon as the count is passed
/// (before the rest is parsed).
fn split<'a>(shape: &Format, text: &'a str, max: usize) -> Result<Vec<&'a str>, ApiError> {
    let too_many = || ApiError::TooLarge {
        limit: "max_events_per_batch",
        max: max as u64,
        message: format!("more than {max} events in one batch (the limit)"),
    };
    match shape {
        Format::Protobuf => Err(ApiError::Internal(
            "protobuf bodies are decoded before splitting".into(),
        )),
        Format::Ndjson => {
            let mut out = Vec::new();
            for line in text.lines().filter(|l| !l.trim().is_empty()) {
                if out.len() == max {
                    return Err(too_many());
                }
                out.push(line);
            }
            Ok(out)
        }
        Format::Json => {
            if !text.trim_start().starts_with('[') {
                return Ok(vec![text]);
            }
            let mut de = serde_json::Deserializer::from_str(text);
            let items = serde::Deserializer::deserialize_seq(&mut de, Bounded { max })
                .and_then(|items| de.end().map(|()| items));
            match items {
                Ok(items) => Ok(items),
                Err(e) if e.to_string().starts_with(TOO_MANY) => Err(too_many()),
                Err(e) => Err(ApiError::BadRequest(format!("invalid JSON array: {e}"))),
            }
        }
    }
}

/// The error [`Bounded`] stops with.
const TOO_MANY: &str = "too many events";

/// A JSON array of at most `max` raw values, refused at the first one over.
struct Bounded {
    max: usize,
}

impl<'de> serde::de::Visitor<'de> for Bounded {
    type Value = Vec<&'de str>;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("an array of events")
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut out = Vec::new();
        while let Some(item) = seq.next_element::<&'de RawValue>()? {
            if out.len() == self.max {
                return Err(serde::de::Error::custom(TOO_MANY));
            }
            out.push(item.get());
        }
        Ok(out)
    }
}

pub async fn post_events(
    State(state): State<AppState>,
    mut req: Request,
) -> Result<Response, ApiError> {
    // Taken from the request rather than through the `Extension` and `HeaderMap` extractors,
    // which clone the principal and the whole header map on every request.
    let principal = req.extensions_mut().remove::<Principal>().ok_or_else(|| {
        ApiError::Internal("the request reached ingest without a principal".into())
    })?;
    let shape = shape(req.headers());
    let gzip = gzipped(req.headers());
    let body = read_bytes(&state, req).await?;
    let shape = shape?;
    let gzip = gzip?;
    // Decompression, parsing and validation are CPU work: a large or compressed body is
    // handled on a blocking thread so that the async workers keep serving other connections;
    // a small one here (a blocking-pool hand-off costs more than parsing it). The append is
    // then submitted to the store, and this task waits for durability without holding a thread.
    let principal = principal.name;
    let events = if !gzip && body.len() <= INLINE_PARSE_MAX_BYTES {
        parse_batch(&state, &principal, &shape, false, &body)?
    } else {
        let state2 = state.clone();
        tokio::task::spawn_blocking(move || parse_batch(&state2, &principal, &shape, gzip, &body))
            .await
            .map_err(|e| ApiError::Internal(format!("ingest task failed: {e}")))??
    };
    let receipt = append_prepared(&state, events).await?;
    Ok(receipt_json(&receipt))
}

/// Whether a body is gzip-compressed (`Content-Encoding: gzip`; `identity` or none is plain),
/// or a 415 for any other coding.
pub(crate) fn gzipped(headers: &HeaderMap) -> Result<bool, ApiError> {
    let encoding = headers
        .get(header::CONTENT_ENCODING)
        .map(|v| v.to_str().unwrap_or("?").trim().to_ascii_lowercase());
    match encoding.as_deref() {
        None | Some("identity") => Ok(false),
        Some("gzip") => Ok(true),
        Some(other) => Err(ApiError::UnsupportedMediaType(format!(
            "unsupported Content-Encoding {other:?}: only gzip"
        ))),
    }
}

/// A request's body, read within the body timeout (408) and the size limit (413).
pub(crate) async fn read_bytes(state: &AppState, req: Request) -> Result<Bytes, ApiError> {
    let limits = state.limits;
    let read = tokio::time::timeout(limits.body_read_timeout, Bytes::from_request(req, state));
    read.await
        .map_err(|_| {
            ApiError::Timeout(format!(
                "the body did not arrive within {} s",
                limits.body_read_timeout.as_secs_f64()
            ))
        })?
        .map_err(|r: BytesRejection| match r.status() {
            StatusCode::PAYLOAD_TOO_LARGE => ApiError::TooLarge {
                limit: "max_body_bytes",
                max: limits.max_body_bytes,
                message: format!("the body exceeds {} bytes", limits.max_body_bytes),
            },
            _ => ApiError::BadRequest(format!("cannot read the body: {r}")),
        })
}

/// Appends validated events and waits (without holding a thread) until they are durable.
pub(crate) async fn append_prepared(
    state: &AppState,
    events: Vec<PreparedEvent>,
) -> Result<AppendReceipt, ApiError> {
    let stages: Vec<mlaudit_core::event::Stage> = events.iter().map(PreparedEvent::stage).collect();
    let (tx, rx) = tokio::sync::oneshot::channel();
    let metrics = state.metrics.clone();
    // Counted here, not after the await: a client that disconnects while waiting does not
    // make its durable events go uncounted.
    let done: mlaudit_store::AppendDone = Box::new(move |outcome| {
        if let Ok(receipt) = &outcome {
            count_ingested(&metrics, &stages, receipt);
        }
        let _ = tx.send(outcome);
    });
    if let Err((events, done)) = state.store.try_submit(events, done) {
        // The store's queue is full, or the engine's submit waits for the disk: not on an
        // async worker.
        let store = state.store.clone();
        tokio::task::spawn_blocking(move || store.submit(events, done));
    }
    rx.await
        .map_err(|_| ApiError::Internal("the store dropped the append".into()))?
        .map_err(ApiError::from)
}

/// Bodies up to this size (uncompressed: about 50 events, ~0.1 ms of parsing) are parsed on
/// the async worker itself.
const INLINE_PARSE_MAX_BYTES: usize = 16 << 10;

/// Decodes and validates a batch: all-or-nothing, a 422 listing every invalid event.
fn parse_batch(
    state: &AppState,
    principal: &str,
    shape: &Format,
    gzip: bool,
    body: &[u8],
) -> Result<Vec<PreparedEvent>, ApiError> {
    let limits = state.limits;
    let inflated;
    let raw = if gzip {
        inflated = gunzip(body, limits.max_body_bytes)?;
        &inflated[..]
    } else {
        body
    };
    let decoded: Vec<String>;
    let texts: Vec<&str> = match shape {
        Format::Protobuf => {
            decoded = crate::protobuf::decode_batch_limited(raw, limits.max_events_per_batch)
                .map_err(|e| match e {
                    crate::protobuf::ProtoError::TooMany { max, .. } => ApiError::TooLarge {
                        limit: "max_events_per_batch",
                        max: max as u64,
                        message: e.to_string(),
                    },
                    other => ApiError::BadRequest(other.to_string()),
                })?;
            decoded.iter().map(String::as_str).collect()
        }
        _ => {
            let text = std::str::from_utf8(raw).map_err(|e| {
                ApiError::BadRequest(format!(
                    "the body is not valid UTF-8 (at byte {})",
                    e.valid_up_to()
                ))
            })?;
            if text.trim().is_empty() {
                Vec::new()
            } else {
                split(shape, text, limits.max_events_per_batch)?
            }
        }
    };
    if texts.is_empty() {
        return Err(ApiError::BadRequest("the body holds no event".into()));
    }
    let mut events: Vec<PreparedEvent> = Vec::with_capacity(texts.len());
    let mut errors = Vec::new();
    for (index, t) in texts.iter().enumerate() {
        match prepare(t, principal) {
            Ok(e) => events.push(e),
            Err(e) => errors.push(json!({ "index": index, "error": e.to_string() })),
        }
    }
    if !errors.is_empty() {
        return Err(ApiError::Invalid {
            count: errors.len(),
            errors,
        });
    }
    Ok(events)
}

fn count_ingested(
    metrics: &crate::metrics::Metrics,
    stages: &[mlaudit_core::event::Stage],
    receipt: &AppendReceipt,
) {
    for (stage, appended) in stages.iter().zip(&receipt.events) {
        if !appended.duplicate {
            metrics.ingested(*stage, 1);
        }
    }
}

/// The 200 body for a durable batch: `{"events": [{"id", "seq", "duplicate"}...], "tree_size",
/// "checkpoint"}`, serialized straight from the receipt (a `serde_json::Value` tree cost a
/// map and four allocations per event).
pub(crate) fn receipt_json(receipt: &AppendReceipt) -> Response {
    #[derive(serde::Serialize)]
    struct Body<'a> {
        events: Vec<Event>,
        tree_size: u64,
        checkpoint: &'a str,
    }
    #[derive(serde::Serialize)]
    struct Event {
        #[serde(serialize_with = "display")]
        id: mlaudit_core::entry::EventId,
        seq: u64,
        duplicate: bool,
    }
    fn display<S: serde::Serializer>(
        id: &mlaudit_core::entry::EventId,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        s.collect_str(id)
    }
    let body = Body {
        events: receipt
            .events
            .iter()
            .map(|a| Event {
                id: a.id,
                seq: a.seq,
                duplicate: a.duplicate,
            })
            .collect(),
        tree_size: receipt.tree_size,
        checkpoint: &receipt.checkpoint,
    };
    match serde_json::to_vec(&body) {
        Ok(bytes) => ([(header::CONTENT_TYPE, "application/json")], bytes).into_response(),
        Err(e) => ApiError::Internal(format!("cannot encode the receipt: {e}")).into_response(),
    }
}
