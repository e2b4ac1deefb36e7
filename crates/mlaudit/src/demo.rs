//! `mlaudit demo`: records a realistic credit-risk model lifecycle — data sourcing and
//! preparation, a training run with evaluated checkpoints, registration, a named approver's
//! approval, promotion and deployment, then sampled predictions — by sending it over HTTP to a
//! real `mlaudit serve` on a free loopback port; then verifies the whole log, and shows one
//! prediction's lineage and an offline check of its inclusion proof (also fetched over HTTP).

use crate::http;
use crate::ledger;
use crate::proof::{check_bundle, verify_store};
use crate::read::print_lineage;
use anyhow::Result;
use mlaudit_core::event::format_time;
use mlaudit_server::auth::{Principal, Role, Tokens};
use mlaudit_server::{AppState, BackgroundServer};
use mlaudit_store::prelude::*;
use mlaudit_store::{lineage, proofs, Query};
use serde_json::{json, Value};
use std::path::Path;
use std::sync::{Arc, RwLock};

struct Clock(i64);

impl Clock {
    fn tick(&mut self, seconds: i64) -> String {
        self.0 += seconds * 1_000_000_000;
        format_time(self.0)
    }
}

fn ev(kind: &str, time: String, actor: (&str, &str), subject: Value, attributes: Value) -> Value {
    json!({ "id": uuid::Uuid::new_v4().to_string(), "time": time, "kind": kind, "actor": { "id": actor.0, "type": actor.1 }, "subject": subject, "attributes": attributes })
}

/// A small deterministic generator for plausible feature values.
fn mix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

const REGIONS: [&str; 4] = ["north", "south", "east", "west"];

