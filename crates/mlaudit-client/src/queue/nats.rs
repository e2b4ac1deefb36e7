//! The NATS JetStream transport (feature `nats`): each event is published to the stream's
//! subject with `Nats-Msg-Id` set to its id, and counts as delivered once JetStream
//! acknowledged it. What that acknowledgement promises is the server's storage setting
//! (docs/QUEUES.md): with the default `sync_interval` it is not yet on disk.

use super::{parse, CONTENT_TYPE};
use crate::encode::{batch_body, encoded_id};
use crate::transport::Outcome;
use async_nats::jetstream::context::{Publish, PublishError, PublishErrorKind};
use async_nats::jetstream::{self};
use std::sync::Mutex;
use std::time::Duration;

/// A JetStream publisher; it connects at its first send and reconnects by itself.
pub(crate) struct Publisher {
    runtime: tokio::runtime::Runtime,
    server: String,
    subject: String,
    context: Mutex<Option<jetstream::Context>>,
}

impl std::fmt::Debug for Publisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Publisher")
            .field("subject", &self.subject)
            .finish_non_exhaustive()
    }
}

impl Publisher {
    pub(crate) fn new(url: &str, _timeout: Duration) -> Result<Publisher, String> {
        let parts = parse(url)?;
        let runtime = super::runtime("NATS")?;
        Ok(Publisher {
            runtime,
            server: format!("nats://{}", parts.authority),
            subject: parts.subject.unwrap_or_else(|| "mlaudit.events".into()),
            context: Mutex::new(None),
        })
    }

    fn context(&self, timeout: Duration) -> Result<jetstream::Context, String> {
        let mut slot = self.context.lock().map_err(|_| "poisoned".to_owned())?;
        if let Some(context) = slot.as_ref() {
            return Ok(context.clone());
        }
        let connect = async_nats::ConnectOptions::new()
            .name("mlaudit-client")
            .connection_timeout(timeout.min(Duration::from_secs(5)))
            .connect(self.server.as_str());
        let client = self
            .runtime
            .block_on(connect)
            .map_err(|e| format!("cannot connect to NATS: {e}"))?;
        let context = jetstream::new(client);
        *slot = Some(context.clone());
        Ok(context)
    }

    pub(crate) fn send(&self, records: &[Vec<u8>], timeout: Duration) -> Outcome {
        let retry = |reason: String, config: bool| Outcome::Retry { reason, config };
        // Connecting (at the first send; async-nats reconnects by itself after that) counts
        // against the same timeout as the acknowledgements.
        let deadline = tokio::time::Instant::now() + timeout;
        let context = match self.context(timeout) {
            Ok(c) => c,
            Err(reason) => return retry(reason, false),
        };
        let subject = self.subject.clone();
        let publish_all = async {
            let mut acks = Vec::with_capacity(records.len());
            for record in records {
                let mut headers = async_nats::HeaderMap::new();
                headers.insert("Content-Type", CONTENT_TYPE);
                let message = Publish::build()
                    .payload(batch_body(std::iter::once(record.as_slice())).into())
                    .message_id(encoded_id(record))
                    .headers(headers);
                acks.push(context.send_publish(subject.clone(), message).await?);
            }
            let mut duplicates = 0;
            for ack in acks {
                duplicates += u64::from(ack.await?.duplicate);
            }
            Ok::<u64, PublishError>(duplicates)
        };
        match self
            .runtime
            .block_on(async { tokio::time::timeout_at(deadline, publish_all).await })
        {
            Ok(Ok(duplicates)) => Outcome::Delivered {
                duplicates,
                checkpoint: None,
            },
            Ok(Err(e)) if e.kind() == PublishErrorKind::StreamNotFound => retry(
                format!("no JetStream stream takes subject {}: start the server's consumer (mlaudit serve --ingest) once to create it", self.subject),
                true,
            ),
            // Over the server's max_payload: the sender splits the batch and rejects the event
            // alone at fault, as for an HTTP 413.
            Ok(Err(e)) if e.to_string().contains("max payload") => Outcome::TooLarge,
            Ok(Err(e)) => retry(format!("NATS: {e}"), false),
            Err(_) => retry(
                format!("JetStream did not acknowledge within {} s", timeout.as_secs_f64()),
                false,
            ),
        }
    }
}
