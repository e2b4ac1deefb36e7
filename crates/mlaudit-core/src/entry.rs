//! The entry header: the binary leaf preimage of every event (see `docs/FORMAT.md`).
//!
//! The header commits to the payload's SHA-256, never to the payload itself, so a payload can be
//! removed later (expiry, erasure) and every proof stays valid. It also carries what the log
//! must answer without the payload: seq, times, id, kind, actor, principal and subject ids.
//!
//! Layout (all integers big-endian, strings UTF-8 with a length prefix):
//!
//! ```text
//! u8   version (= 1)          u64 seq            i64 event time (unix ns)
//! i64  receipt time (unix ns) [16] event id      [32] payload SHA-256
//! u32  payload length         u8 actor type (1 user, 2 service)
//! str8 kind                   str16 actor id     str16 principal
//! u8   subject count, then per subject: u8 field code (strictly increasing), str16 value
//! ```
//!
//! **Invariant:** `decode(encode(e)) == e` and `decode` accepts exactly the bytes `encode` can
//! produce: no trailing bytes, no unknown codes, canonical subject order, limits enforced.

use std::fmt;

/// Version byte of the entry header defined here.
pub const ENTRY_VERSION: u8 = 1;
/// Longest kind, in bytes.
pub const MAX_KIND_LEN: usize = 128;
/// Longest actor id, principal or subject value, in bytes.
pub const MAX_ID_LEN: usize = 1024;
/// Largest payload, in bytes.
pub const MAX_PAYLOAD_LEN: u32 = 1 << 24;

/// A client-chosen event id (a UUID), the idempotency key.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EventId(pub [u8; 16]);

impl EventId {
    /// Parses any textual UUID form (hyphenated, simple, braced, urn).
    pub fn parse(text: &str) -> Option<EventId> {
        uuid::Uuid::try_parse(text)
            .ok()
            .map(|u| EventId(*u.as_bytes()))
    }

    /// A stable id for an event translated from another system's record: a UUIDv8 whose
    /// bits are the first 122 of
    /// `SHA-256("mlaudit-derived-id\0" || u64_be(len(source)) || source || key)`.
    /// Importing or receiving the same record twice yields the same id, so the log's id
    /// deduplication keeps it once. `source` names the system (`mlflow`, `openlineage`, ...),
    /// `key` the record within it.
    pub fn derived(source: &str, key: &str) -> EventId {
        use sha2::{Digest, Sha256};
        let digest = Sha256::new()
            .chain_update(b"mlaudit-derived-id\0")
            .chain_update((source.len() as u64).to_be_bytes())
            .chain_update(source.as_bytes())
            .chain_update(key.as_bytes())
            .finalize();
        let mut bytes = [0u8; 16];
        bytes.copy_from_slice(&digest[..16]);
        EventId(*uuid::Builder::from_custom_bytes(bytes).as_uuid().as_bytes())
    }
}

impl fmt::Display for EventId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        uuid::Uuid::from_bytes(self.0).hyphenated().fmt(f)
    }
}

impl fmt::Debug for EventId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "EventId({self})")
    }
}

/// Who performed an action.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ActorType {
    /// A person.
    User,
    /// A pipeline, server or other program.
    Service,
}

impl ActorType {
    /// The catalogue's name for it.
    pub fn as_str(self) -> &'static str {
        match self {
            ActorType::User => "user",
            ActorType::Service => "service",
        }
    }
    fn code(self) -> u8 {
        match self {
            ActorType::User => 1,
            ActorType::Service => 2,
        }
    }
    fn from_code(code: u8) -> Option<ActorType> {
        match code {
            1 => Some(ActorType::User),
            2 => Some(ActorType::Service),
            _ => None,
        }
    }
}

/// The things an event can be about, with their one-byte codes in the header.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum SubjectField {
    Model,
    Version,
    Dataset,
    DatasetVersion,
    Run,
    PipelineRun,
    Deployment,
    Request,
}

impl SubjectField {
    /// Every field, in code order.
    pub const ALL: [SubjectField; 8] = [
        SubjectField::Model,
        SubjectField::Version,
        SubjectField::Dataset,
        SubjectField::DatasetVersion,
        SubjectField::Run,
        SubjectField::PipelineRun,
        SubjectField::Deployment,
        SubjectField::Request,
    ];

