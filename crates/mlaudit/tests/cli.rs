//! End-to-end tests of the `mlaudit` binary: each test runs the real executable in its own
//! temporary directory and checks exit codes (0 ok, 1 verification failed, 2 usage or input
//! error), standard output and the files it leaves.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use serde_json::Value;
use std::os::unix::fs::PermissionsExt;
use support::*;

// ---------------------------------------------------------------------------------------------
// init and the data directory
// ---------------------------------------------------------------------------------------------

/// Checks `<origin>+<8 hex>+<base64(0x01 || 32 bytes)>` and returns the key id.
#[track_caller]
fn check_verifier_key(key: &str, origin: &str) -> String {
    let rest = key
        .strip_prefix(&format!("{origin}+"))
        .unwrap_or_else(|| panic!("key {key:?} does not start with {origin}+"));
    let (id, b64) = rest
        .split_once('+')
        .unwrap_or_else(|| panic!("key {key:?} has no second +"));
    assert!(
        id.len() == 8
            && id
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)),
        "key id {id:?}"
    );
    let raw = b64_decode(b64).unwrap_or_else(|| panic!("key {key:?}: not base64"));
    assert_eq!(raw.len(), 33, "public key blob length");
    assert_eq!(raw[0], 0x01, "algorithm byte");
    id.to_owned()
}

#[test]
fn init_prints_key_and_writes_key_files() {
    let dir = TempDir::new("init");
    let out = mlaudit(
        &dir.path,
        ["init", "--data", "D", "--origin", "example.org/log"],
    )
    .run()
    .ok();
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(lines.len(), 3, "{}", out.stdout);
    assert_eq!(lines[0], "initialized D (origin example.org/log)");
    assert_eq!(lines[1], "verifier key (also in D/key/verifier.key):");
    let key = lines[2];
    let id = check_verifier_key(key, "example.org/log");

    let signing = dir.join("D/key/signing.key");
    let mode = std::fs::metadata(&signing)
        .expect("signing.key exists")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "signing.key mode {mode:o}");
    let private = std::fs::read_to_string(&signing).expect("read signing.key");
    assert!(
        private.starts_with(&format!("PRIVATE+KEY+example.org/log+{id}+")),
        "{private}"
    );
    assert_eq!(
        std::fs::read_to_string(dir.join("D/key/verifier.key")).expect("read verifier.key"),
        format!("{key}\n")
    );

    // The new log is empty, verifies, and has the empty-tree checkpoint.
    let log_args = |a: &[&str]| -> Vec<String> {
        ["--data", "D"]
            .iter()
            .chain(a)
            .map(|s| s.to_string())
            .collect()
    };
    assert_eq!(
        mlaudit(&dir.path, log_args(&["checkpoint", "--list"]))
            .run()
            .ok()
            .stdout,
        "0\n"
    );
    let v = mlaudit(&dir.path, log_args(&["verify"])).run().ok();
    assert!(
        v.stdout
            .starts_with("verified 0 events and 1 checkpoints: intact\n"),
        "{}",
        v.stdout
    );

    // A second init fails and leaves the keys alone.
    let again = mlaudit(
        &dir.path,
        ["init", "--data", "D", "--origin", "example.org/log"],
    )
    .run()
    .code(2);
    assert!(
        again.stderr.contains("already initialized"),
        "{}",
        again.stderr
    );
    assert_eq!(
        std::fs::read_to_string(&signing).expect("read signing.key"),
        private
    );
    assert_eq!(
        std::fs::read_to_string(dir.join("D/key/verifier.key")).expect("read"),
        format!("{key}\n")
    );
    // Even with another origin.
    mlaudit(
        &dir.path,
        ["init", "--data", "D", "--origin", "other.org/log"],
    )
    .run()
    .code(2);
}

#[test]
fn init_without_origin_generates_one() {
    let dir = TempDir::new("init-noorigin");
    let out = mlaudit(&dir.path, ["init", "--data", "D"]).run().ok();
    let first = out.stdout.lines().next().expect("a line");
    let origin = first
        .strip_prefix("initialized D (origin ")
        .and_then(|s| s.strip_suffix(')'))
        .unwrap_or_else(|| panic!("{first}"));
    let tag = origin
        .strip_prefix("mlaudit.local/")
        .unwrap_or_else(|| panic!("origin {origin}"));
    assert!(
        tag.len() == 8 && tag.bytes().all(|b| b.is_ascii_hexdigit()),
        "origin {origin}"
    );
    check_verifier_key(out.stdout.lines().last().expect("key line"), origin);
}

#[test]
fn init_rejects_a_bad_origin_and_creates_nothing() {
    let dir = TempDir::new("init-bad-origin");
    for origin in ["has space", "has+plus", ""] {
        let out = mlaudit(&dir.path, ["init", "--data", "D", "--origin", origin])
            .run()
            .code(2);
        assert!(
            out.stderr.contains("--origin"),
            "{origin:?}: {}",
            out.stderr
        );
        assert!(
            !dir.join("D/key/signing.key").exists(),
            "{origin:?} left a key"
        );
    }
}

#[test]
fn data_dir_from_env_and_flag_precedence() {
    let dir = TempDir::new("env");
    let a = dir.join("A");
    let b = dir.join("B");
    // MLAUDIT_DATA is used when --data is absent.
    mlaudit(&dir.path, ["init", "--origin", "env.example/a"])
        .env("MLAUDIT_DATA", &a)
        .run()
        .ok();
    assert!(a.join("key/signing.key").exists());
    let cp = mlaudit(&dir.path, ["checkpoint"])
        .env("MLAUDIT_DATA", &a)
        .run()
        .ok();
    assert!(cp.stdout.starts_with("env.example/a\n0\n"), "{}", cp.stdout);
    let appended = mlaudit(&dir.path, ["append"])
        .env("MLAUDIT_DATA", &a)
        .stdin(ndjson(&[custom_event(&fixture_id(1))]))
        .run()
        .ok();
    assert!(
        appended
            .stdout
            .starts_with("appended 1 events, seq 0..=0\n"),
        "{}",
        appended.stdout
    );

    // --data wins over the environment, for init and for other commands.
    mlaudit(
        &dir.path,
        [
            "init",
            "--data",
            b.to_str().expect("utf-8"),
            "--origin",
            "env.example/b",
        ],
    )
    .env("MLAUDIT_DATA", &a)
    .run()
    .ok();
    assert!(b.join("key/signing.key").exists());
    assert_eq!(
        std::fs::read_to_string(a.join("key/verifier.key"))
            .expect("a key")
            .split('+')
            .next(),
        Some("env.example/a")
    );
    let cp = mlaudit(
        &dir.path,
        ["--data", b.to_str().expect("utf-8"), "checkpoint"],
    )
    .env("MLAUDIT_DATA", &a)
    .run()
    .ok();
    assert!(cp.stdout.starts_with("env.example/b\n0\n"), "{}", cp.stdout);
    // --data after the subcommand (it is a global flag) also wins.
    let cp = mlaudit(
        &dir.path,
        ["checkpoint", "--data", b.to_str().expect("utf-8")],
    )
    .env("MLAUDIT_DATA", &a)
    .run()
    .ok();
    assert!(cp.stdout.starts_with("env.example/b\n0\n"), "{}", cp.stdout);

    // Without either, ./mlaudit-data in the working directory; an empty MLAUDIT_DATA counts as unset.
    mlaudit(&dir.path, ["init", "--origin", "env.example/c"])
        .env("MLAUDIT_DATA", "")
        .run()
        .ok();
    assert!(dir.join("mlaudit-data/key/signing.key").exists());
    let cp = mlaudit(&dir.path, ["checkpoint"]).run().ok();
    assert!(cp.stdout.starts_with("env.example/c\n0\n"), "{}", cp.stdout);
}

#[test]
fn commands_on_an_uninitialized_dir_exit_2() {
    let dir = TempDir::new("uninit");
    for args in [
        vec!["verify"],
        vec!["checkpoint"],
        vec!["get", "0"],
        vec!["query"],
        vec!["lineage", "0"],
        vec!["prove", "0"],
        vec!["consistency", "--from", "1"],
    ] {
        let mut all = vec!["--data", "nowhere"];
        all.extend(&args);
        let out = mlaudit(&dir.path, &all).run().code(2);
        assert!(
            out.stderr.contains("not initialized"),
            "{args:?}: {}",
            out.stderr
        );
    }
    let out = mlaudit(&dir.path, ["--data", "nowhere", "append"])
        .stdin(ndjson(&[custom_event(&fixture_id(0))]))
        .run()
        .code(2);
    assert!(out.stderr.contains("not initialized"), "{}", out.stderr);
}

