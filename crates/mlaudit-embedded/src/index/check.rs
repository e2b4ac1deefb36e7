//! `verify`'s check of the indexes against the entries, visited in seq order.
//!
//! * `index.bin` is read alongside, a chunk at a time: each record must carry its entry's id,
//!   event time and terms.
//! * Each run is checked when the entries of its range have been seen: its body checksum, its
//!   tables sorted and within its range, and the multiset of `(id, seq)` pairs and of
//!   `(term, seq)` postings equal to the entries' (compared as sums of 128-bit mixes, see
//!   [`pair_digest`]); a difference names the run file.
//! * The in-memory tail is checked exactly: each id looked up, each posting list walked with a
//!   cursor.

use super::{Files, Index, IndexRecord, Tag, TAGS};
use crate::keyed::mix;
use crate::runs::{Run, STAGE_TERM};
use mlaudit_core::entry::{EntryView, EventId, SubjectField};
use mlaudit_core::event::Stage;
use std::sync::{Arc, RwLock};

/// `index.bin` records read at a time.
const RECORDS_CHUNK: u64 = 1 << 14;

/// One `(key, seq)` pair's share of a multiset digest: two 64-bit finalizer mixes.
///
/// An index is proved right by comparing the wrapping sum of these over the entries with the
/// sum over the index (and the counts): sequential passes instead of one random lookup per
/// event. The indexes are derived data, not a trust boundary (the Merkle tree and checkpoints
/// are), so a non-cryptographic digest is enough to catch damage.
fn pair_digest(a: u64, b: u64, seq: u64) -> u128 {
    let hi = mix(a ^ mix(seq ^ 0x9e37_79b9_7f4a_7c15));
    let lo = mix(b ^ mix(hi ^ seq));
    (u128::from(hi) << 64) | u128::from(lo)
}

fn id_digest(id: &EventId, seq: u64) -> u128 {
    let mut half = [0u8; 8];
    half.copy_from_slice(&id.0[..8]);
    let a = u64::from_le_bytes(half);
    half.copy_from_slice(&id.0[8..]);
    pair_digest(a, u64::from_le_bytes(half), seq)
}

fn posting_digest(term: u32, seq: u64) -> u128 {
    pair_digest(u64::from(term), 0x706f_7374, seq)
}

/// Checks the indexes against entries visited in seq order.
#[derive(Debug)]
pub struct Checker<'a> {
    index: &'a RwLock<Index>,
    files: Files,
    /// The runs when the check began, and the first seq of the tail then.
    runs: Vec<Arc<Run>>,
    run_i: usize,
    ids_sum: u128,
    postings_sum: u128,
    /// `index.bin` records from `records_at`.
    records: Vec<IndexRecord>,
    records_at: u64,
    /// Per tail term id: how many of its postings have been matched.
    cursors: Vec<usize>,
    stage_cursors: Vec<usize>,
    /// Per tag: the last term id seen, to skip hashing runs of equal values.
    last: [u32; TAGS],
    /// The tail's ids seen, and their multiset digest.
    tail_ids: u64,
    tail_sum: u128,
}

