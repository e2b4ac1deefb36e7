//! CloudEvents 1.0.2 over HTTP — binary mode (`ce-*` headers), structured mode
//! (`application/cloudevents+json`) and batches (`application/cloudevents-batch+json`) — and
//! what they carry:
//!
//! * KServe's payload logger (`org.kubeflow.serving.inference.request` / `.response`, joined
//!   on `ce-id`) and Seldon Core's (`io.seldon.serving.inference.request` / `.response`, joined
//!   on `ce-requestid`): the two halves of one inference become one `prediction.served`
//!   ([`prediction`]); the caller holds a half until its partner comes, or a timeout.
//! * CDEvents service events (`dev.cdevents.service.deployed|upgraded|rolledback|removed`) →
//!   the operations kinds ([`cdevent`]).
//! * Any other type → `x.cloudevents`, with the type and the whole event kept.

use crate::{custom_kind, malformed, Actor, Draft, TranslateError};
use serde_json::{json, Map, Value};
use std::collections::BTreeMap;

/// Context attributes defined by the spec (every other one is an extension).
const CONTEXT: &[&str] = &[
    "specversion",
    "id",
    "source",
    "type",
    "datacontenttype",
    "dataschema",
    "subject",
    "time",
];

/// One CloudEvent.
#[derive(Debug, Clone, PartialEq)]
pub struct CloudEvent {
    pub id: String,
    pub source: String,
    pub ty: String,
    pub time: Option<String>,
    pub subject: Option<String>,
    pub datacontenttype: Option<String>,
    pub dataschema: Option<String>,
    /// Extension attributes, by (lower-case) name.
    pub extensions: BTreeMap<String, Value>,
    /// The data: JSON when the content type is JSON, else a string (text) or `data_base64`.
    pub data: Option<Value>,
    pub data_base64: Option<String>,
}

impl CloudEvent {
    /// An extension attribute as text.
    pub fn extension(&self, name: &str) -> Option<String> {
        match self.extensions.get(name)? {
            Value::String(s) if !s.is_empty() => Some(s.clone()),
            Value::Number(n) => Some(n.to_string()),
            Value::Bool(b) => Some(b.to_string()),
            _ => None,
        }
    }

    /// The event in structured mode (JSON), as it would be sent: what is kept in the log.
    pub fn to_json(&self) -> Value {
        let mut out = Map::new();
        out.insert("specversion".into(), json!("1.0"));
        out.insert("id".into(), json!(self.id));
        out.insert("source".into(), json!(self.source));
        out.insert("type".into(), json!(self.ty));
        let optional = [
            ("time", &self.time),
            ("subject", &self.subject),
            ("datacontenttype", &self.datacontenttype),
            ("dataschema", &self.dataschema),
            ("data_base64", &self.data_base64),
        ];
        for (name, value) in optional {
            if let Some(v) = value {
                out.insert(name.into(), json!(v));
            }
        }
        for (name, value) in &self.extensions {
            out.insert(name.clone(), value.clone());
        }
        if let Some(data) = &self.data {
            out.insert("data".into(), data.clone());
        }
        Value::Object(out)
    }

    /// The context attributes alone (no data).
    pub fn context(&self) -> Value {
        let mut v = self.to_json();
        if let Some(o) = v.as_object_mut() {
            o.remove("data");
            o.remove("data_base64");
        }
        v
    }

    /// The data as a JSON value for an event: the JSON data, the text, or the base64 form with
    /// its content type; `None` without data.
    pub fn data_value(&self) -> Option<Value> {
        match (&self.data, &self.data_base64) {
            (Some(d), _) => Some(d.clone()),
            (None, Some(b)) => Some(json!({
                "data_base64": b,
                "datacontenttype": self.datacontenttype,
            })),
            (None, None) => None,
        }
    }
}

fn is_json_type(content_type: Option<&str>) -> bool {
    let Some(ct) = content_type else {
        return true; // the spec's default for structured mode; binary mode sets it
    };
    let mime = ct
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    mime == "application/json" || mime == "text/json" || mime.ends_with("+json")
}

/// Names no extension may take: the JSON format's members for the data (an extension named
/// so would be read back as the data).
const NOT_EXTENSIONS: &[&str] = &["data", "data_base64"];

