//! The background work of the store: packing sealed segments ([`crate::packed`]) and merging
//! index runs.
//!
//! Merges: whenever a run is no larger than the one after it, the
//! two are merged into one (a binary counter), so that a log of `n` events has at most about
//! `log2(n / run_events) + 1` runs and an id lookup probes that many Bloom filters.
//!
//! A merge writes the new run beside the old ones (temporary name, sync, rename, directory
//! sync), swaps it in under the index lock, then removes the old files; readers that hold an
//! old run keep reading it until they let go. A crash at any point leaves either the old runs
//! or the new one covering the range, and opening takes the longest (`runs::open_chain`).
//! A merge that fails (a full disk) is abandoned and tried again after the next run.

use crate::runs::{self, Run};
use crate::Shared;
use std::sync::mpsc;
use std::sync::Arc;
use std::thread::JoinHandle;

/// Handle on the merge thread; dropping it waits for the merge in progress.
#[derive(Debug)]
pub(crate) struct Merger {
    tx: Option<mpsc::Sender<()>>,
    join: Option<JoinHandle<()>>,
}

impl Merger {
    pub fn spawn(shared: Arc<Shared>) -> Merger {
        let (tx, rx) = mpsc::channel::<()>();
        let join = std::thread::Builder::new()
            .name("mlaudit-merger".into())
            .spawn(move || {
                while rx.recv().is_ok() {
                    while rx.try_recv().is_ok() {}
                    if shared.options.pack_sealed {
                        pack_sealed(&shared);
                    }
                    while let Some((a, b)) = pick(&shared) {
                        if merge(&shared, &a, &b).is_err() {
                            break;
                        }
                    }
                }
            })
            .ok();
        let merger = Merger { tx: Some(tx), join };
        // Segments sealed before this process (or by an older version) are packed too.
        merger.poke();
        merger
    }

    /// Asks for the runs to be looked at (after a new one was added).
    pub fn poke(&self) {
        if let Some(tx) = &self.tx {
            let _ = tx.send(());
        }
    }
}

impl Drop for Merger {
    fn drop(&mut self) {
        self.tx = None;
        if let Some(j) = self.join.take() {
            let _ = j.join();
        }
    }
}

fn events(r: &Run) -> u64 {
    r.footer.end - r.footer.first
}

/// The last adjacent pair whose first run is no larger than the second.
fn pick(shared: &Shared) -> Option<(Arc<Run>, Arc<Run>)> {
    let index = shared.index.read().ok()?;
    let runs = index.runs();
    (0..runs.len().saturating_sub(1))
        .rev()
        .find(|&i| {
            events(&runs[i]) <= events(&runs[i + 1])
                && runs[i + 1].footer.end - runs[i].footer.first <= u64::from(u32::MAX)
        })
        .map(|i| (runs[i].clone(), runs[i + 1].clone()))
}

fn merge(shared: &Shared, a: &Arc<Run>, b: &Arc<Run>) -> std::io::Result<()> {
    let dir = &shared.dir;
    let budget = shared
        .index
        .read()
        .map_err(|_| std::io::Error::other("index lock poisoned"))?
        .budget()
        .clone();
    let path = runs::merge(dir, a, b).inspect_err(|_| {
        let tmp = format!("{}.tmp", runs::run_name(a.footer.first, b.footer.end));
        let _ = std::fs::remove_file(dir.join(tmp));
    })?;
    let merged = Run::open(&path, budget).map_err(std::io::Error::other)?;
    let swapped = shared
        .index
        .write()
        .map_err(|_| std::io::Error::other("index lock poisoned"))?
        .replace_runs(a, b, merged);
    if swapped {
        for old in [a, b] {
            std::fs::remove_file(dir.join(&old.name))?;
        }
    } else {
        std::fs::remove_file(&path)?;
    }
    Ok(())
}

/// Packs every sealed raw segment (all but the last), oldest first. A failure (a full disk)
/// leaves the raw segment in place; it is tried again on the next call.
fn pack_sealed(shared: &Shared) {
    loop {
        let next = match shared.segments.read() {
            Ok(segs) => segs
                .iter()
                .take(segs.len().saturating_sub(1))
                .find(|s| s.packed.is_none())
                .cloned(),
            Err(_) => return,
        };
        let Some(seg) = next else { return };
        if pack_one(shared, &seg).is_err() {
            return;
        }
    }
}

fn pack_one(shared: &Shared, seg: &crate::Segment) -> std::io::Result<()> {
    let path = crate::packed::pack(&shared.dir, seg.start, &seg.file, &seg.name)?;
    let packed = Arc::new(crate::packed::Packed::open(&path)?);
    let file = Arc::new(std::fs::File::open(&path)?);
    {
        let mut segs = shared
            .segments
            .write()
            .map_err(|_| std::io::Error::other("segments lock poisoned"))?;
        if let Some(s) = segs.iter_mut().find(|s| s.start == seg.start) {
            *s = crate::Segment {
                start: seg.start,
                file,
                name: crate::packed::packed_name(seg.start),
                packed: Some(packed),
            };
        }
    }
    // Readers holding the raw segment keep reading it until they let go.
    std::fs::remove_file(shared.dir.join(&seg.name))?;
    crate::derived::sync_dir(&shared.dir)
}
