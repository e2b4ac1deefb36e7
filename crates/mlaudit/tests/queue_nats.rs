//! `mlaudit serve --ingest nats://…` against the machine's real NATS JetStream server
//! (127.0.0.1:4222, started by `scripts/nats-test-setup.sh` if it is down): consumption of
//! every message format, dead letters, `kill -9` mid-batch with every event stored exactly
//! once, readiness while the queue is away, and a 100,000-event stream drained with bounded
//! memory.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test fails loudly on any unexpected error"
)]

mod support;

use async_nats::jetstream::{self, consumer::PullConsumer};
use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use support::serve::{free_port, wait_for, Server};
use support::Log;

const NATS: &str = "nats://127.0.0.1:4222";

fn ensure_nats() {
    static READY: std::sync::Once = std::sync::Once::new();
    READY.call_once(|| {
        let script = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../scripts/nats-test-setup.sh"
        );
        let status = Command::new("bash")
            .arg(script)
            .status()
            .expect("run nats-test-setup.sh");
        assert!(status.success(), "scripts/nats-test-setup.sh failed");
    });
}

/// A client of a JetStream server, with a stream name and subject no other test uses.
struct Queue {
    rt: tokio::runtime::Runtime,
    js: jetstream::Context,
    stream: String,
    subject: String,
}

impl Queue {
    fn new(name: &str) -> Queue {
        ensure_nats();
        Queue::on(NATS, name)
    }

    fn on(server: &str, name: &str) -> Queue {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let client = rt
            .block_on(async_nats::connect(server))
            .unwrap_or_else(|e| panic!("connecting to {server}: {e}"));
        let tag = format!(
            "{name}_{}_{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_micros()
        );
        Queue {
            rt,
            js: jetstream::new(client),
            stream: format!("T_{tag}"),
            subject: format!("test.{tag}.events"),
        }
    }

    /// The `--ingest` URL of this queue's stream on `server`.
    fn url(&self, server: &str) -> String {
        format!("{server}/{}?subject={}", self.stream, self.subject)
    }

    fn dead_subject(&self) -> String {
        format!("{}.dead", self.subject)
    }

    /// Creates the stream (as the consumer would) so that messages can be published first.
    fn create_stream(&self) {
        self.rt
            .block_on(self.js.get_or_create_stream(jetstream::stream::Config {
                name: self.stream.clone(),
                subjects: vec![self.subject.clone()],
                storage: jetstream::stream::StorageType::File,
                ..Default::default()
            }))
            .unwrap();
    }

