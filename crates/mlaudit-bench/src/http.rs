//! The HTTP ingest benchmark: an in-process `mlaudit serve` (embedded store, bearer-token auth)
//! on a loopback port, fed by 1, 16 and 64 concurrent keep-alive clients with batches of 1 and
//! of 1,000 prediction events (NDJSON); events/s and acknowledgement latency p50/p99, beside the
//! in-process store append of the same events measured in the same run (the ratio is the
//! server's overhead).

use crate::ingest::{cpu_us_per_event, emit, event_line, ingest_store, process_cpu_seconds};
use anyhow::{anyhow, bail, Context, Result};
use mlaudit_core::note::NoteSigner;
use mlaudit_embedded::EmbeddedStore;
use mlaudit_server::auth::{Principal, Role, Tokens};
use mlaudit_server::{AppState, BackgroundServer};
use serde_json::json;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

struct Opts {
    events: usize,
    single_requests: usize,
    dir: PathBuf,
    batch_sizes: Vec<usize>,
    client_counts: Vec<usize>,
}

fn parse(args: &[String]) -> Result<Opts> {
    let mut o = Opts {
        events: 200_000,
        single_requests: 20_000,
        dir: std::env::temp_dir().join(format!("mlaudit-bench-http-{}", std::process::id())),
        batch_sizes: vec![1000, 1],
        client_counts: vec![1, 16, 64],
    };
    let list = |v: String| {
        v.split(',')
            .map(|s| s.trim().parse::<usize>().map(|n| n.max(1)))
            .collect::<Result<Vec<_>, _>>()
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
            "--single-requests" => o.single_requests = val()?.parse()?,
            "--dir" => o.dir = PathBuf::from(val()?),
            "--batches" => o.batch_sizes = list(val()?)?,
            "--clients" => o.client_counts = list(val()?)?,
            other => bail!("unknown option {other}"),
        }
    }
    Ok(o)
}

/// A keep-alive HTTP/1.1 connection that posts NDJSON bodies.
struct Client {
    stream: TcpStream,
    auth: String,
    /// Response bytes read so far.
    buf: Vec<u8>,
}

impl Client {
    async fn connect(addr: SocketAddr, token: &str) -> Result<Client> {
        let stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        Ok(Client {
            stream,
            auth: format!("Bearer {token}"),
            buf: Vec::with_capacity(4096),
        })
    }

    async fn post(&mut self, body: &[u8]) -> Result<()> {
        let mut request = format!(
            "POST /v1/events HTTP/1.1\r\nHost: bench\r\nAuthorization: {}\r\nContent-Type: application/x-ndjson\r\nContent-Length: {}\r\n\r\n",
            self.auth,
            body.len()
        )
        .into_bytes();
        request.extend_from_slice(body);
        self.stream.write_all(&request).await?;
        self.buf.clear();
        let head_end = loop {
            if let Some(i) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            self.fill().await?;
        };
        let head = String::from_utf8_lossy(&self.buf[..head_end]).into_owned();
        let length: usize = head
            .lines()
            .find_map(|l| {
                l.to_ascii_lowercase()
                    .strip_prefix("content-length:")
                    .map(|v| v.trim().to_owned())
            })
            .context("a response without Content-Length")?
            .parse()?;
        while self.buf.len() < head_end + length {
            self.fill().await?;
        }
        if !head.starts_with("HTTP/1.1 200 ") {
            bail!(
                "HTTP error: {} {}",
                head.lines().next().unwrap_or(""),
                String::from_utf8_lossy(&self.buf[head_end..])
            );
        }
        Ok(())
    }

    async fn fill(&mut self) -> Result<()> {
        let mut chunk = [0u8; 4096];
        let n = tokio::time::timeout(Duration::from_secs(60), self.stream.read(&mut chunk))
            .await
            .context("no response in 60 s")??;
        if n == 0 {
            bail!("the server closed the connection");
        }
        self.buf.extend_from_slice(&chunk[..n]);
        Ok(())
    }
}

/// Sends `bodies` from `clients` concurrent keep-alive connections, multiplexed on one thread
/// (as wrk or oha do: a thread per connection would take a third of the two cores and add
/// its own scheduling delays to every latency); returns (seconds, sorted latencies in s).
pub fn drive(
    addr: SocketAddr,
    token: &str,
    clients: usize,
    bodies: Vec<Vec<u8>>,
) -> Result<(f64, Vec<f64>)> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let bodies = Arc::new(bodies);
    let next = Arc::new(AtomicUsize::new(0));
    let token = token.to_owned();
    runtime.block_on(async move {
        let mut connections = Vec::with_capacity(clients);
        for _ in 0..clients {
            connections.push(Client::connect(addr, &token).await?);
        }
        let start = Instant::now();
        let tasks: Vec<_> = connections
            .into_iter()
            .map(|mut c| {
                let (bodies, next) = (bodies.clone(), next.clone());
                tokio::spawn(async move {
                    let mut lat = Vec::new();
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        let Some(body) = bodies.get(i) else {
                            return Ok::<_, anyhow::Error>(lat);
                        };
                        let t = Instant::now();
                        c.post(body).await?;
                        lat.push(t.elapsed().as_secs_f64());
                    }
                })
            })
            .collect();
        let mut latencies = Vec::new();
        for t in tasks {
            latencies.extend(t.await.map_err(|e| anyhow!("client task: {e}"))??);
        }
        let secs = start.elapsed().as_secs_f64();
        latencies.sort_by(f64::total_cmp);
        Ok((secs, latencies))
    })
}

