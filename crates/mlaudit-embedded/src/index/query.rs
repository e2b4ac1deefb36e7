//! Queries over the indexes: posting lists intersected run by run (on disk) and then over the
//! tail (in memory), event times read by seq, stopping at the query's limit.

use super::{Index, Tag, TAGS};
use crate::runs::{ListAt, Run, STAGE_TERM};
use mlaudit_store::Query;

/// Posting values read at a time from a run.
const CHUNK: u64 = 1024;

impl Index {
    /// Whether a query filters by a term or a stage (and so reads posting lists), rather than
    /// by time alone.
    pub fn uses_postings(q: &Query) -> bool {
        q.stage.is_some() || term_filters(q).iter().any(|(_, v)| v.is_some())
    }

    /// The term numbers a query's filters need, or `None` when a value is unknown (nothing can
    /// match).
    fn query_terms(&self, q: &Query) -> Option<Vec<u32>> {
        let mut terms = Vec::new();
        for (tag, value) in term_filters(q) {
            if let Some(v) = value {
                terms.push(self.terms.lookup(tag, v)?);
            }
        }
        if let Some(stage) = q.stage {
            terms.push(STAGE_TERM + stage as u32);
        }
        Some(terms)
    }

    /// Appends to `out` the seqs in `from..to` whose event time is within the query's bounds,
    /// until `out` holds `q.limit`; for time-only queries, which the caller runs one bounded
    /// window at a time so that no lock is held across a long scan. Runs whose times are all
    /// outside the bounds are skipped.
    pub fn scan_times(
        &self,
        q: &Query,
        from: u64,
        to: u64,
        out: &mut Vec<u64>,
    ) -> std::io::Result<()> {
        let to = to.min(self.len);
        let start = self.runs.partition_point(|r| r.footer.end <= from);
        for run in self.runs[start..]
            .iter()
            .take_while(|r| r.footer.first < to)
        {
            if outside(q, run) {
                continue;
            }
            for (a, b) in run.time_ranges(from, q.since_ns, q.until_ns) {
                let b = b.min(to);
                if a >= b {
                    continue;
                }
                let recs = self.files.records(a, b - a)?;
                for (s, rec) in (a..).zip(&recs) {
                    if out.len() >= q.limit {
                        return Ok(());
                    }
                    if in_time(q, rec.time_ns) {
                        out.push(s);
                    }
                }
            }
        }
        let start = from.max(self.base);
        for s in start..to {
            if out.len() >= q.limit {
                break;
            }
            if in_time(q, self.tail.times[(s - self.base) as usize]) {
                out.push(s);
            }
        }
        Ok(())
    }

    /// Evaluates a query that filters by a term or a stage ([`Index::uses_postings`]); never
    /// reads the log. Time-only queries go through [`Index::scan_times`].
    pub fn query(&self, q: &Query) -> std::io::Result<Vec<u64>> {
        match self.plan(q) {
            Some(plan) => plan.run(q),
            None => Ok(Vec::new()),
        }
    }

    /// What a query by term or stage needs from the index, taken under its lock: the runs
    /// (shared, immutable) and the tail's matches. [`QueryPlan::run`] then reads the runs
    /// without the lock, so that a query over millions of postings never keeps the writer
    /// from publishing. `None` when a value is unknown (nothing matches).
    pub fn plan(&self, q: &Query) -> Option<QueryPlan> {
        let terms = self.query_terms(q)?;
        let first = q.after_seq.map_or(0, |s| s.saturating_add(1));
        let mut tail = Vec::new();
        self.query_tail(q, &terms, first, &mut tail);
        let start = self.runs.partition_point(|r| r.footer.end <= first);
        Some(QueryPlan {
            runs: self.runs[start..].to_vec(),
            files: self.files.clone(),
            terms,
            first,
            tail,
        })
    }
}

/// A query by term or stage, ready to run without the index lock ([`Index::plan`]).
#[derive(Debug)]
pub struct QueryPlan {
    runs: Vec<std::sync::Arc<Run>>,
    files: super::Files,
    terms: Vec<u32>,
    first: u64,
    /// The tail's matches, after every run's.
    tail: Vec<u64>,
}

impl QueryPlan {
    /// The matching seqs, ascending, at most `q.limit`.
    pub fn run(self, q: &Query) -> std::io::Result<Vec<u64>> {
        let mut out = Vec::new();
        for run in &self.runs {
            if out.len() >= q.limit {
                return Ok(out);
            }
            if !outside(q, run) {
                self.query_run(q, run, &mut out)?;
            }
        }
        out.extend(self.tail.iter().take(q.limit.saturating_sub(out.len())));
        Ok(out)
    }

