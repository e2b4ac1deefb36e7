//! `mlaudit retention plan|apply`: which events are hot, warm or due for the cold archive,
//! which payloads the expiry rules make due, and the archive brought up to date.
//!
//! Ages count from an event's receipt time (when the log accepted it), against `--now` or
//! the clock. The cold archive is a prefix of the log ending at a signed checkpoint, so the
//! events due for it are those up to the last checkpoint whose events are all older than the
//! warm age. Once the archive holds an event, byte for byte, its payload leaves the server
//! ([`offload`]); its entry stays, so proofs and queries need no archive, and reads fetch the
//! payload from the archive the data directory remembers.

pub mod expiry;
pub mod offload;
pub mod policy;

use crate::ledger::{self, InputError, Ledger};
use crate::output::Progress;
use anyhow::{Context, Result};
use mlaudit_archive::write::Extended;
use mlaudit_archive::Archive;
use mlaudit_core::entry::decode_view;
use mlaudit_core::event::{format_time, parse_time, prepare};
use mlaudit_core::note::NoteVerifier;
use mlaudit_store::prelude::*;
use policy::{Policy, RetentionFile};
use std::path::{Path, PathBuf};

/// The file in the data directory remembering the archive's URL.
const ARCHIVE_URL_FILE: &str = "archive-url";

#[derive(Debug, clap::Subcommand)]
pub enum RetentionCommand {
    /// Print which events are hot, warm or due for the archive, and which payloads would
    /// expire and by which rule.
    Plan(RetentionArgs),
    /// Do what `plan` prints: expire the payloads due, bring the cold archive up to date and
    /// move the archived payloads off the server (reads then fetch them from the archive).
    Apply(RetentionArgs),
}

#[derive(Debug, clap::Args)]
pub struct RetentionArgs {
    /// The cold archive: s3://bucket/prefix, gs://…, az://…, file:///path [config:
    /// retention.archive; else the one this data directory used last]. Credentials and
    /// endpoints come from the environment (AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, …).
    #[arg(long, value_name = "URL")]
    archive: Option<String>,
    /// Age at which events leave the hot tier, e.g. 90d [config: retention.hot]
    #[arg(long, value_name = "AGE")]
    hot: Option<String>,
    /// Age at which events go to the cold archive, e.g. 365d [config: retention.warm]
    #[arg(long, value_name = "AGE")]
    warm: Option<String>,
    /// Plan as of this time (RFC 3339) instead of now, to rehearse a future date
    #[arg(long, value_name = "TIME")]
    now: Option<String>,
    /// The TOML config file holding [retention] (the one `mlaudit serve --config` reads)
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
}

/// What the policy makes due at one time.
#[derive(Debug)]
struct Plan {
    now_ns: i64,
    size: u64,
    /// The first seq received within the hot age.
    hot_from: u64,
    /// The first seq received within the warm age.
    warm_from: u64,
    /// The checkpoint size the archive is to reach (0: nothing due).
    archive_to: u64,
    /// Per rule: the payloads it makes due, and those kept by legal holds.
    expiry: Vec<expiry::RuleDue>,
}

