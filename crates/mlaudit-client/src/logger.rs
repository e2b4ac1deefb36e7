//! [`AuditLogger`]: the caller's side. `log()` never blocks and never fails.
//!
//! **Paths an event takes.** `log()` samples (predictions only), stamps the time, and pushes
//! the event onto a bounded queue (a `VecDeque` behind a mutex: the lock is held for a push).
//! The background sender (`sender.rs`) takes it from there. If the queue is full, the caller —
//! still holding the queue lock, then taking the spool lock — moves every queued event into
//! the spool, appends its own, and switches the logger to spooling: disk work on the caller's
//! thread (buffered writes, no fsync), but never a wait for the network.
//!
//! **Order.** Events one thread logs reach the server in the order it logged them: the queue
//! and the spool are FIFOs; the spool lock is only ever taken while holding the queue lock
//! (lock order: queue, then spool) by whoever moves queued events into the spool, so events
//! enter the spool in queue order; a batch the sender took off the queue and then failed to
//! deliver is older than anything spilled after it, and is put *ahead* of the spool
//! (`Spool::prepend`); the logger leaves spooling mode only when the spool is empty (checked
//! under both locks), when everything still queued is newer than everything delivered. Flush
//! and shutdown markers stay in the queue when events are spilled around them: a marker means
//! "everything before me is sent or spooled".

use crate::checkpoints::Witness;
use crate::encode::{encode_event, Ids};
use crate::event::Event;
use crate::sampling::{keeps, Sampling};
use crate::sender::SenderLoop;
use crate::spool::{Spool, MAX_RECORD_BYTES};
use crate::stats::{Counters, Stats};
use crate::transport::Transport;
use crate::Actor;
use std::collections::VecDeque;
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

/// Why a logger could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StartError {
    /// The spool directory cannot be opened, read or locked.
    #[error("spool {dir}: {source}")]
    Spool {
        dir: PathBuf,
        source: std::io::Error,
    },
    /// Another logger (in this or another process) has the spool directory (still, after
    /// half a second of waiting for it).
    #[error("spool {0} is in use by another logger")]
    SpoolInUse(PathBuf),
    /// A setting is out of range.
    #[error("{0}")]
    Config(String),
    /// The background thread could not be started.
    #[error("cannot start the sender thread: {0}")]
    Thread(std::io::Error),
}

/// Why [`AuditLogger::flush`] returned before everything was delivered.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum FlushError {
    /// The timeout passed first. With `durable`, everything logged before the flush is
    /// delivered or on the spool on disk (it will be sent when the server is back, by this
    /// logger or by the next one on the same spool); without, some of it was still in memory.
    #[error("not everything was delivered in time ({})", if *durable { "the rest is on the spool on disk" } else { "some is still in memory" })]
    Timeout { durable: bool },
    /// The sender thread is gone (it panicked).
    #[error("the logger's sender thread has stopped")]
    Stopped,
}

/// How far a flush has got, as the sender reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Phase {
    /// Everything before the flush is delivered or durably spooled.
    Durable,
    /// Everything before the flush is delivered.
    Delivered,
}

/// What travels on the queue.
/// (Events travel unboxed: an allocation per `log()` would cost more than copying them.)
#[derive(Debug)]
#[allow(clippy::large_enum_variant)]
pub(crate) enum Msg {
    Event(Event),
    Flush(std::sync::mpsc::Sender<Phase>),
    Shutdown(Option<Instant>),
}

/// How long `start` waits for the spool directory's lock before answering `SpoolInUse`. A
/// dropped logger releases the lock at once, unless another thread of the process is forking
/// a child at that moment: the child holds a copy of the lock's descriptor (an `flock` is
/// released only when every copy is closed) until it execs, for a few milliseconds at most.
const SPOOL_LOCK_GRACE: Duration = Duration::from_millis(500);

/// Most slots a queue buffer reserves up front (more are allocated as the queue grows).
const PREALLOCATED_SLOTS: usize = 1 << 16;

