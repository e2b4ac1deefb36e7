//! One `POST /v1/events` of a protobuf batch, and what its answer means for the batch.

use std::time::Duration;

/// What the server made of a batch.
#[derive(Debug)]
pub(crate) enum Outcome {
    /// Stored durably (200); `duplicates` of them were already in the log (retries).
    Delivered { duplicates: u64 },
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

/// The HTTP side of a logger.
#[derive(Debug)]
pub(crate) struct Transport {
    agent: ureq::Agent,
    url: String,
    authorization: String,
}

/// Most of an answer's body read.
const MAX_ANSWER_BYTES: u64 = 16 << 20;

impl Transport {
    pub(crate) fn new(base_url: &str, token: &str, timeout: Duration) -> Transport {
        // No redirects: a batch counts as delivered only on the server's own 200.
        let agent = ureq::AgentBuilder::new()
            .timeout_connect(timeout.min(Duration::from_secs(5)))
            .timeout(timeout)
            .redirects(0)
            .build();
        Transport {
            agent,
            url: format!("{}/v1/events", base_url.trim_end_matches('/')),
            authorization: format!("Bearer {token}"),
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
                    Some((n, duplicates)) if n == events => Outcome::Delivered { duplicates },
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

/// How many events a 200 answer acknowledges, and how many of them were duplicates.
fn receipts(body: &str) -> Option<(usize, u64)> {
    let parsed: serde_json::Value = serde_json::from_str(body).ok()?;
    let events = parsed["events"].as_array()?;
    Some((
        events.len(),
        events.iter().filter(|e| e["duplicate"] == true).count() as u64,
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
