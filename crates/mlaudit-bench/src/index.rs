//! `mlaudit-bench index`: the on-disk id index candidates on one workload: N uniformly random
//! 16-byte ids (as UUIDv4 ids are), in batches of 4,096, each looked up (it must be absent)
//! and then inserted with its seq; then random lookups of present and absent ids. Each
//! candidate runs in its own process (`index-candidate`), so that its peak memory is its own.
//!
//! * `runs`: the embedded engine's structure — ids in memory up to 262,144, then written out as
//!   an immutable sorted run (fences, Bloom filter) and merged as a binary counter. Merges run
//!   here on the inserting thread, so their cost is in the insert rate (the engine runs them on
//!   a background thread).
//! * `redb`: a maintained embedded B-tree, one write transaction per batch without sync, one
//!   durable commit at the end, a 256 MiB cache.

use crate::ingest::emit;
use anyhow::{Context, Result};
use mlaudit_core::EventId;
use mlaudit_embedded::runs::{self, Budget, Run, RunContent};
use serde_json::json;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

const BATCH: u64 = 4096;
const SAMPLES: usize = 100_000;
const CACHE: u64 = 256 << 20;

fn mix(x: u64) -> u64 {
    mlaudit_embedded::keyed::mix(x.wrapping_add(0x9e37_79b9_7f4a_7c15))
}

/// Id number `i`: uniformly random bytes; ids from N on are never inserted.
fn id(i: u64) -> [u8; 16] {
    let mut k = [0u8; 16];
    k[..8].copy_from_slice(&mix(2 * i).to_le_bytes());
    k[8..].copy_from_slice(&mix(2 * i + 1).to_le_bytes());
    k
}

trait Candidate {
    fn get(&self, id: &[u8; 16]) -> Result<Option<u64>>;
    fn insert_batch(&mut self, ids: &[[u8; 16]], first_seq: u64) -> Result<()>;
    fn finish(&mut self) -> Result<()>;
}

/// The engine's id index: a tail map, runs and their merges.
struct Runs {
    dir: PathBuf,
    tail: HashMap<EventId, u64, mlaudit_embedded::keyed::Keyed>,
    base: u64,
    runs: Vec<Arc<Run>>,
    budget: Arc<Budget>,
}

impl Runs {
    fn flush(&mut self, end: u64) -> Result<()> {
        let mut ids: Vec<(EventId, u64)> = self.tail.drain().collect();
        ids.sort_unstable();
        let content = RunContent {
            first: self.base,
            end,
            min_time: 0,
            max_time: 0,
            ids,
            leaves: Vec::new(),
            lists: Vec::new(),
            times: runs::block_times(self.base, &vec![0; (end - self.base) as usize]),
        };
        let path = runs::write_run(&self.dir, &content)?;
        self.runs
            .push(Arc::new(Run::open(&path, self.budget.clone())?));
        self.base = end;
        while self.runs.len() >= 2 {
            let n = self.runs.len();
            let (a, b) = (&self.runs[n - 2], &self.runs[n - 1]);
            let size = |r: &Run| r.footer.end - r.footer.first;
            if size(a) > size(b) {
                break;
            }
            let path = runs::merge(&self.dir, a, b)?;
            let merged = Arc::new(Run::open(&path, self.budget.clone())?);
            for old in [a, b] {
                std::fs::remove_file(self.dir.join(&old.name))?;
            }
            self.runs.truncate(n - 2);
            self.runs.push(merged);
        }
        Ok(())
    }
}

impl Candidate for Runs {
    fn get(&self, id: &[u8; 16]) -> Result<Option<u64>> {
        let id = EventId(*id);
        if let Some(s) = self.tail.get(&id) {
            return Ok(Some(*s));
        }
        for r in self.runs.iter().rev() {
            if let Some(s) = r.find_id(&id)? {
                return Ok(Some(s));
            }
        }
        Ok(None)
    }

    fn insert_batch(&mut self, ids: &[[u8; 16]], first_seq: u64) -> Result<()> {
        for (j, k) in ids.iter().enumerate() {
            anyhow::ensure!(self.get(k)?.is_none(), "duplicate id");
            self.tail.insert(EventId(*k), first_seq + j as u64);
        }
        let end = first_seq + ids.len() as u64;
        if end - self.base >= mlaudit_embedded::RUN_EVENTS {
            self.flush(end)?;
        }
        Ok(())
    }

    fn finish(&mut self) -> Result<()> {
        Ok(())
    }
}

const TABLE: redb::TableDefinition<[u8; 16], u64> = redb::TableDefinition::new("ids");

struct Redb {
    db: redb::Database,
    /// One long-lived reader once loading is done.
    reader: Option<redb::ReadOnlyTable<[u8; 16], u64>>,
}

impl Candidate for Redb {
    fn get(&self, id: &[u8; 16]) -> Result<Option<u64>> {
        use redb::ReadableTable;
        let reader = self.reader.as_ref().context("no reader")?;
        Ok(reader.get(id)?.map(|v| v.value()))
    }

