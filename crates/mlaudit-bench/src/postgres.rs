//! `mlaudit-bench postgres`: ingest into the log in PostgreSQL, beside what a team would build
//! by hand and the embedded store, in the same run on the same events.
//!
//! Engines (each fed the same prediction events, in batches of 1,000, from `--clients` threads):
//! * `mlaudit-postgres` — one `mlaudit serve --store postgres://…` process, fed over HTTP
//!   (NDJSON): it is the sequencer and appends directly.
//! * `mlaudit-postgres-3` — three such processes on one log: one is elected sequencer, the
//!   other two queue their batches for it; clients spread over all three.
//! * `mlaudit-embedded` — one `mlaudit serve` on the embedded store, fed the same way.
//! * `pg-insert` — a multi-row `INSERT … VALUES` of each batch into a plain table.
//! * `pg-trigger` — the same table with a hash-chain trigger (each row's hash over the previous
//!   row's hash and its payload, serialized by an advisory lock).
//!
//! The servers are the release `mlaudit` binary beside this one (`cargo build --release -p
//! mlaudit` first); they parse and validate the events they receive, as in production. The
//! baselines get them prepared. `--engines a,b` runs only those. Figures: `events_per_s`, `ack_p99_ms` (a batch's append call), and for the PostgreSQL
//! engines `bytes_per_event` (tables, indexes and the WAL written during the run).

use crate::http::pct;
use crate::ingest::{emit, event_line};
use anyhow::{anyhow, bail, Result};
use mlaudit_core::event::{prepare, PreparedEvent};
use serde_json::json;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Instant;

const BATCH: usize = 1000;

struct Opts {
    events: usize,
    clients: usize,
    url: String,
    /// Only these engines (all when empty).
    engines: Vec<String>,
}

fn parse(args: &[String]) -> Result<Opts> {
    let mut o = Opts {
        events: 200_000,
        clients: 4,
        url: std::env::var("MLAUDIT_TEST_POSTGRES")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into()),
        engines: Vec::new(),
    };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut val = || it.next().ok_or_else(|| anyhow!("{a} needs a value"));
        match a.as_str() {
            "--events" => o.events = val()?.parse::<usize>()?.max(BATCH),
            "--clients" => o.clients = val()?.parse::<usize>()?.max(1),
            "--url" => o.url = val()?.clone(),
            "--engines" => o.engines = val()?.split(',').map(str::to_owned).collect(),
            other => bail!("unknown option {other}"),
        }
    }
    Ok(o)
}

/// A blocking client for the baselines and for measuring sizes.
struct Sql {
    rt: tokio::runtime::Runtime,
    client: tokio_postgres::Client,
}

impl Sql {
    fn connect(url: &str) -> Result<Sql> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let client = rt.block_on(async {
            let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls).await?;
            tokio::spawn(conn);
            Ok::<_, tokio_postgres::Error>(client)
        })?;
        Ok(Sql { rt, client })
    }

    fn exec(&self, sql: &str) -> Result<()> {
        self.rt.block_on(self.client.batch_execute(sql))?;
        Ok(())
    }

    fn wal_lsn(&self) -> Result<String> {
        let row = self.rt.block_on(
            self.client
                .query_one("SELECT pg_current_wal_insert_lsn()::text", &[]),
        )?;
        Ok(row.get(0))
    }

    fn count(&self, sql: &str) -> Result<i64> {
        Ok(self.rt.block_on(self.client.query_one(sql, &[]))?.get(0))
    }

    /// Bytes of WAL since `lsn`.
    fn wal_since(&self, lsn: &str) -> Result<f64> {
        let row = self.rt.block_on(self.client.query_one(
            "SELECT pg_wal_lsn_diff(pg_current_wal_insert_lsn(), $1::text::pg_lsn)::float8",
            &[&lsn],
        ))?;
        Ok(row.get(0))
    }

    /// Bytes of every table (with its indexes and TOAST) in `schema`.
    fn schema_bytes(&self, schema: &str) -> Result<f64> {
        let row = self.rt.block_on(self.client.query_one(
            "SELECT coalesce(sum(pg_total_relation_size(c.oid)), 0)::float8 FROM pg_class c
             JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = $1 AND c.relkind = 'r'",
            &[&schema],
        ))?;
        Ok(row.get(0))
    }
}

