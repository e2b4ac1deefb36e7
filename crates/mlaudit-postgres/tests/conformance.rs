//! The shared store conformance suite (`mlaudit_store::conformance`) on the PostgreSQL engine,
//! against the machine's PostgreSQL.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test fails loudly on any unexpected error"
)]

mod common;

use common::{signer, verifier, Schema};
use mlaudit_postgres::{Options, PostgresStore};
use mlaudit_store::conformance;

#[test]
fn the_postgres_store_conforms() {
    let schema = Schema::new("conf");
    let (store, created) = PostgresStore::init(&schema.url(""), signer()).unwrap();
    assert!(created);
    assert!(store.is_sequencer(), "a lone process is elected at once");
    conformance::check(&store, &verifier()).unwrap_or_else(|e| panic!("{e}"));
    drop(store);
    // Reopened, the same log verifies from the database alone.
    let again = PostgresStore::open(&schema.url(""), Some(signer()), Options::default()).unwrap();
    mlaudit_store::verify::verify(&again, &verifier(), &mut |_, _| {}).unwrap();
}

#[test]
fn a_second_init_finds_the_log_and_a_missing_one_is_named() {
    let schema = Schema::new("init");
    let (first, created) = PostgresStore::init(&schema.url(""), signer()).unwrap();
    assert!(created);
    drop(first);
    let (_, created) = PostgresStore::init(&schema.url(""), signer()).unwrap();
    assert!(!created);
    let missing = Schema::new("missing");
    let e = PostgresStore::open(&missing.url(""), Some(signer()), Options::default()).unwrap_err();
    assert!(e.to_string().contains("mlaudit init"), "{e}");
}

#[test]
fn a_schema_newer_than_this_build_is_refused() {
    let schema = Schema::new("newer");
    drop(PostgresStore::init(&schema.url(""), signer()).unwrap());
    common::admin(&format!(
        "INSERT INTO {}.schema_migrations (version) VALUES (99)",
        schema.name
    ))
    .unwrap();
    let e = PostgresStore::open(&schema.url(""), Some(signer()), Options::default()).unwrap_err();
    assert!(
        matches!(e, mlaudit_postgres::PgError::NewerSchema { found: 99, .. }),
        "{e}"
    );
}
