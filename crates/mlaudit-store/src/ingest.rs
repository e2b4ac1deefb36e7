//! Turning NDJSON text into validated events, on several threads, reporting bad lines by number.

use mlaudit_core::event::{prepare, EventError, PreparedEvent};

/// A rejected input line (1-based line number).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {error}")]
pub struct LineError {
    pub line: usize,
    pub error: EventError,
}

/// Non-blank lines of NDJSON text with their 1-based line numbers.
pub fn ndjson_lines(text: &str) -> Vec<(usize, &str)> {
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| (i + 1, l))
        .collect()
}

/// Validates lines on up to `threads` threads. All lines are checked; every error is returned
/// (in line order) and no event is returned unless all are valid.
pub fn prepare_lines(
    lines: &[(usize, &str)],
    principal: &str,
    threads: usize,
) -> Result<Vec<PreparedEvent>, Vec<LineError>> {
    let run = |chunk: &[(usize, &str)]| -> Vec<Result<PreparedEvent, LineError>> {
        chunk
            .iter()
            .map(|(n, l)| prepare(l, principal).map_err(|error| LineError { line: *n, error }))
            .collect()
    };
    let threads = threads.clamp(1, 64);
    let results: Vec<Result<PreparedEvent, LineError>> = if threads == 1 || lines.len() < 256 {
        run(lines)
    } else {
        let per = lines.len().div_ceil(threads);
        std::thread::scope(|s| {
            let handles: Vec<_> = lines.chunks(per).map(|c| s.spawn(move || run(c))).collect();
            handles
                .into_iter()
                .flat_map(|h| h.join().unwrap_or_default())
                .collect()
        })
    };
    let mut events = Vec::with_capacity(results.len());
    let mut errors = Vec::new();
    for r in results {
        match r {
            Ok(e) => events.push(e),
            Err(e) => errors.push(e),
        }
    }
    if events.len() + errors.len() != lines.len() {
        errors.push(LineError {
            line: 0,
            error: EventError::Json("a validation thread failed".into()),
        });
    }
    if errors.is_empty() {
        Ok(events)
    } else {
        Err(errors)
    }
}