pub fn run(data: &Path, cmd: RetentionCommand) -> Result<()> {
    let (args, apply) = match cmd {
        RetentionCommand::Plan(a) => (a, false),
        RetentionCommand::Apply(a) => (a, true),
    };
    let file = config_file(args.config.as_deref())?;
    let policy = Policy::resolve(&file, args.hot.as_deref(), args.warm.as_deref())?;
    let now_ns = match &args.now {
        Some(t) => {
            parse_time(t).ok_or_else(|| InputError(format!("--now {t:?}: not an RFC 3339 time")))?
        }
        None => now_ns(),
    };
    let archive_url = args
        .archive
        .clone()
        .or(file.archive.clone())
        .or_else(|| remembered_archive(data));
    let store = ledger::open(data)?;
    if let Some(url) = &archive_url {
        check_same_archive(data, url, &store)?;
    }
    let plan = make_plan(&store, &policy, now_ns, true)?;
    let archive = archive_url.as_deref().map(Archive::open).transpose()?;
    let verifier = ledger::signer(data)?.verifier();
    let archived = match &archive {
        Some(a) => a
            .verified_size(&verifier)
            .context("reading the archive's checkpoint")?,
        None => 0,
    };
    print_plan(&plan, &policy, archive.as_ref(), archived);
    if !apply {
        return Ok(());
    }
    if let Some(seq) = record_policy(&store, &policy)? {
        println!("recorded the retention policy in the log (governance.policy_changed, seq {seq})");
    }
    // Before archiving: a payload expired first is archived as absent (and one archived
    // earlier is marked absent in the archive's bundles).
    let actor = crate::append::local_principal();
    for done in expiry::expire(&store, &plan.expiry, archive.as_ref(), &actor, true)? {
        println!(
            "payload expiry: {}: {} payloads removed (governance.payload_expired at seqs {})",
            done.text,
            done.removed,
            seq_list(&done.recorded)
        );
    }
    match &archive {
        Some(a) if plan.archive_to > archived => {
            let started = std::time::Instant::now();
            let mut progress = Progress::new("archiving", plan.archive_to - archived);
            let done = archive_up_to(&store, a, plan.archive_to, &verifier, &mut |d, _| {
                progress.set(d)
            })?;
            progress.finish();
            println!(
                "archived seqs {}..{} to {}: {} objects written ({} bytes), {} already there, in {:.1} s",
                done.from,
                done.size,
                a.url(),
                done.written,
                done.bytes,
                done.already_there,
                started.elapsed().as_secs_f64()
            );
        }
        Some(_) => println!("archive: already up to date"),
        None if plan.archive_to > 0 => println!(
            "archive: none configured (--archive, or retention.archive in the config): {} events stay local",
            plan.archive_to
        ),
        None => {}
    }
    if let (Some(url), true) = (&archive_url, data.is_dir()) {
        remember_archive(data, url)?;
    }
    if let Some(a) = &archive {
        offload_archived(data, &store, a, &verifier)?;
    }
    store.close()
}

/// Drops the local payloads the archive now holds, saying what it did.
fn offload_archived(
    data: &Path,
    store: &Ledger,
    archive: &Archive,
    verifier: &NoteVerifier,
) -> Result<()> {
    let to = archive.verified_size(verifier)?;
    let from = offload::offloaded_to(data).min(to);
    if from >= to {
        return Ok(());
    }
    let mut progress = Progress::new("moving archived payloads off the server", to - from);
    let done = offload::offload(data, store, archive, to, &mut |d, _| progress.set(d));
    progress.finish();
    match done {
        Ok(done) => println!(
            "cold tier: {} payloads ({} bytes) of seqs {}..{} are now kept only in the archive",
            done.dropped, done.bytes, done.from, done.to
        ),
        Err(e) if unsupported(&e) => println!(
            "cold tier: archived payloads stay in the store too ({})",
            e.root_cause()
        ),
        Err(e) => return Err(e),
    }
    Ok(())
}

/// Whether `e` says the engine cannot drop local payloads.
fn unsupported(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        matches!(
            c.downcast_ref::<mlaudit_store::StoreError>(),
            Some(mlaudit_store::StoreError::Unsupported(_))
        )
    })
}

/// `mlaudit restore --from SEQ --to SEQ`: brings archived payloads back to the server.
pub fn restore_command(data: &Path, from: u64, to: u64) -> Result<()> {
    let store = ledger::open(data)?;
    let size = store.tree_size();
    if from > to || to >= size {
        return Err(InputError(format!(
            "--from {from} --to {to}: give seqs from <= to, both below the log's {size} events"
        ))
        .into());
    }
    if store.cold().is_none() {
        return Err(InputError(format!(
            "{} remembers no cold archive (retention apply --archive URL writes it): nothing was moved there",
            data.display()
        ))
        .into());
    }
    let started = std::time::Instant::now();
    let mut progress = Progress::new("restoring", to - from + 1);
    let done = offload::restore(&store, from, to, &mut |d, _| progress.set(d))?;
    progress.finish();
    println!(
        "restored {} payloads ({} bytes) of seqs {from}..={to} from the archive to the server in {:.1} s; the rest were there already",
        done.restored,
        done.bytes,
        started.elapsed().as_secs_f64()
    );
    store.close()
}

