//! The ingest benchmark: durable appends of ~300-byte prediction events in batches of 1,000
//! through the whole user path (parse, validate, encode, hash, write, fsync), against SQLite
//! (WAL, SHA-256 hash chain column) and plain JSONL with an fsync per batch; then full verify
//! throughput, inclusion proof latency at given tree sizes, and bytes on disk per event.

use anyhow::{bail, Context, Result};
use mlaudit_core::note::NoteSigner;
use mlaudit_embedded::EmbeddedStore;
use mlaudit_store::ingest::prepare_lines;
use mlaudit_store::prelude::*;
use mlaudit_store::{proofs, verify};
use serde_json::json;
use sha2::{Digest, Sha256};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

pub const BATCH: usize = 1000;
/// Concurrent clients, by default (`--clients`).
const PRODUCERS: usize = 2;

struct Opts {
    events: usize,
    proof_sizes: Vec<usize>,
    dir: PathBuf,
    only_mlaudit: bool,
    clients: usize,
}

fn parse(args: &[String]) -> Result<Opts> {
    let mut o = Opts {
        events: 1_000_000,
        proof_sizes: vec![1_000_000, 10_000_000],
        dir: std::env::temp_dir().join(format!("mlaudit-bench-{}", std::process::id())),
        only_mlaudit: false,
        clients: PRODUCERS,
    };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut val = || {
            it.next()
                .cloned()
                .with_context(|| format!("{a} needs a value"))
        };
        match a.as_str() {
            "--events" => o.events = val()?.parse()?,
            "--proof-sizes" => {
                o.proof_sizes = val()?
                    .split(',')
                    .map(|s| s.trim().parse())
                    .collect::<Result<_, _>>()?
            }
            "--dir" => o.dir = PathBuf::from(val()?),
            "--only-mlaudit" => o.only_mlaudit = true,
            "--clients" => o.clients = val()?.parse::<usize>()?.max(1),
            other => bail!("unknown option {other}"),
        }
    }
    Ok(o)
}

pub fn emit_ingest(engine: &str, metric: &str, value: f64, extra: serde_json::Value) {
    emit("ingest", engine, metric, value, extra);
}

/// Prints one figure as a JSON line.
pub fn emit(bench: &str, engine: &str, metric: &str, value: f64, extra: serde_json::Value) {
    let mut line = json!({ "bench": bench, "engine": engine, "metric": metric, "value": (value * 1000.0).round() / 1000.0 });
    if let (Some(l), Some(e)) = (line.as_object_mut(), extra.as_object()) {
        l.extend(e.clone());
    }
    println!("{line}");
}

/// CPU seconds this process has used so far, all threads, user and system (from
/// `/proc/self/stat`, in ticks of 1/100 s); `None` where that file cannot be read.
pub fn process_cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the parenthesised command name: state is field 3, utime 14, stime 15.
    let mut rest = stat.get(stat.rfind(')')? + 1..)?.split_whitespace();
    let utime: u64 = rest.nth(11)?.parse().ok()?;
    let stime: u64 = rest.next()?.parse().ok()?;
    Some((utime + stime) as f64 / 100.0)
}

/// CPU microseconds per event between two [`process_cpu_seconds`] readings.
pub fn cpu_us_per_event(before: Option<f64>, events: usize) -> f64 {
    match (before, process_cpu_seconds()) {
        (Some(b), Some(a)) if events > 0 => (a - b) * 1e6 / events as f64,
        _ => f64::NAN,
    }
}

