//! The `governance.audit_accessed` event that records one read of the trail: who read, what
//! they asked for, from where, and how much they were shown. The HTTP server writes one for
//! every read by a reader or an admin, and the command line for every `get`, `query`,
//! `lineage` and `prove`, durably, before the answer is given.
//!
//! **Invariant:** a recorded request is bounded whatever the reader sends: the path and the
//! query string are each cut to [`MAX_RECORDED_PART`] bytes (at a character boundary), and
//! `attributes.truncated` says so, so that reads cannot fill the disk through their own audit
//! records.

use mlaudit_core::event::{is_forbidden_char, prepare_reserved, EventError, PreparedEvent};
use serde_json::json;

/// The most bytes of a request's path, and of its query string, that an audit record keeps.
pub const MAX_RECORDED_PART: usize = 2048;

/// One read of the trail.
#[derive(Debug, Clone, Copy)]
pub struct Access<'a> {
    /// The authenticated principal (`token:<name>`, `local:<os user>`).
    pub principal: &'a str,
    /// Whether the principal is a person at a terminal (`user`) or a token (`service`).
    pub person: bool,
    /// `GET`, `HEAD`, or the command (`mlaudit get`).
    pub method: &'a str,
    /// The path, or the command's arguments.
    pub path: &'a str,
    pub query: Option<&'a str>,
    /// The client's address, if known.
    pub client: Option<&'a str>,
    /// How many events the answer showed.
    pub results: usize,
    /// The HTTP status of the answer.
    pub status: Option<u16>,
}

/// `text` cut to at most `max` bytes at a character boundary, and whether it was cut.
fn bounded(text: &str, max: usize) -> (&str, bool) {
    if text.len() <= max {
        return (text, false);
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    (&text[..end], true)
}

/// The event recording `access`, ready to append.
pub fn audit_event(access: &Access<'_>) -> Result<PreparedEvent, EventError> {
    let (path, path_cut) = bounded(access.path, MAX_RECORDED_PART);
    let (query, query_cut) = bounded(access.query.unwrap_or(""), MAX_RECORDED_PART);
    let request = match access.query {
        Some(_) => format!("{} {path}?{query}", access.method),
        None => format!("{} {path}", access.method),
    };
    let mut attributes = json!({ "request": request, "results": access.results });
    if path_cut || query_cut {
        attributes["truncated"] = json!(true);
    }
    if let Some(client) = access.client {
        attributes["client"] = json!(client);
    }
    if let Some(status) = access.status {
        attributes["status"] = json!(status);
    }
    let principal: String = access
        .principal
        .chars()
        .filter(|c| !is_forbidden_char(*c))
        .collect();
    let event = json!({
        "kind": "governance.audit_accessed",
        "actor": { "id": principal, "type": if access.person { "user" } else { "service" } },
        "attributes": attributes,
    });
    prepare_reserved(&event.to_string(), &principal)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn access<'a>(path: &'a str, query: Option<&'a str>) -> Access<'a> {
        Access {
            principal: "token:reader",
            person: false,
            method: "GET",
            path,
            query,
            client: Some("192.0.2.7:51000"),
            results: 3,
            status: Some(200),
        }
    }

    fn attributes(e: &PreparedEvent) -> serde_json::Value {
        let v: serde_json::Value = serde_json::from_slice(&e.payload).unwrap();
        v["attributes"].clone()
    }

    #[test]
    fn a_read_is_recorded_with_its_request_client_status_and_results() {
        let e = audit_event(&access("/v1/events", Some("kind=x.a&limit=5"))).unwrap();
        assert_eq!(e.kind, "governance.audit_accessed");
        assert_eq!(e.principal, "token:reader");
        assert_eq!(
            attributes(&e),
            json!({"request": "GET /v1/events?kind=x.a&limit=5", "results": 3,
                   "client": "192.0.2.7:51000", "status": 200})
        );
    }

    #[test]
    fn long_paths_and_query_strings_are_cut_and_marked() {
        let long = "é".repeat(MAX_RECORDED_PART);
        let e = audit_event(&access(&format!("/v1/events/{long}"), Some(&long))).unwrap();
        let a = attributes(&e);
        assert_eq!(a["truncated"], json!(true));
        let request = a["request"].as_str().unwrap();
        assert!(
            request.len() <= 2 * MAX_RECORDED_PART + 8,
            "{}",
            request.len()
        );
        let short = audit_event(&access("/v1/events/1", None)).unwrap();
        assert_eq!(attributes(&short).get("truncated"), None);
    }
}