// ---------------------------------------------------------------------------------------------
// append
// ---------------------------------------------------------------------------------------------

/// Splits append's output into its summary lines and the checkpoint note.
fn split_append(stdout: &str) -> (Vec<&str>, String) {
    let at = stdout
        .find(&format!("{ORIGIN}\n"))
        .unwrap_or_else(|| panic!("no checkpoint in append output:\n{stdout}"));
    (stdout[..at].lines().collect(), stdout[at..].to_owned())
}

#[test]
fn append_from_file_prints_range_and_checkpoint() {
    let log = Log::new("append-file");
    let file = log.write("f.ndjson", fixture_ndjson());
    let out = log.run(&["append", &file]).ok();
    let (summary, note) = split_append(&out.stdout);
    assert_eq!(summary, vec!["appended 15 events, seq 0..=14"]);
    assert_eq!(note.lines().nth(1), Some("15"), "{note}");
    // The printed note is the stored latest checkpoint, verbatim.
    assert_eq!(log.run(&["checkpoint"]).ok().stdout, note);
    assert_eq!(log.checkpoint_list(), vec![0, 15]);
    log.run(&["verify"]).ok();
}

#[test]
fn append_from_stdin_dash_and_default() {
    let log = Log::new("append-stdin");
    let events = fixture();
    let out = log
        .cmd(["append", "-"])
        .stdin(ndjson(&events[..3]))
        .run()
        .ok();
    let (summary, note) = split_append(&out.stdout);
    assert_eq!(summary, vec!["appended 3 events, seq 0..=2"]);
    assert_eq!(note.lines().nth(1), Some("3"));
    // No file argument means standard input too.
    let out = log.cmd(["append"]).stdin(ndjson(&events[3..5])).run().ok();
    let (summary, note) = split_append(&out.stdout);
    assert_eq!(summary, vec!["appended 2 events, seq 3..=4"]);
    assert_eq!(note.lines().nth(1), Some("5"));
    assert_eq!(log.tree_size(), 5);
    assert_eq!(log.checkpoint_list(), vec![0, 3, 5]);
}

#[test]
fn a_pipelined_append_keeps_file_order_and_every_checkpoint_closes_a_batch() {
    let log = Log::with_fixture("append-batches");
    assert_eq!(log.checkpoint_list(), vec![0, 5, 10, 15]);
    // One append of 30 events in batches of 4, submitted a few at a time: the store may merge
    // queued batches into one group, but never splits one, so every checkpoint closes a batch.
    let more: Vec<Value> = (0..30).map(|i| custom_event(&fixture_id(20 + i))).collect();
    let out = log
        .run(&[
            "append",
            "--batch-size",
            "4",
            &log.write("more.ndjson", ndjson(&more)),
        ])
        .ok();
    assert!(
        out.stdout.starts_with("appended 30 events, seq 15..=44\n"),
        "{}",
        out.stdout
    );
    let sizes = log.checkpoint_list();
    assert_eq!(sizes.last(), Some(&45));
    assert!(
        sizes
            .iter()
            .all(|s| *s <= 15 || (s - 15) % 4 == 0 || *s == 45),
        "a checkpoint inside a batch: {sizes:?}"
    );
    for (i, e) in more.iter().enumerate() {
        let got = log.run(&["get", e["id"].as_str().unwrap()]).ok().json();
        assert_eq!(got["seq"], 15 + i as u64, "events keep the file's order");
    }
    log.run(&["verify"]).ok();
    // (Each `get` above was recorded as a read: the log grew by one event per get.)
    let size = log.tree_size();
    assert_eq!(size, 45 + 30);
    let out = log
        .run(&[
            "append",
            "--batch-size",
            "0",
            &log.write("x.ndjson", ndjson(&[custom_event(&fixture_id(50))])),
        ])
        .code(2);
    assert!(out.stderr.contains("--batch-size"), "{}", out.stderr);
    assert_eq!(log.tree_size(), size, "a refused append writes nothing");
}

#[test]
fn reappending_the_same_file_appends_nothing_and_reports_duplicates() {
    let log = Log::with_fixture("append-dup");
    let file = log.write("again.ndjson", fixture_ndjson());
    let out = log.run(&["append", &file]).ok();
    let (summary, note) = split_append(&out.stdout);
    assert_eq!(
        summary,
        vec![
            "appended 0 events",
            "15 events were already in the log (same id) and were not written again"
        ]
    );
    assert_eq!(note.lines().nth(1), Some("15"));
    assert_eq!(log.tree_size(), 15);

    // Two old ids and one new: only the new one is written.
    let mut mixed = fixture()[..2].to_vec();
    mixed.push(custom_event(&fixture_id(60)));
    let out = log.cmd(["append"]).stdin(ndjson(&mixed)).run().ok();
    let (summary, note) = split_append(&out.stdout);
    assert_eq!(
        summary,
        vec![
            "appended 1 events, seq 15..=15",
            "2 events were already in the log (same id) and were not written again"
        ]
    );
    assert_eq!(note.lines().nth(1), Some("16"));

    // The same id twice in one input: written once.
    let twice = ndjson(&[custom_event(&fixture_id(61)), custom_event(&fixture_id(61))]);
    let out = log.cmd(["append"]).stdin(twice).run().ok();
    let (summary, _) = split_append(&out.stdout);
    assert_eq!(
        summary,
        vec![
            "appended 1 events, seq 16..=16",
            "1 events were already in the log (same id) and were not written again"
        ]
    );
    assert_eq!(log.tree_size(), 17);
    log.run(&["verify"]).ok();
}

#[test]
fn append_generates_ids_and_receipt_times_when_absent() {
    let log = Log::new("append-noid");
    let out = log
        .cmd(["append"])
        .stdin("{\"kind\":\"x.ping\",\"actor\":{\"id\":\"eve\",\"type\":\"user\"}}\n")
        .run()
        .ok();
    assert!(out.stdout.starts_with("appended 1 events, seq 0..=0\n"));
    let ev = log.run(&["get", "0"]).ok().json();
    let id = ev["event"]["id"].as_str().expect("id").to_owned();
    assert_eq!(id.len(), 36, "{id}");
    assert_eq!(ev["event"]["time"], ev["event"]["received"]);
    assert_eq!(log.run(&["get", &id]).ok().json(), ev);
}

/// Asserts that a failed append changed nothing.
#[track_caller]
fn assert_unchanged(log: &Log, size: u64, checkpoints: &[u64]) {
    assert_eq!(log.tree_size(), size);
    assert_eq!(log.checkpoint_list(), checkpoints);
    let v = log.run(&["verify"]).ok();
    assert!(
        v.stdout.starts_with(&format!(
            "verified {size} events and {} checkpoints: intact\n",
            checkpoints.len()
        )),
        "{}",
        v.stdout
    );
}

#[test]
fn append_with_a_bad_line_3_writes_nothing() {
    let log = Log::with_fixture("append-bad3");
    let mut events: Vec<Value> = (70..74).map(|i| custom_event(&fixture_id(i))).collect();
    // Line 3: an approval without attributes.approver.
    events[2] = serde_json::json!({"id": fixture_id(72), "kind": "registry.approval_granted", "actor": {"id": "bob", "type": "user"},
        "subject": {"model": "fraud", "version": "4"}, "attributes": {"reason": "looks fine"}});
    let file = log.write("bad.ndjson", ndjson(&events));
    let out = log.run(&["append", &file]).code(2);
    assert_eq!(out.stdout, "");
    assert!(
        out.stderr
            .contains("line 3: registry.approval_granted: attributes.approver is required"),
        "{}",
        out.stderr
    );
    assert!(
        out.stderr
            .contains("1 invalid line(s); nothing was appended"),
        "{}",
        out.stderr
    );
    assert!(
        !out.stderr.contains("line 1")
            && !out.stderr.contains("line 2:")
            && !out.stderr.contains("line 4"),
        "{}",
        out.stderr
    );
    assert_unchanged(&log, 15, &[0, 5, 10, 15]);
    // The good lines were not written either.
    log.run(&["get", &fixture_id(70)]).code(2);
}

