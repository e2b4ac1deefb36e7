//! Full verification of a log from its storage: every entry decodes and sits at its seq, every
//! payload matches the digest its entry commits to (and every missing payload was removed by a
//! recorded erasure or expiry that lists the event), every stored tree node equals the one
//! recomputed from the entries, and every stored checkpoint is validly signed and signs exactly
//! the root recomputed for its size. Since all checkpoint roots are recomputed from one sequence
//! of leaves, each checkpoint is consistent with the next by construction.
//!
//! **Invariant:** nothing here trusts a stored hash; every hash is recomputed from entry bytes.

use crate::{Store, StoreError};
use mlaudit_core::entry;
use mlaudit_core::merkle::sha256;
use mlaudit_core::merkle::{self, CompactRange, Hash};
use mlaudit_core::note::{open_checkpoint, NoteVerifier};
use std::ops::ControlFlow;

/// Events per run: the unit the scanner deals to the two checker threads.
const CHUNK: usize = 1 << 14;
/// How many leaves are recomputed between bulk comparisons with stored nodes.
const NODE_BATCH: u64 = 1 << 16;

/// One event checked on its own: its leaf hash, whether its payload was absent, and any
/// disagreement of the id index.
type Checked = (Hash, bool, Option<String>);

/// What a successful verification covered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifyReport {
    pub events: u64,
    pub checkpoints: u64,
    pub root: Hash,
    /// Payloads removed by a recorded erasure or expiry; their entries were still verified.
    pub redacted: u64,
    /// Payloads the store keeps only in the cold archive, which this verification did not
    /// read (a reader that knows the archive fills them in, and they are then checked like
    /// any other).
    pub in_archive: u64,
    /// Events after the latest checkpoint (not yet signed).
    pub unsigned_tail: u64,
}

/// The first thing found wrong.
#[derive(Debug, thiserror::Error)]
#[error("{}{problem} (at {location})", seq.map(|s| format!("seq {s}: ")).unwrap_or_default())]
pub struct VerifyFailure {
    /// The first bad seq, when it can be pinned down.
    pub seq: Option<u64>,
    pub location: String,
    pub problem: String,
    /// The check could not finish because storage (e.g. the cold archive) was unreachable:
    /// nothing was found wrong.
    pub unavailable: bool,
}

/// Checkpoint sizes pages at a time, so that `verify` never holds one per commit group.
struct Sizes<'a> {
    store: &'a dyn Store,
    page: Vec<u64>,
    at: usize,
    /// Sizes consumed so far, and the last of them.
    count: u64,
    last: Option<u64>,
}

/// Checkpoint sizes read at a time.
const SIZES_PAGE: usize = 1 << 14;

impl Sizes<'_> {
    /// The next size not yet consumed.
    fn peek(&mut self) -> Result<Option<u64>, VerifyFailure> {
        if self.at == self.page.len() {
            let next = self.store.checkpoint_sizes_after(self.last, SIZES_PAGE);
            self.page = next.map_err(|e| VerifyFailure {
                unavailable: false,
                seq: None,
                location: "checkpoints".into(),
                problem: e.to_string(),
            })?;
            self.at = 0;
        }
        Ok(self.page.get(self.at).copied())
    }

    fn consume(&mut self) {
        if let Some(s) = self.page.get(self.at) {
            self.last = Some(*s);
            self.count += 1;
            self.at += 1;
        }
    }
}

struct Verifier<'a> {
    store: &'a dyn Store,
    key: &'a NoteVerifier,
    range: CompactRange,
    sizes: Sizes<'a>,
    /// Recomputed nodes not yet compared, per level: (first index, hashes).
    pending: Vec<(u64, Vec<Hash>)>,
    redacted: u64,
    in_archive: u64,
    /// The ids each recently seen removal event names (a few at a time).
    removers: std::collections::HashMap<u64, std::collections::HashSet<String>>,
    /// The first index disagreement, reported after the Merkle checks.
    index_problem: Option<(u64, String)>,
    index_check: Option<Box<dyn crate::IndexCheck + 'a>>,
}

