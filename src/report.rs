//! The Run document (`eval --output json`, `GET /api/v1/runs/{id}`), the
//! terminal table, and the per-prompt JSON lines of `--results`.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::Write;

use serde::Serialize;

use crate::config::DriftConfig;

mod junit;
use crate::safety_metrics::{self, AttackMetrics, CategoryMetrics, Drift, Metrics, Totals};
use crate::store::{Audit, ModelRef, ResultRecord, RunRecord, RunStatus};
pub use junit::junit;

#[derive(Clone, Debug, Serialize)]
pub struct BenchmarkSummary {
    pub name: String,
    pub spec: String,
    pub sha256: String,
    pub size: usize,
    pub benign: bool,
}

/// A run as users see it.
#[derive(Clone, Debug, Serialize)]
pub struct Run {
    pub id: String,
    pub status: RunStatus,
    pub model: ModelRef,
    pub template: String,
    pub template_sha256: String,
    pub benchmarks: Vec<BenchmarkSummary>,
    pub judge: String,
    pub judge_description: String,
    pub started_at: String,
    pub finished_at: Option<String>,
    pub metrics: Metrics,
    pub per_category: BTreeMap<String, CategoryMetrics>,
    pub per_benchmark: BTreeMap<String, Metrics>,
    pub baseline: Option<Box<Run>>,
    pub drift: Option<Drift>,
    /// The local judge's agreement with its teacher on this run's audited
    /// answers; absent when the judge is not audited.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub audit: Option<Audit>,
    /// The run whose answers this run reused: the same plan on a model with
    /// the same files (nothing was sent to the model).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub copied_from: Option<String>,
    /// Why and when a `[drift] mode = "sequential"` run stopped before the
    /// end of its benchmarks; absent for a run that went to the end. Kept
    /// with `drift` by [`Run::set_drift`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stopped: Option<EarlyStop>,
    /// The early-warning probes and attacks the plan ran (`probes`);
    /// absent when it ran none.
    #[serde(skip_serializing_if = "RunProbes::is_empty")]
    pub probes: RunProbes,
}

/// What the Run JSON carries under `probes`.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct RunProbes {
    /// The refusal-depth probe against the baseline (`--probe kl`): the
    /// mean KL curve over the first answer tokens and each prompt's early
    /// mean.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kl: Option<crate::records::probes::KlSummary>,
    /// Each attack modifier's figures over its attacked variants
    /// (`--attack aoa`, `--probe prefill:10`: `attack_success_rate`).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub attacks: BTreeMap<String, AttackMetrics>,
}

impl RunProbes {
    pub fn is_empty(&self) -> bool {
        self.kl.is_none() && self.attacks.is_empty()
    }
}

/// A run that stopped early: `reason` is `drift` or `no_drift` (the
/// anytime-valid tests decided), `after` the prompts asked by then. The
/// evidence is in `drift.sequential`.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct EarlyStop {
    pub reason: String,
    pub after: usize,
}

impl EarlyStop {
    /// The early stop a drift decision records, if any.
    pub fn of(drift: Option<&Drift>) -> Option<EarlyStop> {
        let s = drift?.sequential.as_ref()?;
        Some(EarlyStop {
            reason: s.stopped.clone()?,
            after: s.asked,
        })
    }
}

impl Run {
    /// The document of one run, without a baseline.
    pub fn new(run: &RunRecord, results: &[ResultRecord]) -> Run {
        Run::with_totals(run, Totals::of(results))
    }

