//! Protobuf event batches (`proto/mlaudit/v1/events.proto`), decoded with the `prost` message
//! types of this crate. Each event becomes the canonical JSON text of the event
//! it represents, which then takes exactly the JSON path: validation, payload digest, storage.

use crate::{ActorType, Event};
use serde_json::{Map, Value};

/// Most events one protobuf batch may hold (the server's batch limit applies as well).
pub const MAX_PROTO_EVENTS: usize = 100_000;

/// Why a protobuf batch was rejected. The message names the event (its index in the batch) and
/// the field whenever there is one.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProtoError {
    /// The batch's own framing is broken: no event can be told apart from the next.
    #[error("the body is not a valid mlaudit.v1.EventBatch: {problem} (at byte {offset})")]
    Malformed {
        offset: usize,
        problem: &'static str,
    },
    /// One event's bytes do not decode as an `mlaudit.v1.Event`.
    #[error("event {index}: not a valid mlaudit.v1.Event: {source}")]
    Decode {
        index: usize,
        source: prost::DecodeError,
    },
    /// More events than the limit (at most [`MAX_PROTO_EVENTS`]).
    #[error("more than {max} events in one protobuf batch (the limit); found at least {count}")]
    TooMany { count: usize, max: usize },
    /// An event decodes but does not make a JSON event.
    #[error("event {index}: {field} {problem}")]
    Field {
        index: usize,
        field: &'static str,
        problem: String,
    },
}

fn json_text(index: usize, field: &'static str, text: &str) -> Result<Value, ProtoError> {
    serde_json::from_str(text).map_err(|e| ProtoError::Field {
        index,
        field,
        problem: format!("is not valid JSON: {e}"),
    })
}

/// `attributes_json`: a JSON object whose keys are unique. (serde_json's `Map` would keep the
/// last of two equal keys silently; the JSON path rejects them, and so does this.)
fn attributes_object(index: usize, text: &str) -> Result<Map<String, Value>, ProtoError> {
    use serde::de::{Deserialize, Deserializer, Error as _, MapAccess, Visitor};
    struct Unique(Map<String, Value>);
    impl<'de> Deserialize<'de> for Unique {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Unique, D::Error> {
            struct V;
            impl<'de> Visitor<'de> for V {
                type Value = Unique;
                fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                    f.write_str("a JSON object")
                }
                fn visit_map<M: MapAccess<'de>>(self, mut map: M) -> Result<Unique, M::Error> {
                    let mut out = Map::new();
                    while let Some(key) = map.next_key::<String>()? {
                        if out.contains_key(&key) {
                            return Err(M::Error::custom(format_args!("duplicate key {key:?}")));
                        }
                        let value: Value = map.next_value()?;
                        out.insert(key, value);
                    }
                    Ok(Unique(out))
                }
            }
            d.deserialize_map(V)
        }
    }
    let field = "attributes_json";
    if !text.trim_start().starts_with('{') {
        json_text(index, field, text)?;
        return Err(ProtoError::Field {
            index,
            field,
            problem: "must be a JSON object".into(),
        });
    }
    serde_json::from_str::<Unique>(text)
        .map(|u| u.0)
        .map_err(|e| {
            let problem = match e.classify() {
                serde_json::error::Category::Data => format!("has a {e}"),
                _ => format!("is not valid JSON: {e}"),
            };
            ProtoError::Field {
                index,
                field,
                problem,
            }
        })
}

/// Decodes a batch into one canonical JSON event text per event, in order.
///
/// The batch is read in two passes over its top-level fields: the first only counts the
/// events (no allocation), so that a body of many tiny events — an empty `Event` is 2 bytes on
/// the wire but about 400 decoded — is refused before anything is decoded; the second decodes
/// and converts one event at a time. Unknown fields are skipped, as prost would.
pub fn decode_batch(bytes: &[u8]) -> Result<Vec<String>, ProtoError> {
    decode_batch_limited(bytes, MAX_PROTO_EVENTS)
}

