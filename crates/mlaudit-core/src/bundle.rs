//! Proof bundles: one event with everything needed to check it offline against the log's
//! verifier key — the entry bytes, the payload (unless redacted), the inclusion path and the
//! signed checkpoint whose tree size is the bundle's `tree_size`.
//!
//! Also [`render_event`], the human-readable JSON view of a stored event (header + payload).

use crate::b64;
use crate::entry::{self, Entry};
use crate::event::format_time;
use crate::merkle::{self, Hash};
use crate::note::{open_checkpoint, NoteVerifier};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// The value of the bundle's `format` field.
pub const BUNDLE_FORMAT: &str = "mlaudit-proof-bundle/v1";
/// Longest inclusion path accepted (a tree has at most 2^64 leaves).
const MAX_PATH: usize = 64;

/// A proof bundle, as serialized to JSON.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ProofBundle {
    pub format: String,
    /// base64 of the entry header (the leaf preimage without the 0x00 prefix).
    pub entry: String,
    /// base64 of the payload, or `null` once redacted.
    pub payload: Option<String>,
    pub leaf_index: u64,
    pub tree_size: u64,
    /// base64 hashes, leaf to root (RFC 9162 order).
    pub inclusion_path: Vec<String>,
    /// The signed checkpoint note, verbatim.
    pub checkpoint: String,
    /// The decoded event, for people; not used by verification.
    #[serde(default)]
    pub event: serde_json::Value,
    /// Once the payload was erased or expired: the governance event that removed it, proven
    /// in the same tree. Absent while the payload is kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload_erased_by: Option<RemovalProof>,
}

/// The governance event that removed a payload (`governance.payload_erased` or
/// `governance.payload_expired`), with its payload (which lists the event ids it removed) and
/// its inclusion path in the bundle's tree.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct RemovalProof {
    /// base64 of its entry header.
    pub entry: String,
    /// base64 of its payload.
    pub payload: String,
    pub leaf_index: u64,
    /// base64 hashes, leaf to root, for the bundle's `tree_size`.
    pub inclusion_path: Vec<String>,
}

impl RemovalProof {
    /// Builds one from stored parts.
    pub fn new(entry: &[u8], payload: &[u8], leaf_index: u64, path: &[Hash]) -> RemovalProof {
        RemovalProof {
            entry: b64::encode(entry),
            payload: b64::encode(payload),
            leaf_index,
            inclusion_path: encode_path(path),
        }
    }
}

fn encode_path(path: &[Hash]) -> Vec<String> {
    path.iter().map(|h| b64::encode(h.0)).collect()
}

/// Why a bundle did not verify. Each names the check that failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BundleError {
    /// A field could not be decoded.
    #[error("bundle field {field}: {problem}")]
    Malformed {
        field: &'static str,
        problem: String,
    },
    /// The payload's SHA-256 differs from the digest the entry commits to.
    #[error("payload SHA-256 {actual} does not match the entry's {expected}")]
    PayloadDigest { expected: String, actual: String },
    /// The entry's seq is not the leaf index.
    #[error("entry seq {seq} differs from leaf_index {leaf_index}")]
    SeqMismatch { seq: u64, leaf_index: u64 },
    /// The checkpoint's signature or body is bad.
    #[error("checkpoint: {0}")]
    Checkpoint(#[from] crate::note::NoteError),
    /// The checkpoint is for another tree size.
    #[error("checkpoint tree size {checkpoint} differs from tree_size {bundle}")]
    SizeMismatch { checkpoint: u64, bundle: u64 },
    /// The inclusion path does not lead to the signed root.
    #[error("inclusion proof: {0}")]
    Inclusion(#[from] merkle::ProofError),
}

/// What a verified bundle established.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedBundle {
    pub entry: Entry,
    pub leaf_hash: Hash,
    pub root: Hash,
    pub payload_present: bool,
    /// The governance event that removed the payload, when the bundle says so.
    pub payload_erased_by: Option<Entry>,
}

impl ProofBundle {
    /// Builds a bundle from stored parts.
    pub fn new(
        entry: &[u8],
        payload: Option<&[u8]>,
        leaf_index: u64,
        tree_size: u64,
        path: &[Hash],
        checkpoint: String,
    ) -> ProofBundle {
        let event = entry::decode(entry)
            .map(|e| render_event(&e, payload))
            .unwrap_or(serde_json::Value::Null);
        ProofBundle {
            format: BUNDLE_FORMAT.to_owned(),
            entry: b64::encode(entry),
            payload: payload.map(b64::encode),
            leaf_index,
            tree_size,
            inclusion_path: encode_path(path),
            checkpoint,
            event,
            payload_erased_by: None,
        }
    }

