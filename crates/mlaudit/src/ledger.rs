//! The data directory: where the key and the log live, how they are created and opened.
//!
//! ```text
//! <data>/key/signing.key    PRIVATE+KEY+<origin>+<id>+<base64>   (mode 0600)
//! <data>/key/verifier.key   <origin>+<id>+<base64>
//! <data>/log/               the embedded store
//! ```
//!
//! With `--store postgres://…` (or `MLAUDIT_STORE`) the log lives in PostgreSQL instead; the
//! data directory still holds the key (or `serve --key FILE` names it).

use anyhow::{Context, Result};
use mlaudit_archive::cold::{ColdPayloads, WithCold};
use mlaudit_core::entry::EventId;
use mlaudit_core::event::PreparedEvent;
use mlaudit_core::merkle::Hash;
use mlaudit_core::note::NoteSigner;
use mlaudit_embedded::{EmbeddedStore, OpenError, Options};
use mlaudit_postgres::PostgresStore;
use mlaudit_store::audit::{audit_event, Access};
use mlaudit_store::prelude::*;
use mlaudit_store::{
    AppendDone, AppendReceipt, EventRun, InclusionMaterial, IndexCheck, Query, StoreError,
    StoreStats, StoredEvent,
};
use std::io::Write;
use std::ops::ControlFlow;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock, RwLock};

/// The `--store` URL of this invocation (`None`: the embedded store in the data directory).
static STORE_URL: OnceLock<Option<String>> = OnceLock::new();

/// Records `--store` (or `MLAUDIT_STORE`), checked: an empty value or `embedded` means the
/// data directory's own store.
pub fn set_store_url(url: Option<String>) -> Result<()> {
    let url = url.filter(|u| !u.is_empty() && u != "embedded");
    if let Some(u) = &url {
        if !mlaudit_postgres::is_postgres_url(u) {
            return Err(InputError(format!(
                "--store {:?}: give a postgres://user@host/db URL, or leave it out for the embedded store",
                mlaudit_postgres::url::redact(u)
            ))
            .into());
        }
    }
    let _ = STORE_URL.set(url);
    Ok(())
}

/// The PostgreSQL store URL, if this invocation uses one.
pub fn store_url() -> Option<&'static str> {
    STORE_URL.get().and_then(|u| u.as_deref())
}

/// An open log, whichever engine holds it, and the cold archive that keeps the payloads the
/// engine no longer does; a [`Store`] itself, whose reads fetch those payloads from the
/// archive (checked against their entries) so that callers never see the difference but the
/// event's [`mlaudit_store::Tier`].
#[derive(Debug)]
pub struct Ledger {
    engine: Engine,
    data: PathBuf,
    /// The archive the data directory remembers, read when first needed and again while
    /// none is known (a retention run may name it after the log was opened).
    cold: RwLock<Option<Arc<ColdPayloads>>>,
}

/// The engine holding a log.
#[derive(Debug)]
pub enum Engine {
    Embedded(EmbeddedStore),
    Postgres(PostgresStore),
}

impl Ledger {
    fn new(engine: Engine, data: &Path) -> Ledger {
        Ledger {
            engine,
            data: data.to_owned(),
            cold: RwLock::new(None),
        }
    }

    fn engine(&self) -> &dyn Store {
        match &self.engine {
            Engine::Embedded(s) => s,
            Engine::Postgres(s) => s,
        }
    }

    /// The engine itself.
    pub fn engine_kind(&self) -> &Engine {
        &self.engine
    }

    /// The remembered cold archive, if this data directory has one.
    pub fn cold(&self) -> Option<Arc<ColdPayloads>> {
        if let Some(cold) = self.cold.read().ok().and_then(|c| c.clone()) {
            return Some(cold);
        }
        let url = crate::retention::remembered_archive(&self.data)?;
        let mut cold = match self.cold.write() {
            Ok(c) => c,
            Err(poisoned) => poisoned.into_inner(),
        };
        // One named meanwhile (use_archive) wins over the file read before it.
        Some(
            cold.get_or_insert_with(|| Arc::new(ColdPayloads::new(&url)))
                .clone(),
        )
    }

    /// Reads archived payloads from `url` from now on (the data directory's `archive-url`
    /// names it, or is about to).
    pub fn use_archive(&self, url: &str) -> Arc<ColdPayloads> {
        let mut cold = match self.cold.write() {
            Ok(c) => c,
            Err(poisoned) => poisoned.into_inner(),
        };
        match &*cold {
            Some(c) if c.url() == url => c.clone(),
            _ => cold.insert(Arc::new(ColdPayloads::new(url))).clone(),
        }
    }