/// [`decode_batch`] refusing more than `max` events (and never more than
/// [`MAX_PROTO_EVENTS`]); the count stops at the first event over the limit.
pub fn decode_batch_limited(bytes: &[u8], max: usize) -> Result<Vec<String>, ProtoError> {
    let max = max.min(MAX_PROTO_EVENTS);
    let mut count = 0usize;
    for record in event_records(bytes) {
        record?;
        count += 1;
        if count > max {
            return Err(ProtoError::TooMany { count, max });
        }
    }
    let mut out = Vec::with_capacity(count);
    for (index, record) in event_records(bytes).enumerate() {
        let event = <Event as prost::Message>::decode(record?)
            .map_err(|source| ProtoError::Decode { index, source })?;
        out.push(to_json(index, event)?.to_string());
    }
    Ok(out)
}

fn malformed(offset: usize, problem: &'static str) -> ProtoError {
    ProtoError::Malformed { offset, problem }
}

/// Deepest nesting of unknown groups skipped (prost's recursion limit).
const MAX_GROUP_DEPTH: u32 = 100;

/// One field read by [`Reader::field`].
enum Field<'a> {
    /// A field's number and, when length-delimited, its bytes.
    Value(u32, Option<&'a [u8]>),
    /// The end of a group, with the group's field number.
    EndGroup(u32),
}

/// The protobuf wire format, just enough to split a message into its fields.
struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn varint(&mut self) -> Result<u64, ProtoError> {
        let start = self.at;
        let mut value = 0u64;
        for shift in (0..64).step_by(7) {
            let &byte = self
                .bytes
                .get(self.at)
                .ok_or_else(|| malformed(start, "a varint runs past the end"))?;
            self.at += 1;
            if shift == 63 && byte > 1 {
                return Err(malformed(start, "a varint overflows 64 bits"));
            }
            value |= u64::from(byte & 0x7f) << shift;
            if byte < 0x80 {
                return Ok(value);
            }
        }
        Err(malformed(start, "a varint overflows 64 bits"))
    }

    fn take(&mut self, len: u64) -> Result<&'a [u8], ProtoError> {
        let rest = self.bytes.len() - self.at;
        let len = usize::try_from(len)
            .ok()
            .filter(|&n| n <= rest)
            .ok_or_else(|| malformed(self.at, "a field runs past the end"))?;
        let taken = &self.bytes[self.at..self.at + len];
        self.at += len;
        Ok(taken)
    }

    /// Reads one field: returns length-delimited values, skips the others (groups whole).
    fn field(&mut self, depth: u32) -> Result<Field<'a>, ProtoError> {
        let start = self.at;
        let key = self.varint()?;
        let number = u32::try_from(key >> 3)
            .ok()
            .filter(|_| key <= u64::from(u32::MAX))
            .ok_or_else(|| malformed(start, "a field key is out of range"))?;
        if number == 0 {
            return Err(malformed(start, "field number 0"));
        }
        match key & 7 {
            0 => self.varint().map(|_| Field::Value(number, None)),
            1 => self.take(8).map(|_| Field::Value(number, None)),
            2 => {
                let len = self.varint()?;
                self.take(len)
                    .map(|bytes| Field::Value(number, Some(bytes)))
            }
            3 => {
                if depth >= MAX_GROUP_DEPTH {
                    return Err(malformed(start, "groups nest too deeply"));
                }
                loop {
                    if self.at == self.bytes.len() {
                        return Err(malformed(start, "a group has no end"));
                    }
                    if let Field::EndGroup(end) = self.field(depth + 1)? {
                        if end != number {
                            return Err(malformed(
                                start,
                                "a group ends with another group's number",
                            ));
                        }
                        return Ok(Field::Value(number, None));
                    }
                }
            }
            4 => Ok(Field::EndGroup(number)),
            5 => self.take(4).map(|_| Field::Value(number, None)),
            _ => Err(malformed(start, "an invalid wire type")),
        }
    }
}

