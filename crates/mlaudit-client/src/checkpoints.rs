//! The logger as a witness of the log: it keeps the latest checkpoint it received (the file
//! `checkpoint` in its spool directory, written atomically, mode 0600) and checks each newer one
//! against it: a smaller tree is a rollback, the same size with another root a fork, and a
//! larger tree must come with a consistency proof (`GET /v1/proof/consistency`) that verifies
//! (RFC 9162 §2.1.4). A failure is logged at error level and counted in
//! [`Stats::consistency_failures`](crate::Stats); the kept checkpoint stays the trusted one.
//!
//! A server that cannot be asked just now is not a failure: the check runs again with a later
//! receipt. Checks run on the sender thread, at most once per [`CHECK_EVERY`] (consistency is
//! transitive, so checking the newest checkpoint covers those in between), and once more when
//! the logger closes. With a verifier key ([`Builder::verifier_key`](crate::Builder)) the
//! signatures are checked too.

use crate::stats::Counters;
use crate::transport::{ProofAnswer, Transport};
use mlaudit_core::merkle::{verify_consistency, Hash};
use mlaudit_core::note::{open_checkpoint, unverified_checkpoint, Checkpoint, NoteVerifier};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Least time between two checks.
pub(crate) const CHECK_EVERY: Duration = Duration::from_secs(1);

/// The file, in the spool directory.
const FILE_NAME: &str = "checkpoint";

/// The checkpoint kept, and the newest one received since.
#[derive(Debug)]
pub(crate) struct Witness {
    path: PathBuf,
    kept: Option<Checkpoint>,
    newest: Option<String>,
    verifier: Option<NoteVerifier>,
    last_check: Option<Instant>,
}

/// Why a checkpoint was not accepted.
enum Rejected {
    /// A failure of the log (rollback, fork, bad proof, bad signature).
    Log(String),
    /// The server could not be asked now.
    Later(String),
}

/// The checkpoint of a signed note (without checking its signature).
fn body(note: &str) -> Option<Checkpoint> {
    unverified_checkpoint(note).ok()
}

impl Witness {
    /// Loads the kept checkpoint of `dir`, if any.
    pub(crate) fn open(dir: &Path, verifier: Option<NoteVerifier>) -> Witness {
        let path = dir.join(FILE_NAME);
        let kept = match std::fs::read_to_string(&path) {
            Ok(note) => {
                let kept = body(&note);
                if kept.is_none() {
                    tracing::error!(path = %path.display(), "mlaudit: the kept checkpoint does not parse; the next one is taken as is");
                }
                kept
            }
            Err(_) => None,
        };
        Witness {
            path,
            kept,
            newest: None,
            verifier,
            last_check: None,
        }
    }

    /// Notes a checkpoint from a receipt.
    pub(crate) fn received(&mut self, note: String) {
        let newer = match (body(&note), self.newest.as_deref().and_then(body)) {
            (Some(new), Some(old)) => new.size >= old.size,
            (Some(_), None) => true,
            (None, _) => false,
        };
        if newer {
            self.newest = Some(note);
        }
    }

    /// Checks the newest checkpoint received, unless one was checked less than
    /// [`CHECK_EVERY`] ago and `now` is false.
    pub(crate) fn check(&mut self, transport: &Transport, counters: &Counters, now: bool) {
        if !now && self.last_check.is_some_and(|t| t.elapsed() < CHECK_EVERY) {
            return;
        }
        let Some(note) = self.newest.take() else {
            return;
        };
        self.last_check = Some(Instant::now());
        match self.accept(&note, transport) {
            Ok(Some(cp)) => {
                if let Err(e) = self.keep(&note) {
                    tracing::error!(error = %e, path = %self.path.display(), "mlaudit: cannot write the kept checkpoint");
                }
                self.kept = Some(cp);
            }
            Ok(None) => {}
            Err(Rejected::Later(why)) => {
                tracing::debug!(%why, "mlaudit: checkpoint not checked yet");
                // Still to check, unless a newer one arrives first.
                if self.newest.is_none() {
                    self.newest = Some(note);
                }
            }
            Err(Rejected::Log(why)) => {
                Counters::add(&counters.consistency_failures, 1);
                tracing::error!(%why, "mlaudit: the audit log's new checkpoint is NOT consistent with the one this logger kept: the log was rolled back or forked");
            }
        }
    }

    /// The new checkpoint if it extends the kept one (`None` if it is the kept one).
    fn accept(&self, note: &str, transport: &Transport) -> Result<Option<Checkpoint>, Rejected> {
        let new = match &self.verifier {
            Some(key) => open_checkpoint(key, note)
                .map_err(|e| Rejected::Log(format!("a checkpoint that does not verify: {e}")))?,
            None => body(note)
                .ok_or_else(|| Rejected::Log("a checkpoint that does not parse".into()))?,
        };
        let Some(old) = &self.kept else {
            return Ok(Some(new));
        };
        if new.origin != old.origin {
            return Err(Rejected::Log(format!(
                "a checkpoint of another log: {:?}, not {:?}",
                new.origin, old.origin
            )));
        }
        if new.size < old.size {
            return Err(Rejected::Log(format!(
                "rollback: the log's tree has {} events, fewer than the {} of the kept checkpoint",
                new.size, old.size
            )));
        }
        if new.size == old.size {
            return if new.root.ct_eq(&old.root) {
                Ok(None)
            } else {
                Err(Rejected::Log(format!(
                    "fork: another tree at size {}",
                    new.size
                )))
            };
        }
        let proof = match transport.consistency(old.size, new.size) {
            ProofAnswer::Proof(hashes) => hashes,
            ProofAnswer::Refused(why) => return Err(Rejected::Log(why)),
            ProofAnswer::Unreachable(why) => return Err(Rejected::Later(why)),
        };
        let proof: Vec<Hash> = proof
            .iter()
            .map(|h| {
                mlaudit_core::b64::decode(h)
                    .ok()
                    .and_then(|b| Hash::from_slice(&b))
            })
            .collect::<Option<_>>()
            .ok_or_else(|| {
                Rejected::Log("a consistency proof hash is not base64 of 32 bytes".into())
            })?;
        verify_consistency(old.size, new.size, &old.root, &new.root, &proof).map_err(|e| {
            Rejected::Log(format!(
                "the consistency proof from {} to {} does not verify: {e}",
                old.size, new.size
            ))
        })?;
        Ok(Some(new))
    }

    /// Writes `note` as the kept checkpoint: temp file, fsync, rename, directory fsync.
    fn keep(&self, note: &str) -> std::io::Result<()> {
        let tmp = self.path.with_extension("tmp");
        let mut f = crate::spool::create_private(&tmp)?;
        f.write_all(note.as_bytes())?;
        f.sync_all()?;
        std::fs::rename(&tmp, &self.path)?;
        if let Some(dir) = self.path.parent() {
            std::fs::File::open(dir)?.sync_all()?;
        }
        Ok(())
    }
}
