//! The tables of a log in PostgreSQL, their versioned migrations and the grants that make the
//! log append-only in the database itself (see `docs/FORMAT.md`).
//!
//! **Invariants:**
//! * `schema_migrations` lists every migration applied; a store refuses to open a schema newer
//!   than the newest migration it knows.
//! * The API tokens of every server of the log are one table, kept as versions in
//!   `token_docs` (the newest row is the table; a change inserts a new version).
//! * Every log table refuses UPDATE, DELETE and TRUNCATE by trigger, whoever asks, and the
//!   servers' role is granted only SELECT and INSERT on them. `pending`, the queue of batches
//!   waiting for the sequencer, is the one table rows leave: the sequencer deletes a batch in
//!   the transaction that sequences it.
//! * The one exception: a row of `payloads` may be deleted once `payload_removals` records its
//!   removal by a `governance.payload_erased` or `governance.payload_expired` event of the log
//!   (checked by the trigger itself), so expiry and erasure take a payload away while its
//!   entry, leaf and checkpoints stay; or once `payload_archived` records that the cold
//!   archive holds it (readers then fetch it from there, checked against its entry, and a
//!   restore inserts it again). A `payload_archived` row goes only once its payload row is
//!   back (a trigger again), so the record of where a payload lives cannot be dropped alone.

use crate::PgError;
use tokio_postgres::Client;

/// The log tables: append-only by trigger and by grant.
pub const LOG_TABLES: [&str; 10] = [
    "entries",
    "payloads",
    "payload_removals",
    "subjects",
    "nodes",
    "checkpoints",
    "outcomes",
    "takeovers",
    "token_docs",
    "schema_migrations",
];

/// Migrations in order; the number is the schema version after each.
const MIGRATIONS: &[(i32, &str)] = &[(1, V1), (2, V2), (3, V3)];

/// The newest schema version this build knows.
pub const LATEST: i32 = 3;

/// Payloads kept only in the cold archive: a payload row may also go once `payload_archived`
/// records that the archive holds it (and comes back by restore).
const V3: &str = r#"
CREATE TABLE payload_archived (
    seq         bigint PRIMARY KEY,
    archived_at timestamptz NOT NULL DEFAULT now()
);

CREATE OR REPLACE FUNCTION guard_payload_removal() RETURNS trigger LANGUAGE plpgsql
SET search_path FROM CURRENT AS $fn$
BEGIN
    IF TG_OP = 'DELETE' AND EXISTS (
        SELECT 1 FROM payload_removals r JOIN entries e ON e.seq = r.remover
        WHERE r.seq = OLD.seq
          AND e.kind IN ('governance.payload_erased', 'governance.payload_expired')
    ) THEN
        RETURN OLD;
    END IF;
    IF TG_OP = 'DELETE' AND EXISTS (SELECT 1 FROM payload_archived a WHERE a.seq = OLD.seq) THEN
        RETURN OLD;
    END IF;
    RAISE EXCEPTION 'mlaudit: % on % is refused: the log is append-only (a payload goes only once payload_removals records its erasure or expiry, or payload_archived its copy in the cold archive)', TG_OP, TG_TABLE_NAME
        USING ERRCODE = 'insufficient_privilege';
END
$fn$;

CREATE FUNCTION guard_archived_forget() RETURNS trigger LANGUAGE plpgsql
SET search_path FROM CURRENT AS $fn$
BEGIN
    IF TG_OP = 'DELETE' AND EXISTS (SELECT 1 FROM payloads p WHERE p.seq = OLD.seq) THEN
        RETURN OLD;
    END IF;
    RAISE EXCEPTION 'mlaudit: % on % is refused: a payload_archived row goes only once its payload is back in payloads', TG_OP, TG_TABLE_NAME
        USING ERRCODE = 'insufficient_privilege';
END
$fn$;

CREATE TRIGGER payload_archived_guard BEFORE UPDATE OR DELETE ON payload_archived
    FOR EACH ROW EXECUTE FUNCTION guard_archived_forget();
CREATE TRIGGER payload_archived_no_truncate BEFORE TRUNCATE ON payload_archived
    FOR EACH STATEMENT EXECUTE FUNCTION refuse_change();
"#;

/// Removed payloads, and the trigger that lets a payload go only once its removal is recorded.
const V2: &str = r#"
CREATE TABLE payload_removals (
    seq        bigint PRIMARY KEY,
    remover    bigint NOT NULL,
    removed_at timestamptz NOT NULL DEFAULT now()
);

