//! Reads by SQL: events by seq, id and leaf, tree nodes, checkpoints, scans and queries.
//!
//! **Invariant:** readers see only committed groups, each whole, so every entry they can see
//! is covered by a stored checkpoint; a missing row inside the tree is reported as corruption.

use crate::sequencer::{stage_code, to_i64, to_u64};
use crate::{Inner, PgError, PostgresStore};
use mlaudit_core::entry::EventId;
use mlaudit_core::merkle::Hash;
use mlaudit_store::{
    Diagnostics, LogReader, Querier, Query, StoreError, StoreStats, StoredEvent, Tier,
};
use std::ops::ControlFlow;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, GenericClient};

/// Events read per round trip by scans.
const SCAN_CHUNK: i64 = 2_000;

/// The size of the latest checkpoint in the database.
pub(crate) async fn latest_size(inner: &Inner) -> Result<Option<u64>, PgError> {
    let conn = inner.pool.get().await?;
    let row = conn
        .query_one("SELECT max(size) FROM checkpoints", &[])
        .await?;
    row.get::<_, Option<i64>>(0).map(to_u64).transpose()
}

/// The latest stored checkpoint: its size and note.
pub(crate) async fn latest_checkpoint<C: GenericClient>(
    client: &C,
) -> Result<Option<(u64, String)>, PgError> {
    let row = client
        .query_opt(
            "SELECT size, note FROM checkpoints ORDER BY size DESC LIMIT 1",
            &[],
        )
        .await?;
    row.map(|r| Ok((to_u64(r.get(0))?, r.get(1)))).transpose()
}

/// The latest checkpoint, which every initialized log has (the empty tree's at least).
pub(crate) async fn required_checkpoint<C: GenericClient>(
    client: &C,
) -> Result<(u64, String), PgError> {
    latest_checkpoint(client).await?.ok_or_else(|| {
        PgError::Corrupt("the log has no checkpoint, not even the empty tree's".into())
    })
}

/// Keeps this process's idea of the tree size and of the token table's version up to date
/// with other processes' changes.
pub(crate) async fn follow_size(inner: Arc<Inner>) {
    loop {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let Ok(conn) = inner.pool.get().await else {
            continue;
        };
        let row = conn
            .query_one(
                "SELECT (SELECT max(size) FROM checkpoints), (SELECT max(version) FROM token_docs)",
                &[],
            )
            .await;
        if let Ok(row) = row {
            if let Some(Ok(size)) = row.get::<_, Option<i64>>(0).map(to_u64) {
                inner.size.fetch_max(size, Ordering::AcqRel);
            }
            if let Some(Ok(version)) = row.get::<_, Option<i64>>(1).map(to_u64) {
                inner.tokens_version.fetch_max(version, Ordering::AcqRel);
            }
        }
    }
}

fn hash(bytes: &[u8], what: &str) -> Result<Hash, PgError> {
    Hash::from_slice(bytes).ok_or_else(|| PgError::Corrupt(format!("{what} is not 32 bytes")))
}

/// A stored perfect-subtree hash: level 0 is the entry's leaf.
pub(crate) async fn node_async<C: GenericClient>(
    client: &C,
    level: u32,
    index: u64,
) -> Result<Hash, PgError> {
    let row = if level == 0 {
        client
            .query_opt("SELECT leaf FROM entries WHERE seq = $1", &[&to_i64(index)])
            .await?
    } else {
        client
            .query_opt(
                "SELECT hash FROM nodes WHERE level = $1 AND idx = $2",
                &[&(level as i16), &to_i64(index)],
            )
            .await?
    };
    match row {
        Some(r) => hash(r.get(0), "a stored tree node"),
        None => Err(PgError::Unavailable(format!(
            "not found: node {level}/{index}"
        ))),
    }
}

fn err(e: PgError) -> StoreError {
    match e {
        PgError::Unavailable(m) if m.starts_with("not found: ") => {
            StoreError::NotFound(m["not found: ".len()..].to_owned())
        }
        other => other.into(),
    }
}

