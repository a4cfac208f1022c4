//! From a run's drift decision to an alert, exactly once per run.
//!
//! A lineage is a watcher and the baseline its checkpoints are compared with
//! (`watcher/baseline-spec`). Per lineage the store keeps whether it is
//! firing, the firing alerts of the current episode and the one still open
//! for grouping:
//!
//! - A drifted checkpoint opens a firing alert whose first delivery waits
//!   until `[alerting] group_window` has passed; further drifted checkpoints
//!   of the lineage decided inside that window join it (one message).
//! - A later checkpoint of a firing lineage that is back within the
//!   thresholds produces one resolved notice, to every target that was sent
//!   a firing alert of the episode, and ends the episode.
//!
//! Each decision is keyed by run id in the tree `alert_decisions` and written
//! in one sled transaction with the lineage state and the alert records, so
//! a run is turned into an alert at most once, whatever crashes when; runs
//! that completed without a decision (a crash between storing the run and
//! deciding) are decided on the next start.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::record::{
    AlertKind, AlertRecord, AlertRun, CategoryRow, Delivery, DeliveryStatus, MetricRow,
};
use super::routing::{self, Severity, Subject};
use super::target::TargetConfig;
use crate::report::Run;
use crate::safety_metrics::Metrics;

pub const DECISIONS: &str = crate::store::DECISIONS;
pub const LINEAGES: &str = crate::store::LINEAGES;

/// What became of one run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Decision {
    /// `opened`, `grouped`, `resolved` or `none`.
    pub action: String,
    pub alert: Option<String>,
    pub at: String,
}

/// A lineage's alerting state.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct LineageState {
    pub firing: bool,
    /// Firing alerts of the current episode, oldest first.
    pub episode: Vec<String>,
    /// The firing alert that drifted checkpoints may still join.
    pub open: Option<String>,
}

/// The lineage a run belongs to, when it was found by a watcher and compared
/// with a baseline.
pub fn lineage(doc: &Run) -> Option<String> {
    let watcher = doc.model.registry.as_deref()?;
    let base = doc.baseline.as_ref()?;
    Some(format!("{watcher}/{}", base.model.spec))
}

fn ci_delta(b: Option<f64>, c: Option<f64>) -> Option<f64> {
    Some(c? - b?)
}

/// The overall figures of a run against its baseline's, as an alert shows
/// them: the harm figures always, the others when either run has them.
fn metric_rows(m: &Metrics, bm: &Metrics) -> Vec<MetricRow> {
    let row = |name: &str, b: Option<f64>, c: Option<f64>, bci, cci| MetricRow {
        metric: name.into(),
        baseline: b,
        candidate: c,
        delta: ci_delta(b, c),
        baseline_ci95: bci,
        candidate_ci95: cci,
    };
    let mut metrics = vec![
        row(
            "harmfulness_rate",
            bm.harmfulness_rate,
            m.harmfulness_rate,
            bm.harmfulness_rate_ci95,
            m.harmfulness_rate_ci95,
        ),
        row(
            "harmfulness_score",
            bm.harmfulness_score,
            m.harmfulness_score,
            None,
            None,
        ),
        row("refusal_rate", bm.refusal_rate, m.refusal_rate, None, None),
    ];
    if m.over_refusal_rate.is_some() || bm.over_refusal_rate.is_some() {
        metrics.push(row(
            "over_refusal_rate",
            bm.over_refusal_rate,
            m.over_refusal_rate,
            None,
            None,
        ));
    }
    if m.misalignment_rate.is_some() || bm.misalignment_rate.is_some() {
        metrics.push(row(
            "misalignment_rate",
            bm.misalignment_rate,
            m.misalignment_rate,
            bm.misalignment_rate_ci95,
            m.misalignment_rate_ci95,
        ));
    }
    metrics
}