CREATE FUNCTION guard_payload_removal() RETURNS trigger LANGUAGE plpgsql
SET search_path FROM CURRENT AS $fn$
BEGIN
    IF TG_OP = 'DELETE' AND EXISTS (
        SELECT 1 FROM payload_removals r JOIN entries e ON e.seq = r.remover
        WHERE r.seq = OLD.seq
          AND e.kind IN ('governance.payload_erased', 'governance.payload_expired')
    ) THEN
        RETURN OLD;
    END IF;
    RAISE EXCEPTION 'mlaudit: % on % is refused: the log is append-only (a payload goes only once payload_removals records its erasure or expiry)', TG_OP, TG_TABLE_NAME
        USING ERRCODE = 'insufficient_privilege';
END
$fn$;
"#;

const V1: &str = r#"
CREATE TABLE entries (
    seq        bigint PRIMARY KEY WITH (fillfactor = 100),
    id         bytea NOT NULL,
    leaf       bytea NOT NULL,
    event_time bigint NOT NULL,
    stage      smallint NOT NULL,
    kind       text NOT NULL,
    actor      text NOT NULL,
    entry      bytea NOT NULL,
    CONSTRAINT entries_id UNIQUE (id)
) WITH (fillfactor = 100);
CREATE INDEX entries_leaf ON entries USING hash (leaf);
CREATE INDEX entries_kind ON entries (kind, seq);
CREATE INDEX entries_stage ON entries (stage, seq);
CREATE INDEX entries_actor ON entries (actor, seq);
CREATE INDEX entries_time ON entries USING brin (event_time);

CREATE TABLE payloads (
    seq     bigint PRIMARY KEY WITH (fillfactor = 100),
    payload bytea NOT NULL
) WITH (fillfactor = 100);

CREATE TABLE subjects (
    field smallint NOT NULL,
    value text NOT NULL,
    seq   bigint NOT NULL
) WITH (fillfactor = 100);
CREATE INDEX subjects_term ON subjects (field, value, seq);

CREATE TABLE nodes (
    level smallint NOT NULL,
    idx   bigint NOT NULL,
    hash  bytea NOT NULL,
    PRIMARY KEY (level, idx) WITH (fillfactor = 100)
) WITH (fillfactor = 100);

CREATE TABLE checkpoints (
    size      bigint PRIMARY KEY,
    prev_size bigint NOT NULL UNIQUE,
    note      text NOT NULL,
    signed_at timestamptz NOT NULL DEFAULT now(),
    CHECK (size > prev_size)
);

CREATE TABLE pending (
    pid     bigserial PRIMARY KEY,
    batch   bytea NOT NULL,
    ord     integer NOT NULL,
    header  bytea NOT NULL,
    timed   boolean NOT NULL,
    payload bytea NOT NULL
);

