//! Reading payloads kept only in the cold archive: what a store whose local copies were
//! dropped ([`mlaudit_store::Appender::offload_payloads`]) needs to answer reads as before.
//!
//! **Invariants:** a payload fetched from the archive is returned only if it is the one its
//! (local) entry commits to — length and SHA-256 — so a damaged or altered archive is reported
//! ([`StoreError::Corrupt`], naming the object), never shown. The archive is opened on first
//! use, so a store with nothing offloaded never touches it. Payload bundles are cached, up to
//! [`CACHE_BYTES`] of payloads, so that a scan fetches each bundle once.

use crate::{layout, Archive, ArchiveError};
use mlaudit_store::tiles::TILE_WIDTH;
use mlaudit_store::{EventRun, StoreError, StoredEvent};
use std::collections::VecDeque;
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
                    "seq {seq}: the archive holds no payload for this event, and the server kept none (an erasure cut short? run it again)"
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
