//! Per-model sampling of `prediction.*` events.
//!
//! A model's risk level fixes its rate: [`Risk::High`] keeps every prediction, [`Risk::low`]
//! keeps a configured 1–10 %. The decision is a pure function of the request id, so the same
//! request is always in or always out — in this SDK, in the Python SDK, on any machine:
//!
//! ```text
//! rate >= 1.0                                      → in
//! else  u64_be(SHA-256(utf8(request_id))[0..8])  <  trunc(rate × 2^64)   → in
//! ```
//!
//! (`clients/python/tests/sampling_vectors.json` holds known answers both SDKs test against.)
//! Events of every other stage — above all governance (policy and access) events — are never
//! sampled. A kept prediction records its rate in `attributes.sample_rate`.

use sha2::{Digest, Sha256};
use std::collections::HashMap;

/// How much of a model's prediction traffic is kept.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Risk {
    /// Every prediction (rate 1.0).
    High,
    /// A fraction between 0.01 and 0.10; build it with [`Risk::low`].
    Low(f64),
}

/// A low-risk rate outside 1–10 %.
#[derive(Debug, thiserror::Error)]
#[error("a low-risk sample rate must be between 0.01 and 0.10, not {0}")]
pub struct RateError(pub f64);

impl Risk {
    /// A low-risk model sampled at `rate` (0.01 ≤ rate ≤ 0.10).
    pub fn low(rate: f64) -> Result<Risk, RateError> {
        if (0.01..=0.10).contains(&rate) {
            Ok(Risk::Low(rate))
        } else {
            Err(RateError(rate))
        }
    }

    /// The fraction of predictions kept.
    pub fn rate(self) -> f64 {
        match self {
            Risk::High => 1.0,
            Risk::Low(rate) => rate,
        }
    }
}

/// The sampling policy: a risk level per model, and one for models not named.
#[derive(Clone, Debug)]
pub struct Sampling {
    models: HashMap<String, Risk>,
    default: Risk,
}

impl Default for Sampling {
    /// Every model high-risk: nothing is sampled out until a model is declared low-risk.
    fn default() -> Sampling {
        Sampling {
            models: HashMap::new(),
            default: Risk::High,
        }
    }
}

impl Sampling {
    /// Every model high-risk (keep everything).
    pub fn new() -> Sampling {
        Sampling::default()
    }

    /// Sets a model's risk level.
    pub fn model(mut self, model: impl Into<String>, risk: Risk) -> Sampling {
        self.models.insert(model.into(), risk);
        self
    }

    /// The risk level of models not named.
    pub fn default_risk(mut self, risk: Risk) -> Sampling {
        self.default = risk;
        self
    }

    /// The rate that applies to a prediction of `model`.
    #[inline]
    pub fn rate_for(&self, model: Option<&str>) -> f64 {
        model
            .and_then(|m| self.models.get(m))
            .copied()
            .unwrap_or(self.default)
            .rate()
    }
}

/// Whether the request is in the sample at `rate` (the rule in the module docs).
pub fn keeps(request_id: &str, rate: f64) -> bool {
    if rate >= 1.0 {
        return true;
    }
    let digest = Sha256::digest(request_id.as_bytes());
    let mut head = [0u8; 8];
    head.copy_from_slice(&digest[..8]);
    // `as` saturates: a rate of 0 or less keeps nothing; NaN keeps nothing.
    let threshold = (rate * 18_446_744_073_709_551_616.0) as u64;
    u64::from_be_bytes(head) < threshold
}
