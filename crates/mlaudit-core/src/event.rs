//! The v1 event catalogue and its validation: JSON in, a [`PreparedEvent`] (everything of the
//! entry header except seq and receipt time, plus the verbatim payload) or an [`EventError`]
//! naming the field out.
//!
//! Parsing borrows from the input: the top level is split into raw JSON values and only the
//! fields the catalogue needs are decoded. The payload stored is the event's JSON text exactly
//! as received (surrounding whitespace trimmed); the header carries the normalized id, times,
//! kind, actor and subjects.
//!
//! **Invariant:** a `PreparedEvent` made by [`prepare`] satisfies its kind's requirements and
//! every entry-header limit, so the store can always encode it.

use crate::entry::{ActorType, EventId, SubjectField, MAX_ID_LEN, MAX_KIND_LEN};
use serde::Deserialize;
use serde_json::value::RawValue;
use sha2::{Digest, Sha256};
use std::borrow::Cow;

/// Largest event (one JSON document), in bytes.
pub const MAX_EVENT_BYTES: usize = 1 << 20;
/// Deepest nesting of objects and arrays inside `attributes` (the attributes object is level 1).
pub const MAX_ATTRIBUTE_DEPTH: usize = 32;
/// Largest `attributes` (keys and values), in bytes.
pub const MAX_ATTRIBUTES_BYTES: usize = 256 << 10;
/// Most top-level keys in `attributes`.
pub const MAX_ATTRIBUTES: usize = 1024;

/// Kinds only the server writes (it records access changes and reads of the trail itself); a
/// client that submits one is refused, whatever its role.
pub const RESERVED_KINDS: [&str; 6] = [
    "governance.access_changed",
    "governance.audit_accessed",
    "governance.hold_created",
    "governance.hold_released",
    "governance.payload_erased",
    "governance.payload_expired",
];

/// Kinds of the governance events that remove payloads: a removed payload names one of them.
pub const PAYLOAD_REMOVAL_KINDS: [&str; 2] =
    ["governance.payload_erased", "governance.payload_expired"];

/// Whether only the server may write events of `kind`.
pub fn is_reserved_kind(kind: &str) -> bool {
    RESERVED_KINDS.contains(&kind)
}

/// Whether `c` may not appear in a kind, an actor id or a subject value: C0 and C1 controls
/// (`\n`, `\x1b`, DEL, ...) and the Unicode bidirectional overrides and isolates, any of which
/// could make an event print as something it is not on an operator's terminal.
pub fn is_forbidden_char(c: char) -> bool {
    c.is_control() || matches!(c, '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}')
}

/// The lifecycle stage, the prefix of a kind.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Stage {
    Data,
    Training,
    Registry,
    Operations,
    Prediction,
    Governance,
    Custom,
}

impl Stage {
    /// Every stage.
    pub const ALL: [Stage; 7] = [
        Stage::Data,
        Stage::Training,
        Stage::Registry,
        Stage::Operations,
        Stage::Prediction,
        Stage::Governance,
        Stage::Custom,
    ];

    /// The stage's name as written in kinds (`custom` for `x.*`).
    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Data => "data",
            Stage::Training => "training",
            Stage::Registry => "registry",
            Stage::Operations => "operations",
            Stage::Prediction => "prediction",
            Stage::Governance => "governance",
            Stage::Custom => "custom",
        }
    }

    /// Parses a stage name.
    pub fn parse(name: &str) -> Option<Stage> {
        Stage::ALL.into_iter().find(|s| s.as_str() == name)
    }

    /// The stage of a kind, if the kind is in the catalogue or custom.
    pub fn of_kind(kind: &str) -> Option<Stage> {
        if kind.starts_with("x.") {
            return Some(Stage::Custom);
        }
        spec(kind).map(|s| s.stage)
    }
}

/// What an attribute's value must be.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Attr {
    /// Any JSON value but `null`.
    Any,
    /// A non-empty string.
    Text,
    /// A string with a URI scheme (`scheme:...`).
    Uri,
    /// 64 hex digits.
    Sha256,
    /// A JSON object.
    Object,
    /// A JSON array.
    List,
    /// A list of `dataset@version` strings.
    DatasetRefs,
    /// An integer.
    Integer,
    /// A number >= 0.
    NonNegative,
    /// A non-empty string or an object (an identity).
    Identity,
    /// A non-empty string or a number (a version).
    VersionRef,
    /// An object of version -> percent, summing to 100.
    Split,
    /// An object of key -> {"old": ..., "new": ...}.
    Changes,
    /// `granted` or `revoked`.
    GrantOrRevoke,
}

/// One kind's requirements.
#[derive(Debug)]
struct KindSpec {
    name: &'static str,
    stage: Stage,
    subjects: &'static [SubjectField],
    attrs: &'static [(&'static str, Attr)],
    optional: &'static [(&'static str, Attr)],
}

use SubjectField as S;

