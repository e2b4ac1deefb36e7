//! A real embedded log to archive, and temporary directories.

#![allow(dead_code, reason = "each test binary uses part of this module")]

use mlaudit_archive::write::Extended;
use mlaudit_archive::{Archive, ArchiveError};
use mlaudit_core::event::prepare;
use mlaudit_core::note::{NoteSigner, NoteVerifier};
use mlaudit_embedded::EmbeddedStore;
use mlaudit_store::prelude::*;
use std::path::{Path, PathBuf};

pub const ORIGIN: &str = "archive.test.example/log";

pub fn signer() -> NoteSigner {
    NoteSigner::from_seed(ORIGIN, [7; 32]).unwrap()
}

pub fn verifier() -> NoteVerifier {
    signer().verifier()
}

/// A directory removed when dropped.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(name: &str) -> TempDir {
        let path = std::env::temp_dir().join(format!(
            "mlaudit-archive-{name}-{}-{}",
            std::process::id(),
            uuid_like()
        ));
        std::fs::create_dir_all(&path).unwrap();
        TempDir(path)
    }

    pub fn url(&self) -> String {
        format!("file://{}", self.0.display())
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn uuid_like() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos()
}

/// An embedded log in `dir` holding `batches` of predictions (`tag` varies their content).
pub fn log_with(dir: &Path, batches: &[usize], tag: &str) -> EmbeddedStore {
    let (store, _) = EmbeddedStore::open(dir, Some(signer())).unwrap();
    let mut n = 0usize;
    for &len in batches {
        let events = (n..n + len)
            .map(|i| {
                let json = serde_json::json!({
                    "id": format!("00000000-0000-4000-8000-{:012}", i),
                    "kind": "prediction.served",
                    "time": "2026-01-02T03:04:05Z",
                    "actor": {"type": "service", "id": "scoring-api"},
                    "subject": {"model": "credit", "version": "3", "request": format!("{tag}-{i}")},
                    "attributes": {"inputs": {"x": i}, "outputs": {"score": 0.25}},
                });
                prepare(&json.to_string(), "test").unwrap()
            })
            .collect();
        store.append(events).unwrap();
        n += len;
    }
    store
}

/// The log's signed checkpoint of `size`.
pub fn checkpoint(store: &dyn Store, size: u64) -> String {
    store
        .checkpoint(size)
        .unwrap()
        .expect("a checkpoint of that size")
}

/// Extends `archive` to the checkpoint of `size` of `log`, without progress.
pub fn extend_to(archive: &Archive, log: &dyn Store, size: u64) -> Result<Extended, ArchiveError> {
    mlaudit_archive::write::extend(
        archive,
        log,
        &checkpoint(log, size),
        &verifier(),
        &mut |_, _| {},
    )
}

/// Verifies `archive` with the test key, without progress.
pub fn verify_all(archive: &Archive) -> Result<mlaudit_archive::verify::Verified, ArchiveError> {
    mlaudit_archive::verify::verify(archive, &verifier(), &mut |_, _| {})
}
