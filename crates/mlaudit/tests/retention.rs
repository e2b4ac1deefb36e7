//! `mlaudit retention plan|apply`, `verify --archive` and `serve`'s retention schedule, run
//! as real processes: tiers by age against `--now`, the archive on the filesystem and on an
//! S3-compatible server, an apply killed with `kill -9` at several points and finished by the
//! next one, damage named by object, and a changed policy recorded in the log.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test fails loudly on any unexpected error"
)]

mod support;

use serde_json::json;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use support::serve::Server;
use support::Log;

const BIN: &str = env!("CARGO_BIN_EXE_mlaudit");
const FUTURE: &str = "2040-01-01T00:00:00Z";
/// The first of January three years from now (two to three years after the events, which
/// are appended now): the low-risk rule (1y) makes payloads due, the high-risk one (7y) does
/// not.
fn two_years_on() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    // In mean Gregorian years: around New Year the year may be off by one, which leaves the
    // date between one and seven years on all the same.
    let year = 1970 + secs / 31_556_952;
    format!("{}-01-01T00:00:00Z", year + 3)
}

/// `n` predictions of two models, as NDJSON.
fn predictions(n: usize) -> String {
    (0..n)
        .map(|i| {
            json!({
                "kind": "prediction.served",
                "actor": {"type": "service", "id": "scoring-api"},
                "subject": {"model": if i % 2 == 0 { "credit" } else { "churn" }, "version": "1",
                            "request": format!("r-{i}")},
                "attributes": {"inputs": {"x": i}, "outputs": {"score": 0.5}},
            })
            .to_string()
                + "\n"
        })
        .collect()
}

fn append(log: &Log, n: usize, batch: usize) {
    let file = log.write("events.ndjson", predictions(n));
    log.run(&["append", &file, "--batch-size", &batch.to_string()])
        .ok();
}

const CONFIG: &str = r#"
[retention]
hot = "30d"
warm = "180d"

[retention.risk]
credit = "high"
churn = "low"

[[retention.rule]]
stage = "governance"
expire = "never"

[[retention.rule]]
stage = "prediction"
risk = "high"
expire = "7y"

[[retention.rule]]
stage = "prediction"
risk = "low"
expire = "1y"
"#;

