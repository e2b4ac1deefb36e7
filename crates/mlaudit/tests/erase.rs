//! `mlaudit erase`, run as a real process: the payloads it selects leave the disk, the erasure
//! is recorded as a governance event, proofs and the whole log still verify, events under
//! legal hold are refused as a whole, and running the same erasure again changes nothing.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test fails loudly on any unexpected error"
)]

mod support;

use serde_json::json;
use support::Log;

fn id(i: usize) -> String {
    format!("6a000000-0000-4000-8000-{i:012}")
}

/// `n` predictions of two models, each with a payload marker no other event holds.
fn append(log: &Log, n: usize) {
    let lines: String = (0..n)
        .map(|i| {
            json!({
                "id": id(i),
                "kind": "prediction.served",
                "actor": {"type": "service", "id": if i < 4 { "scoring-api" } else { "batch-scorer" }},
                "subject": {"model": if i % 2 == 0 { "credit" } else { "churn" }, "version": "1",
                            "request": format!("r-{i}")},
                "attributes": {"inputs": {"name": format!("personal-data-{i:04}")}, "outputs": {"score": 0.5}},
            })
            .to_string()
                + "\n"
        })
        .collect();
    let file = log.write("events.ndjson", lines);
    log.run(&["append", &file]).ok();
}

/// Whether any file of the data directory holds `needle` (segments here are not compressed).
fn on_disk(log: &Log, needle: &str) -> bool {
    fn walk(dir: &std::path::Path, needle: &[u8]) -> bool {
        std::fs::read_dir(dir).unwrap().any(|e| {
            let p = e.unwrap().path();
            if p.is_dir() {
                return walk(&p, needle);
            }
            std::fs::read(&p)
                .unwrap()
                .windows(needle.len())
                .any(|w| w == needle)
        })
    }
    walk(&log.data, needle.as_bytes())
}

#[test]
fn erased_payloads_leave_the_disk_and_every_proof_still_verifies() {
    let log = Log::new("erase");
    append(&log, 12);
    assert!(on_disk(&log, "personal-data-0003"));
    // Archived first (which records the retention policy at seq 12): the erasure reaches the
    // archive's copy too, the data directory remembering its archive.
    let arch = log.dir.join("archive");
    let url = format!("file://{}", arch.display());
    log.run(&[
        "retention",
        "apply",
        "--archive",
        &url,
        "--now",
        "2040-01-01T00:00:00Z",
    ])
    .ok();
    let out = log
        .run(&[
            "erase",
            "--subject",
            "request=r-3",
            "--reason",
            "DSR-2026-17",
        ])
        .ok();
    assert!(
        out.stdout.contains("1 events matched; erased 1 payloads"),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout
            .contains("1 archived copies removed (1 payload bundles written again)"),
        "{}",
        out.stdout
    );
    let archived = log.run(&["verify", "--archive", &url]).ok();
    assert!(archived.stdout.contains("intact"), "{}", archived.stdout);
    assert!(!on_disk(&log, "personal-data-0003"));
    // Archived payloads left the server; reads fetch them from the archive.
    assert!(!on_disk(&log, "personal-data-0005"));
    let kept = log.run(&["get", &id(5)]).ok().json();
    assert_eq!(kept["tier"], "cold");
    assert!(kept["event"]["attributes"]
        .to_string()
        .contains("personal-data-0005"));

    let event = log.run(&["get", &id(3)]).ok().json();
    assert_eq!(event["event"]["attributes"], "[redacted]");
    assert_eq!(event["payload_removed_by"], 13);
    let bundle = log.dir.join("bundle.json");
    log.run(&["prove", &id(3), "--out", bundle.to_str().unwrap()])
        .ok();
    let b: serde_json::Value = serde_json::from_slice(&std::fs::read(&bundle).unwrap()).unwrap();
    assert_eq!(b["payload"], serde_json::Value::Null);
    assert_eq!(b["payload_erased_by"]["leaf_index"], 13);
    let checked = log
        .run(&["verify-bundle", bundle.to_str().unwrap(), "--key", &log.key])
        .ok();
    assert!(
        checked
            .stdout
            .contains("payload removed by governance.payload_erased event"),
        "{}",
        checked.stdout
    );
    let erasure = log.run(&["get", "13"]).ok().json();
    let attributes = &erasure["event"]["attributes"];
    assert_eq!(erasure["event"]["kind"], "governance.payload_erased");
    assert_eq!(attributes["reason"], "DSR-2026-17");
    assert_eq!(attributes["criteria"], json!({"subject": "request=r-3"}));
    assert_eq!(attributes["events"], json!([id(3)]));
    let verified = log.run(&["verify"]).ok();
    assert!(
        verified
            .stdout
            .contains("1 payloads removed, each named by an erasure or expiry event that lists it"),
        "{}",
        verified.stdout
    );

    let again = log
        .run(&["erase", "--event", &id(3), "--reason", "DSR-2026-17"])
        .ok();
    assert!(
        again
            .stdout
            .contains("1 events matched; erased 0 payloads; 1 already removed"),
        "{}",
        again.stdout
    );
}

#[test]
fn an_erasure_touching_a_held_event_is_refused_as_a_whole() {
    let log = Log::new("erase-held");
    append(&log, 8);
    log.run(&["hold", "create", "--model", "credit", "--reason", "case 7"])
        .ok();
    // scoring-api wrote events 0..4: two of them (0, 2) are credit's, under hold.
    let out = log
        .run(&["erase", "--actor", "scoring-api", "--reason", "DSR-9"])
        .code(2);
    assert!(out.stderr.contains("legal hold"), "{}", out.stderr);
    for i in 0..4 {
        assert!(on_disk(&log, &format!("personal-data-{i:04}")), "event {i}");
    }
    let dry = log
        .run(&[
            "erase",
            "--actor",
            "batch-scorer",
            "--reason",
            "DSR-9",
            "--dry-run",
        ])
        .code(2);
    assert!(dry.stderr.contains("legal hold"), "{}", dry.stderr);
    let churn_only = log
        .run(&[
            "erase",
            "--subject",
            "request=r-5",
            "--reason",
            "DSR-9",
            "--dry-run",
        ])
        .ok();
    assert!(
        churn_only.stdout.contains("would erase 1 payloads"),
        "{}",
        churn_only.stdout
    );
    assert!(
        on_disk(&log, "personal-data-0005"),
        "a dry run changes nothing"
    );
    log.run(&["erase", "--subject", "nope=1", "--reason", "x"])
        .code(2);
    log.run(&["erase", "--event", "not-a-uuid", "--reason", "x"])
        .code(2);
    log.run(&["verify"]).ok();
}
