//! The token file of a data directory (`tokens.json`, mode 0600), and how a token change is
//! made so that the log and the file always agree.
//!
//! * A token is `mla_` followed by 64 hex digits (32 random bytes). It is shown once, when
//!   created; the file keeps only its SHA-256. Presented tokens are hashed and compared with
//!   every active hash in constant time, without stopping at the first match.
//! * A name is never reused, not even after its token is revoked, so that every record of
//!   `token:<name>` in the log means one token.
//! * A token may expire (`expires`, RFC 3339); an expired token is refused like a wrong one.
//!
//! **A change, step by step** ([`Tokens::apply`]), under an exclusive lock on `tokens.lock`
//! that every process changing tokens takes (`mlaudit serve` and `mlaudit token`):
//! 1. the changed record is written to the file marked `pending`, with the id of its
//!    `governance.access_changed` event and the record as it was (temp file, fsync, rename,
//!    directory fsync);
//! 2. the event is appended, durably, under that id;
//! 3. the record is written again without the mark;
//! 4. only then does authentication see the change.
//!
//! A crash between 1 and 3 leaves a pending record: at the next load ([`Tokens::reconcile`]),
//! a change whose event is in the log is completed, any other is undone. If step 2 fails, the
//! change is undone at once; if that write fails too, the next load undoes it.

use crate::auth::{Principal, Role};
use mlaudit_core::entry::EventId;
use mlaudit_core::event::{format_time, parse_time, prepare_reserved};
use mlaudit_core::merkle::{hex, sha256, Hash};
use mlaudit_store::{Store, StoreError};
use serde::{Deserialize, Serialize};
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

/// Where a token table is kept: the data directory's `tokens.json` ([`FileDoc`]), or a store
/// every server of one log shares (the PostgreSQL engine), so that a change made on one
/// server holds on all of them.
pub trait TokenDoc: Send + Sync + std::fmt::Debug {
    /// The stored table (`None` before the first change) and its version.
    fn read(&self) -> Result<(Option<Vec<u8>>, u64), String>;
    /// Stores a new table, durably; returns its version.
    fn write(&self, bytes: &[u8]) -> Result<u64, String>;
    /// Holds the lock that serializes changes between processes until the guard is dropped.
    fn lock(&self) -> Result<Box<dyn std::any::Any + Send>, String>;
    /// The newest version known without blocking: a table loaded at an older version is stale
    /// and is read again before it authenticates anyone. A file is never stale (`0`).
    fn latest(&self) -> u64 {
        0
    }
    /// Where it is, for messages.
    fn name(&self) -> String;
}

/// A token table in a file (mode 0600), replaced atomically, locked with `flock` on a
/// `.lock` file beside it.
#[derive(Debug)]
pub struct FileDoc {
    path: PathBuf,
}

impl FileDoc {
    pub fn new(path: &Path) -> FileDoc {
        FileDoc {
            path: path.to_owned(),
        }
    }
}

impl TokenDoc for FileDoc {
    fn read(&self) -> Result<(Option<Vec<u8>>, u64), String> {
        match std::fs::read(&self.path) {
            Ok(bytes) => Ok((Some(bytes), 0)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok((None, 0)),
            Err(e) => Err(e.to_string()),
        }
    }

    fn write(&self, text: &[u8]) -> Result<u64, String> {
        let tmp = self.path.with_extension("json.tmp");
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(|e| format!("{}: {e}", tmp.display()))?;
        f.write_all(text)
            .and_then(|()| f.sync_all())
            .map_err(|e| format!("{}: {e}", tmp.display()))?;
        std::fs::rename(&tmp, &self.path).map_err(|e| e.to_string())?;
        if let Some(dir) = self.path.parent() {
            File::open(dir)
                .and_then(|d| d.sync_all())
                .map_err(|e| format!("{}: {e}", dir.display()))?;
        }
        Ok(0)
    }

    fn lock(&self) -> Result<Box<dyn std::any::Any + Send>, String> {
        let path = self.path.with_extension("lock");
        let f = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(&path)
            .map_err(|e| format!("{}: {e}", path.display()))?;
        f.lock().map_err(|e| format!("{}: {e}", path.display()))?;
        Ok(Box::new(f))
    }

    fn name(&self) -> String {
        self.path.display().to_string()
    }
}

/// One stored token (never the token itself).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenRecord {
    pub name: String,
    pub role: Role,
    /// SHA-256 of the token text, hex.
    pub sha256: String,
    pub created: String,
    pub revoked: Option<String>,
    /// When the token stops working (RFC 3339); `None` never.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires: Option<String>,
    /// A change written to the file whose event may not be in the log yet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending: Option<Pending>,
}

