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
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::thread::JoinHandle;

/// Handle on the merge thread; dropping it stops the thread after the segment or merge in
/// progress (what is left is taken up after the next open).
#[derive(Debug)]
pub(crate) struct Merger {
    tx: Option<mpsc::Sender<Ask>>,
    join: Option<JoinHandle<()>>,
    stop: Arc<AtomicBool>,
}

impl Merger {
    pub fn spawn(shared: Arc<Shared>) -> Merger {
        let (tx, rx) = mpsc::channel::<Ask>();
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        if let Ok(mut slot) = shared.maintenance.lock() {
            *slot = Some(tx.clone());
        }
        let join = std::thread::Builder::new()
            .name("mlaudit-merger".into())
            .spawn(move || {
                let go_on = || !stopped.load(Ordering::Acquire);
                while let Ok(ask) = rx.recv() {
                    if !go_on() {
                        break;
                    }
                    let mut waiting: Vec<mpsc::Sender<()>> = ask.into_iter().collect();
                    while let Ok(more) = rx.try_recv() {
                        waiting.extend(more);
                    }
                    if shared.options.pack_sealed {
                        pack_sealed(&shared, &go_on);
                    }
                    while let Some((a, b)) = pick(&shared).filter(|_| go_on()) {
                        if merge(&shared, &a, &b).is_err() {
                            break;
                        }
                    }
                    for w in waiting {
                        let _ = w.send(());
                    }
                    // The stop's wake-up may have been drained above with the other asks.
                    if !go_on() {
                        break;
                    }
                }
            })
            .ok();
        let merger = Merger {
            tx: Some(tx),
            join,
            stop,
        };
        // Segments sealed before this process (or by an older version) are packed too.
        merger.poke();
        merger
    }

    /// Asks for the runs and segments to be looked at (after a new run or segment).
    pub fn poke(&self) {
        if let Some(tx) = &self.tx {
            let _ = tx.send(None);
        }
    }
}

impl Drop for Merger {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        // Wakes the thread, which sees the stop (the store keeps a sender for `settle`).
        if let Some(tx) = self.tx.take() {
            let _ = tx.send(None);
        }
        if let Some(j) = self.join.take() {
            let _ = j.join();
        }
    }
}

/// A request to the thread: look at the runs and segments, and say when done if asked to.
pub(crate) type Ask = Option<mpsc::Sender<()>>;

/// Waits until the thread has packed every sealed segment and made every merge due.
pub(crate) fn settle(shared: &Shared) {
    let tx = shared.maintenance.lock().ok().and_then(|t| t.clone());
    if let Some(tx) = tx {
        let (done, wait) = mpsc::channel();
        if tx.send(Some(done)).is_ok() {
            let _ = wait.recv();
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
    // A damaged run is not merged (a merge would give it a valid checksum): it stays for
    // `verify` to report.
    if !a.check_body()? || !b.check_body()? {
        return Err(std::io::Error::other("a run does not match its checksum"));
    }
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
fn pack_sealed(shared: &Shared, go_on: &dyn Fn() -> bool) {
    while go_on() {
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
    let _one_rewrite = shared
        .segment_rewrite
        .lock()
        .map_err(|_| std::io::Error::other("segment rewrite lock poisoned"))?;
    let path = crate::packed::pack(&shared.dir, seg.start, seg.file.as_ref(), &seg.name)?;
    let packed = Arc::new(crate::packed::Packed::open(&path)?);
    let file = packed.file();
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
