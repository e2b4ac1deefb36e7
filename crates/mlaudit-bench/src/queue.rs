//! The queue ingest benchmark: events published to NATS JetStream and consumed by mlaudit's
//! consumer (`mlaudit serve --ingest`, in process, embedded store) until durable in the log;
//! events/s from the first publish to the last event durable, and the end-to-end lag p50/p99
//! (publish call to durable), beside the HTTP batch path (the in-process server, the same
//! batches from concurrent keep-alive clients) measured in the same run.
//!
//! Messages of 1,000 events (NDJSON) are the like-for-like comparison with HTTP batches of
//! 1,000 (`ratio_vs_http`); messages of one event each are what the SDKs publish.

use crate::http::{drive, pct, serve};
use crate::ingest::{cpu_us_per_event, emit, event_line, process_cpu_seconds};
use anyhow::{anyhow, bail, Context, Result};
use async_nats::jetstream;
use mlaudit_core::note::NoteSigner;
use mlaudit_embedded::EmbeddedStore;
use mlaudit_queue::{Consumers, IngestUrl, Settings};
use mlaudit_store::{LogReader, Store};
use serde_json::json;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

struct Opts {
    events: usize,
    clients: usize,
    batch: usize,
    message_events: Vec<usize>,
    nats: String,
    dir: PathBuf,
}

fn parse(args: &[String]) -> Result<Opts> {
    let mut o = Opts {
        events: 200_000,
        clients: 16,
        batch: 1000,
        message_events: vec![1000, 1],
        nats: "nats://127.0.0.1:4222".into(),
        dir: std::env::temp_dir().join(format!("mlaudit-bench-queue-{}", std::process::id())),
    };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut val = || {
            it.next()
                .cloned()
                .with_context(|| format!("{a} needs a value"))
        };
        match a.as_str() {
            "--events" => o.events = val()?.parse::<usize>()?.max(1),
            "--clients" => o.clients = val()?.parse::<usize>()?.max(1),
            "--batch" => o.batch = val()?.parse::<usize>()?.max(1),
            "--message-events" => {
                o.message_events = val()?
                    .split(',')
                    .map(|s| s.trim().parse::<usize>().map(|n| n.max(1)))
                    .collect::<Result<_, _>>()?
            }
            "--nats" => o.nats = val()?,
            "--dir" => o.dir = PathBuf::from(val()?),
            other => bail!("unknown option {other}"),
        }
    }
    Ok(o)
}

pub fn run(args: &[String]) -> Result<()> {
    let o = parse(args)?;
    let _ = std::fs::remove_dir_all(&o.dir);
    std::fs::create_dir_all(&o.dir)?;
    let signer =
        NoteSigner::from_seed("bench.mlaudit.local", [7; 32]).map_err(|e| anyhow!("{e}"))?;

    // The HTTP batch path.
    let http_dir = o.dir.join("http");
    std::fs::create_dir_all(&http_dir)?;
    let (server, token, store) = serve(&http_dir, &signer)?;
    let requests = o.events.div_ceil(o.batch);
    let bodies: Vec<Vec<u8>> = (0..requests)
        .map(|r| ndjson(r * o.batch, ((r + 1) * o.batch).min(o.events)))
        .collect();
    let cpu = process_cpu_seconds();
    let (secs, lat) = drive(server.addr(), &token, o.clients, bodies)?;
    let http = o.events as f64 / secs;
    let ctx = json!({ "events": o.events, "batch": o.batch, "clients": o.clients });
    emit("queue", "http", "events_per_s", http, ctx.clone());
    emit(
        "queue",
        "http",
        "cpu_us_per_event",
        cpu_us_per_event(cpu, o.events),
        ctx.clone(),
    );
    emit(
        "queue",
        "http",
        "ack_p50_ms",
        pct(&lat, 0.50) * 1e3,
        ctx.clone(),
    );
    emit("queue", "http", "ack_p99_ms", pct(&lat, 0.99) * 1e3, ctx);
    server.stop()?;
    store.close()?;
    drop(store);

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    for &per_message in &o.message_events {
        // Diagnostic: the consumer alone, draining a stream published beforehand.
        let drain = queue_run(&runtime, &o, &signer, per_message, true)?;
        let ctx =
            json!({ "events": o.events, "events_per_message": per_message, "prefilled": true });
        emit(
            "queue",
            "jetstream-drain",
            "events_per_s",
            drain.events_per_s,
            ctx.clone(),
        );
        emit(
            "queue",
            "jetstream-drain",
            "ratio_vs_http",
            drain.events_per_s / http,
            ctx,
        );
        let run = queue_run(&runtime, &o, &signer, per_message, false)?;
        let ctx = json!({ "events": o.events, "events_per_message": per_message, "consumer_batch": Settings::default().batch });
        emit(
            "queue",
            "jetstream",
            "events_per_s",
            run.events_per_s,
            ctx.clone(),
        );
        emit(
            "queue",
            "jetstream",
            "cpu_us_per_event",
            run.cpu_us_per_event,
            ctx.clone(),
        );
        emit(
            "queue",
            "jetstream",
            "lag_p50_ms",
            run.lag_p50 * 1e3,
            ctx.clone(),
        );
        emit(
            "queue",
            "jetstream",
            "lag_p99_ms",
            run.lag_p99 * 1e3,
            ctx.clone(),
        );
        emit(
            "queue",
            "jetstream",
            "ratio_vs_http",
            run.events_per_s / http,
            ctx,
        );
    }
    std::fs::remove_dir_all(&o.dir)?;
    Ok(())
}

