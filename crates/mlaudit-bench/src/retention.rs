//! `mlaudit-bench retention`: the tiers of one log of N predictions. Archive throughput to a
//! local directory and to an S3-compatible server (moto, started by
//! `scripts/s3-test-server.sh`), beside a plain copy of the segment files to the same disk;
//! bytes per event in the hot (raw segment), warm (packed segment) and cold (archive) tiers;
//! `get` and inclusion-proof latency (p50/p99) from each tier, cold meaning payloads moved off
//! the server and fetched from the archive (a first read each); offload and restore in
//! payloads/s;
//! `mlaudit export` (the release binary, built first) in rows/s beside a bare scan of the log;
//! payload expiry of every prediction (`retention apply`, the same binary) in payloads/s beside
//! the same scan.

use crate::http::pct;
use crate::ingest::{emit, ingest_store};
use anyhow::{Context, Result};
use mlaudit_archive::cold::{ColdPayloads, WithCold};
use mlaudit_archive::Archive;
use mlaudit_core::note::NoteSigner;
use mlaudit_embedded::{EmbeddedStore, Options};
use mlaudit_store::prelude::*;
use mlaudit_store::proofs;
use serde_json::json;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Segments are sealed (and packed: the warm tier) at this size, so that a small log has both.
const SEGMENT_TARGET: u64 = 4 << 20;
const BUCKET: &str = "mlaudit-bench";

struct Opts {
    events: usize,
    dir: PathBuf,
    s3: bool,
    samples: usize,
}

fn parse(args: &[String]) -> Result<Opts> {
    let mut o = Opts {
        events: 200_000,
        dir: std::env::temp_dir().join("mlaudit-bench-retention"),
        s3: true,
        samples: 500,
    };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut val = || it.next().context(format!("{a} needs a value"));
        match a.as_str() {
            "--events" => o.events = val()?.parse()?,
            "--dir" => o.dir = PathBuf::from(val()?),
            "--samples" => o.samples = val()?.parse()?,
            "--no-s3" => o.s3 = false,
            other => anyhow::bail!("unknown option {other}"),
        }
    }
    Ok(o)
}

fn predictions(n: usize) -> Vec<Vec<String>> {
    let lines: Vec<String> = (0..n)
        .map(|i| {
            json!({
                "id": uuid::Uuid::new_v4().to_string(),
                "kind": "prediction.served",
                "actor": {"type": "service", "id": "scoring-api"},
                "subject": {"model": "credit-risk", "version": "7", "request": format!("req-{i}")},
                "attributes": {"inputs": {"income": 40_000 + i % 5000, "age": 20 + i % 50,
                                          "region": "north"},
                               "outputs": {"score": (i % 1000) as f64 / 1000.0}, "latency_ms": 3},
            })
            .to_string()
        })
        .collect();
    lines.chunks(1000).map(<[String]>::to_vec).collect()
}

fn files_bytes(dir: &Path, suffix: &str) -> Result<u64> {
    let mut total = 0;
    for e in std::fs::read_dir(dir)? {
        let e = e?;
        if e.file_name().to_string_lossy().ends_with(suffix) {
            total += e.metadata()?.len();
        }
    }
    Ok(total)
}

fn tree_bytes(dir: &Path) -> Result<u64> {
    let mut total = 0;
    for e in std::fs::read_dir(dir)? {
        let e = e?;
        let m = e.metadata()?;
        total += if m.is_dir() {
            tree_bytes(&e.path())?
        } else {
            m.len()
        };
    }
    Ok(total)
}

/// p50 and p99 of `f` over `seqs`, in milliseconds.
fn latency(seqs: &[u64], mut f: impl FnMut(u64) -> Result<()>) -> Result<(f64, f64)> {
    let mut ms = Vec::with_capacity(seqs.len());
    for &s in seqs {
        let t = Instant::now();
        f(s)?;
        ms.push(t.elapsed().as_secs_f64() * 1e3);
    }
    ms.sort_by(f64::total_cmp);
    Ok((pct(&ms, 0.5), pct(&ms, 0.99)))
}

