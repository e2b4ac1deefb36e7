//! A full disk never stops the writer for good: a batch that does not fit is refused with
//! `DiskFull` wherever the space runs out (the segment, the derived files), nothing of it is
//! acknowledged, every acknowledged event survives, and appends resume once space is freed;
//! the log verifies, and reopens and verifies.
//!
//! The store lives on a small tmpfs mounted for the test, which needs root (or
//! `CAP_SYS_ADMIN`): CI runs as root. Elsewhere the test says it was skipped.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{run_verify, signer, Spec, TempDir, KINDS};
use mlaudit_core::entry::EventId;
use mlaudit_embedded::{EmbeddedStore, Options};
use mlaudit_store::prelude::*;
use mlaudit_store::StoreError;
use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

/// A tmpfs of `size` mounted on a fresh directory, unmounted on drop.
struct SmallDisk {
    dir: TempDir,
}

impl SmallDisk {
    /// `None` when this process may not mount (not root).
    fn mount(size: &str) -> Option<SmallDisk> {
        let dir = TempDir::new("disk-full");
        let out = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0700"),
                "tmpfs",
            ])
            .arg(dir.path())
            .output()
            .unwrap();
        if out.status.success() {
            return Some(SmallDisk { dir });
        }
        let uid = Command::new("id").arg("-u").output().unwrap();
        let root = String::from_utf8_lossy(&uid.stdout).trim() == "0";
        assert!(
            !root,
            "mounting a tmpfs as root failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        None
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}

/// Fills the disk with `filler`, leaving about `keep` bytes free.
fn fill(filler: &Path, keep: u64) {
    let _ = std::fs::remove_file(filler);
    let mut f = std::fs::File::create(filler).unwrap();
    let chunk = vec![0xa5u8; 4096];
    while f.write_all(&chunk).is_ok() {}
    let _ = f.flush();
    let len = f.metadata().unwrap().len();
    f.set_len(len.saturating_sub(keep)).unwrap();
}

fn batch(first: u64, n: u64) -> Vec<Spec> {
    (first..first + n)
        .map(|i| {
            let mut id = [0u8; 16];
            id[..8].copy_from_slice(&i.to_be_bytes());
            id[8] = 0xdf;
            Spec::simple(EventId(id), KINDS[i as usize % KINDS.len()], i)
        })
        .collect()
}

#[test]
fn a_full_disk_refuses_batches_and_appends_resume_once_space_is_freed() {
    let Some(disk) = SmallDisk::mount("4m") else {
        eprintln!("skipped: mounting a tmpfs needs root");
        return;
    };
    let log: PathBuf = disk.path().join("log");
    let filler = disk.path().join("filler");
    let options = Options {
        segment_target: 64 << 10,
        ..Options::default()
    };
    let (mut store, _) = EmbeddedStore::open_with(&log, Some(signer()), options).unwrap();
    let mut acked: HashMap<EventId, u64> = HashMap::new();
    let (mut refused, mut next) = (0, 0u64);
    let mut places: Vec<String> = Vec::new();
    // Run out of space at every point of an append: the segment's records, a segment roll, the
    // tree levels and indexes written after the sync.
    for keep in (0..48u64).map(|k| k * 1024) {
        fill(&filler, keep);
        let specs = batch(next, 12);
        next += 12;
        match store.append(specs.iter().map(Spec::prepare).collect()) {
            Ok(r) => {
                for e in r.events {
                    assert!(acked.insert(e.id, e.seq).is_none_or(|s| s == e.seq));
                }
            }
            Err(StoreError::DiskFull(why)) => {
                refused += 1;
                places.push(why);
            }
            Err(other) => panic!("keeping {keep} bytes free: {other:?}"),
        }
        std::fs::remove_file(&filler).unwrap();
        // With space again, the next batch is stored whatever happened before.
        let specs = batch(next, 3);
        next += 3;
        let r = store
            .append(specs.iter().map(Spec::prepare).collect())
            .unwrap_or_else(|e| panic!("after freeing space (kept {keep}): {e}"));
        for e in r.events {
            acked.insert(e.id, e.seq);
        }
        if keep % 8192 == 0 {
            drop(store);
            store = EmbeddedStore::open_with(&log, Some(signer()), options)
                .unwrap()
                .0;
        }
    }
    assert!(refused >= 5, "only {refused} batches ran out of space");
    for place in ["writing the log", "writing the tree and index files"] {
        assert!(
            places.iter().any(|p| p.starts_with(place)),
            "no batch ran out of space {place}: {places:?}"
        );
    }
    for (id, seq) in &acked {
        assert_eq!(store.seq_of(id).unwrap(), Some(*seq), "acknowledged {id}");
    }
    run_verify(&store).unwrap();
    drop(store);
    let (store, report) = EmbeddedStore::open_with(&log, Some(signer()), options).unwrap();
    assert!(report.warnings.is_empty(), "{report:?}");
    run_verify(&store).unwrap();
    for (id, seq) in &acked {
        assert_eq!(
            store.seq_of(id).unwrap(),
            Some(*seq),
            "acknowledged {id}, reopened"
        );
    }
}
