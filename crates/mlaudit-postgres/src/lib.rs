//! mlaudit's PostgreSQL storage engine: the log kept in PostgreSQL, written by one elected
//! sequencer among any number of servers.
//!
//! * [`url`] — the `postgres://` store URL and its mlaudit parameters.
//! * [`schema`] — the tables, versioned migrations and append-only grants and triggers.
//! * [`sequencer`] — the election (a session advisory lock) and the sequencer's group commit:
//!   seqs, tree nodes and the signed checkpoint, written with binary `COPY` in one transaction.
//! * [`queue`] — how a server that is not the sequencer appends: it queues the batch in
//!   `pending` and answers once the sequencer has sequenced it.
//! * [`read`] — reads, queries and proofs' material, by SQL.
//! * [`tokens`] — the servers' shared API token table.
//!
//! **Invariants:**
//! * Entries, payloads, subjects, nodes and the checkpoint of a group are committed in one
//!   transaction: the log in the database is always the prefix signed by its latest checkpoint.
//! * A checkpoint is inserted only as the successor of the previous one (`prev_size` is
//!   unique): two processes that both believed they were the sequencer cannot fork the log;
//!   the second's transaction fails and nothing of it is kept.
//! * An acknowledgement means "committed in PostgreSQL and covered by a signed checkpoint",
//!   whichever server took the batch.
//!
//! The [`mlaudit_store`] traits are synchronous; this engine runs the driver on its own small
//! runtime and blocks the calling thread. Callers inside an async runtime call it from a
//! blocking thread (`spawn_blocking`), as the server does; `submit`, `try_submit`,
//! `tree_size` and `stats` never block.

pub mod pool;
pub mod queue;
pub mod read;
pub mod schema;
pub mod sequencer;
pub mod tokens;
pub mod url;

use mlaudit_core::event::PreparedEvent;
use mlaudit_core::note::NoteSigner;
use mlaudit_store::{AppendDone, AppendReceipt, Appender, StoreError};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::mpsc;

pub use url::{is_postgres_url, StoreUrl};

/// A failure of the PostgreSQL engine.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PgError {
    #[error("store URL: {0}")]
    Url(String),
    #[error("cannot connect to {0}: {1}")]
    Connect(String, #[source] tokio_postgres::Error),
    #[error("PostgreSQL: {}", db_message(.0))]
    Db(#[from] tokio_postgres::Error),
    #[error("schema {0:?} holds no mlaudit log: run `mlaudit init --store URL` first")]
    NotInitialized(String),
    #[error("the database's schema is version {found}, newer than this mlaudit ({known}): upgrade mlaudit")]
    NewerSchema { found: i32, known: i32 },
    #[error("migration to schema version {version} failed (the connecting role must own the tables to migrate them): {}", db_message(.source))]
    Migration {
        version: i32,
        source: tokio_postgres::Error,
    },
    #[error("{0}")]
    Unavailable(String),
    /// The connection failed while a group was committing and its outcome could not be read
    /// back: the events may or may not be stored.
    #[error("the outcome is unknown: the connection to PostgreSQL failed while committing ({0}); the events may be stored — a retry with the same event ids is deduplicated")]
    Unknown(String),
    #[error("the database's encoding is {0}; mlaudit needs a UTF8 database (CREATE DATABASE … ENCODING 'UTF8')")]
    Encoding(String),
    #[error("the log in this schema is signed by another key: {0}")]
    WrongKey(String),
    #[error("the log in PostgreSQL is damaged: {0}")]
    Corrupt(String),
    #[error("a lock was poisoned by a panic")]
    Poisoned,
    #[error("starting the PostgreSQL driver: {0}")]
    Runtime(std::io::Error),
}

impl PgError {
    fn migration(version: i32, source: tokio_postgres::Error) -> PgError {
        PgError::Migration { version, source }
    }
}

/// The server's message and detail, when the error came from the server.
pub(crate) fn db_message(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => match db.detail() {
            Some(d) => format!("{} ({d})", db.message()),
            None => db.message().to_owned(),
        },
        None => e.to_string(),
    }
}

impl From<PgError> for StoreError {
    fn from(e: PgError) -> StoreError {
        match e {
            PgError::Corrupt(problem) => StoreError::Corrupt {
                location: "postgres".into(),
                problem,
            },
            other => StoreError::Unavailable(other.to_string()),
        }
    }
}