/// A valid extension name: lower-case letters and digits only (CloudEvents 1.0.2 §3.1.1),
/// and not a name the JSON format reserves for the data.
fn check_attribute_name(name: &str) -> Result<(), TranslateError> {
    if NOT_EXTENSIONS.contains(&name) {
        return Err(malformed(format!(
            "{name:?} is not a CloudEvents attribute: the data travels as the body (binary mode) or the data member (structured mode)"
        )));
    }
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    if ok {
        Ok(())
    } else {
        let shown: String = name.chars().take(64).collect();
        Err(malformed(format!(
            "CloudEvents attribute name {shown:?} must be lower-case letters and digits"
        )))
    }
}

fn required(value: Option<String>, name: &str) -> Result<String, TranslateError> {
    match value {
        Some(v) if !v.is_empty() => Ok(v),
        _ => Err(malformed(format!(
            "the CloudEvent has no {name} (required by CloudEvents 1.0.2)"
        ))),
    }
}

fn check_specversion(v: Option<&str>) -> Result<(), TranslateError> {
    match v {
        Some("1.0") => Ok(()),
        Some(other) => Err(malformed(format!(
            "specversion {:?} is not supported: only CloudEvents 1.0",
            other.chars().take(32).collect::<String>()
        ))),
        None => Err(malformed(
            "the CloudEvent has no specversion (required by CloudEvents 1.0.2)",
        )),
    }
}

fn check_time(time: &Option<String>) -> Result<(), TranslateError> {
    match time {
        Some(t) if mlaudit_core::event::parse_time(t).is_none() => Err(malformed(format!(
            "the CloudEvent's time {:?} is not an RFC 3339 timestamp",
            t.chars().take(64).collect::<String>()
        ))),
        _ => Ok(()),
    }
}

/// Decodes `%XX` escapes of a binary-mode header value (CloudEvents HTTP binding §3.1.3.2).
fn percent_decode(value: &str) -> String {
    let bytes = value.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        match (bytes[i], bytes.get(i + 1), bytes.get(i + 2)) {
            (b'%', Some(&h), Some(&l)) if hex(h).is_some() && hex(l).is_some() => {
                let byte = hex(h).unwrap_or(0) * 16 + hex(l).unwrap_or(0);
                out.push(byte as u8);
                i += 3;
            }
            (b, _, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A binary-mode event: `headers` are (name, value) pairs (any case), `body` is the data.
pub fn from_binary<'a>(
    headers: impl IntoIterator<Item = (&'a str, &'a str)>,
    content_type: Option<&str>,
    body: &[u8],
) -> Result<CloudEvent, TranslateError> {
    let mut attrs: BTreeMap<String, String> = BTreeMap::new();
    for (name, value) in headers {
        let lower = name.to_ascii_lowercase();
        if let Some(attr) = lower.strip_prefix("ce-") {
            check_attribute_name(attr)?;
            attrs.insert(attr.to_owned(), percent_decode(value));
        }
    }
    check_specversion(attrs.get("specversion").map(String::as_str))?;
    let datacontenttype = content_type.map(str::to_owned);
    let (data, data_base64) = if body.is_empty() {
        (None, None)
    } else if let Some(v) = is_json_type(content_type)
        .then(|| serde_json::from_slice(body).ok())
        .flatten()
    {
        (Some(v), None)
    } else {
        // Not JSON, or declared JSON but not (KServe sends a response with its request's
        // content type): kept as it came, in base64.
        use base64::Engine;
        match std::str::from_utf8(body) {
            Ok(text) if content_type.is_some_and(|c| c.starts_with("text/")) => {
                (Some(Value::String(text.to_owned())), None)
            }
            _ => (
                None,
                Some(base64::engine::general_purpose::STANDARD.encode(body)),
            ),
        }
    };
    let event = CloudEvent {
        id: required(attrs.remove("id"), "ce-id")?,
        source: required(attrs.remove("source"), "ce-source")?,
        ty: required(attrs.remove("type"), "ce-type")?,
        time: attrs.remove("time"),
        subject: attrs.remove("subject"),
        dataschema: attrs.remove("dataschema"),
        datacontenttype,
        extensions: attrs
            .into_iter()
            .filter(|(k, _)| !CONTEXT.contains(&k.as_str()))
            .map(|(k, v)| (k, Value::String(v)))
            .collect(),
        data,
        data_base64,
    };
    check_time(&event.time)?;
    Ok(event)
}

/// A structured-mode event (one JSON object).
pub fn from_structured(value: Value) -> Result<CloudEvent, TranslateError> {
    let Value::Object(mut o) = value else {
        return Err(malformed("a structured CloudEvent must be a JSON object"));
    };
    let mut take_text = |name: &str| -> Result<Option<String>, TranslateError> {
        match o.remove(name) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(_) => Err(malformed(format!(
                "the CloudEvent attribute {name} must be a string"
            ))),
        }
    };
    check_specversion(take_text("specversion")?.as_deref())?;
    let id = required(take_text("id")?, "id")?;
    let source = required(take_text("source")?, "source")?;
    let ty = required(take_text("type")?, "type")?;
    let time = take_text("time")?;
    let subject = take_text("subject")?;
    let datacontenttype = take_text("datacontenttype")?;
    let dataschema = take_text("dataschema")?;
    let data_base64 = take_text("data_base64")?;
    let data = o.remove("data").filter(|d| !d.is_null());
    if data.is_some() && data_base64.is_some() {
        return Err(malformed(
            "a CloudEvent may carry data or data_base64, not both",
        ));
    }
    // A JSON string `data` with a JSON content type holds JSON text only in binary mode; in
    // structured mode it is the value itself.
    let mut extensions = BTreeMap::new();
    for (name, value) in o {
        check_attribute_name(&name)?;
        if matches!(value, Value::Object(_) | Value::Array(_)) {
            return Err(malformed(format!(
                "the CloudEvent extension {name} must be a string, number or boolean"
            )));
        }
        extensions.insert(name, value);
    }
    let event = CloudEvent {
        id,
        source,
        ty,
        time,
        subject,
        datacontenttype,
        dataschema,
        extensions,
        data,
        data_base64,
    };
    check_time(&event.time)?;
    Ok(event)
}

/// A batch (`application/cloudevents-batch+json`): a JSON array of structured events, at
/// most `max`.
pub fn from_batch(body: &[u8], max: usize) -> Result<Vec<CloudEvent>, TranslateError> {
    let value: Value = crate::parse_json("CloudEvents batch", body)?;
    let Value::Array(items) = value else {
        return Err(malformed("a CloudEvents batch must be a JSON array"));
    };
    if items.is_empty() {
        return Err(malformed("the CloudEvents batch holds no event"));
    }
    if items.len() > max {
        return Err(TranslateError::TooMany {
            count: items.len(),
            max,
        });
    }
    items
        .into_iter()
        .enumerate()
        .map(|(i, v)| from_structured(v).map_err(|e| malformed(format!("event {i}: {e}"))))
        .collect()
}

/// Which payload logger sent an inference half.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Logger {
    Kserve,
    Seldon,
}

