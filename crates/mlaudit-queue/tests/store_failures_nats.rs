//! The NATS consumer while the store fails, against the machine's real JetStream server
//! (127.0.0.1:4222, started by `scripts/nats-test-setup.sh` if it is down): appends refused
//! before anything is written, and appends written whose confirmation is lost. Neither is the
//! messages' fault: none goes to the dead letters, every one is redelivered and acknowledged
//! in the end, and every event is in the log exactly once.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test fails loudly on any unexpected error"
)]

mod support;

use async_nats::jetstream::{self, consumer, stream};
use mlaudit_queue::{Consumers, IngestUrl, Settings};
use mlaudit_store::LogReader;
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::{event, temp_store, wait_for, FailingStore, Next};

const NATS: &str = "nats://127.0.0.1:4222";

fn ensure_nats() {
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../scripts/nats-test-setup.sh"
    );
    let status = std::process::Command::new("bash")
        .arg(script)
        .status()
        .expect("run nats-test-setup.sh");
    assert!(status.success(), "scripts/nats-test-setup.sh failed");
}

const MESSAGES: usize = 40;
const PER_MESSAGE: usize = 25;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_failures_are_redelivered_never_dead_lettered_or_lost() {
    ensure_nats();
    let tag = format!(
        "SF_{}_{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_micros()
    );
    let (name, subject) = (format!("T_{tag}"), format!("test.{tag}.events"));
    let js = jetstream::new(async_nats::connect(NATS).await.unwrap());
    js.create_stream(stream::Config {
        name: name.clone(),
        subjects: vec![subject.clone()],
        storage: stream::StorageType::File,
        ..Default::default()
    })
    .await
    .unwrap();
    for m in 0..MESSAGES {
        let body: Vec<String> = (m * PER_MESSAGE..(m + 1) * PER_MESSAGE)
            .map(event)
            .collect();
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("Content-Type", "application/x-ndjson");
        js.publish_with_headers(subject.clone(), headers, body.join("\n").into())
            .await
            .unwrap()
            .await
            .unwrap();
    }

    let (_dir, inner) = temp_store("nats-failing");
    let script = [
        Next::FailBefore,
        Next::FailBefore,
        Next::FailAfter,
        Next::FailBefore,
        Next::FailAfter,
    ];
    let store = Arc::new(FailingStore::new(inner.clone(), &script));
    let url = IngestUrl::parse(&format!("{NATS}/{name}?subject={subject}")).unwrap();
    let settings = Settings {
        batch: 8,
        ..Settings::default()
    };
    let consumers = Consumers::start(&[url], store.clone(), settings).unwrap();
    let total = (MESSAGES * PER_MESSAGE) as u64;
    wait_for("every event", Duration::from_secs(90), || {
        inner.tree_size() >= total
    })
    .await;

    // Every message is acknowledged in the end: nothing pending, nothing awaiting an ack.
    let mut durable: consumer::PullConsumer = js
        .get_stream(&name)
        .await
        .unwrap()
        .get_consumer("mlaudit")
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let info = durable.info().await.unwrap();
        if info.num_pending == 0 && info.num_ack_pending == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "messages left unacknowledged: {info:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let stats = consumers.stats()[0].snapshot();
    consumers.stop(Duration::from_secs(10)).await;

    store.assert_survived(&stats, MESSAGES * PER_MESSAGE);
    // The batches written before their confirmation was lost came back as duplicates.
    assert!(stats.duplicates >= PER_MESSAGE as u64, "{stats:?}");
    let dead = js
        .get_stream(format!("{name}_DEAD"))
        .await
        .unwrap()
        .info()
        .await
        .unwrap()
        .state
        .messages;
    assert_eq!(dead, 0, "a store failure was dead-lettered");

    js.delete_stream(&name).await.unwrap();
    js.delete_stream(format!("{name}_DEAD")).await.unwrap();
}
