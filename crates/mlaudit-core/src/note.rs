//! C2SP `signed-note` with Ed25519, note verifier keys, and C2SP `tlog-checkpoint` bodies.
//!
//! * Key id: the first 4 bytes of `SHA-256(name || "\n" || 0x01 || public key)`.
//! * Verifier key: `<name>+<hex key id>+<base64(0x01 || public key)>`.
//! * Signing key (Go's `note` format): `PRIVATE+KEY+<name>+<hex key id>+<base64(0x01 || seed)>`.
//! * Signed note: the text (ending in `\n`), a blank line, then lines
//!   `— <name> <base64(key id || signature)>` where the signature covers the text exactly.
//! * Checkpoint text: `<origin>\n<decimal tree size>\n<base64 root>\n` (extension lines allowed
//!   and ignored).
//!
//! Compatible with `golang.org/x/mod/sumdb/note` (tested with its PeterNeumann known answer).

use crate::b64;
use crate::merkle::{hex, Hash};
use ed25519_dalek::{Signer as _, SigningKey, VerifyingKey};
use sha2::{Digest, Sha256};

const ALG_ED25519: u8 = 0x01;
const SIG_PREFIX: &str = "\u{2014} ";
/// Longest note we accept, in bytes.
pub const MAX_NOTE_LEN: usize = 1 << 20;

/// Why a key, note or checkpoint was rejected.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum NoteError {
    /// The key text is not in the expected format.
    #[error("malformed key: {0}")]
    MalformedKey(&'static str),
    /// The key's id does not match its name and public key.
    #[error("key id does not match the key's name and public key")]
    KeyIdMismatch,
    /// The note is not well-formed.
    #[error("malformed note: {0}")]
    MalformedNote(&'static str),
    /// No signature by the expected key was found.
    #[error("the note has no signature by key {0}")]
    NoSignatureByKey(String),
    /// A signature by the expected key did not verify.
    #[error("the signature by key {0} is invalid")]
    BadSignature(String),
    /// The checkpoint body is not a valid tlog checkpoint.
    #[error("malformed checkpoint: {0}")]
    MalformedCheckpoint(&'static str),
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && !name.contains(['+', ' ', '\n', '\t'])
        && name.chars().all(|c| !c.is_control())
}

/// The 4-byte key id of an Ed25519 key named `name`.
pub fn key_id(name: &str, public: &[u8; 32]) -> [u8; 4] {
    let mut h = Sha256::new();
    h.update(name.as_bytes());
    h.update(b"\n");
    h.update([ALG_ED25519]);
    h.update(public);
    let d = h.finalize();
    [d[0], d[1], d[2], d[3]]
}

/// A note signer: an Ed25519 private key with its name.
#[derive(Clone)]
pub struct NoteSigner {
    name: String,
    key: SigningKey,
    id: [u8; 4],
}

impl std::fmt::Debug for NoteSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "NoteSigner({}+{})", self.name, hex(&self.id))
    }
}

impl NoteSigner {
    /// A signer from a 32-byte Ed25519 seed (the caller supplies the randomness).
    pub fn from_seed(name: &str, seed: [u8; 32]) -> Result<NoteSigner, NoteError> {
        if !valid_name(name) {
            return Err(NoteError::MalformedKey(
                "name must be non-empty, without '+', spaces or newlines",
            ));
        }
        let key = SigningKey::from_bytes(&seed);
        let id = key_id(name, key.verifying_key().as_bytes());
        Ok(NoteSigner {
            name: name.to_owned(),
            key,
            id,
        })
    }

    /// Parses Go's `PRIVATE+KEY+<name>+<hex id>+<base64(0x01 || seed)>`.
    pub fn parse(text: &str) -> Result<NoteSigner, NoteError> {
        let rest = text
            .trim()
            .strip_prefix("PRIVATE+KEY+")
            .ok_or(NoteError::MalformedKey("missing PRIVATE+KEY+ prefix"))?;
        let (name, id, key) = split_key(rest)?;
        if key.len() != 33 || key[0] != ALG_ED25519 {
            return Err(NoteError::MalformedKey(
                "expected 0x01 followed by a 32-byte Ed25519 seed",
            ));
        }
        let mut seed = [0u8; 32];
        seed.copy_from_slice(&key[1..]);
        let signer = NoteSigner::from_seed(name, seed)?;
        if signer.id != id {
            return Err(NoteError::KeyIdMismatch);
        }
        Ok(signer)
    }

    /// The signing key in Go's format. Keep it secret.
    pub fn to_private_text(&self) -> String {
        let mut raw = vec![ALG_ED25519];
        raw.extend_from_slice(&self.key.to_bytes());
        format!(
            "PRIVATE+KEY+{}+{}+{}",
            self.name,
            hex(&self.id),
            b64::encode(raw)
        )
    }

    /// The key's name (for a log: its origin).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The matching verifier.
    pub fn verifier(&self) -> NoteVerifier {
        NoteVerifier {
            name: self.name.as_str().into(),
            id: self.id,
            key: self.key.verifying_key(),
        }
    }