/// A change in progress on a record: the id of its event, and the record as it was before
/// (`None` for a creation).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pending {
    pub event_id: String,
    pub before: Option<Box<TokenRecord>>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct TokenFile {
    tokens: Vec<TokenRecord>,
}

/// Why a token operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TokenError {
    #[error("a token named {0:?} exists or existed: token names are never reused, so that the log's records of a name always mean one token")]
    Exists(String),
    #[error("no active token named {0:?}")]
    Unknown(String),
    #[error("token names are 1 to 64 characters of letters, digits, '.', '_' and '-'; got {0:?}")]
    BadName(String),
    #[error("{path}: {problem}")]
    File { path: String, problem: String },
    #[error("no randomness for a token: {0}")]
    Random(String),
}

/// Why a change did not take effect.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ChangeError {
    #[error(transparent)]
    Token(#[from] TokenError),
    /// The event could not be appended: the change was undone.
    #[error("the change could not be recorded in the log, so it was not made: {0}")]
    Log(#[from] StoreError),
}

/// A change to make.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    Create {
        name: String,
        role: Role,
        /// Unix ns; `None` never expires.
        expires_ns: Option<i64>,
    },
    SetRole {
        name: String,
        role: Role,
    },
    Revoke {
        name: String,
    },
}

/// The outcome of a change that took effect.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Staged {
    pub name: String,
    pub role: Role,
    /// The role before, for a role change.
    pub previous_role: Option<Role>,
    /// The new token's text, for a creation (shown once).
    pub token: Option<String>,
    /// The seq of the `governance.access_changed` event.
    pub seq: u64,
}

/// The token file of a data directory.
#[derive(Debug)]
pub struct Tokens {
    doc: Arc<dyn TokenDoc>,
    /// The version of the table loaded.
    version: u64,
    file: TokenFile,
    /// Parsed hashes of the tokens that authenticate (active, not pending creation), with
    /// their index in `file.tokens`, and expiry in unix ns.
    active: Vec<(Hash, usize, Option<i64>)>,
}

fn file_err(path: &str, problem: impl std::fmt::Display) -> TokenError {
    TokenError::File {
        path: path.to_owned(),
        problem: problem.to_string(),
    }
}

fn valid_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
}

/// The record as authentication sees it: the state before a pending change.
fn effective(rec: &TokenRecord) -> Option<&TokenRecord> {
    match &rec.pending {
        None => Some(rec),
        Some(p) => p.before.as_deref(),
    }
}

/// The id of a change's event: derived from what changed and when, so that completing a
/// change after a crash appends a duplicate, never a second event.
fn change_id(name: &str, change: &str, now_ns: i64) -> EventId {
    let digest = sha256(format!("mlaudit token change\0{name}\0{change}\0{now_ns}").as_bytes());
    let mut id = [0u8; 16];
    id.copy_from_slice(&digest[..16]);
    id[6] = (id[6] & 0x0f) | 0x80; // UUID version 8 (custom)
    id[8] = (id[8] & 0x3f) | 0x80; // RFC 4122 variant
    EventId(id)
}

/// The `governance.access_changed` event recording a token change, as JSON text.
pub fn access_changed_event(
    actor: &Principal,
    token_name: &str,
    role: Role,
    change: &str,
) -> String {
    serde_json::json!({
        "kind": "governance.access_changed",
        "actor": { "id": actor.name, "type": "user" },
        "attributes": { "principal": format!("token:{token_name}"), "role": role.as_str(), "change": change }
    })
    .to_string()
}

impl Tokens {
    /// Loads `path`, or starts empty if it does not exist. Pending changes are left for
    /// [`Tokens::reconcile`].
    pub fn load(path: &Path) -> Result<Tokens, TokenError> {
        Tokens::load_from(Arc::new(FileDoc::new(path)))
    }

    /// Loads the table kept in `doc` (empty if it holds none yet).
    pub fn load_from(doc: Arc<dyn TokenDoc>) -> Result<Tokens, TokenError> {
        let name = doc.name();
        let (bytes, version) = doc.read().map_err(|e| file_err(&name, e))?;
        let file = match bytes {
            Some(bytes) => serde_json::from_slice(&bytes).map_err(|e| file_err(&name, e))?,
            None => TokenFile::default(),
        };
        let mut t = Tokens {
            doc,
            version,
            file,
            active: Vec::new(),
        };
        t.reindex()?;
        Ok(t)
    }

    /// Whether another process has changed the table since it was loaded (only a shared
    /// table can be).
    pub fn is_stale(&self) -> bool {
        self.doc.latest() > self.version
    }

    /// Where the table is kept.
    pub fn doc(&self) -> Arc<dyn TokenDoc> {
        self.doc.clone()
    }

    /// The version of the table loaded.
    pub fn version(&self) -> u64 {
        self.version
    }

