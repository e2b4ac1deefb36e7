//! What the command line guarantees an operator and an auditor: reserved kinds refused, every
//! read recorded as `local:<user>`, a log checked against a checkpoint kept outside it (with a
//! pinned key), private files, token names never reused, expiring tokens, and no
//! unauthenticated server beyond loopback.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test fails loudly on any unexpected error"
)]

mod support;

use serde_json::Value;
use std::os::unix::fs::PermissionsExt;
use support::{copy_dir, custom_event, fixture_id, ndjson, Log, TempDir};

fn mode(path: &std::path::Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

/// The `governance.audit_accessed` events of a log, as JSON views, read without recording.
fn audits(log: &Log) -> Vec<Value> {
    let out = log
        .run(&[
            "query",
            "--kind",
            "governance.audit_accessed",
            "--format",
            "ndjson",
            "--limit",
            "1000",
        ])
        .ok();
    out.stdout
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap()["event"].clone())
        .collect()
}

#[test]
fn append_refuses_the_kinds_only_the_server_writes() {
    let log = Log::new("reserved-cli");
    for kind in ["governance.access_changed", "governance.audit_accessed"] {
        let e = serde_json::json!({"kind": kind, "actor": {"id": "mallory", "type": "user"},
            "attributes": {"principal": "token:x", "role": "admin", "change": "granted"}});
        let file = log.write(
            "reserved.ndjson",
            ndjson(&[custom_event(&fixture_id(1)), e]),
        );
        let out = log.run(&["append", &file]).code(2);
        assert!(
            out.stderr.contains("line 2") && out.stderr.contains(kind),
            "{}",
            out.stderr
        );
    }
    assert_eq!(log.tree_size(), 0, "nothing was written");
}

#[test]
fn every_read_from_the_command_line_is_recorded() {
    let log = Log::with_fixture("cli-reads");
    log.run(&["get", &fixture_id(3)]).ok();
    log.run(&["get", "9999"]).code(2);
    log.run(&["query", "--model", "fraud", "--limit", "5"]).ok();
    log.run(&["lineage", &fixture_id(9)]).ok();
    log.run(&["prove", &fixture_id(9)]).ok();
    let a = audits(&log);
    let requests: Vec<&str> = a
        .iter()
        .map(|e| e["attributes"]["request"].as_str().unwrap())
        .collect();
    assert_eq!(
        requests,
        [
            format!("mlaudit get {}", fixture_id(3)).as_str(),
            "mlaudit get 9999",
            "mlaudit query --model fraud --limit 5",
            &format!("mlaudit lineage {}", fixture_id(9)),
            &format!("mlaudit prove {}", fixture_id(9)),
        ]
    );
    for e in &a {
        assert_eq!(e["actor"]["id"], "local:tester");
        assert_eq!(e["actor"]["type"], "user");
        assert_eq!(e["principal"], "local:tester");
    }
    assert_eq!(a[0]["attributes"]["results"], 1);
    assert_eq!(a[1]["attributes"]["results"], 0);
}

