//! Imports through a running `mlaudit serve`: batches of events as NDJSON to
//! `POST /v1/events` with a writer token. A batch is all-or-nothing on the server; when one
//! holds an id already stored with other content (409), its events are sent one by one and
//! each such id counts as already present.

use anyhow::{anyhow, Context, Result};
use std::time::Duration;

const TIMEOUT: Duration = Duration::from_secs(60);

pub struct Server {
    agent: ureq::Agent,
    url: String,
    token: String,
}

enum Outcome {
    /// Whether each event was already there.
    Stored(Vec<bool>),
    Conflict,
}

impl Server {
    pub fn new(url: &str, token: &str) -> Server {
        Server {
            agent: ureq::AgentBuilder::new().timeout(TIMEOUT).build(),
            url: format!("{url}/v1/events"),
            token: token.to_owned(),
        }
    }

    /// Appends `events` (JSON texts); for each, whether it was already present.
    pub fn append(&self, events: &[String]) -> Result<Vec<bool>> {
        match self.post(events)? {
            Outcome::Stored(d) => Ok(d),
            Outcome::Conflict => events
                .iter()
                .map(|e| match self.post(std::slice::from_ref(e))? {
                    Outcome::Stored(d) => Ok(d.first().copied().unwrap_or(true)),
                    Outcome::Conflict => Ok(true),
                })
                .collect(),
        }
    }

    /// One batch, retried (three attempts) on a connection failure, 429 or 5xx.
    fn post(&self, events: &[String]) -> Result<Outcome> {
        let body: String = events.iter().map(|e| format!("{e}\n")).collect();
        let mut last = None;
        for attempt in 0..3u32 {
            if attempt > 0 {
                std::thread::sleep(Duration::from_millis(500 << attempt));
            }
            let sent = self
                .agent
                .post(&self.url)
                .set("Authorization", &format!("Bearer {}", self.token))
                .set("Content-Type", "application/x-ndjson")
                .send_string(&body);
            match sent {
                Ok(resp) => {
                    let v: serde_json::Value = resp
                        .into_json()
                        .context("the server's answer is not JSON")?;
                    let dups = v["events"]
                        .as_array()
                        .ok_or_else(|| anyhow!("the server's answer lists no events"))?
                        .iter()
                        .map(|e| e["duplicate"].as_bool().unwrap_or(false))
                        .collect();
                    return Ok(Outcome::Stored(dups));
                }
                Err(ureq::Error::Status(409, _)) => return Ok(Outcome::Conflict),
                Err(ureq::Error::Status(code, resp)) if code == 429 || code >= 500 => {
                    last = Some(anyhow!(
                        "HTTP {code}: {}",
                        resp.into_string().unwrap_or_default()
                    ));
                }
                Err(ureq::Error::Status(code, resp)) => {
                    let text = resp.into_string().unwrap_or_default();
                    return Err(crate::ledger::InputError(format!(
                        "{} refused the import (HTTP {code}): {}",
                        self.url,
                        text.chars().take(500).collect::<String>()
                    ))
                    .into());
                }
                Err(e) => last = Some(anyhow!("{e}")),
            }
        }
        Err(last.unwrap_or_else(|| anyhow!("failed")))
            .with_context(|| format!("cannot send the import to {}", self.url))
    }
}