fn lifecycle(version: &str, run: &str, predictions: usize, clock: &mut Clock) -> Vec<Value> {
    let (model, dataset, snapshot, deployment) = (
        "credit-risk",
        "credit-applications",
        "2026-10-31",
        "credit-scoring-prod",
    );
    let etl = ("etl-pipeline", "service");
    let trainer = ("training-service", "service");
    let mut out = vec![
        ev(
            "data.source_accessed",
            clock.tick(60),
            etl,
            json!({"dataset": dataset}),
            json!({"source": "s3://bank-data/raw/applications-2026-10.parquet", "rows": 120_000}),
        ),
        ev(
            "data.transformation_applied",
            clock.tick(300),
            etl,
            json!({"dataset": dataset}),
            json!({"inputs": ["s3://bank-data/raw/applications-2026-10.parquet"], "transformation": "drop_pii,impute_median,one_hot(region)", "filter": "application_date >= '2024-01-01'"}),
        ),
        ev(
            "data.snapshot_created",
            clock.tick(120),
            etl,
            json!({"dataset": dataset, "dataset_version": snapshot}),
            json!({"content_sha256": "9f2c5d1e8a7b6c4d3e2f1a0b9c8d7e6f5a4b3c2d1e0f9a8b7c6d5e4f3a2b1c0d", "rows": 118_432}),
        ),
        ev(
            "training.run_started",
            clock.tick(600),
            trainer,
            json!({"run": run, "model": model}),
            json!({"hyperparameters": {"learning_rate": 0.05, "max_depth": 6, "n_estimators": 400}, "random_seed": 42, "datasets": [format!("{dataset}@{snapshot}")], "code_version": "git:4e1f0c2"}),
        ),
    ];
    for step in 1..=5u64 {
        let auc = 0.80 + 0.012 * step as f64;
        out.push(ev("training.checkpoint_evaluated", clock.tick(900), trainer, json!({"run": run}), json!({"step": step * 80, "metrics": {"auc": auc, "logloss": 0.52 - 0.03 * step as f64}})));
    }
    out.extend([
        ev("training.run_completed", clock.tick(60), trainer, json!({"run": run}), json!({"status": "succeeded", "duration_s": 4560, "compute": {"cpu_hours": 12.5, "gpu_hours": 0, "peak_memory_gb": 18}})),
        ev("registry.model_registered", clock.tick(300), ("ml-engineer:jchen", "user"), json!({"model": model, "version": version, "run": run}), json!({"artifact_sha256": "4a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8f9"})),
        ev("registry.promotion_requested", clock.tick(600), ("ml-engineer:jchen", "user"), json!({"model": model, "version": version}), json!({"to_stage": "production", "ticket": "MRM-2291"})),
        ev("registry.approval_granted", clock.tick(86_400), ("maria.gonzalez", "user"), json!({"model": model, "version": version}), json!({"approver": {"id": "maria.gonzalez", "role": "model-risk-officer"}, "reason": "Validation report MRM-2291 reviewed: AUC 0.86 on holdout, no disparate impact above threshold"})),
        ev("registry.stage_changed", clock.tick(300), ("registry-service", "service"), json!({"model": model, "version": version}), json!({"from_stage": "staging", "to_stage": "production"})),
        ev("registry.deployment_target_assigned", clock.tick(60), ("ml-engineer:jchen", "user"), json!({"model": model, "version": version}), json!({"target": "k8s/prod-eu/credit-scoring"})),
        ev("operations.deployed", clock.tick(600), ("deploy-bot", "service"), json!({"deployment": deployment, "model": model, "version": version}), json!({"environment": "production", "image": "registry.example/credit-risk:7"})),
        ev("operations.traffic_routed", clock.tick(60), ("deploy-bot", "service"), json!({"deployment": deployment}), json!({"split": {version: 100}})),
        ev("governance.policy_changed", clock.tick(60), ("maria.gonzalez", "user"), json!({}), json!({"policy": "prediction_sampling/credit-risk", "old": {"risk": "low", "rate": 0.05}, "new": {"risk": "high", "rate": 1.0}})),
    ]);
    for i in 0..predictions {
        let r = mix(i as u64);
        let income = 20_000 + (r % 130_000);
        let debt_ratio = (r >> 20) % 100;
        let score =
            ((income as f64 / 150_000.0) * 0.6 + (1.0 - debt_ratio as f64 / 100.0) * 0.4).min(1.0);
        out.push(ev(
            "prediction.served",
            clock.tick(2),
            ("scoring-api", "service"),
            json!({"model": model, "version": version, "request": format!("req-{run}-{i:06}"), "deployment": deployment}),
            json!({"inputs": {"income": income, "debt_ratio": debt_ratio as f64 / 100.0, "region": REGIONS[(r % 4) as usize]}, "outputs": {"score": (score * 1000.0).round() / 1000.0, "decision": if score > 0.5 { "approve" } else { "refer" }}, "confidence": 0.9, "latency_ms": 3 + r % 9, "sample_rate": 1.0}),
        ));
    }
    out
}

