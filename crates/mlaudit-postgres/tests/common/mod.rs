//! A private schema in the machine's PostgreSQL for each test, dropped afterwards.
//!
//! `MLAUDIT_TEST_POSTGRES` names the server (default
//! `postgres://postgres@127.0.0.1:5432/test`, trust auth as on the CI machine).

#![allow(dead_code, reason = "each test binary uses part of the helpers")]

use mlaudit_core::note::{NoteSigner, NoteVerifier};

pub fn server_url() -> String {
    std::env::var("MLAUDIT_TEST_POSTGRES")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

/// Starts PostgreSQL if needed and creates the test roles, once per test binary
/// (`scripts/postgres-test-setup.sh`).
pub fn setup() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let script = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../scripts/postgres-test-setup.sh"
        );
        let status = std::process::Command::new("bash")
            .arg(script)
            .status()
            .unwrap();
        assert!(
            status.success(),
            "{script} failed: PostgreSQL is needed for these tests"
        );
    });
}

pub fn signer() -> NoteSigner {
    NoteSigner::from_seed("pg.test/log", [7; 32]).unwrap()
}

pub fn verifier() -> NoteVerifier {
    signer().verifier()
}

/// Runs SQL as the test server's administrator.
pub fn admin(sql: &str) -> Result<(), tokio_postgres::Error> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let (client, conn) = tokio_postgres::connect(&server_url(), tokio_postgres::NoTls).await?;
        tokio::spawn(conn);
        client.batch_execute(sql).await
    })
}

/// A schema of its own, dropped when the value is.
pub struct Schema {
    pub name: String,
}

impl Schema {
    pub fn new(tag: &str) -> Schema {
        setup();
        let name = format!(
            "t_{tag}_{}_{}",
            std::process::id(),
            uuid::Uuid::new_v4().simple().to_string().get(..8).unwrap()
        );
        Schema { name }
    }

    /// The store URL for this schema, with extra query parameters.
    pub fn url(&self, extra: &str) -> String {
        let base = server_url();
        let sep = if base.contains('?') { '&' } else { '?' };
        format!("{base}{sep}schema={}{extra}", self.name)
    }
}

impl Drop for Schema {
    fn drop(&mut self) {
        let _ = admin(&format!("DROP SCHEMA IF EXISTS {} CASCADE", self.name));
    }
}

/// The test server's URL with another user.
pub fn url_as(user: &str, schema: &Schema, extra: &str) -> String {
    let url = schema.url(extra);
    let (scheme, rest) = url.split_once("://").unwrap();
    let host = rest.split_once('@').map_or(rest, |(_, h)| h);
    format!("{scheme}://{user}@{host}")
}

/// A prediction event with a given id and payload marker.
pub fn prediction(id: u64, marker: &str) -> mlaudit_core::event::PreparedEvent {
    let json = format!(
        r#"{{"id":"00000000-0000-4000-8000-{id:012}","kind":"prediction.served","actor":{{"id":"scoring","type":"service"}},"subject":{{"model":"credit","version":"1","request":"r{id}"}},"attributes":{{"inputs":{{"m":"{marker}"}},"outputs":{{"score":0.5}}}}}}"#
    );
    mlaudit_core::event::prepare(&json, "test").unwrap()
}

/// Polls `f` until it holds or `limit` passes.
pub fn wait(limit: std::time::Duration, mut f: impl FnMut() -> bool) -> bool {
    let start = std::time::Instant::now();
    while start.elapsed() < limit {
        if f() {
            return true;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    false
}
