//! The Kafka transport (feature `kafka`): each event is produced to the topic with its id as
//! the key, by an idempotent producer with `acks=all`, and counts as delivered once the
//! brokers acknowledged it. That promises replication only with the topic's
//! `min.insync.replicas` at 2 or more (docs/QUEUES.md).

use super::{parse, CONTENT_TYPE};
use crate::encode::{batch_body, encoded_id};
use crate::transport::Outcome;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::ClientConfig;
use std::time::Duration;

/// A Kafka producer for the logger's topic.
pub(crate) struct Publisher {
    runtime: tokio::runtime::Runtime,
    producer: FutureProducer,
    topic: String,
}

impl std::fmt::Debug for Publisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Publisher")
            .field("topic", &self.topic)
            .finish_non_exhaustive()
    }
}

impl Publisher {
    pub(crate) fn new(url: &str, timeout: Duration) -> Result<Publisher, String> {
        let parts = parse(url)?;
        let runtime = super::runtime("Kafka")?;
        let timeout_ms = timeout.as_millis().clamp(1000, 300_000).to_string();
        let producer = ClientConfig::new()
            .set("bootstrap.servers", &parts.authority)
            .set("client.id", "mlaudit-client")
            .set("acks", "all")
            .set("enable.idempotence", "true")
            .set("message.timeout.ms", &timeout_ms)
            .create()
            .map_err(|e| format!("cannot create the Kafka producer: {e}"))?;
        Ok(Publisher {
            runtime,
            producer,
            topic: parts.name,
        })
    }

    pub(crate) fn send(&self, records: &[Vec<u8>], timeout: Duration) -> Outcome {
        let keyed: Vec<(String, Vec<u8>)> = records
            .iter()
            .map(|r| (encoded_id(r), batch_body(std::iter::once(r.as_slice()))))
            .collect();
        let produce_all = async {
            let mut pending = Vec::with_capacity(keyed.len());
            for (id, body) in &keyed {
                let headers = OwnedHeaders::new().insert(Header {
                    key: "content-type",
                    value: Some(CONTENT_TYPE),
                });
                let message = FutureRecord::to(&self.topic)
                    .key(id.as_str())
                    .payload(body.as_slice())
                    .headers(headers);
                // Enqueued at once (librdkafka batches them); the acknowledgements are
                // awaited together below.
                let delivery = self.producer.send_result(message).map_err(|(e, _)| e)?;
                pending.push(delivery);
            }
            for delivery in pending {
                match delivery.await {
                    Ok(Ok(_)) => {}
                    Ok(Err((e, _))) => return Err(e),
                    Err(_) => return Err(KafkaError::Canceled),
                }
            }
            Ok::<(), KafkaError>(())
        };
        match self
            .runtime
            .block_on(async { tokio::time::timeout(timeout, produce_all).await })
        {
            Ok(Ok(())) => Outcome::Delivered {
                duplicates: 0,
                checkpoint: None,
            },
            // Over the brokers' message size limit: the sender splits the batch and rejects
            // the event alone at fault, as for an HTTP 413.
            Ok(Err(e)) if e.rdkafka_error_code() == Some(RDKafkaErrorCode::MessageSizeTooLarge) => {
                Outcome::TooLarge
            }
            Ok(Err(e)) => Outcome::Retry {
                reason: format!("Kafka: {e}"),
                config: false,
            },
            Err(_) => Outcome::Retry {
                reason: format!(
                    "Kafka did not acknowledge within {} s",
                    timeout.as_secs_f64()
                ),
                config: false,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    //! Against librdkafka's mock cluster: no Kafka broker can be installed on the test machine.
    #![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests")]

    use crate::{Actor, AuditLogger, Event};
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::message::Headers;
    use rdkafka::mocking::MockCluster;
    use rdkafka::{ClientConfig, Message};
    use std::time::{Duration, Instant};

    #[test]
    fn the_logger_produces_one_keyed_message_per_event() {
        let cluster = MockCluster::new(3).unwrap();
        cluster.create_topic("audit.events", 2, 3).unwrap();
        let bootstrap = cluster.bootstrap_servers();
        let spool =
            std::env::temp_dir().join(format!("mlaudit-kafka-spool-{}", std::process::id()));
        let logger = AuditLogger::builder(
            format!("kafka://{bootstrap}/audit.events"),
            "",
            Actor::service("scorer"),
        )
        .spool_dir(&spool)
        .linger(Duration::from_millis(5))
        .timeout(Duration::from_secs(10))
        .start()
        .unwrap();
        for n in 0..50 {
            logger.log(Event::custom("queued").attribute("n", n));
        }
        logger.flush(Duration::from_secs(30)).unwrap();
        let stats = logger.close(Duration::from_secs(10));
        assert_eq!((stats.sent, stats.dropped), (50, 0), "{stats:?}");

        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &bootstrap)
            .set("group.id", "check")
            .set("auto.offset.reset", "earliest")
            .create()
            .unwrap();
        consumer.subscribe(&["audit.events"]).unwrap();
        let mut seen = std::collections::BTreeSet::new();
        let deadline = Instant::now() + Duration::from_secs(30);
        while seen.len() < 50 && Instant::now() < deadline {
            let Some(Ok(m)) = consumer.poll(Duration::from_millis(200)) else {
                continue;
            };
            let events = mlaudit_proto::decode::decode_batch(m.payload().unwrap()).unwrap();
            assert_eq!(events.len(), 1);
            let event: serde_json::Value = serde_json::from_str(&events[0]).unwrap();
            let key = std::str::from_utf8(m.key().unwrap()).unwrap();
            assert_eq!(event["id"], key);
            let ct = m.headers().unwrap().get(0);
            assert_eq!(
                (ct.key, ct.value),
                ("content-type", Some(&b"application/x-protobuf"[..]))
            );
            seen.insert(event["attributes"]["n"].as_u64().unwrap());
        }
        assert_eq!(seen, (0..50).collect());
        let _ = std::fs::remove_dir_all(&spool);
    }
}
