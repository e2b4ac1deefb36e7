//! Bearer API tokens with roles, and the access rules of every route.
//!
//! * A token is `mla_` followed by 64 hex digits (32 random bytes). It is shown once, when
//!   created; the token file keeps only its SHA-256.
//! * Presented tokens are hashed and compared with every stored hash in constant time, without
//!   stopping at the first match.
//! * Roles: `writer` appends events; `reader` queries, reads proofs and lineage; `admin`
//!   manages tokens and may also read. Health, readiness and the OpenAPI document are public;
//!   checkpoints, the verifier key and proofs are public when `public_proofs` is set (inclusion
//!   bundles then leave the payload out for anonymous callers, revealing only hashes).
//!
//! The token file (`<data>/tokens.json`) is rewritten atomically: temp file, fsync, rename.

use mlaudit_core::merkle::{hex, sha256, Hash};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// What a token may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Writer,
    Reader,
    Admin,
}

impl Role {
    /// Parses `writer`, `reader` or `admin`.
    pub fn parse(text: &str) -> Option<Role> {
        match text {
            "writer" => Some(Role::Writer),
            "reader" => Some(Role::Reader),
            "admin" => Some(Role::Admin),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Writer => "writer",
            Role::Reader => "reader",
            Role::Admin => "admin",
        }
    }

    /// Whether this role grants `access`.
    pub fn allows(self, access: Access) -> bool {
        matches!(
            (self, access),
            (_, Access::Public)
                | (Role::Writer, Access::Write)
                | (Role::Reader | Role::Admin, Access::Read)
                | (Role::Admin, Access::Admin)
        )
    }
}

/// What a route needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Anyone.
    Public,
    /// Public if `public_proofs`, else `Read`.
    ProofMaterial,
    Write,
    Read,
    Admin,
}

/// The access a (method, path) needs. Unknown routes need `Read` (and then 404).
pub fn required(method: &str, path: &str) -> Access {
    match (method, path) {
        (_, "/healthz" | "/readyz" | "/openapi.json") => Access::Public,
        (_, "/v1/checkpoint" | "/v1/verifier-key" | "/v1/proof/consistency") => {
            Access::ProofMaterial
        }
        (_, p) if p.starts_with("/v1/proof/inclusion/") => Access::ProofMaterial,
        ("POST", "/v1/events") => Access::Write,
        (_, p) if p == "/v1/tokens" || p.starts_with("/v1/tokens/") => Access::Admin,
        _ => Access::Read,
    }
}

/// Who made a request, as recorded on events and in audit records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// `token:<name>`, or `anonymous` for public access and `--danger-no-auth`.
    pub name: String,
    /// `None` for anonymous public access.
    pub role: Option<Role>,
}

impl Principal {
    pub fn anonymous() -> Principal {
        Principal {
            name: "anonymous".into(),
            role: None,
        }
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
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct TokenFile {
    tokens: Vec<TokenRecord>,
}

/// Why a token operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TokenError {
    #[error("a token named {0:?} already exists")]
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

/// The token file of a data directory.
#[derive(Debug)]
pub struct Tokens {
    path: PathBuf,
    file: TokenFile,
    /// Parsed hashes of active tokens, with their index in `file.tokens`.
    active: Vec<(Hash, usize)>,
}

fn file_err(path: &Path, problem: impl std::fmt::Display) -> TokenError {
    TokenError::File {
        path: path.display().to_string(),
        problem: problem.to_string(),
    }
}

fn valid_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
}

impl Tokens {
    /// Loads `path`, or starts empty if it does not exist.
    pub fn load(path: &Path) -> Result<Tokens, TokenError> {
        let file = match std::fs::read(path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| file_err(path, e))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => TokenFile::default(),
            Err(e) => return Err(file_err(path, e)),
        };
        let mut t = Tokens {
            path: path.to_owned(),
            file,
            active: Vec::new(),
        };
        t.reindex()?;
        Ok(t)
    }

    fn reindex(&mut self) -> Result<(), TokenError> {
        self.active.clear();
        for (i, rec) in self
            .file
            .tokens
            .iter()
            .enumerate()
            .filter(|(_, r)| r.revoked.is_none())
        {
            let bytes = (0..rec.sha256.len() / 2)
                .map(|j| {
                    rec.sha256
                        .get(2 * j..2 * j + 2)
                        .and_then(|h| u8::from_str_radix(h, 16).ok())
                })
                .collect::<Option<Vec<u8>>>();
            let hash = bytes.as_deref().and_then(Hash::from_slice).ok_or_else(|| {
                file_err(
                    &self.path,
                    format!("token {:?} has a malformed hash", rec.name),
                )
            })?;
            self.active.push((hash, i));
        }
        Ok(())
    }

