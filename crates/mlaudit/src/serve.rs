//! `mlaudit serve`: the HTTP API over the embedded store, with structured logs and a graceful
//! shutdown on SIGINT/SIGTERM that finishes in-flight requests and closes the store cleanly.

use crate::ledger::{self, InputError};
use anyhow::{Context, Result};
use mlaudit_integrations::sampling::SamplePolicy;
use mlaudit_server::conn::ConnConfig;
use mlaudit_server::integrations::{
    join::Joiner, CloudEventsConfig, Integrations, IntegrationsConfig, MlflowConfig,
};
use mlaudit_server::ratelimit::RateLimiter;
use mlaudit_server::{AppState, Limits};
use serde::Deserialize;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

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
    /// The log's signing key file, instead of the data directory's `key/signing.key`: every
    /// server of one log in PostgreSQL is given the same key [config: key]
    #[arg(long, value_name = "FILE")]
    key: Option<PathBuf>,
    /// Consume events from a queue: `nats://HOST:PORT/STREAM[?consumer=NAME&subject=S]` or
    /// `kafka://HOST:PORT/TOPIC[?group=NAME]` (with the `kafka` feature). Repeatable; given
    /// here, it replaces the config file's list [config: ingest]
    #[arg(long, value_name = "URL")]
    ingest: Vec<String>,
}

/// The config file (all optional).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    listen: Option<String>,
    /// `postgres://…` to keep the log in PostgreSQL (`--store` and `MLAUDIT_STORE` win).
    store: Option<String>,
    /// The signing key file (`--key` wins).
    key: Option<PathBuf>,
    /// Checkpoints, verifier key and hash-only proofs without a token (default true).
    public_proofs: Option<bool>,
    max_body_bytes: Option<u64>,
    max_events_per_batch: Option<usize>,
    tls_cert: Option<PathBuf>,
    tls_key: Option<PathBuf>,
    max_connections: Option<usize>,
    request_timeout_s: Option<u64>,
    body_read_timeout_s: Option<u64>,
    header_read_timeout_s: Option<u64>,
    idle_timeout_s: Option<u64>,
    tls_handshake_timeout_s: Option<u64>,
    shutdown_grace_s: Option<u64>,
    rate_limit_per_second: Option<u32>,
    rate_limit_burst: Option<u32>,
    index_cache_mib: Option<u64>,
    integrations: Option<IntegrationsFile>,
    retention: Option<crate::retention::policy::RetentionFile>,
    /// Queue sources (`--ingest` wins).
    ingest: Option<Vec<String>>,
    /// Most queue messages stored in one append (default 1000).
    ingest_batch: Option<usize>,
}

