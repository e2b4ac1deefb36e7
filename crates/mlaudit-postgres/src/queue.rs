//! Appends through a server that is not the sequencer: the batch is committed to `pending`,
//! the sequencer takes it into a group and records its outcome in `outcomes` in the same
//! transaction, and the waiting server answers from that outcome.
//!
//! **Invariant:** a queued batch is answered with success only once `outcomes` holds its seqs,
//! which is committed together with its entries and the signed checkpoint that covers them.
//! The batch travels as entry headers (seq and receipt time zero) and payloads, decoded again
//! by the sequencer as untrusted bytes.

use crate::sequencer::{to_i64, to_u64};
use crate::{Inner, PgError, Request};
use futures_util::pin_mut;
use mlaudit_core::entry::{self, EntryRef, EventId};
use mlaudit_core::event::PreparedEvent;
use mlaudit_core::merkle::sha256;
use mlaudit_store::{AppendDone, AppendReceipt, Appended, StoreError};
use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::Transaction;

/// How often waiting batches' outcomes are looked for.
const POLL: Duration = Duration::from_millis(10);

/// Where a call of a group comes from.
pub(crate) enum Origin {
    /// An append in this process, answered directly: its index among the group's callers.
    Local(usize),
    /// A batch queued by another process, answered through `outcomes`.
    Queued([u8; 16]),
}

/// One all-or-nothing batch in a group.
pub(crate) struct Call {
    pub events: Vec<PreparedEvent>,
    pub origin: Origin,
    /// Why the batch cannot be stored (a queued row that does not decode).
    pub problem: Option<(usize, String)>,
}

/// A queued batch's caller.
pub(crate) struct Waiter {
    ids: Vec<EventId>,
    done: AppendDone,
    deadline: Instant,
}

/// Queues a batch for the sequencer and registers its caller.
pub(crate) async fn enqueue(inner: Arc<Inner>, mut r: Request) {
    if r.events.is_empty() {
        return (r.done)(latest_receipt(&inner).await.map_err(StoreError::from));
    }
    for ev in &mut r.events {
        ev.id
            .get_or_insert_with(|| EventId(*uuid::Uuid::new_v4().as_bytes()));
    }
    let batch = *uuid::Uuid::new_v4().as_bytes();
    if let Err(e) = insert(&inner, &batch, &r.events).await {
        return (r.done)(Err(StoreError::Unavailable(format!(
            "not stored (queueing the batch for the sequencer failed): {e}"
        ))));
    }
    let waiter = Waiter {
        ids: r.events.iter().filter_map(|e| e.id).collect(),
        done: r.done,
        deadline: Instant::now() + inner.options.sequencing_timeout,
    };
    match inner.waiters.lock() {
        Ok(mut w) => {
            w.insert(batch, waiter);
        }
        Err(_) => (waiter.done)(Err(StoreError::WriterStopped("a lock was poisoned".into()))),
    }
}

async fn insert(inner: &Inner, batch: &[u8; 16], events: &[PreparedEvent]) -> Result<(), PgError> {
    let mut conn = inner.pool.get().await?;
    let tx = conn.transaction().await?;
    let sink = tx
        .copy_in("COPY pending (batch, ord, header, timed, payload) FROM STDIN BINARY")
        .await?;
    let writer = BinaryCopyInWriter::new(
        sink,
        &[
            Type::BYTEA,
            Type::INT4,
            Type::BYTEA,
            Type::BOOL,
            Type::BYTEA,
        ],
    );
    pin_mut!(writer);
    let mut header = Vec::with_capacity(256);
    for (i, ev) in events.iter().enumerate() {
        header.clear();
        let id = ev.id.unwrap_or(EventId([0; 16]));
        entry::encode_into(
            &EntryRef {
                seq: 0,
                event_time_ns: ev.event_time_ns.unwrap_or(0),
                receipt_time_ns: 0,
                id,
                payload_sha256: &ev.payload_sha256,
                payload_len: u32::try_from(ev.payload.len()).unwrap_or(u32::MAX),
                actor_type: ev.actor_type,
                kind: &ev.kind,
                actor_id: &ev.actor_id,
                principal: &ev.principal,
                subjects: &ev.subjects,
            },
            &mut header,
        )
        .map_err(|e| PgError::Unavailable(format!("event {i} cannot be encoded: {e}")))?;
        let ord = i32::try_from(i).unwrap_or(i32::MAX);
        let row: [&(dyn ToSql + Sync); 5] = [
            &&batch[..],
            &ord,
            &&header[..],
            &ev.event_time_ns.is_some(),
            &&ev.payload[..],
        ];
        writer.as_mut().write(&row).await?;
    }
    writer.finish().await?;
    tx.commit().await?;
    Ok(())
}

/// A queued event's place in its batch and the event, or why it does not decode.
type QueuedRow = (i32, Result<PreparedEvent, String>);