#[test]
fn append_reports_every_bad_line_with_its_file_line_number() {
    let log = Log::new("append-lines");
    // Blank lines count: the bad lines are 3 and 5 of the file.
    let good = custom_event(&fixture_id(1)).to_string();
    let text = format!("{good}\n\n{{\"kind\":\"x.a\"}}\n   \n{{\"kind\":\"x.a\",\"actor\":{{\"id\":\"a\",\"type\":\"robot\"}}}}\n");
    let out = log.cmd(["append"]).stdin(text).run().code(2);
    assert!(
        out.stderr.contains("line 3: actor is required"),
        "{}",
        out.stderr
    );
    assert!(
        out.stderr
            .contains("line 5: actor.type must be \"user\" or \"service\""),
        "{}",
        out.stderr
    );
    assert!(
        out.stderr
            .contains("2 invalid line(s); nothing was appended"),
        "{}",
        out.stderr
    );
    assert_unchanged(&log, 0, &[0]);
}

#[test]
fn append_rejects_invalid_json_without_writing() {
    let log = Log::with_fixture("append-json");
    let text = format!(
        "{}{{\"kind\": \"x.a\", \n",
        ndjson(&[custom_event(&fixture_id(80))])
    );
    let out = log.cmd(["append", "-"]).stdin(text).run().code(2);
    assert!(
        out.stderr.contains("line 2: invalid JSON"),
        "{}",
        out.stderr
    );
    assert!(
        out.stderr.contains("nothing was appended"),
        "{}",
        out.stderr
    );
    // Not an object.
    let out = log.cmd(["append"]).stdin("[1,2]\n").run().code(2);
    assert!(
        out.stderr
            .contains("line 1: invalid JSON: an event must be a JSON object"),
        "{}",
        out.stderr
    );
    assert_unchanged(&log, 15, &[0, 5, 10, 15]);
}

#[test]
fn append_rejects_invalid_utf8_without_writing() {
    let log = Log::with_fixture("append-utf8");
    let mut bytes =
        ndjson(&[custom_event(&fixture_id(81)), custom_event(&fixture_id(82))]).into_bytes();
    bytes.extend_from_slice(
        b"{\"kind\":\"x.\xff\xfe\",\"actor\":{\"id\":\"a\",\"type\":\"user\"}}\n",
    );
    let file = log.write("latin1.ndjson", &bytes);
    let out = log.run(&["append", &file]).code(2);
    assert!(
        out.stderr.contains("line 3: input is not valid UTF-8"),
        "{}",
        out.stderr
    );
    let out = log.cmd(["append"]).stdin(bytes).run().code(2);
    assert!(
        out.stderr.contains("line 3: input is not valid UTF-8"),
        "{}",
        out.stderr
    );
    assert_unchanged(&log, 15, &[0, 5, 10, 15]);
}

#[test]
fn append_rejects_an_unknown_kind_without_writing() {
    let log = Log::with_fixture("append-kind");
    let text = ndjson(&[
        custom_event(&fixture_id(83)),
        serde_json::json!({"kind": "foo.bar", "actor": {"id": "a", "type": "user"}}),
    ]);
    let out = log.cmd(["append"]).stdin(text).run().code(2);
    assert!(
        out.stderr.contains("line 2: unknown kind \"foo.bar\""),
        "{}",
        out.stderr
    );
    let out = log
        .cmd(["append"])
        .stdin("{\"kind\":\"x.\",\"actor\":{\"id\":\"a\",\"type\":\"user\"}}\n")
        .run()
        .code(2);
    assert!(
        out.stderr.contains("line 1: unknown kind \"x.\""),
        "{}",
        out.stderr
    );
    assert_unchanged(&log, 15, &[0, 5, 10, 15]);
}

#[test]
fn append_of_a_missing_file_exits_2() {
    let log = Log::new("append-missing");
    let out = log.run(&["append", "does-not-exist.ndjson"]).code(2);
    assert!(
        out.stderr.contains("cannot read does-not-exist.ndjson"),
        "{}",
        out.stderr
    );
    assert_unchanged(&log, 0, &[0]);
}

#[test]
fn append_accepts_crlf_unicode_integer_subjects_and_offset_times() {
    let log = Log::new("append-crlf");
    let text = "{\"kind\":\"prediction.served\",\"time\":\"2026-01-01T11:00:00+02:00\",\"actor\":{\"id\":\"j\u{fc}rgen\",\"type\":\"service\"},\
                \"subject\":{\"model\":\"m\",\"version\":3,\"request\":7},\"attributes\":{\"inputs\":\"\u{20ac}\",\"outputs\":1}}\r\n\
                {\"kind\":\"x.b\",\"actor\":{\"id\":\"a\",\"type\":\"user\"}}\r\n";
    let out = log.cmd(["append"]).stdin(text).run().ok();
    assert!(
        out.stdout.starts_with("appended 2 events, seq 0..=1\n"),
        "{}",
        out.stdout
    );
    let ev = log.run(&["get", "0"]).ok().json();
    assert_eq!(ev["event"]["time"], "2026-01-01T09:00:00Z");
    assert_eq!(ev["event"]["actor"]["id"], "j\u{fc}rgen");
    assert_eq!(
        ev["event"]["subject"],
        serde_json::json!({"model": "m", "version": "3", "request": "7"})
    );
    assert_eq!(ev["event"]["attributes"]["inputs"], "\u{20ac}");
    assert_eq!(query_seqs(&log, &["--version", "3"]), vec![0]);
    assert_eq!(query_seqs(&log, &["--actor", "j\u{fc}rgen"]), vec![0]);
    // The stored payload is the line without its CR.
    let (file, bundle) = prove(&log, "1");
    let payload = b64_decode(bundle["payload"].as_str().expect("payload")).expect("base64");
    assert_eq!(
        payload,
        b"{\"kind\":\"x.b\",\"actor\":{\"id\":\"a\",\"type\":\"user\"}}"
    );
    log.run(&["verify-bundle", &file, "--key", &log.key]).ok();
}

#[test]
fn append_rejects_an_event_over_one_mib() {
    let log = Log::new("append-large");
    let big = serde_json::json!({"kind": "x.big", "actor": {"id": "a", "type": "user"}, "attributes": {"blob": "z".repeat(1 << 20)}});
    let out = log
        .cmd(["append"])
        .stdin(ndjson(&[custom_event(&fixture_id(1)), big]))
        .run()
        .code(2);
    assert!(out.stderr.contains("line 2: event is "), "{}", out.stderr);
    assert!(
        out.stderr.contains("bytes; the limit is 1048576"),
        "{}",
        out.stderr
    );
    assert_unchanged(&log, 0, &[0]);
}

// ---------------------------------------------------------------------------------------------
// get
// ---------------------------------------------------------------------------------------------

#[test]
fn get_by_uuid_and_by_seq() {
    let log = Log::with_fixture("get");
    let by_id = log.run(&["get", &fixture_id(9)]).ok().json();
    let by_seq = log.run(&["get", "9"]).ok().json();
    assert_eq!(by_id, by_seq);
    // Upper-case UUIDs name the same event.
    assert_eq!(
        log.run(&["get", &fixture_id(9).to_uppercase()]).ok().json(),
        by_id
    );

    assert_eq!(by_id["seq"], 9);
    assert!(
        is_hex64(by_id["leaf_hash"].as_str().expect("leaf_hash")),
        "{}",
        by_id["leaf_hash"]
    );
    let ev = &by_id["event"];
    assert_eq!(ev["seq"], 9);
    assert_eq!(ev["id"], fixture_id(9));
    assert_eq!(ev["kind"], "prediction.served");
    assert_eq!(ev["time"], fixture_time(9));
    assert_eq!(
        ev["actor"],
        serde_json::json!({"id": "api", "type": "service"})
    );
    assert_eq!(
        ev["subject"],
        serde_json::json!({"model": "fraud", "version": "3", "request": "q1", "deployment": "prod"})
    );
    assert_eq!(ev["attributes"], fixture()[9]["attributes"]);
    assert_eq!(ev["principal"], "local:tester");
    assert!(is_hex64(
        ev["payload_sha256"].as_str().expect("payload_sha256")
    ));

    // Every event has its own leaf hash.
    let other = log.run(&["get", "10"]).ok().json();
    assert_ne!(other["leaf_hash"], by_id["leaf_hash"]);
    assert_eq!(
        other["event"]["subject"],
        serde_json::json!({"model": "fraud", "version": "3", "request": "q2"})
    );
    let governance = log.run(&["get", "11"]).ok().json();
    assert_eq!(governance["event"]["subject"], serde_json::json!({}));
}

