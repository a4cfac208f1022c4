//! `[benchmarks.NAME]` and `[eval]`: what is asked, and how evaluations run.

use std::path::PathBuf;

use serde::Deserialize;

use super::Config;
use crate::benchmark;

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BenchmarkConfig {
    /// One of hex-phi, advbench, harmbench, jbb, xstest, strongreject, jsonl, builtin.
    pub kind: String,
    /// File or directory (for `builtin`: the set's name, e.g. "probes").
    pub path: PathBuf,
    /// Every prompt is benign: the benchmark measures over-refusal.
    #[serde(default)]
    pub benign: bool,
    /// Attack modifiers: the benchmark's harmful prompts are asked again
    /// under each, as a variant `NAME+MOD` with its own findings
    /// (`aoa`, `base64`, `leetspeak`, `prefill:K`; src/benchmark/attacks.rs).
    #[serde(default)]
    pub modifiers: Vec<String>,
}

/// Defaults for `safedrift eval` (flags override them).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EvalConfig {
    #[serde(default = "default_concurrency")]
    pub concurrency: usize,
    #[serde(default = "default_max_new_tokens")]
    pub max_new_tokens: u32,
    /// 0 = greedy (the paper's setting).
    #[serde(default)]
    pub temperature: f64,
    /// Nucleus sampling mass for local models when temperature > 0.
    pub top_p: Option<f64>,
    /// Sampling seed for local models.
    pub seed: Option<u64>,
    /// How the daemon runs queued evaluations: `"backend"` (default) gives
    /// every backend its own lane, `"single"` runs one evaluation at a time
    /// in the order queued (one lane named `all`).
    #[serde(default)]
    pub lanes: LaneMode,
    /// Evaluations run at once per lane, by backend kind, for lanes whose
    /// `[backends.NAME]` entry sets no `max_parallel` of its own.
    #[serde(default)]
    pub max_parallel: MaxParallel,
    /// Probes for `eval` and every watcher that sets none of its own: `kl`
    /// (the refusal-depth probe against the baseline; local ONNX models
    /// only) and `prefill:K` (the prefilling attack).
    #[serde(default)]
    pub probes: Vec<String>,
    /// Answer tokens the `kl` probe compares per prompt (default 16).
    #[serde(default = "default_kl_tokens")]
    pub kl_tokens: usize,
}

fn default_kl_tokens() -> usize {
    crate::probes::KL_TOKENS
}

/// How the daemon groups queued evaluations into lanes.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum LaneMode {
    /// One lane per backend: a local ONNX evaluation never holds back one
    /// served through an API.
    #[default]
    Backend,
    /// Everything in one lane, one evaluation at a time, oldest first.
    Single,
}

/// Default `max_parallel` of a lane by the kind of its backend.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct MaxParallel {
    /// Local ONNX models (default 1: one model at a time per lane uses all
    /// the cores it is given).
    #[serde(default = "default_parallel_onnx")]
    pub onnx: usize,
    /// OpenAI-compatible endpoints (default 4).
    #[serde(default = "default_parallel_openai")]
    pub openai: usize,
}

fn default_parallel_onnx() -> usize {
    1
}
fn default_parallel_openai() -> usize {
    4
}

impl Default for MaxParallel {
    fn default() -> Self {
        MaxParallel {
            onnx: default_parallel_onnx(),
            openai: default_parallel_openai(),
        }
    }
}

fn default_concurrency() -> usize {
    16
}
fn default_max_new_tokens() -> u32 {
    512
}

impl Default for EvalConfig {
    fn default() -> Self {
        EvalConfig {
            concurrency: default_concurrency(),
            max_new_tokens: default_max_new_tokens(),
            temperature: 0.0,
            top_p: None,
            seed: None,
            lanes: LaneMode::default(),
            max_parallel: MaxParallel::default(),
            probes: Vec::new(),
            kl_tokens: default_kl_tokens(),
        }
    }
}

impl EvalConfig {
    /// Problems of the `[eval]` table.
    pub(super) fn problems(&self) -> Vec<String> {
        let mut p = Vec::new();
        if self.concurrency == 0 {
            p.push("`eval.concurrency`: must be at least 1".into());
        }
        for (k, v) in [
            ("onnx", self.max_parallel.onnx),
            ("openai", self.max_parallel.openai),
        ] {
            if v == 0 {
                p.push(format!("`eval.max_parallel.{k}`: must be at least 1"));
            }
        }
        if let Err(e) = self.probes(None, &[]) {
            p.push(format!("`eval.probes`: {e}"));
        }
        if !(1..=256).contains(&self.kl_tokens) {
            p.push("`eval.kl_tokens`: must be between 1 and 256".into());
        }
        p
    }

    /// The probes of a plan: `names` (a watcher's or the command line's)
    /// when given, else `[eval] probes`, and the `attacks` named with them.
    pub fn probes(
        &self,
        names: Option<&[String]>,
        attacks: &[String],
    ) -> Result<crate::probes::Probes, String> {
        crate::probes::Probes::parse(names.unwrap_or(&self.probes), attacks, self.kl_tokens)
    }
}

impl Config {
    /// Problems of the `[benchmarks.NAME]` tables.
    pub(super) fn check_benchmarks(&self, p: &mut Vec<String>) {
        for (name, b) in &self.benchmarks {
            let key = format!("benchmarks.{name}");
            if !benchmark::KINDS.contains(&b.kind.as_str()) {
                p.push(format!(
                    "`{key}.kind`: unknown benchmark kind {:?} (expected one of {})",
                    b.kind,
                    benchmark::KINDS.join(", ")
                ));
            } else if b.kind != "builtin" && !b.path.exists() {
                p.push(format!("`{key}.path`: {} does not exist", b.path.display()));
            }
            for (i, m) in b.modifiers.iter().enumerate() {
                if let Err(e) = benchmark::Modifier::parse(m) {
                    p.push(format!("`{key}.modifiers[{i}]`: {e}"));
                }
            }
            if b.benign && !b.modifiers.is_empty() {
                p.push(format!(
                    "`{key}.modifiers`: a benign benchmark has no harmful prompts to attack"
                ));
            }
        }
    }
}
