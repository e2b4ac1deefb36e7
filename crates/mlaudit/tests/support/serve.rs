//! For end-to-end tests of `mlaudit serve` over real TCP: a spawned server on a free
//! 127.0.0.1 port (killed when dropped), a tiny HTTP/1.1 client over `std::net::TcpStream`
//! (Content-Length or chunked bodies, `Connection: close`), and a gzip encoder that writes
//! deflate "stored" blocks (no compression) with the CRC-32 and ISIZE trailer.

use super::{find, BIN};
use serde_json::Value;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddr, SocketAddrV4, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// How long a server may take to answer `/healthz` after it is spawned.
pub const READY_TIMEOUT: Duration = Duration::from_secs(10);
/// Connect, read and write timeout of one client request.
pub const IO_TIMEOUT: Duration = Duration::from_secs(10);

// ---- the server process ----

/// A running `mlaudit serve`; killed (SIGKILL) and reaped when dropped unless it has exited.
#[derive(Debug)]
pub struct Server {
    child: Child,
    pub addr: SocketAddr,
    /// The server's stderr, captured to a file for failure messages.
    pub log: PathBuf,
    exited: Option<ExitStatus>,
}

/// Waits until `done`, checking every 50 ms; fails the test after `limit`.
#[track_caller]
pub fn wait_for(what: &str, limit: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A port that was free a moment ago (the listener is closed again at once).
pub fn free_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or_else(|e| panic!("finding a free port: {e}"))
}

impl Server {
    /// Starts `mlaudit --data <data> serve --listen 127.0.0.1:<free port> <extra...>` and waits
    /// (at most [`READY_TIMEOUT`]) until `/healthz` answers 200. If the port was taken in the
    /// meantime the server exits at once; then another port is tried (at most 5 times).
    pub fn start(data: &Path, extra: &[&str]) -> Server {
        Server::start_on(data, None, extra)
    }

    /// As [`Server::start`], on `port` if given (e.g. to restart a server where its clients
    /// expect it; a port still held is retried for a second).
    pub fn start_on(data: &Path, port: Option<u16>, extra: &[&str]) -> Server {
        Server::start_wrapped(data, port, &[], extra)
    }

