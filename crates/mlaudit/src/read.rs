//! `init`, `get`, `query`, `lineage` and `checkpoint`.

use crate::ledger::{self, InputError};
use crate::output::print_json;
use anyhow::Result;
use mlaudit_core::event::{parse_time_bound, Stage};
use mlaudit_store::prelude::*;
use mlaudit_store::{lineage as lin, view, Query, Store};
use serde_json::Value;
use std::path::Path;

pub fn init(data: &Path, origin: Option<String>) -> Result<()> {
    let origin = match origin {
        Some(o) => o,
        None => {
            let mut tag = [0u8; 4];
            getrandom::getrandom(&mut tag).map_err(|e| anyhow::anyhow!("no randomness: {e}"))?;
            format!("mlaudit.local/{}", mlaudit_core::merkle::hex(&tag))
        }
    };
    let signer = ledger::init(data, &origin)?;
    if let Some(url) = ledger::store_url() {
        return print_postgres_init(url, data, &origin, &signer);
    }
    println!("initialized {} (origin {origin})", data.display());
    println!(
        "verifier key (also in {}):",
        ledger::verifier_key_path(data).display()
    );
    println!("{}", signer.verifier().to_text());
    Ok(())
}

/// What `init --store postgres://…` did, the roles an operator creates, and how to run servers.
fn print_postgres_init(
    url: &str,
    data: &Path,
    origin: &str,
    signer: &mlaudit_core::note::NoteSigner,
) -> Result<()> {
    let parsed = mlaudit_postgres::StoreUrl::parse(url)?;
    let db = parsed.config.get_dbname().unwrap_or("mlaudit");
    let admin = parsed.config.get_user().unwrap_or("postgres");
    let owner = parsed.owner_role.as_deref().unwrap_or("mlaudit_owner");
    println!(
        "initialized the log in {} (schema {}, origin {origin})",
        parsed.display, parsed.schema
    );
    println!(
        "signing key: {} (give every server of this log the same file with --key)",
        data.join("key").join("signing.key").display()
    );
    println!(
        "verifier key (also in {}):",
        ledger::verifier_key_path(data).display()
    );
    println!("{}", signer.verifier().to_text());
    println!();
    println!("The servers should connect as a role that may only SELECT and INSERT. Run once, as a superuser:");
    println!();
    print!(
        "{}",
        mlaudit_postgres::schema::roles_sql(db, owner, &parsed.app_role, admin)
    );
    println!();
    println!("then let the owner role own the tables and grant the servers' role its rights:");
    println!("  mlaudit init --store '{}?schema={}&owner_role={owner}&app_role={}'   (on an empty schema)", parsed.display.split('?').next().unwrap_or(""), parsed.schema, parsed.app_role);
    println!("and start each server as that role:");
    println!(
        "  mlaudit serve --store 'postgres://{}@HOST/{db}?schema={}' --key signing.key",
        parsed.app_role, parsed.schema
    );
    Ok(())
}

/// Resolves an event id (UUID) or a bare seq number to a seq.
pub fn resolve(store: &dyn Store, id: &str) -> Result<u64> {
    view::resolve(store, id).map_err(|e| match e {
        view::LookupError::Store(e) => anyhow::Error::from(e),
        other => InputError(other.to_string()).into(),
    })
}

/// The JSON view of a stored event with its seq and leaf hash.
pub fn event_json(store: &dyn Store, seq: u64) -> Result<Value> {
    Ok(view::event_json(store, seq)?)
}

pub fn get(data: &Path, id: &str) -> Result<()> {
    let store = ledger::open(data)?;
    let found = resolve(&store, id).and_then(|seq| event_json(&store, seq));
    ledger::audit_read(&store, "mlaudit get", id, usize::from(found.is_ok()))?;
    print_json(&found?)
}

/// Filters of `mlaudit query`.
#[derive(Debug, clap::Args)]
pub struct QueryArgs {
    /// data, training, registry, operations, prediction, governance or custom
    #[arg(long)]
    stage: Option<String>,
    #[arg(long)]
    kind: Option<String>,
    #[arg(long)]
    model: Option<String>,
    #[arg(long)]
    version: Option<String>,
    /// Actor id
    #[arg(long)]
    actor: Option<String>,
    #[arg(long)]
    run: Option<String>,
    #[arg(long)]
    dataset: Option<String>,
    #[arg(long)]
    deployment: Option<String>,
    /// Events at or after this time (RFC 3339)
    #[arg(long)]
    since: Option<String>,
    /// Events before this time (RFC 3339)
    #[arg(long)]
    until: Option<String>,
    /// Only events with a seq greater than this (pagination)
    #[arg(long)]
    after: Option<u64>,
    #[arg(long, default_value_t = 100)]
    limit: usize,
    #[arg(long, value_enum, default_value_t = crate::Format::Table)]
    format: crate::Format,
}

/// The filters of a query, as flags, for the audit record.
fn describe_query(a: &QueryArgs) -> String {
    let flags = [
        ("stage", &a.stage),
        ("kind", &a.kind),
        ("model", &a.model),
        ("version", &a.version),
        ("actor", &a.actor),
        ("run", &a.run),
        ("dataset", &a.dataset),
        ("deployment", &a.deployment),
        ("since", &a.since),
        ("until", &a.until),
    ];
    let mut out: Vec<String> = flags
        .iter()
        .filter_map(|(name, v)| v.as_ref().map(|v| format!("--{name} {v}")))
        .collect();
    if let Some(after) = a.after {
        out.push(format!("--after {after}"));
    }
    out.push(format!("--limit {}", a.limit));
    out.join(" ")
}