fn spread(from: u64, to: u64, n: usize) -> Vec<u64> {
    let span = to.saturating_sub(from).max(1);
    (0..n as u64)
        .map(|i| from + (i.wrapping_mul(0x9e37_79b9_7f4a_7c15) % span))
        .collect()
}

fn emit_latency(engine: &str, what: &str, (p50, p99): (f64, f64), extra: serde_json::Value) {
    emit(
        "retention",
        engine,
        &format!("{what}_p50_ms"),
        p50,
        extra.clone(),
    );
    emit("retention", engine, &format!("{what}_p99_ms"), p99, extra);
}

pub fn run(args: &[String]) -> Result<()> {
    let o = parse(args)?;
    let _ = std::fs::remove_dir_all(&o.dir);
    std::fs::create_dir_all(&o.dir)?;
    let log_dir = o.dir.join("log");
    let signer = NoteSigner::from_seed("bench.example/retention", [5; 32])?;
    let signer_text = signer.to_private_text();
    let verifier = signer.verifier();
    let options = Options {
        segment_target: SEGMENT_TARGET,
        ..Options::default()
    };
    let (store, _) = EmbeddedStore::open_with(&log_dir, Some(signer), options)?;
    ingest_store(&store, &predictions(o.events))?;
    store.settle();
    let n = store.tree_size();
    let ctx = json!({"events": n});

    // Bytes per event: the raw log (hot), the packed segments (warm, scaled to the whole log).
    let raw = files_bytes(&log_dir, ".log")?;
    let packed = files_bytes(&log_dir, ".zst")?;
    let raw_total = store.stats().log_bytes;
    let packed_raw = raw_total.saturating_sub(raw);
    emit(
        "retention",
        "hot",
        "bytes_per_event",
        raw_total as f64 / n as f64,
        ctx.clone(),
    );
    if packed_raw > 0 {
        let ratio = packed as f64 / packed_raw as f64;
        emit(
            "retention",
            "warm",
            "bytes_per_event",
            ratio * raw_total as f64 / n as f64,
            ctx.clone(),
        );
    }

    // The baseline: a plain copy of the segment files to the same disk.
    let copy_dir = o.dir.join("copy");
    std::fs::create_dir_all(&copy_dir)?;
    let t = Instant::now();
    for e in std::fs::read_dir(&log_dir)? {
        let e = e?;
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with("seg-") {
            std::fs::copy(e.path(), copy_dir.join(&name))?;
        }
    }
    let copy_eps = n as f64 / t.elapsed().as_secs_f64();
    emit(
        "retention",
        "copy-segments",
        "events_per_s",
        copy_eps,
        ctx.clone(),
    );

    let note = latest(&store)?;
    let fs_dir = o.dir.join("archive");
    let fs = Archive::open(&format!("file://{}", fs_dir.display()))?;
    let fs_eps = archive_once(&fs, &store, &note, &verifier, "archive-fs", copy_eps, &ctx)?;
    emit(
        "retention",
        "cold",
        "bytes_per_event",
        tree_bytes(&fs_dir)? as f64 / n as f64,
        ctx.clone(),
    );

    let hot = spread(n.saturating_sub(500).max(n * 99 / 100), n, o.samples);
    let warm = spread(0, n / 2, o.samples);
    let get = |s: &EmbeddedStore, seq| s.event(seq).map(|_| ()).map_err(anyhow::Error::from);
    emit_latency(
        "hot",
        "get",
        latency(&hot, |q| get(&store, q))?,
        ctx.clone(),
    );
    emit_latency(
        "warm",
        "get",
        latency(&warm, |q| get(&store, q))?,
        ctx.clone(),
    );
    let prove = |s: &dyn Store, seq| {
        proofs::inclusion_bundle(s, seq)
            .map(|_| ())
            .map_err(|e| anyhow::anyhow!("{e}"))
    };
    emit_latency(
        "hot",
        "proof",
        latency(&hot, |q| prove(&store, q))?,
        ctx.clone(),
    );
    emit_latency(
        "warm",
        "proof",
        latency(&warm, |q| prove(&store, q))?,
        ctx.clone(),
    );

    // The cold tier as the server reads it: the first half's payloads leave the server once
    // read back from the archive, and reads fetch them from there (each sample with an empty
    // bundle cache: a first read).
    let s3 = match o.s3 {
        true => {
            let url = s3_archive()?;
            let s3 = Archive::open(&url)?;
            let s3_eps = archive_once(&s3, &store, &note, &verifier, "archive-s3", copy_eps, &ctx)?;
            emit(
                "retention",
                "archive-s3",
                "vs_archive_fs",
                s3_eps / fs_eps,
                ctx.clone(),
            );
            Some(url)
        }
        false => None,
    };
    let half = n / 2;
    let segment_bytes = || -> Result<f64> {
        Ok((files_bytes(&log_dir, ".log")? + files_bytes(&log_dir, ".zst")?) as f64 / n as f64)
    };
    let before = segment_bytes()?;
    offload_half(&store, &fs, half, &ctx)?;
    let mut extra = ctx.clone();
    extra["before"] = json!(before);
    extra["offloaded"] = json!(half);
    emit(
        "retention",
        "server-after-offload",
        "segment_bytes_per_event",
        segment_bytes()?,
        extra,
    );
    let fs_cold = ColdPayloads::new(&format!("file://{}", fs_dir.display()));
    let cold_latency = |cold: &ColdPayloads, seqs: &[u64], proof: bool| {
        let tiered = WithCold {
            local: &store,
            cold: Some(cold),
        };
        latency(seqs, |q| {
            cold.clear_cache();
            match proof {
                true => prove(&tiered, q),
                false => tiered.event(q).map(|_| ()).map_err(anyhow::Error::from),
            }
        })
    };
    emit_latency(
        "cold-fs",
        "get",
        cold_latency(&fs_cold, &warm, false)?,
        ctx.clone(),
    );
    emit_latency(
        "cold-fs",
        "proof",
        cold_latency(&fs_cold, &warm, true)?,
        ctx.clone(),
    );
    if let Some(url) = s3 {
        let few = &warm[..warm.len().min(200)];
        let s3_cold = ColdPayloads::new(&url);
        emit_latency(
            "cold-s3",
            "get",
            cold_latency(&s3_cold, few, false)?,
            ctx.clone(),
        );
        emit_latency(
            "cold-s3",
            "proof",
            cold_latency(&s3_cold, few, true)?,
            ctx.clone(),
        );
    }
    restore_half(&store, &fs_cold, half, &ctx)?;
    // The baseline for export: reading every event, nothing else.
    let t = Instant::now();
    let mut seen = 0u64;
    store.scan(0, &mut |_| {
        seen += 1;
        std::ops::ControlFlow::Continue(())
    })?;
    let scan_eps = seen as f64 / t.elapsed().as_secs_f64();
    emit("retention", "scan", "events_per_s", scan_eps, ctx.clone());
    store.close()?;
    drop(store);
    export(&o.dir, signer_text, n, scan_eps, &ctx)?;
    expire(&o.dir, n, scan_eps, &ctx)?;
    let _ = std::fs::remove_dir_all(&o.dir);
    Ok(())
}