impl<'a> Checker<'a> {
    /// A checker of the indexes as they are now; `None` if their lock is poisoned.
    pub fn new(index: &'a RwLock<Index>) -> Option<Checker<'a>> {
        let (files, runs) = {
            let i = index.read().ok()?;
            (i.files.clone(), i.runs.clone())
        };
        Some(Checker {
            index,
            files,
            runs,
            run_i: 0,
            ids_sum: 0,
            postings_sum: 0,
            records: Vec::new(),
            records_at: 0,
            cursors: Vec::new(),
            stage_cursors: vec![0; Stage::ALL.len()],
            last: [0; TAGS],
            tail_ids: 0,
            tail_sum: 0,
        })
    }

    fn record(&mut self, seq: u64, len: u64) -> Result<IndexRecord, String> {
        let i = seq.wrapping_sub(self.records_at);
        if seq < self.records_at || i >= self.records.len() as u64 {
            let n = RECORDS_CHUNK.min(len.saturating_sub(seq)).max(1);
            self.records = self
                .files
                .records(seq, n)
                .map_err(|e| format!("reading index.bin at seq {seq}: {e}"))?;
            self.records_at = seq;
        }
        Ok(self.records[(seq - self.records_at) as usize])
    }

    /// The term ids of an entry's indexed values, through the dictionary.
    fn terms_of(
        &mut self,
        index: &Index,
        seq: u64,
        e: &EntryView<'_>,
    ) -> Result<[u32; TAGS], String> {
        let mut values: [Option<&str>; TAGS] = [None; TAGS];
        values[Tag::Kind as usize] = Some(e.kind);
        values[Tag::Actor as usize] = Some(e.actor_id);
        for field in [
            SubjectField::Model,
            SubjectField::Version,
            SubjectField::Run,
            SubjectField::Dataset,
            SubjectField::Deployment,
        ] {
            if let (Some(tag), Some(v)) = (Tag::for_subject(field), e.subject(field)) {
                values[tag as usize] = Some(v);
            }
        }
        let mut terms = [0u32; TAGS];
        for (tag, value) in Tag::ALL.into_iter().zip(values) {
            let Some(value) = value else { continue };
            let last = self.last[tag as usize];
            let term = if last != 0
                && index
                    .terms
                    .values
                    .get(last as usize)
                    .is_some_and(|(_, v)| &**v == value)
            {
                last
            } else {
                index
                    .terms
                    .lookup(tag, value)
                    .ok_or_else(|| format!("the {tag:?} index has no term {value:?} (seq {seq})"))?
            };
            self.last[tag as usize] = term;
            terms[tag as usize] = term;
        }
        Ok(terms)
    }

    /// Checks a run whose range the entries have covered.
    fn finish_run(&mut self) -> Result<(), String> {
        let Some(run) = self.runs.get(self.run_i).cloned() else {
            return Ok(());
        };
        let (first, end) = (run.footer.first, run.footer.end);
        let io = |e: std::io::Error| format!("reading {}: {e}", run.name);
        if !run.check_body().map_err(io)? {
            return Err(format!(
                "{}: its checksum does not match its bytes",
                run.name
            ));
        }
        let (mut n, mut sum, mut prev, mut sorted) = (0u64, 0u128, None, true);
        run.for_each_id(|id, seq| {
            sorted &= prev.is_none_or(|p| p < id) && (first..end).contains(&seq);
            prev = Some(id);
            n += 1;
            sum = sum.wrapping_add(id_digest(&id, seq));
        })
        .map_err(io)?;
        if !sorted || n != end - first || sum != self.ids_sum {
            return Err(format!(
                "{}: its id table does not hold exactly the ids of seqs {first}..{end}",
                run.name
            ));
        }
        let mut sum = 0u128;
        for (term, list) in run.lists() {
            let mut prev = None;
            run.for_each_posting(*list, |seq| {
                sorted &= prev.is_none_or(|p| p < seq) && (first..end).contains(&seq);
                prev = Some(seq);
                sum = sum.wrapping_add(posting_digest(*term, seq));
            })
            .map_err(io)?;
        }
        if !sorted || sum != self.postings_sum {
            return Err(format!(
                "{}: its posting lists do not list exactly the terms of seqs {first}..{end}",
                run.name
            ));
        }
        self.run_i += 1;
        self.ids_sum = 0;
        self.postings_sum = 0;
        Ok(())
    }

    /// Checks a tail event against the in-memory tail.
    fn check_tail(
        &mut self,
        index: &Index,
        seq: u64,
        e: &EntryView<'_>,
        terms: &[u32; TAGS],
    ) -> Result<(), String> {
        if seq < index.base {
            // Written out as a run since the check began: its id, looked up.
            return match index.seq_of(&e.id) {
                Ok(Some(s)) if s == seq => Ok(()),
                other => Err(format!(
                    "the id index maps event {} to {other:?}, not to this seq",
                    e.id
                )),
            };
        }
        let t = &index.tail;
        if t.times.get((seq - index.base) as usize) != Some(&e.event_time_ns) {
            return Err(format!("the index holds another event time for seq {seq}"));
        }
        let found = t.ids.get(&e.id).copied();
        if found != Some(seq) {
            return Err(format!(
                "the id index maps event {} to {found:?}, not to this seq",
                e.id
            ));
        }
        self.tail_ids += 1;
        self.tail_sum = self.tail_sum.wrapping_add(id_digest(&e.id, seq));
        for (tag, term) in Tag::ALL.into_iter().zip(terms) {
            if *term == 0 {
                continue;
            }
            let term = *term as usize;
            if self.cursors.len() <= term {
                self.cursors.resize(term + 1, 0);
            }
            let list = t.postings.get(term).map_or(&[][..], Vec::as_slice);
            if !advance(list, &mut self.cursors[term], seq) {
                return Err(format!(
                    "the {tag:?} index does not list seq {seq} under {:?} in order",
                    index.terms.values[term].1
                ));
            }
        }
        let stage = index.terms.stage_of(terms[Tag::Kind as usize]);
        if !advance(
            &t.stages[stage as usize],
            &mut self.stage_cursors[stage as usize],
            seq,
        ) {
            return Err(format!(
                "the stage index does not list seq {seq} under {} in order",
                stage.as_str()
            ));
        }
        Ok(())
    }
}

fn advance(list: &[u64], cursor: &mut usize, seq: u64) -> bool {
    let ok = list.get(*cursor) == Some(&seq);
    *cursor += 1;
    ok
}

impl mlaudit_store::IndexCheck for Checker<'_> {
    fn check(&mut self, seq: u64, e: &EntryView<'_>) -> Result<(), String> {
        let lock = self.index;
        let index = lock.read().map_err(|_| "index lock poisoned".to_owned())?;
        let terms = self.terms_of(&index, seq, e)?;
        let in_runs = self.runs.get(self.run_i).cloned();
        if in_runs.is_none() {
            // The tail first: its lookups name the first seq an id disagrees at.
            self.check_tail(&index, seq, e, &terms)?;
        }
        let rec = self.record(seq, index.len())?;
        if rec.id != e.id || rec.time_ns != e.event_time_ns || rec.terms != terms {
            return Err(format!(
                "index.bin holds another id, event time or terms for seq {seq}"
            ));
        }
        if let Some(run) = in_runs {
            self.ids_sum = self.ids_sum.wrapping_add(id_digest(&e.id, seq));
            let stage = index.terms.stage_of(terms[Tag::Kind as usize]);
            let stage_term = STAGE_TERM + stage as u32;
            for t in terms.into_iter().filter(|t| *t != 0).chain([stage_term]) {
                self.postings_sum = self.postings_sum.wrapping_add(posting_digest(t, seq));
            }
            if seq + 1 == run.footer.end {
                drop(index);
                self.finish_run()?;
            }
        }
        Ok(())
    }