/// An empty queue buffer whose reserved slots are already in memory. `with_capacity` only
/// reserves address space: the first push into each 4 KiB page would take a page fault on
/// the caller's thread (1-2 µs on a VM; a slot is 424 bytes, so about one `log()` call in ten
/// until both buffers had been filled once, i.e. for the first 2 × capacity calls). Writing
/// every slot once here moves those faults to the logger's start. There are two such buffers
/// (the callers' and the sender's, swapped), resident from the start: ~4 MiB each at the
/// default capacity of 10,000, at most ~26.5 MiB each (65,536 slots; a larger queue grows
/// beyond that as it fills).
pub(crate) fn prefaulted_queue(capacity: usize) -> VecDeque<Msg> {
    let slots = capacity.min(PREALLOCATED_SLOTS);
    let mut q = VecDeque::with_capacity(slots);
    q.extend(std::iter::repeat_with(|| Msg::Shutdown(None)).take(slots));
    q.clear();
    q
}

/// The spool and the id source of the paths that write to it.
#[derive(Debug)]
pub(crate) struct SpoolSide {
    pub(crate) spool: Spool,
    pub(crate) ids: Ids,
}

/// The queue behind [`Shared::queue`].
#[derive(Debug, Default)]
pub(crate) struct Queue {
    pub(crate) items: VecDeque<Msg>,
    /// Events in `items` (markers do not count against the capacity).
    pub(crate) events: usize,
    /// The sender is waiting for work (callers wake it only when that matters).
    pub(crate) sender_waiting: bool,
}

/// State shared by the callers and the sender.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) queue: Mutex<Queue>,
    /// Wakes the sender: a marker was queued, the queue is half full, or it overflowed.
    pub(crate) wake: Condvar,
    pub(crate) capacity: usize,
    /// Set when the spool holds events not yet delivered; changed only under both locks.
    pub(crate) spooling: AtomicBool,
    pub(crate) spool: Mutex<SpoolSide>,
    pub(crate) counters: Counters,
    pub(crate) actor: Actor,
    pub(crate) spool_max_bytes: u64,
    /// Set by `close()`/`Drop` at once (the queued marker may sit behind a batch in flight):
    /// the sender gives up on the network at this instant and spools what it holds.
    pub(crate) shutdown_at: Mutex<Option<Instant>>,
    /// The spool directory's lock file, held while the logger lives.
    pub(crate) _lock: std::fs::File,
}

impl Shared {
    pub(crate) fn queue(&self) -> MutexGuard<'_, Queue> {
        self.queue
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Lock the queue first (see the module docs).
    pub(crate) fn spool(&self) -> MutexGuard<'_, SpoolSide> {
        // A panic while holding the lock leaves the spool as consistent as any crash would.
        self.spool
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Encodes the events among `msgs` onto `records`, in order, and returns the markers
    /// among them, in order.
    pub(crate) fn encode_events(
        &self,
        msgs: impl IntoIterator<Item = Msg>,
        ids: &mut Ids,
        records: &mut Vec<Vec<u8>>,
    ) -> VecDeque<Msg> {
        let mut markers = VecDeque::new();
        for msg in msgs {
            match msg {
                Msg::Event(e) => records.push(encode_event(e, &self.actor, ids)),
                marker => markers.push_back(marker),
            }
        }
        markers
    }

    /// Takes out the records the spool cannot hold (over [`MAX_RECORD_BYTES`]; the server's
    /// own limit per event is far lower, so they could never be delivered): counted as
    /// rejected and logged.
    pub(crate) fn drop_oversize(&self, records: &mut Vec<Vec<u8>>) {
        let before = records.len();
        records.retain(|r| r.len() <= MAX_RECORD_BYTES);
        let removed = (before - records.len()) as u64;
        if removed > 0 {
            Counters::add(&self.counters.rejected, removed);
            tracing::error!(
                events = removed,
                limit_bytes = MAX_RECORD_BYTES,
                "mlaudit: REJECTED audit events too large to spool or send"
            );
        }
    }

