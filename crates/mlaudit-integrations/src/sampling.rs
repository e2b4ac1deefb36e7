//! Server-side sampling of predictions that arrive without a client SDK (KServe and Seldon
//! sample nothing). The decision is the SDKs' own (see `mlaudit-client`'s `sampling`), so a
//! request is in or out the same way wherever it is decided:
//!
//! ```text
//! rate >= 1.0                                      → in
//! else  u64_be(SHA-256(utf8(request_id))[0..8])  <  trunc(rate × 2^64)   → in
//! ```

use sha2::{Digest, Sha256};
use std::collections::BTreeMap;

/// A sample rate per model, and one for models not named (1.0 keeps everything).
#[derive(Debug, Clone, PartialEq)]
pub struct SamplePolicy {
    pub rates: BTreeMap<String, f64>,
    pub default_rate: f64,
}

impl Default for SamplePolicy {
    fn default() -> SamplePolicy {
        SamplePolicy {
            rates: BTreeMap::new(),
            default_rate: 1.0,
        }
    }
}

impl SamplePolicy {
    /// The rate of `model`.
    pub fn rate(&self, model: &str) -> f64 {
        self.rates.get(model).copied().unwrap_or(self.default_rate)
    }

    /// Whether the prediction `request_id` of `model` is kept, and at which rate.
    pub fn keep(&self, model: &str, request_id: &str) -> Option<f64> {
        let rate = self.rate(model);
        keeps(rate, request_id).then_some(rate)
    }
}

/// The SDKs' sampling decision for `request_id` at `rate`.
pub fn keeps(rate: f64, request_id: &str) -> bool {
    if rate >= 1.0 {
        return true;
    }
    if rate.is_nan() || rate <= 0.0 {
        return false;
    }
    let digest = Sha256::digest(request_id.as_bytes());
    let mut head = [0u8; 8];
    head.copy_from_slice(&digest[..8]);
    let point = u64::from_be_bytes(head);
    // trunc(rate × 2^64), exact for every rate below 1.0.
    let threshold = (rate * 18_446_744_073_709_551_616.0) as u64;
    point < threshold
}