/// Runs `mlaudit export` on the log (its data directory is `dir`: `log/` and, written here,
/// `key/signing.key`) and reports rows/s against the bare scan.
fn export(
    dir: &Path,
    signer_text: String,
    n: u64,
    scan_eps: f64,
    ctx: &serde_json::Value,
) -> Result<()> {
    let key_dir = dir.join("key");
    std::fs::create_dir_all(&key_dir)?;
    std::fs::write(key_dir.join("signing.key"), signer_text)?;
    let export_dir = dir.join("export");
    let (secs, out) = timed_cli(
        dir,
        &["export".as_ref(), "--out".as_ref(), export_dir.as_os_str()],
    )?;
    anyhow::ensure!(
        out.status.success(),
        "mlaudit export: {}",
        String::from_utf8_lossy(&out.stderr).trim()
    );
    let eps = n as f64 / secs;
    emit("retention", "export-ndjson", "rows_per_s", eps, ctx.clone());
    emit(
        "retention",
        "export-ndjson",
        "vs_scan",
        eps / scan_eps,
        ctx.clone(),
    );
    let bytes = tree_bytes(&dir.join("export"))?;
    emit(
        "retention",
        "export-ndjson",
        "bytes_per_row",
        bytes as f64 / n as f64,
        ctx.clone(),
    );
    Ok(())
}

