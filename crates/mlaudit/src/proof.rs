//! `verify`, `prove`, `verify-bundle` and `consistency`.

use crate::ledger::{self, InputError, VerifyFailed};
use crate::output::{print_json, Progress};
use crate::read::resolve;
use anyhow::{Context, Result};
use mlaudit_core::bundle::ProofBundle;
use mlaudit_core::merkle::CompactRange;
use mlaudit_core::note::{open_checkpoint, Checkpoint, NoteVerifier};
use mlaudit_store::prelude::*;
use mlaudit_store::{proofs, verify as v, Nodes, Store};
use std::path::Path;

/// Reads a verifier key given as text or as a file holding it.
pub fn load_key(key: &str) -> Result<NoteVerifier> {
    let text = if Path::new(key).is_file() {
        std::fs::read_to_string(key).with_context(|| format!("reading key file {key}"))?
    } else {
        key.to_owned()
    };
    NoteVerifier::parse(text.trim()).map_err(|e| InputError(format!("--key: {e}")).into())
}

/// The verifier key given with `--key`, else the data directory's.
fn key_for(data: &Path, key: Option<&str>) -> Result<NoteVerifier> {
    match key {
        Some(k) => load_key(k),
        None => Ok(ledger::signer(data)?.verifier()),
    }
}

/// Reads a signed checkpoint saved earlier and checks its signature.
fn saved_checkpoint(file: &Path, key: &NoteVerifier) -> Result<(String, Checkpoint)> {
    let note = std::fs::read_to_string(file)
        .map_err(|e| InputError(format!("cannot read {}: {e}", file.display())))?;
    let cp = open_checkpoint(key, &note).map_err(|e| {
        VerifyFailed(format!(
            "{} is not a checkpoint signed by {}: {e}",
            file.display(),
            key.name()
        ))
    })?;
    Ok((note, cp))
}

/// Checks that the log is a consistent extension of the trusted checkpoint `cp`: at least as
/// long, and the same tree at its size.
fn check_extends(store: &dyn Store, cp: &Checkpoint, what: &str) -> Result<()> {
    let size = store.tree_size();
    if cp.size > size {
        return Err(VerifyFailed(format!(
            "verification FAILED: the log holds {size} events, fewer than the {} of {what}: it was rolled back or truncated",
            cp.size
        ))
        .into());
    }
    let root = CompactRange::from_source(&Nodes(store), cp.size)?.root();
    if !root.ct_eq(&cp.root) {
        return Err(VerifyFailed(format!(
            "verification FAILED: the log's tree at size {} is not the one {what} signed (root {} here, {} there): the log was rewritten",
            cp.size,
            root.to_hex(),
            cp.root.to_hex()
        ))
        .into());
    }
    Ok(())
}

/// `mlaudit verify --archive URL`: checks the archive alone (see `mlaudit_archive::verify`).
pub fn verify_archive(data: &Path, url: &str, key: Option<&str>) -> Result<()> {
    let key = key_for(data, key)?;
    let archive = mlaudit_archive::Archive::open(url)?;
    let mut progress = Progress::new("verifying the archive", archive.size()?);
    let checked = mlaudit_archive::verify::verify(&archive, &key, &mut |d, _| progress.set(d));
    progress.finish();
    let v = match checked {
        Ok(v) => v,
        Err(e) if e.is_verification_failure() => {
            return Err(VerifyFailed(format!("archive verification FAILED: {e}")).into())
        }
        Err(e) => return Err(e.into()),
    };
    println!(
        "verified the archive {url}: {} events, {} objects, {} payloads ({} no longer kept), {} checkpoints: intact",
        v.size, v.objects, v.payloads, v.payloads_absent, v.checkpoints
    );
    println!("root {} at tree size {}", v.root.to_hex(), v.size);
    if let Some(behind) = v.checkpoint_behind {
        eprintln!(
            "mlaudit: warning: the archive's `checkpoint` names {behind} events, behind checkpoints/{}: a run stopped before its last write (the next `retention apply` repairs it), or `checkpoint` was put back",
            v.size
        );
    }
    Ok(())
}

pub fn verify(data: &Path, trusted: Option<&Path>, key: Option<&str>) -> Result<()> {
    let key = key_for(data, key)?;
    let trusted = trusted.map(|f| saved_checkpoint(f, &key)).transpose()?;
    let store = ledger::open(data)?;
    let report = verify_store(&store, &key)?;
    println!(
        "verified {} events and {} checkpoints: intact",
        report.events, report.checkpoints
    );
    println!(
        "root {} at tree size {}",
        report.root.to_hex(),
        report.events
    );
    if report.redacted > 0 {
        println!(
            "{} payloads removed, each named by an erasure or expiry event that lists it",
            report.redacted
        );
    }
    if let Some((_, cp)) = &trusted {
        check_extends(&store, cp, "the trusted checkpoint")?;
        println!(
            "consistent with the trusted checkpoint at tree size {}",
            cp.size
        );
    }
    if report.unsigned_tail > 0 {
        println!(
            "note: the last {} events are not yet covered by a checkpoint",
            report.unsigned_tail
        );
    }
    Ok(())
}