pub fn pct(sorted: &[f64], p: f64) -> f64 {
    sorted
        .get(((sorted.len() as f64 * p) as usize).min(sorted.len().saturating_sub(1)))
        .copied()
        .unwrap_or(0.0)
}

/// An in-process `mlaudit serve` (embedded store in `dir/log`, token auth) on a loopback port,
/// with a writer token.
pub fn serve(
    dir: &std::path::Path,
    signer: &NoteSigner,
) -> Result<(BackgroundServer, String, Arc<EmbeddedStore>)> {
    let (store, _) = EmbeddedStore::open(&dir.join("log"), Some(signer.clone()))?;
    let store = Arc::new(store);
    let tokens = RwLock::new(Tokens::load(&dir.join("tokens.json"))?);
    let actor = Principal {
        name: "local:bench".into(),
        role: Some(Role::Admin),
    };
    let token = Tokens::create(&tokens, &*store, &actor, "bench", Role::Writer)?;
    let state = AppState::new(store.clone(), signer.verifier(), Some(Arc::new(tokens)));
    let server = BackgroundServer::start("127.0.0.1:0", state)?;
    Ok((server, token, store))
}

pub fn run(args: &[String]) -> Result<()> {
    let o = parse(args)?;
    let _ = std::fs::remove_dir_all(&o.dir);
    std::fs::create_dir_all(&o.dir)?;
    let signer =
        NoteSigner::from_seed("bench.mlaudit.local", [7; 32]).map_err(|e| anyhow!("{e}"))?;

    // Baseline: the in-process append of the same kind of events, in its own store.
    let (base_store, _) = EmbeddedStore::open(&o.dir.join("inproc"), Some(signer.clone()))?;
    let base_batches: Vec<Vec<String>> = (0..o.events)
        .step_by(1000)
        .map(|s| (s..(s + 1000).min(o.events)).map(event_line).collect())
        .collect();
    let cpu = process_cpu_seconds();
    let inproc = o.events as f64 / ingest_store(&base_store, &base_batches)?;
    emit(
        "http",
        "inproc",
        "events_per_s",
        inproc,
        json!({ "events": o.events, "batch": 1000 }),
    );
    emit(
        "http",
        "inproc",
        "cpu_us_per_event",
        cpu_us_per_event(cpu, o.events),
        json!({ "events": o.events, "batch": 1000 }),
    );
    base_store.close()?;
    drop(base_store);

    let (server, token, store) = serve(&o.dir, &signer)?;
    let addr = server.addr();

    let mut seq = o.events; // distinct ids across all runs
    for &batch in &o.batch_sizes {
        for &clients in &o.client_counts {
            let requests = if batch == 1 {
                o.single_requests
            } else {
                (o.events / batch).max(clients)
            };
            let bodies: Vec<Vec<u8>> = (0..requests)
                .map(|r| {
                    (0..batch)
                        .map(|k| event_line(seq + r * batch + k) + "\n")
                        .collect::<String>()
                        .into_bytes()
                })
                .collect();
            seq += requests * batch;
            let cpu = process_cpu_seconds();
            let (secs, lat) = drive(addr, &token, clients, bodies)?;
            let events = (requests * batch) as f64;
            let ctx = json!({ "clients": clients, "batch": batch, "requests": requests });
            emit(
                "http",
                "mlaudit",
                "events_per_s",
                events / secs,
                ctx.clone(),
            );
            emit(
                "http",
                "mlaudit",
                "cpu_us_per_event",
                cpu_us_per_event(cpu, requests * batch),
                ctx.clone(),
            );
            emit(
                "http",
                "mlaudit",
                "ack_p50_ms",
                pct(&lat, 0.50) * 1e3,
                ctx.clone(),
            );
            emit(
                "http",
                "mlaudit",
                "ack_p99_ms",
                pct(&lat, 0.99) * 1e3,
                ctx.clone(),
            );
            if batch > 1 {
                emit(
                    "http",
                    "mlaudit",
                    "ratio_vs_inproc",
                    events / secs / inproc,
                    ctx,
                );
            }
        }
    }
    server.stop()?;
    store.close()?;
    drop(store);
    std::fs::remove_dir_all(&o.dir)?;
    Ok(())
}