/// One realistic prediction event of about 300 bytes.
pub fn event_line(i: usize) -> String {
    let r = (i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    format!(
        concat!(
            r#"{{"id":"{}","time":"2026-11-26T12:{:02}:{:02}.{:03}Z","kind":"prediction.served","actor":{{"id":"scoring-api","type":"service"}},"#,
            r#""subject":{{"model":"credit-risk","version":"7","request":"r{:08}"}},"attributes":{{"inputs":{{"income":{},"debt":0.{:02}}},"#,
            r#""outputs":{{"score":0.{:03}}},"latency_ms":{},"sample_rate":1.0}}}}"#
        ),
        uuid::Uuid::from_u64_pair(r, i as u64),
        (i / 60_000) % 60,
        (i / 1000) % 60,
        i % 1000,
        i,
        20_000 + r % 130_000,
        r % 100,
        r % 1000,
        3 + r % 9
    )
}

fn batches(from: usize, to: usize) -> Vec<Vec<String>> {
    (from..to)
        .step_by(BATCH)
        .map(|s| (s..(s + BATCH).min(to)).map(event_line).collect())
        .collect()
}

/// Appends batches from [`PRODUCERS`] threads, each parsing and validating its batch, as
/// concurrent clients would. Returns seconds.
pub fn ingest_store(store: &EmbeddedStore, batches: &[Vec<String>]) -> Result<f64> {
    ingest_store_with(store, batches, PRODUCERS)
}

/// [`ingest_store`] from `clients` threads.
pub fn ingest_store_with(
    store: &EmbeddedStore,
    batches: &[Vec<String>],
    clients: usize,
) -> Result<f64> {
    let next = AtomicUsize::new(0);
    let t = Instant::now();
    std::thread::scope(|s| -> Result<()> {
        let workers: Vec<_> = (0..clients)
            .map(|_| {
                s.spawn(|| -> Result<()> {
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        let Some(batch) = batches.get(i) else {
                            return Ok(());
                        };
                        let lines: Vec<(usize, &str)> = batch
                            .iter()
                            .enumerate()
                            .map(|(n, l)| (n + 1, l.as_str()))
                            .collect();
                        let events = prepare_lines(&lines, "bench", 1)
                            .map_err(|e| anyhow::anyhow!("{:?}", e.first()))?;
                        store.append(events)?;
                    }
                })
            })
            .collect();
        for w in workers {
            w.join()
                .map_err(|_| anyhow::anyhow!("producer panicked"))??;
        }
        Ok(())
    })?;
    Ok(t.elapsed().as_secs_f64())
}

/// The JSONL floor: appends the batches' lines to a file with one `fdatasync` per batch, then
/// removes it. Returns seconds.
pub fn ingest_jsonl(dir: &Path, batches: &[Vec<String>]) -> Result<f64> {
    let path = dir.join("baseline.jsonl");
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)?;
    let t = Instant::now();
    let mut buf = Vec::with_capacity(BATCH * 400);
    for b in batches {
        buf.clear();
        for l in b {
            buf.extend_from_slice(l.as_bytes());
            buf.push(b'\n');
        }
        f.write_all(&buf)?;
        f.sync_data()?;
    }
    let secs = t.elapsed().as_secs_f64();
    std::fs::remove_file(path)?;
    Ok(secs)
}

/// What this disk takes when the CPU does nothing else, for a log that stores
/// `bytes_per_event` per event: batches of that many bytes (no parsing, hashing or indexing)
/// written by one thread while another `fdatasync`s without pause, so that the disk is never
/// idle waiting for the CPU. An estimate of the ceiling for that many bytes, not a proof: it
/// is one sequential file and one way of syncing. Returns seconds.
fn disk_ceiling(dir: &Path, bytes_per_event: usize, events: usize) -> Result<f64> {
    let path = dir.join("ceiling.bin");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .open(&path)?;
    let chunk: Vec<u8> = (0..bytes_per_event.max(1) * BATCH)
        .map(|i| (i * 31 % 251) as u8)
        .collect();
    let writing = std::sync::atomic::AtomicBool::new(true);
    let t = Instant::now();
    std::thread::scope(|s| -> Result<()> {
        let syncer = s.spawn(|| -> std::io::Result<()> {
            while writing.load(Ordering::Relaxed) {
                file.sync_data()?;
            }
            Ok(())
        });
        let wrote = (0..events.div_ceil(BATCH)).try_for_each(|_| (&file).write_all(&chunk));
        writing.store(false, Ordering::Relaxed);
        syncer
            .join()
            .map_err(|_| anyhow::anyhow!("syncer panicked"))??;
        wrote?;
        file.sync_data()?;
        Ok(())
    })?;
    let secs = t.elapsed().as_secs_f64();
    std::fs::remove_file(path)?;
    Ok(secs)
}

fn ingest_sqlite(dir: &Path, batches: &[Vec<String>]) -> Result<f64> {
    let path = dir.join("baseline.sqlite");
    let mut db = rusqlite::Connection::open(&path)?;
    db.pragma_update(None, "journal_mode", "WAL")?;
    db.pragma_update(None, "synchronous", "FULL")?;
    db.execute(
        "CREATE TABLE events (seq INTEGER PRIMARY KEY, body TEXT NOT NULL, chain BLOB NOT NULL)",
        [],
    )?;
    let mut prev = [0u8; 32];
    let t = Instant::now();
    for b in batches {
        let tx = db.transaction()?;
        {
            let mut st = tx.prepare_cached("INSERT INTO events (body, chain) VALUES (?1, ?2)")?;
            for l in b {
                let mut h = Sha256::new();
                h.update(prev);
                h.update(l.as_bytes());
                prev = h.finalize().into();
                st.execute(rusqlite::params![l, &prev[..]])?;
            }
        }
        tx.commit()?;
    }
    let secs = t.elapsed().as_secs_f64();
    drop(db);
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
    }
    Ok(secs)
}