    fn save(&self) -> Result<(), TokenError> {
        use std::io::Write;
        let tmp = self.path.with_extension("json.tmp");
        let text = serde_json::to_vec_pretty(&self.file).map_err(|e| file_err(&self.path, e))?;
        let mut f = std::fs::File::create(&tmp).map_err(|e| file_err(&tmp, e))?;
        f.write_all(&text)
            .and_then(|()| f.sync_all())
            .map_err(|e| file_err(&tmp, e))?;
        std::fs::rename(&tmp, &self.path).map_err(|e| file_err(&self.path, e))?;
        if let Some(dir) = self.path.parent() {
            std::fs::File::open(dir)
                .and_then(|d| d.sync_all())
                .map_err(|e| file_err(dir, e))?;
        }
        Ok(())
    }

    /// The principal a presented token stands for, if it is active. Compares against every
    /// active hash in constant time.
    pub fn authenticate(&self, presented: &str) -> Option<Principal> {
        let h = Hash(sha256(presented.as_bytes()));
        let mut found = None;
        for (stored, i) in &self.active {
            if stored.ct_eq(&h) {
                found = Some(*i);
            }
        }
        let rec = &self.file.tokens[found?];
        Some(Principal {
            name: format!("token:{}", rec.name),
            role: Some(rec.role),
        })
    }

    /// Creates a token; returns the token text (shown once).
    pub fn create(&mut self, name: &str, role: Role, now: &str) -> Result<String, TokenError> {
        if !valid_name(name) {
            return Err(TokenError::BadName(name.to_owned()));
        }
        if self
            .file
            .tokens
            .iter()
            .any(|t| t.name == name && t.revoked.is_none())
        {
            return Err(TokenError::Exists(name.to_owned()));
        }
        let mut secret = [0u8; 32];
        getrandom::getrandom(&mut secret).map_err(|e| TokenError::Random(e.to_string()))?;
        let token = format!("mla_{}", hex(&secret));
        self.file.tokens.push(TokenRecord {
            name: name.to_owned(),
            role,
            sha256: hex(&sha256(token.as_bytes())),
            created: now.to_owned(),
            revoked: None,
        });
        self.reindex()?;
        self.save()?;
        Ok(token)
    }

    /// Revokes the active token `name`; returns its role.
    pub fn revoke(&mut self, name: &str, now: &str) -> Result<Role, TokenError> {
        let rec = self
            .file
            .tokens
            .iter_mut()
            .find(|t| t.name == name && t.revoked.is_none())
            .ok_or_else(|| TokenError::Unknown(name.to_owned()))?;
        rec.revoked = Some(now.to_owned());
        let role = rec.role;
        self.reindex()?;
        self.save()?;
        Ok(role)
    }

    /// Changes the role of the active token `name`; returns the old role.
    pub fn set_role(&mut self, name: &str, role: Role) -> Result<Role, TokenError> {
        let rec = self
            .file
            .tokens
            .iter_mut()
            .find(|t| t.name == name && t.revoked.is_none())
            .ok_or_else(|| TokenError::Unknown(name.to_owned()))?;
        let old = std::mem::replace(&mut rec.role, role);
        self.save()?;
        Ok(old)
    }

    /// Every token record, revoked ones included.
    pub fn list(&self) -> &[TokenRecord] {
        &self.file.tokens
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn role_matrix() {
        use Access::*;
        for (role, allowed) in [
            (Role::Writer, vec![Public, Write]),
            (Role::Reader, vec![Public, Read]),
            (Role::Admin, vec![Public, Read, Admin]),
        ] {
            for access in [Public, Write, Read, Admin] {
                assert_eq!(
                    role.allows(access),
                    allowed.contains(&access),
                    "{role:?} {access:?}"
                );
            }
        }
    }

    #[test]
    fn create_authenticate_revoke() {
        let dir = std::env::temp_dir().join(format!("mlaudit-tokens-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("tokens.json");
        let _ = std::fs::remove_file(&path);
        let mut t = Tokens::load(&path).unwrap();
        let token = t
            .create("ingest", Role::Writer, "2026-11-27T00:00:00Z")
            .unwrap();
        assert!(token.starts_with("mla_") && token.len() == 68);
        assert!(
            !std::fs::read_to_string(&path).unwrap().contains(&token),
            "the token itself is never stored"
        );
        let p = Tokens::load(&path).unwrap().authenticate(&token).unwrap();
        assert_eq!(
            p,
            Principal {
                name: "token:ingest".into(),
                role: Some(Role::Writer)
            }
        );
        assert!(t.authenticate("mla_wrong").is_none());
        assert!(matches!(
            t.create("ingest", Role::Reader, "x"),
            Err(TokenError::Exists(_))
        ));
        assert!(matches!(
            t.create("bad name", Role::Reader, "x"),
            Err(TokenError::BadName(_))
        ));
        assert_eq!(t.set_role("ingest", Role::Reader).unwrap(), Role::Writer);
        assert_eq!(
            Tokens::load(&path)
                .unwrap()
                .authenticate(&token)
                .unwrap()
                .role,
            Some(Role::Reader)
        );
        t.revoke("ingest", "2026-11-27T01:00:00Z").unwrap();
        assert!(Tokens::load(&path).unwrap().authenticate(&token).is_none());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
