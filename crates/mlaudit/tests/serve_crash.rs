//! `kill -9` of a real `mlaudit serve` during concurrent ingest over TCP: every event whose
//! batch was acknowledged with a 2xx is in the log afterwards, at the seq the server gave, and
//! the log verifies. Also a clean SIGTERM that lets acknowledged work finish.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test fails loudly on any unexpected error"
)]

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_mlaudit");

struct Dir(PathBuf);

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn mlaudit(data: &Path, args: &[&str]) -> std::process::Output {
    Command::new(BIN)
        .arg("--data")
        .arg(data)
        .args(args)
        .output()
        .expect("run mlaudit")
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn start(data: &Path) -> (Child, SocketAddr) {
    let port = free_port();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let mut child = Command::new(BIN)
        .arg("--data")
        .arg(data)
        .args(["serve", "--listen", &addr.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn serve");
    let deadline = Instant::now() + Duration::from_secs(15);
    while Instant::now() < deadline {
        if let Ok(mut s) = TcpStream::connect(addr) {
            let _ = s.write_all(b"GET /healthz HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n");
            let mut out = String::new();
            let _ = s.read_to_string(&mut out);
            if out.starts_with("HTTP/1.1 200") {
                return (child, addr);
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
    panic!("the server did not become ready");
}

/// Posts NDJSON on a keep-alive connection; returns (status, body).
fn post(
    conn: &mut (BufReader<TcpStream>, TcpStream),
    token: &str,
    body: &str,
) -> std::io::Result<(u16, String)> {
    let head = format!("POST /v1/events HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {token}\r\nContent-Type: application/x-ndjson\r\nContent-Length: {}\r\n\r\n", body.len());
    conn.1.write_all(head.as_bytes())?;
    conn.1.write_all(body.as_bytes())?;
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

fn connect(addr: SocketAddr) -> std::io::Result<(BufReader<TcpStream>, TcpStream)> {
    let s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    Ok((BufReader::new(s.try_clone()?), s))
}

fn event(n: u64) -> String {
    format!(
        r#"{{"id":"00000000-0000-4000-9000-{n:012}","kind":"x.crash","actor":{{"id":"client","type":"service"}},"attributes":{{"n":{n}}}}}"#
    )
}

/// Clients post batches until `stop`; returns every acknowledged (id → seq). `acks` counts the
/// acknowledged events as they come.
fn ingest(
    addr: SocketAddr,
    token: &str,
    clients: usize,
    next: &Arc<AtomicU64>,
    stop: &Arc<AtomicBool>,
    acks: &Arc<AtomicU64>,
) -> Vec<std::thread::JoinHandle<HashMap<String, u64>>> {
    (0..clients)
        .map(|_| {
            let (token, next, stop, acks) =
                (token.to_owned(), next.clone(), stop.clone(), acks.clone());
            std::thread::spawn(move || {
                let mut acked = HashMap::new();
                let Ok(mut conn) = connect(addr) else {
                    return acked;
                };
                let started = Instant::now();
                while !stop.load(Ordering::Relaxed) && started.elapsed() < Duration::from_secs(20) {
                    let first = next.fetch_add(20, Ordering::Relaxed);
                    let body: String = (first..first + 20).map(|n| event(n) + "\n").collect();
                    match post(&mut conn, &token, &body) {
                        Ok((200, reply)) => {
                            let v: serde_json::Value =
                                serde_json::from_str(&reply).expect("JSON receipt");
                            let events = v["events"].as_array().expect("events");
                            for e in events {
                                acked.insert(
                                    e["id"].as_str().unwrap().to_owned(),
                                    e["seq"].as_u64().unwrap(),
                                );
                            }
                            acks.fetch_add(events.len() as u64, Ordering::Relaxed);
                        }
                        Ok((status, reply)) => panic!("unexpected {status}: {reply}"),
                        Err(_) => break, // the server is gone
                    }
                }
                acked
            })
        })
        .collect()
}

/// Waits until the clients have had at least one batch acknowledged; if none is within 30 s,
/// kills the server and fails.
fn wait_for_an_ack(acks: &AtomicU64, server: &mut Child, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while acks.load(Ordering::Relaxed) == 0 {
        if Instant::now() >= deadline {
            let _ = server.kill();
            let _ = server.wait();
            panic!("{what}: no batch was acknowledged within 30 s");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn stored(data: &Path) -> HashMap<String, u64> {
    let out = mlaudit(
        data,
        &[
            "query", "--kind", "x.crash", "--format", "ndjson", "--limit", "1000000",
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            (
                v["event"]["id"].as_str().unwrap().to_owned(),
                v["seq"].as_u64().unwrap(),
            )
        })
        .collect()
}

fn setup(name: &str) -> (Dir, PathBuf, String) {
    let dir = Dir(
        std::env::temp_dir().join(format!("mlaudit-serve-crash-{name}-{}", std::process::id()))
    );
    let _ = std::fs::remove_dir_all(&dir.0);
    let data = dir.0.join("data");
    assert!(mlaudit(&data, &["init", "--origin", "crash.test"])
        .status
        .success());
    let out = mlaudit(
        &data,
        &["token", "create", "--role", "writer", "--name", "client"],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let token = String::from_utf8_lossy(&out.stdout)
        .lines()
        .last()
        .unwrap()
        .trim()
        .to_owned();
    (dir, data, token)
}

#[test]
fn kill_9_during_concurrent_ingest_loses_nothing_acknowledged() {
    let (_dir, data, token) = setup("kill9");
    let next = Arc::new(AtomicU64::new(0));
    let mut acked = HashMap::new();
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    for round in 0..4 {
        let (mut child, addr) = start(&data);
        let stop = Arc::new(AtomicBool::new(false));
        let acks = Arc::new(AtomicU64::new(0));
        let clients = ingest(addr, &token, 4, &next, &stop, &acks);
        // Kill at a random moment once this round has acknowledged something.
        wait_for_an_ack(&acks, &mut child, &format!("round {round}"));
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        std::thread::sleep(Duration::from_millis(x % 300));
        child.kill().expect("SIGKILL");
        child.wait().expect("reap");
        stop.store(true, Ordering::Relaxed);
        let mut this_round = HashMap::new();
        for c in clients {
            this_round.extend(c.join().expect("client"));
        }
        assert!(
            !this_round.is_empty(),
            "round {round}: nothing was acknowledged; the round proves nothing"
        );
        acked.extend(this_round);
        let verify = mlaudit(&data, &["verify"]);
        assert!(
            verify.status.success(),
            "round {round}: {}{}",
            String::from_utf8_lossy(&verify.stdout),
            String::from_utf8_lossy(&verify.stderr)
        );
        let have = stored(&data);
        for (id, seq) in &acked {
            assert_eq!(
                have.get(id),
                Some(seq),
                "round {round}: acknowledged event {id} (seq {seq}) is missing or moved"
            );
        }
    }
}

#[test]
fn sigterm_finishes_and_keeps_everything_acknowledged() {
    let (_dir, data, token) = setup("term");
    let (mut child, addr) = start(&data);
    let next = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let acks = Arc::new(AtomicU64::new(0));
    let clients = ingest(addr, &token, 4, &next, &stop, &acks);
    // SIGTERM while the clients keep posting, once something was acknowledged.
    wait_for_an_ack(&acks, &mut child, "before SIGTERM");
    assert!(Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap()
        .success());
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "the server did not stop within 10 s of SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    stop.store(true, Ordering::Relaxed);
    assert!(status.success(), "exit status {status:?}");
    let mut acked = HashMap::new();
    for c in clients {
        acked.extend(c.join().unwrap());
    }
    assert!(!acked.is_empty());
    assert!(mlaudit(&data, &["verify"]).status.success());
    let have = stored(&data);
    for (id, seq) in &acked {
        assert_eq!(
            have.get(id),
            Some(seq),
            "acknowledged event {id} is missing"
        );
    }
}