/// The receipt of an empty batch: the latest checkpoint.
async fn latest_receipt(inner: &Inner) -> Result<AppendReceipt, PgError> {
    let conn = inner.pool.get().await?;
    let (tree_size, checkpoint) = crate::read::required_checkpoint(&*conn).await?;
    Ok(AppendReceipt {
        events: Vec::new(),
        tree_size,
        checkpoint,
    })
}

/// Takes up to `max` queued batches, oldest first, deleting them in the sequencer's
/// transaction (so that a failed group leaves them queued).
pub(crate) async fn take(tx: &Transaction<'_>, max: i64) -> Result<Vec<Call>, PgError> {
    let rows = tx
        .query(
            "DELETE FROM pending WHERE batch IN (
                 SELECT batch FROM pending GROUP BY batch ORDER BY min(pid) LIMIT $1)
             RETURNING batch, ord, header, timed, payload",
            &[&max],
        )
        .await?;
    let mut batches: BTreeMap<[u8; 16], Vec<QueuedRow>> = BTreeMap::new();
    for row in &rows {
        let batch: &[u8] = row.get(0);
        let Ok(batch) = <[u8; 16]>::try_from(batch) else {
            continue;
        };
        let ev = decode(row.get(2), row.get(3), row.get(4));
        batches.entry(batch).or_default().push((row.get(1), ev));
    }
    Ok(batches
        .into_iter()
        .map(|(batch, mut rows)| {
            rows.sort_by_key(|(ord, _)| *ord);
            let mut events = Vec::with_capacity(rows.len());
            let mut problem = None;
            for (i, (_, ev)) in rows.into_iter().enumerate() {
                match ev {
                    Ok(ev) => events.push(ev),
                    Err(why) => {
                        problem.get_or_insert((i, why));
                    }
                }
            }
            Call {
                events,
                origin: Origin::Queued(batch),
                problem,
            }
        })
        .collect())
}

/// A queued event back from its header and payload, checked like any client input.
fn decode(header: &[u8], timed: bool, payload: &[u8]) -> Result<PreparedEvent, String> {
    let e = entry::decode(header).map_err(|e| format!("the queued entry does not decode: {e}"))?;
    if sha256(payload) != e.payload_sha256 || payload.len() as u64 != u64::from(e.payload_len) {
        return Err("the queued payload does not match its digest".into());
    }
    // What a client's event could not contain either (and what PostgreSQL's text refuses).
    let texts = [&e.kind, &e.actor_id, &e.principal]
        .into_iter()
        .chain(e.subjects.iter().map(|(_, v)| v));
    for text in texts {
        if text.chars().any(mlaudit_core::event::is_forbidden_char) {
            return Err(
                "the queued event holds a control or bidirectional-override character".into(),
            );
        }
    }
    Ok(PreparedEvent {
        id: Some(e.id),
        event_time_ns: timed.then_some(e.event_time_ns),
        kind: e.kind,
        actor_type: e.actor_type,
        actor_id: e.actor_id,
        subjects: e.subjects,
        principal: e.principal,
        payload: payload.to_vec(),
        payload_sha256: e.payload_sha256,
    })
}

/// Records a queued batch's outcome in the sequencer's transaction.
pub(crate) async fn record_outcome(
    tx: &Transaction<'_>,
    batch: &[u8; 16],
    outcome: &Result<Vec<Appended>, StoreError>,
    tree_size: u64,
) -> Result<(), PgError> {
    let sql = "INSERT INTO outcomes (batch, tree_size, seqs, duplicates, problem, problem_index, problem_id)
               VALUES ($1, $2, $3, $4, $5, $6, $7)";
    let none_i64: Option<i64> = None;
    match outcome {
        Ok(events) => {
            let seqs: Vec<i64> = events.iter().map(|a| to_i64(a.seq)).collect();
            let dups: Vec<bool> = events.iter().map(|a| a.duplicate).collect();
            tx.execute(
                sql,
                &[
                    &&batch[..],
                    &Some(to_i64(tree_size)),
                    &seqs,
                    &dups,
                    &None::<String>,
                    &None::<i32>,
                    &None::<&[u8]>,
                ],
            )
            .await?;
        }
        Err(e) => {
            // The problem alone: the waiter wraps it in its own `Rejected` again.
            let (index, id, problem) = match e {
                StoreError::Conflict { index, id } => (*index, Some(&id.0[..]), e.to_string()),
                StoreError::Rejected { index, problem } => (*index, None, problem.clone()),
                other => (0, None, other.to_string()),
            };
            let index = i32::try_from(index).unwrap_or(i32::MAX);
            tx.execute(
                sql,
                &[
                    &&batch[..],
                    &none_i64,
                    &None::<Vec<i64>>,
                    &None::<Vec<bool>>,
                    &Some(problem),
                    &Some(index),
                    &id,
                ],
            )
            .await?;
        }
    }
    Ok(())
}