/// Events `from..to` as an NDJSON body.
fn ndjson(from: usize, to: usize) -> Vec<u8> {
    (from..to)
        .map(|i| event_line(i) + "\n")
        .collect::<String>()
        .into_bytes()
}

struct QueueRun {
    events_per_s: f64,
    cpu_us_per_event: f64,
    lag_p50: f64,
    lag_p99: f64,
}

/// Publishes `o.events` events in messages of `per_message` to a new stream and measures
/// until the consumer has made the last one durable: from the first publish, with the
/// consumer running meanwhile; or, with `prefill`, from the consumer's start once everything
/// is published (lags are then meaningless).
fn queue_run(
    runtime: &tokio::runtime::Runtime,
    o: &Opts,
    signer: &NoteSigner,
    per_message: usize,
    prefill: bool,
) -> Result<QueueRun> {
    let dir = o.dir.join(format!("queue-{per_message}-{prefill}"));
    let (store, _) = EmbeddedStore::open(&dir.join("log"), Some(signer.clone()))?;
    let store = Arc::new(store);
    let tag = format!(
        "{}_{per_message}_{}",
        std::process::id(),
        Instant::now().elapsed().as_nanos()
    );
    let stream = format!("BENCH_{tag}");
    let subject = format!("bench.{tag}.events");
    let url = IngestUrl::parse(&format!("{}/{stream}?subject={subject}", o.nats))
        .map_err(|e| anyhow!("{e}"))?;
    let start_consumers = || -> Result<Consumers> {
        let dyn_store: Arc<dyn Store> = store.clone();
        let consumers = {
            let _inside = runtime.enter();
            Consumers::start(std::slice::from_ref(&url), dyn_store, Settings::default())
                .map_err(|e| anyhow!("{e}"))?
        };
        let stats = consumers.stats()[0].clone();
        let ready = Instant::now();
        while !stats.connected() {
            if ready.elapsed() > Duration::from_secs(20) {
                bail!("the consumer did not connect to {} within 20 s", o.nats);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(consumers)
    };
    // The stream exists before the first publish.
    let mut consumers = Some(start_consumers()?);
    if prefill {
        if let Some(c) = consumers.take() {
            runtime.block_on(c.stop(Duration::from_secs(10)));
        }
    }
    let client = runtime
        .block_on(async_nats::connect(o.nats.as_str()))
        .with_context(|| format!("connecting to {}", o.nats))?;
    let js = jetstream::new(client);

    // When each event became durable: the tree size, polled.
    let total = o.events as u64;
    let done = Arc::new(AtomicBool::new(false));
    let poller = {
        let (store, done) = (store.clone(), done.clone());
        std::thread::spawn(move || {
            let mut seen: Vec<(Instant, u64)> = Vec::new();
            let mut last = 0;
            while !done.load(Ordering::Relaxed) {
                let size = store.tree_size();
                if size != last {
                    seen.push((Instant::now(), size));
                    last = size;
                    if size >= total {
                        break;
                    }
                }
                std::thread::sleep(Duration::from_micros(200));
            }
            seen
        })
    };

    let messages = o.events.div_ceil(per_message);
    let cpu = process_cpu_seconds();
    let start = Instant::now();
    let published: Vec<Instant> = runtime.block_on(async {
        let mut sent = Vec::with_capacity(messages);
        let mut acks = std::collections::VecDeque::new();
        for m in 0..messages {
            let (from, to) = (m * per_message, ((m + 1) * per_message).min(o.events));
            let mut headers = async_nats::HeaderMap::new();
            let content_type = if per_message == 1 {
                "application/json"
            } else {
                "application/x-ndjson"
            };
            headers.insert("Content-Type", content_type);
            let body = if per_message == 1 {
                event_line(from).into_bytes()
            } else {
                ndjson(from, to)
            };
            sent.push(Instant::now());
            acks.push_back(
                js.publish_with_headers(subject.clone(), headers, body.into())
                    .await?,
            );
            if acks.len() >= 1024 {
                if let Some(ack) = acks.pop_front() {
                    ack.await?;
                }
            }
        }
        for ack in acks {
            ack.await?;
        }
        Ok::<_, anyhow::Error>(sent)
    })?;
    let (start, consumers) = match consumers {
        Some(c) => (start, c),
        None => (Instant::now(), start_consumers()?),
    };
    let seen = poller.join().map_err(|_| anyhow!("the poller panicked"))?;
    done.store(true, Ordering::Relaxed);
    let end = seen
        .last()
        .map(|(t, _)| *t)
        .context("nothing became durable")?;
    let secs = end.duration_since(start).as_secs_f64();
    let cpu_us = cpu_us_per_event(cpu, o.events);

    // Event i is durable at the first poll that saw the tree hold more than i events.
    let mut lags = Vec::with_capacity(o.events);
    let mut at = 0;
    for i in 0..o.events {
        while at < seen.len() && seen[at].1 <= i as u64 {
            at += 1;
        }
        let Some((durable, _)) = seen.get(at) else {
            break;
        };
        let sent = published[i / per_message];
        lags.push(durable.saturating_duration_since(sent).as_secs_f64());
    }
    lags.sort_by(f64::total_cmp);

    runtime.block_on(consumers.stop(Duration::from_secs(10)));
    runtime.block_on(async {
        let _ = js.delete_stream(&stream).await;
        let _ = js.delete_stream(format!("{stream}_DEAD")).await;
    });
    store.close()?;
    Ok(QueueRun {
        events_per_s: o.events as f64 / secs,
        cpu_us_per_event: cpu_us,
        lag_p50: pct(&lags, 0.50),
        lag_p99: pct(&lags, 0.99),
    })
}
