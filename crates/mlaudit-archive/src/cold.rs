//! Reading payloads kept only in the cold archive: what a store whose local copies were
//! dropped ([`mlaudit_store::Appender::offload_payloads`]) needs to answer reads as before.
//!
//! **Invariants:** a payload fetched from the archive is returned only if it is the one its
//! (local) entry commits to — length and SHA-256 — so a damaged or altered archive is reported
//! ([`StoreError::Corrupt`], naming the object), never shown. The archive is opened on first
//! use, so a store with nothing offloaded never touches it. Payload bundles are cached, up to
//! [`CACHE_BYTES`] of payloads, so that a scan fetches each bundle once.

use crate::{layout, Archive, ArchiveError};
use mlaudit_core::event::PreparedEvent;
use mlaudit_core::merkle::Hash;
use mlaudit_core::EventId;
use mlaudit_store::prelude::*;
use mlaudit_store::tiles::TILE_WIDTH;
use mlaudit_store::{
    AppendDone, AppendReceipt, EventRun, InclusionMaterial, IndexCheck, Query, StoreError,
    StoreStats, StoredEvent,
};
use std::collections::VecDeque;
use std::ops::ControlFlow;
use std::sync::{Arc, Mutex, OnceLock};

/// Bytes of decoded payloads kept in memory.
pub const CACHE_BYTES: usize = 64 << 20;

/// One payload bundle, decoded.
struct Bundle {
    /// The seq of its first payload.
    first: u64,
    payloads: Vec<Option<Vec<u8>>>,
    bytes: usize,
}

/// The cold archive, as a source of the payloads a store no longer holds.
pub struct ColdPayloads {
    url: String,
    archive: OnceLock<Result<Archive, String>>,
    /// The archive's size as last read (the tiles of a seq depend on it).
    size: Mutex<u64>,
    cache: Mutex<VecDeque<Arc<Bundle>>>,
}

impl std::fmt::Debug for ColdPayloads {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ColdPayloads")
            .field("url", &self.url)
            .finish()
    }
}

impl ColdPayloads {
    /// The payloads of the archive at `url`, opened when first needed.
    pub fn new(url: &str) -> ColdPayloads {
        ColdPayloads {
            url: url.to_owned(),
            archive: OnceLock::new(),
            size: Mutex::new(0),
            cache: Mutex::new(VecDeque::new()),
        }
    }

    /// Forgets the payload bundles read so far (the next read of each fetches it again).
    pub fn clear_cache(&self) {
        if let Ok(mut cache) = self.cache.lock() {
            cache.clear();
        }
    }

    /// The archive's URL.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// `ev` with its payload, fetched from the archive when it is kept only there.
    pub fn fill(&self, mut ev: StoredEvent) -> Result<StoredEvent, StoreError> {
        if ev.payload_in_archive() {
            ev.payload = Some(self.payload(ev.seq, &ev.entry)?);
        }
        Ok(ev)
    }

    /// `run` with the payloads it lacks fetched from the archive (the run itself when it
    /// lacks none).
    pub fn fill_run(&self, run: EventRun) -> Result<EventRun, StoreError> {
        if run.in_archive().next().is_none() {
            return Ok(run);
        }
        let cold: Vec<u64> = run.in_archive().collect();
        let removed: Vec<(u64, u64)> = run.removals().collect();
        let mut out = EventRun::new(run.first, run.len());
        for i in 0..run.len() {
            let Some((seq, entry, payload)) = run.get(i) else {
                break;
            };
            if let Some((_, remover)) = removed.iter().find(|(s, _)| *s == seq) {
                out.push_removed(entry, *remover);
            } else if cold.binary_search(&seq).is_ok() {
                out.push(entry, Some(&self.payload(seq, entry)?));
            } else {
                out.push(entry, payload);
            }
        }
        Ok(out)
    }

    /// The payload of event `seq` from the archive, checked against its entry.
    pub fn payload(&self, seq: u64, entry: &[u8]) -> Result<Vec<u8>, StoreError> {
        let bundle = self.bundle(seq)?;
        let name = self.bundle_name(seq)?;
        let found = bundle
            .payloads
            .get((seq - bundle.first) as usize)
            .cloned()
            .flatten()
            .ok_or_else(|| StoreError::Corrupt {
                location: format!("{} {name}", self.url),
                problem: format!(
                    "seq {seq}: the archive holds no payload for this event, and the server kept none: if an erasure or expiry of this event was cut short, run it again (it finishes the removal); otherwise the archive lost the payload"
                ),
            })?;
        mlaudit_store::check_restored(seq, entry, &found).map_err(|_| StoreError::Corrupt {
            location: format!("{} {name}", self.url),
            problem: format!("seq {seq}: the archived payload is not the one its entry commits to"),
        })?;
        Ok(found)
    }

