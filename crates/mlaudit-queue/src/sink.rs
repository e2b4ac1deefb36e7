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
/// message `i`'s events again when they must be appended a second time.
///
/// The store refuses a batch as a whole and names the first event at fault, so when message
/// `m` turns out poison the messages before it are appended alone (they passed), then the
/// ones after it: each message is appended at most twice, however many are poison.
pub async fn store_messages(
    store: &Arc<dyn Store>,
    decoded: Vec<Decoded>,
    decode: impl Fn(usize) -> Decoded,
) -> Result<Vec<Fate>, StoreError> {
    let count = decoded.len();
    let mut fates: Vec<Option<Fate>> = vec![None; count];
    let mut first: Vec<Option<Decoded>> = decoded.into_iter().map(Some).collect();
    // Messages `start..end` are appended together next.
    let (mut start, mut end) = (0, count);
    while start < count {
        let mut events = Vec::new();
        let mut owner = Vec::new();
        for i in start..end {
            if fates[i].is_some() {
                continue;
            }
            match first[i].take().unwrap_or_else(|| decode(i)) {
                Ok(mut e) => {
                    owner.extend(std::iter::repeat_n(i, e.len()));
                    events.append(&mut e);
                }
                Err(reason) => fates[i] = Some(Fate::Poison(reason)),
            }
        }
        if events.is_empty() {
            (start, end) = (end, count);
            continue;
        }
        let (index, problem) = match append(store, events).await {
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
                (start, end) = (end, count);
                continue;
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
        let Some(&m) = owner.get(index) else {
            return Err(StoreError::Unavailable(format!(
                "the store refused event {index} of a batch of {}",
                owner.len()
            )));
        };
        let local = index - owner.iter().position(|&o| o == m).unwrap_or(index);
        fates[m] = Some(Fate::Poison(format!("event {local} {problem}")));
        if m > start {
            // The messages before `m` passed: append them alone, then go on after `m`.
            end = m;
        } else {
            (start, end) = (m + 1, count);
        }
    }
    Ok(fates
        .into_iter()
        .map(|f| f.unwrap_or(Fate::Poison("not stored (internal error)".into())))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use mlaudit_core::note::NoteSigner;
    use mlaudit_embedded::EmbeddedStore;

    fn event(id: usize, n: &str) -> String {
        format!(
            r#"{{"id":"00000000-0000-4000-8000-{id:012x}","kind":"x.q","actor":{{"id":"s","type":"service"}},"attributes":{{"n":"{n}"}}}}"#
        )
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn poison_messages_are_isolated_and_the_rest_stored_once() {
        let dir = std::env::temp_dir().join(format!("mlaudit-sink-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let signer = NoteSigner::from_seed("test.mlaudit/sink", [3; 32]).expect("signer");
        let (store, _) = EmbeddedStore::open(&dir, Some(signer)).expect("open");
        let store: Arc<dyn Store> = Arc::new(store);
        // Message 1 reuses message 0's id with another payload; message 3 too; 4 is not JSON.
        let texts = [
            event(1, "a"),
            event(1, "b"),
            event(2, "c"),
            format!("{}\n{}", event(3, "d"), event(1, "e")),
            "{".to_owned(),
            event(4, "f"),
        ];
        let decode = |i: usize| crate::decode::events(texts[i].as_bytes(), None, "t", 10);
        let decoded = (0..texts.len()).map(decode).collect();
        let fates = store_messages(&store, decoded, decode)
            .await
            .expect("store");
        let poison: Vec<usize> = (0..fates.len())
            .filter(|&i| matches!(fates[i], Fate::Poison(_)))
            .collect();
        assert_eq!(poison, [1, 3, 4], "{fates:?}");
        assert!(
            matches!(&fates[3], Fate::Poison(r) if r.starts_with("event 1 reuses id")),
            "{fates:?}"
        );
        assert_eq!(store.tree_size(), 3);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
