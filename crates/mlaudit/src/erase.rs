//! `mlaudit erase`: removes the payloads of chosen events, recorded as
//! `governance.payload_erased` events (see `mlaudit_store::erasure`).

use crate::ledger::{self, InputError};
use crate::output::print_json;
use anyhow::Result;
use mlaudit_core::EventId;
use mlaudit_store::erasure::{self, ErasureError, Target};
use std::path::Path;

#[derive(Debug, clap::Args)]
#[command(group = clap::ArgGroup::new("target").required(true).multiple(false))]
pub struct EraseArgs {
    /// The event whose payload to erase (its id)
    #[arg(long, group = "target", value_name = "ID")]
    event: Option<String>,
    /// Every event whose subject field has this value, e.g. request=R or model=M
    #[arg(long, group = "target", value_name = "FIELD=VALUE")]
    subject: Option<String>,
    /// Every event by this actor
    #[arg(long, group = "target", value_name = "ACTOR")]
    actor: Option<String>,
    /// Why (a request or ticket reference); recorded in the log
    #[arg(long)]
    reason: String,
    /// The cold archive to erase from too [default: the one this data directory archives
    /// to, if any]
    #[arg(long, value_name = "URL")]
    archive: Option<String>,
    /// Show what would be erased; change nothing
    #[arg(long)]
    dry_run: bool,
    /// Print the outcome as JSON
    #[arg(long)]
    json: bool,
}

fn target(args: &EraseArgs) -> Result<Target, ErasureError> {
    if let Some(id) = &args.event {
        let id = EventId::parse(id).ok_or_else(|| ErasureError::BadId(id.clone()))?;
        return Ok(Target::Event(id));
    }
    if let Some(s) = &args.subject {
        return Target::subject(s);
    }
    Ok(Target::Actor(args.actor.clone().unwrap_or_default()))
}

/// Maps refusals (bad input, a hold) to exit status 2, storage failures to 1.
fn refusal(e: ErasureError) -> anyhow::Error {
    match e {
        ErasureError::Store(s) => s.into(),
        e @ ErasureError::Elsewhere(_) => e.into(),
        other => InputError(other.to_string()).into(),
    }
}

pub fn run(data: &Path, args: EraseArgs) -> Result<()> {
    let target = target(&args).map_err(refusal)?;
    let store = ledger::open(data)?;
    if let Some(url) = &args.archive {
        crate::retention::check_same_archive(data, url, &store)?;
    }
    let actor = crate::append::local_principal();
    let archive = args
        .archive
        .clone()
        .or_else(|| crate::retention::remembered_archive(data))
        .map(|url| mlaudit_archive::Archive::open(&url))
        .transpose()?;
    let mut archived = mlaudit_archive::remove::Removed::default();
    let outcome = if args.dry_run {
        let (todo, mut outcome) = erasure::plan(&store, &target).map_err(refusal)?;
        outcome.erased = todo.len() as u64;
        outcome
    } else {
        let mut from_archive = |seqs: &[u64]| {
            crate::retention::expiry::remove_archived(archive.as_ref(), seqs, &mut archived)
        };
        erasure::erase(
            &store,
            &target,
            &args.reason,
            &actor,
            true,
            &mut from_archive,
        )
        .map_err(refusal)?
    };
    if args.json {
        print_json(&outcome)?;
    } else {
        let verb = if args.dry_run {
            "would erase"
        } else {
            "erased"
        };
        println!(
            "{} events matched; {verb} {} payloads; {} already removed",
            outcome.matched, outcome.erased, outcome.already_removed
        );
        if outcome.kept_records > 0 {
            println!(
                "{} of them are the trail's own records (holds, access, erasures): never erased",
                outcome.kept_records
            );
        }
        for seq in &outcome.recorded {
            println!("recorded as governance.payload_erased at seq {seq}");
        }
        if let Some(a) = &archive {
            println!(
                "archive {}: {} archived copies removed ({} payload bundles written again)",
                a.url(),
                archived.payloads,
                archived.bundles
            );
        }
    }
    store.close()
}
