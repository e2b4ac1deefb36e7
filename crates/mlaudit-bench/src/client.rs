//! The Rust SDK benchmark: what `AuditLogger::log()` costs the caller's thread, beside a
//! synchronous HTTP POST per event measured in the same run, and what logging does to the
//! p99 of a predict function called 1,000 times a second.
//!
//! The server is an in-process `mlaudit serve` (embedded store, token auth) on loopback. Each
//! event is built before its timer starts: only `log()` is timed (each sample also holds one
//! `Instant::now()`, reported as `timer_overhead_ns`). Two runs of `log()`: paced at
//! `--rate` calls/s (a busy scoring service) and unpaced (a burst as fast as one thread can
//! build events, where the queue can fill and spill to the spool).

use crate::http::{pct, serve};
use crate::ingest::emit;
use anyhow::{anyhow, bail, ensure, Context, Result};
use mlaudit_client::{Actor, AuditLogger, Event};
use mlaudit_core::note::NoteSigner;
use serde_json::json;
use std::path::PathBuf;
use std::time::{Duration, Instant};

struct Opts {
    calls: usize,
    rate: f64,
    predict_seconds: f64,
    dir: PathBuf,
}

fn parse(args: &[String]) -> Result<Opts> {
    let mut o = Opts {
        calls: 1_000_000,
        rate: 20_000.0,
        predict_seconds: 5.0,
        dir: std::env::temp_dir().join(format!("mlaudit-bench-client-{}", std::process::id())),
    };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut val = || {
            it.next()
                .cloned()
                .with_context(|| format!("{a} needs a value"))
        };
        match a.as_str() {
            "--calls" => o.calls = val()?.parse()?,
            "--rate" => o.rate = val()?.parse()?,
            "--predict-seconds" => o.predict_seconds = val()?.parse()?,
            "--dir" => o.dir = PathBuf::from(val()?),
            other => bail!("unknown option {other}"),
        }
    }
    Ok(o)
}

fn prediction(i: usize) -> Event {
    Event::prediction_served(
        "credit-risk",
        "7",
        format!("r{i:09}"),
        json!({"income": 40_000 + i % 50_000, "debt": 0.3, "age": 20 + i % 50}),
        json!({"score": 0.031, "decision": "approve"}),
    )
    .latency_ms(2.5)
    .confidence(0.97)
}

/// Nanosecond percentiles of `samples` as JSON lines.
fn emit_percentiles(engine: &str, what: &str, samples: &mut [f64], ctx: serde_json::Value) {
    samples.sort_by(f64::total_cmp);
    for (name, p) in [("p50", 0.50), ("p99", 0.99), ("p999", 0.999)] {
        emit(
            "client",
            engine,
            &format!("{what}_{name}_ns"),
            pct(samples, p),
            ctx.clone(),
        );
    }
}

/// Times `calls` log() calls, paced at `rate` per second (0: unpaced).
fn time_log(logger: &AuditLogger, calls: usize, first: usize, rate: f64) -> Vec<f64> {
    let mut samples = Vec::with_capacity(calls);
    let start = Instant::now();
    for i in 0..calls {
        if rate > 0.0 {
            // Sleep when well ahead, so that pacing leaves the cores to the sender and server.
            let due = start + Duration::from_secs_f64(i as f64 / rate);
            let now = Instant::now();
            if due > now + Duration::from_micros(500) {
                std::thread::sleep(due - now);
            }
        }
        let event = prediction(first + i);
        let t = Instant::now();
        logger.log(event);
        samples.push(t.elapsed().as_nanos() as f64);
    }
    samples
}

/// A stand-in model: about 100 µs of arithmetic that cannot be folded away.
fn predict(x: u64) -> u64 {
    let mut h = x | 1;
    for _ in 0..40_000 {
        h = std::hint::black_box(
            h.wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407),
        );
    }
    h
}

/// p99-relevant latencies (ns) of `predict` called at 1,000/s for `seconds`, with or without
/// logging each prediction.
fn predict_loop(
    logger: Option<&AuditLogger>,
    seconds: f64,
    first: usize,
    log_calls: &mut Vec<f64>,
) -> Vec<f64> {
    let n = (seconds * 1000.0) as usize;
    let start = Instant::now();
    let mut samples = Vec::with_capacity(n);
    for i in 0..n {
        let due = start + Duration::from_millis(i as u64);
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        let t = Instant::now();
        let y = predict(i as u64);
        if let Some(logger) = logger {
            let event = Event::prediction_served(
                "credit-risk",
                "7",
                format!("p{}", first + i),
                json!({"x": i}),
                json!({"y": y % 100}),
            )
            .latency_ms(t.elapsed().as_secs_f64() * 1e3);
            let l = Instant::now();
            logger.log(event);
            log_calls.push(l.elapsed().as_nanos() as f64);
        }
        samples.push(t.elapsed().as_nanos() as f64);
    }
    samples
}

