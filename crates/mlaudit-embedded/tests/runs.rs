//! The on-disk index runs seen from outside: a damaged run is reported by `verify` with its
//! file, and runs that are deleted are rebuilt from `index.bin` at open.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests fail loudly")]

mod common;

use common::{open_with, run_verify, small_runs, Spec, TempDir, KINDS};
use mlaudit_core::EventId;
use mlaudit_store::prelude::*;
use mlaudit_store::{Query, Store};
use std::path::{Path, PathBuf};

const EVENTS: u64 = 300;

fn id(n: u64) -> EventId {
    let mut b = [0x5a; 16];
    b[8..].copy_from_slice(&n.to_be_bytes());
    EventId(b)
}

/// A closed log of [`EVENTS`] events in batches of 10, with runs of 16 events.
fn build(tag: &str) -> TempDir {
    let dir = TempDir::new(tag);
    let (store, _) = open_with(dir.path(), small_runs(16));
    for b in 0..EVENTS / 10 {
        let batch = (b * 10..b * 10 + 10)
            .map(|n| Spec::simple(id(n), KINDS[n as usize % KINDS.len()], n).prepare())
            .collect();
        store.append(batch).unwrap();
    }
    drop(store);
    dir
}

fn run_files(dir: &Path) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.file_name().unwrap().to_string_lossy().starts_with("run-"))
        .collect();
    out.sort();
    out
}

fn check_lookups(store: &impl Store) {
    for n in 0..EVENTS {
        assert_eq!(store.seq_of(&id(n)).unwrap(), Some(n), "id {n}");
    }
    let q = Query {
        kind: Some(KINDS[3].into()),
        limit: 1000,
        ..Query::default()
    };
    let want: Vec<u64> = (0..EVENTS)
        .filter(|n| *n as usize % KINDS.len() == 3)
        .collect();
    assert_eq!(store.query(&q).unwrap(), want);
}

#[test]
fn a_flipped_byte_inside_a_run_is_reported_by_verify_with_its_file() {
    let base = build("run-flip");
    let runs = run_files(base.path());
    assert!(!runs.is_empty(), "the log has index runs");
    for (i, at) in [(0usize, 5u64), (runs.len() - 1, 40)] {
        let copy = TempDir::copy_of(base.path(), "run-flip");
        let name = runs[i].file_name().unwrap().to_owned();
        let path = copy.path().join(&name);
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[at as usize] ^= 0x10;
        std::fs::write(&path, bytes).unwrap();
        let (store, _) = open_with(copy.path(), small_runs(16));
        let failure = run_verify(&store).expect_err("a damaged run must fail verify");
        let text = failure.to_string();
        assert!(
            text.contains(&*name.to_string_lossy()),
            "verify must name {name:?}: {text}"
        );
    }
}

#[test]
fn deleted_runs_are_rebuilt_from_the_index_records_at_open() {
    let base = build("run-deleted");
    let copy = TempDir::copy_of(base.path(), "run-deleted");
    for r in run_files(copy.path()) {
        std::fs::remove_file(r).unwrap();
    }
    let (store, report) = open_with(copy.path(), small_runs(16));
    assert_eq!(report.events, EVENTS);
    assert!(
        !run_files(copy.path()).is_empty(),
        "opening writes the tail out as runs again"
    );
    check_lookups(&store);
    run_verify(&store).unwrap();
    // And a log opened with the default options reads the same runs.
    drop(store);
    let (store, _) = common::open(copy.path());
    check_lookups(&store);
    run_verify(&store).unwrap();
}

/// A log larger than the replay window (8 MiB), its watermark deleted: opening replays every
/// segment a window at a time, and a torn tail of zeros longer than a window is still
/// recognized and removed.
#[test]
fn a_replay_longer_than_its_window_recovers_everything() {
    let dir = TempDir::new("replay-window");
    let (store, _) = common::open(dir.path());
    let filler = "x".repeat(200_000);
    let mut ids = Vec::new();
    for n in 0..60u64 {
        let json = format!(
            r#"{{"id":"{}","kind":"x.bulk","actor":{{"id":"loader","type":"service"}},"attributes":{{"n":{n},"blob":"{filler}"}}}}"#,
            uuid::Uuid::from_bytes(id(1000 + n).0)
        );
        let ev = mlaudit_core::event::prepare(&json, "local:test").unwrap();
        ids.push(id(1000 + n));
        store.append(vec![ev]).unwrap();
    }
    drop(store);
    std::fs::remove_file(dir.path().join("derived.meta")).unwrap();
    let seg = common::segments(dir.path()).pop().unwrap();
    let len = seg.metadata().unwrap().len();
    assert!(
        len > 8 << 20,
        "the segment ({len} bytes) is longer than a window"
    );
    // As after a power loss with the size extended first: 9 MiB of zeros at the end.
    let f = std::fs::OpenOptions::new().append(true).open(&seg).unwrap();
    f.set_len(len + (9 << 20)).unwrap();
    drop(f);
    let (store, report) = common::open(dir.path());
    assert_eq!(report.events, 60);
    assert_eq!(report.replayed, 60);
    let (_, offset, bytes) = report.truncated.clone().expect("the zeros are a torn tail");
    assert_eq!((offset, bytes), (len, 9 << 20));
    for (n, id) in ids.iter().enumerate() {
        assert_eq!(store.seq_of(id).unwrap(), Some(n as u64));
    }
    run_verify(&store).unwrap();
}
