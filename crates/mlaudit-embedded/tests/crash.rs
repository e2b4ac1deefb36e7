//! Real crashes: the test re-executes its own binary as a child that appends batches forever and
//! prints `ACK <id> <seq>` for every event once `append` has returned; the parent SIGKILLs it at
//! a random moment after its first acknowledgement (so that every round has acknowledged events
//! to lose), reopens the store and checks that every acknowledged event is there at its seq and
//! that `verify` passes. Twenty rounds on one directory, so the log grows across crashes
//! and each open recovers whatever the previous kill left behind.
//!
//! A kill -9 leaves the page cache intact, so this exercises torn writes between the writer's
//! `write` calls (events without their checkpoint, half-written groups) and recovery, not
//! power loss. Every other round the child starts a new segment after every 64 KiB, so that
//! kills also land around segment rolls, and the log ends up spread over many segments.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{open, run_verify, segments, signer, Rng, Spec, TempDir, KINDS};
use mlaudit_core::entry::EventId;
use mlaudit_embedded::{EmbeddedStore, Options};
use mlaudit_store::prelude::*;
use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::process::ExitStatusExt;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const DIR_VAR: &str = "MLAUDIT_CRASH_DIR";
const SEED_VAR: &str = "MLAUDIT_CRASH_SEED";
const ROUNDS: u64 = 20;

/// The child: does nothing unless started by `kill_9_never_loses_an_acknowledged_event`.
#[test]
fn crash_child() {
    let Some(dir) = std::env::var_os(DIR_VAR) else {
        return;
    };
    let seed: u64 = std::env::var(SEED_VAR)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1);
    let options = if seed.is_multiple_of(2) {
        Options {
            segment_target: 64 << 10,
            run_events: 40,
            ..Options::default()
        }
    } else {
        Options::default()
    };
    let (store, report) =
        EmbeddedStore::open_with(std::path::Path::new(&dir), Some(signer()), options).unwrap();
    let mut rng = Rng::new(seed);
    let stdout = std::io::stdout();
    {
        let mut out = stdout.lock();
        writeln!(out, "READY {}", report.events).unwrap();
        out.flush().unwrap();
    }
    let mut n = seed * 1_000_000;
    let started = Instant::now();
    loop {
        if started.elapsed() > Duration::from_secs(60) {
            // Never outlive a parent that failed to kill us.
            std::process::exit(3);
        }
        let size = rng.range(1, 200);
        let specs: Vec<Spec> = (0..size)
            .map(|_| {
                n += 1;
                Spec::simple(rng.id(), KINDS[rng.below(KINDS.len() as u64) as usize], n)
            })
            .collect();
        let receipt = store
            .append(specs.iter().map(Spec::prepare).collect())
            .unwrap();
        // Acknowledge only what append returned for.
        let mut text = String::new();
        for a in &receipt.events {
            text.push_str(&format!("ACK {} {}\n", a.id, a.seq));
        }
        let mut out = stdout.lock();
        out.write_all(text.as_bytes()).unwrap();
        out.flush().unwrap();
    }
}

/// Reads the child's stdout, forwarding only complete lines (a kill can cut the last one).
fn forward_lines(stdout: std::process::ChildStdout, tx: mpsc::Sender<String>) {
    let mut reader = BufReader::new(stdout);
    let mut line = String::new();
    loop {
        line.clear();
        match reader.read_line(&mut line) {
            Ok(0) | Err(_) => return,
            Ok(_) if line.ends_with('\n') => {
                if tx.send(line.trim_end().to_owned()).is_err() {
                    return;
                }
            }
            Ok(_) => return, // a partial last line
        }
    }
}

