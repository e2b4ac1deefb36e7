//! The Rust client SDK (`mlaudit-client`) against a real `mlaudit serve` process:
//!
//! * a server killed (`kill -9`) and restarted mid-stream: every event arrives exactly once,
//!   in the order it was logged;
//! * a full queue with the server unreachable: `log()` spools instead of blocking, and a later
//!   logger on the same spool directory delivers everything, in order;
//! * a retry of events the server already stored (a spool whose cursor did not move) is
//!   answered `duplicate` and stored once;
//! * invalid events are rejected and counted while the rest of their batch is delivered;
//! * the sampling policy: low-risk predictions sampled by request id with the rate recorded,
//!   high-risk ones and governance events never sampled;
//! * one logger per spool directory; a flush with the server down reports a durable spool.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test fails loudly on any unexpected error"
)]

mod support;

use mlaudit_client::{
    keeps, Actor, AuditLogger, Builder, Event, FlushError, Risk, Sampling, StartError,
};
use serde_json::{json, Value};
use std::path::Path;
use std::time::{Duration, Instant};
use support::serve::{free_port, Server};
use support::{create_token, Log};

const FLUSH: Duration = Duration::from_secs(60);

fn logger(url: &str, token: &str, spool: &Path) -> Builder {
    AuditLogger::builder(url, token, Actor::service("sdk-test"))
        .spool_dir(spool)
        .linger(Duration::from_millis(5))
        .retries(2, Duration::from_millis(10), Duration::from_millis(200))
        .timeout(Duration::from_secs(5))
}

fn numbered(n: u64) -> Event {
    Event::custom("sdk.numbered").attribute("n", n)
}

/// Every stored event of `kind`, in log order, read with the CLI (the server must be stopped).
#[track_caller]
fn stored_events(log: &Log, kind: &str) -> Vec<Value> {
    let out = log
        .run(&[
            "query", "--kind", kind, "--format", "ndjson", "--limit", "1000000",
        ])
        .ok();
    let mut events: Vec<Value> = out
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    events.sort_by_key(|e| e["seq"].as_u64());
    events
}

/// Asserts the log holds exactly the numbered events `0..n`, once each, in that order.
#[track_caller]
fn assert_exactly_once_in_order(log: &Log, n: u64) {
    let events = stored_events(log, "x.sdk.numbered");
    let numbers: Vec<u64> = events
        .iter()
        .map(|e| e["event"]["attributes"]["n"].as_u64().unwrap())
        .collect();
    assert_eq!(
        numbers.len() as u64,
        n,
        "stored {} numbered events, logged {n}",
        numbers.len()
    );
    assert!(
        numbers.iter().copied().eq(0..n),
        "not in logged order: first mismatch at {:?}",
        numbers.iter().enumerate().find(|(i, v)| *i as u64 != **v)
    );
}

#[test]
fn a_server_killed_and_restarted_mid_stream_loses_nothing_and_keeps_order() {
    let log = Log::new("sdk-restart");
    let token = create_token(&log, "writer", "sdk");
    let mut server = Server::start(&log.data, &[]);
    let port = server.addr.port();
    let url = format!("http://127.0.0.1:{port}");
    let spool = log.dir.join("spool");
    let logger = logger(&url, &token, &spool).start().unwrap();
    let total = 6_000;
    std::thread::scope(|s| {
        let producer = s.spawn(|| {
            for n in 0..total {
                logger.log(numbered(n));
                if n % 50 == 49 {
                    std::thread::sleep(Duration::from_millis(4));
                }
            }
        });
        std::thread::sleep(Duration::from_millis(150));
        server.kill9();
        std::thread::sleep(Duration::from_millis(400));
        server = Server::start_on(&log.data, Some(port), &[]);
        producer.join().unwrap();
    });
    logger.flush(FLUSH).unwrap();
    let stats = logger.close(Duration::from_secs(5));
    assert_eq!((stats.dropped, stats.rejected), (0, 0), "{stats:?}");
    assert!(stats.sent >= total, "{stats:?}");
    assert!(
        stats.retried > 0 || stats.spooled > 0,
        "the restart went unnoticed: {stats:?}"
    );
    server.stop();
    assert_exactly_once_in_order(&log, total);
    println!("{stats:?}");
}