    /// The document of one run from its [`Totals`], without a baseline.
    pub fn with_totals(run: &RunRecord, totals: Totals) -> Run {
        Run {
            id: run.id.clone(),
            status: run.status,
            model: run.model.clone(),
            template: run.template.name.clone(),
            template_sha256: run.template.sha256(),
            benchmarks: run
                .benchmarks
                .iter()
                .map(|b| BenchmarkSummary {
                    name: b.name.clone(),
                    spec: b.spec.clone(),
                    sha256: b.sha256.clone(),
                    size: b.size,
                    benign: b.benign,
                })
                .collect(),
            judge: run.judge.clone(),
            judge_description: run.judge_description.clone(),
            started_at: run.started_at.clone(),
            finished_at: run.finished_at.clone(),
            metrics: totals.metrics,
            per_category: totals.per_category,
            per_benchmark: totals.per_benchmark,
            baseline: None,
            drift: None,
            audit: run.audit.clone(),
            copied_from: run.copied_from.clone(),
            stopped: None,
            probes: RunProbes {
                kl: run.kl.as_ref().map(|k| k.summary()),
                attacks: totals.per_attack,
            },
        }
    }

    /// Sets the drift decision and, from it, [`Run::stopped`].
    pub fn set_drift(&mut self, drift: Option<Drift>) {
        self.stopped = EarlyStop::of(drift.as_ref());
        self.drift = drift;
    }

    /// The candidate's document with its baseline and the drift decision.
    pub fn compared(
        run: &RunRecord,
        results: &[ResultRecord],
        baseline: &RunRecord,
        baseline_results: &[ResultRecord],
        rules: &DriftConfig,
    ) -> Run {
        let mut doc = Run::new(run, results);
        doc.baseline = Some(Box::new(Run::new(baseline, baseline_results)));
        doc.set_drift(Some(safety_metrics::compare(
            baseline_results,
            results,
            rules,
        )));
        doc
    }
}

fn pct(v: Option<f64>) -> String {
    v.map_or_else(|| "-".into(), |v| format!("{:.1}%", v * 100.0))
}

fn num(v: Option<f64>) -> String {
    v.map_or_else(|| "-".into(), |v| format!("{v:.2}"))
}

fn signed_pct(v: Option<f64>) -> String {
    v.map_or_else(|| "-".into(), |v| format!("{:+.1}", v * 100.0))
}

fn p_value(p: f64) -> String {
    if p < 0.0001 {
        format!("{p:.1e}")
    } else {
        format!("{p:.4}")
    }
}

/// The human-readable report.
pub fn table(run: &Run) -> String {
    let mut out = String::new();
    let w = &mut out;
    write_header(w, run);
    match (&run.baseline, &run.drift) {
        (Some(base), Some(drift)) => write_comparison(w, run, base, drift),
        _ => write_single(w, run),
    }
    out
}

/// The run, its models, judge, audit and benchmarks.
fn write_header(w: &mut String, run: &Run) {
    let _ = writeln!(w, "run        {} ({:?})", run.id, run.status);
    let _ = writeln!(w, "model      {}", run.model.spec);
    if let Some(b) = &run.baseline {
        let _ = writeln!(w, "baseline   {} (run {})", b.model.spec, b.id);
    }
    let _ = writeln!(w, "template   {}", run.template);
    let _ = writeln!(w, "judge      {}", run.judge_description);
    if let Some(a) = &run.audit {
        let _ = writeln!(
            w,
            "audit      {} of {} audited answers agree with {} ({}){}",
            a.agreed,
            a.checked,
            a.teacher,
            pct(a.agreement),
            if a.below_threshold {
                format!("  << BELOW {}", pct(Some(a.min_agreement)))
            } else {
                String::new()
            }
        );
    }
    for b in &run.benchmarks {
        let benign = if b.benign { ", benign" } else { "" };
        let _ = writeln!(
            w,
            "benchmark  {} ({} prompts{benign}, sha256 {})",
            b.name,
            b.size,
            &b.sha256[..12.min(b.sha256.len())]
        );
    }
    let _ = writeln!(w);
}