const CATALOGUE: &[KindSpec] = &[
    KindSpec {
        name: "data.source_accessed",
        stage: Stage::Data,
        subjects: &[S::Dataset],
        attrs: &[("source", Attr::Uri)],
        optional: &[],
    },
    KindSpec {
        name: "data.transformation_applied",
        stage: Stage::Data,
        subjects: &[S::Dataset],
        attrs: &[("inputs", Attr::List), ("transformation", Attr::Any)],
        optional: &[("filter", Attr::Any)],
    },
    KindSpec {
        name: "data.snapshot_created",
        stage: Stage::Data,
        subjects: &[S::Dataset, S::DatasetVersion],
        attrs: &[("content_sha256", Attr::Sha256)],
        optional: &[],
    },
    KindSpec {
        name: "training.run_started",
        stage: Stage::Training,
        subjects: &[S::Run, S::Model],
        attrs: &[
            ("hyperparameters", Attr::Object),
            ("random_seed", Attr::Integer),
            ("datasets", Attr::DatasetRefs),
        ],
        optional: &[],
    },
    KindSpec {
        name: "training.checkpoint_evaluated",
        stage: Stage::Training,
        subjects: &[S::Run],
        attrs: &[("step", Attr::Integer), ("metrics", Attr::Object)],
        optional: &[],
    },
    KindSpec {
        name: "training.run_completed",
        stage: Stage::Training,
        subjects: &[S::Run],
        attrs: &[
            ("status", Attr::Text),
            ("duration_s", Attr::NonNegative),
            ("compute", Attr::Object),
        ],
        optional: &[],
    },
    KindSpec {
        name: "registry.model_registered",
        stage: Stage::Registry,
        subjects: &[S::Model, S::Version, S::Run],
        attrs: &[("artifact_sha256", Attr::Sha256)],
        optional: &[],
    },
    KindSpec {
        name: "registry.promotion_requested",
        stage: Stage::Registry,
        subjects: &[S::Model, S::Version],
        attrs: &[("to_stage", Attr::Text)],
        optional: &[],
    },
    KindSpec {
        name: "registry.approval_granted",
        stage: Stage::Registry,
        subjects: &[S::Model, S::Version],
        attrs: &[("approver", Attr::Identity), ("reason", Attr::Text)],
        optional: &[],
    },
    KindSpec {
        name: "registry.approval_rejected",
        stage: Stage::Registry,
        subjects: &[S::Model, S::Version],
        attrs: &[("approver", Attr::Identity), ("reason", Attr::Text)],
        optional: &[],
    },
    KindSpec {
        name: "registry.stage_changed",
        stage: Stage::Registry,
        subjects: &[S::Model, S::Version],
        attrs: &[("from_stage", Attr::Text), ("to_stage", Attr::Text)],
        optional: &[],
    },
    KindSpec {
        name: "registry.deployment_target_assigned",
        stage: Stage::Registry,
        subjects: &[S::Model, S::Version],
        attrs: &[("target", Attr::Identity)],
        optional: &[],
    },
    KindSpec {
        name: "operations.deployed",
        stage: Stage::Operations,
        subjects: &[S::Deployment, S::Model, S::Version],
        attrs: &[("environment", Attr::Text)],
        optional: &[],
    },
    KindSpec {
        name: "operations.traffic_routed",
        stage: Stage::Operations,
        subjects: &[S::Deployment],
        attrs: &[("split", Attr::Split)],
        optional: &[],
    },
    KindSpec {
        name: "operations.rolled_back",
        stage: Stage::Operations,
        subjects: &[S::Deployment],
        attrs: &[
            ("from_version", Attr::VersionRef),
            ("to_version", Attr::VersionRef),
            ("trigger", Attr::Text),
        ],
        optional: &[],
    },
    KindSpec {
        name: "operations.config_changed",
        stage: Stage::Operations,
        subjects: &[S::Deployment],
        attrs: &[("changes", Attr::Changes)],
        optional: &[],
    },
    KindSpec {
        name: "prediction.served",
        stage: Stage::Prediction,
        subjects: &[S::Model, S::Version, S::Request],
        attrs: &[("inputs", Attr::Any), ("outputs", Attr::Any)],
        optional: &[
            ("confidence", Attr::NonNegative),
            ("latency_ms", Attr::NonNegative),
            ("sample_rate", Attr::NonNegative),
        ],
    },
    KindSpec {
        name: "governance.policy_changed",
        stage: Stage::Governance,
        subjects: &[],
        attrs: &[
            ("policy", Attr::Text),
            ("old", Attr::Any),
            ("new", Attr::Any),
        ],
        optional: &[],
    },
    KindSpec {
        name: "governance.access_changed",
        stage: Stage::Governance,
        subjects: &[],
        attrs: &[
            ("principal", Attr::Text),
            ("role", Attr::Text),
            ("change", Attr::GrantOrRevoke),
        ],
        optional: &[],
    },
    KindSpec {
        name: "governance.audit_accessed",
        stage: Stage::Governance,
        subjects: &[],
        attrs: &[],
        optional: &[],
    },
    KindSpec {
        name: "governance.hold_created",
        stage: Stage::Governance,
        subjects: &[],
        attrs: &[
            ("hold", Attr::Text),
            ("reason", Attr::Text),
            ("scope", Attr::Object),
        ],
        optional: &[],
    },
    KindSpec {
        name: "governance.hold_released",
        stage: Stage::Governance,
        subjects: &[],
        attrs: &[("hold", Attr::Text), ("reason", Attr::Text)],
        optional: &[],
    },
    KindSpec {
        name: "governance.payload_erased",
        stage: Stage::Governance,
        subjects: &[],
        attrs: &[
            ("reason", Attr::Text),
            ("criteria", Attr::Object),
            ("events", Attr::List),
        ],
        optional: &[],
    },
    KindSpec {
        name: "governance.payload_expired",
        stage: Stage::Governance,
        subjects: &[],
        attrs: &[("rule", Attr::Text), ("events", Attr::List)],
        optional: &[],
    },
];

fn spec(kind: &str) -> Option<&'static KindSpec> {
    CATALOGUE.iter().find(|s| s.name == kind)
}

/// Every kind in the catalogue (without `x.*`).
pub fn catalogue_kinds() -> impl Iterator<Item = &'static str> {
    CATALOGUE.iter().map(|s| s.name)
}

