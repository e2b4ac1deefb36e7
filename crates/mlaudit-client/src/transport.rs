//! Delivering a batch: one `POST /v1/events` of a protobuf batch (HTTP), or one message per
//! event to NATS JetStream (feature `nats`) or Kafka (feature `kafka`); and what the answer
//! means for the batch.

use std::time::Duration;

/// What the server made of a batch.
#[derive(Debug)]
pub(crate) enum Outcome {
    /// Stored durably (200); `duplicates` of them were already in the log (retries), and the
    /// receipt's signed checkpoint.
    Delivered {
        duplicates: u64,
        checkpoint: Option<String>,
    },
    /// Refused as a whole because some events are invalid (422): each is `(index, reason)`.
    /// The others are valid and may be sent again without them.
    Invalid(Vec<(usize, String)>),
    /// The body or batch is over the server's limit (413): send it in smaller parts.
    TooLarge,
    /// Not an answer about the events (connection refused, timeout, 5xx, 429, or a
    /// configuration problem such as a bad token): try again later. `config` marks the
    /// problems that will not go away by themselves (401, 403, 404, 415, 400), which are
    /// logged as errors.
    Retry { reason: String, config: bool },
}

/// Where a logger delivers: the server over HTTP, or a queue the server consumes.
#[derive(Debug)]
pub(crate) enum Transport {
    Http(Http),
    #[cfg(feature = "nats")]
    Nats(Box<crate::queue::nats::Publisher>),
    #[cfg(feature = "kafka")]
    Kafka(Box<crate::queue::kafka::Publisher>),
}

impl Transport {
    /// The transport for `url`: `http(s)://…`, `nats://…` or `kafka://…`.
    pub(crate) fn for_url(url: &str, token: &str, timeout: Duration) -> Result<Transport, String> {
        let scheme = url.split_once("://").map(|(s, _)| s).unwrap_or("");
        match scheme {
            "http" | "https" => Ok(Transport::Http(Http::new(url, token, timeout))),
            #[cfg(feature = "nats")]
            "nats" => crate::queue::nats::Publisher::new(url, timeout)
                .map(|p| Transport::Nats(Box::new(p))),
            #[cfg(not(feature = "nats"))]
            "nats" => Err("nats:// needs mlaudit-client's `nats` feature".into()),
            #[cfg(feature = "kafka")]
            "kafka" => crate::queue::kafka::Publisher::new(url, timeout)
                .map(|p| Transport::Kafka(Box::new(p))),
            #[cfg(not(feature = "kafka"))]
            "kafka" => Err("kafka:// needs mlaudit-client's `kafka` feature".into()),
            _ => Err(format!(
                "{url:?}: the server's URL must start with http://, https://, nats:// or kafka://"
            )),
        }
    }

    /// Delivers the encoded events `records`, waiting at most `timeout`.
    pub(crate) fn send(&self, records: &[Vec<u8>], timeout: Duration) -> Outcome {
        match self {
            Transport::Http(http) => {
                let body = crate::encode::batch_body(records.iter().map(Vec::as_slice));
                http.send(&body, records.len(), timeout)
            }
            #[cfg(feature = "nats")]
            Transport::Nats(nats) => nats.send(records, timeout),
            #[cfg(feature = "kafka")]
            Transport::Kafka(kafka) => kafka.send(records, timeout),
        }
    }

    /// A consistency proof between two of the server's checkpoints (HTTP only: a queue gives
    /// no receipts, so a logger on one never holds a checkpoint to check).
    pub(crate) fn consistency(&self, from: u64, to: u64) -> ProofAnswer {
        match self {
            Transport::Http(http) => http.consistency(from, to),
            #[allow(unreachable_patterns, reason = "with queue features")]
            _ => ProofAnswer::Unreachable("a queue transport has no proofs".into()),
        }
    }
}

/// The HTTP side of a logger.
#[derive(Debug)]
pub(crate) struct Http {
    agent: ureq::Agent,
    url: String,
    /// The server's base URL.
    base: String,
    authorization: String,
}

/// The answer to a consistency proof request.
#[derive(Debug)]
pub(crate) enum ProofAnswer {
    /// The proof's hashes (base64).
    Proof(Vec<String>),
    /// The server has no such proof (400, 404: it does not hold a checkpoint it handed out).
    Refused(String),
    /// No answer about the proof (network, 5xx, 429, 401/403): ask again later.
    Unreachable(String),
}

/// Most of an answer's body read.
const MAX_ANSWER_BYTES: u64 = 16 << 20;

impl Http {
    pub(crate) fn new(base_url: &str, token: &str, timeout: Duration) -> Http {
        // No redirects: a batch counts as delivered only on the server's own 200.
        let agent = ureq::AgentBuilder::new()
            .timeout_connect(timeout.min(Duration::from_secs(5)))
            .timeout(timeout)
            .redirects(0)
            .build();
        let base = base_url.trim_end_matches('/').to_owned();
        Http {
            agent,
            url: format!("{base}/v1/events"),
            base,
            authorization: format!("Bearer {token}"),
        }
    }