    fn checks_ids(&self) -> bool {
        true
    }

    fn finish(&mut self, n: u64) -> Result<(), (Option<u64>, String)> {
        if let Some(run) = self.runs.get(self.run_i) {
            return Err((
                None,
                format!("{} covers seqs beyond the log's {n} events", run.name),
            ));
        }
        let index = self
            .index
            .read()
            .map_err(|_| (None, "index lock poisoned".to_owned()))?;
        let t = &index.tail;
        let (mut count, mut sum) = (0u64, 0u128);
        for (id, &seq) in &t.ids {
            if seq < n {
                count += 1;
                sum = sum.wrapping_add(id_digest(id, seq));
            }
        }
        if count != self.tail_ids || sum != self.tail_sum {
            return Err((
                None,
                format!(
                    "the id index holds {count} ids from seq {} below seq {n}, which are not the entries' ids",
                    index.base
                ),
            ));
        }
        let below = |list: &[u64]| list.partition_point(|s| *s < n);
        for (term, list) in t.postings.iter().enumerate().skip(1) {
            if self.cursors.get(term).copied().unwrap_or(0) != below(list) {
                let (tag, value) = &index.terms.values[term];
                return Err((
                    None,
                    format!("the {tag:?} index lists events under {value:?} that do not carry it"),
                ));
            }
        }
        for (stage, list) in t.stages.iter().enumerate() {
            if self.stage_cursors[stage] != below(list) {
                return Err((
                    None,
                    format!(
                        "the stage index lists events under {} that are not of that stage",
                        Stage::ALL[stage].as_str()
                    ),
                ));
            }
        }
        Ok(())
    }
}
