//! `GET /metrics`: Prometheus text exposition (format 0.0.4) of ingested events by stage,
//! request latency histograms by route, events per durable sync, tree size and log bytes.
//! Hand-written: the format is small and a dependency would not make it clearer.

use crate::auth::AuthFailure;
use crate::AppState;
use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use mlaudit_core::event::Stage;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

/// Upper bounds (seconds) of the request latency histogram.
const LATENCY_BOUNDS: [f64; 12] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];

#[derive(Debug, Default, Clone)]
struct Histogram {
    buckets: [u64; LATENCY_BOUNDS.len()],
    count: u64,
    sum: f64,
}

/// The server's own counters.
#[derive(Debug, Default)]
pub struct Metrics {
    ingested: [AtomicU64; Stage::ALL.len()],
    /// (method, route, status) → latency histogram.
    requests: Mutex<BTreeMap<(String, String, u16), Histogram>>,
    /// Failed authentications, by [`AuthFailure`].
    auth_failures: [AtomicU64; AuthFailure::ALL.len()],
    /// Connections refused or closed by the connection layer, by [`ConnEvent`].
    connections: [AtomicU64; ConnEvent::ALL.len()],
    retention: RetentionCounters,
}

/// The scheduled retention runs of `mlaudit serve`.
#[derive(Debug, Default)]
struct RetentionCounters {
    succeeded: AtomicU64,
    failed: AtomicU64,
    /// Events the cold archive holds after the last successful run.
    archived: AtomicU64,
    /// Events archived by runs of this process.
    archived_total: AtomicU64,
    /// Payloads expired by runs of this process.
    expired_total: AtomicU64,
    offloaded_total: AtomicU64,
    /// Unix seconds of the last successful run (0: none yet).
    last_success: AtomicU64,
}

/// What the connection layer counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnEvent {
    /// A TLS handshake that did not finish in time.
    HandshakeTimeout,
    /// A connection closed after being idle too long.
    IdleTimeout,
    /// An accept that failed for lack of descriptors (the loop backs off).
    AcceptBackoff,
}

impl ConnEvent {
    pub const ALL: [ConnEvent; 3] = [
        ConnEvent::HandshakeTimeout,
        ConnEvent::IdleTimeout,
        ConnEvent::AcceptBackoff,
    ];

    fn as_str(self) -> &'static str {
        match self {
            ConnEvent::HandshakeTimeout => "tls_handshake_timeout",
            ConnEvent::IdleTimeout => "idle_timeout",
            ConnEvent::AcceptBackoff => "accept_backoff",
        }
    }
}

impl Metrics {
    /// Records a successful retention run: the archive now holds `archive_size` events, of
    /// which `archived` were added by this run, and `expired` payloads were removed.
    pub fn retention_succeeded(
        &self,
        archive_size: u64,
        archived: u64,
        expired: u64,
        offloaded: u64,
    ) {
        let r = &self.retention;
        r.succeeded.fetch_add(1, Ordering::Relaxed);
        r.archived.store(archive_size, Ordering::Relaxed);
        r.archived_total.fetch_add(archived, Ordering::Relaxed);
        r.expired_total.fetch_add(expired, Ordering::Relaxed);
        r.offloaded_total.fetch_add(offloaded, Ordering::Relaxed);
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        r.last_success.store(now, Ordering::Relaxed);
    }