/// A stored event from its columns (`remover` from `payload_removals` and `archived` from
/// `payload_archived`, which count only once the payload row is gone; a removal wins).
fn stored(
    seq: u64,
    entry: Vec<u8>,
    payload: Option<Vec<u8>>,
    remover: Option<i64>,
    archived: bool,
) -> StoredEvent {
    let gone = payload.is_none();
    let removed_by = remover.filter(|_| gone).and_then(|r| u64::try_from(r).ok());
    let tier = match gone && archived && removed_by.is_none() {
        true => Tier::Cold,
        false => Tier::Hot,
    };
    StoredEvent {
        removed_by,
        tier,
        ..StoredEvent::new(seq, entry, payload)
    }
}

/// The columns `stored` takes after `e.seq`, `e.entry`, joined on `seq`.
const PAYLOAD_COLUMNS: &str = "p.payload, r.remover, a.seq IS NOT NULL";
const PAYLOAD_JOINS: &str =
    "LEFT JOIN payloads p USING (seq) LEFT JOIN payload_removals r USING (seq)
     LEFT JOIN payload_archived a USING (seq)";

impl PostgresStore {
    async fn client(&self) -> Result<crate::pool::Conn<'_>, PgError> {
        self.inner().pool.get().await
    }

    fn run<T>(
        &self,
        f: impl for<'c> FnOnce(&'c Client) -> futures_util::future::BoxFuture<'c, Result<T, PgError>>,
    ) -> Result<T, StoreError> {
        self.block(async {
            let conn = self.client().await?;
            f(&conn).await
        })
        .map_err(err)
    }
}

impl LogReader for PostgresStore {
    fn tree_size(&self) -> u64 {
        self.inner().size.load(Ordering::Acquire)
    }

    fn event(&self, seq: u64) -> Result<StoredEvent, StoreError> {
        self.run(move |c| {
            Box::pin(async move {
                let sql = format!(
                    "SELECT e.entry, {PAYLOAD_COLUMNS} FROM entries e {PAYLOAD_JOINS} WHERE e.seq = $1"
                );
                let row = c.query_opt(&sql, &[&to_i64(seq)]).await?;
                match row {
                    Some(r) => Ok(stored(seq, r.get(0), r.get(1), r.get(2), r.get(3))),
                    None => Err(PgError::Unavailable(format!("not found: seq {seq}"))),
                }
            })
        })
    }

    fn seq_of(&self, id: &EventId) -> Result<Option<u64>, StoreError> {
        let id = id.0;
        self.run(move |c| {
            Box::pin(async move {
                let row = c
                    .query_opt("SELECT seq FROM entries WHERE id = $1", &[&&id[..]])
                    .await?;
                row.map(|r| to_u64(r.get(0))).transpose()
            })
        })
    }

    fn seq_of_leaf(&self, leaf: &Hash) -> Result<Option<u64>, StoreError> {
        let leaf = leaf.0;
        self.run(move |c| {
            Box::pin(async move {
                let row = c
                    .query_opt(
                        "SELECT seq FROM entries WHERE leaf = $1 ORDER BY seq LIMIT 1",
                        &[&&leaf[..]],
                    )
                    .await?;
                row.map(|r| to_u64(r.get(0))).transpose()
            })
        })
    }

    fn node(&self, level: u32, index: u64) -> Result<Hash, StoreError> {
        self.run(move |c| Box::pin(node_async(c, level, index)))
    }

    fn nodes(&self, level: u32, start: u64, count: u64) -> Result<Vec<Hash>, StoreError> {
        let hashes = self.run(move |c| {
            Box::pin(async move {
                let (from, to) = (to_i64(start), to_i64(start.saturating_add(count)));
                let rows = if level == 0 {
                    c.query(
                        "SELECT leaf FROM entries WHERE seq >= $1 AND seq < $2 ORDER BY seq",
                        &[&from, &to],
                    )
                    .await?
                } else {
                    c.query(
                        "SELECT hash FROM nodes WHERE level = $1 AND idx >= $2 AND idx < $3 ORDER BY idx",
                        &[&(level as i16), &from, &to],
                    )
                    .await?
                };
                rows.iter()
                    .map(|r| hash(r.get(0), "a stored tree node"))
                    .collect::<Result<Vec<Hash>, PgError>>()
            })
        })?;
        if hashes.len() as u64 != count {
            return Err(StoreError::NotFound(format!(
                "nodes {level}/{start}..{} (found {})",
                start.saturating_add(count),
                hashes.len()
            )));
        }
        Ok(hashes)
    }