    /// As [`Server::start_on`], run through `wrapper` (a command that execs the rest, such as
    /// `prlimit --nofile=64`).
    pub fn start_wrapped(
        data: &Path,
        port: Option<u16>,
        wrapper: &[&str],
        extra: &[&str],
    ) -> Server {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        for _attempt in 0..5 {
            let addr = SocketAddr::V4(SocketAddrV4::new(
                Ipv4Addr::LOCALHOST,
                port.unwrap_or_else(free_port),
            ));
            let log = data.with_file_name(format!(
                "serve-{}-{}.stderr",
                addr.port(),
                NEXT.fetch_add(1, Ordering::Relaxed)
            ));
            let stderr = std::fs::File::create(&log)
                .unwrap_or_else(|e| panic!("creating {}: {e}", log.display()));
            let mut cmd = match wrapper.split_first() {
                Some((program, args)) => {
                    let mut c = Command::new(program);
                    c.args(args).arg(BIN);
                    c
                }
                None => Command::new(BIN),
            };
            cmd.arg("--data")
                .arg(data)
                .args(["serve", "--listen", &addr.to_string()])
                .args(extra);
            for var in [
                "MLAUDIT_DATA",
                "MLAUDIT_LISTEN",
                "MLAUDIT_PUBLIC_PROOFS",
                "MLAUDIT_MAX_BODY_BYTES",
                "MLAUDIT_MAX_EVENTS_PER_BATCH",
                "MLAUDIT_TLS_CERT",
                "MLAUDIT_TLS_KEY",
            ] {
                cmd.env_remove(var);
            }
            let child = cmd
                .env("RUST_LOG", "info")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(stderr)
                .spawn()
                .unwrap_or_else(|e| panic!("spawning {BIN} serve: {e}"));
            let mut server = Server {
                child,
                addr,
                log,
                exited: None,
            };
            let deadline = Instant::now() + READY_TIMEOUT;
            loop {
                if let Some(status) = server
                    .child
                    .try_wait()
                    .unwrap_or_else(|e| panic!("polling the server: {e}"))
                {
                    server.exited = Some(status);
                    let stderr = server.stderr();
                    if stderr.contains("cannot listen") {
                        // The port was taken between our probe and the bind: try another (or,
                        // for a fixed port, the same one a moment later).
                        std::thread::sleep(Duration::from_millis(200));
                        break;
                    }
                    panic!("the server exited during startup with {status}:\n{stderr}");
                }
                if let Ok(r) = request_with_timeout(
                    addr,
                    "GET",
                    "/healthz",
                    &[],
                    b"",
                    Duration::from_millis(500),
                ) {
                    if r.status == 200 {
                        return server;
                    }
                }
                if Instant::now() > deadline {
                    panic!(
                        "the server did not answer /healthz within {READY_TIMEOUT:?}:\n{}",
                        server.stderr()
                    );
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        panic!("could not start a server on a free port in 5 attempts");
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Everything the server wrote to stderr so far.
    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Sends SIGTERM with `kill -TERM <pid>`.
    pub fn sigterm(&self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status()
            .unwrap_or_else(|e| panic!("running kill: {e}"));
        assert!(
            status.success(),
            "kill -TERM {} failed: {status}",
            self.pid()
        );
    }

    /// Waits at most `limit` for the server to exit; `None` if it is still running.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + limit;
        loop {
            if self.exited.is_some() {
                return self.exited;
            }
            self.exited = self
                .child
                .try_wait()
                .unwrap_or_else(|e| panic!("polling the server: {e}"));
            if self.exited.is_none() && Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// SIGTERM, then waits at most 10 s for a clean exit (status 0, no panic in its log).
    #[track_caller]
    pub fn stop(mut self) {
        self.sigterm();
        match self.wait_exit(Duration::from_secs(10)) {
            Some(status) => {
                let stderr = self.stderr();
                assert!(
                    status.success(),
                    "the server exited with {status} after SIGTERM:\n{stderr}"
                );
                assert!(
                    !stderr.contains("panicked"),
                    "the server panicked:\n{stderr}"
                );
            }
            None => panic!(
                "the server did not exit within 10 s of SIGTERM:\n{}",
                self.stderr()
            ),
        }
    }

    /// SIGKILL (`Child::kill`), and reaps it.
    pub fn kill9(&mut self) {
        if self.exited.is_none() {
            let _ = self.child.kill();
            self.exited = self.child.wait().ok();
        }
    }

    /// A request to this server.
    pub fn request(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> std::io::Result<Response> {
        request(self.addr, method, path, headers, body)
    }

    /// `tree_size` from `/readyz` (public, and not an audited read, so it changes nothing).
    #[track_caller]
    pub fn tree_size(&self) -> u64 {
        let r = self
            .request("GET", "/readyz", &[], b"")
            .unwrap_or_else(|e| panic!("GET /readyz: {e}\n{}", self.stderr()));
        assert_eq!(r.status, 200, "GET /readyz: {}", r.text());
        r.json()["tree_size"]
            .as_u64()
            .unwrap_or_else(|| panic!("no tree_size in {}", r.text()))
    }

    /// The value of the first sample of metric `name` in `/metrics` (a metric with labels).
    #[track_caller]
    pub fn metric(&self, name: &str) -> f64 {
        let text = self.request("GET", "/metrics", &[], b"").unwrap().text();
        text.lines()
            .find(|l| l.starts_with(&format!("{name}{{")))
            .and_then(|l| l.rsplit(' ').next())
            .unwrap_or_else(|| panic!("no {name} in /metrics:\n{text}"))
            .parse()
            .unwrap()
    }

    /// Asserts that `/healthz` answers 200.
    #[track_caller]
    pub fn assert_healthy(&self) {
        let r = self
            .request("GET", "/healthz", &[], b"")
            .unwrap_or_else(|e| panic!("GET /healthz: {e}\n{}", self.stderr()));
        assert_eq!(r.status, 200, "GET /healthz: {}", r.text());
        assert_eq!(r.json()["status"], "ok");
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill9();
    }
}

// ---- the HTTP/1.1 client ----

/// A response: status, headers in order, and the body (de-chunked).
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    /// The first header of that name (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    #[track_caller]
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "status {}: body is not JSON ({e}): {}",
                self.status,
                self.text()
            )
        })
    }

    pub fn is_success(&self) -> bool {
        (200..300).contains(&self.status)
    }
}

/// One request on a fresh connection with `Connection: close` and a Content-Length body.
pub fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> std::io::Result<Response> {
    request_with_timeout(addr, method, path, headers, body, IO_TIMEOUT)
}

pub fn request_with_timeout(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
    timeout: Duration,
) -> std::io::Result<Response> {
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    if !body.is_empty() || method == "POST" || method == "PUT" {
        head.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    head.push_str("\r\n");
    let mut raw = head.into_bytes();
    raw.extend_from_slice(body);
    exchange(addr, &raw, timeout)
}

/// Connects, writes `raw` (a whole request, framing included), and reads one response.
pub fn exchange(addr: SocketAddr, raw: &[u8], timeout: Duration) -> std::io::Result<Response> {
    let mut s = connect(addr, timeout)?;
    // A server may answer (e.g. 413) and close before reading all of a large body: a failed
    // write is not the end of the exchange as long as the response can still be read.
    let wrote = s.write_all(raw).and_then(|()| s.flush());
    match read_response(&mut s, timeout) {
        Ok(r) => Ok(r),
        Err(e) => Err(wrote.err().unwrap_or(e)),
    }
}

pub fn connect(addr: SocketAddr, timeout: Duration) -> std::io::Result<TcpStream> {
    assert!(addr.ip().is_loopback(), "tests talk to 127.0.0.1 only");
    let s = TcpStream::connect_timeout(&addr, timeout)?;
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    s.set_nodelay(true)?;
    Ok(s)
}

/// Writes raw bytes, half-closes, and returns whatever the server sends back before it closes
/// (bounded by `timeout` per read and by 1 MiB).
pub fn raw_exchange(addr: SocketAddr, raw: &[u8], timeout: Duration) -> std::io::Result<Vec<u8>> {
    let mut s = connect(addr, timeout)?;
    s.write_all(raw)?;
    let _ = s.shutdown(Shutdown::Write);
    let mut out = Vec::new();
    let mut chunk = [0u8; 8192];
    let deadline = Instant::now() + timeout;
    while out.len() < 1 << 20 && Instant::now() < deadline {
        match s.read(&mut chunk) {
            Ok(0) => return Ok(out),
            Ok(n) => out.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return Ok(out),
            Err(e) => return Err(e),
        }
    }
    Err(std::io::Error::new(
        std::io::ErrorKind::TimedOut,
        "the server kept the connection open",
    ))
}

fn bad(why: impl Into<String>) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, why.into())
}