#[test]
fn verify_checks_the_log_against_a_checkpoint_kept_outside_it() {
    let log = Log::with_fixture("trusted");
    let kept = log.write("kept.note", log.run(&["checkpoint"]).ok().stdout);
    // An older copy of the directory, as a restore from backup would leave it.
    let old = TempDir::new("trusted-old");
    copy_dir(&log.data, &old.join("data"));
    let more = (20..25)
        .map(|i| custom_event(&fixture_id(i)))
        .collect::<Vec<_>>();
    log.run(&["append", &log.write("more.ndjson", ndjson(&more))])
        .ok();
    let newer = log.write("newer.note", log.run(&["checkpoint"]).ok().stdout);

    let ok = log.run(&["verify", "--trusted-checkpoint", &kept]).ok();
    assert!(
        ok.stdout
            .contains("consistent with the trusted checkpoint at tree size 15"),
        "{}",
        ok.stdout
    );
    let ok = log.run(&["consistency", "--old", &kept]).ok();
    assert!(
        ok.stderr.contains("OK: the tree at size 15 is a prefix"),
        "{}",
        ok.stderr
    );

    // The old copy is shorter than a checkpoint handed out since: rolled back.
    let old_data = old.join("data");
    let on_old = |args: &[&str]| {
        let mut all = vec!["--data", old_data.to_str().unwrap()];
        all.extend(args);
        support::mlaudit(&log.dir.path, all).run()
    };
    let rolled = on_old(&["verify", "--trusted-checkpoint", &newer]).code(1);
    assert!(
        rolled.stdout.contains("verified 15 events"),
        "{}",
        rolled.stdout
    );
    assert!(
        rolled
            .stderr
            .contains("fewer than the 20 of the trusted checkpoint"),
        "{}",
        rolled.stderr
    );
    let rolled = on_old(&["consistency", "--old", &newer]).code(1);
    assert!(
        rolled.stderr.contains("rolled back or truncated"),
        "{}",
        rolled.stderr
    );

    // The same key, another tree at size 20 (the old copy extended differently): rewritten.
    let other = (30..35)
        .map(|i| custom_event(&fixture_id(i)))
        .collect::<Vec<_>>();
    let file = log.write("other.ndjson", ndjson(&other));
    on_old(&["append", &file]).ok();
    let forked = on_old(&["verify", "--trusted-checkpoint", &newer]).code(1);
    assert!(
        forked.stderr.contains("the log was rewritten"),
        "{}",
        forked.stderr
    );

    // A checkpoint signed by another key is refused; --key pins the key checked against.
    let stranger = Log::with_fixture("trusted-stranger");
    let foreign = log.write("foreign.note", stranger.run(&["checkpoint"]).ok().stdout);
    let out = log
        .run(&["verify", "--trusted-checkpoint", &foreign])
        .code(1);
    assert!(
        out.stderr.contains("is not a checkpoint signed by"),
        "{}",
        out.stderr
    );
    let out = log.run(&["verify", "--key", &stranger.key]).code(1);
    assert!(out.stderr.contains("FAILED"), "{}", out.stderr);
    log.run(&["verify", "--key", &log.key, "--trusted-checkpoint", &kept])
        .ok();
}

#[test]
fn the_data_directory_is_private() {
    let log = Log::with_fixture("modes");
    support::create_token(&log, "reader", "auditor");
    for dir in [log.data.clone(), log.data.join("key"), log.data.join("log")] {
        assert_eq!(mode(&dir), 0o700, "{}", dir.display());
    }
    assert_eq!(mode(&log.data.join("key").join("signing.key")), 0o600);
    assert_eq!(mode(&log.data.join("tokens.json")), 0o600);
    for ent in std::fs::read_dir(log.data.join("log")).unwrap() {
        let path = ent.unwrap().path();
        assert_eq!(mode(&path), 0o600, "{}", path.display());
    }
}

#[test]
fn token_names_are_never_reused_and_tokens_may_expire() {
    let log = Log::new("token-cli");
    support::create_token(&log, "writer", "ingest");
    log.run(&["token", "revoke", "ingest"]).ok();
    let again = log
        .run(&["token", "create", "--role", "writer", "--name", "ingest"])
        .code(2);
    assert!(again.stderr.contains("never reused"), "{}", again.stderr);
    let out = log
        .run(&[
            "token",
            "create",
            "--role",
            "reader",
            "--name",
            "q4-audit",
            "--expires-in",
            "90d",
        ])
        .ok();
    assert!(out.stderr.contains(", expires 20"), "{}", out.stderr);
    let listed = log.run(&["token", "list"]).ok().stdout;
    let row = listed.lines().find(|l| l.starts_with("q4-audit")).unwrap();
    assert!(
        row.split_whitespace().nth(3).unwrap().starts_with("20"),
        "{row}"
    );
    let bad = log
        .run(&[
            "token",
            "create",
            "--role",
            "reader",
            "--name",
            "x",
            "--expires-in",
            "soon",
        ])
        .code(2);
    assert!(bad.stderr.contains("--expires-in"), "{}", bad.stderr);
    // Every change is in the log: two grants and a revocation.
    let changes = log
        .run(&[
            "query",
            "--kind",
            "governance.access_changed",
            "--format",
            "ndjson",
        ])
        .ok();
    assert_eq!(changes.stdout.lines().count(), 3, "{}", changes.stdout);
}

#[test]
fn serving_without_authentication_stays_on_loopback() {
    let log = Log::new("danger");
    for listen in ["0.0.0.0:0", "[::]:0"] {
        let out = log
            .run(&["serve", "--danger-no-auth", "--listen", listen])
            .code(2);
        assert!(out.stderr.contains("loopback"), "{}", out.stderr);
    }
}
