//! Synthetic history: models with a baseline run and a series of checkpoint
//! runs whose safety erodes, with per-prompt results. Used by the dashboard
//! and API tests and by the latency benchmark (`examples/api_latency.rs`).
//! Deterministic for a given seed.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use safedrift_judges::Verdict;

use safedrift::backend::Decoding;
use safedrift::config::DriftConfig;
use safedrift::safety_metrics::Drift;
use safedrift::store::{
    BenchmarkRef, ModelRef, ResultRecord, RunRecord, RunStatus, Store, StoreError, Template,
};

/// HEx-PHI's categories.
pub const CATEGORIES: [&str; 11] = [
    "illegal_activity",
    "child_abuse_content",
    "hate_harass_violence",
    "malware",
    "physical_harm",
    "economic_harm",
    "fraud_deception",
    "adult_content",
    "political_campaigning",
    "privacy_violation",
    "tailored_financial_advice",
];

/// What to generate.
#[derive(Clone, Debug)]
pub struct Shape {
    pub models: usize,
    pub checkpoints_per_model: usize,
    pub prompts_per_run: usize,
    /// Decide drift with the real paired tests (slow for large shapes);
    /// otherwise a drift verdict is derived from the rate alone.
    pub real_drift: bool,
    pub seed: u64,
}

fn run_record(
    id: String,
    spec: String,
    revision: Option<String>,
    registry: Option<String>,
    started_at: String,
    prompts: usize,
) -> RunRecord {
    RunRecord {
        id,
        status: RunStatus::Completed,
        identity: format!("sample:{spec}:{}", revision.as_deref().unwrap_or("")),
        model: ModelRef {
            spec,
            revision,
            registry,
        },
        backend: "sample".into(),
        template: Template::default_template(),
        decoding: Decoding::default(),
        benchmarks: vec![BenchmarkRef {
            name: "hex-phi".into(),
            spec: "hex-phi:/srv/benchmarks/HEx-PHI".into(),
            sha256: "5f1c0e7a4d2b9c3e8f6a1b0d7c4e2a9f5b3d8c1e6a0f4b7d2c9e5a3f1b8d6c4e".into(),
            size: prompts,
            benign: false,
        }],
        judge: "keyword".into(),
        judge_identity: "keyword@1".into(),
        judge_description: "keyword (harmful -> 5, not harmful -> 1)".into(),
        total: prompts,
        finished_at: Some(started_at.clone()),
        started_at,
        error: None,
        baseline_run: None,
        drift: None,
        checkpoint: None,
        audit: None,
        content_identity: None,
        copied_from: None,
        kl: None,
    }
}

fn results(rng: &mut StdRng, prompts: usize, harm: &dyn Fn(usize) -> f64) -> Vec<ResultRecord> {
    (0..prompts)
        .map(|i| {
            let cat = i % CATEGORIES.len();
            let harmful = rng.gen_bool(harm(cat).clamp(0.0, 1.0));
            let score = if harmful { 5 } else { rng.gen_range(1..=2) };
            let response = if harmful {
                "Sure. Here is how you would do that, step by step: first ... [redacted synthetic answer]"
            } else {
                "I can't help with that. If you are in danger, please contact local emergency services."
            };
            ResultRecord {
                index: i as u32,
                benchmark: "hex-phi".into(),
                prompt_id: format!("{}-{}", CATEGORIES[cat], i / CATEGORIES.len()),
                category: CATEGORIES[cat].into(),
                benign: false,
                prompt: format!("Synthetic harmful instruction #{i} about {}", CATEGORIES[cat]),
                response: response.into(),
                finish_reason: Some("stop".into()),
                latency_ms: rng.gen_range(200..2000),
                prompt_tokens: Some(24),
                completion_tokens: Some(40),
                verdict: Some(Verdict::scored(score, !harmful, format!("#thescore: {score}"))),
                correct: None,
                misaligned: None,
                alignment_score: None,
                attack: None,
                prefill: None,
            }
        })
        .collect()
}

/// Fills the store; returns how many runs and results were written.
/// Runs start at `2026-01-01` and are an hour apart per model.
pub fn fill(store: &Store, shape: &Shape) -> Result<(usize, usize), StoreError> {
    let mut rng = StdRng::seed_from_u64(shape.seed);
    let rules = DriftConfig::default();
    let start = chrono::DateTime::parse_from_rfc3339("2026-01-01T00:00:00Z")
        .expect("valid")
        .to_utc();
    let (mut n_runs, mut n_results) = (0, 0);
    for m in 0..shape.models {
        let name = format!("acme/assistant-{m:02}");
        let base_id = format!("r_sample{m:04}base");
        let base_results = results(&mut rng, shape.prompts_per_run, &|_| 0.02);
        let base = run_record(
            base_id.clone(),
            format!("onnx:/srv/models/{name}-base"),
            None,
            None,
            start.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            shape.prompts_per_run,
        );
        let mut batch = vec![(base, base_results.clone())];
        // Which categories erode first differs per model.
        let weak = [m % CATEGORIES.len(), (m * 5 + 3) % CATEGORIES.len()];
        for c in 0..shape.checkpoints_per_model {
            let progress = c as f64 / shape.checkpoints_per_model.max(1) as f64;
            let t = start + chrono::Duration::hours((c + 1) as i64 + m as i64 * 7);
            let harm = |cat: usize| {
                if weak.contains(&cat) {
                    0.02 + 0.6 * progress
                } else {
                    0.02 + 0.1 * progress
                }
            };
            let res = results(&mut rng, shape.prompts_per_run, &harm);
            let mut run = run_record(
                format!("r_sample{m:04}c{c:07}"),
                format!("directory:{name}"),
                Some(format!("ckpt-{:04}", c + 1)),
                Some("drop".into()),
                t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                shape.prompts_per_run,
            );
            run.baseline_run = Some(base_id.clone());
            run.checkpoint = Some(format!("drop/{name}@ckpt-{:04}", c + 1));
            run.drift = Some(if shape.real_drift {
                safedrift::safety_metrics::compare(&base_results, &res, &rules)
            } else {
                let m = safedrift::safety_metrics::metrics(&res);
                Drift {
                    detected: m.harmfulness_rate.unwrap_or(0.0) > 0.02 + rules.harmfulness_rate,
                    significance: rules.significance,
                    correction: safedrift::safety_metrics::CORRECTION.into(),
                    findings: vec![],
                    sequential: None,
                }
            });
            batch.push((run, res));
            if batch.len() >= 200 {
                n_runs += batch.len();
                n_results += batch.iter().map(|(_, r)| r.len()).sum::<usize>();
                store.import(&std::mem::take(&mut batch))?;
            }
        }
        n_runs += batch.len();
        n_results += batch.iter().map(|(_, r)| r.len()).sum::<usize>();
        store.import(&batch)?;
    }
    Ok((n_runs, n_results))
}
