//! The logger against servers that misbehave (fake ones on loopback): a redirect is not a
//! delivery, a server that never answers does not hold `close()` past its deadline, and an
//! event whose time cannot be stored is rejected by `log()` instead of panicking.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test fails loudly on any unexpected error"
)]

use mlaudit_client::{Actor, AuditLogger, Builder, Event, FlushError};
use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::Arc;
use std::time::{Duration, Instant, UNIX_EPOCH};

struct Dir(PathBuf);
impl Dir {
    fn new(name: &str) -> Dir {
        let p = std::env::temp_dir().join(format!(
            "mlaudit-client-faults-{}-{name}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&p);
        Dir(p)
    }
}
impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A fake server on a free port, and how many POST requests (batches) it has received.
struct Fake {
    url: String,
    requests: Arc<AtomicUsize>,
}

impl Fake {
    /// Waits until the server has received `n` requests, for at most 30 s.
    fn wait_for_requests(&self, n: usize) {
        wait_until(&format!("the server to receive {n} requests"), || {
            self.requests.load(SeqCst) >= n
        });
    }
}

/// Polls `done` every few milliseconds until it holds; fails the test after 30 s.
fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// A server that answers every request with `answer`, or, if `None`, reads requests and never
/// answers, holding each connection open until the client closes it. A POST is counted when
/// its first bytes arrive.
fn fake_server(answer: Option<&'static str>) -> Fake {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let requests = Arc::new(AtomicUsize::new(0));
    let counter = requests.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut s) = stream else { continue };
            let counter = counter.clone();
            std::thread::spawn(move || {
                let mut buf = [0u8; 65536];
                if answer.is_some() {
                    let _ = s.set_read_timeout(Some(Duration::from_millis(200)));
                }
                // Without an answer, a read blocks until the client sends more or closes.
                while let Ok(n) = s.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    if buf[..n].starts_with(b"POST ") {
                        counter.fetch_add(1, SeqCst);
                    }
                    if let Some(a) = answer {
                        let _ = s.write_all(a.as_bytes());
                    }
                }
            });
        }
    });
    Fake { url, requests }
}

fn logger(url: &str, dir: &Dir) -> Builder {
    AuditLogger::builder(url, "t", Actor::service("faults"))
        .spool_dir(&dir.0)
        .linger(Duration::from_millis(5))
        .retries(2, Duration::from_millis(5), Duration::from_millis(20))
        .timeout(Duration::from_secs(30))
}

/// Waits (30 s at most) until `l` holds `events` on its spool and the server has refused at
/// least two more requests since, then checks that a flush reports everything durable and
/// nothing delivered. A flush is answered `Durable` once the sender has handled its marker; it
/// is repeated, each with a short timeout, until that has happened.
fn assert_spooled_not_delivered(l: &AuditLogger, server: &Fake, events: u64) {
    wait_until(&format!("{events} events on the spool"), || {
        l.stats().spooled >= events
    });
    let seen = server.requests.load(SeqCst);
    server.wait_for_requests(seen + 2);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match l.flush(Duration::from_millis(200)) {
            Err(FlushError::Timeout { durable: true }) => break,
            Err(FlushError::Timeout { durable: false }) if Instant::now() < deadline => {}
            other => panic!("flush answered {other:?}; stats {:?}", l.stats()),
        }
    }
    assert_eq!(l.stats().sent, 0, "{:?}", l.stats());
}

#[test]
fn a_redirect_is_not_a_delivery() {
    let server = fake_server(Some("HTTP/1.1 307 Temporary Redirect\r\nLocation: http://127.0.0.1:9/\r\nContent-Length: 0\r\n\r\n"));
    let dir = Dir::new("redirect");
    let l = logger(&server.url, &dir).start().unwrap();
    for n in 0..10 {
        l.log(Event::custom("a").attribute("n", n));
    }
    assert_spooled_not_delivered(&l, &server, 10);
    let stats = l.close(Duration::from_millis(50));
    assert_eq!(
        (stats.sent, stats.spooled, stats.dropped),
        (0, 10, 0),
        "{stats:?}"
    );
}

#[test]
fn a_200_that_does_not_acknowledge_the_batch_is_not_a_delivery() {
    let server = fake_server(Some(
        "HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: 13\r\n\r\n<html></html>",
    ));
    let dir = Dir::new("not-ours");
    let l = logger(&server.url, &dir).start().unwrap();
    l.log(Event::custom("a"));
    assert_spooled_not_delivered(&l, &server, 1);
    let stats = l.close(Duration::from_millis(50));
    assert_eq!((stats.sent, stats.spooled), (0, 1), "{stats:?}");
}

#[test]
fn a_server_that_never_answers_does_not_hold_close_past_its_deadline() {
    let server = fake_server(None);
    let dir = Dir::new("silent");
    let l = logger(&server.url, &dir)
        .timeout(Duration::from_secs(3))
        .retries(5, Duration::from_millis(5), Duration::from_millis(20))
        .start()
        .unwrap();
    for n in 0..5 {
        l.log(Event::custom("a").attribute("n", n));
    }
    // The batch is in flight once the server has its request.
    server.wait_for_requests(1);
    let started = Instant::now();
    let stats = l.close(Duration::from_millis(300));
    // A request in flight runs to its own timeout (3 s); after it no attempt starts past
    // the deadline, where before close waited for all 5 attempts (15 s and more). A loose
    // bound: it fails only if close kept retrying.
    assert!(
        started.elapsed() < Duration::from_secs(9),
        "close took {:?}",
        started.elapsed()
    );
    assert_eq!(
        (stats.sent, stats.spooled, stats.dropped),
        (0, 5, 0),
        "{stats:?}"
    );
}

#[test]
fn an_event_time_the_log_cannot_store_is_rejected_not_a_panic() {
    let server = fake_server(None);
    let dir = Dir::new("time");
    let l = logger(&server.url, &dir).queue_capacity(1).start().unwrap();
    l.log(Event::custom("far").time(UNIX_EPOCH + Duration::from_secs(1 << 40)));
    l.log(Event::custom("before").time(UNIX_EPOCH - Duration::from_secs(1 << 40)));
    assert_eq!(l.stats().rejected, 2);
    let stats = l.close(Duration::from_millis(50));
    assert_eq!(stats.spooled + stats.sent, 0, "{stats:?}");
}
