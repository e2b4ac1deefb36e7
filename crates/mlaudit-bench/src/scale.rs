//! `mlaudit-bench scale`: builds a log of N prediction events with a model lifecycle around
//! them (data, training, registry, deployment for each of ten model versions) and reports, at
//! 1 M, 10 M and N events: resident memory after open and open time (in a fresh process, after
//! dropping the page cache where permitted), durable ingest events/s and CPU-µs per event (beside
//! a JSONL floor measured in the same run), bytes per event on disk against the raw JSON, and
//! `get` by id, query by model and time, lineage and inclusion proof latencies (p50/p99), and a
//! full `verify` in entries/s.

use crate::ingest::{cpu_us_per_event, emit, ingest_jsonl, ingest_store, process_cpu_seconds};
use anyhow::{Context, Result};
use mlaudit_core::note::NoteSigner;
use mlaudit_embedded::EmbeddedStore;
use mlaudit_store::prelude::*;
use mlaudit_store::{lineage, proofs, verify, Query};
use serde_json::json;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Model versions the predictions are spread over (each with its own lifecycle).
const VERSIONS: usize = 10;
/// Events generated and appended at a time (few, so that the input does not dominate the
/// process's memory).
const CHUNK: usize = 1 << 16;
/// Events the JSONL floor writes at each mark.
const FLOOR_EVENTS: usize = 1 << 20;
/// Nanoseconds between predictions.
const STEP_NS: i64 = 20_000_000;
const START_NS: i64 = 1_780_000_000_000_000_000;
/// The high half of every lifecycle event's id (predictions' ids are random).
const LIFECYCLE_IDS: u64 = 0x6c69_6665_6379_636c;
/// Random lookups per latency figure.
const SAMPLES: usize = 2000;

struct Opts {
    events: usize,
    dir: PathBuf,
}

fn parse(args: &[String]) -> Result<Opts> {
    let mut o = Opts {
        events: 50_000_000,
        dir: std::env::temp_dir().join("mlaudit-bench-scale"),
    };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut val = || it.next().context(format!("{a} needs a value"));
        match a.as_str() {
            "--events" => o.events = val()?.parse()?,
            "--dir" => o.dir = PathBuf::from(val()?),
            other => anyhow::bail!("unknown option {other}"),
        }
    }
    Ok(o)
}

fn version_of(i: usize, n: usize) -> usize {
    1 + i * VERSIONS / n.max(1)
}

fn uuid_of(i: usize, salt: u64) -> uuid::Uuid {
    let r = (i as u64 ^ salt).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    uuid::Uuid::from_u64_pair(r ^ (r >> 29), (i as u64) ^ salt)
}

fn time_of(i: usize) -> String {
    mlaudit_core::event::format_time(START_NS + i as i64 * STEP_NS)
}

/// Prediction `i` of `n`: about 360 bytes of JSON.
fn prediction(i: usize, n: usize) -> String {
    let r = (i as u64).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    format!(
        concat!(
            r#"{{"id":"{}","time":"{}","kind":"prediction.served","actor":{{"id":"scoring-api","type":"service"}},"#,
            r#""subject":{{"model":"credit-risk","version":"{}","deployment":"credit-scoring-prod","request":"r{:010}"}},"#,
            r#""attributes":{{"inputs":{{"income":{},"debt_ratio":0.{:02},"region":"{}"}},"outputs":{{"score":0.{:03},"decision":"{}"}},"latency_ms":{},"sample_rate":1.0}}}}"#
        ),
        uuid_of(i, 0),
        time_of(i),
        version_of(i, n),
        i,
        20_000 + r % 130_000,
        r % 100,
        ["north", "south", "east", "west"][(r % 4) as usize],
        r % 1000,
        if r.is_multiple_of(3) {
            "refer"
        } else {
            "approve"
        },
        3 + r % 9
    )
}

