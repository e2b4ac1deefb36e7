//! The log is append-only in the database itself: the servers' role may SELECT and INSERT,
//! and every UPDATE, DELETE and TRUNCATE of a log table fails, by grant for that role and by
//! trigger for anyone, the tables' owner and superusers included. A payload row alone may go,
//! and only once its removal by an erasure or expiry event of the log is recorded.

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
        "entries" | "payloads" | "payload_removals" | "subjects" => "seq",
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
            // The servers' role may delete a payload whose removal is recorded: the trigger
            // refuses every other.
            let guarded = table == "payloads" && sql.starts_with("DELETE");
            assert!(
                e.contains("permission denied")
                    || e.contains("must be owner")
                    || (guarded && e.contains("append-only")),
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
    // Row triggers fire per row: every table gets one (outcomes, token_docs and payload_removals have none yet).
    for (table, col) in [("outcomes", "batch"), ("token_docs", "doc")] {
        run_as(
            &superuser,
            &format!("INSERT INTO {s}.{table} ({col}) VALUES ('\\x00')"),
        )
        .unwrap();
    }
    run_as(
        &superuser,
        &format!("INSERT INTO {s}.payload_removals (seq, remover) VALUES (99, 99)"),
    )
    .unwrap();
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

/// A `governance.payload_erased` event naming `ids`.
fn erasure(ids: &[&str]) -> mlaudit_core::event::PreparedEvent {
    let json = format!(
        r#"{{"kind":"governance.payload_erased","actor":{{"id":"local:dpo","type":"user"}},"attributes":{{"reason":"DSR-1","criteria":{{"subject":"request=r1"}},"events":{ids:?}}}}}"#
    );
    mlaudit_core::event::prepare_reserved(&json, "local:dpo").unwrap()
}

#[test]
fn a_payload_goes_only_with_a_recorded_removal_by_a_removal_event() {
    let schema = Schema::new("removal");
    let roles = "&app_role=mlaudit_test_app&owner_role=mlaudit_test_owner";
    let (store, _) = PostgresStore::init(&schema.url(roles), signer()).unwrap();
    store
        .append(vec![
            prediction(1, "a"),
            prediction(2, "b"),
            prediction(3, "c"),
        ])
        .unwrap();
    store
        .append(vec![erasure(&["00000000-0000-4000-8000-000000000001"])])
        .unwrap();
    drop(store);
    let app_store = PostgresStore::open(
        &url_as("mlaudit_test_app", &schema, ""),
        Some(signer()),
        Options::default(),
    )
    .unwrap();
    assert_eq!(app_store.remove_payloads(&[0], 3).unwrap(), 1);
    assert_eq!(
        app_store.remove_payloads(&[0], 3).unwrap(),
        0,
        "already gone"
    );
    let ev = app_store.event(0).unwrap();
    assert_eq!((ev.payload, ev.removed_by), (None, Some(3)));
    let refused = app_store.remove_payloads(&[1], 2).unwrap_err();
    assert!(
        refused
            .to_string()
            .contains("only a governance.payload_erased"),
        "{refused}"
    );
    assert!(app_store.event(1).unwrap().payload.is_some());
    let bundle = mlaudit_store::proofs::inclusion_bundle(&app_store, 0).unwrap();
    assert_eq!(bundle.payload_erased_by.as_ref().unwrap().leaf_index, 3);
    let checked = bundle.verify(&verifier()).unwrap();
    assert_eq!(
        checked.payload_erased_by.unwrap().kind,
        "governance.payload_erased"
    );
    let report = mlaudit_store::verify::verify(&app_store, &verifier(), &mut |_, _| {}).unwrap();
    assert_eq!(report.redacted, 1);

    // By hand, even as a superuser: a removal record naming an event that is not a removal,
    // or none at all, does not let a payload go.
    let superuser = schema.url("").split('?').next().unwrap().to_owned();
    let s = &schema.name;
    run_as(
        &superuser,
        &format!("INSERT INTO {s}.payload_removals (seq, remover) VALUES (1, 2)"),
    )
    .unwrap();
    for seq in [1, 2] {
        let e = run_as(
            &superuser,
            &format!("DELETE FROM {s}.payloads WHERE seq = {seq}"),
        )
        .expect_err("refused");
        assert!(e.contains("append-only"), "{e}");
    }
    assert!(app_store.event(2).unwrap().payload.is_some());

    // The servers' role may move a payload to the cold archive (recorded in payload_archived)
    // and bring it back only as its entry commits to it.
    let original = app_store.event(2).unwrap().payload.unwrap();
    assert_eq!(
        app_store.offload_payloads(&[2, 0]).unwrap(),
        1,
        "0 is removed"
    );
    assert!(app_store.event(2).unwrap().payload_in_archive());
    assert!(app_store.event(0).unwrap().removed_by.is_some());
    let forged = app_store
        .restore_payloads(&[(2, b"{\"kind\":\"x\"}".to_vec())])
        .unwrap_err();
    assert!(
        forged
            .to_string()
            .contains("not the one its entry commits to"),
        "{forged}"
    );
    // Where an archived payload lives cannot be forgotten while the payload is away.
    let e = run_as(
        &superuser,
        &format!("DELETE FROM {s}.payload_archived WHERE seq = 2"),
    )
    .expect_err("refused");
    assert!(e.contains("goes only once its payload is back"), "{e}");
    assert_eq!(
        app_store
            .restore_payloads(&[(2, original.clone())])
            .unwrap(),
        1
    );
    assert_eq!(app_store.event(2).unwrap().payload, Some(original));
    let e = run_as(
        &superuser,
        &format!("DELETE FROM {s}.payloads WHERE seq = 2"),
    )
    .expect_err("refused once restored");
    assert!(e.contains("append-only"), "{e}");

    // The owner can still switch the trigger off and drop a payload: verify catches it.
    for sql in [
        format!("ALTER TABLE {s}.payloads DISABLE TRIGGER payloads_append_only"),
        format!("DELETE FROM {s}.payloads WHERE seq = 2"),
        format!("ALTER TABLE {s}.payloads ENABLE TRIGGER payloads_append_only"),
    ] {
        run_as(&superuser, &sql).unwrap();
    }
    let failure =
        mlaudit_store::verify::verify(&app_store, &verifier(), &mut |_, _| {}).unwrap_err();
    assert_eq!(failure.seq, Some(2));
    assert!(
        failure.problem.contains("no erasure or expiry"),
        "{failure}"
    );
}
