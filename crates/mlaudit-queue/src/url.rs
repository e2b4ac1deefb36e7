//! The `--ingest` URLs:
//!
//! * `nats://HOST:PORT/<stream>[?consumer=NAME&subject=SUBJECT&dead_letter=SUBJECT]`
//! * `kafka://HOST:PORT[,HOST:PORT…]/<topic>[?group=NAME&dead_letter=TOPIC]`
//!
//! Parsed by hand (the grammar is small); unknown parameters, empty values and names the queue
//! would refuse are errors here, at start, rather than at the first message.

use std::fmt;

/// Why an ingest URL was refused.
#[derive(Debug, thiserror::Error)]
#[error("ingest URL {url:?}: {problem}")]
pub struct UrlError {
    url: String,
    problem: String,
}

/// A JetStream stream to consume.
#[derive(Clone, PartialEq, Eq)]
pub struct NatsSource {
    /// `nats://[user:password@]host:port`, as given (credentials included).
    pub server: String,
    pub stream: String,
    /// The durable consumer's name (default `mlaudit`).
    pub consumer: String,
    /// The subject the stream is created with and the consumer filters on (default
    /// `mlaudit.events`).
    pub subject: String,
    /// Where poison messages go (default `<subject>.dead`).
    pub dead_letter: String,
}

/// A Kafka topic to consume.
#[derive(Clone, PartialEq, Eq)]
pub struct KafkaSource {
    /// `host:port[,host:port…]`.
    pub brokers: String,
    pub topic: String,
    /// The consumer group (default `mlaudit`).
    pub group: String,
    /// Where poison messages go (default `<topic>.dead`).
    pub dead_letter: String,
}

/// One `--ingest` source.
#[derive(Clone, PartialEq, Eq)]
pub enum IngestUrl {
    Nats(NatsSource),
    Kafka(KafkaSource),
}

impl IngestUrl {
    /// Parses `nats://…` or `kafka://…`.
    pub fn parse(url: &str) -> Result<IngestUrl, UrlError> {
        let fail = |problem: String| UrlError {
            url: redact(url),
            problem,
        };
        let (scheme, rest) = url.split_once("://").ok_or_else(|| {
            fail("expected nats://HOST:PORT/STREAM or kafka://HOST:PORT/TOPIC".into())
        })?;
        let (authority, path_query) = rest
            .split_once('/')
            .ok_or_else(|| fail("the path must name the stream or topic".into()))?;
        let (path, query) = path_query.split_once('?').unwrap_or((path_query, ""));
        if authority.is_empty() {
            return Err(fail("no host".into()));
        }
        let params = params(query).map_err(fail)?;
        match scheme {
            "nats" => {
                let stream = name("stream", path, stream_char).map_err(fail)?;
                let mut source = NatsSource {
                    server: format!("nats://{authority}"),
                    stream,
                    consumer: "mlaudit".into(),
                    subject: "mlaudit.events".into(),
                    dead_letter: String::new(),
                };
                for (key, value) in params {
                    match key {
                        "consumer" => {
                            source.consumer = name(key, value, stream_char).map_err(fail)?
                        }
                        "subject" => source.subject = subject(key, value).map_err(fail)?,
                        "dead_letter" => source.dead_letter = subject(key, value).map_err(fail)?,
                        other => {
                            return Err(fail(format!(
                            "unknown parameter {other:?} (known: consumer, subject, dead_letter)"
                        )))
                        }
                    }
                }
                if source.dead_letter.is_empty() {
                    source.dead_letter = format!("{}.dead", source.subject);
                }
                if source.dead_letter == source.subject {
                    return Err(fail("dead_letter must differ from subject".into()));
                }
                Ok(IngestUrl::Nats(source))
            }
            "kafka" => {
                let topic = name("topic", path, topic_char).map_err(fail)?;
                let mut source = KafkaSource {
                    brokers: authority.to_owned(),
                    topic,
                    group: "mlaudit".into(),
                    dead_letter: String::new(),
                };
                for (key, value) in params {
                    match key {
                        "group" => source.group = name(key, value, topic_char).map_err(fail)?,
                        "dead_letter" => {
                            source.dead_letter = name(key, value, topic_char).map_err(fail)?
                        }
                        other => {
                            return Err(fail(format!(
                                "unknown parameter {other:?} (known: group, dead_letter)"
                            )))
                        }
                    }
                }
                if source.dead_letter.is_empty() {
                    source.dead_letter = format!("{}.dead", source.topic);
                }
                if source.dead_letter == source.topic {
                    return Err(fail("dead_letter must differ from the topic".into()));
                }
                Ok(IngestUrl::Kafka(source))
            }
            other => Err(fail(format!(
                "unknown scheme {other:?}: nats:// or kafka://"
            ))),
        }
    }
}

