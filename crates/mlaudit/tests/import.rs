//! `mlaudit import` of files other tools write: a W&B audit log and a ClearML offline session
//! (a real one, as a zip and as a folder). Importing twice writes nothing new, the log then
//! verifies, and a damaged input is refused with a clear error. (`mlaudit import mlflow` runs
//! against a real MLflow server in the real-tools suite, `tests/integrations_real_tools.rs`.)

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test fails loudly on any unexpected error"
)]

mod support;

use std::path::PathBuf;
use support::{stored, verify, Log};

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../mlaudit-integrations/tests/fixtures")
        .join(name)
}

fn path(p: &std::path::Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn a_wandb_audit_log_imports_once() {
    let log = Log::new("import-wandb");
    let file = fixture("wandb-audit.jsonl");
    let lines = std::fs::read_to_string(&file)
        .unwrap()
        .lines()
        .filter(|l| !l.trim().is_empty())
        .count();
    let first = log.run(&["import", "wandb-audit", path(&file)]).ok();
    assert_eq!(
        first.stdout.trim(),
        format!("imported: {lines} new events, 0 already present")
    );
    let second = log.run(&["import", "wandb-audit", path(&file)]).ok();
    assert_eq!(
        second.stdout.trim(),
        format!("imported: 0 new events, {lines} already present")
    );
    assert_eq!(verify(&log), lines as u64);
    assert!(!stored(&log, "governance.access_changed").is_empty());
    assert!(!stored(&log, "x.wandb.artifact.create").is_empty());
    // Each query above was itself recorded (governance.audit_accessed).
    let size = lines as u64 + 2;
    assert_eq!(verify(&log), size);
    // A bad line: nothing imported, the line named.
    let bad = log.dir.join("bad.jsonl");
    std::fs::write(
        &bad,
        "{\"timestamp\":\"2026-03-02T09:00:04Z\",\"action\":\"user:login\"}\nnot json\n",
    )
    .unwrap();
    let out = log.run(&["import", "wandb-audit", path(&bad)]).code(2);
    assert!(out.stderr.contains("line 2"), "{}", out.stderr);
    assert_eq!(verify(&log), size);
}

#[test]
fn a_clearml_offline_session_imports_from_its_zip_or_its_folder() {
    let log = Log::new("import-clearml");
    let zip = fixture("clearml/session.zip");
    let first = log.run(&["import", "clearml-offline", path(&zip)]).ok();
    assert_eq!(
        first.stdout.trim(),
        "imported: 6 new events, 0 already present"
    );
    let out = log
        .run(&[
            "query",
            "--kind",
            "registry.model_registered",
            "--format",
            "ndjson",
        ])
        .ok();
    let rows: Vec<serde_json::Value> = out
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(rows.len(), 1);
    let attributes = &rows[0]["event"]["attributes"];
    // The SHA-256 of models/model.pkl inside the zip, not a value ClearML reported.
    assert_eq!(attributes["weights_file"], "model.pkl");
    assert_eq!(
        attributes["artifact_sha256"],
        "9a129038d9a00aed0cf6a7ea059ca50a813449061ab87848cf1a13eafdf33b2c"
    );
    assert_eq!(stored(&log, "training.checkpoint_evaluated").len(), 4);
    // The same session as a folder: the same events, already present.
    let folder = log.dir.join("session");
    std::fs::create_dir_all(&folder).unwrap();
    for f in ["task.json", "metrics.jsonl"] {
        std::fs::copy(fixture(&format!("clearml/{f}")), folder.join(f)).unwrap();
    }
    let again = log.run(&["import", "clearml-offline", path(&folder)]).ok();
    assert_eq!(
        again.stdout.trim(),
        "imported: 0 new events, 6 already present"
    );
    // Six imported events and the two queries' audit records.
    assert_eq!(verify(&log), 8);
}

#[test]
fn a_damaged_session_is_refused_clearly() {
    let log = Log::new("import-clearml-bad");
    let bytes = std::fs::read(fixture("clearml/session.zip")).unwrap();
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("truncated.zip", bytes[..bytes.len() / 2].to_vec()),
        ("empty.zip", Vec::new()),
        ("text.zip", b"this is not a zip archive at all".to_vec()),
        ("flipped.zip", {
            let mut b = bytes.clone();
            let n = b.len();
            // The central directory's offset field points outside the file.
            b[n - 6] ^= 0xff;
            b
        }),
    ];
    // Two central-directory entries for one member: members that overlap.
    let overlapping = {
        let mut b = bytes.clone();
        let n = b.len();
        let eocd = (0..n - 21)
            .rev()
            .find(|&i| b[i..i + 4] == [0x50, 0x4b, 0x05, 0x06])
            .unwrap();
        let le16 = |b: &[u8], at: usize| u16::from_le_bytes([b[at], b[at + 1]]) as usize;
        let le32 = |b: &[u8], at: usize| {
            u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]]) as usize
        };
        let (count, cd_size, cd_offset) = (
            le16(&b, eocd + 10),
            le32(&b, eocd + 12),
            le32(&b, eocd + 16),
        );
        let first_len =
            46 + le16(&b, cd_offset + 28) + le16(&b, cd_offset + 30) + le16(&b, cd_offset + 32);
        let entry = b[cd_offset..cd_offset + first_len].to_vec();
        let mut tail = b.split_off(eocd);
        b.extend_from_slice(&entry);
        tail[10..12].copy_from_slice(&((count + 1) as u16).to_le_bytes());
        tail[8..10].copy_from_slice(&((count + 1) as u16).to_le_bytes());
        tail[12..16].copy_from_slice(&((cd_size + first_len) as u32).to_le_bytes());
        b.extend_from_slice(&tail);
        b
    };
    let mut cases = cases;
    cases.push(("overlapping.zip", overlapping));
    for (name, content) in cases {
        let p = log.dir.join(name);
        std::fs::write(&p, content).unwrap();
        let out = log.run(&["import", "clearml-offline", path(&p)]).code(2);
        assert!(out.stderr.starts_with("mlaudit:"), "{name}: {}", out.stderr);
        assert!(!out.stderr.contains("panicked"), "{name}: {}", out.stderr);
    }
    let empty_dir = log.dir.join("not-a-session");
    std::fs::create_dir_all(&empty_dir).unwrap();
    let out = log
        .run(&["import", "clearml-offline", path(&empty_dir)])
        .code(2);
    assert!(out.stderr.contains("task.json"), "{}", out.stderr);
    assert_eq!(verify(&log), 0);
}

