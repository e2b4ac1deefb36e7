//! `mlaudit export`: day partitions with manifests, checked from outside by the DuckDB example
//! (`examples/export-duckdb/query.py`, in a venv with `duckdb` and the Python SDK's verifier),
//! which proves every row against the signed checkpoint and then queries the files.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test fails loudly on any unexpected error"
)]

mod support;

use serde_json::{json, Value};
use std::path::Path;
use std::process::Command;
use support::Log;

const ROOT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../..");

fn events(n: usize, from: usize) -> String {
    (from..from + n)
        .map(|i| {
            json!({"kind": "prediction.served", "actor": {"type": "service", "id": "api"},
                   "subject": {"model": if i % 2 == 0 { "credit" } else { "churn" }, "version": "1",
                               "request": format!("r-{i}")},
                   "attributes": {"inputs": {"x": i}, "outputs": {"score": 0.5}}})
            .to_string()
                + "\n"
        })
        .collect()
}

/// A venv with duckdb and the SDK's verifier (created once, then reused).
fn python() -> String {
    let venv = format!("{ROOT}/target/export-venv");
    let py = format!("{venv}/bin/python");
    let ready = Path::new(&py).exists()
        && Command::new(&py)
            .args(["-c", "import duckdb, cryptography, mlaudit.verify"])
            .status()
            .is_ok_and(|s| s.success());
    if !ready {
        let ok = Command::new("python3")
            .args(["-m", "venv", &venv])
            .status()
            .unwrap()
            .success();
        assert!(ok, "cannot create {venv}");
        let sdk = format!("{venv}/sdk");
        let _ = std::fs::remove_dir_all(&sdk);
        std::fs::create_dir_all(&sdk).unwrap();
        for f in ["pyproject.toml", "README.md"] {
            std::fs::copy(format!("{ROOT}/clients/python/{f}"), format!("{sdk}/{f}")).unwrap();
        }
        let copied = Command::new("cp")
            .args(["-R", &format!("{ROOT}/clients/python/mlaudit"), &sdk])
            .status()
            .unwrap();
        assert!(copied.success());
        let mut last = String::new();
        for _ in 0..3 {
            let out = Command::new(&py)
                .args([
                    "-m",
                    "pip",
                    "install",
                    "--quiet",
                    "--disable-pip-version-check",
                    "duckdb",
                ])
                .arg(format!("{sdk}[verify]"))
                .output()
                .unwrap();
            if out.status.success() {
                return py;
            }
            last = String::from_utf8_lossy(&out.stderr).into_owned();
            std::thread::sleep(std::time::Duration::from_secs(5));
        }
        panic!("pip install duckdb ./clients/python[verify] failed three times:\n{last}");
    }
    py
}

