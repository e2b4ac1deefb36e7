//! The store URL: a libpq-style `postgres://` URL whose mlaudit-specific query parameters are
//! taken out before the rest is handed to the driver.
//!
//! * `schema` — the PostgreSQL schema that holds the log's tables (default `mlaudit`). Several
//!   logs can share one database, each in its own schema.
//! * `app_role` — the role the servers connect as, granted SELECT and INSERT on the log's
//!   tables when the schema is created or migrated (default `mlaudit_app`; skipped when no such
//!   role exists).
//! * `owner_role` — the role that owns the tables; `init` and migrations run `SET ROLE` to it
//!   (default: the connecting user owns them).

use crate::PgError;
use std::time::Duration;

/// A parsed store URL.
#[derive(Clone, Debug)]
pub struct StoreUrl {
    pub config: tokio_postgres::Config,
    pub schema: String,
    pub app_role: String,
    pub owner_role: Option<String>,
    /// The URL without its password, for messages.
    pub display: String,
}

/// Whether `text` names a PostgreSQL store (`postgres://` or `postgresql://`).
pub fn is_postgres_url(text: &str) -> bool {
    text.starts_with("postgres://") || text.starts_with("postgresql://")
}

fn valid_identifier(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        && !name.as_bytes()[0].is_ascii_digit()
}

impl StoreUrl {
    /// Parses a `postgres://user[:password]@host[:port]/db[?…]` URL.
    pub fn parse(text: &str) -> Result<StoreUrl, PgError> {
        if !is_postgres_url(text) {
            return Err(PgError::Url(format!(
                "{:?} is not a postgres:// URL",
                redact(text)
            )));
        }
        let (base, query) = text.split_once('?').unwrap_or((text, ""));
        let mut kept = Vec::new();
        let (mut schema, mut app_role, mut owner_role) =
            ("mlaudit".to_owned(), "mlaudit_app".to_owned(), None);
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            let ident = |what: &str| {
                if valid_identifier(value) {
                    Ok(value.to_owned())
                } else {
                    Err(PgError::Url(format!(
                        "{what}={value:?}: use lowercase letters, digits and _ (at most 63, not starting with a digit)"
                    )))
                }
            };
            match key {
                "schema" => schema = ident("schema")?,
                "app_role" => app_role = ident("app_role")?,
                "owner_role" => owner_role = Some(ident("owner_role")?),
                "sslmode" if value != "disable" && value != "prefer" => {
                    return Err(PgError::Url(format!(
                        "sslmode={value}: this build connects to PostgreSQL without TLS; use a local socket, a private network or a TLS-terminating proxy (sslmode=disable)"
                    )))
                }
                "sslmode" => {}
                _ => kept.push(pair),
            }
        }
        let rebuilt = if kept.is_empty() {
            base.to_owned()
        } else {
            format!("{base}?{}", kept.join("&"))
        };
        let mut config: tokio_postgres::Config = rebuilt
            .parse()
            .map_err(|e| PgError::Url(format!("{}: {e}", redact(text))))?;
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(Duration::from_secs(10));
        }
        config.application_name("mlaudit");
        // A vanished server is noticed in about 45 s rather than the system's two hours, and a
        // write that cannot be delivered fails after 30 s instead of hanging.
        config.keepalives_idle(Duration::from_secs(30));
        config.keepalives_interval(Duration::from_secs(5));
        config.keepalives_retries(3);
        config.tcp_user_timeout(Duration::from_secs(30));
        Ok(StoreUrl {
            config,
            schema,
            app_role,
            owner_role,
            display: redact(text),
        })
    }
}

/// The URL with any password replaced by `***`.
pub fn redact(text: &str) -> String {
    let Some((scheme, rest)) = text.split_once("://") else {
        return text.to_owned();
    };
    let (authority, tail) = match rest.find('/') {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => {
            let user = userinfo.split(':').next().unwrap_or("");
            let hidden = if userinfo.contains(':') { ":***" } else { "" };
            let tail = redact_query_password(tail);
            format!("{scheme}://{user}{hidden}@{host}{tail}")
        }
        None => format!("{scheme}://{authority}{}", redact_query_password(tail)),
    }
}

fn redact_query_password(tail: &str) -> String {
    let Some((path, query)) = tail.split_once('?') else {
        return tail.to_owned();
    };
    let pairs: Vec<String> = query
        .split('&')
        .map(|p| match p.split_once('=') {
            Some(("password", _)) => "password=***".to_owned(),
            _ => p.to_owned(),
        })
        .collect();
    format!("{path}?{}", pairs.join("&"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mlaudit_parameters_are_taken_out_and_checked() {
        let u = StoreUrl::parse(
            "postgres://app:secret@127.0.0.1:5432/test?schema=log_a&connect_timeout=3",
        )
        .unwrap();
        assert_eq!(u.schema, "log_a");
        assert_eq!(u.app_role, "mlaudit_app");
        assert_eq!(u.config.get_dbname(), Some("test"));
        assert_eq!(
            u.config.get_connect_timeout(),
            Some(&Duration::from_secs(3))
        );
        assert_eq!(
            u.display,
            "postgres://app:***@127.0.0.1:5432/test?schema=log_a&connect_timeout=3"
        );
        assert!(StoreUrl::parse("postgres://h/db?schema=Robert';--").is_err());
        assert!(StoreUrl::parse("postgres://h/db?sslmode=require").is_err());
        assert!(StoreUrl::parse("mysql://h/db").is_err());
        assert_eq!(
            redact("postgres://u@h/db?password=pw"),
            "postgres://u@h/db?password=***"
        );
    }
}
