//! What the consumer tests share: an embedded store in a temporary directory, and a store
//! whose appends fail on demand.

#![allow(
    dead_code,
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "each test target uses part of this; a test fails loudly on any unexpected error"
)]

use mlaudit_core::event::PreparedEvent;
use mlaudit_core::merkle::Hash;
use mlaudit_core::note::NoteSigner;
use mlaudit_core::EventId;
use mlaudit_embedded::EmbeddedStore;
use mlaudit_store::{
    AppendReceipt, Appender, Diagnostics, LogReader, Querier, Query, StoreError, StoredEvent,
};
use std::collections::{BTreeSet, VecDeque};
use std::ops::ControlFlow;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// A directory removed when dropped.
pub struct Dir(pub PathBuf);

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// An embedded store in a new temporary directory.
pub fn temp_store(name: &str) -> (Dir, Arc<EmbeddedStore>) {
    let dir = std::env::temp_dir().join(format!(
        "mlaudit-queue-{name}-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    let signer = NoteSigner::from_seed("test.mlaudit/queue", [7; 32]).unwrap();
    let (store, _) = EmbeddedStore::open(&dir, Some(signer)).unwrap();
    (Dir(dir), Arc::new(store))
}

/// The id of test event `i`.
pub fn id(i: usize) -> String {
    format!("00000000-0000-4000-8000-{i:012x}")
}

/// Test event `i` as JSON.
pub fn event(i: usize) -> String {
    format!(
        r#"{{"id":"{}","kind":"x.queued","actor":{{"id":"scorer","type":"service"}},"attributes":{{"n":{i}}}}}"#,
        id(i)
    )
}

/// Every event id in the log, in seq order.
pub fn ids(store: &dyn LogReader) -> Vec<String> {
    let mut out = Vec::new();
    store
        .scan(0, &mut |ev| {
            out.push(
                mlaudit_core::entry::decode(&ev.entry)
                    .unwrap()
                    .id
                    .to_string(),
            );
            ControlFlow::Continue(())
        })
        .unwrap();
    out
}

/// Asserts that the log holds exactly the test events `0..n`, each once.
pub fn assert_each_once(store: &dyn LogReader, n: usize) {
    let got = ids(store);
    let unique: BTreeSet<&String> = got.iter().collect();
    assert_eq!(unique.len(), got.len(), "an event was stored twice");
    let expected: Vec<String> = (0..n).map(id).collect();
    assert_eq!(unique, expected.iter().collect::<BTreeSet<_>>());
}

/// What the next append of a [`FailingStore`] does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Next {
    /// Fails before writing anything (a full disk, a lost database connection).
    FailBefore,
    /// Writes the batch durably, then reports a failure: the confirmation was lost, so the
    /// consumer must take the events as not stored and the log sees them again.
    FailAfter,
}

/// An embedded store whose next appends follow a script of failures, then succeed.
pub struct FailingStore {
    inner: Arc<EmbeddedStore>,
    script: Mutex<VecDeque<Next>>,
    scripted: u64,
    failed: AtomicU64,
}

impl FailingStore {
    pub fn new(inner: Arc<EmbeddedStore>, script: &[Next]) -> FailingStore {
        FailingStore {
            inner,
            script: Mutex::new(script.iter().copied().collect()),
            scripted: script.len() as u64,
            failed: AtomicU64::new(0),
        }
    }

    /// Asserts what a consumer must have made of the script, given its final counters: every
    /// failure played and counted, none dead-lettered, and the test events `0..events` each
    /// in the log once.
    #[track_caller]
    pub fn assert_survived(&self, stats: &mlaudit_queue::Snapshot, events: usize) {
        assert_eq!(self.left(), 0, "the store's failures were not all played");
        assert_eq!(self.failed(), self.scripted);
        assert_each_once(&*self.inner, events);
        assert_eq!(stats.dead_letters, 0, "{stats:?}");
        assert!(stats.errors >= self.scripted, "{stats:?}");
        assert!(
            stats.events + stats.duplicates >= events as u64,
            "{stats:?}"
        );
    }

    /// Appends that reported a failure so far.
    pub fn failed(&self) -> u64 {
        self.failed.load(Ordering::SeqCst)
    }

    /// Failures of the script not played yet.
    pub fn left(&self) -> usize {
        self.script.lock().unwrap().len()
    }
}

impl Appender for FailingStore {
    fn append(&self, events: Vec<PreparedEvent>) -> Result<AppendReceipt, StoreError> {
        let next = self.script.lock().unwrap().pop_front();
        let failure = || StoreError::Unavailable("injected by the test".into());
        match next {
            None => self.inner.append(events),
            Some(Next::FailBefore) => {
                self.failed.fetch_add(1, Ordering::SeqCst);
                Err(failure())
            }
            Some(Next::FailAfter) => {
                self.inner.append(events)?;
                self.failed.fetch_add(1, Ordering::SeqCst);
                Err(failure())
            }
        }
    }
}

impl LogReader for FailingStore {
    fn tree_size(&self) -> u64 {
        self.inner.tree_size()
    }
    fn event(&self, seq: u64) -> Result<StoredEvent, StoreError> {
        self.inner.event(seq)
    }
    fn seq_of(&self, id: &EventId) -> Result<Option<u64>, StoreError> {
        self.inner.seq_of(id)
    }
    fn node(&self, level: u32, index: u64) -> Result<Hash, StoreError> {
        self.inner.node(level, index)
    }
    fn checkpoint(&self, size: u64) -> Result<Option<String>, StoreError> {
        self.inner.checkpoint(size)
    }
    fn checkpoint_sizes(&self) -> Result<Vec<u64>, StoreError> {
        self.inner.checkpoint_sizes()
    }
    fn scan(
        &self,
        from: u64,
        visit: &mut dyn FnMut(StoredEvent) -> ControlFlow<()>,
    ) -> Result<(), StoreError> {
        self.inner.scan(from, visit)
    }
}

impl Querier for FailingStore {
    fn query(&self, q: &Query) -> Result<Vec<u64>, StoreError> {
        self.inner.query(q)
    }
}

impl Diagnostics for FailingStore {
    fn location(&self, seq: u64) -> String {
        self.inner.location(seq)
    }
}

/// Waits until `done`, failing the test after `limit`.
pub async fn wait_for(what: &str, limit: std::time::Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}
