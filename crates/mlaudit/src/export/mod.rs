//! `mlaudit export`: the log's events as day-partitioned files a warehouse loads directly
//! (`dt=YYYY-MM-DD/part-<first>-<end>.ndjson` or `.parquet`), each with a manifest an auditor
//! checks against the log's signed checkpoint (`part-<first>-<end>.manifest.json`).
//!
//! A partition is the events the log **received** on one UTC day, so it is one contiguous range
//! of seqs; it is written in files of at most [`PART_ROWS`] rows, each `first..end`. Its manifest proves the rows are the log's: every row carries its entry
//! header (`entry`, base64), whose SHA-256 with a 0x00 prefix is its leaf hash; the leaves of
//! `first..end` hash (RFC 9162) to `range_root`; pushed onto `prefix` (the perfect-subtree
//! hashes covering `0..first`, largest first) they give `root_at_end`, the root of the tree of
//! `end` events; and `consistency_proof` proves that tree a prefix of the signed `checkpoint`.

use crate::ledger::{self, InputError};
use crate::output::Progress;
use anyhow::{Context, Result};
use mlaudit_archive::Archive;
use mlaudit_core::b64;
use mlaudit_core::entry::{decode_view, SubjectField};
use mlaudit_core::event::{format_time, parse_time, Stage};
use mlaudit_core::merkle::{consistency_proof, leaf_hash, sha256, CompactRange, Hash};
use mlaudit_store::prelude::*;
use mlaudit_store::{latest_checkpoint, Nodes};
use serde_json::{json, Map, Value};
use std::ops::ControlFlow;
use std::path::Path;

#[derive(Debug, Clone, Copy, clap::ValueEnum, PartialEq, Eq)]
pub enum ExportFormat {
    Ndjson,
    Parquet,
}

#[derive(Debug, clap::Args)]
pub struct ExportArgs {
    /// Events received at or after this time (RFC 3339) [default: the first]
    #[arg(long)]
    from: Option<String>,
    /// Events received before this time (RFC 3339) [default: the latest checkpoint]
    #[arg(long)]
    to: Option<String>,
    #[arg(long, value_enum, default_value_t = ExportFormat::Ndjson)]
    format: ExportFormat,
    /// A directory, or an object store URL (s3://…, gs://…, az://…, file:///…)
    #[arg(long, value_name = "DIR|URL")]
    out: String,
}

#[cfg(feature = "parquet")]
mod parquet;

/// Rows per file: a partition's rows are held in memory until its file is written.
const PART_ROWS: usize = 100_000;

/// One file's rows, being built.
struct Partition {
    day: String,
    first: u64,
    rows: Vec<Value>,
    leaves: Vec<Hash>,
}

pub fn run(data: &Path, args: ExportArgs) -> Result<()> {
    if args.format == ExportFormat::Parquet && !cfg!(feature = "parquet") {
        return Err(InputError(
            "--format parquet needs a build with the `parquet` feature (cargo build --release -p mlaudit --features parquet); --format ndjson needs none".into(),
        )
        .into());
    }
    let time = |flag: &str, t: &Option<String>| -> Result<Option<i64>> {
        t.as_deref()
            .map(|s| {
                parse_time(s)
                    .ok_or_else(|| InputError(format!("{flag} {s:?}: not an RFC 3339 time")).into())
            })
            .transpose()
    };
    let from_ns = time("--from", &args.from)?;
    let to_ns = time("--to", &args.to)?;
    let out = output(&args.out)?;
    let store = ledger::open(data)?;
    let note = latest_checkpoint(&store)?.context("the log has no checkpoint yet")?;
    let signed = mlaudit_core::note::unverified_checkpoint(&note)?.size;
    let first = match from_ns {
        Some(t) => crate::retention::first_received_since(&store, t)?,
        None => 0,
    };
    let end = match to_ns {
        Some(t) => crate::retention::first_received_since(&store, t)?.min(signed),
        None => signed,
    };
    let mut progress = Progress::new("exporting", end.saturating_sub(first));
    let mut parts = 0usize;
    let mut rows = 0u64;
    let mut current: Option<Partition> = None;
    let mut failure: Option<anyhow::Error> = None;
    if first < end {
        store.scan(first, &mut |ev| {
            let mut step = || -> Result<()> {
                let view = decode_view(&ev.entry).context("decoding an entry")?;
                let day = format_time(view.receipt_time_ns)[..10].to_owned();
                if current
                    .as_ref()
                    .is_some_and(|p| p.day != day || p.rows.len() >= PART_ROWS)
                {
                    if let Some(p) = current.take() {
                        finish(&store, &out, p, ev.seq, &note, args.format)?;
                        parts += 1;
                    }
                }
                let p = current.get_or_insert_with(|| Partition {
                    day,
                    first: ev.seq,
                    rows: Vec::new(),
                    leaves: Vec::new(),
                });
                p.leaves.push(leaf_hash(&ev.entry));
                p.rows.push(row(&ev, &view));
                rows += 1;
                progress.set(rows);
                Ok(())
            };
            match step() {
                Ok(()) if ev.seq + 1 < end => ControlFlow::Continue(()),
                Ok(()) => ControlFlow::Break(()),
                Err(e) => {
                    failure = Some(e);
                    ControlFlow::Break(())
                }
            }
        })?;
    }
    if let Some(e) = failure {
        return Err(e);
    }
    if let Some(p) = current.take() {
        finish(&store, &out, p, end, &note, args.format)?;
        parts += 1;
    }
    progress.finish();
    ledger::audit_read(&store, "mlaudit export", &args.out, rows as usize)?;
    println!(
        "exported {rows} events (seqs {first}..{end}) in {parts} files to {}",
        args.out
    );
    store.close()
}

