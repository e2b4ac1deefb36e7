//! The NATS JetStream consumer: a durable pull consumer on one stream.
//!
//! **Invariants:**
//! * A message is acknowledged only after its events are durable in the log (in the PostgreSQL
//!   mode, sequenced and covered by a signed checkpoint), or after it is durable in the
//!   dead-letter stream (JetStream acknowledged the dead-letter publish). A crash at any point
//!   therefore leaves the message to be redelivered, and a redelivered event is a duplicate
//!   the log already holds, not a second copy.
//! * A poison message never stalls the consumer: it goes to the dead letters and is
//!   acknowledged; the messages after it are stored as usual.
//! * A store failure is not the message's fault: the messages are left unacknowledged
//!   (negatively acknowledged, redelivered after a pause) and the consumer goes on.
//! * The consumer filters on its subject, so dead letters are never consumed again even when
//!   the stream's subjects cover the dead-letter subject.

use crate::sink::{decode_all, store_messages, Decoded, Fate};
use crate::stats::Stats;
use crate::url::NatsSource;
use crate::{decode, QueueError, Settings};
use async_nats::jetstream::{self, consumer, stream, AckKind};
use futures_util::{FutureExt, StreamExt};
use mlaudit_store::Store;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// How long JetStream waits for an acknowledgement before redelivering a message: after a
/// crash, the messages the dead process held come back this much later.
const ACK_WAIT: Duration = Duration::from_secs(15);

/// One connection: sets up the stream, the dead-letter stream and the consumer, then stores
/// batches until `stop` or a failure.
pub(crate) async fn session(
    source: &NatsSource,
    store: &Arc<dyn Store>,
    stats: &Arc<Stats>,
    settings: &Settings,
    mut stop: watch::Receiver<bool>,
) -> Result<(), QueueError> {
    let watcher = stats.clone();
    // A reconnection makes the source ready again only once this session set up its consumer.
    let set_up = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let consuming = set_up.clone();
    let client = async_nats::ConnectOptions::new()
        .name("mlaudit")
        .connection_timeout(Duration::from_secs(5))
        .event_callback(move |event| {
            let (stats, consuming) = (watcher.clone(), consuming.clone());
            async move {
                match event {
                    async_nats::Event::Connected
                        if consuming.load(std::sync::atomic::Ordering::Acquire) =>
                    {
                        stats.set_connected(true)
                    }
                    async_nats::Event::Disconnected | async_nats::Event::Closed => {
                        stats.set_connected(false)
                    }
                    _ => {}
                }
            }
        })
        .connect(source.server.as_str())
        .await
        .map_err(|e| crate::queue_error(&format!("connecting to {}", stats.source()), e))?;
    let js = jetstream::new(client);
    let stream = js
        .get_or_create_stream(stream::Config {
            name: source.stream.clone(),
            subjects: vec![source.subject.clone()],
            storage: stream::StorageType::File,
            ..Default::default()
        })
        .await
        .map_err(|e| crate::queue_error(&format!("opening stream {}", source.stream), e))?;
    let replicas = stream.cached_info().config.num_replicas;
    if replicas < 3 {
        tracing::warn!(stream = %source.stream, replicas, "an acknowledged publish to this stream is on disk only after the server's sync_interval (2 minutes by default) unless the server syncs always; three replicas or sync_interval: always are needed for no acknowledged event lost (docs/QUEUES.md)");
    }
    dead_letter_stream(&js, source).await?;
    let batch = settings.batch.max(1);
    let consumer: consumer::PullConsumer = stream
        .get_or_create_consumer(
            &source.consumer,
            consumer::pull::Config {
                durable_name: Some(source.consumer.clone()),
                filter_subject: source.subject.clone(),
                ack_policy: consumer::AckPolicy::Explicit,
                ack_wait: ACK_WAIT,
                max_ack_pending: i64::try_from(batch * 2).unwrap_or(i64::MAX),
                ..Default::default()
            },
        )
        .await
        .map_err(|e| crate::queue_error(&format!("opening consumer {}", source.consumer), e))?;
    let mut messages = consumer
        .stream()
        .max_messages_per_batch(batch)
        .max_bytes_per_batch(crate::MAX_BATCH_BYTES)
        .heartbeat(Duration::from_secs(5))
        .messages()
        .await
        .map_err(|e| crate::queue_error("pulling messages", e))?;
    set_up.store(true, std::sync::atomic::Ordering::Release);
    stats.set_connected(true);
    tracing::info!(source = %stats.source(), consumer = %source.consumer, subject = %source.subject, "consuming");
    let principal: Arc<str> = format!("nats:{}", source.stream).into();
    // Two stages: this task takes and decodes batch k+1 while the storer makes batch k
    // durable and acknowledges it (in order: one batch waits decoded at most).
    let (ready, mut to_store) = tokio::sync::mpsc::channel::<Batch>(1);
    let storer = {
        let (js, source, store, stats) = (js.clone(), source.clone(), store.clone(), stats.clone());
        let principal = principal.clone();
        let max_events = settings.max_events_per_message;
        tokio::spawn(async move {
            while let Some(batch) = to_store.recv().await {
                handle(&js, &source, &store, &stats, &principal, max_events, batch).await;
            }
        })
    };
    let outcome = take_batches(
        &mut messages,
        batch,
        &principal,
        settings,
        &ready,
        &mut stop,
    )
    .await;
    // Batches already taken are stored and acknowledged before the session ends.
    drop(ready);
    let _ = storer.await;
    outcome
}

