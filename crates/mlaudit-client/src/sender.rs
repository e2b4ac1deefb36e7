//! The background sender: batches queued events, sends them, retries, and drains the spool.
//!
//! Two modes (`Shared::spooling`):
//! - **direct** — the spool is empty. Batches come off the queue (up to `max_batch`; an idle
//!   sender looks again every `linger`, or when the queue is half full) and are sent, with up to `direct_attempts` tries.
//!   A batch that still fails is put ahead of the spool and the mode becomes spooling.
//! - **spooling** — everything queued is moved to the spool tail (fsync'd once per round),
//!   and batches are read from the spool head, sent, and consumed only once the server
//!   acknowledged them, with exponential backoff and full jitter between failures. When the
//!   spool is empty (checked under its lock) the mode returns to direct.
//!
//! Flush markers travel the queue with the events, so a flush is answered once everything
//! before it is durable (phase `Durable`) and delivered (`Delivered`). A shutdown marker
//! makes the loop deliver what it can until its deadline, then spool the rest and stop.

use crate::checkpoints::Witness;
use crate::encode::{encode_event, encoded_id, Ids};
use crate::logger::{Builder, Msg, Phase, Shared};
use crate::spool::Pos;
use crate::stats::Counters;
use crate::transport::{Outcome, Transport};
use std::sync::atomic::Ordering;
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

/// Most payload bytes read from the spool for one request (the server's default body limit
/// is 16 MiB).
const MAX_BATCH_BYTES: usize = 8 << 20;
/// Least time between two warnings about the same kind of failure.
const WARN_EVERY: Duration = Duration::from_secs(10);

/// Exponential backoff with full jitter.
#[derive(Debug)]
struct Backoff {
    base: Duration,
    max: Duration,
    failures: u32,
    until: Option<Instant>,
    rng: u64,
}

impl Backoff {
    fn delay(&mut self) -> Duration {
        // xorshift64*: jitter only, not security.
        self.rng ^= self.rng >> 12;
        self.rng ^= self.rng << 25;
        self.rng ^= self.rng >> 27;
        let r = self.rng.wrapping_mul(0x2545_f491_4f6c_dd1d);
        let cap = self
            .base
            .saturating_mul(1u32 << self.failures.min(20))
            .min(self.max);
        cap.mul_f64((r >> 11) as f64 / (1u64 << 53) as f64)
    }

    fn failed(&mut self) -> Duration {
        let d = self.delay();
        self.failures = self.failures.saturating_add(1);
        self.until = Some(Instant::now() + d);
        d
    }

    fn reset(&mut self) {
        self.failures = 0;
        self.until = None;
    }
}

/// The sender thread's state.
#[derive(Debug)]
pub(crate) struct SenderLoop {
    shared: Arc<Shared>,
    transport: Transport,
    ids: Ids,
    max_batch: usize,
    linger: Duration,
    direct_attempts: u32,
    backoff: Backoff,
    /// Flushes answered `Durable`, waiting for the spool to drain.
    waiting: Vec<mpsc::Sender<Phase>>,
    /// Set once a shutdown marker was handled (with its deadline, if any).
    shutdown: Option<Option<Instant>>,
    /// The configured timeout of one request.
    timeout: Duration,
    /// The spool head being sent: what is left of it, where it ends, how many records it had.
    inflight: Option<(Vec<Vec<u8>>, Pos, u64)>,
    /// Messages taken off the queue in one swap, not yet handled (its capacity is swapped
    /// back to the callers next time).
    taken: std::collections::VecDeque<Msg>,
    /// Events read from the spool per request.
    spool_batch: usize,
    last_warning: Option<Instant>,
    /// The checkpoint kept, and the check of each new one.
    witness: Witness,
}

impl SenderLoop {
    pub(crate) fn new(
        shared: Arc<Shared>,
        transport: Transport,
        witness: Witness,
        b: &Builder,
    ) -> SenderLoop {
        let mut seed = [0u8; 8];
        let _ = getrandom::getrandom(&mut seed);
        SenderLoop {
            shared,
            transport,
            ids: Ids::default(),
            max_batch: b.max_batch,
            linger: b.linger,
            direct_attempts: b.direct_attempts,
            backoff: Backoff {
                base: b.backoff_base,
                max: b.backoff_max,
                failures: 0,
                until: None,
                rng: u64::from_le_bytes(seed) | 1,
            },
            waiting: Vec::new(),
            shutdown: None,
            timeout: b.timeout,
            inflight: None,
            spool_batch: b.max_batch,
            taken: crate::logger::prefaulted_queue(b.queue_capacity),
            last_warning: None,
            witness,
        }
    }

