//! Translations of what the tools ML teams already run send — MLflow registry webhooks and
//! its REST records, CloudEvents from KServe's and Seldon's payload loggers, CDEvents,
//! OpenLineage, W&B audit logs, ClearML offline sessions — into catalogue events (JSON
//! objects that `mlaudit_core::event::prepare` accepts).
//!
//! **Invariants.**
//! * No I/O: callers (the server's receivers, the CLI's importers) read bodies, files and
//!   remote APIs; this crate only maps values to events. Every decoder returns a `Result`
//!   and never panics on hostile input.
//! * Nothing is invented. A value the catalogue requires but the tool does not report is left
//!   out and named in `attributes.unreported`; an actor the tool does not name is the tool's
//!   service identity with `attributes.human_actor = "unknown"`.
//! * What the tool sent is kept: every translated event carries the original record (or the
//!   part of it the event is about) in its attributes, so that it is itself provable.
//! * Ids are derived ([`EventId::derived`]) from the tool's own identifiers, so that a retry,
//!   a redelivery or a second import yields the same id and the log keeps one event.

pub mod clearml;
pub mod cloudevents;
pub mod mlflow;
pub mod openlineage;
pub mod sampling;
pub mod wandb;

use mlaudit_core::entry::EventId;
use serde_json::{json, Map, Value};

/// Why a body or record cannot be translated. The message names what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TranslateError {
    /// Not JSON, or not the shape the tool sends.
    #[error("{0}")]
    Malformed(String),
    /// A well-formed record of a type this integration does not know.
    #[error("{0}")]
    UnknownType(String),
    /// More records in one body than the receiver takes at once.
    #[error("the body holds {count} records; at most {max} are taken at once")]
    TooMany { count: usize, max: usize },
}

fn malformed(message: impl Into<String>) -> TranslateError {
    TranslateError::Malformed(message.into())
}

/// Who an event says acted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Actor {
    pub id: String,
    /// `true` for a person, `false` for a service.
    pub user: bool,
}

impl Actor {
    pub fn service(id: impl Into<String>) -> Actor {
        Actor {
            id: id.into(),
            user: false,
        }
    }

    pub fn user(id: impl Into<String>) -> Actor {
        Actor {
            id: id.into(),
            user: true,
        }
    }

    fn to_json(&self) -> Value {
        json!({ "id": self.id, "type": if self.user { "user" } else { "service" } })
    }
}

/// An event under construction.
#[derive(Debug, Clone)]
pub struct Draft {
    id: EventId,
    kind: String,
    time: Option<String>,
    actor: Actor,
    subject: Map<String, Value>,
    attributes: Map<String, Value>,
    unreported: Vec<&'static str>,
}

impl Draft {
    /// An event of `kind` with an id derived from (`source`, `key`).
    pub fn new(source: &str, key: &str, kind: impl Into<String>, actor: Actor) -> Draft {
        Draft {
            id: EventId::derived(source, key),
            kind: kind.into(),
            time: None,
            actor,
            subject: Map::new(),
            attributes: Map::new(),
            unreported: Vec::new(),
        }
    }

    /// When it happened (RFC 3339); ignored unless it parses, so that the receipt time is used.
    pub fn time(mut self, time: Option<String>) -> Draft {
        self.time = time.filter(|t| mlaudit_core::event::parse_time(t).is_some());
        self
    }

    /// A subject link; an empty value is left out.
    pub fn subject(mut self, field: &str, value: impl Into<String>) -> Draft {
        let value = value.into();
        if !value.is_empty() {
            self.subject.insert(field.into(), Value::String(value));
        }
        self
    }

    pub fn attr(mut self, name: &str, value: impl Into<Value>) -> Draft {
        self.attributes.insert(name.into(), value.into());
        self
    }

    /// A required attribute the tool does not report (named in `attributes.unreported`).
    pub fn unreported(mut self, name: &'static str) -> Draft {
        self.unreported.push(name);
        self
    }

    /// `f(self)`, for a step chosen at run time in a chain of calls.
    pub fn pipe(self, f: impl FnOnce(Draft) -> Draft) -> Draft {
        f(self)
    }

    /// Whether the subject holds `field`.
    pub fn has_subject(&self, field: &str) -> bool {
        self.subject.contains_key(field)
    }

    pub fn id(&self) -> EventId {
        self.id
    }

    pub fn kind(&self) -> &str {
        &self.kind
    }