/// With `--url`, an import goes through a running server (which holds the data directory):
/// again idempotent; and kinds only the log writes are refused with the way to import them.
#[test]
fn an_import_can_go_through_a_running_server() {
    let log = Log::new("import-url");
    let token = support::create_token(&log, "writer", "importer");
    let server = support::serve::Server::start(&log.data, &[]);
    let url = format!("http://{}", server.addr);
    let zip = fixture("clearml/session.zip");
    let run = |args: &[&str]| log.cmd(args).env("MLAUDIT_TOKEN", &token).run();
    let first = run(&["import", "clearml-offline", path(&zip), "--url", &url]).ok();
    assert_eq!(
        first.stdout.trim(),
        "imported: 6 new events, 0 already present"
    );
    let again = run(&["import", "clearml-offline", path(&zip), "--url", &url]).ok();
    assert_eq!(
        again.stdout.trim(),
        "imported: 0 new events, 6 already present"
    );
    let wandb = run(&[
        "import",
        "wandb-audit",
        path(&fixture("wandb-audit.jsonl")),
        "--url",
        &url,
    ])
    .code(2);
    assert!(
        wandb.stderr.contains("only the log itself writes"),
        "{}",
        wandb.stderr
    );
    assert!(
        wandb.stderr.contains("nothing was imported"),
        "{}",
        wandb.stderr
    );
    let no_token = log
        .run(&["import", "clearml-offline", path(&zip), "--url", &url])
        .code(2);
    assert!(
        no_token.stderr.contains("MLAUDIT_TOKEN"),
        "{}",
        no_token.stderr
    );
    assert_eq!(
        server.tree_size(),
        6 + 1,
        "six events and the token's grant"
    );
    server.stop();
}