/// Why an event was rejected. The message names the field.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum EventError {
    /// Not a JSON object, or not valid JSON.
    #[error("invalid JSON: {0}")]
    Json(String),
    /// The event is larger than [`MAX_EVENT_BYTES`].
    #[error("event is {0} bytes; the limit is {MAX_EVENT_BYTES}")]
    TooLarge(usize),
    /// A top-level field is missing.
    #[error("{0} is required")]
    Missing(&'static str),
    /// A field has the wrong type or value.
    #[error("{field} {problem}")]
    Invalid { field: String, problem: String },
    /// The kind is neither in the catalogue nor custom (`x.*`).
    #[error("unknown kind {0:?}: use a catalogue kind or a custom kind x.<name>")]
    UnknownKind(String),
    /// The kind is one only the server writes ([`RESERVED_KINDS`]).
    #[error("kind {0} is written by the server alone; clients may not submit it")]
    ReservedKind(String),
    /// A size or depth limit is exceeded; `limit` names it.
    #[error("{field} {problem} (limit {limit})")]
    Limit {
        field: &'static str,
        problem: String,
        limit: &'static str,
    },
    /// A kind-specific requirement is not met.
    #[error("{kind}: {field} {problem}")]
    Requirement {
        kind: String,
        field: String,
        problem: String,
    },
}

fn invalid(field: impl Into<String>, problem: impl Into<String>) -> EventError {
    EventError::Invalid {
        field: field.into(),
        problem: problem.into(),
    }
}

/// A validated event, ready for the log: all of the entry header but seq and receipt time.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PreparedEvent {
    /// The client's id; `None` lets the store generate one.
    pub id: Option<EventId>,
    /// When it happened (unix ns); `None` means "at receipt".
    pub event_time_ns: Option<i64>,
    pub kind: String,
    pub actor_type: ActorType,
    pub actor_id: String,
    /// Sorted by field, each at most once.
    pub subjects: Vec<(SubjectField, String)>,
    /// The authenticated principal that submitted it; set by the caller, never by the client.
    pub principal: String,
    /// The event's JSON text as received.
    pub payload: Vec<u8>,
    pub payload_sha256: [u8; 32],
}

impl PreparedEvent {
    /// The stage of the event's kind.
    pub fn stage(&self) -> Stage {
        Stage::of_kind(&self.kind).unwrap_or(Stage::Custom)
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Wire<'a> {
    #[serde(borrow, default)]
    id: Option<&'a RawValue>,
    #[serde(borrow, default)]
    time: Option<&'a RawValue>,
    #[serde(borrow, default)]
    kind: Option<&'a RawValue>,
    #[serde(borrow, default)]
    actor: Option<&'a RawValue>,
    #[serde(borrow, default)]
    subject: Option<&'a RawValue>,
    #[serde(borrow, default)]
    attributes: Option<&'a RawValue>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct WireActor<'a> {
    #[serde(borrow, default)]
    id: Option<Cow<'a, str>>,
    #[serde(borrow, default, rename = "type")]
    kind: Option<Cow<'a, str>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct WireSubject<'a> {
    #[serde(borrow, default)]
    model: Option<&'a RawValue>,
    #[serde(borrow, default)]
    version: Option<&'a RawValue>,
    #[serde(borrow, default)]
    dataset: Option<&'a RawValue>,
    #[serde(borrow, default)]
    dataset_version: Option<&'a RawValue>,
    #[serde(borrow, default)]
    run: Option<&'a RawValue>,
    #[serde(borrow, default)]
    pipeline_run: Option<&'a RawValue>,
    #[serde(borrow, default)]
    deployment: Option<&'a RawValue>,
    #[serde(borrow, default)]
    request: Option<&'a RawValue>,
}

/// Attributes as (key, raw value) pairs in document order; duplicate keys are rejected, and
/// [`MAX_ATTRIBUTES`] and [`MAX_ATTRIBUTES_BYTES`] are enforced while parsing, so that an
/// oversized object is refused as soon as it crosses a limit.
struct Attrs<'a>(Vec<(Cow<'a, str>, &'a RawValue)>);

impl<'a> Attrs<'a> {
    fn get(&self, key: &str) -> Option<&'a RawValue> {
        self.0.iter().find(|(k, _)| k == key).map(|(_, v)| *v)
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for Attrs<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> serde::de::Visitor<'de> for V<'a> {
            type Value = Attrs<'a>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("an object")
            }
            fn visit_map<M: serde::de::MapAccess<'de>>(
                self,
                mut map: M,
            ) -> Result<Attrs<'a>, M::Error> {
                use serde::de::Error;
                let mut out: Vec<(Cow<'a, str>, &'a RawValue)> = Vec::new();
                // Past a few keys, duplicates are found through a set (keyed SipHash), so
                // that many keys cost linear time, not quadratic.
                let mut keys: Option<std::collections::HashSet<Cow<'a, str>>> = None;
                let mut bytes = 0usize;
                while let Some(Str(key)) = map.next_key::<Str<'a>>()? {
                    if out.len() == MAX_ATTRIBUTES {
                        return Err(M::Error::custom(TOO_MANY_ATTRIBUTES));
                    }
                    let duplicate = match &mut keys {
                        Some(set) => !set.insert(key.clone()),
                        None => out.iter().any(|(k, _)| *k == key),
                    };
                    if duplicate {
                        return Err(M::Error::custom(format_args!("duplicate key {key:?}")));
                    }
                    let value: &'a RawValue = map.next_value()?;
                    bytes += key.len() + value.get().len();
                    if bytes > MAX_ATTRIBUTES_BYTES {
                        return Err(M::Error::custom(ATTRIBUTES_TOO_LARGE));
                    }
                    out.push((key, value));
                    if keys.is_none() && out.len() == LINEAR_KEY_CHECK {
                        keys = Some(out.iter().map(|(k, _)| k.clone()).collect());
                    }
                }
                Ok(Attrs(out))
            }
        }
        d.deserialize_map(V(std::marker::PhantomData))
    }
}

