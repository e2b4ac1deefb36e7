//! mlaudit's queue consumers: events published to NATS JetStream (and, with the `kafka`
//! feature, Kafka) stored in the log, each message acknowledged only once what it holds is
//! durable.
//!
//! * [`url`] — the `--ingest` URLs.
//! * [`decode`] — a message's bytes (JSON, NDJSON or Protobuf) into validated events.
//! * [`sink`] — storing a batch of messages, telling poison messages from store failures.
//! * [`stats`] — each consumer's counters for `/metrics` and `/readyz`.
//! * `nats` — the JetStream durable pull consumer.
//! * `kafka` — the Kafka consumer-group member (cargo feature `kafka`).
//!
//! **Invariants** (each consumer module repeats those that are its own):
//! * Acknowledge after durable: a crash anywhere replays messages, never loses them; the log's
//!   dedupe on event ids makes a replayed event a duplicate, not a second copy.
//! * A message the log cannot take is poison: it goes to the dead letters with the reason and
//!   its original bytes and is counted; it never holds up the messages behind it.
//! * No failure stops a consumer for good: it reconnects and retries with a bounded pause.
//!
//! This crate depends on the store traits, the event model and the protobuf messages; it knows
//! nothing of HTTP.

pub mod decode;
#[cfg(feature = "kafka")]
pub mod kafka;
mod nats;
pub mod sink;
pub mod stats;
pub mod url;

/// The librdkafka binding this build consumes Kafka through, for programs that configure
/// clients or stand up librdkafka's mock cluster to match it.
#[cfg(feature = "kafka")]
pub use rdkafka;
pub use stats::{Snapshot, Stats};
pub use url::{IngestUrl, KafkaSource, NatsSource, UrlError};

use mlaudit_store::Store;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// A consumer's failure (each is retried; none is final).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum QueueError {
    #[error("{0}")]
    Queue(String),
    #[error("kafka:// needs a build with the `kafka` feature (cargo build --features kafka)")]
    KafkaNotBuilt,
}

/// How consumers batch and what they accept.
#[derive(Clone, Copy, Debug)]
pub struct Settings {
    /// Most messages stored in one append.
    pub batch: usize,
    /// Most events one message may hold (more makes it poison).
    pub max_events_per_message: usize,
}

impl Default for Settings {
    fn default() -> Settings {
        Settings {
            batch: 1000,
            max_events_per_message: 10_000,
        }
    }
}

/// The running consumers of one server.
#[derive(Debug)]
pub struct Consumers {
    stop: watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    stats: Vec<Arc<Stats>>,
}

impl Consumers {
    /// Starts one consumer per source on the current tokio runtime. Sources are checked first:
    /// nothing starts if one cannot be consumed by this build.
    pub fn start(
        sources: &[IngestUrl],
        store: Arc<dyn Store>,
        settings: Settings,
    ) -> Result<Consumers, QueueError> {
        let kafka = sources.iter().any(|s| matches!(s, IngestUrl::Kafka(_)));
        if kafka && !cfg!(feature = "kafka") {
            return Err(QueueError::KafkaNotBuilt);
        }
        let (stop, watch) = watch::channel(false);
        let mut tasks = Vec::new();
        let mut stats = Vec::new();
        for source in sources {
            let counters = Arc::new(Stats::new(source.to_string()));
            stats.push(counters.clone());
            let (store, stop) = (store.clone(), watch.clone());
            let task = match source.clone() {
                IngestUrl::Nats(nats) => tokio::spawn(async move {
                    keep_running(&counters, stop, |stop| {
                        nats::session(&nats, &store, &counters, &settings, stop)
                    })
                    .await
                }),
                #[cfg(feature = "kafka")]
                IngestUrl::Kafka(kafka) => tokio::spawn(async move {
                    keep_running(&counters, stop, |stop| {
                        kafka::session(&kafka, &store, &counters, &settings, stop)
                    })
                    .await
                }),
                #[cfg(not(feature = "kafka"))]
                IngestUrl::Kafka(_) => return Err(QueueError::KafkaNotBuilt),
            };
            tasks.push(task);
        }
        Ok(Consumers { stop, tasks, stats })
    }

    /// Each consumer's counters, in the order of the sources.
    pub fn stats(&self) -> Vec<Arc<Stats>> {
        self.stats.clone()
    }

    /// Stops taking messages and waits (at most `grace`) for the batches being stored to be
    /// acknowledged. A batch cut short is redelivered at the next start.
    pub async fn stop(self, grace: Duration) {
        let _ = self.stop.send(true);
        let all = futures_util::future::join_all(self.tasks);
        let _ = tokio::time::timeout(grace, all).await;
    }
}

/// `text` on one line (control characters as spaces), cut to at most `max` bytes: for a
/// message header.
pub(crate) fn one_line(text: &str, max: usize) -> String {
    let mut line: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if line.len() > max {
        let mut end = max;
        while !line.is_char_boundary(end) {
            end -= 1;
        }
        line.truncate(end);
    }
    line
}

/// What a dead letter says of original bytes it cannot carry (over the queue's message size
/// limit once the headers are added): their length and SHA-256.
pub(crate) fn omitted(bytes: &[u8]) -> String {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(bytes);
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    format!("{} bytes, sha256 {hex}", bytes.len())
}

/// Most payload bytes a consumer takes into one batch (besides [`Settings::batch`] messages);
/// also what the NATS consumer asks of JetStream in one pull.
pub(crate) const MAX_BATCH_BYTES: usize = 16 << 20;

/// Most bytes of a reason in a dead-letter header.
pub(crate) const MAX_REASON: usize = 2000;

/// A failure of the queue client, saying what was being done.
pub(crate) fn queue_error(what: &str, e: impl std::fmt::Display) -> QueueError {
    QueueError::Queue(format!("{what}: {e}"))
}

/// The first pause before a consumer starts again after a failure; it doubles up to
/// [`MAX_BACKOFF`], and starts over after a session that lasted a while.
const FIRST_BACKOFF: Duration = Duration::from_millis(200);
const MAX_BACKOFF: Duration = Duration::from_secs(10);

/// Runs `session` until it ends cleanly (`stop` turned true), starting it again after each
/// failure: a consumer never stops for good.
pub(crate) async fn keep_running<F, Fut>(
    stats: &Stats,
    mut stop: watch::Receiver<bool>,
    mut session: F,
) where
    F: FnMut(watch::Receiver<bool>) -> Fut,
    Fut: std::future::Future<Output = Result<(), QueueError>>,
{
    let mut backoff = FIRST_BACKOFF;
    loop {
        let started = std::time::Instant::now();
        let outcome = session(stop.clone()).await;
        stats.set_connected(false);
        match outcome {
            Ok(()) => return,
            Err(e) => {
                stats.error();
                tracing::warn!(source = %stats.source(), error = %e, retry_in_s = backoff.as_secs_f64(), "queue consumer failed; starting again");
            }
        }
        if started.elapsed() > MAX_BACKOFF * 6 {
            backoff = FIRST_BACKOFF;
        }
        tokio::select! {
            () = tokio::time::sleep(backoff) => {}
            _ = stop.changed() => return,
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}
