//! A small connection pool: a bounded number of connections, reused while healthy, each with
//! the log's schema as its search path and a statement timeout.

use crate::url::StoreUrl;
use crate::PgError;
use std::sync::Mutex;
use std::time::Duration;
use tokio::sync::{Semaphore, SemaphorePermit};
use tokio_postgres::{Client, NoTls};

/// How long a caller waits for a free connection.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(30);
/// How long one statement may run.
pub const STATEMENT_TIMEOUT_MS: u32 = 60_000;

/// Connections to one store.
#[derive(Debug)]
pub struct Pool {
    url: StoreUrl,
    idle: Mutex<Vec<Client>>,
    permits: Semaphore,
}

/// A pooled connection, returned to the pool when dropped (unless it is closed).
#[derive(Debug)]
pub struct Conn<'a> {
    client: Option<Client>,
    pool: &'a Pool,
    _permit: SemaphorePermit<'a>,
}

#[allow(
    clippy::expect_used,
    reason = "`client` is taken only in Drop, after which nothing dereferences it"
)]
impl std::ops::Deref for Conn<'_> {
    type Target = Client;
    fn deref(&self) -> &Client {
        self.client.as_ref().expect("present until drop")
    }
}

#[allow(
    clippy::expect_used,
    reason = "`client` is taken only in Drop, after which nothing dereferences it"
)]
impl std::ops::DerefMut for Conn<'_> {
    fn deref_mut(&mut self) -> &mut Client {
        self.client.as_mut().expect("present until drop")
    }
}

impl Drop for Conn<'_> {
    fn drop(&mut self) {
        if let Some(c) = self.client.take() {
            if !c.is_closed() {
                if let Ok(mut idle) = self.pool.idle.lock() {
                    idle.push(c);
                }
            }
        }
    }
}

impl Pool {
    pub fn new(url: StoreUrl, size: usize) -> Pool {
        Pool {
            url,
            idle: Mutex::new(Vec::new()),
            permits: Semaphore::new(size.max(1)),
        }
    }

    pub fn url(&self) -> &StoreUrl {
        &self.url
    }

    /// A connection: an idle healthy one, or a new one.
    pub async fn get(&self) -> Result<Conn<'_>, PgError> {
        let permit = tokio::time::timeout(ACQUIRE_TIMEOUT, self.permits.acquire())
            .await
            .map_err(|_| {
                PgError::Unavailable(format!(
                    "no free connection to {} within {} s",
                    self.url.display,
                    ACQUIRE_TIMEOUT.as_secs()
                ))
            })?
            .map_err(|_| PgError::Unavailable("the pool is closed".into()))?;
        let reused = {
            let mut idle = self.idle.lock().map_err(|_| PgError::Poisoned)?;
            let mut found = None;
            while let Some(c) = idle.pop() {
                if !c.is_closed() {
                    found = Some(c);
                    break;
                }
            }
            found
        };
        let client = match reused {
            Some(c) => c,
            None => connect(&self.url).await?,
        };
        Ok(Conn {
            client: Some(client),
            pool: self,
            _permit: permit,
        })
    }
}

/// A new connection with the log's session settings, its driver task spawned on the current
/// runtime.
pub async fn connect(url: &StoreUrl) -> Result<Client, PgError> {
    let (client, connection) = url
        .config
        .connect(NoTls)
        .await
        .map_err(|e| PgError::Connect(url.display.clone(), e))?;
    tokio::spawn(async move {
        // The error surfaces to the client's next call as a closed connection.
        let _ = connection.await;
    });
    // The server notices a vanished client (and frees its locks, the sequencer's among them)
    // within about 25 s. A commit is never acknowledged before it is durable on this server:
    // `off` and `local` are raised to `on`, stronger settings (`remote_apply`) are kept.
    client
        .batch_execute(&format!(
            "SET search_path TO \"{}\"; SET statement_timeout = {STATEMENT_TIMEOUT_MS};
             SET idle_in_transaction_session_timeout = {STATEMENT_TIMEOUT_MS};
             SET tcp_keepalives_idle = 10; SET tcp_keepalives_interval = 5; SET tcp_keepalives_count = 3;
             SELECT set_config('synchronous_commit', 'on', false)
                 WHERE current_setting('synchronous_commit') IN ('off', 'local')",
            url.schema
        ))
        .await?;
    Ok(client)
}