/// Decodes a chunked body; `None` while incomplete.
fn dechunk(mut rest: &[u8]) -> Option<std::io::Result<Vec<u8>>> {
    let mut out = Vec::new();
    for _ in 0..100_000 {
        let eol = find(rest, b"\r\n")?;
        let size_text = String::from_utf8_lossy(&rest[..eol]);
        let Ok(size) = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
        else {
            return Some(Err(bad(format!("bad chunk size {size_text:?}"))));
        };
        rest = &rest[eol + 2..];
        if size == 0 {
            // Trailers (none expected) end with an empty line.
            return find(rest, b"\r\n").map(|_| Ok(out));
        }
        if rest.len() < size + 2 {
            return None;
        }
        out.extend_from_slice(&rest[..size]);
        rest = &rest[size + 2..];
    }
    Some(Err(bad("too many chunks")))
}

/// Reads one response; with `Connection: close` the server closes after it.
pub fn read_response(s: &mut TcpStream, timeout: Duration) -> std::io::Result<Response> {
    let deadline = Instant::now() + timeout;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 16384];
    let mut eof = false;
    loop {
        if let Some(end) = find(&buf, b"\r\n\r\n") {
            let head =
                std::str::from_utf8(&buf[..end]).map_err(|_| bad("response head is not UTF-8"))?;
            let mut lines = head.split("\r\n");
            let status_line = lines.next().unwrap_or("");
            let status = status_line
                .strip_prefix("HTTP/1.1 ")
                .or_else(|| status_line.strip_prefix("HTTP/1.0 "))
                .and_then(|r| r.get(..3))
                .and_then(|c| c.parse::<u16>().ok())
                .ok_or_else(|| bad(format!("bad status line {status_line:?}")))?;
            let headers: Vec<(String, String)> = lines
                .filter_map(|l| l.split_once(':'))
                .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
                .collect();
            let get = |name: &str| {
                headers
                    .iter()
                    .find(|(k, _)| k.eq_ignore_ascii_case(name))
                    .map(|(_, v)| v.clone())
            };
            let rest = &buf[end + 4..];
            let body = if get("transfer-encoding")
                .is_some_and(|v| v.to_ascii_lowercase().contains("chunked"))
            {
                match dechunk(rest) {
                    Some(body) => Some(body?),
                    None if eof => return Err(bad("connection closed inside a chunked body")),
                    None => None,
                }
            } else if let Some(len) = get("content-length") {
                let len: usize = len
                    .parse()
                    .map_err(|_| bad(format!("bad Content-Length {len:?}")))?;
                match rest.len() {
                    n if n >= len => Some(rest[..len].to_vec()),
                    _ if eof => return Err(bad("connection closed inside the body")),
                    _ => None,
                }
            } else if eof {
                Some(rest.to_vec())
            } else {
                None
            };
            if let Some(body) = body {
                return Ok(Response {
                    status,
                    headers,
                    body,
                });
            }
        } else if eof {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                format!(
                    "connection closed after {} bytes, before a whole response head",
                    buf.len()
                ),
            ));
        }
        if Instant::now() > deadline {
            return Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "no whole response in time",
            ));
        }
        match s.read(&mut chunk) {
            Ok(0) => eof = true,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

// ---- gzip with stored deflate blocks ----

/// CRC-32 (IEEE 802.3, reflected, polynomial 0xEDB88320), as gzip uses.
pub fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in bytes {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// A gzip member (RFC 1952) whose deflate stream (RFC 1951) is stored blocks of at most
/// `block` bytes (1..=65535), so the output is a little larger than the input.
pub fn gzip_stored(data: &[u8], block: usize) -> Vec<u8> {
    assert!((1..=65535).contains(&block));
    // ID1 ID2 CM=deflate FLG=0 MTIME=0 XFL=0 OS=255 (unknown)
    let mut out = vec![0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 255];
    let mut chunks: Vec<&[u8]> = data.chunks(block).collect();
    if chunks.is_empty() {
        chunks.push(&[]);
    }
    let last = chunks.len() - 1;
    for (i, c) in chunks.iter().enumerate() {
        // BFINAL in bit 0, BTYPE=00 (stored) in bits 1-2; the rest of the byte is padding.
        out.push(u8::from(i == last));
        let len = u16::try_from(c.len()).expect("block <= 65535");
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(&(!len).to_le_bytes());
        out.extend_from_slice(c);
    }
    out.extend_from_slice(&crc32(data).to_le_bytes());
    out.extend_from_slice(&((data.len() & 0xffff_ffff) as u32).to_le_bytes());
    out
}