impl Verifier<'_> {
    fn fail(&self, seq: Option<u64>, problem: impl Into<String>) -> VerifyFailure {
        let location = seq
            .map(|s| self.store.location(s))
            .unwrap_or_else(|| "the log".into());
        VerifyFailure {
            unavailable: false,
            seq,
            location,
            problem: problem.into(),
        }
    }

    /// Checks one event on its own: its place, its entry and its payload. Returns its leaf hash.
    /// Also returns any disagreement of the engine's indexes with the entry, reported only if
    /// the Merkle layer finds nothing worse.
    fn check_alone(
        store: &dyn Store,
        ids_checked: bool,
        seq: u64,
        entry_bytes: &[u8],
        payload: Option<&[u8]>,
    ) -> Result<Checked, String> {
        let e = entry::decode_view(entry_bytes)
            .map_err(|err| format!("entry does not decode: {err}"))?;
        if e.seq != seq {
            return Err(format!(
                "entry claims seq {} (moved, inserted or reordered)",
                e.seq
            ));
        }
        if let Some(p) = payload {
            if p.len() as u64 != u64::from(e.payload_len) || sha256(p) != e.payload_sha256 {
                return Err("payload does not match the SHA-256 its entry commits to".into());
            }
        }
        let index_problem = if ids_checked {
            None // the engine's checker proves the id index as a whole, in one pass
        } else {
            match store.seq_of(&e.id) {
                Ok(Some(s)) if s == seq => None,
                Ok(found) => Some(format!(
                    "the id index maps event {} to {found:?}, not to this seq",
                    e.id
                )),
                Err(err) => Some(format!("the id index: {err}")),
            }
        };
        Ok((
            merkle::leaf_hash(entry_bytes),
            payload.is_none(),
            index_problem,
        ))
    }

    /// The per-event checks of a run (any thread).
    fn check_run(
        store: &dyn Store,
        ids_checked: bool,
        run: &crate::EventRun,
    ) -> Vec<Result<Checked, String>> {
        (0..run.len())
            .map(|i| match run.get(i) {
                Some((seq, entry_bytes, payload)) => {
                    Self::check_alone(store, ids_checked, seq, entry_bytes, payload)
                }
                None => Err("the run ended early".into()),
            })
            .collect()
    }

    /// Takes a checked run in seq order: the indexes, the tree and the checkpoints.
    fn absorb(
        &mut self,
        run: &crate::EventRun,
        results: Vec<Result<Checked, String>>,
    ) -> Result<(), VerifyFailure> {
        let first = run.first;
        let mut removed = Vec::new();
        for (seq, remover) in run.removals() {
            self.check_removal(run, seq, remover)?;
            removed.push(seq);
        }
        let in_archive: Vec<u64> = run.in_archive().collect();
        self.in_archive += in_archive.len() as u64;
        for (i, result) in results.into_iter().enumerate() {
            let seq = first + i as u64;
            let (leaf, redacted, mut index_problem) =
                result.map_err(|p| self.fail(Some(seq), p))?;
            let accounted =
                removed.binary_search(&seq).is_ok() || in_archive.binary_search(&seq).is_ok();
            if redacted && !accounted {
                return Err(self.fail(
                    Some(seq),
                    "its payload is missing, and no erasure or expiry records its removal",
                ));
            }
            self.redacted += u64::from(redacted && removed.binary_search(&seq).is_ok());
            if let (None, Some(checker)) = (&index_problem, self.index_check.as_mut()) {
                // Decoded again here (it decoded in `check_alone`): borrowing, no allocation.
                if let Some(Ok(e)) = run.get(i).map(|(_, bytes, _)| entry::decode_view(bytes)) {
                    index_problem = checker.check(seq, &e).err().map(|p| format!("index: {p}"));
                }
            }
            if let (None, Some(p)) = (&self.index_problem, index_problem) {
                self.index_problem = Some((seq, p));
            }
            let pending = &mut self.pending;
            self.range.push(leaf, |level, index, hash| {
                let level = level as usize;
                if pending.len() <= level {
                    pending.resize_with(level + 1, || (index, Vec::new()));
                }
                if pending[level].1.is_empty() {
                    pending[level].0 = index;
                }
                pending[level].1.push(*hash);
            });
            while self.sizes.peek()? == Some(self.range.size()) {
                self.check_checkpoint(self.range.size(), seq)?;
                self.sizes.consume();
            }
            if self.range.size().is_multiple_of(NODE_BATCH) {
                self.compare_nodes()?;
            }
        }
        Ok(())
    }

    /// A removed payload must name a payload removal event of the log that lists the event.
    fn check_removal(
        &mut self,
        run: &crate::EventRun,
        seq: u64,
        remover: u64,
    ) -> Result<(), VerifyFailure> {
        let id = run
            .get((seq - run.first) as usize)
            .and_then(|(_, bytes, _)| entry::decode_view(bytes).ok())
            .map(|e| e.id.to_string());
        let Some(id) = id else { return Ok(()) }; // the entry check reports it
        if !self.removers.contains_key(&remover) {
            let ids = self
                .removal_ids(remover)
                .map_err(|(p, unavailable)| VerifyFailure {
                    unavailable,
                    ..self.fail(Some(seq), format!("payload removed by seq {remover}: {p}"))
                })?;
            if self.removers.len() >= 64 {
                self.removers.clear();
            }
            self.removers.insert(remover, ids);
        }
        if self
            .removers
            .get(&remover)
            .is_some_and(|ids| ids.contains(&id))
        {
            return Ok(());
        }
        Err(self.fail(
            Some(seq),
            format!("its payload was removed naming seq {remover}, which does not list event {id}"),
        ))
    }

    /// The event ids a payload removal event lists.
    /// Why not: the problem, and whether storage was unreachable (nothing found wrong).
    fn removal_ids(
        &self,
        remover: u64,
    ) -> Result<std::collections::HashSet<String>, (String, bool)> {
        let found_wrong = |p: &str| (p.to_owned(), false);
        if remover >= self.store.tree_size() {
            return Err(found_wrong("no such event"));
        }
        let ev = self
            .store
            .event(remover)
            .map_err(|e| (e.to_string(), matches!(e, StoreError::Unavailable(_))))?;
        crate::check_remover(remover, &ev.entry).map_err(|e| found_wrong(&e.to_string()))?;
        let payload = ev.payload.ok_or_else(|| {
            found_wrong(
                "the removal event's own payload is gone, so what it removed cannot be read",
            )
        })?;
        let doc: serde_json::Value = serde_json::from_slice(&payload)
            .map_err(|e| found_wrong(&format!("its payload: {e}")))?;
        let ids = doc["attributes"]["events"]
            .as_array()
            .ok_or_else(|| found_wrong("its attributes.events is not a list"))?;
        Ok(ids
            .iter()
            .filter_map(|v| v.as_str().map(str::to_owned))
            .collect())
    }

    fn check_checkpoint(&self, size: u64, last_seq: u64) -> Result<(), VerifyFailure> {
        let first_covered = self.sizes.last.unwrap_or(0);
        let here = |p: String| VerifyFailure {
            unavailable: false,
            seq: Some(first_covered.min(last_seq)),
            location: format!(
                "checkpoint for tree size {size}; first bad seq is in {first_covered}..{size}"
            ),
            problem: p,
        };
        let note = match self.store.checkpoint(size) {
            Ok(Some(note)) => note,
            Ok(None) => return Err(here("checkpoint listed but missing".into())),
            Err(e) => return Err(here(e.to_string())),
        };
        let cp = open_checkpoint(self.key, &note)
            .map_err(|e| here(format!("checkpoint signature: {e}")))?;
        if cp.size != size {
            return Err(here(format!(
                "checkpoint stored for size {size} signs size {}",
                cp.size
            )));
        }
        if cp.root != self.range.root() {
            return Err(here(
                "the signed root differs from the root recomputed from the entries".into(),
            ));
        }
        Ok(())
    }

    fn compare_nodes(&mut self) -> Result<(), VerifyFailure> {
        for level in 0..self.pending.len() {
            let (start, hashes) = std::mem::take(&mut self.pending[level]);
            if hashes.is_empty() {
                continue;
            }
            let stored = self
                .store
                .nodes(level as u32, start, hashes.len() as u64)
                .map_err(|e| self.fail(Some(start << level), format!("stored tree node: {e}")))?;
            if let Some(i) = (0..hashes.len()).find(|i| stored.get(*i) != Some(&hashes[*i])) {
                let index = start + i as u64;
                return Err(self.fail(
                    Some(index << level),
                    format!("stored tree node (level {level}, index {index}) differs from the recomputed one"),
                ));
            }
        }
        Ok(())
    }
}

