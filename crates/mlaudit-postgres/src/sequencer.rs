//! The sequencer: elected by a session advisory lock, it alone assigns seqs, extends the tree
//! and signs checkpoints, on the same connection that holds the lock.
//!
//! **Invariants:**
//! * Writes happen only on the lock's own connection: if the lock is lost (the session ended),
//!   so is any transaction in progress, and nothing of it is kept.
//! * On taking over, the tree's right edge is rebuilt from stored nodes and its root checked
//!   against the latest signed checkpoint before anything is appended.
//! * Any failure of a group drops the connection (and with it the lock); the process then
//!   stands for election again and, if elected, reloads its state from the database. The
//!   group's callers get an error and nothing was acknowledged.

use crate::queue::{self, Call, Origin};
use crate::{pool, Inner, PgError, Request};
use futures_util::pin_mut;
use mlaudit_core::entry::{self, EntryRef, EventId, SubjectField};
use mlaudit_core::event::{PreparedEvent, Stage};
use mlaudit_core::merkle::{leaf_hash, CompactRange, Hash, NodeSource};
use mlaudit_core::note::{open_checkpoint, Checkpoint, NoteSigner};
use mlaudit_store::{limit_problem, AppendDone, AppendReceipt, Appended, StoreError};
use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::{Client, Transaction};

/// The subject fields queries filter on: the only ones `subjects` lists (the entry keeps all).
pub(crate) const QUERIED: [SubjectField; 5] = [
    SubjectField::Model,
    SubjectField::Version,
    SubjectField::Run,
    SubjectField::Dataset,
    SubjectField::Deployment,
];

/// How often an idle sequencer looks for queued batches.
const TICK: Duration = Duration::from_millis(5);
/// Events gathered into one group commit at most.
const MAX_GROUP_EVENTS: usize = 50_000;
/// Queued batches taken into one group at most.
const MAX_QUEUED_BATCHES: i64 = 200;

/// The elected sequencer's connection and state.
pub(crate) struct Sequencer {
    client: Client,
    /// `known_ids`' statement, prepared once per connection.
    lookup: tokio_postgres::Statement,
    range: CompactRange,
    note: String,
}

pub(crate) fn now_ns() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// Signs and stores the empty tree's checkpoint if the log has none.
pub(crate) async fn sign_empty_tree(client: &Client, signer: &NoteSigner) -> Result<(), PgError> {
    let note = sign(signer, 0, CompactRange::new().root())?;
    client
        .execute(
            "INSERT INTO checkpoints (size, prev_size, note) VALUES (0, -1, $1) ON CONFLICT DO NOTHING",
            &[&note],
        )
        .await?;
    Ok(())
}

fn sign(signer: &NoteSigner, size: u64, root: Hash) -> Result<String, PgError> {
    let cp = Checkpoint {
        origin: signer.name().to_owned(),
        size,
        root,
    };
    signer
        .sign(&cp.to_text())
        .map_err(|e| PgError::Unavailable(format!("signing the checkpoint: {e}")))
}

/// Tries to take the lock; on success loads and checks the tree's right edge. `candidate` is
/// the connection a failed try keeps for the next one, so that standing for election does not
/// open a connection every time.
pub(crate) async fn try_become(inner: &Inner, candidate: &mut Option<Client>) -> Option<Sequencer> {
    if !inner.options.may_sequence {
        return None;
    }
    let signer = inner.signer.as_ref()?;
    match take_over(inner, signer, candidate).await {
        Ok(found) => found,
        Err(e) => {
            tracing::warn!(error = %e, "could not stand for sequencer");
            None
        }
    }
}

struct Frontier(HashMap<(u32, u64), Hash>);

impl NodeSource for Frontier {
    type Error = PgError;
    fn node(&self, level: u32, index: u64) -> Result<Hash, PgError> {
        self.0.get(&(level, index)).copied().ok_or_else(|| {
            PgError::Corrupt(format!(
                "tree node {level}/{index} of the right edge is missing"
            ))
        })
    }
}

