//! `mlaudit serve`: the HTTP API over the embedded store, with structured logs and a graceful
//! shutdown on SIGINT/SIGTERM that finishes in-flight requests and closes the store cleanly.

use crate::ledger::{self, InputError};
use anyhow::{Context, Result};
use mlaudit_server::{AppState, Limits};
use std::path::Path;
use std::sync::Arc;

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
    tracing::info!("shutting down: finishing in-flight requests");
}

pub fn run(data: &Path, listen: &str, danger_no_auth: bool) -> Result<()> {
    if !danger_no_auth {
        return Err(InputError(
            "bearer-token authentication is not implemented yet; run `mlaudit serve --danger-no-auth` for local trials only".into(),
        )
        .into());
    }
    let _ = tracing_subscriber::fmt().with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into())).with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr())).with_writer(std::io::stderr).try_init();
    let verifier = ledger::signer(data)?.verifier();
    let store = Arc::new(ledger::open(data)?);
    let state = AppState { store: store.clone(), verifier, limits: Limits::default(), principal: "anonymous (danger-no-auth)".into() };
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().context("starting the async runtime")?;
    runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind(listen).await.map_err(|e| InputError(format!("cannot listen on {listen}: {e}")))?;
        let addr = listener.local_addr()?;
        tracing::warn!("authentication is OFF (--danger-no-auth): anyone who can reach {addr} can read and write this log");
        tracing::info!(%addr, data = %data.display(), "mlaudit serving");
        eprintln!("mlaudit: listening on http://{addr}");
        mlaudit_server::serve(listener, state, shutdown_signal()).await.context("serving")?;
        anyhow::Ok(())
    })?;
    store.close()?;
    Ok(())
}