    /// Moves every queued event (then `last`, if any) into the spool, in order, leaving the
    /// markers queued, and switches to spooling. Call with both locks held.
    pub(crate) fn spill(&self, q: &mut Queue, side: &mut SpoolSide, last: Option<Event>) {
        let mut records = Vec::with_capacity(q.events + 1);
        // Drained, not replaced: the callers go on pushing into the same (touched) capacity;
        // an empty `VecDeque` would be regrown by doubling, copying on the caller's thread.
        let markers = self.encode_events(q.items.drain(..), &mut side.ids, &mut records);
        q.items.extend(markers);
        q.events = 0;
        if let Some(e) = last {
            records.push(encode_event(e, &self.actor, &mut side.ids));
        }
        self.drop_oversize(&mut records);
        let wanted = records.len() as u64;
        let stored = side
            .spool
            .append(records.iter().map(Vec::as_slice))
            .unwrap_or_else(|e| {
                tracing::error!(error = %e, "mlaudit: cannot write to the spool");
                0
            });
        Counters::add(&self.counters.spooled, stored);
        if stored < wanted {
            Counters::add(&self.counters.dropped, wanted - stored);
            tracing::error!(dropped = wanted - stored, limit_bytes = self.spool_max_bytes, "mlaudit: audit events DROPPED: the spool is at its disk limit and the server cannot be reached");
        }
        self.spooling.store(true, Ordering::Release);
    }
}

/// Settings of a logger; see [`AuditLogger::builder`].
#[derive(Clone, Debug)]
pub struct Builder {
    url: String,
    token: String,
    actor: Actor,
    spool_dir: PathBuf,
    pub(crate) queue_capacity: usize,
    pub(crate) max_batch: usize,
    pub(crate) linger: Duration,
    pub(crate) timeout: Duration,
    pub(crate) direct_attempts: u32,
    pub(crate) backoff_base: Duration,
    pub(crate) backoff_max: Duration,
    spool_max_bytes: u64,
    sampling: Sampling,
    verifier: Option<mlaudit_core::note::NoteVerifier>,
}

impl Builder {
    /// The on-disk spool's directory (default `./mlaudit-spool`). One logger at a time may
    /// use a directory; a later logger on it delivers what an earlier one left.
    pub fn spool_dir(mut self, dir: impl Into<PathBuf>) -> Builder {
        self.spool_dir = dir.into();
        self
    }

    /// How many events the in-memory queue holds (default 10,000) before `log()` spools.
    /// Two buffers of up to 65,536 slots of 424 bytes each are allocated and written when
    /// the logger starts (about 8 MiB resident at the default), so that `log()` never takes
    /// a first-touch page fault in them.
    pub fn queue_capacity(mut self, n: usize) -> Builder {
        self.queue_capacity = n;
        self
    }

    /// Most events per request (default 1,000; the server's default limit is 10,000).
    pub fn max_batch(mut self, n: usize) -> Builder {
        self.max_batch = n;
        self
    }

    /// How long a partial batch waits for more events (default 20 ms).
    pub fn linger(mut self, d: Duration) -> Builder {
        self.linger = d;
        self
    }

    /// Timeout of one HTTP request (default 10 s).
    pub fn timeout(mut self, d: Duration) -> Builder {
        self.timeout = d;
        self
    }

    /// Attempts at a batch before it goes to the spool (default 3), and the backoff between
    /// attempts: exponential from `base`, capped at `max`, with full jitter (defaults 50 ms and
    /// 5 s). While the server stays unreachable the spool is retried with the same backoff.
    pub fn retries(mut self, attempts: u32, base: Duration, max: Duration) -> Builder {
        self.direct_attempts = attempts;
        self.backoff_base = base;
        self.backoff_max = max;
        self
    }

    /// The spool's disk limit (default 1 GiB). Past it events are dropped, counted and logged
    /// at error level.
    pub fn spool_max_bytes(mut self, n: u64) -> Builder {
        self.spool_max_bytes = n;
        self
    }

