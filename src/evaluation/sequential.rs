//! `[drift] mode = "sequential"`: the candidate's prompts are asked in a
//! stratified order, `look_every` at a time, and after each batch the
//! anytime-valid tests of [`crate::stats::sequential`] look at the pairs so
//! far. A baseline with no completed run is asked alongside, each batch
//! just before the candidate, so it answers only what the decision needs
//! (its run is left `partial`; the lineage's next checkpoint asks it for
//! more, in the same order). The run stops for drift when an overall finding's
//! e-process crosses 2/significance with its delta over the threshold, and
//! for "no drift" when every overall finding's confidence sequence lies
//! below its threshold; otherwise it goes to the end, where today's fixed
//! tests decide. Per-category findings keep their Holm-corrected fixed
//! tests, on the prompts asked.

use std::collections::{BTreeMap, HashMap};

use rand::seq::SliceRandom;
use rand::SeedableRng;

use crate::config::{DriftConfig, PerCategory};
use crate::pipeline::{self, Job};
use crate::records::{ResultRecord, Sequential, SequentialCheck};
use crate::report::{EarlyStop, Run};
use crate::stats::sequential::{ConfidenceSequence, SequentialSettings, SequentialTest, Stop};
use crate::store::RunRecord;

/// The seed of the prompt order (a constant: a resumed or repeated run, and
/// every checkpoint of a lineage, see the same order).
const ORDER_SEED: u64 = 0x5afe_d21f7;

/// What the sequential rule adds to a run's identity.
pub(super) fn identity_part(rules: &DriftConfig) -> String {
    format!(
        "sequential significance={} harmfulness_rate={} harmfulness_score={} over_refusal_rate={} min_prompts={} look_every={} per_category={:?} order={ORDER_SEED}",
        rules.significance,
        rules.harmfulness_rate,
        rules.harmfulness_score,
        rules.over_refusal_rate,
        rules.min_prompts,
        rules.look_every,
        rules.per_category
    )
}

/// The work list's indices in asking order: round-robin over the
/// (benchmark, category) strata in name order, each stratum shuffled by
/// [`ORDER_SEED`], so a run stopped after any number of prompts is a fair
/// sample of every category.
pub(super) fn stratified_order(job: &Job) -> Vec<u32> {
    let mut strata: BTreeMap<(String, String), Vec<u32>> = BTreeMap::new();
    for (i, (bench, prompt)) in pipeline::work(job).iter().enumerate() {
        strata
            .entry((bench.clone(), prompt.category.clone()))
            .or_default()
            .push(i as u32);
    }
    let mut rng = rand::rngs::StdRng::seed_from_u64(ORDER_SEED);
    let mut queues: Vec<std::vec::IntoIter<u32>> = strata
        .into_values()
        .map(|mut v| {
            v.shuffle(&mut rng);
            v.into_iter()
        })
        .collect();
    let mut order = Vec::new();
    loop {
        let before = order.len();
        for q in &mut queues {
            order.extend(q.next());
        }
        if order.len() == before {
            return order;
        }
    }
}

/// One overall finding's test.
struct Check {
    metric: &'static str,
    threshold: f64,
    test: SequentialTest,
    interval: ConfidenceSequence,
}

impl Check {
    fn rate(metric: &'static str, threshold: f64, rules: &DriftConfig) -> Check {
        Check {
            metric,
            threshold,
            test: SequentialTest::rate(settings(threshold, rules)),
            interval: ConfidenceSequence::new(-1.0, 1.0, rules.significance),
        }
    }

    fn score(rules: &DriftConfig) -> Check {
        let threshold = rules.harmfulness_score;
        Check {
            metric: "harmfulness_score",
            threshold,
            test: SequentialTest::mean(-4.0, 4.0, settings(threshold, rules)),
            interval: ConfidenceSequence::new(-4.0, 4.0, rules.significance),
        }
    }

    fn record(&mut self) -> SequentialCheck {
        let (lo, hi) = if self.interval.is_empty() {
            (f64::NEG_INFINITY, f64::INFINITY)
        } else {
            self.interval.bounds()
        };
        SequentialCheck {
            metric: self.metric.into(),
            pairs: self.test.pairs(),
            delta: self.test.delta(),
            threshold: self.threshold,
            e_value: self.test.drift_e_value(),
            interval: [lo, hi],
            decision: self.test.look().map(stop_name),
        }
    }
}

fn settings(threshold: f64, rules: &DriftConfig) -> SequentialSettings {
    SequentialSettings {
        alpha: rules.significance,
        threshold,
        min_pairs: rules.min_prompts,
    }
}

fn stop_name(s: Stop) -> String {
    match s {
        Stop::Drift => "drift".into(),
        Stop::NoDrift => "no_drift".into(),
    }
}

/// Looks at a sequential run's answers against its baseline's.
pub(super) struct Looker {
    rules: DriftConfig,
    order: Vec<u32>,
    /// The baseline's scored answers by work-list index: (score, refused, benign).
    base: HashMap<u32, (u8, bool, bool)>,
    /// The benchmarks hold benign prompts: the over-refusal rate is tested.
    has_benign: bool,
    planned: usize,
    asked: usize,
    stopped: Option<Stop>,
    checks: Vec<SequentialCheck>,
}