/// The bytes of each `EventBatch.events` entry (field 1), in order; other fields are skipped.
/// Stops after the first error.
fn event_records(bytes: &[u8]) -> impl Iterator<Item = Result<&[u8], ProtoError>> + '_ {
    let mut reader = Reader { bytes, at: 0 };
    let mut failed = false;
    std::iter::from_fn(move || loop {
        if failed || reader.at == reader.bytes.len() {
            return None;
        }
        let start = reader.at;
        let problem = match reader.field(0) {
            Ok(Field::Value(1, Some(event))) => return Some(Ok(event)),
            Ok(Field::Value(1, None)) => {
                malformed(start, "events (field 1) must be length-delimited messages")
            }
            Ok(Field::Value(..)) => continue,
            Ok(Field::EndGroup(_)) => malformed(start, "a group ends that never started"),
            Err(e) => e,
        };
        failed = true;
        return Some(Err(problem));
    })
}

fn to_json(index: usize, e: Event) -> Result<Value, ProtoError> {
    let mut out = Map::new();
    if !e.id.is_empty() {
        out.insert("id".into(), Value::String(e.id));
    }
    if !e.time.is_empty() {
        out.insert("time".into(), Value::String(e.time));
    }
    out.insert("kind".into(), Value::String(e.kind));
    let actor = e.actor.ok_or(ProtoError::Field {
        index,
        field: "actor",
        problem: "is required".into(),
    })?;
    let kind = match ActorType::try_from(actor.r#type) {
        Ok(ActorType::User) => "user",
        Ok(ActorType::Service) => "service",
        _ => {
            return Err(ProtoError::Field {
                index,
                field: "actor.type",
                problem: "must be USER or SERVICE".into(),
            })
        }
    };
    out.insert(
        "actor".into(),
        serde_json::json!({ "id": actor.id, "type": kind }),
    );
    if let Some(s) = e.subject {
        let fields = [
            ("model", s.model),
            ("version", s.version),
            ("dataset", s.dataset),
            ("dataset_version", s.dataset_version),
            ("run", s.run),
            ("pipeline_run", s.pipeline_run),
            ("deployment", s.deployment),
            ("request", s.request),
        ];
        let subject: Map<String, Value> = fields
            .into_iter()
            .filter_map(|(k, v)| Some((k.to_owned(), Value::String(v?))))
            .collect();
        out.insert("subject".into(), Value::Object(subject));
    }
    let mut attributes = if e.attributes_json.is_empty() {
        Map::new()
    } else {
        attributes_object(index, &e.attributes_json)?
    };
    if let Some(p) = e.prediction {
        let mut put = |key: &str, value: Value| -> Result<(), ProtoError> {
            if attributes.insert(key.to_owned(), value).is_some() {
                return Err(ProtoError::Field {
                    index,
                    field: "prediction",
                    problem: format!(
                        "sets {key:?}, which attributes_json sets too: set it in one place"
                    ),
                });
            }
            Ok(())
        };
        put(
            "inputs",
            json_text(index, "prediction.inputs_json", &p.inputs_json)?,
        )?;
        put(
            "outputs",
            json_text(index, "prediction.outputs_json", &p.outputs_json)?,
        )?;
        for (key, value) in [
            ("confidence", p.confidence),
            ("latency_ms", p.latency_ms),
            ("sample_rate", p.sample_rate),
        ] {
            if let Some(v) = value {
                let number = serde_json::Number::from_f64(v).ok_or_else(|| ProtoError::Field {
                    index,
                    field: "prediction",
                    problem: format!("{key} is not a finite number"),
                })?;
                put(key, Value::Number(number))?;
            }
        }
    }
    if !attributes.is_empty() {
        out.insert("attributes".into(), Value::Object(attributes));
    }
    Ok(Value::Object(out))
}