#[test]
fn plan_and_apply_archive_what_is_due_and_the_archive_verifies_alone() {
    let log = Log::new("retention-apply");
    append(&log, 1000, 300);
    let config = log.write("mlaudit.toml", CONFIG);
    let arch = log.dir.join("archive");
    let url = format!("file://{}", arch.display());

    let today = log.run(&["retention", "plan", "--config", &config]).ok();
    assert!(
        today.stdout.contains("hot           1000 events"),
        "{}",
        today.stdout
    );
    assert!(
        today.stdout.contains("cold             0 events"),
        "{}",
        today.stdout
    );

    let later = log
        .run(&[
            "retention",
            "plan",
            "--config",
            &config,
            "--now",
            FUTURE,
            "--archive",
            &url,
        ])
        .ok();
    assert!(
        later.stdout.contains("cold          1000 events"),
        "{}",
        later.stdout
    );
    assert!(
        later.stdout.contains("apply archives seqs 0..1000"),
        "{}",
        later.stdout
    );
    assert!(
        later
            .stdout
            .contains("rule 3 (stage=prediction risk=low: expire 1y): 500 payloads due"),
        "{}",
        later.stdout
    );
    assert!(!arch.exists(), "plan changes nothing");

    let applied = log
        .run(&[
            "retention",
            "apply",
            "--config",
            &config,
            "--now",
            &two_years_on(),
            "--archive",
            &url,
        ])
        .ok();
    assert!(
        applied.stdout.contains("archived seqs 0..1000"),
        "{}",
        applied.stdout
    );
    assert!(
        applied
            .stdout
            .contains("governance.policy_changed, seq 1000"),
        "{}",
        applied.stdout
    );
    // Expired before archiving: the 500 low-risk payloads are gone, recorded at seq 1001.
    assert!(
        applied.stdout.contains(
            "rule 3 (stage=prediction risk=low: expire 1y): 500 payloads removed (governance.payload_expired at seqs 1001)"
        ),
        "{}",
        applied.stdout
    );
    let churn = log.run(&["get", "1"]).ok().json();
    assert_eq!(churn["event"]["attributes"], "[redacted]");
    assert_eq!(churn["payload_removed_by"], 1001);
    let credit = log.run(&["get", "0"]).ok().json();
    assert!(credit["event"]["attributes"].is_object(), "{credit}");
    // The data directory remembers its archive; the same policy is not recorded twice.
    let again = log
        .run(&[
            "retention",
            "apply",
            "--config",
            &config,
            "--now",
            &two_years_on(),
        ])
        .ok();
    assert!(
        !again.stdout.contains("recorded the retention policy"),
        "{}",
        again.stdout
    );
    assert!(
        // The policy, the expiry and the two audited reads above.
        again.stdout.contains("archived seqs 1000..1004"),
        "{}",
        again.stdout
    );
    // A changed policy is recorded, with the old one.
    let changed = log
        .run(&["retention", "apply", "--config", &config, "--hot", "7d"])
        .ok();
    assert!(
        changed.stdout.contains("governance.policy_changed"),
        "{}",
        changed.stdout
    );
    let recorded = log
        .run(&[
            "query",
            "--kind",
            "governance.policy_changed",
            "--format",
            "json",
        ])
        .ok();
    assert_eq!(
        recorded.stdout.matches("policy_changed").count(),
        2,
        "{}",
        recorded.stdout
    );

    let key = log.verifier_key_path();
    let ok = log.run(&["verify", "--archive", &url, "--key", &key]).ok();
    assert!(ok.stdout.contains("1004 events"), "{}", ok.stdout);
    assert!(ok.stdout.contains("intact"), "{}", ok.stdout);

    // Damage to any archived object is caught, with its name.
    for name in [
        "tile/entries/000",
        "tile/0/001",
        "payload/002",
        "tile/1/000.p/3",
    ] {
        let path = arch.join(name);
        let original = std::fs::read(&path).unwrap();
        let mut bytes = original.clone();
        let at = bytes.len() / 2;
        bytes[at] ^= 0x20;
        std::fs::write(&path, &bytes).unwrap();
        let bad = log
            .run(&["verify", "--archive", &url, "--key", &key])
            .code(1);
        assert!(
            bad.stderr.contains(&format!("FAILED: {name}: ")),
            "{name}: {}",
            bad.stderr
        );
        std::fs::write(&path, &original).unwrap();
    }
    log.run(&["verify"]).ok();
}

#[test]
fn an_apply_killed_at_any_point_is_finished_by_the_next() {
    let log = Log::new("retention-kill");
    append(&log, 60_000, 5000);
    let arch = log.dir.join("archive");
    let url = format!("file://{}", arch.display());
    let args = |now: &str| {
        vec![
            "retention".to_owned(),
            "apply".into(),
            "--now".into(),
            now.into(),
            "--archive".into(),
            url.clone(),
        ]
    };
    let mut killed = 0;
    for delay_ms in [40u64, 90, 150, 250, 400, 700, 1000] {
        let mut child = Command::new(BIN)
            .arg("--data")
            .arg(&log.data)
            .args(args(FUTURE))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(delay_ms));
        if child.try_wait().unwrap().is_none() {
            child.kill().unwrap();
            killed += 1;
        }
        child.wait().unwrap();
        // Whatever the archive holds verifies: the checkpoint is replaced only last.
        if arch.join("checkpoint").exists() {
            log.run(&["verify", "--archive", &url]).ok();
        }
        // Every payload is readable — on the server, or from the archive once it holds it —
        // and is the one its entry commits to: verify reads and checks them all.
        log.run(&["verify"]).ok();
    }
    assert!(
        killed > 0,
        "no run was cut short: the log is too small to test this"
    );
    let done = log.cmd(args(FUTURE)).run().ok();
    assert!(done.stdout.contains("archived") || done.stdout.contains("up to date"));
    let v = log.run(&["verify", "--archive", &url]).ok();
    assert!(v.stdout.contains("intact"), "{}", v.stdout);
    // Every event is still readable, from the archive now, and the log verifies.
    for seq in ["0", "59999"] {
        let got = log.run(&["get", seq]).ok().json();
        assert_eq!(got["tier"], "cold", "{got}");
        assert_eq!(got["event"]["attributes"]["outputs"]["score"], 0.5);
    }
    log.run(&["verify"]).ok();
}