    /// Signs `text` (which must end in a newline) and returns the whole signed note.
    pub fn sign(&self, text: &str) -> Result<String, NoteError> {
        check_text(text)?;
        let sig = self.key.sign(text.as_bytes());
        let mut blob = self.id.to_vec();
        blob.extend_from_slice(&sig.to_bytes());
        Ok(format!(
            "{text}\n{SIG_PREFIX}{} {}\n",
            self.name,
            b64::encode(blob)
        ))
    }
}

fn split_key(text: &str) -> Result<(&str, [u8; 4], Vec<u8>), NoteError> {
    let mut parts = text.splitn(3, '+');
    let (Some(name), Some(id_hex), Some(key_b64)) = (parts.next(), parts.next(), parts.next())
    else {
        return Err(NoteError::MalformedKey(
            "expected <name>+<hex id>+<base64 key>",
        ));
    };
    if !valid_name(name) {
        return Err(NoteError::MalformedKey("invalid name"));
    }
    if id_hex.len() != 8 || !id_hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(NoteError::MalformedKey("key id must be 8 hex digits"));
    }
    let id_num = u32::from_str_radix(id_hex, 16)
        .map_err(|_| NoteError::MalformedKey("key id must be 8 hex digits"))?;
    let key =
        b64::decode(key_b64).map_err(|_| NoteError::MalformedKey("key is not valid base64"))?;
    Ok((name, id_num.to_be_bytes(), key))
}

fn check_text(text: &str) -> Result<(), NoteError> {
    if !text.ends_with('\n') {
        return Err(NoteError::MalformedNote("text must end with a newline"));
    }
    if text.len() > MAX_NOTE_LEN {
        return Err(NoteError::MalformedNote("note too large"));
    }
    Ok(())
}

/// A note verifier key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NoteVerifier {
    /// Shared: a server clones its verifier for every request.
    name: std::sync::Arc<str>,
    id: [u8; 4],
    key: VerifyingKey,
}

impl NoteVerifier {
    /// Parses `<name>+<hex id>+<base64(0x01 || public key)>`, checking the id.
    pub fn parse(text: &str) -> Result<NoteVerifier, NoteError> {
        let (name, id, raw) = split_key(text.trim())?;
        if raw.len() != 33 || raw[0] != ALG_ED25519 {
            return Err(NoteError::MalformedKey(
                "expected 0x01 followed by a 32-byte Ed25519 public key",
            ));
        }
        let mut public = [0u8; 32];
        public.copy_from_slice(&raw[1..]);
        if key_id(name, &public) != id {
            return Err(NoteError::KeyIdMismatch);
        }
        let key = VerifyingKey::from_bytes(&public)
            .map_err(|_| NoteError::MalformedKey("not a valid Ed25519 public key"))?;
        Ok(NoteVerifier {
            name: name.into(),
            id,
            key,
        })
    }

    /// The key's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The verifier key text.
    pub fn to_text(&self) -> String {
        let mut raw = vec![ALG_ED25519];
        raw.extend_from_slice(self.key.as_bytes());
        format!("{}+{}+{}", self.name, hex(&self.id), b64::encode(raw))
    }

    /// Verifies a signed note and returns its text. Signatures by other keys are ignored; at
    /// least one signature line must be by this key (same name and id) and every such line
    /// must verify.
    pub fn open<'a>(&self, note: &'a str) -> Result<&'a str, NoteError> {
        if note.len() > MAX_NOTE_LEN {
            return Err(NoteError::MalformedNote("note too large"));
        }
        let split = note
            .rfind("\n\n")
            .ok_or(NoteError::MalformedNote("no blank line before signatures"))?;
        let (text, sigs) = (&note[..split + 1], &note[split + 2..]);
        if !sigs.ends_with('\n') || sigs.is_empty() {
            return Err(NoteError::MalformedNote(
                "signature block must be lines ending in newline",
            ));
        }
        let mut found = false;
        for line in sigs[..sigs.len() - 1].split('\n') {
            let body = line
                .strip_prefix(SIG_PREFIX)
                .ok_or(NoteError::MalformedNote(
                    "signature line must start with an em dash and a space",
                ))?;
            let (name, blob) = body.split_once(' ').ok_or(NoteError::MalformedNote(
                "signature line needs a name and a signature",
            ))?;
            let blob = b64::decode(blob)
                .map_err(|_| NoteError::MalformedNote("signature is not base64"))?;
            if name != &*self.name || blob.len() < 4 || blob[..4] != self.id {
                continue;
            }
            let sig = ed25519_dalek::Signature::from_slice(&blob[4..])
                .map_err(|_| NoteError::BadSignature(self.to_text()))?;
            self.key
                .verify_strict(text.as_bytes(), &sig)
                .map_err(|_| NoteError::BadSignature(self.to_text()))?;
            found = true;
        }
        if !found {
            return Err(NoteError::NoSignatureByKey(self.to_text()));
        }
        Ok(text)
    }
}

/// A tlog checkpoint body.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Checkpoint {
    pub origin: String,
    pub size: u64,
    pub root: Hash,
}