    fn reindex(&mut self) -> Result<(), TokenError> {
        self.active.clear();
        for (i, rec) in self.file.tokens.iter().enumerate() {
            let Some(rec) = effective(rec).filter(|r| r.revoked.is_none()) else {
                continue;
            };
            let hash = Hash::from_hex(&rec.sha256).ok_or_else(|| {
                file_err(
                    &self.doc.name(),
                    format!("token {:?} has a malformed hash", rec.name),
                )
            })?;
            let expires = match &rec.expires {
                None => None,
                Some(t) => Some(parse_time(t).ok_or_else(|| {
                    file_err(
                        &self.doc.name(),
                        format!("token {:?} has a malformed expiry", rec.name),
                    )
                })?),
            };
            self.active.push((hash, i, expires));
        }
        Ok(())
    }

    fn save(&mut self) -> Result<(), TokenError> {
        let name = self.doc.name();
        let text = serde_json::to_vec_pretty(&self.file).map_err(|e| file_err(&name, e))?;
        self.version = self.doc.write(&text).map_err(|e| file_err(&name, e))?;
        Ok(())
    }

    /// The principal a presented token stands for, if it is active and not expired at `now_ns`.
    /// Compares against every active hash in constant time.
    pub fn authenticate(
        &self,
        presented: &str,
        now_ns: i64,
    ) -> Result<Principal, crate::auth::AuthFailure> {
        use crate::auth::AuthFailure;
        let h = Hash(sha256(presented.as_bytes()));
        let mut found = None;
        for (stored, i, expires) in &self.active {
            if stored.ct_eq(&h) {
                found = Some((*i, *expires));
            }
        }
        let (i, expires) = found.ok_or(AuthFailure::Invalid)?;
        if expires.is_some_and(|e| now_ns >= e) {
            return Err(AuthFailure::Expired);
        }
        let rec = effective(&self.file.tokens[i]).ok_or(AuthFailure::Invalid)?;
        Ok(Principal {
            name: format!("token:{}", rec.name),
            role: Some(rec.role),
        })
    }

    /// Every token record as authentication sees it, revoked ones included (changes in
    /// progress are not shown).
    pub fn list(&self) -> Vec<TokenRecord> {
        self.file
            .tokens
            .iter()
            .filter_map(effective)
            .cloned()
            .collect()
    }

    /// Makes `change` by `actor` at `now_ns`: file, then log, then memory (see the module
    /// docs). `tokens` is the table requests authenticate against; it is locked only briefly.
    pub fn apply(
        tokens: &RwLock<Tokens>,
        store: &dyn Store,
        actor: &Principal,
        change: Change,
        now_ns: i64,
    ) -> Result<Staged, ChangeError> {
        let poisoned = || file_err("tokens", "the token table lock is poisoned");
        let doc = tokens.read().map_err(|_| poisoned())?.doc.clone();
        let _lock = doc.lock().map_err(|e| file_err(&doc.name(), e))?;
        // Another process may have changed the table since it was loaded: start from storage.
        let mut next = Tokens::load_from(doc)?;
        let (mut staged, index, event) = next.stage(change, actor, now_ns)?;
        next.save()?;
        let appended = prepare_reserved(&event, &actor.name)
            .map_err(|e| StoreError::Rejected {
                index: 0,
                problem: e.to_string(),
            })
            .and_then(|e| store.append(vec![e]));
        let receipt = match appended {
            Ok(r) => r,
            Err(e) => {
                next.finish(index, false);
                let _ = next.save();
                return Err(e.into());
            }
        };
        staged.seq = receipt.events.first().map_or(0, |a| a.seq);
        next.finish(index, true);
        next.save()?;
        *tokens.write().map_err(|_| poisoned())? = next;
        Ok(staged)
    }

    /// Creates a token `name` with `role` as `actor` through [`Tokens::apply`] (recorded in the
    /// log like any other change), and returns its text.
    pub fn create(
        tokens: &RwLock<Tokens>,
        store: &dyn Store,
        actor: &Principal,
        name: &str,
        role: Role,
    ) -> Result<String, ChangeError> {
        let change = Change::Create {
            name: name.to_owned(),
            role,
            expires_ns: None,
        };
        let staged = Tokens::apply(tokens, store, actor, change, crate::auth::now_ns())?;
        Ok(staged.token.unwrap_or_default())
    }

