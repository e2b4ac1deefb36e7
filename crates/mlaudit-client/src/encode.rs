//! From a typed [`Event`] to the bytes of one `mlaudit.v1.Event` protobuf message, and from
//! such messages to an `EventBatch` body.
//!
//! **Invariant:** an encoded event carries its id and time, so the bytes that are retried or
//! spooled are the very bytes first sent: a retry is the same event (the server answers it
//! with `duplicate: true`), never a second one.

use crate::event::{ActorKind, Event};
use crate::Actor;
use mlaudit_proto as proto;
use prost::Message;
use serde_json::Value;
use std::time::SystemTime;

/// Fresh random UUIDs (version 4), drawn from the OS a batch at a time.
#[derive(Debug, Default)]
pub(crate) struct Ids {
    pool: Vec<[u8; 16]>,
}

impl Ids {
    pub(crate) fn next(&mut self) -> uuid::Uuid {
        if self.pool.is_empty() {
            let mut bytes = [0u8; 16 * 64];
            if getrandom::getrandom(&mut bytes).is_err() {
                // No OS randomness: fall back to uuid's own source, one at a time.
                return uuid::Uuid::new_v4();
            }
            self.pool.extend(bytes.chunks_exact(16).map(|c| {
                let mut id = [0u8; 16];
                id.copy_from_slice(c);
                id
            }));
        }
        let bytes = self.pool.pop().unwrap_or_default();
        uuid::Builder::from_random_bytes(bytes).into_uuid()
    }
}

/// Nanoseconds since the Unix epoch, if `t` is within what the log stores (an `i64`: the
/// years 1677 to 2262).
pub(crate) fn unix_nanos(t: SystemTime) -> Option<i64> {
    match t.duration_since(std::time::UNIX_EPOCH) {
        Ok(after) => i64::try_from(after.as_nanos()).ok(),
        Err(before) => i64::try_from(before.duration().as_nanos()).ok().map(|n| -n),
    }
}

/// RFC 3339 in UTC, to the nanosecond. Never panics: a time outside the log's range (which
/// `log()` refuses) would be written as the epoch.
pub(crate) fn format_time(t: SystemTime) -> String {
    use time::format_description::well_known::Rfc3339;
    let nanos = unix_nanos(t).unwrap_or(0);
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(nanos))
        .ok()
        .and_then(|d| d.format(&Rfc3339).ok())
        .unwrap_or_default()
}

fn json_text(v: &Value) -> String {
    serde_json::to_string(v).unwrap_or_else(|_| "null".to_owned())
}

/// Encodes one event; a missing id is drawn from `ids`, a missing time is "now", a missing
/// actor is `default_actor`.
pub(crate) fn encode_event(event: Event, default_actor: &Actor, ids: &mut Ids) -> Vec<u8> {
    let actor = event.actor.as_ref().unwrap_or(default_actor);
    let s = event.subject;
    let subject = proto::Subject {
        model: s.model,
        version: s.version,
        dataset: s.dataset,
        dataset_version: s.dataset_version,
        run: s.run,
        pipeline_run: s.pipeline_run,
        deployment: s.deployment,
        request: s.request,
    };
    let prediction = event.prediction.map(|p| proto::PredictionAttributes {
        inputs_json: json_text(&p.inputs),
        outputs_json: json_text(&p.outputs),
        confidence: p.confidence,
        latency_ms: p.latency_ms,
        sample_rate: p.sample_rate,
    });
    let message = proto::Event {
        id: event.id.unwrap_or_else(|| ids.next()).to_string(),
        time: format_time(event.time.unwrap_or_else(SystemTime::now)),
        kind: event.kind.into_owned(),
        actor: Some(proto::Actor {
            id: actor.id.clone(),
            r#type: match actor.kind {
                ActorKind::User => proto::ActorType::User as i32,
                ActorKind::Service => proto::ActorType::Service as i32,
            },
        }),
        subject: Some(subject),
        attributes_json: if event.attributes.is_empty() {
            String::new()
        } else {
            json_text(&Value::Object(event.attributes))
        },
        prediction,
    };
    message.encode_to_vec()
}

/// Appends one encoded event to an `EventBatch` body (field 1, length-delimited).
pub(crate) fn push_framed(body: &mut Vec<u8>, event: &[u8]) {
    body.push(0x0a);
    prost::encoding::encode_varint(event.len() as u64, body);
    body.extend_from_slice(event);
}

/// The `EventBatch` body of these encoded events.
pub(crate) fn batch_body<'a>(events: impl IntoIterator<Item = &'a [u8]>) -> Vec<u8> {
    let mut body = Vec::new();
    for e in events {
        push_framed(&mut body, e);
    }
    body
}

/// The id of an encoded event (for logs of rejected events).
pub(crate) fn encoded_id(event: &[u8]) -> String {
    proto::Event::decode(event)
        .map(|e| e.id)
        .unwrap_or_default()
}

/// The `EventBatch` body a logger would send for these events: ids drawn and times stamped
/// where missing, `default_actor` where an event names none. For tools and tests; a logger
/// does this itself.
pub fn encode_batch(events: impl IntoIterator<Item = Event>, default_actor: &Actor) -> Vec<u8> {
    let mut ids = Ids::default();
    let encoded: Vec<Vec<u8>> = events
        .into_iter()
        .map(|e| encode_event(e, default_actor, &mut ids))
        .collect();
    batch_body(encoded.iter().map(Vec::as_slice))
}