    /// The JSON name (`subject.<name>`).
    pub fn as_str(self) -> &'static str {
        match self {
            SubjectField::Model => "model",
            SubjectField::Version => "version",
            SubjectField::Dataset => "dataset",
            SubjectField::DatasetVersion => "dataset_version",
            SubjectField::Run => "run",
            SubjectField::PipelineRun => "pipeline_run",
            SubjectField::Deployment => "deployment",
            SubjectField::Request => "request",
        }
    }

    /// The header code (1..=8).
    pub fn code(self) -> u8 {
        self as u8 + 1
    }

    /// The field for a header code.
    pub fn from_code(code: u8) -> Option<SubjectField> {
        SubjectField::ALL
            .get(usize::from(code).checked_sub(1)?)
            .copied()
    }
}

/// A decoded entry header. `subjects` is sorted by field, each field at most once.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub seq: u64,
    pub event_time_ns: i64,
    pub receipt_time_ns: i64,
    pub id: EventId,
    pub payload_sha256: [u8; 32],
    pub payload_len: u32,
    pub actor_type: ActorType,
    pub kind: String,
    pub actor_id: String,
    pub principal: String,
    pub subjects: Vec<(SubjectField, String)>,
}

/// The fields of an entry by reference, for encoding without copying strings.
#[derive(Clone, Copy, Debug)]
pub struct EntryRef<'a> {
    pub seq: u64,
    pub event_time_ns: i64,
    pub receipt_time_ns: i64,
    pub id: EventId,
    pub payload_sha256: &'a [u8; 32],
    pub payload_len: u32,
    pub actor_type: ActorType,
    pub kind: &'a str,
    pub actor_id: &'a str,
    pub principal: &'a str,
    pub subjects: &'a [(SubjectField, String)],
}

impl Entry {
    /// Borrows the fields for [`encode_into`].
    pub fn as_ref(&self) -> EntryRef<'_> {
        EntryRef {
            seq: self.seq,
            event_time_ns: self.event_time_ns,
            receipt_time_ns: self.receipt_time_ns,
            id: self.id,
            payload_sha256: &self.payload_sha256,
            payload_len: self.payload_len,
            actor_type: self.actor_type,
            kind: &self.kind,
            actor_id: &self.actor_id,
            principal: &self.principal,
            subjects: &self.subjects,
        }
    }

    /// The value of one subject field, if present.
    pub fn subject(&self, field: SubjectField) -> Option<&str> {
        self.subjects
            .iter()
            .find(|(f, _)| *f == field)
            .map(|(_, v)| v.as_str())
    }
}

/// Why an entry could not be encoded or decoded.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum EntryError {
    /// The bytes end before the header does.
    #[error("entry is truncated: needed {needed} more bytes at offset {offset}")]
    Truncated { offset: usize, needed: usize },
    /// The first byte is not a version we know.
    #[error("unknown entry version {0}")]
    UnknownVersion(u8),
    /// The actor type code is not 1 or 2.
    #[error("unknown actor type code {0}")]
    UnknownActorType(u8),
    /// A subject field code is unknown.
    #[error("unknown subject field code {0}")]
    UnknownSubjectField(u8),
    /// Subject fields are not in strictly increasing code order.
    #[error("subject fields are repeated or out of order")]
    SubjectOrder,
    /// A string is not UTF-8.
    #[error("{0} is not valid UTF-8")]
    NotUtf8(&'static str),
    /// A string exceeds its limit.
    #[error("{field} is {len} bytes; the limit is {max}")]
    TooLong {
        field: &'static str,
        len: usize,
        max: usize,
    },
    /// Bytes remain after the header.
    #[error("{0} trailing bytes after the entry")]
    TrailingBytes(usize),
}

/// Encodes an entry header. Fails only when a limit is exceeded or subjects are not canonical.
pub fn encode(e: &Entry) -> Result<Vec<u8>, EntryError> {
    let mut out = Vec::with_capacity(96 + e.kind.len() + e.actor_id.len() + e.principal.len());
    encode_into(&e.as_ref(), &mut out)?;
    Ok(out)
}