    fn checkpoint(&self, size: u64) -> Result<Option<String>, StoreError> {
        self.run(move |c| {
            Box::pin(async move {
                let row = c
                    .query_opt(
                        "SELECT note FROM checkpoints WHERE size = $1",
                        &[&to_i64(size)],
                    )
                    .await?;
                Ok(row.map(|r| r.get(0)))
            })
        })
    }

    fn checkpoint_sizes(&self) -> Result<Vec<u64>, StoreError> {
        self.checkpoint_sizes_after(None, usize::MAX)
    }

    fn checkpoint_sizes_after(
        &self,
        after: Option<u64>,
        max: usize,
    ) -> Result<Vec<u64>, StoreError> {
        let after = after.map_or(-1, to_i64);
        let max = i64::try_from(max).unwrap_or(i64::MAX);
        self.run(move |c| {
            Box::pin(async move {
                let rows = c
                    .query(
                        "SELECT size FROM checkpoints WHERE size > $1 ORDER BY size LIMIT $2",
                        &[&after, &max],
                    )
                    .await?;
                rows.iter().map(|r| to_u64(r.get(0))).collect()
            })
        })
    }

    fn latest_checkpoint_size(&self) -> Result<Option<u64>, StoreError> {
        let size = self.block(latest_size(self.inner())).map_err(err)?;
        if let Some(s) = size {
            self.inner().size.fetch_max(s, Ordering::AcqRel);
        }
        Ok(size)
    }

    fn scan(
        &self,
        from: u64,
        visit: &mut dyn FnMut(StoredEvent) -> ControlFlow<()>,
    ) -> Result<(), StoreError> {
        let end = self.tree_size();
        let mut next = from;
        while next < end {
            let upto = next.saturating_add(SCAN_CHUNK as u64).min(end);
            let rows = self.run(move |c| {
                Box::pin(async move {
                    let sql = format!(
                        "SELECT e.seq, e.entry, {PAYLOAD_COLUMNS} FROM entries e {PAYLOAD_JOINS}
                         WHERE e.seq >= $1 AND e.seq < $2 ORDER BY e.seq"
                    );
                    let rows = c.query(&sql, &[&to_i64(next), &to_i64(upto)]).await?;
                    Ok(rows)
                })
            })?;
            for row in rows {
                let seq = to_u64(row.get(0)).map_err(StoreError::from)?;
                if seq != next {
                    return Err(StoreError::Corrupt {
                        location: format!("postgres entries seq {next}"),
                        problem: format!("event {next} is missing (the next stored is {seq})"),
                    });
                }
                if visit(stored(seq, row.get(1), row.get(2), row.get(3), row.get(4))).is_break() {
                    return Ok(());
                }
                next += 1;
            }
            if next < upto {
                return Err(StoreError::Corrupt {
                    location: format!("postgres entries seq {next}"),
                    problem: format!("event {next} is missing"),
                });
            }
        }
        Ok(())
    }
}

impl Querier for PostgresStore {
    fn query(&self, q: &Query) -> Result<Vec<u64>, StoreError> {
        let (sql, params) = query_sql(q);
        self.run(move |c| {
            Box::pin(async move {
                let refs: Vec<&(dyn ToSql + Sync)> = params
                    .iter()
                    .map(|p| p.as_ref() as &(dyn ToSql + Sync))
                    .collect();
                let rows = c.query(&sql, &refs).await?;
                rows.iter().map(|r| to_u64(r.get(0))).collect()
            })
        })
    }
}

