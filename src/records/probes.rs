//! What the probes that read a model's token distributions store with a
//! run: the refusal-depth (`kl`) probe.

use serde::{Deserialize, Serialize};

/// The refusal-depth probe of a candidate against its baseline: the
/// baseline's own answers to the harmful prompts it refused, teacher-forced
/// through both models, and the per-position KL(baseline || candidate) over
/// their first tokens (Qi et al. 2024, "Safety Alignment Should Be Made
/// More Than Just a Few Tokens Deep"). A model compared with itself scores
/// 0 everywhere.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct KlProbe {
    /// The baseline run whose answers were teacher-forced.
    pub baseline_run: String,
    /// `exact` (full distributions, local models); absent figures and a
    /// `skipped` reason when the backends cannot give distributions.
    pub method: String,
    /// Answer tokens compared per prompt (at most).
    pub tokens: usize,
    /// The summary's first tokens.
    pub early_tokens: usize,
    /// Mean KL (nats) at each answer position, over the prompts whose
    /// answer reaches it.
    pub curve: Vec<f64>,
    /// Mean over the prompts of each prompt's mean KL over its first
    /// `early_tokens` tokens.
    pub early_mean: Option<f64>,
    /// Per prompt, the KL at each position.
    pub prompts: Vec<KlPrompt>,
    /// Why no figure was measured, when none was.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub skipped: Option<String>,
}

/// One prompt's KL curve.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct KlPrompt {
    pub benchmark: String,
    pub index: u32,
    pub prompt_id: String,
    pub category: String,
    /// KL(baseline || candidate) at each answer position, in nats.
    pub kl: Vec<f32>,
}

impl KlPrompt {
    /// The mean over the first `n` positions (fewer when the answer is
    /// shorter).
    pub fn early(&self, n: usize) -> f64 {
        let head = &self.kl[..self.kl.len().min(n)];
        if head.is_empty() {
            return 0.0;
        }
        head.iter().map(|&x| f64::from(x)).sum::<f64>() / head.len() as f64
    }
}

/// What the Run JSON shows of a [`KlProbe`]: the summary and each prompt's
/// early mean (the full curves stay in the store).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct KlSummary {
    pub baseline_run: String,
    pub method: String,
    pub tokens: usize,
    pub early_tokens: usize,
    pub prompts: usize,
    pub curve: Vec<f64>,
    pub early_mean: Option<f64>,
    pub per_prompt: Vec<KlPromptSummary>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub skipped: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct KlPromptSummary {
    pub benchmark: String,
    pub prompt_id: String,
    pub category: String,
    pub early: f64,
}

impl KlProbe {
    pub fn summary(&self) -> KlSummary {
        KlSummary {
            baseline_run: self.baseline_run.clone(),
            method: self.method.clone(),
            tokens: self.tokens,
            early_tokens: self.early_tokens,
            prompts: self.prompts.len(),
            curve: self.curve.clone(),
            early_mean: self.early_mean,
            per_prompt: self
                .prompts
                .iter()
                .map(|p| KlPromptSummary {
                    benchmark: p.benchmark.clone(),
                    prompt_id: p.prompt_id.clone(),
                    category: p.category.clone(),
                    early: p.early(self.early_tokens),
                })
                .collect(),
            skipped: self.skipped.clone(),
        }
    }

    /// A probe with no figures: `why` it could not be measured.
    pub fn skipped(baseline_run: &str, tokens: usize, early_tokens: usize, why: String) -> KlProbe {
        KlProbe {
            baseline_run: baseline_run.to_string(),
            method: "none".into(),
            tokens,
            early_tokens,
            curve: Vec::new(),
            early_mean: None,
            prompts: Vec::new(),
            skipped: Some(why),
        }
    }

    /// Builds the summary figures from the prompts' curves.
    pub fn from_prompts(
        baseline_run: &str,
        tokens: usize,
        early_tokens: usize,
        prompts: Vec<KlPrompt>,
    ) -> KlProbe {
        let mut sums = vec![(0.0f64, 0usize); tokens];
        for p in &prompts {
            for (k, &x) in p.kl.iter().enumerate().take(tokens) {
                sums[k].0 += f64::from(x);
                sums[k].1 += 1;
            }
        }
        let curve: Vec<f64> = sums
            .iter()
            .take_while(|(_, n)| *n > 0)
            .map(|(s, n)| s / *n as f64)
            .collect();
        let early_mean = (!prompts.is_empty()).then(|| {
            prompts.iter().map(|p| p.early(early_tokens)).sum::<f64>() / prompts.len() as f64
        });
        KlProbe {
            baseline_run: baseline_run.to_string(),
            method: "exact".into(),
            tokens,
            early_tokens,
            curve,
            early_mean,
            prompts,
            skipped: None,
        }
    }
}
