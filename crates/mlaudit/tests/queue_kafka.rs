//! `mlaudit serve --ingest kafka://…` from a build with the `kafka` feature, against
//! librdkafka's mock cluster (no Kafka broker can be installed on the test machine). The mock
//! cluster listens on loopback ports, so the server process reaches it as it would brokers:
//! events consumed once each, a poison message dead-lettered and counted, `/readyz` 503 while
//! the brokers are down and 200 once they are back. Run with
//! `cargo test -p mlaudit --features kafka --test queue_kafka`.

#![cfg(feature = "kafka")]
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test fails loudly on any unexpected error"
)]

mod support;

use mlaudit_queue::rdkafka::message::{Header, OwnedHeaders};
use mlaudit_queue::rdkafka::mocking::MockCluster;
use mlaudit_queue::rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use mlaudit_queue::rdkafka::ClientConfig;
use serde_json::json;
use std::time::Duration;
use support::serve::{wait_for, Server};
use support::{stored, verify, Log};

const TOPIC: &str = "audit.events";
const EVENTS: usize = 300;

fn id(i: usize) -> String {
    format!("00000000-0000-4000-8000-{i:012x}")
}

fn ready(server: &Server) -> u16 {
    server.request("GET", "/readyz", &[], b"").unwrap().status
}

#[test]
fn serve_consumes_a_topic_dead_letters_poison_and_is_unready_without_brokers() {
    let cluster = MockCluster::new(1).unwrap();
    cluster.create_topic(TOPIC, 2, 1).unwrap();
    cluster.create_topic("audit.events.dead", 1, 1).unwrap();
    let bootstrap = cluster.bootstrap_servers();
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .create()
        .unwrap();
    let mut messages: Vec<(String, String)> = (0..EVENTS)
        .map(|i| {
            let event = json!({"id": id(i), "kind": "x.kafka", "actor": {"id": "scorer", "type": "service"}, "attributes": {"n": i}});
            (id(i), event.to_string())
        })
        .collect();
    messages.insert(EVENTS / 2, ("poison".into(), "not an event".into()));
    for (key, body) in &messages {
        let headers = OwnedHeaders::new().insert(Header {
            key: "content-type",
            value: Some("application/json"),
        });
        producer
            .send(
                BaseRecord::to(TOPIC)
                    .key(key)
                    .payload(body)
                    .headers(headers),
            )
            .map_err(|(e, _)| e)
            .unwrap();
    }
    producer.flush(Duration::from_secs(30)).unwrap();

    let log = Log::new("queue-kafka");
    let url = format!("kafka://{bootstrap}/{TOPIC}?group=serve");
    let server = Server::start(&log.data, &["--danger-no-auth", "--ingest", &url]);
    wait_for("the consumer to connect", Duration::from_secs(30), || {
        ready(&server) == 200
    });
    wait_for("every event", Duration::from_secs(60), || {
        server.tree_size() >= EVENTS as u64
    });
    wait_for("the dead letter", Duration::from_secs(30), || {
        server.metric("mlaudit_queue_dead_letters_total") == 1.0
    });
    // Counted once each message's fate is settled, which may be after the append.
    wait_for("every event counted", Duration::from_secs(30), || {
        server.metric("mlaudit_queue_events_total") == EVENTS as f64
    });
    assert_eq!(server.metric("mlaudit_queue_connected"), 1.0);

    // The brokers go away: the server is not ready, naming the source; back, it is again.
    cluster.broker_down(1).unwrap();
    wait_for("/readyz 503", Duration::from_secs(30), || {
        ready(&server) == 503
    });
    let body = server.request("GET", "/readyz", &[], b"").unwrap().json();
    assert_eq!(body["error"]["code"], "unavailable", "{body}");
    assert!(body.to_string().contains(TOPIC), "{body}");
    cluster.broker_up(1).unwrap();
    wait_for("/readyz 200 again", Duration::from_secs(60), || {
        ready(&server) == 200
    });
    server.stop();

    let ids = stored(&log, "x.kafka");
    assert_eq!(ids.len(), EVENTS);
    assert!((0..EVENTS).all(|i| ids.contains_key(&id(i))));
    // Each once: the log holds the events and the query's own audit record, nothing else.
    assert_eq!(verify(&log), EVENTS as u64 + 1);
}
