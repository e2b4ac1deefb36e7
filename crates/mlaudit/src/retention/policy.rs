//! Retention policies: the `[retention]` table of the config file, with the command line's
//! overrides, checked and resolved.

use crate::ledger::InputError;
use anyhow::Result;
use mlaudit_core::entry::{EntryView, SubjectField};
use mlaudit_core::event::Stage;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Nanoseconds in a day.
const DAY_NS: i64 = 86_400 * 1_000_000_000;

/// `[retention]` in the config file.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct RetentionFile {
    /// Age after which events leave the hot tier (default 90d).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hot: Option<String>,
    /// Age after which events leave the warm tier for the cold archive (default 365d).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub warm: Option<String>,
    /// Where the cold archive is (`s3://…`, `gs://…`, `az://…`, `file:///…`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub archive: Option<String>,
    /// How often `mlaudit serve` applies the policy (e.g. `1h`; default: never).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub schedule: Option<String>,
    /// Each model's risk tier, by model name: `credit-default = "high"`.
    #[serde(default)]
    pub risk: BTreeMap<String, String>,
    /// Payload expiry rules, first match wins; an event no rule matches keeps its payload.
    #[serde(default)]
    pub rule: Vec<RuleFile>,
}

/// One `[[retention.rule]]`.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct RuleFile {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stage: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub risk: Option<String>,
    /// Age after which the payload expires, or `never`.
    pub expire: String,
}

/// A checked policy.
#[derive(Clone, Debug)]
pub struct Policy {
    pub hot_ns: i64,
    pub warm_ns: i64,
    pub rules: Vec<Rule>,
    pub risk: BTreeMap<String, String>,
    /// The policy as written (with overrides applied), recorded in `governance.policy_changed`.
    pub recorded: serde_json::Value,
}

/// A checked expiry rule.
#[derive(Clone, Debug)]
pub struct Rule {
    pub stage: Option<Stage>,
    pub kind: Option<String>,
    pub risk: Option<String>,
    /// `None`: the payload never expires.
    pub expire_ns: Option<i64>,
    /// How the rule reads in a plan.
    pub text: String,
}

/// Parses an age: a whole number and a unit, `s`, `m`, `h`, `d`, `w` or `y` (365 days).
pub fn parse_age(text: &str) -> Result<i64, InputError> {
    let bad = || {
        InputError(format!(
            "age {text:?}: write a whole number and a unit (s, m, h, d, w, y), e.g. 90d"
        ))
    };
    let split = text.find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?;
    let (digits, unit) = text.split_at(split);
    let n: i64 = digits.parse().map_err(|_| bad())?;
    let unit_ns: i64 = match unit {
        "s" => 1_000_000_000,
        "m" => 60_000_000_000,
        "h" => 3_600_000_000_000,
        "d" => DAY_NS,
        "w" => 7 * DAY_NS,
        "y" => 365 * DAY_NS,
        _ => return Err(bad()),
    };
    n.checked_mul(unit_ns).filter(|ns| *ns > 0).ok_or_else(bad)
}

impl Policy {
    /// The policy of `file` with `--hot` and `--warm` applied.
    pub fn resolve(
        file: &RetentionFile,
        hot: Option<&str>,
        warm: Option<&str>,
    ) -> Result<Policy, InputError> {
        let hot_text = hot.or(file.hot.as_deref()).unwrap_or("90d");
        let warm_text = warm.or(file.warm.as_deref()).unwrap_or("365d");
        let hot_ns = parse_age(hot_text)?;
        let warm_ns = parse_age(warm_text)?;
        if warm_ns < hot_ns {
            return Err(InputError(format!(
                "the warm age ({warm_text}) must be at least the hot age ({hot_text})"
            )));
        }
        let rules = file
            .rule
            .iter()
            .enumerate()
            .map(|(i, r)| Rule::check(i + 1, r))
            .collect::<Result<Vec<_>, _>>()?;
        let mut recorded = file.clone();
        recorded.hot = Some(hot_text.to_owned());
        recorded.warm = Some(warm_text.to_owned());
        recorded.archive = None;
        recorded.schedule = None;
        let recorded = serde_json::to_value(&recorded)
            .map_err(|e| InputError(format!("recording the retention policy: {e}")))?;
        Ok(Policy {
            hot_ns,
            warm_ns,
            rules,
            risk: file.risk.clone(),
            recorded,
        })
    }

    /// The index of the rule governing an event's payload, if any.
    pub fn rule_for(&self, entry: &EntryView<'_>) -> Option<usize> {
        let stage = Stage::of_kind(entry.kind).unwrap_or(Stage::Custom);
        let risk = entry
            .subject(SubjectField::Model)
            .and_then(|m| self.risk.get(m));
        self.rules.iter().position(|r| {
            r.stage.is_none_or(|s| s == stage)
                && r.kind.as_deref().is_none_or(|k| k == entry.kind)
                && r.risk.as_ref().is_none_or(|want| risk == Some(want))
        })
    }
}

impl Rule {
    fn check(n: usize, r: &RuleFile) -> Result<Rule, InputError> {
        let stage = r
            .stage
            .as_deref()
            .map(|s| {
                Stage::parse(s)
                    .ok_or_else(|| InputError(format!("retention rule {n}: unknown stage {s:?}")))
            })
            .transpose()?;
        let expire_ns = match r.expire.as_str() {
            "never" => None,
            age => Some(
                parse_age(age)
                    .map_err(|e| InputError(format!("retention rule {n}: expire: {}", e.0)))?,
            ),
        };
        let mut parts = Vec::new();
        if let Some(s) = &r.stage {
            parts.push(format!("stage={s}"));
        }
        if let Some(k) = &r.kind {
            parts.push(format!("kind={k}"));
        }
        if let Some(k) = &r.risk {
            parts.push(format!("risk={k}"));
        }
        if parts.is_empty() {
            parts.push("every event".into());
        }
        Ok(Rule {
            stage,
            kind: r.kind.clone(),
            risk: r.risk.clone(),
            expire_ns,
            text: format!("rule {n} ({}: expire {})", parts.join(" "), r.expire),
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "a unit test fails loudly")]
    use super::*;

    #[test]
    fn ages_need_a_number_and_a_unit() {
        assert_eq!(parse_age("90d").unwrap(), 90 * DAY_NS);
        assert_eq!(parse_age("1y").unwrap(), 365 * DAY_NS);
        assert_eq!(parse_age("36h").unwrap(), 36 * 3_600_000_000_000);
        for bad in ["", "d", "90", "0d", "-1d", "1.5d", "90 d", "9999999999999y"] {
            assert!(parse_age(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn warm_must_not_be_younger_than_hot_and_rules_are_checked() {
        let file = RetentionFile::default();
        assert!(Policy::resolve(&file, Some("30d"), Some("7d")).is_err());
        let p = Policy::resolve(&file, None, None).unwrap();
        assert_eq!((p.hot_ns, p.warm_ns), (90 * DAY_NS, 365 * DAY_NS));
        let bad = RetentionFile {
            rule: vec![RuleFile {
                stage: Some("predictions".into()),
                expire: "1y".into(),
                ..RuleFile::default()
            }],
            ..RetentionFile::default()
        };
        assert!(Policy::resolve(&bad, None, None).is_err());
    }
}