    fn insert_batch(&mut self, ids: &[[u8; 16]], first_seq: u64) -> Result<()> {
        use redb::ReadableTable;
        let mut tx = self.db.begin_write()?;
        tx.set_durability(redb::Durability::None)?;
        {
            let mut t = tx.open_table(TABLE)?;
            for (j, k) in ids.iter().enumerate() {
                anyhow::ensure!(t.get(k)?.is_none(), "duplicate id");
                t.insert(k, first_seq + j as u64)?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    fn finish(&mut self) -> Result<()> {
        let mut tx = self.db.begin_write()?;
        tx.set_durability(redb::Durability::Immediate)?;
        tx.commit()?;
        use redb::ReadableDatabase;
        self.reader = Some(self.db.begin_read()?.open_table(TABLE)?);
        Ok(())
    }
}

fn peak_rss_mib() -> f64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    s.lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

fn dir_bytes(dir: &Path) -> Result<u64> {
    let mut n = 0;
    for e in std::fs::read_dir(dir)? {
        n += e?.metadata()?.len();
    }
    Ok(n)
}

/// `index [--ids N] [--dir D]`: both candidates, one process each.
pub fn run(args: &[String]) -> Result<()> {
    let (mut n, mut dir) = (
        4_000_000u64,
        std::env::temp_dir().join("mlaudit-bench-index"),
    );
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let v = it.next().context(format!("{a} needs a value"))?;
        match a.as_str() {
            "--ids" => n = v.parse()?,
            "--dir" => dir = PathBuf::from(v),
            other => anyhow::bail!("unknown option {other}"),
        }
    }
    for engine in ["runs", "redb"] {
        let status = std::process::Command::new(std::env::current_exe()?)
            .args(["index-candidate", engine, &n.to_string()])
            .arg(dir.join(engine))
            .status()?;
        anyhow::ensure!(
            status.success(),
            "index-candidate {engine} failed: {status}"
        );
    }
    Ok(())
}

/// `index-candidate ENGINE N DIR`: one candidate's figures.
pub fn candidate(args: &[String]) -> Result<()> {
    let [engine, n, dir] = args else {
        anyhow::bail!("usage: index-candidate runs|redb N DIR");
    };
    let (n, dir): (u64, PathBuf) = (n.parse()?, PathBuf::from(dir));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let mut c: Box<dyn Candidate> = match engine.as_str() {
        "runs" => Box::new(Runs {
            dir: dir.clone(),
            tail: HashMap::default(),
            base: 0,
            runs: Vec::new(),
            budget: Budget::new(CACHE),
        }),
        "redb" => Box::new(Redb {
            db: redb::Builder::new()
                .set_cache_size(CACHE as usize)
                .create(dir.join("ids.redb"))?,
            reader: None,
        }),
        other => anyhow::bail!("unknown candidate {other}"),
    };
    let ctx = |extra: serde_json::Value| {
        let mut v = json!({ "ids": n, "batch": BATCH });
        if let (Some(o), Some(e)) = (v.as_object_mut(), extra.as_object()) {
            o.extend(e.clone());
        }
        v
    };
    let (start, mut mark, mut mark_at) = (Instant::now(), 0u64, Instant::now());
    let mut done = 0u64;
    let step = (n / 4).max(1_000_000).min(n);
    while done < n {
        let end = (done + BATCH).min(n);
        let ids: Vec<[u8; 16]> = (done..end).map(id).collect();
        c.insert_batch(&ids, done)?;
        done = end;
        if done - mark >= step || done == n {
            let rate = (done - mark) as f64 / mark_at.elapsed().as_secs_f64();
            emit(
                "index",
                engine,
                "inserts_per_s",
                rate,
                ctx(json!({ "from": mark, "to": done })),
            );
            (mark, mark_at) = (done, Instant::now());
        }
    }
    c.finish()?;
    let total = n as f64 / start.elapsed().as_secs_f64();
    emit(
        "index",
        engine,
        "inserts_per_s_overall",
        total,
        ctx(json!({})),
    );
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    for (what, offset) in [("present", 0), ("absent", n)] {
        let mut us = Vec::with_capacity(SAMPLES);
        for _ in 0..SAMPLES {
            x = mix(x);
            let i = offset + x % n;
            let t = Instant::now();
            let found = c.get(&id(i))?;
            us.push(t.elapsed().as_secs_f64() * 1e6);
            anyhow::ensure!(
                found == (offset == 0).then_some(i),
                "wrong answer for id {i}"
            );
        }
        us.sort_by(f64::total_cmp);
        for (p, name) in [(0.5, "p50"), (0.99, "p99")] {
            let v = us[((us.len() as f64 * p) as usize).min(us.len() - 1)];
            emit(
                "index",
                engine,
                &format!("get_{what}_{name}_us"),
                v,
                ctx(json!({})),
            );
        }
    }
    emit(
        "index",
        engine,
        "peak_rss_mib",
        peak_rss_mib(),
        ctx(json!({})),
    );
    drop(c);
    let bytes = dir_bytes(&dir)? as f64 / n as f64;
    emit("index", engine, "bytes_per_id", bytes, ctx(json!({})));
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}