#[test]
fn get_of_an_unknown_id_exits_2() {
    let log = Log::with_fixture("get-unknown");
    let out = log
        .run(&["get", "6f1c0000-0000-4000-8000-000000009999"])
        .code(2);
    assert!(
        out.stderr
            .contains("no event with id 6f1c0000-0000-4000-8000-000000009999"),
        "{}",
        out.stderr
    );
    assert_eq!(out.stdout, "");
    // The failed get above was recorded as a read: the log holds 16 events now.
    let out = log.run(&["get", "99"]).code(2);
    assert!(
        out.stderr
            .contains("no event with seq 99; the log holds 16"),
        "{}",
        out.stderr
    );
    let out = log.run(&["get", "not-an-id"]).code(2);
    assert!(
        out.stderr
            .contains("is neither an event id (UUID) nor a seq number"),
        "{}",
        out.stderr
    );
    log.run(&["get", "-1"]).code(2);
}

// ---------------------------------------------------------------------------------------------
// query
// ---------------------------------------------------------------------------------------------

/// The seqs a query returns among the fixture's 15 events (each query is itself recorded as a
/// read, after them).
fn query_seqs(log: &Log, filters: &[&str]) -> Vec<u64> {
    let mut args = vec!["query", "--format", "json"];
    args.extend(filters);
    let all = seqs(&log.run(&args).ok().json());
    all.into_iter().filter(|s| *s < 15).collect()
}

#[test]
fn query_filters_select_the_right_events() {
    let log = Log::with_fixture("query");
    let cases: &[(&[&str], &[u64])] = &[
        (&[], &[0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14]),
        (&["--stage", "data"], &[0, 1, 2]),
        (&["--stage", "training"], &[3, 4]),
        (&["--stage", "registry"], &[5, 6, 7, 13]),
        (&["--stage", "operations"], &[8, 14]),
        (&["--stage", "prediction"], &[9, 10]),
        (&["--stage", "governance"], &[11]),
        (&["--stage", "custom"], &[12]),
        (&["--kind", "prediction.served"], &[9, 10]),
        (&["--kind", "registry.model_registered"], &[5, 13]),
        (&["--kind", "operations.rolled_back"], &[]),
        (&["--model", "fraud"], &[3, 5, 6, 7, 8, 9, 10]),
        (&["--model", "churn"], &[13]),
        (&["--version", "3"], &[5, 6, 7, 8, 9, 10]),
        (&["--model", "fraud", "--version", "1"], &[]),
        (&["--actor", "alice"], &[5, 11, 13]),
        (&["--actor", "etl"], &[0, 1, 2]),
        (&["--run", "r1"], &[3, 4, 5]),
        (&["--run", "r9"], &[13]),
        (&["--dataset", "loans"], &[0, 1, 2]),
        (&["--deployment", "prod"], &[8, 9, 14]),
        (
            &["--since", "2026-01-01T09:00:00Z"],
            &[9, 10, 11, 12, 13, 14],
        ),
        (
            &["--since", "2026-01-01T11:00:00+02:00"],
            &[9, 10, 11, 12, 13, 14],
        ),
        (&["--until", "2026-01-01T02:00:00Z"], &[0, 1]),
        (
            &[
                "--since",
                "2026-01-01T03:00:00Z",
                "--until",
                "2026-01-01T05:00:00Z",
            ],
            &[3, 4],
        ),
        (&["--since", "2026-01-02T00:00:00Z"], &[]),
        (&["--limit", "2"], &[0, 1]),
        (&["--limit", "0"], &[]),
        (&["--after", "11"], &[12, 13, 14]),
        (&["--after", "14"], &[]),
        (
            &["--model", "fraud", "--after", "5", "--limit", "2"],
            &[6, 7],
        ),
        (&["--stage", "registry", "--actor", "alice"], &[5, 13]),
        (
            &["--deployment", "prod", "--kind", "prediction.served"],
            &[9],
        ),
        (
            &["--stage", "prediction", "--since", "2026-01-01T10:00:00Z"],
            &[10],
        ),
    ];
    for (filters, want) in cases {
        assert_eq!(query_seqs(&log, filters), *want, "query {filters:?}");
    }
}

#[test]
fn query_output_formats() {
    let log = Log::with_fixture("query-formats");
    let filters = ["--model", "fraud", "--stage", "registry"];

    let json = log
        .cmd(["query", "--format", "json"].iter().chain(&filters))
        .run()
        .ok()
        .json();
    assert_eq!(seqs(&json), vec![5, 6, 7]);
    let rows = json.as_array().expect("array");
    assert_eq!(rows[1]["event"]["kind"], "registry.approval_granted");
    assert_eq!(rows[1]["event"]["attributes"]["approver"]["id"], "bob");
    assert!(is_hex64(rows[1]["leaf_hash"].as_str().expect("leaf_hash")));
    // Each row is exactly what `get` prints.
    assert_eq!(rows[1], log.run(&["get", "6"]).ok().json());

    let nd = log
        .cmd(["query", "--format", "ndjson"].iter().chain(&filters))
        .run()
        .ok();
    let lines: Vec<Value> = nd
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).expect("ndjson line"))
        .collect();
    assert_eq!(Value::Array(lines), json);

    let table = log
        .cmd(["query", "--format", "table"].iter().chain(&filters))
        .run()
        .ok();
    let default = log.cmd(["query"].iter().chain(&filters)).run().ok();
    assert_eq!(table.stdout, default.stdout, "table is the default format");
    let lines: Vec<&str> = table.stdout.lines().collect();
    assert_eq!(lines.len(), 5, "{}", table.stdout);
    let header: Vec<&str> = lines[0].split_whitespace().collect();
    assert_eq!(header, vec!["SEQ", "TIME", "KIND", "ACTOR", "SUBJECT"]);
    let table_seqs: Vec<u64> = lines[1..4]
        .iter()
        .map(|l| {
            l.split_whitespace()
                .next()
                .and_then(|s| s.parse().ok())
                .expect("seq column")
        })
        .collect();
    assert_eq!(table_seqs, vec![5, 6, 7]);
    let row: Vec<&str> = lines[2].split_whitespace().collect();
    assert_eq!(
        row,
        vec![
            "6",
            "2026-01-01T06:00:00Z",
            "registry.approval_granted",
            "bob",
            "model=fraud",
            "version=3"
        ]
    );
    assert_eq!(lines[4], "(3 events)");

    let empty = log.run(&["query", "--kind", "operations.rolled_back"]).ok();
    assert_eq!(empty.stdout.lines().last(), Some("(0 events)"));
    assert_eq!(
        log.run(&[
            "query",
            "--kind",
            "operations.rolled_back",
            "--format",
            "json"
        ])
        .ok()
        .json(),
        serde_json::json!([])
    );
    assert_eq!(
        log.run(&[
            "query",
            "--kind",
            "operations.rolled_back",
            "--format",
            "ndjson"
        ])
        .ok()
        .stdout,
        ""
    );
}

#[test]
fn query_rejects_bad_filters() {
    let log = Log::with_fixture("query-bad");
    let out = log.run(&["query", "--since", "yesterday"]).code(2);
    assert!(
        out.stderr
            .contains("--since \"yesterday\" is not an RFC 3339 time"),
        "{}",
        out.stderr
    );
    let out = log
        .run(&["query", "--until", "2026-13-01T00:00:00Z"])
        .code(2);
    assert!(out.stderr.contains("--until"), "{}", out.stderr);
    let out = log.run(&["query", "--stage", "deploy"]).code(2);
    assert!(
        out.stderr.contains("--stage \"deploy\" is not one of"),
        "{}",
        out.stderr
    );
    log.run(&["query", "--format", "xml"]).code(2);
    log.run(&["query", "--limit", "-1"]).code(2);
    log.run(&["query", "--after", "x"]).code(2);
}

// ---------------------------------------------------------------------------------------------
// lineage
// ---------------------------------------------------------------------------------------------

fn row_seqs(v: &Value) -> Vec<u64> {
    seqs(v)
}