async fn take_over(
    inner: &Inner,
    signer: &NoteSigner,
    candidate: &mut Option<Client>,
) -> Result<Option<Sequencer>, PgError> {
    let client = match candidate.take() {
        Some(c) if !c.is_closed() => c,
        _ => pool::connect(inner.pool.url()).await?,
    };
    let got: bool = client
        .query_one("SELECT pg_try_advisory_lock($1)", &[&inner.lock_key])
        .await?
        .get(0);
    if !got {
        *candidate = Some(client);
        return Ok(None);
    }
    let (size, note) = match crate::read::latest_checkpoint(&client).await? {
        Some(found) => found,
        None => {
            sign_empty_tree(&client, signer).await?;
            (0, sign(signer, 0, CompactRange::new().root())?)
        }
    };
    let mut nodes = HashMap::new();
    let mut start = 0u64;
    for level in (0..64u32).rev() {
        if size & (1u64 << level) != 0 {
            let index = start >> level;
            nodes.insert(
                (level, index),
                crate::read::node_async(&client, level, index).await?,
            );
            start += 1u64 << level;
        }
    }
    let range = CompactRange::from_source(&Frontier(nodes), size)?;
    let cp = open_checkpoint(&signer.verifier(), &note)
        .map_err(|e| PgError::Corrupt(format!("the latest checkpoint does not verify: {e}")))?;
    if cp.size != size || !cp.root.ct_eq(&range.root()) {
        return Err(PgError::Corrupt(format!(
            "the stored tree of {size} events does not match its latest signed checkpoint"
        )));
    }
    client
        .execute(
            "INSERT INTO takeovers (holder, tree_size) VALUES ($1, $2)",
            &[&inner.holder, &to_i64(size)],
        )
        .await?;
    inner.takeovers.fetch_add(1, Ordering::Relaxed);
    inner.size.fetch_max(size, Ordering::AcqRel);
    inner.sequencer.store(true, Ordering::Release);
    tracing::info!(tree_size = size, "this process is now the sequencer");
    let lookup = client
        .prepare("SELECT seq, substring(entry FROM 42 FOR 32), id FROM entries WHERE id = ANY($1)")
        .await?;
    Ok(Some(Sequencer {
        client,
        lookup,
        range,
        note,
    }))
}

pub(crate) fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

pub(crate) fn to_u64(v: i64) -> Result<u64, PgError> {
    u64::try_from(v).map_err(|_| PgError::Corrupt(format!("negative seq or size {v}")))
}

/// The writer task: stands for election while not the sequencer, group-commits local and
/// queued batches while it is, and hands local batches to the queue while it is not.
pub(crate) async fn run(
    inner: Arc<Inner>,
    mut requests: mpsc::UnboundedReceiver<Request>,
    mut seq: Option<Sequencer>,
    mut candidate: Option<Client>,
) {
    let mut next_try = Instant::now() + inner.options.election_interval;
    loop {
        if seq.is_none() && Instant::now() >= next_try {
            seq = try_become(&inner, &mut candidate).await;
            next_try = Instant::now() + inner.options.election_interval;
        }
        let first = tokio::select! {
            r = requests.recv() => match r {
                Some(r) => Some(r),
                None => break,
            },
            _ = tokio::time::sleep(TICK) => None,
        };
        let mut local: Vec<Request> = first.into_iter().collect();
        let mut events: usize = local.iter().map(|r| r.events.len()).sum();
        while events < MAX_GROUP_EVENTS {
            match requests.try_recv() {
                Ok(r) => {
                    events += r.events.len();
                    local.push(r);
                }
                Err(_) => break,
            }
        }
        match seq.as_mut() {
            Some(s) => {
                if let Err(e) = s.group(&inner, local).await {
                    tracing::warn!(error = %e, "the sequencer gave up its role after a failure");
                    inner.sequencer.store(false, Ordering::Release);
                    seq = None;
                    next_try = Instant::now();
                }
            }
            None => {
                for r in local {
                    tokio::spawn(queue::enqueue(inner.clone(), r));
                }
            }
        }
    }
}

fn local_done(dones: &mut [Option<AppendDone>], call: &Call) -> Option<AppendDone> {
    match call.origin {
        Origin::Local(i) => dones.get_mut(i).and_then(Option::take),
        Origin::Queued(_) => None,
    }
}

/// The outcome of one call in a group.
type Outcome = Result<Vec<Appended>, StoreError>;

