//! `mlaudit`: the command-line interface to an mlaudit log.
//!
//! Arguments are parsed into plain values by clap first; each command then resolves the data
//! directory and opens the store. `main` maps errors to exit codes: 0 ok, 1 verification
//! failed, 2 usage, input or operational error.

mod append;
mod demo;
mod erase;
mod export;
mod hold;
mod http;
mod import;
mod ledger;
mod output;
mod proof;
mod read;
mod retention;
mod serve;
mod token;

use clap::{Parser, Subcommand, ValueEnum};

/// Ingest allocates many small, short-lived objects; mimalloc keeps that cheap. It is built
/// with `no_thp` (Cargo.toml): otherwise it asks for transparent huge pages on its arenas
/// (`madvise`), and every 2 MiB page it purges and touches again is zeroed whole by the
/// kernel, which took the HTTP batch ingest from about 3.5 to 5.5 CPU-µs per event
/// (BENCHMARKS.md). On a kernel whose THP mode is `always` rather than `madvise` this build
/// option makes no difference.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;
use ledger::{InputError, VerifyFailed};
use std::path::PathBuf;
use std::process::ExitCode;

/// An immutable, cryptographically verifiable audit trail for machine-learning systems.
#[derive(Debug, Parser)]
#[command(name = "mlaudit", version, about, long_about = None)]
struct Cli {
    /// Data directory [default: $MLAUDIT_DATA, else ./mlaudit-data]
    #[arg(long, global = true, value_name = "DIR")]
    data: Option<PathBuf>,
    /// Keep the log in PostgreSQL (postgres://user@host/db) instead of the data directory
    /// [config: store]
    #[arg(
        long,
        global = true,
        value_name = "URL",
        env = "MLAUDIT_STORE",
        hide_env_values = true
    )]
    store: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq)]
