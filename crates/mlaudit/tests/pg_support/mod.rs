//! Real `mlaudit serve` processes on a log in the machine's PostgreSQL, each test in a schema
//! of its own (dropped afterwards). `MLAUDIT_TEST_POSTGRES` names the server (default
//! `postgres://postgres@127.0.0.1:5432/test`).

#![allow(dead_code, reason = "each test binary uses part of the helpers")]

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_mlaudit");

pub fn server_url() -> String {
    std::env::var("MLAUDIT_TEST_POSTGRES")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

/// Starts PostgreSQL if needed and creates the test roles, once per test binary
/// (`scripts/postgres-test-setup.sh`).
pub fn setup() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let script = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../scripts/postgres-test-setup.sh"
        );
        let status = std::process::Command::new("bash")
            .arg(script)
            .status()
            .unwrap();
        assert!(
            status.success(),
            "{script} failed: PostgreSQL is needed for these tests"
        );
    });
}

pub fn admin(sql: &str) -> Result<(), String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    rt.block_on(async {
        let (client, conn) = tokio_postgres::connect(&server_url(), tokio_postgres::NoTls)
            .await
            .map_err(|e| e.to_string())?;
        tokio::spawn(conn);
        client.batch_execute(sql).await.map_err(|e| e.to_string())
    })
}

/// A log in a schema of its own, with a data directory for its key; both removed on drop.
pub struct PgLog {
    pub schema: String,
    pub dir: PathBuf,
}

