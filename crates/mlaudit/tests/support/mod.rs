//! Helpers for the end-to-end tests of the `mlaudit` binary: a per-test temporary directory,
//! a runner for the real binary, a small known data set, and the few encodings the tests need
//! to inspect and tamper with files (base64, CRC-32C, record framing).

#![allow(dead_code)]

pub mod serve;

use serde_json::{json, Value};
use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};

pub const BIN: &str = env!("CARGO_BIN_EXE_mlaudit");
pub const ORIGIN: &str = "example.org/log";

/// A unique directory under the system temp dir, removed when dropped.
#[derive(Debug)]
pub struct TempDir {
    pub path: PathBuf,
}

impl TempDir {
    pub fn new(name: &str) -> TempDir {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let path = std::env::temp_dir().join(format!(
            "mlaudit-cli-{name}-{}-{}-{nanos}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&path)
            .unwrap_or_else(|e| panic!("creating {}: {e}", path.display()));
        TempDir { path }
    }

    pub fn join(&self, p: &str) -> PathBuf {
        self.path.join(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// What a run of the binary produced.
#[derive(Debug)]
pub struct Out {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Out {
    #[track_caller]
    pub fn ok(self) -> Out {
        assert_eq!(
            self.code, 0,
            "expected exit 0\nstdout:\n{}\nstderr:\n{}",
            self.stdout, self.stderr
        );
        self
    }

    #[track_caller]
    pub fn code(self, code: i32) -> Out {
        assert_eq!(
            self.code, code,
            "expected exit {code}\nstdout:\n{}\nstderr:\n{}",
            self.stdout, self.stderr
        );
        self
    }

    pub fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("stdout is not JSON ({e}):\n{}", self.stdout))
    }
}

/// A command line for the binary, run in a given working directory with a fixed user and no
/// `MLAUDIT_DATA` unless set explicitly.
#[derive(Debug)]
pub struct Run {
    cmd: Command,
    stdin: Option<Vec<u8>>,
}

pub fn mlaudit<I, S>(cwd: &Path, args: I) -> Run
where
    I: IntoIterator<Item = S>,
    S: AsRef<std::ffi::OsStr>,
{
    let mut cmd = Command::new(BIN);
    cmd.args(args)
        .current_dir(cwd)
        .env_remove("MLAUDIT_DATA")
        .env_remove("LOGNAME")
        .env("USER", "tester");
    Run { cmd, stdin: None }
}

impl Run {
    pub fn env(mut self, k: &str, v: impl AsRef<std::ffi::OsStr>) -> Run {
        self.cmd.env(k, v);
        self
    }

    pub fn stdin(mut self, bytes: impl Into<Vec<u8>>) -> Run {
        self.stdin = Some(bytes.into());
        self
    }

    pub fn run(mut self) -> Out {
        self.cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
        self.cmd.stdin(if self.stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        });
        let mut child = self
            .cmd
            .spawn()
            .unwrap_or_else(|e| panic!("spawning {BIN}: {e}"));
        if let Some(bytes) = self.stdin.take() {
            let mut stdin = child.stdin.take().expect("stdin is piped");
            stdin.write_all(&bytes).expect("writing stdin");
        }
        let out = child.wait_with_output().expect("waiting for mlaudit");
        Out {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }
}

/// A temp dir with an initialized data directory `data` in it.
#[derive(Debug)]
pub struct Log {
    pub dir: TempDir,
    pub data: PathBuf,
    /// The verifier key printed by `init`.
    pub key: String,
}

impl Log {
    pub fn new(name: &str) -> Log {
        Log::with_origin(name, ORIGIN)
    }

    pub fn with_origin(name: &str, origin: &str) -> Log {
        let dir = TempDir::new(name);
        let data = dir.join("data");
        let out = mlaudit(
            &dir.path,
            [
                "init",
                "--data",
                data.to_str().expect("utf-8 path"),
                "--origin",
                origin,
            ],
        )
        .run()
        .ok();
        let key = out
            .stdout
            .lines()
            .last()
            .expect("init prints the key")
            .to_owned();
        Log { dir, data, key }
    }

    /// Runs `mlaudit --data <data> args...`.
    pub fn cmd<I, S>(&self, args: I) -> Run
    where
        I: IntoIterator<Item = S>,
        S: AsRef<std::ffi::OsStr>,
    {
        let mut all: Vec<std::ffi::OsString> =
            vec!["--data".into(), self.data.clone().into_os_string()];
        all.extend(args.into_iter().map(|a| a.as_ref().to_owned()));
        mlaudit(&self.dir.path, all)
    }

    pub fn run(&self, args: &[&str]) -> Out {
        self.cmd(args).run()
    }

    /// Writes `text` to a file in the temp dir and returns its path as a string.
    pub fn write(&self, name: &str, text: impl AsRef<[u8]>) -> String {
        let p = self.dir.join(name);
        std::fs::write(&p, text).expect("writing test file");
        p.to_str().expect("utf-8 path").to_owned()
    }

    /// The tree size of the latest checkpoint (second line of `checkpoint`).
    pub fn tree_size(&self) -> u64 {
        let out = self.run(&["checkpoint"]).ok();
        out.stdout
            .lines()
            .nth(1)
            .and_then(|l| l.parse().ok())
            .unwrap_or_else(|| panic!("bad checkpoint:\n{}", out.stdout))
    }

    pub fn checkpoint_list(&self) -> Vec<u64> {
        let out = self.run(&["checkpoint", "--list"]).ok();
        out.stdout
            .lines()
            .map(|l| {
                l.parse()
                    .unwrap_or_else(|_| panic!("bad --list line {l:?}"))
            })
            .collect()
    }

    pub fn segment(&self) -> PathBuf {
        self.data.join("log").join("seg-00000000000000000000.log")
    }

    pub fn verifier_key_path(&self) -> String {
        self.data
            .join("key")
            .join("verifier.key")
            .to_str()
            .expect("utf-8 path")
            .to_owned()
    }

    /// A log holding the fixture's 15 events in three groups of five, each with its
    /// checkpoint (three appends: one append may merge its batches into fewer groups).
    pub fn with_fixture(name: &str) -> Log {
        let log = Log::new(name);
        let events = fixture();
        for (k, part) in events.chunks(5).enumerate() {
            let file = log.write(&format!("fixture-{k}.ndjson"), ndjson(part));
            let out = log.run(&["append", &file]).ok();
            let want = format!("appended 5 events, seq {}..={}\n", k * 5, k * 5 + 4);
            assert!(out.stdout.starts_with(&want), "{}", out.stdout);
        }
        log
    }
}

/// The id of fixture event `i`.
pub fn fixture_id(i: usize) -> String {
    format!("6f1c0000-0000-4000-8000-0000000000{i:02}")
}

/// The time of fixture event `i`: hour `i` of 2026-01-01.
pub fn fixture_time(i: usize) -> String {
    format!("2026-01-01T{i:02}:00:00Z")
}

/// The marker string stored only in the payload of fixture event 9.
pub const PAYLOAD_MARKER: &str = "payload-marker-nine";

/// A small known lifecycle. Seq = index (appended to an empty log).
///
/// ```text
///  0 data.source_accessed           etl       dataset=loans
///  1 data.snapshot_created          etl       dataset=loans dataset_version=v1
///  2 data.snapshot_created          etl       dataset=loans dataset_version=v0
///  3 training.run_started           trainer   run=r1 model=fraud (datasets loans@v1)
///  4 training.run_completed         trainer   run=r1
///  5 registry.model_registered      alice     model=fraud version=3 run=r1
///  6 registry.approval_granted      bob       model=fraud version=3 (approver bob)
///  7 registry.stage_changed         registry  model=fraud version=3 staging -> production
///  8 operations.deployed            deployer  deployment=prod model=fraud version=3
///  9 prediction.served              api       model=fraud version=3 request=q1 deployment=prod
/// 10 prediction.served              api       model=fraud version=3 request=q2
/// 11 governance.policy_changed      alice
/// 12 x.note                         carol
/// 13 registry.model_registered      alice     model=churn version=1 run=r9
/// 14 operations.traffic_routed      deployer  deployment=prod
/// ```
pub fn fixture() -> Vec<Value> {
    let svc = |id: &str| json!({"id": id, "type": "service"});
    let user = |id: &str| json!({"id": id, "type": "user"});
    let rows: Vec<(&str, Value, Value, Value)> = vec![
        (
            "data.source_accessed",
            svc("etl"),
            json!({"dataset": "loans"}),
            json!({"source": "s3://bucket/loans.csv"}),
        ),
        (
            "data.snapshot_created",
            svc("etl"),
            json!({"dataset": "loans", "dataset_version": "v1"}),
            json!({"content_sha256": "a".repeat(64)}),
        ),
        (
            "data.snapshot_created",
            svc("etl"),
            json!({"dataset": "loans", "dataset_version": "v0"}),
            json!({"content_sha256": "b".repeat(64)}),
        ),
        (
            "training.run_started",
            svc("trainer"),
            json!({"run": "r1", "model": "fraud"}),
            json!({"hyperparameters": {"depth": 4}, "random_seed": 7, "datasets": ["loans@v1"]}),
        ),
        (
            "training.run_completed",
            svc("trainer"),
            json!({"run": "r1"}),
            json!({"status": "succeeded", "duration_s": 60, "compute": {"cpu_hours": 1}}),
        ),
        (
            "registry.model_registered",
            user("alice"),
            json!({"model": "fraud", "version": "3", "run": "r1"}),
            json!({"artifact_sha256": "c".repeat(64)}),
        ),
        (
            "registry.approval_granted",
            user("bob"),
            json!({"model": "fraud", "version": "3"}),
            json!({"approver": {"id": "bob", "role": "risk-officer"}, "reason": "validated on holdout"}),
        ),
        (
            "registry.stage_changed",
            svc("registry"),
            json!({"model": "fraud", "version": "3"}),
            json!({"from_stage": "staging", "to_stage": "production"}),
        ),
        (
            "operations.deployed",
            svc("deployer"),
            json!({"deployment": "prod", "model": "fraud", "version": "3"}),
            json!({"environment": "production"}),
        ),
        (
            "prediction.served",
            svc("api"),
            json!({"model": "fraud", "version": "3", "request": "q1", "deployment": "prod"}),
            json!({"inputs": {"marker": PAYLOAD_MARKER}, "outputs": {"score": 0.9}}),
        ),
        (
            "prediction.served",
            svc("api"),
            json!({"model": "fraud", "version": "3", "request": "q2"}),
            json!({"inputs": {"x": 2}, "outputs": {"score": 0.1}}),
        ),
        (
            "governance.policy_changed",
            user("alice"),
            json!({}),
            json!({"policy": "sampling", "old": 0.1, "new": 1.0}),
        ),
        ("x.note", user("carol"), json!({}), json!({"text": "hello"})),
        (
            "registry.model_registered",
            user("alice"),
            json!({"model": "churn", "version": "1", "run": "r9"}),
            json!({"artifact_sha256": "d".repeat(64)}),
        ),
        (
            "operations.traffic_routed",
            svc("deployer"),
            json!({"deployment": "prod"}),
            json!({"split": {"3": 100}}),
        ),
    ];
    rows.into_iter()
        .enumerate()
        .map(|(i, (kind, actor, subject, attributes))| {
            json!({"id": fixture_id(i), "time": fixture_time(i), "kind": kind, "actor": actor, "subject": subject, "attributes": attributes})
        })
        .collect()
}

pub fn ndjson(events: &[Value]) -> String {
    events.iter().map(|e| format!("{e}\n")).collect()
}

pub fn fixture_ndjson() -> String {
    ndjson(&fixture())
}

/// A valid custom event with a fixed id.
pub fn custom_event(id: &str) -> Value {
    json!({"id": id, "time": "2026-02-01T00:00:00Z", "kind": "x.extra", "actor": {"id": "dave", "type": "user"}, "attributes": {"n": 1}})
}

// ---- base64 (RFC 4648, standard alphabet, padded) ----

const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

pub fn b64_encode(bytes: &[u8]) -> String {
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(B64[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

pub fn b64_decode(text: &str) -> Option<Vec<u8>> {
    let text = text.as_bytes();
    if text.len() & 3 != 0 {
        return None;
    }
    let mut out = Vec::new();
    for chunk in text.chunks(4) {
        let mut n = 0u32;
        let mut pad = 0;
        for &c in chunk {
            let v = if c == b'=' {
                pad += 1;
                0
            } else {
                if pad > 0 {
                    return None;
                }
                B64.iter().position(|x| *x == c)? as u32
            };
            n = (n << 6) | v;
        }
        let bytes = [(n >> 16) as u8, (n >> 8) as u8, n as u8];
        out.extend_from_slice(&bytes[..3 - pad]);
    }
    Some(out)
}

// ---- CRC-32C (Castagnoli), for re-sealing a tampered record ----

pub fn crc32c(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in bytes {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0x82F6_3B78
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// One framed record of a segment (docs/FORMAT.md §6).
#[derive(Debug, Clone, Copy)]
pub struct Record {
    pub start: usize,
    pub kind: u8,
    pub len_a: usize,
    pub len_b: usize,
}

impl Record {
    pub fn end(&self) -> usize {
        self.start + 13 + self.len_a + self.len_b + 4
    }
}

pub fn records(seg: &[u8]) -> Vec<Record> {
    let mut out = Vec::new();
    let mut pos = 0;
    while pos + 13 <= seg.len() {
        let be = |at: usize| {
            u32::from_be_bytes([seg[at], seg[at + 1], seg[at + 2], seg[at + 3]]) as usize
        };
        let r = Record {
            start: pos,
            kind: seg[pos],
            len_a: be(pos + 1),
            len_b: be(pos + 5),
        };
        assert!(
            r.end() <= seg.len(),
            "record at {pos} runs past the segment"
        );
        out.push(r);
        pos = r.end();
    }
    assert_eq!(pos, seg.len(), "segment does not end at a record boundary");
    out
}

pub fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

pub fn is_hex64(s: &str) -> bool {
    s.len() == 64
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// The seqs of a JSON array of `{"seq": ...}` rows.
pub fn seqs(rows: &Value) -> Vec<u64> {
    rows.as_array()
        .unwrap_or_else(|| panic!("not an array: {rows}"))
        .iter()
        .map(|r| r["seq"].as_u64().unwrap_or_else(|| panic!("no seq in {r}")))
        .collect()
}

/// Copies a directory tree.
pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("creating copy");
    for entry in std::fs::read_dir(from).expect("reading dir") {
        let entry = entry.expect("dir entry");
        let target = to.join(entry.file_name());
        if entry.file_type().expect("file type").is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).expect("copying file");
        }
    }
}

/// Appends bytes to a file.
pub fn append_bytes(path: &Path, bytes: &[u8]) {
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(path)
        .expect("opening for append");
    f.write_all(bytes).expect("appending");
}

/// Creates a token with the CLI and returns it (printed alone on the last line).
#[track_caller]
pub fn create_token(log: &Log, role: &str, name: &str) -> String {
    let out = log
        .run(&["token", "create", "--role", role, "--name", name])
        .ok();
    let token = out
        .stdout
        .lines()
        .last()
        .unwrap_or_else(|| panic!("token create printed nothing:\n{}", out.stderr))
        .trim()
        .to_owned();
    assert!(
        token.starts_with("mla_") && token.len() == 68,
        "not a token: {token:?}"
    );
    token
}

/// Every stored event of `kind` as id → seq, read with the CLI (the server must be stopped).
#[track_caller]
pub fn stored(log: &Log, kind: &str) -> HashMap<String, u64> {
    let out = log
        .run(&[
            "query", "--kind", kind, "--format", "ndjson", "--limit", "1000000",
        ])
        .ok();
    out.stdout
        .lines()
        .map(|l| {
            let v: Value = serde_json::from_str(l)
                .unwrap_or_else(|e| panic!("query line is not JSON ({e}): {l}"));
            (
                v["event"]["id"].as_str().unwrap().to_owned(),
                v["seq"].as_u64().unwrap(),
            )
        })
        .collect()
}

/// Runs `mlaudit verify` (exit 0) and returns the event count it reports.
#[track_caller]
pub fn verify(log: &Log) -> u64 {
    let out = log.run(&["verify"]).ok();
    let first = out.stdout.lines().next().unwrap_or("");
    assert!(
        first.ends_with("checkpoints: intact"),
        "verify: {}",
        out.stdout
    );
    first
        .strip_prefix("verified ")
        .and_then(|r| r.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("verify printed {first:?}"))
}
