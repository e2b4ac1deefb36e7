//! Moving archived payloads off the server's disk, and `mlaudit restore` bringing them back.
//!
//! **Invariants:** a local payload is dropped only after the archive was read back and holds
//! the same entry and the same payload bytes for its event, so every payload stays readable in
//! at least one tier at every moment (a crash between the two leaves it in both). A restored
//! payload is written back only if it is the one its entry commits to (the engine checks).
//! The data directory's `archive-offloaded` file remembers how far offloading got, so that a
//! run looks only at what was archived since and a restored range stays on the server.

use anyhow::{bail, Context, Result};
use mlaudit_archive::Archive;
use mlaudit_store::prelude::*;
use mlaudit_store::{StoredEvent, Tier};
use std::ops::ControlFlow;
use std::path::Path;

/// The file in the data directory holding the seq up to which payloads were offloaded.
const OFFLOADED_FILE: &str = "archive-offloaded";
/// Events compared with the archive and offloaded at a time.
const CHUNK: u64 = 4096;

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

fn remember_offloaded(data: &Path, to: u64) -> Result<()> {
    let path = data.join(OFFLOADED_FILE);
    let tmp = data.join(format!("{OFFLOADED_FILE}.tmp"));
    std::fs::write(&tmp, format!("{to}\n"))
        .and_then(|()| std::fs::rename(&tmp, &path))
        .with_context(|| format!("writing {}", path.display()))
}

/// Drops the local payloads of the archived events from the last offload up to `to` (at most
/// the archive's size), each once the archive is found to hold it byte for byte.
pub fn offload(
    data: &Path,
    store: &dyn Store,
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
    if from < to {
        super::remember_archive(data, &archive.url().to_string())?;
    }
    let mut at = from;
    while at < to {
        let end = (at + CHUNK).min(to);
        let local = local_events(store, at, end)?;
        let archived = archive
            .events(at, end)
            .with_context(|| format!("reading events {at}..{end} back from the archive"))?;
        let mut seqs = Vec::new();
        for (here, there) in local.iter().zip(&archived) {
            if here.entry != there.entry {
                bail!(
                    "seq {}: the archive holds another entry than the log: not offloading (run `mlaudit verify --archive {}`)",
                    here.seq,
                    archive.url()
                );
            }
            match (&here.payload, &there.payload) {
                // Already only in the archive, removed, or a removal cut short locally.
                _ if here.tier == Tier::Cold => {}
                (Some(p), Some(q)) if p == q => {
                    seqs.push(here.seq);
                    done.bytes += p.len() as u64;
                }
                (Some(_), Some(_)) => bail!(
                    "seq {}: the archive holds another payload than the log: not offloading (run `mlaudit verify --archive {}`)",
                    here.seq,
                    archive.url()
                ),
                _ => {}
            }
        }
        done.dropped += store
            .offload_payloads(&seqs)
            .with_context(|| format!("dropping the local payloads of events {at}..{end}"))?;
        remember_offloaded(data, end)?;
        progress(end - from, to - from);
        at = end;
    }
    Ok(done)
}

/// Events `from..to` as the store reads them.
fn local_events(store: &dyn Store, from: u64, to: u64) -> Result<Vec<StoredEvent>> {
    let mut out = Vec::with_capacity((to - from) as usize);
    store.scan(from, &mut |ev| {
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
    let mut at = from;
    while at < end {
        let chunk_end = (at + CHUNK).min(end);
        // Through the store, a payload only the archive keeps comes back checked against its
        // entry, and marked cold.
        let payloads: Vec<(u64, Vec<u8>)> = local_events(store, at, chunk_end)?
            .into_iter()
            .filter(|ev| ev.tier == Tier::Cold)
            .filter_map(|ev| Some((ev.seq, ev.payload?)))
            .collect();
        done.bytes += payloads.iter().map(|(_, p)| p.len() as u64).sum::<u64>();
        done.restored += store
            .restore_payloads(&payloads)
            .with_context(|| format!("restoring the payloads of events {at}..{chunk_end}"))?;
        progress(chunk_end - from, end - from);
        at = chunk_end;
    }
    Ok(done)
}