/// The output location: a directory (created) or an object store URL.
fn output(out: &str) -> Result<Archive> {
    if out.contains("://") {
        return Ok(Archive::open(out)?);
    }
    std::fs::create_dir_all(out).map_err(|e| InputError(format!("--out {out}: {e}")))?;
    let dir = std::fs::canonicalize(out).map_err(|e| InputError(format!("--out {out}: {e}")))?;
    Ok(Archive::open(&format!("file://{}", dir.display()))?)
}

/// One row: the header's fields as columns, the attributes as JSON, the entry for proofs.
fn row(ev: &mlaudit_store::StoredEvent, view: &mlaudit_core::entry::EntryView<'_>) -> Value {
    let mut r = Map::new();
    r.insert("seq".into(), json!(ev.seq));
    r.insert("id".into(), json!(view.id.to_string()));
    r.insert("kind".into(), json!(view.kind));
    let stage = Stage::of_kind(view.kind).unwrap_or(Stage::Custom);
    r.insert("stage".into(), json!(stage.as_str()));
    r.insert("event_time".into(), json!(format_time(view.event_time_ns)));
    r.insert(
        "receipt_time".into(),
        json!(format_time(view.receipt_time_ns)),
    );
    r.insert("actor_type".into(), json!(view.actor_type.as_str()));
    r.insert("actor_id".into(), json!(view.actor_id));
    r.insert("principal".into(), json!(view.principal));
    for f in SubjectField::ALL {
        r.insert(f.as_str().into(), json!(view.subject(f)));
    }
    let attributes = ev
        .payload
        .as_deref()
        .and_then(|p| serde_json::from_slice::<Value>(p).ok())
        .and_then(|v| v.get("attributes").cloned())
        .unwrap_or(Value::Null);
    r.insert("attributes".into(), attributes);
    // The event's JSON as stored: what `payload_sha256` commits to, so that `attributes` can
    // be checked.
    let payload = ev.payload.as_deref().map(String::from_utf8_lossy);
    r.insert("payload".into(), json!(payload));
    r.insert("payload_present".into(), json!(ev.payload.is_some()));
    r.insert(
        "payload_sha256".into(),
        json!(mlaudit_core::merkle::hex(&view.payload_sha256)),
    );
    r.insert("entry".into(), json!(b64::encode(&ev.entry)));
    Value::Object(r)
}

/// Encodes rows as NDJSON.
fn ndjson(rows: &[Value]) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    for r in rows {
        serde_json::to_writer(&mut out, r)?;
        out.push(b'\n');
    }
    Ok(out)
}

/// Writes a file's rows and its manifest.
fn finish(
    store: &dyn Store,
    out: &Archive,
    p: Partition,
    end: u64,
    note: &str,
    format: ExportFormat,
) -> Result<()> {
    let (bytes, ext) = match format {
        ExportFormat::Ndjson => (ndjson(&p.rows)?, "ndjson"),
        #[cfg(feature = "parquet")]
        ExportFormat::Parquet => (parquet::encode(&p.rows)?, "parquet"),
        #[cfg(not(feature = "parquet"))]
        ExportFormat::Parquet => anyhow::bail!("this build has no Parquet writer"),
    };
    let nodes = Nodes(store);
    let signed = mlaudit_core::note::unverified_checkpoint(note)?;
    let mut range = CompactRange::new();
    let mut tree = CompactRange::from_source(&nodes, p.first)?;
    let prefix: Vec<String> = tree.edge().iter().map(|h| b64::encode(h.0)).collect();
    for leaf in &p.leaves {
        range.push(*leaf, |_, _, _| {});
        tree.push(*leaf, |_, _, _| {});
    }
    let (range_root, root_at_end) = (range.root(), tree.root());
    let proof = consistency_proof(&nodes, end, signed.size)?
        .map_err(|e| anyhow::anyhow!("consistency proof {end} → {}: {e}", signed.size))?;
    let base = format!("dt={}/part-{:020}-{:020}", p.day, p.first, end);
    let manifest = json!({
        "format": "mlaudit-export-manifest/v1",
        "file": format!("{base}.{ext}"),
        "file_sha256": mlaudit_core::merkle::hex(&sha256(&bytes)),
        "rows": p.leaves.len(),
        "first": p.first,
        "end": end,
        "range_root": b64::encode(range_root.0),
        "prefix": prefix,
        "root_at_end": b64::encode(root_at_end.0),
        "checkpoint": note,
        "consistency_proof": proof.iter().map(|h| b64::encode(h.0)).collect::<Vec<_>>(),
    });
    out.put_file(&format!("{base}.{ext}"), bytes)?;
    out.put_file(
        &format!("{base}.manifest.json"),
        serde_json::to_vec_pretty(&manifest)?,
    )?;
    Ok(())
}