    /// Records a failed retention run.
    pub fn retention_failed(&self) {
        self.retention.failed.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts appended (not duplicate) events of a stage.
    pub fn ingested(&self, stage: Stage, n: u64) {
        self.ingested[stage as usize].fetch_add(n, Ordering::Relaxed);
    }

    /// Counts a failed authentication.
    pub fn auth_failed(&self, why: AuthFailure) {
        self.auth_failures[why as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// Counts an event of the connection layer.
    pub fn connection(&self, what: ConnEvent) {
        self.connections[what as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// Counts one request's latency under (method, route template, status).
    pub(crate) fn observe(&self, method: &str, route: &str, status: u16, seconds: f64) {
        let Ok(mut map) = self.requests.lock() else {
            return;
        };
        // The keys are few (routes × methods × statuses seen): a scan finds an existing one
        // without allocating its strings, as `entry` would on every request.
        let is_key = |(m, r, s): &(String, String, u16)| m == method && r == route && *s == status;
        if !map.keys().any(is_key) {
            map.insert(
                (method.to_owned(), route.to_owned(), status),
                Histogram::default(),
            );
        }
        let Some(h) = map.iter_mut().find(|(k, _)| is_key(k)).map(|(_, h)| h) else {
            return;
        };
        if let Some(i) = LATENCY_BOUNDS.iter().position(|b| seconds <= *b) {
            h.buckets[i] += 1;
        }
        h.count += 1;
        h.sum += seconds;
    }
}

fn escape(label: &str) -> String {
    label
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Writes one counter family: its help and type lines, then one sample per (label value,
/// counter).
fn counters<'a>(
    out: &mut String,
    name: &str,
    help: &str,
    label: &str,
    samples: impl IntoIterator<Item = (&'a str, &'a AtomicU64)>,
) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} counter");
    for (value, counter) in samples {
        let _ = writeln!(
            out,
            "{name}{{{label}=\"{value}\"}} {}",
            counter.load(Ordering::Relaxed)
        );
    }
}

/// The retention schedule's counters.
fn retention(out: &mut String, r: &RetentionCounters) {
    let runs = [("ok", &r.succeeded), ("failed", &r.failed)];
    counters(
        out,
        "mlaudit_retention_runs_total",
        "Scheduled retention runs, by outcome.",
        "outcome",
        runs,
    );
    let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
    let _ = writeln!(out, "# HELP mlaudit_retention_archived_events Events the cold archive holds after the last successful run.\n# TYPE mlaudit_retention_archived_events gauge\nmlaudit_retention_archived_events {}", load(&r.archived));
    let _ = writeln!(out, "# HELP mlaudit_retention_events_archived_total Events archived by this process's scheduled runs.\n# TYPE mlaudit_retention_events_archived_total counter\nmlaudit_retention_events_archived_total {}", load(&r.archived_total));
    let _ = writeln!(out, "# HELP mlaudit_retention_payloads_expired_total Payloads removed by this process's scheduled runs (governance.payload_expired).\n# TYPE mlaudit_retention_payloads_expired_total counter\nmlaudit_retention_payloads_expired_total {}", load(&r.expired_total));
    let _ = writeln!(out, "# HELP mlaudit_retention_payloads_offloaded_total Local payloads this process's scheduled runs dropped once the cold archive held them.\n# TYPE mlaudit_retention_payloads_offloaded_total counter\nmlaudit_retention_payloads_offloaded_total {}", load(&r.offloaded_total));
    let _ = writeln!(out, "# HELP mlaudit_retention_last_success_timestamp_seconds Unix time of the last successful retention run (0: none yet).\n# TYPE mlaudit_retention_last_success_timestamp_seconds gauge\nmlaudit_retention_last_success_timestamp_seconds {}", load(&r.last_success));
}

/// The queue consumers' counters (`mlaudit serve --ingest`), one series per source.
fn queues(out: &mut String, sources: &[std::sync::Arc<mlaudit_queue::Stats>]) {
    if sources.is_empty() {
        return;
    }
    let all: Vec<mlaudit_queue::Snapshot> = sources.iter().map(|s| s.snapshot()).collect();
    let series = |out: &mut String,
                  name: &str,
                  kind: &str,
                  help: &str,
                  value: &dyn Fn(&mlaudit_queue::Snapshot) -> f64| {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for s in &all {
            let _ = writeln!(
                out,
                "{name}{{source=\"{}\"}} {}",
                escape(&s.source),
                value(s)
            );
        }
    };
    series(
        out,
        "mlaudit_queue_connected",
        "gauge",
        "1 while the consumer is connected and consuming, else 0.",
        &|s| f64::from(u8::from(s.connected)),
    );
    series(
        out,
        "mlaudit_queue_messages_total",
        "counter",
        "Messages handled and acknowledged (stored or dead-lettered).",
        &|s| s.messages as f64,
    );
    series(
        out,
        "mlaudit_queue_events_total",
        "counter",
        "Events from the queue newly appended to the log.",
        &|s| s.events as f64,
    );
    series(
        out,
        "mlaudit_queue_duplicates_total",
        "counter",
        "Events from the queue the log already held (redeliveries).",
        &|s| s.duplicates as f64,
    );
    series(
        out,
        "mlaudit_queue_dead_letters_total",
        "counter",
        "Poison messages sent to the dead letters.",
        &|s| s.dead_letters as f64,
    );
    series(
        out,
        "mlaudit_queue_errors_total",
        "counter",
        "Failures to reach the queue or to store (each retried).",
        &|s| s.errors as f64,
    );
    series(
        out,
        "mlaudit_queue_lag_messages",
        "gauge",
        "Messages in the queue not yet acknowledged, as the queue last reported.",
        &|s| s.pending as f64,
    );
    let name = "mlaudit_queue_lag_seconds";
    let _ = writeln!(out, "# HELP {name} From the queue's receipt of a message to its events being durable in the log.\n# TYPE {name} histogram");
    for s in &all {
        let source = escape(&s.source);
        for (bound, n) in mlaudit_queue::stats::LAG_BOUNDS.iter().zip(s.lag_buckets) {
            let _ = writeln!(
                out,
                "{name}_bucket{{source=\"{source}\",le=\"{bound}\"}} {n}"
            );
        }
        let _ = writeln!(
            out,
            "{name}_bucket{{source=\"{source}\",le=\"+Inf\"}} {}",
            s.lag_count
        );
        let _ = writeln!(out, "{name}_sum{{source=\"{source}\"}} {}", s.lag_sum);
        let _ = writeln!(out, "{name}_count{{source=\"{source}\"}} {}", s.lag_count);
    }
}

/// Renders every metric.
pub fn render(state: &AppState) -> String {
    let mut out = String::new();
    let m = &state.metrics;
    counters(
        &mut out,
        "mlaudit_events_ingested_total",
        "Events appended through the API (duplicates excluded), by stage.",
        "stage",
        Stage::ALL.map(|stage| (stage.as_str(), &m.ingested[stage as usize])),
    );
    out.push_str("# HELP mlaudit_http_request_duration_seconds Request latency by method, route and status.\n");
    out.push_str("# TYPE mlaudit_http_request_duration_seconds histogram\n");
    if let Ok(map) = m.requests.lock() {
        for ((method, route, status), h) in map.iter() {
            let labels = format!(
                "method=\"{}\",route=\"{}\",status=\"{status}\"",
                escape(method),
                escape(route)
            );
            let mut cumulative = 0;
            for (bound, n) in LATENCY_BOUNDS.iter().zip(h.buckets) {
                cumulative += n;
                let _ = writeln!(out, "mlaudit_http_request_duration_seconds_bucket{{{labels},le=\"{bound}\"}} {cumulative}");
            }
            let _ = writeln!(
                out,
                "mlaudit_http_request_duration_seconds_bucket{{{labels},le=\"+Inf\"}} {}",
                h.count
            );
            let _ = writeln!(
                out,
                "mlaudit_http_request_duration_seconds_sum{{{labels}}} {}",
                h.sum
            );
            let _ = writeln!(
                out,
                "mlaudit_http_request_duration_seconds_count{{{labels}}} {}",
                h.count
            );
        }
    }
    counters(
        &mut out,
        "mlaudit_auth_failures_total",
        "Requests refused for a missing, invalid or expired token.",
        "reason",
        AuthFailure::ALL.map(|why| (why.as_str(), &m.auth_failures[why as usize])),
    );
    counters(
        &mut out,
        "mlaudit_connection_events_total",
        "Connections timed out, and accepts backed off.",
        "event",
        ConnEvent::ALL.map(|what| (what.as_str(), &m.connections[what as usize])),
    );
    integrations(&mut out, state);
    retention(&mut out, &m.retention);
    queues(&mut out, &state.ingest);
    let stats = state.store.stats();
    out.push_str(
        "# HELP mlaudit_sync_batch_events Events made durable per fsync (group commit size).\n",
    );
    out.push_str("# TYPE mlaudit_sync_batch_events histogram\n");
    for (bound, cumulative) in &stats.sync_sizes {
        let le = if *bound == u64::MAX {
            "+Inf".to_owned()
        } else {
            bound.to_string()
        };
        let _ = writeln!(
            out,
            "mlaudit_sync_batch_events_bucket{{le=\"{le}\"}} {cumulative}"
        );
    }
    let _ = writeln!(out, "mlaudit_sync_batch_events_sum {}", stats.synced_events);
    let _ = writeln!(out, "mlaudit_sync_batch_events_count {}", stats.syncs);
    out.push_str("# HELP mlaudit_tree_size Events in the log.\n# TYPE mlaudit_tree_size gauge\n");
    let _ = writeln!(out, "mlaudit_tree_size {}", state.store.tree_size());
    out.push_str(
        "# HELP mlaudit_log_bytes Bytes of the log on disk.\n# TYPE mlaudit_log_bytes gauge\n",
    );
    let _ = writeln!(out, "mlaudit_log_bytes {}", stats.log_bytes);
    if let Some(sequencer) = stats.sequencer {
        out.push_str("# HELP mlaudit_sequencer 1 while this process is the log's sequencer (PostgreSQL store).\n# TYPE mlaudit_sequencer gauge\n");
        let _ = writeln!(out, "mlaudit_sequencer {}", u8::from(sequencer));
        out.push_str("# HELP mlaudit_sequencer_takeovers_total Times this process became the sequencer.\n# TYPE mlaudit_sequencer_takeovers_total counter\n");
        let _ = writeln!(out, "mlaudit_sequencer_takeovers_total {}", stats.takeovers);
    }
    out
}

/// The integrations' counters: requests accepted and refused and events written, per
/// integration; inference halves waiting, written alone, and sampled out.
fn integrations(out: &mut String, state: &AppState) {
    let c = &state.integrations.counters;
    let snapshot = c.snapshot();
    let families = [
        (
            "mlaudit_integration_requests_accepted_total",
            "Requests a receiver answered 2xx, by integration.",
            1,
        ),
        (
            "mlaudit_integration_requests_refused_total",
            "Requests a receiver refused as malformed or unauthenticated (4xx), by integration.",
            2,
        ),
        (
            "mlaudit_integration_events_total",
            "New events written by a receiver, by integration.",
            3,
        ),
    ];
    for (name, help, column) in families {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} counter");
        for row in &snapshot {
            let value = match column {
                1 => row.1,
                2 => row.2,
                _ => row.3,
            };
            let _ = writeln!(out, "{name}{{integration=\"{}\"}} {value}", row.0);
        }
    }
    let _ = writeln!(out, "# HELP mlaudit_inference_halves_waiting KServe and Seldon request or response events waiting for their partner.\n# TYPE mlaudit_inference_halves_waiting gauge");
    let _ = writeln!(
        out,
        "mlaudit_inference_halves_waiting {}",
        state.integrations.joiner.len()
    );
    let _ = writeln!(out, "# HELP mlaudit_inference_halves_waiting_bytes Bytes the waiting inference halves hold (refused past max_pending_mib).\n# TYPE mlaudit_inference_halves_waiting_bytes gauge");
    let _ = writeln!(
        out,
        "mlaudit_inference_halves_waiting_bytes {}",
        state.integrations.joiner.held_bytes()
    );
    let _ = writeln!(out, "# HELP mlaudit_inference_halves_unmatched_total Inference halves written alone after the join timeout.\n# TYPE mlaudit_inference_halves_unmatched_total counter");
    let _ = writeln!(
        out,
        "mlaudit_inference_halves_unmatched_total {}",
        c.unmatched.load(Ordering::Relaxed)
    );
    let _ = writeln!(out, "# HELP mlaudit_predictions_sampled_out_total Inference events left out by the sampling policy.\n# TYPE mlaudit_predictions_sampled_out_total counter");
    let _ = writeln!(
        out,
        "mlaudit_predictions_sampled_out_total {}",
        c.sampled_out.load(Ordering::Relaxed)
    );
}

pub async fn serve(State(state): State<AppState>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        render(&state),
    )
        .into_response()
}