fn time_flag(name: &str, value: Option<String>) -> Result<Option<i64>> {
    value
        .map(|v| {
            parse_time_bound(&v).ok_or_else(|| {
                InputError(format!(
                    "--{name} {v:?} is not an RFC 3339 time (e.g. 2026-01-31T00:00:00Z)"
                ))
                .into()
            })
        })
        .transpose()
}

pub fn query(data: &Path, a: QueryArgs) -> Result<()> {
    let described = describe_query(&a);
    let stage = a
        .stage
        .map(|s| Stage::parse(&s).ok_or_else(|| InputError(format!("--stage {s:?} is not one of data, training, registry, operations, prediction, governance, custom"))))
        .transpose()?;
    let q = Query {
        stage,
        kind: a.kind,
        model: a.model,
        version: a.version,
        actor: a.actor,
        run: a.run,
        dataset: a.dataset,
        deployment: a.deployment,
        since_ns: time_flag("since", a.since)?,
        until_ns: time_flag("until", a.until)?,
        after_seq: a.after,
        limit: a.limit,
    };
    let store = ledger::open(data)?;
    let seqs = store.query(&q)?;
    let rows: Vec<Value> = seqs
        .iter()
        .map(|s| event_json(&store, *s))
        .collect::<Result<_>>()?;
    ledger::audit_read(&store, "mlaudit query", &described, rows.len())?;
    match a.format {
        crate::Format::Json => print_json(&rows)?,
        crate::Format::Ndjson => {
            for r in &rows {
                println!("{}", serde_json::to_string(r)?);
            }
        }
        crate::Format::Table | crate::Format::Text => print_table(&rows),
    }
    Ok(())
}

fn subject_text(ev: &Value) -> String {
    ev["subject"]
        .as_object()
        .map(|m| {
            m.iter()
                .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or("")))
                .collect::<Vec<_>>()
                .join(" ")
        })
        .unwrap_or_default()
}

fn print_table(rows: &[Value]) {
    println!(
        "{:>8}  {:<24}  {:<34}  {:<16}  SUBJECT",
        "SEQ", "TIME", "KIND", "ACTOR"
    );
    for r in rows {
        let ev = &r["event"];
        println!(
            "{:>8}  {:<24}  {:<34}  {:<16}  {}",
            r["seq"].as_u64().unwrap_or_default(),
            ev["time"].as_str().unwrap_or(""),
            ev["kind"].as_str().unwrap_or(""),
            ev["actor"]["id"].as_str().unwrap_or(""),
            subject_text(ev)
        );
    }
    println!("({} events)", rows.len());
}

fn line(ev: &Value) -> String {
    format!(
        "seq {:<6} {}  {}  by {}",
        ev["seq"],
        ev["time"].as_str().unwrap_or(""),
        ev["kind"].as_str().unwrap_or(""),
        ev["actor"]["id"].as_str().unwrap_or("")
    )
}

/// Prints a lineage as an indented outline.
pub fn print_lineage(l: &lin::Lineage) {
    println!("event      {}", line(&l.event));
    if let (Some(m), Some(v)) = (&l.model, &l.version) {
        println!("model      {m} version {v}");
    }
    println!("registry history:");
    for ev in &l.registry {
        let attrs = &ev["attributes"];
        let extra = match ev["kind"].as_str() {
            Some("registry.approval_granted" | "registry.approval_rejected") => format!(
                "  approver={} reason={}",
                attrs["approver"], attrs["reason"]
            ),
            Some("registry.stage_changed") => {
                format!("  {} -> {}", attrs["from_stage"], attrs["to_stage"])
            }
            _ => String::new(),
        };
        println!("  {}{extra}", line(ev));
    }
    println!("deployments:");
    for ev in &l.deployments {
        println!("  {}", line(ev));
    }
    println!("training run {}:", l.run.as_deref().unwrap_or("(unknown)"));
    for ev in &l.training {
        println!("  {}", line(ev));
    }
    for d in &l.datasets {
        println!(
            "dataset {}@{}:",
            d.dataset,
            d.version.as_deref().unwrap_or("?")
        );
        for ev in &d.events {
            println!("  {}", line(ev));
        }
    }
    if l.truncated {
        println!("(truncated: a step had more events than a lineage lists; query them directly)");
    }
}

pub fn lineage(data: &Path, id: &str, json: bool) -> Result<()> {
    let store = ledger::open(data)?;
    let found = resolve(&store, id).and_then(|seq| Ok(lin::lineage(&store, seq)?));
    let shown = found.as_ref().map_or(0, |l| {
        1 + l.registry.len()
            + l.deployments.len()
            + l.training.len()
            + l.datasets.iter().map(|d| d.events.len()).sum::<usize>()
    });
    ledger::audit_read(&store, "mlaudit lineage", id, shown)?;
    let l = found?;
    if json {
        print_json(&l)
    } else {
        print_lineage(&l);
        Ok(())
    }
}

pub fn checkpoint(data: &Path, size: Option<u64>, list: bool) -> Result<()> {
    let store = ledger::open(data)?;
    if list {
        for s in store.checkpoint_sizes()? {
            println!("{s}");
        }
        return Ok(());
    }
    let note = match size {
        Some(s) => store
            .checkpoint(s)?
            .ok_or_else(|| InputError(format!("no checkpoint is stored for tree size {s}")))?,
        None => mlaudit_store::latest_checkpoint(&store)?
            .ok_or_else(|| InputError("the log has no checkpoint yet".into()))?,
    };
    print!("{note}");
    Ok(())
}