/// Engine settings.
#[derive(Clone, Debug)]
pub struct Options {
    /// Connections for reads and queued appends.
    pub pool_size: usize,
    /// How often a process that is not the sequencer tries to become it.
    pub election_interval: Duration,
    /// How long an append waits for the sequencer before it gives up (the batch stays queued
    /// and is sequenced later; a retry with the same ids is deduplicated).
    pub sequencing_timeout: Duration,
    /// Whether this process may become the sequencer (a signing key is needed too).
    pub may_sequence: bool,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            pool_size: 8,
            election_interval: Duration::from_millis(500),
            sequencing_timeout: Duration::from_secs(60),
            may_sequence: true,
        }
    }
}

/// An append waiting for its outcome.
pub(crate) struct Request {
    pub events: Vec<PreparedEvent>,
    pub done: AppendDone,
}

/// What the engine's tasks share.
pub(crate) struct Inner {
    pub pool: pool::Pool,
    pub signer: Option<NoteSigner>,
    pub options: Options,
    /// The size of the latest checkpoint this process knows.
    pub size: AtomicU64,
    pub sequencer: AtomicBool,
    pub takeovers: AtomicU64,
    pub syncs: AtomicU64,
    pub synced_events: AtomicU64,
    /// The newest version of the token table seen.
    pub tokens_version: AtomicU64,
    /// Queued batches waiting for their outcome, by batch id.
    pub waiters: Mutex<HashMap<[u8; 16], queue::Waiter>>,
    /// The advisory lock that elects the sequencer of this schema.
    pub lock_key: i64,
    /// Who this process is, in the `takeovers` table.
    pub holder: String,
}

/// The PostgreSQL engine.
pub struct PostgresStore {
    rt: Option<tokio::runtime::Runtime>,
    inner: Arc<Inner>,
    requests: mpsc::UnboundedSender<Request>,
}

impl std::fmt::Debug for PostgresStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresStore")
            .field("url", &self.inner.pool.url().display)
            .field("size", &self.inner.size.load(Ordering::Relaxed))
            .finish()
    }
}

/// Refuses a database whose text is not UTF-8 (event text could not be stored as given).
async fn check_encoding(client: &tokio_postgres::Client) -> Result<(), PgError> {
    let row = client.query_one("SHOW server_encoding", &[]).await?;
    let encoding: String = row.get(0);
    if encoding.eq_ignore_ascii_case("UTF8") {
        Ok(())
    } else {
        Err(PgError::Encoding(encoding))
    }
}

/// Refuses a signing key that does not verify the log's latest checkpoint.
async fn check_key(client: &tokio_postgres::Client, signer: &NoteSigner) -> Result<(), PgError> {
    let (_, note) = read::required_checkpoint(client).await?;
    mlaudit_core::note::open_checkpoint(&signer.verifier(), &note)
        .map(|_| ())
        .map_err(|e| PgError::WrongKey(e.to_string()))
}

/// The advisory lock key for `purpose` (`sequencer`, `tokens`) in a schema: stable across
/// processes and builds.
pub(crate) fn advisory_key(purpose: &str, schema: &str) -> i64 {
    let digest = mlaudit_core::merkle::sha256(format!("mlaudit-{purpose}:{schema}").as_bytes());
    let mut b = [0u8; 8];
    b.copy_from_slice(&digest[..8]);
    i64::from_be_bytes(b)
}

fn runtime() -> Result<tokio::runtime::Runtime, PgError> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("mlaudit-pg")
        .enable_all()
        .build()
        .map_err(PgError::Runtime)
}

impl PostgresStore {
    /// Creates the schema (or finishes a partial one) and signs the empty tree's checkpoint.
    /// Returns the store, open, and whether the schema was new.
    pub fn init(url: &str, signer: NoteSigner) -> Result<(PostgresStore, bool), PgError> {
        let parsed = StoreUrl::parse(url)?;
        let rt = runtime()?;
        let created = rt.block_on(async {
            let mut client = pool::connect(&parsed).await?;
            let found = schema::migrate(
                &mut client,
                &parsed.schema,
                &parsed.app_role,
                parsed.owner_role.as_deref(),
                true,
            )
            .await?;
            check_encoding(&client).await?;
            sequencer::sign_empty_tree(&client, &signer).await?;
            check_key(&client, &signer).await?;
            Ok::<bool, PgError>(found == 0)
        })?;
        let store = PostgresStore::start(rt, parsed, Some(signer), Options::default())?;
        Ok((store, created))
    }

