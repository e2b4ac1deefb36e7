//! The Kafka consumer (cargo feature `kafka`): one member of a consumer group on one topic,
//! through librdkafka (bundled, built from source).
//!
//! **Invariants:**
//! * Offsets are stored (`enable.auto.offset.store=false`) only for messages whose events are
//!   durable in the log, or whose dead letter the dead-letter topic acknowledged; librdkafka
//!   commits stored offsets every second and when the consumer leaves the group. A crash or a
//!   rebalance therefore replays from the last durable message, and a replayed event is a
//!   duplicate the log already holds.
//! * Within a partition an offset is stored only if every earlier message of the partition is
//!   settled: when storing fails, or a dead letter cannot be written, the partition is rewound
//!   (`seek`) to the first unsettled message and nothing after it is stored.
//! * A poison message goes to the dead-letter topic and is settled; it never stalls its
//!   partition.

use crate::sink::{decode_all, store_messages, Fate};
use crate::stats::Stats;
use crate::url::KafkaSource;
use crate::{decode, QueueError, Settings};
use futures_util::FutureExt;
use mlaudit_store::Store;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::error::RDKafkaErrorCode;
use rdkafka::message::{Header, Headers, OwnedHeaders, OwnedMessage};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{ClientConfig, Message, Offset};
use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// How often the consumer checks the brokers and the lag.
const HEALTH_EVERY: Duration = Duration::from_secs(2);

/// The consumer's librdkafka settings.
pub fn consumer_config(source: &KafkaSource) -> ClientConfig {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", &source.brokers)
        .set("group.id", &source.group)
        .set("client.id", "mlaudit")
        .set("enable.auto.commit", "true")
        .set("auto.commit.interval.ms", "1000")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("enable.partition.eof", "false")
        .set("session.timeout.ms", "10000")
        // What librdkafka prefetches per partition, in KiB (its default is 64 MiB).
        .set("queued.max.messages.kbytes", "16384");
    config
}

/// The dead-letter producer: acknowledged by every in-sync replica, idempotent.
fn producer_config(source: &KafkaSource) -> ClientConfig {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", &source.brokers)
        .set("client.id", "mlaudit-dead-letters")
        .set("acks", "all")
        .set("enable.idempotence", "true")
        .set("message.timeout.ms", "30000");
    config
}

/// Aborts the health task when the session ends.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

pub(crate) async fn session(
    source: &KafkaSource,
    store: &Arc<dyn Store>,
    stats: &Arc<Stats>,
    settings: &Settings,
    mut stop: watch::Receiver<bool>,
) -> Result<(), QueueError> {
    let consumer: Arc<StreamConsumer> = Arc::new(
        consumer_config(source)
            .create()
            .map_err(|e| crate::queue_error("creating the consumer", e))?,
    );
    consumer
        .subscribe(&[&source.topic])
        .map_err(|e| crate::queue_error(&format!("subscribing to {}", source.topic), e))?;
    let producer: FutureProducer = producer_config(source)
        .create()
        .map_err(|e| crate::queue_error("creating the dead-letter producer", e))?;
    let _health = AbortOnDrop(tokio::spawn(watch_health(
        consumer.clone(),
        source.topic.clone(),
        stats.clone(),
    )));
    tracing::info!(source = %stats.source(), group = %source.group, "consuming");
    let principal: Arc<str> = format!("kafka:{}", source.topic).into();
    let batch = settings.batch.max(1);
    loop {
        let first = tokio::select! {
            m = consumer.recv() => m,
            _ = stop.changed() => return Ok(()),
        };
        let first = match first {
            Ok(m) => m.detach(),
            Err(e) => {
                // librdkafka reconnects by itself; its errors here are reports.
                stats.error();
                tracing::warn!(source = %stats.source(), error = %e, "kafka");
                tokio::time::sleep(Duration::from_millis(500)).await;
                continue;
            }
        };
        let mut bytes = first.payload().map_or(0, <[u8]>::len);
        let mut taken = vec![first];
        while taken.len() < batch && bytes < crate::MAX_BATCH_BYTES {
            match consumer.recv().now_or_never() {
                Some(Ok(m)) => {
                    bytes += m.payload().map_or(0, <[u8]>::len);
                    taken.push(m.detach());
                }
                Some(Err(_)) | None => break,
            }
        }
        handle(
            &consumer,
            &producer,
            source,
            store,
            stats,
            settings,
            &principal,
            taken.into(),
        )
        .await?;
    }
}

