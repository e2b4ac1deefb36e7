//! A request rate limit per principal: a token bucket per token (and per address for
//! anonymous callers) that refills at `per_second` up to `burst`. A request over the limit is
//! answered 429 with `Retry-After`.
//!
//! The buckets are keyed by what clients send (token names, addresses), so the map hashes
//! with a per-process random key, and it is bounded: past [`MAX_KEYS`] keys, the buckets that
//! have refilled completely (idle principals) are dropped.

use std::collections::hash_map::RandomState;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Most principals tracked at once before idle ones are forgotten.
pub const MAX_KEYS: usize = 100_000;

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

/// The limiter shared by every request.
#[derive(Debug)]
pub struct RateLimiter {
    per_second: f64,
    burst: f64,
    buckets: Mutex<HashMap<String, Bucket, RandomState>>,
}

impl RateLimiter {
    /// `per_second` requests a second on average, up to `burst` at once.
    pub fn new(per_second: u32, burst: u32) -> RateLimiter {
        RateLimiter {
            per_second: f64::from(per_second.max(1)),
            burst: f64::from(burst.max(per_second).max(1)),
            buckets: Mutex::new(HashMap::default()),
        }
    }

    /// Takes one request from `key`'s bucket, or says how long until one is available.
    pub fn check(&self, key: &str) -> Result<(), Duration> {
        self.check_at(key, Instant::now())
    }

    fn check_at(&self, key: &str, now: Instant) -> Result<(), Duration> {
        let Ok(mut buckets) = self.buckets.lock() else {
            return Ok(());
        };
        if buckets.len() >= MAX_KEYS && !buckets.contains_key(key) {
            let (rate, burst) = (self.per_second, self.burst);
            buckets.retain(|_, b| b.tokens + rate * now.duration_since(b.at).as_secs_f64() < burst);
        }
        let bucket = buckets.entry(key.to_owned()).or_insert(Bucket {
            tokens: self.burst,
            at: now,
        });
        let refill = self.per_second * now.saturating_duration_since(bucket.at).as_secs_f64();
        bucket.tokens = (bucket.tokens + refill).min(self.burst);
        bucket.at = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64(
                (1.0 - bucket.tokens) / self.per_second,
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_is_allowed_then_the_rate_and_each_key_has_its_own_bucket() {
        let limiter = RateLimiter::new(10, 20);
        let t0 = Instant::now();
        for i in 0..20 {
            assert!(
                limiter.check_at("token:a", t0).is_ok(),
                "request {i} of the burst"
            );
        }
        let wait = limiter.check_at("token:a", t0).unwrap_err();
        assert!(
            wait > Duration::ZERO && wait <= Duration::from_millis(100),
            "{wait:?}"
        );
        assert!(
            limiter.check_at("token:b", t0).is_ok(),
            "another key is not limited"
        );
        // 0.5 s later, 5 more.
        let t1 = t0 + Duration::from_millis(500);
        for _ in 0..5 {
            assert!(limiter.check_at("token:a", t1).is_ok());
        }
        assert!(limiter.check_at("token:a", t1).is_err());
    }

    #[test]
    fn idle_keys_are_forgotten_when_the_map_is_full() {
        let limiter = RateLimiter::new(1000, 1000);
        let t0 = Instant::now();
        for i in 0..MAX_KEYS {
            limiter.check_at(&format!("anonymous:{i}"), t0).unwrap();
        }
        let later = t0 + Duration::from_secs(5);
        limiter.check_at("token:new", later).unwrap();
        assert!(limiter.buckets.lock().unwrap().len() < 10);
    }
}
