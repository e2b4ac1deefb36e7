//! Publishing to the queues `mlaudit serve --ingest` consumes: the same URLs as the server's
//! (`nats://HOST:PORT/STREAM?subject=S`, `kafka://HOST:PORT/TOPIC`), one message per event
//! (a Protobuf `EventBatch` of one, `Content-Type: application/x-protobuf`) carrying the
//! event's id (`Nats-Msg-Id`, or the Kafka message key), so that the queue's own duplicate
//! detection and the log's both see a retry as what it is.

#[cfg(feature = "kafka")]
pub(crate) mod kafka;
#[cfg(feature = "nats")]
pub(crate) mod nats;

/// A queue URL's parts: the authority (`[user:password@]host:port[,host:port…]`), the path's
/// name (stream or topic) and the `subject` parameter.
#[derive(Debug)]
#[allow(dead_code, reason = "each queue uses the parts it needs")]
pub(crate) struct QueueUrl {
    pub authority: String,
    pub name: String,
    pub subject: Option<String>,
}

/// Parses `scheme://authority/name[?k=v&…]`; parameters the publisher does not use (those the
/// server's consumer takes) are ignored.
#[allow(dead_code, reason = "each queue uses the parts it needs")]
pub(crate) fn parse(url: &str) -> Result<QueueUrl, String> {
    let rest = url
        .split_once("://")
        .map(|(_, r)| r)
        .ok_or_else(|| format!("{url:?} is not a URL"))?;
    let (authority, path) = rest
        .split_once('/')
        .ok_or_else(|| "the URL's path must name the stream or topic".to_owned())?;
    let (name, query) = path.split_once('?').unwrap_or((path, ""));
    if authority.is_empty() || name.is_empty() {
        return Err("the URL needs a host and a stream or topic".into());
    }
    let subject = query
        .split('&')
        .filter_map(|p| p.split_once('='))
        .find(|(k, _)| *k == "subject")
        .map(|(_, v)| v.to_owned());
    Ok(QueueUrl {
        authority: authority.to_owned(),
        name: name.to_owned(),
        subject,
    })
}

/// The queue client's own runtime: one worker thread, so that the client's connection tasks
/// run between the sender thread's sends, which block on it.
#[cfg(any(feature = "nats", feature = "kafka"))]
pub(crate) fn runtime(queue: &str) -> Result<tokio::runtime::Runtime, String> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name(format!("mlaudit-{}", queue.to_ascii_lowercase()))
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the {queue} client's runtime: {e}"))
}

/// The Content-Type every queued message carries.
#[allow(dead_code, reason = "each queue uses it")]
pub(crate) const CONTENT_TYPE: &str = "application/x-protobuf";
