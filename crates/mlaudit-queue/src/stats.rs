//! What each consumer counts, for `/metrics` and `/readyz`: plain atomics, written by the
//! consumer and read by the server at any time.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

/// Upper bounds (seconds) of the end-to-end lag histogram: from the queue's receipt of a
/// message to its events being durable in the log.
pub const LAG_BOUNDS: [f64; 12] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0, 30.0,
];

/// One consumer's counters.
#[derive(Debug)]
pub struct Stats {
    source: String,
    connected: AtomicBool,
    messages: AtomicU64,
    events: AtomicU64,
    duplicates: AtomicU64,
    dead_letters: AtomicU64,
    errors: AtomicU64,
    pending: AtomicU64,
    lag_buckets: [AtomicU64; LAG_BOUNDS.len()],
    lag_count: AtomicU64,
    lag_sum_micros: AtomicU64,
}

/// A copy of a consumer's counters at one moment.
#[derive(Clone, Debug, PartialEq)]
pub struct Snapshot {
    /// The source's URL without credentials.
    pub source: String,
    /// Connected to the queue, and its consumer set up.
    pub connected: bool,
    /// Messages handled (stored, duplicate or dead-lettered) and acknowledged.
    pub messages: u64,
    /// Events the log did not hold before.
    pub events: u64,
    /// Events the log already held (redeliveries, republished events).
    pub duplicates: u64,
    pub dead_letters: u64,
    /// Failures to store or to reach the queue (each retried).
    pub errors: u64,
    /// Messages in the queue not yet acknowledged, as last reported by the queue.
    pub pending: u64,
    /// Cumulative counts per [`LAG_BOUNDS`] bound, then the count and the sum in seconds.
    pub lag_buckets: [u64; LAG_BOUNDS.len()],
    pub lag_count: u64,
    pub lag_sum: f64,
}

impl Stats {
    pub fn new(source: String) -> Stats {
        Stats {
            source,
            connected: AtomicBool::new(false),
            messages: AtomicU64::new(0),
            events: AtomicU64::new(0),
            duplicates: AtomicU64::new(0),
            dead_letters: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            pending: AtomicU64::new(0),
            lag_buckets: Default::default(),
            lag_count: AtomicU64::new(0),
            lag_sum_micros: AtomicU64::new(0),
        }
    }

    pub fn source(&self) -> &str {
        &self.source
    }

    pub fn connected(&self) -> bool {
        self.connected.load(Ordering::Relaxed)
    }

    pub(crate) fn set_connected(&self, up: bool) {
        self.connected.store(up, Ordering::Relaxed);
    }

    pub(crate) fn stored(&self, messages: u64, events: u64, duplicates: u64) {
        self.messages.fetch_add(messages, Ordering::Relaxed);
        self.events.fetch_add(events, Ordering::Relaxed);
        self.duplicates.fetch_add(duplicates, Ordering::Relaxed);
    }

    pub(crate) fn dead_lettered(&self) {
        self.messages.fetch_add(1, Ordering::Relaxed);
        self.dead_letters.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn error(&self) {
        self.errors.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn set_pending(&self, pending: u64) {
        self.pending.store(pending, Ordering::Relaxed);
    }

    /// Records one message's end-to-end lag.
    pub(crate) fn lag(&self, lag: Duration) {
        let secs = lag.as_secs_f64();
        for (bound, bucket) in LAG_BOUNDS.iter().zip(&self.lag_buckets) {
            if secs <= *bound {
                bucket.fetch_add(1, Ordering::Relaxed);
            }
        }
        self.lag_count.fetch_add(1, Ordering::Relaxed);
        let micros = u64::try_from(lag.as_micros()).unwrap_or(u64::MAX);
        self.lag_sum_micros.fetch_add(micros, Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> Snapshot {
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        Snapshot {
            source: self.source.clone(),
            connected: self.connected(),
            messages: get(&self.messages),
            events: get(&self.events),
            duplicates: get(&self.duplicates),
            dead_letters: get(&self.dead_letters),
            errors: get(&self.errors),
            pending: get(&self.pending),
            lag_buckets: std::array::from_fn(|i| get(&self.lag_buckets[i])),
            lag_count: get(&self.lag_count),
            lag_sum: get(&self.lag_sum_micros) as f64 / 1e6,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lag_buckets_are_cumulative() {
        let stats = Stats::new("s".into());
        stats.lag(Duration::from_millis(3));
        stats.lag(Duration::from_secs(2));
        let s = stats.snapshot();
        assert_eq!(s.lag_count, 2);
        assert_eq!(s.lag_buckets[0], 0); // 1 ms
        assert_eq!(s.lag_buckets[2], 1); // 5 ms
        assert_eq!(s.lag_buckets[9], 1); // 1 s
        assert_eq!(s.lag_buckets[10], 2); // 5 s
        assert!((s.lag_sum - 2.003).abs() < 1e-6);
    }
}