    /// `GET /v1/proof/consistency?from=&to=`: the proof between two of the server's checkpoints.
    pub(crate) fn consistency(&self, from: u64, to: u64) -> ProofAnswer {
        let url = format!("{}/v1/proof/consistency?from={from}&to={to}", self.base);
        match self.agent.get(&url).set("Authorization", &self.authorization).call() {
            Ok(response) => {
                let text = read_body(response).unwrap_or_default();
                let parsed: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
                match parsed["proof"].as_array() {
                    Some(hashes) if parsed["from"] == from && parsed["to"] == to => {
                        ProofAnswer::Proof(
                            hashes
                                .iter()
                                .map(|h| h.as_str().unwrap_or_default().to_owned())
                                .collect(),
                        )
                    }
                    _ => ProofAnswer::Refused(format!(
                        "the answer to a consistency proof request from {from} to {to} is not one"
                    )),
                }
            }
            Err(ureq::Error::Status(status @ (400 | 404), _)) => ProofAnswer::Refused(format!(
                "HTTP {status}: the server has no consistency proof from {from} to {to} (it does not hold a checkpoint it handed out)"
            )),
            Err(ureq::Error::Status(status, _)) => {
                ProofAnswer::Unreachable(format!("HTTP {status}"))
            }
            Err(ureq::Error::Transport(t)) => ProofAnswer::Unreachable(t.to_string()),
        }
    }

    /// Sends a batch of `events` events, waiting at most `timeout` for the answer.
    pub(crate) fn send(&self, body: &[u8], events: usize, timeout: Duration) -> Outcome {
        let request = self
            .agent
            .post(&self.url)
            .timeout(timeout)
            .set("Content-Type", "application/x-protobuf")
            .set("Authorization", &self.authorization);
        match request.send_bytes(body) {
            Ok(response) if response.status() == 200 => {
                let text = read_body(response).unwrap_or_default();
                match receipts(&text) {
                    Some((n, duplicates, checkpoint)) if n == events => Outcome::Delivered {
                        duplicates,
                        checkpoint,
                    },
                    _ => Outcome::Retry {
                        reason: format!(
                            "a 200 answer that does not acknowledge the {events} events sent"
                        ),
                        config: true,
                    },
                }
            }
            Ok(response) => Outcome::Retry {
                reason: format!(
                    "HTTP {} where 200 was expected (a proxy or a redirect?)",
                    response.status()
                ),
                config: true,
            },
            Err(ureq::Error::Status(status, response)) => {
                let text = read_body(response).unwrap_or_default();
                classify(status, &text)
            }
            Err(ureq::Error::Transport(t)) => Outcome::Retry {
                reason: t.to_string(),
                config: false,
            },
        }
    }
}

fn read_body(response: ureq::Response) -> Option<String> {
    use std::io::Read;
    let mut text = String::new();
    response
        .into_reader()
        .take(MAX_ANSWER_BYTES)
        .read_to_string(&mut text)
        .ok()?;
    Some(text)
}

/// How many events a 200 answer acknowledges, how many of them were duplicates, and its
/// checkpoint.
fn receipts(body: &str) -> Option<(usize, u64, Option<String>)> {
    let parsed: serde_json::Value = serde_json::from_str(body).ok()?;
    let events = parsed["events"].as_array()?;
    Some((
        events.len(),
        events.iter().filter(|e| e["duplicate"] == true).count() as u64,
        parsed["checkpoint"].as_str().map(str::to_owned),
    ))
}

fn classify(status: u16, body: &str) -> Outcome {
    let parsed: serde_json::Value = serde_json::from_str(body).unwrap_or_default();
    let message = parsed["error"]["message"]
        .as_str()
        .unwrap_or(body)
        .to_owned();
    match status {
        422 => {
            let details = parsed["error"]["details"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            let invalid = details
                .iter()
                .filter_map(|d| {
                    Some((
                        usize::try_from(d["index"].as_u64()?).ok()?,
                        d["error"].as_str().unwrap_or("invalid").to_owned(),
                    ))
                })
                .collect::<Vec<_>>();
            if invalid.is_empty() {
                Outcome::Retry {
                    reason: format!("422 without event details: {message}"),
                    config: true,
                }
            } else {
                Outcome::Invalid(invalid)
            }
        }
        413 => Outcome::TooLarge,
        400 | 401 | 403 | 404 | 405 | 415 => Outcome::Retry {
            reason: format!("HTTP {status}: {message}"),
            config: true,
        },
        _ => Outcome::Retry {
            reason: format!("HTTP {status}: {message}"),
            config: false,
        },
    }
}