    pub(crate) fn run(mut self) {
        loop {
            let stop = if self.shared.spooling.load(Ordering::Acquire) {
                self.spool_round()
            } else {
                self.direct_round()
            };
            if stop {
                break;
            }
        }
        self.finish();
    }

    /// The instant to give up on the network: set by `close()`/`Drop` (at once, through
    /// `Shared`, or by the marker). `None`: no deadline.
    fn deadline(&self) -> Option<Instant> {
        let shared = *self
            .shared
            .shutdown_at
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        shared.or(self.shutdown.flatten())
    }

    fn past_deadline(&self) -> bool {
        self.deadline().is_some_and(|d| Instant::now() >= d)
    }

    // --- direct mode ---

    fn direct_round(&mut self) -> bool {
        {
            let mut q = self.shared.queue();
            if q.items.is_empty() {
                q.sender_waiting = true;
                q = self
                    .shared
                    .wake
                    .wait_timeout(q, self.linger)
                    .map(|(q, _)| q)
                    .unwrap_or_else(|p| p.into_inner().0);
                q.sender_waiting = false;
            }
            if self.shared.spooling.load(Ordering::Acquire) {
                return false; // a caller spilled the queue: what is left is newer than the spool
            }
            // O(1) under the lock: the callers keep pushing into the spare's capacity.
            std::mem::swap(&mut q.items, &mut self.taken);
            q.events = 0;
        }
        while !self.taken.is_empty() {
            if self.shared.spooling.load(Ordering::Acquire) {
                self.spool_taken(Vec::new());
                break;
            }
            let mut batch = Vec::new();
            while batch.len() < self.max_batch {
                match self.taken.front() {
                    Some(Msg::Event(_)) => {
                        if let Some(Msg::Event(e)) = self.taken.pop_front() {
                            batch.push(encode_event(e, &self.shared.actor, &mut self.ids));
                        }
                    }
                    _ => break,
                }
            }
            if !batch.is_empty() {
                if let Err(undelivered) = self.deliver_direct(batch) {
                    // Older than everything still taken, which is older than the spool.
                    self.spool_taken(undelivered);
                    break;
                }
            } else if let Some(marker) = self.taken.pop_front() {
                self.handle_markers(vec![marker]);
            }
        }
        if self.shutdown.is_some() && !self.shared.spooling.load(Ordering::Acquire) {
            return self.shared.queue().events == 0 || self.past_deadline();
        }
        false
    }

    /// Puts `records` and then every event still taken ahead of the spool, in that order: a
    /// caller spilled the queue while this sender held them, or a batch failed, and they are
    /// older than anything spilled. The markers among them then count as spooled.
    fn spool_taken(&mut self, mut records: Vec<Vec<u8>>) {
        // Drained, not taken: its capacity goes back to the callers at the next swap.
        let markers = self
            .shared
            .encode_events(self.taken.drain(..), &mut self.ids, &mut records);
        self.prepend(records);
        self.handle_markers(markers);
    }

    /// Sends a batch taken off the queue, with up to `direct_attempts` tries; gives back what
    /// could not be delivered.
    fn deliver_direct(&mut self, mut records: Vec<Vec<u8>>) -> Result<(), Vec<Vec<u8>>> {
        let mut attempts = 0;
        loop {
            if self.post(&mut records).is_ok() {
                self.backoff.reset();
                return Ok(());
            }
            attempts += 1;
            if attempts >= self.direct_attempts || self.past_deadline() {
                return Err(records);
            }
            Counters::add(&self.shared.counters.retried, records.len() as u64);
            let pause = self.backoff.failed();
            std::thread::sleep(self.deadline().map_or(pause, |d| {
                pause.min(d.saturating_duration_since(Instant::now()))
            }));
        }
    }