/// Missed idle heartbeats in a row after which the session starts again.
const MAX_MISSED_HEARTBEATS: u32 = 3;

/// A batch of messages and their decoded events.
struct Batch {
    messages: Vec<jetstream::Message>,
    decoded: Vec<Decoded>,
}

/// Takes batches from the consumer and decodes them, until `stop` or a failure.
async fn take_batches(
    messages: &mut consumer::pull::Stream,
    batch: usize,
    principal: &Arc<str>,
    settings: &Settings,
    ready: &tokio::sync::mpsc::Sender<Batch>,
    stop: &mut watch::Receiver<bool>,
) -> Result<(), QueueError> {
    // Missed idle heartbeats in a row: the stream reports one whenever it was not polled for
    // two heartbeats (while a slow batch was stored), so only several in a row mean the
    // consumer is gone.
    let mut missed = 0;
    loop {
        // Pull only once the storer can take the batch: at most one batch waits decoded.
        let permit = tokio::select! {
            p = ready.reserve() => p.map_err(|_| QueueError::Queue("the storing task ended".into()))?,
            _ = stop.changed() => return Ok(()),
        };
        let first = tokio::select! {
            m = messages.next() => m,
            _ = stop.changed() => return Ok(()),
        };
        let first = match first {
            None => return Err(QueueError::Queue("the message stream ended".into())),
            Some(Err(e)) if e.kind() == consumer::pull::MessagesErrorKind::MissingHeartbeat => {
                missed += 1;
                if missed >= MAX_MISSED_HEARTBEATS {
                    return Err(crate::queue_error("pulling messages", e));
                }
                continue;
            }
            Some(Err(e)) => return Err(crate::queue_error("pulling messages", e)),
            Some(Ok(m)) => m,
        };
        missed = 0;
        let mut bytes = first.payload.len();
        let mut taken = vec![first];
        // Whatever else has already arrived joins this batch: while one batch is made
        // durable the next accumulates, so batches grow with the load.
        let mut failed = None;
        while taken.len() < batch && bytes < crate::MAX_BATCH_BYTES {
            match messages.next().now_or_never() {
                Some(Some(Ok(m))) => {
                    bytes += m.payload.len();
                    taken.push(m);
                }
                Some(Some(Err(e)))
                    if e.kind() == consumer::pull::MessagesErrorKind::MissingHeartbeat =>
                {
                    break
                }
                Some(Some(Err(e))) => {
                    failed = Some(crate::queue_error("pulling messages", e));
                    break;
                }
                Some(None) | None => break,
            }
        }
        let payloads: Vec<(bytes::Bytes, Option<String>)> = taken
            .iter()
            .map(|m| (m.payload.clone(), content_type(m).map(str::to_owned)))
            .collect();
        let (principal, max_events) = (principal.clone(), settings.max_events_per_message);
        let decoded = decode_all(taken.len(), move |i| {
            let (bytes, ct) = &payloads[i];
            decode::events(bytes, ct.as_deref(), &principal, max_events)
        })
        .await;
        permit.send(Batch {
            messages: taken,
            decoded,
        });
        if let Some(e) = failed {
            return Err(e);
        }
    }
}

/// The message's `Content-Type` header, if any.
fn content_type(message: &async_nats::Message) -> Option<&str> {
    message
        .headers
        .as_ref()
        .and_then(|h| h.get("Content-Type"))
        .map(|v| v.as_str())
}