/// Like [`encode`], appending to `out`.
pub fn encode_into(e: &EntryRef<'_>, out: &mut Vec<u8>) -> Result<(), EntryError> {
    check_len("kind", e.kind.len(), MAX_KIND_LEN)?;
    check_len("actor id", e.actor_id.len(), MAX_ID_LEN)?;
    check_len("principal", e.principal.len(), MAX_ID_LEN)?;
    let mut last = 0u8;
    for (field, value) in e.subjects {
        check_len("subject value", value.len(), MAX_ID_LEN)?;
        if field.code() <= last {
            return Err(EntryError::SubjectOrder);
        }
        last = field.code();
    }
    out.push(ENTRY_VERSION);
    out.extend_from_slice(&e.seq.to_be_bytes());
    out.extend_from_slice(&e.event_time_ns.to_be_bytes());
    out.extend_from_slice(&e.receipt_time_ns.to_be_bytes());
    out.extend_from_slice(&e.id.0);
    out.extend_from_slice(e.payload_sha256);
    out.extend_from_slice(&e.payload_len.to_be_bytes());
    out.push(e.actor_type.code());
    out.push(e.kind.len() as u8); // checked above: <= MAX_KIND_LEN < 256
    out.extend_from_slice(e.kind.as_bytes());
    put_str16(out, e.actor_id);
    put_str16(out, e.principal);
    out.push(e.subjects.len() as u8); // at most 8: codes are strictly increasing in 1..=8
    for (field, value) in e.subjects {
        out.push(field.code());
        put_str16(out, value);
    }
    Ok(())
}

fn check_len(field: &'static str, len: usize, max: usize) -> Result<(), EntryError> {
    if len > max {
        return Err(EntryError::TooLong { field, len, max });
    }
    Ok(())
}

fn put_str16(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u16).to_be_bytes()); // callers check <= MAX_ID_LEN
    out.extend_from_slice(s.as_bytes());
}

/// A cursor over untrusted bytes; every read is bounds-checked.
struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], EntryError> {
        let rest = &self.bytes[self.pos..];
        if rest.len() < n {
            return Err(EntryError::Truncated {
                offset: self.pos,
                needed: n - rest.len(),
            });
        }
        self.pos += n;
        Ok(&rest[..n])
    }
    fn array<const N: usize>(&mut self) -> Result<[u8; N], EntryError> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N)?);
        Ok(a)
    }
    fn u8(&mut self) -> Result<u8, EntryError> {
        Ok(self.array::<1>()?[0])
    }
    fn string(
        &mut self,
        len: usize,
        field: &'static str,
        max: usize,
    ) -> Result<&'a str, EntryError> {
        check_len(field, len, max)?;
        let raw = self.take(len)?;
        std::str::from_utf8(raw).map_err(|_| EntryError::NotUtf8(field))
    }
    fn str16(&mut self, field: &'static str) -> Result<&'a str, EntryError> {
        let len = u16::from_be_bytes(self.array()?) as usize;
        self.string(len, field, MAX_ID_LEN)
    }
}

/// A decoded entry header borrowing its strings from the bytes (no allocation).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EntryView<'a> {
    pub seq: u64,
    pub event_time_ns: i64,
    pub receipt_time_ns: i64,
    pub id: EventId,
    pub payload_sha256: [u8; 32],
    pub payload_len: u32,
    pub actor_type: ActorType,
    pub kind: &'a str,
    pub actor_id: &'a str,
    pub principal: &'a str,
    subjects: [Option<&'a str>; 8],
}

impl<'a> EntryView<'a> {
    /// The value of one subject field, if present.
    pub fn subject(&self, field: SubjectField) -> Option<&'a str> {
        self.subjects[field as usize]
    }

    /// An owned [`Entry`].
    pub fn to_entry(&self) -> Entry {
        Entry {
            seq: self.seq,
            event_time_ns: self.event_time_ns,
            receipt_time_ns: self.receipt_time_ns,
            id: self.id,
            payload_sha256: self.payload_sha256,
            payload_len: self.payload_len,
            actor_type: self.actor_type,
            kind: self.kind.to_owned(),
            actor_id: self.actor_id.to_owned(),
            principal: self.principal.to_owned(),
            subjects: SubjectField::ALL
                .iter()
                .filter_map(|f| self.subject(*f).map(|v| (*f, v.to_owned())))
                .collect(),
        }
    }
}

