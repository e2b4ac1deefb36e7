//! Protobuf event batches (`proto/mlaudit/v1/events.proto`), decoded with `prost` from
//! hand-written message types that mirror the `.proto` field for field (no build script, no
//! `protoc`). Each event becomes the canonical JSON text of the event it represents, which then
//! takes exactly the JSON path: validation, payload digest, storage.

use serde_json::{Map, Value};

/// Most events one protobuf batch may hold (the server's batch limit applies as well).
pub const MAX_PROTO_EVENTS: usize = 100_000;

#[derive(Clone, PartialEq, prost::Message)]
pub struct EventBatch {
    #[prost(message, repeated, tag = "1")]
    pub events: Vec<Event>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Event {
    #[prost(string, tag = "1")]
    pub id: String,
    #[prost(string, tag = "2")]
    pub time: String,
    #[prost(string, tag = "3")]
    pub kind: String,
    #[prost(message, optional, tag = "4")]
    pub actor: Option<Actor>,
    #[prost(message, optional, tag = "5")]
    pub subject: Option<Subject>,
    #[prost(string, tag = "6")]
    pub attributes_json: String,
    #[prost(message, optional, tag = "7")]
    pub prediction: Option<PredictionAttributes>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Actor {
    #[prost(string, tag = "1")]
    pub id: String,
    #[prost(enumeration = "ActorType", tag = "2")]
    pub r#type: i32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
#[repr(i32)]
pub enum ActorType {
    Unspecified = 0,
    User = 1,
    Service = 2,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Subject {
    #[prost(string, optional, tag = "1")]
    pub model: Option<String>,
    #[prost(string, optional, tag = "2")]
    pub version: Option<String>,
    #[prost(string, optional, tag = "3")]
    pub dataset: Option<String>,
    #[prost(string, optional, tag = "4")]
    pub dataset_version: Option<String>,
    #[prost(string, optional, tag = "5")]
    pub run: Option<String>,
    #[prost(string, optional, tag = "6")]
    pub pipeline_run: Option<String>,
    #[prost(string, optional, tag = "7")]
    pub deployment: Option<String>,
    #[prost(string, optional, tag = "8")]
    pub request: Option<String>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct PredictionAttributes {
    #[prost(string, tag = "1")]
    pub inputs_json: String,
    #[prost(string, tag = "2")]
    pub outputs_json: String,
    #[prost(double, optional, tag = "3")]
    pub confidence: Option<f64>,
    #[prost(double, optional, tag = "4")]
    pub latency_ms: Option<f64>,
    #[prost(double, optional, tag = "5")]
    pub sample_rate: Option<f64>,
}

/// Why a protobuf batch was rejected.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProtoError {
    #[error("the body is not a valid mlaudit.v1.EventBatch: {0}")]
    Decode(#[from] prost::DecodeError),
    #[error("{count} events in one protobuf batch; the limit is {MAX_PROTO_EVENTS}")]
    TooMany { count: usize },
    #[error("event {index}: {field} {problem}")]
    Field { index: usize, field: &'static str, problem: String },
}

fn json_text(index: usize, field: &'static str, text: &str) -> Result<Value, ProtoError> {
    serde_json::from_str(text).map_err(|e| ProtoError::Field { index, field, problem: format!("is not valid JSON: {e}") })
}

/// Decodes a batch into one canonical JSON event text per event.
pub fn decode_batch(bytes: &[u8]) -> Result<Vec<String>, ProtoError> {
    let batch = <EventBatch as prost::Message>::decode(bytes)?;
    if batch.events.len() > MAX_PROTO_EVENTS {
        return Err(ProtoError::TooMany { count: batch.events.len() });
    }
    batch.events.into_iter().enumerate().map(|(i, e)| to_json(i, e).map(|v| v.to_string())).collect()
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
    let actor = e.actor.ok_or(ProtoError::Field { index, field: "actor", problem: "is required".into() })?;
    let kind = match ActorType::try_from(actor.r#type) {
        Ok(ActorType::User) => "user",
        Ok(ActorType::Service) => "service",
        _ => return Err(ProtoError::Field { index, field: "actor.type", problem: "must be USER or SERVICE".into() }),
    };
    out.insert("actor".into(), serde_json::json!({ "id": actor.id, "type": kind }));
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
        let subject: Map<String, Value> = fields.into_iter().filter_map(|(k, v)| Some((k.to_owned(), Value::String(v?)))).collect();
        out.insert("subject".into(), Value::Object(subject));
    }
    let mut attributes = if e.attributes_json.is_empty() {
        Map::new()
    } else {
        match json_text(index, "attributes_json", &e.attributes_json)? {
            Value::Object(m) => m,
            _ => return Err(ProtoError::Field { index, field: "attributes_json", problem: "must be a JSON object".into() }),
        }
    };
    if let Some(p) = e.prediction {
        let mut put = |key: &str, value: Value| -> Result<(), ProtoError> {
            if attributes.insert(key.to_owned(), value).is_some() {
                return Err(ProtoError::Field { index, field: "prediction", problem: format!("sets {key:?}, which attributes_json sets too") });
            }
            Ok(())
        };
        put("inputs", json_text(index, "prediction.inputs_json", &p.inputs_json)?)?;
        put("outputs", json_text(index, "prediction.outputs_json", &p.outputs_json)?)?;
        for (key, value) in [("confidence", p.confidence), ("latency_ms", p.latency_ms), ("sample_rate", p.sample_rate)] {
            if let Some(v) = value {
                let number = serde_json::Number::from_f64(v).ok_or_else(|| ProtoError::Field { index, field: "prediction", problem: format!("{key} is not a finite number") })?;
                put(key, Value::Number(number))?;
            }
        }
    }
    if !attributes.is_empty() {
        out.insert("attributes".into(), Value::Object(attributes));
    }
    Ok(Value::Object(out))
}

/// Encodes JSON events as a batch (for clients, tests and benchmarks). `prediction.served`
/// inputs, outputs, confidence, latency_ms and sample_rate go to the typed fields.
pub fn encode_batch(events: &[Value]) -> Vec<u8> {
    let events = events.iter().map(from_json).collect();
    prost::Message::encode_to_vec(&EventBatch { events })
}

fn from_json(v: &Value) -> Event {
    let text = |k: &str| v[k].as_str().unwrap_or_default().to_owned();
    let actor = Actor {
        id: v["actor"]["id"].as_str().unwrap_or_default().to_owned(),
        r#type: match v["actor"]["type"].as_str() {
            Some("user") => ActorType::User as i32,
            Some("service") => ActorType::Service as i32,
            _ => ActorType::Unspecified as i32,
        },
    };
    let s = &v["subject"];
    let sub = |k: &str| s[k].as_str().map(str::to_owned);
    let subject = s.is_object().then(|| Subject {
        model: sub("model"),
        version: sub("version"),
        dataset: sub("dataset"),
        dataset_version: sub("dataset_version"),
        run: sub("run"),
        pipeline_run: sub("pipeline_run"),
        deployment: sub("deployment"),
        request: sub("request"),
    });
    let mut attributes = v["attributes"].as_object().cloned().unwrap_or_default();
    let mut prediction = None;
    if v["kind"] == "prediction.served" && attributes.contains_key("inputs") && attributes.contains_key("outputs") {
        let mut take = |k: &str| attributes.remove(k);
        prediction = Some(PredictionAttributes {
            inputs_json: take("inputs").map(|x| x.to_string()).unwrap_or_default(),
            outputs_json: take("outputs").map(|x| x.to_string()).unwrap_or_default(),
            confidence: take("confidence").and_then(|x| x.as_f64()),
            latency_ms: take("latency_ms").and_then(|x| x.as_f64()),
            sample_rate: take("sample_rate").and_then(|x| x.as_f64()),
        });
    }
    Event {
        id: text("id"),
        time: text("time"),
        kind: text("kind"),
        actor: Some(actor),
        subject,
        attributes_json: if attributes.is_empty() { String::new() } else { Value::Object(attributes).to_string() },
        prediction,
    }
}
