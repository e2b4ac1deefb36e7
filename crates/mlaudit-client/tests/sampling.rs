//! The sampling rule: known answers shared with the Python SDK, determinism, and the rate.

use mlaudit_client::{keeps, Risk, Sampling};
use serde_json::Value;

/// `clients/python/tests/sampling_vectors.json`: the same file the Python SDK's tests read,
/// so that both SDKs keep or drop a request alike.
#[test]
fn known_answers_shared_with_the_python_sdk() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../clients/python/tests/sampling_vectors.json"
    );
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let file: Value = serde_json::from_str(&text).unwrap();
    let vectors = file["vectors"].as_array().unwrap();
    assert!(vectors.len() >= 20);
    let mut kept = 0;
    for v in vectors {
        let (id, rate, expected) = (
            v["request_id"].as_str().unwrap(),
            v["rate"].as_f64().unwrap(),
            v["expected_in"].as_bool().unwrap(),
        );
        assert_eq!(keeps(id, rate), expected, "request {id:?} at rate {rate}");
        kept += usize::from(expected);
    }
    assert!(
        kept > 0 && kept < vectors.len(),
        "the vectors must hold both outcomes"
    );
}

#[test]
fn the_decision_is_deterministic_and_the_kept_fraction_is_the_rate() {
    for rate in [0.01, 0.05, 0.10] {
        let n = 200_000;
        let kept = (0..n).filter(|i| keeps(&format!("req-{i}"), rate)).count();
        let expected = rate * n as f64;
        // Binomial: 5 standard deviations.
        let sd = (n as f64 * rate * (1.0 - rate)).sqrt();
        assert!(
            (kept as f64 - expected).abs() < 5.0 * sd,
            "rate {rate}: kept {kept} of {n}"
        );
        assert!(
            (0..1000).all(|i| keeps(&format!("req-{i}"), rate) == keeps(&format!("req-{i}"), rate))
        );
    }
    assert!((0..1000).all(|i| keeps(&format!("r{i}"), 1.0)));
    assert!(!(0..1000).any(|i| keeps(&format!("r{i}"), 0.0)));
}

#[test]
fn risk_levels_and_the_policy() {
    assert_eq!(Risk::High.rate(), 1.0);
    assert_eq!(Risk::low(0.05).unwrap().rate(), 0.05);
    for bad in [0.0, 0.009, 0.11, 1.0, f64::NAN] {
        assert!(Risk::low(bad).is_err(), "{bad}");
    }
    let policy = Sampling::new().model("churn", Risk::low(0.02).unwrap());
    assert_eq!(policy.rate_for(Some("churn")), 0.02);
    assert_eq!(
        policy.rate_for(Some("credit-risk")),
        1.0,
        "unnamed models are high-risk by default"
    );
    assert_eq!(policy.rate_for(None), 1.0);
    let cautious = policy.default_risk(Risk::low(0.1).unwrap());
    assert_eq!(cautious.rate_for(Some("other")), 0.1);
}