/// Up to this many keys, duplicates are found by comparing with each earlier key.
const LINEAR_KEY_CHECK: usize = 16;
/// Parse errors of [`Attrs`] that [`attributes_error`] turns back into [`EventError::Limit`].
const TOO_MANY_ATTRIBUTES: &str = "attributes: too many keys";
const ATTRIBUTES_TOO_LARGE: &str = "attributes: too many bytes";

/// The error for attributes that do not parse: a limit crossed while parsing, or the parser's
/// own message.
fn attributes_error(e: serde_json::Error) -> EventError {
    let text = e.to_string();
    if text.starts_with(TOO_MANY_ATTRIBUTES) {
        EventError::Limit {
            field: "attributes",
            problem: format!("have more than {MAX_ATTRIBUTES} keys"),
            limit: "max_attributes",
        }
    } else if text.starts_with(ATTRIBUTES_TOO_LARGE) {
        EventError::Limit {
            field: "attributes",
            problem: format!("are larger than {MAX_ATTRIBUTES_BYTES} bytes"),
            limit: "max_attributes_bytes",
        }
    } else {
        invalid("attributes", short(e))
    }
}

fn short(e: serde_json::Error) -> String {
    // serde_json positions are relative to the fragment; they would mislead.
    let text = e.to_string();
    match text.find(" at line ") {
        Some(at) => text[..at].to_owned(),
        None => text,
    }
}

fn is_null(raw: &RawValue) -> bool {
    raw.get() == "null"
}

/// A string or integer identifier (subject values, versions), as text.
fn ident<'a>(raw: &'a RawValue, field: &str) -> Result<Cow<'a, str>, EventError> {
    let text = raw.get();
    let value: Cow<'a, str> = if text.starts_with('"') {
        serde_json::from_str::<Cow<'a, str>>(text).map_err(|e| invalid(field, short(e)))?
    } else {
        // An integer that fits 64 bits, as the typed parser takes it (`-0` and integers beyond
        // 64 bits are numbers JSON parsers read as floats): its text, which JSON makes
        // canonical.
        match serde_json::from_str::<serde_json::Number>(text) {
            Ok(n) if n.is_i64() || n.is_u64() => Cow::Owned(n.to_string()),
            _ => return Err(invalid(field, "must be a string")),
        }
    };
    if value.is_empty() {
        return Err(invalid(field, "must not be empty"));
    }
    if value.len() > MAX_ID_LEN {
        return Err(invalid(field, format!("is longer than {MAX_ID_LEN} bytes")));
    }
    Ok(value)
}

fn string<'a>(raw: &'a RawValue, field: &str) -> Result<Cow<'a, str>, EventError> {
    if !raw.get().starts_with('"') {
        return Err(invalid(field, "must be a string"));
    }
    serde_json::from_str::<Cow<'a, str>>(raw.get()).map_err(|e| invalid(field, short(e)))
}

/// Parses an RFC 3339 time into unix nanoseconds.
pub fn parse_time(text: &str) -> Option<i64> {
    let t =
        time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339).ok()?;
    i64::try_from(t.unix_timestamp_nanos()).ok()
}

/// Parses an RFC 3339 time for use as a query bound: times outside the range of unix
/// nanoseconds in an `i64` (before 1677 or after 2262) clamp to its ends.
pub fn parse_time_bound(text: &str) -> Option<i64> {
    let t =
        time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339).ok()?;
    let ns = t.unix_timestamp_nanos();
    Some(i64::try_from(ns).unwrap_or(if ns < 0 { i64::MIN } else { i64::MAX }))
}

/// Formats unix nanoseconds as RFC 3339 in UTC (nanosecond precision where needed).
pub fn format_time(unix_ns: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(unix_ns))
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| format!("@{unix_ns}ns"))
}

/// Parses and validates one event a client submitted, from its JSON text. `principal` is the
/// authenticated submitter, recorded in the header. Kinds only the server writes
/// ([`RESERVED_KINDS`]) are refused.
///
/// Valid events take one typed, borrowing pass over the JSON; an event that does not fit that
/// shape is re-read field by field so that the error names the field at fault.
pub fn prepare(json: &str, principal: &str) -> Result<PreparedEvent, EventError> {
    prepare_as(json, principal, Origin::Client)
}

/// [`prepare`] for an event the server itself writes (a reserved kind such as
/// `governance.audit_accessed`). Never call it on a client's bytes.
pub fn prepare_reserved(json: &str, principal: &str) -> Result<PreparedEvent, EventError> {
    prepare_as(json, principal, Origin::Server)
}

/// Who wrote an event: only the server may use [`RESERVED_KINDS`].
#[derive(Clone, Copy, PartialEq, Eq)]
enum Origin {
    Client,
    Server,
}

/// The checks every event passes before either parser runs.
fn precheck<'a>(json: &'a str, principal: &str) -> Result<&'a str, EventError> {
    let json = json.trim_matches(|c: char| c.is_ascii_whitespace());
    if principal.is_empty() || principal.len() > MAX_ID_LEN {
        return Err(invalid(
            "principal",
            format!("must be 1 to {MAX_ID_LEN} bytes"),
        ));
    }
    if json.len() > MAX_EVENT_BYTES {
        return Err(EventError::TooLarge(json.len()));
    }
    if !json.starts_with('{') {
        return Err(EventError::Json("an event must be a JSON object".into()));
    }
    Ok(json)
}