/// `a, b, c` or `a..=z (n events)` for a long list.
fn seq_list(seqs: &[u64]) -> String {
    match seqs {
        [] => "none".into(),
        [one] => one.to_string(),
        [first, .., last] if seqs.len() > 3 => format!("{first}..={last} ({} events)", seqs.len()),
        _ => seqs
            .iter()
            .map(u64::to_string)
            .collect::<Vec<_>>()
            .join(", "),
    }
}

fn now_ns() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
}

/// `[retention]` of the config file (empty without a file).
fn config_file(path: Option<&Path>) -> Result<RetentionFile> {
    #[derive(serde::Deserialize)]
    struct Whole {
        retention: Option<RetentionFile>,
    }
    let Some(path) = path else {
        return Ok(RetentionFile::default());
    };
    let text = std::fs::read_to_string(path)
        .map_err(|e| InputError(format!("cannot read {}: {e}", path.display())))?;
    let whole: Whole =
        toml::from_str(&text).map_err(|e| InputError(format!("{}: {e}", path.display())))?;
    Ok(whole.retention.unwrap_or_default())
}

pub fn remembered_archive(data: &Path) -> Option<String> {
    std::fs::read_to_string(data.join(ARCHIVE_URL_FILE))
        .ok()
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
}

/// Writes the data directory's `archive-url` durably (the archive that reads of moved payloads
/// go to), unless it already names `url`.
pub(crate) fn remember_archive(data: &Path, url: &str) -> Result<()> {
    let old = remembered_archive(data);
    if old.as_deref() == Some(url) {
        return Ok(());
    }
    if old.is_some() {
        // Another archive, allowed only once nothing lives only in the old one
        // (check_same_archive): moving starts over.
        offload::forget_offloaded(data)?;
    }
    write_durably(data, ARCHIVE_URL_FILE, &format!("{url}\n"))
}

/// Replaces `data/name` with `text`: written under a temporary name, synced, renamed, and the
/// directory synced, so that a crash leaves the old file or the new one.
pub(crate) fn write_durably(data: &Path, name: &str, text: &str) -> Result<()> {
    use std::io::Write;
    let path = data.join(name);
    let tmp = data.join(format!("{name}.tmp"));
    let write = || -> std::io::Result<()> {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(text.as_bytes())?;
        f.sync_all()?;
        std::fs::rename(&tmp, &path)?;
        std::fs::File::open(data)?.sync_all()
    };
    write().with_context(|| format!("writing {}", path.display()))
}

/// Refuses `url` when payloads were moved to another archive and some still live only there
/// (reads need them); once none does, the data directory may start over with `url`. Changes
/// nothing.
pub(crate) fn check_same_archive(data: &Path, url: &str, store: &dyn Store) -> Result<()> {
    let Some(old) = remembered_archive(data) else {
        return Ok(());
    };
    if old == url || !offload::ever_offloaded(data) {
        return Ok(());
    }
    let mut first = None;
    store.scan_stored(0, &mut |ev| match ev.payload_in_archive() {
        true => {
            first = Some(ev.seq);
            std::ops::ControlFlow::Break(())
        }
        false => std::ops::ControlFlow::Continue(()),
    })?;
    match first {
        Some(seq) => Err(InputError(format!(
            "payloads are kept only in the archive {old} (the first at seq {seq}); this data directory cannot move to {url} until they are back on the server (mlaudit restore --from {seq} --to {})",
            store.tree_size().saturating_sub(1)
        ))
        .into()),
        None => Ok(()),
    }
}

/// The receipt time of event `seq` (its entry: an archived payload is not fetched).
fn received(store: &dyn Store, seq: u64) -> Result<i64> {
    let ev = store.stored_event(seq)?;
    Ok(decode_view(&ev.entry)
        .with_context(|| format!("decoding entry {seq}"))?
        .receipt_time_ns)
}