CREATE TABLE outcomes (
    batch         bytea PRIMARY KEY,
    tree_size     bigint,
    seqs          bigint[],
    duplicates    boolean[],
    problem       text,
    problem_index integer,
    problem_id    bytea,
    decided_at    timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE takeovers (
    at        timestamptz NOT NULL DEFAULT now(),
    holder    text NOT NULL,
    tree_size bigint NOT NULL
);

CREATE TABLE token_docs (
    version    bigserial PRIMARY KEY,
    doc        bytea NOT NULL,
    written_at timestamptz NOT NULL DEFAULT now()
);

CREATE FUNCTION refuse_change() RETURNS trigger LANGUAGE plpgsql AS $fn$
BEGIN
    RAISE EXCEPTION 'mlaudit: % on % is refused: the log is append-only', TG_OP, TG_TABLE_NAME
        USING ERRCODE = 'insufficient_privilege';
END
$fn$;
"#;

/// Creates the schema if asked, applies every migration it lacks and grants the servers' role
/// its rights, all under a transaction-scoped advisory lock so that servers starting together
/// migrate once. Returns the version found before.
pub async fn migrate(
    client: &mut Client,
    schema: &str,
    app_role: &str,
    owner_role: Option<&str>,
    create: bool,
) -> Result<i32, PgError> {
    let tx = client.transaction().await?;
    tx.execute(
        "SELECT pg_advisory_xact_lock(hashtextextended('mlaudit-migrate:' || $1, 0))",
        &[&schema],
    )
    .await?;
    if let Some(owner) = owner_role {
        tx.batch_execute(&format!("SET LOCAL ROLE \"{owner}\""))
            .await?;
    }
    let found: i32 = current_version(&tx, schema).await?.unwrap_or(0);
    if found == 0 && !create {
        return Err(PgError::NotInitialized(schema.to_owned()));
    }
    if found > LATEST {
        return Err(PgError::NewerSchema {
            found,
            known: LATEST,
        });
    }
    if found == LATEST {
        tx.commit().await?;
        return Ok(found);
    }
    if found == 0 {
        tx.batch_execute(&format!(
            "CREATE SCHEMA IF NOT EXISTS \"{schema}\"; SET LOCAL search_path TO \"{schema}\";
             CREATE TABLE schema_migrations (version integer PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now());"
        ))
        .await
        .map_err(|e| PgError::migration(0, e))?;
    }
    for (version, sql) in MIGRATIONS.iter().filter(|(v, _)| *v > found) {
        tx.batch_execute(sql)
            .await
            .map_err(|e| PgError::migration(*version, e))?;
        tx.execute(
            "INSERT INTO schema_migrations (version) VALUES ($1)",
            &[version],
        )
        .await?;
    }
    tx.batch_execute(&guard_sql()).await?;
    grant(&tx, schema, app_role).await?;
    tx.commit().await?;
    Ok(found)
}

async fn current_version(
    tx: &tokio_postgres::Transaction<'_>,
    schema: &str,
) -> Result<Option<i32>, PgError> {
    let exists: bool = tx
        .query_one(
            "SELECT to_regclass(quote_ident($1) || '.schema_migrations') IS NOT NULL",
            &[&schema],
        )
        .await?
        .get(0);
    if !exists {
        return Ok(None);
    }
    let row = tx
        .query_one(
            &format!("SELECT max(version) FROM \"{schema}\".schema_migrations"),
            &[],
        )
        .await?;
    Ok(row.get::<_, Option<i32>>(0))
}

/// The append-only triggers on every log table (re-created idempotently).
fn guard_sql() -> String {
    LOG_TABLES
        .iter()
        .map(|t| {
            let row_guard = match *t {
                "payloads" => "guard_payload_removal",
                _ => "refuse_change",
            };
            format!(
                "DROP TRIGGER IF EXISTS {t}_append_only ON {t};
                 CREATE TRIGGER {t}_append_only BEFORE UPDATE OR DELETE ON {t}
                     FOR EACH ROW EXECUTE FUNCTION {row_guard}();
                 DROP TRIGGER IF EXISTS {t}_no_truncate ON {t};
                 CREATE TRIGGER {t}_no_truncate BEFORE TRUNCATE ON {t}
                     FOR EACH STATEMENT EXECUTE FUNCTION refuse_change();\n"
            )
        })
        .collect()
}

/// Grants the servers' role what it needs and nothing more, if that role exists.
async fn grant(
    tx: &tokio_postgres::Transaction<'_>,
    schema: &str,
    app_role: &str,
) -> Result<(), PgError> {
    let exists: bool = tx
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = $1)",
            &[&app_role],
        )
        .await?
        .get(0);
    if !exists {
        return Ok(());
    }
    let tables = LOG_TABLES.join(", ");
    tx.batch_execute(&format!(
        "GRANT USAGE ON SCHEMA \"{schema}\" TO \"{app_role}\";
         REVOKE ALL ON ALL TABLES IN SCHEMA \"{schema}\" FROM \"{app_role}\";
         GRANT SELECT, INSERT ON {tables} TO \"{app_role}\";
         GRANT SELECT, INSERT, DELETE ON pending TO \"{app_role}\";
         GRANT DELETE ON payloads TO \"{app_role}\";
         GRANT SELECT, INSERT, DELETE ON payload_archived TO \"{app_role}\";
         GRANT USAGE ON ALL SEQUENCES IN SCHEMA \"{schema}\" TO \"{app_role}\";"
    ))
    .await?;
    Ok(())
}

/// The SQL an operator runs once, as a superuser, before `mlaudit init`: the role that owns
/// the tables (no login) and the role every server connects as.
pub fn roles_sql(database: &str, owner: &str, app: &str, admin: &str) -> String {
    format!(
        "-- The owner of the log's tables: nobody logs in as it.\n\
         CREATE ROLE {owner} NOLOGIN;\n\
         GRANT {owner} TO {admin};\n\
         GRANT CREATE ON DATABASE {database} TO {owner};\n\
         -- What every `mlaudit serve` connects as: SELECT and INSERT on the log, nothing else.\n\
         CREATE ROLE {app} LOGIN PASSWORD 'choose-a-password';\n\
         GRANT CONNECT ON DATABASE {database} TO {app};\n"
    )
}