fn prepare_as(json: &str, principal: &str, origin: Origin) -> Result<PreparedEvent, EventError> {
    let json = precheck(json, principal)?;
    let parts = match serde_json::from_str::<FastWire>(json) {
        Ok(wire) => wire.into_parts()?,
        Err(fast) => {
            slow_parts(json)?;
            return Err(EventError::Json(fast.to_string()));
        }
    };
    finish(json, principal, parts, origin)
}

/// The two parsers behind [`prepare`], each alone, so that tests can check that they accept
/// exactly the same events with the same result. Not an API.
#[doc(hidden)]
pub mod parsers {
    use super::*;

    /// The typed one-pass parser (`None` when it does not accept the shape).
    pub fn fast(json: &str, principal: &str) -> Option<Result<PreparedEvent, EventError>> {
        let json = match precheck(json, principal) {
            Ok(json) => json,
            Err(e) => return Some(Err(e)),
        };
        let wire = serde_json::from_str::<FastWire>(json).ok()?;
        Some(
            wire.into_parts()
                .and_then(|p| finish(json, principal, p, Origin::Client)),
        )
    }

    /// The field-by-field parser that explains errors.
    pub fn slow(json: &str, principal: &str) -> Result<PreparedEvent, EventError> {
        let json = precheck(json, principal)?;
        finish(json, principal, slow_parts(json)?, Origin::Client)
    }
}

/// The fields of an event after the syntactic pass.
struct Parts<'a> {
    kind: Cow<'a, str>,
    id: Option<Cow<'a, str>>,
    time: Option<Cow<'a, str>>,
    actor_type: ActorType,
    actor_id: Cow<'a, str>,
    subjects: Vec<(SubjectField, String)>,
    attrs: Attrs<'a>,
}

fn finish(
    json: &str,
    principal: &str,
    p: Parts<'_>,
    origin: Origin,
) -> Result<PreparedEvent, EventError> {
    if p.kind.len() > MAX_KIND_LEN {
        return Err(invalid(
            "kind",
            format!("is longer than {MAX_KIND_LEN} bytes"),
        ));
    }
    check_chars(&p.kind, || "kind".into())?;
    if origin == Origin::Client && is_reserved_kind(&p.kind) {
        return Err(EventError::ReservedKind(p.kind.into_owned()));
    }
    let spec = match spec(&p.kind) {
        Some(spec) => Some(spec),
        None if p.kind.starts_with("x.") && p.kind.len() > 2 => None,
        None => return Err(EventError::UnknownKind(p.kind.into_owned())),
    };
    let id = match &p.id {
        None => None,
        Some(text) => Some(EventId::parse(text).ok_or_else(|| invalid("id", "must be a UUID"))?),
    };
    let event_time_ns = match &p.time {
        None => None,
        Some(text) => Some(parse_time(text).ok_or_else(|| {
            invalid(
                "time",
                "must be an RFC 3339 time such as 2026-01-31T12:00:00Z",
            )
        })?),
    };
    if p.actor_id.is_empty() {
        return Err(EventError::Missing("actor.id"));
    }
    if p.actor_id.len() > MAX_ID_LEN {
        return Err(invalid(
            "actor.id",
            format!("is longer than {MAX_ID_LEN} bytes"),
        ));
    }
    check_chars(&p.actor_id, || "actor.id".into())?;
    for (field, value) in &p.subjects {
        check_chars(value, || format!("subject.{}", field.as_str()))?;
    }
    check_attribute_limits(&p.attrs)?;
    if let Some(spec) = spec {
        check_spec(spec, &p.subjects, &p.attrs)?;
    }
    let payload = json.as_bytes().to_vec();
    let payload_sha256 = Sha256::digest(&payload).into();
    Ok(PreparedEvent {
        id,
        event_time_ns,
        kind: p.kind.into_owned(),
        actor_type: p.actor_type,
        actor_id: p.actor_id.into_owned(),
        subjects: p.subjects,
        principal: principal.to_owned(),
        payload,
        payload_sha256,
    })
}

/// A JSON string, borrowed from the input unless it holds escapes. (serde's own
/// `Deserialize for Cow<str>` always allocates; only derived fields marked `borrow` borrow.)
struct Str<'a>(Cow<'a, str>);

impl<'de: 'a, 'a> Deserialize<'de> for Str<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> serde::de::Visitor<'de> for V<'a> {
            type Value = Str<'a>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Str<'a>, E> {
                Ok(Str(Cow::Borrowed(v)))
            }
            fn visit_str<E>(self, v: &str) -> Result<Str<'a>, E> {
                Ok(Str(Cow::Owned(v.to_owned())))
            }
        }
        d.deserialize_str(V(std::marker::PhantomData))
    }
}

/// A subject value: a string or an integer, kept as text.
struct Ident<'a>(Cow<'a, str>);

impl<'de: 'a, 'a> Deserialize<'de> for Ident<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> serde::de::Visitor<'de> for V<'a> {
            type Value = Ident<'a>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a string or an integer")
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Ident<'a>, E> {
                Ok(Ident(Cow::Borrowed(v)))
            }
            fn visit_str<E>(self, v: &str) -> Result<Ident<'a>, E> {
                Ok(Ident(Cow::Owned(v.to_owned())))
            }
            fn visit_u64<E>(self, v: u64) -> Result<Ident<'a>, E> {
                Ok(Ident(Cow::Owned(v.to_string())))
            }
            fn visit_i64<E>(self, v: i64) -> Result<Ident<'a>, E> {
                Ok(Ident(Cow::Owned(v.to_string())))
            }
        }
        d.deserialize_any(V(std::marker::PhantomData))
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FastWire<'a> {
    #[serde(borrow, default)]
    id: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    time: Option<Cow<'a, str>>,
    #[serde(borrow)]
    kind: Cow<'a, str>,
    #[serde(borrow)]
    actor: FastActor<'a>,
    #[serde(borrow, default)]
    subject: Option<FastSubject<'a>>,
    #[serde(borrow, default)]
    attributes: Option<Attrs<'a>>,
}