/// The lifecycle of model version `v` before its first prediction (at `i`).
fn lifecycle(v: usize, i: usize) -> Vec<String> {
    let run = format!("run-{v}");
    let t = time_of(i);
    let ev = |k: usize, kind: &str, actor: &str, subject: String, attrs: &str| {
        format!(
            r#"{{"id":"{}","time":"{t}","kind":"{kind}","actor":{{"id":"{actor}","type":"service"}},"subject":{subject},"attributes":{attrs}}}"#,
            uuid::Uuid::from_u64_pair(LIFECYCLE_IDS, (v * 100 + k) as u64)
        )
    };
    let mv = format!(r#"{{"model":"credit-risk","version":"{v}"}}"#);
    vec![
        ev(
            0,
            "data.source_accessed",
            "etl",
            r#"{"dataset":"applications"}"#.into(),
            r#"{"source":"s3://bank/raw.parquet"}"#,
        ),
        ev(
            1,
            "data.snapshot_created",
            "etl",
            format!(r#"{{"dataset":"applications","dataset_version":"s{v}"}}"#),
            r#"{"rows":118432,"content_sha256":"9f2c5d1e8a7b6c4d3e2f1a0b9c8d7e6f5a4b3c2d1e0f9a8b7c6d5e4f3a2b1c0d"}"#,
        ),
        ev(
            2,
            "training.run_started",
            "trainer",
            format!(r#"{{"run":"{run}","model":"credit-risk"}}"#),
            r#"{"hyperparameters":{"max_depth":6},"random_seed":42,"datasets":["applications@s1"]}"#,
        ),
        ev(
            3,
            "training.checkpoint_evaluated",
            "trainer",
            format!(r#"{{"run":"{run}"}}"#),
            r#"{"step":400,"metrics":{"auc":0.86}}"#,
        ),
        ev(
            4,
            "training.run_completed",
            "trainer",
            format!(r#"{{"run":"{run}"}}"#),
            r#"{"status":"succeeded","duration_s":4560,"compute":{"cpu_hours":12.5}}"#,
        ),
        ev(
            5,
            "registry.model_registered",
            "registry",
            format!(r#"{{"model":"credit-risk","version":"{v}","run":"{run}"}}"#),
            r#"{"artifact_sha256":"9f2c5d1e8a7b6c4d3e2f1a0b9c8d7e6f5a4b3c2d1e0f9a8b7c6d5e4f3a2b1c0d"}"#,
        ),
        ev(
            6,
            "registry.approval_granted",
            "registry",
            mv.clone(),
            r#"{"approver":{"id":"maria","role":"model-risk-officer"},"reason":"validated"}"#,
        ),
        ev(
            7,
            "registry.stage_changed",
            "registry",
            mv.clone(),
            r#"{"from_stage":"staging","to_stage":"production"}"#,
        ),
        ev(
            8,
            "operations.deployed",
            "deploy-bot",
            format!(
                r#"{{"deployment":"credit-scoring-prod","model":"credit-risk","version":"{v}"}}"#
            ),
            r#"{"environment":"production"}"#,
        ),
    ]
}

/// The lines of events `from..to` of `n` predictions (lifecycles included where a version
/// starts), in batches; and their bytes.
fn lines(from: usize, to: usize, n: usize) -> (Vec<Vec<String>>, usize) {
    let mut all = Vec::with_capacity(to - from + 16);
    for i in from..to {
        if i == 0 || version_of(i, n) != version_of(i - 1, n) {
            all.extend(lifecycle(version_of(i, n), i));
        }
        all.push(prediction(i, n));
    }
    let bytes = all.iter().map(|l| l.len() + 1).sum();
    let batches = all
        .chunks(crate::ingest::BATCH)
        .map(<[String]>::to_vec)
        .collect();
    (batches, bytes)
}

fn rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

fn signer() -> Result<NoteSigner> {
    NoteSigner::from_seed("bench.mlaudit.local", [7; 32]).map_err(|e| anyhow::anyhow!("{e}"))
}

fn dir_bytes(dir: &Path) -> Result<u64> {
    let mut n = 0;
    for e in std::fs::read_dir(dir)? {
        let m = e?.metadata()?;
        if m.is_file() {
            n += m.len();
        }
    }
    Ok(n)
}

pub fn run(args: &[String]) -> Result<()> {
    let o = parse(args)?;
    let _ = std::fs::remove_dir_all(&o.dir);
    std::fs::create_dir_all(&o.dir)?;
    let log = o.dir.join("log");
    let n = o.events;
    let mut marks: Vec<usize> = [1_000_000, 10_000_000]
        .into_iter()
        .filter(|m| *m < n)
        .collect();
    marks.push(n);

    let (mut done, mut json_bytes, mut stored) = (0usize, 0usize, 0usize);
    for mark in marks {
        let (store, _) = EmbeddedStore::open(&log, Some(signer()?))?;
        let (mut secs, cpu) = (0.0, process_cpu_seconds());
        let before = stored;
        while done < mark {
            let to = (done + CHUNK).min(mark);
            let (batches, bytes) = lines(done, to, n);
            stored += batches.iter().map(Vec::len).sum::<usize>();
            json_bytes += bytes;
            secs += ingest_store(&store, &batches)?;
            done = to;
            eprintln!("scale: {done} of {n} predictions appended");
        }
        let ctx = json!({ "events": stored, "predictions": mark });
        let appended = stored - before;
        let rate = appended as f64 / secs;
        let ingest_rss = rss_bytes() as f64 / 1048576.0;
        // The floor on the same disk in the same state (the page cache as full as the log left
        // it), so that the ratio compares like with like.
        let (floor_input, _) = lines(0, FLOOR_EVENTS.min(n), n);
        let floor_events: usize = floor_input.iter().map(Vec::len).sum();
        let floor = floor_events as f64 / ingest_jsonl(&o.dir, &floor_input)?;
        drop(floor_input);
        emit(
            "scale",
            "jsonl",
            "events_per_s",
            floor,
            json!({ "events": floor_events, "predictions": mark }),
        );
        emit("scale", "mlaudit", "ingest_events_per_s", rate, ctx.clone());
        emit(
            "scale",
            "mlaudit",
            "ingest_ratio_vs_jsonl",
            rate / floor,
            ctx.clone(),
        );
        emit(
            "scale",
            "mlaudit",
            "cpu_us_per_event",
            cpu_us_per_event(cpu, appended),
            ctx.clone(),
        );
        emit(
            "scale",
            "mlaudit",
            "ingest_rss_mib",
            ingest_rss,
            ctx.clone(),
        );
        // Packs the last sealed segments and makes the merges due, as a running server would.
        store.settle();
        store.close()?;
        drop(store);
        let per_event = dir_bytes(&log)? as f64 / stored as f64;
        let raw = json_bytes as f64 / stored as f64;
        emit(
            "scale",
            "mlaudit",
            "bytes_per_event",
            per_event,
            json!({ "events": stored, "json_bytes": raw.round() }),
        );
        emit(
            "scale",
            "mlaudit",
            "bytes_ratio_vs_json",
            per_event / raw,
            ctx.clone(),
        );
        probe(&log, mark)?;
    }
    std::fs::remove_dir_all(&o.dir).with_context(|| format!("removing {}", o.dir.display()))?;
    Ok(())
}

/// Runs the read figures in a fresh process (`scale-probe`), so that open time and memory are
/// those of a process that opens the log, not of the one that wrote it.
fn probe(log: &Path, predictions: usize) -> Result<()> {
    let status = std::process::Command::new(std::env::current_exe()?)
        .args(["scale-probe", "--dir"])
        .arg(log)
        .args(["--predictions", &predictions.to_string()])
        .status()?;
    anyhow::ensure!(status.success(), "scale-probe failed: {status}");
    Ok(())
}

/// Drops the page cache if this process may (root, writable /proc/sys); says which.
fn drop_page_cache() -> &'static str {
    let _ = std::process::Command::new("sync").status();
    match std::fs::write("/proc/sys/vm/drop_caches", "3") {
        Ok(()) => "dropped",
        Err(_) => "not dropped (not permitted)",
    }
}

fn percentiles(mut v: Vec<f64>) -> (f64, f64) {
    v.sort_by(f64::total_cmp);
    let at = |p: f64| {
        v.get(((v.len() as f64 * p) as usize).min(v.len().saturating_sub(1)))
            .copied()
            .unwrap_or(f64::NAN)
    };
    (at(0.5), at(0.99))
}

/// Times `f` on `SAMPLES` random predictions; emits p50 and p99 in microseconds.
fn latency(
    name: &str,
    ctx: &serde_json::Value,
    predictions: usize,
    mut f: impl FnMut(usize) -> Result<()>,
) -> Result<()> {
    let mut x = 0x2545_f491_4f6c_dd1du64;
    let mut us = Vec::with_capacity(SAMPLES);
    for _ in 0..SAMPLES {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let i = (x % predictions as u64) as usize;
        let t = Instant::now();
        f(i)?;
        us.push(t.elapsed().as_secs_f64() * 1e6);
    }
    let (p50, p99) = percentiles(us);
    emit(
        "scale",
        "mlaudit",
        &format!("{name}_p50_us"),
        p50,
        ctx.clone(),
    );
    emit(
        "scale",
        "mlaudit",
        &format!("{name}_p99_us"),
        p99,
        ctx.clone(),
    );
    Ok(())
}

/// `scale-probe --dir LOG --predictions P`: open, memory and read figures.
pub fn probe_main(args: &[String]) -> Result<()> {
    let mut it = args.iter();
    let (mut dir, mut predictions) = (PathBuf::new(), 0usize);
    while let Some(a) = it.next() {
        let v = it.next().context(format!("{a} needs a value"))?;
        match a.as_str() {
            "--dir" => dir = PathBuf::from(v),
            "--predictions" => predictions = v.parse()?,
            other => anyhow::bail!("unknown option {other}"),
        }
    }
    let cache = drop_page_cache();
    let rss_before = rss_bytes();
    let t = Instant::now();
    let (store, _) = EmbeddedStore::open(&dir, None)?;
    let open_s = t.elapsed().as_secs_f64();
    let rss = rss_bytes();
    let ctx =
        json!({ "events": store.tree_size(), "predictions": predictions, "page_cache": cache });
    emit("scale", "mlaudit", "open_s", open_s, ctx.clone());
    emit(
        "scale",
        "mlaudit",
        "rss_after_open_mib",
        rss as f64 / 1048576.0,
        json!({ "events": store.tree_size(), "process_before_open_mib": rss_before / 1048576 }),
    );
    latency("get_by_id", &ctx, predictions, |i| {
        let id = mlaudit_core::EventId(*uuid_of(i, 0).as_bytes());
        let seq = store
            .seq_of(&id)?
            .context("a prediction's id is not found")?;
        store.event(seq)?;
        Ok(())
    })?;
    latency("query_model_time", &ctx, predictions, |i| {
        let since = START_NS + i as i64 * STEP_NS;
        let q = Query {
            model: Some("credit-risk".into()),
            since_ns: Some(since),
            until_ns: Some(since + 60_000_000_000),
            limit: 100,
            ..Query::default()
        };
        anyhow::ensure!(
            !store.query(&q)?.is_empty(),
            "no prediction in a minute's window"
        );
        Ok(())
    })?;
    let seq_of = |i: usize| -> Result<u64> {
        let id = mlaudit_core::EventId(*uuid_of(i, 0).as_bytes());
        store.seq_of(&id)?.context("a prediction's id is not found")
    };
    latency("lineage", &ctx, predictions, |i| {
        let l = lineage::lineage(&store, seq_of(i)?)?;
        anyhow::ensure!(
            !l.registry.is_empty() && !l.training.is_empty(),
            "an incomplete lineage"
        );
        Ok(())
    })?;
    latency("inclusion_proof", &ctx, predictions, |i| {
        proofs::inclusion_bundle(&store, seq_of(i)?)?;
        Ok(())
    })?;
    let t = Instant::now();
    let key = signer()?.verifier();
    let report =
        verify::verify(&store, &key, &mut |_, _| {}).map_err(|f| anyhow::anyhow!("{f}"))?;
    emit(
        "scale",
        "mlaudit",
        "verify_entries_per_s",
        report.events as f64 / t.elapsed().as_secs_f64(),
        ctx,
    );
    Ok(())
}
