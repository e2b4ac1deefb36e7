//! The Kafka consumer against librdkafka's mock cluster (`rdkafka::mocking::MockCluster`): no
//! Kafka broker can be installed on the test machine, and the mock cluster implements the
//! protocol librdkafka speaks, consumer groups and offset commits included. Run with
//! `cargo test -p mlaudit-queue --features kafka`.

#![cfg(feature = "kafka")]
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test fails loudly on any unexpected error"
)]

mod support;

use mlaudit_queue::{Consumers, IngestUrl, Settings};
use mlaudit_store::{LogReader, Store};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Header, Headers, OwnedHeaders};
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{DefaultProducerContext, FutureProducer, FutureRecord};
use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::{assert_each_once, event, temp_store, wait_for, FailingStore, Next};

async fn produce(producer: &FutureProducer, topic: &str, messages: &[(String, String)]) {
    let mut pending = Vec::new();
    for (key, body) in messages {
        let headers = OwnedHeaders::new().insert(Header {
            key: "content-type",
            value: Some("application/json"),
        });
        let record = FutureRecord::to(topic)
            .key(key)
            .payload(body)
            .headers(headers);
        pending.push(producer.send_result(record).map_err(|(e, _)| e).unwrap());
    }
    for p in pending {
        p.await.unwrap().map_err(|(e, _)| e).unwrap();
    }
}

/// The distinct messages of the dead-letter topic: (reason header, bytes), read until
/// `expected` distinct ones are in or 30 s passed. A dead letter is written at least once (a
/// partition replayed after a commit failed dead-letters its poison message again), so
/// repeats — the same source partition and offset — count once.
fn dead_letters(bootstrap: &str, topic: &str, expected: usize) -> Vec<(String, Vec<u8>)> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", "dead-letter-reader")
        .set("auto.offset.reset", "earliest")
        .create()
        .unwrap();
    consumer.subscribe(&[topic]).unwrap();
    let mut out = std::collections::BTreeMap::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while out.len() < expected && Instant::now() < deadline {
        if let Some(Ok(m)) = consumer.poll(Duration::from_millis(200)) {
            let headers = m.headers().unwrap();
            let header = |key: &str| {
                (0..headers.count())
                    .map(|i| headers.get(i))
                    .find(|h| h.key == key)
                    .and_then(|h| h.value)
                    .map(|v| String::from_utf8_lossy(v).into_owned())
                    .unwrap_or_default()
            };
            let source = (
                header("mlaudit-source-partition"),
                header("mlaudit-source-offset"),
            );
            let letter = (
                header("mlaudit-dead-letter-reason"),
                m.payload().unwrap_or_default().to_vec(),
            );
            out.insert(source, letter);
        }
    }
    out.into_values().collect()
}

/// Waits (60 s at most, on a blocking thread) until the group's committed offset of every
/// partition of `topic` is the partition's end: a new member of the group would find nothing
/// to replay. Called while a member runs: "every event stored" comes before "every message
/// settled" when a rebalance made the member consume a partition again from its committed
/// offset (the replayed messages are duplicates, settled and committed in turn).
async fn all_committed(bootstrap: &str, group: &str, topic: &'static str, partitions: i32) {
    let (bootstrap, group) = (bootstrap.to_owned(), group.to_owned());
    tokio::task::spawn_blocking(move || {
        assert_all_committed(&bootstrap, &group, topic, partitions)
    })
    .await
    .unwrap();
}

