//! Moving archived payloads off the server's disk, and `mlaudit restore` bringing them back.
//!
//! **Invariants:** a local payload is dropped only after the archive was read back and holds
//! the same entry and the same payload bytes for its event, so every payload stays readable in
//! at least one tier at every moment (a crash between the two leaves it in both). A restored
//! payload is written back only if it is the one its entry commits to (the engine checks).
//! The data directory's `archive-offloaded` file remembers how far offloading got, so that a
//! run looks only at what was archived since and a restored range stays on the server.

use crate::ledger::Ledger;
use anyhow::{bail, Context, Result};
use mlaudit_archive::Archive;
use mlaudit_core::event::is_reserved_kind;
use mlaudit_store::prelude::*;
use mlaudit_store::{StoreError, StoredEvent, Tier};
use std::ops::ControlFlow;
use std::path::Path;

/// The file in the data directory holding the seq up to which payloads were offloaded; it
/// exists once any payload may have been.
const OFFLOADED_FILE: &str = "archive-offloaded";
/// Events read back from the archive and compared at a time.
const CHUNK: u64 = 4096;
/// Payloads handed to the engine at once: each packed segment they touch is packed again once
/// per call.
const OFFLOAD_BATCH: usize = 50_000;
/// Bytes of payloads a restore hands to the engine at once.
const RESTORE_BYTES: u64 = 32 << 20;

/// What an offload did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Offloaded {
    /// Events looked at (`from..to`).
    pub from: u64,
    pub to: u64,
    /// Local payloads dropped now (the archive alone keeps them).
    pub dropped: u64,
    /// Bytes of payload they held.
    pub bytes: u64,
}

/// The seq up to which payloads were offloaded (0 when never).
pub fn offloaded_to(data: &Path) -> u64 {
    std::fs::read_to_string(data.join(OFFLOADED_FILE))
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0)
}

/// Whether this data directory may have moved payloads to its archive.
pub fn ever_offloaded(data: &Path) -> bool {
    data.join(OFFLOADED_FILE).exists()
}

/// Starts over: nothing is kept only in an archive any more.
pub fn forget_offloaded(data: &Path) -> Result<()> {
    let path = data.join(OFFLOADED_FILE);
    match std::fs::remove_file(&path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(e).with_context(|| format!("removing {}", path.display()))
        }
        _ => Ok(()),
    }
}

fn remember_offloaded(data: &Path, to: u64) -> Result<()> {
    super::write_durably(data, OFFLOADED_FILE, &format!("{to}\n"))
}

