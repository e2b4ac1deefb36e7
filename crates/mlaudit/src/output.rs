//! Terminal output helpers: a progress bar on stderr (TTY only) and JSON printing.

use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

/// A progress bar drawn on stderr when it is a terminal; silent otherwise.
#[derive(Debug)]
pub struct Progress {
    label: &'static str,
    total: u64,
    enabled: bool,
    last: Instant,
    started: Instant,
    /// Counted in bytes ([`Progress::bytes`]).
    in_bytes: bool,
}

impl Progress {
    pub fn new(label: &'static str, total: u64) -> Progress {
        let enabled = std::io::stderr().is_terminal() && total >= 10_000;
        let now = Instant::now();
        Progress {
            label,
            total,
            enabled,
            last: now.checked_sub(Duration::from_secs(1)).unwrap_or(now),
            started: now,
            in_bytes: false,
        }
    }

    /// A progress line counted in bytes read (of `total`, 0 when unknown), with the events
    /// seen so far and their rate.
    pub fn bytes(label: &'static str, total: u64) -> Progress {
        let mut p = Progress::new(label, total);
        p.enabled = std::io::stderr().is_terminal() && total >= 1 << 20;
        p.in_bytes = true;
        p
    }

    /// Shows `bytes` read and `events` seen (see [`Progress::bytes`]).
    pub fn set_bytes(&mut self, bytes: u64, events: u64) {
        if !self.enabled || self.last.elapsed() < Duration::from_millis(100) {
            return;
        }
        self.last = Instant::now();
        let secs = self.started.elapsed().as_secs_f64().max(1e-9);
        let mib = |b: u64| b as f64 / f64::from(1u32 << 20);
        let mut err = std::io::stderr().lock();
        let _ = write!(
            err,
            "\r{} {:.0}/{:.0} MiB, {events} events ({:.0} events/s, {:.0} MiB/s)   ",
            self.label,
            mib(bytes),
            mib(self.total),
            events as f64 / secs,
            mib(bytes) / secs
        );
        let _ = err.flush();
    }

    pub fn set(&mut self, done: u64) {
        if !self.enabled || (self.last.elapsed() < Duration::from_millis(100) && done < self.total)
        {
            return;
        }
        self.last = Instant::now();
        let frac = if self.total == 0 {
            1.0
        } else {
            done as f64 / self.total as f64
        };
        let width = 30usize;
        let filled = ((frac * width as f64) as usize).min(width);
        let rate = done as f64 / self.started.elapsed().as_secs_f64().max(1e-9);
        let mut err = std::io::stderr().lock();
        let _ = write!(
            err,
            "\r{} [{}{}] {done}/{} ({:.0}/s)",
            self.label,
            "#".repeat(filled),
            " ".repeat(width - filled),
            self.total,
            rate
        );
        let _ = err.flush();
    }

    pub fn finish(&mut self) {
        if self.enabled {
            if !self.in_bytes {
                self.set(self.total);
            }
            eprintln!();
        }
    }
}

/// Prints a value as pretty JSON on stdout.
pub fn print_json(value: &impl serde::Serialize) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}