fn assert_all_committed(bootstrap: &str, group: &str, topic: &str, partitions: i32) {
    let reader: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", group)
        .create()
        .unwrap();
    let mut wanted = TopicPartitionList::new();
    for p in 0..partitions {
        wanted.add_partition(topic, p);
    }
    let timeout = Duration::from_secs(10);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let committed = reader.committed_offsets(wanted.clone(), timeout).unwrap();
        let behind: Vec<(i32, Offset, i64)> = committed
            .elements()
            .iter()
            .filter_map(|e| {
                let (_, end) = reader
                    .fetch_watermarks(topic, e.partition(), timeout)
                    .unwrap();
                (e.offset() != Offset::Offset(end)).then_some((e.partition(), e.offset(), end))
            })
            .collect();
        if behind.is_empty() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "partitions not committed to their end (partition, committed, end): {behind:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// A mock cluster of `brokers` brokers with `topic` in `partitions` partitions and its
/// dead-letter topic `<topic>.dead`, each replicated on every broker, and an idempotent
/// producer acknowledged by all replicas.
fn mock_cluster(
    brokers: i32,
    topic: &str,
    partitions: i32,
) -> (MockCluster<'static, DefaultProducerContext>, FutureProducer) {
    let cluster = MockCluster::new(brokers).unwrap();
    cluster.create_topic(topic, partitions, brokers).unwrap();
    cluster
        .create_topic(&format!("{topic}.dead"), 1, brokers)
        .unwrap();
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", cluster.bootstrap_servers())
        .set("acks", "all")
        .set("enable.idempotence", "true")
        .set("message.timeout.ms", "60000")
        .create()
        .unwrap();
    (cluster, producer)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_event_once_through_rebalances_broker_errors_and_dead_letters() {
    const TOPIC: &str = "audit.events";
    let (cluster, producer) = mock_cluster(3, TOPIC, 4);
    let bootstrap = cluster.bootstrap_servers();
    let (_dir, store) = temp_store("kafka");
    let url = IngestUrl::parse(&format!("kafka://{bootstrap}/{TOPIC}?group=mlaudit-test")).unwrap();
    let settings = Settings {
        batch: 100,
        ..Settings::default()
    };
    let dyn_store: Arc<dyn Store> = store.clone();

    // Two poison messages among the first half: not JSON, and an event reusing an id with
    // another payload.
    let mut first: Vec<(String, String)> = (0..2000).map(|i| (i.to_string(), event(i))).collect();
    first.insert(700, ("poison-1".into(), "not an event".into()));
    first.insert(
        1300,
        (
            "poison-2".into(),
            event(5).replace(r#""n":5"#, r#""n":"other""#),
        ),
    );
    produce(&producer, TOPIC, &first).await;

    let a = Consumers::start(std::slice::from_ref(&url), dyn_store.clone(), settings).unwrap();
    wait_for(
        "the first consumer's progress",
        Duration::from_secs(60),
        || store.tree_size() >= 500,
    )
    .await;

    // Broker errors: commits and fetches fail for a while, and a broker goes down and back.
    cluster.request_errors(
        RDKafkaApiKey::OffsetCommit,
        &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_NOT_COORDINATOR; 3],
    );
    cluster.request_errors(
        RDKafkaApiKey::Fetch,
        &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_REQUEST_TIMED_OUT; 3],
    );
    cluster.broker_down(2).unwrap();

    // A second member joins the group: a rebalance while messages are in flight.
    let b = Consumers::start(std::slice::from_ref(&url), dyn_store.clone(), settings).unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    cluster.broker_up(2).unwrap();
    let second: Vec<(String, String)> = (2000..4000).map(|i| (i.to_string(), event(i))).collect();
    produce(&producer, TOPIC, &second).await;
    wait_for("3,000 events", Duration::from_secs(120), || {
        store.tree_size() >= 3000
    })
    .await;

    // The first member leaves: another rebalance, and the rest is the second's.
    a.stop(Duration::from_secs(10)).await;
    let third: Vec<(String, String)> = (4000..5000).map(|i| (i.to_string(), event(i))).collect();
    produce(&producer, TOPIC, &third).await;
    wait_for("every event", Duration::from_secs(120), || {
        store.tree_size() >= 5000
    })
    .await;
    // Everything settled is committed, poison messages included: a new member of the group
    // finds nothing to replay.
    all_committed(&bootstrap, "mlaudit-test", TOPIC, 4).await;
    let counters = b.stats()[0].clone();
    b.stop(Duration::from_secs(10)).await;
    let stats = counters.snapshot();

    assert_each_once(&*store, 5000);
    assert!(stats.events > 0, "{stats:?}");

    let dead = dead_letters(&bootstrap, "audit.events.dead", 2);
    assert_eq!(dead.len(), 2, "{dead:?}");
    assert!(
        dead.iter()
            .any(|(r, b)| b == b"not an event" && r.contains("JSON")),
        "{dead:?}"
    );
    assert!(
        dead.iter().any(|(r, _)| r.contains("different payload")),
        "{dead:?}"
    );

    // Leaving the group changed nothing of the above.
    assert_all_committed(&bootstrap, "mlaudit-test", TOPIC, 4);
    assert_eq!(store.tree_size(), 5000);
}

/// Appends refused before anything is written, and appends written whose confirmation is
/// lost: neither is the messages' fault. Each rewinds its partitions to the first message not
/// stored, none goes to the dead letters, and every event is in the log exactly once with
/// every offset committed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_failures_rewind_their_partitions_and_lose_nothing() {
    const TOPIC: &str = "audit.failing";
    const EVENTS: usize = 1500;
    let (cluster, producer) = mock_cluster(1, TOPIC, 3);
    let bootstrap = cluster.bootstrap_servers();
    let messages: Vec<(String, String)> = (0..EVENTS).map(|i| (i.to_string(), event(i))).collect();
    produce(&producer, TOPIC, &messages).await;

    let (_dir, inner) = temp_store("kafka-failing");
    let script = [
        Next::FailBefore,
        Next::FailAfter,
        Next::FailBefore,
        Next::FailBefore,
        Next::FailAfter,
    ];
    let store = Arc::new(FailingStore::new(inner.clone(), &script));
    let url = IngestUrl::parse(&format!("kafka://{bootstrap}/{TOPIC}?group=failing")).unwrap();
    let settings = Settings {
        batch: 50,
        ..Settings::default()
    };
    let consumers = Consumers::start(std::slice::from_ref(&url), store.clone(), settings).unwrap();
    wait_for("every event", Duration::from_secs(120), || {
        inner.tree_size() >= EVENTS as u64
    })
    .await;
    // Every offset is committed: a new member of the group finds nothing to replay.
    all_committed(&bootstrap, "failing", TOPIC, 3).await;
    let counters = consumers.stats()[0].clone();
    // Stopping waits for the batch being settled, so the counters are final after it.
    consumers.stop(Duration::from_secs(10)).await;
    let stats = counters.snapshot();

    store.assert_survived(&stats, EVENTS);
    assert!(stats.duplicates >= 1, "{stats:?}");

    assert_all_committed(&bootstrap, "failing", TOPIC, 3);
}
