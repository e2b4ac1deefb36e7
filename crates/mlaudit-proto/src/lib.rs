//! The protobuf messages of `proto/mlaudit/v1/events.proto`, as hand-written `prost` types that
//! mirror the `.proto` field for field (no build script, no `protoc`), an encoder from JSON
//! events, and the decoder ([`decode`]) that turns each message into the canonical JSON event
//! it represents. The server and the queue consumers decode with it; the Rust client SDK
//! (`mlaudit-client`) encodes with it.
//!
//! This crate depends on `prost`, `serde_json` and `thiserror` only: nothing of the store or
//! the server.

pub mod decode;

use serde_json::Value;

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

/// Encodes JSON events as a batch (for clients, tests and benchmarks). `prediction.served`
/// inputs and outputs go to the typed fields, and so do confidence, latency_ms and sample_rate
/// when they are numbers; every other attribute goes to `attributes_json`, so decoding gives the
/// same event back. Integer subject values are sent as their decimal text (as the JSON path
/// reads them). What the message cannot carry is dropped: a non-string id, time or kind, a
/// subject value that is neither a string nor an integer, fields outside the event model, and
/// an actor type other than "user" or "service" (sent as ACTOR_TYPE_UNSPECIFIED, which
/// [`decode_batch`] rejects).
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
    let sub = |k: &str| match &s[k] {
        Value::String(text) => Some(text.clone()),
        Value::Number(n) if n.is_i64() || n.is_u64() => Some(n.to_string()),
        _ => None,
    };
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
    if v["kind"] == "prediction.served"
        && attributes.contains_key("inputs")
        && attributes.contains_key("outputs")
    {
        let mut text = |k: &str| {
            attributes
                .remove(k)
                .map(|x| x.to_string())
                .unwrap_or_default()
        };
        let (inputs_json, outputs_json) = (text("inputs"), text("outputs"));
        // A number moves to its typed field; anything else stays in attributes_json as it is.
        let mut number = |k: &str| {
            let x = attributes.get(k).and_then(Value::as_f64)?;
            attributes.remove(k);
            Some(x)
        };
        prediction = Some(PredictionAttributes {
            inputs_json,
            outputs_json,
            confidence: number("confidence"),
            latency_ms: number("latency_ms"),
            sample_rate: number("sample_rate"),
        });
    }
    Event {
        id: text("id"),
        time: text("time"),
        kind: text("kind"),
        actor: Some(actor),
        subject,
        attributes_json: if attributes.is_empty() {
            String::new()
        } else {
            Value::Object(attributes).to_string()
        },
        prediction,
    }
}
