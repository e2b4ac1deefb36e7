//! `verify`, `prove`, `verify-bundle` and `consistency`.

use crate::ledger::{self, InputError, VerifyFailed};
use crate::output::{print_json, Progress};
use crate::read::resolve;
use anyhow::{Context, Result};
use mlaudit_core::bundle::ProofBundle;
use mlaudit_core::note::NoteVerifier;
use mlaudit_store::{proofs, verify as v, Store};
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

pub fn verify(data: &Path) -> Result<()> {
    let key = ledger::signer(data)?.verifier();
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
    result.map_err(|f| VerifyFailed(format!("verification FAILED: {f}")).into())
}

pub fn prove(data: &Path, id: &str, out: Option<&Path>) -> Result<()> {
    let store = ledger::open(data)?;
    let seq = resolve(&store, id)?;
    let bundle = proofs::inclusion_bundle(&store, seq)?;
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
        if ok.payload_present {
            ", payload matches its digest"
        } else {
            ", payload redacted"
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

pub fn consistency(data: &Path, from: u64, to: Option<u64>) -> Result<()> {
    let key = ledger::signer(data)?.verifier();
    let store = ledger::open(data)?;
    let to = match to {
        Some(t) => t,
        None => *store
            .checkpoint_sizes()?
            .last()
            .ok_or_else(|| InputError("the log has no checkpoint".into()))?,
    };
    let proof = proofs::consistency(&store, from, to).map_err(|e| InputError(e.to_string()))?;
    print_json(&proof)?;
    proof
        .verify(&key)
        .map_err(|e| VerifyFailed(format!("consistency proof FAILED: {e}")))?;
    eprintln!(
        "OK: the tree at size {from} is a prefix of the tree at size {to} ({} hashes)",
        proof.proof.len()
    );
    Ok(())
}
