//! The log is append-only in the database itself: the servers' role may SELECT and INSERT,
//! and every UPDATE, DELETE and TRUNCATE of a log table fails, by grant for that role and by
//! trigger for anyone, the tables' owner and superusers included.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test fails loudly on any unexpected error"
)]

mod common;

use common::{prediction, signer, url_as, verifier, Schema};
use mlaudit_postgres::schema::LOG_TABLES;
use mlaudit_postgres::{Options, PostgresStore};
use mlaudit_store::prelude::*;

/// A column of each log table, to write an UPDATE against.
fn a_column(table: &str) -> &'static str {
    match table {
        "entries" | "payloads" | "subjects" => "seq",
        "nodes" => "idx",
        "checkpoints" => "size",
        "outcomes" => "batch",
        "takeovers" => "holder",
        "token_docs" => "version",
        "schema_migrations" => "version",
        other => panic!("no column known for {other}"),
    }
}

fn run_as(url: &str, sql: &str) -> Result<u64, String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
            .await
            .map_err(|e| e.to_string())?;
        tokio::spawn(conn);
        client.execute(sql, &[]).await.map_err(|e| {
            e.as_db_error()
                .map_or_else(|| e.to_string(), |d| d.message().to_owned())
        })
    })
}

#[test]
fn the_servers_role_can_only_select_and_insert_and_triggers_refuse_everyone() {
    let schema = Schema::new("grants");
    let roles = "&app_role=mlaudit_test_app&owner_role=mlaudit_test_owner";
    let (store, _) = PostgresStore::init(&schema.url(roles), signer()).unwrap();
    store
        .append(vec![prediction(1, "a"), prediction(2, "b")])
        .unwrap();
    drop(store);

    // The servers' role, connected as itself.
    // The driver itself takes the URL without mlaudit's own parameters.
    let plain = |url: String| url.split('?').next().unwrap().to_owned();
    let app = plain(url_as("mlaudit_test_app", &schema, ""));
    let s = &schema.name;
    for table in LOG_TABLES {
        let col = a_column(table);
        run_as(&app, &format!("SELECT count(*) FROM {s}.{table}"))
            .unwrap_or_else(|e| panic!("SELECT on {table} must be allowed: {e}"));
        for sql in [
            format!("UPDATE {s}.{table} SET {col} = {col}"),
            format!("DELETE FROM {s}.{table}"),
            format!("TRUNCATE {s}.{table}"),
            format!("DROP TABLE {s}.{table}"),
            format!("ALTER TABLE {s}.{table} DISABLE TRIGGER ALL"),
        ] {
            let e = run_as(&app, &sql).expect_err(&sql);
            assert!(
                e.contains("permission denied") || e.contains("must be owner"),
                "{sql}: {e}"
            );
        }
    }
    // The tables belong to the owner role, not to the servers' role.
    let owner = admin_query(&format!(
        "SELECT DISTINCT tableowner FROM pg_tables WHERE schemaname = '{s}'"
    ));
    assert_eq!(owner, vec!["mlaudit_test_owner".to_owned()]);

    // Even the superuser that owns everything is stopped by the triggers.
    let superuser = plain(schema.url(""));
    // Row triggers fire per row: every table gets one (outcomes and token_docs have none yet).
    for (table, col) in [("outcomes", "batch"), ("token_docs", "doc")] {
        run_as(
            &superuser,
            &format!("INSERT INTO {s}.{table} ({col}) VALUES ('\\x00')"),
        )
        .unwrap();
    }
    for table in LOG_TABLES {
        let col = a_column(table);
        for sql in [
            format!("UPDATE {s}.{table} SET {col} = {col}"),
            format!("DELETE FROM {s}.{table}"),
            format!("TRUNCATE {s}.{table}"),
        ] {
            let e = run_as(&superuser, &sql).expect_err(&sql);
            assert!(e.contains("append-only"), "{sql}: {e}");
        }
    }
    // Nothing was changed: the log still verifies, through the servers' role.
    let app_store = PostgresStore::open(
        &url_as("mlaudit_test_app", &schema, ""),
        Some(signer()),
        Options::default(),
    )
    .unwrap();
    app_store.append(vec![prediction(3, "c")]).unwrap();
    assert_eq!(app_store.tree_size(), 3);
    mlaudit_store::verify::verify(&app_store, &verifier(), &mut |_, _| {}).unwrap();
}

fn admin_query(sql: &str) -> Vec<String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let (client, conn) = tokio_postgres::connect(&common::server_url(), tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(conn);
        client
            .query(sql, &[])
            .await
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect()
    })
}