#[test]
fn an_export_is_proven_against_the_checkpoint_and_queried_with_duckdb() {
    let log = Log::new("export");
    let file = log.write("a.ndjson", events(700, 0));
    log.run(&["append", &file, "--batch-size", "300"]).ok();
    let out_dir = log.dir.join("export");
    let out = out_dir.display().to_string();

    // Two runs: the second starts mid-way, so its partition begins after seq 0 and its
    // manifest needs the prefix hashes.
    let first = log.run(&["export", "--out", &out]).ok();
    assert!(
        first.stdout.contains("exported 700 events (seqs 0..700)"),
        "{}",
        first.stdout
    );
    let file = log.write("b.ndjson", events(300, 700));
    log.run(&["append", &file]).ok();
    let since = {
        let row: Value =
            serde_json::from_str(log.run(&["get", "700"]).ok().stdout.as_str()).unwrap();
        row["event"]["received"].as_str().unwrap().to_owned()
    };
    let second = log.run(&["export", "--from", &since, "--out", &out]).ok();
    assert!(second.stdout.contains("(seqs 700.."), "{}", second.stdout);
    if !cfg!(feature = "parquet") {
        log.run(&["export", "--format", "parquet", "--out", &out])
            .code(2);
    }

    // One partition per UTC day of receipt: two runs give two, or three across midnight.
    let manifests: Vec<_> = glob(&out_dir, ".manifest.json");
    assert!((2..=3).contains(&manifests.len()), "{manifests:?}");
    let m: Value =
        serde_json::from_slice(&std::fs::read(manifests.iter().max().unwrap()).unwrap()).unwrap();
    assert_eq!(m["first"], 700);
    assert!(!m["prefix"].as_array().unwrap().is_empty());

    let py = python();
    let script = format!("{ROOT}/examples/export-duckdb/query.py");
    let key = log.verifier_key_path();
    let run = || {
        Command::new(&py)
            .args([&script, &out, "--key", &key])
            .output()
            .unwrap()
    };
    let ok = run();
    let stdout = String::from_utf8_lossy(&ok.stdout).into_owned();
    assert!(
        ok.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    // Both runs' rows (the log also holds the reads these commands recorded).
    let exported: u64 = [&first.stdout, &second.stdout]
        .iter()
        .map(|s| s.split_whitespace().nth(1).unwrap().parse::<u64>().unwrap())
        .sum();
    assert!(exported >= 1000, "{exported}");
    assert!(first.stdout.contains("in 1 files") || first.stdout.contains("in 2 files"));
    assert!(
        stdout.contains(&format!(
            "verified {exported} rows in {} partitions",
            manifests.len()
        )),
        "{stdout}"
    );
    assert!(
        stdout.contains("credit") && stdout.contains("churn"),
        "{stdout}"
    );

    // A row changed in place (and the file's digest fixed to match) is still caught.
    let data = glob(&out_dir, ".ndjson").into_iter().min().unwrap();
    let text = std::fs::read_to_string(&data).unwrap();
    let forged = text.replacen("\"r-3\"", "\"r-X\"", 1);
    assert_ne!(forged, text);
    std::fs::write(&data, &forged).unwrap();
    let manifest = data.with_extension("manifest.json");
    let mut m: Value = serde_json::from_slice(&std::fs::read(&manifest).unwrap()).unwrap();
    m["file_sha256"] = json!(sha256_hex(forged.as_bytes()));
    std::fs::write(&manifest, serde_json::to_vec(&m).unwrap()).unwrap();
    let bad = run();
    assert_eq!(
        bad.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&bad.stdout)
    );
    assert!(String::from_utf8_lossy(&bad.stdout).contains("NOT VERIFIED"));
}

fn glob(dir: &Path, suffix: &str) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for day in std::fs::read_dir(dir).unwrap() {
        for f in std::fs::read_dir(day.unwrap().path()).unwrap() {
            let p = f.unwrap().path();
            if p.to_string_lossy().ends_with(suffix)
                && !(suffix == ".ndjson" && p.to_string_lossy().ends_with(".manifest.json"))
            {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Built with `--features parquet` (`.ci/run` runs this file so): the same proofs and query
/// over Parquet files.
#[cfg(feature = "parquet")]
#[test]
fn a_parquet_export_is_proven_and_queried_the_same_way() {
    let log = Log::new("export-parquet");
    let file = log.write("a.ndjson", events(500, 0));
    log.run(&["append", &file, "--batch-size", "200"]).ok();
    let out_dir = log.dir.join("export");
    let out = out_dir.display().to_string();
    let done = log
        .run(&["export", "--format", "parquet", "--out", &out])
        .ok();
    assert!(
        done.stdout.contains("exported 500 events"),
        "{}",
        done.stdout
    );
    let files = glob(&out_dir, ".parquet");
    assert!(!files.is_empty());
    assert_eq!(&std::fs::read(&files[0]).unwrap()[..4], b"PAR1");
    let py = python();
    let script = format!("{ROOT}/examples/export-duckdb/query.py");
    let key = log.verifier_key_path();
    let ok = Command::new(&py)
        .args([&script, &out, "--key", &key])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&ok.stdout).into_owned();
    assert!(
        ok.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    assert!(stdout.contains("verified 500 rows"), "{stdout}");
    assert!(
        stdout.contains("credit") && stdout.contains("250"),
        "{stdout}"
    );
}