/// The source's name in logs and metrics: its URL without credentials.
impl fmt::Display for IngestUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            IngestUrl::Nats(s) => write!(f, "{}/{}", redact(&s.server), s.stream),
            IngestUrl::Kafka(s) => write!(f, "kafka://{}/{}", s.brokers, s.topic),
        }
    }
}

impl fmt::Debug for IngestUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "IngestUrl({self})")
    }
}

impl fmt::Debug for NatsSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NatsSource")
            .field("server", &redact(&self.server))
            .field("stream", &self.stream)
            .field("consumer", &self.consumer)
            .field("subject", &self.subject)
            .field("dead_letter", &self.dead_letter)
            .finish()
    }
}

impl fmt::Debug for KafkaSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KafkaSource")
            .field("brokers", &self.brokers)
            .field("topic", &self.topic)
            .field("group", &self.group)
            .field("dead_letter", &self.dead_letter)
            .finish()
    }
}

/// `url` with any `user:password@` replaced by `***@`.
fn redact(url: &str) -> String {
    match (url.find("://"), url.find('@')) {
        (Some(s), Some(at)) if at > s && !url[s + 3..at].contains('/') => {
            format!("{}***{}", &url[..s + 3], &url[at..])
        }
        _ => url.to_owned(),
    }
}

fn params(query: &str) -> Result<Vec<(&str, &str)>, String> {
    let mut out: Vec<(&str, &str)> = Vec::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair
            .split_once('=')
            .ok_or_else(|| format!("parameter {pair:?} has no value"))?;
        if out.iter().any(|(k, _)| *k == key) {
            return Err(format!("parameter {key:?} is given twice"));
        }
        out.push((key, value));
    }
    Ok(out)
}

fn stream_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '-' || c == '_'
}

fn topic_char(c: char) -> bool {
    stream_char(c) || c == '.'
}

fn name(what: &str, value: &str, allowed: fn(char) -> bool) -> Result<String, String> {
    if value.is_empty() || value.len() > 200 || !value.chars().all(allowed) {
        return Err(format!(
            "{what} {value:?} must be 1 to 200 letters, digits, '-' or '_'{}",
            if allowed('.') { " or '.'" } else { "" }
        ));
    }
    Ok(value.to_owned())
}

/// A NATS subject to publish or filter on: dot-separated tokens, no wildcards or spaces.
fn subject(what: &str, value: &str) -> Result<String, String> {
    let ok = !value.is_empty()
        && value.len() <= 200
        && value.split('.').all(|token| {
            !token.is_empty()
                && token
                    .chars()
                    .all(|c| c.is_ascii_graphic() && c != '*' && c != '>')
        });
    if !ok {
        return Err(format!(
            "{what} {value:?} must be a NATS subject: dot-separated tokens, no wildcards"
        ));
    }
    Ok(value.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nats(url: &str) -> NatsSource {
        match IngestUrl::parse(url) {
            Ok(IngestUrl::Nats(s)) => s,
            other => panic!("{url}: {other:?}"),
        }
    }

    #[test]
    fn nats_defaults_and_parameters() {
        let s = nats("nats://127.0.0.1:4222/AUDIT");
        assert_eq!(s.server, "nats://127.0.0.1:4222");
        assert_eq!(
            (s.stream.as_str(), s.consumer.as_str()),
            ("AUDIT", "mlaudit")
        );
        assert_eq!(s.subject, "mlaudit.events");
        assert_eq!(s.dead_letter, "mlaudit.events.dead");
        let s = nats("nats://u:p@h:1/S?consumer=c1&subject=a.b&dead_letter=a.dlq");
        assert_eq!((s.consumer.as_str(), s.subject.as_str()), ("c1", "a.b"));
        assert_eq!(s.dead_letter, "a.dlq");
        assert_eq!(
            IngestUrl::parse("nats://u:p@h:1/S")
                .map(|u| u.to_string())
                .ok(),
            Some("nats://***@h:1/S".to_owned())
        );
    }

    #[test]
    fn kafka_defaults() {
        match IngestUrl::parse("kafka://b1:9092,b2:9092/audit.events?group=g") {
            Ok(IngestUrl::Kafka(k)) => {
                assert_eq!(k.brokers, "b1:9092,b2:9092");
                assert_eq!((k.topic.as_str(), k.group.as_str()), ("audit.events", "g"));
                assert_eq!(k.dead_letter, "audit.events.dead");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn refuses_bad_urls() {
        for bad in [
            "nats://h:1",
            "nats://h:1/",
            "nats:///S",
            "nats://h:1/a.b",
            "nats://h:1/S?subject=a.*",
            "nats://h:1/S?subject=a..b",
            "nats://h:1/S?nope=1",
            "nats://h:1/S?consumer=a&consumer=b",
            "nats://h:1/S?subject=x&dead_letter=x",
            "kafka://h:1/t?group=",
            "amqp://h/q",
            "127.0.0.1:4222",
        ] {
            assert!(IngestUrl::parse(bad).is_err(), "{bad} was accepted");
        }
    }
}