impl Logger {
    pub fn as_str(self) -> &'static str {
        match self {
            Logger::Kserve => "kserve",
            Logger::Seldon => "seldon",
        }
    }
}

/// The request or the response of an inference.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Side {
    Request,
    Response,
}

impl Side {
    pub fn as_str(self) -> &'static str {
        match self {
            Side::Request => "request",
            Side::Response => "response",
        }
    }
}

/// One half of an inference, waiting for its partner.
#[derive(Debug, Clone, PartialEq)]
pub struct Half {
    pub logger: Logger,
    pub side: Side,
    /// What joins the halves: the request (below) and the component that logged it
    /// (`ce-component` for KServe, `ce-modelid` for Seldon), so that two loggers of one
    /// inference graph (a transformer and a predictor) are two predictions, not a retry.
    pub key: String,
    /// The inference's request id: `ce-id` (KServe) or `ce-requestid` (Seldon).
    pub request: String,
    /// `<namespace>/<inference service>` (or the name alone without a namespace).
    pub model: String,
    pub event: CloudEvent,
}

/// What one CloudEvent is.
#[derive(Debug, Clone, PartialEq)]
pub enum Classified {
    /// Half of an inference: join it with its partner ([`prediction`]).
    Half(Box<Half>),
    /// A complete event, ready to append.
    Event(Value),
}