fn dir_bytes(dir: &Path, only_segments: bool) -> Result<u64> {
    let mut total = 0;
    for e in std::fs::read_dir(dir)? {
        let e = e?;
        let name = e.file_name().to_string_lossy().into_owned();
        if !only_segments || name.starts_with("seg-") {
            total += e.metadata()?.len();
        }
    }
    Ok(total)
}

fn proof_latency(store: &EmbeddedStore, size: usize, round: u64) -> Result<()> {
    let samples = 2000usize;
    let mut lat = Vec::with_capacity(samples);
    let mut x = 0x2545_f491_4f6c_dd1du64 ^ round.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    for _ in 0..samples {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let seq = x % size as u64;
        let t = Instant::now();
        let b = proofs::inclusion_bundle(store, seq)?;
        lat.push(t.elapsed().as_secs_f64() * 1e6);
        if b.tree_size != store.tree_size() {
            bail!("bundle for the wrong size");
        }
    }
    lat.sort_by(f64::total_cmp);
    let pct = |p: f64| lat[((lat.len() as f64 * p) as usize).min(lat.len() - 1)];
    let extra = json!({ "entries": size, "samples": samples, "round": round, "includes": "event read, path, checkpoint" });
    emit_ingest(
        "mlaudit",
        "inclusion_proof_p50_us",
        pct(0.50),
        extra.clone(),
    );
    emit_ingest("mlaudit", "inclusion_proof_p99_us", pct(0.99), extra);
    Ok(())
}

/// Appends `input` from `o.clients` threads and prints mlaudit's events/s and CPU per event;
/// returns events/s.
fn measure_mlaudit(
    store: &EmbeddedStore,
    input: &[Vec<String>],
    o: &Opts,
    ctx: serde_json::Value,
) -> Result<f64> {
    let cpu = process_cpu_seconds();
    let rate = o.events as f64 / ingest_store_with(store, input, o.clients)?;
    emit_ingest("mlaudit", "events_per_s", rate, ctx.clone());
    emit_ingest(
        "mlaudit",
        "cpu_us_per_event",
        cpu_us_per_event(cpu, o.events),
        ctx,
    );
    Ok(rate)
}

pub fn run(args: &[String]) -> Result<()> {
    let o = parse(args)?;
    std::fs::create_dir_all(&o.dir)?;
    let store_dir = o.dir.join("log");
    let _ = std::fs::remove_dir_all(&store_dir);
    let signer = NoteSigner::from_seed("bench.mlaudit.local", [7; 32])
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let (store, _) = EmbeddedStore::open(&store_dir, Some(signer.clone()))?;
    let input = batches(0, o.events);
    let bytes: usize = input.iter().flatten().map(|l| l.len()).sum();
    let ctx =
        json!({ "events": o.events, "batch": BATCH, "avg_event_bytes": bytes / o.events.max(1) });
    let mut ours_ctx = ctx.clone();
    ours_ctx["clients"] = o.clients.into();

    if o.only_mlaudit {
        measure_mlaudit(&store, &input, &o, ours_ctx)?;
        return Ok(());
    }
    let jsonl = o.events as f64 / ingest_jsonl(&o.dir, &input)?;
    emit_ingest("jsonl", "events_per_s", jsonl, ctx.clone());
    let sqlite_events = o.events.min(200_000);
    let sqlite =
        sqlite_events as f64 / ingest_sqlite(&o.dir, &input[..sqlite_events.div_ceil(BATCH)])?;
    emit_ingest(
        "sqlite",
        "events_per_s",
        sqlite,
        json!({ "events": sqlite_events, "batch": BATCH }),
    );
    let ours = measure_mlaudit(&store, &input, &o, ours_ctx)?;
    emit_ingest("mlaudit", "ratio_vs_jsonl", ours / jsonl, json!({}));
    emit_ingest("mlaudit", "ratio_vs_sqlite", ours / sqlite, json!({}));
    drop(input);

    let disk = dir_bytes(&store_dir, false)? as f64 / o.events.max(1) as f64;
    let seg = dir_bytes(&store_dir, true)? as f64 / o.events.max(1) as f64;
    emit_ingest(
        "mlaudit",
        "bytes_per_event",
        disk,
        json!({ "segments_only": (seg * 10.0).round() / 10.0, "json_bytes": bytes / o.events.max(1) }),
    );
    // The store's derived files are written back lazily: let the disk finish them first, so
    // that the ceiling is not measured against that writeback.
    let _ = std::process::Command::new("sync").status();
    std::thread::sleep(std::time::Duration::from_secs(1));
    for (bytes_per_event, what) in [
        (disk, "all of the log's bytes"),
        (seg, "segment bytes only"),
    ] {
        let ceiling =
            o.events as f64 / disk_ceiling(&o.dir, bytes_per_event.round() as usize, o.events)?;
        emit_ingest(
            "disk_ceiling",
            "events_per_s",
            ceiling,
            json!({ "events": o.events, "batch": BATCH, "bytes_per_event": bytes_per_event.round(), "bytes": what }),
        );
    }

    let key = signer.verifier();
    let t = Instant::now();
    let report =
        verify::verify(&store, &key, &mut |_, _| {}).map_err(|f| anyhow::anyhow!("{f}"))?;
    emit_ingest(
        "mlaudit",
        "verify_entries_per_s",
        report.events as f64 / t.elapsed().as_secs_f64(),
        json!({ "entries": report.events }),
    );

    let mut have = o.events;
    for size in o.proof_sizes {
        while have < size {
            let to = (have + 100 * BATCH).min(size);
            ingest_store(&store, &batches(have, to))?;
            have = to;
        }
        // Round 1 right after the appends (the kernel still writing them back), round 2 on
        // other seqs after a pause: the difference is the page cache and writeback, not proofs.
        proof_latency(&store, have, 1)?;
        std::thread::sleep(std::time::Duration::from_secs(3));
        proof_latency(&store, have, 2)?;
    }
    store.close()?;
    drop(store);
    std::fs::remove_dir_all(&o.dir).with_context(|| format!("removing {}", o.dir.display()))?;
    Ok(())
}

