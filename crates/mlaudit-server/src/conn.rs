//! Connections: the accept loop and what bounds each connection, for plain HTTP and TLS alike.
//!
//! * At most [`ConnConfig::max_connections`] connections at once: beyond that the loop stops
//!   accepting (new clients wait in the kernel's backlog) until one closes.
//! * An accept that fails for lack of descriptors or memory (`EMFILE`, `ENFILE`, `ENOBUFS`,
//!   `ENOMEM`) backs off, doubling from 10 ms to 1 s, instead of spinning on the error.
//! * A TLS handshake must finish within [`ConnConfig::tls_handshake_timeout`]; request headers
//!   within [`ConnConfig::header_read_timeout`] (HTTP/1); a connection with no traffic for
//!   [`ConnConfig::idle_timeout`] is closed (gracefully: a request in flight is answered). Each
//!   request and its body are bounded by the router's own timeouts ([`crate::Limits`]).
//! * On shutdown the loop stops accepting, handshakes in progress are dropped at once, open
//!   connections finish their requests and close, and after
//!   [`ConnConfig::shutdown_grace`] whatever is left is cut.
//!
//! Every request carries the client's address ([`ClientAddr`]) for the audit record.

use crate::metrics::{ConnEvent, Metrics};
use crate::{router, AppState, ClientAddr};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::service::TowerToHyperService;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;
use tokio_rustls::rustls::ServerConfig;

/// How connections are bounded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnConfig {
    /// Most connections open at once.
    pub max_connections: usize,
    /// Longest an HTTP/1 request's headers may take to arrive.
    pub header_read_timeout: Duration,
    /// A connection with no traffic this long is closed.
    pub idle_timeout: Duration,
    /// Longest a TLS handshake may take.
    pub tls_handshake_timeout: Duration,
    /// After a shutdown signal, how long open connections get to finish.
    pub shutdown_grace: Duration,
}

impl Default for ConnConfig {
    fn default() -> ConnConfig {
        ConnConfig {
            max_connections: 1024,
            header_read_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(120),
            tls_handshake_timeout: Duration::from_secs(10),
            shutdown_grace: Duration::from_secs(30),
        }
    }
}

/// Longest and shortest pause after an accept that failed for lack of resources.
const BACKOFF_MIN: Duration = Duration::from_millis(10);
const BACKOFF_MAX: Duration = Duration::from_secs(1);

/// Whether an accept error means the process is out of descriptors or memory (Linux codes:
/// `ENOMEM`, `ENFILE`, `EMFILE`, `ENOBUFS`): retrying at once would spin.
fn out_of_resources(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(12 | 23 | 24 | 105))
}

/// Serves the API on `listener` (over TLS when `tls` is given) until `shutdown` resolves, then
/// lets open connections finish within the grace period.
/// Aborts a background task when the server stops.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

pub async fn serve(
    listener: TcpListener,
    state: AppState,
    config: ConnConfig,
    tls: Option<Arc<ServerConfig>>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    let metrics = state.metrics.clone();
    // Writes the inference halves whose partners never came; stops with the server.
    let sweeper = tokio::spawn(crate::integrations::cloudevents::sweep(state.clone()));
    let _sweeper = AbortOnDrop(sweeper);
    let app = router(state);
    let slots = Arc::new(Semaphore::new(config.max_connections.max(1)));
    let (stop, stopped) = watch::channel(false);
    let mut open = JoinSet::new();
    let mut backoff = Duration::ZERO;
    let mut last_warning: Option<Instant> = None;
    tokio::pin!(shutdown);
    loop {
        let permit = tokio::select! {
            permit = slots.clone().acquire_owned() => permit.map_err(io::Error::other)?,
            () = &mut shutdown => break,
        };
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = &mut shutdown => break,
        };
        while open.try_join_next().is_some() {}
        let (tcp, peer) = match accepted {
            Ok(conn) => {
                backoff = Duration::ZERO;
                conn
            }
            Err(e) if out_of_resources(&e) => {
                metrics.connection(ConnEvent::AcceptBackoff);
                if last_warning.is_none_or(|t| t.elapsed() >= Duration::from_secs(10)) {
                    tracing::warn!(error = %e, "cannot accept connections: out of descriptors or memory; backing off");
                    last_warning = Some(Instant::now());
                }
                backoff = (backoff * 2).clamp(BACKOFF_MIN, BACKOFF_MAX);
                tokio::select! {
                    () = tokio::time::sleep(backoff) => continue,
                    () = &mut shutdown => break,
                }
            }
            Err(e) => {
                tracing::debug!(error = %e, "accept failed");
                continue;
            }
        };
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "cannot set TCP_NODELAY on a connection");
        }
        let conn = Conn {
            peer,
            app: app.clone(),
            config,
            stopped: stopped.clone(),
            metrics: metrics.clone(),
        };
        let tls = tls.clone();
        open.spawn(async move {
            let _slot = permit;
            conn.run(tcp, tls).await;
        });
    }
    drop(listener);
    let _ = stop.send(true);
    let grace = tokio::time::sleep(config.shutdown_grace);
    tokio::pin!(grace);
    loop {
        tokio::select! {
            next = open.join_next() => if next.is_none() { break },
            () = &mut grace => {
                tracing::warn!(connections = open.len(), "shutdown grace period over: closing the connections left");
                open.abort_all();
                break;
            }
        }
    }
    Ok(())
}