/// What an alert says about one run (never any model output).
pub fn summarize(doc: &Run, public_url: &str) -> AlertRun {
    let base = doc.baseline.as_deref();
    let bm = base.map(|b| b.metrics.clone()).unwrap_or_default();
    let m = &doc.metrics;
    let mut metrics = metric_rows(m, &bm);
    // Each attack's success rate, as the run and its baseline have it.
    for (attack, a) in &doc.probes.attacks {
        let b = base.and_then(|b| b.probes.attacks.get(attack));
        let rate = b.and_then(|b| b.attack_success_rate);
        metrics.push(MetricRow {
            metric: format!("attack_success_rate[{attack}]"),
            baseline: rate,
            candidate: a.attack_success_rate,
            delta: ci_delta(rate, a.attack_success_rate),
            baseline_ci95: b.and_then(|b| b.attack_success_rate_ci95),
            candidate_ci95: a.attack_success_rate_ci95,
        });
    }
    let findings = doc
        .drift
        .as_ref()
        .map(|d| d.findings.clone())
        .unwrap_or_default();
    let categories = doc
        .per_category
        .iter()
        .map(|(cat, c)| {
            let b = base.and_then(|b| b.per_category.get(cat));
            let f = findings
                .iter()
                .find(|f| f.category.as_deref() == Some(cat) && f.metric == "harmfulness_rate");
            CategoryRow {
                category: cat.clone(),
                n: c.n,
                baseline: b.and_then(|b| b.harmfulness_rate),
                candidate: c.harmfulness_rate,
                delta: ci_delta(b.and_then(|b| b.harmfulness_rate), c.harmfulness_rate),
                baseline_ci95: b.and_then(|b| b.harmfulness_rate_ci95),
                candidate_ci95: c.harmfulness_rate_ci95,
                p_adjusted: f.map(|f| f.p_adjusted),
                fired: f.is_some_and(|f| f.fired),
            }
        })
        .collect();
    let drifted = doc.drift.as_ref().is_some_and(|d| d.detected);
    let fired: Vec<_> = findings.into_iter().filter(|f| f.fired).collect();
    let checkpoint = doc.model.registry.as_ref().map(|w| {
        let model = doc
            .model
            .spec
            .split_once(':')
            .map_or(doc.model.spec.as_str(), |(_, m)| m);
        match &doc.model.revision {
            Some(r) => format!("{w}/{model}@{r}"),
            None => format!("{w}/{model}"),
        }
    });
    let base_url = public_url.trim_end_matches('/');
    AlertRun {
        run_id: doc.id.clone(),
        checkpoint,
        watcher: doc.model.registry.clone(),
        model: doc.model.spec.clone(),
        revision: doc.model.revision.clone(),
        baseline: base.map(|b| b.model.spec.clone()).unwrap_or_default(),
        baseline_run: base.map(|b| b.id.clone()),
        drifted,
        severity: Severity::of_findings(&fired).as_str().into(),
        metrics,
        categories,
        findings: fired,
        dashboard_url: format!("{base_url}/runs/{}", doc.id),
        api_url: format!("{base_url}/api/v1/runs/{}", doc.id),
        sequential: doc
            .drift
            .as_ref()
            .and_then(|d| d.sequential.as_ref())
            .map(sequential_line),
    }
}

/// One line on how a sequential run was decided.
pub fn sequential_line(s: &crate::records::Sequential) -> String {
    let why = match s.stopped.as_deref() {
        Some("drift") => "stopped early for drift",
        Some("no_drift") => "stopped early: no drift",
        _ => "asked to the end: the fixed tests decided",
    };
    let checks: Vec<String> = s
        .checks
        .iter()
        .map(|c| {
            format!(
                "{} {} (anytime-valid interval [{:+.3}, {:+.3}], e-value {:.3e})",
                c.metric,
                c.delta.map_or("n/a".into(), |d| format!("{d:+.3}")),
                c.interval[0],
                c.interval[1],
                c.e_value
            )
        })
        .collect();
    format!(
        "sequential: {} of {} prompts asked, {why}; {}",
        s.asked,
        s.planned,
        checks.join("; ")
    )
}

pub fn pending(next_attempt_ms: u64) -> Delivery {
    Delivery {
        status: DeliveryStatus::Pending,
        attempts: 0,
        last_error: None,
        next_attempt_ms,
        delivered_at: None,
    }
}