/// Single-threaded validation cost per event and its components, beside a `serde_json::Value`
/// parse of the same lines (a diagnostic for the ingest figure).
pub fn prepare_only(args: &[String]) -> Result<()> {
    let o = parse(args)?;
    let lines: Vec<String> = (0..o.events.min(1_000_000)).map(event_line).collect();
    let t = Instant::now();
    let mut n = 0usize;
    for l in &lines {
        n += mlaudit_core::event::prepare(l, "bench")
            .map(|e| e.payload.len())
            .unwrap_or(0);
    }
    let per = t.elapsed().as_secs_f64() / lines.len() as f64;
    emit_ingest(
        "mlaudit",
        "prepare_ns_per_event",
        per * 1e9,
        json!({ "bytes": n }),
    );
    // Components, for diagnosis.
    let t = Instant::now();
    let mut acc = 0u8;
    for l in &lines {
        acc ^= mlaudit_core::merkle::sha256(l.as_bytes())[0];
    }
    emit_ingest(
        "mlaudit",
        "sha256_ns_per_event",
        t.elapsed().as_secs_f64() / lines.len() as f64 * 1e9,
        json!({ "x": acc }),
    );
    let t = Instant::now();
    let mut k = 0usize;
    for l in &lines {
        k += serde_json::from_str::<serde_json::Value>(l)
            .map(|v| v.as_object().map_or(0, |o| o.len()))
            .unwrap_or(0);
    }
    emit_ingest(
        "serde_json_value",
        "parse_ns_per_event",
        t.elapsed().as_secs_f64() / lines.len() as f64 * 1e9,
        json!({ "x": k }),
    );
    let times: Vec<String> = (0..3600)
        .map(|i| format!("2026-11-26T12:{:02}:{:02}.123Z", i / 60, i % 60))
        .collect();
    let t = Instant::now();
    let mut k = 0i64;
    for i in 0..lines.len() {
        k += mlaudit_core::event::parse_time(&times[i % times.len()]).unwrap_or(0) % 7;
    }
    emit_ingest(
        "time_rfc3339",
        "parse_ns_per_event",
        t.elapsed().as_secs_f64() / lines.len() as f64 * 1e9,
        json!({ "x": k }),
    );
    Ok(())
}

/// Verify throughput alone (a diagnostic): ingest `--events` untimed, then verify three times.
pub fn verify_only(args: &[String]) -> Result<()> {
    let o = parse(args)?;
    let dir = o.dir.join("log");
    let _ = std::fs::remove_dir_all(&o.dir);
    let signer = NoteSigner::from_seed("bench.mlaudit.local", [7; 32])
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let (store, _) = EmbeddedStore::open(&dir, Some(signer.clone()))?;
    ingest_store(&store, &batches(0, o.events))?;
    eprintln!("ingested {}; verifying", o.events);
    for _ in 0..3 {
        let t = Instant::now();
        let report = verify::verify(&store, &signer.verifier(), &mut |_, _| {})
            .map_err(|f| anyhow::anyhow!("{f}"))?;
        emit_ingest(
            "mlaudit",
            "verify_entries_per_s",
            report.events as f64 / t.elapsed().as_secs_f64(),
            json!({ "entries": report.events }),
        );
    }
    store.close()?;
    drop(store);
    std::fs::remove_dir_all(&o.dir)?;
    Ok(())
}
