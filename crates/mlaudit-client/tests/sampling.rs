//! The sampling rule: known answers shared with the Python SDK, agreement with the rule
//! computed here from its definition (so that the decision depends on the id and the rate
//! alone), and the rate.

use mlaudit_client::{keeps, Risk, Sampling};
use serde_json::Value;
use sha2::{Digest, Sha256};

/// The rule's hash, from its definition: the first 8 bytes of SHA-256(UTF-8 of the id), as a
/// big-endian integer.
fn reference_hash(id: &str) -> u64 {
    let digest = Sha256::digest(id.as_bytes());
    digest[..8]
        .iter()
        .fold(0u64, |acc, b| (acc << 8) | u64::from(*b))
}

/// The rule's threshold trunc(rate × 2^64), computed exactly from the float's bits (no float
/// arithmetic); `None` for a rate of 1 or more, which keeps everything.
fn reference_threshold(rate: f64) -> Option<u64> {
    if rate.is_nan() || rate <= 0.0 {
        return Some(0);
    }
    if rate >= 1.0 {
        return None;
    }
    let bits = rate.to_bits();
    let exponent = ((bits >> 52) & 0x7ff) as i64;
    let fraction = bits & ((1 << 52) - 1);
    // rate = mantissa × 2^(power), exactly.
    let (mantissa, power) = if exponent == 0 {
        (fraction, -1074)
    } else {
        (fraction | (1 << 52), exponent - 1075)
    };
    let shift = power + 64;
    let scaled = if shift >= 0 {
        u128::from(mantissa) << shift
    } else if shift > -64 {
        u128::from(mantissa) >> -shift
    } else {
        0
    };
    // rate < 1 keeps trunc(rate × 2^64) below 2^64.
    Some(u64::try_from(scaled).unwrap_or_else(|_| panic!("rate {rate} scaled past 2^64")))
}

fn reference_keeps(id: &str, rate: f64) -> bool {
    reference_threshold(rate).is_none_or(|t| reference_hash(id) < t)
}

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
        // The vectors' debugging columns are the reference's own figures.
        assert_eq!(
            v["hash_u64"].as_str(),
            Some(reference_hash(id).to_string().as_str()),
            "hash of {id:?}"
        );
        assert_eq!(
            v["threshold_u64"].as_str().map(str::to_owned),
            reference_threshold(rate).map(|t| t.to_string()),
            "threshold of rate {rate}"
        );
        assert_eq!(reference_keeps(id, rate), expected, "{id:?} at {rate}");
        kept += usize::from(expected);
    }
    assert!(
        kept > 0 && kept < vectors.len(),
        "the vectors must hold both outcomes"
    );
}

/// The decision is the rule applied to the id and the rate, and nothing else: it equals the
/// reference computed above for many ids (ASCII, Unicode, empty, long) at every kind of rate,
/// and at rates placed exactly on an id's hash, where only a strict `<` against the exact
/// truncated threshold gives the right answer.
#[test]
fn the_decision_is_the_rule_of_the_id_and_the_rate_alone() {
    let mut ids: Vec<String> = (0..2000).map(|i| format!("req-{i}")).collect();
    ids.extend(
        [
            "",
            "é",
            "\u{1F600}",
            "a b",
            "2b1f6c4e-5d3a-4f1e-9c2b-7e8d9a0b1c2d",
        ]
        .map(str::to_owned),
    );
    ids.push("x".repeat(10_000));
    let rates = [
        0.01,
        0.05,
        0.1,
        0.5,
        0.999_999_999,
        1.0 - f64::EPSILON / 2.0,
        1.0,
        2.0,
        0.0,
        -0.0,
        -1.0,
        f64::NAN,
        f64::MIN_POSITIVE,
        5e-324,
        1.0 / 3.0,
    ];
    for id in &ids {
        for rate in rates {
            assert_eq!(
                keeps(id, rate),
                reference_keeps(id, rate),
                "{id:?} at rate {rate:e}"
            );
        }
    }
    // Ids whose hash a float rate can hit exactly (its low 11 bits are zero, so it has at most
    // 53 significant bits): at rate hash / 2^64 the threshold is the hash itself and the id is
    // out; one representable step up, it is in.
    let two64 = 18_446_744_073_709_551_616.0;
    let exact: Vec<(String, u64)> = (0..)
        .map(|i| format!("boundary-{i}"))
        .map(|id| {
            let hash = reference_hash(&id);
            (id, hash)
        })
        .filter(|(_, hash)| hash % 2048 == 0)
        .take(3)
        .collect();
    for (id, hash) in exact {
        let on = hash as f64 / two64;
        let above = (u128::from(hash) + 2048) as f64 / two64;
        assert_eq!(reference_threshold(on), Some(hash));
        assert!(
            !keeps(&id, on),
            "{id:?}: hash {hash} kept at a threshold equal to it"
        );
        assert!(
            keeps(&id, above),
            "{id:?}: hash {hash} dropped below the threshold"
        );
    }
}

#[test]
fn the_kept_fraction_is_the_rate() {
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