    /// Appends the run's matches from `first` on, until `out` holds `q.limit`.
    fn query_run(&self, q: &Query, run: &Run, out: &mut Vec<u64>) -> std::io::Result<()> {
        let (terms, first) = (&self.terms, self.first);
        let mut lists: Vec<ListAt> = Vec::with_capacity(terms.len());
        for t in terms {
            match run.list(*t) {
                Some(l) => lists.push(l),
                None => return Ok(()),
            }
        }
        lists.sort_by_key(|l| l.count);
        let mut others: Vec<Cursor<'_>> = lists[1..].iter().map(|l| Cursor::new(run, *l)).collect();
        let driver = lists[0];
        let ranges = if q.since_ns.is_some() || q.until_ns.is_some() {
            run.time_ranges(first, q.since_ns, q.until_ns)
        } else {
            vec![(first.max(run.footer.first), run.footer.end)]
        };
        for (a, b) in ranges {
            let mut i = run.seek(driver, a)?;
            while i < driver.count && out.len() < q.limit {
                let mut seqs = run.read_postings(driver, i, CHUNK)?;
                i += seqs.len() as u64;
                let past = seqs.partition_point(|s| *s < b);
                let done = past < seqs.len();
                seqs.truncate(past);
                let times = self.times_of(&seqs, q)?;
                for (seq, time) in seqs.iter().zip(times) {
                    if out.len() >= q.limit {
                        return Ok(());
                    }
                    if time.is_some_and(|t| in_time(q, t)) && all_contain(&mut others, *seq)? {
                        out.push(*seq);
                    }
                }
                if done {
                    break;
                }
            }
        }
        Ok(())
    }

    /// The event times of seqs below `base` (ascending), when the query bounds time; `Some(0)`
    /// placeholders otherwise. Close seqs are read together.
    fn times_of(&self, seqs: &[u64], q: &Query) -> std::io::Result<Vec<Option<i64>>> {
        if q.since_ns.is_none() && q.until_ns.is_none() {
            return Ok(vec![Some(0); seqs.len()]);
        }
        // A damaged run may list seqs out of order: bounds come from the values themselves.
        let (Some(lo), Some(hi)) = (seqs.iter().min(), seqs.iter().max()) else {
            return Ok(Vec::new());
        };
        if hi - lo < 4 * seqs.len() as u64 {
            let recs = self.files.records(*lo, hi - lo + 1)?;
            let time = |s: &u64| recs.get((s - lo) as usize).map(|r| r.time_ns);
            return Ok(seqs.iter().map(time).collect());
        }
        let mut out = Vec::with_capacity(seqs.len());
        for s in seqs {
            out.push(Some(self.files.records(*s, 1)?[0].time_ns));
        }
        Ok(out)
    }
}

impl Index {
    fn query_tail(&self, q: &Query, terms: &[u32], first: u64, out: &mut Vec<u64>) {
        let t = &self.tail;
        let empty: &[u64] = &[];
        let mut lists: Vec<&[u64]> = terms
            .iter()
            .map(|term| match term.checked_sub(STAGE_TERM) {
                Some(stage) => t.stages.get(stage as usize).map_or(empty, Vec::as_slice),
                None => t.postings.get(*term as usize).map_or(empty, Vec::as_slice),
            })
            .collect();
        lists.sort_by_key(|l| l.len());
        let Some((smallest, rest)) = lists.split_first() else {
            return;
        };
        let from = smallest.partition_point(|s| *s < first);
        for &seq in &smallest[from..] {
            if out.len() >= q.limit {
                break;
            }
            let time = t.times[(seq - self.base) as usize];
            if in_time(q, time) && rest.iter().all(|l| l.binary_search(&seq).is_ok()) {
                out.push(seq);
            }
        }
    }
}

/// A position in a run's posting list, for membership tests of ascending seqs.
struct Cursor<'a> {
    run: &'a Run,
    list: ListAt,
    /// Values `buf` hold, from list index `at`.
    buf: Vec<u64>,
}

impl<'a> Cursor<'a> {
    fn new(run: &'a Run, list: ListAt) -> Cursor<'a> {
        Cursor {
            run,
            list,
            buf: Vec::new(),
        }
    }

    /// Whether the list holds `seq`; calls come with ascending seqs.
    fn contains(&mut self, seq: u64) -> std::io::Result<bool> {
        if self.buf.last().is_none_or(|last| *last < seq) {
            let at = self.run.seek(self.list, seq)?;
            self.buf = self.run.read_postings(self.list, at, CHUNK)?;
        }
        Ok(self.buf.binary_search(&seq).is_ok())
    }
}

fn all_contain(cursors: &mut [Cursor<'_>], seq: u64) -> std::io::Result<bool> {
    for c in cursors {
        if !c.contains(seq)? {
            return Ok(false);
        }
    }
    Ok(true)
}

/// Whether every event time of a run is outside the query's bounds.
fn outside(q: &Query, run: &Run) -> bool {
    let f = run.footer;
    q.since_ns.is_some_and(|s| f.max_time < s) || q.until_ns.is_some_and(|u| f.min_time >= u)
}

/// A query's filters on indexed terms, each with the tag it looks up.
pub(super) fn term_filters(q: &Query) -> [(Tag, &Option<String>); TAGS] {
    [
        (Tag::Kind, &q.kind),
        (Tag::Actor, &q.actor),
        (Tag::Model, &q.model),
        (Tag::Version, &q.version),
        (Tag::Run, &q.run),
        (Tag::Dataset, &q.dataset),
        (Tag::Deployment, &q.deployment),
    ]
}

/// Whether an event time is within a query's bounds (`since` inclusive, `until` exclusive).
fn in_time(q: &Query, t: i64) -> bool {
    q.since_ns.is_none_or(|s| t >= s) && q.until_ns.is_none_or(|u| t < u)
}