pub fn run(data: &Path, predictions: usize) -> Result<()> {
    if ledger::signer(data).is_err() {
        let mut tag = [0u8; 4];
        getrandom::getrandom(&mut tag).map_err(|e| anyhow::anyhow!("no randomness: {e}"))?;
        let origin = format!("mlaudit.local/demo-{}", mlaudit_core::merkle::hex(&tag));
        let signer = ledger::init(data, &origin)?;
        println!("initialized {} with origin {origin}", data.display());
        println!("verifier key: {}", signer.verifier().to_text());
    }
    let key = ledger::signer(data)?.verifier();
    let store = ledger::open(data)?;
    let earlier = store
        .query(&Query {
            kind: Some("registry.model_registered".into()),
            model: Some("credit-risk".into()),
            limit: usize::MAX,
            ..Query::default()
        })?
        .len();
    let version = (7 + earlier).to_string();
    let run = format!("run-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    let start = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_nanos() as i64
        - 3 * 86_400 * 1_000_000_000;
    let events = lifecycle(&version, &run, predictions, &mut Clock(start));
    let lifecycle_len = events.len() - predictions;
    let store = Arc::new(store);
    let server = DemoServer::start(store.clone(), key.clone())?;
    let before = store.tree_size();
    println!("\n== sending the lifecycle to a local `mlaudit serve` at http://{} (bearer token of a writer)", server.addr);
    let (a, b) = (
        server.post(&events[..lifecycle_len], 1000)?,
        server.post(&events[lifecycle_len..], 100)?,
    );
    println!("== recorded model credit-risk version {version} (run {run}): {} lifecycle events and {} predictions over HTTP, seq {before}..{}", a.new, b.new, store.tree_size() - 1);

    println!("\n== verify: recomputing every leaf, payload digest, tree node and checkpoint");
    let report = verify_store(&*store, &key)?;
    println!(
        "intact: {} events, {} checkpoints, root {}",
        report.events,
        report.checkpoints,
        report.root.to_hex()
    );

    let (pred_seq, what) = match (b.first_seq, a.last_seq) {
        (Some(first), _) => (
            first + (predictions as u64 / 2).min(b.new.saturating_sub(1)),
            "the prediction",
        ),
        (None, Some(last)) => (last, "the last lifecycle event"),
        (None, None) => (store.tree_size().saturating_sub(1), "the last event"),
    };
    println!("\n== lineage of {what} at seq {pred_seq}");
    let l = lineage::lineage(&*store, pred_seq)?;
    ledger::audit_read(
        &*store,
        "mlaudit demo lineage",
        &pred_seq.to_string(),
        1 + l.registry.len() + l.deployments.len() + l.training.len(),
    )?;
    print_lineage(&l);

    println!("\n== inclusion proof for seq {pred_seq}, checked offline with only the verifier key");
    let bundle = proofs::inclusion_bundle(&*store, pred_seq)?;
    ledger::audit_read(&*store, "mlaudit demo prove", &pred_seq.to_string(), 1)?;
    println!(
        "bundle: leaf {} of tree size {}, {} path hashes",
        bundle.leaf_index,
        bundle.tree_size,
        bundle.inclusion_path.len()
    );
    println!("{}", check_bundle(&bundle, &key)?);
    let leaf = mlaudit_core::merkle::leaf_hash(
        &mlaudit_core::b64::decode(&bundle.entry).unwrap_or_default(),
    );
    let public = server.get(&format!("/v1/proof/inclusion?leaf_hash={}", leaf.to_hex()))?;
    println!(
        "the proof by leaf hash, fetched anonymously over HTTP (hashes only, no event content): {}",
        check_hash_proof(&public, &leaf, &key)?
    );
    let sizes = store.checkpoint_sizes()?;
    if let (Some(first), Some(last)) = (sizes.iter().find(|s| **s > 0), sizes.last()) {
        let proof = proofs::consistency(&*store, *first, *last)?;
        proof
            .verify(&key)
            .map_err(|e| crate::ledger::VerifyFailed(format!("consistency proof FAILED: {e}")))?;
        println!(
            "OK: checkpoint {first} is consistent with checkpoint {last} ({} hashes)",
            proof.proof.len()
        );
    }
    println!(
        "\nlatest checkpoint:\n{}",
        mlaudit_store::latest_checkpoint(&*store)?.unwrap_or_default()
    );
    let store_flag = ledger::store_url()
        .map(|u| format!(" --store '{}'", mlaudit_postgres::url::redact(u)))
        .unwrap_or_default();
    println!(
        "try: mlaudit --data {}{store_flag} query --model credit-risk --stage registry",
        data.display()
    );
    server.stop()?;
    store.close()?;
    Ok(())
}

/// Checks an anonymous proof by leaf hash (`GET /v1/proof/inclusion?leaf_hash=`) against the
/// leaf the caller holds and the verifier key; a one-line description.
fn check_hash_proof(
    proof: &Value,
    leaf: &mlaudit_core::merkle::Hash,
    key: &mlaudit_core::note::NoteVerifier,
) -> Result<String> {
    let note = proof["checkpoint"].as_str().unwrap_or_default();
    let cp = mlaudit_core::note::open_checkpoint(key, note)?;
    let index = proof["leaf_index"].as_u64().unwrap_or(u64::MAX);
    let path = proof["inclusion_path"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|h| {
            h.as_str()
                .and_then(|h| mlaudit_core::b64::decode(h).ok())
                .and_then(|b| mlaudit_core::merkle::Hash::from_slice(&b))
                .ok_or_else(|| anyhow::anyhow!("a path hash is not base64 of 32 bytes"))
        })
        .collect::<Result<Vec<_>>>()?;
    mlaudit_core::merkle::verify_inclusion(index, cp.size, leaf, &path, &cp.root)
        .map_err(|e| crate::ledger::VerifyFailed(format!("inclusion proof FAILED: {e}")))?;
    Ok(format!("OK: leaf {index} of tree size {}", cp.size))
}

/// An in-process `mlaudit serve` on a free loopback port, with one writer token that lives only
/// as long as the demo (its token table is a temporary file, not the data directory's).
struct DemoServer {
    addr: std::net::SocketAddr,
    token: String,
    server: Option<BackgroundServer>,
    tokens_dir: std::path::PathBuf,
}

/// What a batch of posts appended.
struct Posted {
    new: u64,
    first_seq: Option<u64>,
    last_seq: Option<u64>,
}

impl DemoServer {
    fn start(
        store: Arc<crate::ledger::Ledger>,
        verifier: mlaudit_core::note::NoteVerifier,
    ) -> Result<DemoServer> {
        let tokens_dir =
            std::env::temp_dir().join(format!("mlaudit-demo-tokens-{}", std::process::id()));
        std::fs::create_dir_all(&tokens_dir)?;
        let tokens = RwLock::new(Tokens::load(&tokens_dir.join("tokens.json"))?);
        let actor = Principal {
            name: crate::append::local_principal(),
            role: Some(Role::Admin),
        };
        let token = Tokens::create(&tokens, &*store, &actor, "demo-writer", Role::Writer)?;
        let state = AppState::new(store, verifier, Some(Arc::new(tokens)));
        let server = BackgroundServer::start("127.0.0.1:0", state)?;
        Ok(DemoServer {
            addr: server.addr(),
            token,
            server: Some(server),
            tokens_dir,
        })
    }

    fn post(&self, events: &[Value], batch: usize) -> Result<Posted> {
        let mut out = Posted {
            new: 0,
            first_seq: None,
            last_seq: None,
        };
        let auth = format!("Bearer {}", self.token);
        for chunk in events.chunks(batch.max(1)) {
            let body: String = chunk.iter().map(|e| format!("{e}\n")).collect();
            let reply = http::request(
                self.addr,
                "POST",
                "/v1/events",
                &[
                    ("Content-Type", "application/x-ndjson"),
                    ("Authorization", &auth),
                ],
                body.as_bytes(),
            )?
            .json()?;
            for e in reply["events"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|e| e["duplicate"] == false)
            {
                let seq = e["seq"].as_u64();
                out.new += 1;
                out.first_seq = out.first_seq.or(seq);
                out.last_seq = seq;
            }
        }
        Ok(out)
    }

    fn get(&self, path: &str) -> Result<Value> {
        http::request(self.addr, "GET", path, &[], &[])?.json()
    }

    fn stop(mut self) -> Result<()> {
        match self.server.take() {
            Some(server) => Ok(server.stop()?),
            None => Ok(()),
        }
    }
}

impl Drop for DemoServer {
    fn drop(&mut self) {
        drop(self.server.take());
        let _ = std::fs::remove_dir_all(&self.tokens_dir);
    }
}
