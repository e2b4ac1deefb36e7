//! `mlaudit token create|list|set-role|revoke`: the token file of a data directory. Every
//! change is recorded in the log as a `governance.access_changed` event and takes effect only
//! once both the file and the log hold it ([`Tokens::apply`]); changes left half-done by a
//! crash are completed or undone first ([`Tokens::reconcile`]).

use crate::append::local_principal;
use crate::ledger::{self, Engine, InputError, Ledger};
use anyhow::Result;
use mlaudit_server::auth::{
    now_ns, Change, ChangeError, FileDoc, Principal, Role, TokenDoc, TokenError, Tokens,
};
use mlaudit_server::parse_duration_ns;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

/// Token subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum TokenCommand {
    /// Create a token; it is printed once, alone on the last line.
    Create {
        /// writer (append only), reader (query, proofs, lineage) or admin (tokens; also reads)
        #[arg(long)]
        role: String,
        /// A name never used before in this log (names are never reused)
        #[arg(long)]
        name: String,
        /// How long the token works, e.g. 90d, 12h (default: until revoked)
        #[arg(long, value_name = "DURATION")]
        expires_in: Option<String>,
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

fn input(e: ChangeError) -> anyhow::Error {
    match e {
        ChangeError::Token(
            e @ (TokenError::Exists(_) | TokenError::Unknown(_) | TokenError::BadName(_)),
        ) => InputError(e.to_string()).into(),
        other => other.into(),
    }
}

/// The token table of a log in PostgreSQL, shared by every server of it.
#[derive(Debug)]
struct SharedTokens(Arc<Ledger>);

impl SharedTokens {
    fn pg(&self) -> Result<&mlaudit_postgres::PostgresStore, String> {
        match self.0.engine_kind() {
            Engine::Postgres(p) => Ok(p),
            Engine::Embedded(_) => Err("the embedded store keeps its tokens in a file".into()),
        }
    }
}

impl TokenDoc for SharedTokens {
    fn read(&self) -> Result<(Option<Vec<u8>>, u64), String> {
        self.pg()?.tokens_read().map_err(|e| e.to_string())
    }
    fn write(&self, bytes: &[u8]) -> Result<u64, String> {
        self.pg()?.tokens_write(bytes).map_err(|e| e.to_string())
    }
    fn lock(&self) -> Result<Box<dyn std::any::Any + Send>, String> {
        let guard = self.pg()?.tokens_lock().map_err(|e| e.to_string())?;
        Ok(Box::new(guard))
    }
    fn latest(&self) -> u64 {
        self.pg().map_or(0, |p| p.tokens_version())
    }
    fn name(&self) -> String {
        "the token table in PostgreSQL".into()
    }
}

/// Loads the token table (the data directory's file, or the table every server of a log in
/// PostgreSQL shares) and completes or undoes any change a crash left half-done, saying so.
pub fn load_reconciled(data: &Path, store: &Arc<Ledger>) -> Result<Tokens> {
    let doc: Arc<dyn TokenDoc> = match store.engine_kind() {
        Engine::Postgres(_) => Arc::new(SharedTokens(store.clone())),
        Engine::Embedded(_) => Arc::new(FileDoc::new(&tokens_path(data))),
    };
    let mut tokens = Tokens::load_from(doc)?;
    for line in tokens.reconcile(&**store)? {
        eprintln!("mlaudit: tokens: {line}");
    }
    Ok(tokens)
}

pub fn run(data: &Path, cmd: TokenCommand) -> Result<()> {
    // Opening the log first: a running server (which holds it) stops us before any change.
    let store = Arc::new(ledger::open(data)?);
    let tokens = RwLock::new(load_reconciled(data, &store)?);
    let actor = Principal {
        name: local_principal(),
        role: Some(Role::Admin),
    };
    let apply =
        |change: Change| Tokens::apply(&tokens, &*store, &actor, change, now_ns()).map_err(input);
    match cmd {
        TokenCommand::Create {
            role: r,
            name,
            expires_in,
        } => {
            let role = role(&r)?;
            let expires_ns = match expires_in.as_deref() {
                None => None,
                Some(text) => Some(now_ns().saturating_add(parse_duration_ns(text).ok_or_else(
                    || {
                        InputError(format!(
                            "--expires-in {text:?} is not a duration such as 90d, 12h, 30m or 45s"
                        ))
                    },
                )?)),
            };
            let done = apply(Change::Create {
                name,
                role,
                expires_ns,
            })?;
            eprintln!(
                "created {} token {:?} (recorded as governance.access_changed at seq {}){}; it is shown only now:",
                role.as_str(),
                done.name,
                done.seq,
                expires_ns
                    .map(|e| format!(", expires {}", mlaudit_core::event::format_time(e)))
                    .unwrap_or_default()
            );
            println!("{}", done.token.unwrap_or_default());
        }
        TokenCommand::List => {
            let t = tokens
                .read()
                .map_err(|_| anyhow::anyhow!("token table lock poisoned"))?;
            println!(
                "{:<24} {:<7} {:<32} {:<32} REVOKED",
                "NAME", "ROLE", "CREATED", "EXPIRES"
            );
            for t in t.list() {
                println!(
                    "{:<24} {:<7} {:<32} {:<32} {}",
                    t.name,
                    t.role.as_str(),
                    t.created,
                    t.expires.as_deref().unwrap_or("-"),
                    t.revoked.as_deref().unwrap_or("-")
                );
            }
        }
        TokenCommand::SetRole { name, role: r } => {
            let role = role(&r)?;
            let done = apply(Change::SetRole { name, role })?;
            println!(
                "token {:?}: {} -> {} (recorded at seq {})",
                done.name,
                done.previous_role.map_or("?", Role::as_str),
                role.as_str(),
                done.seq
            );
        }
        TokenCommand::Revoke { name } => {
            let done = apply(Change::Revoke { name })?;
            println!(
                "revoked token {:?} ({}) (recorded at seq {})",
                done.name,
                done.role.as_str(),
                done.seq
            );
        }
    }
    store.close()?;
    Ok(())
}