    /// The log's verifier key (`<name>+<key id>+<base64>`): the checkpoints the logger
    /// receives are then checked for their signature too, not only for consistency.
    pub fn verifier_key(mut self, key: &str) -> Result<Builder, StartError> {
        let key = mlaudit_core::note::NoteVerifier::parse(key)
            .map_err(|e| StartError::Config(format!("verifier key: {e}")))?;
        self.verifier = Some(key);
        Ok(self)
    }

    /// The per-model sampling policy (default: keep every prediction).
    pub fn sampling(mut self, sampling: Sampling) -> Builder {
        self.sampling = sampling;
        self
    }

    /// Opens the spool and starts the sender thread. Events a previous logger left in the
    /// spool are delivered first.
    pub fn start(self) -> Result<AuditLogger, StartError> {
        if self.queue_capacity == 0 || self.max_batch == 0 || self.direct_attempts == 0 {
            return Err(StartError::Config(
                "queue_capacity, max_batch and retry attempts must be at least 1".into(),
            ));
        }
        let dir = self.spool_dir.clone();
        let io = |source| StartError::Spool {
            dir: dir.clone(),
            source,
        };
        crate::spool::private_dir(&dir).map_err(io)?;
        let lock = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(crate::spool::FILE_MODE)
            .open(dir.join("lock"))
            .map_err(io)?;
        let lock_deadline = Instant::now() + SPOOL_LOCK_GRACE;
        loop {
            match lock.try_lock() {
                Ok(()) => break,
                Err(std::fs::TryLockError::WouldBlock) if Instant::now() < lock_deadline => {
                    std::thread::sleep(Duration::from_millis(10))
                }
                Err(std::fs::TryLockError::WouldBlock) => return Err(StartError::SpoolInUse(dir)),
                Err(std::fs::TryLockError::Error(e)) => return Err(io(e)),
            }
        }
        let (spool, opened) = Spool::open(&dir, self.spool_max_bytes).map_err(io)?;
        if opened.torn_bytes > 0 {
            tracing::warn!(
                bytes = opened.torn_bytes,
                "mlaudit: cut a torn record off the spool's end (a crash while it was written)"
            );
        }
        if opened.corrupt_bytes > 0 {
            tracing::error!(
                bytes = opened.corrupt_bytes,
                "mlaudit: spool records failed their checksum and cannot be sent"
            );
        }
        if opened.pending > 0 {
            tracing::info!(
                events = opened.pending,
                "mlaudit: delivering events a previous logger left in the spool"
            );
        }
        let shared = Arc::new(Shared {
            queue: Mutex::new(Queue {
                items: prefaulted_queue(self.queue_capacity),
                ..Queue::default()
            }),
            wake: Condvar::new(),
            capacity: self.queue_capacity,
            spooling: AtomicBool::new(opened.pending > 0),
            spool: Mutex::new(SpoolSide {
                spool,
                ids: Ids::default(),
            }),
            counters: Counters::default(),
            actor: self.actor.clone(),
            spool_max_bytes: self.spool_max_bytes,
            shutdown_at: Mutex::new(None),
            _lock: lock,
        });
        let transport =
            Transport::for_url(&self.url, &self.token, self.timeout).map_err(StartError::Config)?;
        let witness = Witness::open(&dir, self.verifier.clone());
        let sender = SenderLoop::new(shared.clone(), transport, witness, &self);
        let thread = std::thread::Builder::new()
            .name("mlaudit-logger".into())
            .spawn(move || sender.run())
            .map_err(StartError::Thread)?;
        Ok(AuditLogger {
            shared,
            thread: Some(thread),
            sampling: self.sampling,
        })
    }
}

/// A non-blocking audit logger: see the crate docs.
#[derive(Debug)]
pub struct AuditLogger {
    shared: Arc<Shared>,
    thread: Option<std::thread::JoinHandle<()>>,
    sampling: Sampling,
}

/// How long [`Drop`] lets a logger try to deliver what it still holds.
pub const DROP_TIMEOUT: Duration = Duration::from_secs(5);