/// An event the group writes.
struct New<'a> {
    ev: &'a PreparedEvent,
    id: EventId,
}

impl Sequencer {
    /// One group commit of local requests and queued batches. On failure every local caller
    /// has been answered with the error and the connection must be dropped.
    async fn group(&mut self, inner: &Inner, local: Vec<Request>) -> Result<(), PgError> {
        if local.is_empty() {
            let queued: bool = self
                .client
                .query_one("SELECT EXISTS (SELECT 1 FROM pending)", &[])
                .await?
                .get(0);
            if !queued {
                return Ok(());
            }
        }
        let mut dones: Vec<Option<AppendDone>> = Vec::with_capacity(local.len());
        let mut calls: Vec<Call> = local
            .into_iter()
            .enumerate()
            .map(|(i, r)| {
                dones.push(Some(r.done));
                Call {
                    events: r.events,
                    origin: Origin::Local(i),
                    problem: None,
                }
            })
            .collect();
        let result = self.commit(inner, &mut calls).await;
        match result {
            Ok((outcomes, tree_size)) => {
                let note = self.note.clone();
                for (call, outcome) in calls.into_iter().zip(outcomes) {
                    if let Some(done) = local_done(&mut dones, &call) {
                        done(outcome.map(|events| AppendReceipt {
                            events,
                            tree_size,
                            checkpoint: note.clone(),
                        }));
                    }
                }
                Ok(())
            }
            Err(e) => {
                let why = match &e {
                    PgError::Unknown(_) => e.to_string(),
                    other => format!("not stored (the sequencer's transaction failed): {other}"),
                };
                for call in calls {
                    if let Some(done) = local_done(&mut dones, &call) {
                        done(Err(StoreError::Unavailable(why.clone())));
                    }
                }
                Err(e)
            }
        }
    }

    /// Sequences `calls` (after adding the queued batches to them) in one transaction.
    async fn commit(
        &mut self,
        inner: &Inner,
        calls: &mut Vec<Call>,
    ) -> Result<(Vec<Outcome>, u64), PgError> {
        let signer = inner
            .signer
            .as_ref()
            .ok_or_else(|| PgError::Unavailable("no signing key".into()))?;
        let tx = self.client.transaction().await?;
        let queued_from = calls.len();
        calls.extend(queue::take(&tx, MAX_QUEUED_BATCHES).await?);
        for call in calls.iter_mut() {
            for ev in &mut call.events {
                ev.id
                    .get_or_insert_with(|| EventId(*uuid::Uuid::new_v4().as_bytes()));
            }
        }
        let known = known_ids(&tx, &self.lookup, calls).await?;
        let mut range = self.range.clone();
        let (outcomes, new) = decide(calls, &known, range.size());
        let receipt_ns = now_ns();
        let mut note = self.note.clone();
        if !new.is_empty() {
            let prev = range.size();
            write_events(&tx, &new, &mut range, receipt_ns).await?;
            note = sign(signer, range.size(), range.root())?;
            tx.execute(
                "INSERT INTO checkpoints (size, prev_size, note) VALUES ($1, $2, $3)",
                &[&to_i64(range.size()), &to_i64(prev), &note],
            )
            .await?;
        }
        for (call, outcome) in calls[queued_from..].iter().zip(&outcomes[queued_from..]) {
            if let Origin::Queued(batch) = &call.origin {
                queue::record_outcome(&tx, batch, outcome, range.size()).await?;
            }
        }
        if let Err(e) = tx.commit().await {
            // The reply to COMMIT was lost: the group may be durable. Its signed checkpoint
            // says which, read on another connection.
            if new.is_empty() || !committed(inner, range.size(), &note).await {
                return Err(PgError::Unknown(crate::db_message(&e)));
            }
            tracing::warn!("the reply to a commit was lost, but its checkpoint is stored: the group is durable");
        }
        inner.syncs.fetch_add(1, Ordering::Relaxed);
        inner
            .synced_events
            .fetch_add(new.len() as u64, Ordering::Relaxed);
        inner.size.fetch_max(range.size(), Ordering::AcqRel);
        self.range = range;
        self.note = note;
        Ok((outcomes, self.range.size()))
    }
}