    fn archive(&self) -> Result<&Archive, StoreError> {
        self.archive
            .get_or_init(|| Archive::open(&self.url).map_err(|e| e.to_string()))
            .as_ref()
            .map_err(|e| StoreError::Unavailable(format!("the cold archive: {e}")))
    }

    /// The name of the payload bundle holding `seq` at the archive's size.
    fn bundle_name(&self, seq: u64) -> Result<String, StoreError> {
        let size = self.size_holding(seq)?;
        Ok(layout::payload_bundle_name(layout::tile_of(seq, size)))
    }

    /// The archive's size, read again when `seq` lies beyond the one last read.
    fn size_holding(&self, seq: u64) -> Result<u64, StoreError> {
        let mut size = self.size.lock().map_err(|_| poisoned())?;
        if seq >= *size {
            *size = self.archive()?.size().map_err(|e| self.error(e))?;
        }
        if seq >= *size {
            return Err(StoreError::Corrupt {
                location: format!("{} checkpoint", self.url),
                problem: format!(
                    "seq {seq}: the server keeps its payload only in the archive, which holds {} events",
                    *size
                ),
            });
        }
        Ok(*size)
    }

    /// The decoded payload bundle holding `seq`, from the cache or the archive.
    fn bundle(&self, seq: u64) -> Result<Arc<Bundle>, StoreError> {
        let first = seq - seq % TILE_WIDTH;
        let cached = self.cache.lock().map_err(|_| poisoned())?;
        if let Some(b) = cached
            .iter()
            .find(|b| b.first == first && seq < b.first + b.payloads.len() as u64)
        {
            return Ok(b.clone());
        }
        drop(cached);
        let size = self.size_holding(seq)?;
        let tile = layout::tile_of(seq, size);
        let name = layout::payload_bundle_name(tile);
        let archive = self.archive()?;
        let bytes = archive
            .block_on(archive.fetch_required(&name))
            .map_err(|e| self.error(e))?;
        let payloads = layout::decode_payloads(&name, &bytes, usize::from(tile.width))
            .map_err(|e| self.error(e))?;
        let bytes = payloads.iter().flatten().map(Vec::len).sum();
        let bundle = Arc::new(Bundle {
            first,
            payloads,
            bytes,
        });
        let mut cache = self.cache.lock().map_err(|_| poisoned())?;
        cache.retain(|b| b.first != first);
        cache.push_back(bundle.clone());
        while cache.iter().map(|b| b.bytes).sum::<usize>() > CACHE_BYTES && cache.len() > 1 {
            cache.pop_front();
        }
        Ok(bundle)
    }

    fn error(&self, e: ArchiveError) -> StoreError {
        if e.is_verification_failure() {
            return StoreError::Corrupt {
                location: format!("the cold archive {}", self.url),
                problem: e.to_string(),
            };
        }
        StoreError::Unavailable(format!("the cold archive {}: {e}", self.url))
    }
}

fn poisoned() -> StoreError {
    StoreError::Unavailable("a thread panicked while reading the cold archive".into())
}

/// A store whose reads fetch the payloads only the cold archive keeps (checked against their
/// entries), so that a caller never sees the difference but the event's tier. Everything else
/// goes to the store as it is.
#[derive(Clone, Copy)]
pub struct WithCold<'a> {
    pub local: &'a dyn Store,
    /// `None`: no archive is known, and reading a payload only an archive keeps is an error.
    pub cold: Option<&'a ColdPayloads>,
}

impl std::fmt::Debug for WithCold<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WithCold")
            .field("cold", &self.cold)
            .finish()
    }
}

impl WithCold<'_> {
    /// `ev` with its payload fetched from the archive when only the archive keeps it.
    pub fn fill(&self, ev: StoredEvent) -> Result<StoredEvent, StoreError> {
        match self.cold {
            _ if !ev.payload_in_archive() => Ok(ev),
            Some(cold) => cold.fill(ev),
            None => Err(no_archive(ev.seq)),
        }
    }

    fn fill_run(&self, run: EventRun) -> Result<EventRun, StoreError> {
        let first_cold = run.in_archive().next();
        match (first_cold, self.cold) {
            (None, _) => Ok(run),
            (Some(_), Some(cold)) => cold.fill_run(run),
            (Some(seq), None) => Err(no_archive(seq)),
        }
    }
}

fn no_archive(seq: u64) -> StoreError {
    StoreError::Unavailable(format!(
        "seq {seq}: its payload is kept only in the cold archive, and no archive is known here (the data directory's archive-url file is gone)"
    ))
}