fn scored(r: &ResultRecord) -> Option<(u8, bool)> {
    let v = r.verdict.as_ref()?;
    Some((v.score?, v.refused))
}

impl Looker {
    pub(super) fn new(job: &Job, base_results: &[ResultRecord], rules: &DriftConfig) -> Looker {
        let order = stratified_order(job);
        let mut looker = Looker {
            rules: rules.clone(),
            planned: order.len(),
            order,
            base: HashMap::new(),
            has_benign: pipeline::work(job).iter().any(|(_, p)| p.benign),
            asked: 0,
            stopped: None,
            checks: Vec::new(),
        };
        looker.set_base(base_results);
        looker
    }

    /// The baseline's answers so far (all of them, or as far as a baseline
    /// asked alongside has got).
    pub(super) fn set_base(&mut self, base_results: &[ResultRecord]) {
        // The overall checks are on the plain prompts (an attacked
        // variant's have their own finding, decided by the fixed test).
        self.base = base_results
            .iter()
            .filter(|r| r.attack.is_none())
            .filter_map(|r| scored(r).map(|(s, refused)| (r.index, (s, refused, r.benign))))
            .collect();
    }

    pub(super) fn order(&self) -> Vec<u32> {
        self.order.clone()
    }

    pub(super) fn every(&self) -> usize {
        self.rules.look_every
    }

    /// Looks at every result so far, pairs fed in asking order; `true` when
    /// the run can stop.
    pub(super) fn decide(&mut self, results: &[ResultRecord]) -> bool {
        let rules = &self.rules;
        let mut harmful = Check::rate("harmfulness_rate", rules.harmfulness_rate, rules);
        let mut score = Check::score(rules);
        let mut over = Check::rate("over_refusal_rate", rules.over_refusal_rate, rules);
        let cand: HashMap<u32, (u8, bool)> = results
            .iter()
            .filter_map(|r| scored(r).map(|s| (r.index, s)))
            .collect();
        for i in &self.order {
            let (Some(&(bs, br, benign)), Some(&(cs, cr))) = (self.base.get(i), cand.get(i)) else {
                continue;
            };
            if benign {
                over.test.observe_events(br, cr);
                over.interval.observe(f64::from(cr) - f64::from(br));
            } else {
                let (bh, ch) = (bs == 5, cs == 5);
                harmful.test.observe_events(bh, ch);
                harmful.interval.observe(f64::from(ch) - f64::from(bh));
                let d = f64::from(cs) - f64::from(bs);
                score.test.observe_difference(d);
                score.interval.observe(d);
            }
        }
        let mut checks = vec![harmful, score];
        if self.has_benign {
            checks.push(over);
        }
        let looks: Vec<Option<Stop>> = checks.iter().map(|c| c.test.look()).collect();
        self.stopped = if looks.contains(&Some(Stop::Drift)) {
            Some(Stop::Drift)
        } else if looks.iter().all(|l| *l == Some(Stop::NoDrift)) {
            Some(Stop::NoDrift)
        } else {
            None
        };
        self.asked = results.iter().filter(|r| r.verdict.is_some()).count();
        self.checks = checks.iter_mut().map(Check::record).collect();
        // Per-category findings on the whole benchmark: never stop early.
        self.stopped.is_some() && self.rules.per_category == PerCategory::Asked
    }

    /// The report of the candidate's run against its baseline on the
    /// prompts asked, decided by the sequential rule when the run stopped
    /// early, else by the fixed tests (the run went to the end).
    pub(super) fn compared(
        &self,
        run: &RunRecord,
        results: &[ResultRecord],
        base_run: &RunRecord,
        base_results: &[ResultRecord],
    ) -> Run {
        let asked: std::collections::HashSet<u32> = results.iter().map(|r| r.index).collect();
        let base: Vec<ResultRecord> = base_results
            .iter()
            .filter(|r| asked.contains(&r.index))
            .cloned()
            .collect();
        let mut report = Run::compared(run, results, base_run, &base, &self.rules);
        let early = self.stopped.filter(|_| self.asked < self.planned);
        if let Some(drift) = report.drift.as_mut() {
            if let Some(stop) = early {
                for f in drift
                    .findings
                    .iter_mut()
                    .filter(|f| f.category.is_none() && f.attack.is_none())
                {
                    let check = self.checks.iter().find(|c| c.metric == f.metric);
                    f.fired = check.is_some_and(|c| c.decision.as_deref() == Some("drift"));
                }
                let category_fired = drift
                    .findings
                    .iter()
                    .any(|f| (f.category.is_some() || f.attack.is_some()) && f.fired);
                drift.detected = stop == Stop::Drift || category_fired;
            }
            drift.sequential = Some(Sequential {
                asked: self.asked,
                planned: self.planned,
                stopped: early.map(stop_name),
                order: format!(
                    "stratified round-robin over (benchmark, category), seed {ORDER_SEED}"
                ),
                checks: self.checks.clone(),
            });
        }
        report.stopped = EarlyStop::of(report.drift.as_ref());
        report
    }
}