/// `{"id": ..., "type": ...}`, as a map only (serde's derive would also accept an array).
struct FastActor<'a> {
    id: Cow<'a, str>,
    kind: ActorType,
}

impl<'de: 'a, 'a> Deserialize<'de> for FastActor<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> serde::de::Visitor<'de> for V<'a> {
            type Value = FastActor<'a>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("an actor object")
            }
            fn visit_map<M: serde::de::MapAccess<'de>>(
                self,
                mut map: M,
            ) -> Result<FastActor<'a>, M::Error> {
                use serde::de::Error;
                let (mut id, mut kind) = (None, None);
                while let Some(Str(key)) = map.next_key::<Str<'a>>()? {
                    match &*key {
                        "id" if id.is_none() => id = Some(map.next_value::<Str<'a>>()?.0),
                        "type" if kind.is_none() => {
                            kind = Some(match &*map.next_value::<Str<'a>>()?.0 {
                                "user" => ActorType::User,
                                "service" => ActorType::Service,
                                _ => return Err(M::Error::custom("bad actor type")),
                            })
                        }
                        _ => return Err(M::Error::custom("unexpected actor field")),
                    }
                }
                match (id, kind) {
                    (Some(id), Some(kind)) => Ok(FastActor { id, kind }),
                    _ => Err(M::Error::custom("incomplete actor")),
                }
            }
        }
        d.deserialize_map(V(std::marker::PhantomData))
    }
}

/// The subject object, as (field, value) pairs sorted by field; a map only.
struct FastSubject<'a>(Vec<(SubjectField, Cow<'a, str>)>);

impl<'de: 'a, 'a> Deserialize<'de> for FastSubject<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> serde::de::Visitor<'de> for V<'a> {
            type Value = FastSubject<'a>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a subject object")
            }
            fn visit_map<M: serde::de::MapAccess<'de>>(
                self,
                mut map: M,
            ) -> Result<FastSubject<'a>, M::Error> {
                use serde::de::Error;
                let mut out: Vec<(SubjectField, Cow<'a, str>)> = Vec::with_capacity(4);
                let mut seen = 0u16;
                while let Some(Str(key)) = map.next_key::<Str<'a>>()? {
                    let field = SubjectField::ALL
                        .into_iter()
                        .find(|f| f.as_str() == key)
                        .ok_or_else(|| M::Error::custom("unknown subject field"))?;
                    if seen & (1 << field.code()) != 0 {
                        return Err(M::Error::custom("duplicate subject field"));
                    }
                    seen |= 1 << field.code();
                    if let Some(Ident(v)) = map.next_value::<Option<Ident<'a>>>()? {
                        out.push((field, v));
                    }
                }
                out.sort_by_key(|(f, _)| *f);
                Ok(FastSubject(out))
            }
        }
        d.deserialize_map(V(std::marker::PhantomData))
    }
}

impl<'a> FastWire<'a> {
    fn into_parts(self) -> Result<Parts<'a>, EventError> {
        let mut subjects = Vec::with_capacity(4);
        for (field, v) in self.subject.map(|s| s.0).unwrap_or_default() {
            check_ident(field, &v)?;
            subjects.push((field, v.into_owned()));
        }
        let actor_type = self.actor.kind;
        Ok(Parts {
            kind: self.kind,
            id: self.id,
            time: self.time,
            actor_type,
            actor_id: self.actor.id,
            subjects,
            attrs: self.attributes.unwrap_or(Attrs(Vec::new())),
        })
    }
}

/// Refuses control characters and bidirectional overrides ([`is_forbidden_char`]) in a value
/// that operators see printed.
fn check_chars(value: &str, field: impl FnOnce() -> String) -> Result<(), EventError> {
    // Printable ASCII, the usual case, holds none of them.
    if value.bytes().all(|b| (0x20..0x7f).contains(&b)) {
        return Ok(());
    }
    match value.chars().find(|c| is_forbidden_char(*c)) {
        Some(c) => Err(invalid(
            field(),
            format!(
                "must not contain control characters (found U+{:04X})",
                u32::from(c)
            ),
        )),
        None => Ok(()),
    }
}

fn check_ident(field: SubjectField, v: &str) -> Result<(), EventError> {
    if v.is_empty() {
        return Err(invalid(
            format!("subject.{}", field.as_str()),
            "must not be empty",
        ));
    }
    if v.len() > MAX_ID_LEN {
        return Err(invalid(
            format!("subject.{}", field.as_str()),
            format!("is longer than {MAX_ID_LEN} bytes"),
        ));
    }
    Ok(())
}

/// The field-by-field reading used to explain why the fast pass failed.
fn slow_parts(json: &str) -> Result<Parts<'_>, EventError> {
    let wire: Wire = serde_json::from_str(json).map_err(|e| EventError::Json(e.to_string()))?;
    let kind_raw = wire
        .kind
        .filter(|r| !is_null(r))
        .ok_or(EventError::Missing("kind"))?;
    let kind = string(kind_raw, "kind")?;
    let id = wire
        .id
        .filter(|r| !is_null(r))
        .map(|raw| string(raw, "id"))
        .transpose()?;
    let time = wire
        .time
        .filter(|r| !is_null(r))
        .map(|raw| string(raw, "time"))
        .transpose()?;
    let (actor_type, actor_id) = actor(wire.actor)?;
    let subjects = subjects(wire.subject)?;
    let attrs = match wire.attributes.filter(|r| !is_null(r)) {
        None => Attrs(Vec::new()),
        Some(raw) => {
            if !raw.get().starts_with('{') {
                return Err(invalid("attributes", "must be an object"));
            }
            serde_json::from_str::<Attrs>(raw.get()).map_err(attributes_error)?
        }
    };
    Ok(Parts {
        kind,
        id,
        time,
        actor_type,
        actor_id: Cow::Owned(actor_id),
        subjects,
        attrs,
    })
}