/// Whether any file of the data directory holds `needle`, compressed segments decompressed.
fn on_disk(log: &Log, needle: &str) -> bool {
    fn holds(bytes: &[u8], needle: &[u8]) -> bool {
        bytes.windows(needle.len()).any(|w| w == needle)
    }
    fn walk(dir: &std::path::Path, needle: &[u8]) -> bool {
        std::fs::read_dir(dir).unwrap().any(|e| {
            let p = e.unwrap().path();
            if p.is_dir() {
                return walk(&p, needle);
            }
            let bytes = std::fs::read(&p).unwrap();
            holds(&bytes, needle)
                || p.extension().is_some_and(|e| e == "zst")
                    && zstd_frames(&bytes).iter().any(|f| holds(f, needle))
        })
    }
    walk(&log.data, needle.as_bytes())
}

/// The decompressed frames of a packed segment's file (every zstd frame found in it).
fn zstd_frames(bytes: &[u8]) -> Vec<Vec<u8>> {
    const MAGIC: [u8; 4] = [0x28, 0xb5, 0x2f, 0xfd];
    let mut out = Vec::new();
    let mut at = 0;
    while let Some(i) = bytes[at..].windows(4).position(|w| w == MAGIC) {
        let start = at + i;
        if let Ok(frame) = zstd::stream::decode_all(&bytes[start..]) {
            out.push(frame);
        }
        at = start + 4;
    }
    out
}