/// Stores a batch and acknowledges each message once its fate is durable.
async fn handle(
    js: &jetstream::Context,
    source: &NatsSource,
    store: &Arc<dyn Store>,
    stats: &Arc<Stats>,
    principal: &str,
    max_events: usize,
    batch: Batch,
) {
    let Batch { messages, decoded } = batch;
    let messages = &messages[..];
    let decode = |i: usize| {
        let m = &messages[i];
        decode::events(&m.payload, content_type(m), principal, max_events)
    };
    // JetStream redelivers a message unacknowledged after `ACK_WAIT`; while an append takes
    // long (a PostgreSQL failover, a full disk) the messages are kept ours by progress acks.
    let storing = store_messages(store, decoded, decode);
    tokio::pin!(storing);
    let mut progress =
        tokio::time::interval_at(tokio::time::Instant::now() + ACK_WAIT / 3, ACK_WAIT / 3);
    let stored = loop {
        tokio::select! {
            outcome = &mut storing => break outcome,
            _ = progress.tick() => {
                for m in messages {
                    let _ = m.ack_with(AckKind::Progress).await;
                }
            }
        }
    };
    let fates = match stored {
        Ok(fates) => fates,
        Err(e) => {
            stats.error();
            tracing::warn!(source = %stats.source(), error = %e, messages = messages.len(), "cannot store; the messages will be redelivered");
            for m in messages {
                let _ = m.ack_with(AckKind::Nak(Some(Duration::from_secs(1)))).await;
            }
            return;
        }
    };
    let now = time::OffsetDateTime::now_utc();
    for (message, fate) in messages.iter().zip(fates) {
        match fate {
            Fate::Stored { new, duplicates } => stats.stored(1, new, duplicates),
            Fate::Poison(reason) => {
                if let Err(e) = dead_letter(js, source, stats, message, &reason).await {
                    stats.error();
                    tracing::warn!(source = %stats.source(), error = %e, "cannot write a dead letter; the message will be redelivered");
                    let _ = message
                        .ack_with(AckKind::Nak(Some(Duration::from_secs(1))))
                        .await;
                    continue;
                }
                stats.dead_lettered();
            }
        }
        if let Ok(info) = message.info() {
            stats.set_pending(info.pending);
            if let Ok(lag) = Duration::try_from(now - info.published) {
                stats.lag(lag);
            }
        }
        if let Err(e) = message.ack().await {
            // Durable already: a lost ack means a redelivery, which is a duplicate.
            tracing::debug!(error = %e, "ack failed");
        }
    }
}

/// Publishes a poison message to the dead-letter subject with why, and waits for JetStream to
/// have it.
async fn dead_letter(
    js: &jetstream::Context,
    source: &NatsSource,
    stats: &Stats,
    message: &jetstream::Message,
    reason: &str,
) -> Result<(), QueueError> {
    let reason = crate::one_line(reason, crate::MAX_REASON);
    tracing::info!(source = %stats.source(), subject = %message.subject, %reason, "dead letter");
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("Mlaudit-Dead-Letter-Reason", reason);
    headers.insert("Mlaudit-Source", stats.source());
    headers.insert("Mlaudit-Source-Subject", message.subject.as_str());
    if let Ok(info) = message.info() {
        let seq = info.stream_sequence.to_string();
        // The same message dead-lettered twice (its ack lost) is stored once.
        headers.insert("Nats-Msg-Id", format!("dead-{}-{seq}", source.stream));
        headers.insert("Mlaudit-Source-Sequence", seq);
    }
    if let Some(ct) = content_type(message) {
        headers.insert("Content-Type", ct);
    }
    let publish = |headers, payload| async move {
        js.publish_with_headers(source.dead_letter.clone(), headers, payload)
            .await
            .map_err(|e| e.to_string())?
            .await
            .map_err(|e| e.to_string())
    };
    match publish(headers.clone(), message.payload.clone()).await {
        Ok(_) => Ok(()),
        // The original with the headers is over the server's max_payload: the dead letter
        // keeps the reason, where the message was, and what its bytes were.
        Err(e) if e.contains("max payload") => {
            headers.insert("Mlaudit-Original-Omitted", crate::omitted(&message.payload));
            publish(headers, bytes::Bytes::new())
                .await
                .map(|_| ())
                .map_err(|e| crate::queue_error("publishing a dead letter", e))
        }
        Err(e) => Err(crate::queue_error("publishing a dead letter", e)),
    }
}

/// Makes sure a stream keeps the dead letters: one whose subjects cover the dead-letter
/// subject, else a new `<stream>_DEAD` (file storage).
async fn dead_letter_stream(
    js: &jetstream::Context,
    source: &NatsSource,
) -> Result<(), QueueError> {
    if js
        .stream_by_subject(source.dead_letter.clone())
        .await
        .is_ok()
    {
        return Ok(());
    }
    let name = format!("{}_DEAD", source.stream);
    js.get_or_create_stream(stream::Config {
        name: name.clone(),
        subjects: vec![source.dead_letter.clone()],
        storage: stream::StorageType::File,
        ..Default::default()
    })
    .await
    .map_err(|e| crate::queue_error(&format!("opening the dead-letter stream {name}"), e))?;
    Ok(())
}