/// Runs a full verification with a progress bar; a failure becomes exit code 1.
pub fn verify_store(store: &dyn Store, key: &NoteVerifier) -> Result<v::VerifyReport> {
    let mut progress = Progress::new("verifying", store.tree_size());
    let result = v::verify(store, key, &mut |done, _| progress.set(done));
    progress.finish();
    result.map_err(|f| match f.unavailable {
        true => anyhow::anyhow!(
            "verification could not finish (nothing was found wrong before the event it stopped at): {f}"
        ),
        false => VerifyFailed(format!("verification FAILED: {f}")).into(),
    })
}

pub fn prove(data: &Path, id: &str, out: Option<&Path>) -> Result<()> {
    let store = ledger::open(data)?;
    let found =
        resolve(&store, id).and_then(|seq| Ok((seq, proofs::inclusion_bundle(&store, seq)?)));
    ledger::audit_read(&store, "mlaudit prove", id, usize::from(found.is_ok()))?;
    let (seq, bundle) = found?;
    match out {
        Some(path) => {
            std::fs::write(path, serde_json::to_string_pretty(&bundle)? + "\n")
                .with_context(|| format!("writing {}", path.display()))?;
            eprintln!(
                "wrote proof bundle for seq {seq} (tree size {}) to {}",
                bundle.tree_size,
                path.display()
            );
            Ok(())
        }
        None => print_json(&bundle),
    }
}

/// Checks a bundle; returns a one-line success description.
pub fn check_bundle(bundle: &ProofBundle, key: &NoteVerifier) -> Result<String> {
    let ok = bundle
        .verify(key)
        .map_err(|e| VerifyFailed(format!("bundle verification FAILED: {e}")))?;
    Ok(format!(
        "OK: event {} ({}) is leaf {} of the log {} at tree size {}, root {}{}",
        ok.entry.id,
        ok.entry.kind,
        bundle.leaf_index,
        key.name(),
        bundle.tree_size,
        ok.root.to_hex(),
        match (&ok.payload_erased_by, ok.payload_present) {
            (_, true) => ", payload matches its digest".to_owned(),
            (Some(r), _) => format!(
                ", payload removed by {} event {} (leaf {}, proven in the same tree)",
                r.kind, r.id, r.seq
            ),
            (None, false) => ", payload redacted".to_owned(),
        }
    ))
}

pub fn verify_bundle(file: &Path, key: &str) -> Result<()> {
    let key = load_key(key)?;
    let text = std::fs::read_to_string(file)
        .map_err(|e| InputError(format!("cannot read {}: {e}", file.display())))?;
    let bundle: ProofBundle = serde_json::from_str(&text)
        .map_err(|e| VerifyFailed(format!("{} is not a proof bundle: {e}", file.display())))?;
    println!("{}", check_bundle(&bundle, &key)?);
    Ok(())
}

/// Where a consistency proof starts.
#[derive(Debug)]
pub enum From {
    /// A stored checkpoint's size.
    Size(u64),
    /// A signed checkpoint saved earlier, in this file.
    Saved(std::path::PathBuf),
}

pub fn consistency(data: &Path, from: From, to: Option<u64>, key: Option<&str>) -> Result<()> {
    let key = key_for(data, key)?;
    let store = ledger::open(data)?;
    let to = match to {
        Some(t) => t,
        None => *store
            .checkpoint_sizes()?
            .last()
            .ok_or_else(|| InputError("the log has no checkpoint".into()))?,
    };
    let proof = match from {
        From::Size(size) => {
            proofs::consistency(&store, size, to).map_err(|e| InputError(e.to_string()))?
        }
        From::Saved(file) => {
            let (note, cp) = saved_checkpoint(&file, &key)?;
            if cp.size > to {
                return Err(VerifyFailed(format!(
                    "consistency FAILED: the saved checkpoint is of {} events, but the log's is of {to}: it was rolled back or truncated",
                    cp.size
                ))
                .into());
            }
            let to_note = store
                .checkpoint(to)?
                .ok_or_else(|| InputError(format!("no checkpoint is stored for tree size {to}")))?;
            let hashes = mlaudit_core::merkle::consistency_proof(&Nodes(&store), cp.size, to)?
                .map_err(|e| InputError(e.to_string()))?;
            proofs::ConsistencyProof {
                from: cp.size,
                to,
                proof: hashes
                    .iter()
                    .map(|h| mlaudit_core::b64::encode(h.0))
                    .collect(),
                from_checkpoint: note,
                to_checkpoint: to_note,
            }
        }
    };
    print_json(&proof)?;
    proof
        .verify(&key)
        .map_err(|e| VerifyFailed(format!("consistency proof FAILED: {e}")))?;
    eprintln!(
        "OK: the tree at size {} is a prefix of the tree at size {to} ({} hashes)",
        proof.from,
        proof.proof.len()
    );
    Ok(())
}