    /// Publishes each message (content type, bytes) and waits for JetStream's acks.
    fn publish(&self, messages: impl IntoIterator<Item = (Option<&'static str>, Vec<u8>)>) {
        self.rt.block_on(async {
            let mut acks = Vec::new();
            for (content_type, bytes) in messages {
                let mut headers = async_nats::HeaderMap::new();
                if let Some(ct) = content_type {
                    headers.insert("Content-Type", ct);
                }
                let ack = self
                    .js
                    .publish_with_headers(self.subject.clone(), headers, bytes.into())
                    .await
                    .unwrap();
                acks.push(ack);
                if acks.len() == 2000 {
                    for ack in acks.drain(..) {
                        ack.await.unwrap();
                    }
                }
            }
            for ack in acks {
                ack.await.unwrap();
            }
        });
    }

    /// The durable consumer's (pending, ack pending) counts.
    fn consumer_backlog(&self) -> (u64, usize) {
        self.rt.block_on(async {
            let stream = self.js.get_stream(&self.stream).await.unwrap();
            let mut consumer: PullConsumer = stream.get_consumer("mlaudit").await.unwrap();
            let info = consumer.info().await.unwrap();
            (info.num_pending, info.num_ack_pending)
        })
    }

    /// Every message on the dead-letter subject: (reason header, content type, bytes).
    fn dead_letters(&self, expected: usize) -> Vec<(String, Option<String>, Vec<u8>)> {
        self.rt.block_on(async {
            let name = self
                .js
                .stream_by_subject(self.dead_subject())
                .await
                .unwrap();
            let stream = self.js.get_stream(&name).await.unwrap();
            let consumer: PullConsumer = stream
                .create_consumer(jetstream::consumer::pull::Config {
                    filter_subject: self.dead_subject(),
                    ..Default::default()
                })
                .await
                .unwrap();
            let mut out = Vec::new();
            let deadline = Instant::now() + Duration::from_secs(10);
            while out.len() < expected && Instant::now() < deadline {
                let mut batch = consumer.fetch().max_messages(100).messages().await.unwrap();
                use futures_util::StreamExt;
                while let Some(m) = batch.next().await {
                    let m = m.unwrap();
                    let header = |name: &str| {
                        m.headers
                            .as_ref()
                            .and_then(|h| h.get(name))
                            .map(|v| v.as_str().to_owned())
                    };
                    out.push((
                        header("Mlaudit-Dead-Letter-Reason").unwrap_or_default(),
                        header("Content-Type"),
                        m.payload.to_vec(),
                    ));
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            out
        })
    }
}

fn event(i: usize) -> Value {
    json!({"id": id(i), "kind": "x.queued", "actor": {"id": "scorer", "type": "service"}, "attributes": {"n": i}})
}

fn id(i: usize) -> String {
    format!("00000000-0000-4000-8000-{i:012x}")
}

fn json_message(i: usize) -> (Option<&'static str>, Vec<u8>) {
    (Some("application/json"), event(i).to_string().into_bytes())
}

/// The log's size, from the checkpoint (readable whether or not the server is ready).
fn size(server: &Server) -> u64 {
    let r = server.request("GET", "/v1/checkpoint", &[], b"").unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    r.text().lines().nth(1).unwrap().parse().unwrap()
}

fn serve(log: &Log, url: &str) -> Server {
    Server::start(&log.data, &["--danger-no-auth", "--ingest", url])
}

/// The id of every queued event in the log, by paging `mlaudit query` (the server must be
/// stopped; each query adds its own `governance.audit_accessed` event, not matched).
fn ids_in_log(log: &Log) -> Vec<String> {
    let mut ids = Vec::new();
    let mut after: Option<u64> = None;
    loop {
        let mut args = vec![
            "query", "--kind", "x.queued", "--format", "ndjson", "--limit", "10000",
        ];
        let after_text = after.map(|a| a.to_string());
        if let Some(a) = &after_text {
            args.extend(["--after", a]);
        }
        let out = log.run(&args);
        let page: Vec<Value> = out
            .stdout
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        let Some(last) = page.last() else {
            return ids;
        };
        after = last["seq"].as_u64();
        ids.extend(
            page.iter()
                .map(|e| e["event"]["id"].as_str().unwrap().to_owned()),
        );
    }
}

#[test]
fn stores_every_format_once_and_acks() {
    let q = Queue::new("formats");
    let log = Log::new("queue-formats");
    let server = serve(&log, &q.url(NATS));
    wait_for("the consumer to connect", Duration::from_secs(10), || {
        server.request("GET", "/readyz", &[], b"").unwrap().status == 200
    });
    let ready = server.request("GET", "/readyz", &[], b"").unwrap().json();
    assert_eq!(ready["ingest"][0]["connected"], true, "{ready}");
    let ndjson = [event(1), event(2), event(3)]
        .iter()
        .map(Value::to_string)
        .collect::<Vec<_>>()
        .join("\n");
    let proto = mlaudit_proto::encode_batch(&[event(4), event(5)]);
    q.publish([
        json_message(0),
        (Some("application/x-ndjson"), ndjson.into_bytes()),
        (Some("application/x-protobuf"), proto.clone()),
        // No content type: the bytes tell.
        (None, event(6).to_string().into_bytes()),
        // Redeliveries and republished events are duplicates, not new leaves.
        json_message(0),
        (Some("application/x-protobuf"), proto),
    ]);
    wait_for("7 events", Duration::from_secs(20), || size(&server) == 7);
    wait_for("every message acked", Duration::from_secs(10), || {
        q.consumer_backlog() == (0, 0)
    });
    assert_eq!(server.metric("mlaudit_queue_events_total"), 7.0);
    assert_eq!(server.metric("mlaudit_queue_duplicates_total"), 3.0);
    assert_eq!(server.metric("mlaudit_queue_messages_total"), 6.0);
    assert_eq!(server.metric("mlaudit_queue_dead_letters_total"), 0.0);
    assert_eq!(server.metric("mlaudit_queue_connected"), 1.0);
    assert!(server.metric("mlaudit_queue_lag_seconds_count") >= 6.0);
    server.stop();
    let ids: BTreeSet<String> = ids_in_log(&log).into_iter().collect();
    assert_eq!(ids, (0..7).map(id).collect::<BTreeSet<_>>());
    let got = log.run(&["query", "--format", "ndjson", "--limit", "1"]);
    let first: Value = serde_json::from_str(got.stdout.trim()).unwrap();
    assert_eq!(
        first["event"]["principal"],
        format!("nats:{}", q.stream),
        "{first}"
    );
    log.run(&["verify"]);
}

#[test]
fn poison_messages_go_to_dead_letters_and_never_stall() {
    let q = Queue::new("poison");
    let log = Log::new("queue-poison");
    q.create_stream();
    let mut conflicting = event(1);
    conflicting["attributes"]["n"] = json!("another payload");
    q.publish([
        json_message(1),
        (Some("application/json"), b"not json at all".to_vec()),
        (Some("text/csv"), b"a,b,c".to_vec()),
        (
            Some("application/json"),
            conflicting.to_string().into_bytes(),
        ),
        (
            Some("application/x-ndjson"),
            format!("{}\n{{\"kind\":1}}", event(7)).into_bytes(),
        ),
        json_message(2),
    ]);
    let server = serve(&log, &q.url(NATS));
    wait_for("the good events", Duration::from_secs(20), || {
        size(&server) == 2
    });
    wait_for("every message acked", Duration::from_secs(10), || {
        q.consumer_backlog() == (0, 0)
    });
    assert_eq!(server.metric("mlaudit_queue_dead_letters_total"), 4.0);
    let dead = q.dead_letters(4);
    assert_eq!(dead.len(), 4, "{dead:?}");
    let reason_of = |bytes: &[u8]| {
        dead.iter()
            .find(|(_, _, b)| b == bytes)
            .map(|(r, _, _)| r.clone())
            .unwrap_or_else(|| panic!("no dead letter holds {:?}", String::from_utf8_lossy(bytes)))
    };
    assert!(reason_of(b"not json at all").contains("JSON"));
    assert!(reason_of(b"a,b,c").contains("unsupported content type"));
    assert!(
        reason_of(conflicting.to_string().as_bytes()).contains("different payload"),
        "{dead:?}"
    );
    assert!(reason_of(format!("{}\n{{\"kind\":1}}", event(7)).as_bytes()).starts_with("event 1"));
    assert!(dead
        .iter()
        .any(|(_, ct, _)| ct.as_deref() == Some("text/csv")));
    server.stop();
    // All or nothing per message: the valid event 7 of the half-bad message is not stored.
    let ids: BTreeSet<String> = ids_in_log(&log).into_iter().collect();
    assert_eq!(ids, [id(1), id(2)].into_iter().collect());
}

/// A dead letter that cannot be written leaves its message unacknowledged (redelivered, not
/// lost) while the messages behind it are stored; once the dead-letter stream is back, the
/// dead letter lands and the message is acknowledged.
#[test]
fn a_dead_letter_that_cannot_be_written_is_retried_without_stalling() {
    let q = Queue::new("deadfail");
    let log = Log::new("queue-deadfail");
    let server = serve(&log, &q.url(NATS));
    wait_for("ready", Duration::from_secs(10), || {
        server.request("GET", "/readyz", &[], b"").unwrap().status == 200
    });
    // The consumer created `<stream>_DEAD` at start; take it away.
    let dead_stream = format!("{}_DEAD", q.stream);
    q.rt.block_on(q.js.delete_stream(&dead_stream)).unwrap();
    q.publish([
        (Some("application/json"), b"poison".to_vec()),
        json_message(1),
        json_message(2),
    ]);
    wait_for("the good events", Duration::from_secs(20), || {
        size(&server) == 2
    });
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(server.metric("mlaudit_queue_dead_letters_total"), 0.0);
    assert!(server.metric("mlaudit_queue_errors_total") >= 1.0);
    let (pending, ack_pending) = q.consumer_backlog();
    assert_eq!(
        pending + ack_pending as u64,
        1,
        "the poison message must stay unacknowledged"
    );
    q.rt.block_on(q.js.get_or_create_stream(jetstream::stream::Config {
        name: dead_stream,
        subjects: vec![q.dead_subject()],
        storage: jetstream::stream::StorageType::File,
        ..Default::default()
    }))
    .unwrap();
    wait_for("the dead letter", Duration::from_secs(20), || {
        server.metric("mlaudit_queue_dead_letters_total") == 1.0
    });
    wait_for("every message acked", Duration::from_secs(10), || {
        q.consumer_backlog() == (0, 0)
    });
    let dead = q.dead_letters(1);
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].2, b"poison");
    server.stop();
}

#[test]
fn kill_9_mid_batch_then_restart_stores_each_event_once() {
    const EVENTS: usize = 20_000;
    let q = Queue::new("crash");
    let log = Log::new("queue-crash");
    q.create_stream();
    q.publish((0..EVENTS).map(json_message));
    let url = q.url(NATS);
    for round in 0..3 {
        let mut server = serve(&log, &url);
        let before = size(&server);
        // Kill while the stream is being drained: some batches durable, some in flight.
        wait_for("some progress", Duration::from_secs(60), || {
            size(&server) >= before + 1500
        });
        server.kill9();
        eprintln!("round {round}: killed after {before}+ events");
    }
    let server = serve(&log, &url);
    // The messages the killed servers held come back after the consumer's ack wait (15 s).
    wait_for("the whole stream", Duration::from_secs(120), || {
        size(&server) as usize >= EVENTS
    });
    wait_for("every message acked", Duration::from_secs(30), || {
        q.consumer_backlog() == (0, 0)
    });
    assert_eq!(size(&server) as usize, EVENTS);
    server.stop();
    let ids = ids_in_log(&log);
    assert_eq!(ids.len(), EVENTS);
    let unique: BTreeSet<&String> = ids.iter().collect();
    assert_eq!(unique.len(), EVENTS, "an event was stored twice");
    assert_eq!(
        unique,
        (0..EVENTS).map(id).collect::<Vec<_>>().iter().collect()
    );
    log.run(&["verify"]);
}

/// A NATS server of this test's own, on a free port, so that it can be stopped.
struct OwnNats {
    child: Child,
    url: String,
    port: u16,
    dir: support::TempDir,
}

impl OwnNats {
    fn start(dir: support::TempDir, port: u16) -> OwnNats {
        let child = Command::new("/usr/sbin/nats-server")
            .args(["-a", "127.0.0.1", "-p", &port.to_string(), "-js", "-sd"])
            .arg(dir.join("js"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn nats-server");
        let url = format!("nats://127.0.0.1:{port}");
        wait_for("nats-server", Duration::from_secs(10), || {
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
        OwnNats {
            child,
            url,
            port,
            dir,
        }
    }

    fn stop(mut self) -> (support::TempDir, u16) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        (self.dir, self.port)
    }
}

#[test]
fn readyz_fails_while_the_queue_is_away_and_recovers() {
    ensure_nats();
    let nats = OwnNats::start(support::TempDir::new("own-nats"), free_port());
    let q = Queue::on(&nats.url, "away");
    let log = Log::new("queue-away");
    let server = serve(&log, &q.url(&nats.url));
    wait_for("ready", Duration::from_secs(10), || {
        server.request("GET", "/readyz", &[], b"").unwrap().status == 200
    });
    q.publish([json_message(1)]);
    wait_for("the first event", Duration::from_secs(10), || {
        size(&server) == 1
    });
    let (dir, port) = nats.stop();
    wait_for("not ready", Duration::from_secs(10), || {
        server.request("GET", "/readyz", &[], b"").unwrap().status == 503
    });
    let r = server.request("GET", "/readyz", &[], b"").unwrap().json();
    assert_eq!(r["error"]["code"], "unavailable", "{r}");
    assert!(
        r["error"]["message"]
            .as_str()
            .unwrap()
            .contains(&format!("127.0.0.1:{port}")),
        "{r}"
    );
    assert_eq!(server.metric("mlaudit_queue_connected"), 0.0);
    // HTTP ingest and reads go on meanwhile.
    server.assert_healthy();
    let nats = OwnNats::start(dir, port);
    wait_for("ready again", Duration::from_secs(30), || {
        server.request("GET", "/readyz", &[], b"").unwrap().status == 200
    });
    let q2 = Queue {
        stream: q.stream.clone(),
        subject: q.subject.clone(),
        ..Queue::on(&nats.url, "away2")
    };
    q2.publish([json_message(2)]);
    wait_for(
        "the event after the outage",
        Duration::from_secs(20),
        || size(&server) == 2,
    );
    server.stop();
    drop(nats.stop());
}

/// Peak resident memory of a process, in KiB (`VmHWM`).
fn peak_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

#[test]
fn drains_100k_events_with_bounded_memory() {
    const EVENTS: usize = 100_000;
    let q = Queue::new("drain");
    let log = Log::new("queue-drain");
    q.create_stream();
    q.publish((0..EVENTS).map(json_message));
    let started = Instant::now();
    let server = serve(&log, &q.url(NATS));
    wait_for("the whole stream", Duration::from_secs(300), || {
        size(&server) as usize == EVENTS
    });
    let secs = started.elapsed().as_secs_f64();
    let peak = peak_rss_kib(server.pid());
    eprintln!(
        "drained {EVENTS} events in {secs:.1} s; peak RSS {} MiB",
        peak / 1024
    );
    // The consumer holds at most a few batches of messages; holding the stream's 100,000
    // messages and their decoded events at once would take well over 100 MiB.
    assert!(peak < 80 * 1024, "peak RSS {} MiB", peak / 1024);
    wait_for("every message acked", Duration::from_secs(30), || {
        q.consumer_backlog() == (0, 0)
    });
    server.stop();
}

#[test]
fn ingest_urls_are_checked_at_start() {
    let log = Log::new("queue-urls");
    let port = free_port().to_string();
    let listen = format!("127.0.0.1:{port}");
    let run = |url: &str| {
        log.cmd([
            "serve",
            "--danger-no-auth",
            "--listen",
            &listen,
            "--ingest",
            url,
        ])
        .run()
    };
    let bad = run("nats://127.0.0.1:4222/a.b").code(2);
    assert!(bad.stderr.contains("stream \"a.b\""), "{}", bad.stderr);
    let bad = run("amqp://127.0.0.1/q").code(2);
    assert!(bad.stderr.contains("unknown scheme"), "{}", bad.stderr);
    if !cfg!(feature = "kafka") {
        let out = run("kafka://127.0.0.1:9092/audit").code(2);
        assert!(out.stderr.contains("--features kafka"), "{}", out.stderr);
    }
}

/// The Rust SDK with a `nats://` URL: events published to JetStream (one message each, with
/// `Nats-Msg-Id`) reach the log through the server's consumer; while NATS is away the logger
/// spools, and delivers the spool once it is back.
#[test]
fn rust_sdk_publishes_to_jetstream_and_spools_while_it_is_away() {
    use mlaudit_client::{Actor, AuditLogger, Event};
    ensure_nats();
    let nats = OwnNats::start(support::TempDir::new("sdk-nats"), free_port());
    let q = Queue::on(&nats.url, "sdk");
    let log = Log::new("queue-sdk");
    let server = serve(&log, &q.url(&nats.url));
    wait_for("ready", Duration::from_secs(10), || {
        server.request("GET", "/readyz", &[], b"").unwrap().status == 200
    });
    let spool = support::TempDir::new("sdk-spool");
    let logger = AuditLogger::builder(q.url(&nats.url), "", Actor::service("scorer"))
        .spool_dir(&spool.path)
        .linger(Duration::from_millis(5))
        .retries(2, Duration::from_millis(10), Duration::from_millis(200))
        .timeout(Duration::from_secs(2))
        .start()
        .unwrap();
    for n in 0..100 {
        logger.log(Event::custom("queued").attribute("n", n));
    }
    logger.flush(Duration::from_secs(20)).unwrap();
    wait_for("100 events", Duration::from_secs(20), || {
        size(&server) == 100
    });

    let (dir, port) = nats.stop();
    for n in 100..150 {
        logger.log(Event::custom("queued").attribute("n", n));
    }
    // NATS is away: the events go to the spool on disk, not lost.
    let away = logger.flush(Duration::from_secs(15));
    assert!(
        matches!(
            away,
            Err(mlaudit_client::FlushError::Timeout { durable: true })
        ),
        "{away:?}"
    );
    let nats = OwnNats::start(dir, port);
    wait_for("the spooled events", Duration::from_secs(60), || {
        size(&server) == 150
    });
    let stats = logger.close(Duration::from_secs(10));
    assert_eq!(stats.dropped, 0, "{stats:?}");
    assert!(stats.spooled >= 50, "{stats:?}");
    server.stop();
    drop(nats.stop());
    let ns: BTreeSet<u64> = {
        let out = log.run(&[
            "query", "--kind", "x.queued", "--format", "ndjson", "--limit", "1000",
        ]);
        out.stdout
            .lines()
            .map(|l| {
                serde_json::from_str::<Value>(l).unwrap()["event"]["attributes"]["n"]
                    .as_u64()
                    .unwrap()
            })
            .collect()
    };
    assert_eq!(ns, (0..150).collect());
}