    /// Writes `change` into the records, marked pending: what it did, the record's index and
    /// its event's JSON.
    fn stage(
        &mut self,
        change: Change,
        actor: &Principal,
        now_ns: i64,
    ) -> Result<(Staged, usize, String), TokenError> {
        let now = format_time(now_ns);
        let find = |t: &Tokens, name: &str| {
            t.file
                .tokens
                .iter()
                .position(|r| r.name == name && r.revoked.is_none() && r.pending.is_none())
                .ok_or_else(|| TokenError::Unknown(name.to_owned()))
        };
        let (staged, index, what) = match change {
            Change::Create {
                name,
                role,
                expires_ns,
            } => {
                if !valid_name(&name) {
                    return Err(TokenError::BadName(name));
                }
                if self.file.tokens.iter().any(|t| t.name == name) {
                    return Err(TokenError::Exists(name));
                }
                let mut secret = [0u8; 32];
                getrandom::getrandom(&mut secret).map_err(|e| TokenError::Random(e.to_string()))?;
                let token = format!("mla_{}", hex(&secret));
                self.file.tokens.push(TokenRecord {
                    name: name.clone(),
                    role,
                    sha256: hex(&sha256(token.as_bytes())),
                    created: now.clone(),
                    revoked: None,
                    expires: expires_ns.map(format_time),
                    pending: None,
                });
                let staged = Staged {
                    name,
                    role,
                    previous_role: None,
                    token: Some(token),
                    seq: 0,
                };
                (staged, self.file.tokens.len() - 1, "granted")
            }
            Change::SetRole { name, role } => {
                let i = find(self, &name)?;
                let old = std::mem::replace(&mut self.file.tokens[i].role, role);
                let staged = Staged {
                    name,
                    role,
                    previous_role: Some(old),
                    token: None,
                    seq: 0,
                };
                (staged, i, "granted")
            }
            Change::Revoke { name } => {
                let i = find(self, &name)?;
                self.file.tokens[i].revoked = Some(now.clone());
                let role = self.file.tokens[i].role;
                let staged = Staged {
                    name,
                    role,
                    previous_role: None,
                    token: None,
                    seq: 0,
                };
                (staged, i, "revoked")
            }
        };
        let before = self.before_change(index, &staged);
        let id = change_id(&staged.name, what, now_ns);
        self.file.tokens[index].pending = Some(Pending {
            event_id: id.to_string(),
            before: before.map(Box::new),
        });
        let mut event: serde_json::Value = serde_json::from_str(&access_changed_event(
            actor,
            &staged.name,
            staged.role,
            what,
        ))
        .map_err(|e| file_err(&self.doc.name(), e))?;
        event["id"] = serde_json::Value::String(id.to_string());
        if let Some(expires) = &self.file.tokens[index].expires {
            event["attributes"]["expires"] = serde_json::Value::String(expires.clone());
        }
        Ok((staged, index, event.to_string()))
    }

    /// The record at `index` as it was before `staged` (`None` for a creation).
    fn before_change(&self, index: usize, staged: &Staged) -> Option<TokenRecord> {
        if staged.token.is_some() {
            return None;
        }
        let mut before = self.file.tokens[index].clone();
        before.pending = None;
        match staged.previous_role {
            Some(role) => before.role = role,
            None => before.revoked = None,
        }
        Some(before)
    }

    /// Ends the pending change of record `index`: made (`logged`) or undone.
    fn finish(&mut self, index: usize, logged: bool) {
        let Some(pending) = self.file.tokens[index].pending.take() else {
            return;
        };
        if !logged {
            match pending.before {
                Some(before) => self.file.tokens[index] = *before,
                None => {
                    self.file.tokens.remove(index);
                }
            }
        }
        // Cannot fail here: every record was parsed when loaded or staged.
        let _ = self.reindex();
    }

    /// Completes or undoes every change left pending by a crash: a change whose event is in
    /// `store` is made, any other undone. Returns one line per change for the operator.
    pub fn reconcile(&mut self, store: &dyn Store) -> Result<Vec<String>, TokenError> {
        let mut said = Vec::new();
        let mut i = 0;
        while i < self.file.tokens.len() {
            let Some(p) = self.file.tokens[i].pending.clone() else {
                i += 1;
                continue;
            };
            let id = EventId::parse(&p.event_id)
                .ok_or_else(|| file_err(&self.doc.name(), "a pending change has a malformed id"))?;
            let logged = store
                .seq_of(&id)
                .map_err(|e| file_err(&self.doc.name(), e))?
                .is_some();
            let name = self.file.tokens[i].name.clone();
            said.push(if logged {
                format!("completed the change of token {name:?} recorded as event {id}")
            } else {
                format!("undid the change of token {name:?}: it never reached the log")
            });
            let removed = !logged && p.before.is_none();
            self.finish(i, logged);
            if !removed {
                i += 1;
            }
        }
        if !said.is_empty() {
            self.save()?;
        }
        Ok(said)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_change_id_is_a_version_8_uuid_fixed_by_its_inputs() {
        let a = change_id("ingest", "granted", 7);
        assert_eq!(a, change_id("ingest", "granted", 7));
        assert_ne!(a, change_id("ingest", "revoked", 7));
        assert_ne!(a, change_id("ingest", "granted", 8));
        assert_eq!(a.to_string().as_bytes()[14], b'8');
    }
}
