//! `mlaudit token create|list|set-role|revoke`: the token file of a data directory, with every
//! change appended to the log as a `governance.access_changed` event.

use crate::append::local_principal;
use crate::ledger::{self, InputError};
use anyhow::Result;
use mlaudit_core::event::{format_time, prepare_reserved};
use mlaudit_server::auth::{access_changed_event, Principal, Role, TokenError, Tokens};
use mlaudit_store::Store;
use std::path::{Path, PathBuf};

/// Token subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum TokenCommand {
    /// Create a token; it is printed once, alone on the last line.
    Create {
        /// writer (append only), reader (query, proofs, lineage) or admin (tokens; also reads)
        #[arg(long)]
        role: String,
        #[arg(long)]
        name: String,
    },
    /// List tokens (names, roles, dates; never the tokens).
    List,
    /// Change the role of a token.
    SetRole {
        #[arg(long)]
        name: String,
        #[arg(long)]
        role: String,
    },
    /// Revoke a token.
    Revoke { name: String },
}

/// The token file of a data directory.
pub fn tokens_path(data: &Path) -> PathBuf {
    data.join("tokens.json")
}

fn role(text: &str) -> Result<Role> {
    Role::parse(text).ok_or_else(|| {
        InputError(format!(
            "--role {text:?} is not one of writer, reader, admin"
        ))
        .into()
    })
}

fn now() -> String {
    let ns = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0);
    format_time(ns)
}

fn input(e: TokenError) -> anyhow::Error {
    match e {
        TokenError::Exists(_) | TokenError::Unknown(_) | TokenError::BadName(_) => {
            InputError(e.to_string()).into()
        }
        other => other.into(),
    }
}

/// Appends the change, durably.
fn record(data: &Path, name: &str, role: Role, change: &str) -> Result<()> {
    let actor = Principal {
        name: local_principal(),
        role: Some(Role::Admin),
    };
    let store = ledger::open(data)?;
    let event = prepare_reserved(
        &access_changed_event(&actor, name, role, change),
        &actor.name,
    )?;
    let receipt = store.append(vec![event])?;
    store.close()?;
    eprintln!(
        "recorded as governance.access_changed at seq {}",
        receipt.events[0].seq
    );
    Ok(())
}

pub fn run(data: &Path, cmd: TokenCommand) -> Result<()> {
    ledger::signer(data)?;
    let mut tokens = Tokens::load(&tokens_path(data))?;
    match cmd {
        TokenCommand::Create { role: r, name } => {
            let role = role(&r)?;
            // Open the log first, so that a running server (which holds it) stops us before any change.
            drop(ledger::open(data)?);
            let token = tokens.create(&name, role, &now()).map_err(input)?;
            if let Err(e) = record(data, &name, role, "granted") {
                let _ = tokens.revoke(&name, &now());
                return Err(e);
            }
            eprintln!(
                "created {} token {name:?}; it is shown only now:",
                role.as_str()
            );
            println!("{token}");
        }
        TokenCommand::List => {
            println!("{:<24} {:<7} {:<32} REVOKED", "NAME", "ROLE", "CREATED");
            for t in tokens.list() {
                println!(
                    "{:<24} {:<7} {:<32} {}",
                    t.name,
                    t.role.as_str(),
                    t.created,
                    t.revoked.as_deref().unwrap_or("-")
                );
            }
        }
        TokenCommand::SetRole { name, role: r } => {
            let role = role(&r)?;
            drop(ledger::open(data)?);
            let old = tokens.set_role(&name, role).map_err(input)?;
            if let Err(e) = record(data, &name, role, "granted") {
                let _ = tokens.set_role(&name, old);
                return Err(e);
            }
            println!("token {name:?}: {} -> {}", old.as_str(), role.as_str());
        }
        TokenCommand::Revoke { name } => {
            drop(ledger::open(data)?);
            let role = tokens.revoke(&name, &now()).map_err(input)?;
            record(data, &name, role, "revoked")?;
            println!("revoked token {name:?} ({})", role.as_str());
        }
    }
    Ok(())
}
