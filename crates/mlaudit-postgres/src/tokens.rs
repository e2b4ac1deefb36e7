//! The API token table every server of one log shares, kept in `token_docs` as versions: the
//! newest row is the table, a change inserts the next version under an advisory lock, and each
//! server notices a newer version within the polling interval of `read::follow_size`
//! (0.1 s) and reads it before it authenticates the next request.
//!
//! The table's bytes are opaque here (the server's token file format); only SHA-256 hashes of
//! tokens are ever in it.

use crate::sequencer::to_u64;
use crate::{advisory_key, pool, PgError, PostgresStore};
use std::sync::atomic::Ordering;

/// Holds the token table's change lock (a session advisory lock on a connection of its own)
/// until dropped.
#[derive(Debug)]
pub struct TokensLock {
    _client: tokio_postgres::Client,
}

impl PostgresStore {
    /// The newest token table (`None` if none was written yet) and its version.
    pub fn tokens_read(&self) -> Result<(Option<Vec<u8>>, u64), PgError> {
        let inner = self.inner().clone();
        self.block(async move {
            let conn = inner.pool.get().await?;
            let row = conn
                .query_opt(
                    "SELECT version, doc FROM token_docs ORDER BY version DESC LIMIT 1",
                    &[],
                )
                .await?;
            match row {
                Some(r) => {
                    let version = to_u64(r.get(0))?;
                    inner.tokens_version.fetch_max(version, Ordering::AcqRel);
                    Ok((Some(r.get(1)), version))
                }
                None => Ok((None, 0)),
            }
        })
    }

    /// Stores a new token table; returns its version. Call it holding [`Self::tokens_lock`].
    pub fn tokens_write(&self, doc: &[u8]) -> Result<u64, PgError> {
        let inner = self.inner().clone();
        self.block(async move {
            let conn = inner.pool.get().await?;
            let row = conn
                .query_one(
                    "INSERT INTO token_docs (doc) VALUES ($1) RETURNING version",
                    &[&doc],
                )
                .await?;
            let version = to_u64(row.get(0))?;
            inner.tokens_version.fetch_max(version, Ordering::AcqRel);
            Ok(version)
        })
    }

    /// Takes the lock that serializes token changes across every server of the log.
    pub fn tokens_lock(&self) -> Result<TokensLock, PgError> {
        let inner = self.inner().clone();
        self.block(async move {
            let client = pool::connect(inner.pool.url()).await?;
            client
                .execute(
                    "SELECT pg_advisory_lock($1)",
                    &[&advisory_key("tokens", &inner.pool.url().schema)],
                )
                .await?;
            Ok(TokensLock { _client: client })
        })
    }

    /// The newest token table version this process has seen (never blocks).
    pub fn tokens_version(&self) -> u64 {
        self.inner().tokens_version.load(Ordering::Acquire)
    }
}
