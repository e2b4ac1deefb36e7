//! `mlaudit hold create|list|release`: legal holds, recorded as governance events (see
//! `mlaudit_store::holds`).

use crate::ledger::{self, InputError};
use crate::output::print_json;
use anyhow::{Context, Result};
use mlaudit_store::holds::{self, HoldScope};
use mlaudit_store::prelude::*;
use std::path::Path;

#[derive(Debug, clap::Subcommand)]
pub enum HoldCommand {
    /// Place a legal hold: the events it covers never expire or lose their payload. An event
    /// is covered when it matches every criterion given, or is listed with --events.
    Create {
        #[arg(long)]
        model: Option<String>,
        #[arg(long)]
        version: Option<String>,
        #[arg(long)]
        dataset: Option<String>,
        /// Events at or after this event time (RFC 3339)
        #[arg(long)]
        from: Option<String>,
        /// Events before this event time (RFC 3339)
        #[arg(long)]
        to: Option<String>,
        /// Event ids
        #[arg(long, num_args = 1.., value_name = "ID")]
        events: Vec<String>,
        /// Why (a case or matter reference); recorded in the log
        #[arg(long)]
        reason: String,
    },
    /// List the holds in force (--all: released ones too).
    List {
        #[arg(long)]
        all: bool,
        #[arg(long)]
        json: bool,
    },
    /// Release a hold.
    Release {
        /// The hold's id (hold-…)
        id: String,
        #[arg(long, default_value = "released")]
        reason: String,
    },
}

pub fn run(data: &Path, cmd: HoldCommand) -> Result<()> {
    let store = ledger::open(data)?;
    let actor = crate::append::local_principal();
    match cmd {
        HoldCommand::Create {
            model,
            version,
            dataset,
            from,
            to,
            events,
            reason,
        } => {
            let mut scope = HoldScope {
                model,
                version,
                dataset,
                from,
                to,
                events,
            };
            let hold = holds::new_id();
            let event = holds::create_event(&hold, &mut scope, &reason, &actor, true)
                .map_err(|e| InputError(e.to_string()))?;
            let receipt = store.append(vec![event]).context("recording the hold")?;
            let seq = receipt.events.first().map_or(0, |e| e.seq);
            println!("{hold} placed (governance.hold_created, seq {seq})");
        }
        HoldCommand::List { all, json } => {
            let list: Vec<_> = holds::list(&store)?
                .into_iter()
                .filter(|h| all || h.active())
                .collect();
            ledger::audit_read(&store, "mlaudit hold list", "", list.len())?;
            if json {
                print_json(&list)?;
            } else {
                for h in &list {
                    let state = match h.released_seq {
                        None => "in force".to_owned(),
                        Some(seq) => format!("released at seq {seq}"),
                    };
                    println!(
                        "{}  {state}  since {} by {}  scope {}  reason {:?}",
                        h.hold,
                        h.created,
                        h.created_by,
                        serde_json::to_string(&h.scope)?,
                        h.reason
                    );
                }
                println!("({} holds)", list.len());
            }
        }
        HoldCommand::Release { id, reason } => {
            let event =
                holds::release_event(&store, &id, &reason, &actor, true).map_err(|e| match e {
                    holds::HoldError::Store(s) => anyhow::Error::from(s),
                    other => InputError(other.to_string()).into(),
                })?;
            let receipt = store.append(vec![event]).context("recording the release")?;
            let seq = receipt.events.first().map_or(0, |e| e.seq);
            println!("{id} released (governance.hold_released, seq {seq})");
        }
    }
    store.close()
}
