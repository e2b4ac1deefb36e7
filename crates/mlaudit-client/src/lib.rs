//! # mlaudit-client: the Rust SDK of mlaudit
//!
//! Logging an audit event from a model's serving path must cost almost nothing, must never
//! block or fail the prediction, and must not lose the event when the audit server is slow or
//! down. [`AuditLogger::log`] samples, stamps the time and puts the event on a bounded
//! in-memory queue — nothing else happens on the caller's thread. A background thread
//! batches (by count and by time), sends Protobuf batches (`POST /v1/events`), and retries with
//! exponential backoff and jitter. When the queue is full or the server cannot be reached,
//! events go to an append-only spool on disk (fsync'd in batches), drained in order once the
//! server is back — by this logger, or by the next one started on the same spool directory.
//!
//! ```no_run
//! use mlaudit_client::{Actor, AuditLogger, Event, Risk, Sampling};
//! use serde_json::json;
//! use std::time::Duration;
//!
//! let logger = AuditLogger::builder("http://127.0.0.1:8080", "mla_…", Actor::service("scoring-api"))
//!     .spool_dir("/var/lib/scoring-api/mlaudit-spool")
//!     .sampling(Sampling::new().model("credit-risk", Risk::High).model("churn", Risk::low(0.05)?))
//!     .start()?;
//! logger.log(
//!     Event::prediction_served("credit-risk", "7", "req-18842", json!({"income": 52000}), json!({"default": 0.03}))
//!         .confidence(0.97)
//!         .latency_ms(2.4),
//! );
//! logger.flush(Duration::from_secs(5))?;
//! let stats = logger.close(Duration::from_secs(5));
//! assert_eq!(stats.dropped, 0);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! **Guarantees.** Every event carries a UUID fixed before its first send, so a retry — after
//! a timeout, a crash, a restart on the same spool — is answered `duplicate` by the server and
//! stored once. Events one thread logs are delivered in the order it logged them (see the
//! `logger` and `sender` modules for why). Nothing is dropped unless the spool reaches its disk
//! limit ([`Stats::dropped`], logged at error level); events the server refuses as invalid are
//! counted in [`Stats::rejected`] and logged, never retried forever. Events held in memory
//! (the queue and the batch in flight) are lost if the process is killed; a clean
//! [`AuditLogger::close`] (or drop) delivers or spools them.
//!
//! **Queues.** With the feature `nats` (or `kafka`), the logger's URL may be a queue the
//! server consumes (`mlaudit serve --ingest`): `nats://HOST:4222/STREAM?subject=S` publishes
//! each event to JetStream with `Nats-Msg-Id` set to its id; `kafka://HOST:9092/TOPIC` produces
//! it with the id as the key (`acks=all`, idempotent producer). An event counts as delivered
//! once the queue acknowledged it, with the same spooling when the queue cannot be reached.
//! What the queue's acknowledgement promises is its own setting: see docs/QUEUES.md.

mod checkpoints;
mod encode;
mod event;
mod logger;
mod queue;
mod sampling;
mod sender;
mod spool;
mod stats;
mod transport;

pub use encode::encode_batch;
pub use event::{Actor, ActorKind, Event, Object, Sha256, Subject};
pub use logger::{AuditLogger, Builder, FlushError, StartError, DROP_TIMEOUT};
pub use sampling::{keeps, RateError, Risk, Sampling};
pub use stats::Stats;