#[test]
fn lineage_of_a_prediction_json() {
    let log = Log::with_fixture("lineage");
    let l = log
        .run(&["lineage", &fixture_id(9), "--format", "json"])
        .ok()
        .json();
    assert_eq!(l["event"]["seq"], 9);
    assert_eq!(l["event"]["kind"], "prediction.served");
    assert_eq!(l["model"], "fraud");
    assert_eq!(l["version"], "3");

    assert_eq!(row_seqs(&l["registry"]), vec![5, 6, 7]);
    let registry = l["registry"].as_array().expect("registry");
    assert_eq!(registry[0]["kind"], "registry.model_registered");
    let approval = registry
        .iter()
        .find(|e| e["kind"] == "registry.approval_granted")
        .expect("approval in lineage");
    assert_eq!(approval["seq"], 6);
    assert_eq!(
        approval["attributes"]["approver"],
        serde_json::json!({"id": "bob", "role": "risk-officer"})
    );
    assert_eq!(approval["actor"]["id"], "bob");
    let stage = registry
        .iter()
        .find(|e| e["kind"] == "registry.stage_changed")
        .expect("stage change in lineage");
    assert_eq!(stage["seq"], 7);
    assert_eq!(stage["attributes"]["from_stage"], "staging");
    assert_eq!(stage["attributes"]["to_stage"], "production");

    assert_eq!(row_seqs(&l["deployments"]), vec![8]);
    assert_eq!(l["run"], "r1");
    assert_eq!(row_seqs(&l["training"]), vec![3, 4]);
    assert_eq!(l["training"][0]["kind"], "training.run_started");

    let datasets = l["datasets"].as_array().expect("datasets");
    assert_eq!(datasets.len(), 1, "{}", l["datasets"]);
    assert_eq!(datasets[0]["dataset"], "loans");
    assert_eq!(datasets[0]["version"], "v1");
    // The v0 snapshot (seq 2) is another dataset version and is not part of this lineage.
    assert_eq!(row_seqs(&datasets[0]["events"]), vec![0, 1]);

    // By seq, the same lineage.
    assert_eq!(
        log.run(&["lineage", "9", "--format", "json"]).ok().json(),
        l
    );
}

#[test]
fn lineage_follows_a_deployment_to_its_model() {
    let log = Log::with_fixture("lineage-deploy");
    // operations.traffic_routed names only the deployment.
    let l = log.run(&["lineage", "14", "--format", "json"]).ok().json();
    assert_eq!(l["model"], "fraud");
    assert_eq!(l["version"], "3");
    assert_eq!(l["run"], "r1");
    assert_eq!(row_seqs(&l["registry"]), vec![5, 6, 7]);
    assert_eq!(row_seqs(&l["training"]), vec![3, 4]);

    // An event with no model has an empty lineage.
    let l = log.run(&["lineage", "11", "--format", "json"]).ok().json();
    assert_eq!(l["model"], Value::Null);
    assert_eq!(l["registry"], serde_json::json!([]));
    assert_eq!(l["datasets"], serde_json::json!([]));
}

#[test]
fn lineage_text_format() {
    let log = Log::with_fixture("lineage-text");
    let out = log.run(&["lineage", &fixture_id(9)]).ok();
    let text = &out.stdout;
    assert!(text.starts_with("event      seq 9 "), "{text}");
    assert!(text.contains("model      fraud version 3\n"), "{text}");
    assert!(text.contains("registry.approval_granted  by bob  approver={\"id\":\"bob\",\"role\":\"risk-officer\"} reason=\"validated on holdout\""), "{text}");
    assert!(
        text.contains("registry.stage_changed  by registry  \"staging\" -> \"production\""),
        "{text}"
    );
    assert!(text.contains("training run r1:\n"), "{text}");
    assert!(text.contains("dataset loans@v1:\n"), "{text}");
    assert_eq!(
        log.run(&["lineage", &fixture_id(9), "--format", "text"])
            .ok()
            .stdout,
        out.stdout
    );
}

#[test]
fn lineage_of_an_unknown_id_exits_2() {
    let log = Log::with_fixture("lineage-unknown");
    log.run(&[
        "lineage",
        "6f1c0000-0000-4000-8000-000000009999",
        "--format",
        "json",
    ])
    .code(2);
    log.run(&["lineage", "99"]).code(2);
}

// ---------------------------------------------------------------------------------------------
// checkpoints and consistency
// ---------------------------------------------------------------------------------------------

/// Checks the layout of a signed note for `size` and returns its base64 root.
#[track_caller]
fn check_note(note: &str, size: u64, key_id: &str) -> String {
    assert!(note.ends_with('\n'), "{note:?}");
    let lines: Vec<&str> = note.lines().collect();
    assert_eq!(lines.len(), 5, "{note}");
    assert_eq!(lines[0], ORIGIN);
    assert_eq!(lines[1], size.to_string());
    assert_eq!(
        b64_decode(lines[2]).map(|r| r.len()),
        Some(32),
        "root line {:?}",
        lines[2]
    );
    assert_eq!(lines[3], "");
    let sig = lines[4]
        .strip_prefix(&format!("\u{2014} {ORIGIN} "))
        .unwrap_or_else(|| panic!("signature line {:?}", lines[4]));
    let blob = b64_decode(sig).expect("signature base64");
    assert_eq!(blob.len(), 68, "key id + Ed25519 signature");
    let id: String = blob[..4].iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(id, key_id);
    lines[2].to_owned()
}

#[test]
fn checkpoint_prints_a_signed_note_and_lists_sizes() {
    let log = Log::with_fixture("checkpoint");
    let key_id = check_verifier_key(&log.key, ORIGIN);
    let latest = log.run(&["checkpoint"]).ok().stdout;
    let root = check_note(&latest, 15, &key_id);
    assert_eq!(
        log.run(&["checkpoint", "--list"]).ok().stdout,
        "0\n5\n10\n15\n"
    );
    assert_eq!(log.run(&["checkpoint", "--size", "15"]).ok().stdout, latest);
    let five = log.run(&["checkpoint", "--size", "5"]).ok().stdout;
    let root5 = check_note(&five, 5, &key_id);
    assert_ne!(root5, root);
    // The empty tree's root is SHA-256("").
    let zero = log.run(&["checkpoint", "--size", "0"]).ok().stdout;
    check_note(&zero, 0, &key_id);
    assert_eq!(
        zero.lines().nth(2),
        Some("47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=")
    );

    // verify reports the same root in hex.
    let v = log.run(&["verify"]).ok();
    let hex: String = b64_decode(&root)
        .expect("root")
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(
        v.stdout,
        format!("verified 15 events and 4 checkpoints: intact\nroot {hex} at tree size 15\n")
    );

    let out = log.run(&["checkpoint", "--size", "6"]).code(2);
    assert!(
        out.stderr
            .contains("no checkpoint is stored for tree size 6"),
        "{}",
        out.stderr
    );
}

#[test]
fn consistency_between_checkpoints() {
    let log = Log::with_fixture("consistency");
    for (from, to) in [(5, 10), (5, 15), (10, 15), (5, 5)] {
        let out = log
            .run(&[
                "consistency",
                "--from",
                &from.to_string(),
                "--to",
                &to.to_string(),
            ])
            .ok();
        let proof = out.json();
        assert_eq!(proof["from"], from);
        assert_eq!(proof["to"], to);
        assert_eq!(
            proof["from_checkpoint"],
            log.run(&["checkpoint", "--size", &from.to_string()])
                .ok()
                .stdout
        );
        assert_eq!(
            proof["to_checkpoint"],
            log.run(&["checkpoint", "--size", &to.to_string()])
                .ok()
                .stdout
        );
        assert!(
            out.stderr.contains(&format!(
                "OK: the tree at size {from} is a prefix of the tree at size {to}"
            )),
            "{}",
            out.stderr
        );
    }
    // --to defaults to the latest checkpoint.
    let out = log.run(&["consistency", "--from", "5"]).ok();
    assert_eq!(out.json()["to"], 15);

    for (from, to) in [("6", "15"), ("5", "7"), ("5", "16")] {
        let out = log
            .run(&["consistency", "--from", from, "--to", to])
            .code(2);
        assert!(
            out.stderr.contains("no checkpoint is stored for tree size"),
            "{from}..{to}: {}",
            out.stderr
        );
    }
    let out = log.run(&["consistency", "--from", "6"]).code(2);
    assert!(
        out.stderr
            .contains("no checkpoint is stored for tree size 6"),
        "{}",
        out.stderr
    );
    log.run(&["consistency", "--from", "10", "--to", "5"])
        .code(2);
    log.run(&["consistency", "--from", "0", "--to", "5"])
        .code(2);
}

// ---------------------------------------------------------------------------------------------
// prove and verify-bundle
// ---------------------------------------------------------------------------------------------

fn prove(log: &Log, id: &str) -> (String, Value) {
    let path = log.dir.join("bundle.json");
    let out = log
        .run(&["prove", id, "--out", path.to_str().expect("utf-8")])
        .ok();
    assert_eq!(out.stdout, "");
    assert!(
        out.stderr.contains("wrote proof bundle for seq"),
        "{}",
        out.stderr
    );
    let text = std::fs::read_to_string(&path).expect("bundle written");
    let bundle: Value = serde_json::from_str(&text).expect("bundle is JSON");
    (path.to_str().expect("utf-8").to_owned(), bundle)
}