    /// `ev` with its payload fetched from the cold archive when only the archive keeps it.
    fn fill(&self, ev: StoredEvent) -> Result<StoredEvent, StoreError> {
        if !ev.payload_in_archive() {
            return Ok(ev);
        }
        let cold = self.cold();
        self.with_cold(cold.as_deref()).fill(ev)
    }

    /// The log with the cold archive `cold` filling in the payloads only it keeps.
    fn with_cold<'a>(&'a self, cold: Option<&'a ColdPayloads>) -> WithCold<'a> {
        WithCold {
            local: self.engine(),
            cold,
        }
    }
}

impl Appender for Ledger {
    fn append(&self, events: Vec<PreparedEvent>) -> Result<AppendReceipt, StoreError> {
        self.engine().append(events)
    }
    fn submit(&self, events: Vec<PreparedEvent>, done: AppendDone) {
        self.engine().submit(events, done)
    }
    fn try_submit(
        &self,
        events: Vec<PreparedEvent>,
        done: AppendDone,
    ) -> Result<(), (Vec<PreparedEvent>, AppendDone)> {
        self.engine().try_submit(events, done)
    }
    fn remove_payload_batch(&self, removals: &[(u64, u64)]) -> Result<u64, StoreError> {
        self.engine().remove_payload_batch(removals)
    }
    fn offload_payloads(&self, seqs: &[u64]) -> Result<u64, StoreError> {
        self.engine().offload_payloads(seqs)
    }
    fn restore_payloads(&self, payloads: &[(u64, Vec<u8>)]) -> Result<u64, StoreError> {
        self.engine().restore_payloads(payloads)
    }
}

/// Reads that return payloads go through [`WithCold`]; the rest to the engine.
impl LogReader for Ledger {
    fn tree_size(&self) -> u64 {
        self.engine().tree_size()
    }
    fn event(&self, seq: u64) -> Result<StoredEvent, StoreError> {
        self.fill(self.engine().event(seq)?)
    }
    fn stored_event(&self, seq: u64) -> Result<StoredEvent, StoreError> {
        self.engine().stored_event(seq)
    }
    fn scan_stored(
        &self,
        from: u64,
        visit: &mut dyn FnMut(StoredEvent) -> ControlFlow<()>,
    ) -> Result<(), StoreError> {
        self.engine().scan_stored(from, visit)
    }
    fn seq_of(&self, id: &EventId) -> Result<Option<u64>, StoreError> {
        self.engine().seq_of(id)
    }
    fn seq_of_leaf(&self, leaf: &Hash) -> Result<Option<u64>, StoreError> {
        self.engine().seq_of_leaf(leaf)
    }
    fn node(&self, level: u32, index: u64) -> Result<Hash, StoreError> {
        self.engine().node(level, index)
    }
    fn nodes(&self, level: u32, start: u64, count: u64) -> Result<Vec<Hash>, StoreError> {
        self.engine().nodes(level, start, count)
    }
    fn checkpoint(&self, size: u64) -> Result<Option<String>, StoreError> {
        self.engine().checkpoint(size)
    }
    fn checkpoint_sizes(&self) -> Result<Vec<u64>, StoreError> {
        self.engine().checkpoint_sizes()
    }
    fn checkpoint_sizes_after(
        &self,
        after: Option<u64>,
        max: usize,
    ) -> Result<Vec<u64>, StoreError> {
        self.engine().checkpoint_sizes_after(after, max)
    }
    fn inclusion_material(&self, seq: u64, size: u64) -> Result<InclusionMaterial, StoreError> {
        let (ev, path) = self.engine().inclusion_material(seq, size)?;
        Ok((self.fill(ev)?, path))
    }
    fn latest_checkpoint_size(&self) -> Result<Option<u64>, StoreError> {
        self.engine().latest_checkpoint_size()
    }
    fn scan(
        &self,
        from: u64,
        visit: &mut dyn FnMut(StoredEvent) -> ControlFlow<()>,
    ) -> Result<(), StoreError> {
        let cold = self.cold();
        self.with_cold(cold.as_deref()).scan(from, visit)
    }
    fn scan_runs(
        &self,
        from: u64,
        run_len: usize,
        visit: &mut dyn FnMut(EventRun) -> ControlFlow<()>,
    ) -> Result<(), StoreError> {
        let cold = self.cold();
        self.with_cold(cold.as_deref())
            .scan_runs(from, run_len, visit)
    }
}