/// One accepted connection.
struct Conn {
    peer: SocketAddr,
    app: axum::Router,
    config: ConnConfig,
    stopped: watch::Receiver<bool>,
    metrics: Arc<Metrics>,
}

impl Conn {
    async fn run(mut self, tcp: TcpStream, tls: Option<Arc<ServerConfig>>) {
        let activity = Arc::new(Activity::new());
        let io = Tracked {
            inner: tcp,
            activity: activity.clone(),
        };
        let Some(tls) = tls else {
            return self.serve(TokioIo::new(io), activity).await;
        };
        let acceptor = tokio_rustls::TlsAcceptor::from(tls);
        let handshake =
            tokio::time::timeout(self.config.tls_handshake_timeout, acceptor.accept(io));
        let stream = tokio::select! {
            done = handshake => match done {
                Ok(Ok(stream)) => stream,
                Ok(Err(e)) => {
                    tracing::debug!(peer = %self.peer, error = %e, "TLS handshake failed");
                    return;
                }
                Err(_) => {
                    self.metrics.connection(ConnEvent::HandshakeTimeout);
                    tracing::debug!(peer = %self.peer, "TLS handshake timed out");
                    return;
                }
            },
            _ = self.stopped.wait_for(|stop| *stop) => return,
        };
        self.serve(TokioIo::new(stream), activity).await;
    }

    /// Serves HTTP/1.1 or HTTP/2 on `io` until the client closes, it idles out, or shutdown.
    async fn serve<I>(mut self, io: TokioIo<I>, activity: Arc<Activity>)
    where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let peer = self.peer;
        let app = tower::ServiceExt::map_request(
            self.app.clone(),
            move |mut req: axum::http::Request<hyper::body::Incoming>| {
                req.extensions_mut().insert(ClientAddr(peer));
                req
            },
        );
        let mut builder = Builder::new(TokioExecutor::new());
        builder
            .http1()
            .timer(TokioTimer::new())
            .header_read_timeout(self.config.header_read_timeout);
        builder
            .http2()
            .timer(TokioTimer::new())
            .keep_alive_interval(Some(self.config.idle_timeout / 2))
            .keep_alive_timeout(Duration::from_secs(20));
        let conn = builder.serve_connection(io, TowerToHyperService::new(app));
        tokio::pin!(conn);
        let idle = self.config.idle_timeout;
        let mut closing = false;
        loop {
            let quiet_since = activity.last();
            tokio::select! {
                done = conn.as_mut() => {
                    if let Err(e) = done {
                        tracing::debug!(%peer, error = %e, "connection ended with an error");
                    }
                    return;
                }
                _ = self.stopped.wait_for(|stop| *stop), if !closing => {
                    closing = true;
                    conn.as_mut().graceful_shutdown();
                }
                () = tokio::time::sleep_until((quiet_since + idle).into()) => {
                    if activity.last() > quiet_since {
                        continue;
                    }
                    if closing {
                        // Still there an idle period after being asked to close: cut it.
                        return;
                    }
                    self.metrics.connection(ConnEvent::IdleTimeout);
                    closing = true;
                    conn.as_mut().graceful_shutdown();
                }
            }
        }
    }
}

/// When a connection last moved bytes either way.
#[derive(Debug)]
struct Activity {
    start: Instant,
    /// Milliseconds after `start`.
    last_ms: AtomicU64,
}

impl Activity {
    fn new() -> Activity {
        Activity {
            start: Instant::now(),
            last_ms: AtomicU64::new(0),
        }
    }

    fn touch(&self) {
        let ms = u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_ms.store(ms, Ordering::Relaxed);
    }

    fn last(&self) -> Instant {
        self.start + Duration::from_millis(self.last_ms.load(Ordering::Relaxed))
    }
}

/// A stream that notes its traffic in an [`Activity`].
struct Tracked<S> {
    inner: S,
    activity: Arc<Activity>,
}

impl<S: AsyncRead + Unpin> AsyncRead for Tracked<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.activity.touch();
        }
        polled
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Tracked<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, buf);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        polled
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}