impl Checkpoint {
    /// The checkpoint text (no extension lines).
    pub fn to_text(&self) -> String {
        format!(
            "{}\n{}\n{}\n",
            self.origin,
            self.size,
            b64::encode(self.root.0)
        )
    }

    /// Parses a checkpoint text: origin, decimal size without leading zeros, base64 root, then
    /// optional extension lines.
    pub fn parse(text: &str) -> Result<Checkpoint, NoteError> {
        let mut lines = text.split('\n');
        let origin = lines
            .next()
            .filter(|o| !o.is_empty())
            .ok_or(NoteError::MalformedCheckpoint("missing origin"))?;
        let size_text = lines
            .next()
            .ok_or(NoteError::MalformedCheckpoint("missing tree size"))?;
        if size_text.is_empty()
            || !size_text.bytes().all(|b| b.is_ascii_digit())
            || (size_text.len() > 1 && size_text.starts_with('0'))
        {
            return Err(NoteError::MalformedCheckpoint(
                "tree size must be a decimal number without leading zeros",
            ));
        }
        let size = size_text
            .parse()
            .map_err(|_| NoteError::MalformedCheckpoint("tree size out of range"))?;
        let root_text = lines
            .next()
            .ok_or(NoteError::MalformedCheckpoint("missing root hash"))?;
        let root = b64::decode(root_text)
            .ok()
            .and_then(|r| Hash::from_slice(&r))
            .ok_or(NoteError::MalformedCheckpoint(
                "root must be base64 of 32 bytes",
            ))?;
        if !text.ends_with('\n') {
            return Err(NoteError::MalformedCheckpoint("must end with a newline"));
        }
        Ok(Checkpoint {
            origin: origin.to_owned(),
            size,
            root,
        })
    }
}

/// The checkpoint a signed note carries, without checking any signature: for notes the caller
/// wrote itself or checks another way (the store reading its own log, a logger comparing sizes
/// and roots).
pub fn unverified_checkpoint(note: &str) -> Result<Checkpoint, NoteError> {
    let body = note
        .split_once("\n\n")
        .map(|(b, _)| format!("{b}\n"))
        .unwrap_or_default();
    Checkpoint::parse(&body)
}

/// Verifies a signed checkpoint note with `verifier` and returns the checkpoint; its origin must
/// equal the key's name.
pub fn open_checkpoint(verifier: &NoteVerifier, note: &str) -> Result<Checkpoint, NoteError> {
    let text = verifier.open(note)?;
    let cp = Checkpoint::parse(text)?;
    if cp.origin != verifier.name() {
        return Err(NoteError::MalformedCheckpoint(
            "origin differs from the verifier key's name",
        ));
    }
    Ok(cp)
}

#[cfg(test)]
mod tests {
    use super::*;

    // golang.org/x/mod/sumdb/note/note_test.go
    const SKEY: &str =
        "PRIVATE+KEY+PeterNeumann+c74f20a3+AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz";
    const VKEY: &str = "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW";
    const TEXT: &str = "If you think cryptography is the answer to your problem,\nthen you don't know what your problem is.\n";
    const SIGNED: &str = "If you think cryptography is the answer to your problem,\nthen you don't know what your problem is.\n\n\u{2014} PeterNeumann x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvqfqdngotpRZb6KE6RyyBwJnAM=\n";

    #[test]
    fn go_known_answer_signs_identically() {
        let signer = NoteSigner::parse(SKEY).unwrap();
        assert_eq!(signer.verifier().to_text(), VKEY);
        assert_eq!(signer.sign(TEXT).unwrap(), SIGNED);
        assert_eq!(signer.to_private_text(), SKEY);
    }

    #[test]
    fn go_known_answer_verifies_and_tampering_fails() {
        let v = NoteVerifier::parse(VKEY).unwrap();
        assert_eq!(v.open(SIGNED).unwrap(), TEXT);
        let tampered = SIGNED.replace("cryptography", "cryptographY");
        assert!(matches!(v.open(&tampered), Err(NoteError::BadSignature(_))));
        let other = NoteSigner::from_seed("PeterNeumann", [9; 32])
            .unwrap()
            .verifier();
        assert!(matches!(
            other.open(SIGNED),
            Err(NoteError::NoSignatureByKey(_))
        ));
    }

    #[test]
    fn wrong_key_id_is_rejected() {
        let bad = VKEY.replace("c74f20a3", "c74f20a4");
        assert_eq!(NoteVerifier::parse(&bad), Err(NoteError::KeyIdMismatch));
    }

    #[test]
    fn checkpoint_round_trip() {
        let cp = Checkpoint {
            origin: "example.com/log".into(),
            size: 12,
            root: Hash([3; 32]),
        };
        let signer = NoteSigner::from_seed("example.com/log", [1; 32]).unwrap();
        let note = signer.sign(&cp.to_text()).unwrap();
        assert_eq!(open_checkpoint(&signer.verifier(), &note).unwrap(), cp);
        assert!(Checkpoint::parse("o\n012\nAAAA\n").is_err());
    }
}