impl Querier for Ledger {
    fn query(&self, q: &Query) -> Result<Vec<u64>, StoreError> {
        self.engine().query(q)
    }
}

impl Diagnostics for Ledger {
    fn location(&self, seq: u64) -> String {
        self.engine().location(seq)
    }
    fn stats(&self) -> StoreStats {
        self.engine().stats()
    }
    fn index_check(&self) -> Option<Box<dyn IndexCheck + '_>> {
        self.engine().index_check()
    }
}

impl Ledger {
    /// Flushes and closes the engine (the embedded store's derived files; PostgreSQL commits
    /// every group as it goes).
    pub fn close(&self) -> Result<()> {
        if let Engine::Embedded(s) = &self.engine {
            s.close()?;
        }
        Ok(())
    }
}

/// A usage or input error: exit code 2.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct InputError(pub String);

/// A verification failure: exit code 1.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct VerifyFailed(pub String);

/// Resolves `--data`, then `MLAUDIT_DATA`, then `./mlaudit-data`.
pub fn data_dir(flag: Option<PathBuf>) -> PathBuf {
    flag.or_else(|| {
        std::env::var_os("MLAUDIT_DATA")
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    })
    .unwrap_or_else(|| PathBuf::from("mlaudit-data"))
}

fn signing_key_path(data: &Path) -> PathBuf {
    data.join("key").join("signing.key")
}

/// The verifier key file.
pub fn verifier_key_path(data: &Path) -> PathBuf {
    data.join("key").join("verifier.key")
}

/// Creates the key and an empty log with its first (empty-tree) checkpoint.
pub fn init(data: &Path, origin: &str) -> Result<NoteSigner> {
    if signing_key_path(data).exists() {
        return Err(InputError(format!(
            "{} is already initialized (key at {})",
            data.display(),
            signing_key_path(data).display()
        ))
        .into());
    }
    let mut seed = [0u8; 32];
    getrandom::getrandom(&mut seed)
        .map_err(|e| anyhow::anyhow!("no randomness for the key: {e}"))?;
    let signer = NoteSigner::from_seed(origin, seed)
        .map_err(|e| InputError(format!("--origin {origin:?}: {e}")))?;
    let key_dir = data.join("key");
    make_private_dir(data)?;
    make_private_dir(&key_dir)?;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(signing_key_path(data))
        .with_context(|| format!("creating {}", signing_key_path(data).display()))?;
    writeln!(f, "{}", signer.to_private_text())?;
    f.sync_all()?;
    let mut v = std::fs::File::create(verifier_key_path(data))
        .with_context(|| format!("creating {}", verifier_key_path(data).display()))?;
    writeln!(v, "{}", signer.verifier().to_text())?;
    v.sync_all()?;
    // The key files' names are durable only once their directory is.
    std::fs::File::open(&key_dir)
        .and_then(|d| d.sync_all())
        .with_context(|| format!("syncing {}", key_dir.display()))?;
    match store_url() {
        Some(url) => {
            let (store, created) = PostgresStore::init(url, signer.clone()).with_context(|| {
                format!("creating the log in {}", mlaudit_postgres::url::redact(url))
            })?;
            if !created {
                eprintln!("mlaudit: the schema already held a log; it was checked and migrated, not emptied");
            }
            drop(store);
        }
        None => drop(open_with(data, Some(signer.clone()), options()?)?),
    }
    Ok(signer)
}

/// Creates `dir` (and its parents) if needed and makes it private to this user (0700).
fn make_private_dir(dir: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
        .with_context(|| format!("making {} private (0700)", dir.display()))
}

/// Loads the signing key of an initialized data directory.
pub fn signer(data: &Path) -> Result<NoteSigner> {
    let path = signing_key_path(data);
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(InputError(format!(
                "{} is not initialized: run `mlaudit init --data {}`",
                data.display(),
                data.display()
            ))
            .into())
        }
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    NoteSigner::parse(&text).with_context(|| format!("parsing {}", path.display()))
}

/// Mebibytes of memory for the index runs' fences and Bloom filters unless configured.
pub const DEFAULT_INDEX_CACHE_MIB: u64 = 256;