impl Appender for WithCold<'_> {
    fn append(&self, events: Vec<PreparedEvent>) -> Result<AppendReceipt, StoreError> {
        self.local.append(events)
    }
    fn submit(&self, events: Vec<PreparedEvent>, done: AppendDone) {
        self.local.submit(events, done)
    }
    fn try_submit(
        &self,
        events: Vec<PreparedEvent>,
        done: AppendDone,
    ) -> Result<(), (Vec<PreparedEvent>, AppendDone)> {
        self.local.try_submit(events, done)
    }
    fn remove_payload_batch(&self, removals: &[(u64, u64)]) -> Result<u64, StoreError> {
        self.local.remove_payload_batch(removals)
    }
    fn offload_payloads(&self, seqs: &[u64]) -> Result<u64, StoreError> {
        self.local.offload_payloads(seqs)
    }
    fn restore_payloads(&self, payloads: &[(u64, Vec<u8>)]) -> Result<u64, StoreError> {
        self.local.restore_payloads(payloads)
    }
}

impl LogReader for WithCold<'_> {
    fn tree_size(&self) -> u64 {
        self.local.tree_size()
    }
    fn event(&self, seq: u64) -> Result<StoredEvent, StoreError> {
        self.fill(self.local.event(seq)?)
    }
    fn stored_event(&self, seq: u64) -> Result<StoredEvent, StoreError> {
        self.local.stored_event(seq)
    }
    fn scan_stored(
        &self,
        from: u64,
        visit: &mut dyn FnMut(StoredEvent) -> ControlFlow<()>,
    ) -> Result<(), StoreError> {
        self.local.scan_stored(from, visit)
    }
    fn seq_of(&self, id: &EventId) -> Result<Option<u64>, StoreError> {
        self.local.seq_of(id)
    }
    fn seq_of_leaf(&self, leaf: &Hash) -> Result<Option<u64>, StoreError> {
        self.local.seq_of_leaf(leaf)
    }
    fn node(&self, level: u32, index: u64) -> Result<Hash, StoreError> {
        self.local.node(level, index)
    }
    fn nodes(&self, level: u32, start: u64, count: u64) -> Result<Vec<Hash>, StoreError> {
        self.local.nodes(level, start, count)
    }
    fn checkpoint(&self, size: u64) -> Result<Option<String>, StoreError> {
        self.local.checkpoint(size)
    }
    fn checkpoint_sizes(&self) -> Result<Vec<u64>, StoreError> {
        self.local.checkpoint_sizes()
    }
    fn checkpoint_sizes_after(
        &self,
        after: Option<u64>,
        max: usize,
    ) -> Result<Vec<u64>, StoreError> {
        self.local.checkpoint_sizes_after(after, max)
    }
    fn inclusion_material(&self, seq: u64, size: u64) -> Result<InclusionMaterial, StoreError> {
        let (ev, path) = self.local.inclusion_material(seq, size)?;
        Ok((self.fill(ev)?, path))
    }
    fn latest_checkpoint_size(&self) -> Result<Option<u64>, StoreError> {
        self.local.latest_checkpoint_size()
    }
    fn scan(
        &self,
        from: u64,
        visit: &mut dyn FnMut(StoredEvent) -> ControlFlow<()>,
    ) -> Result<(), StoreError> {
        let mut failed = None;
        let scanned = self.local.scan(from, &mut |ev| match self.fill(ev) {
            Ok(ev) => visit(ev),
            Err(e) => {
                failed = Some(e);
                ControlFlow::Break(())
            }
        });
        failed.map_or(scanned, Err)
    }
    fn scan_runs(
        &self,
        from: u64,
        run_len: usize,
        visit: &mut dyn FnMut(EventRun) -> ControlFlow<()>,
    ) -> Result<(), StoreError> {
        let mut failed = None;
        let scanned = self
            .local
            .scan_runs(from, run_len, &mut |run| match self.fill_run(run) {
                Ok(run) => visit(run),
                Err(e) => {
                    failed = Some(e);
                    ControlFlow::Break(())
                }
            });
        failed.map_or(scanned, Err)
    }
}

impl Querier for WithCold<'_> {
    fn query(&self, q: &Query) -> Result<Vec<u64>, StoreError> {
        self.local.query(q)
    }
}

impl Diagnostics for WithCold<'_> {
    fn location(&self, seq: u64) -> String {
        self.local.location(seq)
    }
    fn stats(&self) -> StoreStats {
        self.local.stats()
    }
    fn index_check(&self) -> Option<Box<dyn IndexCheck + '_>> {
        self.local.index_check()
    }
}