/// Nesting depth of a JSON text (1 for a flat object or array, 0 for a scalar), counting only
/// brackets outside strings. The text is valid JSON (the parser accepted it).
fn json_depth(text: &str) -> usize {
    let (mut depth, mut max, mut in_string, mut escaped) = (0usize, 0usize, false, false);
    for b in text.bytes() {
        if in_string {
            match (escaped, b) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'{' | b'[' => {
                depth += 1;
                max = max.max(depth);
            }
            b'}' | b']' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    max
}

fn check_attribute_limits(attrs: &Attrs) -> Result<(), EventError> {
    // Key count and size were enforced while parsing (`Attrs`); depth is checked here.
    for (key, value) in &attrs.0 {
        if 1 + json_depth(value.get()) > MAX_ATTRIBUTE_DEPTH {
            return Err(EventError::Limit {
                field: "attributes",
                problem: format!("nest deeper than {MAX_ATTRIBUTE_DEPTH} levels (under {key:?})"),
                limit: "max_attribute_depth",
            });
        }
    }
    Ok(())
}

fn actor(raw: Option<&RawValue>) -> Result<(ActorType, String), EventError> {
    let raw = raw
        .filter(|r| !is_null(r))
        .ok_or(EventError::Missing("actor"))?;
    if !raw.get().starts_with('{') {
        return Err(invalid(
            "actor",
            "must be an object {\"id\": ..., \"type\": \"user\" | \"service\"}",
        ));
    }
    let a: WireActor = serde_json::from_str(raw.get()).map_err(|e| invalid("actor", short(e)))?;
    let id =
        a.id.filter(|s| !s.is_empty())
            .ok_or(EventError::Missing("actor.id"))?;
    if id.len() > MAX_ID_LEN {
        return Err(invalid(
            "actor.id",
            format!("is longer than {MAX_ID_LEN} bytes"),
        ));
    }
    let t = match a.kind.as_deref() {
        Some("user") => ActorType::User,
        Some("service") => ActorType::Service,
        Some(_) => return Err(invalid("actor.type", "must be \"user\" or \"service\"")),
        None => return Err(EventError::Missing("actor.type")),
    };
    Ok((t, id.into_owned()))
}

fn subjects(raw: Option<&RawValue>) -> Result<Vec<(SubjectField, String)>, EventError> {
    let Some(raw) = raw.filter(|r| !is_null(r)) else {
        return Ok(Vec::new());
    };
    if !raw.get().starts_with('{') {
        return Err(invalid("subject", "must be an object"));
    }
    let w: WireSubject =
        serde_json::from_str(raw.get()).map_err(|e| invalid("subject", short(e)))?;
    let fields = [
        (S::Model, w.model),
        (S::Version, w.version),
        (S::Dataset, w.dataset),
        (S::DatasetVersion, w.dataset_version),
        (S::Run, w.run),
        (S::PipelineRun, w.pipeline_run),
        (S::Deployment, w.deployment),
        (S::Request, w.request),
    ];
    let mut out = Vec::with_capacity(4);
    for (field, value) in fields {
        if let Some(v) = value.filter(|r| !is_null(r)) {
            let v = ident(v, &format!("subject.{}", field.as_str()))?;
            check_ident(field, &v)?;
            out.push((field, v.into_owned()));
        }
    }
    Ok(out)
}

/// The required attributes an event declares its source did not report
/// (`attributes.unreported`: a list of names, each a required attribute of the kind). An event
/// translated from another tool (an MLflow webhook has no artifact digest, say) names what the
/// tool left out instead of inventing a value; such an attribute must then be absent.
fn unreported<'s>(spec: &'s KindSpec, attrs: &Attrs) -> Result<Vec<&'s str>, String> {
    let Some(raw) = attrs.get("unreported").filter(|r| !is_null(r)) else {
        return Ok(Vec::new());
    };
    let names: Vec<String> = serde_json::from_str(raw.get())
        .map_err(|_| "must be a list of attribute names".to_owned())?;
    names
        .iter()
        .map(|name| {
            spec.attrs
                .iter()
                .find(|(required, _)| required == name)
                .map(|(required, _)| *required)
                .ok_or_else(|| {
                    let shown: String = name.chars().take(64).collect();
                    format!("names {shown:?}, which is not a required attribute of this kind")
                })
        })
        .collect()
}