fn verify_bundle(log: &Log, bundle: &Value, key: &str) -> Out {
    let file = log.write(
        "tampered.json",
        serde_json::to_string_pretty(bundle).expect("serialize"),
    );
    log.run(&["verify-bundle", &file, "--key", key])
}

#[test]
fn prove_and_verify_bundle() {
    let log = Log::with_fixture("prove");
    let (file, bundle) = prove(&log, &fixture_id(9));
    for field in [
        "format",
        "entry",
        "payload",
        "leaf_index",
        "tree_size",
        "inclusion_path",
        "checkpoint",
        "event",
    ] {
        assert!(
            bundle.get(field).is_some(),
            "bundle has no {field}: {bundle}"
        );
    }
    assert_eq!(bundle["format"], "mlaudit-proof-bundle/v1");
    assert_eq!(bundle["leaf_index"], 9);
    assert_eq!(bundle["tree_size"], 15);
    let note = bundle["checkpoint"].as_str().expect("checkpoint text");
    assert_eq!(
        note.lines().nth(1).and_then(|s| s.parse::<u64>().ok()),
        bundle["tree_size"].as_u64()
    );
    // The bundle was made before `prove` recorded its read (the next event).
    assert_eq!(note, log.run(&["checkpoint", "--size", "15"]).ok().stdout);
    assert_eq!(
        bundle["inclusion_path"].as_array().map(Vec::len),
        Some(4),
        "path of leaf 9 in a tree of 15"
    );
    let payload = b64_decode(bundle["payload"].as_str().expect("payload")).expect("payload base64");
    assert_eq!(
        serde_json::from_slice::<Value>(&payload).expect("payload is the event JSON"),
        fixture()[9]
    );
    assert_eq!(bundle["event"], log.run(&["get", "9"]).ok().json()["event"]);

    // Key as a file, and as text.
    let hex_root: String = {
        let root = note.lines().nth(2).expect("root line");
        b64_decode(root)
            .expect("root")
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    };
    let want = format!(
        "OK: event {} (prediction.served) is leaf 9 of the log {ORIGIN} at tree size 15, root {hex_root}, payload matches its digest\n",
        fixture_id(9)
    );
    assert_eq!(
        log.run(&["verify-bundle", &file, "--key", &log.verifier_key_path()])
            .ok()
            .stdout,
        want
    );
    assert_eq!(
        log.run(&["verify-bundle", &file, "--key", &log.key])
            .ok()
            .stdout,
        want
    );

    // Without --out, the same event's bundle on stdout (against the latest checkpoint, which
    // now also covers the reads this test made).
    let stdout = log.run(&["prove", "9"]).ok().json();
    for field in ["format", "entry", "payload", "leaf_index", "event"] {
        assert_eq!(stdout[field], bundle[field], "{field}");
    }
    assert!(stdout["tree_size"].as_u64() > bundle["tree_size"].as_u64());
}

#[test]
fn every_event_has_a_valid_proof() {
    let log = Log::with_fixture("prove-all");
    for seq in 0..15 {
        let (file, bundle) = prove(&log, &seq.to_string());
        assert_eq!(bundle["leaf_index"], seq);
        log.run(&["verify-bundle", &file, "--key", &log.key]).ok();
    }
}

#[test]
fn a_redacted_payload_still_verifies() {
    let log = Log::with_fixture("prove-redacted");
    let (_, mut bundle) = prove(&log, "3");
    bundle["payload"] = Value::Null;
    let out = verify_bundle(&log, &bundle, &log.key).ok();
    assert!(
        out.stdout.trim_end().ends_with(", payload redacted"),
        "{}",
        out.stdout
    );
}

#[test]
fn tampered_bundles_fail_with_exit_1() {
    let log = Log::with_fixture("prove-tamper");
    let (_, bundle) = prove(&log, &fixture_id(9));
    verify_bundle(&log, &bundle, &log.key).ok();

    // A changed payload byte.
    let mut t = bundle.clone();
    let mut payload = b64_decode(t["payload"].as_str().expect("payload")).expect("base64");
    let at = find(&payload, PAYLOAD_MARKER.as_bytes()).expect("marker in payload");
    payload[at] ^= 0x20;
    t["payload"] = b64_encode(&payload).into();
    let out = verify_bundle(&log, &t, &log.key).code(1);
    assert!(out.stderr.contains("payload SHA-256"), "{}", out.stderr);

    // A changed leaf_index.
    for index in [8u64, 10] {
        let mut t = bundle.clone();
        t["leaf_index"] = index.into();
        let out = verify_bundle(&log, &t, &log.key).code(1);
        assert!(
            out.stderr.contains("differs from leaf_index"),
            "{}",
            out.stderr
        );
    }

    // A flipped bit in each inclusion path hash.
    let path_len = bundle["inclusion_path"].as_array().expect("path").len();
    for i in 0..path_len {
        let mut t = bundle.clone();
        let mut h = b64_decode(t["inclusion_path"][i].as_str().expect("hash")).expect("base64");
        h[31] ^= 1;
        t["inclusion_path"][i] = b64_encode(&h).into();
        let out = verify_bundle(&log, &t, &log.key).code(1);
        assert!(
            out.stderr.contains("inclusion proof"),
            "path[{i}]: {}",
            out.stderr
        );
    }
    // A path with a hash dropped or added.
    let mut t = bundle.clone();
    t["inclusion_path"].as_array_mut().expect("path").pop();
    verify_bundle(&log, &t, &log.key).code(1);
    let mut t = bundle.clone();
    t["inclusion_path"]
        .as_array_mut()
        .expect("path")
        .push(b64_encode(&[7u8; 32]).into());
    verify_bundle(&log, &t, &log.key).code(1);

    // A checkpoint whose root line was altered (the signature no longer matches).
    let note = bundle["checkpoint"].as_str().expect("note");
    let root_line = note.lines().nth(2).expect("root line");
    let mut root = b64_decode(root_line).expect("root");
    root[0] ^= 0xff;
    let mut t = bundle.clone();
    t["checkpoint"] = note.replacen(root_line, &b64_encode(&root), 1).into();
    let out = verify_bundle(&log, &t, &log.key).code(1);
    assert!(out.stderr.contains("checkpoint"), "{}", out.stderr);

    // A tree_size that differs from the checkpoint's.
    let mut t = bundle.clone();
    t["tree_size"] = 16.into();
    verify_bundle(&log, &t, &log.key).code(1);

    // A changed entry byte (the event time).
    let mut t = bundle.clone();
    let mut entry = b64_decode(t["entry"].as_str().expect("entry")).expect("base64");
    entry[16] ^= 1;
    t["entry"] = b64_encode(&entry).into();
    verify_bundle(&log, &t, &log.key).code(1);

    // Garbage instead of a bundle.
    let file = log.write("garbage.json", "not json");
    log.run(&["verify-bundle", &file, "--key", &log.key])
        .code(1);
}

#[test]
fn a_bundle_checked_with_another_logs_key_fails() {
    let log = Log::with_fixture("prove-otherkey");
    let (file, _) = prove(&log, "9");
    // Another log, even with the same origin, has another key.
    let other_same_name = Log::new("prove-otherkey-b");
    assert_ne!(other_same_name.key, log.key);
    let out = log
        .run(&["verify-bundle", &file, "--key", &other_same_name.key])
        .code(1);
    assert!(out.stderr.contains("FAILED"), "{}", out.stderr);
    log.run(&[
        "verify-bundle",
        &file,
        "--key",
        &other_same_name.verifier_key_path(),
    ])
    .code(1);
    let other_name = Log::with_origin("prove-otherkey-c", "other.example/log");
    log.run(&["verify-bundle", &file, "--key", &other_name.key])
        .code(1);
}

#[test]
fn verify_bundle_input_errors_exit_2() {
    let log = Log::with_fixture("prove-input");
    let (file, _) = prove(&log, "9");
    // A key that is neither a file nor a key.
    let out = log
        .run(&["verify-bundle", &file, "--key", "no-such-key-file"])
        .code(2);
    assert!(out.stderr.contains("--key"), "{}", out.stderr);
    // A key whose id does not match its name and public key.
    let (name_id, b64) = log.key.rsplit_once('+').expect("key");
    let (name, _) = name_id.rsplit_once('+').expect("key");
    log.run(&[
        "verify-bundle",
        &file,
        "--key",
        &format!("{name}+00000000+{b64}"),
    ])
    .code(2);
    // A missing bundle file.
    let out = log
        .run(&["verify-bundle", "missing.json", "--key", &log.key])
        .code(2);
    assert!(
        out.stderr.contains("cannot read missing.json"),
        "{}",
        out.stderr
    );
    // prove of an unknown id.
    log.run(&["prove", "6f1c0000-0000-4000-8000-000000009999"])
        .code(2);
    log.run(&["prove", "9999"]).code(2);
}

