//! The connection layer over real sockets ([`mlaudit_server::conn`]): headers that do not
//! arrive, idle connections and stalled TLS handshakes are closed (and counted); no more than
//! the configured number of connections are served at once; a shutdown ends the server within
//! its grace period whatever the open connections do; and every request carries the client's
//! real address into the audit record.
//!
//! The timeouts here are a few hundred milliseconds; each check waits up to several seconds
//! for the server to act, so that a slow machine cannot fail them.

#![allow(
    clippy::unwrap_used,
    reason = "a test fails loudly on any unexpected error"
)]

mod common;

use common::*;
use mlaudit_server::conn::{serve, ConnConfig};
use mlaudit_server::{AppState, Limits};
use mlaudit_store::prelude::*;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The longest any check waits for the server to act.
const PATIENCE: Duration = Duration::from_secs(10);

fn quick() -> ConnConfig {
    ConnConfig {
        max_connections: 64,
        header_read_timeout: Duration::from_millis(300),
        idle_timeout: Duration::from_millis(300),
        tls_handshake_timeout: Duration::from_millis(300),
        shutdown_grace: Duration::from_secs(2),
    }
}

fn tls_config() -> Arc<tokio_rustls::rustls::ServerConfig> {
    mlaudit_server::tls::load_config(&tls_fixture("cert.pem"), &tls_fixture("key.pem")).unwrap()
}

/// A server on a free port; the sender stops it, the handle says when it returned.
async fn start(
    state: AppState,
    config: ConnConfig,
    tls: bool,
) -> (
    SocketAddr,
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<std::io::Result<()>>,
) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let tls = tls.then(tls_config);
    let handle = tokio::spawn(serve(listener, state, config, tls, async move {
        let _ = stopped.await;
    }));
    (addr, stop, handle)
}

/// Reads until the server closes the connection; `None` if it is still open after `PATIENCE`.
async fn closed_by_server(mut s: TcpStream) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    match tokio::time::timeout(PATIENCE, s.read_to_end(&mut out)).await {
        Ok(_) => Some(out),
        Err(_) => None,
    }
}

fn metric(f: &Fixture, event: &str) -> u64 {
    let text = mlaudit_server::metrics::render(&f.state);
    let prefix = format!("mlaudit_connection_events_total{{event=\"{event}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(prefix.as_str()))
        .unwrap()
        .parse()
        .unwrap()
}

#[tokio::test]
async fn headers_that_never_finish_and_idle_connections_are_closed() {
    let f = fixture("conn-timeouts", Limits::default());
    let (addr, stop, handle) = start(f.state.clone(), quick(), false).await;
    // Half a request line, then nothing.
    let mut slow = TcpStream::connect(addr).await.unwrap();
    slow.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    assert!(
        closed_by_server(slow).await.is_some(),
        "headers that never finish"
    );
    // Nothing at all.
    let idle = TcpStream::connect(addr).await.unwrap();
    assert!(closed_by_server(idle).await.is_some(), "an idle connection");
    // A kept-alive connection that answered once, then idles.
    let mut used = TcpStream::connect(addr).await.unwrap();
    used.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let answered = closed_by_server(used).await.unwrap();
    assert!(String::from_utf8_lossy(&answered).starts_with("HTTP/1.1 200"));
    assert!(metric(&f, "idle_timeout") >= 1);
    stop.send(()).unwrap();
    handle.await.unwrap().unwrap();
}

#[tokio::test]
async fn a_stalled_tls_handshake_is_dropped() {
    let f = fixture("conn-tls", Limits::default());
    let (addr, stop, handle) = start(f.state.clone(), quick(), true).await;
    let silent = TcpStream::connect(addr).await.unwrap();
    assert!(closed_by_server(silent).await.is_some());
    assert_eq!(metric(&f, "tls_handshake_timeout"), 1);
    stop.send(()).unwrap();
    handle.await.unwrap().unwrap();
}

#[tokio::test]
async fn no_more_connections_than_the_cap_are_served_at_once() {
    let f = fixture("conn-cap", Limits::default());
    let config = ConnConfig {
        max_connections: 2,
        idle_timeout: Duration::from_secs(30),
        header_read_timeout: Duration::from_secs(30),
        ..quick()
    };
    let (addr, stop, handle) = start(f.state.clone(), config, false).await;
    let request = b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut s = TcpStream::connect(addr).await.unwrap();
        // Served: these hold the two slots (headers started, never finished).
        s.write_all(b"GET /healthz HTTP/1.1\r\n").await.unwrap();
        held.push(s);
    }
    let mut third = TcpStream::connect(addr).await.unwrap(); // the kernel's backlog accepts it
    third.write_all(request).await.unwrap();
    let mut buf = [0u8; 64];
    let early = tokio::time::timeout(Duration::from_millis(500), third.read(&mut buf)).await;
    assert!(early.is_err(), "a third connection was served beside two");
    drop(held.pop());
    let answer = closed_by_server(third).await.unwrap();
    assert!(String::from_utf8_lossy(&answer).starts_with("HTTP/1.1 200"));
    stop.send(()).unwrap();
    handle.await.unwrap().unwrap();
}

#[tokio::test]
async fn shutdown_ends_within_the_grace_period_whatever_connections_do() {
    let f = fixture("conn-shutdown", Limits::default());
    let config = ConnConfig {
        tls_handshake_timeout: Duration::from_secs(600),
        header_read_timeout: Duration::from_secs(600),
        idle_timeout: Duration::from_secs(600),
        ..quick()
    };
    let (addr, stop, handle) = start(f.state.clone(), config, true).await;
    // Stalled handshakes, and one that finished but sends half a request.
    let mut stalled = Vec::new();
    for _ in 0..3 {
        stalled.push(TcpStream::connect(addr).await.unwrap());
    }
    // A later connection served end to end: the server took the stalled ones before it.
    let tcp = TcpStream::connect(addr).await.unwrap();
    let name = tokio_rustls::rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let mut tls = client().connect(name, tcp).await.unwrap();
    tls.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    tls.read_to_end(&mut answer).await.unwrap();
    assert!(String::from_utf8_lossy(&answer).starts_with("HTTP/1.1 200"));
    let started = Instant::now();
    stop.send(()).unwrap();
    tokio::time::timeout(PATIENCE, handle)
        .await
        .expect("the server is still running after its grace period")
        .unwrap()
        .unwrap();
    assert!(started.elapsed() < PATIENCE);
    drop(stalled);
}

#[tokio::test]
async fn the_audit_record_names_the_real_client_address() {
    let f = fixture("conn-client", Limits::default());
    let (addr, stop, handle) = start(f.state.clone(), quick(), false).await;
    let mut s = TcpStream::connect(addr).await.unwrap();
    let local = s.local_addr().unwrap();
    let req = format!(
        "GET /v1/events HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\nConnection: close\r\n\r\n",
        f.reader
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let answer = closed_by_server(s).await.unwrap();
    assert!(String::from_utf8_lossy(&answer).starts_with("HTTP/1.1 200"));
    let seqs = f
        .store
        .query(&mlaudit_store::Query {
            kind: Some("governance.audit_accessed".into()),
            limit: 10,
            ..Default::default()
        })
        .unwrap();
    let a = mlaudit_store::view::event_json(&*f.store, seqs[0]).unwrap();
    assert_eq!(a["event"]["attributes"]["client"], local.to_string());
    stop.send(()).unwrap();
    handle.await.unwrap().unwrap();
}