#[test]
fn a_full_queue_spools_instead_of_blocking_and_a_later_logger_delivers_in_order() {
    let log = Log::new("sdk-spool");
    let token = create_token(&log, "writer", "sdk");
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}");
    let spool = log.dir.join("spool");
    let total = 5_000;
    let first = logger(&url, &token, &spool)
        .queue_capacity(16)
        .start()
        .unwrap();
    // Nothing listens on the port. If log() waited for the network this would never finish;
    // the join has a generous bound only so that such a bug fails instead of hanging.
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    std::thread::scope(|s| {
        s.spawn(|| {
            for n in 0..total {
                first.log(numbered(n));
            }
            done_tx.send(()).unwrap();
        });
        done_rx
            .recv_timeout(Duration::from_secs(120))
            .expect("log() blocked with the server down");
    });
    // A flush answers `durable: true` once the sender has handled its marker (spool fsyncs
    // included): repeated with a short timeout until then, however slow the disk is.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match first.flush(Duration::from_millis(200)) {
            Err(FlushError::Timeout { durable: true }) => break,
            Err(FlushError::Timeout { durable: false }) if Instant::now() < deadline => {}
            other => panic!("flush answered {other:?}; stats {:?}", first.stats()),
        }
    }
    let stats = first.close(Duration::from_millis(200));
    assert_eq!(
        (stats.sent, stats.spooled, stats.dropped),
        (0, total, 0),
        "{stats:?}"
    );

    let server = Server::start_on(&log.data, Some(port), &[]);
    let second = logger(&url, &token, &spool).start().unwrap();
    second.flush(FLUSH).unwrap();
    let stats = second.close(Duration::from_secs(5));
    assert_eq!(
        (stats.sent, stats.duplicates, stats.dropped),
        (total, 0, 0),
        "{stats:?}"
    );
    server.stop();
    assert_exactly_once_in_order(&log, total);
}

#[test]
fn events_sent_again_from_a_stale_spool_are_duplicates_stored_once() {
    let log = Log::new("sdk-dup");
    let token = create_token(&log, "writer", "sdk");
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}");
    let spool = log.dir.join("spool");
    let total = 700;
    let offline = logger(&url, &token, &spool)
        .retries(1, Duration::from_millis(10), Duration::from_millis(50))
        .start()
        .unwrap();
    for n in 0..total {
        offline.log(numbered(n));
    }
    assert_eq!(offline.close(Duration::from_millis(100)).spooled, total);
    // A copy of the spool before delivery: as if the next logger crashed after the server
    // stored the events but before its cursor moved.
    let stale = log.dir.join("stale-spool");
    std::fs::create_dir_all(&stale).unwrap();
    for entry in std::fs::read_dir(&spool).unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(&path, stale.join(path.file_name().unwrap())).unwrap();
    }
    let server = Server::start_on(&log.data, Some(port), &[]);
    let online = logger(&url, &token, &spool).start().unwrap();
    online.flush(FLUSH).unwrap();
    assert_eq!(online.close(Duration::from_secs(5)).sent, total);
    let size = server.tree_size();
    let again = logger(&url, &token, &stale).start().unwrap();
    again.flush(FLUSH).unwrap();
    let stats = again.close(Duration::from_secs(5));
    assert_eq!((stats.sent, stats.duplicates), (total, total), "{stats:?}");
    assert_eq!(server.tree_size(), size, "a retried event was stored twice");
    server.stop();
    assert_exactly_once_in_order(&log, total);
}

#[test]
fn invalid_events_are_rejected_and_counted_and_the_rest_of_the_batch_is_delivered() {
    let log = Log::new("sdk-invalid");
    let token = create_token(&log, "writer", "sdk");
    let server = Server::start(&log.data, &[]);
    let url = format!("http://{}", server.addr);
    let logger = logger(&url, &token, &log.dir.join("spool"))
        .linger(Duration::from_millis(200))
        .start()
        .unwrap();
    for n in 0..10 {
        logger.log(numbered(n));
        if n == 4 {
            logger.log(Event::source_accessed("applications", "not a uri"));
        }
    }
    logger.flush(FLUSH).unwrap();
    let stats = logger.close(Duration::from_secs(5));
    assert_eq!(
        (stats.sent, stats.rejected, stats.dropped),
        (10, 1, 0),
        "{stats:?}"
    );
    server.stop();
    assert_exactly_once_in_order(&log, 10);
    assert!(stored_events(&log, "data.source_accessed").is_empty());
}

#[test]
fn sampling_follows_the_policy_records_the_rate_and_never_touches_governance() {
    let log = Log::new("sdk-sampling");
    let token = create_token(&log, "writer", "sdk");
    let server = Server::start(&log.data, &[]);
    let url = format!("http://{}", server.addr);
    let policy = Sampling::new()
        .model("credit-risk", Risk::High)
        .default_risk(Risk::low(0.05).unwrap());
    let logger = logger(&url, &token, &log.dir.join("spool"))
        .sampling(policy)
        .start()
        .unwrap();
    let predict = |model: &str, i: u32| {
        Event::prediction_served(
            model,
            "3",
            format!("req-{model}-{i}"),
            json!({"x": i}),
            json!({"y": 1}),
        )
    };
    for i in 0..2_000 {
        logger.log(predict("churn", i));
    }
    for i in 0..100 {
        logger.log(predict("credit-risk", i));
        logger.log(Event::policy_changed(
            "sampling.churn",
            json!(0.05),
            json!(0.05),
        ));
    }
    logger.flush(FLUSH).unwrap();
    let stats = logger.close(Duration::from_secs(5));
    let kept = (0..2_000)
        .filter(|i| keeps(&format!("req-churn-{i}"), 0.05))
        .count() as u64;
    assert!(kept > 40 && kept < 170, "{kept}");
    assert_eq!(stats.sampled_out, 2_000 - kept);
    assert_eq!(stats.sent, kept + 200);
    server.stop();
    let predictions = stored_events(&log, "prediction.served");
    let of = |model: &str| {
        predictions
            .iter()
            .filter(|e| e["event"]["subject"]["model"] == model)
            .collect::<Vec<_>>()
    };
    let churn = of("churn");
    assert_eq!(churn.len() as u64, kept);
    for e in &churn {
        let request = e["event"]["subject"]["request"].as_str().unwrap();
        assert!(
            keeps(request, 0.05),
            "{request} should have been sampled out"
        );
        assert_eq!(e["event"]["attributes"]["sample_rate"], 0.05);
    }
    let credit = of("credit-risk");
    assert_eq!(credit.len(), 100);
    assert!(credit
        .iter()
        .all(|e| e["event"]["attributes"]["sample_rate"] == 1.0));
    assert_eq!(stored_events(&log, "governance.policy_changed").len(), 100);
}