impl PgLog {
    pub fn new(tag: &str) -> PgLog {
        setup();
        let schema = format!("t_{tag}_{}", std::process::id());
        let _ = admin(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE"));
        let dir = std::env::temp_dir().join(format!("mlaudit-{schema}"));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let log = PgLog { schema, dir };
        let out = log.cli(&["init", "--origin", "pg.test/log"]);
        assert!(
            out.status.success(),
            "init: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        log
    }

    pub fn url(&self) -> String {
        format!("{}?schema={}", server_url(), self.schema)
    }

    pub fn data(&self) -> PathBuf {
        self.dir.join("data")
    }

    pub fn key(&self) -> PathBuf {
        self.data().join("key").join("signing.key")
    }

    pub fn cli(&self, args: &[&str]) -> Output {
        Command::new(BIN)
            .arg("--data")
            .arg(self.data())
            .arg("--store")
            .arg(self.url())
            .args(args)
            .output()
            .unwrap()
    }

    /// Starts a server with a data directory of its own (`n`), sharing the key, without
    /// authentication.
    pub fn serve(&self, n: usize) -> Server {
        self.serve_with(n, &["--danger-no-auth"])
    }

    /// Starts a server that authenticates with the log's shared token table.
    pub fn serve_auth(&self, n: usize) -> Server {
        self.serve_with(n, &[])
    }

    /// Creates a token from the command line; returns it.
    pub fn token(&self, role: &str, name: &str) -> String {
        let out = self.cli(&["token", "create", "--role", role, "--name", name]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .last()
            .unwrap()
            .trim()
            .to_owned()
    }

    fn serve_with(&self, n: usize, extra: &[&str]) -> Server {
        let port = free_port();
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let data = self.dir.join(format!("server-{n}"));
        let child = Command::new(BIN)
            .arg("--data")
            .arg(&data)
            .arg("--store")
            .arg(self.url())
            .args(["serve", "--listen", &addr.to_string()])
            .args(extra)
            .arg("--key")
            .arg(self.key())
            .stdout(Stdio::null())
            .stderr(if std::env::var_os("MLAUDIT_TEST_SERVER_LOGS").is_some() {
                Stdio::inherit()
            } else {
                Stdio::null()
            })
            .spawn()
            .unwrap();
        let mut server = Server { child, addr };
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if get(addr, "/healthz").is_ok_and(|(code, _)| code == 200) {
                return server;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        server.kill();
        panic!("server {n} did not become ready");
    }

    /// Every stored event of kind `x.crash`: id → seq (and how many rows there were).
    pub fn stored(&self) -> (HashMap<String, u64>, usize) {
        let out = self.cli(&[
            "query", "--kind", "x.crash", "--format", "ndjson", "--limit", "10000000",
        ]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8_lossy(&out.stdout);
        let mut rows = 0;
        let map = text
            .lines()
            .map(|l| {
                rows += 1;
                let v: serde_json::Value = serde_json::from_str(l).unwrap();
                (
                    v["event"]["id"].as_str().unwrap().to_owned(),
                    v["seq"].as_u64().unwrap(),
                )
            })
            .collect();
        (map, rows)
    }

    pub fn verify(&self) {
        let out = self.cli(&["verify"]);
        assert!(
            out.status.success(),
            "verify: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Drop for PgLog {
    fn drop(&mut self) {
        let _ = admin(&format!("DROP SCHEMA IF EXISTS {} CASCADE", self.schema));
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

pub struct Server {
    pub child: Child,
    pub addr: SocketAddr,
}

impl Server {
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Whether `/readyz` says this process is the sequencer.
    pub fn is_sequencer(&self) -> bool {
        get(self.addr, "/readyz").is_ok_and(|(_, body)| {
            serde_json::from_str::<serde_json::Value>(&body)
                .is_ok_and(|v| v["sequencer"] == serde_json::Value::Bool(true))
        })
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
    }
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub fn get(addr: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    let mut c = connect(addr)?;
    let head = format!("GET {path} HTTP/1.1\r\nHost: t\r\n\r\n");
    c.1.write_all(head.as_bytes())?;
    read_reply(&mut c)
}

pub type Conn = (BufReader<TcpStream>, TcpStream);

pub fn connect(addr: SocketAddr) -> std::io::Result<Conn> {
    let s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    Ok((BufReader::new(s.try_clone()?), s))
}

/// Posts NDJSON on a keep-alive connection; returns (status, body).
pub fn post(conn: &mut Conn, body: &str) -> std::io::Result<(u16, String)> {
    post_as(conn, None, "/v1/events", "application/x-ndjson", body)
}

/// Posts `body` to `path` with a bearer token, if any.
pub fn post_as(
    conn: &mut Conn,
    token: Option<&str>,
    path: &str,
    content_type: &str,
    body: &str,
) -> std::io::Result<(u16, String)> {
    let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    let head = format!("POST {path} HTTP/1.1\r\nHost: t\r\n{auth}Content-Type: {content_type}\r\nContent-Length: {}\r\n\r\n", body.len());
    conn.1.write_all(head.as_bytes())?;
    conn.1.write_all(body.as_bytes())?;
    read_reply(conn)
}

fn read_reply(conn: &mut Conn) -> std::io::Result<(u16, String)> {
    let mut status = String::new();
    conn.0.read_line(&mut status)?;
    let code = status
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("bad status line {status:?}")))?;
    let mut len = 0usize;
    loop {
        let mut line = String::new();
        if conn.0.read_line(&mut line)? == 0 {
            return Err(std::io::Error::other("connection closed"));
        }
        if line == "\r\n" {
            break;
        }
        if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
            len = v.trim().parse().map_err(std::io::Error::other)?;
        }
    }
    let mut body = vec![0u8; len];
    conn.0.read_exact(&mut body)?;
    Ok((code, String::from_utf8_lossy(&body).into_owned()))
}

pub fn event(n: u64) -> String {
    format!(
        r#"{{"id":"00000000-0000-4000-9000-{n:012}","kind":"x.crash","actor":{{"id":"client","type":"service"}},"attributes":{{"n":{n}}}}}"#
    )
}

/// The (id, seq) pairs of a 200 receipt.
pub fn receipt(body: &str) -> Vec<(String, u64)> {
    let v: serde_json::Value = serde_json::from_str(body).expect("JSON receipt");
    v["events"]
        .as_array()
        .expect("events")
        .iter()
        .map(|e| {
            (
                e["id"].as_str().unwrap().to_owned(),
                e["seq"].as_u64().unwrap(),
            )
        })
        .collect()
}

pub fn wait_until(limit: Duration, mut f: impl FnMut() -> bool) -> Option<Duration> {
    let start = Instant::now();
    while start.elapsed() < limit {
        if f() {
            return Some(start.elapsed());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    None
}