    /// Verifies the bundle offline with only the log's verifier key.
    pub fn verify(&self, key: &NoteVerifier) -> Result<VerifiedBundle, BundleError> {
        let bad = |field: &'static str, problem: &str| BundleError::Malformed {
            field,
            problem: problem.to_owned(),
        };
        if self.format != BUNDLE_FORMAT {
            return Err(bad("format", "unknown bundle format"));
        }
        let entry_bytes = b64::decode(&self.entry).map_err(|_| bad("entry", "not base64"))?;
        let entry = entry::decode(&entry_bytes).map_err(|e| BundleError::Malformed {
            field: "entry",
            problem: e.to_string(),
        })?;
        if entry.seq != self.leaf_index {
            return Err(BundleError::SeqMismatch {
                seq: entry.seq,
                leaf_index: self.leaf_index,
            });
        }
        if let Some(p) = &self.payload {
            let payload = b64::decode(p).map_err(|_| bad("payload", "not base64"))?;
            if payload.len() as u64 != u64::from(entry.payload_len) {
                return Err(bad(
                    "payload",
                    "is not as long as the entry's payload length",
                ));
            }
            let actual: [u8; 32] = Sha256::digest(&payload).into();
            if actual != entry.payload_sha256 {
                return Err(BundleError::PayloadDigest {
                    expected: merkle::hex(&entry.payload_sha256),
                    actual: merkle::hex(&actual),
                });
            }
        }
        let path = decode_path("inclusion_path", &self.inclusion_path)?;
        let checkpoint = open_checkpoint(key, &self.checkpoint)?;
        if checkpoint.size != self.tree_size {
            return Err(BundleError::SizeMismatch {
                checkpoint: checkpoint.size,
                bundle: self.tree_size,
            });
        }
        let leaf_hash = merkle::leaf_hash(&entry_bytes);
        merkle::verify_inclusion(
            self.leaf_index,
            self.tree_size,
            &leaf_hash,
            &path,
            &checkpoint.root,
        )?;
        let payload_erased_by = match &self.payload_erased_by {
            None => None,
            Some(_) if self.payload.is_some() => {
                return Err(bad(
                    "payload_erased_by",
                    "is present although the payload is too",
                ))
            }
            Some(r) => Some(r.verify(&entry.id.to_string(), self.tree_size, &checkpoint.root)?),
        };
        Ok(VerifiedBundle {
            entry,
            leaf_hash,
            root: checkpoint.root,
            payload_present: self.payload.is_some(),
            payload_erased_by,
        })
    }
}

impl RemovalProof {
    /// Checks that it is a payload removal event, listing the event `id`, included in the tree
    /// of `size` and `root`.
    fn verify(&self, id: &str, size: u64, root: &Hash) -> Result<Entry, BundleError> {
        let bad = |problem: String| BundleError::Malformed {
            field: "payload_erased_by",
            problem,
        };
        let bytes = b64::decode(&self.entry).map_err(|_| bad("entry is not base64".into()))?;
        let entry = entry::decode(&bytes).map_err(|e| bad(format!("entry: {e}")))?;
        if entry.seq != self.leaf_index {
            return Err(bad(format!(
                "entry seq {} differs from leaf_index {}",
                entry.seq, self.leaf_index
            )));
        }
        if !crate::event::PAYLOAD_REMOVAL_KINDS.contains(&entry.kind.as_str()) {
            return Err(bad(format!(
                "names a {} event, not a payload removal",
                entry.kind
            )));
        }
        let payload =
            b64::decode(&self.payload).map_err(|_| bad("payload is not base64".into()))?;
        let digest: [u8; 32] = Sha256::digest(&payload).into();
        if payload.len() as u64 != u64::from(entry.payload_len) || digest != entry.payload_sha256 {
            return Err(bad("payload is not the one its entry commits to".into()));
        }
        let listed = serde_json::from_slice::<serde_json::Value>(&payload)
            .ok()
            .and_then(|doc| {
                let ids = doc.get("attributes")?.get("events")?.as_array()?.clone();
                Some(ids.iter().any(|v| v.as_str() == Some(id)))
            });
        if listed != Some(true) {
            return Err(bad(format!("the removal event does not list event {id}")));
        }
        let path = decode_path("payload_erased_by", &self.inclusion_path)?;
        let leaf = merkle::leaf_hash(&bytes);
        merkle::verify_inclusion(self.leaf_index, size, &leaf, &path, root)?;
        Ok(entry)
    }
}

/// Decodes an inclusion path (at most 64 base64 hashes of 32 bytes).
fn decode_path(field: &'static str, path: &[String]) -> Result<Vec<Hash>, BundleError> {
    let bad = |problem: &str| BundleError::Malformed {
        field,
        problem: problem.to_owned(),
    };
    if path.len() > MAX_PATH {
        return Err(bad("the inclusion path is longer than 64 hashes"));
    }
    path.iter()
        .map(|h| b64::decode(h).ok().and_then(|b| Hash::from_slice(&b)))
        .collect::<Option<Vec<Hash>>>()
        .ok_or_else(|| bad("every path element must be base64 of 32 bytes"))
}

/// The readable view of an event: header fields, then the payload's subject and attributes.
pub fn render_event(e: &Entry, payload: Option<&[u8]>) -> serde_json::Value {
    use serde_json::{json, Map, Value};
    let mut subject = Map::new();
    for (field, value) in &e.subjects {
        subject.insert(field.as_str().to_owned(), Value::String(value.clone()));
    }
    let parsed: Option<Value> = payload.and_then(|p| serde_json::from_slice(p).ok());
    let attributes = parsed
        .as_ref()
        .and_then(|v| v.get("attributes"))
        .cloned()
        .unwrap_or(Value::Null);
    json!({
        "seq": e.seq,
        "id": e.id.to_string(),
        "time": format_time(e.event_time_ns),
        "received": format_time(e.receipt_time_ns),
        "kind": e.kind,
        "actor": { "id": e.actor_id, "type": e.actor_type.as_str() },
        "principal": e.principal,
        "subject": subject,
        "attributes": if payload.is_some() { attributes } else { Value::String("[redacted]".into()) },
        "payload_sha256": merkle::hex(&e.payload_sha256),
    })
}
