//! `mlaudit-bench`: measures mlaudit against baselines in the same run and prints one JSON line
//! per figure (`bench`, `engine`, `metric`, `value`, plus context).
//!
//! `cargo run --release -p mlaudit-bench -- ingest [--events N] [--proof-sizes A,B] [--dir D]`
//! `cargo run --release -p mlaudit-bench -- prepare [--events N]` (validation cost, diagnostic)
//! `cargo run --release -p mlaudit-bench -- http [--events N] [--single-requests N]`
//! `cargo run --release -p mlaudit-bench -- client [--calls N] [--rate R] [--predict-seconds S]` (Rust SDK)
//! `cargo run --release -p mlaudit-bench -- scale [--events N] [--dir D]` (a log of N predictions)
//! `cargo run --release -p mlaudit-bench -- index [--ids N] [--dir D]` (id index candidates)
//! `cargo run --release -p mlaudit-bench -- postgres [--events N] [--clients N] [--url U]`
//! `cargo run --release -p mlaudit-bench -- retention [--events N] [--no-s3]` (tiers, the archive)
//! `cargo run --release -p mlaudit-bench -- queue [--events N] [--message-events A,B]` (NATS JetStream vs HTTP)

mod client;
mod http;
mod index;
mod ingest;
mod postgres;
mod queue;
mod retention;
mod scale;

/// The server's allocator, built the same way (`no_thp`, see `crates/mlaudit/src/main.rs`), so
/// that the in-process server measured here is the one `mlaudit serve` runs.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::process::ExitCode;

const USAGE: &str = "usage: mlaudit-bench ingest [--events N] [--proof-sizes N,M] [--dir DIR] [--only-mlaudit] [--clients N]
       mlaudit-bench prepare [--events N]
       mlaudit-bench http [--events N] [--single-requests N] [--batches A,B] [--clients A,B] [--dir DIR]
       mlaudit-bench verify [--events N]
       mlaudit-bench client [--calls N] [--rate R] [--predict-seconds S] [--dir DIR]
       mlaudit-bench scale [--events N] [--dir DIR]
       mlaudit-bench index [--ids N] [--dir DIR]
       mlaudit-bench postgres [--events N] [--clients N] [--url postgres://…] [--engines E,F]
       mlaudit-bench retention [--events N] [--samples N] [--no-s3] [--dir DIR]
       mlaudit-bench queue [--events N] [--clients N] [--batch N] [--message-events A,B] [--nats URL] [--dir DIR]";

/// Runs the named benchmark; errors are one line on stderr and exit status 2 (no backtrace).
fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "--help" || a == "-h") {
        println!("{USAGE}");
        return ExitCode::SUCCESS;
    }
    let result = match args.first().map(String::as_str) {
        Some("ingest") => ingest::run(&args[1..]),
        Some("prepare") => ingest::prepare_only(&args[1..]),
        Some("http") => http::run(&args[1..]),
        Some("verify") => ingest::verify_only(&args[1..]),
        Some("client") => client::run(&args[1..]),
        Some("scale") => scale::run(&args[1..]),
        Some("postgres") => postgres::run(&args[1..]),
        Some("retention") => retention::run(&args[1..]),
        Some("queue") => queue::run(&args[1..]),
        Some("scale-probe") => scale::probe_main(&args[1..]),
        Some("index") => index::run(&args[1..]),
        Some("index-candidate") => index::candidate(&args[1..]),
        _ => Err(anyhow::anyhow!("{USAGE}")),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("mlaudit-bench: {e:#}");
            ExitCode::from(2)
        }
    }
}