/// The SQL of a query and its parameters: every filter a condition, subjects by `EXISTS`.
fn query_sql(q: &Query) -> (String, Vec<Box<dyn ToSql + Sync + Send>>) {
    use mlaudit_core::entry::SubjectField;
    let mut conds: Vec<String> = Vec::new();
    let mut params: Vec<Box<dyn ToSql + Sync + Send>> = Vec::new();
    let mut add = |cond: &str, p: Box<dyn ToSql + Sync + Send>, params_len: &mut usize| {
        *params_len += 1;
        conds.push(cond.replace('$', &format!("${params_len}")));
        params.push(p);
    };
    let mut n = 0usize;
    if let Some(s) = q.stage {
        add("e.stage = $", Box::new(stage_code(s)), &mut n);
    }
    if let Some(k) = &q.kind {
        add("e.kind = $", Box::new(k.clone()), &mut n);
    }
    if let Some(a) = &q.actor {
        add("e.actor = $", Box::new(a.clone()), &mut n);
    }
    let subjects = [
        (SubjectField::Model, &q.model),
        (SubjectField::Version, &q.version),
        (SubjectField::Run, &q.run),
        (SubjectField::Dataset, &q.dataset),
        (SubjectField::Deployment, &q.deployment),
    ];
    for (field, value) in subjects {
        if let Some(v) = value {
            let cond = format!(
                "EXISTS (SELECT 1 FROM subjects s WHERE s.field = {} AND s.value = $ AND s.seq = e.seq)",
                field.code()
            );
            add(&cond, Box::new(v.clone()), &mut n);
        }
    }
    if let Some(t) = q.since_ns {
        add("e.event_time >= $", Box::new(t), &mut n);
    }
    if let Some(t) = q.until_ns {
        add("e.event_time < $", Box::new(t), &mut n);
    }
    if let Some(s) = q.after_seq {
        add("e.seq > $", Box::new(to_i64(s)), &mut n);
    }
    let limit = i64::try_from(q.limit).unwrap_or(i64::MAX);
    add("TRUE LIMIT $", Box::new(limit), &mut n);
    let limit_cond = conds.pop().unwrap_or_default();
    let mut sql = String::from("SELECT e.seq FROM entries e WHERE TRUE");
    for c in &conds {
        sql.push_str(" AND ");
        sql.push_str(c);
    }
    sql.push_str(" ORDER BY e.seq ");
    sql.push_str(limit_cond.trim_start_matches("TRUE "));
    (sql, params)
}

impl Diagnostics for PostgresStore {
    fn location(&self, seq: u64) -> String {
        format!("{} entries seq {seq}", self.inner().pool.url().display)
    }

    fn stats(&self) -> StoreStats {
        let i = self.inner();
        StoreStats {
            syncs: i.syncs.load(Ordering::Relaxed),
            synced_events: i.synced_events.load(Ordering::Relaxed),
            sequencer: Some(i.sequencer.load(Ordering::Acquire)),
            takeovers: i.takeovers.load(Ordering::Relaxed),
            ..StoreStats::default()
        }
    }
}

impl PostgresStore {
    /// [`mlaudit_store::Appender::remove_payload_batch`]: records each removal in
    /// `payload_removals` and deletes the payload row, in one transaction; the table's trigger
    /// lets the row go only with such a record naming a removal event.
    pub(crate) fn remove_payloads_now(&self, removals: &[(u64, u64)]) -> Result<u64, StoreError> {
        mlaudit_store::check_removals(self, removals)?;
        let seqs: Vec<i64> = removals.iter().map(|(s, _)| to_i64(*s)).collect();
        let by: Vec<i64> = removals.iter().map(|(_, r)| to_i64(*r)).collect();
        self.block(async {
            let mut conn = self.client().await?;
            let tx = conn.transaction().await?;
            lock_payload_rewrites(&tx).await?;
            let removed = tx
                .execute(
                    "INSERT INTO payload_removals (seq, remover)
                     SELECT r.seq, r.remover FROM unnest($1::bigint[], $2::bigint[]) AS r(seq, remover)
                     WHERE EXISTS (SELECT 1 FROM payloads p WHERE p.seq = r.seq)
                        OR EXISTS (SELECT 1 FROM payload_archived a WHERE a.seq = r.seq)
                     ON CONFLICT (seq) DO NOTHING",
                    &[&seqs, &by],
                )
                .await?;
            tx.execute("DELETE FROM payloads WHERE seq = ANY($1)", &[&seqs])
                .await?;
            tx.commit().await?;
            Ok::<u64, PgError>(removed)
        })
        .map_err(err)
    }
}