impl AuditLogger {
    /// Settings for a logger that sends to the server at `url` (e.g. `http://127.0.0.1:8080`)
    /// with a writer `token`; `actor` is every event's actor unless the event names its own.
    pub fn builder(url: impl Into<String>, token: impl Into<String>, actor: Actor) -> Builder {
        Builder {
            url: url.into(),
            token: token.into(),
            actor,
            spool_dir: PathBuf::from("mlaudit-spool"),
            queue_capacity: 10_000,
            max_batch: 1_000,
            linger: Duration::from_millis(20),
            timeout: Duration::from_secs(10),
            direct_attempts: 3,
            backoff_base: Duration::from_millis(50),
            backoff_max: Duration::from_secs(5),
            spool_max_bytes: 1 << 30,
            sampling: Sampling::default(),
            verifier: None,
        }
    }

    /// Records an event: samples it (predictions only), stamps its time if it has none, and
    /// queues it. Never waits for the network and never fails; when the queue is full the
    /// event (and everything queued before it) goes to the spool on disk.
    //
    // `#[inline]` (into the caller's code), with the rare paths (a rejected time, a spill) out
    // of line in `#[cold]` functions: a `log()` called now and then runs with its code out of
    // the caches, and fetching that code is most of what it costs then (BENCHMARKS.md).
    #[inline]
    pub fn log(&self, mut event: Event) {
        if event.kind.starts_with("prediction.") {
            let rate = self.sampling.rate_for(event.subject.model.as_deref());
            if rate < 1.0
                && event
                    .subject
                    .request
                    .as_deref()
                    .is_some_and(|r| !keeps(r, rate))
            {
                Counters::add(&self.shared.counters.sampled_out, 1);
                return;
            }
            match &mut event.prediction {
                Some(p) => p.sample_rate = Some(rate),
                None => drop(event.attributes.insert("sample_rate".into(), rate.into())),
            }
        }
        match event.time {
            None => event.time = Some(SystemTime::now()),
            Some(t) if crate::encode::unix_nanos(t).is_none() => return self.reject_time(&event),
            Some(_) => {}
        }
        let mut q = self.shared.queue();
        if q.events < self.shared.capacity {
            q.items.push_back(Msg::Event(event));
            q.events += 1;
            if q.sender_waiting && q.events == self.shared.capacity.div_ceil(2) {
                self.shared.wake.notify_one();
            }
            return;
        }
        self.spill_from_log(q, event);
    }

    /// The queue is full: `event` and everything queued go to the spool, on this thread.
    #[cold]
    #[inline(never)]
    fn spill_from_log(&self, mut q: MutexGuard<'_, Queue>, event: Event) {
        let mut side = self.shared.spool();
        self.shared.spill(&mut q, &mut side, Some(event));
        drop(side);
        drop(q);
        self.shared.wake.notify_one();
    }

    #[cold]
    #[inline(never)]
    fn reject_time(&self, event: &Event) {
        Counters::add(&self.shared.counters.rejected, 1);
        tracing::error!(kind = %event.kind, "mlaudit: REJECTED an audit event whose time is outside the years 1677-2262");
    }

    fn push_marker(&self, marker: Msg) {
        self.shared.queue().items.push_back(marker);
        self.shared.wake.notify_one();
    }

