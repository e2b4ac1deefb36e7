//! Three `mlaudit serve` processes on one log in PostgreSQL, under load from clients that
//! retry on any error: `kill -9` of whichever holds the sequencer lock, round after round.
//! Another process takes over within 5 s, every acknowledged event is in the log at the seq it
//! was given, nothing is stored twice, and the log (every checkpoint signed before and after
//! each takeover) verifies as one history.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test fails loudly on any unexpected error"
)]

mod pg_support;

use pg_support::{connect, event, post, receipt, wait_until, PgLog, Server};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

const ROUNDS: usize = 10;
const BATCH: u64 = 20;

/// A client that posts batches to the servers in `addrs`, moving to the next on any error and
/// retrying the same batch (same ids) until it is acknowledged.
fn client(
    addrs: Arc<Mutex<Vec<SocketAddr>>>,
    next: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    acks: Arc<AtomicU64>,
    start: usize,
) -> std::thread::JoinHandle<HashMap<String, u64>> {
    std::thread::spawn(move || {
        let mut acked = HashMap::new();
        let mut which = start;
        let mut conn = None;
        let mut batch: Option<String> = None;
        while !stop.load(Ordering::Relaxed) {
            let body = batch.get_or_insert_with(|| {
                let first = next.fetch_add(BATCH, Ordering::Relaxed);
                (first..first + BATCH).map(|n| event(n) + "\n").collect()
            });
            if conn.is_none() {
                let addr = {
                    let a = addrs.lock().unwrap();
                    a[which % a.len()]
                };
                conn = connect(addr).ok();
            }
            let outcome = match conn.as_mut() {
                Some(c) => post(c, body),
                None => Err(std::io::Error::other("no connection")),
            };
            match outcome {
                Ok((200, reply)) => {
                    let got = receipt(&reply);
                    acks.fetch_add(got.len() as u64, Ordering::Relaxed);
                    acked.extend(got);
                    batch = None;
                }
                Ok((status, reply)) => {
                    assert!(status >= 500, "unexpected {status}: {reply}");
                    std::thread::sleep(Duration::from_millis(50));
                }
                Err(_) => {
                    conn = None;
                    which += 1;
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
        }
        acked
    })
}

#[test]
fn kill_9_of_the_sequencer_under_load_loses_and_duplicates_nothing() {
    let log = PgLog::new("failover");
    let mut servers: Vec<Server> = (0..3).map(|n| log.serve(n)).collect();
    let addrs = Arc::new(Mutex::new(
        servers.iter().map(|s| s.addr).collect::<Vec<_>>(),
    ));
    let (next, stop, acks) = (
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicU64::new(0)),
    );
    let clients: Vec<_> = (0..6)
        .map(|i| client(addrs.clone(), next.clone(), stop.clone(), acks.clone(), i))
        .collect();
    let mut takeovers = Vec::new();
    for round in 0..ROUNDS {
        let seq = wait_until(Duration::from_secs(10), || {
            servers.iter().filter(|s| s.is_sequencer()).count() == 1
        });
        assert!(seq.is_some(), "round {round}: not exactly one sequencer");
        let victim = servers.iter().position(|s| s.is_sequencer()).unwrap();
        // Kill once this round has made progress.
        let before = acks.load(Ordering::Relaxed);
        assert!(
            wait_until(Duration::from_secs(20), || acks.load(Ordering::Relaxed)
                > before + 100)
            .is_some(),
            "round {round}: no progress before the kill"
        );
        servers[victim].kill();
        let took = wait_until(Duration::from_secs(5), || {
            servers
                .iter()
                .enumerate()
                .any(|(i, s)| i != victim && s.is_sequencer())
        });
        let took = took.unwrap_or_else(|| panic!("round {round}: no takeover within 5 s"));
        takeovers.push(took);
        // Writes go on after the takeover, then the killed server comes back.
        let after = acks.load(Ordering::Relaxed);
        assert!(
            wait_until(Duration::from_secs(20), || acks.load(Ordering::Relaxed)
                > after + 100)
            .is_some(),
            "round {round}: no progress after the takeover"
        );
        servers[victim] = log.serve(10 + round);
        addrs.lock().unwrap()[victim] = servers[victim].addr;
    }
    stop.store(true, Ordering::Relaxed);
    let mut acked = HashMap::new();
    for c in clients {
        acked.extend(c.join().unwrap());
    }
    drop(servers);
    eprintln!(
        "takeover times: {takeovers:?}; {} events acknowledged",
        acked.len()
    );
    let (stored, rows) = log.stored();
    assert_eq!(rows, stored.len(), "an event id is stored twice");
    for (id, seq) in &acked {
        assert_eq!(
            stored.get(id),
            Some(seq),
            "acknowledged event {id} (seq {seq}) is missing or moved"
        );
    }
    log.verify();
}
