//! A queue message's bytes into validated events, or the reason it is poison.
//!
//! A message holds one JSON event (`application/json`), an NDJSON batch
//! (`application/x-ndjson`) or a Protobuf `mlaudit.v1.EventBatch` (`application/x-protobuf`),
//! named by its `Content-Type` header. Without the header the bytes decide: text that is one
//! line is one JSON event, several lines are NDJSON, anything else is read as Protobuf.
//!
//! A message is all-or-nothing, as an HTTP batch is: one invalid event makes the whole message
//! poison, and the reason names the event by its index in the message.

use mlaudit_core::event::{prepare, PreparedEvent};

/// How a message is encoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Json,
    Ndjson,
    Protobuf,
}

/// The `Content-Type` value each [`Format`] is sent with.
impl Format {
    pub fn content_type(self) -> &'static str {
        match self {
            Format::Json => "application/json",
            Format::Ndjson => "application/x-ndjson",
            Format::Protobuf => "application/x-protobuf",
        }
    }
}

/// The message's format, from its content type (or, without one, its bytes).
pub fn format(content_type: Option<&str>, bytes: &[u8]) -> Result<Format, String> {
    let Some(ct) = content_type else {
        return Ok(sniff(bytes));
    };
    Format::of_content_type(ct).ok_or_else(|| {
        format!(
            "unsupported content type {:?}: use application/json, application/x-ndjson or application/x-protobuf",
            mime(ct)
        )
    })
}

/// A content type's media type: what comes before any `;` parameter, trimmed.
pub fn mime(content_type: &str) -> &str {
    content_type.split(';').next().unwrap_or("").trim()
}

impl Format {
    /// The format a `Content-Type` names (case-insensitive, parameters ignored), also for
    /// HTTP bodies.
    pub fn of_content_type(content_type: &str) -> Option<Format> {
        let mime = mime(content_type);
        let is = |name: &str| mime.eq_ignore_ascii_case(name);
        if is("application/json") {
            Some(Format::Json)
        } else if is("application/x-ndjson") || is("application/ndjson") {
            Some(Format::Ndjson)
        } else if is("application/x-protobuf") || is("application/protobuf") {
            Some(Format::Protobuf)
        } else {
            None
        }
    }
}

fn sniff(bytes: &[u8]) -> Format {
    match std::str::from_utf8(bytes) {
        Ok(text) if text.trim_start().starts_with('{') => {
            if text.trim().lines().filter(|l| !l.trim().is_empty()).count() > 1 {
                Format::Ndjson
            } else {
                Format::Json
            }
        }
        _ => Format::Protobuf,
    }
}

/// Decodes and validates every event of a message, as submitted by `principal`; at most
/// `max_events` (more is poison, refused as soon as the count is passed).
pub fn events(
    bytes: &[u8],
    content_type: Option<&str>,
    principal: &str,
    max_events: usize,
) -> Result<Vec<PreparedEvent>, String> {
    let too_many = || format!("more than {max_events} events in one message (the limit)");
    let decoded: Vec<String>;
    let texts: Vec<&str> = match format(content_type, bytes)? {
        Format::Protobuf => {
            decoded = mlaudit_proto::decode::decode_batch_limited(bytes, max_events)
                .map_err(|e| e.to_string())?;
            decoded.iter().map(String::as_str).collect()
        }
        format => {
            let text = std::str::from_utf8(bytes).map_err(|e| {
                format!(
                    "the message is not valid UTF-8 (at byte {})",
                    e.valid_up_to()
                )
            })?;
            if format == Format::Json {
                vec![text]
            } else {
                let mut lines = Vec::new();
                for line in text.lines().filter(|l| !l.trim().is_empty()) {
                    if lines.len() == max_events {
                        return Err(too_many());
                    }
                    lines.push(line);
                }
                lines
            }
        }
    };
    if texts.iter().all(|t| t.trim().is_empty()) {
        return Err("the message holds no event".into());
    }
    let mut events = Vec::with_capacity(texts.len());
    for (index, text) in texts.iter().enumerate() {
        match prepare(text, principal) {
            Ok(event) => events.push(event),
            Err(e) if texts.len() == 1 => return Err(e.to_string()),
            Err(e) => return Err(format!("event {index}: {e}")),
        }
    }
    Ok(events)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(id: &str) -> String {
        format!(r#"{{"id":"{id}","kind":"x.note","actor":{{"type":"service","id":"svc"}}}}"#)
    }

    #[test]
    fn json_ndjson_and_protobuf() {
        let one = event("00000000-0000-4000-8000-000000000001");
        let got = events(one.as_bytes(), Some("application/json"), "q", 10);
        assert_eq!(got.map(|e| e.len()), Ok(1));
        let two = format!("{one}\n{}\n", event("00000000-0000-4000-8000-000000000002"));
        assert_eq!(
            events(two.as_bytes(), None, "q", 10).map(|e| e.len()),
            Ok(2)
        );
        let value: serde_json::Value = serde_json::from_str(&one).expect("json");
        let proto = mlaudit_proto::encode_batch(&[value]);
        let got = events(&proto, Some("application/x-protobuf"), "q", 10);
        assert_eq!(got.map(|e| e.len()), Ok(1));
        assert_eq!(events(&proto, None, "q", 10).map(|e| e.len()), Ok(1));
    }

    #[test]
    fn poison_messages_say_why() {
        let bad = |bytes: &[u8], ct: Option<&str>| match events(bytes, ct, "q", 2) {
            Err(reason) => reason,
            Ok(e) => panic!("accepted {} events", e.len()),
        };
        assert!(bad(b"not json", Some("application/json")).contains("JSON"));
        assert!(bad(b"{}", Some("text/plain")).contains("unsupported content type"));
        assert!(bad(b"\xff\xfe", Some("application/x-ndjson")).contains("UTF-8"));
        assert!(bad(b"\x0a\xff", None).contains("mlaudit.v1.EventBatch"));
        let e = event("00000000-0000-4000-8000-000000000001");
        let three = format!("{e}\n{e}\n{e}");
        assert!(bad(three.as_bytes(), None).contains("more than 2 events"));
        let second_bad = format!("{e}\n{{\"id\":1}}");
        assert!(bad(second_bad.as_bytes(), None).starts_with("event 1: "));
        assert!(bad(b"  \n ", Some("application/x-ndjson")).contains("no event"));
    }
}