// ---------------------------------------------------------------------------------------------
// verify and a damaged segment
// ---------------------------------------------------------------------------------------------

/// The start of the record of the (only) event whose bytes contain `needle`, and its byte.
fn record_with(seg: &[u8], needle: &[u8]) -> (Record, usize) {
    let at = find(seg, needle).expect("needle in segment");
    assert!(
        find(&seg[at + 1..], needle).is_none(),
        "needle is not unique"
    );
    let rec = records(seg)
        .into_iter()
        .find(|r| r.start <= at && at < r.end())
        .expect("a record holds it");
    assert_eq!(rec.kind, 1, "an event record");
    assert!(
        at >= rec.start + 13 + rec.len_a,
        "the needle is in the payload (part B)"
    );
    (rec, at)
}

#[test]
fn verify_detects_a_flipped_payload_byte() {
    let log = Log::with_fixture("verify-tamper");
    log.run(&["verify"]).ok();
    let seg_path = log.segment();
    let mut seg = std::fs::read(&seg_path).expect("segment");
    let (rec, at) = record_with(&seg, PAYLOAD_MARKER.as_bytes());
    seg[at] = b'P';
    std::fs::write(&seg_path, &seg).expect("write segment");

    let out = log.run(&["verify"]).code(1);
    assert_eq!(out.stdout, "");
    assert!(out.stderr.contains("verification FAILED"), "{}", out.stderr);
    assert!(out.stderr.contains("seq 9"), "{}", out.stderr);
    assert!(
        out.stderr
            .contains(&format!("seg-00000000000000000000.log:{}", rec.start)),
        "record at {}: {}",
        rec.start,
        out.stderr
    );
}

#[test]
fn verify_detects_a_payload_change_even_with_a_resealed_record_crc() {
    let log = Log::with_fixture("verify-reseal");
    let seg_path = log.segment();
    let mut seg = std::fs::read(&seg_path).expect("segment");
    let (rec, at) = record_with(&seg, PAYLOAD_MARKER.as_bytes());
    seg[at] = b'P';
    let crc_at = rec.end() - 4;
    let crc = crc32c(&seg[rec.start..crc_at]);
    seg[crc_at..rec.end()].copy_from_slice(&crc.to_be_bytes());
    std::fs::write(&seg_path, &seg).expect("write segment");

    let out = log.run(&["verify"]).code(1);
    assert!(
        out.stderr
            .contains("seq 9: payload does not match the SHA-256 its entry commits to"),
        "{}",
        out.stderr
    );
    assert!(
        out.stderr
            .contains(&format!("seg-00000000000000000000.log:{}", rec.start)),
        "record at {}: {}",
        rec.start,
        out.stderr
    );
}

#[test]
fn verify_detects_a_changed_entry_header_with_a_resealed_record_crc() {
    let log = Log::with_fixture("verify-entry");
    let seg_path = log.segment();
    let mut seg = std::fs::read(&seg_path).expect("segment");
    // Seq 9's record: its payload holds the marker; its entry header holds the actor id "api".
    let (rec, _) = record_with(&seg, PAYLOAD_MARKER.as_bytes());
    let entry = rec.start + 13..rec.start + 13 + rec.len_a;
    let at = entry.start + find(&seg[entry.clone()], b"api").expect("actor id in the entry");
    seg[at + 2] = b'j';
    let crc_at = rec.end() - 4;
    let crc = crc32c(&seg[rec.start..crc_at]);
    seg[crc_at..rec.end()].copy_from_slice(&crc.to_be_bytes());
    std::fs::write(&seg_path, &seg).expect("write segment");

    // The recomputed root no longer matches the checkpoint signed for size 10 (seqs 5..10).
    let out = log.run(&["verify"]).code(1);
    assert!(out.stderr.contains("verification FAILED: seq 5: the signed root differs from the root recomputed from the entries"), "{}", out.stderr);
    assert!(
        out.stderr
            .contains("checkpoint for tree size 10; first bad seq is in 5..10"),
        "{}",
        out.stderr
    );
}

#[test]
fn a_torn_tail_is_removed_at_open() {
    for (name, tail) in [
        ("garbage", vec![0x01u8, 0x00, 0x00]),
        ("zeros", vec![0u8; 64]),
    ] {
        let log = Log::with_fixture(&format!("torn-{name}"));
        let seg_path = log.segment();
        let len = std::fs::metadata(&seg_path).expect("segment").len();
        append_bytes(&seg_path, &tail);
        let out = log.run(&["verify"]).ok();
        assert!(
            out.stdout
                .starts_with("verified 15 events and 4 checkpoints: intact\n"),
            "{}",
            out.stdout
        );
        let msg = format!(
            "mlaudit: recovered from a crash: removed a torn, never-acknowledged tail of {} bytes from seg-00000000000000000000.log at offset {len}",
            tail.len()
        );
        assert!(out.stderr.contains(&msg), "{name}: {}", out.stderr);
        assert_eq!(std::fs::metadata(&seg_path).expect("segment").len(), len);
        // Reported once: the next open finds nothing to do.
        let again = log.run(&["verify"]).ok();
        assert_eq!(again.stderr, "");
    }
}

#[test]
fn events_written_without_their_checkpoint_are_kept_and_signed_at_open() {
    let log = Log::with_fixture("crash-checkpoint");
    // A copy of the log as it was before a group was appended.
    let before = log.dir.join("before");
    copy_dir(&log.data, &before);
    let old_len = std::fs::metadata(log.segment()).expect("segment").len() as usize;
    let extra = ndjson(&[custom_event(&fixture_id(90)), custom_event(&fixture_id(91))]);
    log.cmd(["append"]).stdin(extra).run().ok();
    let seg = std::fs::read(log.segment()).expect("segment");
    let group: Vec<Record> = records(&seg)
        .into_iter()
        .filter(|r| r.start >= old_len)
        .collect();
    assert_eq!(
        group.iter().map(|r| r.kind).collect::<Vec<_>>(),
        vec![1, 1, 2],
        "two events and a checkpoint"
    );
    // The crash: both event records reached the disk, and only part of the checkpoint record.
    let cut = group[2].start + 20;
    append_bytes(
        &before.join("log/seg-00000000000000000000.log"),
        &seg[old_len..cut],
    );

    let out = mlaudit(
        &log.dir.path,
        ["--data", before.to_str().expect("utf-8"), "verify"],
    )
    .run()
    .ok();
    assert!(out.stderr.contains(&format!("removed a torn, never-acknowledged tail of 20 bytes from seg-00000000000000000000.log at offset {}", group[2].start)), "{}", out.stderr);
    assert!(
        out.stderr
            .contains("signed a checkpoint for the 17 events recovered"),
        "{}",
        out.stderr
    );
    assert!(
        out.stdout
            .starts_with("verified 17 events and 5 checkpoints: intact\n"),
        "{}",
        out.stdout
    );
    let got = mlaudit(
        &log.dir.path,
        [
            "--data",
            before.to_str().expect("utf-8"),
            "get",
            &fixture_id(91),
        ],
    )
    .run()
    .ok()
    .json();
    assert_eq!(got["seq"], 16);
}

/// Regression (found by this suite): cutting the final group off the segment made every command
/// fail with an I/O error. The derived watermark records how much of the log was durable, so the
/// cut is now reported as missing acknowledged events (exit 1). Only when the derived files are
/// deleted too is the shorter log indistinguishable from a genuine one — which is why auditors
/// keep checkpoints outside the log (docs/FORMAT.md §7).
#[test]
fn deleting_the_final_group_is_detected() {
    let log = Log::with_fixture("truncate-group");
    let seg_path = log.segment();
    let seg = std::fs::read(&seg_path).expect("segment");
    // Cut right after the checkpoint record for tree size 10 (the third checkpoint record).
    let checkpoints: Vec<Record> = records(&seg).into_iter().filter(|r| r.kind == 2).collect();
    assert_eq!(checkpoints.len(), 4);
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(&seg_path)
        .expect("open segment");
    f.set_len(checkpoints[2].end() as u64).expect("truncate");
    drop(f);

    let out = log.run(&["verify"]).code(1);
    assert!(
        out.stderr.contains("acknowledged events are missing"),
        "{}",
        out.stderr
    );
    assert!(
        out.stderr.contains("seg-00000000000000000000.log"),
        "{}",
        out.stderr
    );

    // With the derived files gone as well, the shorter log is valid on its own.
    let log_dir = seg_path.parent().expect("log dir").to_path_buf();
    for entry in std::fs::read_dir(&log_dir).expect("read log dir") {
        let path = entry.expect("entry").path();
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("")
            .to_owned();
        if !name.starts_with("seg-") && name != "LOCK" {
            std::fs::remove_file(&path).expect("remove derived file");
        }
    }
    let out = log.run(&["verify"]).ok();
    assert!(
        out.stdout
            .starts_with("verified 10 events and 3 checkpoints: intact\n"),
        "{}",
        out.stdout
    );
    assert_eq!(log.checkpoint_list(), vec![0, 5, 10]);
}