/// Runs `mlaudit retention apply` with a rule that expires every prediction's payload (the
/// log after `export`, most of it in packed segments) and reports payloads/s against the bare
/// scan.
fn expire(dir: &Path, n: u64, scan_eps: f64, ctx: &serde_json::Value) -> Result<()> {
    let config = dir.join("expire.toml");
    std::fs::write(
        &config,
        "[retention]\n[[retention.rule]]\nstage = \"prediction\"\nexpire = \"1y\"\n",
    )?;
    let args = [
        "retention",
        "apply",
        "--now",
        "2100-01-01T00:00:00Z",
        "--config",
    ];
    let mut args: Vec<&std::ffi::OsStr> = args.iter().map(|a| a.as_ref()).collect();
    args.push(config.as_os_str());
    let (secs, out) = timed_cli(dir, &args)?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    anyhow::ensure!(
        out.status.success() && stdout.contains(&format!("{n} payloads removed")),
        "mlaudit retention apply: {}{}",
        stdout.trim(),
        String::from_utf8_lossy(&out.stderr).trim()
    );
    let pps = n as f64 / secs;
    emit("retention", "expire", "payloads_per_s", pps, ctx.clone());
    emit(
        "retention",
        "expire",
        "vs_scan",
        pps / scan_eps,
        ctx.clone(),
    );
    Ok(())
}

/// Runs the release `mlaudit` built beside the bench on the data directory `dir`; returns the
/// seconds it took and its output.
fn timed_cli(dir: &Path, args: &[&std::ffi::OsStr]) -> Result<(f64, std::process::Output)> {
    let bin = std::env::current_exe()?.with_file_name("mlaudit");
    anyhow::ensure!(
        bin.exists(),
        "{} is missing: build it first (cargo build --release -p mlaudit)",
        bin.display()
    );
    let t = Instant::now();
    let out = std::process::Command::new(&bin)
        .arg("--data")
        .arg(dir)
        .args(args)
        .output()?;
    Ok((t.elapsed().as_secs_f64(), out))
}

/// Events compared with the archive and offloaded or restored at a time (as `mlaudit` does).
const CHUNK: u64 = 4096;

/// Drops the local payloads of events `0..half` once the archive is read back and holds the
/// same bytes (what `retention apply` does); reports payloads/s.
fn offload_half(
    store: &EmbeddedStore,
    archive: &Archive,
    half: u64,
    ctx: &serde_json::Value,
) -> Result<()> {
    let t = Instant::now();
    let mut at = 0;
    while at < half {
        let end = (at + CHUNK).min(half);
        let archived = archive.events(at, end)?;
        let mut seqs = Vec::with_capacity(archived.len());
        for there in archived {
            let here = store.event(there.seq)?;
            anyhow::ensure!(
                here.entry == there.entry && here.payload == there.payload,
                "seq {}: the archive differs from the log",
                there.seq
            );
            seqs.push(there.seq);
        }
        store.offload_payloads(&seqs)?;
        at = end;
    }
    let pps = half as f64 / t.elapsed().as_secs_f64();
    emit(
        "retention",
        "offload-fs",
        "payloads_per_s",
        pps,
        ctx.clone(),
    );
    Ok(())
}