/// Checks the brokers and the lag of the assigned partitions every [`HEALTH_EVERY`].
async fn watch_health(consumer: Arc<StreamConsumer>, topic: String, stats: Arc<Stats>) {
    loop {
        let (c, t) = (consumer.clone(), topic.clone());
        match tokio::task::spawn_blocking(move || lag(&c, &t)).await {
            Ok(Ok(pending)) => {
                stats.set_connected(true);
                stats.set_pending(pending);
            }
            Ok(Err(e)) => {
                if stats.connected() {
                    tracing::warn!(source = %stats.source(), error = %e, "kafka brokers unreachable");
                }
                stats.set_connected(false);
            }
            Err(_) => stats.set_connected(false),
        }
        tokio::time::sleep(HEALTH_EVERY).await;
    }
}

/// Messages of the assigned partitions not yet consumed (after a metadata round trip that
/// proves the brokers answer).
fn lag(consumer: &StreamConsumer, topic: &str) -> rdkafka::error::KafkaResult<u64> {
    let timeout = Duration::from_secs(2);
    consumer.fetch_metadata(Some(topic), timeout)?;
    let mut pending = 0u64;
    for tp in consumer.position()?.elements() {
        let (low, high) = consumer.fetch_watermarks(tp.topic(), tp.partition(), timeout)?;
        let at = match tp.offset() {
            Offset::Offset(o) => o,
            _ => low,
        };
        pending += u64::try_from(high - at).unwrap_or(0);
    }
    Ok(pending)
}

fn content_type(message: &OwnedMessage) -> Option<&str> {
    let headers = message.headers()?;
    (0..headers.count()).find_map(|i| {
        let h = headers.get(i);
        if h.key.eq_ignore_ascii_case("content-type") {
            h.value.and_then(|v| std::str::from_utf8(v).ok())
        } else {
            None
        }
    })
}

/// Rewinds `message`'s partition to it, so that it and what follows are consumed again. If
/// that fails the session ends: the consumer leaves the group and its successor starts from
/// the committed offsets, which never passed `message`.
fn rewind(consumer: &StreamConsumer, message: &OwnedMessage) -> Result<(), QueueError> {
    let offset = Offset::Offset(message.offset());
    consumer
        .seek(
            message.topic(),
            message.partition(),
            offset,
            Duration::from_secs(5),
        )
        .map_err(|e| crate::queue_error(&format!("rewinding partition {}", message.partition()), e))
}