/// The first seq received at or after `t` (receipt times grow with seq).
pub fn first_received_since(store: &dyn Store, t: i64) -> Result<u64> {
    let (mut lo, mut hi) = (0u64, store.tree_size());
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        if received(store, mid)? < t {
            lo = mid + 1;
        } else {
            hi = mid;
        }
    }
    Ok(lo)
}

/// The plan at `now_ns`; the payload expiry counts (a scan of the events old enough) only
/// `with_expiry`.
fn make_plan(store: &Ledger, policy: &Policy, now_ns: i64, with_expiry: bool) -> Result<Plan> {
    let size = store.tree_size();
    let hot_from = first_received_since(store, now_ns.saturating_sub(policy.hot_ns))?;
    let warm_from = first_received_since(store, now_ns.saturating_sub(policy.warm_ns))?;
    let archive_to = store
        .checkpoint_sizes()?
        .into_iter()
        .filter(|s| *s <= warm_from)
        .max()
        .unwrap_or(0);
    Ok(Plan {
        now_ns,
        size,
        hot_from,
        warm_from,
        archive_to,
        expiry: match with_expiry {
            true => expiry::due(store, policy, now_ns)?,
            false => Vec::new(),
        },
    })
}

fn print_plan(plan: &Plan, policy: &Policy, archive: Option<&Archive>, archived: u64) {
    let day = 86_400_000_000_000i64;
    println!(
        "retention plan at {} (hot {}d, warm {}d), {} events",
        format_time(plan.now_ns),
        policy.hot_ns / day,
        policy.warm_ns / day,
        plan.size
    );
    println!(
        "  hot   {:>12} events (seqs {}..{}), received after {}",
        plan.size - plan.hot_from,
        plan.hot_from,
        plan.size,
        format_time(plan.now_ns.saturating_sub(policy.hot_ns))
    );
    println!(
        "  warm  {:>12} events (seqs {}..{}), received after {}",
        plan.hot_from - plan.warm_from,
        plan.warm_from,
        plan.hot_from,
        format_time(plan.now_ns.saturating_sub(policy.warm_ns))
    );
    println!(
        "  cold  {:>12} events (seqs 0..{}), older: due for the archive",
        plan.warm_from, plan.warm_from
    );
    match archive {
        Some(a) if plan.archive_to > archived => println!(
            "archive {}: holds {archived} events; apply archives seqs {archived}..{} (up to the checkpoint of {})",
            a.url(),
            plan.archive_to,
            plan.archive_to
        ),
        Some(a) => println!("archive {}: holds {archived} events, up to date", a.url()),
        None => println!("archive: none configured"),
    }
    if policy.rules.is_empty() {
        println!("payload expiry: no rules, every payload is kept");
    }
    for rule in &plan.expiry {
        println!(
            "payload expiry: {}: {} payloads due, {} kept by legal holds",
            rule.text,
            rule.due.len(),
            rule.held
        );
    }
}