/// `[integrations]` of the config file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct IntegrationsFile {
    mlflow: Option<MlflowFile>,
    cloudevents: Option<CloudEventsFile>,
    openlineage: Option<OpenLineageFile>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct MlflowFile {
    webhook_secret: Option<String>,
    tracking_uri: Option<String>,
    tracking_token: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct CloudEventsFile {
    query_token: Option<bool>,
    default_version: Option<String>,
    join_timeout_s: Option<u64>,
    max_pending: Option<usize>,
    max_pending_mib: Option<u64>,
    default_sample_rate: Option<f64>,
    sample_rates: Option<std::collections::BTreeMap<String, f64>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct OpenLineageFile {
    training_jobs: Option<Vec<String>>,
}

fn check_rate(what: &str, rate: f64) -> Result<f64> {
    if rate > 0.0 && rate <= 1.0 {
        Ok(rate)
    } else {
        Err(InputError(format!(
            "{what}: a sample rate must be in (0, 1], not {rate}"
        ))
        .into())
    }
}

/// The integrations' settings: the config file's `[integrations]`, with the MLflow secret
/// from `MLAUDIT_MLFLOW_WEBHOOK_SECRET` when set.
fn integrations(file: Option<IntegrationsFile>) -> Result<IntegrationsConfig> {
    let file = file.unwrap_or_default();
    let mlflow = file.mlflow.unwrap_or_default();
    let ce = file.cloudevents.unwrap_or_default();
    let defaults = CloudEventsConfig::default();
    let mut rates = std::collections::BTreeMap::new();
    for (model, rate) in ce.sample_rates.unwrap_or_default() {
        let rate = check_rate(
            &format!("integrations.cloudevents.sample_rates.{model}"),
            rate,
        )?;
        rates.insert(model, rate);
    }
    let secret = env("MLAUDIT_MLFLOW_WEBHOOK_SECRET").or(mlflow.webhook_secret);
    if secret.as_deref().is_some_and(|s| s.len() < 16) {
        return Err(
            InputError("the MLflow webhook secret must be at least 16 characters".into()).into(),
        );
    }
    Ok(IntegrationsConfig {
        mlflow: MlflowConfig {
            webhook_secret: secret,
            tracking_uri: env("MLAUDIT_MLFLOW_TRACKING_URI").or(mlflow.tracking_uri),
            tracking_token: mlflow.tracking_token,
        },
        cloudevents: CloudEventsConfig {
            query_token: ce.query_token.unwrap_or(false),
            default_version: ce.default_version,
            join_timeout: match ce.join_timeout_s {
                Some(0) => {
                    return Err(InputError(
                        "integrations.cloudevents.join_timeout_s must be at least 1".into(),
                    )
                    .into())
                }
                Some(s) => Duration::from_secs(s),
                None => defaults.join_timeout,
            },
            max_pending: ce.max_pending.unwrap_or(defaults.max_pending),
            max_pending_bytes: ce
                .max_pending_mib
                .map_or(defaults.max_pending_bytes, |m| m.saturating_mul(1 << 20)),
            sampling: SamplePolicy {
                rates,
                default_rate: check_rate(
                    "integrations.cloudevents.default_sample_rate",
                    ce.default_sample_rate.unwrap_or(1.0),
                )?,
            },
        },
        openlineage: mlaudit_integrations::openlineage::Options {
            training_jobs: file
                .openlineage
                .and_then(|o| o.training_jobs)
                .unwrap_or_default(),
            ..Default::default()
        },
    })
}

/// The resolved settings.
#[derive(Debug)]
struct Settings {
    retention: Option<crate::retention::policy::RetentionFile>,
    listen: String,
    /// The signing key file when not the data directory's.
    key: Option<PathBuf>,
    public_proofs: bool,
    limits: Limits,
    conn: ConnConfig,
    /// (requests per second, burst) per principal; `None` when off.
    rate_limit: Option<(u32, u32)>,
    /// (certificate, key) PEM files.
    tls: Option<(PathBuf, PathBuf)>,
    /// Mebibytes for the index runs' fences and Bloom filters.
    index_cache_mib: u64,
    integrations: IntegrationsConfig,
    /// Queues to consume, and how.
    ingest: Vec<mlaudit_queue::IngestUrl>,
    ingest_batch: usize,
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

/// A setting from the environment variable `name`, else the config file, else `default`.
fn setting<T: std::str::FromStr>(name: &str, file: Option<T>, default: T) -> Result<T> {
    Ok(env_parse(name)?.or(file).unwrap_or(default))
}

/// Seconds from the environment or the file, else the default.
fn seconds(name: &str, file: Option<u64>, default: Duration) -> Result<Duration> {
    let s = setting(name, file, default.as_secs())?;
    if s == 0 {
        return Err(InputError(format!("{name}: a timeout of 0 s is not allowed")).into());
    }
    Ok(Duration::from_secs(s))
}

fn file_config(args: &ServeArgs) -> Result<FileConfig> {
    Ok(match &args.config {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .map_err(|e| InputError(format!("cannot read {}: {e}", path.display())))?;
            toml::from_str(&text).map_err(|e| InputError(format!("{}: {e}", path.display())))?
        }
        None => FileConfig::default(),
    })
}

/// The config file's `store`, for when neither `--store` nor `MLAUDIT_STORE` gives one.
pub fn configured_store(args: &ServeArgs) -> Result<Option<String>> {
    Ok(file_config(args)?.store)
}

fn resolve(args: &ServeArgs) -> Result<Settings> {
    let file = file_config(args)?;
    let defaults = Limits::default();
    let conn = ConnConfig::default();
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
    let per_second = setting(
        "MLAUDIT_RATE_LIMIT_PER_SECOND",
        file.rate_limit_per_second,
        DEFAULT_RATE,
    )?;
    let burst = setting(
        "MLAUDIT_RATE_LIMIT_BURST",
        file.rate_limit_burst,
        2 * per_second,
    )?;
    let ingest = if args.ingest.is_empty() {
        file.ingest.unwrap_or_default()
    } else {
        args.ingest.clone()
    };
    let ingest = ingest
        .iter()
        .map(|url| mlaudit_queue::IngestUrl::parse(url).map_err(|e| InputError(e.to_string())))
        .collect::<Result<Vec<_>, _>>()?;
    let ingest_batch = file.ingest_batch.unwrap_or(1000);
    if ingest_batch == 0 {
        return Err(InputError("ingest_batch must be at least 1".into()).into());
    }
    Ok(Settings {
        ingest,
        ingest_batch,
        retention: file.retention,
        key: args.key.clone().or(file.key),
        integrations: integrations(file.integrations)?,
        tls,
        index_cache_mib: setting(
            "MLAUDIT_INDEX_CACHE_MIB",
            file.index_cache_mib,
            ledger::DEFAULT_INDEX_CACHE_MIB,
        )?,
        listen: args
            .listen
            .clone()
            .or_else(|| env("MLAUDIT_LISTEN"))
            .or(file.listen)
            .unwrap_or_else(|| "127.0.0.1:8080".into()),
        public_proofs: setting("MLAUDIT_PUBLIC_PROOFS", file.public_proofs, true)?,
        limits: Limits {
            max_body_bytes: setting(
                "MLAUDIT_MAX_BODY_BYTES",
                file.max_body_bytes,
                defaults.max_body_bytes,
            )?,
            max_events_per_batch: setting(
                "MLAUDIT_MAX_EVENTS_PER_BATCH",
                file.max_events_per_batch,
                defaults.max_events_per_batch,
            )?,
            request_timeout: seconds(
                "MLAUDIT_REQUEST_TIMEOUT_S",
                file.request_timeout_s,
                defaults.request_timeout,
            )?,
            body_read_timeout: seconds(
                "MLAUDIT_BODY_READ_TIMEOUT_S",
                file.body_read_timeout_s,
                defaults.body_read_timeout,
            )?,
        },
        conn: ConnConfig {
            max_connections: setting(
                "MLAUDIT_MAX_CONNECTIONS",
                file.max_connections,
                conn.max_connections,
            )?,
            header_read_timeout: seconds(
                "MLAUDIT_HEADER_READ_TIMEOUT_S",
                file.header_read_timeout_s,
                conn.header_read_timeout,
            )?,
            idle_timeout: seconds(
                "MLAUDIT_IDLE_TIMEOUT_S",
                file.idle_timeout_s,
                conn.idle_timeout,
            )?,
            tls_handshake_timeout: seconds(
                "MLAUDIT_TLS_HANDSHAKE_TIMEOUT_S",
                file.tls_handshake_timeout_s,
                conn.tls_handshake_timeout,
            )?,
            shutdown_grace: seconds(
                "MLAUDIT_SHUTDOWN_GRACE_S",
                file.shutdown_grace_s,
                conn.shutdown_grace,
            )?,
        },
        rate_limit: (per_second > 0).then_some((per_second, burst.max(per_second))),
    })
}

/// Requests per second per principal unless configured (0 turns the limit off).
const DEFAULT_RATE: u32 = 5000;

/// Refuses to serve without authentication anywhere but on a loopback address.
fn check_danger_no_auth(listen: &str) -> Result<()> {
    use std::net::ToSocketAddrs;
    let addrs: Vec<std::net::SocketAddr> = listen
        .to_socket_addrs()
        .map_err(|e| InputError(format!("cannot resolve {listen}: {e}")))?
        .collect();
    if addrs.is_empty() || addrs.iter().any(|a| !a.ip().is_loopback()) {
        return Err(InputError(format!(
            "--danger-no-auth serves every right to anyone who can connect: it listens only on a loopback address (127.0.0.1 or ::1), not {listen}"
        ))
        .into());
    }
    Ok(())
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

/// Starts the retention schedule (`schedule` in `[retention]`) on a thread of its own: a run
/// at start, then one per interval; outcomes go to the log and `/metrics`, and a failed run
/// is retried at the next one.
fn start_retention(
    data: &Path,
    file: &crate::retention::policy::RetentionFile,
    store: Arc<ledger::Ledger>,
    metrics: Arc<mlaudit_server::metrics::Metrics>,
    verifier: mlaudit_core::note::NoteVerifier,
) -> Result<()> {
    use crate::retention::{policy, remembered_archive, scheduled_run};
    let policy = policy::Policy::resolve(file, None, None)?;
    let url = file.archive.clone().or_else(|| remembered_archive(data));
    if let Some(url) = &url {
        crate::retention::check_same_archive(data, url, store.as_ref())?;
        // Reads of archived payloads go there, also on a server of a PostgreSQL log whose
        // data directory never ran a retention run itself.
        store.use_archive(url);
    }
    let Some(every) = file.schedule.as_deref() else {
        return Ok(());
    };
    let interval = std::time::Duration::from_nanos(policy::parse_age(every)?.unsigned_abs());
    let data = data.to_owned();
    let archive = url
        .as_deref()
        .map(mlaudit_archive::Archive::open)
        .transpose()?;
    if archive.is_none() {
        tracing::warn!(
            "retention: no archive configured (retention.archive): runs record the policy only"
        );
    }
    std::thread::Builder::new()
        .name("mlaudit-retention".into())
        .spawn(move || loop {
            let started = std::time::Instant::now();
            match scheduled_run(&data, store.as_ref(), &policy, archive.as_ref(), &verifier) {
                Ok(run) => {
                    metrics.retention_succeeded(run.archived, run.added, run.expired, run.offloaded);
                    tracing::info!(archived = run.archived, added = run.added, expired = run.expired, offloaded = run.offloaded, secs = started.elapsed().as_secs_f64(), "retention run done");
                }
                Err(e) => {
                    metrics.retention_failed();
                    tracing::warn!(error = %format!("{e:#}"), "retention run failed; retried at the next run");
                }
            }
            std::thread::sleep(interval);
        })
        .context("starting the retention schedule")?;
    Ok(())
}

pub fn run(data: &Path, args: ServeArgs) -> Result<()> {
    let settings = resolve(&args)?;
    let listen = settings.listen.as_str();
    if args.danger_no_auth {
        check_danger_no_auth(listen)?;
    }
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .try_init();
    let verifier = match &settings.key {
        Some(file) => ledger::signer_file(file)?.verifier(),
        None => ledger::signer(data)?.verifier(),
    };
    let options = ledger::options_with_cache(settings.index_cache_mib);
    let store = Arc::new(ledger::open_configured(
        data,
        options,
        settings.key.as_deref(),
    )?);
    let tokens = if args.danger_no_auth {
        None
    } else {
        let tokens = crate::token::load_reconciled(data, &store)?;
        if tokens.list().iter().all(|t| t.revoked.is_some()) {
            eprintln!("mlaudit: no active token yet: create one with `mlaudit token create --role writer --name NAME` (or serve with --danger-no-auth for a local trial)");
        }
        Some(Arc::new(RwLock::new(tokens)))
    };
    let danger_no_auth = args.danger_no_auth;
    let journal = data.join("integrations").join("pending.jsonl");
    let joiner = Joiner::open(&journal).map_err(|e| InputError(e.to_string()))?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let consumers = {
        let _inside = runtime.enter();
        let queue_settings = mlaudit_queue::Settings {
            batch: settings.ingest_batch,
            max_events_per_message: settings.limits.max_events_per_batch,
        };
        mlaudit_queue::Consumers::start(&settings.ingest, store.clone(), queue_settings)
            .map_err(|e| InputError(e.to_string()))?
    };
    let state = AppState {
        ingest: consumers.stats(),
        integrations: Arc::new(Integrations::new(settings.integrations, joiner)),
        limits: settings.limits,
        public_proofs: settings.public_proofs,
        rate_limit: settings
            .rate_limit
            .map(|(rate, burst)| Arc::new(RateLimiter::new(rate, burst))),
        ..AppState::new(store.clone(), verifier, tokens)
    };
    if let Some(file) = &settings.retention {
        start_retention(
            data,
            file,
            store.clone(),
            state.metrics.clone(),
            state.verifier.clone(),
        )?;
    }
    let grace = settings.conn.shutdown_grace;
    runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind(listen).await.map_err(|e| InputError(format!("cannot listen on {listen}: {e}")))?;
        let addr = listener.local_addr()?;
        if danger_no_auth {
            tracing::warn!("authentication is OFF (--danger-no-auth): anyone who can reach {addr} can read and write this log");
        }
        tracing::info!(%addr, data = %data.display(), "mlaudit serving");
        let tls = match &settings.tls {
            Some((cert, key)) => Some(mlaudit_server::tls::load_config(cert, key).map_err(|e| InputError(e.to_string()))?),
            None => None,
        };
        let scheme = if tls.is_some() { "https" } else { "http" };
        eprintln!("mlaudit: listening on {scheme}://{addr}");
        for source in &settings.ingest {
            eprintln!("mlaudit: consuming {source}");
        }
        let served = mlaudit_server::conn::serve(listener, state, settings.conn, tls, shutdown_signal()).await;
        // The queues stop after the HTTP server: batches being stored are acknowledged.
        consumers.stop(grace).await;
        served.context("serving")?;
        anyhow::Ok(())
    })?;
    // Connections cut at the end of the grace period may leave tasks behind: do not wait.
    runtime.shutdown_background();
    store.close()?;
    Ok(())
}