impl PostgresStore {
    /// [`mlaudit_store::Appender::offload_payloads`]: records each payload in
    /// `payload_archived` and deletes its row, in one transaction (the trigger lets a row go
    /// only with such a record). Removed and already archived payloads have no row to go.
    pub(crate) fn offload_now(&self, seqs: &[u64]) -> Result<u64, StoreError> {
        let seqs: Vec<i64> = seqs.iter().map(|s| to_i64(*s)).collect();
        self.block(async {
            let mut conn = self.client().await?;
            let tx = conn.transaction().await?;
            lock_payload_rewrites(&tx).await?;
            tx.execute(
                "INSERT INTO payload_archived (seq)
                 SELECT p.seq FROM payloads p WHERE p.seq = ANY($1)
                 ON CONFLICT (seq) DO NOTHING",
                &[&seqs],
            )
            .await?;
            let dropped = tx
                .execute("DELETE FROM payloads WHERE seq = ANY($1)", &[&seqs])
                .await?;
            tx.commit().await?;
            Ok::<u64, PgError>(dropped)
        })
        .map_err(err)
    }

    /// [`mlaudit_store::Appender::restore_payloads`]: inserts each payload the archive alone
    /// keeps (checked against its entry) and forgets its `payload_archived` record, in one
    /// transaction.
    pub(crate) fn restore_now(&self, payloads: &[(u64, Vec<u8>)]) -> Result<u64, StoreError> {
        let mut back = Vec::with_capacity(payloads.len());
        for (seq, payload) in payloads {
            let ev = self.event(*seq)?;
            if ev.payload_in_archive() {
                mlaudit_store::check_restored(*seq, &ev.entry, payload)?;
                back.push((to_i64(*seq), payload.clone()));
            }
        }
        let seqs: Vec<i64> = back.iter().map(|(s, _)| *s).collect();
        let bytes: Vec<Vec<u8>> = back.into_iter().map(|(_, p)| p).collect();
        self.block(async {
            let mut conn = self.client().await?;
            let tx = conn.transaction().await?;
            // Under the lock, checked again: a payload erased or expired meanwhile stays gone.
            lock_payload_rewrites(&tx).await?;
            let restored = tx
                .execute(
                    "INSERT INTO payloads (seq, payload)
                     SELECT r.seq, r.payload FROM unnest($1::bigint[], $2::bytea[]) AS r(seq, payload)
                     WHERE EXISTS (SELECT 1 FROM payload_archived a WHERE a.seq = r.seq)
                       AND NOT EXISTS (SELECT 1 FROM payload_removals x WHERE x.seq = r.seq)
                     ON CONFLICT (seq) DO NOTHING",
                    &[&seqs, &bytes],
                )
                .await?;
            tx.execute(
                "DELETE FROM payload_archived a WHERE a.seq = ANY($1)
                 AND EXISTS (SELECT 1 FROM payloads p WHERE p.seq = a.seq)",
                &[&seqs],
            )
            .await?;
            tx.commit().await?;
            Ok::<u64, PgError>(restored)
        })
        .map_err(err)
    }
}

/// Serialises removals, offloads and restores of payloads across every server of the log, for
/// the rest of the transaction: a restore must not bring back a payload removed meanwhile.
async fn lock_payload_rewrites(tx: &tokio_postgres::Transaction<'_>) -> Result<(), PgError> {
    tx.execute(
        "SELECT pg_advisory_xact_lock(hashtextextended('mlaudit-payload-rewrite:' || current_schema(), 0))",
        &[],
    )
    .await?;
    Ok(())
}