/// Brings the payloads of events `0..half` back from the archive (what `mlaudit restore`
/// does); reports payloads/s.
fn restore_half(
    store: &EmbeddedStore,
    cold: &ColdPayloads,
    half: u64,
    ctx: &serde_json::Value,
) -> Result<()> {
    cold.clear_cache();
    let tiered = WithCold {
        local: store,
        cold: Some(cold),
    };
    let t = Instant::now();
    let mut batch = Vec::new();
    let mut failed = None;
    tiered.scan(0, &mut |ev| {
        if ev.seq >= half {
            return std::ops::ControlFlow::Break(());
        }
        batch.push((ev.seq, ev.payload.unwrap_or_default()));
        if batch.len() as u64 == CHUNK {
            if let Err(e) = store.restore_payloads(&std::mem::take(&mut batch)) {
                failed = Some(e);
                return std::ops::ControlFlow::Break(());
            }
        }
        std::ops::ControlFlow::Continue(())
    })?;
    if let Some(e) = failed {
        return Err(e.into());
    }
    store.restore_payloads(&batch)?;
    let pps = half as f64 / t.elapsed().as_secs_f64();
    emit(
        "retention",
        "restore-fs",
        "payloads_per_s",
        pps,
        ctx.clone(),
    );
    anyhow::ensure!(
        store.event(0)?.tier != mlaudit_store::Tier::Cold,
        "the restore left seq 0 in the archive"
    );
    Ok(())
}

fn latest(store: &EmbeddedStore) -> Result<String> {
    let size = store
        .latest_checkpoint_size()?
        .context("the log has no checkpoint")?;
    store
        .checkpoint(size)?
        .context("the latest checkpoint is gone")
}

/// Archives the whole log once; prints events/s and the ratio to the copy baseline.
fn archive_once(
    archive: &Archive,
    store: &EmbeddedStore,
    note: &str,
    verifier: &mlaudit_core::note::NoteVerifier,
    engine: &str,
    copy_eps: f64,
    ctx: &serde_json::Value,
) -> Result<f64> {
    let t = Instant::now();
    let done = mlaudit_archive::write::extend(archive, store, note, verifier, &mut |_, _| {})?;
    let secs = t.elapsed().as_secs_f64();
    let eps = done.size as f64 / secs;
    let mut extra = ctx.clone();
    extra["objects"] = json!(done.written);
    extra["bytes"] = json!(done.bytes);
    emit("retention", engine, "events_per_s", eps, extra);
    emit(
        "retention",
        engine,
        "vs_copy_segments",
        eps / copy_eps,
        ctx.clone(),
    );
    let t = Instant::now();
    mlaudit_archive::verify::verify(archive, verifier, &mut |_, _| {})?;
    let verify_eps = done.size as f64 / t.elapsed().as_secs_f64();
    emit(
        "retention",
        engine,
        "verify_events_per_s",
        verify_eps,
        ctx.clone(),
    );
    Ok(eps)
}

/// Starts (or finds) the S3-compatible test server and returns a fresh archive URL on it.
fn s3_archive() -> Result<String> {
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../scripts/s3-test-server.sh"
    );
    let out = std::process::Command::new("bash")
        .arg(script)
        .arg(BUCKET)
        .output()
        .context("running scripts/s3-test-server.sh")?;
    anyhow::ensure!(
        out.status.success(),
        "scripts/s3-test-server.sh: {} (or run with --no-s3)",
        String::from_utf8_lossy(&out.stderr).trim()
    );
    let port = std::env::var("MLAUDIT_TEST_S3_PORT").unwrap_or_else(|_| "5077".into());
    for (k, v) in [
        ("AWS_ENDPOINT_URL", format!("http://127.0.0.1:{port}")),
        ("AWS_ALLOW_HTTP", "true".into()),
        ("AWS_ACCESS_KEY_ID", "test".into()),
        ("AWS_SECRET_ACCESS_KEY", "test".into()),
        ("AWS_REGION", "us-east-1".into()),
    ] {
        std::env::set_var(k, v);
    }
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_nanos();
    Ok(format!("s3://{BUCKET}/bench-{stamp}"))
}