#[test]
fn one_logger_per_spool_directory() {
    let dir = support::TempDir::new("sdk-lock");
    let url = format!("http://127.0.0.1:{}", free_port());
    let first = logger(&url, "t", &dir.join("spool")).start().unwrap();
    match logger(&url, "t", &dir.join("spool")).start() {
        Err(StartError::SpoolInUse(_)) => {}
        other => panic!("a second logger on one spool: {other:?}"),
    }
    drop(first);
    logger(&url, "t", &dir.join("spool"))
        .start()
        .unwrap()
        .close(Duration::from_millis(10));
}

/// The checkpoint the logger keeps in its spool directory.
fn kept_checkpoint(spool: &Path) -> (u64, String) {
    let note = std::fs::read_to_string(spool.join("checkpoint")).unwrap();
    let size = note.lines().nth(1).unwrap().parse().unwrap();
    (size, note)
}

/// Logs `n` numbered events from `first` through a new logger on `spool`, closes it, and
/// returns its counters.
fn log_through(url: &str, token: &str, spool: &Path, first: u64, n: u64) -> mlaudit_client::Stats {
    let logger = logger(url, token, spool).start().unwrap();
    for i in first..first + n {
        logger.log(numbered(i));
    }
    logger.flush(FLUSH).unwrap();
    logger.close(Duration::from_secs(5))
}

#[test]
fn the_logger_keeps_the_latest_checkpoint_and_accepts_consistent_ones() {
    use std::os::unix::fs::PermissionsExt;
    let log = Log::new("sdk-witness");
    let token = create_token(&log, "writer", "sdk");
    let server = Server::start(&log.data, &[]);
    let url = format!("http://{}", server.addr);
    let spool = log.dir.join("spool");
    for round in 0..3 {
        let stats = log_through(&url, &token, &spool, round * 100, 100);
        assert_eq!(stats.consistency_failures, 0, "{stats:?}");
        let (size, _) = kept_checkpoint(&spool);
        assert_eq!(
            size,
            server.tree_size(),
            "round {round}: the latest checkpoint is kept"
        );
    }
    // With the verifier key, signatures are checked too.
    let checked = logger(&url, &token, &spool)
        .verifier_key(&log.key)
        .unwrap()
        .start()
        .unwrap();
    checked.log(numbered(1000));
    checked.flush(FLUSH).unwrap();
    assert_eq!(
        checked.close(Duration::from_secs(5)).consistency_failures,
        0
    );
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&spool), 0o700);
    for entry in std::fs::read_dir(&spool).unwrap() {
        let path = entry.unwrap().path();
        assert_eq!(mode(&path), 0o600, "{}", path.display());
    }
    server.stop();
}

#[test]
fn a_rolled_back_or_forked_log_is_counted_and_the_kept_checkpoint_stays() {
    let log = Log::new("sdk-rollback");
    let token = create_token(&log, "writer", "sdk");
    // A copy of the data directory as it is now (one token, one event).
    let backup = log.dir.join("backup");
    support::copy_dir(&log.data, &backup);
    let server = Server::start(&log.data, &[]);
    let port = server.addr.port();
    let url = format!("http://127.0.0.1:{port}");
    let spool = log.dir.join("spool");
    log_through(&url, &token, &spool, 0, 50);
    let (kept_size, kept_note) = kept_checkpoint(&spool);
    server.stop();

    // Rollback: the server comes back on the old copy (a shorter log).
    let rolled = Server::start_on(&backup, Some(port), &[]);
    let stats = log_through(&url, &token, &spool, 100, 5);
    assert!(
        stats.consistency_failures >= 1,
        "a rollback went unnoticed: {stats:?}"
    );
    assert_eq!(
        kept_checkpoint(&spool),
        (kept_size, kept_note.clone()),
        "the old one stays trusted"
    );

    // Fork: the old copy grows past the kept size with other events.
    let more = log_through(&url, &token, &spool, 200, 80);
    assert!(rolled.tree_size() > kept_size);
    assert!(
        more.consistency_failures >= 1,
        "a fork went unnoticed: {more:?}"
    );
    assert_eq!(
        kept_checkpoint(&spool),
        (kept_size, kept_note),
        "the old one stays trusted"
    );
    rolled.stop();
}