enum Format {
    Table,
    Json,
    Ndjson,
    Text,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Create a signing key and an empty log.
    Init {
        /// The log's name (checkpoint origin and key name).
        #[arg(long)]
        origin: Option<String>,
    },
    /// Append NDJSON events from a file or standard input.
    Append {
        /// NDJSON file, or - for standard input.
        #[arg(default_value = "-")]
        file: PathBuf,
        /// Events per durable batch.
        #[arg(long, default_value_t = 1000)]
        batch_size: usize,
    },
    /// Show one stored event, its seq and leaf hash.
    Get {
        /// Event id (UUID), or a seq number.
        id: String,
    },
    /// Find events by stage, kind, subject, actor and time.
    Query(read::QueryArgs),
    /// Trace an event back to its model version, approvals, training run and datasets.
    Lineage {
        id: String,
        #[arg(long, value_enum, default_value_t = Format::Text)]
        format: Format,
    },
    /// Print the latest signed checkpoint, verbatim.
    Checkpoint {
        /// The checkpoint for this tree size instead of the latest.
        #[arg(long)]
        size: Option<u64>,
        /// List the tree sizes of every stored checkpoint.
        #[arg(long)]
        list: bool,
    },
    /// Recompute and check the whole log: entries, payloads, tree and every checkpoint.
    Verify {
        /// A signed checkpoint kept earlier (e.g. from GET /v1/checkpoint): the log must be a
        /// consistent extension of it (exit 1 if shorter, or another tree at that size).
        #[arg(long, value_name = "FILE")]
        trusted_checkpoint: Option<PathBuf>,
        /// The verifier key (text or file) to check with, instead of the data directory's.
        #[arg(long, value_name = "VKEY")]
        key: Option<String>,
        /// Check a cold archive (s3://…, gs://…, az://…, file:///…) instead of the log: every
        /// tile, bundle and checkpoint in it, with only the verifier key.
        #[arg(long, value_name = "URL", conflicts_with = "trusted_checkpoint")]
        archive: Option<String>,
    },
    /// Write an inclusion proof bundle for one event.
    Prove {
        id: String,
        /// Write the bundle here instead of standard output.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Check a proof bundle offline with only the log's verifier key.
    VerifyBundle {
        file: PathBuf,
        /// Verifier key text, or a file holding it.
        #[arg(long)]
        key: String,
    },
    /// Prove and check that one checkpoint's tree is a prefix of another's.
    Consistency {
        /// The smaller tree size (a stored checkpoint's).
        #[arg(long, required_unless_present = "old", conflicts_with = "old")]
        from: Option<u64>,
        /// A signed checkpoint saved earlier, instead of --from: proves that the log extends it.
        #[arg(long, value_name = "FILE")]
        old: Option<PathBuf>,
        /// [default: the latest checkpoint]
        #[arg(long)]
        to: Option<u64>,
        /// The verifier key (text or file) to check with, instead of the data directory's.
        #[arg(long, value_name = "VKEY")]
        key: Option<String>,
    },
    /// Write events as day-partitioned files for a warehouse (DuckDB, BigQuery, Athena), each
    /// with a manifest that proves its rows are the log's.
    Export(export::ExportArgs),
    /// Erase payloads (a data subject's request): entries, leaves and proofs stay, the
    /// erasure is recorded, events under legal hold are refused.
    Erase(erase::EraseArgs),
    /// Legal holds: covered events never expire or lose their payload.
    #[command(subcommand)]
    Hold(hold::HoldCommand),
    /// Tiers by age, the cold archive and payload expiry (see docs/RETENTION.md).
    #[command(subcommand)]
    Retention(retention::RetentionCommand),
    /// Bring payloads kept only in the cold archive back to the server (seqs FROM through TO).
    Restore {
        /// The first seq of the range.
        #[arg(long, value_name = "SEQ")]
        from: u64,
        /// The last seq of the range (included).
        #[arg(long, value_name = "SEQ")]
        to: u64,
    },
    /// Run the HTTP API (see docs/API.md).
    Serve(serve::ServeArgs),
    /// Backfill events from MLflow, a W&B audit log or a ClearML offline session (see
    /// docs/INTEGRATIONS.md).
    #[command(subcommand)]
    Import(import::ImportCommand),
    /// Manage API tokens (offline: stop the server first, or use the admin API).
    #[command(subcommand)]
    Token(token::TokenCommand),
    /// Record a realistic ML lifecycle, verify it and show a prediction's lineage and proof.
    Demo {
        /// How many predictions to serve.
        #[arg(long, default_value_t = 300)]
        predictions: usize,
    },
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let data = ledger::data_dir(cli.data);
    let store = match (&cli.store, &cli.command) {
        (None, Command::Serve(args)) => serve::configured_store(args)?,
        _ => cli.store.clone(),
    };
    ledger::set_store_url(store)?;
    match cli.command {
        Command::Init { origin } => read::init(&data, origin),
        Command::Append { file, batch_size } => append::run(&data, &file, batch_size),
        Command::Get { id } => read::get(&data, &id),
        Command::Query(args) => read::query(&data, args),
        Command::Lineage { id, format } => read::lineage(&data, &id, format == Format::Json),
        Command::Checkpoint { size, list } => read::checkpoint(&data, size, list),
        Command::Verify {
            archive: Some(url),
            key,
            ..
        } => proof::verify_archive(&data, &url, key.as_deref()),
        Command::Verify {
            trusted_checkpoint,
            key,
            archive: None,
        } => proof::verify(&data, trusted_checkpoint.as_deref(), key.as_deref()),
        Command::Prove { id, out } => proof::prove(&data, &id, out.as_deref()),
        Command::VerifyBundle { file, key } => proof::verify_bundle(&file, &key),
        Command::Consistency { from, old, to, key } => {
            let from = match (from, old) {
                (_, Some(file)) => proof::From::Saved(file),
                (Some(size), None) => proof::From::Size(size),
                (None, None) => {
                    return Err(ledger::InputError("--from or --old is needed".into()).into())
                }
            };
            proof::consistency(&data, from, to, key.as_deref())
        }
        Command::Demo { predictions } => demo::run(&data, predictions),
        Command::Serve(args) => serve::run(&data, args),
        Command::Retention(cmd) => retention::run(&data, cmd),
        Command::Restore { from, to } => retention::restore_command(&data, from, to),
        Command::Hold(cmd) => hold::run(&data, cmd),
        Command::Erase(args) => erase::run(&data, args),
        Command::Export(args) => export::run(&data, args),
        Command::Import(cmd) => import::run(&data, cmd),
        Command::Token(cmd) => token::run(&data, cmd),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            let code = if err.downcast_ref::<VerifyFailed>().is_some() {
                1
            } else {
                2
            };
            if err.downcast_ref::<InputError>().is_some()
                || err.downcast_ref::<VerifyFailed>().is_some()
            {
                eprintln!("mlaudit: {err}");
            } else {
                eprintln!("mlaudit: error: {err}");
                for cause in err.chain().skip(1) {
                    eprintln!("  caused by: {cause}");
                }
            }
            ExitCode::from(code)
        }
    }
}