fn check_spec(
    spec: &KindSpec,
    subjects: &[(SubjectField, String)],
    attrs: &Attrs,
) -> Result<(), EventError> {
    let req = |field: String, problem: String| EventError::Requirement {
        kind: spec.name.to_owned(),
        field,
        problem,
    };
    for needed in spec.subjects {
        if !subjects.iter().any(|(f, _)| f == needed) {
            return Err(req(
                format!("subject.{}", needed.as_str()),
                "is required".into(),
            ));
        }
    }
    let unreported = unreported(spec, attrs).map_err(|p| req("attributes.unreported".into(), p))?;
    for (name, attr) in spec.attrs {
        match attrs.get(name).filter(|r| !is_null(r)) {
            None if unreported.contains(name) => {}
            None => return Err(req(format!("attributes.{name}"), "is required".into())),
            Some(_) if unreported.contains(name) => {
                return Err(req(
                    format!("attributes.{name}"),
                    "is listed in attributes.unreported but present".into(),
                ))
            }
            Some(raw) => {
                check_attr(*attr, raw).map_err(|p| req(format!("attributes.{name}"), p))?
            }
        }
    }
    for (name, attr) in spec.optional {
        if let Some(raw) = attrs.get(name).filter(|r| !is_null(r)) {
            check_attr(*attr, raw).map_err(|p| req(format!("attributes.{name}"), p))?;
        }
    }
    if spec.name == "prediction.served" {
        if let Some(raw) = attrs.get("sample_rate").filter(|r| !is_null(r)) {
            let rate: f64 = serde_json::from_str(raw.get())
                .map_err(|_| req("attributes.sample_rate".into(), "must be a number".into()))?;
            if !(rate > 0.0 && rate <= 1.0) {
                return Err(req(
                    "attributes.sample_rate".into(),
                    "must be in (0, 1]".into(),
                ));
            }
        }
    }
    Ok(())
}

/// Checks one attribute value; the error is the problem, without the field name.
fn check_attr(attr: Attr, raw: &RawValue) -> Result<(), String> {
    let text = raw.get();
    let first = text.as_bytes().first().copied().unwrap_or(b' ');
    let non_empty_string = || -> Result<String, String> {
        if first != b'"' {
            return Err("must be a string".into());
        }
        let s: String = serde_json::from_str(text).map_err(short)?;
        if s.is_empty() {
            return Err("must not be empty".into());
        }
        Ok(s)
    };
    match attr {
        Attr::Any => Ok(()),
        Attr::Text => non_empty_string().map(drop),
        Attr::Uri => {
            let s = non_empty_string()?;
            let scheme_ok = s.split_once(':').is_some_and(|(scheme, rest)| {
                !rest.is_empty()
                    && scheme
                        .chars()
                        .next()
                        .is_some_and(|c| c.is_ascii_alphabetic())
                    && scheme
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c))
            });
            if scheme_ok {
                Ok(())
            } else {
                Err("must be a URI with a scheme, such as s3://bucket/key".into())
            }
        }
        Attr::Sha256 => {
            let s = non_empty_string()?;
            if s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit()) {
                Ok(())
            } else {
                Err("must be 64 hex digits (a SHA-256)".into())
            }
        }
        Attr::Object => {
            if first == b'{' {
                Ok(())
            } else {
                Err("must be an object".into())
            }
        }
        Attr::List => {
            if first == b'[' {
                Ok(())
            } else {
                Err("must be a list".into())
            }
        }
        Attr::DatasetRefs => {
            let list: Vec<Cow<str>> = serde_json::from_str(text)
                .map_err(|_| "must be a list of \"dataset@version\" strings".to_owned())?;
            match list.iter().find(|r| {
                !r.split_once('@')
                    .is_some_and(|(d, v)| !d.is_empty() && !v.is_empty())
            }) {
                Some(bad) => Err(format!("entry {bad:?} is not of the form dataset@version")),
                None => Ok(()),
            }
        }
        Attr::Integer => match serde_json::from_str::<serde_json::Number>(text) {
            Ok(n) if n.is_i64() || n.is_u64() => Ok(()),
            _ => Err("must be an integer".into()),
        },
        Attr::NonNegative => match serde_json::from_str::<f64>(text) {
            Ok(v) if v >= 0.0 && v.is_finite() => Ok(()),
            _ => Err("must be a number >= 0".into()),
        },
        Attr::Identity => {
            if first == b'{' {
                Ok(())
            } else {
                non_empty_string()
                    .map(drop)
                    .map_err(|_| "must be a non-empty string or an object".into())
            }
        }
        Attr::VersionRef => ident(raw, "")
            .map(drop)
            .map_err(|_| "must be a version (string or integer)".into()),
        Attr::Split => {
            let shape = || "must be an object of version -> percent".to_owned();
            let range = || "must map versions to percents between 0 and 100".to_owned();
            let split = serde_json::from_str::<Attrs>(text).map_err(|_| shape())?;
            let mut sum = 0.0;
            for (_, raw) in &split.0 {
                let p = serde_json::from_str::<f64>(raw.get()).map_err(|_| shape())?;
                if !(0.0..=100.0).contains(&p) {
                    return Err(range());
                }
                sum += p;
            }
            if split.0.is_empty() {
                return Err(range());
            }
            if (sum - 100.0).abs() > 1e-6 {
                Err(format!("percents sum to {sum}, not 100"))
            } else {
                Ok(())
            }
        }
        Attr::Changes => {
            let shape = || "must be an object of key -> {\"old\": ..., \"new\": ...}".to_owned();
            let changes = serde_json::from_str::<Attrs>(text).map_err(|_| shape())?;
            if changes.0.is_empty() {
                return Err("must list at least one change".into());
            }
            for (key, raw) in &changes.0 {
                let change = serde_json::from_str::<Attrs>(raw.get()).map_err(|_| shape())?;
                if change.0.iter().any(|(k, _)| k != "old" && k != "new") {
                    return Err(shape());
                }
                if change.get("old").is_none() || change.get("new").is_none() {
                    return Err(format!("entry {key:?} needs both \"old\" and \"new\""));
                }
            }
            Ok(())
        }
        Attr::GrantOrRevoke => match non_empty_string()?.as_str() {
            "granted" | "revoked" => Ok(()),
            _ => Err("must be \"granted\" or \"revoked\"".into()),
        },
    }
}
