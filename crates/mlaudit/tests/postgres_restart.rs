//! PostgreSQL restarted under a server's ingest: clients see errors or successes, never a lost
//! acknowledgement; the server reconnects, is elected again and goes on appending; the log
//! verifies. (Its own test binary: the restart cuts every connection to the database.)

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test fails loudly on any unexpected error"
)]

mod pg_support;

use pg_support::{connect, event, post, receipt, wait_until, PgLog};
use std::collections::HashMap;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

fn restart_postgres() {
    let version = std::fs::read_dir("/etc/postgresql")
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .next()
        .expect("a PostgreSQL cluster under /etc/postgresql");
    let status = Command::new("pg_ctlcluster")
        .args([
            "--skip-systemctl-redirect",
            &version,
            "main",
            "restart",
            "-m",
            "fast",
        ])
        .status()
        .unwrap();
    assert!(status.success(), "pg_ctlcluster restart failed");
}

#[test]
fn a_postgres_restart_during_ingest_loses_nothing_acknowledged() {
    let log = PgLog::new("restart");
    let server = log.serve(0);
    let (next, stop, acks, errors) = (
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
    );
    let clients: Vec<_> = (0..4)
        .map(|_| {
            let (next, stop, acks, errors) =
                (next.clone(), stop.clone(), acks.clone(), errors.clone());
            let addr = server.addr;
            std::thread::spawn(move || {
                let mut acked = HashMap::new();
                let mut conn = None;
                while !stop.load(Ordering::Relaxed) {
                    let first = next.fetch_add(10, Ordering::Relaxed);
                    let body: String = (first..first + 10).map(|n| event(n) + "\n").collect();
                    if conn.is_none() {
                        conn = connect(addr).ok();
                    }
                    let Some(c) = conn.as_mut() else { continue };
                    match post(c, &body) {
                        Ok((200, reply)) => {
                            let got = receipt(&reply);
                            acks.fetch_add(got.len() as u64, Ordering::Relaxed);
                            acked.extend(got);
                        }
                        Ok((status, reply)) => {
                            assert!(status >= 500, "unexpected {status}: {reply}");
                            errors.fetch_add(1, Ordering::Relaxed);
                            std::thread::sleep(Duration::from_millis(20));
                        }
                        Err(_) => {
                            errors.fetch_add(1, Ordering::Relaxed);
                            conn = None;
                        }
                    }
                }
                acked
            })
        })
        .collect();
    assert!(
        wait_until(Duration::from_secs(20), || acks.load(Ordering::Relaxed)
            > 200)
        .is_some()
    );
    restart_postgres();
    // Appends are acknowledged again once the server has reconnected and been re-elected.
    let after = acks.load(Ordering::Relaxed);
    assert!(
        wait_until(Duration::from_secs(30), || acks.load(Ordering::Relaxed)
            > after + 200)
        .is_some(),
        "no acknowledgement within 30 s of the restart"
    );
    stop.store(true, Ordering::Relaxed);
    let mut acked = HashMap::new();
    for c in clients {
        acked.extend(c.join().unwrap());
    }
    eprintln!(
        "{} acknowledged, {} refused or cut while PostgreSQL restarted",
        acked.len(),
        errors.load(Ordering::Relaxed)
    );
    assert!(server.is_sequencer(), "the server is the sequencer again");
    drop(server);
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