// ---------------------------------------------------------------------------------------------
// demo
// ---------------------------------------------------------------------------------------------

#[test]
fn demo_runs_twice() {
    let dir = TempDir::new("demo");
    let out = mlaudit(&dir.path, ["demo", "--data", "D", "--predictions", "40"])
        .run()
        .ok();
    let s = &out.stdout;
    assert!(
        s.contains("== recorded model credit-risk version 7 "),
        "{s}"
    );
    assert!(
        s.contains("18 lifecycle events and 40 predictions over HTTP, seq 1..58"),
        "{s}"
    );
    assert!(
        s.contains("== sending the lifecycle to a local `mlaudit serve` at http://127.0.0.1:"),
        "{s}"
    );
    assert!(
        s.contains("\nintact: 59 events, 4 checkpoints, root "),
        "{s}"
    );
    assert!(
        s.contains("== lineage of the prediction at seq 39\n"),
        "{s}"
    );
    assert!(s.contains("model      credit-risk version 7\n"), "{s}");
    assert!(
        s.contains("registry.approval_granted  by maria.gonzalez  approver="),
        "{s}"
    );
    assert!(s.contains("training run run-"), "{s}");
    assert!(s.contains("dataset credit-applications@2026-10-31:"), "{s}");
    let ok = s
        .lines()
        .find(|l| l.starts_with("OK: event "))
        .unwrap_or_else(|| panic!("no OK line: {s}"));
    assert!(
        ok.contains("(prediction.served) is leaf 39 of the log mlaudit.local/demo-"),
        "{ok}"
    );
    // The bundle is made after the lineage above was recorded as a read (seq 59).
    assert!(ok.contains(" at tree size 60, root "), "{ok}");
    assert!(ok.ends_with("payload matches its digest"), "{ok}");
    let anon = s
        .lines()
        .find(|l| l.starts_with("the proof by leaf hash"))
        .unwrap_or_else(|| panic!("no proof by leaf hash: {s}"));
    assert!(
        anon.ends_with("OK: leaf 39 of tree size 61"),
        "the anonymous HTTP proof by leaf hash: {anon}"
    );

    let out = mlaudit(&dir.path, ["demo", "--data", "D", "--predictions", "40"])
        .run()
        .ok();
    let s = &out.stdout;
    assert!(
        !s.contains("initialized"),
        "the second run reuses the log: {s}"
    );
    assert!(
        s.contains("== recorded model credit-risk version 8 "),
        "{s}"
    );
    assert!(s.contains("seq 62..119"), "{s}");
    assert!(
        s.contains("\nintact: 120 events, 9 checkpoints, root "),
        "{s}"
    );
    assert!(s.contains("model      credit-risk version 8\n"), "{s}");
    assert!(
        s.lines()
            .any(|l| l.starts_with("OK: event ") && l.contains("(prediction.served) is leaf 100 ")),
        "{s}"
    );

    let v = mlaudit(&dir.path, ["--data", "D", "verify"]).run().ok();
    assert!(
        v.stdout
            .starts_with("verified 122 events and 11 checkpoints: intact\n"),
        "{}",
        v.stdout
    );
    let regs = mlaudit(
        &dir.path,
        [
            "--data",
            "D",
            "query",
            "--kind",
            "registry.model_registered",
            "--format",
            "json",
        ],
    )
    .run()
    .ok()
    .json();
    let versions: Vec<&str> = regs
        .as_array()
        .expect("array")
        .iter()
        .map(|r| r["event"]["subject"]["version"].as_str().expect("version"))
        .collect();
    assert_eq!(versions, vec!["7", "8"]);

    // query lists at most 100 events by default; --after pages on.
    let page = mlaudit(&dir.path, ["--data", "D", "query", "--format", "json"])
        .run()
        .ok()
        .json();
    assert_eq!(seqs(&page), (0..100).collect::<Vec<u64>>());
    let next = mlaudit(
        &dir.path,
        ["--data", "D", "query", "--format", "json", "--after", "99"],
    )
    .run()
    .ok()
    .json();
    // Up to the record of the page before (the reads of this test are events too).
    assert_eq!(seqs(&next), (100..124).collect::<Vec<u64>>());
}

// ---------------------------------------------------------------------------------------------
// usage errors
// ---------------------------------------------------------------------------------------------

#[test]
fn usage_errors_exit_2() {
    let log = Log::new("usage");
    let cases: &[&[&str]] = &[
        &[],
        &["bogus"],
        &["get"],
        &["lineage"],
        &["prove"],
        &["verify-bundle"],
        &["verify-bundle", "f.json"],
        &["consistency"],
        &["consistency", "--from", "x"],
        &["checkpoint", "--size", "x"],
        &["query", "--bogus"],
        &["lineage", "0", "--format", "xml"],
        &["verify", "extra"],
        &["demo", "--predictions", "many"],
        &["init", "--bogus"],
    ];
    for args in cases {
        let out = log.run(args);
        assert_eq!(
            out.code, 2,
            "{args:?}: stdout {} stderr {}",
            out.stdout, out.stderr
        );
        assert!(!out.stderr.is_empty(), "{args:?} printed no error");
    }
    // The log was not touched by any of them.
    assert_eq!(log.tree_size(), 0);
    // --help and --version succeed.
    mlaudit(&log.dir.path, ["--help"]).run().ok();
    mlaudit(&log.dir.path, ["--version"]).run().ok();
}

// ---------------------------------------------------------------------------------------------
// append streams its input
// ---------------------------------------------------------------------------------------------

/// An input of more lines than one chunk holds is still all-or-nothing: a bad line far into it
/// stops everything, and the error names it.
#[test]
fn a_bad_line_far_into_a_large_input_appends_nothing() {
    let log = Log::with_fixture("append-stream");
    let mut events: Vec<Value> = (0..9000)
        .map(|i| custom_event(&format!("6f1c0000-0000-4000-8000-{:012}", 100_000 + i)))
        .collect();
    events[8500] = serde_json::json!({"kind": "nope", "actor": {"id": "a", "type": "user"}});
    let file = log.write("large.ndjson", ndjson(&events));
    let out = log.run(&["append", &file]).code(2);
    assert!(
        out.stderr.contains("line 8501: unknown kind"),
        "{}",
        out.stderr
    );
    assert!(
        out.stderr
            .contains("1 invalid line(s); nothing was appended"),
        "{}",
        out.stderr
    );
    assert_unchanged(&log, 15, &[0, 5, 10, 15]);
    // The same input without the bad line goes in whole, in order.
    events.remove(8500);
    let file = log.write("large.ndjson", ndjson(&events));
    let out = log.run(&["append", "--batch-size", "700", &file]).ok();
    assert!(
        out.stdout
            .starts_with("appended 8999 events, seq 15..=9013\n"),
        "{}",
        out.stdout
    );
}

/// A line longer than any event is refused without being held, and standard input leaves no
/// copy of itself behind, whether the append succeeded or not.
#[test]
fn over_long_lines_are_refused_and_stdin_leaves_no_copy() {
    let log = Log::new("append-long");
    let huge = format!("{{\"kind\":\"x.a\",\"pad\":\"{}\"}}\n", "x".repeat(3 << 20));
    let text = format!("{}{huge}", ndjson(&[custom_event(&fixture_id(1))]));
    let out = log.cmd(["append"]).stdin(text).run().code(2);
    assert!(
        out.stderr
            .contains("line 2: the line is longer than an event may be"),
        "{}",
        out.stderr
    );
    log.cmd(["append"])
        .stdin(ndjson(&[custom_event(&fixture_id(2))]))
        .run()
        .ok();
    let parent = log.data.parent().unwrap();
    let leftovers: Vec<_> = std::fs::read_dir(parent)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(".mlaudit-append-"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    assert_eq!(log.tree_size(), 1);
}