/// Decodes an entry header, rejecting anything [`encode`] would not have produced.
pub fn decode(bytes: &[u8]) -> Result<Entry, EntryError> {
    decode_view(bytes).map(|v| v.to_entry())
}

/// Like [`decode`], borrowing strings from `bytes`.
pub fn decode_view(bytes: &[u8]) -> Result<EntryView<'_>, EntryError> {
    let mut r = Reader { bytes, pos: 0 };
    let version = r.u8()?;
    if version != ENTRY_VERSION {
        return Err(EntryError::UnknownVersion(version));
    }
    let seq = u64::from_be_bytes(r.array()?);
    let event_time_ns = i64::from_be_bytes(r.array()?);
    let receipt_time_ns = i64::from_be_bytes(r.array()?);
    let id = EventId(r.array()?);
    let payload_sha256 = r.array()?;
    let payload_len = u32::from_be_bytes(r.array()?);
    let actor_code = r.u8()?;
    let actor_type =
        ActorType::from_code(actor_code).ok_or(EntryError::UnknownActorType(actor_code))?;
    let kind_len = r.u8()? as usize;
    let kind = r.string(kind_len, "kind", MAX_KIND_LEN)?;
    let actor_id = r.str16("actor id")?;
    let principal = r.str16("principal")?;
    let count = r.u8()?;
    let mut subjects = [None; 8];
    let mut last = 0u8;
    for _ in 0..count {
        let code = r.u8()?;
        let field = SubjectField::from_code(code).ok_or(EntryError::UnknownSubjectField(code))?;
        if code <= last {
            return Err(EntryError::SubjectOrder);
        }
        last = code;
        subjects[field as usize] = Some(r.str16("subject value")?);
    }
    if r.pos != bytes.len() {
        return Err(EntryError::TrailingBytes(bytes.len() - r.pos));
    }
    Ok(EntryView {
        seq,
        event_time_ns,
        receipt_time_ns,
        id,
        payload_sha256,
        payload_len,
        actor_type,
        kind,
        actor_id,
        principal,
        subjects,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn sample() -> Entry {
        Entry {
            seq: 42,
            event_time_ns: 1_700_000_000_123_456_789,
            receipt_time_ns: 1_700_000_001_000_000_000,
            id: EventId([0xab; 16]),
            payload_sha256: [0x11; 32],
            payload_len: 300,
            actor_type: ActorType::Service,
            kind: "prediction.served".into(),
            actor_id: "scorer-1".into(),
            principal: "token:ingest".into(),
            subjects: vec![
                (SubjectField::Model, "credit-risk".into()),
                (SubjectField::Version, "7".into()),
                (SubjectField::Request, "req-1".into()),
            ],
        }
    }

    #[test]
    fn round_trips() {
        let e = sample();
        let bytes = encode(&e).unwrap();
        assert_eq!(decode(&bytes).unwrap(), e);
    }

    #[test]
    fn every_truncation_and_extension_is_rejected() {
        let bytes = encode(&sample()).unwrap();
        for cut in 0..bytes.len() {
            assert!(
                matches!(decode(&bytes[..cut]), Err(EntryError::Truncated { .. })),
                "cut {cut}"
            );
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert_eq!(decode(&longer), Err(EntryError::TrailingBytes(1)));
    }

    #[test]
    fn non_canonical_subjects_are_rejected() {
        let mut e = sample();
        e.subjects.swap(0, 1);
        assert_eq!(encode(&e), Err(EntryError::SubjectOrder));
        let good = encode(&sample()).unwrap();
        // The first subject code sits right after the count byte; make it repeat the second.
        let count_at = good.len() - (1 + 2 + 11) - (1 + 2 + 1) - (1 + 2 + 5) - 1;
        assert_eq!(good[count_at], 3);
        let mut bad = good.clone();
        bad[count_at + 1] = SubjectField::Version.code();
        assert_eq!(decode(&bad), Err(EntryError::SubjectOrder));
    }

    #[test]
    fn display_of_id_is_hyphenated_uuid() {
        let id = EventId::parse("6F9619FF8B86D011B42D00C04FC964FF").unwrap();
        assert_eq!(id.to_string(), "6f9619ff-8b86-d011-b42d-00c04fc964ff");
    }
}