fn events(n: usize) -> Result<Vec<Vec<PreparedEvent>>> {
    let all: Vec<PreparedEvent> = (0..n)
        .map(|i| prepare(&event_line(i), "bench").map_err(|e| anyhow!("{e}")))
        .collect::<Result<_>>()?;
    let mut out = Vec::new();
    let mut it = all.into_iter().peekable();
    while it.peek().is_some() {
        out.push(it.by_ref().take(BATCH).collect());
    }
    Ok(out)
}

/// Sends `items` from `clients` threads (client `c` calls `send(c, item)`); returns events/s
/// over `events` and the p99 of one call in ms.
fn drive<T: Sync>(
    items: &[T],
    events: usize,
    clients: usize,
    send: &(dyn Fn(usize, &T) -> Result<()> + Sync),
) -> Result<(f64, f64)> {
    let next = AtomicUsize::new(0);
    let latencies = Mutex::new(Vec::with_capacity(items.len()));
    let start = Instant::now();
    std::thread::scope(|s| -> Result<()> {
        let workers: Vec<_> = (0..clients)
            .map(|c| {
                let (next, latencies) = (&next, &latencies);
                s.spawn(move || -> Result<()> {
                    while let Some(item) = items.get(next.fetch_add(1, Ordering::Relaxed)) {
                        let t = Instant::now();
                        send(c, item)?;
                        let ms = t.elapsed().as_secs_f64() * 1000.0;
                        latencies.lock().map_err(|_| anyhow!("poisoned"))?.push(ms);
                    }
                    Ok(())
                })
            })
            .collect();
        for w in workers {
            w.join().map_err(|_| anyhow!("client panicked"))??;
        }
        Ok(())
    })?;
    let secs = start.elapsed().as_secs_f64();
    let mut l = latencies.into_inner().map_err(|_| anyhow!("poisoned"))?;
    l.sort_by(f64::total_cmp);
    Ok((events as f64 / secs, pct(&l, 0.99)))
}

fn report(engine: &str, o: &Opts, (rate, p99): (f64, f64), bytes: Option<f64>) {
    let ctx = json!({ "events": o.events, "batch": BATCH, "clients": o.clients });
    emit("postgres", engine, "events_per_s", rate, ctx.clone());
    emit("postgres", engine, "ack_p99_ms", p99, ctx.clone());
    if let Some(b) = bytes {
        emit("postgres", engine, "bytes_per_event", b, ctx);
    }
}

fn with_schema(url: &str, schema: &str) -> String {
    let sep = if url.contains('?') { '&' } else { '?' };
    format!("{url}{sep}schema={schema}")
}

/// `mlaudit serve` processes, killed when dropped.
struct Servers {
    children: Vec<std::process::Child>,
    urls: Vec<String>,
    dir: std::path::PathBuf,
}