#[allow(
    clippy::too_many_arguments,
    reason = "one batch's context, passed once"
)]
async fn handle(
    consumer: &StreamConsumer,
    producer: &FutureProducer,
    source: &KafkaSource,
    store: &Arc<dyn Store>,
    stats: &Arc<Stats>,
    settings: &Settings,
    principal: &Arc<str>,
    batch: Arc<[OwnedMessage]>,
) -> Result<(), QueueError> {
    let max_events = settings.max_events_per_message;
    let decode_one = move |messages: &[OwnedMessage], who: &str, i: usize| {
        let m = &messages[i];
        decode::events(
            m.payload().unwrap_or_default(),
            content_type(m),
            who,
            max_events,
        )
    };
    // Validation is CPU work: on a blocking thread, which shares the batch.
    let (shared, who) = (batch.clone(), principal.clone());
    let decoded = decode_all(batch.len(), move |i| decode_one(&shared, &who, i)).await;
    let messages = &batch[..];
    let decode = |i: usize| decode_one(messages, principal, i);
    let fates = match store_messages(store, decoded, decode).await {
        Ok(fates) => fates,
        Err(e) => {
            stats.error();
            tracing::warn!(source = %stats.source(), error = %e, messages = messages.len(), "cannot store; the messages will be consumed again");
            let mut seen = BTreeSet::new();
            for m in messages {
                if seen.insert(m.partition()) {
                    rewind(consumer, m)?;
                }
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
            return Ok(());
        }
    };
    let now_ms = time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000;
    let mut blocked = BTreeSet::new();
    for (message, fate) in messages.iter().zip(fates) {
        if blocked.contains(&message.partition()) {
            continue;
        }
        match fate {
            Fate::Stored { new, duplicates } => stats.stored(1, new, duplicates),
            Fate::Poison(reason) => {
                if let Err(e) = dead_letter(producer, source, stats, message, &reason).await {
                    stats.error();
                    tracing::warn!(source = %stats.source(), error = %e, "cannot write a dead letter; the partition is consumed again from it");
                    rewind(consumer, message)?;
                    blocked.insert(message.partition());
                    continue;
                }
                stats.dead_lettered();
            }
        }
        if let Some(sent_ms) = message.timestamp().to_millis() {
            let ms = u64::try_from(now_ms - i128::from(sent_ms)).unwrap_or(0);
            stats.lag(Duration::from_millis(ms));
        }
        if let Err(e) =
            consumer.store_offset(message.topic(), message.partition(), message.offset())
        {
            // The partition was revoked meanwhile: its next owner replays from the committed
            // offset; the events are duplicates there.
            tracing::debug!(error = %e, "store_offset");
        }
    }
    Ok(())
}

/// Produces a poison message to the dead-letter topic with why, and waits for the brokers to
/// acknowledge it.
async fn dead_letter(
    producer: &FutureProducer,
    source: &KafkaSource,
    stats: &Stats,
    message: &OwnedMessage,
    reason: &str,
) -> Result<(), QueueError> {
    let reason = crate::one_line(reason, crate::MAX_REASON);
    tracing::info!(source = %stats.source(), partition = message.partition(), offset = message.offset(), %reason, "dead letter");
    let partition = message.partition().to_string();
    let offset = message.offset().to_string();
    let mut headers = OwnedHeaders::new()
        .insert(Header {
            key: "mlaudit-dead-letter-reason",
            value: Some(reason.as_str()),
        })
        .insert(Header {
            key: "mlaudit-source",
            value: Some(stats.source()),
        })
        .insert(Header {
            key: "mlaudit-source-partition",
            value: Some(partition.as_str()),
        })
        .insert(Header {
            key: "mlaudit-source-offset",
            value: Some(offset.as_str()),
        });
    if let Some(ct) = content_type(message) {
        headers = headers.insert(Header {
            key: "content-type",
            value: Some(ct),
        });
    }
    let payload = message.payload().unwrap_or_default();
    let (topic, key) = (source.dead_letter.as_str(), message.key());
    match produce(producer, topic, key, headers.clone(), payload).await {
        Ok(()) => Ok(()),
        // The original with the headers is over the brokers' message size limit: the dead
        // letter keeps the reason, where the message was, and what its bytes were.
        Err(e) if e.rdkafka_error_code() == Some(RDKafkaErrorCode::MessageSizeTooLarge) => {
            let omitted = crate::omitted(payload);
            let headers = headers.insert(Header {
                key: "mlaudit-original-omitted",
                value: Some(omitted.as_str()),
            });
            produce(producer, topic, key, headers, &[])
                .await
                .map_err(|e| crate::queue_error("producing a dead letter", e))
        }
        Err(e) => Err(crate::queue_error("producing a dead letter", e)),
    }
}

/// Produces one message and waits for the brokers' acknowledgement.
async fn produce(
    producer: &FutureProducer,
    topic: &str,
    key: Option<&[u8]>,
    headers: OwnedHeaders,
    payload: &[u8],
) -> Result<(), rdkafka::error::KafkaError> {
    let mut record = FutureRecord::<[u8], [u8]>::to(topic)
        .payload(payload)
        .headers(headers);
    if let Some(key) = key {
        record = record.key(key);
    }
    producer
        .send(record, Duration::from_secs(30))
        .await
        .map(|_| ())
        .map_err(|(e, _)| e)
}