    /// Waits until everything logged before this call is delivered, for at most `timeout`.
    pub fn flush(&self, timeout: Duration) -> Result<(), FlushError> {
        let deadline = Instant::now().checked_add(timeout);
        let (reply, phases) = std::sync::mpsc::channel();
        self.push_marker(Msg::Flush(reply));
        let mut durable = false;
        loop {
            let wait = deadline.map_or(Duration::from_secs(3600), |d| {
                d.saturating_duration_since(Instant::now())
            });
            match phases.recv_timeout(wait) {
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) if deadline.is_none() => continue,
                Ok(Phase::Delivered) => return Ok(()),
                Ok(Phase::Durable) => durable = true,
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                    return Err(FlushError::Timeout { durable })
                }
                Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                    return Err(FlushError::Stopped)
                }
            }
        }
    }

    /// The counters so far.
    pub fn stats(&self) -> Stats {
        self.shared.counters.snapshot()
    }

    /// Events on the spool not yet acknowledged.
    pub fn spooled_pending(&self) -> u64 {
        self.shared.spool().spool.pending()
    }

    /// Stops the logger: delivers what it holds for at most `timeout`, spools (durably) what
    /// it could not deliver, and returns the final counters. No request starts after the
    /// deadline and none is given longer than the time left, but a request already in flight
    /// when `close` is called runs to its own timeout (the builder's `timeout`, 10 s by
    /// default) if the server does not answer.
    pub fn close(mut self, timeout: Duration) -> Stats {
        self.stop(timeout);
        self.stats()
    }

    fn stop(&mut self, timeout: Duration) {
        let Some(thread) = self.thread.take() else {
            return;
        };
        // No deadline (a timeout too large for an Instant): deliver everything, however long.
        let deadline = Instant::now().checked_add(timeout);
        *self
            .shared
            .shutdown_at
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = deadline;
        self.push_marker(Msg::Shutdown(deadline));
        if thread.join().is_err() {
            tracing::error!("mlaudit: the logger's sender thread panicked");
        }
    }
}

impl Drop for AuditLogger {
    /// A logger dropped without [`AuditLogger::close`] closes with [`DROP_TIMEOUT`].
    fn drop(&mut self) {
        self.stop(DROP_TIMEOUT);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(i: usize) -> Msg {
        Msg::Event(Event::prediction_served(
            "m",
            "1",
            format!("r{i}"),
            serde_json::json!({}),
            serde_json::json!({}),
        ))
    }

    /// A spill (the queue full) leaves the callers' buffer with its capacity, and the markers
    /// queued among the events, in order: a fresh `VecDeque` would be regrown by doubling,
    /// copying up to megabytes inside `log()`.
    #[test]
    fn a_spill_keeps_the_queue_buffer_and_its_markers() {
        let dir = std::env::temp_dir().join(format!("mlaudit-client-spill-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        // Port 9 (discard) on loopback: nothing listens, so nothing is delivered.
        let logger = AuditLogger::builder("http://127.0.0.1:9", "t", crate::Actor::service("test"))
            .spool_dir(&dir)
            .queue_capacity(100)
            .linger(Duration::from_secs(60))
            .timeout(Duration::from_millis(100))
            .start()
            .unwrap();
        {
            let shared = &logger.shared;
            let mut q = shared.queue(); // the sender cannot swap buffers while this is held
            let capacity = q.items.capacity();
            assert!(
                capacity >= 100,
                "the queue buffer is reserved up front ({capacity})"
            );
            let (first, _first_phases) = std::sync::mpsc::channel();
            let (second, second_phases) = std::sync::mpsc::channel();
            for i in 0..50 {
                q.items.push_back(event(i));
            }
            q.items.push_back(Msg::Flush(first));
            q.items.push_back(Msg::Flush(second));
            for i in 50..60 {
                q.items.push_back(event(i));
            }
            q.events = 60;
            let mut side = shared.spool();
            shared.spill(
                &mut q,
                &mut side,
                Some(Event::prediction_served(
                    "m",
                    "1",
                    "last",
                    serde_json::json!({}),
                    serde_json::json!({}),
                )),
            );
            assert_eq!(q.items.capacity(), capacity, "a spill keeps the buffer");
            assert_eq!(q.events, 0);
            assert_eq!(q.items.len(), 2, "the markers stay queued");
            let (Msg::Flush(_), Msg::Flush(tail)) = (&q.items[0], &q.items[1]) else {
                panic!("the markers are not the two flushes")
            };
            tail.send(Phase::Durable).unwrap();
            assert!(
                second_phases.try_recv().is_ok(),
                "the markers keep their order"
            );
        }
        assert_eq!(logger.stats().spooled, 61, "every event went to the spool");
        logger.close(Duration::from_millis(200));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