#[test]
fn kill_9_never_loses_an_acknowledged_event() {
    let started = Instant::now();
    let dir = TempDir::new("crash");
    let exe = std::env::current_exe().unwrap();
    let mut rng = Rng::new(0xC4A5_u64 ^ u64::from(std::process::id()));
    let mut acked: HashMap<EventId, u64> = HashMap::new();
    let mut truncations = 0;
    let mut signed_at_open = 0;
    for round in 0..ROUNDS {
        let mut child = Command::new(&exe)
            .args(["--exact", "crash_child", "--nocapture", "--test-threads=1"])
            .env(DIR_VAR, dir.path())
            .env(SEED_VAR, (round + 1).to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        let reader = std::thread::spawn(move || forward_lines(stdout, tx));
        let mut stderr = child.stderr.take().unwrap();
        let errors = std::thread::spawn(move || {
            let mut text = String::new();
            let _ = std::io::Read::read_to_string(&mut stderr, &mut text);
            text
        });
        // The harness prints "test crash_child ... " before the test's own output, on the
        // same line.
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut lines = Vec::new();
        let events_at_open: u64 = loop {
            match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                Ok(line) => match line.find("READY ") {
                    Some(at) => break line[at + "READY ".len()..].parse().unwrap(),
                    None => lines.push(line),
                },
                Err(e) => {
                    let _ = child.kill();
                    let status = child.wait();
                    panic!("round {round}: the child never became ready ({e}); status {status:?}; output {lines:?}");
                }
            }
        };
        assert!(
            events_at_open >= acked.len() as u64,
            "round {round}: the child opened a log that lost acknowledged events"
        );
        // Wait for the child's first acknowledgement, then let it run on for a random while.
        loop {
            match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                Ok(line) => {
                    let ack = line.starts_with("ACK ");
                    lines.push(line);
                    if ack {
                        break;
                    }
                }
                Err(e) => {
                    let _ = child.kill();
                    let status = child.wait();
                    panic!("round {round}: the child acknowledged nothing ({e}); status {status:?}; output {lines:?}");
                }
            }
        }
        std::thread::sleep(Duration::from_millis(rng.range(0, 150)));
        child.kill().unwrap(); // SIGKILL
        let status = child.wait().unwrap();
        reader.join().unwrap();
        let errors = errors.join().unwrap();
        assert_eq!(
            status.signal(),
            Some(9),
            "round {round}: the child ended by itself: {status:?}\n{errors}"
        );
        let mut this_round = 0;
        lines.extend(rx.try_iter());
        for line in lines {
            let Some(rest) = line.strip_prefix("ACK ") else {
                continue;
            };
            let (id, seq) = rest.split_once(' ').unwrap();
            let id = EventId::parse(id).unwrap();
            let seq: u64 = seq.parse().unwrap();
            if let Some(old) = acked.insert(id, seq) {
                assert_eq!(old, seq, "id {id} acknowledged at two seqs");
            }
            this_round += 1;
        }

        let (store, report) = open(dir.path());
        truncations += usize::from(report.truncated.is_some());
        signed_at_open += usize::from(report.signed_at_open.is_some());
        let size = store.tree_size();
        for (id, seq) in &acked {
            assert_eq!(
                store.seq_of(id).unwrap(),
                Some(*seq),
                "round {round}: acknowledged event {id} is not at seq {seq} (report {report:?})"
            );
            assert!(*seq < size);
        }
        let v = match run_verify(&store) {
            Ok(v) => v,
            Err(f) => {
                panic!("round {round}: verify failed after the crash: {f} (report {report:?})")
            }
        };
        assert_eq!(v.events, size);
        assert_eq!(
            v.unsigned_tail, 0,
            "recovery signs whatever the crash left unsigned"
        );
        assert!(
            this_round > 0,
            "round {round}: no acknowledgement was read back"
        );
        drop(store);
    }
    assert!(
        acked.len() > 200,
        "only {} events were acknowledged",
        acked.len()
    );
    let segment_count = segments(dir.path()).len();
    assert!(
        segment_count > 1,
        "the small-segment rounds rolled no segment"
    );
    // Tell the story when run with --nocapture.
    println!(
        "{ROUNDS} kills, {} acknowledged events in {segment_count} segments, {truncations} torn tails truncated, {signed_at_open} checkpoints signed at open, {:?}",
        acked.len(),
        started.elapsed()
    );
}
