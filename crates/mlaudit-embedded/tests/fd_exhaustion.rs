//! Running out of file descriptors never stops the writer for good: a segment roll or a new
//! tree-level file that cannot be opened refuses that batch (`Unavailable`), nothing of it is
//! acknowledged, and appends work again once descriptors are free; the log verifies.
//!
//! One test in its own binary: it lowers this process's `RLIMIT_NOFILE`, which would break
//! tests running beside it.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{run_verify, signer, Spec, TempDir, KINDS};
use mlaudit_core::entry::EventId;
use mlaudit_embedded::{EmbeddedStore, Options};
use mlaudit_store::prelude::*;
use mlaudit_store::StoreError;

/// The number the next descriptor would get: the lowest one free (there may be higher ones
/// in use, left by files closed in between).
fn lowest_free_fd() -> u64 {
    use std::os::fd::AsRawFd;
    let probe = std::fs::File::open("/dev/null").unwrap();
    probe.as_raw_fd() as u64
}

/// Runs `f` with no descriptor to spare (a limit at the lowest free number: no open can
/// succeed), then restores the limit.
fn without_spare_fds<T>(f: impl FnOnce() -> T) -> T {
    let (soft, hard) = rlimit::Resource::NOFILE.get().unwrap();
    rlimit::Resource::NOFILE
        .set(lowest_free_fd(), hard)
        .unwrap();
    let out = f();
    rlimit::Resource::NOFILE.set(soft, hard).unwrap();
    out
}

fn batch(first: u64, n: u64) -> Vec<Spec> {
    (first..first + n)
        .map(|i| {
            let mut id = [0u8; 16];
            id[..8].copy_from_slice(&i.to_be_bytes());
            id[8] = 0xfd;
            Spec::simple(EventId(id), KINDS[i as usize % KINDS.len()], i)
        })
        .collect()
}

fn append(
    store: &EmbeddedStore,
    specs: &[Spec],
) -> Result<mlaudit_store::AppendReceipt, StoreError> {
    store.append(specs.iter().map(Spec::prepare).collect())
}

#[test]
fn running_out_of_descriptors_refuses_the_batch_and_appends_resume() {
    let dir = TempDir::new("fds");
    // Small segments: every batch below starts a new one.
    let options = Options {
        segment_target: 2048,
        ..Options::default()
    };
    let (store, _) = EmbeddedStore::open_with(dir.path(), Some(signer()), options).unwrap();
    let first = batch(0, 8);
    append(&store, &first).unwrap();

    // 1. A segment roll that cannot create its file.
    let refused = batch(100, 8);
    let outcome = without_spare_fds(|| append(&store, &refused));
    assert!(
        matches!(&outcome, Err(StoreError::Unavailable(why)) if why.starts_with("creating the next segment: ")),
        "roll without descriptors: {outcome:?}"
    );
    assert_eq!(
        store.tree_size(),
        8,
        "nothing of the refused batch is visible"
    );
    for s in &refused {
        assert_eq!(store.seq_of(&s.id.unwrap()).unwrap(), None);
    }
    let r = append(&store, &refused).expect("the same batch once descriptors are free");
    assert!(r.events.iter().all(|e| !e.duplicate));
    assert_eq!(r.tree_size, 16);

    // 2. A new tree level (at 32 events) whose file cannot be opened: the events are durable
    //    in the log but the batch is refused; the next batch publishes them, and a retry of
    //    the refused one answers with their seqs.
    let store = {
        drop(store);
        let options = Options {
            segment_target: 1 << 30,
            ..Options::default()
        };
        EmbeddedStore::open_with(dir.path(), Some(signer()), options)
            .unwrap()
            .0
    };
    append(&store, &batch(200, 15)).unwrap();
    assert_eq!(store.tree_size(), 31);
    let crossing = batch(300, 2);
    let outcome = without_spare_fds(|| append(&store, &crossing));
    assert!(
        matches!(&outcome, Err(StoreError::Unavailable(why)) if why.starts_with("writing the tree and index files: ")),
        "new tree level without descriptors: {outcome:?}"
    );
    assert_eq!(
        store.tree_size(),
        31,
        "unpublished until the tree level exists"
    );
    let next = append(&store, &batch(400, 1)).unwrap();
    assert_eq!(next.tree_size, 34);
    let retry = append(&store, &crossing).unwrap();
    assert!(retry.events.iter().all(|e| e.duplicate), "{retry:?}");
    assert_eq!(
        retry.events.iter().map(|e| e.seq).collect::<Vec<_>>(),
        [31, 32]
    );
    run_verify(&store).unwrap();
    drop(store);
    let (store, report) = common::open(dir.path());
    assert_eq!(report.events, 34);
    assert!(report.warnings.is_empty(), "{report:?}");
    run_verify(&store).unwrap();
}