    /// Puts records ahead of the spool, durably, and switches to spooling.
    fn prepend(&mut self, mut records: Vec<Vec<u8>>) {
        self.shared.drop_oversize(&mut records);
        if records.is_empty() {
            return;
        }
        let mut side = self.shared.spool();
        match side.spool.prepend(&records) {
            Ok(()) => Counters::add(&self.shared.counters.spooled, records.len() as u64),
            Err(e) => {
                Counters::add(&self.shared.counters.dropped, records.len() as u64);
                tracing::error!(error = %e, events = records.len(), "mlaudit: audit events DROPPED: the server is unreachable and the spool cannot be written");
            }
        }
        self.shared.spooling.store(true, Ordering::Release);
    }

    // --- spooling mode ---

    fn spool_round(&mut self) -> bool {
        let markers: Vec<Msg> = {
            let mut q = self.shared.queue();
            let mut side = self.shared.spool();
            // Queued events are newer than the spool and may wait in memory while it drains
            // (as in direct mode); they go to disk when the server is failing, the queue is
            // half full, or the logger is stopping.
            let failing = self.backoff.until.is_some();
            let markers_queued = q.items.len() > q.events;
            if q.events > 0
                && (failing
                    || markers_queued
                    || self.shutdown.is_some()
                    || q.events >= self.shared.capacity.div_ceil(2))
            {
                self.shared.spill(&mut q, &mut side, None);
            }
            let markers = if q.events == 0 {
                q.items.drain(..).collect()
            } else {
                Vec::new()
            };
            // The fsync under the spool lock only: callers pushing onto the queue never wait
            // for it (a caller spilling does, as it must, to stay behind these records).
            drop(q);
            if let Err(e) = side.spool.sync() {
                tracing::error!(error = %e, "mlaudit: cannot fsync the spool");
            }
            markers
        };
        self.handle_markers(markers);
        if self.past_deadline() {
            return true;
        }
        if let Some(until) = self.backoff.until {
            let now = Instant::now();
            if now < until {
                std::thread::sleep((until - now).min(Duration::from_millis(20)));
                return false;
            }
        }
        if self.inflight.is_none() {
            // Read under the spool lock alone; the queue lock (taken first, as always) only
            // to leave spooling mode.
            let mut side = self.shared.spool();
            match side.spool.read_head(self.spool_batch, MAX_BATCH_BYTES) {
                Ok(head) if head.records.is_empty() => {
                    let unreadable = side.spool.pending();
                    if unreadable > 0 {
                        // Records counted as pending that cannot be read back (damaged since
                        // they were written): report them lost rather than spin on them.
                        Counters::add(&self.shared.counters.dropped, unreadable);
                        tracing::error!(
                            events = unreadable,
                            "mlaudit: audit events LOST: spool records cannot be read back"
                        );
                        if let Err(e) = side.spool.consume(head.end, unreadable) {
                            tracing::error!(error = %e, "mlaudit: cannot move the spool's cursor");
                            self.backoff.failed();
                            return false;
                        }
                    }
                    drop(side);
                    let q = self.shared.queue();
                    let side = self.shared.spool();
                    // A caller may have spilled in between: leave only if still empty.
                    if side.spool.pending() == 0 {
                        self.shared.spooling.store(false, Ordering::Release);
                        drop(side);
                        drop(q);
                        for w in self.waiting.drain(..) {
                            let _ = w.send(Phase::Delivered);
                        }
                    }
                    return false;
                }
                Ok(head) => {
                    let count = head.records.len() as u64;
                    self.inflight = Some((head.records, head.end, count));
                }
                Err(e) => {
                    tracing::error!(error = %e, "mlaudit: cannot read the spool");
                    self.backoff.failed();
                    return false;
                }
            }
        }
        let Some((mut records, end, count)) = self.inflight.take() else {
            return false;
        };
        match self.post(&mut records) {
            Ok(()) => {
                self.backoff.reset();
                self.spool_batch = self.max_batch;
                if let Err(e) = self.shared.spool().spool.consume(end, count) {
                    tracing::error!(error = %e, "mlaudit: cannot move the spool's cursor (the batch will be sent again and answered as duplicate)");
                }
            }
            Err(()) => {
                Counters::add(&self.shared.counters.retried, records.len() as u64);
                self.backoff.failed();
                self.inflight = Some((records, end, count));
            }
        }
        false
    }

    // --- both ---