/// The engine's options: the index cache from `MLAUDIT_INDEX_CACHE_MIB` (mebibytes).
pub fn options() -> Result<Options> {
    let mib = match std::env::var("MLAUDIT_INDEX_CACHE_MIB") {
        Ok(v) if !v.is_empty() => v.parse::<u64>().map_err(|_| {
            InputError(format!(
                "MLAUDIT_INDEX_CACHE_MIB={v:?} is not a number of mebibytes"
            ))
        })?,
        _ => DEFAULT_INDEX_CACHE_MIB,
    };
    Ok(options_with_cache(mib))
}

/// The engine's options with an index cache of `mib` mebibytes.
pub fn options_with_cache(mib: u64) -> Options {
    Options {
        index_cache: mib.saturating_mul(1 << 20),
        ..Options::default()
    }
}

/// Opens the log of an initialized data directory (or the `--store`) for reading and
/// appending.
pub fn open(data: &Path) -> Result<Ledger> {
    open_configured(data, options()?, None)
}

/// [`open`] with explicit engine options and, optionally, a signing key file other than the
/// data directory's.
pub fn open_configured(data: &Path, options: Options, key: Option<&Path>) -> Result<Ledger> {
    let signer = match key {
        Some(file) => signer_file(file)?,
        None => signer(data)?,
    };
    if let Some(url) = store_url() {
        let store = PostgresStore::open(url, Some(signer), mlaudit_postgres::Options::default())
            .map_err(|e| match e {
                mlaudit_postgres::PgError::NotInitialized(_)
                | mlaudit_postgres::PgError::NewerSchema { .. } => {
                    anyhow::Error::from(InputError(e.to_string()))
                }
                other => anyhow::Error::from(other)
                    .context(format!("opening {}", mlaudit_postgres::url::redact(url))),
            })?;
        return Ok(Ledger::new(Engine::Postgres(store), data));
    }
    make_private_dir(data)?;
    let engine = open_with(data, Some(signer), options)?;
    Ok(Ledger::new(Engine::Embedded(engine), data))
}

/// Loads a signing key file given by path.
pub fn signer_file(path: &Path) -> Result<NoteSigner> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading the signing key {}", path.display()))?;
    NoteSigner::parse(&text).with_context(|| format!("parsing {}", path.display()))
}

fn open_with(data: &Path, signer: Option<NoteSigner>, options: Options) -> Result<EmbeddedStore> {
    let (store, report) = match EmbeddedStore::open_with(&data.join("log"), signer, options) {
        Ok(ok) => ok,
        Err(e @ OpenError::Corrupt { .. }) => return Err(VerifyFailed(format!("the log is damaged and was not opened: {e}")).into()),
        Err(OpenError::Rollback(why)) => return Err(VerifyFailed(format!("the log was not opened: {why}")).into()),
        Err(OpenError::Locked(dir)) => {
            return Err(InputError(format!("{} is in use by another mlaudit process (a running `mlaudit serve`?): stop it, or go through its HTTP API", dir.display())).into())
        }
        Err(e) => return Err(e.into()),
    };
    if let Some((file, offset, bytes)) = &report.truncated {
        eprintln!("mlaudit: recovered from a crash: removed a torn, never-acknowledged tail of {bytes} bytes from {file} at offset {offset}");
    }
    if let Some(why) = &report.rebuilt {
        eprintln!("mlaudit: rebuilt the indexes from the log ({why})");
    }
    for warning in &report.warnings {
        eprintln!("mlaudit: WARNING: {warning}");
    }
    if let (Some(size), true) = (
        report.signed_at_open,
        report.events > 0 && report.truncated.is_some(),
    ) {
        eprintln!("mlaudit: signed a checkpoint for the {size} events recovered");
    }
    Ok(store)
}

/// Records a read of the trail from the command line (`mlaudit get`, `query`, `lineage`,
/// `prove`) as a `governance.audit_accessed` event by `local:<os user>`, durably, before the
/// answer is shown: every read leaves a trace, whichever way it is made.
pub fn audit_read(store: &dyn Store, command: &str, args: &str, results: usize) -> Result<()> {
    let principal = crate::append::local_principal();
    let access = Access {
        principal: &principal,
        person: true,
        method: command,
        path: args,
        query: None,
        client: Some("local"),
        results,
        status: None,
    };
    let event = audit_event(&access).context("recording this read")?;
    store
        .append(vec![event])
        .context("recording this read in the log (every read is recorded before it is shown)")?;
    Ok(())
}
