//! Storing a batch of queue messages: one append for all their events, and the fate of each
//! message. A message whose event the store refuses (a limit, an id reused with another
//! payload) is poison; the others are appended again without it. Any other failure is the
//! store's, not the message's: the caller leaves every message unacknowledged, to be
//! redelivered.

use mlaudit_core::event::PreparedEvent;
use mlaudit_store::{AppendReceipt, Store, StoreError};
use std::sync::Arc;

/// What became of one message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Fate {
    /// Durable in the log: `new` events appended, `duplicates` already there.
    Stored { new: u64, duplicates: u64 },
    /// Not storable, with the reason; the message goes to the dead letters.
    Poison(String),
}

/// Appends `events` and waits, without holding a thread, until they are durable (and, in the
/// PostgreSQL mode, sequenced).
pub async fn append(
    store: &Arc<dyn Store>,
    events: Vec<PreparedEvent>,
) -> Result<AppendReceipt, StoreError> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    let done: mlaudit_store::AppendDone = Box::new(move |outcome| {
        let _ = tx.send(outcome);
    });
    if let Err((events, done)) = store.try_submit(events, done) {
        let store = store.clone();
        tokio::task::spawn_blocking(move || store.submit(events, done));
    }
    rx.await
        .map_err(|_| StoreError::Unavailable("the store dropped the append".into()))?
}

/// One message's events, or why it is poison.
pub type Decoded = Result<Vec<PreparedEvent>, String>;

/// Decodes every message of a batch on a blocking thread (validation is CPU work: done there,
/// the next batch is decoded while the previous one is stored).
pub async fn decode_all(
    count: usize,
    decode: impl Fn(usize) -> Decoded + Send + 'static,
) -> Vec<Decoded> {
    let all = move || (0..count).map(&decode).collect::<Vec<_>>();
    match tokio::task::spawn_blocking(all).await {
        Ok(decoded) => decoded,
        Err(e) => (0..count)
            .map(|_| Err(format!("the decoding task failed: {e}")))
            .collect(),
    }
}

/// Stores the events of the messages of `decoded` (one entry per message); `decode(i)` gives
/// message `i`'s events again for the messages still to store after one turned out poison.
pub async fn store_messages(
    store: &Arc<dyn Store>,
    decoded: Vec<Decoded>,
    decode: impl Fn(usize) -> Decoded,
) -> Result<Vec<Fate>, StoreError> {
    let mut fates: Vec<Option<Fate>> = vec![None; decoded.len()];
    let mut first = Some(decoded);
    loop {
        // The events of every message not yet known poison, and each one's message.
        let mut events = Vec::new();
        let mut owner = Vec::new();
        let mut ready = first.take().map(Vec::into_iter);
        for (i, fate) in fates.iter_mut().enumerate() {
            let this = match ready.as_mut().and_then(Iterator::next) {
                Some(decoded) => decoded,
                None if fate.is_some() => continue,
                None => decode(i),
            };
            if fate.is_some() {
                continue;
            }
            match this {
                Ok(mut e) => {
                    owner.extend(std::iter::repeat_n(i, e.len()));
                    events.append(&mut e);
                }
                Err(reason) => *fate = Some(Fate::Poison(reason)),
            }
        }
        if events.is_empty() {
            return Ok(fates.into_iter().flatten().collect());
        }
        let refused = match append(store, events).await {
            Ok(receipt) => {
                for (appended, &i) in receipt.events.iter().zip(&owner) {
                    let fate = fates[i].get_or_insert(Fate::Stored {
                        new: 0,
                        duplicates: 0,
                    });
                    if let Fate::Stored { new, duplicates } = fate {
                        if appended.duplicate {
                            *duplicates += 1;
                        } else {
                            *new += 1;
                        }
                    }
                }
                return Ok(fates.into_iter().flatten().collect());
            }
            Err(StoreError::Rejected { index, problem }) => {
                (index, format!("cannot be stored: {problem}"))
            }
            Err(StoreError::Conflict { index, id }) => (
                index,
                format!(
                    "reuses id {id}, already in the log with a different payload (kind or content)"
                ),
            ),
            Err(other) => return Err(other),
        };
        let (index, problem) = refused;
        let Some(&i) = owner.get(index) else {
            return Err(StoreError::Unavailable(format!(
                "the store refused event {index} of a batch of {}",
                owner.len()
            )));
        };
        let local = index - owner.iter().position(|&o| o == i).unwrap_or(index);
        fates[i] = Some(Fate::Poison(format!("event {local} {problem}")));
    }
}
