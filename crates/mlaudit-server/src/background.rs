//! Running the API on its own thread and runtime, for programs that are not async themselves
//! (`mlaudit demo`, the benchmarks, tests): bind a loopback port, serve, stop on request.

use crate::{serve, AppState};
use std::net::SocketAddr;
use std::thread::JoinHandle;

/// A server running on a background thread until [`BackgroundServer::stop`] or drop.
#[derive(Debug)]
pub struct BackgroundServer {
    addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<JoinHandle<std::io::Result<()>>>,
}

impl BackgroundServer {
    /// Binds `listen` (e.g. `127.0.0.1:0` for a free port) and serves `state` with two workers.
    pub fn start(listen: &str, state: AppState) -> std::io::Result<BackgroundServer> {
        let listener = std::net::TcpListener::bind(listen)?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("mlaudit-http".into())
            .spawn(move || -> std::io::Result<()> {
                let rt = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .enable_all()
                    .build()?;
                rt.block_on(async move {
                    let listener = tokio::net::TcpListener::from_std(listener)?;
                    serve(listener, state, async move {
                        let _ = stopped.await;
                    })
                    .await
                })
            })?;
        Ok(BackgroundServer {
            addr,
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops accepting, finishes in-flight requests and waits for the thread.
    pub fn stop(mut self) -> std::io::Result<()> {
        self.shutdown()
    }

    fn shutdown(&mut self) -> std::io::Result<()> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        match self.thread.take() {
            Some(t) => t
                .join()
                .map_err(|_| std::io::Error::other("the server thread panicked"))?,
            None => Ok(()),
        }
    }
}

impl Drop for BackgroundServer {
    fn drop(&mut self) {
        let _ = self.shutdown();
    }
}