    /// Opens an initialized store, applying any migration it lacks. With a signing key this
    /// process may become the sequencer; without one it only reads (appends are refused).
    pub fn open(
        url: &str,
        signer: Option<NoteSigner>,
        options: Options,
    ) -> Result<PostgresStore, PgError> {
        let parsed = StoreUrl::parse(url)?;
        let rt = runtime()?;
        rt.block_on(async {
            let mut client = pool::connect(&parsed).await?;
            check_encoding(&client).await?;
            schema::migrate(
                &mut client,
                &parsed.schema,
                &parsed.app_role,
                parsed.owner_role.as_deref(),
                false,
            )
            .await?;
            match &signer {
                Some(s) => check_key(&client, s).await,
                None => Ok(()),
            }
        })?;
        PostgresStore::start(rt, parsed, signer, options)
    }

    fn start(
        rt: tokio::runtime::Runtime,
        url: StoreUrl,
        signer: Option<NoteSigner>,
        options: Options,
    ) -> Result<PostgresStore, PgError> {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_owned())
            .unwrap_or_else(|_| "host".into());
        let inner = Arc::new(Inner {
            lock_key: advisory_key("sequencer", &url.schema),
            pool: pool::Pool::new(url, options.pool_size),
            signer,
            options,
            size: AtomicU64::new(0),
            sequencer: AtomicBool::new(false),
            takeovers: AtomicU64::new(0),
            syncs: AtomicU64::new(0),
            synced_events: AtomicU64::new(0),
            tokens_version: AtomicU64::new(0),
            waiters: Mutex::new(HashMap::new()),
            holder: format!("{host}:{}", std::process::id()),
        });
        let size = rt.block_on(read::latest_size(&inner))?.unwrap_or(0);
        inner.size.store(size, Ordering::Release);
        let (tx, rx) = mpsc::unbounded_channel();
        // The first election happens before `open` returns, so that a lone process (a CLI
        // command with no server running) is the sequencer at once.
        let mut candidate = None;
        let first = rt.block_on(sequencer::try_become(&inner, &mut candidate));
        rt.spawn(sequencer::run(inner.clone(), rx, first, candidate));
        rt.spawn(queue::watch(inner.clone()));
        rt.spawn(read::follow_size(inner.clone()));
        Ok(PostgresStore {
            rt: Some(rt),
            inner,
            requests: tx,
        })
    }

    /// Whether this process is the sequencer now.
    pub fn is_sequencer(&self) -> bool {
        self.inner.sequencer.load(Ordering::Acquire)
    }

    /// How many times this process became the sequencer.
    pub fn takeovers(&self) -> u64 {
        self.inner.takeovers.load(Ordering::Relaxed)
    }

    /// Runs `fut` on the engine's runtime, blocking this thread.
    pub(crate) fn block<T>(&self, fut: impl std::future::Future<Output = T>) -> T {
        match &self.rt {
            Some(rt) => rt.block_on(fut),
            None => unreachable_runtime(),
        }
    }

    pub(crate) fn inner(&self) -> &Arc<Inner> {
        &self.inner
    }
}

#[allow(clippy::panic, reason = "the runtime is taken only in Drop")]
fn unreachable_runtime() -> ! {
    panic!("the PostgreSQL engine's runtime is gone")
}

impl Drop for PostgresStore {
    fn drop(&mut self) {
        if let Some(rt) = self.rt.take() {
            // Dropping a runtime blocks; this may run inside another runtime's task.
            rt.shutdown_background();
        }
    }
}

impl Appender for PostgresStore {
    fn remove_payload_batch(&self, removals: &[(u64, u64)]) -> Result<u64, StoreError> {
        self.remove_payloads_now(removals)
    }

    fn offload_payloads(&self, seqs: &[u64]) -> Result<u64, StoreError> {
        self.offload_now(seqs)
    }

    fn restore_payloads(&self, payloads: &[(u64, Vec<u8>)]) -> Result<u64, StoreError> {
        self.restore_now(payloads)
    }

    fn append(&self, events: Vec<PreparedEvent>) -> Result<AppendReceipt, StoreError> {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        self.submit(
            events,
            Box::new(move |r| {
                let _ = tx.send(r);
            }),
        );
        rx.recv().unwrap_or_else(|_| {
            Err(StoreError::WriterStopped(
                "the PostgreSQL engine stopped".into(),
            ))
        })
    }

    fn submit(&self, events: Vec<PreparedEvent>, done: AppendDone) {
        if self.inner.signer.is_none() {
            return done(Err(StoreError::ReadOnly));
        }
        if let Err(mpsc::error::SendError(r)) = self.requests.send(Request { events, done }) {
            (r.done)(Err(StoreError::WriterStopped(
                "the PostgreSQL engine stopped".into(),
            )));
        }
    }

    fn try_submit(
        &self,
        events: Vec<PreparedEvent>,
        done: AppendDone,
    ) -> Result<(), (Vec<PreparedEvent>, AppendDone)> {
        self.submit(events, done);
        Ok(())
    }
}