/// Answers waiting callers as their batches' outcomes appear (or their time runs out).
pub(crate) async fn watch(inner: Arc<Inner>) {
    loop {
        tokio::time::sleep(POLL).await;
        let batches: Vec<[u8; 16]> = match inner.waiters.lock() {
            Ok(w) => w.keys().copied().collect(),
            Err(_) => return,
        };
        if batches.is_empty() {
            continue;
        }
        if let Err(e) = answer(&inner, &batches).await {
            tracing::warn!(error = %e, "looking up queued batches' outcomes failed; retrying");
        }
        expire(&inner).await;
    }
}

fn take_waiter(inner: &Inner, batch: &[u8; 16]) -> Option<Waiter> {
    inner.waiters.lock().ok()?.remove(batch)
}

/// Withdraws the batches whose callers have waited too long: a batch still in `pending` is
/// deleted and its caller told it was not stored, which is then true; a batch the sequencer
/// has already taken keeps its caller waiting for its outcome.
async fn expire(inner: &Inner) {
    let now = Instant::now();
    let late: Vec<[u8; 16]> = match inner.waiters.lock() {
        Ok(w) => w
            .iter()
            .filter(|(_, v)| v.deadline <= now)
            .map(|(k, _)| *k)
            .collect(),
        Err(_) => return,
    };
    for batch in late {
        match withdraw(inner, &batch).await {
            Ok(true) => {
                if let Some(w) = take_waiter(inner, &batch) {
                    (w.done)(Err(StoreError::Unavailable(format!(
                        "no sequencer took the batch within {} s; it was withdrawn and nothing of it was stored",
                        inner.options.sequencing_timeout.as_secs()
                    ))));
                }
            }
            Ok(false) => {
                if let Ok(mut w) = inner.waiters.lock() {
                    if let Some(w) = w.get_mut(&batch) {
                        w.deadline = now + inner.options.sequencing_timeout;
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, "withdrawing a late batch failed; retrying"),
        }
    }
}

/// Deletes a queued batch unless the sequencer took it; whether it was still queued. (The
/// DELETE waits for a sequencer transaction that holds the batch's rows.)
async fn withdraw(inner: &Inner, batch: &[u8; 16]) -> Result<bool, PgError> {
    let conn = inner.pool.get().await?;
    let n = conn
        .execute("DELETE FROM pending WHERE batch = $1", &[&&batch[..]])
        .await?;
    Ok(n > 0)
}

async fn answer(inner: &Inner, batches: &[[u8; 16]]) -> Result<(), PgError> {
    let conn = inner.pool.get().await?;
    let keys: Vec<&[u8]> = batches.iter().map(|b| &b[..]).collect();
    let rows = conn
        .query(
            "SELECT o.batch, o.tree_size, o.seqs, o.duplicates, o.problem, o.problem_index, o.problem_id, c.note
             FROM outcomes o LEFT JOIN checkpoints c ON c.size = o.tree_size
             WHERE o.batch = ANY($1)",
            &[&keys],
        )
        .await?;
    for row in rows {
        let Ok(batch) = <[u8; 16]>::try_from(row.get::<_, &[u8]>(0)) else {
            continue;
        };
        let Some(waiter) = take_waiter(inner, &batch) else {
            continue;
        };
        let result = receipt(&row, &waiter.ids);
        if let Ok(r) = &result {
            inner.size.fetch_max(r.tree_size, Ordering::AcqRel);
        }
        (waiter.done)(result);
    }
    Ok(())
}

fn receipt(row: &tokio_postgres::Row, ids: &[EventId]) -> Result<AppendReceipt, StoreError> {
    let problem: Option<String> = row.get(4);
    if let Some(problem) = problem {
        let index = usize::try_from(row.get::<_, Option<i32>>(5).unwrap_or(0)).unwrap_or(0);
        let id: Option<&[u8]> = row.get(6);
        return Err(match id.and_then(|b| <[u8; 16]>::try_from(b).ok()) {
            Some(id) => StoreError::Conflict {
                index,
                id: EventId(id),
            },
            None => StoreError::Rejected { index, problem },
        });
    }
    let corrupt = |problem: &str| StoreError::Corrupt {
        location: "postgres outcomes".into(),
        problem: problem.into(),
    };
    let tree_size: Option<i64> = row.get(1);
    let seqs: Option<Vec<i64>> = row.get(2);
    let dups: Option<Vec<bool>> = row.get(3);
    let note: Option<String> = row.get(7);
    let (Some(tree_size), Some(seqs), Some(dups), Some(note)) = (tree_size, seqs, dups, note)
    else {
        return Err(corrupt("a batch's outcome is incomplete"));
    };
    if seqs.len() != ids.len() || dups.len() != ids.len() {
        return Err(corrupt("a batch's outcome does not match the batch"));
    }
    let mut events = Vec::with_capacity(ids.len());
    for ((id, seq), duplicate) in ids.iter().zip(seqs).zip(dups) {
        events.push(Appended {
            id: *id,
            seq: to_u64(seq).map_err(|e| corrupt(&e.to_string()))?,
            duplicate,
        });
    }
    Ok(AppendReceipt {
        events,
        tree_size: to_u64(tree_size).map_err(|e| corrupt(&e.to_string()))?,
        checkpoint: note,
    })
}