impl Drop for Servers {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The release `mlaudit` binary built beside this one.
fn mlaudit_bin() -> Result<std::path::PathBuf> {
    let bin = std::env::current_exe()?.with_file_name("mlaudit");
    if !bin.exists() {
        bail!(
            "{} is missing: build it first (cargo build --release -p mlaudit)",
            bin.display()
        );
    }
    Ok(bin)
}

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// Initializes a log (`store`: a PostgreSQL URL, or `None` for the embedded store) and starts
/// `count` servers on it, sharing its key.
fn start_servers(store: Option<&str>, count: usize, tag: &str) -> Result<Servers> {
    let bin = mlaudit_bin()?;
    let dir = std::env::temp_dir().join(format!("mlaudit-bench-pg-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let data = dir.join("data");
    let with_store = |cmd: &mut std::process::Command| {
        if let Some(url) = store {
            cmd.arg("--store").arg(url);
        }
    };
    let mut init = std::process::Command::new(&bin);
    init.arg("--data").arg(&data);
    with_store(&mut init);
    let out = init
        .args(["init", "--origin", "bench.mlaudit.local"])
        .output()?;
    if !out.status.success() {
        bail!("mlaudit init: {}", String::from_utf8_lossy(&out.stderr));
    }
    let mut servers = Servers {
        children: Vec::new(),
        urls: Vec::new(),
        dir: dir.clone(),
    };
    for n in 0..count {
        let addr = format!("127.0.0.1:{}", free_port()?);
        let mut cmd = std::process::Command::new(&bin);
        // The embedded store's server opens the log in the data directory itself.
        let own = if store.is_some() {
            dir.join(format!("server-{n}"))
        } else {
            data.clone()
        };
        cmd.arg("--data").arg(&own);
        with_store(&mut cmd);
        cmd.args(["serve", "--danger-no-auth", "--listen", &addr, "--key"])
            .arg(data.join("key").join("signing.key"))
            .env("MLAUDIT_RATE_LIMIT_PER_SECOND", "0")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
        servers.children.push(cmd.spawn()?);
        let url = format!("http://{addr}");
        let ready = (0..400).any(|_| {
            std::thread::sleep(std::time::Duration::from_millis(25));
            ureq::get(&format!("{url}/healthz")).call().is_ok()
        });
        if !ready {
            bail!("mlaudit serve {n} did not become ready");
        }
        servers.urls.push(url);
    }
    Ok(servers)
}

/// Feeds NDJSON `bodies` to `servers` over HTTP; events/s and p99 of a POST in ms.
fn drive_http(
    bodies: &[Vec<u8>],
    events: usize,
    clients: usize,
    servers: &Servers,
) -> Result<(f64, f64)> {
    let agent = ureq::AgentBuilder::new()
        .timeout(std::time::Duration::from_secs(120))
        .build();
    let urls: Vec<String> = servers
        .urls
        .iter()
        .map(|u| format!("{u}/v1/events"))
        .collect();
    drive(bodies, events, clients, &|c, body| {
        let url = &urls[c % urls.len()];
        agent
            .post(url)
            .set("Content-Type", "application/x-ndjson")
            .send_bytes(body)
            .map_err(|e| anyhow!("POST {url}: {e}"))?;
        Ok(())
    })
}

fn ndjson_bodies(events: usize) -> Vec<Vec<u8>> {
    (0..events)
        .step_by(BATCH)
        .map(|s| {
            (s..(s + BATCH).min(events))
                .map(|i| event_line(i) + "\n")
                .collect::<String>()
                .into_bytes()
        })
        .collect()
}

/// `instances` servers on one fresh log in PostgreSQL.
fn mlaudit_pg(
    o: &Opts,
    admin: &Sql,
    bodies: &[Vec<u8>],
    instances: usize,
) -> Result<((f64, f64), f64)> {
    let schema = format!("bench_mlaudit_{instances}_{}", std::process::id());
    admin.exec(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE"))?;
    let url = with_schema(&o.url, &schema);
    let servers = start_servers(Some(&url), instances, &schema)?;
    let lsn = admin.wal_lsn()?;
    let figures = drive_http(bodies, o.events, o.clients, &servers)?;
    let wal = admin.wal_since(&lsn)?;
    let bytes = (admin.schema_bytes(&schema)? + wal) / o.events as f64;
    drop(servers);
    let stored = admin.count(&format!("SELECT count(*) FROM {schema}.entries"))?;
    if stored != o.events as i64 {
        bail!("{schema}: {stored} events stored, {} sent", o.events);
    }
    admin.exec(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE"))?;
    Ok((figures, bytes))
}

const PLAIN_TABLE: &str = "CREATE TABLE events (seq bigserial PRIMARY KEY, id uuid NOT NULL UNIQUE, event_time timestamptz NOT NULL, kind text NOT NULL, actor text NOT NULL, payload jsonb NOT NULL)";

const CHAIN_TRIGGER: &str = "
ALTER TABLE events ADD COLUMN prev_hash bytea, ADD COLUMN hash bytea;
CREATE FUNCTION chain() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_advisory_xact_lock(4242);
    SELECT hash INTO NEW.prev_hash FROM events ORDER BY seq DESC LIMIT 1;
    NEW.hash := sha256(coalesce(NEW.prev_hash, ''::bytea) || convert_to(NEW.payload::text, 'UTF8'));
    RETURN NEW;
END $$;
CREATE TRIGGER chain BEFORE INSERT ON events FOR EACH ROW EXECUTE FUNCTION chain();";

/// The hand-built baselines: a multi-row INSERT per batch, with or without the chain trigger.
fn by_hand(
    o: &Opts,
    admin: &Sql,
    batches: &[Vec<PreparedEvent>],
    chained: bool,
) -> Result<((f64, f64), f64)> {
    let schema = format!(
        "bench_{}_{}",
        if chained { "trigger" } else { "insert" },
        std::process::id()
    );
    admin.exec(&format!(
        "DROP SCHEMA IF EXISTS {schema} CASCADE; CREATE SCHEMA {schema}; SET search_path TO {schema}; {PLAIN_TABLE}; {}",
        if chained { CHAIN_TRIGGER } else { "" }
    ))?;
    admin.exec("SET search_path TO public")?;
    let conns: Vec<Mutex<Sql>> = (0..o.clients)
        .map(|_| {
            let s = Sql::connect(&o.url)?;
            s.exec(&format!("SET search_path TO {schema}"))?;
            Ok(Mutex::new(s))
        })
        .collect::<Result<_>>()?;
    let mut sql = String::from("INSERT INTO events (id, event_time, kind, actor, payload) VALUES ");
    for r in 0..BATCH {
        let p = r * 5;
        if r > 0 {
            sql.push(',');
        }
        sql.push_str(&format!(
            "(${}::text::uuid, to_timestamp(${}::float8 / 1e9), ${}, ${}, ${}::text::jsonb)",
            p + 1,
            p + 2,
            p + 3,
            p + 4,
            p + 5
        ));
    }
    let lsn = admin.wal_lsn()?;
    let figures = drive(batches, o.events, o.clients, &|c,
                                                        batch: &Vec<
        PreparedEvent,
    >| {
        let conn = conns[c].lock().map_err(|_| anyhow!("poisoned"))?;
        let ids: Vec<String> = batch
            .iter()
            .map(|e| e.id.map(|i| i.to_string()).unwrap_or_default())
            .collect();
        let times: Vec<f64> = batch
            .iter()
            .map(|e| e.event_time_ns.unwrap_or(0) as f64)
            .collect();
        let payloads: Vec<String> = batch
            .iter()
            .map(|e| String::from_utf8_lossy(&e.payload).into_owned())
            .collect();
        let mut params: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> =
            Vec::with_capacity(batch.len() * 5);
        for (i, e) in batch.iter().enumerate() {
            params.push(&ids[i]);
            params.push(&times[i]);
            params.push(&e.kind);
            params.push(&e.actor_id);
            params.push(&payloads[i]);
        }
        let text = if batch.len() == BATCH {
            sql.clone()
        } else {
            let cut = sql
                .match_indices("),(")
                .nth(batch.len() - 1)
                .map_or(sql.len(), |(i, _)| i + 1);
            sql[..cut].to_owned()
        };
        conn.rt.block_on(conn.client.execute(&text, &params))?;
        Ok(())
    })?;
    let wal = admin.wal_since(&lsn)?;
    let bytes = (admin.schema_bytes(&schema)? + wal) / o.events as f64;
    drop(conns);
    admin.exec(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE"))?;
    Ok((figures, bytes))
}

fn embedded(o: &Opts, bodies: &[Vec<u8>]) -> Result<(f64, f64)> {
    let servers = start_servers(None, 1, "embedded")?;
    drive_http(bodies, o.events, o.clients, &servers)
}

pub fn run(args: &[String]) -> Result<()> {
    let o = parse(args)?;
    let admin = Sql::connect(&o.url)?;
    let batches = events(o.events)?;
    let wanted = |e: &str| o.engines.is_empty() || o.engines.iter().any(|w| w == e);
    if wanted("pg-insert") {
        let (f, b) = by_hand(&o, &admin, &batches, false)?;
        report("pg-insert", &o, f, Some(b));
    }
    if wanted("pg-trigger") {
        let (f, b) = by_hand(&o, &admin, &batches, true)?;
        report("pg-trigger", &o, f, Some(b));
    }
    let bodies = ndjson_bodies(o.events);
    if wanted("mlaudit-embedded") {
        report("mlaudit-embedded", &o, embedded(&o, &bodies)?, None);
    }
    if wanted("mlaudit-postgres") {
        let (f, b) = mlaudit_pg(&o, &admin, &bodies, 1)?;
        report("mlaudit-postgres", &o, f, Some(b));
    }
    if wanted("mlaudit-postgres-3") {
        let (f, b) = mlaudit_pg(&o, &admin, &bodies, 3)?;
        report("mlaudit-postgres-3", &o, f, Some(b));
    }
    Ok(())
}