/// Whether the checkpoint `note` for `size` is stored (so that its group was committed).
async fn committed(inner: &Inner, size: u64, note: &str) -> bool {
    let Ok(conn) = inner.pool.get().await else {
        return false;
    };
    let row = conn
        .query_opt(
            "SELECT note FROM checkpoints WHERE size = $1",
            &[&to_i64(size)],
        )
        .await;
    matches!(row, Ok(Some(r)) if r.get::<_, &str>(0) == note)
}

/// Seq and payload digest of every id of the group already in the log.
async fn known_ids(
    tx: &Transaction<'_>,
    lookup: &tokio_postgres::Statement,
    calls: &[Call],
) -> Result<HashMap<EventId, (u64, [u8; 32])>, PgError> {
    let ids: Vec<&[u8]> = calls
        .iter()
        .flat_map(|c| {
            c.events
                .iter()
                .filter_map(|e| e.id.as_ref().map(|id| &id.0[..]))
        })
        .collect();
    let rows = tx.query(lookup, &[&ids]).await?;
    let mut known = HashMap::with_capacity(rows.len());
    for row in rows {
        // The payload digest sits at bytes 41..73 of the entry header (docs/FORMAT.md §1).
        let digest = <[u8; 32]>::try_from(row.get::<_, &[u8]>(1))
            .map_err(|_| PgError::Corrupt("an entry is too short for its payload digest".into()))?;
        let id = <[u8; 16]>::try_from(row.get::<_, &[u8]>(2))
            .map_err(|_| PgError::Corrupt("an entry id is not 16 bytes".into()))?;
        known.insert(EventId(id), (to_u64(row.get(0))?, digest));
    }
    Ok(known)
}

/// Each call's outcome and the events to write, in seq order from `next`. A call with an id
/// already taken by another payload (in the log, earlier in the group or in the call) is
/// refused whole; a retry of the same payload is a duplicate.
fn decide<'c>(
    calls: &'c [Call],
    known: &HashMap<EventId, (u64, [u8; 32])>,
    mut next: u64,
) -> (Vec<Outcome>, Vec<New<'c>>) {
    let mut taken: HashMap<EventId, (u64, [u8; 32])> = HashMap::new();
    let mut outcomes = Vec::with_capacity(calls.len());
    let mut new = Vec::new();
    for call in calls {
        if let Some((index, problem)) = &call.problem {
            outcomes.push(Err(StoreError::Rejected {
                index: *index,
                problem: problem.clone(),
            }));
            continue;
        }
        if let Some((index, problem)) = limit_problem(&call.events) {
            outcomes.push(Err(StoreError::Rejected { index, problem }));
            continue;
        }
        let mut mine: HashMap<EventId, (u64, [u8; 32])> = HashMap::new();
        let mut results = Vec::with_capacity(call.events.len());
        let mut conflict = None;
        for (i, ev) in call.events.iter().enumerate() {
            let id = ev.id.unwrap_or(EventId([0; 16]));
            let prior = known
                .get(&id)
                .or_else(|| taken.get(&id))
                .or_else(|| mine.get(&id));
            match prior {
                Some((seq, digest)) if *digest == ev.payload_sha256 => results.push(Appended {
                    id,
                    seq: *seq,
                    duplicate: true,
                }),
                Some(_) => {
                    conflict = Some(StoreError::Conflict { index: i, id });
                    break;
                }
                None => {
                    let seq = next + mine.len() as u64;
                    mine.insert(id, (seq, ev.payload_sha256));
                    results.push(Appended {
                        id,
                        seq,
                        duplicate: false,
                    });
                }
            }
        }
        if let Some(c) = conflict {
            outcomes.push(Err(c));
            continue;
        }
        next += mine.len() as u64;
        new.extend(
            call.events
                .iter()
                .zip(&results)
                .filter(|(_, r)| !r.duplicate)
                .map(|(ev, r)| New { ev, id: r.id }),
        );
        taken.extend(mine);
        outcomes.push(Ok(results));
    }
    (outcomes, new)
}

/// The stage code stored in `entries.stage`.
pub(crate) fn stage_code(stage: Stage) -> i16 {
    Stage::ALL.iter().position(|s| *s == stage).unwrap_or(0) as i16
}

