//! Roles, the access each route needs, and who made a request.
//!
//! * Roles: `writer` appends events and reads proof material; `reader` queries, reads
//!   payloads, full proof bundles and lineage; `admin` manages tokens and may also read.
//! * Health, readiness and the OpenAPI document are public. Checkpoints, the verifier key,
//!   consistency proofs and inclusion proofs by leaf hash (hashes only) are public when
//!   `public_proofs` is set, and open to every role otherwise.
//! * Tokens themselves, and their file, are [`token_file`](crate::auth::Tokens).

pub use crate::token_file::{
    access_changed_event, Change, ChangeError, FileDoc, Staged, TokenDoc, TokenError, TokenRecord,
    Tokens,
};

/// What a token may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
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
            (_, Access::Public | Access::ProofMaterial)
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
    /// Hashes only (checkpoints, the verifier key, consistency proofs, inclusion proofs by leaf
    /// hash): anyone if `public_proofs`, else every role.
    ProofMaterial,
    Write,
    Read,
    Admin,
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

    /// What the rate limit counts this principal's requests under: its token, or for anonymous
    /// callers their address (all anonymous callers share one key if it is unknown).
    pub fn rate_key(&self, client: Option<std::net::SocketAddr>) -> String {
        match (self.role, client) {
            (None, Some(addr)) => format!("anonymous:{}", addr.ip()),
            _ => self.name.clone(),
        }
    }
}

/// Why a request could not be authenticated (counted by reason in `/metrics`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthFailure {
    /// No bearer token where one is needed.
    Missing,
    /// A token that is not one of ours, or was revoked.
    Invalid,
    /// One of ours, past its expiry.
    Expired,
}

impl AuthFailure {
    pub const ALL: [AuthFailure; 3] = [
        AuthFailure::Missing,
        AuthFailure::Invalid,
        AuthFailure::Expired,
    ];

    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            AuthFailure::Missing => "missing",
            AuthFailure::Invalid => "invalid",
            AuthFailure::Expired => "expired",
        }
    }

    /// What the client is told.
    pub fn message(self) -> &'static str {
        match self {
            AuthFailure::Missing => {
                "this endpoint needs a bearer token (Authorization: Bearer mla_...)"
            }
            AuthFailure::Invalid => "the bearer token is not valid",
            AuthFailure::Expired => "the bearer token has expired",
        }
    }
}

/// Now, in unix nanoseconds.
pub fn now_ns() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn role_matrix() {
        use Access::*;
        for (role, allowed) in [
            (Role::Writer, vec![Public, ProofMaterial, Write]),
            (Role::Reader, vec![Public, ProofMaterial, Read]),
            (Role::Admin, vec![Public, ProofMaterial, Read, Admin]),
        ] {
            for access in [Public, ProofMaterial, Write, Read, Admin] {
                assert_eq!(
                    role.allows(access),
                    allowed.contains(&access),
                    "{role:?} {access:?}"
                );
            }
        }
    }
}