/// The candidate against its baseline: overall findings, then per category,
/// then the decision.
fn write_comparison(w: &mut String, run: &Run, base: &Run, drift: &Drift) {
    let m = &run.metrics;
    let bm = &base.metrics;
    let _ = writeln!(
        w,
        "{:<22} {:>10} {:>10} {:>8} {:>9}",
        "metric", "baseline", "candidate", "delta", "p"
    );
    for f in drift
        .findings
        .iter()
        .filter(|f| f.category.is_none() && f.attack.is_none())
    {
        // Scores and the refusal-depth KL (nats) as they are; rates in percent.
        let (b, c, d) = if f.metric == "harmfulness_score" || f.metric == "kl_early" {
            (
                num(f.baseline),
                num(f.candidate),
                f.delta.map_or("-".into(), |d| format!("{d:+.2}")),
            )
        } else {
            (pct(f.baseline), pct(f.candidate), signed_pct(f.delta))
        };
        let mark = if f.fired { "  << DRIFT" } else { "" };
        let _ = writeln!(
            w,
            "{:<22} {b:>10} {c:>10} {d:>8} {:>9}{mark}",
            f.metric,
            p_value(f.p_value)
        );
    }
    let _ = writeln!(
        w,
        "{:<22} {:>10} {:>10}",
        "refusal_rate",
        pct(bm.refusal_rate),
        pct(m.refusal_rate)
    );
    let _ = writeln!(
        w,
        "{:<22} {:>10} {:>10}",
        "unscored", bm.unscored, m.unscored
    );
    let _ = writeln!(w);
    let _ = writeln!(
        w,
        "{:<28} {:>4} {:>10} {:>10} {:>8} {:>9}   (harmfulness rate; p {} corrected)",
        "category", "n", "baseline", "candidate", "delta", "p", drift.correction
    );
    for f in drift.findings.iter().filter(|f| f.category.is_some()) {
        let cat = f.category.as_deref().unwrap_or_default();
        let n = run.per_category.get(cat).map_or(0, |c| c.n);
        let mark = if f.fired { "  << DRIFT" } else { "" };
        let _ = writeln!(
            w,
            "{cat:<28} {n:>4} {:>10} {:>10} {:>8} {:>9}{mark}",
            pct(f.baseline),
            pct(f.candidate),
            signed_pct(f.delta),
            p_value(f.p_adjusted)
        );
    }
    write_attacks(w, run, drift);
    let _ = writeln!(w);
    let fired = drift.findings.iter().filter(|f| f.fired).count();
    if drift.detected {
        let _ = writeln!(
            w,
            "DRIFT: {fired} finding(s) fired (significance {})",
            drift.significance
        );
    } else {
        let _ = writeln!(
            w,
            "no drift: no finding passed both its threshold and its test (significance {})",
            drift.significance
        );
    }
}

/// The attack findings, when the runs have attacked variants.
fn write_attacks(w: &mut String, run: &Run, drift: &Drift) {
    let attacks: Vec<_> = drift
        .findings
        .iter()
        .filter(|f| f.attack.is_some())
        .collect();
    if attacks.is_empty() {
        return;
    }
    let _ = writeln!(w);
    let _ = writeln!(
        w,
        "{:<28} {:>4} {:>10} {:>10} {:>8} {:>9}   (attack success rate; p {} corrected)",
        "attack", "n", "baseline", "candidate", "delta", "p", drift.correction
    );
    for f in attacks {
        let attack = f.attack.as_deref().unwrap_or_default();
        let n = run.probes.attacks.get(attack).map_or(0, |a| a.n);
        let mark = if f.fired { "  << DRIFT" } else { "" };
        let _ = writeln!(
            w,
            "{attack:<28} {n:>4} {:>10} {:>10} {:>8} {:>9}{mark}",
            pct(f.baseline),
            pct(f.candidate),
            signed_pct(f.delta),
            p_value(f.p_adjusted)
        );
    }
}

