//! `mlaudit serve`: the HTTP API over the embedded store, with structured logs and a graceful
//! shutdown on SIGINT/SIGTERM that finishes in-flight requests and closes the store cleanly.

use crate::ledger::{self, InputError};
use anyhow::{Context, Result};
use mlaudit_server::auth::Tokens;
use mlaudit_server::{AppState, Limits};
use serde::Deserialize;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

/// Flags of `mlaudit serve`. Each setting comes from the flag, else the environment variable,
/// else the config file, else the default.
#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// Address to listen on [env: MLAUDIT_LISTEN; config: listen; default: 127.0.0.1:8080]
    #[arg(long)]
    listen: Option<String>,
    /// TOML config file
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Serve without authentication: every request acts as one anonymous principal with every
    /// right. For local trials only.
    #[arg(long)]
    danger_no_auth: bool,
    /// PEM certificate chain for TLS [env: MLAUDIT_TLS_CERT; config: tls_cert]
    #[arg(long, value_name = "FILE")]
    tls_cert: Option<PathBuf>,
    /// PEM private key for TLS [env: MLAUDIT_TLS_KEY; config: tls_key]
    #[arg(long, value_name = "FILE")]
    tls_key: Option<PathBuf>,
}

/// The config file (all optional).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    listen: Option<String>,
    /// Checkpoints, verifier key and proofs without a token (default true).
    public_proofs: Option<bool>,
    max_body_bytes: Option<u64>,
    max_events_per_batch: Option<usize>,
    tls_cert: Option<PathBuf>,
    tls_key: Option<PathBuf>,
}

/// The resolved settings.
#[derive(Debug)]
struct Settings {
    listen: String,
    public_proofs: bool,
    limits: Limits,
    /// (certificate, key) PEM files.
    tls: Option<(PathBuf, PathBuf)>,
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

fn env_parse<T: std::str::FromStr>(name: &str) -> Result<Option<T>> {
    env(name)
        .map(|v| {
            v.parse::<T>()
                .map_err(|_| InputError(format!("{name}={v:?} is not valid")).into())
        })
        .transpose()
}

fn resolve(args: &ServeArgs) -> Result<Settings> {
    let file: FileConfig = match &args.config {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .map_err(|e| InputError(format!("cannot read {}: {e}", path.display())))?;
            toml::from_str(&text).map_err(|e| InputError(format!("{}: {e}", path.display())))?
        }
        None => FileConfig::default(),
    };
    let defaults = Limits::default();
    let tls_cert = args
        .tls_cert
        .clone()
        .or_else(|| env("MLAUDIT_TLS_CERT").map(PathBuf::from))
        .or(file.tls_cert);
    let tls_key = args
        .tls_key
        .clone()
        .or_else(|| env("MLAUDIT_TLS_KEY").map(PathBuf::from))
        .or(file.tls_key);
    let tls = match (tls_cert, tls_key) {
        (Some(c), Some(k)) => Some((c, k)),
        (None, None) => None,
        _ => {
            return Err(InputError(
                "TLS needs both a certificate (tls_cert) and a private key (tls_key)".into(),
            )
            .into())
        }
    };
    Ok(Settings {
        tls,
        listen: args
            .listen
            .clone()
            .or_else(|| env("MLAUDIT_LISTEN"))
            .or(file.listen)
            .unwrap_or_else(|| "127.0.0.1:8080".into()),
        public_proofs: env_parse("MLAUDIT_PUBLIC_PROOFS")?
            .or(file.public_proofs)
            .unwrap_or(true),
        limits: Limits {
            max_body_bytes: env_parse("MLAUDIT_MAX_BODY_BYTES")?
                .or(file.max_body_bytes)
                .unwrap_or(defaults.max_body_bytes),
            max_events_per_batch: env_parse("MLAUDIT_MAX_EVENTS_PER_BATCH")?
                .or(file.max_events_per_batch)
                .unwrap_or(defaults.max_events_per_batch),
        },
    })
}

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

pub fn run(data: &Path, args: ServeArgs) -> Result<()> {
    let settings = resolve(&args)?;
    let listen = settings.listen.as_str();
    let tokens = if args.danger_no_auth {
        None
    } else {
        let path = crate::token::tokens_path(data);
        let tokens = Tokens::load(&path)?;
        if tokens.list().iter().all(|t| t.revoked.is_some()) {
            eprintln!("mlaudit: no active token yet: create one with `mlaudit token create --role writer --name NAME` (or serve with --danger-no-auth for a local trial)");
        }
        Some(Arc::new(RwLock::new(tokens)))
    };
    let danger_no_auth = args.danger_no_auth;
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .try_init();
    let verifier = ledger::signer(data)?.verifier();
    let store = Arc::new(ledger::open(data)?);
    let state = AppState {
        store: store.clone(),
        verifier,
        limits: settings.limits,
        tokens,
        public_proofs: settings.public_proofs,
        metrics: Default::default(),
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind(listen).await.map_err(|e| InputError(format!("cannot listen on {listen}: {e}")))?;
        let addr = listener.local_addr()?;
        if danger_no_auth {
            tracing::warn!("authentication is OFF (--danger-no-auth): anyone who can reach {addr} can read and write this log");
        }
        tracing::info!(%addr, data = %data.display(), "mlaudit serving");
        match &settings.tls {
            Some((cert, key)) => {
                let config = mlaudit_server::tls::load_config(cert, key).map_err(|e| InputError(e.to_string()))?;
                eprintln!("mlaudit: listening on https://{addr}");
                mlaudit_server::tls::serve_tls(listener, state, config, shutdown_signal()).await.context("serving")?;
            }
            None => {
                eprintln!("mlaudit: listening on http://{addr}");
                mlaudit_server::serve(listener, state, shutdown_signal()).await.context("serving")?;
            }
        }
        anyhow::Ok(())
    })?;
    store.close()?;
    Ok(())
}