/// A synchronous POST of one event per call (the baseline): latency per call.
fn sync_posts(url: &str, token: &str, calls: usize, first: usize) -> Result<Vec<f64>> {
    let agent = ureq::AgentBuilder::new()
        .timeout(Duration::from_secs(30))
        .build();
    let actor = Actor::service("scoring-api");
    let mut samples = Vec::with_capacity(calls);
    for i in 0..calls {
        let body = mlaudit_client::encode_batch([prediction(first + i)], &actor);
        let t = Instant::now();
        agent
            .post(&format!("{url}/v1/events"))
            .set("Content-Type", "application/x-protobuf")
            .set("Authorization", &format!("Bearer {token}"))
            .send_bytes(&body)
            .map_err(|e| anyhow!("sync POST: {e}"))?;
        samples.push(t.elapsed().as_nanos() as f64);
    }
    Ok(samples)
}

pub fn run(args: &[String]) -> Result<()> {
    let o = parse(args)?;
    let _ = std::fs::remove_dir_all(&o.dir);
    std::fs::create_dir_all(&o.dir)?;
    let signer =
        NoteSigner::from_seed("bench.mlaudit.local", [7; 32]).map_err(|e| anyhow!("{e}"))?;
    let (server, token, store) = serve(&o.dir, &signer)?;
    let url = format!("http://{}", server.addr());

    let mut overhead: Vec<f64> = (0..100_000)
        .map(|_| {
            let t = Instant::now();
            t.elapsed().as_nanos() as f64
        })
        .collect();
    overhead.sort_by(f64::total_cmp);
    emit(
        "client",
        "timer",
        "timer_overhead_ns",
        pct(&overhead, 0.5),
        json!({}),
    );

    let logger = AuditLogger::builder(&url, &token, Actor::service("scoring-api"))
        .spool_dir(o.dir.join("spool"))
        .start()?;
    let ctx = json!({ "calls": o.calls, "rate_per_s": o.rate });
    let mut paced = time_log(&logger, o.calls, 0, o.rate);
    emit_percentiles("mlaudit-rust", "log", &mut paced, ctx.clone());
    emit(
        "client",
        "mlaudit-rust",
        "events_spooled",
        logger.stats().spooled as f64,
        ctx,
    );
    let mut burst = time_log(&logger, o.calls, o.calls, 0.0);
    emit_percentiles(
        "mlaudit-rust",
        "log",
        &mut burst,
        json!({ "calls": o.calls, "rate_per_s": "unpaced" }),
    );
    let flushed = Instant::now();
    logger
        .flush(Duration::from_secs(600))
        .map_err(|e| anyhow!("flush: {e}"))?;
    let stats = logger.close(Duration::from_secs(10));
    emit(
        "client",
        "mlaudit-rust",
        "flush_s",
        flushed.elapsed().as_secs_f64(),
        json!({}),
    );
    ensure!(
        stats.sent == 2 * o.calls as u64 && stats.dropped == 0,
        "not every event was delivered: {stats:?}"
    );
    emit(
        "client",
        "mlaudit-rust",
        "events_spooled",
        stats.spooled as f64,
        json!({ "sent": stats.sent, "retried": stats.retried, "after": "both runs" }),
    );

    let sync_calls = (o.calls / 100).max(200);
    let mut sync = sync_posts(&url, &token, sync_calls, 2 * o.calls)?;
    emit_percentiles(
        "http-sync",
        "log",
        &mut sync,
        json!({ "calls": sync_calls }),
    );
    let ratio = pct(&sync, 0.99) / pct(&paced, 0.99).max(1.0);
    emit(
        "client",
        "mlaudit-rust",
        "p99_ratio_sync_over_log",
        ratio,
        json!({}),
    );

    let predict_logger = AuditLogger::builder(&url, &token, Actor::service("scoring-api"))
        .spool_dir(o.dir.join("spool-predict"))
        .start()?;
    let mut log_calls = Vec::new();
    let mut bare = predict_loop(None, o.predict_seconds, 0, &mut log_calls);
    let mut logged = predict_loop(Some(&predict_logger), o.predict_seconds, 0, &mut log_calls);
    predict_logger.close(Duration::from_secs(10));
    let ctx = json!({ "predictions_per_s": 1000, "seconds": o.predict_seconds });
    emit_percentiles("predict-bare", "predict", &mut bare, ctx.clone());
    emit_percentiles("predict-logged", "predict", &mut logged, ctx.clone());
    emit_percentiles("mlaudit-rust", "predict_log_call", &mut log_calls, ctx);
    emit(
        "client",
        "mlaudit-rust",
        "predict_p99_ratio_logged_over_bare",
        pct(&logged, 0.99) / pct(&bare, 0.99).max(1.0),
        json!({}),
    );

    server.stop()?;
    store.close()?;
    drop(store);
    std::fs::remove_dir_all(&o.dir)?;
    Ok(())
}