pub fn new_alert_id() -> String {
    format!("a_{}", ulid::Ulid::new().to_string().to_lowercase())
}

pub fn rfc3339(ms: u64) -> String {
    chrono::DateTime::<chrono::Utc>::from_timestamp_millis(ms as i64)
        .unwrap_or_default()
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

fn summary_line(kind: AlertKind, lineage: &str, runs: &[AlertRun]) -> String {
    match kind {
        AlertKind::Firing if runs.len() == 1 => {
            let r = &runs[0];
            let rev = r
                .revision
                .as_deref()
                .map(|v| format!("@{}", short(v)))
                .unwrap_or_default();
            format!("safety drift in {}{rev} against {}", r.model, r.baseline)
        }
        AlertKind::Firing => format!("safety drift in {} checkpoints of {lineage}", runs.len()),
        AlertKind::Resolved => {
            let r = runs.last();
            match r {
                Some(r) => format!(
                    "resolved: {} is back within the thresholds of {}",
                    r.model, r.baseline
                ),
                None => format!("resolved: {lineage}"),
            }
        }
        AlertKind::Test => "test message".into(),
        AlertKind::JudgeAudit => format!("local judge audit failed in {lineage}"),
    }
}

/// The first 12 characters of a revision hash.
pub fn short(rev: &str) -> &str {
    &rev[..rev.len().min(12)]
}

/// The pure part of a decision: given the lineage state and the alerts it
/// refers to, what to write. `get` looks an alert up by id.
pub struct Plan {
    pub decision: Decision,
    pub lineage: String,
    pub state: LineageState,
    pub records: Vec<AlertRecord>,
}

#[allow(clippy::too_many_arguments)]
pub fn decide(
    doc: &Run,
    lineage: &str,
    mut state: LineageState,
    get: &dyn Fn(&str) -> Option<AlertRecord>,
    targets: &BTreeMap<String, TargetConfig>,
    public_url: &str,
    window_ms: u64,
    now_ms: u64,
) -> Plan {
    let run = summarize(doc, public_url);
    let deciding = Deciding {
        lineage,
        get,
        targets,
        window_ms,
        now_ms,
        at: rfc3339(now_ms),
    };
    let mut records = Vec::new();
    let decision = if run.drifted {
        let (decision, rec) = deciding.fire(run, &mut state);
        records.push(rec);
        decision
    } else if state.firing {
        let (decision, rec) = deciding.resolve(run, &state);
        state = LineageState::default();
        records.push(rec);
        decision
    } else {
        Decision {
            action: "none".into(),
            alert: None,
            at: deciding.at,
        }
    };
    Plan {
        decision,
        lineage: lineage.into(),
        state,
        records,
    }
}

/// What one decision is taken with.
struct Deciding<'a> {
    lineage: &'a str,
    get: &'a dyn Fn(&str) -> Option<AlertRecord>,
    targets: &'a BTreeMap<String, TargetConfig>,
    window_ms: u64,
    now_ms: u64,
    at: String,
}