/// Verifies the whole log. `progress(done, total)` is called now and then.
pub fn verify(
    store: &dyn Store,
    key: &NoteVerifier,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<VerifyReport, VerifyFailure> {
    let total = store.tree_size();
    let latest = store.latest_checkpoint_size().map_err(|e| VerifyFailure {
        unavailable: false,
        seq: None,
        location: "checkpoints".into(),
        problem: e.to_string(),
    })?;
    if let Some(beyond) = latest.filter(|s| *s > total) {
        return Err(VerifyFailure {
            unavailable: false,
            seq: Some(total),
            location: format!("checkpoint for tree size {beyond}"),
            problem: format!("a checkpoint signs {beyond} events but the log holds only {total}: events were removed"),
        });
    }
    let mut v = Verifier {
        store,
        key,
        range: CompactRange::new(),
        sizes: Sizes {
            store,
            page: Vec::new(),
            at: 0,
            count: 0,
            last: None,
        },
        pending: Vec::new(),
        redacted: 0,
        in_archive: 0,
        removers: std::collections::HashMap::new(),
        index_problem: None,
        index_check: store.index_check(),
    };
    while v.sizes.peek()? == Some(0) {
        v.check_checkpoint(0, 0)?;
        v.sizes.consume();
    }
    // Four stages: one thread scans and deals runs alternately to two checker threads (the
    // per-event work); this thread takes their results back in the same alternation, so in seq
    // order, for the sequential work. Dropping a receiver stops the stages before it.
    let mut failure = None;
    let mut seq = 0u64;
    let ids_checked = v.index_check.as_ref().is_some_and(|c| c.checks_ids());
    let scanned = std::thread::scope(|s| {
        let (to_a, runs_a) = std::sync::mpsc::sync_channel::<crate::EventRun>(1);
        let (to_b, runs_b) = std::sync::mpsc::sync_channel::<crate::EventRun>(1);
        let scanner = s.spawn(move || {
            let mut turn = false;
            store.scan_runs(0, CHUNK, &mut |run| {
                turn = !turn;
                let sent = if turn { to_a.send(run) } else { to_b.send(run) };
                if sent.is_err() {
                    ControlFlow::Break(())
                } else {
                    ControlFlow::Continue(())
                }
            })
        });
        type Checked2 = (crate::EventRun, Vec<Result<Checked, String>>);
        let checker = |runs: std::sync::mpsc::Receiver<crate::EventRun>,
                       out: std::sync::mpsc::SyncSender<Checked2>| {
            move || {
                for run in runs {
                    let results = Verifier::check_run(store, ids_checked, &run);
                    if out.send((run, results)).is_err() {
                        break;
                    }
                }
            }
        };
        let (out_a, checked_a) = std::sync::mpsc::sync_channel::<Checked2>(1);
        let (out_b, checked_b) = std::sync::mpsc::sync_channel::<Checked2>(1);
        s.spawn(checker(runs_a, out_a));
        s.spawn(checker(runs_b, out_b));
        let mut turn = false;
        loop {
            turn = !turn;
            let Ok((run, results)) = (if turn {
                checked_a.recv()
            } else {
                checked_b.recv()
            }) else {
                break;
            };
            if run.first != seq {
                failure = Some(v.fail(
                    Some(seq),
                    format!("storage returned seq {} in place of {seq}", run.first),
                ));
                break;
            }
            if let Err(f) = v.absorb(&run, results) {
                failure = Some(f);
                break;
            }
            seq += run.len() as u64;
            progress(seq, total);
        }
        drop((checked_a, checked_b));
        scanner
            .join()
            .unwrap_or_else(|_| Err(StoreError::NotFound("the scanning thread panicked".into())))
    });
    if let Some(f) = failure {
        return Err(f);
    }
    if let Err(e) = scanned {
        return Err(scan_failure(store, seq, e));
    }
    if seq != total {
        return Err(v.fail(
            Some(seq),
            format!("storage yielded {seq} events but reports {total}"),
        ));
    }
    v.compare_nodes()?;
    if let (None, Some(checker)) = (&v.index_problem, v.index_check.as_mut()) {
        if let Err((seq, p)) = checker.finish(total) {
            v.index_problem = Some((
                seq.unwrap_or(total.saturating_sub(1)),
                format!("index: {p}"),
            ));
        }
    }
    if let Some((seq, problem)) = v.index_problem.take() {
        return Err(v.fail(Some(seq), problem));
    }
    progress(total, total);
    // Sizes beyond the events verified were refused above; any left were never reached.
    if let Some(size) = v.sizes.peek()? {
        return Err(v.fail(
            Some(total.saturating_sub(1)),
            format!("a checkpoint for tree size {size} was not reached"),
        ));
    }
    let signed = v.sizes.last.unwrap_or(0);
    Ok(VerifyReport {
        events: total,
        checkpoints: v.sizes.count,
        root: v.range.root(),
        redacted: v.redacted,
        in_archive: v.in_archive,
        unsigned_tail: total - signed,
    })
}

fn scan_failure(store: &dyn Store, seq: u64, e: StoreError) -> VerifyFailure {
    match e {
        StoreError::Corrupt { location, problem } => VerifyFailure {
            unavailable: false,
            seq: Some(seq),
            location,
            problem,
        },
        other => VerifyFailure {
            seq: Some(seq),
            location: store.location(seq),
            unavailable: matches!(other, StoreError::Unavailable(_)),
            problem: other.to_string(),
        },
    }
}