/// Encodes the new events and writes entries, payloads, subjects and tree nodes with binary
/// COPY, extending `range`.
async fn write_events(
    tx: &Transaction<'_>,
    new: &[New<'_>],
    range: &mut CompactRange,
    receipt_ns: i64,
) -> Result<(), PgError> {
    let entries = copy_in(
        tx,
        "COPY entries (seq, id, leaf, event_time, stage, kind, actor, entry) FROM STDIN BINARY",
        &[
            Type::INT8,
            Type::BYTEA,
            Type::BYTEA,
            Type::INT8,
            Type::INT2,
            Type::TEXT,
            Type::TEXT,
            Type::BYTEA,
        ],
    )
    .await?;
    pin_mut!(entries);
    let mut nodes: Vec<(i16, i64, Hash)> = Vec::with_capacity(new.len());
    let mut buf = Vec::with_capacity(512);
    for n in new {
        let seq = range.size();
        let time = n.ev.event_time_ns.unwrap_or(receipt_ns);
        buf.clear();
        entry::encode_into(
            &EntryRef {
                seq,
                event_time_ns: time,
                receipt_time_ns: receipt_ns,
                id: n.id,
                payload_sha256: &n.ev.payload_sha256,
                payload_len: n.ev.payload.len() as u32,
                actor_type: n.ev.actor_type,
                kind: &n.ev.kind,
                actor_id: &n.ev.actor_id,
                principal: &n.ev.principal,
                subjects: &n.ev.subjects,
            },
            &mut buf,
        )
        .map_err(|e| PgError::Unavailable(format!("encoding an entry: {e}")))?;
        let leaf = leaf_hash(&buf);
        range.push(leaf, |level, index, hash| {
            if level > 0 {
                nodes.push((level as i16, to_i64(index), *hash));
            }
        });
        let row: [&(dyn ToSql + Sync); 8] = [
            &to_i64(seq),
            &&n.id.0[..],
            &&leaf.0[..],
            &time,
            &stage_code(n.ev.stage()),
            &n.ev.kind,
            &n.ev.actor_id,
            &&buf[..],
        ];
        entries.as_mut().write(&row).await?;
    }
    entries.finish().await?;
    let payloads = copy_in(
        tx,
        "COPY payloads (seq, payload) FROM STDIN BINARY",
        &[Type::INT8, Type::BYTEA],
    )
    .await?;
    pin_mut!(payloads);
    let first = range.size() - new.len() as u64;
    for (i, n) in new.iter().enumerate() {
        let row: [&(dyn ToSql + Sync); 2] = [&to_i64(first + i as u64), &&n.ev.payload[..]];
        payloads.as_mut().write(&row).await?;
    }
    payloads.finish().await?;
    let subjects = copy_in(
        tx,
        "COPY subjects (field, value, seq) FROM STDIN BINARY",
        &[Type::INT2, Type::TEXT, Type::INT8],
    )
    .await?;
    pin_mut!(subjects);
    for (i, n) in new.iter().enumerate() {
        for (field, value) in n.ev.subjects.iter().filter(|(f, _)| QUERIED.contains(f)) {
            let row: [&(dyn ToSql + Sync); 3] =
                [&i16::from(field.code()), value, &to_i64(first + i as u64)];
            subjects.as_mut().write(&row).await?;
        }
    }
    subjects.finish().await?;
    let node_rows = copy_in(
        tx,
        "COPY nodes (level, idx, hash) FROM STDIN BINARY",
        &[Type::INT2, Type::INT8, Type::BYTEA],
    )
    .await?;
    pin_mut!(node_rows);
    for (level, index, hash) in &nodes {
        let row: [&(dyn ToSql + Sync); 3] = [level, index, &&hash.0[..]];
        node_rows.as_mut().write(&row).await?;
    }
    node_rows.finish().await?;
    Ok(())
}

async fn copy_in(
    tx: &Transaction<'_>,
    sql: &str,
    types: &[Type],
) -> Result<BinaryCopyInWriter, PgError> {
    let sink = tx.copy_in(sql).await?;
    Ok(BinaryCopyInWriter::new(sink, types))
}