/// Sorts a CloudEvent and translates what needs no partner.
pub fn classify(ce: CloudEvent) -> Result<Classified, TranslateError> {
    let half = |logger, side| -> Result<Classified, TranslateError> {
        let (request, node) = match logger {
            Logger::Kserve => (ce.id.clone(), ce.extension("component")),
            Logger::Seldon => (
                ce.extension("requestid").unwrap_or_else(|| ce.id.clone()),
                ce.extension("modelid"),
            ),
        };
        let key = match node {
            Some(node) => format!("{request}/{node}"),
            None => request.clone(),
        };
        let name = ce
            .extension("inferenceservicename")
            .or_else(|| ce.extension("modelid"))
            .ok_or_else(|| {
                malformed(format!(
                    "a {} inference event needs ce-inferenceservicename (the model)",
                    logger.as_str()
                ))
            })?;
        let model = match ce.extension("namespace") {
            Some(ns) => format!("{ns}/{name}"),
            None => name,
        };
        Ok(Classified::Half(Box::new(Half {
            logger,
            side,
            key,
            request,
            model,
            event: ce.clone(),
        })))
    };
    match ce.ty.as_str() {
        "org.kubeflow.serving.inference.request" => half(Logger::Kserve, Side::Request),
        "org.kubeflow.serving.inference.response" => half(Logger::Kserve, Side::Response),
        "io.seldon.serving.inference.request" => half(Logger::Seldon, Side::Request),
        "io.seldon.serving.inference.response" => half(Logger::Seldon, Side::Response),
        t if t.starts_with("dev.cdevents.service.") => Ok(Classified::Event(cdevent(&ce)?)),
        _ => Ok(Classified::Event(other(&ce))),
    }
}

/// `x.cloudevents` for a type no integration knows.
fn other(ce: &CloudEvent) -> Value {
    let key = format!("{}\n{}", ce.source, ce.id);
    Draft::new(
        "cloudevents",
        &key,
        "x.cloudevents",
        Actor::service(source_actor(ce)),
    )
    .time(ce.time.clone())
    .attr("type", ce.ty.clone())
    .attr("source", ce.source.clone())
    .attr("cloudevent", ce.to_json())
    .build()
}

fn source_actor(ce: &CloudEvent) -> String {
    format!(
        "cloudevents:{}",
        ce.source.chars().take(900).collect::<String>()
    )
}

/// The model version of an inference: the v2 (Open Inference Protocol) `model_version` of
/// either half, else `default`.
fn reported_version(halves: &[&Half]) -> Option<String> {
    halves.iter().find_map(|h| {
        h.event
            .data
            .as_ref()
            .and_then(|d| crate::ident(d, "model_version"))
    })
}

/// The `prediction.served` of an inference from its halves (one of them may be missing after
/// the join timed out). `rate` is the sample rate it was kept at; `default_version` names the
/// version when the bodies do not.
pub fn prediction(
    request: Option<&Half>,
    response: Option<&Half>,
    rate: f64,
    default_version: Option<&str>,
) -> Result<Value, TranslateError> {
    let halves: Vec<&Half> = request.iter().chain(response.iter()).copied().collect();
    let first = halves
        .first()
        .ok_or_else(|| malformed("a prediction needs a request or a response"))?;
    let joined = halves.len() == 2;
    let key = if joined {
        first.key.clone()
    } else {
        format!("{}/{}", first.key, first.side.as_str())
    };
    let (version, version_source) = match (reported_version(&halves), default_version) {
        (Some(v), _) => (v, "model_version"),
        (None, Some(d)) => (d.to_owned(), "configured default"),
        (None, None) => ("unknown".to_owned(), "not reported"),
    };
    let logger = first.logger.as_str();
    let mut draft = Draft::new(
        logger,
        &key,
        "prediction.served",
        Actor::service(format!("{logger}:{}", first.model)),
    )
    .time(
        request
            .and_then(|h| h.event.time.clone())
            .or_else(|| response.and_then(|h| h.event.time.clone())),
    )
    .subject("model", first.model.clone())
    .subject("version", version)
    .subject("request", first.request.clone())
    .attr("version_source", version_source)
    .attr("logger", logger)
    .attr("join", if joined { "matched" } else { "timed_out" })
    .attr("sample_rate", rate);
    for name in [
        "component",
        "endpoint",
        "namespace",
        "inferenceservicename",
        "modelid",
    ] {
        if let Some(v) = halves.iter().find_map(|h| h.event.extension(name)) {
            draft = draft.attr(name, v);
        }
    }
    draft = match request.and_then(|h| h.event.data_value()) {
        Some(inputs) => draft.attr("inputs", inputs),
        None => draft.unreported("inputs"),
    };
    draft = match response.and_then(|h| h.event.data_value()) {
        Some(outputs) => draft.attr("outputs", outputs),
        None => draft.unreported("outputs"),
    };
    let mut context = Map::new();
    for h in &halves {
        context.insert(h.side.as_str().into(), h.event.context());
    }
    Ok(draft.attr("cloudevents", Value::Object(context)).build())
}

