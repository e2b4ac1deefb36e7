//! The logger's counters.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// A snapshot of a logger's counters (all since it started).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Events the server acknowledged (stored, or already stored: see `duplicates`).
    pub sent: u64,
    /// Of `sent`, events the server already had (a retry of an event it had stored).
    pub duplicates: u64,
    /// Events written to the on-disk spool (queue full, or server unreachable).
    pub spooled: u64,
    /// Send attempts that failed and were tried again.
    pub retried: u64,
    /// Events lost because the spool reached its disk limit. Stays 0 otherwise; every drop is
    /// logged at error level.
    pub dropped: u64,
    /// Events the server refused as invalid (422); each is logged at error level with the reason.
    pub rejected: u64,
    /// Predictions left out by the sampling policy.
    pub sampled_out: u64,
    /// Checkpoints from the server that were not consistent with the one the logger kept (a
    /// rollback or a fork of the log); each is logged at error level.
    pub consistency_failures: u64,
}

#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) sent: AtomicU64,
    pub(crate) duplicates: AtomicU64,
    pub(crate) spooled: AtomicU64,
    pub(crate) retried: AtomicU64,
    pub(crate) dropped: AtomicU64,
    pub(crate) rejected: AtomicU64,
    pub(crate) sampled_out: AtomicU64,
    pub(crate) consistency_failures: AtomicU64,
}

impl Counters {
    pub(crate) fn add(counter: &AtomicU64, n: u64) {
        if n > 0 {
            counter.fetch_add(n, Relaxed);
        }
    }

    pub(crate) fn snapshot(&self) -> Stats {
        Stats {
            sent: self.sent.load(Relaxed),
            duplicates: self.duplicates.load(Relaxed),
            spooled: self.spooled.load(Relaxed),
            retried: self.retried.load(Relaxed),
            dropped: self.dropped.load(Relaxed),
            rejected: self.rejected.load(Relaxed),
            sampled_out: self.sampled_out.load(Relaxed),
            consistency_failures: self.consistency_failures.load(Relaxed),
        }
    }
}