    /// The event as the JSON object `/v1/events` takes.
    pub fn build(mut self) -> Value {
        if !self.unreported.is_empty() {
            self.attributes
                .insert("unreported".into(), json!(self.unreported));
        }
        let mut event = Map::new();
        event.insert("id".into(), Value::String(self.id.to_string()));
        if let Some(time) = self.time {
            event.insert("time".into(), Value::String(time));
        }
        event.insert("kind".into(), Value::String(self.kind));
        event.insert("actor".into(), self.actor.to_json());
        if !self.subject.is_empty() {
            event.insert("subject".into(), Value::Object(self.subject));
        }
        event.insert("attributes".into(), Value::Object(self.attributes));
        Value::Object(event)
    }
}

/// A custom kind `x.<prefix>.<rest>`, with every character outside `[a-z0-9._-]` replaced, so
/// that a tool's type string can never make an invalid or reserved kind.
pub fn custom_kind(prefix: &str, rest: &str) -> String {
    let room = mlaudit_core::entry::MAX_KIND_LEN.saturating_sub(prefix.len() + 3);
    let clean: String = rest
        .chars()
        .take(room)
        .map(|c| match c.to_ascii_lowercase() {
            c @ ('a'..='z' | '0'..='9' | '.' | '_' | '-') => c,
            _ => '_',
        })
        .collect();
    format!("x.{prefix}.{clean}")
}

/// `text` cut to at most `max` bytes, on a character boundary (for identities built from a
/// tool's strings, which the entry header bounds in bytes).
pub fn truncate_bytes(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// A finished run's status in the SDKs' words (`succeeded`, `failed`, `aborted`), from a
/// tool's (MLflow's `FINISHED`/`FAILED`/`KILLED`, OpenLineage's `COMPLETE`/`FAIL`/`ABORT`), so
/// that one query finds the failed runs of every source; the tool's own word is kept beside it
/// as `source_status`.
pub fn run_status(tool_status: &str) -> String {
    match tool_status.to_ascii_uppercase().as_str() {
        "FINISHED" | "COMPLETE" | "COMPLETED" | "SUCCEEDED" => "succeeded".into(),
        "FAILED" | "FAIL" => "failed".into(),
        "KILLED" | "ABORT" | "ABORTED" => "aborted".into(),
        other => other.to_ascii_lowercase(),
    }
}

/// SHA-256 of `bytes`, in hex (keys for ids derived from a whole record).
pub fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Milliseconds since the Unix epoch as RFC 3339 (`None` when out of range).
pub fn millis_to_time(ms: i64) -> Option<String> {
    let ns = i64::try_from(i128::from(ms) * 1_000_000).ok()?;
    Some(mlaudit_core::event::format_time(ns))
}

/// Metric points grouped by step — `(step, metric, value, time in ms)` — into each step's
/// metrics and the latest time one of them was logged at.
fn by_step<'a>(
    points: impl IntoIterator<Item = (i64, String, &'a Value, i64)>,
) -> std::collections::BTreeMap<i64, (Map<String, Value>, i64)> {
    let mut steps = std::collections::BTreeMap::new();
    for (step, metric, value, at) in points {
        let entry = steps.entry(step).or_insert_with(|| (Map::new(), at));
        entry.0.insert(metric, value.clone());
        entry.1 = entry.1.max(at);
    }
    steps
}

/// The integer seed among a run's parameters (`random_seed`, `seed`, `random_state`), as a
/// number or as the text trackers store parameters in.
fn seed_param(params: &Map<String, Value>) -> Option<i64> {
    ["random_seed", "seed", "random_state"]
        .iter()
        .find_map(|k| {
            let v = params.get(*k)?;
            v.as_i64().or_else(|| v.as_str()?.trim().parse().ok())
        })
}

/// A string field of a JSON object, if present and a string.
fn text<'a>(v: &'a Value, key: &str) -> Option<&'a str> {
    v.get(key).and_then(Value::as_str)
}

/// A string or number field, as text.
fn ident(v: &Value, key: &str) -> Option<String> {
    match v.get(key)? {
        Value::String(s) if !s.is_empty() => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// Parses a JSON body, naming the integration in the error.
fn parse_json(what: &str, body: &[u8]) -> Result<Value, TranslateError> {
    serde_json::from_slice(body).map_err(|e| malformed(format!("the {what} body is not JSON: {e}")))
}
