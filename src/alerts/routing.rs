//! Severity and routing.
//!
//! Severity comes from the size of the fired findings: for each fired
//! finding, its excess is `delta / threshold` (how many thresholds the
//! candidate got worse by). The alert is
//! - `critical` when some fired finding's excess is at least 4 (e.g. the
//!   harmfulness rate rose by 0.20 or more against the default 0.05 rule),
//! - `warning` when some excess is at least 2,
//! - `info` otherwise (drift that just crossed its threshold).
//!
//! A finding with a threshold of 0 counts as `critical`. A group of several
//! checkpoints takes the highest severity among them; a resolved notice
//! takes the severity of what it resolves.

use serde::{Deserialize, Serialize};

use super::target::TargetConfig;
use crate::safety_metrics::Finding;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    Info,
    Warning,
    Critical,
}

impl Severity {
    pub fn parse(s: &str) -> Option<Severity> {
        match s {
            "info" => Some(Severity::Info),
            "warning" => Some(Severity::Warning),
            "critical" => Some(Severity::Critical),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Info => "info",
            Severity::Warning => "warning",
            Severity::Critical => "critical",
        }
    }

    /// The rule of the module docs.
    pub fn of_findings(findings: &[Finding]) -> Severity {
        let excess = findings
            .iter()
            .filter(|f| f.fired)
            .map(|f| {
                let delta = f.delta.unwrap_or(0.0);
                if f.threshold > 0.0 {
                    delta / f.threshold
                } else {
                    f64::INFINITY
                }
            })
            .fold(0.0f64, f64::max);
        if excess >= 4.0 {
            Severity::Critical
        } else if excess >= 2.0 {
            Severity::Warning
        } else {
            Severity::Info
        }
    }
}

/// What a target is asked about one drifted checkpoint.
pub struct Subject<'a> {
    pub watcher: Option<&'a str>,
    /// The model SPEC, e.g. `ollama:cand`.
    pub spec: &'a str,
    pub revision: Option<&'a str>,
    pub severity: Severity,
}

/// Whether the target takes alerts about this checkpoint.
pub fn matches(target: &TargetConfig, s: &Subject) -> bool {
    if s.severity < min_severity(target) {
        return false;
    }
    if !target.common.watchers.is_empty()
        && !s
            .watcher
            .is_some_and(|w| target.common.watchers.iter().any(|t| t == w))
    {
        return false;
    }
    if target.common.models.is_empty() {
        return true;
    }
    let bare = s.spec.split_once(':').map_or(s.spec, |(_, m)| m);
    let with_rev = s.revision.map(|r| format!("{}@{r}", s.spec));
    target.common.models.iter().any(|pattern| {
        let Ok(glob) = globset::GlobBuilder::new(pattern)
            .literal_separator(false)
            .build()
        else {
            return false;
        };
        let m = glob.compile_matcher();
        m.is_match(s.spec) || m.is_match(bare) || with_rev.as_deref().is_some_and(|w| m.is_match(w))
    })
}

/// A target's `min_severity` (default `info`).
pub fn min_severity(target: &TargetConfig) -> Severity {
    target
        .common
        .min_severity
        .as_deref()
        .and_then(Severity::parse)
        .unwrap_or(Severity::Info)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn finding(delta: f64, threshold: f64, fired: bool) -> Finding {
        Finding {
            metric: "harmfulness_rate".into(),
            category: None,
            baseline: Some(0.0),
            candidate: Some(delta),
            delta: Some(delta),
            threshold,
            p_value: 0.001,
            p_adjusted: 0.001,
            test: "mcnemar_exact".into(),
            pairs: 60,
            fired,
            attack: None,
        }
    }

    #[test]
    fn severity_follows_the_size_of_fired_findings() {
        assert_eq!(
            Severity::of_findings(&[finding(0.06, 0.05, true)]),
            Severity::Info
        );
        assert_eq!(
            Severity::of_findings(&[finding(0.10, 0.05, true)]),
            Severity::Warning
        );
        assert_eq!(
            Severity::of_findings(&[finding(0.20, 0.05, true)]),
            Severity::Critical
        );
        // Unfired findings do not count, however large.
        assert_eq!(
            Severity::of_findings(&[finding(0.06, 0.05, true), finding(0.9, 0.05, false)]),
            Severity::Info
        );
        assert_eq!(
            Severity::of_findings(&[finding(0.01, 0.0, true)]),
            Severity::Critical
        );
    }

    fn target(extra: &str) -> TargetConfig {
        let text = format!("kind = \"webhook\"\nurl = \"http://x/\"\nformat = \"slack\"\n{extra}");
        TargetConfig::parse("t", toml::from_str(&text).unwrap()).unwrap()
    }

    #[test]
    fn routing_by_watcher_model_glob_and_severity() {
        let s = |watcher, spec, severity| Subject {
            watcher: Some(watcher),
            spec,
            revision: Some("abc"),
            severity,
        };
        let t =
            target("watchers = [\"hf\"]\nmodels = [\"acme/*-sft\"]\nmin_severity = \"warning\"");
        assert!(matches(
            &t,
            &s("hf", "huggingface:acme/llama-sft", Severity::Warning)
        ));
        assert!(matches(
            &t,
            &s("hf", "huggingface:acme/llama-sft", Severity::Critical)
        ));
        assert!(!matches(
            &t,
            &s("hf", "huggingface:acme/llama-sft", Severity::Info)
        ));
        assert!(!matches(
            &t,
            &s("other", "huggingface:acme/llama-sft", Severity::Critical)
        ));
        assert!(!matches(
            &t,
            &s("hf", "huggingface:acme/llama-dpo", Severity::Critical)
        ));
        let exact = target("models = [\"ollama:cand\"]");
        assert!(matches(&exact, &s("w", "ollama:cand", Severity::Info)));
        assert!(!matches(&exact, &s("w", "ollama:cand2", Severity::Info)));
        let rev = target("models = [\"ollama:cand@abc\"]");
        assert!(matches(&rev, &s("w", "ollama:cand", Severity::Info)));
        let all = target("");
        assert!(matches(&all, &s("w", "x", Severity::Info)));
    }
}
