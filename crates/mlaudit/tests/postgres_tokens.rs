//! With the log in PostgreSQL, the API tokens are one table for every server: a token created
//! from the command line or through one server's admin API authenticates on another, and a
//! revocation made anywhere is refused everywhere within a fraction of a second.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test fails loudly on any unexpected error"
)]

mod pg_support;

use pg_support::{connect, event, post_as, wait_until, PgLog, Server};
use std::time::Duration;

fn append(server: &Server, token: &str, n: u64) -> u16 {
    let mut c = connect(server.addr).unwrap();
    post_as(
        &mut c,
        Some(token),
        "/v1/events",
        "application/x-ndjson",
        &(event(n) + "\n"),
    )
    .unwrap()
    .0
}

#[test]
fn tokens_are_shared_by_every_server_and_revocation_holds_everywhere() {
    let log = PgLog::new("tokens");
    let writer = log.token("writer", "scoring");
    let admin = log.token("admin", "ops");
    let a = log.serve_auth(0);
    let b = log.serve_auth(1);
    assert_eq!(append(&a, &writer, 1), 200);
    assert_eq!(append(&b, &writer, 2), 200);
    assert_eq!(append(&b, "mla_not_a_token", 3), 401);

    // Created through server a's admin API, it works on server b.
    let mut c = connect(a.addr).unwrap();
    let (status, body) = post_as(
        &mut c,
        Some(&admin),
        "/v1/tokens",
        "application/json",
        r#"{"name": "batch-job", "role": "writer"}"#,
    )
    .unwrap();
    assert_eq!(status, 201, "{body}");
    let created: serde_json::Value = serde_json::from_str(&body).unwrap();
    let job = created["token"].as_str().unwrap().to_owned();
    let took = wait_until(Duration::from_secs(1), || append(&b, &job, 4) == 200);
    assert!(
        took.is_some(),
        "a token created on server a did not work on server b within 1 s"
    );

    // Revoked from the command line while both servers run: refused by both.
    let out = log.cli(&["token", "revoke", "scoring"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for (name, server) in [("a", &a), ("b", &b)] {
        let took = wait_until(Duration::from_secs(1), || append(server, &writer, 5) == 401);
        let took =
            took.unwrap_or_else(|| panic!("server {name} still took a revoked token after 1 s"));
        eprintln!("server {name} refused the revoked token after {took:?}");
    }
    // The changes are in the log, as on the embedded store.
    let out = log.cli(&[
        "query",
        "--kind",
        "governance.access_changed",
        "--format",
        "ndjson",
    ]);
    assert!(out.status.success());
    assert_eq!(String::from_utf8_lossy(&out.stdout).lines().count(), 4);
    drop((a, b));
    log.verify();
}