#[test]
fn archived_payloads_leave_the_server_and_every_read_reaches_them() {
    let log = Log::new("retention-cold");
    append(&log, 1200, 300);
    let arch = log.dir.join("archive");
    let url = format!("file://{}", arch.display());
    assert!(on_disk(&log, r#""request":"r-700""#));
    let out = log
        .run(&["retention", "apply", "--now", FUTURE, "--archive", &url])
        .ok();
    assert!(
        out.stdout.contains("cold tier: 1200 payloads"),
        "{}",
        out.stdout
    );
    assert!(
        !on_disk(&log, r#""request":"r-700""#),
        "the payload left the server"
    );

    // Reads, queries, lineage and proofs reach it, and say the archive answered.
    let got = log.run(&["get", "700"]).ok().json();
    assert_eq!(
        (
            got["tier"].as_str(),
            got["event"]["subject"]["request"].as_str()
        ),
        (Some("cold"), Some("r-700"))
    );
    assert_eq!(got["event"]["attributes"]["inputs"]["x"], 700);
    let found = log
        .run(&[
            "query", "--model", "credit", "--format", "json", "--limit", "3",
        ])
        .ok()
        .json();
    assert_eq!(found[0]["tier"], "cold", "{found}");
    assert_eq!(found[0]["event"]["attributes"]["inputs"]["x"], 0);
    let bundle = log.dir.join("cold-bundle.json");
    log.run(&["prove", "700", "--out", bundle.to_str().unwrap()])
        .ok();
    let checked = log
        .run(&["verify-bundle", bundle.to_str().unwrap(), "--key", &log.key])
        .ok();
    assert!(
        checked.stdout.contains("payload matches its digest"),
        "{}",
        checked.stdout
    );
    log.run(&["verify"]).ok();
    let server = Server::start(&log.data, &["--danger-no-auth"]);
    let served = server
        .request("GET", "/v1/events/700", &[], b"")
        .unwrap()
        .json();
    assert_eq!(served["tier"], "cold", "{served}");
    assert_eq!(served["event"]["attributes"]["inputs"]["x"], 700);
    server.stop();

    // A restored range is back on the server, and a later run leaves it there.
    let restored = log.run(&["restore", "--from", "600", "--to", "799"]).ok();
    assert!(
        restored.stdout.contains("restored 200 payloads"),
        "{}",
        restored.stdout
    );
    assert!(on_disk(&log, r#""request":"r-700""#));
    let got = log.run(&["get", "700"]).ok().json();
    assert_ne!(got["tier"], "cold");
    log.run(&["retention", "apply", "--now", FUTURE, "--archive", &url])
        .ok();
    assert_ne!(log.run(&["get", "700"]).ok().json()["tier"], "cold");
    assert_eq!(log.run(&["get", "900"]).ok().json()["tier"], "cold");
    // The trail's own records stay on the server once archived (here the read of seq 700).
    let own = log.run(&["get", "1201"]).ok().json();
    assert_eq!(own["event"]["kind"], "governance.audit_accessed");
    assert_ne!(own["tier"], "cold", "{own}");
    log.run(&["restore", "--from", "5", "--to", "1"]).code(2);

    // An archived payload altered in the archive is refused, naming the object.
    let bundle_path = arch.join("payload").join("003");
    let good = std::fs::read(&bundle_path).unwrap();
    std::fs::copy(arch.join("payload").join("002"), &bundle_path).unwrap();
    let bad = log.run(&["get", "900"]);
    assert_ne!(bad.code, 0);
    assert!(bad.stderr.contains("payload/003"), "{}", bad.stderr);
    let failed = log.run(&["verify"]).code(1);
    assert!(failed.stderr.contains("payload/003"), "{}", failed.stderr);
    std::fs::write(&bundle_path, good).unwrap();
    log.run(&["verify"]).ok();

    // An erasure of a payload kept only in the archive, cut short once the archive's copy
    // was gone: the server's copy was already gone, yet running the erasure again finishes it.
    let before = log.dir.join("data-before-erasure");
    support::copy_dir(&log.data, &before);
    let erase = ["erase", "--subject", "request=r-1000", "--reason", "DSR-9"];
    log.run(&erase).ok();
    std::fs::remove_dir_all(&log.data).unwrap();
    support::copy_dir(&before, &log.data);
    assert_ne!(log.run(&["get", "1000"]).code, 0, "neither tier holds it");
    let again = log.run(&erase).ok();
    assert!(
        again.stdout.contains("erased 1 payloads"),
        "{}",
        again.stdout
    );
    assert!(log.run(&["get", "1000"]).ok().json()["payload_removed_by"].is_u64());
    log.run(&["verify"]).ok();

    // Another archive cannot take over while payloads live only in this one; once every one
    // is back on the server, it can.
    let other = format!("file://{}", log.dir.join("other").display());
    let refused = log
        .run(&["retention", "apply", "--now", FUTURE, "--archive", &other])
        .code(2);
    assert!(
        refused.stderr.contains("kept only in the archive"),
        "{}",
        refused.stderr
    );
    let last = (log.tree_size() - 1).to_string();
    log.run(&["restore", "--from", "0", "--to", &last]).ok();
    log.run(&["retention", "apply", "--now", FUTURE, "--archive", &other])
        .ok();
    assert_eq!(log.run(&["get", "900"]).ok().json()["tier"], "cold");
    log.run(&["verify"]).ok();
}

#[test]
fn the_archive_works_on_an_s3_compatible_server() {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../..");
    let bucket = "mlaudit-cli-test";
    let out = Command::new("bash")
        .arg(format!("{root}/scripts/s3-test-server.sh"))
        .arg(bucket)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let port = std::env::var("MLAUDIT_TEST_S3_PORT").unwrap_or_else(|_| "5077".into());
    let log = Log::new("retention-s3");
    append(&log, 700, 700);
    let stamp = Instant::now().elapsed().as_nanos() ^ u128::from(std::process::id());
    let url = format!("s3://{bucket}/cli-{}-{stamp}", std::process::id());
    let s3 = |args: &[&str]| {
        log.cmd(args)
            .env("AWS_ENDPOINT_URL", format!("http://127.0.0.1:{port}"))
            .env("AWS_ALLOW_HTTP", "true")
            .env("AWS_ACCESS_KEY_ID", "test")
            .env("AWS_SECRET_ACCESS_KEY", "test")
            .env("AWS_REGION", "us-east-1")
            .run()
    };
    let applied = s3(&["retention", "apply", "--now", FUTURE, "--archive", &url]).ok();
    assert!(
        applied.stdout.contains("archived seqs 0..700"),
        "{}",
        applied.stdout
    );
    let v = s3(&["verify", "--archive", &url]).ok();
    assert!(v.stdout.contains("700 events"), "{}", v.stdout);
}

#[test]
fn serve_archives_on_its_schedule_and_reports_it_in_metrics() {
    let log = Log::new("retention-serve");
    append(&log, 500, 500);
    let arch = log.dir.join("archive");
    let config = log.write(
        "serve.toml",
        format!(
            "[retention]\nhot = \"1s\"\nwarm = \"1s\"\nschedule = \"1s\"\narchive = \"file://{}\"\n",
            arch.display()
        ),
    );
    let server = Server::start(&log.data, &["--config", &config, "--danger-no-auth"]);
    // A read before the schedule archives; then it archives and moves the payloads off the
    // server, which goes on serving them from the archive.
    let first = server
        .request("GET", "/v1/events/0", &[], b"")
        .unwrap()
        .json();
    assert_eq!(first["event"]["attributes"]["inputs"]["x"], 0);
    let deadline = Instant::now() + Duration::from_secs(60);
    let metrics = loop {
        let m = server.request("GET", "/metrics", &[], b"").unwrap().text();
        let counter = |name: &str| {
            m.lines()
                .find_map(|l| l.strip_prefix(name))
                .map(|v| v.trim().parse::<u64>().unwrap())
        };
        let archived = counter("mlaudit_retention_archived_events ");
        let offloaded = counter("mlaudit_retention_payloads_offloaded_total ");
        if archived.is_some_and(|n| n >= 500) && offloaded.is_some_and(|n| n >= 500) {
            break m;
        }
        assert!(
            Instant::now() < deadline,
            "nothing archived in 60 s:\n{m}\n{}",
            server.stderr()
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(metrics.contains("mlaudit_retention_runs_total{outcome=\"ok\"}"));
    let cold = server
        .request("GET", "/v1/events/0", &[], b"")
        .unwrap()
        .json();
    assert_eq!(cold["tier"], "cold", "{cold}");
    assert_eq!(cold["event"]["attributes"]["inputs"]["x"], 0);
    assert!(
        server.stderr().contains("retention run done"),
        "{}",
        server.stderr()
    );
    server.stop();
    let url = format!("file://{}", arch.display());
    log.run(&["verify", "--archive", &url]).ok();
}

#[test]
fn a_held_event_survives_a_policy_that_would_expire_it() {
    let log = Log::new("retention-hold");
    append(&log, 100, 100);
    let config = log.write("mlaudit.toml", CONFIG);
    let placed = log
        .run(&[
            "hold",
            "create",
            "--model",
            "churn",
            "--reason",
            "case 2026-17",
        ])
        .ok();
    let hold = placed.stdout.split_whitespace().next().unwrap().to_owned();
    assert!(hold.starts_with("hold-"), "{}", placed.stdout);
    let plan = log
        .run(&[
            "retention",
            "plan",
            "--config",
            &config,
            "--now",
            &two_years_on(),
        ])
        .ok();
    assert!(
        plan.stdout
            .contains("expire 1y): 0 payloads due, 50 kept by legal holds"),
        "{}",
        plan.stdout
    );
    let listed = log.run(&["hold", "list", "--json"]).ok().json();
    assert_eq!(listed[0]["hold"], hold.as_str());
    assert_eq!(listed[0]["scope"]["model"], "churn");
    // Applied while the hold is in force: the held payloads stay.
    let kept = log
        .run(&[
            "retention",
            "apply",
            "--config",
            &config,
            "--now",
            &two_years_on(),
        ])
        .ok();
    assert!(!kept.stdout.contains("payloads removed"), "{}", kept.stdout);
    let churn = log.run(&["get", "1"]).ok().json();
    assert!(churn["event"]["attributes"].is_object(), "{churn}");
    log.run(&["hold", "create", "--reason", "nothing"]).code(2);
    log.run(&["hold", "release", &hold, "--reason", "case closed"])
        .ok();
    log.run(&["hold", "release", &hold]).code(2);
    let plan = log
        .run(&[
            "retention",
            "plan",
            "--config",
            &config,
            "--now",
            &two_years_on(),
        ])
        .ok();
    assert!(
        plan.stdout.contains("expire 1y): 50 payloads due, 0 kept"),
        "{}",
        plan.stdout
    );
    let expired = log
        .run(&[
            "retention",
            "apply",
            "--config",
            &config,
            "--now",
            &two_years_on(),
        ])
        .ok();
    assert!(
        expired.stdout.contains("50 payloads removed"),
        "{}",
        expired.stdout
    );
    let churn = log.run(&["get", "1"]).ok().json();
    assert_eq!(churn["event"]["attributes"], "[redacted]");
    log.run(&["verify"]).ok();
    assert_eq!(log.run(&["hold", "list", "--json"]).ok().json(), json!([]));
    let all = log.run(&["hold", "list", "--all", "--json"]).ok().json();
    assert_eq!(all[0]["release_reason"], "case closed");
    // Clients cannot forge a hold or a release.
    let forged = json!({"kind": "governance.hold_released", "actor": {"id": "x", "type": "user"},
                        "attributes": {"hold": hold, "reason": "forged"}});
    let file = log.write("forged.ndjson", forged.to_string() + "\n");
    log.run(&["append", &file]).code(2);
}