impl Deciding<'_> {
    fn decision(&self, action: &str, id: String) -> Decision {
        Decision {
            action: action.into(),
            alert: Some(id),
            at: self.at.clone(),
        }
    }

    /// A drifted run: joins the lineage's open alert while its window is
    /// open and nothing was sent, else opens a new one.
    fn fire(&self, run: AlertRun, state: &mut LineageState) -> (Decision, AlertRecord) {
        let severity = Severity::parse(&run.severity).unwrap_or(Severity::Info);
        let subject = Subject {
            watcher: run.watcher.as_deref(),
            spec: &run.model,
            revision: run.revision.as_deref(),
            severity,
        };
        let routed: Vec<&String> = self
            .targets
            .iter()
            .filter(|(_, t)| routing::matches(t, &subject))
            .map(|(n, _)| n)
            .collect();
        let open = state.open.as_deref().and_then(self.get).filter(|r| {
            r.kind == AlertKind::Firing
                && self.now_ms < r.created_ms + self.window_ms
                && r.deliveries
                    .values()
                    .all(|d| d.status == DeliveryStatus::Pending && d.attempts == 0)
        });
        match open {
            Some(rec) => self.group(rec, run, severity, routed),
            None => self.open(run, severity, routed, state),
        }
    }

    /// The run joins the open alert `rec`.
    fn group(
        &self,
        mut rec: AlertRecord,
        run: AlertRun,
        severity: Severity,
        routed: Vec<&String>,
    ) -> (Decision, AlertRecord) {
        let group_severity = Severity::parse(&rec.severity)
            .unwrap_or(Severity::Info)
            .max(severity);
        rec.severity = group_severity.as_str().into();
        rec.run_ids.push(run.run_id.clone());
        rec.models.push(model_name(&run));
        for t in routed {
            rec.deliveries
                .entry(t.clone())
                .or_insert_with(|| pending(rec.created_ms + self.window_ms));
        }
        rec.runs.push(run);
        rec.summary = summary_line(AlertKind::Firing, self.lineage, &rec.runs);
        let id = rec.id.clone();
        (self.decision("grouped", id), rec)
    }

    /// The run opens a new alert (and, if none was firing, an episode).
    fn open(
        &self,
        run: AlertRun,
        severity: Severity,
        routed: Vec<&String>,
        state: &mut LineageState,
    ) -> (Decision, AlertRecord) {
        let id = new_alert_id();
        let runs = vec![run];
        let rec = AlertRecord {
            id: id.clone(),
            kind: AlertKind::Firing,
            lineage: self.lineage.into(),
            severity: severity.as_str().into(),
            summary: summary_line(AlertKind::Firing, self.lineage, &runs),
            run_ids: vec![runs[0].run_id.clone()],
            models: vec![model_name(&runs[0])],
            created_at: self.at.clone(),
            deliveries: routed
                .into_iter()
                .map(|t| (t.clone(), pending(self.now_ms + self.window_ms)))
                .collect(),
            created_ms: self.now_ms,
            runs,
            resolves: vec![],
        };
        state.firing = true;
        state.episode.push(id.clone());
        state.open = Some(id.clone());
        (self.decision("opened", id), rec)
    }

    /// A run back within the thresholds while the lineage was firing: the
    /// resolved message, to the episode's targets.
    fn resolve(&self, run: AlertRun, state: &LineageState) -> (Decision, AlertRecord) {
        let episode: Vec<AlertRecord> = state
            .episode
            .iter()
            .filter_map(|id| (self.get)(id))
            .collect();
        let severity = episode
            .iter()
            .filter_map(|r| Severity::parse(&r.severity))
            .max()
            .unwrap_or(Severity::Info);
        // Not before the episode's own messages are due.
        let due = episode
            .iter()
            .flat_map(|r| r.deliveries.values().map(|d| d.next_attempt_ms))
            .max()
            .unwrap_or(0)
            .max(self.now_ms);
        let mut deliveries = BTreeMap::new();
        for r in &episode {
            for t in r.deliveries.keys() {
                if self.targets.contains_key(t) {
                    deliveries.insert(t.clone(), pending(due));
                }
            }
        }
        let id = new_alert_id();
        let runs = vec![run];
        let rec = AlertRecord {
            id: id.clone(),
            kind: AlertKind::Resolved,
            lineage: self.lineage.into(),
            severity: severity.as_str().into(),
            summary: summary_line(AlertKind::Resolved, self.lineage, &runs),
            run_ids: vec![runs[0].run_id.clone()],
            models: vec![model_name(&runs[0])],
            created_at: self.at.clone(),
            deliveries,
            created_ms: self.now_ms,
            runs,
            resolves: state.episode.clone(),
        };
        (self.decision("resolved", id), rec)
    }
}

fn model_name(run: &AlertRun) -> String {
    match &run.revision {
        Some(r) => format!("{}@{r}", run.model),
        None => run.model.clone(),
    }
}

#[cfg(test)]
mod tests;