/// Drops the local payloads of the archived events from the last offload up to `to` (at most
/// the archive's size), each once the archive is found to hold it byte for byte.
pub fn offload(
    data: &Path,
    store: &Ledger,
    archive: &Archive,
    to: u64,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<Offloaded> {
    let from = offloaded_to(data).min(to);
    let mut done = Offloaded {
        from,
        to,
        ..Offloaded::default()
    };
    if from >= to {
        return Ok(done);
    }
    // An engine that keeps every payload says so before anything is read back.
    store.offload_payloads(&[])?;
    // Durably first: where reads will find the payloads, and that some may be there.
    let url = archive.url().to_string();
    super::remember_archive(data, &url)?;
    store.use_archive(&url);
    remember_offloaded(data, from)?;
    let mut seqs = Vec::new();
    let mut at = from;
    while at < to {
        let end = (at + CHUNK).min(to);
        let local = local_events(store, at, end)?;
        let archived = archive
            .events(at, end)
            .with_context(|| format!("reading events {at}..{end} back from the archive"))?;
        for (here, there) in local.iter().zip(&archived) {
            if let Some(bytes) = offloadable(here, there, archive)? {
                seqs.push(here.seq);
                done.bytes += bytes;
            }
        }
        if seqs.len() >= OFFLOAD_BATCH || end == to {
            done.dropped += store
                .offload_payloads(&seqs)
                .with_context(|| format!("dropping the local payloads of events below {end}"))?;
            seqs.clear();
            remember_offloaded(data, end)?;
        }
        progress(end - from, to - from);
        at = end;
    }
    Ok(done)
}

/// The payload bytes the server may drop for `here`, the archive holding `there`: `None` when
/// there is nothing to drop (already archived only, removed, an erasure of the archived copy
/// still to finish locally, or one of the trail's own records); an error when the archive
/// differs from the log.
fn offloadable(here: &StoredEvent, there: &StoredEvent, archive: &Archive) -> Result<Option<u64>> {
    if here.entry != there.entry {
        bail!(
            "seq {}: the archive holds another entry than the log: not offloading (run `mlaudit verify --archive {}`)",
            here.seq,
            archive.url()
        );
    }
    // The trail's own records (holds, erasures, expiries, access changes, recorded reads)
    // stay: hold checks and verify read them, and they are small.
    let own_record = mlaudit_core::entry::decode_view(&here.entry)
        .map(|v| is_reserved_kind(v.kind))
        .with_context(|| format!("decoding the entry of seq {}", here.seq))?;
    match (&here.payload, &there.payload) {
        _ if here.tier == Tier::Cold || own_record => Ok(None),
        (Some(p), Some(q)) if p == q => Ok(Some(p.len() as u64)),
        (Some(_), Some(_)) => bail!(
            "seq {}: the archive holds another payload than the log: not offloading (run `mlaudit verify --archive {}`)",
            here.seq,
            archive.url()
        ),
        _ => Ok(None),
    }
}

/// Events `from..to` as the store holds them (archived payloads not fetched).
fn local_events(store: &dyn Store, from: u64, to: u64) -> Result<Vec<StoredEvent>> {
    events(from, to, |visit| store.scan_stored(from, visit))
}

/// Events `from..to` from `scan`, which visits events in seq order from `from`.
fn events(
    from: u64,
    to: u64,
    scan: impl FnOnce(&mut dyn FnMut(StoredEvent) -> ControlFlow<()>) -> Result<(), StoreError>,
) -> Result<Vec<StoredEvent>> {
    let mut out = Vec::with_capacity((to - from) as usize);
    scan(&mut |ev| {
        out.push(ev);
        match out.len() as u64 >= to - from {
            true => ControlFlow::Break(()),
            false => ControlFlow::Continue(()),
        }
    })?;
    Ok(out)
}

/// What a restore did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Restored {
    pub restored: u64,
    pub bytes: u64,
}

/// Brings the payloads of events `from..=to` kept only in the archive back to the server
/// (`store` fetches them from the archive it remembers, checked against their entries).
pub fn restore(
    store: &dyn Store,
    from: u64,
    to: u64,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<Restored> {
    let mut done = Restored::default();
    let end = to + 1;
    let mut batch: Vec<(u64, Vec<u8>)> = Vec::new();
    let mut batch_bytes = 0u64;
    let mut at = from;
    while at < end {
        let chunk_end = (at + CHUNK).min(end);
        // Through the store: a payload only the archive keeps comes back fetched, checked
        // against its entry, and marked cold.
        for ev in events(at, chunk_end, |visit| store.scan(at, visit))? {
            if ev.tier != Tier::Cold || ev.removed_by.is_some() {
                continue;
            }
            let payload = ev
                .payload
                .with_context(|| format!("seq {}: the archive returned no payload", ev.seq))?;
            batch_bytes += payload.len() as u64;
            batch.push((ev.seq, payload));
        }
        if batch_bytes >= RESTORE_BYTES || chunk_end == end {
            done.bytes += batch_bytes;
            done.restored += store
                .restore_payloads(&batch)
                .with_context(|| format!("restoring the payloads of events below {chunk_end}"))?;
            batch.clear();
            batch_bytes = 0;
        }
        progress(chunk_end - from, end - from);
        at = chunk_end;
    }
    Ok(done)
}
