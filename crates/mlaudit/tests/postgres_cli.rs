//! Every command on a log in PostgreSQL (`--store`): append, get, query, checkpoint, prove,
//! verify-bundle, consistency, erase, retention, restore and verify give the answers they give
//! on the embedded store.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test fails loudly on any unexpected error"
)]

mod pg_support;

use pg_support::{event, PgLog};
use std::io::Write;
use std::process::{Command, Stdio};

fn ok(out: std::process::Output) -> String {
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn every_command_works_against_the_postgres_store() {
    let log = PgLog::new("cli");
    let ndjson: String = (0..50).map(|n| event(n) + "\n").collect();
    let mut child = Command::new(pg_support::BIN)
        .arg("--data")
        .arg(log.data())
        .arg("--store")
        .arg(log.url())
        .args(["append", "--batch-size", "20", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(ndjson.as_bytes())
        .unwrap();
    ok(child.wait_with_output().unwrap());

    let id = "00000000-0000-4000-9000-000000000007";
    let got: serde_json::Value = serde_json::from_str(&ok(log.cli(&["get", id]))).unwrap();
    assert_eq!(got["seq"], 7);
    let (stored, rows) = log.stored();
    assert_eq!((stored.len(), rows), (50, 50));
    let sizes = ok(log.cli(&["checkpoint", "--list"]));
    let first = sizes.split_whitespace().nth(1).unwrap().to_owned();

    let bundle = log.dir.join("bundle.json");
    ok(log.cli(&["prove", id, "--out", bundle.to_str().unwrap()]));
    let key = log.data().join("key").join("verifier.key");
    ok(log.cli(&[
        "verify-bundle",
        bundle.to_str().unwrap(),
        "--key",
        key.to_str().unwrap(),
    ]));
    ok(log.cli(&["consistency", "--from", &first]));
    log.verify();

    // Erasure: the payload row goes, the erasure is recorded, every proof still checks.
    let erased = ok(log.cli(&["erase", "--event", id, "--reason", "DSR-3"]));
    assert!(erased.contains("erased 1 payloads"), "{erased}");
    let got: serde_json::Value = serde_json::from_str(&ok(log.cli(&["get", id]))).unwrap();
    assert_eq!(got["event"]["attributes"], "[redacted]");
    assert!(got["payload_removed_by"].as_u64().unwrap() >= 50, "{got}");
    ok(log.cli(&["prove", id, "--out", bundle.to_str().unwrap()]));
    let checked = ok(log.cli(&[
        "verify-bundle",
        bundle.to_str().unwrap(),
        "--key",
        key.to_str().unwrap(),
    ]));
    assert!(
        checked.contains("payload removed by governance.payload_erased"),
        "{checked}"
    );
    log.verify();

    // Retention archives the log and moves the payloads out of the database; reads fetch
    // them from the archive, a restore brings a range back, an archived payload can be erased.
    let url = format!("file://{}", log.dir.join("archive").display());
    let applied = ok(log.cli(&[
        "retention",
        "apply",
        "--now",
        "2040-01-01T00:00:00Z",
        "--archive",
        &url,
    ]));
    assert!(
        applied.contains("are now kept only in the archive"),
        "{applied}"
    );
    let cold: serde_json::Value = serde_json::from_str(&ok(log.cli(&["get", "3"]))).unwrap();
    assert_eq!(cold["tier"], "cold", "{cold}");
    assert!(cold["event"]["attributes"].is_object(), "{cold}");
    let (_, rows) = log.stored();
    assert_eq!(rows, 50, "entries stay in the database");
    log.verify();
    ok(log.cli(&["restore", "--from", "0", "--to", "9"]));
    let back: serde_json::Value = serde_json::from_str(&ok(log.cli(&["get", "3"]))).unwrap();
    assert_eq!(back["tier"], "hot", "{back}");
    let cold_id = "00000000-0000-4000-9000-000000000020";
    let erased = ok(log.cli(&["erase", "--event", cold_id, "--reason", "DSR-4"]));
    assert!(erased.contains("erased 1 payloads"), "{erased}");
    let gone: serde_json::Value = serde_json::from_str(&ok(log.cli(&["get", cold_id]))).unwrap();
    assert!(gone["payload_removed_by"].is_u64(), "{gone}");
    log.verify();
    // A second `init` of the same data directory is refused; the log is untouched.
    assert!(!log.cli(&["init"]).status.success());
    log.verify();
}