    /// Tries once to deliver every record: removes those the server acknowledged or refused
    /// as invalid, splits on 413. `Err` leaves the undelivered ones in `records`.
    fn post(&mut self, records: &mut Vec<Vec<u8>>) -> Result<(), ()> {
        let mut chunk = records.len();
        while !records.is_empty() {
            let n = chunk.min(records.len());
            // Never past the shutdown deadline: a server that accepts and never answers must
            // not hold up `close()`.
            let timeout = self.deadline().map_or(self.timeout, |d| {
                d.saturating_duration_since(Instant::now())
                    .min(self.timeout)
            });
            if timeout.is_zero() {
                return Err(());
            }
            match self.transport.send(&records[..n], timeout) {
                Outcome::Delivered {
                    duplicates,
                    checkpoint,
                } => {
                    Counters::add(&self.shared.counters.sent, n as u64);
                    Counters::add(&self.shared.counters.duplicates, duplicates);
                    records.drain(..n);
                    if let Some(note) = checkpoint {
                        self.witness.received(note);
                        self.witness
                            .check(&self.transport, &self.shared.counters, false);
                    }
                }
                Outcome::Invalid(mut invalid) => {
                    invalid.retain(|(i, _)| *i < n);
                    if invalid.is_empty() {
                        self.warn(
                            "the server answered 422 about events not in the batch",
                            true,
                        );
                        return Err(());
                    }
                    invalid.sort_by_key(|(i, _)| std::cmp::Reverse(*i));
                    invalid.dedup_by_key(|(i, _)| *i);
                    for (i, reason) in invalid {
                        let event = records.remove(i);
                        Counters::add(&self.shared.counters.rejected, 1);
                        tracing::error!(id = %encoded_id(&event), %reason, "mlaudit: the server REJECTED an audit event as invalid; it is not retried");
                    }
                }
                Outcome::TooLarge if n == 1 => {
                    let event = records.remove(0);
                    Counters::add(&self.shared.counters.rejected, 1);
                    tracing::error!(id = %encoded_id(&event), bytes = event.len(), "mlaudit: the server REJECTED an audit event over its body limit");
                }
                Outcome::TooLarge => chunk = n / 2,
                Outcome::Retry { reason, config } => {
                    self.warn(&reason, config);
                    return Err(());
                }
            }
        }
        Ok(())
    }

    fn warn(&mut self, reason: &str, config: bool) {
        if config {
            tracing::error!(%reason, "mlaudit: the server refuses the logger's requests; events are kept in the spool until this is fixed");
        } else if self.last_warning.is_none_or(|t| t.elapsed() >= WARN_EVERY) {
            self.last_warning = Some(Instant::now());
            tracing::warn!(%reason, "mlaudit: cannot reach the audit server; events are spooled and retried");
        }
    }

    fn handle_markers(&mut self, markers: impl IntoIterator<Item = Msg>) {
        for marker in markers {
            match marker {
                Msg::Flush(reply) => {
                    if self.shared.spooling.load(Ordering::Acquire) {
                        if let Err(e) = self.shared.spool().spool.sync() {
                            tracing::error!(error = %e, "mlaudit: cannot fsync the spool");
                            self.waiting.push(reply);
                            continue;
                        }
                        let _ = reply.send(Phase::Durable);
                        self.waiting.push(reply);
                    } else {
                        let _ = reply.send(Phase::Delivered);
                    }
                }
                Msg::Shutdown(deadline) => self.shutdown = Some(deadline),
                Msg::Event(_) => {}
            }
        }
    }

    /// On the way out: the last checkpoint received is checked, and whatever is still queued
    /// goes to the spool, durably.
    fn finish(&mut self) {
        if !self.past_deadline() {
            self.witness
                .check(&self.transport, &self.shared.counters, true);
        }
        let mut q = self.shared.queue();
        let mut side = self.shared.spool();
        if q.events > 0 {
            self.shared.spill(&mut q, &mut side, None);
        }
        if let Err(e) = side.spool.sync() {
            tracing::error!(error = %e, "mlaudit: cannot fsync the spool at shutdown");
        }
        let pending = side.spool.pending();
        if pending > 0 {
            tracing::warn!(events = pending, "mlaudit: logger stopped with events on the spool; the next logger on this spool directory delivers them");
        }
    }
}