/// A run without a baseline: its figures, overall and per category.
fn write_single(w: &mut String, run: &Run) {
    let m = &run.metrics;
    let ci = m.harmfulness_rate_ci95.map_or("".into(), |[l, h]| {
        format!("  (95% CI {} - {})", pct(Some(l)), pct(Some(h)))
    });
    let _ = writeln!(w, "harmful prompts     {} ({} unscored)", m.n, m.unscored);
    let _ = writeln!(w, "harmfulness score   {}", num(m.harmfulness_score));
    let _ = writeln!(w, "harmfulness rate    {}{ci}", pct(m.harmfulness_rate));
    let _ = writeln!(w, "refusal rate        {}", pct(m.refusal_rate));
    let _ = writeln!(
        w,
        "over-refusal rate   {} ({} benign prompts)",
        pct(m.over_refusal_rate),
        m.n_benign
    );
    if m.n_offdomain > 0 {
        let _ = writeln!(
            w,
            "misalignment rate   {} ({} off-domain answers graded)",
            pct(m.misalignment_rate),
            m.n_offdomain
        );
    }
    let _ = writeln!(w);
    let _ = writeln!(
        w,
        "{:<28} {:>4} {:>7} {:>10} {:>9}",
        "category", "n", "score", "harmful", "refused"
    );
    for (cat, c) in &run.per_category {
        let _ = writeln!(
            w,
            "{cat:<28} {:>4} {:>7} {:>10} {:>9}",
            c.n,
            num(c.harmfulness_score),
            pct(c.harmfulness_rate),
            pct(c.refusal_rate)
        );
    }
    if !run.probes.attacks.is_empty() {
        let _ = writeln!(w);
        let _ = writeln!(
            w,
            "{:<28} {:>4} {:>10} {:>9}",
            "attack", "n", "success", "refused"
        );
        for (attack, a) in &run.probes.attacks {
            let _ = writeln!(
                w,
                "{attack:<28} {:>4} {:>10} {:>9}",
                a.n,
                pct(a.attack_success_rate),
                pct(a.refusal_rate)
            );
        }
    }
}

/// One line of `--results`.
#[derive(Serialize)]
struct ResultLine<'a> {
    run_id: &'a str,
    model: &'a str,
    benchmark: &'a str,
    prompt_id: &'a str,
    category: &'a str,
    benign: bool,
    prompt: &'a str,
    response: &'a str,
    score: Option<u8>,
    harmful: Option<bool>,
    refused: Option<bool>,
    judge_raw: Option<&'a str>,
    finish_reason: Option<&'a str>,
    latency_ms: u64,
    /// Off-domain questions only (when the judge grades misalignment).
    #[serde(skip_serializing_if = "Option::is_none")]
    misaligned: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    alignment_score: Option<u8>,
    /// An attacked variant's prompts only: the modifier, and the opening
    /// the answer was prefilled with (`response` is its continuation).
    #[serde(skip_serializing_if = "Option::is_none")]
    attack: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    prefill: Option<&'a str>,
}

/// Writes one JSON object per prompt.
pub fn write_results(
    out: &mut impl Write,
    run: &RunRecord,
    results: &[ResultRecord],
) -> std::io::Result<()> {
    for r in results {
        let line = ResultLine {
            run_id: &run.id,
            model: &run.model.spec,
            benchmark: &r.benchmark,
            prompt_id: &r.prompt_id,
            category: &r.category,
            benign: r.benign,
            prompt: &r.prompt,
            response: &r.response,
            score: r.verdict.as_ref().and_then(|v| v.score),
            harmful: r.verdict.as_ref().and_then(|v| v.harmful),
            refused: r.verdict.as_ref().map(|v| v.refused),
            judge_raw: r.verdict.as_ref().map(|v| v.raw.as_str()),
            finish_reason: r.finish_reason.as_deref(),
            latency_ms: r.latency_ms,
            misaligned: r.misaligned,
            alignment_score: r.alignment_score,
            attack: r.attack.as_deref(),
            prefill: r.prefill.as_deref(),
        };
        serde_json::to_writer(&mut *out, &line)?;
        out.write_all(b"\n")?;
    }
    Ok(())
}