/// A CDEvents package URL (`pkg:type/namespace/name@version?...`) split into name and version.
fn purl_name_version(purl: &str) -> Option<(String, String)> {
    let rest = purl.strip_prefix("pkg:")?;
    let rest = rest.split(['?', '#']).next()?;
    let (path, version) = rest.rsplit_once('@')?;
    let name = percent_decode(path.rsplit('/').next()?);
    let version = percent_decode(version);
    (!name.is_empty() && !version.is_empty()).then_some((name, version))
}

/// A CDEvents service event → an operations kind. The CDEvent itself is kept.
fn cdevent(ce: &CloudEvent) -> Result<Value, TranslateError> {
    let body = ce
        .data
        .as_ref()
        .filter(|d| d.is_object())
        .ok_or_else(|| malformed("a CDEvent carries its event as a JSON object in data"))?;
    let subject = body
        .get("subject")
        .ok_or_else(|| malformed("the CDEvent has no subject"))?;
    let service = crate::ident(subject, "id")
        .ok_or_else(|| malformed("the CDEvent's subject has no id (the service)"))?;
    let content = subject.get("content").cloned().unwrap_or(Value::Null);
    let environment = content
        .get("environment")
        .and_then(|e| crate::ident(e, "id"));
    let artifact = content.get("artifactId").and_then(Value::as_str);
    let action = ce
        .ty
        .trim_start_matches("dev.cdevents.service.")
        .split('.')
        .next()
        .unwrap_or("");
    let deployment = match &environment {
        Some(env) => format!("{env}/{service}"),
        None => service.clone(),
    };
    let context_id = body
        .get("context")
        .and_then(|c| crate::ident(c, "id"))
        .unwrap_or_else(|| ce.id.clone());
    let time = body
        .get("context")
        .and_then(|c| crate::text(c, "timestamp"))
        .map(str::to_owned)
        .or_else(|| ce.time.clone());
    let actor = Actor::service(format!(
        "cdevents:{}",
        crate::truncate_bytes(
            body.get("context")
                .and_then(|c| crate::text(c, "source"))
                .unwrap_or(&ce.source),
            900
        )
    ));
    let base = |kind: &str| {
        Draft::new("cdevents", &context_id, kind, actor.clone())
            .time(time.clone())
            .subject("deployment", deployment.clone())
            .attr("cdevent_type", ce.ty.clone())
            .attr("cdevent", body.clone())
    };
    let model = artifact.and_then(purl_name_version);
    let draft = match (action, &model, &environment) {
        ("deployed" | "upgraded", Some((name, version)), Some(env)) => base("operations.deployed")
            .subject("model", name.clone())
            .subject("version", version.clone())
            .attr("environment", env.clone())
            .attr("change", action),
        ("rolledback", _, _) => {
            let mut d = base("operations.rolled_back").unreported("from_version");
            d = match &model {
                Some((_, version)) => d.attr("to_version", version.clone()),
                None => d.unreported("to_version"),
            };
            d.unreported("trigger")
        }
        ("removed", _, _) => base("operations.config_changed").attr(
            "changes",
            json!({ "deployed": { "old": artifact.unwrap_or("deployed"), "new": null } }),
        ),
        ("deployed" | "upgraded", _, _) => {
            // Without an artifact version or an environment there is no operations.deployed
            // to record honestly: keep it as a custom event.
            Draft::new(
                "cdevents",
                &context_id,
                custom_kind("cdevents", &ce.ty),
                actor.clone(),
            )
            .time(time.clone())
            .subject("deployment", deployment.clone())
            .attr("cdevent_type", ce.ty.clone())
            .attr("cdevent", body.clone())
        }
        _ => Draft::new(
            "cdevents",
            &context_id,
            custom_kind("cdevents", &ce.ty),
            actor.clone(),
        )
        .time(time.clone())
        .attr("cdevent_type", ce.ty.clone())
        .attr("cdevent", body.clone()),
    };
    Ok(draft.build())
}