/// Extends the archive to the checkpoint of `size`.
fn archive_up_to(
    store: &dyn Store,
    archive: &Archive,
    size: u64,
    verifier: &NoteVerifier,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<Extended> {
    let note = store
        .checkpoint(size)?
        .with_context(|| format!("the checkpoint of {size} events is gone"))?;
    Ok(mlaudit_archive::write::extend(
        archive, store, &note, verifier, progress,
    )?)
}

/// One run of `mlaudit serve`'s schedule: records a changed policy, expires the payloads due,
/// then archives what is due.
pub fn scheduled_run(
    data: &Path,
    store: &Ledger,
    policy: &Policy,
    archive: Option<&Archive>,
    verifier: &NoteVerifier,
) -> Result<RunOutcome> {
    if let Some(seq) = record_policy(store, policy)? {
        tracing::info!(
            seq,
            "recorded the retention policy (governance.policy_changed)"
        );
    }
    let now = now_ns();
    let due = expiry::due(store, policy, now)?;
    let actor = crate::append::local_principal();
    let mut expired = 0;
    for done in expiry::expire(store, &due, archive, &actor, false)? {
        tracing::info!(rule = %done.text, removed = done.removed, "payloads expired (governance.payload_expired)");
        expired += done.removed;
    }
    if expired > 0 {
        // Payload bundles read before hold the expired payloads; they must not stay in memory.
        if let Some(cold) = store.cold() {
            cold.clear_cache();
        }
    }
    let Some(archive) = archive else {
        return Ok(RunOutcome {
            archived: 0,
            added: 0,
            expired,
            offloaded: 0,
        });
    };
    let plan = make_plan(store, policy, now, false)?;
    let archived = archive.verified_size(verifier)?;
    if plan.archive_to <= archived {
        let offloaded = scheduled_offload(data, store, archive, archived)?;
        return Ok(RunOutcome {
            archived,
            added: 0,
            expired,
            offloaded,
        });
    }
    tracing::info!(archive = %archive.url(), from = archived, to = plan.archive_to, "archiving");
    let mut last = std::time::Instant::now();
    let done = archive_up_to(store, archive, plan.archive_to, verifier, &mut |d, t| {
        if last.elapsed() >= std::time::Duration::from_secs(10) {
            last = std::time::Instant::now();
            tracing::info!(done = d, of = t, "archiving");
        }
    })?;
    let offloaded = scheduled_offload(data, store, archive, done.size)?;
    Ok(RunOutcome {
        archived: done.size,
        added: done.size - done.from,
        expired,
        offloaded,
    })
}

/// The schedule's offload of what the archive holds: how many local payloads were dropped.
fn scheduled_offload(data: &Path, store: &Ledger, archive: &Archive, to: u64) -> Result<u64> {
    if offload::offloaded_to(data) >= to {
        return Ok(0);
    }
    match offload::offload(data, store, archive, to, &mut |_, _| {}) {
        Ok(done) => {
            tracing::info!(
                payloads = done.dropped,
                bytes = done.bytes,
                to,
                "archived payloads moved off the server"
            );
            Ok(done.dropped)
        }
        Err(e) if unsupported(&e) => Ok(0),
        Err(e) => Err(e),
    }
}

/// What one scheduled run did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RunOutcome {
    /// Events the archive holds after the run.
    pub archived: u64,
    /// Events the run added to it.
    pub added: u64,
    /// Payloads the run expired.
    pub expired: u64,
    /// Local payloads the run dropped, the archive holding them.
    pub offloaded: u64,
}

/// Appends `governance.policy_changed` when the retention policy differs from the last one
/// the log recorded; returns its seq.
fn record_policy(store: &dyn Store, policy: &Policy) -> Result<Option<u64>> {
    let old = last_recorded_policy(store)?;
    if old.as_ref() == Some(&policy.recorded) {
        return Ok(None);
    }
    let principal = crate::append::local_principal();
    let event = serde_json::json!({
        "kind": "governance.policy_changed",
        "actor": {"id": principal, "type": "user"},
        "attributes": {
            "policy": "retention",
            "old": old.unwrap_or_else(|| serde_json::json!("none")),
            "new": policy.recorded,
        },
    });
    let prepared = prepare(&event.to_string(), &principal)
        .map_err(|e| anyhow::anyhow!("recording the retention policy: {e}"))?;
    let receipt = store
        .append(vec![prepared])
        .context("recording the retention policy in the log")?;
    Ok(receipt.events.first().map(|e| e.seq))
}

/// The `new` policy of the latest `governance.policy_changed` for `retention`.
fn last_recorded_policy(store: &dyn Store) -> Result<Option<serde_json::Value>> {
    let seqs = mlaudit_store::seqs_of_kind(store, "governance.policy_changed")?;
    for seq in seqs.into_iter().rev() {
        let v = mlaudit_store::view::event_json(store, seq)?;
        let attributes = &v["event"]["attributes"];
        if attributes["policy"] == "retention" {
            return Ok(Some(attributes["new"].clone()));
        }
    }
    Ok(None)
}
